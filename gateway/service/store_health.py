"""The store's health in the metrics (``duisgw_store_…``), told by the gateway's writers: :class:`StoreHealth`
(one :class:`WriterHealth` per writer, each a :class:`gateway.store.sqlite.StoreObserver`) and the files' sizes
read at each scrape (:func:`watch_store_files`). The decision pipeline (:class:`gateway.service.processor.
GatewayProcessor`) has two writers, the pass-through processor (``mode = "passthrough"``) the transport store
alone."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.service.api import StoreUnavailable
from gateway.service.metrics import STORE_FAILURE_REASONS, Metrics
from gateway.store.sqlite import StoreFiles, failure_reason, unavailable

__all__ = ["StoreHealth", "WriterHealth", "watch_store_files"]


class StoreHealth:
    """The store's health in the metrics, told by each of the gateway's two writers — the decision state's store
    (``decisions``: batches, ticks, operator releases taken in, in-the-outbox flags) and the transport store
    (``transport``: rejects, observations, routes and outbox rows, delivery marks, dead letters, purges, the readiness
    probe) — whether they share one database (``state_in_store``) or have one each. Commits are timed and failures
    counted alike (:class:`gateway.store.sqlite.StoreObserver`, one per writer: :meth:`observer`), and
    ``duisgw_store_unavailable`` is 1 while EITHER database refuses: a transaction in it failed for a reason that
    fails every transaction (:func:`gateway.store.sqlite.unavailable`, the reason found along what it was raised
    from or during, as :func:`gateway.store.sqlite.failure_reason` finds it) and nothing in it ended that since
    (below). One flag for both let whichever committed last speak for the other: with two databases, the outbox's
    locked and every request refused, the engine's ticks set it back to 0; with one, a delivery mark that rewrote
    a page of a full disk cleared what a refused batch of decisions had set.

    Each writer's transactions are of two kinds: a *request*'s (a batch of decisions; its routes and outbox rows; a
    reject or an observation kept) and *upkeep* (a tick's batch, operator releases taken in, in-the-outbox flags,
    delivery marks, dead letters, purges, the readiness probes). Upkeep mostly rewrites rows the database has,
    which a full disk lets through (docs/OPERATIONS.md, *When the storage fails*): so a refusal of a request ends
    only with a request's commit in that database (the DSP re-delivers what was refused), and a refusal of upkeep
    with any commit in it. (Any commit used to end either: with one database, the engine's tick after its rebuild,
    with two, the outbox's delivery marks of a forward whose DNO is down, set the gauge back to 0 on a full disk
    while every request was refused.) The refusals are kept per database: with one, both writers' (a reject
    refused while another process held the lock ends with the next batch of decisions committed there, not only
    with the next reject, which may be hours away); with two, one each. The decision state's store tells its
    commits itself, unaware of the kind: the engine thread names its upkeep (:meth:`WriterHealth.upkeep`) around
    what it runs. Told on the thread that committed or checkpointed (and refusals on the event loop, at a scrape):
    a lock keeps the flags and the gauge in step."""

    WRITERS = ("decisions", "transport")

    def __init__(self, metrics: Metrics, *, one_database: bool = False) -> None:
        self._commit = metrics.store_commit_seconds
        failures = metrics.store_commit_failures
        self._failures = {reason: failures.labels(reason) for reason in STORE_FAILURE_REASONS}
        self._unavailable = metrics.store_unavailable
        self._lock = threading.Lock()
        #: each writer's database (``store``: the transport store's, and the decision state's with ``one_database``;
        #: ``engine``: the decision state's own)
        self._database = {"transport": "store", "decisions": "store" if one_database else "engine"}
        #: the checkpoints of each database (``duisgw_store_checkpoint_*{database}``): the decision state's store
        #: checkpoints its database in the background, the transport store its own after a commit (none when the
        #: decision state's tables are in it); each series exists from the start (0)
        databases = set(self._database.values())
        self._checkpoint = {db: metrics.store_checkpoint_seconds.labels(db) for db in databases}
        self._checkpoint_failures = {db: metrics.store_checkpoint_failures.labels(db) for db in databases}
        #: the databases whose last transaction failed so: whether a request's did (True: only a request's commit
        #: ends it) or upkeep's only (False: any commit in the database ends it)
        self._refusing: dict[str, bool] = {}
        self._observers = {writer: WriterHealth(self, writer) for writer in self.WRITERS}
        self._unavailable.set(0)

    def observer(self, writer: str) -> WriterHealth:
        """What ``writer`` (``decisions`` or ``transport``) tells (:class:`gateway.store.sqlite.StoreObserver`)."""
        return self._observers[writer]

    def refusing(self, writer: str, *, request: bool = True) -> None:
        """``writer``'s database cannot record anything now (``request``: a request's transaction failed, or its
        files were deleted or replaced)."""
        database = self._database[writer]
        with self._lock:
            self._refusing[database] = self._refusing.get(database, False) or request
            self._unavailable.set(1)

    def refusing_now(self) -> bool:
        """Whether a database refuses now (``duisgw_store_unavailable`` is 1): ``/readyz``'s last outcome while a
        probe waits for a long job (:meth:`gateway.service.app.Service._store_busy`)."""
        with self._lock:
            return bool(self._refusing)

    def committed(self, writer: str, seconds: float, *, upkeep: bool = False) -> None:
        self._commit.observe(seconds)
        database = self._database[writer]
        if database in self._refusing:
            with self._lock:
                if database not in self._refusing or (upkeep and self._refusing[database]):
                    return  # (a request's refusal ends with a request's commit: upkeep passes a full disk)
                del self._refusing[database]
                self._unavailable.set(1 if self._refusing else 0)

    def failed(self, writer: str, exc: BaseException, *, upkeep: bool = False) -> None:
        # the reason, from ``exc`` or what it was raised from or during: a write whose SQLITE_FULL rolled the whole
        # transaction back fails it on taking its savepoint back ("no such savepoint", SQLITE_ERROR), the full
        # disk in its context — counted as ``full``, and a refusal as every reason but ``other`` is (it was not:
        # the gauge read the savepoint's error alone, 0 while such writes were refused)
        reason = failure_reason(exc)
        self._failures[reason].inc()
        if isinstance(exc, StoreUnavailable) or reason != "other" or unavailable(exc):
            self.refusing(writer, request=not upkeep)

    def checkpointed(self, writer: str, seconds: float) -> None:
        """A checkpoint of ``writer``'s database took ``seconds``."""
        self._checkpoint[self._database[writer]].observe(seconds)

    def checkpoint_failed(self, writer: str, exc: BaseException) -> None:
        self._checkpoint_failures[self._database[writer]].inc()


