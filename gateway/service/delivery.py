"""Egress: deliver each outbox queue in order, with retries.

Theory of operation
-------------------
One worker task per queue (``http:<destination>``, ``mqtt:<destination>``). A worker reads up to
``prefetch`` pending rows past its in-memory cursor and dispatches them in queue order.

* ``window = 1`` (default): strictly one after the other: message *n+1* is not sent before message
  *n* was acknowledged (2xx, or MQTT PUBACK) or dead-lettered (head-of-line ordering).
* ``window = N > 1``: up to N rows in flight, still dispatched in queue order, with one rule that
  keeps the order that matters to a DNO — the order of one premises' alerts (an outage before its
  restoration): a row is not dispatched while an earlier row with the same ``device`` (its Comms Hub,
  else MPAN, from the decision metadata) is in flight or waiting for a retry. A row without a device
  is a barrier: it waits until nothing is in flight, and nothing after it is dispatched until it is
  done. When the next row cannot be dispatched, the worker waits (head-of-line), so rows are never
  dispatched out of queue order; they may only be *acknowledged* out of order across devices.

A failed attempt is recorded durably (attempt count, error, next attempt time) and retried after an
exponential backoff with jitter (the row keeps its place in the window meanwhile)::

    delay(n) = min(backoff_max, backoff_initial * backoff_multiplier ** (n - 1)) * (1 - jitter * U[0,1))

Two kinds of failure: *refused* (the endpoint answered, not 2xx) counts toward ``max_attempts``,
after which the row is dead-lettered (kept, re-queueable) and the queue moves on; *unreachable*
(connection refused, timeout, broker down) only delays, unless ``dead_letter_unreachable``. So a
DNO endpoint down for hours loses nothing and delivers everything in order when it returns.

Delivery is at-least-once: a row is marked delivered after its acknowledgement, asynchronously
(not awaited before the next send, so one queue is not limited to one fsync per message); a crash
between the acknowledgement and that commit resends the message once. Receivers dedupe on the
``X-DUISGW-Message-Id`` header (MQTT: the ``message_id`` user property).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from gateway.service.api import MESSAGE_ID_HEADER, StoreUnavailable, message_id_header_value
from gateway.service.config import DestinationConfig, OutboxConfig
from gateway.service.metrics import Metrics
from gateway.service.outbox import Outbox, OutboxRow
from gateway.service.tls import client_context

__all__ = ["Backoff", "DeliveryManager", "HttpSender", "SendOutcome", "Sender"]

log = logging.getLogger("duisgw.service.delivery")

#: Most bytes of a DNO endpoint's response body read (and dropped); the rest is never read.
RESPONSE_BODY_MAX = 1 << 20


@dataclass(frozen=True)
class SendOutcome:
    ok: bool
    refused: bool = False  # the endpoint answered and did not accept (vs. unreachable)
    detail: str = ""


class Sender(Protocol):
    """Delivers one row to one endpoint; never raises for a delivery failure (returns the outcome)."""

    async def send(self, row: OutboxRow) -> SendOutcome: ...

    async def close(self) -> None: ...


class HttpSender:
    """POSTs the original bytes (``Content-Type: application/xml``) to one URL; 2xx = delivered, anything
    else (a redirect included: it is not followed) = refused. The response body is not kept: at most
    ``RESPONSE_BODY_MAX`` bytes of it are read. No proxy from the environment (``HTTPS_PROXY`` ...)
    is used: the session does not trust the environment.

    The request timeout is kept by one watchdog task per sender, not by aiohttp's per-request timer: it
    wakes every ``timeout / 10`` s (at most 1 s, at least 0.05 s) and cancels the POSTs past their
    deadline, which then end as an unreachable failure. A timer per request cost about a tenth of the
    sender's CPU at 2,000 POSTs/s (``bench_gateway.py``'s CPU split; docs/PERFORMANCE-gateway.md). So an
    attempt ends between ``timeout`` and ``timeout`` + one watchdog period. A cancellation from outside
    (shutdown) still propagates as a cancellation. :meth:`use_context` puts another TLS context in
    force (a reload): new connections use it, POSTs under way finish on theirs."""

    def __init__(
        self, url: str, *, timeout: float, ssl_context: ssl.SSLContext | None = None, connections: int = 4
    ) -> None:
        self.url = url
        self._limit = max(1, connections)
        self._timeout_s = timeout
        # connecting keeps aiohttp's own limit (it only runs for a new connection); the whole request is
        # bounded by the watchdog
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout)
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        #: the outcome a POST's status gave, kept while its response body is drained: a deadline that passes
        #: during the drain ends the drain, never the status (a 2xx is a delivery, whatever its body does)
        self._answered: dict[asyncio.Task[Any], SendOutcome] = {}
        self._watchdog: asyncio.Task[None] | None = None
        #: POSTs under way per session (a session retired by use_context is closed when it has none)
        self._in_flight: dict[aiohttp.ClientSession, int] = {}

    @classmethod
    def for_destination(
        cls, dest: DestinationConfig, cfg: OutboxConfig, *, base_dir: Path | None = None
    ) -> HttpSender:
        """The sender of a configured destination (its TLS settings for an ``https:`` URL)."""
        ctx = client_context(dest.tls, base_dir=base_dir) if dest.url.startswith("https:") else None
        return cls(dest.url, timeout=cfg.request_timeout, ssl_context=ctx, connections=max(4, cfg.window))

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, ssl=self._ssl if self._ssl is not None else True
            )
            # no cookie state (nothing a DNO endpoint sets is sent back) and no decompression of a body
            # that is only drained
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self._session

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context new connections use (``None``: plain HTTP or the system defaults)."""
        return self._ssl

    async def use_context(self, context: ssl.SSLContext) -> None:
        """New connections use ``context`` (a reload of the destination's TLS material): the session in
        use is retired, closed now when no POST is under way on it, else when its last one ends."""
        self._ssl = context
        old, self._session = self._session, None
        if old is not None and not self._in_flight.get(old):
            self._in_flight.pop(old, None)
            await old.close()

    async def send(self, row: OutboxRow) -> SendOutcome:
        return await self.post(row.message_id, row.body)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(1.0, max(0.05, self._timeout_s / 10))
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def post(self, message_id: str, body: bytes) -> SendOutcome:
        """POST ``body`` as message ``message_id`` (what :meth:`send` does with a row)."""
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to cancel, so no deadline to keep
            return await self._post_on_session(message_id, body)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        cancelling = task.cancelling()
        self._deadlines[task] = asyncio.get_running_loop().time() + self._timeout_s
        try:
            return await self._post_on_session(message_id, body)
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() <= cancelling:  # the watchdog's cancellation alone: a timeout
                    # the status came and only its body did not finish: the status stands
                    answered = self._answered.get(task)
                    if answered is not None:
                        unfinished = f" (body not finished within {self._timeout_s:g} s; connection closed)"
                        return replace(answered, detail=answered.detail + unfinished)
                    return SendOutcome(False, refused=False, detail=f"TimeoutError: no answer within {self._timeout_s:g} s")
            raise
        finally:
            self._deadlines.pop(task, None)
            self._answered.pop(task, None)
            if task in self._expired:  # the watchdog's cancellation was swallowed on the way: take it back
                self._expired.discard(task)
                task.uncancel()

    async def _post_on_session(self, message_id: str, body: bytes) -> SendOutcome:
        session = self._get_session()
        self._in_flight[session] = self._in_flight.get(session, 0) + 1
        try:
            return await self._post(session, message_id, body)
        finally:
            left = self._in_flight[session] = self._in_flight[session] - 1
            if left == 0 and session is not self._session:
                del self._in_flight[session]
                await session.close()  # retired by use_context: its last POST is done

    async def _post(self, session: aiohttp.ClientSession, message_id: str, body: bytes) -> SendOutcome:
        headers = {"Content-Type": "application/xml", MESSAGE_ID_HEADER: message_id_header_value(message_id)}
        try:
            # never follow a redirect: a 301/302/303 would be re-sent as a GET without the body, and its
            # 2xx taken for a delivery of nothing; a 3xx is the endpoint refusing this URL
            async with session.post(self.url, data=body, headers=headers, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    outcome = SendOutcome(True, detail=str(resp.status))
                elif 300 <= resp.status < 400:
                    where = resp.headers.get("Location", "")[:200]
                    outcome = SendOutcome(
                        False, refused=True, detail=f"HTTP {resp.status} (redirect to {where!r} not followed)"
                    )
                else:
                    outcome = SendOutcome(False, refused=True, detail=f"HTTP {resp.status}")
                # the answer is the status: a body that stalls (a Content-Length never filled) must not turn it
                # into a timeout when the watchdog ends the drain (post() then returns this outcome)
                task = asyncio.current_task()
                if task is not None:
                    self._answered[task] = outcome
                try:
                    await self._drain(resp)
                except asyncio.CancelledError:
                    resp.close()  # (its connection is not reused: the rest of the body may still come)
                    raise
                except (aiohttp.ClientError, OSError):
                    resp.close()  # the body broke off after the status: the status stands
                return outcome
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return SendOutcome(False, refused=False, detail=f"{type(exc).__name__}: {exc}"[:300])

    @staticmethod
    async def _drain(resp: aiohttp.ClientResponse) -> None:
        """Read and drop the response body, at most ``RESPONSE_BODY_MAX`` bytes: only the status says
        anything. A longer (or endless) body is not read further and its connection is closed (not
        reused), so a misbehaving endpoint can neither fill the memory nor turn a 2xx into a timeout."""
        left = RESPONSE_BODY_MAX
        while left > 0:
            chunk = await resp.content.read(min(left, 64 << 10))
            if not chunk:
                return
            left -= len(chunk)
        if not resp.content.at_eof():
            resp.close()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        sessions = set(self._in_flight)
        if self._session is not None:
            sessions.add(self._session)
        self._in_flight.clear()
        for session in sessions:
            await session.close()


class Backoff:
    """Exponential backoff with downward jitter, driven by an injected :class:`random.Random`."""

    def __init__(self, cfg: OutboxConfig, rng: random.Random) -> None:
        self._cfg = cfg
        self._rng = rng
        # from this many doublings (multiplications) on the delay is backoff_max: the power is never taken
        # past it (a float power overflows at about 1,000 of them: a DNO down for ~13 h at the defaults)
        grows = cfg.backoff_multiplier > 1.0 and 0 < cfg.backoff_initial < cfg.backoff_max
        ratio = cfg.backoff_max / cfg.backoff_initial if grows else 1.0
        self._top = math.ceil(math.log(ratio, cfg.backoff_multiplier)) if grows else 0

    def delay(self, attempt: int) -> float:
        """Delay before the attempt following failed attempt number ``attempt`` (1-based)."""
        c = self._cfg
        n = max(0, attempt - 1)
        if c.backoff_multiplier > 1.0 and n >= self._top:
            base = c.backoff_max
        else:
            base = min(c.backoff_max, c.backoff_initial * c.backoff_multiplier**n)
        return base * (1.0 - c.jitter * self._rng.random())


class DeliveryManager:
    """Runs one ordered worker per queue in ``senders`` and keeps the outbox gauges fresh."""

    def __init__(
        self,
        outbox: Outbox,
        senders: Mapping[str, Sender],
        cfg: OutboxConfig,
        *,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        stats_interval: float = 1.0,
    ) -> None:
        self.outbox = outbox
        self.senders = dict(senders)
        self.cfg = cfg
        self.backoff = Backoff(cfg, rng if rng is not None else random.Random())
        self.metrics = metrics
        self._clock = clock
        self._stats_interval = stats_interval
        self._wake: dict[str, asyncio.Event] = {q: asyncio.Event() for q in self.senders}
        self._stopping = asyncio.Event()
        self._draining = False
        self._drained = asyncio.Event()  # set when the drain begins: wakes rows waiting for their retry
        self._tasks: list[asyncio.Task[None]] = []
        self._marks: set[asyncio.Task[None]] = set()
        self._unmarked: dict[str, int] = {}
        self._to_mark: list[OutboxRow] = []
        self._mark_task: asyncio.Task[None] | None = (
            None  # per queue: deliveries whose "delivered" commit is pending
        )
        #: rows delivered whose "delivered" commit is pending (or failing: the store cannot write now): never
        #: sent again while this gateway runs (after a restart they are: at-least-once)
        self._delivered: set[int] = set()
        self._in_flight = 0
        outbox.add_listener(self.notify)

    def notify(self, queue: str) -> None:
        """Wake the worker of ``queue`` (called after new rows commit)."""
        ev = self._wake.get(queue)
        if ev is not None:
            ev.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        for queue in self.senders:
            self._tasks.append(asyncio.create_task(self._supervised(queue), name=f"duisgw-deliver-{queue}"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="duisgw-outbox-stats"))
        with contextlib.suppress(StoreUnavailable):
            orphans = {s.queue for s in await self.outbox.stats() if s.depth and s.queue not in self.senders}
            for q in sorted(orphans):
                log.warning("outbox queue has pending rows but no configured sender", extra={"queue": q})

    async def stop(self, timeout: float | None = None) -> None:
        """Drain, then stop: workers keep sending rows that are due now until their queue is empty or a
        row would have to wait for a retry; attempts in flight finish. After ``timeout`` (default
        ``drain_timeout``) whatever is left is cancelled; undelivered rows stay pending in the database."""
        self._draining = True
        self._drained.set()
        for ev in self._wake.values():
            ev.set()
        wait = self.cfg.drain_timeout if timeout is None else timeout
        workers = self._tasks[:-1] if self._tasks else []
        if workers:
            await asyncio.wait(workers, timeout=wait)
        self._stopping.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=1.0)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._marks:
            await asyncio.gather(*list(self._marks), return_exceptions=True)
        for s in self.senders.values():
            await s.close()

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep up to ``seconds``, returning early on stop (or on ``wake``)."""
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _mark_delivered(self, row: OutboxRow) -> None:
        """Queue the "delivered" record; one store write covers every row acknowledged meanwhile."""
        self._unmarked[row.queue] = self._unmarked.get(row.queue, 0) + 1
        self._delivered.add(row.seq)
        self._to_mark.append(row)
        if self._mark_task is None or self._mark_task.done():
            self._mark_task = asyncio.create_task(self._flush_marks())
            self._marks.add(self._mark_task)
            self._mark_task.add_done_callback(self._marks.discard)

    async def _flush_marks(self) -> None:
        """Record the delivered rows, again every ``poll_interval`` while the store cannot write (the disk full,
        locked, ...): until then they stay pending in the database, and are not sent again (the worker skips
        them, and keeps its place in the queue). Given up at the stop: they are sent again after the restart."""
        failing = False
        while self._to_mark:
            rows, self._to_mark = self._to_mark, []
            try:
                await self.outbox.mark_delivered(*(r.seq for r in rows))
            except StoreUnavailable as exc:
                if self._stopping.is_set():  # the rows stay pending: sent again after the restart (at-least-once)
                    log.error("cannot record deliveries", extra={"rows": len(rows), "error": str(exc)})
                    self._recorded(rows)
                    continue
                if not failing:
                    log.error("cannot record deliveries; trying again every poll_interval, not sending them again",
                              extra={"rows": len(rows), "error": str(exc)})  # fmt: skip
                    failing = True
                self._to_mark = rows + self._to_mark
                await self._sleep(self.cfg.poll_interval)
                continue
            if failing:
                log.info("deliveries recorded again", extra={"rows": len(rows)})
                failing = False
            self._recorded(rows)

    def _recorded(self, rows: Sequence[OutboxRow]) -> None:
        for r in rows:
            self._unmarked[r.queue] -= 1
            self._delivered.discard(r.seq)

    async def _pending(self, queue: str, cursor: int) -> list[OutboxRow] | None:
        """The next pending rows past ``cursor``; None (after a pause) when the store cannot answer."""
        try:
            return await self.outbox.pending(queue, after_seq=cursor, limit=self.cfg.prefetch)
        except StoreUnavailable as exc:
            log.error("outbox read failed", extra={"queue": queue, "error": str(exc)})
            await self._sleep(self.cfg.poll_interval)
            return None

    async def _supervised(self, queue: str) -> None:
        """The worker of ``queue``, started again (after ``poll_interval``) whenever it ends before the drain
        or the stop: a fault in it (logged, counted as ``duisgw_outbox_worker_restarts_total``) must not leave
        the queue undelivered until the next restart of the gateway."""
        while True:
            fault: Exception | None = None
            try:
                await self._worker(queue)
            except Exception as exc:
                fault = exc
            if self._draining or self._stopping.is_set():
                if fault is not None:
                    log.error("delivery worker failed while stopping", extra={"queue": queue}, exc_info=fault)
                return
            log.error("delivery worker %s: restarting it", "failed" if fault else "ended before the stop",
                      extra={"queue": queue}, exc_info=fault)  # fmt: skip
            if self.metrics is not None:
                self.metrics.outbox_worker_restarts.labels(queue).inc()
            await self._sleep(self.cfg.poll_interval)

    async def _worker(self, queue: str) -> None:
        if self.cfg.window > 1:
            await self._window_worker(queue)
            return
        sender = self.senders[queue]
        wake = self._wake[queue]
        cursor = 0
        while not self._stopping.is_set():
            wake.clear()
            rows = await self._pending(queue, cursor)
            if rows is None:
                continue
            if not rows:
                if self._draining:
                    return
                cursor = await self._idle(queue, cursor)
                continue
            for row in rows:
                if not await self._deliver_one(queue, sender, row):
                    return  # stopping
                cursor = row.seq

    async def _idle(self, queue: str, cursor: int) -> int:
        """Nothing pending past ``cursor``: wait for new rows (or the poll interval) and return the cursor
        to read from next. Once every sent row is recorded as delivered that is the start of the queue,
        which picks up re-queued dead letters at their original position."""
        if cursor and not self._unmarked.get(queue):
            cursor = 0
        await self._sleep(self.cfg.poll_interval, self._wake[queue])
        return cursor

    async def _window_worker(self, queue: str) -> None:
        """``window > 1``: up to ``window`` rows in flight, dispatched in order, per-device order kept.

        A send that ends puts its task on ``finished`` (its done callback) and sets ``ended``: settling is
        O(1) per ended send, where ``asyncio.wait`` over the whole window would add and remove a callback
        on every task in flight for each one that ends (the window is full whenever delivery lags)."""
        sender = self.senders[queue]
        wake = self._wake[queue]
        window = self.cfg.window
        cursor = 0
        flight: dict[asyncio.Task[bool], str | None] = {}  # in-flight sends -> their device (None: barrier)
        devices: collections.Counter[str | None] = collections.Counter()  # the same, counted per device
        finished: collections.deque[asyncio.Task[bool]] = collections.deque()
        ended = asyncio.Event()
        stopped = False

        def on_done(task: asyncio.Task[bool]) -> None:
            finished.append(task)
            ended.set()

        async def settle(block: bool) -> None:
            """Take in the sends that ended; with ``block``, wait for one first if none has."""
            nonlocal stopped
            if not flight:
                return
            while block and not finished:
                ended.clear()
                await ended.wait()
            while finished:
                t = finished.popleft()
                device = flight.pop(t)
                devices[device] -= 1
                if not devices[device]:
                    del devices[device]
                if t.cancelled():
                    stopped = True
                elif (exc := t.exception()) is not None:
                    log.error(
                        "delivery task failed", extra={"queue": queue, "error": repr(exc)}, exc_info=exc
                    )
                    stopped = True
                elif not t.result():
                    stopped = True  # stopping, or draining with a row that must wait for its retry

        try:
            while not self._stopping.is_set() and not stopped:
                wake.clear()
                rows = await self._pending(queue, cursor)
                if rows is None:
                    continue
                if not rows:
                    if self._draining:
                        break
                    if flight:  # wait for a send to finish (or new rows) before reading again
                        if not finished:
                            ended.clear()
                            waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(ended.wait())]
                            try:
                                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                            finally:
                                for waiter in waiters:
                                    waiter.cancel()
                        await settle(False)
                        continue
                    cursor = await self._idle(queue, cursor)
                    continue
                for row in rows:
                    device = row.metadata.get("device") or None
                    while not stopped and (
                        len(flight) >= window
                        or None in devices
                        or (device is None and flight)
                        or (device is not None and device in devices)
                    ):
                        await settle(True)
                    if stopped or self._stopping.is_set():
                        break
                    task = asyncio.create_task(self._deliver_one(queue, sender, row))
                    task.add_done_callback(on_done)
                    flight[task] = device
                    devices[device] += 1
                    cursor = row.seq
                await settle(False)
        finally:
            while flight:  # sends in flight finish (or see the stop) before the worker ends
                await settle(True)

    async def _deliver_one(self, queue: str, sender: Sender, row: OutboxRow) -> bool:
        """Send ``row`` until delivered or dead-lettered; False when stopping first."""
        if row.seq in self._delivered:  # delivered, its record still to be committed: not sent again
            return True
        attempts, refusals = row.attempts, row.refusals
        # The stored retry time is wall-clock time (it must outlive a restart); the wait itself runs on the
        # monotonic clock and is never longer than the longest backoff, so a wall clock stepped back (or a
        # backoff_max lowered since the row was stored) cannot hold a row back by the step.
        stored_wait = min(max(0.0, row.next_attempt_at - self._clock()), self.cfg.backoff_max)
        due = time.monotonic() + stored_wait
        while True:
            if self._stopping.is_set():
                return False
            delay = due - time.monotonic()
            if delay > 0:
                if self._draining:
                    return False
                await self._sleep(delay, self._drained)  # (a drain that begins meanwhile ends the wait)
                continue
            self._in_flight += 1
            t0 = time.perf_counter()
            try:
                outcome = await sender.send(row)
            except Exception as exc:  # a sender's fault with this row: refused (it dead-letters), never fatal
                log.exception("sender failed on a row", extra={"queue": queue, "message_id": row.message_id})
                outcome = SendOutcome(False, refused=True, detail=f"sender error: {type(exc).__name__}: {exc}"[:300])
            finally:
                self._in_flight -= 1
            attempts += 1
            extra = {
                "queue": queue,
                "message_id": row.message_id,
                "destination": row.destination,
                "attempt": attempts,
            }
            if outcome.ok:
                if self.metrics is not None:
                    self.metrics.delivered(queue, time.perf_counter() - t0)
                log.debug("delivered", extra=extra)
                self._mark_delivered(row)
                return True
            if outcome.refused:
                refusals += 1
            counted = attempts if self.cfg.dead_letter_unreachable else refusals
            if self.metrics is not None:
                self.metrics.deliveries.labels(queue, "refused" if outcome.refused else "unreachable").inc()
            if self.cfg.max_attempts and counted >= self.cfg.max_attempts:
                log.error("dead-lettered after %d attempts: %s", attempts, outcome.detail, extra=extra)
                if self.metrics is not None:
                    self.metrics.deliveries.labels(queue, "dead").inc()
                # a dead letter the store cannot record now is recorded again every poll_interval, never sent
                # again meanwhile (that would POST it once per poll_interval, whatever the backoff); at the stop
                # it stays pending (sent again after the restart)
                while not await self._record(
                    self.outbox.dead_letter(row.seq, error=outcome.detail, refused=outcome.refused)
                ):
                    if self._stopping.is_set():
                        return False
                return True
            wait = self.backoff.delay(attempts)
            next_at, due = self._clock() + wait, time.monotonic() + wait
            log.warning("delivery failed, retrying: %s", outcome.detail, extra=extra)
            await self._record(
                self.outbox.mark_failed(
                    row.seq, error=outcome.detail, refused=outcome.refused, next_attempt_at=next_at
                )
            )

    async def _record(self, op: Awaitable[None]) -> bool:
        try:
            await op
        except StoreUnavailable as exc:
            log.error("cannot record delivery state", extra={"error": str(exc)})
            await self._sleep(self.cfg.poll_interval)
            return False
        return True

    async def refresh_stats(self) -> None:
        """Update the outbox depth / oldest-age / dead-letter gauges from the database."""
        if self.metrics is None:
            return
        stats = {s.queue: s for s in await self.outbox.stats()}
        now = self._clock()
        for queue in set(stats) | set(self.senders):
            s = stats.get(queue)
            self.metrics.outbox_depth.labels(queue).set(s.depth if s else 0)
            oldest = s.oldest_enqueued_at if s else None
            self.metrics.outbox_oldest_age.labels(queue).set(
                max(0.0, now - oldest) if oldest is not None else 0.0
            )
            self.metrics.outbox_dead.labels(queue).set(s.dead if s else 0)

    async def _housekeeping(self) -> None:
        last_purge = 0.0
        while not self._stopping.is_set():
            try:
                await self.refresh_stats()
                now = self._clock()
                if now - last_purge > 60.0:
                    last_purge = now
                    await self.outbox.purge_delivered(now - self.cfg.retention_seconds)
            except StoreUnavailable as exc:
                log.error("outbox housekeeping failed", extra={"error": str(exc)})
            await self._sleep(self._stats_interval)
