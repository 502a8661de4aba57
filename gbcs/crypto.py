"""GBCS signature, MAC and payload-decryption checks (GBCS.md §6), on ``cryptography``.

Theory of operation
-------------------
A :class:`Verifier` is built around a :class:`gbcs.keystore.KeyStore` and answers three questions
about a parsed :class:`gbcs.frame.Frame`, each as a :class:`Check` result, never as an exception:

* **signature** (General-Signing, 64-byte ``r‖s``): ECDSA P-256/SHA-256 over ``APDU[1:content_end]``,
  checked with the *DS certificate of the originator system title*; for a command only one remote-party
  role may send, the caller names that role and a certificate of any other (subject OU) is not usable.
  A response or an alert is a device's word (every signed CRA 2/3 frame of RTDS is a device's): it is
  checked only with a *device* certificate naming the originator (SubjectAltName hwModuleName, no
  organisation in the subject), never with an organisation certificate that names the same EUI.
* **MAC** (General-Ciphering header): static-static ECDH between two KA keys, the GBCS KDF (NIST SP
  800-56A single-step KDF with SHA-256: ``ConcatKDFHash``), then AES-128-GCM with an empty plaintext and a
  12-byte tag. Responses/alerts use the originator↔recipient pair; commands use the Access Control
  Broker↔recipient pair (KDF inputs still name the grouping-header originator).
* **decryption** of GBCS-encrypted blocks inside the payload (CRA byte ``04`` in the KDF, supplementary
  remote party/counter when present, AAD ``31``).

Outcomes: ``valid``; ``invalid`` (the check ran and failed: tampering or a wrong key); ``unverifiable``
(a needed key or certificate is not held, not usable or not valid at the checking time; the reason
says which); ``not present`` (nothing to check).

Certificate validity policy (explicit): with ``ValidityPolicy.AT_TIME`` (the default) the certificate
must be valid at the *caller-given* time ``at`` (e.g. when the message was received); no ``at`` makes
the check unverifiable. The time inside the message is never used: it is unauthenticated until the
check passes, and RTDS payloads (2015) predate their device certificates (notBefore 2016-04-06) while
the RTDS organisation certificates expire in 2025. ``ValidityPolicy.IGNORE`` skips validity checks
explicitly (offline analysis, conformance vectors); results then say ``validity not checked``.

Revocation (explicit): a verifier given a :class:`RevocationSource` (the gateway passes its SMKI
certificate store, which holds the CRLs/ARLs) asks it about every certificate before using it. A certificate
on a list (or under a revoked CA) gives ``revoked`` for a signature (``unverifiable`` for a MAC or a
decryption: the pair is not computed), at any time: the revocation date is not compared with anything in
the message. A certificate whose covering list is past its nextUpdate at ``at`` is not used
(``unverifiable``, fail-closed). A certificate no list covers is used as before (device certificates:
the SMKI publishes no CRL of them).

What a certificate must be to be used at all (DS or KA): a P-256 key, a keyUsage extension saying
digitalSignature (DS) or keyAgreement (KA) — every SMKI certificate has one; one without says nothing of
its key's use and is not used — and the EUI it is used for named *by the certificate itself* (device
hwModuleName or organisation x500UniqueIdentifier, exactly one): a key store may file a certificate that
names no EUI under a file name's EUI, and such a certificate vouches for no one.

Several certificates of one EUI (a key store with :class:`gbcs.keystore.CertificateLists` lookups: an
old and a new certificate after a device's certificate was replaced): a signature is checked with each
one that passes every check above (validity at ``at``, keyUsage, the EUI it names, device or role,
revocation), in the store's order, and is ``valid`` when one verifies; the result's reason names that
certificate (serial and notBefore). None usable: the reason of each. One or more usable and none
verifies: ``invalid``, unless the signature verifies under a held certificate that was not usable - then
that certificate's own finding (``revoked``, or ``unverifiable`` with why: expired, wrong role …), as if
it were the only one held (the key is used only to name the refused signer, never to pass a check). A MAC
or an encrypted block is tried with each usable KA certificate of the other party (the GCM tag decides);
the store's own private key is one per EUI (its single ``ka_certificate`` is the one that pairs with it).

Caching: ECDH shared secrets are cached per key pair, and what a certificate says (its P-256 public key,
the EUI and device EUI it names) per certificate, in bounded LRU dicts owned by the verifier (no
module-level mutable state).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import NamedTuple, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

from gbcs.eui import format_eui
from gbcs.frame import CRA, MAC_LENGTH, Frame, SignatureField, parse_frame, wrap_mac_header
from gbcs.keystore import (
    CertificateError,
    CertificateLists,
    KeyStore,
    certificate_eui,
    certificate_role_code,
    device_certificate_eui,
)
from gbcs.reader import EncryptedBlock
from gbcs.tables import MESSAGE_CODES, MessageCodeInfo

__all__ = [
    "Check",
    "Decryption",
    "RevocationSource",
    "Status",
    "ValidityPolicy",
    "Verifier",
    "derive_key",
    "kdf_other_info",
    "mac_wrap",
    "sign_frame",
]

ALGORITHM_ID = bytes.fromhex("60857406080300")
ENCRYPTION_CRA = 0x04
_CACHE_SIZE = 1024
_REVOKED = "revoked "  # how _usable's reason starts for a revoked certificate
_NO_INFO = MessageCodeInfo("", "", "")
#: remote-party role codes (certificate subject OU, GBCS.md §7)
_ROLE_NAMES = {
    0x00: "Root",
    0x01: "Recovery",
    0x02: "Supplier",
    0x03: "Network Operator",
    0x04: "Access Control Broker",
    0x05: "Transitional CoS",
    0x06: "WAN Provider",
    0x07: "Issuing Authority",
    0x7F: "Other",
}


class Status(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    UNVERIFIABLE = "unverifiable"
    NOT_PRESENT = "not present"
    REVOKED = "revoked"  # the signer's certificate (or a CA above it) is on a revocation list


class RevocationSource(Protocol):
    """What the verifier asks before using a certificate (``gateway.smki.CertificateStore`` answers it)."""

    def revocation_problem(self, cert: x509.Certificate, at: datetime | None) -> tuple[bool, str] | None:
        """None when ``cert`` may be relied on at ``at``; else ``(revoked, why)``: ``revoked`` True when a
        list names it (or a CA above it), False when the list that covers it is stale at ``at``."""
        ...


class ValidityPolicy(Enum):
    AT_TIME = "check certificate validity at the caller-given time"
    IGNORE = "certificate validity not checked"


@dataclass(frozen=True, slots=True)
class Check:
    status: Status
    reason: str
    key_eui: int | None = None  # whose certificate/key pair gave the result

    @property
    def ok(self) -> bool:
        return self.status is Status.VALID

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"status": self.status.value, "reason": self.reason}
        if self.key_eui is not None:
            out["key_eui"] = format_eui(self.key_eui)
        return out


@dataclass(frozen=True, slots=True)
class Decryption:
    block: EncryptedBlock
    check: Check
    plaintext: bytes | None


def kdf_other_info(originator: int, cra: int, counter: int, recipient: int) -> bytes:
    """The 33-byte KDF OtherInfo: AlgorithmID ‖ originator ‖ 09 ‖ CRA ‖ counter ‖ recipient."""
    return (
        ALGORITHM_ID
        + originator.to_bytes(8, "big")
        + b"\x09"
        + bytes((cra,))
        + counter.to_bytes(8, "big")
        + recipient.to_bytes(8, "big")
    )


def derive_key(shared_secret: bytes, other_info: bytes) -> bytes:
    """GBCS KDF: SHA-256(00000001 ‖ Z ‖ OtherInfo)[:16] (single-step KDF, one round)."""
    return ConcatKDFHash(algorithm=hashes.SHA256(), length=16, otherinfo=other_info).derive(shared_secret)


def _gcm_open(key: bytes, iv: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes | None:
    d = Cipher(algorithms.AES(key), modes.GCM(iv, tag, min_tag_length=MAC_LENGTH)).decryptor()
    d.authenticate_additional_data(aad)
    pt = d.update(ciphertext)
    try:
        return pt + d.finalize()
    except InvalidTag:
        return None


def _gcm_tag(key: bytes, iv: bytes, aad: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    e.authenticate_additional_data(aad)
    e.finalize()
    return e.tag[:MAC_LENGTH]


def sign_frame(frame_bytes: bytes, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign a General-Signing APDU (``DF …`` with an absent, null or existing signature field).

    Signs ``APDU[1:content_end]`` with ECDSA P-256/SHA-256 and returns the APDU ending in ``40 ‖ r ‖ s``.
    Raises :class:`gbcs.errors.GbcsError` for a malformed frame, ``ValueError`` for a MAC-wrapped one.
    """
    frame = parse_frame(frame_bytes)
    if frame.mac_header is not None:
        raise ValueError("sign the General-Signing APDU before wrapping it in a MAC header")
    der = private_key.sign(frame.signed_bytes, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return frame.raw[: frame.content_end] + b"\x40" + r.to_bytes(32, "big") + s.to_bytes(32, "big")


def mac_wrap(
    apdu: bytes,
    private_key: ec.EllipticCurvePrivateKey,
    peer_public_key: ec.EllipticCurvePublicKey,
    *,
    invocation_counter: int = 0,
    security_control: int = 0x11,
) -> bytes:
    """Wrap a General-Signing APDU in a MAC header whose GMAC uses ECDH(private, peer public)."""
    frame = parse_frame(apdu)
    if frame.mac_header is not None:
        raise ValueError("already MAC-wrapped")
    z = private_key.exchange(ec.ECDH(), peer_public_key)
    key = derive_key(
        z, kdf_other_info(frame.originator, frame.cra, frame.originator_counter, frame.recipient)
    )
    iv = frame.originator.to_bytes(8, "big") + invocation_counter.to_bytes(4, "big")
    aad = bytes((security_control,)) + bytes(5) + frame.raw
    tag = _gcm_tag(key, iv, aad)
    return wrap_mac_header(
        frame.raw, tag, security_control=security_control, invocation_counter=invocation_counter
    )


def _role_name(code: int) -> str:
    return _ROLE_NAMES.get(code, "unknown")


def _other_role(cert: x509.Certificate, eui: int, role: int) -> str | None:
    """None when ``cert`` (the DS certificate of ``eui``) holds exactly ``role``; else what it holds."""
    held = certificate_role_code(cert)
    if held == role:
        return None
    what = (
        "no single role (a device certificate, or several OUs)"
        if held is None
        else f"role {held:02X} ({_role_name(held)})"
    )
    return f"DS certificate for {format_eui(eui)} has {what}, not the {_role_name(role)} role {role:02X}"


def _named(cert: x509.Certificate, certs: tuple[x509.Certificate, ...]) -> str:
    """Which of several certificates of one EUI ``cert`` is (its serial and notBefore), for a result's
    reason; "" when the store holds only that one (the reason then reads as it always did)."""
    if len(certs) < 2:
        return ""
    return (
        f" (certificate serial {cert.serial_number:X}, notBefore {cert.not_valid_before_utc.isoformat()}; "
        f"{len(certs)} held)"
    )


def _which(cert: x509.Certificate | None, certs: tuple[x509.Certificate, ...]) -> str:
    """A prefix naming ``cert`` among several certificates of one EUI ("" when it is the only one)."""
    if cert is None or len(certs) < 2:
        return ""
    return f"certificate serial {cert.serial_number:X}: "


class _Facts(NamedTuple):
    """What a certificate says of itself, as the verifier uses it (cached per certificate object)."""

    cert: x509.Certificate
    public_key: ec.EllipticCurvePublicKey | None  # None: not a P-256 key (or not loadable)
    eui: int | None  # the one EUI it names (gbcs.keystore.certificate_eui)
    device_eui: int | None  # the device it is a device certificate of (device_certificate_eui)
    problem: str  # why its EUI attributes or extensions cannot be read ("" when they can)


class Verifier:
    """Checks signatures, MACs and encrypted blocks of frames against a key store."""

    def __init__(
        self,
        keystore: KeyStore,
        *,
        policy: ValidityPolicy = ValidityPolicy.AT_TIME,
        acb_eui: int | None = None,
        cache_size: int = _CACHE_SIZE,
        revocation: RevocationSource | None = None,
    ) -> None:
        self.keystore = keystore
        self.revocation = revocation
        self.policy = policy
        self.acb_eui = acb_eui
        self._cache_size = cache_size
        #: several certificates per EUI (CertificateLists), else the one of ds_certificate / ka_certificate
        self._lists = isinstance(keystore, CertificateLists)
        self._public: OrderedDict[int, _Facts] = OrderedDict()
        self._secrets: OrderedDict[tuple[int, int], tuple[object, object, bytes]] = OrderedDict()

    def with_revocation(self, revocation: RevocationSource | None) -> Verifier:
        """This verifier with another revocation source (a reloaded SMKI store); the key store and the
        caches of public keys and shared secrets are shared (they do not depend on revocation: every
        certificate is asked about before its cached key is used)."""
        other = copy.copy(self)
        other.revocation = revocation
        return other

    def with_keystore(self, keystore: KeyStore, *, acb_eui: int | None) -> Verifier:
        """This verifier (policy, revocation source) over another key store (a reloaded one), with that
        store's Access Control Broker EUI; its caches start empty (they held the old store's keys)."""
        return Verifier(
            keystore,
            policy=self.policy,
            acb_eui=acb_eui,
            cache_size=self._cache_size,
            revocation=self.revocation,
        )

    # ---------------------------------------------------------------- certificates

    def _certificates(self, usage: str, eui: int) -> tuple[x509.Certificate, ...]:
        """Every certificate of ``usage`` (``"ds"``/``"ka"``) the key store holds for ``eui``, preferred first."""
        if self._lists:
            store: CertificateLists = self.keystore  # type: ignore[assignment]  # (isinstance at __init__)
            return store.ds_certificates(eui) if usage == "ds" else store.ka_certificates(eui)
        one = self.keystore.ds_certificate(eui) if usage == "ds" else self.keystore.ka_certificate(eui)
        return () if one is None else (one,)

    def _facts(self, cert: x509.Certificate) -> _Facts:
        """What the certificate itself says (its P-256 key, the EUI it names, the device EUI it names), worked
        out once per certificate object (bounded LRU)."""
        key = id(cert)
        hit = self._public.get(key)
        if hit is not None and hit.cert is cert:
            self._public.move_to_end(key)
            return hit
        try:
            pub = cert.public_key()
        except (UnsupportedAlgorithm, ValueError):  # a curve or key type cryptography cannot load
            ec_pub = None
        else:
            ec_pub = (
                pub if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1" else None
            )
        try:
            facts = _Facts(cert, ec_pub, certificate_eui(cert), device_certificate_eui(cert), "")
        except CertificateError as e:
            facts = _Facts(cert, ec_pub, None, None, str(e))
        self._public[key] = facts  # holding cert keeps id() unique while cached
        if len(self._public) > self._cache_size:
            self._public.popitem(last=False)
        return facts

    def _usable(
        self, cert: x509.Certificate | None, eui: int, kind: str, at: datetime | None, *, device: bool = False
    ) -> tuple[ec.EllipticCurvePublicKey | None, str]:
        """The certificate's P-256 public key, or None and why not (a revoked one: why starts "revoked").

        The certificate must say what its key is for (keyUsage digitalSignature for ``DS``, keyAgreement for
        ``KA``: every SMKI certificate does) and name ``eui`` itself (a certificate a key store files under
        an EUI it does not name, or one naming two, vouches for no one); with ``device``, as a device
        certificate (:func:`gbcs.keystore.device_certificate_eui`: a device's signature is never checked
        with an organisation's certificate)."""
        label = f"{kind} certificate for {format_eui(eui)}"
        if cert is None:
            return None, f"no {label}"
        if self.revocation is not None:
            problem = self.revocation.revocation_problem(cert, at)
            if problem is not None:
                revoked, why = problem
                return None, (f"{_REVOKED}{label}: {why}" if revoked else f"{label} not usable: {why}")
        if self.policy is ValidityPolicy.AT_TIME:
            if at is None:
                return None, f"no checking time given to test the validity of the {label}"
            if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
                return None, (
                    f"{label} not valid at {at.isoformat()} "
                    f"(valid {cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})"
                )
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        except ValueError as e:  # malformed extensions (cryptography parses them all on first access)
            return None, f"{label} has malformed extensions: {e}"
        if ku is None:
            return None, f"{label} has no keyUsage extension (an SMKI certificate states its key's use)"
        if kind == "DS" and not ku.digital_signature:
            return None, f"{label} lacks keyUsage digitalSignature"
        if kind == "KA" and not ku.key_agreement:
            return None, f"{label} lacks keyUsage keyAgreement"
        facts = self._facts(cert)
        pub = facts.public_key
        if pub is None:
            return None, f"{label} does not hold a P-256 public key"
        if facts.problem:
            return None, f"{label} cannot be read: {facts.problem}"
        named = facts.device_eui if device else facts.eui
        if named != eui:
            if device:
                return None, (
                    f"{label} is not a device certificate naming it (a response or an alert is the device's "
                    f"word: only its SMKI device certificate, hwModuleName {format_eui(eui)}, vouches for it)"
                )
            return None, f"{label} does not name {format_eui(eui)} itself"
        return pub, ""

    def role_problem(self, eui: int, role: int, at: datetime | None = None) -> str | None:
        """Why the key store does not show ``eui`` holding ``role`` (e.g. :data:`gbcs.keystore.ROLE_SUPPLIER`)
        at ``at``: no DS certificate for it, one not usable then (revoked, not valid, no keyUsage, not naming
        it) or one of another role; None when it does. For a request that carries no GBCS signature of its
        own (an 11.3 CV4 request) but is evidence only when its originator may send the command."""
        certs, usable, refused = self._ds_candidates(eui, at, role, "needed")
        if usable:
            return None  # one usable certificate of that role is enough
        return "; ".join(_which(cert, certs) + why for cert, _status, why in refused)

    def _ds_candidates(
        self, eui: int, at: datetime | None, role: int | None, needs: str, *, device: bool = False
    ) -> tuple[
        tuple[x509.Certificate, ...],
        list[tuple[x509.Certificate, ec.EllipticCurvePublicKey]],
        list[tuple[x509.Certificate | None, Status, str]],
    ]:
        """The DS certificates the key store holds for ``eui``, split into those usable at ``at`` (:meth:`_usable`,
        ``device``; of ``role`` when given), with their keys, and the refused ones (``None`` alone when it holds
        none) with their status (``REVOKED`` or ``UNVERIFIABLE``) and why (another role: ``"<why> {needs}"``)."""
        certs = self._certificates("ds", eui)
        usable: list[tuple[x509.Certificate, ec.EllipticCurvePublicKey]] = []
        refused: list[tuple[x509.Certificate | None, Status, str]] = []
        for cert in certs or (None,):
            pub, why = self._usable(cert, eui, "DS", at, device=device)
            if pub is None:
                refused.append(
                    (cert, Status.REVOKED if why.startswith(_REVOKED) else Status.UNVERIFIABLE, why)
                )
                continue
            assert cert is not None
            if role is not None and (other := _other_role(cert, eui, role)) is not None:
                refused.append((cert, Status.UNVERIFIABLE, f"{other} {needs}"))
                continue
            usable.append((cert, pub))
        return certs, usable, refused

    def _validity_note(self) -> str:
        return "" if self.policy is ValidityPolicy.AT_TIME else " (certificate validity not checked)"

    # ---------------------------------------------------------------- signature

    def verify_signature(self, frame: Frame, at: datetime | None = None, *, role: int | None = None) -> Check:
        """Check the General-Signing signature with the DS certificate of the originator system title.

        ``role``: the remote-party role code (:data:`gbcs.keystore.ROLE_SUPPLIER` 0x02 …) the signer's
        certificate must hold, for a command only that role may send (CS06 is the Supplier's): a
        certificate of another role (a network operator's, a device's, one with several OUs) is not
        usable for it and the result is ``unverifiable``, however good the signature."""
        if frame.signature_field is not SignatureField.PRESENT:
            what = (
                "no signature field" if frame.signature_field is SignatureField.ABSENT else "null signature"
            )
            return Check(Status.NOT_PRESENT, what)
        eui = frame.originator
        sig = frame.signature
        assert sig is not None
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        # responses and alerts come from devices (GBCS: the device answers, the device alerts), commands
        # from remote parties: a response or an alert is checked only with a device certificate
        certs, usable, refused = self._ds_candidates(
            eui, at, role, "this command needs", device=frame.cra is not CRA.COMMAND
        )
        for cert, pub in usable:
            try:
                pub.verify(der, frame.signed_bytes, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return Check(
                Status.VALID,
                f"signed by DS key of {format_eui(eui)}{_named(cert, certs)}{self._validity_note()}",
                eui,
            )
        if len(refused) == 1 and not usable:  # the one certificate held (or none): as it says
            _cert, status, why = refused[0]
            return Check(status, why, eui)
        signer = self._refused_signer(refused, der, frame.signed_bytes)
        if signer is not None:  # the signature is by a held certificate that may not vouch for it
            cert, status, why = signer
            return Check(status, f"{why}{_named(cert, certs)}", eui)
        if usable:
            held = "" if len(usable) == 1 else f" (none of the {len(usable)} usable ones)"
            return Check(
                Status.INVALID, f"signature does not match DS certificate of {format_eui(eui)}{held}", eui
            )
        status = (
            Status.REVOKED if all(st is Status.REVOKED for _c, st, _w in refused) else Status.UNVERIFIABLE
        )
        return Check(status, "; ".join(_which(c, certs) + why for c, _st, why in refused), eui)

    def _refused_signer(
        self, refused: list[tuple[x509.Certificate | None, Status, str]], der: bytes, signed: bytes
    ) -> tuple[x509.Certificate, Status, str] | None:
        """Of the held certificates that were not usable, the one whose key verifies the signature (so the
        result names the real signer's finding: revoked, expired …), if any. Never makes a check pass."""
        for cert, status, why in refused:
            if cert is None:
                continue
            try:
                pub = self._facts(cert).public_key
                if pub is None:
                    continue
                pub.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            except (InvalidSignature, ValueError):  # (a certificate whose attributes cannot be read)
                continue
            return cert, status, why
        return None

    # ---------------------------------------------------------------- key agreement

    def _secrets_of(
        self, priv_eui: int, pub_eui: int, at: datetime | None
    ) -> tuple[list[tuple[bytes, str]], str]:
        """The ECDH shared secrets of ``priv_eui``'s private key with each usable KA certificate of
        ``pub_eui`` (several after a certificate replacement: the GCM tag tells which one the other party
        used), each with a label naming the pair; none: why."""
        priv = self.keystore.ka_private_key(priv_eui)
        if priv is None:
            return [], f"no KA private key for {format_eui(priv_eui)}"
        certs = self._certificates("ka", pub_eui)
        out: list[tuple[bytes, str]] = []
        problems: list[str] = []
        for cert in certs or (None,):
            pub, why = self._usable(cert, pub_eui, "KA", at)
            if pub is None:
                problems.append(_which(cert, certs) + why)
                continue
            assert cert is not None
            key = (id(priv), id(pub))
            hit = self._secrets.get(key)
            if hit is not None and hit[0] is priv and hit[1] is pub:
                self._secrets.move_to_end(key)
                z = hit[2]
            else:
                z = priv.exchange(ec.ECDH(), pub)
                self._secrets[key] = (priv, pub, z)
                if len(self._secrets) > self._cache_size:
                    self._secrets.popitem(last=False)
            out.append((z, f"{format_eui(priv_eui)} private × {format_eui(pub_eui)} KA{_named(cert, certs)}"))
        return out, "; ".join(problems)

    def _try_pairs(
        self, pairs: list[tuple[int, int]], at: datetime | None, attempt: object
    ) -> tuple[Status, str, int | None, bytes | None]:
        """Run ``attempt(z) -> result|None`` for each computable pair; VALID on the first success."""
        missing: list[str] = []
        tried: list[str] = []
        for priv_eui, pub_eui in pairs:
            secrets, why = self._secrets_of(priv_eui, pub_eui, at)
            if not secrets:
                missing.append(why)
                continue
            for z, pair in secrets:
                assert callable(attempt)
                result = attempt(z)
                if result is not None:
                    return Status.VALID, pair, priv_eui, result
                tried.append(pair)
        if tried:
            return Status.INVALID, "tag does not match for " + "; ".join(tried), None, None
        return Status.UNVERIFIABLE, "; ".join(missing) or "no key pair to try", None, None

    def verify_mac(self, frame: Frame, at: datetime | None = None) -> Check:
        hdr = frame.mac_header
        if hdr is None:
            return Check(Status.NOT_PRESENT, "no MAC header")
        orig, recip = frame.originator, frame.recipient
        device_to_device = MESSAGE_CODES.get(frame.message_code, _NO_INFO).message_type == "SME.C.PPMID-GSME"
        if frame.cra is CRA.COMMAND and not device_to_device:
            if self.acb_eui is None:
                return Check(
                    Status.UNVERIFIABLE,
                    "command MAC is made with the Access Control Broker's key; ACB EUI unknown",
                )
            pairs = [(self.acb_eui, recip), (recip, self.acb_eui)]
        else:
            # responses and alerts; and PPMID→GSME commands, MAC'd between the two devices' KA keys
            pairs = [(recip, orig), (orig, recip)]
        raw = frame.raw
        iv = orig.to_bytes(8, "big") + hdr.invocation_counter.to_bytes(4, "big")
        aad = bytes((hdr.security_control,)) + raw[1:6] + raw[frame.apdu_offset : frame.apdu_end]
        tag = raw[-MAC_LENGTH:]
        other = kdf_other_info(orig, frame.cra, frame.originator_counter, recip)

        def attempt(z: bytes) -> bytes | None:
            return _gcm_open(derive_key(z, other), iv, aad, b"", tag)

        status, detail, key_eui, _ = self._try_pairs(pairs, at, attempt)
        if status is Status.VALID:
            return Check(status, f"GMAC valid ({detail}){self._validity_note()}", key_eui)
        return Check(status, detail, key_eui)

    # ---------------------------------------------------------------- decryption

    def decrypt(
        self,
        frame: Frame,
        blocks: tuple[EncryptedBlock, ...],
        at: datetime | None = None,
        buffer: bytes | None = None,
    ) -> list[Decryption]:
        """Decrypt and authenticate each block (offsets index ``buffer``, by default ``frame.raw``)."""
        buf = frame.raw if buffer is None else buffer
        orig = frame.originator
        recip = (
            frame.supplementary_remote_party
            if frame.supplementary_remote_party is not None
            else frame.recipient
        )
        counter = (
            frame.supplementary_originator_counter
            if frame.supplementary_originator_counter is not None
            else frame.originator_counter
        )
        other = kdf_other_info(orig, ENCRYPTION_CRA, counter, recip)
        out: list[Decryption] = []
        for block in blocks:
            data = buf[block.offset : block.offset + block.length]
            if len(data) < 5 + MAC_LENGTH or data[0] != 0x31:
                out.append(Decryption(block, Check(Status.INVALID, "malformed encrypted block"), None))
                continue
            iv = orig.to_bytes(8, "big") + data[1:5]
            ct, tag = data[5:-MAC_LENGTH], data[-MAC_LENGTH:]

            def attempt(z: bytes, ct: bytes = ct, tag: bytes = tag, iv: bytes = iv) -> bytes | None:
                return _gcm_open(derive_key(z, other), iv, b"\x31", ct, tag)

            status, detail, key_eui, pt = self._try_pairs([(recip, orig), (orig, recip)], at, attempt)
            reason = f"decrypted and authenticated ({detail})" if status is Status.VALID else detail
            out.append(Decryption(block, Check(status, reason, key_eui), pt))
        return out
