"""Signature review 13: GBCS device signatures and SMKI certificate handling.

Each test stages evidence that, were it genuine, would suppress the target AD1 (the lab's timeline:
an immediate activation answered at 09:00:40, the AD1 starting 09:03:30), runs it through the real
classifier and a fresh durable engine (``run_case``), and pins what a certificate the gateway holds
may vouch for:

* a device's GBCS signature (a CS06 response, an 8F66/8F67, an ECS80 restoration: CRA response or
  alert) is checked only with a *device* certificate naming that device (SubjectAltName hwModuleName):
  not with an organisation certificate whose x500UniqueIdentifier happens to be the device's EUI, not
  with a certificate that names no EUI and is only filed under the device's EUI, not with one that says
  nothing of its key's use (no keyUsage: every SMKI certificate has one), and not with one naming two
  EUIs;
* an XML-signing certificate naming two EUIs (two x500UniqueIdentifier) is no one's;
* two different certificates under one issuer and serial (two CAs whose names compare equal, as the
  X509IssuerName lookup compares them) are both held: the one whose key verifies the signature is
  the signer, where before the one loaded second was dropped without a word and its genuine
  signatures failed.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from gateway.gbcs_keys import load_keystore
from gateway.pipeline import Classifier
from gateway.smki import CertificateStore, SigningPolicy
from gateway.testkit.messages import DCC_EUI, DNO_EUI, Signer
from gateway.testkit.pki import ROLE_DSP_XML_SIGN, ROLE_SUPPLIER, TestPKI, derive_key
from gbcs.crypto import Status, Verifier
from tests.security.attacks import AD1_AT, AD1_START, RESP_AT, response
from tests.security.lab import NO_CERT, Case, Lab, Outcome, run_case

#: the lab's own CAs (``TestPKI(seed="duisgw")`` derives the same CA keys): what the tests issue here is
#: as genuine as the lab's certificates, the SMKI having issued it
SMKI = TestPKI(seed="duisgw")
HW_MODULE_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.4")
UNIQUE_ID = ObjectIdentifier("2.5.4.45")
VALID_FROM = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
VALID_TO = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
DS_ONLY = x509.KeyUsage(True, False, False, False, False, False, False, False, False)


def decisions(outcome: Outcome) -> list[tuple[str, str]]:
    return [(line["decision"], line["reason"]) for line in outcome.targets]


def hw_module_name(eui: int) -> x509.OtherName:
    """SAN otherName hwModuleName {hwType, hwSerialNum = the EUI} (the SMKI device certificate's)."""
    hw_type = bytes.fromhex("060b2a8648f0a3d25e01020201")  # an OID; its value does not matter here
    inner = hw_type + b"\x04\x08" + eui.to_bytes(8, "big")
    return x509.OtherName(HW_MODULE_NAME, bytes([0x30, len(inner)]) + inner)


def unique_id(eui: int) -> x509.NameAttribute[bytes]:
    return x509.NameAttribute(
        UNIQUE_ID, b"\x00" + eui.to_bytes(8, "big"), _type=x509.name._ASN1Type.BitString
    )


def issue(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    *,
    org: bool,
    serial: int,
    san: list[x509.GeneralName] | None = None,
    usage: x509.KeyUsage | None = DS_ONLY,
    issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """A certificate from the lab's organisation CA (``org``) or device CA, unless ``issuer`` is given."""
    if issuer is None:
        cn = x509.NameAttribute(NameOID.COMMON_NAME, "DUISGW-TEST-ORG-CA" if org else "DUISGW-TEST-DEVICE-CA")
        issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "07"), cn] if org else [cn])
        issuer_key = derive_key("duisgw:org-ca" if org else "duisgw:device-ca")
    assert issuer_key is not None
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(VALID_FROM)
        .not_valid_after(VALID_TO)
    )
    if usage is not None:
        b = b.add_extension(usage, critical=True)
    if san is not None:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=True)
    return b.sign(issuer_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def classifier_with(
    lab: Lab, tmp: Path, *, keys: dict[str, bytes] | None = None, certs: dict[str, bytes] | None = None
) -> Classifier:
    """The lab's classifier over copies of its GBCS key store and SMKI folder with ``keys`` / ``certs``
    (file name -> bytes) added."""
    key_dir, cert_dir = tmp / "gbcs-keys", tmp / "certs"
    shutil.copytree(lab.refs["gbcs_keys"], key_dir)
    shutil.copytree(lab.refs["certs"], cert_dir)
    for name, data in (keys or {}).items():
        (key_dir / name).write_bytes(data)
    for name, data in (certs or {}).items():
        (cert_dir / name).write_bytes(data)
    keystore = load_keystore(key_dir)
    store = CertificateStore.from_path(cert_dir)
    return Classifier(
        certificates=store,
        signing_policy=SigningPolicy(),
        gbcs_verifier=Verifier(keystore, acb_eui=keystore.acb_eui, revocation=store),
    )


def device_signed_activation(lab: Lab, m: int, key: ec.EllipticCurvePrivateKey) -> Case:
    """Meter ``m``'s ESME answers its CS06 at 09:00:40 (success), the GBCS frame signed with ``key`` and
    the DUIS response genuinely DSP-signed; then the meter's AD1 (inside the window had it been genuine)."""
    esme, ch, mpan = lab.meter(m)
    factory = lab.factory_with_device_key(lambda _eui: key)
    evidence = factory.activate_response(esme, 1000 + m, RESP_AT)
    return (
        Case()
        .attack(RESP_AT, "observe", evidence)
        .target(AD1_AT, lab.f.ad1(ch, mpan, AD1_START, AD1_AT, 900 + m))
    )


def assert_not_evidence(lab: Lab, clf: Classifier, case: Case, tmp: Path, reason: str) -> None:
    outcome = run_case(lab, clf, case, tmp)
    assert decisions(outcome) == [("forward", "evidence-unverified")], outcome.stopped_by
    [stopped] = outcome.stopped_by
    assert stopped.startswith("gbcs-signature-unverifiable:"), stopped
    evidence = clf.classify("observe", case.steps[0][2], RESP_AT)
    assert evidence.gbcs is not None and evidence.gbcs.status is Status.UNVERIFIABLE
    assert reason in evidence.gbcs.reason, evidence.gbcs.reason


# ------------------------------------------------------------------ GBCS: what may vouch for a device


def test_the_control_a_device_certificate_of_a_meter_without_one_makes_its_signature_evidence(
    lab: Lab, tmp_path: Path
) -> None:
    """The staging works: a genuine device DS certificate for the meter (which the lab's key store lacks)
    makes its signed response suppress the AD1. Every test below changes only the certificate."""
    m = NO_CERT
    esme = lab.meter(m)[0]
    key = derive_key("review13:device")
    cert = issue(key, x509.Name([]), org=False, serial=1301, san=[hw_module_name(esme)])
    clf = classifier_with(lab, tmp_path, keys={f"{esme:016x}-ds.pem": pem(cert)})
    outcome = run_case(lab, clf, device_signed_activation(lab, m, key), tmp_path)
    assert decisions(outcome) == [("suppress", "activation-window")]


def test_an_organisation_certificate_naming_a_meters_eui_does_not_vouch_for_its_device_signature(
    lab: Lab, tmp_path: Path
) -> None:
    """A Supplier-role organisation DS certificate (OU=02) whose x500UniqueIdentifier is the ESME's EUI,
    held in the key store (which holds organisation certificates too: the suppliers', for CV5): whoever
    holds its key signed the ESME's CS06 response. A response or alert is a device's word; it was taken
    as verified and the AD1 suppressed."""
    m = NO_CERT + 1
    esme = lab.meter(m)[0]
    org = SMKI.organisation("review13-organisation-named-like-a-meter", esme, ROLE_SUPPLIER)
    clf = classifier_with(lab, tmp_path, keys={f"{esme:016x}-ds.pem": org.cert_pem})
    case = device_signed_activation(lab, m, org.private_key)
    assert_not_evidence(lab, clf, case, tmp_path, "not a device certificate")


def test_a_certificate_naming_no_eui_filed_under_a_meters_eui_does_not_vouch_for_its_signature(
    lab: Lab, tmp_path: Path
) -> None:
    """``<eui>-ds.pem`` holding a certificate that names no EUI at all (no hwModuleName, no
    x500UniqueIdentifier; the key store then files it under the file's name): the EUI is the file
    name's word, not the certificate's. It verified the ESME's signature and the AD1 was suppressed."""
    m = NO_CERT + 2
    esme = lab.meter(m)[0]
    key = derive_key("review13:no-eui")
    cert = issue(key, x509.Name([]), org=False, serial=1302)
    clf = classifier_with(lab, tmp_path, keys={f"{esme:016x}-ds.pem": pem(cert)})
    assert_not_evidence(lab, clf, device_signed_activation(lab, m, key), tmp_path, "not a device certificate")


def test_a_device_certificate_without_key_usage_does_not_vouch_for_a_signature(
    lab: Lab, tmp_path: Path
) -> None:
    """Every SMKI certificate states its key's single use (keyUsage, critical: digitalSignature for DS,
    keyAgreement for KA; GBCS keeps the two keys apart). One with no keyUsage says nothing of it: it was
    used for a device signature as if it said digitalSignature."""
    m = NO_CERT + 3
    esme = lab.meter(m)[0]
    key = derive_key("review13:no-key-usage")
    cert = issue(key, x509.Name([]), org=False, serial=1303, san=[hw_module_name(esme)], usage=None)
    clf = classifier_with(lab, tmp_path, keys={f"{esme:016x}-ds.pem": pem(cert)})
    assert_not_evidence(lab, clf, device_signed_activation(lab, m, key), tmp_path, "keyUsage")


def test_a_device_certificate_naming_two_euis_vouches_for_neither(lab: Lab, tmp_path: Path) -> None:
    """A device certificate whose SubjectAltName holds two hwModuleNames (this ESME's EUI and another
    device's): which device is it? The key store took the first and the signature was the ESME's."""
    m = NO_CERT + 4
    esme = lab.meter(m)[0]
    key = derive_key("review13:two-euis")
    cert = issue(
        key,
        x509.Name([]),
        org=False,
        serial=1304,
        san=[hw_module_name(esme), hw_module_name(0x00DB_FFFF_0000_0001)],
    )
    clf = classifier_with(lab, tmp_path, keys={f"{esme:016x}-ds.pem": pem(cert)})
    assert_not_evidence(lab, clf, device_signed_activation(lab, m, key), tmp_path, "not a device certificate")


# ------------------------------------------------------------------ SMKI: XML-signing certificates


def test_an_xml_signing_certificate_naming_two_euis_is_no_ones(lab: Lab, tmp_path: Path) -> None:
    """A DSP-role (0x89) certificate whose subject holds two x500UniqueIdentifiers, another party's EUI
    and the DCC's: as a subject with two OUs has no role, a subject with two EUIs is no one's. The store
    read the last one (the DCC's) and the signature passed as the DSP's."""
    key = derive_key("review13:two-unique-ids")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{ROLE_DSP_XML_SIGN:02X}"),
            unique_id(DNO_EUI),
            unique_id(DCC_EUI),
        ]
    )
    cert = issue(key, subject, org=True, serial=1305)
    clf = classifier_with(lab, tmp_path, certs={"review13-two-euis.pem": pem(cert)})
    n = 61
    evidence = response(lab, n, signer=Signer(key, cert))
    c = clf.classify("observe", evidence, RESP_AT)
    assert c.xml is not None and not c.xml.valid
    assert c.xml.reason == "signer_eui_mismatch", c.xml.reason
    _esme, ch, mpan = lab.meter(n)
    case = (
        Case()
        .attack(RESP_AT, "observe", evidence)
        .target(AD1_AT, lab.f.ad1(ch, mpan, AD1_START, AD1_AT, 961))
    )
    assert decisions(run_case(lab, clf, case, tmp_path)) == [("forward", "evidence-unverified")]


