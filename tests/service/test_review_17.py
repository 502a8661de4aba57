"""Second review of the seventeenth session's ``/readyz`` bound (``READYZ_JOB_GRACE``).

With ``[pipeline] state_in_store = false`` one job of the engine thread — a batch of decisions — opens a write
transaction in each of the two databases, one after the other: the engine commit (``BEGIN IMMEDIATE`` on
``state_dir/engine.sqlite3``) and then the batch's routes and outbox rows (``BEGIN IMMEDIATE`` on ``[store] path``,
:meth:`gateway.service.outbox.SqliteStore.write_here`). Each may wait up to ``[store] busy_timeout`` for another
process's lock (``duisgw audit release`` writes the engine database and then the outbox) and then commit, so such
a job lasts up to twice ``busy_timeout`` without anything being stuck. The locks are held for real by other
connections, as another process's would be.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from servicekit import Receiver, outages, pipeline_config, running

from gateway.service.app import READYZ_JOB_GRACE, Service
from gateway.service.config import ServiceConfig
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import World
from gbcs.eui import format_eui

DNO_USER = format_eui(DNO_EUI)
BUSY_TIMEOUT = 8.0


@pytest.fixture(scope="module")
def world_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, Path]]:
    world = World.generated("readyz-review-17")
    return world, world.write_reference(tmp_path_factory.mktemp("reference"))


async def readyz(service: Service) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{service.admin_port}/readyz") as r,
    ):
        return r.status, (await r.text()).strip()


def hold_write_lock(db: Path) -> sqlite3.Connection:
    """Another connection holding ``db``'s write lock (as another process would) until it is rolled back."""
    holder = sqlite3.connect(str(db), isolation_level=None, timeout=10)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def release(holder: sqlite3.Connection) -> None:
    holder.execute("ROLLBACK")
    holder.close()


async def test_readyz_says_ready_while_a_batch_waits_for_one_lock_in_each_of_the_two_databases_and_then_commits(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], receiver: Receiver
) -> None:
    """``state_in_store = false``, ``busy_timeout`` 8 s. Another process holds the engine database's write lock
    for 7 s, and the outbox database's from then until 14.5 s: the DSP's message's batch waits for the first
    (engine commit at ~7 s), then for the second (routes and outbox rows at ~14.5 s), each within
    ``busy_timeout``, and is acknowledged ``200 forward`` — the store recorded it all along. ``/readyz`` at ~13.5 s,
    while the batch still waits: ``ready``. Was: ``503 store_unavailable``, the job being older than ``busy_timeout``
    + ``READYZ_JOB_GRACE`` (13 s), which one lock wait cannot pass but two can."""
    world, reference = world_and_reference
    cfg: ServiceConfig = pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=False)
    cfg = replace(cfg, tick_interval=3600.0, store=replace(cfg.store, busy_timeout=BUSY_TIMEOUT))
    (first,) = outages(world, 1)
    service = make_service(build_gateway(cfg))
    async with (
        running(service),
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        assert await readyz(service) == (200, "ready")
        engine_lock = hold_write_lock(engine_db_path(cfg))
        began = time.monotonic()
        posted = asyncio.ensure_future(dsp.post(first))
        await asyncio.sleep(0.5)
        assert not posted.done()  # its batch waits for the engine database's lock on the engine thread
        outbox_lock = hold_write_lock(Path(cfg.store.path))
        await asyncio.sleep(7.0 - (time.monotonic() - began))
        release(engine_lock)  # the engine commit goes through; the outbox write now waits for the other lock
        await asyncio.sleep(BUSY_TIMEOUT + READYZ_JOB_GRACE + 0.5 - (time.monotonic() - began))
        assert not posted.done()
        answer = await readyz(service)
        await asyncio.sleep(max(0.0, 14.5 - (time.monotonic() - began)))
        release(outbox_lock)
        taken = await posted
    assert (taken.status, taken.decision) == (200, "forward"), taken
    assert answer == (200, "ready"), answer


async def test_with_two_databases_a_job_holding_the_engine_thread_past_both_lock_waits_and_the_grace_is_stuck(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], receiver: Receiver
) -> None:
    """``state_in_store = false``, ``busy_timeout`` 0.2 s: a job that holds the engine thread for longer than two
    lock waits and ``READYZ_JOB_GRACE`` is a stuck store (``store_unavailable``), ``ready`` before that and again
    once it ends: the bound of two databases is twice ``busy_timeout`` + the grace, no more."""
    _world, reference = world_and_reference
    cfg: ServiceConfig = pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=False)
    cfg = replace(cfg, tick_interval=3600.0, store=replace(cfg.store, busy_timeout=0.2))
    stuck = 2 * cfg.store.busy_timeout + READYZ_JOB_GRACE
    service = make_service(build_gateway(cfg))
    async with running(service):
        proc = service.processor
        assert isinstance(proc, GatewayProcessor)
        began = time.monotonic()
        # the engine thread held, for real
        job = asyncio.ensure_future(proc.call(lambda: time.sleep(stuck + 1.5)))
        await asyncio.sleep(0.3)
        early = await readyz(service)
        await asyncio.sleep(stuck + 0.3 - (time.monotonic() - began))
        late = await readyz(service)
        await job
        after = await readyz(service)
    assert early == (200, "ready"), early
    assert late == (503, "store_unavailable"), late
    assert after == (200, "ready"), after


