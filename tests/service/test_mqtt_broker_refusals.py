"""MQTT publication against a real mosquitto that does not take it: a PUBACK whose MQTT v5 reason code is a
failure (the broker's ACL, its ``message_size_limit``) is a refusal the outbox dead-letters, never a
delivery; a publication over the Maximum Packet Size the broker announced in its CONNACK is refused
before it is sent, so the connection shared with the observations stays up and the queue moves on; a
quota the broker ran out of is retried as unreachable; and a forward carries each user property once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from servicekit import Broker, duis_body, running, service_config

from gateway.service.app import Service
from gateway.service.config import DestinationConfig, MqttConfig, ServiceConfig
from gateway.service.mqtt import MqttLink, MqttSender, PublishRefused, puback_refusal
from gateway.service.outbox import OutboxRow

XML = {"Content-Type": "application/xml"}
TOPIC = "duisgw/dno/dno-a"

StartBroker = Callable[..., Broker]


def acl_read_only(tmp_path: Path) -> str:
    """A configuration line: anonymous clients may subscribe to duisgw/#, not publish there."""
    acl = tmp_path / "mosquitto" / "acl"
    acl.parent.mkdir(exist_ok=True)
    acl.write_text("topic read duisgw/#\n")
    return f"acl_file {acl}"


def gateway_config(tmp_path: Path, broker: Broker) -> ServiceConfig:
    cfg = service_config(tmp_path)
    mqtt = MqttConfig(
        enabled=True,
        port=broker.port,
        client_id="duisgw-refusals",
        keepalive=5,
        reconnect_interval=0.2,
        publish=True,
        publish_timeout=2.0,
    )
    # two refusals and a row is dead-lettered (an unreachable broker alone never dead-letters)
    outbox = replace(cfg.outbox, max_attempts=2)
    return replace(
        cfg,
        mqtt=mqtt,
        outbox=outbox,
        destinations=(DestinationConfig(name="dno-a", user="90-B3-D5-1F-30-02-00-00"),),
    )


async def post(svc: Service, body: bytes) -> str:
    url = f"http://127.0.0.1:{svc.port}/duis/dno/dno-a"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=XML) as r:
        assert r.status == 204
        return r.headers["X-DUISGW-Message-Id"]


async def outbox_rows(svc: Service) -> dict[str, tuple[Any, ...]]:
    """message id -> (state, attempts, refusals, last_error)."""
    rows = await svc.store.read(
        lambda c: c.execute("SELECT message_id, state, attempts, refusals, last_error FROM outbox").fetchall()
    )
    return {r[0]: tuple(r[1:]) for r in rows}


async def settled(svc: Service, ids: list[str], timeout: float = 15.0) -> dict[str, tuple[Any, ...]]:
    """The outbox rows of ``ids`` once none is pending any more (or when ``timeout`` ran out)."""
    rows: dict[str, tuple[Any, ...]] = {}
    for _ in range(int(timeout / 0.05)):
        rows = await outbox_rows(svc)
        if all(i in rows and rows[i][0] != "pending" for i in ids):
            break
        await asyncio.sleep(0.05)
    return rows


async def big_then_small(
    tmp_path: Path, broker: Broker
) -> tuple[tuple[Any, ...], tuple[Any, ...], int, int | None]:
    """A gateway publishing through ``broker``: a forward padded over 2 KB, then a small one. Returns their
    outbox rows (state, attempts, refusals, last_error) once settled, the connections the link made and the
    Maximum Packet Size it learnt from the broker."""
    async with running(Service(gateway_config(tmp_path, broker))) as svc:
        assert svc.mqtt is not None and await svc.mqtt.wait_connected(5)
        big = await post(svc, duis_body(1, pad=2000))
        small = await post(svc, duis_body(2))
        rows = await settled(svc, [big, small])
        return rows[big], rows[small], svc.mqtt.connections, svc.mqtt.broker_maximum_packet_size


# ------------------------------------------------------------------------------ PUBACK reason codes


