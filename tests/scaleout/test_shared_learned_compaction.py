"""The shared learned list stays bounded (a review of the Redis scale-out, thirteenth session): every 8.2
response that refreshes a link's time appended a row for the same ESME again, the list was never trimmed,
and every instance's start-up read it whole (1 M rows: 234 MB of Redis, 14.5 s to start, one 226 ms
``LRANGE`` blocking every instance). A row that changes nothing is not written (the engine records a
learned state only when it changed), and once the list is longer than ``compact_min`` rows and twice what
its last compaction left, one instance rewrites it as one row per ESME and one per hub end, as a single
node keeps them; the rows appended meanwhile are kept, and every instance carries its offset over to the
new generation (or reads the list again). Start-up reads it in pages."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import redis
from engine_support import MemoryInventory, MemoryScope, learned, request, t, unlinked
from redisfixture import redis_available

from gateway.engine import EngineConfig
from gateway.engine.effects import StateChange, Table
from gateway.engine.engine import Engine
from gateway.engine.events import DEVICE_REMOVED, HUB_DECOMMISSIONED
from gateway.engine.ports import InventoryView
from gateway.engine.records import to_record
from gateway.inventory import Inventory, InventoryRegistry, InventoryRow
from gateway.store.redis_state import RedisState, RedisStateConfig, _learn, _LearnedFold

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")

ESMES = [0x00DB0000000001A0 + i for i in range(5)]
HUBS = [0x00DB0000000002A2 + i for i in range(3)]
MPANS = ["1234567890126", "9999999999993", None]
STATIC = [(ESMES[0], HUBS[0], "1234567890126"), (ESMES[1], HUBS[0], None), (ESMES[2], HUBS[1], None)]


def _memory() -> MemoryInventory:
    return MemoryInventory([(e, ch, mpan, "Landis+Gyr") for e, ch, mpan in STATIC])


def _registry() -> InventoryRegistry:
    return InventoryRegistry(Inventory.from_rows([InventoryRow(e, ch, mpan, "Landis+Gyr", None)
                                                  for e, ch, mpan in STATIC]))  # fmt: skip


def _view(inv: InventoryView) -> dict[str, Any]:
    return {
        "learned": {e: inv.learned(e) for e in ESMES},
        "ch": {e: inv.ch_for_esme(e) for e in ESMES},
        "mpan": {e: inv.mpan_for_esme(e) for e in ESMES},
        "ends": {h: inv.hub_end(h) for h in HUBS},
    }


def _random_rows(rng: random.Random, engines: int) -> list[bytes]:
    """What ``engines`` instances that never load each other's rows push to the learned list (the rows of
    each commit, interleaved in a random commit order): 8.2 links, meter removals, hub ends."""
    views = [Engine(EngineConfig(), MemoryScope(ESMES), _memory()) for _ in range(engines)]
    rows: list[bytes] = []
    for n in range(60):
        at = float(n)
        pick = rng.random()
        if pick < 0.6:
            ev: Any = learned(at, esme=rng.choice(ESMES), ch=rng.choice([*HUBS, None]), mpan=rng.choice(MPANS),
                              time=rng.choice([None, float(rng.randint(0, 40))]))  # fmt: skip
        elif pick < 0.75:
            ev = unlinked(at, esme=rng.choice(ESMES), time=float(rng.randint(0, 40)))
        else:
            change = rng.choice([HUB_DECOMMISSIONED, DEVICE_REMOVED])
            ev = unlinked(at, esme=rng.choice(HUBS), time=float(rng.randint(0, 40)), ch=None, mpan=None,
                          change=change)  # fmt: skip
        for eff in rng.choice(views).handle(ev):
            if isinstance(eff, StateChange) and eff.table in (Table.LEARNED, Table.HUB_END):
                rows.append(json.dumps(to_record(eff.value), separators=(",", ":")).encode())
    return rows


@pytest.mark.parametrize("seed", range(60))
def test_the_compacted_list_replays_to_the_same_inventory_as_the_whole_list(seed: int) -> None:
    """A fresh instance applying the compacted rows ends where one applying the whole list does (both the
    test inventory and the gateway's), and compacting again changes nothing."""
    rng = random.Random(seed)
    rows = _random_rows(rng, engines=rng.choice([1, 2, 3]))
    fold = _LearnedFold()
    fold.add(rows)
    compacted = fold.rows()
    assert len(compacted) <= len(ESMES) + 2 * len(HUBS)  # (a device removed is a row of its own, hub or not)
    again = _LearnedFold()
    again.add(compacted)
    assert sorted(again.rows()) == sorted(compacted)
    for make in (_memory, _registry):
        whole, short, folded = make(), make(), make()
        for row in rows:
            _learn(whole, json.loads(row))
        for row in compacted:
            _learn(short, json.loads(row))
        fold.apply(folded)  # what a start-up does: the list folded as it is read, then applied
        assert _view(short) == _view(whole) == _view(folded)


# ------------------------------------------------------------------------------------------ on Redis


def _state(url: str, name: str) -> RedisState:
    return RedisState(RedisStateConfig(url=url, instance=name), EngineConfig(), MemoryScope(ESMES), _memory())


async def test_repeated_8_2_responses_of_one_meter_keep_the_learned_list_bounded(redis_url: str) -> None:
    """1,000 8.2 responses of one meter — half identical repeats (no row: nothing changes), half refreshing
    the link's time (a row each: the time orders later evidence) — with a tick every 10 messages, as the
    gateway ticks: the list never passes ``compact_min`` + what arrives between two ticks, where it grew to
    500 rows."""
    a = _state(redis_url, "a")
    a.compact_min = 40
    client = redis.Redis.from_url(redis_url)
    try:
        await a.start()
        for i in range(3):  # the same response again: nothing changes, no row
            await a.decide(learned(0, esme=ESMES[0], ch=HUBS[0], mpan=MPANS[0], time=0, mid=f"same-{i}"), None)
        assert client.llen("duisgw:learned") == 1
        longest = 0
        for i in range(1000):
            await a.decide(learned(i, esme=ESMES[0], ch=HUBS[0], mpan=MPANS[0], time=i // 2), None)
            if i % 10 == 9:
                await a.tick(t(i))
            longest = max(longest, int(client.llen("duisgw:learned")))
        assert longest <= 40 + 10
        assert client.llen("duisgw:learned") <= 40
        assert a.inventory.learned(ESMES[0]) is not None
        learned_state = a.inventory.learned(ESMES[0])
        assert learned_state is not None and learned_state.ch_time == t(499)
    finally:
        client.close()
        await a.aclose()


async def test_a_compaction_keeps_every_instances_view_and_a_new_instance_reads_the_same(redis_url: str) -> None:
    """A and B learn (8.2 responses, removals, hub ends) on both sides; A compacts the list while B appends
    (between A's read and its swap: the appended row is kept); both carry their offsets over without reading
    the list again and keep learning from each other; an instance started afterwards reads the compacted
    list and sees exactly what A and B see."""
    rng = random.Random(7)
    a, b = _state(redis_url, "a"), _state(redis_url, "b")
    client = redis.Redis.from_url(redis_url)
    try:
        await a.start()
        await b.start()

        async def traffic(n: int, start: float) -> None:
            for i in range(n):
                at = start + i
                if rng.random() < 0.8:
                    ev: Any = learned(at, esme=rng.choice(ESMES), ch=rng.choice(HUBS), mpan=rng.choice(MPANS),
                                      time=at)  # fmt: skip
                elif rng.random() < 0.5:
                    ev = unlinked(at, esme=rng.choice(ESMES), time=at)
                else:
                    ev = unlinked(at, esme=rng.choice(HUBS), time=at, ch=None, mpan=None, change=HUB_DECOMMISSIONED)
                await rng.choice((a, b)).decide(ev, None)

        await traffic(80, 0)
        await a.decide(request(90, esme=ESMES[0]), None)
        await b.decide(request(91, esme=ESMES[1]), None)
        before = int(client.llen("duisgw:learned"))
        swap = a._compact_swap

        async def racing_swap(**kw: Any) -> Any:  # B commits a link between A's read and its swap
            await b.decide(learned(95, esme=ESMES[4], ch=HUBS[2], mpan=None, time=95, mid="raced"), None)
            return await swap(**kw)

        a._compact_swap = racing_swap  # type: ignore[method-assign]
        assert await a.compact_learned()
        a._compact_swap = swap  # type: ignore[method-assign]
        after = int(client.llen("duisgw:learned"))
        assert after <= len(ESMES) + 2 * len(HUBS) + 1 < before
        assert client.get("duisgw:learned-gen") == f"1:{before}:{after - 1}".encode()

        reads = {"a": 0, "b": 0}
        for name, s in (("a", a), ("b", b)):
            scan = s._scan_learned

            async def counted(*args: Any, _scan: Any = scan, _name: str = name) -> Any:
                reads[_name] += 1
                return await _scan(*args)

            s._scan_learned = counted  # type: ignore[method-assign]
        await traffic(30, 100)
        await a.decide(request(140, esme=ESMES[0]), None)
        await b.decide(request(141, esme=ESMES[1]), None)
        assert reads == {"a": 0, "b": 0}  # offsets carried over: nothing read again
        assert b.inventory.ch_for_esme(ESMES[4]) is not None or b.inventory.learned(ESMES[4]) is not None
        c = _state(redis_url, "c")
        try:
            await c.start()
            assert _view(a.inventory) == _view(b.inventory) == _view(c.inventory)
        finally:
            await c.aclose()
    finally:
        client.close()
        await a.aclose()
        await b.aclose()


async def test_an_instance_that_found_a_compaction_due_leaves_it_once_another_compacted_the_list(redis_url: str) -> None:
    """Four instances read the learned list past the threshold, so each finds a compaction due. The first to
    tick compacts it; each other one, at its tick, used to compact it again (a full read and rewrite inside
    the tick, on up to N-1 instances, and a generation that made the others read the list again). Now the
    flag follows what the instance last read, and under the lock the list's length and generation are read
    again: the others carry their offsets over and leave it."""
    states = [_state(redis_url, f"i{i}") for i in range(4)]
    client = redis.Redis.from_url(redis_url)
    try:
        for s in states:
            s.compact_min = 30
            await s.start()
        for i in range(40):  # each 8.2 refreshes a link's time: a row each
            await states[i % 4].decide(learned(i, esme=ESMES[i % 5], ch=HUBS[0], mpan=None, time=i), None)
        for k, s in enumerate(states):  # every instance reads the list past the threshold
            await s.decide(learned(50 + k, esme=ESMES[0], ch=HUBS[0], mpan=None, time=39, mid=f"same-{k}"), None)
        assert [s._compact_due for s in states] == [True] * 4
        reads = {s.instance: 0 for s in states}
        swaps = {s.instance: 0 for s in states}
        for s in states:
            scan, swap = s._scan_learned, s._compact_swap

            async def counted(*args: Any, _scan: Any = scan, _name: str = s.instance) -> Any:
                reads[_name] += 1
                return await _scan(*args)

            async def swapped(*args: Any, _swap: Any = swap, _name: str = s.instance, **kw: Any) -> Any:
                swaps[_name] += 1
                return await _swap(*args, **kw)

            s._scan_learned = counted  # type: ignore[method-assign]
            s._compact_swap = swapped  # type: ignore[method-assign]
        for k, s in enumerate(states):
            await s.tick(t(100 + k))
        assert swaps == {"i0": 1, "i1": 0, "i2": 0, "i3": 0}
        assert reads == {"i0": 1, "i1": 0, "i2": 0, "i3": 0}  # the others carried their offsets over
        gen = client.get("duisgw:learned-gen")
        assert gen is not None and gen.decode().startswith("1:")
        assert [s._compact_due for s in states] == [False] * 4
        # a due flag noted from a read before the compaction: under the lock, the list is read again and left
        states[1]._compact_due = True
        assert not await states[1].compact_learned(if_due=True)
        assert client.get("duisgw:learned-gen") == gen and client.get("duisgw:learned-compacting") is None
        assert _view(states[0].inventory) == _view(states[3].inventory)
    finally:
        client.close()
        for s in states:
            await s.aclose()
