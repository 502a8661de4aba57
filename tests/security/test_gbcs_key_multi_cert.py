"""The GBCS key store keeps every certificate of an EUI, and the verifier tries each.

After a device's certificate is replaced (GBCS CS02 "Update Device Certificate") an SMKI repository
download holds its old and its new DS certificate. The key store kept one of them (the first of equal
rank), so every frame the meter signed with the other key was unverifiable: its firmware activation was
not evidence and its false AD1 reached the DNO. Now every usable certificate of the best rank is held
(exact copies once), the index file (format 2) carries them, and a device signature is valid when one of
them that passes every check (validity, keyUsage, the EUI it names, role, revocation) verifies it.

The lab's meters ``NO_CERT..`` have no DS certificate in the lab's key store: each test gives one
certificates of its own and runs the meter's signed activation and its AD1 through the real classifier
and a fresh durable engine (``run_case``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.gbcs_keys import listing_digest, load_keystore, reload_keystore
from gateway.pipeline import Classifier
from gateway.smki import CertificateStore, SigningPolicy
from gateway.testkit.pki import derive_key
from gbcs.crypto import Check, Status, Verifier, mac_wrap
from gbcs.frame import build_general_signing, parse_frame
from gbcs.keystore import KeyStore
from tests.security.attacks import RESP_AT
from tests.security.lab import DAY, NO_CERT, REVOKED_AT, Lab, run_case
from tests.security.test_signature_review_13 import (
    classifier_with,
    decisions,
    device_signed_activation,
    hw_module_name,
    pem,
)

SUPPRESSED = [("suppress", "activation-window")]
NOT_EVIDENCE = [("forward", "evidence-unverified")]
DS_ONLY = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
KA_ONLY = x509.KeyUsage(False, False, False, False, True, False, False, False, False)
ORG_CA = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "07"),
        x509.NameAttribute(NameOID.COMMON_NAME, "DUISGW-TEST-ORG-CA"),
    ]
)
DEVICE_CA = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DUISGW-TEST-DEVICE-CA")])


def device_cert(
    key: ec.EllipticCurvePrivateKey,
    eui: int | None,
    serial: int,
    *,
    not_before: dt.datetime = dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    not_after: dt.datetime = dt.datetime(2099, 1, 1, tzinfo=dt.UTC),
    ka: bool = False,
    org_ca: bool = False,
) -> x509.Certificate:
    """An SMKI-shaped device certificate (empty subject, SAN hwModuleName = ``eui``; none when ``eui`` is
    None) from the lab's device CA, or from its organisation CA (``org_ca``: whose CRL the lab's SMKI store
    reads, so that the certificate can be revoked)."""
    issuer, issuer_key = (
        (ORG_CA, derive_key("duisgw:org-ca")) if org_ca else (DEVICE_CA, derive_key("duisgw:device-ca"))
    )
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(KA_ONLY if ka else DS_ONLY, critical=True)
    )
    if eui is not None:
        b = b.add_extension(x509.SubjectAlternativeName([hw_module_name(eui)]), critical=True)
    return b.sign(issuer_key, hashes.SHA256())


def replaced(
    tag: str, eui: int, **old_kw: object
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A device's old DS certificate (2020) and its replacement (a year before the lab's day), each with its
    key (``old_kw``: how the old one differs)."""
    old_key, new_key = derive_key(f"multi:{tag}:old"), derive_key(f"multi:{tag}:new")
    serial = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "big")  # one pair of serials a tag
    old = device_cert(old_key, eui, serial, **old_kw)  # type: ignore[arg-type]
    new = device_cert(new_key, eui, serial + 1, not_before=DAY - dt.timedelta(days=365))
    return old_key, old, new_key, new


def outcome_with(
    lab: Lab, clf: Classifier, m: int, key: ec.EllipticCurvePrivateKey, tmp: Path
) -> list[tuple[str, str]]:
    return decisions(run_case(lab, clf, device_signed_activation(lab, m, key), tmp))


def signature_check(lab: Lab, clf: Classifier, m: int, key: ec.EllipticCurvePrivateKey) -> Check:
    """The GBCS signature check of the meter's activation signed with ``key``, as the classifier made it."""
    evidence = device_signed_activation(lab, m, key).steps[0][2]
    c = clf.classify("observe", evidence, RESP_AT)
    assert c.gbcs is not None
    return c.gbcs


