"""Excel errors (``#N/A``, ``#REF!`` ...) and uncalculated formulas in the GUID column of ``.xls`` and
``.ods`` workbooks: python-calamine reads them as empty strings, so without a second look those
meters left the list as "blank" rows with no row number anywhere (the ``.xlsx`` case is pinned in
test_guids_import.py). ``.xlsb`` is not covered: no Python library writes one (see docs/OPERATIONS.md)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import xlwt
from python_calamine import CalamineWorkbook

from gateway.guids import import_guids
from gbcs.eui import format_eui

A = 0x0011223344556677
B = 0x0011223344556678
C = 0x00112233445566FF

# BIFF error codes (xlwt's own table maps "#VALUE!" to the code of #NUM! and has no "#N/A")
_NA, _REF, _DIV0 = 0x2A, 0x17, 0x07


def test_xls_error_cells_are_rejected_with_their_cell_not_counted_as_blank(tmp_path: Path) -> None:
    path = tmp_path / "list.xls"
    wb = xlwt.Workbook()
    ws = wb.add_sheet("List")
    # the table starts at B2: a blank first row and column, as calamine skips them
    ws.write(1, 1, "Serial")
    ws.write(1, 2, "ESME GUID")
    ws.write(2, 1, "s1")
    ws.write(2, 2, format_eui(A))
    ws.write(3, 1, "s2")
    ws.row(3).set_cell_error(2, _NA)
    ws.write(4, 1, "s3")  # C5 really empty
    ws.write(5, 1, "s4")
    ws.row(5).set_cell_error(2, _REF)
    ws.write(6, 1, "s5")
    ws.write(6, 2, format_eui(B))
    ws.row(7).set_cell_error(2, _DIV0)
    ws.row(8).set_cell_error(1, _NA)  # an error in another column is no business of the list
    ws.write(8, 2, format_eui(C))
    wb.save(str(path))
    # what python-calamine gives for them: nothing to tell an error from an empty cell
    with CalamineWorkbook.from_path(str(path)) as book:
        rows = list(book.get_sheet_by_name("List").iter_rows())
    assert [row[1] for row in rows[3:8]] == ["", "", "", format_eui(B), ""]

    guids, report = import_guids(path)
    assert set(guids) == {A, B, C}
    assert (report.sheets[0].header_row, report.sheets[0].column) == (2, "C")
    assert [(r.row, r.reason, r.sheet) for r in report.rejected] == [
        (4, "error_cell", "List"),
        (6, "error_cell", "List"),
        (8, "error_cell", "List"),
    ]
    details = [r.detail for r in report.rejected]
    assert details == [
        "cell C4 holds the Excel error #N/A",
        "cell C6 holds the Excel error #REF!",
        "cell C8 holds the Excel error #DIV/0!",
    ]
    assert report.blank == 1  # C5 alone
    assert report.rows_read == 7 and report.accepted == 3


# ---- .ods: an OpenDocument package as LibreOffice writes one (mimetype stored first, a manifest,
# content.xml); an error cell is LibreOffice's form, an empty string marked calcext:value-type="error"

_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:of="urn:oasis:names:tc:opendocument:xmlns:of:1.2" '
    'xmlns:calcext="urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0"'
)
_EMPTY = "<table:table-cell/>"


def _text(value: str) -> str:
    return (
        '<table:table-cell office:value-type="string" calcext:value-type="string">'
        f"<text:p>{value}</text:p></table:table-cell>"
    )


def _error(formula: str, shown: str) -> str:
    return (
        f'<table:table-cell table:formula="{formula}" office:value-type="string" office:string-value="" '
        f'calcext:value-type="error"><text:p>{shown}</text:p></table:table-cell>'
    )


def _row(*cells: str, repeated: int = 1) -> str:
    rep = f' table:number-rows-repeated="{repeated}"' if repeated > 1 else ""
    return f"<table:table-row{rep}>{''.join(cells)}</table:table-row>"


def _write_ods(path: Path, tables: dict[str, list[str]], prolog: str = "") -> Path:
    body = "".join(
        f'<table:table table:name="{name}"><table:table-column table:number-columns-repeated="4"/>'
        + "".join(rows)
        + "</table:table>"
        for name, rows in tables.items()
    )
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n{prolog}<office:document-content {_NS} office:version="1.3">'
        f"<office:body><office:spreadsheet>{body}</office:spreadsheet></office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<manifest:manifest '
        'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.3">'
        '<manifest:file-entry manifest:full-path="/" manifest:version="1.3" '
        'manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            zipfile.ZipInfo("mimetype"),
            "application/vnd.oasis.opendocument.spreadsheet",
            compress_type=zipfile.ZIP_STORED,
        )
        z.writestr("META-INF/manifest.xml", manifest, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("content.xml", content, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _ods_list() -> dict[str, list[str]]:
    return {
        "Readme": [_row(_text("MP102B list"))],
        "List": [
            _row('<table:table-cell table:number-columns-repeated="4"/>', repeated=2),
            _row(_EMPTY, _text("Serial"), _text("ESME GUID")),  # row 3, the EUIs in column C
            _row(_EMPTY, _text("s1"), _text(format_eui(A))),
            _row(_EMPTY, _text("s2"), _error("of:=NA()", "#N/A")),
            _row(_EMPTY, _text("s3"), '<table:table-cell table:formula="of:=[.Z9]"/>'),  # never calculated
            _row(_EMPTY, _text("s4"), _error("of:=1/0", "#DIV/0!"), repeated=2),  # rows 7 and 8
            _row(_EMPTY, _text("s5")),  # C9 really empty
            _row(_EMPTY, _error("of:=#REF!", "#REF!"), _text(format_eui(B))),  # not the EUI column
            _row(
                _EMPTY, _text("s7"), '<table:table-cell office:value-type="string" office:string-value=""/>'
            ),
        ],
    }


def test_ods_error_cells_and_uncalculated_formulas_are_rejected_with_their_cell(tmp_path: Path) -> None:
    path = _write_ods(tmp_path / "list.ods", _ods_list())
    with CalamineWorkbook.from_path(str(path)) as book:
        rows = list(book.get_sheet_by_name("List").iter_rows())
    assert [row[1] for row in rows[4:9]] == ["", "", "", "", ""]  # what calamine gives

    guids, report = import_guids(path)
    assert set(guids) == {A, B}
    assert [s.name for s in report.sheets] == ["List"]
    assert (report.sheets[0].header_row, report.sheets[0].column) == (3, "C")
    assert [(r.row, r.reason, r.sheet) for r in report.rejected] == [
        (5, "error_cell", "List"),
        (6, "formula_without_value", "List"),
        (7, "error_cell", "List"),
        (8, "error_cell", "List"),
    ]
    assert report.rejected[0].detail == "cell C5 holds the error #N/A"
    assert report.rejected[2].detail == "cell C7 holds the error #DIV/0!"
    assert "C6" in report.rejected[1].detail and "calculated" in report.rejected[1].detail
    assert report.blank == 2  # C9 and the empty string of C11
    assert report.rows_read == 8


def test_an_ods_error_cell_that_calamine_reads_as_text_is_rejected_once(tmp_path: Path) -> None:
    # a writer that puts the error's text in office:string-value: calamine reads "#N/A", a bad EUI
    # already; the second look must not count it again (nor take it from the blank count)
    cell = (
        '<table:table-cell table:formula="of:=NA()" office:value-type="string" office:string-value="#N/A" '
        'calcext:value-type="error"><text:p>#N/A</text:p></table:table-cell>'
    )
    path = _write_ods(
        tmp_path / "list.ods",
        {"List": [_row(_text("ESME GUID")), _row(_EMPTY), _row(_text(format_eui(A))), _row(cell)]},
    )
    guids, report = import_guids(path)
    assert set(guids) == {A}
    assert [(r.row, r.reason) for r in report.rejected] == [(4, "bad_eui")]
    assert report.blank == 1  # row 2


def test_an_ods_whose_content_carries_a_doctype_is_not_looked_at_again(tmp_path: Path) -> None:
    # content.xml is read by lxml without DTDs or entities; one that declares a DOCTYPE is not read
    # at all: its blank cells stay blank, and the report says they were not checked
    rows = [_row(_text("ESME GUID")), _row(_text(format_eui(A))), _row(_error("of:=NA()", "#N/A"))]
    path = _write_ods(tmp_path / "list.ods", {"List": rows}, prolog='<!DOCTYPE x [<!ENTITY e "e">]>\n')
    guids, report = import_guids(path)
    assert set(guids) == {A}
    assert report.rejected == [] and report.blank == 1
    assert [(w["reason"], w["row"]) for w in report.warnings] == [("blanks_unchecked", 2)]
    assert "DOCTYPE" in report.warnings[0]["detail"]
