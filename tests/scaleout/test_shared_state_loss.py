"""Losing the shared state (a review of the Redis scale-out, thirteenth session): Redis restarted without
persistence (or failed over to a replica without the state) used to go unnoticed. Every instance kept its
offset into the learned list, so the links learned after the restart sat below it and were never applied
(a stale ESME→Comms Hub link SUPPRESSED a genuine AD1), and a held AD1 already answered 202 was gone from
Redis — never delivered, suppressed or timed out, the held gauge at 0, nothing logged or counted.

Now the state carries an epoch (``{prefix}epoch``, a random token set by the first instance to start on it),
read by every load, commit and tick: gone or changed, the instance counts the loss
(``duisgw_shared_state_lost_total``), logs it at ERROR, reads the learned list again from 0, and re-submits
the holds it recorded (``shared_holds`` in its store) before it releases anything, so they are released by
their original deadlines. Each test runs its own real ``redis-server`` (no persistence, as the fixture's)
and restarts it empty."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, learned, outage, request, response, t
from redisfixture import RedisServer, reconnect, reconnect_engines, redis_available
from servicekit import DNO_USER, Receiver, counters, running, timed
from test_shared_release_kind import AD1, held_ad1, instance

from gateway.engine import Decision, Duplicate, Engine, EngineConfig, Tick
from gateway.engine.effects import Action
from gateway.engine.errors import StoreError
from gateway.service.app import queues_for
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator
from gateway.store.redis_state import RedisState, RedisStateConfig, TxResult
from gateway.store.shared import SharedEngine, _recorded_holds
from gateway.store.sqlite import SqliteStore
from gateway.testkit.scenario import World

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")

X = 0x00DB1234567890A0  # the ESME (in scope), first behind CH1
CH1, MPAN1 = 0x00DB1234567890A2, "1234567890126"
CH2 = 0x00DB1234567890B2  # its Comms Hub after a hub swap (learned from an 8.2 response)
FILLER = [0x00DB0000000000F0 + i for i in range(5)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    yield srv
    srv.stop()





def decisions(effects: Sequence[object]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


# ------------------------------------------------------------------------------------------ learned links


async def test_after_redis_restarts_empty_an_instance_uses_the_link_another_learned_and_forwards_the_genuine_ad1(
    server: RedisServer,
) -> None:
    """A read five rows of the learned list before the restart; B learns, after it, that X moved to CH2 (one
    row, below A's offset). A genuine AD1 of CH1 in X's activation window: A forwards it (``ch-unknown``), as
    B and a single node do — it used to suppress it on its stale link. The loss is counted on both."""
    rows = [(X, CH1, MPAN1, "Landis+Gyr")] + [(e, e + 2, None, "Landis+Gyr") for e in FILLER]

    def make(name: str) -> RedisState:
        return RedisState(RedisStateConfig(url=server.url, instance=name), EngineConfig(), MemoryScope([X]),
                          MemoryInventory(rows))  # fmt: skip

    a, b = make("a"), make("b")
    try:
        await a.start()
        await b.start()
        for i, e in enumerate(FILLER):  # ordinary traffic: the shared learned list grows to 5 rows
            await (a if i % 2 else b).decide(learned(i, esme=e, ch=e + 0x10, mpan=None, time=i), None)
        await a.decide(request(9, counter=1, esme=FILLER[0]), None)  # a load: A applies all 5
        server.restart_empty()
        await reconnect(a, b)
        await b.decide(learned(60, esme=X, ch=CH2, mpan=MPAN1, time=59, mid="inv-x"), None)
        await b.decide(request(70, counter=7, esme=X, mid="req-x"), None)
        await b.decide(response(71, counter=7, esme=X, mid="rsp-x"), None)

        tx = await a.decide(outage(72, ch=CH1, mpan=None, mid="ad1-ch1"), b"<AD1>")
        (d,) = decisions(tx.effects)
        assert a.inventory.ch_for_esme(X) == CH2
        assert (d.action, str(d.reason)) == (Action.FORWARD, "ch-unknown")

        single = Engine(EngineConfig(), MemoryScope([X]), MemoryInventory(rows))
        for ev in (learned(60, esme=X, ch=CH2, mpan=MPAN1, time=59), request(70, counter=7, esme=X),
                   response(71, counter=7, esme=X)):  # fmt: skip
            single.handle(ev)
        (one,) = decisions(single.handle(outage(72, ch=CH1, mpan=None, mid="ad1-single")))
        assert (one.action, one.reason) == (d.action, d.reason)
        assert (a.lost, b.lost) == (1, 1)
        assert a.epoch == b.epoch and a.epoch is not None
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_learned_list_going_back_in_time_under_the_same_epoch_is_a_loss_for_every_instance(
    server: RedisServer,
) -> None:
    """A failover to a replica that lags keeps the epoch but not the last writes: an instance that read more
    of the learned list than there is starts a new epoch, so that the others notice it too (and recover
    their holds)."""
    rows = [(X, CH1, MPAN1, "Landis+Gyr")]
    a, b = (RedisState(RedisStateConfig(url=server.url, instance=n), EngineConfig(), MemoryScope([X]),
                       MemoryInventory(rows)) for n in ("a", "b"))  # fmt: skip
    admin = redis.Redis.from_url(server.url)
    try:
        await a.start()
        await b.start()
        for i in range(3):
            await a.decide(learned(i, esme=X, ch=CH1, mpan=MPAN1, time=i), None)
        await a.decide(request(8, counter=1, esme=X), None)  # a load: A read the 3 rows
        old = a.epoch
        admin.rpop("duisgw:learned")  # the replica never got the last row
        await a.decide(request(9, counter=2, esme=X), None)
        assert a.lost == 1 and a.epoch != old
        await b.tick(t(10))
        assert b.lost == 1 and b.epoch == a.epoch
    finally:
        admin.close()
        await a.aclose()
        await b.aclose()


# ------------------------------------------------------------------------------------------ holds


def _engine(server: RedisServer, store: Path, name: str) -> SharedEngine:
    return SharedEngine(SqliteStore(store), RedisStateConfig(url=server.url, instance=name), EngineConfig(),
                        MemoryScope([ESME]), MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr")]))  # fmt: skip


def _hold(eng: SharedEngine, mid: str, at: float = 0, raw: bytes = b"<AD1 bytes>") -> Decision:
    eng.submit(request(at, counter=21 + int(at)), b"<11.3 request>")  # the response never comes: the AD1 waits
    (d,) = decisions(eng.submit_many([(outage(at + 2, mid=mid), raw)], {mid: ("dno-a", AD1)})[0])
    assert d.action is Action.HOLD and d.hold_deadline is not None
    return d


def test_a_hold_answered_202_is_held_again_after_redis_restarts_empty_and_released_by_its_deadline(
    server: RedisServer, tmp_path: Path
) -> None:
    """A holds an AD1 (answered 202); Redis restarts empty. B ticks first (nothing of its own to recover);
    A's next tick holds it again — same deadline, bytes and route — before it releases anything, and
    B's tick past the deadline releases and delivers it (forwarded: the activation it waited for was lost
    with the state, so nothing explains it). Counted once on each instance, recovered once."""
    a, b = _engine(server, tmp_path / "a.sqlite3", "a"), _engine(server, tmp_path / "b.sqlite3", "b")
    try:
        hold = _hold(a, "ad1-held")
        deadline = hold.hold_deadline
        assert deadline is not None
        server.restart_empty()
        reconnect_engines(a, b)
        before = deadline - dt.timedelta(seconds=30)
        assert b.submit(Tick(before)) == []
        assert b._run(b.state.held_ids()) == []  # B has nothing of its own to give back
        assert a.submit(Tick(before)) == []  # held again, not released: its deadline has not passed
        admin = redis.Redis.from_url(server.url)
        try:
            assert admin.zrange("duisgw:held", 0, -1, withscores=True) == [
                (b"ad1-held", float(int(deadline.timestamp() * 1_000_000)))
            ]
            assert admin.get("duisgw:raw:ad1-held") == b"<AD1 bytes>"
            assert admin.get("duisgw:route:ad1-held") == b"dno-a"
            assert admin.get("duisgw:route-kind:ad1-held") == AD1.encode()
        finally:
            admin.close()
        assert a.held_count == 1
        # a re-delivery now is a duplicate of the hold (its idempotency key came back with it)
        dup = b.submit(outage(2, mid="ad1-held"), b"<AD1 bytes>")
        assert [type(e).__name__ for e in dup] == ["Duplicate"]

        released = decisions(b.submit(Tick(deadline + dt.timedelta(seconds=1))))
        assert [(d.message_id, d.action, str(d.reason)) for d in released] == [
            ("ad1-held", Action.RELEASE_FORWARD, "hold-timeout")  # its activation given back: as on one node
        ]
        assert b.store.undelivered() == [("ad1-held", b"<AD1 bytes>")]
        assert (a.state.lost, b.state.lost) == (1, 1)
        assert decisions(a.submit(Tick(deadline + dt.timedelta(minutes=5)))) == []  # recovered once, not again
    finally:
        a.close()
        b.close()


def test_a_hold_lost_to_an_older_snapshot_of_the_same_state_is_held_again(
    server: RedisServer, tmp_path: Path
) -> None:
    """Redis restarts from an RDB snapshot taken before the hold (the epoch is in it, the hold is not): the
    commit count A read is higher than the restored one, so the state went back; A starts a new epoch, holds
    the AD1 again and B, noticing the new epoch, counts the loss too."""
    a, b = _engine(server, tmp_path / "a.sqlite3", "a"), _engine(server, tmp_path / "b.sqlite3", "b")
    admin = redis.Redis.from_url(server.url)
    try:
        a.submit(Tick(t(-1)))
        admin.save()  # the snapshot: the epoch is in it, nothing held
        hold = _hold(a, "ad1-held")
        assert hold.hold_deadline is not None
        admin.close()
        server.restart_empty()  # (save "": nothing written at shutdown; the snapshot is loaded at start)
        admin = redis.Redis.from_url(server.url)
        old = admin.get("duisgw:epoch")  # the same state as A read, older: the hold is not in it
        assert admin.zcard("duisgw:held") == 0
        reconnect_engines(a, b)
        assert a.submit(Tick(hold.hold_deadline - dt.timedelta(seconds=10))) == []
        assert [m.decode() for m in admin.zrange("duisgw:held", 0, -1)] == ["ad1-held"]
        assert b.submit(Tick(hold.hold_deadline - dt.timedelta(seconds=5))) == []  # B notices the new epoch
        released = decisions(b.submit(Tick(hold.hold_deadline + dt.timedelta(seconds=1))))
        assert [d.message_id for d in released] == ["ad1-held"]
        assert (a.state.lost, b.state.lost) == (1, 1)
        assert old is not None and admin.get("duisgw:epoch") != old  # a new epoch: every instance noticed
    finally:
        admin.close()
        a.close()
        b.close()


def test_a_hold_of_an_instance_stopped_during_the_loss_is_recovered_at_its_next_start(
    server: RedisServer, tmp_path: Path
) -> None:
    """A holds an AD1 and stops; Redis restarts empty and B runs on the new state. A, started again, finds
    the epoch its store recorded gone: the loss is counted and its first tick holds the AD1 again and, its
    deadline passed, releases it."""
    a = _engine(server, tmp_path / "a.sqlite3", "a")
    hold = _hold(a, "ad1-held")
    assert hold.hold_deadline is not None
    a.close()
    server.restart_empty()
    b = _engine(server, tmp_path / "b.sqlite3", "b")
    try:
        assert b.submit(Tick(hold.hold_deadline - dt.timedelta(seconds=5))) == []
        a = _engine(server, tmp_path / "a.sqlite3", "a")
        released = decisions(a.submit(Tick(hold.hold_deadline + dt.timedelta(seconds=1))))
        assert [(d.message_id, d.action) for d in released] == [("ad1-held", Action.RELEASE_FORWARD)]
        assert a.store.undelivered() == [("ad1-held", b"<AD1 bytes>")]
        assert a.state.lost == 1  # counted at its start
    finally:
        a.close()
        b.close()


def test_a_hold_decided_again_or_released_elsewhere_before_the_recovery_is_not_held_again(
    server: RedisServer, tmp_path: Path
) -> None:
    """What A recorded is held again only when it is neither held nor decided: an AD1 the DSP re-delivered
    to B after the loss (decided afresh there) is not held again by A, and a hold B released before the
    loss is no longer recorded by A once A's periodic check saw it released (no second delivery)."""
    a, b = _engine(server, tmp_path / "a.sqlite3", "a"), _engine(server, tmp_path / "b.sqlite3", "b")
    try:
        first = _hold(a, "ad1-first")
        assert first.hold_deadline is not None
        released = decisions(b.submit(Tick(first.hold_deadline + dt.timedelta(seconds=1))))
        assert [d.message_id for d in released] == ["ad1-first"]
        a._pruned = float("-inf")  # A's periodic check of its recorded holds is due
        a.submit(Tick(first.hold_deadline + dt.timedelta(seconds=2)))
        late = _hold(a, "ad1-late", at=20, raw=b"<late>")
        assert late.hold_deadline is not None
        server.restart_empty()
        reconnect_engines(a, b)
        (again,) = decisions(b.submit(outage(22, mid="ad1-late"), b"<late>"))  # re-delivered to B: decided afresh
        assert again.action is Action.FORWARD
        assert a.submit(Tick(late.hold_deadline + dt.timedelta(seconds=1))) == []
        assert a._run(a.state.held_ids()) == []
        assert a.state.lost == 1
    finally:
        a.close()
        b.close()


