"""Helpers for the MP102B scenario tests: write a scenario, run ``duisgw replay`` on it, read decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.cli import main
from gateway.testkit.scenario import Scenario


def replay(scenario: Scenario, tmp: Path, *extra: str) -> dict[str, dict[str, Any]]:
    """Run the CLI in-process; returns the final decision line per message id (arrival order kept)."""
    return {line["message_id"]: line for line in replay_lines(scenario, tmp, *extra)}


def replay_lines(scenario: Scenario, tmp: Path, *extra: str) -> list[dict[str, Any]]:
    """Run the CLI in-process; returns every decision line it wrote, in order (duplicates included)."""
    paths = scenario.write(tmp / scenario.name)
    out = tmp / scenario.name / "decisions.jsonl"
    rc = main(
        [
            "replay",
            str(paths["script"]),
            "--guids", str(paths["guids"]),
            "--inventory", str(paths["inventory"]),
            "--certs", str(paths["certs"]),
            "--gbcs-keys", str(paths["gbcs_keys"]),
            "--jsonl", str(out),
            "--quiet",
            *extra,
        ]
    )  # fmt: skip
    assert rc == 0
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def check_expected(scenario: Scenario, decisions: dict[str, dict[str, Any]]) -> None:
    """Every inline message has exactly the decision (and reason, held) the scenario expects."""
    for exp in scenario.expected():
        got = decisions.get(str(exp["message_id"]))
        assert got is not None, f"no decision for {exp['label']}"
        assert got["decision"] == exp["decision"], (exp["label"], got)
        if "reason" in exp:
            assert got["reason"] == exp["reason"], (exp["label"], got)
        if "held" in exp:
            assert got["held"] == exp["held"], (exp["label"], got)
