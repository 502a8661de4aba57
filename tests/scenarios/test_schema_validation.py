"""``--schema``: messages are validated against the official DUIS XSD on the hot path; valid traffic is
decided exactly as without it, and schema-invalid evidence never suppresses (the AD1 is forwarded)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.duis.xmldsig import sign
from gateway.testkit.demo import demo_scenario
from gateway.testkit.scenario import Scenario, World
from tests.scenarios.support import check_expected, replay

XSD = "duis/schemas/DUIS Schema V5.4.xsd"


def test_the_demo_traffic_is_schema_valid_and_decided_identically_with_validation(shared: Path, tmp_path: Path) -> None:
    scenario = demo_scenario()
    got = replay(scenario, tmp_path, "--schema", str(shared / XSD))
    check_expected(scenario, got)
    assert not any(line.get("verification") for line in got.values())


def test_schema_invalid_activation_evidence_never_suppresses(shared: Path, tmp_path: Path) -> None:
    world = World.generated()
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("schema", world)
    good = f.activate_response(esme, 1000, s.t("09:00:40"))
    unsigned = re.sub(rb"<ds:Signature.*</ds:Signature>", b"", good, flags=re.S)
    broken = unsigned.replace(b"<sr:ResponseCode>I0</sr:ResponseCode>", b"<sr:ResponseCode>X0</sr:ResponseCode>")
    assert broken != unsigned
    s.observe("09:00:40", sign(broken, world.dsp.key, world.dsp.certificate))  # validly signed, schema-invalid
    s.inline("09:07", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1), "forward", "evidence-unverified")
    check_expected(s, replay(s, tmp_path, "--schema", str(shared / XSD)))
    s2 = Scenario("no-schema", world)
    s2.steps = list(s.steps)
    s2.steps[-1] = s2.steps[-1].__class__(s2.steps[-1].at, "inline", s2.steps[-1].body, "AD1",
                                          type(s2.steps[-1].expect)("suppress"), s2.steps[-1].message_id)  # fmt: skip
    check_expected(s2, replay(s2, tmp_path))  # the same bytes without schema validation would suppress
