"""Shared state (a real redis-server), ``clock = "wall"``: one instance's host clock ahead of the others must not
move the shared gateway clock. The clock only moves as far as Redis ``TIME`` plus ``max_clock_ahead`` (5 s):
a tick, or a message's arrival, stamped further ahead is taken at Redis time (counted, logged), so a running
hold is released at its deadline by Redis time, as a single node would, and a later hold's deadline is not
pushed out by a skewed tick. Release leases are scored and compared in Redis time, so a host clock ahead by
more than the lease does not take over (and deliver a second time) a release its decider is recording.

The scenarios are anchored at Redis time (the engine_support timeline shifted so that "now" is Redis ``TIME``)."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
import redis
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, outage, request, response, t

import gateway.store.redis_state as rs
from gateway.engine import Decision, Engine, EngineConfig, Tick
from gateway.engine.effects import Action, Reason
from gateway.engine.events import MessageEvent
from gateway.store.redis_state import RedisState, RedisStateConfig

ROWS = [(ESME, CH, MPAN, "Landis+Gyr")]
TOLERANCE = timedelta(seconds=5)  # the default max_clock_ahead (rs.MAX_CLOCK_AHEAD)
E = TypeVar("E", bound=MessageEvent)


def make(url: str, name: str, config: EngineConfig | None = None, **cfg: object) -> RedisState:
    return RedisState(RedisStateConfig(url=url, instance=name, **cfg),  # type: ignore[arg-type]
                      config or EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))  # fmt: skip


def redis_time(url: str) -> datetime:
    client = redis.Redis.from_url(url)
    try:
        sec, usec = client.time()
    finally:
        client.close()
    return datetime.fromtimestamp(sec, UTC) + timedelta(microseconds=usec)


def shifted(event: E, delta: timedelta) -> E:
    """``event`` with every date-time moved by ``delta`` (the engine_support timeline re-anchored)."""
    changes = {f.name: getattr(event, f.name) + delta for f in fields(event)
               if isinstance(getattr(event, f.name), datetime)}  # fmt: skip
    return replace(event, **changes)


@contextmanager
def host_clock_ahead(by: timedelta) -> Iterator[None]:
    """This host's clock (what the shared state reads of it) ``by`` ahead of true time."""
    fake = types.SimpleNamespace(time=lambda: time.time() + by.total_seconds(), monotonic=time.monotonic)
    saved = rs.time
    rs.time = fake  # type: ignore[assignment]
    try:
        yield
    finally:
        rs.time = saved


def decisions(*txs: object) -> list[tuple[str, Action, Reason]]:
    return [(e.message_id, e.action, e.reason) for tx in txs for e in tx.effects  # type: ignore[attr-defined]
            if isinstance(e, Decision)]  # fmt: skip


async def shared_clock(state: RedisState) -> datetime:
    raw = await state.redis.get(state.keys.clock)
    assert raw is not None
    return rs._from_us(int(raw))


@pytest.mark.parametrize("ahead", [timedelta(minutes=10), timedelta(days=365)], ids=["10min", "1year"])
async def test_a_tick_from_a_host_clock_ahead_does_not_move_the_shared_clock_nor_release_a_running_hold_early(
    redis_url: str, ahead: timedelta
) -> None:
    now = redis_time(redis_url)
    d = now - t(8.5)  # "now" is t(8.5) of the timeline: request t(0), AD1 arrived t(5.5), held until t(15.5)
    a, b = make(redis_url, "a"), make(redis_url, "b")
    try:
        await a.start(), await b.start()
        events = [shifted(request(0, counter=5), d), shifted(outage(2, mid="ad1"), d)]
        held = [await a.decide(events[0], None), await a.decide(events[1], b"<AD1>")]
        assert decisions(*held) == [("ad1", Action.HOLD, Reason.PENDING_IMMEDIATE)]
        with host_clock_ahead(ahead):  # b's host clock is ahead: its ordinary tick
            txs, taken = await b.tick(datetime.now(UTC) + ahead)
        assert decisions(*txs) == [] and taken == []  # the hold is not released early
        assert await shared_clock(a) <= redis_time(redis_url) + TOLERANCE
        assert await a.held_ids() == ["ad1"]
        # the 11.3 response arrives 2.5 minutes after the AD1, within the hold: suppressed, as on one node
        late = shifted(response(1, arrival=8, counter=5), d)
        got = await a.decide(late, None)
        assert decisions(got) == [("ad1", Action.RELEASE_SUPPRESS, Reason.ACTIVATION_WINDOW)]
        one = Engine(EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))
        single = [e for ev in (*events, Tick(now), late) for e in one.handle(ev)]
        assert decisions(*held, got) == [(e.message_id, e.action, e.reason) for e in single
                                         if isinstance(e, Decision)]  # fmt: skip
        assert b.clock_refused == {"tick": 1, "message": 0}
        assert b.clock_skew is not None and abs(b.clock_skew - ahead.total_seconds()) < 2
    finally:
        await a.aclose(), await b.aclose()


