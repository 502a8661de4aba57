"""MQTT (v5, aiomqtt): observation-lane subscription and per-destination publication.

Theory of operation
-------------------
:class:`MqttLink` keeps one connection to the broker, re-establishing it after any loss
(broker restart, network) every ``reconnect_interval`` seconds until stopped. Any other failure of
the link (a setting the client refuses, a bug) is logged as an error with its type (the traceback
once per streak), counted in ``MqttLink.errors``, and retried after a delay that doubles from
``reconnect_interval`` up to ``UNEXPECTED_BACKOFF_MAX`` while it persists: the link never ends on
its own, and :meth:`MqttLink.stop` never raises into the service's shutdown. The session is
persistent (``clean_start`` false, ``session_expiry``), so the broker keeps QoS 1 observation
messages while the gateway is away.

Observation: messages on ``observe_topics`` are fed to ``Processor.accept(Lane.OBSERVE, ...)`` one
at a time, in arrival order. Acknowledgement is manual: the PUBACK goes to the broker only after
``accept`` returned (the message is durably recorded, or rejected and kept in the rejects table);
while the store is unavailable (:class:`StoreUnavailable`, the classify workers' ``ClassifyUnavailable``
included) the message is retried every ``reconnect_interval`` and not acknowledged. A message that
killed a classify worker twice (``ClassifyWorkerDied``: a poison message, which HTTP answers 503) is not
retried — that would kill more workers and hold every observation behind it on the topic for good —: it
is rejected, kept with its bytes in the rejects table under ``classify_worker_died``, counted in the
rejects metric and acknowledged. A payload over ``max_bytes`` (``server.max_body_bytes``) is refused as
the HTTP ingress refuses such a body: not processed and not kept (a rejects row ``oversize_body``
records its size), then acknowledged.

What a backlog on the broker puts in memory is bounded by ``receive_maximum`` as far as the broker keeps to
it. The CONNECT announces it as the MQTT v5 *Receive Maximum* (MQTT 5.0 §3.1.2.11.3): the broker is to send
no more QoS 1/2 observations than that before the gateway acknowledges one (the PUBACK, or a QoS 2 exchange's
PUBCOMP, sent after ``accept``), so a backlog of QoS 1/2 observations waits on the broker and none is dropped or
reordered (mosquitto 2.0 takes it in place of its ``max_inflight_messages``, 20 by default, for this client).
mosquitto 2.0 (2.0.11 measured) keeps to it while nothing is acknowledged (the store blocked), but once the
gateway works through a backlog it sends a whole quota more after each acknowledgement of the oldest message in
flight (MQTT 5.0 §4.9 broken), and on a new connection it sends again every message that was in flight, before
its SUBACK. The link takes what the broker sends: it counts the QoS 1/2 observations handed over and not yet
acknowledged (``duisgw_mqtt_observations_unacked``), logs a warning once per connection the first time they
exceed the quota (the broker's protocol violation; they are all processed), and processes them at its own
pace. It does not stop reading the connection: the broker's other packets on it (CONNACK, SUBACK, the PUBACKs
and PUBRECs of publications, PINGRESP) would wait behind the observations, and a link waiting for a SUBACK it
no longer reads would reconnect for ever. And the observations are taken as soon as the connection is up,
while the subscription is made: those the broker sends again before its SUBACK are processed and acknowledged
meanwhile (aiomqtt queues every message paho reads, subscribed or not), so the SUBACK never waits on them. Once
the connection is lost, the QoS 1/2 observations still queued from it are left unprocessed (their PUBACK could
not be sent: the broker sends them again on the next connection, which is not delayed by them); the one under
way is finished, and comes again too. With
``observe_qos = 2`` the QoS 2 messages paho received and answered with a PUBREC, awaiting their PUBREL, are
held by paho as well. QoS 0 has no flow control: a QoS 0 observation arriving while ``receive_maximum``
observations are queued (waiting behind the one under way) is dropped on arrival, counted in
``duisgw_mqtt_observations_dropped_total`` and logged once per burst (its first drop, then its count once one
is queued again or the connection ends): the broker may drop QoS 0 messages as well. Observations are taken one
at a time in arrival order, each acknowledged after ``accept`` returned (so in order).

Oversize observations are kept off the link in the first place: the CONNECT carries the MQTT v5
*Maximum Packet Size* property (MQTT 5.0 §3.1.2.11.4) set by :func:`maximum_packet_size` to
``max_bytes`` plus the most a PUBLISH packet adds around its payload (:data:`PUBLISH_OVERHEAD_BOUND`),
and the broker must not send this client a larger packet: it drops such a message for this client
(mosquitto logs ``Dropping too large outgoing PUBLISH`` ... at NOTICE; the publisher's PUBACK is
unaffected; nothing reaches the gateway, so nothing is recorded here). A payload at the cap always
fits (with a topic name and properties within the bound), and a payload over the cap small enough
to fit is refused after receipt as above (defence in depth). The link always speaks MQTT v5.

Publication: :class:`MqttSender` is an outbox sender; each row is published with QoS
``publish_qos`` to ``publish_topic`` with the original bytes as payload and, as MQTT v5 user
properties, the row's ``message_id`` and ``destination`` and the decision metadata (one property per
key: the row's own values win over metadata of the same name). With QoS ≥ 1 the send completes on the
broker's PUBACK, and its MQTT v5 reason code decides the outcome (:func:`puback_refusal`): a success
(0x00, 0x10 No matching subscribers) is a delivery; 0x97 Quota exceeded and 0x91 Packet identifier in
use are *unreachable* (retried, not counted); every other failure code — 0x87 Not authorized (the
broker's ACL), 0x90 Topic name invalid, 0x95 Packet too large, 0x99 Payload format invalid, 0x80
Unspecified error, 0x83 Implementation specific error — is a *refusal*: counted toward
``outbox.max_attempts``, then dead-lettered, as a DNO endpoint's non-2xx answer is. aiomqtt (2.5)
drops the reason code and the CONNACK's properties, so the link's client extends aiomqtt's paho
callbacks to keep them (:class:`_Client`); and paho-mqtt (2.2) takes mosquitto's PUBACK 0x95 (its
``message_size_limit``: MQTT 5.0 has that code for CONNACK and DISCONNECT only) for a malformed
packet, so the link registers 0x95 as a PUBACK reason code in paho's table. A publication whose
packet (:func:`publish_packet_size`) is over the *Maximum Packet Size* the broker announced in its
CONNACK is refused without being sent: the broker would drop the connection over it, the one shared
with the observations and the other destinations. While disconnected a send fails as *unreachable*
and the outbox retries it later. With ``publish_qos = 2`` the PUBREC's reason code decides, mapped as a
PUBACK's (the same :func:`puback_refusal`, naming ``PUBREC``): paho-mqtt (2.2) ignores it and sends the
PUBREL whatever it says, so a refusal completed as a delivery; the link's client takes over paho's PUBREC
handling for failure codes (:func:`_end_refused_pubrec_exchanges`): a PUBREC with a code >= 0x80 ends the
exchange (MQTT 5.0 §4.3.3: no PUBREL; the publication's in-flight slot is freed) and reports its code, and
0x95 is registered for PUBREC as for PUBACK. A success (0x00, 0x10) is released as paho does and the send
completes on the PUBCOMP; a PUBCOMP failure code (0x92 Packet identifier not found) after a successful
PUBREC is still a delivery (the broker took the message at its PUBREC; logged at WARNING). If paho's
internals are not as expected, QoS 2 publications go on as paho handles them (logged at WARNING).

Reconnecting with reloaded TLS material (:meth:`MqttLink.reconnect`, after
:meth:`MqttLink.use_tls_context`: a reload that accepted new ``[mqtt.tls]`` files). The connection up was
opened with the old material, so the link leaves it and connects again with the new context, in order:
(1) publications not yet started wait for the new connection (up to ``publish_timeout``; then they fail as
*unreachable* and the outbox retries them), and no new observation is taken; (2) the observation under way
is finished and acknowledged (up to ``publish_timeout``; past that it is abandoned unacknowledged and the
broker sends it again); (3) publications in flight get their PUBACK (each bounded by ``publish_timeout``);
(4) a clean DISCONNECT (the session stays: observations received but not acknowledged are sent again by
the broker to the new connection); (5) a new connection with the new context, at once. No QoS 1
publication is lost: an outbox row is marked delivered only after its (successful) PUBACK, so one whose PUBACK did not
come on the old connection fails, stays pending and is published again on the new one (at least once:
the broker may then hold it twice; subscribers dedupe on ``message_id``). The answer is the outcome of the
first connection attempt made with the new context — ``reconnected``, ``failed`` with the reason (the link
goes on retrying every ``reconnect_interval`` with that context) or ``pending`` when no attempt ended in
time. A link that is down is woken from its wait to try the new context at once.

Stopping (:meth:`MqttLink.stop`, the service's graceful shutdown) leaves the connection as gracefully: no new
observation is taken and the one under way is abandoned unacknowledged (the broker sends it again); the
publications in flight get their PUBACK (each bounded by ``publish_timeout``); the DISCONNECT (normal
disconnection: the session stays, no will) is written behind the acknowledgements already given. Leaving a
connection (a stop, a reconnect) then keeps it open until the broker closes it, bounded by ``publish_timeout``
(:meth:`_Client.linger_on_close`): paho closes its socket as soon as the DISCONNECT is written, and a broker
that had not read the PUBACKs before it yet (a loaded one) got the connection reset and dropped them — the
observations already recorded came again on the next connection. ``stop`` returns within ``2 ×
publish_timeout + 2`` seconds whatever the broker does (a broker that reads nothing: the connection is closed
at once past that) and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import DuisgwError
from gateway.service.api import Lane, Processor, StoreUnavailable, message_id_header_value
from gateway.service.config import MqttConfig, read_password_file
from gateway.service.delivery import SendOutcome
from gateway.service.metrics import Metrics
from gateway.service.outbox import OutboxRow, RejectStore
from gateway.service.tls import client_context
from gateway.service.workers import ClassifyWorkerDied

__all__ = [
    "PUBACK_RETRIED",
    "PUBLISH_OVERHEAD_BOUND",
    "MqttLink",
    "MqttSender",
    "PublishRefused",
    "Reconnect",
    "maximum_packet_size",
    "puback_refusal",
    "publish_packet_size",
    "suback_outcome",
    "user_properties",
    "user_properties_problem",
    "user_property_value",
]

log = logging.getLogger("duisgw.service.mqtt")

#: Longest wait (s) between attempts after unexpected link failures in a row (unless reconnect_interval is longer).
UNEXPECTED_BACKOFF_MAX = 60.0


#: The most an MQTT v5 PUBLISH packet the gateway accepts adds to its payload: the fixed header (1 byte
#: of type and flags, at most 4 of Remaining Length), the topic name (a 2-byte length and at most 65,535
#: bytes: the longest UTF-8 string MQTT can carry), the packet identifier (2 bytes, QoS 1 and 2), the
#: property length (at most 4 bytes) and up to 65,536 bytes of properties (what a publisher sets, e.g.
#: user properties and a content type, forwarded by the broker). Only properties beyond that can make
#: the broker drop a payload at the cap.
PUBLISH_OVERHEAD_BOUND = (1 + 4) + (2 + 65_535) + 2 + 4 + 65_536

#: The largest packet MQTT can express (a Remaining Length of at most 268,435,455, plus the fixed header).
_MQTT_PACKET_MAX = 268_435_455 + 5


def maximum_packet_size(max_bytes: int) -> int:
    """The Maximum Packet Size the link announces in its CONNECT for an observation payload cap of
    ``max_bytes``: the cap plus :data:`PUBLISH_OVERHEAD_BOUND`, at most the largest packet MQTT can
    express."""
    return min(max_bytes + PUBLISH_OVERHEAD_BOUND, _MQTT_PACKET_MAX)


@dataclass(frozen=True)
class Reconnect:
    """What :meth:`MqttLink.reconnect` saw: ``status`` ``reconnected`` (the link is up with the new
    context), ``failed`` (its first attempt with it failed: ``error``; the link goes on retrying with it),
    ``pending`` (no attempt with it ended within the wait) or ``stopped`` (the link is not running)."""

    status: str
    error: str = ""

    def report(self) -> dict[str, str]:
        return {"status": self.status, **({"error": self.error} if self.error else {})}


def _mqtt_cannot_carry(c: str) -> bool:
    """``c`` is a character an MQTT UTF-8 string must not (U+0000, a surrogate: not UTF-8) or should not
    (a control character, a noncharacter) hold (MQTT 5.0 §1.5.4): mosquitto drops the connection over a
    packet carrying one (``Malformed UTF-8``)."""
    o = ord(c)
    return (
        o <= 0x1F
        or 0x7F <= o <= 0x9F
        or 0xD800 <= o <= 0xDFFF
        or 0xFDD0 <= o <= 0xFDEF
        or (o & 0xFFFE) == 0xFFFE
    )


def user_property_value(value: str) -> str:
    """``value`` as an MQTT v5 user property's key or value: unchanged when MQTT carries each of its characters
    as it is and it holds no ``%``; else each such character (and ``%``) percent-encoded as its UTF-8 bytes
    (``%0A``), the others kept. Metadata is made from DUIS text kept as received (a ``DCCAlertCode`` makes the
    ``kind`` and the message id), so a signed message can carry a line break or a NUL there."""
    if "%" not in value and not any(_mqtt_cannot_carry(c) for c in value):
        return value
    return "".join(
        "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        if c == "%" or _mqtt_cannot_carry(c)
        else c
        for c in value
    )


#: The longest UTF-8 string MQTT carries (its length is a two-byte integer: MQTT 5.0 §1.5.4).
MQTT_STRING_MAX_BYTES = 65_535


def user_properties_problem(pairs: Sequence[tuple[str, str]]) -> str | None:
    """Why ``pairs`` cannot be sent as MQTT user properties (a key or value longer than an MQTT string can be),
    ``None`` when they can."""
    for key, value in pairs:
        for what, text in (("key", key), ("value", value)):
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > MQTT_STRING_MAX_BYTES:
                return (
                    f"the user property {key[:40]!r} has a {what} of {size} bytes, longer than the "
                    f"{MQTT_STRING_MAX_BYTES} bytes an MQTT string can hold: not sent"
                )
    return None


def user_properties(pairs: Sequence[tuple[str, str]]) -> Properties:
    """PUBLISH properties carrying ``pairs`` as MQTT v5 user properties."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if pairs:
        props.UserProperty = list(pairs)
    return props


