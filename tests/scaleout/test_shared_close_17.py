"""A gateway on shared state stops within a bound when Redis hangs, and loses nothing it acknowledged.

A Redis that is alive but does not answer (the server SIGSTOPped, its host frozen, a network path that drops packets
without a reset) fails each call of an instance only at the client's socket timeout. What was found:

- with requests queued for the engine thread when Redis stopped answering, a graceful stop (SIGTERM) did not end
  (60 requests queued: not within 60 s; about 80: not within 5 minutes): a batch that failed on the hung Redis
  was decided again job by job (as any failed batch is, so that one bad message does not fail its neighbours), each
  job waiting out the socket timeout again, and the drain runs every queued job — a backlog of N requests took N
  timeouts (each answered 503 in the end: nothing was acknowledged, but the process had to be killed);
- the instance's clients had no timeout of their own: they got redis-py's default, 5 s since redis-py 8.0 and none
  before it (the project allows ``redis>=5.0``), with which every call, and the stop, waited for good.

Now every client of the shared state has :data:`~gateway.store.redis_state.COMMAND_TIMEOUT`, and a call Redis did not
answer holds the next calls off for that long (:meth:`gateway.store.shared.SharedEngine._run`): they fail at once (503,
the DSP re-delivers). A real ``duisgw serve`` process and a real ``redis-server`` (SIGSTOP / SIGCONT).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from e2ekit import DNO_USER, GatewayProcess, build_traffic, write_config
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, request
from redisfixture import RedisServer, free_port, redis_available
from servicekit import Receiver

from gateway.engine import EngineConfig
from gateway.engine.errors import StoreError
from gateway.service.simulate import DspSimulator
from gateway.store.redis_state import COMMAND_TIMEOUT, RedisState, RedisStateConfig

pytestmark = [pytest.mark.skipif(not redis_available(), reason="redis-server is not installed"), pytest.mark.slow]

#: what a graceful stop may take on a hung Redis: the server's shutdown_timeout (3 s in these configurations), a call
#: in progress (5 s), the close of the connections, the process's own start-up and exit on a loaded host
STOP_BOUND = 30.0


async def _post(url: str, body: bytes) -> int:
    """One DSP POST, never retried (0: no answer)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STOP_BOUND + 60)) as http,
            http.post(url, data=body, headers={"Content-Type": "application/xml"}) as resp,
        ):
            return resp.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        return 0


def _stop(gw: GatewayProcess) -> float:
    """SIGTERM, then the seconds until the process ended (killed past ``STOP_BOUND + 30`` s: inf)."""
    assert gw.proc is not None
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    try:
        gw.proc.wait(STOP_BOUND + 30)
    except subprocess.TimeoutExpired:
        gw.kill()
        return float("inf")
    return time.monotonic() - t0


async def test_a_gateway_with_a_backlog_stops_within_a_bound_on_a_hung_redis_and_delivers_what_it_acknowledged(
    tmp_path: Path,
) -> None:
    """The DNO is down: the forwards the gateway acknowledges wait in its outbox. Redis is SIGSTOPped with 60 DSP
    requests arriving (queued behind a call that waits on Redis); SIGTERM. The process ends within the bound (before:
    not within 60 s, then killed), and none of those requests was acknowledged. Redis resumes, the DNO comes up, the
    gateway starts again on the same files: every forward it acknowledged before reaches the DNO with its original
    bytes, and the requests it refused are decided when the DSP sends them again."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    rx = Receiver()  # not started: the DNO is down
    port, admin = free_port(), free_port()
    traffic = build_traffic(tmp_path / "traffic", premises=24)
    (tmp_path / "gw").mkdir()
    state = f'\n[state]\nbackend = "redis"\nredis_url = "{redis.url}"\ninstance = "gw0"\n'
    cfg = write_config(tmp_path / "gw" / "gateway.toml", port=port, admin_port=admin, reference=traffic.reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": rx.url}], extra=state)  # fmt: skip
    stream = traffic.merged()
    bodies = {m.body for m in stream}
    before, backlog = stream[:12], stream[12:]
    gw = GatewayProcess(cfg, admin)
    gw.start()
    try:
        await gw.wait_ready()
        async with DspSimulator(f"http://127.0.0.1:{port}", DNO_USER, retry_for=0) as dsp:
            acked = [await dsp.post(m) for m in before]
            urls = [str(dsp.url_for(m.lane)) for m in backlog]
        assert all(a.status < 300 for a in acked), acked
        forwards = {str(a.message_id) for a in acked if a.decision == "forward"}
        assert forwards
        assert redis.proc is not None
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            posts = [asyncio.create_task(_post(u, m.body)) for u, m in zip(urls, backlog, strict=True)]
            await asyncio.sleep(1.0)  # queued for the engine thread behind a call waiting on Redis
            took = await asyncio.to_thread(_stop, gw)
            statuses = await asyncio.gather(*posts)
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        assert took < STOP_BOUND, f"the stop took {took:.1f} s: {gw.log_tail(3000)}"
        assert not [s for s in statuses if 200 <= s < 300], statuses  # nothing acknowledged while Redis hung

        await rx.start()  # the DNO is back; the gateway starts again on the same store and outbox
        gw = GatewayProcess(cfg, admin)
        gw.start()
        await gw.wait_ready()
        await rx.wait_for(len(forwards), timeout=30)
        assert forwards <= set(rx.accepted_ids())
        assert all(r.body in bodies for r in rx.log)  # the original bytes
        async with DspSimulator(f"http://127.0.0.1:{port}", DNO_USER, retry_for=5) as dsp:
            again = [await dsp.post(m) for m in backlog]  # the DSP re-delivers what was refused
        assert all(a.status < 300 for a in again), [a for a in again if a.status >= 300]
    finally:
        gw.kill()
        await rx.stop()
        redis.stop()


async def test_a_wait_for_replicas_longer_than_the_command_timeout_is_not_cut_short(redis_url: str) -> None:
    """``[state] replicas = 1``, ``wait_timeout = 6``, no replica: the ``WAIT`` blocks 6 s on the server and answers
    0, refused as such (``only 0 of 1 replicas``: the batch is answered 503). It used to be cut at the client's
    socket timeout (redis-py's default, 5 s): a ``TimeoutError`` and a dropped connection, a replica's confirmation
    after 5 s never read. The client of an instance waits ``wait_timeout`` longer than any other call."""
    state = RedisState(RedisStateConfig(url=redis_url, instance="gw0", replicas=1, wait_timeout=6.0), EngineConfig(),
                       MemoryScope([ESME]), MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr")]))  # fmt: skip
    try:
        await state.start()
        await state.decide(request(0, counter=7), None)
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="only 0 of 1 replicas acknowledged"):
            await state.wait_replicas()
        assert time.monotonic() - t0 >= 5.9
        assert state.redis.connection_pool.connection_kwargs["socket_timeout"] == COMMAND_TIMEOUT + 6.0
    finally:
        await state.aclose()
