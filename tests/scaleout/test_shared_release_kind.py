"""Shared state (``[state] backend = "redis"``): a hold one instance accepted and another releases is
counted in the releasing instance's ``duisgw_messages`` under the DUIS kind the accepting instance's
ingress counted it under (``DCCAlertMessage.AD1``), and its outbox metadata names that kind too — the
route shared in Redis carries the kind beside the destination. A route shared by an older instance
(the destination only) still routes the release, labelled with the engine's event kind. An operator
release on a shared-state instance is counted once, under the DUIS kind, like on a single node."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import redis
from servicekit import DNO_USER, Receiver, counters, pipeline_config, running, timed

from gateway.service.app import queues_for
from gateway.service.config import ServiceConfig, StateConfig
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator
from gateway.store.sqlite import SqliteStore
from gateway.testkit.scenario import Scenario, World

AD1 = "DCCAlertMessage.AD1"


def held_ad1(world: World) -> Scenario:
    """An immediate activation request whose response never comes, then an AD1 of that meter: held
    until the hold limit passes, then forwarded (hold-timeout)."""
    s = Scenario("held-ad1", world)
    f, t = world.factory, s.t
    esme, ch, mpan = world.meter(2)
    s.observe("10:00:00", f.activate_request(esme, 5002), "immediate request, never answered")
    s.inline("10:03:00", f.ad1(ch, mpan, t("10:01:00"), t("10:03"), 102), "forward", "hold-timeout", held=True)
    return s


def instance(tmp_path: Path, name: str, reference: dict[str, Path], receiver: Receiver, url: str) -> ServiceConfig:
    cfg = pipeline_config(tmp_path / name, reference, receiver.url, DNO_USER)
    return replace(cfg, state=StateConfig(backend="redis", redis_url=url, instance=name))


async def released_by_b(tmp_path: Path, redis_url: str, *, old_route: bool) -> tuple[dict[tuple[str, ...], float],
                                                                                     dict[str, str], str]:  # fmt: skip
    """Instance A accepts the scenario and stops with the AD1 held; instance B moves the shared clock past
    the hold limit and releases it. Returns B's inline ``duisgw_messages`` counts (labels after ``lane``),
    the released forward's outbox metadata, and the AD1's id. ``old_route``: the route A shared is
    rewritten as an older instance shares it (no kind)."""
    world = World.generated("shared-release-kind")
    scenario = held_ad1(world)
    reference = world.write_reference(tmp_path / "reference")
    receiver = Receiver()
    await receiver.start()
    try:
        messages = timed(scenario)
        a = make_service(build_gateway(instance(tmp_path, "gw-a", reference, receiver, redis_url)))
        async with running(a), DspSimulator(f"http://127.0.0.1:{a.port}", DNO_USER, retry_for=0) as dsp:
            answers = [await dsp.post(m) for m in messages]
        (held,) = [answer for answer, m in zip(answers, messages, strict=True) if m.lane == "inline"]
        assert (held.status, held.decision) == (202, "hold")
        mid = str(held.message_id)
        if old_route:
            client = redis.Redis.from_url(redis_url)
            try:
                assert client.keys(f"duisgw:route*:{mid}"), "A shared no route"
                for key in client.keys(f"duisgw:route*:{mid}"):
                    client.delete(key)
                client.set(f"duisgw:route:{mid}", b"dno-a")  # what an older instance shares
            finally:
                client.close()
        b_cfg = instance(tmp_path, "gw-b", reference, receiver, redis_url)
        b_gateway = build_gateway(b_cfg)
        b = make_service(b_gateway)
        async with running(b):
            proc = b.processor
            assert isinstance(proc, GatewayProcessor)
            end = max(m.at for m in messages) + b_gateway.engine_config.hold_limit + dt.timedelta(seconds=1)
            released = await proc.advance(end)
            assert [(d.message_id, str(d.reason)) for d in released] == [(mid, "hold-timeout")]
            await receiver.wait_for(1)
            rows = [row for q in queues_for(b_cfg, "dno-a") for row in await b.outbox.rows(q)]
            inline = {labels[1:]: n for labels, n in counters(b, "duisgw_messages").items() if labels[0] == "inline"}
    finally:
        await receiver.stop()
    assert [r.message_id for r in receiver.log] == [mid]  # routed to the DNO A recorded
    (row,) = rows
    return inline, row.metadata, mid


async def test_a_hold_another_instance_accepted_is_counted_and_labelled_under_its_duis_kind(
    tmp_path: Path, redis_url: str
) -> None:
    inline, metadata, _mid = await released_by_b(tmp_path, redis_url, old_route=False)
    assert inline == {(AD1, "release-forward", "hold-timeout"): 1.0}
    assert (metadata["reason"], metadata["kind"]) == ("hold-timeout", AD1)


async def test_a_route_shared_without_its_kind_still_routes_the_release(tmp_path: Path, redis_url: str) -> None:
    inline, metadata, _mid = await released_by_b(tmp_path, redis_url, old_route=True)
    assert inline == {("power-outage", "release-forward", "hold-timeout"): 1.0}  # the label it can know
    assert (metadata["reason"], metadata["kind"]) == ("hold-timeout", "power-outage")


async def test_an_operator_release_on_a_shared_state_instance_is_counted_once_under_its_duis_kind(
    tmp_path: Path, redis_url: str
) -> None:
    """``duisgw audit release`` works on the instance that keeps the message (its own engine.sqlite3):
    that instance takes the release in at its next scan and counts it once, under the DUIS kind."""
    world = World.generated("shared-operator-release")
    s = Scenario("suppressed", world)
    f, t = world.factory, s.t
    esme, ch, mpan = world.meter(1)
    s.observe("08:00:00", f.activate_request(esme, 5001), "11.3 request")
    s.observe("08:00:35", f.activate_response(esme, 5001, t("08:00:35")), "11.3 response: success")
    s.inline("08:06:10", f.ad1(ch, mpan, t("08:03:30"), t("08:06:10"), 101), "suppress", "activation-window")
    reference = world.write_reference(tmp_path / "reference")
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = instance(tmp_path, "gw-a", reference, receiver, redis_url)
        service = make_service(build_gateway(cfg))
        async with running(service):
            proc = service.processor
            assert isinstance(proc, GatewayProcessor)
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                answers = [await dsp.post(m) for m in timed(s)]
            (suppressed,) = [str(a.message_id) for a in answers if a.decision == "suppress"]
            operator = SqliteStore(engine_db_path(cfg), checkpoint_interval=0)
            try:
                operator.release_suppressed(suppressed, "ops", "customer has no supply", dt.datetime.now(dt.UTC))
            finally:
                operator.close()
            assert await proc.redeliver() == 1
            assert await proc.redeliver() == 0
            await receiver.wait_for(1)
            released = {labels: n for labels, n in counters(service, "duisgw_messages").items()
                        if labels[3] == "operator-release"}  # fmt: skip
    finally:
        await receiver.stop()
    assert released == {("inline", AD1, "release-forward", "operator-release"): 1.0}
