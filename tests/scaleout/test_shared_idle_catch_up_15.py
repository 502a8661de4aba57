"""An idle instance catches up with a long learned list while idle, not a tick's budget at a time.

After a loss of the shared state one instance publishes its learned links back (1.4 M rows in the field) and every
other running instance must read them (``test_shared_catch_up_14.py``): a load applies a page, a tick about 40 ms of
rows. An instance with nothing to decide caught up at the ticks' rate only — about 0.6 s per 1,000 rows at a 1 s
tick, ~14 min at 1.4 M rows — and meanwhile forwarded every AD1 its links would have suppressed or held. Now, while it
lags, a thread of the :class:`SharedEngine` reads on and applies the list in slices of about 10 ms, each only while
the engine thread decides nothing (a decision waits for a slice in progress at most). Real redis-server, the real
:class:`SharedEngine` with its own SQLite store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
from engine_support import MemoryInventory, MemoryScope, outage, request, response, t
from redisfixture import RedisServer, reconnect_engines

from gateway.engine import Decision, EngineConfig, Tick
from gateway.engine.effects import Action
from gateway.engine.ports import InventoryView
from gateway.engine.records import to_record
from gateway.engine.state import LearnedLink
from gateway.inventory import Inventory, InventoryRegistry
from gateway.store.redis_state import RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import SqliteStore

X = 0x00DB1234567890A0  # the ESME (in scope), behind CH1 in the inventory snapshot
CH1, MPAN1 = 0x00DB1234567890A2, "1234567890126"
ROWS = [(X, CH1, MPAN1, "Landis+Gyr")]
BASE = 0x00DB000001000000  # other ESMEs learned elsewhere (the rows an instance publishes back)


class RecordingInventory(MemoryInventory):
    """A :class:`MemoryInventory` that records every learned row applied to it, in order (ESME, CH)."""

    def __init__(self, rows: Sequence[tuple[int, int | None, str | None, str | None]]) -> None:
        super().__init__(rows)
        self.applied: list[tuple[int, int | None]] = []

    def learn_link(self, link: LearnedLink) -> LearnedLink | None:
        self.applied.append((link.esme, link.ch))
        return super().learn_link(link)


def row(esme: int, ch: int) -> bytes:
    """A learned row as an instance writes it (an ESME's learned state)."""
    link = LearnedLink(esme, ch, None, "Landis+Gyr", None, None, t(1))
    return json.dumps(to_record(link), separators=(",", ":"), sort_keys=True).encode()


def publish_back(url: str, n: int) -> list[tuple[int, int]]:
    """Append ``n`` rows to the learned list (another instance publishing links back); their (ESME, CH)."""
    links = [(BASE + i, BASE + 0x800000 + i) for i in range(n)]
    admin = redis.Redis.from_url(url)
    try:
        for at in range(0, n, 1000):
            admin.rpush("duisgw:learned", *[row(e, c) for e, c in links[at : at + 1000]])
    finally:
        admin.close()
    return links


Make = Callable[[InventoryView], SharedEngine]


@pytest.fixture
def make(redis_url: str, tmp_path: Path) -> Iterator[Make]:
    """Instance B (its own SQLite store) on the inventory given; closed after the test."""
    made: list[SharedEngine] = []

    def build(inventory: InventoryView) -> SharedEngine:
        engine = SharedEngine(SqliteStore(tmp_path / f"b{len(made)}.sqlite3"),
                              RedisStateConfig(url=redis_url, instance="b"), EngineConfig(), MemoryScope([X]),
                              inventory)  # fmt: skip
        made.append(engine)
        return engine

    yield build
    for engine in made:
        engine.close()


def wait_caught_up(engine: SharedEngine, limit: float) -> float:
    """Seconds until ``engine`` lags no more, with no call into it meanwhile (idle); fails after ``limit``."""
    began = time.monotonic()
    while engine.state.lagging:
        if time.monotonic() - began > limit:
            raise AssertionError(
                f"still lagging after {limit} s idle: {engine.state.learned_offset} rows of the learned list applied"
            )
        time.sleep(0.02)
    return time.monotonic() - began


def test_an_idle_instance_catches_up_with_a_long_learned_list_between_two_ticks_and_applies_each_row_once(
    redis_url: str, make: Make
) -> None:
    """20,000 rows are published back while B is idle; B's next tick notices them. With nothing else to do (no tick
    either), B applies every row within seconds, each once and in the list's order (it applied a page and the tick's
    ~40 ms — about 1,000-2,000 rows — and nothing more until its next tick)."""
    inventory = RecordingInventory(ROWS)
    b = make(inventory)
    links = publish_back(redis_url, 20_000)
    b.submit(Tick(t(10)))
    assert b.state.lagging and b.state.learned_offset < 20_000

    wait_caught_up(b, 30.0)
    assert b.state.learned_offset == 20_000
    assert inventory.applied == links  # each row once, in order
    assert inventory.ch_for_esme(BASE + 19_999) == BASE + 0x800000 + 19_999


def test_an_ad1_an_idle_instance_receives_after_catching_up_is_suppressed_not_forwarded_for_lag(
    redis_url: str, make: Make
) -> None:
    """B lags behind 20,000 rows published back (its links may be stale meanwhile: an AD1 they would suppress is
    forwarded). It stays idle for a while after the tick that noticed them; the meter's activation and its reboot AD1
    arrive then: suppressed (``activation-window``), as B has read the whole list. It was forwarded (``ch-unknown``,
    counted as a lag forward): B was still behind by all but the tick's and the loads' pages."""
    b = make(MemoryInventory(ROWS))
    publish_back(redis_url, 20_000)
    b.submit(Tick(t(10)))
    assert b.state.lagging
    deadline = time.monotonic() + 30.0
    while b.state.lagging and time.monotonic() < deadline:  # idle (a real gateway ticks every second: not needed)
        time.sleep(0.05)

    b.submit(request(11, counter=1, esme=X, mid="req-1"), b"<req>")
    b.submit(response(12, counter=1, esme=X, mid="rsp-1"), b"<rsp>")
    (decision,) = [d for d in b.submit(outage(13, mid="ad1-1"), b"<ad1>") if isinstance(d, Decision)]
    assert (decision.action, decision.reason.value, b.state.lag_forwards) == (Action.SUPPRESS, "activation-window", 0)


def test_a_decision_during_the_idle_catch_up_waits_for_a_slice_at_most_not_for_the_catch_up(
    redis_url: str, make: Make
) -> None:
    """B catches up with 100,000 rows on the real inventory (several seconds of applying). Decisions submitted
    meanwhile are each decided in a fraction of that — a slice of the catch-up (~10 ms) and their own load's page
    (25 ms) at most, plus the host's noise — while B still lags (the catch-up goes on between them)."""
    b = make(InventoryRegistry(Inventory()))
    publish_back(redis_url, 100_000)
    b.submit(Tick(t(10)))
    time.sleep(0.3)  # (idle: the catch-up runs)
    took: list[float] = []
    for k in range(5):
        began = time.monotonic()
        b.submit(request(11, counter=k, esme=X, mid=f"req-{k}"), b"<req>")
        took.append(time.monotonic() - began)
        time.sleep(0.05)
    assert b.state.lagging, "caught up before the decisions: the list is too short for this host"
    assert max(took) < 0.5, took
    wait_caught_up(b, 120.0)
    assert b.state.learned_offset == 100_000


class SlowInventory(RecordingInventory):
    """Applying a learned row takes ~1 ms (a slow host): the idle catch-up of a few thousand rows lasts seconds."""

    def learn_link(self, link: LearnedLink) -> LearnedLink | None:
        time.sleep(0.001)
        return super().learn_link(link)


def test_the_idle_catch_up_stops_at_a_loss_of_the_state_and_the_instance_catches_up_with_the_new_list(
    server: RedisServer, tmp_path: Path
) -> None:
    """B is catching up while idle with 20,000 rows when Redis restarts empty; 3,000 other rows are published to the
    new state. The catch-up reads nothing of the lost list's rows as the new list's (it stops: the epoch it reads is
    gone); B's next tick notices the loss, and B — idle again — applies the new list, each row once, in order."""
    inventory = SlowInventory(ROWS)
    b = SharedEngine(SqliteStore(tmp_path / "b.sqlite3"), RedisStateConfig(url=server.url, instance="b"),
                     EngineConfig(), MemoryScope([X]), inventory)  # fmt: skip
    try:
        publish_back(server.url, 20_000)
        b.submit(Tick(t(10)))
        time.sleep(0.5)  # (idle: the catch-up runs)
        assert b.state.lagging
        server.restart_empty()
        began = len(inventory.applied)
        fresh = [(BASE + 0x400000 + i, BASE + 0xC00000 + i) for i in range(3000)]
        admin = redis.Redis.from_url(server.url)
        try:
            admin.rpush("duisgw:learned", *[row(e, c) for e, c in fresh])
        finally:
            admin.close()
        reconnect_engines(b)
        minute = 10.0
        deadline = time.monotonic() + 60.0
        while b.state.lost == 0 or b.state.lagging:  # a tick now and then (as a gateway's): idle in between
            assert time.monotonic() < deadline, (b.state.lost, b.state.learned_offset)
            minute += 0.01
            b.submit(Tick(t(minute)))
            time.sleep(0.5)
        after = inventory.applied[began:]
        # the lost list's rows being applied when Redis went: at most the page in hand, never taken for the new
        # list's; then the new list, once, in order (the engine's own republication of what it learned comes after)
        firsts = [i for i, link in enumerate(after) if link == fresh[0]]
        assert len(firsts) == 1, firsts
        assert after[firsts[0] : firsts[0] + 3000] == fresh
        assert all(link[0] < BASE + 0x400000 for link in after[: firsts[0]])
        assert b.state.learned_offset >= 3000
        assert inventory.ch_for_esme(fresh[-1][0]) == fresh[-1][1]
    finally:
        b.close()
