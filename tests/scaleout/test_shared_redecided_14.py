"""On shared state (``[state] backend = "redis"``) a message id the DSP re-delivered after the engine's retention
and that was decided afresh (a new *life*: docs/ENGINE.md §8, docs/OPERATIONS.md "## Audit") takes the new
decision into the instance's ``messages`` row, as on a single node (``gateway.store.sqlite._REDECIDED``): its
status and reason are the new life's and, a new life, ``delivered = 0``.

:class:`SharedEngine` recorded the batch with the store's plain insert, so the row kept its first life: a second-
life forward of a message forwarded (and flagged in the outbox) in its first life still read ``delivered = 1``,
and one suppressed in its first life still read ``suppress``. The processor's redelivery scan
(``SqliteStore.undelivered``: ``status = 'forward' AND delivered = 0``) is what puts a forward decision into the
outbox when the accept path's outbox commit did not happen (a crash between the engine commit and the outbox
commit, an outbox write that failed): it did not see either second-life forward, so such a forward was never
delivered unless the DSP re-delivered it once more; and a second-life suppress of a first-life forward read
``forward`` (the audit list, ``duisgw audit release``'s local checks).

The real :class:`SharedEngine` on a real redis-server, with its own SQLite store.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, outage, request, response, t

from gateway.engine import Decision, Duplicate, EngineConfig, Tick
from gateway.engine.effects import Action
from gateway.store.redis_state import RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.slow

ROWS = [(ESME, CH, MPAN, "Landis+Gyr")]
AD1 = "ad1-redecided"
ROUTE = {AD1: ("dno-a", "DCCAlertMessage.AD1")}
KEEP = EngineConfig().keep_for
#: the second life, in minutes after the engine tests' T0: past the first life's retention
SECOND = (KEEP + timedelta(minutes=20)).total_seconds() / 60


@pytest.fixture
def engine(tmp_path: Path, redis_url: str) -> Iterator[SharedEngine]:
    eng = SharedEngine(SqliteStore(tmp_path / "engine.sqlite3"), RedisStateConfig(url=redis_url, instance="gw-a"),
                       EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))  # fmt: skip
    try:
        yield eng
    finally:
        eng.close()


def decided(engine: SharedEngine, minutes: float, raw: bytes) -> Decision:
    (decision,) = [e for e in engine.submit_many([(outage(minutes, mid=AD1), raw)], ROUTE)[0]
                   if isinstance(e, Decision)]  # fmt: skip
    return decision


def row(engine: SharedEngine) -> tuple[str, str, int]:
    (got,) = [
        (m["status"], m["reason"], m["delivered"]) for m in engine.store.messages() if m["message_id"] == AD1
    ]
    return got


def past_retention(engine: SharedEngine) -> None:
    """The gateway clock past the first life's retention: its idempotency key is swept."""
    engine.submit(Tick(t(5.5) + KEEP + timedelta(minutes=1)))


def forwarded_first(engine: SharedEngine) -> None:
    """The AD1 forwarded (no activation), put in the outbox and flagged so, as the processor does."""
    first = decided(engine, 2, b"<ad1 1>")
    assert (first.action, first.reason.value) == (Action.FORWARD, "no-activation")
    engine.store.mark_delivered([AD1])
    assert row(engine) == ("forward", "no-activation", 1)
    assert engine.store.undelivered() == []


def suppressed_first(engine: SharedEngine) -> None:
    engine.submit(request(0, counter=21), b"<req>")
    engine.submit(response(1, counter=21), b"<rsp>")
    first = decided(engine, 2, b"<ad1 1>")
    assert (first.action, first.reason.value) == (Action.SUPPRESS, "activation-window")
    assert row(engine) == ("suppress", "activation-window", 0)


def test_a_second_life_forward_of_a_message_forwarded_in_its_first_life_is_pending_delivery_again(
    engine: SharedEngine,
) -> None:
    """Forwarded and delivered in its first life; re-delivered after the retention and forwarded again: the row
    reads ``delivered = 0``, so the redelivery scan puts the second life's forward in the outbox if the accept
    path did not (it read ``delivered = 1``: the scan never saw it)."""
    forwarded_first(engine)
    past_retention(engine)
    second = decided(engine, SECOND + 2, b"<ad1 2>")
    assert (second.action, second.reason.value) == (Action.FORWARD, "no-activation")
    assert row(engine) == ("forward", "no-activation", 0)
    assert engine.store.undelivered() == [(AD1, b"<ad1 1>")]  # the original bytes, first arrival's, kept
    engine.store.mark_delivered([AD1])  # (in the outbox now)
    assert engine.store.undelivered() == []


def test_a_second_life_forward_of_a_message_suppressed_in_its_first_life_is_pending_delivery(
    engine: SharedEngine,
) -> None:
    """Suppressed in its first life; forwarded in its second (its activation pruned): the row reads ``forward``
    (it read ``suppress``) and is pending delivery."""
    suppressed_first(engine)
    past_retention(engine)
    second = decided(engine, SECOND + 2, b"<ad1 2>")
    assert (second.action, second.reason.value) == (Action.FORWARD, "no-activation")
    assert row(engine) == ("forward", "no-activation", 0)
    assert [mid for mid, _raw in engine.store.undelivered()] == [AD1]


def test_a_second_life_suppress_of_a_message_forwarded_in_its_first_life_is_not_pending_delivery(
    engine: SharedEngine,
) -> None:
    """Forwarded and delivered in its first life; suppressed in its second (a firmware activation): the row
    reads ``suppress`` (it read ``forward``) and nothing is pending delivery."""
    forwarded_first(engine)
    past_retention(engine)
    engine.submit(request(SECOND, counter=22), b"<req 2>")
    engine.submit(response(SECOND + 1, counter=22), b"<rsp 2>")
    second = decided(engine, SECOND + 2, b"<ad1 2>")
    assert (second.action, second.reason.value) == (Action.SUPPRESS, "activation-window")
    assert row(engine) == ("suppress", "activation-window", 0)
    assert engine.store.undelivered() == []
    assert engine.store.latest_decision(AD1) is not None


def test_a_re_delivery_within_the_retention_leaves_the_row_of_a_delivered_forward_as_it_was(
    engine: SharedEngine,
) -> None:
    """The same life re-delivered (a duplicate): the row is not touched, its delivery flag stays set."""
    forwarded_first(engine)
    (dup,) = engine.submit_many([(outage(2, mid=AD1), b"<ad1 1>")], ROUTE)[0]
    assert isinstance(dup, Duplicate)
    assert row(engine) == ("forward", "no-activation", 1)
    assert engine.store.undelivered() == []
