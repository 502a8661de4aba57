"""Requests aiohttp cannot parse (HTTP framing errors) and bodies the peer cuts short are bad input, not
gateway faults: a named reason code in the answer (where one can be delivered), a count in
``duisgw_rejects_total`` and ``duisgw_http_requests_total``, a row in the rejects table (without bytes:
there are no complete request bytes) and one log line without a traceback. In both layouts: the ingress
in the gateway process (``[server] ingress_processes = 0``) and in ingress worker processes (``= 2``),
whose counts and rejects the gateway process exports.

The malformed requests are raw bytes over a socket (no HTTP client sends them). What this pins of
aiohttp: a request its parser refuses is answered through ``RequestHandler.handle_error(request, 400,
exc)`` with ``exc`` an ``HttpProcessingError``, on a protocol object the runner's server makes (the
gateway's runner makes its own server and protocol class), and only gzip and deflate are decoded
(``br`` and ``zstd`` need optional packages the gateway does not install).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.helpers import set_exception
from aiohttp.http_exceptions import ContentLengthError, TransferEncodingError
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client.parser import text_string_to_metric_families
from servicekit import Receiver, duis_body, running, service_config

from gateway.service.app import Service
from gateway.service.ingress import Ingress

LAYOUTS = pytest.mark.parametrize("ingress_processes", [0, 2], ids=["in-process", "ingress-workers"])
INLINE = "/duis/dno/dno-a"
BODY = duis_body(1, pad=1500)  # a body of about 1.7 kB


def raw_post(
    path: bytes, body: bytes, extra: Sequence[tuple[str, str]] = (), *, length: int | None = None
) -> bytes:
    """A POST as bytes; ``length`` -1: no Content-Length header."""
    head = [
        (b"POST " + path + b" HTTP/1.1"),
        b"Host: 127.0.0.1",
        b"Content-Type: application/xml",
        *([b"Content-Length: %d" % (len(body) if length is None else length)] if length != -1 else []),
        *(f"{k}: {v}".encode("latin-1") for k, v in extra),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked_post(path: bytes, chunks: list[bytes], *, last: bool = True) -> bytes:
    head = raw_post(path, b"", [("Transfer-Encoding", "chunked")], length=-1)
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return head + out + (b"0\r\n\r\n" if last else b"")


#: the bytes of each case, sent in one write
FRAMING_ERRORS: dict[str, bytes] = {
    "content-encoding-br": raw_post(INLINE.encode(), BODY, [("Content-Encoding", "br")]),
    "content-encoding-zstd": raw_post(INLINE.encode(), BODY, [("Content-Encoding", "zstd")]),
    "duplicate-content-length": raw_post(INLINE.encode(), BODY, [("Content-Length", str(len(BODY) + 1))]),
    "content-length-with-transfer-encoding": raw_post(
        INLINE.encode(), b"5\r\nhello\r\n0\r\n\r\n", [("Transfer-Encoding", "chunked")], length=5
    ),
    "header-line-over-8190-bytes": raw_post(INLINE.encode(), BODY, [("X-DUISGW-Arrival", "x" * 9000)]),
    "raw-0xff-byte-in-the-path": raw_post(b"/duis/dno/\xff", BODY),
    # a request whose body is its first 100 bytes, then bytes that are no HTTP request (when both arrive
    # in one read, aiohttp drops the first request with the parse error: only the refusal is answered)
    "content-length-shorter-than-the-body": raw_post(INLINE.encode(), BODY, length=100),
}


async def exchange(port: int, data: bytes, *, half_close: bool = False, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection (then end the sending side when ``half_close``) and read until
    the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        got = b""
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                got += chunk
        return got
    except ConnectionResetError:
        return got
    finally:
        writer.close()


def answers(data: bytes) -> list[tuple[int, bytes]]:
    """The (status, body) of each HTTP response in ``data``, in order."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response: {data[:200]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = dict(ln.partition(b":")[::2] for ln in lines[1:])
        length = int({k.lower(): v for k, v in fields.items()}.get(b"content-length", b"0"))
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