def _recorded(eng: SharedEngine) -> list[str]:
    return [row[0] for row in eng._in_store(_recorded_holds)]


def test_a_hold_whose_batch_failed_after_its_commit_is_recorded_when_decided_again_and_held_again_after_a_loss(
    server: RedisServer, tmp_path: Path
) -> None:
    """A batch whose AD1's hold committed in Redis fails at another message (contention, a timeout): the
    processor decides each job again alone (``GatewayProcessor._isolating``) and the AD1 comes back as a
    duplicate of its own hold, answered 202. Its ``shared_holds`` row used to be written only for the hold's
    own commit, so after a later loss of the state it was never held again, never delivered. Now a duplicate
    of a hold still held is recorded like one: held again after the loss, released by its deadline."""
    a = _engine(server, tmp_path / "a.sqlite3", "a")
    try:
        a.submit(request(0, counter=21), b"<11.3 request>")  # the response never comes: the AD1 waits
        decide = a.state.decide

        async def failing(event: Any, raw: bytes | None, route: tuple[str, str] | None = None) -> TxResult:
            if event.message_id == "other":
                raise StoreError("shared state: no commit after 200 attempts (contention)")
            return await decide(event, raw, route)

        a.state.decide = failing  # type: ignore[method-assign]
        routes = {"ad1-x": ("dno-a", AD1)}
        with pytest.raises(StoreError):
            a.submit_many([(outage(2, mid="ad1-x"), b"<AD1 bytes>"), (request(3, counter=40, mid="other"), b"<r>")],
                          routes)  # fmt: skip
        a.state.decide = decide  # type: ignore[method-assign]
        (dup,) = a.submit_many([(outage(2, mid="ad1-x"), b"<AD1 bytes>")], routes)[0]  # the job alone
        assert isinstance(dup, Duplicate) and dup.original is not None and dup.original.action is Action.HOLD
        assert _recorded(a) == ["ad1-x"]
        deadline = dup.original.hold_deadline
        assert deadline is not None

        server.restart_empty()
        reconnect_engines(a)
        assert a.submit(Tick(deadline - dt.timedelta(seconds=5))) == []
        assert a._run(a.state.held_ids()) == ["ad1-x"]
        assert a.routes(["ad1-x"]) == {"ad1-x": "dno-a"}
        released = decisions(a.submit(Tick(deadline + dt.timedelta(seconds=1))))
        assert [(d.message_id, d.action) for d in released] == [("ad1-x", Action.RELEASE_FORWARD)]
        assert a.store.undelivered() == [("ad1-x", b"<AD1 bytes>")]
    finally:
        a.close()