async def test_a_publication_the_broker_acl_denies_is_dead_lettered_as_a_refusal_not_marked_delivered(
    tmp_path: Path, broker_with: StartBroker
) -> None:
    broker = broker_with(acl_read_only(tmp_path))  # the broker answers PUBACK 0x87 Not authorized
    async with running(Service(gateway_config(tmp_path, broker))) as svc:
        assert svc.mqtt is not None and await svc.mqtt.wait_connected(5)
        mid = await post(svc, duis_body(1))
        rows = await settled(svc, [mid])
        connections = svc.mqtt.connections
    state, attempts, refusals, last_error = rows[mid]
    assert (state, attempts, refusals) == ("dead", 2, 2)  # refused twice (max_attempts): kept, re-queueable
    assert "0x87" in last_error and "Not authorized" in last_error
    assert connections == 1


async def test_a_publication_over_the_broker_message_size_limit_is_dead_lettered_and_the_connection_stays_up(
    tmp_path: Path, broker_with: StartBroker
) -> None:
    # mosquitto answers a payload over message_size_limit with PUBACK 0x95 Packet too large (a code MQTT v5
    # allows in a CONNACK or DISCONNECT only: the client must take it, not drop the connection over it)
    big, small, connections, _maximum = await big_then_small(tmp_path, broker_with("message_size_limit 1000"))
    state, _attempts, refusals, last_error = big
    assert (state, refusals) == ("dead", 2)
    assert "0x95" in last_error and "Packet too large" in last_error
    assert small[0] == "delivered"  # the queue moved on
    assert connections == 1


@pytest.mark.parametrize(
    ("code", "name"),
    [(0x87, "Not authorized"), (0x90, "Topic name invalid"), (0x95, "Packet too large"),
     (0x99, "Payload format invalid"), (0x80, "Unspecified error"), (0x83, "Implementation specific error")],
)  # fmt: skip
def test_a_puback_failure_code_is_a_refusal(code: int, name: str) -> None:
    refusal = puback_refusal(ReasonCode(PacketTypes.PUBACK, identifier=code))
    assert refusal is not None and refusal.refused
    assert f"0x{code:02X}" in str(refusal) and name in str(refusal)


@pytest.mark.parametrize("code", [0x97, 0x91])  # quota exceeded, packet identifier in use
def test_a_puback_saying_the_broker_cannot_take_it_now_is_retried_as_unreachable(code: int) -> None:
    refusal = puback_refusal(ReasonCode(PacketTypes.PUBACK, identifier=code))
    assert refusal is not None and not refusal.refused


@pytest.mark.parametrize("code", [0x00, 0x10])  # success, no matching subscribers
def test_a_puback_success_code_is_a_delivery(code: int) -> None:
    assert puback_refusal(ReasonCode(PacketTypes.PUBACK, identifier=code)) is None


class _RefusingLink(MqttLink):
    def __init__(self, exc: Exception) -> None:
        super().__init__(MqttConfig(enabled=True))
        self.exc = exc

    async def publish(self, topic: str, payload: bytes, pairs: Any) -> None:
        raise self.exc


def _row(body: bytes = b"<x/>", metadata: dict[str, str] | None = None, message_id: str = "m1") -> OutboxRow:
    return OutboxRow(
        1, "mqtt:dno-a", message_id, "dno-a", body, metadata or {}, "pending", 0.0, 0, 0, 0.0, None
    )


@pytest.mark.parametrize(("code", "refused"), [(0x87, True), (0x97, False)])
async def test_an_mqtt_sender_reports_a_puback_failure_as_the_outcome_its_code_maps_to(
    code: int, refused: bool
) -> None:
    refusal = puback_refusal(ReasonCode(PacketTypes.PUBACK, identifier=code))
    assert isinstance(refusal, PublishRefused)
    outcome = await MqttSender(_RefusingLink(refusal), TOPIC).send(_row())
    assert (outcome.ok, outcome.refused) == (False, refused)
    assert outcome.detail.startswith("MQTT: ") and f"0x{code:02X}" in outcome.detail


# ------------------------------------------------------------------------------ Maximum Packet Size


