"""The ``gateway.toml`` that ``duisgw demo --out DIR`` keeps names, in its first line, an audit command
that works on it as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def _duisgw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_the_audit_command_the_demo_config_suggests_runs_on_it(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = _duisgw("demo", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    config = out / "gateway.toml"
    first = config.read_text(encoding="utf-8").splitlines()[0]
    hints = re.findall(r"`duisgw ([^`]*THIS[^`]*)`", first)
    assert len(hints) == 1, first
    args = [str(config) if a == "THIS" else a for a in shlex.split(hints[0])]
    assert str(config) in args, first
    shown = _duisgw(*args, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "activation-window" in shown.stdout  # the demo's suppressions are listed
