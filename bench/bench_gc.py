"""Garbage-collector pauses of a gateway holding MP102B-scale state: ``python bench/bench_gc.py [--quick]``.

World (as in ``bench_engine.py``): N ESMEs (default 1.4 M) in the GUID list and the inventory, and A
activations (default 100 k) handled by the engine, which is what ``duisgw serve`` restores at
start-up. The gateway's own modules (service, aiohttp, lxml, cryptography) are imported too.

Measured, in one process:

* ``full collection``: ``gc.collect()`` as Python runs it when generation 2's threshold trips. Every
  thread waits for it, the event loop included, so it lands on the latency of in-flight messages;
* the same after :func:`gateway.service.serve.settle_heap` (one collection, then ``gc.freeze()``),
  which ``duisgw serve`` runs after start-up and after each reload;
* the same after a further 20,000 AD1 decisions (what is scanned is what arrived since the freeze);
* the collections Python itself runs while ``--grow N`` (default 300,000; 1,000,000 in the docs) more
  forwarded AD1s are decided after the freeze, each a distinct idempotency key kept for the retention
  (a tick every 1,000): when each generation-2 collection ran and how long it took (a ``gc.callbacks``
  probe), and a full collection's pause at the end. Whatever tracked containers a gateway accumulates
  between two settles is scanned by every such collection; the idempotency keys are packed into
  untracked tuples (``gateway.engine.state.PackedSeen``), so they add none.

Each full-collection figure is the best of 5 collections. Writes bench/out/gc.json.
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


def grow(engine: Engine, count: int, start: Any) -> list[tuple[int, float, int]]:
    """Decide ``count`` forwarded AD1s (a hub no inventory row names), a tick every 1,000; every
    generation-2 collection Python runs meanwhile: (AD1s decided by then, its pause in ms, keys kept)."""
    from gateway.engine import PowerOutage, Tick

    seen: list[tuple[int, float, int]] = []
    began = [0.0]
    decided = [0]

    def probe(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                seen.append((decided[0], (time.perf_counter() - began[0]) * 1e3, len(engine._seen)))

    gc.callbacks.append(probe)
    try:
        for j in range(count):
            at = start + timedelta(milliseconds=j)
            engine.handle(PowerOutage(message_id=f"90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:{j}|DCCAlertMessage.AD1",
                                      arrival=at, verified=True, verification="ok", ch=0x00DBFF0000000000 + j % 1000,
                                      mpan=None, start_time=at - timedelta(minutes=4)))  # fmt: skip
            decided[0] = j + 1
            if j % 1000 == 999:
                engine.handle(Tick(at))
    finally:
        gc.callbacks.remove(probe)
    return seen


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="140 k ESMEs, 10 k activations")
    ap.add_argument("--activations", type=int, default=None)
    ap.add_argument("--grow", type=int, default=300_000, metavar="N", help="AD1s decided after the freeze (0: none)")
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
    grown = grow(engine, args.grow, after) if args.grow else []
    if args.grow:
        rows.append((f"... after {args.grow:,} more (keys kept)", full_collection_ms(), len(gc.get_objects())))
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    print(f"{'case':40} {'pause ms':>9} {'scanned objects':>16}")
    for name, ms, objs in rows:
        print(f"{name:40} {ms:9.2f} {objs:16,}")
    print(f"frozen objects: {frozen:,}; load average {os.getloadavg()[0]:.2f}")
    if args.grow:
        print(f"\ngeneration-2 collections run by Python while {args.grow:,} more AD1s were decided (after the freeze):")
        for decided, ms, live in grown:
            print(f"  after {decided:>9,} AD1s ({live:>9,} keys kept): {ms:7.1f} ms")
        if not grown:
            print("  none (nothing the new keys hold reached the oldest generation as a tracked container)")
    out: dict[str, Any] = {"esmes": n, "activations": n_act, "frozen": frozen,
                           "rows": [{"name": r[0], "pause_ms": round(r[1], 3), "scanned": r[2]} for r in rows],
                           "grow": [{"decided": d, "pause_ms": round(ms, 2), "keys": k} for d, ms, k in grown]}
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "gc.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
