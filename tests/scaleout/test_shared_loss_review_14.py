"""Losing the shared state, the fourteenth review: what the thirteenth session left open.

1. Publishing the learned links back after a loss ran inside the first instance's tick, on its engine loop
   (~1.2 s per 100,000 ESMEs: ~17 s of every decision stalled at the field's 1.4 M); and an instance started
   after the loss read a list that still lacked them as if it were complete, so a genuine AD1 joined on a
   stale link (a meter moved off the hub before the loss) was suppressed.
2. An activation version committed in a batch whose local commit then failed was not recorded, so it was not
   given back after a later loss.

Each test runs its own real ``redis-server`` (no persistence) and restarts it empty."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, learned, outage, request, response, t
from redisfixture import RedisServer, reconnect, reconnect_engines, redis_available

from gateway.engine import Decision, Engine, EngineConfig, Tick
from gateway.engine.effects import Action
from gateway.engine.state import LearnedLink
from gateway.store.redis_state import RedisState, RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")

X = 0x00DB1234567890A0  # the ESME (in scope), behind CH1 in the inventory snapshot
CH1, MPAN1 = 0x00DB1234567890A2, "1234567890126"
CH2 = 0x00DB1234567890B2  # its Comms Hub after a hub swap (learned from an 8.2 response)
FILLER = [0x00DB0000000100F0 + i for i in range(60)]
ROWS = [(X, CH1, MPAN1, "Landis+Gyr")]


class GatedInventory(MemoryInventory):
    """A :class:`MemoryInventory` whose ``learned`` waits, once armed, until the test opens the gate (at most
    ``wait`` seconds): what publishing links back reads of each ESME."""

    def __init__(self, rows: Sequence[tuple[int, int | None, str | None, str | None]], wait: float = 4.0) -> None:
        super().__init__(rows)
        self.armed = False
        self.gate = threading.Event()
        self.wait = wait
        self.waited_on: set[str] = set()

    def learned(self, esme: int) -> LearnedLink | None:
        if self.armed and not self.gate.is_set():
            self.waited_on.add(threading.current_thread().name)
            self.gate.wait(self.wait)
            self.gate.set()  # (once: a publication on the engine loop waits once, not once per ESME)
        return super().learned(esme)


def make(server: RedisServer, name: str, inventory: MemoryInventory | None = None) -> RedisState:
    return RedisState(RedisStateConfig(url=server.url, instance=name), EngineConfig(), MemoryScope([X]),
                      inventory if inventory is not None else MemoryInventory(ROWS))  # fmt: skip


def list_rows(server: RedisServer) -> list[dict[str, Any]]:
    admin = redis.Redis.from_url(server.url)
    try:
        return [json.loads(row) for row in admin.lrange("duisgw:learned", 0, -1)]
    finally:
        admin.close()


def owed(server: RedisServer, epoch: str | None) -> list[str]:
    admin = redis.Redis.from_url(server.url)
    try:
        return sorted(m.decode() for m in admin.zrange(f"duisgw:learned-owed:{epoch}", 0, -1))
    finally:
        admin.close()


def decisions(effects: Sequence[object]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


async def until_published(state: RedisState, start: int, limit: float = 20.0) -> None:
    """Tick ``state`` until its publication after the loss is done (collected by a tick)."""
    deadline = time.monotonic() + limit
    minute = start
    while state._republish_due:
        assert time.monotonic() < deadline, "the publication did not end"
        await asyncio.sleep(0.02)
        minute += 1
        await state.tick(t(minute))


# ------------------------------------------------------------------------------------------ 1. links published back


async def test_links_published_back_after_the_loss_do_not_stall_the_engine_loop_and_decisions_go_on(
    server: RedisServer,
) -> None:
    """A holds 60 learned links (more than its inline bound, 10 here) when Redis restarts empty. Reading each
    ESME's learned state is made to wait 4 s: A's tick returns at once and A decides a message meanwhile, the
    publication waiting in a thread of its own; once the gate opens, a later tick collects it and the list has
    every link. It used to run inside the tick: the tick (and every decision behind it) waited the 4 s."""
    inv = GatedInventory(ROWS)
    a = make(server, "a", inv)
    a.republish_inline_max = 10
    try:
        await a.start()
        for i, e in enumerate(FILLER):
            await a.decide(learned(i, esme=e, ch=e + 0x10, mpan=None, time=i), None)
        server.restart_empty()
        await reconnect(a)
        inv.armed = True
        began = time.monotonic()
        await a.tick(t(100))
        tx = await a.decide(request(101, counter=1, esme=X, mid="req-during"), None)
        assert time.monotonic() - began < 2.0, "the tick waited for the publication"
        assert tx.effects and not tx.attempts > 1  # committed (the 11.3 request recorded)
        assert a.lost == 1 and a._republish_due
        assert owed(server, a.epoch) == ["a"]  # the list is known to lack A's links meanwhile
        inv.gate.set()
        await until_published(a, 102)
        assert sorted(int(r["esme"]) for r in list_rows(server) if "esme" in r) == sorted(FILLER)
        assert a.republished == len(FILLER)
        assert owed(server, a.epoch) == []
        assert threading.current_thread().name not in inv.waited_on
    finally:
        await a.aclose()


async def test_an_instance_started_after_the_loss_forwards_a_genuine_ad1_while_another_instance_still_owes_its_links(
    server: RedisServer,
) -> None:
    """Before the loss B learns that X moved from CH1 to CH2; A applies it. Redis restarts empty; A and B notice
    the loss at a load, before their next tick, so the new list lacks the link. C starts then (X behind CH1, its
    snapshot's link). X's activation is taken after the loss; CH1's genuine AD1 reaches C inside its window: C
    does not suppress it on a link the list may not have yet — forwarded (``ch-unknown``, as a single node that
    knows the link decides it), counted and logged. Once A and B have published their links back, C knows X is
    behind CH2 and an AD1 of CH2 in the window is suppressed, as on a single node. C used to suppress CH1's AD1."""
    a, b = make(server, "a"), make(server, "b")
    c: RedisState | None = None
    try:
        await a.start()
        await b.start()
        await b.decide(learned(1, esme=X, ch=CH2, mpan=MPAN1, time=1, mid="inv-x"), None)
        await a.decide(request(2, counter=1, esme=FILLER[0]), None)  # a load: A applies the link
        server.restart_empty()
        await reconnect(a, b)
        await a.decide(request(3, counter=2, esme=FILLER[1]), None)  # A notices the loss (no tick yet)
        c = make(server, "c")
        await c.start()
        assert c.inventory.ch_for_esme(X) == CH1
        await b.decide(request(70, counter=7, esme=X, mid="req-x"), None)  # B notices the loss too
        await b.decide(response(71, counter=7, esme=X, mid="rsp-x"), None)
        (d,) = decisions((await c.decide(outage(72, ch=CH1, mpan=None, mid="ad1-ch1"), b"<AD1>")).effects)
        assert (d.action, str(d.reason)) == (Action.FORWARD, "ch-unknown")
        assert c.partial_forwards == 1 and c.links_partial

        single = Engine(EngineConfig(), MemoryScope([X]), MemoryInventory(ROWS))
        for ev in (learned(1, esme=X, ch=CH2, mpan=MPAN1, time=1), request(70, counter=7, esme=X),
                   response(71, counter=7, esme=X)):  # fmt: skip
            single.handle(ev)
        (one,) = decisions(single.handle(outage(72, ch=CH1, mpan=None, mid="ad1-single-1")))
        assert (one.action, one.reason) == (d.action, d.reason)

        await a.tick(t(73))
        await b.tick(t(73))
        assert owed(server, a.epoch) == []
        (d2,) = decisions((await c.decide(outage(74, ch=CH2, mpan=None, mid="ad1-ch2"), b"<AD1>")).effects)
        assert c.inventory.ch_for_esme(X) == CH2 and not c.links_partial
        (two,) = decisions(single.handle(outage(74, ch=CH2, mpan=None, mid="ad1-single-2")))
        assert (d2.action, str(d2.reason)) == (two.action, str(two.reason)) == (Action.SUPPRESS, "activation-window")
        assert c.partial_forwards == 1
    finally:
        for state in (a, b, c):
            if state is not None:
                await state.aclose()


async def test_an_instance_that_read_the_state_before_the_loss_decides_on_its_links_while_others_owe_theirs(
    server: RedisServer,
) -> None:
    """B, which read the state before the loss (it holds X's link on CH2 in memory), decides CH2's AD1 on it
    while A still owes the list its links: suppressed in the window, as on a single node — only an instance
    that did not read the state before the loss forwards."""
    a, b = make(server, "a"), make(server, "b")
    try:
        await a.start()
        await b.start()
        await b.decide(learned(1, esme=X, ch=CH2, mpan=MPAN1, time=1, mid="inv-x"), None)
        await a.decide(request(2, counter=1, esme=FILLER[0]), None)
        server.restart_empty()
        await reconnect(a, b)
        await a.decide(request(3, counter=2, esme=FILLER[1]), None)  # A owes its links from now on
        await b.decide(request(70, counter=7, esme=X, mid="req-x"), None)
        await b.decide(response(71, counter=7, esme=X, mid="rsp-x"), None)
        assert "a" in owed(server, b.epoch)
        (d,) = decisions((await b.decide(outage(72, ch=CH2, mpan=None, mid="ad1-ch2"), b"<AD1>")).effects)
        assert (d.action, str(d.reason)) == (Action.SUPPRESS, "activation-window")
        assert b.partial_forwards == 0 and not b.links_partial
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_list_is_not_compacted_while_an_instance_still_owes_it_links(server: RedisServer) -> None:
    """A compaction while links are published back leaves the instances whose offset is not past the rows it
    folds (the publisher's own, as it appends) reading the whole list again on their engine loop (9.6 s at
    100,000 links, measured). A publishes its links back (past the compaction threshold) while B, which noticed
    the loss too, has not published yet: A's next ticks do not compact; once B has, A compacts."""
    a, b = make(server, "a"), make(server, "b")
    a.compact_min = 3
    b.compact_min = 3
    try:
        await a.start()
        await b.start()
        for i, e in enumerate(FILLER[:6]):
            await a.decide(learned(i, esme=e, ch=e + 0x10, mpan=None, time=i), None)
        await b.decide(request(9, counter=2, esme=X), None)  # B applies A's rows
        server.restart_empty()
        await reconnect(a, b)
        await b.decide(request(10, counter=3, esme=X), None)  # B notices: it owes the list its links
        await a.tick(t(20))  # A notices and publishes its six rows back
        assert len(list_rows(server)) == 6
        await a.decide(request(21, counter=4, esme=FILLER[7]), None)  # a load: A sees B still owes
        await a.tick(t(22))
        await a.tick(t(23))
        admin = redis.Redis.from_url(server.url)
        try:
            assert admin.get("duisgw:learned-gen") is None
            await b.tick(t(24))  # B publishes nothing new, and owes no more
            await a.decide(request(25, counter=5, esme=FILLER[8]), None)
            await a.tick(t(26))
            assert admin.get("duisgw:learned-gen") is not None
        finally:
            admin.close()
        assert sorted(int(r["esme"]) for r in list_rows(server)) == sorted(FILLER[:6])
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_long_list_is_compacted_by_a_thread_and_every_instance_keeps_its_links(server: RedisServer) -> None:
    """Past ``compact_inline_max`` rows the compaction runs in a thread of its own connection: a later tick
    collects it; the list is one row per ESME and an instance started then reads the same links."""
    a = make(server, "a")
    a.compact_min = 3
    a.compact_inline_max = 4
    d: RedisState | None = None
    try:
        await a.start()
        for i, e in enumerate(FILLER[:5]):
            await a.decide(learned(i, esme=e, ch=e + 0x10, mpan=None, time=i), None)
            await a.decide(learned(i + 1, esme=e, ch=e + 0x10, mpan=None, time=i + 1), None)
        await a.tick(t(30))
        deadline = time.monotonic() + 10
        while a._compactor is None or a._compactor.is_alive():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await a.tick(t(31))
        assert a._compactor is None
        assert sorted(int(r["esme"]) for r in list_rows(server)) == sorted(FILLER[:5])
        await a.decide(request(32, counter=1, esme=X), None)
        assert a._learned_gen != ""
        d = make(server, "d")
        await d.start()
        assert [d.inventory.ch_for_esme(e) for e in FILLER[:5]] == [e + 0x10 for e in FILLER[:5]]
    finally:
        await a.aclose()
        if d is not None:
            await d.aclose()


# ------------------------------------------------------------------------------------------ 2. a batch failed locally


def shared_engine(server: RedisServer, store: Path, name: str) -> SharedEngine:
    return SharedEngine(SqliteStore(store), RedisStateConfig(url=server.url, instance=name), EngineConfig(),
                        MemoryScope([ESME]), MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr")]))  # fmt: skip


def recorded(eng: SharedEngine) -> list[tuple[str, str, int]]:
    """The activation records the instance's store keeps: (key, state, evidence items)."""
    rows = eng._in_store(lambda db: db.execute("SELECT key, record FROM shared_activations ORDER BY key").fetchall())
    return [(str(k), str(json.loads(r)["state"]), len(json.loads(r)["evidence"])) for k, r in rows]


def test_an_activation_whose_batch_failed_after_its_redis_commit_is_recorded_when_decided_again_and_given_back(
    server: RedisServer, tmp_path: Path
) -> None:
    """A batch whose 11.3 response confirmed the activation in Redis fails at another message (contention): the
    processor decides each job again alone, and the response comes back as a duplicate of itself, with no state
    change. Its version (request and response) used to be recorded nowhere: after a later loss A gave back the
    request's pending version, and the meter's reboot AD1 was held for a response already taken (then forwarded
    ``hold-timeout``). Now the duplicate's record is read from the state and recorded: given back confirmed, the
    reboot AD1 is suppressed in its window, as on a single node."""
    a = shared_engine(server, tmp_path / "a.sqlite3", "a")
    b = shared_engine(server, tmp_path / "b.sqlite3", "b")
    try:
        a.submit(request(0, counter=7), b"<11.3 request>")
        decide = a.state.decide

        async def failing(event: Any, raw: bytes | None, route: tuple[str, str] | None = None) -> Any:
            if event.message_id == "other":
                from gateway.engine.errors import StoreError

                raise StoreError("shared state: no commit after 200 attempts (contention)")
            return await decide(event, raw, route)

        a.state.decide = failing  # type: ignore[method-assign]
        with pytest.raises(Exception, match="contention"):
            a.submit_many([(response(1, counter=7, mid="rsp-7"), b"<11.3 response>"),
                           (request(2, counter=40, mid="other"), b"<r>")])  # fmt: skip
        a.state.decide = decide  # type: ignore[method-assign]
        dup = a.submit_many([(response(1, counter=7, mid="rsp-7"), b"<11.3 response>")])[0]  # the job alone
        assert [type(e).__name__ for e in dup] == ["Duplicate"]
        assert [(state, n) for _key, state, n in recorded(a)] == [("confirmed", 2)]

        server.restart_empty()
        reconnect_engines(a, b)
        assert a.submit(Tick(t(2))) == []
        (d,) = decisions(b.submit(outage(3, mid="ad1-reboot"), b"<AD1>"))
        single = Engine(EngineConfig(), MemoryScope([ESME]), MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr")]))
        for ev in (request(0, counter=7), response(1, counter=7)):
            single.handle(ev)
        (one,) = decisions(single.handle(outage(3, mid="ad1-single")))
        assert (d.action, str(d.reason)) == (one.action, str(one.reason)) == (Action.SUPPRESS, "activation-window")
    finally:
        a.close()
        b.close()


def test_an_activation_re_delivered_to_another_instance_is_recorded_there_and_given_back_without_its_decider(
    server: RedisServer, tmp_path: Path
) -> None:
    """A takes the 11.3 request and response; the DSP re-delivers the response to B (A died before answering):
    B answers it as a duplicate and records the activation too. A never comes back; after the loss B gives the
    activation back and the reboot AD1 is suppressed. It used to be lost with A."""
    a = shared_engine(server, tmp_path / "a.sqlite3", "a")
    b = shared_engine(server, tmp_path / "b.sqlite3", "b")
    try:
        a.submit(request(0, counter=9, mid="req-9"), b"<11.3 request>")
        a.submit(response(1, counter=9, mid="rsp-9"), b"<11.3 response>")
        a.close()
        dup = b.submit_many([(response(1, counter=9, mid="rsp-9"), b"<11.3 response>")])[0]
        assert [type(e).__name__ for e in dup] == ["Duplicate"]
        assert [(state, n) for _key, state, n in recorded(b)] == [("confirmed", 2)]
        server.restart_empty()
        reconnect_engines(b)
        assert b.submit(Tick(t(2))) == []
        (d,) = decisions(b.submit(outage(3, mid="ad1-reboot"), b"<AD1>"))
        assert (d.action, str(d.reason)) == (Action.SUPPRESS, "activation-window")
    finally:
        b.close()
