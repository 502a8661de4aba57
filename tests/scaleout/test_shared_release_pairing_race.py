"""Shared state (a real redis-server, two instances): an operator release of a suppressed AD1 on instance A
(``duisgw audit release``: the shared release marker first, then the local record) racing a restoration alert
for the same premises decided on instance B before A has taken the release in.

Until A takes the release in (its next scan, up to ~5 s) the AD1's suppressed-outage record is still in the
shared partitions, and B paired the restoration with it: suppressed, and the DNO, which gets the released AD1,
never got the end of the outage. The restoration's commit (the compare-and-set script) now refuses a pairing
with an AD1 whose operator-release marker exists; B decides the restoration again with that AD1 marked
released (``not-paired``, forwarded), once. The marker is taken exactly between the load and the commit of the
restoration's transaction: the latest moment at which the commit can still see it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import redis
from engine_support import (
    CH,
    ESME,
    MPAN,
    MemoryInventory,
    MemoryScope,
    outage,
    request,
    response,
    restored,
    t,
)
from servicekit import (
    DNO_USER,
    Receiver,
    counters,
    make_lab,
    pipeline_config,
    release_story,
    running,
    suppressed_after_activation,
)

from gateway.engine import Decision, Engine, EngineConfig, Event
from gateway.engine.effects import Action, Reason
from gateway.service.config import StateConfig
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator
from gateway.store.redis_state import RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.shared_audit import SharedAudit
from gateway.store.sqlite import SqliteStore

TWIN = ESME + 1  # the other element of a twin-element meter: its restoration pairs by Comms Hub
ROWS = [(ESME, CH, MPAN, "Landis+Gyr"), (TWIN, CH, "1234567890999", "Landis+Gyr")]
STORY: list[Event] = [request(0, counter=21), response(1, counter=21), outage(2, mid="ad1-x")]


def _make(name: str, url: str, tmp_path: Path) -> SharedEngine:
    return SharedEngine(SqliteStore(tmp_path / f"{name}.sqlite3"), RedisStateConfig(url=url, instance=name),
                        EngineConfig(), MemoryScope([ESME, TWIN]), MemoryInventory(ROWS))  # fmt: skip


def _claim(url: str, mid: str) -> None:
    """``duisgw audit release``'s first step on shared state: take the message's shared release marker."""
    audit = SharedAudit(url, "duisgw:")
    try:
        assert audit.claim_release(mid, '{"operator":"ops","instance":"a"}') is None
    finally:
        audit.close()


def _between_load_and_commit(engine: SharedEngine, *steps: Callable[[], None]) -> list[list[str]]:
    """Run ``steps[n]`` just before the n-th commit of ``engine``'s transactions (after its load and its
    decision); returns the message ids each commit carried a release-marker check for (argv, for the test)."""
    commit = engine.state._commit
    pending = list(steps)
    checked: list[list[str]] = []

    async def then_commit(*, keys: list[str], args: list[Any]) -> Any:
        checked.append([k.removeprefix("duisgw:operator-release:") for k in keys if "operator-release:" in k])
        if pending:
            pending.pop(0)()
        return await commit(keys=keys, args=args)

    engine.state._commit = cast(Any, then_commit)
    return checked


def _decided(engine: SharedEngine, event: Event) -> list[tuple[Action, Reason]]:
    return [(d.action, d.reason) for d in engine.submit(event, b"<rst>") if isinstance(d, Decision)]


def _suppressed_fields(url: str, mid: str, *, released: bool = False) -> int:
    """How many partitions hold the suppressed-outage record of ``mid`` marked (or not) released."""
    client = redis.Redis.from_url(url)
    try:
        values = (client.hget(key, f"s:{mid}") for key in client.scan_iter(match="duisgw:[ec]:*"))
        return sum(1 for v in values if v is not None and json.loads(v).get("released", False) is released)
    finally:
        client.close()


def test_a_release_marker_taken_between_the_load_and_the_commit_unpairs_the_restoration_on_another_instance(
    redis_url: str, tmp_path: Path
) -> None:
    single = Engine(EngineConfig(), MemoryScope([ESME, TWIN]), MemoryInventory(ROWS))
    for ev in STORY:
        single.handle(ev)
    single.released_by_operator("ad1-x")
    expected = [(d.action, d.reason) for d in single.handle(restored(2, esme=TWIN, mid="rst-x"))
                if isinstance(d, Decision)]  # fmt: skip
    assert expected == [(Action.FORWARD, Reason.NOT_PAIRED)]

    a, b = _make("a", redis_url, tmp_path), _make("b", redis_url, tmp_path)
    try:
        for ev in STORY:
            a.submit(ev, b"<" + ev.message_id.encode() + b">")
        assert a.store.status("ad1-x") == "suppress"

        def release_on_a() -> None:  # the marker, then the local record; A has not taken it in
            _claim(redis_url, "ad1-x")
            a.store.release_suppressed("ad1-x", "ops", "customer off supply", t(10), {"decided_by": "a"})

        checked = _between_load_and_commit(b, release_on_a)
        assert _decided(b, restored(2, esme=TWIN, mid="rst-x")) == expected
        # the paired commit checked the marker and was refused; the one decision left out the released AD1
        assert checked == [["ad1-x"], []]
        assert (b.state.release_refusals, b.state.conflicts) == (1, 0)
        assert b.store.status("rst-x") == "forward"
        assert [(r["action"], r["reason"]) for r in b.store.audit("rst-x")] == [("forward", "not-paired")]
        # decided once in the shared state: one decision logged, and the record is A's to mark released when
        # it takes the release in (B did not touch it)
        log = b._run(b.state.decision_log())
        assert [(owner, d.action) for owner, d in log if d.message_id == "rst-x"] == [("b", Action.FORWARD)]
        assert _suppressed_fields(redis_url, "ad1-x") == 3
        assert a.take_in_operator_releases() == [("ad1-x", "power-outage")]
        assert (_suppressed_fields(redis_url, "ad1-x"), _suppressed_fields(redis_url, "ad1-x", released=True)) == (0, 3)
    finally:
        a.close()
        b.close()


def test_a_release_of_another_ad1_during_the_redecision_does_not_refuse_it_again(redis_url: str, tmp_path: Path) -> None:
    """Two suppressed AD1s the restoration could pair with; it restores the first (its outage began at the
    interruption). The first is released just before the restoration's commit, the second just before its
    re-decision's commit: the refused commit marks the first released in the next decision, whose nearest
    outage it stays, so the restoration pairs with neither and the second marker refuses nothing. Decided once,
    forwarded."""
    a, b = _make("a", redis_url, tmp_path), _make("b", redis_url, tmp_path)
    try:
        for ev in [*STORY, outage(3, mid="ad1-y")]:
            a.submit(ev, b"<" + ev.message_id.encode() + b">")
        assert (a.store.status("ad1-x"), a.store.status("ad1-y")) == ("suppress", "suppress")
        checked = _between_load_and_commit(
            b, lambda: _claim(redis_url, "ad1-x"), lambda: _claim(redis_url, "ad1-y")
        )
        assert _decided(b, restored(2, esme=TWIN, mid="rst-x")) == [(Action.FORWARD, Reason.NOT_PAIRED)]
        assert checked == [["ad1-x"], []]
        assert b.state.release_refusals == 1
        assert [(r["action"], r["reason"]) for r in b.store.audit("rst-x")] == [("forward", "not-paired")]
    finally:
        a.close()
        b.close()


def test_a_restoration_paired_with_an_ad1_nobody_released_commits_paired_on_another_instance(
    redis_url: str, tmp_path: Path
) -> None:
    """Without a release marker the check lets the pairing commit, as before (suppressed, paired)."""
    a, b = _make("a", redis_url, tmp_path), _make("b", redis_url, tmp_path)
    try:
        for ev in STORY:
            a.submit(ev, b"<" + ev.message_id.encode() + b">")
        checked = _between_load_and_commit(b)
        assert _decided(b, restored(2, esme=TWIN, mid="rst-x")) == [
            (Action.SUPPRESS, Reason.RESTORATION_PAIRED)
        ]
        assert checked == [["ad1-x"]]
        assert b.state.release_refusals == 0
        assert _suppressed_fields(redis_url, "ad1-x") == 3
    finally:
        a.close()
        b.close()


def test_a_released_ad1_stays_released_in_the_shared_state_for_a_restoration_arriving_later(
    redis_url: str, tmp_path: Path
) -> None:
    """The reboot's AD1 (outage at 2) and a genuine cut's (at 20) of one hub, both suppressed on A; the operator
    releases the cut's AD1 and A takes the release in. Later, the cut's restoration reaches B: it is forwarded
    (its nearest outage is the released one), not paired with the reboot's AD1, whose window contains it; the
    reboot's own restoration still pairs. As a single node decides them (tests/engine/test_released_outage_kept.py)."""
    story = [*STORY, outage(20, mid="ad1-z")]
    a, b = _make("a", redis_url, tmp_path), _make("b", redis_url, tmp_path)
    try:
        for ev in story:
            a.submit(ev, b"<" + ev.message_id.encode() + b">")
        assert (a.store.status("ad1-x"), a.store.status("ad1-z")) == ("suppress", "suppress")
        _claim(redis_url, "ad1-z")
        a.store.release_suppressed("ad1-z", "ops", "customer off supply", t(30), {"decided_by": "a"})
        assert a.take_in_operator_releases() == [("ad1-z", "power-outage")]
        assert _decided(b, restored(20, arrival=40, esme=TWIN, mid="rst-z")) == [(Action.FORWARD, Reason.NOT_PAIRED)]
        assert _decided(b, restored(2, arrival=41, esme=TWIN, mid="rst-x")) == [
            (Action.SUPPRESS, Reason.RESTORATION_PAIRED)
        ]
        assert b.state.release_refusals == 0
    finally:
        a.close()
        b.close()


