"""The future-dated path against the order its evidence arrives in (twentieth session's review; each test failed
on the code before its fix).

A cancellation (SR 11.3, ExecutionDateTime 3000-12-31) retracts every pending future-dated activation of its ESME
whose execution time is unknown or later than the moment the cancellation was observed (ENGINE.md §4). The DSP
delivers the device's "accepted" (NULL) response asynchronously: it can reach the gateway after a cancellation the
supplier sent later than the device accepted the command (a response re-delivered, or one whose request the gateway
did not take as evidence). The command was pending on the device when the cancellation was sent, so the cancellation
retracts it whichever of the two the gateway takes in first. Before, the late "accepted" response opened a pending
record with no known execution time: every AD1 of the ESME for the retention (two days) was held for ``hold_limit``
and forwarded ``hold-timeout``, where the other order decides it on arrival.
"""

from __future__ import annotations

import pytest
from engine_support import (
    CH,
    ESME,
    MPAN,
    OTHER_CH,
    OTHER_ESME,
    OTHER_MPAN,
    MemoryInventory,
    decisions,
    decisions_restored_at_every_cut,
    fd_outcome,
    outage,
    request,
    response,
    run,
    standard_world,
    tick,
)

from gateway.engine import Action, Reason


@pytest.mark.parametrize("order", ["accepted-first", "cancel-first"])
def test_a_cancellation_retracts_a_command_accepted_before_it_whichever_arrives_first(order: str) -> None:
    eng = standard_world()
    accepted = response(0.5, arrival=31, counter=1001, accepted=True, mid="acc")  # ResponseDateTime 0.5
    cancel = request(30, counter=1002, cancel=True, mid="cancel")  # observed at 30
    if order == "accepted-first":
        accepted = response(0.5, arrival=29, counter=1001, accepted=True, mid="acc")
        run(eng, [accepted, cancel])
    else:
        run(eng, [cancel, accepted])
    states = {a.counter: a.state.value for a in eng.activations()}
    assert states == {1001: "cancelled", 1002: "cancelled"}, states
    # a genuine cut an hour later: nothing can explain it, so it is decided on arrival (a cancelled command whose
    # execution time was never known has no window: no-activation), not held for an outcome that is not coming
    [d] = decisions(eng.handle(outage(60.5, arrival=64, mid="ad1")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NO_ACTIVATION), (d.action, d.reason)


def test_a_cancelled_command_that_ran_after_all_is_still_confirmed_by_its_8f66() -> None:
    # the retraction is no more final than the live one: an 8F66 says the device ran the command (ENGINE.md §4)
    eng = standard_world()
    run(eng, [request(30, counter=1002, cancel=True), response(0.5, arrival=31, counter=1001, accepted=True)])
    eng.handle(fd_outcome(60, arrival=61, counter=1001))
    [d] = decisions(eng.handle(outage(60.5, arrival=64, mid="ad1")))
    assert (d.action, d.reason) == (Action.SUPPRESS, Reason.FD_CONFIRMED)


def test_a_command_accepted_after_the_cancellation_is_not_retracted_by_it() -> None:
    # the companion (passed before the fix): a command accepted after the cancellation was sent is a new one (a
    # reschedule): the cancellation had nothing of it to cancel, and an AD1 waits for its outcome
    eng = standard_world()
    run(eng, [request(30, counter=1002, cancel=True), response(32, arrival=33, counter=1001, accepted=True)])
    assert {a.counter: a.state.value for a in eng.activations()}[1001] == "pending-future"
    out = eng.handle(outage(60.5, arrival=64, mid="ad1"))
    out += eng.handle(tick(80))
    assert [(d.action, d.reason) for d in decisions(out)] == [
        (Action.HOLD, Reason.PENDING_FUTURE),
        (Action.RELEASE_FORWARD, Reason.HOLD_TIMEOUT),
    ]


def test_a_request_observed_after_the_cancellation_is_not_retracted_by_its_earlier_accepted_response() -> (
    None
):
    # a future-dated request observed after the cancellation is a command sent after it: its "accepted" response,
    # stamped earlier by a DCC clock behind the gateway's, does not make the cancellation apply to it
    eng = standard_world()
    run(eng, [request(30, counter=1002, cancel=True), request(31, counter=1001, execute=60)])
    eng.handle(response(29.5, arrival=32, counter=1001, accepted=True))
    assert {a.counter: a.state.value for a in eng.activations()}[1001] == "pending-future"


def test_the_retraction_of_a_late_accepted_command_is_the_same_after_a_restart_at_every_cut() -> None:
    events = [
        request(30, counter=1002, cancel=True, mid="cancel"),
        response(0.5, arrival=31, counter=1001, accepted=True, mid="acc"),
        outage(60.5, arrival=64, mid="ad1"),
        tick(80),
    ]
    runs = decisions_restored_at_every_cut(
        events,
        standard_world,
        lambda: MemoryInventory(
            [(ESME, CH, MPAN, "Landis+Gyr"), (OTHER_ESME, OTHER_CH, OTHER_MPAN, "Other")]
        ),
    )
    for got in runs:
        assert [(d.message_id, d.action, d.reason) for d in got] == [
            ("ad1", Action.FORWARD, Reason.NO_ACTIVATION)
        ]
