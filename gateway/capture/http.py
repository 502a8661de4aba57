"""HTTP/1.1 message framing over one reassembled TCP byte stream, on httptools/llhttp (sans-I/O).

Theory of operation
-------------------
A capture gives us, per TCP direction, an in-order byte stream (see ``tcp.py``) with the capture
time (integer nanoseconds) of each delivered chunk. :class:`HttpStreamParser` cuts that stream
into HTTP/1.1 messages: requests on the client->server stream, responses on the server->client
stream. It never touches sockets or clocks: ``feed(data, ts)``, ``gap(...)`` and ``end(ts)`` go in,
lists of events come out (:class:`HttpRequest`, :class:`HttpResponse`, :class:`HttpProblem`).

The framing itself is llhttp's (the C parser of Node.js, through ``httptools``, as used by
uvicorn): ``httptools.HttpRequestParser`` / ``HttpResponseParser`` validate the start line, the
header fields, Content-Length and chunked bodies, and call back (``on_url``, ``on_header``,
``on_headers_complete``, ``on_body``, ``on_message_complete``). llhttp keeps its state across
messages (keep-alive, pipelining) and refuses bytes after a message that closed the connection.

llhttp does not say *where* in a buffer a message ended, and an observer needs that offset.
So the parser hands llhttp at most one message boundary per call, at a place it knows:

* a head is fed up to and including its blank line (``\\r\\n\\r\\n``; llhttp requires CRLF line
  ends, so the first one is where llhttp ends the head too);
* a Content-Length body is fed exactly its length;
* a chunked body is fed one line at a time (cut after each LF): a chunked message always ends
  with an LF, so ``on_message_complete`` fires in the call whose last byte ends the message;
* a close-delimited response body runs to the end of the stream and is not fed at all.

What llhttp does not do for a passive observer is done here:

* responses to HEAD (``expect_response_to`` queues the methods seen on the request stream):
  llhttp would wait for the body the headers announce; the response ends at its head and the
  next one goes to a fresh llhttp parser. 1xx interim responses, 204/304 are llhttp's rules;
  ``101 Switching Protocols`` ends the stream (``upgrade``: nothing after it is HTTP).
* a request llhttp treats as an upgrade (``Connection: upgrade`` + ``Upgrade``, or CONNECT)
  stops llhttp at its head; if it announced a body, the body is framed by a fresh parser given
  a synthetic head with the same framing header, and the stream goes on as HTTP (whether the
  upgrade happened is the response stream's ``101``).
* refusals llhttp does not make but a capture needs -- a second reader that frames differently
  from the real server is how request smuggling works: a Transfer-Encoding other than exactly
  ``chunked`` (llhttp accepts ``gzip, chunked`` and close-delimits ``gzip`` responses), an
  HTTP/1.1 request without Host, a message head over ``max_head``. llhttp itself
  refuses obsolete line folding, Transfer-Encoding with Content-Length in a request, duplicate or
  malformed Content-Lengths, bare LF line ends and chunk framing errors.
* what the gateway's HTTP server (aiohttp, strict with requests) does on top of its own llhttp:
  it refuses a request that repeats a header it allows once (``_SINGLETONS``), a request target
  that is not one of the forms it accepts (``request_path``) and a ``br``/``zstd`` body it cannot
  decode -- all ``bad-message`` here; it reads no body after a CONNECT head; and it decodes a
  ``gzip``/``deflate`` request body (``_decode_content``), so ``HttpRequest.body`` is decoded too.
  Its size limits (``max_line_size``, ``max_field_size``, ``max_headers``) are counted as its
  parser counts them (``_over_limits``), and a chunked request's trailer fields as header fields
  of that request (``_trailer_problem``); its parser holds the last trailer field until the next
  request, whose first header field it becomes (``_leak``).
* positions and times: the stream offset and capture time of each message's first byte (the
  ``ts`` of the chunk that carried it) and of the chunk that completed it.
* robustness: empty lines before a message are skipped (RFC 9112 2.2); a stream that does not
  start like HTTP is refused at its first bad byte (``not-http``); a stream picked up midstream
  (``midstream()``, no SYN in the capture) is resynchronised on the first complete request or
  status line; missing bytes (``gap``) end the stream.
* bounded memory: a body is kept up to ``max_body`` bytes (longer: framing followed, body
  dropped, ``oversize``); an incomplete head is kept up to ``max_head`` bytes.

llhttp errors (``HttpParserError``, its reason string) are mapped to stable report codes
(``_code_for``): in a chunked body -> ``bad-chunk``; Content-Length problems ->
``ambiguous-framing``; a bad first start line -> ``not-http`` (later ones ``bad-message``);
anything else -> ``bad-message``. A stream that ends inside a message -> ``incomplete``. Any
problem except ``resync`` ends the stream in ``DESYNC``: nothing after it is trusted.

The parser's own states and their transitions (the per-message phase -- between messages,
in a head, in a body -- is ``_phase``; llhttp owns the finer ones):

    OPEN --midstream(), before any byte--> SYNC --start line found--> OPEN
    OPEN --problem / gap / upgrade--> DESYNC
    SYNC / OPEN / DESYNC --end()--> DONE
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import httptools
from yarl import URL

__all__ = [
    "HttpEvent",
    "HttpProblem",
    "HttpRequest",
    "HttpResponse",
    "HttpStreamParser",
    "request_path",
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
    encoding_error: str | None = None  # Content-Encoding gzip/deflate that does not decode
    path: str = ""  # the path the gateway's router matches (``request_path``)

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
    Content-Length, bad or duplicate Content-Lengths), ``bad-chunk``, ``head-too-large``,
    ``incomplete`` (stream ended or a gap came in the middle of a message), ``gap`` (bytes missing
    between messages: later messages cannot be trusted), ``overlap-conflict`` (two copies of
    bytes differ: what follows cannot be trusted), ``resync`` (bytes skipped at a
    midstream pick-up; not fatal), ``upgrade`` (101 Switching Protocols: no more HTTP).
    ``in_message`` is True when a message had started and is lost; then ``path`` is its path when its
    head was read (``None`` when the damage came before its head ended), ``first_ts`` the capture time
    of its first byte and ``seen`` how many of its bytes came before the damage.
    """

    code: str
    detail: str
    offset: int
    ts: int
    fatal: bool
    in_message: bool = False
    path: str | None = None
    first_ts: int = 0
    seen: int = 0


