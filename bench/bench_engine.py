"""Correlation engine throughput at MP102B scale: ``python bench/bench_engine.py [--quick]``.

World: N ESMEs (default 1.4 M) all in the GUID list (``gateway.guids.GuidSet``: sorted array('Q')),
an inventory of the same N ESME/CH/MPAN rows (``gateway.inventory``, imported from a generated CSV
cached under bench/out/), and A live activations (default 100 k: 11.3 request + response each).

Measured (each figure is the best of a few repetitions on fresh AD1 ids):

* ``floor``: the bare lookups an AD1 decision cannot avoid (CH -> ESMEs, MPAN -> ESMEs, scope
  membership, the activation index): the baseline the ratios are against;
* ``engine in memory``: ``Engine.handle(PowerOutage)`` for a mix of AD1s (about 45 % inside an
  activation window -> suppress, 45 % in scope without activation -> forward, 10 % unknown CH);
* ``activation evidence``: ``Engine.handle`` of 11.3 requests/responses (building the 100 k);
* ``durable, batched``: ``DurableEngine.submit_many`` on SQLite (WAL, synchronous FULL and NORMAL),
  2 KB original bytes per AD1, B messages per commit;
* ``durable, per message``: one commit (one fsync) per message, for comparison.

Targets (brief): in memory >= 50,000 decisions/s; SQLite batched >= 10,000/s.
Writes bench/out/engine.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(ROOT))

from gateway.engine import (  # noqa: E402
    ActivationRequested,
    ActivationResponse,
    Engine,
    EngineConfig,
    PowerOutage,
)
from gateway.guids import GuidSet  # noqa: E402
from gateway.inventory import Inventory, import_inventory_csv  # noqa: E402
from gateway.mpan import with_check_digit  # noqa: E402
from gateway.store import DurableEngine, SqliteStore  # noqa: E402
from gbcs.eui import format_eui  # noqa: E402

SEED = 102
T0 = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
SUPPLIER = 0x90B3D51F30010000
ESME_BASE = 0x00DB120000000000
CH_BASE = 0x00DB130000000000


def esme_of(i: int) -> int:
    return ESME_BASE + i * 3


def ch_of(i: int) -> int:
    return CH_BASE + i * 5


def mpan_of(i: int) -> str:
    return with_check_digit(f"{100_000_000_000 + i * 7:012d}")


def build_inventory(n: int) -> Inventory:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"engine_inventory_{n}_mpan-checked.csv"  # valid MPAN cores
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write("esme,comms_hub,mpxn,manufacturer,model\n")
            for i in range(n):
                f.write(f"{format_eui(esme_of(i))},{format_eui(ch_of(i))},{mpan_of(i)},Landis+Gyr,E470\n")
        tmp.replace(path)
    inv, report = import_inventory_csv(path)
    if len(inv) != n:
        raise SystemExit(f"inventory import kept {len(inv)} of {n} rows: {report.as_dict()}")
    return inv


def activation_events(rnd: random.Random, n: int, count: int) -> tuple[list[Any], list[int]]:
    """11.3 request + success response for ``count`` distinct ESMEs; returns events and the indexes."""
    chosen = rnd.sample(range(n), count)
    events: list[Any] = []
    for k, i in enumerate(chosen):
        at = T0 + timedelta(seconds=k * 0.5)
        events.append(
            ActivationRequested(
                message_id=f"req-{i}", arrival=at, verified=True, supplier=SUPPLIER, esme=esme_of(i), counter=k,
                execution_time=None, is_cancellation=False, seen_at=at,
            )
        )
        events.append(
            ActivationResponse(
                message_id=f"rsp-{i}", arrival=at + timedelta(seconds=20), verified=True, esme=esme_of(i),
                supplier=SUPPLIER, counter=k, response_time=at + timedelta(seconds=20), result=0,
            )
        )
    return events, chosen


def outage_events(rnd: random.Random, n: int, activated: list[int], count: int, tag: str, start_at: datetime) -> list[PowerOutage]:
    k_act = len(activated)
    out: list[PowerOutage] = []
    for j in range(count):
        r = rnd.random()
        if r < 0.45:  # inside the activation window of an activated ESME
            pos = rnd.randrange(k_act)
            i = activated[pos]
            start = T0 + timedelta(seconds=pos * 0.5 + 120)
            ch, mpan = ch_of(i), mpan_of(i)
        elif r < 0.90:  # in scope, no activation near
            i = rnd.randrange(n)
            start = start_at - timedelta(minutes=5)
            ch, mpan = ch_of(i), mpan_of(i)
        else:  # unknown comms hub
            ch, mpan, start = 0x00DBFF0000000000 + j, None, start_at
        out.append(
            PowerOutage(message_id=f"ad1-{tag}-{j}", arrival=start_at + timedelta(milliseconds=j), verified=True,
                        ch=ch, mpan=mpan, start_time=start)
        )
    return out


def best_rate(reps: int, count: int, run: Callable[[int], None]) -> tuple[float, float]:
    """Best of ``reps`` runs of ``run(rep)`` doing ``count`` operations: (wall rate, CPU rate).

    The CPU rate (``time.process_time``) is what the process achieved while it was running; on a
    shared machine the wall rate is lower by however much of a core other work took."""
    best_wall = best_cpu = float("inf")
    for rep in range(reps):
        gc.collect()
        w, c = time.perf_counter(), time.process_time()
        run(rep)
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return count / best_wall, count / best_cpu


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="140 k ESMEs, 10 k activations, fewer AD1s")
    ap.add_argument("--esmes", type=int, default=None)
    ap.add_argument("--activations", type=int, default=None)
    ap.add_argument("--batch", type=int, default=256, help="messages per commit in batched mode")
    args = ap.parse_args(argv)
    n = args.esmes or (140_000 if args.quick else 1_400_000)
    n_act = args.activations or (10_000 if args.quick else 100_000)
    n_ad1 = 20_000 if args.quick else 100_000
    n_durable = 10_000 if args.quick else 40_000
    rnd = random.Random(SEED)
    results: dict[str, Any] = {"esmes": n, "activations": n_act, "ad1_per_run": n_ad1, "batch": args.batch,
                               "python": sys.version.split()[0], "cpus": os.cpu_count(),
                               "loadavg_at_start": os.getloadavg()[0]}

    t = time.perf_counter()
    scope = GuidSet.from_iterable(esme_of(i) for i in range(n))
    inventory = build_inventory(n)
    results["world_build_s"] = round(time.perf_counter() - t, 2)
    print(f"world: {n:,} ESMEs in scope and inventory, built in {results['world_build_s']} s", flush=True)

    config = EngineConfig()
    act_events, activated = activation_events(rnd, n, n_act)
    after = act_events[-1].arrival + timedelta(minutes=1)
    rows: list[tuple[str, tuple[float, float]]] = []

    def load_activations(_: int) -> None:
        eng = Engine(config, scope, inventory)
        for ev in act_events:
            eng.handle(ev)

    evidence = best_rate(2, len(act_events), load_activations)

    for gc_mode in ("default", "frozen"):
        engine = Engine(config, scope, inventory)
        for ev in act_events:
            engine.handle(ev)
        assert len(engine.activations()) == n_act
        if gc_mode == "frozen":
            gc.collect()
            gc.freeze()  # what a service does after loading its world: long-lived objects leave the GC's scans
        probe = outage_events(rnd, n, activated, n_ad1, f"floor-{gc_mode}", after)
        acts_by_esme = engine._acts_by_esme  # the engine's own index (read-only here)

        def floor_run(_: int, probe: list[PowerOutage] = probe, acts_by_esme: Any = acts_by_esme) -> None:
            for ev in probe:
                esmes = list(inventory.esmes_for_ch(ev.ch))
                if ev.mpan:
                    esmes.extend(inventory.esmes_for_mpan(ev.mpan))
                for e in esmes:
                    if e in scope:
                        acts_by_esme.get(e)

        batches = [outage_events(rnd, n, activated, n_ad1, f"mem-{gc_mode}-{r}", after) for r in range(3)]

        def engine_run(rep: int, engine: Engine = engine, batches: list[list[PowerOutage]] = batches) -> None:
            handle = engine.handle
            for ev in batches[rep]:
                handle(ev)

        if gc_mode == "default":
            rows.append(("floor: bare lookups per AD1 (baseline)", best_rate(3, n_ad1, floor_run)))
            rows.append((f"engine, {n_act:,} activation evidence events", evidence))
        rows.append((f"engine in memory, AD1 decisions, gc {gc_mode}", best_rate(3, n_ad1, engine_run)))
        tally: dict[str, int] = {}
        for ev in batches[0]:
            d = engine.decision_for(ev.message_id)
            assert d is not None
            tally[d.reason.value] = tally.get(d.reason.value, 0) + 1
        results["decision_mix"] = tally
        del engine, batches, probe, acts_by_esme
        gc.unfreeze()
        gc.collect()

    raw = rnd.randbytes(2048)
    work = Path(tempfile.mkdtemp(dir=OUT))
    base = work / "base.sqlite3"
    store = SqliteStore(base)
    primer = DurableEngine(store, config, scope, inventory)
    w, c = time.perf_counter(), time.process_time()
    for i in range(0, len(act_events), 1024):
        primer.submit_many([(ev, None) for ev in act_events[i : i + 1024]])
    rows.append(("SQLite FULL, evidence events, 1024/commit", (len(act_events) / (time.perf_counter() - w),
                                                                 len(act_events) / (time.process_time() - c))))
    store.close()
    del primer
    gc.collect()
    restore_s: list[float] = []

    def durable(sync: str, batch: int, count: int, freeze: bool) -> tuple[float, float]:
        db = work / f"run-{sync}-{batch}-{freeze}.sqlite3"
        shutil.copyfile(base, db)
        store = SqliteStore(db, synchronous=sync)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        d = DurableEngine(store, config, scope, inventory)  # restart: restore 100 k activations
        restore_s.append(time.perf_counter() - t0)
        evs = outage_events(rnd, n, activated, count, f"dur-{sync}-{batch}-{freeze}", after)
        if freeze:
            gc.collect()
            gc.freeze()
        w, c = time.perf_counter(), time.process_time()
        for i in range(0, count, batch):
            d.submit_many([(ev, raw) for ev in evs[i : i + batch]])
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        store.close()
        gc.unfreeze()
        db.unlink()
        return count / wall, count / cpu

    rows.append((f"SQLite FULL, {args.batch}/commit, gc default", durable("FULL", args.batch, n_durable, False)))
    rows.append((f"SQLite FULL, {args.batch}/commit, gc frozen", durable("FULL", args.batch, n_durable, True)))
    rows.append(("SQLite FULL, 1024/commit, gc frozen", durable("FULL", 1024, n_durable, True)))
    rows.append((f"SQLite NORMAL, {args.batch}/commit, gc frozen", durable("NORMAL", args.batch, n_durable, True)))
    rows.append(("SQLite FULL, 1 message/commit", durable("FULL", 1, 300 if args.quick else 1000, True)))
    shutil.rmtree(work)
    results["restore_s"] = [round(x, 2) for x in restore_s]
    print(f"restart (restore {n_act:,} activations from SQLite): {min(restore_s):.2f} s", flush=True)

    floor = rows[0][1][0]
    memory = rows[2][1][0]
    print(f"\n{'measurement':<46} {'wall /s':>10} {'CPU /s':>10} {'vs floor':>9} {'vs memory':>10}")
    for name, (wall, cpu) in rows:
        print(f"{name:<46} {wall:>10,.0f} {cpu:>10,.0f} {wall / floor:>9.2f} {wall / memory:>10.2f}")
    print(f"\ndecision mix: {results['decision_mix']}   load average at start: {results['loadavg_at_start']:.1f}")
    results["rows"] = [{"name": name, "wall_per_s": round(w), "cpu_per_s": round(c)} for name, (w, c) in rows]
    best_memory = max(rows[2][1][0], rows[3][1][0])
    best_sqlite = max(r[1][0] for r in rows if r[0].startswith("SQLite FULL, ") and "/commit, gc" in r[0])
    results["targets"] = {"in_memory": 50_000, "sqlite_batched": 10_000}
    results["met_wall"] = {"in_memory": best_memory >= 50_000, "sqlite_batched": best_sqlite >= 10_000}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "engine.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"targets (wall): in memory >= 50,000/s {'met' if results['met_wall']['in_memory'] else 'NOT met'} "
          f"({best_memory:,.0f}); SQLite FULL batched >= 10,000/s "
          f"{'met' if results['met_wall']['sqlite_batched'] else 'NOT met'} ({best_sqlite:,.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
