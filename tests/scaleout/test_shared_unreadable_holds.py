"""Shared state (a real redis-server): a hold record (or a release to take over) this version cannot decode —
written by a newer version during a rolling upgrade, a reason code added since — stops neither the other
holds' releases nor the take-overs of unrecorded releases, on any instance. It is counted and logged once,
listed in ``{prefix}unreadable`` for an operator and left where it is (never deleted), so that an instance that
can decode it releases it (and clears the listing)."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta

import pytest
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, outage, request, response, t

from gateway.engine import Decision, EngineConfig
from gateway.engine.effects import Action
from gateway.store.redis_state import RedisState, RedisStateConfig

E2, CH2, MPAN2 = 0x00DB1234567891A0, 0x00DB1234567891A2, "9999999999993"
E3, CH3, MPAN3 = 0x00DB1234567892A0, 0x00DB1234567892A2, "1111111111116"
E4, CH4, MPAN4 = 0x00DB1234567893A0, 0x00DB1234567893A2, "2222222222225"
ROWS = [(ESME, CH, MPAN, "L+G"), (E2, CH2, MPAN2, "L+G"), (E3, CH3, MPAN3, "L+G"), (E4, CH4, MPAN4, "L+G")]


def make(url: str, name: str, lease: float = 0.2) -> RedisState:
    return RedisState(RedisStateConfig(url=url, instance=name, lease=lease), EngineConfig(),
                      MemoryScope([ESME, E2, E3, E4]), MemoryInventory(ROWS))  # fmt: skip


async def rewrite_hold(state: RedisState, mid: str, esme: int, reason: str) -> str:
    """The hold ``mid``'s record, everywhere it is, with its decision's reason set to ``reason``; returns the
    reason it had."""
    r = state.redis
    rec = json.loads(await r.get(state.keys.held_record(mid)))  # type: ignore[arg-type]
    was = str(rec["decision"]["reason"])
    rec["decision"]["reason"] = reason
    text = json.dumps(rec)
    await r.set(state.keys.held_record(mid), text)
    await r.hset(state.keys.esme(esme), f"h:{mid}", text)
    return was


async def test_a_hold_with_an_unknown_reason_code_does_not_stop_other_releases_nor_take_overs_and_is_counted(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = make(redis_url, "a"), make(redis_url, "b")
    try:
        await a.start(), await b.start()
        # held by a newer instance, with a hold reason code this version does not know (first in the held set)
        await a.decide(request(0, counter=1, esme=E2), None)
        await a.decide(outage(1, ch=CH2, mpan=MPAN2, mid="held-by-newer"), b"<AD1 n>")
        known = await rewrite_hold(a, "held-by-newer", E2, "pending-newer")
        # an ordinary hold, due after it
        await a.decide(request(0, counter=2), None)
        await a.decide(outage(2, mid="ad1-ordinary"), b"<AD1 o>")
        # two releases decided by instance c, which dies before recording them: one this version cannot decode
        c = make(redis_url, "c")
        await c.start()
        for esme, ch, mpan, counter, mid in ((E3, CH3, MPAN3, 3, "released-by-c"),
                                              (E4, CH4, MPAN4, 4, "released-by-newer-c")):  # fmt: skip
            await c.decide(request(0, counter=counter, esme=esme), None)
            await c.decide(outage(2, ch=ch, mpan=mpan, mid=mid), b"<AD1 c>")
            tx = await c.decide(response(1, arrival=6, counter=counter, esme=esme), None)
            assert [x.decision.message_id for x in tx.released] == [mid]
        await c.aclose()
        rel = json.loads(await a.redis.get(a.keys.release("released-by-newer-c")))  # type: ignore[arg-type]
        rel["decision"]["reason"] = "restoration-newer"
        await a.redis.set(a.keys.release("released-by-newer-c"), json.dumps(rel))
        await asyncio.sleep(0.3)  # c's lease runs out

        caplog.set_level(logging.ERROR, logger="duisgw.shared")
        released: list[str] = []
        taken: list[str] = []
        for s in (a, b):
            for i in range(3):  # every tick, on every instance
                txs, got = await s.tick(t(30) + timedelta(seconds=i))
                released += [d.message_id for x in txs for d in x.effects if isinstance(d, Decision)]
                taken += [r.decision.message_id for r in got]
                await s.ack_releases([r.decision.message_id for x in txs for r in x.released] + taken)
        assert released == ["ad1-ordinary"]
        assert taken == ["released-by-c"]
        # left where it is (for an instance that can decode it), counted and logged once per instance
        assert await a.held_ids() == ["held-by-newer"]
        assert await a.redis.exists(a.keys.raw("held-by-newer"))
        # (a gives its claim of the release back, its lease as it was: b meets it too)
        assert a.unreadable == {"hold": 1, "release": 1} and b.unreadable == {"hold": 1, "release": 1}
        logged = [r.getMessage() for r in caplog.records if "cannot decode" in r.getMessage()]
        assert len(logged) == 4, logged
        listed = {k.decode(): json.loads(v) for k, v in (await a.redis.hgetall(a.keys.unreadable)).items()}
        assert set(listed) == {"hold:held-by-newer", "release:released-by-newer-c"}
        assert "pending-newer" in listed["hold:held-by-newer"]["error"]

        # an instance that can decode it (here: the record as this version writes it) releases it and clears
        # the listing; the release, too, is taken over by one that can read it
        await rewrite_hold(a, "held-by-newer", E2, known)
        await a.redis.set(a.keys.release("released-by-newer-c"), json.dumps({**rel, "decision": {
            **rel["decision"], "reason": "activation-window"}}))  # fmt: skip
        newer = make(redis_url, "newer")
        await newer.start()
        txs, got = await newer.tick(t(31))  # (no lease to wait for: the old instances' claims were given back)
        assert [(d.message_id, d.action) for x in txs for d in x.effects if isinstance(d, Decision)] == [
            ("held-by-newer", Action.RELEASE_FORWARD)
        ]
        assert [r.decision.message_id for r in got] == ["released-by-newer-c"]
        await newer.ack_releases(["held-by-newer", "released-by-newer-c"])
        await newer.aclose()
        assert await a.held_ids() == []
        assert await a.redis.hgetall(a.keys.unreadable) == {}
        # the older instances' next ticks find nothing left to skip, and count nothing more
        for s in (a, b):
            await s.tick(t(32))
        assert a.unreadable == {"hold": 1, "release": 1}
    finally:
        await a.aclose(), await b.aclose()


async def test_a_release_this_version_cannot_decode_is_claimed_once_per_instance_and_keeps_its_lease(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Older instances meet a release they cannot decode (its decider died before recording it). Each claimed
    it again every lease — counted and logged each time — and each claim restarted the lease, so a newer
    instance able to take it over kept losing the race to them. Now each older instance claims it once, gives
    the claim back with the lease score as it was, and remembers it while it exists: a newer instance takes
    it over at its first tick."""
    a, b, c = make(redis_url, "old-a"), make(redis_url, "old-b"), make(redis_url, "c")
    try:
        await a.start(), await b.start(), await c.start()
        await c.decide(request(0, counter=3, esme=E3), None)
        await c.decide(outage(2, ch=CH3, mpan=MPAN3, mid="rel-newer"), b"<AD1>")
        tx = await c.decide(response(1, arrival=6, counter=3, esme=E3), None)
        assert [x.decision.message_id for x in tx.released] == ["rel-newer"]
        await c.aclose()  # c dies before recording it
        text = await a.redis.get(a.keys.release("rel-newer"))
        assert text is not None
        rel = json.loads(text)
        rel["decision"]["reason"] = "restoration-newer"  # a reason code this version does not know
        await a.redis.set(a.keys.release("rel-newer"), json.dumps(rel))
        score = await a.redis.zscore(a.keys.released, "rel-newer")
        await asyncio.sleep(0.3)  # c's lease runs out

        caplog.set_level(logging.ERROR, logger="duisgw.shared")
        for i in range(8):  # four leases of ticks on both older instances
            for s in (a, b):
                _txs, got = await s.tick(t(30) + timedelta(seconds=i))
                assert got == []
            await asyncio.sleep(0.1)
        assert a.unreadable["release"] == b.unreadable["release"] == 1
        logged = [r.getMessage() for r in caplog.records if "cannot decode the release" in r.getMessage()]
        assert len(logged) == 2, logged
        assert await a.redis.zscore(a.keys.released, "rel-newer") == score  # the lease as c's commit left it
        assert a._unreadable_releases == b._unreadable_releases == {"rel-newer"}

        # a newer instance (here: the record as this version writes it) takes it over at its first tick
        rel["decision"]["reason"] = "activation-window"
        await a.redis.set(a.keys.release("rel-newer"), json.dumps(rel))
        newer = make(redis_url, "newer")
        await newer.start()
        _txs, got = await newer.tick(t(40))
        assert [r.decision.message_id for r in got] == ["rel-newer"]
        await newer.ack_releases(["rel-newer"])
        await newer.aclose()
        for s in (a, b):  # gone: forgotten, nothing more counted
            await s.tick(t(41))
        assert a._unreadable_releases == b._unreadable_releases == set()
        assert a.unreadable["release"] == b.unreadable["release"] == 1
    finally:
        await a.aclose(), await b.aclose()
