"""Pickling by field values (gateway.slotpickle): what crosses from the ingress workers to the gateway
process comes back equal, of the same class, without dataclasses' per-object ``fields()`` calls."""

from __future__ import annotations

import dataclasses
import pickle
import typing
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine.events import (
    ActivationRequested,
    ActivationResponse,
    DeviceStatusChange,
    FutureDatedOutcome,
    InventoryObserved,
    MessageEvent,
    OtherInline,
    PowerOutage,
    SupplyRestored,
)
from gateway.pipeline import Classified, Rejection
from gateway.slotpickle import _restore, fast_pickle

EVENT_KINDS: tuple[type[MessageEvent], ...] = (
    ActivationRequested,
    ActivationResponse,
    FutureDatedOutcome,
    InventoryObserved,
    DeviceStatusChange,
    PowerOutage,
    SupplyRestored,
    OtherInline,
)

times = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=1))]))
u64 = st.integers(0, 2**64 - 1)
st.register_type_strategy(datetime, times)


def _event(cls: type[MessageEvent]) -> st.SearchStrategy[MessageEvent]:
    # every field (defaults included) drawn from its annotation, so none is left at its default
    hints = typing.get_type_hints(cls)
    return st.fixed_dictionaries({f.name: st.from_type(hints[f.name]) for f in dataclasses.fields(cls)}).map(
        lambda kw: cls(**kw)
    )


events = st.one_of(*(_event(k) for k in EVENT_KINDS))


def test_every_event_kind_and_the_classification_pickle_by_field_values() -> None:
    for cls in (*EVENT_KINDS, Classified, Rejection):
        assert "__reduce__" in cls.__dict__, f"{cls.__name__} is not @fast_pickle"


@settings(max_examples=200, deadline=None)
@given(events)
def test_an_event_comes_back_equal_and_of_its_own_class(ev: MessageEvent) -> None:
    reducer, (cls, _values) = ev.__reduce__()  # type: ignore[misc]
    assert reducer is _restore and cls is type(ev)
    back = pickle.loads(pickle.dumps(ev, 5))
    assert type(back) is type(ev)
    assert back == ev
    assert hash(back) == hash(ev)
    for f in dataclasses.fields(ev):  # field by field: tzinfo and None kept exactly
        assert getattr(back, f.name) == getattr(ev, f.name)
        assert type(getattr(back, f.name)) is type(getattr(ev, f.name))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(events, max_size=3),
    st.one_of(st.none(), st.builds(Rejection, st.text(max_size=20), st.text(max_size=40))),
    st.lists(st.text(max_size=30), max_size=3),
    st.one_of(st.none(), times),
)
def test_a_classification_with_its_events_comes_back_equal(
    evs: list[MessageEvent], rejection: Rejection | None, problems: list[str], when: datetime | None
) -> None:
    c = Classified(
        lane="inline",
        arrival=datetime(2026, 1, 15, 9, 0, tzinfo=UTC),
        message_id="90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:77|DCCAlertMessage.AD1",
        kind="DCCAlertMessage.AD1",
        events=tuple(evs),
        rejection=rejection,
        problems=tuple(problems),
        event_time=when,
        device={"ch": "00-DB-12-34-56-78-90-A0", "mpan": None},
        doc_time=when,
    )
    back = pickle.loads(pickle.dumps([c, c], 5))  # a frame of several: the memo keeps one object
    assert back[0] == c and back[0] is back[1]
    assert back[0].device == c.device and back[0].doc_time == c.doc_time


def test_a_subclass_without_its_own_decorator_refuses_to_pickle_as_its_parent() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Louder(PowerOutage):
        volume: int = 11

    ev = Louder(message_id="m", arrival=datetime(2026, 1, 1, tzinfo=UTC), verified=True, ch=1, mpan=None,
                start_time=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    with pytest.raises(TypeError, match="Louder inherits fast pickling from PowerOutage"):
        pickle.dumps(ev)


def test_only_slotted_dataclasses_can_be_decorated() -> None:
    @dataclasses.dataclass(frozen=True)
    class Plain:
        a: int

    with pytest.raises(TypeError, match="needs a slotted dataclass"):
        fast_pickle(Plain)
    with pytest.raises(TypeError):
        fast_pickle(int)


def test_a_one_field_class_pickles_its_value_as_a_one_tuple() -> None:
    @fast_pickle
    @dataclasses.dataclass(frozen=True, slots=True)
    class One:
        a: tuple[int, int]

    _reducer, (_cls, values) = One((1, 2)).__reduce__()  # type: ignore[misc]
    assert values == ((1, 2),)
    assert _restore(One, values) == One((1, 2))
