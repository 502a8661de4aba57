"""Only the DCC profile is accepted; every deviation is rejected with its own named reason, even when
the deviating signature is cryptographically correct."""

from __future__ import annotations

import base64
import copy
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from lxml import etree
from xmldsig_docs import SR, ad1_alert

from gateway.duis import xmldsig
from gateway.duis.safexml import parse_xml
from gateway.duis.xmldsig import DSIG_NS, Reason, sign, verify
from gateway.smki import CertificateStore, SigningPolicy, SmkiCertificate

NS = {"ds": DSIG_NS, "sr": SR}
Mutation = Callable[[etree._Element], None]
Xmlsec = Callable[[bytes, Path, Path], subprocess.CompletedProcess[str]]
DSP_CERT = "Z1-accessControlBroker-dSPXmlSign.pem"


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


# ------------------------------------------------------------------------------------------------
# lexical values read by the element walk as strictly as by the fast paths (and xmlsec1)
# ------------------------------------------------------------------------------------------------


def _both_paths(
    data: bytes, store: CertificateStore, policy: SigningPolicy, monkeypatch: pytest.MonkeyPatch
) -> Reason:
    """verify()'s reason, asserted to be the same with the fast paths off (the element walk)."""
    fast = verify(data, store, policy)
    with monkeypatch.context() as m:
        m.setattr(xmldsig, "_fast_profile", lambda *a: None)
        walk = verify(data, store, policy)
    assert (fast.valid, fast.reason) == (walk.valid, walk.reason)
    return walk.reason


@pytest.mark.parametrize(
    "written",
    [
        lambda n: "+" + n,
        lambda n: "-" + n,
        lambda n: n[:3] + "_" + n[3:],
        lambda n: "".join(chr(0x660 + int(c)) for c in n),  # Arabic-Indic digits
        lambda n: "".join(chr(0xFF10 + int(c)) for c in n),  # full-width digits
        lambda n: "\u00a0" + n,
        lambda n: n + ".0",
    ],
)
def test_serial_number_is_ascii_digits_only_on_every_path(
    written: Callable[[str], str], signed: bytes, dsp: SmkiCertificate, store: CertificateStore,
    policy: SigningPolicy, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    serial = str(dsp.serial)
    edited = signed.replace(f">{serial}<".encode(), f">{written(serial)}<".encode())
    assert edited != signed
    assert _both_paths(edited, store, policy, monkeypatch) is Reason.BAD_KEY_INFO


@pytest.mark.parametrize("around", [("000", ""), (" \r\n\t", "\n "), ("&#13;", "&#9;")])
def test_serial_number_may_have_leading_zeros_and_xml_white_space(
    around: tuple[str, str], signed: bytes, dsp: SmkiCertificate, store: CertificateStore,
    policy: SigningPolicy, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    serial = str(dsp.serial)
    edited = signed.replace(f">{serial}<".encode(), f">{around[0]}{serial}{around[1]}<".encode())
    assert _both_paths(edited, store, policy, monkeypatch) is Reason.OK


@pytest.mark.parametrize("char", ["\u00a0", "\u2028", "\u3000", "\u0085", "\u2003"])
def test_signature_value_with_unicode_white_space_is_not_base64(
    char: str, signed: bytes, store: CertificateStore, policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch, certs_dir: Path, xmlsec1: Xmlsec, tmp_path: Path,
) -> None:  # fmt: skip
    def inserted(text: bytes) -> bytes:  # ``text`` put into the SignatureValue, after 40 characters
        at = signed.index(b"<ds:SignatureValue>") + len(b"<ds:SignatureValue>") + 40
        return signed[:at] + text + signed[at:]

    edited = inserted(char.encode())
    assert _both_paths(edited, store, policy, monkeypatch) is Reason.BAD_SIGNATURE_VALUE
    assert xmlsec1(edited, certs_dir / DSP_CERT, tmp_path).returncode != 0
    wrapped = inserted(b"&#13;\n \t")
    assert _both_paths(wrapped, store, policy, monkeypatch) is Reason.OK  # XML white space: the control


def test_digest_value_with_unicode_white_space_is_not_base64(
    signed: bytes, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def spaced(char: str) -> Mutation:
        def m(root: etree._Element) -> None:
            dv = root.find("ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestValue", NS)
            assert dv is not None and dv.text is not None
            dv.text = dv.text[:20] + char + dv.text[20:]

        return m

    nbsp = resign(signed, dsp, spaced("\u00a0"))
    assert _both_paths(nbsp, store, policy, monkeypatch) is Reason.BAD_DIGEST_VALUE
    assert _both_paths(resign(signed, dsp, spaced("\n")), store, policy, monkeypatch) is Reason.OK


@pytest.mark.parametrize("char", ["\u00a0", "\u2028", "\u3000"])
def test_text_directly_in_the_signature_is_ignored_only_when_xml_white_space(
    char: str, signed: bytes, store: CertificateStore, policy: SigningPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    edited = signed.replace(b"</ds:SignedInfo>", b"</ds:SignedInfo>" + char.encode())
    assert _both_paths(edited, store, policy, monkeypatch) is Reason.TEXT_IN_SIGNATURE
    spaced = signed.replace(b"</ds:SignedInfo>", b"</ds:SignedInfo>\r\n\t ")
    assert _both_paths(spaced, store, policy, monkeypatch) is Reason.OK
