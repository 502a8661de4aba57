"""The operator commands around the gateway: the live demo, config check with the engine policy,
the audit export a DNO reconciles against."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from e2ekit import run_cli

from gateway.cli.audit import EXPORT_COLUMNS


def test_demo_runs_the_live_gateway_and_every_decision_matches_the_scenario(tmp_path: Path) -> None:
    done = run_cli("demo", "--out", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every decision matches the scenario's expectation" in done.stdout
    assert "byte-identical" in done.stdout and "BYTES DIFFER" not in done.stdout
    config = tmp_path / "demo" / "gateway.toml"
    export = run_cli("audit", "export", "--config", str(config), "--date", "2026-03-02")
    assert export.returncode == 0, export.stderr
    rows = list(csv.DictReader(io.StringIO(export.stdout)))
    assert tuple(rows[0].keys()) == EXPORT_COLUMNS
    assert {r["reason"] for r in rows} == {"activation-window", "fd-confirmed", "restoration-paired"}
    ad1 = next(r for r in rows if r["reason"] == "fd-confirmed")
    assert ad1["destination"] == "dno" and ad1["ch"] and ad1["mpan"] and ad1["esme"] and ad1["start_datetime"]
    assert len(ad1["evidence_message_ids"].split(";")) == 3  # request, accepted response, 8F66
    listed = run_cli("audit", "list", "--config", str(config), "--decision", "suppress")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == len(rows)


def test_config_check_reports_a_bad_engine_policy(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text('clock = "sundial"\n[engine]\nwindow_after = "half an hour"\n')
    done = run_cli("config", "check", str(f))
    assert done.returncode == 2
    assert "clock: must be one of wall, message" in done.stderr
    assert "engine.window_after: not a duration" in done.stderr


def test_serve_refuses_a_pipeline_config_without_certificates(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text('mode = "pipeline"\n')
    done = run_cli("serve", "--config", str(f))
    assert done.returncode == 2
    assert "pipeline.certificates: required in pipeline mode" in done.stderr
