"""Assembly of the inline gateway service (``duisgw serve``) and its lifecycle.

Theory of operation
-------------------
:class:`Service` wires one :class:`~gateway.service.outbox.SqliteStore` (records, rejects, outbox
on one SQLite file), the decision :class:`~gateway.service.api.Processor` (built by a factory that
receives a :class:`ServiceContext`), the aiohttp ingress, the admin listener (``/metrics``,
``/healthz``, ``/readyz``, and the control endpoints a caller adds with ``admin_routes``: ``duisgw serve``'s
``/admin/reload``, ``/admin/state``, ``/admin/tick``), one delivery worker per outbox queue (``http:<dest>``,
``mqtt:<dest>``), the optional MQTT link, and a tick loop calling ``Processor.tick``.

Transport security: :meth:`Service.start` refuses (:class:`~gateway.service.config.ConfigError`,
before it opens anything) what :func:`~gateway.service.config.transport_security_problems` finds
(an admin listener on a host that is not a loopback address without a token or mutual TLS, its token
over plain HTTP there, a plain-HTTP ingress on such a host, credentials in clear), and an ``[admin.tls]``
certificate, key or CA file it cannot load; logs the opt-outs in force at WARNING; serves the admin
listener over HTTPS with ``[admin.tls]`` (mutual TLS with its ``client_ca_file``), and with ``[admin]
token_file`` puts :func:`admin_auth_middleware` in front of every admin route but ``/metrics``,
``/healthz`` and ``/readyz``: no ``Authorization: Bearer TOKEN`` or a wrong one is a 401, counted in
``duisgw_admin_auth_failures_total`` and logged (never the token) at most once a minute
(:class:`LogInterval`); the refusals left out are counted by the next logged line, or by one line when the
minute ends without one (a timer on the event loop), or at shutdown.

Transport reload (:meth:`Service.reload_transport`; ``duisgw serve`` runs it on SIGHUP and ``POST
/admin/reload``): the TLS material of every section in use and the admin token are read again. Each TLS
section is judged on its own (:mod:`gateway.service.tls_reload`): refused material keeps the context in
force (ERROR log, ``duisgw_reference_stale{source="tls"}`` = 1, ``refused`` in the report) until a reload
of that section succeeds. A new context goes to the listeners (the ingress here or in every ingress worker
process, the admin listener: new handshakes, through :class:`~gateway.service.tls.ServerContextSwitch`;
the listening sockets and open connections stay, but those of a client the new lists revoke are closed,
counted in ``duisgw_tls_connections_cut_total{listener}``, logged once per listener and reported as
``connections_cut``), the DNO senders (here or in the sender process: new connections) and the MQTT link,
which reconnects with it at once, losing nothing in flight
(:meth:`~gateway.service.mqtt.MqttLink.reconnect`; ``tls.mqtt.link`` in the report: ``reconnected``, or
``failed``/``pending`` with the reason, also logged). An admin token file that cannot be used keeps the
token in force (``duisgw_reference_stale{source="admin_token"}`` = 1); a new one is required from the
next request on. Whatever is refused, the answer of ``POST /admin/reload`` and the reload's one summary log
line carry every part's outcome (:func:`reload_outcome`, :func:`reload_summary`): ``status`` ``reloaded``
when every part was taken, ``refused`` with ``refused_parts`` and ``error`` when one was kept in force.

Shutdown (SIGTERM/SIGINT, or :meth:`Service.stop`): mark draining (``/readyz`` → 503, new ingress
requests → 503), stop listening and wait for in-flight requests (``server.shutdown_timeout``),
stop the tick loop and MQTT, let in-flight delivery attempts finish (``outbox.drain_timeout``),
close the processor (``aclose`` when it has one) and the store, then the admin listener.

``mode = "passthrough"`` uses :class:`PassThroughProcessor`: a real, minimal processor that
records each message durably and forwards every inline message unchanged (the plain-proxy baseline).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import random
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from aiohttp import web
from yarl import URL

from gateway.duis.errors import DuisError
from gateway.duis.safexml import parse_xml
from gateway.pipeline import ClassifierSpec
from gateway.service.api import AcceptResult, Delivery, Lane, Processor, StoreUnavailable
from gateway.service.config import (
    ADMIN_OPEN_PATHS,
    AdminConfig,
    ConfigError,
    ServiceConfig,
    TlsServerConfig,
    read_admin_token,
    transport_security_problems,
    transport_security_warnings,
)
from gateway.service.delivery import DeliveryManager, HttpSender, Sender
from gateway.service.ingress import Ingress, IngressRunner
from gateway.service.ingress_workers import IngressPool, IngressSpec, listening_socket
from gateway.service.logs import configure_logging
from gateway.service.metrics import Metrics
from gateway.service.mqtt import MqttLink, MqttSender
from gateway.service.outbox import Outbox, RejectStore, SqliteStore, purge_kept
from gateway.service.sender_process import SenderProcess, SenderSpec
from gateway.service.store_health import StoreHealth, watch_store_files
from gateway.service.tls import (
    ServerContextSwitch,
    material_digest,
    pinned_client_context,
    resumed_session_middleware,
    section_crl_next_updates,
    server_context,
    tls_sections,
)
from gateway.service.tls_reload import PreparedSection, prepare_section
from gateway.store.sqlite import StoreFiles

__all__ = [
    "ADMIN_REFUSAL_LOG_INTERVAL",
    "READYZ_JOB_GRACE",
    "READYZ_PROBE_WAIT",
    "AdminEndpoint",
    "AdminRoutes",
    "AdminToken",
    "LogInterval",
    "PassThroughProcessor",
    "ProcessorFactory",
    "Service",
    "ServiceContext",
    "add_admin_routes",
    "admin_auth_headers",
    "admin_auth_middleware",
    "admin_endpoint",
    "browser_page_middleware",
    "build_admin_app",
    "build_app",
    "log_refusals_left_out",
    "queues_for",
    "reload_outcome",
    "reload_summary",
    "run",
]

log = logging.getLogger("duisgw.service")
#: seconds between purges of the pass-through gateway's rejects past their retention (as the pipeline's)
PURGE_EVERY = 60.0


@dataclass(frozen=True)
class ServiceContext:
    """What a processor factory gets: the config and the shared durable pieces."""

    config: ServiceConfig
    store: SqliteStore
    outbox: Outbox
    rejects: RejectStore
    metrics: Metrics


ProcessorFactory = Callable[[ServiceContext], Awaitable[Processor]]
#: adds extra routes (e.g. the pipeline's ``/admin/*``) to the application serving ``/metrics``
AdminRoutes = Callable[[web.Application], None]


# ------------------------------------------------------------------------------------------ passthrough


class PassThroughProcessor:
    """Record every message durably and forward each inline message unchanged (plain-proxy mode).

    The message id is the SHA-256 of the bytes, so a byte-identical re-delivery is recorded once
    and forwarded once: its outbox row is enqueued only when the message is new to its destination (the
    record decides, not the outbox row of the first delivery, which ``[outbox] retention_seconds`` purges).
    With ``check_well_formed`` (default) the bytes go through the safe XML parser first: a DOCTYPE or
    malformed document is kept in the rejects table and answered 400 (nothing is forwarded that could
    reach a DNO parser with entity declarations). Refused inputs are purged after ``rejects_retention``
    (``[store] rejects_retention_seconds``; ``None``: kept for ever) by :meth:`tick`, as in pipeline mode.
    """

    _SCHEMA = """CREATE TABLE IF NOT EXISTS passthrough_messages (
        message_id TEXT NOT NULL,
        lane TEXT NOT NULL,
        user TEXT,
        received_at TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (lane, message_id)
    )"""

    def __init__(
        self,
        store: SqliteStore,
        outbox: Outbox,
        rejects: RejectStore,
        *,
        check_well_formed: bool = True,
        max_bytes: int = 1 << 20,
        rejects_retention: timedelta | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.rejects = rejects
        self.check_well_formed = check_well_formed
        self.max_bytes = max_bytes
        self.rejects_retention = rejects_retention
        self._last_purge: float | None = None  # monotonic time of the last purge of rejects
        #: the store's health in the metrics (``duisgw_store_…``; ``/readyz`` reads whether it refuses); set by
        #: :meth:`create`
        self.store_health: StoreHealth | None = None

    @classmethod
    async def create(cls, ctx: ServiceContext) -> PassThroughProcessor:
        """A :data:`ProcessorFactory`: creates the table and returns the processor. The store's health is in the
        metrics as in pipeline mode (``duisgw_store_…``: the one transport store's transactions, refusals and file
        sizes, :mod:`gateway.service.store_health`)."""
        keep = ctx.config.store.rejects_retention_seconds
        proc = cls(
            ctx.store,
            ctx.outbox,
            ctx.rejects,
            max_bytes=ctx.config.server.max_body_bytes,
            rejects_retention=timedelta(seconds=keep) if keep > 0 else None,  # 0: kept for ever
        )
        health = proc.store_health = StoreHealth(ctx.metrics, one_database=True)
        ctx.store.observer = health.observer("transport")
        watch_store_files(ctx.metrics, health, [("store", Path(ctx.store.path), ctx.store.files, ["transport"])])
        await ctx.store.write(lambda c: c.execute(cls._SCHEMA))
        return proc

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        if self.check_well_formed:
            try:
                parse_xml(body, max_bytes=self.max_bytes)
            except DuisError as exc:
                await self.rejects.record(
                    lane=lane.value,
                    user=user,
                    reason=exc.code,
                    detail=exc.message,
                    body=body,
                    received_at=received_at,
                )
                return AcceptResult(False, 400, reason=exc.code)
        message_id = hashlib.sha256(body).hexdigest()
        forward = lane is Lane.INLINE and user is not None
        # (kind: the kind of its duisgw_messages_total series, as a pipeline forward's metadata names its own)
        metadata = {"decision": "forward", "reason": "passthrough", "kind": "duis"}
        delivery = Delivery(message_id, user or "", body, metadata)

        def step(conn: sqlite3.Connection) -> None:
            new = conn.execute(
                "INSERT OR IGNORE INTO passthrough_messages (message_id, lane, user, received_at, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (message_id, lane.value, user, received_at.isoformat(), body),
            ).rowcount
            if not forward:
                return
            # a re-delivery: forwarded once, unless the same bytes first went to another destination
            if not new:
                row = conn.execute(
                    "SELECT user FROM passthrough_messages WHERE lane = ? AND message_id = ?",
                    (lane.value, message_id),
                ).fetchone()
                if row is not None and row[0] == user:
                    return
            self.outbox.enqueue_in(conn, [delivery])

        await self.store.write(step)
        if forward:
            return AcceptResult(
                True, 204, reason="passthrough", message_id=message_id, decision="forward", kind="duis"
            )
        return AcceptResult(
            True, 204, reason="observed", message_id=message_id, decision="observe", kind="duis"
        )

    async def tick(self, now: datetime) -> None:
        """Nothing is ever held in pass-through mode; refused inputs past their retention are purged (at the
        first tick, then every minute, as the pipeline's processor does)."""
        keep = self.rejects_retention
        if keep is None:
            return
        mono = time.monotonic()
        if self._last_purge is not None and mono - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = mono
        try:
            purged = await purge_kept(self.store, "rejects", now - keep)
        except StoreUnavailable as exc:
            log.error("rejects purge failed", extra={"error": str(exc)})
            return
        if purged:
            log.info("rejects purged", extra={"count": purged, "retention_s": keep.total_seconds()})


# ------------------------------------------------------------------------------------------ reload outcome


def _reload_parts(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The parts of a reload report by name (``tls.SECTION`` for each TLS section), each with its ``status``."""
    parts: dict[str, Mapping[str, Any]] = {}
    for name, part in report.items():
        if name == "tls" and isinstance(part, Mapping):
            parts.update({f"tls.{s}": p for s, p in part.items() if isinstance(p, Mapping)})
        elif isinstance(part, Mapping) and "status" in part:
            parts[name] = part
    return parts


def _refused_parts(report: Mapping[str, Any]) -> dict[str, str]:
    """The parts a reload refused (kept in force), each with its reason."""
    return {
        name: str(part.get("refused") or "refused")
        for name, part in _reload_parts(report).items()
        if part.get("status") == "refused"
    }


def reload_outcome(report: Mapping[str, Any]) -> dict[str, Any]:
    """A reload's ``report`` (by part) with whether every part was taken: ``status`` ``reloaded`` (each part
    ``reloaded`` or ``unchanged``) or ``refused`` (at least one part kept in force; the others were taken),
    ``refused_parts`` (``tls.SECTION``, ``admin_token``, ``smki``, ``gbcs_keys``, ``guids``, ``inventory``)
    and, when a part was refused, ``error``: each refused part with its reason."""
    refused = _refused_parts(report)
    out = {**report, "status": "refused" if refused else "reloaded", "refused_parts": list(refused)}
    if refused:
        out["error"] = "; ".join(f"{name}: {why}" for name, why in refused.items())
    return out


def reload_summary(report: Mapping[str, Any], what: str) -> tuple[int, str]:
    """The one log line of a reload of ``what``: its level and a message naming every part's outcome (in the
    message itself: the text log format shows no extras). WARNING when a part was refused (each refusal is
    also logged at ERROR where it is judged), else INFO."""
    refused = _refused_parts(report)
    taken = ", ".join(
        f"{name} {part.get('status')}" for name, part in _reload_parts(report).items() if name not in refused
    )
    if not refused:
        return logging.INFO, f"{what} reloaded: {taken or 'nothing to reload'}"
    kept = "; ".join(f"{name} ({why})" for name, why in refused.items())
    return (
        logging.WARNING,
        f"{what} reload refused {kept}: kept in force (duisgw_reference_stale = 1); taken: {taken or 'nothing'}",
    )


# ------------------------------------------------------------------------------------------ apps


def queues_for(config: ServiceConfig, destination: str) -> tuple[str, ...]:
    """The outbox queues a delivery to ``destination`` goes into (empty for an unknown destination)."""
    for d in config.destinations:
        if d.name == destination:
            out = []
            if d.url:
                out.append(f"http:{d.name}")
            if config.mqtt.enabled and config.mqtt.publish and d.mqtt:
                out.append(f"mqtt:{d.name}")
            return tuple(out)
    return ()


def build_app(
    config: ServiceConfig,
    processor: Processor,
    outbox: Outbox,
    *,
    rejects: RejectStore | None = None,
    metrics: Metrics | None = None,
    middlewares: Sequence[Any] = (),
) -> tuple[web.Application, Ingress]:
    """The DSP-facing aiohttp application (body cap = ``server.max_body_bytes``) and its handlers.
    ``middlewares`` are aiohttp middlewares run around every ingress request."""
    metrics = metrics if metrics is not None else Metrics()
    rejects = rejects if rejects is not None else RejectStore(outbox.store)
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=list(middlewares))
    ingress = Ingress(config, processor, rejects, metrics)
    ingress.add_routes(app)
    return app, ingress


def add_admin_routes(
    app: web.Application,
    metrics: Metrics,
    store: SqliteStore,
    is_draining: Callable[[], bool],
    not_ready: Callable[[], str | None] = lambda: None,
    probe: Callable[[], Awaitable[str | None]] | None = None,
    busy: Callable[[], bool] | None = None,
) -> None:
    """``/metrics`` (Prometheus text format), ``/healthz`` (alive), ``/readyz`` (not draining, ``not_ready()``
    has no reason code, e.g. no ingress worker serving, the store can record something now — a write committed:
    :meth:`SqliteStore.probe`; a query would be answered from the page cache with the disk full, read-only or
    failing, or the database locked by another process — and ``probe()``, when given, has no reason code either,
    e.g. the shared state's Redis answering).

    The store's write and ``probe()`` run together, and ``/readyz`` answers within about
    :data:`READYZ_PROBE_WAIT`: a store write not committed by then (the store's thread busy with another job) is
    answered by ``busy()`` — whether the last outcome may stand (:meth:`Service._store_busy`) — ``store_unavailable``
    without it. ``probe()`` bounds its own waits the same way (:meth:`Service._readiness_problem`)."""

    async def metrics_handler(_request: web.Request) -> web.Response:
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = metrics.content_type
        return resp

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        if is_draining():
            return web.Response(status=503, text="draining\n")
        if (reason := not_ready()) is not None:
            return web.Response(status=503, text=f"{reason}\n")
        others = asyncio.ensure_future(probe()) if probe is not None else None
        recorded = await store.probe_within(READYZ_PROBE_WAIT)
        if recorded is None:  # not answered in time: the last outcome, while it may stand
            recorded = busy is not None and busy()
        reason = None if recorded else "store_unavailable"
        if others is not None:
            other = await others
            reason = reason or other
        if reason is not None:
            return web.Response(status=503, text=f"{reason}\n")
        return web.Response(text="ready\n")

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def _bearer_problem(values: Sequence[str], expected: bytes) -> str | None:
    """Why the ``Authorization`` header values of a request do not carry the bearer token ``expected``:
    ``"missing"`` (no header, or not a bearer token), ``"wrong"`` (another token, or several headers);
    ``None`` when they do. Compared in constant time (:func:`hmac.compare_digest`)."""
    if not values:
        return "missing"
    if len(values) > 1:
        return "wrong"
    scheme, _, credentials = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "missing"
    presented = credentials.strip().encode("utf-8", "surrogateescape")
    return None if hmac.compare_digest(presented, expected) else "wrong"


def _loggable_path(path: str) -> str:
    """A request's path (percent-decoded by aiohttp, so anything a client sends) as a log shows it: at most
    200 characters, each one not printable escaped (``\\n``, ``\\x1b``, ...), so that no client puts a line
    break or a terminal control sequence in the log (a forged line in ``format = "text"``)."""
    return repr(path[:200])[1:-1]


#: seconds between two logged admin refusals (401): a scanner on the admin port must not flood the log
ADMIN_REFUSAL_LOG_INTERVAL = 60.0

#: seconds ``/readyz`` waits for its store probes (under a load balancer's usual 2 s timeout); one not answered by
#: then is answered from the last outcome (:meth:`Service._store_busy`)
READYZ_PROBE_WAIT = 1.0
#: seconds past ``[store] busy_timeout`` (twice it with the decision state in a database of its own: a batch waits for
#: a lock in each database) one job may hold the engine thread and still be taken as a busy store (a job waiting for
#: another process's lock fails at ``busy_timeout``): longer, ``/readyz`` says ``store_unavailable``
READYZ_JOB_GRACE = 5.0
#: seconds a PING of the shared state's Redis may take before ``/readyz`` answers ``shared_state_unavailable``
SHARED_STATE_PROBE_TIMEOUT = 1.0
#: seconds between the PINGs that keep ``duisgw_shared_state_up`` current between readiness probes
SHARED_STATE_PROBE_INTERVAL = 5.0


class LogInterval:
    """At most one logged line per ``interval`` seconds of ``clock`` (a monotonic clock): :meth:`admit`
    says whether this event is logged and, when it is, how many events were left out since the last
    logged one.

    With ``on_left_out``, events left out are not left waiting for the next logged one: the first event
    left out after a logged line sets a timer on the running event loop (:meth:`asyncio.loop.call_later`,
    no polling) for the end of that line's interval, and if events are still left out then,
    ``on_left_out(count, "interval")`` reports them (the next logged line counts from there). The line is
    not an event: the next event after the interval is logged as usual. :meth:`flush` (at shutdown)
    reports those still left out at once (``"shutdown"``) and cancels the timer."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        on_left_out: Callable[[int, str], None] | None = None,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._on_left_out = on_left_out
        self._last: float | None = None
        self._left_out = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def left_out(self) -> int:
        """Events left out since the last logged line (or report) that nothing has reported yet."""
        return self._left_out

    def admit(self) -> int | None:
        """``None`` when this event is not logged (counted instead); else the number of events not
        logged since the last logged one (0 for the first)."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._left_out += 1
            self._arm(self._last + self.interval - now)
            return None
        self._cancel()
        self._last, left_out, self._left_out = now, self._left_out, 0
        return left_out

    def flush(self) -> int:
        """Report the events left out now (``on_left_out(count, "shutdown")``, when there are any) and
        cancel the timer; the count reported (0: nothing was pending)."""
        self._cancel()
        return self._report("shutdown")

    def _arm(self, delay: float) -> None:
        if self._on_left_out is None or self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no event loop: the next logged line or flush() reports them)
            return
        self._timer = loop.call_later(max(0.0, delay), self._due)

    def _due(self) -> None:
        self._timer = None
        self._report("interval")

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _report(self, when: str) -> int:
        count, self._left_out = self._left_out, 0
        if count and self._on_left_out is not None:
            self._on_left_out(count, when)
        return count


def log_refusals_left_out(count: int, when: str) -> None:
    """The admin listener's line for ``count`` refusals (401) left out of the log since the last one logged
    (:class:`LogInterval`'s ``on_left_out``): at WARNING, ``refusals_not_logged`` = ``count``, ``when`` =
    ``"interval"`` (the interval passed with no refusal logged) or ``"shutdown"``."""
    log.warning(
        "admin requests refused (401) and not logged since the last one logged: %d%s",
        count,
        " (the gateway is stopping)" if when == "shutdown" else "",
        extra={"refusals_not_logged": count, "when": when},
    )


class AdminToken:
    """The admin listener's bearer token in force (a reload of ``[admin] token_file`` replaces
    :attr:`value`; the next request is checked against the new one)."""

    def __init__(self, value: str) -> None:
        self.value = value


def admin_auth_middleware(
    token: str | AdminToken, metrics: Metrics, log_interval: LogInterval | None = None
) -> Any:
    """An aiohttp middleware requiring ``Authorization: Bearer TOKEN`` on every route of the admin
    listener but :data:`~gateway.service.config.ADMIN_OPEN_PATHS` (decided on the route the request
    matched, so no spelling of a path reaches a control endpoint without it; an unknown path needs it
    too). A refusal is 401 with ``WWW-Authenticate: Bearer``, counted in
    ``duisgw_admin_auth_failures_total{reason}`` (every one) and logged at WARNING without the token, at
    most once per ``log_interval`` (default: :data:`ADMIN_REFUSAL_LOG_INTERVAL` seconds of
    :func:`time.monotonic`); a logged line after refusals that were not logged says how many, and so does
    one line at the end of the interval when refusals were left out and none was logged since
    (:func:`log_refusals_left_out`; :meth:`LogInterval.flush` at shutdown). An :class:`AdminToken` is read
    at each request (a reload replaces it)."""
    holder = token if isinstance(token, AdminToken) else AdminToken(token)
    limit = (
        log_interval
        if log_interval is not None
        else LogInterval(ADMIN_REFUSAL_LOG_INTERVAL, on_left_out=log_refusals_left_out)
    )

    @web.middleware
    async def require_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if _open_admin_path(request):
            return await handler(request)
        reason = _bearer_problem(request.headers.getall("Authorization", []), holder.value.encode("utf-8"))
        if reason is None:
            return await handler(request)
        metrics.admin_auth_failures.labels(reason).inc()
        if (left_out := limit.admit()) is not None:
            path = _loggable_path(request.path)
            log.warning(
                "admin request refused (401): %s bearer token: %s %s from %s%s",
                reason,
                request.method,
                path,
                request.remote,
                f" ({left_out} more refused since the last one logged, not logged)" if left_out else "",
                extra={
                    "reason": reason,
                    "method": request.method,
                    "path": path,
                    "remote": request.remote,
                    "refusals_not_logged": left_out,
                },
            )
        challenge = 'Bearer realm="duisgw-admin"' + (', error="invalid_token"' if reason == "wrong" else "")
        return web.Response(
            status=401, text=f"unauthorized: {reason} bearer token\n", headers={"WWW-Authenticate": challenge}
        )

    return require_token


def _open_admin_path(request: web.Request) -> bool:
    """Whether ``request`` matched a route of :data:`~gateway.service.config.ADMIN_OPEN_PATHS` (the metrics and the
    probes: open to every client, token or not, page or not)."""
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in ADMIN_OPEN_PATHS


def browser_page_middleware() -> Any:
    """An aiohttp middleware refusing (403) on every route of the admin listener but
    :data:`~gateway.service.config.ADMIN_OPEN_PATHS` a request a web browser marks as made by a page: with an
    ``Origin`` header (every cross-site POST carries one, even a no-preflight "simple" one) or a
    ``Sec-Fetch-Site`` other than ``none`` (a page's request, a rebound name's same-origin one included). Without
    it, any page the operator opens could POST to a tokenless loopback listener (the default): move the
    engine clock for good (``/admin/tick`` with a ``text/plain`` body) or fire reloads. Scripts, curl,
    Prometheus and ``duisgw demo`` send neither header; a URL typed in the address bar is ``none``."""

    @web.middleware
    async def refuse_pages(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if _open_admin_path(request):
            return await handler(request)
        fetched_by = request.headers.get("Sec-Fetch-Site", "none").strip().lower()
        if "Origin" in request.headers or fetched_by != "none":
            return web.Response(
                status=403, text="forbidden: the admin listener does not answer requests made by web pages\n"
            )
        return await handler(request)

    return refuse_pages


def admin_auth_headers(admin: AdminConfig, base_dir: Path | None = None) -> dict[str, str]:
    """The headers a client of the admin listener sends: ``Authorization: Bearer TOKEN`` when ``[admin]
    token_file`` is set (:func:`~gateway.service.config.read_admin_token`), else none."""
    token = read_admin_token(admin, base_dir)
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


#: the wildcard addresses a local client reaches through a loopback address instead
_WILDCARD_TO_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class AdminEndpoint:
    """How a local client (``duisgw demo``, scripts, tests) reaches the admin listener of a config:
    ``url`` (``http://`` or, with ``[admin.tls]``, ``https://``; no trailing slash), ``ssl`` (what aiohttp's
    ``ssl=`` takes: a context pinned to the listener's own certificate with ``[admin.tls]``, else
    ``True``) and ``headers`` (the bearer token, when ``[admin] token_file`` is set)."""

    url: str
    ssl: ssl.SSLContext | bool
    headers: dict[str, str]


def admin_endpoint(
    admin: AdminConfig,
    port: int,
    base_dir: Path | None = None,
    *,
    client_cert: tuple[str, str] | None = None,
) -> AdminEndpoint:
    """The :class:`AdminEndpoint` of ``admin`` listening on ``port`` (the bound port: ``Service.admin_port``).
    With ``[admin.tls]`` the client trusts exactly the certificate the listener presents (the first of
    ``cert_file``, :func:`~gateway.service.tls.pinned_client_context`): a client that reads the same
    config needs no CA of its own, and a listener on a wildcard address is reached through the loopback
    address whatever names its certificate holds. With ``client_ca_file`` (mutual TLS) the client must
    present a certificate that CA issued: ``client_cert`` (certificate file, key file)."""
    host = _WILDCARD_TO_LOOPBACK.get(admin.host, admin.host)
    t = admin.tls
    scheme = "https" if t.cert_file else "http"
    url = str(URL.build(scheme=scheme, host=host, port=port))
    context: ssl.SSLContext | bool = True
    if t.cert_file:
        context = pinned_client_context(
            t.cert_file, base_dir=base_dir, client_cert=client_cert, min_version=t.min_version
        )
    return AdminEndpoint(url.rstrip("/"), context, admin_auth_headers(admin, base_dir))


def _mutual_tls(tls: TlsServerConfig) -> bool:
    """Whether a listener's ``[*.tls]`` asks clients for certificates (so resumed sessions carry one)."""
    return bool(tls.cert_file and tls.client_ca_file)


def build_admin_app(
    metrics: Metrics,
    store: SqliteStore,
    is_draining: Callable[[], bool],
    not_ready: Callable[[], str | None] = lambda: None,
    *,
    token: str | AdminToken | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    tls: ServerContextSwitch | None = None,
    refusal_log: LogInterval | None = None,
    probe: Callable[[], Awaitable[str | None]] | None = None,
    busy: Callable[[], bool] | None = None,
) -> web.Application:
    """The admin listener's application (see :func:`add_admin_routes`); with ``token`` every route but
    ``/metrics``, ``/healthz`` and ``/readyz`` requires it (:func:`admin_auth_middleware`, its refusals
    logged through ``refusal_log``: by default at most once per :data:`ADMIN_REFUSAL_LOG_INTERVAL` seconds of
    ``monotonic``, those left out counted in a line at the end of the interval)."""
    if refusal_log is None:
        refusal_log = LogInterval(ADMIN_REFUSAL_LOG_INTERVAL, monotonic, log_refusals_left_out)
    middlewares = [admin_auth_middleware(token, metrics, refusal_log)] if token is not None else []
    middlewares.append(browser_page_middleware())  # (after the token: a refusal without it stays a 401)
    if tls is not None:
        middlewares.insert(0, resumed_session_middleware(lambda: tls))
    app = web.Application(middlewares=middlewares)
    add_admin_routes(app, metrics, store, is_draining, not_ready, probe, busy)
    return app


def _swap_listener(
    switch: ServerContextSwitch | None, runner: web.AppRunner | None, p: PreparedSection, grace: float
) -> int | None:
    """Put ``p``'s context in force on a listener of this process and close its open connections whose
    client certificate the new lists revoke: how many (``None``: the listener does not verify clients)."""
    if switch is None:
        return None
    assert p.context is not None
    switch.swap(p.context, p.resumed)
    if p.resumed is None:
        return None
    server = runner.server if runner is not None else None
    return switch.cut_revoked(server, grace) if server is not None else 0


def _bound_port(runner: web.AppRunner) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        for sock in sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("site is not listening")


# ------------------------------------------------------------------------------------------ service


def _decision_state_in_store(config: ServiceConfig) -> bool:
    """Whether the decision state's store keeps its tables in the transport store's database and checkpoints it from
    its own thread (``[pipeline] state_in_store`` on the SQLite backend: ``gateway.service.serve``'s layout): the
    transport store then runs no checkpoint of its own (one on its commit path would undo what that thread is for)."""
    return config.mode == "pipeline" and config.pipeline.state_in_store and config.state.backend != "redis"


class Service:
    """The whole gateway process: start, run, drain and stop."""

    def __init__(
        self,
        config: ServiceConfig,
        processor_factory: ProcessorFactory | None = None,
        *,
        rng: random.Random | None = None,
        base_dir: Path | None = None,
        middlewares: Sequence[Any] = (),
        admin_routes: AdminRoutes | None = None,
        classifier_spec: ClassifierSpec | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        admin_refusal_log_interval: float = ADMIN_REFUSAL_LOG_INTERVAL,
    ) -> None:
        self.config = config
        #: the admin listener's refusal log (401s): at most one a ``admin_refusal_log_interval`` of the
        #: monotonic clock ``monotonic`` (tests inject their own), those left out counted at the end of the
        #: interval and at shutdown (:meth:`stop` flushes it)
        self.admin_refusal_log = LogInterval(admin_refusal_log_interval, monotonic, log_refusals_left_out)
        self._classifier_spec = classifier_spec
        self._middlewares = tuple(middlewares)
        self._admin_routes = admin_routes
        self._factory: ProcessorFactory = processor_factory or PassThroughProcessor.create
        self._rng = rng
        self._base_dir = base_dir
        self.metrics = Metrics()
        st = config.store
        self.store = SqliteStore(
            st.path,
            synchronous=st.synchronous,
            busy_timeout=st.busy_timeout,
            max_batch=st.max_batch,
            own_checkpoints=not _decision_state_in_store(config),
        )
        self.outbox = Outbox(self.store, lambda d: queues_for(config, d))
        self.rejects = RejectStore(self.store)
        self.processor: Processor | None = None
        self.ingress: Ingress | None = None
        #: the ingress in worker processes (``server.ingress_processes``), else ``None``
        self.ingress_pool: IngressPool | None = None
        self._listener: socket.socket | None = None
        self._draining = False
        self._listening = False
        self.delivery: DeliveryManager | None = None
        #: the HTTP sender process (``outbox.sender_process``), else ``None``
        self.sender_process: SenderProcess | None = None
        self.mqtt: MqttLink | None = None
        self._runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._tick_task: asyncio.Task[None] | None = None
        #: a client of its own for the shared state's readiness (``[state] backend = "redis"``): the engine's
        #: client belongs to the engine thread's event loop
        self._shared_probe: aioredis.Redis | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.port: int = 0
        self.admin_port: int = 0
        #: the listeners' TLS contexts in force (``None``: plain HTTP, or the ingress in worker processes)
        self.ingress_tls: ServerContextSwitch | None = None
        self.admin_tls: ServerContextSwitch | None = None
        self.admin_token: AdminToken | None = None
        self._http_senders: dict[str, HttpSender] = {}
        #: by TLS section: the digest of the material in force (:func:`~gateway.service.tls.material_digest`)
        self._tls_digests: dict[str, str] = {}
        #: by TLS section (and ``admin_token``): why the last reload of it was refused (cleared by one that
        #: succeeds); ``duisgw_reference_stale{source="tls"|"admin_token"}``
        self.transport_refused: dict[str, str] = {}
        self._transport_lock = asyncio.Lock()
        self._crl_labels: set[tuple[str, str]] = set()
        refused = self.transport_refused
        if tls_sections(config):  # (the series exist where there is something to reload)
            self.metrics.reference_stale.labels("tls").set_function(
                lambda: float(any(k != "admin_token" for k in refused))
            )
        if config.admin.enabled and config.admin.token_file:
            self.metrics.reference_stale.labels("admin_token").set_function(
                lambda: float("admin_token" in refused)
            )

    @property
    def draining(self) -> bool:
        return self._draining or (self.ingress is not None and self.ingress.draining)

    @property
    def listening(self) -> bool:
        """Whether :meth:`start` has put the ingress up (and not yet :meth:`stop` begun)."""
        return self._listening and not self._stopping.is_set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` has begun (no new background work is to start then)."""
        return self._stopping.is_set()

    def _not_ready(self) -> str | None:
        if not self._listening:  # the admin listener starts first
            return "starting"
        if self.ingress_pool is not None and self.ingress_pool.live == 0:
            return "ingress_unavailable"
        return None

    async def start(self) -> None:
        cfg = self.config
        # refused before anything is opened or bound (config check lists the same problems)
        if problems := transport_security_problems(cfg):
            raise ConfigError(problems)
        token = read_admin_token(cfg.admin, self._base_dir) if cfg.admin.enabled else None
        self.admin_token = AdminToken(token) if token is not None else None
        admin_ssl = self._admin_ssl_context() if cfg.admin.enabled else None
        self.admin_tls = (
            ServerContextSwitch(admin_ssl, on_overtaken=lambda: self._count_overtaken("admin"))
            if admin_ssl is not None
            else None
        )
        for warning in transport_security_warnings(cfg):
            log.warning("%s", warning, extra={"transport_security": warning})
        for name, tls in tls_sections(cfg):
            self._set_crl_gauge(name, section_crl_next_updates(tls, base_dir=self._base_dir))
            self._tls_digests[name] = material_digest(tls, base_dir=self._base_dir)
        await self.store.open()
        ctx = ServiceContext(cfg, self.store, self.outbox, self.rejects, self.metrics)
        self.processor = await self._factory(ctx)
        app, self.ingress = build_app(
            cfg,
            self.processor,
            self.outbox,
            rejects=self.rejects,
            metrics=self.metrics,
            # a resumed session's client certificate is only there to check with mutual TLS (the
            # configuration is not reloaded: without it the check is never needed, and costs every request)
            middlewares=(
                *(
                    (resumed_session_middleware(lambda: self.ingress_tls),)
                    if _mutual_tls(cfg.server.tls)
                    else ()
                ),
                *self._middlewares,
            ),
        )

        senders: dict[str, Sender] = {}
        if cfg.mqtt.enabled:
            observe = self.processor if cfg.mqtt.observe_topics else None
            self.mqtt = MqttLink(
                cfg.mqtt,
                processor=observe,
                rejects=self.rejects,
                metrics=self.metrics,
                base_dir=self._base_dir,
                max_bytes=cfg.server.max_body_bytes,
            )
        http_dests = tuple(d for d in cfg.destinations if d.url)
        if cfg.outbox.sender_process and http_dests:
            events = self.metrics.sender_process_events
            self.sender_process = SenderProcess(
                SenderSpec(http_dests, cfg.outbox, cfg.logging, self._base_dir),
                on_event=lambda name: events.labels(name).inc(),
            )  # fmt: skip
            await self.sender_process.start()
        for d in cfg.destinations:
            if d.url and self.sender_process is not None:
                senders[f"http:{d.name}"] = self.sender_process.sender(d.name)
            elif d.url:
                http_sender = HttpSender.for_destination(d, cfg.outbox, base_dir=self._base_dir)
                self._http_senders[d.name] = http_sender
                senders[f"http:{d.name}"] = http_sender
            if self.mqtt is not None and cfg.mqtt.publish and d.mqtt:
                topic = cfg.mqtt.publish_topic.replace("{destination}", d.name)
                senders[f"mqtt:{d.name}"] = MqttSender(self.mqtt, topic)
        self.delivery = DeliveryManager(self.outbox, senders, cfg.outbox, rng=self._rng, metrics=self.metrics)

        if cfg.admin.enabled:
            admin = build_admin_app(
                self.metrics,
                self.store,
                lambda: self.draining,
                self._not_ready,
                token=self.admin_token,
                tls=self.admin_tls,
                refusal_log=self.admin_refusal_log,
                probe=self._readiness_problem,
                busy=self._store_busy,
            )
            if self._admin_routes is not None:
                self._admin_routes(admin)
            else:  # (duisgw serve's pipeline adds its own, which reloads this too)
                admin.router.add_post("/admin/reload", self._admin_reload)
            self._admin_runner = web.AppRunner(admin, access_log=None)
            await self._admin_runner.setup()
            listening = self.admin_tls.listening if self.admin_tls is not None else None
            site = web.TCPSite(self._admin_runner, cfg.admin.host, cfg.admin.port, ssl_context=listening)
            await site.start()
            self.admin_port = _bound_port(self._admin_runner)
        else:  # observability only on the DSP-facing listener: never the control endpoints (reload, tick)
            add_admin_routes(
                app,
                self.metrics,
                self.store,
                lambda: self.draining,
                self._not_ready,
                self._readiness_problem,
                self._store_busy,
            )

        if self.mqtt is not None:
            await self.mqtt.start()
        await self.delivery.start()
        self._tick_task = asyncio.create_task(self._tick_loop(), name="duisgw-tick")
        if cfg.mode == "pipeline" and cfg.state.backend == "redis":
            self._shared_probe = aioredis.Redis.from_url(
                cfg.state.redis_url,
                socket_timeout=SHARED_STATE_PROBE_TIMEOUT,
                socket_connect_timeout=SHARED_STATE_PROBE_TIMEOUT,
            )
            await self._shared_state_problem()
            self._probe_task = asyncio.create_task(self._probe_loop(), name="duisgw-shared-state-probe")

        ssl_ctx = server_context(cfg.server.tls, base_dir=self._base_dir)  # (also checks the files)
        if cfg.server.ingress_processes > 0:
            await self._start_ingress_pool()
        else:
            self.ingress_tls = (
                ServerContextSwitch(ssl_ctx, on_overtaken=lambda: self._count_overtaken("server"))
                if ssl_ctx is not None
                else None
            )
            ssl_ctx = self.ingress_tls.listening if self.ingress_tls is not None else None
            self._runner = IngressRunner(  # (answers what aiohttp's parser refuses as the ingress does)
                app,
                self.ingress,
                access_log=None,
                shutdown_timeout=cfg.server.shutdown_timeout,
                keepalive_timeout=cfg.server.keepalive_timeout,
            )
            await self._runner.setup()
            await web.TCPSite(
                self._runner, cfg.server.host, cfg.server.port, ssl_context=ssl_ctx,
                reuse_port=True if cfg.server.reuse_port else None,
            ).start()  # fmt: skip
            self.port = _bound_port(self._runner)
        self._listening = True
        log.info(
            "duisgw service listening",
            extra={
                "port": self.port,
                "admin_port": self.admin_port,
                "mode": cfg.mode,
                "tls": ssl_ctx is not None,
                "admin_tls": admin_ssl is not None,
                "ingress_processes": cfg.server.ingress_processes,
            },
        )

    def _admin_ssl_context(self) -> ssl.SSLContext | None:
        """The admin listener's TLS context (``None``: plain HTTP), built before anything is opened: a
        certificate, key or CA file that cannot be used is a :class:`ConfigError`, as config check lists it."""
        try:
            return server_context(self.config.admin.tls, base_dir=self._base_dir)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                [f"admin.tls: unusable certificate, key or CA file ({str(exc) or type(exc).__name__})"]
            ) from None

    # ------------------------------------------------------------------ transport reload

    def _set_crl_gauge(self, section: str, next_updates: dict[str, datetime]) -> None:
        """``duisgw_tls_crl_next_update_seconds`` of ``section``: the lists in force (issuers no longer
        listed lose their sample)."""
        gauge = self.metrics.tls_crl_next_update
        for labels in [key for key in self._crl_labels if key[0] == section]:
            gauge.remove(*labels)
            self._crl_labels.discard(labels)
        for issuer, next_update in next_updates.items():
            gauge.labels(section, issuer).set(next_update.timestamp())
            self._crl_labels.add((section, issuer))

    async def reload_transport(self) -> dict[str, Any]:
        """Read the TLS material of every section in use and the admin token again, and put what is
        accepted in force (module docstring). The report: ``tls`` by section (``status``: ``reloaded``,
        ``unchanged`` or ``refused`` with the reason), ``admin_token`` (the same, when ``token_file`` is set)."""
        async with self._transport_lock:
            loop = asyncio.get_running_loop()
            now = datetime.now(UTC)
            tls: dict[str, Any] = {}
            for name, section in tls_sections(self.config):
                prepared = await loop.run_in_executor(
                    None, prepare_section, name, section, self._base_dir, self._tls_digests.get(name), now
                )
                tls[name] = await self._apply_tls(prepared)
            report: dict[str, Any] = {"tls": tls}
            if self.admin_token is not None:
                token, problem = await loop.run_in_executor(None, self._read_admin_token)
                report["admin_token"] = self._apply_admin_token(token, problem)
            return report

    async def _apply_tls(self, p: PreparedSection) -> dict[str, Any]:
        name = p.name
        cut: int | None = None
        if p.refused is None and p.context is not None:
            problem, cut = await self._put_in_force(p)
        else:
            problem = p.refused
        if cut is not None:
            self._count_cut(name, cut)
        if problem is not None:
            self.transport_refused[name] = problem
            log.error(
                "TLS reload of %s refused; the material in force stays "
                '(duisgw_reference_stale{source="tls"} = 1): %s',
                name,
                problem,
                extra={"section": name, "error": problem},
            )
            refused: dict[str, Any] = {"status": "refused", "refused": problem}
            if cut:  # (the workers that took the new material closed these)
                refused["connections_cut"] = cut
            return refused
        if (was := self.transport_refused.pop(name, None)) is not None:
            log.info("TLS material of %s accepted again", name, extra={"section": name, "was": was})
        if p.unchanged:
            return {"status": "unchanged"}
        self._tls_digests[name] = p.digest
        self._set_crl_gauge(name, p.next_updates)
        log.info("TLS material of %s reloaded", name, extra={"section": name, "digest": p.digest[:16]})
        out: dict[str, Any] = {"status": "reloaded", "digest": p.digest[:16]}
        if cut is not None:
            out["connections_cut"] = cut
        if name == "mqtt" and self.mqtt is not None:
            out["link"] = await self._relink_mqtt(self.mqtt)
        return out

    @staticmethod
    async def _relink_mqtt(link: MqttLink) -> dict[str, str]:
        """The MQTT link re-established with the reloaded ``[mqtt.tls]`` context (nothing in flight lost:
        :meth:`MqttLink.reconnect`); its part of the report (``tls.mqtt.link``) and its log line."""
        outcome = await link.reconnect()
        extra = {"section": "mqtt", "host": link.cfg.host, "link": outcome.status}
        if outcome.status == "reconnected":
            log.info("MQTT link re-established with the reloaded TLS material", extra=extra)
        else:
            log.error(
                "MQTT link not re-established with the reloaded TLS material (%s: %s); it goes on trying "
                "every %g s with that material (duisgw_mqtt_connected = 0 until it connects)",
                outcome.status,
                outcome.error,
                link.cfg.reconnect_interval,
                extra={**extra, "error": outcome.error},
            )
        return outcome.report()

    def _count_overtaken(self, listener: str) -> None:
        """A connection whose handshake a reload overtook, closed at its first request because the lists in
        force revoke its client (logged by :meth:`ServerContextSwitch.made_before_problem`): counted with the
        connections the reload itself closed."""
        self.metrics.tls_connections_cut.labels(listener).inc()

    def _count_cut(self, listener: str, cut: int) -> None:
        """``duisgw_tls_connections_cut_total{listener}`` and, when there were any, one log line."""
        if not cut:
            return
        self.metrics.tls_connections_cut.labels(listener).inc(cut)
        log.warning(
            "TLS reload of %s: %d open connection(s) closed: the revocation lists put in force revoke their "
            "client certificate",
            listener,
            cut,
            extra={"section": listener, "connections_cut": cut},
        )

    async def _put_in_force(self, p: PreparedSection) -> tuple[str | None, int | None]:
        """Give the new context of section ``p.name`` to what uses it: why not (``None``: done), and how
        many open connections of revoked clients a listener that verifies clients closed (else ``None``)."""
        assert p.context is not None
        grace = self.config.server.shutdown_timeout
        if p.name == "server":
            if self.ingress_pool is not None:
                counts = await self.ingress_pool.reload_tls(p.digest)
                cut = counts["cut"] if p.resumed is not None else None  # (a listener with client_ca_file)
                if counts["failed"]:
                    why = "; ".join(f"pid {pid}: {err}" for pid, err in sorted(counts["errors"].items()))
                    return f"{counts['failed']} ingress worker(s) kept the previous material ({why})", cut
                return None, cut
            return None, _swap_listener(self.ingress_tls, self._runner, p, grace)
        if p.name == "admin":
            return None, _swap_listener(self.admin_tls, self._admin_runner, p, grace)
        if p.name == "mqtt":
            if self.mqtt is not None:
                self.mqtt.use_tls_context(p.context)
            return None, None
        destination = p.name.removeprefix("destination:")
        if self.sender_process is not None:
            answer = await self.sender_process.reload_tls({destination: p.digest})
            return answer.get(destination, "the sender process did not answer"), None
        sender = self._http_senders.get(destination)
        if sender is not None:
            await sender.use_context(p.context)
        return None, None

    def _read_admin_token(self) -> tuple[str | None, str | None]:
        """In a worker thread: the token file read again, or why it cannot be used."""
        try:
            return read_admin_token(self.config.admin, self._base_dir), None
        except ConfigError as exc:
            return None, "; ".join(exc.problems)

    def _apply_admin_token(self, token: str | None, problem: str | None) -> dict[str, Any]:
        """A token file that cannot be used keeps the token in force; a new one replaces it at once."""
        holder = self.admin_token
        assert holder is not None
        if problem is not None or token is None:
            problem = problem or "admin.token_file: no token"
            self.transport_refused["admin_token"] = problem
            log.error(
                "admin token reload refused; the token in force stays "
                '(duisgw_reference_stale{source="admin_token"} = 1): %s',
                problem,
                extra={"error": problem},
            )
            return {"status": "refused", "refused": problem}
        self.transport_refused.pop("admin_token", None)
        if hmac.compare_digest(token.encode("utf-8"), holder.value.encode("utf-8")):
            return {"status": "unchanged"}
        holder.value = token
        log.info("admin token reloaded: the previous one is refused from now on")
        return {"status": "reloaded"}

    async def reload_transport_logged(self) -> dict[str, Any] | None:
        """:meth:`reload_transport` with its outcome (:func:`reload_outcome`) and one log line naming every
        part (:func:`reload_summary`), an unexpected failure logged with its traceback (the material in
        force stays): what a SIGHUP runs in ``mode = "passthrough"``."""
        try:
            report = reload_outcome(await self.reload_transport())
        except Exception as exc:
            log.exception("transport reload failed unexpectedly: %s: %s", type(exc).__name__, exc)
            return None
        level, message = reload_summary(report, "transport")
        log.log(level, "%s", message, extra={"report": json.dumps(report, sort_keys=True)})
        return report

    async def _admin_reload(self, _request: web.Request) -> web.Response:
        report = await self.reload_transport_logged()
        if report is None:
            return web.json_response({"error": "transport reload failed (see the log)"}, status=500)
        return web.json_response(report)

    async def _start_ingress_pool(self) -> None:
        """The ingress in ``server.ingress_processes`` worker processes sharing one listening socket
        (gateway.service.ingress_workers); the admin listener stays in this process."""
        cfg = self.config
        assert self.processor is not None
        classifies = hasattr(self.processor, "accept_classified")
        spec = IngressSpec(
            dataclasses.replace(
                cfg, engine={}
            ),  # the workers do not decide (and a mappingproxy does not pickle)
            classifier=self._classifier_spec if classifies else None,
            base_dir=self._base_dir,
            middlewares=self._middlewares,
        )
        self._listener = listening_socket(cfg.server)
        self.port = int(self._listener.getsockname()[1])
        self.ingress_pool = IngressPool(
            spec, cfg.server.ingress_processes, self.processor, self.rejects, self.metrics
        )
        pool = self.ingress_pool
        self.metrics.ingress_workers.set_function(lambda: pool.live)
        await pool.start(self._listener)

    async def _tick_loop(self) -> None:
        assert self.processor is not None
        failing = ""  # the last failure logged (a failure that repeats every tick is logged once)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.tick_interval)
            if self._stopping.is_set():
                return
            try:
                await self.processor.tick(datetime.now(UTC))
            except Exception as exc:
                self.metrics.tick_failures.inc()
                what = f"{type(exc).__name__}: {exc}"
                if what != failing:
                    log.exception("processor tick failed (logged again when it fails otherwise)")
                    failing = what
                continue
            if failing:
                log.info("processor tick succeeded again")
                failing = ""

    async def _readiness_problem(self) -> str | None:
        """``/readyz``'s checks beyond the transport store's own probe, together: the processor's store (when it has
        one of its own: :meth:`_engine_store_problem`) and the shared state's Redis (:meth:`_shared_state_problem`);
        the first reason of the two, in that order."""
        reasons = await asyncio.gather(self._engine_store_problem(), self._shared_state_problem())
        return next((r for r in reasons if r is not None), None)

    async def _engine_store_problem(self) -> str | None:
        """The processor's probe of a store of its own (``store_problem``: the engine database's one-page write on
        the engine thread), awaited :data:`READYZ_PROBE_WAIT` at most; not answered by then, the last outcome
        (:meth:`_store_busy`)."""
        store_problem = getattr(self.processor, "store_problem", None)
        if store_problem is None:
            return None
        try:
            # (its own timeout past the wait: an answer within the wait is the probe's, a timeout the wait's)
            reason = await asyncio.wait_for(store_problem(timeout=READYZ_PROBE_WAIT + 1.0), READYZ_PROBE_WAIT)
        except TimeoutError:
            return None if self._store_busy() else "store_unavailable"
        return cast("str | None", reason)

    def _store_busy(self) -> bool:
        """Whether a store probe not answered within :data:`READYZ_PROBE_WAIT` may be answered ``ready`` from the
        last outcome: the engine thread (the transport store's thread, where both probes wait) runs a job that began
        less than ``[store] busy_timeout`` + :data:`READYZ_JOB_GRACE` seconds ago — twice ``busy_timeout`` when the
        decision state has a database of its own (``state_in_store = false``, the Redis backend), where a batch opens
        a write transaction in each database in turn, each waiting up to ``busy_timeout`` for another process's
        lock — no database refuses (no transaction failed for a store reason since it last recorded:
        ``duisgw_store_unavailable`` 0), and no database file was deleted or replaced. A job that waits for another
        process's lock fails at ``busy_timeout`` and refuses from then on; one that holds the thread longer than
        its lock waits can last is stuck, not busy."""
        ran = self.store.busy_for()
        if ran is None:
            return False
        engine_store = getattr(getattr(self.processor, "durable", None), "store", None)
        engine_files = getattr(engine_store, "files", None)
        # (one database: the decision state's store watches the transport store's files, through the same watch)
        waits = 2 if isinstance(engine_files, StoreFiles) and engine_files is not self.store.files else 1
        if ran >= waits * self.config.store.busy_timeout + READYZ_JOB_GRACE:
            return False
        health = getattr(self.processor, "store_health", None)
        if not isinstance(health, StoreHealth) or health.refusing_now():
            return False
        for files in (self.store.files, engine_files):
            if isinstance(files, StoreFiles) and files.changed() is not None:
                return False
        return True

    async def _shared_state_problem(self) -> str | None:
        """``shared_state_unavailable`` when the shared state's Redis does not answer a PING within
        :data:`SHARED_STATE_PROBE_TIMEOUT` (every decision and hold release would fail meanwhile), else
        ``None`` (also without shared state); sets ``duisgw_shared_state_up``."""
        if self._shared_probe is None:
            return None
        try:
            ok = bool(await asyncio.wait_for(self._shared_probe.ping(), SHARED_STATE_PROBE_TIMEOUT))
        except (aioredis.RedisError, OSError, TimeoutError):
            ok = False
        self.metrics.shared_state_up.set(1.0 if ok else 0.0)
        return None if ok else "shared_state_unavailable"

    async def _probe_loop(self) -> None:
        """Keep ``duisgw_shared_state_up`` current between readiness probes."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SHARED_STATE_PROBE_INTERVAL)
            if not self._stopping.is_set():
                await self._shared_state_problem()

    async def stop(self) -> None:
        """Drain and stop everything, in order (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._draining = True
        if self.ingress is not None:
            self.ingress.draining = True
        log.info("draining")
        if self.ingress_pool is not None:  # the workers stop listening and finish their requests
            await self.ingress_pool.stop()
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()  # stop listening, wait for in-flight requests
        if self._tick_task is not None:
            await self._tick_task
        if self._probe_task is not None:
            await self._probe_task
        if self._shared_probe is not None:
            with contextlib.suppress(Exception):
                await cast(Any, self._shared_probe).aclose()
        if self.delivery is not None:  # drains the http and mqtt queues (bounded by drain_timeout) ...
            await self.delivery.stop()
        if self.mqtt is not None:  # ... while the broker link is still up
            await self.mqtt.stop()
        if self.sender_process is not None:
            await self.sender_process.stop()
        closer = getattr(self.processor, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                log.exception("processor close failed")
        await self.store.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        self.admin_refusal_log.flush()  # refusals left out of the log since the last logged line
        log.info("stopped")

    async def serve_forever(self, stop: asyncio.Event | None = None) -> None:
        """Start, run until SIGTERM/SIGINT (or ``stop`` is set), then drain and stop."""
        stop = stop if stop is not None else asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)


async def run(
    config: ServiceConfig,
    processor_factory: ProcessorFactory | None = None,
    *,
    stop: asyncio.Event | None = None,
    base_dir: Path | None = None,
) -> None:
    """Run the service until SIGTERM/SIGINT (what ``duisgw serve`` calls).

    ``processor_factory`` defaults to :meth:`PassThroughProcessor.create`; the pipeline passes its own
    (``mode = "pipeline"``).
    """
    configure_logging(config.logging)
    await Service(config, processor_factory, base_dir=base_dir).serve_forever(stop)
