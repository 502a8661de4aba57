"""Benchmark: reading DUIS requests out of packet captures.

    .venv/bin/python bench/bench_capture.py [--quick] [--regenerate] [--compare-ref REF]

Writes (once; reused while the parameters match) two pcap captures to bench/out/: a large one
(100,000 requests; --quick: 10,000) and a small one (its first fifth, copied record by record), keep-alive connections of
100 requests each, 8 connections open at a time, bodies ~2 KB like signed DUIS responses, 204
responses. Then, each in a fresh child process:

* lean path (``decoder="raw"``, the default): full read of both captures -- requests/s, MB/s,
  packets/s;
* baseline, scapy full dissection of every frame (``decoder="scapy"``) on the small capture (it
  is several times slower), compared with the lean path on the same file;
* peak memory reading each capture: ru_maxrss of the child and tracemalloc peak (a separate
  run, tracemalloc slows Python down), to show memory flat in capture size;
* HTTP framing state held per open connection (a request and a response parser, the request
  half received): tracemalloc over 2,000 of them.

``--compare-ref REF`` (e.g. 1dbccf4, hand-written HTTP framing, or 0bb498e, framing on h11): the code of
``gateway/`` and ``gbcs/`` at that git commit is extracted (``git archive``, read-only) to
bench/out/ref-REF/ and the large capture and the per-connection state are measured with it too,
in the same run, so the two framings are compared on the same file and the same machine load.
Times are wall clock and CPU time of the child (CPU time is less disturbed by other load).

Prints a table, writes bench/out/capture.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

PER_CONN = 100
CONCURRENT = 8
BODY = 2048
T0 = datetime(2025, 6, 1, 2, 0, tzinfo=UTC)


def body(n: int) -> bytes:
    head = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="no"?><sr:Response '
        b'xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway" '
        b'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" schemaVersion="5.1"><sr:Header>'
        b"<sr:RequestID>90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:%d</sr:RequestID>"
        b"<sr:ResponseCode>I0</sr:ResponseCode></sr:Header><sr:Body><sr:ResponseMessage>"
        b"<sr:GBCSPayload>" % n
    )
    tail = b"</sr:GBCSPayload></sr:ResponseMessage></sr:Body><ds:Signature/></sr:Response>"
    fill = BODY - len(head) - len(tail)
    return head + (b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g" * (fill // 44 + 1))[:fill] + tail


def generate(path: Path, n_requests: int) -> dict[str, float]:
    from gateway.capture import CaptureWriter, Connection, Exchange

    t0 = T0
    n_conns = n_requests // PER_CONN
    started = time.perf_counter()
    written = 0
    with CaptureWriter(path, "pcap") as w:
        for batch in range(0, n_conns, CONCURRENT):
            conns = []
            for c in range(batch, min(n_conns, batch + CONCURRENT)):
                base = t0 + timedelta(seconds=batch // CONCURRENT, microseconds=c * 137)
                exs = [
                    Exchange(
                        "/duis/observe" if i % 4 == 3 else "/duis/dno/90-B3-D5-1F-30-02-00-00",
                        body(c * PER_CONN + i),
                        base + timedelta(milliseconds=8 * i),
                    )
                    for i in range(PER_CONN)
                ]
                conns.append(Connection(exs, client=(f"10.30.{c // 250}.{c % 250 + 2}", 20000 + c % 40000)))
            written += len(w.write_connections(conns))
        packets = w.packets
    meta: dict[str, float] = {
        "requests": written,
        "packets": packets,
        "bytes": path.stat().st_size,
        "write_seconds": round(time.perf_counter() - started, 1),
        "per_conn": PER_CONN,
        "body": BODY,
    }
    path.with_suffix(".json").write_text(json.dumps(meta))
    return meta


def derive_prefix(large: Path, path: Path, n_requests: int) -> dict[str, float]:
    """The first ``n_requests`` of the large capture as a capture of its own: connection batches do
    not overlap in time, so copying the records before batch ``n / (PER_CONN * CONCURRENT)`` gives
    exactly those connections, complete (scapy raw reader and writer, records copied as they are)."""
    from scapy.utils import RawPcapReader, RawPcapWriter

    cut_us = (int(T0.timestamp()) + n_requests // (PER_CONN * CONCURRENT)) * 1_000_000 - 1000
    started = time.perf_counter()
    reader = RawPcapReader(str(large))
    packets = 0
    with RawPcapWriter(str(path), linktype=reader.linktype) as w:
        w.write_header(None)
        for data, meta in reader:
            if meta.sec * 1_000_000 + meta.usec >= cut_us:
                break
            w.write_packet(data, sec=meta.sec, usec=meta.usec, caplen=meta.caplen, wirelen=meta.wirelen)
            packets += 1
    reader.close()
    result: dict[str, float] = {
        "requests": n_requests,
        "packets": packets,
        "bytes": path.stat().st_size,
        "write_seconds": round(time.perf_counter() - started, 1),
        "per_conn": PER_CONN,
        "body": BODY,
        "derived_from": str(large.name),  # type: ignore[dict-item]
    }
    path.with_suffix(".json").write_text(json.dumps(result))
    return result


def ensure(path: Path, n: int, regenerate: bool, prefix_of: Path | None = None) -> dict[str, float]:
    meta_path = path.with_suffix(".json")
    if not regenerate and path.exists() and meta_path.exists():
        meta: dict[str, float] = json.loads(meta_path.read_text())
        if (
            meta.get("requests") == n
            and meta.get("body") == BODY
            and meta.get("bytes") == path.stat().st_size
        ):
            return meta
    print(f"writing {path.name} ({n} requests) ...", flush=True)
    if prefix_of is not None:
        return derive_prefix(prefix_of, path, n)
    return generate(path, n)


def child(path: str, decoder: str, trace: bool, code: str | None) -> None:
    """Runs in a fresh process: read the capture, print one JSON line. ``code``: a directory
    holding another version of ``gateway/`` to measure instead of this checkout's."""
    import resource
    import tracemalloc

    if code:
        sys.path.insert(0, code)

    import scapy.config
    import scapy.layers.inet
    import scapy.utils  # noqa: F401 - imported before tracemalloc starts: only reading is measured

    from gateway.capture import CapturedRequest, CaptureReader

    if trace:
        tracemalloc.start()
    reader = CaptureReader(path, decoder=decoder, keep_reports=True)  # type: ignore[arg-type]
    t = time.perf_counter()
    c = time.process_time()
    n = 0
    body_bytes = 0
    for item in reader:
        if isinstance(item, CapturedRequest):
            n += 1
            body_bytes += len(item.body)
    dt = time.perf_counter() - t
    cpu = time.process_time() - c
    peak = tracemalloc.get_traced_memory()[1] if trace else None
    print(
        json.dumps(
            {
                "requests": n,
                "reports": len(reader.reports),
                "seconds": dt,
                "cpu_seconds": cpu,
                "packets": reader.stats.packets,
                "file_bytes": os.path.getsize(path),
                "body_bytes": body_bytes,
                "max_open_connections": reader.stats.max_open_connections,
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "tracemalloc_peak": peak,
            }
        )
    )


