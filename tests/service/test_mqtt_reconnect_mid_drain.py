"""The MQTT link draining an observation backlog from a real mosquitto (2.0.11) that sends past the Receive
Maximum the link announces (``[mqtt] receive_maximum``): once the gateway acknowledges a backlog's first
message, mosquitto sends a whole quota more per acknowledgement, and on a new connection it sends every message
in flight for the session again, before its SUBACK. The link must keep reading its connection through all of
that: a link that stopped reading past the quota never read the SUBACK of a new connection (the subscription
timed out and it reconnected for ever, also across restarts, while its publications timed out and were sent
again), and the PUBACKs of its publications waited behind the observations (reported failed although the broker
took them: the outbox sent them again).

The tests against mosquitto stop the gateway's store at one observation of the backlog (``Store.stop_at``),
well into the drain: mosquitto has then sent far more than the quota. Only the observation under way at a cut
or restart is given to the store twice (its PUBACK was lost with the connection: at least once, as MQTT QoS 1
is; the processor's idempotency records it once); every other one once, in order. A scripted broker pins the
strictest order a broker may send in after a reconnect: the SUBACK behind the messages in flight."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import aiomqtt
import pytest
import test_mqtt_broker_refusals as refusals
import test_mqtt_qos2_refusals as qos2
from servicekit import Broker

from gateway.service.api import AcceptResult, Lane
from gateway.service.config import MqttConfig
from gateway.service.mqtt import MqttLink, MqttSender
from gateway.service.outbox import OutboxRow

StartBroker = refusals.StartBroker

#: the Receive Maximum the link announces (its default is 64)
QUOTA = 16
#: observations waiting on the broker for the gateway
BACKLOG = 1500
#: the observation of the backlog at which the store stops: by then mosquitto has sent far past the quota
STOP_AT = 6 * QUOTA
#: the broker leaves flow control to the client's Receive Maximum and queues the whole backlog
UNLIMITED_BROKER = ("max_inflight_messages 0", "max_queued_messages 100000")
CLIENT_ID = "duisgw-mid-drain"
TOPIC = "dsp/observe/x"


class Store:
    """A processor recording each observation it is given; at the ``stop_at``-th one (the first time only) it
    waits for ``go`` (a store that stops for a moment)."""

    def __init__(self, stop_at: int) -> None:
        self.calls: list[bytes] = []
        self.stop_at = stop_at
        self.stopped = asyncio.Event()  # set while the store holds observation ``stop_at``
        self.go = asyncio.Event()

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        assert lane is Lane.OBSERVE
        self.calls.append(body)
        if len(self.calls) == self.stop_at:
            self.stopped.set()
            await self.go.wait()
        return AcceptResult(
            True, 204, reason="observed", message_id=body.decode(), decision="observe", kind="k"
        )

    async def tick(self, now: datetime) -> None:
        return None


def config(broker: Broker, **extra: object) -> MqttConfig:
    settings: dict[str, object] = dict(
        enabled=True, port=broker.port, client_id=CLIENT_ID, keepalive=30, reconnect_interval=0.1,
        observe_topics=("dsp/observe/#",), observe_qos=1, receive_maximum=QUOTA, publish_timeout=2.0,
    )  # fmt: skip
    settings.update(extra)
    return MqttConfig(**settings)  # type: ignore[arg-type]


def bodies(n: int) -> list[bytes]:
    return [f"<m{i:05d}/>".encode() for i in range(n)]


async def until(cond: Callable[[], bool], timeout: float) -> bool:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


async def backlog_for_the_gateway(broker: Broker, cfg: MqttConfig, sent: list[bytes]) -> None:
    """The gateway's session subscribed (a probe observation recorded), then ``sent`` published while it is
    away: the broker holds them for it."""
    probe = Store(0)
    link = MqttLink(cfg, processor=probe, max_bytes=65536)
    await link.start()
    try:
        assert await link.wait_connected(5)
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
            await pub.publish("dsp/observe/probe", b"<probe/>", qos=1)
        assert await until(lambda: probe.calls == [b"<probe/>"], 5)
        await asyncio.sleep(0.1)  # (its PUBACK)
    finally:
        await link.stop()
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=0
    ) as pub:
        for body in sent:
            await pub.publish(TOPIC, body, qos=1)


def recorded_once_in_order_but_the_one_under_way(calls: list[bytes], sent: list[bytes]) -> None:
    """``calls`` is ``sent`` in order, each once, but for observation ``STOP_AT`` (under way when the connection
    ended), which comes again first on the next connection."""
    i = STOP_AT - 1
    assert calls[: i + 1] == sent[: i + 1]
    twice = [body for body, n in Counter(calls).items() if n > 1]
    assert twice == [sent[i]], f"recorded more than once: {twice[:5]}"
    assert calls[i + 1 :] == sent[i:], "not every observation recorded after the reconnect, in order"


@pytest.mark.parametrize("how", ["connection cut", "gateway restarted"])
async def test_a_backlog_drain_interrupted_past_the_receive_maximum_completes_on_the_next_connection_each_observation_recorded_once(
    broker_with: StartBroker, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    broker = broker_with(*UNLIMITED_BROKER)
    cfg = config(broker)
    sent = bodies(BACKLOG)
    store = Store(STOP_AT)
    await backlog_for_the_gateway(broker, cfg, sent)
    caplog.set_level(logging.INFO, logger="duisgw.service.mqtt")
    link = MqttLink(cfg, processor=store, max_bytes=65536)
    await link.start()
    try:
        assert await until(store.stopped.is_set, 10), f"{len(store.calls)} recorded: the drain did not start"
        client = link._client
        assert client is not None
        if how == "connection cut":
            # what a network fault does: the TCP connection ends under the link (the broker keeps the session)
            sock = client._client._sock
            assert sock is not None
            sock.shutdown(socket.SHUT_RDWR)
            await asyncio.sleep(0.2)
            store.go.set()  # the observation under way is recorded; its PUBACK cannot be sent
        else:  # a restart: the same client id and session, the observation under way abandoned
            await link.stop()
            store.go.set()
            link = MqttLink(cfg, processor=store, max_bytes=65536)
            await link.start()
        # the broker sends again what was in flight (far more than the quota) before the new SUBACK
        done = await until(lambda: len(store.calls) >= BACKLOG + 1, 15)
        assert done, f"{len(set(store.calls))} of {BACKLOG} recorded, connections {link.connections}"
        await asyncio.sleep(0.3)  # (a duplicate would show now)
        assert link.connected
        assert link.connections == (2 if how == "connection cut" else 1)
    finally:
        await link.stop()
    recorded_once_in_order_but_the_one_under_way(store.calls, sent)
    lost = [r.getMessage() for r in caplog.records if "lost or refused" in r.getMessage()]
    # the cut alone ended a connection: no subscription timed out on the next one
    assert len(lost) == (1 if how == "connection cut" else 0), lost
    assert any("more than the Receive Maximum" in r.getMessage() for r in caplog.records)


def row(i: int) -> OutboxRow:
    return OutboxRow(seq=i, queue="dno-a", message_id=f"fwd-{i}", destination="dno-a", body=f"<fwd{i}/>".encode(),
                     metadata={}, state="pending", enqueued_at=0.0, attempts=0, refusals=0, next_attempt_at=0.0,
                     last_error=None)  # fmt: skip


async def test_publications_made_while_a_backlog_drains_past_the_receive_maximum_get_their_puback_in_time_and_are_delivered_once(
    broker_with: StartBroker,
) -> None:
    broker = broker_with(*UNLIMITED_BROKER)
    cfg = config(broker, publish=True, publish_qos=1, publish_timeout=2.0)
    sent = bodies(BACKLOG)
    store = Store(STOP_AT)
    await backlog_for_the_gateway(broker, cfg, sent)
    dno: list[str] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as subscriber:
        await subscriber.subscribe("dno/#", qos=1)

        async def collect() -> None:
            async for message in subscriber.messages:
                assert isinstance(message.payload, bytes)
                dno.append(message.payload.decode())

        collecting = asyncio.create_task(collect())
        link = MqttLink(cfg, processor=store, max_bytes=65536)
        await link.start()
        try:
            sender = MqttSender(link, "dno/a")
            # the store stops in the middle of the drain: the broker has sent far more than the quota
            assert await until(store.stopped.is_set, 10), (
                f"{len(store.calls)} recorded: the drain did not start"
            )
            stopped = await asyncio.gather(*(sender.send(row(i)) for i in range(8)))
            store.go.set()  # the drain goes on, and the gateway publishes meanwhile
            draining = [await sender.send(row(i)) for i in range(8, 16)]
            assert await until(lambda: len(store.calls) >= BACKLOG, 15), (
                f"{len(store.calls)} of {BACKLOG} recorded"
            )
            await asyncio.sleep(0.3)  # (a duplicate would show now)
            assert link.connections == 1
        finally:
            await link.stop()
            collecting.cancel()
            await asyncio.gather(collecting, return_exceptions=True)
    failed = [(i, o.detail) for i, o in enumerate([*stopped, *draining]) if not o.ok]
    assert not failed, (
        f"publications the broker took reported failed (the outbox would send them again): {failed}"
    )
    assert sorted(dno) == sorted(f"<fwd{i}/>" for i in range(16))  # each delivered, once
    assert store.calls == sent  # every observation recorded once, in order


class ResendingBroker(qos2.ScriptServer):
    """A broker with the gateway's session in flight: after the CONNACK it sends ``bodies`` again at QoS 1
    (DUP set), and it answers the SUBSCRIBE only once it has a PUBACK for the first of them (the strictest
    order a broker may keep: the SUBACK behind the messages in flight). Records the PUBACKs' packet ids, and
    whether a SUBACK was sent."""

    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies
        self.pubacks: list[int] = []
        self.subacked = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subscribe: bytes | None = None  # the packet id of a SUBSCRIBE not yet answered
        try:
            async for header, body in qos2.packets(reader):
                kind = header & 0xF0
                if kind == 0x10:  # CONNECT: CONNACK (session present), then the messages in flight again
                    writer.write(bytes([0x20, 3, 1, 0, 0]))
                    for mid, payload in enumerate(self.bodies, start=1):
                        rest = len(TOPIC).to_bytes(2, "big") + TOPIC.encode() + mid.to_bytes(2, "big") + b"\0"
                        rest += payload  # (no properties; each packet under 128 bytes)
                        writer.write(bytes([0x3A, len(rest)]) + rest)
                elif kind == 0x80:  # SUBSCRIBE: answered after the first PUBACK
                    subscribe = body[:2]
                elif kind == 0x40:  # PUBACK
                    self.pubacks.append(int.from_bytes(body[:2], "big"))
                elif kind == 0xC0:  # PINGREQ
                    writer.write(bytes([0xD0, 0]))
                elif kind == 0xE0:  # DISCONNECT
                    break
                if subscribe is not None and self.pubacks:
                    writer.write(bytes([0x90, 4]) + subscribe + bytes([0, 1]))  # SUBACK granting QoS 1
                    subscribe, self.subacked = None, True
                await writer.drain()
        finally:
            writer.close()


async def test_observations_a_broker_sends_again_before_its_suback_are_processed_and_acknowledged_while_the_subscription_waits() -> (
    None
):
    sent = bodies(3 * QUOTA)  # (more than the quota, as mosquitto 2.0 sends again after a drain)
    broker = ResendingBroker(sent)
    await broker.start()
    store = Store(0)
    cfg = MqttConfig(enabled=True, port=broker.port, client_id=CLIENT_ID, keepalive=30, reconnect_interval=0.1,
                     observe_topics=("dsp/observe/#",), observe_qos=1, receive_maximum=QUOTA,
                     publish_timeout=2.0)  # fmt: skip
    link = MqttLink(cfg, processor=store, max_bytes=65536)
    await link.start()
    try:
        assert await until(lambda: len(broker.pubacks) == len(sent), 5), f"{len(broker.pubacks)} acknowledged"
        # the SUBACK, read: the subscription made on the first connection (it did not time out)
        assert await until(
            lambda: broker.subacked and link._client is not None and not link._client._pending_subscribes, 1
        )
        assert link.connections == 1
    finally:
        await link.stop()
        await broker.stop()
    assert store.calls == sent  # in order, each once
    assert broker.pubacks == list(range(1, len(sent) + 1))  # each acknowledged once, in order
