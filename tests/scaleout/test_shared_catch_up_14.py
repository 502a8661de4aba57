"""Catching up with a long learned list (fourteenth session): an instance reads it a page per load and tick.

After a loss of the shared state one instance publishes its learned links back (100,000 rows at 100,000 ESMEs, 1.4 M
in the field) from a thread; every *other* running instance used to read all those rows in at its next load, on its
engine loop (~42 us a row on the real ``Inventory``: 4.2 s of every decision per 100,000 rows), and one lagging
behind a compaction read the whole list again there. Now a load applies at most a page (``learned_page`` rows) and a
tick a few pages in a bounded time; the instance *lags* until it has applied every row, and meanwhile an AD1 its links
would suppress or hold is forwarded (rows it has not read may move a meter off the hub), counted and logged.

Each test runs its own real ``redis-server`` (no persistence); some restart it empty."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from engine_support import MemoryInventory, MemoryScope, learned, outage, request, response, t
from redisfixture import RedisServer, reconnect, redis_available

from gateway.engine import Decision, EngineConfig
from gateway.engine.effects import Action
from gateway.engine.records import to_record
from gateway.engine.state import LearnedLink
from gateway.store.redis_state import RedisState, RedisStateConfig

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")

X = 0x00DB1234567890A0  # the ESME (in scope), behind CH1 in the inventory snapshot
CH1, MPAN1 = 0x00DB1234567890A2, "1234567890126"
CH2 = 0x00DB1234567890B2  # its Comms Hub after a hub swap
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


def make(
    server: RedisServer, name: str, inventory: MemoryInventory | None = None, page: int = 10
) -> RedisState:
    state = RedisState(RedisStateConfig(url=server.url, instance=name), EngineConfig(), MemoryScope([X]),
                       inventory if inventory is not None else MemoryInventory(ROWS))  # fmt: skip
    state.learned_page = page
    return state


def row(esme: int, ch: int, minute: float) -> bytes:
    """A learned row as an instance writes it (an ESME's learned state)."""
    link = LearnedLink(esme, ch, None, "Landis+Gyr", None, None, t(minute))
    return json.dumps(to_record(link), separators=(",", ":"), sort_keys=True).encode()


def push(server: RedisServer, rows: Sequence[bytes]) -> int:
    """Append ``rows`` to the learned list (another instance publishing links back); returns its length."""
    admin = redis.Redis.from_url(server.url)
    try:
        n = 0
        for at in range(0, len(rows), 1000):
            n = int(admin.rpush("duisgw:learned", *rows[at : at + 1000]))
        return n
    finally:
        admin.close()


def list_rows(server: RedisServer) -> list[dict[str, Any]]:
    admin = redis.Redis.from_url(server.url)
    try:
        return [json.loads(r) for r in admin.lrange("duisgw:learned", 0, -1)]
    finally:
        admin.close()


def decisions(effects: Sequence[object]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


async def until_caught_up(state: RedisState, start: float, limit: int = 200) -> float:
    """Tick ``state`` (a minute apart from ``start``) until it lags no more; returns the last tick's minute."""
    minute = start
    for _ in range(limit):
        minute += 0.01
        await state.tick(t(minute))
        if not state.lagging:
            return minute
    raise AssertionError("the instance did not catch up")


# ------------------------------------------------------------------------------------------ a page per load


async def test_a_load_applies_at_most_a_page_of_a_long_learned_list_and_ticks_catch_up_in_a_bounded_time(
    server: RedisServer,
) -> None:
    """B runs (default page, 1,000 rows) when 2,500 rows are appended to the learned list. Its next decision
    applies one page (it used to apply all 2,500 on its engine loop: 100,000 rows stalled it 4.2 s); B lags
    until its ticks have applied the rest, each tick for about its budget at most, then lags no more and knows
    every link."""
    b = make(server, "b", page=1000)
    b.catch_up_budget = 0.0  # (one page per tick: the smallest budget)
    b.learned_budget = None  # (whole pages: the time bound is the next test's)
    try:
        await b.start()
        n = push(server, [row(BASE + i, BASE + 0x800000 + i, 1) for i in range(2500)])
        await b.decide(request(2, counter=1, esme=X, mid="req-1"), None)
        assert b._learned_offset == 1000 and b.lagging
        assert b.inventory.ch_for_esme(BASE + 999) == BASE + 0x800000 + 999
        assert b.inventory.ch_for_esme(BASE + 1000) is None  # not read yet
        await b.tick(t(3))
        assert b._learned_offset == 2000 and b.lagging
        await b.tick(t(4))
        assert b._learned_offset == n and not b.lagging
        assert all(b.inventory.ch_for_esme(BASE + i) == BASE + 0x800000 + i for i in range(2500))
    finally:
        await b.aclose()


async def test_a_load_stops_applying_learned_rows_once_its_time_budget_is_spent(server: RedisServer) -> None:
    """A slow or busy host applies fewer rows a load rather than stalling longer: with no time to spend
    (``learned_budget`` 0) a load applies the rows up to its first check (32) and leaves the rest of its page
    for the next load or tick, which carry on from there; the instance lags meanwhile and ends with every row."""
    inv = RecordingInventory(ROWS)
    b = make(server, "b", inv, page=1000)
    b.learned_budget = 0.0
    try:
        await b.start()
        esmes = [BASE + i for i in range(100)]
        push(server, [row(e, e + 0x800000, 1) for e in esmes])
        await b.decide(request(2, counter=1, esme=X, mid="req-1"), None)
        assert b._learned_offset == 32 and b.lagging
        await b.decide(request(3, counter=2, esme=X, mid="req-2"), None)
        assert b._learned_offset == 64
        await until_caught_up(b, 4)
        assert inv.applied == [(e, e + 0x800000) for e in esmes]
    finally:
        await b.aclose()


# ------------------------------------------------------------------------------------------ AD1s while lagging


async def test_an_ad1_decided_while_the_instance_lags_is_forwarded_and_suppressed_once_it_has_caught_up(
    server: RedisServer,
) -> None:
    """X's activation is committed (request and response), so CH1's AD1 in its window is suppressed on a single
    node. Then 25 rows are appended to the list, the last moving X to CH2 (a hub swap learned elsewhere). B (page
    10) decides CH1's AD1 after one page: it has not read the rows that move X, so it must not suppress on X's
    link to CH1 — forwarded (``ch-unknown``), counted in ``partial_forwards`` and logged. It used to read every
    row at that load (stalling). A second AD1 of CH1 decided once B caught up is forwarded because X is behind
    CH2 now, and CH2's AD1 is suppressed (decided normally)."""
    a, b = make(server, "a"), make(server, "b")
    try:
        await a.start()
        await b.start()
        await a.decide(request(70, counter=7, esme=X, mid="req-x"), None)
        await a.decide(response(71, counter=7, esme=X, mid="rsp-x"), None)
        push(server, [row(BASE + i, BASE + 0x800000 + i, 1) for i in range(24)] + [row(X, CH2, 60)])
        (d,) = decisions((await b.decide(outage(72, ch=CH1, mpan=None, mid="ad1-lag"), b"<AD1>")).effects)
        assert b._learned_offset == 10 and b.lagging
        assert (d.action, str(d.reason)) == (Action.FORWARD, "ch-unknown")
        assert b.partial_forwards == 1 and b.lag_forwards == 1
        assert b.inventory.ch_for_esme(X) == CH1  # (the row that moves X is not read yet)
        await until_caught_up(b, 72)
        assert b.inventory.ch_for_esme(X) == CH2
        (d1,) = decisions((await b.decide(outage(73, ch=CH1, mpan=None, mid="ad1-ch1"), b"<AD1>")).effects)
        assert d1.action is Action.FORWARD
        (d2,) = decisions((await b.decide(outage(74, ch=CH2, mpan=None, mid="ad1-ch2"), b"<AD1>")).effects)
        assert (d2.action, str(d2.reason)) == (Action.SUPPRESS, "activation-window")
        assert b.partial_forwards == 1 and b.lag_forwards == 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_ad1_decided_while_the_instance_lags_is_not_suppressed_even_when_the_unread_rows_leave_it(
    server: RedisServer,
) -> None:
    """The rows B has not read do not name X: B cannot know that without reading them, so CH1's AD1 decided while
    it lags is forwarded all the same (the safe side); the same AD1 kind decided once B caught up is suppressed
    in the activation's window, as on a single node. (Before the change B read every row at the load and
    suppressed it, stalling its loop.)"""
    a, b = make(server, "a"), make(server, "b")
    try:
        await a.start()
        await b.start()
        await a.decide(request(70, counter=7, esme=X, mid="req-x"), None)
        await a.decide(response(71, counter=7, esme=X, mid="rsp-x"), None)
        push(server, [row(BASE + i, BASE + 0x800000 + i, 1) for i in range(35)])
        (d,) = decisions((await b.decide(outage(72, ch=CH1, mpan=None, mid="ad1-lag"), b"<AD1>")).effects)
        assert (d.action, str(d.reason)) == (Action.FORWARD, "ch-unknown")
        assert b.lag_forwards == 1
        await until_caught_up(b, 72)
        (d2,) = decisions((await b.decide(outage(73, ch=CH1, mpan=None, mid="ad1-after"), b"<AD1>")).effects)
        assert (d2.action, str(d2.reason)) == (Action.SUPPRESS, "activation-window")
        assert b.lag_forwards == 1 and not b.lagging
    finally:
        await a.aclose()
        await b.aclose()


# ------------------------------------------------------------------------------------------ nothing skipped


async def test_every_row_is_applied_once_and_in_order_across_pages_and_concurrent_loads(
    server: RedisServer,
) -> None:
    """35 rows read in by pages of 10, by loads (several of B's transactions at once, from the same offset) and
    ticks: each row is applied exactly once, in the list's order."""
    inv = RecordingInventory(ROWS)
    b = make(server, "b", inv)
    b.catch_up_budget = 0.0
    try:
        await b.start()
        esmes = [BASE + i for i in range(35)]
        push(server, [row(e, e + 0x800000, 1) for e in esmes])
        await asyncio.gather(
            *(b.decide(request(2, counter=i, esme=X, mid=f"req-{i}"), None) for i in range(3))
        )
        await until_caught_up(b, 3)
        assert inv.applied == [(e, e + 0x800000) for e in esmes]
    finally:
        await b.aclose()


async def test_a_compaction_while_the_instance_lags_reads_the_compacted_list_by_pages_and_misses_nothing(
    server: RedisServer,
) -> None:
    """B has read 10 of 40 rows (ESMEs learned twice: an older CH then a newer one) when A compacts the list and
    more rows are appended. B's offset is not past the rows folded, so it reads the compacted list again from 0 —
    by pages, not the whole list on its loop at that load — and ends with every ESME's newest link, including the
    rows appended after the compaction, each row of the new list applied once and in order."""
    inv = RecordingInventory(ROWS)
    a, b = make(server, "a"), make(server, "b", inv)
    b.catch_up_budget = 0.0
    a.compact_min = 5
    try:
        await a.start()
        await b.start()
        esmes = [BASE + i for i in range(20)]
        push(server, [row(e, e + 0x800000, 1) for e in esmes] + [row(e, e + 0x900000, 2) for e in esmes])
        await b.decide(request(2, counter=1, esme=X, mid="req-1"), None)
        assert b._learned_offset == 10 and b.lagging
        assert await a.compact_learned()
        compacted = list_rows(server)
        assert len(compacted) == 20
        late = [row(BASE + 100 + i, BASE + 0x900100 + i, 3) for i in range(5)]
        push(server, late)
        inv.applied.clear()
        await b.decide(request(3, counter=2, esme=X, mid="req-2"), None)
        assert b._learned_offset == 10 and b.lagging  # the compacted list from 0, one page
        await until_caught_up(b, 4)
        expected = [(int(r["esme"]), int(r["ch"])) for r in list_rows(server)]
        assert len(expected) == 25
        assert inv.applied == expected
        assert all(inv.ch_for_esme(e) == e + 0x900000 for e in esmes)
        assert all(inv.ch_for_esme(BASE + 100 + i) == BASE + 0x900100 + i for i in range(5))
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_second_loss_while_the_instance_lags_reads_the_new_list_from_its_start_and_misses_nothing(
    server: RedisServer,
) -> None:
    """A learns 30 links, B reads them. Redis restarts empty: A publishes its links back; B notices the loss at a
    load and reads the new list again by pages. While B lags (one page read), Redis restarts empty again: A
    publishes its links again, another instance's 5 links learned since are appended, and B — which noticed the
    second loss at its next load — reads the newest list from its start, each row once and in order, and ends
    with every link."""
    inv = RecordingInventory(ROWS)
    a, b = make(server, "a"), make(server, "b", inv)
    b.catch_up_budget = 0.0
    try:
        await a.start()
        await b.start()
        esmes = [BASE + i for i in range(30)]
        for i, e in enumerate(esmes):
            await a.decide(learned(i, esme=e, ch=e + 0x800000, mpan=None, time=i, mid=f"inv-{i}"), None)
        await until_caught_up(b, 30)
        assert all(inv.ch_for_esme(e) == e + 0x800000 for e in esmes)
        server.restart_empty()
        await reconnect(a, b)
        await a.tick(t(40))  # A notices the loss and publishes its links back (inside the tick: few)
        assert len(list_rows(server)) == 30
        await b.decide(request(41, counter=1, esme=X, mid="req-1"), None)
        assert b.lost == 1 and b._learned_offset == 10 and b.lagging
        server.restart_empty()
        await reconnect(a, b)
        await a.tick(t(42))  # the second loss: A publishes back again
        late = [row(BASE + 100 + i, BASE + 0x900100 + i, 41) for i in range(5)]
        push(server, late)
        inv.applied.clear()
        await b.decide(request(43, counter=2, esme=X, mid="req-2"), None)
        assert b.lost == 2 and b._learned_offset == 10 and b.lagging
        await until_caught_up(b, 43)
        rows = [(int(r["esme"]), int(r["ch"])) for r in list_rows(server)]
        assert len(rows) == 35 and b.republished == 0  # (B held nothing the list lacked)
        assert inv.applied == rows
        assert all(inv.ch_for_esme(e) == e + 0x800000 for e in esmes)
        assert all(inv.ch_for_esme(BASE + 100 + i) == BASE + 0x900100 + i for i in range(5))
    finally:
        await a.aclose()
        await b.aclose()