def test_a_second_certificate_under_the_dsps_issuer_and_serial_does_not_cost_the_dsps_signatures(
    lab: Lab, tmp_path: Path
) -> None:
    """Another CA whose name compares equal to the organisation CA's (the same attributes in the other
    order, as X509IssuerName is matched: order, case and spacing do not count) issued a certificate with
    the DSP certificate's serial. Loaded first (its file name sorts first), it took the DSP certificate's
    place in the store without a word: every genuine DSP signature then failed (signature_mismatch), and
    the activation's evidence with it. Both are held now, and the one whose key verifies is the signer."""
    dsp = lab.world.dsp.certificate
    other_ca = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "DUISGW-TEST-ORG-CA"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "07"),
        ]
    )
    assert other_ca != dsp.issuer  # another CA (its DER name differs) ...
    twin_key = derive_key("review13:twin")
    twin = issue(
        twin_key,
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "87"), unique_id(DNO_EUI)]),
        org=True,
        serial=dsp.serial_number,  # ... with the same serial
        issuer=other_ca,
        issuer_key=derive_key("review13:other-ca"),
    )
    clf = classifier_with(lab, tmp_path, certs={"0-review13-twin.pem": pem(twin)})
    assert clf.certificates.rejected == []
    n = 62
    genuine = response(lab, n)
    c = clf.classify("observe", genuine, RESP_AT)
    assert c.xml is not None and c.xml.valid, c.xml
    assert c.xml.certificate_name == "dsp-xml-sign"
    _esme, ch, mpan = lab.meter(n)
    case = (
        Case().setup(RESP_AT, "observe", genuine).target(AD1_AT, lab.f.ad1(ch, mpan, AD1_START, AD1_AT, 962))
    )
    assert decisions(run_case(lab, clf, case, tmp_path)) == [("suppress", "activation-window")]
    # and the twin is no DSP: signed with its key (a valid signature), it is refused on its role
    forged = response(lab, n, signer=Signer(twin_key, twin))
    f = clf.classify("observe", forged, RESP_AT)
    assert f.xml is not None and not f.xml.valid and f.xml.reason == "role_not_allowed", f.xml


