"""``[pipeline] classify_processes``: classification in worker processes, micro-batched.

The gateway runs in this process (``build_gateway`` + ``make_service``, real sockets, a real DNO
receiver); the classify workers are real spawned processes building the real classifier from the
same reference data as the in-process one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from servicekit import Lab, Receiver, make_lab, pipeline_config, play_demo, running, timed

from gateway.pipeline import Classifier, ClassifierSpec, LaneName
from gateway.service.config import config_from_mapping
from gateway.service.processor import ClassifyPool, ClassifyWorkerDied, GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, Posted
from gateway.testkit.messages import DNO_EUI
from gbcs.eui import format_eui
from tests.processes import children

DNO_USER = format_eui(DNO_EUI)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab("classify-processes", tmp_path_factory.mktemp("reference"), stream=48, first_meter=100, first_counter=500)


def gateway_config(tmp_path: Path, lab: Lab, receiver: Receiver, processes: int) -> Any:
    return pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER, classify_processes=processes)



async def run_demo(
    tmp_path: Path, lab: Lab, processes: int
) -> tuple[list[Posted], dict[str, bytes], dict[str, int]]:
    """The demo (plus a forged AD1 and a non-XML body) through a gateway; its answers, what the DNO
    got, and the verification-failure counts."""
    receiver = Receiver()
    await receiver.start()
    try:
        gateway = build_gateway(gateway_config(tmp_path, lab, receiver, processes))
        service = make_service(gateway)
        async with running(service):
            answers = await play_demo(service, lab, receiver, gateway.engine_config.hold_limit)
            proc = gateway.processor
            assert proc is not None
            pool = proc.classify_pool
            assert (pool is not None) == (processes > 0)
            if pool is not None:
                assert pool.messages == len(lab.demo.steps)  # every message went through the workers
            failures = {
                s.labels["reason"]: int(s.value)
                for m in service.metrics.verify_failures.collect()
                for s in m.samples
                if s.name.endswith("_total")
            }
    finally:
        await receiver.stop()
    return answers, {r.message_id: r.body for r in receiver.log}, failures


async def test_worker_processes_decide_and_answer_exactly_like_the_gateway_process(
    tmp_path: Path, lab: Lab
) -> None:
    in_process = await run_demo(tmp_path / "p0", lab, 0)
    in_workers = await run_demo(tmp_path / "p1", lab, 1)
    answers, delivered, failures = in_workers
    assert [(a.status, a.message_id, a.decision, a.text) for a in answers] == [
        (a.status, a.message_id, a.decision, a.text) for a in in_process[0]
    ]
    assert delivered == in_process[1]
    assert failures == in_process[2]
    # the scenario exercised what it claims: suppressed, forwarded, held, rejected, bad signature
    decisions = {a.decision for a in answers}
    assert {"suppress", "forward", "hold"} <= decisions
    assert [a.status for a in answers].count(400) == 1
    assert any(r.startswith("xml-signature") for r in failures)
    by_label = {s.label: s for s in lab.demo.steps}
    assert by_label["AD1 with a broken DSP signature"].message_id in delivered
    for step in lab.demo.steps:
        if step.expect is not None and step.expect.decision == "suppress":
            assert step.message_id not in delivered
        if step.message_id in delivered:
            assert delivered[step.message_id] == step.body  # original bytes, unmodified


async def test_concurrent_requests_share_worker_tasks(tmp_path: Path, lab: Lab, receiver: Receiver) -> None:
    gateway = build_gateway(gateway_config(tmp_path, lab, receiver, 1))
    service = make_service(gateway)
    async with running(service):
        assert gateway.processor is not None
        pool = gateway.processor.classify_pool
        assert pool is not None
        url = f"http://127.0.0.1:{service.port}"
        messages = timed(lab.stream)
        async with DspSimulator(url, DNO_USER, retry_for=0) as dsp:
            answers = await asyncio.gather(*(dsp.post(m) for m in messages))
        assert [a.status for a in answers] == [200] * len(messages)
        assert pool.messages == len(messages)
        assert pool.tasks < len(messages) / 2, (pool.tasks, pool.messages)  # batched, not one task each
        await receiver.wait_for(len(messages))


async def test_a_worker_killed_mid_stream_is_replaced_and_no_accepted_message_is_lost(
    tmp_path: Path, lab: Lab, receiver: Receiver
) -> None:
    gateway = build_gateway(gateway_config(tmp_path, lab, receiver, 1))
    service = make_service(gateway)
    async with running(service):
        assert gateway.processor is not None
        pool = gateway.processor.classify_pool
        assert pool is not None
        victim = pool.pids[0]
        url = f"http://127.0.0.1:{service.port}"
        messages = timed(lab.stream)
        async with DspSimulator(url, DNO_USER, retry_for=20) as dsp:
            first = [asyncio.create_task(dsp.post(m)) for m in messages[:24]]
            while pool.tasks == 0:  # the worker has work
                await asyncio.sleep(0.001)
            os.kill(victim, signal.SIGKILL)
            rest = [asyncio.create_task(dsp.post(m)) for m in messages[24:]]
            answers = await asyncio.gather(*first, *rest)
        assert [a.status for a in answers] == [200] * len(messages)
        assert pool.restarts >= 1
        assert victim not in pool.pids
        expected = {s.message_id for s in lab.stream.steps}
        await receiver.wait_for(len(expected))
        assert set(receiver.accepted_ids()) == expected
        died = [s.value for m in service.metrics.registry.collect() if m.name == "duisgw_classify_worker_events"
                for s in m.samples if s.name.endswith("_total") and s.labels["event"] == "worker-died"]  # fmt: skip
        assert died and died[0] >= 1


async def test_clean_shutdown_classifies_what_was_queued_and_leaves_no_child_process(
    tmp_path: Path, lab: Lab, receiver: Receiver
) -> None:
    before = children(os.getpid())  # e.g. a broker another test module started stays ours
    gateway = build_gateway(gateway_config(tmp_path, lab, receiver, 2))
    service = make_service(gateway)
    await service.start()
    try:
        assert gateway.processor is not None
        pool = gateway.processor.classify_pool
        assert pool is not None
        pids = list(pool.pids)
        assert len(set(pids)) == 2
        assert all(Path(f"/proc/{pid}").exists() for pid in pids)
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            answers = await asyncio.gather(*(dsp.post(m) for m in timed(lab.stream)[:8]))
        assert [a.status for a in answers] == [200] * 8
        # calls still queued when the pool is closed are classified first (graceful drain)
        spec = gateway.classifier_spec
        assert spec is not None
        now = datetime.now(UTC)
        pending = [asyncio.create_task(pool.classify("inline", s.body, now)) for s in lab.stream.steps[:6]]
        await asyncio.sleep(0)
        await pool.aclose()
        assert all(t.result().events for t in pending)
    finally:
        await service.stop()
    assert multiprocessing.active_children() == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert children(os.getpid()) - before <= {resource_tracker_pid()}  # multiprocessing's own, ends with us


def resource_tracker_pid() -> int | None:
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)


# ------------------------------------------------------------------------------------------ poison message

CRASH_MARKER = b"<!-- kills the classify worker -->"


class CrashingClassifier(Classifier):
    """A classifier whose process dies on one input (as a native crash in a parser would)."""

    def classify(self, lane: LaneName, body: bytes, arrival: datetime) -> Any:
        if CRASH_MARKER in body:
            os._exit(70)
        return super().classify(lane, body, arrival)


@dataclass(frozen=True)
class CrashingSpec(ClassifierSpec):
    def build(self) -> Classifier:
        base = super().build()
        return CrashingClassifier(certificates=base.certificates, signing_policy=base.signing_policy,
                                  gbcs_verifier=base.gbcs)  # fmt: skip


async def test_a_message_that_kills_its_worker_twice_is_answered_503_and_its_neighbours_are_classified(
    lab: Lab,
) -> None:
    events: list[str] = []
    spec = CrashingSpec(certs=lab.reference["certs"], gbcs_keys=lab.reference["gbcs_keys"])
    pool = ClassifyPool(spec, 1, on_event=events.append)
    await pool.start()
    try:
        bodies = [s.body for s in lab.stream.steps[:5]]
        bodies.insert(2, bodies[2] + CRASH_MARKER)
        now = datetime.now(UTC)
        results = await asyncio.gather(
            *(pool.classify("inline", b, now) for b in bodies), return_exceptions=True
        )
        assert isinstance(results[2], ClassifyWorkerDied)
        good = [r for i, r in enumerate(results) if i != 2]
        assert [r.message_id for r in good] == [s.message_id for s in lab.stream.steps[:5]]  # type: ignore[union-attr]
        assert events == ["worker-died", "worker-died", "poison"]
        # the pool still works after two deaths
        again = await pool.classify("inline", bodies[0], now)
        assert again.message_id == lab.stream.steps[0].message_id
    finally:
        await pool.aclose()
    assert multiprocessing.active_children() == []


# ------------------------------------------------------------------------------------------ config


def test_classify_processes_must_not_be_negative() -> None:
    from gateway.service.config import ConfigError

    with pytest.raises(ConfigError) as err:
        config_from_mapping({"pipeline": {"classify_processes": -1}})
    assert "pipeline.classify_processes: must be >= 0" in err.value.problems
    assert config_from_mapping({"pipeline": {"classify_processes": 2}}).pipeline.classify_processes == 2


def test_processes_without_a_spec_are_refused() -> None:
    with pytest.raises(ValueError, match="classifier_spec"):
        GatewayProcessor(classifier=None, durable_factory=None, store=None, outbox=None, rejects=None,  # type: ignore[arg-type]
                         metrics=None, destinations=(), classify_processes=1)  # type: ignore[arg-type]  # fmt: skip