async def test_many_concurrent_readyz_during_a_lock_wait_each_answer_ready_within_the_load_balancers_timeout(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], receiver: Receiver
) -> None:
    """``state_in_store = false``, ``busy_timeout`` 5 s: 40 ``/readyz`` at once (several load balancers) while a
    batch waits 3 s for the engine database's lock: each is ``ready`` within 2 s, the batch is then acknowledged,
    and the probes' writes left behind (queued on the engine thread) commit without a failure counted."""
    world, reference = world_and_reference
    cfg: ServiceConfig = pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=False)
    cfg = replace(cfg, tick_interval=3600.0)
    (first,) = outages(world, 1)
    service = make_service(build_gateway(cfg))
    async with (
        running(service),
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        engine_lock = hold_write_lock(engine_db_path(cfg))
        posted = asyncio.ensure_future(dsp.post(first))
        await asyncio.sleep(0.3)
        began = time.monotonic()
        answers = await asyncio.gather(*(readyz(service) for _ in range(40)))
        took = time.monotonic() - began
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - began)))
        release(engine_lock)
        taken = await posted
        assert await readyz(service) == (200, "ready")
        failures = sum(
            float(line.rsplit(" ", 1)[1])
            for line in service.metrics.render().decode().splitlines()
            if line.startswith("duisgw_store_commit_failures_total{")
        )
    assert (taken.status, taken.decision) == (200, "forward"), taken
    assert set(answers) == {(200, "ready")}, answers
    assert took < 2.0, took
    assert failures == 0


@pytest.mark.parametrize("two_databases", [True, False], ids=["engine-database", "one-database"])
async def test_without_traffic_a_lock_held_for_good_is_store_unavailable_from_the_first_probe_it_makes_fail(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],
    receiver: Receiver,
    two_databases: bool,
) -> None:
    """No DSP traffic at all: nothing but ``/readyz``'s own one-page write finds that another process holds a
    database's write lock for good. The first ``/readyz`` answers ``ready`` (its write waits, within
    ``busy_timeout``, 1.5 s); that write's failure at ``busy_timeout`` is the refusal every later ``/readyz`` reads
    (``store_unavailable``, within the load balancer's timeout) until the lock is gone."""
    _world, reference = world_and_reference
    cfg: ServiceConfig = pipeline_config(
        tmp_path, reference, receiver.url, DNO_USER, state_in_store=not two_databases
    )
    cfg = replace(cfg, tick_interval=3600.0, store=replace(cfg.store, busy_timeout=1.5))
    service = make_service(build_gateway(cfg))
    async with running(service):
        locked = engine_db_path(cfg) if two_databases else Path(cfg.store.path)
        holder = hold_write_lock(locked)
        first = await readyz(service)
        await asyncio.sleep(2.0)
        began = time.monotonic()
        later = [await readyz(service) for _ in range(2)]
        took = time.monotonic() - began
        release(holder)
        await asyncio.sleep(1.6)  # (the last probe's wait for the lock ends)
        after = await readyz(service)
    assert first == (200, "ready"), first
    assert later == [(503, "store_unavailable")] * 2, later
    assert took < 2 * 2.0, took
    assert after == (200, "ready"), after
