"""The learned inventory ends the same whatever order a hub's end and older link evidence arrive in
(docs/ENGINE.md §3, sixteenth session).

A Comms Hub H decommissioned at T ends the hub link of every ESME on H at T. A meter M on H (learned from
evidence of Tx, or from the snapshot) for which an 8.2 of T0 (Tx < T0 < T) says it is on another hub H2 is on
H2 in the end whichever arrives first: arriving first, the 8.2 moves M off H, so H's end does not touch it;
arriving after H's end, it is newer than the link H's end ended. Until this session H's end was recorded on M
as an end of M's own link at T (as a meter removal is), so the 8.2 of T0 < T was stale and M stayed unlinked:
two arrival orders, two inventories (and a restart could reach another state than the live engine).

A link ended by a hub's end now remembers which hub ended it (``LearnedLink.ch_ended_by``) and keeps the time
of the link evidence it ended (``ch_time``): evidence newer than that evidence links the ESME to another hub;
evidence naming the ended hub that is not newer than the hub's end is still that link followed by the end. A
meter removal (the ESME's own link ended) has no hub: evidence is taken only when newer than the removal.

The brute force below runs every order of small sets of such events — the snapshot's link, 8.2 evidence of
various times naming H or H2 (and one without a time), H's end, H2's end (and a second, older end of H), a
meter removal, a re-commission newer than the end — through the engine on the gateway's inventory, and checks
that every order ends in the same learned state, the one an independent reading of the rules gives (the
events taken in the order of their own times), also after a restore from the stored records and after the
Redis learned list's fold (its compaction).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace

import pytest
from engine_support import CH, ESME, MPAN, OTHER_CH, OTHER_ESME, MemoryScope, learned, t, unlinked

from gateway.engine import Engine, EngineConfig, Observed, StateChange, Table
from gateway.engine.engine import records_of
from gateway.engine.events import DEVICE_REMOVED, HUB_DECOMMISSIONED, Event
from gateway.engine.records import from_record, to_record
from gateway.engine.state import LearnedLink, merge_learned
from gateway.inventory import Inventory, InventoryRegistry, InventoryRow
from gateway.store.redis_state import _learn, _LearnedFold

H, H2 = CH, OTHER_CH
METER_REMOVED = "MeterDecommissioningOrWithdrawal"

# An event: ("link", hub, time) an 8.2 of M naming ``hub`` (time None: without a time); ("end", hub, time) the
# hub decommissioned; ("removed", None, time) M decommissioned (its own links end).
Ev = tuple[str, int | None, float | None]


def _snapshot(hub: int | None) -> Inventory:
    """M on ``hub`` in the snapshot (None: M unknown to it); OTHER_ESME always on H."""
    rows = [InventoryRow(OTHER_ESME, H, None, "Landis+Gyr", "E470")]
    if hub is not None:
        rows.append(InventoryRow(ESME, hub, MPAN, "Landis+Gyr", "E470"))
    return Inventory.from_rows(rows)


def _event(n: int, ev: Ev) -> Event:
    kind, hub, time = ev
    at = 10_000 + n  # arrival: the gateway clock, after every own time
    if kind == "link":
        return learned(at, esme=ESME, ch=hub, mpan=None, time=time, mid=f"inv-{n}")
    assert time is not None
    if kind == "end":
        assert hub is not None
        return unlinked(
            at, esme=hub, time=time, ch=None, mpan=None, change=HUB_DECOMMISSIONED, mid=f"unl-{n}"
        )
    return unlinked(at, esme=ESME, time=time, ch=None, mpan=None, change=METER_REMOVED, mid=f"unl-{n}")


def _engine(snapshot_hub: int | None) -> Engine:
    return Engine(EngineConfig(), MemoryScope([ESME, OTHER_ESME]), InventoryRegistry(_snapshot(snapshot_hub)))


def _state(engine: Engine) -> tuple[object, ...]:
    """What the inventory answers about M, OTHER_ESME and both hubs."""
    inv = engine.inventory
    return (
        inv.learned(ESME),
        inv.learned(OTHER_ESME),
        inv.ch_for_esme(ESME),
        inv.ch_for_esme(OTHER_ESME),
        tuple(sorted(inv.esmes_for_ch(H))),
        tuple(sorted(inv.esmes_for_ch(H2))),
        inv.hub_end(H),
        inv.hub_end(H2),
    )


def _run(snapshot_hub: int | None, events: Sequence[Ev]) -> tuple[Engine, list[StateChange]]:
    engine = _engine(snapshot_hub)
    changes: list[StateChange] = []
    for n, ev in enumerate(events):
        out = engine.handle(_event(n, ev))
        assert [o.used for o in out if isinstance(o, Observed)] == [True], out
        changes += [e for e in out if isinstance(e, StateChange)]
    return engine, changes


def _stored(changes: Iterable[StateChange]) -> list[tuple[str, str, dict[str, object]]]:
    """What the SQLite store keeps of the state changes (the latest value per key), through JSON."""
    table: dict[tuple[str, str], object] = {}
    for c in changes:
        table[(c.table.value, c.key)] = c.value
    rows = records_of(StateChange(Table(tbl), key, value) for (tbl, key), value in table.items())  # type: ignore[arg-type]
    return [(tbl, key, json.loads(json.dumps(rec))) for tbl, key, rec in rows]


def _rank(time: float | None) -> float:
    """Own times as the rules order them: evidence without a time is older than any timed evidence."""
    return float("-inf") if time is None else time


def _expected_ch(snapshot_hub: int | None, events: Sequence[Ev]) -> int | None:
    """M's Comms Hub as an independent reading of §3 gives it: the events taken in the order of their own times
    (of one instant, links before ends: an end wins a link of its instant), a hub's end ending the link of
    an ESME on that hub at that time, a removal M's own link. The snapshot's link is older than any evidence."""
    ch: int | None = snapshot_hub
    timed = sorted(
        enumerate(events),
        key=lambda p: (-1, p[0]) if p[1][2] is None else (p[1][2], 0 if p[1][0] == "link" else 1, p[0]),
    )
    for _, (kind, hub, _time) in timed:
        if kind == "link":
            ch = hub
        elif kind == "removed" or ch == hub:
            ch = None
    return ch


# ---- the defect, as found --------------------------------------------------------------------------------


@pytest.mark.parametrize("snapshot_hub", [H, None], ids=["on-H-in-the-snapshot", "learned-on-H"])
def test_a_meter_moved_to_another_hub_before_its_old_hub_ended_is_on_the_new_hub_whichever_arrives_first(
    snapshot_hub: int | None,
) -> None:
    """M on H (snapshot, or an 8.2 of 10); an 8.2 of 20 says M is on H2; H decommissioned at 30."""
    before = [] if snapshot_hub is not None else [("link", H, 10.0)]
    moved: Ev = ("link", H2, 20.0)
    ended: Ev = ("end", H, 30.0)
    first, _ = _run(snapshot_hub, [*before, moved, ended])
    then, _ = _run(snapshot_hub, [*before, ended, moved])
    assert first.inventory.ch_for_esme(ESME) == H2
    assert then.inventory.ch_for_esme(ESME) == H2  # was None: the 8.2 of 20 was "stale" after the end of 30
    assert _state(then) == _state(first)
    assert then.inventory.esmes_for_ch(H2) == (ESME,) and then.inventory.esmes_for_ch(H) == ()


def test_an_8_2_older_than_the_link_the_hub_end_ended_is_still_stale_and_a_removal_still_wins_older_evidence() -> (
    None
):
    """The limits of the fix: an 8.2 naming H2 older than the link evidence H's end ended (Tx) is not taken (it
    would not have been taken before the end either); after a meter removal, evidence is taken only when newer
    than the removal, whichever hub it names."""
    for order in itertools.permutations([("link", H, 10.0), ("end", H, 30.0), ("link", H2, 5.0)]):
        engine, _ = _run(None, order)
        assert engine.inventory.ch_for_esme(ESME) is None, order
    for order in itertools.permutations([("link", H, 10.0), ("removed", None, 30.0), ("link", H2, 20.0)]):
        engine, _ = _run(None, order)
        assert engine.inventory.ch_for_esme(ESME) is None, order
    engine, _ = _run(None, [("link", H, 10.0), ("end", H, 30.0)])
    state = engine.inventory.learned(ESME)
    assert state is not None and (state.ch, state.ended, state.ch_ended_by, state.ch_time) == (
        None,
        ("ch",),
        H,
        t(10),
    )
    engine, _ = _run(None, [("link", H, 10.0), ("removed", None, 30.0)])
    state = engine.inventory.learned(ESME)
    assert state is not None and (state.ch, state.ended, state.ch_ended_by, state.ch_time) == (
        None, ("ch", "mpan"), None, t(30),
    )  # fmt: skip


def test_the_notes_of_8_2s_after_the_hub_end_say_what_was_learned() -> None:
    engine = _engine(H)
    engine.handle(_event(0, ("end", H, 30.0)))
    [obs] = [e for e in engine.handle(_event(1, ("link", H2, 20.0))) if isinstance(e, Observed)]
    assert (obs.used, obs.note) == (True, "learned")
    [obs] = [e for e in engine.handle(_event(2, ("link", H, 15.0))) if isinstance(e, Observed)]
    assert obs.note == "stale: newer evidence of its ch at " + t(20).isoformat()
    [obs] = [e for e in engine.handle(_event(3, ("link", H, 25.0))) if isinstance(e, Observed)]
    assert (
        obs.note
        == f"its Comms Hub {H:016X} ended at {t(30).isoformat()}, not before this evidence: not linked to it"
    )
    assert engine.inventory.ch_for_esme(ESME) is None


# ---- every order of small sets of events -----------------------------------------------------------------

#: the pool: link evidence of distinct own times (two links of one instant naming different hubs have no order
#: the rules could know: the later applied wins), ends of H and H2, a removal, a re-commission of H
_POOL: tuple[Ev, ...] = (
    ("link", H, 10.0),  # M on H (Tx)
    ("link", H2, 20.0),  # M moved to H2 (T0: Tx < T0 < T)
    ("end", H, 30.0),  # H decommissioned (T)
    ("link", H2, 5.0),  # older than Tx
    ("link", H, 40.0),  # H re-commissioned, M on it (newer than the end)
    ("end", H2, 25.0),  # H2 decommissioned
    ("removed", None, 15.0),  # M decommissioned (between Tx and T0)
    ("end", H, 12.0),  # an older end of H
    ("link", H2, 30.0),  # of the instant of H's end
    ("link", H2, None),  # without a time
    ("removed", None, 35.0),
    ("link", H, 25.0),  # of the instant of H2's end, before H's
)


def _sets(size: int) -> Iterable[tuple[Ev, ...]]:
    for events in itertools.combinations(_POOL, size):
        links = [(e[2], e[1]) for e in events if e[0] == "link"]
        if len({time for time, _ in links}) == len(links):  # (distinct link times: see _POOL)
            yield events


def _check_every_order(snapshot_hub: int | None, events: tuple[Ev, ...], *, deep: bool) -> None:
    want = _expected_ch(snapshot_hub, events)
    final: tuple[object, ...] | None = None
    for order in itertools.permutations(events):
        engine, changes = _run(snapshot_hub, order)
        got = _state(engine)
        assert engine.inventory.ch_for_esme(ESME) == want, (snapshot_hub, order, got)
        if final is None:
            final = got
        assert got == final, (snapshot_hub, order)
        if deep:
            # a restart: the stored records re-applied to the snapshot
            again = Engine.restore(
                EngineConfig(), engine.scope, InventoryRegistry(_snapshot(snapshot_hub)), _stored(changes)
            )
            assert _state(again) == got, ("restored", snapshot_hub, order)
            # the Redis learned list, as rows in commit order: applied whole, and folded (a compaction)
            rows = [
                json.dumps(to_record(c.value)).encode()
                for c in changes
                if c.table in (Table.LEARNED, Table.HUB_END) and c.value is not None
            ]
            whole = _engine(snapshot_hub)
            for row in rows:
                _learn(whole.inventory, json.loads(row))
            assert _state(whole) == got, ("learned list", snapshot_hub, order)
            fold = _LearnedFold()
            fold.add(rows)
            folded = _engine(snapshot_hub)
            fold.apply(folded.inventory)
            assert _state(folded) == got, ("folded", snapshot_hub, order)


@pytest.mark.parametrize("snapshot_hub", [H, H2, None], ids=["snapshot-H", "snapshot-H2", "not-in-snapshot"])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_every_order_of_every_small_set_of_link_evidence_hub_ends_and_removals_ends_the_same(
    snapshot_hub: int | None, size: int
) -> None:
    for events in _sets(size):
        _check_every_order(snapshot_hub, events, deep=size <= 3)


@pytest.mark.parametrize("snapshot_hub", [H, None], ids=["snapshot-H", "not-in-snapshot"])
@pytest.mark.parametrize(
    "events",
    [
        # the defect's world with everything around it
        (("link", H, 10.0), ("link", H2, 20.0), ("end", H, 30.0), ("link", H2, 5.0), ("end", H, 12.0),
         ("link", H, 40.0)),
        (("link", H, 10.0), ("link", H2, 20.0), ("end", H, 30.0), ("end", H2, 25.0), ("removed", None, 15.0),
         ("link", H2, None)),
        (("link", H, 10.0), ("link", H2, 20.0), ("end", H, 30.0), ("removed", None, 35.0), ("link", H, 40.0),
         ("link", H2, 5.0)),
    ],
    ids=["older-end-and-recommission", "h2-ends-and-removal", "removal-after-the-end"],
)  # fmt: skip
def test_every_order_of_six_events_around_the_defect_ends_the_same_also_restored_and_folded(
    snapshot_hub: int | None, events: tuple[Ev, ...]
) -> None:
    _check_every_order(snapshot_hub, events, deep=True)


# ---- durability ------------------------------------------------------------------------------------------


def test_the_hub_that_ended_a_link_is_in_its_record_and_a_restart_continues_with_the_same_rule() -> None:
    engine, changes = _run(None, [("link", H, 10.0), ("end", H, 30.0)])
    stored = _stored(changes)
    [rec] = [rec for tbl, _key, rec in stored if tbl == "learned" and rec["esme"] == ESME]
    assert (rec["ch_ended_by"], rec["ch_time"], rec["ended"]) == (H, t(10).isoformat(), ["ch"])
    again = Engine.restore(EngineConfig(), engine.scope, InventoryRegistry(_snapshot(None)), stored)
    again.handle(_event(5, ("link", H2, 20.0)))
    assert again.inventory.ch_for_esme(ESME) == H2


def test_a_record_written_before_ends_named_their_hub_loads_and_behaves_as_before() -> None:
    """A stored end without ``ch_ended_by`` (an earlier version's record of H's end on M, at the end's time) is
    read as an end of M's own link: evidence not newer than it is stale, as it was."""
    engine, changes = _run(None, [("link", H, 10.0), ("end", H, 30.0)])
    stored = _stored(changes)
    legacy = []
    for tbl, key, rec in stored:
        if tbl == "learned" and rec["esme"] == ESME:
            rec = {k: v for k, v in rec.items() if k != "ch_ended_by"}
            rec["ch_time"] = t(30).isoformat()  # the earlier version kept the end's time
        legacy.append((tbl, key, rec))
    state = from_record(
        LearnedLink, next(r for tbl, _k, r in legacy if tbl == "learned" and r["esme"] == ESME)
    )
    assert state.ch_ended_by is None and state.ended == ("ch",)
    again = Engine.restore(EngineConfig(), engine.scope, InventoryRegistry(_snapshot(None)), legacy)
    assert again.inventory.learned(ESME) == replace(state, at=None)
    again.handle(_event(5, ("link", H2, 20.0)))
    assert again.inventory.ch_for_esme(ESME) is None  # as before: older than the end
    again.handle(_event(6, ("link", H2, 31.0)))
    assert again.inventory.ch_for_esme(ESME) == H2


def test_merging_whole_states_is_the_same_in_either_order() -> None:
    """Whole learned states (records from several instances, the Redis list) merge to the same state in either
    order: a link ended by a hub's end against the link it ended, a newer link elsewhere, and a removal."""
    link_h = LearnedLink(ESME, H, None, None, None, None, t(10))
    ended_h = LearnedLink(ESME, None, None, None, None, None, t(10), None, ("ch",), H)
    moved = LearnedLink(ESME, H2, None, None, None, None, t(20))
    removed = LearnedLink(ESME, None, None, None, None, None, t(15), None, ("ch",))
    older = LearnedLink(ESME, H2, None, None, None, None, t(5))
    states = (ended_h, moved, removed, older)
    for a, b in itertools.permutations(states, 2):
        assert merge_learned(merge_learned(None, a), b) == merge_learned(merge_learned(None, b), a), (a, b)
    assert merge_learned(ended_h, moved) == merge_learned(moved, ended_h) == merge_learned(None, moved)
    assert merge_learned(ended_h, removed) == merge_learned(None, removed)
    assert merge_learned(ended_h, older) == ended_h
    assert merge_learned(link_h, ended_h) == ended_h  # of the same evidence: the end wins


def test_a_device_removed_from_the_inventory_ends_as_a_hub_end_too() -> None:
    """``DeviceRemovedFromInventory`` of a hub with ESMEs behind it ends their links as its end (named)."""
    for order in itertools.permutations([("link", H, 10.0), ("link", H2, 20.0)]):
        engine = _engine(None)
        engine.handle(_event(0, order[0]))
        engine.handle(
            unlinked(10_001, esme=H, time=30.0, ch=None, mpan=None, change=DEVICE_REMOVED, mid="rm-h")
        )
        engine.handle(_event(2, order[1]))
        assert engine.inventory.ch_for_esme(ESME) == H2, order


def test_a_reload_keeps_a_link_ended_by_a_hub_by_the_time_of_the_evidence_it_ended() -> None:
    """A reload re-applies a link ended by a hub's end when the evidence it ended is newer than the snapshot's
    ``as_of``; a snapshot at least as new as that evidence gives the ESME's link (the hub's end, kept per hub,
    ends it when the end is newer than the snapshot and the snapshot puts the ESME on that hub)."""
    reg = InventoryRegistry(_snapshot(None))
    reg.learn(ESME, ch=H, at=t(10))
    reg.end_hub(H, t(30))
    assert reg.ch_for_esme(ESME) is None
    reg.reload(Inventory.from_rows([InventoryRow(ESME, H2, None)], as_of=t(5)))  # older than the evidence
    assert reg.ch_for_esme(ESME) is None and reg.learned(ESME) is not None
    reg.reload(Inventory.from_rows([InventoryRow(ESME, H2, None)], as_of=t(20)))  # newer: M on H2
    assert reg.ch_for_esme(ESME) == H2
    reg.reload(Inventory.from_rows([InventoryRow(ESME, H, None)], as_of=t(20)))  # on H, which ended at 30
    assert reg.ch_for_esme(ESME) is None


def test_a_rolled_back_learning_transaction_forgets_which_hub_ended_a_link() -> None:
    """A batch whose store commit failed leaves no link ended by a hub's end behind (``rollback_learning``): the
    row is as before, and a later removal of the ESME is a removal, not that hub's end."""
    inv = _snapshot(H)
    before = (list(inv.learned_links()), inv.learned(ESME), inv.ch_for_esme(ESME))
    inv.begin_learning()
    inv.end_hub(H, t(30))
    assert inv.learned(ESME) == LearnedLink(ESME, None, None, None, None, None, None, None, ("ch",), H)
    inv.rollback_learning()
    assert (list(inv.learned_links()), inv.learned(ESME), inv.ch_for_esme(ESME)) == before
    inv.unlink(ESME, at=t(40))
    state = inv.learned(ESME)
    assert state is not None and (state.ch_ended_by, state.ch_time) == (None, t(40))


def test_the_learned_list_folded_ends_a_link_by_a_hub_end_another_instance_wrote_as_applying_it_whole_does() -> (
    None
):
    """Two instances: A learns M on H (8.2 of 10); B, which has not read A's row, takes H's end (30) and writes
    only the hub's end (no ESME behind H in its view). Applying the list whole ends M's link by H; its fold (a
    compaction) must too, or a later 8.2 of 20 putting M on H2 links M on the instances that applied the list and
    not on one started from the compacted list."""
    a, b = _engine(None), _engine(None)
    rows = [
        json.dumps(to_record(c.value)).encode()
        for eng, ev in ((a, ("link", H, 10.0)), (b, ("end", H, 30.0)))
        for c in eng.handle(_event(0, ev))
        if isinstance(c, StateChange) and c.table in (Table.LEARNED, Table.HUB_END)
    ]
    whole, folded = _engine(None), _engine(None)
    for row in rows:
        _learn(whole.inventory, json.loads(row))
    fold = _LearnedFold()
    fold.add(rows)
    fold.apply(folded.inventory)
    assert fold.rows() and folded.inventory.learned(ESME) == whole.inventory.learned(ESME)
    for eng in (whole, folded):
        eng.handle(_event(1, ("link", H2, 20.0)))
    assert whole.inventory.ch_for_esme(ESME) == folded.inventory.ch_for_esme(ESME) == H2
