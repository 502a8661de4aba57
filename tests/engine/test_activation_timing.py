"""What happened when, in the activation evidence and the alerts it explains (found by the tenth session's
review; each test failed on the code before its fix):

1. A future-dated activation's window opens ``window_before`` before its execution, but never before its
   request was observed: a request scheduled minutes ahead does not explain an outage that began before
   the command existed (a genuine cut, which was suppressed).
2. A restoration alert is paired with the suppressed AD1 whose outage began nearest to its interruption
   time (of those whose window contains it), not the first by message id: the pairing names the outage it
   restores, which is what an operator's release of that AD1 follows.
3. A cancellation observed after a pending future-dated activation's execution time (the device had
   already run it: nothing pending left to cancel) does not retract it: the 8F66 that follows confirms it
   and the reboot's AD1 held for it is suppressed, as without the cancellation.
"""

from __future__ import annotations

import pytest
from engine_support import decisions, fd_outcome, outage, request, response, restored, run, standard_world

from gateway.engine import Action, Engine, Reason

# ---------------------------------------------------------------- 1. future-dated window opens before the command


@pytest.mark.parametrize("arrival", ["held-then-8f66", "after-8f66"])
def test_a_future_dated_activation_does_not_explain_an_outage_that_began_before_its_request(
    arrival: str,
) -> None:
    # DOMAIN.md §4 Window: "opens is the time the activation command was seen (when the 11.3 request was
    # observed) or else activation - before". ENGINE.md §4 opens a future-dated window at
    # execution - window_before because "the request was observed hours or days before it executed": here it
    # was observed 5 minutes before (execute at 60, seen at 55). A genuine power cut at 52, 3 minutes before
    # any activation command existed, cannot have been caused by it: its AD1 must reach the DNO.
    eng = standard_world()
    run(eng, [request(55, counter=1001, execute=60, mid="req"), response(55.2, counter=1001, accepted=True)])
    if arrival == "held-then-8f66":
        out = eng.handle(outage(52, arrival=56, mid="ad1"))  # arrives after the request, before execution
        out += eng.handle(fd_outcome(60, arrival=61, counter=1001, mid="8f66"))
    else:
        eng.handle(fd_outcome(60, arrival=61, counter=1001, mid="8f66"))
        out = eng.handle(outage(52, arrival=70, mid="ad1"))  # re-delivered late
    [d] = [x for x in decisions(out) if x.message_id == "ad1" and x.action is not Action.HOLD]
    assert d.disposition == "forward", (d.action, d.reason, d.window_opens)


def test_a_future_dated_activation_still_explains_the_reboot_at_its_execution_time() -> None:
    # the companion of the test above (passes today): the fix must keep the reboot itself suppressed
    eng = standard_world()
    run(eng, [request(55, counter=1001, execute=60), response(55.2, counter=1001, accepted=True)])
    eng.handle(fd_outcome(60, arrival=61, counter=1001))
    [d] = decisions(eng.handle(outage(60.5, arrival=64)))
    assert d.action is Action.SUPPRESS and d.reason is Reason.FD_CONFIRMED


# ---------------------------------------------------------------- 2. restoration paired with the wrong AD1


def _two_suppressed_outages_in_one_window() -> Engine:
    # an immediate activation at 0 (window [0, 30.5]); the reboot's AD1 at 2 and a genuine cut at 20 on the same
    # hub, both suppressed (DOMAIN.md §2: a genuine outage in the period may be suppressed). The message ids are
    # chosen so that the reboot's AD1 sorts first.
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    reboot = decisions(eng.handle(outage(2, mid="ad1-a-reboot")))
    genuine = decisions(eng.handle(outage(20, mid="ad1-b-genuine")))
    assert [d.action for d in (*reboot, *genuine)] == [Action.SUPPRESS, Action.SUPPRESS]
    return eng


def test_a_restoration_is_paired_with_the_ad1_of_the_outage_it_restores() -> None:
    # ENGINE.md §6: "duisgw audit release of an AD1 also releases a restoration already paired with it" (the store
    # finds it by the restoration's "suppressed-outage" evidence, SqliteStore.paired_restorations). The
    # restoration of the cut at 20 (interruption time 20) must name the AD1 that started at 20, not the reboot's AD1
    # that started at 2: else releasing the genuine AD1 leaves its restoration suppressed.
    eng = _two_suppressed_outages_in_one_window()
    [d] = decisions(eng.handle(restored(20, mid="rst-genuine")))
    assert d.reason is Reason.RESTORATION_PAIRED
    assert [e.message_id for e in d.evidence if e.role == "suppressed-outage"] == ["ad1-b-genuine"]


# ---------------------------------------------------------------- 3. a cancellation after the execution time


def test_a_cancellation_sent_after_the_execution_time_does_not_release_the_held_reboot_ad1_forward() -> None:
    # ENGINE.md §4: a cancellation "retracts every *pending future-dated* activation of that ESME ... (the device
    # applies the cancel to its pending activation)", and the transition table makes an 8F66 win over a
    # cancellation "in either order" (the device said it ran). Here the activation was scheduled at 60 and ran;
    # the supplier's cancellation comes at 66, when the device no longer holds anything to cancel, and the 8F66
    # arrives at 67. The reboot's AD1 (start 60.5) is held for that outcome: it must end as it does without the
    # cancellation (release-suppress, fd-confirmed), not be released forward as "cancelled" at 66.
    eng = standard_world()
    run(eng, [request(0, counter=1001, execute=60), response(0.5, counter=1001, accepted=True)])
    out = eng.handle(outage(60.5, arrival=64, mid="ad1"))
    out += run(eng, [request(66, counter=1002, cancel=True), response(66.2, counter=1002, accepted=True)])
    out += eng.handle(fd_outcome(60, arrival=67, counter=1001, mid="8f66"))
    states = {a.counter: a.state.value for a in eng.activations()}
    assert states[1001] == "confirmed"  # the end state is right
    [d] = [x for x in decisions(out) if x.message_id == "ad1" and x.action is not Action.HOLD]
    assert (d.action, d.reason) == (Action.RELEASE_SUPPRESS, Reason.FD_CONFIRMED), (d.action, d.reason)


def test_a_cancellation_before_the_execution_time_still_retracts_the_pending_activation() -> None:
    # the companion (passes today): a cancellation the device could still apply retracts the activation
    eng = standard_world()
    run(eng, [request(0, counter=1001, execute=60), response(0.5, counter=1001, accepted=True)])
    eng.handle(request(50, counter=1002, cancel=True))
    [d] = decisions(eng.handle(outage(60.5, arrival=64, mid="ad1")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.CANCELLED)
