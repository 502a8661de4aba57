"""The delivery window (``[outbox] window > 1``): several messages in flight per destination, in
queue order, never two for the same device at once, a device-less message as a barrier."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from conftest import free_port
from servicekit import duis_body

from gateway.service.api import Delivery
from gateway.service.config import ConfigError, OutboxConfig, load_config
from gateway.service.delivery import DeliveryManager, HttpSender
from gateway.service.metrics import Metrics
from gateway.service.outbox import Outbox, SqliteStore

WINDOW = OutboxConfig(window=8, backoff_initial=0.05, backoff_multiplier=2.0, backoff_max=0.2, jitter=0.5,
                      poll_interval=0.1, request_timeout=2.0, drain_timeout=3.0, max_attempts=3)  # fmt: skip


@dataclass
class Span:
    message_id: str
    device: str | None
    start: float
    end: float = 0.0
    status: int = 0


@dataclass
class SlowReceiver:
    """A DNO endpoint that takes ``delay`` seconds per message and records when each one was in flight."""

    delay: float = 0.02
    port: int = field(default_factory=free_port)
    devices: dict[str, str | None] = field(default_factory=dict)  # message id -> device (from the test)
    refuse: set[str] = field(default_factory=set)
    spans: list[Span] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/duis"

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        mid = request.headers["X-DUISGW-Message-Id"]
        span = Span(mid, self.devices.get(mid), time.monotonic())
        self.spans.append(span)
        await asyncio.sleep(self.delay * (0.5 + random.random()))
        span.status = 500 if mid in self.refuse else 204
        span.end = time.monotonic()
        return web.Response(status=span.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/duis", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def accepted(self) -> list[str]:
        seen: set[str] = set()
        out = []
        for s in sorted(self.spans, key=lambda s: s.start):
            if s.status // 100 == 2 and s.message_id not in seen:
                seen.add(s.message_id)
                out.append(s.message_id)
        return out

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < count:
            assert time.monotonic() < deadline, f"received {len(self.accepted())} of {count}"
            await asyncio.sleep(0.02)

    def max_overlap(self) -> int:
        edges = sorted([(s.start, 1) for s in self.spans] + [(s.end, -1) for s in self.spans])
        level = peak = 0
        for _, step in edges:
            level += step
            peak = max(peak, level)
        return peak


def rows(devices: list[str | None]) -> list[Delivery]:
    out = []
    for i, dev in enumerate(devices):
        meta = {"decision": "forward"} | ({"device": dev} if dev is not None else {})
        out.append(Delivery(f"m{i:04d}", "dno-a", duis_body(i), meta))
    return out


async def run(tmp_path: Path, receiver: SlowReceiver, items: list[Delivery], cfg: OutboxConfig = WINDOW,
              wait: int | None = None) -> tuple[DeliveryManager, Outbox]:  # fmt: skip
    for d in items:
        receiver.devices[d.message_id] = d.metadata.get("device")
    store = SqliteStore(tmp_path / "o.sqlite3", synchronous="NORMAL")
    await store.open()
    outbox = Outbox(store, lambda d: (f"http:{d}",))
    sender = HttpSender(receiver.url, timeout=cfg.request_timeout, connections=cfg.window)
    mgr = DeliveryManager(outbox, {"http:dno-a": sender}, cfg, rng=random.Random(3), metrics=Metrics())
    await mgr.start()
    await outbox.enqueue_many(items)
    if wait is not None:
        await receiver.wait_for(wait)
    return mgr, outbox


def assert_device_order(receiver: SlowReceiver, items: list[Delivery]) -> None:
    """Per device: sends never overlap, and every send of a message starts after the earlier one ended."""
    by_device: dict[str | None, list[Span]] = {}
    for s in sorted(receiver.spans, key=lambda s: s.start):
        by_device.setdefault(s.device, []).append(s)
    order = {d.message_id: i for i, d in enumerate(items)}
    for dev, spans in by_device.items():
        if dev is None:
            continue
        for a, b in itertools.pairwise(spans):
            assert b.start >= a.end, f"{a.message_id} and {b.message_id} of {dev} overlapped"
            assert order[b.message_id] >= order[a.message_id], f"{dev}: {b.message_id} before {a.message_id}"


async def test_window_sends_several_at_once_but_never_two_for_one_device(tmp_path: Path) -> None:
    receiver = SlowReceiver()
    await receiver.start()
    items = rows([f"CH-{i % 5}" for i in range(60)])
    mgr, outbox = await run(tmp_path, receiver, items, wait=60)
    await mgr.stop()
    states = {r.state for r in await outbox.rows("http:dno-a")}
    await outbox.store.close()
    await receiver.stop()
    assert sorted(receiver.accepted()) == [d.message_id for d in items]
    assert len(receiver.spans) == 60  # exactly once
    assert states == {"delivered"}
    assert 2 <= receiver.max_overlap() <= 5  # five devices: at most five at once, under the window of 8
    assert_device_order(receiver, items)


async def test_window_is_capped_by_the_configured_size(tmp_path: Path) -> None:
    receiver = SlowReceiver()
    await receiver.start()
    items = rows([f"CH-{i}" for i in range(40)])  # all distinct: only the window limits
    cfg = OutboxConfig(window=3, poll_interval=0.1, request_timeout=2.0, drain_timeout=3.0)
    mgr, outbox = await run(tmp_path, receiver, items, cfg, wait=40)
    await mgr.stop()
    await outbox.store.close()
    await receiver.stop()
    assert receiver.max_overlap() == 3
    # dispatched in queue order: the n-th send started no later than the (n+1)-th
    starts = {s.message_id: s.start for s in receiver.spans}
    ordered = [starts[d.message_id] for d in items]
    assert ordered == sorted(ordered)


async def test_message_without_a_device_is_a_barrier(tmp_path: Path) -> None:
    receiver = SlowReceiver()
    await receiver.start()
    devices: list[str | None] = [f"CH-{i}" for i in range(6)] + [None] + [f"CH-{i}" for i in range(6, 12)]
    items = rows(devices)
    mgr, outbox = await run(tmp_path, receiver, items, wait=len(items))
    await mgr.stop()
    await outbox.store.close()
    await receiver.stop()
    span = {s.message_id: s for s in receiver.spans}
    barrier = span["m0006"]
    assert all(span[f"m{i:04d}"].end <= barrier.start for i in range(6))
    assert all(span[f"m{i:04d}"].start >= barrier.end for i in range(7, 13))
    assert receiver.max_overlap() > 1  # the window was used on both sides of the barrier


async def test_refused_message_holds_only_its_device_and_is_dead_lettered(tmp_path: Path) -> None:
    receiver = SlowReceiver(delay=0.01)
    receiver.refuse.add("m0002")  # device CH-2, refused until dead-lettered
    await receiver.start()
    items = rows([f"CH-{i % 4}" for i in range(20)])  # m0002, m0006, m0010, ... are CH-2's
    mgr, outbox = await run(tmp_path, receiver, items, wait=19)
    await mgr.stop()
    dead = await outbox.rows("http:dno-a", "dead")
    await outbox.store.close()
    await receiver.stop()
    assert [r.message_id for r in dead] == ["m0002"] and dead[0].refusals == WINDOW.max_attempts
    attempts = sorted((s for s in receiver.spans if s.message_id == "m0002"), key=lambda s: s.start)
    assert len(attempts) == WINDOW.max_attempts
    later_same_device = [s for s in receiver.spans if s.device == "CH-2" and s.message_id != "m0002"]
    assert min(s.start for s in later_same_device) >= attempts[-1].end  # CH-2 waited for its head
    assert_device_order(receiver, items)


async def test_endpoint_down_then_back_delivers_everything_once_per_device_in_order(tmp_path: Path) -> None:
    receiver = SlowReceiver(delay=0.005)  # not started yet: down
    items = rows([f"CH-{i % 3}" for i in range(30)])
    mgr, outbox = await run(tmp_path, receiver, items)
    await asyncio.sleep(0.5)
    await receiver.start()
    await receiver.wait_for(30)
    await mgr.stop()
    states = {r.state for r in await outbox.rows("http:dno-a")}
    await outbox.store.close()
    await receiver.stop()
    assert sorted(receiver.accepted()) == [d.message_id for d in items] and len(receiver.spans) == 30
    assert states == {"delivered"}
    assert_device_order(receiver, items)


def test_window_is_read_from_the_config_and_validated(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[outbox]\nwindow = 16\n")
    assert load_config(f).outbox.window == 16
    f.write_text("[outbox]\nwindow = 0\n")
    try:
        load_config(f)
    except ConfigError as exc:
        assert "outbox.window: must be in 1..256" in exc.problems
    else:  # pragma: no cover
        raise AssertionError("window = 0 accepted")
