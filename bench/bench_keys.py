"""GBCS key store start-up: parsing every certificate vs the persisted index (``python bench/bench_keys.py [--quick]``).

``duisgw serve`` needs the DS certificate of every meter whose CS06 responses and alerts it verifies
(up to ~1.4 M for MP102B). This benchmark writes N device certificates as ``<eui>-ds.pem`` files
(the RTDS layout) with the test PKI, then measures, each in a fresh process: the eager load
(``load_keystore(dir)``: every certificate parsed), the first indexed load (parse + write
``gbcs-keys.idx``), a later indexed load (listing digest + ``mmap``), and on that store the first
and the repeated lookup of a certificate. Peak RSS (``VmHWM``) of each process is reported.
JSON goes to ``bench/out/keys.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def role(mode: str, keys: str, index: str, n: int) -> None:
    from gateway.gbcs_keys import load_keystore

    base = _rss_mib()
    t0 = time.perf_counter()
    store = load_keystore(keys) if mode == "eager" else load_keystore(keys, index=index)
    load = time.perf_counter() - t0
    eui = 0x00DB000000000000 + n // 2
    t1 = time.perf_counter()
    assert store.ds_certificate(eui) is not None
    first = time.perf_counter() - t1
    t2 = time.perf_counter()
    for _ in range(1000):
        store.ds_certificate(eui)
    again = (time.perf_counter() - t2) / 1000
    print(json.dumps({"mode": mode, "load_s": load, "first_lookup_us": first * 1e6, "cached_lookup_us": again * 1e6,
                      "rss_mib": _rss_mib(), "rss_before_mib": base}))  # fmt: skip


def main(argv: list[str]) -> int:
    if argv[:1] == ["--role"]:
        role(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    n = 5_000 if "--quick" in argv else 50_000
    from gateway.testkit.pki import TestPKI

    with tempfile.TemporaryDirectory(prefix="bench-keys-") as tmp:
        keys = Path(tmp) / "keys"
        keys.mkdir()
        t0 = time.perf_counter()
        pki = TestPKI(seed="bench-keys")
        for i in range(n):
            cred = pki.device(0x00DB000000000000 + i)
            (keys / f"{cred.name}.pem").write_bytes(cred.cert_pem)
        print(f"wrote {n} device certificates in {time.perf_counter() - t0:.1f} s")
        index = str(Path(tmp) / "gbcs-keys.idx")
        rows = []
        for mode in ("eager", "index-build", "index-reuse", "index-reuse"):
            out = subprocess.run([sys.executable, __file__, "--role", mode, str(keys), index, str(n)],
                                 check=True, capture_output=True, text=True)  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        size = Path(index).stat().st_size
    eager = rows[0]["load_s"]
    print(f"\n{n} certificates; index file {size / 2**20:.1f} MiB")
    print(f"{'load':12} {'seconds':>8} {'vs eager':>9} {'peak RSS MiB':>13} {'1st lookup µs':>14} {'cached µs':>10}")
    for r in rows:
        print(f"{r['mode']:12} {r['load_s']:8.2f} {eager / r['load_s']:8.1f}x {r['rss_mib']:13.0f} "
              f"{r['first_lookup_us']:14.1f} {r['cached_lookup_us']:10.2f}")  # fmt: skip
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "keys.json").write_text(json.dumps({"n": n, "index_bytes": size, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
