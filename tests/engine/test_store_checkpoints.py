"""WAL checkpoints run off the commit path: the committing connection never checkpoints, a background
thread with its own connection does, so committed pages still reach the database file (the WAL stays
bounded) without a commit ever paying for a checkpoint."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, outage

from gateway.engine.config import EngineConfig
from gateway.store.durable import DurableEngine
from gateway.store.sqlite import SqliteStore


def _fill(store: SqliteStore) -> None:
    engine = DurableEngine(store, EngineConfig(), MemoryScope([ESME]), MemoryInventory([(ESME, CH, MPAN, "LG")]))
    for batch in range(20):
        engine.submit_many([(outage(batch * 60 + i * 0.01, mid=f"ad1-{batch}-{i}"), b"x" * 2048) for i in range(32)])


def test_background_checkpoints_move_committed_pages_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path, checkpoint_interval=0.05)
    empty = path.stat().st_size
    _fill(store)
    deadline = time.monotonic() + 10
    while path.stat().st_size < empty + 1_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size >= empty + 1_000_000  # 640 messages x 2 KB reached the database file
    store.close()
    assert len(SqliteStore(path).messages()) == 640


def test_without_the_checkpointer_sqlite_keeps_its_automatic_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "auto.sqlite3"
    store = SqliteStore(path, checkpoint_interval=0)
    _fill(store)
    assert store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    store.close()


def test_a_store_on_a_borrowed_connection_checkpoints_in_the_background_and_gives_automatic_ones_back(
    tmp_path: Path,
) -> None:
    # [pipeline] state_in_store: the engine's tables live in the transport store's database, on its connection
    path = tmp_path / "transport.sqlite3"
    owner = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    owner.execute("PRAGMA journal_mode=WAL")
    store = SqliteStore(path, checkpoint_interval=0.05, connection=owner)
    assert owner.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # commits never checkpoint
    empty = path.stat().st_size
    _fill(store)
    deadline = time.monotonic() + 10
    while path.stat().st_size < empty + 1_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size >= empty + 1_000_000  # the background thread moved the pages
    store.close()
    assert owner.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # the owner's again
    assert owner.execute("SELECT count(*) FROM messages").fetchone()[0] == 640  # and still open
    owner.close()
