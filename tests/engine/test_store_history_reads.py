"""Reads of the decision store that must not grow with its history.

The ``messages`` table and the decision log are never pruned: they are the audit record. The engine's
idempotency keys live in ``messages`` (``seen_at``); those within the retention are a bounded set, but
start-up found them by reading every message ever kept (now: a range of an index by instant). So did the
daily suppression export (``duisgw audit export``: every decision, for the few suppressions of one
day) and ``duisgw audit release`` looking for an outage's paired restorations (the whole decision log).
At 1 M messages a day a year's store holds ~365 M rows: a restart read all of them (300,000 messages
took 1.7 s from a cold cache, 0.2 s warm, growing linearly). Each now reads through a partial index that
holds only what it looks for.

Pinned down by counting SQLite's virtual-machine steps (``set_progress_handler``) for each read on two
stores that differ only in the length of a forwarded and pruned history: the steps must not grow with it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine_support import OTHER_CH, OTHER_MPAN, outage, request, response, restored, standard_world, t, tick

from gateway.engine import Action, EngineConfig
from gateway.store import DurableEngine, SqliteStore

KEEP = EngineConfig().keep_for.total_seconds() / 60  # minutes
LIVE = KEEP + 600  # the live traffic's minute: every history key is past its retention by then
OUTAGE_ID = "live-ad1"


def _seen_keys(store: SqliteStore) -> list[str]:
    """The idempotency keys start-up loads."""
    return sorted(r[1] for r in store.load_engine_records(EngineConfig().keep_for) if r[0] == "seen")


def _store_with_history(path: Path, forwarded: int) -> DurableEngine:
    """``forwarded`` AD1s of a hub outside the scope, forwarded and then pruned (retention passed), then a
    live day: an activation, a suppressed AD1 and its restoration alert, suppressed as paired with it."""
    eng = standard_world()
    d = DurableEngine(SqliteStore(path, checkpoint_interval=0), EngineConfig(), eng.scope, eng.inventory)
    history = [
        (outage(i / 100, ch=OTHER_CH, mpan=OTHER_MPAN, mid=f"h{i:06d}"), b"<AD1/>") for i in range(forwarded)
    ]
    for at in range(0, len(history), 500):
        d.submit_many(history[at : at + 500])
    d.submit(tick(LIVE - 1))
    assert not _seen_keys(d.store)  # the history is pruned
    d.submit(request(LIVE, mid="live-request"))
    d.submit(response(LIVE + 0.5, mid="live-response"))
    [ad1] = [e for e in d.submit(outage(LIVE + 2, mid=OUTAGE_ID), b"<AD1/>") if hasattr(e, "action")]
    assert ad1.action is Action.SUPPRESS
    [rst] = [
        e for e in d.submit(restored(LIVE + 2, mid="live-restoration"), b"<8F36/>") if hasattr(e, "action")
    ]
    assert rst.action is Action.SUPPRESS and rst.reason.value == "restoration-paired"
    return d


def _steps(store: SqliteStore, read: Callable[[SqliteStore], Any]) -> tuple[int, Any]:
    """SQLite VM steps (in units of 10) that ``read`` takes on the store's connection, and what it returned."""
    conn: sqlite3.Connection = store._conn()  # the store's own connection: where its reads run
    count = 0

    def tally() -> int:
        nonlocal count
        count += 1
        return 0

    conn.set_progress_handler(tally, 10)
    try:
        result = read(store)
    finally:
        conn.set_progress_handler(None, 10)
    return count, result


def _compare(tmp_path: Path, read: Callable[[SqliteStore], Any]) -> tuple[int, int, Any, Any]:
    short = _store_with_history(tmp_path / "short.sqlite3", 200)
    long = _store_with_history(tmp_path / "long.sqlite3", 4000)
    try:
        few, got_short = _steps(short.store, read)
        many, got_long = _steps(long.store, read)
    finally:
        short.store.close()
        long.store.close()
    return few, many, got_short, got_long


def test_start_up_reads_the_live_idempotency_keys_without_reading_the_pruned_history(tmp_path: Path) -> None:
    few, many, short, long = _compare(tmp_path, _seen_keys)
    assert short == long and OUTAGE_ID in short and not any(k.startswith("h") for k in short)
    assert many <= few + 20, f"{few} VM steps with 200 old messages, {many} with 4,000"


def test_the_daily_suppression_export_reads_only_suppressions_not_the_forwarded_history(
    tmp_path: Path,
) -> None:
    low, high = t(LIVE - 60).isoformat(), t(LIVE + 60).isoformat()
    few, many, short, long = _compare(
        tmp_path, lambda s: [(row["message_id"], latest) for row, latest in s.first_suppressions(low, high)]
    )
    assert short == long == [(OUTAGE_ID, "suppress"), ("live-restoration", "suppress")]
    assert many <= few + 20, f"{few} VM steps with 200 forwarded decisions, {many} with 4,000"


def test_finding_an_outages_paired_restorations_reads_only_paired_restorations(tmp_path: Path) -> None:
    few, many, short, long = _compare(tmp_path, lambda s: s.paired_restorations(OUTAGE_ID))
    assert short == long == ["live-restoration"]
    assert many <= few + 20, f"{few} VM steps with 200 forwarded decisions, {many} with 4,000"
