"""Replay recorded traffic against a LIVE gateway over HTTP (``duisgw replay --target URL``).

The inputs (JSONL script, directory, pcap/pcapng) are POSTed in arrival order to the gateway's lanes —
``/duis/observe`` and ``/duis/dno/{user}`` — one at a time, as one DSP connection does, paced at
``speed`` × real time (the gaps between the recorded arrival times divided by ``speed``; ``0`` sends
as fast as the gateway answers). Each message carries its recorded arrival in ``X-DUISGW-Arrival``, so a
gateway running with ``clock = "message"`` decides in the recording's event time. An inline message goes
to the ``{user}`` it was captured for (percent-encoded as it was sent), else to ``default_user``;
``user`` sends every one to that user instead. Each is sent with the Content-Type it was captured with
(``application/xml`` when not known) and its bytes as the gateway read them. A 503 and a failure to
connect or to get an answer are retried for ``retry_for`` seconds, as the DSP would.

One JSON line per message reports the gateway's answer (status, message id, decision header), or the
error that ended its retries; and one line (``status: null``, ``skipped``: the capture reader's code)
for each DNO-bound request of a capture that is not sent because the gateway's ingress refuses it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from gateway.replay import InputMessage, InputProblem
from gateway.service.config import http_url_problem
from gateway.service.processor import ARRIVAL_HEADER
from gateway.service.simulate import Posted, post_retrying

__all__ = ["DEFAULT_USER", "check_target", "replay_live"]

#: the ``{user}`` of an inline message whose own is not known (a script's, a directory's): the test DNO
DEFAULT_USER = "90-B3-D5-1F-30-02-00-00"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def check_target(target: str) -> str | None:
    """Why ``target`` cannot be a gateway's ingress base URL (None when it can): an ``http`` or ``https``
    URL with a host. Checked before anything is sent: a retry cannot make a bad URL work."""
    if (problem := http_url_problem(target)) is not None:  # as a destination's endpoint is checked
        return f"not {problem} (e.g. http://127.0.0.1:8443)"
    url = URL(target)
    if url.query_string or url.fragment:
        return "a base URL has no query or fragment"
    return None


class _Sender:
    """POSTs one message at a time to the gateway's lanes, retrying a 503 and a failed connection."""

    def __init__(self, session: aiohttp.ClientSession, target: str, retry_for: float) -> None:
        self.session = session
        self.base = target.rstrip("/")
        self.retry_for = retry_for

    def url_for(self, lane: str, user: str) -> URL:
        if lane == "inline":
            # the {user} segment as the gateway's router takes it: a '/' or '%' in it percent-encoded
            return URL(f"{self.base}/duis/dno/{quote(user, safe='')}", encoded=True)
        return URL(f"{self.base}/duis/observe", encoded=True)

    async def post(self, item: InputMessage, user: str) -> Posted:
        headers = {"Content-Type": item.content_type or "application/xml", ARRIVAL_HEADER: _iso(item.time)}
        return await post_retrying(self.session, self.url_for(item.lane, user), item.body, headers, self.retry_for)


async def replay_live(
    items: Iterable[InputMessage | InputProblem],
    target: str,
    user: str | None,
    *,
    speed: float,
    emit: Callable[[dict[str, Any]], None],
    tick: Callable[[], None] = lambda: None,
    retry_for: float = 30.0,
    default_user: str = DEFAULT_USER,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Send every input message; returns counts by HTTP status (``error`` for a message not answered,
    ``problems`` for skipped input, ``skipped`` for a DNO-bound request not sent). ``user``: the
    ``{user}`` of every inline message (None: each its own, else ``default_user``)."""
    counts: dict[str, int] = {}
    first_at: datetime | None = None
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        sender = _Sender(session, target, retry_for)
        for item in items:
            if isinstance(item, InputProblem):
                counts["problems"] = counts.get("problems", 0) + 1
                if item.lane == "inline":  # a DNO-bound request the gateway's ingress refuses: not sent
                    counts["skipped"] = counts.get("skipped", 0) + 1
                    emit({"source": item.source, "lane": item.lane,
                          "time": _iso(item.time) if item.time is not None else None, "status": None,
                          "skipped": item.code, "detail": item.detail})  # fmt: skip
                continue
            if first_at is None:
                first_at = item.time
            if speed > 0:
                due = started + max((item.time - first_at).total_seconds(), 0.0) / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                posted = await sender.post(item, user or item.user or default_user)
            except Exception as exc:
                emit({"source": item.source, "lane": item.lane, "time": _iso(item.time), "status": None,
                      "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
                counts["error"] = counts.get("error", 0) + 1
                tick()
                continue
            key = str(posted.status)
            counts[key] = counts.get(key, 0) + 1
            emit(
                {
                    "source": item.source,
                    "lane": item.lane,
                    "time": _iso(item.time),
                    "status": posted.status,
                    "message_id": posted.message_id,
                    "decision": posted.decision,
                    **({"reason": posted.text.strip()[:200]} if posted.status >= 400 else {}),
                }
            )
            tick()
    return counts
