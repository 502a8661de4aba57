"""The decision store's WAL stays bounded under sustained commits.

SQLite starts a WAL over only when a write transaction begins while every frame has been copied back into
the database. The store checkpoints on a background thread (off the commit path); under sustained commits
one always lands while that checkpoint runs, so before the fix the WAL never started over and grew by
every commit (200 MB in 8 s of the gateway benchmark at 1,000 msg/s)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import SqliteStore

BLOB = bytes(range(256)) * 6  # ~1.5 KB, like a DUIS alert's original bytes
ROWS_PER_COMMIT = 5
RESTART_FRAMES = 64


def _wal_size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.fixture(params=["own-connection", "borrowed-connection"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SqliteStore, Path]]:
    """A store with a fast checkpoint thread and a small restart bound, on its own connection or on one it
    borrows (the gateway's ``[pipeline] state_in_store``: the transport store owns the connection)."""
    path = tmp_path / "state.sqlite3"
    owner: sqlite3.Connection | None = None
    if request.param == "borrowed-connection":
        owner = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        owner.execute("PRAGMA journal_mode=WAL")
    s = SqliteStore(path, checkpoint_interval=0.01, wal_restart_frames=RESTART_FRAMES, connection=owner)
    s._conn().execute("CREATE TABLE scratch (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    try:
        yield s, path
    finally:
        s.close()
        if owner is not None:
            owner.close()


def _commit_rows(db: sqlite3.Connection) -> None:
    db.executemany("INSERT INTO scratch (body) VALUES (?)", [(BLOB,)] * ROWS_PER_COMMIT)


def test_the_wal_starts_over_under_back_to_back_commits_and_keeps_every_row(
    store: tuple[SqliteStore, Path],
) -> None:
    s, path = store
    commits, largest = 0, 0
    deadline = time.monotonic() + 1.5
    while commits < 1500 or (s.wal_restarts < 2 and time.monotonic() < deadline):
        s.commit(also=_commit_rows)  # back to back: no pause for the checkpoint thread to catch up in
        commits += 1
        largest = max(largest, _wal_size(path))
    written = commits * ROWS_PER_COMMIT * len(BLOB)  # ~11 MB at least: what an unbounded WAL grows by
    assert s.wal_restarts >= 2, f"the WAL never started over in {commits} commits ({_wal_size(path)} bytes)"
    assert largest < written / 4, (largest, written)
    assert _wal_size(path) < written / 4
    # nothing committed is lost by starting the WAL over
    reader = sqlite3.connect(str(path))
    try:
        assert reader.execute("SELECT count(*) FROM scratch").fetchone()[0] == commits * ROWS_PER_COMMIT
    finally:
        reader.close()


def test_a_wal_under_the_restart_bound_is_left_to_the_background_checkpoints(
    store: tuple[SqliteStore, Path],
) -> None:
    s, path = store
    for _ in range(3):  # a few pages: well under RESTART_FRAMES
        s.commit(also=_commit_rows)
    time.sleep(0.1)  # several background checkpoints
    s.commit(also=_commit_rows)
    assert s.wal_restarts == 0
    assert 0 < _wal_size(path) < RESTART_FRAMES * 4096


def test_a_wal_file_that_grew_far_past_the_bound_is_cut_back_to_sixteen_times_it(
    store: tuple[SqliteStore, Path],
) -> None:
    s, _path = store
    page = s._conn().execute("PRAGMA page_size").fetchone()[0]
    assert (
        s._conn().execute("PRAGMA journal_size_limit").fetchone()[0] == 16 * RESTART_FRAMES * (page + 24) + 32
    )


def test_the_default_restart_bound_is_16_mib_of_4_kib_pages(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.sqlite3") as s:
        assert s._conn().execute("PRAGMA journal_size_limit").fetchone()[0] == 16 * 4096 * (4096 + 24) + 32
    assert os.path.exists(tmp_path / "s.sqlite3")
