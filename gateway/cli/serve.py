"""``duisgw serve --config FILE``: run the inline gateway until SIGTERM/SIGINT (SIGHUP reloads).

Relative paths in FILE are resolved against the folder of FILE. ``mode = "pipeline"`` (default)
parses, verifies, correlates and decides; ``mode = "passthrough"`` records and forwards everything
unchanged. Exit 0 after a clean shutdown, 2 when the configuration or reference data is unusable (a
GUID list or inventory source that cannot be imported, or is not there at all, is not, while the last
good form imported from it is at hand: serve starts on that form and flags it stale).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the inline gateway service (DSP ingress, decisions, DNO delivery)"
    )
    p.add_argument("--config", "-c", type=Path, required=True, help="TOML configuration file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.errors import DuisgwError
    from gateway.service.config import ConfigError
    from gateway.service.serve import load_serve_config, serve

    try:
        cfg, base = load_serve_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"duisgw serve: {problem}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(cfg, base_dir=base))
    except DuisgwError as exc:
        print(f"duisgw serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"duisgw serve: {exc}", file=sys.stderr)
        return 2
    return 0
