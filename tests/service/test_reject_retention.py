"""Refused inputs are kept for ``[store] rejects_retention_seconds`` (default 90 days), then purged; 0 keeps
them for ever.

Every refused input is kept with its bytes and reason (bad input loses nothing), and was kept for ever: a
peer sending bad input without end (up to ``max_body_bytes`` a request) grew the ``rejects`` table with
no bound, and nothing ever took it back. Pinned down on a running gateway: rejects past the retention are
purged by the processor's tick (in the same minute's pass as the observations), oldest first, in bounded
transactions, and the ones within it stay readable by ``duisgw audit rejects``."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from servicekit import DNO_USER, counted_writes, pipeline_config, running

from gateway.service import processor as processor_module
from gateway.service.config import ServiceConfig, StoreConfig, check_config
from gateway.service.outbox import read_rejects
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.scenario import Scenario, World


def _rows(path: str, table: str) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        return [(int(r[0]), bytes(r[1])) for r in db.execute(f"SELECT id, body FROM {table} ORDER BY id")]


def _age(path: str, table: str, ids: list[int], received: datetime) -> None:
    """Set the receipt time of rows ``ids`` of ``table``, written as the gateway writes it there."""
    text = received.isoformat() if table == "rejects" else received.isoformat().replace("+00:00", "Z")
    with sqlite3.connect(path) as db:
        db.executemany(f"UPDATE {table} SET received_at = ? WHERE id = ?", [(text, i) for i in ids])


def _config(tmp_path: Path, url: str, **store: float) -> tuple[ServiceConfig, World]:
    world = World.generated("reject-retention")
    reference = world.write_reference(tmp_path / "reference")
    cfg = pipeline_config(tmp_path, reference, url, DNO_USER)
    return dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, **store)), world


def _bad(i: int) -> bytes:
    return f"<not-duis n='{i}'>".encode()  # malformed XML: 400, kept in the rejects table


async def test_rejects_past_the_retention_are_purged_by_the_tick_and_the_rest_stay_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, world = _config(tmp_path, "http://127.0.0.1:9/unused", rejects_retention_seconds=3600.0)
    when = Scenario("reject", world).t("12:00:00")
    bodies = [_bad(i) for i in range(5)]
    service = make_service(build_gateway(cfg))
    async with running(service):
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            answers = [(await dsp.post(TimedMessage(when, "inline", body))).status for body in bodies]
        assert answers == [400] * len(bodies)
        rows = _rows(cfg.store.path, "rejects")
        assert [r[1] for r in rows] == bodies
        now = datetime.now(UTC)
        _age(cfg.store.path, "rejects", [r[0] for r in rows[:3]], now - timedelta(hours=2))
        proc = service.processor
        assert isinstance(proc, GatewayProcessor)
        assert proc.rejects_retention == timedelta(hours=1)
        monkeypatch.setattr(processor_module, "_PURGE_EVERY", 0.0)  # the purge's minute has passed
        await proc.tick(now)
        assert [r[1] for r in _rows(cfg.store.path, "rejects")] == bodies[3:]
        with sqlite3.connect(cfg.store.path) as db:  # what `duisgw audit rejects` lists
            assert [info.id for info in read_rejects(db)] == [r[0] for r in rows[3:]][::-1]
        await proc.tick(now)  # nothing more is due
        assert [r[1] for r in _rows(cfg.store.path, "rejects")] == bodies[3:]


async def test_one_pass_purges_observations_and_rejects_each_by_its_own_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, world = _config(
        tmp_path, "http://127.0.0.1:9/unused", rejects_retention_seconds=3 * 3600.0,
        observations_retention_seconds=3600.0,
    )  # fmt: skip
    story = Scenario("both", world)
    when = story.t("12:00:00")
    _esme, ch, mpan = world.meter(10)
    observed = world.factory.ad1(ch, mpan, when - timedelta(minutes=2), when, 700)
    service = make_service(build_gateway(cfg))
    async with running(service):
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            assert (await dsp.post(TimedMessage(when, "observe", observed))).status == 204
            assert (await dsp.post(TimedMessage(when, "inline", _bad(0)))).status == 400
        now = datetime.now(UTC)
        two_hours_ago = now - timedelta(hours=2)  # past the observations' hour, within the rejects' three
        for table in ("observations", "rejects"):
            _age(cfg.store.path, table, [r[0] for r in _rows(cfg.store.path, table)], two_hours_ago)
        proc = service.processor
        assert isinstance(proc, GatewayProcessor)
        monkeypatch.setattr(processor_module, "_PURGE_EVERY", 0.0)
        await proc.tick(now)
        assert _rows(cfg.store.path, "observations") == []
        assert [r[1] for r in _rows(cfg.store.path, "rejects")] == [_bad(0)]
        await proc.tick(now + timedelta(hours=1, seconds=1))  # now past the rejects' three hours too
        assert _rows(cfg.store.path, "rejects") == []


async def test_the_reject_purge_deletes_oldest_first_in_bounded_transactions(tmp_path: Path) -> None:
    cfg, world = _config(tmp_path, "http://127.0.0.1:9/unused")
    when = Scenario("chunks", world).t("12:00:00")
    service = make_service(build_gateway(cfg))
    async with running(service):
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            for i in range(7):
                assert (await dsp.post(TimedMessage(when, "inline", _bad(i)))).status == 400
        ids = [r[0] for r in _rows(cfg.store.path, "rejects")]
        now = datetime.now(UTC)
        _age(cfg.store.path, "rejects", ids[:5], now - timedelta(days=100))
        _age(cfg.store.path, "rejects", ids[6:], now - timedelta(days=100))  # old, but after a row to keep
        proc = service.processor
        assert isinstance(proc, GatewayProcessor)
        assert proc.rejects_retention == timedelta(days=90)  # the default
        with counted_writes(proc.store) as writes:
            assert await proc.purge_rejects(now - timedelta(days=90), chunk=2) == 5
        assert writes[0] == 3  # 2 + 2 + 1 rows, one transaction each
        assert [r[1] for r in _rows(cfg.store.path, "rejects")] == [_bad(5), _bad(6)]


@pytest.mark.parametrize("table", ["observations", "rejects"])
async def test_a_retention_of_zero_keeps_the_rows_for_ever(tmp_path: Path, table: str) -> None:
    cfg, _world = _config(tmp_path, "http://127.0.0.1:9/unused", **{f"{table}_retention_seconds": 0.0})
    service = make_service(build_gateway(cfg))
    async with running(service):
        proc = service.processor
        assert isinstance(proc, GatewayProcessor) and getattr(proc, f"{table}_retention") is None


@pytest.mark.parametrize(("table", "days"), [("observations", 7), ("rejects", 90)])
def test_each_retention_has_its_default_and_a_negative_one_is_refused(
    tmp_path: Path, table: str, days: int
) -> None:
    option = f"{table}_retention_seconds"
    assert getattr(StoreConfig(), option) == days * 86400
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[store]\n{option} = -1\n")
    assert f"store.{option}: must be >= 0" in check_config(bad)
