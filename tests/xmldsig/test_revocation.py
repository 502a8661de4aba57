"""SMKI revocation lists: a signature by a revoked certificate is never valid, a list is used only when
its issuer's certificate in the store verifies it, and a stale list makes signatures it covers
unverifiable (fail-closed). The same store answers the GBCS verifier for suppliers' DS certificates."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from xmldsig_docs import ad1_alert

from gateway.cli import main
from gateway.duis.xmldsig import Reason, sign, verify
from gateway.smki import (
    DCC_EUI,
    ROLE_DSP_XML_SIGN,
    CertificateStore,
    CrlIssuerUnknown,
    CrlSignatureInvalid,
    SigningPolicy,
    SmkiCertificate,
    UnusableCrl,
)
from gateway.testkit.pki import ROLE_SUPPLIER, TestPKI, derive_key
from gbcs.crypto import Status, Verifier, sign_frame
from gbcs.frame import build_general_signing, parse_frame
from gbcs.keystore import MemoryKeyStore

UTC = dt.UTC
MSG_TIME = "2026-03-02T09:00:00Z"  # the documents' ResponseDateTime
NOW = dt.datetime(2026, 3, 2, 9, 5, tzinfo=UTC)  # the gateway's clock (arrival)
REVOKED_ON = dt.datetime(2026, 2, 1, tzinfo=UTC)
SUPPLIER_EUI = 0x90B3D51F30010000


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    pki = TestPKI(seed="revocation")
    pki.org_ca()
    pki.organisation("dsp-good", DCC_EUI, ROLE_DSP_XML_SIGN)
    pki.organisation("dsp-revoked", DCC_EUI, ROLE_DSP_XML_SIGN)
    pki.organisation("supplier-ds", SUPPLIER_EUI, ROLE_SUPPLIER)
    return pki


def _store(pki: TestPKI, *crls: x509.CertificateRevocationList) -> CertificateStore:
    store = CertificateStore(
        SmkiCertificate.from_x509(c.certificate, name=c.name, private_key=c.private_key)
        for c in pki.issued.values()
    )
    for i, crl in enumerate(crls):
        store.add_crl(crl, name=f"list-{i}")
    return store


def _signed(pki: TestPKI, name: str, response_dt: str = MSG_TIME) -> bytes:
    cred = pki.issued[name]
    return sign(ad1_alert(response_dt=response_dt), cred.private_key, cred.certificate)


def _crl_revoking(pki: TestPKI, *names: str, **kw: Any) -> x509.CertificateRevocationList:
    return pki.crl([(pki.issued[n], REVOKED_ON) for n in names], **kw)


# ------------------------------------------------------------------ XML signatures


def test_a_signature_by_a_revoked_xml_signing_certificate_is_rejected_while_a_good_one_verifies(
    pki: TestPKI,
) -> None:
    store = _store(pki, _crl_revoking(pki, "dsp-revoked"))
    good = verify(_signed(pki, "dsp-good"), store, SigningPolicy(), now=NOW)
    assert (good.valid, good.reason, good.revocation) == (True, Reason.OK, "good")
    bad = verify(_signed(pki, "dsp-revoked"), store, SigningPolicy(), now=NOW)
    assert (bad.valid, bad.status, bad.reason, bad.revocation) == (
        False, "revoked", Reason.CERTIFICATE_REVOKED, "revoked",
    )  # fmt: skip
    assert str(pki.issued["dsp-revoked"].certificate.serial_number) in bad.detail
    assert bad.to_dict()["reason"] == "certificate_revoked"


def test_without_a_list_the_same_signature_verifies_and_says_revocation_was_not_checked(pki: TestPKI) -> None:
    r = verify(_signed(pki, "dsp-revoked"), _store(pki), SigningPolicy(), now=NOW)
    assert (r.valid, r.revocation) == (True, "not_checked")


def test_a_message_dated_before_the_revocation_is_still_refused(pki: TestPKI) -> None:
    # the message's own time is signed with the revoked key: it cannot put the signature before the revocation
    early = _signed(pki, "dsp-revoked", response_dt="2026-01-01T00:00:00Z")
    r = verify(early, _store(pki, _crl_revoking(pki, "dsp-revoked")), SigningPolicy(), now=NOW)
    assert r.reason is Reason.CERTIFICATE_REVOKED


def test_revocation_wins_over_trust_expired(pki: TestPKI) -> None:
    cert = pki.issued["dsp-revoked"].certificate
    policy = SigningPolicy(trust_expired=frozenset({cert.serial_number}))
    r = verify(_signed(pki, "dsp-revoked"), _store(pki, _crl_revoking(pki, "dsp-revoked")), policy, now=NOW)
    assert r.reason is Reason.CERTIFICATE_REVOKED


def test_a_crl_signed_by_another_key_is_refused_and_revokes_nothing(pki: TestPKI) -> None:
    forged = _crl_revoking(pki, "dsp-good", signing_key=derive_key("a stranger"), authority_key_id=False)
    store = _store(pki)
    with pytest.raises(CrlSignatureInvalid):
        store.add_crl(forged, name="forged")
    assert store.crls == []
    assert verify(_signed(pki, "dsp-good"), store, SigningPolicy(), now=NOW).valid


def test_a_crl_whose_key_identifier_names_another_key_is_refused_as_issuer_unknown(pki: TestPKI) -> None:
    # signed by a stranger whose AKI is its own: no certificate of the CA's name has that key identifier
    stranger = TestPKI(seed="stranger")  # same CA name, another key
    with pytest.raises(CrlIssuerUnknown):
        _store(pki).add_crl(stranger.crl([(pki.issued["dsp-good"], REVOKED_ON)]), name="stranger")


def test_a_crl_from_an_issuer_the_store_does_not_hold_is_refused(pki: TestPKI) -> None:
    other = TestPKI(seed="other-ca", org_ca_name="SOME-OTHER-CA")
    other.org_ca()
    with pytest.raises(CrlIssuerUnknown):
        _store(pki).add_crl(other.crl([(pki.issued["dsp-good"], REVOKED_ON)]), name="other")


def test_a_folder_load_reports_refused_lists_by_file_and_uses_the_good_ones(
    pki: TestPKI, tmp_path: Path
) -> None:
    pki.write_smki_dir(tmp_path, with_keys=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "org.crl").write_bytes(
        _crl_revoking(pki, "dsp-revoked").public_bytes(serialization.Encoding.DER)
    )
    forged = _crl_revoking(pki, "dsp-good", signing_key=derive_key("a stranger"), authority_key_id=False)
    (tmp_path / "forged.crl.pem").write_bytes(forged.public_bytes(pem))
    (tmp_path / "junk.arl").write_bytes(b"not a list")
    store = CertificateStore.from_directory(tmp_path)
    refused = {label: err.code for label, err in store.rejected}
    assert refused == {"forged.crl.pem": "crl_signature_invalid", "junk.arl": "unusable_crl"}
    assert [c.name for c in store.crls] == ["org.crl"]
    assert verify(_signed(pki, "dsp-good"), store, SigningPolicy(), now=NOW).valid
    assert (
        verify(_signed(pki, "dsp-revoked"), store, SigningPolicy(), now=NOW).reason
        is Reason.CERTIFICATE_REVOKED
    )
    with pytest.raises(UnusableCrl):
        CertificateStore.from_directory(tmp_path, strict=True)


def test_a_stale_list_makes_the_signatures_it_covers_unverifiable(pki: TestPKI) -> None:
    stale = _crl_revoking(pki, "dsp-revoked", next_update=NOW - dt.timedelta(hours=1))
    store = _store(pki, stale)
    r = verify(_signed(pki, "dsp-good"), store, SigningPolicy(), now=NOW)
    assert (r.valid, r.status, r.reason, r.revocation) == (
        False, "unverifiable", Reason.REVOCATION_STALE, "stale",
    )  # fmt: skip
    # judged on the caller's clock (now), not on the message's own time (which an attacker writes)
    assert verify(_signed(pki, "dsp-good"), store, SigningPolicy(), now=NOW - dt.timedelta(hours=2)).valid
    # a fresher list of the same issuer supersedes it
    fresh = _crl_revoking(pki, "dsp-revoked", next_update=NOW + dt.timedelta(days=7))
    assert verify(_signed(pki, "dsp-good"), _store(pki, stale, fresh), SigningPolicy(), now=NOW).valid


def test_a_revoked_issuing_ca_revokes_what_it_issued(pki: TestPKI) -> None:
    # the ARL: a root revokes the organisation CA; every certificate under it goes with it
    root = TestPKI(seed="root", org_ca_name="ROOT")
    root_ca = root.org_ca()
    ca = pki.org_ca()
    # re-issue the organisation CA's certificate under the root (same subject and key)
    ca_under_root = (
        x509.CertificateBuilder()
        .subject_name(ca.certificate.subject)
        .issuer_name(root_ca.certificate.subject)
        .public_key(ca.private_key.public_key())
        .serial_number(4242)
        .not_valid_before(root.not_before)
        .not_valid_after(root.not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca.private_key.public_key()), critical=False)
        .sign(root_ca.private_key, hashes.SHA256())
    )
    certs = [
        SmkiCertificate.from_x509(c.certificate, name=c.name)
        for c in pki.issued.values()
        if c.name != "org-ca"
    ]
    store = CertificateStore([*certs, SmkiCertificate.from_x509(ca_under_root, name="org-ca"),
                              SmkiCertificate.from_x509(root_ca.certificate, name="root")])  # fmt: skip
    store.add_crl(root.crl([(4242, REVOKED_ON)]), name="root.arl")
    r = verify(_signed(pki, "dsp-good"), store, SigningPolicy(), now=NOW)
    assert (r.valid, r.reason) == (False, Reason.CERTIFICATE_REVOKED)
    assert "issuing CA" in r.detail


def test_the_dcc_boxed_sample_still_verifies_with_no_list(shared: Path) -> None:
    store = CertificateStore.from_directory(shared / "smki" / "dccboxed", strict=True)
    assert store.crls == []
    r = verify((shared / "duis" / "samples" / "readfw-response.xml").read_bytes(), store, SigningPolicy())
    assert (r.valid, r.revocation) == (True, "not_checked")


def test_the_revocation_check_is_a_lookup_worked_out_when_the_store_was_loaded(pki: TestPKI) -> None:
    store = _store(pki, _crl_revoking(pki, "dsp-revoked"))
    (revoked,) = [c for c in store if c.name == "dsp-revoked"]
    found = store.revocation(revoked)
    assert found is not None and found.revoked
    # a certificate added after the list is covered too (the map is rebuilt on add)
    late = TestPKI(seed="revocation").organisation("dsp-late", DCC_EUI, ROLE_DSP_XML_SIGN)
    cert = SmkiCertificate.from_x509(late.certificate, name="late")
    store.add(cert)
    assert store.revocation(cert) is not None


# ------------------------------------------------------------------ the CLI


def test_verify_cli_reads_lists_from_the_certificate_folder_and_from_crl(
    pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = pki.write_smki_dir(tmp_path / "certs", with_keys=False)
    msg = tmp_path / "msg.xml"
    msg.write_bytes(_signed(pki, "dsp-revoked"))
    crl = tmp_path / "org.crl.pem"
    crl.write_bytes(_crl_revoking(pki, "dsp-revoked").public_bytes(serialization.Encoding.PEM))
    assert main(["verify", str(msg), "--certs", str(certs)]) == 0
    capsys.readouterr()
    assert main(["verify", str(msg), "--certs", str(certs), "--crl", str(crl)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["reason"], out["status"], out["revocation"]) == ("certificate_revoked", "revoked", "revoked")
    (certs / "org.crl.pem").write_bytes(crl.read_bytes())
    assert main(["verify", str(msg), "--certs", str(certs)]) == 1
    forged = tmp_path / "forged.crl"
    forged.write_bytes(b"garbage")
    assert main(["verify", str(msg), "--certs", str(certs), "--crl", str(forged)]) == 1
    assert "skipped forged.crl: unusable_crl" in capsys.readouterr().err


# ------------------------------------------------------------------ GBCS signatures


def _supplier_frame(pki: TestPKI) -> bytes:
    from gateway.testkit.messages import cs06_command_content

    apdu = build_general_signing(
        cra=1, originator_counter=7, originator=SUPPLIER_EUI, recipient=0x00DB000000000001, message_code=0x0012,
        content=cs06_command_content(bytes(32), 7, None),
    )  # fmt: skip
    return sign_frame(apdu, pki.issued["supplier-ds"].private_key)


def test_a_revoked_supplier_ds_certificate_makes_the_gbcs_signature_revoked(pki: TestPKI) -> None:
    keys = MemoryKeyStore()
    keys.add_certificate(pki.issued["supplier-ds"].certificate, "ds")
    frame = parse_frame(_supplier_frame(pki))
    assert Verifier(keys, revocation=_store(pki)).verify_signature(frame, NOW, role=ROLE_SUPPLIER).ok
    revoked = Verifier(keys, revocation=_store(pki, _crl_revoking(pki, "supplier-ds")))
    check = revoked.verify_signature(frame, NOW, role=ROLE_SUPPLIER)
    assert check.status is Status.REVOKED and "revoked" in check.reason
    stale = Verifier(keys, revocation=_store(pki, _crl_revoking(pki, next_update=NOW - dt.timedelta(days=1))))
    assert stale.verify_signature(frame, NOW, role=ROLE_SUPPLIER).status is Status.UNVERIFIABLE
