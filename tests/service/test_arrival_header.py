"""``clock = "message"``: the ``X-DUISGW-Arrival`` header sets a message's arrival, and through it the
engine clock, which never goes back. A header that is not plausibly this message's arrival is bad input
like any other 400 (``bad_arrival_header``): the bytes are kept in the rejects table and counted in
``duisgw_rejects_total`` (and ``duisgw_http_requests_total``), in the gateway process and in ingress
worker processes alike; nothing is decided or delivered, and the engine clock does not move. Not
plausible: not a date-time at all; earlier than the message's own time (``ResponseDateTime``) by more
than ``arrival_max_skew`` or later than it by more than ``arrival_max_delay``; for a message without an
own time (a request), further than ``arrival_max_delay`` from the engine clock; and in every case, a
date-time the engine could not add its retention to."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict
from servicekit import DNO_USER, Lab, Receiver, counters, make_lab, pipeline_config, running, timed

from gateway.service.app import Service
from gateway.service.config import ServiceConfig
from gateway.service.processor import ARRIVAL_HEADER, GatewayProcessor, engine_clock
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import TimedMessage

WORKERS = pytest.mark.parametrize("ingress_processes", [0, 1], ids=["gateway-process", "ingress-worker"])


async def settled(service: Service, name: str, expected: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    """The counters once they reach ``expected`` (an ingress worker relays its counts after it answers)."""
    deadline = time.monotonic() + 5
    while (got := counters(service, name)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return got


async def post(service: Service, msg: TimedMessage, arrival: str | tuple[str, ...]) -> tuple[int, str]:
    """POST ``msg`` with the arrival header (one header per value of a tuple)."""
    url = f"http://127.0.0.1:{service.port}" + (f"/duis/dno/{DNO_USER}" if msg.lane == "inline" else "/duis/observe")
    values = (arrival,) if isinstance(arrival, str) else arrival
    headers = CIMultiDict([("Content-Type", "application/xml"), *((ARRIVAL_HEADER, v) for v in values)])
    async with aiohttp.ClientSession() as http, http.post(url, data=msg.body, headers=headers) as resp:
        return resp.status, await resp.text()


def config(tmp_path: Path, lab: Lab, receiver: Receiver, ingress_processes: int, **top: object) -> ServiceConfig:
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
    return replace(cfg, server=replace(cfg.server, ingress_processes=ingress_processes), **top)  # type: ignore[arg-type]


async def refused(tmp_path: Path, lab: Lab, msg: TimedMessage, arrival: str | tuple[str, ...], ingress_processes: int,
                  **top: object) -> str:  # fmt: skip
    """Post ``msg`` with this header to a fresh gateway and check it was refused as bad input and kept,
    with nothing decided and the engine clock unmoved; then a plausible header is still taken (and sets
    the clock). Returns the refusal's text."""
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = config(tmp_path, lab, receiver, ingress_processes, **top)
        service = make_service(build_gateway(cfg))
        async with running(service):
            proc = service.processor
            assert isinstance(proc, GatewayProcessor) and proc.durable is not None
            status, text = await post(service, msg, arrival)
            kept = await service.rejects.all()
            rejects = await settled(service, "duisgw_rejects", {(msg.lane, "bad_arrival_header"): 1.0})
            requests = await settled(service, "duisgw_http_requests", {(msg.lane, "400"): 1.0})
            decided = await proc.call(proc.durable.store.messages)
            clock = engine_clock(proc.durable)
            after, _ = await post(service, msg, msg.at.isoformat())  # the same bytes, a plausible arrival
            moved = engine_clock(proc.durable)
    finally:
        await receiver.stop()
    assert status == 400 and text.startswith("bad_arrival_header: "), (status, text)
    assert [(r["lane"], r["reason"], bytes(r["body"])) for r in kept] == [(msg.lane, "bad_arrival_header", msg.body)]
    assert text.removeprefix("bad_arrival_header: ").strip() in kept[0]["detail"]
    assert rejects == {(msg.lane, "bad_arrival_header"): 1.0}
    assert requests == {(msg.lane, "400"): 1.0}
    assert decided == []  # nothing reached the engine
    assert clock is None  # nor its clock
    # the plausible arrival set the clock; a tick may since have advanced it at wall speed (clock = message)
    assert after in (200, 204) and moved is not None and msg.at <= moved < msg.at + dt.timedelta(seconds=10), moved
    return text


@WORKERS
async def test_a_malformed_arrival_header_is_a_kept_and_counted_reject(tmp_path: Path, ingress_processes: int) -> None:
    lab = make_lab("bad-arrival", tmp_path / "reference", stream=1, first_meter=300, first_counter=3000)
    [ad1] = timed(lab.stream)
    text = await refused(tmp_path, lab, ad1, "yesterday-ish", ingress_processes)
    assert "yesterday-ish" in text


@WORKERS
async def test_two_arrival_headers_are_a_kept_and_counted_reject_not_the_first_taken(
    tmp_path: Path, ingress_processes: int
) -> None:
    lab = make_lab("two-arrivals", tmp_path / "reference", stream=1, first_meter=300, first_counter=3000)
    [ad1] = timed(lab.stream)
    text = await refused(tmp_path, lab, ad1, (ad1.at.isoformat(), "garbage"), ingress_processes)
    assert "2 X-DUISGW-Arrival headers" in text


