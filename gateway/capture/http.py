"""HTTP/1.1 message framing over one reassembled TCP byte stream (sans-I/O).

Theory of operation
-------------------
A capture gives us, per TCP direction, an in-order byte stream (see ``tcp.py``) with the capture
time (integer nanoseconds) of each delivered chunk. :class:`HttpStreamParser` cuts that stream
into HTTP/1.1 messages: requests on the client->server stream, responses on the server->client
stream. It never touches sockets or clocks: ``feed(data, ts)``, ``gap(...)`` and ``end(ts)`` go in,
lists of events come out (:class:`HttpRequest`, :class:`HttpResponse`, :class:`HttpProblem`).

One parser owns one state machine. States and the transitions allowed between them are in
``_TRANSITIONS``; every change of state goes through ``_go`` which checks the table:

    IDLE ----head starts----> HEAD
    HEAD --Content-Length---> BODY ------length reached-----> IDLE   (message event)
    HEAD --chunked----------> CHUNK_SIZE -> CHUNK_DATA -> CHUNK_END -> CHUNK_SIZE ...
                              CHUNK_SIZE --size 0--> TRAILER --empty line--> IDLE
    HEAD --no body----------> IDLE
    HEAD --response, no framing--> UNTIL_CLOSE --end()--> DONE
    any --framing error / gap / not HTTP / upgrade--> DESYNC (terminal: rest of stream discarded)
    IDLE/HEAD --end()--> DONE

Framing follows RFC 9112: Transfer-Encoding (last coding ``chunked``) or Content-Length; a request
with neither has no body; a response with neither is delimited by the close of the connection;
1xx/204/304 responses and responses to HEAD have no body; interim 1xx responses are skipped.
What a lenient server might accept but an attacker could use to smuggle a second request is
*not* repaired: obsolete line folding, a request carrying both Transfer-Encoding and
Content-Length, differing Content-Length values, a bad chunk size line -- each ends the stream in
DESYNC with an :class:`HttpProblem`, since nothing after it can be framed with confidence.

Memory is bounded: a message head is at most ``max_head`` bytes, a stored body at most ``max_body``
bytes (a longer body is skipped -- its framing is still followed -- and reported as oversize), so a
parser holds at most about ``max_head + max_body`` bytes whatever the stream length.

Midstream pick-up (``resync=True``, used when the capture has no SYN for the flow): bytes are
discarded until something that looks like the start of a message (a complete request line or
status line); the number of skipped bytes is reported.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

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
    (malformed start line or header), ``ambiguous-framing`` (both Transfer-Encoding and
    Content-Length, or conflicting Content-Lengths), ``bad-chunk``, ``head-too-large``,
    ``incomplete`` (stream ended or a gap came in the middle of a message), ``gap`` (bytes missing
    between messages: later messages cannot be trusted), ``resync`` (bytes skipped at a
    midstream pick-up), ``upgrade`` (101 Switching Protocols: no more HTTP), ``oversize`` (body not
    kept; not fatal).
    ``in_message`` is True when a message had started and is lost.
    """

    code: str
    detail: str
    offset: int
    ts: int
    fatal: bool
    in_message: bool = False


HttpEvent = HttpRequest | HttpResponse | HttpProblem

# -- state machine ---------------------------------------------------------------------------
IDLE: Final = "IDLE"
HEAD: Final = "HEAD"
BODY: Final = "BODY"
CHUNK_SIZE: Final = "CHUNK_SIZE"
CHUNK_DATA: Final = "CHUNK_DATA"
CHUNK_END: Final = "CHUNK_END"
TRAILER: Final = "TRAILER"
UNTIL_CLOSE: Final = "UNTIL_CLOSE"
DESYNC: Final = "DESYNC"
DONE: Final = "DONE"

_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    IDLE: frozenset({HEAD, DESYNC, DONE}),
    HEAD: frozenset({IDLE, BODY, CHUNK_SIZE, UNTIL_CLOSE, DESYNC, DONE}),
    BODY: frozenset({IDLE, DESYNC, DONE}),
    CHUNK_SIZE: frozenset({CHUNK_DATA, TRAILER, DESYNC, DONE}),
    CHUNK_DATA: frozenset({CHUNK_END, DESYNC, DONE}),
    CHUNK_END: frozenset({CHUNK_SIZE, DESYNC, DONE}),
    TRAILER: frozenset({IDLE, DESYNC, DONE}),
    UNTIL_CLOSE: frozenset({DESYNC, DONE}),
    DESYNC: frozenset({DONE}),
    DONE: frozenset(),
}

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/(1\.[01])")
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: ([^\r\n]*))?")
_HEADER_NAME = re.compile(_TOKEN)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
_METHOD_PREFIX = re.compile(_TOKEN + rb" ")
# A body need not end with CRLF, so the next message may start anywhere: match the whole line.
_RESYNC_REQUEST = re.compile(
    rb"((?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) [^\x00-\x20\x7f]+ HTTP/1\.[01]\r\n)"
)
_RESYNC_RESPONSE = re.compile(rb"(HTTP/1\.[01] [0-9]{3} [^\r\n]*\r\n)")
_MAX_CHUNK_LINE: Final = 4096
_MAX_METHOD: Final = 32


