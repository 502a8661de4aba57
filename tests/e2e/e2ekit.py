"""End-to-end helpers: signed traffic, the gateway as a real subprocess, its configuration."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from gateway.service.simulate import DspSimulator, Posted, TimedMessage
from gateway.testkit.demo import demo_scenario
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import Scenario, World
from gbcs.eui import format_eui

PROJECT = Path(__file__).resolve().parents[2]
DNO_USER = format_eui(DNO_EUI)


@dataclass
class Traffic:
    """Every scenario of the e2e suite, built once with one world (one PKI, one GUID list)."""

    world: World
    demo: Scenario
    stream: Scenario
    reload: Scenario
    reload_meter: int  # ESME of the premises that is added to the GUID list by the reload test
    reference: dict[str, Path]

    def merged(self) -> list[TimedMessage]:
        steps = sorted([*self.demo.steps, *self.stream.steps], key=lambda s: s.at)
        return [TimedMessage(s.at, s.lane, s.body) for s in steps]

    def expected(self) -> dict[str, str]:
        out = {str(e["message_id"]): str(e["decision"]) for e in self.demo.expected()}
        out.update({str(e["message_id"]): str(e["decision"]) for e in self.stream.expected()})
        return out

    def bodies(self) -> dict[str, bytes]:
        return {s.message_id: s.body for s in [*self.demo.steps, *self.stream.steps, *self.reload.steps]
                if s.lane == "inline"}  # fmt: skip


def build_traffic(out: Path, premises: int = 24) -> Traffic:
    """The demo scenario plus a stream of ``premises`` premises (odd: activation then a suppressed AD1;
    even: a genuine outage, forwarded), plus the premises of the GUID-list reload test."""
    world = World.generated()
    demo = demo_scenario(world)
    f = world.factory
    stream = Scenario("stream", world)
    t = stream.t
    for i in range(premises):
        n = 20 + i
        esme, ch, mpan = world.meter(n)
        base = t("12:00") + timedelta(minutes=2 * i)
        if i % 2:
            stream.observe(base, f.activate_request(esme, 6000 + i), f"11.3 request {n}")
            stream.observe(base + timedelta(seconds=30), f.activate_response(esme, 6000 + i, base + timedelta(seconds=30)),
                           f"11.3 response {n}")  # fmt: skip
            ad1 = f.ad1(ch, mpan, base + timedelta(minutes=3), base + timedelta(minutes=5), 300 + i)
            stream.inline(
                base + timedelta(minutes=5), ad1, "suppress", "activation-window", label=f"AD1 {n} reboot"
            )
        else:
            ad1 = f.ad1(ch, mpan, base + timedelta(minutes=1), base + timedelta(minutes=4), 300 + i)
            stream.inline(
                base + timedelta(minutes=4), ad1, "forward", "no-activation", label=f"AD1 {n} outage"
            )
    stream.steps.sort(key=lambda s: s.at)
    # the reload test: a meter that is NOT in the GUID list at first
    reload = Scenario("reload", world)
    r = reload.t
    esme_a, ch_a, mpan_a = world.meter(90, in_scope=False)
    esme_b, ch_b, mpan_b = world.meter(91, in_scope=False)
    reload.observe(r("15:00"), f.activate_response(esme_a, 7001, r("15:00")), "11.3 response A")
    reload.inline(
        r("15:06"), f.ad1(ch_a, mpan_a, r("15:03"), r("15:06"), 401), "forward", "out-of-scope", label="AD1 A"
    )
    reload.observe(r("15:10"), f.activate_response(esme_b, 7002, r("15:10")), "11.3 response B")
    reload.inline(r("15:16"), f.ad1(ch_b, mpan_b, r("15:13"), r("15:16"), 402), "suppress", "activation-window",
                  label="AD1 B (after the reload)")  # fmt: skip
    reference = world.write_reference(out)
    return Traffic(world, demo, stream, reload, esme_b, reference)


# ------------------------------------------------------------------------------------------ config


def write_config(
    path: Path,
    *,
    port: int,
    admin_port: int,
    reference: dict[str, Path],
    destinations: list[dict[str, Any]],
    guids: Path | None = None,
    extra: str = "",
    server_tls: str = "",
    window: int = 1,
    server_extra: str = "",
    outbox_extra: str = "",
) -> Path:
    """A gateway configuration for the e2e tests (clock = message, fast retries); ``extra`` is added
    to the ``[pipeline]`` table, ``window`` is ``[outbox] window``."""
    dest_text = ""
    for d in destinations:
        dest_text += "\n[[destinations]]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in d.items() if not isinstance(v, dict)
        )
        for k, v in d.items():
            if isinstance(v, dict):  # a sub-table such as [destinations.tls]
                dest_text += f"[destinations.{k}]\n" + "".join(
                    f"{a} = {json.dumps(b)}\n" for a, b in v.items()
                )
    path.write_text(
        f"""mode = "pipeline"
