"""``duisgw_messages_total``'s ``kind`` label is bounded: a message's kind comes from the message (a DCC
alert code is free text in the DUIS schema, a device alert code one of 65,536), and each new label value is
a series the registry keeps for the life of the process. The first ``KIND_LABELS_MAX`` kinds keep their own
value; a later new one is counted as ``<family>.other``, and the limit is logged once."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest

from gateway.service.metrics import KIND_LABELS_MAX, Metrics


def _series(metrics: Metrics) -> dict[str, float]:
    """``kind`` -> value of the ``duisgw_messages_total`` series (one lane, decision and reason here)."""
    out: dict[str, float] = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("duisgw_messages_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = out.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_new_kinds_past_the_limit_are_counted_under_their_family_and_the_series_stay_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    with caplog.at_level(logging.WARNING, logger="duisgw.metrics"):
        m.count_accepted("inline", "DCCAlertMessage.AD1", "forward", "not-in-scope")
        for code in range(0x8000, 0x8000 + 2 * KIND_LABELS_MAX):  # a peer sending every device alert code
            m.count_accepted("inline", f"DeviceAlertMessage.{code:04X}", "forward", "not-in-scope")
        m.count_accepted("inline", "DCCAlertMessage.AD1", "forward", "not-in-scope", n=2)
        m.count_accepted("inline", "DCCAlertMessage.free text", "forward", "not-in-scope")
        m.count_accepted("inline", "SomethingElse", "forward", "not-in-scope")
    series = _series(m)
    assert len(series) == KIND_LABELS_MAX + 3  # the kinds within the limit, and three families' "other"
    assert series["DCCAlertMessage.AD1"] == 3  # a kind counted before the limit keeps its own series
    assert series["DeviceAlertMessage.8000"] == 1
    assert series["DeviceAlertMessage.other"] == KIND_LABELS_MAX + 1
    assert series["DCCAlertMessage.other"] == 1 and series["other"] == 1
    assert sum(series.values()) == 3 + 2 * KIND_LABELS_MAX + 2  # every message counted once
    assert [r.getMessage() for r in caplog.records] == [
        "kind label limit reached: later new kinds are counted as <family>.other"
    ]


def test_within_the_limit_every_kind_has_its_own_series() -> None:
    m = Metrics()
    kinds = [
        "DCCAlertMessage.AD1",
        "DeviceAlertMessage.8F36",
        "ResponseMessage.GBCSPayload",
        "Request.ReadInventory",
    ]
    for kind in kinds:
        m.count_accepted("observe", kind, "observe", "observed")
    assert _series(m) == dict.fromkeys(kinds, 1.0)
