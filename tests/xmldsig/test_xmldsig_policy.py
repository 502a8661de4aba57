"""Signer policy (role, EUI, validity at the message's own time), white-space tolerance and the store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from lxml import etree
from xmldsig_docs import ad1_alert

from gateway.duis.decode import decode
from gateway.duis.errors import InvalidField
from gateway.duis.safexml import parse_xml
from gateway.duis.xmldsig import DSIG_NS, Reason, sign, strip_element_whitespace, verify
from gateway.pipeline import Classifier
from gateway.smki import (
    DCC_EUI,
    CertificateStore,
    SigningPolicy,
    SmkiCertificate,
    TimeOutOfRange,
    normalise_dn,
    parse_role,
)
from gateway.testkit.pki import TestPKI, derive_key
from gbcs.crypto import Verifier
from gbcs.keystore import MemoryKeyStore


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


# ------------------------------------------------------------------------------------------------
# the message's own time: read as the DUIS decoder reads it, never a raw exception
# ------------------------------------------------------------------------------------------------

#: xs:dateTime values whose instant lies outside years 1-9999 once in UTC (no UTC datetime exists)
NO_UTC_EQUIVALENT = ["0001-01-01T00:00:00+14:00", "0001-01-01T09:59:59+10:00", "9999-12-31T23:59:59-14:00"]
JUNK_SIGNATURE = f'<ds:Signature xmlns:ds="{DSIG_NS}"/></sr:Response>'.encode()


@pytest.mark.parametrize("when", NO_UTC_EQUIVALENT)
def test_response_datetime_without_a_utc_equivalent_is_a_named_error(
    when: str, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    with pytest.raises(InvalidField, match="no UTC equivalent"):
        verify(sign(ad1_alert(response_dt=when), dsp.private_key, dsp), store, policy)
    # the time is read before the signature is checked: a junk Signature reaches it as well
    junk = ad1_alert(response_dt=when).replace(b"</sr:Response>", JUNK_SIGNATURE)
    with pytest.raises(InvalidField, match="no UTC equivalent"):
        verify(junk, store, policy)


@pytest.mark.parametrize("when", NO_UTC_EQUIVALENT)
def test_classify_rejects_a_response_datetime_without_a_utc_equivalent_by_name(
    when: str, store: CertificateStore, policy: SigningPolicy
) -> None:
    classifier = Classifier(
        certificates=store, signing_policy=policy, gbcs_verifier=Verifier(MemoryKeyStore())
    )
    junk = ad1_alert(response_dt=when).replace(b"</sr:Response>", JUNK_SIGNATURE)
    for lane in ("inline", "observe"):
        c = classifier.classify(lane, junk, datetime(2026, 1, 15, tzinfo=UTC))
        assert c.rejection is not None and c.rejection.code == "invalid_field", c


@pytest.mark.parametrize("option", ["at", "now"])
def test_a_caller_time_without_a_utc_equivalent_is_a_named_error(
    option: str, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    timeless = sign(ad1_alert(response_dt=""), dsp.private_key, dsp)  # no time of its own: "now" is used
    far = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    with pytest.raises(TimeOutOfRange):
        verify(timeless, store, policy, **{option: far})  # type: ignore[arg-type]
    assert verify(timeless, store, policy, **{option: datetime(2030, 1, 1, tzinfo=UTC)}).valid  # type: ignore[arg-type]


def test_response_datetime_24_00_is_the_next_midnight_as_the_decoder_reads_it(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    signed = sign(ad1_alert(response_dt="2026-01-15T24:00:00Z"), dsp.private_key, dsp)
    r = verify(signed, store, policy)
    assert r.valid and r.checked_at == datetime(2026, 1, 16, tzinfo=UTC)
    assert decode(signed).header.response_datetime == r.checked_at


@pytest.mark.parametrize(
    "when",
    [
        "2026-01-15T09:04:12.000Z",
        "2026-01-15T09:04:12Z",
        "2026-01-15T09:04:12.1234567Z",
        "2026-01-15T09:04:12+14:00",
        "2026-01-15T09:04:12-00:00",
        "2026-01-15T09:04:12",  # no zone: UTC (the default policy, as the decoder's)
        " 2026-01-15T09:04:12Z\n",
        "2026-01-15T24:00:00+01:00",
        "9999-12-31T23:59:59Z",
        # not xs:dateTime (datetime.fromisoformat takes them all): both refuse
        "2026-01-15",
        "2026-01-15 09:04:12Z",
        "20260115T090412Z",
        "2026-01-15T09:04:12+0100",
        "2026-01-15T09Z",
        "2026-01-15T09:04:12+14:01",
        "2026-01-15T24:00:01Z",
        "9999-12-31T24:00:00Z",
    ],
)
def test_response_datetime_is_read_as_the_duis_decoder_reads_it(
    when: str, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    signed = sign(ad1_alert(response_dt=when), dsp.private_key, dsp)
    try:
        decoded: object = decode(signed).header.response_datetime
    except InvalidField:
        decoded = InvalidField
    try:
        checked: object = verify(signed, store, policy, at=None).checked_at
    except InvalidField:
        checked = InvalidField
    assert checked == decoded  # (aware datetimes compare as instants)


def test_a_blank_response_datetime_leaves_the_check_time_to_the_caller(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    for blank in ("", " \r\n\t"):
        r = verify(sign(ad1_alert(response_dt=blank), dsp.private_key, dsp), store, policy)
        assert r.reason is Reason.NO_CHECK_TIME
    with pytest.raises(InvalidField):  # NBSP is not XML white space: not blank, not a date-time
        verify(sign(ad1_alert(response_dt="\u00a0"), dsp.private_key, dsp), store, policy)


def test_a_naive_response_datetime_is_not_used_when_the_policy_does_not_take_it_as_utc(
    dsp: SmkiCertificate, store: CertificateStore
) -> None:
    assert dsp.private_key is not None
    strict = SigningPolicy(naive_time_is_utc=False)
    naive = sign(ad1_alert(response_dt="2026-01-15T09:04:12.5"), dsp.private_key, dsp)
    assert verify(naive, store, strict).reason is Reason.NO_CHECK_TIME
    now = datetime(2026, 2, 1, tzinfo=UTC)
    assert verify(naive, store, strict, now=now).checked_at == now
    for zoned in ("2026-01-15T09:04:12.5Z", "2026-01-15T09:04:12-05:00"):
        r = verify(sign(ad1_alert(response_dt=zoned), dsp.private_key, dsp), store, strict)
        assert r.valid and r.checked_at is not None and r.checked_at.tzinfo is UTC


# ------------------------------------------------------------------------------------------------
# white-space tolerance: XML white space only
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["\u00a0", "\u3000", "\u2028", "\u0085", "\u2009"])
def test_whitespace_tolerance_does_not_ignore_unicode_white_space(
    char: str, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    signed = sign(ad1_alert(), dsp.private_key, dsp)
    edited = signed.replace(b"</sr:Header>", b"</sr:Header>" + char.encode(), 1)
    r = verify(edited, store, policy, tolerate_whitespace=True)
    assert (r.valid, r.reason, r.whitespace_tolerated) == (False, Reason.DIGEST_MISMATCH, False)
    xml_ws = signed.replace(b"</sr:Header>", b"</sr:Header>\r\n\t ", 1)
    assert verify(xml_ws, store, policy, tolerate_whitespace=True).whitespace_tolerated  # the control


def test_strip_element_whitespace_removes_xml_white_space_only() -> None:
    root = parse_xml("<a>\n\t<b> </b>\r\n<c>x</c>\u00a0<d/> \u3000</a>".encode())
    assert strip_element_whitespace(root) == 2  # a's text and b's tail; NBSP / U+3000 tails are content
    assert etree.tostring(root, encoding="unicode") == "<a><b> </b><c>x</c>\u00a0<d/> \u3000</a>"


# ------------------------------------------------------------------------------------------------
# role: exactly one subject OU
# ------------------------------------------------------------------------------------------------


def _org_certificate(pki: TestPKI, name: str, ous: list[str], eui: int = DCC_EUI) -> SmkiCertificate:
    """An SMKI-shaped organisation certificate from the test PKI with the given subject OUs."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in ous]
    attrs.append(
        x509.NameAttribute(
            NameOID.X500_UNIQUE_IDENTIFIER,
            b"\x00" + eui.to_bytes(8, "big"),
            _type=x509.name._ASN1Type.BitString,
        )
    )
    key = derive_key(f"{pki.seed}:{name}")
    cred = pki._build(name, x509.Name(attrs), key, org=True)
    return SmkiCertificate.from_x509(cred.certificate, name=name, private_key=cred.private_key)


