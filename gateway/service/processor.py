"""The decision pipeline behind the transport: :class:`GatewayProcessor` (``mode = "pipeline"``).

Theory of operation
===================

``accept(lane, user, body, received_at)`` runs four steps and answers only after the last one:

1. **Classify** (CPU: safe parse, XML signature, DUIS decode, GBCS device signature) with the pure
   :class:`gateway.pipeline.Classifier`, on the event loop, on ``classify_threads`` threads, or in
   ``classify_processes`` worker processes (:class:`gateway.service.workers.ClassifyPool`: the GIL no
   longer caps it; pipes watched by the event loop, micro-batched, a dead worker replaced and its
   messages retried alone; see that module). Results come back without the parsed model (a
   response's own time, which ``clock = "message"`` needs, travels in ``Classified.doc_time``).
   Unusable input is kept in the rejects table and answered 400 with its named reason.
2. **Decide and commit**: the message's events (with its ORIGINAL bytes) join a queue served by ONE
   engine thread, the only user of the engine's SQLite connection. Every request queued while the
   previous transaction was committing goes into the same
   :meth:`gateway.store.durable.DurableEngine.submit_many` call: one transaction, one fsync (group
   commit). The engine thread takes its batch when it starts, not when the event loop queued it: the
   loop keeps one *pull* waiting in the thread's queue whenever work is queued (:meth:`_arm`), so the
   thread goes from one commit to the next without a round trip through the event loop, and the loop
   answers each pull's requests when it sees the pull done (:meth:`_pulled`). When a batch fails as a
   whole, its requests are retried one by one so that one bad message cannot fail its neighbours.
3. **Route and enqueue**, in the same engine-thread call, right after the engine commit: in ONE
   transaction of the outbox database for the whole batch (the engine thread IS the transport
   store's one thread, so this uses the store's own connection, in turn with the store's batches:
   no second writer, no lock wait), each message's destination is
   recorded in the ``routes`` table (``message_id → destination``), and every *forward* decision the
   commit produced — this message's, or a held message released by it (e.g. an 8F66 arriving) —
   becomes an outbox row carrying the original bytes unchanged (idempotent on ``(queue,
   message_id)``). A released message's destination is read from ``routes``, so holds released after
   a restart and operator releases go to the DNO the message was addressed to. Forwards released by
   the clock (``tick``) and by the redelivery scan are enqueued the same way through the transport
   store's own writer. A request whose outbox transaction fails is answered 503; its decision is
   durable and its forwards reach the outbox through the DSP's re-delivery or the scan below.
4. **Answer**: 200 decided (forward or suppress), 202 held, 204 observation lane; the decision and
   the message id are in the ``X-DUISGW-Decision`` / ``X-DUISGW-Message-Id`` headers. A DCC
   re-delivery gets the original decision (engine idempotency) and nothing new is delivered (a
   forward is re-enqueued, which the outbox ignores while its row exists: this also repairs a crash
   between steps 2 and 3).

One database (``[pipeline] state_in_store``, the default with the SQLite backend): the engine's
store borrows the transport store's connection, so steps 2 and 3 are ONE transaction
(:meth:`GatewayProcessor._decide_and_route`): the batch's decisions, routes, outbox rows and the
forwards' in-the-outbox flags commit together (one fsync) or not at all. A failed batch is retried job
by job; a job that fails alone is answered 503 with nothing of it durable, and the DSP re-delivers it.

Two databases (``state_in_store = false``, and the Redis backend): the engine commits first, the outbox
second (one hand-off from the event loop covers both). The
engine store keeps a per-message *delivered-to-outbox* flag; it is set (batched) after the outbox
commit. At start-up, and every ``_SCAN_EVERY`` seconds (operator releases made by ``duisgw audit
release`` in another process land there too), every forward decision not flagged is enqueued again
(idempotent) and flagged. Messages between steps 2 and 3 in this process are excluded from the scan
(``_inflight``), so a scan never races the accept path. A forward decision without a route (only
possible when the process died between steps 2 and 3 and the DSP never re-delivered) goes to the
only configured destination, or waits (logged) when there are several.

Operator releases (``duisgw audit release``, another process, either layout) record the release, put the
message in the outbox and flag it delivered themselves; each scan first *takes in* the releases recorded
since (:meth:`GatewayProcessor._take_in_releases`): the engine drops their suppressed-outage records and
the ``operator_releases`` rows are flagged taken in, in one transaction, and only then is each counted in
``duisgw_messages`` — once, ever, whatever restarts and scans follow. A batch holding a restoration alert
takes them in first, in the engine thread (:meth:`GatewayProcessor._take_in_before_pairing`): a
restoration arriving between the release and the next scan is not paired with the released AD1. A release
that commits after that take-in and before the batch's commit is caught by the batch's own write
transaction (``BEGIN IMMEDIATE``, either layout: the releases and the decisions share the decision
database): a restoration it paired with an AD1 whose release is not taken in yet is refused there
(:class:`gateway.engine.errors.PairedWithReleasedOutage`, nothing committed, the engine rebuilt from the
store), and the batch's failure path decides each job again, once, after taking the releases in
(:meth:`GatewayProcessor._isolating`). A release committing after that transaction finds the pairing in the
decision log and releases the restoration with its AD1 (``duisgw audit release``).

Shared state (``[state] backend = "redis"``, docs/SCALE-OUT.md): the engine thread drives a
:class:`gateway.store.shared.SharedEngine` instead — decisions against engine state shared by every
instance in Redis, this instance's messages, audit and hand-off flags in its own SQLite store — and
every tick reaches it (another instance may have moved the shared clock past a hold).

Clock (``clock`` in the config): ``wall`` — each message's arrival is the time it was received and
``tick`` advances the engine clock to now; ``message`` — the arrival is the ``X-DUISGW-Arrival``
header, else the message's own time (``ResponseDateTime``; a request takes the engine clock), and
between messages the engine clock advances at wall speed from the last arrival. The engine clock never
goes back, so a header is bad input (:class:`BadArrivalHeader`: kept in the rejects table and answered
400 by the ingress) unless it is plausibly this message's arrival: an ISO-8601 date-time, no more than
``arrival_max_skew`` before the message's own time nor ``arrival_max_delay`` after it (a message with no
own time: within ``arrival_max_delay`` of the engine clock), and far enough from the calendar's ends for
the engine's arithmetic (:func:`arrival_problem`, :func:`calendar_problem`). Without the header the
message's own time is its arrival, bounded the same way (:class:`ImplausibleMessageTime`, a kept 400):
no more than ``arrival_max_delay`` ahead of the engine clock once the first message has set it, and far
enough from the calendar's ends (:func:`own_time_problem`); an own time behind the clock is a late
message, decided as one (the clock does not go back). Hold deadlines are engine state, so held
messages survive a restart and are released by the first tick past their deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from aiohttp import web

from gateway.engine.effects import Action, Decision, Duplicate, Effect, Observed, Reason
from gateway.engine.errors import PairedWithReleasedOutage, ReleasedMeanwhile
from gateway.engine.events import (
    ActivationRequested,
    Event,
    MessageEvent,
    OtherInline,
    PowerOutage,
    SupplyRestored,
    Tick,
)
from gateway.errors import DuisgwError
from gateway.gbcs_keys import IndexedKeyStore
from gateway.pipeline import KEY_INDEX_CORRUPT, Classified, Classifier, ClassifierSpec, LaneName, message_time
from gateway.service.api import AcceptResult, Delivery, Lane, StoreUnavailable
from gateway.service.metrics import Metrics
from gateway.service.outbox import PURGE_CHUNK, Outbox, RejectStore, SqliteStore, purge_kept
from gateway.service.store_health import StoreHealth, watch_store_files
from gateway.service.workers import ClassifyFailed, ClassifyPool, ClassifyUnavailable, ClassifyWorkerDied
from gateway.store.durable import DurableEngine
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import ROUTES_SCHEMA, StoreFiles, StoreObserver, unavailable
from gateway.store.sqlite import SqliteStore as EngineStore
from gbcs.eui import format_eui

__all__ = [
    "ARRIVAL_HEADER",
    "ROUTES_SCHEMA",
    "BadArrivalHeader",
    "ClassifyFailed",
    "ClassifyPool",
    "ClassifyUnavailable",
    "ClassifyWorkerDied",
    "GatewayProcessor",
    "ImplausibleMessageTime",
    "arrival_context",
    "arrival_middleware",
    "arrival_problem",
    "calendar_problem",
    "current_arrival",
    "engine_clock",
    "held_count",
    "observation_reason",
    "own_time_problem",
    "parse_arrival",
]

T = TypeVar("T")
log = logging.getLogger("duisgw.pipeline")

ARRIVAL_HEADER = "X-DUISGW-Arrival"
_arrival: ContextVar[datetime | BadArrivalHeader | None] = ContextVar("duisgw_arrival", default=None)

#: messages accepted on the observation lane that carry nothing the engine uses (not evidence, or evidence
#: that failed a check: ``detail`` lists the problems), kept with their ORIGINAL bytes before the 204
OBSERVATIONS_SCHEMA = """CREATE TABLE IF NOT EXISTS observations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    lane TEXT NOT NULL,
    user TEXT,
    kind TEXT NOT NULL,
    message_id TEXT,
    reason TEXT NOT NULL,
    detail TEXT,
    body BLOB NOT NULL
)"""

_SCAN_EVERY = 5.0  # seconds between scans for forward decisions not yet in the outbox
_PURGE_EVERY = 60.0  # seconds between purges of observations and rejects past their retention
_Kept = Literal["observations", "rejects"]  # the tables of kept bytes with a retention (``_purge_kept``)
#: the reason an operator release is recorded with (``duisgw audit release``: SqliteStore.release_suppressed)
OPERATOR_RELEASE = "operator-release"
_INLINE = (PowerOutage, SupplyRestored, OtherInline)


class BadArrivalHeader(DuisgwError):
    """``clock = "message"``: the ``X-DUISGW-Arrival`` header is not an ISO-8601 date-time (raised by
    :func:`current_arrival` when the processor asks for the arrival), or not plausibly the message's
    arrival (raised by the processor: :func:`arrival_problem`, :func:`calendar_problem`). The ingress keeps
    the bytes in the rejects table and answers 400 with this code, like any other bad input."""

    code = "bad_arrival_header"


class ImplausibleMessageTime(DuisgwError):
    """``clock = "message"``, a message without an ``X-DUISGW-Arrival`` header: its own time
    (``ResponseDateTime``, which would be its arrival and move the engine clock for good) is more than
    ``arrival_max_delay`` ahead of the engine clock, or too near the calendar's ends for the engine to
    compute with (:func:`own_time_problem`). Its own code, not ``bad_arrival_header``: there is no header
    to look for. The ingress keeps the bytes in the rejects table and answers 400, like any bad input."""

    code = "implausible_message_time"


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def _show(value: datetime) -> str:
    """A date-time for a message: in UTC when it has a UTC form, else as given."""
    try:
        return _iso(value)
    except OverflowError:
        return value.isoformat()


def arrival_problem(
    arrival: datetime,
    own_time: datetime | None,
    clock: datetime | None,
    *,
    max_skew: timedelta,
    max_delay: timedelta,
) -> str | None:
    """Why ``arrival`` (an ``X-DUISGW-Arrival`` header, ``clock = "message"``) is not plausibly the arrival
    of a message whose own time (``ResponseDateTime``) is ``own_time``, with the engine clock at
    ``clock``; ``None`` when it is. A message arrives after it was sent (give or take ``max_skew`` of
    disagreement between the clocks) and at most ``max_delay`` later; a message without an own time (a
    request) at most ``max_delay`` from the engine clock, either way (none set yet: no bound but
    :func:`calendar_problem`'s). Differences only, never sums: nothing here can overflow."""
    if own_time is not None:
        if own_time - arrival > max_skew:
            return (f"{ARRIVAL_HEADER} {_show(arrival)} is {own_time - arrival} before the message's own time "
                    f"{_show(own_time)} (arrival_max_skew: {max_skew})")  # fmt: skip
        if arrival - own_time > max_delay:
            return (f"{ARRIVAL_HEADER} {_show(arrival)} is {arrival - own_time} after the message's own time "
                    f"{_show(own_time)} (arrival_max_delay: {max_delay})")  # fmt: skip
    elif clock is not None and abs(arrival - clock) > max_delay:
        side = "after" if arrival > clock else "before"
        return (f"{ARRIVAL_HEADER} {_show(arrival)} is {abs(arrival - clock)} {side} the engine clock "
                f"{_show(clock)}, and the message has no own time (arrival_max_delay: {max_delay})")  # fmt: skip
    return None


def own_time_problem(
    own_time: datetime,
    clock: datetime | None,
    *,
    max_delay: timedelta,
    margin: timedelta,
) -> str | None:
    """Why a message's own time (``ResponseDateTime``) cannot be its arrival (``clock = "message"``, no
    ``X-DUISGW-Arrival`` header) with the engine clock at ``clock``; ``None`` when it can. Ahead of the
    clock by more than ``max_delay`` (none set yet: no bound there — the first message sets it), or too
    near the calendar's ends for the engine (:func:`calendar_problem` with ``margin``). Behind the clock
    needs no bound: the clock does not go back, and the message is simply late."""
    if clock is not None and own_time - clock > max_delay:
        return (f"own time {_show(own_time)} is {own_time - clock} ahead of the engine clock {_show(clock)} "
                f"(arrival_max_delay: {max_delay}); send {ARRIVAL_HEADER} or POST /admin/tick first")  # fmt: skip
    return calendar_problem(own_time, margin, what="the message's own time")


def calendar_problem(arrival: datetime, margin: timedelta, *, what: str = ARRIVAL_HEADER) -> str | None:
    """Why ``arrival`` is too close to either end of the calendar for the engine to compute with (it adds
    and subtracts up to ``margin``: its retention, an arrival bound), or ``None``; ``what`` names where
    the time came from."""
    try:
        if _EARLIEST + margin <= arrival <= _LATEST - margin:
            return None
    except OverflowError:
        pass
    return f"{what} {_show(arrival)} cannot be a message's arrival (the engine computes {margin} either side)"


def parse_arrival(text: str) -> datetime:
    """An ISO-8601 date-time (``Z`` accepted; without an offset it is read as UTC)."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def current_arrival() -> datetime | None:
    """The ``X-DUISGW-Arrival`` time of the request being handled (``None`` without the header).

    Raises :class:`BadArrivalHeader` when the request carried the header and it is not a date-time."""
    value = _arrival.get()
    if isinstance(value, BadArrivalHeader):
        raise BadArrivalHeader(value.message)
    return value


@contextlib.contextmanager
def arrival_context(when: datetime | None) -> Iterator[None]:
    """Handle a request with this ``X-DUISGW-Arrival`` time (what :func:`arrival_middleware` sets; an
    ingress worker process passes it along with the message)."""
    token = _arrival.set(when)
    try:
        yield
    finally:
        _arrival.reset(token)


@web.middleware
async def arrival_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``clock = "message"``: take the event-time arrival from the ``X-DUISGW-Arrival`` header.

    A header that is not a date-time, or more than one of them, does not answer here: the handler runs as for
    any request (body cap, content type, destination) and the processor's :func:`current_arrival` raises
    :class:`BadArrivalHeader`, which the ingress turns into a kept, counted 400."""
    values = request.headers.getall(ARRIVAL_HEADER, ())
    if not values:
        return await handler(request)
    raw = values[0]
    when: datetime | BadArrivalHeader
    if len(values) > 1:  # which one is the arrival? (the first used to win silently)
        when = BadArrivalHeader(f"{len(values)} {ARRIVAL_HEADER} headers: one arrival is expected")
    else:
        try:
            when = parse_arrival(raw)
        except ValueError:
            when = BadArrivalHeader(f"{ARRIVAL_HEADER} {raw[:60]!r} is not an ISO-8601 date-time")
    token = _arrival.set(when)
    try:
        return await handler(request)
    finally:
        _arrival.reset(token)


# ------------------------------------------------------------------------------------------ engine queue


@dataclass(frozen=True, slots=True)
class _Route:
    """What the engine thread needs to route one request's forwards: the inline message, the DNO it was
    addressed to, its kind, its original bytes and when it was received."""

    inline_id: str | None
    user: str | None
    kind: str
    body: bytes
    received_at: str


class _Batch:
    """The engine jobs of several requests queued together (one ingress worker frame,
    :meth:`GatewayProcessor.accept_classified_many`): one asyncio future for all of them, done when every
    job has its outcome (the jobs may be decided in more than one engine batch)."""

    __slots__ = ("future", "left", "outcomes")

    def __init__(self, future: asyncio.Future[None], size: int) -> None:
        self.future = future
        self.left = 0
        self.outcomes: list[_Outcome | BaseException | None] = [None] * size

    def settle(self, index: int, outcome: _Outcome | BaseException) -> None:
        self.outcomes[index] = outcome
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(None)


class _Slot:
    """One job's place in a :class:`_Batch`: what :meth:`GatewayProcessor._answer` answers, as it answers
    a single request's future. ``done()`` once answered, or once the batch's caller went away (its future
    cancelled: the answer then releases the in-flight marks itself)."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self.batch = batch
        self.index = index

    def done(self) -> bool:
        return self.batch.future.done() or self.batch.outcomes[self.index] is not None

    def set_result(self, outcome: _Outcome) -> None:
        self.batch.settle(self.index, outcome)

    def set_exception(self, exc: BaseException) -> None:
        self.batch.settle(self.index, exc)


@dataclass(slots=True)
class _Submit:
    items: list[tuple[Event, bytes | None]]
    future: asyncio.Future[_Outcome] | _Slot
    route: _Route | None = None


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Outcome:
    """One request's share of a committed batch: its effects and the bytes of forwarded messages."""

    effects: list[Effect]
    bodies: dict[str, bytes] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)  # forwards now in the outbox
    lost: list[str] = field(default_factory=list)  # forwards without a known destination
    touched: set[str] = field(default_factory=set)  # outbox queues that got new rows
    #: the DUIS kind (``DCCAlertMessage.AD1``) of each held message this commit released, as the ingress
    #: labelled it when it was accepted (:meth:`GatewayProcessor._name_released`)
    kinds: dict[str, str] = field(default_factory=dict)

    def kind_of(self, d: Decision) -> str:
        """The DUIS kind of the decided message (the engine's event kind when it is not known here)."""
        return self.kinds.get(d.message_id, d.event_kind)


