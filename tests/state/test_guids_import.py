"""Importing the MP102B GUID list from workbooks, csv and text files."""

from __future__ import annotations

import codecs
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import xlsxwriter
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.guids import GuidImportError, fast_parse_eui, import_guids
from gbcs.eui import EUIError, format_eui, parse_eui

ESME = 0x00DB1234567890A0
A = 0x001BC50000000001
B = 0x70B3D5FFEE000002
C = 0x0012345678901234  # all decimal digits: Excel turns it into a number unless stored as text


def _workbook(
    path: Path, sheets: dict[str, list[list[object]]], numbers: bool = True, hidden: Sequence[str] = ()
) -> Path:
    wb = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False})
    for name, rows in sheets.items():
        ws = wb.add_worksheet(name)
        if name in hidden:
            ws.hide()
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                if cell is None:
                    continue
                if isinstance(cell, (int, float)) and not isinstance(cell, bool) and numbers:
                    ws.write_number(r, c, cell)
                elif isinstance(cell, bool):
                    ws.write_boolean(r, c, cell)
                else:
                    ws.write_string(r, c, str(cell))
    wb.close()
    return path


def test_xlsx_with_title_rows_messy_spellings_blank_rows_and_bad_rows(tmp_path: Path) -> None:
    rows: list[list[object]] = [
        ["Landis+Gyr affected ESME list"],
        ["generated for SEC MP102B"],
        [],
        ["Serial", "Device ID", "Notes"],
        ["S1", "00-DB-12-34-56-78-90-A0", "hyphenated"],
        ["S2", "001bc50000000001", "bare lower"],
        [],
        ["S3", "  70:b3:d5:ff:ee:00:00:02  ", "colons, padded"],
        ["S4", "00-DB-12-34-56-78-90", "too short"],
        ["S5", "00DB1234567890A0", "duplicate of row 5"],
        ["S6", "not an eui", "junk"],
        ["S7", "00-db-12-34-56-78-90-a0", "duplicate, lower case"],
    ]
    path = _workbook(tmp_path / "guids.xlsx", {"List": rows})
    guids, report = import_guids(path)

    assert set(guids) == {ESME, A, B}
    assert report.sheets[0].header_row == 4
    assert report.sheets[0].column == "B"
    assert report.sheets[0].header == "Device ID"
    assert report.rows_read == 8
    assert report.blank == 1
    assert report.accepted == 5
    assert report.duplicates == 2
    assert report.unique == 3
    assert [(r.row, r.reason, r.sheet) for r in report.rejected] == [
        (9, "bad_eui", "List"),
        (11, "bad_eui", "List"),
    ]
    assert report.rejected_count == 2


def test_second_sheet_chosen_by_name(tmp_path: Path) -> None:
    path = _workbook(
        tmp_path / "two.xlsx",
        {
            "Readme": [["This workbook lists affected meters"]],
            "Affected": [["GUID"], [format_eui(A)], [format_eui(B)]],
            "Excluded": [["GUID"], [format_eui(ESME)]],
        },
    )
    guids, report = import_guids(path, sheets=["Affected"])
    assert set(guids) == {A, B}
    assert [s.name for s in report.sheets] == ["Affected"]


def test_default_reads_every_sheet_with_an_eui_column_and_lists_the_skipped_ones(tmp_path: Path) -> None:
    # a 1.4 M-row list cannot fit one Excel sheet (1,048,576 rows): continuation sheets are read too
    path = _workbook(
        tmp_path / "multi.xlsx",
        {
            "Readme": [["This workbook lists affected meters"]],
            "Part 1": [["EUI"], [format_eui(A)]],
            "Part 2": [["EUI"], [format_eui(B)]],
            "Blank": [],
        },
    )
    guids, report = import_guids(path)
    assert set(guids) == {A, B}
    assert [s.name for s in report.sheets] == ["Part 1", "Part 2"]
    assert {s["name"]: s["reason"] for s in report.sheets_skipped} == {
        "Readme": "no EUI column found",
        "Blank": "empty sheet",
    }


def test_missing_sheet_name_is_an_import_error(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "one.xlsx", {"Sheet1": [["GUID"], [format_eui(A)]]})
    with pytest.raises(GuidImportError, match="no sheet named 'Nope'"):
        import_guids(path, sheets=["Nope"])


def test_column_chosen_by_header_name_or_letter(tmp_path: Path) -> None:
    rows: list[list[object]] = [
        ["ESME", "Replacement ESME"],
        [format_eui(A), format_eui(B)],
        [format_eui(ESME), format_eui(C)],
    ]
    path = _workbook(tmp_path / "cols.xlsx", {"S": rows})
    by_name, rep = import_guids(path, column="replacement esme")
    assert set(by_name) == {B, C}
    assert rep.sheets[0].column == "B"
    by_letter, _ = import_guids(path, column="A")
    assert set(by_letter) == {A, ESME}
    with pytest.raises(GuidImportError, match="no header cell named"):
        import_guids(path, column="Serial Number")


