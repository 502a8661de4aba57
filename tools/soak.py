"""The fault suite's soak at full size: ``python tools/soak.py --messages 100000 --kills 20 --seed N``.

Streams seeded, signed DUIS traffic through a real ``python -m gateway serve`` process to a DNO
receiver and a real mosquitto while killing (SIGKILL) and freezing (SIGSTOP) the gateway, stopping
the DNO receiver for long stretches and restarting the broker; then reconciles every acknowledged
message against the audit store and the receiver (tests/reliability/soakkit.py; docs/RELIABILITY.md
"Fault suite"). Prints the figures, writes them as JSON (``--json``, default
``bench/out/soak.json``), and exits 1 when a message was lost or decided twice.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

from soakkit import dump, run_soak  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000, help="distinct messages to send (default 100000)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILL + restart of the gateway (default 20)")
    p.add_argument("--seed", type=int, default=1, help="seed of the traffic and of the fault positions")
    p.add_argument("--concurrency", type=int, default=8, help="parallel DSP connections (default 8)")
    p.add_argument("--no-mqtt", action="store_true", help="run without the broker (MQTT egress off)")
    p.add_argument("--workdir", type=Path, help="keep the run here (default: a temporary folder, removed)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "soak.json", help="figures as JSON")
    args = p.parse_args(argv)
    if args.messages < 1 or args.kills < 0:
        p.error("--messages must be positive and --kills not negative")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="duisgw-soak-"))
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f} s] {text}", flush=True)

    try:
        figures, _plan = run_soak(work, messages=args.messages, kills=args.kills, seed=args.seed,
                                  concurrency=args.concurrency, mqtt=not args.no_mqtt, progress=say)  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"soak: --messages {args.messages} --kills {args.kills} --seed {args.seed}")
    print(figures.table())
    dump(figures, args.json, seed=args.seed, requested_messages=args.messages, requested_kills=args.kills)
    print(f"figures written to {args.json}")
    bad = figures.lost or figures.decided_twice or figures.suppressed_delivered or figures.bytes_altered
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
