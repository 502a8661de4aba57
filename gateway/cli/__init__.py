"""The ``duisgw`` command line.

Each sub-command lives in its own module in this package and exposes
``register(subparsers) -> None``; the module adds its parser and sets ``func`` (a callable taking
the parsed namespace and returning the exit code). Modules are discovered, so adding a command
touches no shared file. Exit codes across commands: 0 ok, 1 a negative result (invalid, failed
verification), 2 unusable input or arguments (one-line reason on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import gateway

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duisgw", description="DUIS/GBCS inline gateway for GB smart metering (SEC MP102B)."
    )
    parser.add_argument("--version", action="version", version=f"duisgw {gateway.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("duisgw: interrupted", file=sys.stderr)
        return 130
