"""``duisgw guids``: import the MP102B GUID list and check EUIs against it.

``duisgw guids import FILE [--sheet NAME]... [--column NAME] [--out PATH]`` prints a JSON report
(rows read, accepted, rejected with row numbers and reasons, duplicates, seconds) and, with
``--out``, writes the compact binary list the gateway loads at start-up.
``duisgw guids check PATH EUI...`` answers, per EUI, whether it is on the list (PATH: a binary list
or any importable source); exit 0 when all are, 1 when any is not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import DuisgwError
from gateway.guids import MAGIC, GuidMeta, GuidSet, ProgressFn, import_guids
from gbcs.eui import EUIError, format_eui, parse_eui

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("guids", help="MP102B GUID list: import a workbook/csv/text, check EUIs")
    sub = p.add_subparsers(dest="guids_command", metavar="ACTION", required=True)

    imp = sub.add_parser("import", help="import a GUID list and print a JSON report")
    imp.add_argument("file", type=Path, help=".xlsx/.xls/.ods workbook, .csv/.tsv, or text (one EUI a line)")
    imp.add_argument(
        "--sheet",
        action="append",
        default=None,
        metavar="NAME",
        help="worksheet to read (repeatable; default: every visible worksheet with an EUI column)",
    )
    imp.add_argument("--column", metavar="NAME", help="header name or column letter of the EUI column")
    imp.add_argument("--out", type=Path, metavar="PATH", help="write the binary list here (atomically)")
    imp.add_argument(
        "--numeric-cells",
        choices=("reject", "recover"),
        default="reject",
        help=(
            "cells Excel stored as numbers: reject (default) or recover exact values below 10**15 (only "
            "for EUIs typed as decimal digits: one Excel read as scientific notation, 00000000001E0003, "
            "comes back as another EUI)"
        ),
    )
    imp.add_argument(
        "--max-rejects", type=int, default=50, metavar="N", help="rejected rows listed (default 50)"
    )
    imp.add_argument("--format", choices=("auto", "workbook", "csv", "text"), default="auto")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    imp.set_defaults(func=_import)

    chk = sub.add_parser("check", help="is each EUI on the list? (exit 1 when any is not)")
    chk.add_argument("path", type=Path, help="binary list written by 'guids import --out', or a source file")
    chk.add_argument("euis", nargs="+", metavar="EUI")
    chk.set_defaults(func=_check)


def progress_bar(stream: Any = None) -> ProgressFn:
    """A one-line progress bar on ``stream`` (stderr), redrawn in place."""
    out = stream if stream is not None else sys.stderr

    def draw(done: int, total: int | None) -> None:
        if total:
            frac = min(1.0, done / total)
            bar = "#" * int(frac * 30)
            out.write(f"\r[{bar:<30}] {frac:6.1%} {done:,}/{total:,} rows")
        else:
            out.write(f"\r{done:,} rows")
        out.flush()

    return draw


def _import(args: argparse.Namespace) -> int:
    show = not args.no_progress and sys.stderr.isatty()
    t0 = time.perf_counter()
    try:
        guids, report = import_guids(
            args.file,
            sheets=args.sheet,
            column=args.column,
            numeric_cells=args.numeric_cells,
            max_rejects=max(0, args.max_rejects),
            progress=progress_bar() if show else None,
            fmt=args.format,
        )
    except DuisgwError as e:
        if show:
            sys.stderr.write("\n")
        print(f"duisgw guids import: {e}", file=sys.stderr)
        return 2
    if show:
        sys.stderr.write("\n")
    result = report.as_dict()
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if args.out is not None:
        meta = GuidMeta(args.file.name, report.source_sha256, datetime.now(UTC))
        try:
            guids.save(args.out, meta)
        except OSError as e:
            print(f"duisgw guids import: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
            return 2
        result["out"] = str(args.out)
        result["imported_at"] = meta.imported_at.isoformat()
    print(json.dumps(result, indent=2))
    return 0 if report.unique else 1


def _load_any(path: Path) -> GuidSet:
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
    if magic == MAGIC:
        return GuidSet.load(path)
    return import_guids(path)[0]


def _check(args: argparse.Namespace) -> int:
    try:
        wanted = [(text, parse_eui(text)) for text in args.euis]
    except EUIError as e:
        print(f"duisgw guids check: {e}", file=sys.stderr)
        return 2
    try:
        guids = _load_any(args.path)
    except (DuisgwError, OSError) as e:
        print(f"duisgw guids check: {e}", file=sys.stderr)
        return 2
    answers = {format_eui(eui): eui in guids for _, eui in wanted}
    print(json.dumps({"list": str(args.path), "size": len(guids), "in_list": answers}, indent=2))
    return 0 if all(answers.values()) else 1
