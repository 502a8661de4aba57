"""``duisgw config check FILE`` / ``duisgw config default [--markdown]``: the service configuration."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def _check(args: argparse.Namespace) -> int:
    from gateway.service.config import check_config
    from gateway.service.serve import engine_problems

    # the service options and the [engine] policy (EngineConfig.from_mapping)
    problems = check_config(args.file, engine_validator=engine_problems)
    if problems:
        for p in problems:
            print(f"duisgw config: {p}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"{args.file}: ok")
    return 0


def _default(args: argparse.Namespace) -> int:
    from gateway.service.config import render_default_toml, render_markdown

    sys.stdout.write(render_markdown() if args.markdown else render_default_toml())
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="check or print the service configuration (TOML)")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a config file (exit 0 usable, 2 with every problem listed)")
    check.add_argument("file", help="TOML config file")
    check.add_argument("-q", "--quiet", action="store_true", help="print nothing when the file is usable")
    check.set_defaults(func=_check)
    default = sub.add_parser("default", help="print a complete config file with every option at its default")
    default.add_argument("--markdown", action="store_true", help="print the option reference (docs/CONFIG.md) instead")
    default.set_defaults(func=_default)