# ------------------------------------------------------------------ a device's old and new certificate


@pytest.mark.parametrize("new_first", [False, True], ids=["old-then-new", "new-then-old"])
def test_a_bundle_with_a_meters_old_and_new_ds_certificate_makes_a_frame_signed_with_either_key_evidence(
    lab: Lab, tmp_path: Path, new_first: bool
) -> None:
    """An SMKI download (``*.certs.pem``) with the ESME's old and new DS certificate, in either order: the
    activation the meter signed with either key suppresses its AD1, and the check names the certificate.
    Before, the first of the two was kept and the other key's activation was not evidence."""
    m = NO_CERT
    esme = lab.meter(m)[0]
    old_key, old, new_key, new = replaced("bundle", esme)
    bundle = pem(new) + pem(old) if new_first else pem(old) + pem(new)
    clf = classifier_with(lab, tmp_path, keys={"smki-download.certs.pem": bundle})
    for key, cert in ((old_key, old), (new_key, new)):
        assert outcome_with(lab, clf, m, key, tmp_path) == SUPPRESSED
        check = signature_check(lab, clf, m, key)
        assert check.status is Status.VALID
        assert f"certificate serial {cert.serial_number:X}" in check.reason, check.reason
    # a third key (not the meter's) is still no one's
    forged = derive_key("multi:bundle:forger")
    assert outcome_with(lab, clf, m, forged, tmp_path) == NOT_EVIDENCE
    assert signature_check(lab, clf, m, forged).status is Status.INVALID


def test_the_order_of_a_bundle_does_not_change_what_the_key_store_holds(tmp_path: Path) -> None:
    """Both orders of one bundle give the same certificates in the same order (newest first), with the
    index and without: the order the files list in decides nothing."""
    esme = 0x00DB_0000_0000_0000 | (NO_CERT + 1)
    _ok, old, _nk, new = replaced("order", esme)
    held = []
    for i, bundle in enumerate((pem(old) + pem(new), pem(new) + pem(old))):
        d = tmp_path / f"keys{i}"
        d.mkdir()
        (d / "devices.certs.pem").write_bytes(bundle)
        for store in (load_keystore(d), load_keystore(d, index=tmp_path / f"keys{i}.idx")):
            assert store.ds_certificates(esme) == (new, old)
            assert store.ds_certificate(esme) == new
            held.append(store.ds_certificates(esme))
    assert len(set(held)) == 1


def test_a_revoked_old_certificate_does_not_verify_while_the_new_one_does(lab: Lab, tmp_path: Path) -> None:
    """The old certificate is on its CA's CRL (listed first in the bundle: it was the one kept before, and
    every frame signed with the new key was lost as evidence). The new key's activation is evidence; the
    old key's is refused as revoked, naming the old certificate."""
    m = NO_CERT + 1
    esme = lab.meter(m)[0]
    old_key, old, new_key, new = replaced("revoked", esme, org_ca=True)
    pki = lab.world.pki
    crl = pki.crl(
        [(pki.issued["dsp-revoked"], REVOKED_AT), (old.serial_number, REVOKED_AT)], this_update=REVOKED_AT
    )
    clf = classifier_with(
        lab,
        tmp_path,
        keys={"smki-download.certs.pem": pem(old) + pem(new)},
        certs={"org.crl.pem": crl.public_bytes(serialization.Encoding.PEM)},
    )
    assert outcome_with(lab, clf, m, new_key, tmp_path) == SUPPRESSED
    assert outcome_with(lab, clf, m, old_key, tmp_path) == NOT_EVIDENCE
    check = signature_check(lab, clf, m, old_key)
    assert check.status is Status.REVOKED, check
    assert f"certificate serial {old.serial_number:X}" in check.reason, check.reason


