"""``[server] ingress_processes``: a message that kills (or hangs) the ingress worker classifying it is a
poison message once it has done so to two workers: later deliveries are refused unclassified (400
``classify_worker_died``), its bytes kept once in the rejects table, counted; a hung worker is found within
``[server] ingress_hang_timeout``, killed and replaced; other messages keep flowing meanwhile.

Real spawned worker processes (the layout of tests/service/test_ingress_processes.py, whose helpers these
tests reuse). A worker is made to die or hang on a chosen message by a test-only ``sitecustomize``
(tests/service/poisonhook/) put on the workers' ``PYTHONPATH``, armed by ``DUISGW_TEST_POISON_MARKER``: classifying
a body that contains the marker sends the worker SIGSEGV, ``os._exit`` or an endless sleep holding its event
loop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from servicekit import DNO_USER, Lab, Receiver, make_lab, pipeline_config, running, timed
from test_ingress_processes import counters

from gateway.service.api import Lane
from gateway.service.app import Service
from gateway.service.ingress_workers import IngressPool, _Slot
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, Posted, TimedMessage

MARKER = "duisgw-test-poison-7f3a"
HOOK = Path(__file__).resolve().parent / "poisonhook"  # its sitecustomize.py arms the workers
CODE = "classify_worker_died"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab("ingress-poison", tmp_path_factory.mktemp("reference"), stream=12, first_meter=300,
                    first_counter=1300)  # fmt: skip


@pytest.fixture
def poison_hook(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Arm the test-only hook for the workers the test starts (spawned: they inherit the environment)."""

    def arm(action: str, once: Path | None = None) -> None:
        path = os.environ.get("PYTHONPATH", "")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HOOK), path) if p))
        monkeypatch.setenv("DUISGW_TEST_POISON_MARKER", MARKER)
        monkeypatch.setenv("DUISGW_TEST_POISON_ACTION", action)
        if once is not None:
            monkeypatch.setenv("DUISGW_TEST_POISON_ONCE", str(once))

    return arm


def poisoned(lab: Lab) -> TimedMessage:
    """A genuine AD1 of the lab's stream carrying the marker in a comment after its root element."""
    first = timed(lab.stream)[0]
    return replace(first, body=first.body + f"<!--{MARKER}-->".encode())


def normal(lab: Lab, i: int) -> TimedMessage:
    return timed(lab.stream)[1 + i]


async def post(service: Service, msg: TimedMessage) -> Posted | None:
    """One POST on a connection of its own; None when the connection dropped without an answer."""
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=60)
        ) as http,
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, session=http, retry_for=0) as dsp,
    ):
        try:
            return await dsp.post(msg)
        except aiohttp.ClientError:
            return None