async def test_a_hold_after_a_tick_a_year_ahead_is_released_at_its_hold_limit_by_redis_time(redis_url: str) -> None:
    """The 1-year tick leaves no trace: a later hold's deadline is hold_limit after its arrival (not a year
    out), it is released by the first tick past it in Redis time, and its day in the suppression index is
    today's."""
    config = EngineConfig(hold_limit=timedelta(seconds=1))
    now = redis_time(redis_url)
    d = now - t(6)
    a, b = make(redis_url, "a", config), make(redis_url, "b", config)
    try:
        await a.start(), await b.start()
        await b.tick(now + timedelta(days=365))  # one tick from a host a year ahead, then corrected
        assert await shared_clock(a) <= redis_time(redis_url) + TOLERANCE
        await a.decide(shifted(request(0, counter=6), d), None)
        tx = await a.decide(replace(shifted(outage(2, mid="ad1-2"), d), arrival=redis_time(redis_url)), b"<AD1>")
        (hold,) = [e for e in tx.effects if isinstance(e, Decision)]
        assert hold.action is Action.HOLD
        assert hold.hold_deadline is not None and hold.hold_deadline <= redis_time(redis_url) + TOLERANCE
        await asyncio.sleep(1.2)
        txs, _ = await b.tick(datetime.now(UTC))
        assert decisions(*txs) == [("ad1-2", Action.RELEASE_FORWARD, Reason.HOLD_TIMEOUT)]
        assert await a.held_ids() == []
        # a suppression decided now is stamped (and filed in the suppression index) at Redis time, not a year out
        await a.decide(replace(shifted(response(1, counter=6), d), arrival=redis_time(redis_url)), None)
        sup = await a.decide(replace(shifted(outage(2, mid="ad1-3"), d), arrival=redis_time(redis_url)), b"<3>")
        (dec,) = [e for e in sup.effects if isinstance(e, Decision)]
        assert (dec.action, dec.reason) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW)
        assert dec.decided_at <= redis_time(redis_url) + TOLERANCE
        days = {k.decode() for k in await a.redis.keys("duisgw:suppressions:*")}
        assert days == {f"duisgw:suppressions:{dec.decided_at.date().isoformat()}"}
    finally:
        await a.aclose(), await b.aclose()


async def test_a_message_arrival_stamped_by_a_host_clock_ahead_does_not_move_the_shared_clock_nor_release_a_hold(
    redis_url: str,
) -> None:
    """A message received by a host whose clock is 10 minutes ahead (its arrival is that host's time) is
    decided at Redis time: the commit that would have moved the shared clock past Redis time + the tolerance is
    refused before anything is written and decided again, and the hold in its partition is not timed out."""
    now = redis_time(redis_url)
    d = now - t(8.5)
    a, b = make(redis_url, "a"), make(redis_url, "b")
    try:
        await a.start(), await b.start()
        await a.decide(shifted(request(0, counter=7), d), None)
        await a.decide(shifted(outage(2, mid="ad1"), d), b"<AD1>")
        ahead = timedelta(minutes=10)
        with host_clock_ahead(ahead):  # b has not ticked yet: the commit is what refuses its clock
            other = replace(shifted(request(8, counter=8), d), arrival=datetime.now(UTC) + ahead)
            tx = await b.decide(other, None)
        assert decisions(tx) == []  # (an observation: no decision) and the AD1 is not timed out by it
        assert await a.held_ids() == ["ad1"]
        assert await shared_clock(a) <= redis_time(redis_url) + TOLERANCE
        assert b.clock_refused == {"tick": 0, "message": 1}
        # once b has measured its skew at a tick, its arrivals are taken at Redis time before the commit
        with host_clock_ahead(ahead):
            await b.tick(datetime.now(UTC) + ahead)
            again = replace(shifted(request(8.2, counter=9), d), arrival=datetime.now(UTC) + ahead)
            tx = await b.decide(again, None)
        assert tx.attempts == 1
        assert b.clock_refused == {"tick": 1, "message": 2}
        assert await a.held_ids() == ["ad1"]
        assert await shared_clock(a) <= redis_time(redis_url) + TOLERANCE
    finally:
        await a.aclose(), await b.aclose()


async def test_message_clock_mode_is_not_bounded_by_redis_time(redis_url: str) -> None:
    """``clock = "message"`` (``max_clock_ahead = None``): the gateway clock is the messages' time, which may
    be anywhere (a replay of another day): a tick ahead of Redis time moves it, as before."""
    a = make(redis_url, "a", max_clock_ahead=None)
    try:
        await a.start()
        future = redis_time(redis_url) + timedelta(days=2)
        await a.tick(future)
        assert await shared_clock(a) == future
        assert a.clock_refused == {"tick": 0, "message": 0}
    finally:
        await a.aclose()


@pytest.mark.parametrize("skewed", ["taker-ahead", "decider-behind"])
async def test_a_release_lease_is_not_taken_over_by_a_host_clock_40s_off(redis_url: str, skewed: str) -> None:
    """Instance a releases a hold and is recording it (its SQLite commit, then the ack); b ticks meanwhile with
    a host clock 40 s ahead of a's (lease 30 s). The lease is Redis time on both sides: b does not take it
    over, so the AD1 is delivered once."""
    a, b = make(redis_url, "a"), make(redis_url, "b")
    d = redis_time(redis_url) - t(30)  # the hold (AD1 t(5.5), limit 10 min) is past its deadline now
    skew = timedelta(seconds=40)
    try:
        await a.start(), await b.start()
        await a.decide(shifted(request(0, counter=1), d), None)
        await a.decide(shifted(outage(2, mid="ad1"), d), b"<AD1>")
        if skewed == "decider-behind":
            with host_clock_ahead(-skew):
                txs, _ = await a.tick(datetime.now(UTC) - skew)
        else:
            txs, _ = await a.tick(datetime.now(UTC))
        assert [r.decision.message_id for x in txs for r in x.released] == ["ad1"]
        with host_clock_ahead(skew if skewed == "taker-ahead" else timedelta(0)):
            _, taken = await b.tick(datetime.now(UTC) + (skew if skewed == "taker-ahead" else timedelta(0)))
        assert taken == []  # a is recording it: not delivered a second time
        await a.ack_releases(["ad1"])
    finally:
        await a.aclose(), await b.aclose()
