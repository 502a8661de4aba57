"""An observation topic the broker refuses to subscribe the link to (a SUBACK failure code: its ACL) was taken as
subscribed, silently: nothing published there reached the observation lane, no log line, no metric. The refusal
is now logged at ERROR naming the topic, counted (``duisgw_mqtt_link_failures_total{kind="subscription_refused"}``,
``duisgw_mqtt_subscriptions_refused``), the link is not :attr:`MqttLink.subscribed`, the granted topics and the
publications keep working on the connection, and the refused topic is subscribed again with backoff, so an ACL put
right at the broker needs no restart of the gateway. Against a real mosquitto with its dynamic-security plugin (which refuses such a SUBSCRIBE)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from servicekit import Broker

from gateway.service.api import AcceptResult, Lane
from gateway.service.config import MqttConfig
from gateway.service.metrics import Metrics
from gateway.service.mqtt import MqttLink, suback_outcome
from gateway.service.outbox import RejectStore


class Processor:
    """Records the observations it is given (answers as the gateway does for one it keeps)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        assert lane is Lane.OBSERVE
        self.calls.append(body)
        return AcceptResult(
            True, 204, reason="observed", message_id=body.decode(), decision="observe", kind="k"
        )

    async def tick(self, now: datetime) -> None:
        return None


StartBroker = Callable[..., Broker]  # (the ``broker_with`` fixture, tests/service/conftest.py)

DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def dynsec_state(*, subscribe_by_default: bool) -> dict[str, Any]:
    """mosquitto's dynamic-security plugin state: anonymous clients may subscribe to dsp/granted/# (and to every
    topic when ``subscribe_by_default``), publish anywhere, and send the plugin its commands. The plugin checks a
    SUBSCRIBE against it and answers a refused one 0x87 Not authorized (the ``acl_file`` of mosquitto 2.0 grants
    every subscription and filters at delivery instead)."""
    return {
        "defaultACLAccess": {
            "publishClientSend": True, "publishClientReceive": True, "subscribe": subscribe_by_default,
            "unsubscribe": True,
        },
        "clients": [],
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "observer"}], "clients": []}],
        "roles": [{"rolename": "observer", "acls": [
            {"acltype": "subscribePattern", "topic": "dsp/granted/#", "priority": 0, "allow": True},
            {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#", "priority": 0, "allow": True},
        ]}],
        "anonymousGroup": "anonymous",
    }  # fmt: skip


def dynsec_broker(broker_with: StartBroker, tmp_path: Path, *, subscribe_by_default: bool = False) -> Broker:
    """A mosquitto (``broker_with``) whose dynamic-security plugin holds :func:`dynsec_state` (skips without it)."""
    if not Path(DYNSEC).exists():
        pytest.skip(f"{DYNSEC} is not installed (Debian package mosquitto): these tests need the plugin")
    state = tmp_path / "dynamic-security.json"
    state.write_text(json.dumps(dynsec_state(subscribe_by_default=subscribe_by_default)))
    return broker_with(f"plugin {DYNSEC}", f"plugin_opt_config_file {state}")


async def allow_every_subscription(broker: Broker) -> None:
    """The broker's administrator lets every client subscribe anywhere (the plugin's ``setDefaultACLAccess``:
    the clients connected keep their connections)."""
    command = {
        "commands": [{"command": "setDefaultACLAccess", "acls": [{"acltype": "subscribe", "allow": True}]}]
    }
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as admin:
        await admin.publish("$CONTROL/dynamic-security/v1", json.dumps(command), qos=1)


def link_config(broker: Broker) -> MqttConfig:
    return MqttConfig(
        enabled=True, port=broker.port, client_id="duisgw-suback", keepalive=5, reconnect_interval=0.1,
        observe_topics=("dsp/refused/#", "dsp/granted/#"),
    )  # fmt: skip


