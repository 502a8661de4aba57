"""Figures docs/OPERATIONS.md states that the code computes: the prose must give the code's number."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.service.mqtt import PUBLISH_OVERHEAD_BOUND

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def test_the_mqtt_maximum_packet_size_overhead_in_operations_is_the_code_bound() -> None:
    text = " ".join(DOC.read_text(encoding="utf-8").split())
    stated = re.findall(r"`server\.max_body_bytes` \+ ([0-9,]+) bytes", text)
    assert stated, "OPERATIONS.md no longer states the Maximum Packet Size as max_body_bytes + N bytes"
    assert {int(n.replace(",", "")) for n in stated} == {PUBLISH_OVERHEAD_BOUND}
