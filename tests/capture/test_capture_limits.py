"""The capture reader refuses the requests the gateway's HTTP server refuses for their size: aiohttp's
``max_line_size`` (the request target), ``max_field_size`` (header fields, counted as its parser
counts them) and ``max_headers``. Each stream is sent to a running gateway (``Service``, the real
server with its real settings) and, as a capture built here, to the reader: a request the gateway
answers 400 is a ``bad-message`` report naming the limit, never a decided request."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import re
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


# -- the body cap and the refusals after which the gateway closes the connection -----------------
CAP = 64 * 1024  # servicekit's server.max_body_bytes


def _post(body: bytes, fields: list[str], *, close: bool = False) -> bytes:
    head = ["Host: gw", *fields] + (["Connection: close"] if close else [])
    return b"POST /duis/observe HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in head).encode() + b"\r\n" + body


def _plain(n: int, ctype: str = "application/xml", *, close: bool = False) -> bytes:
    body = duis_body(n)
    return _post(body, [f"Content-Type: {ctype}", f"Content-Length: {len(body)}"], close=close)


def _big_chunked() -> bytes:
    body = b"<x>" + b"a" * CAP + b"</x>"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:40000], body[40000:])) + b"0\r\n\r\n"
    return _post(chunks, ["Content-Type: application/xml", "Transfer-Encoding: chunked"])


def _gzip_bomb() -> bytes:
    body = gzip.compress(b"<x>" + b"a" * (2 * CAP) + b"</x>")
    fields = ["Content-Type: application/xml", "Content-Encoding: gzip", f"Content-Length: {len(body)}"]
    return _post(body, fields)


def _bad_gzip() -> bytes:
    body = b"not gzip at all"
    fields = ["Content-Type: application/xml", "Content-Encoding: gzip", f"Content-Length: {len(body)}"]
    return _post(body, fields)


def _oversize(ctype: str) -> bytes:
    body = b"<x>" + b"a" * CAP + b"</x>"
    return _post(body, [f"Content-Type: {ctype}", f"Content-Length: {len(body)}"])


# (case, the requests sent on one connection, statuses the gateway answers, bodies read, report codes)
STREAMS = [
    # a 413 ends the connection (RFC 9112 §9.6: the answer says ``Connection: close``): what follows is not read
    ("oversize-then-more", [_plain(1), _oversize("application/xml"), _plain(2, close=True)], [204, 413],
     [duis_body(1)], ["oversize-body", "untrusted"]),
    ("oversize-of-another-type", [_oversize("text/plain"), _plain(3, close=True)], [413],
     [], ["oversize-body", "untrusted"]),
    ("chunked-oversize", [_big_chunked(), _plain(4, close=True)], [413], [], ["oversize-body", "untrusted"]),
    ("decodes-over-the-cap", [_gzip_bomb(), _plain(5, close=True)], [413], [], ["oversize-body", "untrusted"]),
    ("does-not-decode", [_bad_gzip(), _plain(6, close=True)], [400], [], ["content-encoding", "untrusted"]),
    ("another-type-goes-on", [_plain(7, "text/plain"), _plain(8, close=True)], [415, 204], [duis_body(8)],
     ["not-xml"]),
]  # fmt: skip


async def _gateway_statuses(port: int, pieces: list[bytes]) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            try:
                await writer.drain()
            except ConnectionError:  # the gateway closed the connection
                break
            await asyncio.sleep(0.1)
        got = await asyncio.wait_for(reader.read(), 10)
    except ConnectionError:
        got = b""
    finally:
        writer.close()
    # every status line (an answer that says ``Connection: close`` may still be followed by others)
    return [int(code) for code in re.findall(rb"(?:^|\n)HTTP/1\.1 (\d{3}) ", got)]


async def test_a_body_over_the_gateways_cap_or_one_that_does_not_decode_is_refused_and_ends_the_connection_as_in_the_gateway(
    tmp_path: Path,
) -> None:
    async with running(GatewayService(service_config(tmp_path))) as svc:
        assert svc.config.server.max_body_bytes == CAP
        statuses = {case: await _gateway_statuses(svc.port, pieces) for case, pieces, *_ in STREAMS}
    assert statuses == {case: expected for case, _, expected, *_ in STREAMS}
    for case, pieces, _, bodies, codes in STREAMS:
        path = tmp_path / f"{case}.pcap"
        with CaptureWriter(path, "pcap") as w:
            w.write_connections([Connection([Exchange("/", b"", T0, raw=b"".join(pieces))])])
        items = list(read_capture(path, pair_responses=False, max_body=CAP))
        assert [i.body for i in items if isinstance(i, CapturedRequest)] == bodies, case
        assert [i.code for i in items if isinstance(i, FlowReport)] == codes, case


def test_the_reader_and_the_replay_default_to_the_gateways_own_ingress_settings() -> None:
    from gateway.capture import CaptureReader
    from gateway.replay import IngressLimits
    from gateway.service.config import ServerConfig

    server = ServerConfig()
    reader = CaptureReader("unused.pcap")
    assert (reader.max_body, reader.content_types) == (server.max_body_bytes, frozenset(server.content_types))
    assert IngressLimits() == IngressLimits(server.max_body_bytes, server.content_types)


def test_the_replay_reads_a_capture_with_the_configured_server_settings(tmp_path: Path) -> None:
    from gateway.cli.replay import _load_config
    from gateway.replay import InputMessage, InputProblem, iter_inputs

    path = tmp_path / "two.pcap"
    with CaptureWriter(path, "pcap") as w:
        raw = _plain(1, "text/xml") + _plain(2, close=True)
        w.write_connections([Connection([Exchange("/", b"", T0, raw=raw)])])
    config = tmp_path / "gw.toml"
    config.write_text('[server]\nmax_body_bytes = 2048\ncontent_types = ["application/xml", "text/xml"]\n')
    limits = _load_config(config)[2]
    got = [
        (type(i).__name__, i.body if isinstance(i, InputMessage) else i.code)
        for i in iter_inputs([path], limits)
    ]
    assert len(duis_body(1)) <= 2048 < CAP
    assert got == [("InputMessage", duis_body(1)), ("InputMessage", duis_body(2))]
    default = [i.code for i in iter_inputs([path]) if isinstance(i, InputProblem)]
    assert default == ["not-xml"]
