"""The edge of a hold: what happens to an outcome that arrives exactly at a held AD1's deadline.

A hold is a gateway-clock lifetime ``[since, deadline)``, like retention (a record is pruned when the
clock reaches ``at + retention``) and activation expiry: when the clock reaches the deadline the
time-out is taken *before* any message stamped with that same instant is applied. The event-time
windows (AD1 StartDateTime against an activation) are different in kind and include both edges.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from engine_support import decisions, outage, request, response, run, standard_world, t, tick
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine import Action, ActState, Engine, EngineConfig, Event, Observed, Reason, Tick
from gateway.store import DurableEngine, SqliteStore

US = timedelta(microseconds=1)
DEADLINE = t(1 + 3.5) + EngineConfig().hold_limit  # outage(1) arrives 3.5 minutes after it started


def _held_ad1(config: EngineConfig | None = None) -> tuple[Engine, str]:
    eng = standard_world(config)
    eng.handle(request(0))
    ad1 = outage(1)
    [held] = decisions(eng.handle(ad1))
    assert held.action is Action.HOLD
    return eng, ad1.message_id


def test_an_outcome_arriving_exactly_at_the_hold_deadline_is_too_late_for_the_held_ad1() -> None:
    eng, mid = _held_ad1()
    assert eng.held()[0].decision.hold_deadline == DEADLINE
    effects = eng.handle(replace(response(0.5), arrival=DEADLINE))
    [d] = decisions(effects)
    assert (d.message_id, d.action, d.reason, d.decided_at) == (mid, Action.RELEASE_FORWARD, Reason.HOLD_TIMEOUT, DEADLINE)
    # the outcome itself is not lost: it is applied after the time-out and decides what comes next
    assert [o.used for o in effects if isinstance(o, Observed)] == [True]
    assert [a.state for a in eng.activations()] == [ActState.CONFIRMED]
    [later] = decisions(eng.handle(outage(2, arrival=14.5)))
    assert later.action is Action.SUPPRESS


def test_an_outcome_arriving_a_microsecond_before_the_hold_deadline_releases_the_held_ad1() -> None:
    eng, mid = _held_ad1()
    [d] = decisions(eng.handle(replace(response(0.5), arrival=DEADLINE - US)))
    assert (d.message_id, d.action, d.reason) == (mid, Action.RELEASE_SUPPRESS, Reason.ACTIVATION_WINDOW)


def test_a_tick_at_the_deadline_times_the_hold_out_before_an_outcome_stamped_with_the_same_instant() -> None:
    eng, mid = _held_ad1()
    [d] = decisions(eng.handle(tick(14.5)))
    assert (d.message_id, d.action, d.reason) == (mid, Action.RELEASE_FORWARD, Reason.HOLD_TIMEOUT)
    assert decisions(eng.handle(replace(response(0.5), arrival=DEADLINE))) == []


@settings(max_examples=200, deadline=None)
@given(
    offset_us=st.integers(-3_000_000, 3_000_000),
    ticks_us=st.lists(st.integers(-3_000_000, 3_000_000), max_size=4),
    tick_at_deadline=st.booleans(),
)
def test_an_outcome_decides_the_held_ad1_iff_it_arrives_before_the_deadline_whatever_ticks_came_first(
    offset_us: int, ticks_us: list[int], tick_at_deadline: bool
) -> None:
    """Ticks at any instants up to the outcome's own arrival (one at that very instant or at the deadline
    included) never change what the outcome does: a tie between the clock and the deadline is a time-out."""
    arrival = DEADLINE + offset_us * US
    instants = {DEADLINE + n * US for n in ticks_us} | ({DEADLINE} if tick_at_deadline else set())
    ad1 = outage(1)
    events: list[Event] = [request(0), ad1]
    events += [Tick(i) for i in sorted(instants) if i <= arrival]
    events += [replace(response(0.5), arrival=arrival), Tick(DEADLINE + timedelta(minutes=1))]
    got = [(d.action, d.reason) for d in decisions(run(standard_world(), events)) if d.message_id == ad1.message_id]
    if arrival < DEADLINE:
        assert got == [(Action.HOLD, Reason.PENDING_IMMEDIATE), (Action.RELEASE_SUPPRESS, Reason.ACTIVATION_WINDOW)]
    else:
        assert got == [(Action.HOLD, Reason.PENDING_IMMEDIATE), (Action.RELEASE_FORWARD, Reason.HOLD_TIMEOUT)]


def test_a_restarted_durable_engine_times_out_at_the_deadline_like_the_running_one(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    world = standard_world()
    first = DurableEngine(SqliteStore(path), EngineConfig(), world.scope, world.inventory)
    first.submit(request(0))
    ad1 = outage(1)
    assert decisions(first.submit(ad1, b"<AD1/>"))[0].action is Action.HOLD
    first.store.close()
    again = DurableEngine(SqliteStore(path), EngineConfig(), world.scope, standard_world().inventory)
    [d] = decisions(again.submit(replace(response(0.5), arrival=DEADLINE)))
    assert (d.message_id, d.action, d.reason) == (ad1.message_id, Action.RELEASE_FORWARD, Reason.HOLD_TIMEOUT)
    assert again.store.status(ad1.message_id) == "forward"
    again.store.close()


def test_with_a_zero_hold_limit_an_ad1_awaiting_its_outcome_is_decided_on_arrival() -> None:
    # the deadline is reached the moment the hold would begin: it used to stay held until the clock moved on
    # (a second later, at the next tick), and an outcome stamped with that same instant still suppressed it
    eng = standard_world(EngineConfig(hold_limit=timedelta(0)))
    eng.handle(request(0))
    ad1 = outage(1)
    [d] = decisions(eng.handle(ad1))
    assert (d.action, d.reason, d.hold_deadline) == (Action.FORWARD, Reason.HOLD_TIMEOUT, None)
    assert d.activation is not None and {e.role for e in d.evidence} == {"request"}
    assert eng.held() == []
    assert decisions(eng.handle(replace(response(0.5), arrival=ad1.arrival))) == []
    assert eng.decision_for(ad1.message_id) == d
