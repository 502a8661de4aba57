"""Fixtures of the ``duisgw audit`` tests: the stores of a real gateway run (the live demo's work folder),
copied per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live demo's work folder: a real gateway run with four suppressed messages on 2026-03-02."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    done = subprocess.run([sys.executable, "-m", "gateway", "demo", "--out", str(out)], env={**os.environ, "PYTHONPATH": str(PROJECT)},
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture
def work(demo_run: Path, tmp_path: Path) -> Path:
    """A copy of the demo's work folder whose config names its own files."""
    folder = tmp_path / "demo"
    shutil.copytree(demo_run, folder)
    config = folder / "gateway.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace(str(demo_run), str(folder)), encoding="utf-8"
    )
    return folder
