"""``duisgw validate FILE [--schema XSD] [--explain]``: XSD-validate one DUIS document.

Without ``--schema`` the compact duisgw schema is used (see ``duis_schemas/README.md`` for where
operators get the official DUIS XSD). Exit 0 valid, 1 invalid (the reasons on stdout), 2 the
input or the schema is unusable, or the validator cannot judge the document (one-line reason on
stderr, a named error; no lxml exception escapes).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lxml import etree

from gateway.cli.decode import read_input
from gateway.duis.errors import DuisError, SchemaUnavailable
from gateway.duis.safexml import DEFAULT_MAX_BYTES, parse_xml
from gateway.duis.schema import explain, load_schema

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    try:
        data = read_input(args.file, args.max_bytes)
    except OSError as exc:
        print(f"duisgw validate: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except DuisError as exc:
        print(f"duisgw validate: {exc}", file=sys.stderr)
        return 2
    try:
        schema = load_schema(args.schema)
    except SchemaUnavailable as exc:
        print(f"duisgw validate: {exc}", file=sys.stderr)
        return 2
    try:
        root = parse_xml(data, max_bytes=args.max_bytes)
    except DuisError as exc:
        print(f"duisgw validate: {exc}", file=sys.stderr)
        return 2
    try:
        errors = schema.validate(root)
    except (DuisError, etree.Error) as exc:  # the validator could not judge the document
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        print(f"duisgw validate: {reason}", file=sys.stderr)
        return 2
    if not errors:
        print(f"valid ({schema.source})")
        return 0
    print(f"invalid ({schema.source}):")
    for line in errors:
        print(f"  {line}")
    if args.explain:
        try:
            reasons = explain(root, args.schema)
        except (DuisError, etree.Error) as exc:
            print(f"duisgw validate: --explain unavailable: {exc}", file=sys.stderr)
        else:
            print("explained:")
            for line in reasons:
                print(f"  {line}")
    return 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("validate", help="validate a DUIS document against the DUIS XSD")
    p.add_argument("file", metavar="FILE", help="DUIS XML file, or - for stdin")
    p.add_argument(
        "--schema", metavar="XSD", default=None, help="official DUIS XSD (default: compact schema)"
    )
    p.add_argument("--explain", action="store_true", help="add readable reasons (xmlschema; slow)")
    p.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="size cap in bytes (default 1 MiB)"
    )
    p.set_defaults(func=_run)
