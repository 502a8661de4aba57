"""Slow request headers (slow-loris) are bounded by ``[server] header_timeout``, counted from the first byte of
a request: a client that sends them slower is answered 408 ``header_timeout`` (``Connection: close``) and its
connection closed, counted under lane ``unknown`` in ``duisgw_rejects_total`` and
``duisgw_http_requests_total``, recorded in the rejects table without bytes (as ``bad_http_request``), and
logged once at WARNING. Before, only the keep-alive timeout (30 s by default, from the connection's opening
or the previous answer) closed such a connection: silently, uncounted, whatever the header bytes still to
come. A connection idle between requests (no byte of the next one yet) is still governed by the keep-alive
timeout, not by ``header_timeout``; a request whose headers come in pieces within the bound is taken, and
its body's time is ``read_timeout``'s. In both layouts: the ingress in the gateway process and in ingress
worker processes (whose counts and rejects the gateway process exports).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from servicekit import Receiver, duis_body, running, service_config
from test_config_check import _nested, problems_of
from test_ingress_framing_errors import (
    INLINE,
    LAYOUTS,
    _Kept,
    answers,
    eventually,
    gateway,
    problems_logged,
    raw_post,
    scrape,
    warnings_logged,
)

from gateway.service.ingress import Ingress, IngressRunner

HEADER_TIMEOUT = 0.5
MARGIN = 1.5  # the timer's slack, a loaded machine, the worker layout's scheduling


async def dribble_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, every: float, limit: float = 20.0
) -> tuple[float, bytes]:
    """Send ``data`` a byte every ``every`` seconds until the gateway closes the connection (or ``limit``
    seconds pass); (seconds from the first byte sent to the close, what the gateway sent)."""
    got = bytearray()

    async def read() -> None:
        while chunk := await reader.read(65536):
            got.extend(chunk)

    reading = asyncio.get_running_loop().create_task(read())
    t0 = time.monotonic()
    try:
        for i in range(len(data)):
            if reading.done() or time.monotonic() - t0 > limit:
                break
            try:
                writer.write(data[i : i + 1])
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(every)
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reading, timeout=max(0.0, limit - (time.monotonic() - t0)))
        return time.monotonic() - t0, bytes(got)
    finally:
        reading.cancel()
        writer.close()


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Read one response to the end of its body: (status, headers lower-cased)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    await asyncio.wait_for(reader.readexactly(int(fields.get("content-length", "0"))), 10)
    return int(lines[0].split()[1]), fields


@LAYOUTS
async def test_headers_dribbled_slower_than_header_timeout_get_408_and_a_closed_connection_counted_and_recorded(
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    ingress_processes: int,
) -> None:
    """A byte every 50 ms (faster than any idle timer would notice, far slower than a request's headers):
    closed about ``header_timeout`` after the first byte, with a 408; a request on another connection
    meanwhile is taken."""
    caplog.set_level(logging.INFO)
    service = gateway(tmp_path, receiver, ingress_processes, header_timeout=HEADER_TIMEOUT)
    async with running(service):
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        slow = asyncio.get_running_loop().create_task(
            dribble_until_closed(reader, writer, raw_post(INLINE.encode(), duis_body(1)), every=0.05)
        )
        await asyncio.sleep(0.2)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{service.port}{INLINE}",
                data=duis_body(2),
                headers={"Content-Type": "application/xml"},
            ) as r,
        ):
            assert r.status == 204, await r.text()  # (passthrough: forwarded)
        seconds, got = await slow
        assert HEADER_TIMEOUT - 0.05 <= seconds < HEADER_TIMEOUT + MARGIN, seconds
        assert got.startswith(b"HTTP/1.1 408 ") and b"\r\nConnection: close\r\n" in got, got
        assert answers(got) == [(408, b"header_timeout: request headers not received within 0.5 s\n")]

        def counted(m: dict[str, dict[tuple[str, ...], float]]) -> bool:
            return m.get("duisgw_rejects_total", {}).get(("unknown", "header_timeout")) == 1

        metrics = await eventually(lambda: scrape(service), counted)
        assert metrics["duisgw_rejects_total"] == {("unknown", "header_timeout"): 1}
        assert metrics["duisgw_http_requests_total"] == {("unknown", "408"): 1, ("inline", "204"): 1}
        rows = await eventually(service.rejects.all, lambda rs: len(rs) >= 1)
        assert [(r["lane"], r["user"], r["reason"], r["body"]) for r in rows] == [
            ("unknown", None, "header_timeout", b"")
        ]
        assert "bytes of request headers from 127.0.0.1" in rows[0]["detail"], rows[0]["detail"]
        await receiver.wait_for(1)
        assert [r.body for r in receiver.log] == [duis_body(2)]
    err = capfd.readouterr().err
    assert problems_logged(caplog, err) == []
    assert warnings_logged(caplog, err, "header_timeout") == 1


@LAYOUTS
async def test_headers_in_pieces_within_header_timeout_are_taken_and_the_body_s_time_is_not_counted_against_it(
    tmp_path: Path, receiver: Receiver, ingress_processes: int
) -> None:
    """Two requests on one connection, each with its headers in two pieces 0.3 s apart (under the 0.5 s
    bound, 0.6 s for both) and the first one's body sent 0.6 s after its headers: both taken. The clock
    stops when a request's headers are complete and starts again at the next request's first byte."""
    service = gateway(tmp_path, receiver, ingress_processes, header_timeout=HEADER_TIMEOUT)
    async with running(service):
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        try:
            for n, body_after in ((1, 0.6), (2, 0.0)):
                body = duis_body(n)
                request = raw_post(INLINE.encode(), body)
                head = request[: -len(body)]
                for piece in (head[:20], head[20:]):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.3)
                await asyncio.sleep(body_after)
                writer.write(body)
                await writer.drain()
                status, _ = await answer(reader)
                assert status == 204, n
        finally:
            writer.close()
        await receiver.wait_for(2)
        metrics = await scrape(service)
        assert not metrics.get("duisgw_rejects_total")


@LAYOUTS
async def test_a_keepalive_connection_idle_between_requests_is_governed_by_keepalive_timeout_not_header_timeout(
    tmp_path: Path, receiver: Receiver, ingress_processes: int
) -> None:
    """Idle 1 s (twice ``header_timeout``) after an answer, no byte of a next request yet: the connection
    stays open and takes the next request; idle after that, it is closed by the keep-alive timeout (2 s),
    silently, and nothing is counted."""
    service = gateway(
        tmp_path, receiver, ingress_processes, header_timeout=HEADER_TIMEOUT, keepalive_timeout=2.0
    )
    async with running(service):
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        try:
            for n in (1, 2):
                writer.write(raw_post(INLINE.encode(), duis_body(n)))
                await writer.drain()
                status, fields = await answer(reader)
                assert status == 204 and fields.get("connection", "").lower() != "close", (n, fields)
                t0 = time.monotonic()
                if n == 1:
                    await asyncio.sleep(2 * HEADER_TIMEOUT)
            rest = await asyncio.wait_for(reader.read(), 10)  # the gateway's close of the idle connection
            idle = time.monotonic() - t0
        finally:
            writer.close()
        assert rest == b""  # closed without an answer
        assert 1.5 <= idle < 2.0 + MARGIN, idle
        await receiver.wait_for(2)
        metrics = await scrape(service)
        assert not metrics.get("duisgw_rejects_total")


@LAYOUTS
async def test_the_header_clock_of_a_keepalive_connection_starts_at_the_next_request_s_first_byte(
    tmp_path: Path, receiver: Receiver, ingress_processes: int
) -> None:
    """After an answer and 1 s idle (twice the bound), the next request's headers dribbled: the 408 comes
    about ``header_timeout`` after their first byte, not at once (the idle time is not header time)."""
    service = gateway(tmp_path, receiver, ingress_processes, header_timeout=HEADER_TIMEOUT)
    async with running(service):
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(raw_post(INLINE.encode(), duis_body(1)))
        await writer.drain()
        assert (await answer(reader))[0] == 204
        await asyncio.sleep(2 * HEADER_TIMEOUT)
        seconds, got = await dribble_until_closed(
            reader, writer, raw_post(INLINE.encode(), duis_body(2)), every=0.05
        )
        assert HEADER_TIMEOUT - 0.05 <= seconds < HEADER_TIMEOUT + MARGIN, seconds
        assert [s for s, _ in answers(got)] == [408]
        metrics = await eventually(
            lambda: scrape(service),
            lambda m: m.get("duisgw_rejects_total", {}).get(("unknown", "header_timeout")) == 1,
        )
        assert metrics["duisgw_rejects_total"] == {("unknown", "header_timeout"): 1}


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_header_timeout_must_be_positive(value: float) -> None:
    assert problems_of(_nested("server.header_timeout", value)) == ["server.header_timeout: must be > 0"]
    assert problems_of(_nested("server.header_timeout", 2.5)) == []


async def test_pipelined_header_bytes_behind_a_request_being_answered_get_their_408_after_its_answer_not_inside(
    tmp_path: Path,
) -> None:
    """A request whose handler takes 1 s, and behind it in the same read the start of a next request that
    never completes: the timer fires while the first is being answered and looks again later, so the first
    answer goes out whole, then the 408, then the close (the protocol is the same in both layouts)."""
    cfg = service_config(tmp_path)
    cfg = replace(cfg, server=replace(cfg.server, header_timeout=0.3))
    kept = _Kept()
    ingress = Ingress(cfg, cast(Any, None), kept, kept)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="slow done\n")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = IngressRunner(app, ingress, access_log=None, keepalive_timeout=30.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /sl")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"o")
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), 10)  # to the close
        closed = time.monotonic() - t0
        writer.close()
    finally:
        await runner.cleanup()
    assert answers(got) == [
        (200, b"slow done\n"),
        (408, b"header_timeout: request headers not received within 0.3 s\n"),
    ]
    assert 1.0 <= closed < 1.0 + MARGIN, closed
    assert kept.counts == [("reject", "unknown", "header_timeout"), ("request", "unknown", "408")]
    assert [(r["lane"], r["reason"], r["body"]) for r in kept.rows] == [("unknown", "header_timeout", b"")]
