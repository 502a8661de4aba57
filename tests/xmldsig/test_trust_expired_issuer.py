"""``trust_expired`` names an expired certificate by issuer and serial (``ISSUER#SERIAL``): a certificate
of another CA that happens to have the same serial is not trusted with it. A bare serial is still
accepted for old configuration files and matches that serial from any issuer (documented)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from xmldsig_docs import ad1_alert

from gateway.cli import main
from gateway.duis.xmldsig import Reason, sign, verify
from gateway.smki import (
    DCC_EUI,
    ROLE_DSP_XML_SIGN,
    BadTrustEntry,
    CertificateStore,
    SigningPolicy,
    SmkiCertificate,
    normalise_dn,
    parse_trust_entry,
    parse_trust_expired,
)
from gateway.testkit.pki import TestPKI
from gateway.testkit.scenario import World

EXPIRED = dict(not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
LATE = "2030-01-01T00:00:00Z"  # the messages' ResponseDateTime: both certificates have expired by then


def _dsp(ca: str) -> SmkiCertificate:
    """The same DSP XML-signing credential (same key, subject and serial) issued by the CA ``ca``."""
    cred = TestPKI(seed="trust-expired", org_ca_name=ca).organisation("dsp", DCC_EUI, ROLE_DSP_XML_SIGN, **EXPIRED)
    return SmkiCertificate.from_x509(cred.certificate, name=ca, private_key=cred.private_key)


@pytest.fixture(scope="module")
def ours() -> SmkiCertificate:
    return _dsp("TRUSTED-TEST-CA")


@pytest.fixture(scope="module")
def theirs() -> SmkiCertificate:
    return _dsp("OTHER-CA")


def _verdict(cert: SmkiCertificate, trust: list[str]) -> tuple[bool, Reason]:
    assert cert.private_key is not None
    signed = sign(ad1_alert(response_dt=LATE), cert.private_key, cert)
    r = verify(signed, CertificateStore([cert]), SigningPolicy(trust_expired=parse_trust_expired(trust)))
    return r.valid, r.reason


def test_the_two_certificates_share_a_serial_but_not_an_issuer(ours: SmkiCertificate, theirs: SmkiCertificate) -> None:
    assert ours.serial == theirs.serial and ours.issuer_key != theirs.issuer_key


def test_an_issuer_and_serial_entry_trusts_that_certificate_only(
    ours: SmkiCertificate, theirs: SmkiCertificate
) -> None:
    entry = f"{ours.issuer}#{ours.serial}"
    assert _verdict(ours, [entry]) == (True, Reason.OK)
    assert _verdict(theirs, [entry]) == (False, Reason.EXPIRED)  # another CA's certificate, same serial


def test_a_bare_serial_still_matches_that_serial_from_any_issuer(ours: SmkiCertificate, theirs: SmkiCertificate) -> None:
    assert _verdict(ours, [str(ours.serial)]) == (True, Reason.OK)
    assert _verdict(theirs, [str(ours.serial)]) == (True, Reason.OK)  # why the issuer form is preferred


def test_the_issuer_is_compared_as_the_certificate_store_compares_issuers(ours: SmkiCertificate) -> None:
    # ours.issuer is "CN=TRUSTED-TEST-CA,OU=07": other orders, spacing, case and "OID." forms name it too
    for spelling in ("OU=07, CN=TRUSTED-TEST-CA", "cn=trusted-test-ca;ou=07", "OID.2.5.4.3=TRUSTED-TEST-CA,OU=07"):
        assert normalise_dn(spelling) == ours.issuer_key
        assert _verdict(ours, [f"{spelling}#{ours.serial}"]) == (True, Reason.OK), spelling
    assert _verdict(ours, [f"CN=TRUSTED-TEST-CA,OU=08#{ours.serial}"]) == (False, Reason.EXPIRED)


def test_trusting_expiry_by_issuer_is_not_trusting_a_certificate_not_yet_valid(ours: SmkiCertificate) -> None:
    assert ours.private_key is not None
    early = sign(ad1_alert(response_dt="2019-06-01T00:00:00Z"), ours.private_key, ours)
    policy = SigningPolicy(trust_expired=parse_trust_expired([f"{ours.issuer}#{ours.serial}"]))
    assert verify(early, CertificateStore([ours]), policy).reason is Reason.NOT_YET_VALID


def test_entries_parse_to_issuer_and_serial_or_a_bare_serial() -> None:
    assert parse_trust_entry("1234") == 1234
    assert parse_trust_entry(" 1234 ") == 1234
    assert parse_trust_entry(1234) == 1234  # a TOML integer (the [smki] table of duisgw replay)
    assert parse_trust_entry("CN=Z1,OU=07#1234") == (normalise_dn("CN=Z1,OU=07"), 1234)
    # a DN value may itself be #hex: the serial follows the last '#'
    assert parse_trust_entry("CN=#0c025a31,OU=07#5") == (normalise_dn("CN=Z1,OU=07"), 5)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("", "expected a decimal certificate serial"),
        ("12x", "expected a decimal certificate serial"),
        ("0x1F", "expected a decimal certificate serial"),
        ("-5", "expected a decimal certificate serial"),
        ("\u00b2", "expected a decimal certificate serial"),  # str.isdigit() is true for '²', int() refuses it
        ("CN=Z1,OU=07#", "expected a decimal certificate serial"),
        ("#1234", "empty issuer"),
        ("Z1#1234", "issuer is not a distinguished name"),
        ("FOO=Z1#1234", "issuer is not a distinguished name"),
        ("1" * 50, "longer than 20 octets"),
        (str(1 << 160), "longer than 20 octets"),
        (True, "expected a string"),
    ],
)
def test_a_malformed_entry_is_a_named_error(entry: str, why: str) -> None:
    with pytest.raises(BadTrustEntry) as exc:
        parse_trust_entry(entry)
    assert exc.value.code == "bad_trust_expired_entry" and why in exc.value.message


# ------------------------------------------------------------------ the command-line tools


def test_duisgw_verify_trusts_an_expired_certificate_named_by_issuer_and_serial(
    tmp_path: Path, certs_dir: Path, dsp: SmkiCertificate, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dsp.private_key is not None  # Z1-accessControlBroker-dSPXmlSign, issuer CN=Z1,OU=07, until 2035
    doc = tmp_path / "late.xml"
    doc.write_bytes(sign(ad1_alert(response_dt="2036-02-01T00:00:00Z"), dsp.private_key, dsp))
    base = ["verify", str(doc), "--certs", str(certs_dir), "--trust-expired"]
    assert main([*base, f"OU=07, CN=Z1#{dsp.serial}"]) == 0
    assert json.loads(capsys.readouterr().out)["expired_trusted"] is True
    assert main([*base, f"CN=Z2,OU=07#{dsp.serial}"]) == 1  # the same serial from another issuer
    assert json.loads(capsys.readouterr().out)["reason"] == "certificate_expired"
    assert main([*base, f"CN=Z1,OU=07#{dsp.serial}x"]) == 2
    assert "bad_trust_expired_entry" in capsys.readouterr().err


def test_duisgw_replay_refuses_a_malformed_trust_expired_entry_with_a_named_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = World.generated("trust-expired-replay").write_reference(tmp_path / "reference")
    args = ["replay", str(tmp_path / "none"), "--guids", str(ref["guids"]), "--inventory", str(ref["inventory"]),
            "--certs", str(ref["certs"]), "--gbcs-keys", str(ref["gbcs_keys"]), "--quiet"]  # fmt: skip
    assert main([*args, "--trust-expired", "12x"]) == 2  # was a ValueError traceback from int()
    assert "bad_trust_expired_entry" in capsys.readouterr().err
    config = tmp_path / "replay.toml"
    config.write_text('[smki]\ntrust_expired = "1234"\n', encoding="utf-8")
    assert main([*args, "--config", str(config)]) == 2  # a string, not an array of entries
    assert "must be an array" in capsys.readouterr().err
