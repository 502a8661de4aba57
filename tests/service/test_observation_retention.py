"""Observation-lane messages the engine cannot use are kept for ``[store] observations_retention_seconds``
(default 7 days), then purged; 0 keeps them for ever.

The observation lane takes other parties' traffic (supplier-bound responses and alerts, consumption data
among them). What carries nothing the engine uses is kept with its bytes before the 204 (so the 2xx still
means "durably recorded"), and was kept for ever: the table grew with all that traffic, with no decision
resting on it. Pinned down on a running gateway: rows past the retention are purged by the processor's
tick, oldest first, in bounded transactions, and the rows within it stay."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from servicekit import DNO_USER, Receiver, counted_writes, pipeline_config, running

from gateway.service import processor as processor_module
from gateway.service.config import ServiceConfig
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.scenario import Scenario, World


def _observations(path: str) -> list[tuple[int, str, bytes]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, received_at, body FROM observations ORDER BY id").fetchall()
    return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]


def _age(path: str, ids: list[int], received: datetime) -> None:
    """Set the receipt time of rows ``ids`` (what the ingress wrote, as it writes it): they were kept then."""
    text = received.astimezone(UTC).isoformat().replace("+00:00", "Z")
    with sqlite3.connect(path) as db:
        db.executemany("UPDATE observations SET received_at = ? WHERE id = ?", [(text, i) for i in ids])


def _kept_observations(
    tmp_path: Path, retention: float, n: int
) -> tuple[ServiceConfig, list[bytes], datetime]:
    world = World.generated("observe-retention")
    reference = world.write_reference(tmp_path / "reference")
    story = Scenario("observe", world)
    when = story.t("12:00:00")
    bodies = []
    for i in range(n):  # alerts on the observation lane: not evidence of anything, kept as observations
        _esme, ch, mpan = world.meter(10 + i)
        bodies.append(world.factory.ad1(ch, mpan, when - timedelta(minutes=2), when, 700 + i))
    cfg = pipeline_config(tmp_path, reference, "http://127.0.0.1:9/unused", DNO_USER)
    cfg = dataclasses.replace(
        cfg, store=dataclasses.replace(cfg.store, observations_retention_seconds=retention)
    )
    return cfg, bodies, when


async def test_observations_past_the_retention_are_purged_by_the_tick_and_the_rest_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, bodies, when = _kept_observations(tmp_path, 3600.0, 5)
    receiver = Receiver()
    await receiver.start()
    cfg = dataclasses.replace(cfg, destinations=(dataclasses.replace(cfg.destinations[0], url=receiver.url),))
    try:
        service = make_service(build_gateway(cfg))
        async with running(service):
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                for body in bodies:
                    assert (await dsp.post(TimedMessage(when, "observe", body))).status == 204
            rows = _observations(cfg.store.path)
            assert [r[2] for r in rows] == bodies
            now = datetime.now(UTC)
            _age(cfg.store.path, [r[0] for r in rows[:3]], now - timedelta(hours=2))
            proc = service.processor
            assert isinstance(proc, GatewayProcessor)
            assert proc.observations_retention == timedelta(hours=1)
            monkeypatch.setattr(processor_module, "_PURGE_EVERY", 0.0)  # the purge's minute has passed
            await proc.tick(now)
            assert [r[2] for r in _observations(cfg.store.path)] == bodies[3:]
            await proc.tick(now)  # nothing more is due
            assert [r[2] for r in _observations(cfg.store.path)] == bodies[3:]
    finally:
        await receiver.stop()


async def test_the_purge_deletes_oldest_first_in_bounded_transactions_and_stops_at_the_first_row_to_keep(
    tmp_path: Path,
) -> None:
    cfg, bodies, when = _kept_observations(tmp_path, 3600.0, 7)
    service = make_service(build_gateway(cfg))
    async with running(service):
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            for body in bodies:
                assert (await dsp.post(TimedMessage(when, "observe", body))).status == 204
        ids = [r[0] for r in _observations(cfg.store.path)]
        now = datetime.now(UTC)
        _age(cfg.store.path, ids[:5], now - timedelta(hours=3))
        _age(cfg.store.path, ids[6:], now - timedelta(hours=3))  # old, but kept after a row to keep
        proc = service.processor
        assert isinstance(proc, GatewayProcessor)
        with counted_writes(proc.store) as writes:
            assert await proc.purge_observations(now - timedelta(hours=1), chunk=2) == 5
        assert writes[0] == 3  # 2 + 2 + 1 rows, one transaction each
        assert [r[2] for r in _observations(cfg.store.path)] == bodies[5:]


# A retention of 0 and the default: tests/service/test_reject_retention.py (both tables).
