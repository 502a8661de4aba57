"""The engine on shared Redis state, with this instance's own SQLite store: a drop-in for
:class:`gateway.store.durable.DurableEngine` in the gateway processor (``[state] backend = "redis"``).

Theory of operation
===================

Decisions are taken against the state shared by every instance (:class:`RedisState`: one
compare-and-set transaction per message, see ``redis_state``). What stays per instance is what
the instance itself must deliver: the message's ORIGINAL bytes, its audit rows and the outbox
hand-off flags, in the same SQLite schema as the single-node store (so ``duisgw audit`` and the
processor's redelivery scan work unchanged on each instance).

``submit_many`` (one call per group-commit batch, in the processor's engine thread):

1. every event is decided in Redis, in order (the Redis commit is the decision: exactly once);
2. the batch is recorded in the local SQLite store in ONE transaction: the messages with their
   bytes, their decisions, and every message this batch *released* (a hold released by evidence
   or by the clock, possibly one another instance held: its event and bytes come from Redis);
3. the releases are acknowledged in Redis (their copies there are dropped);
4. the effects are returned: the processor acknowledges the senders and enqueues forwards.

A crash between 1 and 2 loses nothing: the senders were not acknowledged, so the DSP re-delivers
(to any instance), which finds the decision in Redis (a :class:`Duplicate`) and records it locally
with the bytes it just received; an unrecorded release is taken over by another instance after the
lease. The asyncio Redis client runs on a private event loop owned by the engine thread.

Holds survive a loss of the shared state
----------------------------------------
Every hold this instance commits is also recorded in its store (table ``shared_holds``: the held record
as committed, with its route), in the batch's own SQLite transaction — and so is a hold still held that a
message of the batch was answered as a duplicate of (this instance's own, committed in a batch that failed
and was decided again job by job; or another instance's, re-delivered here, under its id or under the other id
of the same bytes); a row goes when this instance
releases the hold, or when a periodic check (every ``_PRUNE_EVERY`` s, under the same epoch) finds it no
longer held (another instance released it). When the shared state is lost (Redis restarted empty, a
failover to a replica without it: :meth:`RedisState._sync_shared` notices it by its epoch, at any load,
commit or tick), the next tick re-submits each recorded hold that is neither held nor has an idempotency
key (:meth:`RedisState.restore_hold`) BEFORE it releases anything: held again with its original deadline,
so it is released (delivered or suppressed, per the engine) by that deadline as any hold — never lost
after its 202. Only then is the epoch recorded in the store (``meta`` ``shared-epoch``): an instance that
dies before (or was stopped during the loss) recovers at its next start, which finds its recorded epoch
gone. A hold committed in the same batch before the tick that recovered is not among the rows yet: it is
held again before the batch is answered (each transaction carries the epoch it committed under). Decisions are not refused meanwhile (see docs/SCALE-OUT.md, *Losing the shared state*).

Activations survive a loss of the shared state
----------------------------------------------
Every activation record this instance commits (11.3 request / response, 8F66 / 8F67, a cancellation and what it
retracts) is recorded in its store too (table ``shared_activations``: the newest version of each, as its Redis
commit wrote it, with the gateway time at which retention prunes it), in the batch's own SQLite transaction; a
row goes when this instance's commit prunes the record, when the periodic check finds the gateway clock past its
retention, or at a recovery that finds it past it. After a loss, the recovery (the same tick, before the holds)
writes them back, each ESME's in one transaction (:meth:`RedisState.restore_activations`): a version only where
the state has none of that record, or one whose evidence it includes all of (evidence is only appended to a
record: a version written since the loss knowing evidence this one lacks is never overwritten), a pending
future-dated one retracted by a cancellation taken since. The activations a batch committed before the loss its
tick noticed are written back before the batch is answered (:meth:`SharedEngine._give_back_lost_in_batch`).

A Redis that does not answer
----------------------------
Every call to Redis is bounded (:data:`gateway.store.redis_state.COMMAND_TIMEOUT`, on every client the instance
makes). A call Redis did not answer within it holds the engine thread's calls after it off for as long
(:meth:`SharedEngine._run`): each fails at once (the processor answers 503: nothing acknowledged), so a backlog of
jobs — a failed batch is decided again job by job — and a graceful stop's drain do not wait out the timeout once per
job. The close's own call is never held off.

Catching up with a long learned list while idle
-----------------------------------------------
An instance behind the shared learned list (:attr:`RedisState.lagging`: rows published back after a loss, a
compaction of rows it had not read) applies a page of it per load and about ``catch_up_budget`` per tick on its
engine loop; an AD1 its links would suppress or hold is forwarded until it has caught up. An idle instance
(nothing to decide) used to catch up at that tick's rate only: about 0.6 s per 1,000 rows at a 1 s tick (14 min at
1.4 M rows), forwarding meanwhile every AD1 it would suppress or hold. So while it lags by more than a page, a
thread of its own (:meth:`SharedEngine._catch_up_aside`, with its own synchronous Redis connection) reads pages of
the list and applies them in slices of about ``aside_budget`` seconds, each only while the engine thread is idle:
every call into the engine (:meth:`SharedEngine._run`) and every slice take turns (:class:`_Turns`), a call waiting
for a slice in progress at most (never for the catch-up), and a slice starting only once no call is in progress or
waiting and none ended for ``_ASIDE_QUIET`` (an engine deciding a message every few ms gets no slice: it catches up
by its loads, as before). The ticks leave the catch-up to the thread while it runs
(:attr:`RedisState.catching_up_aside`); the loads still apply a page each. The thread applies the rows as a load
does (:meth:`RedisState.aside_apply`: each once, in the list's order, only rows of the list the instance reads,
the epoch and generation checked in each turn) and ends once every row is applied, or when the list is not the
one it read any more (a loss, a compaction: the next call brings the instance up to date and starts it again).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import redis

from gateway.engine.activation import Activation, expires_at
from gateway.engine.config import EngineConfig
from gateway.engine.effects import Action, Decision, Duplicate, Effect, Observed, StateChange, Table
from gateway.engine.errors import StoreError
from gateway.engine.events import (
    UNSIGNED_MARK,
    ActivationRequested,
    ActivationResponse,
    Event,
    FutureDatedOutcome,
    MessageEvent,
    Tick,
    unsigned_id,
)
from gateway.engine.ports import InventoryView, ScopeView
from gateway.engine.records import from_record, to_record
from gateway.engine.state import HeldMessage
from gateway.store.redis_state import (
    _UNREADABLE,
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    RedisState,
    RedisStateConfig,
    Released,
    _us,
    partition_keys,
)
from gateway.store.sqlite import SqliteStore

__all__ = ["SharedEngine"]

T = TypeVar("T")

_CONCURRENCY = 32  # messages of one batch in flight to Redis at once

_log = logging.getLogger("duisgw.shared")

#: the holds this instance committed and no one released yet, as it committed them (see the module doc)
_HOLDS_SCHEMA = """CREATE TABLE IF NOT EXISTS shared_holds (
    message_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    destination TEXT,
    kind TEXT
) WITHOUT ROWID"""
#: the newest version of each activation record this instance committed, as committed, until retention would prune
#: it (``expires``: :func:`gateway.engine.activation.expires_at`, µs since 1970 on the gateway clock). A rowid table
#: (its rows, ~700 bytes, are too long for WITHOUT ROWID) without an index on ``expires`` (the periodic prune scans
#: it, bounded by the retention): with both, recording 256 activation changes took 15-20 ms more per batch
_ACTIVATIONS_SCHEMA = """CREATE TABLE IF NOT EXISTS shared_activations (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    expires INTEGER NOT NULL
)"""
_EPOCH_META = "shared-epoch"  # the shared state's epoch this store's holds were last recovered in
_PRUNE_EVERY = 30.0  # seconds between the checks that drop the recorded holds another instance released
#: a slice of the idle catch-up (:meth:`SharedEngine._catch_up_aside`) applies learned rows for about this long
#: (seconds): the longest a decision waits for it
_ASIDE_BUDGET = 0.01
#: the idle catch-up starts a slice only once the engine thread made no call for this long (seconds): an engine
#: deciding a message every few ms is busy, and catches up by its loads (a page each)
_ASIDE_QUIET = 0.02
#: after a failure of the idle catch-up (Redis unreachable ...), seconds before a batch starts it again
_ASIDE_RETRY = 5.0


class _Turns:
    """The engine thread's calls into the shared state and the idle catch-up's slices take turns (see the module
    doc): a call waits only for a slice in progress, and a slice starts only once no call is in progress or
    waiting for its turn and none ended in the last ``quiet`` seconds (the engine is idle: a busy one, deciding
    a message every few ms, catches up by its loads, a page each, without waiting for slices)."""

    def __init__(self, quiet: float) -> None:
        self._cond = threading.Condition()
        self._calls = 0  # engine-thread calls in progress or waiting for their turn
        self._slice = False  # a slice of the catch-up in progress
        self._ended = -1e18  # time.monotonic() at which the last call ended
        self.quiet = quiet
        self.stopping = False

    def call_begins(self) -> None:
        with self._cond:
            self._calls += 1
            while self._slice:
                self._cond.wait()

    def call_ends(self) -> None:
        with self._cond:
            self._calls -= 1
            self._ended = time.monotonic()
            self._cond.notify_all()

    def slice_begins(self) -> bool:
        """Wait until no call is in progress or waiting and none ended for ``quiet`` seconds; False when stopping
        (no slice then)."""
        with self._cond:
            while not self.stopping:
                if self._calls:
                    self._cond.wait()
                    continue
                idle = time.monotonic() - self._ended
                if idle >= self.quiet:
                    break
                self._cond.wait(self.quiet - idle)
            if self.stopping:
                return False
            self._slice = True
            return True

    def slice_ends(self) -> None:
        with self._cond:
            self._slice = False
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopping = True
            self._cond.notify_all()


class SharedEngine:
    """Engine state in Redis, this instance's messages and audit in ``store`` (see the module doc).

    Offers what :class:`GatewayProcessor` uses of a :class:`DurableEngine`: ``submit_many``,
    ``store``, ``recovered``, plus ``clock`` and ``held_count`` (shared, as last seen)."""

    def __init__(
        self,
        store: SqliteStore,
        redis_config: RedisStateConfig,
        config: EngineConfig,
        scope: ScopeView,
        inventory: InventoryView,
    ) -> None:
        self.store = store
        self.config = config
        self._loop = asyncio.new_event_loop()
        self.state = RedisState(redis_config, config, scope, inventory)
        #: after a call Redis did not answer, the calls are refused at once for this long (seconds; :meth:`_run`)
        self.unanswered_hold_off = COMMAND_TIMEOUT
        self._unanswered_until = -1e18  # time.monotonic() until which calls are refused
        self._unanswered = False  # the last call that ended was one Redis did not answer (logged once a streak)
        self._turns = _Turns(_ASIDE_QUIET)
        #: the idle catch-up with the learned list (see the module doc): whether a lagging instance runs it, the
        #: length of its slices (seconds), its thread, when it last failed (time.monotonic())
        self.catch_up_aside = True
        self.aside_budget: float = _ASIDE_BUDGET
        self._aside: threading.Thread | None = None
        self._aside_failed = -1e18
        try:
            self._run(self.state.start())
            self._epoch = self._in_store(_open_holds)
            self._in_store(_open_activations)
        except BaseException:
            self._close_redis()
            raise
        self.recovered: list[Effect] = []
        self._pruned = time.monotonic()
        if self._epoch is None:  # the first start on this store (or of this version): nothing to compare
            self._epoch = self.state.epoch
            self._in_store(lambda db: _set_epoch(db, self.state.epoch))
        elif self._epoch != self.state.epoch:
            self.state.lost += 1
            _log.error("shared state LOST while this instance was stopped (epoch %s -> %s): the holds and activations "
                       "it recorded are re-submitted at its first tick", self._epoch, self.state.epoch,
                       extra={"instance": self.state.instance})  # fmt: skip

    # ------------------------------------------------------------------ plumbing

    def _run(self, coro: Coroutine[Any, Any, T], *, closing: bool = False) -> T:
        """Run ``coro`` on this engine's loop, in turn with the idle catch-up (:class:`_Turns`: it waits at most
        for a slice in progress); once done, start the catch-up if this instance lags behind the learned list.

        A call that Redis did not answer within :data:`COMMAND_TIMEOUT` (a hung server) holds the calls after it off
        for ``unanswered_hold_off`` seconds: each fails at once (:class:`StoreError`, answered 503: nothing is
        acknowledged, the sender re-delivers) instead of waiting out the timeout again — a failed batch is decided
        again job by job, and a backlog of N jobs used to take N timeouts, a graceful stop with it. ``closing``: the
        close's own call, never held off (the connections are closed whatever Redis does)."""
        if not closing:
            wait = self._unanswered_until - time.monotonic()
            if wait > 0:
                coro.close()
                raise StoreError(f"shared state: Redis did not answer within {COMMAND_TIMEOUT:g} s (hung?): not called "
                                 f"for {wait:.1f} s more")  # fmt: skip
        self._turns.call_begins()
        try:
            out = self._loop.run_until_complete(coro)
            if self._unanswered and not closing:
                self._unanswered = False
                _log.warning("shared state: Redis answers again", extra={"instance": self.state.instance})
            return out
        except (redis.TimeoutError, TimeoutError):
            if not closing:
                self._unanswered_until = time.monotonic() + self.unanswered_hold_off
                if not self._unanswered:
                    self._unanswered = True
                    _log.error("shared state: Redis did not answer within %g s: the calls of the next %g s are refused "
                               "at once (503), then tried again", COMMAND_TIMEOUT, self.unanswered_hold_off,
                               extra={"instance": self.state.instance})  # fmt: skip
            raise
        finally:
            self._turns.call_ends()
            try:
                self._start_aside()
            except Exception:  # (no thread to be had: the loads and ticks catch up; never the call's own outcome)
                self.state.catching_up_aside = False
                self._aside_failed = time.monotonic()
                _log.exception("shared state: the idle catch-up with the learned list could not start")

    # ------------------------------------------------------------------ the idle catch-up with the learned list

    def _start_aside(self) -> None:
        """Start the idle catch-up (:meth:`_catch_up_aside`) when this instance lags behind the learned list by more
        than a page (the rows other instances' commits append, a few at a time, are read by the next load) and it
        is not running (nor stopped, nor failed in the last ``_ASIDE_RETRY`` seconds)."""
        state = self.state
        if not (self.catch_up_aside and state.lagging and 0 < state.learned_page < state.learned_behind):
            return
        if self._turns.stopping:
            return
        if self._aside is not None and self._aside.is_alive():
            return
        if time.monotonic() - self._aside_failed < _ASIDE_RETRY:
            return
        state.catching_up_aside = True
        thread = threading.Thread(target=self._catch_up_aside, name="duisgw-learned-catch-up", daemon=True)
        thread.start()
        self._aside = thread  # (only once started: close joins it)

    def _catch_up_aside(self) -> None:
        """The idle catch-up (the thread's body): read a page of the learned list where this instance is (its own
        Redis connection; outside the turns), apply it in slices of about ``aside_budget`` seconds, each in its turn
        (:class:`_Turns`: while the engine thread decides nothing), until every row of the list as last seen is
        applied, the rows read are not of the list this instance reads any more (the state lost, the list
        compacted: the next load or tick brings it up to date, and the next batch starts the catch-up again), the
        engine is closed, or a read fails (logged; a batch starts it again ``_ASIDE_RETRY`` seconds later)."""
        state = self.state
        turns = self._turns
        client: redis.Redis = redis.Redis.from_url(state.config.url, socket_timeout=COMMAND_TIMEOUT,
                                                   socket_connect_timeout=CONNECT_TIMEOUT)  # fmt: skip
        applied = 0
        began = time.monotonic()
        try:
            while True:
                if not turns.slice_begins():
                    return
                try:
                    where = state.aside_position()
                finally:
                    turns.slice_ends()
                if where is None:
                    break
                read, rows, n = state.aside_read(client, where)
                if not rows:
                    return  # (the list is shorter than this instance last saw: the next load or tick sees to it)
                end = where[2] + len(rows)
                reached: int | None = where[2]
                while reached is not None and reached < end:
                    if not turns.slice_begins():
                        return
                    try:
                        before = state.learned_offset
                        reached = state.aside_apply(where, read, rows, n, self.aside_budget)
                        applied += 0 if reached is None else max(0, reached - before)
                    finally:
                        turns.slice_ends()
                if reached is None:
                    return  # not the list this instance reads any more
            if applied:
                _log.info("shared state: caught up with the learned list while idle (%d rows applied in %.1f s)",
                          applied, time.monotonic() - began, extra={"instance": state.instance})  # fmt: skip
        except Exception as exc:
            self._aside_failed = time.monotonic()
            _log.warning("shared state: catching up with the learned list while idle stopped (%s); the loads and "
                         "ticks go on catching up, and it starts again", exc,
                         extra={"instance": state.instance})  # fmt: skip
        finally:
            state.catching_up_aside = False  # (the ticks catch up again; one skipped meanwhile costs nothing)
            client.close()

    def _stop_aside(self) -> None:
        self._turns.stop()
        thread = self._aside
        if thread is not None:
            thread.join(15.0)
            self._aside = None

    def _in_store(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in a transaction of this instance's store (nothing else is buffered then)."""
        out: list[T] = []
        self.store.commit(also=lambda db: out.append(fn(db)))
        return out[0]

    def _close_redis(self) -> None:
        if self._loop.is_closed():
            return
        self._stop_aside()
        try:
            self._run(self.state.aclose(), closing=True)
        finally:
            self._loop.close()

    def close(self) -> None:
        """Close the local store and the Redis connection (in the engine thread)."""
        try:
            self.store.close()
        finally:
            self._close_redis()

    @property
    def clock(self) -> datetime | None:
        """The shared gateway clock as last seen by this instance."""
        return self.state.clock

    @property
    def held_count(self) -> int:
        """Messages held across every instance, as of this instance's last commit or tick."""
        return self.state.held_count

    # ------------------------------------------------------------------ routes of held messages
    # (shared by the hold's own commit: see ``submit_many``'s ``routes``)

    def routes(self, mids: Sequence[str]) -> dict[str, str]:
        return self._run(self.state.routes(mids))

    def route_kinds(self, mids: Sequence[str]) -> dict[str, str]:
        """The DUIS kinds shared with the routes of these messages (those known)."""
        return self._run(self.state.route_kinds(mids))

    # ------------------------------------------------------------------ operator releases

    def take_in_operator_releases(self) -> list[tuple[str, str]]:
        """:meth:`DurableEngine.take_in_operator_releases` on shared state: first mark each released AD1's
        suppressed-outage record released in Redis (:meth:`RedisState.release_by_operator`, one atomic
        compare-and-set each, idempotent), then flag the releases taken in, in this instance's store, in
        one transaction (each returned once, ever). If Redis cannot be reached nothing is flagged and the
        next scan takes them in again; a crash between the two only repeats the (idempotent) marking."""
        store = self.store
        pending = store.operator_releases()
        if not pending:
            return []
        for seq, mid, _kind in pending:
            outage = self._released_outage(mid, seq)
            if outage is not None:
                self._run(self.state.release_by_operator(mid, *outage))
            elif UNSIGNED_MARK in mid:
                # an inline message quarantined under its unsigned id (no hub when it is not an AD1): its key is
                # marked released, so the same bytes signed later are its duplicate on every instance (§8)
                self._run(self.state.release_by_operator(mid, None, self._released_life(mid, seq)))
        try:
            store.take_in_operator_releases(seq for seq, _mid, _kind in pending)
            store.commit()
        except BaseException:
            store.rollback()
            raise
        return [(mid, kind) for _seq, mid, kind in pending]

    def _released_outage(self, mid: str, seq: int) -> tuple[int, datetime | None] | None:
        """The Comms Hub of the suppressed AD1 ``mid`` whose operator release is decision ``seq`` of this instance's
        audit, and the life released: the time of the suppression decision the release followed (None: not
        readable), from that decision (a message released by an operator here was suppressed here or recorded here
        with its decision). None: no suppression of it with a hub here."""
        for row in reversed(self.store.audit(mid)):
            if int(row.get("seq", 0)) >= seq:
                continue  # (the release itself, or a later life's decisions)
            if row.get("action") in ("suppress", "release-suppress") and isinstance(row.get("ch"), int):
                try:
                    life: datetime | None = datetime.fromisoformat(str(row.get("decided_at")))
                except ValueError:
                    life = None
                return int(row["ch"]), life
        return None

    def _released_life(self, mid: str, seq: int) -> datetime | None:
        """The time of the suppression decision (a quarantine's) that the operator release ``seq`` of ``mid``
        followed in this instance's audit (None: not found or not readable)."""
        for row in reversed(self.store.audit(mid)):
            if int(row.get("seq", 0)) < seq and row.get("action") == "suppress":
                try:
                    return datetime.fromisoformat(str(row.get("decided_at")))
                except ValueError:
                    return None
        return None

    # ------------------------------------------------------------------ decisions

    def submit(self, event: Event, raw: bytes | None = None) -> list[Effect]:
        return self.submit_many([(event, raw)])[0]

    def submit_many(
        self, items: Sequence[tuple[Event, bytes | None]], routes: Mapping[str, tuple[str, str]] | None = None
    ) -> list[list[Effect]]:
        """Decide every item in Redis, record the batch locally in one transaction, return the effects.

        ``routes``: message id → ``(DNO destination, DUIS kind)`` as the ingress recorded them; a message
        held here has its route written in the same Redis commit as its hold (another instance may
        release it and must know where to deliver it: no instance ever sees the hold without it)."""
        return self._run(self._submit_many(items, routes or {}))

    async def _submit_many(
        self, items: Sequence[tuple[Event, bytes | None]], routes: Mapping[str, tuple[str, str]]
    ) -> list[list[Effect]]:
        state = self.state
        results: list[list[Effect]] = [[] for _ in items]
        releases: list[list[Released]] = [[] for _ in items]
        decided_by = ["" for _ in items]  # a duplicate's decider
        texts: dict[int, str] = {}  # the JSON text of each activation record committed, by id(record)
        epochs: list[str | None] = [None for _ in items]  # the epoch each decision committed under
        gate = asyncio.Semaphore(_CONCURRENCY)

        async def one(i: int, event: Event, raw: bytes | None, deps: list[asyncio.Task[None]]) -> None:
            if deps:
                await asyncio.gather(*deps)
            async with gate:
                if isinstance(event, Tick):
                    # the shared state lost: activations given back and holds held again BEFORE releasing anything
                    await self._recover_holds(event.now)
                    txs, taken = await state.tick(event.now)
                    for tx in txs:
                        texts.update(tx.texts)
                    results[i] = [eff for tx in txs for eff in tx.effects] + [r.decision for r in taken]
                    releases[i] = [r for tx in txs for r in tx.released] + taken
                else:
                    tx = await state.decide(event, raw, routes.get(event.message_id))
                    results[i], releases[i], decided_by[i] = tx.effects, tx.released, tx.decided_by
                    epochs[i] = tx.epoch
                    texts.update(tx.texts)

        # Messages of one batch that touch disjoint partitions are decided concurrently; a message
        # waits for every earlier one of the batch sharing a partition or its id (so their order is
        # kept), and a tick waits for everything before it and holds back everything after it.
        tasks: list[asyncio.Task[None]] = []
        last: dict[str, asyncio.Task[None]] = {}
        barrier: asyncio.Task[None] | None = None
        for i, (event, raw) in enumerate(items):
            if isinstance(event, Tick):
                deps = list(tasks)
                keys: set[str] = set()
            else:
                keys = partition_keys(state.keys.prefix, event, state.inventory) | {f"id:{event.message_id}"}
                deps = [last[k] for k in keys if k in last]
                if barrier is not None:
                    deps.append(barrier)
            task = asyncio.create_task(one(i, event, raw, deps))
            tasks.append(task)
            if isinstance(event, Tick):
                barrier = task
            for k in keys:
                last[k] = task
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # one failed (Redis unreachable...): the batch is answered 503. Its other transactions must not
            # go on committing on this private loop during a LATER batch (out of order with it): cancel
            # them and wait for them here (a cancelled one committed all or nothing in Redis)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        await self._give_back_lost_in_batch(items, results, epochs)
        await self._hold_again_lost_in_batch(items, results, epochs, routes)
        kept = await self._held_duplicates(items, results, routes)
        kept_acts = await self._activation_duplicates(items, results, texts)
        flat = [r for rs in releases for r in rs]
        self._record(items, results, flat, decided_by, routes, kept, texts, kept_acts)
        await state.ack_releases(r.decision.message_id for r in flat)
        await state.wait_replicas()
        return results

    def _record(
        self,
        items: Sequence[tuple[Event, bytes | None]],
        results: Sequence[list[Effect]],
        releases: Sequence[Released],
        decided_by: Sequence[str] = (),
        routes: Mapping[str, tuple[str, str]] | None = None,
        kept: Mapping[str, tuple[str, str | None, str | None]] | None = None,
        texts: Mapping[int, str] | None = None,
        kept_acts: Mapping[str, Activation] | None = None,
    ) -> None:
        """Record the batch in this instance's store, in one transaction. Every decision's audit record
        names the instance that took it (``decided_by``); one another instance took, recorded here because
        a re-delivery of its message reached this instance (a :class:`Duplicate` of an id this store does
        not have), is also marked ``recorded_as = "duplicate"``: it is this instance's to deliver, not a
        decision of its own (``duisgw audit export --local`` leaves it out). Each hold this batch committed
        is recorded with its route (``routes``) in ``shared_holds``, each release this instance decided
        drops its row (see "Holds survive a loss of the shared state"); so is each hold ``kept`` (a duplicate
        of a hold still held, :meth:`_held_duplicates`) unless a row of it is there already. The newest version of
        each activation record the batch committed is recorded in ``shared_activations`` (one it pruned, past
        retention, is dropped: see "Activations survive a loss of the shared state"), as the JSON text its Redis
        commit wrote (``texts``, by ``id()`` of the record: not encoded twice); so is each activation record in
        ``kept_acts`` (a duplicate's: :meth:`_activation_duplicates`) of which the batch committed no version."""
        store = self.store
        me = self.state.instance
        owners = {id(r.decision): r.owner or me for r in releases}
        holds: dict[str, tuple[str, str | None, str | None] | None] = {}
        acts: dict[str, Activation | None] = dict(kept_acts or {})
        for effects in results:
            for eff in effects:
                if not isinstance(eff, StateChange):
                    continue
                if eff.table is Table.HELD:
                    route = (routes or {}).get(eff.key)
                    holds[eff.key] = None if eff.value is None else (
                        json.dumps(to_record(eff.value), separators=(",", ":")),
                        None if route is None else route[0], None if route is None else route[1] or None,
                    )  # fmt: skip
                elif eff.table is Table.ACTIVATION:  # (in commit order: the last is the newest version)
                    acts[eff.key] = eff.value if isinstance(eff.value, Activation) else None
        try:
            for i, ((event, raw), effects) in enumerate(zip(items, results, strict=True)):
                if isinstance(event, Tick):
                    for eff in effects:
                        if isinstance(eff, Decision):
                            store.apply([eff], {"decided_by": owners.get(id(eff), me)})
                    continue
                store.accept(event, raw)
                for eff in effects:
                    if isinstance(eff, Duplicate):
                        if eff.message_id == event.message_id and store.status(eff.message_id) is None:
                            if eff.original is not None and eff.original.message_id != eff.message_id:
                                # the same bytes decided under their other id (their XML signature verified at
                                # one delivery and not at the other, docs/ENGINE.md §8): taken in as a duplicate,
                                # as the single-node store does (observed, reason duplicate), with no decision of
                                # its own (that id's decision is not this one's, and may not be this instance's)
                                store.apply([eff])
                            # decided elsewhere (or before a crash here): keep the bytes and the decision here too
                            elif eff.original is not None:
                                by = decided_by[i] if i < len(decided_by) and decided_by[i] else "unknown"
                                store.apply([eff.original], {"decided_by": by, "recorded_as": "duplicate"})
                            else:
                                store.apply([Observed(eff.message_id, event.kind, True, "duplicate")])
                    elif isinstance(eff, Decision):
                        store.apply([eff], {"decided_by": owners.get(id(eff), me)})
                        if eff.message_id == event.message_id:
                            # decided afresh (the Redis commit is the decision, once per life): a re-delivery
                            # after the retention is a new life, its row takes it and delivered = 0
                            store.decided_afresh(eff.message_id)
                    elif isinstance(eff, Observed):
                        store.apply([eff])
            for r in releases:  # their decisions are among the effects already
                store.accept(r.event, r.raw)
            store.commit(also=functools.partial(_write_recorded, holds=holds, kept=kept or {}, acts=acts,
                                                texts=texts or {}, config=self.config)
                         if holds or kept or acts else None)  # fmt: skip
        except BaseException:
            store.rollback()
            raise

    # ------------------------------------------------------------------ holds after a loss of the shared state

    def _lost_in_batch(
        self,
        items: Sequence[tuple[Event, bytes | None]],
        results: Sequence[list[Effect]],
        epochs: Sequence[str | None],
    ) -> Iterator[tuple[MessageEvent, bytes | None, list[Effect]]]:
        """The messages of this batch committed under an epoch lost since, once this instance has recovered in
        the epoch in force (a tick later in the batch noticed the loss); none otherwise (the common case: one
        test for the batch)."""
        if self._epoch != self.state.epoch or all(under is None or under == self._epoch for under in epochs):
            return
        for (event, raw), effects, under in zip(items, results, epochs, strict=True):
            if under is not None and under != self._epoch and not isinstance(event, Tick):
                yield event, raw, effects

    async def _give_back_lost_in_batch(
        self,
        items: Sequence[tuple[Event, bytes | None]],
        results: Sequence[list[Effect]],
        epochs: Sequence[str | None],
    ) -> None:
        """Before the batch is answered: write back the activation records it committed under an epoch lost
        since, when this instance has given back its recorded activations in the epoch in force already (a tick
        later in the batch noticed the loss: their rows are written by :meth:`_record`, after it), as
        :meth:`_hold_again_lost_in_batch` does for holds. A version committed later in the batch in the new
        state knows all the evidence of this one, and is left as it is."""
        state = self.state
        newest: dict[str, Activation] = {}
        for _event, _raw, effects in self._lost_in_batch(items, results, epochs):
            for eff in effects:
                if isinstance(eff, StateChange) and eff.table is Table.ACTIVATION and isinstance(eff.value, Activation):
                    newest[eff.key] = eff.value
        by_esme: dict[int, list[Activation]] = {}
        for act in newest.values():
            by_esme.setdefault(act.esme, []).append(act)
        restored = 0
        for esme, acts in sorted(by_esme.items()):
            done, _past = await state.restore_activations(esme, acts)
            restored += len(done)
        if restored:
            _log.warning("shared state: %d activations committed in this batch before the loss its tick noticed are "
                         "given back", restored, extra={"instance": state.instance})  # fmt: skip

    async def _hold_again_lost_in_batch(
        self,
        items: Sequence[tuple[Event, bytes | None]],
        results: Sequence[list[Effect]],
        epochs: Sequence[str | None],
        routes: Mapping[str, tuple[str, str]],
    ) -> None:
        """Before the batch is answered: hold again each hold it committed under an epoch lost since, when this
        instance has recovered its holds in the epoch in force already — a tick later in the batch noticed the
        loss and held again what the store recorded, but not these: their rows are written by :meth:`_record`,
        after it. (While the loss is not recovered yet, the next tick's :meth:`_recover_holds` finds them
        among the rows.) :meth:`RedisState.restore_hold` does nothing for one held or decided since."""
        state = self.state
        restored = 0
        for event, raw, effects in self._lost_in_batch(items, results, epochs):
            held = [eff.value for eff in effects if isinstance(eff, StateChange) and eff.table is Table.HELD
                    and eff.key == event.message_id and isinstance(eff.value, HeldMessage)]  # fmt: skip
            for value in held:
                if await state.restore_hold(value, raw, routes.get(event.message_id)):
                    restored += 1
        if restored:
            _log.warning("shared state: %d holds committed in this batch before the loss its tick noticed are held "
                         "again (released by their original deadline)", restored,
                         extra={"instance": state.instance})  # fmt: skip

    async def _held_duplicates(
        self,
        items: Sequence[tuple[Event, bytes | None]],
        results: Sequence[list[Effect]],
        routes: Mapping[str, tuple[str, str]],
    ) -> dict[str, tuple[str, str | None, str | None]]:
        """The ``shared_holds`` rows of the messages of this batch answered as a duplicate of a hold still held
        (its record, as committed, from Redis; the route given with the message, else the shared one), keyed by
        the hold's id. Such a hold may be this instance's own, committed in a batch that failed after it (the
        processor decides each job again alone: the hold comes back as a duplicate of itself, and its row was
        never written), or another instance's, re-delivered here — under the hold's id, or under the id the same
        bytes have when their XML signature did not verify at this delivery (docs/ENGINE.md §8; its bytes are kept
        under that id here: :meth:`_held_bytes`): recorded by both, it is held again once after a loss
        (:meth:`RedisState.restore_hold` commits only while the message has no idempotency key, atomically:
        the second instance's finds the first's) — and by this one if its holder never comes back."""
        want: dict[str, str] = {}  # the hold's id -> the id of the delivery answered as its duplicate
        for (event, _raw), effects in zip(items, results, strict=True):
            if isinstance(event, Tick):
                continue
            for eff in effects:
                if (isinstance(eff, Duplicate) and eff.message_id == event.message_id and eff.original is not None
                        and eff.original.action is Action.HOLD):  # fmt: skip
                    # the hold's own id: the delivery's, or the id its bytes were held under when their XML
                    # signature verified at the hold and not at this delivery (docs/ENGINE.md §8). Looked up
                    # under the delivery's marked id, a hold re-delivered so was recorded nowhere here
                    want.setdefault(eff.original.message_id, eff.message_id)
        if not want:
            return {}
        out: dict[str, tuple[str, str | None, str | None]] = {}
        for mid, (record, dest, kind) in (await self.state.held_records(list(want))).items():
            try:
                text = record.decode()
                from_record(HeldMessage, json.loads(text))
            except Exception:  # (a newer version's hold: that version's instances record it)
                continue
            route = routes.get(want[mid])
            out[mid] = (text, dest, kind) if route is None else (text, route[0], route[1] or None)
        return out

    async def _activation_duplicates(
        self,
        items: Sequence[tuple[Event, bytes | None]],
        results: Sequence[list[Effect]],
        texts: dict[int, str],
    ) -> dict[str, Activation]:
        """The activation records (as the state holds them now) that a message of this batch answered as a duplicate
        contributed evidence to: activation evidence (11.3 request or response, 8F66/8F67) whose own commit was not
        recorded here — this instance's, committed in a batch whose local commit then failed (the processor decides
        each job again alone: a duplicate of itself, with no state change), or another instance's, re-delivered
        here. Recorded like a version this instance committed (``texts`` gets their JSON as stored), they are given
        back after a later loss: the version the state holds includes the evidence of the one committed (evidence
        is only ever appended to a record), and :meth:`RedisState.restore_activations` never writes one over a
        version knowing more. Nothing for a batch without such a duplicate (no Redis call)."""
        want: dict[int, set[str]] = {}
        for (event, _raw), effects in zip(items, results, strict=True):
            if not isinstance(event, ActivationRequested | ActivationResponse | FutureDatedOutcome):
                continue
            if any(isinstance(eff, Duplicate) and eff.message_id == event.message_id for eff in effects):
                want.setdefault(event.esme, set()).add(event.message_id)
        if not want:
            return {}
        out: dict[str, Activation] = {}
        for esme, records in (await self.state.activation_records(sorted(want))).items():
            for key, record in records:
                try:
                    text = record.decode()
                    act = from_record(Activation, json.loads(text))
                except Exception:  # (a newer version's record: that version's instances record it)
                    continue
                if any(item.message_id in want[esme] for item in act.evidence):
                    out[key] = act
                    texts[id(act)] = text
        return out

    async def _recover_holds(self, now: datetime | None = None) -> None:
        """At every tick (at ``now``), before anything is released: when the shared state's epoch is not the one
        this store's holds were last recovered in (the state was lost: see the module doc), write back the
        activations this instance recorded (:meth:`_recover_activations`: the evidence the holds' releases
        read), hold again each hold it recorded (:meth:`RedisState.restore_hold`: nothing for one held or
        decided since), then record the epoch; a loss during that starts it over. Otherwise, every
        ``_PRUNE_EVERY`` seconds, drop the recorded holds that are no longer held (another instance released
        them) and the recorded activations past retention by the gateway clock."""
        state = self.state
        await state.check_shared()
        while state.epoch != self._epoch:
            epoch = state.epoch
            await self._recover_activations(now)
            if state.epoch != epoch:
                continue  # lost again meanwhile: everything again, in the state now in force
            rows = self._in_store(_recorded_holds)
            restored = 0
            for mid, record, destination, kind in rows:
                try:
                    held = from_record(HeldMessage, json.loads(record))
                except Exception as exc:  # (written by another version?) the others are recovered all the same
                    _log.error("shared state: a recorded hold cannot be read, not held again: %s", exc,
                               extra={"message_id": mid})  # fmt: skip
                    continue
                route = None if destination is None else (destination, kind or "")
                if await state.restore_hold(held, self._held_bytes(mid, held), route):
                    restored += 1
            if state.epoch != epoch:
                continue  # lost again meanwhile: every hold again, in the state now in force
            self._in_store(functools.partial(_set_epoch, epoch=epoch))
            self._epoch = epoch
            if rows:
                _log.warning("shared state: %d of the %d holds this instance recorded are held again after the loss "
                             "(released by their original deadline; the others were held or decided already)",
                             restored, len(rows), extra={"instance": state.instance})  # fmt: skip
            return
        if time.monotonic() - self._pruned >= _PRUNE_EVERY:
            await self._prune_holds()
            clock = state.clock
            if clock is not None:
                self._in_store(functools.partial(_drop_expired_activations, clock=_us(clock)))

    def _held_bytes(self, mid: str, held: HeldMessage) -> bytes | None:
        """The original bytes of the recorded hold ``mid`` in this instance's store: under the hold's id, else (this
        instance received them only as a re-delivery whose XML signature did not verify, answered as the duplicate of
        the hold: :meth:`_held_duplicates`) under the id the same bytes have unsigned — the id is marked with the
        digest of the bytes it names, the held event's own (docs/ENGINE.md §8)."""
        raw = self.store.original_bytes(mid)
        digest = held.event.digest
        if raw is None and digest is not None:
            raw = self.store.original_bytes(unsigned_id(mid, digest))
        return raw

    async def _recover_activations(self, now: datetime | None) -> None:
        """Write back, after a loss, the activation records this instance recorded (``shared_activations``: the
        newest version of each it committed), each ESME's in one transaction (:meth:`RedisState.restore_activations`:
        never over a version knowing evidence this one does not; a pending future-dated one retracted by a
        cancellation taken since), ``_CONCURRENCY`` ESMEs at a time; those past retention by the gateway clock
        (the shared one, or ``now``, the tick's time as the tick takes it) are not written back and their rows
        are dropped."""
        state = self.state
        by_esme: dict[int, list[Activation]] = {}
        for key, record in self._in_store(_recorded_activations):
            try:
                act = from_record(Activation, json.loads(record))
            except Exception as exc:  # (written by another version?) the others are given back all the same
                _log.error("shared state: a recorded activation cannot be read, not given back: %s", exc,
                           extra={"activation": key})  # fmt: skip
                continue
            by_esme.setdefault(act.esme, []).append(act)
        if not by_esme:
            return
        bound = None if now is None else state.bounded_now(now)
        written: list[str] = []
        expired: list[str] = []

        async def one(esme: int, acts: list[Activation]) -> None:
            try:
                done, past = await state.restore_activations(esme, acts, bound)
            except _UNREADABLE as exc:  # its partition holds a record of another version: the others go on
                _log.error("shared state: the activations of ESME %016X cannot be given back: %s", esme, exc)
                return
            written.extend(done)
            expired.extend(past)

        items = sorted(by_esme.items())
        for at in range(0, len(items), _CONCURRENCY):
            # every one of the chunk ends before a failure is raised (none goes on committing during a later batch)
            got = await asyncio.gather(*(one(esme, acts) for esme, acts in items[at : at + _CONCURRENCY]),
                                       return_exceptions=True)  # fmt: skip
            failed = next((exc for exc in got if isinstance(exc, BaseException)), None)
            if failed is not None:
                raise failed
        if expired:
            self._in_store(functools.partial(_drop_activations, keys=expired))
        _log.warning("shared state: %d of the %d activations this instance recorded are given back after the loss "
                     "(the others were known to the state already, or past retention: %d)",
                     len(written), sum(len(a) for a in by_esme.values()), len(expired),
                     extra={"instance": state.instance})  # fmt: skip

    async def _prune_holds(self) -> None:
        """Drop the recorded holds no longer held in the state of the epoch they were recovered in (released,
        by this instance or another); nothing when that is not the epoch in force (a loss: they are
        recovered first)."""
        self._pruned = time.monotonic()
        ids = [row[0] for row in self._in_store(_recorded_holds)]
        for at in range(0, len(ids), 500):
            chunk = ids[at : at + 500]
            epoch, held = await self.state.holding(chunk)
            if epoch is None or epoch != self._epoch or epoch != self.state.epoch:
                return
            gone = [mid for mid in chunk if mid not in held]
            if gone:
                self._in_store(functools.partial(_drop_holds, mids=gone))


def _open_holds(db: sqlite3.Connection) -> str | None:
    """Create ``shared_holds`` when missing; the epoch the store's holds were last recovered in (None: never
    recorded, the first start of this version on this store)."""
    db.execute(_HOLDS_SCHEMA)
    row = db.execute("SELECT value FROM meta WHERE key = ?", (_EPOCH_META,)).fetchone()
    return None if row is None else str(row[0])


def _set_epoch(db: sqlite3.Connection, epoch: str | None) -> None:
    if epoch is not None:
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (_EPOCH_META, epoch))


