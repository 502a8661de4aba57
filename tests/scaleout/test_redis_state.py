"""The engine on shared Redis state (a real redis-server): the same decisions as one in-memory
engine, exactly one decision per message when instances race, holds released by whoever ticks,
releases taken over after a crash, learned links shared."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from engine_support import (
    CH,
    ESME,
    MPAN,
    OTHER_CH,
    OTHER_ESME,
    OTHER_MPAN,
    MemoryInventory,
    MemoryScope,
    learned,
    other,
    outage,
    request,
    response,
    restored,
    t,
    unlinked,
)
from test_engine_properties import STORIES, _interleave, _story

from gateway.engine import Decision, Duplicate, Effect, Engine, EngineConfig, Event, Tick
from gateway.engine.effects import Action, Reason
from gateway.inventory import Inventory, InventoryRow
from gateway.store.redis_state import RedisState, RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import SqliteStore


def _rows(n: int) -> list[tuple[int, int | None, str | None, str | None]]:
    return [(0x00DB000000000000 + i, 0x00DC000000000000 + i, f"{i:013d}", "Landis+Gyr") for i in range(n)]


def _instances(url: str, n: int, rows: Sequence[tuple[int, int | None, str | None, str | None]],
               scope: Iterable[int], **cfg: object) -> list[RedisState]:  # fmt: skip
    euis = list(scope)
    return [
        RedisState(
            RedisStateConfig(url=url, instance=f"gw{i}", **cfg),  # type: ignore[arg-type]
            EngineConfig(),
            MemoryScope(euis),
            MemoryInventory(rows),  # each instance its own copy of the snapshot
        )
        for i in range(n)
    ]


async def _close(states: Sequence[RedisState]) -> None:
    for s in states:
        await s.aclose()


def _by_message(effects: Iterable[Effect]) -> dict[str, list[Decision]]:
    out: dict[str, list[Decision]] = {}
    for eff in effects:
        if isinstance(eff, Decision):
            out.setdefault(eff.message_id, []).append(eff)
    return out


async def _feed(states: Sequence[RedisState], events: Sequence[Event]) -> list[Effect]:
    """Round-robin over the instances, one event at a time (a tick goes to the next instance too)."""
    out: list[Effect] = []
    for i, ev in enumerate(events):
        s = states[i % len(states)]
        if isinstance(ev, Tick):
            txs, taken = await s.tick(ev.now)
            for tx in txs:
                out.extend(tx.effects)
                await s.ack_releases(r.decision.message_id for r in tx.released)
            assert not taken
        else:
            tx = await s.decide(ev, b"<raw " + ev.message_id.encode() + b">")
            out.extend(tx.effects)
            await s.ack_releases(r.decision.message_id for r in tx.released)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_three_instances_in_turn_decide_exactly_like_one_engine(redis_url: str, seed: int) -> None:
    rnd = random.Random(seed)
    kinds = [rnd.choice(STORIES) for _ in range(8)]
    events = _interleave([_story(k, n) for n, k in enumerate(kinds)], rnd)
    rows = _rows(len(kinds))
    single = Engine(EngineConfig(), MemoryScope(r[0] for r in rows), MemoryInventory(rows))
    expected = _by_message(e for ev in events for e in single.handle(ev))
    states = _instances(redis_url, 3, rows, (r[0] for r in rows))
    try:
        for s in states:
            await s.start()
        got = _by_message(await _feed(states, events))
        assert got == expected  # every decision, with its reason, evidence, window and times
        assert await states[0].held_ids() == []
        log = await states[0].decision_log()
        assert sorted((d.message_id, d.action) for _, d in log) == sorted(
            (d.message_id, d.action) for ds in expected.values() for d in ds
        )
    finally:
        await _close(states)


async def test_racing_instances_decide_one_message_id_exactly_once(redis_url: str) -> None:
    rows = [(ESME, CH, MPAN, "Landis+Gyr")]
    states = _instances(redis_url, 5, rows, [ESME])
    try:
        for s in states:
            await s.start()
        await states[0].decide(request(0, counter=7), None)
        await states[1].decide(response(1, counter=7), None)
        ad1 = outage(3, mid="ad1-race")
        results = await asyncio.gather(*(s.decide(ad1, b"ad1") for s in states))
        decisions = [e for r in results for e in r.effects if isinstance(e, Decision)]
        duplicates = [e for r in results for e in r.effects if isinstance(e, Duplicate)]
        assert len(decisions) == 1 and len(duplicates) == 4
        assert decisions[0].action is Action.SUPPRESS
        assert all(d.original == decisions[0] for d in duplicates)
        log = [d for _, d in await states[0].decision_log() if d.message_id == "ad1-race"]
        assert log == decisions
    finally:
        await _close(states)


async def test_evidence_and_outages_racing_on_the_same_esmes_end_with_one_final_decision_each(redis_url: str) -> None:
    """Per ESME: an 11.3 request is known, then its response and the AD1 race on two instances.
    Whichever commits first, the AD1 ends suppressed (held then released, or suppressed at once),
    exactly once, and nothing stays held."""
    n = 12
    rows = _rows(n)
    states = _instances(redis_url, 4, rows, (r[0] for r in rows))
    try:
        for s in states:
            await s.start()
        for i, (esme, *_rest) in enumerate(rows):
            await states[i % 4].decide(request(0, esme=esme, counter=100 + i, mid=f"req-{i}"), None)
        jobs = []
        for i, (esme, ch, mpan, _m) in enumerate(rows):
            ad1 = outage(3, ch=ch or 0, mpan=mpan, mid=f"ad1-{i}")
            rsp = response(1, arrival=3.6, esme=esme, counter=100 + i, mid=f"rsp-{i}")
            a, b = states[i % 4], states[(i + 1) % 4]
            jobs += [a.decide(ad1, b"ad1"), b.decide(rsp, None)]
        random.Random(7).shuffle(jobs)
        results = await asyncio.gather(*jobs)
        for s, r in zip(states * n, results, strict=False):
            await s.ack_releases(x.decision.message_id for x in r.released)
        log = await states[0].decision_log()
        finals: dict[str, list[Decision]] = {}
        for _owner, d in log:
            if d.disposition is not None:
                finals.setdefault(d.message_id, []).append(d)
        assert sorted(finals) == sorted(f"ad1-{i}" for i in range(n))
        assert all(len(ds) == 1 and ds[0].disposition == "suppress" for ds in finals.values())
        assert await states[0].held_ids() == []
        # the race was run both ways: some AD1s were decided before their response (held, then released
        # suppressed by it), others after it (suppressed at once); a run where one order never happened
        # did not test "whichever commits first"
        assert {ds[0].action for ds in finals.values()} == {Action.SUPPRESS, Action.RELEASE_SUPPRESS}, finals
    finally:
        await _close(states)


async def test_a_hold_is_released_once_by_whichever_instance_ticks_past_its_deadline(redis_url: str) -> None:
    rows = [(ESME, CH, MPAN, "Landis+Gyr")]
    states = _instances(redis_url, 3, rows, [ESME])
    try:
        for s in states:
            await s.start()
        await states[0].decide(request(0, counter=9), None)  # response never comes: the AD1 waits
        tx = await states[0].decide(outage(2, mid="held-ad1"), b"<held bytes>")
        assert [d.action for d in tx.effects if isinstance(d, Decision)] == [Action.HOLD]
        assert await states[1].held_ids() == ["held-ad1"]
        # instance 0 is gone; 1 and 2 tick past the deadline at the same time
        late = t(2 + 3.5) + EngineConfig().hold_limit + timedelta(seconds=1)
        (txs1, _), (txs2, _) = await asyncio.gather(states[1].tick(late), states[2].tick(late))
        releases = [r for tx in [*txs1, *txs2] for r in tx.released]
        assert len(releases) == 1
        assert releases[0].decision.action is Action.RELEASE_FORWARD
        assert releases[0].raw == b"<held bytes>"
        assert await states[1].held_ids() == []
        # not yet recorded by its decider: a later duplicate still answers the final decision
        dup = await states[0].decide(outage(2, mid="held-ad1"), b"<held bytes>")
        assert isinstance(dup.effects[0], Duplicate) and dup.effects[0].original == releases[0].decision
    finally:
        await _close(states)


async def test_a_release_its_decider_never_recorded_is_taken_over_after_the_lease(redis_url: str) -> None:
    rows = [(ESME, CH, MPAN, "Landis+Gyr")]
    states = _instances(redis_url, 2, rows, [ESME], lease=0.2)
    try:
        for s in states:
            await s.start()
        await states[0].decide(request(0, counter=11), None)
        await states[0].decide(outage(2, mid="ad1-lost"), b"<bytes>")
        # instance 0 decides the release (the 11.3 response) ... and dies before recording it
        tx = await states[0].decide(response(1, arrival=6, counter=11), None)
        assert [r.decision.message_id for r in tx.released] == ["ad1-lost"]
        _, taken = await states[1].tick(t(6))
        assert taken == []  # still within the lease
        await asyncio.sleep(0.25)
        _, taken = await states[1].tick(t(6))
        assert [(r.decision.message_id, r.decision.action, r.raw) for r in taken] == [
            ("ad1-lost", Action.RELEASE_SUPPRESS, b"<bytes>")
        ]
        await states[1].ack_releases(["ad1-lost"])
        _, again = await states[0].tick(t(6))
        assert again == []
    finally:
        await _close(states)


async def test_a_link_learned_on_one_instance_is_used_by_another(redis_url: str) -> None:
    new_ch, new_mpan = 0x00DB1234567890FF, "5555555555559"
    rows = [(ESME, CH, MPAN, "Landis+Gyr")]
    states = _instances(redis_url, 2, rows, [ESME])
    try:
        for s in states:
            await s.start()
        await states[0].decide(learned(0, esme=ESME, ch=new_ch, mpan=new_mpan), None)
        await states[0].decide(request(1, counter=12), None)
        await states[0].decide(response(2, counter=12), None)
        tx = await states[1].decide(outage(3, ch=new_ch, mpan=new_mpan, mid="ad1-new-ch"), None)
        (d,) = [e for e in tx.effects if isinstance(e, Decision)]
        assert d.action is Action.SUPPRESS and d.esmes == (ESME,)
    finally:
        await _close(states)


def _on_inventory(url: str, name: str) -> RedisState:
    snapshot = Inventory.from_rows([InventoryRow(ESME, CH, MPAN, "Landis+Gyr", "E470")])
    return RedisState(RedisStateConfig(url=url, instance=name), EngineConfig(), MemoryScope([ESME]), snapshot)


async def test_learned_links_end_as_the_newest_evidence_says_on_every_instance_whatever_the_list_order(
    redis_url: str,
) -> None:
    # the shared list holds links in commit order; each is applied by the time of its evidence, so a late
    # older 8.2 learned on another instance, an entry written before those times existed, and a replay
    # at start-up all end on the newest evidence
    new_ch, new_mpan = 0x00DB1234567890FF, "5555555555559"
    a, b = _on_inventory(redis_url, "a"), _on_inventory(redis_url, "b")
    late: RedisState | None = None
    try:
        for s in (a, b):
            await s.start()
        await a.decide(learned(60, esme=ESME, ch=new_ch, mpan=new_mpan, time=59), None)
        await b.decide(learned(120, esme=ESME, ch=CH, mpan=MPAN, time=30), None)  # re-delivered late, older
        old = {"esme": ESME, "ch": CH, "mpan": MPAN, "manufacturer": "Landis+Gyr", "model": None,
               "at": t(130).isoformat()}  # fmt: skip
        await a.redis.rpush(a.keys.learned, json.dumps(old))  # an entry written before evidence times
        await a.decide(request(140, counter=12), None)  # every load applies the entries it has not seen
        await b.decide(request(141, counter=13), None)
        late = _on_inventory(redis_url, "c")
        await late.start()  # replays the whole list
        for s in (a, b, late):
            assert (s.inventory.ch_for_esme(ESME), s.inventory.mpan_for_esme(ESME)) == (new_ch, new_mpan), s.instance
    finally:
        await _close([a, b] if late is None else [a, b, late])


async def test_a_removal_ends_the_links_on_every_instance_and_older_evidence_learned_elsewhere_does_not_restore_them(
    redis_url: str,
) -> None:
    a, b = _on_inventory(redis_url, "a"), _on_inventory(redis_url, "b")
    late: RedisState | None = None
    try:
        for s in (a, b):
            await s.start()
        await a.decide(unlinked(60, time=59), None)  # the meter withdrawn at 59
        await b.decide(learned(120, esme=ESME, ch=CH, mpan=MPAN, time=30), None)  # older 8.2, re-delivered late
        await a.decide(request(130, counter=12), None)
        await a.decide(response(130.5, counter=12), None)
        tx = await b.decide(outage(132, mid="ad1-after-removal"), None)
        (d,) = [e for e in tx.effects if isinstance(e, Decision)]
        assert (d.action, d.reason) == (Action.FORWARD, Reason.CH_UNKNOWN)  # no longer the withdrawn meter's
        late = _on_inventory(redis_url, "c")
        await late.start()
        for s in (a, b, late):
            assert (s.inventory.ch_for_esme(ESME), s.inventory.mpan_for_esme(ESME)) == (None, None), s.instance
    finally:
        await _close([a, b] if late is None else [a, b, late])


async def test_a_hub_decommissioning_and_a_contradicting_meter_identity_end_links_on_every_instance(
    redis_url: str,
) -> None:
    """``CHFDecommissioning`` (the hub's ESMEs lose their link to it) and ``MeterIdentity`` stating
    another MPxN (the meter's MPxN link ends) are stored per ESME in the shared learned list like a
    removal: every instance, one started after them too, holds the ends, and an older 8.2 learned on
    another instance does not restore them. The hub's event also takes the partitions of its ESMEs."""
    from gateway.engine.events import HUB_DECOMMISSIONED, METER_IDENTITY
    from gateway.store.redis_state import partition_keys

    a, b = _on_inventory(redis_url, "a"), _on_inventory(redis_url, "b")
    late: RedisState | None = None
    try:
        for s in (a, b):
            await s.start()
        hub_down = unlinked(60, esme=CH, time=59, ch=None, mpan=None, change=HUB_DECOMMISSIONED)
        assert a.keys.esme(ESME) in partition_keys(a.keys.prefix, hub_down, a.inventory)
        await a.decide(hub_down, None)
        stated = "1900000007774"
        identity = unlinked(61, time=59, ch=None, mpan=stated, change=METER_IDENTITY, mpxns=(stated,))
        await b.decide(identity, None)
        older = learned(120, esme=ESME, ch=CH, mpan=MPAN, time=30)  # an 8.2 of 30, re-delivered late
        await b.decide(older, None)
        await a.decide(request(130, counter=12), None)
        await a.decide(response(130.5, counter=12), None)
        tx = await b.decide(outage(132, mid="ad1-after-hub-down"), None)
        (d,) = [e for e in tx.effects if isinstance(e, Decision)]
        assert (d.action, d.reason) == (Action.FORWARD, Reason.CH_UNKNOWN)
        late = _on_inventory(redis_url, "c")
        await late.start()
        for s in (a, b, late):
            links = (s.inventory.ch_for_esme(ESME), s.inventory.mpan_for_esme(ESME))
            assert links == (None, None), s.instance
    finally:
        await _close([a, b] if late is None else [a, b, late])


async def test_a_hub_end_is_kept_per_hub_on_every_instance_and_older_evidence_of_any_esme_does_not_link_to_it(
    redis_url: str,
) -> None:
    """A ``CHFDecommissioning`` is kept per hub in the shared learned list (a ``HubEnd`` row): an 8.2 older
    than it, decided on another instance and naming an ESME that was not behind the hub, does not link it
    there, on any instance (one started after them too); an 8.2 newer than the end (the hub
    re-commissioned) links it."""
    from gateway.engine.events import HUB_DECOMMISSIONED

    other = 0x00DB1234567892A0  # not in the snapshot
    a, b = _on_inventory(redis_url, "a"), _on_inventory(redis_url, "b")
    late: RedisState | None = None
    try:
        for s in (a, b):
            await s.start()
        await a.decide(unlinked(60, esme=CH, time=59, ch=None, mpan=None, change=HUB_DECOMMISSIONED), None)
        await b.decide(learned(120, esme=other, ch=CH, mpan=None, time=30), None)  # an 8.2 of 30, late
        await a.decide(learned(121, esme=ESME, ch=CH, mpan=None, time=40, mid="inv-esme-40"), None)
        late = _on_inventory(redis_url, "c")
        await late.start()
        for s in (a, b, late):
            assert s.inventory.esmes_for_ch(CH) == (), s.instance
            assert s.inventory.hub_end(CH) == t(59), s.instance
        await b.decide(learned(130, esme=other, ch=CH, mpan=None, time=125, mid="inv-new"), None)
        await a.decide(outage(131, ch=0x00DB1234567890EE, mpan=None, mid="ad1-elsewhere"), None)  # a load
        assert a.inventory.esmes_for_ch(CH) == (other,) and b.inventory.esmes_for_ch(CH) == (other,)
    finally:
        await _close([a, b] if late is None else [a, b, late])


def test_shared_engine_keeps_bytes_and_decisions_in_each_instance_store(redis_url: str, tmp_path: Path) -> None:
    """Instance A holds an AD1 and dies; B, fed the evidence, releases it and records A's bytes;
    a re-delivery of a message decided by B reaches C, which keeps it with B's decision."""
    rows = [(ESME, CH, MPAN, "Landis+Gyr")]

    def make(name: str) -> SharedEngine:
        return SharedEngine(SqliteStore(tmp_path / f"{name}.sqlite3"), RedisStateConfig(url=redis_url, instance=name),
                            EngineConfig(), MemoryScope([ESME]), MemoryInventory(rows))  # fmt: skip

    a, b, c = make("a"), make("b"), make("c")
    try:
        a.submit(request(0, counter=21), b"<req>")
        (hold,) = [e for e in a.submit(outage(2, mid="ad1-x"), b"<AD1 bytes>") if isinstance(e, Decision)]
        assert hold.action is Action.HOLD and a.held_count == 1
        a.close()  # "killed"
        effects = b.submit(response(1, arrival=6, counter=21), b"<rsp>")
        (rel,) = [e for e in effects if isinstance(e, Decision)]
        assert rel.action is Action.RELEASE_SUPPRESS
        assert b.store.original_bytes("ad1-x") == b"<AD1 bytes>" and b.store.status("ad1-x") == "suppress"
        assert b.held_count == 0
        fwd = replace(outage(40, mid="ad1-y"), arrival=t(45))
        b.submit(fwd, b"<AD1 y>")
        dup = c.submit(fwd, b"<AD1 y>")
        assert isinstance(dup[0], Duplicate)
        assert c.store.status("ad1-y") == "forward" and c.store.original_bytes("ad1-y") == b"<AD1 y>"
        assert c.store.undelivered() == [("ad1-y", b"<AD1 y>")]
    finally:
        b.close()
        c.close()


def _suppressed_fields(url: str, mid: str, *, released: bool | None = None) -> list[str]:
    """Every partition holding an ``s:<mid>`` record (the suppressed-outage record of ``mid``); with ``released``,
    only those whose record is (True) or is not (False) marked released by an operator."""
    client = redis.Redis.from_url(url)
    try:
        found = []
        for key in client.scan_iter(match="duisgw:[ec]:*"):
            value = client.hget(key, f"s:{mid}")
            if value is not None and (released is None or json.loads(value).get("released", False) is released):
                found.append(key.decode())
        return sorted(found)
    finally:
        client.close()


def test_an_operator_release_marks_the_suppressed_outage_released_for_every_instance(
    redis_url: str, tmp_path: Path
) -> None:
    """``duisgw audit release`` on the instance that keeps a suppressed AD1: when that instance takes the
    release in, the AD1's suppressed-outage record is marked released in the shared state (every partition it
    is in), so
    its restoration alert, decided by ANOTHER instance, is forwarded (``not-paired``) exactly as a single
    node that took the same release in decides it."""
    other_esme = ESME + 1
    rows = [(ESME, CH, MPAN, "Landis+Gyr"), (other_esme, CH, "1234567890999", "Landis+Gyr")]  # twin elements

    def make(name: str) -> SharedEngine:
        return SharedEngine(SqliteStore(tmp_path / f"{name}.sqlite3"), RedisStateConfig(url=redis_url, instance=name),
                            EngineConfig(), MemoryScope([ESME, other_esme]), MemoryInventory(rows))  # fmt: skip

    story: list[Event] = [request(0, counter=21), response(1, counter=21), outage(2, mid="ad1-x")]
    single = Engine(EngineConfig(), MemoryScope([ESME, other_esme]), MemoryInventory(rows))
    for ev in story:
        single.handle(ev)
    single.released_by_operator("ad1-x")
    expected = [e for e in single.handle(restored(2, esme=other_esme, mid="rst-x")) if isinstance(e, Decision)]
    assert [(d.action, d.reason) for d in expected] == [(Action.FORWARD, Reason.NOT_PAIRED)]

    a, b = make("a"), make("b")
    try:
        for ev in story:
            a.submit(ev, b"<" + ev.message_id.encode() + b">")
        assert a.store.status("ad1-x") == "suppress"
        assert len(_suppressed_fields(redis_url, "ad1-x")) == 3  # E(esme), E(other), C(ch)
        assert a.store.release_suppressed("ad1-x", "ops", "customer off supply", t(10)) == b"<ad1-x>"
        assert a.take_in_operator_releases() == [("ad1-x", "power-outage")]
        assert a.take_in_operator_releases() == []  # once, ever
        # kept for its retention, marked released everywhere (a later restoration of it is forwarded)
        assert _suppressed_fields(redis_url, "ad1-x", released=False) == []
        assert len(_suppressed_fields(redis_url, "ad1-x", released=True)) == 3
        got = [e for e in b.submit(restored(2, esme=other_esme, mid="rst-x"), b"<rst>") if isinstance(e, Decision)]
        assert got == expected
    finally:
        a.close()
        b.close()


def test_an_operator_release_waits_for_the_shared_state_and_is_taken_in_once(redis_url: str, tmp_path: Path) -> None:
    """The shared state cannot be reached when the release is taken in: nothing is flagged taken in (the
    next scan takes it in again, and then the record is marked released in the shared state); the release of a record the
    shared state no longer holds (pruned past retention) is taken in all the same."""
    rows = [(ESME, CH, MPAN, "Landis+Gyr")]

    def make(name: str, url: str) -> SharedEngine:
        return SharedEngine(SqliteStore(tmp_path / f"{name}.sqlite3"), RedisStateConfig(url=url, instance=name),
                            EngineConfig(), MemoryScope([ESME]), MemoryInventory(rows))  # fmt: skip

    a = make("a", redis_url)
    try:
        for ev in (request(0, counter=21), response(1, counter=21), outage(2, mid="ad1-x"), outage(3, mid="ad1-y")):
            a.submit(ev, b"<" + ev.message_id.encode() + b">")
        a.store.release_suppressed("ad1-x", "ops", "", t(10))
        a.store.release_suppressed("ad1-y", "ops", "", t(10))
        commit = a.state._commit

        async def lost(**_kw: object) -> object:
            raise redis.exceptions.ConnectionError("connection lost")

        a.state._commit = cast(Any, lost)
        with pytest.raises(redis.exceptions.ConnectionError):
            a.take_in_operator_releases()
        a.state._commit = commit
        assert [mid for _seq, mid, _kind in a.store.operator_releases()] == ["ad1-x", "ad1-y"]
        assert _suppressed_fields(redis_url, "ad1-x") and _suppressed_fields(redis_url, "ad1-y")
        client = redis.Redis.from_url(redis_url)
        try:
            for key in client.scan_iter(match="duisgw:[ec]:*"):
                client.hdel(key, "s:ad1-y")  # pruned meanwhile
        finally:
            client.close()
        assert a.take_in_operator_releases() == [("ad1-x", "power-outage"), ("ad1-y", "power-outage")]
        assert _suppressed_fields(redis_url, "ad1-x", released=False) == []
        assert len(_suppressed_fields(redis_url, "ad1-x", released=True)) == 2
        assert _suppressed_fields(redis_url, "ad1-y") == []  # not written back
    finally:
        a.close()


async def test_learned_links_loaded_by_concurrent_transactions_are_applied_once_and_none_is_skipped(
    redis_url: str,
) -> None:
    """One instance decides several messages at once (a batch's disjoint partitions run concurrently):
    their loads read the same new learned links from the same offset. The instance must apply them and
    move its offset past them ONCE, or it skips the links learned next (elsewhere) and keeps joining an
    AD1 with the old hub."""
    rows = _rows(4)
    a, b = _instances(redis_url, 2, rows, [r[0] for r in rows])
    try:
        await a.start()
        await b.start()
        for i, (esme, _ch, _mpan, _m) in enumerate(rows[:3]):
            await b.decide(learned(i, esme=esme, ch=0x00DD000000000000 + i, mpan=None, mid=f"inv-{i}", time=i), None)
        await asyncio.gather(*(a.decide(other(10 + i, mid=f"other-{i}"), None) for i in range(3)))
        esme, new_ch = rows[3][0], 0x00DD0000000000FF
        await b.decide(learned(20, esme=esme, ch=new_ch, mpan=None, mid="inv-moved", time=20), None)
        await a.decide(request(21, counter=31, esme=esme), None)
        await a.decide(response(22, counter=31, esme=esme), None)
        tx = await a.decide(outage(23, ch=new_ch, mpan=None, mid="ad1-moved"), None)
        (d,) = [e for e in tx.effects if isinstance(e, Decision)]
        assert (d.action, d.esmes) == (Action.SUPPRESS, (esme,))
    finally:
        await _close([a, b])


def test_a_failed_batch_leaves_none_of_its_transactions_running_into_the_next(redis_url: str, tmp_path: Path) -> None:
    """A batch fails (one transaction loses Redis): the senders get 503. Its other transactions, still in
    flight, must not run on during the next batch (deciding its messages out of order with that batch)."""
    rows = [(ESME, CH, MPAN, "Landis+Gyr"), (OTHER_ESME, OTHER_CH, OTHER_MPAN, "Landis+Gyr")]
    a = SharedEngine(SqliteStore(tmp_path / "a.sqlite3"), RedisStateConfig(url=redis_url, instance="a"),
                     EngineConfig(), MemoryScope([ESME, OTHER_ESME]), MemoryInventory(rows))  # fmt: skip
    try:
        decide = a.state.decide

        async def flaky(event: Event, raw: bytes | None, route: tuple[str, str] | None = None) -> Any:
            if event.message_id == "req-lost":
                raise redis.exceptions.ConnectionError("connection lost")
            await asyncio.sleep(0.05)  # still in flight when the other fails
            return await decide(cast(Any, event), raw, route)

        a.state.decide = cast(Any, flaky)
        with pytest.raises(redis.exceptions.ConnectionError):
            a.submit_many([(request(0, counter=41, mid="req-lost"), None),
                           (request(0, counter=42, esme=OTHER_ESME, mid="req-slow"), None)])  # fmt: skip
        a.state.decide = decide
        a._run(asyncio.sleep(0.2))  # the next use of the loop (a later batch)
        assert a.state.conflicts == 0
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.get("duisgw:seen:req-slow") is None
        finally:
            client.close()
    finally:
        a.close()


SIBLING = 0x00DB1234567892A0  # a second ESME behind CH, not in scope


@pytest.mark.parametrize("result", [0, 2])
async def test_an_out_of_scope_esmes_restoration_on_one_instance_waits_for_the_hubs_ad1_held_by_another(
    redis_url: str, result: int
) -> None:
    # the AD1 held by one instance is stored under its in-scope ESME; the restoration of the hub's other
    # meter, taken by another instance, must find it (through the hub's partition) and wait for it, and the
    # response taken by the first instance releases both, exactly as one engine does
    rows = [(ESME, CH, MPAN, "Landis+Gyr"), (SIBLING, CH, "5555555555559", "Other")]
    events: list[Event] = [
        request(0, mid="req"),
        outage(1, mid="ad1"),
        restored(1, arrival=6, esme=SIBLING, mid="rst"),
        response(0.5, arrival=7, result=result, mid="rsp"),
    ]
    single = Engine(EngineConfig(), MemoryScope([ESME]), MemoryInventory(rows))
    expected = _by_message(e for ev in events for e in single.handle(ev))
    then = Action.RELEASE_SUPPRESS if result == 0 else Action.RELEASE_FORWARD
    assert [d.action for d in expected["rst"]] == [Action.HOLD, then]
    states = _instances(redis_url, 2, rows, [ESME])
    try:
        for s in states:
            await s.start()
        got = _by_message(await _feed(states, events))
        assert got == expected
        assert await states[0].held_ids() == []
        # nothing of the holds is left in any partition (the hub's included)
        r = redis.Redis.from_url(redis_url)
        try:
            for key in r.keys("duisgw:[ec]:*"):
                fields = [f.decode() for f in r.hkeys(key)]
                assert [f for f in fields if f.split(":", 1)[0] in ("h", "o")] == [], (key, fields)
        finally:
            r.close()
    finally:
        await _close(states)


async def test_a_restoration_waiting_on_another_instance_is_released_with_the_hubs_ad1_at_its_time_out(
    redis_url: str,
) -> None:
    rows = [(ESME, CH, MPAN, "Landis+Gyr"), (SIBLING, CH, "5555555555559", "Other")]
    events: list[Event] = [
        request(0, mid="req"),
        outage(1, mid="ad1"),
        restored(1, arrival=6, esme=SIBLING, mid="rst"),
        Tick(t(30)),
    ]
    single = Engine(EngineConfig(), MemoryScope([ESME]), MemoryInventory(rows))
    expected = _by_message(e for ev in events for e in single.handle(ev))
    assert [(d.action, d.reason) for d in expected["rst"]] == [
        (Action.HOLD, Reason.PENDING_OUTAGE),
        (Action.RELEASE_FORWARD, Reason.NOT_PAIRED),
    ]
    states = _instances(redis_url, 2, rows, [ESME])
    try:
        for s in states:
            await s.start()
        assert _by_message(await _feed(states, events)) == expected
        assert await states[0].held_ids() == []
    finally:
        await _close(states)


async def test_a_hubs_reference_to_a_hold_an_older_instance_released_is_dropped_not_released_again(
    redis_url: str,
) -> None:
    # an instance of the version before the hub references existed releases a hold by removing its record from
    # E of its ESMEs only: the hub's o:<id> stays behind. It is not a hold: nothing waits for it, it is never
    # released again, and the next transaction on the hub removes it
    rows = [(ESME, CH, MPAN, "Landis+Gyr"), (SIBLING, CH, "5555555555559", "Other")]
    states = _instances(redis_url, 2, rows, [ESME])
    r = redis.Redis.from_url(redis_url)
    try:
        for s in states:
            await s.start()
        await states[0].decide(request(0, mid="req"), None)
        await states[0].decide(outage(1, mid="ad1"), b"<ad1>")
        hub, part = f"duisgw:c:{{{CH:016X}}}", f"duisgw:e:{{{ESME:016X}}}"
        assert r.hexists(hub, "o:ad1") and r.hexists(part, "h:ad1")
        # what the older version's release wrote (its decision and release entry do not matter here)
        r.hdel(part, "h:ad1")
        r.delete("duisgw:hm:ad1")
        r.zrem("duisgw:held", "ad1")
        tx = await states[1].decide(restored(1, arrival=6, esme=SIBLING, mid="rst"), b"<rst>")
        assert [(d.message_id, d.action, d.reason) for d in tx.effects if isinstance(d, Decision)] == [
            ("rst", Action.FORWARD, Reason.NOT_PAIRED)
        ]
        assert tx.released == []
        assert not r.hexists(hub, "o:ad1")
        txs, _ = await states[0].tick(t(60))
        assert [rel.decision.message_id for tx in txs for rel in tx.released] == []
    finally:
        r.close()
        await _close(states)


@pytest.mark.parametrize("seed", range(6))
async def test_restorations_of_every_esme_on_a_hub_with_a_held_ad1_decide_on_two_instances_like_one_engine(
    redis_url: str, seed: int
) -> None:
    rnd = random.Random(seed)
    rows = [(ESME, CH, MPAN, "Landis+Gyr"), (SIBLING, CH, "5555555555559", "Other")]
    events: list[Event] = [request(0, mid="req"), outage(1, mid="ad1")]
    late: list[Event] = []
    for i, esme in enumerate((ESME, SIBLING, SIBLING)):
        at = rnd.choice([5.0, 6.0, 8.0, 20.0])
        interrupted = rnd.choice([1.0, 2.0, -200.0])  # this outage, or an earlier one
        (events if at < 8 else late).append(restored(interrupted, arrival=at, esme=esme, mid=f"rst{i}"))
    outcome = rnd.choice(["success", "failure", "none"])
    if outcome != "none":
        events.append(response(0.5, arrival=8, result=0 if outcome == "success" else 2, mid="rsp"))
    events += [Tick(t(16)), *late, Tick(t(30))]
    single = Engine(EngineConfig(), MemoryScope([ESME]), MemoryInventory(rows))
    expected = _by_message(e for ev in events for e in single.handle(ev))
    states = _instances(redis_url, 2, rows, [ESME])
    try:
        for s in states:
            await s.start()
        assert _by_message(await _feed(states, events)) == expected
        assert await states[0].held_ids() == []
    finally:
        await _close(states)
