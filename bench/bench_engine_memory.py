"""Memory the correlation engine keeps per decided AD1 (``python bench/bench_engine_memory.py [--quick]``).

The engine keeps every message's idempotency key for its retention period (default 2 days + the
activation window), and a suppressed AD1's outage record as long (restoration alerts pair with it). This
measures what that costs in memory, so that a gateway can be sized for its traffic: AD1s decided on an
engine that holds live activations, the events themselves freed afterwards, memory traced with
``tracemalloc``. Two runs: AD1s forwarded (no activation near their meter) and AD1s suppressed (inside an
activation window). Baseline in the same run: the message ids alone in a ``set`` (what any idempotency
check must keep at least). Message ids are formed as the DCC forms them (about 60 characters). JSON in ``bench/out/engine_memory.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import sys
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_engine as be  # noqa: E402

from gateway.duis.values import MessageId  # noqa: E402
from gateway.engine import Engine, EngineConfig  # noqa: E402
from gateway.guids import GuidSet  # noqa: E402

UNKNOWN_CH = 0x00DBFF0000000000  # bench_engine's comms hubs outside the inventory start here
DCC = 0x90B3D51F30010000  # an AD1's originator (the DCC) and a DNO's User ID as its target
DNO = 0x00DB123456789012


def traced(run: Any) -> int:
    """Bytes still allocated after ``run()`` (its garbage collected), as tracemalloc counts them."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = run()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return after - before


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20,000 AD1s per run instead of 100,000")
    a = ap.parse_args(argv)
    n_esmes, n_acts = 20_000, 5_000
    n_ad1 = 20_000 if a.quick else 100_000
    scope = GuidSet.from_iterable(be.esme_of(i) for i in range(n_esmes))
    inventory = be.build_inventory(n_esmes)
    rnd = random.Random(be.SEED)
    acts, activated = be.activation_events(rnd, n_esmes, n_acts)
    activated_hubs = {be.ch_of(i) for i in activated}
    after = acts[-1].arrival + timedelta(minutes=1)
    results: dict[str, Any] = {
        "esmes": n_esmes,
        "activations": n_acts,
        "ad1_per_run": n_ad1,
        "quick": a.quick,
    }
    print(f"engine memory per decided AD1 ({n_ad1:,} AD1s per run; {n_acts:,} live activations; tracemalloc)")
    for mode in ("forwarded", "suppressed"):
        engine = Engine(EngineConfig(), scope, inventory)
        for ev in acts:
            engine.handle(ev)
        pool = be.outage_events(rnd, n_esmes, activated, 4 * n_ad1, mode, after)
        want_suppressed = mode == "suppressed"
        chosen = [p for p in pool if p.ch < UNKNOWN_CH and (p.ch in activated_hubs) == want_suppressed][
            :n_ad1
        ]
        del pool
        if len(chosen) < n_ad1:
            raise SystemExit(f"only {len(chosen)} {mode} AD1s generated")
        actions: dict[str, int] = {}

        def decide(
            chosen: list[Any] = chosen, engine: Engine = engine, actions: dict[str, int] = actions
        ) -> None:
            """Each AD1 made here (its DUIS message id as the DCC forms it: originator:target:counter, ~60
            characters), decided, then dropped: what stays allocated is what the engine keeps."""
            for k, p in enumerate(chosen):
                ev = dataclasses.replace(p, message_id=str(MessageId(DCC, DNO, 1_000_000_000_000 + k)))
                for eff in engine.handle(ev):
                    action = getattr(eff, "action", None)
                    if action is not None:
                        actions[str(action.value)] = actions.get(str(action.value), 0) + 1

        engine_bytes = traced(decide)
        baseline = traced(lambda: {str(MessageId(DCC, DNO, 1_000_000_000_000 + k)) for k in range(n_ad1)})
        per, base = engine_bytes / n_ad1, baseline / n_ad1
        results[mode] = {"bytes_per_ad1": round(per), "id_set_bytes_per_ad1": round(base), "actions": actions}
        print(f"  {mode:10} {per:6.0f} B per AD1 kept by the engine; the ids alone in a set: {base:4.0f} B "
              f"({per / base:.1f}x); decisions {actions}")  # fmt: skip
    day = 1_000_000
    fwd, sup = results["forwarded"]["bytes_per_ad1"], results["suppressed"]["bytes_per_ad1"]
    retention = EngineConfig().retention
    assert retention is not None
    days = retention.total_seconds() / 86400
    print(f"  sizing: 1,000,000 AD1s a day, all forwarded, kept {days:.2f} days: {fwd * day * days / 2**30:.2f} GiB; "
          f"all suppressed: {sup * day * days / 2**30:.2f} GiB")  # fmt: skip
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "engine_memory.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
