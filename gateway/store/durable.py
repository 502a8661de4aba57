"""The engine bound to a durable store: accept, decide, persist, commit, then acknowledge.

``DurableEngine.submit_many`` is the unit of group commit: every message of the batch is kept with
its original bytes, handled by the engine, and its effects recorded, in ONE store transaction; the
returned effects are the acknowledgement (the caller answers its senders only after it returns).
If anything fails before the commit, the store rolls back, the inventory forgets the links the batch
learned or ended (its learning is a transaction with the batch's:
:class:`gateway.engine.ports.LearningTransactions`) and the engine is rebuilt from the store, so memory
never runs ahead of disk: a later message is decided as if the failed batch never happened. On
start-up the engine is restored from the store and messages that were accepted but never decided are
handled again.

An operator release (``duisgw audit release``, another process) removes the released AD1's suppressed-outage
record from the store at once; the running engine drops its copy when it takes the release in. A batch that
paired a restoration alert with a released AD1 not taken in yet is refused inside its own write transaction
(:class:`gateway.engine.errors.PairedWithReleasedOutage`): the transaction sees every release committed
before it, and a release committed after it finds the pairing in the decision log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from gateway.engine.config import EngineConfig
from gateway.engine.effects import Effect, paired_outages
from gateway.engine.engine import Engine
from gateway.engine.errors import PairedWithReleasedOutage
from gateway.engine.events import Event, Tick
from gateway.engine.ports import InventoryView, LearningTransactions, ScopeView
from gateway.engine.records import decode_tagged
from gateway.store.base import StateStore

__all__ = ["DurableEngine"]


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
        """The engine holds a failed batch's state: rebuilding it from the store failed too."""
        self.engine = Engine.restore(config, scope, inventory, store.load_engine_records(config.keep_for))
        self.recovered: list[Effect] = self._recover()

    def _begin(self) -> None:
        """Rebuild the engine first if a failed batch left it stale (raises while the store cannot be
        read: nothing is decided on state that is not durable); then what the inventory learns from now
        on is undone unless :meth:`_committed` follows."""
        if self._stale:
            self._resync()
        if self._learning is not None:
            self._learning.begin_learning()

    def _committed(self) -> None:
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
                out = self.engine.handle(event)
                self.store.apply(out)
                effects.extend(out)
            self.store.commit()
            self._committed()
        except BaseException:
            self._resync()
            raise
        return effects

    def _resync(self) -> None:
        """After a failed commit: forget what the batch wrote (the store's buffer, the links the inventory
        learned in it) and rebuild the engine from the store."""
        if self._learning is not None:
            self._learning.rollback_learning()
        self.store.rollback()
        # if the store cannot be read now either, the engine still holds the failed batch's decisions and
        # idempotency keys (a re-delivery would be answered as a duplicate with nothing durable): it stays
        # marked stale and the next call rebuilds it before deciding anything
        self._stale = True
        self.engine = Engine.restore(
            self.config, self.scope, self.inventory, self.store.load_engine_records(self.config.keep_for)
        )
        self._stale = False

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
                self.store.apply(self.engine.released_by_operator(mid))
            self.store.take_in_operator_releases(seq for seq, _mid, _kind in pending)
            self.store.commit()
            self._committed()
        except BaseException:
            self._resync()
            raise
        return [(mid, kind) for _seq, mid, kind in pending]

    def released_by_operator(self, message_ids: Sequence[str]) -> None:
        """Suppressed AD1s an operator released: mark their suppressed-outage records released, durably."""
        self._begin()
        try:
            for mid in message_ids:
                self.store.apply(self.engine.released_by_operator(mid))
            self.store.commit()
            self._committed()
        except BaseException:
            self._resync()
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
        store (where the released outage no longer is). Take the releases in and submit again."""
        results: list[list[Effect]] = []
        self._begin()
        store, engine = self.store, self.engine
        try:
            for event, raw in items:
                if not isinstance(event, Tick):
                    store.accept(event, raw)
                out = engine.handle(event)
                store.apply(out)
                results.append(out)
            paired = paired_outages(results)

            def within(conn: sqlite3.Connection) -> None:
                if paired:
                    # inside the write transaction: every operator release committed before it is seen here,
                    # and one committing after it finds this pairing in the decision log (audit release)
                    released = store.released_not_taken_in(paired)
                    if released:
                        raise PairedWithReleasedOutage(released)
                if also is not None:
                    also(conn, results)

            store.commit(within if paired or also is not None else None)
            self._committed()
        except BaseException:
            self._resync()
            raise
        return results
