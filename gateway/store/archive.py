"""Moving settled history out of the decision store into an archive file (``duisgw audit archive``).

Theory of operation
===================

The decision store keeps every message with its original bytes and the append-only decision log: the
audit record, which the gateway never prunes (~3.1 KB per forwarded AD1, docs/OPERATIONS.md). An operator
moves the part of it that nothing running needs any more into an archive file: an SQLite database with the
same tables (``messages``, ``decisions``, ``operator_releases`` and ``routes``), which ``duisgw audit
list|show|export --archive FILE`` read as they read the live store. Nothing is deleted that is not first
durable in the archive, and nothing already in the archive is replaced by another message's row.

What moves. A message *settled* before ``before``: it arrived, its row was last updated and its
idempotency key was last seen (``seen_at``) before ``before``, and every decision of its message id was
taken before ``before``; it is observed (no decision), or its row and its LATEST decision agree that it is
suppressed, or forwarded and flagged delivered and in no outbox queue still pending or dead-lettered. Never
a held or undecided message, nor one whose row and latest decision disagree (a row not brought up to date:
judged by the decision log, it stays). ``before`` must be at least the engine's retention (``keep_for``)
before the gateway clock stored with the state, so the engine no longer holds its idempotency key (a
re-delivery is decided afresh, as it would be anyway) nor, for an AD1, the suppressed outage a restoration
could pair with. (An activation the message was evidence for lives for the retention after its latest
event, so a later decision may still name the message as evidence: the archive has it.) With each message
go all the decisions of its id, their operator releases and its route (a route in another file, the
transport store's, is copied and stays there too). The live store's newest message row and newest
decision row never move: their numbers are where the store's next ones start, so a store never numbers two
rows alike, and an archive that took them would let numbers be used twice.

One store, one file, nothing replaced. The archive keeps the live store's numbers (``seq``). A store has an
identity (``store_id``, a random id in its ``meta``, made at its first run); the archive records the store
it archives (``archive_of``) and is refused to any other store with an identity. A store without one (a
backup restored from before its first run, or one never archived) is checked row by row instead, and
takes the archive's identity once the run goes ahead. Rows are written with plain INSERTs: a row the
archive holds under the same number must be the same row. An identical one (an interrupted run's copy) is
skipped; a message row that differs only in what changes after arrival (status, reason, delivery flag,
idempotency key, last update; not its id, lane, kind, arrival or bytes) is the same message changed since
(see How: taken back out of the archive at the start of a run; replaced by the live row if it changed
while the run went on); an operator release may differ in ``taken_in`` (replaced). Any other row under a
number the archive holds (another store's, or this store restored from a backup older than the archive)
makes the run refuse: before anything moves, from a comparison of every live row numbered at or below the
archive's highest (:class:`ArchiveRefused`), or, for a row that appeared while the run went on, before
that chunk is deleted (its ``moved`` says what the chunks before it moved). A message id archived,
re-delivered after its retention and archived again has one row per life in the archive (its
``messages`` are keyed by number; ``message_id`` is indexed, not unique); ``routes`` keeps each distinct
route row. An archive an earlier version made (``message_id`` unique, one route per id) is converted at
its first run (the two tables rewritten once, in one transaction); a format it does not know is refused.

How. In chunks of messages in store order, each chunk ONE write transaction on the live store
(``BEGIN IMMEDIATE``: the gateway's next commit waits behind it, as behind any other short writer, up to its
busy timeout): the chunk's rows are read and checked again inside it, written to the archive and committed
there (``synchronous = FULL``) together with the chunk's numbers (``meta.last_chunk``: its message and
decision numbers and the cut-off), then deleted from the live store, which commits last. Each chunk's
record replaces the one before (whose live commit has landed); the last one stays until the next run into
the file, which first resolves it, message by message: a row gone from the live store was moved; a row
still there and unchanged (same row, same decisions and releases) has its delete finished; a row still
there that changed meanwhile (released by an operator, decided again) while holding all the archive has of
it is removed from the archive (the live store is authoritative); anything else refuses the run. Message
rows outside that chunk which the archive holds and the live store holds changed (left by a cut run of an
earlier version, or by a run whose deletes a restored backup undid) are taken back out the same way, with
the archive's copies of the decisions the live store has too (its other decisions of that id, an earlier
life's, stay); unchanged ones are skipped and deleted when a run selects them again. So a run cut between
its two commits leaves nothing in both files once the next run into the same file has resolved it, and so
does a live store restored from a backup taken before a run, once a run with a cut-off as late has gone
through it. A scan stops at
the first chunk whose messages all arrived at or after ``before`` (the gateway stamps arrivals in order; one
stamped out of order, with ``clock = "message"``, waits for a later run). While a run goes on the live store
names its file (``meta.archive_running``, removed when it ends): a run into another file is refused while
the last chunk of a cut run into that file is still in the live store (it would be in two archives).

The live store remembers what was archived (``meta``: ``archived_before``, the latest cut-off of any run
that moved something, and ``archive_files``, the archive files moved to; written in the transaction of the
first delete): a day's suppression export that starts before that cut-off may have part of its rows in an
archive, and ``duisgw audit export`` says so (:func:`archived_note`).

Pure file I/O on SQLite, no clock: ``before`` and the stored clock decide everything.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.engine.errors import StoreError
from gateway.engine.records import from_record
from gateway.engine.state import ClockRecord
from gateway.store.sqlite import MESSAGES_COLUMNS, SqliteStore, connect_read_only, julian_day

__all__ = [
    "ARCHIVE_CHUNK",
    "ARCHIVE_FORMAT",
    "ArchiveRefused",
    "ArchiveReport",
    "ArchiveUnreadable",
    "ArchivedCopy",
    "archive_settled",
    "archived_bytes",
    "archived_copies",
    "archived_note",
    "archived_rows",
    "is_archive",
    "stored_clock",
]

#: messages one archive transaction moves at most (the gateway's commits wait behind one such transaction)
ARCHIVE_CHUNK = 100
#: the archive file's format (``meta.archive_format``): messages keyed by number alone, distinct routes kept
ARCHIVE_FORMAT = "2"
_SETTLED = ("observed", "suppress", "forward")
#: a decision's action -> the message status it leaves (held: none)
_DISPOSITION = {
    "forward": "forward",
    "release-forward": "forward",
    "suppress": "suppress",
    "release-suppress": "suppress",
}
#: what identifies a message row (the rest changes after arrival: status, delivery, idempotency key ...)
_IDENTITY = ("message_id", "lane", "kind", "arrival", "raw")
_BATCH = 500  # numbers one IN (...) list names at most, outside a chunk
_Rows = tuple[list[str], list[tuple[Any, ...]]]  # column names, rows

#: the archive's ``messages``: the decision store's columns, keyed by number alone (a message id archived,
#: re-delivered after its retention and archived again keeps a row per life)
_MESSAGES_DDL = "CREATE TABLE IF NOT EXISTS {name} (" + MESSAGES_COLUMNS.format(unique="") + ")"
#: the archive's ``routes``: every distinct route row (a message id's lives may have had one each)
_ROUTES_DDL = """CREATE TABLE IF NOT EXISTS {name} (
    message_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    received_at TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    UNIQUE (message_id, destination, received_at, kind)
)"""


@dataclass
class ArchiveReport:
    """What one run moved, and what it left although it arrived before ``before``."""

    messages: int = 0
    """messages moved (those of :attr:`finished` included)"""
    decisions: int = 0
    releases: int = 0
    routes: int = 0
    unsettled: int = 0
    """messages that arrived before ``before`` but are held, undecided, in an outbox queue still, or
    decided at or after ``before`` (or are the store's newest row): left in the live store"""
    transactions: int = 0
    finished: int = 0
    """messages of an earlier run cut between its two commits whose live delete this run finished"""
    withdrawn: int = 0
    """messages an earlier run cut between its two commits had copied, changed in the live store since:
    their copies removed from the archive (the live store's rows stand)"""


class ArchiveRefused(StoreError):
    """The archive cannot be made as asked. ``moved``: what the run had moved before it was refused, all
    zero (nothing moved) unless a conflicting row appeared in the live store while it ran; the chunk that
    met it was not moved."""

    code = "archive"

    def __init__(self, message: str, moved: ArchiveReport | None = None) -> None:
        super().__init__(message)
        self.moved = ArchiveReport() if moved is None else moved


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


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _batches(keys: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for at in range(0, len(keys), _BATCH):
        yield keys[at : at + _BATCH]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        is not None
    )


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]


