"""The engine bound to a durable store: accept, decide, persist, commit, then acknowledge.

``DurableEngine.submit_many`` is the unit of group commit: every message of the batch is kept with
its original bytes, handled by the engine, and its effects recorded, in ONE store transaction; the
returned effects are the acknowledgement (the caller answers its senders only after it returns).
If anything fails before the commit, the store rolls back, the inventory forgets the links the batch
learned or ended (its learning is a transaction with the batch's:
:class:`gateway.engine.ports.LearningTransactions`) and the engine is rebuilt from the store before it
decides anything again, so memory never runs ahead of disk: a later message is decided as if the failed
batch never happened. On start-up the engine is restored from the store and messages that were accepted
but never decided are handled again.

A rebuild reads every idempotency key within the retention (~16 µs a key: ~35 s at 2 M keys), so it is paid
only when it must be, and once per fault rather than once per batch:

- each transaction is opened before the engine decides anything (``store.begin()``: the database's files
  checked, the write lock taken), so a store that cannot record for a reason that shows there — its files
  deleted or replaced, another process's lock held past ``busy_timeout`` — fails the batch with the engine
  untouched: nothing to rebuild;
- a batch that fails after the engine decided it (the disk full or an I/O error at the write or the commit, a
  refusal, a fault) leaves the engine *stale*: it is rebuilt at the next call, and only once the store has
  shown that it can record again (``store.writable()``: a one-page commit), so a fault that lasts answers each
  batch at once instead of rebuilding the engine for every one of them. :attr:`DurableEngine.stale` says so
  meanwhile (what the engine holds then includes the failed batch: read nothing from it);
- a one-page commit does not show every fault: the disk full still lets SQLite rewrite a page it has (the
  WAL's, the header's), and an I/O error may hit other pages only. When the first batch after a rebuild fails
  on the store again, the probe did not see the fault: the engine is not rebuilt again before a hold-off
  (``rebuild_holdoff`` seconds, doubled at each such failure up to ``rebuild_holdoff_max`` and at least four
  times the last rebuild's duration, reset by a commit); each batch meanwhile is refused at once
  (:class:`gateway.store.sqlite.StoreHeldOff`, which the service answers 503 like the fault itself).

An operator release (``duisgw audit release``, another process) removes the released AD1's suppressed-outage
record from the store at once; the running engine drops its copy when it takes the release in. A batch that
paired a restoration alert with a released AD1 not taken in yet is refused inside its own write transaction
(:class:`gateway.engine.errors.PairedWithReleasedOutage`): the transaction sees every release committed
before it, and a release committed after it finds the pairing in the decision log. So is a batch that decided
afresh the signed copy of an inline message whose copy quarantined under its unsigned id (a key the engine keeps)
an operator released and the engine has not taken in, or that paired a restoration alert while the release of a
quarantined AD1 is not taken in (:class:`gateway.engine.errors.CopyOfReleasedMessage`): rebuilt from the store,
which says the copy was released (:meth:`DurableEngine._restore`), the engine answers the message as the
duplicate of that release and keeps the released AD1's outage (docs/ENGINE.md §8).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from gateway.engine.config import EngineConfig
from gateway.engine.effects import Decision, Effect, paired_outages
from gateway.engine.engine import Engine
from gateway.engine.errors import CopyOfReleasedMessage, PairedWithReleasedOutage
from gateway.engine.events import UNSIGNED_MARK, Event, PowerOutage, Tick, unsigned_id
from gateway.engine.ports import InventoryView, LearningTransactions, ScopeView
from gateway.engine.records import decode_tagged
from gateway.store.base import StateStore
from gateway.store.sqlite import StoreHeldOff, unavailable

__all__ = ["DurableEngine", "copy_of_release"]


def copy_of_release(event: Event, out: Sequence[Effect], not_taken_in: Callable[[str], bool]) -> str | None:
    """The unsigned id of the inline message quarantined under it whose same bytes ``event`` brought under their
    verified id and ``out`` (what the engine did with it) decided afresh (a decision of ``event``, not a
    duplicate) while the engine kept that quarantined key without a release taken in (``not_taken_in``:
    :meth:`Engine.release_not_taken_in`, asked right after ``event`` was handled). Were it released by an
    operator meanwhile (:meth:`StateStore.released_not_taken_in`), the signed copy of released bytes was decided
    afresh, which the engine rebuilt from the store answers as that release's duplicate (docs/ENGINE.md §8).
    None otherwise: other bytes naming the identity (another digest: never a duplicate of them), a decision of
    another message (a held one released), or a quarantined key the engine no longer keeps (its retention
    passed) are decided the same by the rebuilt engine, and a refusal of them would repeat at every try (a
    ``duisgw replay`` never takes releases in). Found in memory (none, the usual case: no quarantined key of the
    bytes is kept), so the store is read only for these."""
    if isinstance(event, Tick) or event.lane != "inline" or event.digest is None:
        return None
    alias = unsigned_id(event.message_id, event.digest)
    if not_taken_in(alias) and any(isinstance(e, Decision) and e.message_id == event.message_id for e in out):
        return alias
    return None


class DurableEngine:
    """An :class:`Engine` whose every acknowledged input and output is durable in ``store``."""

    def __init__(
        self, store: StateStore, config: EngineConfig, scope: ScopeView, inventory: InventoryView
    ) -> None:
        self.store = store
        self.config = config
        self.scope = scope
        self.inventory = inventory
        self._learning = inventory if isinstance(inventory, LearningTransactions) else None
        self._stale = False
        """The engine holds a failed batch's state: it is rebuilt from the store before the next decision."""
        self._clock_before: datetime | None = None
        self._held_last = 0
        self.rebuilds = 0
        """Times the engine was rebuilt from the store after a failed batch."""
        self.on_rebuild: Callable[[float], None] | None = None
        """Told the seconds of each rebuild (the service's metrics)."""
        self.rebuild_holdoff = 1.0
        """Seconds a stale engine is not rebuilt after the first batch following a rebuild failed on the store
        again (the store's probe did not see the fault); doubled at each such failure, up to
        :attr:`rebuild_holdoff_max` (and at least four times the last rebuild's duration)."""
        self.rebuild_holdoff_max = 60.0
        self._holdoff = 0.0  # the current hold-off (0: none since the last commit)
        self._rebuild_after = 0.0  # time.monotonic() before which a stale engine is not rebuilt
        self._rebuilt = False  # rebuilt since the last commit
        self._rebuild_seconds = 0.0
        self._engine = self._restore()
        self._held_last = self._engine.held_count()
        self.recovered: list[Effect] = self._recover()

    @property
    def engine(self) -> Engine:
        """The engine, as durable in the store: one a failed batch left stale is rebuilt first (a read of the
        store; raises while it cannot be read). A caller that must not wait for a rebuild checks :attr:`stale`."""
        if self._stale:
            self._rebuild()
        return self._engine

    @property
    def clock(self) -> datetime | None:
        """The gateway clock as durable: the engine's, or while it is stale the one it had before the failed
        batch (never rebuilds: for any thread to read)."""
        return self._clock_before if self._stale else self._engine.clock

    @property
    def held_count(self) -> int:
        """Messages held, as durable: counted at each commit and rebuild on the engine's thread (a read from
        another thread, e.g. ``/admin/state`` on the event loop, never walks the engine while a batch changes
        it, never counts a batch that may yet fail, and never rebuilds)."""
        return self._held_last

    @property
    def stale(self) -> bool:
        """Whether the engine still holds what a failed batch decided (rebuilt before the next decision, or
        when :attr:`engine` is read)."""
        return self._stale

    def _begin(self) -> None:
        """Open the store's transaction before anything is decided (raises while the store cannot record for a
        reason that shows without writing: the engine is untouched). First, if a failed batch left the engine
        stale, rebuild it from the store — once the store shows it can record again (raises meanwhile: nothing
        is decided on state that is not durable, and nothing is rebuilt for nothing). Then what the inventory
        learns from now on is undone unless :meth:`_committed` follows."""
        if self._stale:
            wait = self._rebuild_after - time.monotonic()
            if wait > 0:
                raise StoreHeldOff(
                    f"the store failed again right after the engine was rebuilt: not rebuilt for {wait:.1f} s more"
                )
            self.store.writable()
            self._rebuild()
        self.store.begin()
        self._clock_before = self._engine.clock
        if self._learning is not None:
            try:
                self._learning.begin_learning()
            except BaseException:
                # (the rollback also drops what a restore buffered for the next commit, :meth:`_restore`: the
                # engine is rebuilt before the next decision, so nothing it keeps is missing from the store)
                self._stale = True
                self.store.rollback()
                raise

    def _committed(self) -> None:
        self._held_last = self._engine.held_count()
        self._rebuilt = False
        self._holdoff = 0.0
        if self._learning is not None:
            self._learning.commit_learning()

    def _recover(self) -> list[Effect]:
        """Handle again the messages accepted before a crash but not decided (normally none)."""
        effects: list[Effect] = []
        pending = self.store.undecided()
        if not pending:
            return effects
        self._begin()
        try:
            for record in pending:
                event = decode_tagged(record)
                out = self._engine.handle(event)
                self.store.apply(out)
                effects.extend(out)
            self.store.commit()
            self._committed()
        except BaseException as exc:
            self._undo(exc)
            raise
        return effects

    def _undo(self, exc: BaseException) -> None:
        """After a batch failed once the engine had decided it: forget what the batch wrote (the store's buffer
        and transaction, the links the inventory learned in it) and mark the engine stale: it holds the batch's
        decisions and idempotency keys (a re-delivery would be answered as a duplicate with nothing durable), so
        the next call rebuilds it from the store before deciding anything (:meth:`_begin`). The first batch after
        a rebuild failing on the store again (``exc``: :func:`gateway.store.sqlite.unavailable`) starts or doubles
        the hold-off before the next rebuild."""
        self._stale = True
        if self._rebuilt and unavailable(exc):
            self._rebuilt = False
            self._holdoff = min(self.rebuild_holdoff_max, max(self.rebuild_holdoff, 2 * self._holdoff))
            self._holdoff = max(self._holdoff, 4 * self._rebuild_seconds)
            self._rebuild_after = time.monotonic() + self._holdoff
        if self._learning is not None:
            self._learning.rollback_learning()
        self.store.rollback()

    def _rebuild(self) -> None:
        """The engine rebuilt from the store (raises while the store cannot be read: it stays stale)."""
        began = time.perf_counter()
        self._engine = self._restore()
        self._stale = False
        self._held_last = self._engine.held_count()
        self._rebuilt = True
        self._rebuild_seconds = time.perf_counter() - began
        self.rebuilds += 1
        if self.on_rebuild is not None:
            self.on_rebuild(self._rebuild_seconds)

    def _restore(self) -> Engine:
        """The engine as durable in the store. The releases of quarantined copies recorded and not taken in yet
        (``duisgw audit release`` of ``<identity>#unverified:<digest>``, another process) are known to it as
        they would be once taken in (:meth:`Engine.released_by_operator`; their keys already say so, read from
        the messages' rows; a quarantined AD1's released outage is kept, and written with the next commit): a
        restoration of that outage decided before the take-in — by a rebuilt engine after a batch refused for it
        (:class:`CopyOfReleasedMessage`), or by ``duisgw replay`` on a ``--state`` store, which never takes
        releases in — is forwarded, not paired with another suppressed AD1 of the hub (docs/ENGINE.md §8). They
        are still taken in, and counted, once (:meth:`take_in_operator_releases`)."""
        store = self.store
        engine = Engine.restore(self.config, self.scope, self.inventory, store.load_engine_records(self.config.keep_for))
        for _seq, mid, _kind in store.operator_releases():
            if UNSIGNED_MARK in mid:
                store.apply(engine.released_by_operator(mid))
        return engine

    def take_in_operator_releases(self) -> list[tuple[str, str]]:
        """Operator releases recorded by another process (``duisgw audit release``) and not taken in yet:
        mark their suppressed-outage records released in the running engine and flag them taken in, in ONE
        transaction. Returns ``(message id, event kind)`` of each: every release is returned once, ever
        (the flag commits with the state change), so what the caller does once per release — count it —
        is not repeated after a restart."""
        pending = self.store.operator_releases()
        if not pending:
            return []
        self._begin()
        try:
            for _seq, mid, _kind in pending:
                self.store.apply(self._engine.released_by_operator(mid))
            self.store.take_in_operator_releases(seq for seq, _mid, _kind in pending)
            self.store.commit()
            self._committed()
        except BaseException as exc:
            self._undo(exc)
            raise
        return [(mid, kind) for _seq, mid, kind in pending]

    def released_by_operator(self, message_ids: Sequence[str]) -> None:
        """Suppressed AD1s an operator released: mark their suppressed-outage records released, durably."""
        self._begin()
        try:
            for mid in message_ids:
                self.store.apply(self._engine.released_by_operator(mid))
            self.store.commit()
            self._committed()
        except BaseException as exc:
            self._undo(exc)
            raise

    def submit(self, event: Event, raw: bytes | None = None) -> list[Effect]:
        """One message in its own transaction (use :meth:`submit_many` for throughput)."""
        return self.submit_many([(event, raw)])[0]

    def submit_many(
        self,
        items: Sequence[tuple[Event, bytes | None]],
        also: Callable[[sqlite3.Connection, list[list[Effect]]], None] | None = None,
    ) -> list[list[Effect]]:
        """Group commit: keep, decide and persist every item, then commit once. Returns each item's
        effects only after the commit succeeded. ``also(conn, effects)`` runs inside that transaction,
        after the engine's writes (each item's effects are known by then): writes of the caller's own
        that must be durable with the decisions or not at all. If it raises, nothing is committed.

        A restoration alert the batch paired with a suppressed AD1 that an operator released meanwhile
        (recorded, not taken in yet: the engine's record of it in memory was stale) is refused inside the
        same transaction: :class:`PairedWithReleasedOutage`, nothing committed, the engine rebuilt from the
        store (where the released outage no longer is) before the next decision. Take the releases in and submit again."""
        results: list[list[Effect]] = []
        self._begin()
        store, engine = self.store, self._engine
        copies: list[str] = []
        try:
            for event, raw in items:
                if not isinstance(event, Tick):
                    store.accept(event, raw)
                out = engine.handle(event)
                store.apply(out)
                results.append(out)
                copy = copy_of_release(event, out, engine.release_not_taken_in)
                if copy is not None:
                    copies.append(copy)
            paired = paired_outages(results)

            def within(conn: sqlite3.Connection) -> None:
                if paired:
                    # inside the write transaction: every operator release committed before it is seen here,
                    # and one committing after it finds this pairing in the decision log (audit release)
                    released = store.released_not_taken_in(paired)
                    if released:
                        raise PairedWithReleasedOutage(released)
                    # an AD1 quarantined for its own signature and released meanwhile: the engine has not kept its
                    # outage (the DNO has it), nearer to the interruption than the one paired with, maybe; the
                    # engine rebuilt from the store keeps it (:meth:`_restore`)
                    outages = [mid for _seq, mid, kind in store.operator_releases()
                               if kind == PowerOutage.kind and engine.release_not_taken_in(mid)]  # fmt: skip
                    if outages:
                        raise CopyOfReleasedMessage(outages)
                if copies:
                    # the same: the signed copy of bytes whose quarantined copy an operator released meanwhile,
                    # decided afresh, is refused (the engine rebuilt from the store answers it as that release's
                    # duplicate)
                    released_copies = store.released_not_taken_in(copies)
                    if released_copies:
                        raise CopyOfReleasedMessage(released_copies)
                if also is not None:
                    also(conn, results)

            store.commit(within if paired or copies or also is not None else None)
            self._committed()
        except BaseException as exc:
            self._undo(exc)
            raise
        return results
