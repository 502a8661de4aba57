"""Second review of the sixteenth session's engine fixes (cd27deb: a Comms Hub link ended by its hub's end names
the hub; 6c569fb: the same bytes are decided once whether their signature verified at one delivery or not).

Each test pins a defect found in that review (docs/ENGINE.md §3 and §8):

- a hub's end ending the snapshot's link of a meter kept that end over every later snapshot, however new: a
  snapshot taken after the end putting the meter on its new hub (the old one replaced) left it without a hub,
  live and after a restart (before cd27deb the end carried its own time, and a newer snapshot's link stood);
- a hub's end ending the snapshot's link of a meter whose MPxN was learned with a time gave the live inventory
  another learned time for the meter than a restart gives (the live one then kept the meter's learned fields
  over any snapshot, the restored one did not);
- with an unsigned inline message forwarded within the retention (the engine's usual state), every verified
  event looked for a signed twin of its id, which only an unsigned message's id can have (+0.5 µs an AD1, ~10 %
  of the engine's time on the hot path).
"""

from __future__ import annotations

import dataclasses
import json

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
    standard_world,
    t,
    unlinked,
)

from gateway.engine import Engine, EngineConfig, StateChange
from gateway.engine.effects import Duplicate
from gateway.engine.engine import records_of
from gateway.engine.events import HUB_DECOMMISSIONED, unsigned_id
from gateway.inventory import Inventory, InventoryRegistry, InventoryRow

NEW_CH = 0x00DB1234567892A2  # the hub that replaced CH
D1 = 0x0123456789ABCDEF01234567


def _snapshot(hub: int, *, as_of: float | None = None) -> Inventory:
    return Inventory.from_rows(
        [InventoryRow(ESME, hub, MPAN, "Landis+Gyr", "E470")], as_of=None if as_of is None else t(as_of)
    )


def _engine(inventory: InventoryRegistry) -> Engine:
    return Engine(EngineConfig(), MemoryScope([ESME]), inventory)


def _restored(changes: list[StateChange], inventory: InventoryRegistry) -> Engine:
    """A restart: the latest value of every state change, through JSON, restored on the snapshot."""
    table: dict[tuple[str, str], StateChange] = {(c.table.value, c.key): c for c in changes}
    rows = [(tbl, key, json.loads(json.dumps(rec))) for tbl, key, rec in records_of(table.values())]
    return Engine.restore(EngineConfig(), MemoryScope([ESME]), inventory, rows)


def _end_hub(engine: Engine, *, time: float, at: float) -> list[StateChange]:
    out = engine.handle(
        unlinked(at, esme=CH, time=time, ch=None, mpan=None, change=HUB_DECOMMISSIONED, mid=f"chf-{time}")
    )
    return [e for e in out if isinstance(e, StateChange)]


# ---- a hub's end and a newer snapshot ---------------------------------------------------------------------


def test_a_snapshot_newer_than_a_hubs_end_puts_a_meter_of_that_hub_on_the_hub_the_snapshot_names() -> None:
    """M on CH in the snapshot; CH decommissioned at 30 (replaced); a snapshot as of 60 puts M on NEW_CH. M is on
    NEW_CH, and an AD1 of NEW_CH during M's firmware activation is suppressed. Was: M stayed without a hub (the
    end of the snapshot's link was kept over every snapshot), the AD1 forwarded ``ch-unknown``."""
    live_inv = InventoryRegistry(_snapshot(CH))
    live = _engine(live_inv)
    changes = _end_hub(live, time=30, at=31)
    assert live_inv.ch_for_esme(ESME) is None
    restarted_inv = InventoryRegistry(_snapshot(CH))
    restarted = _restored(changes, restarted_inv)
    assert restarted_inv.ch_for_esme(ESME) is None
    for inv, engine in ((live_inv, live), (restarted_inv, restarted)):
        inv.reload(_snapshot(NEW_CH, as_of=60))
        assert inv.ch_for_esme(ESME) == NEW_CH
        assert inv.esmes_for_ch(NEW_CH) == (ESME,)
        engine.handle(request(100))
        engine.handle(response(101))
        [d] = decisions(engine.handle(outage(101.5, ch=NEW_CH)))
        assert (d.disposition, d.reason.value) == ("suppress", "activation-window")