def test_column_detected_by_content_when_no_header_names_it(tmp_path: Path) -> None:
    rows: list[list[object]] = [
        ["Ref", "Identifier"],
        ["x1", format_eui(A)],
        ["x2", format_eui(B)],
    ]
    guids, report = import_guids(_workbook(tmp_path / "content.xlsx", {"S": rows}))
    assert set(guids) == {A, B}
    assert report.sheets[0].header == "Identifier"
    assert report.sheets[0].header_row == 1


def test_numeric_cells_are_rejected_by_default_with_the_reason(tmp_path: Path) -> None:
    rows: list[list[object]] = [["GUID"], [format_eui(A)], [12345678901234], [1234567890123456], [True]]
    path = _workbook(tmp_path / "num.xlsx", {"S": rows})
    guids, report = import_guids(path)
    assert set(guids) == {A}
    assert [(r.row, r.reason) for r in report.rejected] == [
        (3, "numeric_cell"),
        (4, "numeric_cell"),
        (5, "not_text"),
    ]
    assert "Text" in report.rejected[0].detail


def test_numeric_recovery_restores_exact_values_and_refuses_precision_loss(tmp_path: Path) -> None:
    rows: list[list[object]] = [["GUID"], [12345678901234], [1234567890123456], [12.5], ["0012345678901234"]]
    path = _workbook(tmp_path / "num.xlsx", {"S": rows})
    guids, report = import_guids(path, numeric_cells="recover")
    # 12345678901234 is "0012345678901234" with its leading zeros gone: 16 hex digits again
    assert set(guids) == {C}
    assert report.numeric_recovered == 1
    assert report.duplicates == 1
    assert [(r.row, r.reason) for r in report.rejected] == [(3, "numeric_precision"), (4, "numeric_cell")]


def test_csv_with_sniffed_semicolon_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "meter;ESME GUID;site\n"
        f"m1;{format_eui(A)};x\n"
        ";;\n"
        f"m2;{f'{B:016x}'};y\n"
        "m3;00-DB-12-34-56-78-90-ZZ;z\n"
        f"m4;{format_eui(A).lower()};w\n",
        encoding="utf-8-sig",
    )
    guids, report = import_guids(path)
    assert set(guids) == {A, B}
    assert report.sheets[0].header == "ESME GUID"
    assert report.blank == 1
    assert report.duplicates == 1
    assert [(r.row, r.reason) for r in report.rejected] == [(5, "bad_eui")]


def test_csv_with_excels_sep_line_uses_the_delimiter_it_declares(tmp_path: Path) -> None:
    # "sep=;" is how Excel is told (and itself writes) a csv's delimiter: the sniffer took that line for
    # a record, chose the comma of a note, and every row came in as one cell: the list was refused
    path = tmp_path / "list.csv"
    path.write_bytes(
        (
            "sep=;\r\n"
            "Serial;ESME GUID;Note\r\n"
            f"s1;{format_eui(A)};fitted, not commissioned\r\n"
            f"s2;{B:016x};\r\n"
            "s3;00-DB-12-34-56-78-90-ZZ;typo\r\n"
        ).encode("utf-8-sig")
    )
    guids, report = import_guids(path)
    assert set(guids) == {A, B}
    assert (report.sheets[0].header_row, report.sheets[0].header) == (2, "ESME GUID")
    assert [(r.row, r.reason) for r in report.rejected] == [(5, "bad_eui")]


def test_text_file_with_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(
        f"# MP102B list\n{format_eui(A)}\n\n   {f'{B:016X}'}   # second\nnonsense\n{format_eui(A)}\n"
    )
    guids, report = import_guids(path)
    assert set(guids) == {A, B}
    assert report.rows_read == 6
    assert report.blank == 2
    assert report.duplicates == 1
    assert [(r.row, r.reason) for r in report.rejected] == [(5, "bad_eui")]


def test_rejects_beyond_the_listing_limit_are_still_counted(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(f"bad{i}" for i in range(30)) + f"\n{format_eui(A)}\n")
    guids, report = import_guids(path, max_rejects=5)
    assert set(guids) == {A}
    assert report.rejected_count == 30
    assert len(report.rejected) == 5
    assert report.rejected_by_reason == {"bad_eui": 30}


def test_sheet_without_any_eui_is_an_import_error(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "none.xlsx", {"S": [["Name"], ["x"], ["y"]]})
    with pytest.raises(GuidImportError, match="no sheet has an EUI column"):
        import_guids(path)
    with pytest.raises(GuidImportError, match="no such file"):
        import_guids(tmp_path / "missing.xlsx")


