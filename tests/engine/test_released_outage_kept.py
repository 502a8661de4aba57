"""An operator-released AD1 stays known as a *released* outage for its retention (it used to be forgotten).

The story (DOMAIN.md §2 accepts it): an immediate activation at 0 opens a window to 30.5; the reboot's AD1
(outage at 2) and a genuine cut's AD1 (outage at 20) on the same hub are both suppressed. The operator learns
of the cut and releases its AD1 (``duisgw audit release``): the DNO now has the outage. Its restoration alert,
arriving afterwards (interruption at 20), must reach the DNO too. Before, the release deleted the genuine AD1's
suppressed-outage record, so the restoration was paired with the reboot's AD1, whose window contains it, and
was suppressed: the DNO kept an outage open that had ended.

Now the release marks the record released; a restoration whose nearest outage in a window is a released one is
forwarded (``not-paired``, evidence ``released-outage``), and the reboot's own restoration still pairs with the
reboot's AD1. Pinned in the engine, on SQLite (a release by another process, a restart, a running engine taking
the release in) and on shared state (a real redis-server: the release taken in on one instance, the restoration
decided on another).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
from engine_support import decisions, outage, request, response, restored, run, standard_world, t

from gateway.engine import Action, Engine, EngineConfig, Reason
from gateway.engine.effects import Decision, StateChange, Table
from gateway.engine.errors import PairedWithReleasedOutage
from gateway.engine.events import Tick
from gateway.engine.records import to_record
from gateway.engine.state import SuppressedOutage
from gateway.store import DurableEngine, SqliteStore


def _two_suppressed_outages(eng: Engine) -> None:
    run(eng, [request(0), response(0.5)])
    out = run(eng, [outage(2, mid="ad1-a-reboot"), outage(20, mid="ad1-b-genuine")])
    assert [d.action for d in decisions(out)] == [Action.SUPPRESS, Action.SUPPRESS]


def _only(effects: list[object]) -> Decision:
    [d] = [e for e in effects if isinstance(e, Decision)]
    return d


# ---------------------------------------------------------------- the engine


def test_a_released_ad1s_later_restoration_is_forwarded_not_paired_with_the_reboots_ad1() -> None:
    eng = standard_world()
    _two_suppressed_outages(eng)
    changes = eng.released_by_operator("ad1-b-genuine")
    [change] = changes
    assert isinstance(change, StateChange) and change.table is Table.SUPPRESSED
    assert isinstance(change.value, SuppressedOutage) and change.value.released  # kept, marked released
    d = _only(eng.handle(restored(20, arrival=40, mid="rst-genuine")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    assert [(e.role, e.message_id) for e in d.evidence] == [("released-outage", "ad1-b-genuine")]


def test_the_reboots_own_restoration_still_pairs_with_the_reboots_ad1_after_the_other_is_released() -> None:
    eng = standard_world()
    _two_suppressed_outages(eng)
    eng.released_by_operator("ad1-b-genuine")
    d = _only(eng.handle(restored(2, arrival=40, mid="rst-reboot")))
    assert (d.action, d.reason) == (Action.SUPPRESS, Reason.RESTORATION_PAIRED)
    assert [(e.role, e.message_id) for e in d.evidence] == [("suppressed-outage", "ad1-a-reboot")]


def test_a_release_is_idempotent_and_of_an_unknown_ad1_changes_nothing() -> None:
    eng = standard_world()
    _two_suppressed_outages(eng)
    assert len(eng.released_by_operator("ad1-b-genuine")) == 1
    assert eng.released_by_operator("ad1-b-genuine") == []  # already released
    assert eng.released_by_operator("no-such-ad1") == []


def test_a_released_outage_survives_export_and_restore_and_is_pruned_with_its_retention() -> None:
    eng = standard_world()
    _two_suppressed_outages(eng)
    eng.released_by_operator("ad1-b-genuine")
    rows = [(c.table.value, c.key, to_record(c.value)) for c in eng.export_state() if c.value is not None]
    again = Engine.restore(EngineConfig(), eng.scope, eng.inventory, rows)
    d = _only(again.handle(restored(20, arrival=40, mid="rst-genuine")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    # the record goes when its retention passes, like any suppressed outage's (decided at 23.5, + keep_for)
    pruned = again.handle(Tick(t(60) + EngineConfig().keep_for))
    assert StateChange(Table.SUPPRESSED, "ad1-b-genuine", None) in pruned


def test_a_suppressed_outage_stored_before_the_field_existed_reads_as_not_released() -> None:
    eng = standard_world()
    _two_suppressed_outages(eng)
    rows = []
    for c in eng.export_state():
        if c.value is None:
            continue
        rec = to_record(c.value)
        if c.table is Table.SUPPRESSED:
            del rec["released"]  # as written by an earlier version
        rows.append((c.table.value, c.key, rec))
    again = Engine.restore(EngineConfig(), eng.scope, eng.inventory, rows)
    d = _only(again.handle(restored(20, arrival=40, mid="rst-genuine")))
    assert (d.action, d.reason) == (Action.SUPPRESS, Reason.RESTORATION_PAIRED)


# ---------------------------------------------------------------- SQLite: `duisgw audit release` in another process


def _durable(path: Path) -> DurableEngine:
    eng = standard_world()
    d = DurableEngine(SqliteStore(path), EngineConfig(), eng.scope, eng.inventory)
    d.submit(request(0))
    d.submit(response(0.5))
    for ad1 in (outage(2, mid="ad1-a-reboot"), outage(20, mid="ad1-b-genuine")):
        [dec] = decisions(d.submit(ad1, f"<{ad1.message_id}/>".encode()))
        assert dec.action is Action.SUPPRESS
    return d


def _release(path: Path, mid: str) -> None:
    operator = SqliteStore(path, checkpoint_interval=0)
    try:
        operator.release_suppressed(mid, "ops", "customer confirms no supply", t(30))
    finally:
        operator.close()


def _stored_record(path: Path, mid: str) -> dict[str, object] | None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute(
            "SELECT record FROM engine_state WHERE tbl='suppressed' AND key=?", (mid,)
        ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def test_the_release_command_marks_the_stored_record_released_and_a_restart_forwards_the_later_restoration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    _durable(path).store.close()
    _release(path, "ad1-b-genuine")
    kept = _stored_record(path, "ad1-b-genuine")
    assert kept is not None and kept["released"] is True
    eng = standard_world()
    again = DurableEngine(SqliteStore(path), EngineConfig(), eng.scope, eng.inventory)
    try:
        genuine = _only(again.submit(restored(20, arrival=40, mid="rst-genuine"), b"<rst-genuine/>"))
        reboot = _only(again.submit(restored(2, arrival=41, mid="rst-reboot"), b"<rst-reboot/>"))
    finally:
        again.store.close()
    assert (genuine.action, genuine.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    assert (reboot.action, reboot.reason) == (Action.SUPPRESS, Reason.RESTORATION_PAIRED)


def test_a_running_engine_that_took_the_release_in_forwards_the_later_restoration(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    live = _durable(path)
    try:
        _release(path, "ad1-b-genuine")
        assert live.take_in_operator_releases() == [("ad1-b-genuine", "power-outage")]
        kept = _stored_record(path, "ad1-b-genuine")
        assert kept is not None and kept["released"] is True  # the take-in's own write keeps it released
        d = _only(live.submit(restored(20, arrival=40, mid="rst-genuine"), b"<rst-genuine/>"))
        assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    finally:
        live.store.close()


def test_a_restoration_decided_before_the_take_in_is_refused_and_then_forwarded(tmp_path: Path) -> None:
    # the batch's own check (ENGINE.md §9): the running engine still holds the AD1 as suppressed, the batch
    # pairs the restoration with it and is refused; rebuilt from the store, whose record is marked released,
    # the restoration is forwarded rather than paired with the reboot's AD1
    path = tmp_path / "s.sqlite3"
    live = _durable(path)
    try:
        _release(path, "ad1-b-genuine")
        with pytest.raises(PairedWithReleasedOutage):
            live.submit(restored(20, arrival=40, mid="rst-genuine"), b"<rst-genuine/>")
        live.take_in_operator_releases()
        d = _only(live.submit(restored(20, arrival=40, mid="rst-genuine"), b"<rst-genuine/>"))
        assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    finally:
        live.store.close()
