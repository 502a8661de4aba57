"""Replay throughput of a large capture, signatures verified, against the in-process verified-decode
rate of the same messages (the ratio the captures issue asks for), and memory flat in capture size.

    python bench/bench_replay.py [--quick] [--messages N]

Builds (once, cached in ``bench/out/``) a storm capture: N distinct DSP-signed AD1 alerts for N
premises plus N/10 signed 11.3 activation responses, on keep-alive connections. Then measures

* baseline — ``Classifier.classify`` (safe parse + XML signature + DUIS decode + GBCS device
  signature) over the same message bodies held in memory: the in-process verified-decode rate;
* replay — ``duisgw replay`` end to end in-process: capture reading, TCP reassembly, HTTP
  extraction, classification, the engine and its SQLite store (in memory);
* peak RSS of replaying the first fifth of the capture vs the whole capture (state on disk: the
  reader streams; what grows is the engine's idempotency memory of message ids, bounded by retention).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
OUT = ROOT / "bench" / "out"

from gateway.capture.reader import CapturedRequest, read_capture  # noqa: E402
from gateway.capture.writer import CaptureWriter  # noqa: E402
from gateway.gbcs_keys import load_keystore  # noqa: E402
from gateway.pipeline import Classifier  # noqa: E402
from gateway.smki import CertificateStore, SigningPolicy  # noqa: E402
from gateway.testkit.library import storm  # noqa: E402
from gateway.testkit.scenario import World  # noqa: E402
from gbcs.crypto import Verifier  # noqa: E402


def build(n_ad1: int, where: Path) -> dict[str, Path]:
    where.mkdir(parents=True, exist_ok=True)
    cap = where / "storm.pcapng"
    refs = where / "refs"
    if cap.exists() and (where / "done").exists():
        return {"capture": cap, "refs": refs}
    import make_captures

    world = World.generated("bench-replay")
    t0 = time.perf_counter()
    scenario = storm(world, n_ad1, max(1, n_ad1 // 10))
    print(f"built {len(scenario.steps):,} signed messages in {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    with CaptureWriter(cap, "pcapng") as w:
        for _ in w.write_connections_lazily(make_captures.connections(scenario)):
            pass
    print(f"wrote {cap.stat().st_size / 1e6:.1f} MB capture in {time.perf_counter() - t0:.1f}s", flush=True)
    world.write_reference(refs, bundle=True)
    (where / "done").write_text("ok")
    return {"capture": cap, "refs": refs}


def classifier(refs: Path) -> Classifier:
    keys = load_keystore(refs / "gbcs-keys")
    return Classifier(
        certificates=CertificateStore.from_path(refs / "certs"),
        signing_policy=SigningPolicy(),
        gbcs_verifier=Verifier(keys),
    )


def replay_subprocess(capture: Path, refs: Path, out: Path, workers: int | None = None) -> tuple[float, int]:
    """Run ``duisgw replay`` in a fresh process; returns (seconds, the process's peak RSS in KiB).

    The peak is the child's ``VmHWM`` read at its exit: unlike ``ru_maxrss`` it starts afresh at exec, so it
    does not include this benchmark's own memory inherited across the fork."""
    state = Path(str(out) + ".state")
    for suffix in ("", "-wal", "-shm"):
        Path(str(state) + suffix).unlink(missing_ok=True)
    args = [str(capture), "--guids", str(refs / "guids.csv"), "--inventory", str(refs / "inventory.csv"),
            "--certs", str(refs / "certs"), "--gbcs-keys", str(refs / "gbcs-keys"), "--jsonl", str(out),
            "--state", str(state), "--quiet", *(["--workers", str(workers)] if workers is not None else [])]  # fmt: skip
    code = (
        "import re,sys;from gateway.cli import main;rc=main(['replay',*sys.argv[1:]]);"
        "print(re.search(r'VmHWM:\\s+(\\d+)',open('/proc/self/status').read()).group(1));sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    return time.perf_counter() - t0, int(proc.stdout.split()[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--messages", type=int, default=None, help="AD1s in the capture (default 100,000; quick 20,000)")
    args = ap.parse_args(argv)
    n = args.messages or (20_000 if args.quick else 100_000)
    paths = build(n, OUT / f"replay-{n}")
    cap, refs = paths["capture"], paths["refs"]

    bodies: list[tuple[str, bytes, datetime]] = []
    for item in read_capture(cap):
        if isinstance(item, CapturedRequest):
            bodies.append((item.lane, item.body, item.time))
    total = len(bodies)
    clf = classifier(refs)
    t0 = time.perf_counter()
    verified = 0
    for lane, body, when in bodies:
        c = clf.classify("inline" if lane == "inline" else "observe", body, when)
        verified += c.verified
    base_s = time.perf_counter() - t0
    base_rate = total / base_s

    rep_s, rss_full = replay_subprocess(cap, refs, OUT / "replay-out.jsonl")
    lines = sum(1 for _ in (OUT / "replay-out.jsonl").open())
    rep_rate = total / rep_s

    # memory flat in capture size: the same replay over the first fifth of the capture
    fifth = OUT / f"replay-{n}" / "fifth.pcapng"
    if not fifth.exists():
        from gateway.capture.writer import truncate_capture

        fifth.write_bytes(cap.read_bytes()[: cap.stat().st_size // 5])
        truncate_capture(fifth, fifth.stat().st_size)
    _s5, rss_fifth = replay_subprocess(fifth, refs, OUT / "replay-out-fifth.jsonl")
    _s1, rss_one = replay_subprocess(cap, refs, OUT / "replay-out-1.jsonl", workers=1)

    print(f"\ncapture: {cap.name} {cap.stat().st_size / 1e6:.1f} MB, {total:,} HTTP requests, {lines:,} inline decisions")
    print(f"{'measure':<48}{'msg/s':>12}{'ratio':>8}")
    print(f"{'in-process verified decode (baseline)':<48}{base_rate:>12,.0f}{1.0:>8.2f}")
    print(f"{'duisgw replay capture (read+verify+decide)':<48}{rep_rate:>12,.0f}{rep_rate / base_rate:>8.2f}")
    print(f"peak RSS of the replay process: whole capture {rss_full / 1024:.0f} MiB, first fifth "
          f"{rss_fifth / 1024:.0f} MiB; in-process classification (--workers 1) {rss_one / 1024:.0f} MiB "
          f"({total / _s1:,.0f} msg/s, {total / _s1 / base_rate:.2f}x)")  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "replay.json").write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(),
                "requests": total,
                "capture_bytes": cap.stat().st_size,
                "baseline_verified_decode_per_s": base_rate,
                "replay_per_s": rep_rate,
                "ratio": rep_rate / base_rate,
                "verified": verified,
                "peak_rss_kib_full": rss_full,
                "peak_rss_kib_fifth": rss_fifth,
                "peak_rss_kib_full_workers1": rss_one,
                "replay_workers1_per_s": total / _s1,
                "load": Path("/proc/loadavg").read_text().split()[:3],
                "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