def test_progress_is_reported_with_the_total(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("\n".join(f"{i:016X}" for i in range(120_000)))
    calls: list[tuple[int, int | None]] = []
    guids, _ = import_guids(path, progress=lambda done, total: calls.append((done, total)))
    assert len(guids) == 120_000
    assert calls[-1] == (120_000, 120_000)
    done = [c[0] for c in calls]
    assert done == sorted(done) and len(done) >= 3  # every ~50,000 rows, then the end
    assert all(total == 120_000 for _, total in calls)


_octets = st.lists(st.integers(0, 255), min_size=8, max_size=8)


@st.composite
def _spelled(draw: st.DrawFn) -> tuple[int, str]:
    octets = draw(_octets)
    value = int.from_bytes(bytes(octets), "big")
    hexes = [f"{o:02x}" for o in octets]
    hexes = [h.upper() if draw(st.booleans()) else h for h in hexes]
    sep = draw(st.sampled_from(["", "-", ":", " ", "."]))
    text = sep.join(hexes)
    if draw(st.booleans()):
        text = "0x" + text if sep == "" else text
    pad = draw(st.sampled_from(["", " ", "\t", "  "]))
    return value, pad + text + pad[::-1]


@settings(max_examples=200, deadline=None)
@given(_spelled())
def test_fast_parse_agrees_with_parse_eui_for_every_spelling(case: tuple[int, str]) -> None:
    value, text = case
    assert fast_parse_eui(text) == value
    assert parse_eui(text) == value


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_fast_parse_rejects_exactly_what_parse_eui_rejects(text: str) -> None:
    try:
        expected: int | None = parse_eui(text)
    except EUIError:
        expected = None
    try:
        got: int | None = fast_parse_eui(text)
    except EUIError:
        got = None
    assert got == expected


@settings(max_examples=25, deadline=None)
@given(st.lists(_spelled(), min_size=1, max_size=20))
def test_workbook_of_spellings_imports_to_the_same_set(
    tmp_path_factory: pytest.TempPathFactory, cases: list[tuple[int, str]]
) -> None:
    path = _workbook(tmp_path_factory.mktemp("h") / "h.xlsx", {"S": [["GUID"]] + [[t] for _, t in cases]})
    guids, report = import_guids(path)
    assert set(guids) == {v for v, _ in cases}
    assert report.rejected_count == 0
    assert report.duplicates == len(cases) - len({v for v, _ in cases})


def test_title_mentioning_guids_does_not_take_the_place_of_the_header_row(tmp_path: Path) -> None:
    rows: list[list[object]] = [
        ["MP102B GUID list (Landis+Gyr)"],
        [],
        ["Device ID", "Serial"],
        [format_eui(A), "s1"],
        [format_eui(B), "s2"],
    ]
    guids, report = import_guids(_workbook(tmp_path / "title.xlsx", {"S": rows}))
    assert set(guids) == {A, B}
    assert report.sheets[0].header_row == 3
    assert report.rejected_count == 0


def test_named_column_of_numbers_is_still_found_so_its_cells_are_reported(tmp_path: Path) -> None:
    rows: list[list[object]] = [["Ref", "GUID"], ["r1", 12345678901234], ["r2", 2345678901234]]
    path = _workbook(tmp_path / "numbers.xlsx", {"S": rows})
    # reject mode: nothing parses, but the column is found and the error explains the rows
    with pytest.raises(
        GuidImportError, match=r"2 rejected: numeric_cell 2; first: sheet 'S' row 2: numeric_cell"
    ):
        import_guids(path)
    guids, report = import_guids(path, numeric_cells="recover")
    assert set(guids) == {0x0012345678901234, 0x0002345678901234}
    assert report.sheets[0].column == "B"


_cell_text = st.one_of(
    _spelled().map(lambda case: case[1]),
    st.text(alphabet="0123456789abcdefABCDEF-: .\t\n_xX+", max_size=26),
    st.text(max_size=26),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_cell_text, min_size=1, max_size=40))
def test_chunked_fast_path_accepts_and_rejects_exactly_like_parse_eui(cells: list[str]) -> None:
    from gateway.guids import ImportReport, SheetReport, _Collector

    report = ImportReport(source="t", format="test", max_rejects=1000)
    collector = _Collector(report, "reject", None)
    collector.run(
        [[c] for c in cells],
        col=0,
        first_row_number=1,
        sheet=SheetReport("t", None, "A", None),
        sheet_name=None,
    )
    guids = collector.build()

    expected: set[int] = set()
    bad_rows: list[int] = []
    for row, cell in enumerate(cells, 1):
        if not cell.strip():
            continue
        try:
            expected.add(parse_eui(cell))
        except EUIError:
            bad_rows.append(row)
    assert set(guids) == expected
    assert [r.row for r in report.rejected] == bad_rows


