"""The storage's health in ``/metrics`` (``duisgw_store_…``), fifteenth session: the transport store's own
transactions, and the two writers — the decision state's store and the transport store, in one database or two
(``[pipeline] state_in_store = false``) — told apart.

- The transport store's own transactions — a kept reject, a delivery mark, and with them observations, dead
  letters, purges, the re-enqueued forwards, and the readiness probe's failures — are counted in
  ``duisgw_store_commit_failures_total{reason}`` and timed in ``duisgw_store_commit_seconds`` like the decision
  state's; so are the decision state's in-the-outbox flags. Before, a disk that filled (or a lock another process
  held) under the outbox showed in no metric while the delivery marks failed, and a refused reject was a 503 with
  nothing counted. (All of them run in the gateway process: an ingress worker's rejects are written there, the
  sender process only sends.)
- ``duisgw_store_unavailable`` is 1 while EITHER writer's last transaction failed for a store reason, 0 only
  once each has committed since. With two databases it used to follow whichever committed last: the outbox
  database locked, every request answered 503, and the engine's own database, committing a tick every
  ``tick_interval``, set it back to 0. With one, the transport store's commits (counted now) must not end a
  refusal of the decisions either.

Every fault is a real SQLite condition on the gateway's own files, in-process (so that one database of two can
be broken alone): another connection holding the write lock past ``[store] busy_timeout`` (``SQLITE_BUSY``),
``PRAGMA query_only`` on the engine's connection (``SQLITE_READONLY``), ``PRAGMA max_page_count`` at the page
count (``SQLITE_FULL`` for a transaction that needs a new page).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from e2ekit import scrape
from servicekit import Receiver, outages, pipeline_config, running, write_lock

from gateway.service.api import Delivery, StoreUnavailable
from gateway.service.app import Service
from gateway.service.config import ServiceConfig
from gateway.service.outbox import Outbox, RejectStore, SqliteStore
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator, Posted, TimedMessage
from gateway.store.sqlite import failure_reason
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import World
from gbcs.eui import format_eui

DNO_USER = format_eui(DNO_EUI)
QUEUE = "http:dno-a"
REASONS = ("locked", "full", "io", "readonly", "corrupt", "files_changed", "other")
NOT_XML = b"<not-xml"


@pytest.fixture(scope="module")
def world_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, Path]]:
    world = World.generated("store-metrics-15")
    return world, world.write_reference(tmp_path_factory.mktemp("reference"))


def config(
    tmp_path: Path,
    reference: dict[str, Path],
    receiver: Receiver,
    *,
    two_databases: bool,
    tick_interval: float = 3600.0,
) -> ServiceConfig:
    """A pipeline gateway whose store gives up a lock after 0.2 s; no tick during the test unless asked."""
    cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=not two_databases)
    return replace(cfg, tick_interval=tick_interval, store=replace(cfg.store, busy_timeout=0.2))


def processor_of(gateway: Any) -> GatewayProcessor:
    proc = gateway.processor
    assert isinstance(proc, GatewayProcessor)
    return proc


@contextlib.asynccontextmanager
async def gateway_and_dsp(cfg: ServiceConfig) -> AsyncIterator[tuple[Any, Service, DspSimulator]]:
    """A gateway built from ``cfg``, serving (in-process), and a DSP simulator posting to its DNO lane."""
    gateway = build_gateway(cfg)
    service = make_service(gateway)
    async with (
        running(service),
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        yield gateway, service, dsp


async def store_metrics(service: Service) -> dict[str, float]:
    """The ``duisgw_store_…`` samples of ``/metrics`` (failures by ``reason``; no histogram buckets)."""
    out: dict[str, float] = {}
    for (name, labels), value in (await scrape(service.admin_port)).items():
        tags = dict(labels)
        if not name.startswith("duisgw_store_") or "le" in tags or "database" in tags:
            continue
        out[f"{name}.{tags['reason']}" if "reason" in tags else name] = value
    return out


def failed(m: dict[str, float], reason: str) -> float:
    return m[f"duisgw_store_commit_failures_total.{reason}"]


def commits(m: dict[str, float]) -> float:
    return m["duisgw_store_commit_seconds_count"]


async def post_until_taken(dsp: DspSimulator, msg: TimedMessage, *, within: float = 15.0) -> Posted:
    """POST ``msg`` again after each 503 (as the DSP re-delivers) until it is answered otherwise."""
    deadline = time.monotonic() + within
    while True:
        answer = await dsp.post(msg)
        if answer.status != 503 or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.1)


async def readyz(service: Service) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{service.admin_port}/readyz") as r,
    ):
        return r.status, (await r.text()).strip()


async def until(check: Any, *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def started_up(service: Service) -> None:
    """Until the delivery's purge of delivered rows at start-up (a transaction of the transport store, each minute
    from the start) has committed: the commits counted from here on are the test's own."""

    async def purged() -> bool:
        return commits(await store_metrics(service)) >= 1

    await until(purged)


