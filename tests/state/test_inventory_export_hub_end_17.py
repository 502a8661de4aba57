"""The inventory's CSV export (``Inventory.save_csv``, ``duisgw inventory import --out``) reloads to the state it
was taken from: a link ended by a Comms Hub's end, the time of each learned link, and the hubs' ends.

Since cd27deb a learned Comms Hub link ended by a hub's end names the hub (``LearnedLink.ch_ended_by``) and keeps
the time of the link evidence it ended, and each hub's end is kept per hub (docs/ENGINE.md §3). The export wrote
one time per row (``learned_at``: the latest of the row's evidence) and neither the hub nor the hubs' ends, so
such a row reloaded as a removal of the meter's own link at that time, and no hub had an end:

- an 8.2 older than the hub's end naming that hub (one that had been in flight) linked the meter to the
  decommissioned hub again after the reload, where the live inventory keeps it off ("its Comms Hub ... ended");
  an AD1 of that hub during the meter's firmware activation was then suppressed after the reload and forwarded
  ``ch-unknown`` before it;
- an 8.2 saying the meter had moved to another hub before its hub ended, older than the row's ``learned_at``
  (an MPxN learned after the hub link) but newer than the hub link it ended, was stale after the reload: the meter
  stayed without a hub, and an AD1 of its new hub during its activation was forwarded ``ch-unknown`` instead of
  suppressed.

Each test builds the state through the engine (the events the gateway learns from), exports it, reloads it, and
compares the inventory's answers and the decisions the engine takes on what comes next with the live one's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.engine import Decision, Engine, EngineConfig, Event, Observed
from gateway.engine.events import DEVICE_REMOVED, HUB_DECOMMISSIONED
from gateway.inventory import Inventory, InventoryRegistry, InventoryRow, import_inventory_csv
from gbcs.eui import format_eui
from tests.engine.engine_support import (
    CH,
    ESME,
    MPAN,
    OTHER_CH,
    OTHER_ESME,
    MemoryScope,
    learned,
    outage,
    request,
    response,
    t,
    unlinked,
)

H, H2 = CH, OTHER_CH
SPARE_HUB = 0x00DB1234567893A2  # a hub removed from the inventory with no ESME known behind it
HEADER = "esme,comms_hub,mpxn,manufacturer,model,origin,learned_fields,learned_at"


def _snapshot(*, meter_on: int | None = H) -> Inventory:
    """OTHER_ESME on H2; the meter M (ESME) on ``meter_on`` (None: not in the snapshot), without an MPxN so that
    an AD1 joins it through its Comms Hub only."""
    rows = [InventoryRow(OTHER_ESME, H2, None, "Landis+Gyr", "E470")]
    if meter_on is not None:
        rows.append(InventoryRow(ESME, meter_on, None, "Landis+Gyr", "E470"))
    return Inventory.from_rows(rows)


def _engine(inventory: Inventory) -> Engine:
    return Engine(EngineConfig(), MemoryScope([ESME, OTHER_ESME]), InventoryRegistry(inventory))


def _feed(engine: Engine, events: list[Event]) -> list[object]:
    """Each event's outcome: the decision's (disposition, reason) or the observation's (used, note)."""
    seen: list[object] = []
    for event in events:
        for effect in engine.handle(event):
            if isinstance(effect, Decision):
                seen.append((effect.message_id, effect.disposition, effect.reason.value))
            elif isinstance(effect, Observed):
                seen.append((effect.message_id, effect.used, effect.note))
    return seen


def _answers(inv: Inventory) -> tuple[object, ...]:
    """What the engine reads of the inventory: each ESME's links and learned state, each hub's ESMEs and end."""
    return (
        sorted(inv.learned_links(), key=lambda link: link.esme),
        sorted(inv.hub_ends()),
        list(inv.snapshot_rows()),
        tuple(inv.learned(e) for e in (ESME, OTHER_ESME)),
        tuple(inv.ch_for_esme(e) for e in (ESME, OTHER_ESME)),
        tuple(tuple(sorted(inv.esmes_for_ch(h))) for h in (H, H2, SPARE_HUB)),
        tuple(inv.hub_end(h) for h in (H, H2, SPARE_HUB)),
    )