def _drop_holds(db: sqlite3.Connection, mids: Sequence[str]) -> None:
    db.executemany("DELETE FROM shared_holds WHERE message_id = ?", [(mid,) for mid in mids])


def _write_holds(
    db: sqlite3.Connection,
    holds: Mapping[str, tuple[str, str | None, str | None] | None],
    kept: Mapping[str, tuple[str, str | None, str | None]],
) -> None:
    for mid, kept_row in kept.items():  # (a row of the hold, as this instance committed it, stays as it is)
        db.execute("INSERT OR IGNORE INTO shared_holds(message_id, record, destination, kind) VALUES (?,?,?,?)",
                   (mid, *kept_row))  # fmt: skip
    for mid, row in holds.items():
        if row is None:
            db.execute("DELETE FROM shared_holds WHERE message_id = ?", (mid,))
        else:
            db.execute("INSERT OR REPLACE INTO shared_holds(message_id, record, destination, kind) VALUES (?,?,?,?)",
                       (mid, *row))  # fmt: skip


def _open_activations(db: sqlite3.Connection) -> None:
    """Create ``shared_activations`` when missing."""
    db.execute(_ACTIVATIONS_SCHEMA)


def _write_recorded(
    db: sqlite3.Connection,
    *,
    holds: Mapping[str, tuple[str, str | None, str | None] | None],
    kept: Mapping[str, tuple[str, str | None, str | None]],
    acts: Mapping[str, Activation | None],
    texts: Mapping[int, str],
    config: EngineConfig,
) -> None:
    """A batch's rows of ``shared_holds`` and ``shared_activations``, in its own SQLite transaction."""
    if holds or kept:
        _write_holds(db, holds, kept)
    if acts:
        gone = [(key,) for key, act in acts.items() if act is None]
        if gone:
            db.executemany("DELETE FROM shared_activations WHERE key = ?", gone)
        rows = [(key, texts.get(id(act)) or json.dumps(to_record(act), separators=(",", ":")),
                 _us(expires_at(act, config))) for key, act in acts.items() if act is not None]  # fmt: skip
        if rows:
            db.executemany("INSERT OR REPLACE INTO shared_activations(key, record, expires) VALUES (?,?,?)", rows)


def _recorded_activations(db: sqlite3.Connection) -> list[tuple[str, str]]:
    return [(str(k), str(r)) for k, r in db.execute("SELECT key, record FROM shared_activations ORDER BY key")]


def _drop_activations(db: sqlite3.Connection, keys: Sequence[str]) -> None:
    db.executemany("DELETE FROM shared_activations WHERE key = ?", [(key,) for key in keys])


def _drop_expired_activations(db: sqlite3.Connection, clock: int) -> None:
    """Drop the recorded activations retention would have pruned by the gateway clock ``clock`` (µs)."""
    db.execute("DELETE FROM shared_activations WHERE expires <= ?", (clock,))


def _recorded_holds(db: sqlite3.Connection) -> list[tuple[str, str, str | None, str | None]]:
    rows = db.execute("SELECT message_id, record, destination, kind FROM shared_holds ORDER BY message_id")
    return [(str(m), str(r), d, k) for m, r, d, k in rows]
