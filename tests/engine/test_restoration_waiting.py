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
    eng = standard_world()
    mid = _held_ad1(eng)
    rst = restored(1, arrival=6)
    [d] = decisions(eng.handle(rst))
    assert (d.action, d.reason) == (Action.HOLD, Reason.PENDING_OUTAGE)
    assert [e.message_id for e in d.evidence] == [mid]
    out = decisions(eng.handle(response(0.5, arrival=7)))
    assert [(x.message_id, x.action, x.reason) for x in out] == [
        (mid, Action.RELEASE_SUPPRESS, Reason.ACTIVATION_WINDOW),
        (rst.message_id, Action.RELEASE_SUPPRESS, Reason.RESTORATION_PAIRED),
    ]


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
