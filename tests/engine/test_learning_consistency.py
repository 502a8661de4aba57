"""Inventory learning stays consistent with what is durable.

- A batch whose store commit fails leaves the inventory exactly as before the batch: the links it learned
  or ended, the rows it added and the hub ends it recorded are undone (``begin_learning`` /
  ``rollback_learning``, driven by ``DurableEngine``), also across a reload in the middle of the batch.
  A later AD1 is decided as if the failed batch never happened.
- A hub's end is kept per hub (``HubEnd``): link evidence naming the hub that is not newer than its end
  never links any ESME to it, whichever ESME it names and in whichever order it arrives, after a restart
  too; newer evidence (the hub re-commissioned) links as usual.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import (
    CH,
    ESME,
    MPAN,
    OTHER_CH,
    OTHER_ESME,
    OTHER_MPAN,
    MemoryScope,
    decisions,
    learned,
    outage,
    request,
    response,
    t,
    unlinked,
)

from gateway.engine import Action, Engine, EngineConfig, Observed, Reason, StateChange
from gateway.engine.events import DEVICE_REMOVED, HUB_DECOMMISSIONED, Event
from gateway.engine.state import LearnedLink
from gateway.inventory import Inventory, InventoryRegistry, InventoryRow
from gateway.store import DurableEngine, SqliteStore

NEW_ESME = 0x00DB1234567892A0  # an ESME the snapshot does not hold
NEW_CH = 0x00DB1234567890B2
NEW_MPAN = "1234567890998"


def _snapshot() -> Inventory:
    """ESME and OTHER_ESME behind CH, each with its own MPAN; nothing behind OTHER_CH yet."""
    return Inventory.from_rows(
        [
            InventoryRow(ESME, CH, MPAN, "Landis+Gyr", "E470"),
            InventoryRow(OTHER_ESME, CH, OTHER_MPAN, "Landis+Gyr", "E470"),
        ]
    )


def _state(inv: Inventory | InventoryRegistry) -> tuple[object, ...]:
    """Everything the inventory answers about the ESMEs and hubs these tests touch."""
    cur = inv.current if isinstance(inv, InventoryRegistry) else inv
    return (
        sorted(cur.snapshot_rows(), key=lambda r: r.esme),
        sorted(cur.learned_links(), key=lambda r: r.esme),
        sorted(cur.hub_ends()),
        len(cur),
        *(tuple(sorted(cur.esmes_for_ch(c))) for c in (CH, OTHER_CH, NEW_CH)),
        *(tuple(sorted(cur.esmes_for_mpan(m))) for m in (MPAN, OTHER_MPAN, NEW_MPAN)),
        *(cur.learned(e) for e in (ESME, OTHER_ESME, NEW_ESME)),
        *(cur.hub_end(c) for c in (CH, OTHER_CH, NEW_CH)),
    )


def _hub_down(
    at: float, time: float, hub: int = CH, *, change: str = HUB_DECOMMISSIONED, mid: str | None = None
) -> Event:
    return unlinked(at, esme=hub, time=time, ch=None, mpan=None, change=change, mid=mid)


def _batch() -> list[Event]:
    """Learning of every kind: a re-homed ESME, a new ESME (a row added), a hub's end."""
    return [
        learned(70, esme=ESME, ch=NEW_CH, mpan=NEW_MPAN, time=69, mid="rehome"),
        learned(71, esme=NEW_ESME, ch=OTHER_CH, mpan=None, time=70, mid="new-esme"),
        _hub_down(72, 71, mid="hub-down"),
    ]


# ---- fix 1: a failed batch learns nothing -----------------------------------------------------------


