"""``duisgw audit release`` and ``export`` on shared state (``[state] backend = "redis"``) read the shared suppression
index per *life* of a message, as the ``--local`` audit does: a message id the DSP re-delivered after the engine's
retention and that was suppressed afresh is a second life (docs/OPERATIONS.md "## Audit"), listed in the index again
(``d:<id>`` for the first of a day, ``ld:<µs>:<id>`` for a later life of an id already listed that day).

Two instances (``gw-a``, ``gw-b``: the real :class:`SharedEngine` on a real redis-server, each with its own SQLite
store where its gateway configuration puts it); ``duisgw audit release`` and ``export`` run through the CLI
(``main``) with those configurations. Pinned down:

* the release of an AD1's second life names the restoration another instance paired with THAT life (it searched
  the index days of the AD1's first suppression ever: the operator was not told, and the DNO got the outage
  without its end), and not one paired with the first life (it was named, to be released: the DNO would get the
  end of an outage it never saw);
* it searches every day a restoration can be paired with the life on (from the life's suppression until the
  engine's retention prunes its record), not only that day and the next: a restoration that came 40 hours after
  its AD1 was missed;
* a restoration this instance paired with the AD1's FIRST life and still suppressed is not released with the
  second life (it was, "follows the release of AD1"); one another instance paired with the second life is named
  though this instance holds another life of its message id (it was not: the message id was known here);
* the shared export lists both lives of a message id suppressed on one UTC day, each with its own release, as
  ``--local`` does (it kept one row per message id: the second life's was missing).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import pytest
from engine_support import (
    ESME,
    outage,
    request,
    response,
    restored,
    t,
)
from redisfixture import RedisServer
from sharedauditkit import Instance, audit, two_instances

from gateway.engine import Decision, Duplicate, EngineConfig, Event, Tick
from gateway.engine.effects import Action, Reason
from gateway.engine.events import SupplyRestored

pytestmark = pytest.mark.slow

AD1 = "ad1-lives-15"
ROUTE = {AD1: ("dno-a", "DCCAlertMessage.AD1")}
#: the columns a life's shared export row and its ``--local`` row share (destination and kind come from the routes,
#: which the service writes and these tests do not)
SAME = ("message_id", "reason", "decided_at", "start_datetime", "status", "released_at", "released_by",
        "release_note")  # fmt: skip
#: a retention under a day ([engine] retention): two lives of a message id on one UTC day
SHORT = timedelta(hours=2)
PAIRED = (Action.SUPPRESS, Reason.RESTORATION_PAIRED)


Instances = Callable[..., tuple[Instance, Instance]]


@pytest.fixture
def instances(tmp_path: Path, redis_server: RedisServer) -> Iterator[Instances]:
    """Makes ``gw-a`` and ``gw-b`` on one redis-server (:func:`sharedauditkit.two_instances`), with ``[engine]
    retention`` when given."""
    with ExitStack() as stack:

        def make(retention: timedelta | None = None) -> tuple[Instance, Instance]:
            return stack.enter_context(two_instances(tmp_path, redis_server, "shared-audit-lives-15", retention))

        yield make


def release(capsys: pytest.CaptureFixture[str], inst: Instance, operator: str, note: str) -> tuple[str, str]:
    rc, out, err = audit(capsys, "release", AD1, "--config", str(inst.config), "--operator", operator,
                         "--note", note)  # fmt: skip
    assert rc == 0, err
    return out, err


def export(capsys: pytest.CaptureFixture[str], inst: Instance, day: str, *more: str) -> list[dict[str, str]]:
    """The export's rows of the AD1, in the file's order."""
    rc, out, err = audit(capsys, "export", "--config", str(inst.config), "--date", day, *more)
    assert rc == 0, err
    return [r for r in csv.DictReader(io.StringIO(out)) if r["message_id"] == AD1]


def decision_of(inst: Instance, event: Event, raw: bytes) -> Decision:
    """``inst``'s decision of the inline message ``event`` (``raw``: its bytes)."""
    (decision,) = [e for e in inst.engine.submit_many([(event, raw)], ROUTE)[0] if isinstance(e, Decision)]
    return decision


def decided(inst: Instance, event: Event, raw: bytes) -> tuple[Action, Reason]:
    decision = decision_of(inst, event, raw)
    return decision.action, decision.reason


def suppress(inst: Instance, event: Event, raw: bytes) -> Decision:
    decision = decision_of(inst, event, raw)
    assert decision.action is Action.SUPPRESS, decision
    return decision


def first_life(a: Instance, b: Instance) -> Decision:
    """AD1 suppressed by A (``activation-window``); the DSP re-delivers it to B, which records A's decision."""
    a.engine.submit(request(0, counter=21), b"<req>")
    a.engine.submit(response(1, counter=21), b"<rsp>")
    decision = suppress(a, outage(2, mid=AD1), b"<ad1 1>")
    (dup,) = b.engine.submit(outage(2, mid=AD1), b"<ad1 1>")
    assert isinstance(dup, Duplicate)
    return decision


