"""docs/OPERATIONS.md's metric table names every metric the gateway exports, by the name a query
uses (a counter's ``_total``), with its type and labels, and nothing the code does not register."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from gateway.service.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The table under ``### Metrics``: name -> (type, labels)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n### Metrics\n", 1)[1].split("\n#", 1)[0]
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`duisgw_"):
            continue
        name = cells[0].strip("`")
        assert name not in rows, f"{name} listed twice"
        rows[name] = (cells[1], tuple(re.findall(r"`([a-z_]+)`", cells[2])))
    return rows


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric of :class:`Metrics`: the name a query uses -> (type, labels)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            kind = metric._type
            name = metric._name + ("_total" if kind == "counter" else "")
            out[name] = (kind, tuple(metric._labelnames))
    return out


def test_the_operations_metric_table_lists_exactly_the_registered_metrics_with_type_and_labels() -> None:
    doc = documented()
    assert len(doc) >= 20  # the table was found and read
    assert doc == registered()


def test_every_metric_name_the_docs_mention_is_registered() -> None:
    names = set(registered())
    for path in [DOC.parents[1] / "README.md", *sorted(DOC.parent.glob("*.md"))]:
        if path.name.startswith(("PERFORMANCE", "RELIABILITY")):  # dated measurements and history
            continue
        for mentioned in re.findall(r"\bduisgw_[a-z_]+", path.read_text(encoding="utf-8")):
            base = re.sub(r"_(bucket|sum|count)$", "", mentioned)
            assert base in names, f"{path.name} names {mentioned}, which the gateway does not export"
