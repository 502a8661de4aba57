"""Operator releases on shared state (``[state] backend = "redis"``) belong to the *life* of a message they were
made on, as on a single node: a message id the DSP re-delivered after the engine's retention and that was
suppressed afresh is a second life (docs/OPERATIONS.md "## Audit", ``gateway.store.sqlite._LIFE``).

Two instances (``gw-a``, ``gw-b``: the real :class:`SharedEngine` on a real redis-server, each with its own
SQLite store where its configuration puts it); ``duisgw audit release`` and ``export`` run through the CLI
(``main``) with those configurations. Pinned down:

* the second life of a message whose first life was released can be released too (it was refused, "already
  released", for ever), once; the first life stays released, by its own release, and an instance that still
  holds the first life as suppressed cannot release it again;
* the shared export gives a life the release made on it and no other (an unreleased first life was exported
  ``released`` with the second life's operator, note and time);
* markers written before this version (per message id, without a life) keep a released life released and
  unreleasable, and do not block a later life;
* a release that takes again the marker a killed attempt of its own store left rewrites the marker: another
  instance's refused release names the release that was recorded, not the killed attempt's operator and note.
"""

from __future__ import annotations

import csv
import io
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from engine_support import outage, request, response, t
from redisfixture import RedisServer
from sharedauditkit import RELEASE_COLUMNS, Instance, audit, two_instances

from gateway.engine import Decision, Duplicate, EngineConfig, Tick
from gateway.engine.effects import Action
from gateway.store.shared_audit import SharedAudit

pytestmark = pytest.mark.slow

AD1 = "ad1-lives"
ROUTE = {AD1: ("dno-a", "DCCAlertMessage.AD1")}
KEEP = EngineConfig().keep_for
#: the second life's activation, in minutes after the engine tests' T0: past the first life's retention
SECOND = (KEEP + timedelta(minutes=20)).total_seconds() / 60


@pytest.fixture
def instances(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, Instance]]:
    """``gw-a`` and ``gw-b`` on one redis-server (:func:`sharedauditkit.two_instances`)."""
    with two_instances(tmp_path, redis_server, "shared-release-lives") as (a, b):
        yield {"gw-a": a, "gw-b": b}


def release(
    capsys: pytest.CaptureFixture[str], inst: Instance, operator: str, note: str
) -> tuple[int, str, str]:
    return audit(capsys, "release", AD1, "--config", str(inst.config), "--operator", operator, "--note", note)


def export(
    capsys: pytest.CaptureFixture[str], inst: Instance, day: str, *more: str
) -> dict[str, dict[str, str]]:
    rc, out, err = audit(capsys, "export", "--config", str(inst.config), "--date", day, *more)
    assert rc == 0, err
    return {r["message_id"]: r for r in csv.DictReader(io.StringIO(out))}


def suppressed(effects: list[object]) -> Decision:
    (decision,) = [e for e in effects if isinstance(e, Decision)]
    assert decision.action is Action.SUPPRESS, decision
    return decision


def first_life(a: Instance, b: Instance) -> Decision:
    """AD1 suppressed by A (``activation-window``); the DSP re-delivers it to B, which records A's decision."""
    a.engine.submit(request(0, counter=21), b"<req>")
    a.engine.submit(response(1, counter=21), b"<rsp>")
    decision = suppressed(list(a.engine.submit_many([(outage(2, mid=AD1), b"<ad1 1>")], ROUTE)[0]))
    (dup,) = b.engine.submit(outage(2, mid=AD1), b"<ad1 1>")
    assert isinstance(dup, Duplicate)
    return decision


def second_life(a: Instance) -> Decision:
    """The gateway clock moves past the first life's retention (its idempotency key swept); the meter activates
    firmware again and the DSP re-delivers the AD1 to A: decided afresh, suppressed again."""
    a.engine.take_in_operator_releases()  # (the gateway's redelivery scan: a release recorded on A is taken in)
    a.engine.submit(Tick(t(5.5) + KEEP + timedelta(minutes=1)))
    a.engine.submit(request(SECOND, counter=22), b"<req 2>")
    a.engine.submit(response(SECOND + 1, counter=22), b"<rsp 2>")
    return suppressed(list(a.engine.submit_many([(outage(SECOND + 2, mid=AD1), b"<ad1 2>")], ROUTE)[0]))


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def released_in_log(url: str) -> list[tuple[str, str]]:
    client = redis_client(url)
    try:
        rows = client.xrange("duisgw:decisions")
    finally:
        client.close()
    return [
        (json.loads(f[b"r"])["release"]["operator"], json.loads(f[b"r"])["release"]["message_id"])
        for _id, f in rows
        if b"r" in f
    ]


# ------------------------------------------------------------------------------------------ defect 1


