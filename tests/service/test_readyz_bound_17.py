"""``/readyz`` answers within its bound while one job holds the engine thread, and without lying (seventeenth
session).

Both of ``/readyz``'s store probes — the transport store's one-page write and, with ``[pipeline] state_in_store =
false``, the engine database's — run on the engine thread (the transport store's one thread), between two of its
jobs. One long job made them wait: a batch waiting for a lock another process holds (within ``[store]
busy_timeout``, after which the batch commits), a big batch, a checkpoint. Each probe gave up after 2 s and
``/readyz`` answered ``503 store_unavailable`` — after 2 s or more, past a load balancer's usual 2 s timeout — while
the store recorded every message: the instance was taken out of rotation while healthy.

Now the probes are awaited together for ``READYZ_PROBE_WAIT`` (1 s); one not answered by then is answered from
the last outcome: ``ready`` while the engine thread runs a job that began less than ``busy_timeout`` +
``READYZ_JOB_GRACE`` seconds ago and no database refuses (no transaction failed for a store reason since it last
recorded, its files as opened), else ``store_unavailable``. The jobs are long for real: another connection holds a
database's write lock, as another process would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from servicekit import Receiver, outages, pipeline_config, running, write_lock

from gateway.service.app import READYZ_JOB_GRACE, READYZ_PROBE_WAIT, Service
from gateway.service.config import ServiceConfig
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import World
from gbcs.eui import format_eui

DNO_USER = format_eui(DNO_EUI)
LOAD_BALANCER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def world_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, Path]]:
    world = World.generated("readyz-bound-17")
    return world, world.write_reference(tmp_path_factory.mktemp("reference"))


def config(
    tmp_path: Path,
    reference: dict[str, Path],
    receiver: Receiver,
    *,
    two_databases: bool,
    busy_timeout: float,
) -> ServiceConfig:
    cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=not two_databases)
    return replace(cfg, tick_interval=3600.0, store=replace(cfg.store, busy_timeout=busy_timeout))


@pytest.fixture
async def dsp_and_gateway(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],
    receiver: Receiver,
) -> AsyncIterator[tuple[DspSimulator, Service, ServiceConfig]]:
    two_databases, busy_timeout = request.param
    _world, reference = world_and_reference
    cfg = config(tmp_path, reference, receiver, two_databases=two_databases, busy_timeout=busy_timeout)
    service = make_service(build_gateway(cfg))
    async with (
        running(service),
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        yield dsp, service, cfg


async def readyz(service: Service) -> tuple[int, str, float]:
    began = time.monotonic()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{service.admin_port}/readyz") as r,
    ):
        return r.status, (await r.text()).strip(), time.monotonic() - began


def locked_db(cfg: ServiceConfig, two_databases: bool) -> Path:
    """The database a batch of decisions opens its write transaction in first: the engine's."""
    return engine_db_path(cfg) if two_databases else Path(cfg.store.path)


@pytest.mark.parametrize(
    "dsp_and_gateway", [(True, 5.0), (False, 5.0)], ids=["two-databases", "one-database"], indirect=True
)
async def test_readyz_says_ready_within_the_bound_while_a_batch_waits_for_a_lock_it_then_gets(
    dsp_and_gateway: tuple[DspSimulator, Service, ServiceConfig],
    world_and_reference: tuple[World, dict[str, Path]],
) -> None:
    """Another process holds the database's write lock for 3 s (under ``busy_timeout``, 5 s). A DSP message's batch
    waits for it on the engine thread, and is then decided and acknowledged. ``/readyz`` meanwhile: ``ready`` within
    the bound. Was: ``503 store_unavailable`` after 2 s (both probes behind that batch)."""
    dsp, service, cfg = dsp_and_gateway
    world, _reference = world_and_reference
    (first,) = outages(world, 1)
    two_databases = cfg.pipeline.state_in_store is False
    assert (await readyz(service))[:2] == (200, "ready")
    with write_lock(locked_db(cfg, two_databases)):
        held = time.monotonic()
        posted = asyncio.ensure_future(dsp.post(first))
        await asyncio.sleep(0.3)
        assert not posted.done()  # its batch waits for the lock on the engine thread
        answers = [await readyz(service) for _ in range(2)]
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - held)))
    taken = await posted
    assert (taken.status, taken.decision) == (200, "forward"), taken  # the store recorded it all along
    for status, text, took in answers:
        assert (status, text) == (200, "ready"), answers
        assert took < LOAD_BALANCER_TIMEOUT, answers
    assert (await readyz(service))[:2] == (200, "ready")


