"""The storage's health in ``/metrics`` and ``/readyz``, second review of the fifteenth session's changes.

- ``duisgw_store_unavailable`` said 0 while every request was refused on a full disk. Each writer's refusal ended
  with *any* commit of that writer, and a full disk lets through a transaction that only rewrites pages the
  database has: with one database, the engine's tick (the clock's row) after the engine was rebuilt; with two, the
  outbox database's delivery marks of a forward whose DNO is down. A refusal of a request (a batch of decisions,
  its routes and outbox rows, a reject, an observation) now ends only with a commit of a request of that writer;
  upkeep (ticks, in-the-outbox flags, operator releases taken in, delivery marks, dead letters, purges, the
  readiness probes) still ends a refusal of upkeep. The refusals are kept per database (with one, a batch of
  decisions committed ends a refused reject's refusal).
- A write refused on a full disk whose ``SQLITE_FULL`` rolled the whole transaction back was counted as ``full``
  and answered 503, but the gauge stayed 0 (it read the error of the savepoint the rollback took away).
- ``/readyz``'s probe of the engine's own database (``state_in_store = false``) was queued behind every decision
  waiting for the engine thread: under a backlog of a few seconds it answered ``store_unavailable`` while both
  databases recorded, and a load balancer took a busy instance out. It now waits for the work the thread has in
  hand at most, as the transport store's probe does; and concurrent ``/readyz`` share one probe (each queued its
  own write: with the database locked by another process, each waited ``busy_timeout`` on the engine thread in
  turn, and each was counted as a failure).

Every fault is a real SQLite condition on the gateway's own files (``PRAGMA max_page_count`` at the page count:
``SQLITE_FULL`` for a transaction that needs a new page; another connection holding the write lock).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from servicekit import Receiver, outages, running
from test_store_metrics_transport_15 import (  # the same gateway set-up and probes as the store-metric tests
    NOT_XML,
    config,
    failed,
    gateway_and_dsp,
    post_until_taken,
    processor_of,
    readyz,
    started_up,
    store_metrics,
    world_and_reference,  # noqa: F401  (a fixture)
    write_lock,
)

from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import TimedMessage
from gateway.testkit.scenario import World


async def fill(proc: GatewayProcessor, *, engine: bool = False) -> None:
    """The disk full for one database: no new page for the transport store's (or the engine store's) connection."""

    def run() -> None:
        conn = proc.store.thread_connection() if not engine else proc.durable.store._conn()  # type: ignore[union-attr]
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await proc.call(run)


async def unfill(proc: GatewayProcessor) -> None:
    await proc.call(lambda: proc.store.thread_connection().execute("PRAGMA max_page_count = 1073741823"))


async def gauge_for(service: object, seconds: float) -> list[float]:
    """``duisgw_store_unavailable`` every 0.1 s for ``seconds``."""
    seen = []
    for _ in range(int(seconds * 10)):
        await asyncio.sleep(0.1)
        seen.append((await store_metrics(service))["duisgw_store_unavailable"])  # type: ignore[arg-type]
    return seen


async def test_with_one_database_the_engines_ticks_on_a_full_disk_do_not_end_the_refusal_of_the_requests(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],  # noqa: F811
    receiver: Receiver,
) -> None:
    """One database, the disk full for it, the engine ticking every 0.2 s (a gateway ticks every second). Every
    request is refused (503) and the gauge says 1. Then the engine's tick, once the hold-off after the rebuild ran
    out, rebuilds the engine and commits the clock's row — a page the database has — and the gauge said 0 from
    there on, while the next request was refused again. It says 1 until a request commits."""
    world, reference = world_and_reference
    msgs = outages(world, 12)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=False, tick_interval=0.2)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        ok = await dsp.post(msgs[0])
        assert (ok.status, ok.decision) == (200, "forward"), ok.text
        await fill(proc)
        answers = [await dsp.post(m) for m in msgs[1:]]
        assert answers[-1].status == 503, answers  # (a batch that fits in the pages it has may commit first)
        refused = await store_metrics(service)
        assert refused["duisgw_store_unavailable"] == 1 and failed(refused, "full") >= 1
        before = refused["duisgw_store_engine_rebuild_seconds_count"]
        seen = await gauge_for(service, 2.5)  # ten ticks and more: the hold-off (1 s) runs out, a tick commits
        during = await store_metrics(service)
        assert during["duisgw_store_engine_rebuild_seconds_count"] > before  # a tick rebuilt and committed ...
        assert seen == [1.0] * len(seen)  # ... which says nothing of the requests
        assert (await dsp.post(msgs[-1])).status == 503  # refused all along
        await unfill(proc)
        taken = await post_until_taken(dsp, msgs[-1])
        assert (taken.status, taken.decision) == (200, "forward"), taken
        assert (await store_metrics(service))["duisgw_store_unavailable"] == 0


async def test_with_two_databases_delivery_marks_on_a_full_outbox_database_do_not_end_the_refusal_of_the_requests(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],  # noqa: F811
    receiver: Receiver,
) -> None:
    """Two databases, the disk full for the outbox's: every request is decided (the engine's database records) and
    refused 503 at its outbox write. A forward in the outbox whose DNO is down is attempted meanwhile, and each
    failed attempt's mark — a row the database has, rewritten — commits: the gauge said 0 at every scrape while
    every request was refused. It says 1 until a request's outbox rows commit."""
    world, reference = world_and_reference
    msgs = outages(world, 12)
    await receiver.stop()  # the DNO is down: the first forward's attempts fail, and each is recorded (a mark)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=True)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        assert not proc.one_transaction
        ok = await dsp.post(msgs[0])
        assert (ok.status, ok.decision) == (200, "forward"), ok.text
        await fill(proc)
        answers = [await dsp.post(m) for m in msgs[1:]]
        assert answers[-1].status == 503, answers  # (a write that fits in the pages it has may commit first)
        refused = await store_metrics(service)
        assert refused["duisgw_store_unavailable"] == 1 and failed(refused, "full") >= 1
        seen = await gauge_for(service, 1.5)
        during = await store_metrics(service)
        assert during["duisgw_store_commit_seconds_count"] > refused["duisgw_store_commit_seconds_count"]  # marks
        assert seen == [1.0] * len(seen)
        assert (await dsp.post(msgs[-1])).status == 503
        await unfill(proc)
        taken = await post_until_taken(dsp, msgs[-1])
        assert (taken.status, taken.decision) == (200, "forward"), taken
        assert (await store_metrics(service))["duisgw_store_unavailable"] == 0


