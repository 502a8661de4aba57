"""The DNO-facing HTTP client (:class:`gateway.service.delivery.HttpSender`) against real endpoints that
misbehave: what it reads of a response is bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from servicekit import free_port

from gateway.service.delivery import HttpSender


class EndlessBody:
    """An endpoint that answers 200 and then streams a body that never ends."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests = 0
        self.sent = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        chunk = b"x" * (64 << 10)
        try:
            while True:
                await resp.write(chunk)
                self.sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading and closed
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/duis", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def endless() -> AsyncIterator[EndlessBody]:
    server = EndlessBody()
    await server.start()
    yield server
    await server.stop()


async def test_a_2xx_with_an_endless_body_is_a_delivery_read_no_further_than_the_cap(
    endless: EndlessBody,
) -> None:
    sender = HttpSender(f"http://127.0.0.1:{endless.port}/duis", timeout=5.0)
    try:
        t0 = time.monotonic()
        outcome = await sender.post("m1", b"<x/>")
        elapsed = time.monotonic() - t0
        assert outcome.ok, outcome.detail  # the endpoint said 200: not a timeout, not retried (a duplicate)
        assert elapsed < 4.0
        again = await sender.post("m2", b"<x/>")  # the abandoned connection is not reused half-read
        assert again.ok, again.detail
        assert endless.requests == 2
    finally:
        await sender.close()


async def test_proxy_environment_variables_are_not_used_for_dno_delivery(
    endless: EndlessBody, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a proxied request would fail
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sender = HttpSender(f"http://127.0.0.1:{endless.port}/duis", timeout=5.0)
    try:
        outcome = await sender.post("m1", b"<x/>")
    finally:
        await sender.close()
    assert outcome.ok, outcome.detail
    assert endless.requests == 1  # reached directly


class Stalled:
    """An endpoint that accepts the connection, reads the whole request and never answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[bytes] = []
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(v for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"))
        self.requests.append(await reader.readexactly(length))
        await asyncio.Event().wait()  # never answer

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()


async def test_an_endpoint_that_never_answers_is_a_failed_attempt_within_the_request_timeout() -> None:
    """A DNO endpoint that takes the request and hangs: the attempt ends after ``request_timeout`` as an
    unreachable failure (retried later, never counted as delivered, never a refusal)."""
    stalled = Stalled()
    await stalled.start()
    sender = HttpSender(f"http://127.0.0.1:{stalled.port}/duis", timeout=0.5)
    try:
        t0 = time.monotonic()
        outcome = await sender.post("m1", b"<x/>")
        elapsed = time.monotonic() - t0
    finally:
        await sender.close()
        await stalled.stop()
    assert not outcome.ok and not outcome.refused
    assert "Timeout" in outcome.detail
    assert 0.4 <= elapsed < 2.0
    assert stalled.requests == [b"<x/>"]  # it was sent whole: the endpoint simply never answered


async def test_cancelling_a_delivery_in_flight_is_a_cancellation_not_a_failed_attempt() -> None:
    """Shutdown cancels the sender's task: the cancellation propagates (the row stays pending for the next
    start) instead of being turned into a failed-attempt outcome."""
    stalled = Stalled()
    await stalled.start()
    sender = HttpSender(f"http://127.0.0.1:{stalled.port}/duis", timeout=30.0)
    try:
        task = asyncio.create_task(sender.post("m1", b"<x/>"))
        while not stalled.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await sender.close()
        await stalled.stop()


async def test_a_cookie_set_by_the_dno_endpoint_is_never_sent_back() -> None:
    """The sender keeps no cookie state: what one DNO answer sets does not ride on later deliveries."""
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request.headers.get("Cookie"))
        resp = web.Response(status=204)
        resp.set_cookie("session", "abc", path="/")
        return resp

    app = web.Application()
    app.router.add_post("/duis", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    # a host name, not an IP address: aiohttp's default cookie jar ignores cookies from IP addresses
    sender = HttpSender(f"http://localhost:{port}/duis", timeout=5.0)
    try:
        assert (await sender.post("m1", b"<x/>")).ok
        assert (await sender.post("m2", b"<x/>")).ok
    finally:
        await sender.close()
        await runner.cleanup()
    assert seen == [None, None]
