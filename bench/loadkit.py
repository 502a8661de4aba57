"""A lean HTTP/1.1 load generator and receiver for the transport benchmarks.

The benchmarks run every process on the same 2 cores, so the harness competes with what it
measures. aiohttp's client costs about 250 µs of CPU per request and its server 150–200 µs here:
at 2,000 msg/s the harness alone would take most of a core. This harness is asyncio transports with
``httptools`` (llhttp, the parser behind uvicorn) framing the responses and requests, keep-alive
connections, one request in flight per connection (no pipelining): it costs a fraction of that, so
the baselines (direct, the plain aiohttp proxy) and the gateway all get the machine. It is only a
measuring instrument; the product's HTTP stays aiohttp.

* :class:`Client` — ``await client.post(body, headers)`` → ``(status, headers)``; ``connections``
  keep-alive connections, each carrying one request at a time. For open loops, ``client.start(body,
  headers, done)`` sends without a task or a future per request: ``done(status, headers, error)`` is
  called from the connection's parser when the answer is complete (a request finding every connection
  busy waits in a queue, its latency still counted from its scheduled time).
* :func:`open_loop` — sends at a fixed rate with :meth:`Client.start`, waking once per due batch (not a
  timer and a task per message: at 2,000–3,000 msg/s those cost the load generator ~90 µs per message
  on the cores the measured server needs).
* :func:`receiver` — the DNO stand-in: ``POST /smartdcc/duis`` answers 204 and records the first
  arrival time of each body (by SHA-256), ``GET /stats`` returns them as JSON, ``POST /reset`` clears.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import httptools


class _Conn(asyncio.Protocol):
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


#: ``done(status, headers, error)``: the answer to a request sent with :meth:`Client.start`
Done = Callable[[int, "dict[str, str] | None", "BaseException | None"], None]


class _ClientConn(_Conn):
    def __init__(self, owner: Client | None = None) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, dict[str, str]]] | None = None
        self.done: Done | None = None
        self.owner = owner
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
        done, self.done = self.done, None
        if done is not None:
            done(0, None, exc)
            if self.owner is not None:
                self.owner._lost(self)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self.headers))
        done, self.done = self.done, None
        if done is not None:
            done(self.parser.get_status_code(), self.headers, None)
            assert self.owner is not None
            self.owner._finished(self)


class Client:
    """Keep-alive HTTP/1.1 POSTs to one URL over up to ``connections`` connections."""

    def __init__(self, url: str, connections: int) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._free: deque[_ClientConn] = deque()
        self._slots = asyncio.Semaphore(connections)
        self._all: list[_ClientConn] = []
        self._limit, self._opened = connections, 0  # (connections of start(): opened or opening)
        self._queue: deque[tuple[bytes, Done]] = deque()
        self._head = f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n".encode("latin-1")

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

    # ------------------------------------------------------------------ open loops (no task per request)
    def start(self, body: bytes, headers: dict[str, str], done: Done) -> None:
        """Send ``body`` now on a free connection (or a new one, up to ``connections``; else queued);
        ``done`` is called with the answer. Not to be mixed with :meth:`post` on one client."""
        data = (
            self._head
            + b"Content-Length: %d\r\n" % len(body)
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
            + b"\r\n"
            + body
        )
        while self._free:
            c = self._free.popleft()
            if not c.closed:
                self._send(c, data, done)
                return
            self._opened -= 1
        if self._opened < self._limit:
            self._opened += 1
            asyncio.get_running_loop().create_task(self._open_and_send(data, done))
        else:
            self._queue.append((data, done))

    def _send(self, c: _ClientConn, data: bytes, done: Done) -> None:
        c.done = done
        assert c.transport is not None
        c.transport.write(data)

    async def _open_and_send(self, data: bytes, done: Done) -> None:
        loop = asyncio.get_running_loop()
        try:
            _t, proto = await loop.create_connection(lambda: _ClientConn(self), self.host, self.port)
        except OSError as exc:
            self._opened -= 1
            done(0, None, exc)
            self._drain()
            return
        self._all.append(proto)
        self._send(proto, data, done)

    def _finished(self, c: _ClientConn) -> None:
        if c.closed or c.headers.get("connection", "").lower() == "close":
            if c.transport is not None:
                c.transport.close()
            self._lost(c)
        elif self._queue:
            self._send(c, *self._queue.popleft())
        else:
            self._free.append(c)

    def _lost(self, c: _ClientConn) -> None:
        if c in self._free:
            self._free.remove(c)
        self._opened -= 1
        self._drain()

    def _drain(self) -> None:
        """Open connections for queued requests while under the limit (after one closed or failed)."""
        while self._queue and self._opened < self._limit:
            self._opened += 1
            asyncio.get_running_loop().create_task(self._open_and_send(*self._queue.popleft()))

    async def close(self) -> None:
        for c in self._all:
            if c.transport is not None:
                c.transport.close()


async def open_loop(
    client: Client,
    payloads: Sequence[bytes],
    headers: dict[str, str],
    rate: float,
    on_answer: Callable[[int, int, dict[str, str] | None, BaseException | None, float], None],
) -> float:
    """Send ``payloads[i]`` at ``t0 + i / rate`` (an open loop: nothing waits for an answer before the
    next send); ``on_answer(i, status, headers, error, t_sched)`` as each answer completes. The loop
    wakes when the next send is due and sends every one due by then. Returns ``t0`` (``time.monotonic``)
    after the last answer."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    left = len(payloads)

    def answer(i: int, t_sched: float) -> Done:
        def done(status: int, hdrs: dict[str, str] | None, error: BaseException | None) -> None:
            nonlocal left
            on_answer(i, status, hdrs, error, t_sched)
            left -= 1
            if left == 0 and not finished.done():
                finished.set_result(None)

        return done

    t0 = time.monotonic()
    i, n = 0, len(payloads)
    while i < n:
        now = time.monotonic()
        while i < n and t0 + i / rate <= now:
            client.start(payloads[i], headers, answer(i, t0 + i / rate))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    if n:
        await finished
    return t0


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
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(data), data)
            )
        elif method == b"GET" and self.url == b"/stats":
            data = json.dumps(self.arrivals).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(data), data)
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
