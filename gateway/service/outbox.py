"""The durable store (SQLite, WAL), the per-destination outbox and the rejects table.

Theory of operation
-------------------
:class:`SqliteStore` owns ONE SQLite connection, used only from one dedicated thread. Writers
call ``await store.write(fn)``: ``fn(conn)`` runs in that thread inside its own SAVEPOINT, and
every ``fn`` queued while the previous transaction was committing is run in the *same*
transaction (group commit): one fsync serves many concurrent requests. ``write`` returns only
after COMMIT, so a returned value is durable (``synchronous = FULL`` survives power loss,
``NORMAL`` a process crash). An exception inside ``fn`` rolls back that ``fn`` alone and is
re-raised to its caller; an SQLite operational failure (locked, I/O error, disk full, closed)
fails the whole batch with :class:`~gateway.service.api.StoreUnavailable` (the ingress answers 503).
Every transaction — committed (timed from BEGIN to COMMIT's return) or failed, a write refused inside one
included — is told to :attr:`SqliteStore.observer` (the service's ``duisgw_store_…`` metrics), like the
decision state's own.
The database's files are watched (:class:`gateway.store.sqlite.StoreFiles`, :attr:`SqliteStore.files`):
once one was deleted or replaced under the open connection, what was committed is saved and every batch
fails with :class:`StoreUnavailable` until the gateway is restarted. :meth:`SqliteStore.probe` (``/readyz``)
commits a write of one page: whether the store can record anything now; :meth:`SqliteStore.busy_for` says how
long the job in progress on the store's thread has run (``/readyz`` answers from the last outcome while a job
holds the thread, within bounds: :mod:`gateway.service.app`).
*WAL checkpoints.* SQLite's automatic checkpoint (a PASSIVE checkpoint run by the COMMIT that leaves the WAL at
``wal_autocheckpoint`` pages or more, 1,000 by default) is run by the store itself, right after that commit, at
the same size: so it is timed and counted apart from the commit (the observer's ``checkpointed`` /
``checkpoint_failed``, ``duisgw_store_checkpoint_*{database="store"}``), and its failure is told (SQLite's own
dropped it). The WAL's size is read from the wal-index header (``-shm``: ``mxFrame``, a documented part of the
file format), one ``pread`` per transaction. With ``own_checkpoints=False`` (the decision state's store keeps
its tables in this database and checkpoints it from a thread of its own, off the commit path) SQLite's setting
is left as it is and the store runs none.
A component that needs its own transactions on this database lends the store's thread instead of
opening a second writer (``store.executor``, ``store.thread_connection()``): the decision pipeline runs
its engine there and writes a batch's outbox rows right after the batch's engine commit.

Atomic "decision + outbox rows" — the contract for the decision pipeline:

    def step(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO decisions ...", ...)      # the processor's own tables
        outbox.enqueue_in(conn, deliveries)                 # same transaction
    await store.write(step)                                 # durable when this returns

``outbox.enqueue_in`` may only be called inside a ``store.write`` function; the delivery workers
are woken after the commit (and, as a safety net, scan every ``poll_interval``). A processor that
keeps its state elsewhere uses ``await outbox.enqueue_many(deliveries)`` after recording its
decision: rows are keyed by ``(queue, message_id)`` and inserted with ``INSERT OR IGNORE``, so
replaying a decision after a crash never sends a message twice to the same queue (and a DCC
re-delivery of an already forwarded message is not forwarded again while the row is retained).

Outbox rows: one per (delivery, queue). A destination's queues are given by ``routes`` (e.g.
``http:dno-a`` and ``mqtt:dno-a``); each queue is delivered in ``seq`` order, one message at a
time, by :mod:`gateway.service.delivery`. Row states: ``pending`` → ``delivered`` | ``dead``;
dead letters stay in the table and can be re-queued (:meth:`Outbox.requeue_dead`; by an operator, from
another process: ``duisgw audit dead requeue``, :func:`requeue_dead_in`, which records who and why in
``outbox_requeues`` in the same transaction). A running gateway's delivery notices rows put back in
line by another process at its next scan (every ``poll_interval`` while its queue is idle).

The operator CLI (``duisgw audit``) reads and writes this database on a connection of its own with
the synchronous helpers :func:`dead_letters`, :func:`requeue_dead_in`, :func:`requeues`,
:func:`read_rejects` and :func:`read_reject` (each inside the caller's transaction, if any).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar

from gateway.service.api import Delivery, StoreUnavailable, UnknownDestination
from gateway.store.sqlite import StoreFiles, StoreFilesChanged, StoreObserver, unavailable

__all__ = [
    "REQUEUES_SCHEMA",
    "DeadLetter",
    "Outbox",
    "OutboxRow",
    "QueueStats",
    "RejectInfo",
    "RejectStore",
    "SqliteStore",
    "dead_letters",
    "purge_kept",
    "read_reject",
    "read_rejects",
    "requeue_dead_in",
    "requeues",
]

T = TypeVar("T")
log = logging.getLogger("duisgw.outbox")

#: the queue statistics (:meth:`Outbox.stats`): each reads one partial index, never the table's delivered rows
STATS_PENDING_SQL = "SELECT queue, COUNT(*), MIN(enqueued_at) FROM outbox WHERE state = 'pending' GROUP BY queue"
STATS_DEAD_SQL = "SELECT queue, COUNT(*) FROM outbox WHERE state = 'dead' GROUP BY queue"

#: a dead letter put back in line at its original position, its attempts forgotten (append the WHERE)
_REQUEUE = "UPDATE outbox SET state = 'pending', attempts = 0, refusals = 0, next_attempt_at = 0, done_at = NULL "

#: who put which dead letter back in line, when and why (``duisgw audit dead requeue``): one row per
#: outbox row re-queued, with its attempts and last error as they were, written in the same transaction
#: as the re-queue; append-only
REQUEUES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox_requeues (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        requeued_at TEXT NOT NULL,
        operator TEXT NOT NULL,
        note TEXT NOT NULL,
        seq INTEGER NOT NULL,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        destination TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        refusals INTEGER NOT NULL,
        last_error TEXT,
        dead_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_requeues_message ON outbox_requeues (message_id)",
)

#: most delivered rows one purge transaction deletes (:meth:`Outbox.purge_delivered`)
PURGE_CHUNK = 500

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        destination TEXT NOT NULL,
        body BLOB NOT NULL,
        metadata TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
        enqueued_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        refusals INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        done_at REAL,
        UNIQUE (queue, message_id)
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (queue, seq) WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS outbox_done ON outbox (done_at) WHERE state = 'delivered'",
    # dead letters per queue (the gauges, every few seconds; requeue): without it, counting them scanned the
    # whole table, delivered rows kept for the retention period included, on the store's one thread
    "CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (queue) WHERE state = 'dead'",
    """CREATE TABLE IF NOT EXISTS rejects (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at TEXT NOT NULL,
        lane TEXT NOT NULL,
        user TEXT,
        reason TEXT NOT NULL,
        detail TEXT,
        body BLOB NOT NULL
    )""",
    *REQUEUES_SCHEMA,
)


class _Upkeep(Generic[T]):
    """A write that is upkeep, not a request's (:func:`upkeep`)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[sqlite3.Connection], T]) -> None:
        self.fn = fn

    def __call__(self, conn: sqlite3.Connection) -> T:
        return self.fn(conn)


