"""Two loose ends of the engine's rules left by the reviews of 2026-11-24 (each test failed before its fix).

1. A held restoration's ``hold`` decision states the latest it can be held. A restoration that waits for a held
   AD1 of its outage is decided with it, so it can stay held beyond its own ``held + hold_limit`` (up to twice
   the hold limit, ENGINE.md §6), but its hold decision — the audit record of the hold, what a re-delivery is
   answered with, what a restored engine holds — stated ``held + hold_limit``: the audit showed a hold released
   after the deadline it stated, the move of the deadline kept only in the engine's own state row (overwritten,
   then deleted at the release). It now states ``held + 2 * hold_limit`` and the restoration waits only for the
   held AD1s due before that, so what it stated stays true whatever happens during the hold.
2. A request observed after its command's outcome (a response or an 8F66/8F67 that confirmed or failed the
   record) changed the record afterwards: a future-dated one made an immediate activation "future" (its reason
   ``fd-confirmed``), and one whose observation time was not after the anchor narrowed or widened its window.
   The AD1s decided before it and after it were judged on different windows. Such a request is now evidence
   only (ENGINE.md §4).
"""

from __future__ import annotations

import json
from datetime import timedelta

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

from gateway.engine import Action, Decision, Duplicate, Effect, Engine, EngineConfig, StateChange
from gateway.engine.records import to_record


def _restored_each_cut(events: list[object], whole: list[Decision]) -> None:
    for cut, got in enumerate(
        decisions_restored_at_every_cut(events, standard_world, lambda: standard_world().inventory)
    ):
        assert got == whole, f"restored after event {cut}"


# ---------------------------------------------------------------- 1. a held restoration's stated deadline


def _waits_on() -> list[object]:
    # the reboot's AD1 (start 1) held at 2 for the pending activation (deadline 12); the meter's restoration
    # (interrupted at 3) held at 5 waits for it; a second AD1 of the hub, nearer to the interruption, held at 10
    # (deadline 20): when the first times out at 12 the restoration waits on for the second, which times out at 20
    return [
        request(0, mid="req"),
        outage(1, arrival=2, mid="ad1-x"),
        restored(3, arrival=5, mid="rst"),
        outage(3, arrival=10, mid="ad1-y"),
        tick(12),
        tick(15),
        restored(3, arrival=16, mid="rst"),  # the DSP re-delivers the held restoration
        tick(19),
        tick(20),
        tick(40),
    ]


def test_a_held_restorations_hold_decision_states_the_latest_it_can_be_held() -> None:
    # it stated 15 (its own held + hold_limit) and was released at 20: the audit's hold record, and the answer to
    # the re-delivery at 16, named a deadline already passed while it was still held
    events = _waits_on()
    out = run(standard_world(), events)
    rst = [d for d in decisions(out) if d.message_id == "rst"]
    assert [(d.action.value, d.decided_at, d.hold_deadline) for d in rst] == [
        ("hold", t(5), t(25)),  # held + 2 * hold_limit
        ("release-forward", t(20), None),
    ]
    assert rst[1].decided_at < rst[0].hold_deadline  # type: ignore[operator]
    [dup] = [e for e in out if isinstance(e, Duplicate) and e.message_id == "rst"]
    assert dup.original is not None and dup.original.hold_deadline == t(25)
    # an AD1's hold states its own limit, as before
    ad1s = {d.message_id: d.hold_deadline for d in decisions(out) if d.action is Action.HOLD}
    assert (ad1s["ad1-x"], ad1s["ad1-y"]) == (t(12), t(20))
    _restored_each_cut(events, decisions(out))


