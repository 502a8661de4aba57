"""The other status changes that end links: a Comms Hub decommissioned, a device removed from the Smart
Metering Inventory, a meter identity contradicting the known MPxN (``InventoryUnlinked`` with that
``change``).

- ``CHFDecommissioning`` names the Comms Hub: the Comms Hub link of every ESME behind it ends.
- ``DeviceRemovedFromInventory`` names any device: a Comms Hub with ESMEs behind it is read as one (the
  links to it end), any other device as a meter (its Comms Hub and MPxN links end).
- ``MeterIdentity`` names the meter and states its MPxNs: its MPxN link (learned or from the snapshot)
  ends when it is none of them; the stated MPxN is not learned.

Each end is a learned fact at the alert's own time, ordered against the other evidence by
``merge_learned`` (a late end does not undo a newer link; older evidence arriving after it does not
restore the link), stored per ESME like a decommissioning's, and only a verified alert ends anything.
Ending a link only ever makes suppression rarer.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from engine_support import (
    CH,
    ESME,
    MPAN,
    OTHER_ESME,
    OTHER_MPAN,
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
from test_link_ordering import NEW_CH, NEW_MPAN, _stored

from gateway.engine import Action, Engine, EngineConfig, Event, Observed, Reason, StateChange
from gateway.engine.events import DEVICE_REMOVED, HUB_DECOMMISSIONED, METER_IDENTITY
from gateway.engine.state import LearnedLink, after_hub_end, hub_end_fact, merge_learned
from gateway.inventory import Inventory, InventoryRow
from gateway.store import DurableEngine, SqliteStore

PPMID = 0x00DF000000000001  # a device that is neither an ESME nor a Comms Hub


def _two_on_one_hub() -> Inventory:
    """ESME and OTHER_ESME behind the same Comms Hub, each with its own MPAN."""
    return Inventory.from_rows(
        [
            InventoryRow(ESME, CH, MPAN, "Landis+Gyr", "E470"),
            InventoryRow(OTHER_ESME, CH, OTHER_MPAN, "Landis+Gyr", "E470"),
        ]
    )


def _world() -> Engine:
    return Engine(EngineConfig(), MemoryScope([ESME, OTHER_ESME]), _two_on_one_hub())


def _links(eng: Engine, esme: int = ESME) -> tuple[int | None, str | None]:
    return eng.inventory.ch_for_esme(esme), eng.inventory.mpan_for_esme(esme)


def _note(effects: list[object]) -> str:
    [obs] = [e for e in effects if isinstance(e, Observed)]
    assert obs.used
    return obs.note


def _hub_down(at: float, time: float, *, change: str = HUB_DECOMMISSIONED, mid: str | None = None) -> Event:
    return unlinked(at, esme=CH, time=time, ch=None, mpan=None, change=change, mid=mid)


def _identity(at: float, time: float, *mpxns: str, esme: int = ESME) -> Event:
    return unlinked(
        at,
        esme=esme,
        time=time,
        ch=None,
        mpan=mpxns[0] if mpxns else None,
        change=METER_IDENTITY,
        mpxns=mpxns,
    )


# ---- CHFDecommissioning -------------------------------------------------------------------------


def test_a_hub_decommissioning_ends_the_hub_link_of_every_esme_behind_it_and_keeps_their_mpans() -> None:
    eng = _world()
    note = _note(eng.handle(_hub_down(60, 59)))
    assert _links(eng) == (None, MPAN) and _links(eng, OTHER_ESME) == (None, OTHER_MPAN)
    assert eng.inventory.esmes_for_ch(CH) == ()
    assert note == (
        f"unlinked by CHFDecommissioning at {t(59).isoformat()}: ended the link to Comms Hub {CH:016X} "
        f"of ESME {ESME:016X}, {OTHER_ESME:016X}"
    )
    # an AD1 of that hub no longer joins its former ESMEs (one carrying an MPAN still joins by it)
    run(eng, [request(100), response(100.5)])
    [d] = decisions(eng.handle(outage(102, ch=CH, mpan=None)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.CH_UNKNOWN)


def test_a_hub_decommissioning_delivered_late_keeps_an_esme_linked_to_the_hub_by_newer_evidence() -> None:
    eng = _world()
    eng.handle(learned(60, esme=ESME, ch=CH, mpan=None, time=70))  # 8.2 of 70 shows ESME on the hub
    note = _note(eng.handle(_hub_down(120, 59)))  # the decommissioning of 59, delivered late
    assert _links(eng) == (CH, MPAN) and _links(eng, OTHER_ESME) == (None, OTHER_MPAN)
    assert note.endswith(
        f"ended the link to Comms Hub {CH:016X} of ESME {OTHER_ESME:016X}; kept (newer evidence) the link to "
        f"Comms Hub {CH:016X} of ESME {ESME:016X} at {t(70).isoformat()}"
    )


def test_link_evidence_older_than_a_hub_decommissioning_arriving_after_it_does_not_relink_the_esme() -> None:
    eng = _world()
    eng.handle(_hub_down(60, 59))
    eng.handle(learned(120, esme=ESME, ch=CH, mpan=MPAN, time=30))  # an 8.2 of 30, re-delivered late
    assert _links(eng) == (None, MPAN)
    eng.handle(learned(130, esme=ESME, ch=NEW_CH, mpan=None, time=125))  # a newer 8.2: its new hub
    assert _links(eng) == (NEW_CH, MPAN)


def test_a_hub_decommissioning_of_a_hub_without_esmes_records_only_the_hub_end() -> None:
    eng = _world()
    effects = eng.handle(unlinked(60, esme=NEW_CH, time=59, ch=None, mpan=None, change=HUB_DECOMMISSIONED))
    assert _note(effects).endswith(f": no ESME behind Comms Hub {NEW_CH:016X} (its end is kept)")
    assert not [e for e in effects if isinstance(e, StateChange) and e.table.value == "learned"]
    ends = [(e.table.value, e.key) for e in effects if isinstance(e, StateChange) and e.table.value != "seen"]
    assert ends == [("hub-end", f"{NEW_CH:016X}")]
    assert NEW_CH not in eng.inventory  # type: ignore[operator]  # no row for the hub


def test_an_unverified_hub_decommissioning_ends_nothing() -> None:
    eng = _world()
    effects = eng.handle(replace(_hub_down(60, 59), verified=False, verification="xml-signature-invalid"))  # type: ignore[type-var]
    [obs] = [e for e in effects if isinstance(e, Observed)]
    assert not obs.used and _links(eng) == (CH, MPAN) and _links(eng, OTHER_ESME) == (CH, OTHER_MPAN)


# ---- DeviceRemovedFromInventory -----------------------------------------------------------------


def test_a_comms_hub_removed_from_the_inventory_ends_the_links_to_it() -> None:
    eng = _world()
    note = _note(eng.handle(_hub_down(60, 59, change=DEVICE_REMOVED)))
    assert _links(eng) == (None, MPAN) and _links(eng, OTHER_ESME) == (None, OTHER_MPAN)
    assert note.startswith(
        f"unlinked by DeviceRemovedFromInventory at {t(59).isoformat()}: ended the link to"
    )


def test_an_esme_removed_from_the_inventory_ends_its_hub_and_mpan_links_only() -> None:
    eng = _world()
    note = _note(eng.handle(unlinked(60, esme=ESME, time=59, ch=None, mpan=None, change=DEVICE_REMOVED)))
    assert _links(eng) == (None, None) and _links(eng, OTHER_ESME) == (CH, OTHER_MPAN)
    assert note.endswith(f": ended its Comms Hub {CH:016X} and MPxN {MPAN}")
    run(eng, [request(100), response(100.5)])
    [d] = decisions(eng.handle(outage(102, ch=CH, mpan=MPAN)))  # joins OTHER_ESME only: no activation
    assert (d.action, d.reason, d.esmes) == (Action.FORWARD, Reason.NO_ACTIVATION, (OTHER_ESME,))


def test_a_removed_device_the_inventory_does_not_hold_is_left_without_links_even_for_older_evidence() -> None:
    eng = _world()
    assert _note(
        eng.handle(unlinked(60, esme=PPMID, time=59, ch=None, mpan=None, change=DEVICE_REMOVED))
    ).endswith(": no link to end")
    eng.handle(learned(120, esme=PPMID, ch=CH, mpan=None, time=30))
    assert eng.inventory.ch_for_esme(PPMID) is None and sorted(eng.inventory.esmes_for_ch(CH)) == [
        ESME,
        OTHER_ESME,
    ]


# ---- MeterIdentity ------------------------------------------------------------------------------


def test_a_meter_identity_contradicting_the_snapshot_mpan_ends_that_link_and_learns_none() -> None:
    eng = _world()
    note = _note(eng.handle(_identity(60, 59, NEW_MPAN)))
    assert _links(eng) == (CH, None)  # its hub stays; the stated MPAN is not learned
    assert eng.inventory.esmes_for_mpan(MPAN) == () and eng.inventory.esmes_for_mpan(NEW_MPAN) == ()
    assert (
        note
        == f"unlinked by MeterIdentity at {t(59).isoformat()}: ended its MPxN {MPAN} (it states {NEW_MPAN})"
    )
    # an AD1 of another hub carrying the old MPAN no longer joins the meter
    run(eng, [request(100), response(100.5)])
    [d] = decisions(eng.handle(outage(102, ch=NEW_CH, mpan=MPAN)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.CH_UNKNOWN)


def test_a_meter_identity_stating_the_known_mpan_among_its_mpxns_ends_nothing() -> None:
    eng = _world()
    secondary = " ".join((MPAN[:4], MPAN[4:]))  # its secondary import MPAN, spaced
    effects = eng.handle(_identity(60, 59, NEW_MPAN, secondary))
    assert _note(effects).endswith(f": its MPxN {MPAN} is not contradicted")
    assert _links(eng) == (CH, MPAN) and not [
        e for e in effects if isinstance(e, StateChange) and e.table.value == "learned"
    ]


def test_a_meter_identity_older_than_the_learned_mpan_keeps_it() -> None:
    eng = _world()
    eng.handle(learned(60, esme=ESME, ch=None, mpan=NEW_MPAN, time=70))  # MPAN corrected, seen at 70
    note = _note(eng.handle(_identity(120, 59, MPAN)))  # the identity of 59 (the old MPAN), delivered late
    assert _links(eng) == (CH, NEW_MPAN)
    assert note.endswith(
        f"no link to end; kept (newer evidence) its mpan at {t(70).isoformat()} (it states {MPAN})"
    )


def test_mpan_evidence_older_than_a_contradicting_meter_identity_does_not_restore_the_link() -> None:
    eng = _world()
    eng.handle(_identity(60, 59, NEW_MPAN))
    eng.handle(learned(120, esme=ESME, ch=CH, mpan=MPAN, time=30))
    assert _links(eng) == (CH, None)


def test_a_meter_identity_of_a_meter_without_an_mpxn_link_records_nothing() -> None:
    eng = _world()
    gas = 0x00DD000000000001
    effects = eng.handle(_identity(60, 59, "1234567890", esme=gas))
    assert _note(effects).endswith(": no MPxN link to end")
    assert gas not in eng.inventory  # type: ignore[operator]
    assert not [e for e in effects if isinstance(e, StateChange) and e.table.value == "learned"]


def test_an_unverified_meter_identity_ends_nothing() -> None:
    eng = _world()
    unverified = replace(_identity(60, 59, NEW_MPAN), verified=False, verification="x")  # type: ignore[type-var]
    [obs] = [e for e in eng.handle(unverified) if isinstance(e, Observed)]
    assert not obs.used and _links(eng) == (CH, MPAN)


# ---- every layout keeps the ends ----------------------------------------------------------------


def test_ends_by_hub_decommissioning_and_meter_identity_survive_a_restore_from_the_stored_records() -> None:
    eng = _world()
    changes = [
        e
        for ev in (_hub_down(60, 59), _identity(61, 60, NEW_MPAN))
        for e in eng.handle(ev)
        if isinstance(e, StateChange)
    ]
    stored = _stored(changes)
    assert sorted((key, tuple(rec["ended"])) for tbl, key, rec in stored if tbl == "learned") == [
        (f"{ESME:016X}", ("ch", "mpan")),
        (f"{OTHER_ESME:016X}", ("ch",)),
    ]
    again = Engine.restore(EngineConfig(), eng.scope, _two_on_one_hub(), stored)
    assert _links(again) == (None, None) and _links(again, OTHER_ESME) == (None, OTHER_MPAN)
    again.handle(learned(200, esme=OTHER_ESME, ch=CH, mpan=None, time=30))  # older evidence after the restart
    assert _links(again, OTHER_ESME) == (None, OTHER_MPAN)


def test_a_hub_decommissioning_is_kept_in_the_sqlite_store_with_its_note_and_outlives_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "engine.sqlite3"
    first = DurableEngine(SqliteStore(path), EngineConfig(), MemoryScope([ESME]), _two_on_one_hub())
    first.submit(_hub_down(60, 59, mid="chf-1"), b"<the DCC alert>")  # type: ignore[arg-type]
    [row] = [m for m in first.store.messages() if m["message_id"] == "chf-1"]
    assert row["status"] == "observed" and f"of ESME {ESME:016X}, {OTHER_ESME:016X}" in str(row["reason"])
    first.store.close()
    inventory = _two_on_one_hub()
    second = DurableEngine(SqliteStore(path), EngineConfig(), MemoryScope([ESME]), inventory)
    assert inventory.esmes_for_ch(CH) == () and inventory.mpan_for_esme(ESME) == MPAN
    second.store.close()


_EVENTS = st.lists(
    st.tuples(
        st.integers(0, 5),  # its own time (instants may repeat)
        st.sampled_from(("link", "hub-down", "identity")),
        st.sampled_from((CH, NEW_CH, None)),
        st.sampled_from((MPAN, NEW_MPAN, None)),
    ).filter(lambda e: e[1] != "link" or e[2:] != (None, None)),
    min_size=1,
    max_size=7,
)


@settings(max_examples=200, deadline=None)
@given(events=_EVENTS, order=st.randoms(use_true_random=False))
def test_in_any_order_hub_decommissionings_and_meter_identities_end_links_by_the_ordering_rule_also_after_a_restart(
    events: list[tuple[int, str, int | None, str | None]], order: random.Random
) -> None:
    """Whatever the order, a hub decommissioning ends the ESME's hub link when it is on that hub, and a
    meter identity its MPxN link when it states another, each as a fact merged by ``merge_learned``:
    the inventory holds exactly that state, a restored engine the same, and no end ever links the ESME
    to a hub or MPAN that no link evidence named. Each hub's end is kept per hub: link evidence naming the
    hub that is not newer than its end is that link followed by the end (``after_hub_end``), whether it
    arrives before or after the end."""
    arrival = list(events)
    order.shuffle(arrival)
    eng = _world()
    inv = eng.inventory
    changes: list[StateChange] = []
    reference: LearnedLink | None = None
    hub_ends: dict[int, datetime] = {}
    for n, (time, kind, ch, mpan) in enumerate(arrival):
        fact: LearnedLink | None
        if kind == "hub-down":
            hub = ch or CH
            ev: Event = unlinked(100 + n, esme=hub, time=time, ch=None, mpan=None, change=HUB_DECOMMISSIONED)
            on_it = inv.ch_for_esme(ESME) == hub
            fact = hub_end_fact(reference, ESME, hub, t(time)) if on_it else None
            hub_ends[hub] = max(hub_ends.get(hub, t(time)), t(time))
        elif kind == "identity":
            stated = mpan or NEW_MPAN
            ev = _identity(100 + n, time, stated)
            known = inv.mpan_for_esme(ESME)
            contradicted = known is not None and known != stated
            fact = (
                LearnedLink(ESME, None, None, None, None, None, None, t(time), ("mpan",))
                if contradicted
                else None
            )
        else:
            ev = learned(100 + n, esme=ESME, ch=ch, mpan=mpan, time=time)
            fact = LearnedLink(
                ESME, ch, mpan, "Landis+Gyr", None, None, t(time) if ch else None, t(time) if mpan else None
            )
            fact = after_hub_end(reference, fact, None if ch is None else hub_ends.get(ch))
        changes += [e for e in eng.handle(ev) if isinstance(e, StateChange)]
        if fact is not None:
            reference = merge_learned(reference, fact)
        assert inv.learned(ESME) == reference  # the inventory applies exactly the rule
    named_hubs = {CH} | {e[2] for e in events if e[1] == "link"}
    named_mpans = {MPAN} | {e[3] for e in events if e[1] == "link"}
    assert _links(eng)[0] in named_hubs | {None} and _links(eng)[1] in named_mpans | {None}
    again = Engine.restore(EngineConfig(), eng.scope, _two_on_one_hub(), _stored(changes))
    assert again.inventory.learned(ESME) == reference and _links(again) == _links(eng)