def upkeep(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """``fn`` marked as upkeep for :meth:`SqliteStore.write`: a delivery mark, a dead letter, a purge — rows the
    database has, rewritten or deleted — not a request's write (a reject, an observation, routes and outbox rows)."""
    return _Upkeep(fn)


P = ParamSpec("P")

#: the first field of SQLite's wal-index header (``-shm``, https://sqlite.org/walformat.html): its version
_WAL_INDEX_VERSION = 3007000
#: bytes read of the wal-index header: ``iVersion`` (offset 0) to ``mxFrame`` (offset 16, the WAL's valid
#: frames), each a 32-bit integer in the host's byte order
_WAL_INDEX_HEAD = 20


class _JobClock(ThreadPoolExecutor):
    """The store's one thread, which knows since when the job it runs has run (:meth:`SqliteStore.busy_for`): every
    job — the store's batches and reads, and what a component lends the thread for (the decision pipeline's engine
    jobs) — is submitted through :meth:`submit`. Costs two clock reads a job."""

    def __init__(self, thread_name_prefix: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=thread_name_prefix)
        #: ``time.monotonic()`` when the job in progress began; None between jobs and while the thread is idle
        self.began: float | None = None
        self._submitted = 0  # jobs submitted (counted on the event loop's thread, which submits them all)
        self._finished = 0  # jobs ended (counted on the store's thread)

    @property
    def queued(self) -> bool:
        """A job submitted and not ended (the one in progress, or one waiting for the thread): read while
        :attr:`began` is None, the thread is between two jobs, not idle."""
        return self._submitted > self._finished

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        def timed() -> T:
            self.began = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.began = None
                self._finished += 1

        future = super().submit(timed)
        self._submitted += 1
        return future


class _Op:
    __slots__ = ("callbacks", "fn", "future", "probe", "upkeep")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        probe: bool = False,
        upkeep: bool = False,
    ) -> None:
        self.fn = fn
        self.future = future
        self.callbacks: list[Callable[[], None]] = []
        self.probe = probe  # :meth:`SqliteStore.probe`'s one-page write: its commit shows little (see there)
        self.upkeep = upkeep or probe  # not a request's write (see :meth:`SqliteStore.write`)


