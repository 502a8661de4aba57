"""A revocation list is only as good as the CA certificate that signed it: a list issued (thisUpdate) while
its signer's certificate was expired or not yet valid is refused like a forged one, and a list whose
signer has expired since vouches for nothing after that (the certificates it covers are refused as
stale, fail-closed) while what it revokes stays revoked. Every certificate and list here is generated
with ``cryptography`` (through the test kit's PKI, with the CA's validity chosen per test)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from xmldsig_docs import ad1_alert

from gateway.duis.xmldsig import Reason, sign, verify
from gateway.smki import (
    DCC_EUI,
    ROLE_DSP_XML_SIGN,
    CertificateStore,
    SigningPolicy,
    SmkiCertificate,
    SmkiMaterial,
    UnusableCrl,
    replacement_problem,
)
from gateway.testkit.pki import ROLE_SUPPLIER, TestPKI
from gbcs.crypto import Status, Verifier, sign_frame
from gbcs.frame import build_general_signing, parse_frame
from gbcs.keystore import MemoryKeyStore

UTC = dt.UTC
CA_FROM = dt.datetime(2025, 1, 1, tzinfo=UTC)
CA_UNTIL = dt.datetime(2026, 3, 1, tzinfo=UTC)  # the organisation CA's certificate expires here
LEAF_UNTIL = dt.datetime(2099, 12, 31, tzinfo=UTC)  # the signers' own certificates outlive it
BEFORE_EXPIRY = dt.datetime(2026, 2, 20, 9, 5, tzinfo=UTC)
AFTER_EXPIRY = dt.datetime(2026, 3, 2, 9, 5, tzinfo=UTC)
REVOKED_ON = dt.datetime(2026, 1, 15, tzinfo=UTC)
FRESH = dt.datetime(2026, 6, 1, tzinfo=UTC)  # a nextUpdate well after both checking times
SUPPLIER_EUI = 0x90B3D51F30010000


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    pki = TestPKI(seed="crl-issuer-validity", not_before=CA_FROM, not_after=CA_UNTIL)
    pki.org_ca()
    for name, eui, role in (
        ("dsp-good", DCC_EUI, ROLE_DSP_XML_SIGN),
        ("dsp-revoked", DCC_EUI, ROLE_DSP_XML_SIGN),
        ("supplier-ds", SUPPLIER_EUI, ROLE_SUPPLIER),
    ):
        pki.organisation(name, eui, role, not_before=CA_FROM, not_after=LEAF_UNTIL)
    return pki


def _store(pki: TestPKI) -> CertificateStore:
    return CertificateStore(
        SmkiCertificate.from_x509(c.certificate, name=c.name) for c in pki.issued.values()
    )


def _list(
    pki: TestPKI, this_update: dt.datetime, next_update: dt.datetime = FRESH
) -> x509.CertificateRevocationList:
    return pki.crl(
        [(pki.issued["dsp-revoked"], REVOKED_ON)], this_update=this_update, next_update=next_update
    )


def _verify(pki: TestPKI, store: CertificateStore, name: str, now: dt.datetime) -> tuple[bool, Reason]:
    cred = pki.issued[name]
    when = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = sign(ad1_alert(response_dt=when), cred.private_key, cred.certificate)
    r = verify(doc, store, SigningPolicy(), now=now)
    return r.valid, r.reason


# ------------------------------------------------------------------ when the list is added


@pytest.mark.parametrize(
    "this_update",
    [CA_UNTIL + dt.timedelta(hours=12), CA_FROM - dt.timedelta(days=30)],
    ids=["issued-after-the-ca-expired", "issued-before-the-ca-was-valid"],
)
def test_a_list_issued_outside_its_signers_validity_is_refused_and_revokes_nothing(
    pki: TestPKI, this_update: dt.datetime
) -> None:
    store = _store(pki)
    with pytest.raises(UnusableCrl) as refused:
        store.add_crl(_list(pki, this_update), name="late.crl")
    assert refused.value.code == "crl_issuer_not_valid"
    assert "thisUpdate" in refused.value.message and "late.crl" in refused.value.message
    assert store.crls == [] and store.crl_next_updates() == {}
    # refused exactly like a list whose signature does not verify: the issuer is not covered by it
    found = store.revocation(next(c for c in store if c.name == "dsp-revoked"))
    assert found is None


def test_a_folder_load_lists_the_list_of_an_expired_signer_among_the_refused_files(
    pki: TestPKI, tmp_path: Path
) -> None:
    certs = pki.write_smki_dir(tmp_path / "certs", with_keys=False)
    late = _list(pki, CA_UNTIL + dt.timedelta(days=1))
    (certs / "org.crl.pem").write_bytes(late.public_bytes(serialization.Encoding.PEM))
    store = SmkiMaterial.read(certs).build()
    assert [(label, err.code) for label, err in store.rejected] == [("org.crl.pem", "crl_issuer_not_valid")]
    assert store.crls == []


def test_on_reload_a_list_from_an_expired_signer_never_replaces_the_list_in_force(
    pki: TestPKI, tmp_path: Path
) -> None:
    certs = pki.write_smki_dir(tmp_path / "certs", with_keys=False)
    crl = certs / "org.crl.pem"
    crl.write_bytes(_list(pki, dt.datetime(2026, 2, 1, tzinfo=UTC)).public_bytes(serialization.Encoding.PEM))
    current = SmkiMaterial.read(certs).build()
    assert len(current.crls) == 1
    # the next list, with nothing revoked, comes after the CA's certificate expired: it must not un-revoke
    late = pki.crl([], this_update=CA_UNTIL + dt.timedelta(days=1), next_update=FRESH)
    crl.write_bytes(late.public_bytes(serialization.Encoding.PEM))
    problem = replacement_problem(current, SmkiMaterial.read(certs).build())
    assert problem is not None and "org.crl.pem (crl_issuer_not_valid)" in problem, problem


# ------------------------------------------------------------------ when a signature is checked


def test_a_list_whose_signer_expired_since_makes_the_signatures_it_covers_stale_after_the_expiry(
    pki: TestPKI,
) -> None:
    store = _store(pki)
    store.add_crl(_list(pki, dt.datetime(2026, 2, 1, tzinfo=UTC)), name="org.crl")  # issued while valid
    assert _verify(pki, store, "dsp-good", BEFORE_EXPIRY) == (True, Reason.OK)
    # its nextUpdate (June) is still ahead, but the CA that vouches through it is gone: fail-closed
    assert _verify(pki, store, "dsp-good", AFTER_EXPIRY) == (False, Reason.REVOCATION_STALE)
    # what it revokes stays revoked, before and after
    assert _verify(pki, store, "dsp-revoked", BEFORE_EXPIRY) == (False, Reason.CERTIFICATE_REVOKED)
    assert _verify(pki, store, "dsp-revoked", AFTER_EXPIRY) == (False, Reason.CERTIFICATE_REVOKED)
    cred = pki.issued["dsp-good"]
    doc = sign(ad1_alert(response_dt="2026-03-02T09:00:00Z"), cred.private_key, cred.certificate)
    detail = verify(doc, store, SigningPolicy(), now=AFTER_EXPIRY).detail
    assert "expired" in detail and CA_UNTIL.isoformat() in detail, detail


def test_the_stale_gauges_source_gives_the_signers_expiry_when_it_comes_before_next_update(
    pki: TestPKI,
) -> None:
    store = _store(pki)
    store.add_crl(_list(pki, dt.datetime(2026, 2, 1, tzinfo=UTC)), name="org.crl")
    assert list(store.crl_next_updates().values()) == [CA_UNTIL]
    early = _store(pki)  # a list whose nextUpdate comes first keeps it
    early.add_crl(_list(pki, dt.datetime(2026, 2, 1, tzinfo=UTC), next_update=BEFORE_EXPIRY), name="org.crl")
    assert list(early.crl_next_updates().values()) == [BEFORE_EXPIRY]


def test_a_suppliers_gbcs_signature_under_a_list_whose_signer_expired_is_unverifiable(pki: TestPKI) -> None:
    from gateway.testkit.messages import cs06_command_content

    apdu = build_general_signing(
        cra=1, originator_counter=7, originator=SUPPLIER_EUI, recipient=0x00DB000000000001, message_code=0x0012,
        content=cs06_command_content(bytes(32), 7, None),
    )  # fmt: skip
    frame = parse_frame(sign_frame(apdu, pki.issued["supplier-ds"].private_key))
    keys = MemoryKeyStore()
    keys.add_certificate(pki.issued["supplier-ds"].certificate, "ds")
    store = _store(pki)
    store.add_crl(_list(pki, dt.datetime(2026, 2, 1, tzinfo=UTC)), name="org.crl")
    verifier = Verifier(keys, revocation=store)
    assert verifier.verify_signature(frame, BEFORE_EXPIRY, role=ROLE_SUPPLIER).ok
    late = verifier.verify_signature(frame, AFTER_EXPIRY, role=ROLE_SUPPLIER)
    assert late.status is Status.UNVERIFIABLE and "expired" in late.reason, late