def flowmem_child(code: str | None, n: int = 2000) -> None:
    """Runs in a fresh process: bytes of HTTP framing state per open connection (print JSON)."""
    import tracemalloc

    if code:
        sys.path.insert(0, code)
    from gateway.capture.http import HttpStreamParser

    b = body(0)
    head = f"POST /duis/dno/90-B3-D5-1F-30-02-00-00 HTTP/1.1\r\nHost: gw\r\nContent-Length: {len(b)}\r\n\r\n"
    first = (head.encode() + b)[:1448]
    warm = [HttpStreamParser("request"), HttpStreamParser("response")]  # imports, caches
    warm[0].feed(first, 1)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = []
    for i in range(n):
        req, resp = HttpStreamParser("request"), HttpStreamParser("response")
        req.feed(first, i)
        resp.expect_response_to("POST")
        held.append((req, resp))
    per = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    print(json.dumps({"bytes_per_connection": per, "connections": len(held)}))


def run_child(path: Path, decoder: str, trace: bool = False, code: Path | None = None) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(path), "--decoder", decoder]
    if trace:
        cmd.append("--trace")
    if code is not None:
        cmd += ["--code", str(code)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def run_flowmem(code: Path | None = None) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--flowmem"]
    if code is not None:
        cmd += ["--code", str(code)]
    result: dict[str, float] = json.loads(
        subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    )
    return result


def extract_ref(ref: str) -> tuple[Path, str]:
    """``gateway/`` and ``gbcs/`` as of git commit ``ref``, in bench/out/ref-<sha> (read-only git)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    dest = OUT / f"ref-{sha}"
    if not (dest / "gateway" / "capture" / "http.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", sha, "gateway", "gbcs"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest, sha


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--compare-ref", help="also measure gateway/ as of this git commit")
    ap.add_argument("--child")
    ap.add_argument("--flowmem", action="store_true")
    ap.add_argument("--code")
    ap.add_argument("--decoder", default="raw")
    ap.add_argument("--trace", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.decoder, args.trace, args.code)
        return 0
    if args.flowmem:
        flowmem_child(args.code)
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    large_n = 10_000 if args.quick else 100_000
    batch = PER_CONN * CONCURRENT
    small_n = large_n // 5 // batch * batch
    large = OUT / f"capture-{large_n}.pcap"
    small = OUT / f"capture-{small_n}.pcap"
    meta_large = ensure(large, large_n, args.regenerate)
    meta_small = ensure(small, small_n, args.regenerate, prefix_of=large)

    ref_code, ref_sha = extract_ref(args.compare_ref) if args.compare_ref else (None, None)
    raw_large = run_child(large, "raw")
    ref_large = run_child(large, "raw", code=ref_code) if ref_code is not None else None
    raw_small = run_child(small, "raw")
    scapy_small = run_child(small, "scapy")
    mem_large = run_child(large, "raw", trace=True)
    mem_small = run_child(small, "raw", trace=True)
    flowmem = run_flowmem()
    ref_flowmem = run_flowmem(ref_code) if ref_code is not None else None
    checks = [(raw_large, large_n), (raw_small, small_n), (scapy_small, small_n)]
    if ref_large is not None:
        checks.append((ref_large, large_n))
    for r, n in checks:
        assert r["requests"] == n and r["reports"] == 0, r

    def rate(r: dict[str, float]) -> dict[str, float]:
        s = r["seconds"]
        return {
            "requests_per_s": r["requests"] / s,
            "mb_per_s": r["file_bytes"] / s / 1e6,
            "packets_per_s": r["packets"] / s,
            "seconds": s,
            "cpu_seconds": r["cpu_seconds"],
            "requests_per_cpu_s": r["requests"] / r["cpu_seconds"],
        }

    rows = [("lean raw path", large.name, rate(raw_large))]
    if ref_large is not None:
        rows.append((f"lean raw path @ {ref_sha}", large.name, rate(ref_large)))
    rows += [
        ("lean raw path", small.name, rate(raw_small)),
        ("scapy dissection (baseline)", small.name, rate(scapy_small)),
    ]
    base = rate(scapy_small)["requests_per_s"]
    print()
    print(
        f"{'decoder':30} {'capture':22} {'req/s':>9} {'req/cpu-s':>10} {'MB/s':>7} {'pkt/s':>9} "
        f"{'s':>7} {'x baseline':>10}"
    )
    for name, cap, r in rows:
        print(
            f"{name:30} {cap:22} {r['requests_per_s']:9.0f} {r['requests_per_cpu_s']:10.0f} "
            f"{r['mb_per_s']:7.1f} {r['packets_per_s']:9.0f} {r['seconds']:7.2f} "
            f"{r['requests_per_s'] / base:10.1f}"
        )
    if ref_large is not None:
        now, then = rate(raw_large), rate(ref_large)
        print(
            f"\nthis checkout vs {ref_sha} on {large.name}: "
            f"{now['requests_per_s'] / then['requests_per_s']:.2f}x wall-clock req/s, "
            f"{now['requests_per_cpu_s'] / then['requests_per_cpu_s']:.2f}x req per CPU second"
        )
    print()
    print(f"{'peak memory':30} {'capture':22} {'file MB':>9} {'maxrss MiB':>11} {'tracemalloc MiB':>16}")
    for cap, meta, m in ((small.name, meta_small, mem_small), (large.name, meta_large, mem_large)):
        print(
            f"{'lean raw path':30} {cap:22} {int(meta['bytes']) / 1e6:9.1f} {m['maxrss_kib'] / 1024:11.1f} "
            f"{m['tracemalloc_peak'] / 2**20:16.2f}"
        )
    print(f"\nHTTP framing state per open connection: {flowmem['bytes_per_connection']:.0f} bytes", end="")
    print(f" ({ref_sha}: {ref_flowmem['bytes_per_connection']:.0f} bytes)" if ref_flowmem else "")
    result = {
        "machine_note": "2 shared cores, other engineers working: noisy",
        "captures": {large.name: meta_large, small.name: meta_small},
        "raw_large": raw_large,
        "raw_small": raw_small,
        "scapy_small": scapy_small,
        "speedup_raw_vs_scapy_same_file": rate(raw_small)["requests_per_s"] / base,
        "memory": {small.name: mem_small, large.name: mem_large},
        "http_state_per_connection": flowmem,
    }
    if ref_large is not None and ref_flowmem is not None:
        result["compare_ref"] = {
            "ref": ref_sha,
            "raw_large": ref_large,
            "http_state_per_connection": ref_flowmem,
            "requests_per_s_ratio": rate(raw_large)["requests_per_s"] / rate(ref_large)["requests_per_s"],
            "requests_per_cpu_s_ratio": rate(raw_large)["requests_per_cpu_s"]
            / rate(ref_large)["requests_per_cpu_s"],
        }
    (OUT / "capture.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {OUT / 'capture.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
