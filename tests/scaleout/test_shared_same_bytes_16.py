"""On shared state, the same bytes are decided once whether their signature verified at one delivery and not at another.

A message is decided under its DUIS identity when its XML signature verified, else under
``<identity>#unverified:<digest of its bytes>`` (docs/ENGINE.md §8). A revocation list past its nextUpdate at the
second arrival only, or an SMKI reload between two deliveries, gives the same bytes their other id. The single-node
engine answers the second delivery as the duplicate of the first (``Engine._same_bytes``); on shared state each
transaction loaded only its own id's idempotency key, so the engine never saw the other one and the bytes were
decided twice:

- an AD1 suppressed under its verified id, re-delivered once its signature no longer verifies, was forwarded
  ``inline-unverified`` (a false AD1 to the DNO), by whichever instance the re-delivery reached;
- an inline message forwarded unverified and re-delivered verified was decided again (suppressed after the DNO had
  it, or forwarded twice).

Now the load also fetches the key of the other id when it may apply and the commit's compare-and-set covers it: two
instances deciding the two ids at once decide once. What stays as on a single node: a quarantined copy, an
observation and different bytes naming the same identity are decided afresh.

The real :class:`SharedEngine` (and :class:`RedisState`) on a real redis-server, each instance with its own SQLite
store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, other, outage, request, response, t

from gateway.engine import Decision, Duplicate, Effect, EngineConfig, Tick
from gateway.engine.effects import Action, Observed
from gateway.engine.events import MessageEvent, unsigned_id
from gateway.store.redis_state import RedisState, RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.slow

D1 = 0x0123456789ABCDEF01234567  # the pipeline's digests: the first 96 bits of the SHA-256 of the bytes
D2 = 0xFEDCBA9876543210FEDCBA98
ROWS = [(ESME, CH, MPAN, "Landis+Gyr")]
BODY = b"<DCCAlertMessage AD1 signed>"


def unsigned(ev: MessageEvent, digest: int = D1) -> MessageEvent:
    """``ev`` as the pipeline gives the same bytes when their XML signature does not verify (a revocation list
    past its nextUpdate, an SMKI reload that dropped the signer)."""
    return dataclasses.replace(
        ev, message_id=unsigned_id(ev.message_id, digest), verified=False,
        verification="xml-signature-unverifiable:revocation_list_stale", digest=digest,
    )  # fmt: skip


def signed(ev: MessageEvent, digest: int = D1) -> MessageEvent:
    return dataclasses.replace(ev, digest=digest)


def later(ev: MessageEvent, minutes: float) -> MessageEvent:
    return dataclasses.replace(ev, arrival=ev.arrival + timedelta(minutes=minutes))


Factory = Callable[..., SharedEngine]


@pytest.fixture
def instance(tmp_path: Path, redis_url: str) -> Iterator[Factory]:
    """``instance(name, **engine config)``: a SharedEngine of its own (its own SQLite store) on the shared Redis."""
    made: list[SharedEngine] = []

    def make(name: str, **cfg: Any) -> SharedEngine:
        eng = SharedEngine(SqliteStore(tmp_path / f"{name}.sqlite3"), RedisStateConfig(url=redis_url, instance=name),
                           EngineConfig(**cfg), MemoryScope([ESME]), MemoryInventory(ROWS))  # fmt: skip
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.close()


def pair(instance: Factory, where: str, **cfg: Any) -> tuple[SharedEngine, SharedEngine]:
    """The instance that takes the first delivery and the one the re-delivery reaches (the same one, or another)."""
    first = instance("gw-a", **cfg)
    return first, (first if where == "one" else instance("gw-b", **cfg))


def submit(eng: SharedEngine, ev: MessageEvent, raw: bytes = BODY) -> list[Effect]:
    route = {ev.message_id: ("dno-a", "DCCAlertMessage.AD1")} if ev.lane == "inline" else {}
    return eng.submit_many([(ev, raw)], route)[0]


def decisions(effects: list[Effect]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


def the_duplicate(effects: list[Effect]) -> Duplicate:
    assert not decisions(effects), f"decided again: {decisions(effects)}"
    [dup] = [e for e in effects if isinstance(e, Duplicate)]
    return dup


def row(eng: SharedEngine, mid: str) -> tuple[str, str]:
    [got] = [(m["status"], m["reason"]) for m in eng.store.messages() if m["message_id"] == mid]
    return got


def seen_keys(redis_url: str) -> set[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return {k.decode().removeprefix("duisgw:seen:") for k in client.scan_iter("duisgw:seen:*")}
    finally:
        client.close()


def taken_in_as_duplicate(eng: SharedEngine, mid: str) -> None:
    """What the single-node store keeps for a delivery answered as the duplicate of its bytes' other id: its row
    ``observed`` (reason ``duplicate``), never ``accepted`` (decided again at a start), no decision of its own."""
    assert row(eng, mid) == ("observed", "duplicate")
    assert eng.store.audit(mid) == [] and eng.store.undecided() == []


def evidence(eng: SharedEngine) -> None:
    """An 11.3 request and its response: a firmware activation of the ESME at 09:01 (an AD1 then is suppressed)."""
    submit(eng, request(0), b"<req>")
    submit(eng, response(1), b"<rsp>")


# ------------------------------------------------------------------ signed first, the same bytes unsigned later


@pytest.mark.parametrize("where", ["one", "two"], ids=["one-instance", "two-instances"])
@pytest.mark.parametrize("first_outcome", ["suppressed", "forwarded"])
def test_an_inline_message_decided_verified_is_a_duplicate_when_its_bytes_come_again_unverified(
    instance: Factory, redis_url: str, where: str, first_outcome: str
) -> None:
    a, b = pair(instance, where)
    if first_outcome == "suppressed":
        evidence(a)
        ad1 = signed(outage(1.5, mid="ad1-s1"))
        want = ("suppress", "activation-window")
    else:
        ad1 = signed(outage(200, mid="ad1-s1"))  # no activation near it: forwarded
        want = ("forward", "no-activation")
    [first] = decisions(submit(a, ad1))
    assert (first.disposition, first.reason.value) == want
    again = later(unsigned(ad1), 60)  # past the CRL's nextUpdate: the same bytes, their signature unverifiable
    dup = the_duplicate(submit(b, again))  # was: forward (inline-unverified): a false AD1 to the DNO
    assert dup.message_id == again.message_id  # the delivery's own id: the shell finds its answer by it
    assert dup.original is not None and dup.original.message_id == ad1.message_id
    assert (dup.original.disposition, dup.original.reason.value) == want
    taken_in_as_duplicate(b, again.message_id)
    assert again.message_id not in seen_keys(redis_url)  # nothing kept under the delivery's own id
    assert [d["message_id"] for d in a.store.audit()] == [ad1.message_id]  # one decision, on the first instance


@pytest.mark.parametrize("where", ["one", "two"], ids=["one-instance", "two-instances"])
def test_a_held_ad1_re_delivered_unverified_reports_the_hold_and_is_released_once(
    instance: Factory, where: str
) -> None:
    a, b = pair(instance, where)
    submit(a, request(300, counter=1001, execute=310), b"<req>")
    ad1 = signed(outage(310.5, mid="ad1-held"))
    assert [d.action for d in decisions(submit(a, ad1))] == [Action.HOLD]
    dup = the_duplicate(submit(b, later(unsigned(ad1), 1)))
    assert dup.original is not None and dup.original.action is Action.HOLD
    released = [d for eng in {id(a): a, id(b): b}.values() for d in decisions(eng.submit(Tick(t(330))))]
    assert [(d.message_id, d.action) for d in released] == [("ad1-held", Action.RELEASE_FORWARD)]


# ------------------------------------------------------------------ unsigned first, the same bytes signed later


@pytest.mark.parametrize("where", ["one", "two"], ids=["one-instance", "two-instances"])
def test_an_inline_message_forwarded_unverified_is_a_duplicate_when_its_bytes_come_again_verified(
    instance: Factory, redis_url: str, where: str
) -> None:
    a, b = pair(instance, where)
    ad1 = signed(outage(1.5, mid="ad1-u1"))
    copy = unsigned(ad1)
    [first] = decisions(submit(a, copy))  # before the SMKI reload: its signer unknown
    assert (first.disposition, first.reason.value) == ("forward", "inline-unverified")
    evidence(b)  # evidence that would now suppress it
    dup = the_duplicate(submit(b, later(ad1, 2)))  # was: suppress (activation-window), after the DNO had it
    assert dup.message_id == ad1.message_id
    assert dup.original is not None and (dup.original.message_id, dup.original.reason.value) == (
        copy.message_id, "inline-unverified",
    )  # fmt: skip
    taken_in_as_duplicate(b, ad1.message_id)
    assert ad1.message_id not in seen_keys(redis_url)


@pytest.mark.parametrize("where", ["one", "two"], ids=["one-instance", "two-instances"])
def test_a_message_quarantined_unverified_is_decided_afresh_verified_and_a_verified_one_is_not_quarantined_after(
    instance: Factory, where: str
) -> None:
    """Quarantined (withheld from the DNO for want of a verified signature), the same bytes verified later are
    decided on their own: a duplicate of the quarantine would withhold a genuine alert until an operator came. The
    other order stays a duplicate: a quarantine is never what a message decided verified before gets instead."""
    a, b = pair(instance, where, quarantine_unverified_inline=True)
    ad1 = signed(outage(1.5, mid="ad1-q"))
    assert [d.reason.value for d in decisions(submit(a, unsigned(ad1)))] == ["quarantined-unverified"]
    evidence(b)
    assert [(d.message_id, d.disposition, d.reason.value) for d in decisions(submit(b, later(ad1, 2)))] == [
        ("ad1-q", "suppress", "activation-window"),  # on its verified evidence
    ]
    first = signed(other(5, mid="oth-q"))
    assert [d.reason.value for d in decisions(submit(a, first))] == ["other-inline"]
    dup = the_duplicate(submit(b, later(unsigned(first), 1)))  # was: suppress (quarantined-unverified)
    assert dup.original is not None and (dup.original.message_id, dup.original.reason.value) == (
        "oth-q", "other-inline",
    )  # fmt: skip


# ------------------------------------------------------------------ observations


@pytest.mark.parametrize("where", ["one", "two"], ids=["one-instance", "two-instances"])
def test_an_observation_verified_later_is_evidence_and_verified_evidence_is_not_kept_again_unverified(
    instance: Factory, redis_url: str, where: str
) -> None:
    a, b = pair(instance, where)
    submit(a, request(0), b"<req>")
    rsp = signed(response(1, mid="rsp-1"))
    [obs] = [e for e in submit(a, later(unsigned(rsp), -0.25)) if isinstance(e, Observed)]
    assert not obs.used  # its signer unknown: not evidence
    # the same bytes verified later are evidence, as on their own (the first copy could not be used)
    [obs] = [e for e in submit(b, rsp) if isinstance(e, Observed)]
    assert obs.used
    assert [d.disposition for d in decisions(submit(a, signed(outage(1.5, mid="ad1-o"), D2)))] == ["suppress"]
    # verified first, the same bytes unverified later: the duplicate of the evidence taken, not kept again as
    # unverified evidence of the ESME (was: observed unused and kept under u:<id> in its partition)
    submit(a, request(100, counter=2000, mid="req-2"), b"<req 2>")
    rsp2 = signed(response(101, counter=2000, mid="rsp-2"), D2)
    assert [e.used for e in submit(a, rsp2) if isinstance(e, Observed)] == [True]
    again = later(unsigned(rsp2, D2), 30)
    dup = the_duplicate(submit(b, again))
    assert dup.message_id == again.message_id and dup.original is None
    assert row(b, again.message_id) == ("observed", "duplicate")
    client = redis.Redis.from_url(redis_url)
    try:
        fields = [f.decode() for f in client.hkeys(f"duisgw:e:{{{ESME:016X}}}")]
    finally:
        client.close()
    assert [f for f in fields if f.startswith("u:")] == [f"u:{unsigned(rsp).message_id}"]  # the first copy only


# ------------------------------------------------------------------ different bytes naming the same identity


@pytest.mark.parametrize("where", ["one", "two"], ids=["one-instance", "two-instances"])
def test_different_bytes_naming_a_decided_identity_are_decided_afresh_and_the_same_bytes_are_not(
    instance: Factory, where: str
) -> None:
    a, b = pair(instance, where)
    evidence(a)
    ad1 = signed(outage(1.5, mid="ad1-sq"))
    assert [d.disposition for d in decisions(submit(a, ad1))] == ["suppress"]
    squatter = later(unsigned(ad1, D2), 5)  # an unsigned copy with other bytes: not the signed message's
    assert [(d.message_id, d.disposition, d.reason.value) for d in decisions(submit(b, squatter))] == [
        (squatter.message_id, "forward", "inline-unverified"),
    ]
    assert the_duplicate(submit(b, later(unsigned(ad1), 6))).original is not None  # the same bytes: a duplicate
    # and the other order: a genuine message after an unsigned copy with other bytes is decided on its own
    ad2 = signed(outage(1.75, mid="ad1-sq2"))
    assert [d.reason.value for d in decisions(submit(a, unsigned(ad2, D2)))] == ["inline-unverified"]
    assert [(d.message_id, d.disposition) for d in decisions(submit(b, later(ad2, 5)))] == [("ad1-sq2", "suppress")]


def test_a_key_without_a_digest_is_no_ones_twin_and_the_other_id_is_a_duplicate_only_within_retention(
    instance: Factory,
) -> None:
    a, b = instance("gw-a"), instance("gw-b")
    plain = outage(200, mid="ad1-nd")  # an event made without a digest (a key kept before digests were)
    submit(a, plain)
    assert [d.reason.value for d in decisions(submit(b, later(unsigned(plain), 5)))] == ["inline-unverified"]
    ad1 = signed(outage(200, mid="ad1-r"))
    submit(a, ad1)
    assert the_duplicate(submit(b, later(unsigned(ad1), 60))).original is not None  # within retention
    gone = 200 + EngineConfig().keep_for.total_seconds() / 60 + 10
    a.submit(Tick(t(gone)))  # the first key past retention by the gateway clock
    again = dataclasses.replace(unsigned(ad1), arrival=t(gone + 1))
    assert [d.message_id for d in decisions(submit(b, again))] == [again.message_id]  # decided afresh


# ------------------------------------------------------------------ the two ids decided at once on two instances


class _Paused(RedisState):
    """A real RedisState whose first decision attempt, after its load, tells it has loaded (``loaded``) and waits for
    ``wait_for`` before it decides and commits, then tells it has (``attempted``): two instances are so made to load
    before either commits, and to commit in a chosen order."""

    loaded: asyncio.Event | None = None
    wait_for: asyncio.Event | None = None
    attempted: asyncio.Event | None = None

    async def _attempt(self, *args: Any, **kwargs: Any) -> Any:
        loaded, wait_for, attempted = self.loaded, self.wait_for, self.attempted
        self.loaded = self.wait_for = self.attempted = None
        if loaded is not None:
            loaded.set()
        if wait_for is not None:
            await wait_for.wait()
        try:
            return await super()._attempt(*args, **kwargs)
        finally:
            if attempted is not None:
                attempted.set()


@pytest.mark.parametrize("case", ["signed-suppressed", "unsigned-forwarded"])
@pytest.mark.parametrize("order", ["signed-commits-first", "unsigned-commits-first"])
async def test_the_two_ids_of_the_same_bytes_racing_on_two_instances_are_decided_once(
    redis_url: str, case: str, order: str
) -> None:
    states = [
        _Paused(RedisStateConfig(url=redis_url, instance=f"gw-{n}"), EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))
        for n in "ab"
    ]
    try:
        for s in states:
            await s.start()
        if case == "signed-suppressed":
            await states[0].decide(request(0), None)
            await states[1].decide(response(1), None)
        ad1 = signed(outage(1.5, mid=f"ad1-race-{case}"))
        pending = [ad1, later(unsigned(ad1), 1)]
        if order == "unsigned-commits-first":
            pending.reverse()
        first, second = states
        a_loaded, b_loaded, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        first.loaded, first.wait_for, first.attempted = a_loaded, b_loaded, a_done
        second.loaded, second.wait_for = b_loaded, a_done
        # both load before either commits (neither id has a key then); the first commits first
        results = await asyncio.gather(first.decide(pending[0], BODY), second.decide(pending[1], BODY))
        made = [d for r in results for d in r.effects if isinstance(d, Decision)]
        dups = [d for r in results for d in r.effects if isinstance(d, Duplicate)]
        assert len(made) == 1 and len(dups) == 1, f"decided twice: {made}"
        assert made[0].message_id == pending[0].message_id and dups[0].message_id == pending[1].message_id
        assert dups[0].original == made[0]
        assert second.conflicts == 1  # its commit was refused (the other id's key changed), then its load answered
        ids = {ev.message_id for ev in pending}
        assert [d for _owner, d in await first.decision_log() if d.message_id in ids] == made
    finally:
        for s in states:
            await s.aclose()


def test_the_two_ids_sent_at_once_to_two_instances_many_times_are_each_decided_once(instance: Factory) -> None:
    a, b = instance("gw-a"), instance("gw-b")
    evidence(a)
    rounds = 12
    outcome: dict[tuple[int, str], list[Effect]] = {}

    def deliver(eng: SharedEngine, n: int, ev: MessageEvent, start: threading.Barrier) -> None:
        start.wait()
        outcome[(n, ev.message_id)] = submit(eng, ev)

    for n in range(rounds):
        ad1 = signed(outage(1.5, mid=f"ad1-at-once-{n}"), D1 + n)
        copy = later(unsigned(ad1, D1 + n), 0.5)
        start = threading.Barrier(2)
        threads = [threading.Thread(target=deliver, args=(eng, n, ev, start)) for eng, ev in ((a, ad1), (b, copy))]
        if n % 2:
            threads.reverse()
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        made = [d for key, effs in outcome.items() if key[0] == n for d in decisions(effs)]
        assert len(made) == 1, f"round {n}: decided twice: {made}"
        assert made[0].disposition in ("suppress", "forward")
    # the other of each pair is taken in as a duplicate where it arrived
    rows = [(m["status"], m["reason"]) for eng in (a, b) for m in eng.store.messages()]
    assert rows.count(("observed", "duplicate")) == rounds
