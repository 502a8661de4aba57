"""A message re-delivered after its retention, decided afresh, in the SQLite store: its row takes the new
decision and idempotency key.

The store wrote a message's row with ``INSERT OR IGNORE``. A message id whose key had been pruned (its
retention passed) and that the DSP delivered again was decided afresh, and the new decision was recorded,
but the row kept its first life's status, decision number, ``updated`` and ``seen_at``: a restart did not load
the new key (``seen_at`` too old), so a third delivery was decided afresh once more, and everything reading the
row (the audit list, the archive's selection, the delivery flag) saw the first life.
"""

from __future__ import annotations

from pathlib import Path

from engine_support import (
    CH,
    MPAN,
    OTHER_CH,
    OTHER_MPAN,
    decisions,
    outage,
    request,
    response,
    standard_world,
    tick,
)

from gateway.engine import Action, Duplicate, EngineConfig, Reason
from gateway.store import DurableEngine, SqliteStore

KEEP = EngineConfig().keep_for.total_seconds() / 60  # minutes


def _durable(path: Path) -> DurableEngine:
    eng = standard_world()
    return DurableEngine(SqliteStore(path, checkpoint_interval=0), EngineConfig(), eng.scope, eng.inventory)


def _row(d: DurableEngine, mid: str) -> tuple[object, ...]:
    return tuple(
        d.store._conn()
        .execute(
            "SELECT status, reason, decision_seq, seen_at, updated, delivered, arrival, raw FROM messages "
            "WHERE message_id=?",
            (mid,),
        )
        .fetchone()
    )


def _last_decision(d: DurableEngine, mid: str) -> tuple[int, str, str]:
    return tuple(  # type: ignore[return-value]
        d.store._conn()
        .execute("SELECT seq, action, reason FROM decisions WHERE message_id=? ORDER BY seq DESC", (mid,))
        .fetchone()
    )


def test_a_message_decided_afresh_after_its_retention_takes_the_new_decision_and_key_into_its_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    d = _durable(path)
    # first life: a forwarded AD1 (a hub outside the scope), delivered
    [first] = decisions(d.submit(outage(0, ch=OTHER_CH, mpan=OTHER_MPAN, mid="ad1"), b"<AD1 first/>"))
    assert first.action is Action.FORWARD
    d.store.mark_delivered(["ad1"])
    first_row = _row(d, "ad1")
    d.submit(tick(KEEP + 10))  # its key is pruned
    # second life: the same id, now an AD1 of the in-scope hub in an activation's window: suppressed
    at = KEEP + 20
    run_out = [*d.submit(request(at), None), *d.submit(response(at + 0.5), None)]
    assert not [e for e in run_out if isinstance(e, Duplicate)]
    [second] = decisions(d.submit(outage(at + 1, ch=CH, mpan=MPAN, mid="ad1"), b"<AD1 again/>"))
    assert (second.action, second.reason) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW)

    seq, action, _ = _last_decision(d, "ad1")
    status, reason, decision_seq, seen_at, updated, delivered, arrival, raw = _row(d, "ad1")
    assert (status, reason, decision_seq, action) == ("suppress", "activation-window", seq, "suppress")
    assert seen_at != first_row[3] and updated == second.decided_at.isoformat()
    assert delivered == 0
    # the row's identity stays the first life's: its arrival and original bytes (both lives' decisions are kept)
    assert (arrival, raw) == (first_row[6], first_row[7]) == (first_row[6], b"<AD1 first/>")
    d.store.close()

    # a restart loads the new key: a third delivery within the new retention is a duplicate of the second life
    d = _durable(path)
    out = d.submit(outage(at + 1, ch=CH, mpan=MPAN, mid="ad1", arrival=at + 30), b"<AD1 again/>")
    assert out == [Duplicate("ad1", second)]


def test_a_re_delivery_within_the_retention_leaves_the_row_as_it_was(tmp_path: Path) -> None:
    d = _durable(tmp_path / "s.sqlite3")
    [first] = decisions(d.submit(outage(0, ch=OTHER_CH, mpan=OTHER_MPAN, mid="ad1"), b"<AD1/>"))
    d.store.mark_delivered(["ad1"])
    before = _row(d, "ad1")
    out = d.submit(outage(0, ch=OTHER_CH, mpan=OTHER_MPAN, mid="ad1", arrival=60), b"<AD1 resent/>")
    assert out == [Duplicate("ad1", first)]
    assert _row(d, "ad1") == before  # still delivered, still the first bytes


def test_an_observation_re_delivered_after_its_retention_gets_its_new_key(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    d = _durable(path)
    d.submit(request(0, mid="req"), None)
    first = _row(d, "req")
    d.submit(tick(KEEP + 10))  # its key is pruned
    d.submit(request(KEEP + 20, mid="req"), None)
    status, _, decision_seq, seen_at, *_ = _row(d, "req")
    assert (status, decision_seq) == ("observed", None) and seen_at != first[3]
    d.store.close()
    d = _durable(path)
    assert any(isinstance(e, Duplicate) for e in d.submit(request(KEEP + 20, mid="req"), None))
