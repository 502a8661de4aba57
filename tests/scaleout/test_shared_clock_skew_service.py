"""``duisgw serve`` on shared state (a real redis-server): with ``clock = "wall"`` a tick from a host clock ahead
of Redis time does not move the shared gateway clock past Redis time + 5 s, and it is counted
(``duisgw_shared_clock_refused_total{what="tick"}``) with the host's skew exported
(``duisgw_shared_clock_skew_seconds``); with ``clock = "message"`` the clock is the messages' time and a tick
moves it wherever it says."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import redis
from servicekit import DNO_USER, Receiver, counters, pipeline_config, running

from gateway.service.config import StateConfig
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.store.shared import SharedEngine
from gateway.testkit.scenario import World


def redis_times(url: str) -> tuple[dt.datetime, dt.datetime | None]:
    """Redis time, and the shared gateway clock (None: not set)."""
    client = redis.Redis.from_url(url)
    try:
        sec, usec = client.time()
        raw = client.get("duisgw:clock")
    finally:
        client.close()
    now = dt.datetime.fromtimestamp(sec, dt.UTC) + dt.timedelta(microseconds=usec)
    clock = None if raw is None else dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(raw))
    return now, clock


async def test_a_wall_clock_instance_does_not_let_a_tick_ahead_of_redis_time_move_the_shared_clock(
    tmp_path: Path, redis_url: str
) -> None:
    world = World.generated("shared-clock-skew")
    reference = world.write_reference(tmp_path / "reference")
    receiver = Receiver()
    await receiver.start()
    try:
        for clock in ("wall", "message"):
            cfg = pipeline_config(tmp_path / clock, reference, receiver.url, DNO_USER)
            cfg = replace(cfg, clock=clock, tick_interval=3600.0,  # (no tick of its own during the test)
                          state=StateConfig(backend="redis", redis_url=redis_url, instance=f"gw-{clock}"))  # fmt: skip
            service = make_service(build_gateway(cfg))
            async with running(service):
                proc = service.processor
                assert isinstance(proc, GatewayProcessor) and isinstance(proc.durable, SharedEngine)
                ahead = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
                await proc.advance(ahead)
                now, shared = redis_times(redis_url)
                refused = counters(service, "duisgw_shared_clock_refused")
                (skew,) = counters(service, "duisgw_shared_clock_skew_seconds", ("seconds",)).values()
            assert shared is not None
            if clock == "wall":
                assert proc.durable.state.config.max_clock_ahead == 5.0
                assert shared <= now + dt.timedelta(seconds=5)
                assert refused == {("tick",): 1.0, ("message",): 0.0}
            else:
                assert proc.durable.state.config.max_clock_ahead is None
                assert shared == ahead
                assert refused == {("tick",): 0.0, ("message",): 0.0}
            assert abs(skew) < 2  # this host and Redis share a clock here
    finally:
        await receiver.stop()
