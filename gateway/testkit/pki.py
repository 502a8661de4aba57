"""A deterministic SMKI-shaped test PKI.

Keys are derived from text seeds (so fixtures and captures are reproducible byte for byte together
with deterministic ECDSA), and certificates mirror the shapes of the DCC SMKI:

* organisation certificates: subject ``OU=<role as hex>, x500UniqueIdentifier=<EUI-64 as BIT STRING>``,
  key usage digitalSignature, issued by an organisation CA (``OU=07, CN=<ca name>``);
* device certificates: empty subject, critical subjectAltName otherName ``hwModuleName`` (1.3.6.1.5.5.7.8.4)
  holding ``{hwType, hwSerialNum = EUI-64}``, key usage digitalSignature (DS) or keyAgreement (KA),
  issued by a device CA (``CN=<ca name>``).

The same files can be written in the two directory layouts the gateway reads: an SMKI certificate
directory for XML signatures (``--certs``) and a GBCS key store (``<eui16hex>-ds.pem`` / ``-ka.pem`` /
``.key``, as the RTDS key store) for device signatures (``--gbcs-keys``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from gbcs.eui import format_eui

__all__ = [
    "ROLE_ACB",
    "ROLE_DSP_XML_SIGN",
    "ROLE_NETWORK_OPERATOR",
    "ROLE_SUPPLIER",
    "ROLE_USER_XML_SIGN",
    "Credential",
    "TestPKI",
    "derive_key",
]

ROLE_SUPPLIER = 0x02
ROLE_NETWORK_OPERATOR = 0x03
ROLE_ACB = 0x04
ROLE_USER_XML_SIGN = 0x87
ROLE_DSP_XML_SIGN = 0x89

_HW_MODULE_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.4")
_HW_TYPE = "1.2.826.0.1.8641679.1.2.2.1"
_ORG_POLICY = ObjectIdentifier("1.2.826.0.1.8641679.1.2.1.4")
_DEVICE_POLICY = ObjectIdentifier("1.2.826.0.1.1800000.1.2.1.4")
_CURVE_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def derive_key(seed: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key derived from a text seed (test use only: the seed is the secret)."""
    scalar = int.from_bytes(hashlib.sha256(b"duisgw-test-pki:" + seed.encode()).digest(), "big")
    return ec.derive_private_key(scalar % (_CURVE_ORDER - 1) + 1, ec.SECP256R1())


def _serial(seed: str) -> int:
    return int.from_bytes(hashlib.sha256(b"serial:" + seed.encode()).digest()[:15], "big") | 1


def _der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for value in parts[2:]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body.extend(reversed(chunk))
    return bytes([0x06, len(body)]) + bytes(body)


def _hw_module_name(eui: int) -> bytes:
    """DER of ``HardwareModuleName ::= SEQUENCE { hwType OID, hwSerialNum OCTET STRING }`` (RFC 4108)."""
    inner = _der_oid(_HW_TYPE) + bytes([0x04, 0x08]) + eui.to_bytes(8, "big")
    return bytes([0x30, len(inner)]) + inner


@dataclass(frozen=True)
class Credential:
    """A certificate with its private key."""

    name: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


