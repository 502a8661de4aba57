"""SMKI certificate store and the XML-signing policy.

Theory of operation
-------------------
DUIS XML signatures name their signer only by ``X509IssuerName`` + ``X509SerialNumber`` (no
certificate is embedded), so verification needs a local store of SMKI *organisation*
certificates. :class:`CertificateStore` loads them once per store (the gateway builds one at start-up
and a new one on each reload, from :class:`SmkiMaterial`: see "Reload" below)

* from a directory of PEM/DER files (certificates, plus DER or PEM PKCS#8 private keys where present:
  keys are paired with certificates by public key, not by file name), and/or
* from the DCC Boxed ``keystore.json`` format (``{eui: {"digitalSignature"|"keyAgreement":
  {serial: {"certificate": PEM, "privateKey": PEM, "name": str, "role": int}}}}``),

and turns each certificate into an immutable :class:`SmkiCertificate` that caches everything a
verification needs (parsed public key, subject EUI-64, role, key usage, validity) so the hot
path never touches X.509 again.

Issuer names are matched *semantically*: the RFC 2253/4514 string from the XML (Java writes
``CN=Z1,OU=07``; templates write ``CN=U1, OU=07``; OpenSSL-style producers use the forward order
``OU=07, CN=Z1``) is parsed into (attribute OID, value) pairs; values compare after white-space
folding and case folding (X.520 caseIgnoreMatch), and the RDN order is not significant (the
serial number is the real key; the issuer only disambiguates). The small RFC 4514 reader below
exists because ``cryptography``'s parser rejects the RFC 2253 forms real producers write
(spaces after separators, lower-case attribute types, ``OID.`` prefixes, ``#hex`` values).

The role is the subject OU read as two hex digits (``89`` -> 0x89 = 137); the legacy DCC Boxed
certificate writes it in decimal (``OU=137``), which is accepted too. A subject with more than one OU
has an *ambiguous* role: no role is read from it (``role`` None, ``role_ambiguous``), so the policy
refuses it for every message kind (``certificate_role_ambiguous``). The EUI-64 is the subject
``x500UniqueIdentifier`` (OID 2.5.4.45), a BIT STRING of 8 octets; a subject naming two different EUIs
is likewise no one's (``subject_eui`` None, ``eui_ambiguous``: ``signer_eui_mismatch`` for every kind).

*Trust is by presence, not by path.* Every certificate the store holds is relied on as itself (a pinned
certificate): no certificate path is built or verified, to a root or to anything else (the DCC Boxed set
holds no CA certificate; DUIS.md §6.4). A CA certificate in the store serves only to check the revocation
lists it signs and to find, for revocation, the CA above a certificate it issued; an expired CA above a
held certificate does not make that certificate unusable, and a certificate of any CA put in the folder is
used as if the SMKI had issued it (its own role, EUI, key usage, algorithm and validity are still
checked). The folder must therefore hold only what the SMKI repository publishes. The GBCS key store
(:mod:`gateway.gbcs_keys`) is trusted the same way.

:class:`SigningPolicy` says which role may sign which message kind and at what time the
certificate must be valid. It never switches a check off: expired *test* certificates are
accepted only by naming them in ``trust_expired`` (and the result says so). An entry names a
certificate as ``ISSUER#SERIAL`` (:func:`parse_trust_entry`: the issuer DN compared as above, the
decimal serial), the way the XML signature itself names its signer; a bare ``SERIAL`` is still
accepted and matches a certificate with that serial from *any* issuer (the older form: serials are
unique per CA only, so prefer the issuer form).

Revocation
----------
The store also holds the certificate revocation lists the SMKI PMA publishes (the Organisation CRL:
revoked Organisation certificates - DSP and User XML-signing, suppliers' DS; the ARLs: revoked
issuing CAs). :meth:`CertificateStore.load_crls` reads them (PEM or DER; in a certificate folder the
files ``*.crl``, ``*.crl.pem``, ``*.arl`` and any ``.pem`` holding ``BEGIN X509 CRL``). A list is
accepted only when its signature verifies against a certificate *held in the store* whose subject is
the list's issuer (compared semantically, as issuer names are) and, when the list carries an Authority
Key Identifier, whose Subject Key Identifier is that one, and which may sign CRLs (keyUsage cRLSign when
the certificate has a keyUsage), and which was valid at the list's thisUpdate (*The signer's own
validity* below); else it is refused with a named error (:class:`UnusableCrl`, :class:`CrlIssuerUnknown`,
:class:`CrlSignatureInvalid`, :class:`CrlIssuerNotValid`), listed in ``rejected`` like an unusable
certificate, and revokes nothing. So the issuing CA's certificate must be in the store, loaded before
the lists. A list must also be one complete list of its issuer's revocations that says nothing the gateway
does not process (RFC 5280 §5.2-5.3): a delta CRL, a list of some reasons only, an indirect list, an
attribute-certificate list, or an unknown critical extension of the list or of an entry is refused
(:class:`CrlScopeUnsupported`). An issuingDistributionPoint limiting a list to CA or end-entity
certificates, or naming distribution points, limits the certificates it speaks for (:class:`CrlScope`):
the lists below are those that cover the certificate, so a fresh list of one partition never vouches for
the certificates of a stale one.

A certificate is *revoked* when a valid list from its issuer names its serial, or when a CA certificate
above it in the store (its issuer, found by name and by verifying the certificate's signature with the
CA's key) is revoked - a revoked issuing CA on an ARL takes every certificate it issued with it.
**Rule: revoked is revoked at any time.** The revocation date is not compared with the message's own
time (``ResponseDateTime``): that time is written and signed with the very key whose compromise is the
usual reason for revocation, so whoever holds a revoked key can back-date a message to before the
revocation. The gateway decides now whether to suppress an alert on a signed piece of evidence, and a
revoked certificate is not to be relied on (SMKI RAPP); the invalidityDate extension is ignored for the
same reason. The verifier refuses such a signature (``certificate_revoked``); forwarding never needs a
signature, so the only effect is that the message is not evidence.

*Staleness.* A list past its ``nextUpdate`` no longer says whether a certificate is revoked. A
certificate covered by a list (its issuer has one loaded, or a CA above it has) whose freshest list is
past ``nextUpdate`` at the time the caller gives (the verifier uses its ``now`` - the arrival time in
the gateway - else the checking time) is **refused** (``revocation_list_stale``): fail-closed for
evidence, which only means "not suppressed", never "not forwarded". A certificate whose issuer has no
list loaded at all is not checked (as before lists existed: the DCC Boxed test set has none); results
say which (``revocation``: ``not_checked`` / ``good``). Several lists from one issuer are united (a
serial on any of them is revoked) and the freshest ``nextUpdate`` counts.

*The signer's own validity.* A list is only as good as the CA certificate that signed it, and that
certificate's validity is checked at two times. (1) When the list is added: the certificate must have
been valid at the list's own ``thisUpdate``, the time the CA says it issued it; a list whose signature
verifies only against certificates that were expired or not yet valid then is refused
(:class:`CrlIssuerNotValid`, ``crl_issuer_not_valid``) exactly like one whose signature does not verify
(listed in ``rejected``, revokes nothing; on reload it cannot take away a list in force:
:func:`replacement_problem`). ``thisUpdate`` and not the wall clock, because a store is built from bytes
alone, with no clock (sans-I/O), and must come out the same in every process whenever each builds it
(:class:`SmkiMaterial`). ``thisUpdate`` is written with the CA's key, so it alone cannot be trusted to
place the list inside the CA's validity; hence (2): at the checking time (the same ``now`` that judges
``nextUpdate``, as the rule for staleness) a list vouches for nothing outside its signer's validity: past
the signer's ``notAfter`` (or before its ``notBefore``) the list is stale, whatever its ``nextUpdate``
says, and the certificates it covers are refused (``revocation_list_stale``, fail-closed), while what it
revokes stays revoked (revoked is revoked at any time). :meth:`CertificateStore.crl_next_updates` (the
``duisgw_smki_crl_stale`` gauge) gives that earlier end, so the gauge flips when the CA expires.

Hot path: everything is worked out when certificates or lists are added; :meth:`CertificateStore.revocation`
is one dict lookup keyed by the certificate object. For certificates held elsewhere (GBCS DS certificates
of suppliers) :meth:`CertificateStore.revocation_problem` works it out once per certificate object and
caches it (nothing to do at all while no list is loaded).

Reload
------
The gateway never changes a store in force: a reload builds a new one. :class:`SmkiMaterial` reads the
certificate source and the revocation lists once (names and bytes, with a ``digest``); the gateway builds
its store from it and hands the same material to its worker processes, so every process holds the same
generation. :func:`replacement_problem` says when a new store must not replace the one in force (no
certificate, or refused files that would take away a certificate or an issuer's lists in force).

Sans-I/O: loading files is the only I/O here and happens in the ``from_*`` constructors, the
``load_*`` methods and :meth:`SmkiMaterial.read`; the policy and lookups are pure; time is always passed in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from gateway.errors import DuisgwError

__all__ = [
    "DCC_EUI",
    "ROLE_DSP_XML_SIGN",
    "ROLE_USER_XML_SIGN",
    "BadTrustEntry",
    "CertificateStore",
    "CrlIssuerNotValid",
    "CrlIssuerUnknown",
    "CrlScope",
    "CrlScopeUnsupported",
    "CrlSignatureInvalid",
    "PolicyReason",
    "Revocation",
    "RevocationList",
    "SigningPolicy",
    "SmkiCertificate",
    "SmkiError",
    "SmkiMaterial",
    "TimeOutOfRange",
    "TrustEntry",
    "UnusableCertificate",
    "UnusableCrl",
    "UnusableKeystore",
    "normalise_dn",
    "parse_role",
    "parse_trust_entry",
    "parse_trust_expired",
    "replacement_problem",
]

#: The DCC's EUI-64 (DSP / Access Control Broker) in the DCC Boxed (ZAZ1) test set.
DCC_EUI = 0x90B3D51F30000002
#: Remote-party role of the DSP's XML-signing certificate (OU=89).
ROLE_DSP_XML_SIGN = 0x89
#: Remote-party role of a DCC User's XML-signing certificate (OU=87).
ROLE_USER_XML_SIGN = 0x87

_OID_UNIQUE_ID = x509.ObjectIdentifier("2.5.4.45")


class SmkiError(DuisgwError):
    code = "smki_error"


class UnusableCertificate(SmkiError):
    """A certificate or key file that cannot be parsed or is not an EC P-256 SMKI credential."""

    code = "unusable_certificate"


class UnusableKeystore(SmkiError):
    """A keystore.json that is not in the DCC Boxed format."""

    code = "unusable_keystore"


class UnusableCrl(SmkiError):
    """A revocation list file that cannot be parsed as an X.509 CRL (PEM or DER)."""

    code = "unusable_crl"


class CrlIssuerUnknown(UnusableCrl):
    """A CRL whose issuer has no certificate in the store that may sign it (subject, key identifier,
    keyUsage cRLSign): its signature cannot be checked, so it is not used."""

    code = "crl_issuer_unknown"


class CrlSignatureInvalid(UnusableCrl):
    """A CRL whose signature does not verify against its issuer's certificate in the store."""

    code = "crl_signature_invalid"


