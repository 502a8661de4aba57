"""The DCC Boxed sample messages verify (or fail) exactly as the DCC profile says."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.duis.errors import DoctypeForbidden, MalformedXml, NotDuis
from gateway.duis.safexml import parse_xml
from gateway.duis.xmldsig import Reason, verify
from gateway.smki import ROLE_DSP_XML_SIGN, CertificateStore, SigningPolicy


def sample(shared: Path, name: str) -> bytes:
    return (shared / "duis" / "samples" / name).read_bytes()


def test_readfw_response_verifies_with_dccboxed_certificates(
    shared: Path, store: CertificateStore, policy: SigningPolicy
) -> None:
    r = verify(sample(shared, "readfw-response.xml"), store, policy)
    assert r.valid and r.status == "valid" and r.reason is Reason.OK
    assert r.signer_eui == 0x90B3D51F30000002 and r.role == ROLE_DSP_XML_SIGN
    assert r.serial == 50669612984035780968362471400449834504
    assert r.certificate_name == "dsp-xml-sign-90B3D51F30000002-ds-pre-1.4.1"  # legacy decimal OU=137
    assert r.checked_at == datetime(2022, 8, 17, 15, 45, 42, 790000, tzinfo=UTC)
    assert r.certificate_time_valid is True and not r.whitespace_tolerated


def test_bad_signature_value_is_a_signature_mismatch(
    shared: Path, store: CertificateStore, policy: SigningPolicy
) -> None:
    r = verify(sample(shared, "readfw-response-badsignature.xml"), store, policy)
    assert not r.valid and r.status == "invalid" and r.reason is Reason.SIGNATURE_MISMATCH


def test_changed_content_is_a_digest_mismatch(
    shared: Path, store: CertificateStore, policy: SigningPolicy
) -> None:
    r = verify(sample(shared, "readfw-response-invalid.xml"), store, policy)
    assert not r.valid and r.reason is Reason.DIGEST_MISMATCH


def test_message_without_signature_is_reported_unsigned(
    shared: Path, store: CertificateStore, policy: SigningPolicy
) -> None:
    for name in ("readfw-response-no-signature.xml", "acknowledgement-error.xml"):
        r = verify(sample(shared, name), store, policy)
        assert (r.valid, r.status, r.reason) == (False, "unsigned", Reason.UNSIGNED)


def test_inventory_response_5_4_verifies(
    shared: Path, store: CertificateStore, policy: SigningPolicy
) -> None:
    r = verify(sample(shared, "read-inventory-response-5.4.xml"), store, policy)
    assert r.valid and r.certificate_name == "Z1-accessControlBroker-dSPXmlSign"


def test_verify_accepts_a_parsed_tree_and_leaves_it_unchanged(
    shared: Path, store: CertificateStore, policy: SigningPolicy
) -> None:
    from lxml import etree

    root = parse_xml(sample(shared, "readfw-response.xml"))
    before = etree.tostring(root)
    assert verify(root, store, policy).valid
    assert verify(root.getroottree(), store, policy).valid  # type: ignore[arg-type]
    assert etree.tostring(root) == before


def test_old_boxed_message_signed_with_device_facing_key_fails_the_role_policy(
    shared: Path, store: CertificateStore, policy: SigningPolicy
) -> None:
    # dccboxed-message.xml is signed with Z1-accessControlBroker-ds (role 04), not the DSP XML-signing role.
    r = verify(sample(shared, "dccboxed-message.xml"), store, policy)
    assert not r.valid and r.reason is Reason.ROLE_NOT_ALLOWED and r.role == 0x04


def test_keystore_json_store_verifies_the_inventory_4g_signer(shared: Path, policy: SigningPolicy) -> None:
    ks = CertificateStore.from_keystore_json(shared / "smki" / "dccboxed-keystore.json")
    assert len(ks) == 31
    # the two "mdr" certificates carry a NULL signature parameter cryptography refuses: named, not lost
    assert sorted(name for name, _ in ks.rejected) == ["mdr-ds", "mdr-ka"]
    assert all(err.code == "unusable_certificate" for _, err in ks.rejected)
    r = verify(sample(shared, "readfw-response-invalid.xml"), ks, policy)
    assert r.reason is Reason.DIGEST_MISMATCH  # signer Z1-accessControlBroker-ds resolved from the keystore


def test_unusable_input_is_a_named_error_not_a_result(store: CertificateStore, policy: SigningPolicy) -> None:
    with pytest.raises(MalformedXml):
        verify(b"<sr:Response", store, policy)
    with pytest.raises(DoctypeForbidden):
        verify(b'<!DOCTYPE x [<!ENTITY e "x">]><x>&e;</x>', store, policy)
    with pytest.raises(NotDuis):
        verify(b"<Response/>", store, policy)
