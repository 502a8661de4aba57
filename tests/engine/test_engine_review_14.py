"""Defects found by the model-based test (tests/engine/test_engine_model.py), each pinned here."""

from __future__ import annotations

from engine_support import (
    decisions,
    decisions_restored_at_every_cut,
    final,
    outage,
    request,
    response,
    restored,
    run,
    standard_world,
    tick,
)


def test_unverified_evidence_is_named_in_the_same_order_after_a_restart() -> None:
    # two unsigned copies of a request taken in at the same instant, the second with the lower identity (the
    # pipeline's "#unverified:<digest>" ids have no order): the AD1's evidence-unverified decision named them in
    # the order taken in, a restored engine (which loads them by time, then id) in the other: the audit trail of
    # the same AD1 depended on whether the gateway had restarted
    events = [
        request(0, verified=False, mid="req-1#unverified:d1"),
        request(0, verified=False, mid="req-1#unverified:0c"),
        outage(5, arrival=6, mid="ad1"),
    ]
    whole = decisions(run(standard_world(), events))
    assert [d.reason.value for d in whole] == ["evidence-unverified"]
    for cut, got in enumerate(
        decisions_restored_at_every_cut(events, standard_world, lambda: standard_world().inventory)
    ):
        assert got == whole, f"restored after event {cut}: {[i.message_id for d in got for i in d.evidence]}"


def test_a_restoration_waiting_for_a_held_outage_is_decided_with_it_not_timed_out_on_its_own() -> None:
    # the reboot's AD1 (start 1) is held for the pending activation and the meter's restoration (interrupted at 3)
    # waits for it; a second AD1 of the hub, nearer to the interruption, is held later (at 10). The first times
    # out (forwarded, kept as a forwarded outage) and the restoration waits on for the nearer one, which the
    # activation's response (at 16) suppresses: the restoration is that outage's and pairs with it. It used to
    # time out on its own hold limit at 15, forwarded hold-timeout: the DNO got a restoration of an outage it
    # never saw, and the outcome depended on when the restoration arrived (ENGINE.md §6)
    events = [
        request(0, mid="req"),
        outage(1, arrival=2, mid="ad1-x"),
        restored(3, arrival=5, mid="rst"),
        outage(3, arrival=10, mid="ad1-y"),
        tick(12),
        tick(15),
        response(16, mid="rsp"),
        tick(40),
    ]
    out = run(standard_world(), events)
    assert final(out) == {
        "ad1-x": ("forward", "hold-timeout"),
        "ad1-y": ("suppress", "activation-window"),
        "rst": ("suppress", "restoration-paired"),
    }
    assert [(d.message_id, d.action.value) for d in decisions(out) if d.message_id == "rst"] == [
        ("rst", "hold"),
        ("rst", "release-suppress"),
    ]
    for cut, got in enumerate(
        decisions_restored_at_every_cut(events, standard_world, lambda: standard_world().inventory)
    ):
        assert got == decisions(out), f"restored after event {cut}"
