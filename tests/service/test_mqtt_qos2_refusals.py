"""QoS 2 publications (``[mqtt] publish_qos = 2``) are judged by the MQTT v5 reason code of their PUBREC
exactly as QoS 1 ones are by their PUBACK's: a broker's refusal (PUBREC 0x87 from its ACL, 0x95 from its
``message_size_limit``, ...) is dead-lettered under ``outbox.max_attempts``, never marked delivered; 0x97
and 0x91 are retried as unreachable; a PUBREC with a failure code ends the exchange (MQTT 5.0 §4.3.3: no
PUBREL follows) and frees the publication's in-flight slot; a permitted publication is delivered once.
Against a real mosquitto, and a scripted broker for the codes mosquitto does not answer on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
import test_mqtt_broker_refusals as refusals
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from servicekit import Broker, duis_body, running

from gateway.service import mqtt
from gateway.service.app import Service
from gateway.service.config import MqttConfig, ServiceConfig
from gateway.service.mqtt import MqttLink, MqttSender, puback_refusal

StartBroker = refusals.StartBroker
post, settled, row = refusals.post, refusals.settled, refusals._row

TOPIC = "duisgw/dno/dno-a"


def qos2_gateway(tmp_path: Path, broker: Broker) -> ServiceConfig:
    cfg = refusals.gateway_config(tmp_path, broker)  # max_attempts = 2
    return replace(cfg, mqtt=replace(cfg.mqtt, publish_qos=2))


def acl(tmp_path: Path, *rules: str) -> str:
    """A configuration line: the ACL ``rules`` for anonymous clients."""
    path = tmp_path / "mosquitto" / "acl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(f"{rule}\n" for rule in rules))
    return f"acl_file {path}"


# ------------------------------------------------------------------------------ against mosquitto


async def test_a_qos2_publication_the_broker_acl_denies_is_dead_lettered_as_a_refusal_not_marked_delivered(
    tmp_path: Path, broker_with: StartBroker
) -> None:
    broker = broker_with(acl(tmp_path, "topic read duisgw/#"))  # the broker answers PUBREC 0x87
    async with running(Service(qos2_gateway(tmp_path, broker))) as svc:
        assert svc.mqtt is not None and await svc.mqtt.wait_connected(5)
        mid = await post(svc, duis_body(1))
        rows = await settled(svc, [mid])
        connections = svc.mqtt.connections
    state, attempts, refusals_, last_error = rows[mid]
    assert (state, attempts, refusals_) == ("dead", 2, 2)  # refused twice (max_attempts): kept, re-queueable
    assert "PUBREC 0x87" in last_error and "Not authorized" in last_error
    assert connections == 1


async def test_a_qos2_publication_over_the_broker_message_size_limit_is_dead_lettered_and_the_connection_stays_up(
    tmp_path: Path, broker_with: StartBroker
) -> None:
    broker = broker_with("message_size_limit 1000")  # PUBREC 0x95 Packet too large
    async with running(Service(qos2_gateway(tmp_path, broker))) as svc:
        assert svc.mqtt is not None and await svc.mqtt.wait_connected(5)
        big = await post(svc, duis_body(1, pad=2000))
        small = await post(svc, duis_body(2))
        rows = await settled(svc, [big, small])
        connections = svc.mqtt.connections
    state, _attempts, refusals_, last_error = rows[big]
    assert (state, refusals_) == ("dead", 2)
    assert "PUBREC 0x95" in last_error and "Packet too large" in last_error
    assert rows[small][0] == "delivered"  # the queue moved on
    assert connections == 1


async def test_a_permitted_qos2_publication_is_delivered_exactly_once(tmp_path: Path, broker: Broker) -> None:
    received: list[bytes] = []
    ready = asyncio.Event()

    async def subscribe() -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as sub:
            await sub.subscribe("duisgw/dno/#", qos=2)
            ready.set()
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                received.append(message.payload)

    subscriber = asyncio.create_task(subscribe())
    try:
        await asyncio.wait_for(ready.wait(), 5)
        async with running(Service(qos2_gateway(tmp_path, broker))) as svc:
            assert svc.mqtt is not None and await svc.mqtt.wait_connected(5)
            body = duis_body(1)
            mid = await post(svc, body)
            rows = await settled(svc, [mid])
            await asyncio.sleep(0.5)  # (a second copy would arrive now)
    finally:
        subscriber.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await subscriber
    state, attempts, refusals_, _last_error = rows[mid]
    assert (state, attempts, refusals_) == ("delivered", 1, 0)
    assert received == [body]


async def test_refused_qos2_publications_free_their_in_flight_slots_and_a_permitted_one_still_goes_out(
    tmp_path: Path, broker_with: StartBroker
) -> None:
    # paho keeps at most 20 QoS > 0 publications in flight: a refused exchange must end, or the 21st waits
    broker = broker_with(acl(tmp_path, "topic read duisgw/#", "topic write duisgw/open/#"))
    cfg = MqttConfig(enabled=True, port=broker.port, client_id="duisgw-slots", keepalive=5, reconnect_interval=0.2,
                     publish=True, publish_qos=2, publish_timeout=2.0)  # fmt: skip
    link = MqttLink(cfg)
    await link.start()
    try:
        assert await link.wait_connected(5)
        denied = [await MqttSender(link, TOPIC).send(row(message_id=f"m{i}")) for i in range(25)]
        permitted = await MqttSender(link, "duisgw/open/dno-a").send(row(message_id="ok"))
        connections = link.connections
    finally:
        await link.stop()
    assert all((o.ok, o.refused) == (False, True) and "PUBREC 0x87" in o.detail for o in denied)
    assert permitted.ok
    assert connections == 1


# ------------------------------------------------------------------------------ a scripted broker


async def packets(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    """The MQTT packets a client sends: (first byte of the fixed header, the rest after its length)."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            header = (await reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                byte = (await reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            yield header, await reader.readexactly(length)


