"""What a backlog on the broker puts in the gateway's memory, against a real mosquitto: QoS 1 and 2
observations are flow-controlled by the MQTT v5 Receive Maximum the link announces (``[mqtt]
receive_maximum``): while the gateway acknowledges nothing (its store blocked) the broker sends no more than
that many, and every message still arrives, in order, once. QoS 0 observations (no flow control in MQTT) are
queued up to the same bound; beyond it each is dropped on arrival, counted in
``duisgw_mqtt_observations_dropped_total`` and logged once per burst.

The broker is told to lift its own per-client limit (mosquitto's ``max_inflight_messages``, 20 by default:
another broker may have none) and to queue far more than the backlog, so that only the gateway's own
announcement bounds what it receives. mosquitto 2.0 (2.0.11 here) honours the Receive Maximum while the
gateway acknowledges nothing, but once the gateway acknowledges the oldest message in flight it sends a whole
quota more (its ``db__message_delete_outgoing`` counts the acknowledged message's position, not the messages
in flight): the link then holds what the broker sends (it keeps reading the connection: its PUBACKs, SUBACKs
and PINGRESPs are on it), processes it at its own pace, in order, and warns once per connection; a scripted
broker that floods the link regardless pins that whatever mosquitto does. What is sampled, at every message
the client library hands over: the size of aiomqtt's incoming queue, and the observations held (queued, or
under way in ``accept``). With QoS 2 the messages paho holds between PUBREC and PUBREL are not sampled
(docs/OPERATIONS.md). tests/service/test_mqtt_reconnect_mid_drain.py has a drain interrupted by a reconnect,
and publications made during one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiomqtt
import pytest
import test_mqtt_broker_refusals as refusals
import test_mqtt_qos2_refusals as qos2
from servicekit import Broker

from gateway.service import mqtt
from gateway.service.api import AcceptResult, Lane
from gateway.service.config import ConfigError, MqttConfig, config_from_mapping
from gateway.service.metrics import Metrics
from gateway.service.mqtt import MqttLink

StartBroker = refusals.StartBroker

#: the Receive Maximum the link announces in these tests (its default is larger)
BOUND = 16
#: observations the broker holds for the gateway: far more than the bound
BACKLOG = 2000
#: the broker leaves flow control to the client's Receive Maximum and queues the whole backlog
UNLIMITED_BROKER = ("max_inflight_messages 0", "max_queued_messages 100000")
TOPIC = "dsp/observe/x"


class Gated:
    """A processor whose ``accept`` waits for ``gate`` (a slow store): the backlog builds meanwhile."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls: list[bytes] = []
        self.under_way = 0  # accept calls not returned: observations taken off the queue, not acknowledged

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        assert lane is Lane.OBSERVE
        self.calls.append(body)
        self.under_way += 1
        try:
            await self.gate.wait()
        finally:
            self.under_way -= 1
        return AcceptResult(True, 204, reason="observed", message_id=body.decode(), decision="observe", kind="k")

    async def tick(self, now: datetime) -> None:
        return None


class Samples:
    """Taken after each message the client library hands over to the link: the size of the link's incoming
    queue (aiomqtt's ``client.messages``), and the observations held (queued, or taken by ``proc`` and not
    yet acknowledged)."""

    def __init__(self) -> None:
        self.proc = Gated()
        self.queued: list[int] = []
        self.held: list[int] = []
        self.client: Any = None  # the link's client (the last one that handed a message over)

    def held_now(self) -> int:
        """The observations held now. (The last sample can miss one: a message the link has taken off its queue
        and not yet given to ``proc`` when the last one arrived.)"""
        return 0 if self.client is None else len(self.client.messages) + self.proc.under_way


@pytest.fixture
def samples(monkeypatch: pytest.MonkeyPatch) -> Samples:
    taken = Samples()
    original = mqtt._Client._on_message

    def sampled(self: Any, *args: Any) -> None:
        original(self, *args)
        taken.client = self
        taken.queued.append(len(self.messages))
        taken.held.append(len(self.messages) + taken.proc.under_way)

    monkeypatch.setattr(mqtt._Client, "_on_message", sampled)
    return taken


def link_config(broker: Broker, qos: int, client_id: str) -> MqttConfig:
    return MqttConfig(enabled=True, port=broker.port, client_id=client_id, keepalive=5, reconnect_interval=0.1,
                      observe_topics=("dsp/observe/#",), observe_qos=qos, receive_maximum=BOUND)  # fmt: skip


async def publish(broker: Broker, bodies: list[bytes], qos: int) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=0
    ) as pub:
        for body in bodies:
            await pub.publish(TOPIC, body, qos=qos)


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return False


