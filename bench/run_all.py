"""Run every benchmark (``bench/bench_*.py``) one after the other: ``python bench/run_all.py [--quick]``.

Each benchmark prints its own table (figures with ratios against a baseline measured in the same run)
and writes JSON to ``bench/out/<area>.json``. This runner only sequences them and reports failures.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    extra = [a for a in argv if a == "--quick"]
    only = [a for a in argv if not a.startswith("-")]
    failures = []
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *extra])
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t0:.1f}s", flush=True)
        if rc:
            failures.append(name)
    if failures:
        print("failed:", ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
