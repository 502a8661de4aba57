"""``duisgw serve`` reads ``[pipeline] trust_expired`` entries as ``ISSUER#SERIAL`` (one certificate) or a
bare serial (any issuer, logged as a warning at start-up), the same in the gateway process and in what
each classify worker builds."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from servicekit import DNO_USER, make_lab, pipeline_config

from gateway.service.serve import build_gateway
from gateway.smki import normalise_dn


def test_serve_trusts_issuer_and_serial_entries_and_warns_about_bare_serials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lab = make_lab("trust-expired-serve", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    cfg = pipeline_config(
        tmp_path, lab.reference, "http://127.0.0.1:9/", DNO_USER, trust_expired=("OU=07, CN=Z1 #5", "7")
    )
    with caplog.at_level(logging.WARNING, logger="duisgw.serve"):
        gateway = build_gateway(cfg)
    expected = {(normalise_dn("CN=Z1,OU=07"), 5), 7}
    assert gateway.classifier.signing_policy.trust_expired == expected
    assert gateway.classifier_spec is not None and gateway.classifier_spec.trust_expired == expected
    warned = [r for r in caplog.records if "without its issuer" in r.getMessage()]
    assert [getattr(r, "serial", None) for r in warned] == ["7"]
