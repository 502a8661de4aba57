"""The MP102B GUID list: the set of affected ESME EUI-64s (about 1.4 M), imported from the
manufacturer's workbook and held compactly.

Theory of operation
-------------------
*Import.* :func:`import_guids` reads an ``.xlsx``/``.xlsm``/``.xlsb``/``.xls``/``.ods`` workbook
(python-calamine), a ``.csv``/``.tsv`` file (csv module, delimiter sniffed) or plain text (one EUI a
line, ``#`` comments). Text is decoded by its byte-order mark (UTF-8, UTF-16 as Excel's "Unicode Text"
writes, UTF-32), else as UTF-8, else as Windows-1252 (:func:`decode_text`). A source with rows and not
one EUI accepted, or one that changed while it was read (:class:`StableRead`), is refused. For tables, the header row is looked for among the first
:data:`HEADER_SCAN_ROWS` rows and the EUI column is the one named by ``column`` (a header name, or a
column letter, as Excel shows it) or else auto-detected: a header cell naming a GUID/EUI/ESME/Device
ID column, or failing that the one column whose sample cells parse as EUI-64. A header naming another
device (Comms Hub, CH, gas meter ...) never makes the GUID column, and two columns that could each be
it are an error (name one) rather than a guess. Every cell is normalised as
:func:`gbcs.eui.parse_eui` does (any spelling; a chunked fast path handles blocks of plain
spellings with one regular-expression match, and is property-tested against ``parse_eui``); rows
that do not parse are *rejected* with their spreadsheet row number and a reason, duplicates are
counted, blank cells are skipped and counted.

An Excel worksheet holds at most 1,048,576 rows, so a 1.4 M-row list spans several sheets: unless
sheets are named, **every visible worksheet** with a recognisable EUI column is read, and sheets without
one, and hidden sheets (not what the operator sees in Excel: read only when named), are listed in the
report as skipped (never silently).

*Cells that read as empty.* python-calamine reads an Excel error (``#N/A``, ``#REF!``) and a formula
saved without its calculated value as an empty string. When the EUI column of a sheet had blank cells,
that column is looked at again, and such cells are rejected (``error_cell``, ``formula_without_value``,
with the cell reference) instead of counted as blank: the sheet's XML for ``.xlsx``/``.xlsm``, its
records through xlrd for ``.xls`` (errors; a BIFF formula always holds its value), its ``content.xml``
for ``.ods`` (LibreOffice marks an error ``calcext:value-type="error"``). ``.xlsb`` is not looked at
again (no reader used here keeps its error cells): there they count as blank.

*Numeric cells.* An EUI made only of decimal digits (``0012345678901234``) typed into Excel without a
Text format is stored as a *number*: leading zeros are gone, Excel keeps only 15 significant digits,
and a value such as ``00000000001E0003`` may even have been read as scientific notation. calamine
returns such cells as ``float`` and offers no way to read the text that was typed. By default they
are rejected (reason ``numeric_cell``) so nothing is mis-parsed; ``numeric_cells="recover"``
re-creates the 16 digits by left-padding integral values below 10**15 (exact in a double and within
Excel's 15 digits) and still rejects the rest (``numeric_precision``). The report counts both.
Recovery is right only for EUIs typed as decimal digits: one that Excel read as scientific notation
(``00000000001E0003`` is the number 1000) cannot be told from the number, and comes back as another
EUI (``0000000000001000``), so recover only a list known to hold no such spelling (serve never does).

*Set.* :class:`GuidSet` stores the EUIs as a sorted, de-duplicated ``array('Q')`` (8 bytes each,
about 11 MB for 1.4 M) with :func:`bisect.bisect_left` membership; it implements
:class:`gateway.engine.ports.ScopeView`.

*Persistence.* :meth:`GuidSet.save` writes a compact binary file atomically (temp file, fsync,
``os.replace``, directory fsync)::

    offset  size  field
    0       8     magic  b"DUISGWGL"
    8       2     format version (1), little-endian
    10      2     reserved (0)
    12      4     n = length of the UTF-8 source name
    16      8     count of EUIs
    24      8     import time, microseconds since 1970-01-01 UTC (signed; supplied by the caller)
    32      32    SHA-256 of the source file
    64      32    SHA-256 of the EUI payload (integrity)
    96      n     source name (UTF-8), then zero padding to a multiple of 8
    ...     8*count  the EUIs, uint64 little-endian, strictly increasing

:meth:`GuidSet.load` checks the magic, version, size, payload digest and ordering.

*Hot replacement.* :class:`GuidRegistry` holds the ``current`` set; a new list is fully built (or
loaded) first and then swapped in with a single reference assignment, so a reader (which looks up
``current`` once per question) sees either the old list or the new one, never a mix.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import hashlib
import io
import os
import re
import struct
import sys
import tempfile
import threading
import zipfile
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, groupby, islice, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gateway.errors import DuisgwError
from gbcs.eui import EUIError, format_eui, parse_eui

if TYPE_CHECKING:
    from python_calamine import CalamineSheet

__all__ = [
    "HEADER_SCAN_ROWS",
    "IMPORTER_VERSION",
    "MAGIC",
    "CsvLines",
    "GuidFileError",
    "GuidImportError",
    "GuidMeta",
    "GuidRegistry",
    "GuidSet",
    "ImportReport",
    "ProgressFn",
    "Rejection",
    "SheetReport",
    "StableRead",
    "atomic_write_bytes",
    "check_rejected",
    "decode_text",
    "fast_parse_eui",
    "file_sha256",
    "import_guids",
    "sniff_dialect",
    "summarise",
]

HEADER_SCAN_ROWS = 20
"""How many leading rows are searched for the header row."""
SAMPLE_ROWS = 200
"""Rows sampled per column when the EUI column is detected from its content."""

MAGIC = b"DUISGWGL"
FORMAT_VERSION = 1
IMPORTER_VERSION = 3
"""Bumped whenever a change to :func:`import_guids` can change which EUIs a source yields (2: hidden
sheets, other devices' columns, column letters, encodings; 3: a column name that is also letters, such
as ``EUI``, is a header in every sheet once one sheet has it), so a list persisted by an older version
is imported again (see :func:`gateway.service.serve.load_guid_list`)."""
_HEADER = struct.Struct("<8sHHIQq32s32s")
_M64 = (1 << 64) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ProgressFn = Callable[[int, int | None], None]
"""``progress(rows_done, rows_total_or_None)``, called every few thousand rows."""
NumericPolicy = Literal["reject", "recover"]

_WORKBOOK_EXT = {".xlsx", ".xlsm", ".xlsb", ".xls", ".ods"}
_CSV_EXT = {".csv", ".tsv"}
_HEADER_NAMES = {
    "guid",
    "guids",
    "eui",
    "eui64",
    "euis",
    "esme",
    "esmeid",
    "esmeeui",
    "esmeguid",
    "esmeeui64",
    "deviceid",
    "deviceeui",
    "deviceguid",
    "deviceeui64",
    "meterid",
    "metereui",
    "meterguid",
}
_HEADER_HINTS = ("guid", "eui")
_COLUMN_LETTERS = re.compile(r"[A-Za-z]{1,3}")
_PROGRESS_EVERY = 50_000


class GuidImportError(DuisgwError):
    """The source cannot be used at all (missing file, unknown sheet or column, no EUI column)."""

    code = "guid_import"


class GuidFileError(DuisgwError):
    """A persisted GUID file is not one this version wrote, or is damaged."""

    code = "guid_file"


@dataclass(frozen=True, slots=True)
class Rejection:
    """One row that was not accepted. ``row`` is the 1-based row (spreadsheet row, csv record, line)."""

    row: int
    reason: str
    detail: str
    sheet: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"row": self.row, "reason": self.reason, "detail": self.detail}
        if self.sheet is not None:
            d["sheet"] = self.sheet
        return d


@dataclass(slots=True)
class SheetReport:
    """Where the EUIs were found in one sheet (or in the csv/text file)."""

    name: str
    header_row: int | None
    column: str
    header: str | None
    rows_read: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "header_row": self.header_row,
            "column": self.column,
            "header": self.header,
            "rows_read": self.rows_read,
        }


@dataclass(slots=True)
class ImportReport:
    """What an import did. ``rows_read`` counts data rows (after the header), blank ones included."""

    source: str
    format: str
    source_sha256: str = ""
    sheets: list[SheetReport] = field(default_factory=list)
    sheets_skipped: list[dict[str, str]] = field(default_factory=list)
    rows_read: int = 0
    blank: int = 0
    accepted: int = 0
    duplicates: int = 0
    unique: int = 0
    rejected_count: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    numeric_recovered: int = 0
    warning_count: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)
    max_rejects: int = 100

    def reject(self, row: int, reason: str, detail: str, sheet: str | None) -> None:
        self.rejected_count += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        if len(self.rejected) < self.max_rejects:
            self.rejected.append(Rejection(row, reason, detail, sheet))

    def warn(self, row: int, reason: str, detail: str) -> None:
        """Something the operator should look at that rejected no row (listed up to ``max_rejects``)."""
        self.warning_count += 1
        if len(self.warnings) < self.max_rejects:
            self.warnings.append({"row": row, "reason": reason, "detail": detail})

    def check_rejected(self, limit: float, setting: str) -> None:
        """Raise :class:`GuidImportError` when more than ``limit`` of the non-blank rows were rejected."""
        check_rejected(self, limit, setting, GuidImportError)

    def summary(self) -> str:
        """One line: rows read, blank and rejected (by reason), and the first rejected row."""
        first = None
        if self.rejected:
            r = self.rejected[0]
            where = f"sheet {r.sheet!r} row {r.row}" if r.sheet is not None else f"row {r.row}"
            first = f"{where}: {r.reason}: {r.detail}"
        return summarise(self.rows_read, self.blank, self.rejected_count, self.rejected_by_reason, first)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "source_sha256": self.source_sha256,
            "sheets": [s.as_dict() for s in self.sheets],
            "sheets_skipped": self.sheets_skipped,
            "rows_read": self.rows_read,
            "blank": self.blank,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "unique": self.unique,
            "rejected_count": self.rejected_count,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "rejected": [r.as_dict() for r in self.rejected],
            "numeric_recovered": self.numeric_recovered,
            "warning_count": self.warning_count,
            "warnings": self.warnings,
        }


def summarise(read: int, blank: int, rejected: int, by_reason: dict[str, int], first: str | None) -> str:
    """``"N rows read, B blank, R rejected: reason n, ...; first: <where>: <reason>: <detail>"``."""
    text = f"{read:,} rows read, {blank:,} blank, {rejected:,} rejected"
    if by_reason:
        text += ": " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1]))
    if first:
        text += f"; first: {first[:160]}"
    return text


def check_rejected(
    report: Any, limit: float, setting: str, error: type[DuisgwError], *, skipped: int = 0
) -> None:
    """Refuse a source whose rejected rows exceed ``limit`` (a fraction) of its non-blank rows (less
    ``skipped``, rows deliberately left out, such as an inventory's rows of other device types): the
    wrong column, a column of numbers or a misread encoding, not a few typing errors."""
    considered = report.rows_read - report.blank - skipped
    if considered and report.rejected_count > limit * considered:
        name = Path(report.source).name
        others = f" (not counting {skipped:,} skipped)" if skipped else ""
        raise error(
            f"{name}: {report.rejected_count:,} of {considered:,} non-blank rows{others} rejected "
            f"({report.rejected_count / considered:.1%}, more than {setting} = {limit:g}): {report.summary()}"
        )


@dataclass(frozen=True, slots=True)
class GuidMeta:
    """Provenance of a GUID set (kept in its persisted file)."""

    source_name: str
    source_sha256: str
    imported_at: datetime

    def as_dict(self) -> dict[str, str]:
        return {
            "source_name": self.source_name,
            "source_sha256": self.source_sha256,
            "imported_at": self.imported_at.isoformat(),
        }


# --------------------------------------------------------------------------------------------
# EUI cells


def fast_parse_eui(text: str) -> int:
    """:func:`gbcs.eui.parse_eui` with a fast path for the two common spellings (bare 16 hex digits,
    ``HH-HH-..`` / ``HH:HH:..``); identical results, same :class:`EUIError` otherwise."""
    n = len(text)
    if n == 16:
        # int(text, 16) also takes a "0x" prefix: "0x" + 14 digits is a truncated EUI, not an EUI
        if text.isascii() and text.isalnum() and text[1] not in "xX":
            try:
                return int(text, 16)
            except ValueError:
                pass
    elif n == 23:
        sep = text[2]
        if (sep == "-" or sep == ":") and text[2::3] == sep * 7:
            compact = text.replace(sep, "")
            if len(compact) == 16 and compact.isascii() and compact.isalnum():
                try:
                    return int(compact, 16)
                except ValueError:
                    pass
    return parse_eui(text)


def _numeric_cell(value: float | int, policy: NumericPolicy) -> tuple[int | None, str, str]:
    """A number where an EUI was expected: (eui or None, reason, detail)."""
    shown = repr(value)[:40]
    if policy == "reject":
        return (
            None,
            "numeric_cell",
            f"cell holds the number {shown}: Excel stored the EUI as a number (leading zeros and "
            "digits beyond 15 may be lost); format the column as Text or import with numeric recovery",
        )
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or not value.is_integer():
            return None, "numeric_cell", f"cell holds the non-integral number {shown}"
        value = int(value)
    if value < 0:
        return None, "numeric_cell", f"cell holds the negative number {shown}"
    if value >= 10**15:
        return (
            None,
            "numeric_precision",
            f"cell holds the number {shown}: 16 significant digits cannot survive Excel's 15-digit "
            "precision; the EUI must be re-entered as text",
        )
    return int(f"{value:016d}", 16), "", ""


def _cell_text(value: object) -> str | None:
    """A cell as text, or None for blank; numbers and other types are handled by the caller."""
    if isinstance(value, str):
        s = value.strip()
        return s or None
    return None


def _norm_header(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return "".join(ch for ch in value.lower() if ch.isalnum())


def _looks_like_eui(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        fast_parse_eui(value.strip())
    except EUIError:
        return False
    return True


def _col_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def _letter_index(letters: str) -> int:
    n = 0
    for ch in letters.upper():
        n = n * 26 + (ord(ch) - ord("A") + 1)
    return n - 1


@dataclass(frozen=True, slots=True)
class _Layout:
    header_index: int | None  # index into the rows list, None when there is no header row
    col: int
    header: str | None


class _EmptyColumn(Exception):
    """The column letter asked for lies outside the sheet's used cells: every cell of it is blank."""


def _detect_layout(
    rows: Sequence[Sequence[object]],
    column: str | None,
    where: str,
    col_offset: int = 0,
    width: int | None = None,
    letters: bool = True,
) -> _Layout | None:
    """Find the header row and the EUI column in the leading rows; None when no EUI column is found.

    ``col_offset`` is the sheet column (0 = A) of each row's first cell and ``width`` the number of
    used columns, when known: a column letter names the column as the spreadsheet shows it.
    Raises :class:`GuidImportError` when ``column`` names a header that is not there, and
    :class:`_EmptyColumn` when it names a column letter outside the used cells. ``letters=False``:
    ``column`` is a header name only (another sheet of the workbook has that header), never a letter.
    """
    head = rows[:HEADER_SCAN_ROWS]
    if column is not None:
        wanted = column.strip().lower()
        for r, row in enumerate(head):
            for c, cell in enumerate(row):
                if isinstance(cell, str) and cell.strip().lower() == wanted:
                    return _Layout(r, c, cell.strip())
        if letters and _COLUMN_LETTERS.fullmatch(column.strip()):
            col = _letter_index(column.strip()) - col_offset
            if col < 0 or (width is not None and col >= width):
                raise _EmptyColumn(column.strip().upper())
            hdr = _header_above(rows, col)
            return _Layout(hdr, col, _str_or_none(rows[hdr][col]) if hdr is not None else None)
        raise GuidImportError(
            f"{where}: no header cell named {column!r} in the first {HEADER_SCAN_ROWS} rows"
        )

    # 1. a header cell with a recognised name, never one naming another device (a Comms Hub, gas
    # meter ...: their EUIs are not the list). Among several (a "GUID list" title above the real
    # header, two id columns) one with EUIs below it beats one without, then an exact name (GUID,
    # EUI, ESME, Device ID ...) beats a partial one, then the most EUIs below, then the lower row
    # (the header nearest the data). A named column with no text EUI below (all numeric cells) is
    # still chosen, so its cells get reported. Two columns that tie on all but the row could each be
    # the list: an error, never a guess.
    best: dict[int, tuple[bool, bool, int, int]] = {}  # col -> (has EUIs, exact, score, row)
    for r, row in enumerate(head):
        for c, cell in enumerate(row):
            name = _norm_header(cell)
            if not name or _looks_like_eui(cell) or _other_device(name):
                continue
            exact = name in _HEADER_NAMES
            if exact or any(h in name for h in _HEADER_HINTS):
                score = sum(
                    1 for below in rows[r + 1 : r + 1 + SAMPLE_ROWS] if _looks_like_eui(_at(below, c))
                )
                cand = (score > 0, exact, score, r)
                if c not in best or cand > best[c]:
                    best[c] = cand
    if best:
        ranked = sorted(best, key=lambda c: best[c], reverse=True)
        c = ranked[0]
        if len(ranked) > 1 and best[ranked[1]][:3] == best[c][:3]:
            _ambiguous(where, rows, [(best[k][3], k) for k in sorted(ranked[:2])], col_offset)
        r = best[c][3]
        return _Layout(r, c, str(rows[r][c]).strip())

    # 2. no header names it: the one column whose sample cells parse as EUI-64 (a header naming
    # another device rules a column out; two such columns are an error)
    counts: dict[int, int] = {}
    for row in rows[:SAMPLE_ROWS]:
        for c, cell in enumerate(row):
            if _looks_like_eui(cell):
                counts[c] = counts.get(c, 0) + 1
    found: list[tuple[int | None, int]] = []
    for c in sorted(counts):
        hdr = _header_above(rows, c)
        if hdr is None or not _other_device(_norm_header(rows[hdr][c])):
            found.append((hdr, c))
    if not found:
        return None
    if len(found) > 1:
        _ambiguous(where, rows, found[:2], col_offset)
    hdr, col = found[0]
    return _Layout(hdr, col, _str_or_none(rows[hdr][col]) if hdr is not None else None)


_OTHER_DEVICE = re.compile(r"hub|chf|^ch(?:guid|eui|id|deviceid)|gsme|gas|ihd|ppmid|hcalcs|^cad")


def _other_device(name: str) -> bool:
    """A normalised header that names a device other than the ESME (Comms Hub, gas meter, IHD ...)."""
    return _OTHER_DEVICE.search(name) is not None


def _ambiguous(
    where: str, rows: Sequence[Sequence[object]], cols: Sequence[tuple[int | None, int]], col_offset: int
) -> None:
    names = " and ".join(
        f"{_col_letter(c + col_offset)} ({_str_or_none(rows[r][c]) if r is not None else None!r})"
        for r, c in cols
    )
    raise GuidImportError(
        f"{where}: columns {names} could each be the GUID column: name the one to read (--column, or [pipeline] guid_column)"
    )


def _has_no_euis(rows: Sequence[Sequence[object]]) -> bool:
    return not any(_looks_like_eui(cell) for row in rows[:SAMPLE_ROWS] for cell in row)


def _at(row: Sequence[object], col: int) -> object:
    return row[col] if col < len(row) else ""


def _str_or_none(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _header_above(rows: Sequence[Sequence[object]], col: int) -> int | None:
    """The header row for a column found by content: the last non-blank, non-EUI text cell above its
    first EUI cell (within the scanned rows), else no header."""
    first = next((r for r, row in enumerate(rows[:SAMPLE_ROWS]) if _looks_like_eui(_at(row, col))), None)
    if first is None:
        first = min(len(rows), HEADER_SCAN_ROWS)
    for r in range(min(first, HEADER_SCAN_ROWS) - 1, -1, -1):
        cell = _at(rows[r], col)
        if isinstance(cell, str) and cell.strip():
            return r
        if cell not in ("", None):
            return None
    return None


# --------------------------------------------------------------------------------------------
# import


_HEX = "[0-9A-Fa-f]"
_BULK_LINE = rf"[ \t]*(?:{_HEX}{{16}}|{_HEX}{{2}}(?:[-:. \t]{_HEX}{{2}}){{7}})[ \t]*"
_BULK = re.compile(rf"(?:{_BULK_LINE}\n)*{_BULK_LINE}")
"""A block of cells, one per line, each a bare or 8-octet-separated EUI-64: a strict subset of what
:func:`parse_eui` accepts, normalised by deleting the separators (same value)."""
_DROP_SEPARATORS = str.maketrans("", "", "-:. \t")
_CHUNK = 4096


class _Collector:
    """Runs the row loop shared by every source format (the hot path of an import).

    Rows are taken in chunks; a chunk whose cells are all text in one of the plain spellings is
    validated by one regular-expression match and normalised with C-level string operations; any
    other chunk (blank or numeric cells, odd spellings, bad rows) goes through the per-row loop,
    which reports each bad row. Accepted EUIs are kept as 16-digit upper-case hex strings: sorting
    those (memcmp comparisons) is faster than sorting 64-bit Python ints.
    """

    def __init__(self, report: ImportReport, numeric: NumericPolicy, progress: ProgressFn | None) -> None:
        self.report = report
        self.numeric = numeric
        self.progress = progress
        self.hexes: list[str] = []
        self.done = 0
        self.total: int | None = None

    def run(
        self,
        rows: Iterable[Sequence[object]],
        *,
        col: int,
        first_row_number: int,
        sheet: SheetReport,
        sheet_name: str | None,
    ) -> None:
        it = iter(rows)
        rownum = first_row_number
        read = 0
        next_tick = (self.done // _PROGRESS_EVERY + 1) * _PROGRESS_EVERY
        while chunk := list(islice(it, _CHUNK)):
            if not self._bulk(chunk, col):
                self._rows(chunk, col, rownum, sheet_name)
            rownum += len(chunk)
            read += len(chunk)
            if self.progress is not None and self.done + read >= next_tick:
                next_tick = ((self.done + read) // _PROGRESS_EVERY + 1) * _PROGRESS_EVERY
                self.progress(self.done + read, self.total)
        self.done += read
        sheet.rows_read += read
        self.report.rows_read += read

    def _bulk(self, chunk: list[Sequence[object]], col: int) -> bool:
        try:
            text = "\n".join([row[col] for row in chunk])  # type: ignore[misc]
        except (IndexError, TypeError):
            return False
        if _BULK.fullmatch(text) is None:
            return False
        parts = text.translate(_DROP_SEPARATORS).upper().split("\n")
        if len(parts) != len(chunk):  # a cell held a line break
            return False
        self.hexes.extend(parts)
        return True

    def _rows(self, chunk: list[Sequence[object]], col: int, first: int, sheet_name: str | None) -> None:
        report = self.report
        append = self.hexes.append
        numeric = self.numeric
        blank = 0
        for rownum, row in enumerate(chunk, first):
            try:
                cell = row[col]
            except IndexError:
                blank += 1
                continue
            if type(cell) is str:
                s = cell.strip()
                if not s:
                    blank += 1
                    continue
                try:
                    append(f"{parse_eui(s):016X}")
                except EUIError as e:
                    report.reject(rownum, "bad_eui", str(e), sheet_name)
            elif cell is None:
                blank += 1
            elif type(cell) is float or type(cell) is int:
                value, reason, detail = _numeric_cell(cell, numeric)
                if value is None:
                    report.reject(rownum, reason, detail, sheet_name)
                else:
                    report.numeric_recovered += 1
                    append(f"{value:016X}")
            else:
                report.reject(
                    rownum, "not_text", f"cell holds a {type(cell).__name__} ({str(cell)[:40]!r})", sheet_name
                )
        report.blank += blank

    def build(self) -> GuidSet:
        hexes = self.hexes
        self.hexes = []
        hexes.sort()
        unique = [h for h, _ in groupby(hexes)]
        del hexes
        return GuidSet(array("Q", map(int, unique, repeat(16))))


class StableRead:
    """Fails an import whose source changed while it was read: an operator copying a new file over
    the old one while a reload reads it. A workbook cut short fails to open, but a csv or text file
    cut short is just a shorter list; the size, modification time and inode are compared before the
    digest is taken and after the last row is read (a file replaced by renaming a complete one over
    it counts too: it is read again at the next reload)."""

    __slots__ = ("_before", "_error", "_path")

    def __init__(self, path: Path, error: type[DuisgwError]) -> None:
        self._path = path
        self._error = error
        self._before = self._stat()

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self._path.stat()
        except OSError as e:
            raise self._error(f"{self._path.name}: cannot be read: {e.strerror or e}") from e
        return st.st_size, st.st_mtime_ns, st.st_ino

    def check(self) -> None:
        if self._stat() != self._before:
            raise self._error(
                f"{self._path.name}: changed while it was being read (still being copied?): load it again "
                "once it is complete, and replace it in one step (write a new file, then rename it over "
                "the old one)"
            )


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _detect_format(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in _WORKBOOK_EXT:
        return "workbook"
    if ext in _CSV_EXT:
        return "csv"
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"PK\x03\x04") or magic.startswith(b"\xd0\xcf\x11\xe0"):
        return "workbook"
    return "text"


def import_guids(
    path: str | os.PathLike[str],
    *,
    sheets: Sequence[str] | None = None,
    column: str | None = None,
    numeric_cells: NumericPolicy = "reject",
    max_rejects: int = 100,
    progress: ProgressFn | None = None,
    fmt: Literal["auto", "workbook", "csv", "text"] = "auto",
) -> tuple[GuidSet, ImportReport]:
    """Import a GUID list from a workbook, csv or text file.

    ``sheets``: worksheet names to read (default: every worksheet with an EUI column).
    ``column``: header name (case-insensitive) or column letter of the EUI column (default: detected).
    Returns the set (without provenance; see :meth:`GuidSet.with_meta`) and the report. Raises
    :class:`GuidImportError` when the source is unusable as a whole, including when it has rows and
    not one EUI is accepted (the message says why); bad rows only go to the report.
    """
    p = Path(path)
    if not p.is_file():
        raise GuidImportError(f"no such file: {p}")
    stable = StableRead(p, GuidImportError)
    kind = _detect_format(p) if fmt == "auto" else fmt
    report = ImportReport(source=str(p), format=kind, max_rejects=max_rejects)
    report.source_sha256 = file_sha256(p)
    collector = _Collector(report, numeric_cells, progress)
    if kind == "workbook":
        _import_workbook(p, sheets, column, collector)
    elif kind == "csv":
        _import_csv(p, column, collector)
    else:
        _import_text(p, collector)
    report.accepted = len(collector.hexes)
    if progress is not None:
        progress(collector.done, collector.total)
    stable.check()  # so the digest is the digest of what was read, too
    guids = collector.build()
    report.unique = len(guids)
    report.duplicates = report.accepted - report.unique
    if not guids and report.rows_read:
        # rows, and not one EUI among them: an empty list stops every suppression. A source with no
        # row below its header is a deliberately empty list
        raise GuidImportError(f"{p.name}: no EUI accepted ({report.summary()})")
    return guids, report


def _import_workbook(path: Path, sheets: Sequence[str] | None, column: str | None, col: _Collector) -> None:
    from python_calamine import CalamineError, CalamineWorkbook, SheetTypeEnum, SheetVisibleEnum

    try:
        wb = CalamineWorkbook.from_path(str(path))
    except (CalamineError, OSError, ValueError) as e:
        raise GuidImportError(f"{path.name}: not a readable workbook: {e}") from e
    with wb:
        if sheets:
            missing = [s for s in sheets if s not in wb.sheet_names]
            if missing:
                raise GuidImportError(
                    f"{path.name}: no sheet named {', '.join(map(repr, missing))} (sheets: {wb.sheet_names})"
                )
            names = list(sheets)
        else:
            names = []
            for m in wb.sheets_metadata:
                if m.typ != SheetTypeEnum.WorkSheet:
                    continue
                if m.visible != SheetVisibleEnum.Visible:  # not what the operator sees in Excel
                    reason = "hidden sheet (name it to read it)"
                    col.report.sheets_skipped.append({"name": m.name, "reason": reason})
                    continue
                names.append(m.name)
        opened = []
        for name in names:
            try:  # calamine parses the whole sheet here
                opened.append((name, wb.get_sheet_by_name(name)))
            except CalamineError as e:  # a sheet's XML or strings damaged inside a readable zip
                raise GuidImportError(f"{path.name}[{name}]: damaged workbook: {e}") from e
        col.total = sum(s.total_height + 1 for _, s in opened if s.start is not None) or None
        # a column given as text that is also a run of letters ("EUI", "ID") is a header name when a
        # sheet has it as a header: then a sheet without that header is judged as for any header name
        # (skipped when it holds no EUI, else an error), not read as the far-right column EUI/ID
        # (empty: the sheet and its EUIs were skipped, and the import went on with part of the list)
        letters = column is None or not any(
            _names_header(list(islice(s.iter_rows(), HEADER_SCAN_ROWS)), column)
            for _, s in opened
            if s.start is not None
        )
        for name, sheet in opened:
            try:
                _import_sheet(path, name, sheet, bool(sheets), column, col, letters)
            except CalamineError as e:
                raise GuidImportError(f"{path.name}[{name}]: damaged workbook: {e}") from e
    if not col.report.sheets:
        raise GuidImportError(f"{path.name}: no sheet has an EUI column")


def _names_header(rows: Sequence[Sequence[object]], column: str) -> bool:
    """Whether a cell of the leading rows is the header ``column`` (as :func:`_detect_layout` matches it)."""
    wanted = column.strip().lower()
    return any(
        isinstance(cell, str) and cell.strip().lower() == wanted
        for row in rows[:HEADER_SCAN_ROWS]
        for cell in row
    )


def _import_sheet(
    path: Path,
    name: str,
    sheet: CalamineSheet,
    named: bool,
    column: str | None,
    col: _Collector,
    letters: bool = True,
) -> None:
    """Read one worksheet's EUI column into ``col`` (or list the sheet as skipped)."""
    if sheet.start is None:
        if named:
            raise GuidImportError(f"{path.name}: sheet {name!r} is empty")
        col.report.sheets_skipped.append({"name": name, "reason": "empty sheet"})
        return
    # iter_rows yields rows from the first row of the sheet (row 1), and columns from the
    # first non-empty column: report column letters with that offset.
    col_offset = sheet.start[1]
    it = sheet.iter_rows()
    head = list(islice(it, max(HEADER_SCAN_ROWS, SAMPLE_ROWS)))
    try:
        layout = _detect_layout(head, column, f"{path.name}[{name}]", col_offset, sheet.width, letters)
    except _EmptyColumn as e:
        if named:
            raise GuidImportError(f"{path.name}: column {e} is empty in sheet {name!r}") from None
        col.report.sheets_skipped.append({"name": name, "reason": f"column {e} is empty"})
        return
    except GuidImportError:
        # the named header is not in this sheet: a sheet with no EUIs at all (a readme) is skipped,
        # one that holds EUIs under another header is an error (half a list is not a list)
        if named or column is None or not _has_no_euis(head):
            raise
        layout = None
    if layout is None:
        if named:
            raise GuidImportError(f"{path.name}: no EUI column found in sheet {name!r}")
        col.report.sheets_skipped.append({"name": name, "reason": "no EUI column found"})
        return
    start = 0 if layout.header_index is None else layout.header_index + 1
    rep = SheetReport(
        name=name,
        header_row=None if layout.header_index is None else layout.header_index + 1,
        column=_col_letter(layout.col + col_offset),
        header=layout.header,
    )
    col.report.sheets.append(rep)
    rows: Iterator[Sequence[object]] = chain(head[start:], it)
    blank_before, rejected_before = col.report.blank, len(col.report.rejected)
    col.run(rows, col=layout.col, first_row_number=start + 1, sheet=rep, sheet_name=name)
    if col.report.blank > blank_before and path.suffix.lower() in _SCANNED:
        blanks = col.report.blank - blank_before
        _unblank(path, name, rep.column, start + 1, col.report, rejected_before, blanks)


# SpreadsheetML may be written with a namespace prefix (<x:c r="A2" t="e">, as the .NET Open XML SDK
# writes it) and with attributes in single quotes: both are the same cell to a spreadsheet program
_P = rb"(?:[A-Za-z_][\w.-]*:)?"
_ROW_END = re.compile(rb"</" + _P + rb"row>")
_ERROR_OR_FORMULA = re.compile(rb"<" + _P + rb"c\s([^>]*?)(?:/>|>(.*?)</" + _P + rb"c>)", re.DOTALL)
_CELL_REF = re.compile(rb"""\br=["']([A-Z]{1,3})([0-9]+)["']""")
_ERROR_TYPE = re.compile(rb"""\bt=["']e["']""")
_VALUE = re.compile(rb"<" + _P + rb"v>([^<]*)</" + _P + rb"v>")
_FORMULA = re.compile(rb"<" + _P + rb"f[\s/>]")


def _unblank(
    path: Path,
    sheet: str,
    letter: str,
    first_row: int,
    report: ImportReport,
    rejected_from: int,
    blanks: int,
) -> None:
    """Cells python-calamine reads as empty that are not: an Excel error (``#N/A``, ``#REF!``) and a
    formula saved without its calculated value. Found in the sheet's XML (xlsx/xlsm), in its BIFF
    records through xlrd (xls: errors only, a BIFF formula always carries its value) or in its
    ``content.xml`` (ods: LibreOffice's ``calcext:value-type="error"``), in the EUI column from
    ``first_row`` on, they become rejected rows instead of blank ones. Only run when the column had
    blank cells; a workbook whose parts cannot be followed is left as read (a warning)."""
    scan = _SCANNED[path.suffix.lower()]
    try:
        found = list(islice(scan(path, sheet, letter, first_row), blanks))  # never more than were blank
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, DuisgwError) as e:
        report.warn(
            first_row, "blanks_unchecked", f"sheet {sheet!r}: blank cells not checked for Excel errors: {e}"
        )
        return
    for row, reason, detail in found:
        report.blank -= 1
        report.reject(row, reason, detail, sheet)
    if found:  # in row order among this sheet's rejections
        report.rejected[rejected_from:] = sorted(report.rejected[rejected_from:], key=lambda r: r.row)


def _blank_looking_cells(
    path: Path, sheet: str, column: str, first_row: int
) -> Iterator[tuple[int, str, str]]:
    from gateway.duis.safexml import parse_xml

    letter = column.encode("ascii")

    ns_main = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    ns_rel = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
    with zipfile.ZipFile(path) as z:
        book = parse_xml(z.read("xl/workbook.xml"), max_bytes=64 << 20)
        rid = next(
            (e.get(f"{ns_rel}id") for e in book.iter(f"{ns_main}sheet") if e.get("name") == sheet), None
        )
        rels = parse_xml(z.read("xl/_rels/workbook.xml.rels"), max_bytes=64 << 20)
        target = next((e.get("Target") for e in rels.iter() if e.get("Id") == rid and rid is not None), None)
        if not target:
            raise ValueError("the sheet's part is not named in the workbook")
        member = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
        with z.open(member) as f:
            tail = b""
            while chunk := f.read(1 << 22):
                data = tail + chunk
                last = None
                for last in _ROW_END.finditer(data):  # noqa: B007 (the last row end is wanted)
                    pass
                if last is None:
                    tail = data
                    continue
                end = last.end()
                yield from _scan_cells(data[:end], letter, first_row)
                tail = data[end:]
            if tail:
                yield from _scan_cells(tail, letter, first_row)


def _scan_cells(data: bytes, letter: bytes, first_row: int) -> Iterator[tuple[int, str, str]]:
    if _FORMULA.search(data) is None and _ERROR_TYPE.search(data) is None:
        return
    for m in _ERROR_OR_FORMULA.finditer(data):
        attrs, body = m.group(1), m.group(2) or b""
        is_error = _ERROR_TYPE.search(attrs) is not None
        formula = _FORMULA.search(body) is not None
        if not is_error and not formula:
            continue
        ref = _CELL_REF.search(attrs)
        if ref is None or ref.group(1) != letter or int(ref.group(2)) < first_row:
            continue
        row = int(ref.group(2))
        cell = f"{ref.group(1).decode()}{row}"
        value = _VALUE.search(body)
        if formula and value is None:
            yield (
                row,
                "formula_without_value",
                f"cell {cell} holds a formula whose value was never calculated (the workbook was saved by a "
                "tool that does not calculate): open and save it in Excel, or paste the values",
            )
        elif is_error:
            shown = value.group(1).decode("utf-8", "replace")[:20] if value is not None else "an error"
            yield row, "error_cell", f"cell {cell} holds the Excel error {shown}"


def _xls_error_cells(path: Path, sheet: str, column: str, first_row: int) -> Iterator[tuple[int, str, str]]:
    """Error cells (``#N/A``, ``#REF!`` ...) of one ``.xls`` column, read with xlrd (which keeps them as
    error codes, where python-calamine gives an empty string). A BIFF formula record always holds
    its calculated value, so there is no ``formula_without_value`` here."""
    import xlrd

    try:  # xlrd writes its warnings to the log file, standard output unless told otherwise
        book = xlrd.open_workbook(str(path), on_demand=True, logfile=io.StringIO())
    except Exception as e:  # xlrd raises XLRDError and, on damaged records, struct/index errors
        raise ValueError(f"xlrd cannot read the workbook: {e}") from e
    try:
        ws = book.sheet_by_name(sheet)
        colx = _letter_index(column)
        if colx >= ws.ncols:
            return
        for rowx in range(first_row - 1, ws.nrows):
            if ws.cell_type(rowx, colx) == xlrd.XL_CELL_ERROR:
                code = ws.cell_value(rowx, colx)
                shown = xlrd.error_text_from_code.get(code, f"code {code:#04x}")
                yield rowx + 1, "error_cell", f"cell {column}{rowx + 1} holds the Excel error {shown}"
    except xlrd.XLRDError as e:
        raise ValueError(f"xlrd: {e}") from e
    finally:
        book.release_resources()


_ODS_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_ODS_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
_ODS_CALCEXT = "urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0"
_T_TABLE = f"{{{_ODS_TABLE}}}table"
_T_ROW = f"{{{_ODS_TABLE}}}table-row"
_T_CELLS = (f"{{{_ODS_TABLE}}}table-cell", f"{{{_ODS_TABLE}}}covered-table-cell")
_T_NAME = f"{{{_ODS_TABLE}}}name"
_T_FORMULA = f"{{{_ODS_TABLE}}}formula"
_T_ROWS_REPEATED = f"{{{_ODS_TABLE}}}number-rows-repeated"
_T_COLS_REPEATED = f"{{{_ODS_TABLE}}}number-columns-repeated"
_O_VALUE_TYPE = f"{{{_ODS_OFFICE}}}value-type"
_O_STRING_VALUE = f"{{{_ODS_OFFICE}}}string-value"
_O_OTHER_VALUES = tuple(
    f"{{{_ODS_OFFICE}}}{a}" for a in ("value", "date-value", "time-value", "boolean-value")
)
_C_VALUE_TYPE = f"{{{_ODS_CALCEXT}}}value-type"


def _ods_error_cells(path: Path, sheet: str, column: str, first_row: int) -> Iterator[tuple[int, str, str]]:
    """Error cells and formulas without a value in one ``.ods`` column that python-calamine reads as
    empty. ODF has no error value type: LibreOffice writes an error as an empty string
    (``office:value-type="string" office:string-value=""``) marked ``calcext:value-type="error"``,
    with the error shown in its text (``#N/A``); a formula cell with no value type at all was never
    calculated. ``content.xml`` is streamed (lxml iterparse: no DTD, no entities, no network), rows and
    columns counted with their ``number-rows-repeated`` / ``number-columns-repeated``."""
    from lxml import etree

    colx = _letter_index(column)
    with zipfile.ZipFile(path) as z, z.open("content.xml") as f:
        events = etree.iterparse(
            f,
            events=("start", "end"),
            tag=(_T_TABLE, _T_ROW),
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=True,
        )
        in_sheet = checked = False
        row = 0
        for event, elem in events:
            if not checked:  # the prolog is read by now: a document with a DTD is not looked at
                if elem.getroottree().docinfo.doctype:
                    raise ValueError("content.xml carries a DOCTYPE")
                checked = True
            if elem.tag == _T_TABLE:
                if event == "start":
                    in_sheet = elem.get(_T_NAME) == sheet
                    row = 0
                elif in_sheet:
                    return  # the sheet is read
                else:
                    elem.clear()
                continue
            if event == "start":
                continue
            repeat = int(elem.get(_T_ROWS_REPEATED, "1"))
            if in_sheet:
                found = _ods_cell_at(elem, colx)
                if found is not None and row + 1 >= first_row:
                    for n in range(row + 1, row + 1 + min(repeat, 1 << 20)):
                        reason, detail = found
                        yield n, reason, f"cell {column}{n} {detail}"
                row += repeat
            elem.clear(keep_tail=False)
            while elem.getprevious() is not None:  # the rows already read
                del elem.getparent()[0]


def _ods_cell_at(row: Any, colx: int) -> tuple[str, str] | None:
    """(reason, detail) when the row's cell in column ``colx`` reads as empty but is an error or an
    uncalculated formula; else None."""
    x = 0
    for cell in row:
        if cell.tag not in _T_CELLS:
            continue
        x += int(cell.get(_T_COLS_REPEATED, "1"))
        if x <= colx:
            continue
        if not _ods_reads_blank(cell):
            return None
        if cell.get(_C_VALUE_TYPE) == "error":
            shown = "".join(cell.itertext()).strip()[:20] or "an error"
            return "error_cell", f"holds the error {shown}"
        if cell.get(_T_FORMULA) is not None and cell.get(_O_VALUE_TYPE) is None:
            return (
                "formula_without_value",
                "holds a formula whose value was never calculated (the workbook was saved by a tool "
                "that does not calculate): open and save it in a spreadsheet program, or paste the values",
            )
        return None
    return None


def _ods_reads_blank(cell: Any) -> bool:
    """Whether python-calamine reads this cell as empty (its ``get_datatype``: a value attribute
    first, else the text of a string cell)."""
    if any(cell.get(a) is not None for a in _O_OTHER_VALUES):
        return False
    string_value = cell.get(_O_STRING_VALUE)
    if string_value is not None:
        return not string_value.strip()
    if cell.get(_O_VALUE_TYPE) == "string":
        return not "".join(cell.itertext()).strip()
    return True


_SCANNED: dict[str, Callable[[Path, str, str, int], Iterator[tuple[int, str, str]]]] = {
    ".xlsx": _blank_looking_cells,
    ".xlsm": _blank_looking_cells,
    ".xls": _xls_error_cells,
    ".ods": _ods_error_cells,
}
"""The workbook formats whose blank-looking cells are looked at again (``.xlsb``: no reader that keeps
error cells is used; they count as blank)."""


_BOMS = (  # UTF-32 first: its little-endian mark begins with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode_text(data: bytes, name: str, error: type[DuisgwError], workbook_hint: str) -> str:
    """An operator's text file (csv, list) as text: by its byte-order mark (UTF-8, UTF-16 as Excel's
    "Unicode Text" writes, UTF-32), else UTF-8, else Windows-1252. A workbook or a file with many NUL
    bytes (UTF-16 without a mark, a binary file) raises ``error``: decoded as text, every row of it
    would be rejected."""
    if data.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        kind = "zip" if data[:1] == b"P" else "OLE"
        raise error(f"{name}: a workbook ({kind}), not text: {workbook_hint}")
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as e:
                raise error(
                    f"{name}: not valid {encoding.upper()} after its byte-order mark (byte {e.start + len(bom)})"
                ) from None
    sample = data[:65536]
    if sample.count(0) * 10 > len(sample):
        raise error(f"{name}: not a text file (NUL bytes: UTF-16 without a byte-order mark, or binary)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _read_text(path: Path) -> str:
    return decode_text(
        path.read_bytes(), path.name, GuidImportError, "name it .xlsx (or use --format workbook)"
    )


def sniff_dialect(text: str, default: type[csv.Dialect]) -> type[csv.Dialect]:
    """Excel's csv dialect with the delimiter sniffed from the start of ``text`` (``,;\\t|``). Only the
    delimiter is taken: the sniffer also guesses ``'`` as the quote character when a note holds
    apostrophes, and then a cell starting with one swallowed the rows after it."""
    try:
        delimiter = csv.Sniffer().sniff(text[:65536], delimiters=",;\t|").delimiter
    except csv.Error:
        return default

    class Sniffed(csv.excel):
        pass

    Sniffed.delimiter = delimiter
    return Sniffed


class CsvLines:
    """The records of a csv reader, tracking the line each starts on (``start``): a quoted field may
    hold line breaks, so records and lines differ. Records spanning several lines are kept in
    ``spans`` as ``(record, first line, last line)`` (1-based); a :class:`csv.Error` (such as an
    unclosed quote running past the field size limit) is raised as ``error`` naming the line."""

    __slots__ = ("_reader", "error", "name", "spans", "start")

    def __init__(self, reader: Any, name: str, error: type[DuisgwError]) -> None:
        self._reader = reader
        self.name = name
        self.error = error
        self.start = 0
        self.spans: list[tuple[int, int, int]] = []

    def __iter__(self) -> Iterator[list[str]]:
        reader = self._reader
        it = iter(reader)
        prev = n = 0
        while True:
            try:
                rec = next(it)
            except StopIteration:
                return
            except csv.Error as e:
                raise self.error(f"{self.name}: line {reader.line_num}: {e}") from None
            n += 1
            end = reader.line_num
            if end - prev > 1:
                self.spans.append((n, prev + 1, end))
            self.start = prev + 1
            prev = end
            yield rec

    def line_of(self, record: int) -> int:
        """The line a record (1-based, as counted by this iterator) starts on."""
        spans = self.spans
        i = bisect_left(spans, (record,))
        # every span before record i adds its extra lines; spans are few next to the records
        return record + sum(last - first for _, first, last in islice(spans, i))

    def warnings(self) -> Iterator[tuple[int, str]]:
        """``(line, detail)`` for each record that spans lines."""
        for _, first, last in self.spans:
            yield (
                first,
                f"record spans lines {first}-{last}: a quoted field holds line breaks, or a quote is not "
                "closed and the lines after it were read as part of one field, not as rows",
            )


_SEP_LINE = re.compile(r"sep=([^\r\n\"])[ \t]*(?:\r\n|\n|\r)", re.IGNORECASE)
"""Excel's delimiter line at the head of a csv file (``sep=;``); the line stays the file's first row."""


def _import_csv(path: Path, column: str | None, col: _Collector) -> None:
    text = _read_text(path)
    sep = _SEP_LINE.match(text)
    if sep is not None:
        # Excel's own directive (it writes and obeys "sep=;"): the sniffer, taking that line for a
        # record, could pick a comma of a note column and every row was one cell, all rejected

        class Declared(csv.excel):
            pass

        Declared.delimiter = sep.group(1)
        dialect: type[csv.Dialect] = Declared
    else:
        dialect = sniff_dialect(text, csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel)
    col.total = text.count("\n") + text.count("\r") - text.count("\r\n") + 1
    records = CsvLines(csv.reader(io.StringIO(text, newline=""), dialect), path.name, GuidImportError)
    it = iter(records)
    head = list(islice(it, max(HEADER_SCAN_ROWS, SAMPLE_ROWS)))
    layout = _detect_layout(head, column, path.name)
    if layout is None:
        raise GuidImportError(f"{path.name}: no EUI column found")
    start = 0 if layout.header_index is None else layout.header_index + 1
    rep = SheetReport(
        name=path.name,
        header_row=None if layout.header_index is None else layout.header_index + 1,
        column=str(layout.col + 1),
        header=layout.header,
    )
    col.report.sheets.append(rep)
    rejected_before = len(col.report.rejected)
    col.run(chain(head[start:], it), col=layout.col, first_row_number=start + 1, sheet=rep, sheet_name=None)
    # the collector numbered records; the report names lines (what an editor shows)
    if records.spans:
        report = col.report
        report.rejected[rejected_before:] = [
            dataclasses.replace(r, row=records.line_of(r.row)) for r in report.rejected[rejected_before:]
        ]
        if rep.header_row is not None:
            rep.header_row = records.line_of(rep.header_row)
        for line, detail in records.warnings():
            report.warn(line, "multiline_record", detail)


def _import_text(path: Path, col: _Collector) -> None:
    lines = _read_text(path).splitlines()
    col.total = len(lines)
    rep = SheetReport(name=path.name, header_row=None, column="1", header=None)
    col.report.sheets.append(rep)

    def cell(line: str) -> str:
        hash_at = line.find("#")
        return (line[:hash_at] if hash_at >= 0 else line).strip()

    # the first line with content may be a header naming the column (GUID, ESME EUI ...); the lines
    # before it are comments or blank
    start = 0
    first = next((i for i, line in enumerate(lines) if cell(line)), None)
    if first is not None:
        name = _norm_header(cell(lines[first]))
        if not _looks_like_eui(cell(lines[first])) and (
            name in _HEADER_NAMES or any(h in name for h in _HEADER_HINTS)
        ):
            rep.header_row, rep.header, start = first + 1, cell(lines[first]), first + 1

    def cells() -> Iterator[Sequence[object]]:
        for line in islice(lines, start, None):
            yield (cell(line),)

    col.run(cells(), col=0, first_row_number=start + 1, sheet=rep, sheet_name=None)


# --------------------------------------------------------------------------------------------
# the set


class GuidSet:
    """An immutable set of EUI-64 ints: sorted ``array('Q')``, binary-search membership (ScopeView)."""

    __slots__ = ("_data", "meta")

    def __init__(self, data: array[int], meta: GuidMeta | None = None) -> None:
        """``data`` must be a strictly increasing ``array('Q')`` (use :meth:`from_iterable` otherwise)."""
        if data.typecode != "Q" or data.itemsize != 8:
            raise TypeError("GuidSet needs an array('Q') of 8-byte items")
        self._data = data
        self.meta = meta

    @classmethod
    def from_iterable(cls, euis: Iterable[int], meta: GuidMeta | None = None) -> GuidSet:
        """Build from any EUI ints (duplicates and order do not matter)."""
        return cls(array("Q", sorted(set(euis))), meta)

    def with_meta(self, meta: GuidMeta) -> GuidSet:
        return GuidSet(self._data, meta)

    def __contains__(self, eui: object) -> bool:
        if type(eui) is not int:
            return False
        data = self._data
        i = bisect_left(data, eui)
        return i < len(data) and data[i] == eui

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[int]:
        return iter(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GuidSet) and self._data == other._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<GuidSet {len(self._data)} EUIs{' from ' + self.meta.source_name if self.meta else ''}>"

    @property
    def nbytes(self) -> int:
        """Bytes held by the EUI payload (8 per EUI)."""
        return len(self._data) * self._data.itemsize

    def formatted(self) -> Iterator[str]:
        return (format_eui(v) for v in self._data)

    # -- persistence -----------------------------------------------------------------------

    def to_bytes(self, meta: GuidMeta | None = None) -> bytes:
        m = meta or self.meta
        if m is None:
            raise ValueError("a persisted GUID set needs provenance (GuidMeta)")
        payload = self._data
        if sys.byteorder != "little":
            payload = array("Q", payload)
            payload.byteswap()
        body = payload.tobytes()
        name = m.source_name.encode("utf-8")
        ts = _to_micros(m.imported_at)
        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            0,
            len(name),
            len(self._data),
            ts,
            bytes.fromhex(m.source_sha256) if m.source_sha256 else bytes(32),
            hashlib.sha256(body).digest(),
        )
        pad = (-(len(header) + len(name))) % 8
        return b"".join((header, name, bytes(pad), body))

    def save(self, path: str | os.PathLike[str], meta: GuidMeta | None = None) -> None:
        """Write atomically (temp file + fsync + ``os.replace``); readers of ``path`` see the old file
        or the new one."""
        atomic_write_bytes(Path(path), self.to_bytes(meta))

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, *, verify_order: bool = True) -> GuidSet:
        mv = memoryview(data)
        if len(mv) < _HEADER.size:
            raise GuidFileError("file too short for a GUID list header")
        magic, version, _reserved, name_len, count, ts, src_sha, body_sha = _HEADER.unpack_from(mv)
        if magic != MAGIC:
            raise GuidFileError("not a duisgw GUID list (bad magic)")
        if version != FORMAT_VERSION:
            raise GuidFileError(f"unsupported GUID list format version {version}")
        name_end = _HEADER.size + name_len
        body_at = name_end + ((-name_end) % 8)
        if len(mv) != body_at + 8 * count:
            raise GuidFileError(f"size mismatch: {len(mv)} bytes for {count} EUIs (truncated or damaged)")
        body = mv[body_at:]
        if hashlib.sha256(body).digest() != body_sha:
            raise GuidFileError("payload digest mismatch (damaged file)")
        try:
            name = bytes(mv[_HEADER.size : name_end]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise GuidFileError("source name is not UTF-8") from e
        arr = array("Q")
        arr.frombytes(body)
        if sys.byteorder != "little":
            arr.byteswap()
        if (
            verify_order
            and count > 1
            and not all(a < b for a, b in zip(arr, islice(arr, 1, None), strict=False))
        ):
            raise GuidFileError("EUIs are not strictly increasing (damaged file)")
        meta = GuidMeta(
            source_name=name,
            source_sha256=src_sha.hex() if any(src_sha) else "",
            imported_at=_EPOCH + timedelta(microseconds=ts),
        )
        return cls(arr, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify_order: bool = True) -> GuidSet:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise GuidFileError(f"cannot read {path}: {e.strerror or e}") from e
        return cls.from_bytes(data, verify_order=verify_order)


def _to_micros(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("imported_at must be timezone-aware")
    delta = when - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one (with
    permissions ``mode`` when given, else those of a new temporary file: 0600)."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------------------------
# run-time replacement


class GuidRegistry:
    """Holds the GUID list in force and swaps in a replacement atomically (a ScopeView itself).

    Readers call ``eui in registry`` (or take ``registry.current`` once and use it): the reference
    is replaced only after the new set is completely built, so a reader never sees a partial list.
    """

    __slots__ = ("_current", "_generation", "_lock")

    def __init__(self, initial: GuidSet | None = None) -> None:
        self._current = initial if initial is not None else GuidSet(array("Q"))
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> GuidSet:
        return self._current

    @property
    def generation(self) -> int:
        """Incremented on every replacement."""
        return self._generation

    def replace(self, new: GuidSet) -> GuidSet:
        """Install ``new`` (already complete) and return the set it replaced."""
        with self._lock:
            old = self._current
            self._current = new
            self._generation += 1
            return old

    def load_file(self, path: str | os.PathLike[str]) -> GuidSet:
        """Load a persisted list completely, then swap it in; on any error the current list stays."""
        new = GuidSet.load(path)
        self.replace(new)
        return new

    def __contains__(self, eui: object) -> bool:
        return eui in self._current

    def __len__(self) -> int:
        return len(self._current)
