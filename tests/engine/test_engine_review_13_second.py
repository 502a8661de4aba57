"""Defects found by the second review of the thirteenth engine review's fixes (each failed before its fix).

1. An AD1 held for a pending activation and released *forward* for a reason that is not one of the forwarded
   outages' (its meter decommissioned during the hold: ``out-of-scope`` or ``ch-unknown``; its activation
   record gone: ``no-activation``) kept no record. The DNO got it, yet a restoration that had waited for it
   (it was nearer than the suppressed AD1 the restoration would otherwise pair with) was then paired with that
   farther suppressed AD1 and suppressed: the DNO kept open an outage that had ended.
2. An AD1 decided again once its idempotency key was pruned (its suppressed-outage record not yet: the prune
   budget, or a held AD1's key older than its record) and *forwarded* this time for a reason that keeps no
   record (its activation pruned: ``no-activation``) left its old record a suppressed outage: the DNO got the
   AD1, and a restoration of it was paired with that record and suppressed.

``test_an_ad1_forwarded_on_arrival_out_of_scope_still_keeps_no_record`` pins what the first fix leaves as it was
(it passed before it too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest
from engine_support import (
    CH,
    ESME,
    MPAN,
    MemoryInventory,
    MemoryScope,
    decisions,
    decisions_restored_at_every_cut,
    outage,
    request,
    response,
    restored,
    run,
    standard_world,
    t,
    tick,
    unlinked,
)

from gateway.engine import Action, Decision, Engine, EngineConfig, Event, Reason, StateChange, Table
from gateway.engine import engine as engine_module
from gateway.engine.state import SuppressedOutage

KEEP = EngineConfig().keep_for.total_seconds() / 60  # the retention, minutes
#: a meter out of scope behind the same Comms Hub as ESME (its restorations pair through the hub)
NEIGHBOUR = 0x00DB1234567890B0


def _final(effects: Iterable[object], mid: str) -> Decision:
    return [d for d in decisions(effects) if d.message_id == mid][-1]  # type: ignore[arg-type]


def _inventory() -> MemoryInventory:
    return MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr"), (NEIGHBOUR, CH, None, "Other")])


def _hub_world() -> Engine:
    return Engine(EngineConfig(), MemoryScope([ESME]), _inventory())


def _kept(effects: Iterable[object], mid: str) -> SuppressedOutage | None:
    rec = None
    for c in effects:
        if isinstance(c, StateChange) and c.table is Table.SUPPRESSED and c.key == mid:
            rec = c.value
    assert rec is None or isinstance(rec, SuppressedOutage)
    return rec


# ------------------------------------------------- 1. an AD1 released forward after its hold, whatever the reason


def _suppressed_then_held_then_decommissioned() -> tuple[list[Event], list[Event]]:
    """A reboot's AD1 (outage at 25) suppressed in the window 0..30.5 of a first activation; a second AD1 of the
    hub (outage at 31, outside that window) held for a second 11.3 command; the meter is decommissioned during
    that hold, so the held AD1 is forwarded ``out-of-scope`` at its time-out (its hub's remaining meter is not
    in scope). A restoration from the neighbour on the hub, interrupted at 30, restores the second outage (the
    nearer): the DNO got that one."""
    before: list[Event] = [
        request(0, mid="req-1"),
        response(0.5, mid="rsp-1"),
        outage(25, arrival=26, mid="ad1-reboot"),
        request(27, counter=1001, mid="req-2"),
        outage(31, arrival=32, mid="ad1-second"),
    ]
    after: list[Event] = [unlinked(34, time=33.5, mid="decommissioned"), tick(50)]
    return before, after


def test_a_restoration_that_waited_for_a_held_ad1_released_forward_out_of_scope_is_forwarded() -> None:
    before, after = _suppressed_then_held_then_decommissioned()
    rst = restored(30, arrival=33, esme=NEIGHBOUR, mid="rst")
    effects = run(_hub_world(), [*before, rst, *after])
    assert _final(effects, "ad1-reboot").action is Action.SUPPRESS
    second = _final(effects, "ad1-second")
    assert (second.action, second.reason) == (Action.RELEASE_FORWARD, Reason.OUT_OF_SCOPE)
    held = next(d for d in decisions(effects) if d.message_id == "rst")
    assert (held.action, held.reason) == (Action.HOLD, Reason.PENDING_OUTAGE)  # it waited for the second AD1
    d = _final(effects, "rst")
    # release-suppress / restoration-paired with ad1-reboot before the fix
    assert (d.disposition, d.reason) == ("forward", Reason.NOT_PAIRED)
    assert [(e.role, e.message_id) for e in d.evidence] == [("forwarded-outage", "ad1-second")]


def test_a_restoration_after_a_held_ad1_was_released_forward_out_of_scope_is_forwarded() -> None:
    before, after = _suppressed_then_held_then_decommissioned()
    effects = run(_hub_world(), [*before, *after, restored(30, arrival=51, esme=NEIGHBOUR, mid="rst")])
    kept = _kept(effects, "ad1-second")
    assert kept is not None and kept.forwarded and kept.decided_at == t(50)  # its release: the tick at 50
    d = _final(effects, "rst")
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)  # suppressed before the fix
    assert [(e.role, e.message_id) for e in d.evidence] == [("forwarded-outage", "ad1-second")]


def test_an_ad1_released_forward_for_any_reason_restores_as_a_forwarded_outage_at_every_cut() -> None:
    before, after = _suppressed_then_held_then_decommissioned()
    events = [*before, restored(30, arrival=33, esme=NEIGHBOUR, mid="rst"), *after]
    whole = decisions(run(_hub_world(), events))
    assert (whole[-1].message_id, whole[-1].disposition) == ("rst", "forward")  # "suppress" before the fix
    # the snapshot on restore: the decommissioning is re-applied from its learned record
    for cut, got in enumerate(decisions_restored_at_every_cut(events, _hub_world, _inventory)):
        assert got == whole, f"diverged after restoring at event {cut}"


def test_an_ad1_forwarded_on_arrival_out_of_scope_still_keeps_no_record() -> None:
    # the storm's common path stays as cheap as before: only an AD1 that was held is kept whatever its reason
    eng = _hub_world()
    run(eng, [unlinked(0, time=0, mid="decommissioned")])
    out = eng.handle(outage(1, mid="ad1"))
    assert [(d.action, d.reason) for d in decisions(out)] == [(Action.FORWARD, Reason.OUT_OF_SCOPE)]
    assert {c.table for c in out if isinstance(c, StateChange)} == {Table.SEEN}


# ---------------------------------------------------- 2. an AD1 decided again, forwarded this time, past its key


def test_a_suppressed_ad1_forwarded_when_decided_again_past_its_key_does_not_pair_its_restoration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one record a tick: the keys of the request, the response and the AD1 go at three ticks, the AD1's
    # suppressed-outage record at the fourth; the activation itself went at the first (activations are not
    # budgeted). The AD1 re-delivered in between is decided again: no activation any more, forwarded.
    monkeypatch.setattr(engine_module, "PRUNE_PER_TICK", 1)
    eng = standard_world()
    ad1 = outage(1, mid="ad1")
    first = decisions(run(eng, [request(0, mid="req"), response(0.5, mid="rsp"), ad1]))
    assert [d.action for d in first] == [Action.SUPPRESS]
    start = 4.5 + KEEP + 0.1
    pruned: list[object] = []
    for i in range(3):
        pruned += eng.handle(tick(start + i / 100))
    assert StateChange(Table.SEEN, "ad1", None) in pruned
    assert StateChange(Table.SUPPRESSED, "ad1", None) not in pruned
    again = eng.handle(replace(ad1, arrival=t(start + 0.05)))
    assert [(d.action, d.reason) for d in decisions(again)] == [(Action.FORWARD, Reason.NO_ACTIVATION)]
    kept = _kept(again, "ad1")
    assert kept is not None and kept.dno_knows  # the DNO got it now: no longer a suppressed outage
    [d] = decisions(eng.handle(restored(1, arrival=start + 0.06, mid="rst")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)  # suppress / restoration-paired before
    assert [(e.role, e.message_id) for e in d.evidence] == [("forwarded-outage", "ad1")]
