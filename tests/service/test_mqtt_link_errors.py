"""The MQTT link against a real mosquitto when something other than the connection fails: it logs the
error with its type, backs off and retries (it never ends on its own), and stopping it never raises
into the service's shutdown; an MQTT sender never raises into a delivery worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
from servicekit import Broker, running, service_config

from gateway.service.app import Service
from gateway.service.config import DestinationConfig, MqttConfig
from gateway.service.metrics import Metrics
from gateway.service.mqtt import UNEXPECTED_BACKOFF_MAX, MqttLink, MqttSender
from gateway.service.outbox import OutboxRow

BAD_FILTER = ("dsp/observe/#", "bad/#/x")  # the client library refuses the second one (ValueError)


def link_config(broker: Broker, **overrides: object) -> MqttConfig:
    cfg = MqttConfig(enabled=True, port=broker.port, client_id="duisgw-errors", keepalive=5, reconnect_interval=0.05,
                     publish_timeout=2.0)
    return replace(cfg, **overrides)  # type: ignore[arg-type]


async def until(cond: object, timeout: float = 10.0) -> None:
    assert callable(cond)
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def errors_naming(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


async def test_a_subscription_the_client_refuses_is_logged_with_its_type_and_the_link_retries(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="duisgw.service.mqtt")
    metrics = Metrics()
    link = MqttLink(link_config(broker, observe_topics=BAD_FILTER), metrics=metrics)
    await link.start()
    try:
        await until(lambda: link.connections >= 3)  # reconnected after the failure, again and again
    finally:
        await link.stop()  # does not raise
    assert link.errors >= 2
    exported = metrics.registry.get_sample_value("duisgw_mqtt_link_failures_total", {"kind": "unexpected"})
    assert exported is not None and exported >= 2
    [first, *_] = errors_naming(caplog, "MQTT link failed (ValueError: Invalid subscription filter.)")
    assert first.exc_info is not None  # the traceback, once per streak of failures
    assert not link.connected


async def test_an_unexpected_error_backs_off_doubling_up_to_a_cap() -> None:
    link = MqttLink(MqttConfig(reconnect_interval=2.0))
    delays = []
    for n in range(8):
        link.unexpected_in_a_row = n
        delays.append(link._retry_delay())
    assert delays == [2.0, 2.0, 4.0, 8.0, 16.0, 32.0, UNEXPECTED_BACKOFF_MAX, UNEXPECTED_BACKOFF_MAX]
    slow = MqttLink(MqttConfig(reconnect_interval=300.0))
    slow.unexpected_in_a_row = 5
    assert slow._retry_delay() == 300.0  # never shorter than the configured interval
    link.unexpected_in_a_row = 10_000
    assert link._retry_delay() == UNEXPECTED_BACKOFF_MAX


async def test_the_link_recovers_after_a_transient_unexpected_error_and_publishes(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    link = MqttLink(link_config(broker))
    make = link._make_client
    failures = [RuntimeError("transient fault")]

    def flaky() -> aiomqtt.Client:
        if failures:
            raise failures.pop()
        return make()

    link._make_client = flaky  # type: ignore[method-assign]
    await link.start()
    try:
        assert await link.wait_connected(10)
        await link.publish("duisgw/dno/dno-a", b"<x/>", [("message_id", "m1")])  # PUBACKed by the broker
        assert (link.errors, link.unexpected_in_a_row) == (1, 0)
    finally:
        await link.stop()
    assert errors_naming(caplog, "MQTT link failed (RuntimeError: transient fault)")


async def test_stopping_a_link_whose_task_failed_logs_the_error_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = MqttLink(MqttConfig(enabled=True))

    async def broken() -> None:
        raise KeyError("bug in the link")

    link._run = broken  # type: ignore[method-assign]
    await link.start()
    await asyncio.sleep(0.01)
    await link.stop()
    assert errors_naming(caplog, "MQTT link ended with an error (KeyError: 'bug in the link')")
    await link.stop()  # idempotent


async def test_a_service_whose_mqtt_subscription_is_refused_keeps_reconnecting_and_stops_cleanly(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    mqtt = link_config(broker, observe_topics=BAD_FILTER, publish=True)
    cfg = replace(service_config(tmp_path), mqtt=mqtt, destinations=(DestinationConfig(name="dno-a"),))
    async with running(Service(cfg)) as svc:  # leaving it runs Service.stop, which used to re-raise
        assert svc.mqtt is not None
        await until(lambda: svc.mqtt is not None and svc.mqtt.connections >= 2)
    assert errors_naming(caplog, "ValueError")
    assert any(r.getMessage() == "stopped" for r in caplog.records)


class _FailingLink(MqttLink):
    def __init__(self, exc: Exception) -> None:
        super().__init__(MqttConfig(enabled=True))
        self.exc = exc

    async def publish(self, topic: str, payload: bytes, pairs: Sequence[tuple[str, str]]) -> None:
        raise self.exc


def _row() -> OutboxRow:
    return OutboxRow(1, "mqtt:dno-a", "m1", "dno-a", b"<x/>", {}, "pending", 0.0, 0, 0, 0.0, None)


async def test_an_mqtt_sender_turns_a_refused_topic_into_a_refusal_not_an_exception() -> None:
    sender = MqttSender(_FailingLink(ValueError("Publish topic cannot contain wildcards.")), "x/#")
    outcome = await sender.send(_row())
    assert (outcome.ok, outcome.refused) == (False, True)
    assert outcome.detail == "MQTT: ValueError: Publish topic cannot contain wildcards."


async def test_an_mqtt_sender_turns_an_unexpected_error_into_a_logged_retry_not_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender = MqttSender(_FailingLink(RuntimeError("client bug")), "duisgw/dno/dno-a")
    outcome = await sender.send(_row())
    assert (outcome.ok, outcome.refused) == (False, False)
    assert outcome.detail == "MQTT: RuntimeError: client bug"
    assert errors_naming(caplog, "MQTT publication failed (RuntimeError: client bug)")
