"""Only the DCC profile is accepted; every deviation is rejected with its own named reason, even when
the deviating signature is cryptographically correct."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from lxml import etree
from xmldsig_docs import SR, ad1_alert

from gateway.duis.safexml import parse_xml
from gateway.duis.xmldsig import DSIG_NS, Reason, sign, verify
from gateway.smki import CertificateStore, SigningPolicy, SmkiCertificate

NS = {"ds": DSIG_NS, "sr": SR}
Mutation = Callable[[etree._Element], None]


def resign(
    signed: bytes, dsp: SmkiCertificate, mutate: Mutation, *, raw: Callable[[int, int], bytes] | None = None
) -> bytes:
    """Apply ``mutate`` to the signed tree, then recompute a correct ECDSA value over the new SignedInfo."""
    assert dsp.private_key is not None
    root = parse_xml(signed)
    mutate(root)
    sig = root.find("ds:Signature", NS)
    assert sig is not None
    si = sig.find("ds:SignedInfo", NS)
    assert si is not None
    r, s = decode_dss_signature(
        dsp.private_key.sign(etree.tostring(si, method="c14n", exclusive=True), ec.ECDSA(hashes.SHA256()))
    )
    value = raw(r, s) if raw else r.to_bytes(32, "big") + s.to_bytes(32, "big")
    sv = sig.find("ds:SignatureValue", NS)
    assert sv is not None
    sv.text = base64.b64encode(value).decode()
    return etree.tostring(root)


@pytest.fixture
def signed(dsp: SmkiCertificate) -> bytes:
    assert dsp.private_key is not None
    return sign(ad1_alert(), dsp.private_key, dsp)


def _set_alg(path: str, alg: str) -> Mutation:
    def m(root: etree._Element) -> None:
        el = root.find(path, NS)
        assert el is not None
        el.set("Algorithm", alg)

    return m


def _add_transform(root: etree._Element) -> None:
    t = root.find("ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms", NS)
    assert t is not None
    etree.SubElement(t, f"{{{DSIG_NS}}}Transform", Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")


def _second_reference(root: etree._Element) -> None:
    ref = root.find("ds:Signature/ds:SignedInfo/ds:Reference", NS)
    assert ref is not None
    ref.addnext(copy.deepcopy(ref))


def _ref_uri(root: etree._Element) -> None:
    ref = root.find("ds:Signature/ds:SignedInfo/ds:Reference", NS)
    assert ref is not None
    ref.set("URI", "#body")


def _inclusive_ns(root: etree._Element) -> None:
    c = root.find("ds:Signature/ds:SignedInfo/ds:CanonicalizationMethod", NS)
    assert c is not None
    etree.SubElement(c, "{http://www.w3.org/2001/10/xml-exc-c14n#}InclusiveNamespaces", PrefixList="sr")


def _object(root: etree._Element) -> None:
    sig = root.find("ds:Signature", NS)
    assert sig is not None
    etree.SubElement(sig, f"{{{DSIG_NS}}}Object").text = "x"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_set_alg("ds:Signature/ds:SignedInfo/ds:CanonicalizationMethod", "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"), Reason.UNSUPPORTED_C14N),
        (_set_alg("ds:Signature/ds:SignedInfo/ds:CanonicalizationMethod", "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"), Reason.UNSUPPORTED_C14N),
        (_inclusive_ns, Reason.UNSUPPORTED_C14N),
        (_set_alg("ds:Signature/ds:SignedInfo/ds:SignatureMethod", "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"), Reason.UNSUPPORTED_SIGNATURE_METHOD),
        (_set_alg("ds:Signature/ds:SignedInfo/ds:SignatureMethod", "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"), Reason.UNSUPPORTED_SIGNATURE_METHOD),
        (_set_alg("ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestMethod", "http://www.w3.org/2000/09/xmldsig#sha1"), Reason.UNSUPPORTED_DIGEST_METHOD),
        (_set_alg("ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms/ds:Transform", "http://www.w3.org/TR/1999/REC-xpath-19991116"), Reason.UNSUPPORTED_TRANSFORMS),
        (_add_transform, Reason.UNSUPPORTED_TRANSFORMS),
        (_second_reference, Reason.REFERENCE_COUNT),
        (_ref_uri, Reason.REFERENCE_URI),
        (_object, Reason.UNEXPECTED_ELEMENT),
    ],
)  # fmt: skip
def test_correctly_signed_deviations_from_the_profile_are_rejected_by_name(
    signed: bytes,
    dsp: SmkiCertificate,
    store: CertificateStore,
    policy: SigningPolicy,
    mutate: Mutation,
    reason: Reason,
) -> None:
    r = verify(resign(signed, dsp, mutate), store, policy)
    assert (r.valid, r.status, r.reason) == (False, "invalid", reason)


def test_66_octet_signature_value_is_rejected(
    signed: bytes, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    def sign_preserved(r: int, s: int) -> bytes:  # the Java variant with a 0x00 sign octet before r and s
        return b"\x00" + r.to_bytes(32, "big") + b"\x00" + s.to_bytes(32, "big")

    doc = resign(signed, dsp, lambda root: None, raw=sign_preserved)
    assert verify(doc, store, policy).reason is Reason.SIGNATURE_VALUE_LENGTH
    assert verify(resign(signed, dsp, lambda root: None), store, policy).valid  # the control


def test_signature_value_wrapped_with_cr_and_line_breaks_is_accepted(
    signed: bytes, store: CertificateStore, policy: SigningPolicy
) -> None:
    root = parse_xml(signed)
    sv = root.find("ds:Signature/ds:SignatureValue", NS)
    assert sv is not None and sv.text is not None
    sv.text = sv.text[:76] + "\r\n" + sv.text[76:]
    doc = etree.tostring(root)
    assert b"&#13;" in doc
    assert verify(doc, store, policy).valid


def test_signature_that_is_not_the_last_child_is_rejected(
    signed: bytes, store: CertificateStore, policy: SigningPolicy
) -> None:
    root = parse_xml(signed)
    sig = root[len(root) - 1]
    root.insert(0, sig)
    assert verify(etree.tostring(root), store, policy).reason is Reason.SIGNATURE_NOT_LAST


def test_two_root_level_signatures_are_rejected(
    signed: bytes, store: CertificateStore, policy: SigningPolicy
) -> None:
    root = parse_xml(signed)
    root.append(copy.deepcopy(root[len(root) - 1]))
    assert verify(etree.tostring(root), store, policy).reason is Reason.MULTIPLE_SIGNATURES


def test_signed_content_moved_into_an_object_does_not_verify(
    signed: bytes, store: CertificateStore, policy: SigningPolicy
) -> None:
    root = parse_xml(signed)
    forged = parse_xml(ad1_alert(mpxn="9999999999999"))
    sig = root[len(root) - 1]
    obj = etree.SubElement(sig, f"{{{DSIG_NS}}}Object")
    obj.append(copy.deepcopy(root.find("sr:Body", NS)))  # signed body kept "somewhere" in the Signature
    forged.append(sig)
    r = verify(etree.tostring(forged), store, policy)
    assert not r.valid and r.reason is Reason.UNEXPECTED_ELEMENT


def test_original_signature_on_forged_content_does_not_verify(
    signed: bytes, store: CertificateStore, policy: SigningPolicy
) -> None:
    root = parse_xml(signed)
    forged = parse_xml(ad1_alert(mpxn="9999999999999"))
    forged.append(root[len(root) - 1])
    r = verify(etree.tostring(forged), store, policy)
    assert not r.valid and r.reason is Reason.DIGEST_MISMATCH


def test_signed_message_wrapped_inside_a_forged_one_does_not_verify(
    signed: bytes, store: CertificateStore, policy: SigningPolicy
) -> None:
    forged = parse_xml(ad1_alert(mpxn="9999999999999"))
    header = forged.find("sr:Header", NS)
    assert header is not None
    header.append(parse_xml(signed))  # the genuine signed Response nested deeper: its Signature is not ours
    r = verify(etree.tostring(forged), store, policy)
    assert not r.valid and r.status == "unsigned"
    root = parse_xml(signed)
    forged2 = parse_xml(ad1_alert(mpxn="9999999999999"))
    forged2.find("sr:Header", NS).append(copy.deepcopy(root.find("sr:Body", NS)))  # type: ignore[union-attr]
    forged2.append(root[len(root) - 1])
    assert verify(etree.tostring(forged2), store, policy).reason is Reason.DIGEST_MISMATCH


def test_nested_signatures_below_the_root_are_ignored(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    # SMETS1 responses carry their own (S1SP) signature deeper in the tree: only the root's last child counts
    assert dsp.private_key is not None
    root = parse_xml(ad1_alert())
    body = root.find("sr:Body", NS)
    assert body is not None
    etree.SubElement(body, f"{{{DSIG_NS}}}Signature").text = "nested"
    r = verify(sign(root, dsp.private_key, dsp), store, policy)
    assert r.valid


def test_missing_key_info_and_bad_serial_are_named(
    signed: bytes, store: CertificateStore, policy: SigningPolicy
) -> None:
    root = parse_xml(signed)
    ki = root.find("ds:Signature/ds:KeyInfo", NS)
    assert ki is not None
    ser = ki.find("ds:X509Data/ds:X509IssuerSerial/ds:X509SerialNumber", NS)
    assert ser is not None
    ser.text = "12x"
    assert verify(etree.tostring(root), store, policy).reason is Reason.BAD_KEY_INFO
    ki.getparent().remove(ki)  # type: ignore[union-attr]
    assert verify(etree.tostring(root), store, policy).reason is Reason.NO_KEY_INFO