def test_a_snapshot_older_than_a_hubs_end_still_gives_way_to_it_for_a_meter_it_puts_on_that_hub() -> None:
    """The other side of the rule: a snapshot as of 20, before CH's end at 30, putting M on CH leaves M without a
    hub (the end, kept per hub, ends that link); one as of 40 (CH re-commissioned since) puts M on CH."""
    inv = InventoryRegistry(_snapshot(CH))
    _end_hub(_engine(inv), time=30, at=31)
    inv.reload(_snapshot(CH, as_of=20))
    assert inv.ch_for_esme(ESME) is None
    state = inv.learned(ESME)
    assert state is not None and (state.ended, state.ch_ended_by) == (("ch",), CH)
    inv.reload(_snapshot(CH, as_of=40))
    assert inv.ch_for_esme(ESME) == CH


def test_a_hubs_end_of_the_snapshots_link_leaves_the_learned_time_a_restart_gives() -> None:
    """M on CH in the snapshot, its MPxN learned from an 8.2 of 10 that names no hub; CH decommissioned at 30. The
    live inventory and one restored from the records agree on what was learned of M and when (the learned
    fields of a meter are kept over a reloaded snapshot by that time). Was: the live one had no time for M (the
    end of a link without a time of its own stamped it so), the restored one the 8.2's."""
    live_inv = InventoryRegistry(_snapshot(CH))
    live = _engine(live_inv)
    changes = [
        e
        for e in live.handle(learned(11, esme=ESME, ch=None, mpan=MPAN, time=10, mid="inv-1"))
        if isinstance(e, StateChange)
    ]
    changes += _end_hub(live, time=30, at=31)
    restarted_inv = InventoryRegistry(_snapshot(CH))
    _restored(changes, restarted_inv)
    assert live_inv.learned(ESME) == restarted_inv.learned(ESME)
    assert list(live_inv.current.learned_links()) == list(restarted_inv.current.learned_links())
    [link] = live_inv.current.learned_links()
    assert link.at == t(10).timestamp()
    # so a reload as of 20 (after the 8.2) takes the snapshot's manufacturer, live as after a restart
    for inv in (live_inv, restarted_inv):
        inv.reload(Inventory.from_rows([InventoryRow(ESME, NEW_CH, MPAN, "Itron", "ACE")], as_of=t(20)))
        assert inv.manufacturer_of(ESME) == "Itron"


# ---- the verified hot path ----------------------------------------------------------------------------------


def test_a_verified_message_is_never_taken_for_an_unsigned_copy_of_another_id() -> None:
    """Only an unsigned message's id carries the mark of the digest of its bytes (the pipeline marks it when the
    XML signature does not verify): a verified event is never the unsigned twin of a signed key, so the engine
    does not look for one on the verified path (with an unsigned inline message forwarded within the retention,
    the usual state, that look-up cost every verified AD1 ~0.5 µs of its ~5.5 µs in the engine)."""
    eng = standard_world()
    eng.handle(dataclasses.replace(outage(200, mid="ad1-u"), message_id=unsigned_id("ad1-u", 7), verified=False,
                                   digest=7))  # fmt: skip
    assert eng._unsigned_inline  # (an unsigned inline message forwarded: the index is not empty)
    first = dataclasses.replace(outage(210, mid="ad1-1"), digest=D1)
    eng.handle(first)
    # an id carrying the mark of its own digest, verified: the pipeline never makes one
    odd = dataclasses.replace(outage(220, mid="x"), message_id=unsigned_id("ad1-1", D1), digest=D1)
    out = eng.handle(odd)
    assert not [e for e in out if isinstance(e, Duplicate)]
    assert [d.message_id for d in decisions(out)] == [odd.message_id]
