"""MQTT publication of what a DUIS message carries into its user properties (found by the review of the
publication side, session h6; each test failed before its fix), against a real mosquitto.

1. A message id (and the ``kind`` metadata) is made from DUIS text kept as received (``DCCAlertCode``), so a
   DSP-signed AD1 can carry a line break into it (the HTTP lane percent-encodes its ``X-DUISGW-Message-Id``
   header for this: tests/service/test_delivery_faults.py). Sent as an MQTT v5 user property it is a string
   MQTT forbids (MQTT 5.0 §1.5.4: control characters; U+0000 makes the packet malformed) and mosquitto drops
   the connection over it (``Malformed UTF-8``): the publication never got a PUBACK, was retried as
   *unreachable* for ever (never dead-lettered), every retry dropped the connection that the observations
   and every other destination share, and the destination's MQTT queue stood behind that row for good. The
   user property values are now percent-encoded when MQTT cannot carry them as they are (the message id
   exactly as the HTTP header carries it).
2. A user property value over 65,535 bytes (a DCCAlertCode that long, within ``server.max_body_bytes``) made
   paho raise ``struct.error`` from its packing: an unexpected error, retried as unreachable for ever. It is
   now a refusal (counted toward ``max_attempts``, then dead-lettered) and the queue moves on.
3. The broker's Receive Maximum (its CONNACK) was not kept to: QoS 2 publications past it got PUBREC 0x97.
4. A QoS 2 exchange a lost connection left between PUBREC and PUBCOMP was never released (no PUBREL on the
   next connection, MQTT 5.0 §4.4): the broker held it and a slot of its Receive Maximum with it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.enums import MQTTErrorCode
from servicekit import DNO_USER, Broker, Receiver, pipeline_config, running
from test_delivery_faults import line_break_ad1

from gateway.service.api import message_id_header_value
from gateway.service.config import MqttConfig, OutboxConfig
from gateway.service.mqtt import MqttLink, MqttSender
from gateway.service.outbox import OutboxRow
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator

TOPIC = "duisgw/dno/dno-a"

StartBroker = Callable[..., Broker]


class Subscriber:
    """Collects what is published under duisgw/dno/#."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[aiomqtt.Message] = []
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, protocol=aiomqtt.ProtocolVersion.V5) as sub:
            await sub.subscribe("duisgw/dno/#", qos=1)
            self.ready.set()
            async for message in sub.messages:
                self.messages.append(message)

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def wait_for(self, n: int, timeout: float) -> bool:
        for _ in range(int(timeout / 0.05)):
            if len(self.messages) >= n:
                return True
            await asyncio.sleep(0.05)
        return False


def props(message: aiomqtt.Message) -> dict[str, str]:
    return dict(getattr(message.properties, "UserProperty", []))


def _row(message_id: str, metadata: dict[str, str], body: bytes = b"<x/>") -> OutboxRow:
    return OutboxRow(1, "mqtt:dno-a", message_id, "dno-a", body, metadata, "pending", 0.0, 0, 0, 0.0, None)


async def test_a_dsp_signed_ad1_with_a_line_break_in_its_alert_code_is_published_and_the_queue_behind_it_moves_on(
    tmp_path: Path, broker: Broker
) -> None:
    reference, first, odd, later = line_break_ad1(tmp_path, "mqtt-line-break")
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER)
        cfg = replace(
            cfg,
            mqtt=MqttConfig(enabled=True, port=broker.port, client_id="duisgw-h6-props", keepalive=5,
                            reconnect_interval=0.2, publish=True, publish_timeout=1.0),
            outbox=replace(cfg.outbox, max_attempts=3),
        )
        service = make_service(build_gateway(cfg))
        async with Subscriber(broker.port) as sub, running(service):
            assert service.mqtt is not None and await service.mqtt.wait_connected(5)
            url = f"http://127.0.0.1:{service.port}"
            async with DspSimulator(url, DNO_USER, retry_for=0) as dsp:
                answers = [await dsp.post(m) for m in (first, odd, later)]
            assert [(a.status, a.decision) for a in answers] == [(200, "forward")] * 3
            await receiver.wait_for(3)  # the HTTP lane delivers the three
            published = await sub.wait_for(3, timeout=8.0)
            connections = service.mqtt.connections
    finally:
        await receiver.stop()
    assert published, f"only {len(sub.messages)} of 3 published on MQTT"
    assert connections == 1  # the broker never dropped the shared connection
    assert sorted(bytes(m.payload) for m in sub.messages) == sorted([first.body, odd.body, later.body])  # type: ignore[arg-type]
    (odd_message,) = [m for m in sub.messages if m.payload == odd.body]
    # the same id as the HTTP lane's header, so a subscriber dedupes both alike
    assert props(odd_message)["message_id"] == answers[1].message_id
    assert props(odd_message)["message_id"].endswith("%0A")
    assert "\n" not in "".join(k + v for k, v in props(odd_message).items())


