"""The storage's health in ``/metrics`` (``duisgw_store_…``) in ``mode = "passthrough"`` (sixteenth session).

The pass-through processor records every message and its outbox row in the transport store, as the pipeline
does; but only the pipeline told the store's health to the metrics, so a pass-through gateway whose database was
locked by another process, or full, answered every request 503 while ``duisgw_store_unavailable`` said 0, no
failure was counted and no commit timed, and the database's size was not shown. It is told the same way now
(:mod:`gateway.service.store_health`). The fault is a real one: another connection holding the database's write
lock past ``[store] busy_timeout`` (``SQLITE_BUSY``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from e2ekit import scrape
from servicekit import Receiver, duis_body, running, service_config, write_lock

from gateway.service.app import PassThroughProcessor
from gateway.service.app import Service as GatewayService

XML = {"Content-Type": "application/xml"}


async def store_metrics(svc: GatewayService) -> dict[str, float]:
    """The ``duisgw_store_…`` samples (failures by ``reason``, sizes by ``database.file``; no buckets)."""
    out: dict[str, float] = {}
    assert svc.admin_port is not None
    for (name, labels), value in (await scrape(svc.admin_port)).items():
        tags = dict(labels)
        if not name.startswith("duisgw_store_") or "le" in tags:
            continue
        key = f"{name}.{tags['reason']}" if "reason" in tags else name
        if "database" in tags:
            key = f"{name}.{tags['database']}" + (f".{tags['file']}" if "file" in tags else "")
        out[key] = value
    return out


async def post(svc: GatewayService, body: bytes) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=body, headers=XML) as resp,
    ):
        return resp.status


async def test_a_passthrough_gateway_times_its_store_commits_and_shows_its_database_size(
    tmp_path: Path, receiver: Receiver
) -> None:
    svc = GatewayService(service_config(tmp_path, receiver.url))
    async with running(svc):
        assert isinstance(svc.processor, PassThroughProcessor)
        before = await store_metrics(svc)
        assert await post(svc, duis_body(1)) == 204
        await receiver.wait_for(1)
        after = await store_metrics(svc)
    # the message and its outbox row committed (and its delivery mark, upkeep): timed in the histogram
    assert (
        after["duisgw_store_commit_seconds_count"] >= before.get("duisgw_store_commit_seconds_count", 0) + 1
    )
    assert after["duisgw_store_unavailable"] == 0
    assert after["duisgw_store_file_bytes.store.db"] > 0  # the database's size, read at the scrape


async def test_a_passthrough_gateway_whose_database_is_locked_says_the_store_is_unavailable_until_it_records(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Before: every request answered 503 while the gauge said 0 and no failure was counted."""
    cfg = service_config(tmp_path, receiver.url)
    svc = GatewayService(replace(cfg, store=replace(cfg.store, busy_timeout=0.2)))
    async with running(svc):
        assert await post(svc, duis_body(1)) == 204
        with write_lock(Path(cfg.store.path)):
            assert await post(svc, duis_body(2)) == 503
            during = await store_metrics(svc)
        assert during["duisgw_store_unavailable"] == 1
        assert during["duisgw_store_commit_failures_total.locked"] >= 1
        deadline = time.monotonic() + 10
        while (status := await post(svc, duis_body(2))) == 503:  # as the DSP re-delivers
            assert time.monotonic() < deadline, "still refused after the lock was released"
            await asyncio.sleep(0.1)
        assert status == 204
        assert (await store_metrics(svc))["duisgw_store_unavailable"] == 0
        await receiver.wait_for(2)
    assert [r.body for r in receiver.log] == [duis_body(1), duis_body(2)]