def test_a_hold_re_delivered_to_another_instance_is_recorded_by_both_and_held_again_once_after_a_loss(
    server: RedisServer, tmp_path: Path
) -> None:
    """The DSP re-delivers to B an AD1 that A holds: B answers it as a duplicate of the hold and records it
    too (it would recover it were A never to come back). After a loss both hold it again at their ticks: only
    the first commits (the second finds its idempotency key, atomically), and it is released once."""
    a, b = _engine(server, tmp_path / "a.sqlite3", "a"), _engine(server, tmp_path / "b.sqlite3", "b")
    try:
        hold = _hold(a, "ad1-x")
        assert hold.hold_deadline is not None
        (dup,) = b.submit_many([(outage(2, mid="ad1-x"), b"<AD1 bytes>")], {"ad1-x": ("dno-a", AD1)})[0]
        assert isinstance(dup, Duplicate)
        assert _recorded(a) == _recorded(b) == ["ad1-x"]

        server.restart_empty()
        reconnect_engines(a, b)
        before = hold.hold_deadline - dt.timedelta(seconds=5)
        assert a.submit(Tick(before)) == [] and b.submit(Tick(before)) == []
        assert a._run(a.state.held_ids()) == ["ad1-x"]
        assert a.held_count == 1 and b.held_count == 1
        after = hold.hold_deadline + dt.timedelta(seconds=1)
        released = decisions(b.submit(Tick(after))) + decisions(a.submit(Tick(after)))
        assert [(d.message_id, d.action) for d in released] == [("ad1-x", Action.RELEASE_FORWARD)]
        assert b.store.undelivered() == [("ad1-x", b"<AD1 bytes>")] and a.store.undelivered() == []
    finally:
        a.close()
        b.close()


