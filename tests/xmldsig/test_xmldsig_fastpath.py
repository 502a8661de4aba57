"""The fast verification path produces exactly the bytes of the slow, obviously-correct one.

``verify`` canonicalises the whole document once and cuts the enveloped Signature's run out of the
canonical bytes (instead of copying the tree and removing the Signature), and reads the profile and
the exclusive C14N of SignedInfo from that run (instead of walking the elements and canonicalising
SignedInfo again). These tests pin down that this is the enveloped-signature transform + inclusive
C14N 1.0 and the exclusive C14N of SignedInfo, byte for byte, against an independent reference
(fresh parse, remove the Signature keeping its tail text, C14N with lxml): on every DCC Boxed sample
and template, on hand-made edge cases (dsig declared on the root, default-namespace Signature, nested
Signatures, comments, CDATA, CR, character references in attributes, PIs, tails) and on generated
documents - and that ``verify`` gives the same result with the fast path disabled.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from xmldsig_docs import SR, activate_firmware_response, ad1_alert

from gateway.duis import xmldsig
from gateway.duis.errors import NotDuis
from gateway.duis.safexml import parse_xml
from gateway.duis.xmldsig import DSIG_NS, SignatureError, VerifyResult, sign, verify
from gateway.errors import DuisgwError
from gateway.smki import CertificateStore, SigningPolicy, SmkiCertificate

Xmlsec = Callable[[bytes, Path, Path], subprocess.CompletedProcess[str]]
SIG = f"{{{DSIG_NS}}}Signature"
SI = f"{{{DSIG_NS}}}SignedInfo"
DSP_CERT = "Z1-accessControlBroker-dSPXmlSign.pem"


# ------------------------------------------------------------------------------------------------
# the reference: the obvious way, independent of the module under test
# ------------------------------------------------------------------------------------------------


def reference_digest_input(data: bytes) -> bytes:
    """Enveloped-signature transform + inclusive C14N 1.0 without comments, done the obvious way."""
    root = parse_xml(data)
    sig = root[len(root) - 1]
    assert sig.tag == SIG
    if sig.tail:
        prev = sig.getprevious()
        if prev is None:
            root.text = (root.text or "") + sig.tail
        else:
            prev.tail = (prev.tail or "") + sig.tail
    root.remove(sig)
    return etree.tostring(root.getroottree(), method="c14n", exclusive=False, with_comments=False)


def reference_signed_info(data: bytes) -> bytes:
    """Exclusive C14N 1.0 without comments of SignedInfo, in its original document context."""
    root = parse_xml(data)
    sig = root[len(root) - 1]
    si = next(sig.iterchildren(SI))
    return etree.tostring(si, method="c14n", exclusive=True, with_comments=False)


def _root_and_sig(data: bytes) -> tuple[etree._Element, etree._Element]:
    root = parse_xml(data)
    return root, root[len(root) - 1]


def check_fast_bytes(data: bytes) -> bool:
    """The fast path's digest input and SignedInfo bytes equal the reference; True if it was taken."""
    root = parse_xml(data)
    before = etree.tostring(root)
    sig = root[len(root) - 1]
    assert xmldsig._enveloped_c14n(root) == reference_digest_input(data)
    try:
        ex = xmldsig._examine(root, sig)
    except xmldsig._Bad:
        fast = False  # not the profile: the walk names it (what verify does too)
    else:
        assert ex.profile.signed_info_c14n == reference_signed_info(data)
        assert ex.span is None or xmldsig._digest_input(root, ex) == reference_digest_input(data)
        fast = ex.fast
        if fast:  # the run's profile is what the element walk reads
            assert ex.profile == xmldsig._parse_profile(sig)
            # ... and the literal reader of compact runs, where it answers, reads what the expression reads
            assert ex.span is not None
            forms = xmldsig._forms(sig.prefix)
            compact = xmldsig._compact_profile(ex.canonical, *ex.span, forms)
            assert compact is None or compact == xmldsig._pattern_profile(ex.canonical, *ex.span, forms)
    assert etree.tostring(root) == before  # the caller's tree is never touched
    return fast