async def publish(broker: Broker, topic: str, body: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
        await pub.publish(topic, body, qos=1)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


def value(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    got = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if got is None else got


@contextlib.asynccontextmanager
async def started_link(
    broker: Broker, rejects: RejectStore
) -> AsyncIterator[tuple[MqttLink, Processor, Metrics]]:
    proc, metrics = Processor(), Metrics()
    link = MqttLink(link_config(broker), processor=proc, rejects=rejects, metrics=metrics, max_bytes=65536)
    await link.start()
    try:
        yield link, proc, metrics
    finally:
        await link.stop()


async def test_an_observation_topic_the_broker_refuses_is_logged_counted_and_not_subscribed_while_the_others_work(
    broker_with: StartBroker, tmp_path: Path, rejects: RejectStore, caplog: pytest.LogCaptureFixture
) -> None:
    broker = dynsec_broker(broker_with, tmp_path)
    caplog.set_level(logging.DEBUG, logger="duisgw.service.mqtt")
    async with started_link(broker, rejects) as (link, proc, metrics):
        assert await link.wait_connected(5)
        assert await until(lambda: value(metrics, "duisgw_mqtt_subscriptions_refused") == 1)
        assert not await link.wait_subscribed(1.0)  # one topic refused: not subscribed
        assert link.connected  # the connection stays up for the granted topic and the publications
        await publish(broker, "dsp/granted/x", b"<granted/>")
        await publish(broker, "dsp/refused/x", b"<refused/>")
        assert await until(lambda: b"<granted/>" in proc.calls)
        await asyncio.sleep(0.3)
        assert b"<refused/>" not in proc.calls  # the broker routes nothing of the refused filter to the link
    assert value(metrics, "duisgw_mqtt_link_failures_total", {"kind": "subscription_refused"}) >= 1
    errors = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and "refused the subscription" in r.getMessage()
    ]
    assert len(errors) == 1 and "dsp/refused/#" in errors[0].getMessage() and "0x87" in errors[0].getMessage()
    assert value(metrics, "duisgw_mqtt_subscriptions_refused") == 0  # (the connection is gone)


async def test_a_refused_subscription_is_retried_and_taken_once_the_broker_acl_allows_it_without_a_restart(
    broker_with: StartBroker, tmp_path: Path, rejects: RejectStore
) -> None:
    broker = dynsec_broker(broker_with, tmp_path)
    async with started_link(broker, rejects) as (link, proc, metrics):
        assert await link.wait_connected(5)
        assert await until(lambda: value(metrics, "duisgw_mqtt_subscriptions_refused") == 1)
        connections = link.connections
        await allow_every_subscription(broker)
        assert await link.wait_subscribed(10)  # the retry (1 s, then 2 s ...) found the topic granted
        assert value(metrics, "duisgw_mqtt_subscriptions_refused") == 0
        assert link.connections == connections  # on the same connection
        await publish(broker, "dsp/refused/x", b"<now-granted/>")
        assert await until(lambda: b"<now-granted/>" in proc.calls)
    assert not link.subscribed  # (stopped)


async def test_a_link_whose_topics_are_all_granted_is_subscribed_and_observes_what_is_published_right_after(
    broker_with: StartBroker, tmp_path: Path, rejects: RejectStore
) -> None:
    broker = dynsec_broker(broker_with, tmp_path, subscribe_by_default=True)
    async with started_link(broker, rejects) as (link, proc, metrics):
        assert await link.wait_subscribed(5)
        await publish(broker, "dsp/refused/y", b"<first/>")  # no settling sleep: the SUBACKs are in
        assert await until(lambda: b"<first/>" in proc.calls)
    assert value(metrics, "duisgw_mqtt_link_failures_total", {"kind": "subscription_refused"}) == 0


def reason(code: int) -> ReasonCode:
    return ReasonCode(PacketTypes.SUBACK, identifier=code)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ([reason(0x00)], (None, 0)),
        ([reason(0x01)], (None, 1)),
        ([reason(0x87)], ("Not authorized (0x87)", None)),
        ([reason(0x8F)], ("Topic filter invalid (0x8F)", None)),
        ([reason(0x97)], ("Quota exceeded (0x97)", None)),
        ((1,), (None, 1)),  # MQTT 3.1.1: the granted QoS
        ((0x80,), ("Failure (0x80)", None)),  # MQTT 3.1.1: the one failure code
        ([], ("0 reason codes for one topic", None)),
    ],
    ids=["qos0", "qos1", "not-authorized", "filter-invalid", "quota", "v3-qos1", "v3-failure", "none"],
)
def test_a_suback_code_of_0x80_or_more_is_a_refusal_named_by_its_reason(
    answer: list[ReasonCode] | tuple[int, ...], expected: tuple[str | None, int | None]
) -> None:
    assert suback_outcome(answer) == expected
