"""The DNO-facing HTTP client (:class:`gateway.service.delivery.HttpSender`) against real endpoints that
misbehave: what it reads of a response is bounded."""

from __future__ import annotations

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