HttpEvent = HttpRequest | HttpResponse | HttpProblem

# -- the parser's own states (llhttp owns the finer per-message ones) -------------------------
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

# Where the current message is (``_phase``) and how its body is framed (``_mode``).
_IDLE: Final = 0  # between messages
_HEAD: Final = 1  # head started, its blank line not seen yet
_BODY: Final = 2  # head done, body being framed
_LENGTH: Final = 0  # Content-Length: fed exactly ``_remaining`` more bytes
_CHUNKED: Final = 1  # chunked: fed one line at a time
_CLOSE: Final = 2  # response body delimited by the end of the stream: not fed

_MAX_AWAITED: Final = 1024
# What a response may answer, (HEAD, upgrade proposed): shared, so that a connection whose
# responses are not in the capture holds 8 bytes per request waiting, not a tuple each.
_EXPECTS: Final = ((False, False), (False, True), (True, False), (True, True))
_END_OF_HEAD: Final = b"\r\n\r\n"  # llhttp requires CRLF line ends (bare LF is its error)
_EMPTY_LINES = re.compile(rb"[\r\n]*")
# A body need not end with CRLF, so the next message may start anywhere: match the whole line.
_RESYNC_REQUEST = re.compile(
    rb"((?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) [^\x00-\x20\x7f]+ HTTP/1\.[01]\r\n)"
)
_RESYNC_RESPONSE = re.compile(rb"(HTTP/1\.[01] [0-9]{3} [^\r\n]*\r\n)")
# A start line as llhttp accepts it: an error after one is in the headers, not in the start line.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^\x00-\x20\x7f]+ HTTP/[0-9]\.[0-9]\r\n")
_STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] [0-9]{3}(?: [^\r\n]*)?\r\n")

# llhttp error reasons (llhttp 9, pinned by tests) that name a specific problem.
_FOLDING: Final = "Unexpected whitespace after header value"
_AFTER_CLOSE: Final = "Data after `Connection: close`"
_START_LINE_ERRORS: Final = (
    httptools.HttpParserInvalidMethodError,
    httptools.HttpParserInvalidStatusError,
    httptools.HttpParserInvalidURLError,
)

# -- what the gateway's HTTP server (aiohttp, strict for requests) does beyond llhttp -----------
# Header fields a request may carry once (aiohttp: SINGLETON_HEADERS; a repeat is a 400).
_SINGLETONS: Final = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)
# aiohttp's request limits (``web_protocol.RequestHandler``: ``max_line_size``, ``max_field_size``,
# ``max_headers``; the gateway's servers keep its defaults). A request over them is a 400.
# Pinned against the installed aiohttp, and against the gateway's server, by tests.
AIOHTTP_MAX_LINE_SIZE: Final = 8190
AIOHTTP_MAX_FIELD_SIZE: Final = 8190
AIOHTTP_MAX_HEADERS: Final = 128
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")  # nothing for yarl to decode
_MAX_MEMBERS: Final = 1024  # aiohttp: MAX_DECOMPRESS_MEMBERS


_PATHS: dict[tuple[str, str], str | None] = {}  # request_path of recent targets (they repeat)


