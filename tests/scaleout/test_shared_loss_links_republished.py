"""Losing the shared state, the learned links: after Redis lost its data the new ``{prefix}learned`` list is
empty, while the running instances still hold in memory the ESME <-> Comms Hub / MPAN links (and hub ends)
they learned before, each with the time of its evidence. An instance started (or restarted) after the loss
read only the empty list and decided AD1s on the bare inventory snapshot: a meter moved to another hub was
behind its old hub again, and the old hub's genuine outage was suppressed on the meter's activation.

Now each instance, once per loss it notices (at its next tick), publishes back to the list the links and
hub ends it holds that the list does not (compared as every instance merges them: by the time of each
link's evidence), one instance at a time. Each test runs its own real ``redis-server`` (no persistence)
and restarts it empty."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
import redis
from engine_support import MemoryInventory, MemoryScope, learned, outage, request, response, t, unlinked
from redisfixture import RedisServer, reconnect, redis_available

from gateway.engine import Decision, Engine, EngineConfig
from gateway.engine.effects import Action
from gateway.engine.events import HUB_DECOMMISSIONED
from gateway.store.redis_state import RedisState, RedisStateConfig

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")

X = 0x00DB1234567890A0  # the ESME (in scope), behind CH1 in the inventory snapshot
CH1, MPAN1 = 0x00DB1234567890A2, "1234567890126"
CH2 = 0x00DB1234567890B2  # its Comms Hub after a hub swap (learned from an 8.2 response)
CH3 = 0x00DB1234567890C2
Y = 0x00DB1234567890D0  # another ESME, unknown to the snapshot
FILLER = [0x00DB0000000000F0 + i for i in range(5)]
ROWS = [(X, CH1, MPAN1, "Landis+Gyr")]




def make(server: RedisServer, name: str) -> RedisState:
    return RedisState(RedisStateConfig(url=server.url, instance=name), EngineConfig(), MemoryScope([X]),
                      MemoryInventory(ROWS))  # fmt: skip


def list_rows(server: RedisServer) -> list[dict[str, object]]:
    admin = redis.Redis.from_url(server.url)
    try:
        return [json.loads(row) for row in admin.lrange("duisgw:learned", 0, -1)]
    finally:
        admin.close()


def decisions(effects: Sequence[object]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


async def test_an_instance_started_after_the_loss_forwards_the_genuine_ad1_because_a_running_instance_republished_the_link(
    server: RedisServer,
) -> None:
    """Before the loss B learns that X moved from CH1 to CH2 (A applies it at its next load). Redis restarts
    empty; A, still running, ticks. C starts after the loss: it reads the list A published back, so X is
    behind CH2 for it too. X's activation after the loss (request, response) and a genuine AD1 of CH1 in
    its window: C forwards it (``ch-unknown``), as A, B and a single node do. It used to suppress it: C
    read an empty list and had X behind CH1, its snapshot's link."""
    a, b = make(server, "a"), make(server, "b")
    c: RedisState | None = None
    try:
        await a.start()
        await b.start()
        await b.decide(learned(1, esme=X, ch=CH2, mpan=MPAN1, time=1, mid="inv-x"), None)
        await a.decide(request(2, counter=1, esme=FILLER[0]), None)  # a load: A applies the link
        assert a.inventory.ch_for_esme(X) == CH2
        server.restart_empty()
        await reconnect(a, b)
        await a.tick(t(50))  # notices the loss, publishes back what it holds
        assert a.lost == 1

        c = make(server, "c")
        await c.start()
        assert c.inventory.ch_for_esme(X) == CH2
        await b.decide(request(70, counter=7, esme=X, mid="req-x"), None)
        await b.decide(response(71, counter=7, esme=X, mid="rsp-x"), None)
        (d,) = decisions((await c.decide(outage(72, ch=CH1, mpan=None, mid="ad1-ch1"), b"<AD1>")).effects)
        assert (d.action, str(d.reason)) == (Action.FORWARD, "ch-unknown")

        single = Engine(EngineConfig(), MemoryScope([X]), MemoryInventory(ROWS))
        for ev in (learned(1, esme=X, ch=CH2, mpan=MPAN1, time=1), request(70, counter=7, esme=X),
                   response(71, counter=7, esme=X)):  # fmt: skip
            single.handle(ev)
        (one,) = decisions(single.handle(outage(72, ch=CH1, mpan=None, mid="ad1-single")))
        assert (one.action, one.reason) == (d.action, d.reason)
    finally:
        for state in (a, b, c):
            if state is not None:
                await state.aclose()


