"""``duisgw config check FILE`` / ``duisgw config default [--markdown]``: the service configuration."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


CHECKED = (
    "checked what `duisgw serve` checks before it starts: every option, the [engine] policy and the "
    "pipeline's requirements; the certificates, GBCS keys, GUID list and inventory are read when it starts"
)


def _check(args: argparse.Namespace) -> int:
    from gateway.service.config import ConfigError
    from gateway.service.serve import load_serve_config, reference_source_warnings

    # the very validation of ``duisgw serve`` (service options, [engine] policy, pipeline requirements),
    # so that "ok" means serve accepts the file
    try:
        cfg, _base = load_serve_config(args.file)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"duisgw config: {p}", file=sys.stderr)
        return 2
    # accepted, but serve would start on stale reference data: a GUID list or inventory source that is
    # not there, whose last good form stands in (said even with --quiet)
    for warning in reference_source_warnings(cfg):
        print(f"duisgw config: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(f"{args.file}: ok ({CHECKED})")
    return 0


def _default(args: argparse.Namespace) -> int:
    from gateway.service.config import render_default_toml, render_markdown

    sys.stdout.write(render_markdown() if args.markdown else render_default_toml())
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="check or print the service configuration (TOML)")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="validate a config file as `duisgw serve` does (exit 0 usable, 2 with every problem listed)",
    )
    check.add_argument("file", help="TOML config file")
    check.add_argument("-q", "--quiet", action="store_true", help="print nothing when the file is usable")
    check.set_defaults(func=_check)
    default = sub.add_parser("default", help="print a complete config file with every option at its default")
    default.add_argument(
        "--markdown", action="store_true", help="print the option reference (docs/CONFIG.md) instead"
    )
    default.set_defaults(func=_default)