async def test_user_property_values_mqtt_cannot_carry_are_percent_encoded_and_published(broker: Broker) -> None:
    link = MqttLink(MqttConfig(enabled=True, port=broker.port, client_id="duisgw-h6-nul", keepalive=5,
                               reconnect_interval=0.2, publish=True, publish_timeout=1.0))  # fmt: skip
    odd = {"kind": "DCCAlertMessage.AD1\x00", "reason": "r\x85", "device": "mpan:1\ufffe", "decision": "forward"}
    async with Subscriber(broker.port) as sub:
        await link.start()
        try:
            assert await link.wait_connected(5)
            outcome = await MqttSender(link, TOPIC).send(_row("x|AD1\r\n", odd))
            after = await MqttSender(link, TOPIC).send(_row("m2", {"kind": "k"}, b"<y/>"))
            got = await sub.wait_for(2, timeout=5.0)
            connections = link.connections
        finally:
            await link.stop()
    assert (outcome.ok, after.ok) == (True, True), (outcome, after)
    assert got and connections == 1
    first = props(sub.messages[0])
    assert first["message_id"] == message_id_header_value("x|AD1\r\n") == "x|AD1%0D%0A"
    assert first["kind"] == "DCCAlertMessage.AD1%00"
    assert first["reason"] == "r%C2%85"
    assert first["device"] == "mpan:1%EF%BF%BE"
    assert first["decision"] == "forward"  # what MQTT carries is unchanged
    assert props(sub.messages[1]) == {"message_id": "m2", "destination": "dno-a", "kind": "k"}


def test_a_user_property_value_is_unchanged_unless_mqtt_cannot_carry_it() -> None:
    from gateway.service.mqtt import user_property_value

    assert user_property_value("90-B3-D5-1F-30-00-00-02:00-DB-12-34-56-78-90-A0:7|DCCAlertMessage.AD1") == (
        "90-B3-D5-1F-30-00-00-02:00-DB-12-34-56-78-90-A0:7|DCCAlertMessage.AD1"
    )
    assert user_property_value("dno-é") == "dno-é"  # UTF-8 is what MQTT carries
    assert user_property_value("50%") == "50%25"  # (unambiguous: '%' only ever starts an escape)
    assert user_property_value("a\tb") == "a%09b"
    assert user_property_value("\ud800") == "%ED%A0%80"  # a lone surrogate: not UTF-8 at all


async def test_a_user_property_value_longer_than_mqtt_can_carry_is_refused_and_dead_lettered_not_retried_for_ever(
    tmp_path: Path, broker: Broker
) -> None:
    link = MqttLink(MqttConfig(enabled=True, port=broker.port, client_id="duisgw-h6-long", keepalive=5,
                               reconnect_interval=0.2, publish=True, publish_timeout=1.0))  # fmt: skip
    await link.start()
    try:
        assert await link.wait_connected(5)
        long = await MqttSender(link, TOPIC).send(_row("m1", {"kind": "DCCAlertMessage." + "A" * 70_000}))
        after = await MqttSender(link, TOPIC).send(_row("m2", {"kind": "k"}))
    finally:
        await link.stop()
    assert (long.ok, long.refused) == (False, True), long
    assert "65535" in long.detail or "65,535" in long.detail
    assert after.ok
    assert OutboxConfig().max_attempts > 0  # a refusal is counted, then dead-lettered


# ------------------------------------------------------------------------------ the broker's Receive Maximum


