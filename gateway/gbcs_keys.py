"""Load a GBCS key store from a directory (the RTDS/gbcs-parser layout, GBCS.md §7).

Files: ``<eui16hex>-ds.pem`` / ``<eui16hex>-ka.pem`` (X.509 certificates), ``<eui16hex>-ds.key`` /
``<eui16hex>-ka.key`` (PKCS#8 private keys). ``-pp-ka`` (prepayment UTRN) files are not used for
GBCS verification and are skipped. Certificates are indexed by the EUI *in the certificate* (device
SAN hwSerialNum, organisation x500UniqueIdentifier) and by the file name only when the certificate
names none; a file whose certificate names a different EUI than its file name (the RTDS WAN provider's
``ka.pem`` is a copy of supplier 2's) is indexed by the certificate's EUI and listed in ``mismatched``.
Private keys are indexed by file name. Unreadable files are listed in ``skipped`` with the reason.

A *bundle* ``*.certs.pem`` may hold any number of certificates; each is indexed by the EUI it names
and used as DS or KA according to its key usage (digitalSignature / keyAgreement). Test traffic with
thousands of devices ships its device certificates that way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gbcs.keystore import MemoryKeyStore, certificate_eui

__all__ = ["DirectoryKeyStore", "load_keystore"]

_NAME = re.compile(r"^(?P<eui>[0-9a-fA-F]{16})-(?P<pp>pp-)?(?P<usage>ds|ka)\.(?P<ext>pem|key)$")


@dataclass
class DirectoryKeyStore(MemoryKeyStore):
    """A :class:`gbcs.keystore.MemoryKeyStore` filled from a directory, with a loading report."""

    path: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mismatched: list[tuple[str, int]] = field(default_factory=list)


def load_keystore(path: str | Path) -> DirectoryKeyStore:
    """Read every ``*.pem``/``*.key`` file of ``path`` (recursively). Raises ``FileNotFoundError`` when
    ``path`` is not a directory."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"key store directory not found: {root}")
    store = DirectoryKeyStore(path=root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    # certificates first (so ACB detection and EUI indexing do not depend on listing order)
    for p in sorted(files, key=lambda q: (q.suffix != ".pem", q.name)):
        if p.name.endswith(".certs.pem"):
            _load_bundle(store, p)
            continue
        m = _NAME.match(p.name)
        if m is None:
            store.skipped.append((p.name, "name is not <eui16hex>-(ds|ka).(pem|key)"))
            continue
        if m["pp"]:
            store.skipped.append((p.name, "prepayment (UTRN) key, not used for GBCS verification"))
            continue
        name_eui = int(m["eui"], 16)
        data = p.read_bytes()
        if m["ext"] == "pem":
            if b"BEGIN CERTIFICATE" not in data:
                store.skipped.append((p.name, "not an X.509 certificate (e.g. a bare public key)"))
                continue
            try:
                cert = x509.load_pem_x509_certificate(data)
            except ValueError as e:
                store.skipped.append((p.name, f"unreadable certificate: {e}"))
                continue
            cert_eui = certificate_eui(cert)
            if cert_eui is not None and cert_eui != name_eui:
                store.mismatched.append((p.name, cert_eui))
            store.add_certificate(cert, m["usage"], name_eui)
        else:
            try:
                key = load_pem_private_key(data, password=None)
            except (ValueError, TypeError) as e:
                store.skipped.append((p.name, f"unreadable private key: {e}"))
                continue
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                store.skipped.append((p.name, "not an EC private key"))
                continue
            if m["usage"] == "ka":
                store.ka_private.setdefault(name_eui, key)
            else:
                store.ds_private.setdefault(name_eui, key)
    return store


def _load_bundle(store: DirectoryKeyStore, path: Path) -> None:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as e:
        store.skipped.append((path.name, f"unreadable certificate bundle: {e}"))
        return
    for i, cert in enumerate(certs):
        eui = certificate_eui(cert)
        if eui is None:
            store.skipped.append((f"{path.name}#{i}", "certificate names no EUI-64"))
            continue
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            store.skipped.append((f"{path.name}#{i}", "certificate has no key usage (DS or KA?)"))
            continue
        store.add_certificate(cert, "ka" if ku.key_agreement else "ds", eui)
