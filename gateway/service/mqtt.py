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

Reconnecting with reloaded TLS material (:meth:`MqttLink.reconnect`, after
:meth:`MqttLink.use_tls_context`: a reload that accepted new ``[mqtt.tls]`` files). The connection up was
opened with the old material, so the link leaves it and connects again with the new context, in order:
(1) publications not yet started wait for the new connection (up to ``publish_timeout``; then they fail as
*unreachable* and the outbox retries them), and no new observation is taken; (2) the observation under way
is finished and acknowledged (up to ``publish_timeout``; past that it is abandoned unacknowledged and the
broker sends it again); (3) publications in flight get their PUBACK (each bounded by ``publish_timeout``);
(4) a clean DISCONNECT (the session stays: observations received but not acknowledged are sent again by
the broker to the new connection); (5) a new connection with the new context, at once. No QoS 1
publication is lost: an outbox row is marked delivered only after its PUBACK, so one whose PUBACK did not
come on the old connection fails, stays pending and is published again on the new one (at least once:
the broker may then hold it twice; subscribers dedupe on ``message_id``). The answer is the outcome of the
first connection attempt made with the new context — ``reconnected``, ``failed`` with the reason (the link
goes on retrying every ``reconnect_interval`` with that context) or ``pending`` when no attempt ended in
time. A link that is down is woken from its wait to try the new context at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

__all__ = [
    "PUBLISH_OVERHEAD_BOUND",
    "MqttLink",
    "MqttSender",
    "Reconnect",
    "maximum_packet_size",
    "user_properties",
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
        self.errors = 0  # unexpected link failures (not a lost or refused connection) so far
        self.unexpected_in_a_row = 0  # unexpected failures since the link last worked (drives the backoff)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._connected.is_set()

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
            generation = self._generation  # (the context this attempt uses)
            self._switch.clear()
            attempt_ended = False  # (an attempt that connected and subscribed has settled its waiters)
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
                    attempt_ended = True
                    self._settle(generation, None)
                    await self._serve(client)  # returns when a reconnect is asked for
                    await self._drain()  # then the DISCONNECT, leaving the block
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
                self._client = None
                self._connected.clear()
                if self._metrics is not None:
                    self._metrics.mqtt_connected.set(0)
            if not self._switch.is_set():  # (a reconnect asked for: at once)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._switch.wait(), self._retry_delay())

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Take observations (when subscribed) until the connection is lost (its :class:`aiomqtt.MqttError`
        is raised) or :meth:`reconnect` asks to leave it (returns once no observation is under way)."""
        consumer = asyncio.create_task(self._consume(client), name="duisgw-mqtt-observe")
        switch = asyncio.create_task(self._switch.wait(), name="duisgw-mqtt-switch")
        try:
            await asyncio.wait({consumer, switch}, return_when=asyncio.FIRST_COMPLETED)
            if consumer.done():
                consumer.result()  # the loss of the connection (the consumer ends only with it)
                return  # pragma: no cover
            # A reconnect: publications not yet started wait for the next connection; the observation
            # under way finishes and is acknowledged first (bounded: past it, it is abandoned unacknowledged
            # and the broker sends it again on the next connection).
            self._switching = True
            self._client = None
            self._connected.clear()
            log.info(
                "MQTT link leaving its connection to reconnect with the reloaded TLS material "
                "(%d publication(s) awaiting their PUBACK first)",
                self._in_flight,
                extra={"host": self.cfg.host, "in_flight": self._in_flight},
            )
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
        finally:  # (stop() cancels the link: nothing is waited for beyond the two tasks' ends)
            consumer.cancel()
            switch.cancel()
            await asyncio.gather(consumer, switch, return_exceptions=True)

    async def _consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            async with self._observing:
                await self._observe(client, message)

    async def _drain(self) -> None:
        """Before the DISCONNECT of a reconnect: the publications in flight on the connection left get their
        PUBACK (each bounded by ``publish_timeout`` from its start; one that fails is retried by the outbox).
        None starts meanwhile: they wait for the next connection."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.cfg.publish_timeout + 1.0)

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
        """Publish once; raises :class:`aiomqtt.MqttError` when disconnected or unacknowledged. While the
        link reconnects with reloaded TLS material it waits for the new connection (up to
        ``publish_timeout``)."""
        if self._switching and not await self.wait_connected(self.cfg.publish_timeout):
            raise aiomqtt.MqttError("reconnecting to the MQTT broker with reloaded TLS material")
        client = self._client
        if client is None or not self._connected.is_set():
            raise aiomqtt.MqttError("not connected to the MQTT broker")
        self._in_flight += 1
        self._idle.clear()
        try:
            await client.publish(
                topic,
                payload,
                qos=self.cfg.publish_qos,
                properties=user_properties(pairs),
                timeout=self.cfg.publish_timeout,
            )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()


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
