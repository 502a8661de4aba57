"""Defects found by the thirteenth review of the correlation engine (each test failed before its fix).

1. A message decided again after its idempotency key was pruned (re-delivered past the retention) while its
   suppressed-outage or unverified-evidence record was still kept (a held AD1's key is as old as its hold, its
   record as its release; a tick's prune budget can also part them) was indexed a second time. Once the record
   was pruned, the stale index entry raised ``KeyError`` on every later restoration of the ESME or Comms Hub
   (or every AD1 of the ESME, for unverified evidence). The re-decided AD1 also lost its operator release.
2. An arrival or ``Tick`` the engine cannot compute with (within a day or so of year 9999) moved the gateway
   clock there: the next tick overflowed, for ever (the clock is restored from the records it stamped).
3. A restoration alert was paired only among suppressed AD1s: the restoration of an AD1 the DNO got (forwarded
   when its hold timed out, say) was paired with another suppressed AD1 of the hub whose window contained it,
   and suppressed, so the DNO kept an outage open that had ended. A forwarded AD1 of in-scope ESMEs with
   firmware activity is now kept as a *forwarded outage* (``SuppressedOutage.forwarded``) for its retention,
   and a restoration nearer to a held AD1 than to the suppressed AD1 it would pair with waits for the held one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from engine_support import (
    CH,
    ESME,
    MPAN,
    OTHER_ESME,
    MemoryInventory,
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
)

from gateway.engine import Action, Decision, Engine, EngineConfig, Event, Reason, StateChange, Table, Tick
from gateway.engine import engine as engine_module
from gateway.engine.records import to_record
from gateway.engine.state import ClockRecord, SuppressedOutage

KEEP = EngineConfig().keep_for.total_seconds() / 60  # the retention, minutes
NEAR_MAX = datetime(9999, 12, 30, tzinfo=UTC)


def _final(effects: Iterable[object], mid: str) -> Decision:
    return [d for d in decisions(effects) if d.message_id == mid][-1]  # type: ignore[arg-type]


def _fresh_inventory() -> MemoryInventory:
    return MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr")])


def _with_a_restore_at_every_cut(events: list[Event]) -> list[list[Decision]]:
    """The decisions of ``events``, once per cut point, restored there from what a store keeps."""
    return decisions_restored_at_every_cut(events, standard_world, _fresh_inventory)


# ---------------------------------------------------------------- 1. a message decided again past its retention


def _held_then_suppressed_and_redelivered(eng: Engine) -> None:
    """An AD1 held at 4.5 (its key's time), suppressed at 8 (its record's time) and re-delivered when its key
    has been pruned but its record has not: decided again, suppressed again."""
    run(eng, [request(0, mid="req")])
    ad1 = outage(1, mid="ad1")
    assert [d.action for d in decisions(eng.handle(ad1))] == [Action.HOLD]
    assert [d.action for d in decisions(eng.handle(response(0.5, arrival=8, mid="rsp")))] == [
        Action.RELEASE_SUPPRESS
    ]
    pruned = eng.handle(tick(4.5 + KEEP + 0.1))
    assert StateChange(Table.SEEN, "ad1", None) in pruned
    assert not [c for c in pruned if isinstance(c, StateChange) and c.table is Table.SUPPRESSED]
    again = decisions(eng.handle(replace(ad1, arrival=t(4.5 + KEEP + 0.5))))
    assert [(d.action, d.reason) for d in again] == [(Action.SUPPRESS, Reason.ACTIVATION_WINDOW)]


def test_a_restoration_after_an_ad1_was_decided_again_past_its_retention_is_decided_not_a_crash() -> None:
    eng = standard_world()
    _held_then_suppressed_and_redelivered(eng)
    later = 4.5 + 3 * KEEP  # both the first and the second suppression's records are past their retention
    pruned = eng.handle(tick(later))
    assert StateChange(Table.SUPPRESSED, "ad1", None) in pruned
    [d] = decisions(eng.handle(restored(1, arrival=later + 1, mid="rst")))  # KeyError: 'ad1' before the fix
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)


def test_an_ad1_after_unverified_evidence_was_taken_again_past_its_retention_is_decided_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a tick's prune budget takes the key and leaves the evidence record for the next tick; the unsigned
    # response re-delivered in between is taken again
    monkeypatch.setattr(engine_module, "PRUNE_PER_TICK", 1)
    eng = standard_world()
    forged = response(0.5, verified=False, mid="forged")
    eng.handle(forged)
    assert StateChange(Table.SEEN, "forged", None) in eng.handle(tick(0.5 + KEEP + 1))
    eng.handle(replace(forged, arrival=t(0.5 + KEEP + 2)))  # its key pruned: taken again
    eng.handle(tick(0.5 + KEEP + 3))  # the first record's turn: it is the second's now, kept
    later = 0.5 + 3 * KEEP
    for i in range(3):  # the second's turn (one record a tick)
        eng.handle(tick(later + i))
    eng.handle(response(later + 5, esme=OTHER_ESME, verified=False, mid="forged-elsewhere"))  # some is kept
    [d] = decisions(eng.handle(outage(later + 10, mid="ad1")))  # KeyError: 'forged' before the fix
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NO_ACTIVATION)


def test_an_operator_released_ad1_decided_again_past_its_retention_stays_released() -> None:
    eng = standard_world()
    run(eng, [request(0, mid="req")])
    eng.handle(outage(1, mid="ad1"))
    eng.handle(response(0.5, arrival=8, mid="rsp"))
    assert eng.released_by_operator("ad1")  # the DNO got it
    eng.handle(tick(4.5 + KEEP + 0.1))  # its key is pruned, its (released) record is kept
    eng.handle(outage(1, arrival=4.5 + KEEP + 0.5, mid="ad1"))  # re-delivered: suppressed again
    [d] = decisions(eng.handle(restored(1, arrival=4.5 + KEEP + 1, mid="rst")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    assert [(e.role, e.message_id) for e in d.evidence] == [("released-outage", "ad1")]


# ---------------------------------------------------------------- 2. a clock the engine cannot compute with


def test_an_arrival_the_engine_cannot_compute_with_does_not_move_its_clock() -> None:
    eng = standard_world()
    eng.handle(tick(0))
    [d] = decisions(eng.handle(replace(outage(1, mid="bad"), arrival=NEAR_MAX)))
    assert (d.action, d.reason, d.decided_at) == (Action.FORWARD, Reason.TIME_OUT_OF_RANGE, t(0))
    assert eng.clock == t(0)
    eng.handle(tick(5))  # OverflowError before the fix
    eng.handle(request(6, mid="req"))
    [held] = decisions(eng.handle(outage(7, mid="ad1")))
    assert held.action is Action.HOLD and held.hold_deadline == t(10.5 + 10)
    [released] = decisions(eng.handle(tick(20.5)))
    assert (released.message_id, released.action) == ("ad1", Action.RELEASE_FORWARD)


def test_an_arrival_the_engine_cannot_compute_with_as_its_first_event_leaves_the_clock_to_the_next() -> None:
    eng = standard_world()
    [d] = decisions(eng.handle(replace(outage(1, mid="bad"), arrival=NEAR_MAX)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.TIME_OUT_OF_RANGE)
    eng.handle(tick(5))  # OverflowError before the fix
    assert eng.clock == t(5)
    eng.handle(request(6, mid="req"))
    [held] = decisions(eng.handle(outage(7, mid="ad1")))
    assert held.action is Action.HOLD and held.hold_deadline == t(10.5 + 10)


def test_a_tick_the_engine_cannot_compute_with_is_ignored() -> None:
    eng = standard_world()
    eng.handle(tick(0))
    eng.handle(Tick(NEAR_MAX))
    assert eng.clock == t(0)
    eng.handle(request(6, mid="req"))
    [held] = decisions(eng.handle(outage(7, mid="ad1")))  # OverflowError before the fix
    assert held.action is Action.HOLD


def test_a_stored_clock_the_engine_cannot_compute_with_is_not_restored() -> None:
    eng = standard_world()
    run(eng, [request(0, mid="req"), tick(1)])
    rows = [
        (c.table.value, c.key, to_record(c.value)) for c in eng.export_state() if c.table is not Table.CLOCK
    ]
    rows.append((Table.CLOCK.value, "clock", to_record(ClockRecord(NEAR_MAX))))  # kept by an earlier version
    again = Engine.restore(EngineConfig(), eng.scope, _fresh_inventory(), rows)
    assert again.clock == t(0)  # the latest time in the other records
    [held] = decisions(again.handle(outage(2, mid="ad1")))  # OverflowError before the fix
    assert held.action is Action.HOLD


# ---------------------------------------------------------------- 3. the restoration of an AD1 the DNO got


def _reboot_forwarded_then_genuine_suppressed() -> list[Event]:
    """The reboot's AD1 (outage at 1) waits for the 11.3 response, which comes after the hold's limit: the DNO
    gets it (hold-timeout). A genuine cut at 20 falls inside the window and is suppressed (MP102B accepts it).
    The reboot's restoration (interruption at 1) comes after both."""
    return [
        request(0, mid="req"),
        outage(1, mid="ad1-reboot"),
        tick(15),
        response(3, arrival=16, mid="rsp"),
        outage(20, mid="ad1-genuine"),
        restored(1, arrival=30, mid="rst-reboot"),
        restored(20, arrival=31, mid="rst-genuine"),
    ]


