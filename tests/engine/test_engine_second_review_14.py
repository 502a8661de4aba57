"""Second review of the restoration wait (``Engine._wait_on``) and of two rules the model test left open."""

from __future__ import annotations

from engine_support import (
    decisions,
    decisions_restored_at_every_cut,
    fd_outcome,
    final,
    outage,
    request,
    response,
    restored,
    run,
    standard_world,
    t,
    tick,
)


def _stream() -> list[object]:
    # an immediate activation never answered (pending for its retention); the reboot's AD1 (start 0) is held and
    # the meter's restoration (interrupted at 3, held at 5, its own limit 15) waits for it; then AD1s of the hub
    # keep coming, each nearer to the interruption and each held (10 min) before the previous one times out
    events: list[object] = [
        request(0, mid="req"),
        outage(0, arrival=1, mid="ad1-00"),
        restored(3, arrival=5, mid="rst"),
    ]
    for k in range(1, 8):
        events.append(outage(3 - 3 / (k + 1), arrival=1 + 9 * k, mid=f"ad1-{k:02d}"))
        events.append(tick(2 + 9 * k))  # the deadline of the one before
    events.append(tick(120))
    return events


def test_a_restoration_waits_only_for_the_outages_held_before_its_own_hold_limit() -> None:
    # it waited on for every later one: held from 09:05 until the last one timed out (for as long as such AD1s
    # came), while the DNO got every AD1 (each forwarded hold-timeout) and not the restoration. It waits for an
    # AD1 held before its own limit (ad1-01, held at 10, deadline 20), not for one held after it (ad1-02 at 19):
    # decided when ad1-01 is, paired with nothing the DNO did not get (ad1-01 forwarded: not-paired)
    events = _stream()
    out = run(standard_world(), events)
    rst = [d for d in decisions(out) if d.message_id == "rst"]
    assert [(d.action.value, d.reason.value, d.decided_at) for d in rst] == [
        ("hold", "pending-outage", t(5)),
        ("release-forward", "not-paired", t(20)),
    ]
    assert final(out)["ad1-01"] == ("forward", "hold-timeout")
    for cut, got in enumerate(
        decisions_restored_at_every_cut(events, standard_world, lambda: standard_world().inventory)
    ):
        assert got == decisions(out), f"restored after event {cut}"


def test_an_8f66_naming_the_cancellation_commands_own_counter_opens_a_future_dated_window() -> None:
    # a cancellation (counter 1002) sent at 0; an 8F66 naming that counter, executed at 50. It confirmed the
    # cancellation's own record with an immediate activation's window, opened at the cancel request (0, up to
    # request_lead_max before): an outage that began at 20, 30 min before the execution, was suppressed. An
    # 8F66 reports a future-dated command run at its execution time: its window opens window_before (15 min)
    # before it, as for an 8F66 of a command never observed
    events = [
        request(0, counter=1002, cancel=True, mid="cancel"),
        fd_outcome(50, arrival=51, counter=1002, mid="fd"),
        outage(20, arrival=52, mid="ad1-early"),
        outage(40, arrival=53, mid="ad1-in"),
    ]
    out = run(standard_world(), events)
    assert final(out) == {
        "ad1-early": ("forward", "outside-window"),
        "ad1-in": ("suppress", "fd-confirmed"),
    }
    [d] = [d for d in decisions(out) if d.message_id == "ad1-in"]
    assert (d.window_opens, d.window_closes) == (t(35), t(80))


def test_a_restoration_due_with_the_two_outages_it_waits_for_is_decided_once_in_either_order() -> None:
    # the restoration and the two AD1s it waits for are all due at 12: released first (its id sorts first) it
    # times the AD1s out, whose releases decide it from within its own release; released last, it is decided by
    # the second AD1's release and its own deadline finds nothing held. Either way: one final decision each, the
    # same after a restart at any point
    for rst in ("a-rst", "z-rst"):
        events = [
            request(0, mid="req"),
            outage(1, arrival=2, mid="ad1-x"),
            outage(3, arrival=2, mid="ad1-y"),
            restored(3, arrival=2, mid=rst),
            tick(12),
            tick(40),
        ]
        out = run(standard_world(), events)
        finals = [(d.message_id, d.action.value) for d in decisions(out) if d.action.value != "hold"]
        assert sorted(finals) == sorted(
            [("ad1-x", "release-forward"), ("ad1-y", "release-forward"), (rst, "release-forward")]
        ), finals
        assert final(out)[rst] == ("forward", "not-paired")
        for cut, got in enumerate(
            decisions_restored_at_every_cut(events, standard_world, lambda: standard_world().inventory)
        ):
            assert got == decisions(out), f"{rst}: restored after event {cut}"


def test_a_result_0_response_to_an_accepted_future_dated_command_confirms_it_with_a_future_dated_window() -> (
    None
):
    # a future-dated command (execution at 120) "accepted" at 1, then a result-0 response at 40 (the device says
    # it activated then): confirmed at the response's ResponseDateTime, reason fd-confirmed and the window of a
    # future-dated activation, window_before before it (25), not opened at the request (0) as an immediate one's
    # is (ENGINE.md §4, §10)
    events = [
        request(0, counter=1001, execute=120, mid="req"),
        response(1, counter=1001, accepted=True, mid="accepted"),
        response(40, counter=1001, result=0, mid="done"),
        outage(20, arrival=45, mid="ad1-before"),
        outage(30, arrival=46, mid="ad1-in"),
    ]
    out = run(standard_world(), events)
    assert final(out) == {
        "ad1-before": ("forward", "outside-window"),
        "ad1-in": ("suppress", "fd-confirmed"),
    }
    [d] = [d for d in decisions(out) if d.message_id == "ad1-in"]
    assert (d.window_opens, d.window_closes) == (t(25), t(70))