@pytest.mark.parametrize("dsp_and_gateway", [(True, 1.5)], ids=["two-databases"], indirect=True)
async def test_readyz_says_store_unavailable_within_the_bound_once_the_waiting_batch_was_refused(
    dsp_and_gateway: tuple[DspSimulator, Service, ServiceConfig],
    world_and_reference: tuple[World, dict[str, Path]],
) -> None:
    """The lock outlasts ``busy_timeout`` (1.5 s): the batch is refused (503) and from then on ``/readyz`` says
    ``store_unavailable`` — within the bound, though its own probe of the engine database again waits for the lock —
    until the lock is gone. Answering from the last outcome never says ``ready`` after a refusal."""
    dsp, service, cfg = dsp_and_gateway
    world, _reference = world_and_reference
    (first,) = outages(world, 1)
    with write_lock(engine_db_path(cfg)):
        posted = asyncio.ensure_future(dsp.post(first))
        await asyncio.sleep(0.3)
        while_waiting = await readyz(service)
        refused = await posted
        after_refusal = [await readyz(service) for _ in range(2)]
    assert refused.status == 503 and refused.text.startswith("store_unavailable"), refused
    assert while_waiting[:2] == (200, "ready") and while_waiting[2] < LOAD_BALANCER_TIMEOUT, while_waiting
    for status, text, took in after_refusal:
        assert (status, text) == (503, "store_unavailable"), after_refusal
        assert took < LOAD_BALANCER_TIMEOUT, after_refusal
    await asyncio.sleep(1.6)  # (the last probe's wait for the lock ends)
    assert (await readyz(service))[:2] == (200, "ready")
    taken = await dsp.post(first)
    assert (taken.status, taken.decision) == (200, "forward"), taken


@pytest.mark.parametrize("dsp_and_gateway", [(False, 0.2)], ids=["one-database"], indirect=True)
async def test_readyz_says_store_unavailable_when_one_job_holds_the_engine_thread_past_its_grace(
    dsp_and_gateway: tuple[DspSimulator, Service, ServiceConfig],
) -> None:
    """A job that has held the engine thread longer than ``busy_timeout`` + ``READYZ_JOB_GRACE`` is not a busy store
    but a stuck one (no lock wait lasts that long: it fails at ``busy_timeout``): ``store_unavailable``, within the
    bound; ``ready`` again once it ends."""
    _dsp, service, cfg = dsp_and_gateway
    proc = service.processor
    assert isinstance(proc, GatewayProcessor)
    stuck = cfg.store.busy_timeout + READYZ_JOB_GRACE
    job = asyncio.ensure_future(
        proc.call(lambda: time.sleep(stuck + 1.5))
    )  # the engine thread held, for real
    await asyncio.sleep(0.3)
    early = await readyz(service)
    await asyncio.sleep(stuck - 0.3 - early[2] + 0.2)
    late = await readyz(service)
    await job
    assert early[:2] == (200, "ready") and early[2] < READYZ_PROBE_WAIT + 0.5, early
    assert late[:2] == (503, "store_unavailable") and late[2] < READYZ_PROBE_WAIT + 0.5, late
    assert (await readyz(service))[:2] == (200, "ready")
