"""MQTT against a real mosquitto: publication with user properties, observation, broker restart."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import aiohttp
import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from servicekit import Broker, counters, duis_body, running, service_config

from gateway.service.app import Service
from gateway.service.config import DestinationConfig, MqttConfig, ServiceConfig
from gateway.service.mqtt import PUBLISH_OVERHEAD_BOUND, maximum_packet_size

XML = {"Content-Type": "application/xml"}


def mqtt_config(tmp_path: Path, broker: Broker, *, observe: tuple[str, ...] = ()) -> ServiceConfig:
    cfg = service_config(tmp_path)
    mqtt = MqttConfig(enabled=True, port=broker.port, client_id="duisgw-test", keepalive=5, reconnect_interval=0.2,
                      observe_topics=observe, publish=True, publish_timeout=2.0)
    dest = DestinationConfig(name="dno-a", user="90-B3-D5-1F-30-02-00-00")  # MQTT only
    return replace(cfg, mqtt=mqtt, destinations=(dest,))


async def first_message(broker: Broker, topic: str, client_id: str, ready: asyncio.Event) -> aiomqtt.Message:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                              clean_start=False, properties=props) as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        async for message in client.messages:
            return message
    raise AssertionError("no message")


async def test_forwarded_message_is_published_with_decision_user_properties(tmp_path: Path, broker: Broker) -> None:
    ready = asyncio.Event()
    sub = asyncio.create_task(first_message(broker, "duisgw/dno/#", "sub-1", ready))
    await asyncio.wait_for(ready.wait(), 5)
    body = duis_body(11)
    async with running(Service(mqtt_config(tmp_path, broker))) as svc, aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=body, headers=XML) as resp:
            assert resp.status == 204
            mid = resp.headers["X-DUISGW-Message-Id"]
        msg = await asyncio.wait_for(sub, 10)
    assert str(msg.topic) == "duisgw/dno/dno-a"
    assert msg.payload == body
    assert msg.qos == 1
    assert msg.properties is not None
    props = dict(getattr(msg.properties, "UserProperty", []))
    assert props["message_id"] == mid
    assert props["decision"] == "forward"
    assert props["destination"] == "dno-a"


async def test_observation_topic_messages_reach_the_observe_lane_and_are_not_forwarded(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = mqtt_config(tmp_path, broker, observe=("dsp/observe/#",))
    async with running(Service(cfg)) as svc:
        assert svc.mqtt is not None and await svc.mqtt.wait_subscribed(5)  # (the SUBACK in: published observations reach the link)
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
            await pub.publish("dsp/observe/11.3", duis_body(21), qos=1)
            await pub.publish("dsp/observe/8.2", b"<not well formed", qos=1)
        for _ in range(100):
            rejects = await svc.rejects.all()
            n = await svc.store.read(lambda c: c.execute("SELECT COUNT(*) FROM passthrough_messages").fetchone()[0])
            if n and rejects:
                break
            await asyncio.sleep(0.05)
        assert await svc.outbox.stats() == []
    with sqlite3.connect(tmp_path / "gw.sqlite3") as db:
        rows = db.execute("SELECT lane, body FROM passthrough_messages").fetchall()
        bad = db.execute("SELECT lane, reason, body FROM rejects").fetchall()
    assert rows == [("observe", duis_body(21))]
    assert bad == [("observe", "malformed_xml", b"<not well formed")]


async def test_publication_resumes_after_a_broker_restart(tmp_path: Path, broker: Broker) -> None:
    # a persistent subscriber session, so the broker queues what is published while it is away
    ready = asyncio.Event()
    sub = asyncio.create_task(first_message(broker, "duisgw/dno/#", "sub-restart", ready))
    await asyncio.wait_for(ready.wait(), 5)
    sub.cancel()
    await asyncio.gather(sub, return_exceptions=True)

    async with running(Service(mqtt_config(tmp_path, broker))) as svc, aiohttp.ClientSession() as http:
        assert svc.mqtt is not None and await svc.mqtt.wait_connected(5)
        broker.stop()
        async with http.post(f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=duis_body(31), headers=XML) as r:
            assert r.status == 204  # accepted durably while the broker is down
        await asyncio.sleep(0.5)
        [stats] = await svc.outbox.stats()
        assert stats.depth == 1
        broker.start()
        ready2 = asyncio.Event()
        msg = await asyncio.wait_for(first_message(broker, "duisgw/dno/#", "sub-restart", ready2), 15)
        assert svc.mqtt.connections >= 2
    assert msg.payload == duis_body(31)


async def test_an_observation_payload_over_the_body_cap_is_refused_unprocessed_and_not_kept(
    tmp_path: Path, broker: Broker
) -> None:
    base = mqtt_config(tmp_path, broker, observe=("dsp/observe/#",))
    cap = 4096
    cfg = replace(base, server=replace(base.server, max_body_bytes=cap))
    big = duis_body(22).replace(b"</", b"<!--" + b"x" * (cap + 1) + b"--></", 1)  # well-formed, over the cap
    assert len(big) > cap
    async with running(Service(cfg)) as svc:
        assert svc.mqtt is not None and await svc.mqtt.wait_subscribed(5)  # (the SUBACK in: published observations reach the link)
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
            await pub.publish("dsp/observe/11.3", big, qos=1)
            await pub.publish("dsp/observe/11.3", duis_body(23), qos=1)  # the next one is processed as before
        for _ in range(100):
            n = await svc.store.read(
                lambda c: c.execute("SELECT COUNT(*) FROM passthrough_messages").fetchone()[0]
            )
            if n:
                break
            await asyncio.sleep(0.05)
    with sqlite3.connect(tmp_path / "gw.sqlite3") as db:
        rows = db.execute("SELECT lane, body FROM passthrough_messages").fetchall()
        bad = db.execute("SELECT lane, reason, detail, body FROM rejects").fetchall()
    assert rows == [("observe", duis_body(23))]
    assert [(lane, reason, body) for lane, reason, _detail, body in bad] == [
        ("observe", "oversize_body", b"")
    ]
    assert f"{len(big)} bytes" in bad[0][2] and f"cap is {cap}" in bad[0][2]


def test_the_announced_maximum_packet_size_is_the_cap_plus_the_publish_overhead_bound() -> None:
    assert PUBLISH_OVERHEAD_BOUND == 5 + 2 + 65_535 + 2 + 4 + 65_536
    assert maximum_packet_size(1 << 20) == (1 << 20) + PUBLISH_OVERHEAD_BOUND
    assert maximum_packet_size(1 << 40) == 268_435_460  # the largest packet MQTT can express


async def test_the_broker_never_sends_an_observation_too_large_for_the_cap_and_one_at_the_cap_is_processed(
    tmp_path: Path,
) -> None:
    """The link announces a Maximum Packet Size (MQTT v5 CONNECT property) of the cap plus the PUBLISH
    overhead bound: mosquitto drops a larger message for the gateway (and logs it) instead of sending
    it, so it is never received (no rejects row, not counted as received); a payload at the cap, with
    its topic, still fits and is processed."""
    log_file = tmp_path / "mosquitto.log"
    broker = Broker.in_folder(tmp_path, persistence=False, log_file=log_file)
    try:
        base = mqtt_config(tmp_path, broker, observe=("dsp/observe/#",))
        cap = 4096
        cfg = replace(base, server=replace(base.server, max_body_bytes=cap))
        at_cap = duis_body(24, pad=cap - len(duis_body(24)))
        assert len(at_cap) == cap
        huge = duis_body(25, pad=maximum_packet_size(cap))  # the payload alone is over the announced size
        async with running(Service(cfg)) as svc:
            assert svc.mqtt is not None and await svc.mqtt.wait_subscribed(5)  # (the SUBACK in: published observations reach the link)
            async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
                await pub.publish("dsp/observe/11.3", huge, qos=1)  # accepted by the broker (PUBACK) ...
                await pub.publish("dsp/observe/11.3", at_cap, qos=1)
                await pub.publish("dsp/observe/11.3", duis_body(26), qos=1)
            for _ in range(100):
                n = await svc.store.read(
                    lambda c: c.execute("SELECT COUNT(*) FROM passthrough_messages").fetchone()[0]
                )
                if n >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # anything else the broker sent would be in by now
            received = counters(svc, "duisgw_mqtt_received")
        with sqlite3.connect(tmp_path / "gw.sqlite3") as db:
            rows = db.execute("SELECT lane, body FROM passthrough_messages ORDER BY rowid").fetchall()
            bad = db.execute("SELECT lane, reason FROM rejects").fetchall()
        assert rows == [("observe", at_cap), ("observe", duis_body(26))]
        assert bad == []  # ... but never sent to the gateway: nothing to refuse here
        assert received == {(): 2.0}
    finally:
        broker.stop()
    dropped = [line for line in log_file.read_text().splitlines() if "too large" in line]
    assert len(dropped) == 1 and "duisgw-test" in dropped[0], log_file.read_text()
