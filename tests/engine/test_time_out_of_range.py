"""A date-time too near the calendar's ends is not computed with (found by the eleventh session's review of the
ingress; each test failed before the fix).

The engine adds and subtracts its windows, holds and retention to the times it keeps. An 11.3 request whose
ExecutionDateTime was ``0001-01-01`` (or an 8F66 executed at ``9999-12-31``, or a response dated ``0001-01-01``)
was kept — as unverified evidence when its signature failed or was missing — and from then on every AD1 of its
ESME raised ``OverflowError`` in the engine: answered 503 for ever (the DSP re-delivers), the premises' outage
alerts never reaching the DNO, and the same after a restart. One unsigned POST to the observation lane was enough.

Now such an event is decided without its times: an observation is not used (``Observed(used=False,
note="time-out-of-range")``, nothing kept), an inline message is forwarded with reason ``time-out-of-range``,
and a record an earlier version kept is not restored.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from engine_support import ESME, decisions, fd_outcome, outage, request, response, run, standard_world, t

from gateway.engine import Action, Engine, EngineConfig, Reason
from gateway.engine.effects import Observed, StateChange, Table
from gateway.engine.records import to_record
from gateway.engine.state import UnverifiedEvidence

MIN = datetime(1, 1, 1, tzinfo=UTC)
MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def _observed(effects: list[object]) -> Observed:
    [o] = [e for e in effects if isinstance(e, Observed)]
    return o


@pytest.mark.parametrize(
    "evidence",
    [
        pytest.param(
            replace(request(0, verified=False), execution_time=MIN), id="unsigned-request-exec-0001"
        ),
        pytest.param(
            replace(request(0, verified=False), execution_time=MAX), id="unsigned-request-exec-9999"
        ),
        pytest.param(replace(request(0), execution_time=MIN), id="signed-request-exec-0001"),
        pytest.param(replace(response(0.5, verified=False), response_time=MIN), id="unsigned-response-0001"),
        pytest.param(replace(fd_outcome(60), execution_time=MAX), id="signed-8f66-exec-9999"),
    ],
)
def test_evidence_with_a_time_at_the_calendars_end_is_not_used_and_the_esmes_ad1s_are_decided(
    evidence: object,
) -> None:
    eng = standard_world()
    out = eng.handle(evidence)  # type: ignore[arg-type]
    o = _observed(out)
    assert (o.used, o.note) == (False, "time-out-of-range")
    assert not [
        c for c in out if isinstance(c, StateChange) and c.table in (Table.UNVERIFIED, Table.ACTIVATION)
    ]
    for n in range(3):  # every later AD1 of the ESME is decided (it raised OverflowError before)
        [d] = decisions(eng.handle(outage(10 + n, mid=f"ad1-{n}")))
        assert (d.action, d.reason) == (Action.FORWARD, Reason.NO_ACTIVATION)


def test_an_ad1_whose_start_is_at_the_calendars_end_is_forwarded_with_its_reason() -> None:
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    [d] = decisions(eng.handle(replace(outage(2), start_time=MIN)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.TIME_OUT_OF_RANGE)


def test_times_just_inside_the_computable_range_are_used() -> None:
    # the bound is the engine's own: a day more than its widest window, hold limit and retention
    eng = standard_world()
    run(eng, [request(0), response(0.5)])
    far = datetime(9990, 1, 1, tzinfo=UTC)
    o = _observed(eng.handle(replace(request(1, counter=1002), execution_time=far)))
    assert o.note != "time-out-of-range"


def test_a_record_an_earlier_version_kept_with_such_a_time_is_not_restored() -> None:
    eng = standard_world()
    kept = UnverifiedEvidence("req-old", ESME, "request", MIN, "xml signature missing", t(0))
    rows = [(Table.UNVERIFIED.value, kept.message_id, to_record(kept))]
    again = Engine.restore(EngineConfig(), eng.scope, eng.inventory, rows)
    [d] = decisions(again.handle(outage(10)))  # raised OverflowError before
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NO_ACTIVATION)


def test_a_retention_of_millennia_makes_no_time_computable_rather_than_failing() -> None:
    eng = standard_world(EngineConfig(retention=timedelta(days=3_700_000)))
    [d] = decisions(eng.handle(outage(10)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.TIME_OUT_OF_RANGE)
