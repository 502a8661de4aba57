"""The audit of a scaled-out gateway (real redis-server, the instances' own SQLite stores): a message
the DSP re-delivers to a second instance is recorded there as the FIRST instance's decision
(``decided_by``, ``recorded_as = "duplicate"``), not as a suppression of its own; every suppression is in
the shared suppression index once, whichever instance decided it and however many recorded it, even when
its decider died before recording it; a release a tick decides is in the releasing instance's audit.
(The CLI across two real gateway processes: ``test_shared_audit_cli.py``.)"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import redis
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, outage, request, response, t

from gateway.engine import Decision, Duplicate, EngineConfig
from gateway.engine.effects import Action
from gateway.store.redis_state import RedisState, RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.shared_audit import SharedAudit
from gateway.store.sqlite import SqliteStore

ROWS = [(ESME, CH, MPAN, "Landis+Gyr")]


def _instance(url: str, tmp_path: Path, name: str) -> SharedEngine:
    return SharedEngine(SqliteStore(tmp_path / f"{name}.sqlite3"), RedisStateConfig(url=url, instance=name),
                        EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))  # fmt: skip


def _indexed(url: str, day: date) -> list[tuple[str, str, str]]:
    audit = SharedAudit(url, "duisgw:")
    try:
        return sorted(
            (str(row["message_id"]), str(row["by"]), dest) for row, dest, _kind in audit.suppressions(day)
        )
    finally:
        audit.close()


def test_a_redelivered_suppression_is_recorded_as_the_deciders_and_indexed_once(
    redis_url: str, tmp_path: Path
) -> None:
    a, b = _instance(redis_url, tmp_path, "gw-a"), _instance(redis_url, tmp_path, "gw-b")
    try:
        a.submit(request(0, counter=21), b"<req>")
        a.submit(response(1, counter=21), b"<rsp>")
        ad1 = outage(2, mid="ad1-x")
        (own,) = [e for e in a.submit_many([(ad1, b"<ad1>")], {"ad1-x": ("dno-a", "DCCAlertMessage.AD1")})[0]
                  if isinstance(e, Decision)]  # fmt: skip
        assert own.action is Action.SUPPRESS
        (dup,) = b.submit(ad1, b"<ad1>")  # the DSP re-delivers it to the other instance
        assert isinstance(dup, Duplicate)
        (row_a,) = a.store.audit("ad1-x")
        (row_b,) = b.store.audit("ad1-x")
    finally:
        a.close()
        b.close()
    assert (row_a["action"], row_a["decided_by"], row_a.get("recorded_as")) == ("suppress", "gw-a", None)
    assert (row_b["action"], row_b["decided_by"], row_b.get("recorded_as")) == (
        "suppress",
        "gw-a",
        "duplicate",
    )
    assert _indexed(redis_url, own.decided_at.date()) == [("ad1-x", "gw-a", "dno-a")]


def test_a_suppression_whose_decider_died_before_recording_it_is_indexed_once(
    redis_url: str, tmp_path: Path
) -> None:
    """Instance A commits the decision in Redis and dies before its local commit; the re-delivery reaches B,
    which records A's decision as a duplicate. No instance decided it *locally*: only the shared index,
    written in the decision's own commit, lists it (why the export reads the index)."""
    import asyncio

    b = _instance(redis_url, tmp_path, "gw-b")
    try:
        b.submit(request(0, counter=21), b"<req>")
        b.submit(response(1, counter=21), b"<rsp>")
        ad1 = outage(2, mid="ad1-x")

        async def decided_by_a_then_killed() -> Decision:
            state = RedisState(RedisStateConfig(url=redis_url, instance="gw-a"), EngineConfig(), MemoryScope([ESME]),
                               MemoryInventory(ROWS))  # fmt: skip
            try:
                await state.start()
                tx = await state.decide(ad1, b"<ad1>", ("dno-a", "DCCAlertMessage.AD1"))
            finally:
                await state.aclose()
            (d,) = [e for e in tx.effects if isinstance(e, Decision)]
            return d

        decided = asyncio.run(decided_by_a_then_killed())
        assert decided.action is Action.SUPPRESS
        (dup,) = b.submit(ad1, b"<ad1>")
        assert isinstance(dup, Duplicate)
        (row_b,) = b.store.audit("ad1-x")
    finally:
        b.close()
    assert (row_b["decided_by"], row_b["recorded_as"]) == ("gw-a", "duplicate")
    assert _indexed(redis_url, decided.decided_at.date()) == [("ad1-x", "gw-a", "dno-a")]


