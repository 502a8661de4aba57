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
while the store is unavailable the message is retried and not acknowledged. A payload over
``max_bytes`` (``server.max_body_bytes``) is refused as the HTTP ingress refuses such a body: not
processed and not kept (a rejects row ``oversize_body`` records its size), then acknowledged.

Oversize observations are kept off the link in the first place: the CONNECT carries the MQTT v5
*Maximum Packet Size* property (MQTT 5.0 §3.1.2.11.4) set by :func:`maximum_packet_size` to
``max_bytes`` plus the most a PUBLISH packet adds around its payload (:data:`PUBLISH_OVERHEAD_BOUND`),
and the broker must not send this client a larger packet: it drops such a message for this client
(mosquitto logs ``Dropping too large outgoing PUBLISH`` ... at NOTICE; the publisher's PUBACK is
unaffected; nothing reaches the gateway, so nothing is recorded here). A payload at the cap always
fits (with a topic name and properties within the bound), and a payload over the cap small enough
to fit is refused after receipt as above (defence in depth). The link always speaks MQTT v5.

Publication: :class:`MqttSender` is an outbox sender; each row is published with QoS
``publish_qos`` to ``publish_topic`` with the original bytes as payload and the decision metadata
plus ``message_id`` as MQTT v5 user properties. With QoS ≥ 1 the send completes on the broker's
PUBACK; while disconnected a send fails as *unreachable* and the outbox retries it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.errors import DuisgwError
from gateway.service.api import Lane, Processor, StoreUnavailable
from gateway.service.config import MqttConfig, read_password_file
from gateway.service.delivery import SendOutcome
from gateway.service.metrics import Metrics
from gateway.service.outbox import OutboxRow, RejectStore
from gateway.service.tls import client_context

__all__ = ["PUBLISH_OVERHEAD_BOUND", "MqttLink", "MqttSender", "maximum_packet_size", "user_properties"]

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


def user_properties(pairs: Sequence[tuple[str, str]]) -> Properties:
    """PUBLISH properties carrying ``pairs`` as MQTT v5 user properties."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if pairs:
        props.UserProperty = list(pairs)
    return props


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
        self._client: aiomqtt.Client | None = None
        #: the TLS context of the next connection (built from [mqtt.tls] on first use; a reload replaces it)
        self._tls_context: ssl.SSLContext | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connections = 0  # successful connections so far (observability, tests)
        self.errors = 0  # unexpected link failures (not a lost or refused connection) so far
        self.unexpected_in_a_row = 0  # unexpected failures since the link last worked (drives the backoff)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="duisgw-mqtt")

    async def stop(self) -> None:
        """Stop the link; never raises (a failure of the link task is logged, shutdown goes on)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
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

    def use_tls_context(self, context: ssl.SSLContext) -> None:
        """The next connection to the broker uses ``context`` (a reload of ``[mqtt.tls]``): the connection
        in use is left alone (nothing in flight is lost); it applies at the next reconnect."""
        self._tls_context = context

    def _tls(self) -> ssl.SSLContext:
        if self._tls_context is None:
            self._tls_context = client_context(self.cfg.tls, base_dir=self._base_dir)
        return self._tls_context

    def _make_client(self) -> aiomqtt.Client:
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
        client = aiomqtt.Client(
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

    def _count_failure(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.mqtt_link_failures.labels(kind).inc()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                client = self._make_client()
                async with client:
                    self._client = client
                    self._connected.set()
                    self.connections += 1
                    if self._metrics is not None:
                        self._metrics.mqtt_connected.set(1)
                    log.info("connected to MQTT broker", extra={"host": self.cfg.host, "port": self.cfg.port})
                    for topic in self.cfg.observe_topics:
                        await client.subscribe(topic, qos=self.cfg.observe_qos)
                    self.unexpected_in_a_row = 0  # connected and subscribed: the link works
                    async for message in client.messages:
                        await self._observe(client, message)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection lost or refused: %s", exc, extra={"host": self.cfg.host})
                self._count_failure("lost")
            except OSError as exc:
                log.warning("MQTT connection error: %s", exc, extra={"host": self.cfg.host})
                self._count_failure("network")
            except Exception as exc:  # anything else must not end the link for good: log, back off, retry
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
                self._client = None
                self._connected.clear()
                if self._metrics is not None:
                    self._metrics.mqtt_connected.set(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._retry_delay())

    async def _observe(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        payload = message.payload
        body = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
        received = self._now()
        if self._metrics is not None:
            self._metrics.mqtt_received.inc()
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
            except StoreUnavailable as exc:
                log.error("store unavailable, observation not acknowledged: %s", exc, extra=extra)
                await asyncio.sleep(self.cfg.reconnect_interval)
                if self._stopping.is_set():
                    return
            except Exception as exc:
                code = exc.code if isinstance(exc, DuisgwError) else "internal_error"
                log.error(
                    "observation rejected: %s",
                    exc,
                    extra={**extra, "reason": code},
                    exc_info=not isinstance(exc, DuisgwError),
                )
                if self._metrics is not None:
                    self._metrics.rejects.labels("observe", code).inc()
                if self._rejects is not None:
                    try:
                        await self._rejects.record(
                            lane="observe",
                            user=None,
                            reason=code,
                            detail=str(exc)[:500],
                            body=body,
                            received_at=received,
                        )
                    except StoreUnavailable:
                        await asyncio.sleep(self.cfg.reconnect_interval)
                        continue
                break
        if message.qos > 0:
            client._client.ack(message.mid, message.qos)

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
        while self._rejects is not None:
            try:
                await self._rejects.record(
                    lane="observe",
                    user=None,
                    reason="oversize_body",
                    detail=detail,
                    body=b"",
                    received_at=received,
                )
                break
            except StoreUnavailable:
                await asyncio.sleep(self.cfg.reconnect_interval)
                if self._stopping.is_set():
                    return False
        return True

    async def publish(self, topic: str, payload: bytes, pairs: Sequence[tuple[str, str]]) -> None:
        """Publish once; raises :class:`aiomqtt.MqttError` when disconnected or unacknowledged."""
        client = self._client
        if client is None or not self._connected.is_set():
            raise aiomqtt.MqttError("not connected to the MQTT broker")
        await client.publish(
            topic,
            payload,
            qos=self.cfg.publish_qos,
            properties=user_properties(pairs),
            timeout=self.cfg.publish_timeout,
        )


class MqttSender:
    """Outbox sender publishing one destination's rows to its MQTT topic."""

    def __init__(self, link: MqttLink, topic: str) -> None:
        self.link = link
        self.topic = topic

    async def send(self, row: OutboxRow) -> SendOutcome:
        pairs = [("message_id", row.message_id), ("destination", row.destination)]
        pairs += sorted((str(k), str(v)) for k, v in row.metadata.items())
        try:
            await self.link.publish(self.topic, row.body, pairs)
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
