"""A graceful stop of the MQTT link delivers the acknowledgements it gave before it leaves the broker.

The link acknowledges an observation (a PUBACK) only once it is recorded. paho closes its socket as soon as the
DISCONNECT is written; a broker that has not read the PUBACKs before them yet (a loaded host: mosquitto reads
late) then gets the connection reset — Linux resets it when the gateway closes with bytes of the broker unread,
or when the broker sends to the closed socket — and mosquitto drops what it had not read: the PUBACKs of
observations already recorded. It sends them all again to the next connection of the session (seen with
``pytest -n 2``: observations 84..95 again after a restart, 95 alone being under way). The tests make the broker
read late deterministically: mosquitto is stopped (SIGSTOP) while the link records and acknowledges, and goes on
(SIGCONT) while the link stops. The link must keep its connection open until the broker has read everything (it
closes on the DISCONNECT), and never wait for that longer than its bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import aiomqtt
import pytest
import test_mqtt_broker_refusals as refusals
import test_mqtt_reconnect_mid_drain as middrain
from servicekit import Broker

from gateway.service.api import AcceptResult, Lane
from gateway.service.mqtt import MqttLink

StartBroker = refusals.StartBroker

#: observations recorded and acknowledged while the broker reads nothing, before the store stops
READ_LATE = 12
#: the observation (1-based) under way when the link is stopped: the store holds it
UNDER_WAY = middrain.STOP_AT
PUBLISH_TIMEOUT = 2.0
#: what stop() may take at most (its documented bound), with some slack for a loaded host
STOP_BOUND = 2 * PUBLISH_TIMEOUT + 2.0 + 1.0


@contextmanager
def frozen(broker: Broker) -> Iterator[None]:
    """The broker process stopped (it reads and sends nothing) inside the block."""
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)


class LateReadingBroker(middrain.Store):
    """The store of the drain tests; at its ``freeze_at``-th observation it stops the broker (SIGSTOP) before
    recording it: from there on, the PUBACKs the link sends wait unread on the broker's side."""

    def __init__(self, stop_at: int, freeze_at: int, broker: Broker) -> None:
        super().__init__(stop_at)
        self.freeze_at = freeze_at
        self.broker = broker
        self.frozen = False

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        if len(self.calls) + 1 == self.freeze_at and self.broker.proc is not None:
            os.kill(self.broker.proc.pid, signal.SIGSTOP)
            self.frozen = True
        return await super().accept(lane, user, body, received_at)

    def thaw(self) -> None:
        if self.frozen and self.broker.proc is not None:
            os.kill(self.broker.proc.pid, signal.SIGCONT)
            self.frozen = False


async def test_a_stop_while_the_broker_reads_late_delivers_the_pubacks_given_and_only_the_observation_under_way_comes_again(
    broker_with: StartBroker,
) -> None:
    broker = broker_with(*middrain.UNLIMITED_BROKER)
    cfg = middrain.config(broker, publish_timeout=PUBLISH_TIMEOUT)
    sent = middrain.bodies(middrain.BACKLOG)
    await middrain.backlog_for_the_gateway(broker, cfg, sent)
    store = LateReadingBroker(UNDER_WAY, UNDER_WAY - READ_LATE, broker)
    link = MqttLink(cfg, processor=store, max_bytes=65536)
    await link.start()
    try:
        await asyncio.wait_for(store.stopped.wait(), 10)
        # observations UNDER_WAY - READ_LATE .. UNDER_WAY - 1 are recorded and acknowledged (client.ack called),
        # their PUBACKs unread by the broker; the next one is under way (the store holds it)
        assert store.frozen
        assert len(store.calls) == UNDER_WAY
        started = time.monotonic()
        stopping = asyncio.create_task(link.stop())
        await asyncio.sleep(0.3)  # the broker reads late ...
        store.thaw()  # ... but it does read
        await stopping
        took = time.monotonic() - started
    finally:
        store.thaw()
        await link.stop()
    assert took < STOP_BOUND
    store.go.set()  # (the observation under way was abandoned: not acknowledged)
    link = MqttLink(cfg, processor=store, max_bytes=65536)  # a restart: the same client id and session
    await link.start()
    try:
        done = await middrain.until(lambda: len(store.calls) >= middrain.BACKLOG + 1, 15)
        assert done, f"{len(set(store.calls))} of {middrain.BACKLOG} recorded"
        await asyncio.sleep(0.3)  # (a duplicate would show now)
    finally:
        await link.stop()
    again = sorted(body.decode() for body, n in Counter(store.calls).items() if n > 1)
    # before the fix: <m00084/> .. <m00095/>, every PUBACK the broker had not read when the link closed
    assert again == [sent[UNDER_WAY - 1].decode()], f"sent again although acknowledged: {again}"
    assert store.calls[UNDER_WAY:] == sent[UNDER_WAY - 1 :]  # the rest in order, once


async def recorded(store: middrain.Store, broker: Broker, name: str, n: int) -> list[bytes]:
    """``n`` observations published and recorded (the link acknowledges each once recorded); their bodies."""
    bodies = [f"<{name}{i}/>".encode() for i in range(n)]
    before = len(store.calls)
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
        for body in bodies:
            await pub.publish(middrain.TOPIC, body, qos=1)
    assert await middrain.until(lambda: len(store.calls) >= before + n, 5)
    return bodies


@pytest.mark.parametrize("writes", ["written", "its send buffer full"])
async def test_a_stop_while_the_broker_reads_nothing_returns_within_its_bound_and_the_acknowledged_stay_acknowledged(
    broker_with: StartBroker, writes: str
) -> None:
    broker = broker_with()
    cfg = middrain.config(broker, publish_timeout=PUBLISH_TIMEOUT, publish=True, publish_qos=1)
    store = middrain.Store(0)
    link = MqttLink(cfg, processor=store, max_bytes=65536)
    await link.start()
    publications: list[asyncio.Task[None]] = []
    try:
        assert await link.wait_connected(5)
        subscribed = lambda: link._client is not None and link._client._pending_subscribes == {}  # noqa: E731
        assert await middrain.until(subscribed, 5)
        first = await recorded(store, broker, "a", 5)
        # their PUBACKs read by the broker: it answers a publication of the link sent after them
        await link.publish("dno/a", b"<after/>", [])
        with frozen(broker):
            if writes != "written":  # publications the broker never reads fill the socket's buffers
                big = b"x" * (4 << 20)
                publications = [asyncio.create_task(link.publish("dno/a", big, [])) for _ in range(4)]
                await asyncio.sleep(0.5)
                client = link._client
                # (the DISCONNECT cannot be written)
                assert client is not None and client._client.want_write()
            started = time.monotonic()
            await link.stop()  # never raises
            took = time.monotonic() - started
            assert took < STOP_BOUND, f"stop() took {took:.1f} s with the broker reading nothing"
            assert link._client is None and not link.connected
    finally:
        for task in publications:
            task.cancel()
        await asyncio.gather(*publications, return_exceptions=True)
        await link.stop()
    # the session goes on: nothing recorded comes again
    link = MqttLink(cfg, processor=store, max_bytes=65536)
    await link.start()
    try:
        assert await link.wait_connected(5)
        second = await recorded(store, broker, "b", 2)
        await asyncio.sleep(0.3)
    finally:
        await link.stop()
    assert store.calls == [*first, *second]
