"""A held message re-delivered under its other id on another instance is recorded there, and held again after a loss.

A message is decided under its DUIS identity when its XML signature verified, else under
``<identity>#unverified:<digest of its bytes>`` (docs/ENGINE.md §8); on shared state a transaction loads the other id's
idempotency key too, so the same bytes are decided once. An AD1 held on verified evidence (instance A, answered 202)
that the DSP re-delivers to instance B once its signature no longer verifies (a revocation list past its nextUpdate
at B's arrival only) is answered there as the duplicate of the hold (202). B recorded nothing of the hold in its
``shared_holds`` (it looked the hold up under the delivery's own, marked id: nothing is held under it), while it
does for a re-delivery under the hold's own id. After a loss of the shared state with A gone for good (its host
lost), no instance held the AD1 again: it was never delivered to the DNO (nor suppressed, nor timed out), though two
instances acknowledged it. Now B records the hold under the hold's id, and after the loss holds it again with its
original deadline, route and bytes (its own copy of the same bytes, kept under the marked id), and releases it once.

The recovery of a hold (:meth:`RedisState.restore_hold`) looked at the hold's own id only: when the same bytes had
been re-delivered since the loss with a signature that no longer verified, decided afresh and forwarded
``inline-unverified`` (the DNO has them), the hold was held again all the same and released to the DNO a second
time. It is not held again now (a forward under the unsigned id counts as the decision since, the commit checks it).

Each test runs its own real ``redis-server`` (no persistence) and restarts it empty.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, outage, request
from redisfixture import RedisServer, reconnect_engines, redis_available

from gateway.engine import Decision, Duplicate, EngineConfig, Tick
from gateway.engine.effects import Action, Effect
from gateway.engine.events import MessageEvent, unsigned_id
from gateway.store.redis_state import RedisStateConfig
from gateway.store.shared import SharedEngine, _recorded_holds
from gateway.store.sqlite import SqliteStore

pytestmark = [pytest.mark.skipif(not redis_available(), reason="redis-server is not installed"), pytest.mark.slow]

AD1 = "DCCAlertMessage.AD1"
D1 = 0x0123456789ABCDEF01234567  # the digest of BODY (the pipeline's: 96 bits of its SHA-256)
BODY = b"<DCCAlertMessage AD1 signed>"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    yield srv
    srv.stop()


def engine(server: RedisServer, store: Path, name: str) -> SharedEngine:
    return SharedEngine(SqliteStore(store), RedisStateConfig(url=server.url, instance=name), EngineConfig(),
                        MemoryScope([ESME]), MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr")]))  # fmt: skip


def signed_ad1(mid: str) -> MessageEvent:
    return dataclasses.replace(outage(2, mid=mid), digest=D1)


def unsigned(ev: MessageEvent) -> MessageEvent:
    """``ev`` as the pipeline gives the same bytes when their XML signature does not verify."""
    return dataclasses.replace(ev, message_id=unsigned_id(ev.message_id, D1), verified=False,
                               verification="xml-signature-unverifiable:revocation_list_stale")  # fmt: skip


def submit(eng: SharedEngine, ev: MessageEvent, raw: bytes = BODY) -> list[Effect]:
    return eng.submit_many([(ev, raw)], {ev.message_id: ("dno-a", AD1)})[0]


def decisions(effects: Sequence[object]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


def hold(eng: SharedEngine, mid: str) -> Decision:
    """An AD1 held for the outcome of an activation whose response never comes."""
    eng.submit(request(0, counter=21), b"<11.3 request>")
    (d,) = decisions(submit(eng, signed_ad1(mid)))
    assert d.action is Action.HOLD and d.hold_deadline is not None
    return d


def recorded(eng: SharedEngine) -> list[str]:
    return [row[0] for row in eng._in_store(_recorded_holds)]


def test_a_hold_re_delivered_unverified_to_another_instance_is_held_again_after_a_loss_with_its_holder_gone(
    server: RedisServer, tmp_path: Path
) -> None:
    """A holds the signed AD1; B gets the same bytes unverified (answered as the duplicate of the hold) and records
    the hold under the hold's id. A's host is lost; Redis restarts empty. B's next tick holds the AD1 again (same
    deadline, route, the bytes it received), and its tick past the deadline releases it to the DNO once, under the
    hold's id: before, B recorded nothing and the AD1 was never delivered."""
    a, b = engine(server, tmp_path / "a.sqlite3", "a"), engine(server, tmp_path / "b.sqlite3", "b")
    try:
        held = hold(a, "ad1-x")
        deadline = held.hold_deadline
        assert deadline is not None
        copy = unsigned(signed_ad1("ad1-x"))
        (dup,) = submit(b, copy)
        assert isinstance(dup, Duplicate) and dup.original is not None and dup.original.action is Action.HOLD
        assert dup.original.message_id == "ad1-x"
        assert recorded(b) == ["ad1-x"]
    finally:
        a.close()  # A's host is lost: it never comes back
    try:
        server.restart_empty()
        reconnect_engines(b)
        assert b.submit(Tick(deadline - dt.timedelta(seconds=5))) == []
        assert b._run(b.state.held_ids()) == ["ad1-x"]
        assert b.routes(["ad1-x"]) == {"ad1-x": "dno-a"}
        assert b.route_kinds(["ad1-x"]) == {"ad1-x": AD1}
        released = decisions(b.submit(Tick(deadline + dt.timedelta(seconds=1))))
        assert [(d.message_id, d.action) for d in released] == [("ad1-x", Action.RELEASE_FORWARD)]
        assert b.store.undelivered() == [("ad1-x", BODY)]
        assert b.submit(Tick(deadline + dt.timedelta(seconds=60))) == []
        assert b.state.lost == 1
    finally:
        b.close()


