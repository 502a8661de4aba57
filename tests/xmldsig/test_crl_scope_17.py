"""A revocation list is applied only as what it is (RFC 5280 §5.2, §5.3). Lists that are not one complete list
of their issuer's revocations, or that say something the gateway does not process - a delta CRL, a list of some
reasons only, an indirect list, a critical extension of the list or of an entry that it does not know - are
refused with a named error (``crl_scope_unsupported``) and revoke nothing. A list for one distribution point, or
for CA or end-entity certificates only, speaks for those certificates alone.

Before, each of them was united with the issuer's other lists, and the freshest ``nextUpdate`` of the union
counted: a fresh delta, a fresh keyCompromise-only list or a fresh list of another partition made certificates
whose complete list was stale "checked and good" - evidence that the stale-list rule (fail-closed) exists to
refuse."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ObjectIdentifier
from xmldsig_docs import ad1_alert

from gateway.duis.xmldsig import Reason, VerifyResult, sign, verify
from gateway.smki import (
    DCC_EUI,
    ROLE_DSP_XML_SIGN,
    CertificateStore,
    CrlScopeUnsupported,
    SigningPolicy,
    SmkiCertificate,
)
from gateway.testkit.pki import Credential, TestPKI, derive_key

UTC = dt.UTC
NOW = dt.datetime(2026, 3, 2, 9, 5, tzinfo=UTC)  # the gateway's clock
REVOKED_ON = dt.datetime(2026, 2, 1, tzinfo=UTC)
STALE = NOW - dt.timedelta(hours=1)  # a nextUpdate already passed at NOW
FRESH = NOW + dt.timedelta(days=7)
PART_1 = x509.UniformResourceIdentifier("http://smki.example/org-ca/part-1.crl")
PART_2 = x509.UniformResourceIdentifier("http://smki.example/org-ca/part-2.crl")


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    pki = TestPKI(seed="crl-scope")
    pki.org_ca()
    pki.organisation("dsp-good", DCC_EUI, ROLE_DSP_XML_SIGN)
    pki.organisation("dsp-revoked", DCC_EUI, ROLE_DSP_XML_SIGN)
    return pki


def _store(pki: TestPKI, *extra: Credential) -> CertificateStore:
    return CertificateStore(
        SmkiCertificate.from_x509(c.certificate, name=c.name, private_key=c.private_key)
        for c in [*pki.issued.values(), *extra]
    )


def _signed_by(cred: Credential) -> bytes:
    return sign(ad1_alert(response_dt="2026-03-02T09:00:00Z"), cred.private_key, cred.certificate)


def _verify(cred: Credential, store: CertificateStore) -> VerifyResult:
    return verify(_signed_by(cred), store, SigningPolicy(), now=NOW)


def _in_partition(pki: TestPKI, name: str, serial: int, point: x509.GeneralName) -> Credential:
    """``name``'s certificate issued again by the organisation CA, naming ``point`` in cRLDistributionPoints."""
    cred = pki.issued[name]
    cert = (
        x509.CertificateBuilder()
        .subject_name(cred.certificate.subject)
        .issuer_name(cred.certificate.issuer)
        .public_key(cred.private_key.public_key())
        .serial_number(serial)
        .not_valid_before(cred.certificate.not_valid_before_utc)
        .not_valid_after(cred.certificate.not_valid_after_utc)
        .add_extension(
            cred.certificate.extensions.get_extension_for_class(x509.KeyUsage).value, critical=True
        )
        .add_extension(
            cred.certificate.extensions.get_extension_for_class(x509.CertificatePolicies).value, critical=True
        )
        .add_extension(
            x509.CRLDistributionPoints([x509.DistributionPoint([point], None, None, None)]), critical=False
        )
        .sign(derive_key(f"{pki.seed}:org-ca"), hashes.SHA256())
    )
    return Credential(f"{name}-{serial}", cert, cred.private_key)


def _idp(
    *,
    point: x509.GeneralName | None = None,
    ca_only: bool = False,
    user_only: bool = False,
    reasons: frozenset[x509.ReasonFlags] | None = None,
    indirect: bool = False,
) -> tuple[x509.ExtensionType, bool]:
    return (
        x509.IssuingDistributionPoint(
            full_name=None if point is None else [point],
            relative_name=None,
            only_contains_user_certs=user_only,
            only_contains_ca_certs=ca_only,
            only_some_reasons=reasons,
            indirect_crl=indirect,
            only_contains_attribute_certs=False,
        ),
        True,
    )