def request_path(method: str, target: str) -> str | None:
    """The path the gateway's router matches for a request target, as aiohttp gets it
    (``request.rel_url.path_safe``: percent-escapes decoded except ``%2F`` and ``%25``; no
    query or fragment), or None when aiohttp refuses the target (400, connection closed):
    origin-form, absolute-form with a host (any scheme), authority-form for CONNECT and ``*``
    for OPTIONS are accepted, as in ``aiohttp._http_parser``."""
    if len(target) > 256:  # only short targets are cached: a head may hold a 64 KiB one
        return _request_path(method, target)
    key = (method, target)
    try:
        return _PATHS[key]
    except KeyError:
        pass
    path = _request_path(method, target)
    if len(_PATHS) >= 4096:
        _PATHS.clear()
    _PATHS[key] = path
    return path


def _request_path(method: str, target: str) -> str | None:
    if method == "CONNECT":
        try:
            host = URL.build(authority=target, encoded=True).raw_host
        except ValueError:
            host = None
        return "" if host is not None else None
    if target.startswith("/"):
        q = target.find("?")
        h = target.find("#", 0 if q < 0 else q)
        path = target if q < 0 and h < 0 else target[: q if q >= 0 else h]
        if _PLAIN_PATH.fullmatch(path):
            return path
        try:
            return URL.build(path=path, encoded=True).path_safe
        except ValueError:  # pragma: no cover - yarl takes any encoded origin-form path
            return None
    if target == "*" and method == "OPTIONS":
        return "*"
    rest = target.partition(":")[2]  # aiohttp: _has_authority, then yarl must find a host
    if rest[:2] == "//" and rest[2:3] not in ("", "/", "?", "#"):
        try:
            url = URL(target, encoded=True)
            if url.raw_host is not None:
                return url.path_safe
        except ValueError:
            pass
    return None


class _BodyTooLarge(Exception):
    pass


def _decode_content(body: bytes, coding: str, limit: int) -> bytes:
    """A ``gzip`` or ``deflate`` body decoded as aiohttp's ``DeflateBuffer`` decodes a request
    body: concatenated members (at most ``_MAX_MEMBERS``); ``deflate`` with or without its
    zlib header (sniffed from the first byte); a ``gzip`` stream that stops early gives what
    it holds, a ``deflate`` one is an error. ValueError when it does not decode,
    :class:`_BodyTooLarge` beyond ``limit`` bytes."""
    wbits = (
        16 + zlib.MAX_WBITS
        if coding == "gzip"
        else zlib.MAX_WBITS
        if body[0] & 0x0F == 8
        else -zlib.MAX_WBITS
    )
    parts: list[bytes] = []
    size = 0
    members = 1
    data = body
    d = zlib.decompressobj(wbits)
    try:
        while True:
            chunk = d.decompress(data, limit + 1 - size)
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            parts.append(chunk)
            if d.unconsumed_tail:
                data = d.unconsumed_tail
                continue
            if d.eof and d.unused_data:
                members += 1
                if members > _MAX_MEMBERS:
                    raise ValueError(f"more than {_MAX_MEMBERS} {coding} members")
                data = d.unused_data
                d = zlib.decompressobj(wbits)
                continue
            break
    except zlib.error as e:
        raise ValueError(f"not valid {coding} data ({e})") from None
    if coding == "deflate" and not d.eof:
        raise ValueError("the deflate stream stops before its end")
    return b"".join(parts)


class _Hooks:
    """The callbacks llhttp calls (httptools looks them up by name, once per parser)."""

    __slots__ = ("on_body", "on_header", "on_headers_complete", "on_message_complete", "on_status", "on_url")
    on_body: Callable[[bytes], None]
    on_header: Callable[[bytes, bytes], None]
    on_headers_complete: Callable[[], None]
    on_message_complete: Callable[[], None]
    on_status: Callable[[bytes], None]
    on_url: Callable[[bytes], None]


