"""``duisgw_messages_total`` labels a held AD1 by its DUIS kind (``DCCAlertMessage.AD1``) at every step:
when the ingress answers it held, and when it is released later — by the evidence that decides it (an
8F66 arriving) or by the hold timing out — so a dashboard summing by kind counts one kind, never the
engine's event kind (``power-outage``); a released forward's outbox metadata and the ``decision`` log
line name the same kind. Both layouts of the decision state are run: one database (decisions, routes
and outbox in one transaction) and two."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from servicekit import DNO_USER, Receiver, counters, pipeline_config, running, timed

from gateway.service.app import queues_for
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator
from gateway.store.sqlite import SqliteStore as EngineStore
from gateway.testkit.scenario import Scenario, World

AD1 = "DCCAlertMessage.AD1"


def two_holds(world: World) -> Scenario:
    """Meter 1: a future-dated activation whose AD1 arrives before its 8F66 (held, released by the 8F66).
    Meter 2: an immediate request with no response; its AD1 is held until the hold limit passes."""
    s = Scenario("two-holds", world)
    f, t = world.factory, s.t
    e1, c1, m1 = world.meter(1)
    s.observe("07:30:00", f.activate_request(e1, 5001, execution=t("09:00")), "future-dated 09:00")
    s.observe("07:30:40", f.activate_response(e1, 5001, t("07:30:40"), result=None), "accepted for later")
    s.inline("09:04:05", f.ad1(c1, m1, t("09:00:55"), t("09:04:05"), 101), "suppress", "fd-confirmed", held=True)
    s.observe("09:05:30", f.future_dated_outcome(e1, 5001, t("09:00"), t("09:05:30")), "8F66")
    e2, c2, m2 = world.meter(2)
    s.observe("10:00:00", f.activate_request(e2, 5002), "immediate request, never answered")
    s.inline("10:03:00", f.ad1(c2, m2, t("10:01:00"), t("10:03"), 102), "forward", "hold-timeout", held=True)
    return s


@pytest.mark.parametrize("state_in_store", [True, False], ids=["one-database", "two-databases"])
async def test_released_holds_count_under_the_duis_kind_the_ingress_counted_them_under(
    tmp_path: Path, state_in_store: bool, receiver: Receiver
) -> None:
    world = World.generated("released-kind")
    scenario = two_holds(world)
    reference = world.write_reference(tmp_path / "reference")
    cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=state_in_store)
    gateway = build_gateway(cfg)
    service = make_service(gateway)
    async with running(service):
        messages = timed(scenario)
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            answers = [await dsp.post(m) for m in messages]
        assert [a.status for a, m in zip(answers, messages, strict=True) if m.lane == "inline"] == [202, 202]
        end = max(m.at for m in messages) + gateway.engine_config.hold_limit + dt.timedelta(seconds=1)
        async with aiohttp.ClientSession() as http:
            tick = f"http://127.0.0.1:{service.admin_port}/admin/tick"
            async with http.post(tick, json={"now": end.isoformat()}) as resp:
                assert resp.status == 200
                released = (await resp.json())["released"]
        assert [(r["decision"], r["reason"]) for r in released] == [("forward", "hold-timeout")]
        await receiver.wait_for(1)
        rows = [row for q in queues_for(cfg, "dno-a") for row in await service.outbox.rows(q)]
        inline = {
            labels[1:]: n for labels, n in counters(service, "duisgw_messages").items() if labels[0] == "inline"
        }
    assert {kind for kind, _decision, _reason in inline} == {AD1}, inline
    assert inline[(AD1, "release-suppress", "fd-confirmed")] == 1.0  # released by the 8F66
    assert inline[(AD1, "release-forward", "hold-timeout")] == 1.0  # released by the clock
    assert sum(n for (_k, decision, _r), n in inline.items() if decision == "hold") == 2.0  # the ingress
    # the released forward's outbox metadata (MQTT user properties) names the same kind
    assert [(row.metadata["reason"], row.metadata["kind"]) for row in rows] == [("hold-timeout", AD1)]


async def test_the_decision_log_line_names_the_duis_kind_of_held_and_released_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, receiver: Receiver
) -> None:
    """The ``decision`` structured log line's ``kind`` is the DUIS kind, as in ``duisgw_messages`` and the
    outbox metadata: for the hold the ingress answers and for its release (by evidence, by the clock)."""
    world = World.generated("decision-log-kind")
    scenario = two_holds(world)
    reference = world.write_reference(tmp_path / "reference")
    gateway = build_gateway(pipeline_config(tmp_path, reference, receiver.url, DNO_USER))
    service = make_service(gateway)
    with caplog.at_level(logging.DEBUG, logger="duisgw.pipeline"):
        async with running(service):
            messages = timed(scenario)
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                for m in messages:
                    await dsp.post(m)
            end = max(m.at for m in messages) + gateway.engine_config.hold_limit + dt.timedelta(seconds=1)
            assert service.processor is not None
            await service.processor.advance(end)
            await receiver.wait_for(1)
    logged = [(r.__dict__["action"], r.__dict__["kind"]) for r in caplog.records if r.getMessage() == "decision"]
    assert sorted(logged) == [("hold", AD1), ("hold", AD1), ("release-forward", AD1), ("release-suppress", AD1)]


@pytest.mark.parametrize("state_in_store", [True, False], ids=["one-database", "two-databases"])
async def test_forwards_the_redelivery_scan_enqueues_carry_the_duis_kind_in_their_outbox_metadata(
    tmp_path: Path, state_in_store: bool, receiver: Receiver
) -> None:
    """The redelivery scan enqueues forward decisions not flagged as in the outbox: a released hold whose
    outbox commit was lost (simulated: its flag cleared and its row gone) and an operator release made in
    another process. Their outbox metadata (MQTT user properties) names the DUIS kind the ingress
    recorded with the message's route, not the engine's event kind (nor nothing, for the release)."""
    world = World.generated("redelivered-kind")
    scenario = two_holds(world)
    reference = world.write_reference(tmp_path / "reference")
    cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=state_in_store)
    gateway = build_gateway(cfg)
    service = make_service(gateway)
    async with running(service):
        proc = service.processor
        assert isinstance(proc, GatewayProcessor)
        messages = timed(scenario)
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            answers = [await dsp.post(m) for m in messages]
        suppressed, timed_out = (str(a.message_id) for a, m in zip(answers, messages, strict=True)
                                 if m.lane == "inline")  # fmt: skip
        end = max(m.at for m in messages) + gateway.engine_config.hold_limit + dt.timedelta(seconds=1)
        await proc.advance(end)
        await receiver.wait_for(1)
        assert await proc.redeliver() == 0  # (flags what reached the outbox)
        # the hold-timeout forward's outbox commit "lost" (a crash between the two): not flagged, no row
        await proc.store.write(lambda c: c.execute("DELETE FROM outbox WHERE message_id = ?", (timed_out,)))
        with contextlib.closing(sqlite3.connect(engine_db_path(cfg), timeout=5)) as db, db:
            db.execute("UPDATE messages SET delivered = 0 WHERE message_id = ?", (timed_out,))
        # the 8F66-confirmed suppression released by an operator (what duisgw audit release records)
        operator = EngineStore(engine_db_path(cfg), checkpoint_interval=0)
        try:
            operator.release_suppressed(suppressed, "ops", "customer has no supply", dt.datetime.now(dt.UTC))
        finally:
            operator.close()
        assert await proc.redeliver() == 2
        await receiver.wait_for(2)  # (distinct ids: the time-out forward twice, the release)
        rows = {row.message_id: row for q in queues_for(cfg, "dno-a") for row in await service.outbox.rows(q)}
    assert (rows[timed_out].metadata["reason"], rows[timed_out].metadata["kind"]) == ("hold-timeout", AD1)
    assert (rows[suppressed].metadata["reason"], rows[suppressed].metadata["kind"]) == ("operator-release", AD1)
