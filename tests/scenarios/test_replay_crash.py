"""Kill ``duisgw replay`` with SIGKILL mid-stream, run it again on the same state store: the final
decisions equal an uninterrupted run's and every inline message is decided (nothing lost)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from gateway.testkit.scenario import Scenario, World
from tests.processes import children
from tests.scenarios.support import replay


def _campaign(world: World, meters: int) -> Scenario:
    f = world.factory
    s = Scenario("campaign", world)
    rng = random.Random(7)
    steps = []
    for n in range(1, meters + 1):
        esme, ch, mpan = world.meter(n)
        minute = n % 50
        at = s.t(f"09:{minute:02d}:00")
        kind = n % 4
        if kind == 0:  # immediate activation, AD1 in window
            steps.append((at, "observe", f.activate_request(esme, 1000 + n), None))
            t1 = s.t(f"09:{minute:02d}:40")
            steps.append((t1, "observe", f.activate_response(esme, 1000 + n, t1), None))
            a = s.t(f"10:{minute:02d}:00")
            steps.append((a, "inline", f.ad1(ch, mpan, s.t(f"09:{minute:02d}:50"), a, n), "suppress"))
        elif kind == 1:  # future-dated, outcome after the AD1 (held)
            ex = s.t(f"11:{minute:02d}:00")
            steps.append((at, "observe", f.activate_request(esme, 1000 + n, execution=ex), None))
            a = s.t(f"11:{minute:02d}:04")
            steps.append((a, "inline", f.ad1(ch, mpan, s.t(f"11:{minute:02d}:01"), a, n), "suppress"))
            o = s.t(f"11:{minute:02d}:06")
            steps.append((o, "observe", f.future_dated_outcome(esme, 1000 + n, ex, o), None))
        elif kind == 2:  # genuine outage, no activation
            a = s.t(f"12:{minute:02d}:00")
            steps.append((a, "inline", f.ad1(ch, mpan, s.t(f"11:{minute:02d}:30"), a, n), "forward"))
        else:  # activation, outage long after the window
            t1 = s.t(f"09:{minute:02d}:40")
            steps.append((t1, "observe", f.activate_response(esme, 1000 + n, t1), None))
            a = s.t(f"13:{minute:02d}:00")
            steps.append((a, "inline", f.ad1(ch, mpan, s.t(f"12:{minute:02d}:59"), a, n), "forward"))
    steps.sort(key=lambda x: (x[0], rng.random()))
    for at, lane, body, decision in steps:
        if lane == "observe":
            s.observe(at, body)
        else:
            s.inline(at, body, decision)
    return s


def _run(paths: dict[str, Path], state: Path, out: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gateway", "replay", str(paths["script"]), "--guids", str(paths["guids"]),
           "--inventory", str(paths["inventory"]), "--certs", str(paths["certs"]), "--gbcs-keys",
           str(paths["gbcs_keys"]), "--state", str(state), "--jsonl", str(out), "--quiet"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _decided(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("select count(*) from decisions").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sigkill_mid_stream_then_restart_gives_identical_final_decisions(tmp_path: Path) -> None:
    world = World.generated()
    scenario = _campaign(world, 160)
    baseline = replay(scenario, tmp_path)  # uninterrupted, in memory
    inline_ids = {e["message_id"] for e in scenario.expected()}
    assert set(baseline) == inline_ids
    paths = scenario.write(tmp_path / "crash")

    killed_at = 0
    for attempt in range(8):
        state = tmp_path / f"state-{attempt}.sqlite3"
        proc = _run(paths, state, tmp_path / f"first-{attempt}.jsonl")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            n = _decided(state)
            if n >= len(inline_ids) // 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
        if proc.returncode == -signal.SIGKILL:
            killed_at = _decided(state)
            if 0 < killed_at < len(inline_ids):
                break
    assert 0 < killed_at < len(inline_ids), "could not kill the replay mid-stream"

    out = tmp_path / "second.jsonl"
    second = _run(paths, state, out)
    assert second.wait(timeout=120) == 0, second.stderr.read().decode() if second.stderr else ""
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    final = {line["message_id"]: line for line in lines}
    assert set(final) == inline_ids  # nothing lost
    assert {k: (v["decision"], v["reason"]) for k, v in final.items()} == {
        k: (v["decision"], v["reason"]) for k, v in baseline.items()
    }
    assert sum(1 for line in lines if line.get("duplicate")) >= 1  # the first run's decisions were kept
    for exp in scenario.expected():
        assert final[str(exp["message_id"])]["decision"] == exp["decision"]


def test_a_killed_replay_leaves_no_classify_worker_behind(tmp_path: Path) -> None:
    paths = _campaign(World.generated(), 160).write(tmp_path / "crash")
    proc = _run(paths, tmp_path / "state.sqlite3", tmp_path / "out.jsonl")
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while proc.poll() is None and len(workers) < 2 and time.monotonic() < deadline:
        workers = children(proc.pid)  # the classify pool (one worker per core, at least 2 here)
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and workers, "the replay was not caught with its pool running"
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == [], "orphaned classify workers"
