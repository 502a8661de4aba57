"""What the engine hands back: decisions on inline messages, and state changes for the store.

Value records (:class:`Decision`, :class:`EvidenceItem`, and the state records in ``state``) are
slotted dataclasses that are never mutated once built: they are not ``frozen`` only because a
frozen dataclass costs about four times as much to construct, and one is built per decision on the
hot path (see docs/PERFORMANCE-engine.md). Treat them as immutable.

A :class:`Decision` is the audit record of one action on one inline message: the action, a stable
reason code, and the evidence behind it (message ids, times, device ids, the window). The shell
acts on ``action`` (forward the original bytes, keep them as suppressed, or wait) and persists the
decision; :class:`StateChange` effects are the engine's own state, as plain records, to upsert or
delete so that a restarted engine continues exactly where the last commit left it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, NamedTuple

from gateway.engine.records import register_kind

__all__ = [
    "DEVICE_CLOCK_UNRELIABLE",
    "Action",
    "Decision",
    "Duplicate",
    "Effect",
    "EvidenceItem",
    "Observed",
    "Reason",
    "StateChange",
    "Table",
    "paired_outages",
]


#: A restoration whose interruption time the device's own DLMS clock status marks invalid, doubtful or of
#: invalid clock status: the flag on its decision, the role of the evidence item that says why, and the
#: pipeline's problem code (``device-clock-unreliable:<which time> clock status 0x..``).
DEVICE_CLOCK_UNRELIABLE = "device-clock-unreliable"


class Action(enum.StrEnum):
    """What happens to an inline message."""

    FORWARD = "forward"
    SUPPRESS = "suppress"
    HOLD = "hold"
    RELEASE_FORWARD = "release-forward"
    RELEASE_SUPPRESS = "release-suppress"


class Reason(enum.StrEnum):
    """Stable reason codes (used in the audit log, metrics and docs/ENGINE.md)."""

    # forwarded
    NO_ACTIVATION = "no-activation"  # in scope, no activation evidence near StartDateTime
    OUTSIDE_WINDOW = "outside-window"  # activation known, StartDateTime outside its window
    OUT_OF_SCOPE = "out-of-scope"  # no ESME on the CH/MPAN is in scope
    CH_UNKNOWN = "ch-unknown"  # inventory knows no ESME for the CH or MPAN
    EVIDENCE_UNVERIFIED = "evidence-unverified"  # only unverified evidence would have explained it
    ACTIVATION_FAILED = "activation-failed"  # the 11.3 response result does not count as activation
    FD_FAILED = "fd-failed"  # 8F67, fd_failure_policy=forward
    CANCELLED = "cancelled"  # the future-dated activation was cancelled
    HOLD_TIMEOUT = "hold-timeout"  # the outcome did not arrive within hold_limit
    NOT_PAIRED = "not-paired"  # restoration alert not paired with a suppressed AD1
    OTHER_INLINE = "other-inline"  # any other DNO-bound message
    INLINE_UNVERIFIED = "inline-unverified"  # the message's own signature failed: fail open
    NAIVE_TIMESTAMP = "naive-timestamp"  # date-time without offset, naive_timestamp_policy=reject
    TIME_OUT_OF_RANGE = "time-out-of-range"  # a date-time too near the calendar's ends to compute windows with
    # suppressed
    ACTIVATION_WINDOW = "activation-window"  # immediate activation confirmed by its 11.3 response
    FD_CONFIRMED = "fd-confirmed"  # future-dated activation confirmed by 8F66
    FD_FAILED_COUNTED = "fd-failed-counted"  # 8F67, fd_failure_policy=suppress
    RESTORATION_PAIRED = "restoration-paired"  # restoration of a suppressed AD1 (policy decides action)
    QUARANTINED = "quarantined-unverified"  # own signature failed, quarantine_unverified_inline=True
    # held
    PENDING_IMMEDIATE = "pending-immediate"  # 11.3 request seen, response not yet
    PENDING_FUTURE = "pending-future"  # future-dated activation not yet confirmed or failed
    PENDING_OUTAGE = "pending-outage"  # restoration waiting for its held AD1
    # idempotency
    DUPLICATE = "duplicate"


@register_kind
@dataclass(slots=True)
class EvidenceItem:
    """One piece of evidence: ``role`` (request, response, fd-outcome, cancellation, activation,
    suppressed-outage, released-outage, forwarded-outage, held-outage, unverified, device-clock-unreliable),
    the message it came from, the device and the time it states."""

    kind: ClassVar[str] = "evidence"

    role: str
    message_id: str
    device: int | None = None
    time: datetime | None = None
    detail: str = ""


@register_kind
@dataclass(slots=True)
class Decision:
    """One action on one inline message, with its reason and evidence.

    ``decided_at`` is the gateway clock (latest arrival/tick seen) when it was taken; ``event_time``
    the message's own time (AD1 StartDateTime, restoration interruption time); ``window_*`` the
    activation window the message was tested against, when one applied; ``activation`` the key
    ``ESME:SUPPLIER:COUNTER`` of the activation that decided it; ``flags`` e.g. ``clock-skew``;
    ``hold_deadline`` (a hold only) the latest the hold can last, gateway clock: an AD1's ``held + hold_limit``,
    a restoration's ``held + 2 * hold_limit`` (it waits for the held AD1s due before it, docs/ENGINE.md §6)."""

    kind: ClassVar[str] = "decision"

    message_id: str
    event_kind: str
    action: Action
    reason: Reason
    decided_at: datetime
    event_time: datetime | None = None
    ch: int | None = None
    mpan: str | None = None
    esmes: tuple[int, ...] = ()
    window_opens: datetime | None = None
    window_closes: datetime | None = None
    activation: str | None = None
    evidence: tuple[EvidenceItem, ...] = ()
    flags: tuple[str, ...] = ()
    hold_deadline: datetime | None = None

    @property
    def disposition(self) -> Literal["forward", "suppress"] | None:
        """The final fate: ``forward``, ``suppress``, or None while held."""
        if self.action in (Action.FORWARD, Action.RELEASE_FORWARD):
            return "forward"
        if self.action in (Action.SUPPRESS, Action.RELEASE_SUPPRESS):
            return "suppress"
        return None


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A message id seen before: ``original`` is its latest decision (None when the id was taken in as an
    observation: no decision for a DNO was ever made for it). Nothing new is delivered for a decided one; an
    inline message whose id was only observed is forwarded by the shell, once (fail open). Also the same bytes
    taken under their other id (their XML signature verified at one delivery and not at the other, ENGINE.md
    §8): ``message_id`` is then the delivery's own id and ``original`` the decision under the other
    (``original.message_id``)."""

    reason: ClassVar[Reason] = Reason.DUPLICATE

    message_id: str
    original: Decision | None


@dataclass(frozen=True, slots=True)
class Observed:
    """An observation-lane message was taken in (``used``) or not used as evidence (``note`` says why)."""

    message_id: str
    event_kind: str
    used: bool
    note: str = ""


class Table(enum.StrEnum):
    """The engine's state, as named tables of plain records."""

    ACTIVATION = "activation"
    HELD = "held"
    SEEN = "seen"
    SUPPRESSED = "suppressed"
    UNVERIFIED = "unverified"
    CLOCK = "clock"
    LEARNED = "learned"
    HUB_END = "hub-end"


class StateChange(NamedTuple):
    """Upsert (``value`` set) or delete (``value`` None) record ``key`` of ``table``.
    ``value`` is one of the engine's record dataclasses (``gateway.engine.records.to_record``)."""

    table: Table
    key: str
    value: Any


Effect = Decision | Duplicate | Observed | StateChange


def paired_outages(results: Iterable[Iterable[Effect]]) -> list[str]:
    """The suppressed AD1s that restoration alerts among ``results`` (each item's effects) were paired with
    (``restoration-paired``, the ``suppressed-outage`` evidence), whatever the policy did with them, sorted:
    what a commit checks against operator releases not taken in yet (docs/ENGINE.md §9)."""
    return sorted({
        item.message_id
        for out in results
        for eff in out
        if isinstance(eff, Decision) and eff.reason is Reason.RESTORATION_PAIRED
        for item in eff.evidence
        if item.role == "suppressed-outage"
    })  # fmt: skip