@pytest.mark.parametrize("expired", ["old", "new"])
def test_an_expired_certificate_of_the_two_does_not_verify_while_the_other_does(
    lab: Lab, tmp_path: Path, expired: str
) -> None:
    """One of the two certificates is not valid at the frame's arrival: the frame signed with its key is
    not evidence (unverifiable, named), the one signed with the other key is."""
    m = NO_CERT + 2
    esme = lab.meter(m)[0]
    k1, k2 = derive_key(f"multi:expired:{expired}:1"), derive_key(f"multi:expired:{expired}:2")
    dead = device_cert(k1, esme, 0x1601, not_after=DAY - dt.timedelta(days=1))
    alive = device_cert(k2, esme, 0x1602, not_before=DAY - dt.timedelta(days=30))
    if expired == "new":  # a replacement not yet valid at the arrival: notBefore after it
        dead = device_cert(k1, esme, 0x1601, not_before=DAY + dt.timedelta(days=1))
        alive = device_cert(k2, esme, 0x1602)
    clf = classifier_with(lab, tmp_path, keys={"smki-download.certs.pem": pem(dead) + pem(alive)})
    assert outcome_with(lab, clf, m, k2, tmp_path) == SUPPRESSED
    assert outcome_with(lab, clf, m, k1, tmp_path) == NOT_EVIDENCE
    check = signature_check(lab, clf, m, k1)
    assert check.status is Status.UNVERIFIABLE and "not valid at" in check.reason, check
    assert f"certificate serial {dead.serial_number:X}" in check.reason, check.reason


def test_a_certificate_naming_no_eui_never_verifies_beside_the_devices_own(lab: Lab, tmp_path: Path) -> None:
    """The device's own file ``<eui>-ds.pem`` holds two certificates: one that names no EUI (filed there by
    the file name only) and the device's genuine one. The genuine one is held and verifies; the one naming
    no one is listed as skipped and its key's signature is never evidence. (Before, only the first PEM
    block of the file was read: the genuine certificate was not held at all.)"""
    m = NO_CERT + 3
    esme = lab.meter(m)[0]
    nobody_key, genuine_key = derive_key("multi:no-eui:nobody"), derive_key("multi:no-eui:genuine")
    nobody = device_cert(nobody_key, None, 0x1701)
    genuine = device_cert(genuine_key, esme, 0x1702)
    name = f"{esme:016x}-ds.pem"
    clf = classifier_with(lab, tmp_path, keys={name: pem(nobody) + pem(genuine)})
    assert outcome_with(lab, clf, m, genuine_key, tmp_path) == SUPPRESSED
    assert outcome_with(lab, clf, m, nobody_key, tmp_path) == NOT_EVIDENCE
    assert signature_check(lab, clf, m, nobody_key).status is not Status.VALID
    keystore = load_keystore(tmp_path / "gbcs-keys")
    assert keystore.ds_certificates(esme) == (genuine,)
    assert f"{name}#0" in dict(keystore.skipped)
    # two certificates that name no EUI, alone under the EUI: held (by file name), never used
    only = tmp_path / "only-nobody"
    only.mkdir()
    other_key = derive_key("multi:no-eui:other")
    (only / name).write_bytes(pem(nobody) + pem(device_cert(other_key, None, 0x1703)))
    store = load_keystore(only)
    assert len(store.ds_certificates(esme)) == 2
    alone = classifier_with(lab, tmp_path / "alone", keys={name: (only / name).read_bytes()})
    for key in (nobody_key, other_key):
        assert outcome_with(lab, alone, m, key, tmp_path) == NOT_EVIDENCE
        assert signature_check(lab, alone, m, key).status is Status.UNVERIFIABLE


def test_exact_duplicates_are_held_once(tmp_path: Path) -> None:
    """The same certificate in two bundles and twice in one: held once (the copies listed in ``skipped``),
    counted once in the index; the two different certificates both held."""
    esme = 0x00DB_0000_0000_0000 | (NO_CERT + 4)
    _ok, old, _nk, new = replaced("dupes", esme)
    d = tmp_path / "keys"
    d.mkdir()
    (d / "a.certs.pem").write_bytes(pem(old) + pem(new) + pem(old))
    (d / "b.certs.pem").write_bytes(pem(new))
    store = load_keystore(d)
    assert store.ds_certificates(esme) == (new, old)
    copies = [name for name, why in store.skipped if "held once" in why]
    assert sorted(copies) == ["a.certs.pem#2", "b.certs.pem#0"]
    indexed = load_keystore(d, index=tmp_path / "keys.idx")
    assert len(indexed) == 2 and indexed.ds_certificates(esme) == (new, old)


