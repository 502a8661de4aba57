"""Losing the shared state, the activations: an activation recorded in Redis (11.3 request / response, 8F66 /
8F67 outcomes, cancellations) went with the state, so the meter's reboot AD1 that followed the loss was
forwarded as a false alarm (what MP102B is about) and a future-dated activation's window was forgotten.

Now each instance records in its own SQLite store, in the batch's own transaction, the newest version of
every activation record it commits (dropped when retention would prune it), and after a loss it writes back,
at its next tick and before it releases anything, each one the state does not have — never over a version
that knows evidence this one does not (one written since the loss, or a newer one another instance gave
back), and exactly as it was committed (only verified evidence ever made an activation). Each test runs its
own real ``redis-server`` (no persistence) and restarts it empty."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from engine_support import (
    CH,
    ESME,
    MPAN,
    MemoryInventory,
    MemoryScope,
    fd_outcome,
    outage,
    request,
    response,
    t,
)
from redisfixture import RedisServer, reconnect_engines, redis_available
from servicekit import DNO_USER, Receiver, running, timed
from test_shared_release_kind import instance

from gateway.engine import Decision, Engine, EngineConfig, Tick
from gateway.engine.effects import Action
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator
from gateway.store.redis_state import RedisStateConfig, TxResult
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import SqliteStore
from gateway.testkit.scenario import Scenario, World

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")

PARTITION = f"duisgw:e:{{{ESME:016X}}}"


@contextlib.contextmanager
def two_engines(server: RedisServer, tmp_path: Path) -> Iterator[tuple[SharedEngine, SharedEngine]]:
    """Instances ``a`` and ``b`` on one shared state, each with its own store; closed after."""
    a, b = engine(server, tmp_path / "a.sqlite3", "a"), engine(server, tmp_path / "b.sqlite3", "b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def engine(server: RedisServer, store: Path, name: str, config: EngineConfig | None = None) -> SharedEngine:
    return SharedEngine(SqliteStore(store), RedisStateConfig(url=server.url, instance=name), config or EngineConfig(),
                        MemoryScope([ESME]), MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr")]))  # fmt: skip


def decisions(effects: Sequence[object]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


def decide(eng: SharedEngine, event: Any, raw: bytes = b"<AD1>") -> Decision:
    (d,) = decisions(eng.submit(event, raw))
    return d


def shared_activations(server: RedisServer) -> dict[str, dict[str, Any]]:
    """The activation records of ESME's partition in Redis, by key."""
    admin = redis.Redis.from_url(server.url)
    try:
        fields = admin.hgetall(PARTITION)
    finally:
        admin.close()
    return {k.decode()[2:]: json.loads(v) for k, v in fields.items() if k.startswith(b"a:")}


def recorded(eng: SharedEngine) -> list[tuple[str, str]]:
    """The activation records the instance's store keeps: (key, state)."""
    rows = eng._in_store(lambda db: db.execute("SELECT key, record FROM shared_activations ORDER BY key").fetchall())
    return [(str(k), str(json.loads(r)["state"])) for k, r in rows]


# ------------------------------------------------------------------------------------------ given back