@dataclass(frozen=True, slots=True)
class _Forward:
    message_id: str
    body: bytes
    metadata: dict[str, str]
    destination: str | None  # None: look it up in ``routes``


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class GatewayProcessor:
    """Classifier + durable engine + outbox: the :class:`gateway.service.api.Processor` of the gateway."""

    def __init__(
        self,
        *,
        classifier: Classifier,
        durable_factory: Callable[[], DurableEngine | SharedEngine],
        store: SqliteStore,
        outbox: Outbox,
        rejects: RejectStore,
        metrics: Metrics,
        destinations: Sequence[str],
        clock: str = "wall",
        classify_threads: int = 0,
        classify_processes: int = 0,
        classifier_spec: ClassifierSpec | None = None,
        max_batch: int = 256,
        log_forwards: bool = False,
        arrival_max_skew: timedelta = timedelta(minutes=5),
        arrival_max_delay: timedelta = timedelta(days=7),
        on_key_index_corrupt: Callable[[], None] | None = None,
        observations_retention: timedelta | None = None,
        rejects_retention: timedelta | None = None,
    ) -> None:
        if clock not in ("wall", "message"):
            raise ValueError("clock must be 'wall' or 'message'")
        if classify_processes > 0 and classifier_spec is None:
            raise ValueError("classify_processes needs a classifier_spec (what each worker builds)")
        self.classifier = classifier
        self._durable_factory = durable_factory
        self.durable: DurableEngine | SharedEngine | None = None
        self.store = store
        self.outbox = outbox
        self.rejects = rejects
        self.metrics = metrics
        self.destinations = tuple(destinations)
        self.clock = clock
        #: ``clock = "message"``: how far an X-DUISGW-Arrival header may be from the message's own time
        #: (:func:`arrival_problem`)
        self.arrival_max_skew = arrival_max_skew
        self.arrival_max_delay = arrival_max_delay
        self.max_batch = max_batch
        #: told (after the count) each time a process finds the GBCS key index corrupt: the gateway rebuilds it
        self._on_key_index_corrupt = on_key_index_corrupt
        #: how long ``observations`` rows are kept (None: for ever); purged from :meth:`tick`
        self.observations_retention = observations_retention
        #: how long ``rejects`` rows are kept (None: for ever); purged from :meth:`tick`
        self.rejects_retention = rejects_retention
        self._last_purge: float | None = None
        self._forward_level = logging.INFO if log_forwards else logging.DEBUG
        # the engine runs on the transport store's one thread: the outbox rows of a batch are written
        # right after its engine commit on the store's own connection, with no hand-off and no lock wait
        self._engine_exec = store.executor
        self._classify_exec = (
            ThreadPoolExecutor(max_workers=classify_threads, thread_name_prefix="duisgw-classify")
            if classify_threads > 0
            else None
        )
        keystore = classifier.gbcs.keystore
        if isinstance(keystore, IndexedKeyStore):  # loaded before the metrics: its finding is hooked here
            keystore.watch_corrupt(lambda _why: self.key_index_corrupt())
        self.classify_pool: ClassifyPool | None = None
        if classify_processes > 0:
            assert classifier_spec is not None
            events = metrics.classify_worker_events

            def on_event(name: str) -> None:
                if name == KEY_INDEX_CORRUPT:  # found by a worker in its own mapping of the index
                    self.key_index_corrupt()
                else:
                    events.labels(name).inc()

            self.classify_pool = ClassifyPool(
                classifier_spec, classify_processes, max_batch=max_batch, on_event=on_event
            )
        self._queue: list[_Submit | _Call] = []
        self._armed = False  # a pull is waiting in the engine thread's queue (see _arm)
        self._pulls: set[asyncio.Future[Any]] = set()
        self._idle: asyncio.Future[None] | None = None
        self._started = False
        self._closed = False
        self._inflight: dict[str, int] = {}
        # operator releases the engine thread took in before a batch (appended there, counted on the loop)
        self._early_taken_in: collections.deque[tuple[str, str]] = collections.deque()
        self._to_mark: set[str] = set()
        self._unroutable_logged: set[str] = set()
        self._anchor: tuple[datetime, float] | None = None
        self._last_scan = 0.0
        self._held_count = 0
        self._shared_counts = (0, 0)  # the shared state's running totals counted so far (_count_shared)
        self._shared_lost = 0  # the shared state's losses counted so far (_count_shared)
        self._shared_partial = 0  # AD1s forwarded on partial learned links counted so far (_count_shared)
        self._shared_labelled: dict[tuple[str, str], int] = {}  # (its clock refusals, unreadable records)
        self.batches = 0  # engine transactions (observability, benchmarks)
        #: decisions, routes and outbox rows in one transaction (the decision state is in the transport
        #: store's database: ``[pipeline] state_in_store``); set by :meth:`start`
        self.one_transaction = False
        #: the store's health in the metrics (``duisgw_store_…``); set by :meth:`start`
        self.store_health: StoreHealth | None = None
        #: ``/readyz``'s probe of the decision state's own database in progress (:meth:`store_problem`)
        self._store_probe: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the classify workers (when configured; returns once each has built its classifier),
        create the routes table, restore the engine (in its thread), re-enqueue what is pending."""
        if self.classify_pool is not None:
            await self.classify_pool.start()
        await self.store.write(lambda c: (c.execute(ROUTES_SCHEMA), c.execute(OBSERVATIONS_SCHEMA)))
        loop = asyncio.get_running_loop()
        self.durable = await loop.run_in_executor(self._engine_exec, self._durable_factory)
        engine_store = getattr(self.durable, "store", None)
        self.one_transaction = (
            isinstance(self.durable, DurableEngine)
            and isinstance(engine_store, EngineStore)
            and engine_store.uses(self.store.thread_connection())
        )
        self._watch_store()
        self._started = True
        recovered = self.durable.recovered
        if recovered:
            log.warning("decided messages accepted before a crash", extra={"count": len(recovered)})
        clock = engine_clock(self.durable)
        if clock is not None:
            self._anchor = (clock, time.monotonic())
        await self.redeliver()
        durable = self.durable
        self._held_count = await self.call(lambda: held_count(durable))  # holds restored from the store
        self._update_held()

    def _watch_store(self) -> None:
        """The store's health in the metrics (``duisgw_store_…``): the decision state's store and the transport
        store tell their commits and failures, each as its writer (:class:`StoreHealth`), the decision state's
        store its checkpoint rounds, the engine its rebuilds, and each scrape reads the database files' sizes and
        whether one was deleted or replaced (:func:`watch_store_files`)."""
        health = self.store_health = StoreHealth(self.metrics, one_database=self.one_transaction)
        durable = self.durable
        engine_store = getattr(durable, "store", None)
        self.store.observer = health.observer("transport")
        store_writers = ["transport"]
        watched: list[tuple[str, Path, StoreFiles | None, list[str]]] = [
            ("store", Path(self.store.path), self.store.files, store_writers)
        ]
        if isinstance(engine_store, EngineStore):
            engine_store.observer = health.observer("decisions")
            if self.one_transaction:
                store_writers.append("decisions")
            else:
                watched.append(("engine", Path(engine_store.path), engine_store.files, ["decisions"]))
        if isinstance(durable, DurableEngine):
            durable.on_rebuild = self.metrics.store_engine_rebuild_seconds.observe
        watch_store_files(self.metrics, health, watched)

    async def store_problem(self, timeout: float = 2.0) -> str | None:
        """For ``/readyz``: ``store_unavailable`` when the decision state's own database (``[pipeline]
        state_in_store = false``: ``state_dir/engine.sqlite3``) cannot record now — a one-page write
        (:meth:`gateway.store.sqlite.SqliteStore.writable`) on the engine thread not committed within ``timeout``
        seconds — else ``None``. The transport store's own probe covers the one database of ``state_in_store =
        true``; without this one a gateway whose engine database refused every decision (read-only, full, locked
        by another process) said ``ready``.

        The write goes to the engine thread's executor, not into the queue of decisions: it waits for the work the
        thread has in hand (a pull, and the next one already waiting), as the transport store's probe does — queued
        behind every decision waiting, it answered ``store_unavailable`` under a backlog of a few seconds while the
        database recorded. Concurrent calls share the write in progress (each queued its own: with the database
        locked, each waited ``busy_timeout`` on the engine thread in turn, each counted as a failure)."""
        store = getattr(self.durable, "store", None)
        if self.one_transaction or not isinstance(store, EngineStore):
            return None
        probe = self._store_probe
        if probe is None or probe.done():
            if self._closed or not self._started:
                return "store_unavailable"
            try:
                probe = asyncio.get_running_loop().run_in_executor(self._engine_exec, self._probe_engine_store, store)
            except RuntimeError:  # (the executor shut down: closing)
                return "store_unavailable"
            probe.add_done_callback(_retrieved)
            self._store_probe = probe
        try:
            await asyncio.wait_for(asyncio.shield(probe), timeout)
        except Exception:  # (its failure is told to the store's observer: duisgw_store_commit_failures_total)
            return "store_unavailable"
        return None

    def _probe_engine_store(self, store: EngineStore) -> None:
        """On the engine thread, between two of its jobs: :meth:`store_problem`'s one-page write (upkeep: its
        failure ends with any commit in that database)."""
        with self._upkeep():
            store.writable()

    async def aclose(self) -> None:
        """Finish queued work, flag what reached the outbox, close the engine store, stop the classify
        workers (after the messages they were given)."""
        if self._closed:
            return
        if self.classify_pool is not None:
            await self.classify_pool.aclose()
        with contextlib.suppress(StoreUnavailable, RuntimeError):
            await self._mark_delivered()
        self._closed = True
        await self._drain()
        durable = self.durable
        if durable is not None:
            close = durable.close if isinstance(durable, SharedEngine) else durable.store.close
            await asyncio.get_running_loop().run_in_executor(self._engine_exec, close)
        # (the engine's thread is the transport store's: the store shuts it down when it closes)
        if self._classify_exec is not None:
            self._classify_exec.shutdown(wait=True)

    # ------------------------------------------------------------------ the engine thread

    async def _engine(self, items: list[tuple[Event, bytes | None]], route: _Route | None = None) -> _Outcome:
        if self._closed or not self._started:
            raise StoreUnavailable("the decision engine is closed")
        fut: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Submit(items, fut, route))
        self._arm()
        return await fut

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in the engine thread, in order with the decisions queued before it."""
        if self._closed or not self._started:
            raise StoreUnavailable("the decision engine is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(fn, fut))
        self._arm()
        return await fut

    def _arm(self) -> None:
        """On the event loop: make sure one pull is waiting in the engine thread's queue while work is
        queued here. The pull takes its batch when it STARTS (:meth:`_pull`), so while one batch
        commits, the next pull waits behind it with whatever arrives meanwhile, and the engine thread
        goes from one batch to the next without a round trip through the event loop."""
        if self._armed or not self._queue:
            return
        self._armed = True
        pull = asyncio.wrap_future(self._engine_exec.submit(self._pull))
        self._pulls.add(pull)
        pull.add_done_callback(self._pulled)

    def _pull(self) -> tuple[_Call, bool, Any] | tuple[list[_Submit], list[_Outcome | BaseException]] | None:
        """In the engine thread: take the head of the queue — one :class:`_Call`, or the
        :class:`_Submit` jobs up to the next call or ``max_batch`` events — and run it. Only pulls take
        from the queue and they run one at a time in this one thread, so jobs are decided in the order
        they were queued; the event loop only appends (list operations are atomic under the GIL)."""
        self._armed = False  # from here on, anything queued is either taken below or armed anew
        queue = self._queue
        if not queue:
            return None
        head = queue[0]
        if isinstance(head, _Call):
            del queue[0]
            try:
                return head, True, head.fn()
            except BaseException as exc:  # answered on the event loop, like everything a pull takes
                return head, False, exc
        batch: list[_Submit] = []
        n = 0
        while queue and isinstance(queue[0], _Submit) and (not batch or n < self.max_batch):
            job = queue.pop(0)
            assert isinstance(job, _Submit)
            batch.append(job)
            n += len(job.items)
        try:
            return batch, self._run_batch(batch)
        except BaseException as exc:  # pragma: no cover - _run_batch isolates failures itself
            failed: list[_Outcome | BaseException] = [exc] * len(batch)
            return batch, failed

    def _pulled(self, pull: asyncio.Future[Any]) -> None:
        """On the event loop, in the order the pulls ran: answer what the pull took, then re-arm if
        work is left (a pull stops at a :class:`_Call` or at ``max_batch``)."""
        self._pulls.discard(pull)
        try:
            self._answer(pull.result())
        finally:
            self._arm()
            if not self._pulls and not self._queue and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)

    def _answer(
        self, done: tuple[_Call, bool, Any] | tuple[list[_Submit], list[_Outcome | BaseException]] | None
    ) -> None:
        if done is None:
            return
        if len(done) == 3:
            head, ok, value = done
            if not head.future.done():
                if ok:
                    head.future.set_result(value)
                else:
                    head.future.set_exception(_unavailable(value))
            return
        batch, outcomes = done
        self.batches += 1
        if self._early_taken_in:
            taken = []
            while self._early_taken_in:
                taken.append(self._early_taken_in.popleft())
            self._count_taken_in(taken)
        for job, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not job.future.done():
                    job.future.set_exception(_unavailable(outcome))
                continue
            # forward decisions are "in flight" from the engine commit to the outbox commit:
            # the redelivery scan must not see them as lost (set before anyone else runs)
            for eff in outcome.effects:
                if isinstance(eff, Decision) and eff.disposition == "forward":
                    self._inflight[eff.message_id] = self._inflight.get(eff.message_id, 0) + 1
            if not job.future.done():
                job.future.set_result(outcome)
            else:  # the caller went away: release the marks it would have released
                self._done_inflight(outcome.effects)

    async def _drain(self) -> None:
        """Until everything queued for the engine thread has been run and answered."""
        while self._pulls or self._queue:
            self._arm()
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        self._idle = None

    def _run_batch(self, batch: Sequence[_Submit]) -> list[_Outcome | BaseException]:
        """In the engine thread: the batch's decisions, routes and outbox rows in ONE transaction when the
        decision state is in the transport store's database (:meth:`_decide_and_route`); otherwise its
        decisions in one engine transaction (or one per job after a failure), then its routes and outbox
        rows in one transaction of the outbox database."""
        # a batch of ticks only is upkeep (its commit rewrites the clock's row, which a full disk lets through: it
        # does not end a refusal of the requests, :class:`StoreHealth`)
        upkeep = all(isinstance(event, Tick) for job in batch for event, _raw in job.items)
        with self._upkeep() if upkeep else contextlib.nullcontext():
            if _has_restoration(batch):
                self._take_in_before_pairing()
            if self.one_transaction:
                return self._decide_and_route(batch)
            return self._route_batch(batch, self._decide_batch(batch))

    def _as_upkeep(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the engine thread as upkeep (:meth:`_upkeep`)."""
        with self._upkeep():
            return fn()

    def _upkeep(self) -> contextlib.AbstractContextManager[None]:
        """On the engine thread: what the decision state's store tells meanwhile is upkeep, not a request's
        transaction (:class:`StoreHealth`)."""
        health = self.store_health
        return contextlib.nullcontext() if health is None else health.observer("decisions").upkeep()

    def _take_in_before_pairing(self) -> None:
        """In the engine thread, before a batch with a restoration alert is decided: take in the operator
        releases recorded since the last scan (:meth:`_taken_in`), so that a restoration arriving in the
        seconds between ``duisgw audit release`` and the next scan is not paired with the outage just
        released (the DNO got that outage: it must get its end). Counted on the event loop
        (:meth:`_answer`). A failure is logged and the batch decided anyway (the scan tries again). A release
        committed after this and before the batch's commit is refused inside the batch's transaction
        (:meth:`DurableEngine.submit_many`) and the batch decided again (:meth:`_isolating`)."""
        try:
            self._early_taken_in.extend(self._taken_in())
        except Exception:
            log.exception("taking in operator releases before a restoration alert failed")

    def _decide_and_route(self, batch: Sequence[_Submit]) -> list[_Outcome | BaseException]:
        """One database: every decision of the batch, each routed request's ``routes`` row, the outbox
        rows of the forwards its commit produced and their in-the-outbox flags, in ONE transaction (one
        fsync). A failure rolls all of it back (the engine is rebuilt from the store); the jobs are then
        tried one by one, so that one bad message cannot fail its neighbours. A job that fails alone is
        answered 503 with nothing of it durable: the DSP re-delivers it."""
        durable = self.durable
        assert isinstance(durable, DurableEngine)
        return self._isolating(
            batch, lambda jobs: self._one_transaction(durable, jobs), "decision batch failed"
        )

    def _isolating(
        self,
        batch: Sequence[_Submit],
        run: Callable[[Sequence[_Submit]], list[_Outcome | BaseException]],
        failed: str,
    ) -> list[_Outcome | BaseException]:
        """``run(batch)``; when the batch fails as a whole, ``run`` each job on its own, so that one bad
        message cannot fail its neighbours (a job that fails alone gets its exception). Then the held
        count, whatever happened.

        A batch refused because a restoration was paired with an AD1 an operator released meanwhile
        (:class:`PairedWithReleasedOutage`: not a fault, nothing committed, the engine rebuilt from the store),
        or because it decided afresh the signed copy of bytes an operator released from quarantine meanwhile
        (:class:`gateway.engine.errors.CopyOfReleasedMessage`: the same), is decided again the same way, a batch
        of one too, each job after taking the releases in (:meth:`_take_in_before_pairing`; as is any retried job
        holding a restoration). Each job is retried
        once: one refused again (a second release committed during its retry) is answered with the error
        (503), nothing of it durable, and the DSP's re-delivery is decided after the next take-in."""
        durable = self.durable
        assert durable is not None
        try:
            try:
                return run(batch)
            except Exception as exc:
                stale = False
                # not a fault: an operator release committed while the batch was being decided
                if isinstance(exc, PairedWithReleasedOutage):
                    log.warning("a restoration alert was paired with an AD1 an operator released meanwhile: "
                                "nothing committed, deciding again after taking the release in",
                                extra={"outages": exc.outages, "messages": sum(len(j.items) for j in batch)})  # fmt: skip
                    self.metrics.release_pairing_refusals.labels("local").inc()
                    stale = True
                elif isinstance(exc, ReleasedMeanwhile):
                    # (CopyOfReleasedMessage: the signed copy of bytes an operator released from quarantine)
                    log.warning("a batch decided a message whose quarantined copy an operator released meanwhile: "
                                "nothing committed, deciding again after taking the release in",
                                extra={"error": str(exc), "messages": sum(len(j.items) for j in batch)})  # fmt: skip
                    stale = True
                elif isinstance(exc, StoreUnavailable) or unavailable(exc):
                    # the store cannot record anything now (a lock held past busy_timeout, the disk full, an I/O
                    # error, read-only, its files changed): each job alone would fail the same way, after
                    # busy_timeout again and an engine rebuilt again each; the whole batch is answered 503 now
                    log.error("%s: the store cannot record it: %s", failed, exc,
                              extra={"messages": sum(len(j.items) for j in batch)})  # fmt: skip
                    return [exc] * len(batch)
                else:
                    log.exception(failed, extra={"messages": sum(len(j.items) for j in batch)})
                if len(batch) == 1 and not stale:
                    return [exc]
                out: list[_Outcome | BaseException] = []
                for job in batch:  # each job once more, never again: a batch cannot loop
                    if stale or _has_restoration([job]):
                        self._take_in_before_pairing()
                    try:
                        out.extend(run([job]))
                    except Exception as one:
                        if isinstance(one, PairedWithReleasedOutage):  # refused again: answered 503
                            self.metrics.release_pairing_refusals.labels("local").inc()
                        out.append(one)
                return out
        finally:
            self._held_count = held_count(durable)  # (a stale engine: the count before the failed batch)
            if isinstance(durable, SharedEngine):
                self._count_shared(durable)

    def _count_shared(self, durable: SharedEngine) -> None:
        """In the engine thread, after a batch on shared state: what its transactions met since the last
        batch, counted (the shared state keeps running totals: release refusals, compare-and-set retries,
        host-clock times not taken, records it could not decode), and this host's clock skew against Redis."""
        state = durable.state
        refusals, conflicts = state.release_refusals, state.conflicts
        was_refusals, was_conflicts = self._shared_counts
        if refusals > was_refusals:
            self.metrics.release_pairing_refusals.labels("shared").inc(refusals - was_refusals)
        if conflicts > was_conflicts:
            self.metrics.shared_state_conflicts.inc(conflicts - was_conflicts)
        self._shared_counts = (refusals, conflicts)
        if state.lost > self._shared_lost:
            self.metrics.shared_state_lost.inc(state.lost - self._shared_lost)
            self._shared_lost = state.lost
        if state.partial_forwards > self._shared_partial:
            self.metrics.shared_partial_forwards.inc(state.partial_forwards - self._shared_partial)
            self._shared_partial = state.partial_forwards
        for name, metric, totals in (("clock", self.metrics.shared_clock_refused, state.clock_refused),
                                     ("unreadable", self.metrics.shared_unreadable, state.unreadable)):  # fmt: skip
            for label, total in totals.items():
                was = self._shared_labelled.get((name, label), 0)
                if total > was:
                    metric.labels(label).inc(total - was)
                    self._shared_labelled[(name, label)] = total
        if state.clock_skew is not None:
            self.metrics.shared_clock_skew.set(state.clock_skew)

    def _outcomes(self, batch: Sequence[_Submit], results: Sequence[list[Effect]]) -> list[_Outcome]:
        """Each job's share of a committed batch's effects (``results``: one list per item, in order)."""
        outcomes: list[_Outcome] = []
        i = 0
        for job in batch:
            k = len(job.items)
            outcomes.append(self._outcome(job, results[i : i + k]))
            i += k
        self._name_released(batch, outcomes)
        return outcomes

    def _name_released(self, batch: Sequence[_Submit], outcomes: Sequence[_Outcome]) -> None:
        """In the engine thread: the DUIS kind of every message a job's commit decided that is not the
        job's own (a held message released by evidence or by the clock), for its ``duisgw_messages``
        label and its outbox metadata — the kind the ingress counted it under when it was accepted. It
        comes from the batch itself (held and released in one batch), else from the ``routes`` table,
        which recorded it with the message's destination, else (shared state: a hold another instance
        accepted) from the route that instance shared in Redis. Only a label: when the lookup fails, or
        the route was shared without a kind (an earlier version), the engine's event kind is used."""
        wanted = {
            eff.message_id
            for job, out in zip(batch, outcomes, strict=True)
            for eff in out.effects
            if isinstance(eff, Decision) and (job.route is None or eff.message_id != job.route.inline_id)
        }
        if not wanted:
            return
        known = {
            job.route.inline_id: job.route.kind
            for job in batch
            if job.route is not None and job.route.inline_id in wanted and job.route.kind
        }
        missing = wanted - known.keys()
        if missing:
            known.update(self._route_kinds(missing))
        for out in outcomes:
            for eff in out.effects:
                if isinstance(eff, Decision) and eff.message_id in known:
                    out.kinds[eff.message_id] = known[eff.message_id]

    def _route_kinds(self, message_ids: Iterable[str]) -> dict[str, str]:
        """In the engine thread: the DUIS kind the ingress recorded with each message's route, for those
        that have one: this instance's ``routes`` table, then (shared state: a message another instance
        accepted) the route that instance shared in Redis. Only a label: a failed read is logged and
        answers nothing, never fails the caller."""
        ids = sorted(set(message_ids))
        known: dict[str, str] = {}
        try:
            conn = self.store.thread_connection()
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT message_id, kind FROM routes WHERE message_id IN ({marks})", chunk
                )
                known.update((str(mid), str(kind)) for mid, kind in rows if kind)
        except (sqlite3.Error, StoreUnavailable) as exc:
            log.warning("DUIS kinds of decided messages not read: %s", exc, extra={"messages": len(ids)})
        shared = getattr(self.durable, "route_kinds", None)
        missing = [mid for mid in ids if mid not in known]
        if shared is not None and missing:
            try:
                known.update(shared(missing))
            except Exception as exc:  # (redis-py's errors, or the store's): a label is never worth a failure
                log.warning("shared DUIS kinds of decided messages not read: %s", exc,
                            extra={"messages": len(missing)})  # fmt: skip
        return known

    def _one_transaction(
        self, durable: DurableEngine, batch: Sequence[_Submit]
    ) -> list[_Outcome | BaseException]:
        outcomes: list[_Outcome] = []
        engine_store = durable.store
        assert isinstance(engine_store, EngineStore)

        def also(conn: sqlite3.Connection, results: list[list[Effect]]) -> None:
            outcomes[:] = self._outcomes(batch, results)
            for job, out in zip(batch, outcomes, strict=True):
                if job.route is not None:
                    routes, forwards = _routing(out, job.route)
                    if routes or forwards:
                        out.done, out.lost, out.touched = self._write_routes(conn, routes, forwards)
            engine_store.flag_delivered_within([mid for out in outcomes for mid in out.done])
            for out in outcomes:
                out.done = []  # flagged in this transaction: nothing left for _mark_delivered

        durable.submit_many([item for job in batch for item in job.items], also)
        return list(outcomes)

    def _decide_batch(self, batch: Sequence[_Submit]) -> list[_Outcome | BaseException]:
        durable = self.durable
        assert durable is not None

        def decide(jobs: Sequence[_Submit]) -> list[_Outcome | BaseException]:
            items = [item for job in jobs for item in job.items]
            if isinstance(durable, SharedEngine):
                # shared state: another instance may release a hold, so its DNO destination (and the DUIS
                # kind its ingress counted it under) is written in the hold's own Redis commit
                routes = {job.route.inline_id: (job.route.user, job.route.kind) for job in jobs
                          if job.route is not None and job.route.inline_id is not None and job.route.user is not None}  # fmt: skip
                return list(self._outcomes(jobs, durable.submit_many(items, routes)))
            return list(self._outcomes(jobs, durable.submit_many(items)))

        return self._isolating(batch, decide, "engine batch failed")

    def _route_batch(
        self, batch: Sequence[_Submit], outcomes: list[_Outcome | BaseException]
    ) -> list[_Outcome | BaseException]:
        """In the engine thread, after the engine commit: every routed request's ``routes`` row and the
        outbox rows of the forwards its commit produced, for the whole batch in ONE transaction of the
        outbox database (on the transport store's connection: this is its thread). A failure here fails
        those requests with :class:`StoreUnavailable` (503): their decisions are durable, and the DSP's
        re-delivery or the redelivery scan puts the forwards in the outbox later (idempotent)."""
        durable = self.durable
        if durable is None:
            return outcomes
        lookup = getattr(durable, "routes", None)
        plans: list[tuple[int, list[tuple[str, str, str, str]], list[_Forward]]] = []
        try:
            for i, (job, out) in enumerate(zip(batch, outcomes, strict=True)):
                if job.route is None or not isinstance(out, _Outcome):
                    continue
                routes, forwards = _routing(out, job.route)
                unrouted = [f.message_id for f in forwards if f.destination is None]
                if lookup is not None and unrouted:  # holds another instance accepted: their route is shared
                    shared: dict[str, str] = lookup(unrouted)
                    forwards = [dataclasses.replace(f, destination=shared.get(f.message_id))
                                if f.destination is None else f for f in forwards]  # fmt: skip
                if routes or forwards:
                    plans.append((i, routes, forwards))
            if not plans:
                return outcomes

            def write(conn: sqlite3.Connection) -> None:
                for i, routes, forwards in plans:
                    out = outcomes[i]
                    assert isinstance(out, _Outcome)
                    out.done, out.lost, out.touched = self._write_routes(conn, routes, forwards)

            # one transaction of the outbox database, its files checked before and after it (committed into files
            # deleted or replaced meanwhile: saved, and not acknowledged), timed and its failure counted as the
            # store's other transactions are (:meth:`SqliteStore.write_here`)
            self.store.write_here(write)
        except Exception as exc:
            log.exception("routing a batch to the outbox failed", extra={"requests": len(plans)})
            # every routed request of the batch: its answer must not claim what may not be in the outbox
            failed = StoreUnavailable(f"outbox write failed: {exc}")
            return [failed if job.route is not None and isinstance(out, _Outcome) else out
                    for job, out in zip(batch, outcomes, strict=True)]  # fmt: skip
        return outcomes

    def _write_routes(
        self, conn: sqlite3.Connection, routes: list[tuple[str, str, str, str]], forwards: list[_Forward]
    ) -> tuple[list[str], list[str], set[str]]:
        """Inside an open transaction on ``conn`` (the outbox database): record ``routes`` and enqueue
        ``forwards`` (a forward without a destination goes where ``routes`` says, else to the only
        configured destination). Returns the forwards enqueued, those without a known destination, and
        the queues that got new rows."""
        if routes:
            conn.executemany(
                "INSERT OR IGNORE INTO routes (message_id, destination, received_at, kind) VALUES (?, ?, ?, ?)",
                routes,
            )
        known = self.destinations
        single = known[0] if len(known) == 1 else None
        deliveries: list[Delivery] = []
        done: list[str] = []
        lost: list[str] = []
        for f in forwards:
            dest = f.destination
            if dest is None:
                row = conn.execute(
                    "SELECT destination FROM routes WHERE message_id = ?", (f.message_id,)
                ).fetchone()
                dest = str(row[0]) if row is not None else single
            if dest is None or dest not in known:
                lost.append(f.message_id)
                continue
            deliveries.append(Delivery(f.message_id, dest, f.body, f.metadata))
            done.append(f.message_id)
        touched: set[str] = set()
        if deliveries:
            _added, touched = self.outbox.insert_rows(conn, deliveries)
        return done, lost, touched

    def _outcome(self, job: _Submit, results: Sequence[list[Effect]]) -> _Outcome:
        durable = self.durable
        assert durable is not None
        effects = [eff for per_item in results for eff in per_item]
        own = {ev.message_id: raw for ev, raw in job.items if raw is not None and not isinstance(ev, Tick)}
        bodies: dict[str, bytes] = {}
        for eff in effects:
            if isinstance(eff, Decision) and eff.disposition == "forward" and eff.message_id not in bodies:
                raw = own.get(eff.message_id)
                if raw is None:
                    raw = durable.store.original_bytes(eff.message_id)
                if raw is not None:
                    bodies[eff.message_id] = bytes(raw)
        return _Outcome(effects, bodies)

    def _done_inflight(self, effects: Iterable[Effect]) -> None:
        for eff in effects:
            if isinstance(eff, Decision) and eff.disposition == "forward":
                left = self._inflight.get(eff.message_id, 0) - 1
                if left > 0:
                    self._inflight[eff.message_id] = left
                else:
                    self._inflight.pop(eff.message_id, None)

    # ------------------------------------------------------------------ reload (SMKI store, GBCS key store)

    def key_index_corrupt(self) -> None:
        """A process (this one, a classify worker or an ingress worker) found the GBCS key index it maps
        corrupt: counted in ``duisgw_gbcs_key_index_corrupt_total`` and passed on to ``on_key_index_corrupt``
        (the gateway rebuilds the index). Called from any thread (a lookup in a classify thread finds it)."""
        self.metrics.gbcs_key_index_corrupt.inc()
        if self._on_key_index_corrupt is not None:
            self._on_key_index_corrupt()

    async def reload_classifier(self, classifier: Classifier, spec: ClassifierSpec | None) -> dict[str, int]:
        """Classify with ``classifier`` (the same one with a reloaded SMKI store and/or GBCS key store, which
        ``spec`` describes) from now on: one reference swap here (a message being classified keeps the
        classifier it started with), and the classify workers rebuild theirs from the same bytes and the same
        key index (:meth:`ClassifyPool.reload`; returns their counts, empty without workers). A new key
        store's corrupt-index finding is counted like the first one's."""
        was = self.classifier.gbcs.keystore
        self.classifier = classifier
        keystore = classifier.gbcs.keystore
        if keystore is not was and isinstance(keystore, IndexedKeyStore):
            keystore.watch_corrupt(lambda _why: self.key_index_corrupt())
        if self.classify_pool is None or spec is None:
            return {}
        return await self.classify_pool.reload(spec)

    # ------------------------------------------------------------------ accept

    async def _classify(self, lane: Lane, body: bytes, arrival: datetime) -> Classified:
        name: LaneName = "inline" if lane is Lane.INLINE else "observe"
        if self.classify_pool is not None:
            return await self.classify_pool.classify(name, body, arrival)
        if self._classify_exec is None:
            return self.classifier.classify(name, body, arrival)
        return await asyncio.get_running_loop().run_in_executor(
            self._classify_exec, self.classifier.classify, name, body, arrival
        )

    def _engine_clock(self) -> datetime | None:
        return None if self.durable is None else engine_clock(self.durable)

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        header_time = current_arrival() if self.clock == "message" else None  # BadArrivalHeader: a kept 400
        if self.clock == "wall":
            arrival = received_at
        elif header_time is not None:
            self.check_calendar(header_time)
            arrival = header_time
        else:
            arrival = self._engine_clock() or received_at
        c = await self._classify(lane, body, arrival)
        if header_time is not None:
            self._check_arrival(c)
        elif self.clock == "message" and (own_time := message_time(c)) is not None:
            self._check_own_time(own_time)  # ImplausibleMessageTime: a kept 400, the clock unmoved
            c = _rebase(c, own_time)  # a response's own time (kept by a worker without the model)
        return await self._decide(lane, user, body, received_at, c)

    async def accept_classified(
        self, lane: Lane, user: str | None, body: bytes, received_at: datetime, c: Classified
    ) -> AcceptResult:
        """:meth:`accept` for a message an ingress worker process has classified already
        (gateway.service.ingress_workers), with the arrival this processor would have used: the time it
        was received (``clock = "wall"``) or its ``X-DUISGW-Arrival`` header (``clock = "message"``; a
        message without the header is sent to :meth:`accept`, because its arrival is the engine clock).
        A header's arrival is checked here as :meth:`accept` checks it."""
        if self.clock == "message":
            self.check_calendar(c.arrival)
            self._check_arrival(c)
        return await self._decide(lane, user, body, received_at, c)

    def _calendar_margin(self) -> timedelta:
        """How far either side of an arrival the engine computes: its retention and the arrival bounds."""
        durable = self.durable
        keep = durable.config.keep_for if durable is not None else timedelta(0)
        return keep + max(self.arrival_max_delay, self.arrival_max_skew)

    def check_calendar(self, arrival: datetime, *, what: str = ARRIVAL_HEADER) -> None:
        """``clock = "message"``: refuse (:class:`BadArrivalHeader`, a kept 400) a header's arrival (or, as
        ``what`` names it, another time that would become the engine clock) the engine could not compute
        with (:func:`calendar_problem`), before it is used for anything."""
        problem = calendar_problem(arrival, self._calendar_margin(), what=what)
        if problem is not None:
            raise BadArrivalHeader(problem)

    def _check_own_time(self, own_time: datetime) -> None:
        """``clock = "message"``, no header: refuse (:class:`ImplausibleMessageTime`, a kept 400) a
        message's own time that would be its arrival yet is more than ``arrival_max_delay`` ahead of the
        engine clock, or that the engine could not compute with (:func:`own_time_problem`), before it
        reaches the engine, whose clock never goes back. Checked here, once, whichever process classified
        the message (an ingress worker sends a message without the header here unclassified)."""
        problem = own_time_problem(own_time, self._engine_clock(), max_delay=self.arrival_max_delay,
                                   margin=self._calendar_margin())  # fmt: skip
        if problem is not None:
            raise ImplausibleMessageTime(problem)

    def _check_arrival(self, c: Classified) -> None:
        """``clock = "message"``: refuse (:class:`BadArrivalHeader`, a kept 400) a header's arrival
        (``c.arrival``) that is not plausibly this message's (:func:`arrival_problem`), before it reaches
        the engine, whose clock never goes back. Input refused for its own reason keeps that reason."""
        if c.rejection is not None:
            return
        problem = arrival_problem(c.arrival, message_time(c), self._engine_clock(),
                                  max_skew=self.arrival_max_skew, max_delay=self.arrival_max_delay)  # fmt: skip
        if problem is not None:
            raise BadArrivalHeader(problem)

    async def accept_classified_many(
        self, reqs: Sequence[tuple[Lane, str | None, bytes, datetime, Classified]]
    ) -> list[AcceptResult | BaseException]:
        """:meth:`accept_classified` for the messages of one ingress worker frame, each answered as that
        would answer it (an :class:`AcceptResult`, or the exception it would raise), in order. The evidence
        of all of them is queued for the engine thread at once, in frame order, and answered together: one
        future for the frame instead of a task, a coroutine chain and a future per message. Rejections and
        messages without evidence take :meth:`accept_classified`'s own path."""
        results: list[AcceptResult | BaseException | None] = [None] * len(reqs)
        others: list[tuple[int, Awaitable[AcceptResult]]] = []
        queued: list[tuple[int, Classified, str | None, str | None]] = []  # index, classification, user, inline id
        batch: _Batch | None = None
        for i, (lane, user, body, received_at, c) in enumerate(reqs):
            try:
                if self.clock == "message":
                    self.check_calendar(c.arrival)
                    self._check_arrival(c)
                if c.rejection is not None or not c.events:
                    others.append((i, self._decide(lane, user, body, received_at, c)))
                    continue
                self._before_engine(c)
                if self._closed or not self._started:
                    raise StoreUnavailable("the decision engine is closed")
                items, inline_id = _engine_items(c, body)
                if batch is None:
                    batch = _Batch(asyncio.get_running_loop().create_future(), len(reqs))
                route = _Route(inline_id, user, c.kind, body, _iso(received_at))
                self._queue.append(_Submit(items, _Slot(batch, i), route))
                queued.append((i, c, user, inline_id))
            except Exception as exc:
                results[i] = exc
        if batch is not None:
            batch.left = len(queued)  # (answered on this event loop only after the await below)
            self._arm()
        if others:
            answers = await asyncio.gather(*(coro for _, coro in others), return_exceptions=True)
            for (i, _), answer in zip(others, answers, strict=True):
                results[i] = answer
        if batch is not None:
            try:
                await batch.future
            except asyncio.CancelledError:  # the caller went away: release what was answered already
                for i, *_ in queued:
                    if isinstance(got := batch.outcomes[i], _Outcome):
                        self._done_inflight(got.effects)
                raise
            for i, c, user, inline_id in queued:
                outcome = batch.outcomes[i]
                if outcome is None or isinstance(outcome, BaseException):
                    results[i] = outcome or StoreUnavailable("no decision")
                    continue
                try:
                    results[i] = self._after_engine(c, inline_id, user, outcome)
                except Exception as exc:
                    results[i] = exc
        return [r if r is not None else StoreUnavailable("no answer") for r in results]

    def _before_engine(self, c: Classified) -> None:
        """What every accepted classification does before its evidence is decided: its verification
        problems counted, the message clock's anchor moved."""
        for problem in c.problems:
            self.metrics.verify_failures.labels(problem.split(":", 1)[0]).inc()
        if self.clock == "message" and (self._anchor is None or c.arrival > self._anchor[0]):
            self._anchor = (c.arrival, time.monotonic())

    async def _decide(
        self, lane: Lane, user: str | None, body: bytes, received_at: datetime, c: Classified
    ) -> AcceptResult:
        if c.rejection is not None:
            await self.rejects.record(
                lane=lane.value,
                user=user,
                reason=c.rejection.code,
                detail=c.rejection.detail,
                body=body,
                received_at=received_at,
            )
            log.info(
                "rejected",
                extra={"lane": lane.value, "reason": c.rejection.code, "detail": c.rejection.detail[:200]},
            )
            return AcceptResult(False, 400, reason=c.rejection.code, kind="rejected")
        self._before_engine(c)
        if not c.events:  # nothing to learn from: kept (bytes, kind, problems) before it is acknowledged
            row = (_iso(received_at), lane.value, user, c.kind, c.message_id, "not-evidence",
                   "; ".join(c.problems)[:1000] or None, body)  # fmt: skip
            await self.store.write(
                lambda conn: conn.execute(
                    "INSERT INTO observations (received_at, lane, user, kind, message_id, reason, detail, body) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
            )
            return AcceptResult(True, 204, reason="not-evidence", message_id=c.message_id, decision="observe",
                                kind=c.kind)  # fmt: skip
        items, inline_id = _engine_items(c, body)
        outcome = await self._engine(items, _Route(inline_id, user, c.kind, body, _iso(received_at)))
        return self._after_engine(c, inline_id, user, outcome)

    def _after_engine(
        self, c: Classified, inline_id: str | None, user: str | None, outcome: _Outcome
    ) -> AcceptResult:
        """A request's answer from its share of a committed engine batch: its decisions counted and logged,
        its forwards handed to delivery, its in-flight marks released."""
        try:
            own: Decision | Duplicate | None = None
            for eff in outcome.effects:
                if isinstance(eff, Decision):
                    if eff.message_id == inline_id:
                        own = eff
                    mine = eff.message_id == inline_id
                    self._count_decision(eff, own=mine, kind=c.kind if mine else outcome.kind_of(eff))
                elif isinstance(eff, Duplicate) and eff.message_id == inline_id:
                    own = eff
            self._routed(outcome.done, outcome.lost, outcome.touched)
        finally:
            self._done_inflight(outcome.effects)
        if not isinstance(own, Duplicate):  # a re-delivery is not another late alert
            self._observe_lateness(c, c.arrival)
        if any(isinstance(e, Decision) and e.action is not Action.FORWARD for e in outcome.effects):
            self._update_held()
        if inline_id is None:
            notes = [e.note for e in outcome.effects if isinstance(e, Observed) and not e.used and e.note]
            return AcceptResult(True, 204, reason=observation_reason(notes[0] if notes else ""),
                                message_id=c.message_id, decision="observe", kind=c.kind)  # fmt: skip
        return self._inline_result(inline_id, own, c.kind, user)

    def _inline_result(
        self, message_id: str, own: Decision | Duplicate | None, kind: str, user: str | None
    ) -> AcceptResult:
        if own is None:  # pragma: no cover - the engine always decides an inline event
            raise StoreUnavailable(f"no decision for {message_id}")
        if isinstance(own, Duplicate):
            orig = own.original
            decision = "forward" if orig is None else (orig.disposition or "hold")
            log.info("duplicate", extra={"message_id": message_id, "decision": decision, "destination": user})
            return AcceptResult(True, 202 if decision == "hold" else 200, reason="duplicate",
                                message_id=message_id, decision=decision, kind=kind)  # fmt: skip
        decision = own.disposition or "hold"
        return AcceptResult(True, 202 if decision == "hold" else 200, reason=str(own.reason),
                            message_id=message_id, decision=decision, kind=kind)  # fmt: skip

    def _count_decision(self, d: Decision, *, own: bool, kind: str) -> None:
        """Log a decision (its ``kind`` field: ``kind``); count it in ``duisgw_messages`` under ``kind`` (the
        message's DUIS kind, the label the ingress counts its own message under) unless it is the
        request's own (``own``)."""
        if not own:  # released by this message or by the clock: counted here (the ingress counts its own)
            self.metrics.count_accepted("inline", kind, str(d.action), str(d.reason))
        level = self._forward_level if d.action is Action.FORWARD else logging.INFO
        if not log.isEnabledFor(level):  # forwards log at DEBUG by default: skip building the record
            return
        extra = {
            "message_id": d.message_id,
            "decision": d.disposition or "hold",
            "action": str(d.action),
            "reason": str(d.reason),
            "kind": kind,
            "event_time": _iso(d.event_time),
            "evidence": ",".join(e.message_id for e in d.evidence),
        }
        log.log(level, "decision", extra=extra)

    def _observe_lateness(self, c: Classified, arrival: datetime) -> None:
        """``duisgw_late_alert_age_seconds``: arrival minus the AD1's ``StartDateTime`` or the restoration's
        interruption time. An interruption time the meter's own clock status doubts is not observed: its
        age would say how wrong the meter's clock was, not how late the alert came."""
        for ev in c.events:
            when: datetime | None = None
            if isinstance(ev, PowerOutage):
                when = ev.start_time
            elif isinstance(ev, SupplyRestored) and not ev.clock_unreliable:
                when = ev.interruption_time
            if when is not None:
                age = (arrival - when).total_seconds()
                if age >= 0:
                    self.metrics.late_alert_age.observe(age)

    def _update_held(self) -> None:
        self.metrics.held.set(self._held_count)  # counted in the engine thread after each batch

    # ------------------------------------------------------------------ outbox

    async def _enqueue(self, routes: list[tuple[str, str, str, str]], forwards: list[_Forward]) -> None:
        lookup = getattr(self.durable, "routes", None)
        unrouted = [f.message_id for f in forwards if f.destination is None]
        if lookup is not None and unrouted:  # holds another instance accepted: their route is shared
            shared: dict[str, str] = await self.call(lambda: lookup(unrouted))
            forwards = [dataclasses.replace(f, destination=shared.get(f.message_id)) if f.destination is None
                        else f for f in forwards]  # fmt: skip
        done, lost, touched = await self.store.write(lambda conn: self._write_routes(conn, routes, forwards))
        self._routed(done, lost, touched)

    def _routed(self, done: list[str], lost: list[str], touched: set[str]) -> None:
        """After an outbox commit: flag the enqueued forwards (batched), log the unroutable ones once,
        wake the delivery of the queues that got rows."""
        self._to_mark.update(done)
        if touched:
            self.outbox.notify(sorted(touched))
        for mid in lost:
            if mid not in self._unroutable_logged:
                self._unroutable_logged.add(mid)
                log.error("forward decision without a known destination: kept, not delivered",
                          extra={"message_id": mid})  # fmt: skip

    async def _mark_delivered(self) -> None:
        if not self._to_mark or self.durable is None:
            return
        ids, self._to_mark = sorted(self._to_mark), set()
        store = self.durable.store
        try:
            await self.call(lambda: _flag_delivered(store, ids))
        except StoreUnavailable:
            self._to_mark.update(ids)
            raise

    async def redeliver(self) -> int:
        """Take in the operator releases recorded since the last scan (:meth:`_take_in_releases`), then
        enqueue every forward decision the engine store has not flagged as in the outbox (idempotent).

        Returns how many were enqueued. Runs at start-up and periodically (operator releases)."""
        durable = self.durable
        if durable is None:
            return 0
        await self._take_in_releases()
        await self._mark_delivered()
        rows = await self.call(durable.store.undelivered)
        todo = [(mid, raw) for mid, raw in rows if mid not in self._inflight and raw is not None]
        if not todo:
            return 0
        audits = await self.call(lambda: {mid: durable.store.audit(mid) for mid, _ in todo})
        kinds = await self.call(lambda: self._route_kinds(mid for mid, _ in todo))
        released = [mid for mid, _ in todo if (audits.get(mid) or [{}])[-1].get("reason") == OPERATOR_RELEASE]
        if released and isinstance(durable, DurableEngine):  # (shared state: taken in above, in Redis too)
            # taken in above already, unless recorded by an earlier version (no operator_releases row)
            await self.call(lambda: self._as_upkeep(lambda: durable.released_by_operator(released)))
        forwards = []
        for mid, raw in todo:
            history = audits.get(mid) or [{}]
            last = history[-1]
            # the DUIS kind of its route; without one (never routed: its accepting request's outbox commit
            # was lost), the engine's event kind its decisions recorded (an operator release's has none)
            recorded = next((str(r["event_kind"]) for r in reversed(history) if r.get("event_kind")), "")
            meta = {
                "message_id": mid,
                "decision": "forward",
                "action": str(last.get("action", "forward")),
                "reason": str(last.get("reason", "")),
                "kind": kinds.get(mid) or recorded,
            }
            forwards.append(_Forward(mid, bytes(raw), meta, None))
        await self._enqueue([], forwards)
        await self._mark_delivered()
        log.info("re-enqueued forward decisions not yet in the outbox", extra={"count": len(forwards)})
        return len(forwards)

    async def _take_in_releases(self) -> None:
        """Operator releases (``duisgw audit release``, another process: it records the release and puts
        the message in the outbox itself) reach the running gateway here. In the engine thread, ONE
        transaction drops their suppressed-outage records from the engine and flags them taken in
        (:meth:`DurableEngine.take_in_operator_releases`); then each is counted in ``duisgw_messages``
        (``release-forward`` / ``operator-release``, under its DUIS kind) and logged. The flag is the
        durable "counted" fact: a release is taken in once, ever, so a restart (or any later scan) does
        not count it again, and one made while the gateway was stopped is counted at its start."""
        if self.durable is None:
            return
        self._count_taken_in(await self.call(self._taken_in))

    def _taken_in(self) -> list[tuple[str, str]]:
        """In the engine thread: take in the operator releases recorded and not taken in yet
        (:meth:`DurableEngine.take_in_operator_releases`); ``(message id, DUIS kind)`` of each."""
        durable = self.durable
        if durable is None:
            return []
        with self._upkeep():
            taken = durable.take_in_operator_releases()
        kinds = self._route_kinds(mid for mid, _kind in taken) if taken else {}
        return [(mid, kinds.get(mid) or kind) for mid, kind in taken]

    def _count_taken_in(self, taken: Iterable[tuple[str, str]]) -> None:
        """On the event loop: count and log each operator release taken in (once, ever)."""
        for mid, kind in taken:
            self.metrics.count_accepted("inline", kind, str(Action.RELEASE_FORWARD), OPERATOR_RELEASE)
            log.info("decision", extra={"message_id": mid, "decision": "forward",
                                        "action": str(Action.RELEASE_FORWARD), "reason": OPERATOR_RELEASE,
                                        "kind": kind})  # fmt: skip

    # ------------------------------------------------------------------ timers and admin

    async def tick(self, now: datetime) -> None:
        """Advance the engine clock (wall: ``now``; message: last arrival + wall time since), release
        held messages whose deadline passed, flag outbox deliveries, scan for pending forwards."""
        target: datetime | None = now
        if self.clock == "message":
            target = None
            if self._anchor is not None:
                t0, m0 = self._anchor
                target = t0 + timedelta(seconds=time.monotonic() - m0)
        if target is not None:
            await self.advance(target)
        await self._mark_delivered()
        mono = time.monotonic()
        if mono - self._last_scan >= _SCAN_EVERY:
            self._last_scan = mono
            await self.redeliver()
        last = self._last_purge
        if last is None or mono - last >= _PURGE_EVERY:
            self._last_purge = mono
            kept: tuple[tuple[_Kept, timedelta | None], ...] = (
                ("observations", self.observations_retention),
                ("rejects", self.rejects_retention),
            )
            for table, keep in kept:
                if keep is None:
                    continue
                try:
                    purged = await self._purge_kept(table, now - keep)
                except StoreUnavailable as exc:
                    log.error(f"{table} purge failed", extra={"error": str(exc)})
                else:
                    if purged:
                        log.info(
                            f"{table} purged", extra={"count": purged, "retention_s": keep.total_seconds()}
                        )

    async def purge_observations(self, before: datetime, *, chunk: int = PURGE_CHUNK) -> int:
        """Delete the ``observations`` rows received before ``before`` (:meth:`_purge_kept`)."""
        return await self._purge_kept("observations", before, chunk=chunk)

    async def purge_rejects(self, before: datetime, *, chunk: int = PURGE_CHUNK) -> int:
        """Delete the ``rejects`` rows received before ``before`` (:meth:`_purge_kept`)."""
        return await self._purge_kept("rejects", before, chunk=chunk)

    async def _purge_kept(self, table: _Kept, before: datetime, *, chunk: int = PURGE_CHUNK) -> int:
        """Delete the rows of ``table`` received before ``before`` (:func:`~gateway.service.outbox.purge_kept`:
        oldest first, in bounded transactions). Returns how many were deleted."""
        return await purge_kept(self.store, table, before, chunk=chunk)

    async def advance(self, now: datetime) -> list[Decision]:
        """Move the engine clock to ``now`` (never backwards); returns the decisions it released."""
        clock = self._engine_clock()
        # shared state: tick anyway (another instance may have moved the clock past holds, or died
        # before recording a release: whichever instance ticks releases them)
        if clock is not None and now <= clock and not isinstance(self.durable, SharedEngine):
            return []
        outcome = await self._engine([(Tick(now), None)])
        released = [e for e in outcome.effects if isinstance(e, Decision)]
        try:
            forwards = []
            for d in released:
                kind = outcome.kind_of(d)
                self._count_decision(d, own=False, kind=kind)
                if d.disposition == "forward" and d.message_id in outcome.bodies:
                    forwards.append(_Forward(d.message_id, outcome.bodies[d.message_id],
                                             _metadata(d, kind), None))  # fmt: skip
            if forwards:
                await self._enqueue([], forwards)
        finally:
            self._done_inflight(outcome.effects)
        if released:
            self._update_held()
        if self.clock == "message" and (self._anchor is None or now > self._anchor[0]):
            self._anchor = (now, time.monotonic())
        return released


def observation_reason(note: str) -> str:
    """The stable reason code of an accepted observation (the ``reason`` label of its
    ``duisgw_messages_total`` series): ``observed`` (the engine used it, or it said nothing),
    ``naive-timestamp`` (a date-time without offset under ``naive_timestamp_policy = "reject"``),
    ``time-out-of-range`` (a date-time too near the calendar's ends for the engine's windows) or
    ``unverified`` (evidence that failed a check: a signature, or an identity that does not match its
    request). The engine's note itself names devices and details; it is kept with the message in the
    store (and the audit), never used as a label value: one time series per device would grow the
    registry for the life of the process."""
    if not note:
        return "observed"
    if note in (Reason.NAIVE_TIMESTAMP.value, Reason.TIME_OUT_OF_RANGE.value):
        return note
    return "unverified"


def engine_clock(durable: DurableEngine | SharedEngine) -> datetime | None:
    """The gateway clock of either engine (the shared one as last seen by this instance; the local one as
    durable: read from any thread, it never rebuilds an engine a failed batch left stale)."""
    return durable.clock


def _flag_delivered(store: Any, message_ids: list[str]) -> None:
    """In the engine thread: flag the forwards now in the outbox in the decision state's store, in a transaction of
    its own (:meth:`gateway.store.sqlite.SqliteStore.mark_delivered`), timed and its failure counted as that
    store's other transactions are (told to its observer, as upkeep: that store does not tell these itself)."""
    observer: StoreObserver | None = getattr(store, "observer", None)
    began = time.perf_counter()
    try:
        store.mark_delivered(message_ids)
    except Exception as exc:
        if observer is not None and (isinstance(exc, sqlite3.Error) or unavailable(exc)):
            getattr(observer, "upkeep_failed", observer.failed)(exc)
        raise
    if observer is not None:
        getattr(observer, "upkeep_committed", observer.committed)(time.perf_counter() - began)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A done callback that takes a future's exception (one nobody awaits any more: a probe answered by its timeout)
    so that asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def held_count(durable: DurableEngine | SharedEngine) -> int:
    """Messages held (shared: across every instance, as of this instance's last commit or tick)."""
    return durable.held_count


def _routing(out: _Outcome, route: _Route) -> tuple[list[tuple[str, str, str, str]], list[_Forward]]:
    """One request's ``routes`` row and the forwards its engine commit produced (its own message to the DNO
    it was addressed to; a held message it released to the destination its route names). A re-delivered
    message whose original decision was a forward is enqueued again (the outbox ignores it while its row
    exists: this repairs a crash between the engine commit and the outbox commit) under the id it was forwarded
    with, and so is one whose id was only observed before (the engine never decided it for a DNO: forwarded,
    fail open)."""
    forwards: list[_Forward] = []
    for eff in out.effects:
        if isinstance(eff, Decision):
            mine = eff.message_id == route.inline_id
            if eff.disposition == "forward" and eff.message_id in out.bodies:
                dest = route.user if mine else None
                kind = route.kind if dest else out.kind_of(eff)
                forwards.append(
                    _Forward(eff.message_id, out.bodies[eff.message_id], _metadata(eff, kind), dest)
                )
        elif isinstance(eff, Duplicate) and eff.message_id == route.inline_id:
            orig = eff.original
            if orig is not None and orig.disposition == "forward":
                # under the id it was forwarded with: the same bytes under their other id (their signature
                # verified at one delivery and not at the other, docs/ENGINE.md §8) are not a second message
                forwards.append(_Forward(orig.message_id, route.body, _metadata(orig, route.kind), route.user))
            elif orig is None:
                # its identity was taken in before on the observation lane (a misrouted copy of the same
                # message): the engine never judged it for a DNO, and it is answered forward, so it is
                # forwarded, unchanged (fail open) — once: the outbox ignores it while its row exists
                meta = {"message_id": eff.message_id, "decision": "forward", "action": str(Action.FORWARD),
                        "reason": str(Reason.DUPLICATE), "kind": route.kind}  # fmt: skip
                forwards.append(_Forward(eff.message_id, route.body, meta, route.user))
    routes: list[tuple[str, str, str, str]] = []
    if route.inline_id is not None and route.user is not None:
        routes.append((route.inline_id, route.user, route.received_at, route.kind))
    return routes, forwards


def _metadata(d: Decision, kind: str) -> dict[str, str]:
    meta = {
        "message_id": d.message_id,
        "decision": d.disposition or "hold",
        "action": str(d.action),
        "reason": str(d.reason),
        "kind": kind,
    }
    # the premises the message is about: the delivery window keeps per-device order with it
    if d.ch is not None:
        meta["device"] = format_eui(d.ch)
    elif d.mpan:
        meta["device"] = f"mpan:{d.mpan}"
    return meta


def _rebase(c: Classified, arrival: datetime) -> Classified:
    """The classification with every event's arrival (and a request's ``seen_at``) set to ``arrival``."""
    events: list[Any] = []
    for ev in c.events:
        changes: dict[str, Any] = {"arrival": arrival}
        if isinstance(ev, ActivationRequested):
            changes["seen_at"] = arrival
        assert isinstance(ev, MessageEvent)
        events.append(dataclasses.replace(ev, **changes))
    return dataclasses.replace(c, arrival=arrival, events=tuple(events))


def _engine_items(c: Classified, body: bytes) -> tuple[list[tuple[Event, bytes | None]], str | None]:
    """The engine jobs of a classification: each event with the bytes to keep with it (the inline message's
    own; an observed message's once, with its first event: evidence is auditable), and the inline id."""
    items: list[tuple[Event, bytes | None]] = []
    inline_id: str | None = None
    kept = False
    for ev in c.events:
        if isinstance(ev, _INLINE):
            items.append((ev, body))
            inline_id = ev.message_id
        else:
            items.append((cast(Event, ev), None if kept else body))
            kept = True
    return items, inline_id


def _has_restoration(batch: Sequence[_Submit]) -> bool:
    """Whether a job of ``batch`` holds a restoration alert (8F35–8F3C)."""
    return any(isinstance(event, SupplyRestored) for job in batch for event, _raw in job.items)


def _unavailable(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreUnavailable | asyncio.CancelledError):
        return exc
    err = StoreUnavailable(f"decision store failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
