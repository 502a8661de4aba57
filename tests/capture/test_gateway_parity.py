"""The reader yields exactly the DUIS requests the gateway's own HTTP stack would have handled.

The gateway takes its requests through aiohttp's web server (llhttp in aiohttp's strict mode,
yarl URLs, the router's ``/duis/dno/{user}`` and ``/duis/observe``, ``request.read()``, which
decodes ``Content-Encoding``). A capture reader that frames or routes a stream differently from
it makes the replay decide on bytes the gateway never saw (or miss ones it did): request
smuggling in miniature. So the same client byte streams go to a real aiohttp server with the
gateway's routes and, as a capture, to the reader, and the two lists of (lane, user, body) must
be the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httptools
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.capture import CapturedRequest, CaptureWriter, Connection, Exchange, read_capture

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
XML = b'<?xml version="1.0"?><sr:Response xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway"/>'
SENTINEL = b"sentinel-end-of-stream"

Handled = list[tuple[str, str | None, bytes]]


@pytest.fixture(scope="module")
def gateway_port() -> Iterator[int]:
    """An aiohttp server with the gateway's ingress routes (gateway.service.ingress.Ingress.add_routes)
    that answers 200 with what it took: lane, user, body as read."""

    async def handle(request: web.Request, lane: str, user: str | None) -> web.Response:
        body = await request.read()
        if request.content_type.lower() != "application/xml":  # the default server.content_types
            return web.Response(status=415)
        if not body.lstrip(b"\xef\xbb\xbf").lstrip().startswith(b"<") or b"ServiceUserGateway" not in body:
            return web.Response(status=400)  # not DUIS: the processor refuses it (reader: non-duis-body)
        return web.json_response({"lane": lane, "user": user, "body": body.hex()})

    async def inline(request: web.Request) -> web.Response:
        return await handle(request, "inline", request.match_info["user"])

    async def observe(request: web.Request) -> web.Response:
        return await handle(request, "observe", None)

    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/duis/dno/{user}", inline)
        app.router.add_post("/duis/observe", observe)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(runner.addresses[0][1])
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    yield port[0]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _sentinel() -> bytes:
    body = XML.replace(b"/>", b">" + SENTINEL + b"</sr:Response>")
    return (
        b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nContent-Type: application/xml\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def gateway_handled(port: int, pieces: list[bytes], pause: float = 0.02) -> Handled:
    """What the server handled (200 answers) for this client byte stream, sent a piece at a time.

    One piece per request, with a pause: aiohttp drops every request it parsed from one read
    when a later one in the same read is malformed (``web_protocol.data_received``), so what it
    handles depends on how the stream was cut into reads; one read per request is the case the
    reader models (each request judged on its own)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for piece in [*pieces, _sentinel()]:
            try:
                s.sendall(piece)
            except OSError:  # the server closed the connection (an error answer)
                break
            time.sleep(pause)
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
    out: Handled = []
    bodies: list[bytearray] = []
    statuses: list[int] = []

    class Hooks:
        def on_message_begin(self) -> None:
            bodies.append(bytearray())

        def on_body(self, data: bytes) -> None:
            bodies[-1] += data

        def on_message_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Hooks())
    with contextlib.suppress(httptools.HttpParserError):  # what follows an error answer
        parser.feed_data(bytes(got))
    for status, body in zip(statuses, bodies, strict=False):
        if status == 200:
            d = json.loads(body)
            out.append((d["lane"], d["user"], bytes.fromhex(d["body"])))
    return [h for h in out if SENTINEL not in h[2]]


def reader_yielded(tmp_path: Path, pieces: list[bytes]) -> Handled:
    stream = b"".join(pieces)
    path = tmp_path / "parity.pcap"
    with CaptureWriter(path, "pcap") as w:
        w.write_connections([Connection([Exchange("/", b"", T0, raw=stream + _sentinel())])])
    reqs = [r for r in read_capture(path, pair_responses=False) if isinstance(r, CapturedRequest)]
    return [(r.lane, r.user, r.body) for r in reqs if SENTINEL not in r.body]


# -- streams ------------------------------------------------------------------------------------
TARGETS = [
    "/duis/observe", "/duis/dno/90-B3-D5-1F-30-02-00-00", "/duis/dno/dno-east%20one", "/duis/dno/a%2Fb",
    "/duis/dno/x%2F", "/duis/dno/%25", "/duis/%6Fbserve", "/%64uis/dno/u", "/duis/observe#frag",
    "/duis/observe?x=1", "http://gw/duis/observe", "HTTP://gw/duis/dno/u", "https://gw:8443/duis/observe",
    "http://gw", "*", "duis/observe", "/duis/observe/", "/duis//observe", "/duis/dno/", "/duis/dno/a/b",
]  # fmt: skip