async def test_with_two_databases_readyz_is_not_queued_behind_the_decisions_waiting_for_the_engine_thread(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],  # noqa: F811
    receiver: Receiver,
) -> None:
    """Two databases, both recording. The engine thread has 3 s of work queued (twelve jobs of 0.25 s, as a
    backlog of batches under load). ``/readyz`` probed the engine's database with a write queued behind all of
    it: ``store_unavailable`` after 2 s. It waits for what the thread has in hand at most now: ``ready``, within
    about two jobs."""
    world, reference = world_and_reference
    (first,) = outages(world, 1)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=True)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        assert not proc.one_transaction
        assert await readyz(service) == (200, "ready")
        backlog = [asyncio.ensure_future(proc.call(lambda: time.sleep(0.25))) for _ in range(12)]
        await asyncio.sleep(0.1)
        began = time.monotonic()
        answer = await readyz(service)
        took = time.monotonic() - began
        await asyncio.gather(*backlog)
        assert answer == (200, "ready"), (answer, took)
        assert took < 1.5, took
        taken = await dsp.post(first)
        assert (taken.status, taken.decision) == (200, "forward"), taken


async def test_with_two_databases_concurrent_readyz_share_one_probe_of_the_locked_engine_database(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],  # noqa: F811
    receiver: Receiver,
) -> None:
    """Another process holds the engine database's lock. Eight ``/readyz`` at once each queued a one-page write on
    the engine thread, each waiting ``busy_timeout`` for the lock in turn (the decisions behind them too) and each
    counted as a ``locked`` failure: eight. They share the probe in progress now: all answered
    ``store_unavailable``, and one or two probes counted."""
    _world, reference = world_and_reference
    gateway = build_gateway(config(tmp_path, reference, receiver, two_databases=True))  # busy_timeout = 0.2
    service = make_service(gateway)
    async with running(service):
        proc = processor_of(gateway)
        assert not proc.one_transaction
        await started_up(service)
        before = await store_metrics(service)
        with write_lock(engine_db_path(gateway.config)):
            async with aiohttp.ClientSession() as http:

                async def one() -> tuple[int, str]:
                    async with http.get(f"http://127.0.0.1:{service.admin_port}/readyz") as r:
                        return r.status, (await r.text()).strip()

                answers = await asyncio.gather(*(one() for _ in range(8)))
            await asyncio.sleep(0.5)  # (any probe still queued runs and is counted)
            during = await store_metrics(service)
        assert answers == [(503, "store_unavailable")] * 8, answers
        assert 1 <= failed(during, "locked") - failed(before, "locked") <= 2, during
        assert await readyz(service) == (200, "ready")


