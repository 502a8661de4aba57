"""A restoration (``SupplyRestored``) whose interruption time the device's own clock status marks
unreliable (``clock_unreliable`` set by the pipeline from DLMS clock-status bits 0, 1 or 3) is never
evidence for pairing: forwarded ``not-paired`` with the flag and an evidence item that say why, never held
for an AD1, whatever the restoration policy. Its verdict on the message's signatures is unchanged, so it
is not quarantined as unverified either."""

from __future__ import annotations

import dataclasses

from engine_support import ESME, decisions, outage, request, response, restored, standard_world
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine import DEVICE_CLOCK_UNRELIABLE, Action, Engine, EngineConfig, Reason, SupplyRestored
from gateway.engine.config import RestorationPolicy
from gateway.engine.records import from_record, to_record

RESTORATION_POLICIES: list[RestorationPolicy] = ["suppress-paired", "forward"]
WHY = "interruption date-time clock status 0x02 (doubtful-value)"


def _doubted(interrupted: float, *, arrival: float | None = None, mid: str | None = None) -> SupplyRestored:
    return dataclasses.replace(restored(interrupted, arrival=arrival, mid=mid), clock_unreliable=WHY)


def _suppressed_world(config: EngineConfig | None = None) -> Engine:
    eng = standard_world(config)
    eng.handle(response(0))
    [d] = decisions(eng.handle(outage(1)))
    assert (d.action, d.reason) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW)
    return eng


def test_a_doubted_interruption_time_is_not_paired_with_the_suppressed_ad1_and_says_why() -> None:
    eng = _suppressed_world()
    [d] = decisions(eng.handle(_doubted(1, mid="doubt")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    assert d.flags == (DEVICE_CLOCK_UNRELIABLE,)
    [e] = d.evidence
    assert (e.role, e.message_id, e.device, e.detail) == (DEVICE_CLOCK_UNRELIABLE, "doubt", ESME, WHY)
    # the same alert with a clean clock status pairs
    [clean] = decisions(eng.handle(restored(1, mid="clean")))
    assert (clean.action, clean.reason, clean.flags) == (Action.SUPPRESS, Reason.RESTORATION_PAIRED, ())


@settings(max_examples=50, deadline=None)
@given(
    policy=st.sampled_from(RESTORATION_POLICIES),
    quarantine=st.booleans(),
    interrupted=st.floats(min_value=-20, max_value=60, allow_nan=False),
)
def test_no_configuration_and_no_interruption_time_makes_a_doubted_restoration_anything_but_forwarded(
    policy: RestorationPolicy, quarantine: bool, interrupted: float
) -> None:
    config = EngineConfig(restoration_policy=policy, quarantine_unverified_inline=quarantine)
    eng = _suppressed_world(config)
    [d] = decisions(eng.handle(_doubted(interrupted, arrival=70)))
    assert (d.action, d.reason, d.flags) == (Action.FORWARD, Reason.NOT_PAIRED, (DEVICE_CLOCK_UNRELIABLE,))


def test_a_doubted_restoration_does_not_wait_for_a_held_ad1() -> None:
    eng = standard_world()
    eng.handle(request(0))
    [held] = decisions(eng.handle(outage(1)))
    assert held.action is Action.HOLD
    [d] = decisions(eng.handle(_doubted(1, arrival=6)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    assert [h.event.message_id for h in eng.held()] == [held.message_id]


def test_the_reason_survives_the_record_round_trip_and_an_older_record_reads_as_no_doubt() -> None:
    ev = _doubted(1)
    rec = to_record(ev)
    assert from_record(SupplyRestored, rec) == ev
    older = {k: v for k, v in rec.items() if k != "clock_unreliable"}  # written before the field existed
    assert from_record(SupplyRestored, older).clock_unreliable == ""
