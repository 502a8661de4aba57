"""Signer policy (role, EUI, validity at the message's own time), white-space tolerance and the store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from lxml import etree
from xmldsig_docs import ad1_alert

from gateway.duis.errors import InvalidField
from gateway.duis.safexml import parse_xml
from gateway.duis.xmldsig import Reason, sign, verify
from gateway.smki import CertificateStore, SigningPolicy, SmkiCertificate, normalise_dn, parse_role


def test_response_signed_with_a_supplier_xml_signing_key_is_wrong_role(
    credential: Callable[[str], SmkiCertificate], store: CertificateStore, policy: SigningPolicy
) -> None:
    supplier = credential("xml-sign-90B3D51F30010000-ds")
    assert supplier.private_key is not None
    r = verify(sign(ad1_alert(), supplier.private_key, supplier), store, policy)
    assert (r.valid, r.reason, r.role) == (False, Reason.ROLE_NOT_ALLOWED, 0x87)


def test_unknown_serial_is_certificate_not_found(
    dsp: SmkiCertificate, credential: Callable[[str], SmkiCertificate], policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    signed = sign(ad1_alert(), dsp.private_key, dsp)
    others = CertificateStore([credential("Z1-supplier-ds"), credential("xml-sign-90B3D51F30020000-ds")])
    r = verify(signed, others, policy)
    assert (r.valid, r.reason, r.serial) == (False, Reason.CERTIFICATE_NOT_FOUND, dsp.serial)


def test_certificate_expired_at_the_message_time_is_invalid_unless_trusted_by_serial(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None  # Z1-accessControlBroker-dSPXmlSign: 2025-09-01 .. 2035-09-01
    late = sign(ad1_alert(response_dt="2036-02-01T00:00:00Z"), dsp.private_key, dsp)
    r = verify(late, store, policy)
    assert (r.valid, r.reason, r.certificate_time_valid) == (False, Reason.EXPIRED, False)
    trusting = SigningPolicy(trust_expired=frozenset({dsp.serial}))
    r = verify(late, store, trusting)
    assert r.valid and r.expired_trusted and r.certificate_time_valid is False
    early = sign(ad1_alert(response_dt="2024-02-01T00:00:00Z"), dsp.private_key, dsp)
    assert (
        verify(early, store, trusting).reason is Reason.NOT_YET_VALID
    )  # trusting expiry is not trusting "before"


def test_explicit_time_overrides_the_response_datetime(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    signed = sign(ad1_alert(), dsp.private_key, dsp)
    assert verify(signed, store, policy).valid
    r = verify(signed, store, policy, at=datetime(2040, 1, 1, tzinfo=UTC))
    assert r.reason is Reason.EXPIRED and r.checked_at == datetime(2040, 1, 1, tzinfo=UTC)


def test_unreadable_response_datetime_is_a_named_error(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    with pytest.raises(InvalidField):
        verify(sign(ad1_alert(response_dt="yesterday"), dsp.private_key, dsp), store, policy)


def test_dsp_signer_eui_is_configurable(dsp: SmkiCertificate, store: CertificateStore) -> None:
    assert dsp.private_key is not None
    signed = sign(ad1_alert(), dsp.private_key, dsp)
    r = verify(signed, store, SigningPolicy(dsp_eui=0x90B3D51F30000099))
    assert (r.valid, r.reason) == (False, Reason.SIGNER_EUI_MISMATCH)


def test_pretty_printed_copy_fails_strict_and_passes_whitespace_tolerant(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    compact = sign(ad1_alert(), dsp.private_key, dsp)
    pretty = etree.tostring(parse_xml(compact), pretty_print=True)
    assert pretty != compact and b"\n  <sr:Header>" in pretty
    strict = verify(pretty, store, policy)
    assert not strict.valid and strict.reason is Reason.DIGEST_MISMATCH
    tolerant = verify(pretty, store, policy, tolerate_whitespace=True)
    assert tolerant.valid and tolerant.whitespace_tolerated
    plain = verify(compact, store, policy, tolerate_whitespace=True)
    assert plain.valid and not plain.whitespace_tolerated


def test_whitespace_tolerance_does_not_excuse_content_changes(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    pretty = etree.tostring(parse_xml(sign(ad1_alert(), dsp.private_key, dsp)), pretty_print=True)
    forged = pretty.replace(b"1234567890123", b"1234567890124")
    r = verify(forged, store, policy, tolerate_whitespace=True)
    assert not r.valid and not r.whitespace_tolerated and r.reason is Reason.DIGEST_MISMATCH
    spaced_leaf = pretty.replace(b"<sr:MPxN>1234567890123", b"<sr:MPxN> 1234567890123")
    assert not verify(spaced_leaf, store, policy, tolerate_whitespace=True).valid


@pytest.mark.parametrize(
    "written",
    [
        "CN=Z1,OU=07",
        "CN=Z1, OU=07",
        "OU=07, CN=Z1",
        "cn=z1;ou=07",
        'OID.2.5.4.3=Z1,OU="07"',
        "CN=#13025A31,OU=07",
    ],
)
def test_issuer_names_are_compared_semantically(
    written: str, store: CertificateStore, dsp: SmkiCertificate
) -> None:
    assert normalise_dn(written) == normalise_dn("CN=Z1,OU=07")
    found = store.find(written, dsp.serial)
    assert found is not None and found.name == dsp.name


def test_a_different_issuer_with_the_same_serial_is_not_found(
    store: CertificateStore, dsp: SmkiCertificate
) -> None:
    assert store.find("CN=Z2,OU=07", dsp.serial) is None
    assert store.find("CN=Z1,OU=07,O=X", dsp.serial) is None


def test_role_is_read_as_hex_or_legacy_decimal() -> None:
    assert parse_role("89") == 0x89 and parse_role("87") == 0x87 and parse_role("07") == 7
    assert parse_role("137") == 137 and parse_role("7F") == 127
    assert parse_role("xyz") is None and parse_role("999") is None


def test_store_reads_eui_role_key_usage_validity_and_pairs_der_keys(store: CertificateStore) -> None:
    (c,) = store.by_serial(0x0F4889EF197D41E9016966F9D5AB0402)
    assert c.subject_eui == 0x90B3D51F30000002 and c.role == 0x89 and c.digital_signature
    assert c.not_before == datetime(2025, 9, 1, tzinfo=UTC) and c.private_key is not None
    assert c.valid_at(datetime(2030, 1, 1, tzinfo=UTC)) and not c.valid_at(datetime(2036, 1, 1, tzinfo=UTC))
    cred = store.signing_credential(0x90B3D51F30010000, 0x87)
    assert cred is not None and cred.name == "xml-sign-90B3D51F30010000-ds"
    assert {c.role for c in store.by_eui(0x90B3D51F30000002)} == {0x04, 0x89}
