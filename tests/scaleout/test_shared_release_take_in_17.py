"""On shared state, taking in an operator release marks the released life's outage, not a later life of its message id.

``duisgw audit release`` records the release of one *life* of a suppressed AD1 (the life suppressed last in the
store it runs on; docs/SCALE-OUT.md "Operator releases"); the instance takes it in at its next redelivery scan
(:meth:`SharedEngine.take_in_operator_releases`), marking the AD1's suppressed-outage record released in the shared
state, so that its restoration is forwarded (``not-paired``) as on a single node. The take-in marked whatever record
the shared state held under the message id. When the instance took the release in late — it was stopped when the
operator released with its configuration, or Redis could not be reached from it — past the engine's retention, and
the DCC had delivered the message id again to another instance meanwhile (a new life, suppressed afresh), it marked
that NEW life released: its restoration was forwarded ``not-paired`` (an end of an outage the DNO never got) where a
single node pairs it (suppressed). Now the take-in marks the record of the life released only (the time of that
life's suppression decision, which the record keeps).

The real :class:`SharedEngine` (two instances, each with its own SQLite store) on a real redis-server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
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

from gateway.engine import Decision, Engine, EngineConfig, Tick
from gateway.engine.effects import Action
from gateway.engine.events import Event
from gateway.store.redis_state import RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.slow

ROWS = [(ESME, CH, MPAN, "Landis+Gyr")]
DAYS = 24 * 60.0  # minutes


def decisions(effects: list[object]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


def test_a_release_taken_in_after_the_retention_does_not_release_a_later_life_of_the_message_id(
    redis_url: str, tmp_path: Path
) -> None:
    """A suppresses AD1 X (an activation's reboot) and its operator releases it with A's configuration; A takes the
    release in only later (stopped meanwhile). Past the retention B decides another activation of the meter and the
    DCC's delivery of X again (a new life, suppressed), then A takes the release in. X's new restoration, decided by
    B, is paired with the new life and suppressed, as on a single node — it used to be forwarded ``not-paired``."""
    first: list[Event] = [request(0, counter=21), response(1, counter=21), outage(2, mid="ad1-x")]
    later = 4 * DAYS
    second: list[Event] = [request(later, counter=22), response(later + 1, counter=22), outage(later + 2, mid="ad1-x")]
    restoration = restored(later + 2, mid="rst-x")

    single = Engine(EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))
    for ev in first:
        single.handle(ev)
    single.released_by_operator("ad1-x")  # (a single node takes it in at once, or at its start)
    single.handle(Tick(t(later - 1)))
    for ev in second:
        single.handle(ev)
    expected = decisions(single.handle(restoration))
    assert [(d.action, str(d.reason)) for d in expected] == [(Action.SUPPRESS, "restoration-paired")]

    def make(name: str) -> SharedEngine:
        return SharedEngine(SqliteStore(tmp_path / f"{name}.sqlite3"), RedisStateConfig(url=redis_url, instance=name),
                            EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))  # fmt: skip

    a, b = make("a"), make("b")
    try:
        for ev in first:
            a.submit(ev, b"<" + ev.message_id.encode() + b">")
        assert a.store.status("ad1-x") == "suppress"
        assert a.store.release_suppressed("ad1-x", "ops", "customer off supply", t(10)) == b"<ad1-x>"
        b.submit(Tick(t(later - 1)))  # past the retention of the first life
        (again,) = decisions(b.submit(second[0], b"<req2>") + b.submit(second[1], b"<rsp2>")
                             + b.submit(second[2], b"<ad1-x>"))  # fmt: skip
        assert (again.message_id, again.action) == ("ad1-x", Action.SUPPRESS)  # a new life, suppressed afresh
        assert a.take_in_operator_releases() == [("ad1-x", "power-outage")]  # A takes its release in, late
        got = decisions(b.submit(restoration, b"<rst>"))
        assert [(d.action, d.reason) for d in got] == [(d.action, d.reason) for d in expected]
    finally:
        a.close()
        b.close()


def test_a_release_taken_in_marks_the_released_life_as_before(redis_url: str, tmp_path: Path) -> None:
    """The ordinary case is unchanged: the release taken in within the life's retention marks it released, and its
    restoration, decided by the other instance, is forwarded ``not-paired`` as on a single node."""
    story: list[Event] = [request(0, counter=21), response(1, counter=21), outage(2, mid="ad1-x")]

    def make(name: str) -> SharedEngine:
        return SharedEngine(SqliteStore(tmp_path / f"{name}.sqlite3"), RedisStateConfig(url=redis_url, instance=name),
                            EngineConfig(), MemoryScope([ESME]), MemoryInventory(ROWS))  # fmt: skip

    a, b = make("a"), make("b")
    try:
        for ev in story:
            a.submit(ev, b"<" + ev.message_id.encode() + b">")
        a.store.release_suppressed("ad1-x", "ops", "", t(10))
        assert a.take_in_operator_releases() == [("ad1-x", "power-outage")]
        got = decisions(b.submit(restored(2, mid="rst-x"), b"<rst>"))
        assert [(d.action, str(d.reason)) for d in got] == [(Action.FORWARD, "not-paired")]
    finally:
        a.close()
        b.close()