def _varint_size(n: int) -> int:
    """Bytes of MQTT's Variable Byte Integer ``n`` (MQTT 5.0 §1.5.5)."""
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def publish_packet_size(topic: str, payload: bytes, qos: int, properties: Properties) -> int:
    """Bytes of the MQTT v5 PUBLISH packet carrying ``payload`` to ``topic`` with ``properties``, fixed
    header included: what a broker's Maximum Packet Size bounds (MQTT 5.0 §3.2.2.3.6)."""
    packed = properties.pack()  # type: ignore[no-untyped-call]  # (the property length included)
    remaining = 2 + len(topic.encode()) + (2 if qos > 0 else 0) + len(packed) + len(payload)
    return 1 + _varint_size(remaining) + remaining


#: PUBACK failure reason codes that say the broker cannot take the publication *now*: retried as
#: *unreachable* (not counted toward ``outbox.max_attempts``). 0x97 Quota exceeded (a quota the broker
#: enforces, freed as it drains) and 0x91 Packet identifier in use (the broker's session state, not the
#: message). Every other failure code is a refusal: see :func:`puback_refusal`.
PUBACK_RETRIED = frozenset({0x91, 0x97})


class PublishRefused(Exception):
    """The broker did not take a publication (a PUBACK with a failure reason code), or it could not take
    it (a packet over the Maximum Packet Size it announced, never sent). ``refused``: a refusal the outbox
    counts toward ``max_attempts`` (then dead-letters); false: retried as unreachable."""

    def __init__(self, detail: str, *, refused: bool, reason_code: int | None = None) -> None:
        super().__init__(detail)
        self.refused = refused
        self.reason_code = reason_code