@dataclass
class TestPKI:
    """Issues SMKI-shaped organisation and device certificates from deterministic keys."""

    __test__ = False  # not a pytest test class

    seed: str = "duisgw"
    org_ca_name: str = "DUISGW-TEST-ORG-CA"
    device_ca_name: str = "DUISGW-TEST-DEVICE-CA"
    not_before: dt.datetime = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    not_after: dt.datetime = dt.datetime(2099, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    issued: dict[str, Credential] = field(default_factory=dict)

    def _issuer(self, org: bool) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
        if org:
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "07"),
                    x509.NameAttribute(NameOID.COMMON_NAME, self.org_ca_name),
                ]
            )
            return name, derive_key(f"{self.seed}:org-ca")
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.device_ca_name)]), derive_key(
            f"{self.seed}:device-ca"
        )

    def _build(
        self,
        name: str,
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        *,
        org: bool,
        key_agreement: bool = False,
        san: x509.SubjectAlternativeName | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Credential:
        issuer, issuer_key = self._issuer(org)
        usage = x509.KeyUsage(
            digital_signature=not key_agreement,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=key_agreement,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(_serial(f"{self.seed}:{name}"))
            .not_valid_before(not_before or self.not_before)
            .not_valid_after(not_after or self.not_after)
            .add_extension(usage, critical=True)
            .add_extension(
                x509.CertificatePolicies(
                    [x509.PolicyInformation(_ORG_POLICY if org else _DEVICE_POLICY, None)]
                ),
                critical=True,
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=True)
        cert = builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)
        cred = Credential(name, cert, key)
        self.issued[name] = cred
        return cred

    def organisation(
        self,
        name: str,
        eui: int,
        role: int,
        *,
        legacy_decimal_role: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Credential:
        """An organisation certificate (e.g. role 0x89 DSP XML signing, 0x87 user XML signing, 0x02 supplier)."""
        ou = str(role) if legacy_decimal_role else f"{role:02X}"
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                x509.NameAttribute(
                    NameOID.X500_UNIQUE_IDENTIFIER,
                    b"\x00" + eui.to_bytes(8, "big"),  # BIT STRING content: 0 unused bits + 8 octets
                    _type=x509.name._ASN1Type.BitString,
                ),
            ]
        )
        key = derive_key(f"{self.seed}:{name}")
        return self._build(name, subject, key, org=True, not_before=not_before, not_after=not_after)

    def device(self, eui: int, *, key_agreement: bool = False) -> Credential:
        """A device certificate (DS by default, KA with ``key_agreement``) naming the EUI in hwSerialNum."""
        kind = "ka" if key_agreement else "ds"
        name = f"{eui:016x}-{kind}"
        san = x509.SubjectAlternativeName([x509.OtherName(_HW_MODULE_NAME, _hw_module_name(eui))])
        key = derive_key(f"{self.seed}:{name}")
        return self._build(name, x509.Name([]), key, org=False, key_agreement=key_agreement, san=san)

    # -- the organisation CA and its revocation lists ----------------------------------------------

    def org_ca(self) -> Credential:
        """The organisation CA's own certificate (self-signed here; keyCertSign and cRLSign, with a Subject
        Key Identifier): what a relying party holds to check the CRLs the CA issues. Issued once."""
        held = self.issued.get("org-ca")
        if held is not None:
            return held
        name, key = self._issuer(True)
        usage = x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        )  # fmt: skip
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_serial(f"{self.seed}:org-ca"))
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        )
        cred = Credential("org-ca", cert, key)
        self.issued["org-ca"] = cred
        return cred

    def crl(
        self,
        revoked: list[tuple[Credential | int, dt.datetime]] | None = None,
        *,
        this_update: dt.datetime | None = None,
        next_update: dt.datetime | None = None,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
        authority_key_id: bool = True,
        extensions: list[tuple[x509.ExtensionType, bool]] | None = None,
        entry_extensions: list[tuple[x509.ExtensionType, bool]] | None = None,
    ) -> x509.CertificateRevocationList:
        """A CRL of the organisation CA revoking ``revoked`` (credentials or serials, with their revocation
        dates), signed with the CA's key (``signing_key``: another key, e.g. to forge one). ``extensions``:
        more list extensions, each with its criticality (an issuingDistributionPoint, a deltaCRLIndicator...);
        ``entry_extensions``: extensions every entry carries."""
        name, key = self._issuer(True)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(name)
            .last_update(this_update or self.not_before)
            .next_update(next_update or self.not_after)
        )
        if authority_key_id:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
            )
        for ext, critical in extensions or []:
            builder = builder.add_extension(ext, critical=critical)
        for what, when in revoked or []:
            serial = what.certificate.serial_number if isinstance(what, Credential) else what
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            for ext, critical in entry_extensions or []:
                entry = entry.add_extension(ext, critical=critical)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(signing_key or key, hashes.SHA256(), ecdsa_deterministic=True)

    # -- writing the two directory layouts ---------------------------------------------------------

    def write_smki_dir(self, path: Path, names: list[str] | None = None, *, with_keys: bool = True) -> Path:
        """Write organisation certificates (``<name>.pem``, and ``<name>.key`` PKCS#8 PEM) for ``--certs``."""
        path.mkdir(parents=True, exist_ok=True)
        for cred in self.issued.values():
            if names is not None and cred.name not in names:
                continue
            if cred.certificate.subject == x509.Name([]):
                continue
            (path / f"{cred.name}.pem").write_bytes(cred.cert_pem)
            if with_keys:
                (path / f"{cred.name}.key").write_bytes(cred.key_pem)
        return path

    def write_gbcs_keystore(self, path: Path, *, with_private: bool = False, bundle: bool = False) -> Path:
        """Write device certificates as ``<eui16hex>-ds.pem`` / ``-ka.pem`` (``--gbcs-keys``), or all of
        them in one ``devices.certs.pem`` bundle."""
        path.mkdir(parents=True, exist_ok=True)
        devices = [c for c in self.issued.values() if c.certificate.subject == x509.Name([])]
        if bundle:
            (path / "devices.certs.pem").write_bytes(b"".join(c.cert_pem for c in devices))
        for cred in devices:
            if not bundle:
                (path / f"{cred.name}.pem").write_bytes(cred.cert_pem)
            if with_private:
                (path / f"{cred.name}.key").write_bytes(cred.key_pem)
        return path

    def describe(self) -> list[dict[str, str]]:
        out = []
        for cred in self.issued.values():
            out.append(
                {
                    "name": cred.name,
                    "subject": cred.certificate.subject.rfc4514_string() or "(device)",
                    "serial": str(cred.certificate.serial_number),
                }
            )
        return out


def eui_label(eui: int) -> str:
    return format_eui(eui)
