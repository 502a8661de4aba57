"""Scale-out on Redis: what the shared store costs, per decision and per instance.

``python bench/bench_scaleout.py [--quick]`` starts its own ``redis-server`` (free port, temporary
folder, no persistence) and measures, on the same synthetic stream (N ESMEs in the GUID list and the
inventory; A of them with an immediate activation, 11.3 request + response; then AD1s: about half
inside an activation window -> suppress, half in scope without one -> forward):

* ``engine+store``: decisions/s of ``DurableEngine`` on SQLite (the single-node default, the
  baseline) and of ``SharedEngine`` (Redis shared state + the instance's own SQLite store), both
  with group commit (B messages per ``submit_many``), evidence and AD1 phases separately;
* ``instances``: 1 then 3 ``SharedEngine`` instances as separate processes on one Redis, each fed
  its share of the AD1s (split by ESME), all started together: aggregate and per-instance msgs/s.

This machine has 2 cores shared with other work: 3 instances + Redis cannot show throughput
scaling here; the figures show the per-instance cost and that instances do not serialise on one
another beyond the CPU they share. Writes bench/out/scaleout.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(ROOT))

from gateway.engine import ActivationRequested, ActivationResponse, EngineConfig, Event, PowerOutage  # noqa: E402
from gateway.guids import GuidSet  # noqa: E402
from gateway.inventory import Inventory  # noqa: E402
from gateway.store import DurableEngine, SqliteStore  # noqa: E402
from gateway.store.redis_state import RedisStateConfig  # noqa: E402
from gateway.store.shared import SharedEngine  # noqa: E402

T0 = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
SUPPLIER = 0x90B3D51F30010000
ESME_BASE = 0x00DB120000000000
CH_BASE = 0x00DB130000000000
RAW = b"<sr:DCCAlertMessage>" + b"x" * 2000 + b"</sr:DCCAlertMessage>"


# ------------------------------------------------------------------------------------------ redis


class Redis:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        conf = self.folder / "redis.conf"
        conf.write_text(f'bind 127.0.0.1\nport {self.port}\ndir {self.folder}\nsave ""\nappendonly no\n'
                        'logfile "redis.log"\n')  # fmt: skip
        binary = "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise SystemExit("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------ stream


def world(n: int) -> tuple[GuidSet, Inventory]:
    inv = Inventory()
    for i in range(n):
        inv.learn(ESME_BASE + i, CH_BASE + i, f"{1_000_000_000_000 + i}", "Landis+Gyr", "E470")
    return GuidSet.from_iterable(ESME_BASE + i for i in range(n)), inv


def evidence(n_act: int) -> list[Event]:
    out: list[Event] = []
    for i in range(n_act):
        at = T0 + timedelta(seconds=i * 0.01)
        common = dict(arrival=at, verified=True)
        out.append(ActivationRequested(message_id=f"req-{i}", supplier=SUPPLIER, esme=ESME_BASE + i, counter=i,
                                       execution_time=None, is_cancellation=False, seen_at=at, **common))  # fmt: skip
        out.append(ActivationResponse(message_id=f"rsp-{i}", esme=ESME_BASE + i, supplier=SUPPLIER, counter=i,
                                      response_time=at + timedelta(seconds=30), result=0, **common))  # fmt: skip
    return out


def outages(n: int, n_act: int, count: int, tag: str, instances: int = 1, which: int = 0) -> list[Event]:
    """AD1s: even ones on an activated ESME (suppress), odd ones on one without (forward)."""
    out: list[Event] = []
    at = T0 + timedelta(minutes=5)
    for k in range(count):
        i = (k // 2) % n_act if k % 2 == 0 else n_act + (k * 7919) % (n - n_act)
        if i % instances != which:
            continue
        out.append(PowerOutage(message_id=f"ad1-{tag}-{k}", arrival=at, verified=True, ch=CH_BASE + i,
                               mpan=f"{1_000_000_000_000 + i}", start_time=at - timedelta(minutes=3)))  # fmt: skip
    return out


def feed(engine: DurableEngine | SharedEngine, events: Sequence[Event], batch: int, raw: bytes | None) -> float:
    t0 = time.perf_counter()
    for j in range(0, len(events), batch):
        engine.submit_many([(e, raw) for e in events[j : j + batch]])
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ runs


def engine_store(kind: str, url: str, folder: Path, n: int, n_act: int, count: int, batch: int) -> dict[str, float]:
    scope, inv = world(n)
    db = folder / f"{kind}-{time.monotonic_ns()}.sqlite3"
    store = SqliteStore(db, synchronous="FULL")
    cfg = EngineConfig()
    engine: DurableEngine | SharedEngine
    if kind == "sqlite":
        engine = DurableEngine(store, cfg, scope, inv)
    else:
        engine = SharedEngine(store, RedisStateConfig(url=url, instance=kind), cfg, scope, inv)
    ev = evidence(n_act)
    t_ev = feed(engine, ev, batch, None)
    ads = outages(n, n_act, count, kind)
    t_ad = feed(engine, ads, batch, RAW)
    conflicts = engine.state.conflicts if isinstance(engine, SharedEngine) else 0
    if isinstance(engine, SharedEngine):
        engine.close()
    else:
        store.close()
    return {"evidence_per_s": len(ev) / t_ev, "ad1_per_s": len(ads) / t_ad, "conflicts": conflicts}


def _instance(args: tuple[str, str, int, int, int, int, int, int, Any]) -> tuple[int, float]:
    url, folder, n, n_act, count, batch, instances, which, start = args
    scope, inv = world(n)
    store = SqliteStore(Path(folder) / f"i{instances}-{which}.sqlite3", synchronous="FULL")
    engine = SharedEngine(store, RedisStateConfig(url=url, instance=f"i{which}"), EngineConfig(), scope, inv)
    ads = outages(n, n_act, count, f"x{instances}", instances, which)
    start.wait()
    took = feed(engine, ads, batch, RAW)
    engine.close()
    return len(ads), took


def instances_run(url: str, folder: Path, k: int, n: int, n_act: int, count: int, batch: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(k) as pool:
            jobs = pool.map_async(_instance, [(url, str(folder), n, n_act, count, batch, k, w, start) for w in range(k)])
            time.sleep(0.5 + 0.02 * n / 1000)  # every instance built its world and connected
            t0 = time.perf_counter()
            start.set()
            results = jobs.get(timeout=600)
            wall = time.perf_counter() - t0
    total = sum(r[0] for r in results)
    return {
        "instances": k,
        "messages": total,
        "aggregate_per_s": total / wall,
        "per_instance_per_s": [r[0] / r[1] for r in results],
    }


def best(reps: int, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    runs = [fn() for _ in range(reps)]
    return {key: max(r[key] for r in runs) if key != "conflicts" else sum(r[key] for r in runs) for key in runs[0]}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = ap.parse_args(argv)
    n, n_act, count, batch, reps = (2_000, 500, 2_000, 64, 1) if args.quick else (20_000, 5_000, 20_000, 64, 2)
    redis = Redis()
    folder = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    try:
        results: dict[str, Any] = {"params": {"esmes": n, "activations": n_act, "ad1": count, "batch": batch},
                                   "cpus": os.cpu_count()}  # fmt: skip
        for kind in ("sqlite", "redis"):
            def run(kind: str = kind) -> dict[str, float]:
                redis.flush()
                return engine_store(kind, redis.url, folder, n, n_act, count, batch)

            results[kind] = best(reps, run)
        redis.flush()
        results["instances"] = []
        for k in (1, 3):
            redis.flush()
            results["instances"].append(instances_run(redis.url, folder, k, n, n_act, count, batch))
    finally:
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)
    sq, rd = results["sqlite"], results["redis"]
    print(f"{'engine+store (group commit, batch ' + str(batch) + ')':<44} {'evidence/s':>11} {'AD1/s':>9} {'vs sqlite':>10}")
    print(f"{'SQLite (single node, baseline)':<44} {sq['evidence_per_s']:>11,.0f} {sq['ad1_per_s']:>9,.0f} {'1.00':>10}")
    print(f"{'Redis shared state + local SQLite':<44} {rd['evidence_per_s']:>11,.0f} {rd['ad1_per_s']:>9,.0f} "
          f"{rd['ad1_per_s'] / sq['ad1_per_s']:>10.2f}")  # fmt: skip
    print()
    print(f"{'instances (processes, one Redis)':<34} {'aggregate/s':>12} {'per instance/s':>24}")
    one = results["instances"][0]["aggregate_per_s"]
    for row in results["instances"]:
        per = ", ".join(f"{x:,.0f}" for x in row["per_instance_per_s"])
        print(f"{row['instances']:<34} {row['aggregate_per_s']:>12,.0f} {per:>24}   x{row['aggregate_per_s'] / one:.2f}")
    OUT.mkdir(exist_ok=True)
    (OUT / "scaleout.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
