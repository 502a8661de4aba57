"""docs/ENGINE.md §10 lists exactly the engine's reason codes (:class:`gateway.engine.effects.Reason`), and
§12 every ``[engine]`` option (:class:`gateway.engine.config.EngineConfig`) at its default."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

from gateway.engine.config import EngineConfig
from gateway.engine.effects import Reason

DOC = Path(__file__).resolve().parents[2] / "docs" / "ENGINE.md"


def test_the_engine_reason_table_lists_exactly_the_reason_codes() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "\n## 10. Reason codes\n" in text, "the table's heading moved"
    section = text.split("\n## 10. Reason codes\n", 1)[1].split("\n## ", 1)[0]
    codes: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            codes += re.findall(r"`([a-z-]+)`", line.split("|")[1])
    assert len(codes) == len(set(codes)), "a code listed twice"
    assert set(codes) == {r.value for r in Reason}


def test_the_engine_configuration_table_lists_every_option_at_its_default() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "\n## 12. Configuration (`[engine]`)\n" in text, "the table's heading moved"
    section = text.split("\n## 12. Configuration (`[engine]`)\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1].strip("`")
    documented = EngineConfig.from_mapping({k: tomllib.loads(f"v = {v}")["v"] for k, v in rows.items()})
    assert list(rows) == [f.name for f in fields(EngineConfig)]  # every option, in the code's order
    assert documented == EngineConfig()  # each at its default
