"""Moving settled history out of the decision store into an archive file (``duisgw audit archive``).

Theory of operation
===================

The decision store keeps every message with its original bytes and the append-only decision log: the
audit record, which the gateway never prunes (~3.1 KB per forwarded AD1, docs/OPERATIONS.md). An operator
moves the part of it that nothing running needs any more into an archive file: an SQLite database with the
same tables (``messages``, ``decisions``, ``operator_releases`` and ``routes``), which ``duisgw audit
list|show|export --archive FILE`` read as they read the live store. Nothing is deleted that is not first
durable in the archive.

What moves. A message *settled* before ``before``: it arrived, and its last decision was taken, before
``before``; it is observed, suppressed, or forwarded and in no outbox queue still pending or dead-lettered;
never a held or undecided message. ``before`` must be at least the engine's retention (``keep_for``) before
the gateway clock stored with the state, so the engine no longer holds its idempotency key (a re-delivery is
decided afresh, as it would be anyway) nor, for an AD1, the suppressed outage a restoration could pair with.
(An activation the message was evidence for lives for the retention after its latest event, so a later
decision may still name the message as evidence: the archive has it.) With each message go its decisions,
their operator releases and its route (a route in another file, the transport store's, is copied and stays
there too). The live store's newest message row and newest decision row never move: their numbers are where
the store's next ones start, and an archive that took them would let numbers be used twice.

How. In chunks of messages in store order, each chunk ONE write transaction on the live store
(``BEGIN IMMEDIATE``: the gateway's next commit waits behind it, as behind any other short writer, up to its
busy timeout): the chunk's rows are read and checked again inside it, written to the archive and committed
there (``synchronous = FULL``), then deleted from the live store, which commits last. A crash between the
two commits leaves the rows in both files; the next run writes them to the archive again (the same rows) and
deletes them. A scan stops at the first chunk whose messages all arrived at or after ``before`` (the gateway
stamps arrivals in order; one stamped out of order, with ``clock = "message"``, waits for a later run).

The live store remembers what was archived (``meta``: ``archived_before``, the latest cut-off of any run, and
``archive_files``, the archive files written): a day's suppression export that starts before that cut-off
may have part of its rows in an archive, and ``duisgw audit export`` says so (:func:`archived_note`).

Pure file I/O on SQLite, no clock: ``before`` and the stored clock decide everything.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.engine.errors import StoreError
from gateway.engine.records import from_record
from gateway.engine.state import ClockRecord
from gateway.store.sqlite import ROUTES_SCHEMA, SqliteStore, connect_read_only, julian_day

__all__ = [
    "ARCHIVE_CHUNK",
    "ArchiveRefused",
    "ArchiveReport",
    "archive_settled",
    "archived_note",
    "is_archive",
    "stored_clock",
]

#: messages one archive transaction moves at most (the gateway's commits wait behind one such transaction)
ARCHIVE_CHUNK = 100
_SETTLED = ("observed", "suppress", "forward")
_Rows = tuple[list[str], list[tuple[Any, ...]]]  # column names, rows


class ArchiveRefused(StoreError):
    """The archive cannot be made as asked (nothing was moved)."""

    code = "archive"


@dataclass
class ArchiveReport:
    """What one run moved, and what it left although it arrived before ``before``."""

    messages: int = 0
    decisions: int = 0
    releases: int = 0
    routes: int = 0
    unsettled: int = 0
    """messages that arrived before ``before`` but are held, undecided, in an outbox queue still, or
    decided at or after ``before`` (or are the store's newest row): left in the live store"""
    transactions: int = 0


def stored_clock(conn: sqlite3.Connection) -> datetime | None:
    """The gateway clock stored with the decision state (the engine's last tick), if any."""
    try:
        row = conn.execute("SELECT record FROM engine_state WHERE tbl = 'clock' AND key = 'clock'").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else from_record(ClockRecord, json.loads(row[0])).now


def _in_queue(transport: sqlite3.Connection | None) -> set[str]:
    """Message ids with an outbox row still pending or dead-lettered (through the partial indexes)."""
    if transport is None:
        return set()
    try:
        rows = transport.execute(
            "SELECT message_id FROM outbox WHERE state = 'pending' UNION SELECT message_id FROM outbox WHERE state = 'dead'"
        ).fetchall()
    except sqlite3.OperationalError:  # no outbox table: nothing queued
        return set()
    return {str(r[0]) for r in rows}


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> _Rows:
    cur = conn.execute(sql, tuple(params))
    return [d[0] for d in cur.description], cur.fetchall()


def _put(
    conn: sqlite3.Connection, table: str, verb: str, cols: list[str], rows: list[tuple[Any, ...]]
) -> None:
    if rows:
        marks = ",".join("?" * len(cols))
        conn.executemany(f"INSERT OR {verb} INTO {table} ({','.join(cols)}) VALUES ({marks})", rows)


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _look(path: Path) -> tuple[set[str], bool] | None:
    """The tables of the SQLite file ``path`` and whether it carries the archive mark (read-only look);
    None when it is not an SQLite database."""
    try:
        with contextlib.closing(connect_read_only(path)) as conn:
            tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            marked = (
                "meta" in tables
                and conn.execute("SELECT 1 FROM meta WHERE key = 'archive'").fetchone() is not None
            )
            return tables, marked
    except sqlite3.Error:
        return None


def is_archive(path: Path) -> bool:
    """Whether ``path`` is an archive file :func:`archive_settled` made (read-only look)."""
    look = _look(path)
    return look is not None and look[1]


def open_archive(path: Path) -> None:
    """Create an archive file (the decision store's tables, and ``routes``), or check that ``path`` is one
    (an existing file that is anything else, a gateway's store among them, is refused)."""
    look = _look(path) if path.exists() else (set(), False)
    if look is None or (look[0] and not look[1]):
        raise ArchiveRefused(f"{path} exists and is not an archive made by `duisgw audit archive`")
    store = SqliteStore(path, checkpoint_interval=0)
    try:
        conn = store._conn()
        conn.execute(ROUTES_SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('archive', 'duisgw decision archive')")
    finally:
        store.close()


def archive_settled(
    decision_db: Path,
    archive_db: Path,
    *,
    before: datetime,
    keep_for: timedelta,
    transport_db: Path | None,
    chunk: int = ARCHIVE_CHUNK,
    busy_timeout: float = 5.0,
) -> ArchiveReport:
    """Move the messages settled before ``before`` (with their decisions, operator releases and routes)
    from ``decision_db`` to ``archive_db``; ``transport_db`` is the transport store (outbox, routes) when it
    is another file, None when its tables are in ``decision_db``. Raises :class:`ArchiveRefused` (nothing
    moved) when ``before`` is later than the stored clock minus ``keep_for``, or there is no stored clock."""
    if before.tzinfo is None:
        raise ArchiveRefused("the archive's cut-off needs a UTC offset")
    if archive_db.resolve() == decision_db.resolve() or (
        transport_db is not None and archive_db.resolve() == transport_db.resolve()
    ):
        raise ArchiveRefused(f"{archive_db} is the gateway's own store")
    if not decision_db.is_file():
        raise ArchiveRefused(f"no decision state at {decision_db}")
    live = sqlite3.connect(str(decision_db), timeout=busy_timeout, isolation_level=None)
    transport = (
        live
        if transport_db is None
        else (connect_read_only(transport_db, busy_timeout) if transport_db.is_file() else None)
    )
    try:
        clock = stored_clock(live)
        if clock is None:
            raise ArchiveRefused("the decision state has no gateway clock yet (the gateway never ticked)")
        limit = clock - keep_for
        if before > limit:
            raise ArchiveRefused(
                f"--before {before.isoformat()} is later than the gateway clock ({clock.isoformat()}) minus the "
                f"engine's retention ({keep_for}): the latest allowed is {limit.isoformat()}"
            )
        open_archive(archive_db)
        arch = sqlite3.connect(str(archive_db), timeout=busy_timeout, isolation_level=None)
        try:
            arch.execute("PRAGMA synchronous=FULL")
            live.execute("PRAGMA synchronous=FULL")
            _remember(live, before, archive_db)
            return _move(live, arch, transport, transport_db is None, julian_day(before), max(1, chunk))
        finally:
            arch.close()
    finally:
        if transport is not None and transport is not live:
            transport.close()
        live.close()


@dataclass
class _Chunk:
    """The rows one transaction moves: a chunk's messages and what goes with them."""

    messages: _Rows
    decisions: _Rows
    releases: _Rows
    routes: _Rows

    def delete_from(self, live: sqlite3.Connection, *, routes: bool) -> None:
        """Delete these rows from the live store (inside its open transaction); its routes when ``routes``."""
        seqs = [r[0] for r in self.messages[1]]
        ids = [r[self.messages[0].index("message_id")] for r in self.messages[1]]
        dseqs = [r[self.decisions[0].index("seq")] for r in self.decisions[1]]
        if dseqs:
            live.execute(f"DELETE FROM operator_releases WHERE decision_seq IN ({_marks(len(dseqs))})", dseqs)
            live.execute(f"DELETE FROM decisions WHERE seq IN ({_marks(len(dseqs))})", dseqs)
        live.execute(f"DELETE FROM messages WHERE seq IN ({_marks(len(seqs))})", seqs)
        if routes:
            live.execute(f"DELETE FROM routes WHERE message_id IN ({_marks(len(ids))})", ids)


def _chunk(
    live: sqlite3.Connection, routes_from: sqlite3.Connection | None, take: list[Any], newest_dec: int | None
) -> _Chunk | None:
    """The rows of the messages ``take`` (``(seq, message_id, ...)`` rows of ``messages``) with their
    decisions, operator releases and routes; the message of the store's newest decision stays (None when
    nothing is left to move)."""
    ids = [str(r[1]) for r in take]
    if not ids:
        return None
    dec_cols, decs = _rows(live, f"SELECT * FROM decisions WHERE message_id IN ({_marks(len(ids))})", ids)
    seq_at, mid_at = dec_cols.index("seq"), dec_cols.index("message_id")
    keep = {d[mid_at] for d in decs if d[seq_at] == newest_dec}
    if keep:
        take = [r for r in take if r[1] not in keep]
        ids = [str(r[1]) for r in take]
        decs = [d for d in decs if d[mid_at] not in keep]
        if not ids:
            return None
    seqs = [int(r[0]) for r in take]
    dseqs = [int(d[seq_at]) for d in decs]
    messages = _rows(live, f"SELECT * FROM messages WHERE seq IN ({_marks(len(seqs))})", seqs)
    releases: _Rows = (
        _rows(live, f"SELECT * FROM operator_releases WHERE decision_seq IN ({_marks(len(dseqs))})", dseqs)
        if dseqs
        else ([], [])
    )
    routes: _Rows = ([], [])
    if routes_from is not None:
        with contextlib.suppress(sqlite3.OperationalError):  # no routes table in that store
            routes = _rows(routes_from, f"SELECT * FROM routes WHERE message_id IN ({_marks(len(ids))})", ids)
    return _Chunk(messages, (dec_cols, decs), releases, routes)


def _remember(live: sqlite3.Connection, before: datetime, archive_db: Path) -> None:
    """Record in the live store's ``meta``, before anything moves, the latest cut-off archived and the file."""
    live.execute("BEGIN IMMEDIATE")
    try:
        rows = dict(
            live.execute("SELECT key, value FROM meta WHERE key IN ('archived_before', 'archive_files')")
        )
        latest = rows.get("archived_before")
        if latest is None or datetime.fromisoformat(latest) < before:
            latest = before.isoformat()
        files = json.loads(rows.get("archive_files", "[]"))
        where = str(archive_db.resolve())
        if where not in files:
            files.append(where)
        live.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            [("archived_before", latest), ("archive_files", json.dumps(files))],
        )
        live.execute("COMMIT")
    except BaseException:
        live.execute("ROLLBACK")
        raise


def archived_note(conn: sqlite3.Connection, start: datetime) -> str | None:
    """When messages settled after ``start`` may have been archived from this live store: a note naming the
    archive files (for an export of a span starting at ``start``), else None."""
    try:
        rows = dict(
            conn.execute("SELECT key, value FROM meta WHERE key IN ('archived_before', 'archive_files')")
        )
    except sqlite3.OperationalError:
        return None
    latest = rows.get("archived_before")
    if latest is None or datetime.fromisoformat(latest) <= start:
        return None
    files = ", ".join(json.loads(rows.get("archive_files", "[]"))) or "?"
    return (
        f"messages settled before {latest} were moved to an archive ({files}): part of this span may be there "
        "(--archive FILE)"
    )


def _move(
    live: sqlite3.Connection,
    arch: sqlite3.Connection,
    transport: sqlite3.Connection | None,
    routes_here: bool,
    before_jd: float,
    chunk: int,
) -> ArchiveReport:
    report = ArchiveReport()
    queued = _in_queue(transport)
    has_routes = routes_here and (
        live.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'routes'").fetchone()
        is not None
    )
    after = 0
    while True:
        live.execute("BEGIN IMMEDIATE")
        try:
            newest_msg = live.execute("SELECT max(seq) FROM messages").fetchone()[0]
            newest_dec = live.execute("SELECT max(seq) FROM decisions").fetchone()[0]
            window = live.execute(
                "SELECT seq, message_id, status, delivered, julianday(arrival), julianday(coalesce(updated, arrival)) "
                "FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, chunk),
            ).fetchall()
            if not window or all(r[4] >= before_jd for r in window):
                live.execute("ROLLBACK")
                return report
            after = int(window[-1][0])
            early = [r for r in window if r[4] < before_jd]
            take = [
                r
                for r in early
                if r[2] in _SETTLED
                and r[5] < before_jd
                and r[0] != newest_msg
                and (r[2] != "forward" or (r[3] == 1 and r[1] not in queued))
            ]
            moved = _chunk(live, transport if not routes_here else live, take, newest_dec)
            report.unsettled += len(early) - (0 if moved is None else len(moved.messages[1]))
            if moved is not None:
                arch.execute("BEGIN IMMEDIATE")
                try:
                    # a message id decided afresh after its retention can come back: its newest row wins,
                    # every decision (its own number) is kept
                    _put(arch, "messages", "REPLACE", *moved.messages)
                    _put(arch, "decisions", "IGNORE", *moved.decisions)
                    _put(arch, "operator_releases", "IGNORE", *moved.releases)
                    _put(arch, "routes", "REPLACE", *moved.routes)
                    arch.execute("COMMIT")
                except BaseException:
                    arch.execute("ROLLBACK")
                    raise
                moved.delete_from(live, routes=has_routes)
                report.messages += len(moved.messages[1])
                report.decisions += len(moved.decisions[1])
                report.releases += len(moved.releases[1])
                report.routes += len(moved.routes[1])
            live.execute("COMMIT")
            report.transactions += 1
        except BaseException:
            if live.in_transaction:
                live.execute("ROLLBACK")
            raise