def _meta(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, str]:
    """The ``meta`` values of ``keys`` that are set (none without a ``meta`` table)."""
    try:
        rows = conn.execute(f"SELECT key, value FROM meta WHERE key IN ({_marks(len(keys))})", tuple(keys))
        return {str(k): str(v) for k, v in rows}
    except sqlite3.OperationalError:
        return {}


@dataclass(frozen=True)
class _Look:
    """What a read-only look at a file found: its tables and the archive's ``meta`` keys."""

    tables: set[str]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def marked(self) -> bool:
        return "archive" in self.meta


def _look(path: Path) -> _Look | None:
    """The tables of the SQLite file ``path`` and its archive ``meta`` (read-only look); None when it is not
    an SQLite database."""
    try:
        with contextlib.closing(connect_read_only(path)) as conn:
            tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            keys = ("archive", "archive_format", "archive_of", "last_chunk")
            return _Look(tables, _meta(conn, keys) if "meta" in tables else {})
    except sqlite3.Error:
        return None


def is_archive(path: Path) -> bool:
    """Whether ``path`` is an archive file :func:`archive_settled` made (read-only look)."""
    look = _look(path)
    return look is not None and look.marked


def archived_rows(path: Path, message_id: str) -> list[dict[str, Any]]:
    """The rows of ``message_id`` in the archive file ``path``, oldest first (one per life: a message id
    archived, re-delivered after its retention and archived again has two): number, arrival, status,
    reason, last update and the size of its original bytes (None: not kept)."""
    keys = ("seq", "arrival", "status", "reason", "updated", "size")
    with contextlib.closing(connect_read_only(path)) as conn:
        rows = conn.execute(
            "SELECT seq, arrival, status, reason, updated, length(raw) FROM messages WHERE message_id = ? "
            "ORDER BY seq",
            (message_id,),
        ).fetchall()
    return [dict(zip(keys, r, strict=True)) for r in rows]