def test_a_hold_re_delivered_unverified_to_another_instance_is_held_again_once_after_a_loss_and_released_once(
    server: RedisServer, tmp_path: Path
) -> None:
    """Both instances record the hold (A its own, B the unverified re-delivery's); after a loss both hold it again at
    their ticks: the first commits, the second finds it held. It is released once, by whichever ticks first past the
    deadline, and delivered by that instance only."""
    a, b = engine(server, tmp_path / "a.sqlite3", "a"), engine(server, tmp_path / "b.sqlite3", "b")
    try:
        held = hold(a, "ad1-x")
        deadline = held.hold_deadline
        assert deadline is not None
        (dup,) = submit(b, unsigned(signed_ad1("ad1-x")))
        assert isinstance(dup, Duplicate)
        assert recorded(a) == recorded(b) == ["ad1-x"]

        server.restart_empty()
        reconnect_engines(a, b)
        before = deadline - dt.timedelta(seconds=5)
        assert b.submit(Tick(before)) == [] and a.submit(Tick(before)) == []
        assert a._run(a.state.held_ids()) == ["ad1-x"] and a.held_count == 1
        after = deadline + dt.timedelta(seconds=1)
        released = decisions(a.submit(Tick(after))) + decisions(b.submit(Tick(after)))
        assert [(d.message_id, d.action) for d in released] == [("ad1-x", Action.RELEASE_FORWARD)]
        assert a.store.undelivered() == [("ad1-x", BODY)] and b.store.undelivered() == []
    finally:
        a.close()
        b.close()


def test_a_hold_whose_bytes_were_forwarded_unverified_since_the_loss_is_not_held_again(
    server: RedisServer, tmp_path: Path
) -> None:
    """A holds the signed AD1; Redis restarts empty; before A's next tick the DSP re-delivers the same bytes, their
    signature no longer verifying, to B: decided afresh (the keys went with the state) and forwarded
    ``inline-unverified`` — the DNO has the AD1. A's recovery used to hold it again all the same (it looked only at
    the hold's own id), and released it to the DNO a second time at its deadline. Now a hold whose bytes were
    forwarded under their unsigned id since is decided already, as one re-delivered under its own id is: not held
    again."""
    a, b = engine(server, tmp_path / "a.sqlite3", "a"), engine(server, tmp_path / "b.sqlite3", "b")
    try:
        held = hold(a, "ad1-x")
        deadline = held.hold_deadline
        assert deadline is not None
        server.restart_empty()
        reconnect_engines(a, b)
        copy = unsigned(signed_ad1("ad1-x"))
        (fwd,) = decisions(submit(b, copy))
        assert (fwd.message_id, fwd.action, str(fwd.reason)) == (copy.message_id, Action.FORWARD, "inline-unverified")
        assert a.submit(Tick(deadline - dt.timedelta(seconds=5))) == []
        assert a._run(a.state.held_ids()) == []
        assert decisions(a.submit(Tick(deadline + dt.timedelta(seconds=1)))) == []
        assert decisions(b.submit(Tick(deadline + dt.timedelta(seconds=2)))) == []
        assert a.store.undelivered() == [] and b.store.undelivered() == [(copy.message_id, BODY)]
    finally:
        a.close()
        b.close()


def test_a_hold_whose_bytes_are_forwarded_unverified_while_it_is_held_again_is_not_held_again(
    server: RedisServer, tmp_path: Path
) -> None:
    """The same, with B's decision of the unverified copy committed exactly between the load and the commit of A's
    recovery of the hold: A's commit is refused (the unsigned id's key is not as it read it), its next load finds
    the forward, and the hold is not held again — the DNO gets the AD1 once."""
    a, b = engine(server, tmp_path / "a.sqlite3", "a"), engine(server, tmp_path / "b.sqlite3", "b")
    copy = unsigned(signed_ad1("ad1-x"))
    try:
        held = hold(a, "ad1-x")
        deadline = held.hold_deadline
        assert deadline is not None
        server.restart_empty()
        reconnect_engines(a, b)
        load = a.state._load
        forwarded: list[list[Effect]] = []

        async def then_b_decides(keys: Any, mid: str | None, other: str | None = None) -> Any:
            snap = await load(keys, mid, other)
            if other == copy.message_id and not forwarded:  # A's recovery of the hold has read the state
                thread = threading.Thread(target=lambda: forwarded.append(submit(b, copy)))
                thread.start()
                thread.join(30)
            return snap

        a.state._load = then_b_decides  # type: ignore[method-assign]
        assert a.submit(Tick(deadline - dt.timedelta(seconds=5))) == []
        a.state._load = load  # type: ignore[method-assign]
        (fwd,) = decisions(forwarded[0])
        assert (fwd.message_id, fwd.action) == (copy.message_id, Action.FORWARD)
        assert a._run(a.state.held_ids()) == []
        assert decisions(a.submit(Tick(deadline + dt.timedelta(seconds=1)))) == []
        assert a.store.undelivered() == [] and b.store.undelivered() == [(copy.message_id, BODY)]
    finally:
        a.close()
        b.close()