def test_a_certificate_naming_no_eui_does_not_shadow_the_devices_own_certificate(
    lab: Lab, tmp_path: Path
) -> None:
    """The meter's genuine device certificate comes in a bundle (``*.certs.pem``), and ``<eui>-ds.pem``
    holds a certificate that names no EUI. The key store let the file named after the EUI win, so the
    certificate that names nobody took the device's place: a certificate no signature can be checked with
    now, so every genuine signature of the meter was lost as evidence. A certificate that names the EUI
    itself is preferred to one that only a file name files there."""
    n = 64
    esme = lab.meter(n)[0]
    genuine = lab.world.pki.issued[f"{esme:016x}-ds"]
    no_eui = issue(derive_key("review13:no-eui-shadow"), x509.Name([]), org=False, serial=1306)
    key_dir = tmp_path / "keys"
    shutil.copytree(lab.refs["gbcs_keys"], key_dir)
    (key_dir / f"{esme:016x}-ds.pem").write_bytes(pem(no_eui))  # the device's own file, replaced
    (key_dir / "meters.certs.pem").write_bytes(genuine.cert_pem)
    keystore = load_keystore(key_dir)
    assert keystore.ds_certificate(esme) == genuine.certificate
    store = CertificateStore.from_path(lab.refs["certs"])
    clf = Classifier(
        certificates=store,
        signing_policy=SigningPolicy(),
        gbcs_verifier=Verifier(keystore, acb_eui=keystore.acb_eui, revocation=store),
    )
    _esme, ch, mpan = lab.meter(n)
    case = (
        Case()
        .setup(RESP_AT, "observe", response(lab, n))
        .target(AD1_AT, lab.f.ad1(ch, mpan, AD1_START, AD1_AT, 964))
    )
    assert decisions(run_case(lab, clf, case, tmp_path)) == [("suppress", "activation-window")]