ABSURD = {
    "year-9999": "9999-12-31T23:59:59Z",
    "year-1": "0001-01-01T00:00:00+01:00",
    "an-hour-before-its-own-time": "2026-03-02T11:00:00Z",  # the AD1's ResponseDateTime is 12:00:00
    "8-days-after-its-own-time": "2026-03-10T12:00:01Z",
}


#: why each is refused: no date-time the engine can compute with, or too far from the message's own time
ABSURD_WHY = {
    "year-9999": "X-DUISGW-Arrival 9999-12-31T23:59:59Z cannot be a message's arrival"
    " (the engine computes 9 days, 0:45:00 either side)",
    "year-1": "X-DUISGW-Arrival 0001-01-01T00:00:00+01:00 cannot be a message's arrival"
    " (the engine computes 9 days, 0:45:00 either side)",
    "an-hour-before-its-own-time": "X-DUISGW-Arrival 2026-03-02T11:00:00Z is 1:00:00 before the message's own time"
    " 2026-03-02T12:00:00Z (arrival_max_skew: 0:05:00)",
    "8-days-after-its-own-time": "X-DUISGW-Arrival 2026-03-10T12:00:01Z is 8 days, 0:00:01 after the message's own"
    " time 2026-03-02T12:00:00Z (arrival_max_delay: 7 days, 0:00:00)",
}


@WORKERS
@pytest.mark.parametrize("case", ABSURD.keys())
async def test_an_arrival_header_implausible_for_the_message_is_refused_and_never_moves_the_clock(
    tmp_path: Path, ingress_processes: int, case: str
) -> None:
    lab = make_lab("absurd-arrival", tmp_path / "reference", stream=1, first_meter=300, first_counter=3000)
    [ad1] = timed(lab.stream)
    assert ad1.at == dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)  # its own time, ResponseDateTime
    text = await refused(tmp_path, lab, ad1, ABSURD[case], ingress_processes)
    # each refused for its own reason
    assert text.removeprefix("bad_arrival_header: ").strip() == ABSURD_WHY[case], text


async def test_the_later_bound_is_arrival_max_delay(tmp_path: Path) -> None:
    lab = make_lab("arrival-max-delay", tmp_path / "reference", stream=1, first_meter=300, first_counter=3000)
    [ad1] = timed(lab.stream)
    text = await refused(tmp_path, lab, ad1, "2026-03-03T12:00:01Z", 0, arrival_max_delay=86400.0)
    assert "1 day, 0:00:01 after" in text, text


@WORKERS
async def test_plausible_arrivals_around_the_message_own_time_are_taken(tmp_path: Path, ingress_processes: int, receiver: Receiver) -> None:
    """Within ``arrival_max_skew`` (5 min) before its own time, and ``arrival_max_delay`` (7 days) after."""
    lab = make_lab("plausible-arrival", tmp_path / "reference", stream=2, first_meter=300, first_counter=3000)
    first, second = timed(lab.stream)
    service = make_service(build_gateway(config(tmp_path, lab, receiver, ingress_processes)))
    async with running(service):
        early = (first.at - dt.timedelta(minutes=4, seconds=59)).isoformat()
        late = (second.at + dt.timedelta(days=6, hours=23)).isoformat()
        answers = [await post(service, first, early), await post(service, second, late)]
    assert [status for status, _ in answers] == [200, 200], answers


async def test_a_request_without_an_own_time_is_bounded_by_the_engine_clock(tmp_path: Path, receiver: Receiver) -> None:
    """An 11.3 request has no ResponseDateTime: its header may be at most ``arrival_max_delay`` from the
    engine clock (and, before the clock is set, a date-time the engine can compute with)."""
    lab = make_lab("request-arrival", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    steps = {s.label: s for s in lab.demo.steps}
    request = TimedMessage(*(lambda s: (s.at, s.lane, s.body))(steps["11.3 request, meter 1 (immediate)"]))
    response = TimedMessage(*(lambda s: (s.at, s.lane, s.body))(steps["11.3 response: success"]))
    service = make_service(build_gateway(config(tmp_path, lab, receiver, 0)))
    async with running(service):
        proc = service.processor
        assert isinstance(proc, GatewayProcessor) and proc.durable is not None
        fresh = await post(service, request, "9999-12-31T23:59:59Z")  # no clock yet
        assert engine_clock(proc.durable) is None
        set_clock = await post(service, response, response.at.isoformat())
        clock = engine_clock(proc.durable)
        far = await post(service, request, (response.at + dt.timedelta(days=8)).isoformat())
        near = await post(service, request, (response.at + dt.timedelta(days=6)).isoformat())
    assert fresh[0] == 400 and fresh[1].startswith("bad_arrival_header: "), fresh
    assert set_clock[0] == 204 and clock == response.at
    assert far[0] == 400 and "engine clock" in far[1], far
    assert near[0] == 204, near
