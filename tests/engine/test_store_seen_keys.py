"""The engine's idempotency keys in the SQLite store: a prune writes nothing, start-up loads by instant.

An idempotency key is the ``seen_at`` column of its message's row. The engine prunes a key when its
retention has passed, one tick's worth at a time; the store used to clear the column then, which rewrote
the message's row two days after it was written (an old page, not in any cache): at 1,000 msg/s, a tick
transaction of ~1,000 row updates every second (11–16 ms in ``bench/bench_steady.py``), with the decisions
queued behind it waiting. Now the prune writes nothing, and start-up loads only the keys seen within the
retention before the engine's stored clock (or its latest key), through an index by instant.
"""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from pathlib import Path

from engine_support import OTHER_CH, OTHER_MPAN, decisions, outage, standard_world, t, tick

from gateway.engine import Action, Duplicate, EngineConfig, PowerOutage
from gateway.store import DurableEngine, SqliteStore

KEEP = EngineConfig().keep_for.total_seconds() / 60  # minutes


def _durable(path: Path) -> DurableEngine:
    eng = standard_world()
    return DurableEngine(SqliteStore(path, checkpoint_interval=0), EngineConfig(), eng.scope, eng.inventory)


def _forwarded(d: DurableEngine, minute: float, mid: str) -> None:
    """An AD1 of a hub outside the scope arriving at ``minute``: forwarded, its key kept."""
    ad1 = outage(minute - 3.5, ch=OTHER_CH, mpan=OTHER_MPAN, mid=mid)
    [dec] = decisions(d.submit(ad1, b"<AD1/>"))
    assert dec.action is Action.FORWARD


def _loaded_keys(d: DurableEngine) -> list[str]:
    return sorted(k for tbl, k, _ in d.store.load_engine_records(d.config.keep_for) if tbl == "seen")


def _redelivered(d: DurableEngine, mid: str, minute: float) -> bool:
    """Whether a re-delivery of ``mid`` at ``minute`` is answered as a duplicate of its first decision."""
    ad1 = outage(minute - 3.5, ch=OTHER_CH, mpan=OTHER_MPAN, mid=mid)
    return any(isinstance(e, Duplicate) for e in d.submit(ad1, b"<AD1/>"))


def test_a_tick_that_prunes_idempotency_keys_writes_no_message_row(tmp_path: Path) -> None:
    d = _durable(tmp_path / "s.sqlite3")
    for i in range(50):
        _forwarded(d, i / 60, f"old-{i}")
    conn = d.store._conn()
    before = conn.total_changes
    d.submit(tick(KEEP + 1))
    assert not d.engine._seen  # all 50 pruned by the engine
    # the tick's transaction wrote the stored clock and nothing else (it updated 50 message rows before)
    assert conn.total_changes - before == 1


def test_a_restart_loads_the_keys_within_the_retention_and_not_those_pruned(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    d = _durable(path)
    _forwarded(d, 0, "old")
    _forwarded(d, KEEP - 10, "recent")
    d.submit(tick(KEEP + 1))  # "old" is past its retention and pruned; "recent" is kept
    assert (d.engine.decision_for("old"), d.engine.decision_for("recent") is not None) == (None, True)
    d.store.close()

    d = _durable(path)
    assert _loaded_keys(d) == ["recent"]
    assert _redelivered(d, "recent", KEEP + 2)
    assert not _redelivered(d, "old", KEEP + 2)  # decided afresh, as before the restart
    d.store.close()


def test_without_a_stored_clock_the_latest_key_bounds_what_start_up_loads(tmp_path: Path) -> None:
    """No tick ever ran (no clock record): the engine's clock after a restart is at least the latest key,
    and a key its retention before that would be pruned by the first tick, so it is not loaded."""
    path = tmp_path / "s.sqlite3"
    d = _durable(path)
    _forwarded(d, 0, "first")
    _forwarded(d, 5, "second")
    _forwarded(d, KEEP + 1, "latest")
    d.store.close()

    d = _durable(path)
    assert _loaded_keys(d) == ["latest", "second"]
    d.store.close()


def test_keys_are_chosen_by_their_instant_whatever_the_offset_of_their_text(tmp_path: Path) -> None:
    """The key's text keeps its arrival's UTC offset. "east" (+05:00) reads as later than "west" (-05:00)
    but is two hours earlier: text order would load the wrong one of the two."""
    path = tmp_path / "s.sqlite3"
    d = _durable(path)
    east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))
    for mid, arrival in (("east", t(-60).astimezone(east)), ("west", t(60).astimezone(west))):
        ad1 = PowerOutage(
            message_id=mid, arrival=arrival, verified=True, verification="ok", ch=OTHER_CH, mpan=OTHER_MPAN,
            start_time=arrival - timedelta(minutes=3.5),
        )  # fmt: skip
        [dec] = decisions(d.submit(ad1, b"<AD1/>"))
        assert dec.action is Action.FORWARD
    d.submit(tick(KEEP))  # past "east"'s retention, within "west"'s
    rows = dict(d.store._conn().execute("SELECT message_id, seen_at FROM messages").fetchall())
    assert rows["east"] > rows["west"]  # as text; as instants east is 2 hours before west
    assert t(KEEP).astimezone(UTC).isoformat() > rows["west"]
    d.store.close()

    d = _durable(path)
    assert _loaded_keys(d) == ["west"]
    d.store.close()