def bodies(n: int, prefix: str = "m") -> list[bytes]:
    return [f"<{prefix}{i:05d}/>".encode() for i in range(n)]


def unacked(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("duisgw_mqtt_observations_unacked")


def over_quota_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "more than the Receive Maximum" in r.getMessage()]


@pytest.mark.parametrize("qos", [1, 2])
async def test_a_qos_1_or_2_backlog_is_held_to_the_receive_maximum_while_the_store_is_blocked_and_every_message_is_recorded_in_order_and_acknowledged_once(
    broker_with: StartBroker, samples: Samples, caplog: pytest.LogCaptureFixture, qos: int
) -> None:
    broker = broker_with(*UNLIMITED_BROKER)
    sent = bodies(BACKLOG)
    proc = samples.proc
    metrics = Metrics()
    cfg = link_config(broker, qos, f"duisgw-flow-{qos}")
    link = MqttLink(cfg, processor=proc, metrics=metrics, max_bytes=65536)
    caplog.set_level(logging.WARNING, logger="duisgw.service.mqtt")
    await link.start()
    try:
        assert await link.wait_subscribed(5)  # (the SUBACK in: published observations reach the link)
        await publish(broker, sent, qos)  # the broker takes them all; the gateway's store is blocked
        assert await until(lambda: samples.held_now() >= BOUND, 10), f"{samples.held_now()} held"
        await asyncio.sleep(0.5)  # (time for the broker to send more, were it allowed to)
        held_while_blocked = samples.held_now()
        unacked_while_blocked = unacked(metrics)
        proc.gate.set()  # the store is back: the backlog drains
        assert await until(lambda: len(proc.calls) >= BACKLOG), f"{len(proc.calls)} of {BACKLOG} recorded"
        assert await until(lambda: unacked(metrics) == 0)  # each acknowledged
        await asyncio.sleep(0.3)  # (a duplicate would show now)
        assert link.connections == 1
    finally:
        await link.stop()
    # while nothing is acknowledged: one observation under way, the rest of the quota queued
    assert held_while_blocked == BOUND
    assert unacked_while_blocked == BOUND
    assert proc.calls == sent  # all of them, in order, each once
    # While the backlog drains mosquitto 2.0 sends past the quota (a whole quota more per acknowledgement): the
    # link holds what it is sent, processes it in order and says so once (this connection's only warning).
    warned = over_quota_warnings(caplog)
    assert max(samples.held) > BOUND and len(warned) == 1, (max(samples.held), [r.getMessage() for r in warned])
    assert "processed" in warned[0].getMessage() and f"({BOUND}," in warned[0].getMessage()

    # all acknowledged: the broker sends none of them again to the same (persistent) session
    again = Gated()
    again.gate.set()
    link = MqttLink(link_config(broker, qos, f"duisgw-flow-{qos}"), processor=again, max_bytes=65536)
    await link.start()
    try:
        assert await link.wait_subscribed(5)  # (the SUBACK in: published observations reach the link)
        await publish(broker, [b"<later/>"], qos)
        assert await until(lambda: b"<later/>" in again.calls)
    finally:
        await link.stop()
    assert again.calls == [b"<later/>"]


async def test_a_qos_0_flood_is_bounded_in_memory_and_each_dropped_observation_is_counted_and_logged_once_per_burst(
    broker_with: StartBroker, samples: Samples, caplog: pytest.LogCaptureFixture
) -> None:
    broker = broker_with(*UNLIMITED_BROKER)
    sent = bodies(BACKLOG)
    proc = samples.proc
    metrics = Metrics()

    def dropped() -> float:
        return metrics.registry.get_sample_value("duisgw_mqtt_observations_dropped_total") or 0.0

    link = MqttLink(link_config(broker, 0, "duisgw-flood"), processor=proc, metrics=metrics, max_bytes=65536)
    caplog.set_level(logging.INFO, logger="duisgw.service.mqtt")
    await link.start()
    try:
        assert await link.wait_subscribed(5)  # (the SUBACK in: published observations reach the link)
        await publish(broker, sent[:1], 0)
        assert await until(lambda: proc.under_way == 1)  # taken off the queue: the store is slow
        await publish(broker, sent[1:], 0)
        arrived = await until(lambda: len(samples.queued) >= BACKLOG)  # every message handed over
        assert arrived, f"{len(samples.queued)} of {BACKLOG} arrived"
        # one under way, BOUND queued, the rest dropped on arrival
        assert samples.queued[-1] == BOUND, f"{samples.queued[-1]} observations queued in memory"
        proc.gate.set()
        assert await until(lambda: len(proc.calls) == 1 + BOUND)
        await publish(broker, [b"<after/>"], 0)  # the queue drained: taken again
        assert await until(lambda: b"<after/>" in proc.calls)
    finally:
        await link.stop()
    assert max(samples.queued) <= BOUND, f"up to {max(samples.queued)} observations queued in memory"
    assert dropped() == BACKLOG - 1 - BOUND  # each dropped one counted
    assert proc.calls == [*sent[: 1 + BOUND], b"<after/>"]  # the first ones, in order, then the later one
    drops = [r for r in caplog.records if "dropp" in r.getMessage()]
    # one line as the burst begins, one with its count when the queue takes messages again
    assert len(drops) == 2, [r.getMessage() for r in drops]
    assert drops[0].levelno == logging.WARNING and f"{BOUND}" in drops[0].getMessage()
    assert f"{BACKLOG - 1 - BOUND}" in drops[1].getMessage()