def test_cell_holding_two_euis_on_two_lines_is_rejected_not_split(tmp_path: Path) -> None:
    rows: list[list[object]] = [["GUID"], [format_eui(A)], [f"{format_eui(B)}\n{format_eui(ESME)}"]]
    guids, report = import_guids(_workbook(tmp_path / "nl.xlsx", {"S": rows}))
    assert set(guids) == {A}
    assert [(r.row, r.reason) for r in report.rejected] == [(3, "bad_eui")]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["0x", "0X"]),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=21),
)
def test_fast_parse_refuses_a_0x_prefix_on_fewer_than_16_hex_digits_like_parse_eui(
    prefix: str, digits: str
) -> None:
    # "0x" + 14 hex digits is 16 characters: int(text, 16) takes the prefix, so a truncated EUI was read
    # as another device's EUI (the inventory import uses this parser for every ESME and Comms Hub)
    text = prefix + digits
    try:
        expected: int | None = parse_eui(text)
    except EUIError:
        expected = None
    try:
        got: int | None = fast_parse_eui(text)
    except EUIError:
        got = None
    assert got == expected
    assert (got is not None) == (len(digits) == 16)


def _rewrite_member(path: Path, member: str, change: Callable[[bytes], bytes]) -> Path:
    """The workbook with one zip member's bytes changed (a valid zip around a damaged part)."""
    out = path.with_name("damaged-" + path.name)
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info, change(data) if info.filename == member else data)
    return out


