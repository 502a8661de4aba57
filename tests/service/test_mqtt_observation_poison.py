"""An MQTT observation that kills a classify worker twice (``ClassifyWorkerDied``) is a poison message: on
the MQTT lane it is rejected — kept in the rejects table under ``classify_worker_died``, counted, and
acknowledged — so the observations behind it on the topic are processed, and the broker never sends it
again. A store that is down (or classify workers that cannot take work now) still leaves the observation
unacknowledged and retried until it is recorded. Against a real mosquitto."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import aiomqtt
import pytest
from servicekit import Broker

from gateway.service.api import AcceptResult, Lane, StoreUnavailable
from gateway.service.config import MqttConfig
from gateway.service.metrics import Metrics
from gateway.service.mqtt import MqttLink
from gateway.service.outbox import RejectStore
from gateway.service.workers import ClassifyUnavailable, ClassifyWorkerDied

POISON = b"<POISON/>"


class Processor:
    """Answers as GatewayProcessor does: ``failures`` for a body while it has some left, else accepted."""

    def __init__(self, failures: dict[bytes, list[Exception]]) -> None:
        self.failures = failures
        self.calls: list[bytes] = []

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        assert lane is Lane.OBSERVE
        self.calls.append(body)
        if self.failures.get(body):
            raise self.failures[body].pop(0)
        return AcceptResult(
            True, 204, reason="observed", message_id=body.decode(), decision="observe", kind="k"
        )

    async def tick(self, now: datetime) -> None:
        return None


def link_config(broker: Broker) -> MqttConfig:
    # a persistent session (the default): what is not acknowledged comes again on the next connection
    return MqttConfig(enabled=True, port=broker.port, client_id="duisgw-poison", keepalive=5, reconnect_interval=0.1,
                      observe_topics=("dsp/observe/#",))  # fmt: skip


async def publish(broker: Broker, *bodies: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
        for body in bodies:
            await pub.publish("dsp/observe/x", body, qos=1)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_an_observation_that_kills_a_classify_worker_twice_is_kept_as_a_reject_acknowledged_and_the_lane_moves_on(
    broker: Broker, rejects: RejectStore
) -> None:
    proc = Processor({POISON: [ClassifyWorkerDied("a classify worker died twice on this message")] * 10})
    metrics = Metrics()
    link = MqttLink(link_config(broker), processor=proc, rejects=rejects, metrics=metrics, max_bytes=65536)
    await link.start()
    try:
        assert await link.wait_subscribed(5)  # (the SUBACK in: published observations reach the link)
        await publish(broker, POISON, b"<good/>")
        processed = await until(lambda: b"<good/>" in proc.calls)
    finally:
        await link.stop()
    assert processed, f"the observation behind the poison one was never processed: {proc.calls[:5]}"
    assert proc.calls == [POISON, b"<good/>"]  # classified once: no worker killed again by a retry
    [kept] = await rejects.all()
    assert (kept["lane"], kept["reason"], kept["body"]) == ("observe", "classify_worker_died", POISON)
    assert "classify worker died" in kept["detail"]
    counted = metrics.registry.get_sample_value(
        "duisgw_rejects_total", {"lane": "observe", "reason": "classify_worker_died"}
    )
    assert counted == 1

    # acknowledged: the broker does not send it again to the same (persistent) session
    again = Processor({})
    link = MqttLink(link_config(broker), processor=again, rejects=rejects, max_bytes=65536)
    await link.start()
    try:
        assert await link.wait_subscribed(5)  # (the SUBACK in: published observations reach the link)
        await publish(broker, b"<later/>")
        assert await until(lambda: b"<later/>" in again.calls)
    finally:
        await link.stop()
    assert again.calls == [b"<later/>"]


@pytest.mark.parametrize(
    "unavailable",
    [StoreUnavailable("database is locked"), ClassifyUnavailable("classify workers restarting")],
    ids=["store-down", "classify-workers-unavailable"],
)
async def test_an_observation_met_by_an_unavailable_store_is_retried_unacknowledged_until_recorded(
    broker: Broker, rejects: RejectStore, unavailable: StoreUnavailable
) -> None:
    proc = Processor({b"<first/>": [unavailable, unavailable]})
    link = MqttLink(link_config(broker), processor=proc, rejects=rejects, max_bytes=65536)
    await link.start()
    try:
        assert await link.wait_subscribed(5)  # (the SUBACK in: published observations reach the link)
        await publish(broker, b"<first/>", b"<second/>")
        assert await until(lambda: b"<second/>" in proc.calls)
    finally:
        await link.stop()
    assert proc.calls == [b"<first/>"] * 3 + [b"<second/>"]  # in order: the second waited for the first
    assert await rejects.all() == []