def test_a_reboot_ad1_after_redis_restarts_empty_is_suppressed_because_the_activation_came_back(
    server: RedisServer, tmp_path: Path
) -> None:
    """A takes an immediate activation (request, successful response); Redis restarts empty; A's tick gives
    the activation back, and the meter's reboot AD1, decided by B, is suppressed in its window as a single
    node suppresses it. It used to be forwarded (``no-activation``): the activation went with the state."""
    with two_engines(server, tmp_path) as (a, b):
        a.submit(request(0, counter=7), b"<11.3 request>")
        a.submit(response(1, counter=7), b"<11.3 response>")
        server.restart_empty()
        reconnect_engines(a, b)
        assert a.submit(Tick(t(2))) == []
        d = decide(b, outage(3, mid="ad1-reboot"))
        single = Engine(EngineConfig(), MemoryScope([ESME]), MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr")]))
        for ev in (request(0, counter=7), response(1, counter=7)):
            single.handle(ev)
        (one,) = decisions(single.handle(outage(3, mid="ad1-single")))
        assert (d.action, str(d.reason)) == (one.action, str(one.reason)) == (Action.SUPPRESS, "activation-window")
        assert (d.window_opens, d.window_closes) == (one.window_opens, one.window_closes)
        assert a.state.lost == 1


async def test_a_gateway_suppresses_the_reboot_ad1_after_redis_restarts_empty_because_it_gave_the_activation_back(
    tmp_path: Path, server: RedisServer
) -> None:
    """A real gateway (in process): the DSP sends an 11.3 request and its successful response, Redis restarts
    empty, the gateway ticks, and the meter's reboot AD1 is answered ``suppress`` (activation-window), as
    before the loss. It used to be forwarded to the DNO as a genuine outage."""
    world = World.generated("shared-loss-activation")
    s = Scenario("reboot-after-loss", world)
    f, at = world.factory, s.t
    esme, ch, mpan = world.meter(1)
    s.observe("08:00:00", f.activate_request(esme, 5001), "11.3 request")
    s.observe("08:00:35", f.activate_response(esme, 5001, at("08:00:35")), "11.3 response: success")
    s.inline("08:06:10", f.ad1(ch, mpan, at("08:03:30"), at("08:06:10"), 101), "suppress", "activation-window")
    reference = world.write_reference(tmp_path / "reference")
    receiver = Receiver()
    await receiver.start()
    try:
        messages = timed(s)
        cfg = instance(tmp_path, "gw-a", reference, receiver, server.url)
        service = make_service(build_gateway(cfg))
        async with running(service):
            proc = service.processor
            assert isinstance(proc, GatewayProcessor)
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                observed = [await dsp.post(m) for m in messages if m.lane != "inline"]
                assert all(200 <= a.status < 300 for a in observed), [a.text for a in observed]
                server.restart_empty()
                for _ in range(3):  # the first tick after the restart may meet a dead pooled connection
                    with contextlib.suppress(Exception):
                        await proc.advance(at("08:01:00"))
                        break
                (ad1,) = [await dsp.post(m) for m in messages if m.lane == "inline"]
        assert (ad1.status, ad1.decision) == (200, "suppress"), ad1.text
    finally:
        await receiver.stop()
    assert receiver.log == []


def test_a_future_dated_activations_window_comes_back_and_an_ad1_at_its_execution_waits_for_its_outcome(
    server: RedisServer, tmp_path: Path
) -> None:
    """A takes a future-dated activation (request executing at minute 60, accepted). After the loss its
    window comes back: an AD1 at the execution time is held for the outcome (it used to be forwarded,
    nothing known), and the 8F66 that follows releases it suppressed."""
    with two_engines(server, tmp_path) as (a, b):
        a.submit(request(0, counter=8, execute=60), b"<11.3 request>")
        a.submit(response(1, counter=8, accepted=True), b"<11.3 response>")
        server.restart_empty()
        reconnect_engines(a, b)
        assert a.submit(Tick(t(2))) == []
        held = decide(b, outage(61, mid="ad1-fd"))
        assert (held.action, str(held.reason)) == (Action.HOLD, "pending-future")
        released = decisions(b.submit(fd_outcome(60, arrival=66, counter=8), b"<8F66>"))
        assert [(d.message_id, d.action) for d in released] == [("ad1-fd", Action.RELEASE_SUPPRESS)]


@pytest.mark.parametrize("first", ["older", "newer"])
def test_of_two_versions_of_one_activation_the_one_knowing_more_evidence_comes_back_in_either_order(
    server: RedisServer, tmp_path: Path, first: str
) -> None:
    """A committed the request (pending), B its successful response (confirmed: request and response). Both
    give their version back after the loss, in either order: the state ends with B's, whose evidence
    includes A's (evidence is only ever appended to a record, so it orders the versions on any instance),
    and the reboot AD1 is suppressed."""
    with two_engines(server, tmp_path) as (a, b):
        a.submit(request(0, counter=7), b"<11.3 request>")
        b.submit(response(1, counter=7), b"<11.3 response>")
        assert recorded(a) == [(f"{ESME:016X}:{0x90B3D51F30010000:016X}:7", "pending-immediate")]
        assert [state for _key, state in recorded(b)] == ["confirmed"]
        server.restart_empty()
        reconnect_engines(a, b)
        order = (a, b) if first == "older" else (b, a)
        for eng in order:
            assert eng.submit(Tick(t(2))) == []
        (rec,) = shared_activations(server).values()
        assert (rec["state"], len(rec["evidence"])) == ("confirmed", 2)
        d = decide(a, outage(3, mid="ad1-reboot"))
        assert (d.action, str(d.reason)) == (Action.SUPPRESS, "activation-window")


def test_an_activation_written_since_the_loss_is_not_overwritten_by_the_version_given_back(
    server: RedisServer, tmp_path: Path
) -> None:
    """A took a future-dated activation (request, accepted). After the loss and before A's tick, B takes its
    8F67 (failed): a record knowing evidence A's does not. A's tick leaves it as it is: an AD1 at the
    execution time is forwarded ``fd-failed``, as a single node would, not held on A's pending version."""
    with two_engines(server, tmp_path) as (a, b):
        a.submit(request(0, counter=8, execute=60), b"<11.3 request>")
        a.submit(response(1, counter=8, accepted=True), b"<11.3 response>")
        server.restart_empty()
        reconnect_engines(a, b)
        b.submit(fd_outcome(60, arrival=2, counter=8, success=False), b"<8F67>")
        assert a.submit(Tick(t(3))) == []
        (rec,) = shared_activations(server).values()
        assert rec["state"] == "failed" and len(rec["evidence"]) == 1
        d = decide(b, outage(61, mid="ad1-fd"))
        assert (d.action, str(d.reason)) == (Action.FORWARD, "fd-failed")


@pytest.mark.parametrize("first", ["a", "b"])
def test_an_activation_cancelled_on_another_instance_before_the_loss_does_not_come_back_open(
    server: RedisServer, tmp_path: Path, first: str
) -> None:
    """A took a future-dated activation (pending); B then took the cancellation, which retracted it (B
    committed, and recorded, the cancelled version). After the loss both give back what they recorded, in
    either order: the activation is cancelled, and an AD1 at its execution time is forwarded ``cancelled``
    rather than held on the pending version A recorded."""
    with two_engines(server, tmp_path) as (a, b):
        a.submit(request(0, counter=8, execute=60), b"<11.3 request>")
        a.submit(response(1, counter=8, accepted=True), b"<11.3 response>")
        b.submit(request(5, counter=9, cancel=True), b"<11.3 cancellation>")
        server.restart_empty()
        reconnect_engines(a, b)
        for eng in (a, b) if first == "a" else (b, a):
            assert eng.submit(Tick(t(6))) == []
        states = sorted(rec["state"] for rec in shared_activations(server).values())
        assert states == ["cancelled", "cancelled"]
        d = decide(a, outage(61, mid="ad1-fd"))
        assert (d.action, str(d.reason)) == (Action.FORWARD, "cancelled")


def test_a_cancellation_taken_since_the_loss_retracts_the_pending_activation_given_back(
    server: RedisServer, tmp_path: Path
) -> None:
    """A took a future-dated activation (pending). After the loss and before A's tick, B takes a cancellation
    of the meter's pending activations (sent after A's record was last changed, before its execution time):
    it retracted nothing then. The pending version A gives back is retracted as the cancellation would have
    retracted it: an AD1 at the execution time is forwarded ``cancelled``, not held."""
    with two_engines(server, tmp_path) as (a, b):
        a.submit(request(0, counter=8, execute=60), b"<11.3 request>")
        a.submit(response(1, counter=8, accepted=True), b"<11.3 response>")
        server.restart_empty()
        reconnect_engines(a, b)
        b.submit(request(5, counter=9, cancel=True), b"<11.3 cancellation>")
        assert a.submit(Tick(t(6))) == []
        recs = shared_activations(server)
        assert sorted(rec["state"] for rec in recs.values()) == ["cancelled", "cancelled"]
        d = decide(b, outage(61, mid="ad1-fd"))
        assert (d.action, str(d.reason)) == (Action.FORWARD, "cancelled")


def test_verified_evidence_only_comes_back_and_an_unverified_response_does_not_confirm_it(
    server: RedisServer, tmp_path: Path
) -> None:
    """A took a verified request and an unverified response of the same command (kept apart as unverified
    evidence, never an activation). What comes back is the activation as it was committed, pending: the
    reboot AD1 is held for the outcome, never suppressed on the unverified response."""
    with two_engines(server, tmp_path) as (a, b):
        a.submit(request(0, counter=7), b"<11.3 request>")
        a.submit(response(1, counter=7, verified=False), b"<11.3 response, bad signature>")
        assert [state for _key, state in recorded(a)] == ["pending-immediate"]
        server.restart_empty()
        reconnect_engines(a, b)
        assert a.submit(Tick(t(2))) == []
        (rec,) = shared_activations(server).values()
        assert rec["state"] == "pending-immediate"
        d = decide(b, outage(3, mid="ad1-reboot"))
        assert (d.action, str(d.reason)) == (Action.HOLD, "pending-immediate")


# ------------------------------------------------------------------------------------------ what is recorded


def test_the_store_keeps_the_newest_version_of_each_activation_committed_here_and_drops_it_past_retention(
    server: RedisServer, tmp_path: Path
) -> None:
    """One row per activation, the version of its latest commit here (the request's pending version, then the
    response's confirmed one). Once the gateway clock passes its retention the periodic check drops it, and
    after a loss nothing past retention is given back."""
    config = EngineConfig(retention=dt.timedelta(hours=1))
    a = engine(server, tmp_path / "a.sqlite3", "a", config)
    try:
        a.submit(request(0, counter=7), b"<11.3 request>")
        assert [state for _key, state in recorded(a)] == ["pending-immediate"]
        a.submit(response(1, counter=7), b"<11.3 response>")
        assert [state for _key, state in recorded(a)] == ["confirmed"]
        a.submit(Tick(t(30)))
        a._pruned = float("-inf")  # the periodic check is due
        a.submit(Tick(t(31)))
        assert len(recorded(a)) == 1  # within retention: kept
        a.submit(Tick(t(200)))
        a._pruned = float("-inf")
        a.submit(Tick(t(201)))
        assert recorded(a) == []
        server.restart_empty()
        reconnect_engines(a)
        a.submit(Tick(t(202)))
        assert a.state.lost == 1 and shared_activations(server) == {}
    finally:
        a.close()


def test_an_activation_past_retention_during_the_loss_is_not_given_back(server: RedisServer, tmp_path: Path) -> None:
    """The store still has the row (no periodic check ran), but the first tick after the loss is past the
    activation's retention: it is not written back (the engine would prune it at once) and its row goes."""
    config = EngineConfig(retention=dt.timedelta(hours=1))
    a = engine(server, tmp_path / "a.sqlite3", "a", config)
    try:
        a.submit(request(0, counter=7), b"<11.3 request>")
        a.submit(response(1, counter=7), b"<11.3 response>")
        server.restart_empty()
        reconnect_engines(a)
        a.submit(Tick(t(200)))
        assert a.state.lost == 1 and shared_activations(server) == {}
        assert recorded(a) == []
    finally:
        a.close()


def test_an_activation_of_an_instance_stopped_during_the_loss_is_given_back_at_its_next_start(
    server: RedisServer, tmp_path: Path
) -> None:
    """A takes an activation and stops; Redis restarts empty and B runs on the new state. A, started again,
    finds the epoch its store recorded gone: its first tick gives the activation back, and the reboot AD1
    is suppressed."""
    a = engine(server, tmp_path / "a.sqlite3", "a")
    a.submit(request(0, counter=7), b"<11.3 request>")
    a.submit(response(1, counter=7), b"<11.3 response>")
    a.close()
    server.restart_empty()
    b = engine(server, tmp_path / "b.sqlite3", "b")
    try:
        assert b.submit(Tick(t(2))) == []
        a = engine(server, tmp_path / "a.sqlite3", "a")
        assert a.submit(Tick(t(2))) == []
        d = decide(b, outage(3, mid="ad1-reboot"))
        assert (d.action, str(d.reason)) == (Action.SUPPRESS, "activation-window")
        assert a.state.lost == 1
    finally:
        a.close()
        b.close()


def test_an_activation_committed_in_the_batch_whose_tick_notices_the_loss_is_given_back(
    server: RedisServer, tmp_path: Path
) -> None:
    """The response's commit, then Redis loses its data, and a tick later in the same batch notices it and
    gives back what the store recorded — not the activation, whose row the batch writes after. It is given
    back before the batch is answered, and the reboot AD1 is suppressed."""
    a = engine(server, tmp_path / "a.sqlite3", "a")
    admin = redis.Redis.from_url(server.url)
    try:
        a.submit(request(0, counter=7), b"<11.3 request>")
        inner = a.state.decide

        async def then_lost(event: Any, raw: bytes | None, route: tuple[str, str] | None = None) -> TxResult:
            tx = await inner(event, raw, route)
            if event.message_id == "rsp-7":
                admin.flushall()  # Redis restarted empty right after the response's commit
            return tx

        a.state.decide = then_lost  # type: ignore[method-assign]
        a.submit_many([(response(1, counter=7, mid="rsp-7"), b"<11.3 response>"), (Tick(t(2)), None)])
        a.state.decide = inner  # type: ignore[method-assign]
        assert a.state.lost == 1 and a._epoch == a.state.epoch
        (rec,) = shared_activations(server).values()
        assert rec["state"] == "confirmed"
        d = decide(a, outage(3, mid="ad1-reboot"))
        assert (d.action, str(d.reason)) == (Action.SUPPRESS, "activation-window")
    finally:
        admin.close()
        a.close()
