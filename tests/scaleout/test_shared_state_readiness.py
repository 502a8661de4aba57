"""Readiness follows the shared state (twelfth session; found by a review of the Redis scale-out).

``/readyz`` pinged only the local SQLite store, so an instance whose Redis was down or hung said "ready"
while it answered 503 to every message and every hold release by time failed: a load balancer kept sending
the DSP to it, no metric said why, and the tick loop logged a traceback every tick. Now ``/readyz`` answers
503 ``shared_state_unavailable`` while Redis does not answer a PING within a second,
``duisgw_shared_state_up`` says the same between probes, and failed ticks are counted
(``duisgw_tick_failures_total``) and logged once per kind of failure. A real ``duisgw serve`` process and a
real ``redis-server`` (down: killed; hung: SIGSTOP)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from e2ekit import DNO_USER, GatewayProcess, build_traffic, write_config
from redisfixture import RedisServer, free_port, redis_available
from servicekit import Receiver

from gateway.service.simulate import DspSimulator

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")


async def _readyz(admin: int) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(f"http://127.0.0.1:{admin}/readyz") as resp,
    ):
        return resp.status, (await resp.text()).strip()


async def _metric(admin: int, name: str) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def _until(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()  # type: ignore[operator]
        if got:
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _gateway(tmp_path: Path, redis: RedisServer) -> AsyncIterator[GatewayProcess]:
    rx = Receiver()
    await rx.start()
    traffic = build_traffic(tmp_path / "traffic", premises=2)
    port, admin = free_port(), free_port()
    (tmp_path / "gw").mkdir()
    state = f'\n[state]\nbackend = "redis"\nredis_url = "{redis.url}"\ninstance = "gw0"\n'
    cfg = write_config(
        tmp_path / "gw" / "gateway.toml",
        port=port,
        admin_port=admin,
        reference=traffic.reference,
        destinations=[{"name": "dno-a", "user": DNO_USER, "url": rx.url}],
        extra=state,
    )
    gw = GatewayProcess(cfg, admin)
    gw.start()
    try:
        await gw.wait_ready()
        # one message: with clock = "message" the engine clock (and its ticks) start at the first arrival
        async with DspSimulator(f"http://127.0.0.1:{port}", DNO_USER, retry_for=0) as dsp:
            posted = await dsp.post(traffic.merged()[0])
        assert posted.status < 300, posted
        yield gw
    finally:
        gw.terminate()
        await rx.stop()


async def test_readyz_and_the_shared_state_gauge_follow_a_redis_that_is_down_or_hung(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        async with _gateway(tmp_path, redis) as gw:
            admin = gw.admin_port
            assert await _readyz(admin) == (200, "ready")
            assert await _metric(admin, "duisgw_shared_state_up") == 1.0

            assert redis.proc is not None
            redis.proc.send_signal(signal.SIGSTOP)  # hung: connected, never answers
            try:
                t0 = time.monotonic()
                assert await _readyz(admin) == (503, "shared_state_unavailable")
                assert time.monotonic() - t0 < 5.0  # bounded by the probe's timeout
                await _until(lambda: _metric_is(admin, "duisgw_shared_state_up", 0.0))
            finally:
                redis.proc.send_signal(signal.SIGCONT)
            await _until(lambda: _ready(admin))
            await _until(lambda: _metric_is(admin, "duisgw_shared_state_up", 1.0))

            redis.stop()  # down: connection refused
            assert await _readyz(admin) == (503, "shared_state_unavailable")
            await _until(lambda: _metric_above(admin, "duisgw_tick_failures_total", 2.0))
            redis.start(port=redis.port)
            await _until(lambda: _ready(admin))
            await _until(lambda: _metric_is(admin, "duisgw_shared_state_up", 1.0))
            await asyncio.sleep(1.0)  # ticks succeed again
            log = gw.log_tail(200_000)
            # every tick failed while Redis was down: the failure logged once, not once a tick
            assert 1 <= log.count("processor tick failed") <= 3, log[-3000:]
            assert "processor tick succeeded again" in log
    finally:
        redis.stop()


async def _ready(admin: int) -> bool:
    return await _readyz(admin) == (200, "ready")


async def _metric_is(admin: int, name: str, value: float) -> bool:
    return await _metric(admin, name) == value


async def _metric_above(admin: int, name: str, value: float) -> bool:
    got = await _metric(admin, name)
    return got is not None and got > value