def _exported(engine: Engine, tmp_path: Path, name: str = "export.csv") -> tuple[Engine, Path]:
    """The engine's inventory saved to CSV and loaded back, under a fresh engine."""
    out = tmp_path / name
    engine.inventory.current.save_csv(out)  # type: ignore[attr-defined]
    back, report = Inventory.load_csv(out)
    assert report.rejected_count == 0, report.rejected
    return _engine(back), out


def _end_hub(at: float, hub: int, time: float, change: str = HUB_DECOMMISSIONED) -> Event:
    return unlinked(at, esme=hub, time=time, ch=None, mpan=None, change=change, mid=f"end-{hub:X}-{time}")


def _activation_then_ad1(hub: int, mid: str) -> list[Event]:
    """M's firmware activation (CS06 request and its success), then an AD1 of ``hub`` within its window."""
    return [
        request(100, mid=f"req-{mid}"),
        response(101, mid=f"rsp-{mid}"),
        outage(101.5, ch=hub, mpan=None, mid=mid),
    ]


def test_an_8_2_older_than_the_hubs_end_does_not_link_the_meter_to_that_hub_again_after_the_export_is_reloaded(
    tmp_path: Path,
) -> None:
    """M learned on H from an 8.2 of 10; H decommissioned at 30; exported and reloaded. A late 8.2 of 20 naming H
    (in flight when H ended) leaves M without a hub, live as after the reload, and an AD1 of H during M's
    activation is forwarded ``ch-unknown`` by both. Was: after the reload the row was M's own link removed at
    10 and H had no end, so the 8.2 of 20 linked M to H again and the AD1 was suppressed."""
    live = _engine(_snapshot(meter_on=None))
    _feed(live, [learned(11, esme=ESME, ch=H, mpan=None, time=10, mid="inv-10"), _end_hub(31, H, 30)])
    reloaded, out = _exported(live, tmp_path)
    assert _answers(reloaded.inventory.current) == _answers(live.inventory.current)  # type: ignore[attr-defined]
    state = reloaded.inventory.learned(ESME)
    assert state is not None and (state.ended, state.ch_ended_by, state.ch_time) == (("ch",), H, t(10))
    assert f"{format_eui(H)}" in out.read_text()  # the ended link names its hub in the file

    late = [learned(40, esme=ESME, ch=H, mpan=None, time=20, mid="inv-20"), *_activation_then_ad1(H, "ad1-h")]
    outcomes = _feed(live, late)
    assert _feed(reloaded, late) == outcomes
    assert outcomes[0] == (
        "inv-20", True, f"its Comms Hub {H:016X} ended at {t(30).isoformat()}, not before this evidence: not linked to it"
    )  # fmt: skip
    assert outcomes[-1] == ("ad1-h", "forward", "ch-unknown")
    assert reloaded.inventory.ch_for_esme(ESME) is None


