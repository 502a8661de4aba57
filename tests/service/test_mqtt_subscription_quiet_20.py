"""A subscription the broker grants and then filters at delivery (mosquitto 2.0's ``acl_file`` grants every SUBSCRIBE
and drops, at delivery, what the client may not read) looks like a quiet topic: no SUBACK failure, no error, nothing
received. So each observation subscription has ``duisgw_mqtt_subscription_last_received_seconds{subscription}``: the
time of the last observation on a topic it matches, or of its first grant since start while none came (0 while
never granted), and an operator alerts on ``time()`` minus it (docs/OPERATIONS.md). Against a real mosquitto."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from servicekit import Broker
from test_mqtt_subscription_refused_19 import Processor, StartBroker, publish, until, value

from gateway.service.config import MqttConfig
from gateway.service.metrics import Metrics
from gateway.service.mqtt import MqttLink
from gateway.service.outbox import RejectStore

T0 = datetime(2026, 11, 25, 0, 0, 0, tzinfo=UTC)
LAST = "duisgw_mqtt_subscription_last_received_seconds"
SILENT, GRANTED, SHARED = "dsp/silent/#", "dsp/granted/#", "$share/duisgw/dsp/shared/#"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def acl_broker(broker_with: StartBroker, tmp_path: Path) -> Broker:
    """Anonymous clients may publish to all three topic trees but read only two: the broker grants a subscription to
    ``dsp/silent/#`` and never delivers anything published there."""
    acl = tmp_path / "mosquitto" / "acl"
    acl.parent.mkdir(exist_ok=True)
    acl.write_text("topic readwrite dsp/granted/#\ntopic readwrite dsp/shared/#\ntopic write dsp/silent/#\n")
    return broker_with(f"acl_file {acl}")


def make_link(broker: Broker, rejects: RejectStore, clock: Clock, metrics: Metrics) -> tuple[MqttLink, Processor]:
    cfg = MqttConfig(
        enabled=True, port=broker.port, client_id="duisgw-quiet", keepalive=5, reconnect_interval=0.1,
        observe_topics=(SILENT, GRANTED, SHARED),
    )  # fmt: skip
    proc = Processor()
    return MqttLink(cfg, processor=proc, rejects=rejects, metrics=metrics, max_bytes=65536, now=clock), proc


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[MqttLink]:
    await link.start()
    try:
        yield link
    finally:
        await link.stop()


def last(metrics: Metrics, topic: str) -> float:
    return value(metrics, LAST, {"subscription": topic})


async def test_a_subscription_the_broker_grants_but_filters_keeps_the_time_of_its_grant_while_the_others_advance(
    broker_with: StartBroker, tmp_path: Path, rejects: RejectStore
) -> None:
    broker = acl_broker(broker_with, tmp_path)
    clock, metrics = Clock(), Metrics()
    link, proc = make_link(broker, rejects, clock, metrics)
    # the series exist before the link connects, at 0 (never granted): an alert on them fires for a link that
    # never subscribed at all
    got = {s.labels["subscription"]: s.value for m in metrics.registry.collect() if m.name == LAST for s in m.samples}
    assert got == {SILENT: 0.0, GRANTED: 0.0, SHARED: 0.0}
    async with running(link):
        assert await link.wait_subscribed(5)  # every SUBACK a grant: the broker says nothing of its filtering
        assert value(metrics, "duisgw_mqtt_subscriptions_refused") == 0
        assert {t: last(metrics, t) for t in (SILENT, GRANTED, SHARED)} == dict.fromkeys(
            (SILENT, GRANTED, SHARED), T0.timestamp()
        )
        clock.now = T0 + timedelta(hours=2)
        await publish(broker, "dsp/silent/x", b"<silent/>")  # (the publisher's PUBACK: taken by the broker)
        await publish(broker, "dsp/granted/x", b"<granted/>")
        await publish(broker, "dsp/shared/x", b"<shared/>")
        assert await until(lambda: b"<granted/>" in proc.calls and b"<shared/>" in proc.calls)
        assert b"<silent/>" not in proc.calls
        assert last(metrics, GRANTED) == last(metrics, SHARED) == clock.now.timestamp()
        # the filtered subscription still reads its grant: two hours without anything, which an alert sees
        assert last(metrics, SILENT) == T0.timestamp()
        assert link.last_received == {SILENT: T0.timestamp(), GRANTED: clock.now.timestamp(),
                                      SHARED: clock.now.timestamp()}  # fmt: skip


async def test_a_reconnect_does_not_restart_the_quiet_of_a_subscription(
    broker_with: StartBroker, tmp_path: Path, rejects: RejectStore
) -> None:
    """Only the first grant since start is taken as a start of the quiet: a link that reconnects every hour would
    otherwise never let an alert on a filtered subscription fire."""
    broker = acl_broker(broker_with, tmp_path)
    clock, metrics = Clock(), Metrics()
    link, _proc = make_link(broker, rejects, clock, metrics)
    async with running(link):
        assert await link.wait_subscribed(5)
        connections = link.connections
        clock.now = T0 + timedelta(hours=1)
        broker.stop()
        broker.start()
        assert await until(lambda: link.connections > connections and link.subscribed, timeout=15)
        assert last(metrics, SILENT) == T0.timestamp()