class FloodingBroker(qos2.ScriptServer):
    """A broker that ignores the Receive Maximum: on SUBSCRIBE it sends all of ``bodies`` at QoS 1 at once.
    Records the packet ids of the PUBACKs it receives."""

    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies
        self.pubacks: list[int] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async for header, body in qos2.packets(reader):
                kind = header & 0xF0
                if kind == 0x10:  # CONNECT
                    writer.write(bytes([0x20, 3, 0, 0, 0]))  # CONNACK
                elif kind == 0x80:  # SUBSCRIBE: SUBACK granting QoS 1, then the flood
                    writer.write(bytes([0x90, 4]) + body[:2] + bytes([0, 1]))
                    for mid, payload in enumerate(self.bodies, start=1):
                        rest = len(TOPIC).to_bytes(2, "big") + TOPIC.encode() + mid.to_bytes(2, "big") + b"\0"
                        rest += payload  # (no properties)
                        writer.write(bytes([0x32, len(rest)]) + rest)  # (each under 128 bytes)
                elif kind == 0x40:  # PUBACK
                    self.pubacks.append(int.from_bytes(body[:2], "big"))
                elif kind == 0xC0:  # PINGREQ
                    writer.write(bytes([0xD0, 0]))
                elif kind == 0xE0:  # DISCONNECT
                    break
                await writer.drain()
        finally:
            writer.close()


async def test_a_broker_sending_over_the_receive_maximum_is_read_on_and_warned_about_once_and_every_message_is_processed_in_order_and_acknowledged_once(
    samples: Samples, caplog: pytest.LogCaptureFixture
) -> None:
    sent = bodies(5 * BOUND)
    flood = FloodingBroker(sent)
    await flood.start()
    proc = samples.proc
    metrics = Metrics()
    cfg = MqttConfig(enabled=True, port=flood.port, client_id="duisgw-flooded", keepalive=5, reconnect_interval=0.1,
                     observe_topics=("dsp/observe/#",), observe_qos=1, receive_maximum=BOUND)  # fmt: skip
    link = MqttLink(cfg, processor=proc, metrics=metrics, max_bytes=65536)
    caplog.set_level(logging.WARNING, logger="duisgw.service.mqtt")
    await link.start()
    try:
        assert await link.wait_connected(5)
        # the whole flood read while the store is blocked (the connection is never left unread)
        assert await until(lambda: len(samples.held) == len(sent)), f"{len(samples.held)} read"
        held_while_blocked = samples.held[-1]
        unacked_while_blocked = unacked(metrics)
        proc.gate.set()
        assert await until(lambda: len(flood.pubacks) == len(sent)), f"{len(flood.pubacks)} acknowledged"
        assert await until(lambda: unacked(metrics) == 0)
        assert link.connections == 1
    finally:
        await link.stop()
        await flood.stop()
    assert held_while_blocked == unacked_while_blocked == len(sent)  # held: the broker broke flow control
    assert proc.calls == sent  # in order, each once
    assert flood.pubacks == list(range(1, len(sent) + 1))  # each acknowledged once, in order
    warned = over_quota_warnings(caplog)
    assert len(warned) == 1, [r.getMessage() for r in warned]  # once per connection
    assert warned[0].levelno == logging.WARNING and "breaking MQTT 5.0 flow control" in warned[0].getMessage()


@pytest.mark.parametrize("value", [0, 65536, -1])
def test_a_receive_maximum_outside_what_mqtt_can_announce_is_a_configuration_problem(value: int) -> None:
    with pytest.raises(ConfigError) as refused:
        config_from_mapping({"mode": "passthrough", "mqtt": {"receive_maximum": value}})
    assert "mqtt.receive_maximum: must be within 1..65535" in refused.value.problems


@pytest.mark.parametrize("value", [1, 65535])
def test_a_receive_maximum_within_1_to_65535_is_accepted(value: int) -> None:
    assert config_from_mapping({"mode": "passthrough", "mqtt": {"receive_maximum": value}}).mqtt.receive_maximum == value