def test_a_meter_moved_off_its_hub_before_the_hub_ended_is_linked_to_its_new_hub_after_the_export_is_reloaded(
    tmp_path: Path,
) -> None:
    """M on H (an 8.2 of 10), its MPxN learned from an 8.2 of 25, H decommissioned at 30; exported and reloaded.
    An 8.2 of 20 saying M is on H2 (it moved before H ended) links M to H2, live as after the reload, and an AD1
    of H2 during M's activation is suppressed by both. Was: the reloaded row was M's own link removed at 25 (the
    row's one time, its MPxN's), so the 8.2 of 20 was stale and the AD1 forwarded ``ch-unknown``."""
    live = _engine(_snapshot(meter_on=None))
    _feed(
        live,
        [
            learned(11, esme=ESME, ch=H, mpan=None, time=10, mid="inv-10"),
            learned(26, esme=ESME, ch=None, mpan=MPAN, time=25, mid="inv-25"),
            _end_hub(31, H, 30),
        ],
    )
    reloaded, _out = _exported(live, tmp_path)
    assert _answers(reloaded.inventory.current) == _answers(live.inventory.current)  # type: ignore[attr-defined]

    moved = [
        learned(40, esme=ESME, ch=H2, mpan=None, time=20, mid="inv-20"),
        *_activation_then_ad1(H2, "ad1-h2"),
    ]
    outcomes = _feed(live, moved)
    assert _feed(reloaded, moved) == outcomes
    assert outcomes[0] == ("inv-20", True, "learned")
    assert outcomes[-1] == ("ad1-h2", "suppress", "activation-window")
    assert _answers(reloaded.inventory.current) == _answers(live.inventory.current)  # type: ignore[attr-defined]


@pytest.mark.parametrize("meter_on", [H, None], ids=["snapshot-link", "learned-link"])
def test_every_fact_of_the_learned_inventory_survives_the_export_and_the_next_events_are_decided_alike(
    tmp_path: Path, meter_on: int | None
) -> None:
    """A mix: M's snapshot link (or one learned at 10) ended by H's end at 30; OTHER_ESME decommissioned at 35 (a
    removal, no hub); a hub with no ESME behind it removed from the inventory at 32. After the export and reload
    the inventory answers the same and the engine decides the same on every one of a set of later 8.2s and AD1s
    (older and newer than each end, naming each hub)."""
    live = _engine(_snapshot(meter_on=meter_on))
    before = [] if meter_on is not None else [learned(11, esme=ESME, ch=H, mpan=None, time=10, mid="inv-10")]
    _feed(
        live,
        [
            *before,
            _end_hub(31, H, 30),
            _end_hub(33, SPARE_HUB, 32, change=DEVICE_REMOVED),
            unlinked(36, esme=OTHER_ESME, time=35, ch=None, mpan=None, mid="removed-35"),
        ],
    )
    reloaded, _out = _exported(live, tmp_path)
    assert _answers(reloaded.inventory.current) == _answers(live.inventory.current)  # type: ignore[attr-defined]
    later = [
        learned(
            50, esme=OTHER_ESME, ch=SPARE_HUB, mpan=None, time=31, mid="o-spare-31"
        ),  # older than that end
        learned(51, esme=OTHER_ESME, ch=H, mpan=None, time=34, mid="o-h-34"),  # older than the removal
        learned(
            52, esme=ESME, ch=H2, mpan=None, time=5, mid="m-h2-5"
        ),  # older than M's link (learned) or newer
        learned(53, esme=ESME, ch=H, mpan=None, time=29, mid="m-h-29"),  # older than H's end
        *_activation_then_ad1(H, "ad1-h"),
        learned(
            110, esme=ESME, ch=H, mpan=None, time=60, mid="m-h-60"
        ),  # H re-commissioned: newer than its end
        learned(111, esme=OTHER_ESME, ch=SPARE_HUB, mpan=None, time=61, mid="o-spare-61"),
        request(120, counter=1002, mid="req-2"),
        response(121, counter=1002, mid="rsp-2"),
        outage(121.5, ch=H, mpan=None, mid="ad1-h-again"),
    ]
    outcomes = _feed(live, later)
    assert _feed(reloaded, later) == outcomes
    assert _answers(reloaded.inventory.current) == _answers(live.inventory.current)  # type: ignore[attr-defined]
    assert outcomes[-1] == ("ad1-h-again", "suppress", "activation-window")


