"""Bad input against the real HTTP ingress (``gateway.service``, passthrough processor, real sockets).

* a hypothesis state machine posts random mixes of valid, mutated, truncated, oversized, garbage,
  wrong-content-type and chunked bodies: never a 5xx (503 only for store unavailability), every
  rejection names its reason, and the service stays healthy (``/healthz``) after every step;
* slow-loris clients (headers or body dribbled byte by byte) do not stop others being served;
* malformed TLS (plain HTTP, random bytes, a truncated ClientHello) on the TLS port.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.duis import errors as duis_errors
from gateway.service.app import Service
from gateway.service.config import TlsServerConfig
from tests.badinput import tally
from tests.badinput.mutate import apply, apply_tree, mutations, tree_mutations
from tests.service.servicekit import Receiver, duis_body, make_pki, running, service_config

XML = "application/xml"
CAP = 64 * 1024  # servicekit's max_body_bytes
INGRESS_REASONS = {"unsupported_media_type", "unknown_destination", "oversize_body", "draining"}
NAMED = INGRESS_REASONS | {
    cls.code
    for cls in vars(duis_errors).values()
    if isinstance(cls, type) and issubclass(cls, duis_errors.DuisError)
}


class LiveService:
    """A real :class:`Service` (plus a DNO receiver) on its own event loop in a background thread."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="badinput-service", daemon=True)
        self.receiver = Receiver()
        self.tmp = tmp
        self.svc: Service | None = None

    def _call(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> LiveService:
        self.thread.start()
        self._call(self.receiver.start())
        self.svc = Service(service_config(self.tmp, self.receiver.url))
        self._call(self.svc.start())
        return self

    def stop(self) -> None:
        if self.svc is not None:
            self._call(self.svc.stop(), 30)
        self._call(self.receiver.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def port(self) -> int:
        assert self.svc is not None
        return self.svc.port

    @property
    def admin_port(self) -> int:
        assert self.svc is not None
        return self.svc.admin_port


LIVE: LiveService | None = None


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    global LIVE
    LIVE = LiveService(tmp_path_factory.mktemp("ingress")).start()
    try:
        yield LIVE
    finally:
        LIVE.stop()
        LIVE = None


def post(
    port: int, path: str, body: bytes, ctype: str | None = XML, *, chunked: bool = False
) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {} if ctype is None else {"Content-Type": ctype}
        if chunked:
            parts = [body[i : i + 997] for i in range(0, len(body), 997)] or [b""]
            conn.request("POST", path, body=iter(parts), headers=headers, encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


SEEDS: list[bytes] = [duis_body(n) for n in range(5)]


class IngressMachine(RuleBasedStateMachine):
    """Random traffic against the live ingress; invariants hold after every request."""

    def __init__(self) -> None:
        super().__init__()
        assert LIVE is not None
        self.live = LIVE
        self.counter = random.Random(0).randrange(1 << 30)

    def _send(self, kind: str, body: bytes, *, path: str = "/duis/dno/dno-a", ctype: str | None = XML,
              chunked: bool = False, expect: set[int] | None = None) -> None:  # fmt: skip
        status, text = post(self.live.port, path, body, ctype, chunked=chunked)
        reason = text.split(":", 1)[0].strip() if status >= 400 else "accepted"
        tally.count("http-ingress", f"{status} {reason}")
        assert status < 500 or (status == 503 and reason == "store_unavailable"), (kind, status, text)
        if status >= 400:
            assert reason in NAMED, (kind, status, text)
        if expect is not None:
            assert status in expect, (kind, status, text)

    def _fresh(self) -> bytes:
        self.counter += 1
        return duis_body(self.counter)

    @rule(lane=st.sampled_from(["/duis/dno/dno-a", "/duis/observe"]))
    def valid(self, lane: str) -> None:
        self._send("valid", self._fresh(), path=lane, expect={202, 204})

    @rule(ops=mutations())
    def mutated(self, ops: list[tuple[str, int, int, bytes]]) -> None:
        self._send("mutated", apply(self._fresh(), ops), expect={202, 204, 400})

    @rule(ops=tree_mutations())
    def tree_mutated(self, ops: list[tuple[str, int, int]]) -> None:
        self._send("tree-mutated", apply_tree(self._fresh(), ops), expect={202, 204, 400})

    @rule(cut=st.integers(1, 200))
    def truncated(self, cut: int) -> None:
        body = self._fresh()
        self._send("truncated", body[: max(1, len(body) - cut)], expect={400})

    @rule(chunked=st.booleans())
    def oversized(self, chunked: bool) -> None:
        self._send("oversized", duis_body(1, pad=CAP + 1), chunked=chunked, expect={413})

    @rule(blob=st.binary(max_size=4096))
    def garbage(self, blob: bytes) -> None:
        self._send("garbage", blob, expect={400})

    @rule(ctype=st.sampled_from(["text/html", "application/json", "multipart/form-data; boundary=x",
                                 "application/x-www-form-urlencoded", None]))  # fmt: skip
    def wrong_content_type(self, ctype: str | None) -> None:
        self._send("content-type", self._fresh(), ctype=ctype, expect={415})

    @rule()
    def chunked_valid(self) -> None:
        self._send("chunked", self._fresh(), chunked=True, expect={202, 204})

    @rule(user=st.text(alphabet="abcxyz-0189:", min_size=1, max_size=30))
    def unknown_destination(self, user: str) -> None:
        if user in ("dno-a",) or user.replace(":", "").replace("-", "").lower() == "90b3d51f30020000":
            return
        self._send("destination", self._fresh(), path=f"/duis/dno/{user}", expect={404})

    @invariant()
    def healthy(self) -> None:
        assert healthz(self.live.admin_port) == 200


IngressMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def test_ingress_under_random_bad_traffic_never_fails_and_names_every_rejection(live: LiveService) -> None:
    IngressMachine.TestCase("runTest").runTest()


# ------------------------------------------------------------------ slow-loris


async def _dribble_headers(port: int, stop: asyncio.Event) -> bool:
    """Send a request's headers one byte every 0.2 s; returns True if the server closed on us."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        b"POST /duis/observe HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\nContent-Length: 10\r\n"
    )
    try:
        for b in head:
            if stop.is_set():
                return False
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.2)
            if reader.at_eof():
                return True
        return False
    except (ConnectionError, OSError):
        return True
    finally:
        writer.close()


async def _dribble_body(port: int, stop: asyncio.Event) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = duis_body(9)
    head = (f"POST /duis/observe HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    try:
        writer.write(head)
        for b in body:
            if stop.is_set():
                return False
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.2)
            if reader.at_eof():
                return True
        return False
    except (ConnectionError, OSError):
        return True
    finally:
        writer.close()


async def test_slow_loris_clients_do_not_stop_others_being_served(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        async with running(Service(service_config(tmp_path, receiver.url))) as svc:
            stop = asyncio.Event()
            slow = [asyncio.create_task(_dribble_headers(svc.port, stop)) for _ in range(15)]
            slow += [asyncio.create_task(_dribble_body(svc.port, stop)) for _ in range(15)]
            await asyncio.sleep(0.5)
            worst = 0.0
            async with aiohttp.ClientSession() as http:
                for n in range(30):
                    t0 = time.perf_counter()
                    async with http.post(f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=duis_body(n),
                                         headers={"Content-Type": XML}) as resp:  # fmt: skip
                        assert resp.status == 204
                    worst = max(worst, time.perf_counter() - t0)
            stop.set()
            await asyncio.gather(*slow)
            tally.FIGURES["slow-loris: 30 slow connections open, normal requests served"] = "30/30"
            tally.FIGURES["slow-loris: slowest normal request meanwhile (ms)"] = round(worst * 1000, 1)
            assert worst < 2.0
    finally:
        await receiver.stop()


async def test_a_body_dribbled_slower_than_the_read_timeout_gets_408_and_the_connection_closes(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from gateway.service.config import ServerConfig

    base = service_config(tmp_path)
    cfg = replace(base, server=replace(base.server, read_timeout=0.5))
    assert isinstance(cfg.server, ServerConfig)
    async with running(Service(cfg)) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(b"POST /duis/observe HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\n"
                     b"Content-Length: 100\r\n\r\n<a>")  # fmt: skip
        await writer.drain()
        head = await asyncio.wait_for(reader.read(4096), timeout=5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 408") and b"read_timeout" in head


async def test_server_times_out_a_client_that_never_finishes_its_headers(tmp_path: Path) -> None:
    async with running(Service(service_config(tmp_path))) as svc:
        _reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(b"POST /duis/observe HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        runner = svc._runner
        assert runner is not None and runner.server is not None
        handlers = list(runner.server.connections)
        assert handlers, "the slow connection is not open"
        # headers begun and not finished: closed by [server] header_timeout (408) or the keep-alive, whichever first
        timeouts = [min(h.keepalive_timeout, svc.config.server.header_timeout) for h in handlers]
        tally.FIGURES["slow-loris: effective idle timeout before headers complete (s)"] = max(timeouts)
        writer.close()
        assert max(timeouts) <= 60, f"a half-sent request may hold a connection for {max(timeouts)} s"


# ------------------------------------------------------------------ malformed TLS


def _truncated_client_hello() -> bytes:
    """The first 60 bytes of a real ClientHello (produced by Python's TLS stack into a memory BIO)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16  # handshake record
    return hello[:60]


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(4096):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


async def test_malformed_tls_is_refused_and_the_tls_ingress_keeps_serving(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    pki = make_pki(pki_dir)
    receiver = Receiver()
    await receiver.start()
    cfg = service_config(tmp_path, receiver.url)
    tls = TlsServerConfig(cert_file=str(pki.server_cert), key_file=str(pki.server_key))
    svc = Service(replace(cfg, server=replace(cfg.server, tls=tls)))
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    probes = {
        "plain HTTP to the TLS port": b"POST /duis/observe HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        "random bytes": random.Random(7).randbytes(2048),
        "truncated ClientHello": _truncated_client_hello(),
        "TLS record header claiming 16 KiB, then nothing": b"\x16\x03\x01\x40\x00",
        "SSLv2-style hello": bytes.fromhex("802b0103010012000000100000040000050000") + os.urandom(16),
    }
    try:
        async with running(svc), aiohttp.ClientSession() as http:
            for name, data in probes.items():
                t0 = time.perf_counter()
                answer = await asyncio.to_thread(_raw, svc.port, data)
                tally.count("tls-ingress", f"{name}: closed ({len(answer)} bytes back)")
                assert b"HTTP/1.1 2" not in answer, name  # nothing is ever accepted over a broken handshake
                assert time.perf_counter() - t0 < 5.0, name
                async with http.post(f"https://127.0.0.1:{svc.port}/duis/dno/dno-a", data=duis_body(1),
                                     headers={"Content-Type": XML}, ssl=ctx) as resp:  # fmt: skip
                    assert resp.status == 204, name
                tally.count("tls-ingress", "good TLS client served after the probe")
    finally:
        await receiver.stop()


def test_named_reasons_cover_every_duis_error_code() -> None:
    assert {"malformed_xml", "doctype_forbidden", "oversize_body", "unsupported_encoding"} <= NAMED