class WriterHealth:
    """What one writer tells :class:`StoreHealth` (a :class:`gateway.store.sqlite.StoreObserver`): its
    transactions are a request's unless told as upkeep — by :meth:`upkeep_committed` / :meth:`upkeep_failed`
    (the transport store knows each write's kind), or while the writer's thread runs upkeep (:meth:`upkeep`: the
    decision state's store, which tells its commits itself)."""

    def __init__(self, health: StoreHealth, writer: str) -> None:
        self._health = health
        self.writer = writer
        self._upkeep = 0  # upkeep in progress on the writer's thread (only that thread changes or reads it)

    @contextlib.contextmanager
    def upkeep(self) -> Iterator[None]:
        """On the writer's thread: what its store tells meanwhile is upkeep."""
        self._upkeep += 1
        try:
            yield
        finally:
            self._upkeep -= 1

    def refusing(self) -> None:
        self._health.refusing(self.writer)

    def committed(self, seconds: float) -> None:
        self._health.committed(self.writer, seconds, upkeep=self._upkeep > 0)

    def failed(self, exc: BaseException) -> None:
        self._health.failed(self.writer, exc, upkeep=self._upkeep > 0)

    def upkeep_committed(self, seconds: float) -> None:
        self._health.committed(self.writer, seconds, upkeep=True)

    def upkeep_failed(self, exc: BaseException) -> None:
        self._health.failed(self.writer, exc, upkeep=True)

    def checkpointed(self, seconds: float) -> None:
        self._health.checkpointed(self.writer, seconds)

    def checkpoint_failed(self, exc: BaseException) -> None:
        self._health.checkpoint_failed(self.writer, exc)


def watch_store_files(
    metrics: Metrics, health: StoreHealth, watched: Sequence[tuple[str, Path, StoreFiles | None, Sequence[str]]]
) -> None:
    """At each scrape: each watched database's file sizes (``duisgw_store_file_bytes``: ``database``, ``db`` /
    ``wal``) and whether one of its files was deleted or replaced under the open connection (then every writer
    named with it refuses: ``duisgw_store_unavailable``). ``watched``: ``(database, path, files, writers)``. A few
    ``stat`` calls a scrape."""
    sizes = metrics.store_file_bytes

    def scrape() -> None:
        for database, path, files, writers in watched:
            for name, suffix in (("db", ""), ("wal", "-wal")):
                try:
                    size = os.stat(f"{path}{suffix}").st_size
                except OSError:
                    size = 0
                sizes.labels(database, name).set(size)
            if files is not None and files.changed() is not None:
                for writer in writers:
                    health.refusing(writer)

    metrics.on_scrape(scrape)
