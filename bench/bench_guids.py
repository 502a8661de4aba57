"""GUID list and inventory at MP102B scale: ``python bench/bench_guids.py [--quick] [--rows N]``.

Generates (and caches under bench/out/) a GUID workbook of N rows (default 1.4 M; Excel's
1,048,576-row limit means two sheets) with xlsxwriter in constant-memory mode, and an inventory CSV
of N meters. Each measurement runs in a fresh child process so RSS deltas are its own:

* GUID import (calamine -> GuidSet): seconds, RSS delta, peak RSS; set payload (tracemalloc);
  load of the persisted binary file; membership lookups/s (half hits, half misses).
* Baselines in the same run: a Python ``set`` of the EUI strings and a ``set`` of EUI ints
  (memory by tracemalloc, build time, lookups/s).
* Inventory CSV load: seconds, RSS delta, tracemalloc of the structure; lookups/s for
  esmes_for_ch / esmes_for_mpan / ch_for_esme; baseline: the same links in plain dicts.

Targets (brief): import <= 8 s, set <= 64 MB, inventory <= 200 MB. Figures go to bench/out/guids.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from itertools import islice
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(ROOT))

EXCEL_MAX_DATA_ROWS = 1_048_575  # 1,048,576 rows minus the header
SEED = 102


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mb(n: float) -> float:
    return round(n / 1e6, 1)


# ---------------------------------------------------------------------------------------------
# data


def euis(n: int) -> list[int]:
    """n distinct EUIs, clustered under a few OUIs like a manufacturer's estate."""
    rng = random.Random(SEED)
    prefixes = [0x001BC5 << 40, 0x70B3D5 << 40, 0x0012345 << 36]
    out: set[int] = set()
    while len(out) < n:
        out.add(rng.choice(prefixes) | rng.getrandbits(36))
    lst = sorted(out)
    rng.shuffle(lst)
    return lst


def spell(value: int, i: int) -> str:
    h = f"{value:016X}"
    k = i % 100
    if k < 90:
        return "-".join(h[j : j + 2] for j in range(0, 16, 2))
    if k < 95:
        return h.lower()
    if k < 98:
        return ":".join(h[j : j + 2] for j in range(0, 16, 2)).lower()
    return "  " + "-".join(h[j : j + 2] for j in range(0, 16, 2)) + " "