def test_a_hold_committed_in_the_batch_whose_tick_notices_the_loss_is_held_again(
    server: RedisServer, tmp_path: Path
) -> None:
    """The AD1's hold commits, Redis loses its data, and a tick later in the same batch notices the loss and
    holds again what the store recorded — not this hold, whose row the batch writes after. It was never held
    again (answered 202, never delivered). Now each hold of the batch committed under an epoch lost since is
    held again before the batch is answered, and released by its deadline."""
    a = _engine(server, tmp_path / "a.sqlite3", "a")
    admin = redis.Redis.from_url(server.url)
    try:
        a.submit(request(0, counter=21), b"<11.3 request>")  # the response never comes: the AD1 waits
        decide = a.state.decide

        async def then_lost(event: Any, raw: bytes | None, route: tuple[str, str] | None = None) -> TxResult:
            tx = await decide(event, raw, route)
            if event.message_id == "ad1-x":
                admin.flushall()  # Redis restarted empty right after the hold's commit
            return tx

        a.state.decide = then_lost  # type: ignore[method-assign]
        ad1 = outage(2, mid="ad1-x")
        got = a.submit_many([(ad1, b"<AD1 bytes>"), (Tick(ad1.arrival + dt.timedelta(seconds=1)), None)],
                            {"ad1-x": ("dno-a", AD1)})  # fmt: skip
        (hold,) = decisions(got[0])
        assert hold.action is Action.HOLD and hold.hold_deadline is not None
        assert a.state.lost == 1 and a._epoch == a.state.epoch
        assert admin.zrange("duisgw:held", 0, -1, withscores=True) == [
            (b"ad1-x", float(int(hold.hold_deadline.timestamp() * 1_000_000)))
        ]
        assert admin.get("duisgw:raw:ad1-x") == b"<AD1 bytes>"
        assert admin.get("duisgw:route:ad1-x") == b"dno-a"
        released = decisions(a.submit(Tick(hold.hold_deadline + dt.timedelta(seconds=1))))
        assert [(d.message_id, d.action) for d in released] == [("ad1-x", Action.RELEASE_FORWARD)]
        assert a.store.undelivered() == [("ad1-x", b"<AD1 bytes>")]
    finally:
        admin.close()
        a.close()