# ------------------------------------------------------------------------------------------ two databases


async def test_with_two_databases_the_store_stays_unavailable_while_the_outbox_database_is_locked_and_the_engine_ticks(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], receiver: Receiver
) -> None:
    """The flap, reproduced: ``state_in_store = false``, the outbox database locked by another process. Each
    request is decided in the engine's database (committed) and refused 503 at its outbox write; the engine
    ticks every 0.2 s meanwhile (its own database, committed). The gauge followed the last commit of either
    database: 0 a tick after each refusal, while every request was refused. It says 1 at every scrape now, and 0
    once the outbox database records again."""
    world, reference = world_and_reference
    first, second = outages(world, 2)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=True, tick_interval=0.2)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        assert not proc.one_transaction
        ok = await dsp.post(first)
        assert (ok.status, ok.decision) == (200, "forward"), ok.text
        with write_lock(Path(proc.store.path)):
            refused = await dsp.post(second)
            assert refused.status == 503 and refused.text.startswith("store_unavailable"), refused
            before = await store_metrics(service)
            seen = []
            for _ in range(15):  # 1.5 s: seven ticks or so of the engine
                await asyncio.sleep(0.1)
                seen.append((await store_metrics(service))["duisgw_store_unavailable"])
            during = await store_metrics(service)
            again = await dsp.post(second)
        assert again.status == 503, again  # refused all along
        assert commits(during) > commits(before)  # the engine's database committed (its ticks) meanwhile ...
        assert seen == [1.0] * len(seen)  # ... and the gauge never said the store could record
        assert failed(during, "locked") >= 1
        taken = await post_until_taken(dsp, second)
        assert (taken.status, taken.decision) == (200, "forward"), taken
        assert (await store_metrics(service))["duisgw_store_unavailable"] == 0
        await receiver.wait_for(2)


async def test_with_two_databases_a_commit_of_the_outbox_database_does_not_clear_the_engine_databases_refusal(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], receiver: Receiver
) -> None:
    """The other way round: the engine's database refuses every write (read-only), the outbox database records.
    A malformed message is kept in the outbox database's rejects (400, committed, counted in the commit
    histogram): the store is still unavailable — every decision is refused — until the engine's database
    records again."""
    world, reference = world_and_reference
    first, second = outages(world, 2)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=True)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        assert not proc.one_transaction
        assert proc.durable is not None
        engine_store = proc.durable.store
        assert Path(engine_store.path) == engine_db_path(gateway.config)
        ok = await dsp.post(first)
        assert (ok.status, ok.decision) == (200, "forward"), ok.text
        await started_up(service)
        await receiver.wait_for(1)
        await asyncio.sleep(0.3)  # (its delivery recorded)
        await proc.call(lambda: engine_store._conn().execute("PRAGMA query_only = 1"))  # type: ignore[attr-defined]
        refused = await dsp.post(second)
        assert refused.status == 503 and refused.text.startswith("store_unavailable"), refused
        during = await store_metrics(service)
        assert during["duisgw_store_unavailable"] == 1
        assert failed(during, "readonly") >= 1
        kept = await dsp.post(TimedMessage(second.at, "inline", NOT_XML))
        assert kept.status == 400, kept  # kept in the outbox database: it records
        after_reject = await store_metrics(service)
        assert commits(after_reject) == commits(during) + 1  # the reject's commit, timed
        assert after_reject["duisgw_store_unavailable"] == 1  # the engine's database still refuses
        assert (await dsp.post(second)).status == 503
        await proc.call(lambda: engine_store._conn().execute("PRAGMA query_only = 0"))  # type: ignore[attr-defined]
        taken = await post_until_taken(dsp, second)
        assert (taken.status, taken.decision) == (200, "forward"), taken
        assert (await store_metrics(service))["duisgw_store_unavailable"] == 0


async def test_with_two_databases_in_the_outbox_flags_the_engine_database_cannot_record_are_counted(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], receiver: Receiver
) -> None:
    """The decision state's own transaction that flags forwards as in the outbox (``mark_delivered``, after the
    redelivery scan or a tick put them there) was neither counted nor timed. A forward whose outbox write was
    refused (the outbox database locked) is put there by the scan once the lock is gone; the engine's database
    read-only then, its flag cannot be recorded: counted (``readonly``), the store unavailable until the flag
    commits at the next scan."""
    world, reference = world_and_reference
    (ad1,) = outages(world, 1)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=True)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        assert proc.durable is not None
        engine_store = proc.durable.store
        with write_lock(Path(proc.store.path)):
            refused = await dsp.post(ad1)  # decided (the engine's database), not in the outbox
        assert refused.status == 503, refused
        await proc.call(lambda: engine_store._conn().execute("PRAGMA query_only = 1"))  # type: ignore[attr-defined]
        before = await store_metrics(service)
        with pytest.raises(StoreUnavailable):
            await proc.redeliver()  # in the outbox now; its flag refused
        during = await store_metrics(service)
        assert failed(during, "readonly") == failed(before, "readonly") + 1
        assert during["duisgw_store_unavailable"] == 1
        await receiver.wait_for(1)  # (delivered all the same)
        await proc.call(lambda: engine_store._conn().execute("PRAGMA query_only = 0"))  # type: ignore[attr-defined]
        assert await proc.redeliver() == 0  # the flag recorded first: nothing left to put in the outbox
        after = await store_metrics(service)
        assert after["duisgw_store_unavailable"] == 0
        assert commits(after) > commits(during)