def test_the_restoration_of_an_ad1_forwarded_at_its_hold_limit_is_not_paired_with_another_ad1() -> None:
    effects = run(standard_world(), _reboot_forwarded_then_genuine_suppressed())
    assert (_final(effects, "ad1-reboot").action, _final(effects, "ad1-reboot").reason) == (
        Action.RELEASE_FORWARD,
        Reason.HOLD_TIMEOUT,
    )
    assert _final(effects, "ad1-genuine").action is Action.SUPPRESS
    reboot = _final(effects, "rst-reboot")
    assert (reboot.action, reboot.reason) == (Action.FORWARD, Reason.NOT_PAIRED)  # suppressed before the fix
    assert [(e.role, e.message_id) for e in reboot.evidence] == [("forwarded-outage", "ad1-reboot")]
    genuine = _final(effects, "rst-genuine")  # the suppressed cut's own restoration still pairs with it
    assert (genuine.action, genuine.reason) == (Action.SUPPRESS, Reason.RESTORATION_PAIRED)
    assert [(e.role, e.message_id) for e in genuine.evidence] == [("suppressed-outage", "ad1-genuine")]


def test_a_restoration_waiting_for_two_held_ad1s_is_forwarded_when_its_own_is_forwarded() -> None:
    # the same story on time: the restoration arrives while both AD1s wait for the response; the reboot's hold
    # times out first, the response then suppresses the genuine cut's AD1
    effects = run(
        standard_world(),
        [
            request(0, mid="req"),
            outage(1, mid="ad1-reboot"),
            outage(5, mid="ad1-genuine"),
            restored(1, arrival=9, mid="rst-reboot"),
            tick(15),
            response(3, arrival=16, mid="rsp"),
        ],
    )
    assert _final(effects, "ad1-reboot").reason is Reason.HOLD_TIMEOUT
    assert _final(effects, "ad1-genuine").action is Action.RELEASE_SUPPRESS
    reboot = _final(effects, "rst-reboot")
    assert (reboot.disposition, reboot.reason) == ("forward", Reason.NOT_PAIRED)  # paired before the fix
    assert [(e.role, e.message_id) for e in reboot.evidence] == [("forwarded-outage", "ad1-reboot")]