async def test_a_held_ad1_is_delivered_by_its_deadline_after_redis_restarts_empty_and_the_loss_is_counted(
    tmp_path: Path, server: RedisServer
) -> None:
    """A real gateway (in process): an AD1 answered 202 (held), Redis restarted empty, the gateway ticks
    past the hold limit: the AD1 is released and reaches its DNO (forwarded ``hold-timeout``, as on a single
    node: the pending activation it waited for is given back with the hold; it used to go with the state, and
    the release said ``no-activation``), and ``duisgw_shared_state_lost_total`` is 1."""
    world = World.generated("shared-state-loss")
    scenario = held_ad1(world)
    reference = world.write_reference(tmp_path / "reference")
    receiver = Receiver()
    await receiver.start()
    try:
        messages = timed(scenario)
        cfg = instance(tmp_path, "gw-a", reference, receiver, server.url)
        gateway = build_gateway(cfg)
        service = make_service(gateway)
        async with running(service):
            proc = service.processor
            assert isinstance(proc, GatewayProcessor)
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                answers = [await dsp.post(m) for m in messages]
            (held,) = [x for x, m in zip(answers, messages, strict=True) if m.lane == "inline"]
            assert (held.status, held.decision) == (202, "hold")
            mid = str(held.message_id)
            server.restart_empty()
            end = max(m.at for m in messages) + gateway.engine_config.hold_limit + dt.timedelta(seconds=1)
            released: list[Decision] = []
            for _ in range(3):  # the first tick after the restart may meet a dead pooled connection
                with contextlib.suppress(Exception):
                    released = await proc.advance(end)
                    break
            assert [(d.message_id, str(d.reason)) for d in released] == [(mid, "hold-timeout")]
            await receiver.wait_for(1)
            rows = [row for q in queues_for(cfg, "dno-a") for row in await service.outbox.rows(q)]
            assert counters(service, "duisgw_shared_state_lost") == {(): 1.0}
    finally:
        await receiver.stop()
    assert [r.message_id for r in receiver.log] == [mid]
    (row,) = rows
    assert (row.metadata["reason"], row.metadata["kind"]) == ("hold-timeout", AD1)


