"""XML signatures on DUIS messages, exactly as the DCC profile uses them.

Theory of operation
-------------------
A signed DUIS Request or Response carries one *enveloped* ``ds:Signature`` as the **last
direct child of the root** (nested SMETS1/S1SP signatures deeper in the tree are not ours and
are ignored). The profile (DUIS.md §6) allows exactly:

* ``SignedInfo/CanonicalizationMethod`` = exclusive C14N 1.0 without comments (no
  ``InclusiveNamespaces`` parameter),
* ``SignatureMethod`` = ``xmldsig-more#ecdsa-sha256`` over P-256, the value being **raw r‖s**
  (64 octets, base64, possibly wrapped with ``&#13;`` and line breaks),
* exactly one ``Reference URI=""`` with exactly the enveloped-signature transform and
  ``DigestMethod`` SHA-256. With no explicit canonicalisation transform, XMLDSig serialises the
  node-set with **inclusive** C14N 1.0 without comments - so unused namespace declarations on
  the root are part of the digest,
* ``KeyInfo/X509Data/X509IssuerSerial`` naming the signer; the certificate comes from the local
  :class:`~gateway.smki.CertificateStore`, never from the message.

Anything else is *invalid* with a named :class:`Reason` - an invalid signature is a result
value (:class:`VerifyResult`), never an exception. Exceptions (named
:class:`~gateway.errors.DuisgwError` subclasses) are reserved for input that is not a usable
DUIS document at all (not XML, DOCTYPE, wrong root, unreadable ResponseDateTime ...). The
ResponseDateTime is read as the DUIS decoder reads it (``values.parse_datetime``: xs:dateTime only,
``24:00:00`` is the next midnight); one with no UTC equivalent in years 1-9999 (such as
``0001-01-01T00:00:00+14:00``) is InvalidField, and a caller's ``at``/``now`` likewise
:class:`~gateway.smki.TimeOutOfRange` - never a bare OverflowError.

Lexical values are read as strictly on every path: only XML white space (space, tab, CR, LF) is ignored
in base64 values, around the serial number and between the Signature's elements (NBSP, U+2028, NEL ...
are content); the serial is ASCII digits (no sign, no ``_``, no other scripts' digits).

Order of checks: profile structure -> certificate lookup -> digest -> signature value ->
revocation -> policy (key usage, role, signer EUI, validity at the message's own time). Integrity comes
before authorisation so that a tampered message is reported as tampered.

Revocation (:mod:`gateway.smki`, "Revocation"): a signer whose certificate - or a CA certificate above it
in the store - is on an accepted CRL/ARL is refused with ``certificate_revoked`` (status ``revoked``)
whatever the revocation date: the message's own time is signed by the very key revoked, so it cannot
place the signature before the revocation. A signer whose covering list is past its ``nextUpdate`` at
``now`` (the caller's clock: the arrival time in the gateway; else the checking time), or whose list was
signed by a CA certificate not valid at ``now`` (expired since), is refused with
``revocation_list_stale`` (status ``unverifiable``): fail-closed, as a gateway that suppresses alerts
only on verified evidence must be. A signer whose issuer has no list loaded is not checked. The result's
``revocation`` says which: ``not_checked``, ``good``, ``revoked`` or ``stale``. The check is one dict
lookup (worked out when the store was loaded).

How the bytes are produced (all canonicalisation by libxml2 through lxml, ECDSA by
``cryptography``), with one C14N pass per message and no copy of the tree:

* The whole document is canonicalised once with inclusive C14N 1.0 without comments
  (``etree.tostring(tree, method="c14n")``). Because the enveloped Signature is the root's last
  child, its canonical form is one contiguous run of those bytes, just before its tail text and
  the root's end tag. Removing an element from the node-set does not change how any other node
  is rendered (its namespace and attribute context comes from ancestors, which all stay), so
  ``c14n(document minus Signature) == bytes before the run + bytes after it``. That is exactly
  the enveloped-signature transform followed by inclusive C14N 1.0.
  The run is found without parsing: in C14N output ``<`` only starts a tag, a comment or a PI
  (text and attribute values escape it; namespace URIs cannot contain it); comments are not
  output here, and any ``<?`` (a PI) sends the message to the slow path. So the run ends at the
  last ``<`` before the root's end tag (the Signature's end tag; checked), and starts at the
  k-th start tag ``<qname`` (followed by a space or ``>``) counted back from there, k being the
  number of elements in the Signature subtree rendered with that qname (itself and any nested
  look-alikes).
* The run is matched against one compiled expression of the exact DCC profile (SignedInfo,
  SignatureValue, KeyInfo/X509Data/X509IssuerSerial, only white space between), compiled once
  per Signature prefix. Below the Signature's start tag it admits no namespace declaration at all
  (attributes only on SignatureValue, never ``xmlns``): C14N writes a declaration only where it changes
  a binding, so one there could put an element out of XMLDSig (``<ds:SignatureValue xmlns:ds="urn:x">``,
  or ``xmlns=""`` under a default-namespace Signature); such runs go to the walk, which names them.
  The profile admits no look-alike inside the Signature, so the run is first tried from the *last*
  such start tag (no tree walk to count k); if that matches, it is the Signature's own run. The
  digest, signature value, issuer and serial then come from the match, and the exclusive C14N of
  SignedInfo is the run's SignedInfo with the one namespace declaration exclusive C14N renders on
  it: the expression admits no namespace declaration and no prefixed attribute inside SignedInfo
  and one prefix throughout, so inclusive and exclusive rendering of its content are the same bytes.
* Before that expression, the run is read *literally* when it is compact - the shape DCC and
  ``sign`` write: no white space between the Signature's elements (the SignatureValue may be
  wrapped with ``&#13;`` and a line break) - by ``_compact_profile``: a few ``startswith``/``find``
  calls on pieces of the expression's own text (checked against the expression when built), strict
  base64 decoding and digit checks. It is stricter than the expression, never looser, so what it
  reads is what the expression would read (tests/xmldsig/test_xmldsig_compact.py); it only saves the
  regex steps, which cost most between ECDSA verifications that evict the caches.
* A Signature that deviates from the profile (or is merely unusual: other KeyInfo content,
  escaped characters, mixed prefixes) goes through the element walk, which names the reason,
  with the exclusive C14N of ``SignedInfo`` taken by lxml in its original document context; its
  digest input is still cut from the canonical bytes (k counted on the tree). Only when the run
  cannot be located (a PI anywhere) is the digest input made the obvious way: a deep copy of the
  document, the Signature removed (its tail text kept), canonicalised. The tree passed in is
  never modified. ``tests/xmldsig/test_xmldsig_fastpath.py`` proves these bytes equal an
  independent reference on the DCC samples, every template, edge cases and generated documents.
* Costs (docs/PERFORMANCE-xmldsig.md): libxml2's C14N of the Signature subtree is itself
  about as dear as a deep copy, so the single pass is not much cheaper than copy + C14N; the
  gain is that SignedInfo is not canonicalised a second time and nothing is walked in Python.

Whitespace: the DCC Boxed Java validator strips element-content white space before
digesting, so it accepts pretty-printed copies of compact signed XML. ``verify(...,
tolerate_whitespace=True)`` does the same as a *second* pass on a copy (text made only of XML
white space - space, tab, CR, LF - in element-only content removed; NBSP and other Unicode spaces are
content) when the strict pass fails, and the result says ``whitespace_tolerated=True`` when that is
what made it pass.

The signer is resolved by issuer DN (compared semantically) and serial; ``KeyInfo`` itself is
not covered by the signature (XMLDSig design), so only what it selects matters. When the store holds
more than one certificate under that issuer and serial (two CAs whose names compare equal, one serial:
``CertificateStore.twins``), the signer is the one whose key verifies the value, and the policy is
applied to that one.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import hashlib
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from lxml import etree

from gateway.duis.errors import InvalidField, NotDuis
from gateway.duis.safexml import parse_xml
from gateway.duis.values import DateTimePolicy, parse_datetime
from gateway.errors import DuisgwError
from gateway.smki import BadDistinguishedName, CertificateStore, SigningPolicy, SmkiCertificate, utc
from gbcs.eui import EUIError, format_eui, parse_eui_strict

__all__ = [
    "ALG_ECDSA_SHA256",
    "ALG_ENVELOPED",
    "ALG_EXC_C14N",
    "ALG_SHA256",
    "DSIG_NS",
    "SR_NS",
    "Reason",
    "SignatureError",
    "SigningError",
    "VerifyResult",
    "message_kind",
    "sign",
    "strip_element_whitespace",
    "verify",
]

DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
SR_NS = "http://www.dccinterface.co.uk/ServiceUserGateway"
ALG_EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ALG_ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
ALG_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ALG_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

_D = "{" + DSIG_NS + "}"
_SIGNATURE = _D + "Signature"
_SIGNED_INFO = _D + "SignedInfo"
_SIGNATURE_VALUE = _D + "SignatureValue"
_KEY_INFO = _D + "KeyInfo"
_C14N_METHOD = _D + "CanonicalizationMethod"
_SIG_METHOD = _D + "SignatureMethod"
_REFERENCE = _D + "Reference"
_TRANSFORMS = _D + "Transforms"
_TRANSFORM = _D + "Transform"
_DIGEST_METHOD = _D + "DigestMethod"
_DIGEST_VALUE = _D + "DigestValue"
_X509_DATA = _D + "X509Data"
_X509_ISSUER_SERIAL = _D + "X509IssuerSerial"
_X509_ISSUER_NAME = _D + "X509IssuerName"
_X509_SERIAL = _D + "X509SerialNumber"
_ANY_SIGNATURE = "{*}Signature"

_SR = "{" + SR_NS + "}"
_REQUEST = _SR + "Request"
_RESPONSE = _SR + "Response"
_HEADER = _SR + "Header"
_RESPONSE_DT = _SR + "ResponseDateTime"
_REQUEST_ID = _SR + "RequestID"

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


#: XML white space (S): the only characters a reader may ignore (not NBSP, U+2028, NEL ... as str.strip does).
_XML_WS = " \t\r\n"
_NO_XML_WS = str.maketrans("", "", _XML_WS)
_WS = rb"[ \t\n]*"
#: White space directly inside ds:Signature as inclusive C14N renders it (a CR becomes ``&#xD;``).
_SIG_WS = rb"[ \t\n]*(?:&#xD;[ \t\n]*)*"
#: Attributes / namespace declarations of one canonical start tag (values never contain '"': C14N
#: writes it as ``&quot;`` and namespace URIs cannot hold it).
_ATTRS = rb'(?: [^\s="<>]+="[^"]*")*'
#: Attributes without any namespace declaration, for the elements *inside* the Signature: C14N renders a
#: declaration only where it changes the binding in scope, so a declaration there could rebind the
#: Signature's prefix (or the default namespace) away from XMLDSig - such runs go to the walk.
_PLAIN_ATTRS = rb'(?: (?!xmlns[:=])[^\s="<>]+="[^"]*")*'


def _si_content() -> bytes:
    """The canonical bytes after ``<pSignedInfo ...>`` of a SignedInfo that is exactly the DCC profile
    (prefix group ``p``, white space between elements, DigestValue in group ``dv``)."""

    def empty(name: bytes, alg: str) -> bytes:
        return (
            rb"<(?P=p)"
            + name
            + rb' Algorithm="'
            + re.escape(alg.encode())
            + rb'"></(?P=p)'
            + name
            + rb">"
            + _WS
        )

    return (
        _WS
        + empty(b"CanonicalizationMethod", ALG_EXC_C14N)
        + empty(b"SignatureMethod", ALG_ECDSA_SHA256)
        + rb'<(?P=p)Reference URI="">' + _WS + rb"<(?P=p)Transforms>" + _WS
        + empty(b"Transform", ALG_ENVELOPED)
        + rb"</(?P=p)Transforms>" + _WS
        + empty(b"DigestMethod", ALG_SHA256)
        + rb"<(?P=p)DigestValue>(?P<dv>[A-Za-z0-9+/]{43}=)</(?P=p)DigestValue>" + _WS
        + rb"</(?P=p)Reference>" + _WS + rb"</(?P=p)SignedInfo>"
    )  # fmt: skip


_PREFIX = rb"(?P<p>(?:[A-Za-z_][\w.-]*:)?)"

#: The exclusive-C14N bytes of a profile SignedInfo (any prefix). Matching it is only a fast path:
#: anything else goes through the element walk, which names the reason.
_SIGNED_INFO_RE = re.compile(
    rb"<" + _PREFIX + rb"SignedInfo xmlns(?P<q>(?::[A-Za-z_][\w.-]*)?)=\"" + re.escape(DSIG_NS.encode())
    + rb"\">" + _si_content()
)  # fmt: skip

#: The inclusive-C14N run of a whole enveloped Signature in the exact DCC profile, with ``(?P=p)``
#: standing for the Signature's own prefix: one prefix throughout and no namespace declaration below
#: the Signature's start tag (SignatureValue may carry attributes, never a declaration), so every
#: element is in the namespace that prefix is bound to on the Signature - dsig, as its tag says.
#: ``si`` is SignedInfo after its start tag, ``sv`` SignatureValue's text, ``iss``/``ser`` the
#: X509IssuerSerial texts (no character references there: anything escaped goes to the walk). It
#: admits no element named like the Signature inside it, which is what lets ``_examine`` take the
#: last such start tag as the Signature's own.
_SIGNATURE_TEMPLATE = (
    rb"<(?P=p)Signature" + _ATTRS + rb">" + _SIG_WS
    + rb"<(?P=p)SignedInfo>(?P<si>" + _si_content() + rb")" + _SIG_WS
    + rb"<(?P=p)SignatureValue" + _PLAIN_ATTRS + rb">(?P<sv>[A-Za-z0-9+/= \t\n]*(?:&#xD;[A-Za-z0-9+/= \t\n]*)*)</(?P=p)SignatureValue>"
    + _SIG_WS + rb"<(?P=p)KeyInfo>" + _SIG_WS + rb"<(?P=p)X509Data>" + _SIG_WS + rb"<(?P=p)X509IssuerSerial>"
    + _SIG_WS + rb"<(?P=p)X509IssuerName>(?P<iss>[^<&]*)</(?P=p)X509IssuerName>" + _SIG_WS
    + rb"<(?P=p)X509SerialNumber>[ \t\n]*(?P<ser>[0-9]{1,80})[ \t\n]*</(?P=p)X509SerialNumber>" + _SIG_WS
    + rb"</(?P=p)X509IssuerSerial>" + _SIG_WS + rb"</(?P=p)X509Data>" + _SIG_WS + rb"</(?P=p)KeyInfo>"
    + _SIG_WS + rb"</(?P=p)Signature>"
)  # fmt: skip
_DSIG_NS_B = DSIG_NS.encode()


class _Forms(NamedTuple):
    """Everything the fast path needs for one Signature prefix (built once per prefix)."""

    opener: bytes  # b"<ds:Signature"
    close: bytes  # b"</ds:Signature>"
    pattern: re.Pattern[bytes]  # _SIGNATURE_TEMPLATE with the prefix written literally
    signed_info_start: bytes  # exclusive C14N start tag of SignedInfo: <ds:SignedInfo xmlns:ds="...">
    # The compact run, as DCC and sign() write it, in literal pieces for _compact_profile:
    heads: tuple[bytes, bytes]  # the start up to the DigestValue text, Signature declaring its prefix or not
    signed_info_head: bytes  # signed_info_start + SignedInfo's content up to the DigestValue text
    signed_info_tail: bytes  # </ds:DigestValue></ds:Reference></ds:SignedInfo>
    value_start: bytes  # signed_info_tail + <ds:SignatureValue>
    value_end: bytes  # </ds:SignatureValue><ds:KeyInfo><ds:X509Data><ds:X509IssuerSerial><ds:X509IssuerName>
    issuer_end: bytes  # </ds:X509IssuerName><ds:X509SerialNumber>
    tail: bytes  # </ds:X509SerialNumber></ds:X509IssuerSerial></ds:X509Data></ds:KeyInfo></ds:Signature>


def _compact_si_head(p: bytes) -> bytes:
    """``_si_head()`` without white space, prefix ``p`` written literally (checked in ``_forms``)."""

    def empty(name: bytes, alg: str) -> bytes:
        return b"<" + p + name + b' Algorithm="' + alg.encode() + b'"></' + p + name + b">"

    return (
        empty(b"CanonicalizationMethod", ALG_EXC_C14N)
        + empty(b"SignatureMethod", ALG_ECDSA_SHA256)
        + b"<" + p + b'Reference URI=""><' + p + b"Transforms>"
        + empty(b"Transform", ALG_ENVELOPED)
        + b"</" + p + b"Transforms>"
        + empty(b"DigestMethod", ALG_SHA256)
        + b"<" + p + b"DigestValue>"
    )  # fmt: skip


@functools.lru_cache(maxsize=32)
def _forms(prefix: str | None) -> _Forms:
    p = b"" if prefix is None else prefix.encode() + b":"
    decl = b" xmlns" if prefix is None else b" xmlns:" + prefix.encode()
    opener, content = b"<" + p + b"Signature", b"<" + p + b"SignedInfo>" + _compact_si_head(p)
    signed_info_start = b"<" + p + b"SignedInfo" + decl + b'="' + _DSIG_NS_B + b'">'
    signed_info_tail = b"</" + p + b"DigestValue></" + p + b"Reference></" + p + b"SignedInfo>"
    forms = _Forms(
        opener,
        b"</" + p + b"Signature>",
        re.compile(_SIGNATURE_TEMPLATE.replace(rb"(?P=p)", re.escape(p))),
        signed_info_start,
        (opener + b">" + content, opener + decl + b'="' + _DSIG_NS_B + b'">' + content),
        signed_info_start + _compact_si_head(p),
        signed_info_tail,
        signed_info_tail + b"<" + p + b"SignatureValue>",
        b"</" + p + b"SignatureValue><" + p + b"KeyInfo><" + p + b"X509Data><" + p + b"X509IssuerSerial><" + p
        + b"X509IssuerName>",
        b"</" + p + b"X509IssuerName><" + p + b"X509SerialNumber>",
        b"</" + p + b"X509SerialNumber></" + p + b"X509IssuerSerial></" + p + b"X509Data></" + p + b"KeyInfo></"
        + p + b"Signature>",
    )  # fmt: skip
    # The literal pieces must spell runs the full expression accepts, with the groups where
    # _compact_profile takes them (else it could accept what the expression refuses): checked once per
    # prefix, on a run built from each head.
    for head in forms.heads:
        value = b"AAAA&#xD;\nAAAA"
        run = (
            head + b"A" * 43 + b"=" + forms.value_start + value + forms.value_end + b"CN=Z1"
            + forms.issuer_end + b"12" + forms.tail
        )  # fmt: skip
        m = forms.pattern.fullmatch(run)
        if (
            m is None
            or m.group("dv", "sv", "iss", "ser") != (b"A" * 43 + b"=", value, b"CN=Z1", b"12")
            or (
                forms.signed_info_start + m.group("si")
                != forms.signed_info_head + b"A" * 43 + b"=" + forms.signed_info_tail
            )
        ):
            raise RuntimeError(f"xmldsig: the compact Signature forms for prefix {prefix!r} left the profile")
    return forms


class SignatureError(DuisgwError):
    """Base of the named errors of the XML-signature layer (not raised for an invalid signature)."""

    code = "signature_error"


class SigningError(SignatureError):
    """Signing could not be done (key does not match the certificate, unsuitable key ...)."""

    code = "signing_error"


class Reason(StrEnum):
    """Why a signature is (in)valid; stable strings used in JSON, audit records and metrics."""

    OK = "ok"
    UNSIGNED = "unsigned"
    MULTIPLE_SIGNATURES = "multiple_root_signatures"
    SIGNATURE_NOT_LAST = "signature_not_last_child"
    MISSING_ELEMENT = "signature_missing_element"
    UNEXPECTED_ELEMENT = "signature_unexpected_element"
    TEXT_IN_SIGNATURE = "signature_text_content"
    UNSUPPORTED_C14N = "unsupported_canonicalization"
    UNSUPPORTED_SIGNATURE_METHOD = "unsupported_signature_method"
    REFERENCE_COUNT = "reference_count_not_one"
    REFERENCE_URI = "reference_uri_not_empty"
    UNSUPPORTED_TRANSFORMS = "unsupported_transforms"
    UNSUPPORTED_DIGEST_METHOD = "unsupported_digest_method"
    BAD_DIGEST_VALUE = "bad_digest_value"
    BAD_SIGNATURE_VALUE = "bad_signature_value"
    SIGNATURE_VALUE_LENGTH = "signature_value_not_64_octets"
    NO_KEY_INFO = "no_issuer_serial"
    BAD_KEY_INFO = "bad_issuer_serial"
    CERTIFICATE_NOT_FOUND = "certificate_not_found"
    UNSUPPORTED_KEY = "certificate_key_not_p256"
    DIGEST_MISMATCH = "digest_mismatch"
    SIGNATURE_MISMATCH = "signature_mismatch"
    NO_CHECK_TIME = "no_check_time"
    # revocation (gateway.smki: the store's CRLs/ARLs)
    CERTIFICATE_REVOKED = "certificate_revoked"
    REVOCATION_STALE = "revocation_list_stale"
    # policy (values shared with gateway.smki.PolicyReason)
    NO_RULE = "no_signing_rule_for_kind"
    ROLE_NOT_ALLOWED = "role_not_allowed"
    ROLE_AMBIGUOUS = "certificate_role_ambiguous"
    SIGNER_EUI_MISMATCH = "signer_eui_mismatch"
    KEY_USAGE = "key_usage_not_digital_signature"
    CERT_ALGORITHM = "certificate_not_ecdsa_sha256"
    NOT_YET_VALID = "certificate_not_yet_valid"
    EXPIRED = "certificate_expired"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify` (a value; ``valid`` is the only thing a decision may rely on)."""

    valid: bool
    status: str  # "valid" | "invalid" | "unsigned" | "revoked" | "unverifiable" (revocation list stale)
    reason: Reason
    kind: str  # "request" | "response" | "other"
    detail: str = ""
    signer_eui: int | None = None
    role: int | None = None
    serial: int | None = None
    issuer: str | None = None
    certificate_name: str | None = None
    checked_at: datetime | None = None
    certificate_time_valid: bool | None = None
    expired_trusted: bool = False
    whitespace_tolerated: bool = False
    #: what the store's revocation lists said of the signer: not_checked (none covers it), good, revoked, stale
    revocation: str = "not_checked"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reason"] = str(self.reason)
        d["signer_eui"] = None if self.signer_eui is None else format_eui(self.signer_eui)
        d["role_hex"] = None if self.role is None else f"{self.role:02X}"
        d["serial"] = None if self.serial is None else str(self.serial)
        d["checked_at"] = None if self.checked_at is None else self.checked_at.isoformat()
        return d


