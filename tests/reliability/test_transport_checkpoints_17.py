"""The transport database's WAL checkpoints in ``duisgw_store_checkpoint_*``, labelled by database (seventeenth
session).

Only the decision state's database was checkpointed by the gateway (a background thread, PASSIVE, every second:
``duisgw_store_checkpoint_seconds``). The transport store's own database — the one database of ``mode =
"passthrough"``, the outbox database of ``[pipeline] state_in_store = false`` — kept SQLite's automatic
checkpoints, run inside a COMMIT once the WAL holds 1,000 pages: not counted, not timed (inside the commit's time
instead), their failures silently ignored by SQLite. The transport store now runs those automatic checkpoints
itself (the same PASSIVE checkpoint at the same WAL size, right after the commit that reached it), timed and
counted with ``database="store"``; the decision state's are ``database="engine"`` with two databases, ``"store"``
with one (where the decision state's thread checkpoints the one database and the transport store runs none).

The WAL is filled for real: requests the gateway keeps (refused bodies, which it records with their bytes).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from e2ekit import scrape
from servicekit import Receiver, pipeline_config, running, service_config

from gateway.service.app import PassThroughProcessor, Service
from gateway.service.outbox import SqliteStore
from gateway.service.serve import build_gateway, make_service
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import World
from gbcs.eui import format_eui

DNO_USER = format_eui(DNO_EUI)
BODY = 60 * 1024  # under the kit's max_body_bytes (64 KiB): ~15 pages a request
REQUESTS = 100  # ~6 MB: past the 1,000 pages (4 MiB) of an automatic checkpoint


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return World.generated("transport-checkpoints-17").write_reference(tmp_path_factory.mktemp("reference"))


async def checkpoints(service: Service) -> dict[str, dict[str, float]]:
    """``duisgw_store_checkpoint_…`` by database: ``count``, ``failures``."""
    out: dict[str, dict[str, float]] = {}
    for (name, labels), value in (await scrape(service.admin_port)).items():
        tags = dict(labels)
        if name == "duisgw_store_checkpoint_seconds_count":
            out.setdefault(tags.get("database", "?"), {})["count"] = value
        elif name == "duisgw_store_checkpoint_failures_total":
            out.setdefault(tags.get("database", "?"), {})["failures"] = value
    return out


async def fill(service: Service, lane_user: str) -> None:
    """``REQUESTS`` bodies the gateway refuses and keeps (400, in the transport store's ``rejects``)."""
    async with aiohttp.ClientSession() as http:
        for i in range(REQUESTS):
            body = b"<not-xml " + os.urandom(BODY // 2).hex().encode()[: BODY - 16] + str(i).encode()
            async with http.post(
                f"http://127.0.0.1:{service.port}/duis/dno/{lane_user}",
                data=body,
                headers={"Content-Type": "application/xml"},
            ) as r:
                assert r.status == 400, (r.status, await r.text())


def wal_bytes(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


async def test_a_passthrough_gateway_counts_and_times_the_automatic_checkpoints_of_its_database(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Was: no ``duisgw_store_checkpoint_seconds`` sample at all in pass-through mode (only the decision state's
    checkpoints were told), while SQLite checkpointed the database inside some of its commits."""
    service = Service(service_config(tmp_path, receiver.url))
    async with running(service):
        assert isinstance(service.processor, PassThroughProcessor)
        await fill(service, "dno-a")
        seen = await checkpoints(service)
        wal = wal_bytes(Path(service.store.path))
    assert seen["store"]["count"] >= 1, seen
    assert seen["store"]["failures"] == 0
    assert service.store.checkpoints == seen["store"]["count"]
    assert wal < 8 << 20, wal  # the WAL started over: bounded as SQLite's own automatic checkpoints kept it


async def test_with_two_databases_the_outbox_databases_checkpoints_are_counted_beside_the_engines(
    tmp_path: Path, reference: dict[str, Path], receiver: Receiver
) -> None:
    """``state_in_store = false``: the outbox database's automatic checkpoints under ``database="store"``, the
    engine database's background ones under ``database="engine"``. Was: the engine's only, unlabelled."""
    cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=False)
    gateway = build_gateway(replace(cfg, tick_interval=3600.0))
    service = make_service(gateway)
    async with running(service):
        await fill(service, DNO_USER)
        await asyncio.sleep(1.2)  # (a background round of the engine database's checkpoint thread)
        seen = await checkpoints(service)
        wal = wal_bytes(Path(service.store.path))
    assert seen["store"]["count"] >= 1 and seen["engine"]["count"] >= 1, seen
    assert seen["store"]["failures"] == seen["engine"]["failures"] == 0
    assert service.store.checkpoints == seen["store"]["count"]
    assert wal < 8 << 20, wal


async def test_with_one_database_the_decision_states_thread_checkpoints_it_and_the_transport_store_runs_none(
    tmp_path: Path, reference: dict[str, Path], receiver: Receiver
) -> None:
    """``state_in_store = true``: the decision state's background thread checkpoints the one database (off the
    commit path, docs/PERFORMANCE-gateway.md); the transport store adds no checkpoint of its own to its commits.
    Its rounds are counted under ``database="store"``, and no ``engine`` series is exported."""
    cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=True)
    gateway = build_gateway(replace(cfg, tick_interval=3600.0))
    service = make_service(gateway)
    async with running(service):
        await fill(service, DNO_USER)
        await asyncio.sleep(1.2)
        seen = await checkpoints(service)
    assert service.store.checkpoints == 0
    assert set(seen) == {"store"} and seen["store"]["count"] >= 1, seen


async def test_the_commit_that_brings_the_wal_to_1000_pages_is_followed_by_one_checkpoint_told_apart(
    tmp_path: Path,
) -> None:
    """The transport store alone: a small commit is told as a commit; one write that brings the WAL past 1,000 pages
    is told as a commit and then as one checkpoint (its own time, not in the commit's), and the next small commit
    starts the WAL over (no checkpoint after it). SQLite's automatic checkpoint ran inside that COMMIT, untold."""
    store = SqliteStore(tmp_path / "t.sqlite3")
    await store.open()
    told: list[str] = []

    class Observer:
        def committed(self, seconds: float) -> None:
            told.append("committed")

        def failed(self, exc: BaseException) -> None:
            told.append(f"failed {exc}")

        def checkpointed(self, seconds: float) -> None:
            told.append("checkpointed")

        def checkpoint_failed(self, exc: BaseException) -> None:
            told.append(f"checkpoint_failed {exc}")

    store.observer = Observer()
    try:
        await store.write(lambda c: c.execute("CREATE TABLE big (b BLOB)"))
        assert told == ["committed"]
        big = os.urandom(8 << 20)  # ~2,000 pages in one transaction
        await store.write(lambda c: c.execute("INSERT INTO big VALUES (?)", (big,)))
        assert told == ["committed", "committed", "checkpointed"] and store.checkpoints == 1
        await store.write(lambda c: c.execute("INSERT INTO big VALUES (x'00')"))
        assert told[3:] == ["committed"] and store.checkpoints == 1
        (count,) = await store.read(lambda c: c.execute("SELECT count(*) FROM big").fetchone())
        assert count == 2
    finally:
        await store.close()
