"""SMKI certificate store and the XML-signing policy.

Theory of operation
-------------------
DUIS XML signatures name their signer only by ``X509IssuerName`` + ``X509SerialNumber`` (no
certificate is embedded), so verification needs a local store of SMKI *organisation*
certificates. :class:`CertificateStore` loads them once at start-up

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
``x500UniqueIdentifier`` (OID 2.5.4.45), a BIT STRING of 8 octets.

:class:`SigningPolicy` says which role may sign which message kind and at what time the
certificate must be valid. It never switches a check off: expired *test* certificates are
accepted only by naming them in ``trust_expired`` (and the result says so). An entry names a
certificate as ``ISSUER#SERIAL`` (:func:`parse_trust_entry`: the issuer DN compared as above, the
decimal serial), the way the XML signature itself names its signer; a bare ``SERIAL`` is still
accepted and matches a certificate with that serial from *any* issuer (the older form: serials are
unique per CA only, so prefer the issuer form).

Sans-I/O: loading files is the only I/O here and happens in the ``from_*`` constructors; the
policy and lookups are pure; time is always passed in.
"""

from __future__ import annotations

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
    "PolicyReason",
    "SigningPolicy",
    "SmkiCertificate",
    "SmkiError",
    "TimeOutOfRange",
    "TrustEntry",
    "UnusableCertificate",
    "UnusableKeystore",
    "normalise_dn",
    "parse_role",
    "parse_trust_entry",
    "parse_trust_expired",
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

    @classmethod
    def from_x509(
        cls, cert: x509.Certificate, *, name: str = "", private_key: ec.EllipticCurvePrivateKey | None = None
    ) -> SmkiCertificate:
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
            raise UnusableCertificate(f"{name or cert.serial_number}: not an EC P-256 certificate")
        eui: int | None = None
        for attr in cert.subject.get_attributes_for_oid(_OID_UNIQUE_ID):
            raw = attr.value
            if isinstance(raw, bytes) and len(raw) == 9 and raw[0] == 0:  # unused-bits octet + 8 octets
                eui = int.from_bytes(raw[1:], "big")
            elif isinstance(raw, bytes) and len(raw) == 8:
                eui = int.from_bytes(raw, "big")
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
# The store
# --------------------------------------------------------------------------------------------


class CertificateStore:
    """SMKI certificates indexed by (issuer, serial), by serial and by subject EUI-64.

    ``rejected`` lists the files/entries that could not be used, each with its named error;
    ``strict=True`` on the loaders raises the first one instead.
    """

    def __init__(self, certificates: Iterable[SmkiCertificate] = ()) -> None:
        self._by_issuer_serial: dict[tuple[DnKey, int], SmkiCertificate] = {}
        self._by_serial: dict[int, list[SmkiCertificate]] = {}
        self._by_eui: dict[int, list[SmkiCertificate]] = {}
        self._dn_cache: dict[str, DnKey] = {}
        self._found: dict[tuple[str, int], SmkiCertificate] = {}  # (issuer string, serial) -> hit
        self.rejected: list[tuple[str, SmkiError]] = []
        for c in certificates:
            self.add(c)

    # -- building ---------------------------------------------------------------------------

    def add(self, cert: SmkiCertificate) -> None:
        self._found.clear()
        key = (cert.issuer_key, cert.serial)
        old = self._by_issuer_serial.get(key)
        if old is not None:
            if old.private_key is not None or cert.private_key is None:
                return  # same certificate twice (e.g. directory and keystore.json): keep the one with a key
            self._remove(old)
        self._by_issuer_serial[key] = cert
        self._by_serial.setdefault(cert.serial, []).append(cert)
        if cert.subject_eui is not None:
            self._by_eui.setdefault(cert.subject_eui, []).append(cert)

    def _remove(self, cert: SmkiCertificate) -> None:
        self._by_serial[cert.serial].remove(cert)
        if cert.subject_eui is not None:
            self._by_eui[cert.subject_eui].remove(cert)

    def _reject(self, label: str, err: SmkiError, strict: bool) -> None:
        if strict:
            raise err
        self.rejected.append((label, err))

    def load_directory(self, path: str | Path, *, strict: bool = False) -> CertificateStore:
        """Add every certificate (``.pem .crt .cer .der``) and private key (``.key``, PEM keys) in ``path``."""
        root = Path(path)
        if not root.is_dir():
            raise SmkiError(f"certificate directory {root} does not exist")
        certs: list[tuple[x509.Certificate, str]] = []
        keys: dict[bytes, ec.EllipticCurvePrivateKey] = {}
        for f in sorted(root.iterdir()):
            if not f.is_file() or f.suffix.lower() not in (".pem", ".crt", ".cer", ".der", ".key"):
                continue
            data = f.read_bytes()
            try:
                if b"PRIVATE KEY-----" in data or f.suffix.lower() == ".key":
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
        return self

    def load_keystore_json(self, path: str | Path, *, strict: bool = False) -> CertificateStore:
        """Add the entries of a DCC Boxed ``keystore.json`` (certificates with their PEM private keys)."""
        try:
            doc = json.loads(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
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
    def from_path(cls, path: str | Path, *, strict: bool = False) -> CertificateStore:
        """A directory of PEM/DER files, a ``keystore.json``, or a single certificate file."""
        p = Path(path)
        if p.is_dir():
            return cls.from_directory(p, strict=strict)
        if p.suffix.lower() == ".json":
            return cls.from_keystore_json(p, strict=strict)
        store = cls()
        try:
            for c in _load_cert_bytes(p.read_bytes(), p.name):
                store.add(SmkiCertificate.from_x509(c, name=_stem(p.name)))
        except OSError as exc:
            raise SmkiError(f"{p}: {exc.strerror}") from None
        return store

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

    def __len__(self) -> int:
        return len(self._by_issuer_serial)

    def __iter__(self) -> Iterator[SmkiCertificate]:
        return iter(list(self._by_issuer_serial.values()))


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
