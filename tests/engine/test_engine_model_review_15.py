"""Defects the model-based test (tests/engine/test_engine_model.py) found once it covered the inventory's learning,
operator releases, the prune budget and restorations whose device clock is unreliable; each pinned here."""

from __future__ import annotations

import pytest
from engine_support import (
    MemoryScope,
    decisions,
    decisions_restored_at_every_cut,
    final,
    learned,
    outage,
    request,
    response,
    restored,
    run,
    tick,
    unlinked,
)

from gateway.engine import Engine, EngineConfig
from gateway.engine.events import Event
from gateway.inventory import Inventory, InventoryRegistry, InventoryRow

ESME_A, ESME_B, ESME_C = 0x00DB0000000000A1, 0x00DB0000000000B1, 0x00DB0000000000C1
HUB_1, HUB_2, HUB_3 = 0x00DB0000000000A2, 0x00DB0000000000C2, 0x00DB0000000000E2
MPAN_A, MPAN_B, MPAN_C = "1000000000012", "2000000000024", "3000000000036"


def _snapshot() -> InventoryRegistry:
    """A on hub 1, B on hub 2, C on hub 3, each with its own MPAN: the inventory the gateway runs with."""
    rows = [
        InventoryRow(ESME_A, HUB_1, MPAN_A, "Landis+Gyr"),
        InventoryRow(ESME_B, HUB_2, MPAN_B, "Landis+Gyr"),
        InventoryRow(ESME_C, HUB_3, MPAN_C, "Landis+Gyr"),
    ]
    return InventoryRegistry(Inventory.from_rows(rows))


def _world() -> Engine:
    return Engine(EngineConfig(), MemoryScope([ESME_A, ESME_B, ESME_C]), _snapshot())


def test_an_ad1_joined_to_several_learned_esmes_names_them_in_the_same_order_after_a_restore() -> None:
    # C then A learn the MPAN of B's meter, then C then A move behind B's hub (8.2 responses): the hub's and the
    # MPAN's ESMEs are now B, C and A, in the inventory in the order the links were learned, and after a restore
    # in the order the restore re-applied them. An AD1 of the hub (and of the MPAN) was decided with its ESMEs,
    # its kept and held records and its evidence in that order: the same AD1 gave another decision (audit) once
    # the gateway had restarted. They are in EUI order now
    events = [
        learned(-120, esme=ESME_C, ch=None, mpan=MPAN_B, time=-121, mid="inv-c-mpan"),
        learned(-110, esme=ESME_A, ch=None, mpan=MPAN_B, time=-111, mid="inv-a-mpan"),
        request(0, esme=ESME_B, counter=7, mid="req-b"),  # an activation of B pending: the AD1s are held
        outage(1, arrival=2, ch=0x00DB0000000000F2, mpan=MPAN_B, mid="ad1-by-mpan"),
        learned(3, esme=ESME_C, ch=HUB_2, mpan=None, time=2, mid="inv-c-hub"),
        learned(4, esme=ESME_A, ch=HUB_2, mpan=None, time=3, mid="inv-a-hub"),
        outage(5, arrival=6, ch=HUB_2, mpan=None, mid="ad1-by-hub"),
    ]
    whole = decisions(run(_world(), events))
    assert [(d.message_id, d.action.value, d.esmes) for d in whole] == [
        ("ad1-by-mpan", "hold", (ESME_A, ESME_B, ESME_C)),
        ("ad1-by-hub", "hold", (ESME_A, ESME_B, ESME_C)),
    ]
    for cut, got in enumerate(decisions_restored_at_every_cut(events, _world, _snapshot)):
        assert got == whole, f"restored after event {cut}: {[(d.message_id, d.esmes) for d in got]}"


def _hub_of_a(neighbour: bool) -> InventoryRegistry:
    """A (in scope) on hub 1 with its MPAN, and maybe B (out of scope) beside it."""
    rows = [InventoryRow(ESME_A, HUB_1, MPAN_A, "Landis+Gyr")]
    if neighbour:
        rows.append(InventoryRow(ESME_B, HUB_1, MPAN_B, "Other"))
    return InventoryRegistry(Inventory.from_rows(rows))


@pytest.mark.parametrize(("neighbour", "released_as"), [(False, "ch-unknown"), (True, "out-of-scope")])
def test_the_meters_own_restoration_that_waited_for_its_ad1_released_forward_after_a_decommissioning_is_forwarded(
    neighbour: bool, released_as: str
) -> None:
    # A's first activation (window 0..30.5) suppresses the reboot's AD1 (outage at 25). A second command is pending
    # when a second AD1 of the hub (outage at 31, outside that window) comes: held. A's own restoration, interrupted
    # at 30, is nearer to it than to the reboot's: it waits for it. The meter is then decommissioned (its links end):
    # at its time-out the held AD1 joins no ESME in scope and is forwarded (ch-unknown, or out-of-scope beside an
    # ESME out of scope), and kept as a forwarded outage so that the restoration that waited for it reaches the DNO
    # too (ENGINE.md §6). It was kept under the ESMEs of its release only (none in scope, and not A): A's
    # restoration, no longer related to it through A nor through A's (ended) hub, was paired with the reboot's AD1
    # and suppressed, while the DNO had the second outage open. The record is kept under the ESMEs it was held for
    # too
    def world() -> Engine:
        return Engine(EngineConfig(), MemoryScope([ESME_A]), _hub_of_a(neighbour))

    events: list[Event] = [
        request(0, esme=ESME_A, counter=1, mid="req-1"),
        response(0.5, esme=ESME_A, counter=1, mid="rsp-1"),
        outage(25, arrival=28.5, ch=HUB_1, mpan=MPAN_A, mid="ad1-reboot"),
        request(31, esme=ESME_A, counter=2, mid="req-2"),
        outage(31, arrival=32, ch=HUB_1, mpan=MPAN_A, mid="ad1-second"),
        restored(30, arrival=33, esme=ESME_A, mid="rst"),
        unlinked(34, esme=ESME_A, time=33.5, ch=HUB_1, mpan=MPAN_A, mid="decommissioned"),
        tick(50),
    ]
    whole = decisions(run(world(), events))
    assert final(whole) == {
        "ad1-reboot": ("suppress", "activation-window"),
        "ad1-second": ("forward", released_as),
        "rst": ("forward", "not-paired"),  # ("suppress", "restoration-paired") before
    }
    [rst] = [d for d in whole if d.message_id == "rst" and d.action.value == "release-forward"]
    assert [(e.role, e.message_id) for e in rst.evidence] == [("forwarded-outage", "ad1-second")]
    # and so after a restart at any point, and for the same restoration arriving after the release
    for cut, got in enumerate(decisions_restored_at_every_cut(events, world, lambda: _hub_of_a(neighbour))):
        assert got == whole, f"restored after event {cut}"
    later = [e for e in events if getattr(e, "message_id", None) != "rst"]
    after = decisions(run(world(), [*later, restored(30, arrival=51, esme=ESME_A, mid="rst")]))
    assert final(after)["rst"] == ("forward", "not-paired")
