"""Ingress (DSP side): DUIS as the DCC delivers it, one message per HTTP POST.

Routes::

    POST /duis/dno/{user}   inline lane: {user} = a destination name or the DNO's DCC User ID (EUI-64)
    POST /duis/observe      observation lane: recorded, never forwarded

Status codes: the processor's 202/204 once the message is durably recorded (never before);
400 + ``reason`` for bad input (the bytes are kept in the rejects table); 404 for an unknown
destination (bytes kept); 413 when the body exceeds ``max_body_bytes`` (refused from the
``Content-Length`` header before reading, or when a chunked body crosses the cap — never read
unbounded; the connection then ends, as after a 408 or a body that does not decode); 415 for a Content-Type outside ``content_types`` (bytes kept); 503 while draining or
when the store is unavailable (nothing accepted: the sender retries); 500 only for a bug (bytes
kept when possible). No exception escapes a handler. Responses carry ``X-DUISGW-Message-Id`` and
``X-DUISGW-Decision`` when known; a rejection's body is ``<reason code>: <detail>``.

Two refusals carry no bytes, there being no complete request: a body the peer ends the connection
in the middle of (``incomplete_body``: counted and recorded with the length received; its 400 reaches
nobody), and a request aiohttp's HTTP parser refuses before any handler runs (``bad_http_request``:
a malformed request line or header, a header line over 8,190 bytes, a duplicate ``Content-Length``, one
with ``Transfer-Encoding``, a ``Content-Encoding`` other than gzip or deflate that aiohttp knows but
cannot decode here — ``br``, ``zstd`` —, bytes after a body shorter than its ``Content-Length``).
aiohttp answers those itself (``RequestHandler.handle_error``) unless the server is the one
:class:`IngressRunner` builds: its protocol hands them to :meth:`Ingress.refuse_unparsed` (400
``bad_http_request``, counted under lane ``unknown`` — the request line may be what failed —, one
WARNING line, a rejects row with the parser's message and no bytes, written just after the answer).

A body in a content coding the ingress does not decode (RFC 9110 §8.4.1) is refused 415
``unsupported_content_encoding``, its bytes kept as received: aiohttp decodes gzip and deflate only, and took
any other ``Content-Encoding`` (``compress``, ``x-foo``, ``identity, foo``, ``gzip, deflate`` stacked) as
plain bytes. And the same protocol bounds the time a request's headers take to arrive
(``[server] header_timeout``, from the first byte of the request): a client that sends them slower is
answered 408 ``header_timeout`` and its connection closed (:meth:`Ingress.refuse_header_timeout`), where
only the keep-alive timeout closed it before, silently and uncounted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import hdrs, web
from aiohttp.http_exceptions import (
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    TransferEncodingError,
)
from aiohttp.streams import StreamReader

from gateway.errors import DuisgwError
from gateway.service.api import (
    MESSAGE_ID_HEADER,
    AcceptResult,
    Lane,
    Processor,
    StoreUnavailable,
    message_id_header_value,
)
from gateway.service.config import ServiceConfig

__all__ = ["DECISION_HEADER", "UNPARSED_LANE", "Ingress", "IngressCounts", "IngressRunner", "RejectRecorder"]

DECISION_HEADER = "X-DUISGW-Decision"
#: the lane (and ``route``) label of a request aiohttp's parser refused: which route it was for is unknown
UNPARSED_LANE = "unknown"
log = logging.getLogger("duisgw.service.ingress")
#: the content codings the ingress takes (aiohttp decodes them as it reads the body); ``identity`` is none
DECODED_CODINGS = frozenset({"gzip", "deflate"})


def _text(
    status: int, reason: str, detail: str = "", headers: dict[str, str] | None = None, *, close: bool = False
) -> web.Response:
    """A short text answer; ``close``: the connection ends after it (aiohttp then sends ``Connection:
    close`` itself, reads what is left of the request body for its lingering time so that the client
    sees the answer, and takes no further request on the connection, as RFC 9112 §9.6 requires of a
    server that says ``close``)."""
    body = f"{reason}: {detail}\n" if detail else f"{reason}\n"
    resp = web.Response(status=status, text=body, content_type="text/plain", headers=headers)
    if close:
        resp.force_close()
    return resp


class RejectRecorder(Protocol):
    """Where refused bytes are kept (:class:`gateway.service.outbox.RejectStore`, or its relay in an
    ingress worker process)."""

    async def record(
        self, *, lane: str, user: str | None, reason: str, detail: str | None, body: bytes, received_at: datetime
    ) -> int: ...


class IngressCounts(Protocol):
    """What the ingress counts (:class:`gateway.service.metrics.Metrics`, or its relay in an ingress
    worker process)."""

    def count_request(self, lane: str, status: int) -> None: ...
    def count_reject(self, lane: str, reason: str) -> None: ...
    def count_accepted(self, lane: str, kind: str, decision: str, reason: str) -> None: ...
    def observe_decision(self, lane: str, seconds: float) -> None: ...


class Ingress:
    """The DSP-facing request handlers; ``draining`` turns every new request into a 503."""

    def __init__(
        self,
        cfg: ServiceConfig,
        processor: Processor,
        rejects: RejectRecorder,
        metrics: IngressCounts,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cfg = cfg
        self.processor = processor
        self.rejects = rejects
        self.metrics = metrics
        self.draining = False
        self._now = now
        self._types = frozenset(cfg.server.content_types)
        self._recording: set[asyncio.Task[None]] = set()  # rejects rows of unparsed requests being written

    def add_routes(self, app: web.Application) -> None:
        """The ingress routes, and a middleware that answers a request no route of ``app`` matches (a path
        it does not serve, a method a path does not take) as the ingress answers bad input, instead of
        aiohttp's plain 404/405: named, counted, recorded (:meth:`refuse_unrouted`)."""
        app.router.add_post("/duis/dno/{user}", self.handle_inline)
        app.router.add_post("/duis/observe", self.handle_observe)

        @web.middleware
        async def unrouted(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            missing = request.match_info.http_exception  # set by the router when nothing matched
            if missing is None:
                return await handler(request)
            return self.refuse_unrouted(request, missing)

        app.middlewares.append(unrouted)

    def refuse_unrouted(self, request: web.Request, missing: web.HTTPException) -> web.StreamResponse:
        """A request no route matches: 404 ``unknown_route`` (or 405 ``method_not_allowed``, with ``Allow``),
        counted under lane ``unknown`` (none was addressed), logged at INFO (scanners probe paths), and
        recorded in the rejects table without its body, which is not read (only ``/duis/dno/{user}`` and
        ``/duis/observe`` take DUIS) — the record is written just after the answer."""
        status = missing.status
        reason = "method_not_allowed" if status == 405 else "unknown_route"
        what = f"{request.method} {request.path[:200]!r}"
        self.metrics.count_reject(UNPARSED_LANE, reason)
        self.metrics.count_request(UNPARSED_LANE, status)
        log.info("no such route: %s", what, extra={"lane": UNPARSED_LANE, "reason": reason})
        self._record_later(reason, f"{what} from {request.remote}", self._now())
        if status == 405:
            allow = {"Allow": missing.headers["Allow"]} if "Allow" in missing.headers else {}
            return _text(405, "method_not_allowed", what, allow, close=True)
        return _text(404, "unknown_route", what, close=True)

    async def handle_inline(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, Lane.INLINE, request.match_info.get("user", ""))

    async def handle_observe(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, Lane.OBSERVE, None)

    async def _guarded(self, request: web.Request, lane: Lane, user: str | None) -> web.StreamResponse:
        try:
            resp = await self._handle(request, lane, user)
        except Exception:  # the last line of defence: a bug, never a crash of the connection
            log.exception("unhandled error in ingress handler", extra={"lane": lane.value})
            resp = _text(500, "internal_error")
        self.metrics.count_request(lane.value, resp.status)
        return resp

    async def _keep(
        self, lane: Lane, user: str | None, reason: str, detail: str, body: bytes, at: datetime
    ) -> web.StreamResponse | None:
        """Keep refused bytes with their reason; a 503 to answer instead when they cannot be kept (the
        refusal must not lose them: the DSP re-delivers a 503)."""
        try:
            await self.rejects.record(
                lane=lane.value, user=user, reason=reason, detail=detail, body=body, received_at=at
            )
        except StoreUnavailable as exc:
            log.error("could not keep rejected bytes: %s", exc, extra={"lane": lane.value, "reason": reason})
            self.metrics.count_reject(lane.value, exc.code)
            return _text(503, exc.code, "", {"Retry-After": "5"})
        self.metrics.count_reject(lane.value, reason)
        return None

    async def _handle(self, request: web.Request, lane: Lane, user: str | None) -> web.StreamResponse:
        received_at = self._now()
        t0 = time.perf_counter()
        if self.draining:
            return _text(503, "draining", "the gateway is shutting down", {"Retry-After": "5"})
        cap = self.cfg.server.max_body_bytes
        length = request.content_length
        if length is not None and length > cap:
            self.metrics.count_reject(lane.value, "oversize_body")
            log.warning("body over the size cap refused unread", extra={"lane": lane.value, "length": length})
            return _text(413, "oversize_body", f"{length} bytes, cap is {cap}", close=True)
        try:
            if request.content.is_eof():  # the body came whole with the headers: nothing to time out
                body = await request.read()
            else:
                async with asyncio.timeout(self.cfg.server.read_timeout):
                    body = await request.read()  # bounded by client_max_size (= the cap) for chunked bodies
        except TimeoutError:
            self.metrics.count_reject(lane.value, "read_timeout")
            log.warning("body not received in time", extra={"lane": lane.value, "length": length})
            return _text(408, "read_timeout", f"body not received within {self.cfg.server.read_timeout:g} s",
                         close=True)  # fmt: skip
        except web.HTTPRequestEntityTooLarge:
            self.metrics.count_reject(lane.value, "oversize_body")
            return _text(413, "oversize_body", f"cap is {cap} bytes", close=True)
        except ConnectionError as exc:  # the peer ended the connection before the whole body came
            return await self._cut_short(request, lane, user, exc, received_at)
        except web.RequestPayloadError as exc:
            if isinstance(exc.__cause__, (ContentLengthError, TransferEncodingError)):  # an incomplete body
                return await self._cut_short(request, lane, user, exc, received_at)
            # aiohttp decodes a Content-Encoding (gzip, deflate) as it reads; a body that does not decode
            # is bad input, not a bug: kept (its undecodable bytes are gone with the decoder, so the
            # record holds the request's headers that say what it was) and refused. aiohttp closes the
            # connection after it.
            encoding = request.headers.get("Content-Encoding", "")
            detail = f"body does not decode as Content-Encoding {encoding!r} ({length} bytes declared): {exc}"
            unkept = await self._keep(lane, user, "bad_content_encoding", detail[:500], b"", received_at)
            if unkept is not None:
                return unkept
            log.info("rejected: %s", detail, extra={"lane": lane.value, "reason": "bad_content_encoding"})
            # nothing more can be read from this body (its stream holds the error): mark it ended, or
            # aiohttp's lingering read after the answer re-raises the error and logs it as an unhandled
            # exception with a traceback; the connection then ends after the answer
            request.content.feed_eof()
            return _text(400, "bad_content_encoding", detail[:200], close=True)
        if hdrs.CONTENT_ENCODING in request.headers and (refused := _unsupported_coding(request)) is not None:
            detail, decoded = refused
            # the bytes as received, unless aiohttp decoded them (by one of several header lines): then none
            kept = b"" if decoded else body
            unkept = await self._keep(lane, user, "unsupported_content_encoding", detail, kept, received_at)
            if unkept is not None:
                return unkept
            extra = {"lane": lane.value, "reason": "unsupported_content_encoding"}
            log.info("rejected: %s", detail, extra=extra)
            return _text(415, "unsupported_content_encoding", detail[:200])
        ctype = request.content_type.lower()
        if ctype not in self._types:
            if (unkept := await self._keep(lane, user, "unsupported_media_type", ctype, body, received_at)) is not None:
                return unkept
            return _text(
                415, "unsupported_media_type", f"{ctype or 'none'}; expected {', '.join(sorted(self._types))}"
            )
        if lane is Lane.INLINE:
            dest = self.cfg.destination(user or "")
            if dest is None:
                unkept = await self._keep(
                    lane, user, "unknown_destination", f"no destination {user!r}", body, received_at
                )
                if unkept is not None:
                    return unkept
                return _text(404, "unknown_destination", f"no destination {user!r}")
            user = dest.name
        try:
            result = await self.processor.accept(lane, user, body, received_at)
        except StoreUnavailable as exc:  # the store, or the classify workers (their own codes)
            log.error("unavailable: %s", exc, extra={"lane": lane.value, "reason": exc.code})
            self.metrics.count_reject(lane.value, exc.code)
            return _text(503, exc.code, "", {"Retry-After": "5"})
        except DuisgwError as exc:
            if (unkept := await self._keep(lane, user, exc.code, exc.message, body, received_at)) is not None:
                return unkept
            log.info("rejected: %s", exc.message, extra={"lane": lane.value, "reason": exc.code})
            return _text(400, exc.code, exc.message[:200])
        except Exception as exc:
            log.exception("processor failed", extra={"lane": lane.value})
            detail = f"{type(exc).__name__}: {exc}"
            if (unkept := await self._keep(lane, user, "internal_error", detail, body, received_at)) is not None:
                return unkept
            return _text(500, "internal_error")
        self.metrics.observe_decision(lane.value, time.perf_counter() - t0)
        return self._respond(lane, result)

    async def _cut_short(
        self, request: web.Request, lane: Lane, user: str | None, exc: Exception, at: datetime
    ) -> web.StreamResponse:
        """A body the peer ended the connection in the middle of: bad input, not a bug. What came of it is
        not kept (``request.read`` drops it with the error; the DSP sends the message again, having no
        answer): a rejects row with the lengths, counted as ``incomplete_body``. The 400 reaches nobody."""
        length = request.content_length
        declared = f"{length} declared" if length is not None else "chunked"
        detail = (
            f"the connection ended after {request.content.total_bytes} bytes of the body ({declared}): "
            f"{type(exc).__name__}: {exc}"
        )
        unkept = await self._keep(lane, user, "incomplete_body", detail[:500], b"", at)
        extra = {"lane": lane.value, "reason": "incomplete_body"}
        log.warning("body cut short by the peer: %s", detail, extra=extra)
        request.content.feed_eof()  # (nothing more to read: no lingering read of a stream holding an error)
        if unkept is not None:
            return unkept
        return _text(400, "incomplete_body", detail[:200], close=True)

    def refuse_unparsed(self, exc: HttpProcessingError, peer: str | None) -> web.StreamResponse:
        """The answer to a request aiohttp's HTTP parser refused (:class:`IngressRunner`'s protocol calls
        it instead of aiohttp's own ``handle_error``): 400 ``bad_http_request`` with the parser's reason,
        counted under lane ``unknown``, one WARNING line (no traceback: the client's fault), and a rejects
        row without bytes (there is no complete request to keep) written just after the answer. The
        connection ends after it (the parser cannot find the next request)."""
        received_at = self._now()
        reason, detail = _unparsed(exc)
        self.metrics.count_reject(UNPARSED_LANE, "bad_http_request")
        self.metrics.count_request(UNPARSED_LANE, 400)
        log.warning(
            "bad HTTP request from %s refused: %s",
            peer,
            reason,
            extra={"lane": UNPARSED_LANE, "reason": "bad_http_request", "peer": peer},
        )
        self._record_later("bad_http_request", detail, received_at)
        return _text(400, "bad_http_request", reason, close=True)

    def refuse_header_timeout(self, peer: str | None, received: int, seconds: float) -> web.Response:
        """The answer to a request whose headers did not all arrive within ``[server] header_timeout`` of its
        first byte (:class:`IngressRunner`'s protocol calls it, then sends it and closes the connection):
        408 ``header_timeout``, counted under lane ``unknown`` (the request line may not have come either),
        one WARNING line, and a rejects row without bytes (as ``bad_http_request``: there is no request to
        keep) written just after the answer. ``received``: the bytes of the headers that came, in
        ``seconds``."""
        received_at = self._now()
        limit = self.cfg.server.header_timeout
        self.metrics.count_reject(UNPARSED_LANE, "header_timeout")
        self.metrics.count_request(UNPARSED_LANE, 408)
        detail = (
            f"{received} bytes of request headers from {peer} in {seconds:.1f} s, "
            f"not complete within {limit:g} s"
        )
        log.warning(
            "request headers not received in time: %s",
            detail,
            extra={"lane": UNPARSED_LANE, "reason": "header_timeout", "peer": peer},
        )
        self._record_later("header_timeout", detail, received_at)
        return _text(408, "header_timeout", f"request headers not received within {limit:g} s", close=True)

    def _record_later(self, reason: str, detail: str, at: datetime) -> None:
        """A rejects row without bytes (lane ``unknown``), written just after the answer (:meth:`settle`)."""
        task = asyncio.get_running_loop().create_task(self._record_unparsed(reason, detail, at))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record_unparsed(self, reason: str, detail: str, at: datetime) -> None:
        try:
            await self.rejects.record(
                lane=UNPARSED_LANE, user=None, reason=reason, detail=detail, body=b"", received_at=at
            )
        except StoreUnavailable as exc:  # (answered already: nothing was accepted, and there are no bytes)
            extra = {"lane": UNPARSED_LANE, "reason": exc.code}
            log.warning("could not record a refused request (%s): %s", reason, exc, extra=extra)
        except Exception:
            log.exception("recording a refused request failed", extra={"lane": UNPARSED_LANE})

    async def settle(self) -> None:
        """Wait for the rejects rows of refused unparsed requests still being written (at shutdown, once
        no request is served: before the store, or the link to the gateway process, goes)."""
        while self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)

    def _respond(self, lane: Lane, result: AcceptResult) -> web.StreamResponse:
        headers: dict[str, str] = {}
        if result.message_id:
            headers[MESSAGE_ID_HEADER] = message_id_header_value(result.message_id)
        if result.decision:
            headers[DECISION_HEADER] = result.decision
        extra = {
            "lane": lane.value,
            "message_id": result.message_id,
            "decision": result.decision,
            "reason": result.reason,
            "kind": result.kind,
        }
        if not result.accepted:
            self.metrics.count_reject(lane.value, result.reason or "rejected")
            log.info("rejected", extra=extra)
            return _text(400, result.reason or "rejected", "", headers)
        self.metrics.count_accepted(lane.value, result.kind or "", result.decision or "", result.reason or "")
        log.debug("accepted", extra=extra)
        if result.status == 204:
            return web.Response(status=204, headers=headers)
        return web.Response(
            status=result.status, text="accepted\n", content_type="text/plain", headers=headers
        )


