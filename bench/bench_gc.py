"""Garbage-collector pauses of a gateway holding MP102B-scale state: ``python bench/bench_gc.py [--quick]``.

World (as in ``bench_engine.py``): N ESMEs (default 1.4 M) in the GUID list and the inventory, and A
activations (default 100 k) handled by the engine, which is what ``duisgw serve`` restores at
start-up. The gateway's own modules (service, aiohttp, lxml, cryptography) are imported too.

Measured, in one process:

* ``full collection``: ``gc.collect()`` as Python runs it when generation 2's threshold trips. Every
  thread waits for it, the event loop included, so it lands on the latency of in-flight messages;
* the same after :func:`gateway.service.serve.settle_heap` (one collection, then ``gc.freeze()``),
  which ``duisgw serve`` runs after start-up and after each reload;
* the same after a further 20,000 AD1 decisions (what is scanned is what arrived since the freeze).

Each figure is the best of 5 collections. Writes bench/out/gc.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_engine as be  # noqa: E402

import gateway.service.serve  # noqa: E402,F401  (the service's modules, as in duisgw serve)
from gateway.engine.config import EngineConfig  # noqa: E402
from gateway.engine.engine import Engine  # noqa: E402
from gateway.service.serve import settle_heap  # noqa: E402


def full_collection_ms() -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="140 k ESMEs, 10 k activations")
    ap.add_argument("--activations", type=int, default=None)
    args = ap.parse_args(argv)
    n = 140_000 if args.quick else 1_400_000
    n_act = args.activations or (10_000 if args.quick else 100_000)
    rnd = random.Random(be.SEED)
    t = time.perf_counter()
    scope = be.GuidSet.from_iterable(be.esme_of(i) for i in range(n))
    inventory = be.build_inventory(n)
    acts, activated = be.activation_events(rnd, n, n_act)
    engine = Engine(EngineConfig(), scope, inventory)
    for ev in acts:
        engine.handle(ev)
    after = acts[-1].arrival + timedelta(minutes=1)
    del acts
    print(f"world: {n:,} ESMEs, {n_act:,} activations, built in {time.perf_counter() - t:.1f} s")
    rows: list[tuple[str, float, int]] = []
    rows.append(("full collection, nothing frozen", full_collection_ms(), len(gc.get_objects())))
    settle_heap()
    rows.append(("full collection after settle_heap()", full_collection_ms(), len(gc.get_objects())))
    for ev in be.outage_events(rnd, n, activated, 20_000, "gc", after):
        engine.handle(ev)
    rows.append(("... after 20,000 more AD1 decisions", full_collection_ms(), len(gc.get_objects())))
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    print(f"{'case':40} {'pause ms':>9} {'scanned objects':>16}")
    for name, ms, objs in rows:
        print(f"{name:40} {ms:9.2f} {objs:16,}")
    print(f"frozen objects: {frozen:,}; load average {os.getloadavg()[0]:.2f}")
    out: dict[str, Any] = {"esmes": n, "activations": n_act, "frozen": frozen,
                           "rows": [{"name": r[0], "pause_ms": round(r[1], 3), "scanned": r[2]} for r in rows]}
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "gc.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
