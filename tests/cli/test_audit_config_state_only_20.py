"""``duisgw audit`` loaded the configuration with the whole validation of ``serve``: every file the configuration
names had to be there and usable for the user who ran it (TLS private keys, the certificates folder, the GUID list,
a revocation list not past its ``nextUpdate``). An operator without the service's private keys, or during the very
incident that stops ``serve`` (a lapsed CRL, a missing GUID workbook), could not read the decisions. The audit now
checks the options' names and types and the rules on where the state is (``[store]``, ``[pipeline] state_dir``,
``[state]``, ``mode``, ``[engine]``), and opens none of the service's other files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def duisgw(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def broken_files(work: Path) -> Path:
    """The demo's config with TLS material that is not there, and a certificates folder, GBCS keys folder and GUID
    list that are gone: ``serve`` (and ``config check``) refuse it; the state it names is intact."""
    config = work / "gateway.toml"
    text = config.read_text(encoding="utf-8")
    for folder in ("certs", "gbcs-keys"):
        text = text.replace(str(work / folder), str(work / f"{folder}-gone"))
    text = text.replace("[admin]\n", '[server.tls]\ncert_file = "/nonexistent/server.pem"\n'
                        'key_file = "/nonexistent/server.key"\n\n[admin]\n', 1)  # fmt: skip
    config.write_text(text, encoding="utf-8")
    return config


def test_the_audit_reads_the_state_when_the_files_only_the_service_reads_are_missing(work: Path) -> None:
    config = broken_files(work)
    checked = duisgw("config", "check", str(config))
    assert checked.returncode == 2
    assert "server.tls.cert_file: file not found" in checked.stderr + checked.stdout
    listed = duisgw("audit", "list", "--config", str(config), "--decision", "suppress", "--json")
    assert listed.returncode == 0, listed.stderr
    ids = [line for line in listed.stdout.splitlines() if line.strip()]
    assert len(ids) == 4  # the demo's four suppressions
    exported = duisgw("audit", "export", "--config", str(config), "--date", "2026-03-02")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.count("\n") == 5  # the header and the four suppressions
    for argv in (("dead", "list"), ("rejects",)):
        done = duisgw("audit", *argv, "--config", str(config))
        assert done.returncode in (0, 1), done.stderr  # (1: nothing matched)
        assert "file not found" not in done.stderr


@pytest.mark.parametrize(
    ("inserted", "problem"),
    [
        ('[state]\nbackend = "mongodb"\n\n[store]\n', "state.backend: must be one of"),  # a wrong state option
        ("[store]\npth = 'x'\n", "store.pth"),  # an option that does not exist
    ],
    ids=["state-option", "unknown-option"],
)
def test_the_audit_still_refuses_a_config_whose_state_options_are_wrong(work: Path, inserted: str, problem: str) -> None:
    config = work / "gateway.toml"
    config.write_text(config.read_text(encoding="utf-8").replace("[store]\n", inserted, 1), encoding="utf-8")
    done = duisgw("audit", "list", "--config", str(config))
    assert done.returncode == 2
    assert problem in done.stderr