def _unsupported_coding(request: web.BaseRequest) -> tuple[str, bool] | None:
    """None when the request's ``Content-Encoding`` is one the ingress takes: no coding (``identity``, any
    case, or an empty value) with a body aiohttp did not decode, or exactly one of gzip and deflate, the one
    aiohttp decoded as it read the body. Else (the refusal's detail, whether aiohttp decoded the body).

    aiohttp decodes a body when the value of one ``Content-Encoding`` line (the last line in its C parser,
    the first in its Python one), trimmed and lower-cased, is exactly ``gzip`` or ``deflate``, and takes
    the body undecoded for any other value: a coding it does not know (``compress``, ``x-gzip``), a list
    (``gzip, deflate``: two codings; ``identity, gzip``: taken raw though it means gzip). The codings of
    every line are read as one list (RFC 9110 §5.3), ``identity`` and empty elements left out, and compared
    with what aiohttp did, so that no body is taken in a form other than the one it was sent in."""
    values = request.headers.getall(hdrs.CONTENT_ENCODING, ())
    tokens = (t.strip(" \t").lower() for v in values for t in v.split(","))
    codings = [c for c in tokens if c and c != "identity"]
    decoded: str | None = request._message.compression  # what aiohttp's parser made of the header
    if (decoded is None and not codings) or (decoded in DECODED_CODINGS and codings == [decoded]):
        return None
    said = ", ".join(values)  # (several lines are one list: RFC 9110 §5.3)
    detail = f"Content-Encoding {said[:120]!r}: only gzip, deflate or identity are taken"
    if decoded is not None:
        detail += f" (the body was decoded as {decoded} by one header line: its bytes as received are gone)"
    return detail, decoded is not None


