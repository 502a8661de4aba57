"""Order-independence and restorability of the engine."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import timedelta

from engine_support import (
    ESME,
    MPAN,
    SUPPLIER,
    T0,
    MemoryInventory,
    MemoryScope,
    decisions,
    final,
    learned,
    outage,
    request,
    response,
    run,
    standard_world,
    t,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine import (
    ActivationRequested,
    ActivationResponse,
    Engine,
    EngineConfig,
    Event,
    FutureDatedOutcome,
    PowerOutage,
    StateChange,
    SupplyRestored,
    Table,
    Tick,
    records_of,
)
from gateway.engine.events import ALERT_FD_FAILURE, ALERT_FD_SUCCESS, CANCELLATION_SENTINEL

STORIES = ("immediate", "immediate-failed", "fd-success", "fd-failure", "cancelled", "no-activation", "no-response")


def _story(kind: str, n: int) -> list[Event]:
    """Events of one activation story on ESME n (request first, AD1 before its restoration)."""
    esme, ch, mpan = 0x00DB000000000000 + n, 0x00DC000000000000 + n, f"{n:013d}"
    base = dict(arrival=T0, verified=True)
    req = lambda counter, execute=None, cancel=False: ActivationRequested(  # noqa: E731
        message_id=f"{n}-req-{counter}",
        supplier=SUPPLIER,
        esme=esme,
        counter=counter,
        execution_time=CANCELLATION_SENTINEL if cancel else execute,
        is_cancellation=cancel,
        seen_at=t(0),
        **base,
    )
    rsp = lambda counter, result, accepted=False: ActivationResponse(  # noqa: E731
        message_id=f"{n}-rsp-{counter}",
        esme=esme,
        supplier=SUPPLIER,
        counter=counter,
        response_time=t(1),
        result=result,
        accepted_future=accepted,
        **base,
    )
    fd = lambda ok: FutureDatedOutcome(  # noqa: E731
        message_id=f"{n}-fd",
        esme=esme,
        supplier=SUPPLIER,
        command_counter=2,
        execution_time=t(5),
        result=0 if ok else 2,
        alert_code=ALERT_FD_SUCCESS if ok else ALERT_FD_FAILURE,
        **base,
    )
    ad1 = PowerOutage(message_id=f"{n}-ad1", ch=ch, mpan=mpan, start_time=t(6), **base)
    rst = SupplyRestored(message_id=f"{n}-rst", esme=esme, alert_code=0x8F36, interruption_time=t(6), **base)
    if kind == "immediate":
        return [req(1), rsp(1, 0), ad1, rst]
    if kind == "immediate-failed":
        return [req(1), rsp(1, 3), ad1]
    if kind in ("fd-success", "fd-failure"):
        return [req(2, t(5)), rsp(2, None, accepted=True), fd(kind == "fd-success"), ad1, rst]
    if kind == "cancelled":
        return [req(2, t(5)), req(3, cancel=True), ad1]
    if kind == "no-response":
        return [req(1), ad1]
    return [ad1]


def _world(n_stories: int) -> Engine:
    rows = [(0x00DB000000000000 + n, 0x00DC000000000000 + n, f"{n:013d}", "Landis+Gyr") for n in range(n_stories)]
    return Engine(EngineConfig(), MemoryScope(r[0] for r in rows), MemoryInventory(rows))


def _interleave(stories: list[list[Event]], rnd: random.Random) -> list[Event]:
    """A random merge of the stories; inside a story the request stays first and a restoration
    stays after its AD1, everything else may come in any order."""
    queues = []
    for events in stories:
        head, rest = events[:1], events[1:]
        rnd.shuffle(rest)
        ad1 = [i for i, e in enumerate(rest) if isinstance(e, PowerOutage)]
        rst = [i for i, e in enumerate(rest) if isinstance(e, SupplyRestored)]
        if ad1 and rst and rst[0] < ad1[0]:
            rest[ad1[0]], rest[rst[0]] = rest[rst[0]], rest[ad1[0]]
        queues.append(head + rest)
    merged: list[Event] = []
    while any(queues):
        q = rnd.choice([q for q in queues if q])
        merged.append(q.pop(0))
    # arrivals follow the order, one every 5 s: all within the hold limit of each other
    timed: list[Event] = []
    for i, ev in enumerate(merged):
        assert not isinstance(ev, Tick)
        timed.append(replace(ev, arrival=t(7) + timedelta(seconds=5 * i)))
    return [*timed, Tick(t(7 + 60))]


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(STORIES), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_random_interleavings_within_the_hold_limit_give_the_same_final_decisions(kinds: list[str], seed: int) -> None:
    stories = [_story(k, n) for n, k in enumerate(kinds)]
    canonical = final(run(_world(len(kinds)), _interleave([list(s) for s in stories], random.Random(0))))
    shuffled = final(run(_world(len(kinds)), _interleave([list(s) for s in stories], random.Random(seed))))
    assert shuffled == canonical
    assert all(disposition is not None for disposition, _ in canonical.values())  # nothing left held
    expected = {"immediate": "suppress", "fd-success": "suppress", "immediate-failed": "forward", "fd-failure": "forward"}
    for n, kind in enumerate(kinds):
        if kind in expected:
            assert canonical[f"{n}-ad1"][0] == expected[kind]


def _events_for_restore() -> list[Event]:
    stories = [_story(k, n) for n, k in enumerate(STORIES)]
    events = _interleave(stories, random.Random(7))
    return [*events[:-1], Tick(t(8)), Tick(t(30)), Tick(t(3 * 24 * 60))]


def test_restored_engine_continues_with_identical_decisions_at_every_cut_point() -> None:
    events = _events_for_restore()
    whole = decisions(run(_world(len(STORIES)), events))
    for cut in range(len(events) + 1):
        first = _world(len(STORIES))
        effects = run(first, events[:cut])
        # persist as JSON text, as a store would, then restore into fresh scope/inventory objects
        rows = [(tbl, key, json.loads(json.dumps(rec))) for tbl, key, rec in records_of(first.export_state())]
        second = Engine.restore(EngineConfig(), first.scope, _world(len(STORIES)).inventory, rows)
        effects += run(second, events[cut:])
        assert decisions(effects) == whole, f"diverged after restoring at event {cut}"


def test_replaying_state_changes_reproduces_the_exported_state() -> None:
    events = _events_for_restore()[:-1]
    eng = _world(len(STORIES))
    table: dict[tuple[str, str], object] = {}
    for ev in events:
        for eff in eng.handle(ev):
            if isinstance(eff, StateChange):
                if eff.value is None:
                    table.pop((eff.table.value, eff.key), None)
                else:
                    table[(eff.table.value, eff.key)] = eff.value
    exported = {(c.table.value, c.key): c.value for c in eng.export_state()}
    learned = {k: v for k, v in table.items() if k[0] == "learned"}
    assert {k: v for k, v in table.items() if k not in learned} == exported


def test_a_partial_inventory_observation_does_not_erase_a_learned_comms_hub_from_the_stored_state() -> None:
    # an 8.2 response with no single CHF device teaches the MPAN but no CH (ch=None): the live inventory keeps
    # the CH learned before, and the state a restart restores from must too
    new_ch = 0x00DB1234567890B2
    eng = standard_world()
    first = learned(0, esme=ESME, ch=new_ch, mpan=MPAN, mid="inv-1")
    partial = replace(learned(1, esme=ESME, ch=new_ch, mpan=MPAN, mid="inv-2"), ch=None, model="E470")
    table: dict[tuple[str, str], object] = {}
    for ev in (first, partial, request(10, mid="req"), response(12, mid="rsp")):
        for eff in eng.handle(ev):
            if isinstance(eff, StateChange):  # what the durable store keeps: the latest value per key
                if eff.value is None:
                    table.pop((eff.table.value, eff.key), None)
                else:
                    table[(eff.table.value, eff.key)] = eff.value
    rows = [(tbl, key, json.loads(json.dumps(rec))) for tbl, key, rec in records_of(
        StateChange(Table(tbl), key, value) for (tbl, key), value in table.items())]  # fmt: skip
    again = Engine.restore(EngineConfig(), eng.scope, standard_world().inventory, rows)
    assert again.inventory.ch_for_esme(ESME) == eng.inventory.ch_for_esme(ESME) == new_ch
    ad1 = outage(14, ch=new_ch, mpan=None, mid="ad1")  # from the CH learned first, no MPAN
    assert decisions(again.handle(ad1)) == decisions(eng.handle(ad1))