def test_the_second_life_of_a_message_released_in_its_first_life_is_released_once_and_the_first_stays_its_own(
    instances: dict[str, Instance], redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first life, decided by A and recorded by B for a re-delivery, is released on B (alice); A, which still
    holds the first life as suppressed, is refused. The second life, decided by A, is released on A (bob: it was
    refused for ever, "already released by alice"), once; each life's shared export row is its own release."""
    a, b = instances["gw-a"], instances["gw-b"]
    first = first_life(a, b)
    rc, out, err = release(capsys, b, "alice", "first life: genuine outage")
    assert rc == 0, err
    rc, out, err = release(capsys, a, "carol", "again")  # A: the first life, released on B
    assert rc == 1, err
    assert f"message '{AD1}' was already released by alice on instance gw-b at " in err, err
    assert "(note: first life: genuine outage)" in err, err
    second = second_life(a)

    rc, out, err = release(capsys, a, "bob", "second life: genuine outage")
    assert rc == 0, err  # was exit 1: "already released by alice"
    assert out.startswith(f"released {AD1} to dno-a (1 outbox row(s)) by bob"), out
    # once: the second life is not released again
    rc, out, err = release(capsys, a, "carol", "again")
    assert rc == 1 and "is forward, not suppressed: already released by bob" in err, err
    assert released_in_log(redis_server.url) == [("alice", AD1), ("bob", AD1)]

    # the shared export (from either configuration): each life's row its own release
    day1, day2 = first.decided_at.date().isoformat(), second.decided_at.date().isoformat()
    for inst in (a, b):
        row = export(capsys, inst, day1)[AD1]
        assert [row[c] for c in RELEASE_COLUMNS] == ["released", "alice", "first life: genuine outage"]
        assert row["decided_at"] == first.decided_at.isoformat()
        row = export(capsys, inst, day2)[AD1]
        assert [row[c] for c in RELEASE_COLUMNS] == ["released", "bob", "second life: genuine outage"]
        assert row["decided_at"] == second.decided_at.isoformat()


def test_the_shared_export_gives_an_unreleased_first_life_no_release_of_its_second_life(
    instances: dict[str, Instance], redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first life was never released; the second was (by bob). The first life's row stays ``suppressed``
    with no release (it was exported ``released`` by bob, with bob's note and time: a DNO reconciling the day
    would take a withheld AD1 for one it was sent); the second life's row, on its own day, is bob's release."""
    a, b = instances["gw-a"], instances["gw-b"]
    first = first_life(a, b)
    second = second_life(a)
    rc, _out, err = release(capsys, a, "bob", "second life: genuine outage")
    assert rc == 0, err

    day1, day2 = first.decided_at.date().isoformat(), second.decided_at.date().isoformat()
    assert day1 != day2
    shared1 = export(capsys, a, day1)[AD1]
    assert [shared1[c] for c in RELEASE_COLUMNS] == ["suppressed", "", ""]
    assert shared1["released_at"] == ""
    shared2 = export(capsys, a, day2)[AD1]
    assert [shared2[c] for c in RELEASE_COLUMNS] == ["released", "bob", "second life: genuine outage"]
    assert shared2["decided_at"] == second.decided_at.isoformat()
    # as this instance's own audit says (the SQLite source, per life; its routes are the service's, not written
    # here: destination and kind differ)
    same = ("status", "decided_at", "released_at", "released_by", "release_note")
    for day, shared in ((day1, shared1), (day2, shared2)):
        local = export(capsys, a, day, "--local")[AD1]
        assert [local[c] for c in same] == [shared[c] for c in same]


def legacy_release(url: str, operator: str, note: str, at: datetime, instance: str = "gw-a") -> str:
    """What a version before per-life markers left for a release it recorded and confirmed: the marker and the
    done flag by message id, without the life."""
    text = json.dumps({"message_id": AD1, "action": "release-forward", "reason": "operator-release",
                       "operator": operator, "note": note, "decided_at": at.isoformat(), "instance": instance,
                       "host": "old-host", "store": "/old/engine.sqlite3"}, separators=(",", ":"))  # fmt: skip
    client = redis_client(url)
    try:
        client.set(f"duisgw:operator-release:{AD1}", text)
        client.set(f"duisgw:operator-release-done:{AD1}", text)
    finally:
        client.close()
    return text


def test_an_upgrade_keeps_a_first_life_released_before_it_released_and_unreleasable_and_frees_the_second_life(
    instances: dict[str, Instance], redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first life was released (an hour after its suppression) by a version that kept the marker by message
    id: after the upgrade its row is still ``released`` by that release, an instance holding it as suppressed
    is still refused, and the second life (suppressed days after that release) is released."""
    a, b = instances["gw-a"], instances["gw-b"]
    first = first_life(a, b)
    legacy_release(
        redis_server.url, "olga", "released before the upgrade", first.decided_at + timedelta(hours=1)
    )
    second_life(a)
    day1 = first.decided_at.date().isoformat()

    row = export(capsys, a, day1)[AD1]
    assert [row[c] for c in RELEASE_COLUMNS] == ["released", "olga", "released before the upgrade"]
    rc, _out, err = release(capsys, b, "carol", "again")  # B: the first life, released by olga
    assert rc == 1 and "already released by olga on instance gw-a" in err, err

    rc, _out, err = release(capsys, a, "bob", "second life")
    assert rc == 0, err  # was exit 1: "already released by olga"
    assert export(capsys, a, day1)[AD1] == row  # the first life's row is still olga's release
    rc, _out, err = release(capsys, b, "carol", "again")
    assert rc == 1 and "already released by olga on instance gw-a" in err, err


# ------------------------------------------------------------------------------------------ defect 2


def test_a_marker_taken_again_after_a_killed_attempt_names_the_recorded_release_to_another_instance(
    instances: dict[str, Instance], redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release on A (alice, "killed") took the shared marker and died before recording anything; bob's release
    from A's store takes the marker again and is recorded. carol's release from B is refused naming bob, his
    note and time (it named alice and "killed": an operator chasing who forwarded the AD1 asked the wrong person
    about a release that never happened)."""
    a, b = instances["gw-a"], instances["gw-b"]
    first_life(a, b)
    killed = json.dumps({"message_id": AD1, "action": "release-forward", "reason": "operator-release",
                         "operator": "alice", "note": "killed", "decided_at": "2026-11-23T00:00:00+00:00",
                         "instance": "gw-a", "host": socket.gethostname(),
                         "store": str((a.config.parent / "state" / "engine.sqlite3").resolve())},
                        separators=(",", ":"))  # fmt: skip
    shared = SharedAudit(redis_server.url, "duisgw:")
    try:
        assert shared.claim_release(AD1, killed) is None  # (as the killed attempt took it)
    finally:
        shared.close()

    rc, _out, err = release(capsys, a, "bob", "genuine outage")
    assert rc == 0, err
    assert "taking again the release marker this instance took at 2026-11-23T00:00:00+00:00" in err
    recorded = json.loads(audit(capsys, "show", "--config", str(a.config), AD1)[1])["decisions"][-1]
    assert (recorded["operator"], recorded["note"]) == ("bob", "genuine outage")

    rc, _out, err = release(capsys, b, "carol", "customer called")
    assert rc == 1, err
    assert (
        f"message '{AD1}' was already released by bob on instance gw-a at {recorded['decided_at']} "
        "(note: genuine outage); not released again"
    ) in err, err
    assert "alice" not in err and "killed" not in err


def test_a_per_life_marker_taken_again_after_a_killed_attempt_names_the_recorded_release(
    instances: dict[str, Instance], redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same with the marker this version leaves (the life's marker): taken again, rewritten, confirmed."""
    a, b = instances["gw-a"], instances["gw-b"]
    first = first_life(a, b)
    killed = json.dumps({"message_id": AD1, "action": "release-forward", "reason": "operator-release",
                         "operator": "alice", "note": "killed", "decided_at": datetime.now(UTC).isoformat(),
                         "instance": "gw-a", "host": socket.gethostname(),
                         "store": str((a.config.parent / "state" / "engine.sqlite3").resolve())},
                        separators=(",", ":"))  # fmt: skip
    shared = SharedAudit(redis_server.url, "duisgw:")
    try:
        assert shared.claim_release(AD1, killed, first.decided_at) is None
    finally:
        shared.close()
    rc, _out, err = release(capsys, a, "bob", "genuine outage")
    assert rc == 0, err
    rc, _out, err = release(capsys, b, "carol", "customer called")
    assert rc == 1 and "already released by bob on instance gw-a" in err and "killed" not in err, err
    row = export(capsys, b, first.decided_at.date().isoformat())[AD1]
    assert [row[c] for c in RELEASE_COLUMNS] == ["released", "bob", "genuine outage"]


# ------------------------------------------------------------------------------------------ found on the way


def test_a_second_life_the_gateway_forwarded_is_not_released(
    instances: dict[str, Instance], redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """On shared state the instance's store kept a re-decided message's row as its first life left it: the AD1
    re-delivered after its retention and forwarded (``no-activation``) still read ``suppress`` there, and
    ``release`` released it: an operator release of a life the DNO already got, its bytes queued a second time.
    Refused now (the row follows the new life: tests/scaleout/test_shared_redecided_14.py; and ``release``
    checks the latest decision too), and nothing is written to the shared state."""
    a, b = instances["gw-a"], instances["gw-b"]
    first_life(a, b)
    a.engine.submit(Tick(t(5.5) + KEEP + timedelta(minutes=1)))
    (forwarded,) = [e for e in a.engine.submit_many([(outage(SECOND + 2, mid=AD1), b"<ad1 2>")], ROUTE)[0]
                    if isinstance(e, Decision)]  # fmt: skip
    assert (forwarded.action, forwarded.reason.value) == (Action.FORWARD, "no-activation")

    rc, out, err = release(capsys, a, "bob", "genuine outage")
    assert (rc, out) == (1, ""), err
    assert f"message '{AD1}' is forward, not suppressed" in err
    assert [
        r["action"] for r in json.loads(audit(capsys, "show", "--config", str(a.config), AD1)[1])["decisions"]
    ] == [
        "suppress",
        "forward",
    ]
    client = redis_client(redis_server.url)
    try:
        assert client.keys("duisgw:operator-release*") == []
    finally:
        client.close()