def _write_format1_index(index: Path, root: Path, certs: dict[int, x509.Certificate]) -> None:
    """An index file as format 1 wrote it (magic ``DUISGWK1``: one DS certificate per EUI, no KA), built from
    the current listing of ``root``: what a gateway finds after an upgrade."""
    der = {eui: c.public_bytes(serialization.Encoding.DER) for eui, c in certs.items()}
    euis = sorted(der)
    offsets, at = [], 0
    for eui in euis:
        offsets.append(at)
        at += len(der[eui])
    n = len(euis)
    raw = struct.pack("<8s32sQQQ", b"DUISGWK1", listing_digest(root), 2**64 - 1, n, 0)
    raw += struct.pack(f"<{n}Q", *euis) + struct.pack(f"<{n}Q", *offsets)
    raw += struct.pack(f"<{n}I", *(len(der[e]) for e in euis))
    raw += b"".join(der[e] for e in euis)
    index.write_bytes(raw)


def _verifier_classifier(lab: Lab, keystore: KeyStore) -> Classifier:
    store = CertificateStore.from_path(lab.refs["certs"])
    return Classifier(
        certificates=store,
        signing_policy=SigningPolicy(),
        gbcs_verifier=Verifier(keystore, acb_eui=getattr(keystore, "acb_eui", None), revocation=store),
    )


def test_an_index_file_of_the_old_format_is_rebuilt_not_read(lab: Lab, tmp_path: Path) -> None:
    """The folder holds the meter's old and new certificate; the index file beside it is of format 1 (one
    certificate per EUI: the old one) with this very listing's digest. It is rebuilt, not read: the new
    key's activation is evidence. Before, the old file was mapped and the new certificate was not held."""
    m = NO_CERT + 4
    esme = lab.meter(m)[0]
    old_key, old, new_key, new = replaced("format1", esme)
    d = tmp_path / "keys"
    shutil.copytree(lab.refs["gbcs_keys"], d)
    (d / "smki-download.certs.pem").write_bytes(pem(old) + pem(new))
    index = tmp_path / "gbcs-keys.idx"
    _write_format1_index(index, d, {esme: old})
    keystore = load_keystore(d, index=index)
    clf = _verifier_classifier(lab, keystore)
    assert outcome_with(lab, clf, m, new_key, tmp_path) == SUPPRESSED
    assert outcome_with(lab, clf, m, old_key, tmp_path) == SUPPRESSED
    assert index.read_bytes()[:8] == b"DUISGWK2"
    assert keystore.ds_certificates(esme) == (new, old)


def test_reload_from_one_certificate_to_two_and_back(lab: Lab, tmp_path: Path) -> None:
    """A reload that adds the meter's new certificate (a second bundle) holds both (one certificate more
    in the count), and each key's activation is evidence; the reload that removes it again takes the new
    key's evidence away. A bundle that cannot be read at a reload must not take one of the two away
    (refused, as for any certificate in force); before, only whole EUIs were compared and it was dropped."""
    m = NO_CERT
    esme = lab.meter(m)[0]
    old_key, old, new_key, new = replaced("reload", esme)
    d = tmp_path / "keys"
    shutil.copytree(lab.refs["gbcs_keys"], d)
    (d / "a-old.certs.pem").write_bytes(pem(old))
    index = tmp_path / "gbcs-keys.idx"
    one = load_keystore(d, index=index)
    assert one.ds_certificates(esme) == (old,)
    assert outcome_with(lab, _verifier_classifier(lab, one), m, new_key, tmp_path) == NOT_EVIDENCE

    (d / "b-new.certs.pem").write_bytes(pem(new))
    two = reload_keystore(d, index=index, current=one)
    assert two.refused is None and two.store is not None
    assert two.store.ds_certificates(esme) == (new, old) and len(two.store) == len(one) + 1
    clf = _verifier_classifier(lab, two.store)
    assert outcome_with(lab, clf, m, new_key, tmp_path) == SUPPRESSED
    assert outcome_with(lab, clf, m, old_key, tmp_path) == SUPPRESSED

    # the new certificate's bundle becomes a dangling link (a read failure): refused, both stay in force
    (d / "b-new.certs.pem").unlink()
    os.symlink(d / "gone.pem", d / "b-new.certs.pem")
    refused = reload_keystore(d, index=index, current=two.store)
    assert refused.store is None and refused.refused is not None and "drop 1 certificate" in refused.refused
    (d / "b-new.certs.pem").unlink()

    back = reload_keystore(d, index=index, current=two.store)
    assert back.refused is None and back.store is not None
    assert back.store.ds_certificates(esme) == (old,) and len(back.store) == len(one)
    clf = _verifier_classifier(lab, back.store)
    assert outcome_with(lab, clf, m, old_key, tmp_path) == SUPPRESSED
    assert outcome_with(lab, clf, m, new_key, tmp_path) == NOT_EVIDENCE


