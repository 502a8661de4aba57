"""Second review of the index by decision time (``decisions_time``, ``duisgw audit list --since``): it is kept by
SQLite in the transaction of every decision insert and built when this version first opens a store an earlier one
made, so no value a decision row can hold may make that insert or that build fail, and a build that cannot be done
now (another writer's lock held past ``busy_timeout``, the disk full) must not keep the store from opening: the
gateway would not start, for a shortcut of the audit's reads.

SQLite refuses to evaluate ``julianday()`` of a value naming the current time in an index: ``'now'`` (any case),
from SQLite 3.42 on ``'subsec'``/``'subsecond'``, and a BLOB whose text up to its first NUL is one of those
(``length()`` counts a BLOB's bytes, so a length test let ``b'now\\x00'`` through).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.engine import EngineConfig, PowerOutage
from gateway.guids import GuidSet
from gateway.inventory import Inventory
from gateway.store import DurableEngine, SqliteStore
from gateway.store.sqlite import DecisionReader

BASE = datetime(2026, 3, 2, 12, tzinfo=UTC)
OUT_OF_SCOPE_CH = 0x00DBFF0000000001  # no inventory row names it: an AD1 of it is forwarded

#: decided_at values only another tool writes, each a value SQLite reads as "now" or as nothing
ODD_VALUES: list[Any] = [
    "now", "NOW", " now", "now ", "now\x00", "now\x00x", "subsec", "SUBSEC", "subsecond", "SubSecond",
    b"now", b"now\x00", b"now\x00later", b"subsec\x00", b"NOW\x00\x00", "x" * 100_000, 12345, 2460000.5, "",
    "2026-03-02T12:00:00+05:30:15", "12:00", "2460000.5",
]  # fmt: skip


def _insert(db: sqlite3.Connection, seq: int, message_id: str, at: Any) -> None:
    db.execute(
        "INSERT INTO decisions(seq, message_id, action, reason, decided_at, event_time, record) VALUES (?,?,?,?,?,?,?)",
        (seq, message_id, "forward", "out-of-scope", at, None,
         json.dumps({"message_id": message_id, "action": "forward", "reason": "out-of-scope"})),
    )  # fmt: skip


def _ad1(n: int, at: datetime) -> PowerOutage:
    return PowerOutage(message_id=f"ad1-{n}", arrival=at, verified=True, verification="ok", ch=OUT_OF_SCOPE_CH,
                       mpan=None, start_time=at - timedelta(minutes=3))  # fmt: skip


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_a_decision_row_with_any_decided_at_value_is_written_and_the_gateways_next_batch_commits(
    tmp_path: Path, value: Any
) -> None:
    path = tmp_path / "state.sqlite3"
    durable = DurableEngine(SqliteStore(path), EngineConfig(), GuidSet.from_iterable(()), Inventory())
    try:
        durable.submit_many([(_ad1(1, BASE), b"<AD1/>")])
        db = durable.store._conn()
        _insert(db, 1000, "other-tool", value)  # another tool's row, in the store's own log
        effects = durable.submit_many([(_ad1(2, BASE + timedelta(minutes=1)), b"<AD1/>")])
        assert effects and effects[0]
    finally:
        durable.store.close()
    with DecisionReader(path) as reader:
        since = BASE - timedelta(hours=1)
        walked = list(reader.latest_decisions(since=since))
        assert "ad1-2" in [r["message_id"] for r in walked]  # the batch after it, listed
        assert list(reader.latest_decisions(since=since, by_time=True)) == walked


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_an_earlier_versions_store_holding_any_decided_at_value_opens_with_its_index_built(
    tmp_path: Path, value: Any
) -> None:
    path = tmp_path / "state.sqlite3"
    SqliteStore(path, checkpoint_interval=0).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP INDEX decisions_time")  # the earlier version's schema
        _insert(db, 1, "other-tool", value)
        _insert(db, 2, "gateway", BASE.isoformat())
    SqliteStore(path, checkpoint_interval=0).close()  # this version's gateway starts on it
    with DecisionReader(path) as reader:
        assert reader.has_time_index()
        since = BASE - timedelta(hours=1)
        walked = list(reader.latest_decisions(since=since))
        assert "gateway" in [r["message_id"] for r in walked]
        assert list(reader.latest_decisions(since=since, by_time=True)) == walked


def test_a_store_opens_without_the_index_while_another_writer_holds_the_lock_and_builds_it_at_the_next_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite3"
    SqliteStore(path, checkpoint_interval=0).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP INDEX decisions_time")
        _insert(db, 1, "m", BASE.isoformat())
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # e.g. an earlier version's `audit archive` chunk, a long one
        store = SqliteStore(path, checkpoint_interval=0, busy_timeout=0.2)  # the gateway starts all the same
        try:
            assert not store.has_time_index()
            assert store.since_plan(BASE) == "no-index"  # `audit list --since` walks, and says so
        finally:
            store.close()
        assert "was not built" in caplog.text and "locked" in caplog.text
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    SqliteStore(path, checkpoint_interval=0).close()
    with DecisionReader(path) as reader:
        assert reader.has_time_index()
        assert reader.since_plan(BASE + timedelta(hours=1)) == "index"  # (nothing there: the index pays)


def test_a_store_opens_without_the_index_when_the_disk_is_full_for_its_build(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite3"
    SqliteStore(path, checkpoint_interval=0).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP INDEX decisions_time")
        for n in range(1, 2001):
            _insert(db, n, f"m-{n}", (BASE + timedelta(seconds=n)).isoformat())
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count={pages}")  # no page more: SQLITE_FULL for the build
        store = SqliteStore(path, connection=conn)
        try:
            assert not store.has_time_index()
            rows = list(store.latest_decisions(since=BASE + timedelta(seconds=1990)))
            # (the store's bound is to the second below: the caller compares the exact time)
            assert [r["message_id"] for r in rows] == [f"m-{n}" for n in range(1989, 2001)]
        finally:
            store.close()
    finally:
        conn.close()
    assert "was not built" in caplog.text and "full" in caplog.text


def test_an_index_of_another_definition_is_not_read_and_is_replaced_at_the_next_open(tmp_path: Path) -> None:
    # a store this version's development builds indexed by another key: INDEXED BY with this version's key
    # would find no plan ("no query solution"): the reader walks, and the next open rebuilds the index
    path = tmp_path / "state.sqlite3"
    SqliteStore(path, checkpoint_interval=0).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP INDEX decisions_time")
        db.execute("CREATE INDEX decisions_time ON decisions(julianday(decided_at))")
        _insert(db, 1, "m", BASE.isoformat())
    with DecisionReader(path) as reader:
        assert not reader.has_time_index()
        assert reader.since_plan(BASE) == "no-index"
        assert [r["message_id"] for r in reader.latest_decisions(since=BASE)] == ["m"]
    SqliteStore(path, checkpoint_interval=0).close()
    with DecisionReader(path) as reader:
        assert reader.has_time_index()
        assert reader.since_plan(BASE + timedelta(hours=1)) == "index"  # (nothing there: the index pays)
        assert [r["message_id"] for r in reader.latest_decisions(since=BASE, by_time=True)] == ["m"]
