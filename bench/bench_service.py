"""Transport-path benchmark of the inline gateway service (``python bench/bench_service.py [--quick]``).

Every part runs in its own process, on 127.0.0.1:

* ``receiver`` — the DNO adaptor: answers 204, records the arrival time of each body (by SHA-256);
* ``direct``   — no hop: the load goes straight to the receiver (the floor);
* ``proxy``    — a plain aiohttp pass-through proxy (read body, POST it upstream, answer the status):
                 the transport's own limit, measured in the same run (the baseline);
* ``duisgw``   — ``Service`` in passthrough mode: HTTP in → durable SQLite record + outbox row
                 (group commit, ``synchronous`` FULL unless ``--sync NORMAL``) → 204 → ordered HTTP
                 delivery to the receiver;
* ``loadgen``  — aiohttp client: closed loop with fixed concurrency (max throughput), then open loop
                 at a fixed rate (1,000 msg/s) for latency; latency is measured from each message's
                 *scheduled* send time (no coordinated omission).

Figures: accepted msg/s (responses), delivered msg/s (arrivals at the receiver), response latency and
end-to-end latency (scheduled send → arrival at receiver; CLOCK_MONOTONIC is shared by processes) at
p50/p99, and the latency each hop adds over ``direct``. JSON goes to ``bench/out/service.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("DUISGW_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))


RATES = (250.0, 1000.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bodies(n: int, offset: int) -> list[bytes]:
    sample = SHARED / "duis" / "samples" / "readfw-response.xml"
    if sample.is_file():
        base = sample.read_bytes().rstrip()
    else:  # synthetic 1.8 KB stand-in when ../shared is absent
        base = (
            b'<?xml version="1.0" encoding="UTF-8"?><sr:Response xmlns:sr="http://www.dccinterface.co.uk/'
            b'ServiceUserGateway" schemaVersion="5.1"><sr:Body>' + b"x" * 1700 + b"</sr:Body></sr:Response>"
        )
    return [base + f"\n<!-- bench {offset + i} -->\n".encode() for i in range(n)]


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# ------------------------------------------------------------------------------------------ roles


def role_receiver(port: int) -> None:
    from aiohttp import web

    arrivals: dict[str, float] = {}

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        arrivals.setdefault(digest(body), time.monotonic())
        return web.Response(status=204)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def count(_request: web.Request) -> web.Response:
        return web.json_response({"n": len(arrivals)})

    async def reset(_request: web.Request) -> web.Response:
        arrivals.clear()
        return web.Response(status=204)

    app = web.Application(client_max_size=4 << 20)
    app.router.add_post("/smartdcc/duis", post)
    app.router.add_get("/stats", stats)
    app.router.add_get("/count", count)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def role_proxy(port: int, upstream: str) -> None:
    import aiohttp
    from aiohttp import web

    session: aiohttp.ClientSession | None = None

    async def handle(request: web.Request) -> web.Response:
        assert session is not None
        body = await request.read()
        async with session.post(upstream, data=body, headers={"Content-Type": "application/xml"}) as resp:
            await resp.read()
            return web.Response(status=resp.status)

    async def on_start(_app: web.Application) -> None:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    async def on_stop(_app: web.Application) -> None:
        if session is not None:
            await session.close()

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/duis/dno/{user}", handle)
    app.on_startup.append(on_start)
    app.on_cleanup.append(on_stop)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def role_gateway(port: int, upstream: str, db: str, sync: str) -> None:
    from gateway.service.app import run
    from gateway.service.config import (
        AdminConfig,
        DestinationConfig,
        LoggingConfig,
        ServerConfig,
        ServiceConfig,
        StoreConfig,
    )

    cfg = ServiceConfig(
        mode="passthrough",
        server=ServerConfig(host="127.0.0.1", port=port),
        admin=AdminConfig(enabled=False),
        store=StoreConfig(path=db, synchronous=sync),
        logging=LoggingConfig(level="WARNING"),
        destinations=(DestinationConfig(name="dno-a", user="90-B3-D5-1F-30-02-00-00", url=upstream),),
    )
    await run(cfg)


async def drive(payloads: list[bytes], one: Any, concurrency: int, rate: float) -> float:
    """Send every payload with ``await one(body, scheduled_time)``: a closed loop of ``concurrency``
    senders when ``rate <= 0``, else an open loop at ``rate`` msg/s (latency from the scheduled time,
    so no coordinated omission). Returns the start time (``time.monotonic``)."""
    t0 = time.monotonic()
    if rate <= 0:
        it = iter(payloads)

        async def worker() -> None:
            for body in it:
                await one(body, time.monotonic())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        tasks = []
        for i, body in enumerate(payloads):
            t_sched = t0 + i / rate
            delay = t_sched - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, t_sched)))
        await asyncio.gather(*tasks)
    return t0


async def arrival_count(http: Any, stats_url: str) -> int:
    """How many distinct bodies the receiver has recorded (its cheap ``/count``)."""
    async with http.get(stats_url.replace("/stats", "/count")) as resp:
        return int((await resp.json())["n"])


async def wait_arrivals(
    http: Any, stats_url: str, keys: Any, timeout: float, base: int | None = None
) -> dict[str, float]:
    """Poll the receiver's arrival times until every key has arrived (or ``timeout`` s pass). With
    ``base`` (the receiver's count before these keys were sent), poll only the count until ``base +
    len(keys)`` have arrived, then fetch the arrival times once: fetching them all every 50 ms costs
    the receiver and the load generator CPU, which a path still delivering its backlog then lacks."""
    arrivals: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    if base is not None:
        want = base + len(keys)
        while time.monotonic() < deadline and await arrival_count(http, stats_url) < want:
            await asyncio.sleep(0.02)
    while time.monotonic() < deadline:
        async with http.get(stats_url) as resp:
            arrivals = await resp.json()
        if all(k in arrivals for k in keys):
            break
        await asyncio.sleep(0.05)
    return arrivals


async def role_loadgen(
    target: str, stats_url: str, n: int, concurrency: int, rate: float, offset: int
) -> None:
    import aiohttp

    payloads = bodies(n, offset)
    lat: list[float] = []
    sched: dict[str, float] = {}
    errors = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def one(body: bytes, t_sched: float) -> None:
            nonlocal errors
            sched[digest(body)] = t_sched
            try:
                async with http.post(target, data=body, headers={"Content-Type": "application/xml"}) as resp:
                    await resp.read()
                    if resp.status not in (200, 202, 204):
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            lat.append(time.monotonic() - t_sched)

        t0 = await drive(payloads, one, concurrency, rate)
        t_answered = time.monotonic()
        arrivals = await wait_arrivals(http, stats_url, sched, 120)
    e2e = [arrivals[k] - t for k, t in sched.items() if k in arrivals]
    last = max((arrivals[k] for k in sched if k in arrivals), default=t_answered)
    out = {
        "n": n,
        "errors": errors,
        "missing": sum(1 for k in sched if k not in arrivals),
        "accepted_per_s": n / (t_answered - t0),
        "delivered_per_s": n / (last - t0),
        "resp_p50_ms": pct(lat, 50) * 1e3,
        "resp_p99_ms": pct(lat, 99) * 1e3,
        "e2e_p50_ms": pct(e2e, 50) * 1e3,
        "e2e_p99_ms": pct(e2e, 99) * 1e3,
        "e2e_mean_ms": statistics.fmean(e2e) * 1e3 if e2e else float("nan"),
    }
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------ driver


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def loadgen(target: str, stats: str, n: int, concurrency: int, rate: float, offset: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role",
            "loadgen",
            "--target",
            target,
            "--stats",
            stats,
            "--n",
            str(n),
            "--concurrency",
            str(concurrency),
            "--rate",
            str(rate),
            "--offset",
            str(offset),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL"])
    ap.add_argument("--role", default="driver")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream", default="")
    ap.add_argument("--db", default="")
    ap.add_argument("--target", default="")
    ap.add_argument("--stats", default="")
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--offset", type=int, default=0)
    a = ap.parse_args(argv)
    if a.role == "receiver":
        role_receiver(a.port)
        return 0
    if a.role == "proxy":
        role_proxy(a.port, a.upstream)
        return 0
    if a.role == "gateway":
        asyncio.run(role_gateway(a.port, a.upstream, a.db, a.sync))
        return 0
    if a.role == "loadgen":
        asyncio.run(role_loadgen(a.target, a.stats, a.n, a.concurrency, a.rate, a.offset))
        return 0

    n_max = 3000 if a.quick else 20000
    secs = 2.0 if a.quick else 8.0
    rport = free_port()
    receiver = spawn("--role", "receiver", "--port", str(rport))
    procs = [receiver]
    results: dict[str, dict[str, Any]] = {}
    tmp = tempfile.TemporaryDirectory(prefix="bench-service-")
    try:
        wait_port(rport)
        upstream = f"http://127.0.0.1:{rport}/smartdcc/duis"
        stats = f"http://127.0.0.1:{rport}/stats"
        pport, gport = free_port(), free_port()
        proxy = spawn("--role", "proxy", "--port", str(pport), "--upstream", upstream)
        gateway = spawn(
            "--role",
            "gateway",
            "--port",
            str(gport),
            "--upstream",
            upstream,
            "--db",
            str(Path(tmp.name) / "gw.sqlite3"),
            "--sync",
            a.sync,
        )
        procs += [proxy, gateway]
        wait_port(pport)
        wait_port(gport)
        targets = {
            "direct": upstream,
            "proxy": f"http://127.0.0.1:{pport}/duis/dno/dno-a",
            "duisgw": f"http://127.0.0.1:{gport}/duis/dno/dno-a",
        }
        offset = 0
        for name, target in targets.items():
            loadgen(target, stats, 300, 8, 0.0, 10_000_000 + offset)  # warm-up
            offset += 1000
            res: dict[str, Any] = {"max": loadgen(target, stats, n_max, 32, 0.0, offset)}
            offset += n_max
            for rate in RATES:
                n = int(rate * secs)
                res[f"at_{rate:.0f}"] = loadgen(target, stats, n, 256, rate, offset)
                offset += n
            results[name] = res
            with urllib.request.urlopen(
                urllib.request.Request(stats.replace("/stats", "/reset"), method="POST")
            ):
                pass
    finally:
        for p in reversed(procs):
            stop(p)
        tmp.cleanup()

    proxy_max = results["proxy"]["max"]["accepted_per_s"]
    print(
        f"\nservice transport benchmark (sync={a.sync}, {'quick' if a.quick else 'full'}; 2 shared cores: noisy)"
    )
    print(f"{'path':8} {'accepted msg/s':>15} {'delivered msg/s':>16} {'vs proxy':>9}")
    for name, r in results.items():
        mx = r["max"]
        print(
            f"{name:8} {mx['accepted_per_s']:15.0f} {mx['delivered_per_s']:16.0f} {mx['accepted_per_s'] / proxy_max:8.2f}x"
        )
    for rate in RATES:
        key = f"at_{rate:.0f}"
        base = results["direct"][key]
        print(f"\nopen loop at {rate:.0f} msg/s (ms; latency from scheduled send; + = added over direct)")
        print(
            f"{'path':8} {'resp p50':>9} {'resp p99':>9} {'e2e p50':>9} {'e2e p99':>9} {'+p50':>8} {'+p99':>8}"
        )
        for name, r in results.items():
            at = r[key]
            print(
                f"{name:8} {at['resp_p50_ms']:9.2f} {at['resp_p99_ms']:9.2f} {at['e2e_p50_ms']:9.2f} "
                f"{at['e2e_p99_ms']:9.2f} {at['e2e_p50_ms'] - base['e2e_p50_ms']:8.2f} "
                f"{at['e2e_p99_ms'] - base['e2e_p99_ms']:8.2f}"
            )
    for name, r in results.items():
        bad = {k: (v["errors"], v["missing"]) for k, v in r.items() if v["errors"] or v["missing"]}
        if bad:
            print(f"  {name}: (errors, missing) {bad}")
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "service.json").write_text(
        json.dumps(
            {
                "sync": a.sync,
                "quick": a.quick,
                "rates": RATES,
                "n_max": n_max,
                "seconds_per_rate": secs,
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
