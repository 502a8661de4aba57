"""Shared state retention follows the gateway clock, as on a single node: an idempotency key
(``seen:<id>``) past retention by the gateway clock is decided afresh and swept by the tick (not kept
until a wall-clock TTL ran out); a partition's wall-clock TTL, only a memory safety net, never ends
before the gateway-clock retention of what it holds (a future-dated activation, a held message)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import redis
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, other, outage, request, response, t

from gateway.engine import Decision, Duplicate, Effect, Engine, EngineConfig, Tick
from gateway.engine.effects import Action
from gateway.store.redis_state import RedisState, RedisStateConfig

ROWS = [(ESME, CH, MPAN, "Landis+Gyr")]
KEEP = EngineConfig().keep_for
DAY = 86_400


def _states(url: str, n: int) -> list[RedisState]:
    return [
        RedisState(
            RedisStateConfig(url=url, instance=f"gw{i}"),
            EngineConfig(),
            MemoryScope([ESME]),
            MemoryInventory(ROWS),
        )
        for i in range(n)
    ]


async def _close(states: Sequence[RedisState]) -> None:
    for s in states:
        await s.aclose()


def _decisions(effects: Sequence[Effect]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


async def test_a_message_id_past_retention_by_the_gateway_clock_is_decided_afresh_and_swept_like_one_node(
    redis_url: str,
) -> None:
    """The gateway clock passes the retention of an AD1's idempotency key (a replay, or ``clock =
    "message"``, runs it faster than the wall clock): the tick sweeps the key, and the AD1 re-delivered
    is decided again, exactly as the single-node engine decides it (it pruned its ``Seen``), where the
    key used to live on for the retention in wall time and answer a duplicate."""
    ad1 = outage(2, mid="ad1-again")
    late = t(2 + 3.5) + KEEP + timedelta(minutes=1)
    single = Engine(EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))
    first = _decisions(single.handle(ad1))
    single.handle(Tick(late))
    again = single.handle(ad1)
    assert not any(isinstance(e, Duplicate) for e in again)

    a, b = states = _states(redis_url, 2)
    admin = redis.Redis.from_url(redis_url)
    try:
        for s in states:
            await s.start()
        assert _decisions((await a.decide(ad1, b"<ad1>")).effects) == first
        assert admin.exists("duisgw:seen:ad1-again") == 1
        await b.tick(late)
        assert admin.exists("duisgw:seen:ad1-again") == 0  # swept by the gateway clock
        got = (await b.decide(ad1, b"<ad1>")).effects
        assert _decisions(got) == _decisions(again) != []
        assert not any(isinstance(e, Duplicate) for e in got)
        dup = (await a.decide(ad1, b"<ad1>")).effects  # and it is the new decision's key from then on
        assert [type(e) for e in dup] == [Duplicate]
    finally:
        await _close(states)
        admin.close()


async def test_instances_racing_on_a_message_id_past_retention_decide_it_once(redis_url: str) -> None:
    """A key past retention by the gateway clock but not swept yet (no tick since): two instances given
    the re-delivered message at once decide it once; the other answers the duplicate of that decision."""
    ad1 = outage(2, mid="ad1-race")
    late = t(2 + 3.5) + KEEP + timedelta(minutes=1)
    a, b, c = states = _states(redis_url, 3)
    try:
        for s in states:
            await s.start()
        await a.decide(ad1, b"<ad1>")
        # the shared clock passes retention by a decision (no tick: the key is still there)
        await c.decide(other((late - t(0)).total_seconds() / 60, mid="later"), b"<x>")
        got = await asyncio.gather(b.decide(ad1, b"<ad1>"), a.decide(ad1, b"<ad1>"))
        effects = [e for tx in got for e in tx.effects]
        decided = _decisions(effects)
        dups = [e for e in effects if isinstance(e, Duplicate)]
        assert len(decided) == 1 and len(dups) == 1
        assert dups[0].original == decided[0]
    finally:
        await _close(states)


async def test_a_future_dated_activation_keeps_its_partition_past_the_wall_ttl_of_an_idle_partition(
    redis_url: str,
) -> None:
    """A future-dated activation (execution 30 days ahead) is kept by the single-node engine until
    retention after its execution time; its partition's wall-clock TTL lasts at least that long (it
    expired after the retention from its last write, losing the activation before its AD1 came)."""
    (a,) = states = _states(redis_url, 1)
    admin = redis.Redis.from_url(redis_url)
    execute = 30 * 1440
    try:
        await a.start()
        await a.decide(request(0, counter=7, execute=execute), None)
        await a.decide(response(1, counter=7, accepted=True), None)
        ttl = admin.ttl(f"duisgw:e:{{{ESME:016X}}}")
        assert ttl >= int((t(execute) - t(1) + KEEP).total_seconds())
    finally:
        await _close(states)
        admin.close()


async def test_a_partition_holding_a_message_has_no_wall_ttl_until_the_hold_ends(redis_url: str) -> None:
    """While a message is held its partition does not expire on wall time (the gateway clock may stand
    still, ``clock = "message"``, or every instance be stopped past the TTL: the hold must still be
    released when the clock passes its deadline); the release gives it its TTL back."""
    a, b = states = _states(redis_url, 2)
    admin = redis.Redis.from_url(redis_url)
    part = f"duisgw:e:{{{ESME:016X}}}"
    try:
        for s in states:
            await s.start()
        await a.decide(request(0, counter=9), None)
        assert admin.ttl(part) > 0
        tx = await a.decide(outage(2, mid="held-ad1"), b"<held>")
        assert [d.action for d in _decisions(tx.effects)] == [Action.HOLD]
        assert admin.ttl(part) == -1
        txs, _ = await b.tick(t(2 + 3.5) + EngineConfig().hold_limit + timedelta(seconds=1))
        assert [r.decision.message_id for tx in txs for r in tx.released] == ["held-ad1"]
        assert admin.ttl(part) > int(KEEP.total_seconds())
    finally:
        await _close(states)
        admin.close()


async def test_a_tick_sweeps_every_expired_idempotency_key_beyond_one_batch_so_the_index_cannot_grow(
    redis_url: str,
) -> None:
    """More messages in a tick interval than one sweep batch (1,000) expire together: one tick sweeps them all
    (up to 16 batches), where it swept 1,000 a tick on every instance alike, so a sustained rate above that
    left the ``seen-expiry`` index growing for as long as it lasted (the keys had a safety TTL, their index
    entries none)."""
    (a,) = states = _states(redis_url, 1)
    admin = redis.Redis.from_url(redis_url)
    n = 3_500
    try:
        await a.start()
        await a.decide(outage(2, mid="ad1-first"), b"<ad1>")
        score = int(admin.zscore("duisgw:seen-expiry", "ad1-first") or 0)
        assert score > 0
        pipe = admin.pipeline()
        for i in range(n):  # keys stored as the commit stores them, expiring with the first one
            pipe.set(f"duisgw:seen:bulk-{i}", "{}", ex=DAY)
            pipe.zadd("duisgw:seen-expiry", {f"bulk-{i}": score})
        pipe.execute()
        assert admin.zcard("duisgw:seen-expiry") == n + 1
        await a.tick(t(2 + 3.5) + KEEP + timedelta(minutes=1))
        assert admin.zcard("duisgw:seen-expiry") == 0
        assert not admin.keys("duisgw:seen:bulk-*")
    finally:
        await _close(states)
        admin.close()
