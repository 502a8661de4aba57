"""One ingress worker frame's classified messages decided together (``GatewayProcessor.accept_classified_many``).

The gateway process queues the evidence of a whole frame for the engine thread at once and answers it with
one future, instead of a task, a coroutine chain and a future per message. Pinned down: each message gets
exactly the answer ``accept_classified`` gives it one at a time (activation then suppressed AD1, forward,
duplicate, rejection), in frame order and in the same stored order; a closed engine answers each message
503; and a caller that goes away releases the in-flight marks of what was already decided.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from test_engine_handoff import serving

from gateway.pipeline import Classified
from gateway.service.api import AcceptResult, Lane, StoreUnavailable
from gateway.service.processor import GatewayProcessor
from gateway.testkit.scenario import World

T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def world_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, Path]]:
    world = World.generated("accept-many")
    world.meter(300)
    world.meter(301)
    return world, world.write_reference(tmp_path_factory.mktemp("reference"))


def frame(world: World) -> list[tuple[Lane, bytes, dt.datetime]]:
    """An activation, the AD1 it explains (suppressed), an unrelated AD1, a re-delivery of that AD1 and a malformed body."""
    f = world.factory
    esme, ch, mpan = world.meter(300)
    _esme2, ch2, mpan2 = world.meter(301)
    act = f.activate_response(esme, 9100, T0)
    held = f.ad1(ch, mpan, T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=2), 9101)
    plain = f.ad1(ch2, mpan2, T0 - dt.timedelta(hours=1), T0 + dt.timedelta(minutes=2), 9102)
    at = T0 + dt.timedelta(minutes=2)
    return [
        (Lane.OBSERVE, act, T0),
        (Lane.INLINE, held, at),
        (Lane.INLINE, plain, at),
        (Lane.INLINE, plain, at + dt.timedelta(seconds=5)),
        (Lane.INLINE, b"<DUISResponse><not-closed>", at),
    ]


def classified(proc: GatewayProcessor, msgs: list[tuple[Lane, bytes, dt.datetime]]) -> list[Classified]:
    return [proc.classifier.classify("inline" if lane is Lane.INLINE else "observe", body, at) for lane, body, at in msgs]


def requests(
    proc: GatewayProcessor, msgs: list[tuple[Lane, bytes, dt.datetime]]
) -> list[tuple[Lane, str, bytes, dt.datetime, Classified]]:
    """The frame as an ingress worker hands it over: each message classified, addressed to ``dno-a``."""
    return [(lane, "dno-a", body, at, c) for (lane, body, at), c in zip(msgs, classified(proc, msgs), strict=True)]


def answer(r: AcceptResult | BaseException) -> tuple[Any, ...]:
    if isinstance(r, BaseException):
        return (type(r).__name__,)
    return (r.accepted, r.status, r.reason, r.decision, r.kind, r.message_id)


async def test_a_frame_decided_together_answers_each_message_as_one_at_a_time_does(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    world, reference = world_and_reference
    msgs = frame(world)
    async with serving(tmp_path / "one", reference) as (proc, _receiver):
        one_by_one = []
        for (lane, body, at), c in zip(msgs, classified(proc, msgs), strict=True):
            try:
                one_by_one.append(answer(await proc.accept_classified(lane, "dno-a", body, at, c)))
            except Exception as exc:
                one_by_one.append(answer(exc))
        assert proc.durable is not None
        stored_one = [bytes(m["raw"]) for m in await proc.call(proc.durable.store.messages)]
    async with serving(tmp_path / "many", reference) as (proc, _receiver):
        together = [answer(r) for r in await proc.accept_classified_many(requests(proc, msgs))]
        assert proc.durable is not None
        stored_many = [bytes(m["raw"]) for m in await proc.call(proc.durable.store.messages)]
    assert together == one_by_one
    # the cases the frame was built for: evidence, suppressed, forwarded, its re-delivery, malformed
    assert [(a[1], a[2], a[3]) for a in together] == [
        (204, "observed", "observe"),
        (200, "activation-window", "suppress"),
        (200, "no-activation", "forward"),
        (200, "duplicate", "forward"),
        (400, "malformed_xml", None),
    ]
    assert stored_many == stored_one


async def test_a_closed_engine_answers_every_message_of_the_frame_unavailable(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    world, reference = world_and_reference
    msgs = frame(world)[1:3]
    async with serving(tmp_path, reference) as (proc, _receiver):
        reqs = requests(proc, msgs)
        await proc.aclose()
        results = await proc.accept_classified_many(reqs)
    assert [type(r) for r in results] == [StoreUnavailable, StoreUnavailable]


async def test_a_frame_whose_caller_goes_away_leaves_no_forward_marked_in_flight(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    world, reference = world_and_reference
    msgs = frame(world)[2:3]
    async with serving(tmp_path, reference) as (proc, _receiver):
        task = asyncio.ensure_future(proc.accept_classified_many(requests(proc, msgs)))
        await asyncio.sleep(0)  # queued for the engine thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await proc.call(lambda: None)  # the engine has answered the frame's job (in order before this call)
        assert proc._inflight == {}