clock = "message"
tick_interval = 0.2

[server]
host = "127.0.0.1"
port = {port}
shutdown_timeout = 3.0
{server_extra}{server_tls}
[admin]
host = "127.0.0.1"
port = {admin_port}

[store]
path = "outbox.sqlite3"
synchronous = "FULL"

[outbox]
backoff_initial = 0.05
backoff_max = 0.3
poll_interval = 0.2
request_timeout = 2.0
drain_timeout = 3.0
window = {window}
{outbox_extra}
[logging]
level = "INFO"

[pipeline]
state_dir = "state"
certificates = "{reference["certs"]}"
gbcs_keys = "{reference["gbcs_keys"]}"
guids = "{guids or reference["guids"]}"
inventory = "{reference["inventory"]}"
{extra}
{dest_text}""",
        encoding="utf-8",
    )
    return path


# ------------------------------------------------------------------------------------------ process


@dataclass
class GatewayProcess:
    """``python -m gateway serve --config FILE`` as a child process."""

    config: Path
    admin_port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.config.with_suffix(".log")

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(PROJECT)}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
            cwd=self.config.parent,
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited with {self.proc.returncode}: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"http://127.0.0.1:{self.admin_port}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"gateway not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no drain, no flush (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful drain); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError("gateway did not stop on SIGTERM") from None
        return int(self.proc.returncode)

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    async def admin(self, method: str, path: str, payload: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"http://127.0.0.1:{self.admin_port}{path}", json=payload) as resp,
        ):
            resp.raise_for_status()
            return await resp.json()


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def final_decisions(config: Path) -> dict[str, tuple[str, str]]:
    """message id → (decision, reason) from ``duisgw audit list --json``."""
    done = run_cli("audit", "list", "--config", str(config), "--json")
    assert done.returncode in (0, 1), done.stderr
    out = {}
    for line in done.stdout.splitlines():
        item = json.loads(line)
        out[item["message_id"]] = (item["decision"], item["reason"])
    return out


async def send_all(url: str, messages: list[TimedMessage], **kw: Any) -> list[Posted]:
    async with DspSimulator(url, DNO_USER, **kw) as dsp:
        return await dsp.run(messages)


def end_of(messages: list[TimedMessage], hold_limit: timedelta = timedelta(minutes=10)) -> datetime:
    return max(m.at for m in messages) + hold_limit + timedelta(seconds=1)


async def start_with_workers(
    tmp: Path, reference: dict[str, Path], url: str, *, workers: str, port: int, admin: int
) -> tuple[GatewayProcess, str]:
    """``duisgw serve`` as a process on ``port`` (admin ``admin``) with one ``workers`` worker process
    (``"ingress"``: an ingress worker, ``"classify"``: a classify worker), delivering to ``url``; ready."""
    server = "ingress_processes = 1\n" if workers == "ingress" else ""
    extra = "classify_processes = 1\n" if workers == "classify" else ""
    cfg = write_config(tmp / "gateway.toml", port=port, admin_port=admin, reference=reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": url}],
                       server_extra=server, extra=extra)  # fmt: skip
    gw = GatewayProcess(cfg, admin)
    gw.start()
    await gw.wait_ready()
    return gw, f"http://127.0.0.1:{port}"


async def ad1_decision(url: str, case: list[TimedMessage]) -> str | None:
    """Send an observed response and its AD1; the AD1's decision."""
    answers = await send_all(url, case)
    assert [a.status for a in answers] == [204, 200], answers  # (observed, then decided)
    return answers[1].decision


async def scrape(admin_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the gateway's ``/metrics``, by name and sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def metric(admin_port: int, name: str, **labels: str) -> float | None:
    """One sample of the gateway's ``/metrics`` (None when absent)."""
    return (await scrape(admin_port)).get((name, tuple(sorted(labels.items()))))