async def test_a_gateway_on_shared_state_counts_the_refused_pairing_in_its_metrics(
    tmp_path: Path, redis_url: str
) -> None:
    """Through a running gateway (``[state] backend = "redis"``): the AD1's release marker taken before the
    restoration arrives (``duisgw audit release``'s first step, its local record not yet taken in), the
    restoration's transaction is refused and decided again (forwarded, ``not-paired``), and the refusal is
    counted in ``duisgw_release_pairing_refusals_total{state="shared"}`` (``state="local"`` and
    ``duisgw_shared_state_conflicts_total`` stay 0)."""
    lab = make_lab("shared-refusal-metric", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    request_, response_, ad1, restoration = release_story(lab)
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path / "gw-b", lab.reference, receiver.url, DNO_USER)
        cfg = replace(cfg, state=StateConfig(backend="redis", redis_url=redis_url, instance="gw-b"))
        service = make_service(build_gateway(cfg))
        async with running(service), DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            (suppressed,) = await suppressed_after_activation(dsp, request_, response_, ad1)
            _claim(redis_url, str(suppressed.message_id))
            after = await dsp.post(restoration)
            assert (after.status, after.decision) == (200, "forward")  # not paired: decided again without it
            refusals = counters(service, "duisgw_release_pairing_refusals")
            conflicts = counters(service, "duisgw_shared_state_conflicts")
        assert refusals == {("local",): 0.0, ("shared",): 1.0}
        assert conflicts == {(): 0.0}  # refused by the commit script, not retried as a compare-and-set conflict
    finally:
        await receiver.stop()