def puback_refusal(reason_code: ReasonCode) -> PublishRefused | None:
    """What a PUBACK's MQTT v5 reason code (MQTT 5.0 §3.4.2.1) — or a QoS 2 publication's PUBREC's (§3.5.2.1:
    the same codes, mapped the same way; the refusal names the packet) — means for its publication: ``None`` for a
    success (0x00, and 0x10 No matching subscribers: the broker took it, nobody subscribes yet); else the
    :class:`PublishRefused` to report. A refusal, counted toward ``outbox.max_attempts`` and then
    dead-lettered as an HTTP endpoint's non-2xx answer is: 0x87 Not authorized (the broker's ACL denies the
    topic), 0x90 Topic name invalid, 0x95 Packet too large (mosquitto's ``message_size_limit``), 0x99
    Payload format invalid, and 0x80 Unspecified error / 0x83 Implementation specific error (a broker or
    plugin that will not say why: a refusal, so a persistent one dead-letters instead of blocking the queue
    for good, while a passing one still gets ``max_attempts`` tries with backoff), and any other failure
    code. Retried as unreachable: :data:`PUBACK_RETRIED`."""
    code = int(reason_code.value)
    if code < 0x80:
        return None
    refused = code not in PUBACK_RETRIED
    what = "refused" if refused else "could not take (retried)"
    packet = "PUBREC" if reason_code.packetType == PacketTypes.PUBREC else "PUBACK"
    return PublishRefused(
        f"{packet} 0x{code:02X} {reason_code}: the broker {what} the publication",
        refused=refused,
        reason_code=code,
    )


def _accept_packet_too_large_in_acks() -> None:
    """Let paho-mqtt read a PUBACK or PUBREC with reason code 0x95 Packet too large. mosquitto answers a payload
    over its ``message_size_limit`` so (a PUBACK at QoS 1, a PUBREC at QoS 2), although MQTT 5.0 lists 0x95 for
    CONNACK and DISCONNECT only; paho-mqtt (2.2) then takes the packet for a malformed one and drops the
    connection, and the publication times out, to be sent (and the connection dropped) again and again. With
    0x95 registered for PUBACK and PUBREC in paho's table of reason codes (``ReasonCode.names``) the answer
    reaches the link, which reports the refusal. Idempotent; it changes nothing else paho decodes. A paho whose
    table has another shape is left as it is (logged): such an answer then drops the connection and the row
    is retried, as before."""
    try:
        names = dict(ReasonCode.names)
        entry = {name: list(types) for name, types in names[0x95].items()}
        types = entry.get("Packet too large")
        missing = [
            t for t in (PacketTypes.PUBACK, PacketTypes.PUBREC) if types is not None and t not in types
        ]
        if types is None or not missing:
            return
        types.extend(missing)
        names[0x95] = entry
        ReasonCode.names = MappingProxyType(names)
    except (AttributeError, KeyError, TypeError) as exc:
        log.warning(
            "paho-mqtt's reason-code table is not as expected: PUBACK/PUBREC 0x95 stays unreadable (%s)", exc
        )


_accept_packet_too_large_in_acks()

#: set once the link warned that paho's PUBREC handling could not be extended (once per process)
_pubrec_warned = False


def _end_refused_pubrec_exchanges(client: paho.Client) -> bool:
    """Make ``client`` (paho-mqtt 2.2) end a QoS 2 publication's exchange on a PUBREC with a failure reason code
    (>= 0x80) and report that code, as MQTT 5.0 §4.3.3 asks: paho's ``_handle_pubrec`` ignores the code and
    sends the PUBREL, so the PUBCOMP that follows completes the publication as a success. The PUBREC is decoded
    by paho's own decoder; a known message id is then completed as a PUBACK is (paho's ``_do_on_publish``:
    ``on_publish`` called with the PUBREC's code, the message and its in-flight slot freed), without a PUBREL.
    A success code goes to paho's handler unchanged. ``False`` (logged at WARNING once) when paho's internals
    are not as expected: QoS 2 publications then go on as paho handles them (a refusal reads as a delivery)."""
    global _pubrec_warned
    try:
        from paho.mqtt._packet import decode_pubrec

        original = client._handle_pubrec
        for name in ("_in_packet", "_out_messages", "_out_message_mutex", "_do_on_publish", "_protocol"):
            getattr(client, name)
    except (ImportError, AttributeError) as exc:
        if not _pubrec_warned:
            _pubrec_warned = True
            log.warning(
                "paho-mqtt's PUBREC handling is not as expected: a QoS 2 publication the broker refuses "
                "(PUBREC >= 0x80) completes as delivered (%s); use publish_qos = 1",
                exc,
            )
        return False

    def handle_pubrec() -> MQTTErrorCode:
        packet = client._in_packet["packet"]
        if client._protocol != paho.MQTTv5 or len(packet) < 3 or packet[2] < 0x80:
            return original()  # a success (or no reason code): released by paho
        result = decode_pubrec(client._in_packet["command"], packet, client._protocol)
        with client._out_message_mutex:
            if result.mid in client._out_messages:
                return client._do_on_publish(result.mid, result.reason, result.properties)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._handle_pubrec = handle_pubrec  # type: ignore[method-assign]
    return True


def suback_outcome(answer: Sequence[int] | Sequence[ReasonCode]) -> tuple[str | None, int | None]:
    """What one topic's SUBACK says: ``(refusal, granted QoS)``. ``refusal`` is None when the subscription is
    granted, else the reason (MQTT v5 reason code name and value, e.g. ``Not authorized (0x87)``; MQTT 3.1.1's
    ``0x80 Failure``); the granted QoS is None when refused."""
    if len(answer) != 1:
        return f"{len(answer)} reason codes for one topic", None
    code = answer[0]
    value = code.value if isinstance(code, ReasonCode) else int(code)
    if value >= 0x80:
        name = code.getName() if isinstance(code, ReasonCode) else "Failure"
        return f"{name} (0x{value:02X})", None
    return None, value


