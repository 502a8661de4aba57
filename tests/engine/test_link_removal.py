"""A removal (a meter decommissioned or withdrawn: ``InventoryUnlinked``) ends the meter's links.

The DCC alert ``DeviceStatusChangeEvent`` / ``MeterDecommissioningOrWithdrawal`` says the meter's links
are ending. It ends the meter's Comms Hub and MPxN links as of the alert's own time, so the hub's later
AD1s are no longer attributed to that meter's firmware activations; it never creates or restores a link.
Ordered by event time like every learned link: a late removal does not undo a newer re-link, and
re-link evidence older than the removal, arriving after it, does not restore the link. Removing a link
can only make suppression rarer; the note of the observation says what was ended or kept and why.
"""

from __future__ import annotations

import random
from pathlib import Path

from engine_support import (
    CH,
    ESME,
    MPAN,
    MemoryScope,
    decisions,
    learned,
    outage,
    request,
    response,
    run,
    t,
    unlinked,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_link_ordering import NEW_CH, NEW_MPAN, _snapshot, _stored, _world

from gateway.engine import Action, Engine, EngineConfig, Event, Observed, Reason, StateChange
from gateway.engine.state import LearnedLink, merge_learned
from gateway.store import DurableEngine, SqliteStore


def _links(eng: Engine) -> tuple[int | None, str | None]:
    return eng.inventory.ch_for_esme(ESME), eng.inventory.mpan_for_esme(ESME)


def _note(effects: list[object]) -> str:
    [obs] = [e for e in effects if isinstance(e, Observed)]
    assert obs.used
    return obs.note


def test_a_removal_ends_the_meters_links_so_its_hubs_later_ad1s_are_not_attributed_to_its_activations() -> None:
    eng = _world()
    note = _note(eng.handle(unlinked(60, time=59)))  # type: ignore[arg-type]
    assert _links(eng) == (None, None)
    assert eng.inventory.esmes_for_ch(CH) == () and eng.inventory.esmes_for_mpan(MPAN) == ()
    assert note == (
        f"unlinked by MeterDecommissioningOrWithdrawal at {t(59).isoformat()}: ended its Comms Hub {CH:016X} "
        f"and MPxN {MPAN}"
    )
    run(eng, [request(100), response(100.5)])
    [d] = decisions(eng.handle(outage(102)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.CH_UNKNOWN)


def test_a_late_removal_does_not_undo_a_newer_relink() -> None:
    eng = _world()
    eng.handle(learned(60, esme=ESME, ch=NEW_CH, mpan=NEW_MPAN, time=59))
    note = _note(eng.handle(unlinked(120, time=30)))  # type: ignore[arg-type]  # delivered late, older
    assert _links(eng) == (NEW_CH, NEW_MPAN)
    at = t(59).isoformat()
    assert note.endswith(f": no link to end; kept (newer evidence) its ch at {at}, mpan at {at}")
    run(eng, [request(130), response(130.5)])
    [d] = decisions(eng.handle(outage(132, ch=NEW_CH, mpan=NEW_MPAN)))
    assert (d.action, d.reason, d.esmes) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW, (ESME,))


def test_link_evidence_older_than_a_removal_arriving_after_it_does_not_restore_the_link() -> None:
    eng = _world()
    eng.handle(unlinked(60, time=59))
    note = _note(eng.handle(learned(120, esme=ESME, ch=CH, mpan=MPAN, time=30)))  # type: ignore[arg-type]
    assert _links(eng) == (None, None)
    at = t(59).isoformat()
    assert note.startswith(f"stale: newer evidence of its ch at {at}, mpan at {at}")  # its manufacturer is news
    # newer evidence (the meter commissioned again) links it
    eng.handle(learned(130, esme=ESME, ch=NEW_CH, mpan=NEW_MPAN, time=125))
    assert _links(eng) == (NEW_CH, NEW_MPAN)


def test_a_removal_and_a_link_of_the_same_instant_end_unlinked_in_either_order() -> None:
    for first, second in ((unlinked(60, time=50), learned(61, esme=ESME, ch=NEW_CH, mpan=None, time=50)),
                          (learned(60, esme=ESME, ch=NEW_CH, mpan=None, time=50), unlinked(61, time=50))):  # fmt: skip
        eng = _world()
        run(eng, [first, second])
        assert _links(eng) == (None, None)


def test_a_removal_of_a_meter_the_inventory_does_not_hold_leaves_it_without_links_even_for_older_evidence() -> None:
    other = 0x00DD000000000001  # e.g. a gas meter, or an ESME not known yet
    eng = _world()
    assert _note(eng.handle(unlinked(60, esme=other, time=59, mpan="1234567890"))).endswith(": no link to end")  # type: ignore[arg-type]
    eng.handle(learned(120, esme=other, ch=CH, mpan=None, time=30))
    assert eng.inventory.ch_for_esme(other) is None and sorted(eng.inventory.esmes_for_ch(CH)) == [ESME]


_EVENTS = st.lists(
    st.tuples(
        st.integers(0, 5),  # its own time (instants may repeat)
        st.sampled_from(("link", "removal")),
        st.sampled_from((CH, NEW_CH, None)),
        st.sampled_from((MPAN, NEW_MPAN, None)),
    ).filter(lambda e: e[1] == "removal" or e[2:] != (None, None)),
    min_size=1,
    max_size=7,
)


def _expected(events: list[tuple[int, str, int | None, str | None]], pos: int, snapshot: object) -> set[object]:
    """What link ``pos`` (2: ch, 3: mpan) may end as: the newest evidence's; a removal wins its instant;
    links of the same instant with different values leave either (the later-applied one)."""
    said = [e for e in events if e[1] == "removal" or e[pos] is not None]
    if not said:
        return {snapshot}
    newest = max(e[0] for e in said)
    last = [e for e in said if e[0] == newest]
    if any(e[1] == "removal" for e in last):
        return {None}
    return {e[pos] for e in last}


@settings(max_examples=200, deadline=None)
@given(events=_EVENTS, order=st.randoms(use_true_random=False))
def test_in_any_order_removals_and_links_end_with_the_newest_evidence_also_after_a_restart(
    events: list[tuple[int, str, int | None, str | None]], order: random.Random
) -> None:
    arrival = list(events)
    order.shuffle(arrival)
    eng = _world()
    changes: list[StateChange] = []
    reference: LearnedLink | None = None
    for n, (time, kind, ch, mpan) in enumerate(arrival):
        if kind == "removal":
            ev: Event = unlinked(100 + n, time=time)
            fact = LearnedLink(ESME, None, None, None, None, None, t(time), t(time), ("ch", "mpan"))
        else:
            ev = learned(100 + n, esme=ESME, ch=ch, mpan=mpan, time=time)
            fact = LearnedLink(ESME, ch, mpan, "Landis+Gyr", None, None, t(time) if ch else None, t(time) if mpan else None)
        changes += [e for e in eng.handle(ev) if isinstance(e, StateChange)]
        reference = merge_learned(reference, fact)
        assert eng.inventory.learned(ESME) == reference  # the inventory applies exactly the rule
    ch, mpan = _links(eng)
    assert ch in _expected(events, 2, CH) and mpan in _expected(events, 3, MPAN)
    again = Engine.restore(EngineConfig(), eng.scope, _snapshot(), _stored(changes))
    assert again.inventory.learned(ESME) == reference and _links(again) == (ch, mpan)


def test_a_removal_is_kept_in_the_store_with_its_note_and_outlives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "engine.sqlite3"
    first = DurableEngine(SqliteStore(path), EngineConfig(), MemoryScope([ESME]), _snapshot())
    removal = unlinked(60, time=59, mid="unlink-1")
    first.submit(removal, b"<the DCC alert>")
    [row] = [m for m in first.store.messages() if m["message_id"] == "unlink-1"]
    assert row["status"] == "observed" and str(row["reason"]).endswith(f"ended its Comms Hub {CH:016X} and MPxN {MPAN}")
    first.store.close()
    inventory = _snapshot()
    second = DurableEngine(SqliteStore(path), EngineConfig(), MemoryScope([ESME]), inventory)
    assert (inventory.ch_for_esme(ESME), inventory.mpan_for_esme(ESME)) == (None, None)
    second.submit(learned(120, esme=ESME, ch=CH, mpan=MPAN, time=30))  # older evidence, re-delivered late
    assert (inventory.ch_for_esme(ESME), inventory.mpan_for_esme(ESME)) == (None, None)
    second.store.close()


def test_an_unverified_removal_ends_nothing() -> None:
    from dataclasses import replace

    eng = _world()
    [obs] = [e for e in eng.handle(replace(unlinked(60, time=59), verified=False, verification="xml")) if isinstance(e, Observed)]
    assert not obs.used and _links(eng) == (CH, MPAN)


def test_a_removal_record_survives_json() -> None:
    eng = _world()
    changes = [e for e in eng.handle(unlinked(60, time=59)) if isinstance(e, StateChange)]
    [(_, key, rec)] = [row for row in _stored(changes) if row[0] == "learned"]
    assert (key, rec["ended"], rec["ch_time"]) == (f"{ESME:016X}", ["ch", "mpan"], t(59).isoformat())