def test_a_rolled_back_learning_transaction_restores_rows_chains_added_rows_and_hub_ends() -> None:
    inv = _snapshot()
    inv.learn(OTHER_ESME, ch=OTHER_CH, at=t(10).timestamp())  # committed before the transaction
    before = _state(inv)
    inv.begin_learning()
    eng = Engine(EngineConfig(), MemoryScope([ESME]), inv)
    for ev in _batch():
        eng.handle(ev)
    assert _state(inv) != before and inv.ch_for_esme(ESME) == NEW_CH and NEW_ESME in inv
    inv.rollback_learning()
    assert _state(inv) == before
    assert NEW_ESME not in inv and inv.esmes_for_ch(CH) == (ESME,) and inv.esmes_for_ch(NEW_CH) == ()
    # and it learns again as if nothing had happened (the removed row's key is free)
    inv.learn(NEW_ESME, ch=NEW_CH, at=t(80).timestamp())
    assert inv.esmes_for_ch(NEW_CH) == (NEW_ESME,) and inv.ch_for_esme(NEW_ESME) == NEW_CH


def test_a_committed_learning_transaction_keeps_what_it_learned() -> None:
    inv = _snapshot()
    inv.begin_learning()
    inv.learn(ESME, ch=NEW_CH, at=t(10).timestamp())
    inv.commit_learning()
    inv.rollback_learning()  # no transaction open: nothing to undo
    assert inv.ch_for_esme(ESME) == NEW_CH


@pytest.mark.parametrize("outcome", ["rollback", "commit"])
def test_a_reload_in_the_middle_of_a_learning_transaction_keeps_it_exact(outcome: str) -> None:
    """The new snapshot takes what was committed, and learns the open transaction's links in a transaction
    of its own: a rollback after the reload still forgets them; a commit keeps them."""
    reg = InventoryRegistry(_snapshot())
    reg.learn(OTHER_ESME, ch=OTHER_CH, at=t(10))  # committed (no transaction)
    reg.begin_learning()
    reg.learn_link(LearnedLink(ESME, NEW_CH, None, None, None, None, t(69)))
    reg.end_hub(CH, t(71))
    reg.reload(_snapshot())
    if outcome == "rollback":
        reg.rollback_learning()
        assert reg.ch_for_esme(ESME) == CH and reg.hub_end(CH) is None
    else:
        reg.commit_learning()
        assert reg.ch_for_esme(ESME) == NEW_CH and reg.hub_end(CH) == t(71)
    assert reg.ch_for_esme(OTHER_ESME) == OTHER_CH  # committed learning survives the reload either way


