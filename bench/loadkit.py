"""A lean HTTP/1.1 load generator and receiver for the transport benchmarks.

The benchmarks run every process on the same 2 cores, so the harness competes with what it
measures. aiohttp's client costs about 250 µs of CPU per request and its server 150–200 µs here:
at 2,000 msg/s the harness alone would take most of a core. This harness is asyncio transports with
``httptools`` (llhttp, the parser behind uvicorn) framing the responses and requests, keep-alive
connections, one request in flight per connection (no pipelining): it costs a fraction of that, so
the baselines (direct, the plain aiohttp proxy) and the gateway all get the machine. It is only a
measuring instrument; the product's HTTP stays aiohttp.

* :class:`Client` — ``await client.post(body, headers)`` → ``(status, headers)``; ``connections``
  keep-alive connections, each carrying one request at a time.
* :func:`receiver` — the DNO stand-in: ``POST /smartdcc/duis`` answers 204 and records the first
  arrival time of each body (by SHA-256), ``GET /stats`` returns them as JSON, ``POST /reset`` clears.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from urllib.parse import urlsplit

import httptools


class _Conn(asyncio.Protocol):
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


class _ClientConn(_Conn):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, dict[str, str]]] | None = None
        self.headers: dict[str, str] = {}
        self.closed = False

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self.headers))


class Client:
    """Keep-alive HTTP/1.1 POSTs to one URL over up to ``connections`` connections."""

    def __init__(self, url: str, connections: int) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._free: deque[_ClientConn] = deque()
        self._slots = asyncio.Semaphore(connections)
        self._all: list[_ClientConn] = []

    async def _conn(self) -> _ClientConn:
        while self._free:
            c = self._free.popleft()
            if not c.closed:
                return c
        loop = asyncio.get_running_loop()
        _t, proto = await loop.create_connection(_ClientConn, self.host, self.port)
        self._all.append(proto)
        return proto

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
        async with self._slots:
            c = await self._conn()
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}\r\n"
            ).encode("latin-1")
            c.waiter = asyncio.get_running_loop().create_future()
            assert c.transport is not None
            c.transport.write(head + body)
            try:
                result = await c.waiter
            except BaseException:
                if c.transport is not None:
                    c.transport.close()
                raise
            if not c.closed and c.headers.get("connection", "").lower() != "close":
                self._free.append(c)
            elif c.transport is not None:
                c.transport.close()
            return result

    async def close(self) -> None:
        for c in self._all:
            if c.transport is not None:
                c.transport.close()


class _ServerConn(_Conn):
    def __init__(self, arrivals: dict[str, float]) -> None:
        self.arrivals = arrivals
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method()
        if method == b"POST" and self.url == b"/smartdcc/duis":
            self.arrivals.setdefault(hashlib.sha256(b"".join(self.body)).hexdigest(), time.monotonic())
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif method == b"GET" and self.url == b"/count":  # cheap to poll while deliveries go on
            data = b'{"n": %d}' % len(self.arrivals)
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
            )
        elif method == b"GET" and self.url == b"/stats":
            data = json.dumps(self.arrivals).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
            )
        elif method == b"POST" and self.url == b"/reset":
            self.arrivals.clear()
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        if not self.parser.should_keep_alive():
            self.transport.close()


async def receiver(port: int) -> None:
    """Serve the DNO stand-in on 127.0.0.1:``port`` until cancelled."""
    arrivals: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ServerConn(arrivals), "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


async def get_json(url: str) -> object:
    """GET ``url`` (the receiver's /stats) and decode its JSON body."""
    u = urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    writer.write(f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    _head, _, body = data.partition(b"\r\n\r\n")
    return json.loads(body)
