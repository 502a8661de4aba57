"""Pruning past the retention is bounded per tick.

A tick prunes what the clock carried past the retention. After a restart following hours of downtime the
clock jumps hours, and the first tick pruned hours of traffic in one batch: one store transaction
rewriting every one of those messages' rows (18,000 keys: 289 ms and 58 MB of WAL). Now a tick prunes at
most ``PRUNE_PER_TICK`` records and the next ticks take the rest."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
from engine_support import OTHER_CH, OTHER_MPAN, outage, standard_world, tick

from gateway.engine import Action, Decision, Duplicate, EngineConfig, StateChange, Table
from gateway.engine import engine as engine_module

BUDGET = 40


@pytest.fixture(autouse=True)
def small_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(engine_module, "PRUNE_PER_TICK", BUDGET)
    yield


def _pruned_keys(effects: Iterable[object]) -> list[str]:
    return [
        e.key for e in effects if isinstance(e, StateChange) and e.table is Table.SEEN and e.value is None
    ]


def test_a_tick_after_the_clock_jumped_prunes_at_most_the_budget_and_the_next_ticks_the_rest() -> None:
    engine = standard_world()
    keep = EngineConfig().keep_for.total_seconds() / 60
    for i in range(100):  # forwarded AD1s (a hub outside the scope), one every 6 s
        effects = engine.handle(outage(i / 10, ch=OTHER_CH, mpan=OTHER_MPAN, mid=f"m{i:03d}"))
        assert any(isinstance(e, Decision) and e.action is Action.FORWARD for e in effects)
    later = 20 + keep + 600  # every key is past its retention
    first = _pruned_keys(engine.handle(tick(later)))
    second = _pruned_keys(engine.handle(tick(later + 0.01)))
    third = _pruned_keys(engine.handle(tick(later + 0.02)))
    fourth = _pruned_keys(engine.handle(tick(later + 0.03)))
    assert [len(first), len(second), len(third), len(fourth)] == [40, 40, 20, 0]
    assert first + second + third == [f"m{i:03d}" for i in range(100)]  # oldest first, each once


def test_the_ordinary_second_s_prune_is_within_the_budget_and_takes_everything_due() -> None:
    engine = standard_world()
    keep = EngineConfig().keep_for.total_seconds() / 60
    for i in range(30):
        engine.handle(outage(i / 60, ch=OTHER_CH, mpan=OTHER_MPAN, mid=f"s{i:03d}"))
    engine.handle(tick(keep))  # nothing due yet: keys expire from keep + 3.5 minutes (their arrival) on
    assert _pruned_keys(engine.handle(tick(keep + 3.5 + 1))) == [f"s{i:03d}" for i in range(30)]


def test_a_key_past_its_retention_still_waiting_for_its_prune_answers_a_redelivery_as_a_duplicate() -> None:
    """The only decision a record waiting for its prune can change: a re-delivery of a message more than
    the retention after it was first seen is a duplicate of its first decision (once pruned it is decided
    afresh), which is what it was a moment before."""
    engine = standard_world()
    keep = EngineConfig().keep_for.total_seconds() / 60
    for i in range(100):
        engine.handle(outage(i / 10, ch=OTHER_CH, mpan=OTHER_MPAN, mid=f"d{i:03d}"))
    later = 20 + keep + 600
    engine.handle(tick(later))  # prunes d000..d039 only
    again = engine.handle(outage(9.9, arrival=later + 0.001, ch=OTHER_CH, mpan=OTHER_MPAN, mid="d099"))
    assert any(isinstance(e, Duplicate) for e in again)
    fresh = engine.handle(outage(0.0, arrival=later + 0.002, ch=OTHER_CH, mpan=OTHER_MPAN, mid="d000"))
    assert any(isinstance(e, Decision) for e in fresh) and not any(isinstance(e, Duplicate) for e in fresh)