def _result(
    data: bytes | etree._Element, store: CertificateStore, policy: SigningPolicy, **kw: object
) -> object:
    try:
        return verify(data, store, policy, **kw)  # type: ignore[arg-type]
    except DuisgwError as exc:
        return (type(exc), exc.code)


def same_result_without_fast_path(
    data: bytes, store: CertificateStore, policy: SigningPolicy, monkeypatch: pytest.MonkeyPatch, **kw: object
) -> object:
    """verify() with and without the fast path (the slow path forced by declaring the run unfindable)."""
    fast = _result(data, store, policy, **kw)
    with monkeypatch.context() as m:
        m.setattr(xmldsig, "_signature_end", lambda canonical, forms: -1)
        slow = _result(data, store, policy, **kw)
    assert fast == slow
    return fast


# ------------------------------------------------------------------------------------------------
# real material
# ------------------------------------------------------------------------------------------------


def _shared_files(shared: Path, folder: str) -> Iterator[Path]:
    return iter(sorted(p for p in (shared / "duis" / folder).iterdir() if p.is_file()))


def test_dccboxed_samples_as_received_take_the_fast_path_with_identical_bytes_and_results(
    shared: Path, store: CertificateStore, policy: SigningPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = 0
    for path in _shared_files(shared, "samples"):
        data = path.read_bytes()
        root = parse_xml(data)
        if root[len(root) - 1].tag != SIG:
            continue
        fast += check_fast_bytes(data)
        same_result_without_fast_path(data, store, policy, monkeypatch)
        same_result_without_fast_path(data, store, policy, monkeypatch, tolerate_whitespace=True)
    assert fast >= 5  # readfw-response*, read-inventory-response-5.4, dccboxed-message


@pytest.mark.parametrize("folder", ["samples", "templates"])
def test_every_sample_and_template_resigned_gives_fast_bytes_equal_to_the_reference(
    shared: Path,
    folder: str,
    dsp: SmkiCertificate,
    store: CertificateStore,
    policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert dsp.private_key is not None
    count = 0
    for path in _shared_files(shared, folder):
        signed = sign(path.read_bytes(), dsp.private_key, dsp)
        assert check_fast_bytes(signed), path.name  # sign() output is the profile: always the fast path
        r = same_result_without_fast_path(signed, store, policy, monkeypatch)
        assert isinstance(r, VerifyResult) and r.reason not in ("digest_mismatch", "signature_mismatch")
        count += 1
    assert count >= (10 if folder == "samples" else 290)


# ------------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------------


def _doc(root_open: str, body: str, root_close: str, *, before: str = "", after: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>{before}{root_open}<sr:Header>'
        "<sr:ResponseID>90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:1</sr:ResponseID>"
        "<sr:ResponseCode>I0</sr:ResponseCode><sr:ResponseDateTime>2026-01-15T09:04:12.000Z</sr:ResponseDateTime>"
        f"</sr:Header><sr:Body>{body}</sr:Body>{root_close}{after}"
    ).encode()


NS3 = f' xmlns:ns3="{DSIG_NS}"'
ROOT = f'<sr:Response xmlns:sr="{SR}"{NS3} schemaVersion="5.4">'
END = "</sr:Response>"

EDGE_BODIES = {
    "plain": "<sr:X>1</sr:X>",
    "comments": "<!-- a <ds:Signature> in a comment --><sr:X>1<!--x-->2</sr:X><!---->",
    "cdata": "<sr:X><![CDATA[<ds:Signature xmlns:ds='x'> & ]]> ]]&gt;</sr:X>",
    "cr_text": "<sr:X>a&#13;b\r\nc&#13;&#10;d</sr:X>",
    "attr_refs": '<sr:X a="&#13;&quot;&lt;ds:Signature&gt;&amp;&#9;&#10;" b=\'"q"\' c="\t\n\r">v</sr:X>',
    "nested_dsig": f'<sr:X><ds:Signature xmlns:ds="{DSIG_NS}"><ds:SignedInfo/></ds:Signature></sr:X>'
    f"<ns3:Signature>nested with the root's prefix</ns3:Signature>"
    f'<Signature xmlns="{DSIG_NS}">default</Signature><sr:Signature>sr-named</sr:Signature>',
    "unicode": "<sr:X>ümlaut – € 𝄞 &#x10FFFF;</sr:X>",
    "entities_gt": "<sr:X>a &gt; b &lt; c &amp; d ]]&gt;</sr:X>",
    "pi_inside": "<sr:X>1<?duis <ds:Signature> </ds:Signature>?>2</sr:X>",
    "xml_attrs": '<sr:X xml:lang="en" xml:space="preserve"> </sr:X>',
    "other_ns": '<x:Y xmlns:x="urn:x" x:a="1"><x:Z xmlns:x="urn:y"/></x:Y>',
}


@pytest.mark.parametrize("body", sorted(EDGE_BODIES))
@pytest.mark.parametrize("prefix", ["ds", None, "ns3", "sr"])
def test_edge_case_documents_give_identical_bytes_and_results(
    body: str,
    prefix: str | None,
    dsp: SmkiCertificate,
    store: CertificateStore,
    policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert dsp.private_key is not None
    # (prefix "sr": a Signature whose prefix shadows the root's sr binding)
    signed = sign(_doc(ROOT, EDGE_BODIES[body], END), dsp.private_key, dsp, prefix=prefix)
    fast = check_fast_bytes(signed)
    assert fast is (body != "pi_inside")  # a PI anywhere sends the message to the slow path
    r = same_result_without_fast_path(signed, store, policy, monkeypatch)
    assert isinstance(r, VerifyResult) and r.valid, r


@pytest.mark.parametrize(
    ("before", "after"),
    [("<?pi before?>", ""), ("", "<?pi after </ds:Signature>?>"), ("<!--c-->", "<!--d-->\n")],
)
def test_prolog_and_epilogue_nodes_are_handled(
    before: str, after: str, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert dsp.private_key is not None
    unsigned = _doc(ROOT, "<sr:X>1</sr:X>", END, before=before, after=after)
    signed = sign(unsigned, dsp.private_key, dsp)
    check_fast_bytes(signed)
    r = same_result_without_fast_path(signed, store, policy, monkeypatch)
    assert isinstance(r, VerifyResult) and r.valid


TAIL = b"\n&#13;\t"  # white space incl. a CR after </sr:Body> in the signed documents below


def _with_tail(unsigned: bytes) -> bytes:
    return unsigned.replace(b"</sr:Body>", b"</sr:Body>" + TAIL)


def _last(signed: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the last occurrence (the enveloped Signature's, not a nested look-alike's)."""
    head, sep, tail = signed.rpartition(old)
    assert sep
    return head + new + tail


def _signature_edit(signed: bytes, old: bytes, new: bytes) -> bytes:
    assert old in signed
    return signed.replace(old, new, 1)


SIGNATURE_EDITS: dict[str, Callable[[bytes], bytes]] = {
    # not signed (between the Signature's children, attributes of Signature): verify must still pass
    "ws_between_children": lambda d: d.replace(b"</ds:SignedInfo>", b"</ds:SignedInfo>\n  \r\n\t").replace(
        b"<ds:KeyInfo>", b"\n<ds:KeyInfo>"
    ),
    "comments_in_signature": lambda d: (
        d.replace(b"<ds:SignedInfo>", b"<!--<ds:Signature>--><ds:SignedInfo>")
        .replace(b"</ds:SignatureValue>", b"</ds:SignatureValue><!-- c -->")
        .replace(b"<ds:DigestMethod", b"<!--in signed info--><ds:DigestMethod")
    ),
    # the transform removes the element, not the text after it: text moved across the Signature keeps the digest
    "tail_after_signature": lambda d: _last(
        _signature_edit(d, TAIL + b"<ds:Signature", b"<ds:Signature"),
        b"</ds:Signature>",
        b"</ds:Signature>" + TAIL,
    ),
    "signature_attributes": lambda d: d.replace(
        b"<ds:Signature ", b'<ds:Signature Id="s&quot;1&gt;" xmlns:zz="urn:zz" '
    ),
    "cr_in_signature_value": lambda d: _signature_edit(
        d, b"<ds:SignatureValue>", b"<ds:SignatureValue>&#13;\n"
    ),
    "redundant_redeclaration": lambda d: d.replace(
        b"<ds:KeyInfo>", b'<ds:KeyInfo xmlns:ds="' + DSIG_NS.encode() + b'">'
    ),
    # the walk decides these (the run is not the compact profile): still the same bytes and results
    "look_alike_in_key_info": lambda d: d.replace(
        b"<ds:X509Data>",
        b"<ds:KeyName><ds:Signature><ds:Signature/></ds:Signature></ds:KeyName><ds:X509Data>",
    ),
    "pi_in_signature": lambda d: d.replace(b"<ds:KeyInfo>", b"<?x <ds:Signature>?><ds:KeyInfo>"),
    "escaped_issuer": lambda d: d.replace(b"CN=Z1,OU=07", b"CN=Z1,&#13;OU=07"),
    "cr_between_signed_info_children": lambda d: d.replace(
        b"<ds:SignatureMethod", b"&#13;<ds:SignatureMethod"
    ),
    "other_prefix_inside": lambda d: d.replace(
        b"<ds:SignatureValue>", b'<dsx:SignatureValue xmlns:dsx="' + DSIG_NS.encode() + b'">'
    ).replace(b"</ds:SignatureValue>", b"</dsx:SignatureValue>"),
    "text_in_signature": lambda d: d.replace(b"</ds:SignedInfo>", b"</ds:SignedInfo>x"),
    "bad_signature_value": lambda d: d.replace(b"<ds:SignatureValue>", b"<ds:SignatureValue>AAAA"),
    "serial_spaces": lambda d: d.replace(b"<ds:X509SerialNumber>", b"<ds:X509SerialNumber>\n "),
}


@pytest.mark.parametrize("edit", sorted(SIGNATURE_EDITS))
def test_signature_variants_give_identical_bytes_and_results(
    edit: str, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch, cs06_immediate_response_hex: str,
) -> None:  # fmt: skip
    assert dsp.private_key is not None
    signed = sign(_with_tail(activate_firmware_response(cs06_immediate_response_hex)), dsp.private_key, dsp)
    edited = SIGNATURE_EDITS[edit](signed)
    assert edited != signed
    check_fast_bytes(edited)
    r = same_result_without_fast_path(edited, store, policy, monkeypatch)
    assert isinstance(r, VerifyResult)
    if edit in ("text_in_signature", "bad_signature_value", "cr_between_signed_info_children"):
        assert not r.valid
    else:
        assert r.valid, (edit, r)


def test_the_common_dccboxed_shapes_take_the_fast_path(
    dsp: SmkiCertificate, cs06_immediate_response_hex: str
) -> None:
    assert dsp.private_key is not None
    signed = sign(_with_tail(activate_firmware_response(cs06_immediate_response_hex)), dsp.private_key, dsp)
    for edit in (
        "ws_between_children",
        "comments_in_signature",
        "tail_after_signature",
        "cr_in_signature_value",
    ):
        assert check_fast_bytes(SIGNATURE_EDITS[edit](signed)), edit
    for edit in ("look_alike_in_key_info", "pi_in_signature", "escaped_issuer", "other_prefix_inside"):
        assert not check_fast_bytes(SIGNATURE_EDITS[edit](signed)), edit


def test_root_named_like_the_signature_does_not_confuse_the_cut(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an "other" DUIS root whose qname is ds:Signature (ds bound to the DUIS namespace)
    assert dsp.private_key is not None
    unsigned = f'<ds:Signature xmlns:ds="{SR}"><ds:Header/><ds:Signature/></ds:Signature>'.encode()
    signed = sign(unsigned, dsp.private_key, dsp)
    assert check_fast_bytes(signed)
    now = datetime(2026, 1, 15, tzinfo=UTC)
    r = same_result_without_fast_path(signed, store, policy, monkeypatch, now=now)
    assert isinstance(r, VerifyResult) and r.kind == "other" and r.reason == "no_signing_rule_for_kind"
    assert xmldsig._digest_input(parse_xml(signed), xmldsig._examine(*_root_and_sig(signed))) == (
        reference_digest_input(signed)
    )


def test_tampering_found_by_the_fast_path_is_the_same_as_the_slow_path(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert dsp.private_key is not None
    signed = sign(ad1_alert(), dsp.private_key, dsp)
    forged = signed.replace(b"1234567890123", b"9999999999999")
    r = same_result_without_fast_path(forged, store, policy, monkeypatch)
    assert isinstance(r, VerifyResult) and r.reason == "digest_mismatch"
    # the digest of the forged body, signed again only in SignedInfo's DigestValue: signature breaks
    root = parse_xml(signed)
    dv = xmldsig._examine(root, root[-1]).profile.digest
    import base64
    import hashlib

    new_dv = base64.b64encode(hashlib.sha256(reference_digest_input(forged)).digest())
    forged2 = forged.replace(base64.b64encode(dv), new_dv)
    r2 = same_result_without_fast_path(forged2, store, policy, monkeypatch)
    assert isinstance(r2, VerifyResult) and r2.reason == "signature_mismatch"


def test_verify_a_tree_twice_leaves_it_unchanged_when_the_root_declares_dsig(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy, cs06_immediate_response_hex: str
) -> None:
    assert dsp.private_key is not None
    root = parse_xml(sign(activate_firmware_response(cs06_immediate_response_hex), dsp.private_key, dsp))
    before = etree.tostring(root)
    assert verify(root, store, policy).valid and verify(root, store, policy).valid
    assert etree.tostring(root) == before and root[-1].prefix == "ds"


def test_an_element_detached_from_its_document_is_not_a_document_root(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    outer = parse_xml(f'<sr:Response xmlns:sr="{SR}"><sr:Body/></sr:Response>'.encode())
    inner = parse_xml(sign(ad1_alert(), dsp.private_key, dsp))
    outer[0].append(inner)
    outer[0].remove(inner)  # still owned by outer's document: its C14N would be outer's
    with pytest.raises(NotDuis):
        verify(inner, store, policy)
    assert verify(copy.deepcopy(inner), store, policy).valid


def test_a_document_libxml2_cannot_canonicalise_is_a_named_error(
    dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy
) -> None:
    assert dsp.private_key is not None
    signed = sign(ad1_alert(), dsp.private_key, dsp)
    relative = signed.replace(b"<sr:Body>", b'<sr:Body xmlns:rel="relative/uri">')
    with pytest.raises(SignatureError):
        verify(relative, store, policy)


# ------------------------------------------------------------------------------------------------
# xmlsec1 agrees on the edge cases the fast path accepts
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["comments", "cdata", "cr_text", "attr_refs", "unicode"])
@pytest.mark.parametrize("prefix", ["ds", None, "ns3"])
def test_xmlsec1_accepts_the_edge_cases_we_accept(
    body: str, prefix: str | None, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy,
    certs_dir: Path, xmlsec1: Xmlsec, tmp_path: Path,
) -> None:  # fmt: skip
    assert dsp.private_key is not None
    signed = sign(_doc(ROOT, EDGE_BODIES[body], END), dsp.private_key, dsp, prefix=prefix)
    edited = SIGNATURE_EDITS["comments_in_signature"](signed) if prefix == "ds" else signed
    assert check_fast_bytes(edited)
    assert verify(edited, store, policy).valid
    ok = xmlsec1(edited, certs_dir / DSP_CERT, tmp_path)
    assert ok.returncode == 0, ok.stderr
    tampered = edited.replace(b"</sr:Header>", b"<sr:X/></sr:Header>")
    assert not verify(tampered, store, policy).valid
    assert xmlsec1(tampered, certs_dir / DSP_CERT, tmp_path).returncode != 0


# ------------------------------------------------------------------------------------------------
# generated documents
# ------------------------------------------------------------------------------------------------

CR_REF = "¤"  # stands for a "&#13;" character reference (a CR that survives parsing) in generated text
_TEXT = st.text(alphabet=st.sampled_from(list("ab <>&\"'\r\n\t]]>€ü;=/\U0001d11e" + CR_REF)), max_size=12)
_NAMES = st.sampled_from(["sr:A", "sr:Signature", "ds:Signature", "ns3:Signature", "x:Signature", "sr:B"])


def _escape_text(s: str) -> str:
    return "&#13;".join(
        p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for p in s.split(CR_REF)
    )


def _escape_attr(s: str) -> str:
    return "&#13;".join(
        p.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;").replace("\t", "&#9;")
        for p in s.split(CR_REF)
    )


@st.composite
def _content(draw: st.DrawFn, depth: int = 0) -> str:
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(
            st.sampled_from(["el", "text", "comment", "cdata", "crref", "pi"] if depth < 2 else ["text"])
        )
        if kind == "el":
            name = draw(_NAMES)
            decl = f' xmlns:x="urn:x{draw(st.integers(0, 2))}"' if name.startswith("x:") else ""
            if name in ("ds:Signature", "ns3:Signature"):
                decl = f' xmlns:{name[:-10]}="{DSIG_NS}"'
            attrs = "".join(f' a{i}="{_escape_attr(draw(_TEXT))}"' for i in range(draw(st.integers(0, 2))))
            parts.append(f"<{name}{decl}{attrs}>{draw(_content(depth + 1))}</{name}>")
        elif kind == "text":
            parts.append(_escape_text(draw(_TEXT)))
        elif kind == "comment":
            parts.append("<!--" + draw(st.sampled_from(["", "<ds:Signature>", " x "])) + "-->")
        elif kind == "cdata":
            parts.append("<![CDATA[" + draw(st.sampled_from(["", "<ds:Signature>", "&amp;\r\n"])) + "]]>")
        elif kind == "crref":
            parts.append("&#13;&#10;")
        elif draw(st.booleans()):  # rare: a PI (slow path)
            parts.append("<?p " + draw(st.sampled_from(["", "<ds:Signature>", "</ds:Signature>"])) + "?>")
    return "".join(parts)


@st.composite
def _documents(draw: st.DrawFn) -> tuple[bytes, str | None, str]:
    root_decl = draw(
        st.sampled_from(["", NS3, f' xmlns:ds="{DSIG_NS}"', ' xmlns:ds="urn:other"', f' xmlns="{DSIG_NS}"'])
    )
    prefix = draw(st.sampled_from(["ds", None, "ns3", "dsig"]))
    if prefix == "ns3" and root_decl != NS3:
        prefix = "ds"
    if prefix == "ds" and "urn:other" in root_decl:
        prefix = "dsig"
    root_open = f'<sr:Response xmlns:sr="{SR}"{root_decl} schemaVersion="5.4">'
    body = draw(_content())
    unsigned = _with_tail(_doc(root_open, body, END))
    edit = draw(
        st.sampled_from(["none", "ws_between_children", "comments_in_signature", "tail_after_signature"])
    )
    return unsigned, prefix, edit


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_documents())
def test_generated_documents_give_fast_bytes_equal_to_the_reference_and_the_same_result(
    doc: tuple[bytes, str | None, str],
    dsp: SmkiCertificate,
    store: CertificateStore,
    policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unsigned, prefix, edit = doc
    assert dsp.private_key is not None
    signed = sign(unsigned, dsp.private_key, dsp, prefix=prefix)
    if edit != "none" and prefix == "ds":
        signed = SIGNATURE_EDITS[edit](signed)
    check_fast_bytes(signed)
    r = same_result_without_fast_path(signed, store, policy, monkeypatch)
    assert isinstance(r, VerifyResult) and r.valid, r


# ------------------------------------------------------------------------------------------------
# namespace declarations inside the Signature: the fast paths never read an element out of dsig
# ------------------------------------------------------------------------------------------------

_INNER = [
    "SignedInfo", "CanonicalizationMethod", "SignatureMethod", "Reference", "Transforms", "Transform",
    "DigestMethod", "DigestValue", "SignatureValue", "KeyInfo", "X509Data", "X509IssuerSerial",
    "X509IssuerName", "X509SerialNumber",
]  # fmt: skip


def _declare(signed: bytes, prefix: str | None, element: str, decl: str) -> bytes:
    """``decl`` added to the start tag of the enveloped Signature's ``element``."""
    tag = f"<{'' if prefix is None else prefix + ':'}{element}".encode()
    at = signed.rfind(tag + b">") if tag + b">" in signed else signed.rfind(tag + b" ")
    assert at >= 0
    at += len(tag)
    return signed[:at] + decl.encode() + signed[at:]


@pytest.mark.parametrize("element", _INNER)
@pytest.mark.parametrize("prefix", ["ds", None, "ns3"])
def test_a_namespace_declaration_rebinding_the_signature_prefix_leaves_the_fast_path(
    prefix: str | None, element: str, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # <ds:SignatureValue xmlns:ds="urn:x"> (or xmlns="" under a default-namespace Signature) is not an
    # XMLDSig element: the fast paths must not read it (the walk names what is missing)
    assert dsp.private_key is not None
    signed = sign(ad1_alert(), dsp.private_key, dsp, prefix=prefix)
    for target in ("urn:not-xmldsig", ""):
        if prefix is not None and not target:
            continue  # (a prefix cannot be undeclared in XML 1.0)
        decl = f' xmlns="{target}"' if prefix is None else f' xmlns:{prefix}="{target}"'
        edited = _declare(signed, prefix, element, decl)
        assert not check_fast_bytes(edited)
        r = same_result_without_fast_path(edited, store, policy, monkeypatch)
        assert isinstance(r, VerifyResult) and not r.valid, (element, decl)


@pytest.mark.parametrize("prefix", ["ds", "ns3"])
def test_harmless_declarations_on_signature_value_still_verify_on_every_path(
    prefix: str, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch, certs_dir: Path, xmlsec1: Xmlsec, tmp_path: Path,
) -> None:  # fmt: skip
    # another prefix, or the default namespace under a prefixed Signature, leaves SignatureValue in dsig
    assert dsp.private_key is not None
    signed = sign(ad1_alert(), dsp.private_key, dsp, prefix=prefix)
    for decl in (' xmlns:z="urn:z"', ' xmlns="urn:x"', ' Id="v"'):
        edited = _declare(signed, prefix, "SignatureValue", decl)
        check_fast_bytes(edited)
        r = same_result_without_fast_path(edited, store, policy, monkeypatch)
        assert isinstance(r, VerifyResult) and r.valid, (decl, r)
        assert xmlsec1(edited, certs_dir / DSP_CERT, tmp_path).returncode == 0


@pytest.mark.parametrize("prefix", ["ds", None, "ns3"])
def test_signature_value_out_of_dsig_is_refused_by_every_path_and_by_xmlsec1(
    prefix: str | None, dsp: SmkiCertificate, store: CertificateStore, policy: SigningPolicy,
    monkeypatch: pytest.MonkeyPatch, certs_dir: Path, xmlsec1: Xmlsec, tmp_path: Path,
) -> None:  # fmt: skip
    assert dsp.private_key is not None
    signed = sign(ad1_alert(), dsp.private_key, dsp, prefix=prefix)
    decl = ' xmlns=""' if prefix is None else f' xmlns:{prefix}="urn:not-xmldsig"'
    edited = _declare(signed, prefix, "SignatureValue", decl)
    c, start, end, forms = _run_of(edited)
    assert xmldsig._compact_profile(c, start, end, forms) is None
    assert xmldsig._pattern_profile(c, start, end, forms) is None
    r = same_result_without_fast_path(edited, store, policy, monkeypatch)
    assert isinstance(r, VerifyResult) and (r.valid, r.reason) == (False, "signature_missing_element")
    assert xmlsec1(edited, certs_dir / DSP_CERT, tmp_path).returncode != 0


def _run_of(data: bytes) -> tuple[bytes, int, int, xmldsig._Forms]:
    root = parse_xml(data)
    sig = root[len(root) - 1]
    canonical = etree.tostring(root.getroottree(), method="c14n")
    forms = xmldsig._forms(sig.prefix)
    span = xmldsig._signature_span(canonical, sig, forms)
    assert span is not None
    return canonical, span[0], span[1], forms
