"""A restoration alert (8F35-8F3C, ``SupplyRestored``) and the held AD1s of its ESME.

A restoration pairs with a suppressed AD1 of its ESME (or of the ESME's Comms Hub) whose activation
window contains the interruption time. While an AD1 that it could pair with is held, the restoration
waits for it (``pending-outage``) so that it ends as if it had come after the AD1 was decided. It must
not wait for a held AD1 it can never pair with: another outage, or another Comms Hub.
"""

from __future__ import annotations

from datetime import timedelta

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
    final,
    outage,
    request,
    response,
    restored,
    run,
    standard_world,
    t,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.engine import Action, Engine, EngineConfig, Event, Reason, Tick
from gateway.engine.engine import records_of


def _held_ad1(eng: Engine, start: float = 1, arrival: float | None = None) -> str:
    eng.handle(request(0))
    ad1 = outage(start, arrival=arrival)
    [held] = decisions(eng.handle(ad1))
    assert held.action is Action.HOLD
    return ad1.message_id


def test_a_restoration_of_an_earlier_outage_is_not_held_for_an_unrelated_held_ad1() -> None:
    # a genuine outage five hours ago was forwarded; its restoration is re-delivered late, while today's AD1
    # of the same ESME waits for the outcome of a firmware activation: the restoration has nothing to wait for
    eng = standard_world()
    mid = _held_ad1(eng)
    [d] = decisions(eng.handle(restored(-300, arrival=6)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    assert [h.event.message_id for h in eng.held()] == [mid]


def test_a_restoration_inside_the_reach_of_the_held_ad1_still_waits_for_it_and_pairs() -> None:
    _waits_for_the_held_ad1_then_pairs(standard_world(), ESME)


def test_a_restoration_of_an_esme_on_another_comms_hub_is_not_held_for_a_held_ad1() -> None:
    # both ESMEs in scope, the outage is on ESME's hub only: OTHER_ESME's restoration is decided at once
    inventory = MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr"), (OTHER_ESME, OTHER_CH, OTHER_MPAN, "Landis+Gyr")])
    eng = Engine(EngineConfig(), MemoryScope([ESME, OTHER_ESME]), inventory)
    _held_ad1(eng)
    [d] = decisions(eng.handle(restored(1, arrival=6, esme=OTHER_ESME)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)


LEAD = st.sampled_from([15, 60, 120])  # request_lead_max, minutes


@settings(max_examples=300, deadline=None)
@given(
    lead=LEAD,
    start_s=st.integers(0, 45 * 60),
    response_s=st.integers(-20 * 60, 180 * 60),
    success=st.booleans(),
    offset_s=st.integers(-300 * 60, 300 * 60),
)
# the widest window: opened by the request 60 min before the response, the AD1 at its start, the
# interruption at its end (waits, then pairs) or a second beyond it (decided on arrival)
@example(lead=60, start_s=0, response_s=60 * 60, success=True, offset_s=90 * 60)
@example(lead=60, start_s=0, response_s=60 * 60, success=True, offset_s=90 * 60 + 1)
def test_a_restoration_waits_only_for_a_held_ad1_it_could_pair_with_and_ends_as_if_it_came_after(
    lead: int, start_s: int, response_s: int, success: bool, offset_s: int
) -> None:
    config = EngineConfig(request_lead_max=timedelta(minutes=lead))
    start, interrupted = start_s / 60, (start_s + offset_s) / 60
    ad1 = outage(start, arrival=50, mid="ad1")
    rsp = response(response_s / 60, arrival=52, result=0 if success else 2, mid="rsp")
    rst = restored(interrupted, arrival=51, mid="rst")
    during: list[Event] = [request(0, mid="req"), ad1, rst, rsp, Tick(t(80))]
    after: list[Event] = [request(0, mid="req"), ad1, rsp, restored(interrupted, arrival=53, mid="rst"), Tick(t(80))]
    effects = run(standard_world(config), during)
    first = next(d for d in decisions(effects) if d.message_id == "rst")
    if first.action is Action.HOLD:
        # it could pair only with a window that contains the AD1's start too: no window is wider than this
        assert abs(offset_s) <= (config.request_lead_max + config.window_after).total_seconds()
    assert final(effects)["rst"] == final(run(standard_world(config), after))["rst"]


# ---- an ESME that shares its Comms Hub with the in-scope one ------------------------------------------
# The AD1 is the Comms Hub's power outage: every meter on that supply restores with it. A restoration from
# another ESME behind the hub (in scope or not) pairs with the hub's suppressed AD1 (DOMAIN.md: "same
# ESME/CH"), so while that AD1 is held it waits for it as the in-scope ESME's own restoration does.

SIBLING = 0x00DB1234567892A0  # a second ESME behind CH, not in scope


def _shared_hub_world(config: EngineConfig | None = None) -> Engine:
    inventory = MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr"), (SIBLING, CH, "5555555555555", "Other")])
    return Engine(config or EngineConfig(), MemoryScope([ESME]), inventory)


def test_a_restoration_from_an_out_of_scope_esme_on_the_hub_waits_for_the_hubs_held_ad1_and_pairs() -> None:
    _waits_for_the_held_ad1_then_pairs(_shared_hub_world(), SIBLING)


def test_a_restoration_from_an_out_of_scope_esme_on_the_hub_is_forwarded_when_the_held_ad1_is() -> None:
    eng = _shared_hub_world()
    mid = _held_ad1(eng)
    rst = restored(1, arrival=6, esme=SIBLING)
    assert decisions(eng.handle(rst))[0].action is Action.HOLD
    out = decisions(eng.handle(response(0.5, arrival=7, result=2)))  # the activation failed: a real outage
    assert [(x.message_id, x.action, x.reason) for x in out] == [
        (mid, Action.RELEASE_FORWARD, Reason.ACTIVATION_FAILED),
        (rst.message_id, Action.RELEASE_FORWARD, Reason.NOT_PAIRED),
    ]


def test_a_restoration_waiting_for_the_hubs_held_ad1_is_released_with_it_at_its_time_out() -> None:
    eng = _shared_hub_world()
    mid = _held_ad1(eng)  # held at 4.5, deadline 14.5
    rst = restored(1, arrival=6, esme=SIBLING)
    eng.handle(rst)
    out = decisions(eng.handle(Tick(t(14.5))))
    assert [(x.message_id, x.action, x.reason) for x in out] == [
        (mid, Action.RELEASE_FORWARD, Reason.HOLD_TIMEOUT),
        (rst.message_id, Action.RELEASE_FORWARD, Reason.NOT_PAIRED),
    ]


def test_a_restoration_waiting_for_the_hubs_held_ad1_ends_the_same_after_a_restart() -> None:
    eng = _shared_hub_world()
    mid = _held_ad1(eng)
    rst = restored(1, arrival=6, esme=SIBLING)
    eng.handle(rst)
    again = Engine.restore(
        eng.config, eng.scope, _shared_hub_world().inventory, list(records_of(eng.export_state()))
    )
    out = decisions(again.handle(response(0.5, arrival=7)))
    assert [(x.message_id, x.action, x.reason) for x in out] == [
        (mid, Action.RELEASE_SUPPRESS, Reason.ACTIVATION_WINDOW),
        (rst.message_id, Action.RELEASE_SUPPRESS, Reason.RESTORATION_PAIRED),
    ]


@settings(max_examples=200, deadline=None)
@given(
    in_scope_sibling=st.booleans(),
    success=st.booleans(),
    offset_s=st.integers(-120 * 60, 120 * 60),
    response_at=st.sampled_from([7.0, 20.0]),  # before the AD1's hold limit, or after it (time-out)
)
def test_a_restoration_from_any_esme_on_the_hub_ends_the_same_whether_it_came_during_the_hold_or_after(
    in_scope_sibling: bool, success: bool, offset_s: int, response_at: float
) -> None:
    def world() -> Engine:
        inventory = MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr"), (SIBLING, CH, "5555555555555", "Other")])
        return Engine(EngineConfig(), MemoryScope([ESME, SIBLING] if in_scope_sibling else [ESME]), inventory)

    interrupted = 1 + offset_s / 60
    rsp = response(0.5, arrival=response_at, result=0 if success else 2, mid="rsp")
    rst_during = restored(interrupted, arrival=6, esme=SIBLING, mid="rst")
    rst_after = restored(interrupted, arrival=41, esme=SIBLING, mid="rst")
    req, ad1 = request(0, mid="req"), outage(1, arrival=4.5, mid="ad1")
    during: list[Event] = [req, ad1, rst_during, rsp, Tick(t(40))]
    after: list[Event] = [req, ad1, rsp, Tick(t(40)), rst_after]
    got, want = final(run(world(), during)), final(run(world(), after))
    assert got["ad1"] == want["ad1"]
    assert got["rst"] == want["rst"]


def _waits_for_the_held_ad1_then_pairs(eng: Engine, esme: int) -> None:
    """``esme``'s restoration waits for the held AD1 and, once the activation is confirmed, is released
    with it, paired (suppressed)."""
    mid = _held_ad1(eng)
    rst = restored(1, arrival=6, esme=esme)
    [d] = decisions(eng.handle(rst))
    assert (d.action, d.reason) == (Action.HOLD, Reason.PENDING_OUTAGE)
    assert [e.message_id for e in d.evidence] == [mid]
    out = decisions(eng.handle(response(0.5, arrival=7)))
    assert [(x.message_id, x.action, x.reason) for x in out] == [
        (mid, Action.RELEASE_SUPPRESS, Reason.ACTIVATION_WINDOW),
        (rst.message_id, Action.RELEASE_SUPPRESS, Reason.RESTORATION_PAIRED),
    ]
