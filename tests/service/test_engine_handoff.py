"""The hand-off between the event loop and the engine thread (``GatewayProcessor._arm`` / ``_pull``).

The engine thread takes each batch when it starts, not when the event loop formed it, so it goes from
one committed batch to the next without waiting for the event loop. Pinned down: jobs are still decided
in the order they were queued; a call queued between them runs after exactly the jobs queued before it;
requests queued together share engine transactions (group commit); and closing answers everything that
was queued before the close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from servicekit import Receiver, pipeline_config, running
from test_pipeline_outbox import DNO_USER, outages

from gateway.service.api import AcceptResult, Lane
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import TimedMessage
from gateway.testkit.scenario import World


@pytest.fixture(scope="module")
def world_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, Path]]:
    world = World.generated("engine-handoff")
    return world, world.write_reference(tmp_path_factory.mktemp("reference"))


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, reference: dict[str, Path]) -> AsyncIterator[tuple[GatewayProcessor, Receiver]]:
    """A running gateway (pipeline mode, one DNO) and its DNO receiver; yields the processor."""
    receiver = Receiver()
    await receiver.start()
    try:
        gateway = build_gateway(pipeline_config(tmp_path, reference, receiver.url, DNO_USER))
        async with running(make_service(gateway)):
            assert gateway.processor is not None and gateway.processor.durable is not None
            yield gateway.processor, receiver
    finally:
        await receiver.stop()


def accept(proc: GatewayProcessor, msgs: list[TimedMessage]) -> Iterator[asyncio.Future[AcceptResult]]:
    """Each message classified now, then queued for a decision (a task: it reaches the engine queue at
    the next loop iteration, in the order of the tasks)."""
    for m in msgs:
        c = proc.classifier.classify("inline", m.body, m.at)
        yield asyncio.ensure_future(proc.accept_classified(Lane.INLINE, "dno-a", m.body, m.at, c))


async def test_queued_jobs_are_decided_in_order_in_shared_transactions_and_calls_see_what_preceded_them(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    world, reference = world_and_reference
    msgs = outages(world, 30)
    async with serving(tmp_path, reference) as (proc, receiver):
        assert proc.durable is not None
        store = proc.durable.store

        def kept() -> int:
            return len(store.messages())

        base = await proc.call(kept)
        batches = proc.batches
        tasks: list[asyncio.Future[Any]] = []
        for i, task in enumerate(accept(proc, msgs)):
            tasks.append(task)
            if i in (0, 9, 19):  # a call queued right behind the 1st, 10th and 20th request
                tasks.append(asyncio.ensure_future(proc.call(kept)))
        results = await asyncio.gather(*tasks)

        answers = [r for r in results if isinstance(r, AcceptResult)]
        assert [(a.status, a.decision) for a in answers] == [(200, "forward")] * len(msgs)
        assert [r for r in results if isinstance(r, int)] == [base + 1, base + 10, base + 20]
        order = [bytes(m["raw"]) for m in await proc.call(store.messages)][base:]
        assert order == [m.body for m in msgs]
        taken = proc.batches - batches
        assert 1 <= taken < len(msgs), taken  # group commit: requests queued together share a batch
        await receiver.wait_for(len(msgs))


async def test_closing_answers_every_job_queued_before_the_close(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    world, reference = world_and_reference
    msgs = outages(world, 12)
    async with serving(tmp_path, reference) as (proc, _receiver):
        tasks = list(accept(proc, msgs))
        await asyncio.sleep(0)  # every request is queued for the engine thread
        await proc.aclose()
        assert all(t.done() for t in tasks)
        assert [(t.result().status, t.result().decision) for t in tasks] == [(200, "forward")] * len(msgs)
