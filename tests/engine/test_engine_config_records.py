"""Engine configuration validation, the plain-record codec, and the activation table's order rules."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from engine_support import (
    T0,
    decisions,
    fd_outcome,
    outage,
    request,
    response,
    restored,
    run,
    standard_world,
    t,
)

from gateway.engine import Engine, EngineConfig, EngineConfigError, EngineStateError, records_of
from gateway.engine.activation import ActEvent, ActState, apply, classify
from gateway.engine.records import decode_tagged, encode_tagged, from_record, to_record
from gateway.engine.state import Seen


def test_defaults_follow_the_domain_notes() -> None:
    cfg = EngineConfig()
    assert (cfg.window_before, cfg.window_after, cfg.hold_limit) == (
        timedelta(minutes=15),
        timedelta(minutes=30),
        timedelta(minutes=10),
    )
    assert cfg.retention == timedelta(days=2, minutes=45)
    assert cfg.scope == "guid-list" and cfg.activation_results == frozenset({0})
    assert cfg.fd_failure_policy == "forward" and cfg.restoration_policy == "suppress-paired"
    assert cfg.quarantine_unverified_inline is False and cfg.naive_timestamp_policy == "utc"


def test_config_reads_plain_data_with_duration_text() -> None:
    cfg = EngineConfig.from_mapping(
        {"window-after": "20m", "retention": "3d", "hold_limit": 120, "scope": "manufacturer",
         "manufacturers": ["Landis+Gyr "], "activation_results": [0, 3], "fd_failure_policy": "suppress"}
    )
    assert cfg.window_after == timedelta(minutes=20) and cfg.retention == timedelta(days=3)
    assert cfg.hold_limit == timedelta(minutes=2) and cfg.manufacturers == frozenset({"landis+gyr"})
    assert EngineConfig.from_mapping(cfg.to_mapping()) == cfg


@pytest.mark.parametrize(
    "settings",
    [
        {"window_before": "-5m"},
        {"scope": "everything"},
        {"scope": "manufacturer"},
        {"activation_results": [0, 4]},
        {"retention": "10m"},
        {"fd_failure_policy": "maybe"},
        {"colour": "blue"},
        {"hold_limit": "ten minutes"},
    ],
)
def test_bad_settings_are_named_errors_that_name_the_setting(settings: dict[str, object]) -> None:
    """(A duration that does not parse said only ``not a duration: 'ten minutes'``: `replay --config` showed it
    without the setting it came from.)"""
    (name, value), = settings.items()
    with pytest.raises(EngineConfigError) as raised:
        EngineConfig.from_mapping(settings)
    assert raised.value.message.startswith((f"{name}:", f"{name} ", f"unknown engine setting {name!r}"))
    if isinstance(value, str) and name not in ("colour", "retention"):  # (the value refused, as written)
        assert repr(value) in raised.value.message


def test_every_record_survives_a_json_round_trip() -> None:
    eng = standard_world()
    events = [request(-600, counter=1001, execute=0), request(0), response(0.5, gbcs_at=9),
              outage(1), fd_outcome(0, arrival=6), outage(2), restored(2)]
    effects = run(eng, events)
    for ev in events:
        assert decode_tagged(json.loads(json.dumps(encode_tagged(ev)))) == ev
    for d in decisions(effects):
        assert from_record(type(d), json.loads(json.dumps(to_record(d)))) == d
    rows = list(records_of(eng.export_state()))
    assert {tbl for tbl, _, _ in rows} >= {"activation", "seen", "suppressed"}
    clone = Engine.restore(EngineConfig(), eng.scope, eng.inventory, json.loads(json.dumps(rows)))
    assert sorted(a.key for a in clone.activations()) == sorted(a.key for a in eng.activations())


def test_unreadable_state_is_a_named_error() -> None:
    eng = standard_world()
    with pytest.raises(EngineStateError):
        Engine.restore(EngineConfig(), eng.scope, eng.inventory, [("nonsense", "k", {})])
    with pytest.raises(EngineStateError):
        Engine.restore(EngineConfig(), eng.scope, eng.inventory, [("activation", "k", {"esme": 1})])


def test_a_record_written_before_a_defaulted_field_was_added_decodes_with_its_default() -> None:
    # stored state outlives the code that wrote it: a field added later with a default must not make
    # the rows written before it unreadable; a field without a default still must be there
    old = {"message_id": "m", "event_kind": "power-outage", "at": "2026-01-15T09:00:00+00:00"}
    assert from_record(Seen, old) == Seen("m", "power-outage", T0, None, "")
    with pytest.raises(EngineStateError, match="lacks 'at'"):
        from_record(Seen, {"message_id": "m", "event_kind": "power-outage"})


@pytest.mark.parametrize("success", [True, False])
def test_outcome_and_cancellation_end_in_the_same_state_in_either_order(success: bool) -> None:
    cfg = EngineConfig()
    req = request(-600, counter=1001, execute=0)
    cancel = request(-300, counter=1002, cancel=True)
    outcome = fd_outcome(0, success=success)
    start = apply(None, req, classify(req, cfg), cfg, t(-600))
    a = apply(apply(start, outcome, classify(outcome, cfg), cfg, t(0)), cancel, ActEvent.RETRACT, cfg, t(1))
    b = apply(apply(start, cancel, ActEvent.RETRACT, cfg, t(-300)), outcome, classify(outcome, cfg), cfg, t(1))
    assert a is not None and b is not None
    assert a.state is b.state is (ActState.CONFIRMED if success else ActState.FAILED)
    assert a.activation_time == b.activation_time == t(0)


def test_expire_drops_the_record() -> None:
    cfg = EngineConfig()
    req = request(0)
    act = apply(None, req, classify(req, cfg), cfg, t(0))
    assert act is not None and apply(act, None, ActEvent.EXPIRE, cfg, t(5000)) is None


@dataclasses.dataclass(frozen=True)
class _Stamp:
    at: datetime


def test_one_instant_written_in_two_offsets_keeps_each_offset_in_its_record() -> None:
    utc = datetime(2026, 6, 1, 11, 0, tzinfo=UTC)
    bst = datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    assert utc == bst and hash(utc) == hash(bst)  # one instant: equal, and alike to a cache
    assert to_record(_Stamp(utc)) == {"at": "2026-06-01T11:00:00+00:00"}
    assert to_record(_Stamp(bst)) == {"at": "2026-06-01T12:00:00+01:00"}
    assert from_record(_Stamp, to_record(_Stamp(bst))).at.utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("action", "nope", "unknown Action"),  # an enum's text it does not know
        ("action", 3, "unknown Action"),
        ("ch", True, "expected int"),  # a bool is not an int here
        ("ch", "12", "expected int"),
        ("mpan", 5, "expected str"),
        ("flags", ["ok", 1], "expected str"),  # one item of a list of texts
        ("flags", "ok", "expected a list"),
        ("esmes", [1.5], "expected int"),
        ("decided_at", 0, "date-time must be text"),
        ("event_time", "yesterday", "not an ISO 8601 date-time"),
    ],
)
def test_a_decoded_value_of_the_wrong_type_is_the_plans_named_error(field: str, value: object, error: str) -> None:
    """Decoding takes a value that is exactly what a record holds inline (the restart's hot path) and
    anything else through the plan's own decoder: the same record decodes to the same object either way, and
    a wrong value is the named error it always was."""
    [decision] = decisions(run(standard_world(), [request(0), response(0.5), outage(1)]))[-1:]
    rec = json.loads(json.dumps(to_record(decision)))
    assert from_record(type(decision), rec) == decision
    assert from_record(Seen, {"message_id": "m", "event_kind": "power-outage", "at": t(0).isoformat(),
                              "decision": rec}).decision == decision  # fmt: skip
    with pytest.raises(EngineStateError, match=error):
        from_record(type(decision), {**rec, field: value})
