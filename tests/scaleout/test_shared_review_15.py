"""The shared state's per-life defects left open by the fourteenth session (``[state] backend = "redis"``).

Two instances (``gw-a``, ``gw-b``: the real :class:`SharedEngine` on a real redis-server, each with its own SQLite
store where its gateway configuration puts it); ``duisgw audit release`` and ``export`` run through the CLI (``main``)
with those configurations. A message id the DSP re-delivered after the engine's retention and that was suppressed
afresh is a second *life* of the message (docs/OPERATIONS.md "## Audit"); operator releases belong to the life they
were made on (``test_shared_release_lives_14.py``). Pinned down:

* the decision commits' pairing guard reads the release marker of the *life* of the AD1 it pairs a restoration
  with: a restoration paired with the suppressed second life of a message whose FIRST life was released is paired,
  as on a single node (it was refused, and forwarded ``not-paired``, because the message id's marker — set by the
  first life's release — exists); a released life (by its life's marker, or a marker a version before lives left
  after that life's suppression) still refuses the pairing;
* the shared suppression index keeps each life: a second life suppressed on another day is in the shared export
  of its day (it was missing: the index listed a message id once per ``export_days`` window), as in ``--local``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
from engine_support import (
    ESME,
    MemoryInventory,
    MemoryScope,
    outage,
    request,
    response,
    restored,
    t,
)
from redisfixture import RedisServer
from sharedauditkit import RELEASE_COLUMNS, ROWS, Instance, audit, two_instances

from gateway.engine import Decision, Duplicate, Engine, EngineConfig, Event, Tick
from gateway.engine.effects import Action, Reason
from gateway.store.shared import SharedEngine
from gateway.store.shared_audit import SharedAudit

pytestmark = pytest.mark.slow

AD1 = "ad1-review-15"
ROUTE = {AD1: ("dno-a", "DCCAlertMessage.AD1")}
KEEP = EngineConfig().keep_for
#: the second life's activation, in minutes after the engine tests' T0: past the first life's retention
SECOND = (KEEP + timedelta(minutes=20)).total_seconds() / 60


@pytest.fixture
def instances(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, Instance]]:
    """``gw-a`` and ``gw-b`` on one redis-server (:func:`sharedauditkit.two_instances`)."""
    with two_instances(tmp_path, redis_server, "shared-review-15") as (a, b):
        yield {"gw-a": a, "gw-b": b}


def release(capsys: pytest.CaptureFixture[str], inst: Instance, operator: str, note: str) -> None:
    rc, _out, err = audit(capsys, "release", AD1, "--config", str(inst.config), "--operator", operator, "--note", note)
    assert rc == 0, err


def export(capsys: pytest.CaptureFixture[str], inst: Instance, day: str, *more: str) -> dict[str, dict[str, str]]:
    rc, out, err = audit(capsys, "export", "--config", str(inst.config), "--date", day, *more)
    assert rc == 0, err
    return {r["message_id"]: r for r in csv.DictReader(io.StringIO(out))}


def suppressed(effects: list[object]) -> Decision:
    (decision,) = [e for e in effects if isinstance(e, Decision)]
    assert decision.action is Action.SUPPRESS, decision
    return decision


#: the first life (activation, AD1), the gateway clock past its retention, the second life (activation, AD1 again)
FIRST: list[Event] = [request(0, counter=21), response(1, counter=21), outage(2, mid=AD1)]
PAST_FIRST = Tick(t(5.5) + KEEP + timedelta(minutes=1))
SECOND_LIFE: list[Event] = [request(SECOND, counter=22), response(SECOND + 1, counter=22), outage(SECOND + 2, mid=AD1)]


def first_life(a: Instance, b: Instance) -> Decision:
    """AD1 suppressed by A (``activation-window``); the DSP re-delivers it to B, which records A's decision."""
    a.engine.submit(FIRST[0], b"<req>")
    a.engine.submit(FIRST[1], b"<rsp>")
    decision = suppressed(list(a.engine.submit_many([(FIRST[2], b"<ad1 1>")], ROUTE)[0]))
    (dup,) = b.engine.submit(FIRST[2], b"<ad1 1>")
    assert isinstance(dup, Duplicate)
    return decision


