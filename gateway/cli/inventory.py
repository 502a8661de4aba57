"""``duisgw inventory``: load an ESME/Comms Hub/MPAN snapshot CSV and query it.

``duisgw inventory import FILE [--out CSV]`` prints a JSON report (rows, accepted, duplicates, learned rows and
hubs' ends of an export, rows of other device types skipped, per type, rejected rows with numbers and reasons);
``--out`` re-exports the normalised inventory (its ESMEs, and the learned facts and hubs' ends of a file that is
itself an export: :meth:`gateway.inventory.Inventory.to_csv_text`, which loads back to the same state).
``duisgw inventory lookup FILE --ch EUI | --mpan N | --esme EUI`` prints what is known; exit 1 when
nothing is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.errors import DuisgwError
from gateway.inventory import Inventory, import_inventory_csv
from gbcs.eui import EUIError, format_eui, parse_eui

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("inventory", help="ESME <-> Comms Hub <-> MPAN inventory: import, lookup")
    sub = p.add_subparsers(dest="inventory_command", metavar="ACTION", required=True)

    imp = sub.add_parser("import", help="load a snapshot CSV and print a JSON report")
    imp.add_argument("file", type=Path)
    imp.add_argument("--out", type=Path, metavar="CSV", help="write the normalised inventory (atomically)")
    imp.add_argument("--max-rejects", type=int, default=50, metavar="N")
    imp.set_defaults(func=_import)

    look = sub.add_parser("lookup", help="which ESMEs sit behind a CH / serve an MPAN; an ESME's links")
    look.add_argument("file", type=Path)
    which = look.add_mutually_exclusive_group(required=True)
    which.add_argument("--ch", metavar="EUI")
    which.add_argument("--mpan", metavar="N")
    which.add_argument("--esme", metavar="EUI")
    look.set_defaults(func=_lookup)


def _load(path: Path, max_rejects: int, cmd: str) -> tuple[Inventory, dict[str, Any]] | None:
    try:
        inv, report = import_inventory_csv(path, max_rejects=max(0, max_rejects))
    except (DuisgwError, OSError) as e:
        print(f"duisgw inventory {cmd}: {e}", file=sys.stderr)
        return None
    return inv, report.as_dict()


def _import(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    loaded = _load(args.file, args.max_rejects, "import")
    if loaded is None:
        return 2
    inv, report = loaded
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["structure_bytes"] = inv.nbytes
    if args.out is not None:
        try:
            inv.save_csv(args.out)
        except OSError as e:
            print(f"duisgw inventory import: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
            return 2
        report["out"] = str(args.out)
    print(json.dumps(report, indent=2))
    return 0 if len(inv) else 1


def _describe(inv: Inventory, esme: int) -> dict[str, Any]:
    ch = inv.ch_for_esme(esme)
    return {
        "esme": format_eui(esme),
        "comms_hub": None if ch is None else format_eui(ch),
        "mpxn": inv.mpan_for_esme(esme),
        "manufacturer": inv.manufacturer_of(esme),
        "model": inv.model_of(esme),
    }


def _lookup(args: argparse.Namespace) -> int:
    try:
        ch = parse_eui(args.ch) if args.ch is not None else None
        esme = parse_eui(args.esme) if args.esme is not None else None
    except EUIError as e:
        print(f"duisgw inventory lookup: {e}", file=sys.stderr)
        return 2
    loaded = _load(args.file, 0, "lookup")
    if loaded is None:
        return 2
    inv, _ = loaded
    result: dict[str, Any]
    if ch is not None:
        esmes = inv.esmes_for_ch(ch)
        result = {"comms_hub": format_eui(ch), "esmes": [_describe(inv, e) for e in esmes]}
    elif esme is not None:
        esmes = (esme,) if esme in inv else ()
        result = {"esme": format_eui(esme), "found": bool(esmes)}
        if esmes:
            result |= _describe(inv, esme)
    else:
        esmes = inv.esmes_for_mpan(args.mpan)
        result = {"mpxn": args.mpan.strip(), "esmes": [_describe(inv, e) for e in esmes]}
    print(json.dumps(result, indent=2))
    return 0 if esmes else 1