def _unparsed(exc: HttpProcessingError) -> tuple[str, str]:
    """(the answer's one-line reason, the rejects row's detail) for a request aiohttp's parser refused:
    the first line of its message, then in the detail the rest (the offending bytes it quotes, repr-escaped);
    without aiohttp's advice to install a decoder (``br``, ``zstd``: the gateway decodes gzip and deflate)."""
    lines = [ln.strip() for ln in str(exc.message or "").splitlines()]
    lines = [ln for ln in lines if ln and ln != "^"] or [type(exc).__name__]
    first = lines[0].rstrip(":")
    if isinstance(exc, ContentEncodingError):
        first = first.split(". Please install", 1)[0] + "; only gzip and deflate are decoded"
    detail = " | ".join([f"{type(exc).__name__}: {first}", *lines[1:]])
    return first[:200], detail[:1000]


# ------------------------------------------------------------------------------------------ server


#: the attributes of aiohttp's ``RequestHandler`` (and its base) the header clock reads: an aiohttp without
#: them gets no header clock (its keep-alive timeout alone bounds slow headers, as before), with a warning
_HEADER_CLOCK_NEEDS = (
    "_request_count", "_messages", "_waiter", "_force_close", "_close", "_upgraded", "transport"
)  # fmt: skip
_HEADER_CLOCK_OK = all(
    any(a in getattr(k, "__slots__", ()) for k in web.RequestHandler.__mro__) for a in _HEADER_CLOCK_NEEDS
)