# ------------------------------------------------------------------ refused: not a complete list


def test_a_fresh_delta_crl_is_refused_so_a_stale_complete_list_still_refuses_the_signatures_it_covers(
    pki: TestPKI,
) -> None:
    store = _store(pki)
    store.add_crl(pki.crl([(pki.issued["dsp-revoked"], REVOKED_ON)], next_update=STALE), name="base.crl")
    delta = pki.crl(
        next_update=FRESH, extensions=[(x509.DeltaCRLIndicator(5), True), (x509.CRLNumber(6), False)]
    )
    with pytest.raises(CrlScopeUnsupported, match="a delta CRL") as refused:
        store.add_crl(delta, name="delta.crl")
    assert refused.value.code == "crl_scope_unsupported"
    assert [crl.name for crl in store.crls] == ["base.crl"]
    r = _verify(pki.issued["dsp-good"], store)
    assert (r.valid, r.reason) == (
        False,
        Reason.REVOCATION_STALE,
    )  # (was valid: the delta's nextUpdate counted)


def test_a_list_of_some_reasons_only_is_refused(pki: TestPKI) -> None:
    store = _store(pki)
    store.add_crl(pki.crl(next_update=STALE), name="complete.crl")
    key_compromise = pki.crl(
        next_update=FRESH, extensions=[_idp(reasons=frozenset({x509.ReasonFlags.key_compromise}))]
    )
    with pytest.raises(CrlScopeUnsupported, match="only some revocation reasons"):
        store.add_crl(key_compromise, name="kc.crl")
    assert _verify(pki.issued["dsp-good"], store).reason is Reason.REVOCATION_STALE


def test_an_indirect_crl_is_refused_whether_its_distribution_point_or_an_entry_says_so(pki: TestPKI) -> None:
    with pytest.raises(CrlScopeUnsupported, match="an indirect CRL"):
        _store(pki).add_crl(pki.crl(next_update=FRESH, extensions=[_idp(indirect=True)]), name="idp")
    elsewhere = x509.CertificateIssuer(
        [x509.DirectoryName(x509.Name.from_rfc4514_string("CN=SOME-OTHER-CA"))]
    )
    entry_says = pki.crl(
        [(pki.issued["dsp-good"], REVOKED_ON)], next_update=FRESH, entry_extensions=[(elsewhere, True)]
    )
    store = _store(pki)
    with pytest.raises(CrlScopeUnsupported, match="names another certificate issuer"):
        store.add_crl(entry_says, name="entry")
    assert store.crls == []
    assert _verify(pki.issued["dsp-good"], store).valid  # the other issuer's entry does not revoke this one


def test_a_critical_extension_the_gateway_does_not_process_refuses_the_list_a_non_critical_one_does_not(
    pki: TestPKI,
) -> None:
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    with pytest.raises(CrlScopeUnsupported, match=r"critical extension .*1\.3\.6\.1\.4\.1\.55555\.1"):
        _store(pki).add_crl(pki.crl(next_update=FRESH, extensions=[(unknown, True)]), name="list")
    with pytest.raises(CrlScopeUnsupported, match="entry for serial"):
        _store(pki).add_crl(
            pki.crl(
                [(pki.issued["dsp-revoked"], REVOKED_ON)],
                next_update=FRESH,
                entry_extensions=[(unknown, True)],
            ),
            name="entry",
        )
    store = _store(pki)
    store.add_crl(
        pki.crl(
            [(pki.issued["dsp-revoked"], REVOKED_ON)],
            next_update=FRESH,
            extensions=[(unknown, False), (x509.CRLNumber(7), False)],
            entry_extensions=[(unknown, False), (x509.CRLReason(x509.ReasonFlags.key_compromise), False)],
        ),
        name="ok",
    )
    assert _verify(pki.issued["dsp-revoked"], store).reason is Reason.CERTIFICATE_REVOKED
    assert _verify(pki.issued["dsp-good"], store).valid


