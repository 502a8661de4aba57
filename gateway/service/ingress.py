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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import (
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    TransferEncodingError,
)

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


class _IngressProtocol(web.RequestHandler):
    """aiohttp's HTTP/1 protocol, but a request its parser refuses is answered by the ingress."""

    __slots__ = ("_refuse",)

    def __init__(
        self,
        manager: web.Server,
        *,
        refuse: Callable[[HttpProcessingError, str | None], web.StreamResponse],
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._refuse = refuse

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


class _IngressServer(web.Server):
    """The server (protocol factory) :class:`web.AppRunner` made for the application, making
    :class:`_IngressProtocol` instead of ``RequestHandler``, with the same protocol options."""

    def __init__(
        self, made: web.Server, refuse: Callable[[HttpProcessingError, str | None], web.StreamResponse]
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

    def __call__(self) -> web.RequestHandler:
        return _IngressProtocol(self, loop=self._loop, refuse=self._refuse, **self._protocol_options)


class IngressRunner(web.AppRunner):
    """``web.AppRunner`` for the ingress application (same arguments, plus the :class:`Ingress`): its server
    answers a request aiohttp's parser refuses through :meth:`Ingress.refuse_unparsed` (400
    ``bad_http_request``, counted, recorded, no traceback) instead of aiohttp's own ``handle_error`` (its
    text, no reason code, nothing counted, an ERROR traceback). :meth:`cleanup` also waits for the rejects
    rows of those refusals. aiohttp offers no parameter for the protocol class: the hook is
    ``AppRunner._make_server`` (the server is made in :meth:`setup`), and
    tests/service/test_ingress_framing_errors.py pins what it relies on."""

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
        return _IngressServer(made, self.ingress.refuse_unparsed)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self.ingress.settle()
