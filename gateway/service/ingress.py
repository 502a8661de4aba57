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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web

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

__all__ = ["DECISION_HEADER", "Ingress", "IngressCounts", "RejectRecorder"]

DECISION_HEADER = "X-DUISGW-Decision"
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

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/duis/dno/{user}", self.handle_inline)
        app.router.add_post("/duis/observe", self.handle_observe)

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
        except web.RequestPayloadError as exc:
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
