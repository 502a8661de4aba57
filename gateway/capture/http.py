"""HTTP/1.1 message framing over one reassembled TCP byte stream, on h11 (sans-I/O).

Theory of operation
-------------------
A capture gives us, per TCP direction, an in-order byte stream (see ``tcp.py``) with the capture
time (integer nanoseconds) of each delivered chunk. :class:`HttpStreamParser` cuts that stream
into HTTP/1.1 messages: requests on the client->server stream, responses on the server->client
stream. It never touches sockets or clocks: ``feed(data, ts)``, ``gap(...)`` and ``end(ts)`` go in,
lists of events come out (:class:`HttpRequest`, :class:`HttpResponse`, :class:`HttpProblem`).

The framing itself is h11's. A parser plays, towards h11, the *other* end of the direction it
watches, with one ``h11.Connection`` per message exchange:

* request stream: ``h11.Connection(our_role=SERVER)`` turns the bytes into ``Request``, ``Data``,
  ``EndOfMessage`` (Content-Length and chunked bodies). After a request, h11 would pause until
  "we" answered; a passive observer has nothing to answer with (the real response is framed
  on the other stream), so the next request goes to a fresh connection, handed the bytes h11
  had already received (``trailing_data``). That is keep-alive and pipelining; it measured
  cheaper than closing each cycle by sending h11 a synthetic response. When h11 says the
  connection must close after a message (``Connection: close``, HTTP/1.0: ``MUST_CLOSE``),
  the connection is kept and any later byte is refused.
* response stream: ``h11.Connection(our_role=CLIENT)``, primed before response bytes are parsed
  with the request they answer (``expect_response_to`` queues the methods seen on the request
  stream), so that a response to HEAD has no body; 1xx interim responses, 204/304, chunked and
  close-delimited bodies are h11's rules. The primer proposes an upgrade only when the request
  did (a proposal costs h11 extra state changes on every exchange), so a ``101 Switching
  Protocols`` -- after which nothing is HTTP -- answering it is seen as such; a 101 nobody
  asked for is h11's error, reported as ``upgrade`` too.

What this module adds around h11 is what an observer needs and a server does not:

* positions and times: the stream offset and capture time of each message's first byte (the
  ``ts`` of the chunk that carried it) and of the chunk that completed it. At a message end the
  bytes still in h11's buffer (``trailing_data``) are the start of the next message; they always
  came with the current chunk, because h11 is drained (until ``NEED_DATA``) after every chunk.
  Chunks are handed to h11 in slices of at most ``_SLICE`` bytes so that this copy stays small.
* refusals of what h11 accepts but a capture cannot frame with confidence -- a second reader
  that frames differently from the real server is how request smuggling works: obsolete header
  line folding (h11 unfolds it), a request with both Transfer-Encoding and Content-Length
  (h11 lets Transfer-Encoding win), a message head over ``max_head`` that arrived in one piece
  (h11's ``max_incomplete_event_size`` only bounds heads still incomplete).
* robustness h11 does not offer: empty lines before a message are skipped (RFC 9112 2.2);
  a stream that does not start like HTTP is refused early (``not-http``); a stream picked up
  midstream (``midstream()``, no SYN in the capture) is resynchronised on the first complete
  request or status line; missing bytes (``gap``) end the stream.
* bounded memory: a body is kept up to ``max_body`` bytes (longer: framing followed, body
  dropped, ``oversize``); h11's buffer is bounded by ``max_head`` plus one slice.

h11 errors (``RemoteProtocolError``) are mapped to stable report codes (``_code_for``): in a
chunked body -> ``bad-chunk``; head too long -> ``head-too-large``; bad or conflicting
Content-Length -> ``ambiguous-framing``; a bad first start line -> ``not-http`` (later ones
``bad-message``); at the end of the stream -> ``incomplete``; anything else -> ``bad-message``.
Any problem except ``resync`` ends the stream in ``DESYNC``: nothing after it is trusted.

The parser's own states (h11 owns the per-message ones) and their transitions:

    OPEN --midstream(), before any byte--> SYNC --start line found--> OPEN
    OPEN --problem / gap / upgrade--> DESYNC
    SYNC / OPEN / DESYNC --end()--> DONE
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

import h11

__all__ = [
    "HttpEvent",
    "HttpProblem",
    "HttpRequest",
    "HttpResponse",
    "HttpStreamParser",
]

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A complete request. ``start``/``end`` are offsets in the stream; times are capture ns."""

    method: str
    target: str
    version: str
    headers: Headers
    body: bytes
    first_ts: int
    last_ts: int
    start: int
    end: int
    oversize: bool = False  # body longer than max_body: framing followed, body not kept

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response head (the body is framed and skipped, never stored)."""

    status: int
    reason: str
    version: str
    headers: Headers
    first_ts: int
    last_ts: int
    start: int


@dataclass(frozen=True, slots=True)
class HttpProblem:
    """Something that stops (``fatal``) or degrades the parsing of this stream.

    ``code``: ``not-http`` (stream does not start with an HTTP message), ``bad-message``
    (malformed start line or header, missing Host, obsolete line folding, bytes after a message
    that closed the connection), ``ambiguous-framing`` (both Transfer-Encoding and
    Content-Length, bad or conflicting Content-Lengths), ``bad-chunk``, ``head-too-large``,
    ``incomplete`` (stream ended or a gap came in the middle of a message), ``gap`` (bytes missing
    between messages: later messages cannot be trusted), ``resync`` (bytes skipped at a
    midstream pick-up; not fatal), ``upgrade`` (101 Switching Protocols: no more HTTP).
    ``in_message`` is True when a message had started and is lost.
    """

    code: str
    detail: str
    offset: int
    ts: int
    fatal: bool
    in_message: bool = False


HttpEvent = HttpRequest | HttpResponse | HttpProblem

# -- the parser's own states (h11 owns the per-message states) --------------------------------
SYNC: Final = "SYNC"
OPEN: Final = "OPEN"
DESYNC: Final = "DESYNC"
DONE: Final = "DONE"

_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    SYNC: frozenset({OPEN, DESYNC, DONE}),
    OPEN: frozenset({SYNC, DESYNC, DONE}),
    DESYNC: frozenset({DONE}),
    DONE: frozenset(),
}

# h11 events reused for every exchange (events are immutable).
_EOM: Final = h11.EndOfMessage()
_UPGRADE: Final = [("Connection", "upgrade"), ("Upgrade", "observed")]
# Requests that tell h11 what a response answers: (method is HEAD, upgrade proposed) -> primer.
_PRIMERS: Final = {
    (head, upgrade): h11.Request(
        method="HEAD" if head else "POST",
        target="/",
        headers=[("Host", "capture"), *(_UPGRADE if upgrade else [])],
    )
    for head in (False, True)
    for upgrade in (False, True)
}

_Data: Final = h11.Data
_EndOfMessage: Final = h11.EndOfMessage
_NEED_DATA: Final = h11.NEED_DATA

_SLICE: Final = 16 * 1024  # largest piece handed to h11 at once (see the module docstring)
_MAX_METHOD: Final = 32
_MAX_AWAITED: Final = 1024

_BLANK_LINE = re.compile(rb"\n\r?\n")  # end of a head, as h11 finds it
_FOLD = re.compile(rb"\n[ \t]")  # a header line starting with whitespace: obsolete line folding
_METHOD_PREFIX = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")
# A body need not end with CRLF, so the next message may start anywhere: match the whole line.
_RESYNC_REQUEST = re.compile(
    rb"((?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) [^\x00-\x20\x7f]+ HTTP/1\.[01]\r\n)"
)
_RESYNC_RESPONSE = re.compile(rb"(HTTP/1\.[01] [0-9]{3} [^\r\n]*\r\n)")

# h11 RemoteProtocolError messages (h11 0.14 to 0.16; pinned by tests) that name a specific problem.
_START_LINE_ERRORS: Final = (
    "illegal request line",
    "no request line",
    "illegal status line",
    "no response line",
)
_LENGTH_ERRORS: Final = ("conflicting Content-Length", "bad Content-Length")
_UNASKED_101: Final = "Received server _SWITCH_UPGRADE event without a pending proposal"


class HttpStreamParser:
    """Cuts one direction of a connection into HTTP/1.1 messages (see the module docstring)."""

    __slots__ = (
        "_body_len",
        "_conn",
        "_eof",
        "_fed_end",
        "_first_ts",
        "_head",
        "_head_cap",
        "_head_raw",
        "_in_body",
        "_is_request",
        "_methods",
        "_parts",
        "_pre",
        "_reusable",
        "_sniff",
        "_start",
        "discarded",
        "max_body",
        "max_head",
        "role",
        "state",
    )

    def __init__(
        self,
        role: Literal["request", "response"],
        *,
        max_head: int = 64 * 1024,
        max_body: int = 16 * 1024 * 1024,
        resync: bool = False,
    ) -> None:
        self.role = role
        self.max_head = max_head
        self.max_body = max_body
        self.state: str = SYNC if resync else OPEN
        self._is_request = role == "request"
        self._conn = self._new_conn()
        self._pre = bytearray()  # SYNC: bytes searched for the first start line
        self._fed_end = 0  # stream offset just past the last byte handed to h11 (or skipped)
        self._start = 0  # stream offset where the current message began
        self._first_ts: int | None = None  # capture time of its first byte (None: not seen yet)
        # Bytes of the current message while its head is incomplete (None once the head is out).
        self._head_raw: bytes | bytearray | None = b""
        self._head_cap = max_head + 4
        self._head: tuple[str, str, str, Headers] | None = None
        self._parts: list[bytes | bytearray] = []
        self._body_len = 0
        self._in_body = False
        self._sniff = True  # the first message: is this HTTP at all?
        self._reusable = True  # False after a message that closes the connection
        self._eof = False
        # Response side: requests still awaiting a response: (method is HEAD, upgrade proposed).
        self._methods: deque[tuple[bool, bool]] = deque()
        self.discarded = 0  # bytes thrown away (DESYNC, resync)

    # -- public API ---------------------------------------------------------------------------
    def expect_response_to(self, method: str, *, upgrade: bool = False) -> None:
        """Response side: a request with ``method`` was sent (needed to frame HEAD responses);
        ``upgrade``: it proposed a protocol upgrade (an ``Upgrade`` header)."""
        if len(self._methods) < _MAX_AWAITED:
            self._methods.append((method == "HEAD", upgrade))

    def midstream(self) -> None:
        """The stream was picked up without its start: skip to the first message start."""
        if self.state == OPEN and not self._fed_end:
            self._go(SYNC)

    @property
    def in_message(self) -> bool:
        """True while a message has started and is not complete."""
        return self.state == OPEN and (self._in_body or bool(self._head_raw))

    @property
    def dead(self) -> bool:
        return self.state in (DESYNC, DONE)

    def feed(self, data: bytes, ts: int) -> list[HttpEvent]:
        """Bytes that follow in the stream, delivered at capture time ``ts`` (ns)."""
        events: list[HttpEvent] = []
        if self.state != OPEN:
            if self.state != SYNC:
                self.discarded += len(data)
                return events
            found = self._do_resync(data, ts, events)
            if found is None:
                return events
            data = found
        n = len(data)
        if n <= _SLICE:
            self._push(data, ts, events, 0)
            return events
        for i in range(0, n, _SLICE):
            piece = data[i : i + _SLICE]
            if not self._push(piece, ts, events, n - i - len(piece)):
                break
        return events

    def gap(self, length: int, ts: int) -> list[HttpEvent]:
        """``length`` bytes of the stream are missing here. Whatever follows cannot be framed."""
        if self.state in (DESYNC, DONE):
            self.discarded += length
            return []
        in_msg = self.in_message
        where = f"{length} bytes missing at stream offset {self._fed_end}"
        detail = ("message in progress damaged: " if in_msg else "between messages: ") + where
        return [self._fail("gap", detail, ts, 0, in_message=in_msg)]

    def end(self, ts: int) -> list[HttpEvent]:
        """The stream ended (FIN, RST, eviction or end of capture)."""
        events: list[HttpEvent] = []
        if self.state == OPEN:
            # h11 decides whether the end is clean: a close-delimited body ends here, anything
            # else unfinished is an error, mapped to ``incomplete``.
            self._eof = True
            self._conn.receive_data(b"")
            self._pump(ts, events, 0)
        if self.state != DONE:
            self._go(DONE)
        self._pre.clear()
        self._parts = []
        self._head_raw = None
        return events

    # -- internals ----------------------------------------------------------------------------
    def _new_conn(self) -> h11.Connection:
        return h11.Connection(h11.SERVER if self._is_request else h11.CLIENT, self.max_head)

    def _go(self, new: str) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise AssertionError(f"illegal transition {self.state} -> {new}")  # pragma: no cover
        self.state = new

    def _fail(self, code: str, detail: str, ts: int, rest: int, *, in_message: bool = True) -> HttpProblem:
        """End the stream in DESYNC; ``rest``: bytes of the current chunk not handed to h11."""
        problem = HttpProblem(code, detail, self._start, ts, True, in_message)
        if self.state == OPEN:
            self.discarded += len(self._conn.trailing_data[0])
        self.discarded += rest + len(self._pre)
        self._pre.clear()
        self._parts = []
        self._head_raw = None
        self._go(DESYNC)
        return problem

    def _do_resync(self, data: bytes, ts: int, events: list[HttpEvent]) -> bytes | None:
        """SYNC: keep looking for a start line; the bytes from it on once found."""
        buf = self._pre
        buf += data
        pattern = _RESYNC_REQUEST if self._is_request else _RESYNC_RESPONSE
        m = pattern.search(buf)
        if m is None:
            drop = max(0, len(buf) - 512)  # keep more than any plausible start line
            if drop:
                del buf[:drop]
                self._fed_end += drop
                self.discarded += drop
            return None
        drop = m.start(1)
        self._fed_end += drop
        self.discarded += drop
        rest = bytes(buf[drop:])
        buf.clear()
        self._go(OPEN)
        self._sniff = False  # a start line was found
        self._start = self._fed_end
        if self.discarded:
            events.append(
                HttpProblem(
                    "resync",
                    f"flow picked up midstream: {self.discarded} bytes skipped before the first message",
                    self._fed_end,
                    ts,
                    False,
                )
            )
            self.discarded = 0
        return rest

    def _push(self, data: bytes, ts: int, events: list[HttpEvent], rest: int) -> bool:
        """Hand one slice to h11 and collect what it frames; False once the stream is dead."""
        hr = self._head_raw
        if hr is not None:
            if not hr:
                # Between messages: empty lines before a message are ignored (RFC 9112 2.2).
                if data[:1] in (b"\r", b"\n"):
                    stripped = data.lstrip(b"\r\n")
                    self._fed_end += len(data) - len(stripped)
                    data = stripped
                    if not data:
                        return True
                self._start = self._fed_end
                self._first_ts = ts
                hr = data if len(data) <= self._head_cap else data[: self._head_cap]
            elif len(hr) < self._head_cap:
                if isinstance(hr, bytes):
                    hr = bytearray(hr)
                hr += data[: self._head_cap - len(hr)]
            self._head_raw = hr
            if self._sniff:
                problem = self._sniff_start(hr, ts, rest + len(data))
                if problem is not None:
                    events.append(problem)
                    return False
        conn = self._conn
        if not self._is_request and conn.our_state is h11.IDLE:
            self._prime()
        conn.receive_data(data)
        self._fed_end += len(data)
        return self._pump(ts, events, rest)

    def _prime(self) -> None:
        """Response side: tell h11 the request this response answers."""
        methods = self._methods
        conn = self._conn
        conn.send(_PRIMERS[methods.popleft() if methods else (False, False)])
        conn.send(_EOM)

    def _sniff_start(self, hr: bytes | bytearray, ts: int, rest: int) -> HttpProblem | None:
        """First message only: refuse at once what cannot be HTTP (TLS, other protocols)."""
        n = len(hr)
        if self._is_request:
            if n < _MAX_METHOD + 1 and hr.find(b" ", 0, _MAX_METHOD + 1) < 0:
                return None  # too early to tell
            if _METHOD_PREFIX.match(hr, 0, min(n, _MAX_METHOD + 1)) is not None:
                return None
            detail = "stream does not start with an HTTP request line"
        else:
            if n < 5 or hr.startswith(b"HTTP/"):
                return None
            detail = "stream does not start with an HTTP status line"
        return self._fail("not-http", detail, ts, rest)

    def _pump(self, ts: int, events: list[HttpEvent], rest: int) -> bool:
        """Take events out of h11 until it needs data; False once the stream is dead."""
        conn = self._conn
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as e:
                code = self._code_for(e)
                if self._eof:
                    detail = f"stream ended inside a message ({e})"
                elif not self._reusable:
                    detail = f"bytes after a message that closed the connection ({e})"
                else:
                    detail = str(e)
                events.append(self._fail(code, detail, ts, rest))
                return False
            if isinstance(ev, _Data):
                if self._is_request:
                    data = ev.data
                    size = self._body_len + len(data)
                    self._body_len = size
                    if size <= self.max_body:
                        self._parts.append(data)
                    elif self._parts:
                        self._parts = []  # oversize: framing is still followed, the body is not kept
                continue
            if ev is _NEED_DATA:
                return True
            if isinstance(ev, _EndOfMessage):
                if not self._end_of_message(ts, events):
                    return True  # nothing buffered: h11 would only say NEED_DATA
                conn = self._conn  # the next message's connection
                continue
            if isinstance(ev, (h11.Request, h11.Response)):
                if not self._on_head(ev, ts, events, rest):
                    return False
                continue
            if isinstance(ev, h11.InformationalResponse):
                if ev.status_code == 101:
                    if self._on_head(ev, ts, events, rest):
                        events.append(
                            self._fail(
                                "upgrade", "101 Switching Protocols: no more HTTP", ts, rest, in_message=False
                            )
                        )
                    return False
                # Interim response: the final one follows, and its head starts after this one.
                if not self._head_ok(ts, events, rest):
                    return False
                tail = conn.trailing_data[0]
                self._start = self._fed_end - len(tail)
                self._head_raw = tail[: self._head_cap]
                self._first_ts = ts if tail else None
                continue
            # ConnectionClosed, or PAUSED (only after MUST_CLOSE, where h11 refuses more bytes).
            return True

    def _head_ok(self, ts: int, events: list[HttpEvent], rest: int) -> bool:
        """The refusals h11 does not make, on the raw bytes of the head h11 just parsed."""
        hr = self._head_raw or b""
        m = _BLANK_LINE.search(hr)
        if m is None or m.end() > self.max_head:
            events.append(self._fail("head-too-large", f"message head over {self.max_head} bytes", ts, rest))
            return False
        if _FOLD.search(hr, 0, m.start() + 1) is not None:
            events.append(self._fail("bad-message", "obsolete header line folding", ts, rest))
            return False
        return True

    def _on_head(
        self,
        ev: h11.Request | h11.Response | h11.InformationalResponse,
        ts: int,
        events: list[HttpEvent],
        rest: int,
    ) -> bool:
        if not self._head_ok(ts, events, rest):
            return False
        headers = tuple([(n.decode("ascii"), v.decode("latin-1")) for n, v in ev.headers.raw_items()])
        self._head_raw = None
        self._sniff = False
        self._in_body = True
        version = ev.http_version.decode("ascii")
        first_ts = self._first_ts if self._first_ts is not None else ts
        if isinstance(ev, h11.Request):
            te = cl = False
            for name, _ in headers:
                if len(name) == 17 and name.lower() == "transfer-encoding":
                    te = True
                elif len(name) == 14 and name.lower() == "content-length":
                    cl = True
            if te and cl:
                events.append(
                    self._fail("ambiguous-framing", "both Transfer-Encoding and Content-Length", ts, rest)
                )
                return False
            self._head = (ev.method.decode("ascii"), ev.target.decode("latin-1"), version, headers)
            self._parts = []
            self._body_len = 0
            return True
        events.append(
            HttpResponse(
                ev.status_code, ev.reason.decode("latin-1"), version, headers, first_ts, ts, self._start
            )
        )
        return True

    def _end_of_message(self, ts: int, events: list[HttpEvent]) -> bool:
        """Emit the request; set up the next message. True when bytes of it are buffered."""
        conn = self._conn
        tail = conn.trailing_data[0]  # the start of the next message, from the current chunk
        end = self._fed_end - len(tail)
        if self._is_request and self._head is not None:
            method, target, version, headers = self._head
            oversize = self._body_len > self.max_body
            parts = self._parts
            body = b"" if oversize or not parts else bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
            first_ts = self._first_ts if self._first_ts is not None else ts
            events.append(
                HttpRequest(method, target, version, headers, body, first_ts, ts, self._start, end, oversize)
            )
        self._head = None
        self._parts = []
        self._body_len = 0
        self._in_body = False
        self._start = end
        if conn.their_state is h11.MUST_CLOSE:
            # Connection: close or HTTP/1.0: no message may follow; h11 refuses any byte now.
            self._reusable = False
        else:
            # The next message gets a fresh h11 connection (cheaper than closing the cycle
            # from the side we only pretend to play), holding what h11 had already received.
            if tail[:1] in (b"\r", b"\n"):
                # Empty lines before a message (RFC 9112 2.2), which h11 refuses: skip them.
                stripped = tail.lstrip(b"\r\n")
                self._start += len(tail) - len(stripped)
                tail = stripped
            self._conn = conn = self._new_conn()
            if tail:
                if not self._is_request:
                    self._prime()
                conn.receive_data(tail)
        self._head_raw = tail[: self._head_cap]
        self._first_ts = ts if tail else None
        return bool(tail)

    def _code_for(self, e: h11.RemoteProtocolError) -> str:
        """The report code of an h11 error, from where it happened (and its message)."""
        if self._eof:
            return "incomplete"
        if not self._reusable:
            return "bad-message"  # bytes after a message that closed the connection
        if self._in_body:
            return "bad-chunk"  # only a chunked body can be malformed
        if e.error_status_hint == 431:
            return "head-too-large"
        msg = str(e)
        if msg.startswith(_UNASKED_101):
            return "upgrade"
        if msg.startswith(_START_LINE_ERRORS):
            return "not-http" if self._sniff else "bad-message"
        if msg.startswith(_LENGTH_ERRORS):
            return "ambiguous-framing"
        return "bad-message"