class HttpStreamParser:
    """Cuts one direction of a connection into HTTP/1.1 messages (see the module docstring)."""

    __slots__ = (
        "_body_len",
        "_ce_carry",
        "_coding",
        "_complete",
        "_exchange",
        "_fed_end",
        "_fields",
        "_first_ts",
        "_hdrs",
        "_head",
        "_head_done",
        "_head_raw",
        "_hooks",
        "_interim",
        "_is_request",
        "_leak",
        "_methods",
        "_mode",
        "_parser",
        "_parts",
        "_phase",
        "_pre",
        "_remaining",
        "_reusable",
        "_seen",
        "_small_head",
        "_sniff",
        "_start",
        "_text",
        "_trailers",
        "discarded",
        "max_body",
        "max_field_size",
        "max_head",
        "max_headers",
        "max_line_size",
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
        max_line_size: int = AIOHTTP_MAX_LINE_SIZE,
        max_field_size: int = AIOHTTP_MAX_FIELD_SIZE,
        max_headers: int = AIOHTTP_MAX_HEADERS,
    ) -> None:
        self.role = role
        self.max_head = max_head
        self.max_body = max_body
        self.max_line_size = max_line_size
        self.max_field_size = max_field_size
        self.max_headers = max_headers
        self._small_head = min(max_line_size, max_field_size)
        self.state: str = SYNC if resync else OPEN
        self._is_request = role == "request"
        hooks = _Hooks()
        hooks.on_header = self._on_header
        hooks.on_headers_complete = self._on_headers_complete
        hooks.on_message_complete = self._on_message_complete
        if self._is_request:
            hooks.on_url = self._on_url
            hooks.on_body = self._on_body
        else:
            hooks.on_status = self._on_url  # the reason phrase
            hooks.on_body = self._on_response_body
        self._hooks = hooks
        self._parser: httptools.HttpRequestParser | httptools.HttpResponseParser = self._new_parser()
        self._pre = bytearray()  # SYNC: bytes searched for the first start line
        self._fed_end = 0  # stream offset just past the last byte fed (or skipped)
        self._start = 0  # stream offset where the current message began
        self._first_ts = 0  # capture time of its first byte
        self._phase = _IDLE
        self._mode = _LENGTH
        self._remaining = 0
        self._head_raw = b""  # the head so far, while it spans chunks (bounded by max_head)
        self._head_done = False  # llhttp: on_headers_complete
        self._complete = False  # llhttp: on_message_complete
        self._text: list[bytes] = []  # llhttp: target (request) or reason phrase (response)
        self._hdrs: list[tuple[bytes, bytes]] = []
        # Request side, what aiohttp's parser keeps of a request's fields: how many it counts, the
        # names it allows once that it has seen, the trailer fields; the last trailer field of the
        # request before, which it still holds (``_leak``), and a Content-Encoding among the others.
        self._fields = 0
        self._seen: set[str] | None = None  # (kept for a chunked request only: trailers may follow)
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._leak: tuple[bytes, bytes] | None = None
        self._ce_carry: str | None = None
        self._head: tuple[str, str, str, Headers, str] | None = None
        self._parts: list[bytes] = []
        self._body_len = 0
        self._coding: str | None = None  # request: its Content-Encoding, gzip or deflate
        self._sniff = True  # the first message: is this HTTP at all?
        self._reusable = True  # False after a message that closes the connection
        self._interim = False  # response side: a 1xx came, the final response follows
        # Response side: requests still awaiting a response: (method is HEAD, upgrade proposed).
        self._methods: deque[tuple[bool, bool]] = deque()
        self._exchange = (False, False)  # that of the response being framed
        self.discarded = 0  # bytes thrown away (DESYNC, resync)

    # -- public API ---------------------------------------------------------------------------
    def expect_response_to(self, method: str, *, upgrade: bool = False) -> None:
        """Response side: a request with ``method`` was sent (needed to frame HEAD responses);
        ``upgrade``: it proposed a protocol upgrade (an ``Upgrade`` header)."""
        if len(self._methods) < _MAX_AWAITED:
            self._methods.append(_EXPECTS[2 * (method == "HEAD") + upgrade])

    def midstream(self) -> None:
        """The stream was picked up without its start: skip to the first message start."""
        if self.state == OPEN and not self._fed_end:
            self._go(SYNC)

    @property
    def in_message(self) -> bool:
        """True while a message has started and is not complete."""
        return self.state == OPEN and self._phase != _IDLE

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
        base = self._fed_end
        n = len(data)
        pos = 0
        while 0 <= pos < n:
            phase = self._phase
            if phase == _BODY:
                pos = self._body_step(data, pos, n, base, ts, events)
            elif phase == _HEAD:
                pos = self._head_step(data, pos, n, base, ts, events)
            else:
                pos = self._begin(data, pos, n, base, ts, events)
        self._fed_end = base + n
        return events

    def stop(self) -> None:
        """The receiver reads no more of this stream (the server closed the connection after the
        message just framed): nothing more is framed, nothing is reported."""
        if self.state in (SYNC, OPEN):
            self.discarded += len(self._pre)
            self._pre.clear()
            self._parts = []
            self._hdrs = []
            self._head_raw = b""
            self._go(DESYNC)

    def gap(self, length: int, ts: int) -> list[HttpEvent]:
        """``length`` bytes of the stream are missing here. Whatever follows cannot be framed."""
        if self.state in (DESYNC, DONE):
            self.discarded += length
            return []
        in_msg = self.in_message
        where = f"{length} bytes missing at stream offset {self._fed_end}"
        if not in_msg:
            return [self._fail("gap", "between messages: " + where, ts, 0, in_message=False)]
        head = self._head
        path = head[4] if head is not None and self._head_done else None
        seen = self._fed_end - self._start
        first_ts = self._first_ts
        detail = (
            f"message in progress damaged: {where}; {seen} bytes of it seen, from stream offset {self._start}"
            + (f", its head read ({head[0]} {head[1]})" if path is not None and head is not None else ", its head not complete")
        )
        problem = self._fail("gap", detail, ts, 0, in_message=True)
        return [dataclasses.replace(problem, path=path, first_ts=first_ts, seen=seen)]

    def conflict(self, offset: int, ts: int) -> list[HttpEvent]:
        """Two copies of the bytes at stream offset ``offset`` differ and which one the receiver
        read is unknown: nothing framed from there on can be trusted."""
        if self.state in (DESYNC, DONE):
            return []
        detail = (
            f"a retransmission differs from the first copy at stream offset {offset}, before the "
            "receiver acknowledged it: which copy the receiver read is unknown"
        )
        return [self._fail("overlap-conflict", detail, ts, 0, in_message=self.in_message)]

    def end(self, ts: int) -> list[HttpEvent]:
        """The stream ended (FIN, RST, eviction or end of capture)."""
        events: list[HttpEvent] = []
        if (
            self.state == OPEN
            and self._phase != _IDLE
            and not (self._phase == _BODY and self._mode == _CLOSE)
        ):
            # Only a close-delimited response body ends cleanly with the stream.
            events.append(self._fail("incomplete", "stream ended inside a message", ts, 0))
        if self.state != DONE:
            self._go(DONE)
        self._pre.clear()
        self._parts = []
        self._trailers = None
        self._head_raw = b""
        # The llhttp parser holds our bound methods: replace it so that no cycle outlives the flow.
        self._hooks = _Hooks()
        self._parser = self._new_parser()
        return events

    # -- llhttp callbacks -----------------------------------------------------------------------
    def _on_url(self, text: bytes) -> None:
        self._text.append(text)

    def _on_header(self, name: bytes, value: bytes) -> None:
        self._hdrs.append((name, value))

    def _on_headers_complete(self) -> None:
        self._head_done = True

    def _on_body(self, data: bytes) -> None:
        size = self._body_len + len(data)
        self._body_len = size
        if size <= self.max_body:
            self._parts.append(data)
        elif self._parts:
            self._parts = []  # oversize: framing is still followed, the body is not kept

    def _on_response_body(self, data: bytes) -> None:
        self._body_len += len(data)  # counted, never kept

    def _on_message_complete(self) -> None:
        self._complete = True

    # -- internals ----------------------------------------------------------------------------
    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        if self._is_request:
            return httptools.HttpRequestParser(self._hooks)
        return httptools.HttpResponseParser(self._hooks)

    def _go(self, new: str) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise AssertionError(f"illegal transition {self.state} -> {new}")  # pragma: no cover
        self.state = new

    def _fail(self, code: str, detail: str, ts: int, rest: int, *, in_message: bool = True) -> HttpProblem:
        """End the stream in DESYNC; ``rest``: bytes of the current chunk not framed."""
        problem = HttpProblem(code, detail, self._start, ts, True, in_message)
        self.discarded += rest + len(self._pre)
        self._pre.clear()
        self._parts = []
        self._hdrs = []
        self._trailers = None
        self._head_raw = b""
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

    def _begin(self, data: bytes, pos: int, n: int, base: int, ts: int, events: list[HttpEvent]) -> int:
        """Between messages: skip empty lines, start the next message. -1 once the stream is dead."""
        if not self._reusable:
            events.append(
                self._fail("bad-message", "bytes after a message that closed the connection", ts, n - pos)
            )
            return -1
        c = data[pos]
        if c == 13 or c == 10:
            # Empty lines before a message are ignored (RFC 9112 2.2).
            m = _EMPTY_LINES.match(data, pos)
            pos = m.end() if m is not None else pos
            if pos == n:
                return pos
        self._start = base + pos
        self._first_ts = ts
        self._phase = _HEAD
        self._head_done = self._complete = False
        self._text = []
        self._hdrs = []
        self._body_len = 0
        if self._is_request:
            self._parts = []
        elif not self._interim:
            methods = self._methods
            self._exchange = methods.popleft() if methods else (False, False)
        return pos

    def _head_step(self, data: bytes, pos: int, n: int, base: int, ts: int, events: list[HttpEvent]) -> int:
        """Feed llhttp the head, up to its blank line and not beyond. -1 once the stream is dead."""
        hr = self._head_raw
        limit = self.max_head
        if not hr:
            i = data.find(_END_OF_HEAD, pos, pos + limit)
            end = i + 4 if i >= 0 else min(n, pos + limit)
            complete = i >= 0
            too_large = not complete and n - pos >= limit
        else:
            old = len(hr)
            joined = hr + data[pos : pos + limit - old]
            i = joined.find(_END_OF_HEAD, max(0, old - 3))
            complete = i >= 0
            end = pos + i + 4 - old if complete else pos + len(joined) - old
            too_large = not complete and len(joined) >= limit
        piece = data if pos == 0 and end == n else data[pos:end]
        parser = self._parser
        upgraded = False
        try:
            parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            upgraded = True  # request: llhttp stopped at the end of this head
        except httptools.HttpParserError as e:
            if self._is_request or not self._head_done or self._status() != 101:
                head = hr + piece
                events.append(self._fail(self._code_for(e, head), self._detail(e), ts, n - pos))
                return -1
            upgraded = True  # 101: llhttp pauses, we report it as the upgrade
        if not complete:
            if too_large:
                events.append(self._fail("head-too-large", f"message head over {limit} bytes", ts, n - pos))
                return -1
            self._head_raw = hr + piece
            return end
        self._head_raw = b""
        if not self._head_done:  # pragma: no cover - llhttp always ends a head at its blank line
            events.append(self._fail("bad-message", "message head not understood", ts, n - pos))
            return -1
        if not self._on_head(base + end, ts, events, upgraded, n - end):
            return -1
        return end

    def _over_limits(self, fields: list[tuple[bytes, bytes]], prev: int, count: int) -> str | None:
        """Why aiohttp (the gateway's HTTP server) refuses this request head for its size limits,
        or None. Its parser (``_http_parser.pyx``) counts: the request target against
        ``max_line_size``; the header fields (``count`` of them) against ``max_headers``; against
        ``max_field_size``, the first field's name and value together, then for each later field
        its name together with the name before it, and its value alone. ``prev``: the length of
        the name of a field it holds from before this head (a trailer field: see ``_leak``), else
        -1. When a later field's name reaches it in two reads, it counts that name with its value
        instead: whether such a field is refused depends on TCP read boundaries, which a capture
        does not show, so a field whose name and value are over the limit together is not used
        either (the detail says so). Values count as llhttp gives them: without leading, with
        trailing whitespace."""
        text = self._text
        target = sum(map(len, text)) if len(text) != 1 else len(text[0])
        if target > self.max_line_size:
            return (
                f"request target of {target} bytes: over the gateway's HTTP server's limit "
                f"(aiohttp max_line_size {self.max_line_size}); it answers 400 and closes the connection"
            )
        if count > self.max_headers:
            return (
                f"{count} header fields: over the gateway's HTTP server's limit (aiohttp max_headers "
                f"{self.max_headers}); it answers 400 and closes the connection"
            )
        return self._field_sizes(fields, prev)

    def _field_sizes(self, fields: list[tuple[bytes, bytes]], prev: int) -> str | None:
        """The first field of ``fields`` (header or trailer fields) over aiohttp's
        ``max_field_size`` as it counts them (see ``_over_limits``), or None."""
        limit = self.max_field_size
        for name, value in fields:
            n = len(name)
            v = len(value)
            why: str | None = None
            if prev < 0:
                if n + v > limit:
                    why = f"its name and value are {n + v} bytes together"
            elif prev + n > limit:
                why = f"its name ({n} bytes) and the name before it ({prev} bytes) are {prev + n} bytes together"
            elif v > limit:
                why = f"its value is {v} bytes"
            elif n + v > limit and n > 1:  # (a one-byte name cannot come in two reads)
                label = name[:40].decode("latin-1")
                return (
                    f"header field {label!r}: its name and value are {n + v} bytes together, over the "
                    f"gateway's HTTP server's limit (aiohttp max_field_size {limit}) when the name reaches "
                    "it in two reads, then it answers 400 and closes the connection; the capture does not "
                    "show its reads, so the request is not used"
                )
            if why is not None:
                label = name[:40].decode("latin-1")
                return (
                    f"header field {label!r}: {why}, over the gateway's HTTP server's limit (aiohttp "
                    f"max_field_size {limit}); it answers 400 and closes the connection"
                )
            prev = n
        return None

    def _trailer_problem(self) -> str | None:
        """Why aiohttp refuses the request whose trailer fields (``_trailers``) just ended, or
        None. Its parser takes each trailer field as a header field of the request: the size
        limits, the field count (the head's and the trailer's, but for the last trailer field,
        which it holds until the next request, see ``_leak``) and the fields it allows once
        (``_SINGLETONS``, against the head's too)."""
        trailers = self._trailers
        assert trailers
        over = self._field_sizes(trailers, -1)
        if over is not None:
            return over + " (a trailer field)"
        count = self._fields + len(trailers) - 1
        if count > self.max_headers:
            return (
                f"{count} header fields with its trailer fields: over the gateway's HTTP server's limit "
                f"(aiohttp max_headers {self.max_headers}); it answers 400 and closes the connection"
            )
        seen = self._seen if self._seen is not None else set()
        for name, _ in trailers[:-1]:
            low = name.decode("ascii").lower()
            if low in _SINGLETONS:
                if low in seen:
                    return (
                        f"trailer field {name.decode('ascii')!r} repeats a field the gateway's HTTP server "
                        "allows once: it answers 400 and closes the connection"
                    )
                seen.add(low)
        return None

    def _status(self) -> int:
        parser = self._parser
        assert isinstance(parser, httptools.HttpResponseParser)
        return parser.get_status_code()

    def _on_head(self, head_end: int, ts: int, events: list[HttpEvent], upgraded: bool, rest: int) -> bool:
        """A complete head: the refusals llhttp does not make, then how the body is framed."""
        fields = self._hdrs
        leak = self._leak
        ce: str | None = None
        if self._is_request:
            if leak is not None:  # aiohttp's parser still holds the last trailer field before
                fields = [leak, *fields]
                self._leak = None
            ce = self._ce_carry
            self._ce_carry = None
            self._fields = len(fields)
            if (
                leak is not None
                or head_end - self._start > self._small_head
                or len(fields) > self.max_headers
            ):
                # (a head no longer than the smallest size limit cannot be over any of them)
                over = self._over_limits(self._hdrs, -1 if leak is None else len(leak[0]), len(fields))
                if over is not None:
                    events.append(self._fail("bad-message", over, ts, rest))
                    return False
        headers = tuple([(k.decode("ascii"), v.strip(b" \t").decode("latin-1")) for k, v in fields])
        self._hdrs = []
        te: str | None = None
        cl: str | None = None
        hosts = 0
        is_request = self._is_request
        seen: set[str] = set()
        repeated: str | None = None
        own = headers
        if leak is not None:  # the held field counts, but llhttp frames by the head's own fields
            own = headers[1:]
            low = headers[0][0].lower()
            if low == "host":
                hosts += 1
            elif low == "content-encoding":
                ce = headers[0][1]
            if low in _SINGLETONS:
                seen.add(low)
        for name, value in own:
            low = name.lower()
            if low == "host":
                hosts += 1
            elif low == "content-length":
                cl = value
            elif low == "transfer-encoding":
                te = value if te is None else f"{te}, {value}"
            elif low == "content-encoding":
                ce = value  # aiohttp decodes by the last one
            if is_request and low in _SINGLETONS:
                if low in seen and repeated is None:
                    repeated = name
                seen.add(low)
        if te is not None and te.lower() != "chunked":
            events.append(self._fail("bad-message", f"unsupported Transfer-Encoding: {te!r}", ts, rest))
            return False
        if is_request:
            self._seen = seen if te is not None else None  # trailer fields may follow a chunked body
        parser = self._parser
        version = parser.get_http_version()
        self._sniff = False
        self._phase = _BODY
        if isinstance(parser, httptools.HttpRequestParser):
            if te is not None and cl is not None:  # llhttp refuses it too
                events.append(
                    self._fail("ambiguous-framing", "both Transfer-Encoding and Content-Length", ts, rest)
                )
                return False
            if version == "1.1" and not hosts:
                events.append(self._fail("bad-message", "missing Host header", ts, rest))
                return False
            if repeated is not None:
                detail = f"repeated {repeated} header (the gateway's HTTP server refuses a request with two)"
                events.append(self._fail("bad-message", detail, ts, rest))
                return False
            method = parser.get_method().decode("ascii")
            target = (self._text[0] if len(self._text) == 1 else b"".join(self._text)).decode("latin-1")
            path = request_path(method, target)
            if path is None:
                detail = f"request target {target[:200]!r} is not one the gateway's HTTP server accepts"
                events.append(self._fail("bad-message", detail, ts, rest))
                return False
            self._coding = None
            if ce is not None and ce.isascii():
                coding = ce.lower()
                if coding in ("br", "zstd"):
                    detail = f"Content-Encoding {ce!r}: the gateway's HTTP server cannot decode it and refuses the request"
                    events.append(self._fail("bad-message", detail, ts, rest))
                    return False
                if coding in ("gzip", "deflate"):
                    self._coding = coding
            self._head = (method, target, version, headers, path)
            if upgraded:
                # llhttp stopped at this head (an upgrade request): a fresh parser frames the
                # body it announced, primed with a head of the same framing, and what follows.
                # A CONNECT request has no body (RFC 9110 9.3.6): aiohttp reads what follows
                # its head as the tunnel, or, as the gateway declines it, as the next request.
                self._reusable = _keeps_alive(headers, version)
                self._parser = parser = self._new_parser()
                length = int(cl) if cl is not None else 0
                if method == "CONNECT" or (te is None and length == 0):
                    self._finish(head_end, ts, events)
                    return True
                self._complete = False
                framing = b"Transfer-Encoding: chunked" if te is not None else b"Content-Length: %d" % length
                parser.feed_data(b"POST / HTTP/1.1\r\nHost: primer\r\n" + framing + b"\r\n\r\n")
                self._hdrs = []
        else:
            status = parser.get_status_code()
            reason = b"".join(self._text).decode("latin-1")
            if status == 101:
                if self._exchange[1]:
                    events.append(
                        HttpResponse(status, reason, version, headers, self._first_ts, ts, self._start)
                    )
                    events.append(
                        self._fail(
                            "upgrade", "101 Switching Protocols: no more HTTP", ts, rest, in_message=False
                        )
                    )
                else:
                    events.append(
                        self._fail("upgrade", "101 Switching Protocols without a proposal", ts, rest)
                    )
                return False
            self._interim = 100 <= status < 200
            if not self._interim:
                events.append(HttpResponse(status, reason, version, headers, self._first_ts, ts, self._start))
                if not self._complete and self._exchange[0]:
                    # A response to HEAD has no body whatever its headers say; llhttp would
                    # wait for one, so the next response goes to a fresh parser.
                    self._reusable = _keeps_alive(headers, version)
                    self._parser = self._new_parser()
                    self._phase = _IDLE
                    self._start = head_end
                    return True
        if self._complete:
            self._finish(head_end, ts, events)
        elif te is not None:
            self._mode = _CHUNKED
            self._remaining = 0  # bytes of the current chunk-size or trailer line
        elif cl is not None:
            self._mode = _LENGTH
            self._remaining = int(cl)
        else:
            self._mode = _CLOSE  # response only: a request without a length has no body
        return True

    def _body_step(self, data: bytes, pos: int, n: int, base: int, ts: int, events: list[HttpEvent]) -> int:
        """Feed llhttp the body, never past its end. -1 once the stream is dead."""
        mode = self._mode
        if mode == _LENGTH:
            end = min(n, pos + self._remaining)
        elif mode == _CHUNKED:
            i = data.find(b"\n", pos)
            end = i + 1 if i >= 0 else n
        else:
            return n  # close-delimited: everything up to the end of the stream
        body_before = self._body_len
        try:
            self._parser.feed_data(data if pos == 0 and end == n else data[pos:end])
        except httptools.HttpParserError as e:
            events.append(self._fail("bad-chunk", self._detail(e), ts, n - pos))
            return -1
        if mode == _LENGTH:
            self._remaining -= end - pos
        else:
            if self._hdrs:  # trailer fields: a request's are checked as aiohttp checks them
                if self._is_request and self._head is not None:
                    trailers = self._trailers
                    if trailers is None:
                        self._trailers = trailers = []
                    trailers.extend(self._hdrs)
                    if self._fields + len(trailers) - 1 > self.max_headers:
                        problem = self._trailer_problem()
                        assert problem is not None
                        events.append(self._fail("bad-message", problem, ts, n - end))
                        return -1
                self._hdrs.clear()
            # A chunk-size or trailer line (no chunk data in it) is bounded like a head.
            if data[end - 1] == 10 or self._body_len != body_before:
                self._remaining = 0
            else:
                self._remaining += end - pos
                if self._remaining > self.max_head:
                    detail = f"chunk-size or trailer line over {self.max_head} bytes"
                    events.append(self._fail("bad-chunk", detail, ts, n - end))
                    return -1
        if self._complete:
            trailers = self._trailers
            if trailers:
                problem = self._trailer_problem()
                if problem is not None:
                    events.append(self._fail("bad-message", problem, ts, n - end))
                    return -1
                # aiohttp's parser takes each trailer field when the next one starts: it holds the
                # last one until the next request, whose first header field it then becomes.
                for name, value in trailers[:-1]:
                    if name.lower() == b"content-encoding":
                        self._ce_carry = value.strip(b" \t").decode("latin-1")
                self._leak = trailers[-1]
                self._trailers = self._seen = None
            self._finish(base + end, ts, events)
        return end

    def _finish(self, end: int, ts: int, events: list[HttpEvent]) -> None:
        """The message ends at stream offset ``end``: emit the request, set up the next one."""
        if self._is_request:
            head = self._head
            if head is not None:
                method, target, version, headers, path = head
                oversize = self._body_len > self.max_body
                parts = self._parts
                body = b"" if oversize or not parts else parts[0] if len(parts) == 1 else b"".join(parts)
                error: str | None = None
                if self._coding is not None and body:
                    try:  # what the gateway reads (aiohttp decodes a request's Content-Encoding)
                        body = _decode_content(body, self._coding, self.max_body)
                    except _BodyTooLarge:
                        body, oversize = b"", True
                    except ValueError as e:
                        body, error = b"", str(e)
                events.append(
                    HttpRequest(
                        method,
                        target,
                        version,
                        headers,
                        body,
                        self._first_ts,
                        ts,
                        self._start,
                        end,
                        oversize,
                        error,
                        path,
                    )
                )
            self._head = None
            self._parts = []
        # After Connection: close (or HTTP/1.0), llhttp itself refuses any further byte.
        self._phase = _IDLE
        self._start = end

    def _code_for(self, e: httptools.HttpParserError, head: bytes) -> str:
        """The report code of an llhttp error in a head (``head``: its bytes so far)."""
        if "Content-Length" in str(e):
            return "ambiguous-framing"
        line = _REQUEST_LINE if self._is_request else _STATUS_LINE
        if isinstance(e, _START_LINE_ERRORS) or line.match(head) is None:
            return "not-http" if self._sniff else "bad-message"
        return "bad-message"

    @staticmethod
    def _detail(e: httptools.HttpParserError) -> str:
        reason = str(e)
        if reason == _FOLDING:
            return "obsolete header line folding"
        if reason == _AFTER_CLOSE:
            return "bytes after a message that closed the connection"
        return reason


def _keeps_alive(headers: Headers, version: str) -> bool:
    """Whether another message may follow on this stream (for a parser we replace; llhttp
    decides it for the messages it ends itself)."""
    tokens: set[str] = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(","))
    if "close" in tokens:
        return False
    return version == "1.1" or "keep-alive" in tokens
