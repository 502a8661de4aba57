"""``duisgw audit release`` of an AD1 on shared state (``[state] backend = "redis"``) finds the restorations paired with
the life it releases in the AD1's *pairing index* (``{prefix}paired:<AD1 id>``), written by each restoration's own
suppression commit with the life of the AD1 it was paired with (the time of that life's suppression decision, as the
commit's engine read it from the AD1's record).

Before it, a pairing was matched to a life by message id and time (decided at or after the life's suppression), read
from whole days of the shared suppression index (3-4 UTC days, seconds a day on a busy store). Pinned down:

* a restoration paired with the AD1's FIRST life at the very instant its SECOND life is suppressed (the first life's
  record outlived its idempotency key: it was held, then released suppressed) is that first life's: it was released
  with the second life when this instance held it, and named to be released when another did (the DNO would get the
  end of an outage it never saw); one paired with the second life at that same instant is still released / named;
* the release names a restoration another instance paired from the pairing index alone (it read the day index);
* a life suppressed before the pairing index began (``{prefix}paired-index-since``: instances of an earlier version
  wrote none), or within the engine's retention after it (a rolling upgrade: an earlier version may still be
  pairing without indexing), is still searched in the day index: a pairing the index does not hold is named.

Two instances (``gw-a``, ``gw-b``: the real :class:`SharedEngine` on a real redis-server, each with its own SQLite
store; :mod:`sharedauditkit`); ``duisgw audit release`` runs through the CLI (``main``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from engine_support import outage, request, response, restored, t
from redisfixture import RedisServer
from sharedauditkit import Instance, audit, two_instances

from gateway.engine import Decision, EngineConfig, Event, Tick
from gateway.engine.effects import Action, Reason
from gateway.store.redis_state import _us
from gateway.store.shared_audit import SharedAudit

pytestmark = pytest.mark.slow

AD1 = "ad1-paired-index-17"
ROUTE = {AD1: ("dno-a", "DCCAlertMessage.AD1")}
KEEP = EngineConfig().keep_for
PAIRED = (Action.SUPPRESS, Reason.RESTORATION_PAIRED)
PREFIX = "duisgw:"

Instances = Callable[[], tuple[Instance, Instance]]


@pytest.fixture
def instances(tmp_path: Path, redis_server: RedisServer) -> Iterator[Instances]:
    with ExitStack() as stack:

        def make() -> tuple[Instance, Instance]:
            return stack.enter_context(two_instances(tmp_path, redis_server, "shared-paired-index-17"))

        yield make


@pytest.fixture
def shared(redis_server: RedisServer) -> Iterator[SharedAudit]:
    """The shared audit facts, read (and, to stand for an earlier version's state, changed) directly."""
    sa = SharedAudit(redis_server.url, PREFIX)
    yield sa
    sa.close()


def decision_of(inst: Instance, event: Event, raw: bytes) -> Decision:
    (decision,) = [e for e in inst.engine.submit_many([(event, raw)], ROUTE)[0] if isinstance(e, Decision)]
    return decision


def decided(inst: Instance, event: Event, raw: bytes) -> tuple[Action, Reason]:
    decision = decision_of(inst, event, raw)
    return decision.action, decision.reason


def release(capsys: pytest.CaptureFixture[str], inst: Instance) -> tuple[str, str]:
    rc, out, err = audit(capsys, "release", AD1, "--config", str(inst.config), "--operator", "bob",
                         "--note", "second life: genuine outage")  # fmt: skip
    assert rc == 0, err
    return out, err


def named(restoration: str, by: str = "gw-b") -> str:
    return (f"the restoration {restoration} paired with {AD1} was recorded by instance {by}, not here: release it "
            "with that instance's configuration")  # fmt: skip


def released_after(restoration: str) -> str:
    return (f"released {restoration} to dno-a (1 outbox row(s)), the restoration paired with {AD1}, queued after it, "
            "by bob")  # fmt: skip


def held_then_suppressed(a: Instance) -> Decision:
    """The AD1's first life: it arrives (5.5 min) before the activation's response (6 min), is held, and is released
    suppressed when the response comes: its outage record is kept from the release (6 min), its idempotency key from
    its arrival (5.5 min), each for the engine's retention."""
    a.engine.submit(request(0, counter=21), b"<req>")
    assert decided(a, outage(2, mid=AD1), b"<ad1 1>") == (Action.HOLD, Reason.PENDING_IMMEDIATE)
    (first,) = [e for e in a.engine.submit(response(1, counter=21, arrival=6), b"<rsp>")
                if isinstance(e, Decision) and e.message_id == AD1]  # fmt: skip
    assert first.action is Action.RELEASE_SUPPRESS
    return first


def second_life_at_one_instant(a: Instance, b: Instance, old: Instance) -> tuple[Decision, datetime]:
    """At one instant T of the gateway clock (past the first life's idempotency key, not its outage record):
    ``old`` pairs the restoration ``rst-old`` with the first life's record, A suppresses the AD1's second life
    (re-delivered, a new activation), and B pairs ``rst-new`` with the second life. Every one decided at T."""
    instant = t(5.5) + KEEP + timedelta(seconds=15)
    a.engine.submit(Tick(instant))
    m = (instant - t(0)).total_seconds() / 60
    a.engine.submit(request(m - 10, counter=22), b"<req 2>")
    a.engine.submit(response(m - 9, counter=22), b"<rsp 2>")
    rst_old = decision_of(old, restored(2, mid="rst-old", arrival=m), b"<rst old>")
    assert (rst_old.action, rst_old.reason) == PAIRED
    second = decision_of(a, outage(m - 3.5, mid=AD1), b"<ad1 2>")
    assert second.action is Action.SUPPRESS
    rst_new = decision_of(b, restored(m - 3.5, mid="rst-new", arrival=m), b"<rst new>")
    assert (rst_new.action, rst_new.reason) == PAIRED
    assert rst_old.decided_at == second.decided_at == rst_new.decided_at == instant
    return second, instant


# ------------------------------------------------------------------------------------------ by life, not by time


def test_a_restoration_paired_here_with_the_first_life_at_the_instant_of_the_second_is_not_released_with_it(
    instances: Instances, capsys: pytest.CaptureFixture[str], shared: SharedAudit
) -> None:
    """A paired ``rst-old`` with the AD1's first life (never released: the DNO never got that outage) at the very
    instant A suppressed the AD1's second life; B paired ``rst-new`` with the second life at the same instant.
    Releasing the second life on A releases the AD1 alone here and names ``rst-new`` (on B); ``rst-old`` stays
    suppressed. It was released after the AD1 ("follows the release of AD1": decided at or after the second life's
    suppression, by time), and the DNO got the end of an outage it never saw."""
    a, b = instances()
    first = held_then_suppressed(a)
    second, _instant = second_life_at_one_instant(a, b, old=a)
    assert {(p.message_id, p.life) for p in shared.pairings(AD1)} == {
        ("rst-old", first.decided_at),
        ("rst-new", second.decided_at),
    }

    out, err = release(capsys, a)
    assert out == f"released {AD1} to dno-a (1 outbox row(s)) by bob\n", err
    assert named("rst-new") in err, err
    assert "rst-old" not in err, err
    assert a.engine.store.status("rst-old") == "suppress"


def test_a_restoration_another_instance_paired_with_the_first_life_at_the_instant_of_the_second_is_not_named(
    instances: Instances, capsys: pytest.CaptureFixture[str]
) -> None:
    """As above, B paired both: ``rst-old`` with the first life, ``rst-new`` with the second, both at the instant of
    the second life's suppression. Releasing the second life on A names ``rst-new`` only: ``rst-old`` was named too,
    to be released with B's configuration (the end of an outage the DNO never saw)."""
    a, b = instances()
    held_then_suppressed(a)
    second_life_at_one_instant(a, b, old=b)

    out, err = release(capsys, a)
    assert out == f"released {AD1} to dno-a (1 outbox row(s)) by bob\n", err
    assert named("rst-new") in err, err
    assert "rst-old" not in err, err


def test_a_restoration_paired_here_with_the_released_life_at_its_instant_is_released_with_it(
    instances: Instances, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side: A itself paired ``rst-new`` with the second life at the instant of its suppression (and B
    ``rst-old`` with the first): ``rst-new`` follows the AD1, ``rst-old`` is not named."""
    a, b = instances()
    held_then_suppressed(a)
    instant = t(5.5) + KEEP + timedelta(seconds=15)
    a.engine.submit(Tick(instant))
    m = (instant - t(0)).total_seconds() / 60
    a.engine.submit(request(m - 10, counter=22), b"<req 2>")
    a.engine.submit(response(m - 9, counter=22), b"<rsp 2>")
    assert decided(b, restored(2, mid="rst-old", arrival=m), b"<rst old>") == PAIRED
    assert decision_of(a, outage(m - 3.5, mid=AD1), b"<ad1 2>").action is Action.SUPPRESS
    assert decided(a, restored(m - 3.5, mid="rst-new", arrival=m), b"<rst new>") == PAIRED

    out, err = release(capsys, a)
    assert out.splitlines() == [
        f"released {AD1} to dno-a (1 outbox row(s)) by bob",
        released_after("rst-new"),
    ], err
    assert "rst-old" not in err, err


# ------------------------------------------------------------------------------------------ the index, the days


def pair_elsewhere(a: Instance, b: Instance) -> Decision:
    """A suppresses the AD1 (its only life), B pairs ``rst-b`` with it."""
    a.engine.submit(request(0, counter=21), b"<req>")
    a.engine.submit(response(1, counter=21), b"<rsp>")
    ad1 = decision_of(a, outage(2, mid=AD1), b"<ad1>")
    assert ad1.action is Action.SUPPRESS
    assert decided(b, restored(2, mid="rst-b"), b"<rst>") == PAIRED
    return ad1


def test_the_release_names_a_restoration_paired_elsewhere_from_the_pairing_index_alone(
    instances: Instances, capsys: pytest.CaptureFixture[str], shared: SharedAudit
) -> None:
    """The pairing index began a retention and more before the AD1's life (every instance writes it): the release
    reads the AD1's pairing index, not the days of the suppression index (here gone: the name comes from the
    pairing index; the day scan found nothing)."""
    a, b = instances()
    ad1 = pair_elsewhere(a, b)
    shared.redis.set(shared.keys.paired_since, _us(ad1.decided_at - KEEP - timedelta(seconds=1)))
    days = list(shared.redis.scan_iter(f"{PREFIX}suppressions:*"))
    assert days
    shared.redis.delete(*days)

    _out, err = release(capsys, a)
    assert named("rst-b") in err, err


@pytest.mark.parametrize(
    "began", [timedelta(seconds=1), -KEEP + timedelta(seconds=1)], ids=["after", "upgrading"]
)
def test_a_life_before_the_pairing_index_or_within_the_upgrade_is_searched_in_the_days(
    instances: Instances, capsys: pytest.CaptureFixture[str], shared: SharedAudit, began: timedelta
) -> None:
    """The pairing index began after the AD1's life (``after``: instances of an earlier version paired without
    indexing), or less than a retention before it (``upgrading``: an instance of the earlier version may still be
    pairing): B's pairing is not in the pairing index (as that version left it), and is found in the day index."""
    a, b = instances()
    ad1 = pair_elsewhere(a, b)
    shared.redis.set(shared.keys.paired_since, _us(ad1.decided_at + began))
    shared.redis.delete(shared.keys.paired(AD1))

    _out, err = release(capsys, a)
    assert named("rst-b") in err, err


def test_no_index_begun_is_searched_in_the_days(
    instances: Instances, capsys: pytest.CaptureFixture[str], shared: SharedAudit
) -> None:
    """No ``paired-index-since`` at all (no instance of this version committed a suppression since the state began,
    or it was lost): the day index is searched."""
    a, b = instances()
    pair_elsewhere(a, b)
    shared.redis.delete(shared.keys.paired_since, shared.keys.paired(AD1))

    _out, err = release(capsys, a)
    assert named("rst-b") in err, err