async def until(check: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def replaced(pool: IngressPool, restarts: int, processes: int) -> None:
    """Wait until ``restarts`` workers were started to replace dead ones and ``processes`` serve."""
    await until(lambda: pool.restarts == restarts and pool.live == processes)


async def poison_rows(service: Service) -> list[dict[str, Any]]:
    return [r for r in await service.rejects.all() if r["reason"] == CODE]


def start(
    tmp_path: Path, lab: Lab, receiver: Receiver, processes: int, hang_timeout: float = 30.0
) -> Service:
    """test_ingress_processes's gateway (the decision pipeline) with ``processes`` ingress workers."""
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
    server = replace(cfg.server, ingress_processes=processes, ingress_hang_timeout=hang_timeout)
    return make_service(build_gateway(replace(cfg, server=server)))


async def test_a_message_that_killed_two_workers_is_refused_400_unclassified_kept_once_and_counted(
    tmp_path: Path, lab: Lab, receiver: Receiver, poison_hook: Callable[..., None]
) -> None:
    poison_hook("segv")
    service = start(tmp_path, lab, receiver, 2)
    m = poisoned(lab)
    async with running(service):
        pool = service.ingress_pool
        assert pool is not None
        # the worker classifying it died: no answer (the DSP re-delivers)
        assert await post(service, m) is None
        await replaced(pool, 1, 2)
        first = await post(service, normal(lab, 0))  # other messages keep flowing
        assert first is not None and (first.status, first.decision) == (200, "forward")
        assert await poison_rows(service) == []  # one death proves nothing: no verdict yet
        assert await post(service, m) is None  # its re-delivery kills a second worker: now a poison message
        await replaced(pool, 2, 2)
        pids = sorted(pool.pids)
        third = await post(service, m)
        assert third is not None and third.status == 400, third
        assert third.text.startswith(f"{CODE}: ") and hashlib.sha256(m.body).hexdigest() in third.text
        fourth = await post(service, m)
        assert fourth is not None and fourth.status == 400
        after = await post(service, normal(lab, 1))
        assert after is not None and (after.status, after.decision) == (200, "forward")
        assert (pool.restarts, sorted(pool.pids)) == (2, pids)  # no third worker killed
        # (the workers' counts are relayed)
        await until(lambda: counters(service, "duisgw_rejects").get(("inline", CODE)) == 3)
        rows = await poison_rows(service)
        assert [(r["lane"], r["user"], r["body"]) for r in rows] == [("inline", "dno-a", m.body)]  # kept once
        assert counters(service, "duisgw_ingress_worker_events") == {("worker-died",): 2, ("poison",): 1}
        # the verdict, then each refused copy
        assert counters(service, "duisgw_rejects") == {("inline", CODE): 3}
        assert counters(service, "duisgw_http_requests") == {("inline", "200"): 2, ("inline", "400"): 2}
        await receiver.wait_for(2)
        assert m.body not in {r.body for r in receiver.log}  # never decided, never forwarded


async def test_a_poison_message_is_still_refused_after_a_restart_without_killing_a_worker_or_a_second_row(
    tmp_path: Path, lab: Lab, receiver: Receiver, poison_hook: Callable[..., None]
) -> None:
    """The poison list is read back from the rejects rows at start (within their retention): a restart does not
    cost two more workers before the message is refused again."""
    poison_hook("segv")
    m = poisoned(lab)
    async with running(start(tmp_path, lab, receiver, 2)) as service:
        pool = service.ingress_pool
        assert pool is not None
        assert await post(service, m) is None
        await replaced(pool, 1, 2)
        assert await post(service, m) is None
        await replaced(pool, 2, 2)
        await until(lambda: counters(service, "duisgw_ingress_worker_events").get(("poison",)) == 1)
    async with running(start(tmp_path, lab, receiver, 2)) as again:
        pool = again.ingress_pool
        assert pool is not None
        refused = await post(again, m)
        assert refused is not None and refused.status == 400 and refused.text.startswith(f"{CODE}: "), refused
        assert pool.restarts == 0  # no worker killed
        assert len(await poison_rows(again)) == 1  # the row kept by the first run, not a second one
        ok = await post(again, normal(lab, 2))
        assert ok is not None and (ok.status, ok.decision) == (200, "forward")


async def test_a_message_that_killed_one_worker_once_is_accepted_normally_on_re_delivery(
    tmp_path: Path, lab: Lab, receiver: Receiver, poison_hook: Callable[..., None]
) -> None:
    poison_hook("exit", once=tmp_path / "died-once")
    service = start(tmp_path, lab, receiver, 2)
    m = poisoned(lab)
    async with running(service):
        pool = service.ingress_pool
        assert pool is not None
        assert await post(service, m) is None
        assert (tmp_path / "died-once").exists()
        await replaced(pool, 1, 2)
        again = await post(service, m)  # the death was not the message's doing: classified, decided
        assert again is not None and (again.status, again.decision) == (200, "forward"), again
        await receiver.wait_for(1)
        assert [r.body for r in receiver.log] == [m.body]
        assert pool.restarts == 1
        assert await poison_rows(service) == []
        assert counters(service, "duisgw_ingress_worker_events") == {("worker-died",): 1}
        assert ("inline", CODE) not in counters(service, "duisgw_rejects")


async def test_a_message_that_hangs_a_worker_is_killed_within_the_hang_timeout_and_poison_after_two_hangs(
    tmp_path: Path, lab: Lab, receiver: Receiver, poison_hook: Callable[..., None]
) -> None:
    poison_hook("hang")
    timeout = 1.5
    service = start(tmp_path, lab, receiver, 2, hang_timeout=timeout)
    m = poisoned(lab)
    async with running(service):
        pool = service.ingress_pool
        assert pool is not None
        for n in (1, 2):
            t0 = time.monotonic()
            hung = asyncio.create_task(post(service, m))
            await asyncio.sleep(0.3)  # it is being classified (for ever) by one worker
            assert not hung.done()
            # the other worker answers meanwhile (a new connection: the hung worker accepts none)
            other = await post(service, normal(lab, n))
            assert other is not None and (other.status, other.decision) == (200, "forward")
            assert await hung is None  # killed: its connection dropped
            took = time.monotonic() - t0
            # found once it has held its event loop for the timeout, at most two ping periods later
            assert timeout <= took < timeout + 2 * timeout / 5 + 0.5, took
            await replaced(pool, n, 2)
        refused = await post(service, m)
        assert refused is not None and (refused.status, refused.text.split(":")[0]) == (400, CODE)
        assert pool.restarts == 2
        await until(lambda: counters(service, "duisgw_rejects").get(("inline", CODE)) == 2)
        assert [r["body"] for r in await poison_rows(service)] == [m.body]
        assert counters(service, "duisgw_ingress_worker_events") == {
            ("worker-died",): 2,
            ("hung",): 2,
            ("poison",): 1,
        }


async def test_idle_and_busy_workers_answer_the_hang_watch_and_are_not_killed(
    tmp_path: Path, lab: Lab, receiver: Receiver
) -> None:
    service = start(tmp_path, lab, receiver, 2, hang_timeout=0.3)
    async with running(service):
        pool = service.ingress_pool
        assert pool is not None
        pids = sorted(pool.pids)
        await asyncio.sleep(1.5)  # idle: five timeouts
        answers = await asyncio.gather(*(post(service, msg) for msg in timed(lab.stream)))
        assert [a.status if a else None for a in answers] == [200] * len(lab.stream.steps)
        await asyncio.sleep(0.5)
        assert (pool.restarts, sorted(pool.pids)) == (0, pids)
        assert counters(service, "duisgw_ingress_worker_events") == {}


def test_the_slot_holds_the_message_being_classified_and_only_its_digest_when_over_its_capacity() -> None:
    slot = _Slot.create(64)
    try:
        assert slot.take() is None  # nothing classified yet
        body = b"<x>" + b"a" * 50 + b"</x>"
        slot.hold(Lane.INLINE, "dno-a", body)
        held = slot.take()
        assert held is not None
        assert (held.digest, held.length, held.lane, held.user, held.body) == (
            hashlib.sha256(body).digest(), len(body), "inline", "dno-a", body
        )  # fmt: skip
        started = slot.started()
        assert 0 < time.monotonic() - started < 5
        slot.clear()
        assert slot.take() is None
        assert slot.started() == started  # kept: the hang watch's evidence of progress
        big = b"b" * 65
        slot.hold(Lane.OBSERVE, None, big)
        held = slot.take()
        assert held is not None
        assert (held.digest, held.length, held.lane, held.user, held.body) == (
            hashlib.sha256(big).digest(), 65, "observe", None, None
        )  # fmt: skip
    finally:
        slot.close()