def second_life(a: Instance, keep: timedelta, later: timedelta = timedelta(0)) -> tuple[Decision, float]:
    """The gateway clock moves past the first life's retention ``keep`` (its idempotency key and outage record
    pruned), and ``later`` on; the meter activates firmware again and the DSP re-delivers the AD1 to A: decided
    afresh, suppressed again. With the minute (engine tests' time) of the second AD1's outage start."""
    a.engine.take_in_operator_releases()  # (the gateway's redelivery scan: a release recorded on A is taken in)
    a.engine.submit(Tick(t(5.5) + keep + later + timedelta(minutes=1)))
    start = (keep + later + timedelta(minutes=20)).total_seconds() / 60
    a.engine.submit(request(start, counter=22), b"<req 2>")
    a.engine.submit(response(start + 1, counter=22), b"<rsp 2>")
    return suppress(a, outage(start + 2, mid=AD1), b"<ad1 2>"), start + 2


def named(restoration: str, by: str = "gw-b") -> str:
    return (f"the restoration {restoration} paired with {AD1} was recorded by instance {by}, not here: release it "
            "with that instance's configuration")  # fmt: skip


# ------------------------------------------------------------------------------------------ 1: paired elsewhere


def test_releasing_a_second_life_names_the_restoration_another_instance_paired_with_that_life(
    instances: Instances, capsys: pytest.CaptureFixture[str]
) -> None:
    """The AD1's second life (suppressed by A three days after the first: a day after the first life's retention)
    is paired, on B, with the meter's restoration: its bytes are in B's store only. Releasing the second life on A
    names it on stderr, to be released with B's configuration. It was not named: the search read the index days of
    the AD1's FIRST suppression (the first life's day and the next), so the operator was not told, and the DNO got
    the outage without its end."""
    a, b = instances()
    first = first_life(a, b)
    second, start = second_life(a, EngineConfig().keep_for, timedelta(days=1))
    assert second.decided_at.date() - first.decided_at.date() == timedelta(days=3)
    assert decided(b, restored(start, mid="rst-second-life"), b"<rst 2>") == PAIRED

    out, err = release(capsys, a, "bob", "second life: genuine outage")
    assert out == f"released {AD1} to dno-a (1 outbox row(s)) by bob\n"
    assert named("rst-second-life") in err, err