@pytest.mark.parametrize("qos", [1, 2])
async def test_publications_beyond_the_receive_maximum_the_broker_announced_wait_for_a_slot_and_none_is_refused(
    broker_with: StartBroker, qos: int
) -> None:
    """3. The broker's CONNACK announces its *Receive Maximum* (mosquitto: ``max_inflight_messages``): the client
    must not have more QoS 1/2 publications unacknowledged (MQTT 5.0 §4.9). paho-mqtt (2.2) ignores it (its own
    limit is 20), so publications in flight together — ``[outbox] window`` > 1, or several destinations' queues
    at once — went past it: mosquitto answered the excess PUBACK 0x97 Quota exceeded (a stricter broker drops
    the connection, 0x93), each a failed delivery retried after the backoff. They now wait for a slot."""
    broker = broker_with("max_inflight_messages 2")  # CONNACK Receive Maximum 2
    link = MqttLink(MqttConfig(enabled=True, port=broker.port, client_id="duisgw-h6-rm", keepalive=5,
                               reconnect_interval=0.2, publish=True, publish_timeout=3.0, publish_qos=qos))  # fmt: skip
    senders = [MqttSender(link, f"duisgw/dno/dno-{c}") for c in "abcd"]
    async with Subscriber(broker.port) as sub:
        await link.start()
        try:
            assert await link.wait_connected(5)
            outcomes = await asyncio.gather(
                *(senders[i % 4].send(_row(f"m{i}", {"kind": "k"}, f"<m{i}/>".encode())) for i in range(24))
            )
            got = await sub.wait_for(24, timeout=5.0)
            connections = link.connections
        finally:
            await link.stop()
    failed = [o.detail for o in outcomes if not o.ok]
    assert failed == [], failed
    assert got and connections == 1
    assert sorted(bytes(m.payload) for m in sub.messages) == sorted(f"<m{i}/>".encode() for i in range(24))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ QoS 2 across a reconnect


async def test_a_qos2_exchange_the_connection_lost_between_pubrec_and_pubcomp_is_released_on_the_next_one(
    broker_with: StartBroker,
) -> None:
    """4. With a persistent session the broker keeps a QoS 2 publication it answered with a PUBREC until its PUBREL
    comes — across a reconnect (MQTT 5.0 §4.4: the client must send the PUBREL again on the new connection).
    The link makes a new client for each connection, which knew nothing of it: the exchange was left open at
    the broker for good, holding a slot of its Receive Maximum (mosquitto: until the session expires, or a
    later publication happens to reuse its packet identifier). Once as many were left open as the broker's
    Receive Maximum, every QoS 2 publication was answered PUBREC 0x97 Quota exceeded: retried as unreachable,
    never delivered. The new connection now sends their PUBRELs first."""
    broker = broker_with("max_inflight_messages 1")  # Receive Maximum 1: one exchange left open is enough
    link = MqttLink(MqttConfig(enabled=True, port=broker.port, client_id="duisgw-h6-pubrel", keepalive=5,
                               reconnect_interval=0.2, publish=True, publish_timeout=1.0, publish_qos=2))  # fmt: skip
    sender = MqttSender(link, TOPIC)
    async with Subscriber(broker.port) as sub:
        await link.start()
        try:
            assert await link.wait_connected(5)
            for i in range(30):  # the session's packet identifiers move on (a long-lived connection)
                assert (await sender.send(_row(f"m{i}", {}, f"<m{i}/>".encode()))).ok
            client = link._client
            assert client is not None
            paho_client = client._client

            def lost_before_pubrel(mid: int) -> Any:  # the connection ends after the PUBREC, before the PUBREL
                paho_client._sock.shutdown(socket.SHUT_RDWR)
                return MQTTErrorCode.MQTT_ERR_SUCCESS

            paho_client._send_pubrel = lost_before_pubrel  # type: ignore[method-assign]
            cut = await sender.send(_row("cut", {}, b"<cut/>"))
            assert not cut.ok  # no PUBCOMP: the outbox retries it
            for _ in range(100):
                if link.connections == 2 and link.connected:
                    break
                await asyncio.sleep(0.05)
            assert link.connected and link.connections == 2
            after = [await sender.send(_row(f"n{i}", {}, f"<n{i}/>".encode())) for i in range(5)]
            retried = await sender.send(_row("cut", {}, b"<cut/>"))
            await sub.wait_for(36, timeout=3.0)
        finally:
            await link.stop()
    assert [o.detail for o in after if not o.ok] == [], [o.detail for o in after]
    assert retried.ok
    payloads = [bytes(m.payload) for m in sub.messages]  # type: ignore[arg-type]
    assert all(f"<n{i}/>".encode() in payloads for i in range(5))
    assert b"<cut/>" in payloads  # at least once (the released exchange, and the outbox's retry)
