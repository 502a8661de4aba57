"""Durable store, outbox ordering, retry/backoff, dead letters and restart, against a real receiver."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import pytest
from servicekit import Receiver, duis_body

from gateway.service.api import Delivery, StoreUnavailable, UnknownDestination
from gateway.service.config import OutboxConfig
from gateway.service.delivery import Backoff, DeliveryManager, HttpSender
from gateway.service.metrics import Metrics
from gateway.service.outbox import STATS_DEAD_SQL, STATS_PENDING_SQL, Outbox, SqliteStore

FAST = OutboxConfig(backoff_initial=0.05, backoff_multiplier=2.0, backoff_max=0.4, jitter=0.5, poll_interval=0.1,
                    request_timeout=1.0, drain_timeout=2.0, max_attempts=3)


def deliveries(n: int, start: int = 0, dest: str = "dno-a") -> list[Delivery]:
    return [Delivery(f"m{i:04d}", dest, duis_body(i), {"decision": "forward", "n": str(i)}) for i in range(start, start + n)]


async def open_outbox(path: Path) -> Outbox:
    store = SqliteStore(path, synchronous="NORMAL")
    await store.open()
    return Outbox(store, lambda d: (f"http:{d}",) if d.startswith("dno-") else ())


def manager(outbox: Outbox, receiver: Receiver, cfg: OutboxConfig = FAST, seed: int = 7) -> DeliveryManager:
    sender = HttpSender(receiver.url, timeout=cfg.request_timeout)
    return DeliveryManager(outbox, {"http:dno-a": sender}, cfg, rng=random.Random(seed), metrics=Metrics())


# ------------------------------------------------------------------------------------------ store


async def test_concurrent_writes_are_group_committed_and_durable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    await store.write(lambda c: c.execute("CREATE TABLE t (v INTEGER)"))

    async def put(v: int) -> None:
        await store.write(lambda c: c.execute("INSERT INTO t VALUES (?)", (v,)))

    before = store.batches
    await asyncio.gather(*(put(v) for v in range(500)))
    batches = store.batches - before
    await store.close()
    assert batches < 500  # many writers per transaction
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT COUNT(*), SUM(v) FROM t").fetchone() == (500, sum(range(500)))


async def test_a_failing_write_rolls_back_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    await store.write(lambda c: c.execute("CREATE TABLE t (v INTEGER UNIQUE)"))

    def bad(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t VALUES (2)")
        raise ValueError("processor bug after a partial write")

    results = await asyncio.gather(
        store.write(lambda c: c.execute("INSERT INTO t VALUES (1)")),
        store.write(bad),
        store.write(lambda c: c.execute("INSERT INTO t VALUES (3)")),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    rows = await store.read(lambda c: c.execute("SELECT v FROM t ORDER BY v").fetchall())
    await store.close()
    assert rows == [(1,), (3,)]


async def test_closed_store_raises_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.write(lambda c: c.execute("SELECT 1"))
    assert not await store.ping()


async def test_enqueue_is_idempotent_per_queue_and_message_id(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    assert await outbox.enqueue_many(deliveries(3)) == 3
    assert await outbox.enqueue_many(deliveries(3)) == 0  # a replayed decision adds nothing
    with pytest.raises(UnknownDestination):
        await outbox.enqueue_many([Delivery("x", "elsewhere", b"<x/>", {})])
    [stats] = await outbox.stats()
    await outbox.store.close()
    assert (stats.queue, stats.depth, stats.dead) == ("http:dno-a", 3, 0)


async def test_decision_and_outbox_rows_commit_atomically(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    store = outbox.store
    await store.write(lambda c: c.execute("CREATE TABLE decisions (message_id TEXT PRIMARY KEY)"))

    def decide(c: sqlite3.Connection, d: Delivery, fail: bool) -> None:
        c.execute("INSERT INTO decisions VALUES (?)", (d.message_id,))
        outbox.enqueue_in(c, [d])
        if fail:
            raise RuntimeError("crash between decision and commit")

    a, b = deliveries(2)
    await store.write(lambda c: decide(c, a, False))
    with pytest.raises(RuntimeError):
        await store.write(lambda c: decide(c, b, True))
    decided = await store.read(lambda c: c.execute("SELECT message_id FROM decisions").fetchall())
    rows = await outbox.rows("http:dno-a")
    await store.close()
    assert decided == [("m0000",)]
    assert [r.message_id for r in rows] == ["m0000"]


async def test_queue_statistics_count_from_partial_indexes_not_from_the_delivered_rows(tmp_path: Path) -> None:
    """The gauges are refreshed every second on the store's one thread: reading the delivered rows kept
    for the retention period (all of them, bodies included) would stall every decision behind it."""
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    store = outbox.store
    await outbox.enqueue_many(deliveries(6))
    rows = await outbox.rows("http:dno-a")
    await outbox.mark_delivered(*(r.seq for r in rows[:3]))
    await outbox.dead_letter(rows[3].seq, error="refused", refused=True)
    stats = await outbox.stats()
    plans = await store.read(
        lambda c: [" ".join(str(r[3]) for r in c.execute("EXPLAIN QUERY PLAN " + q)) for q in (STATS_PENDING_SQL, STATS_DEAD_SQL)]
    )
    await store.close()
    assert [(s.queue, s.depth, s.oldest_enqueued_at == rows[4].enqueued_at, s.dead) for s in stats] == [
        ("http:dno-a", 2, True, 1)
    ]
    assert "USING INDEX outbox_pending" in plans[0], plans
    assert "USING INDEX outbox_dead" in plans[1], plans


# ------------------------------------------------------------------------------------------ backoff


def test_backoff_grows_exponentially_is_capped_and_jittered_reproducibly() -> None:
    cfg = OutboxConfig(backoff_initial=1.0, backoff_multiplier=2.0, backoff_max=30.0, jitter=0.5)
    first = Backoff(cfg, random.Random(42))
    b = [first.delay(n) for n in range(1, 9)]
    bases = [1, 2, 4, 8, 16, 30, 30, 30]
    for delay, base in zip(b, bases, strict=True):
        assert base * 0.5 <= delay <= base
    again = Backoff(cfg, random.Random(42))
    assert [again.delay(n) for n in range(1, 9)] == b  # same seed, same delays
    other = Backoff(cfg, random.Random(43))
    assert [other.delay(n) for n in range(1, 9)] != b
    assert len(set(b[5:])) == 3  # jitter spreads capped delays


# ------------------------------------------------------------------------------------------ delivery


async def test_endpoint_down_then_back_delivers_everything_once_in_order(tmp_path: Path) -> None:
    receiver = Receiver()  # not started: the DNO endpoint is down
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    mgr = manager(outbox, receiver)
    await mgr.start()
    await outbox.enqueue_many(deliveries(30))
    await asyncio.sleep(0.6)  # several failed attempts on the head message
    head = (await outbox.rows("http:dno-a"))[0]
    assert head.state == "pending" and head.attempts >= 2 and head.refusals == 0
    await receiver.start()
    await outbox.enqueue_many(deliveries(20, start=30))
    await receiver.wait_for(50)
    await mgr.stop()
    states = {r.state for r in await outbox.rows("http:dno-a")}
    await outbox.store.close()
    await receiver.stop()
    assert receiver.accepted_ids() == [f"m{i:04d}" for i in range(50)]
    assert [r.body for r in receiver.log] == [duis_body(i) for i in range(50)]
    assert states == {"delivered"}


async def test_endpoint_going_down_mid_stream_keeps_order(tmp_path: Path, receiver: Receiver) -> None:
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    mgr = manager(outbox, receiver)
    await mgr.start()
    await outbox.enqueue_many(deliveries(10))
    await receiver.wait_for(10)
    await receiver.stop()
    await outbox.enqueue_many(deliveries(10, start=10))
    await asyncio.sleep(0.4)
    await receiver.start()
    await receiver.wait_for(20)
    await mgr.stop()
    await outbox.store.close()
    assert receiver.accepted_ids() == [f"m{i:04d}" for i in range(20)]


async def test_refused_message_is_dead_lettered_after_the_limit_and_the_queue_moves_on(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.refuse.add("m0003")
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    mgr = manager(outbox, receiver)
    await mgr.start()
    await outbox.enqueue_many(deliveries(8))
    await receiver.wait_for(7)
    await mgr.stop()
    dead = await outbox.rows("http:dno-a", "dead")
    stats = await outbox.stats()
    await outbox.store.close()
    assert [r.message_id for r in dead] == ["m0003"]
    assert dead[0].refusals == FAST.max_attempts and dead[0].last_error == "HTTP 500"
    assert stats[0].dead == 1 and stats[0].depth == 0
    arrivals = [r.message_id for r in receiver.log]
    # head of line: every attempt of m0003 came after m0002 and before m0004 was first sent
    assert arrivals == ["m0000", "m0001", "m0002", "m0003", "m0003", "m0003", "m0004", "m0005", "m0006", "m0007"]


async def test_a_redirect_is_a_refusal_never_a_delivery_and_is_not_followed(tmp_path: Path, receiver: Receiver) -> None:
    # following a 302 would turn the POST into a GET without the body: a "delivery" of nothing
    receiver.redirect.add("m0001")
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    mgr = manager(outbox, receiver)
    await mgr.start()
    await outbox.enqueue_many(deliveries(3))
    await receiver.wait_for(2)
    for _ in range(200):  # until the redirected message has used its attempts
        if await outbox.rows("http:dno-a", "dead"):
            break
        await asyncio.sleep(0.05)
    await mgr.stop()
    dead = await outbox.rows("http:dno-a", "dead")
    delivered = await outbox.rows("http:dno-a", "delivered")
    await outbox.store.close()
    assert receiver.moved == []  # never followed
    assert [r.message_id for r in dead] == ["m0001"] and dead[0].last_error.startswith("HTTP 302")
    assert dead[0].refusals == FAST.max_attempts
    assert sorted(r.message_id for r in delivered) == ["m0000", "m0002"]


async def test_dead_letters_can_be_requeued(tmp_path: Path, receiver: Receiver) -> None:
    receiver.refuse.add("m0001")
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    mgr = manager(outbox, receiver)
    await mgr.start()
    await outbox.enqueue_many(deliveries(3))
    await receiver.wait_for(2)
    while not await outbox.rows("http:dno-a", "dead"):
        await asyncio.sleep(0.02)
    receiver.refuse.clear()  # the DNO fixed its side
    assert await outbox.requeue_dead("http:dno-a") == 1
    await receiver.wait_for(3)  # the running worker picks it up again
    await mgr.stop()
    await outbox.store.close()
    assert sorted(receiver.accepted_ids()) == ["m0000", "m0001", "m0002"]


async def test_a_new_outbox_on_the_same_database_resumes_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "o.sqlite3"
    receiver = Receiver()  # down during the first run
    outbox = await open_outbox(db)
    mgr = manager(outbox, receiver)
    await mgr.start()
    await outbox.enqueue_many(deliveries(25))
    await asyncio.sleep(0.3)
    await mgr.stop()
    await outbox.store.close()  # "process exit"

    await receiver.start()
    outbox2 = await open_outbox(db)
    first = (await outbox2.rows("http:dno-a"))[0]
    assert first.attempts >= 1 and first.last_error  # the failed attempts were recorded durably
    mgr2 = manager(outbox2, receiver, seed=8)
    await mgr2.start()
    await receiver.wait_for(25)
    await mgr2.stop()
    await outbox2.store.close()
    await receiver.stop()
    assert receiver.accepted_ids() == [f"m{i:04d}" for i in range(25)]


async def test_unreachable_endpoint_never_dead_letters_by_default(tmp_path: Path) -> None:
    receiver = Receiver()  # never started
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    cfg = OutboxConfig(backoff_initial=0.01, backoff_max=0.02, max_attempts=2, poll_interval=0.05, request_timeout=0.5,
                       drain_timeout=1.0)
    mgr = manager(outbox, receiver, cfg)
    await mgr.start()
    await outbox.enqueue_many(deliveries(2))
    await asyncio.sleep(0.5)
    await mgr.stop()
    rows = await outbox.rows("http:dno-a")
    await outbox.store.close()
    assert [r.state for r in rows] == ["pending", "pending"]
    assert rows[0].attempts > cfg.max_attempts and rows[1].attempts == 0  # head of line


async def test_outbox_gauges_report_depth_and_oldest_age(tmp_path: Path) -> None:
    receiver = Receiver()  # down
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    mgr = manager(outbox, receiver)
    await outbox.enqueue_many(deliveries(4))
    await asyncio.sleep(0.05)
    await mgr.refresh_stats()
    assert mgr.metrics is not None
    text = mgr.metrics.render().decode()
    await outbox.store.close()
    assert 'duisgw_outbox_depth{queue="http:dno-a"} 4.0' in text
    age = float(text.split('duisgw_outbox_oldest_age_seconds{queue="http:dno-a"} ')[1].split()[0])
    assert 0.04 <= age < 5


# ------------------------------------------------------------------------------------------ retention purge


async def _delivered_rows(outbox: Outbox, n: int) -> list[int]:
    """``n`` rows enqueued and marked delivered (``done_at`` now); their sequence numbers."""
    await outbox.enqueue_many(deliveries(n))
    rows = await outbox.pending("http:dno-a", after_seq=0, limit=n)
    await outbox.mark_delivered(*(r.seq for r in rows))
    return [r.seq for r in rows]


async def test_the_retention_purge_deletes_in_bounded_transactions_and_lets_other_writes_through(
    tmp_path: Path,
) -> None:
    """A purge of a minute of sustained traffic was one transaction (60,000 rows held the store's thread
    ~650 ms): now each transaction deletes at most ``chunk`` rows, and a write queued meanwhile commits
    between two of them instead of waiting for the whole purge."""
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    try:
        await _delivered_rows(outbox, 1000)
        cutoff = time.time() + 60  # every row is past its retention
        before = outbox.store.batches
        purge = asyncio.create_task(outbox.purge_delivered(cutoff, chunk=50))
        await asyncio.sleep(0)  # the purge's first chunk is queued
        await outbox.store.write(lambda c: c.execute("CREATE TABLE other (v INTEGER)"))
        assert not purge.done()  # the other write did not wait for the whole purge
        assert await purge == 1000
        assert outbox.store.batches - before >= 1000 // 50  # one transaction per chunk at least
        left = await outbox.store.read(lambda c: c.execute("SELECT count(*) FROM outbox").fetchone()[0])
        assert left == 0
    finally:
        await outbox.store.close()


async def test_the_retention_purge_keeps_pending_rows_and_rows_delivered_after_the_cutoff(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path / "o.sqlite3")
    try:
        old = await _delivered_rows(outbox, 120)
        cutoff = time.time() + 60
        await outbox.store.write(  # delivered after the cutoff: within retention
            lambda c: c.execute("UPDATE outbox SET done_at = ? WHERE seq > ?", (cutoff + 1, old[99]))
        )
        await outbox.enqueue_many(deliveries(7, start=500))  # still pending
        assert await outbox.purge_delivered(cutoff, chunk=30) == 100  # 3 full chunks and a short one
        kept = await outbox.store.read(
            lambda c: c.execute("SELECT state, count(*) FROM outbox GROUP BY state ORDER BY state").fetchall()
        )
        assert kept == [("delivered", 20), ("pending", 7)]
    finally:
        await outbox.store.close()