def test_a_restoration_is_never_held_past_the_deadline_its_hold_stated_even_when_the_hold_limit_grows() -> (
    None
):
    # held at 5 under hold_limit 10 (stated 25); the gateway restarts at 6 with hold_limit 30: an AD1 of the hub,
    # nearer to the interruption, held at 7 is due at 37, past what the restoration's hold stated. The restoration
    # does not wait for it (it was held at 15, its own limit, until then: it waited on for an AD1 held at 7 and was
    # released at 37, past the 15 it stated)
    first = standard_world()
    out = run(
        first, [request(0, mid="req"), outage(1, arrival=2, mid="ad1-x"), restored(3, arrival=5, mid="rst")]
    )
    table: dict[tuple[str, str], object] = {}
    for c in out:
        if isinstance(c, StateChange):
            table[(c.table.value, c.key)] = c.value
    rows = [
        (tbl, key, json.loads(json.dumps(to_record(v)))) for (tbl, key), v in table.items() if v is not None
    ]
    [hold] = [d for d in decisions(out) if d.message_id == "rst"]
    longer = standard_world(EngineConfig(hold_limit=timedelta(minutes=30)))
    second = Engine.restore(longer.config, longer.scope, longer.inventory, rows)
    later: list[Effect] = []
    for ev in [outage(3, arrival=7, mid="ad1-y"), tick(12), tick(15), tick(25), tick(40)]:
        later += second.handle(ev)
    [released] = [d for d in decisions(later) if d.message_id == "rst"]
    assert hold.hold_deadline is not None and released.decided_at <= hold.hold_deadline
    assert final(later)["rst"] == ("forward", "not-paired")


# ---------------------------------------------------------------- 2. a request observed after the outcome


def test_a_future_dated_request_observed_after_the_response_confirmed_it_changes_neither_kind_nor_reason() -> (
    None
):
    # a result-0 response (no request seen) confirmed an immediate activation at 10; its future-dated request is
    # observed only at 12. The AD1s of the same outage decided before and after it were suppressed for different
    # reasons (activation-window, then fd-confirmed), and the record became a future-dated one
    events = [
        response(10, mid="rsp"),
        outage(5, arrival=11, mid="ad1-a"),
        request(12, execute=10, mid="req"),
        outage(5, arrival=13, mid="ad1-b"),
    ]
    out = run(standard_world(), events)
    got = {
        d.message_id: (d.action.value, d.reason.value, d.window_opens, d.window_closes)
        for d in decisions(out)
    }
    assert got == {
        "ad1-a": ("suppress", "activation-window", t(-5), t(40)),
        "ad1-b": ("suppress", "activation-window", t(-5), t(40)),
    }
    _restored_each_cut(events, decisions(out))


def test_a_request_observed_after_an_8f66_does_not_narrow_its_window() -> None:
    # an 8F66 stating an execution at 20 (the meter's clock ahead) arrives at 10; the future-dated request is
    # observed at 12, after it, but before the stated execution: the window opened at 12 instead of 5, and the AD1
    # of the same outage re-delivered after the request was forwarded while its first delivery was suppressed
    events = [
        fd_outcome(20, arrival=10, counter=1000, mid="fd"),
        outage(8, arrival=11, mid="ad1-a"),
        request(12, execute=20, mid="req"),
        outage(8, arrival=13, mid="ad1-b"),
    ]
    out = run(standard_world(), events)
    got = {d.message_id: (d.action.value, d.reason.value, d.window_opens) for d in decisions(out)}
    assert got == {
        "ad1-a": ("suppress", "fd-confirmed", t(5)),
        "ad1-b": ("suppress", "fd-confirmed", t(5)),
    }
    _restored_each_cut(events, decisions(out))


def test_a_request_observed_after_its_response_does_not_widen_the_window() -> None:
    # a response stating 30 arrives at 5 (the DCC's clock ahead of the gateway's): window [15, 60]; the immediate
    # request is observed at 7, after the response: the window opened at 7 and an outage at 10, forwarded before
    # the request, was suppressed after it (a wider window after the fact: the unsafe direction)
    events = [
        response(30, arrival=5, mid="rsp"),
        outage(10, arrival=6, mid="ad1-a"),
        request(7, mid="req"),
        outage(10, arrival=8, mid="ad1-b"),
    ]
    out = run(standard_world(), events)
    got = {d.message_id: (d.action.value, d.reason.value, d.window_opens) for d in decisions(out)}
    assert got == {
        "ad1-a": ("forward", "outside-window", t(15)),
        "ad1-b": ("forward", "outside-window", t(15)),
    }
    _restored_each_cut(events, decisions(out))


def test_a_request_observed_after_the_outcome_is_kept_as_evidence_of_the_record() -> None:
    eng = standard_world()
    run(eng, [response(10, mid="rsp"), request(12, execute=10, mid="req")])
    [act] = eng.activations()
    assert (act.command, act.requested_at, act.execution_time) == ("immediate", None, None)
    assert [e.message_id for e in act.evidence] == ["rsp", "req"]