class CrlIssuerNotValid(UnusableCrl):
    """A CRL whose signature verifies only against issuer certificates that were not valid (expired, or not
    yet valid) at the list's own thisUpdate: the CA could not issue it then, so it is not used."""

    code = "crl_issuer_not_valid"


class CrlScopeUnsupported(UnusableCrl):
    """A CRL that is not one complete list of what its issuer revoked, or that says something the gateway
    cannot apply: a delta CRL (deltaCRLIndicator), an indirect CRL (indirectCRL, or an entry naming another
    certificate issuer), a list partitioned by distribution point or by reasons (issuingDistributionPoint with
    a distributionPoint or onlySomeReasons), an attribute-certificate list, or any other critical extension
    of the list or of an entry. RFC 5280 §5.2/§5.3: such a list must not be used to decide the status of a
    certificate by an application that does not process it. Applying it as a complete list would call
    certificates "checked and good" that it does not cover (a revoked one among them)."""

    code = "crl_scope_unsupported"


class BadDistinguishedName(SmkiError):
    code = "bad_distinguished_name"


class BadTrustEntry(SmkiError):
    """A ``trust_expired`` entry that is neither ``SERIAL`` nor ``ISSUER#SERIAL``."""

    code = "bad_trust_expired_entry"


class TimeOutOfRange(SmkiError):
    """A time to check a certificate at that has no UTC equivalent in the years 1-9999."""

    code = "time_out_of_range"


# --------------------------------------------------------------------------------------------
# Distinguished names
# --------------------------------------------------------------------------------------------

_DN_KEYWORDS: dict[str, str] = {
    "CN": "2.5.4.3",
    "SN": "2.5.4.4",
    "SERIALNUMBER": "2.5.4.5",
    "C": "2.5.4.6",
    "L": "2.5.4.7",
    "ST": "2.5.4.8",
    "S": "2.5.4.8",
    "STREET": "2.5.4.9",
    "O": "2.5.4.10",
    "OU": "2.5.4.11",
    "T": "2.5.4.12",
    "TITLE": "2.5.4.12",
    "GIVENNAME": "2.5.4.42",
    "X500UNIQUEIDENTIFIER": "2.5.4.45",
    "DNQ": "2.5.4.46",
    "DNQUALIFIER": "2.5.4.46",
    "DC": "0.9.2342.19200300.100.1.25",
    "UID": "0.9.2342.19200300.100.1.1",
    "E": "1.2.840.113549.1.9.1",
    "EMAILADDRESS": "1.2.840.113549.1.9.1",
}
_OID_RE = re.compile(r"[0-2](?:\.[0-9]+)+")
_HEXPAIR = re.compile(r"[0-9A-Fa-f]{2}")
_WS = re.compile(r"\s+")

#: A DN in comparable form: sorted (OID, folded value) pairs.
DnKey = tuple[tuple[str, str], ...]


def _fold(value: str) -> str:
    return _WS.sub(" ", value.strip()).casefold()