def second_life(a: Instance) -> Decision:
    """The gateway clock moves past the first life's retention (its idempotency key and outage record pruned); the
    meter activates firmware again and the DSP re-delivers the AD1 to A: decided afresh, suppressed again."""
    a.engine.take_in_operator_releases()  # (the gateway's redelivery scan: a release recorded on A is taken in)
    a.engine.submit(PAST_FIRST)
    a.engine.submit(SECOND_LIFE[0], b"<req 2>")
    a.engine.submit(SECOND_LIFE[1], b"<rsp 2>")
    return suppressed(list(a.engine.submit_many([(SECOND_LIFE[2], b"<ad1 2>")], ROUTE)[0]))


def single_node(*, release_first: bool) -> list[tuple[Action, Reason]]:
    """What one engine decides for the second life's restoration (the meter's, interrupted in the second life's
    window), the first life released by an operator (``release_first``) or not."""
    engine = Engine(EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))
    for ev in FIRST:
        engine.handle(ev)
    if release_first:
        engine.released_by_operator(AD1)
    for ev in (PAST_FIRST, *SECOND_LIFE):
        engine.handle(ev)
    return [(d.action, d.reason) for d in engine.handle(restoration()) if isinstance(d, Decision)]


def restoration() -> Event:
    return restored(SECOND + 2, mid="rst-second-life")


def decided(engine: SharedEngine, event: Event) -> list[tuple[Action, Reason]]:
    return [(d.action, d.reason) for d in engine.submit(event, b"<rst>") if isinstance(d, Decision)]


def legacy_release(url: str, operator: str, at: datetime) -> None:
    """What a version before per-life markers left for a release it recorded and confirmed: the marker and the
    done flag by message id, without the life."""
    text = json.dumps({"message_id": AD1, "action": "release-forward", "reason": "operator-release",
                       "operator": operator, "note": "before the upgrade", "decided_at": at.isoformat(),
                       "instance": "gw-a", "host": "old-host", "store": "/old/engine.sqlite3"},
                      separators=(",", ":"))  # fmt: skip
    client = redis.Redis.from_url(url)
    try:
        client.set(f"duisgw:operator-release:{AD1}", text)
        client.set(f"duisgw:operator-release-done:{AD1}", text)
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ 1: the pairing guard


def test_a_restoration_paired_with_the_unreleased_second_life_of_a_once_released_ad1_is_paired_on_any_instance(
    instances: dict[str, Instance], capsys: pytest.CaptureFixture[str]
) -> None:
    """The AD1's first life was released (alice, on B); its second life, suppressed by A after the first life's
    retention, was not. The meter's restoration, interrupted in the second life's window, reaches B: paired with the
    second life and suppressed, as one engine decides it. It was refused by the commit's guard (the message id's
    release marker, set by the FIRST life's release, exists) and forwarded ``not-paired``: the DNO got the end of an
    outage it never saw."""
    a, b = instances["gw-a"], instances["gw-b"]
    expected = single_node(release_first=True)
    assert expected == [(Action.SUPPRESS, Reason.RESTORATION_PAIRED)]
    first_life(a, b)
    release(capsys, b, "alice", "first life: genuine outage")
    second_life(a)

    assert decided(b.engine, restoration()) == expected
    assert b.engine.state.release_refusals == 0  # the first life's marker is not the second life's
    assert [(r["action"], r["reason"]) for r in b.engine.store.audit("rst-second-life")] == [
        ("suppress", "restoration-paired")
    ]


def test_a_restoration_paired_with_a_released_second_life_is_still_refused_before_the_take_in(
    instances: dict[str, Instance], capsys: pytest.CaptureFixture[str]
) -> None:
    """The second life itself released (bob, on A, not taken in yet: its record is still unmarked in the shared
    partitions): B's restoration paired with it is refused by the guard (the second life's own marker) and decided
    again, forwarded ``not-paired``, as one engine whose release was taken in decides it."""
    a, b = instances["gw-a"], instances["gw-b"]
    first_life(a, b)
    release(capsys, b, "alice", "first life")
    second_life(a)
    release(capsys, a, "bob", "second life")

    assert decided(b.engine, restoration()) == [(Action.FORWARD, Reason.NOT_PAIRED)]
    assert b.engine.state.release_refusals == 1


