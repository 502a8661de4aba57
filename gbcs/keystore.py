"""The key-store interface the GBCS verifier needs, an in-memory implementation, and EUI extraction
from SMKI certificates. Pure: loading files is :mod:`gateway.gbcs_keys`' job.

Certificates are indexed by the EUI-64 *found in the certificate* (GBCS.md §7):

* device certificates: SubjectAltName ``otherName`` hwModuleName (1.3.6.1.5.5.7.8.4) =
  ``SEQUENCE { hwType OID, hwSerialNum OCTET STRING(8) }``, the serial being the EUI;
* organisation certificates: subject attribute x500UniqueIdentifier (2.5.4.45), a BIT STRING whose
  last 8 octets are the EUI.

A certificate naming two different EUIs (two hwModuleNames, two x500UniqueIdentifiers, or one of each)
names none: which party would it be? (As a subject with several OUs has no role.) A certificate without
an EUI can still be added under an explicit EUI (e.g. taken from a file name), but the verifier
(:mod:`gbcs.crypto`) uses a certificate only for the EUI the certificate itself names, and a device's
signature only with a *device* certificate (:func:`device_certificate_eui`).

A device or organisation may have several genuine certificates for one usage at a time (a device whose
certificate was replaced - GBCS CS02 "Update Device Certificate" - signs with its new key while the SMKI
repository still lists the old certificate): a store may hold them all (:class:`CertificateLists`), and
the verifier then tries each one that passes its checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier

from gbcs.asn1 import read_tlv
from gbcs.errors import GbcsError
from gbcs.reader import Reader

__all__ = [
    "HW_MODULE_NAME",
    "ROLE_ACB",
    "ROLE_SUPPLIER",
    "X500_UNIQUE_IDENTIFIER",
    "CertificateError",
    "CertificateLists",
    "KeyStore",
    "MemoryKeyStore",
    "certificate_eui",
    "certificate_role",
    "certificate_role_code",
    "device_certificate_eui",
    "pairing_certificate",
]

HW_MODULE_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.4")
X500_UNIQUE_IDENTIFIER = ObjectIdentifier("2.5.4.45")
ORGANIZATIONAL_UNIT = ObjectIdentifier("2.5.4.11")
ROLE_ACB = "04"
ROLE_SUPPLIER = 0x02  # remote-party role code (certificate_role_code)


class CertificateError(ValueError):
    """A certificate whose extensions or EUI attribute cannot be read (malformed SubjectAltName,
    an x500UniqueIdentifier that is neither a BIT STRING nor a latin-1 string …)."""


@runtime_checkable
class KeyStore(Protocol):
    """Lookups the GBCS verifier makes. ``None`` means "not held" (a result, never an exception)."""

    def ds_certificate(self, eui: int) -> x509.Certificate | None:
        """The digital-signing certificate of the device or organisation ``eui`` (of several, the store's
        preferred one: :class:`CertificateLists` gives every one)."""
        ...

    def ka_certificate(self, eui: int) -> x509.Certificate | None:
        """The key-agreement certificate of ``eui`` (of several, the one that pairs with ``eui``'s private
        key when the store holds it: :func:`pairing_certificate`)."""
        ...

    def ka_private_key(self, eui: int) -> ec.EllipticCurvePrivateKey | None:
        """The key-agreement private key of ``eui`` (held only for the service user's own EUIs)."""
        ...


@runtime_checkable
class CertificateLists(Protocol):
    """A key store that may hold several certificates of one EUI and usage (an old and a new one after a
    certificate replacement). Each lookup answers every certificate held, the preferred one first (the one
    :meth:`KeyStore.ds_certificate` / :meth:`KeyStore.ka_certificate` answer); ``()`` means "not held".
    :class:`gbcs.crypto.Verifier` tries each of them when its key store has these lookups."""

    def ds_certificates(self, eui: int) -> tuple[x509.Certificate, ...]:
        """Every digital-signing certificate held for ``eui``."""
        ...

    def ka_certificates(self, eui: int) -> tuple[x509.Certificate, ...]:
        """Every key-agreement certificate held for ``eui``."""
        ...


def pairing_certificate(
    certs: tuple[x509.Certificate, ...], private: ec.EllipticCurvePrivateKey | None
) -> x509.Certificate | None:
    """The certificate of ``certs`` to answer for a single KA certificate of an EUI: when the store holds that
    EUI's private key, the one whose public key is the private key's (the certificate that pairs with it),
    else the first (the store's preferred one); None when ``certs`` is empty. A private key none of the
    certificates pairs with leaves the first."""
    if private is not None and len(certs) > 1:
        own = private.public_key().public_numbers()
        for cert in certs:
            try:
                pub = cert.public_key()
            except (ValueError, TypeError):  # a key type cryptography cannot load
                continue
            if isinstance(pub, ec.EllipticCurvePublicKey) and pub.public_numbers() == own:
                return cert
    return certs[0] if certs else None


def _hw_serial(other_name_value: bytes) -> bytes | None:
    try:
        r = Reader(other_name_value, 0, len(other_name_value), "hwModuleName")
        tag, s, e = read_tlv(r)
        if tag != 0x30:
            return None
        seq = Reader(other_name_value, s, e, "hwModuleName")
        tag, _, _ = read_tlv(seq)  # hwType OID
        if tag != 0x06:
            return None
        tag, s2, e2 = read_tlv(seq)
        if tag != 0x04:
            return None
        return other_name_value[s2:e2]
    except GbcsError:
        return None


def _hw_module_euis(cert: x509.Certificate) -> list[int]:
    """The EUIs of the certificate's SubjectAltName hwModuleNames (8-octet hwSerialNum), in order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError as e:  # cryptography parses every extension on first access
        raise CertificateError(f"malformed certificate extensions: {e}") from None
    out: list[int] = []
    for name in san.get_values_for_type(x509.OtherName):
        if name.type_id == HW_MODULE_NAME:
            serial = _hw_serial(name.value)
            if serial is not None and len(serial) == 8:
                out.append(int.from_bytes(serial, "big"))
    return out


def _unique_id_euis(cert: x509.Certificate) -> list[int]:
    """The EUIs of the subject's x500UniqueIdentifier attributes (the last 8 octets of each), in order."""
    out: list[int] = []
    for attr in cert.subject.get_attributes_for_oid(X500_UNIQUE_IDENTIFIER):
        v = attr.value
        try:
            raw = v if isinstance(v, bytes) else v.encode("latin-1")
        except UnicodeEncodeError:
            raise CertificateError("x500UniqueIdentifier is not a BIT STRING (non-latin-1 text)") from None
        if len(raw) >= 8:
            out.append(int.from_bytes(raw[-8:], "big"))
    return out


def certificate_eui(cert: x509.Certificate) -> int | None:
    """The EUI-64 a GBCS certificate names (device: SAN hwSerialNum; organisation: x500UniqueIdentifier);
    None when it names none, or more than one (module docstring). Raises :class:`CertificateError` when
    the extensions or the attribute are malformed."""
    named = set(_hw_module_euis(cert)) | set(_unique_id_euis(cert))
    return named.pop() if len(named) == 1 else None


def device_certificate_eui(cert: x509.Certificate) -> int | None:
    """The EUI of the device a *device* certificate is issued to: the hwSerialNum of its SubjectAltName
    hwModuleName, for a certificate that names no other EUI and whose subject names no organisation (no
    OU, no x500UniqueIdentifier: an SMKI device certificate's subject is empty); None for anything else
    (an organisation certificate, even one whose x500UniqueIdentifier is a device's EUI; a certificate
    naming no EUI or two). Raises :class:`CertificateError` when the extensions or attributes are
    malformed."""
    euis = set(_hw_module_euis(cert))
    if len(euis) != 1 or _unique_id_euis(cert) or cert.subject.get_attributes_for_oid(ORGANIZATIONAL_UNIT):
        return None
    return euis.pop()


def certificate_role(cert: x509.Certificate) -> str | None:
    """The organisation role code (subject OU, e.g. ``"02"`` supplier, ``"04"`` ACB); ``None`` for devices."""
    for attr in cert.subject.get_attributes_for_oid(ORGANIZATIONAL_UNIT):
        v = attr.value
        return v if isinstance(v, str) else v.decode("latin-1")
    return None


def certificate_role_code(cert: x509.Certificate) -> int | None:
    """The remote-party role code an organisation certificate is trusted for (0x02 Supplier, 0x03 Network
    Operator, 0x04 ACB …): its one subject OU, as two hex digits (``02``) or, as legacy certificates
    write it, decimal ASCII. ``None`` for a device certificate (no OU), an OU that is neither, or a
    subject with several OUs (which one would a relying party read? none is taken, as
    ``gateway.smki`` does for XML-signing certificates)."""
    ous = cert.subject.get_attributes_for_oid(ORGANIZATIONAL_UNIT)
    if len(ous) != 1:
        return None
    v = ous[0].value
    text = (v if isinstance(v, str) else v.decode("latin-1")).strip(" ")
    if not text.isascii() or not text.isalnum():
        return None
    if len(text) == 2:
        try:
            return int(text, 16)
        except ValueError:
            return None
    if text.isdigit() and int(text) <= 0xFF:
        return int(text)
    return None


@dataclass
class MemoryKeyStore:
    """A :class:`KeyStore` (and :class:`CertificateLists`) held in dicts. ``ds`` / ``ka`` hold the preferred
    certificate of each EUI, ``ds_more`` / ``ka_more`` the others held beside it (:meth:`add_certificate`
    with ``beside``), in order. ``acb_eui`` is the Access Control Broker's EUI (needed to check command MACs),
    set from the first KA certificate whose subject role is ``04`` unless given."""

    ds: dict[int, x509.Certificate] = field(default_factory=dict)
    ka: dict[int, x509.Certificate] = field(default_factory=dict)
    ka_private: dict[int, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    ds_private: dict[int, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    acb_eui: int | None = None
    ds_more: dict[int, list[x509.Certificate]] = field(default_factory=dict)
    ka_more: dict[int, list[x509.Certificate]] = field(default_factory=dict)

    def ds_certificate(self, eui: int) -> x509.Certificate | None:
        return self.ds.get(eui)

    def ka_certificate(self, eui: int) -> x509.Certificate | None:
        """The KA certificate of ``eui``; of several, the one that pairs with ``eui``'s private key when the
        store holds it (:func:`pairing_certificate`), else the preferred one."""
        return pairing_certificate(self.ka_certificates(eui), self.ka_private.get(eui))

    def ds_certificates(self, eui: int) -> tuple[x509.Certificate, ...]:
        first = self.ds.get(eui)
        return () if first is None else (first, *self.ds_more.get(eui, ()))

    def ka_certificates(self, eui: int) -> tuple[x509.Certificate, ...]:
        first = self.ka.get(eui)
        return () if first is None else (first, *self.ka_more.get(eui, ()))

    def ka_private_key(self, eui: int) -> ec.EllipticCurvePrivateKey | None:
        return self.ka_private.get(eui)

    def ds_private_key(self, eui: int) -> ec.EllipticCurvePrivateKey | None:
        """For fixture tools (signing test messages); not part of :class:`KeyStore`."""
        return self.ds_private.get(eui)

    def certificate_count(self) -> int:
        """How many certificates the store holds (every one of an EUI with several)."""
        return (
            len(self.ds) + len(self.ka)
            + sum(map(len, self.ds_more.values())) + sum(map(len, self.ka_more.values()))
        )  # fmt: skip

    def add_certificate(
        self,
        cert: x509.Certificate,
        usage: str,
        eui: int | None = None,
        *,
        replace: bool = False,
        beside: bool = False,
    ) -> int:
        """Index ``cert`` as ``usage`` (``"ds"`` or ``"ka"``) under the EUI it names, or ``eui`` if it names
        none. Returns the EUI used. Raises ``ValueError`` when neither is available, and
        :class:`CertificateError` (a ``ValueError``) when the certificate is malformed. A certificate
        already held for that EUI and usage is kept unless ``replace`` (then ``cert`` is the only one held);
        with ``beside`` ``cert`` is held after those already held (not when it is one of them: equal DER)."""
        found = certificate_eui(cert)
        key = found if found is not None else eui
        if key is None:
            raise ValueError("certificate names no EUI and none was given")
        if usage == "ds":
            first, more = self.ds, self.ds_more
        elif usage == "ka":
            first, more = self.ka, self.ka_more
        else:
            raise ValueError(f"usage must be 'ds' or 'ka', got {usage!r}")
        if replace or key not in first:
            first[key] = cert
            more.pop(key, None)
        elif beside and cert not in (first[key], *more.get(key, ())):
            more.setdefault(key, []).append(cert)
        if usage == "ka" and self.acb_eui is None and certificate_role(cert) == ROLE_ACB:
            self.acb_eui = key
        return key
