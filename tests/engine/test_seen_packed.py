"""The engine's idempotency keys in memory (gateway.engine.state.PackedSeen): exact tuples of untracked
values, so that a generation-2 collection walks none of the ~2 M keys a gateway keeps for the retention,
and every key comes back as the record it was built from."""

from __future__ import annotations

import dataclasses
import gc
import typing
from datetime import UTC, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine.effects import Action, Decision, Duplicate, EvidenceItem, Reason
from gateway.engine.state import Seen, pack_seen, unpack_seen
from tests.engine.engine_support import (
    ESME,
    fd_outcome,
    outage,
    request,
    response,
    run,
    standard_world,
    tick,
)

times = st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5))])
)
texts = st.text(max_size=12)
u64 = st.integers(0, 2**64 - 1)

evidence = st.builds(
    EvidenceItem, role=texts, message_id=texts, device=st.none() | u64, time=st.none() | times, detail=texts
)
decisions = st.builds(
    Decision,
    message_id=texts,
    event_kind=texts,
    action=st.sampled_from(Action),
    reason=st.sampled_from(Reason),
    decided_at=times,
    event_time=st.none() | times,
    ch=st.none() | u64,
    mpan=st.none() | texts,
    esmes=st.lists(u64, max_size=3).map(tuple),
    window_opens=st.none() | times,
    window_closes=st.none() | times,
    activation=st.none() | texts,
    evidence=st.lists(evidence, max_size=3).map(tuple),
    flags=st.lists(texts, max_size=2).map(tuple),
    hold_deadline=st.none() | times,
)
seens = st.builds(
    Seen,
    message_id=texts,
    event_kind=texts,
    at=times,
    decision=st.none() | decisions,
    note=texts,
    digest=st.none() | st.integers(0, 2**96 - 1),
)


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_the_packed_layout_names_every_field_of_the_records_it_packs() -> None:
    # pack_seen / unpack_decision list the fields by position: a new field must be added there too
    assert _names(Seen) == ["message_id", "event_kind", "at", "decision", "note", "digest"]
    assert _names(EvidenceItem) == ["role", "message_id", "device", "time", "detail"]
    assert _names(Decision) == [
        "message_id", "event_kind", "action", "reason", "decided_at", "event_time", "ch", "mpan", "esmes",
        "window_opens", "window_closes", "activation", "evidence", "flags", "hold_deadline",
    ]  # fmt: skip
    # and the strategies above draw every one of them (none left at its default)
    for cls, strategy in ((Seen, seens), (Decision, decisions), (EvidenceItem, evidence)):
        assert set(typing.get_type_hints(cls)) - {"kind"} == set(_names(cls)), strategy


@settings(max_examples=300)
@given(seens)
def test_a_packed_key_unpacks_to_an_equal_record_with_its_enums(seen: Seen) -> None:
    back = unpack_seen(pack_seen(seen))
    assert back == seen
    if seen.decision is not None:
        assert back.decision is not None
        assert type(back.decision.action) is Action and type(back.decision.reason) is Reason
        assert all(type(e) is EvidenceItem for e in back.decision.evidence)
        assert [e.time for e in back.decision.evidence] == [e.time for e in seen.decision.evidence]
        # the same instants with the same offsets, not only equal instants
        assert back.decision.decided_at.utcoffset() == seen.decision.decided_at.utcoffset()


def _young_collections() -> None:
    """The two collections a new object passes through before it reaches the oldest generation."""
    gc.collect(0)
    gc.collect(1)


@settings(max_examples=200)
@given(seens)
def test_a_packed_key_is_no_longer_tracked_when_it_would_reach_the_oldest_generation(seen: Seen) -> None:
    packed = pack_seen(seen)
    _young_collections()
    assert not gc.is_tracked(packed)


def _world_with_keys() -> tuple[object, list[Decision]]:
    """An engine that decided a suppressed AD1 (with evidence), a forwarded one and a held-then-released
    one, and observed an activation's request and response."""
    eng = standard_world()
    out = run(
        eng,
        [
            request(0, mid="req-1"),
            response(1, mid="rsp-1"),
            outage(1.5, mid="ad1-suppressed"),
            outage(200, mid="ad1-forwarded"),
            request(300, counter=1001, execute=310, mid="req-fd"),
            outage(310.5, mid="ad1-held"),
            fd_outcome(310.2, arrival=314, mid="fd-ok"),
            tick(320),
        ],
    )
    return eng, [e for e in out if isinstance(e, Decision)]


def test_the_engines_keys_are_untracked_after_a_collection_and_re_deliveries_get_the_same_decision() -> None:
    eng, decided = _world_with_keys()
    final = {d.message_id: d for d in decided}  # the latest decision of each (the held one's release)
    assert final["ad1-suppressed"].action is Action.SUPPRESS and final["ad1-suppressed"].evidence
    assert final["ad1-held"].action is Action.RELEASE_SUPPRESS
    keys = eng._seen  # type: ignore[attr-defined]
    assert {"req-1", "rsp-1", "ad1-suppressed", "ad1-forwarded", "ad1-held", "fd-ok"} <= set(keys)
    _young_collections()
    assert [mid for mid, packed in keys.items() if gc.is_tracked(packed)] == []
    for mid, decision in final.items():
        again = run(eng, [outage(0, arrival=321, mid=mid)])  # a re-delivery of the same message id
        assert again == [Duplicate(mid, decision)]
        assert eng.decision_for(mid) == decision  # type: ignore[attr-defined]
    assert run(eng, [response(1, arrival=322, mid="rsp-1")]) == [Duplicate("rsp-1", None)]


def test_exported_keys_are_the_records_the_engine_built() -> None:
    from gateway.engine.effects import StateChange, Table

    eng = standard_world()
    out = run(
        eng,
        [request(0, mid="req-1"), response(1, mid="rsp-1"), outage(1.5, mid="ad1"), outage(90, mid="ad2")],
    )
    built = {e.key: e.value for e in out if isinstance(e, StateChange) and e.table is Table.SEEN}
    exported = {c.key: c.value for c in eng.export_state() if c.table is Table.SEEN}  # type: ignore[attr-defined]
    assert exported == built and all(type(v) is Seen for v in exported.values())
    assert ESME in built["ad1"].decision.esmes
