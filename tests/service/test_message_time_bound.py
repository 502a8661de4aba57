"""``clock = "message"``, a message WITHOUT an ``X-DUISGW-Arrival`` header: its own time
(``ResponseDateTime``) is its arrival, and through it the engine clock, which never goes back. An own time
more than ``arrival_max_delay`` ahead of the engine clock (once the first message has set it), or one the
engine could not add its retention to, is bad input: 400 ``implausible_message_time``, the bytes kept in the
rejects table and counted in ``duisgw_rejects_total``, nothing decided, the clock unmoved — in the gateway
process and behind an ingress worker process alike. An own time far BEHIND the clock is a late message,
decided as one, and the clock does not go back."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from servicekit import DNO_USER, Receiver, counters, pipeline_config, running

from gateway.service.app import Service
from gateway.service.config import ServiceConfig
from gateway.service.processor import GatewayProcessor, engine_clock, own_time_problem
from gateway.service.serve import build_gateway, make_service
from gateway.testkit.scenario import World

WORKERS = pytest.mark.parametrize("ingress_processes", [0, 1], ids=["gateway-process", "ingress-worker"])
NOON = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)
XML = {"Content-Type": "application/xml"}


# ------------------------------------------------------------------------------------------ the rule


def test_an_own_time_more_than_arrival_max_delay_ahead_of_the_engine_clock_is_a_problem() -> None:
    margin = dt.timedelta(days=9)
    ahead = own_time_problem(NOON + dt.timedelta(days=30), NOON, max_delay=WEEK, margin=margin)
    assert ahead is not None and "30 days, 0:00:00 ahead of the engine clock 2026-03-02T12:00:00Z" in ahead, (
        ahead
    )
    assert "arrival_max_delay: 7 days" in ahead and "X-DUISGW-Arrival" in ahead and "/admin/tick" in ahead
    just_over = own_time_problem(NOON + WEEK + dt.timedelta(seconds=1), NOON, max_delay=WEEK, margin=margin)
    assert just_over is not None
    assert own_time_problem(NOON + WEEK, NOON, max_delay=WEEK, margin=margin) is None  # at the bound: taken


def test_an_own_time_behind_the_engine_clock_is_late_not_a_problem() -> None:
    """The clock does not go back: a message 30 days (or 1000 years) late is simply late."""
    margin = dt.timedelta(days=9)
    assert own_time_problem(NOON - dt.timedelta(days=30), NOON, max_delay=WEEK, margin=margin) is None
    assert own_time_problem(NOON.replace(year=1026), NOON, max_delay=WEEK, margin=margin) is None


def test_before_the_engine_clock_is_set_only_the_calendar_bounds_an_own_time() -> None:
    margin = dt.timedelta(days=9)
    assert own_time_problem(NOON + dt.timedelta(days=3650), None, max_delay=WEEK, margin=margin) is None
    for edge in ("9999-12-31T23:00:00+00:00", "0001-01-01T01:00:00+00:00"):
        problem = own_time_problem(dt.datetime.fromisoformat(edge), None, max_delay=WEEK, margin=margin)
        assert (
            problem is not None and problem.startswith("the message's own time ") and "cannot be" in problem
        )
    # with the clock set, the calendar still bounds a time behind it
    year_1 = dt.datetime(1, 1, 1, 1, tzinfo=dt.UTC)
    assert own_time_problem(year_1, NOON, max_delay=WEEK, margin=margin) is not None


# ------------------------------------------------------------------------------------------ the service


@dataclass(frozen=True)
class Traffic:
    world: World
    reference: dict[str, Path]
    ch: int
    mpan: str
    esme2: int

    def ad1(self, at: dt.datetime, counter: int) -> bytes:
        """A DSP-signed AD1 whose own time (``ResponseDateTime``) is ``at``: a genuine outage (forwarded)."""
        return self.world.factory.ad1(self.ch, self.mpan, at - dt.timedelta(minutes=2), at, counter)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    world = World.generated("message-time-bound")
    _esme, ch, mpan = world.meter(1)
    esme2, _ch2, _mpan2 = world.meter(2)
    reference = world.write_reference(tmp_path_factory.mktemp("reference"))
    return Traffic(world, reference, ch, mpan, esme2)


def config(tmp_path: Path, traffic: Traffic, receiver: Receiver, ingress_processes: int) -> ServiceConfig:
    cfg = pipeline_config(tmp_path, traffic.reference, receiver.url, DNO_USER)
    return replace(cfg, server=replace(cfg.server, ingress_processes=ingress_processes))


async def post(service: Service, body: bytes, lane: str = "inline") -> tuple[int, str]:
    """POST without ``X-DUISGW-Arrival``."""
    path = f"/duis/dno/{DNO_USER}" if lane == "inline" else "/duis/observe"
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{service.port}{path}", data=body, headers=XML) as resp,
    ):
        return resp.status, await resp.text()


async def settled(
    service: Service, name: str, expected: dict[tuple[str, ...], float]
) -> dict[tuple[str, ...], float]:
    """The counters once they reach ``expected`` (an ingress worker relays its counts after it answers)."""
    deadline = time.monotonic() + 5
    while (got := counters(service, name)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return got


def near(clock: dt.datetime | None, at: dt.datetime) -> bool:
    """The engine clock is ``at``, advanced at wall speed by the ticks since (a test takes seconds)."""
    return clock is not None and at <= clock < at + dt.timedelta(seconds=20)


@WORKERS
async def test_an_own_time_30_days_ahead_of_the_engine_clock_is_refused_kept_counted_and_never_moves_the_clock(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, ingress_processes: int
) -> None:
    first = traffic.ad1(NOON, 1001)
    ahead = traffic.ad1(NOON + dt.timedelta(days=30), 1002)
    response = traffic.world.factory.activate_response(traffic.esme2, 5002, NOON + dt.timedelta(days=30))
    following = traffic.ad1(NOON + dt.timedelta(minutes=1), 1003)
    service = make_service(build_gateway(config(tmp_path, traffic, receiver, ingress_processes)))
    async with running(service):
        proc = service.processor
        assert isinstance(proc, GatewayProcessor) and proc.durable is not None
        set_clock = await post(service, first)
        clock = engine_clock(proc.durable)
        refused = await post(service, ahead)
        refused_observed = await post(service, response, "observe")
        kept = await service.rejects.all()
        rejects = await settled(service, "duisgw_rejects", {("inline", "implausible_message_time"): 1.0,
                                                           ("observe", "implausible_message_time"): 1.0})  # fmt: skip
        decided = [row["raw"] for row in await proc.call(proc.durable.store.messages)]
        unmoved = engine_clock(proc.durable)
        after = await post(service, following)
        moved = engine_clock(proc.durable)
    assert set_clock[0] == 200 and clock == NOON, (set_clock, clock)  # the first message sets the clock
    assert refused[0] == 400 and refused[1].startswith("implausible_message_time: "), refused
    assert " days, " in refused[1] and "ahead of the engine clock" in refused[1], refused
    assert refused_observed[0] == 400 and refused_observed[1].startswith("implausible_message_time: ")
    assert [(r["lane"], r["reason"], bytes(r["body"])) for r in kept] == [
        ("inline", "implausible_message_time", ahead),
        ("observe", "implausible_message_time", response),
    ]
    assert refused[1].removeprefix("implausible_message_time: ").strip() in kept[0]["detail"]
    assert rejects == {
        ("inline", "implausible_message_time"): 1.0,
        ("observe", "implausible_message_time"): 1.0,
    }
    assert decided == [first]  # only the first message reached the engine
    assert near(unmoved, NOON), unmoved
    assert after[0] == 200 and near(moved, NOON + dt.timedelta(minutes=1)), (after, moved)


async def test_an_own_time_within_arrival_max_delay_ahead_is_taken(
    tmp_path: Path, traffic: Traffic, receiver: Receiver
) -> None:
    service = make_service(build_gateway(config(tmp_path, traffic, receiver, 0)))
    async with running(service):
        proc = service.processor
        assert isinstance(proc, GatewayProcessor) and proc.durable is not None
        answers = [await post(service, traffic.ad1(NOON, 1101)),
                   await post(service, traffic.ad1(NOON + dt.timedelta(days=6, hours=23), 1102))]  # fmt: skip
        clock = engine_clock(proc.durable)
    assert [status for status, _ in answers] == [200, 200], answers
    assert near(clock, NOON + dt.timedelta(days=6, hours=23)), clock


@WORKERS
async def test_an_own_time_30_days_behind_the_engine_clock_is_a_late_message_decided_and_the_clock_stays(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, ingress_processes: int
) -> None:
    service = make_service(build_gateway(config(tmp_path, traffic, receiver, ingress_processes)))
    async with running(service):
        proc = service.processor
        assert isinstance(proc, GatewayProcessor) and proc.durable is not None
        first = await post(service, traffic.ad1(NOON, 1201))
        late = await post(service, traffic.ad1(NOON - dt.timedelta(days=30), 1202))
        clock = engine_clock(proc.durable)
        kept = await service.rejects.all()
    assert first[0] == 200 and late[0] == 200, (first, late)
    assert kept == []
    assert near(clock, NOON), clock  # not back 30 days


@WORKERS
async def test_a_first_message_whose_own_time_the_engine_cannot_compute_with_is_refused(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, ingress_processes: int
) -> None:
    """Before any clock is set there is nothing to be ahead of, but the calendar still bounds the own
    time: retention and windows are added to and subtracted from it."""
    edge = traffic.ad1(dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.UTC), 1301)
    service = make_service(build_gateway(config(tmp_path, traffic, receiver, ingress_processes)))
    async with running(service):
        proc = service.processor
        assert isinstance(proc, GatewayProcessor) and proc.durable is not None
        refused = await post(service, edge)
        clock = engine_clock(proc.durable)
        kept = await service.rejects.all()
        taken = await post(service, traffic.ad1(NOON, 1302))
    assert (
        refused[0] == 400 and refused[1].startswith("implausible_message_time: ") and "cannot" in refused[1]
    )
    assert [(r["reason"], bytes(r["body"])) for r in kept] == [("implausible_message_time", edge)]
    assert clock is None
    assert taken[0] == 200