#: Builds a NamedTuple from a tuple of its fields in field order, without the Python-level ``__new__``
#: the class generates (half the cost, twice per message on the hot path).
_new = tuple.__new__


class _Profile(NamedTuple):
    """What the Signature says (a tuple: built once per message on the hot path)."""

    signed_info_c14n: bytes  # exclusive C14N of SignedInfo: the bytes the ECDSA value signs
    digest: bytes
    value: bytes  # raw r||s, 64 octets
    issuer: str
    serial: int


class _Bad(Exception):
    """Internal: a profile violation, turned into an invalid VerifyResult."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_root(doc: bytes | etree._Element) -> etree._Element:
    if not isinstance(doc, etree._Element):
        if isinstance(doc, bytes | bytearray | memoryview):
            return parse_xml(bytes(doc))
        if isinstance(doc, etree._ElementTree):
            return doc.getroot()
    if doc.getroottree().getroot() is not doc:  # (also true for any element that has a parent)
        # (an element removed from its parent still belongs to the old document, whose C14N is another's)
        raise NotDuis("verify() needs the document root element, not a sub-element")
    return doc


def message_kind(root: etree._Element) -> str:
    """``"request"`` / ``"response"`` / ``"other"`` (another DUIS root); NotDuis outside the DUIS namespace."""
    tag = root.tag
    if tag == _RESPONSE:
        return "response"
    if tag == _REQUEST:
        return "request"
    if isinstance(tag, str) and tag.startswith(_SR):
        return "other"
    raise NotDuis(f"root element {tag!r} is not in the DUIS namespace")


def _elements(parent: etree._Element) -> list[etree._Element]:
    return list(parent.iterchildren(etree.Element))


def _expect(
    parent: etree._Element, tags: tuple[str, ...], optional: frozenset[str] = frozenset()
) -> list[etree._Element | None]:
    """The element children of ``parent`` in exactly this order (optional ones may be absent)."""
    kids = _elements(parent)
    out: list[etree._Element | None] = []
    i = 0
    for tag in tags:
        if i < len(kids) and kids[i].tag == tag:
            out.append(kids[i])
            i += 1
        elif tag in optional:
            out.append(None)
        else:
            raise _Bad(Reason.MISSING_ELEMENT, f"{_local(parent.tag)} lacks {_local(tag)}")
    if i < len(kids):
        raise _Bad(Reason.UNEXPECTED_ELEMENT, f"unexpected {kids[i].tag} in {_local(parent.tag)}")
    return out


def _local(tag: object) -> str:
    s = str(tag)
    return s.rsplit("}", 1)[-1]


def _string(el: etree._Element) -> str:
    """The element's text content (XPath string value): text interrupted by a comment is joined, as
    C14N renders it - so the walk reads the same values as the fast path."""
    if len(el) == 0:
        return el.text or ""
    return "".join(t for t in el.itertext() if isinstance(t, str))


def _b64(text: str | None) -> bytes:
    """base64Binary: XML white space (space, tab, CR, LF) ignored anywhere, nothing else (binascii.Error)."""
    return base64.b64decode((text or "").translate(_NO_XML_WS), validate=True)


def _c14n(node: etree._Element | etree._ElementTree, *, exclusive: bool = False) -> bytes:
    """C14N 1.0 without comments (libxml2); a document libxml2 cannot canonicalise (e.g. a relative
    namespace URI) is unusable input, named."""
    try:
        return etree.tostring(node, method="c14n", exclusive=exclusive, with_comments=False)
    except etree.C14NError as exc:
        raise SignatureError(f"the document cannot be canonicalised (C14N 1.0): {exc}") from None


def _last_opener(canonical: bytes, opener: bytes, before: int) -> int:
    """Position of the last start tag ``opener`` (followed by a space or '>') before ``before``; -1 if none."""
    after = len(opener)
    pos = before
    while True:
        pos = canonical.rfind(opener, 0, pos)
        if pos < 0 or canonical[after + pos] in b" >":  # not <ds:SignatureValue ...
            return pos


def _signature_end(canonical: bytes, forms: _Forms) -> int:
    """Where the enveloped Signature's end tag starts in ``canonical`` (the document's inclusive C14N);
    -1 when that cannot be told from the bytes."""
    if canonical.find(b"?") >= 0 and b"<?" in canonical:  # PI data is written raw: slow path
        return -1  # (the one-byte find is a memchr; '?' is rare in DUIS, '<' is not)
    # Nothing follows the root's end tag (no PIs; comments are not rendered), and only the Signature's
    # tail text (no '<': escaped) precedes it; so the last '<' before it starts the Signature's end tag.
    last = canonical.rfind(b"<", 0, canonical.rfind(b"</"))
    return last if last >= 0 and canonical.startswith(forms.close, last) else -1


def _signature_span(canonical: bytes, sig: etree._Element, forms: _Forms) -> tuple[int, int] | None:
    """Where the enveloped ``sig`` (the root's last child) is rendered in ``canonical``, for any content:
    its start is the k-th start tag of its qname counted back from its end tag, k being the number of
    elements in its subtree rendered with that qname (itself and nested look-alikes)."""
    last = _signature_end(canonical, forms)
    if last < 0:
        return None
    nested = sum(1 for el in sig.iter(_ANY_SIGNATURE) if el.prefix == sig.prefix)
    start = last
    for _ in range(nested):
        start = _last_opener(canonical, forms.opener, start)
        if start < 0:
            return None
    return start, last + len(forms.close)


def _compact_profile(c: bytes, start: int, end: int, forms: _Forms) -> _Profile | None:
    """The profile read from the run ``c[start:end]`` if it is *compact*, the shape DCC and ``sign`` write
    (no white space between the Signature's elements; SignatureValue may hold ``&#xD;`` and line breaks),
    by literal comparisons and finds: a handful of memcmp/memchr calls instead of a regex step per byte
    (which, between ECDSA verifications that flush the caches, costs about 3 µs more). None for anything
    else, which goes to the full expression (``_fast_profile``).

    Stricter than the expression, never looser: a run it accepts, the expression accepts with the same
    groups - the heads and literal pieces are the expression's text with no white space (checked in
    ``_forms``); the DigestValue is 43 base64 letters and "=" (strict decoding of 44 characters to 32
    octets); the SignatureValue text holds nothing but the base64 alphabet, "=", space, tab, line feed and ``&#xD;``
    (strict decoding after deleting those), so no '<' and the first value_end found is its end; the
    issuer has no '<' or '&'; the serial is 1-80 ASCII digits. tests/xmldsig/test_xmldsig_fastpath.py
    pins this on every sample and on mutated runs."""
    h0, h1 = forms.heads
    head = h1 if c.startswith(h1, start, end) else h0 if c.startswith(h0, start, end) else None
    if head is None:
        return None
    dv = start + len(head)
    sv = dv + 44 + len(forms.value_start)
    tail = end - len(forms.tail)
    if not (c.startswith(forms.value_start, dv + 44, end) and c.startswith(forms.tail, tail, end)):
        return None
    value_end = c.find(forms.value_end, sv, tail)
    if value_end < 0:
        return None
    issuer_start = value_end + len(forms.value_end)
    issuer_end = c.find(forms.issuer_end, issuer_start, tail)
    if issuer_end < 0:
        return None
    text, issuer = c[sv:value_end], c[issuer_start:issuer_end]
    serial = c[issuer_end + len(forms.issuer_end) : tail]
    if b"&" in text:
        text = text.replace(b"&#xD;", b"")
    if b"<" in issuer or b"&" in issuer or len(serial) > 80 or not serial.isdigit():
        return None
    try:
        value = binascii.a2b_base64(text.translate(None, b" \t\n"), strict_mode=True)
        digest = binascii.a2b_base64(c[dv : dv + 44], strict_mode=True)
        name = issuer.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    if len(value) != 64 or len(digest) != 32:
        return None  # (another length of SignatureValue: the walk names it)
    signed_info = forms.signed_info_head + c[dv : dv + 44 + len(forms.signed_info_tail)]
    return _new(_Profile, (signed_info, digest, value, name, int(serial)))


def _fast_profile(c: bytes, start: int, end: int, forms: _Forms) -> _Profile | None:
    """The profile read from the Signature's run ``c[start:end]`` (compact: literally; else with the full
    expression of the profile), or None to leave it to the walk."""
    prof = _compact_profile(c, start, end, forms)
    return prof if prof is not None else _pattern_profile(c, start, end, forms)


def _pattern_profile(c: bytes, start: int, end: int, forms: _Forms) -> _Profile | None:
    """The profile read from the run with the full expression of the profile (white space and attributes
    between the Signature's elements), or None to leave it to the walk."""
    m = forms.pattern.fullmatch(c, start, end)
    if m is None:
        return None
    sv, iss = m.group("sv", "iss")
    try:
        value = binascii.a2b_base64(b"".join(sv.replace(b"&#xD;", b"").split()), strict_mode=True)
        issuer = iss.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    if len(value) != 64:
        return None  # the walk names it
    # Exclusive C14N renders on the apex exactly the one declaration SignedInfo's prefix uses; its
    # content has no declarations and the same prefix throughout, so it renders as in the run.
    return _Profile(
        forms.signed_info_start + m.group("si"),
        binascii.a2b_base64(m.group("dv")),
        value,
        issuer,
        int(m.group("ser")),
    )


def _parse_profile(sig: etree._Element) -> _Profile:
    """The element walk (slow path): the authority that names what is wrong."""
    signed_info, sigval, key_info = _expect(
        sig, (_SIGNED_INFO, _SIGNATURE_VALUE, _KEY_INFO), frozenset({_KEY_INFO})
    )
    assert signed_info is not None and sigval is not None
    # Text directly in ds:Signature is covered by neither the digest nor SignedInfo: refuse it.
    if (sig.text and sig.text.strip(_XML_WS)) or any(c.tail and c.tail.strip(_XML_WS) for c in sig):
        raise _Bad(Reason.TEXT_IN_SIGNATURE, "non-whitespace text directly inside ds:Signature")
    signed_info_c14n = _c14n(signed_info, exclusive=True)
    fast = _SIGNED_INFO_RE.fullmatch(signed_info_c14n)
    if fast is not None and fast.group("p").rstrip(b":") == fast.group("q").lstrip(b":"):
        # The canonical bytes that are signed are exactly the profile's SignedInfo: no walk needed.
        digest = base64.b64decode(fast.group("dv"))
    else:
        digest = _walk_signed_info(signed_info)
    value, issuer, serial = _value_and_key(sigval, key_info)
    return _Profile(signed_info_c14n, digest, value, issuer, serial)


def _walk_signed_info(signed_info: etree._Element) -> bytes:
    """Check SignedInfo element by element (the authority; names what is wrong) and return the digest."""
    si_kids = _elements(signed_info)
    if len(si_kids) < 2 or si_kids[0].tag != _C14N_METHOD or si_kids[1].tag != _SIG_METHOD:
        raise _Bad(
            Reason.MISSING_ELEMENT, "SignedInfo must start with CanonicalizationMethod, SignatureMethod"
        )
    c14n, method, refs = si_kids[0], si_kids[1], si_kids[2:]
    if c14n.get("Algorithm") != ALG_EXC_C14N or _elements(c14n):
        raise _Bad(Reason.UNSUPPORTED_C14N, str(c14n.get("Algorithm")))
    if method.get("Algorithm") != ALG_ECDSA_SHA256 or _elements(method):
        raise _Bad(Reason.UNSUPPORTED_SIGNATURE_METHOD, str(method.get("Algorithm")))
    if len(refs) != 1 or refs[0].tag != _REFERENCE:
        raise _Bad(Reason.REFERENCE_COUNT, f"{len(refs)} references")
    ref = refs[0]
    if ref.get("URI") != "":
        raise _Bad(Reason.REFERENCE_URI, repr(ref.get("URI")))
    transforms, digest_method, digest_value = _expect(
        ref, (_TRANSFORMS, _DIGEST_METHOD, _DIGEST_VALUE), frozenset({_TRANSFORMS})
    )
    assert digest_method is not None and digest_value is not None
    tlist = [] if transforms is None else _elements(transforms)
    if (
        len(tlist) != 1
        or tlist[0].tag != _TRANSFORM
        or tlist[0].get("Algorithm") != ALG_ENVELOPED
        or _elements(tlist[0])
    ):
        raise _Bad(Reason.UNSUPPORTED_TRANSFORMS, ", ".join(str(t.get("Algorithm")) for t in tlist) or "none")
    if digest_method.get("Algorithm") != ALG_SHA256 or _elements(digest_method):
        raise _Bad(Reason.UNSUPPORTED_DIGEST_METHOD, str(digest_method.get("Algorithm")))
    try:
        digest = _b64(_string(digest_value))
    except (binascii.Error, ValueError):
        raise _Bad(Reason.BAD_DIGEST_VALUE, "DigestValue is not base64") from None
    if len(digest) != 32:
        raise _Bad(Reason.BAD_DIGEST_VALUE, f"DigestValue is {len(digest)} octets")
    return digest


def _value_and_key(sigval: etree._Element, key_info: etree._Element | None) -> tuple[bytes, str, int]:
    if _elements(sigval):
        raise _Bad(Reason.UNEXPECTED_ELEMENT, "element inside SignatureValue")
    try:
        value = _b64(_string(sigval))
    except (binascii.Error, ValueError):
        raise _Bad(Reason.BAD_SIGNATURE_VALUE, "SignatureValue is not base64") from None
    if len(value) != 64:
        raise _Bad(Reason.SIGNATURE_VALUE_LENGTH, f"SignatureValue is {len(value)} octets (raw r||s is 64)")
    if key_info is None:
        raise _Bad(Reason.NO_KEY_INFO, "no KeyInfo")
    issuer_serial = None
    for data in key_info.iterchildren(_X509_DATA):
        issuer_serial = next(data.iterchildren(_X509_ISSUER_SERIAL), None)
        if issuer_serial is not None:
            break
    if issuer_serial is None:
        raise _Bad(Reason.NO_KEY_INFO, "no KeyInfo/X509Data/X509IssuerSerial")
    name_el, serial_el = _expect(issuer_serial, (_X509_ISSUER_NAME, _X509_SERIAL))
    assert name_el is not None and serial_el is not None
    serial_text = _string(serial_el)
    digits = serial_text.strip(_XML_WS)
    # ASCII digits only (the fast path's reading): int() would also take "+N", "1_2" and other scripts' digits
    if not (digits.isdigit() and digits.isascii()):
        raise _Bad(Reason.BAD_KEY_INFO, f"X509SerialNumber {serial_text[:40]!r}")
    try:
        serial = int(digits)
    except ValueError:  # (more digits than int() converts)
        raise _Bad(Reason.BAD_KEY_INFO, f"X509SerialNumber {serial_text[:40]!r}") from None
    return value, _string(name_el), serial


class _Examined(NamedTuple):
    profile: _Profile
    canonical: bytes  # inclusive C14N of the whole document
    span: tuple[int, int] | None  # the enveloped Signature's run in it; None: digest via the slow path
    fast: bool  # the profile was read from the run (else: the element walk)


def _examine(root: etree._Element, sig: etree._Element) -> _Examined:
    """One C14N of the document, then the Signature's profile (fast: from its run; else the walk).
    Raises _Bad for a profile violation."""
    canonical = _c14n(root.getroottree())
    forms = _forms(sig.prefix)
    last = _signature_end(canonical, forms)
    if last >= 0:
        # Try the last start tag of the Signature's qname: if the run from there matches the profile it
        # is the Signature's own (the profile has no look-alike inside it), so no tree walk is needed.
        start = _last_opener(canonical, forms.opener, last)
        if start >= 0:
            end = last + len(forms.close)
            prof = _fast_profile(canonical, start, end, forms)
            if prof is not None:
                return _new(_Examined, (prof, canonical, (start, end), True))
    return _Examined(_parse_profile(sig), canonical, _signature_span(canonical, sig, forms), False)


def _enveloped_c14n_slow(root: etree._Element) -> bytes:
    """The enveloped-signature transform + inclusive C14N 1.0 done the obvious way: copy the document,
    remove the root's last child (keeping its tail text, which the transform does not remove), C14N."""
    tree_copy = copy.deepcopy(root.getroottree())
    croot = tree_copy.getroot()
    _remove_keep_tail(croot, croot[len(croot) - 1])
    return _c14n(tree_copy)


def _digest_input(root: etree._Element, ex: _Examined) -> bytes:
    if ex.span is None:
        return _enveloped_c14n_slow(root)
    start, end = ex.span
    return ex.canonical[:start] + ex.canonical[end:]


def _enveloped_c14n(root: etree._Element) -> bytes:
    """Inclusive C14N 1.0 (no comments) of the document without its enveloped Signature (the root's
    last child), cut from the document's C14N as ``verify`` does for any Signature content (k counted
    on the tree); the slow path when a PI is present. The tests compare it with an independent reference."""
    sig = root[len(root) - 1]
    canonical = _c14n(root.getroottree())
    span = _signature_span(canonical, sig, _forms(sig.prefix))
    return _digest_input(root, _Examined(_Profile(b"", b"", b"", "", 0), canonical, span, False))


def strip_element_whitespace(root: etree._Element) -> int:
    """Remove white-space-only text in element-only content (what Java's ignoringElementContentWhitespace
    does for DUIS, which has no mixed content). White space is XML's (space, tab, CR, LF): text holding
    any other character (NBSP, U+3000, NEL ...) is content and stays. Leaf values are left alone. Returns
    how many were removed."""
    n = 0
    for el in root.iter():
        if len(el) and el.text is not None and not el.text.strip(_XML_WS):
            el.text = None
            n += 1
        if el is not root and el.tail is not None and not el.tail.strip(_XML_WS):
            el.tail = None
            n += 1
    return n


def _header_child(header: etree._Element | None, tag: str) -> etree._Element | None:
    if header is not None:
        for child in header[:]:  # type: ignore[index]  # (lxml slices to a list; the stubs lack it)
            if child.tag == tag:
                return child
    return None


_NAIVE_IS_UTC = DateTimePolicy.NAIVE_IS_UTC


def _response_time(header: etree._Element | None, policy: SigningPolicy) -> datetime | None:
    """The message's ResponseDateTime in UTC, read as the DUIS decoder reads it (``parse_datetime``:
    xs:dateTime only, ``24:00:00`` is the next midnight); None when absent or blank, or when it has no
    zone and the policy does not take naive times as UTC. InvalidField when it is not an xs:dateTime or
    has no UTC equivalent in years 1-9999 (e.g. ``0001-01-01T00:00:00+14:00``)."""
    el = _header_child(header, _RESPONSE_DT)
    text = None if el is None else el.text
    if not text:
        return None
    try:
        dt = parse_datetime(text, "ResponseDateTime", _NAIVE_IS_UTC, None)
    except InvalidField:
        if not text.strip(_XML_WS):  # blank: no time of its own (checked here, off the common path)
            return None
        raise
    if not policy.naive_time_is_utc and _is_naive(text):
        return None
    if dt.tzinfo is UTC:  # (parse_datetime gives this very object for Z, +00:00 and naive values)
        return dt
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise InvalidField(
            f"ResponseDateTime {text.strip(_XML_WS)[:40]!r} has no UTC equivalent in years 1-9999"
        ) from None


def _is_naive(text: str) -> bool:
    """Whether an xs:dateTime that ``parse_datetime`` accepted has no zone (no ``Z`` / ``±hh:mm`` suffix)."""
    s = text.strip()  # (as parse_datetime's checking path strips before matching)
    return not (s.endswith("Z") or (len(s) > 6 and s[-6] in "+-" and s[-3] == ":"))


def _request_originator(header: etree._Element | None) -> int:
    el = _header_child(header, _REQUEST_ID)
    if el is None or not el.text:
        raise InvalidField("Request has no Header/RequestID")
    try:
        return parse_eui_strict(el.text.strip().split(":", 1)[0])
    except EUIError as exc:
        raise InvalidField(f"RequestID originator: {exc}") from None


def _crypto(
    root: etree._Element, ex: _Examined, cert: SmkiCertificate, store: CertificateStore
) -> tuple[Reason, SmkiCertificate]:
    """The digest, then the signature value against ``cert``'s key - or, when that fails, against each
    other certificate the store holds under the same issuer and serial (``CertificateStore.twins``): the
    one whose key verifies is the signer, and is returned."""
    prof = ex.profile
    if ex.span is None:
        digest = hashlib.sha256(_enveloped_c14n_slow(root))
    else:  # the document's C14N without the Signature's run, hashed in two pieces (no joined copy)
        canonical, (start, end) = ex.canonical, ex.span
        digest = hashlib.sha256(canonical[:start])
        digest.update(canonical[end:])
    if digest.digest() != prof.digest:
        return Reason.DIGEST_MISMATCH, cert
    v = prof.value
    der = encode_dss_signature(int.from_bytes(v[:32], "big"), int.from_bytes(v[32:], "big"))
    try:
        cert.public_key.verify(der, prof.signed_info_c14n, _ECDSA_SHA256)
    except InvalidSignature:
        for other in store.twins(cert):  # (usually none)
            try:
                other.public_key.verify(der, prof.signed_info_c14n, _ECDSA_SHA256)
            except InvalidSignature:
                continue
            return Reason.OK, other
        return Reason.SIGNATURE_MISMATCH, cert
    return Reason.OK, cert


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def verify(
    doc: bytes | etree._Element,
    store: CertificateStore,
    policy: SigningPolicy,
    *,
    at: datetime | None = None,
    now: datetime | None = None,
    tolerate_whitespace: bool = False,
) -> VerifyResult:
    """Verify the enveloped DUIS signature of ``doc`` (bytes, or an already-parsed root element).

    ``at`` is the time the certificate must be valid at; by default the message's own
    ``ResponseDateTime``, else ``now`` (the caller's clock - requests carry no time of their own).
    The tree passed in is left as it was. Raises a named DuisgwError only for unusable input.
    """
    root = _as_root(doc)
    kind = message_kind(root)
    # One pass over the (few) root children, all fetched in one call (iterating costs a call per child;
    # lxml slices an element to the list of its children, which the type stubs do not know).
    children: list[etree._Element] = root[:]  # type: ignore[index,assignment]
    sig: etree._Element | None = None
    header: etree._Element | None = None
    signatures = 0
    for child in children:
        tag = child.tag
        if tag == _SIGNATURE:
            signatures += 1
            sig = child
        elif tag == _HEADER and header is None:
            header = child
    if sig is None:
        return VerifyResult(False, "unsigned", Reason.UNSIGNED, kind, "no ds:Signature child of the root")
    if signatures > 1:
        return VerifyResult(
            False, "invalid", Reason.MULTIPLE_SIGNATURES, kind, f"{signatures} root-level signatures"
        )
    if children[-1] is not sig:
        return VerifyResult(
            False, "invalid", Reason.SIGNATURE_NOT_LAST, kind, "ds:Signature is not the root's last child"
        )

    check_at = utc(at) if at is not None else None
    if check_at is None and kind == "response":
        check_at = _response_time(header, policy)
    if check_at is None and now is not None:
        check_at = utc(now)
    originator = _request_originator(header) if kind == "request" else None

    try:
        ex = _examine(root, sig)
    except _Bad as bad:
        return VerifyResult(False, "invalid", bad.reason, kind, bad.detail)
    prof = ex.profile
    try:
        cert = store.find(prof.issuer, prof.serial)
    except BadDistinguishedName as exc:
        return VerifyResult(False, "invalid", Reason.BAD_KEY_INFO, kind, exc.message, serial=prof.serial)
    if cert is None:
        return VerifyResult(
            False, "invalid", Reason.CERTIFICATE_NOT_FOUND, kind,
            f"no certificate issued by {prof.issuer!r} with serial {prof.serial}", serial=prof.serial,
            issuer=prof.issuer,
        )  # fmt: skip

    outcome, cert = _crypto(root, ex, cert, store)
    tolerated = False
    if outcome is not Reason.OK and tolerate_whitespace:
        tree_copy = copy.deepcopy(root.getroottree())
        croot = tree_copy.getroot()
        if strip_element_whitespace(croot):
            try:
                cex: _Examined | None = _examine(croot, croot[len(croot) - 1])
            except _Bad:
                cex = None
            if cex is not None:
                second, signer = _crypto(croot, cex, cert, store)
                if second is Reason.OK:
                    outcome, tolerated, cert = Reason.OK, True, signer
    if outcome is not Reason.OK:
        return _signer_result(False, outcome, "", kind, cert, check_at, False, tolerated)
    revocation = store.revocation(cert)  # (one dict lookup; None: no list covers the signer)
    if revocation is not None:
        if revocation.revoked_at is not None:
            return _signer_result(
                False, Reason.CERTIFICATE_REVOKED, revocation.detail, kind, cert, check_at, False, tolerated,
                status="revoked", revocation="revoked",
            )  # fmt: skip
        fresh_at = utc(now) if now is not None else check_at
        if fresh_at is not None and revocation.stale_at(fresh_at):
            return _signer_result(
                False, Reason.REVOCATION_STALE, revocation.stale_reason(fresh_at),
                kind, cert, check_at, False, tolerated, status="unverifiable", revocation="stale",
            )  # fmt: skip
    checked = "not_checked" if revocation is None else "good"
    if check_at is None:
        return _signer_result(
            False,
            Reason.NO_CHECK_TIME,
            "no ResponseDateTime and no time given",
            kind,
            cert,
            None,
            False,
            tolerated,
            revocation=checked,
        )
    verdict = policy.check(cert, kind, check_at, originator=originator)
    if not verdict.ok:
        detail = ""
        if verdict.reason.value == Reason.SIGNER_EUI_MISMATCH:
            want = policy.dsp_eui if kind == "response" else originator
            detail = f"expected signer {format_eui(want) if want is not None else '?'}"
            if cert.eui_ambiguous:
                detail += "; the signer's subject names more than one EUI (x500UniqueIdentifier)"
        elif verdict.reason.value == Reason.ROLE_AMBIGUOUS:
            detail = f"the signer's subject {cert.subject[:120]!r} has more than one OU (role)"
        return _signer_result(
            False, Reason(verdict.reason.value), detail, kind, cert, check_at, False, tolerated,
            revocation=checked,
        )  # fmt: skip
    # (positional: this is the common outcome, and keyword passing costs on every message)
    return VerifyResult(
        True, "valid", Reason.OK, kind, "whitespace-only text ignored" if tolerated else "", cert.subject_eui,
        cert.role, cert.serial, cert.issuer, cert.name, check_at, cert.valid_at(check_at),
        verdict.expired_trusted, tolerated, checked,
    )  # fmt: skip


def _signer_result(
    valid: bool, reason: Reason, detail: str, kind: str, cert: SmkiCertificate, check_at: datetime | None,
    expired_trusted: bool, tolerated: bool, *, status: str | None = None, revocation: str = "not_checked",
) -> VerifyResult:  # fmt: skip
    """A result once the signer's certificate is known (its fields filled in from it)."""
    return VerifyResult(
        valid, status or ("valid" if valid else "invalid"), reason, kind, detail, cert.subject_eui, cert.role,
        cert.serial, cert.issuer, cert.name, check_at, None if check_at is None else cert.valid_at(check_at),
        expired_trusted, tolerated, revocation,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# sign
# --------------------------------------------------------------------------------------------


def sign(
    data_or_root: bytes | etree._Element,
    private_key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate | SmkiCertificate,
    *,
    prefix: str | None = "ds",
) -> bytes:
    """Sign a DUIS document with the DCC profile and return the serialised signed document.

    Any existing root-level ``ds:Signature`` is replaced; the new one is appended as the root's last
    child with ``KeyInfo/X509Data/X509IssuerSerial`` (issuer in RFC 2253 form as Java writes it, serial
    in decimal). A tree passed in is not modified (a copy is signed).
    """
    cert = certificate.certificate if isinstance(certificate, SmkiCertificate) else certificate
    pub = cert.public_key()
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        private_key.curve, ec.SECP256R1
    ):
        raise SigningError("the signing key must be an EC P-256 private key")
    if (
        not isinstance(pub, ec.EllipticCurvePublicKey)
        or pub.public_numbers() != private_key.public_key().public_numbers()
    ):
        raise SigningError("the private key does not belong to the certificate")
    if isinstance(data_or_root, bytes | bytearray | memoryview):
        root = parse_xml(bytes(data_or_root))
    else:
        src = data_or_root.getroot() if isinstance(data_or_root, etree._ElementTree) else data_or_root
        root = copy.deepcopy(src.getroottree()).getroot() if src.getparent() is None else copy.deepcopy(src)
    for old in [c for c in root if c.tag == _SIGNATURE]:
        _remove_keep_tail(root, old)
    digest = hashlib.sha256(_c14n(root.getroottree()))

    nsmap = cast("dict[str, str]", {prefix: DSIG_NS})  # None = default namespace (the stubs omit it)
    sig = etree.SubElement(root, _SIGNATURE, nsmap=nsmap)
    si = etree.SubElement(sig, _SIGNED_INFO)
    etree.SubElement(si, _C14N_METHOD, Algorithm=ALG_EXC_C14N)
    etree.SubElement(si, _SIG_METHOD, Algorithm=ALG_ECDSA_SHA256)
    ref = etree.SubElement(si, _REFERENCE, URI="")
    etree.SubElement(etree.SubElement(ref, _TRANSFORMS), _TRANSFORM, Algorithm=ALG_ENVELOPED)
    etree.SubElement(ref, _DIGEST_METHOD, Algorithm=ALG_SHA256)
    etree.SubElement(ref, _DIGEST_VALUE).text = base64.b64encode(digest.digest()).decode("ascii")
    value_el = etree.SubElement(sig, _SIGNATURE_VALUE)
    issuer_serial = etree.SubElement(
        etree.SubElement(etree.SubElement(sig, _KEY_INFO), _X509_DATA), _X509_ISSUER_SERIAL
    )
    etree.SubElement(issuer_serial, _X509_ISSUER_NAME).text = cert.issuer.rfc4514_string()
    etree.SubElement(issuer_serial, _X509_SERIAL).text = str(cert.serial_number)

    signed_info_c14n = _c14n(si, exclusive=True)
    r, s = decode_dss_signature(private_key.sign(signed_info_c14n, _ECDSA_SHA256))
    value_el.text = base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode("ascii")
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8", standalone=False)


def _remove_keep_tail(parent: etree._Element, el: etree._Element) -> None:
    tail = el.tail
    if tail:
        prev = el.getprevious()
        if prev is None:
            parent.text = (parent.text or "") + tail
        else:
            prev.tail = (prev.tail or "") + tail
    parent.remove(el)