def test_an_export_of_an_export_is_the_same_file(tmp_path: Path) -> None:
    """``duisgw inventory import EXPORT --out AGAIN`` writes the same bytes: nothing is lost or added on the way,
    and the report counts the hubs' ends it read."""
    live = _engine(_snapshot())
    _feed(live, [learned(26, esme=ESME, ch=None, mpan=MPAN, time=25, mid="inv-25"), _end_hub(31, H, 30)])
    _reloaded, out = _exported(live, tmp_path)
    again = tmp_path / "again.csv"
    assert main(["inventory", "import", str(out), "--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    back, report = import_inventory_csv(again)
    assert (report.hub_ends, report.learned, report.rejected_count) == (1, 1, 0)
    assert back.hub_end(H) == t(30)


def test_an_export_written_before_the_new_columns_loads_as_it_did(tmp_path: Path) -> None:
    """An export without ``comms_hub_learned_at``, ``mpxn_learned_at`` and ``comms_hub_ended_by`` (an earlier
    version's) loads as before: each learned link at the row's ``learned_at``, an ended Comms Hub link a removal
    (no hub), no hub's end."""
    old = tmp_path / "old.csv"
    old.write_text(
        f"{HEADER}\n"
        f"{format_eui(ESME)},,{MPAN},Landis+Gyr,E470,learned,ch mpan,{t(25).timestamp()!r}\n"
        f"{format_eui(OTHER_ESME)},{format_eui(H2)},,Landis+Gyr,E470,snapshot,,\n"
    )
    inv, report = import_inventory_csv(old)
    assert (report.rejected_count, report.learned, report.hub_ends) == (0, 1, 0)
    [link] = inv.learned_links()
    assert (link.ch, link.ch_at, link.mpan, link.mpan_at, link.ended, link.ch_ended_by) == (
        None, t(25).timestamp(), MPAN, t(25).timestamp(), ("ch",), None
    )  # fmt: skip
    assert list(inv.hub_ends()) == []


def test_unusable_values_in_the_new_columns_reject_their_row(tmp_path: Path) -> None:
    """A hub that is not an EUI-64, a hub named for a link that is not ended, a time that is not a number, a hub's
    end without a hub or a time: the row is rejected with a named reason, the others load."""
    at = repr(t(30).timestamp())
    header = f"{HEADER},comms_hub_learned_at,mpxn_learned_at,comms_hub_ended_by"
    text = "\n".join(
        [
            header,
            f"{format_eui(ESME)},,,,,learned,ch,{at},,,not-an-eui",
            f"{format_eui(OTHER_ESME)},{format_eui(H2)},,,,learned,ch,{at},{at},,{format_eui(H)}",
            f"00-DB-12-34-56-78-94-A0,,,,,learned,ch,{at},soon,,",
            f",{format_eui(H)},,,,hub-end,,,,,",
            f",,,,,hub-end,,{at},,,",
            f"00-DB-12-34-56-78-95-A0,{format_eui(H)},,,,snapshot,,,,,",
        ]
    )
    src = tmp_path / "bad.csv"
    src.write_text(text + "\n")
    inv, report = import_inventory_csv(src)
    assert [(r["row"], r["reason"]) for r in report.rejected] == [
        (2, "bad_comms_hub_ended_by"),
        (3, "bad_comms_hub_ended_by"),
        (4, "bad_learned_at"),
        (5, "bad_hub_end"),
        (6, "bad_hub_end"),
    ]
    assert len(inv) == 1 and list(inv.hub_ends()) == []


def test_the_cli_report_of_an_export_counts_its_hub_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = _engine(_snapshot())
    _feed(live, [_end_hub(31, H, 30), _end_hub(33, SPARE_HUB, 32, change=DEVICE_REMOVED)])
    _reloaded, out = _exported(live, tmp_path)
    capsys.readouterr()
    assert main(["inventory", "import", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    # (a device removed from the inventory gets its own row without links as well: the engine ends its own links)
    rows = len(live.inventory.current)  # type: ignore[attr-defined]
    assert (report["accepted"], report["hub_ends"], report["rejected_count"]) == (rows, 2, 0)