Refuse = Callable[[HttpProcessingError, str | None], web.StreamResponse]
HeadersLate = Callable[[str | None, int, float], web.Response]


class _IngressProtocol(web.RequestHandler):
    """aiohttp's HTTP/1 protocol, but a request its parser refuses is answered by the ingress, and a request
    whose headers do not all arrive within ``header_timeout`` of its first byte is answered 408 and its
    connection closed (``header_timeout`` 0: no such bound).

    The header clock: a read that completes no request's headers while no body is being received (none
    yet on the connection, or the last one complete) brings header bytes; the first starts the clock, the
    read that completes the headers stops it. One timer per connection at most, made when a request's
    headers first span two reads and moved lazily (it looks at the deadline when it fires): a request
    whose headers come in one read, the common case, costs no timer; a connection idle between requests
    has no clock running (the keep-alive timeout governs it). A body is bounded by ``read_timeout``, in the
    handler. When the timer fires while a request is being answered (pipelined bytes behind it), it
    looks again ``header_timeout`` later: the 408 is never written into another answer."""

    __slots__ = (
        "_body", "_header_bytes", "_header_deadline", "_header_first", "_header_timeout", "_header_timer",
        "_late", "_refuse",
    )  # fmt: skip

    def __init__(
        self,
        manager: web.Server,
        *,
        refuse: Refuse,
        late: HeadersLate | None = None,
        header_timeout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._refuse = refuse
        self._late = late
        self._header_timeout = header_timeout if late is not None else 0.0
        self._header_deadline = 0.0  # loop time; 0.0: no request's headers under way
        self._header_first = 0.0  # loop time of their first byte
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the last request's body (None or at its end: none under way)

    def data_received(self, data: bytes) -> None:
        if not self._header_timeout:
            super().data_received(data)
            return
        count = self._request_count
        body = self._body
        super().data_received(data)
        if self._request_count != count:  # the headers of a request (or more) complete: no clock
            self._header_deadline = 0.0
            messages = self._messages
            self._body = messages[-1][1] if messages else None
        elif (
            data
            and (body is None or body.is_eof())
            and not (self._force_close or self._close or self._upgraded)
        ):
            if self._header_deadline:
                self._header_bytes += len(data)
            else:  # the first bytes of a request's headers, and not all of them
                self._header_bytes = len(data)
                self._header_first = now = self._loop.time()
                self._start_header_clock(now)

    def _start_header_clock(self, now: float) -> None:
        self._header_deadline = deadline = now + self._header_timeout
        if self._header_timer is None:
            self._header_timer = self._loop.call_at(deadline, self._header_clock)
        # (a timer set for an earlier deadline moves itself when it fires)

    def _header_clock(self) -> None:
        self._header_timer = None
        deadline = self._header_deadline
        transport = self.transport
        if not deadline or transport is None or self._force_close:
            return
        now = self._loop.time()
        if now < deadline:
            self._header_timer = self._loop.call_at(deadline, self._header_clock)
            return
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages:
            # a request is being answered, the bytes are behind it: look again later
            self._start_header_clock(now)
            return
        self._header_deadline = 0.0
        assert self._late is not None
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else (str(peer) if peer else None)
        try:
            resp = self._late(host, self._header_bytes, now - self._header_first)
            transport.write(_response_bytes(resp))
        finally:
            self.force_close()  # (the transport sends what was written, then closes)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._body = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp calls this with 400 and the parser's HttpProcessingError for a request it could not parse
        # (web_protocol.RequestHandler.data_received), and with 500/504 for a handler's exception, which the
        # ingress handlers never raise (a middleware's bug keeps aiohttp's answer and its traceback)
        if status == 400 and isinstance(exc, HttpProcessingError):
            return self._refuse(exc, request.remote)
        return super().handle_error(request, status, exc, message)


def _response_bytes(resp: web.Response) -> bytes:
    """``resp`` (a short answer of :func:`_text`) as HTTP/1.1 bytes, ending the connection: for an answer
    sent outside aiohttp's request cycle (there is no request to answer through it)."""
    body = resp.body if isinstance(resp.body, bytes) else b""
    lines = [f"HTTP/1.1 {resp.status} {resp.reason}"]
    dropped = ("content-length", "connection")
    lines += [f"{k}: {v}" for k, v in resp.headers.items() if k.lower() not in dropped]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _IngressServer(web.Server):
    """The server (protocol factory) :class:`web.AppRunner` made for the application, making
    :class:`_IngressProtocol` instead of ``RequestHandler``, with the same protocol options."""

    def __init__(
        self, made: web.Server, refuse: Refuse, late: HeadersLate | None = None, header_timeout: float = 0.0
    ) -> None:
        options: dict[str, Any] = made._kwargs  # what AppRunner and the application pass to each protocol
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **options,
        )
        self._protocol_options = options
        self._refuse = refuse
        self._late = late
        self._header_timeout = header_timeout

    def __call__(self) -> web.RequestHandler:
        return _IngressProtocol(
            self,
            loop=self._loop,
            refuse=self._refuse,
            late=self._late,
            header_timeout=self._header_timeout,
            **self._protocol_options,
        )


