"""Any change to a signed document - element, attribute, text, namespace declaration or the signature
itself - makes verification fail (invalid result, or a named error for a document that no longer parses).

Not covered by an XMLDSig signature, by design, and so excluded from the mutations: ``KeyInfo`` (it only
selects the key; mutations there are limited to the issuer/serial values, which must then select no usable
key), attributes of ``ds:Signature``/``ds:SignatureValue`` and white space between the Signature's
children, and namespace declarations inside ``ds:Signature`` (exclusive C14N of SignedInfo renders only
the prefixes it uses). Non-white-space text directly inside ``ds:Signature`` is refused by the verifier."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from xmldsig_docs import activate_firmware_response

from gateway.duis.safexml import parse_xml
from gateway.duis.xmldsig import DSIG_NS, sign, verify
from gateway.errors import DuisgwError
from gateway.smki import CertificateStore, SigningPolicy, SmkiCertificate

KEY_INFO = f"{{{DSIG_NS}}}KeyInfo"
SIGNATURE = f"{{{DSIG_NS}}}Signature"
UNSIGNED_ATTRS = {SIGNATURE, f"{{{DSIG_NS}}}SignatureValue"}


@pytest.fixture(scope="module")
def signed(dsp: SmkiCertificate, cs06_immediate_response_hex: str) -> bytes:
    assert dsp.private_key is not None
    return sign(activate_firmware_response(cs06_immediate_response_hex), dsp.private_key, dsp)


def _targets(root: etree._Element) -> list[etree._Element]:
    key_info = root.find(f"{{{DSIG_NS}}}Signature/{KEY_INFO}")
    inside = set() if key_info is None else set(key_info.iter())
    return [el for el in root.iter() if isinstance(el.tag, str) and el not in inside]


def _issuer_serial(root: etree._Element) -> list[etree._Element]:
    return [el for el in root.iter(f"{{{DSIG_NS}}}X509IssuerName", f"{{{DSIG_NS}}}X509SerialNumber")]


def mutate(signed: bytes, kind: str, pos: int) -> bytes:
    root = parse_xml(signed)
    targets = _targets(root)
    el = targets[pos % len(targets)]
    if kind in ("attr_change", "attr_add") and el.tag in UNSIGNED_ATTRS:
        el = root
    if kind == "rename":
        el.tag = el.tag + "X"
    elif kind == "text":
        el.text = (el.text or "") + "7"
    elif kind == "attr_change":
        if not el.attrib:
            el.set("extra", "1")
        else:
            name = sorted(el.attrib)[pos % len(el.attrib)]
            el.set(name, el.get(name, "") + "x")
    elif kind == "attr_add":
        el.set("added", "")
    elif kind == "tail":
        parent = el.getparent()
        if parent is not None and parent.tag == SIGNATURE:
            el.tail = (el.tail or "") + "7"
        elif el is not root:
            el.tail = (el.tail or "") + " "
        else:
            el.text = (el.text or "") + " "
    elif kind == "key_select":
        ks = _issuer_serial(root)
        k = ks[pos % len(ks)]
        k.text = (k.text or "") + "1"
    elif kind == "delete":
        if el is root:
            el = targets[1]
        el.getparent().remove(el)  # type: ignore[union-attr]
    out = etree.tostring(root)
    if kind.startswith("ns_"):
        starts = [m.end(1) for m in re.finditer(rb"<([A-Za-z_][\w.:-]*)", signed)]
        decls = list(re.finditer(rb' xmlns(?::[\w.-]+)?="([^"]*)"', signed))
        if kind == "ns_add":
            at = starts[pos % len(starts)]
            if at > signed.index(b"<ds:Signature"):
                at = starts[0]
            out = signed[:at] + b' xmlns:zz="urn:tamper"' + signed[at:]
        elif kind == "ns_change":
            m = decls[pos % len(decls)]
            out = signed[: m.end(1)] + b"x" + signed[m.end(1) :]
        else:  # ns_drop
            m = decls[pos % len(decls)]
            out = signed[: m.start()] + signed[m.end() :]
    return out


KINDS = [
    "rename",
    "text",
    "attr_change",
    "attr_add",
    "tail",
    "key_select",
    "delete",
    "ns_add",
    "ns_change",
    "ns_drop",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), pos=st.integers(min_value=0, max_value=10_000))
def test_any_mutation_of_a_signed_document_fails_verification(
    signed: bytes, store: CertificateStore, policy: SigningPolicy, kind: str, pos: int
) -> None:
    tampered = mutate(signed, kind, pos)
    assert tampered != signed
    try:
        r = verify(tampered, store, policy)
    except DuisgwError:
        return  # no longer a usable DUIS document (unbound prefix, wrong root namespace ...): rejected by name
    assert not r.valid, (kind, pos, r)


def test_the_unmutated_document_verifies(
    signed: bytes, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert verify(signed, store, policy).valid
