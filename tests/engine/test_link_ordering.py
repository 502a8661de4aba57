"""Inventory links learned from traffic are ordered by the time of their evidence, not by arrival.

The DCC re-delivers messages for up to two days, so an 8.2 response can arrive after a newer one. Each
learned link (Comms Hub, MPxN) keeps the own time of the message it was learned from
(``InventoryObserved.time``, the ``ResponseDateTime``) and is replaced only by evidence at least as new
(``gateway.engine.state.merge_learned``): whatever the arrival order, the end state is the newest
evidence's, in memory, after a restart from the stored records, and in stored rows written before those
times existed (treated as older than any timed evidence).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from engine_support import (
    CH,
    ESME,
    MPAN,
    MemoryScope,
    decisions,
    learned,
    outage,
    request,
    response,
    run,
    t,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine import Action, Engine, EngineConfig, Observed, Reason, StateChange, Table
from gateway.engine.engine import records_of
from gateway.engine.state import LearnedLink, merge_learned
from gateway.inventory import Inventory, InventoryRow
from gateway.store import DurableEngine, SqliteStore

NEW_CH = 0x00DB1234567890B2
NEW_MPAN = "1234567890998"
HUBS = (CH, NEW_CH, 0x00DB1234567890C2)
MPANS = (MPAN, NEW_MPAN, "1234567890881")


def _snapshot() -> Inventory:
    return Inventory.from_rows([InventoryRow(ESME, CH, MPAN, "Landis+Gyr", "E470")])


def _world(inventory: Inventory | None = None) -> Engine:
    return Engine(EngineConfig(), MemoryScope([ESME]), _snapshot() if inventory is None else inventory)


def _stored(changes: list[StateChange]) -> list[tuple[str, str, dict[str, object]]]:
    """What a store keeps of the state changes (the latest value per key), as JSON text."""
    table: dict[tuple[str, str], object] = {}
    for c in changes:
        if c.value is None:
            table.pop((c.table.value, c.key), None)
        else:
            table[(c.table.value, c.key)] = c.value
    rows = records_of(StateChange(Table(tbl), key, value) for (tbl, key), value in table.items())
    return [(tbl, key, json.loads(json.dumps(rec))) for tbl, key, rec in rows]


def test_a_late_observation_older_than_the_one_that_rehomed_the_esme_does_not_move_it_back() -> None:
    eng = _world()
    eng.handle(learned(60, esme=ESME, ch=NEW_CH, mpan=MPAN, time=59))  # its Comms Hub was exchanged at 59
    [obs] = [e for e in eng.handle(learned(120, esme=ESME, ch=CH, mpan=MPAN, time=30)) if isinstance(e, Observed)]
    assert eng.inventory.ch_for_esme(ESME) == NEW_CH
    at = t(59).isoformat()
    assert (obs.used, obs.note) == (True, f"stale: newer evidence of its ch at {at}, mpan at {at}")
    run(eng, [request(130), response(130.5)])
    [d] = decisions(eng.handle(outage(132, ch=NEW_CH, mpan=None)))  # joined through the hub it is on now
    assert (d.action, d.reason, d.esmes) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW, (ESME,))


_observation = st.tuples(st.sampled_from((*HUBS, None)), st.sampled_from((*MPANS, None))).filter(
    lambda o: o != (None, None)
)


@settings(max_examples=150, deadline=None)
@given(
    observations=st.lists(_observation, min_size=1, max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_in_any_arrival_order_each_link_ends_as_its_newest_evidence_says_also_after_a_restart(
    observations: list[tuple[int | None, str | None]], order: random.Random
) -> None:
    # observation i has its own time i (distinct instants); they arrive in a random order
    timed = [(i, ch, mpan) for i, (ch, mpan) in enumerate(observations)]
    arrival = list(timed)
    order.shuffle(arrival)
    eng = _world()
    changes: list[StateChange] = []
    reference: LearnedLink | None = None
    for n, (i, ch, mpan) in enumerate(arrival):
        out = eng.handle(learned(100 + n, esme=ESME, ch=ch, mpan=mpan, time=i))
        changes += [e for e in out if isinstance(e, StateChange)]
        fact = LearnedLink(ESME, ch, mpan, "Landis+Gyr", None, None, t(i) if ch else None, t(i) if mpan else None)
        reference = merge_learned(reference, fact)
        assert eng.inventory.learned(ESME) == reference  # the inventory applies exactly the rule
    newest_ch = max(((i, ch) for i, ch, _ in timed if ch is not None), default=(None, CH))[1]
    newest_mpan = max(((i, m) for i, _, m in timed if m is not None), default=(None, MPAN))[1]
    inv = eng.inventory
    assert (inv.ch_for_esme(ESME), inv.mpan_for_esme(ESME)) == (newest_ch, newest_mpan)
    again = Engine.restore(EngineConfig(), eng.scope, _snapshot(), _stored(changes))
    assert again.inventory.learned(ESME) == reference
    assert (again.inventory.ch_for_esme(ESME), again.inventory.mpan_for_esme(ESME)) == (newest_ch, newest_mpan)


def test_a_restarted_sqlite_engine_keeps_the_evidence_times_so_a_late_older_observation_stays_stale(
    tmp_path: Path,
) -> None:
    path = tmp_path / "engine.sqlite3"
    first = DurableEngine(SqliteStore(path), EngineConfig(), MemoryScope([ESME]), _snapshot())
    first.submit(learned(60, esme=ESME, ch=NEW_CH, mpan=NEW_MPAN, time=59))
    first.store.close()
    inventory = _snapshot()
    second = DurableEngine(SqliteStore(path), EngineConfig(), MemoryScope([ESME]), inventory)
    assert (inventory.ch_for_esme(ESME), inventory.mpan_for_esme(ESME)) == (NEW_CH, NEW_MPAN)
    second.submit(learned(120, esme=ESME, ch=CH, mpan=MPAN, time=30))  # re-delivered late, older
    assert (inventory.ch_for_esme(ESME), inventory.mpan_for_esme(ESME)) == (NEW_CH, NEW_MPAN)
    second.store.close()


def test_a_learned_row_stored_before_evidence_times_restores_and_is_older_than_any_timed_evidence() -> None:
    # the record the engine wrote before: no ch_time / mpan_time, ``at`` the gateway clock when learned
    old = {"esme": ESME, "ch": NEW_CH, "mpan": NEW_MPAN, "manufacturer": "Landis+Gyr", "model": None,
           "at": t(500).isoformat()}  # fmt: skip
    eng = Engine.restore(EngineConfig(), MemoryScope([ESME]), _snapshot(), [("learned", f"{ESME:016X}", old)])
    assert (eng.inventory.ch_for_esme(ESME), eng.inventory.mpan_for_esme(ESME)) == (NEW_CH, NEW_MPAN)
    # any timed evidence is newer than a link learned without a time, even evidence from before ``at``
    eng.handle(learned(600, esme=ESME, ch=CH, mpan=None, time=10))
    assert (eng.inventory.ch_for_esme(ESME), eng.inventory.mpan_for_esme(ESME)) == (CH, NEW_MPAN)


def test_the_inventory_gives_back_each_evidence_time_exactly() -> None:
    inv = _snapshot()
    at = datetime(2026, 1, 15, 9, 0, 0, 123457, tzinfo=UTC)  # DUIS date-times may carry fractions
    fact = LearnedLink(ESME, NEW_CH, None, None, None, None, at, None)
    assert inv.learn_link(fact) == inv.learned(ESME) == replace(fact, at=None)
    assert inv.learn_link(fact) is None  # nothing changed: the same evidence again