class ScriptServer:
    """A TCP server on a free loopback port whose connections ``_serve`` answers (a scripted MQTT broker)."""

    port = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class ScriptedBroker(ScriptServer):
    """Just enough of an MQTT v5 broker for one publishing client: CONNACK, a PUBREC with the next code of
    ``pubrec`` to each QoS 2 PUBLISH, a PUBCOMP with ``pubcomp`` to each PUBREL, PINGRESP. Records the
    packet ids of the PUBRELs it receives."""

    def __init__(self, pubrec: list[int], pubcomp: int = 0x00) -> None:
        self.pubrec = list(pubrec)
        self.pubcomp = pubcomp
        self.pubrels: list[int] = []
        self.publishes: list[int] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async for header, body in packets(reader):
                kind = header & 0xF0
                if kind == 0x10:  # CONNECT
                    writer.write(bytes([0x20, 3, 0, 0, 0]))  # CONNACK: no session, success, no properties
                elif kind == 0x30:  # PUBLISH (QoS 2 here)
                    topic_len = int.from_bytes(body[:2], "big")
                    mid = int.from_bytes(body[2 + topic_len : 4 + topic_len], "big")
                    self.publishes.append(mid)
                    code = self.pubrec.pop(0) if self.pubrec else 0x00
                    writer.write(bytes([0x50, 3]) + mid.to_bytes(2, "big") + bytes([code]))  # PUBREC
                elif kind == 0x60:  # PUBREL
                    mid = int.from_bytes(body[:2], "big")
                    self.pubrels.append(mid)
                    writer.write(bytes([0x70, 3]) + mid.to_bytes(2, "big") + bytes([self.pubcomp]))  # PUBCOMP
                elif kind == 0xC0:  # PINGREQ
                    writer.write(bytes([0xD0, 0]))
                elif kind == 0xE0:  # DISCONNECT
                    break
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def publishing_to(script: ScriptedBroker) -> AsyncIterator[MqttLink]:
    await script.start()
    cfg = MqttConfig(enabled=True, port=script.port, client_id="duisgw-scripted", keepalive=5,
                     reconnect_interval=0.2, publish=True, publish_qos=2, publish_timeout=2.0)  # fmt: skip
    link = MqttLink(cfg)
    await link.start()
    try:
        assert await link.wait_connected(5)
        yield link
    finally:
        await link.stop()
        await script.stop()


@pytest.mark.parametrize(
    ("code", "refused"),
    [(0x87, True), (0x90, True), (0x99, True), (0x80, True), (0x83, True), (0x97, False), (0x91, False)],
)
async def test_a_pubrec_failure_code_ends_the_exchange_without_a_pubrel_and_maps_as_a_puback_code_does(
    code: int, refused: bool
) -> None:
    script = ScriptedBroker(pubrec=[code, 0x00])
    async with publishing_to(script) as link:
        failed = await MqttSender(link, TOPIC).send(row(message_id="m1"))
        then = await MqttSender(link, TOPIC).send(row(message_id="m2"))  # the next one: a success
        connections = link.connections
    assert (failed.ok, failed.refused) == (False, refused)
    assert f"PUBREC 0x{code:02X}" in failed.detail
    _refused, second = script.publishes
    assert script.pubrels == [second]  # no PUBREL for the refused exchange (MQTT 5.0 §4.3.3)
    assert then.ok
    assert connections == 1


@pytest.mark.parametrize("code", [0x00, 0x10])  # success, no matching subscribers
async def test_a_pubrec_success_code_is_released_and_completes_as_a_delivery(code: int) -> None:
    script = ScriptedBroker(pubrec=[code])
    async with publishing_to(script) as link:
        outcome = await MqttSender(link, TOPIC).send(row())
    assert outcome.ok
    assert script.pubrels == script.publishes


async def test_a_pubcomp_failure_after_a_successful_pubrec_is_still_a_delivery() -> None:
    # the broker took ownership at its PUBREC 0x00 (MQTT 5.0 §4.3.3); a PUBCOMP 0x92 (packet identifier not
    # found) only says it had already forgotten the id: publishing again would duplicate the message
    script = ScriptedBroker(pubrec=[0x00], pubcomp=0x92)
    async with publishing_to(script) as link:
        outcome = await MqttSender(link, TOPIC).send(row())
    assert outcome.ok
    assert len(script.publishes) == 1


@pytest.mark.parametrize(("code", "refused"), [(0x87, True), (0x95, True), (0x97, False), (0x91, False)])
def test_a_pubrec_failure_code_is_classified_as_the_same_puback_code_and_named_pubrec(
    code: int, refused: bool
) -> None:
    refusal = puback_refusal(ReasonCode(PacketTypes.PUBREC, identifier=code))
    assert refusal is not None and refusal.refused is refused
    assert str(refusal).startswith(f"PUBREC 0x{code:02X}")


def test_a_paho_without_the_expected_pubrec_handling_is_left_as_it_is_with_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt, "_pubrec_warned", False)

    class OtherPaho:  # (no _handle_pubrec, no message tables)
        pass

    client = OtherPaho()
    assert not mqtt._end_refused_pubrec_exchanges(client)  # type: ignore[arg-type]
    assert vars(client) == {}  # nothing patched
    assert "PUBREC handling is not as expected" in caplog.text