async def test_links_the_list_already_has_after_the_loss_are_not_published_again(server: RedisServer) -> None:
    """A and B both hold five links and a hub end learned before the loss. After it, C (started after the
    loss) learns one of them again from the same evidence. A's tick publishes only what the list lacks (the
    four other links and the hub end); B's and A's later ticks publish nothing: once per loss, and only
    what the list does not have."""
    a, b = make(server, "a"), make(server, "b")
    c: RedisState | None = None
    try:
        await a.start()
        await b.start()
        for i, e in enumerate(FILLER):
            await (a if i % 2 else b).decide(learned(i, esme=e, ch=e + 0x10, mpan=None, time=i), None)
        await b.decide(unlinked(6, esme=CH3, time=6, ch=None, mpan=None, change=HUB_DECOMMISSIONED), None)
        await a.decide(request(9, counter=1, esme=X), None)  # a load: A applies B's rows
        await b.decide(request(9, counter=2, esme=X), None)
        server.restart_empty()
        await reconnect(a, b)
        c = make(server, "c")
        await c.start()
        await c.decide(learned(20, esme=FILLER[0], ch=FILLER[0] + 0x10, mpan=None, time=0), None)
        assert len(list_rows(server)) == 1

        await a.tick(t(30))
        rows = list_rows(server)
        assert len(rows) == 6
        assert sorted(int(str(r["esme"])) for r in rows if "esme" in r) == sorted(FILLER)
        assert [int(str(r["ch"])) for r in rows if "esme" not in r] == [CH3]
        await b.tick(t(31))
        await a.tick(t(32))
        await b.tick(t(33))
        assert len(list_rows(server)) == 6
        assert (a.lost, b.lost) == (1, 1)
    finally:
        for state in (a, b, c):
            if state is not None:
                await state.aclose()


async def test_two_instances_noticing_the_loss_together_publish_each_link_once(server: RedisServer) -> None:
    """A and B hold the same links and tick at the same moment after the loss: one publishes (under a lock),
    the other finds them in the list at its next tick and publishes nothing."""
    a, b = make(server, "a"), make(server, "b")
    try:
        await a.start()
        await b.start()
        for i, e in enumerate(FILLER):
            await a.decide(learned(i, esme=e, ch=e + 0x10, mpan=None, time=i), None)
        await b.decide(request(9, counter=2, esme=X), None)  # a load: B applies A's rows
        server.restart_empty()
        await reconnect(a, b)
        await asyncio.gather(a.tick(t(30)), b.tick(t(30)))
        await asyncio.gather(a.tick(t(31)), b.tick(t(31)))
        rows = list_rows(server)
        assert sorted(int(str(r["esme"])) for r in rows) == sorted(FILLER)
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_republished_link_merges_by_evidence_time_with_what_was_learned_since_the_loss(
    server: RedisServer,
) -> None:
    """A holds X on CH2 (evidence at minute 10) and Y on CH2 (minute 10). Since the loss, C learned X on CH3
    from newer evidence (minute 20) and Y on CH3 from older evidence (minute 5, a late 8.2). After A
    published back, an instance started then has X on CH3 (the newer evidence since the loss is not moved
    back) and Y on CH2 (the late older 8.2 does not win over the newer link published back)."""
    a = make(server, "a")
    c: RedisState | None = None
    d: RedisState | None = None
    try:
        await a.start()
        await a.decide(learned(10, esme=X, ch=CH2, mpan=MPAN1, time=10), None)
        await a.decide(learned(10, esme=Y, ch=CH2, mpan=None, time=10), None)
        server.restart_empty()
        await reconnect(a)
        c = make(server, "c")
        await c.start()
        await c.decide(learned(30, esme=X, ch=CH3, mpan=MPAN1, time=20), None)
        await c.decide(learned(30, esme=Y, ch=CH3, mpan=None, time=5), None)
        await a.tick(t(40))
        d = make(server, "d")
        await d.start()
        assert (d.inventory.ch_for_esme(X), d.inventory.ch_for_esme(Y)) == (CH3, CH2)
        assert (a.inventory.ch_for_esme(X), a.inventory.ch_for_esme(Y)) == (CH3, CH2)
    finally:
        for state in (a, c, d):
            if state is not None:
                await state.aclose()