def test_a_workbook_whose_sheet_is_damaged_is_an_import_error_naming_the_sheet(tmp_path: Path) -> None:
    rows: list[list[object]] = [["GUID"]] + [[f"{i:016X}"] for i in range(1, 400)]
    good = _workbook(tmp_path / "list.xlsx", {"Affected": rows})
    # the sheet's XML cut in the middle of an element: calamine raised its own XmlError while the rows
    # were read, which escaped as an unknown exception (serve's reload handler and the CLI let it through)
    damaged = _rewrite_member(good, "xl/worksheets/sheet1.xml", lambda xml: xml[: len(xml) // 2])
    with pytest.raises(GuidImportError, match=r"damaged-list\.xlsx\[Affected\]: damaged workbook"):
        import_guids(damaged)
    strings = _rewrite_member(good, "xl/sharedStrings.xml", lambda xml: xml.replace(b"<si>", b"<si", 1))
    with pytest.raises(GuidImportError, match=r"damaged-list\.xlsx"):
        import_guids(strings)


def test_a_truncated_workbook_and_a_csv_named_xlsx_are_import_errors(tmp_path: Path) -> None:
    good = _workbook(tmp_path / "list.xlsx", {"S": [["GUID"], [format_eui(A)]]})
    data = good.read_bytes()
    for cut in (0, 100, len(data) // 2, len(data) - 10):
        truncated = tmp_path / f"cut{cut}.xlsx"
        truncated.write_bytes(data[:cut])
        with pytest.raises(GuidImportError, match=rf"cut{cut}\.xlsx: not a readable workbook"):
            import_guids(truncated)
    renamed = tmp_path / "really-a.csv.xlsx"
    renamed.write_text(f"GUID\n{format_eui(A)}\n", encoding="utf-8")
    with pytest.raises(GuidImportError, match="not a readable workbook"):
        import_guids(renamed)


def test_a_column_letter_names_the_column_excel_shows_when_the_sheet_starts_to_the_right(
    tmp_path: Path,
) -> None:
    # column A left empty (a margin): calamine's rows start at the first used column (B), so the letter
    # "C" was read as the sheet's fourth used column (E) and the EUIs of another column, or none, came in
    rows: list[list[object]] = [
        [None, "Comms Hub", "ESME", "Notes", "Replacement"],
        [None, format_eui(ESME), format_eui(A), "x", format_eui(C)],
        [None, format_eui(C), format_eui(B), "y", format_eui(ESME)],
    ]
    path = _workbook(
        tmp_path / "margin.xlsx", {"S": rows, "T": [[None, None, "ESME"], [None, None, format_eui(C)]]}
    )
    guids, report = import_guids(path, column="C")
    assert set(guids) == {A, B, C}
    assert [(s.name, s.column, s.header) for s in report.sheets] == [("S", "C", "ESME"), ("T", "C", "ESME")]
    hubs, report = import_guids(path, column="B", sheets=["S"])
    assert set(hubs) == {ESME, C} and report.sheets[0].column == "B"
    # a letter left of a sheet's used cells names an empty column there: that sheet gives nothing
    _, report = import_guids(path, column="B")
    assert [s.name for s in report.sheets] == ["S"]
    assert report.sheets_skipped == [{"name": "T", "reason": "column B is empty"}]
    with pytest.raises(GuidImportError, match=r"column B is empty in sheet 'T'"):
        import_guids(path, column="B", sheets=["T"])


def test_hidden_sheets_are_not_read_unless_named(tmp_path: Path) -> None:
    # a hidden sheet (last year's list, a scratch copy, meters taken off the list) is not what the
    # operator sees in Excel: it was merged into the list and suppressed AD1s of meters not affected
    path = _workbook(
        tmp_path / "hidden.xlsx",
        {"Affected": [["GUID"], [format_eui(A)]], "Removed": [["GUID"], [format_eui(ESME)]]},
        hidden=["Removed"],
    )
    guids, report = import_guids(path)
    assert set(guids) == {A}
    assert report.sheets_skipped == [{"name": "Removed", "reason": "hidden sheet (name it to read it)"}]
    named, report = import_guids(path, sheets=["Affected", "Removed"])
    assert set(named) == {A, ESME} and [s.name for s in report.sheets] == ["Affected", "Removed"]


def test_a_comms_hub_column_is_never_taken_for_the_guid_column(tmp_path: Path) -> None:
    # the ESME column has a number among its first cells (an all-digit EUI Excel stored as a number),
    # so the hub column had more text EUIs below its header and won: the list became Comms Hub EUIs
    rows: list[list[object]] = [
        ["ESME GUID", "Comms Hub GUID"],
        [12345678901234, format_eui(ESME)],
        [format_eui(A), format_eui(C)],
        [format_eui(B), format_eui(ESME + 1)],
    ]
    guids, report = import_guids(_workbook(tmp_path / "two.xlsx", {"S": rows}))
    assert set(guids) == {A, B}
    assert (report.sheets[0].column, report.sheets[0].header) == ("A", "ESME GUID")
    assert [(r.row, r.reason) for r in report.rejected] == [(2, "numeric_cell")]
    # a sheet whose only EUI column is a hub's (by name) has no GUID column, whatever its content
    hubs_only: list[list[object]] = [["Serial", "CH EUI"], ["s1", format_eui(C)], ["s2", format_eui(ESME)]]
    path = _workbook(tmp_path / "hubs.xlsx", {"Hubs": hubs_only, "List": [["GUID"], [format_eui(A)]]})
    guids, report = import_guids(path)
    assert set(guids) == {A}
    assert report.sheets_skipped == [{"name": "Hubs", "reason": "no EUI column found"}]


def test_two_columns_that_could_each_be_the_guid_column_are_an_error_naming_both(tmp_path: Path) -> None:
    # which one is the list cannot be known: the first one from the left was taken silently
    named: list[list[object]] = [
        ["ESME ID", "Device ID"],
        [format_eui(A), format_eui(B)],
        [format_eui(C), format_eui(ESME)],
    ]
    with pytest.raises(GuidImportError, match=r"columns A \('ESME ID'\) and B \('Device ID'\) could each be"):
        import_guids(_workbook(tmp_path / "named.xlsx", {"S": named}))
    unnamed: list[list[object]] = [
        ["x", "y"],
        [format_eui(A), format_eui(B)],
        [format_eui(C), format_eui(ESME)],
    ]
    with pytest.raises(GuidImportError, match=r"columns A \('x'\) and B \('y'\) could each be"):
        import_guids(_workbook(tmp_path / "unnamed.xlsx", {"S": unnamed}))
    guids, _ = import_guids(_workbook(tmp_path / "named2.xlsx", {"S": named}), column="Device ID")
    assert set(guids) == {B, ESME}


def test_a_named_column_skips_sheets_without_any_eui_but_not_sheets_of_euis_without_it(
    tmp_path: Path,
) -> None:
    # a "Readme" sheet made a named column (serve's guid_column) fail the whole workbook
    sheets: dict[str, list[list[object]]] = {
        "Readme": [["Affected meters for MP102B"], ["see the other sheets"]],
        "Part 1": [["Serial", "ESME GUID"], ["s1", format_eui(A)]],
        "Part 2": [["Serial", "ESME GUID"], ["s2", format_eui(B)]],
    }
    guids, report = import_guids(_workbook(tmp_path / "readme.xlsx", sheets), column="ESME GUID")
    assert set(guids) == {A, B}
    assert report.sheets_skipped == [{"name": "Readme", "reason": "no EUI column found"}]
    # a sheet that does hold EUIs under another header is not skipped: half a list is an error
    sheets["Part 2"] = [["Serial", "ESME GUlD"], ["s2", format_eui(B)]]
    with pytest.raises(GuidImportError, match=r"\[Part 2\]: no header cell named 'ESME GUID'"):
        import_guids(_workbook(tmp_path / "typo.xlsx", sheets), column="ESME GUID")


def test_a_header_name_that_is_also_column_letters_is_judged_as_a_header_in_every_sheet(
    tmp_path: Path,
) -> None:
    # guid_column = "EUI" is a header name, but also the letters of column EUI: in a sheet without that
    # header it was read as the (empty) far-right column EUI, and the sheet was skipped with its EUIs,
    # so the import succeeded with part of the list where "ESME EUI" made it an error
    sheets: dict[str, list[list[object]]] = {
        "Readme": [["Affected meters for MP102B"]],
        "Part 1": [["Serial", "EUI"], ["s1", format_eui(A)]],
        "Part 2": [["Serial", "ESME EUI"], ["s2", format_eui(B)]],
    }
    with pytest.raises(GuidImportError, match=r"\[Part 2\]: no header cell named 'EUI'"):
        import_guids(_workbook(tmp_path / "eui.xlsx", sheets), column="EUI")
    sheets["Part 2"] = [["s2", format_eui(B)]]  # a continuation sheet without a header row
    with pytest.raises(GuidImportError, match=r"\[Part 2\]: no header cell named 'eui'"):
        import_guids(_workbook(tmp_path / "cont.xlsx", sheets), column="eui")
    sheets["Part 2"] = [["Serial", "EUI"], ["s2", format_eui(B)]]
    guids, report = import_guids(_workbook(tmp_path / "ok.xlsx", sheets), column="EUI")
    assert set(guids) == {A, B}
    assert report.sheets_skipped == [{"name": "Readme", "reason": "no EUI column found"}]


def _with_bom(text: str, encoding: str) -> bytes:
    """``text`` encoded with its byte-order mark first (as Excel and Notepad write Unicode text)."""
    boms = {
        "utf-16-le": codecs.BOM_UTF16_LE,
        "utf-16-be": codecs.BOM_UTF16_BE,
        "utf-32-le": codecs.BOM_UTF32_LE,
    }
    return boms[encoding] + text.encode(encoding)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_a_unicode_text_export_is_decoded_by_its_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    # Excel's "Unicode Text" is UTF-16 with a byte-order mark, tab-separated: it was decoded as
    # Windows-1252, every row was rejected, and the empty list that came out was accepted
    path = tmp_path / "unicode.csv"
    path.write_bytes(
        _with_bom(f"Serial\tESME GUID\r\ns1\t{format_eui(A)}\r\ns2\t{format_eui(B)}\r\n", encoding)
    )
    guids, report = import_guids(path)
    assert set(guids) == {A, B} and report.rejected_count == 0
    text = tmp_path / "unicode.txt"
    text.write_bytes(_with_bom(f"{format_eui(A)}\r\n{format_eui(B)}\r\n", encoding))
    guids, report = import_guids(text)
    assert set(guids) == {A, B} and report.rejected_count == 0


def test_a_windows_1252_csv_with_crlf_line_ends_imports(tmp_path: Path) -> None:
    path = tmp_path / "cp1252.csv"
    path.write_bytes(
        f"GUID;Site\r\n{format_eui(A)};Caf\xe9 \xa3\r\n{format_eui(B)};\x80 \x93x\x94\r\n".encode("latin-1")
    )
    guids, report = import_guids(path)
    assert set(guids) == {A, B} and report.rejected_count == 0 and report.rows_read == 2


def test_a_text_file_that_is_not_text_is_an_import_error(tmp_path: Path) -> None:
    # UTF-16 without a byte-order mark, or another binary file: half its bytes are NUL
    path = tmp_path / "nobom.csv"
    path.write_bytes(f"GUID\r\n{format_eui(A)}\r\n".encode("utf-16-le"))
    with pytest.raises(GuidImportError, match=r"nobom\.csv: not a text file \(NUL bytes"):
        import_guids(path)
    # a workbook saved under a .csv name
    book = _workbook(tmp_path / "book.xlsx", {"S": [["GUID"], [format_eui(A)]]})
    misnamed = tmp_path / "book.csv"
    misnamed.write_bytes(book.read_bytes())
    with pytest.raises(GuidImportError, match=r"book\.csv: a workbook \(zip\), not text"):
        import_guids(misnamed)


def test_an_unclosed_quote_in_a_large_csv_is_an_import_error_naming_the_line(tmp_path: Path) -> None:
    # the rest of the file became one field, over the csv module's field limit: its csv.Error escaped
    # past serve's reload handler and the CLI
    rows = [f"{i:016X},ok" for i in range(1, 8000)]
    rows[2] = f'{rows[2][:16]},"unclosed note'
    path = tmp_path / "quote.csv"
    path.write_text("GUID,Note\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(GuidImportError, match=r"quote\.csv: line \d+: field larger than field limit"):
        import_guids(path)


def test_csv_rows_are_numbered_by_line_and_records_spanning_lines_are_reported(tmp_path: Path) -> None:
    # a note holding a line break is legal csv, but it shifted every later row number by one; an
    # unclosed quote swallowed the rows after it with no trace in the report
    path = tmp_path / "notes.csv"
    path.write_text(
        "GUID,Note\n"  # line 1
        f'{format_eui(A)},"two\nlines"\n'  # lines 2-3
        "bad,x\n"  # line 4
        f"{format_eui(B)},'tis the season\n"  # line 5: an apostrophe must not open a quote
        f"{format_eui(C)},fine\n"  # line 6
        f'{format_eui(ESME)},"never closed\n'  # line 7
        f"{format_eui(ESME + 1)},swallowed\n"  # line 8
        f"{format_eui(ESME + 2)},swallowed\n",  # line 9
        encoding="utf-8",
    )
    guids, report = import_guids(path)
    assert set(guids) == {A, B, C, ESME}
    assert [(r.row, r.reason) for r in report.rejected] == [(4, "bad_eui")]
    assert [(w["row"], w["reason"]) for w in report.warnings] == [
        (2, "multiline_record"),
        (7, "multiline_record"),
    ]
    assert "lines 7-9" in report.warnings[1]["detail"]


def test_a_source_that_yields_no_eui_is_an_import_error_saying_why(tmp_path: Path) -> None:
    # an empty list stops all suppression: it came out, without error, of a column of numbers, a column
    # of blanks (a wrong letter), or a text file of something else
    numbers: list[list[object]] = [["GUID"], [12345678901234], [2345678901234]]
    with pytest.raises(
        GuidImportError,
        match=r"nums\.xlsx: no EUI accepted \(2 rows read, 0 blank, 2 rejected: numeric_cell 2; first: "
        r"sheet 'S' row 2: numeric_cell: cell holds the number 12345678901234",
    ):
        import_guids(_workbook(tmp_path / "nums.xlsx", {"S": numbers}))
    blanks: list[list[object]] = [
        ["GUID", "Serial", "Other"],
        [format_eui(A), "s1", None],
        [format_eui(B), "s2", None],
    ]
    with pytest.raises(GuidImportError, match=r"no EUI accepted \(2 rows read, 2 blank, 0 rejected\)"):
        import_guids(_workbook(tmp_path / "blank.xlsx", {"S": blanks}), column="C")
    text = tmp_path / "list.txt"
    text.write_text("# nothing but comments\n\n", encoding="utf-8")
    with pytest.raises(GuidImportError, match=r"list\.txt: no EUI accepted"):
        import_guids(text)
    # a header and no row below it is a deliberately empty list
    header = tmp_path / "header.csv"
    header.write_text("ESME GUID\n", encoding="utf-8")
    guids, report = import_guids(header)
    assert len(guids) == 0 and report.rows_read == 0


def test_a_source_that_changes_while_it_is_read_is_an_import_error(tmp_path: Path) -> None:
    # an operator copying the new list over the old one while a reload reads it: what was read is part
    # of one file, part of another (a truncated csv is a shorter list, not an error)
    path = tmp_path / "list.csv"
    path.write_text("GUID\n" + "".join(f"{i:016X}\n" for i in range(1, 1000)), encoding="utf-8")

    def copy_goes_on(done: int, total: int | None) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{0xFFFF00 + done:016X}\n")

    with pytest.raises(GuidImportError, match=r"list\.csv: changed while it was being read"):
        import_guids(path, progress=copy_goes_on)


def _without_cached_values(path: Path) -> Path:
    """The workbook as a tool that writes formulas but never calculates them saves it (no <v>)."""
    return _rewrite_member(
        path, "xl/worksheets/sheet1.xml", lambda xml: re.sub(rb"(</f>)<v>[^<]*</v>", rb"\1", xml)
    )


def test_excel_error_cells_and_uncalculated_formulas_are_rejected_not_counted_as_blank(
    tmp_path: Path,
) -> None:
    # python-calamine reads #N/A, #REF! and a formula with no calculated value as an empty string:
    # those meters left the list as "blank" rows, with no row number anywhere
    path = tmp_path / "formulas.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("List")
    ws.write_string(0, 1, "Serial")
    ws.write_string(0, 2, "ESME GUID")
    for r, (serial, cell) in enumerate(
        [
            ("s1", format_eui(A)),
            ("s2", "=NA()"),
            ("s3", "=#REF!"),
            ("s4", None),
            ("s5", f'="{format_eui(B)}"'),
        ],
        1,
    ):
        ws.write_string(r, 1, serial)
        if cell is None:
            continue
        if cell.startswith("="):
            value = "#N/A" if "NA" in cell else "#REF!" if "REF" in cell else format_eui(B)
            ws.write_formula(r, 2, cell, None, value)
        else:
            ws.write_string(r, 2, cell)
    ws.write_string(6, 1, "see row 2")
    wb.close()
    guids, report = import_guids(path)
    assert set(guids) == {A, B}
    assert [(r.row, r.reason, r.sheet) for r in report.rejected] == [
        (3, "error_cell", "List"),
        (4, "error_cell", "List"),
    ]
    assert "C3" in report.rejected[0].detail and "#N/A" in report.rejected[0].detail
    assert "#REF!" in report.rejected[1].detail
    assert report.blank == 2  # rows 5 and 7: really empty

    uncalculated = _without_cached_values(path)
    guids, report = import_guids(uncalculated)
    assert set(guids) == {A}
    assert [(r.row, r.reason) for r in report.rejected] == [
        (3, "formula_without_value"),
        (4, "formula_without_value"),
        (6, "formula_without_value"),
    ]
    assert "C6" in report.rejected[2].detail and "calculated" in report.rejected[2].detail


def _prefixed_sheet_xml(xml: bytes) -> bytes:
    """The sheet as the .NET Open XML SDK writes it: SpreadsheetML under the prefix ``x:`` and, as XML
    allows, attributes in single quotes."""
    main = b'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    assert main in xml
    xml = xml.replace(main, main.replace(b"xmlns=", b"xmlns:x="))
    xml = re.sub(rb"<(/?)(?![?!])([A-Za-z]+[\s/>])", rb"<\1x:\2", xml)
    return re.sub(rb'\b(r|t|s)="([^"]*)"', rb"\1='\2'", xml)


def test_error_cells_and_uncalculated_formulas_are_found_in_prefixed_sheet_xml(tmp_path: Path) -> None:
    # a sheet written with a namespace prefix (<x:c r="C3" t="e"><x:f>...) or single-quoted attributes
    # was not recognised by the second look: its #N/A and #REF! cells, and formulas with no value,
    # were counted as blank, and those meters left the list with no row number anywhere
    path = tmp_path / "formulas.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("List")
    ws.write_string(0, 1, "Serial")
    ws.write_string(0, 2, "ESME GUID")
    ws.write_string(1, 2, format_eui(A))
    ws.write_formula(2, 2, "=NA()", None, "#N/A")
    ws.write_formula(3, 2, "=#REF!", None, "#REF!")
    ws.write_string(4, 1, "s4")  # C5 really empty
    ws.write_formula(5, 2, f'="{format_eui(B)}"', None, format_eui(B))
    wb.close()
    prefixed = _rewrite_member(path, "xl/worksheets/sheet1.xml", _prefixed_sheet_xml)
    with zipfile.ZipFile(prefixed) as z:
        assert b"<x:c r='C3' t='e'><x:f>" in z.read("xl/worksheets/sheet1.xml")
    guids, report = import_guids(prefixed)
    assert set(guids) == {A, B}
    assert [(r.row, r.reason) for r in report.rejected] == [(3, "error_cell"), (4, "error_cell")]
    assert "C3" in report.rejected[0].detail and "#N/A" in report.rejected[0].detail
    assert report.blank == 1 and not report.warnings

    uncalculated = _rewrite_member(
        prefixed, "xl/worksheets/sheet1.xml", lambda xml: re.sub(rb"(</x:f>)<x:v>[^<]*</x:v>", rb"\1", xml)
    )
    guids, report = import_guids(uncalculated)
    assert set(guids) == {A}
    assert [(r.row, r.reason) for r in report.rejected] == [
        (3, "formula_without_value"),
        (4, "formula_without_value"),
        (6, "formula_without_value"),
    ]


def test_a_text_list_may_start_with_a_header_line(tmp_path: Path) -> None:
    # the header was a rejected row: harmless alone, but in a short list it is more than serve's share of
    # rejected rows ([pipeline] max_rejected_fraction), and the list was refused
    path = tmp_path / "list.txt"
    path.write_text(f"# MP102B\n\nESME GUID\n{format_eui(A)}\n{format_eui(B)}\nGUID\n", encoding="utf-8")
    guids, report = import_guids(path)
    assert set(guids) == {A, B}
    assert (report.sheets[0].header_row, report.sheets[0].header) == (3, "ESME GUID")
    assert [(r.row, r.reason) for r in report.rejected] == [(6, "bad_eui")]  # only the first line is a header
    assert report.rows_read == 3 and report.blank == 0
