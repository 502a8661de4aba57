"""The number of held messages, as the engine and the durable engine count it at every commit.

``Engine.held()`` sorts every held message (oldest first); the durable engine needs only how many there are
after each commit and rebuild, so it reads ``Engine.held_count()`` (no list, no sort: a storm of held AD1s does
not make every batch's commit sort them all). Both say the same at every step.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine_support import decisions, outage, request, response, standard_world

from gateway.engine import Action, EngineConfig
from gateway.store import DurableEngine, SqliteStore

HOLD_LIMIT = EngineConfig().hold_limit


def test_the_engine_counts_its_held_messages_as_its_held_list_lists_them() -> None:
    eng = standard_world()
    assert eng.held_count() == len(eng.held()) == 0
    eng.handle(request(0))
    [first] = decisions(eng.handle(outage(1)))
    [second] = decisions(eng.handle(outage(2, mid="second-ad1")))
    assert (first.action, second.action) == (Action.HOLD, Action.HOLD)
    assert eng.held_count() == len(eng.held()) == 2
    eng.handle(replace(response(0.5), arrival=second.decided_at))  # the outcome releases both
    assert eng.held_count() == len(eng.held()) == 0


def test_the_durable_held_count_follows_each_commit(tmp_path: Path) -> None:
    world = standard_world()
    durable = DurableEngine(SqliteStore(tmp_path / "s.sqlite3"), EngineConfig(), world.scope, world.inventory)
    durable.submit(request(0))
    assert decisions(durable.submit(outage(1), b"<AD1/>"))[0].action is Action.HOLD
    assert durable.held_count == durable.engine.held_count() == len(durable.engine.held()) == 1
    durable.submit(replace(response(0.5), arrival=outage(1).arrival + HOLD_LIMIT / 2))
    assert durable.held_count == durable.engine.held_count() == len(durable.engine.held()) == 0
    durable.store.close()