class _Client(aiomqtt.Client):
    """aiomqtt's client, also keeping what aiomqtt 2.5 drops of the broker's answers: the Maximum Packet
    Size of its CONNACK, and the reason code of each PUBACK or (QoS 2) PUBREC (aiomqtt's ``_on_connect`` and
    ``_on_publish``, which paho calls, are extended: they still resolve the connection and wake the
    publication waiting for its message id; paho's PUBREC handling is extended by
    :func:`_end_refused_pubrec_exchanges`). :meth:`publish_acknowledged` publishes as
    :meth:`aiomqtt.Client.publish` does and answers the reason code of its PUBACK (PUBREC).

    Incoming messages (aiomqtt's ``_on_message``, extended): a QoS 0 message arriving while
    ``receive_maximum`` messages are queued is dropped (``on_dropped`` is called; logged once per burst); a
    QoS 1/2 one is always queued (the broker bounds those by the Receive Maximum the CONNECT announced) and
    counted until :meth:`ack` (``on_unacked`` is called with the count at each change). Should the broker
    send more than that (it breaks MQTT 5.0 §4.9: mosquitto 2.0 does while it drains a backlog), they are
    queued all the same and a warning is logged once per connection; reading is never paused (aiomqtt's
    reader is kept: the PUBACKs, SUBACKs and PINGRESPs on the connection must be read)."""

    def __init__(
        self,
        *args: Any,
        receive_maximum: int = 65535,
        on_dropped: Callable[[], None] | None = None,
        on_unacked: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        #: the broker's Maximum Packet Size (its CONNACK), None when it announced none
        self.maximum_packet_size: int | None = None
        #: the broker's Receive Maximum (its CONNACK; 65,535 when it announced none): the most QoS 1/2
        #: publications unacknowledged at once (MQTT 5.0 §4.9), which paho-mqtt (2.2) does not keep to
        self.broker_receive_maximum = 65535
        self._publish_slots: asyncio.Semaphore | None = None
        #: failure reason codes of the PUBACKs (PUBRECs) received, by message id (a success removes its entry)
        self._failed_pubacks: dict[int, ReasonCode] = {}
        #: the Receive Maximum announced; also the most QoS 0 messages queued
        self.receive_maximum = receive_maximum
        self._on_dropped = on_dropped
        #: QoS 0 messages dropped since the queue was last full (the burst under way), 0 when none
        self.dropped_in_burst = 0
        #: QoS 1/2 messages handed over and not yet acknowledged, and the most at once on this connection
        self.unacknowledged = 0
        self.most_unacknowledged = 0
        self._on_unacked = on_unacked
        self._over_quota_warned = False
        _end_refused_pubrec_exchanges(self._client)
        # The message id of a publication is known to paho's publish() alone: aiomqtt passes its keyword
        # arguments on to it, so a wrapper takes a ``receipt`` list and appends the id paho gave.
        publish = self._client.publish

        def publish_with_receipt(
            *args: Any, receipt: list[int] | None = None, **kwargs: Any
        ) -> paho.MQTTMessageInfo:
            info = publish(*args, **kwargs)
            if receipt is not None:
                receipt.append(info.mid)
            return info

        self._client.publish = publish_with_receipt  # type: ignore[method-assign]
        #: the connection kept open after paho closed its socket (a graceful leave), until the broker closes it
        self._lingering: _Linger | None = None

    def linger_on_close(self, timeout: float) -> bool:
        """Make the coming close of the connection graceful (:meth:`MqttLink.stop`, a reconnect): paho (2.2) closes
        its socket as soon as the DISCONNECT is written, and a broker that has not read what came before it yet
        (the PUBACKs of the observations recorded: a loaded broker reads late) then gets the connection reset —
        Linux resets it when a socket is closed with bytes unread, or when bytes come to a closed one — and
        mosquitto drops what it had not read: it sends those observations again to the next connection. With
        this, the connection outlives paho's socket (a duplicate of it): the gateway's side is shut for writing
        after the DISCONNECT (TCP FIN), what the broker still sends is read and discarded (unacknowledged: the
        broker keeps it), and the socket is closed once the broker closed the connection (it read the DISCONNECT,
        so all before it) or ``timeout`` seconds passed (:meth:`lingered`). ``False`` (logged at WARNING) when
        paho's internals are not as expected: the connection is then closed as paho closes it."""
        paho_client = self._client
        close = getattr(paho_client, "_sock_close", None)
        if close is None or not hasattr(paho_client, "_sock"):
            log.warning("paho-mqtt's socket handling is not as expected: MQTT connections are closed at once")
            return False
        loop = asyncio.get_running_loop()

        def sock_close() -> None:
            sock = paho_client._sock
            kept: socket.socket | None = None
            if sock is not None and self._lingering is None and _running_loop() is loop:
                with contextlib.suppress(OSError):
                    kept = socket.socket(fileno=os.dup(sock.fileno()))
            close()  # paho's bookkeeping (its callbacks: aiomqtt stops reading) and the close of its socket
            if kept is not None:
                self._lingering = _Linger(loop, kept, timeout)

        paho_client._sock_close = sock_close  # type: ignore[method-assign]
        return True

    async def lingered(self) -> None:
        """Wait until a connection left gracefully is closed (bounded by the ``timeout`` of :meth:`linger_on_close`)."""
        if self._lingering is not None:
            await asyncio.shield(self._lingering.closed)

    def abort(self) -> None:
        """Close the connection at once, whatever it awaits (the DISCONNECT not written, the broker's close):
        paho's socket and a lingering one. Idempotent."""
        if self._lingering is not None:
            self._lingering.close()
        paho_client = self._client
        if getattr(paho_client, "_sock", None) is not None:
            with contextlib.suppress(Exception):
                type(paho_client)._sock_close(paho_client)  # (paho's own, not a lingering one)
        if self._connected.done() and not self._disconnected.done():  # (nothing waits for a DISCONNECT now)
            self._disconnected.set_result(None)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        size = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
        self.maximum_packet_size = int(size) if size is not None else None
        receive = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self.broker_receive_maximum = int(receive) if receive else 65535
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        if reason_code.is_failure and reason_code.packetType != PacketTypes.PUBCOMP:
            self._failed_pubacks[mid] = reason_code
        else:
            if reason_code.is_failure:  # a PUBCOMP's (0x92): the broker took the message at its PUBREC
                log.warning(
                    "PUBCOMP 0x%02X %s after a successful PUBREC: the publication is delivered",
                    int(reason_code.value),
                    reason_code,
                )
            self._failed_pubacks.pop(mid, None)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.qos == 0:
            if self._queue.qsize() >= self.receive_maximum:
                self.dropped_in_burst += 1
                if self._on_dropped is not None:
                    self._on_dropped()
                if self.dropped_in_burst == 1:
                    log.warning(
                        "MQTT observation queue full (%d waiting, [mqtt] receive_maximum): dropping QoS 0 "
                        "observations until it drains",
                        self.receive_maximum,
                        extra={"lane": "observe"},
                    )
                return
            if self.dropped_in_burst:
                self.end_drop_burst()
        else:
            self.unacknowledged += 1
            if self.unacknowledged > self.most_unacknowledged:
                self.most_unacknowledged = self.unacknowledged
                if self.unacknowledged > self.receive_maximum and not self._over_quota_warned:
                    self._warn_over_quota()
            if self._on_unacked is not None:
                self._on_unacked(self.unacknowledged)
        super()._on_message(client, userdata, message)

    def _warn_over_quota(self) -> None:
        self._over_quota_warned = True
        log.warning(
            "the MQTT broker sent more than the Receive Maximum (%d, [mqtt] receive_maximum) of unacknowledged "
            "QoS 1/2 observations, breaking MQTT 5.0 flow control (mosquitto 2.0 does while it drains a backlog "
            "and on a reconnect): they are held in memory and all processed, in order (logged once per "
            "connection; duisgw_mqtt_observations_unacked counts them)",
            self.receive_maximum,
            extra={"lane": "observe", "receive_maximum": self.receive_maximum},
        )

    @property
    def connection_lost(self) -> bool:
        """The connection has ended (aiomqtt's ``_disconnected`` is done): nothing more can be acknowledged."""
        return self._disconnected.done()

    def end_drop_burst(self) -> None:
        """Log the count of the QoS 0 messages dropped in the burst under way (if any) and end it."""
        if self.dropped_in_burst:
            log.warning(
                "%d QoS 0 MQTT observation(s) dropped while the queue was full",
                self.dropped_in_burst,
                extra={"lane": "observe", "dropped": self.dropped_in_burst},
            )
            self.dropped_in_burst = 0

    def ack(self, message: aiomqtt.Message) -> None:
        """Acknowledge ``message`` (paho's manual ack: a QoS 1 PUBACK, a QoS 2 PUBCOMP; nothing for QoS 0)."""
        if message.qos > 0:
            self.unacknowledged -= 1
            self._client.ack(message.mid, message.qos)
            if self._on_unacked is not None:
                self._on_unacked(self.unacknowledged)

    async def publish_acknowledged(
        self, topic: str, payload: bytes, *, qos: int, properties: Properties, timeout: float
    ) -> ReasonCode | None:
        """Publish; the failure reason code of its PUBACK, ``None`` for a success (or QoS 0). Raises as
        :meth:`aiomqtt.Client.publish` does (no PUBACK within ``timeout``: :class:`aiomqtt.MqttError`).

        A QoS 1/2 publication first waits (up to ``timeout``; then :class:`aiomqtt.MqttError`, not sent) until
        fewer than the broker's Receive Maximum (its CONNACK) are unacknowledged: past it mosquitto answers
        0x97 Quota exceeded (to a QoS 2 PUBLISH: it holds those until their PUBREL) and a stricter broker drops
        the connection (0x93 Receive Maximum exceeded, MQTT 5.0 §4.9); paho-mqtt (2.2) keeps only its own
        limit (20)."""
        async def once() -> ReasonCode | None:
            receipt: list[int] = []
            await self.publish(topic, payload, qos=qos, properties=properties, timeout=timeout, receipt=receipt)
            return self._failed_pubacks.pop(receipt[0], None) if receipt else None

        if qos == 0:
            return await once()
        if self._publish_slots is None:  # (created on the event loop, once the CONNACK is in)
            self._publish_slots = asyncio.Semaphore(self.broker_receive_maximum)
        try:
            async with asyncio.timeout(timeout):
                await self._publish_slots.acquire()
        except TimeoutError:
            raise aiomqtt.MqttError(
                f"no publication slot within {timeout:g} s (the broker's Receive Maximum "
                f"{self.broker_receive_maximum} unacknowledged)"
            ) from None
        try:
            if self._disconnected.done():
                raise aiomqtt.MqttError("the connection to the MQTT broker ended")
            return await once()
        finally:
            self._publish_slots.release()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # (paho called from another thread: connect() in aiomqtt's executor)
        return None


class _Linger:
    """A connection the gateway has finished with (its DISCONNECT written): shut for writing, read (and discarded)
    until the broker closes it, then closed; closed anyway after ``timeout`` seconds (:meth:`_Client.linger_on_close`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
        self._loop = loop
        self._sock = sock
        self.closed: asyncio.Future[None] = loop.create_future()
        self._reading = False
        self._timer = loop.call_later(timeout, self.close)
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)  # a FIN after the DISCONNECT (TLS: the close_notify is not sent)
            loop.add_reader(sock.fileno(), self._read)
            self._reading = True
        except (OSError, ValueError):
            self.close()

    def _read(self) -> None:
        try:
            while self._sock.recv(65536):
                pass
        except BlockingIOError:
            return
        except OSError:
            pass
        self.close()  # the broker closed the connection (or it is gone)

    def close(self) -> None:
        if self.closed.done():
            return
        self._timer.cancel()
        if self._reading:
            self._reading = False
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self.closed.set_result(None)


class MqttLink:
    """One resilient broker connection shared by the observation subscriber and the publishers."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        processor: Processor | None = None,
        rejects: RejectStore | None = None,
        metrics: Metrics | None = None,
        base_dir: Path | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_bytes: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.max_bytes = max_bytes  # the largest observation payload processed (server.max_body_bytes)
        self._processor = processor
        self._rejects = rejects
        self._metrics = metrics
        self._base_dir = base_dir
        self._now = now
        self._client: _Client | None = None
        #: the TLS context of the next connection (built from [mqtt.tls] on first use; a reload replaces it)
        self._tls_context: ssl.SSLContext | None = None
        self._connected = asyncio.Event()
        #: set while the connection up has every observation topic's SUBACK (cleared with ``_connected``)
        self._subscribed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: the client of the connection attempt under way (closed at once by a stop past its bound)
        self._attempt: _Client | None = None
        self.connections = 0  # successful connections so far (observability, tests)
        #: +1 each time a reload gives the link a new TLS context (an attempt records the one it used)
        self._generation = 0
        #: set by reconnect(): leave the connection up (or the wait between attempts) for a new attempt
        self._switch = asyncio.Event()
        #: while leaving a connection for a reconnect: publications wait for the next one
        self._switching = False
        #: reconnect() callers, each waiting for the first attempt made with its generation (or a later one)
        self._waiters: list[tuple[int, asyncio.Future[str | None]]] = []
        #: publications awaiting their PUBACK, and set while there are none
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: held while an observation is processed and acknowledged (a reconnect lets it finish)
        self._observing = asyncio.Lock()
        self.observations_dropped = 0  # QoS 0 observations dropped on arrival (the queue was full)
        #: per observation subscription (``observe_topics``): when an observation last came on it, or when the
        #: broker first granted it (``duisgw_mqtt_subscription_last_received_seconds``; absent: never granted)
        self.last_received: dict[str, float] = {}
        if metrics is not None:
            for topic in cfg.observe_topics:  # (0 until granted: the series exists from the start)
                metrics.mqtt_subscription_last_received.labels(topic).set(0)
        #: QoS 2 publications of the connections left whose PUBREC came and PUBCOMP did not (their PUBREL is sent
        #: again first on the next connection: MQTT 5.0 §4.4), and the last packet identifier used there
        self._open_exchanges: list[int] = []
        self._last_mid = 0
        self.errors = 0  # unexpected link failures (not a lost or refused connection) so far
        self.unexpected_in_a_row = 0  # unexpected failures since the link last worked (drives the backoff)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._connected.is_set()

    @property
    def broker_maximum_packet_size(self) -> int | None:
        """The Maximum Packet Size the broker announced in the CONNACK of the connection up (``None``: none
        announced, or not connected): a publication whose packet would be larger is refused unsent."""
        client = self._client
        return client.maximum_packet_size if client is not None and self._connected.is_set() else None

    @property
    def in_flight(self) -> int:
        """Publications sent and awaiting their PUBACK."""
        return self._in_flight

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def subscribed(self) -> bool:
        """Connected, and the broker acknowledged the subscription to every ``observe_topics`` entry (SUBACK)."""
        return self._subscribed.is_set()

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait until :attr:`subscribed` (``False`` if not within ``timeout`` seconds): from then on a message
        published to an observation topic reaches this link. :meth:`wait_connected` is earlier: the SUBSCRIBE is
        sent once connected, and the broker routes nothing to the link before its SUBACK."""
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="duisgw-mqtt")

    async def stop(self) -> None:
        """Stop the link, gracefully: no new observation is taken (the one under way is abandoned unacknowledged:
        the broker sends it again), the publications in flight get their PUBACK (each bounded by
        ``publish_timeout``), then the DISCONNECT (normal disconnection: the session stays) goes after the
        acknowledgements already given, and the connection is closed once the broker closed it, having read them
        (bounded by ``publish_timeout``: :meth:`_Client.linger_on_close`). Returns within ``2 × publish_timeout +
        2`` seconds whatever the broker does (past that the connection is closed at once); never raises (a failure
        of the link task is logged, shutdown goes on)."""
        self._stopping.set()
        self._switch.set()  # (wakes the link from a wait between attempts, or from its connection)
        task, self._task = self._task, None
        if task is None:
            return
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 2 * self.cfg.publish_timeout + 2.0)
        except asyncio.CancelledError:  # (stop() itself cancelled: the link is ended at once)
            self._end(task)
            raise
        except Exception:
            pass  # (the task's failure: logged below)
        if not task.done():
            log.warning(
                "MQTT link did not leave its connection within %g s: closed at once",
                2 * self.cfg.publish_timeout + 2.0,
                extra={"host": self.cfg.host},
            )
        self._end(task)
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.error(
                "MQTT link ended with an error (%s: %s)",
                type(exc).__name__,
                exc,
                extra={"host": self.cfg.host, "error": type(exc).__name__},
                exc_info=exc,
            )

    def _end(self, task: asyncio.Task[None]) -> None:
        """End the link task at once (cancelled) and close its connection, whatever it awaits."""
        task.cancel()
        client = self._attempt
        if client is not None:
            client.abort()

    def use_tls_context(self, context: ssl.SSLContext) -> None:
        """The next connection to the broker uses ``context`` (a reload of ``[mqtt.tls]``); the connection
        up is left alone until :meth:`reconnect` (or its loss)."""
        self._tls_context = context
        self._generation += 1

    async def reconnect(self, timeout: float | None = None) -> Reconnect:
        """Leave the connection up, gracefully (nothing in flight is lost: see the module's docstring), and
        connect again with the TLS context in force; a link that is down tries it at once. The outcome of the
        first attempt made with that context, waited for at most ``timeout`` seconds (default: twice
        ``publish_timeout`` plus ``reconnect_interval``: the drain — nothing new starts, so what is under way
        ends within ``publish_timeout`` —, then the connection)."""
        if self._task is None or self._task.done() or self._stopping.is_set():
            return Reconnect("stopped", "the MQTT link is not running")
        if timeout is None:
            timeout = 2 * self.cfg.publish_timeout + self.cfg.reconnect_interval
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._generation, waiter))
        self._switch.set()
        try:
            error = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return Reconnect(
                "pending", f"no connection attempt with the new material ended within {timeout:g} s"
            )
        return Reconnect("reconnected") if error is None else Reconnect("failed", error)

    def _settle(self, generation: int, error: str | None) -> None:
        """An attempt made with ``generation`` ended (``error`` None: connected and subscribed)."""
        self._switching = False
        waiting = []
        for wanted, waiter in self._waiters:
            if wanted > generation:
                waiting.append((wanted, waiter))
            elif not waiter.done():
                waiter.set_result(error)
        self._waiters = waiting

    def _tls(self) -> ssl.SSLContext:
        if self._tls_context is None:
            self._tls_context = client_context(self.cfg.tls, base_dir=self._base_dir)
        return self._tls_context

    def _make_client(self) -> _Client:
        c = self.cfg
        password = None
        if c.password_file:
            p = Path(c.password_file)
            if self._base_dir is not None and not p.is_absolute():
                p = self._base_dir / p
            password = read_password_file(p)  # checked by the config's validation at start
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = c.session_expiry
        if self.max_bytes is not None:  # the broker sends nothing larger (see the module's docstring)
            connect_props.MaximumPacketSize = maximum_packet_size(self.max_bytes)
        # the broker sends at most this many QoS 1/2 messages before one is acknowledged (flow control)
        connect_props.ReceiveMaximum = c.receive_maximum
        client = _Client(
            c.host,
            c.port,
            identifier=c.client_id,
            username=c.username or None,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=c.keepalive,
            clean_start=False,
            properties=connect_props,
            tls_context=self._tls() if c.tls_enabled else None,
            timeout=c.publish_timeout,
            receive_maximum=c.receive_maximum,
            on_dropped=self._count_dropped,
            on_unacked=self._metrics.mqtt_observations_unacked.set if self._metrics is not None else None,
        )
        # Acknowledge observation messages only after they are durably recorded (paho's manual ack;
        # aiomqtt does not wrap it).
        client._client.manual_ack_set(True)
        return client

    def _retry_delay(self) -> float:
        """Seconds before the next connection attempt: ``reconnect_interval`` after a lost or refused
        connection; after unexpected errors in a row, doubled each time up to ``max(reconnect_interval,
        UNEXPECTED_BACKOFF_MAX)`` (a persistent fault is retried, without a tight loop of tracebacks)."""
        interval = self.cfg.reconnect_interval
        if self.unexpected_in_a_row == 0:
            return interval
        cap = max(interval, UNEXPECTED_BACKOFF_MAX)
        return min(cap, interval * 2.0 ** min(self.unexpected_in_a_row - 1, 32))

    def _count_dropped(self) -> None:
        self.observations_dropped += 1
        if self._metrics is not None:
            self._metrics.mqtt_observations_dropped.inc()

    def _count_failure(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.mqtt_link_failures.labels(kind).inc()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            generation = self._generation  # (the context this attempt uses)
            self._switch.clear()
            attempt_ended = False  # (an attempt that connected and subscribed has settled its waiters)
            client: _Client | None = None
            try:
                client = self._attempt = self._make_client()
                async with client:
                    self._resume_exchanges(client)  # (before any publication on this connection)
                    self._client = client
                    self._connected.set()
                    self.connections += 1
                    if self._metrics is not None:
                        self._metrics.mqtt_connected.set(1)
                    log.info("connected to MQTT broker", extra={"host": self.cfg.host, "port": self.cfg.port})

                    def subscribed(generation: int = generation) -> None:  # (the attempt's, bound; every SUBACK in)
                        nonlocal attempt_ended
                        self.unexpected_in_a_row = 0  # connected and subscribed: the link works
                        attempt_ended = True
                        self._settle(generation, None)

                    await self._serve(client, subscribed)  # returns when a reconnect or a stop is asked for
                    await self._drain()
                    # then the DISCONNECT, leaving the block, behind the acknowledgements given; the connection
                    # is closed once the broker has read them (it closes it), bounded by publish_timeout
                    client.linger_on_close(self.cfg.publish_timeout)
                await client.lingered()
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection lost or refused: %s", exc, extra={"host": self.cfg.host})
                self._count_failure("lost")
                if not attempt_ended:
                    self._settle(generation, str(exc) or type(exc).__name__)
            except OSError as exc:
                log.warning("MQTT connection error: %s", exc, extra={"host": self.cfg.host})
                self._count_failure("network")
                if not attempt_ended:
                    self._settle(generation, str(exc) or type(exc).__name__)
            except Exception as exc:  # anything else must not end the link for good: log, back off, retry
                if not attempt_ended:
                    self._settle(generation, f"{type(exc).__name__}: {exc}")
                self.errors += 1
                self.unexpected_in_a_row += 1
                self._count_failure("unexpected")
                log.error(
                    "MQTT link failed (%s: %s); retrying in %g s",
                    type(exc).__name__,
                    exc,
                    self._retry_delay(),
                    extra={"host": self.cfg.host, "error": type(exc).__name__},
                    exc_info=self.unexpected_in_a_row == 1,  # the traceback once per streak
                )
            finally:
                if client is not None:  # (a connection not closed yet: the DISCONNECT could not be written)
                    client.abort()
                    self._keep_open_exchanges(client)
                self._attempt = None
                self._client = None
                self._connected.clear()
                self._subscribed.clear()
                if self._metrics is not None:
                    self._metrics.mqtt_connected.set(0)
            if self._stopping.is_set():
                break
            if not self._switch.is_set():  # (a reconnect asked for: at once)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._switch.wait(), self._retry_delay())

    def _keep_open_exchanges(self, client: _Client) -> None:
        """The connection of ``client`` ended: keep the packet identifiers of its QoS 2 publications the broker
        answered with a (successful) PUBREC and whose PUBCOMP did not come, and the last identifier it used. The
        session outlives the connection, and the broker holds each such message until its PUBREL (a slot of its
        Receive Maximum with it); the client of the next connection sends them (:meth:`_resume_exchanges`). The
        outbox rows stay pending and are published again (at least once)."""
        paho_client = client._client
        try:
            out = dict(paho_client._out_messages)
            last = int(paho_client._last_mid)
        except (AttributeError, TypeError, ValueError):  # (paho's internals not as expected: nothing kept)
            return
        waiting = [mid for mid, m in out.items() if m.qos == 2 and m.state == paho.mqtt_ms_wait_for_pubcomp]
        self._open_exchanges = list(dict.fromkeys([*self._open_exchanges, *waiting]))
        self._last_mid = last

    def _resume_exchanges(self, client: _Client) -> None:
        """On a new connection (the session kept), before any publication: send the PUBREL of each QoS 2 exchange
        a connection left open (MQTT 5.0 §4.4: the broker releases the message it holds, and frees its slot),
        and go on from the last packet identifier used, so a new publication does not take the identifier of an
        exchange the broker still holds."""
        paho_client = client._client
        with contextlib.suppress(AttributeError, TypeError):
            if self._last_mid:
                paho_client._last_mid = self._last_mid
        mids, self._open_exchanges = self._open_exchanges, []
        for mid in mids:
            try:
                paho_client._send_pubrel(mid)
            except Exception as exc:  # (a fault: the broker keeps it until the session expires)
                log.warning("MQTT link: the PUBREL of an open QoS 2 exchange (%d) was not sent: %s", mid, exc)
        if mids:
            log.info(
                "MQTT link released %d QoS 2 exchange(s) the previous connection left open (their rows are "
                "published again)",
                len(mids),
                extra={"host": self.cfg.host},
            )

    async def _serve(self, client: _Client, subscribed: Callable[[], None]) -> None:
        """Subscribe to ``observe_topics`` (then call ``subscribed``) and take observations until the connection
        is lost (its :class:`aiomqtt.MqttError` is raised) or :meth:`reconnect` asks to leave it (returns once no
        observation is under way). Observations are taken from the start, while the subscription waits for its
        SUBACK: a broker sends the messages in flight for the session again before that (mosquitto 2.0 more than
        the Receive Maximum), and they are processed and acknowledged meanwhile."""
        consumer = asyncio.create_task(self._consume(client), name="duisgw-mqtt-observe")
        switch: asyncio.Task[bool] | None = None
        resubscribe: asyncio.Task[None] | None = None
        try:
            if self._stopping.is_set():  # (stopped while connecting: left at once)
                return
            try:
                refused = await self._subscribe(client, self.cfg.observe_topics, first=True)
            except Exception:  # (no SUBACK in time, the connection lost): the observation under way first
                await self._end_consumer(consumer)
                raise
            subscribed()  # (the connection works: a refused subscription is retried on it, below)
            if refused:
                resubscribe = asyncio.create_task(self._resubscribe(client, refused), name="duisgw-mqtt-resubscribe")
            else:
                self._subscribed.set()
            switch = asyncio.create_task(self._switch.wait(), name="duisgw-mqtt-switch")
            await asyncio.wait({consumer, switch}, return_when=asyncio.FIRST_COMPLETED)
            if consumer.done():
                consumer.result()  # the loss of the connection (the consumer ends only with it)
                return  # pragma: no cover
            if self._stopping.is_set():
                # A stop: no new observation is taken, the one under way is abandoned unacknowledged (the broker
                # sends it again: an observation not recorded is never acknowledged); the acknowledgements given
                # go before the DISCONNECT (the caller). Publications fail at once as unreachable.
                self._client = None
                self._connected.clear()
                self._subscribed.clear()
                log.info(
                    "MQTT link stopping (%d publication(s) awaiting their PUBACK first)",
                    self._in_flight,
                    extra={"host": self.cfg.host, "in_flight": self._in_flight},
                )
                return
            # A reconnect: publications not yet started wait for the next connection; the observation
            # under way finishes and is acknowledged first (bounded: past it, it is abandoned unacknowledged
            # and the broker sends it again on the next connection).
            self._switching = True
            self._client = None
            self._connected.clear()
            self._subscribed.clear()
            log.info(
                "MQTT link leaving its connection to reconnect with the reloaded TLS material "
                "(%d publication(s) awaiting their PUBACK first)",
                self._in_flight,
                extra={"host": self.cfg.host, "in_flight": self._in_flight},
            )
            await self._end_consumer(consumer)
        finally:  # (a stop past its bound cancels the link: nothing is waited for beyond the tasks' ends)
            tasks: list[asyncio.Task[Any]] = [t for t in (consumer, switch, resubscribe) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            client.end_drop_burst()  # (the count of a burst the connection's end ended)
            if self._metrics is not None:  # (what the connection held is gone with it)
                self._metrics.mqtt_observations_unacked.set(0)
                self._metrics.mqtt_subscriptions_refused.set(0)

    async def _subscribe(self, client: _Client, topics: Sequence[str], *, first: bool) -> list[str]:
        """Subscribe to each of ``topics``; returns those the broker refused (a SUBACK failure code: its ACL, a
        topic filter it does not support, its quota), each logged at ERROR on the connection's ``first`` try
        (DEBUG on the retries) and counted in ``duisgw_mqtt_link_failures_total{kind="subscription_refused"}``.
        A granted QoS below ``observe_qos`` is a subscription (logged at WARNING: the broker may drop what it
        sends at QoS 0)."""
        refused: list[str] = []
        for topic in topics:
            answer = await client.subscribe(topic, qos=self.cfg.observe_qos)
            refusal, granted = suback_outcome(answer)
            if refusal is not None:
                refused.append(topic)
                self._count_failure("subscription_refused")
                log.log(
                    logging.ERROR if first else logging.DEBUG,
                    "MQTT broker refused the subscription to observation topic %r (%s): nothing published there "
                    "reaches the observation lane; retried on this connection with backoff",
                    topic, refusal, extra={"host": self.cfg.host, "topic": topic, "reason": refusal},
                )  # fmt: skip
            else:
                if topic not in self.last_received:  # the first grant since start: the quiet is counted from it
                    self._saw(topic, self._now().timestamp())
                if granted is not None and granted < self.cfg.observe_qos:
                    log.warning(
                        "MQTT broker granted the subscription to observation topic %r at QoS %d, not %d",
                        topic, granted, self.cfg.observe_qos, extra={"host": self.cfg.host, "topic": topic},
                    )  # fmt: skip
        if self._metrics is not None:
            self._metrics.mqtt_subscriptions_refused.set(len(refused))
        return refused

    def _saw(self, topic: str, when: float) -> None:
        """The observation subscription ``topic`` was granted, or an observation came on it, at ``when``."""
        self.last_received[topic] = when
        if self._metrics is not None:
            self._metrics.mqtt_subscription_last_received.labels(topic).set(when)

    async def _resubscribe(self, client: _Client, refused: list[str]) -> None:
        """Subscribe again to the observation topics the broker refused on this connection (an ACL put right
        at the broker needs no restart of the gateway): after ``reconnect_interval`` (at least 1 s), doubled at
        each refusal up to 60 s, until each is granted; then the link is :attr:`subscribed`. Ends with the
        connection (a failure here is the connection's loss, which the consumer reports)."""
        delay = max(self.cfg.reconnect_interval, 1.0)
        try:
            while refused:
                await asyncio.sleep(delay)
                delay = min(delay * 2.0, UNEXPECTED_BACKOFF_MAX)
                refused = await self._subscribe(client, refused, first=False)
        except aiomqtt.MqttError:
            return
        except Exception:  # (a fault: the topics stay refused until the next connection)
            log.exception("MQTT link: subscribing again to the refused observation topics failed")
            return
        self._subscribed.set()
        log.info("MQTT link subscribed to every observation topic", extra={"host": self.cfg.host})

    async def _end_consumer(self, consumer: asyncio.Task[None]) -> None:
        """End ``consumer`` once the observation under way is finished and acknowledged (waited for up to
        ``publish_timeout``; past that it is abandoned unacknowledged and the broker sends it again)."""
        locked = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cfg.publish_timeout):
                await self._observing.acquire()
                locked = True
        try:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        finally:
            if locked:
                self._observing.release()

    async def _consume(self, client: _Client) -> None:
        async for message in client.messages:
            if message.qos > 0 and client.connection_lost:
                # aiomqtt hands over what is queued before it reports the loss: a QoS 1/2 observation left now
                # could not be acknowledged, and the broker sends it again on the next connection (processing
                # it here would only delay that connection and process it twice). QoS 0 ones are processed.
                continue
            async with self._observing:
                await self._observe(client, message)

    async def _drain(self) -> None:
        """Before the DISCONNECT of a reconnect: the publications in flight on the connection left get their
        PUBACK (each bounded by ``publish_timeout`` from its start; one that fails is retried by the outbox).
        None starts meanwhile: they wait for the next connection."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.cfg.publish_timeout + 1.0)

    async def _observe(self, client: _Client, message: aiomqtt.Message) -> None:
        payload = message.payload
        body = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
        received = self._now()
        if self._metrics is not None:
            self._metrics.mqtt_received.inc()
        when = received.timestamp()
        for topic in self.cfg.observe_topics:
            if message.topic.matches(topic):
                self._saw(topic, when)
        extra = {"lane": "observe", "topic": str(message.topic)}
        oversize = self.max_bytes is not None and len(body) > self.max_bytes
        if oversize and not await self._refuse_oversize(body, received, extra):
            return  # stopping: not acknowledged, the broker keeps it
        while not oversize:  # (an oversize payload is neither processed nor kept)
            try:
                if self._processor is None:
                    raise DuisgwError("no processor")  # pragma: no cover - subscription needs a processor
                result = await self._processor.accept(Lane.OBSERVE, None, body, received)
                if self._metrics is not None:
                    if result.accepted:
                        self._metrics.messages.labels(
                            "observe", result.kind or "", result.decision or "", result.reason or ""
                        ).inc()
                    else:
                        self._metrics.rejects.labels("observe", result.reason or "rejected").inc()
                log.debug(
                    "observed", extra={**extra, "message_id": result.message_id, "status": result.status}
                )
                break
            except ClassifyWorkerDied as exc:  # (a StoreUnavailable: caught first) a poison message
                # It killed a classify worker twice (the second time alone): retrying it would only kill
                # more, every reconnect_interval, with every observation behind it on the topic waiting.
                # HTTP answers it 503 and the DSP decides; here it is rejected: kept, acknowledged.
                if not await self._reject_observation(exc, exc.code, body, received, extra):
                    return  # stopping before it was kept: not acknowledged, the broker keeps it
                break
            except StoreUnavailable as exc:
                log.error("store unavailable, observation not acknowledged: %s", exc, extra=extra)
                await asyncio.sleep(self.cfg.reconnect_interval)
                if self._stopping.is_set():
                    return
            except Exception as exc:
                code = exc.code if isinstance(exc, DuisgwError) else "internal_error"
                if not await self._reject_observation(exc, code, body, received, extra):
                    return
                break
        client.ack(message)

    async def _reject_observation(
        self, exc: Exception, code: str, body: bytes, received: datetime, extra: dict[str, str]
    ) -> bool:
        """Reject an observation ``accept`` raised ``exc`` for: logged, counted in the rejects metric under
        ``code`` and kept with its bytes in the rejects table (the record retried while the store is
        unavailable; ``accept`` is not run again). ``False`` when stopping before the record could be
        written (the message is then not acknowledged)."""
        log.error(
            "observation rejected: %s",
            exc,
            extra={**extra, "reason": code},
            exc_info=not isinstance(exc, DuisgwError),
        )
        if self._metrics is not None:
            self._metrics.rejects.labels("observe", code).inc()
        return await self._keep_reject(code, str(exc)[:500], body, received)

    async def _keep_reject(self, code: str, detail: str, body: bytes, received: datetime) -> bool:
        """Write an observation's rejects row, retried every ``reconnect_interval`` while the store is
        unavailable; ``False`` when stopping before it was written (the message is then not acknowledged)."""
        while self._rejects is not None:
            try:
                await self._rejects.record(
                    lane="observe", user=None, reason=code, detail=detail, body=body, received_at=received
                )
                break
            except StoreUnavailable:
                await asyncio.sleep(self.cfg.reconnect_interval)
                if self._stopping.is_set():
                    return False
        return True

    async def _refuse_oversize(self, body: bytes, received: datetime, extra: dict[str, str]) -> bool:
        """Refuse an observation payload over ``max_bytes`` as the HTTP ingress refuses such a body: neither
        processed nor kept; its size is recorded in the rejects table (reason ``oversize_body``). ``False``
        when stopping before the record could be written (the message is then not acknowledged)."""
        detail = f"MQTT payload of {len(body)} bytes on {extra['topic'][:200]!r}, cap is {self.max_bytes} (not kept)"
        log.warning(
            "observation over the size cap refused: %s", detail, extra={**extra, "reason": "oversize_body"}
        )
        if self._metrics is not None:
            self._metrics.rejects.labels("observe", "oversize_body").inc()
        return await self._keep_reject("oversize_body", detail, b"", received)

    async def publish(self, topic: str, payload: bytes, pairs: Sequence[tuple[str, str]]) -> None:
        """Publish once; raises :class:`aiomqtt.MqttError` when disconnected or unacknowledged, and
        :class:`PublishRefused` when the broker's PUBACK has a failure reason code (:func:`puback_refusal`)
        or when the packet is larger than the Maximum Packet Size the broker announced in its CONNACK (then
        it is not sent: the broker would drop the connection over it). While the link reconnects with
        reloaded TLS material it waits for the new connection (up to ``publish_timeout``)."""
        if self._switching and not await self.wait_connected(self.cfg.publish_timeout):
            raise aiomqtt.MqttError("reconnecting to the MQTT broker with reloaded TLS material")
        client = self._client
        if client is None or not self._connected.is_set():
            raise aiomqtt.MqttError("not connected to the MQTT broker")
        if (problem := user_properties_problem(pairs)) is not None:
            raise PublishRefused(problem, refused=True)  # (paho would raise struct.error packing it)
        props = user_properties(pairs)
        limit = client.maximum_packet_size
        if limit is not None:
            size = publish_packet_size(topic, payload, self.cfg.publish_qos, props)
            if size > limit:
                raise PublishRefused(
                    f"a PUBLISH packet of {size} bytes is over the broker's Maximum Packet Size {limit} "
                    "(its CONNACK): not sent",
                    refused=True,
                )
        self._in_flight += 1
        self._idle.clear()
        try:
            failure = await client.publish_acknowledged(
                topic, payload, qos=self.cfg.publish_qos, properties=props, timeout=self.cfg.publish_timeout
            )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        if failure is not None and (refusal := puback_refusal(failure)) is not None:
            raise refusal


#: User properties a publication takes from its outbox row, not from the row's metadata.
_ROW_PROPERTIES = frozenset({"message_id", "destination"})


class MqttSender:
    """Outbox sender publishing one destination's rows to its MQTT topic: delivered on a PUBACK with a
    success reason code; a refusal (:class:`PublishRefused`) as its code maps (:func:`puback_refusal`);
    anything else (disconnected, no PUBACK in time) unreachable."""

    def __init__(self, link: MqttLink, topic: str) -> None:
        self.link = link
        self.topic = topic

    async def send(self, row: OutboxRow) -> SendOutcome:
        # the row's own message id and destination, then the decision metadata (which may name the message
        # id too, as a pipeline forward's does): one user property per key. The message id is the row's message
        # id, as the HTTP lane's X-DUISGW-Message-Id header carries it (percent-encoded when not printable ASCII);
        # the rest percent-encoded only where MQTT cannot carry them as they are (user_property_value)
        pairs = [("message_id", message_id_header_value(row.message_id)),
                 ("destination", user_property_value(row.destination))]  # fmt: skip
        pairs += sorted(
            (user_property_value(str(k)), user_property_value(str(v)))
            for k, v in row.metadata.items()
            if str(k) not in _ROW_PROPERTIES
        )
        try:
            await self.link.publish(self.topic, row.body, pairs)
        except PublishRefused as exc:  # a PUBACK failure code, or a packet over the broker's maximum
            return SendOutcome(False, refused=exc.refused, detail=f"MQTT: {exc}"[:300])
        except aiomqtt.MqttError as exc:
            return SendOutcome(False, refused=False, detail=f"MQTT: {exc}"[:300])
        except (OSError, TimeoutError) as exc:
            return SendOutcome(False, refused=False, detail=f"MQTT: {type(exc).__name__}: {exc}"[:300])
        except ValueError as exc:  # the client refuses the topic or payload: always will (a refusal)
            return SendOutcome(False, refused=True, detail=f"MQTT: {type(exc).__name__}: {exc}"[:300])
        except Exception as exc:  # never out of a delivery worker: logged, retried as unreachable
            log.error(
                "MQTT publication failed (%s: %s)",
                type(exc).__name__,
                exc,
                extra={"topic": self.topic, "message_id": row.message_id},
                exc_info=exc,
            )
            return SendOutcome(False, refused=False, detail=f"MQTT: {type(exc).__name__}: {exc}"[:300])
        return SendOutcome(True, detail="published")

    async def close(self) -> None:
        return None
