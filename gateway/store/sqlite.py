"""Embedded default state store on SQLite (WAL journal; group commit).

Durability
----------
- ``journal_mode=WAL``: readers (audit queries, the admin CLI) never block the writer, and a commit
  is one sequential append to the WAL instead of rewriting pages in place.
- ``synchronous=FULL`` (default): the WAL is fsync'ed at every commit, so a commit that returned
  survives an OS crash or power loss, not only a killed process. The gateway acknowledges a DUIS
  message only after its commit, so anything weaker could lose an acknowledged message: the DSP
  would not re-deliver it. ``synchronous="NORMAL"`` is accepted for deployments that prefer speed
  and accept losing the last transactions on power loss (still safe against process crashes).
  The cost of the fsync is paid once per *batch*: callers group many messages into one commit.
- WAL checkpoints are taken off the commit path: the committing connection does not checkpoint after
  every commit (``wal_autocheckpoint=0``); a background thread with its own connection runs a PASSIVE
  checkpoint every ``checkpoint_interval`` seconds (it never blocks the writer). In a benchmark of
  batched AD1 decisions this is worth +15–19 % (docs/PERFORMANCE-engine.md). In-memory databases and
  ``checkpoint_interval=0`` keep SQLite's automatic checkpoints instead.
- The WAL stays bounded under sustained load. SQLite starts the WAL over from its beginning only when a
  write transaction begins while *every* frame has been copied back into the database. Under sustained
  traffic a commit always lands while the background checkpoint runs, so that never happens by itself:
  the WAL grew without end (200 MB in 8 s at 1,000 msg/s). When a background checkpoint finds more than
  ``wal_restart_frames`` frames in the WAL (it has not started over since it grew that far), the writer
  copies back the few frames committed meanwhile right after its next COMMIT (a PASSIVE checkpoint on
  its own connection, between two of its transactions), so its next transaction starts the WAL over.
  The WAL file thus stays under the bound plus what one checkpoint interval writes (35 MB at 1,000 msg/s
  in the gateway benchmark). A file that grew far past that (a reader held it back) is cut back to 16
  times the bound (256 MiB) when it starts over (``journal_size_limit``).
- Every write since the last :meth:`commit` is buffered in memory and written in ONE transaction
  at commit (``executemany`` per table, state changes coalesced by key), so a batch is atomic:
  after a crash the database is exactly the last commit.
- The database's files are watched (:class:`StoreFiles`): SQLite does not notice when its ``-wal`` or
  ``-shm`` file is deleted, or the database file replaced, under open connections (an operator's mistake);
  they go on writing into files no restart will find. A commit that finds it out (before it begins, after it
  commits) or the checkpoint thread saves what was committed (a checkpoint into the database file, or a copy
  of the replaced one beside it) and from then on every commit fails with :class:`StoreFilesChanged`.

Tables: ``messages`` (every accepted message: ORIGINAL bytes, status, delivery, and the engine's
idempotency key for it; the parsed event only while it is undecided), ``decisions`` (append-only
audit: action, reason, full decision JSON with its evidence), ``engine_state`` (the engine's other
records by table and key), ``operator_releases`` (each operator release, by its decision row, and
whether the gateway has *taken it in*: see :meth:`SqliteStore.operator_releases`), ``meta`` (schema
version). A message decided in the batch that accepted
it costs one ``messages`` row and one ``decisions`` row (plus a ``suppressed`` record when it is
suppressed): see docs/PERFORMANCE-engine.md for what this bought.

``messages`` and ``decisions`` are never pruned (the audit record; ``duisgw audit archive`` moves the settled
history into an archive file: :mod:`gateway.store.archive`). The reads that run at start-up or
every day therefore go through partial indexes that hold only what they look for, so their cost is
bounded by the engine's retention, not by the history: the messages still to decide or to put in the
outbox, the suppressions by decision time (``decisions_suppressed``: the daily export) and the paired
restorations (``decisions_paired``: ``duisgw audit release``). The idempotency keys are read through an
index by the instant each was seen (``messages_seen_time``): start-up reads the range within the
engine's retention. A key is not written when the engine prunes it (that rewrote an old message's row,
an uncached page, for every message two days after it): one entry per decided message, kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.engine.effects import Decision, Duplicate, Effect, Observed, StateChange, Table
from gateway.engine.errors import ReleasedMeanwhile, StoreError
from gateway.engine.events import UNSIGNED_MARK, MessageEvent
from gateway.engine.records import encode_tagged, from_record, to_record
from gateway.engine.state import RELEASED_NOTE, ClockRecord, Seen

if TYPE_CHECKING:
    from gateway.store.archive import ArchivedCopy

__all__ = [
    "FAILURE_REASONS",
    "ROUTES_SCHEMA",
    "SCHEMA_VERSION",
    "DecisionReader",
    "DecisionReads",
    "NoDecisionState",
    "SqliteStore",
    "StoreFiles",
    "StoreFilesChanged",
    "StoreHeldOff",
    "StoreObserver",
    "connect_read_only",
    "failure_reason",
    "julian_day",
    "unavailable",
]

log = logging.getLogger("duisgw.store")

SCHEMA_VERSION = "1"

#: WAL size (pages) past which the writer completes a checkpoint the background thread could not finish,
#: so that the WAL starts over (16 MiB of 4 KiB pages; see the module's Durability notes)
WAL_RESTART_FRAMES = 4096

_UNIX_EPOCH_JD = 2440587.5  # the Julian day number of 1970-01-01T00:00Z (SQLite's julianday())

#: the pipeline's routes (message id -> destination; ``GatewayProcessor``), in the transport store's database:
#: with ``[pipeline] state_in_store`` the decision state's too; archives (``gateway.store.archive``) keep them
ROUTES_SCHEMA = """CREATE TABLE IF NOT EXISTS routes (
    message_id TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    received_at TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID"""


def connect_read_only(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to the SQLite database at ``path`` (never creates it; any file name)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)


#: SQLite's primary result codes that say the database cannot be written now, whatever the transaction held:
#: BUSY and LOCKED (another connection's lock held past the busy timeout), NOMEM, READONLY, IOERR, CORRUPT,
#: FULL, CANTOPEN, PROTOCOL, NOTADB
_UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says that the store cannot record anything now (a lock held past ``busy_timeout``, the
    disk full, an I/O error, a read-only filesystem, its files deleted or replaced: :class:`StoreFilesChanged`),
    rather than something about what one transaction wrote. Retrying the same transaction's parts one by one
    cannot help then (and waits ``busy_timeout`` again for each)."""
    if isinstance(exc, StoreFilesChanged | StoreHeldOff):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(code, int) and (code & 0xFF) in _UNAVAILABLE_CODES
    return False


#: the bounded reasons a store transaction fails for (:func:`failure_reason`; the metrics' ``reason`` label)
FAILURE_REASONS = ("locked", "full", "io", "readonly", "corrupt", "files_changed", "other")

#: SQLite's primary result code -> :data:`FAILURE_REASONS` (BUSY, LOCKED, PROTOCOL: a lock; FULL; IOERR,
#: CANTOPEN, NOMEM: the system; READONLY; CORRUPT, NOTADB)
_REASON_OF_CODE = {5: "locked", 6: "locked", 15: "locked", 13: "full", 10: "io", 14: "io", 7: "io", 8: "readonly",
                   11: "corrupt", 26: "corrupt"}  # fmt: skip


def failure_reason(exc: BaseException) -> str:
    """Why a store transaction failed, as one of :data:`FAILURE_REASONS`: from ``exc`` or what it was raised
    from (a wrapper such as the service's ``StoreUnavailable`` keeps the SQLite error as its cause)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, StoreFilesChanged):
            return "files_changed"
        if isinstance(cur, sqlite3.Error):
            code = getattr(cur, "sqlite_errorcode", None)
            if isinstance(code, int) and (code & 0xFF) in _REASON_OF_CODE:
                return _REASON_OF_CODE[code & 0xFF]
        cur = cur.__cause__ or cur.__context__
    return "other"


class StoreObserver(Protocol):
    """What a :class:`SqliteStore` tells about its own health (the service's metrics): called on the thread
    that did it (the writer's, or the checkpoint thread's), so it must be cheap and thread-safe."""

    def committed(self, seconds: float) -> None:
        """A transaction that wrote committed, in ``seconds`` (from its BEGIN to its COMMIT's return)."""

    def failed(self, exc: BaseException) -> None:
        """A transaction (or :meth:`SqliteStore.begin`, :meth:`SqliteStore.writable`) failed with ``exc``."""

    def checkpointed(self, seconds: float) -> None:
        """A background checkpoint round took ``seconds``."""

    def checkpoint_failed(self, exc: BaseException) -> None:
        """A background checkpoint round failed with ``exc``."""


class NoDecisionState(StoreError):
    """A file that holds no decision state (no ``messages`` and ``decisions`` tables: empty, or a store the
    gateway has not written yet): :class:`DecisionReader`."""


class StoreHeldOff(StoreError):
    """A batch refused at once, before anything is decided: the store failed again right after the engine was
    rebuilt (a fault its one-page probe does not show, e.g. the disk full), so the engine is not rebuilt again
    before a hold-off (:class:`gateway.store.durable.DurableEngine`)."""


class StoreFilesChanged(StoreError):
    """A file of the database (itself, its ``-wal``, its ``-shm``) was deleted or replaced while open: see
    :class:`StoreFiles`. Nothing is recorded any more until the gateway is restarted."""


def _file_id(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the file at ``path``; None when there is none (other errors are raised)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class StoreFiles:
    """The files of one SQLite database in WAL mode — the database, its ``-wal``, its ``-shm`` — as they were
    when it was opened: finds out when one of them is deleted or replaced under the open connections (an
    operator's mistake: ``rm *.sqlite3-wal``, an old copy restored over the database with ``mv``).

    SQLite does not notice. Its connections go on committing into the files they have open, which no other
    process (``duisgw audit``) and no restart will find, and a connection that opens the WAL afterwards (the
    checkpoint thread's, before its first round) finds another file or none, so nothing is checkpointed any
    more: a crash then loses every commit since. So the first one to find it (:meth:`check`: a commit, before it
    begins and after it committed, or the checkpoint thread) saves what the connections committed, on a
    connection opened on the original files — a checkpoint into the database file when it is still the one
    opened, else a copy of it (``VACUUM INTO``) beside it, ``NAME.orphaned-YYYYmmddTHHMMSSZ`` — logs it at
    ERROR, and every later :meth:`check` raises :class:`StoreFilesChanged` (503 ``store_unavailable``) until
    the gateway is restarted on the database. A commit that finds it after it committed raises too: it was not
    acknowledged, and what it wrote is in what was saved."""

    SUFFIXES = ("", "-wal", "-shm")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self._ids: dict[str, tuple[int, int] | None] = {}
        for suffix in self.SUFFIXES:
            try:
                self._ids[suffix] = _file_id(f"{self.path}{suffix}")
            except OSError:  # (cannot be told: not watched)
                self._ids[suffix] = None
        self.problem: str | None = None
        """What was deleted or replaced, once found (for good: the files are not taken back)."""
        self.saved = ""
        """Where what was committed was saved, once found (or why it could not be)."""
        self._lock = threading.Lock()

    def changed(self) -> str | None:
        """What was deleted or replaced since the database was opened; None while nothing was."""
        if self.problem is not None:
            return self.problem
        for suffix, was in self._ids.items():
            if was is None:
                continue
            try:
                now = _file_id(f"{self.path}{suffix}")
            except OSError:  # an I/O error is not a deletion (the store's own calls report it)
                continue
            if now != was:
                what = "deleted" if now is None else "replaced by another file"
                return f"{self.path.name}{suffix} was {what} while the gateway had it open"
        return None

    def check(self, conn: sqlite3.Connection) -> None:
        """Raise :class:`StoreFilesChanged` when a file of the database was deleted or replaced; the first time,
        save what was committed first, on ``conn`` (a connection that opened the original files, outside a
        transaction)."""
        if self.problem is None:
            found = self.changed()
            if found is None:
                return
            with self._lock:
                if self.problem is None:
                    self.saved = self._save(conn)
                    self.problem = found
                    log.error(
                        "store files changed under the gateway: %s; %s; nothing is recorded until it is "
                        "restarted on %s",
                        found,
                        self.saved,
                        self.path,
                        extra={"store": str(self.path)},
                    )
        raise StoreFilesChanged(f"{self.problem}; {self.saved}; restart the gateway")

    def _save(self, conn: sqlite3.Connection) -> str:
        try:
            if _file_id(str(self.path)) == self._ids[""]:  # the database file is still the one opened
                busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
                if busy or copied < frames:
                    return f"{copied} of {frames} WAL frames checkpointed into {self.path} (busy)"
                return f"everything committed is checkpointed into {self.path}"
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            target = self.path.with_name(f"{self.path.name}.orphaned-{stamp}")
            conn.execute("VACUUM INTO ?", (str(target),))
            return f"everything committed is copied to {target}"
        except (sqlite3.Error, OSError) as exc:
            pid = os.getpid()
            return (
                f"saving what was committed failed ({exc}): it is only in the files process {pid} has open "
                f"(/proc/{pid}/fd): copy them before it stops"
            )


#: separates an idempotency key's note from the digest of its message's bytes in ``messages.seen_note``
#: (:func:`_seen_note`): a control character XML 1.0 text cannot carry (a note carrying a message's verification
#: text may hold it all the same: :func:`_seen_note_parts` reads such a note back whole)
_DIGEST_SEP = "\x1f"
#: the reason an operator's release (:meth:`SqliteStore.release_suppressed`) writes in its message's row
_OPERATOR_RELEASE = "operator-release"
_HEX = frozenset("0123456789abcdef")


def _seen_note(seen: Seen) -> str:
    """``messages.seen_note`` of an idempotency key: its note, then, when its message's bytes have a digest
    (:attr:`Seen.digest`), the separator and the digest (kept in the note's column: the archive's tables copy
    the ``messages`` columns, so there is no column of its own); :func:`_seen_note_parts` reads it back."""
    note, digest = seen.note, seen.digest
    if digest is not None:
        return f"{note}{_DIGEST_SEP}{digest:024x}"
    return f"{note}{_DIGEST_SEP}" if _DIGEST_SEP in note else note


def _seen_note_parts(text: str | None) -> tuple[str, int | None]:
    """The note and the digest of a ``messages.seen_note`` (:func:`_seen_note`; a key written before digests were
    kept has none, and its note is the whole text: it may hold the separator, followed by anything)."""
    if not text:
        return "", None
    note, sep, digest = text.rpartition(_DIGEST_SEP)
    if not sep:
        return text, None
    if not digest:
        return note, None
    if len(digest) < 24 or not _HEX.issuperset(digest):  # (a digest is 24 or more lowercase hex digits)
        return text, None
    return note, int(digest, 16)


def julian_day(when: datetime) -> float:
    """``when`` (aware) as SQLite's ``julianday()`` reads its ISO-8601 text, whatever the text's offset."""
    return when.timestamp() / 86400.0 + _UNIX_EPOCH_JD


#: the ``messages`` table's columns; the archive (gateway/store/archive.py) keeps the same columns without the
#: message id's uniqueness (a message id archived in two lives keeps a row per life)
MESSAGES_COLUMNS = """
    seq INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL {unique},
    lane TEXT NOT NULL,
    kind TEXT NOT NULL,
    arrival TEXT NOT NULL,
    event TEXT,
    raw BLOB,
    status TEXT NOT NULL DEFAULT 'accepted',
    reason TEXT,
    decision_seq INTEGER,
    seen_at TEXT,
    seen_note TEXT,
    delivered INTEGER NOT NULL DEFAULT 0,
    updated TEXT
"""

#: the instant of a decision's ``decided_at`` in days (SQLite's ``julianday()``: the text's own offset applied), the key
#: of the index ``decisions_time``; NULL for a text ``julianday()`` does not read, and NULL without evaluating it for
#: every value that is not a text beginning with a digit. An index may not evaluate ``julianday()`` of a text that
#: names the current time: ``'now'`` (any case), and from SQLite 3.42 on ``'subsec'`` and ``'subsecond'``; also a
#: BLOB whose text, up to its first NUL, is one of those (``b'now\x00'``: ``length()`` counts its bytes). SQLite
#: refuses the insert of such a row (every batch holding it), and the build of the index over a log holding one
#: (the store's open). Every ISO-8601 text a gateway writes begins with its year's digits; a reader of the index
#: takes the NULL keys as "not known" and judges them as the walk does (:meth:`DecisionReads.latest_decisions`)
_DECIDED_DAY = "CASE WHEN typeof(decided_at) = 'text' AND decided_at GLOB '[0-9]*' THEN julianday(decided_at) END"
#: the index ``decisions_time`` exists from this version on (:meth:`DecisionReads.since_plan`)
TIME_INDEX = "decisions_time"
#: its definition; not in ``_SCHEMA``: built apart, by :func:`_build_time_index`, whose failure does not fail the open
_TIME_INDEX_DDL = f"CREATE INDEX IF NOT EXISTS {TIME_INDEX} ON decisions({_DECIDED_DAY})"

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages ("""
    + MESSAGES_COLUMNS.format(unique="UNIQUE")
    + """);
CREATE INDEX IF NOT EXISTS messages_outbox ON messages(seq) WHERE status = 'forward' AND delivered = 0;
CREATE INDEX IF NOT EXISTS messages_undecided ON messages(seq) WHERE status = 'accepted';
-- the idempotency keys by the instant they were seen: start-up reads those within the retention (a range of
-- this index, bounded by the retention while the table is not); a key is not written when it is pruned
DROP INDEX IF EXISTS messages_seen;
CREATE INDEX IF NOT EXISTS messages_seen_time ON messages(julianday(seen_at)) WHERE seen_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    event_time TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_message ON decisions(message_id);
-- suppressions by time (the daily export) and paired restorations (audit release): a few rows of a log
-- that is never pruned, and no entry for a forward
CREATE INDEX IF NOT EXISTS decisions_suppressed ON decisions(decided_at)
    WHERE action IN ('suppress', 'release-suppress');
CREATE INDEX IF NOT EXISTS decisions_paired ON decisions(seq) WHERE reason = 'restoration-paired';
-- (every decision by the instant of its decided_at, decisions_time: _build_time_index)
CREATE TABLE IF NOT EXISTS engine_state (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS operator_releases (
    decision_seq INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    taken_in INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS operator_releases_pending ON operator_releases(decision_seq) WHERE taken_in = 0;
"""
)

_STATUS = {"forward": "forward", "suppress": "suppress", None: "hold"}
_INSERT_MESSAGE = (
    "INSERT INTO messages(message_id, lane, kind, arrival, event, raw, status, reason, decision_seq, seen_at, "
    "seen_note, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_REDECIDED = (
    " ON CONFLICT(message_id) DO UPDATE SET event=excluded.event, status=excluded.status, reason=excluded.reason, "
    "decision_seq=excluded.decision_seq, seen_at=excluded.seen_at, seen_note=excluded.seen_note, "
    "updated=coalesce(excluded.updated, messages.updated), delivered=0"
)
_MESSAGE_COLUMNS = ("status", "reason", "decision_seq", "seen_at", "seen_note", "updated")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


#: A message's *life*: the engine decides an inline message once per life — ``suppress``, ``forward`` or
#: ``hold`` — and then only ``release-suppress`` / ``release-forward`` follow in that life (the end of its
#: hold, or an operator's release); a message id re-delivered after its retention is decided afresh, which
#: begins its next life. So each decision belongs to the life begun by the latest of those first actions at
#: or before it. The decision log alone says it: a re-decided message keeps ONE ``messages`` row (upserted),
#: and an archive may hold one row or two.
#: Decisions of a message id before its first such action (none the engine writes; a log written otherwise) are
#: one life of their own, begun by the first of them.
#: The rule in SQL, of the ``decisions`` row ``d``, each a correlated subquery through ``decisions_message``:
#:
#: - ``_LIFE``: its life, as the number of the decision that began it (NULL: before the first such action);
#: - ``_LIFE_END``: the number of the decision that begins its message id's next life (past every number:
#:   none), so that its life is its message id's decisions from the one that began it up to that one;
#: - ``_LIFE_BEGINS``: whether ``d`` begins a life (its first decision: what orders ``audit list``).
#:
#: Reading a life from its first decision on (``_LIFE_BEGINS``, ``_LIFE_END``) keeps the log's own order, so that
#: a listing is a stream that can stop after its first lines; grouping the log by ``_LIFE`` must read all of it
#: first (``audit list --limit 20``: 2.3 s at 500,000 decisions).
_LIFE_STARTS = "('suppress', 'forward', 'hold')"
_NO_SEQ = 9223372036854775807  # above every decision number (SQLite's largest integer)
_LIFE = (
    "(SELECT max(s.seq) FROM decisions s WHERE s.message_id = d.message_id AND s.seq <= d.seq "
    f"AND s.action IN {_LIFE_STARTS})"
)
_LIFE_END = (
    "coalesce((SELECT min(n.seq) FROM decisions n WHERE n.message_id = d.message_id AND n.seq > d.seq "
    f"AND n.action IN {_LIFE_STARTS}), {_NO_SEQ})"
)
_LIFE_BEGINS = (
    f"(d.action IN {_LIFE_STARTS} OR NOT EXISTS (SELECT 1 FROM decisions p WHERE p.message_id = d.message_id "
    "AND p.seq < d.seq))"
)
#: the number of the latest decision of the life of ``d`` (``_LIFE_END``)
_LIFE_LAST = (
    "(SELECT max(x.seq) FROM decisions x WHERE x.message_id = d.message_id AND x.seq >= d.seq "
    f"AND x.seq < {_LIFE_END})"
)
_SUPPRESSIONS = "('suppress', 'release-suppress')"
#: the number of the decision that began the life of the ``decisions`` row ``l`` (the one ``_LIFE_BEGINS`` takes
#: it at): the latest ``suppress``, ``forward`` or ``hold`` of its message id at or before it, else (a log written
#: otherwise) its message id's first decision
_LIFE_BEGUN = (
    "coalesce((SELECT max(s.seq) FROM decisions s WHERE s.message_id = l.message_id AND s.seq <= l.seq "
    f"AND s.action IN {_LIFE_STARTS}), (SELECT min(f.seq) FROM decisions f WHERE f.message_id = l.message_id))"
)
#: the decisions a ``--since`` may list, through ``decisions_time``: those whose instant is at or after the bound,
#: and those whose instant the index does not know (NULL: the reader judges them as the walk does)
_BY_TIME = (
    f"SELECT seq FROM decisions INDEXED BY {TIME_INDEX} WHERE {_DECIDED_DAY} >= ? "
    f"UNION ALL SELECT seq FROM decisions INDEXED BY {TIME_INDEX} WHERE {_DECIDED_DAY} IS NULL"
)
#: the index path pays while it reads at most this share of the log (1/4); past it the walk does, whose
#: reads are sequential and which can stop at ``--limit`` (the same rows either way)
_BY_TIME_SHARE = 4


def _json(value: Any) -> str:
    return _dumps(value)


def _time_index_current(db: sqlite3.Connection) -> bool | None:
    """Whether the store has ``decisions_time`` as this version defines it (``_DECIDED_DAY``); None: it has none."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (TIME_INDEX,)).fetchone()
    return None if row is None else _DECIDED_DAY in str(row[0])


def _build_time_index(db: sqlite3.Connection, path: Path) -> None:
    """Build the index by decision time (``decisions_time``: ``duisgw audit list --since``) of a store that has none
    (one an earlier version made), or has it by another definition (a build of this version's development, whose
    key ``INDEXED BY`` would not find): every decision in it, in ONE write transaction (2.2 s at 1,000,000
    decisions, holding the write lock). A build that fails (the lock held past ``busy_timeout`` by another writer,
    the disk full, an I/O error) is logged and the store opens without it: it is a shortcut of the audit's reads
    only (``list --since`` walks the log from its start without it, and says so), and the gateway must start
    whatever it costs; the next open tries again."""
    current = _time_index_current(db)
    if current:
        return
    try:
        if current is not None:
            db.execute(f"DROP INDEX IF EXISTS {TIME_INDEX}")
        db.execute(_TIME_INDEX_DDL)
    except sqlite3.Error as exc:  # (the statement's own transaction rolled back)
        log.warning(
            "decision store %s: its index by decision time (%s) was not built (%s): `duisgw audit list --since` "
            "reads the log from its start until an open of the store builds it",
            path,
            TIME_INDEX,
            exc,
            extra={"store": str(path)},
        )


def _latest_filters(where: list[str], params: list[Any], actions: Sequence[str] | None, reason: str | None) -> None:
    """The ``--decision`` and ``--reason`` conditions on a life's latest decision ``l`` (``latest_decisions``: the walk's
    and the index's alike), added to ``where`` and ``params``."""
    if actions is not None:
        where.append(f"l.action IN ({','.join('?' * len(actions))})")
        params.extend(actions)
    if reason is not None:
        where.append("l.reason = ?")
        params.append(reason)


def _archived_forward(files: Sequence[Path], message_id: str, raw: bytes) -> ArchivedCopy | None:
    """The first forwarded row of ``message_id`` holding ``raw`` in the archive ``files`` (an
    :class:`gateway.store.archive.ArchivedCopy`), None when there is none; ``ArchiveUnreadable`` (a
    :class:`StoreError`) when a file cannot be read."""
    if not files:
        return None
    from gateway.store.archive import archived_copies  # (archive.py builds on this module)

    return next((c for c in archived_copies(files, message_id, raw) if c.status == "forward"), None)


class DecisionReads:
    """The reads of the decision state (``duisgw audit``): :class:`SqliteStore`'s, and :class:`DecisionReader`'s
    on a read-only connection. Queries only: no write, no transaction."""

    path: Path

    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def original_bytes(self, message_id: str) -> bytes | None:
        row = self._conn().execute("SELECT raw FROM messages WHERE message_id=?", (message_id,)).fetchone()
        return None if row is None else row[0]

    def status(self, message_id: str) -> str | None:
        row = self._conn().execute("SELECT status FROM messages WHERE message_id=?", (message_id,)).fetchone()
        return None if row is None else str(row[0])

    def latest_decision(self, message_id: str) -> dict[str, Any] | None:
        """The latest decision row of ``message_id`` (as :meth:`audit` rows), or None."""
        row = self._conn().execute(
            "SELECT seq, record FROM decisions WHERE message_id=? ORDER BY seq DESC LIMIT 1", (message_id,)
        ).fetchone()
        return None if row is None else {"seq": row[0], **json.loads(row[1])}

    def paired_restorations(self, outage_id: str) -> list[str]:
        """The messages still suppressed that a suppression paired, as restoration alerts, with the outage
        ``outage_id`` (reason ``restoration-paired``, evidence ``suppressed-outage`` naming it), in decision
        order (``duisgw audit release`` releases them after it). Reads the decision log once (it has no
        index by evidence; the text filter leaves only this outage's rows to parse)."""
        cur = self._conn().execute(
            "SELECT d.message_id, d.record FROM decisions d JOIN messages m ON m.message_id = d.message_id "
            "WHERE d.reason = 'restoration-paired' AND d.action IN ('suppress', 'release-suppress') "
            "AND m.status = 'suppress' AND instr(d.record, ?) > 0 ORDER BY d.seq",
            (_json(outage_id),),
        )
        found: list[str] = []
        for mid, record in cur:
            evidence = json.loads(record).get("evidence") or []
            paired = any(
                isinstance(e, dict)
                and e.get("role") == "suppressed-outage"
                and e.get("message_id") == outage_id
                for e in evidence
            )
            if paired and mid not in found:
                found.append(str(mid))
        return found

    def audit(self, message_id: str | None = None) -> list[dict[str, Any]]:
        db = self._conn()
        if message_id is None:
            rows = db.execute("SELECT seq, record FROM decisions ORDER BY seq").fetchall()
        else:
            rows = db.execute(
                "SELECT seq, record FROM decisions WHERE message_id=? ORDER BY seq", (message_id,)
            ).fetchall()
        return [{"seq": seq, **json.loads(rec)} for seq, rec in rows]

    def has_time_index(self) -> bool:
        """Whether the decision log has its index by decision time (``decisions_time``) as this version defines it
        (made when a store an earlier version wrote is first opened read-write by this version: the gateway,
        ``duisgw audit release``, ``replay --state``; not ``audit archive``, which opens the live store with a plain
        connection; :func:`_build_time_index`). A read-only reader cannot make it."""
        return bool(_time_index_current(self._conn()))

    def since_plan(self, since: datetime) -> Literal["index", "walk", "no-index"]:
        """How :meth:`latest_decisions` reads a ``since`` listing best: ``index`` (``by_time``) while the decisions
        at or after ``since`` (and those the index cannot date) are at most a quarter of the log, counted through
        the index up to that bound; ``walk`` past it (or on an empty log); ``no-index`` when the store has no index
        by decision time (:meth:`has_time_index`): the walk, from the log's start. The rows are the same."""
        if not self.has_time_index():
            return "no-index"
        db = self._conn()
        # (each its own statement: both in one would scan the table, a lone one is one descent of its b-tree)
        (low,) = db.execute("SELECT min(seq) FROM decisions").fetchone()
        (high,) = db.execute("SELECT max(seq) FROM decisions").fetchone()
        if low is None or high is None:
            return "walk"
        bound = max(1, (int(high) - int(low) + 1) // _BY_TIME_SHARE)
        (found,) = db.execute(
            f"SELECT count(*) FROM ({_BY_TIME} LIMIT ?)", (julian_day(since) - 1.0 / 86400, bound)
        ).fetchone()
        return "index" if int(found) < bound else "walk"

    def latest_decisions(
        self,
        *,
        actions: Sequence[str] | None = None,
        reason: str | None = None,
        since: datetime | None = None,
        by_time: bool = False,
    ) -> Generator[dict[str, Any], None, None]:
        """The latest decision row of every life of every decided message (``_LIFE``: a message id re-delivered
        after its retention and decided afresh has two), in the order of each life's first decision, as
        :meth:`audit` rows, read as a stream (``duisgw audit list``): one statement (one consistent snapshot)
        whose memory does not grow with the log, which is never pruned. ``actions`` and ``reason`` keep only
        the rows whose latest decision has one of those actions and that reason; ``since`` those whose latest
        decision's ``decided_at`` may be at or after it (a necessary condition, to the second: the caller
        compares the exact time, as it did without it; a time SQLite does not read is kept for it to judge).

        The statement walks the log in its order from its first decision, and takes each life at the decision
        that began it (``_LIFE_BEGINS``), its latest decision through ``decisions_message`` (``_LIFE_LAST``):
        no sort and no grouping of the log, so the first rows come at once and a reader that stops early
        (``audit list --limit``) reads no further than the rows it took (closing the generator ends the
        statement). With a filter it reads on until enough rows match.

        ``by_time`` (with ``since``; the store has ``decisions_time``: :meth:`since_plan`): the same rows in the same
        order without the walk. The index gives the decisions whose instant may be at or after ``since`` (the same
        bound; with those it cannot date), each one that is the latest of its life (``_LIFE_LAST`` of the decision
        that began it, ``_LIFE_BEGUN``) is taken with the same filters, and they are sorted by the number of that
        first decision: one sort of what the span holds, and no read of the log before it."""
        if by_time and since is not None:
            yield from self._latest_by_time(actions, reason, since)
            return
        where = [_LIFE_BEGINS]
        params: list[Any] = []
        _latest_filters(where, params, actions, reason)
        if since is not None:
            # julianday(): the instant of an ISO-8601 text with its offset, in days (a double: 1 s below it covers
            # its rounding); NULL for a text it does not read
            where.append("(julianday(l.decided_at) IS NULL OR julianday(l.decided_at) >= ?)")
            params.append(julian_day(since) - 1.0 / 86400)
        cur = self._conn().execute(
            f"SELECT l.seq, l.record FROM decisions d CROSS JOIN decisions l ON l.seq = {_LIFE_LAST} "
            f"WHERE {' AND '.join(where)} ORDER BY d.seq",
            params,
        )
        for seq, rec in cur:
            yield {"seq": seq, **json.loads(rec)}

    def _latest_by_time(
        self, actions: Sequence[str] | None, reason: str | None, since: datetime
    ) -> Generator[dict[str, Any], None, None]:
        """:meth:`latest_decisions` of ``since`` through ``decisions_time`` (``by_time``)."""
        bound = julian_day(since) - 1.0 / 86400
        # the walk's own conditions on the life's first decision ``d`` and its latest ``l``, verbatim
        where = [_LIFE_BEGINS, f"l.seq = {_LIFE_LAST}", "(julianday(l.decided_at) IS NULL OR julianday(l.decided_at) >= ?)"]
        params: list[Any] = [bound, bound]
        _latest_filters(where, params, actions, reason)
        cur = self._conn().execute(
            f"SELECT l.seq, l.record FROM ({_BY_TIME}) c CROSS JOIN decisions l ON l.seq = c.seq "
            f"CROSS JOIN decisions d ON d.seq = {_LIFE_BEGUN} WHERE {' AND '.join(where)} ORDER BY d.seq",
            params,
        )
        for seq, rec in cur:
            yield {"seq": seq, **json.loads(rec)}

    def archive_files(self) -> list[Path]:
        """The archive files ``duisgw audit archive`` moved rows of this store to (``meta.archive_files``), in the
        order of their first runs; none for a store never archived (or an archive itself)."""
        try:
            row = self._conn().execute("SELECT value FROM meta WHERE key = 'archive_files'").fetchone()
        except sqlite3.OperationalError:  # no meta table (a log another tool wrote)
            return []
        return [] if row is None else [Path(str(f)) for f in json.loads(row[0])]

    def life_suppression(self, message_id: str) -> dict[str, Any] | None:
        """The suppression decision (``suppress``, or the ``release-suppress`` that ended its hold) of the current
        life of ``message_id`` (``_LIFE``: the life of its latest decision), as an :meth:`audit` row; None when
        that life has none. Names the life an operator release is made on (``duisgw audit release`` on shared
        state)."""
        row = self._conn().execute(
            f"SELECT d.seq, d.record FROM decisions d WHERE d.message_id = ? AND d.action IN {_SUPPRESSIONS} "
            f"AND {_LIFE} IS (SELECT max(s.seq) FROM decisions s WHERE s.message_id = ? "
            f"AND s.action IN {_LIFE_STARTS}) ORDER BY d.seq LIMIT 1",
            (message_id, message_id),
        ).fetchone()
        return None if row is None else {"seq": row[0], **json.loads(row[1])}

    def first_suppressions(self, low: str, high: str) -> Iterator[tuple[dict[str, Any], str]]:
        """Each suppression of a message's life (``_LIFE``: its ``suppress`` or ``release-suppress``
        decision, at most one a life; a message id re-delivered after its retention and suppressed afresh has
        one per life) whose ``decided_at`` text is in ``[low, high)`` (ISO-8601 texts compared as text: the
        caller widens the range by a day each side for the time zone offsets and checks the exact time), with
        that life's latest action (an operator release belongs to the life it was made on), in decision order,
        read as a stream. :meth:`suppression_lives` with the latest action alone."""
        for first, latest in self.suppression_lives(low, high):
            yield first, str(latest["action"])

    def suppression_lives(self, low: str, high: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """:meth:`first_suppressions` with the life's latest decision row itself (as :meth:`audit` rows; the
        suppression's own row when nothing followed it in its life; an operator release's carries its
        ``operator``, ``note`` and ``decided_at``), read as a stream in ONE statement (``duisgw audit
        export``): the suppressions through ``decisions_suppressed``, each one's latest decision of its life
        through ``decisions_message`` and then by its number (``CROSS JOIN``: the suppressions stay the
        outer loop, never the whole log)."""
        cur = self._conn().execute(
            "SELECT d.seq, d.record, l.seq, l.action, l.record FROM decisions d CROSS JOIN decisions l "
            f"ON l.seq = {_LIFE_LAST} "
            f"WHERE d.action IN {_SUPPRESSIONS} AND d.decided_at >= ? AND d.decided_at < ? "
            "ORDER BY d.seq",
            (low, high),
        )
        for seq, rec, last, action, last_rec in cur:
            first = {"seq": seq, **json.loads(rec)}
            latest = first if last == seq else {"seq": last, **json.loads(last_rec)}
            yield first, {**latest, "action": str(action)}


class DecisionReader(DecisionReads):
    """The decision state of ``path`` (a gateway's decision store, or an archive of one) through a read-only
    connection (:func:`connect_read_only`, ``mode=ro``: it sees the commits still in the ``-wal``, as any reader,
    and writes nothing: no journal mode, no schema, no checkpoint, and no checkpoint of the ``-wal`` into the
    database when it closes). For the read commands of ``duisgw audit``, beside a running gateway or on a stopped
    one's files. A file that holds no decision state (no ``messages`` and ``decisions`` tables, e.g. empty)
    (:class:`NoDecisionState`) or another schema version: :class:`StoreError`."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        db = connect_read_only(self.path, busy_timeout)
        try:
            tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"messages", "decisions"} <= tables:
                raise NoDecisionState(f"no decision state at {self.path} (it holds no decision tables)")
            meta = "meta" in tables
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() if meta else None
            if row is not None and row[0] != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {row[0]}, this gateway reads {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is closed")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> DecisionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteStore(DecisionReads):
    """SQLite implementation of :class:`gateway.store.base.StateStore` (one writer per file).

    The engine's idempotency keys (``Table.SEEN``) are not a separate table: they are the
    ``seen_at`` / ``seen_note`` / ``decision_seq`` columns of the message they belong to (written in
    the same row insert as the message, so one row per message and one audit row per decision)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        checkpoint_interval: float = 1.0,
        connection: sqlite3.Connection | None = None,
        busy_timeout: float = 5.0,
        wal_restart_frames: int = WAL_RESTART_FRAMES,
        files: StoreFiles | None = None,
    ) -> None:
        """Open ``path``; or, with ``connection``, keep the tables in the database of a connection someone
        else owns (the transport store's, ``[pipeline] state_in_store``): its owner set its journal mode
        and closes it, and the caller uses this store only on the owner's thread. The stricter
        ``synchronous`` of the owner's and this one is applied to the shared connection, and its WAL
        checkpoints move off the commit path here too (restored to SQLite's automatic ones on close).
        ``busy_timeout``: seconds a write waits for another process's lock (``[store] busy_timeout`` for
        ``duisgw audit release``, which writes beside a running gateway) before ``database is locked``.
        ``wal_restart_frames``: the WAL size (in pages) past which the writer completes a checkpoint the
        background thread could not, so that the WAL starts over (see the module's Durability notes).
        ``files``: the watch on the database's files of the connection's owner (:class:`StoreFiles`); a store
        that opens its own connection watches its files itself."""
        if synchronous not in ("FULL", "NORMAL"):
            raise StoreError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._wal_restart_frames = max(1, wal_restart_frames)
        #: set by the checkpoint thread when it found the WAL over ``wal_restart_frames``: the writer
        #: completes that checkpoint after its next commit (see :meth:`commit`)
        self._wal_restart_due = False
        #: checkpoints the writer completed so that its next transaction starts the WAL over (tests)
        self.wal_restarts = 0
        #: told of every commit, failure and checkpoint round (the service's metrics); set by its owner
        self.observer: StoreObserver | None = None
        #: a write transaction :meth:`begin` opened for the next :meth:`commit`, and how long its BEGIN took
        self._open = False
        self._begin_seconds = 0.0
        self._borrowed = connection is not None
        if connection is None:
            db = sqlite3.connect(
                str(self.path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
        else:
            db = connection
            if synchronous == "FULL":  # never weaken the owner's setting: only raise it
                db.execute("PRAGMA synchronous=FULL")
        self._db: sqlite3.Connection | None = db
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {row[0]}, this gateway reads {SCHEMA_VERSION}")
        _build_time_index(db, self.path)
        self._db_checkpointed = False
        on_disk = str(path) not in ("", ":memory:") and not str(path).startswith("file::memory:")
        self._files = files if files is not None or not on_disk or self._borrowed else StoreFiles(self.path)
        if checkpoint_interval > 0 and on_disk:
            # the checkpoint thread's connection reads once here, so that it opens the -wal now, while it is
            # surely this database's (a connection opening it later may find another file: StoreFiles)
            checkpointer = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            try:
                checkpointer.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except BaseException:
                checkpointer.close()
                raise
            db.execute("PRAGMA wal_autocheckpoint=0")
            # a WAL that starts over after it grew far past the restart bound (a long reader held it back)
            # is cut back to 16 times the bound; not to the bound itself: the WAL passes it by up to one
            # checkpoint interval of commits before each restart, and a file cut and grown again every time
            # costs more than it saves
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
            db.execute(f"PRAGMA journal_size_limit={16 * self._wal_restart_frames * (page + 24) + 32}")
            self._db_checkpointed = True
            self._checkpointer = threading.Thread(
                target=self._checkpoints,
                args=(checkpointer, checkpoint_interval),
                name="sqlite-checkpoint",
                daemon=True,
            )
            self._checkpointer.start()
        self._reset()

    def _checkpoints(self, conn: sqlite3.Connection, interval: float) -> None:
        """Background PASSIVE checkpoints on a connection of their own (never blocks the writer). Not into a
        database whose files were deleted or replaced meanwhile: then it saves what was committed, once
        (:meth:`StoreFiles.check`), and checkpoints no more."""
        files = self._files
        try:
            while not self._stop_checkpoints.wait(interval):
                if files is not None and files.changed() is not None:
                    with contextlib.suppress(StoreFilesChanged):
                        files.check(conn)
                    continue
                began = time.perf_counter()
                try:
                    _busy, log, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    if not self._stop_checkpoints.is_set():
                        self._tell("checkpoint_failed", exc)
                    continue  # busy or closing: the next round checkpoints
                self._tell("checkpointed", time.perf_counter() - began)
                if log > self._wal_restart_frames:  # (counted from the WAL's last start)
                    self._wal_restart_due = True  # commits land meanwhile: the writer completes it
        finally:
            conn.close()

    def _tell(self, what: str, arg: Any) -> None:
        """Tell the observer (if any) ``what`` happened; an observer's own failure never fails the store."""
        observer = self.observer
        if observer is None:
            return
        try:
            getattr(observer, what)(arg)
        except Exception:  # (a metric is never worth a failed commit)
            log.exception("store observer failed", extra={"store": str(self.path)})

    def _failed(self, exc: BaseException) -> None:
        # (a refusal of what was decided, an operator release having changed it meanwhile, is not a store fault)
        if not isinstance(exc, ReleasedMeanwhile):
            self._tell("failed", exc)

    # ------------------------------------------------------------------ transactions

    def begin(self) -> None:
        """Open the next :meth:`commit`'s write transaction now, before the caller decides what it will write:
        the database's files are checked and ``BEGIN IMMEDIATE`` takes the write lock, so a store that cannot
        record now for those reasons (its files deleted or replaced, another process's lock held past
        ``busy_timeout``) fails here, before anything is decided, and the caller has nothing to undo
        (:class:`gateway.store.durable.DurableEngine`). :meth:`commit` commits it, :meth:`rollback` rolls it back.
        Nothing to do while one is open."""
        if self._open:
            return
        db = self._conn()
        began = time.perf_counter()
        try:
            if self._files is not None:
                self._files.check(db)
            db.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._failed(exc)
            raise
        self._open = True
        self._begin_seconds = time.perf_counter() - began

    def writable(self) -> None:
        """Raise unless the store can record something now: its files as opened, and a write of one page (the
        database header's ``user_version``, set to the value it has) committed. A query alone would be answered
        from the page cache while the disk is full, read-only or failing. Costs one small commit (a sync):
        for after a failure, not for every batch."""
        if self._open:
            raise StoreError(f"{self.path}: writable() inside an open transaction")
        db = self._conn()
        files = self._files
        try:
            if files is not None:
                files.check(db)
            db.execute("BEGIN IMMEDIATE")
            try:
                (version,) = db.execute("PRAGMA user_version").fetchone()
                db.execute(f"PRAGMA user_version = {int(version)}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if files is not None:
                files.check(db)
        except BaseException as exc:
            self._failed(exc)
            raise

    # ------------------------------------------------------------------ buffering

    def _reset(self) -> None:
        # a batch's decisions are numbered from 0 here and get their place in the log at commit, inside
        # the write transaction (another writer, e.g. `duisgw audit release`, may append meanwhile)
        self._next_seq = 0
        # message id -> [lane, kind, arrival, event object, raw, {column: value}]
        self._new: dict[str, list[Any]] = {}
        self._upd: dict[str, dict[str, Any]] = {}
        self._audit: list[tuple[int, str, str, str, str, str | None, str]] = []
        self._state: dict[tuple[str, str], str | None] = {}
        self._decision_seq: dict[int, int] = {}
        self._taken_in: list[int] = []  # operator releases taken in (their decision numbers)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: store is closed")
        return self._db

    def accept(self, event: MessageEvent, raw: bytes | None) -> None:
        if event.message_id not in self._new:
            self._new[event.message_id] = [event.lane, event.kind, event.arrival.isoformat(), event, raw, {}]

    def decided_afresh(self, message_id: str) -> None:
        """The message accepted in this transaction (:meth:`accept`) was decided afresh, its idempotency key
        kept elsewhere (shared state, :class:`gateway.store.shared.SharedEngine`: the key is in Redis, no
        ``seen_at`` is written here): when its id has a row (re-delivered after its retention, a new life)
        the row takes the new decision and ``delivered = 0``, as one whose key is written here does
        (``_REDECIDED``); its first arrival and original bytes stay. Nothing for an id not accepted in this
        transaction."""
        new = self._new.get(message_id)
        if new is not None:
            new[5].setdefault("seen_at", None)  # (the upsert: seen_at, seen_note and decision_seq stay NULL)

    def _set(self, message_id: str, **columns: Any) -> None:
        new = self._new.get(message_id)
        target = new[5] if new is not None else self._upd.setdefault(message_id, {})
        target.update(columns)

    def apply(self, effects: Iterable[Effect], provenance: Mapping[str, str] | None = None) -> None:
        """Buffer ``effects`` (see :class:`StateStore`). ``provenance``: fields added to the audit record of
        each decision among them, on shared state (:class:`gateway.store.shared.SharedEngine`): ``decided_by``
        (the instance that took it) and, for a decision another instance took that this one recorded when a
        re-delivery reached it, ``recorded_as = "duplicate"``. The single-node gateway gives none."""
        extra = dict(provenance or {})
        for eff in effects:
            if isinstance(eff, Decision):
                seq = self._next_seq
                self._next_seq += 1
                self._decision_seq[id(eff)] = seq
                at = eff.decided_at.isoformat()
                self._audit.append(
                    (
                        seq,
                        eff.message_id,
                        eff.action.value,
                        eff.reason.value,
                        at,
                        None if eff.event_time is None else eff.event_time.isoformat(),
                        _json({**to_record(eff), **extra} if extra else to_record(eff)),
                    )
                )
                self._set(
                    eff.message_id, status=_STATUS[eff.disposition], reason=eff.reason.value, updated=at
                )
            elif isinstance(eff, StateChange):
                value = eff.value
                if eff.table is Table.SEEN:
                    if value is None:
                        # pruned (its retention passed): nothing to write. Start-up loads only the keys
                        # seen within the retention (load_engine_records), so a pruned key is never loaded
                        # again, and the prune does not rewrite an old message's row
                        continue
                    else:
                        assert isinstance(value, Seen)
                        ref = None if value.decision is None else self._decision_seq.get(id(value.decision))
                        if value.decision is not None and ref is None:
                            if value.note == RELEASED_NOTE:
                                # an operator release taken in (Engine.released_by_operator): the key keeps the
                                # decision its row refers to, and the release's own write of the row (reason
                                # operator-release: release_suppressed) is what load_engine_records reads the
                                # mark from, whether the release was taken in before a restart or not
                                continue
                            raise StoreError(
                                f"seen record of {eff.key!r} refers to a decision not applied here"
                            )
                        self._set(
                            eff.key,
                            seen_at=value.at.isoformat(),
                            seen_note=_seen_note(value),
                            decision_seq=ref,
                        )
                else:
                    self._state[(eff.table.value, eff.key)] = (
                        None if value is None else _json(to_record(value))
                    )
            elif isinstance(eff, Observed):
                self._set(eff.message_id, status="observed", reason=eff.note)
            elif isinstance(eff, Duplicate):
                new = self._new.get(eff.message_id)
                if new is not None and "status" not in new[5]:
                    # accepted here and answered with a kept decision: when its row is new, its id was never
                    # decided (the same bytes were, under their other id: docs/ENGINE.md §8), and it is taken in
                    # as a duplicate, not left to decide again at every start (``accepted``). (A row the id has
                    # already stays as it is: the insert does nothing.)
                    new[5].update(status="observed", reason="duplicate")

    def commit(self, also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Write everything buffered since the last commit in ONE transaction; ``also(conn)`` runs inside
        it, after the buffered writes and before COMMIT (other tables of the same database: the
        pipeline's routes and outbox rows), so that both are durable together or not at all."""
        db = self._conn()
        began, self._begin_seconds = self._begin_seconds, 0.0
        if not (self._new or self._upd or self._audit or self._state or self._taken_in) and also is None:
            if self._open:  # (begun, nothing to write: ends it, with no write and no sync)
                self._open = False
                try:
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            return
        files = self._files
        t0 = time.perf_counter()
        try:
            if not self._open:  # (else begun by begin(): files checked, write lock held)
                if files is not None:
                    files.check(db)  # (its files deleted or replaced: nothing more is recorded)
                db.execute("BEGIN IMMEDIATE")
            base = (
                int(db.execute("SELECT coalesce(max(seq), 0) + 1 FROM decisions").fetchone()[0])
                if self._audit
                else 0
            )
            if self._new:
                rows: list[tuple[Any, ...]] = []
                decided: list[tuple[Any, ...]] = []
                for mid, (lane, kind, arrival, event, raw, cols) in self._new.items():
                    status = cols.get("status", "accepted")
                    # the parsed event is only needed to decide again after a crash
                    text = _json(encode_tagged(event)) if status == "accepted" else None
                    ref = cols.get("decision_seq")
                    (decided if "seen_at" in cols else rows).append(
                        (mid, lane, kind, arrival, text, raw, status, cols.get("reason"),
                         None if ref is None else base + ref, cols.get("seen_at"), cols.get("seen_note"),
                         cols.get("updated"))
                    )  # fmt: skip
                if rows:  # not decided in this transaction (a re-delivery within the retention: the row stays)
                    db.executemany(_INSERT_MESSAGE + " ON CONFLICT(message_id) DO NOTHING", rows)
                if decided:
                    # decided (or observed) here: a message id whose row exists was re-delivered after its
                    # retention and decided afresh, so the row takes the new decision, its idempotency key
                    # (seen_at: loaded again at a restart) and, a new life, delivered = 0; its first arrival and
                    # original bytes stay (the decisions keep both lives' audit)
                    db.executemany(_INSERT_MESSAGE + _REDECIDED, decided)
            if self._upd:
                groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
                for mid, cols in self._upd.items():
                    names = tuple(c for c in _MESSAGE_COLUMNS if c in cols)
                    values = [
                        base + cols[c] if c == "decision_seq" and cols[c] is not None else cols[c]
                        for c in names
                    ]
                    groups.setdefault(names, []).append((*values, mid))
                for names, params in groups.items():
                    sets = ", ".join(f"{c}=?" for c in names)
                    db.executemany(f"UPDATE messages SET {sets} WHERE message_id=?", params)
            if self._audit:
                db.executemany(
                    "INSERT INTO decisions(seq, message_id, action, reason, decided_at, event_time, record) VALUES (?,?,?,?,?,?,?)",
                    [(base + seq, *rest) for seq, *rest in self._audit],
                )
            if self._state:
                deletes = [k for k, v in self._state.items() if v is None]
                upserts = [(t, k, v) for (t, k), v in self._state.items() if v is not None]
                if deletes:
                    db.executemany("DELETE FROM engine_state WHERE tbl=? AND key=?", deletes)
                if upserts:
                    db.executemany(
                        "INSERT OR REPLACE INTO engine_state(tbl, key, record) VALUES (?,?,?)", upserts
                    )
            if self._taken_in:
                db.executemany("UPDATE operator_releases SET taken_in=1 WHERE decision_seq=?",
                               [(seq,) for seq in self._taken_in])  # fmt: skip
            if also is not None:
                also(db)
            db.execute("COMMIT")
            if files is not None:
                files.check(db)  # committed into files deleted or replaced meanwhile: saved, not acknowledged
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._failed(exc)
            raise
        finally:
            self._reset()
            self._open = False
        self._tell("committed", time.perf_counter() - t0 + began)
        if self._wal_restart_due:
            self._restart_wal(db)

    def _restart_wal(self, db: sqlite3.Connection) -> None:
        """Copy back the frames committed since the checkpoint thread's last checkpoint (which found the
        WAL over ``wal_restart_frames``), between two of the writer's transactions, so that the writer's
        next transaction starts the WAL over (SQLite does so only when every frame is in the database).
        The thread has copied the rest: this is the pages of the commits that landed while it ran, and a
        database sync (13–14 ms measured, once per ~16 MiB of WAL). A checkpoint under way on the thread
        (busy) leaves it for the next commit; so does a reader still on an older snapshot (then there is
        nothing it may copy, and the attempt costs no sync)."""
        try:
            busy, log, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            return  # (e.g. locked by another process's checkpoint): the next commit tries again
        if not busy and copied >= log:
            self._wal_restart_due = False
            self.wal_restarts += 1

    def rollback(self) -> None:
        """Forget everything buffered since the last commit, and roll back the transaction :meth:`begin`
        opened, if one is open."""
        self._reset()
        if self._open:
            self._open = False
            self._begin_seconds = 0.0
            db = self._db
            if db is not None and db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")

    # ------------------------------------------------------------------ reading

    def load_engine_records(self, keep_for: timedelta) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """The engine's records; of the idempotency keys, those seen within ``keep_for`` (the engine's
        retention) before the engine's clock as stored.

        A pruned key is not written (:meth:`apply`), so its ``seen_at`` stays set; it is not loaded because
        the engine prunes a key seen at ``at`` once its clock reaches ``at + keep_for``, and the clock it
        restores is at least both the stored clock record and the latest key's ``seen_at``. The keys are
        read by the instant they were seen (``messages_seen_time``), whatever the offset of their text, so
        the read is bounded by the retention, not by the history."""
        db = self._conn()
        clock: float | None = None  # the stored clock, as a Julian day number (SQLite's julianday())
        for tbl, key, record in db.execute("SELECT tbl, key, record FROM engine_state"):
            rec = json.loads(record)
            if tbl == Table.CLOCK.value:
                clock = julian_day(from_record(ClockRecord, rec).now)
            yield tbl, key, rec
        (latest,) = db.execute(
            "SELECT max(julianday(seen_at)) FROM messages WHERE seen_at IS NOT NULL"
        ).fetchone()
        if latest is None:
            return
        floor = max(latest, clock or latest) - keep_for.total_seconds() / 86400.0
        seen = db.execute(
            "SELECT m.message_id, m.kind, m.seen_at, m.seen_note, d.record, m.reason FROM messages m "
            "LEFT JOIN decisions d ON d.seq = m.decision_seq "
            "WHERE m.seen_at IS NOT NULL AND julianday(m.seen_at) > ?",
            (floor,),
        )
        for mid, kind, at, text, decision, reason in seen:
            note, digest = _seen_note_parts(text)
            if reason == _OPERATOR_RELEASE and UNSIGNED_MARK in mid:
                # a message quarantined under its unsigned id and released by an operator since (its row says so
                # from the release's own transaction, :meth:`release_suppressed`): the DNO has its bytes, and the
                # same bytes signed later are its duplicate (docs/ENGINE.md §8), taken in or not before a restart
                note = RELEASED_NOTE
            record = {
                "message_id": mid,
                "event_kind": kind,
                "at": at,
                "note": note,
                "decision": None if decision is None else json.loads(decision),
                "digest": digest,
            }
            yield Table.SEEN.value, mid, record

    def undecided(self) -> list[dict[str, Any]]:
        rows = (
            self._conn().execute("SELECT event FROM messages WHERE status='accepted' ORDER BY seq").fetchall()
        )
        return [json.loads(r[0]) for r in rows]

    def undelivered(self) -> list[tuple[str, bytes | None]]:
        rows = (
            self._conn()
            .execute(
                "SELECT message_id, raw FROM messages WHERE status='forward' AND delivered=0 ORDER BY seq"
            )
            .fetchall()
        )
        return [(r[0], r[1]) for r in rows]

    def operator_releases(self) -> list[tuple[int, str, str]]:
        """The operator releases (:meth:`release_suppressed`, usually ``duisgw audit release`` in another
        process) the gateway has not taken in yet: ``(decision number, message id, event kind)``, oldest
        first. The gateway takes each in once (:meth:`take_in_operator_releases`, committed with what it
        does about it), so whatever it does once per release survives its restarts without repeating."""
        rows = (
            self._conn()
            .execute(
                "SELECT r.decision_seq, r.message_id, coalesce(m.kind, '') FROM operator_releases r "
                "LEFT JOIN messages m ON m.message_id = r.message_id WHERE r.taken_in = 0 ORDER BY r.decision_seq"
            )
            .fetchall()
        )
        return [(int(seq), str(mid), str(kind)) for seq, mid, kind in rows]

    def take_in_operator_releases(self, decision_seqs: Iterable[int]) -> None:
        """Flag these operator releases (by decision number) taken in, at the next :meth:`commit`."""
        self._taken_in.extend(decision_seqs)

    def released_not_taken_in(self, message_ids: Iterable[str]) -> list[str]:
        """Which of ``message_ids`` an operator released (:meth:`release_suppressed`) and the gateway has not
        taken in yet, sorted. Called inside :meth:`commit`'s write transaction (``BEGIN IMMEDIATE``, on this
        store's connection: :class:`gateway.store.durable.DurableEngine` does), it sees every release
        committed before that transaction began, and a release committing after it waits for it."""
        ids = sorted(set(message_ids))
        found: set[str] = set()
        db = self._conn()
        for at in range(0, len(ids), 500):
            chunk = ids[at : at + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT message_id FROM operator_releases WHERE taken_in = 0 AND message_id IN ({marks})",
                chunk,
            )
            found.update(str(r[0]) for r in rows)
        return sorted(found)

    @property
    def files(self) -> StoreFiles | None:
        """The watch on the database's files (its own, or its connection owner's); None for an in-memory one."""
        return self._files

    def uses(self, connection: sqlite3.Connection) -> bool:
        """Whether this store keeps its tables on ``connection`` (it was opened with it)."""
        return self._db is connection

    def flag_delivered_within(self, message_ids: Iterable[str]) -> None:
        """:meth:`mark_delivered` inside the transaction open on this store's connection (the one of
        :meth:`commit`'s ``also``: the forwards' outbox rows are written in the same transaction)."""
        params = [(m,) for m in message_ids]
        if params:
            self._conn().executemany("UPDATE messages SET delivered=1 WHERE message_id=?", params)

    def mark_delivered(self, message_ids: Iterable[str]) -> None:
        db = self._conn()
        if self._files is not None:
            self._files.check(db)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("UPDATE messages SET delivered=1 WHERE message_id=?", [(m,) for m in message_ids])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if self._files is not None:
            self._files.check(db)

    def release_suppressed(
        self,
        message_id: str,
        operator: str,
        note: str,
        at: datetime,
        provenance: Mapping[str, str] | None = None,
    ) -> bytes | None:
        """Queue a suppressed message for delivery; audited as ``release-forward`` / ``operator-release``.
        ``provenance``: fields added to the audit record, as :meth:`apply`'s (shared state: ``decided_by``,
        the instance the release was recorded on)."""
        db = self._conn()
        record = {
            "message_id": message_id,
            "action": "release-forward",
            "reason": "operator-release",
            "operator": operator,
            "note": note,
            "decided_at": at.isoformat(),
            **(provenance or {}),
        }
        # checked and numbered inside the write transaction: a running gateway (or another release) may
        # be writing too
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT status, raw FROM messages WHERE message_id=?", (message_id,)).fetchone()
            if row is None:
                raise StoreError(f"unknown message {message_id!r}")
            if row[0] != "suppress":
                raise StoreError(f"message {message_id!r} is {row[0]}, not suppressed")
            identity, mark, _digest = message_id.rpartition(UNSIGNED_MARK)
            if mark and row[1] is not None:
                # quarantined under its unsigned id: not when the same bytes were taken in since under their
                # verified id (decided afresh: forwarded, the DNO has them; suppressed, that one is the one to
                # release; held, decided under it). ``duisgw audit release`` says so before it writes; checked
                # here again, in the write transaction, for a gateway committing them in between
                twin = db.execute("SELECT status, raw FROM messages WHERE message_id=?", (identity,)).fetchone()
                if twin is not None and twin[1] == row[1]:
                    raise StoreError(
                        f"message {message_id!r} (quarantined: its signature did not verify): the same bytes were "
                        f"taken in since under their verified id {identity!r}, which is {twin[0]}; not released"
                    )
                # or moved by ``duisgw audit archive`` since (forwarded and delivered, its retention past): the DNO
                # has them. Read inside this transaction: a run's chunk commits the archive's copy before its live
                # delete, and that delete is in the live store before this transaction began or after it ended
                forwarded = _archived_forward(self.archive_files(), identity, bytes(row[1]))
                if forwarded is not None:
                    raise StoreError(
                        f"message {message_id!r} (quarantined: its signature did not verify): the same bytes were "
                        f"taken in since under their verified id {identity!r}, moved since to the archive: "
                        f"{forwarded}; not released"
                    )
            seq = int(db.execute("SELECT coalesce(max(seq), 0) + 1 FROM decisions").fetchone()[0])
            db.execute(
                "UPDATE messages SET status='forward', reason=?, delivered=0, updated=? WHERE message_id=?",
                (_OPERATOR_RELEASE, at.isoformat(), message_id),
            )
            db.execute(
                "INSERT INTO decisions(seq, message_id, action, reason, decided_at, event_time, record) VALUES (?,?,?,?,?,?,?)",
                (seq, message_id, "release-forward", "operator-release", at.isoformat(), None, _json(record)),
            )
            # for the gateway to take in (operator_releases): it counts the release and drops its record
            db.execute(
                "INSERT INTO operator_releases(decision_seq, message_id) VALUES (?, ?)", (seq, message_id)
            )
            # no longer a suppressed outage: its record is marked released (kept for its retention), so a
            # restoration of it is forwarded, not paired with it or with another outage of its hub (a running
            # gateway marks its in-memory record when it takes the release in: Engine.released_by_operator)
            kept = db.execute(
                "SELECT record FROM engine_state WHERE tbl=? AND key=?", (Table.SUPPRESSED.value, message_id)
            ).fetchone()
            if kept is not None:
                db.execute(
                    "UPDATE engine_state SET record=? WHERE tbl=? AND key=?",
                    (_json({**json.loads(kept[0]), "released": True}), Table.SUPPRESSED.value, message_id),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row[1] if row[1] is None else bytes(row[1])

    def messages(self) -> list[dict[str, Any]]:
        """Every kept message (id, lane, kind, status, reason, delivered, original bytes), in arrival order."""
        rows = (
            self._conn()
            .execute(
                "SELECT message_id, lane, kind, status, reason, delivered, raw FROM messages ORDER BY seq"
            )
            .fetchall()
        )
        keys = ("message_id", "lane", "kind", "status", "reason", "delivered", "raw")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def close(self) -> None:
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join(timeout=10)
            self._checkpointer = None
        if self._db is not None:
            if not self._borrowed:
                self._db.close()
            elif self._db_checkpointed:  # the owner goes on writing: SQLite's own checkpoints again
                with contextlib.suppress(sqlite3.Error):  # (unless the owner closed it first)
                    self._db.execute("PRAGMA wal_autocheckpoint=1000")
            self._db = None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
