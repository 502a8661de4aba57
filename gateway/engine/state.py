"""The engine's own state records besides activations (plain dataclasses, see ``records``).

The hot ones are slotted but not frozen (cheaper to build); they are never mutated: treat them as
immutable values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from gateway.engine.effects import Decision
from gateway.engine.events import InlineEvent
from gateway.engine.records import register_kind

__all__ = ["ClockRecord", "HeldMessage", "LearnedLink", "Seen", "SuppressedOutage", "UnverifiedEvidence"]


@register_kind
@dataclass(slots=True)
class HeldMessage:
    """An inline message waiting (at most until ``deadline``, gateway clock) for evidence on its way.
    ``esmes`` are the in-scope ESMEs whose evidence can release it; ``decision`` the hold decision."""

    kind: ClassVar[str] = "held"

    event: InlineEvent
    since: datetime
    deadline: datetime
    esmes: tuple[int, ...]
    decision: Decision


@register_kind
@dataclass(slots=True)
class SuppressedOutage:
    """A suppressed AD1, kept so that a restoration alert of the same ESME/CH can be paired with it."""

    kind: ClassVar[str] = "suppressed"

    message_id: str
    ch: int
    mpan: str | None
    esmes: tuple[int, ...]
    start_time: datetime
    opens: datetime
    closes: datetime
    decided_at: datetime


@register_kind
@dataclass(slots=True)
class UnverifiedEvidence:
    """Activation evidence that failed verification: never used to suppress, only to say so."""

    kind: ClassVar[str] = "unverified"

    message_id: str
    esme: int
    role: str
    time: datetime
    verification: str
    at: datetime


@register_kind
@dataclass(slots=True)
class Seen:
    """Idempotency key: a message id already handled, with its latest decision (inline lane)."""

    kind: ClassVar[str] = "seen"

    message_id: str
    event_kind: str
    at: datetime
    decision: Decision | None = None
    note: str = ""


@register_kind
@dataclass(frozen=True, slots=True)
class ClockRecord:
    """The gateway clock (latest arrival or tick) at the last Tick."""

    kind: ClassVar[str] = "clock"

    now: datetime


@register_kind
@dataclass(frozen=True, slots=True)
class LearnedLink:
    """An inventory link learned from verified traffic (re-applied to the inventory on restore)."""

    kind: ClassVar[str] = "learned"

    esme: int
    ch: int | None
    mpan: str | None
    manufacturer: str | None
    model: str | None
    at: datetime