def archived_bytes(path: Path, seq: int) -> bytes | None:
    """The original bytes of the archive's message row number ``seq`` (None: no such row, or not kept)."""
    with contextlib.closing(connect_read_only(path)) as conn:
        row = conn.execute("SELECT raw FROM messages WHERE seq = ?", (seq,)).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])


@dataclass(frozen=True)
class ArchivedCopy:
    """A message row an archive file holds: where, its number there, and its status."""

    path: Path
    seq: int
    status: str

    def __str__(self) -> str:
        return f"row {self.seq} of the archive {self.path}, {self.status}"


class ArchiveUnreadable(StoreError):
    """An archive file the live store names (``meta.archive_files``) cannot be read (moved away, deleted, not an
    archive): what it holds is not known."""

    code = "archive"


def archived_copies(files: Sequence[Path], message_id: str, raw: bytes) -> list[ArchivedCopy]:
    """The rows of ``message_id`` holding exactly the bytes ``raw`` in the archive files ``files`` (a live store's
    :meth:`~gateway.store.sqlite.DecisionReads.archive_files`), file by file, oldest row first: one indexed read a
    file (``archive_messages_id``; an archive records no time range of its own that could pass a file over: its
    runs' cut-offs bound when its messages arrived from above only). :class:`ArchiveUnreadable` when one of them
    cannot be read: a copy there would be missed (``duisgw audit release`` of a quarantined copy then releases
    nothing)."""
    found: list[ArchivedCopy] = []
    for path in files:
        try:
            if not path.is_file():
                raise sqlite3.OperationalError("no such file")
            with contextlib.closing(connect_read_only(path)) as conn:
                rows = conn.execute(
                    "SELECT seq, status FROM messages WHERE message_id = ? AND raw = ? ORDER BY seq",
                    (message_id, raw),
                ).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise ArchiveUnreadable(f"the archive {path} (named by the live store) cannot be read: {exc}") from None
        found.extend(ArchivedCopy(path, int(seq), str(status)) for seq, status in rows)
    return found


def _migrate(conn: sqlite3.Connection) -> None:
    """Rewrite an earlier version's ``messages`` (``message_id`` unique) and ``routes`` (one per message
    id) as this format's, rows unchanged (inside the caller's transaction)."""
    for table, ddl in (("messages", _MESSAGES_DDL), ("routes", _ROUTES_DDL)):
        if not _has_table(conn, table):
            continue
        conn.execute(ddl.format(name=f"{table}_v{ARCHIVE_FORMAT}"))
        wanted = set(_columns(conn, f"{table}_v{ARCHIVE_FORMAT}"))
        names = ",".join(c for c in _columns(conn, table) if c in wanted)
        conn.execute(f"INSERT INTO {table}_v{ARCHIVE_FORMAT} ({names}) SELECT {names} FROM {table}")
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {table}_v{ARCHIVE_FORMAT} RENAME TO {table}")