def test_releasing_a_second_life_does_not_name_a_restoration_paired_with_the_first_life(
    instances: Instances, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retention under a day: both lives of the AD1 are suppressed on one UTC day. B paired a restoration with the
    first life (never released: the DNO never got that outage) and another with the second. Releasing the second
    life on A names the second life's restoration only: the first life's was named too, to be released, and the
    DNO would have got the end of an outage it never saw."""
    a, b = instances(SHORT)
    first = first_life(a, b)
    assert decided(b, restored(2, mid="rst-first-life"), b"<rst 1>") == PAIRED
    second, start = second_life(a, SHORT)
    assert second.decided_at.date() == first.decided_at.date()
    assert decided(b, restored(start, mid="rst-second-life"), b"<rst 2>") == PAIRED

    _out, err = release(capsys, a, "bob", "second life: genuine outage")
    assert "rst-first-life" not in err, err
    assert named("rst-second-life") in err, err


def test_a_restoration_paired_more_than_a_day_after_its_ad1_is_named(
    instances: Instances, capsys: pytest.CaptureFixture[str]
) -> None:
    """The supply came back 40 hours after the AD1 (a genuine long outage) and the restoration reached B, which paired
    it with the AD1's suppressed record (kept for the engine's retention, 2 days and 45 minutes). Releasing the AD1 on
    A names it: the search read the index of the AD1's suppression day and the next only, and missed it two days
    on (the DNO got the outage, never its end)."""
    a, b = instances()
    first = first_life(a, b)
    late = SupplyRestored(message_id="rst-late", arrival=t(2 + 40 * 60 + 1), verified=True, esme=ESME,
                          alert_code=0x8F36, interruption_time=t(2), restoration_time=t(2 + 40 * 60))  # fmt: skip
    decision = decision_of(b, late, b"<rst late>")
    assert (decision.action, decision.reason) == PAIRED
    assert decision.decided_at.date() - first.decided_at.date() == timedelta(days=2)

    _out, err = release(capsys, a, "bob", "genuine outage")
    assert named("rst-late") in err, err


# ------------------------------------------------------------------------------------------ 1b: paired here


def test_a_restoration_paired_here_with_the_first_life_is_not_released_with_the_second(
    instances: Instances, capsys: pytest.CaptureFixture[str]
) -> None:
    """A paired one restoration with the AD1's first life (never released) and one with its second. Releasing the
    second life releases the second life's restoration after it, and leaves the first life's suppressed: it was
    released too ("follows the release of AD1"), and the DNO got the end of an outage it never saw."""
    a, b = instances()
    first_life(a, b)
    assert decided(a, restored(2, mid="rst-first-life"), b"<rst 1>") == PAIRED
    _second, start = second_life(a, EngineConfig().keep_for)
    assert decided(a, restored(start, mid="rst-second-life"), b"<rst 2>") == PAIRED

    out, err = release(capsys, a, "bob", "second life: genuine outage")
    assert out.splitlines() == [
        f"released {AD1} to dno-a (1 outbox row(s)) by bob",
        f"released rst-second-life to dno-a (1 outbox row(s)), the restoration paired with {AD1}, queued after it, "
        "by bob",
    ], err
    assert a.engine.store.status("rst-first-life") == "suppress"


def test_a_restoration_paired_elsewhere_with_the_released_life_is_named_though_this_instance_holds_its_first_life(
    instances: Instances, capsys: pytest.CaptureFixture[str]
) -> None:
    """The restoration's message id has two lives too: A paired its first life with the AD1's first life; re-delivered
    after the retention, it reached B, which paired it with the AD1's second life. Releasing the AD1's second life on
    A names the restoration (B holds that life of it) and does not release A's first life of it. It was not named:
    A knows the message id, and was taken to hold it (the DNO got the outage without its end)."""
    a, b = instances()
    first_life(a, b)
    assert decided(a, restored(2, mid="rst-twice"), b"<rst 1>") == PAIRED
    _second, start = second_life(a, EngineConfig().keep_for)
    assert decided(b, restored(start, mid="rst-twice"), b"<rst 2>") == PAIRED

    out, err = release(capsys, a, "bob", "second life: genuine outage")
    assert out == f"released {AD1} to dno-a (1 outbox row(s)) by bob\n", err
    assert named("rst-twice") in err, err
    assert a.engine.store.status("rst-twice") == "suppress"


def test_a_restoration_paired_elsewhere_and_recorded_here_for_a_re_delivery_is_released_here_not_named(
    instances: Instances, capsys: pytest.CaptureFixture[str]
) -> None:
    """B paired the restoration with the AD1's second life; the DSP re-delivered it to A, which recorded B's decision
    (with its time) and keeps its bytes: releasing the AD1 on A releases the restoration after it, and does not send
    the operator to B for it (the life A holds is the one paired)."""
    a, b = instances()
    first_life(a, b)
    _second, start = second_life(a, EngineConfig().keep_for)
    assert decided(b, restored(start, mid="rst-both"), b"<rst>") == PAIRED
    (dup,) = a.engine.submit(restored(start, mid="rst-both"), b"<rst>")
    assert isinstance(dup, Duplicate)

    out, err = release(capsys, a, "bob", "second life: genuine outage")
    assert out.splitlines() == [
        f"released {AD1} to dno-a (1 outbox row(s)) by bob",
        f"released rst-both to dno-a (1 outbox row(s)), the restoration paired with {AD1}, queued after it, by bob",
    ], err
    assert "rst-both" not in err, err


# ------------------------------------------------------------------------------------------ 2: export per life


def test_the_shared_export_lists_two_lives_suppressed_on_one_day_each_with_its_own_release(
    instances: Instances, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retention under a day: the AD1's first life is suppressed (A), released (alice), and its second life is
    suppressed (A) on the same UTC day. The shared export of that day, from either configuration, lists both lives
    as ``--local`` does: the first released by alice, the second suppressed; then released by bob. It listed one
    row per message id, the first life's: the second life was missing from the DNO's file."""
    a, b = instances(SHORT)
    first = first_life(a, b)
    release(capsys, a, "alice", "first life: genuine outage")
    second, _start = second_life(a, SHORT)
    day = first.decided_at.date().isoformat()
    assert second.decided_at.date().isoformat() == day

    def rows(inst: Instance, *more: str) -> list[list[str]]:
        return [[r[c] for c in SAME] for r in export(capsys, inst, day, *more)]

    local = rows(a, "--local")
    assert [(r[2], r[4], r[6]) for r in local] == [
        (first.decided_at.isoformat(), "released", "alice"),
        (second.decided_at.isoformat(), "suppressed", ""),
    ]
    for inst in (a, b):
        assert rows(inst) == local

    release(capsys, a, "bob", "second life: genuine outage")
    local = rows(a, "--local")
    assert [(r[2], r[4], r[6], r[7]) for r in local] == [
        (first.decided_at.isoformat(), "released", "alice", "first life: genuine outage"),
        (second.decided_at.isoformat(), "released", "bob", "second life: genuine outage"),
    ]
    for inst in (a, b):
        assert rows(inst) == local
