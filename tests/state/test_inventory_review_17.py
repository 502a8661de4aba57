"""Second review of the seventeenth session's inventory CSV (``Inventory.save_csv`` / ``import_inventory_csv``): the
times of an export's rows.

A time the inventory keeps is read back as an aware date-time whenever the engine asks about it (``learned``,
``hub_end``). The import took any number for ``learned_at`` (``inf``, ``nan``, ``1e18``) and any finite number for
the new ``comms_hub_learned_at`` / ``mpxn_learned_at`` columns and ``hub-end`` rows (``1e18``, year 31,688,740,476):
the file loaded without a rejected row, and then every 8.2 response about that meter (or naming that hub) made the
engine raise (``OverflowError`` / ``OSError``: no date-time is that far), so the DSP's message was answered 503 and
re-delivered to fail again, and the meter's link was never learned. Such a cell is now rejected as the bad number it
is (``bad_learned_at``; ``bad_hub_end`` for a hub's end), the row left out as any rejected row is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.engine import Engine, EngineConfig, Observed
from gateway.inventory import InventoryRegistry, import_inventory_csv
from gbcs.eui import format_eui
from tests.engine.engine_support import CH, ESME, OTHER_CH, OTHER_ESME, MemoryScope, learned

EXPORT_HEADER = (
    "esme,comms_hub,mpxn,manufacturer,model,origin,learned_fields,learned_at,comms_hub_learned_at,mpxn_learned_at,"
    "comms_hub_ended_by"
)
OLD_EXPORT_HEADER = "esme,comms_hub,mpxn,manufacturer,model,origin,learned_fields,learned_at"
OUT_OF_RANGE = ["1e18", "-1e18", "inf", "-inf", "nan", "1e400"]


def _observe_8_2(inventory_csv: Path, hub: int) -> list[object]:
    """The engine on the inventory loaded from ``inventory_csv``: what it makes of a verified 8.2 response putting
    ESME on ``hub`` (raises when the inventory cannot answer)."""
    inv, _report = import_inventory_csv(inventory_csv)
    engine = Engine(EngineConfig(), MemoryScope([ESME, OTHER_ESME]), InventoryRegistry(inv))
    return list(engine.handle(learned(2, esme=ESME, ch=hub, mpan=None, time=2)))


@pytest.mark.parametrize("bad", OUT_OF_RANGE)
def test_a_learned_at_no_date_time_can_hold_is_rejected_and_the_next_8_2_of_the_meter_is_learned(
    tmp_path: Path, bad: str
) -> None:
    """An export written before the per-link columns: ``learned_at`` is the time of each learned link. Was: taken,
    and the 8.2 that follows raised in the engine."""
    f = tmp_path / "old-export.csv"
    f.write_text(
        f"{OLD_EXPORT_HEADER}\n{format_eui(ESME)},{format_eui(CH)},,,,learned,ch,{bad}\n"
        f"{format_eui(OTHER_ESME)},{format_eui(OTHER_CH)},,,,learned,ch,1700000000.25\n"
    )
    inv, report = import_inventory_csv(f)
    assert report.rejected_by_reason == {"bad_learned_at": 1}, report.rejected
    assert ESME not in inv and inv.ch_for_esme(OTHER_ESME) == OTHER_CH
    assert any(isinstance(e, Observed) and e.used for e in _observe_8_2(f, OTHER_CH))


@pytest.mark.parametrize("column", ["learned_at", "comms_hub_learned_at", "mpxn_learned_at"])
@pytest.mark.parametrize("bad", OUT_OF_RANGE)
def test_a_link_time_no_date_time_can_hold_is_rejected_in_every_time_column_of_an_export(
    tmp_path: Path, column: str, bad: str
) -> None:
    """Was: ``comms_hub_learned_at`` / ``mpxn_learned_at`` refused ``inf`` and ``nan`` but took ``1e18``, and
    ``learned_at`` took all of them."""
    times = {"learned_at": "1700000000.5", "comms_hub_learned_at": "1700000000.5", "mpxn_learned_at": ""}
    times[column] = bad
    f = tmp_path / "export.csv"
    f.write_text(
        f"{EXPORT_HEADER}\n"
        f"{format_eui(ESME)},{format_eui(CH)},,,,learned,ch mpan,"
        f"{times['learned_at']},{times['comms_hub_learned_at']},{times['mpxn_learned_at']},\n"
        f"{format_eui(OTHER_ESME)},{format_eui(OTHER_CH)},,,,snapshot,,,,,\n"  # a good row: the import stands
    )
    inv, report = import_inventory_csv(f)
    # the row is left out for its time cell, and only for that (any other rejection of the row is not this)
    assert report.rejected_by_reason == {"bad_learned_at": 1}, report.rejected
    [rejected] = report.rejected
    assert rejected["row"] == 2 and column in rejected["detail"] and repr(bad) in rejected["detail"], rejected
    assert ESME not in inv and inv.ch_for_esme(OTHER_ESME) == OTHER_CH


@pytest.mark.parametrize("bad", OUT_OF_RANGE)
def test_a_hub_end_no_date_time_can_hold_is_rejected_and_the_next_8_2_naming_that_hub_is_learned(
    tmp_path: Path, bad: str
) -> None:
    """Was: ``1e18`` taken as the hub's end (``inf`` / ``nan`` were refused), and every 8.2 naming that hub raised in
    the engine."""
    f = tmp_path / "export.csv"
    f.write_text(
        f"{EXPORT_HEADER}\n{format_eui(OTHER_ESME)},{format_eui(OTHER_CH)},,,,snapshot,,,,,\n"
        f",{format_eui(CH)},,,,hub-end,,{bad},,,\n"
    )
    inv, report = import_inventory_csv(f)
    assert report.rejected_by_reason == {"bad_hub_end": 1}, report.rejected
    assert report.hub_ends == 0 and inv.hub_end(CH) is None
    seen = _observe_8_2(f, CH)
    assert any(isinstance(e, Observed) and e.used for e in seen), seen


def test_the_earliest_and_latest_times_a_date_time_holds_load_and_export_exactly(tmp_path: Path) -> None:
    """The bound is the date-time's own (years 1 to 9999), not a narrower one: such times, and a hub's end at
    them, load, answer as date-times and export unchanged."""
    earliest, latest = "-62135596800.0", "253402300799.0"
    f = tmp_path / "export.csv"
    f.write_text(
        f"{EXPORT_HEADER}\n"
        f"{format_eui(ESME)},{format_eui(CH)},,,,learned,ch,{latest},{latest},,\n"
        f"{format_eui(OTHER_ESME)},{format_eui(OTHER_CH)},,,,learned,ch,{earliest},{earliest},,\n"
        f",{format_eui(CH)},,,,hub-end,,{earliest},,,\n"
    )
    inv, report = import_inventory_csv(f)
    assert report.rejected_count == 0, report.rejected
    assert inv.hub_end(CH) is not None and inv.hub_end(CH).year == 1  # type: ignore[union-attr]
    assert inv.learned(ESME) is not None and inv.learned(OTHER_ESME) is not None
    again = tmp_path / "again.csv"
    inv.save_csv(again)
    assert again.read_text() == f.read_text()