class IngressRunner(web.AppRunner):
    """``web.AppRunner`` for the ingress application (same arguments, plus the :class:`Ingress`): its server
    answers a request aiohttp's parser refuses through :meth:`Ingress.refuse_unparsed` (400
    ``bad_http_request``, counted, recorded, no traceback) instead of aiohttp's own ``handle_error`` (its
    text, no reason code, nothing counted, an ERROR traceback), and closes a connection whose request
    headers take longer than ``[server] header_timeout`` through :meth:`Ingress.refuse_header_timeout`
    (408 ``header_timeout``). :meth:`cleanup` also waits for the rejects rows of those refusals. aiohttp
    offers no parameter for the protocol class: the hook is ``AppRunner._make_server`` (the server is made
    in :meth:`setup`), and tests/service/test_ingress_framing_errors.py and
    tests/service/test_ingress_slow_headers.py pin what it relies on."""

    def __init__(self, app: web.Application, ingress: Ingress, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.ingress = ingress

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        if not (isinstance(getattr(made, "_kwargs", None), dict) and hasattr(made, "_loop")):
            # an aiohttp whose server is built otherwise: its own answers to unparsable requests (and its
            # ERROR traceback), rather than an ingress that does not start
            log.warning(
                "aiohttp's server has no protocol options to reuse: its parser's refusals are its own"
            )
            return made
        header_timeout = self.ingress.cfg.server.header_timeout
        if not _HEADER_CLOCK_OK:
            log.warning(
                "aiohttp's protocol is not the one the header clock reads: slow headers are bounded by the "
                "keep-alive timeout only"
            )
            header_timeout = 0.0
        ingress = self.ingress
        return _IngressServer(made, ingress.refuse_unparsed, ingress.refuse_header_timeout, header_timeout)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self.ingress.settle()