async def test_a_publication_over_the_maximum_packet_size_the_broker_announced_is_refused_unsent_and_the_queue_moves_on(
    tmp_path: Path, broker_with: StartBroker
) -> None:
    # announced in the CONNACK; a larger packet drops the client
    big, small, connections, maximum = await big_then_small(tmp_path, broker_with("max_packet_size 1000"))
    assert maximum == 1000
    state, _attempts, refusals, last_error = big
    assert (state, refusals) == ("dead", 2)
    assert "Maximum Packet Size" in last_error and "1000" in last_error
    assert small[0] == "delivered"
    assert connections == 1  # never sent: the broker never dropped the shared connection


def publish_packet_bytes(topic: str, payload: int, pairs: list[tuple[str, str]]) -> int:
    """Size of an MQTT v5 QoS 1 PUBLISH (MQTT 5.0 §3.3), computed here independently of the gateway."""

    def varint(n: int) -> int:
        return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4

    props = sum(1 + 2 + len(k.encode()) + 2 + len(v.encode()) for k, v in pairs)  # User Property (0x26)
    remaining = 2 + len(topic.encode()) + 2 + varint(props) + props + payload
    return 1 + varint(remaining) + remaining


async def test_a_packet_exactly_at_the_announced_maximum_is_published_and_one_byte_more_is_refused_unsent(
    broker_with: StartBroker,
) -> None:
    limit = 1000
    broker = broker_with(f"max_packet_size {limit}")
    cfg = MqttConfig(enabled=True, port=broker.port, client_id="duisgw-limit", keepalive=5, reconnect_interval=0.2,
                     publish=True, publish_timeout=2.0)  # fmt: skip
    link = MqttLink(cfg)
    sender = MqttSender(link, TOPIC)
    pairs = [("message_id", "m1"), ("destination", "dno-a")]
    fits = next(n for n in range(limit, 0, -1) if publish_packet_bytes(TOPIC, n, pairs) == limit)
    await link.start()
    try:
        assert await link.wait_connected(5)
        at_limit = await sender.send(_row(b"x" * fits))
        over = await sender.send(_row(b"x" * (fits + 1)))
        assert link.connected
        connections = link.connections
    finally:
        await link.stop()
    assert at_limit.ok  # PUBACKed: the broker took a packet of exactly its maximum
    assert (over.ok, over.refused) == (False, True)
    assert f"{limit + 1} bytes" in over.detail and f"Maximum Packet Size {limit}" in over.detail
    assert connections == 1


# ------------------------------------------------------------------------------ user properties


async def test_a_forward_carries_each_user_property_once_with_the_rows_message_id(broker: Broker) -> None:
    ready = asyncio.Event()

    async def first_message() -> aiomqtt.Message:
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as sub:
            await sub.subscribe("duisgw/dno/#", qos=1)
            ready.set()
            async for message in sub.messages:
                return message
        raise AssertionError("no message")

    received = asyncio.create_task(first_message())
    await asyncio.wait_for(ready.wait(), 5)
    # what the processor gives a pipeline forward: its metadata names the message id too
    metadata = {"message_id": "RID|DCCAlertMessage.AD1", "decision": "forward", "action": "forward",
                "reason": "no-activation", "kind": "DCCAlertMessage.AD1", "device": "00-DB-12-34-56-78-90-A0"}  # fmt: skip
    link = MqttLink(MqttConfig(enabled=True, port=broker.port, client_id="duisgw-props", publish=True))
    await link.start()
    try:
        assert await link.wait_connected(5)
        outcome = await MqttSender(link, TOPIC).send(
            _row(metadata=metadata, message_id="RID|DCCAlertMessage.AD1")
        )
        message = await asyncio.wait_for(received, 10)
    finally:
        await link.stop()
    assert outcome.ok
    assert message.properties is not None
    pairs = list(getattr(message.properties, "UserProperty", []))
    keys = [k for k, _ in pairs]
    assert sorted(keys) == sorted(set(keys))  # one property per key
    assert dict(pairs) == {**metadata, "destination": "dno-a"}
