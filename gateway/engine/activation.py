r"""The firmware-activation state machine (one record per SR 11.3 command).

Theory of operation
===================

An *activation* is one SR 11.3 (GBCS CS06) command, identified by ``(esme, supplier, counter)``:
the RequestID's target, originator and counter. The same triple is echoed by the device response
(ResponseID, GBCS originator/counter) and by the future-dated outcome alert 8F66/8F67 (alert
originator = ESME, recipient = supplier, ``originatorCounter`` of the command), so every piece of
evidence finds its record without ambiguity. Only *verified* evidence reaches this module (the
engine keeps unverified evidence apart, for the audit trail only).

States::

    (new) --request, immediate-----------> PENDING_IMMEDIATE --response success--> CONFIRMED
      |                                         |           \--response failure--> FAILED
      |--request, future-dated-----------> PENDING_FUTURE --8F66-----------------> CONFIRMED
      |                                         |  \----8F67------------------------> FAILED
      |                                         \------cancellation of the ESME----> CANCELLED
      |--request, cancellation sentinel--> CANCELLED  (the cancel command itself; no window)
      |--response / 8F66 / 8F67 without the request observed: straight to CONFIRMED/FAILED,
      \--response "accepted" (NULL) without the request: PENDING_FUTURE, execution time unknown

    any state --expire (retention elapsed, pruned on Tick)--> EXPIRED (the record is dropped)

The table :data:`TRANSITIONS` is the whole machine; a (state, event) pair not in it keeps the
state and only adds the evidence (real traffic is noisy: a repeated request, a duplicate response,
a late 8F67 after an 8F66 are not errors; a request observed after its command's outcome changes neither
the record's kind nor its window, which AD1s were already judged on). The table is chosen so that the order
in which evidence of ONE command arrives does not change where it ends: 8F66 wins over a cancellation and over a
failure in either order (the device said it ran), 8F67 after a cancellation is a failure just as a
cancellation after 8F67 leaves it failed.

Activation time (the window's anchor) and window
-----------------------------------------------

- immediate: the DUIS ``ResponseDateTime`` of the response (DCC clock, same family as the AD1's
  StartDateTime). The meter's GBCS date-time is kept and a disagreement beyond
  ``clock_skew_flag`` sets ``skew_flagged`` (reported as the ``clock-skew`` flag), never the anchor.
  The window opens when the request was observed (``requested_at``), else ``activation - before``.
- future-dated: the execution date-time in the 8F66/8F67 alert. The request is usually observed long
  before execution, so the window opens at ``activation - before``, but never before the request was
  observed (when that was not after the anchor): nothing before the command was caused by it.
- both close at ``activation + after``.

A pending record has a *candidate* window used only to decide whether an AD1 must wait for the
outcome: pending-immediate ``[requested_at, requested_at + before + after]`` (the response, hence the
anchor, comes after the request, and a meter may reboot for ``before`` before it answers);
pending-future ``[execution - before, execution + after]``, or from ``accepted - before`` onwards when
the execution time is unknown (only the "accepted" response was seen), opening no earlier than the request
was observed, as above.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Literal

from gateway.engine.config import EngineConfig
from gateway.engine.effects import EvidenceItem, Reason
from gateway.engine.events import ActivationRequested, ActivationResponse, FutureDatedOutcome
from gateway.engine.records import register_kind

__all__ = [
    "FAR_FUTURE",
    "TRANSITIONS",
    "ActEvent",
    "ActState",
    "Activation",
    "ActivationKey",
    "Assessment",
    "Step",
    "apply",
    "assess",
    "candidate_window",
    "classify",
    "expires_at",
    "format_key",
    "window",
]

ActivationKey = tuple[int, int, int]  # (esme, supplier, counter)
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)


class ActState(enum.StrEnum):
    NEW = "new"  # no record yet (only as a table row's source state)
    PENDING_IMMEDIATE = "pending-immediate"
    PENDING_FUTURE = "pending-future"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class ActEvent(enum.StrEnum):
    REQUEST_IMMEDIATE = "request-immediate"
    REQUEST_FUTURE = "request-future"
    REQUEST_CANCEL = "request-cancel"  # the cancellation command's own record
    RETRACT = "retract"  # a cancellation for this ESME, applied to its other records
    RESPONSE_SUCCESS = "response-success"  # result in activation_results
    RESPONSE_FAILURE = "response-failure"  # any other result
    RESPONSE_ACCEPTED = "response-accepted"  # NULL: accepted for future execution
    FD_SUCCESS = "fd-success"  # 8F66
    FD_FAILURE = "fd-failure"  # 8F67
    EXPIRE = "expire"


class Step(enum.StrEnum):
    OPEN = "open"
    NOTE_REQUEST = "note-request"
    CONFIRM_RESPONSE = "confirm-response"
    FAIL_RESPONSE = "fail-response"
    ACCEPT = "accept"
    CONFIRM_FD = "confirm-fd"
    FAIL_FD = "fail-fd"
    RETRACT = "retract"
    NOTE = "note"
    DROP = "drop"


S, E, A = ActState, ActEvent, Step
#: (state, event) -> (next state, step). Pairs not listed: same state, Step.NOTE.
TRANSITIONS: dict[tuple[ActState, ActEvent], tuple[ActState, Step]] = {
    (S.NEW, E.REQUEST_IMMEDIATE): (S.PENDING_IMMEDIATE, A.OPEN),
    (S.NEW, E.REQUEST_FUTURE): (S.PENDING_FUTURE, A.OPEN),
    (S.NEW, E.REQUEST_CANCEL): (S.CANCELLED, A.OPEN),
    (S.NEW, E.RESPONSE_SUCCESS): (S.CONFIRMED, A.CONFIRM_RESPONSE),
    (S.NEW, E.RESPONSE_FAILURE): (S.FAILED, A.FAIL_RESPONSE),
    (S.NEW, E.RESPONSE_ACCEPTED): (S.PENDING_FUTURE, A.ACCEPT),
    (S.NEW, E.FD_SUCCESS): (S.CONFIRMED, A.CONFIRM_FD),
    (S.NEW, E.FD_FAILURE): (S.FAILED, A.FAIL_FD),
    (S.PENDING_IMMEDIATE, E.REQUEST_IMMEDIATE): (S.PENDING_IMMEDIATE, A.NOTE_REQUEST),
    (S.PENDING_IMMEDIATE, E.RESPONSE_SUCCESS): (S.CONFIRMED, A.CONFIRM_RESPONSE),
    (S.PENDING_IMMEDIATE, E.RESPONSE_FAILURE): (S.FAILED, A.FAIL_RESPONSE),
    (S.PENDING_IMMEDIATE, E.RESPONSE_ACCEPTED): (S.PENDING_FUTURE, A.ACCEPT),
    (S.PENDING_IMMEDIATE, E.FD_SUCCESS): (S.CONFIRMED, A.CONFIRM_FD),
    (S.PENDING_IMMEDIATE, E.FD_FAILURE): (S.FAILED, A.FAIL_FD),
    (S.PENDING_FUTURE, E.REQUEST_FUTURE): (S.PENDING_FUTURE, A.NOTE_REQUEST),
    (S.PENDING_FUTURE, E.RESPONSE_ACCEPTED): (S.PENDING_FUTURE, A.ACCEPT),
    (S.PENDING_FUTURE, E.RESPONSE_SUCCESS): (S.CONFIRMED, A.CONFIRM_RESPONSE),
    (S.PENDING_FUTURE, E.RESPONSE_FAILURE): (S.FAILED, A.FAIL_RESPONSE),
    (S.PENDING_FUTURE, E.FD_SUCCESS): (S.CONFIRMED, A.CONFIRM_FD),
    (S.PENDING_FUTURE, E.FD_FAILURE): (S.FAILED, A.FAIL_FD),
    (S.PENDING_FUTURE, E.RETRACT): (S.CANCELLED, A.RETRACT),
    # a cancellation command seen after its own "accepted" response (which opened a pending record
    # without knowing what it accepted): the record is the cancellation's, so it ends cancelled, as in
    # the other order
    (S.PENDING_FUTURE, E.REQUEST_CANCEL): (S.CANCELLED, A.OPEN),
    # a request observed after its command's outcome (confirmed or failed) is evidence only: the outcome fixed the
    # record's kind (its reason) and its window, which AD1s were already judged on (ENGINE.md §4). Not listed:
    # Step.NOTE, as for any other evidence of a decided command
    (S.FAILED, E.FD_SUCCESS): (S.CONFIRMED, A.CONFIRM_FD),
    (S.CANCELLED, E.REQUEST_FUTURE): (S.CANCELLED, A.NOTE_REQUEST),
    (S.CANCELLED, E.FD_SUCCESS): (S.CONFIRMED, A.CONFIRM_FD),
    (S.CANCELLED, E.FD_FAILURE): (S.FAILED, A.FAIL_FD),
    **{(s, E.EXPIRE): (S.EXPIRED, A.DROP) for s in ActState if s not in (S.NEW, S.EXPIRED)},
}
del S, E, A


@register_kind
@dataclass(frozen=True, slots=True)
class Activation:
    """The state of one SR 11.3 command (a plain record: see ``gateway.engine.records``).

    ``kind``: immediate, future (future-dated), cancel (the cancellation command itself) or unknown
    (outcome seen without the request). ``activation_time`` is the window anchor once known;
    ``accepted_at`` the ResponseDateTime of a NULL ("accepted") response; ``updated_at`` the gateway
    clock at the last change (with the event times it bounds retention)."""

    kind: ClassVar[str] = "activation"

    esme: int
    supplier: int
    counter: int
    state: ActState
    command: Literal["immediate", "future", "cancel", "unknown"]
    updated_at: datetime
    requested_at: datetime | None = None
    execution_time: datetime | None = None
    response_time: datetime | None = None
    accepted_at: datetime | None = None
    result: int | None = None
    activation_time: datetime | None = None
    gbcs_time: datetime | None = None
    skew_flagged: bool = False
    fd_failed: bool = False
    firmware_version: str | None = None
    evidence: tuple[EvidenceItem, ...] = ()

    @property
    def key(self) -> ActivationKey:
        return (self.esme, self.supplier, self.counter)


def format_key(key: ActivationKey) -> str:
    """``ESME:SUPPLIER:COUNTER`` (EUIs as 16 upper-case hex digits), the record key in the store."""
    return f"{key[0]:016X}:{key[1]:016X}:{key[2]}"


Evidence = ActivationRequested | ActivationResponse | FutureDatedOutcome


def classify(event: Evidence, cfg: EngineConfig) -> ActEvent:
    """The machine event a (verified, matching) observation is."""
    if isinstance(event, ActivationRequested):
        if event.is_cancellation:
            return ActEvent.REQUEST_CANCEL
        return ActEvent.REQUEST_IMMEDIATE if event.execution_time is None else ActEvent.REQUEST_FUTURE
    if isinstance(event, ActivationResponse):
        if event.accepted_future or event.result is None:
            return ActEvent.RESPONSE_ACCEPTED
        return ActEvent.RESPONSE_SUCCESS if event.result in cfg.activation_results else ActEvent.RESPONSE_FAILURE
    return ActEvent.FD_SUCCESS if event.succeeded else ActEvent.FD_FAILURE


def _item(event: Evidence) -> EvidenceItem:
    if isinstance(event, ActivationRequested):
        if event.is_cancellation:
            return EvidenceItem("cancellation", event.message_id, event.esme, event.seen_at)
        detail = "immediate" if event.execution_time is None else f"execute {event.execution_time.isoformat()}"
        return EvidenceItem("request", event.message_id, event.esme, event.seen_at, detail)
    if isinstance(event, ActivationResponse):
        detail = "accepted" if event.accepted_future or event.result is None else f"result {event.result}"
        return EvidenceItem("response", event.message_id, event.esme, event.response_time, detail)
    return EvidenceItem(
        "fd-outcome", event.message_id, event.esme, event.execution_time, f"{event.alert_code:04X} result {event.result}"
    )


def apply(
    current: Activation | None,
    event: Evidence | None,
    machine_event: ActEvent,
    cfg: EngineConfig,
    clock: datetime,
) -> Activation | None:
    """Run one transition. Returns the new record, or None when the record is dropped.

    For :attr:`ActEvent.RETRACT` ``event`` is the cancellation request that retracts ``current``;
    for :attr:`ActEvent.EXPIRE` it is None."""
    state = ActState.NEW if current is None else current.state
    next_state, step = TRANSITIONS.get((state, machine_event), (state, Step.NOTE))
    if step is Step.DROP:
        return None
    if event is None:
        raise ValueError(f"{machine_event} needs its evidence")
    if current is None:
        esme, supplier, counter = _triple(event)
        current = Activation(esme, supplier, counter, next_state, "unknown", clock)
    item = _item(event)
    evidence = current.evidence if item in current.evidence else (*current.evidence, item)
    changes: dict[str, object] = {"state": next_state, "updated_at": max(clock, current.updated_at), "evidence": evidence}
    if step in (Step.OPEN, Step.NOTE_REQUEST) and isinstance(event, ActivationRequested):
        seen = event.seen_at if current.requested_at is None else min(current.requested_at, event.seen_at)
        changes["requested_at"] = seen
        if event.is_cancellation:
            changes["command"] = "cancel"
        elif event.execution_time is not None:
            changes["command"] = "future"
            if current.execution_time is None:
                changes["execution_time"] = event.execution_time
        elif current.command == "unknown":
            changes["command"] = "immediate"
    elif step in (Step.CONFIRM_RESPONSE, Step.FAIL_RESPONSE) and isinstance(event, ActivationResponse):
        changes.update(
            response_time=event.response_time,
            result=event.result,
            activation_time=event.response_time,
            gbcs_time=event.gbcs_time,
            firmware_version=event.firmware_version,
            skew_flagged=event.gbcs_time is not None
            and abs(event.gbcs_time - event.response_time) > cfg.clock_skew_flag,
        )
        if current.command == "unknown":
            changes["command"] = "immediate"
    elif step is Step.ACCEPT and isinstance(event, ActivationResponse):
        if current.accepted_at is None:
            changes["accepted_at"] = event.response_time
        if current.command == "unknown":
            changes["command"] = "future"
    elif step in (Step.CONFIRM_FD, Step.FAIL_FD) and isinstance(event, FutureDatedOutcome):
        changes.update(
            activation_time=event.execution_time,
            execution_time=event.execution_time,
            result=event.result,
            firmware_version=event.firmware_version,
            fd_failed=step is Step.FAIL_FD,
            command="future" if current.command != "cancel" else "cancel",
        )
    return dataclasses.replace(current, **changes)  # type: ignore[arg-type]


def _triple(event: Evidence) -> ActivationKey:
    if isinstance(event, FutureDatedOutcome):
        return (event.esme, event.supplier, event.command_counter)
    return (event.esme, event.supplier, event.counter)


def expires_at(act: Activation, cfg: EngineConfig) -> datetime:
    """When the record may be pruned: ``retention`` after the latest of its clock and event times."""
    latest = act.updated_at
    for t in (act.activation_time, act.execution_time, act.requested_at, act.accepted_at):
        if t is not None and t > latest and t < FAR_FUTURE:
            latest = t
    return latest + cfg.keep_for


def window(act: Activation, cfg: EngineConfig) -> tuple[datetime, datetime] | None:
    """The activation window ``(opens, closes)`` once the activation time is known."""
    anchor = act.activation_time
    if anchor is None:
        anchor = act.execution_time if act.state is ActState.CANCELLED and act.command == "future" else None
    if anchor is None:
        return None
    requested = act.requested_at
    if act.command not in ("future", "cancel") and requested is not None and requested <= anchor:
        # from the command (nothing before it was caused by it), but at most request_lead_max before the
        # response: a late response must not stretch the window over hours of genuine outages
        return max(requested, anchor - cfg.request_lead_max), anchor + cfg.window_after
    # future-dated (window_before before the execution, but never before the command existed: a request
    # scheduled minutes ahead must not explain an outage that began before it was sent), an 8F66/8F67 naming a
    # cancellation command's own counter (anchored at its execution time, as one of a command never observed),
    # no request seen, or one observed only after its outcome
    return _not_before(requested, anchor - cfg.window_before, anchor), anchor + cfg.window_after


def candidate_window(act: Activation, cfg: EngineConfig) -> tuple[datetime, datetime] | None:
    """For a pending record: the start times of AD1s its outcome could still explain."""
    if act.state is ActState.PENDING_IMMEDIATE and act.requested_at is not None:
        return act.requested_at, act.requested_at + cfg.window
    if act.state is ActState.PENDING_FUTURE:
        if act.execution_time is not None:
            execution = act.execution_time
            opens = _not_before(act.requested_at, execution - cfg.window_before, execution)
            return opens, execution + cfg.window_after
        if act.accepted_at is not None:
            accepted = act.accepted_at
            return _not_before(act.requested_at, accepted - cfg.window_before, accepted), FAR_FUTURE
    return None


def _not_before(requested: datetime | None, opens: datetime, anchor: datetime) -> datetime:
    """``opens``, or the time the request was observed (``requested``) when that is later and not after the
    ``anchor`` (a request observed only after it says nothing of when the command was sent): nothing before
    the command was caused by it."""
    return requested if requested is not None and opens < requested <= anchor else opens


@dataclass(frozen=True, slots=True)
class Assessment:
    """How one activation relates to an outage at a given start time.

    ``verdict``: suppress (explains it), pending (might, outcome awaited), retracted (would have,
    but failed/cancelled), outside (known, but the time is outside its window)."""

    verdict: Literal["suppress", "pending", "retracted", "outside"]
    reason: Reason
    opens: datetime | None
    closes: datetime | None


def assess(act: Activation, start: datetime, cfg: EngineConfig) -> Assessment | None:
    """Relate ``act`` to an outage that started at ``start`` (None: the record says nothing)."""
    state = act.state
    if state in (ActState.PENDING_IMMEDIATE, ActState.PENDING_FUTURE):
        cw = candidate_window(act, cfg)
        if cw is None:
            return None
        reason = Reason.PENDING_IMMEDIATE if state is ActState.PENDING_IMMEDIATE else Reason.PENDING_FUTURE
        if cw[0] <= start <= cw[1]:
            return Assessment("pending", reason, cw[0], cw[1])
        return Assessment("outside", Reason.OUTSIDE_WINDOW, cw[0], cw[1])
    w = window(act, cfg)
    if w is None:
        return None
    inside = w[0] <= start <= w[1]
    if not inside:
        return Assessment("outside", Reason.OUTSIDE_WINDOW, w[0], w[1])
    if state is ActState.CONFIRMED:
        reason = Reason.FD_CONFIRMED if act.command == "future" or act.response_time is None else Reason.ACTIVATION_WINDOW
        return Assessment("suppress", reason, w[0], w[1])
    if state is ActState.FAILED:
        if act.fd_failed:
            if cfg.fd_failure_policy == "suppress":
                return Assessment("suppress", Reason.FD_FAILED_COUNTED, w[0], w[1])
            return Assessment("retracted", Reason.FD_FAILED, w[0], w[1])
        return Assessment("retracted", Reason.ACTIVATION_FAILED, w[0], w[1])
    if state is ActState.CANCELLED:
        return Assessment("retracted", Reason.CANCELLED, w[0], w[1])
    return None