# ------------------------------------------------------------------------------------------ start-up checks


async def test_start_warns_when_redis_keeps_no_append_only_file_and_when_it_cannot_read_the_setting(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The shared state would not survive a Redis restart: a WARNING at start-up (never a refusal: tests run
    Redis without persistence). A user not allowed ``CONFIG`` (or a renamed command) starts with a
    warning too."""
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "gw-noconfig", "reset", "on", ">pw", "~*", "+@all", "-config")
    url = server.url.replace("redis://", "redis://gw-noconfig:pw@")
    try:
        for target in (server.url, url):
            state = RedisState(RedisStateConfig(url=target), EngineConfig(), MemoryScope([]), MemoryInventory([]))
            with caplog.at_level(logging.WARNING, logger="duisgw.shared"):
                caplog.clear()
                await state.start()
            await state.aclose()
            text = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
            if target == server.url:
                assert "keeps no append-only file (appendonly no" in text
            else:
                assert "cannot read the Redis persistence settings" in text
        admin.config_set("appendonly", "yes")
        state = RedisState(RedisStateConfig(url=server.url), EngineConfig(), MemoryScope([]), MemoryInventory([]))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="duisgw.shared"):
            await state.start()
        await state.aclose()
        assert not [r for r in caplog.records if "append-only" in r.getMessage()]
    finally:
        admin.close()
