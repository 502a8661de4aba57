"""Both ends of the wire for demos and tests: a DSP simulator and a stub DNO receiver.

:class:`DspSimulator` POSTs timed DUIS messages to a gateway in arrival order — observation traffic
to ``/duis/observe``, DNO-bound traffic to ``/duis/dno/{user}`` — with the event-time arrival in the
``X-DUISGW-Arrival`` header (read by a gateway running with ``clock = "message"``), and retries a
503 (the gateway asks the sender to come back, as the DSP would). :class:`DnoStub` is an aiohttp
endpoint standing in for a DNO adaptor: it records every delivery with its ``X-DUISGW-Message-Id``
and answers 204 (or 503 while ``refusing``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.service.api import MESSAGE_ID_HEADER
from gateway.service.ingress import DECISION_HEADER
from gateway.service.processor import ARRIVAL_HEADER

__all__ = ["DnoStub", "DspSimulator", "Posted", "ReceivedMessage", "TimedMessage"]


@dataclass(frozen=True, slots=True)
class TimedMessage:
    """One message to send: event-time arrival, lane (``inline`` / ``observe``), bytes."""

    at: datetime
    lane: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Posted:
    """What the gateway answered to one POST."""

    status: int
    message_id: str | None
    decision: str | None
    text: str


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    message_id: str
    body: bytes
    content_type: str
    at: float


@dataclass
class DnoStub:
    """A DNO adaptor endpoint on 127.0.0.1 recording what the gateway delivers."""

    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/dno/duis"
    refusing: bool = False
    received: list[ReceivedMessage] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.refusing:
            return web.Response(status=503, text="down for maintenance")
        self.received.append(
            ReceivedMessage(
                request.headers.get(MESSAGE_ID_HEADER, ""),
                body,
                request.headers.get("Content-Type", ""),
                time.monotonic(),
            )
        )
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or ():
            self.port = int(sock.getsockname()[1])
            break

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def unique_ids(self) -> list[str]:
        """Delivered message ids in arrival order, re-deliveries removed (the receiver's dedupe)."""
        seen: set[str] = set()
        out = []
        for r in self.received:
            if r.message_id not in seen:
                seen.add(r.message_id)
                out.append(r.message_id)
        return out

    async def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.unique_ids()) < count:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def post_retrying(
    session: aiohttp.ClientSession, url: str | URL, body: bytes, headers: dict[str, str], retry_for: float
) -> Posted:
    """POST ``body`` to ``url`` as the DSP does: a failed connection and a 503 (draining, store unavailable)
    are retried every 0.1 s for ``retry_for`` seconds; then the last answer is returned (or the connection
    error raised)."""
    deadline = time.monotonic() + retry_for
    while True:
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                text = await resp.text(errors="replace")
                posted = Posted(resp.status, resp.headers.get(MESSAGE_ID_HEADER),
                                resp.headers.get(DECISION_HEADER), text)  # fmt: skip
        except (aiohttp.ClientError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        if posted.status == 503 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            continue
        return posted


class DspSimulator:
    """Sends timed messages to a gateway's ingress in order, one at a time (like one DSP connection)."""

    def __init__(
        self,
        base_url: str,
        user: str,
        *,
        session: aiohttp.ClientSession | None = None,
        send_arrival: bool = True,
        retry_for: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = user
        self._session = session
        self._own = session is None
        self.send_arrival = send_arrival
        self.retry_for = retry_for

    async def __aenter__(self) -> DspSimulator:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, lane: str) -> str:
        if lane == "inline":
            return f"{self.base_url}/duis/dno/{self.user}"
        return f"{self.base_url}/duis/observe"

    async def post(self, msg: TimedMessage) -> Posted:
        """POST one message; a 503 (draining, store unavailable) is retried for ``retry_for`` seconds."""
        assert self._session is not None, "use `async with DspSimulator(...)`"
        headers = {"Content-Type": "application/xml"}
        if self.send_arrival:
            headers[ARRIVAL_HEADER] = _stamp(msg.at)
        return await post_retrying(self._session, self.url_for(msg.lane), msg.body, headers, self.retry_for)

    async def run(self, messages: Iterable[TimedMessage]) -> list[Posted]:
        """Send every message in the given (arrival) order; returns each answer."""
        return [await self.post(m) for m in messages]
