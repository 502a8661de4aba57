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
error that ended its retries; one line (``status: null``, ``skipped``: the capture reader's code)
for each DNO-bound request of a capture that is not sent because the gateway's ingress refuses it; and one
(``status: null``, ``lost``: the reader's code) for requests of a capture lost to its damage (a gap).

A message the gateway answered ``hold`` is decided later: when its evidence comes (on the observation
lane: that POST's answer is its own, ``204``), or when the gateway's clock passes its hold limit (the tick
loop, not a POST). Neither reaches the sender, and the gateway serves no decision over HTTP. So with
``final`` (``duisgw replay --gateway-config FILE``: the gateway's own configuration, on its host) the
replay reads, once every message is sent, the latest decision of each held message from the gateway's
decision store (read-only, as ``duisgw audit show`` does), and writes one more line for each: ``final``
(its disposition), ``action``, ``reason``, ``decided_at``; ``final: null, still_held: true`` when the
gateway still holds it (its clock has not reached the hold limit yet).

A capture being written (``duisgw replay --follow --target URL``) is sent as it is read: ``following`` makes the
items be read in a thread (the reader waits there for the file to grow, the event loop does not), and a
``None`` among them (everything written so far has been read and sent) calls ``caught_up`` (the lines are
flushed then).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from gateway.replay import FILE_LOST, InputMessage, InputProblem
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
    items: Iterable[InputMessage | InputProblem | None],
    target: str,
    user: str | None,
    *,
    speed: float,
    emit: Callable[[dict[str, Any]], None],
    tick: Callable[[], None] = lambda: None,
    retry_for: float = 30.0,
    default_user: str = DEFAULT_USER,
    timeout: float = 30.0,
    final: Callable[[list[str]], dict[str, dict[str, Any] | None]] | None = None,
    following: bool = False,
    caught_up: Callable[[], None] = lambda: None,
) -> dict[str, int]:
    """Send every input message; returns counts by HTTP status (``error`` for a message not answered,
    ``problems`` for skipped input, ``skipped`` for a DNO-bound request not sent, ``lost`` for requests
    a capture lost). ``user``: the ``{user}`` of every inline message (None: each its own, else
    ``default_user``). ``final``: the latest decision record of each of the given message ids (None for
    one not found), called once at the end for the messages answered ``hold`` (:func:`store_decisions`).
    ``following``: ``items`` wait for a capture being written: each is read in a thread; a ``None`` among them
    calls ``caught_up``. A file of a rotated capture lost before it was read gets a line (``lost: file-lost``)
    and is counted (``files-lost``)."""
    counts: dict[str, int] = {}
    held: dict[str, InputMessage] = {}  # answered hold, by message id, in the order they were sent
    first_at: datetime | None = None
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        sender = _Sender(session, target, retry_for)
        async for item in _items(items, following):
            if item is None:  # a capture being written: everything written so far is read and sent
                caught_up()
                continue
            if isinstance(item, InputProblem):
                counts["problems"] = counts.get("problems", 0) + 1
                if item.lost:  # requests the gateway got but the capture does not hold whole: not sent
                    counts["lost"] = counts.get("lost", 0) + item.lost
                    emit({"source": item.source, "lane": item.lane,
                          "time": _iso(item.time) if item.time is not None else None, "status": None,
                          "lost": item.code, "requests": item.lost, "detail": item.detail,
                          **({"first_byte_time": _iso(item.first_byte_time), "bytes_seen": item.bytes_seen}
                             if item.first_byte_time is not None else {})})  # fmt: skip
                elif item.code == FILE_LOST:  # a file of a rotated capture gone before it was read: lost
                    counts["files-lost"] = counts.get("files-lost", 0) + 1
                    emit({"source": item.source, "lane": None,
                          "time": _iso(item.time) if item.time is not None else None, "status": None,
                          "lost": item.code, "requests": None, "detail": item.detail})  # fmt: skip
                elif item.lane == "inline":  # a DNO-bound request the gateway's ingress refuses: not sent
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
            if posted.decision == "hold" and posted.message_id is not None:
                held.setdefault(posted.message_id, item)
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
    if final is not None and held:
        for mid, rec in (await asyncio.to_thread(final, list(held))).items():
            item = held[mid]
            line: dict[str, Any] = {"source": item.source, "lane": item.lane, "time": _iso(item.time),
                                    "message_id": mid, "held": True}  # fmt: skip
            action = str(rec.get("action")) if rec is not None else None
            if rec is None or action == "hold":
                line.update({"final": None, "still_held": rec is not None})
                counts["still-held" if rec is not None else "final-unknown"] = (
                    counts.get("still-held" if rec is not None else "final-unknown", 0) + 1
                )
            else:
                line.update({"final": _disposition(action), "action": action, "reason": rec.get("reason"),
                             "decided_at": _stamp(rec.get("decided_at"))})  # fmt: skip
                counts["released"] = counts.get("released", 0) + 1
            emit(line)
    return counts


async def _items(
    items: Iterable[InputMessage | InputProblem | None], following: bool
) -> AsyncIterator[InputMessage | InputProblem | None]:
    """``items``; ``following``: each read in a thread (reading waits for a capture being written to grow)."""
    if not following:
        for item in items:
            yield item
        return
    it = iter(items)
    end = InputProblem("", "end", "")  # (a marker: the items have ended)

    def take() -> InputMessage | InputProblem | None:
        return next(it, end)

    while (item := await asyncio.to_thread(take)) is not end:
        yield item


def _stamp(value: Any) -> Any:
    """A store's ISO-8601 time as the other lines write times (``...Z``); anything else unchanged."""
    try:
        return _iso(datetime.fromisoformat(str(value)))
    except ValueError:
        return value


def _disposition(action: str | None) -> str | None:
    """What the DNO gets by a decision's action: ``forward`` or ``suppress``."""
    if action in ("forward", "release-forward"):
        return "forward"
    if action in ("suppress", "release-suppress"):
        return "suppress"
    return action


def store_decisions(config: Path) -> Callable[[list[str]], dict[str, dict[str, Any] | None]]:
    """The reader of a gateway's decision store for :func:`replay_live`'s ``final``: ``config`` is the
    gateway's own configuration (``duisgw serve --config``); the store is the one it names (SQLite state:
    an instance's own decisions). Raises :class:`InputError` now when the configuration or its store
    cannot be used, before anything is sent."""
    import sqlite3

    from gateway.engine.errors import StoreError
    from gateway.replay import InputError
    from gateway.service.config import ConfigError
    from gateway.service.serve import engine_db_path, load_serve_config
    from gateway.store.sqlite import DecisionReader, NoDecisionState

    try:
        cfg, _base = load_serve_config(config)
    except ConfigError as exc:
        raise InputError(f"--gateway-config {config}: " + "; ".join(exc.problems)) from None
    except OSError as exc:
        raise InputError(f"--gateway-config {config}: {exc.strerror or exc}") from None
    db = engine_db_path(cfg)
    if cfg.mode != "pipeline":
        raise InputError(f"--gateway-config {config}: mode {cfg.mode!r} makes no decisions")
    busy = float(cfg.store.busy_timeout)

    def read(message_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        # read-only (``DecisionReader``, ``mode=ro``): never creates the schema, never checkpoints the gateway's
        # WAL (not even as the last connection of a gateway that stopped); WAL readers take no lock that stalls
        # the gateway's writer
        if not db.is_file():
            return dict.fromkeys(message_ids)
        try:
            reader = DecisionReader(db, busy_timeout=busy)
        except NoDecisionState:
            return dict.fromkeys(message_ids)  # a store the gateway has not written yet
        except (StoreError, sqlite3.Error) as exc:
            raise InputError(f"--gateway-config {config}: decision store {db}: {exc}") from None
        try:
            return {mid: reader.latest_decision(mid) for mid in message_ids}
        except sqlite3.Error as exc:
            raise InputError(f"--gateway-config {config}: decision store {db}: {exc}") from None
        finally:
            reader.close()

    return read
