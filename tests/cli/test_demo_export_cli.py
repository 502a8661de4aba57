"""``duisgw demo --out DIR`` with a relative DIR, and ``duisgw audit export --out-dir`` into a folder it
cannot write: run as the real entry point (exit codes and stderr are about the process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def _duisgw(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(PROJECT)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished demo's work folder (absolute --out), with its gateway.toml and decision state."""
    work = tmp_path_factory.mktemp("demo") / "work"
    proc = _duisgw("demo", "--out", str(work), cwd=work.parent)
    assert proc.returncode == 0, proc.stderr
    return work


def test_demo_with_a_relative_out_folder_runs_and_its_config_names_files_that_exist(tmp_path: Path) -> None:
    proc = _duisgw("demo", "--out", "work", cwd=tmp_path)
    # the config named "work/certs" relative to its own folder work/: serve's load failed, a traceback
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "every decision matches the scenario's expectation" in proc.stdout
    listed = _duisgw("audit", "list", "--config", "work/gateway.toml", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.count("\n") >= 1, listed.stderr


def test_demo_with_an_out_that_is_a_file_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder", encoding="utf-8")
    proc = _duisgw("demo", "--out", "taken", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "duisgw demo: cannot use --out taken: File exists\n"


def test_audit_export_into_an_out_dir_it_cannot_create_exits_2_with_one_line(
    demo_work: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "exports"
    blocker.write_text("a file where the folder should be", encoding="utf-8")
    proc = _duisgw(
        "audit", "export", "--config", str(demo_work / "gateway.toml"), "--date", "2026-03-02",
        "--out-dir", str(blocker), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == f"duisgw audit: cannot write {blocker}: File exists\n"
    assert proc.stdout == ""


def test_audit_export_into_an_out_dir_writes_one_csv_per_dno(demo_work: Path, tmp_path: Path) -> None:
    proc = _duisgw(
        "audit", "export", "--config", str(demo_work / "gateway.toml"), "--date", "2026-03-02",
        "--out-dir", str(tmp_path / "exports"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = sorted((tmp_path / "exports").iterdir())
    assert [p.name for p in written] == ["suppressions-2026-03-02-dno.csv"]
    assert written[0].read_text(encoding="utf-8").startswith("date,destination,message_id,")


def test_demo_into_a_folder_a_previous_run_filled_exits_2_and_runs_nothing(demo_work: Path, tmp_path: Path) -> None:
    """A second run into the same --out found the first run's stores: every message was answered as a re-delivery,
    the DNO stub got nothing and the demo reported five mismatches (exit 1). Now it says why, and runs nothing."""
    before = sorted(p.relative_to(demo_work) for p in demo_work.rglob("*"))
    proc = _duisgw("demo", "--out", str(demo_work), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (f"duisgw demo: cannot use --out {demo_work}: not empty (a previous run's state would "
                           "answer every message as a re-delivery): give a new or empty folder\n")  # fmt: skip
    assert sorted(p.relative_to(demo_work) for p in demo_work.rglob("*")) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _duisgw("demo", "--out", str(empty), cwd=tmp_path).returncode == 0  # an empty folder is taken