# ------------------------------------------------------------------------------------------ the transport store


@pytest.mark.parametrize("two_databases", [False, True], ids=["one-database", "two-databases"])
async def test_a_reject_the_outbox_database_cannot_keep_is_counted_and_a_kept_one_is_timed(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],
    receiver: Receiver,
    two_databases: bool,
) -> None:
    """A malformed message while another process holds the store's write lock: answered 503 (its bytes cannot
    be kept) and counted once as ``locked``, the store shown unavailable; before, nothing was counted. Once the
    lock is gone the next one is kept (400): one commit more in the histogram, the store available again."""
    _world, reference = world_and_reference
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=two_databases)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        at = outages(world_and_reference[0], 1)[0].at
        await started_up(service)
        before = await store_metrics(service)
        with write_lock(Path(proc.store.path)):
            refused = await dsp.post(TimedMessage(at, "inline", NOT_XML))
            assert refused.status == 503 and refused.text.startswith("store_unavailable"), refused
            during = await store_metrics(service)
        assert {r: failed(during, r) - failed(before, r) for r in REASONS} == {
            r: float(r == "locked") for r in REASONS
        }
        assert during["duisgw_store_unavailable"] == 1
        assert commits(during) == commits(before)
        kept = await dsp.post(TimedMessage(at, "inline", NOT_XML + b"2"))
        assert kept.status == 400, kept
        after = await store_metrics(service)
        assert commits(after) == commits(during) + 1
        assert after["duisgw_store_unavailable"] == 0


async def test_delivery_marks_the_outbox_database_cannot_record_are_counted_until_it_records_them(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], receiver: Receiver
) -> None:
    """A forward in the outbox while the DNO is down; then another process holds the store's write lock: the
    delivery's marks (the failed attempts, then the delivery once the DNO is back) cannot be recorded. Each
    failed mark is counted as ``locked`` and the store shown unavailable — before, nothing showed it. Once the
    lock is gone the delivery is recorded, the store available again, and the DNO got the message once."""
    world, reference = world_and_reference
    (ad1,) = outages(world, 1)
    await receiver.stop()  # the DNO is down
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=False)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        ok = await dsp.post(ad1)
        assert (ok.status, ok.decision) == (200, "forward"), ok.text

        async def attempted() -> bool:
            return any(r.attempts >= 1 for r in await proc.outbox.rows(QUEUE))

        await until(attempted)  # an unreachable attempt recorded (a mark committed)
        before = await store_metrics(service)
        assert before["duisgw_store_unavailable"] == 0
        with write_lock(Path(proc.store.path)):
            await asyncio.sleep(1.0)  # attempts keep failing (unreachable): their marks cannot be recorded
            await receiver.start()  # the DNO is back: delivered, and that cannot be recorded either
            await receiver.wait_for(1)
            await asyncio.sleep(0.5)
            during = await store_metrics(service)
            assert [r.state for r in await proc.outbox.rows(QUEUE)] == ["pending"]
        assert failed(during, "locked") - failed(before, "locked") >= 2
        assert during["duisgw_store_unavailable"] == 1

        async def recorded() -> bool:
            return [r.state for r in await proc.outbox.rows(QUEUE)] == ["delivered"]

        await until(recorded)
        after = await store_metrics(service)
        assert after["duisgw_store_unavailable"] == 0
        assert commits(after) > commits(during)  # the mark, timed
    assert [r.message_id for r in receiver.log] == [ok.message_id]  # sent once: not again while unrecorded


