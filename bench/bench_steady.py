"""The decision store two days on: ``python bench/bench_steady.py [--quick]``.

A gateway that has run for the engine's retention (2 days + the window) prunes, at each tick, the
idempotency keys of the traffic it received that long before. The other benchmarks run for minutes and
never get there. This one builds a store holding H messages (1.6 KB AD1 bytes each, at R msg/s of event
time), then drives live traffic through ``DurableEngine`` on copies of it, in batches of 32 with a tick at
each second of event time, in two cases measured in the same run:

* ``fresh`` (the baseline): the live traffic arrives at the same instants as the stored history, so no
  key is due for its prune;
* ``two days on``: the live traffic arrives ``keep_for`` after the history, so each tick prunes the keys of
  one second of it (R keys).

Reported per case: CPU and wall time per live message, the ticks' transactions (median, max), and the
restart before the live traffic (restoring the H stored idempotency keys: wall time per key); the ratios
are ``two days on`` against ``fresh``. Writes bench/out/steady.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(ROOT))

from gateway.engine import EngineConfig, PowerOutage, Tick  # noqa: E402
from gateway.guids import GuidSet  # noqa: E402
from gateway.inventory import Inventory  # noqa: E402
from gateway.store import DurableEngine, SqliteStore  # noqa: E402

T0 = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
CH = 0x00DBFF0000000000  # a hub no inventory row names: every AD1 is forwarded (the store's work is the same)
BATCH = 32


def _ad1(mid: str, at: datetime) -> PowerOutage:
    return PowerOutage(message_id=mid, arrival=at, verified=True, verification="ok", ch=CH, mpan=None,
                       start_time=at - timedelta(minutes=3, seconds=30))  # fmt: skip


def _engine(path: Path, config: EngineConfig) -> DurableEngine:
    return DurableEngine(SqliteStore(path), config, GuidSet.from_iterable(()), Inventory())


def build_history(path: Path, config: EngineConfig, count: int, rate: float, raw: bytes) -> None:
    d = _engine(path, config)
    for start in range(0, count, 512):
        d.submit_many([(_ad1(f"h{j:09d}", T0 + timedelta(seconds=j / rate)), raw)
                       for j in range(start, min(count, start + 512))])  # fmt: skip
    d.store.close()


def live(
    path: Path, config: EngineConfig, count: int, rate: float, raw: bytes, offset: timedelta, tag: str
) -> dict[str, Any]:
    """``count`` live AD1s at ``rate`` from ``T0 + offset``, a tick at each second of event time; first the
    restart that restores the stored history's idempotency keys (timed)."""
    t = time.perf_counter()
    d = _engine(path, config)
    restore = time.perf_counter() - t
    keys = len(d.engine._seen)
    base = T0 + offset
    ticks: list[float] = []
    next_tick = 1
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, count, BATCH):
        d.submit_many([(_ad1(f"{tag}{j:09d}", base + timedelta(seconds=j / rate)), raw)
                       for j in range(start, min(count, start + BATCH))])  # fmt: skip
        while (start + BATCH) / rate >= next_tick:
            t = time.perf_counter()
            d.submit(Tick(base + timedelta(seconds=next_tick)))
            ticks.append(time.perf_counter() - t)
            next_tick += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    d.store.close()
    return {"cpu_us_per_msg": cpu * 1e6 / count, "wall_us_per_msg": wall * 1e6 / count,
            "tick_ms": [round(x * 1e3, 3) for x in ticks], "restore_s": restore, "restored_keys": keys}  # fmt: skip


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="30,000 stored messages, 10,000 live, one repetition"
    )
    ap.add_argument("--history", type=int, default=None, help="messages in the store (default 100,000)")
    ap.add_argument("--live", type=int, default=None, help="live messages per case (default 30,000)")
    ap.add_argument("--rate", type=float, default=1000.0, help="messages per second of event time")
    ap.add_argument(
        "--reps", type=int, default=None, help="repetitions of each case, interleaved (default 2)"
    )
    args = ap.parse_args(argv)
    history = args.history or (30_000 if args.quick else 100_000)
    count = args.live or (10_000 if args.quick else 30_000)
    reps = args.reps or (1 if args.quick else 2)
    config = EngineConfig()
    raw = os.urandom(1200).hex().encode()[:1600]
    work = Path(tempfile.mkdtemp(prefix="bench-steady-"))
    try:
        base = work / "history.sqlite3"
        t = time.perf_counter()
        build_history(base, config, history, args.rate, raw)
        print(f"store: {history:,} messages ({base.stat().st_size >> 20} MiB) built in {time.perf_counter() - t:.1f} s",
              flush=True)  # fmt: skip
        cases = {"fresh": timedelta(0), "two days on": config.keep_for}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
        for rep in range(reps):
            for name, offset in cases.items():
                db = work / "run.sqlite3"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
                shutil.copyfile(base, db)
                runs[name].append(live(db, config, count, args.rate, raw, offset, f"l{rep}{name[0]}"))
    finally:
        shutil.rmtree(work)

    summary: dict[str, dict[str, float]] = {}
    for name, rs in runs.items():
        ticks = sorted(x for r in rs for x in r["tick_ms"])
        summary[name] = {
            "cpu_us_per_msg": min(r["cpu_us_per_msg"] for r in rs),
            "wall_us_per_msg": min(r["wall_us_per_msg"] for r in rs),
            "tick_median_ms": statistics.median(ticks),
            "tick_max_ms": ticks[-1],
            "restore_us_per_key": min(r["restore_s"] / max(1, r["restored_keys"]) for r in rs) * 1e6,
        }
    fresh, aged = summary["fresh"], summary["two days on"]
    print(f"\n{history:,} stored, {count:,} live messages per case at {args.rate:,.0f}/s of event time, "
          f"{reps} repetition(s), best of each")  # fmt: skip
    print(f"{'case':<14} {'CPU us/msg':>11} {'wall us/msg':>12} {'tick median ms':>15} {'tick max ms':>12} "
          f"{'restart us/key':>15}")  # fmt: skip
    for name, s in summary.items():
        print(f"{name:<14} {s['cpu_us_per_msg']:>11.1f} {s['wall_us_per_msg']:>12.1f} "
              f"{s['tick_median_ms']:>15.2f} {s['tick_max_ms']:>12.2f} {s['restore_us_per_key']:>15.1f}")  # fmt: skip
    ratios = {k: aged[k] / fresh[k] for k in ("cpu_us_per_msg", "wall_us_per_msg", "tick_median_ms")}
    print(f"two days on / fresh: CPU {ratios['cpu_us_per_msg']:.2f}x, wall {ratios['wall_us_per_msg']:.2f}x, "
          f"tick median {ratios['tick_median_ms']:.1f}x")  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"history": history, "live": count, "rate": args.rate, "reps": reps, "batch": BATCH,
              "python": sys.version.split()[0], "loadavg": os.getloadavg()[0], "cases": summary,
              "ratios": ratios, "runs": runs}  # fmt: skip
    (OUT / "steady.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