def test_a_restoration_nearer_a_held_ad1_than_to_the_suppressed_ad1_waits_for_the_held_one() -> None:
    # a suppressed AD1 (outage at 1, window 0..30.5) and a second AD1 (outage at 31, just outside that window)
    # held for another 11.3 command; a restoration interrupted at 30 (its meter's clock a minute behind) is in
    # the first window but restores the second outage: it waits for it, and ends as if it came after it
    run_first = [
        request(0, mid="req-1"),
        response(0.5, mid="rsp-1"),
        outage(1, mid="ad1-reboot"),
        request(25, counter=1001, mid="req-2"),
        outage(31, mid="ad1-second"),
    ]
    failed = response(36, counter=1001, result=3, arrival=38, mid="rsp-2")  # the second command failed
    during = run(standard_world(), [*run_first, restored(30, arrival=36, mid="rst"), failed])
    after = run(standard_world(), [*run_first, failed, restored(30, arrival=39, mid="rst")])
    assert _final(during, "ad1-second").reason is Reason.ACTIVATION_FAILED
    held = next(d for d in decisions(during) if d.message_id == "rst")
    assert (held.action, held.reason) == (Action.HOLD, Reason.PENDING_OUTAGE)  # paired with ad1-reboot before
    for effects in (during, after):
        d = _final(effects, "rst")
        assert (d.disposition, d.reason) == ("forward", Reason.NOT_PAIRED)
        assert [(e.role, e.message_id) for e in d.evidence] == [("forwarded-outage", "ad1-second")]


def test_a_forwarded_outage_is_kept_for_its_retention_and_restores_at_every_cut() -> None:
    events = _reboot_forwarded_then_genuine_suppressed()
    whole = decisions(run(standard_world(), events))
    assert [d.action for d in whole if d.message_id == "rst-reboot"] == [Action.FORWARD]
    for cut, restored_run in enumerate(_with_a_restore_at_every_cut(events)):
        assert restored_run == whole, f"diverged after restoring at event {cut}"
    eng = standard_world()
    effects = run(eng, events[:3])  # the reboot's AD1 forwarded at the tick past its hold's limit (15)
    [kept] = [c.value for c in effects if isinstance(c, StateChange) and c.table is Table.SUPPRESSED]
    assert isinstance(kept, SuppressedOutage) and kept.forwarded and kept.message_id == "ad1-reboot"
    assert kept.decided_at == t(15)
    assert StateChange(Table.SUPPRESSED, "ad1-reboot", None) not in eng.handle(tick(15 + KEEP - 0.1))
    assert StateChange(Table.SUPPRESSED, "ad1-reboot", None) in eng.handle(tick(15 + KEEP))


def test_an_ad1_forwarded_without_any_firmware_activity_keeps_no_record() -> None:
    # the common path (an in-scope ESME without activation evidence) and an ESME out of scope stay as cheap
    # as before: nothing kept beyond the idempotency key
    eng = standard_world()
    for ev in (outage(1, mid="plain"), outage(2, ch=0x00DB1234567891A2, mpan="9999999999993", mid="out")):
        out = eng.handle(ev)
        assert [d.action for d in decisions(out)] == [Action.FORWARD]
        assert {c.table for c in out if isinstance(c, StateChange)} == {Table.SEEN}