def _encode(body: bytes, coding: str) -> bytes:
    if coding.lower() == "gzip":
        return gzip.compress(body)
    if coding.lower() == "deflate":
        return zlib.compress(body)
    if coding == "deflate-raw":
        c = zlib.compressobj(wbits=-15)
        return c.compress(body) + c.flush()
    return body


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["POST"] * 8 + ["CONNECT", "OPTIONS", "GET"]))
    target = draw(st.sampled_from(TARGETS))
    if method == "CONNECT":
        target = draw(st.sampled_from(["gw:443", target]))
    version = draw(st.sampled_from(["1.1"] * 4 + ["1.0"]))
    body = XML.replace(b"/>", b">%d</sr:Response>" % draw(st.integers(0, 10**6)))
    coding = draw(st.sampled_from([None] * 4 + ["gzip", "GZIP", "deflate", "deflate-raw", "identity", "br"]))
    if coding is not None:
        body = _encode(body, coding)
    head = ["Host: gw"] * draw(st.sampled_from([1, 1, 1, 1, 0, 2]))
    ctypes = draw(
        st.sampled_from(
            [["application/xml"]] * 4
            + [[], ["text/xml"], ["application/xml"] * 2, ["application/xml", "text/plain"]]
        )
    )
    head += [f"Content-Type: {c}" for c in ctypes]
    if coding is not None:
        head.append(f"Content-Encoding: {'deflate' if coding == 'deflate-raw' else coding}")
    head += draw(
        st.sampled_from(
            [[]] * 6
            + [
                ["User-Agent: a", "User-Agent: b"],
                ["Connection: close"],
                ["Connection: upgrade", "Upgrade: websocket"],
                ["Expect: 100-continue"],
            ]
        )
    )
    framing = draw(st.sampled_from(["length"] * 4 + ["chunked", "none", "length-twice"]))
    if framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    elif framing == "none":
        payload = b""
    else:
        head += [f"Content-Length: {len(body)}"] * (2 if framing == "length-twice" else 1)
        payload = body
    order = draw(st.permutations(head))
    return (
        f"{method} {target} HTTP/{version}\r\n".encode()
        + "".join(f"{h}\r\n" for h in order).encode()
        + b"\r\n"
        + payload
    )


def _simple(
    target: str = "/duis/observe", headers: str = "Content-Length: {n}\r\n", body: bytes = XML
) -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/xml\r\n{headers}\r\n").format(
        n=len(body)
    ).encode() + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(requests(), min_size=1, max_size=3))
@example(stream=[_simple()])
@example(stream=[_simple("/duis/dno/a%2Fb")])  # the router matches {user} before %2F is decoded
@example(stream=[_simple("/duis/%6Fbserve")])  # yarl decodes %6F; the route matches
@example(stream=[_simple("HTTP://gw/duis/observe")])  # the scheme is case-insensitive
@example(stream=[_simple("/duis/observe#frag")])  # the fragment is not part of the path
@example(
    stream=[_simple(headers="Content-Type: text/plain\r\nContent-Length: {n}\r\n")]
)  # a repeated Content-Type
@example(
    stream=[_simple(headers="Host: gw2\r\nContent-Length: {n}\r\n").replace(b"HTTP/1.1", b"HTTP/1.0", 1)]
)
@example(stream=[_simple("*"), _simple()])  # an asterisk target: the gateway answers 400 and closes
@example(
    stream=[b"CONNECT gw:443 HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(_simple()), _simple()]
)
@example(
    stream=[_simple(headers="Content-Encoding: gzip\r\nContent-Length: {n}\r\n", body=gzip.compress(XML))]
)
@example(
    stream=[_simple(headers="Content-Encoding: deflate\r\nContent-Length: {n}\r\n", body=zlib.compress(XML))]
)
def test_the_reader_yields_the_requests_the_gateways_http_stack_handles(
    tmp_path: Path, gateway_port: int, stream: bytes
) -> None:
    assert reader_yielded(tmp_path, stream) == gateway_handled(gateway_port, stream)


def _chunked(trailers: list[str], body: bytes = XML) -> bytes:
    head = b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
    return (
        head
        + b"%x\r\n%s\r\n0\r\n" % (len(body), body)
        + "".join(f"{t}\r\n" for t in trailers).encode()
        + b"\r\n"
    )


def _numbered(n: int) -> bytes:
    return _simple(body=XML.replace(b"/>", b">%d</sr:Response>" % n))


@pytest.mark.parametrize(
    "stream",
    [
        [_chunked(["X-Sum: 1"]), _numbered(1)],  # the last trailer field becomes the next request's
        [_chunked(["Host: other"]), _numbered(2)],  # ... so the next one has two Hosts: a 400
        [_chunked(["Host: other", "X-Sum: 1"]), _numbered(3)],  # a second Host in the request itself
        [_chunked(["Content-Type: text/plain"]), _numbered(4)],  # two Content-Types in the next one
        [_chunked(["Content-Encoding: gzip"]), _numbered(5)],  # the next body is read as gzip: a 400
        [_chunked(["Content-Encoding: gzip", "X-Sum: 1"]), _numbered(6)],  # the same, held by the parser
        [_chunked([f"X-T{i}: v" for i in range(127)]), _numbered(7)],  # 3 + 126 fields: over max_headers
        [_chunked([f"X-T{i}: v" for i in range(126)]), _numbered(8)],  # 3 + 125: the last one is held
        [_chunked(["X-Big: " + "v" * 8190]), _numbered(9)],  # a trailer field over max_field_size
    ],
    ids=["leak", "leaked-host", "trailer-host", "leaked-content-type", "leaked-coding", "carried-coding",
         "too-many", "not-too-many", "too-long"],
)  # fmt: skip
def test_trailer_fields_count_as_the_gateways_http_stack_counts_them(
    tmp_path: Path, gateway_port: int, stream: list[bytes]
) -> None:
    # aiohttp's parser takes a request's trailer fields as header fields (limits, count, fields
    # allowed once) and holds the last one until the next request, whose first field it becomes.
    # (a longer pause: a malformed request read together with the one before drops both in aiohttp)
    assert reader_yielded(tmp_path, stream) == gateway_handled(gateway_port, stream, pause=0.15)