@pytest.mark.parametrize("ous", [["02", "89"], ["89", "02"], ["89", "89"], ["89", "DCC"]])
def test_a_certificate_with_more_than_one_subject_ou_is_trusted_for_no_role(ous: list[str]) -> None:
    pki = TestPKI(seed="role-ambiguity")
    control = _org_certificate(pki, "dsp-one-ou", ["89"])
    ambiguous = _org_certificate(pki, "dsp-" + "-".join(ous), ous)
    store = CertificateStore([control, ambiguous])
    assert (control.role, control.role_ambiguous) == (0x89, False)
    assert (ambiguous.role, ambiguous.role_ambiguous) == (None, True)  # whatever the order of the OUs
    assert store.by_eui(DCC_EUI, 0x89) == [control] and store.by_eui(DCC_EUI, 0x02) == []
    assert store.signing_credential(DCC_EUI, 0x89) is control
    policy = SigningPolicy()
    for cert in (control, ambiguous):
        assert cert.private_key is not None
        r = verify(sign(ad1_alert(), cert.private_key, cert), store, policy)
        if cert is control:
            assert r.valid and r.role == 0x89
        else:
            assert (r.valid, r.reason, r.role) == (False, Reason.ROLE_AMBIGUOUS, None)
            assert "more than one OU" in r.detail
    wide = SigningPolicy(response_roles=frozenset({0x02, 0x89}))  # no role set lets it through either
    assert (
        policy.check(ambiguous, "response", datetime(2030, 1, 1, tzinfo=UTC)).reason
        == "certificate_role_ambiguous"
    )
    assert (
        wide.check(ambiguous, "response", datetime(2030, 1, 1, tzinfo=UTC)).reason
        == "certificate_role_ambiguous"
    )


def test_a_certificate_without_a_subject_ou_has_no_role() -> None:
    cert = _org_certificate(TestPKI(seed="role-none"), "no-ou", [])
    assert (cert.role, cert.role_ambiguous) == (None, False)
    assert (
        SigningPolicy().check(cert, "response", datetime(2030, 1, 1, tzinfo=UTC)).reason == "role_not_allowed"
    )


@pytest.mark.parametrize("ou", ["+9", "-9", "+89", " 8_9", "٨٩", "١٣٧", "²²", "0x89", "\u00a089", "256"])
def test_role_is_read_from_ascii_hex_or_decimal_digits_only(ou: str) -> None:
    assert parse_role(ou) is None