class SqliteStore:
    """One SQLite database in WAL mode, written through group-committed transactions."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        max_batch: int = 512,
        own_checkpoints: bool = True,
    ) -> None:
        """``own_checkpoints``: run SQLite's automatic WAL checkpoints itself, timed and told to :attr:`observer`
        (see the module's *WAL checkpoints*); False when another component checkpoints this database (the
        decision state's store keeping its tables here: ``[pipeline] state_in_store``)."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._max_batch = max_batch
        self._executor = _JobClock("duisgw-store")
        self._own_checkpoints = own_checkpoints
        #: the WAL size (pages) from which a commit is followed by a checkpoint (SQLite's ``wal_autocheckpoint``,
        #: taken over when the database is opened); 0: the store runs none
        self._checkpoint_pages = 0
        #: the wal-index (``-shm``) file, opened read-only at the first commit the store checkpoints after
        self._shm: int | None = None
        #: automatic checkpoints the store ran (observability, tests)
        self.checkpoints = 0
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Op] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._local = threading.local()
        #: the watch on the database's files, set when it is opened (the decision state's store, when it is
        #: kept in this database, watches through the same one)
        self.files: StoreFiles | None = None
        #: told of every transaction of this store — its batches, :meth:`write_here`'s — that committed or failed
        #: (the service's metrics, ``duisgw_store_…``); set by its owner. Called on the store's thread: cheap and
        #: thread-safe. A batch made only of :meth:`probe` writes is told when it fails, not when it commits; one
        #: made only of upkeep writes (:func:`upkeep`, the probe's) is told as upkeep
        #: (``upkeep_committed`` / ``upkeep_failed``, when the observer has them)
        self.observer: StoreObserver | None = None
        self.batches = 0  # transactions committed (observability, benchmarks)
        self.ops = 0  # write operations committed

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Open (creating if needed) the database, apply pragmas and the transport schema."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open_sync)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._flusher = asyncio.create_task(self._flush_loop(), name="duisgw-store-flusher")

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path), timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        if self._own_checkpoints and str(mode).lower() == "wal":
            (pages,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
            if int(pages) > 0:  # SQLite's automatic checkpoints, run by the store (see _checkpoint_if_due)
                conn.execute("PRAGMA wal_autocheckpoint=0")
                self._checkpoint_pages = int(pages)
        for stmt in _SCHEMA:
            conn.execute(stmt)
        self.files = StoreFiles(self.path)
        self._conn = conn

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The store's one thread. A component that writes to this database in transactions of its own
        (the decision pipeline: its outbox rows right after its engine commit) runs them here, on
        :meth:`thread_connection`, so that every use of the connection stays on this thread and in
        turn with the store's own batches (no second writer, no lock waits). Shut down by :meth:`close`."""
        return self._executor

    def thread_connection(self) -> sqlite3.Connection:
        """The store's connection, for a function running on :attr:`executor` (never elsewhere), outside
        the store's own transactions (which also run there, one at a time)."""
        if self._conn is None or self._closed:
            raise StoreUnavailable("store is closed")
        if self.files is not None and (changed := self.files.changed()) is not None:
            # (saved by the next batch, if not yet; the cause names the reason: files_changed)
            raise StoreUnavailable(f"{changed}: restart the gateway") from StoreFilesChanged(changed)
        return self._conn

    def write_here(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """For a function running on :attr:`executor` (never elsewhere), outside the store's own batches:
        ``fn(conn)`` in a write transaction of its own (``BEGIN IMMEDIATE`` … ``COMMIT``), the database's files
        checked before and after it as every batch's are, and told to :attr:`observer` as they are. For a
        component that writes here without a hand-off through the event loop (the decision pipeline: a batch's
        routes and outbox rows, right after its engine commit in the other database). Returns ``fn``'s value
        once committed; raises :class:`StoreUnavailable` when the files were deleted or replaced (before, or
        after it committed: what was committed is saved, and it is not acknowledged), else what failed
        (``fn``'s error or SQLite's, the transaction rolled back)."""
        conn = self._conn
        if conn is None or self._closed:
            raise StoreUnavailable("store is closed")
        files = self.files
        began = time.perf_counter()
        try:
            if files is not None:
                files.check(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            if files is not None:
                files.check(conn)
        except StoreFilesChanged as exc:
            self._tell("failed", exc)
            raise StoreUnavailable(str(exc)) from exc
        except Exception as exc:
            if isinstance(exc, sqlite3.Error) or unavailable(exc):  # (not a caller's own error)
                self._tell("failed", exc)
            raise
        self._tell("committed", time.perf_counter() - began)
        self._checkpoint_if_due(conn)
        return value

    def _tell(self, what: str, arg: Any, *, upkeep: bool = False) -> None:
        """Tell the observer (if any) ``what`` happened (``upkeep``: to upkeep writes only, told as
        ``upkeep_<what>`` when the observer has it); an observer's own failure never fails the store."""
        observer = self.observer
        if observer is None:
            return
        try:
            tell = getattr(observer, f"upkeep_{what}", None) if upkeep else None
            (tell or getattr(observer, what))(arg)
        except Exception:  # (a metric is never worth a failed write)
            log.exception("store observer failed", extra={"store": str(self.path)})

    async def close(self) -> None:
        """Commit what is queued, then close. Later calls raise :class:`StoreUnavailable`."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._shm is not None:
            with contextlib.suppress(OSError):
                os.close(self._shm)
            self._shm = None

    def busy_for(self) -> float | None:
        """Seconds the job in progress on the store's thread has run (a batch of this store's, a read, or a job a
        component lent the thread for: the decision pipeline's engine), or None while the thread is idle. Between
        two jobs (one ended, the next queued: microseconds) 0.0: the thread is busy, not idle."""
        clock = self._executor
        began = clock.began
        if began is None:
            return 0.0 if clock.queued else None
        return max(0.0, time.monotonic() - began)

    def _wal_frames(self) -> int | None:
        """The frames in the WAL now (the wal-index header's ``mxFrame``), None when it cannot be read."""
        fd = self._shm
        try:
            if fd is None:
                fd = self._shm = os.open(f"{self.path}-shm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            head = os.pread(fd, _WAL_INDEX_HEAD, 0)
        except OSError:
            return None
        if len(head) < _WAL_INDEX_HEAD or int.from_bytes(head[:4], sys.byteorder) != _WAL_INDEX_VERSION:
            return None
        return int.from_bytes(head[16:20], sys.byteorder)

    def _checkpoint_if_due(self, conn: sqlite3.Connection) -> None:
        """On the store's thread, right after a transaction committed: SQLite's automatic checkpoint (PASSIVE,
        when the WAL holds ``_checkpoint_pages`` frames or more), timed and told to :attr:`observer`. A wal-index
        that cannot be read gives the checkpoints back to SQLite (logged once)."""
        pages = self._checkpoint_pages
        if not pages:
            return
        frames = self._wal_frames()
        if frames is None:
            self._checkpoint_pages = 0
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            log.warning(
                "the WAL's size cannot be read from %s-shm: SQLite checkpoints the database itself (not counted in "
                "duisgw_store_checkpoint_*)",
                self.path,
            )
            return
        if frames < pages:
            return
        began = time.perf_counter()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # (the commit before it stands; the next commit tries again)
            self._tell("checkpoint_failed", exc)
            return
        self.checkpoints += 1
        self._tell("checkpointed", time.perf_counter() - began)

    @property
    def is_open(self) -> bool:
        return self._conn is not None and not self._closed

    # ------------------------------------------------------------------ operations
    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in the writer thread inside a transaction; return after COMMIT. ``fn`` made by
        :func:`upkeep` is not a request's write (a delivery mark, a dead letter, a purge: rows the database has,
        rewritten or deleted, which a full disk lets through): told to :attr:`observer` as such, its commit does not
        end a refusal of the requests' writes (the service's ``duisgw_store_unavailable``)."""
        return await self._submit(fn, upkeep=isinstance(fn, _Upkeep))

    async def _submit(
        self, fn: Callable[[sqlite3.Connection], T], *, probe: bool = False, upkeep: bool = False
    ) -> T:
        if self._closed or self._flusher is None:
            raise StoreUnavailable("store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Op(fn, future, probe, upkeep))
        self._wake.set()
        return await future

    async def write_in_chunks(
        self, step: Callable[[sqlite3.Connection], tuple[int, bool]], *, upkeep: bool = False
    ) -> int:
        """Run ``step(conn)`` in one :meth:`write` after another while it says there is more (a purge in
        bounded transactions: each is one write among the store's others, so nothing waits behind the whole
        purge); ``step`` returns ``(rows it deleted, more left)``. Returns the rows deleted in all."""
        total = 0
        while True:
            deleted, more = await self.write(_Upkeep(step) if upkeep else step)
            total += deleted
            if not more:
                return total

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in the store thread (no transaction: for SELECTs)."""
        if self._closed or self._conn is None:
            raise StoreUnavailable("store is closed")
        conn = self._conn
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)
        except sqlite3.Error as exc:  # (an I/O error's unreadable page: "database disk image is malformed")
            if isinstance(exc, sqlite3.OperationalError) or unavailable(exc):
                raise StoreUnavailable(f"read failed: {exc}") from exc
            raise

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Inside a ``write`` function: run ``callback`` on the event loop once the transaction commits."""
        op: _Op | None = getattr(self._local, "op", None)
        if op is None:
            raise RuntimeError("on_commit is only valid inside a SqliteStore.write function")
        op.callbacks.append(callback)

    async def ping(self, timeout: float = 2.0) -> bool:
        """True when the database answers a query within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self.read(lambda c: c.execute("SELECT 1").fetchone()), timeout)
        except (StoreUnavailable, TimeoutError, sqlite3.Error):
            return False
        return True

    async def probe(self, timeout: float = 2.0) -> bool:
        """True when the store can record something now: a write of one page (the database header's
        ``user_version``, set to the value it has) committed within ``timeout`` seconds, with the store's other
        writes. A query alone answers from the page cache while the disk is full, read-only or failing, or
        while another process holds the write lock past ``busy_timeout``: none of which lets a message be
        recorded. Yet a disk that is full still lets SQLite rewrite a page it has: a probe that fails is told to
        :attr:`observer` as a failed transaction, one that commits is not told as a commit (it does not show
        that a message could be recorded)."""
        return await self.probe_within(timeout) is True

    async def probe_within(self, timeout: float) -> bool | None:
        """:meth:`probe`, telling a write not answered within ``timeout`` (None: still waiting for the store's
        thread, which may be running a long job: :meth:`busy_for`) from one that failed (False). The write goes on
        after the wait: its failure is told to :attr:`observer` when it comes."""

        def touch(conn: sqlite3.Connection) -> None:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            conn.execute(f"PRAGMA user_version = {int(version)}")

        try:
            await asyncio.wait_for(self._submit(touch, probe=True), timeout)
        except TimeoutError:
            return None
        except (StoreUnavailable, sqlite3.Error):
            return False
        return True

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
                err = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(f"commit failed: {exc}")
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(err)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self.batches += 1
            for op, (ok, value) in zip(batch, results, strict=True):
                if ok:
                    self.ops += 1
                    for cb in op.callbacks:
                        loop.call_soon(cb)
                if op.future.done():  # caller cancelled
                    continue
                if ok:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(value)

    def _run_batch(self, batch: Sequence[_Op]) -> list[tuple[bool, Any]]:
        """In the store's thread: ``batch`` in ONE transaction, each write in a savepoint of its own. The
        :attr:`observer` is told of every failure — the transaction's (its BEGIN, its COMMIT, the files changed,
        or a write whose failure SQLite answered by rolling the whole transaction back, as it does for a full disk
        or an I/O error: one failure, by that write's reason) and each write refused for a store reason while the
        others commit — and of the commit, timed from BEGIN to COMMIT's return, unless a write in it was refused
        so (the store did not record everything) or it holds nothing but :meth:`probe` writes. Each as upkeep when
        no request's write is concerned (:func:`upkeep`)."""
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("store is closed")
        upkeep = all(op.upkeep for op in batch)  # (a transaction with a request's write in it is a request's)
        began = time.perf_counter()
        try:
            if self.files is not None:
                self.files.check(conn)  # (its files deleted or replaced: saved once, nothing more recorded)
            conn.execute("BEGIN IMMEDIATE")
        except StoreFilesChanged as exc:
            self._tell("failed", exc, upkeep=upkeep)
            raise StoreUnavailable(str(exc)) from exc
        except sqlite3.Error as exc:
            self._tell("failed", exc, upkeep=upkeep)
            raise StoreUnavailable(f"cannot begin a transaction: {exc}") from exc
        results: list[tuple[bool, Any]] = []
        refused = False  # a write refused for a store reason (locked, full, I/O, ...): told as a failure
        try:
            for op in batch:
                conn.execute("SAVEPOINT op")
                self._local.op = op
                try:
                    value = op.fn(conn)
                except Exception as exc:
                    op.callbacks.clear()
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if isinstance(exc, sqlite3.Error) or unavailable(exc):  # (not a caller's own error)
                        self._tell("failed", exc, upkeep=op.upkeep)
                    if isinstance(exc, sqlite3.OperationalError) or unavailable(exc):
                        refused = True
                        cause = exc
                        exc = StoreUnavailable(f"write failed: {exc}")
                        exc.__cause__ = cause
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((True, value))
                finally:
                    self._local.op = None
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._tell("failed", exc, upkeep=upkeep)
            raise StoreUnavailable(f"transaction failed: {exc}") from exc
        if self.files is not None:
            try:  # committed into files deleted or replaced meanwhile: saved, and not acknowledged
                self.files.check(conn)
            except StoreFilesChanged as exc:
                self._tell("failed", exc, upkeep=upkeep)
                raise StoreUnavailable(str(exc)) from exc
        if not refused and not all(op.probe for op in batch):
            # told as upkeep when it held no request's write that committed
            upkeep = all(op.upkeep or not ok for op, (ok, _value) in zip(batch, results, strict=True))
            self._tell("committed", time.perf_counter() - began, upkeep=upkeep)
        self._checkpoint_if_due(conn)
        return results


# ------------------------------------------------------------------------------------------ outbox


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    queue: str
    message_id: str
    destination: str
    body: bytes
    metadata: Mapping[str, str]
    state: str
    enqueued_at: float
    attempts: int
    refusals: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class QueueStats:
    queue: str
    depth: int  # pending rows
    oldest_enqueued_at: float | None  # of the oldest pending row
    dead: int  # dead letters


_ROW_COLUMNS = (
    "seq, queue, message_id, destination, body, metadata, state, enqueued_at, attempts, refusals, "
    "next_attempt_at, last_error"
)


def _row(r: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(
        seq=r[0],
        queue=r[1],
        message_id=r[2],
        destination=r[3],
        body=bytes(r[4]),
        metadata=json.loads(r[5]),
        state=r[6],
        enqueued_at=r[7],
        attempts=r[8],
        refusals=r[9],
        next_attempt_at=r[10],
        last_error=r[11],
    )


class Outbox:
    """Durable per-queue FIFO of deliveries on a :class:`SqliteStore`.

    ``routes(destination)`` names the queues a delivery to ``destination`` goes into (default: one
    queue named after the destination). A destination with no route raises ``UnknownDestination``.
    """

    def __init__(
        self,
        store: SqliteStore,
        routes: Callable[[str], Sequence[str]] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._routes = routes if routes is not None else (lambda d: (d,))
        self._clock = clock
        self._listeners: list[Callable[[str], None]] = []

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """``callback(queue)`` runs on the event loop after rows for ``queue`` are committed."""
        self._listeners.append(callback)

    def notify(self, queues: Iterable[str]) -> None:
        """Wake the delivery of ``queues`` (on the event loop), after rows for them were committed."""
        for q in queues:
            for cb in self._listeners:
                cb(q)

    def insert_rows(self, conn: sqlite3.Connection, deliveries: Iterable[Delivery]) -> tuple[int, set[str]]:
        """Insert rows for ``deliveries`` in the caller's open transaction on ``conn``. Returns how many
        rows are new (duplicates of an existing ``(queue, message_id)`` are ignored) and the queues that
        got them; the caller commits, then calls :meth:`notify` with those queues on the event loop."""
        now = self._clock()
        added = 0
        touched: set[str] = set()
        for d in deliveries:
            queues = self._routes(d.destination)
            if not queues:
                raise UnknownDestination(f"no delivery route for destination {d.destination!r}")
            meta = json.dumps(dict(d.metadata), sort_keys=True)
            for q in queues:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO outbox (queue, message_id, destination, body, metadata, enqueued_at, "
                    "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 0)",
                    (q, d.message_id, d.destination, d.body, meta, now),
                )
                if cur.rowcount:
                    added += 1
                    touched.add(q)
        return added, touched

    def enqueue_in(self, conn: sqlite3.Connection, deliveries: Iterable[Delivery]) -> int:
        """Insert rows for ``deliveries`` in the caller's ``store.write`` transaction.

        Returns the number of new rows (duplicates of an existing ``(queue, message_id)`` are ignored);
        the delivery of their queues is woken after the commit.
        """
        added, touched = self.insert_rows(conn, deliveries)
        if touched:
            self.store.on_commit(lambda: self.notify(sorted(touched)))
        return added

    async def enqueue_many(self, deliveries: Sequence[Delivery]) -> int:
        """Durably enqueue ``deliveries`` in a transaction of their own."""
        items = list(deliveries)
        return await self.store.write(lambda conn: self.enqueue_in(conn, items))

    # ------------------------------------------------------------------ worker side
    async def pending(self, queue: str, *, after_seq: int = 0, limit: int = 64) -> list[OutboxRow]:
        """Pending rows of ``queue`` with ``seq > after_seq``, oldest first."""

        def q(conn: sqlite3.Connection) -> list[OutboxRow]:
            cur = conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM outbox WHERE queue = ? AND state = 'pending' AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (queue, after_seq, limit),
            )
            return [_row(r) for r in cur.fetchall()]

        return await self.store.read(q)

    async def mark_delivered(self, *seqs: int) -> None:
        """Record rows as delivered (one statement for many rows)."""
        now = self._clock()
        await self.store.write(
            upkeep(lambda c: c.executemany(
                "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, done_at = ?, last_error = NULL "
                "WHERE seq = ?",
                [(now, seq) for seq in seqs],
            ))
        )

    async def mark_failed(self, seq: int, *, error: str, refused: bool, next_attempt_at: float) -> None:
        await self.store.write(
            upkeep(lambda c: c.execute(
                "UPDATE outbox SET attempts = attempts + 1, refusals = refusals + ?, last_error = ?, "
                "next_attempt_at = ? WHERE seq = ?",
                (1 if refused else 0, error[:500], next_attempt_at, seq),
            ))
        )

    async def dead_letter(self, seq: int, *, error: str, refused: bool) -> None:
        now = self._clock()
        await self.store.write(
            upkeep(lambda c: c.execute(
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, refusals = refusals + ?, "
                "last_error = ?, done_at = ? WHERE seq = ?",
                (1 if refused else 0, error[:500], now, seq),
            ))
        )

    async def requeue_dead(self, queue: str) -> int:
        """Put every dead letter of ``queue`` back in line (at its original position); returns the count."""

        def q(conn: sqlite3.Connection) -> int:
            cur = conn.execute(_REQUEUE + "WHERE queue = ? AND state = 'dead'", (queue,))
            if cur.rowcount:
                self.store.on_commit(lambda: self.notify([queue]))
            return int(cur.rowcount)

        return await self.store.write(upkeep(q))

    async def rows(self, queue: str, state: str | None = None) -> list[OutboxRow]:
        """Every row of ``queue`` (optionally in one state), in order: for audits and tests."""

        def q(conn: sqlite3.Connection) -> list[OutboxRow]:
            if state is None:
                cur = conn.execute(
                    f"SELECT {_ROW_COLUMNS} FROM outbox WHERE queue = ? ORDER BY seq", (queue,)
                )
            else:
                cur = conn.execute(
                    f"SELECT {_ROW_COLUMNS} FROM outbox WHERE queue = ? AND state = ? ORDER BY seq",
                    (queue, state),
                )
            return [_row(r) for r in cur.fetchall()]

        return await self.store.read(q)

    async def stats(self) -> list[QueueStats]:
        """Depth, oldest pending enqueue time and dead-letter count of every queue that has rows."""

        def q(conn: sqlite3.Connection) -> list[QueueStats]:
            pend = {r[0]: (r[1], r[2]) for r in conn.execute(STATS_PENDING_SQL)}
            dead = dict(conn.execute(STATS_DEAD_SQL).fetchall())
            out = []
            for queue in sorted(set(pend) | set(dead)):
                depth, oldest = pend.get(queue, (0, None))
                out.append(QueueStats(queue, int(depth), oldest, int(dead.get(queue, 0))))
            return out

        return await self.store.read(q)

    async def purge_delivered(self, older_than: float, *, chunk: int = PURGE_CHUNK) -> int:
        """Delete delivered rows finished before ``older_than`` (epoch seconds), at most ``chunk`` rows per
        transaction. The purge runs every minute and removes what was delivered a retention period before:
        in one transaction, a minute of sustained traffic (60,000 rows of ~1.6 KB at 1,000 msg/s) held the
        store's one thread for ~650 ms and wrote ~127 MB of WAL, and every decision waited behind it. Each
        chunk is one write among the store's others (group-committed with them), so a decision waits for one
        chunk at most (~5 ms for 500 rows). Returns the number of rows deleted."""
        limit = max(1, chunk)

        def purge(c: sqlite3.Connection) -> tuple[int, bool]:
            deleted = int(
                c.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE state = 'delivered' "
                    "AND done_at < ? LIMIT ?)",
                    (older_than, limit),
                ).rowcount
            )
            return deleted, deleted >= limit

        return await self.store.write_in_chunks(purge, upkeep=True)


# ------------------------------------------------------------------------------------------ operator side


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered outbox row, without its body (``duisgw audit dead``)."""

    seq: int
    queue: str
    message_id: str
    destination: str
    attempts: int
    refusals: int
    last_error: str | None
    enqueued_at: float
    done_at: float | None  # when it was dead-lettered


def dead_letters(
    conn: sqlite3.Connection, *, queue: str | None = None, message_ids: Sequence[str] | None = None
) -> list[DeadLetter]:
    """The dead letters (of ``queue``; of ``message_ids``), in queue order: a synchronous read on the
    caller's connection (the operator CLI's own; inside its transaction when it re-queues them)."""
    sql = (
        "SELECT seq, queue, message_id, destination, attempts, refusals, last_error, enqueued_at, done_at "
        "FROM outbox WHERE state = 'dead'"
    )
    params: list[Any] = []
    if queue is not None:
        sql += " AND queue = ?"
        params.append(queue)
    if message_ids is not None:
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return []
        sql += f" AND message_id IN ({', '.join('?' * len(ids))})"
        params.extend(ids)
    rows = conn.execute(sql + " ORDER BY seq", params).fetchall()
    return [DeadLetter(*r) for r in rows]


def requeue_dead_in(
    conn: sqlite3.Connection, rows: Iterable[DeadLetter], *, operator: str, note: str, at: datetime
) -> list[DeadLetter]:
    """Put ``rows`` (read by :func:`dead_letters` in the same transaction) back in line at their original
    position, as :meth:`Outbox.requeue_dead` does, and record each in ``outbox_requeues`` (who, why, when,
    the attempts and last error it had). Runs in the caller's open write transaction on ``conn``; the
    caller commits. Returns the rows that were still dead, hence re-queued."""
    for stmt in REQUEUES_SCHEMA:  # a database made before the table existed
        conn.execute(stmt)
    done: list[DeadLetter] = []
    for r in rows:
        cur = conn.execute(_REQUEUE + "WHERE seq = ? AND state = 'dead'", (r.seq,))
        if not cur.rowcount:
            continue
        conn.execute(
            "INSERT INTO outbox_requeues (requeued_at, operator, note, seq, queue, message_id, destination, "
            "attempts, refusals, last_error, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                at.isoformat(),
                operator,
                note,
                r.seq,
                r.queue,
                r.message_id,
                r.destination,
                r.attempts,
                r.refusals,
                r.last_error,
                r.done_at,
            ),
        )
        done.append(r)
    return done


def requeues(conn: sqlite3.Connection, message_id: str | None = None) -> list[dict[str, Any]]:
    """The recorded operator re-queues (of ``message_id``), oldest first; none in a database made before
    the table existed."""
    sql = (
        "SELECT requeued_at, operator, note, seq, queue, message_id, destination, attempts, refusals, last_error, "
        "dead_at FROM outbox_requeues"
    )
    try:
        if message_id is None:
            cur = conn.execute(sql + " ORDER BY id")
        else:
            cur = conn.execute(sql + " WHERE message_id = ? ORDER BY id", (message_id,))
    except sqlite3.OperationalError:  # no such table
        return []
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


# ------------------------------------------------------------------------------------------ rejects


class RejectStore:
    """Bytes the gateway refused, kept with their reason: bad input loses nothing."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    @staticmethod
    def record_in(
        conn: sqlite3.Connection,
        *,
        lane: str,
        user: str | None,
        reason: str,
        detail: str | None,
        body: bytes,
        received_at: datetime,
    ) -> int:
        """Insert one reject in the caller's ``store.write`` transaction; returns its id."""
        cur = conn.execute(
            "INSERT INTO rejects (received_at, lane, user, reason, detail, body) VALUES (?, ?, ?, ?, ?, ?)",
            (received_at.isoformat(), lane, user, reason, (detail or "")[:1000], body),
        )
        return int(cur.lastrowid or 0)

    async def record(
        self,
        *,
        lane: str,
        user: str | None,
        reason: str,
        detail: str | None,
        body: bytes,
        received_at: datetime,
    ) -> int:
        return await self.store.write(
            lambda c: self.record_in(
                c, lane=lane, user=user, reason=reason, detail=detail, body=body, received_at=received_at
            )
        )

    async def details(self, reason: str, limit: int) -> list[tuple[int, str]]:
        """The id and detail of the latest ``limit`` rejects of ``reason``, oldest first."""

        def q(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                "SELECT id, detail FROM rejects WHERE reason = ? ORDER BY id DESC LIMIT ?", (reason, limit)
            ).fetchall()
            return [(int(i), str(d or "")) for i, d in reversed(rows)]

        return await self.store.read(q)

    async def all(self) -> list[dict[str, Any]]:
        """Every reject, oldest first (for audits and tests)."""

        def q(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = conn.execute(
                "SELECT id, received_at, lane, user, reason, detail, body FROM rejects ORDER BY id"
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

        return await self.store.read(q)


@dataclass(frozen=True)
class RejectInfo:
    """One kept reject, without its bytes (``duisgw audit rejects``)."""

    id: int
    received_at: str
    lane: str
    user: str | None
    reason: str
    detail: str | None
    size: int  # bytes


_REJECT_INFO = "SELECT id, received_at, lane, user, reason, detail, length(CAST(body AS BLOB)) FROM rejects"


def read_rejects(conn: sqlite3.Connection, *, reason: str | None = None) -> Iterator[RejectInfo]:
    """Every reject (with ``reason``), NEWEST first, without the bytes: a synchronous read on the
    caller's connection, streamed (the table can be large)."""
    if reason is None:
        cur = conn.execute(_REJECT_INFO + " ORDER BY id DESC")
    else:
        cur = conn.execute(_REJECT_INFO + " WHERE reason = ? ORDER BY id DESC", (reason,))
    for r in cur:
        yield RejectInfo(*r)


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def _received(text: object) -> datetime:
    """An ``observations`` or ``rejects`` row's receipt time (ISO 8601); a text that is not one (written by
    something else) reads as the earliest time: the row is purged with the rows kept before it."""
    try:
        value = datetime.fromisoformat(str(text))
    except ValueError:
        return _EARLIEST
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def purge_kept(store: SqliteStore, table: str, before: datetime, *, chunk: int = PURGE_CHUNK) -> int:
    """Delete the rows of ``table`` (kept bytes with their ``id`` and ``received_at``: ``rejects``,
    ``observations``) received before ``before``, oldest first, at most ``chunk`` rows per transaction (each
    one write among the store's others: a decision never waits behind the whole purge). Rows are taken in the
    order they were kept and the purge stops at the first one received at or after ``before``, so it never
    reads the rows it keeps (receipt times follow that order up to a step of the host clock: a row after such
    a step waits for the rows before it). Returns how many were deleted. Used by the pipeline's processor and
    the pass-through processor alike (``[store] rejects_retention_seconds``)."""
    if table not in ("rejects", "observations"):
        raise ValueError(f"not a table of kept bytes: {table!r}")
    limit = max(1, chunk)
    cutoff = before.astimezone(UTC)

    def purge(c: sqlite3.Connection) -> tuple[int, bool]:
        rows = c.execute(f"SELECT id, received_at FROM {table} ORDER BY id LIMIT ?", (limit,)).fetchall()
        last: int | None = None
        for rid, received in rows:
            if _received(received) >= cutoff:
                break
            last = int(rid)
        if last is None:
            return 0, False
        deleted = int(c.execute(f"DELETE FROM {table} WHERE id <= ?", (last,)).rowcount)
        return deleted, last == rows[-1][0] and len(rows) == limit

    return await store.write_in_chunks(purge, upkeep=True)


def read_reject(conn: sqlite3.Connection, reject_id: int) -> tuple[RejectInfo, bytes] | None:
    """One reject and its bytes exactly as received, or None."""
    row = conn.execute(
        "SELECT id, received_at, lane, user, reason, detail, length(CAST(body AS BLOB)), CAST(body AS BLOB) "
        "FROM rejects WHERE id = ?",
        (reject_id,),
    ).fetchone()
    if row is None:
        return None
    return RejectInfo(*row[:7]), bytes(row[7])
