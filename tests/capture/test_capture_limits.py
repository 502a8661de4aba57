"""The capture reader refuses the requests the gateway's HTTP server refuses for their size: aiohttp's
``max_line_size`` (the request target), ``max_field_size`` (header fields, counted as its parser
counts them) and ``max_headers``. Each stream is sent to a running gateway (``Service``, the real
server with its real settings) and, as a capture built here, to the reader: a request the gateway
answers 400 is a ``bad-message`` report naming the limit, never a decided request."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest
from aiohttp import web_protocol

from gateway.capture import CapturedRequest, CaptureWriter, Connection, Exchange, FlowReport, read_capture
from gateway.capture.http import (
    AIOHTTP_MAX_FIELD_SIZE,
    AIOHTTP_MAX_HEADERS,
    AIOHTTP_MAX_LINE_SIZE,
    HttpProblem,
    HttpRequest,
    HttpStreamParser,
)
from gateway.service.app import Service as GatewayService
from tests.capture.packets import T0
from tests.service.servicekit import duis_body, running, service_config

LINE, FIELD, COUNT = AIOHTTP_MAX_LINE_SIZE, AIOHTTP_MAX_FIELD_SIZE, AIOHTTP_MAX_HEADERS
BODY = duis_body(1)


def test_the_limits_mirrored_are_the_installed_aiohttp_servers_defaults() -> None:
    # the gateway's AppRunners pass none of them (checked end to end below), so these apply
    params = inspect.signature(web_protocol.RequestHandler.__init__).parameters
    assert (
        params["max_line_size"].default,
        params["max_field_size"].default,
        params["max_headers"].default,
    ) == (LINE, FIELD, COUNT)


def _request(target: str = "/duis/observe", fields: list[str] | None = None) -> bytes:
    head = ["Host: gw", "Content-Type: application/xml", f"Content-Length: {len(BODY)}", *(fields or [])]
    text = f"POST {target} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in head) + "Connection: close\r\n\r\n"
    return text.encode("latin-1") + BODY


# (case, request bytes, refused by the gateway)
CASES = [
    ("target-at-limit", _request("/duis/observe?" + "q" * (LINE - 14)), False),
    ("target-over-limit", _request("/duis/observe?" + "q" * (LINE - 13)), True),
    ("first-field-at-limit", _request(fields=[]).replace(b"Host: gw", b"Host: " + b"g" * (FIELD - 4)), False),
    (
        "first-field-over-limit",
        _request(fields=[]).replace(b"Host: gw", b"Host: " + b"g" * (FIELD - 3)),
        True,
    ),
    ("one-byte-name-value-at-limit", _request(fields=["X: " + "v" * FIELD]), False),
    ("value-over-limit", _request(fields=["X: " + "v" * (FIELD + 1)]), True),
    ("trailing-whitespace-counts", _request(fields=["X: " + "v" * (FIELD - 1) + "  "]), True),
    ("two-names-at-limit", _request(fields=["A" * (FIELD // 2) + ": 1", "B" * (FIELD // 2) + ": 2"]), False),
    (
        "two-names-over-limit",
        _request(fields=["A" * (FIELD // 2) + ": 1", "B" * (FIELD // 2 + 1) + ": 2"]),
        True,
    ),
    ("headers-at-limit", _request(fields=[f"X-{i}: v" for i in range(COUNT - 4)]), False),
    ("headers-over-limit", _request(fields=[f"X-{i}: v" for i in range(COUNT - 3)]), True),
]


async def _gateway_status(port: int, pieces: list[bytes]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.1)  # one read each
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1])


def _read(tmp_path: Path, stream: bytes) -> tuple[list[CapturedRequest], list[FlowReport]]:
    path = tmp_path / "limits.pcap"
    with CaptureWriter(path, "pcap") as w:
        w.write_connections([Connection([Exchange("/", b"", T0, raw=stream)])])
    items = list(read_capture(path, pair_responses=False))
    return [i for i in items if isinstance(i, CapturedRequest)], [
        i for i in items if isinstance(i, FlowReport)
    ]


async def test_a_request_over_the_gateway_servers_size_limits_is_refused_by_the_reader_as_by_the_gateway(
    tmp_path: Path,
) -> None:
    async with running(GatewayService(service_config(tmp_path))) as svc:
        statuses = {case: await _gateway_status(svc.port, [stream]) for case, stream, _ in CASES}
    assert {case: status == 400 for case, status in statuses.items()} == {
        case: refused for case, _, refused in CASES
    }
    assert all(s == 204 for s in statuses.values() if s != 400)
    for case, stream, refused in CASES:
        reqs, reports = _read(tmp_path, stream)
        if refused:
            assert reqs == [], case
            assert [r.code for r in reports] == ["bad-message"], case
            assert "over the gateway's HTTP server's limit (aiohttp max_" in reports[0].detail, case
        else:
            assert ([r.body for r in reqs], reports) == ([BODY], []), case


async def test_a_field_whose_name_and_value_are_over_the_limit_together_is_not_used_as_aiohttp_s_answer_depends_on_its_reads(
    tmp_path: Path,
) -> None:
    name = "X-Pad"
    stream = _request(fields=[f"{name}: " + "v" * (FIELD - len(name) + 1)])
    at = stream.index(name.encode()) + 2  # the name cut in two reads
    async with running(GatewayService(service_config(tmp_path))) as svc:
        whole = await _gateway_status(svc.port, [stream])
        cut = await _gateway_status(svc.port, [stream[:at], stream[at:]])
    assert (whole, cut) == (204, 400)
    reqs, reports = _read(tmp_path, stream)
    assert reqs == []
    assert [r.code for r in reports] == ["bad-message"]
    assert "when the name reaches it in two reads" in reports[0].detail


@pytest.mark.parametrize("pieces", [1, 3, 7])
def test_the_limits_do_not_depend_on_how_the_capture_cut_the_head(pieces: int) -> None:
    stream = _request(fields=["X: " + "v" * (FIELD + 1)])
    step = len(stream) // pieces + 1
    parser = HttpStreamParser("request")
    events = [e for i in range(0, len(stream), step) for e in parser.feed(stream[i : i + step], i)]
    assert [type(e) for e in events] == [HttpProblem]
    ok = HttpStreamParser("request")
    good = _request(fields=["X: " + "v" * FIELD])
    assert [type(e) for i in range(0, len(good), step) for e in ok.feed(good[i : i + step], i)] == [
        HttpRequest
    ]
