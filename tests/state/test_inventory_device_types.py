"""An inventory export listing several device types (8.2 Read Inventory's ``DeviceType``): only ESME rows
are meters; the others are skipped and counted per type, an unknown type is refused by name, and a file
without a device-type column is read as before (every row an ESME)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.inventory import InventoryImportError, import_inventory_csv
from gateway.mpan import with_check_digit
from gbcs.eui import format_eui

# DCC Boxed RTDS premises: ESME ...A0, GSME ...A1, CHF ...A2 (docs/DOMAIN.md section 6); a GPF and a PPMID
ESME, GSME, CHF, GPF, PPMID = (0x00DB1234567890A0 + i for i in range(5))
E2, CH2 = 0x00DB1234567890B0, 0x00DB1234567890B2
MPAN, MPAN2, MPRN = "1234567890126", "1234567890135", "1234567890"


def _csv(tmp_path: Path, text: str, name: str = "inv.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _export(*extra: str) -> str:
    """One premises as an 8.2-style export lists it: every device on the Comms Hub, with its type."""
    return (
        "Device ID,Device Type,Comms Hub,MPxN,Manufacturer\n"
        f"{format_eui(ESME)},ESME,{format_eui(CHF)},{MPAN},Landis+Gyr\n"  # row 2
        f"{format_eui(GSME)},GSME,{format_eui(CHF)},{MPRN},Landis+Gyr\n"  # row 3: an MPRN, a gas meter
        f"{format_eui(CHF)},CHF,{format_eui(CHF)},,Toshiba\n"  # row 4: the hub on itself
        f"{format_eui(GPF)},GPF,{format_eui(CHF)},,Toshiba\n"  # row 5
        f"{format_eui(PPMID)},PPMID,{format_eui(CHF)},,Chameleon\n"  # row 6
        f"{format_eui(E2)},esme,{format_eui(CH2)},{MPAN2},Secure\n"  # row 7: the type in another case
        f"{format_eui(E2 + 1)},Gsme,{format_eui(CH2)},{MPRN},Secure\n"  # row 8
    ) + "".join(extra)


def test_only_the_esme_rows_of_a_multi_type_export_are_imported_and_the_others_counted_per_type(
    tmp_path: Path,
) -> None:
    inv, report = import_inventory_csv(_csv(tmp_path, _export()))
    assert report.columns["esme"] == "Device ID" and report.columns["device_type"] == "Device Type"
    assert report.accepted == 2 and report.rejected_count == 0 and report.rows_read == 7
    assert report.skipped == 5
    assert report.skipped_by_type == {"GSME": 2, "CHF": 1, "GPF": 1, "PPMID": 1}
    # one warning per type, at its first row; the GSME's MPRN is no longer judged as an ESME's MPAN
    assert [(w["row"], w["reason"]) for w in report.warnings] == [
        (3, "skipped_device_type"),
        (4, "skipped_device_type"),
        (5, "skipped_device_type"),
        (6, "skipped_device_type"),
    ]
    assert report.warnings[0]["detail"] == (
        "2 rows of device type GSME (the first at this row) skipped: only ESMEs are meters"
    )
    for device in (GSME, CHF, GPF, PPMID, E2 + 1):
        assert device not in inv
    assert inv.esmes_for_ch(CHF) == (ESME,)  # the hub's AD1 joins its ESME only, not the hub itself
    assert inv.esmes_for_mpan(MPRN) == ()
    assert inv.esmes_for_ch(CH2) == (E2,) and inv.mpan_for_esme(E2) == MPAN2
    assert inv.manufacturer_of(ESME) == "Landis+Gyr"
    assert report.as_dict()["skipped_by_type"] == {"CHF": 1, "GPF": 1, "GSME": 2, "PPMID": 1}


def test_device_type_values_are_read_whatever_their_case_and_spacing_beside_an_esme_column(
    tmp_path: Path,
) -> None:
    text = "ESME,CH,MPAN,DeviceType\n" + "".join(
        f"{format_eui(ESME + i)},{format_eui(CHF)},{with_check_digit(str(123456789000 + i))},{t}\n"
        for i, t in enumerate((" ESME ", "Esme", "hcalcs", "Ihd", "CAD", "sapc", "chf"))
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text))
    assert report.accepted == 2 and sorted(inv.esmes_for_ch(CHF)) == [ESME, ESME + 1]
    assert report.skipped_by_type == {"HCALCS": 1, "IHD": 1, "CAD": 1, "SAPC": 1, "CHF": 1}
    assert report.rejected_count == 0


def test_a_row_of_an_unknown_or_blank_device_type_is_refused_by_name(tmp_path: Path) -> None:
    text = _export(
        f"{format_eui(E2 + 2)},Electricity Meter,{format_eui(CH2)},{MPAN2}\n",  # row 9
        f"{format_eui(E2 + 3)},,{format_eui(CH2)},{MPAN2}\n",  # row 10
        ",,,,\n",  # row 11: blank
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text))
    assert [(r["row"], r["reason"]) for r in report.rejected] == [
        (9, "unknown_device_type"),
        (10, "missing_device_type"),
    ]
    assert report.rejected[0]["detail"] == (
        "device type 'Electricity Meter' is none of ESME, GSME, GPF, CHF, HCALCS, PPMID, IHD, CAD, SAPC"
    )
    assert report.blank == 1 and report.accepted == 2
    assert E2 + 2 not in inv and E2 + 3 not in inv


def test_rows_of_other_device_types_count_toward_no_rejection_limit(tmp_path: Path) -> None:
    # the rejection limit judges the ESME rows: 1 bad of 3 is 33 %, however many gas meters are listed
    gas = "".join(f"{format_eui(GSME + 0x100 * i)},GSME,{format_eui(CHF)},{MPRN}\n" for i in range(1, 30))
    _, report = import_inventory_csv(_csv(tmp_path, _export(gas, f"serial-1,ESME,{format_eui(CH2)},\n")))
    assert report.rejected_count == 1 and report.skipped == 34
    with pytest.raises(
        InventoryImportError, match=r"1 of 3 non-blank rows \(not counting 34 skipped\) rejected"
    ):
        report.check_rejected(0.25, "[pipeline] max_rejected_fraction")
    report.check_rejected(0.5, "[pipeline] max_rejected_fraction")


def test_an_export_without_an_esme_is_refused_saying_which_devices_it_lists(tmp_path: Path) -> None:
    text = (
        "DeviceID,DeviceType,CommsHubDeviceID,MPxN\n"
        f"{format_eui(GSME)},GSME,{format_eui(CHF)},{MPRN}\n"
        f"{format_eui(CHF)},CHF,{format_eui(CHF)},\n"
    )
    with pytest.raises(
        InventoryImportError,
        match=r"no ESME accepted \(2 rows read, 0 blank, 0 rejected, 2 skipped as not "
        r"ESMEs: CHF 1, GSME 1\)",
    ):
        import_inventory_csv(_csv(tmp_path, text))


def test_two_columns_naming_the_device_type_are_an_error(tmp_path: Path) -> None:
    text = f"esme,ch,mpan,Device Type,DeviceType\n{format_eui(ESME)},{format_eui(CHF)},{MPAN},ESME,GSME\n"
    with pytest.raises(
        InventoryImportError, match=r"columns 4 \('Device Type'\) and 5 \('DeviceType'\) both"
    ):
        import_inventory_csv(_csv(tmp_path, text))
    text = f"Device ID,Device EUI,Device Type,ch,mpan\n{format_eui(ESME)},{format_eui(E2)},ESME,,\n"
    with pytest.raises(InventoryImportError, match=r"columns 1 \('Device ID'\) and 2 \('Device EUI'\) both"):
        import_inventory_csv(_csv(tmp_path, text, "ids.csv"))


def test_without_a_device_type_column_every_row_is_an_esme_and_a_device_id_column_is_not_read(
    tmp_path: Path,
) -> None:
    # a guard for the files of today: no device-type column, so nothing is skipped; "Device ID" (here a
    # second identifier) is no ESME column unless a device-type column says what each row is
    text = (
        "ESME,Device ID,CH,MPAN,Type\n"
        f"{format_eui(ESME)},{format_eui(E2)},{format_eui(CHF)},{MPAN},Credit\n"
        f"{format_eui(GSME)},{format_eui(E2 + 1)},{format_eui(CHF)},{MPRN},Prepayment\n"
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text))
    assert report.columns == {"esme": "ESME", "comms_hub": "CH", "mpxn": "MPAN"}
    assert report.accepted == 2 and report.skipped == 0 and report.skipped_by_type == {}
    assert sorted(inv.esmes_for_ch(CHF)) == [ESME, GSME]
    assert [w["reason"] for w in report.warnings] == ["mpxn_not_mpan"]
    with pytest.raises(InventoryImportError, match="does not name esme"):
        import_inventory_csv(_csv(tmp_path, f"Device ID,CH,MPAN\n{format_eui(ESME)},,\n", "ids.csv"))


def test_the_inventory_cli_reports_the_rows_skipped_per_device_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _csv(tmp_path, _export(f"{format_eui(E2 + 2)},Meter,{format_eui(CH2)},{MPAN2}\n"))
    assert main(["inventory", "import", str(src), "--out", str(tmp_path / "norm.csv")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accepted"] == 2 and report["skipped"] == 5
    assert report["skipped_by_type"] == {"CHF": 1, "GPF": 1, "GSME": 2, "PPMID": 1}
    assert report["rejected_by_reason"] == {"unknown_device_type": 1}
    assert [w["reason"] for w in report["warnings"]] == ["skipped_device_type"] * 4
    # the normalised export holds the meters only (and reads back with every row an ESME)
    inv, again = import_inventory_csv(tmp_path / "norm.csv")
    assert sorted(inv.esmes_for_ch(CHF) + inv.esmes_for_ch(CH2)) == [ESME, E2] and again.skipped == 0
    assert main(["inventory", "lookup", str(src), "--esme", format_eui(GSME)]) == 1
    assert json.loads(capsys.readouterr().out)["found"] is False