def test_a_folder_load_lists_a_refused_delta_crl_by_file_with_its_code(pki: TestPKI, tmp_path: Path) -> None:
    pki.write_smki_dir(tmp_path, with_keys=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "org.crl.pem").write_bytes(
        pki.crl([(pki.issued["dsp-revoked"], REVOKED_ON)]).public_bytes(pem)
    )
    delta = pki.crl(extensions=[(x509.DeltaCRLIndicator(1), True)])
    (tmp_path / "org-delta.crl.pem").write_bytes(delta.public_bytes(pem))
    store = CertificateStore.from_directory(tmp_path)
    assert {label: err.code for label, err in store.rejected} == {
        "org-delta.crl.pem": "crl_scope_unsupported"
    }
    assert [crl.name for crl in store.crls] == ["org.crl.pem"]


# ------------------------------------------------------------------ scoped: what the list speaks for


def test_a_list_for_one_distribution_point_does_not_vouch_for_certificates_of_another(pki: TestPKI) -> None:
    in_1 = _in_partition(pki, "dsp-good", 9001, PART_1)
    in_2 = _in_partition(pki, "dsp-good", 9002, PART_2)
    store = _store(pki, in_1, in_2)
    store.add_crl(pki.crl(next_update=FRESH, extensions=[_idp(point=PART_1)]), name="part-1.crl")
    store.add_crl(
        pki.crl([(9002, REVOKED_ON)], next_update=STALE, extensions=[_idp(point=PART_2)]), name="part-2.crl"
    )
    assert _verify(in_1, store).valid
    r = _verify(in_2, store)
    assert (r.valid, r.reason) == (False, Reason.CERTIFICATE_REVOKED)  # its own partition revokes it
    # partition 2's list stale and not revoking it: stale (was good: partition 1's fresh nextUpdate counted)
    store = _store(pki, in_1, in_2)
    store.add_crl(pki.crl(next_update=FRESH, extensions=[_idp(point=PART_1)]), name="part-1.crl")
    store.add_crl(pki.crl(next_update=STALE, extensions=[_idp(point=PART_2)]), name="part-2.crl")
    assert _verify(in_2, store).reason is Reason.REVOCATION_STALE
    assert _verify(in_1, store).valid
    # a partition revoking a serial does not revoke the same serial in another partition's certificate
    store = _store(pki, in_1)
    store.add_crl(
        pki.crl([(9001, REVOKED_ON)], next_update=FRESH, extensions=[_idp(point=PART_2)]), name="p2"
    )
    assert _verify(in_1, store).valid


def test_a_list_naming_a_distribution_point_covers_certificates_that_name_none(pki: TestPKI) -> None:
    # SMKI certificates carry no cRLDistributionPoints: a CA that partitions its lists names the point in every
    # certificate, so a certificate naming none can only be on the CA's one list, whatever point that names
    store = _store(pki)
    store.add_crl(
        pki.crl(
            [(pki.issued["dsp-revoked"], REVOKED_ON)], next_update=FRESH, extensions=[_idp(point=PART_1)]
        ),
        name="org.crl",
    )
    assert _verify(pki.issued["dsp-revoked"], store).reason is Reason.CERTIFICATE_REVOKED
    good = _verify(pki.issued["dsp-good"], store)
    assert (good.valid, good.revocation) == (True, "good")


def test_a_fresh_ca_only_list_does_not_vouch_for_end_entity_certificates_of_a_stale_user_list(
    pki: TestPKI,
) -> None:
    # a fresh ARL-shaped list (onlyContainsCACerts) beside a stale list of the end-entity certificates
    store = _store(pki)
    store.add_crl(pki.crl(next_update=FRESH, extensions=[_idp(ca_only=True)]), name="org.arl")
    store.add_crl(pki.crl(next_update=STALE, extensions=[_idp(user_only=True)]), name="org.crl")
    assert _verify(pki.issued["dsp-good"], store).reason is Reason.REVOCATION_STALE  # (was valid)
    # the user-only list revokes as any list does
    store = _store(pki)
    store.add_crl(
        pki.crl(
            [(pki.issued["dsp-revoked"], REVOKED_ON)], next_update=FRESH, extensions=[_idp(user_only=True)]
        ),
        name="org.crl",
    )
    assert _verify(pki.issued["dsp-revoked"], store).reason is Reason.CERTIFICATE_REVOKED
