"""Signatures made by duisgw verify here and in the real xmlsec1 binary."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree
from xmldsig_docs import activate_firmware_response, ad1_alert, inventory_response

from gateway.duis.safexml import parse_xml
from gateway.duis.xmldsig import DSIG_NS, Reason, SigningError, sign, verify
from gateway.smki import CertificateStore, SigningPolicy, SmkiCertificate

Xmlsec = Callable[[bytes, Path, Path], subprocess.CompletedProcess[str]]


@pytest.fixture(params=["ad1", "11.3", "8.2"])
def unsigned_doc(request: pytest.FixtureRequest, cs06_immediate_response_hex: str) -> bytes:
    return {
        "ad1": ad1_alert,
        "11.3": lambda: activate_firmware_response(cs06_immediate_response_hex),
        "8.2": inventory_response,
    }[request.param]()


def test_dsp_signed_documents_verify_here_and_in_xmlsec1(
    unsigned_doc: bytes,
    dsp: SmkiCertificate,
    store: CertificateStore,
    policy: SigningPolicy,
    certs_dir: Path,
    xmlsec1: Xmlsec,
    tmp_path: Path,
) -> None:
    assert dsp.private_key is not None
    signed = sign(unsigned_doc, dsp.private_key, dsp)
    r = verify(signed, store, policy)
    assert r.valid and r.certificate_name == "Z1-accessControlBroker-dSPXmlSign"
    ok = xmlsec1(signed, certs_dir / "Z1-accessControlBroker-dSPXmlSign.pem", tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stderr
    # negative control: xmlsec1 really checks (another key fails)
    bad = xmlsec1(signed, certs_dir / "Z1-supplier-ds.pem", tmp_path)
    assert bad.returncode != 0


def test_xmlsec1_accepts_the_dccboxed_samples_we_accept(
    shared: Path, certs_dir: Path, xmlsec1: Xmlsec, tmp_path: Path
) -> None:
    doc = (shared / "duis" / "samples" / "readfw-response.xml").read_bytes()
    assert (
        xmlsec1(doc, certs_dir / "dsp-xml-sign-90B3D51F30000002-ds-pre-1.4.1.pem", tmp_path).returncode == 0
    )


def test_signature_is_the_last_child_with_issuer_serial_like_java(dsp: SmkiCertificate) -> None:
    assert dsp.private_key is not None
    root = parse_xml(sign(ad1_alert(), dsp.private_key, dsp))
    sig = root[len(root) - 1]
    assert sig.tag == f"{{{DSIG_NS}}}Signature" and sig.prefix == "ds"
    ns = {"ds": DSIG_NS}
    assert (
        sig.findtext("ds:KeyInfo/ds:X509Data/ds:X509IssuerSerial/ds:X509IssuerName", namespaces=ns)
        == "CN=Z1,OU=07"
    )
    assert sig.findtext(
        "ds:KeyInfo/ds:X509Data/ds:X509IssuerSerial/ds:X509SerialNumber", namespaces=ns
    ) == str(dsp.serial)


def test_signing_a_tree_does_not_modify_it_and_replaces_an_old_signature(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    root = parse_xml(sign(ad1_alert(), dsp.private_key, dsp))
    before = etree.tostring(root)
    resigned = sign(root, dsp.private_key, dsp)
    assert etree.tostring(root) == before
    out = parse_xml(resigned)
    assert len(out.findall(f"{{{DSIG_NS}}}Signature")) == 1
    assert verify(out, store, policy).valid


def test_default_namespace_signature_verifies_here_and_in_xmlsec1(
    dsp: SmkiCertificate,
    store: CertificateStore,
    policy: SigningPolicy,
    certs_dir: Path,
    xmlsec1: Xmlsec,
    tmp_path: Path,
) -> None:
    assert dsp.private_key is not None
    signed = sign(inventory_response(), dsp.private_key, dsp, prefix=None)
    assert b'<Signature xmlns="http://www.w3.org/2000/09/xmldsig#">' in signed
    assert verify(signed, store, policy).valid
    assert xmlsec1(signed, certs_dir / "Z1-accessControlBroker-dSPXmlSign.pem", tmp_path).returncode == 0


def test_user_signed_request_template_verifies_against_its_originator(
    shared: Path, credential: Callable[[str], SmkiCertificate], store: CertificateStore, policy: SigningPolicy,
    certs_dir: Path, xmlsec1: Xmlsec, tmp_path: Path,
) -> None:  # fmt: skip
    from datetime import UTC, datetime

    supplier = credential("xml-sign-90B3D51F30010000-ds")
    assert supplier.private_key is not None
    template = (
        shared / "duis" / "templates" / "CS06_11.3_FUTURE_DATED_SUCCESS_REQUEST_DUIS.XML"
    ).read_bytes()
    signed = sign(template, supplier.private_key, supplier)  # replaces the placeholder signature
    now = datetime(2026, 1, 15, tzinfo=UTC)
    root = parse_xml(signed)
    before = etree.tostring(root)
    r = verify(root, store, policy, now=now)
    assert r.valid and r.kind == "request" and r.signer_eui == 0x90B3D51F30010000
    assert etree.tostring(root) == before  # ds declared on the root: digested from a copy
    assert verify(root, store, policy, now=now).valid
    assert xmlsec1(signed, certs_dir / "xml-sign-90B3D51F30010000-ds.pem", tmp_path).returncode == 0
    # without a clock for a request (no ResponseDateTime) the validity cannot be checked
    assert verify(signed, store, policy).reason is Reason.NO_CHECK_TIME
    # the DNO's XML-signing key is the right role but not the RequestID originator
    dno = credential("xml-sign-90B3D51F30020000-ds")
    assert dno.private_key is not None
    r = verify(sign(template, dno.private_key, dno), store, policy, now=now)
    assert not r.valid and r.reason is Reason.SIGNER_EUI_MISMATCH


def test_signing_with_a_key_that_is_not_the_certificates_is_refused(
    dsp: SmkiCertificate, credential: Callable[[str], SmkiCertificate]
) -> None:
    other = credential("Z1-supplier-ds")
    assert other.private_key is not None
    with pytest.raises(SigningError):
        sign(ad1_alert(), other.private_key, dsp)