def make_workbook(n: int, wide: bool = False) -> Path:
    """One EUI column under a "Device ID" header (the GUID list as specified); ``wide`` adds two
    more columns (model, batch) to show what extra columns cost calamine."""
    path = OUT / (f"guids_{n}_wide.xlsx" if wide else f"guids_{n}.xlsx")
    if path.exists():
        return path
    import xlsxwriter  # type: ignore[import-untyped]

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.xlsx")
    t0 = time.perf_counter()
    wb = xlsxwriter.Workbook(str(tmp), {"constant_memory": True})
    values = euis(n)
    i = 0
    sheet_no = 0
    while i < n:
        sheet_no += 1
        ws = wb.add_worksheet(f"GUIDs {sheet_no}")
        ws.write_row(0, 0, ["Device ID", "Model", "Batch"] if wide else ["Device ID"])
        r = 1
        while i < n and r <= EXCEL_MAX_DATA_ROWS:
            ws.write_string(r, 0, spell(values[i], i))
            if wide:
                ws.write_string(r, 1, "E470")
                ws.write_number(r, 2, i // 10000)
            r += 1
            i += 1
    wb.close()
    os.replace(tmp, path)
    print(f"  generated {path.name} in {time.perf_counter() - t0:.1f}s", flush=True)
    return path


def make_inventory(n: int) -> Path:
    from gateway.mpan import with_check_digit

    path = OUT / f"inventory_{n}_mpan-checked.csv"  # valid MPAN cores (an older cache: bad ones)
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED + 1)
    values = euis(n)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write("ESME,Comms Hub,MPAN,Manufacturer,Model\n")
        ch = 0
        for i, esme in enumerate(values):
            # 5 % of hubs serve two ESMEs (twin-element / polyphase installs)
            if i % 20 != 1:
                ch = (0x90B3D5 << 40) | rng.getrandbits(40)
            mpan = with_check_digit(f"{100_000_000_000 + rng.getrandbits(42) % 899_999_999_999}")
            f.write(f"{spell(esme, 0)},{spell(ch, 0)},{mpan},Landis+Gyr,E470\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# child measurements (each in its own process)


def child_import(workbook: str, persisted: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    from gateway.guids import GuidMeta, import_guids

    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    c0 = time.process_time()
    guids, report = import_guids(workbook)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    gc.collect()
    rss1 = rss_bytes()
    meta = GuidMeta(Path(workbook).name, report.source_sha256, datetime.now(UTC))
    t1 = time.perf_counter()
    guids.save(persisted, meta)
    save_s = time.perf_counter() - t1
    return {
        "rows_read": report.rows_read,
        "accepted": report.accepted,
        "unique": report.unique,
        "rejected": report.rejected_count,
        "import_s": round(seconds, 2),
        "import_cpu_s": round(cpu, 2),
        "rows_per_s": round(report.rows_read / seconds),
        "rss_delta_mb": mb(rss1 - rss0),
        "peak_rss_mb": mb(peak_rss_bytes()),
        "set_payload_mb": mb(guids.nbytes),
        "save_s": round(save_s, 3),
        "file_mb": mb(Path(persisted).stat().st_size),
    }


def _probes(values: list[int], k: int) -> list[int]:
    rng = random.Random(SEED + 2)
    hits = rng.sample(values, k // 2)
    misses = [v ^ (1 << 37) for v in rng.sample(values, k - k // 2)]
    probes = hits + misses
    rng.shuffle(probes)
    return probes


def _rate(fn: Any, probes: list[Any]) -> tuple[float, int]:
    t0 = time.perf_counter()
    found = 0
    for p in probes:
        if fn(p):
            found += 1
    return len(probes) / (time.perf_counter() - t0), found


def child_load(persisted: str, n: int, lookups: int) -> dict[str, Any]:
    from gateway.guids import GuidSet

    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    guids = GuidSet.load(persisted)
    load_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    t0 = time.perf_counter()
    GuidSet.load(persisted, verify_order=False)
    load_noverify_s = time.perf_counter() - t0
    tracemalloc.start()
    again = GuidSet.load(persisted, verify_order=False)
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del again
    probes = _probes(euis(n), lookups)
    rate, found = _rate(guids.__contains__, probes)
    return {
        "load_s": round(load_s, 3),
        "load_noverify_s": round(load_noverify_s, 3),
        "load_rss_delta_mb": mb(rss1 - rss0),
        "set_traced_mb": mb(traced),
        "lookups_per_s": round(rate),
        "lookups_found": found,
    }


def child_baseline(n: int, lookups: int) -> dict[str, Any]:
    from gbcs.eui import format_eui

    values = euis(n)
    strings = [format_eui(v) for v in values]
    probes = _probes(values, lookups)
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    sset = {s.upper() for s in strings}  # new str objects, as an import would create
    build_str_s = time.perf_counter() - t0
    str_mb = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del strings
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    iset = {int(s.replace("-", ""), 16) for s in sset}
    build_int_s = time.perf_counter() - t0
    int_mb = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    str_probes = [format_eui(p) for p in probes]
    str_rate, _ = _rate(sset.__contains__, str_probes)
    int_rate, found = _rate(iset.__contains__, probes)
    return {
        "set_str_mb": mb(str_mb),
        "set_str_build_s": round(build_str_s, 2),
        "set_str_lookups_per_s": round(str_rate),
        "set_int_mb": mb(int_mb),
        "set_int_build_s": round(build_int_s, 2),
        "set_int_lookups_per_s": round(int_rate),
        "lookups_found": found,
    }


def _deep_size(inv: Any) -> int:
    """Bytes of every container the inventory keeps (arrays with their spare capacity, string tables)."""
    seen: set[int] = set()
    total = 0
    stack: list[Any] = [inv.__dict__]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__slots__") and not isinstance(obj, (str, int, float)):
            stack.extend(getattr(obj, a) for a in obj.__slots__)
    return total


def child_inventory(csv_path: str, lookups: int) -> dict[str, Any]:
    from gateway.inventory import import_inventory_csv

    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    c0 = time.process_time()
    inv, report = import_inventory_csv(csv_path)
    load_s = time.perf_counter() - t0
    cpu = time.process_time() - c0
    gc.collect()
    rss1 = rss_bytes()
    structure = inv.nbytes
    accounted = _deep_size(inv)
    rows = list(islice(inv.snapshot_rows(), max(1, lookups // 2)))
    rng = random.Random(SEED + 3)
    esmes = [r.esme for r in rows] + [r.esme ^ (1 << 37) for r in rows]
    chs = [r.ch for r in rows] + [(r.ch or 0) ^ (1 << 39) for r in rows]
    mpans = [r.mpan for r in rows] + [str(int(r.mpan or "1") + 7) for r in rows]
    rng.shuffle(esmes)
    rng.shuffle(chs)
    rng.shuffle(mpans)
    r_ch, _ = _rate(inv.esmes_for_ch, chs)
    r_mp, _ = _rate(inv.esmes_for_mpan, mpans)
    r_es, _ = _rate(inv.ch_for_esme, esmes)
    t0 = time.perf_counter()
    n_learn = min(100_000, len(rows))
    for r in rows[:n_learn]:
        inv.learn(r.esme, ch=(r.ch or 0) ^ 1, at=1.0)
    learn_rate = n_learn / (time.perf_counter() - t0)
    return {
        "rows": report.accepted,
        "load_s": round(load_s, 2),
        "load_cpu_s": round(cpu, 2),
        "rss_delta_mb": mb(rss1 - rss0),
        "peak_rss_mb": mb(peak_rss_bytes()),
        "structure_mb": mb(structure),
        "accounted_mb": mb(accounted),
        "esmes_for_ch_per_s": round(r_ch),
        "esmes_for_mpan_per_s": round(r_mp),
        "ch_for_esme_per_s": round(r_es),
        "learn_moves_per_s": round(learn_rate),
    }


def child_inventory_baseline(csv_path: str, lookups: int) -> dict[str, Any]:
    """The naive design: csv rows into three dicts of Python ints/strs/lists."""
    import csv

    from gbcs.eui import parse_eui

    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    by_esme: dict[int, tuple[int, str, str, str]] = {}
    by_ch: dict[int, list[int]] = {}
    by_mpan: dict[str, list[int]] = {}
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for esme_s, ch_s, mpan, mfr, model in reader:
            esme, ch = parse_eui(esme_s), parse_eui(ch_s)
            by_esme[esme] = (ch, mpan, sys.intern(mfr), sys.intern(model))
            by_ch.setdefault(ch, []).append(esme)
            by_mpan.setdefault(mpan, []).append(esme)
    load_s = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_bytes()
    keys = list(islice(by_ch, lookups // 2))
    probes = keys + [k ^ (1 << 39) for k in keys]
    r_ch, _ = _rate(lambda c: by_ch.get(c, ()), probes)
    return {
        "load_s": round(load_s, 2),
        "rss_delta_mb": mb(rss1 - rss0),
        "esmes_for_ch_per_s": round(r_ch),
    }


CHILDREN = {
    "import": lambda a: child_import(a[0], a[1]),
    "load": lambda a: child_load(a[0], int(a[1]), int(a[2])),
    "baseline": lambda a: child_baseline(int(a[0]), int(a[1])),
    "inventory": lambda a: child_inventory(a[0], int(a[1])),
    "inventory_baseline": lambda a: child_inventory_baseline(a[0], int(a[1])),
}


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        print(json.dumps(CHILDREN[argv[1]](argv[2:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100,000 rows instead of 1.4 M")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--wide", action="store_true", help="also import a 3-column workbook of the same EUIs")
    args = ap.parse_args(argv)
    n = args.rows or (100_000 if args.quick else 1_400_000)
    print(f"GUID list / inventory benchmark, {n:,} rows (cpu count {os.cpu_count()})", flush=True)
    print(f"  load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    workbook = make_workbook(n)
    inv_csv = make_inventory(n)
    persisted = str(OUT / f"guids_{n}.bin")

    imp = run_child("import", str(workbook), persisted)
    wide = run_child("import", str(make_workbook(n, wide=True)), persisted + ".wide") if args.wide else None
    load = run_child("load", persisted, str(n), str(args.lookups))
    base = run_child("baseline", str(n), str(args.lookups))
    inv = run_child("inventory", str(inv_csv), str(args.lookups))
    inv_base = run_child("inventory_baseline", str(inv_csv), str(args.lookups))

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    rows: list[tuple[str, Any, str, str]] = [
        ("xlsx import, wall (s)", imp["import_s"], "target <= 8", ""),
        ("xlsx import, CPU (s)", imp["import_cpu_s"], "", ""),
        ("xlsx import rows/s", imp["rows_per_s"], "", ""),
        ("import RSS delta (MB)", imp["rss_delta_mb"], "", ""),
        ("import peak RSS (MB)", imp["peak_rss_mb"], "", ""),
    ]
    if wide is not None:
        rows.append(
            ("3-column xlsx import, wall (s)", wide["import_s"], "", ratio(wide["import_s"], imp["import_s"]))
        )
    rows += [
        ("GuidSet traced (MB)", load["set_traced_mb"], "target <= 64", ""),
        (
            "  set(str) traced (MB)",
            base["set_str_mb"],
            "baseline",
            ratio(base["set_str_mb"], load["set_traced_mb"]),
        ),
        (
            "  set(int) traced (MB)",
            base["set_int_mb"],
            "baseline",
            ratio(base["set_int_mb"], load["set_traced_mb"]),
        ),
        ("  set(str) build from str (s)", base["set_str_build_s"], "baseline", ""),
        ("persisted load (s)", load["load_s"], "", ""),
        ("persisted load, no order check (s)", load["load_noverify_s"], "", ""),
        ("GuidSet lookups/s", load["lookups_per_s"], "", ""),
        (
            "  set(int) lookups/s",
            base["set_int_lookups_per_s"],
            "baseline",
            ratio(load["lookups_per_s"], base["set_int_lookups_per_s"]),
        ),
        (
            "  set(str) lookups/s",
            base["set_str_lookups_per_s"],
            "baseline",
            ratio(load["lookups_per_s"], base["set_str_lookups_per_s"]),
        ),
        ("inventory csv load, wall (s)", inv["load_s"], "", ""),
        ("inventory csv load, CPU (s)", inv["load_cpu_s"], "", ""),
        (
            "  dict baseline load, wall (s)",
            inv_base["load_s"],
            "baseline",
            ratio(inv["load_s"], inv_base["load_s"]),
        ),
        ("inventory arrays+tables (MB)", inv["structure_mb"], "", ""),
        ("inventory accounted (MB)", inv["accounted_mb"], "target <= 200", ""),
        ("inventory RSS delta (MB)", inv["rss_delta_mb"], "target <= 200", ""),
        (
            "  dict baseline RSS delta (MB)",
            inv_base["rss_delta_mb"],
            "baseline",
            ratio(inv_base["rss_delta_mb"], inv["rss_delta_mb"]),
        ),
        ("esmes_for_ch/s", inv["esmes_for_ch_per_s"], "", ""),
        (
            "  dict baseline by_ch.get/s",
            inv_base["esmes_for_ch_per_s"],
            "baseline",
            ratio(inv["esmes_for_ch_per_s"], inv_base["esmes_for_ch_per_s"]),
        ),
        ("esmes_for_mpan/s", inv["esmes_for_mpan_per_s"], "", ""),
        ("ch_for_esme/s", inv["ch_for_esme_per_s"], "", ""),
        ("learn (CH move)/s", inv["learn_moves_per_s"], "", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>12}  {'note':<14} ratio")
    for name, value, note, rat in rows:
        print(f"{name:<{width}}  {value:>12}  {note:<14} {rat}")
    result = {
        "rows": n,
        "load_average": os.getloadavg(),
        "import": imp,
        "import_wide": wide,
        "load": load,
        "baseline": base,
        "inventory": inv,
        "inventory_baseline": inv_base,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "guids.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT / 'guids.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
