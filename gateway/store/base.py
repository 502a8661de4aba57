"""The durable state store interface (what the shell needs; ``SqliteStore`` is the default).

Contract: everything handed to ``accept``/``apply`` since the last ``commit`` becomes durable
atomically at ``commit`` (all or nothing), and the shell acknowledges a message to its sender only
after that commit returned. After a crash the store holds exactly the state of the last commit:
accepted messages with their original bytes, every decision (audit), the engine's records.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol

from gateway.engine.effects import Effect
from gateway.engine.events import MessageEvent

__all__ = ["AuditRow", "StateStore"]

AuditRow = dict[str, Any]


class StateStore(Protocol):
    def accept(self, event: MessageEvent, raw: bytes | None) -> None:
        """Keep a received message (its ORIGINAL bytes, and its event until it is decided); a
        re-delivery of an id already kept changes nothing. Every message event given to the engine
        must be accepted in the same or an earlier batch (its idempotency key lives with it)."""
        ...

    def apply(self, effects: Iterable[Effect]) -> None:
        """Record the engine's effects: decisions (audit + message status) and state changes."""
        ...

    def begin(self) -> None:
        """Open the next ``commit``'s write transaction before anything is decided for it, so that a store that
        cannot record now for a reason it can tell without writing (its files changed, another writer's lock)
        fails here, with nothing decided yet; ``commit`` or ``rollback`` ends it."""
        ...

    def writable(self) -> None:
        """Raise unless the store can record something now (a small write committed: costs a sync)."""
        ...

    def commit(self, also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Make everything since the last commit durable, atomically; ``also(conn)``, when given, runs in
        the same transaction just before it commits (a SQL store's other tables; others may refuse it)."""
        ...

    def rollback(self) -> None:
        """Forget everything since the last commit (and end the transaction ``begin`` opened)."""
        ...

    def load_engine_records(self, keep_for: timedelta) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """``(table, key, record)`` rows for ``Engine.restore``; ``keep_for`` is the engine's retention (a
        store may keep records the engine pruned and leave out those past it)."""
        ...

    def undecided(self) -> list[dict[str, Any]]:
        """Event records of accepted messages with no decision/observation yet, in arrival order."""
        ...

    def undelivered(self) -> list[tuple[str, bytes | None]]:
        """``(message_id, original bytes)`` decided forward but not yet marked delivered (the outbox)."""
        ...

    def mark_delivered(self, message_ids: Iterable[str]) -> None: ...

    def original_bytes(self, message_id: str) -> bytes | None: ...

    def status(self, message_id: str) -> str | None:
        """accepted | observed | hold | forward | suppress (None: unknown id)."""
        ...

    def release_suppressed(self, message_id: str, operator: str, note: str, at: datetime) -> bytes | None:
        """Operator release of a suppressed message: audit it and queue it for delivery."""
        ...

    def operator_releases(self) -> list[tuple[int, str, str]]:
        """Operator releases not taken in yet: ``(decision number, message id, event kind)``, oldest first."""
        ...

    def take_in_operator_releases(self, decision_seqs: Iterable[int]) -> None:
        """Flag these operator releases taken in, durably at the next ``commit`` (with what it commits)."""
        ...

    def released_not_taken_in(self, message_ids: Iterable[str]) -> list[str]:
        """Which of these messages have an operator release not taken in yet (inside ``commit``'s
        transaction: every release committed before it)."""
        ...

    def audit(self, message_id: str | None = None) -> list[AuditRow]:
        """Decision rows in the order taken (all, or one message's)."""
        ...

    def close(self) -> None: ...
