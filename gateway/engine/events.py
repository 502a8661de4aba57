"""The engine's input vocabulary: what the pipeline has learned from one verified DUIS/GBCS message.

Every message event carries

- ``message_id``: the stable identity of the DUIS message (idempotency key: a re-delivery has the
  same id and gets the original decision);
- ``arrival``: when the gateway received it (gateway clock; drives holds and retention only);
- ``verified`` / ``verification``: whether every signature that matters was verified against the
  right role's certificate, and why not. Unverified evidence never leads to suppression;
- ``digest``: the digest of the message's bytes (the pipeline's, ``gateway.pipeline.body_digest``: the first 96
  bits of their SHA-256, an int; None when not known). A message whose XML signature did not verify is decided
  under its identity marked with it (:data:`UNSIGNED_MARK`, :func:`unsigned_id`): the engine tells the same bytes
  under their two ids by it (ENGINE.md §8).

Event times (``start_time``, ``response_time``, ``execution_time`` ...) are the DCC's or the
meter's own, and are the only times the activation window is computed from. All date-times are
timezone-aware (UTC); naive ones are handled by ``EngineConfig.naive_timestamp_policy``.

Two lanes: *inline* events (bound for a DNO) each get exactly one decision; *observation* events
build state and are never blocked. :class:`Tick` advances the gateway clock.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Literal

from gateway.engine.records import register_kind
from gateway.slotpickle import fast_pickle

__all__ = [
    "ALERT_FD_FAILURE",
    "ALERT_FD_SUCCESS",
    "CANCELLATION_SENTINEL",
    "DEVICE_REMOVED",
    "HUB_DECOMMISSIONED",
    "METER_IDENTITY",
    "METER_REMOVED",
    "RESTORATION_ALERTS",
    "UNSIGNED_MARK",
    "ActivationRequested",
    "ActivationResponse",
    "DeviceStatusChange",
    "Event",
    "FutureDatedOutcome",
    "InlineEvent",
    "InventoryObserved",
    "InventoryUnlinked",
    "MessageEvent",
    "ObservationEvent",
    "OtherInline",
    "PowerOutage",
    "SupplyRestored",
    "Tick",
    "digest_text",
    "has_naive_time",
    "naive_fields",
    "signed_twin",
    "unsigned_id",
    "with_utc_times",
]

ALERT_FD_SUCCESS = 0x8F66
ALERT_FD_FAILURE = 0x8F67
#: ECS80 "Supply Outage Restored" alerts: 8F35, 8F36 (>= 3 min) and per-phase 8F37-8F3C.
RESTORATION_ALERTS = frozenset(range(0x8F35, 0x8F3D))
#: DUIS cancellation of a future-dated command: ExecutionDateTime 3000-12-31T00:00:00Z.
CANCELLATION_SENTINEL = datetime(3000, 12, 31, tzinfo=UTC)
#: The ``DeviceStatusChange`` choices that end inventory links (:class:`InventoryUnlinked`).
METER_REMOVED = "MeterDecommissioningOrWithdrawal"
HUB_DECOMMISSIONED = "CHFDecommissioning"
DEVICE_REMOVED = "DeviceRemovedFromInventory"
METER_IDENTITY = "MeterIdentity"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEvent:
    """Fields common to every event made from one DUIS message."""

    lane: ClassVar[Literal["inline", "observation"]]
    kind: ClassVar[str]

    message_id: str
    arrival: datetime
    verified: bool
    verification: str = "ok"
    digest: int | None = None


#: marks the identity of a message whose XML signature did not verify: ``<identity>#unverified:<digest>`` (the
#: digest of its bytes, :attr:`MessageEvent.digest`, in 24 hex digits), so an unsigned copy never takes a signed
#: message's identity
UNSIGNED_MARK = "#unverified:"


def digest_text(digest: int) -> str:
    """A digest (:attr:`MessageEvent.digest`) as the ids write it: 24 lowercase hex digits."""
    return f"{digest:024x}"


def unsigned_id(identity: str, digest: int) -> str:
    """The id under which bytes with this ``digest`` are decided when their XML signature does not verify (an
    inline message's: its id is its DUIS ``identity``, which an observation's events may extend after the mark)."""
    return f"{identity}{UNSIGNED_MARK}{digest:024x}"


def signed_twin(message_id: str, digest: int | None) -> str | None:
    """The id the same bytes have when their XML signature verifies: ``message_id`` without its mark
    ``#unverified:<digest>`` (what follows the mark, an observation event's suffix, stays); None when the id
    does not carry the mark of this ``digest`` (a signed message's id, or no digest known)."""
    if digest is None:
        return None
    mark = f"{UNSIGNED_MARK}{digest:024x}"
    at = message_id.find(mark)
    return None if at < 0 else message_id[:at] + message_id[at + len(mark) :]


# ---- observation lane ------------------------------------------------------------------------


@register_kind
@fast_pickle
@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationRequested(MessageEvent):
    """An SR 11.3 Activate Firmware request (CV4 or the signed CV5) seen at the DSP boundary.

    ``seen_at`` is when the command was observed (opens the window of an immediate activation);
    ``execution_time`` is the request's ExecutionDateTime (future-dated) or None (immediate);
    ``is_cancellation`` is True for ExecutionDateTime 3000-12-31 (the cancellation sentinel)."""

    lane: ClassVar[Literal["inline", "observation"]] = "observation"
    kind: ClassVar[str] = "activation-requested"

    supplier: int
    esme: int
    counter: int
    execution_time: datetime | None
    is_cancellation: bool
    seen_at: datetime


@register_kind
@fast_pickle
@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationResponse(MessageEvent):
    """The ESME's 11.3 (GBCS CS06) response, delivered to the supplier.

    ``response_time`` is the DUIS ResponseDateTime (DCC clock, the anchor of an immediate
    activation); ``result`` the CS06 responseCode (0..3) or None with ``accepted_future`` True when
    the device answered NULL (accepted for future execution / cancellation accepted); ``gbcs_time``
    the meter's own date-time in the payload (kept as evidence, flagged when it disagrees);
    ``originator_matches`` / ``counter_matches``: the GBCS originator equals the RequestID target and
    the GBCS counter equals the DUIS counter (checked by the pipeline; a mismatch is not evidence)."""

    lane: ClassVar[Literal["inline", "observation"]] = "observation"
    kind: ClassVar[str] = "activation-response"

    esme: int
    supplier: int
    counter: int
    response_time: datetime
    result: int | None
    accepted_future: bool = False
    gbcs_time: datetime | None = None
    firmware_version: str | None = None
    originator_matches: bool = True
    counter_matches: bool = True


@register_kind
@fast_pickle
@dataclass(frozen=True, slots=True, kw_only=True)
class FutureDatedOutcome(MessageEvent):
    """An 8F66 (success) / 8F67 (failure) Future Dated Firmware Activation Alert (GBCS 0x00CA).

    Correlates with its command by (alert originator = ESME, recipient = supplier, command counter)."""

    lane: ClassVar[Literal["inline", "observation"]] = "observation"
    kind: ClassVar[str] = "future-dated-outcome"

    esme: int
    supplier: int
    command_counter: int
    execution_time: datetime
    result: int | None
    alert_code: int
    firmware_version: str | None = None

    @property
    def succeeded(self) -> bool:
        """8F66 with a success result (0). An 8F66 whose result says otherwise contradicts itself and
        counts as a failure, like an 8F67: it never confirms an activation (nor suppresses anything)."""
        return self.alert_code == ALERT_FD_SUCCESS and self.result in (0, None)


@register_kind
@fast_pickle
@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryObserved(MessageEvent):
    """Device links from an 8.2 Read Inventory response: this ESME
    sits behind ``ch`` and serves ``mpan``. ``esme`` is an ESME by contract: the engine cannot tell a
    device's type, so the pipeline emits none for a device its message does not show to be one.
    ``time`` is the message's own time (``ResponseDateTime``): links are ordered by it, not by arrival
    (None: learned without a time, older than any timed evidence)."""

    lane: ClassVar[Literal["inline", "observation"]] = "observation"
    kind: ClassVar[str] = "inventory-observed"

    esme: int
    ch: int | None
    mpan: str | None
    manufacturer: str | None = None
    model: str | None = None
    time: datetime | None = None


@register_kind
@fast_pickle
@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryUnlinked(MessageEvent):
    """A DCC status change alert (``DeviceStatusChangeEvent``) that ends links; ``change`` names which
    (the alert's choice element) and says how ``esme``, the device the alert names (its ``DeviceID``),
    is read. Every link it ends ends as of ``time``, the alert's own time (``ResponseDateTime``), unless
    newer evidence of it is known; it never creates or restores a link (ending one only ever makes
    suppression rarer).

    - ``MeterDecommissioningOrWithdrawal``: ``esme`` is the meter (an ESME, or a gas meter the inventory
      does not hold); its Comms Hub and MPxN links end.
    - ``CHFDecommissioning``: ``esme`` is the Comms Hub; the Comms Hub link of every ESME behind it ends.
    - ``DeviceRemovedFromInventory``: ``esme`` is any device: a Comms Hub with ESMEs behind it is read
      as one (their Comms Hub links end), any other device as a meter (its Comms Hub and MPxN links end).
    - ``MeterIdentity``: ``esme`` is the meter and ``mpxns`` every MPxN the alert states for it; the
      meter's MPxN link ends when it is none of them (a contradicted link; none is learned).

    ``ch`` (the Comms Hub among a decommissioning's associated devices, when it names exactly one) and
    ``mpan`` (the import MPxN the alert states) are what the alert says, for the audit trail."""

    lane: ClassVar[Literal["inline", "observation"]] = "observation"
    kind: ClassVar[str] = "inventory-unlinked"

    esme: int
    ch: int | None
    mpan: str | None
    change: str
    time: datetime
    mpxns: tuple[str, ...] = ()


@register_kind
@fast_pickle
@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceStatusChange(MessageEvent):
    """A DCC DeviceStatusChangeEvent alert (``change`` = the child element name, e.g.
    ``MeterDecommissioningOrWithdrawal``). Recorded for audit; it changes no activation state."""

    lane: ClassVar[Literal["inline", "observation"]] = "observation"
    kind: ClassVar[str] = "device-status-change"

    device: int
    change: str
    time: datetime | None = None


# ---- inline lane (bound for a DNO) -----------------------------------------------------------


@register_kind
@fast_pickle
@dataclass(frozen=True, slots=True, kw_only=True)
class PowerOutage(MessageEvent):
    """DCC alert AD1 PowerOutageEvent: ``ch`` = CommsHubDeviceID, ``mpan`` = MPxN,
    ``start_time`` = StartDateTime (the only time the window is tested against)."""

    lane: ClassVar[Literal["inline", "observation"]] = "inline"
    kind: ClassVar[str] = "power-outage"

    ch: int
    mpan: str | None
    start_time: datetime
    response_time: datetime | None = None


@register_kind
@fast_pickle
@dataclass(frozen=True, slots=True, kw_only=True)
class SupplyRestored(MessageEvent):
    """ESME device alert 8F35-8F3C (ECS80 Supply Outage Restored) sent to the network operator.

    ``clock_unreliable``: why the device's own DLMS clock status marks ``interruption_time`` not to be
    trusted (invalid value, doubtful value or invalid clock status), empty when it does not. Such a
    time is never evidence: the restoration is not paired (and never waits for a held AD1)."""

    lane: ClassVar[Literal["inline", "observation"]] = "inline"
    kind: ClassVar[str] = "supply-restored"

    esme: int
    alert_code: int
    interruption_time: datetime
    restoration_time: datetime | None = None
    clock_unreliable: str = ""


@register_kind
@fast_pickle
@dataclass(frozen=True, slots=True, kw_only=True)
class OtherInline(MessageEvent):
    """Any other DNO-bound message: always forwarded (``description`` is for the audit trail)."""

    lane: ClassVar[Literal["inline", "observation"]] = "inline"
    kind: ClassVar[str] = "other-inline"

    description: str = ""
    event_time: datetime | None = None


@register_kind
@dataclass(frozen=True, slots=True)
class Tick:
    """The gateway clock has reached ``now`` (drives hold time-outs and retention pruning)."""

    kind: ClassVar[str] = "tick"

    now: datetime


ObservationEvent = (
    ActivationRequested
    | ActivationResponse
    | FutureDatedOutcome
    | InventoryObserved
    | InventoryUnlinked
    | DeviceStatusChange
)
InlineEvent = PowerOutage | SupplyRestored | OtherInline
Event = ObservationEvent | InlineEvent | Tick

_TIME_FIELDS: dict[type, tuple[str, ...]] = {}


def _time_fields(cls: type) -> tuple[str, ...]:
    names = _TIME_FIELDS.get(cls)
    if names is None:
        import typing

        hints = typing.get_type_hints(cls)
        names = tuple(
            f.name
            for f in dataclasses.fields(cls)
            if datetime in (hints[f.name], *typing.get_args(hints[f.name]))
        )
        _TIME_FIELDS[cls] = names
    return names


_GETTERS: dict[type, Callable[[object], tuple[datetime | None, ...]]] = {}


def has_naive_time(event: Event) -> bool:
    """True when any date-time of the event lacks a UTC offset (fast path of the engine)."""
    getter = _GETTERS.get(type(event))
    if getter is None:
        names = _time_fields(type(event))
        getter = _GETTERS[type(event)] = _tuple_getter(names)
    for value in getter(event):  # noqa: SIM110 (a plain loop is faster than any() on the hot path)
        if value is not None and value.tzinfo is None:
            return True
    return False


def _tuple_getter(names: tuple[str, ...]) -> Callable[[object], tuple[datetime | None, ...]]:
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda e: (one(e),)
    return operator.attrgetter(*names)


def time_out_of_range(event: object, earliest: datetime, latest: datetime) -> bool:
    """True when any (offset-aware) date-time of the event (or engine record: any dataclass whose date-times
    are offset-aware) is before ``earliest`` or after ``latest``: the
    engine adds and subtracts its windows and retention to the times it keeps, and a time within that much of
    the calendar's ends (year 1, year 9999) would overflow there, for every later message of its devices."""
    getter = _GETTERS.get(type(event))
    if getter is None:
        getter = _GETTERS[type(event)] = _tuple_getter(_time_fields(type(event)))
    for value in getter(event):  # noqa: SIM110 (a plain loop is faster than any() on the hot path)
        if value is not None and not (earliest <= value <= latest):
            return True
    return False


def naive_fields(event: Event) -> tuple[str, ...]:
    """Names of the event's date-time fields that lack a UTC offset (empty when all are aware)."""
    return tuple(
        name
        for name in _time_fields(type(event))
        if (value := getattr(event, name)) is not None and value.tzinfo is None
    )


def with_utc_times(event: Event) -> Event:
    """The same event with every naive date-time read as UTC."""
    changes = {}
    for name in _time_fields(type(event)):
        value = getattr(event, name)
        if value is not None and value.tzinfo is None:
            changes[name] = value.replace(tzinfo=UTC)
    return dataclasses.replace(event, **changes) if changes else event