class HttpStreamParser:
    """Cuts one direction of a connection into HTTP/1.1 messages (see the module docstring)."""

    __slots__ = (
        "_body_len",
        "_buf",
        "_buf_ts",
        "_chunk_left",
        "_first_ts",
        "_head",
        "_methods",
        "_offset",
        "_parts",
        "_remaining",
        "_resync",
        "_scan",
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
        self.state: str = IDLE
        self._resync = resync
        self._buf = bytearray()
        self._buf_ts = 0  # capture time of the oldest byte in _buf
        self._offset = 0  # stream offset of _buf[0]
        self._scan = 0  # bytes of the current head already searched for the blank line
        self._start = 0  # stream offset where the current message began
        self._first_ts = 0
        self._head: tuple[str, str, str, Headers] | None = None
        self._parts: list[bytes] = []
        self._body_len = 0
        self._remaining = 0
        self._chunk_left = 0
        # Response side: methods of requests still awaiting a response (HEAD has no body).
        self._methods: deque[str] = deque()
        self.discarded = 0  # bytes thrown away in DESYNC

    # -- public API ---------------------------------------------------------------------------
    def expect_response_to(self, method: str) -> None:
        """Response side: a request with ``method`` was sent (needed to frame HEAD responses)."""
        if len(self._methods) < 1024:
            self._methods.append(method)

    def midstream(self) -> None:
        """The stream was picked up without its start: skip to the first message start."""
        self._resync = True

    @property
    def in_message(self) -> bool:
        """True while a message has started and is not complete."""
        return self.state not in (IDLE, DESYNC, DONE) or (self.state == IDLE and bool(self._buf))

    @property
    def dead(self) -> bool:
        return self.state in (DESYNC, DONE)

    def feed(self, data: bytes, ts: int) -> list[HttpEvent]:
        """Bytes that follow in the stream, delivered at capture time ``ts`` (ns)."""
        if self.state in (DESYNC, DONE):
            self.discarded += len(data)
            return []
        if self.state == UNTIL_CLOSE:
            self._offset += len(data)
            return []
        events: list[HttpEvent] = []
        buf = self._buf
        old = len(buf)
        if not old:
            self._buf_ts = ts
        buf += data
        if self._resync:
            self._do_resync(events, ts)
            if self._resync:
                return events
            old = min(old, len(buf))
        i = 0
        old_ts = self._buf_ts
        while i < len(buf) and self.state not in (DESYNC, DONE, UNTIL_CLOSE):
            st = self.state
            if st == IDLE:
                # RFC 9112 2.2: ignore empty lines before a request/status line.
                while i + 1 < len(buf) and buf[i] == 0x0D and buf[i + 1] == 0x0A:
                    i += 2
                if i >= len(buf) or (buf[i] == 0x0D and i + 1 == len(buf)):
                    break
                self._start = self._offset + i
                self._first_ts = old_ts if i < old else ts
                self._scan = i
                self._go(HEAD)
                continue
            if st == HEAD:
                j = buf.find(b"\r\n\r\n", max(self._scan, i))
                if j < 0:
                    self._scan = max(i, len(buf) - 3)
                    problem = self._check_partial_head(buf, i, ts)
                    if problem is not None:
                        events.append(problem)
                    break
                if j + 4 - i > self.max_head:
                    events.append(
                        self._fail("head-too-large", f"message head over {self.max_head} bytes", ts)
                    )
                    break
                head = bytes(buf[i:j])
                i = j + 4
                self._on_head(head, i, ts, events)
                continue
            if st == BODY:
                n = min(self._remaining, len(buf) - i)
                self._take_body(buf, i, n)
                i += n
                self._remaining -= n
                if self._remaining == 0:
                    self._complete(i, ts, events)
                continue
            if st == CHUNK_SIZE:
                j = buf.find(b"\r\n", i, i + _MAX_CHUNK_LINE)
                if j < 0:
                    if len(buf) - i >= _MAX_CHUNK_LINE:
                        events.append(self._fail("bad-chunk", "chunk size line too long", ts))
                    break
                m = _CHUNK_LINE.fullmatch(buf, i, j)
                if m is None:
                    events.append(
                        self._fail("bad-chunk", f"bad chunk size line {bytes(buf[i:j])[:40]!r}", ts)
                    )
                    break
                size = int(m.group(1), 16)
                i = j + 2
                if size == 0:
                    self._go(TRAILER)
                else:
                    self._chunk_left = size
                    self._go(CHUNK_DATA)
                continue
            if st == CHUNK_DATA:
                n = min(self._chunk_left, len(buf) - i)
                self._take_body(buf, i, n)
                i += n
                self._chunk_left -= n
                if self._chunk_left == 0:
                    self._go(CHUNK_END)
                continue
            if st == CHUNK_END:
                if len(buf) - i < 2:
                    break
                if buf[i] != 0x0D or buf[i + 1] != 0x0A:
                    events.append(self._fail("bad-chunk", "chunk data not followed by CRLF", ts))
                    break
                i += 2
                self._go(CHUNK_SIZE)
                continue
            if st == TRAILER:
                j = buf.find(b"\r\n", i, i + self.max_head)
                if j < 0:
                    if len(buf) - i >= self.max_head:
                        events.append(self._fail("head-too-large", "trailer section too long", ts))
                    break
                empty = j == i
                i = j + 2
                if empty:
                    self._complete(i, ts, events)
                continue
            raise AssertionError(f"unhandled state {st}")  # pragma: no cover
        if self.state in (DESYNC, DONE):
            self.discarded += len(buf) - i
            buf.clear()
            return events
        if self.state == UNTIL_CLOSE:
            i = len(buf)
        if i:
            if i >= old:
                self._buf_ts = ts
            del buf[:i]
            self._offset += i
            self._scan = max(0, self._scan - i)
        return events

    def gap(self, length: int, ts: int) -> list[HttpEvent]:
        """``length`` bytes of the stream are missing here. Whatever follows cannot be framed."""
        if self.state in (DESYNC, DONE):
            self.discarded += length
            return []
        if self.state == UNTIL_CLOSE:
            # A close-delimited body: the head is already out, only body bytes are lost.
            self._offset += length
            return []
        in_msg = self.in_message
        where = f"{length} bytes missing at stream offset {self._offset + len(self._buf)}"
        detail = ("message in progress damaged: " if in_msg else "between messages: ") + where
        return [self._fail("gap", detail, ts, in_message=in_msg)]

    def end(self, ts: int) -> list[HttpEvent]:
        """The stream ended (FIN, RST, eviction or end of capture)."""
        events: list[HttpEvent] = []
        if self.state == UNTIL_CLOSE:
            self._go(DONE)
            return events
        if self.state not in (DESYNC, DONE) and self.in_message and not self._resync:
            events.append(
                HttpProblem(
                    "incomplete",
                    f"stream ended inside a message (state {self.state}, "
                    f"{len(self._buf) + self._body_len} bytes of it seen)",
                    self._start,
                    ts,
                    True,
                    True,
                )
            )
        self._buf.clear()
        self._parts.clear()
        self._go(DONE)
        return events

    # -- internals ----------------------------------------------------------------------------
    def _go(self, new: str) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise AssertionError(f"illegal transition {self.state} -> {new}")  # pragma: no cover
        self.state = new

    def _fail(self, code: str, detail: str, ts: int, *, in_message: bool = True) -> HttpProblem:
        problem = HttpProblem(code, detail, self._start, ts, True, in_message)
        self.discarded += len(self._buf)
        self._buf.clear()
        self._parts.clear()
        self._go(DESYNC)
        return problem

    def _do_resync(self, events: list[HttpEvent], ts: int) -> None:
        buf = self._buf
        pattern = _RESYNC_REQUEST if self.role == "request" else _RESYNC_RESPONSE
        m = pattern.search(buf)
        if m is None:
            keep = 512  # longer than any plausible request line
            drop = max(0, len(buf) - keep)
            if drop:
                del buf[:drop]
                self._offset += drop
                self.discarded += drop
            return
        drop = m.start(1)
        if drop:
            del buf[:drop]
            self._offset += drop
            self.discarded += drop
        self._resync = False
        if self.discarded:
            events.append(
                HttpProblem(
                    "resync",
                    f"flow picked up midstream: {self.discarded} bytes skipped before the first message",
                    self._offset,
                    ts,
                    False,
                )
            )
            self.discarded = 0

    def _check_partial_head(self, buf: bytearray, i: int, ts: int) -> HttpProblem | None:
        n = len(buf) - i
        if self.role == "request":
            started = n >= _MAX_METHOD + 1 or buf.find(b" ", i, i + _MAX_METHOD + 1) >= 0
            if started and _METHOD_PREFIX.match(buf, i, min(len(buf), i + _MAX_METHOD + 1)) is None:
                return self._fail("not-http", "stream does not start with an HTTP request line", ts)
        elif n >= 5 and not buf.startswith(b"HTTP/", i):
            return self._fail("not-http", "stream does not start with an HTTP status line", ts)
        if n > self.max_head:
            return self._fail("head-too-large", f"message head over {self.max_head} bytes", ts)
        return None

    def _on_head(self, head: bytes, i_after: int, ts: int, events: list[HttpEvent]) -> None:
        lines = head.split(b"\r\n")
        first = lines[0]
        headers: list[tuple[str, str]] = []
        te: list[str] = []
        cl: list[str] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                events.append(self._fail("bad-message", "obsolete header line folding", ts))
                return
            name, sep, value = line.partition(b":")
            if not sep or _HEADER_NAME.fullmatch(name) is None:
                events.append(self._fail("bad-message", f"bad header line {line[:60]!r}", ts))
                return
            n = name.decode("ascii")
            v = value.strip(b" \t").decode("latin-1")
            headers.append((n, v))
            low = n.lower()
            if low == "transfer-encoding":
                te.extend(c.strip().lower() for c in v.split(",") if c.strip())
            elif low == "content-length":
                cl.extend(c.strip() for c in v.split(","))
        hdrs = tuple(headers)
        if self.role == "request":
            m = _REQUEST_LINE.fullmatch(first)
            if m is None:
                code = "not-http" if self._start == 0 else "bad-message"
                events.append(self._fail(code, f"bad request line {first[:60]!r}", ts))
                return
            method = m.group(1).decode("ascii")
            self._head = (method, m.group(2).decode("latin-1"), m.group(3).decode("ascii"), hdrs)
            has_body = True
        else:
            m = _STATUS_LINE.fullmatch(first)
            if m is None:
                code = "not-http" if self._start == 0 else "bad-message"
                events.append(self._fail(code, f"bad status line {first[:60]!r}", ts))
                return
            status = int(m.group(2))
            reason = (m.group(3) or b"").decode("latin-1")
            version = m.group(1).decode("ascii")
            if 100 <= status < 200:
                if status == 101:
                    events.append(
                        HttpResponse(status, reason, version, hdrs, self._first_ts, ts, self._start)
                    )
                    events.append(
                        self._fail("upgrade", "101 Switching Protocols: no more HTTP", ts, in_message=False)
                    )
                    return
                self._go(IDLE)  # interim response: the final one follows
                return
            method = self._methods.popleft() if self._methods else ""
            events.append(HttpResponse(status, reason, version, hdrs, self._first_ts, ts, self._start))
            has_body = not (status in (204, 304) or method == "HEAD")
            self._head = None
        self._parts = []
        self._body_len = 0
        if not has_body:
            self._complete(i_after, ts, events)
            return
        if te:
            if cl and self.role == "request":
                events.append(
                    self._fail("ambiguous-framing", "both Transfer-Encoding and Content-Length", ts)
                )
                return
            if te[-1] != "chunked":
                if self.role == "request":
                    events.append(self._fail("bad-message", f"unsupported Transfer-Encoding {te!r}", ts))
                    return
                self._go(UNTIL_CLOSE)
                return
            self._go(CHUNK_SIZE)
            return
        if cl:
            if len(set(cl)) != 1 or not cl[0].isdigit() or not cl[0].isascii() or len(cl[0]) > 18:
                events.append(self._fail("ambiguous-framing", f"bad Content-Length {cl!r}", ts))
                return
            length = int(cl[0])
            if length == 0:
                self._complete(i_after, ts, events)
                return
            self._remaining = length
            self._go(BODY)
            return
        if self.role == "request":
            self._complete(i_after, ts, events)
        else:
            self._go(UNTIL_CLOSE)

    def _take_body(self, buf: bytearray, i: int, n: int) -> None:
        if n <= 0:
            return
        self._body_len += n
        if self.role == "request":
            if self._body_len <= self.max_body:
                self._parts.append(bytes(buf[i : i + n]))
            elif self._parts:
                self._parts = []  # oversize: framing is still followed, the body is not kept

    def _complete(self, i_after: int, ts: int, events: list[HttpEvent]) -> None:
        if self.role == "request" and self._head is not None:
            method, target, version, hdrs = self._head
            oversize = self._body_len > self.max_body
            body = b"" if oversize else b"".join(self._parts)
            events.append(
                HttpRequest(
                    method,
                    target,
                    version,
                    hdrs,
                    body,
                    self._first_ts,
                    ts,
                    self._start,
                    self._offset + i_after,
                    oversize,
                )
            )
        self._head = None
        self._parts = []
        self._body_len = 0
        self._go(IDLE)