# ------------------------------------------------------------------ key agreement


SUPPLIER = 0x90B3_D51F_3001_0000


def test_a_mac_made_with_either_ka_key_of_a_device_verifies_and_the_private_key_picks_its_certificate(
    tmp_path: Path,
) -> None:
    """The ESME's ``-ka.pem`` holds its new and old KA certificate; the store holds the supplier's KA
    certificate and private key. A response MAC'd with either ESME key verifies (the GCM tag tells which
    certificate: the check names it). Where the store holds an EUI's own private key, its single
    ``ka_certificate`` is the one that pairs with that key, not merely the newest."""
    esme = 0x00DB_0000_0000_0000 | (NO_CERT + 5)
    old_key, new_key = derive_key("multi:ka:old"), derive_key("multi:ka:new")
    old = device_cert(old_key, esme, 0x1801, ka=True)
    new = device_cert(new_key, esme, 0x1802, ka=True, not_before=DAY - dt.timedelta(days=10))
    sup_key = derive_key("multi:ka:supplier")
    d = tmp_path / "keys"
    d.mkdir()
    (d / f"{esme:016x}-ka.pem").write_bytes(pem(new) + pem(old))
    (d / f"{SUPPLIER:016x}-ka.pem").write_bytes(pem(device_cert(sup_key, SUPPLIER, 0x1803, ka=True)))
    (d / f"{SUPPLIER:016x}-ka.key").write_bytes(
        sup_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    apdu = build_general_signing(
        cra=2, originator_counter=7, originator=esme, recipient=SUPPLIER, message_code=0x0059,
        content=b"\xda\x20\x00\x00\x07\x00\x00\x00\x00", null_signature=True,
    )  # fmt: skip
    for store in (load_keystore(d), load_keystore(d, index=tmp_path / "keys.idx")):
        assert store.ka_certificates(esme) == (new, old)
        v = Verifier(store)
        for key, cert in ((old_key, old), (new_key, new)):
            check = v.verify_mac(parse_frame(mac_wrap(apdu, key, sup_key.public_key())), RESP_AT)
            assert check.ok, check
            assert f"certificate serial {cert.serial_number:X}" in check.reason, check.reason
        forged = v.verify_mac(
            parse_frame(mac_wrap(apdu, derive_key("multi:ka:x"), sup_key.public_key())), RESP_AT
        )
        assert forged.status is Status.INVALID
    # the ESME's own private key held (a test fixture): its KA certificate is the one that pairs with it
    (d / f"{esme:016x}-ka.key").write_bytes(
        old_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    for store in (load_keystore(d), load_keystore(d, index=tmp_path / "keys2.idx")):
        assert store.ka_certificate(esme) == old
        assert store.ka_certificate(SUPPLIER) is not None


def test_role_problem_is_none_when_one_of_two_certificates_holds_the_role(lab: Lab, tmp_path: Path) -> None:
    """A supplier's DS certificates: an expired one and a valid one (a CV4 request is evidence only when
    the key store shows its originator holding the Supplier role): the valid one is enough."""
    supplier = 0x90B3_D51F_3009_0000
    from tests.security.test_signature_review_13 import SMKI

    valid = SMKI.organisation("multi-supplier-new", supplier, 0x02)
    expired = SMKI.organisation(
        "multi-supplier-old", supplier, 0x02,
        not_before=DAY - dt.timedelta(days=800), not_after=DAY - dt.timedelta(days=1),
    )  # fmt: skip
    d = tmp_path / "keys"
    d.mkdir()
    (d / "suppliers.certs.pem").write_bytes(expired.cert_pem + valid.cert_pem)
    v = Verifier(load_keystore(d))
    assert v.role_problem(supplier, 0x02, RESP_AT) is None
    (d / "suppliers.certs.pem").write_bytes(expired.cert_pem)
    problem = Verifier(load_keystore(d)).role_problem(supplier, 0x02, RESP_AT)
    assert problem is not None and "not valid at" in problem