def test_a_cv4_request_naming_a_dcc_user_that_is_not_a_supplier_is_not_evidence_and_holds_no_ad1(
    lab: Lab, classifier: Classifier, tmp_path: Path
) -> None:
    """An 11.3 CV4 request carries no supplier signature of its own, and the request policy accepts any DCC
    User's XML-signing certificate when the signer is the RequestID's originator: the DNO (or any User)
    signing a request that names itself was verified evidence, and held the meter's AD1 for the hold limit
    (``pending-immediate`` then ``hold-timeout``). It is evidence only when the key store shows its originator
    holding the Supplier role; the genuine supplier's CV4 request still is."""
    from gateway.testkit.messages import MessageFactory

    n = 75
    esme = lab.meter(n)[0]
    as_dno = MessageFactory(
        dsp=lab.world.dsp, supplier=lab.world.dno_xml, device_key=lab.device_key, supplier_eui=DNO_EUI
    )
    foreign = as_dno.activate_request(esme, 7500)
    c = classifier.classify("observe", foreign, RESP_AT)
    assert [p.split(":", 1)[0] for p in c.problems] == ["request-role-unverifiable"], c.problems
    _esme, ch, mpan = lab.meter(n)
    ad1 = lab.f.ad1(ch, mpan, AD1_START, AD1_AT, 975)
    outcome = run_case(
        lab, classifier, Case().attack(RESP_AT, "observe", foreign).target(AD1_AT, ad1), tmp_path
    )
    assert [(x["decision"], x["reason"], x["held"]) for x in outcome.targets] == [
        ("forward", "evidence-unverified", False)
    ]
    genuine = lab.f.activate_request(esme, 7501)
    assert classifier.classify("observe", genuine, RESP_AT).problems == ()
