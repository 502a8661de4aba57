"""The TOML configuration: defaults, validation, the CLI and the generated documentation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.service.config import (
    ConfigError,
    ServiceConfig,
    config_from_mapping,
    load_config,
    render_default_toml,
    render_markdown,
)


def test_default_config_file_parses_back_to_the_defaults() -> None:
    assert config_from_mapping(tomllib.loads(render_default_toml())) == ServiceConfig()


def test_every_option_is_documented_in_docs_config_md(project_root: Path) -> None:
    doc = (project_root / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert doc == render_markdown(), "docs/CONFIG.md is stale: regenerate with `duisgw config default --markdown`"


def test_config_check_cli_accepts_the_default_file_in_passthrough_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # (in pipeline mode it needs certificates and gbcs_keys first, as serve does: test_config_check.py)
    assert main(["config", "default"]) == 0
    text = capsys.readouterr().out.replace('mode = "pipeline"', 'mode = "passthrough"', 1)
    f = tmp_path / "duisgw.toml"
    f.write_text(text)
    assert main(["config", "check", str(f)]) == 0
    assert "ok" in capsys.readouterr().out


def test_config_check_cli_lists_every_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(
        'mode = "fast"\n'
        "[server]\nport = \"8443\"\nmax_bdy = 1\n"
        "[server.tls]\nclient_ca_file = \"ca.pem\"\n"
        "[outbox]\njitter = 1.5\n"
        "[[destinations]]\nname = \"dno-a\"\nuser = \"not-an-eui\"\nurl = \"ftp://x\"\n"
        "[[destinations]]\nname = \"dno-a\"\nurl = \"http://127.0.0.1:1/x\"\n"
    )
    assert main(["config", "check", str(f)]) == 2
    err = capsys.readouterr().err
    for expected in (
        "mode: must be one of pipeline, passthrough",
        "server.port: expected an integer",
        "server.max_bdy: unknown option",
        "server.tls.client_ca_file: mutual TLS needs cert_file/key_file",
        "server.tls.client_ca_file: file not found: ca.pem",
        "outbox.jitter: must be within 0..1",
        "destinations[0].user: not an EUI-64",
        "destinations[0].url: an http(s) URL",
        "destinations[1].name: duplicate destination 'dno-a'",
    ):
        assert expected in err, expected


def test_config_check_reports_unreadable_and_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 2
    f = tmp_path / "broken.toml"
    f.write_text("[server\n")
    assert main(["config", "check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "not valid TOML" in err


def test_destination_is_found_by_name_or_by_dcc_user_id_in_any_spelling(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[[destinations]]\nname = "dno-a"\nuser = "90-b3-d5-1f-30-02-00-00"\nurl = "http://127.0.0.1:9/d"\n')
    cfg = load_config(f)
    assert cfg.destination("dno-a") is cfg.destinations[0]
    assert cfg.destination("90B3D51F30020000") is cfg.destinations[0]
    assert cfg.destination("90-B3-D5-1F-30-02-00-01") is None
    assert cfg.destination("dno-b") is None


def test_engine_table_is_passed_to_the_pipeline_validator(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[engine]\nwindow_after = "30m"\n')
    assert load_config(f).engine["window_after"] == "30m"
    with pytest.raises(ConfigError) as info:
        load_config(f, engine_validator=lambda e: [f"window_after: bad duration {e['window_after']!r}"])
    assert info.value.problems == ["engine.window_after: bad duration '30m'"]


def test_a_shared_ingress_port_needs_shared_decision_state() -> None:
    """Instances on one port (SO_REUSEPORT) each see part of the traffic: on SQLite each would decide
    on its own part of the evidence, so ``reuse_port`` is refused unless the state is in Redis."""
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"server": {"reuse_port": True}})
    assert any(p.startswith("server.reuse_port:") for p in err.value.problems)
    shared = config_from_mapping({"server": {"reuse_port": True}, "state": {"backend": "redis"}})
    assert shared.server.reuse_port
    # a pass-through gateway keeps no decision state: nothing to share
    assert config_from_mapping({"mode": "passthrough", "server": {"reuse_port": True}}).server.reuse_port


def test_the_arrival_bounds_are_non_negative_and_bounded() -> None:
    """``arrival_max_skew`` / ``arrival_max_delay`` (``clock = "message"``): seconds, 0..100 years."""
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"arrival_max_skew": -1, "arrival_max_delay": 1e300})
    assert [p.split(":")[0] for p in err.value.problems] == ["arrival_max_skew", "arrival_max_delay"]
    cfg = config_from_mapping({"arrival_max_skew": 0, "arrival_max_delay": 86400})
    assert (cfg.arrival_max_skew, cfg.arrival_max_delay) == (0.0, 86400.0)
