"""``duisgw guids`` and ``duisgw inventory`` sub-commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xlsxwriter

from gateway.cli import main
from gateway.guids import GuidSet
from gbcs.eui import format_eui

A = 0x001BC50000000001
B = 0x70B3D5FFEE000002
E1, CH1 = 0x00DB1234567890A0, 0x00DB1234567890A2


def _xlsx(path: Path) -> Path:
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Other")
    ws.write(0, 0, "nothing here")
    ws = wb.add_worksheet("MP102B")
    ws.write_column(0, 1, ["Title", "", "ESME GUID", format_eui(A), "bad", f"{B:016x}", format_eui(A)])
    wb.close()
    return path


def test_guids_import_prints_a_json_report_and_writes_the_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _xlsx(tmp_path / "list.xlsx")
    out = tmp_path / "guids.bin"
    rc = main(["guids", "import", str(src), "--sheet", "MP102B", "--column", "esme guid", "--out", str(out)])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["accepted"] == 3 and report["unique"] == 2 and report["duplicates"] == 1
    assert report["rejected"] == [
        {"row": 5, "reason": "bad_eui", "detail": report["rejected"][0]["detail"], "sheet": "MP102B"}
    ]
    assert report["sheets"][0]["column"] == "B" and report["sheets"][0]["header_row"] == 3
    assert report["seconds"] >= 0 and report["out"] == str(out)
    assert set(GuidSet.load(out)) == {A, B}


def test_guids_check_answers_per_eui_with_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "guids.bin"
    assert main(["guids", "import", str(_xlsx(tmp_path / "l.xlsx")), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["guids", "check", str(out), format_eui(A).lower()]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["in_list"] == {format_eui(A): True} and answer["size"] == 2
    assert main(["guids", "check", str(out), format_eui(A), "00-00-00-00-00-00-00-01"]) == 1
    assert json.loads(capsys.readouterr().out)["in_list"]["00-00-00-00-00-00-00-01"] is False
    assert main(["guids", "check", str(out), "zz"]) == 2
    assert "not an EUI-64" in capsys.readouterr().err
    # a source file can be checked directly too
    assert main(["guids", "check", str(tmp_path / "l.xlsx"), format_eui(B)]) == 0


def test_guids_import_of_an_unusable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guids", "import", str(tmp_path / "missing.xlsx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("duisgw guids import: guid_import: no such file") and err.count("\n") == 1


def test_inventory_import_and_lookups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "inv.csv"
    src.write_text(
        "ESME,CH,MPAN,Manufacturer\n"
        f"{format_eui(E1)},{format_eui(CH1)},1234567890126,Landis+Gyr\n"
        f"{format_eui(E1 + 1)},{format_eui(CH1)},1234567890135,Landis+Gyr\n"
        "bad,bad,bad,bad\n"
    )
    assert main(["inventory", "import", str(src), "--out", str(tmp_path / "norm.csv")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accepted"] == 2 and report["rejected"][0]["row"] == 4
    assert (tmp_path / "norm.csv").read_text().startswith("esme,comms_hub,mpxn")

    assert main(["inventory", "lookup", str(src), "--ch", f"{CH1:016x}"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert sorted(e["esme"] for e in found["esmes"]) == [format_eui(E1), format_eui(E1 + 1)]
    assert main(["inventory", "lookup", str(src), "--mpan", "1234567890135"]) == 0
    assert json.loads(capsys.readouterr().out)["esmes"][0]["esme"] == format_eui(E1 + 1)
    assert main(["inventory", "lookup", str(src), "--esme", format_eui(E1)]) == 0
    assert json.loads(capsys.readouterr().out)["manufacturer"] == "Landis+Gyr"
    assert main(["inventory", "lookup", str(src), "--esme", "00-00-00-00-00-00-00-09"]) == 1
    assert json.loads(capsys.readouterr().out)["found"] is False
    assert main(["inventory", "lookup", str(src), "--ch", "nope"]) == 2
