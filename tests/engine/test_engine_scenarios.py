"""Scenario tests of the correlation engine: short timelines in minutes after T0."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from engine_support import (
    CH,
    ESME,
    MPAN,
    OTHER_CH,
    OTHER_ESME,
    OTHER_MPAN,
    MemoryInventory,
    MemoryScope,
    decisions,
    fd_outcome,
    learned,
    other,
    outage,
    request,
    response,
    restored,
    run,
    standard_world,
    t,
    tick,
)

from gateway.engine import Action, Duplicate, Engine, EngineConfig, Observed, Reason
from gateway.engine.errors import EngineConfigError


def only(effects: list[object]) -> object:
    ds = decisions(effects)  # type: ignore[arg-type]
    assert len(ds) == 1, ds
    return ds[0]


def test_immediate_activation_then_ad1_inside_window_is_suppressed() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    d = only(eng.handle(outage(2)))
    assert d.action is Action.SUPPRESS and d.reason is Reason.ACTIVATION_WINDOW
    assert d.window_opens == t(0) and d.window_closes == t(30.5)
    assert d.esmes == (ESME,) and d.ch == CH and d.mpan == MPAN
    assert {e.role for e in d.evidence} == {"request", "response"}
    assert d.activation is not None and d.activation.startswith(f"{ESME:016X}:")


def test_ad1_just_after_the_window_closes_is_forwarded() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    assert only(eng.handle(outage(30.5))).action is Action.SUPPRESS  # the closing edge is inside
    late = only(eng.handle(outage(30.5 + 1 / 60)))
    assert late.action is Action.FORWARD and late.reason is Reason.OUTSIDE_WINDOW


def test_ad1_just_before_the_request_was_seen_is_forwarded() -> None:
    eng = standard_world()
    run(eng, [request(10), response(10.5)])
    assert only(eng.handle(outage(10, arrival=14))).action is Action.SUPPRESS  # opens = request seen
    early = only(eng.handle(outage(10 - 1 / 60, arrival=14)))
    assert early.action is Action.FORWARD and early.reason is Reason.OUTSIDE_WINDOW


def test_without_the_request_the_window_opens_window_before_the_response() -> None:
    eng = standard_world()
    eng.handle(response(20))
    assert only(eng.handle(outage(5, arrival=24))).action is Action.SUPPRESS
    assert only(eng.handle(outage(5 - 1 / 60, arrival=24))).reason is Reason.OUTSIDE_WINDOW


def test_ch_not_in_scope_is_forwarded() -> None:
    eng = standard_world()
    run(eng, [request(0, esme=OTHER_ESME), response(0.5, esme=OTHER_ESME)])
    d = only(eng.handle(outage(2, ch=OTHER_CH, mpan=OTHER_MPAN)))
    assert d.action is Action.FORWARD and d.reason is Reason.OUT_OF_SCOPE and d.esmes == (OTHER_ESME,)


def test_unknown_comms_hub_is_forwarded_as_ch_unknown() -> None:
    eng = standard_world()
    d = only(eng.handle(outage(2, ch=0x1122334455667788, mpan="0000000000001")))
    assert d.action is Action.FORWARD and d.reason is Reason.CH_UNKNOWN


def test_in_scope_without_any_activation_is_forwarded_without_delay() -> None:
    eng = standard_world()
    d = only(eng.handle(outage(2)))
    assert d.action is Action.FORWARD and d.reason is Reason.NO_ACTIVATION and not eng.held()


def test_manufacturer_scope_uses_the_inventory_manufacturer() -> None:
    eng = standard_world(EngineConfig(scope="manufacturer", manufacturers=frozenset({"landis+gyr"})))
    run(eng, [request(0), response(0.5), request(0, esme=OTHER_ESME, counter=5), response(0.5, esme=OTHER_ESME, counter=5)])
    assert only(eng.handle(outage(2))).action is Action.SUPPRESS
    assert only(eng.handle(outage(2, ch=OTHER_CH, mpan=OTHER_MPAN))).reason is Reason.OUT_OF_SCOPE


def test_scope_all_suppresses_any_known_esme() -> None:
    eng = standard_world(EngineConfig(scope="all"))
    run(eng, [request(0, esme=OTHER_ESME, counter=5), response(0.5, esme=OTHER_ESME, counter=5)])
    assert only(eng.handle(outage(2, ch=OTHER_CH, mpan=OTHER_MPAN))).action is Action.SUPPRESS


def test_failed_immediate_activation_is_forwarded_unless_its_result_counts() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5, result=3)])
    d = only(eng.handle(outage(2)))
    assert d.action is Action.FORWARD and d.reason is Reason.ACTIVATION_FAILED
    eng2 = standard_world(EngineConfig(activation_results=frozenset({0, 3})))
    run(eng2, [request(0), response(0.5, result=3)])
    assert only(eng2.handle(outage(2))).action is Action.SUPPRESS


def test_meter_clock_disagreement_is_flagged_not_used_as_anchor() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5, gbcs_at=-600)])
    d = only(eng.handle(outage(2)))
    assert d.action is Action.SUPPRESS and "clock-skew" in d.flags and d.window_closes == t(30.5)


def test_request_without_response_holds_then_response_releases_suppress() -> None:
    eng = standard_world()
    eng.handle(request(0))
    held = only(eng.handle(outage(1)))
    assert held.action is Action.HOLD and held.reason is Reason.PENDING_IMMEDIATE
    assert held.hold_deadline == t(4.5) + timedelta(minutes=10)
    released = only(eng.handle(response(0.5, arrival=6)))
    assert released.action is Action.RELEASE_SUPPRESS and released.reason is Reason.ACTIVATION_WINDOW
    assert released.message_id == held.message_id and not eng.held()


def test_future_dated_confirmed_by_8f66_after_the_ad1_arrived_holds_then_release_suppress() -> None:
    eng = standard_world()
    run(eng, [request(-600, counter=1001, execute=0), response(-599, counter=1001, accepted=True)])
    ad1 = outage(1)
    held = only(eng.handle(ad1))
    assert held.action is Action.HOLD and held.reason is Reason.PENDING_FUTURE
    released = only(eng.handle(fd_outcome(0, arrival=6)))
    assert (released.message_id, released.action, released.reason) == (
        ad1.message_id,
        Action.RELEASE_SUPPRESS,
        Reason.FD_CONFIRMED,
    )
    assert released.window_opens == t(-15) and released.window_closes == t(30)


def test_future_dated_confirmed_before_the_ad1_is_suppressed_on_arrival() -> None:
    eng = standard_world()
    run(eng, [request(-600, counter=1001, execute=0), fd_outcome(0, arrival=1)])
    d = only(eng.handle(outage(1)))
    assert d.action is Action.SUPPRESS and d.reason is Reason.FD_CONFIRMED


def test_8f67_is_forwarded_by_default() -> None:
    eng = standard_world()
    run(eng, [request(-600, counter=1001, execute=0)])
    assert only(eng.handle(outage(1))).action is Action.HOLD
    released = only(eng.handle(fd_outcome(0, arrival=6, success=False)))
    assert released.action is Action.RELEASE_FORWARD and released.reason is Reason.FD_FAILED


def test_an_8f66_whose_result_is_not_success_is_a_failure_not_a_confirmation() -> None:
    # the alert code says success, its CS06 result (2: image hash mismatch) says otherwise
    eng = standard_world()
    contradicted = dataclasses.replace(fd_outcome(0, arrival=1), result=2)
    run(eng, [request(-600, counter=1001, execute=0), contradicted])
    d = only(eng.handle(outage(1)))
    assert d.action is Action.FORWARD and d.reason is Reason.FD_FAILED


def test_8f67_suppresses_when_failed_activation_counts() -> None:
    eng = standard_world(EngineConfig(fd_failure_policy="suppress"))
    run(eng, [request(-600, counter=1001, execute=0), fd_outcome(0, arrival=1, success=False)])
    d = only(eng.handle(outage(1)))
    assert d.action is Action.SUPPRESS and d.reason is Reason.FD_FAILED_COUNTED


def test_cancelled_future_dated_activation_is_forwarded() -> None:
    eng = standard_world()
    run(eng, [request(-600, counter=1001, execute=0), request(-300, counter=1002, cancel=True)])
    d = only(eng.handle(outage(1)))
    assert d.action is Action.FORWARD and d.reason is Reason.CANCELLED
    assert not eng.held()


def test_cancellation_releases_a_held_ad1_as_forward() -> None:
    # the cancel is sent before the execution time (a cancel sent after it finds nothing pending on the
    # device: tests/engine/test_activation_review.py)
    eng = standard_world()
    run(eng, [request(-600, counter=1001, execute=10)])
    assert only(eng.handle(outage(1))).action is Action.HOLD
    released = only(eng.handle(request(5, counter=1002, cancel=True)))
    assert released.action is Action.RELEASE_FORWARD and released.reason is Reason.CANCELLED


def test_8f66_after_cancellation_still_confirms() -> None:
    eng = standard_world()
    run(eng, [request(-600, counter=1001, execute=0), request(-300, counter=1002, cancel=True), fd_outcome(0)])
    assert only(eng.handle(outage(1))).reason is Reason.FD_CONFIRMED


def test_ad1_two_days_late_is_decided_by_its_start_time() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5), tick(24 * 60), tick(47 * 60)])
    two_days = 48 * 60
    d = only(eng.handle(outage(2, arrival=two_days)))
    assert d.action is Action.SUPPRESS and d.decided_at == t(two_days)
    late_real = only(eng.handle(outage(60, arrival=two_days)))
    assert late_real.action is Action.FORWARD and late_real.reason is Reason.OUTSIDE_WINDOW


def test_state_older_than_retention_is_pruned_on_tick() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    assert eng.activations()
    eng.handle(tick(3 * 24 * 60))
    assert not eng.activations()
    assert only(eng.handle(outage(2, arrival=3 * 24 * 60 + 1))).reason is Reason.NO_ACTIVATION


def test_duplicate_ad1_gets_one_decision() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    ad1 = outage(2)
    first = only(eng.handle(ad1))
    again = eng.handle(ad1)
    assert decisions(again) == []
    dup = [e for e in again if isinstance(e, Duplicate)]
    assert len(dup) == 1 and dup[0].original == first


def test_duplicate_of_a_held_ad1_is_not_released_twice() -> None:
    eng = standard_world()
    eng.handle(request(0))
    ad1 = outage(1)
    eng.handle(ad1)
    dup = eng.handle(ad1)
    assert [e.original.action for e in dup if isinstance(e, Duplicate) and e.original] == [Action.HOLD]
    releases = decisions(eng.handle(response(0.5, arrival=5)))
    assert [d.message_id for d in releases] == [ad1.message_id]


def test_restoration_paired_with_suppressed_ad1_is_suppressed_by_default() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    ad1 = outage(2)
    eng.handle(ad1)
    d = only(eng.handle(restored(2)))
    assert d.action is Action.SUPPRESS and d.reason is Reason.RESTORATION_PAIRED
    assert [e.message_id for e in d.evidence] == [ad1.message_id]


def test_restoration_paired_is_forwarded_under_forward_policy() -> None:
    eng = standard_world(EngineConfig(restoration_policy="forward"))
    run(eng, [request(0), response(0.5), outage(2)])
    d = only(eng.handle(restored(2)))
    assert d.action is Action.FORWARD and d.reason is Reason.RESTORATION_PAIRED


def test_restoration_without_suppressed_ad1_is_forwarded() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5), outage(2)])
    d = only(eng.handle(restored(90)))
    assert d.action is Action.FORWARD and d.reason is Reason.NOT_PAIRED


def test_restoration_waits_for_its_held_ad1() -> None:
    eng = standard_world()
    run(eng, [request(0), outage(1)])
    rst = restored(1, arrival=5)
    assert only(eng.handle(rst)).reason is Reason.PENDING_OUTAGE
    out = decisions(eng.handle(response(0.5, arrival=6)))
    assert [(d.action, d.reason) for d in out] == [
        (Action.RELEASE_SUPPRESS, Reason.ACTIVATION_WINDOW),
        (Action.RELEASE_SUPPRESS, Reason.RESTORATION_PAIRED),
    ]


def test_unverified_activation_evidence_never_suppresses() -> None:
    eng = standard_world()
    effects = run(eng, [request(0, verified=False), response(0.5, verified=False)])
    assert [o.used for o in effects if isinstance(o, Observed)] == [False, False]
    d = only(eng.handle(outage(2)))
    assert d.action is Action.FORWARD and d.reason is Reason.EVIDENCE_UNVERIFIED
    assert {e.role for e in d.evidence} == {"unverified"}


def test_verified_request_with_forged_response_is_held_then_times_out_to_forward() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5, verified=False)])
    assert only(eng.handle(outage(1))).action is Action.HOLD
    d = only(eng.handle(tick(20)))
    assert d.action is Action.RELEASE_FORWARD and d.reason is Reason.HOLD_TIMEOUT


def test_response_whose_gbcs_identity_does_not_match_is_not_evidence() -> None:
    eng = standard_world()
    rsp = response(0.5)
    from dataclasses import replace

    eng.handle(replace(rsp, counter_matches=False))
    assert only(eng.handle(outage(2))).reason is Reason.EVIDENCE_UNVERIFIED


def test_unverified_ad1_is_forwarded_fail_open_or_quarantined_by_config() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    d = only(eng.handle(outage(2, verified=False)))
    assert d.action is Action.FORWARD and d.reason is Reason.INLINE_UNVERIFIED
    q = standard_world(EngineConfig(quarantine_unverified_inline=True))
    d2 = only(q.handle(outage(2, verified=False)))
    assert d2.action is Action.SUPPRESS and d2.reason is Reason.QUARANTINED


def test_inventory_learned_from_traffic_is_used_for_a_later_ad1() -> None:
    new_esme, new_ch = 0x00DB0000000000E1, 0x00DB0000000000C1
    eng = Engine(EngineConfig(), MemoryScope([new_esme]), MemoryInventory())
    run(eng, [request(0, esme=new_esme), response(0.5, esme=new_esme)])
    assert only(eng.handle(outage(2, ch=new_ch, mpan=None))).reason is Reason.CH_UNKNOWN
    eng.handle(learned(3, esme=new_esme, ch=new_ch, mpan="2000000000006"))
    assert only(eng.handle(outage(2.5, ch=new_ch, mpan=None))).action is Action.SUPPRESS
    # and via the MPAN alone
    assert only(eng.handle(outage(3, ch=0x00DB0000000000FF, mpan="2000000000006"))).action is Action.SUPPRESS


def test_hold_timeout_releases_forward_on_tick() -> None:
    eng = standard_world()
    run(eng, [request(-600, counter=1001, execute=0)])
    held = only(eng.handle(outage(1)))
    assert decisions(eng.handle(tick(14))) == []  # 9.5 minutes into the hold
    d = only(eng.handle(tick(14.5)))
    assert (d.message_id, d.action, d.reason) == (held.message_id, Action.RELEASE_FORWARD, Reason.HOLD_TIMEOUT)


def test_hold_timeout_is_also_driven_by_a_later_events_arrival() -> None:
    eng = standard_world()
    eng.handle(request(0))
    held = only(eng.handle(outage(1)))
    later = other(30)
    effects = eng.handle(later)
    assert [(d.message_id, d.action, d.reason) for d in decisions(effects)] == [
        (held.message_id, Action.RELEASE_FORWARD, Reason.HOLD_TIMEOUT),
        (later.message_id, Action.FORWARD, Reason.OTHER_INLINE),
    ]


def test_other_inline_messages_are_always_forwarded() -> None:
    eng = standard_world()
    d = only(eng.handle(other(0)))
    assert d.action is Action.FORWARD and d.reason is Reason.OTHER_INLINE


def test_naive_timestamps_are_read_as_utc_or_rejected_by_policy() -> None:
    from dataclasses import replace

    ad1 = outage(2)
    naive = replace(ad1, start_time=ad1.start_time.replace(tzinfo=None))
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    assert only(eng.handle(naive)).action is Action.SUPPRESS
    strict = standard_world(EngineConfig(naive_timestamp_policy="reject"))
    run(strict, [request(0), response(0.5)])
    d = only(strict.handle(naive))
    assert d.action is Action.FORWARD and d.reason is Reason.NAIVE_TIMESTAMP


def test_held_ad1_is_released_by_evidence_on_another_esme_of_the_same_hub() -> None:
    second = 0x00DB1234567890B0
    inventory = MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr"), (second, CH, MPAN, "Landis+Gyr")])
    eng = Engine(EngineConfig(), MemoryScope([ESME, second]), inventory)
    eng.handle(request(-600, counter=1001, execute=0))  # ESME: future-dated, outcome awaited
    held = only(eng.handle(outage(1)))
    assert held.action is Action.HOLD and set(held.esmes) == {ESME, second}
    released = only(eng.handle(response(0.5, esme=second, counter=7, arrival=6)))
    assert (released.action, released.reason) == (Action.RELEASE_SUPPRESS, Reason.ACTIVATION_WINDOW)
    assert released.activation is not None and released.activation.startswith(f"{second:016X}")


def test_engine_runs_on_the_real_guid_set_and_inventory() -> None:
    guids = pytest.importorskip("gateway.guids")
    inventory_mod = pytest.importorskip("gateway.inventory")
    scope = guids.GuidSet.from_iterable([ESME])
    inventory = inventory_mod.Inventory.from_rows(
        [inventory_mod.InventoryRow(ESME, CH, MPAN, "Landis+Gyr", "E470"),
         inventory_mod.InventoryRow(OTHER_ESME, OTHER_CH, OTHER_MPAN, "Other", None)]
    )
    eng = Engine(EngineConfig(), scope, inventory)
    run(eng, [request(0), response(0.5)])
    assert only(eng.handle(outage(2))).action is Action.SUPPRESS
    assert only(eng.handle(outage(2, ch=OTHER_CH, mpan=OTHER_MPAN))).reason is Reason.OUT_OF_SCOPE
    new_esme, new_ch = 0x00DB0000000000E1, 0x00DB0000000000C1
    eng.handle(learned(3, esme=new_esme, ch=new_ch, mpan="2000000000001"))
    assert list(inventory.esmes_for_ch(new_ch)) == [new_esme]


# ---------------------------------------------------------------- the opening edge of an immediate window


@pytest.mark.parametrize("late", [False, True])
def test_a_response_hours_after_its_request_does_not_stretch_the_window_over_those_hours(late: bool) -> None:
    # request seen at 0, a genuine cut at 120 min, the response only at 360 min: the cut is forwarded whether
    # its AD1 arrives on time (held, then the hold times out) or is re-delivered after the response
    eng = standard_world()
    run(eng, [request(0, mid="req")])
    out = [] if late else eng.handle(outage(120, arrival=123.5, mid="ad1"))
    run(eng, [tick(140), response(360, mid="rsp")])
    if late:
        out = eng.handle(outage(120, arrival=400, mid="ad1"))
    [d] = [e for e in decisions(out) if e.message_id == "ad1" and e.action is not Action.HOLD]
    assert d.disposition == "forward" and d.reason is Reason.OUTSIDE_WINDOW


def test_a_request_seen_shortly_before_its_response_still_opens_the_window_for_a_long_reboot() -> None:
    eng = standard_world()  # a meter that reboots 20 minutes before it answers: longer than window_before
    run(eng, [request(-20, mid="req"), response(0, mid="rsp")])
    d = only(eng.handle(outage(-19, arrival=1, mid="ad1")))
    assert d.action is Action.SUPPRESS and d.reason is Reason.ACTIVATION_WINDOW
    assert only(eng.handle(outage(-21, arrival=1, mid="before"))).action is Action.FORWARD  # before the command


def test_a_request_observed_only_after_its_response_does_not_narrow_the_window() -> None:
    decided = []
    for events in ([response(10, mid="rsp")], [response(10, mid="rsp"), request(11, mid="req")]):
        eng = standard_world()
        run(eng, events)
        decided.append(only(eng.handle(outage(6, arrival=20, mid="ad1"))).action)
    assert decided == [Action.SUPPRESS, Action.SUPPRESS]


def test_request_lead_max_may_not_be_shorter_than_window_before() -> None:
    with pytest.raises(EngineConfigError):
        EngineConfig(request_lead_max=timedelta(minutes=5))
    assert EngineConfig.from_mapping({"request-lead-max": "2h"}).request_lead_max == timedelta(hours=2)


@pytest.mark.parametrize("order", ["request-first", "response-first"])
def test_a_cancellation_ends_cancelled_whichever_of_its_request_and_accepted_response_comes_first(order: str) -> None:
    eng = standard_world()
    cancel = request(30, counter=1002, cancel=True, mid="cancel-req")
    accepted = response(30.5, counter=1002, accepted=True, mid="cancel-acc")
    run(eng, [request(0, counter=1001, execute=600), response(1, counter=1001, accepted=True),
              *((cancel, accepted) if order == "request-first" else (accepted, cancel))])  # fmt: skip
    assert {a.counter: a.state.value for a in eng.activations()} == {1001: "cancelled", 1002: "cancelled"}
    d = only(eng.handle(outage(24 * 60, mid="next-day")))  # a genuine cut the next day: not held
    assert d.action is Action.FORWARD
