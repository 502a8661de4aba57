"""The seam between the transport shell (this package) and the decision pipeline.

Theory of operation: the transport owns sockets, TLS, the durable outbox, MQTT, metrics and
shutdown; the pipeline owns parse → verify → correlate → decide. They meet at one protocol,
:class:`Processor`:

* the ingress calls :meth:`Processor.accept` once per DUIS message (one HTTP POST, or one MQTT
  message on an observation topic) and answers the sender only after it returns;
* ``accept`` returns only once the message — and every :class:`Delivery` it causes — is durably
  recorded (see :mod:`gateway.service.outbox` for the atomic "decision + outbox rows" path);
* :meth:`Processor.tick` is called periodically with the wall-clock time so the processor can
  release held messages (it enqueues their deliveries itself, durably, like ``accept``).

Failure contract for ``accept``:

* bad input → return ``AcceptResult(accepted=False, status=400, reason=<named code>)`` after
  keeping the bytes in a rejects store (or raise a :class:`~gateway.errors.DuisgwError`: the
  ingress then keeps the bytes itself in the shared rejects table and answers 400 with its code);
* the store cannot record anything → raise :class:`StoreUnavailable` (the ingress answers 503 so
  the sender retries; nothing was accepted);
* any other exception is a bug: the ingress keeps the bytes, logs, and answers 500.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from gateway.errors import DuisgwError

__all__ = [
    "MESSAGE_ID_HEADER",
    "AcceptResult",
    "Delivery",
    "Lane",
    "Processor",
    "ServiceError",
    "StoreUnavailable",
    "UnknownDestination",
    "message_id_header_value",
]

MESSAGE_ID_HEADER = "X-DUISGW-Message-Id"

# every printable ASCII character but "%" stands for itself in the header's value
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def message_id_header_value(message_id: str) -> str:
    """``message_id`` as the value of :data:`MESSAGE_ID_HEADER`: unchanged when it is printable ASCII without
    ``%`` (every id the DCC's EUIs and counters make), else percent-encoded (UTF-8). A message id holds the
    message's kind, whose DUIS text (a ``DCCAlertCode``, a ``ResponseCode``) is kept as received, so a signed
    message can carry a CR or LF into it, which no HTTP header may hold (aiohttp refuses to send one)."""
    if message_id.isascii() and message_id.isprintable() and "%" not in message_id:
        return message_id
    return urllib.parse.quote(message_id, safe=_HEADER_SAFE)


class Lane(StrEnum):
    """Which stream a message arrived on."""

    INLINE = "inline"  # bound for a DNO: gets exactly one decision (forward / suppress / hold)
    OBSERVE = "observe"  # traffic the DNO never sees: builds state, never forwarded, never blocked


@dataclass(frozen=True)
class Delivery:
    """One message to send, unchanged, to one DNO destination (a configured destination name)."""

    message_id: str
    destination: str
    body: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)  # decision, reason, kind, ...


@dataclass(frozen=True)
class AcceptResult:
    """The outcome of :meth:`Processor.accept`.

    ``status`` is the HTTP status the ingress answers: 202 or 204 when accepted, 400 when rejected.
    ``reason`` is a named reason code (a rejection code, or the decision's reason). ``kind`` is the
    message kind for metrics (e.g. ``"AD1"``, ``"11.3-response"``), when the processor knows it.
    """

    accepted: bool
    status: int
    reason: str | None = None
    message_id: str | None = None
    decision: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.accepted and self.status not in (200, 202, 204):
            raise ValueError(f"accepted result needs status 200/202/204, got {self.status}")
        if not self.accepted and self.status != 400:
            raise ValueError(f"rejected result needs status 400, got {self.status}")


@runtime_checkable
class Processor(Protocol):
    """The decision pipeline as the transport sees it."""

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        """Record and decide one message. ``user`` is the destination name on the inline lane
        (``None`` on the observation lane). Returns only after the message and any forward
        :class:`Delivery` it causes are durably recorded."""
        ...

    async def tick(self, now: datetime) -> None:
        """Run timers (held-message release). Called periodically by the service."""
        ...


class ServiceError(DuisgwError):
    code = "service_error"


class StoreUnavailable(ServiceError):
    """The durable store cannot record the message now: the ingress answers 503 (retry later)."""

    code = "store_unavailable"


class UnknownDestination(ServiceError):
    """The inline-lane path names no configured DNO destination."""

    code = "unknown_destination"