def test_a_hold_another_instance_released_is_indexed_with_the_route_its_holder_shared(
    redis_url: str, tmp_path: Path
) -> None:
    """A holds an AD1 (its route shared with the hold) and dies; the 11.3 response reaches B and releases it
    suppressed: B's audit has the release, decided by B, and the index lists it with the route A shared."""
    a, b = _instance(redis_url, tmp_path, "gw-a"), _instance(redis_url, tmp_path, "gw-b")
    try:
        a.submit(request(0, counter=21), b"<req>")
        a.submit_many([(outage(2, mid="ad1-x"), b"<ad1>")], {"ad1-x": ("dno-b", "DCCAlertMessage.AD1")})
        a.close()  # "killed" with the AD1 held
        (rel,) = [
            e for e in b.submit(response(1, arrival=6, counter=21), b"<rsp>") if isinstance(e, Decision)
        ]
        assert rel.action is Action.RELEASE_SUPPRESS
        rows = b.store.audit("ad1-x")
    finally:
        b.close()
    assert [(r["action"], r["decided_by"]) for r in rows] == [("release-suppress", "gw-b")]
    assert _indexed(redis_url, rel.decided_at.date()) == [("ad1-x", "gw-b", "dno-b")]


def test_a_hold_released_by_a_tick_is_in_the_releasing_instances_audit(
    redis_url: str, tmp_path: Path
) -> None:
    """A holds an AD1 whose 11.3 response never comes and dies; B's tick past the hold limit releases it
    (forward, hold-timeout). The release is in B's audit, decided by B, and the message is B's to deliver
    (status forward): a tick's releases were kept without their decision before."""
    from gateway.engine import Tick

    a, b = _instance(redis_url, tmp_path, "gw-a"), _instance(redis_url, tmp_path, "gw-b")
    try:
        a.submit(request(0, counter=21), b"<req>")
        a.submit(outage(2, mid="ad1-x"), b"<ad1>")
        a.close()
        (rel,) = [e for e in b.submit(Tick(t(2 + 3.5) + EngineConfig().hold_limit + timedelta(minutes=1)))
                  if isinstance(e, Decision)]  # fmt: skip
        rows = b.store.audit("ad1-x")
        status, undelivered = b.store.status("ad1-x"), b.store.undelivered()
    finally:
        b.close()
    assert (rel.action, str(rel.reason)) == (Action.RELEASE_FORWARD, "hold-timeout")
    assert [(r["action"], r["reason"], r["decided_by"]) for r in rows] == [
        ("release-forward", "hold-timeout", "gw-b")
    ]
    assert (status, undelivered) == ("forward", [("ad1-x", b"<ad1>")])


def test_the_suppression_index_expires_with_export_days_and_keeps_nothing_with_zero(
    redis_url: str, tmp_path: Path
) -> None:
    import asyncio

    async def decide(days: int, mid: str) -> None:
        state = RedisState(RedisStateConfig(url=redis_url, instance="gw-a", export_days=days), EngineConfig(),
                           MemoryScope([ESME]), MemoryInventory(ROWS))  # fmt: skip
        try:
            await state.start()
            for ev in (request(0, counter=21), response(1, counter=21), outage(2, mid=mid)):
                await state.decide(ev, b"<>")
        finally:
            await state.aclose()

    asyncio.run(decide(0, "ad1-none"))
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys("duisgw:suppress*") == []
        asyncio.run(decide(10, "ad1-ten"))
        (key,) = client.keys("duisgw:suppressions:*")
        ttl = int(client.ttl(key))
    finally:
        client.close()
    assert 10 * 86_400 < ttl <= 11 * 86_400
