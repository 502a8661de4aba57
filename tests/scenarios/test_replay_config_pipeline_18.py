"""``duisgw replay --config FILE`` verifies as the gateway does when FILE is the gateway's own configuration:
``trust_expired`` and ``tolerate_whitespace`` are read from ``[pipeline]``, where ``duisgw serve`` reads them.

Before (until the eighteenth session) replay read them from an ``[smki]`` table only, which ``serve`` refuses
(``smki: unknown option``): given the gateway's file, a replay ignored the expired certificates the gateway
trusts, took the activation evidence they signed for unverified and forwarded the AD1 the gateway suppresses, so
a conformance replay disagreed with production. ``[smki]`` is still read (older replay configurations)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.smki import DCC_EUI, ROLE_DSP_XML_SIGN
from gateway.testkit.messages import Signer
from gateway.testkit.scenario import Scenario, World
from tests.scenarios.support import check_expected, replay

EXPIRED = dict(
    not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
)


def _scenario(name: str, expect: str, reason: str | None) -> tuple[Scenario, str]:
    """An immediate activation observed, its 11.3 response signed with a DSP certificate that expired years
    before (a test set), then its AD1 inline. Returns the scenario and the ``trust_expired`` entry naming that
    certificate."""
    world = World.generated(f"replay-config-{name}")
    cred = world.pki.organisation("dsp-xml-sign-expired", DCC_EUI, ROLE_DSP_XML_SIGN, **EXPIRED)
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario(name, world)
    current, f.dsp = f.dsp, Signer(cred.private_key, cred.certificate)
    s.observe("09:00:40", f.activate_response(esme, 1000, s.t("09:00:40")))
    f.dsp = current  # (the AD1 signed with the DSP's certificate in force)
    s.inline("09:07", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1), expect, reason)
    issuer = cred.certificate.issuer.rfc4514_string()
    return s, f"{issuer}#{cred.certificate.serial_number}"


def test_trust_expired_in_the_gateways_pipeline_table_is_honoured_by_replay(tmp_path: Path) -> None:
    s, entry = _scenario("pipeline", "suppress", None)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[pipeline]\ntrust_expired = ["{entry}"]\n', encoding="utf-8")
    got = replay(s, tmp_path, "--config", str(config))
    check_expected(s, got)
    assert not any(line.get("verification") for line in got.values())


def test_without_it_the_expired_evidence_is_unverified_and_the_ad1_forwarded(tmp_path: Path) -> None:
    s, _entry = _scenario("untrusted", "forward", "evidence-unverified")
    check_expected(s, replay(s, tmp_path))


def test_the_older_smki_table_is_still_read(tmp_path: Path) -> None:
    s, entry = _scenario("smki", "suppress", None)
    config = tmp_path / "replay.toml"
    config.write_text(f'[smki]\ntrust_expired = ["{entry}"]\n', encoding="utf-8")
    check_expected(s, replay(s, tmp_path, "--config", str(config)))


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[pipeline]\ntrust_expired = "1234"\n', "[pipeline] trust_expired must be an array"),
        ("pipeline = 3\n", "[pipeline] must be a table"),
        ('[pipeline]\ntolerate_whitespace = "yes"\n', "pipeline.tolerate_whitespace must be true or false"),
    ],
)
def test_a_malformed_pipeline_option_is_a_named_error(
    tmp_path: Path, text: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = World.generated("replay-config-bad").write_reference(tmp_path / "reference")
    config = tmp_path / "gateway.toml"
    config.write_text(text, encoding="utf-8")
    args = ["replay", str(tmp_path / "none"), "--guids", str(ref["guids"]), "--inventory", str(ref["inventory"]),
            "--certs", str(ref["certs"]), "--gbcs-keys", str(ref["gbcs_keys"]), "--quiet", "--config", str(config)]  # fmt: skip
    assert main(args) == 2
    assert said in capsys.readouterr().err