def _fail_commits(store: SqliteStore) -> None:
    """A real SQLite failure at commit (the store stays readable): writing engine state aborts."""
    store._conn().execute(
        "CREATE TRIGGER fail_state BEFORE INSERT ON engine_state BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )


def _repair(store: SqliteStore) -> None:
    store._conn().execute("DROP TRIGGER fail_state")


def test_a_batch_whose_commit_fails_leaves_the_inventory_as_before_and_a_later_ad1_is_decided_as_without_it(
    tmp_path: Path,
) -> None:
    inventory = InventoryRegistry(_snapshot())
    durable = DurableEngine(
        SqliteStore(tmp_path / "engine.sqlite3"), EngineConfig(), MemoryScope([ESME]), inventory
    )
    reference = DurableEngine(
        SqliteStore(tmp_path / "ref.sqlite3"),
        EngineConfig(),
        MemoryScope([ESME]),
        InventoryRegistry(_snapshot()),
    )
    try:
        for d in (durable, reference):
            d.submit_many([(request(60), b"req"), (response(60.5), b"resp")])
        before = _state(inventory)
        _fail_commits(durable.store)
        with pytest.raises(Exception, match="disk I/O error"):
            durable.submit_many([(ev, b"<message>") for ev in _batch()])
        _repair(durable.store)
        assert _state(inventory) == before
        # an AD1 of the old hub: the activated ESME is still behind it (the hub's end was not kept)
        ad1 = outage(73, arrival=74, ch=CH, mpan=None, mid="ad1-old-hub")
        # one of the new hub: the ESME was not re-homed
        ad1_new = outage(73, arrival=74, ch=NEW_CH, mpan=None, mid="ad1-new-hub")
        got = [decisions(durable.submit(ev, b"ad1")) for ev in (ad1, ad1_new)]
        want = [decisions(reference.submit(ev, b"ad1")) for ev in (ad1, ad1_new)]
        assert [(d.action, d.reason, d.esmes) for [d] in got] == [
            (d.action, d.reason, d.esmes) for [d] in want
        ]
        assert [(d.action, d.reason) for [d] in got] == [
            (Action.SUPPRESS, Reason.ACTIVATION_WINDOW),
            (Action.FORWARD, Reason.CH_UNKNOWN),
        ]
        # the DSP re-delivers the batch: learned now, durably
        durable.submit_many([(ev, b"<message>") for ev in _batch()])
        assert inventory.ch_for_esme(ESME) == NEW_CH and inventory.hub_end(CH) == t(71)
    finally:
        durable.store.close()
        reference.store.close()


# ---- fix 2: a hub's end is kept per hub -------------------------------------------------------------


def _note(effects: list[object]) -> str:
    [obs] = [e for e in effects if isinstance(e, Observed)]
    return obs.note


def test_an_older_8_2_naming_another_esme_on_a_decommissioned_hub_arriving_after_it_does_not_link_it() -> (
    None
):
    eng = Engine(EngineConfig(), MemoryScope([ESME, NEW_ESME]), _snapshot())
    inv = eng.inventory
    eng.handle(_hub_down(60, 59))
    note = _note(eng.handle(learned(120, esme=NEW_ESME, ch=CH, mpan=NEW_MPAN, time=30)))  # an 8.2 of 30, late
    assert inv.esmes_for_ch(CH) == () and inv.ch_for_esme(NEW_ESME) is None
    assert inv.mpan_for_esme(NEW_ESME) == NEW_MPAN  # the rest of the evidence is learned
    assert (
        note
        == f"its Comms Hub {CH:016X} ended at {t(59).isoformat()}, not before this evidence: not linked to it"
    )
    # an AD1 of that hub joins no ESME, however many activations there are
    eng.handle(request(130, esme=NEW_ESME))
    eng.handle(response(130.5, esme=NEW_ESME))
    [d] = decisions(eng.handle(outage(132, ch=CH, mpan=None)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.CH_UNKNOWN)
    # evidence newer than the end (the hub re-commissioned) links
    eng.handle(learned(140, esme=NEW_ESME, ch=CH, mpan=None, time=135))
    assert inv.esmes_for_ch(CH) == (NEW_ESME,)


def test_evidence_of_the_same_instant_as_the_hub_end_does_not_link_and_a_late_older_end_changes_nothing() -> (
    None
):
    eng = Engine(EngineConfig(), MemoryScope([ESME]), _snapshot())
    eng.handle(_hub_down(60, 59))
    eng.handle(learned(61, esme=NEW_ESME, ch=CH, mpan=None, time=59))  # an end wins a link of its instant
    assert eng.inventory.ch_for_esme(NEW_ESME) is None
    changes = [e for e in eng.handle(_hub_down(62, 40, mid="older-end")) if isinstance(e, StateChange)]
    assert not [c for c in changes if c.table.value == "hub-end"]  # the latest end is kept
    assert eng.inventory.hub_end(CH) == t(59)  # type: ignore[attr-defined]


def test_a_hub_removed_from_the_inventory_without_esmes_known_behind_it_is_not_linked_by_older_evidence() -> (
    None
):
    eng = Engine(EngineConfig(), MemoryScope([ESME]), _snapshot())
    eng.handle(_hub_down(60, 59, NEW_CH, change=DEVICE_REMOVED))  # no ESME behind it: read as a meter
    eng.handle(learned(120, esme=NEW_ESME, ch=NEW_CH, mpan=None, time=30))
    assert eng.inventory.esmes_for_ch(NEW_CH) == ()


def test_a_hub_end_outlives_a_restart_of_the_sqlite_store_and_older_evidence_still_does_not_link(
    tmp_path: Path,
) -> None:
    path = tmp_path / "engine.sqlite3"
    first = DurableEngine(
        SqliteStore(path), EngineConfig(), MemoryScope([ESME]), InventoryRegistry(_snapshot())
    )
    first.submit(_hub_down(60, 59, mid="chf-1"), b"<the DCC alert>")
    first.store.close()
    inventory = InventoryRegistry(_snapshot())
    second = DurableEngine(SqliteStore(path), EngineConfig(), MemoryScope([ESME]), inventory)
    try:
        assert inventory.hub_end(CH) == t(59) and inventory.esmes_for_ch(CH) == ()
        second.submit(learned(120, esme=NEW_ESME, ch=CH, mpan=None, time=30, mid="late-8.2"), b"<8.2>")
        assert inventory.ch_for_esme(NEW_ESME) is None
        second.submit(learned(130, esme=NEW_ESME, ch=CH, mpan=None, time=125, mid="new-8.2"), b"<8.2>")
        assert inventory.esmes_for_ch(CH) == (NEW_ESME,)
    finally:
        second.store.close()
    # a store written before hub ends were kept (no hub-end row) restores as before
    old = tmp_path / "old.sqlite3"
    legacy = DurableEngine(
        SqliteStore(old), EngineConfig(), MemoryScope([ESME]), InventoryRegistry(_snapshot())
    )
    legacy.submit(_hub_down(60, 59, mid="chf-1"), b"<the DCC alert>")
    legacy.store._conn().execute("DELETE FROM engine_state WHERE tbl = 'hub-end'")
    legacy.store.close()
    inventory = InventoryRegistry(_snapshot())
    DurableEngine(SqliteStore(old), EngineConfig(), MemoryScope([ESME]), inventory).store.close()
    assert inventory.hub_end(CH) is None and inventory.esmes_for_ch(CH) == ()  # the per-ESME ends stay


def test_a_reload_keeps_the_hub_ends_and_ends_a_newer_snapshots_links_to_the_hub_only_when_the_end_is_newer() -> (
    None
):
    reg = InventoryRegistry(_snapshot())
    reg.end_hub(CH, t(59))
    reg.reload(Inventory.from_rows([InventoryRow(NEW_ESME, CH, None)], as_of=t(30)))  # older than the end
    assert reg.hub_end(CH) == t(59) and reg.esmes_for_ch(CH) == ()
    reg.reload(Inventory.from_rows([InventoryRow(NEW_ESME, CH, None)], as_of=t(90)))  # re-commissioned since
    assert reg.hub_end(CH) == t(59) and reg.esmes_for_ch(CH) == (NEW_ESME,)
    reg.learn(OTHER_ESME, ch=CH, at=t(30))  # older evidence naming the hub: still not linked
    assert reg.ch_for_esme(OTHER_ESME) is None


def test_a_failed_batch_whose_store_cannot_be_read_back_leaves_no_idempotency_key_and_is_decided_again(
    tmp_path: Path,
) -> None:
    """The commit fails and so does rebuilding the engine from the store (its state table is gone for a
    moment): the engine still held the batch's idempotency keys, so the DSP's re-delivery was answered as
    a duplicate with nothing durable (a genuine outage suppressed in memory only never reached the DNO).
    The engine stays marked stale and is rebuilt before anything else is decided."""
    inventory = InventoryRegistry(_snapshot())
    durable = DurableEngine(
        SqliteStore(tmp_path / "engine.sqlite3"), EngineConfig(), MemoryScope([ESME]), inventory
    )
    try:
        durable.submit_many([(request(60), b"req"), (response(60.5), b"resp")])
        db = durable.store._conn()
        db.execute("ALTER TABLE engine_state RENAME TO engine_state_away")
        ad1 = outage(61, arrival=62, ch=CH, mpan=None, mid="ad1")
        with pytest.raises(Exception, match="engine_state"):
            durable.submit_many([(ad1, b"ad1")])
        with pytest.raises(Exception, match="engine_state"):  # still unreadable: nothing is decided
            durable.submit_many([(ad1, b"ad1")])
        db.execute("ALTER TABLE engine_state_away RENAME TO engine_state")
        [d] = decisions(durable.submit(ad1, b"ad1"))  # the re-delivery is decided, durably
        assert (d.action, d.reason) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW)
        assert durable.store.status("ad1") == "suppress"
    finally:
        durable.store.close()