def _open_archive(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Create the archive file ``path``, or convert one an earlier version made; its connection. The caller
    checked that ``path`` is new or an archive."""
    conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            made = _meta(conn, ("archive_format",)).get("archive_format")
            if made is None:
                _migrate(conn)
            elif made != ARCHIVE_FORMAT:
                raise ArchiveRefused(f"{path}: archive format {made}; this version writes {ARCHIVE_FORMAT}")
            conn.execute(_MESSAGES_DDL.format(name="messages"))
            conn.execute("CREATE INDEX IF NOT EXISTS archive_messages_id ON messages(message_id)")
            conn.execute(_ROUTES_DDL.format(name="routes"))
            conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [("archive", "duisgw decision archive"), ("archive_format", ARCHIVE_FORMAT)],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        SqliteStore(path, checkpoint_interval=0).close()  # the decision store's other tables and indexes
        return conn
    except BaseException:
        conn.close()
        raise


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
    is another file, None when its tables are in ``decision_db``. Raises :class:`ArchiveRefused` when
    ``before`` is later than the stored clock minus ``keep_for``, there is no stored clock, ``archive_db``
    is not an archive or is another store's, or holds other rows under this store's numbers (nothing moved;
    see the module's notes for a conflicting row that appears while the run goes on)."""
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
        look = _look(archive_db) if archive_db.exists() else _Look(set())
        if look is None or (look.tables and not look.marked):
            raise ArchiveRefused(f"{archive_db} exists and is not an archive made by `duisgw audit archive`")
        own = _meta(live, ("store_id", "archive_running"))
        mine, theirs = own.get("store_id"), look.meta.get("archive_of")
        if mine is not None and theirs is not None and mine != theirs:
            raise ArchiveRefused(
                f"{archive_db} is the archive of another decision store (store id {theirs}; this one is {mine}): "
                "archive into this store's own file, or a new one"
            )
        _refuse_if_cut_elsewhere(live, own.get("archive_running"), archive_db)
        arch = _open_archive(archive_db, busy_timeout)
        try:
            live.execute("PRAGMA synchronous=FULL")
            run = _Run(live, arch, transport, transport_db is None, archive_db, before, max(1, chunk))
            changed = run.check_numbers()
            run.claim(mine or theirs or uuid.uuid4().hex, theirs is None)
            run.resolve(changed)
            run.move()
            run.end()
            return run.report
        finally:
            arch.close()
    finally:
        if transport is not None and transport is not live:
            transport.close()
        live.close()


def _last_chunk(text: str | None) -> dict[str, Any] | None:
    return None if not text else dict(json.loads(text))


def _refuse_if_cut_elsewhere(live: sqlite3.Connection, running: str | None, archive_db: Path) -> None:
    """Refuse when the live store names another archive file a run into was cut (``archive_running``) and
    that file's last chunk is still in the live store: moved again here, it would be in both archives."""
    if running is None or running == str(archive_db.resolve()) or not Path(running).is_file():
        return
    look = _look(Path(running))
    last = _last_chunk(None if look is None else look.meta.get("last_chunk"))
    seqs = [] if last is None else [int(s) for s in last["messages"]]
    for part in _batches(seqs):
        if live.execute(
            f"SELECT 1 FROM messages WHERE seq IN ({_marks(len(part))}) LIMIT 1", part
        ).fetchone():
            raise ArchiveRefused(
                f"a run into {running} was cut between its two commits and its last chunk is still in the live "
                f"store: run `duisgw audit archive --to {running}` again first"
            )


class _Conflict(Exception):
    """A row the archive holds under the number of a live row and that is not the same row."""

    def __init__(self, table: str, key: Any) -> None:
        super().__init__(f"{table} #{key}")
        self.table, self.key = table, key


@dataclass
class _Chunk:
    """The rows one transaction moves: a chunk's messages and what goes with them."""

    messages: _Rows
    decisions: _Rows
    releases: _Rows
    routes: _Rows
    seqs: list[int]  # the messages' numbers
    ids: list[str]  # their message ids
    dseqs: list[int]  # the decisions' numbers


class _Run:
    """One run of :func:`archive_settled`, past its refusals of the arguments."""

    def __init__(
        self,
        live: sqlite3.Connection,
        arch: sqlite3.Connection,
        transport: sqlite3.Connection | None,
        routes_here: bool,
        archive_db: Path,
        before: datetime,
        chunk: int,
    ) -> None:
        self.live, self.arch, self.chunk = live, arch, chunk
        self.before, self.before_jd = before, julian_day(before)
        self.archive_db = archive_db
        self.report = ArchiveReport()
        self.routes_here = routes_here
        #: where the routes are read (None: no transport store); deleted only from the live store
        self.routes_from = live if routes_here else transport
        self.has_routes = routes_here and _has_table(live, "routes")
        self.has_releases = _has_table(live, "operator_releases")
        self.queued = _in_queue(transport)
        #: the latest cut-off this run recorded in the live store's ``meta`` (see :meth:`_remember`)
        self.remembered: datetime | None = None

    # ------------------------------------------------------------------ before anything moves

    def check_numbers(self) -> list[int]:
        """Refuse (nothing moved) when the archive holds, under the number of a live row, a row that is not
        the same row; the numbers of the message rows it holds as the live store does but changed since (a
        copy an earlier run cut between its commits left, outside its last chunk, which
        :meth:`resolve` judges): for :meth:`resolve` to take back out of the archive."""
        last = _last_chunk(_meta(self.arch, ("last_chunk",)).get("last_chunk"))
        recorded = set() if last is None else {int(s) for s in last["messages"]}
        checks: list[tuple[str, str, Sequence[str] | None]] = [
            ("messages", "seq", None),
            ("decisions", "seq", None),
        ]
        if self.has_releases:
            checks.append(("operator_releases", "decision_seq", ("decision_seq", "message_id")))
        found: list[str] = []
        changed: list[int] = []
        for table, key, same in checks:
            (top,) = self.arch.execute(f"SELECT max({key}) FROM {table}").fetchone()
            if top is None:
                continue
            keys = [r[0] for r in self.live.execute(f"SELECT {key} FROM {table} WHERE {key} <= ?", (top,))]
            cols = list(same) if same is not None else _columns(self.live, table)
            at = cols.index(key)
            # a message row may have changed after arrival (status, delivery, idempotency key): the same
            # message as long as what identifies it is the same
            ident = [cols.index(c) for c in _IDENTITY] if table == "messages" else None
            for part in _batches(keys):
                sql = f"SELECT {','.join(cols)} FROM {table} WHERE {key} IN ({_marks(len(part))})"
                held = {r[at]: tuple(r) for r in self.arch.execute(sql, part)}
                if not held:
                    continue
                for k, now in ((r[at], tuple(r)) for r in self.live.execute(sql, list(held))):
                    row = held[k]
                    if now == row:
                        continue
                    if ident is None or [now[i] for i in ident] != [row[i] for i in ident]:
                        found.append(f"{table} #{k}")
                    elif k not in recorded:
                        changed.append(int(k))
        if found:
            raise ArchiveRefused(
                f"{self.archive_db} holds other rows under the numbers of {len(found)} row(s) of this store "
                f"({', '.join(found[:3])}{' ...' if len(found) > 3 else ''}): it is another store's archive, "
                "or this store was restored from a backup older than the archive; archive into a new file"
            )
        return changed

    def resolve(self, changed: list[int]) -> None:
        """Resolve the archive's last chunk (see the module's notes): finish the live delete of its messages
        still there unchanged, take back out of the archive those changed since, and the message rows
        ``changed`` (:meth:`check_numbers`); refuse (nothing moved) when the archive holds a row of one
        that is not the live store's, or, for the last chunk's, a decision the live store does not have."""
        live, arch = self.live, self.arch
        last = _last_chunk(_meta(arch, ("last_chunk",)).get("last_chunk"))
        if last is None and not changed:
            return
        recorded = [] if last is None else [int(s) for s in last["messages"]]
        copied = set() if last is None else {int(s) for s in last["decisions"]}
        cols = _columns(live, "messages")
        ident = [cols.index(c) for c in _IDENTITY]
        mid_at = cols.index("message_id")
        finish: list[tuple[int, str, list[int]]] = []
        withdraw: list[tuple[int, str, list[int]]] = []
        live.execute("BEGIN IMMEDIATE")
        try:
            arch.execute("BEGIN IMMEDIATE")
            try:
                newest_msg = live.execute("SELECT max(seq) FROM messages").fetchone()[0]
                newest_dec = live.execute("SELECT max(seq) FROM decisions").fetchone()[0]
                seqs = recorded + changed
                held: dict[int, tuple[Any, ...]] = {}
                here: dict[int, tuple[Any, ...]] = {}
                for part in _batches(seqs):
                    sql = f"SELECT {','.join(cols)} FROM messages WHERE seq IN ({_marks(len(part))})"
                    held.update((r[0], tuple(r)) for r in arch.execute(sql, part))
                    here.update((r[0], tuple(r)) for r in live.execute(sql, part))
                in_chunk = set(recorded)
                for seq in seqs:
                    row, now = held.get(seq), here.get(seq)
                    if row is None or now is None:
                        continue  # not in the archive (any more); or moved: the live commit landed
                    if [now[i] for i in ident] != [row[i] for i in ident]:
                        raise _Conflict("messages", seq)
                    mid = str(row[mid_at])
                    dec_sql = "SELECT * FROM decisions WHERE message_id = ?"
                    have = {r[0]: tuple(r) for r in live.execute(dec_sql, (mid,))}
                    # the archive's copies of this row's decisions: the chunk's (recorded); else those the
                    # live store has too (the others are an earlier life's, moved for good)
                    take = copied if seq in in_chunk else have.keys()
                    kept = {r[0]: tuple(r) for r in arch.execute(dec_sql, (mid,)) if r[0] in take}
                    if any(have.get(k) != r for k, r in kept.items()):
                        raise _Conflict("decisions", mid)
                    unchanged = now == row and have.keys() == kept.keys() and newest_dec not in have
                    if self.has_releases and kept:
                        rel_sql = (
                            f"SELECT * FROM operator_releases WHERE decision_seq IN ({_marks(len(kept))})"
                        )
                        rel_kept = {r[0]: tuple(r) for r in arch.execute(rel_sql, list(kept))}
                        rel_have = {r[0]: tuple(r) for r in live.execute(rel_sql, list(kept))}
                        if not rel_kept.keys() <= rel_have.keys():
                            raise _Conflict("operator_releases", mid)
                        unchanged = unchanged and rel_kept == rel_have
                    if unchanged and seq != newest_msg:
                        if seq in in_chunk:  # (an unchanged copy outside the chunk moves when selected)
                            finish.append((seq, mid, sorted(kept)))
                    else:
                        withdraw.append((seq, mid, sorted(kept)))
                for seq, mid, dseqs in withdraw:
                    self._withdraw(seq, mid, dseqs)
                if self.has_routes:  # (a route written after the chunk's copy)
                    for _seq, mid, _dseqs in finish:
                        self._put_routes(_rows(live, "SELECT * FROM routes WHERE message_id = ?", (mid,)))
                if finish:  # recorded until their live delete has landed
                    rest = {
                        "before": None if last is None else last["before"],
                        "messages": [f[0] for f in finish],
                        "decisions": [d for f in finish for d in f[2]],
                    }
                    arch.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_chunk', ?)",
                        (json.dumps(rest),),
                    )
                else:
                    arch.execute("DELETE FROM meta WHERE key = 'last_chunk'")
                arch.execute("COMMIT")
            except BaseException:
                if arch.in_transaction:
                    arch.execute("ROLLBACK")
                raise
            for seq, mid, dseqs in finish:
                self._delete_live([seq], [mid], dseqs)
            if finish and last is not None:
                self._remember(datetime.fromisoformat(str(last["before"])))
            live.execute("COMMIT")
        except _Conflict as exc:
            live.execute("ROLLBACK")
            raise ArchiveRefused(
                f"{self.archive_db} holds a copy of {exc} that is not this store's row, or more of it than this "
                "store has: it is another store's archive, or this store was restored from a backup older than "
                "the archive; archive into a new file"
            ) from None
        except BaseException:
            if live.in_transaction:
                live.execute("ROLLBACK")
            raise
        self.report.finished = len(finish)
        self.report.withdrawn = len(withdraw)
        self.report.messages += len(finish)
        self.report.decisions += sum(len(f[2]) for f in finish)
        if finish or withdraw:
            self.report.transactions += 1

    def _withdraw(self, seq: int, mid: str, dseqs: list[int]) -> None:
        """Remove from the archive (inside its open transaction) its copy of message row ``seq``, which the
        live store holds changed: the row, the decisions ``dseqs`` and their releases, and the routes of
        ``mid`` the live or transport store also holds."""
        arch = self.arch
        arch.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        if dseqs:
            arch.execute(f"DELETE FROM operator_releases WHERE decision_seq IN ({_marks(len(dseqs))})", dseqs)
            arch.execute(f"DELETE FROM decisions WHERE seq IN ({_marks(len(dseqs))})", dseqs)
        if self.routes_from is not None:
            with contextlib.suppress(sqlite3.OperationalError):  # no routes table in that store
                cols, routes = _rows(self.routes_from, "SELECT * FROM routes WHERE message_id = ?", (mid,))
                for route in routes:
                    where = " AND ".join(f"{c} = ?" for c in cols)
                    arch.execute(f"DELETE FROM routes WHERE {where}", route)

    def claim(self, store_id: str, mark_archive: bool) -> None:
        """Record the identities (the live store's ``store_id`` when it has none; the archive's
        ``archive_of`` when it has none) and the file this run moves to (``archive_running``)."""
        self.live.execute("BEGIN IMMEDIATE")
        try:
            self.live.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', ?)", (store_id,))
            self.live.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('archive_running', ?)",
                (str(self.archive_db.resolve()),),
            )
            self.live.execute("COMMIT")
        except BaseException:
            self.live.execute("ROLLBACK")
            raise
        if mark_archive:
            self.arch.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('archive_of', ?)", (store_id,))

    def end(self) -> None:
        """The run completed: the live store no longer names its file as running."""
        self.live.execute(
            "DELETE FROM meta WHERE key = 'archive_running' AND value = ?", (str(self.archive_db.resolve()),)
        )

    # ------------------------------------------------------------------ moving

    def move(self) -> None:
        live, report = self.live, self.report
        after = 0
        while True:
            live.execute("BEGIN IMMEDIATE")
            try:
                newest_msg = live.execute("SELECT max(seq) FROM messages").fetchone()[0]
                newest_dec = live.execute("SELECT max(seq) FROM decisions").fetchone()[0]
                window = live.execute(
                    "SELECT seq, message_id, status, delivered, julianday(arrival), "
                    "julianday(coalesce(updated, arrival)), julianday(seen_at) "
                    "FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, self.chunk),
                ).fetchall()
                if not window or all(r[4] >= self.before_jd for r in window):
                    live.execute("ROLLBACK")
                    return
                after = int(window[-1][0])
                early = [r for r in window if r[4] < self.before_jd]
                moved = self._chunk(*self._settled(early, newest_msg, newest_dec))
                report.unsettled += len(early) - (0 if moved is None else len(moved.messages[1]))
                if moved is not None:
                    self._write(moved)
                    self._delete_live(moved.seqs, moved.ids, moved.dseqs)
                    self._remember(self.before)
                    report.messages += len(moved.seqs)
                    report.decisions += len(moved.dseqs)
                    report.releases += len(moved.releases[1])
                    report.routes += len(moved.routes[1])
                live.execute("COMMIT")
                report.transactions += 1
            except _Conflict as exc:
                live.execute("ROLLBACK")
                raise ArchiveRefused(
                    f"{self.archive_db} holds another row under the number of {exc}, which appeared while the run "
                    "went on: it is another store's archive, or this store was restored from a backup older than "
                    "the archive; the chunk was not moved",
                    report,
                ) from None
            except BaseException:
                if live.in_transaction:
                    live.execute("ROLLBACK")
                raise

    def _settled(
        self, early: list[Any], newest_msg: int | None, newest_dec: int | None
    ) -> tuple[list[Any], _Rows]:
        """Of ``early`` (window rows that arrived before the cut-off), the settled ones (module notes),
        judged by the row and by the decision log (inside the chunk's transaction), with every decision of
        their ids."""
        before = self.before_jd
        rows = [
            r
            for r in early
            if r[2] in _SETTLED
            and r[5] < before
            and (r[6] is None or r[6] < before)
            and r[0] != newest_msg
            and (r[2] != "forward" or (r[3] == 1 and r[1] not in self.queued))
        ]
        if not rows:
            return [], ([], [])
        ids = [str(r[1]) for r in rows]
        cur = self.live.execute(
            f"SELECT julianday(decided_at), * FROM decisions WHERE message_id IN ({_marks(len(ids))})", ids
        )
        cols = [d[0] for d in cur.description][1:]
        decided = cur.fetchall()
        seq_at, mid_at, action_at = (1 + cols.index(c) for c in ("seq", "message_id", "action"))
        # per message id: the time of its latest decision, and its latest decision (by number)
        latest: dict[str, float | None] = {}
        last: dict[str, tuple[Any, ...]] = {}
        for d in decided:
            mid = str(d[mid_at])
            at = latest.get(mid)
            latest[mid] = d[0] if at is None or (d[0] is not None and d[0] > at) else at
            if mid not in last or d[seq_at] > last[mid][seq_at]:
                last[mid] = d
        take = []
        for r in rows:
            mid = str(r[1])
            if mid not in last:
                ok = r[2] == "observed"
            else:
                when, newest = latest[mid], last[mid]
                ok = (
                    when is not None
                    and when < before
                    and newest[seq_at] != newest_dec
                    and _DISPOSITION.get(str(newest[action_at])) == r[2]
                )
            if ok:
                take.append(r)
        chosen = {str(r[1]) for r in take}
        return take, (cols, [d[1:] for d in decided if str(d[mid_at]) in chosen])

    def _chunk(self, take: list[Any], decisions: _Rows) -> _Chunk | None:
        """The rows of the messages ``take`` (window rows) with ``decisions`` (all the decisions of their
        ids), their operator releases and routes (None when nothing is left to move)."""
        if not take:
            return None
        live = self.live
        seqs, ids = [int(r[0]) for r in take], [str(r[1]) for r in take]
        messages = _rows(live, f"SELECT * FROM messages WHERE seq IN ({_marks(len(seqs))})", seqs)
        dseqs = [int(d[decisions[0].index("seq")]) for d in decisions[1]]
        releases: _Rows = (
            _rows(
                live, f"SELECT * FROM operator_releases WHERE decision_seq IN ({_marks(len(dseqs))})", dseqs
            )
            if dseqs and self.has_releases
            else ([], [])
        )
        routes: _Rows = ([], [])
        if self.routes_from is not None:
            with contextlib.suppress(sqlite3.OperationalError):  # no routes table in that store
                routes = _rows(
                    self.routes_from, f"SELECT * FROM routes WHERE message_id IN ({_marks(len(ids))})", ids
                )
        return _Chunk(messages, decisions, releases, routes, seqs, ids, dseqs)

    def _write(self, moved: _Chunk) -> None:
        """Write the chunk's rows and its record (``last_chunk``) to the archive in ONE committed transaction;
        :class:`_Conflict` (nothing written) when the archive holds another row under one of its numbers."""
        arch = self.arch
        arch.execute("BEGIN IMMEDIATE")
        try:
            self._put(moved.messages, "messages", "seq", _IDENTITY)
            self._put(moved.decisions, "decisions", "seq", None)
            self._put(moved.releases, "operator_releases", "decision_seq", ("decision_seq", "message_id"))
            self._put_routes(moved.routes)
            record = {
                "before": self.before.isoformat(),
                "messages": moved.seqs,
                "decisions": moved.dseqs,
            }
            arch.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_chunk', ?)", (json.dumps(record),)
            )
            arch.execute("COMMIT")
        except BaseException:
            if arch.in_transaction:
                arch.execute("ROLLBACK")
            raise

    def _put(self, rows: _Rows, table: str, key: str, same: Sequence[str] | None) -> None:
        """INSERT ``rows`` into the archive's ``table``; a row the archive holds under the same ``key`` is
        kept when identical, replaced by this one when they agree on the columns ``same`` (None: must be
        identical), else :class:`_Conflict`."""
        cols, data = rows
        if not data:
            return
        at = cols.index(key)
        keys = [r[at] for r in data]
        sql = f"SELECT {','.join(cols)} FROM {table} WHERE {key} IN ({_marks(len(keys))})"
        held = {r[at]: tuple(r) for r in self.arch.execute(sql, keys)}
        fresh, replace = [], []
        check = [cols.index(c) for c in same] if same is not None else None
        for r in data:
            old = held.get(r[at])
            if old is None:
                fresh.append(r)
            elif old != tuple(r):
                if check is None or [old[i] for i in check] != [r[i] for i in check]:
                    raise _Conflict(table, r[at])
                replace.append(r)
        names, marks = ",".join(cols), _marks(len(cols))
        if fresh:
            self.arch.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", fresh)
        if replace:
            self.arch.executemany(f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})", replace)

    def _put_routes(self, rows: _Rows) -> None:
        """Each route row the archive does not hold yet (distinct rows: UNIQUE over every column)."""
        cols, data = rows
        if data:
            self.arch.executemany(
                f"INSERT OR IGNORE INTO routes ({','.join(cols)}) VALUES ({_marks(len(cols))})", data
            )

    def _delete_live(self, seqs: list[int], ids: list[str], dseqs: list[int]) -> None:
        """Delete these rows from the live store (inside its open transaction); its routes when they are there."""
        live = self.live
        if dseqs:
            if self.has_releases:
                live.execute(
                    f"DELETE FROM operator_releases WHERE decision_seq IN ({_marks(len(dseqs))})", dseqs
                )
            live.execute(f"DELETE FROM decisions WHERE seq IN ({_marks(len(dseqs))})", dseqs)
        live.execute(f"DELETE FROM messages WHERE seq IN ({_marks(len(seqs))})", seqs)
        if self.has_routes:
            live.execute(f"DELETE FROM routes WHERE message_id IN ({_marks(len(ids))})", ids)

    def _remember(self, before: datetime) -> None:
        """Record in the live store's ``meta`` (inside its open transaction, that of a delete) the latest
        cut-off archived and the file."""
        if self.remembered is not None and before <= self.remembered:
            return
        rows = _meta(self.live, ("archived_before", "archive_files"))
        latest = rows.get("archived_before")
        if latest is None or datetime.fromisoformat(latest) < before:
            latest = before.isoformat()
        files = json.loads(rows.get("archive_files", "[]"))
        where = str(self.archive_db.resolve())
        if where not in files:
            files.append(where)
        self.live.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            [("archived_before", latest), ("archive_files", json.dumps(files))],
        )
        self.remembered = before


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
