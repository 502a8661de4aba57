"""Whole-path benchmark of the gateway (``python bench/bench_gateway.py [--quick]``).

HTTP in → safe parse → XML signature verification → DUIS decode → correlation engine (durable,
group-committed SQLite, ``synchronous = FULL``) → outbox (durable) → ordered HTTP delivery, against
a plain aiohttp pass-through proxy and a direct baseline measured in the same run. Every part is
its own process on 127.0.0.1:

* ``receiver`` — the DNO adaptor (204; records each body's arrival time): the lean one from
  ``loadkit.py`` (asyncio + httptools) by default, ``--harness aiohttp`` for bench_service.py's;
* ``direct``   — the load straight to the receiver (the floor);
* ``proxy``    — plain aiohttp pass-through proxy (read, POST upstream, answer) — from bench_service.py;
* ``duisgw``   — ``duisgw serve`` in pipeline mode (``gateway.service.serve.serve``), with
  ``--processes`` classify worker processes, ``--ingress`` ingress worker processes (``[server]
  ingress_processes``: HTTP ingress + classification outside the gateway process), ``--sender-process``
  (``[outbox] sender_process``: the POSTs to the DNO from a process of their own) and an outbox
  ``--window``; ``--instances K`` > 1 starts
  K of them on one port (``[server] reuse_port``) with their decision state in a ``redis-server`` the
  benchmark starts;
* ``loadgen``  — its own process (lean client by default, else aiohttp): closed loops for sustained
  msgs/s, one at each ``--levels`` concurrency (default 32, 128 and 256 requests in flight; each path's
  capacity is its best level, since a path that batches needs more in flight to fill its batches than
  one that does not; the open loops run right after the first level, the other levels after them), then
  open loops at each of ``--rates`` msg/s for latency measured from each
  message's *scheduled* send time (no coordinated omission). With ``--sustain R1,R2,...``, after its closed and open loops
  the gateway gets one more open loop at each of those rates, and the benchmark says at which it kept up:
  every message answered at the offered rate and delivered, and no queue growing behind it (the
  end-to-end p50 of the last fifth of the sends within 50 ms of the first fifth's) — the sustained rate.

Defaults (what ``run_all.py`` runs): the configuration that uses this 2-core machine best —
``--ingress 2 --sender-process --window 64`` — open loops at 250, 500 and 1,000 msg/s and the sustain
test at 2,000–3,000 msg/s; ``--ingress 0 --no-sender-process --window 1`` is the product's default
configuration (everything in one process, strictly ordered delivery).

Traffic: DSP-signed AD1 alerts from the test kit, unique per message. Before the load, the gateway
observes signed 11.3 responses (immediate activations) for 10 % of the premises, so about 10 % of the
AD1s are suppressed (never reach the receiver) and 90 % are forwarded (``no-activation``). The scenario
is dated around the current time, so the gateway runs on the wall clock. End-to-end latency is
measured on forwarded messages only. For every closed loop the benchmark also reports the CPU per
message of each process (the proxy, the gateway process and each process under it, the receiver, the
load generator). JSON goes to ``bench/out/gateway.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_service as bs  # noqa: E402  (receiver, proxy, helpers)

PREMISES = 400
SUPPRESS_EVERY = 10  # one AD1 in ten is for a meter that just activated new firmware


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# ------------------------------------------------------------------------------------------ traffic


def make_traffic(out: Path, n_ad1: int) -> dict[str, Any]:
    """Reference data + signed observation messages + ``n_ad1`` signed AD1s (hex, one JSON file)."""
    from gateway.testkit.scenario import World

    world = World.generated("bench")
    f = world.factory
    now = datetime.now(UTC).replace(microsecond=0)
    act = now - timedelta(minutes=5)
    meters = [world.meter(i + 1) for i in range(PREMISES)]
    observe = [
        f.activate_response(esme, 9000 + i, act)
        for i, (esme, _ch, _m) in enumerate(meters)
        if i % SUPPRESS_EVERY == 0
    ]
    ad1s = []
    for k in range(n_ad1):
        i = k % PREMISES
        _esme, ch, mpan = meters[i]
        start = act + timedelta(minutes=2) if i % SUPPRESS_EVERY == 0 else now - timedelta(minutes=1)
        ad1s.append(f.ad1(ch, mpan, start, now, 100_000 + k))
    ref = world.write_reference(out)
    data = {
        "reference": {k: str(v) for k, v in ref.items()},
        "observe": [b.hex() for b in observe],
        "ad1": [b.hex() for b in ad1s],
    }
    (out / "traffic.json").write_text(json.dumps(data))
    return data


# ------------------------------------------------------------------------------------------ roles


async def role_gateway(port: int, upstream: str, work: str, threads: int, processes: int = 0,
                       window: int = 1, instance: str = "", redis_url: str = "", admin_port: int = 0,
                       ingress: int = 0, sender: bool = False, separate_state: bool = False) -> None:  # fmt: skip
    """One gateway; with ``redis_url``, instance ``instance`` of several sharing ``port`` (reuse_port) and
    their decision state in Redis, each with its own state folder and outbox."""
    from gateway.service.config import (
        AdminConfig,
        DestinationConfig,
        LoggingConfig,
        OutboxConfig,
        PipelineConfig,
        ServerConfig,
        ServiceConfig,
        StateConfig,
        StoreConfig,
    )
    from gateway.service.serve import serve

    data = json.loads((Path(work) / "traffic.json").read_text())
    ref = data["reference"]
    cfg = ServiceConfig(
        mode="pipeline",
        clock="wall",
        server=ServerConfig(host="127.0.0.1", port=port, reuse_port=bool(redis_url), ingress_processes=ingress),
        admin=AdminConfig(enabled=admin_port > 0, port=admin_port),
        store=StoreConfig(path=str(Path(work) / f"outbox{instance}.sqlite3"), synchronous="FULL"),
        logging=LoggingConfig(level="WARNING"),
        pipeline=PipelineConfig(
            state_dir=str(Path(work) / f"state{instance}"),
            certificates=ref["certs"],
            gbcs_keys=ref["gbcs_keys"],
            guids=ref["guids"],
            inventory=ref["inventory"],
            synchronous="FULL",
            classify_threads=threads,
            classify_processes=processes,
            state_in_store=not separate_state,
        ),
        outbox=OutboxConfig(window=window, sender_process=sender),
        state=StateConfig(backend="redis", redis_url=redis_url, instance=f"gw{instance}") if redis_url else StateConfig(),
        destinations=(DestinationConfig(name="dno-a", user="90-B3-D5-1F-30-02-00-00", url=upstream),),
    )
    await serve(cfg)


async def role_loadgen(target: str, stats_url: str, work: str, first: int, n: int, concurrency: int,
                       rate: float, harness: str) -> None:  # fmt: skip
    import aiohttp
    import loadkit

    data = json.loads((Path(work) / "traffic.json").read_text())
    payloads = [bytes.fromhex(h) for h in data["ad1"][first : first + n]]
    lat: list[float] = []
    sched: dict[str, float] = {}
    expect: set[str] = set()
    errors = 0
    ctype = {"Content-Type": "application/xml"}
    lean = loadkit.Client(target, concurrency) if harness == "lean" else None
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def one(body: bytes, t_sched: float) -> None:
            nonlocal errors
            key = keys[index[id(body)]]
            sched[key] = t_sched
            try:
                if lean is not None:
                    status, headers = await lean.post(body, ctype)
                    decision = headers.get("x-duisgw-decision", "forward")
                else:
                    async with http.post(target, data=body, headers=ctype) as resp:
                        await resp.read()
                        status, decision = resp.status, resp.headers.get("X-DUISGW-Decision", "forward")
                if status not in (200, 202, 204):
                    errors += 1
                elif decision == "forward":
                    expect.add(key)
            except (aiohttp.ClientError, OSError):
                errors += 1
            lat.append(time.monotonic() - t_sched)

        def answered(i: int, status: int, headers: dict[str, str] | None, error: BaseException | None,
                     t_sched: float) -> None:  # fmt: skip
            nonlocal errors
            key = keys[i]
            sched[key] = t_sched
            if error is not None or status not in (200, 202, 204):
                errors += 1
            elif (headers or {}).get("x-duisgw-decision", "forward") == "forward":
                expect.add(key)
            lat.append(time.monotonic() - t_sched)

        keys = [digest(b) for b in payloads]  # harness bookkeeping, before the measured sends
        index = {id(b): i for i, b in enumerate(payloads)}
        base = await bs.arrival_count(http, stats_url)
        cpu0 = time.process_time()
        if lean is not None and rate > 0:  # open loop: no timer, task or future per message
            t0 = await loadkit.open_loop(lean, payloads, ctype, rate, answered)
        else:
            t0 = await bs.drive(payloads, one, concurrency, rate)
        t_answered = time.monotonic()
        if lean is not None:
            await lean.close()
        cpu_load = time.process_time() - cpu0
        arrivals = await bs.wait_arrivals(http, stats_url, expect, 180, base)
    e2e = [arrivals[k] - sched[k] for k in expect if k in arrivals]
    by_send = [arrivals[k] - sched[k] for k in sorted(expect, key=sched.__getitem__) if k in arrivals]
    fifth = max(1, len(by_send) // 5)
    last = max((arrivals[k] for k in expect if k in arrivals), default=t_answered)
    out = {
        "n": n,
        "loadgen_cpu_s": cpu_load,
        "forwarded": len(expect),
        "errors": errors,
        "missing": sum(1 for k in expect if k not in arrivals),
        "accepted_per_s": n / (t_answered - t0),
        "delivered_per_s": len(expect) / (last - t0) if expect else 0.0,
        "resp_p50_ms": bs.pct(lat, 50) * 1e3,
        "resp_p99_ms": bs.pct(lat, 99) * 1e3,
        "e2e_p50_ms": bs.pct(e2e, 50) * 1e3,
        "e2e_p99_ms": bs.pct(e2e, 99) * 1e3,
        "e2e_mean_ms": statistics.fmean(e2e) * 1e3 if e2e else float("nan"),
        # a queue that grows during the run: the last fifth of the sends waits longer than the first
        "e2e_p50_first_fifth_ms": bs.pct(by_send[:fifth], 50) * 1e3,
        "e2e_p50_last_fifth_ms": bs.pct(by_send[-fifth:], 50) * 1e3,
    }
    print(json.dumps(out))


def role_lean_receiver(port: int) -> None:
    import loadkit

    asyncio.run(loadkit.receiver(port))


# ------------------------------------------------------------------------------------------ driver


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT)


def loadgen(
    target: str, stats: str, work: str, first: int, n: int, concurrency: int, rate: float, harness: str
) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--role", "loadgen", "--target", target, "--stats", stats,
         "--work", work, "--first", str(first), "--n", str(n), "--concurrency", str(concurrency),
         "--rate", str(rate), "--harness", harness],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def observe(port: int, work: str) -> None:
    data = json.loads((Path(work) / "traffic.json").read_text())
    for h in data["observe"]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/duis/observe", data=bytes.fromhex(h),
                                     headers={"Content-Type": "application/xml"}, method="POST")  # fmt: skip
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 204, resp.status


def wait_ready(admin_port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"gateway instance (admin port {admin_port}) not ready")
        time.sleep(0.1)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux ``/proc``)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def _connected_to(pid: int, port: int) -> bool:
    """Whether ``pid`` holds a TCP connection to 127.0.0.1:``port`` (its POSTs to the receiver)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        with open(f"/proc/{pid}/net/tcp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return False
    want = f":{port:04X}"
    return any(r.split()[2].endswith(want) and r.split()[9] in inodes for r in rows)


class CpuSplit:
    """CPU seconds per process of one path over one closed loop, by role: the server side (the proxy, or
    the gateway process and each process under it: the one holding connections to the receiver is its
    sender) and the DNO receiver, read from ``/proc`` (10 ms ticks: use full runs), and the load
    generator's own CPU while it sends (measured inside it, without its start-up)."""

    def __init__(self, servers: list[int], receiver: int, receiver_port: int) -> None:
        self.receiver, self.receiver_port = receiver, receiver_port
        self.pids = [q for s in servers for q in _descendants(s)]
        self.roots = set(servers)
        self.before = {q: _cpu_seconds(q) for q in [*self.pids, receiver]}

    def per_message(self, n: int, loadgen_cpu_s: float) -> dict[str, float]:
        """µs of CPU per message by role (``n`` messages sent), with ``total``."""
        out: dict[str, float] = {}
        for q in self.pids:
            if q in self.roots:
                role = "server"
            elif _connected_to(q, self.receiver_port):
                role = "sender process"
            else:
                role = "other server processes"
            out[role] = out.get(role, 0.0) + _cpu_seconds(q) - self.before[q]
        out["receiver"] = _cpu_seconds(self.receiver) - self.before[self.receiver]
        out["loadgen"] = loadgen_cpu_s
        per = {k: round(v * 1e6 / n, 1) for k, v in out.items()}
        per["total"] = round(sum(out.values()) * 1e6 / n, 1)
        return per


def kept_up(step: dict[str, Any], rate: float) -> bool:
    """Whether an open loop at ``rate`` was sustained: nothing failed or went missing, every message was
    answered at the offered rate (2 % slack for the sender's own pacing), and no queue grew behind it."""
    return (
        step["errors"] == 0
        and step["missing"] == 0
        and step["accepted_per_s"] >= 0.98 * rate
        and step["e2e_p50_last_fifth_ms"] - step["e2e_p50_first_fifth_ms"] <= 50.0
    )


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="gateway classify_threads")
    ap.add_argument("--processes", type=int, default=0, help="gateway classify_processes (worker processes)")
    ap.add_argument("--ingress", type=int, default=2,
                    help="gateway [server] ingress_processes (HTTP ingress + classification in worker processes; "
                         "default 2, 0 = in the gateway process)")  # fmt: skip
    ap.add_argument("--sender-process", action=argparse.BooleanOptionalAction, default=True,
                    help="gateway [outbox] sender_process (the POSTs to the DNO from a process of their own; default on)")  # fmt: skip
    ap.add_argument("--window", type=int, default=64,
                    help="gateway [outbox] window (messages in flight per DNO; default 64)")  # fmt: skip
    ap.add_argument("--separate-state", action="store_true",
                    help="gateway [pipeline] state_in_store = false (decision state in its own database file)")
    ap.add_argument("--rates", default="250,500,1000", help="open-loop rates (msg/s), comma-separated")
    ap.add_argument("--sustain", default="2000,2250,2500,2750,3000",
                    help="open-loop rates (msg/s, comma-separated) at which to test whether the gateway keeps up: "
                         "every message answered and delivered, acceptance at the offered rate and no growing "
                         "queue (end-to-end p50 of the last fifth of the sends within 50 ms of the first fifth's)")  # fmt: skip
    ap.add_argument("--levels", default="32,128,256",
                    help="closed-loop concurrency levels, comma-separated (capacity = each path's best)")
    ap.add_argument("--instances", type=int, default=1,
                    help="gateway instances sharing the port (reuse_port); more than 1 puts the state in Redis")
    ap.add_argument("--harness", choices=("lean", "aiohttp"), default="lean",
                    help="load generator and DNO receiver: lean (asyncio + httptools) or aiohttp")  # fmt: skip
    ap.add_argument("--role", default="driver")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream", default="")
    ap.add_argument("--work", default="")
    ap.add_argument("--target", default="")
    ap.add_argument("--stats", default="")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--instance", default="")
    ap.add_argument("--redis-url", default="")
    ap.add_argument("--admin-port", type=int, default=0)
    a = ap.parse_args(argv)
    if a.role == "gateway":
        asyncio.run(role_gateway(a.port, a.upstream, a.work, a.threads, a.processes, a.window, a.instance,
                                 a.redis_url, a.admin_port, a.ingress, a.sender_process,
                                 a.separate_state))  # fmt: skip
        return 0
    if a.role == "loadgen":
        asyncio.run(role_loadgen(a.target, a.stats, a.work, a.first, a.n, a.concurrency, a.rate, a.harness))
        return 0
    if a.role == "lean-receiver":
        role_lean_receiver(a.port)
        return 0

    n_max = 2000 if a.quick else 6000
    secs = 2.0 if a.quick else 5.0
    rates = [float(r) for r in a.rates.split(",") if r.strip()]
    levels = [int(c) for c in a.levels.split(",") if c.strip()]
    n_rates = [int(r * secs) for r in rates]
    n_rate = sum(n_rates)
    sustain = [float(r) for r in a.sustain.split(",") if r.strip()]
    n_sustain = [int(r * secs) for r in sustain]
    warm = 300
    tmp = tempfile.TemporaryDirectory(prefix="bench-gateway-")
    work = tmp.name
    t_gen = time.monotonic()
    n_closed = n_max * len(levels)
    make_traffic(Path(work), warm + n_closed + n_rate + sum(n_sustain))
    print(f"signed {warm + n_closed + n_rate + sum(n_sustain)} AD1s in {time.monotonic() - t_gen:.1f} s; load: {uptime()}")
    load_before = uptime()
    rport = bs.free_port()
    procs = [bs.spawn("--role", "receiver", "--port", str(rport)) if a.harness == "aiohttp"
             else spawn("--role", "lean-receiver", "--port", str(rport))]  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    gateways: list[subprocess.Popen[bytes]] = []
    redis = None
    if a.instances > 1:
        from bench_scaleout import Redis

        redis = Redis()
    try:
        bs.wait_port(rport)
        upstream = f"http://127.0.0.1:{rport}/smartdcc/duis"
        stats = f"http://127.0.0.1:{rport}/stats"
        reset = stats.replace("/stats", "/reset")
        pport, gport = bs.free_port(), bs.free_port()
        procs.append(bs.spawn("--role", "proxy", "--port", str(pport), "--upstream", upstream))
        admins = [bs.free_port() for _ in range(a.instances)] if redis is not None or a.ingress else []
        for i in range(a.instances):
            more: tuple[str, ...] = () if redis is None else ("--instance", str(i), "--redis-url", redis.url)
            if admins:
                more += ("--admin-port", str(admins[i]), "--ingress", str(a.ingress))
            gateways.append(spawn("--role", "gateway", "--port", str(gport), "--upstream", upstream, "--work", work,
                               "--threads", str(a.threads), "--processes", str(a.processes), "--window", str(a.window),
                               *(("--sender-process",) if a.sender_process else ()),
                               *(("--separate-state",) if a.separate_state else ()), *more))  # fmt: skip
            procs.append(gateways[-1])
        for admin in admins:  # every instance sharing the port is ready before any load
            wait_ready(admin, 60)
        bs.wait_port(pport)
        bs.wait_port(gport, timeout=60)
        observe(gport, work)
        targets = {
            "direct": upstream,
            "proxy": f"http://127.0.0.1:{pport}/duis/dno/dno-a",
            "duisgw": f"http://127.0.0.1:{gport}/duis/dno/dno-a",
        }
        for name, target in targets.items():
            loadgen(target, stats, work, 0, warm, 8, 0.0, a.harness)
            servers = [procs[1].pid] if name == "proxy" else [g.pid for g in gateways] if name == "duisgw" else []
            split = CpuSplit(servers, procs[0].pid, rport)
            res: dict[str, Any] = {f"closed_{levels[0]}": loadgen(target, stats, work, warm, n_max, levels[0], 0.0,
                                                                   a.harness)}  # fmt: skip
            res[f"closed_{levels[0]}"]["cpu_us_per_msg"] = split.per_message(
                n_max, res[f"closed_{levels[0]}"]["loadgen_cpu_s"])
            first = warm + n_max
            for rate, n in zip(rates, n_rates, strict=True):
                res[f"at_{rate:.0f}"] = loadgen(target, stats, work, first, n, 256, rate, a.harness)
                first += n
            for level in levels[1:]:  # after the open loops, which thus follow the first level as they always did
                split = CpuSplit(servers, procs[0].pid, rport)
                res[f"closed_{level}"] = loadgen(target, stats, work, first, n_max, level, 0.0, a.harness)
                res[f"closed_{level}"]["cpu_us_per_msg"] = split.per_message(
                    n_max, res[f"closed_{level}"]["loadgen_cpu_s"])
                first += n_max
            res["max"] = max((res[f"closed_{c}"] for c in levels), key=lambda r: r["accepted_per_s"])
            results[name] = res
            with urllib.request.urlopen(urllib.request.Request(reset, method="POST")):
                pass
            if name == "duisgw":
                for rate, n in zip(sustain, n_sustain, strict=True):
                    split = CpuSplit(servers, procs[0].pid, rport)
                    step = loadgen(target, stats, work, first, n, 256, rate, a.harness)
                    step["cpu_us_per_msg"] = split.per_message(n, step["loadgen_cpu_s"])
                    step["kept_up"] = kept_up(step, rate)
                    res[f"sustain_{rate:.0f}"] = step
                    first += n
                    with urllib.request.urlopen(urllib.request.Request(reset, method="POST")):
                        pass
    finally:
        for p in reversed(procs):
            bs.stop(p)
        if redis is not None:
            redis.stop()
        tmp.cleanup()
    load_after = uptime()

    proxy_max = results["proxy"]["max"]["accepted_per_s"]
    print(f"\ngateway whole-path benchmark ({'quick' if a.quick else 'full'}, classify_threads={a.threads}, "
          f"classify_processes={a.processes}, ingress_processes={a.ingress}, sender_process={a.sender_process}, "
          f"state_in_store={not a.separate_state}, "
          f"window={a.window}, "
          f"instances={a.instances}, harness={a.harness}; "
          f"2 shared cores: noisy)\nload before: {load_before}\nload after:  {load_after}")  # fmt: skip
    print("closed loop, accepted msg/s by requests in flight: " + "; ".join(
        f"{name} " + " ".join(f"{c}: {r[f'closed_{c}']['accepted_per_s']:.0f}" for c in levels)
        for name, r in results.items()))  # fmt: skip
    print(f"{'path':8} {'accepted msg/s':>15} {'delivered msg/s':>16} {'forwarded':>10} {'vs proxy':>9} "
          f"{'delivered vs proxy':>19}  (each path at its best level)")  # fmt: skip
    proxy_dlv = results["proxy"]["max"]["delivered_per_s"]
    for name, r in results.items():
        mx = r["max"]
        print(f"{name:8} {mx['accepted_per_s']:15.0f} {mx['delivered_per_s']:16.0f} {mx['forwarded']:10d} "
              f"{mx['accepted_per_s'] / proxy_max:8.2f}x {mx['delivered_per_s'] / proxy_dlv:18.2f}x")  # fmt: skip
    print("CPU per message at each path's best closed-loop level (µs; server = the proxy or the gateway process; "
          "2 cores give 2,000,000 µs/s):")
    for name, r in results.items():
        cpu = r["max"].get("cpu_us_per_msg", {})
        print(f"{name:8} " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    for rate in rates:
        key = f"at_{rate:.0f}"
        base, prox = results["direct"][key], results["proxy"][key]
        print(f"\nopen loop at {rate:.0f} msg/s (ms; from scheduled send; +direct / +proxy = added latency, e2e)")
        print(f"{'path':8} {'resp p50':>9} {'resp p99':>9} {'e2e p50':>9} {'e2e p99':>9} {'+dir p50':>9} "
              f"{'+dir p99':>9} {'+prx p99':>9}")  # fmt: skip
        for name, r in results.items():
            at = r[key]
            print(f"{name:8} {at['resp_p50_ms']:9.2f} {at['resp_p99_ms']:9.2f} {at['e2e_p50_ms']:9.2f} "
                  f"{at['e2e_p99_ms']:9.2f} {at['e2e_p50_ms'] - base['e2e_p50_ms']:9.2f} "
                  f"{at['e2e_p99_ms'] - base['e2e_p99_ms']:9.2f} {at['e2e_p99_ms'] - prox['e2e_p99_ms']:9.2f}")  # fmt: skip
    if sustain:
        print(f"\nduisgw sustained, open loop for {secs:.0f} s at each rate (kept up = all answered at the rate, all "
              "delivered, e2e p50 of the last fifth within 50 ms of the first fifth's)")
        print(f"{'offered':>8} {'accepted':>9} {'delivered':>10} {'e2e p50':>8} {'e2e p99':>8} {'1st 5th':>8} "
              f"{'last 5th':>9} {'CPU µs/msg':>11} {'kept up':>8}")  # fmt: skip
        best = 0.0
        for rate in sustain:
            s = results["duisgw"][f"sustain_{rate:.0f}"]
            best = rate if s["kept_up"] and rate > best else best
            print(f"{rate:8.0f} {s['accepted_per_s']:9.0f} {s['delivered_per_s']:10.0f} {s['e2e_p50_ms']:8.1f} "
                  f"{s['e2e_p99_ms']:8.1f} {s['e2e_p50_first_fifth_ms']:8.1f} {s['e2e_p50_last_fifth_ms']:9.1f} "
                  f"{s['cpu_us_per_msg']['total']:11.0f} {'yes' if s['kept_up'] else 'no':>8}")  # fmt: skip
        print(f"highest sustained rate tested: {best:.0f} msg/s ({best / proxy_max:.2f}x the proxy's closed-loop best)")
    for name, r in results.items():
        bad = {k: (v["errors"], v["missing"]) for k, v in r.items() if v["errors"] or v["missing"]}
        if bad:
            print(f"  {name}: (errors, missing) {bad}")
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "gateway.json").write_text(json.dumps(
        {"quick": a.quick, "levels": levels, "classify_threads": a.threads, "classify_processes": a.processes, "ingress_processes": a.ingress, "sender_process": a.sender_process, "state_in_store": not a.separate_state, "window": a.window, "instances": a.instances, "harness": a.harness, "rates": rates, "sustain": sustain, "n_max": n_max, "seconds_at_rate": secs,
         "load_before": load_before, "load_after": load_after, "results": results},
        indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