async def test_with_one_database_transport_commits_that_pass_a_full_disk_do_not_clear_the_decisions_refusal(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], receiver: Receiver
) -> None:
    """One database, the disk full for it (no new page: ``SQLITE_FULL`` for a batch that needs one): batches of
    decisions are refused. The transport store's own transactions go on committing meanwhile — the failed
    delivery attempts' marks and ``/readyz``'s probe rewrite pages the database has (as they may on a real full
    disk: docs/OPERATIONS.md) — and they must not set ``duisgw_store_unavailable`` back to 0 while every message
    is refused: each writer's refusal ends with a commit of its own."""
    world, reference = world_and_reference
    msgs = outages(world, 12)
    await receiver.stop()  # the DNO is down: the forward's attempts fail, and each is recorded (a mark)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=False)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        ok = await dsp.post(msgs[0])
        assert (ok.status, ok.decision) == (200, "forward"), ok.text

        def fill() -> None:
            conn = proc.store.thread_connection()
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {pages}")

        await proc.call(fill)
        answers = [await dsp.post(m) for m in msgs[1:]]
        assert answers[-1].status == 503, answers  # (a batch that fits in the pages it has may commit first)
        refused = await store_metrics(service)
        assert refused["duisgw_store_unavailable"] == 1 and failed(refused, "full") >= 1
        await asyncio.sleep(1.0)  # the forward's attempts fail (unreachable), their marks commit
        assert await readyz(service) == (200, "ready")  # the one-page write passes the full disk
        during = await store_metrics(service)
        assert commits(during) > commits(refused)  # the transport store committed meanwhile ...
        assert during["duisgw_store_unavailable"] == 1  # ... which says nothing of the decisions
        assert (await dsp.post(msgs[-1])).status == 503
        await proc.call(lambda: proc.store.thread_connection().execute("PRAGMA max_page_count = 1073741823"))
        taken = await post_until_taken(dsp, msgs[-1])
        assert taken.status == 200, taken
        assert (await store_metrics(service))["duisgw_store_unavailable"] == 0


# ------------------------------------------------------------------------------------------ the store itself


class Told:
    """A :class:`gateway.store.sqlite.StoreObserver` that keeps what it was told."""

    def __init__(self) -> None:
        self.commits: list[float] = []
        self.failures: list[str] = []

    def committed(self, seconds: float) -> None:
        self.commits.append(seconds)

    def failed(self, exc: BaseException) -> None:
        self.failures.append(failure_reason(exc))

    def checkpointed(self, seconds: float) -> None:
        pass

    def checkpoint_failed(self, exc: BaseException) -> None:
        pass


async def transport_store(path: Path) -> tuple[SqliteStore, Told]:
    store = SqliteStore(path)
    await store.open()
    told = store.observer = Told()
    return store, told


def reject(rejects: RejectStore, body: bytes) -> Awaitable[int]:
    return rejects.record(lane="inline", user=None, reason="malformed", detail=None, body=body,
                          received_at=datetime.now(UTC))  # fmt: skip


async def test_a_readiness_probe_is_told_when_it_fails_and_not_when_it_commits(tmp_path: Path) -> None:
    """``SqliteStore.probe`` (``/readyz``) commits a write of one page, which a full disk lets through: a probe
    that fails is a failed transaction (``readonly`` here: the database read-only to the gateway's connection),
    one that commits is not told as a commit, so it cannot end a refusal its writer's real transactions showed. A
    write that commits is one commit."""
    store, told = await transport_store(tmp_path / "t.sqlite3")
    try:
        assert await store.probe()
        assert told.commits == [] and told.failures == []
        await store.read(lambda c: c.execute("PRAGMA query_only = 1"))
        assert not await store.probe()
        assert told.failures == ["readonly"]
        await store.read(lambda c: c.execute("PRAGMA query_only = 0"))
        assert await store.probe()
        assert told.commits == []
        await reject(RejectStore(store), b"kept")
        assert len(told.commits) == 1 and told.failures == ["readonly"]
    finally:
        await store.close()


async def test_a_full_disk_that_rolls_a_group_back_is_one_failure_and_every_caller_is_refused(
    tmp_path: Path,
) -> None:
    """``SQLITE_FULL`` inside a write rolls the whole group's transaction back (SQLite's own doing): every caller
    of the group is answered ``StoreUnavailable`` — a delivery mark that needed no new page too, never reported
    done — and the store is told ONE failure, ``full`` (what rolled it back, not the savepoint it took away)."""
    store, told = await transport_store(tmp_path / "t.sqlite3")
    try:
        outbox, rejects = Outbox(store), RejectStore(store)
        await outbox.enqueue_many([Delivery("m1", "dno-a", b"<x/>", {})])
        (row,) = await outbox.rows("dno-a")
        assert len(told.commits) == 1

        def fill(conn: sqlite3.Connection) -> None:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {pages}")

        await store.read(fill)
        results = await asyncio.gather(
            outbox.mark_delivered(row.seq), reject(rejects, b"x" * 200_000), return_exceptions=True
        )
        assert [type(r) for r in results] == [StoreUnavailable, StoreUnavailable], results
        assert told.failures == ["full"]
        assert len(told.commits) == 1
        assert [r.state for r in await outbox.rows("dno-a")] == ["pending"]
    finally:
        await store.close()