def test_a_marker_a_version_before_lives_left_on_the_first_life_does_not_unpair_the_second(
    instances: dict[str, Instance], redis_server: RedisServer
) -> None:
    """The first life was released by a version that kept the marker by message id (no life), an hour after its
    suppression: that release is the first life's, not the second's (suppressed days later). The second life's
    restoration is paired, as one engine decides it; it was forwarded ``not-paired``."""
    a, b = instances["gw-a"], instances["gw-b"]
    first = first_life(a, b)
    legacy_release(redis_server.url, "olga", first.decided_at + timedelta(hours=1))
    second_life(a)

    assert decided(b.engine, restoration()) == single_node(release_first=True)
    assert b.engine.state.release_refusals == 0


def test_a_marker_a_version_before_lives_left_after_the_second_lifes_suppression_refuses_its_pairing(
    instances: dict[str, Instance], redis_server: RedisServer
) -> None:
    """A version before lives released the message after the second life's suppression (its marker by message id,
    made then, is that life's release: docs/SCALE-OUT.md "Markers of a version before lives"): the second life's
    restoration is not paired with it (forwarded ``not-paired``), as before."""
    a, b = instances["gw-a"], instances["gw-b"]
    first_life(a, b)
    second = second_life(a)
    legacy_release(redis_server.url, "olga", second.decided_at + timedelta(minutes=5))

    assert decided(b.engine, restoration()) == [(Action.FORWARD, Reason.NOT_PAIRED)]
    assert b.engine.state.release_refusals == 1


# ------------------------------------------------------------------------------------------ 2: the index per life


def test_the_shared_export_lists_a_second_life_suppressed_on_another_day_as_the_local_export_does(
    instances: dict[str, Instance], redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first life suppressed on day 1, the second (re-delivered after the retention, suppressed afresh) on day 3,
    within ``export_days``: the shared export of day 3 lists the second life, with its own suppression time and
    status, as ``--local`` does (it was missing: the index listed a message id on its first day only, for
    ``export_days``), and day 1's row is still the first life's."""
    a, b = instances["gw-a"], instances["gw-b"]
    first = first_life(a, b)
    release(capsys, b, "alice", "first life: genuine outage")
    second = second_life(a)
    day1, day2 = first.decided_at.date().isoformat(), second.decided_at.date().isoformat()
    assert day1 != day2

    same = ("message_id", "status", "decided_at", "reason", "released_by", "release_note")
    local2 = export(capsys, a, day2, "--local")[AD1]
    rc, out, err = audit(capsys, "export", "--config", str(a.config), "--date", day2)
    assert rc == 0, f"the second life is missing from the shared export of its day (exit {rc}: no row) {err}"
    shared2 = {r["message_id"]: r for r in csv.DictReader(io.StringIO(out))}
    assert [shared2[AD1][c] for c in same] == [local2[c] for c in same]
    assert shared2[AD1]["decided_at"] == second.decided_at.isoformat()
    assert shared2[AD1]["status"] == "suppressed"
    for inst in (a, b):  # (from either configuration)
        assert export(capsys, inst, day2)[AD1]["decided_at"] == second.decided_at.isoformat()
        row1 = export(capsys, inst, day1)[AD1]
        assert row1["decided_at"] == first.decided_at.isoformat()
        assert [row1[c] for c in RELEASE_COLUMNS] == ["released", "alice", "first life: genuine outage"]


def test_the_shared_index_keeps_two_lives_suppressed_on_one_day(
    instances: dict[str, Instance], redis_server: RedisServer
) -> None:
    """Two lives of one message id suppressed on the same UTC day (its idempotency key gone in between: here
    deleted, as a loss of the key would) are two entries of that day's index, each with its own suppression time
    and decider (the index kept the first only)."""
    a, b = instances["gw-a"], instances["gw-b"]
    first = first_life(a, b)
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.delete(f"duisgw:seen:{AD1}") == 1
    finally:
        client.close()
    again = suppressed(list(b.engine.submit_many([(outage(3, arrival=60, mid=AD1), b"<ad1 again>")], ROUTE)[0]))
    assert again.decided_at.date() == first.decided_at.date() and again.decided_at != first.decided_at

    shared = SharedAudit(redis_server.url, "duisgw:")
    try:
        rows = sorted((str(r["decided_at"]), str(r["by"])) for r, _d, _k in shared.suppressions(first.decided_at.date())
                      if r["message_id"] == AD1)  # fmt: skip
    finally:
        shared.close()
    assert rows == [(first.decided_at.isoformat(), "gw-a"), (again.decided_at.isoformat(), "gw-b")]