def _split_unescaped(text: str, seps: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    i = 0
    quoted = False
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf.append(text[i : i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch in seps and not quoted:
            parts.append("".join(buf))
            buf = []
            i += 1
            continue
        buf.append(ch)
        i += 1
    if quoted:
        raise BadDistinguishedName(f"unterminated quoted value in DN {text[:80]!r}")
    parts.append("".join(buf))
    return parts


def _ava_value(raw: str) -> str:
    """One attribute value in comparable form: folded text, or ``#`` + hex of non-string content."""
    v = raw.strip()
    if v.startswith("#"):
        hexpart = v[1:]
        if (
            not hexpart
            or len(hexpart) % 2
            or not all(_HEXPAIR.fullmatch(hexpart[i : i + 2]) for i in range(0, len(hexpart), 2))
        ):
            raise BadDistinguishedName(f"bad #hex value {v[:40]!r}")
        tag, content = _ber_content(bytes.fromhex(hexpart))
        if tag in (0x0C, 0x13, 0x16, 0x14):  # UTF8String, PrintableString, IA5String, T61String
            return _fold(content.decode("utf-8", "replace"))
        return "#" + content.hex()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]
    out = bytearray()
    i = 0
    while i < len(v):
        ch = v[i]
        if ch == "\\":
            nxt = v[i + 1 : i + 3]
            if _HEXPAIR.fullmatch(nxt):
                out.append(int(nxt, 16))
                i += 3
                continue
            if i + 1 >= len(v):
                raise BadDistinguishedName(f"dangling escape in DN value {raw[:40]!r}")
            out += v[i + 1].encode()
            i += 2
            continue
        out += ch.encode()
        i += 1
    try:
        return _fold(out.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadDistinguishedName(f"DN value is not UTF-8: {raw[:40]!r}") from None


def _ber_content(tlv: bytes) -> tuple[int, bytes]:
    """Tag and content octets of one BER TLV (used only for ``#hex`` DN values)."""
    if len(tlv) < 2:
        raise BadDistinguishedName("truncated #hex value")
    length = tlv[1]
    start = 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or len(tlv) < 2 + n:
            raise BadDistinguishedName("bad length in #hex value")
        length = int.from_bytes(tlv[2 : 2 + n], "big")
        start = 2 + n
    if len(tlv) != start + length:
        raise BadDistinguishedName("length mismatch in #hex value")
    return tlv[0], tlv[start:]


def normalise_dn(text: str) -> DnKey:
    """An RFC 2253/4514 distinguished-name string in comparable form.

    Raises :class:`BadDistinguishedName` when the string is not a DN.
    """
    if not text or not text.strip():
        raise BadDistinguishedName("empty distinguished name")
    pairs: list[tuple[str, str]] = []
    for rdn in _split_unescaped(text, ",;"):
        for ava in _split_unescaped(rdn, "+"):
            typ, sep, raw = ava.partition("=")
            if not sep:
                raise BadDistinguishedName(f"no '=' in DN component {ava.strip()[:40]!r}")
            t = typ.strip()
            if t[:4].upper() == "OID.":
                t = t[4:]
            oid = t if _OID_RE.fullmatch(t) else _DN_KEYWORDS.get(t.upper())
            if oid is None:
                raise BadDistinguishedName(f"unknown attribute type {t[:40]!r}")
            pairs.append((oid, _ava_value(raw)))
    return tuple(sorted(pairs))


def _name_key(name: x509.Name) -> DnKey:
    pairs: list[tuple[str, str]] = []
    for attr in name:
        value = attr.value
        if isinstance(value, bytes):
            pairs.append((attr.oid.dotted_string, "#" + value.hex()))
        else:
            pairs.append((attr.oid.dotted_string, _fold(value)))
    return tuple(sorted(pairs))


def parse_role(ou: str) -> int | None:
    """The remote-party role from a subject OU: two hex digits (``89``), or legacy decimal (``137``).

    ASCII digits only: ``int()`` alone would also read ``+9``, ``-9`` or other scripts' digits.
    """
    s = ou.strip(" ")
    if not s.isascii():
        return None
    if len(s) == 2:
        return int(s, 16) if _HEXPAIR.fullmatch(s) else None
    if s.isdigit() and int(s) <= 0xFF:
        return int(s)
    return None


def _role(cert: x509.Certificate) -> tuple[int | None, bool]:
    """The certificate's role, and whether it is ambiguous. An SMKI organisation certificate names its
    role in exactly one subject OU; with several (``OU=02`` and ``OU=89``: which would a relying party
    read?) none of them is taken, so the certificate is trusted for no role."""
    ous = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if len(ous) != 1:
        return None, len(ous) > 1
    (ou,) = ous
    return (parse_role(ou) if isinstance(ou, str) else None), False


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, slots=True)
class SmkiCertificate:
    """One SMKI certificate with everything verification needs pre-computed (and cached)."""

    certificate: x509.Certificate
    public_key: ec.EllipticCurvePublicKey
    serial: int
    issuer: str  # RFC 4514, as cryptography renders it (same as Java's RFC 2253 form for SMKI names)
    issuer_key: DnKey
    subject: str
    subject_eui: int | None
    role: int | None  # None unless the subject has exactly one OU and it is a role
    role_ambiguous: bool  # the subject has several OUs: no role is taken (policy: certificate_role_ambiguous)
    digital_signature: bool
    key_agreement: bool
    ecdsa_sha256: bool
    not_before: datetime
    not_after: datetime
    name: str
    private_key: ec.EllipticCurvePrivateKey | None = None
    #: the subject names several EUIs (x500UniqueIdentifier): ``subject_eui`` is None, the signer no one
    eui_ambiguous: bool = False

    @classmethod
    def from_x509(
        cls, cert: x509.Certificate, *, name: str = "", private_key: ec.EllipticCurvePrivateKey | None = None
    ) -> SmkiCertificate:
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
            raise UnusableCertificate(f"{name or cert.serial_number}: not an EC P-256 certificate")
        euis: set[int] = set()
        for attr in cert.subject.get_attributes_for_oid(_OID_UNIQUE_ID):
            raw = attr.value
            if isinstance(raw, bytes) and len(raw) == 9 and raw[0] == 0:  # unused-bits octet + 8 octets
                euis.add(int.from_bytes(raw[1:], "big"))
            elif isinstance(raw, bytes) and len(raw) == 8:
                euis.add(int.from_bytes(raw, "big"))
        # two EUIs in one subject: whose certificate is it? No one's (as with two OUs, no role is read)
        eui = next(iter(euis)) if len(euis) == 1 else None
        role, role_ambiguous = _role(cert)
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            ds, ka = ku.digital_signature, ku.key_agreement
        except x509.ExtensionNotFound:
            ds = ka = False
        if private_key is not None and private_key.public_key().public_numbers() != pub.public_numbers():
            raise UnusableCertificate(f"{name}: private key does not match the certificate")
        return cls(
            certificate=cert,
            public_key=pub,
            serial=cert.serial_number,
            issuer=cert.issuer.rfc4514_string(),
            issuer_key=_name_key(cert.issuer),
            subject=cert.subject.rfc4514_string(),
            subject_eui=eui,
            role=role,
            role_ambiguous=role_ambiguous,
            digital_signature=ds,
            key_agreement=ka,
            ecdsa_sha256=cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            name=name,
            private_key=private_key,
            eui_ambiguous=len(euis) > 1,
        )

    def valid_at(self, when: datetime) -> bool:
        """Whether ``when`` (timezone-aware) lies inside the certificate's validity period."""
        return self.not_before <= when <= self.not_after

    def with_private_key(self, key: ec.EllipticCurvePrivateKey) -> SmkiCertificate:
        return SmkiCertificate.from_x509(self.certificate, name=self.name, private_key=key)


def _load_cert_bytes(data: bytes, label: str) -> list[x509.Certificate]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                return x509.load_pem_x509_certificates(data)
            return [x509.load_der_x509_certificate(data)]
        except ValueError as exc:
            raise UnusableCertificate(f"{label}: {str(exc)[:120]}") from None


def _load_key_bytes(data: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UnusableCertificate(
            f"{label}: not an unencrypted PKCS#8 private key ({str(exc)[:80]})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UnusableCertificate(f"{label}: not an EC private key")
    return key


def _stem(filename: str) -> str:
    low = filename.lower()
    for suffix in (".key.pem", ".key.der", ".pem", ".crt", ".cer", ".der", ".key"):
        if low.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def _pub_id(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


# --------------------------------------------------------------------------------------------
# Revocation lists
# --------------------------------------------------------------------------------------------

_CRL_SUFFIXES = (".crl", ".arl", ".crl.pem", ".arl.pem", ".crl.der", ".arl.der")


def _is_crl_file(name: str) -> bool:
    return name.lower().endswith(_CRL_SUFFIXES)


_CERT_SUFFIXES = (".pem", ".crt", ".cer", ".der", ".key")


@dataclass(frozen=True, slots=True)
class _File:
    """One file of an SMKI source as read: its name and bytes, or why it could not be read."""

    name: str
    data: bytes = b""
    error: str = ""


def _read_directory(root: Path) -> list[_File]:
    """The files of a certificate folder the store reads (certificates, keys, lists), sorted by name."""
    if not root.is_dir():
        raise SmkiError(f"certificate directory {root} does not exist")
    out: list[_File] = []
    try:
        for f in sorted(root.iterdir()):
            if not f.is_file():
                continue
            if _is_crl_file(f.name) or f.suffix.lower() in _CERT_SUFFIXES:
                out.append(_File(f.name, f.read_bytes()))
    except OSError as exc:
        raise SmkiError(f"certificate directory {root}: {exc.strerror or exc}") from None
    return out


def _read_crl_files(root: Path) -> list[_File]:
    """The revocation list files of ``root`` (a folder: its list files; a file: that file, whatever its
    name); a file that cannot be read is kept with its error (refused when added)."""
    if root.is_dir():
        try:
            files = [f for f in sorted(root.iterdir()) if f.is_file()]
        except OSError as exc:
            raise SmkiError(f"CRL path {root}: {exc.strerror or exc}") from None
    elif root.is_file():
        files = [root]
    else:
        raise SmkiError(f"CRL path {root} does not exist")
    out: list[_File] = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            out.append(_File(f.name, error=str(exc.strerror or exc)))
            continue
        if f is root or _is_crl_file(f.name) or b"-----BEGIN X509 CRL-----" in data:
            out.append(_File(f.name, data))
    return out


def _load_crl_bytes(data: bytes, label: str) -> x509.CertificateRevocationList:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if b"-----BEGIN X509 CRL-----" in data:
                return x509.load_pem_x509_crl(data)
            return x509.load_der_x509_crl(data)
        except ValueError as exc:
            raise UnusableCrl(f"{label}: not an X.509 CRL ({str(exc)[:100]})") from None


def _key_id(cert: x509.Certificate) -> bytes | None:
    """The certificate's Subject Key Identifier, or the RFC 5280 method-1 one computed from its key."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        pass
    except ValueError:
        return None
    try:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    except (ValueError, TypeError):
        return None


def _may_sign_crls(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
    except x509.ExtensionNotFound:
        return True  # no keyUsage: not restricted (RFC 5280 4.2.1.3)
    except ValueError:
        return False


#: List extensions the gateway processes or may ignore (any other marked critical refuses the list, RFC 5280
#: §5.2); the issuingDistributionPoint and deltaCRLIndicator are judged by :func:`_crl_scope`.
_LIST_EXTENSIONS_KNOWN = (
    x509.AuthorityKeyIdentifier,
    x509.CRLNumber,
    x509.IssuerAlternativeName,
    x509.FreshestCRL,
    x509.AuthorityInformationAccess,
)
#: Entry extensions the gateway processes or may ignore (the reason and invalidity date: revoked is revoked).
_ENTRY_EXTENSIONS_KNOWN = (x509.CRLReason, x509.InvalidityDate)


@dataclass(frozen=True, slots=True)
class CrlScope:
    """Which certificates of its issuer a list speaks for (its issuingDistributionPoint, RFC 5280 §5.2.5).

    ``kinds``: ``"all"``, ``"ca"`` (onlyContainsCACerts: an ARL) or ``"user"`` (onlyContainsUserCerts).
    ``points``: the distribution point names the list is for (empty: every certificate). A list for named
    points covers a certificate whose cRLDistributionPoints names one of them, and a certificate with no
    cRLDistributionPoints at all (a CA that partitions its lists by point must name the point in every
    certificate it issues; SMKI certificates carry none)."""

    kinds: str = "all"
    points: tuple[object, ...] = ()

    def covers(self, cert: x509.Certificate) -> bool:
        if self.kinds != "all" and (self.kinds == "ca") != _is_ca(cert):
            return False
        if not self.points:
            return True
        try:
            cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            return True
        except ValueError:
            return True  # (a malformed extension: the list is not narrowed by it; covered is the safe side)
        for point in cdp:
            names: tuple[object, ...] = tuple(point.full_name or ()) or (
                (point.relative_name,) if point.relative_name is not None else ()
            )
            if any(name in self.points for name in names):
                return True
        return False


_EVERY_CERTIFICATE = CrlScope()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        return False


def _crl_scope(crl: x509.CertificateRevocationList, label: str) -> CrlScope:
    """The certificates ``crl`` speaks for, or :class:`CrlScopeUnsupported` when it is not a complete list the
    gateway can apply (see that error); :class:`UnusableCrl` when an extension cannot be parsed."""

    def refuse(why: str) -> CrlScopeUnsupported:
        return CrlScopeUnsupported(f"{label}: {why}; not used (load the issuer's complete CRL)")

    scope = _EVERY_CERTIFICATE
    try:
        for ext in crl.extensions:
            value = ext.value
            if isinstance(value, x509.DeltaCRLIndicator):
                raise refuse(f"a delta CRL (deltaCRLIndicator: changes since base CRL {value.crl_number})")
            if isinstance(value, x509.IssuingDistributionPoint):
                if value.indirect_crl:
                    raise refuse("an indirect CRL (it may list certificates of other issuers)")
                if value.only_some_reasons is not None:
                    reasons = ", ".join(sorted(r.value for r in value.only_some_reasons))
                    raise refuse(f"it lists only some revocation reasons ({reasons})")
                if value.only_contains_attribute_certs:
                    raise refuse("it lists attribute certificates only")
                kinds = "ca" if value.only_contains_ca_certs else "all"
                kinds = "user" if value.only_contains_user_certs else kinds
                points: tuple[object, ...] = tuple(value.full_name or ()) or (
                    (value.relative_name,) if value.relative_name is not None else ()
                )
                scope = CrlScope(kinds, points)
            elif ext.critical and not isinstance(value, _LIST_EXTENSIONS_KNOWN):
                raise refuse(f"a critical extension the gateway does not process ({ext.oid.dotted_string})")
        for entry in crl:
            for ext in entry.extensions:
                value = ext.value
                if isinstance(value, x509.CertificateIssuer):
                    raise refuse(
                        f"the entry for serial {entry.serial_number} names another certificate issuer "
                        "(an indirect CRL)"
                    )
                if ext.critical and not isinstance(value, _ENTRY_EXTENSIONS_KNOWN):
                    raise refuse(
                        f"the entry for serial {entry.serial_number} has a critical extension the gateway does "
                        f"not process ({ext.oid.dotted_string})"
                    )
    except ValueError as exc:
        raise UnusableCrl(f"{label}: malformed CRL extensions ({str(exc)[:80]})") from None
    return scope


def _issued_by(cert: x509.Certificate, ca: SmkiCertificate) -> bool:
    """Whether ``ca``'s key verifies ``cert``'s signature (and the names chain)."""
    if ca.certificate is cert:
        return False
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True, slots=True)
class RevocationList:
    """One accepted CRL/ARL: its issuer (the store certificate whose key verified it) and its entries."""

    name: str
    issuer: str
    issuer_key: DnKey
    issuer_certificate: SmkiCertificate
    this_update: datetime
    next_update: datetime | None  # None: the list names none (RFC 5280 requires one): never stale
    revoked: Mapping[int, datetime]  # serial -> revocation date
    scope: CrlScope = _EVERY_CERTIFICATE  # which of the issuer's certificates it speaks for

    @property
    def vouches_until(self) -> datetime:
        """The last time the list says a certificate is good: its nextUpdate, or the end of the validity of
        the CA certificate that signed it when that comes first (a list vouches no longer than its signer)."""
        end = self.issuer_certificate.not_after
        return end if self.next_update is None or end < self.next_update else self.next_update

    @property
    def vouches_from(self) -> datetime:
        """The first time the list may be relied on: the start of its signer's validity."""
        return self.issuer_certificate.not_before

    def stale_at(self, when: datetime) -> bool:
        return when > self.vouches_until or when < self.vouches_from


@dataclass(frozen=True, slots=True)
class _Bound:
    """When the lists covering a certificate stop (or start) vouching for it, and why then."""

    at: datetime
    why: str


def _until(lists: Iterable[RevocationList]) -> _Bound:
    """The freshest of an issuer's lists: the latest :attr:`RevocationList.vouches_until`, and why."""
    best = max(lists, key=lambda crl: crl.vouches_until)
    at = best.vouches_until
    if best.next_update is not None and at == best.next_update:
        return _Bound(at, f"nextUpdate {at.isoformat()} of {best.name!r} passed")
    return _Bound(
        at,
        f"the certificate of the CA that signed {best.name!r} ({best.issuer_certificate.subject!r}, serial "
        f"{best.issuer_certificate.serial}) expired {at.isoformat()}",
    )


def _from(lists: Iterable[RevocationList]) -> _Bound:
    """The earliest :attr:`RevocationList.vouches_from` of an issuer's lists, and why."""
    best = min(lists, key=lambda crl: crl.vouches_from)
    return _Bound(
        best.vouches_from,
        f"the certificate of the CA that signed {best.name!r} ({best.issuer_certificate.subject!r}) is not "
        f"valid before {best.vouches_from.isoformat()}",
    )


@dataclass(frozen=True, slots=True)
class Revocation:
    """What the loaded lists say about one certificate (worked out once; see the module docstring)."""

    revoked_at: datetime | None  # when it (or a CA above it) was revoked; None: not revoked
    detail: str  # which serial, which list; or the lists that cover it
    #: the time after which the lists no longer say the certificate is good: the earliest, along the chain,
    #: of each issuer's freshest list's nextUpdate or the expiry of the CA certificate that signed it
    next_update: datetime | None
    #: the time before which they do not either (the latest notBefore of the CA certificates that signed them)
    not_before: datetime | None = None
    #: why ``next_update`` / ``not_before`` are what they are (for the refusal's detail)
    until_why: str = ""
    from_why: str = ""

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def stale_at(self, when: datetime) -> bool:
        """Whether the lists that cover the certificate cannot vouch for it at ``when``: past a nextUpdate,
        or outside the validity of a CA certificate that signed one of them."""
        return (self.next_update is not None and when > self.next_update) or (
            self.not_before is not None and when < self.not_before
        )

    def stale_reason(self, when: datetime) -> str:
        """Why the lists are stale at ``when`` (:meth:`stale_at`)."""
        if self.not_before is not None and when < self.not_before:
            return f"revocation list not usable at {when.isoformat()}: {self.from_why} ({self.detail})"
        return f"revocation list stale at {when.isoformat()}: {self.until_why} ({self.detail})"

    def problem(self, when: datetime | None) -> tuple[bool, str] | None:
        """None when the certificate may be relied on at ``when``; else ``(revoked, why)``: revoked, or
        (False) the covering list is stale (``when`` None: staleness is not judged)."""
        if self.revoked_at is not None:
            return True, self.detail
        if when is not None and self.stale_at(when):
            return False, self.stale_reason(when)
        return None


def _earliest(a: _Bound | None, b: _Bound | None) -> _Bound | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a.at <= b.at else b


def _latest(a: _Bound | None, b: _Bound | None) -> _Bound | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a.at >= b.at else b


def _revocation(
    revoked_at: datetime | None, detail: str, until: _Bound | None, since: _Bound | None
) -> Revocation:
    return Revocation(
        revoked_at,
        detail,
        None if until is None else until.at,
        None if since is None else since.at,
        "" if until is None else until.why,
        "" if since is None else since.why,
    )


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class CertificateStore:
    """SMKI certificates indexed by (issuer, serial), by serial and by subject EUI-64.

    ``rejected`` lists the files/entries that could not be used, each with its named error;
    ``strict=True`` on the loaders raises the first one instead.
    """

    def __init__(self, certificates: Iterable[SmkiCertificate] = ()) -> None:
        self._by_issuer_serial: dict[tuple[DnKey, int], SmkiCertificate] = {}
        #: other certificates under a key of ``_by_issuer_serial`` (another CA whose name compares equal
        #: issued the same serial): held too, see :meth:`twins`
        self._twins: dict[tuple[DnKey, int], list[SmkiCertificate]] = {}
        self._by_serial: dict[int, list[SmkiCertificate]] = {}
        self._by_eui: dict[int, list[SmkiCertificate]] = {}
        self._dn_cache: dict[str, DnKey] = {}
        self._found: dict[tuple[str, int], SmkiCertificate] = {}  # (issuer string, serial) -> hit
        self._by_subject: dict[DnKey, list[SmkiCertificate]] = {}
        self._crls: dict[DnKey, list[RevocationList]] = {}  # issuer -> its accepted lists
        self._revocation: dict[SmkiCertificate, Revocation] = {}  # certificates the lists cover
        self._x509_revocation: dict[int, tuple[x509.Certificate, Revocation | None]] = {}  # id(cert) ->
        self.rejected: list[tuple[str, SmkiError]] = []
        for c in certificates:
            self.add(c)

    # -- building ---------------------------------------------------------------------------

    def add(self, cert: SmkiCertificate) -> None:
        """Hold ``cert``. The same certificate twice (the same DER, e.g. from the directory and from
        keystore.json) is held once, the copy with a private key kept. A *different* certificate under an
        issuer and serial already held - another CA whose name compares equal to the first one's (issuer
        names are matched semantically: attribute order, case and spacing do not count), or a CA that
        reused a serial - is held beside it (:meth:`twins`): the signature says which one signed, and
        neither may silently take the other's place (its genuine signatures would all fail)."""
        self._found.clear()
        key = (cert.issuer_key, cert.serial)
        old = self._by_issuer_serial.get(key)
        if old is not None:
            held = [old, *self._twins.get(key, ())]
            same = next((c for c in held if c.certificate == cert.certificate), None)
            if same is None:
                self._twins.setdefault(key, []).append(cert)
                self._index(cert)
                return
            if same.private_key is not None or cert.private_key is None:
                return  # same certificate twice (e.g. directory and keystore.json): keep the one with a key
            self._remove(same)
            if same is not old:
                twins = self._twins[key]
                twins[twins.index(same)] = cert
                self._index(cert)
                return
        self._by_issuer_serial[key] = cert
        self._index(cert)

    def _index(self, cert: SmkiCertificate) -> None:
        self._by_serial.setdefault(cert.serial, []).append(cert)
        if cert.subject_eui is not None:
            self._by_eui.setdefault(cert.subject_eui, []).append(cert)
        self._by_subject.setdefault(_name_key(cert.certificate.subject), []).append(cert)
        if self._crls:
            self._rebuild_revocation()

    def _remove(self, cert: SmkiCertificate) -> None:
        self._by_serial[cert.serial].remove(cert)
        if cert.subject_eui is not None:
            self._by_eui[cert.subject_eui].remove(cert)
        self._by_subject[_name_key(cert.certificate.subject)].remove(cert)

    # -- revocation lists -------------------------------------------------------------------

    def add_crl(self, crl: x509.CertificateRevocationList, *, name: str = "") -> RevocationList:
        """Accept ``crl`` when its signature verifies against its issuer's certificate in this store, valid at
        the list's thisUpdate (see the module docstring); raises :class:`CrlIssuerUnknown`,
        :class:`CrlSignatureInvalid` or :class:`CrlIssuerNotValid` otherwise."""
        label = name or crl.issuer.rfc4514_string()
        issuer_key = _name_key(crl.issuer)
        candidates = self._by_subject.get(issuer_key, [])
        try:
            aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except x509.ExtensionNotFound:
            aki = None
        except ValueError as exc:
            raise UnusableCrl(f"{label}: malformed CRL extensions ({str(exc)[:80]})") from None
        if aki is not None:
            candidates = [c for c in candidates if _key_id(c.certificate) == aki]
        candidates = [c for c in candidates if _may_sign_crls(c.certificate)]
        if not candidates:
            raise CrlIssuerUnknown(
                f"{label}: no certificate in the store may sign CRLs for {crl.issuer.rfc4514_string()!r}"
                + (f" with key identifier {aki.hex()}" if aki is not None else "")
            )
        verified = [c for c in candidates if crl.is_signature_valid(c.public_key)]
        if not verified:
            raise CrlSignatureInvalid(
                f"{label}: signature does not verify against {crl.issuer.rfc4514_string()!r}'s certificate"
            )
        this_update = crl.last_update_utc
        # The signer must have been valid when it issued the list (the list's own thisUpdate, a fact of the
        # bytes: every process builds the same store from them, with no clock); the module docstring says why
        # that time, and how the end of the signer's validity bounds the list's at the checking time.
        in_force = [c for c in verified if c.valid_at(this_update)]
        if not in_force:
            c = verified[0]
            raise CrlIssuerNotValid(
                f"{label}: signed by {c.subject!r} (serial {c.serial}), whose certificate is valid "
                f"{c.not_before.isoformat()} to {c.not_after.isoformat()}, not at the list's thisUpdate "
                f"{this_update.isoformat()}"
            )
        issuer = max(in_force, key=lambda c: c.not_after)  # (one key certified twice: the longest-lived)
        scope = _crl_scope(crl, label)
        revoked: dict[int, datetime] = {}
        for entry in crl:
            when = entry.revocation_date_utc
            revoked[entry.serial_number] = min(when, revoked.get(entry.serial_number, when))
        accepted = RevocationList(
            name=label,
            issuer=crl.issuer.rfc4514_string(),
            issuer_key=issuer_key,
            issuer_certificate=issuer,
            this_update=this_update,
            next_update=crl.next_update_utc,
            revoked=revoked,
            scope=scope,
        )
        self._crls.setdefault(issuer_key, []).append(accepted)
        self._rebuild_revocation()
        return accepted

    def load_crls(self, path: str | Path, *, strict: bool = False) -> CertificateStore:
        """Add the CRL file ``path``, or every CRL file of the folder ``path`` (``*.crl``, ``*.arl``,
        ``*.crl.pem`` ..., and ``.pem`` files holding ``BEGIN X509 CRL``). Refused lists go to ``rejected``
        (``strict``: the first raises). Load the issuers' certificates first."""
        return self._add_crl_files(_read_crl_files(Path(path)), strict)

    def _add_crl_files(self, files: Iterable[_File], strict: bool) -> CertificateStore:
        for f in files:
            if f.error:
                self._reject(f.name, UnusableCrl(f"{f.name}: {f.error}"), strict)
                continue
            try:
                self.add_crl(_load_crl_bytes(f.data, f.name), name=f.name)
            except SmkiError as err:
                self._reject(f.name, err, strict)
        return self

    @property
    def crls(self) -> list[RevocationList]:
        """The accepted lists (in the order they were added per issuer)."""
        return [crl for lists in self._crls.values() for crl in lists]

    def crl_next_updates(self) -> dict[str, datetime | None]:
        """Per issuer (RFC 4514) with a list loaded: the last time its freshest list vouches for a certificate
        (its nextUpdate, or the expiry of the CA certificate that signed it when that comes first)."""
        return {lists[0].issuer: _until(lists).at for lists in self._crls.values()}

    def _status(
        self, issuer_key: DnKey, serial: int, cert: x509.Certificate, depth: int = 0
    ) -> Revocation | None:
        """What the lists say about the certificate ``cert`` (issuer ``issuer_key``, ``serial``), including
        the CA certificates above it that the store holds; None when no list covers any of them."""
        covered = False
        until: _Bound | None = None
        since: _Bound | None = None
        details: list[str] = []
        lists = [crl for crl in self._crls.get(issuer_key, ()) if crl.scope.covers(cert)]
        if lists:
            covered = True
            until, since = _until(lists), _from(lists)
            hits = [(crl.revoked[serial], crl.name) for crl in lists if serial in crl.revoked]
            if hits:
                when, name = min(hits)
                return _revocation(
                    when, f"serial {serial} revoked {when.isoformat()} on {name!r}", until, since
                )
            details.append(f"not on {', '.join(repr(crl.name) for crl in lists)}")
        if depth < 8:
            for ca in self._by_subject.get(issuer_key, []):
                if not _issued_by(cert, ca):
                    continue
                above = self._status(ca.issuer_key, ca.serial, ca.certificate, depth + 1)
                if above is None:
                    continue
                above_until = (
                    None if above.next_update is None else _Bound(above.next_update, above.until_why)
                )
                above_since = None if above.not_before is None else _Bound(above.not_before, above.from_why)
                if above.revoked_at is not None:
                    return _revocation(
                        above.revoked_at, f"issuing CA {ca.subject!r} revoked: {above.detail}", above_until,
                        above_since,
                    )  # fmt: skip
                covered = True
                until = _earliest(until, above_until)
                since = _latest(since, above_since)
                details.append(f"issuing CA {ca.subject!r}: {above.detail}")
        if not covered:
            return None
        return _revocation(None, "; ".join(details), until, since)

    def _rebuild_revocation(self) -> None:
        status: dict[SmkiCertificate, Revocation] = {}
        for cert in self:
            found = self._status(cert.issuer_key, cert.serial, cert.certificate)
            if found is not None:
                status[cert] = found
        self._revocation = status  # (one assignment: readers see the old or the new map)
        self._x509_revocation = {}

    def revocation(self, cert: SmkiCertificate) -> Revocation | None:
        """What the lists say about a certificate of this store (None: no list covers it). One lookup."""
        return self._revocation.get(cert)

    def revocation_problem(self, cert: x509.Certificate, at: datetime | None) -> tuple[bool, str] | None:
        """For a certificate held elsewhere (a supplier's GBCS DS certificate): None when it may be relied
        on at ``at``; else ``(revoked, why)`` (:meth:`Revocation.problem`). Worked out once per certificate
        object (bounded cache); nothing to do while no list is loaded."""
        if not self._crls:
            return None
        cache = self._x509_revocation
        hit = cache.get(id(cert))
        if hit is not None and hit[0] is cert:
            found = hit[1]
        else:
            try:
                found = self._status(_name_key(cert.issuer), cert.serial_number, cert)
            except ValueError:
                return True, "certificate issuer or serial cannot be read: not relied on"
            if len(cache) >= 4096:
                cache.clear()
            cache[id(cert)] = (cert, found)  # (holding cert keeps its id unique while cached)
        return None if found is None else found.problem(at)

    def _reject(self, label: str, err: SmkiError, strict: bool) -> None:
        if strict:
            raise err
        self.rejected.append((label, err))

    def load_directory(self, path: str | Path, *, strict: bool = False) -> CertificateStore:
        """Add every certificate (``.pem .crt .cer .der``) and private key (``.key``, PEM keys) in ``path``,
        then every revocation list (``.crl .arl .crl.pem`` ..., or a ``.pem`` holding ``BEGIN X509 CRL``)."""
        return self._add_directory_files(_read_directory(Path(path)), strict)

    def _add_directory_files(self, files: Iterable[_File], strict: bool) -> CertificateStore:
        certs: list[tuple[x509.Certificate, str]] = []
        keys: dict[bytes, ec.EllipticCurvePrivateKey] = {}
        crls: list[tuple[bytes, str]] = []
        for f in files:
            if _is_crl_file(f.name):
                crls.append((f.data, f.name))
                continue
            data = f.data
            try:
                if b"-----BEGIN X509 CRL-----" in data:
                    crls.append((data, f.name))
                elif b"PRIVATE KEY-----" in data or f.name.lower().endswith(".key"):
                    k = _load_key_bytes(data, f.name)
                    keys[_pub_id(k.public_key())] = k
                else:
                    certs.extend((c, _stem(f.name)) for c in _load_cert_bytes(data, f.name))
            except SmkiError as err:
                self._reject(f.name, err, strict)
        for c, stem in certs:
            try:
                pub = c.public_key()
                paired = keys.get(_pub_id(pub)) if isinstance(pub, ec.EllipticCurvePublicKey) else None
                self.add(SmkiCertificate.from_x509(c, name=stem, private_key=paired))
            except SmkiError as err:
                self._reject(stem, err, strict)
        for data, label in crls:  # after every certificate: a list's issuer must be held to check it
            try:
                self.add_crl(_load_crl_bytes(data, label), name=label)
            except SmkiError as err:
                self._reject(label, err, strict)
        return self

    def load_keystore_json(self, path: str | Path, *, strict: bool = False) -> CertificateStore:
        """Add the entries of a DCC Boxed ``keystore.json`` (certificates with their PEM private keys)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UnusableKeystore(f"{path}: {str(exc)[:120]}") from None
        return self._add_keystore_json(data, str(path), strict)

    def _add_keystore_json(self, data: bytes, path: str, strict: bool) -> CertificateStore:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise UnusableKeystore(f"{path}: {str(exc)[:120]}") from None
        if not isinstance(doc, dict):
            raise UnusableKeystore(f"{path}: top level must be an object keyed by EUI-64")
        for eui_hex, usages in doc.items():
            if not isinstance(usages, dict):
                self._reject(str(eui_hex), UnusableKeystore(f"entry {eui_hex!r} is not an object"), strict)
                continue
            for usage, entries in usages.items():
                if not isinstance(entries, dict):
                    continue
                for serial_text, entry in entries.items():
                    label = f"{eui_hex}/{usage}/{serial_text}"
                    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                        label = str(entry["name"])
                    try:
                        self.add(self._keystore_entry(entry, serial_text, label))
                    except SmkiError as err:
                        self._reject(label, err, strict)
        return self

    @staticmethod
    def _keystore_entry(entry: Any, serial_text: str, label: str) -> SmkiCertificate:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("certificate"), str):
            raise UnusableKeystore(f"{label}: no certificate")
        certs = _load_cert_bytes(entry["certificate"].encode(), label)
        if len(certs) != 1:
            raise UnusableKeystore(f"{label}: expected one certificate, found {len(certs)}")
        cert = certs[0]
        if str(cert.serial_number) != str(serial_text).strip():
            raise UnusableKeystore(f"{label}: key {serial_text} differs from the certificate serial")
        key = None
        if isinstance(entry.get("privateKey"), str):
            key = _load_key_bytes(entry["privateKey"].encode(), label)
        sc = SmkiCertificate.from_x509(cert, name=label, private_key=key)
        role = entry.get("role")
        if isinstance(role, int) and sc.role is not None and role != sc.role:
            raise UnusableKeystore(f"{label}: role {role} differs from the certificate's OU ({sc.role})")
        return sc

    @classmethod
    def from_directory(cls, path: str | Path, *, strict: bool = False) -> CertificateStore:
        return cls().load_directory(path, strict=strict)

    @classmethod
    def from_keystore_json(cls, path: str | Path, *, strict: bool = False) -> CertificateStore:
        return cls().load_keystore_json(path, strict=strict)

    @classmethod
    def from_path(
        cls, path: str | Path, *, strict: bool = False, crls: Iterable[str | Path] = ()
    ) -> CertificateStore:
        """A directory of PEM/DER files (its CRLs included), a ``keystore.json``, or a single certificate
        file; then the revocation lists of ``crls`` (each a CRL file or a folder: :meth:`load_crls`)."""
        return SmkiMaterial.read(path, crls=crls).build(strict=strict)

    # -- lookups ----------------------------------------------------------------------------

    def issuer_key(self, issuer_name: str) -> DnKey:
        """``normalise_dn`` with a small cache (issuer strings repeat on every message)."""
        key = self._dn_cache.get(issuer_name)
        if key is None:
            key = normalise_dn(issuer_name)
            if len(self._dn_cache) < 1024:
                self._dn_cache[issuer_name] = key
        return key

    def find(self, issuer_name: str, serial: int) -> SmkiCertificate | None:
        """The certificate with this issuer (RFC 2253/4514 string, compared semantically) and serial."""
        hit = self._found.get((issuer_name, serial))
        if hit is not None:  # the same signer's strings on every message: one dict lookup
            return hit
        cert = self._by_issuer_serial.get((self.issuer_key(issuer_name), serial))
        if cert is not None and len(self._found) < 1024:  # only hits are remembered, never misses
            self._found[(issuer_name, serial)] = cert
        return cert

    def get(self, issuer_key: DnKey, serial: int) -> SmkiCertificate | None:
        """The certificate with this (normalised) issuer and serial."""
        return self._by_issuer_serial.get((issuer_key, serial))

    def by_serial(self, serial: int) -> list[SmkiCertificate]:
        return list(self._by_serial.get(serial, ()))

    def by_eui(self, eui: int, role: int | None = None) -> list[SmkiCertificate]:
        return [c for c in self._by_eui.get(eui, ()) if role is None or c.role == role]

    def signing_credential(self, eui: int, role: int, at: datetime | None = None) -> SmkiCertificate | None:
        """A certificate with a private key for ``eui``/``role`` (the one valid at ``at``, newest first)."""
        found = [c for c in self.by_eui(eui, role) if c.private_key is not None and c.digital_signature]
        if at is not None:
            found = [c for c in found if c.valid_at(at)]
        return max(found, key=lambda c: c.not_after, default=None)

    def twins(self, cert: SmkiCertificate) -> tuple[SmkiCertificate, ...]:
        """The other certificates held under ``cert``'s issuer (compared semantically) and serial: usually
        none; see :meth:`add`. An XML signature naming that issuer and serial was made by whichever of them
        its value verifies against."""
        key = (cert.issuer_key, cert.serial)
        twins = self._twins.get(key)
        if not twins:
            return ()
        return tuple(c for c in (self._by_issuer_serial[key], *twins) if c is not cert)

    def __len__(self) -> int:
        return len(self._by_issuer_serial) + sum(len(t) for t in self._twins.values())

    def __iter__(self) -> Iterator[SmkiCertificate]:
        return iter([*self._by_issuer_serial.values(), *(c for t in self._twins.values() for c in t)])


# --------------------------------------------------------------------------------------------
# Store material (reload)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmkiMaterial:
    """The bytes a :class:`CertificateStore` is built from, read once from the configured paths.

    The gateway reads it (the only I/O), builds its store from it, and hands the *same* material to its
    worker processes (picklable: names and bytes), so that every process builds the same store generation
    from the same bytes - never from a folder that changed in between. ``digest`` names a generation."""

    #: the certificates path as configured (messages only)
    source: str
    #: how ``certificates`` is read: a folder of files, a DCC Boxed keystore.json, or one certificate file
    layout: str  # "directory" | "keystore" | "file"
    certificates: tuple[_File, ...]
    #: revocation lists beyond the certificates folder (``[pipeline] crl_dir``), one tuple per path
    crls: tuple[tuple[_File, ...], ...] = ()

    @classmethod
    def read(cls, certificates: str | Path, *, crls: Iterable[str | Path] = ()) -> SmkiMaterial:
        """Read the files (raises :class:`SmkiError` when the certificates cannot be read at all)."""
        p = Path(certificates)
        if p.is_dir():
            layout, files = "directory", tuple(_read_directory(p))
        else:
            try:
                data = p.read_bytes()
            except OSError as exc:
                if p.suffix.lower() == ".json":
                    raise UnusableKeystore(f"{p}: {str(exc)[:120]}") from None
                raise SmkiError(f"{p}: {exc.strerror}") from None
            layout = "keystore" if p.suffix.lower() == ".json" else "file"
            files = (_File(p.name, data),)
        return cls(str(p), layout, files, tuple(tuple(_read_crl_files(Path(c))) for c in crls))

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 over the layout, names and bytes (equal digests: the same store)."""
        h = hashlib.sha256(self.layout.encode())
        for group in (self.certificates, *self.crls):
            h.update(b"\x00group")
            for f in group:
                for part in (f.name.encode(), f.data, f.error.encode()):
                    h.update(len(part).to_bytes(8, "big"))
                    h.update(part)
        return h.hexdigest()

    def build(self, *, strict: bool = False) -> CertificateStore:
        """The store (no I/O: everything was read by :meth:`read`)."""
        store = CertificateStore()
        if self.layout == "directory":
            store._add_directory_files(self.certificates, strict)
        elif self.layout == "keystore":
            [f] = self.certificates
            store._add_keystore_json(f.data, self.source, strict)
        else:
            [f] = self.certificates
            for c in _load_cert_bytes(f.data, f.name):
                store.add(SmkiCertificate.from_x509(c, name=_stem(f.name)))
        for group in self.crls:
            store._add_crl_files(group, strict)
        return store


def replacement_problem(current: CertificateStore, candidate: CertificateStore) -> str | None:
    """Why ``candidate`` (built on a reload) must not replace the store in force, ``current``; None when it
    may. Refused: a candidate without a single usable certificate, and a candidate with refused files
    (unreadable, unusable certificates or keys, refused revocation lists) that would drop a certificate or an
    issuer's revocation lists in force - a list that cannot be read must never take a good one away (the
    certificates it covers would no longer be checked). Files removed from the folder without any refusal
    are the operator's decision (they go)."""
    if len(candidate) == 0:
        return "no usable SMKI certificate in the new material"
    if not candidate.rejected:
        return None
    lost_certs = [c for c in current if candidate.get(c.issuer_key, c.serial) is None]
    covered = {crl.issuer_key for crl in candidate.crls}
    lost_lists = sorted({crl.issuer for crl in current.crls if crl.issuer_key not in covered})
    if not (lost_certs or lost_lists):
        return None
    refused = ", ".join(f"{label} ({err.code})" for label, err in candidate.rejected[:5])
    lost = [f"{len(lost_certs)} certificate(s) in force"] if lost_certs else []
    if lost_lists:
        lost.append("the revocation lists in force of " + "; ".join(repr(i) for i in lost_lists))
    return f"{len(candidate.rejected)} file(s) refused ({refused}) and the new material would drop " + (
        " and ".join(lost)
    )


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------


#: A ``trust_expired`` entry: ``(issuer in comparable form, serial)``, or a bare serial (any issuer).
TrustEntry = int | tuple[DnKey, int]

_MAX_SERIAL = 1 << 160  # RFC 5280: a certificate serial is at most 20 octets


def parse_trust_entry(entry: str | int) -> TrustEntry:
    """One ``trust_expired`` entry: ``"ISSUER#SERIAL"`` -> ``(issuer key, serial)``, ``"SERIAL"`` -> serial.

    ``ISSUER`` is an RFC 2253/4514 distinguished name (``CN=Z1,OU=07``), compared with the certificate's
    issuer the way :meth:`CertificateStore.find` compares them (attribute order, spacing and case do not
    matter); the serial is decimal, after the *last* ``#`` (a DN value may itself be ``#hex``). An int
    (from a TOML array) is a bare serial. Raises :class:`BadTrustEntry`, naming what is wrong.
    """
    if isinstance(entry, bool) or not isinstance(entry, int | str):
        raise BadTrustEntry(f"expected a string, got {entry!r}")
    text = str(entry).strip()
    issuer_text, sep, serial_text = text.rpartition("#")
    if not (serial_text.isascii() and serial_text.isdigit()):
        raise BadTrustEntry(
            f"{text[:80]!r}: expected a decimal certificate serial or ISSUER#SERIAL (e.g. 'CN=Z1,OU=07#1234')"
        )
    digits = serial_text.lstrip("0") or "0"
    serial = int(digits) if len(digits) <= 49 else _MAX_SERIAL  # (no int() of a thousand digits)
    if serial >= _MAX_SERIAL:
        raise BadTrustEntry(f"{text[:80]!r}: serial longer than 20 octets (RFC 5280)")
    if not sep:
        return serial
    if not issuer_text.strip():
        raise BadTrustEntry(f"{text[:80]!r}: empty issuer before '#'")
    try:
        return (normalise_dn(issuer_text), serial)
    except BadDistinguishedName as exc:
        raise BadTrustEntry(f"{text[:80]!r}: issuer is not a distinguished name ({exc.message})") from None


def parse_trust_expired(entries: Iterable[str | int]) -> frozenset[TrustEntry]:
    """Every entry through :func:`parse_trust_entry` (the first bad one raises :class:`BadTrustEntry`)."""
    return frozenset(parse_trust_entry(e) for e in entries)


class PolicyReason(StrEnum):
    OK = "ok"
    NO_RULE = "no_signing_rule_for_kind"
    ROLE_NOT_ALLOWED = "role_not_allowed"
    ROLE_AMBIGUOUS = "certificate_role_ambiguous"
    SIGNER_EUI_MISMATCH = "signer_eui_mismatch"
    KEY_USAGE = "key_usage_not_digital_signature"
    CERT_ALGORITHM = "certificate_not_ecdsa_sha256"
    NOT_YET_VALID = "certificate_not_yet_valid"
    EXPIRED = "certificate_expired"


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    reason: PolicyReason
    time_valid: bool
    expired_trusted: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is PolicyReason.OK


@dataclass(frozen=True)
class SigningPolicy:
    """Which SMKI role may sign which DUIS message kind, and the validity rule.

    * ``response`` (Responses, including device and DCC alerts): the DSP XML-signing role (0x89)
      with subject EUI ``dsp_eui``;
    * ``request``: a User's XML-signing role (0x87) with subject EUI equal to the RequestID
      originator (part 1).

    Validity is checked at the time the caller passes (``verify`` uses the message's own
    ``ResponseDateTime`` by default). A certificate that has expired at that time is accepted
    only if ``trust_expired`` names it (the DCC Boxed test set has expired ones), and the
    verdict says it was: an ``(issuer key, serial)`` entry (:func:`parse_trust_entry`) names one
    certificate; a bare serial names that serial from any issuer. There is no switch that
    disables a check.
    """

    dsp_eui: int = DCC_EUI
    response_roles: frozenset[int] = frozenset({ROLE_DSP_XML_SIGN})
    request_roles: frozenset[int] = frozenset({ROLE_USER_XML_SIGN})
    trust_expired: frozenset[TrustEntry] = field(default_factory=frozenset)
    naive_time_is_utc: bool = True

    def trusts_expired(self, cert: SmkiCertificate) -> bool:
        """Whether ``trust_expired`` names ``cert``: by issuer and serial, or by a bare serial."""
        trusted = self.trust_expired
        return bool(trusted) and ((cert.issuer_key, cert.serial) in trusted or cert.serial in trusted)

    def check(
        self, cert: SmkiCertificate, kind: str, at: datetime, *, originator: int | None = None
    ) -> PolicyVerdict:
        time_valid = cert.valid_at(at)
        eui: int | None
        if kind == "response":
            roles, eui = self.response_roles, self.dsp_eui
        elif kind == "request":
            roles, eui = self.request_roles, originator
        else:
            return PolicyVerdict(PolicyReason.NO_RULE, time_valid)
        if not cert.digital_signature:
            return PolicyVerdict(PolicyReason.KEY_USAGE, time_valid)
        if not cert.ecdsa_sha256:
            return PolicyVerdict(PolicyReason.CERT_ALGORITHM, time_valid)
        if cert.role not in roles:
            reason = PolicyReason.ROLE_AMBIGUOUS if cert.role_ambiguous else PolicyReason.ROLE_NOT_ALLOWED
            return PolicyVerdict(reason, time_valid)
        if eui is None or cert.subject_eui != eui:
            return PolicyVerdict(PolicyReason.SIGNER_EUI_MISMATCH, time_valid)
        if at < cert.not_before:
            return PolicyVerdict(PolicyReason.NOT_YET_VALID, False)
        if at > cert.not_after:
            if self.trusts_expired(cert):
                return PolicyVerdict(PolicyReason.OK, False, expired_trusted=True)
            return PolicyVerdict(PolicyReason.EXPIRED, False)
        return _VERDICT_OK  # (the common outcome: one immutable instance, not one per message)


_VERDICT_OK = PolicyVerdict(PolicyReason.OK, True)


def utc(dt: datetime) -> datetime:
    """``dt`` as an aware UTC datetime (naive values are taken as UTC).

    Raises :class:`TimeOutOfRange` for a time with no UTC equivalent in years 1-9999 (e.g.
    ``0001-01-01T00:00:00+14:00``), never a bare OverflowError.
    """
    tz = dt.tzinfo
    if tz is UTC:  # already (fromisoformat gives this very object for a "Z" suffix)
        return dt
    if tz is None:
        return dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise TimeOutOfRange(f"{dt.isoformat()} has no UTC equivalent in years 1-9999") from None