async def test_a_hub_end_learned_before_the_loss_is_published_back_and_keeps_an_older_8_2_from_linking_to_the_hub(
    server: RedisServer,
) -> None:
    """B took CH3's decommissioning (minute 30) before the loss; A applied it. After the loss A publishes
    the hub end back: an instance started after it does not link Y to CH3 on an older 8.2 response
    (minute 20) naming CH3, as B and A would not. It used to: nothing told it the hub had ended."""
    a, b = make(server, "a"), make(server, "b")
    d: RedisState | None = None
    try:
        await a.start()
        await b.start()
        await b.decide(unlinked(30, esme=CH3, time=30, ch=None, mpan=None, change=HUB_DECOMMISSIONED), None)
        await a.decide(request(31, counter=1, esme=X), None)  # a load: A applies the hub end
        assert a.inventory.hub_end(CH3) == t(30)
        server.restart_empty()
        await reconnect(a, b)
        await a.tick(t(40))
        d = make(server, "d")
        await d.start()
        assert d.inventory.hub_end(CH3) == t(30)
        await d.decide(learned(41, esme=Y, ch=CH3, mpan=None, time=20), None)
        assert d.inventory.ch_for_esme(Y) is None
    finally:
        for state in (a, b, d):
            if state is not None:
                await state.aclose()


async def test_links_published_back_are_compacted_like_any_rows_and_read_by_a_later_instance(
    server: RedisServer,
) -> None:
    """The rows published back are ordinary rows of the list: past the compaction threshold (3 here) the
    next tick compacts the list to one row per ESME and hub end, and an instance started then reads the
    same links."""
    a = make(server, "a")
    a.compact_min = 3
    d: RedisState | None = None
    try:
        await a.start()
        for i, e in enumerate(FILLER):
            await a.decide(learned(i, esme=e, ch=e + 0x10, mpan=None, time=i), None)
            await a.decide(learned(i + 1, esme=e, ch=e + 0x10, mpan=None, time=i + 1), None)  # a refresh
        server.restart_empty()
        await reconnect(a)
        await a.tick(t(40))  # publishes back five rows
        await a.tick(t(41))  # the list is past the threshold: compacted
        admin = redis.Redis.from_url(server.url)
        try:
            assert admin.get("duisgw:learned-gen") is not None
        finally:
            admin.close()
        rows = list_rows(server)
        assert sorted(int(str(r["esme"])) for r in rows) == sorted(FILLER)
        d = make(server, "d")
        await d.start()
        assert [d.inventory.ch_for_esme(e) for e in FILLER] == [e + 0x10 for e in FILLER]
        assert [d.inventory.learned(e).ch_time for e in FILLER] == [t(i + 1) for i in range(5)]  # type: ignore[union-attr]
    finally:
        await a.aclose()
        if d is not None:
            await d.aclose()