async def test_a_reject_refused_on_a_full_disk_that_rolled_its_transaction_back_shows_the_store_unavailable(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],  # noqa: F811
    receiver: Receiver,
) -> None:
    """The disk full for the outbox database: a malformed message of 60 KB cannot be kept, and ``SQLITE_FULL``
    inside its write rolls the whole transaction back (SQLite's own doing: the savepoint is gone, and the
    transaction fails on taking it back). The DSP is answered ``503 store_unavailable`` and the failure counted as
    ``full`` — but the gauge stayed 0: it looked at the error of the savepoint, not at what rolled it back. It says
    1 now, until a reject is kept again."""
    world, reference = world_and_reference
    (first,) = outages(world, 1)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=True)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        await started_up(service)
        before = await store_metrics(service)
        await fill(proc)
        refused = await dsp.post(TimedMessage(first.at, "inline", NOT_XML + b"x" * 60_000))
        assert (refused.status, refused.text.strip()) == (503, "store_unavailable"), refused
        during = await store_metrics(service)
        assert failed(during, "full") == failed(before, "full") + 1
        assert during["duisgw_store_unavailable"] == 1
        await unfill(proc)
        kept = await dsp.post(TimedMessage(first.at, "inline", NOT_XML + b"y" * 60_000))
        assert kept.status == 400, kept
        assert (await store_metrics(service))["duisgw_store_unavailable"] == 0


async def test_with_one_database_a_refused_reject_ends_with_the_next_batch_of_decisions_committed_there(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],  # noqa: F811
    receiver: Receiver,
) -> None:
    """One database, another process holding its lock: a malformed message's reject cannot be kept (503) and the
    gauge says 1. Once the lock is gone, the next request — an AD1, decided and put in the outbox in that database
    — ends it: a refusal ends with a request's commit in the same database, whichever writer's. It used to end
    only with a commit of the transport store itself (the refusal was the transport store's, the batch the decision
    state's): the gauge said 1 after the AD1 was taken, until the next delivery mark or purge — and, with delivery
    marks as upkeep now, it would wait for the next malformed message, maybe hours."""
    world, reference = world_and_reference
    (ad1,) = outages(world, 1)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=False)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        assert proc.one_transaction
        await started_up(service)
        with write_lock(Path(proc.store.path)):
            refused = await dsp.post(TimedMessage(ad1.at, "inline", NOT_XML))
            assert (refused.status, refused.text.strip()) == (503, "store_unavailable"), refused
            assert (await store_metrics(service))["duisgw_store_unavailable"] == 1
        taken = await dsp.post(ad1)
        assert (taken.status, taken.decision) == (200, "forward"), taken
        assert (await store_metrics(service))["duisgw_store_unavailable"] == 0