async def scrape(service: Service) -> dict[str, dict[tuple[str, ...], float]]:
    """``/metrics`` of the admin listener: sample name -> label values -> value."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{service.admin_port}/metrics") as r,
    ):
        assert r.status == 200
        text = await r.text()
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(s.labels.values())] = s.value
    return out


async def eventually(probe: Callable[[], Any], check: Callable[[Any], bool], seconds: float = 10.0) -> Any:
    """``await probe()`` until ``check`` accepts it (the worker layout relays counts and rejects to the
    gateway process a moment after the answer); the last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = await probe()
        if check(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


def gateway(tmp_path: Path, receiver: Receiver, ingress_processes: int, **server: Any) -> Service:
    cfg = service_config(tmp_path, receiver.url)
    return Service(replace(cfg, server=replace(cfg.server, ingress_processes=ingress_processes, **server)))


def problems_logged(caplog: pytest.LogCaptureFixture, stderr: str) -> list[str]:
    """ERROR lines and tracebacks: of this process (caplog) and of the ingress workers (their JSON lines
    on the stderr they inherit, captured by ``capfd``)."""
    found = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    for line in stderr.splitlines():
        if "Traceback" in line or '"level": "ERROR"' in line or '"exc":' in line:
            found.append(line)
    return found


def warnings_logged(
    caplog: pytest.LogCaptureFixture, stderr: str, reason: str, level: int = logging.WARNING
) -> int:
    """Lines at ``level`` (WARNING by default) naming ``reason``: this process's records and the workers'
    JSON lines."""
    n = sum(1 for r in caplog.records if r.levelno == level and getattr(r, "reason", None) == reason)
    name = logging.getLevelName(level)
    for line in stderr.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            n += entry.get("level") == name and entry.get("reason") == reason
    return n


# ------------------------------------------------------------------------------------------ framing


@LAYOUTS
@pytest.mark.parametrize("case", list(FRAMING_ERRORS))
async def test_a_request_aiohttp_cannot_parse_is_refused_400_bad_http_request_counted_and_recorded_without_a_traceback(
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    ingress_processes: int,
    case: str,
) -> None:
    caplog.set_level(logging.INFO)
    service = gateway(tmp_path, receiver, ingress_processes)
    async with running(service):
        got = answers(await exchange(service.port, FRAMING_ERRORS[case]))
        assert got and all(b"bad_http_request" not in b for _, b in got[:-1]), got
        status, body = got[-1]
        assert status == 400
        assert body.startswith(b"bad_http_request: ") and body.endswith(b"\n") and body.count(b"\n") == 1, (
            body
        )
        assert b"Please install" not in body  # aiohttp's advice to the server's operator is not the client's

        def counted(m: dict[str, dict[tuple[str, ...], float]]) -> bool:
            return m.get("duisgw_rejects_total", {}).get(("unknown", "bad_http_request")) == 1

        metrics = await eventually(lambda: scrape(service), counted)
        assert metrics["duisgw_rejects_total"].get(("unknown", "bad_http_request")) == 1
        assert metrics["duisgw_http_requests_total"].get(("unknown", "400")) == 1
        assert sum(metrics["duisgw_http_requests_total"].values()) == len(got)

        rows = await eventually(
            service.rejects.all, lambda rs: any(r["reason"] == "bad_http_request" for r in rs)
        )
        kept = [r for r in rows if r["reason"] == "bad_http_request"]
        assert len(kept) == 1
        assert kept[0]["lane"] == "unknown" and kept[0]["user"] is None
        assert kept[0]["body"] == b"" and kept[0]["detail"]
    err = capfd.readouterr().err
    assert problems_logged(caplog, err) == []
    assert warnings_logged(caplog, err, "bad_http_request") == 1
    assert not receiver.log


@LAYOUTS
async def test_the_ingress_still_takes_good_requests_and_keeps_its_keepalive_timeout(
    tmp_path: Path, receiver: Receiver, ingress_processes: int
) -> None:
    """The runner builds the ingress's own server: aiohttp's protocol options (here the keep-alive
    timeout) still reach each connection, and a good request is still taken."""
    service = gateway(tmp_path, receiver, ingress_processes, keepalive_timeout=0.5)
    async with running(service):
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        try:
            writer.write(raw_post(INLINE.encode(), BODY))
            await writer.drain()
            t0 = time.monotonic()
            got = b""
            async with asyncio.timeout(10):
                while chunk := await reader.read(65536):  # the answer, then the close of the idle connection
                    got += chunk
            idle = time.monotonic() - t0
        finally:
            writer.close()
        assert [s for s, _ in answers(got)] == [204]
        assert idle < 3.0  # aiohttp's default keep-alive is an hour
        await receiver.wait_for(1)


# ------------------------------------------------------------------------------------------ cut short


@LAYOUTS
async def test_a_body_the_peer_cuts_short_is_counted_incomplete_body_not_internal_error(
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    ingress_processes: int,
) -> None:
    caplog.set_level(logging.INFO)
    service = gateway(tmp_path, receiver, ingress_processes)
    async with running(service):
        # Content-Length 1.7 kB, 100 bytes sent, then the peer's end; a chunked body without its last chunk
        for data in (
            raw_post(INLINE.encode(), BODY[:100], length=len(BODY)),
            chunked_post(INLINE.encode(), [BODY[:100]], last=False),
        ):
            assert await exchange(service.port, data, half_close=True) == b""  # nobody is left to answer

        def counted(m: dict[str, dict[tuple[str, ...], float]]) -> bool:
            return m.get("duisgw_rejects_total", {}).get(("inline", "incomplete_body")) == 2

        metrics = await eventually(lambda: scrape(service), counted)
        assert metrics["duisgw_rejects_total"] == {("inline", "incomplete_body"): 2}
        assert metrics["duisgw_http_requests_total"] == {("inline", "400"): 2}
        rows = await eventually(service.rejects.all, lambda rs: len(rs) >= 2)
        assert [(r["lane"], r["user"], r["reason"], r["body"]) for r in rows] == [
            ("inline", "dno-a", "incomplete_body", b"")
        ] * 2
        assert all("100" in r["detail"] for r in rows), [r["detail"] for r in rows]  # what was received
    err = capfd.readouterr().err
    assert problems_logged(caplog, err) == []
    assert warnings_logged(caplog, err, "incomplete_body") == 2
    assert not receiver.log


class _Kept:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.counts: list[tuple[str, ...]] = []

    async def record(self, **row: Any) -> int:
        self.rows.append(row)
        return len(self.rows)

    def count_request(self, lane: str, status: int) -> None:
        self.counts.append(("request", lane, str(status)))

    def count_reject(self, lane: str, reason: str) -> None:
        self.counts.append(("reject", lane, reason))

    def count_accepted(self, lane: str, kind: str, decision: str, reason: str) -> None:
        self.counts.append(("accepted", lane, kind))

    def observe_decision(self, lane: str, seconds: float) -> None:
        pass


@pytest.mark.parametrize("cause", [ContentLengthError, TransferEncodingError])
async def test_a_payload_error_of_a_body_that_ended_early_is_incomplete_body_too(
    tmp_path: Path, cause: type[Exception]
) -> None:
    """aiohttp's parser, when the stream ends before the body does, sets a ``RequestPayloadError`` caused
    by ``ContentLengthError`` or ``TransferEncodingError`` on the body (aiohttp's server protocol does not
    get there today: it ends the request with ``ConnectionResetError`` first, as above)."""
    kept = _Kept()
    ingress = Ingress(service_config(tmp_path), cast(Any, None), kept, kept)
    protocol = mock.Mock(_reading_paused=False)
    payload = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(BODY[:100])
    set_exception(payload, RequestPayloadError("Not enough data"), cause("Not enough data"))
    request = make_mocked_request(
        "POST",
        INLINE,
        headers={"Content-Type": "application/xml", "Content-Length": str(len(BODY))},
        payload=payload,
        match_info={"user": "dno-a"},
    )
    resp = await ingress.handle_inline(request)
    assert isinstance(resp, web.Response) and resp.status == 400 and resp.text
    assert resp.text.startswith("incomplete_body: ")
    assert kept.counts == [("reject", "inline", "incomplete_body"), ("request", "inline", "400")]
    assert [(r["reason"], r["body"]) for r in kept.rows] == [("incomplete_body", b"")]


# ------------------------------------------------------------------------------------------ no such route


@LAYOUTS
async def test_a_request_no_route_matches_is_a_named_counted_and_recorded_404_or_405(
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    ingress_processes: int,
) -> None:
    """aiohttp answered these itself (its plain 404 / 405): neither counted nor recorded. Now each is named
    (``unknown_route``, ``method_not_allowed`` with ``Allow``), counted under lane ``unknown``, recorded without
    its body, and logged at INFO only (scanners probe paths); the DUIS routes still take DUIS."""
    caplog.set_level(logging.INFO)
    service = gateway(tmp_path, receiver, ingress_processes)
    async with running(service):
        url = f"http://127.0.0.1:{service.port}"
        async with aiohttp.ClientSession() as http:
            got = []
            for method, path in (("GET", "/nope"), ("POST", "/duis/nope"), ("GET", "/duis/observe")):
                async with http.request(method, url + path, data=BODY if method == "POST" else None) as r:
                    got.append((r.status, await r.text(), r.headers.get("Allow")))
            async with http.post(url + INLINE, data=BODY, headers={"Content-Type": "application/xml"}) as r:
                assert r.status == 204, await r.text()  # (passthrough: forwarded)
        assert got == [
            (404, "unknown_route: GET '/nope'\n", None),
            (404, "unknown_route: POST '/duis/nope'\n", None),
            (405, "method_not_allowed: GET '/duis/observe'\n", "POST"),
        ]

        def counted(m: dict[str, dict[tuple[str, ...], float]]) -> bool:
            return m.get("duisgw_rejects_total", {}).get(("unknown", "unknown_route")) == 2

        metrics = await eventually(lambda: scrape(service), counted)
        assert metrics["duisgw_rejects_total"].get(("unknown", "unknown_route")) == 2
        assert metrics["duisgw_rejects_total"].get(("unknown", "method_not_allowed")) == 1
        assert metrics["duisgw_http_requests_total"].get(("unknown", "404")) == 2
        assert metrics["duisgw_http_requests_total"].get(("unknown", "405")) == 1
        rows = await eventually(service.rejects.all, lambda rs: len(rs) >= 3)
        assert sorted((r["reason"], r["lane"], r["body"]) for r in rows) == [
            ("method_not_allowed", "unknown", b""),
            ("unknown_route", "unknown", b""),
            ("unknown_route", "unknown", b""),
        ]
    assert problems_logged(caplog, capfd.readouterr().err) == []
