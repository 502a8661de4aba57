"""Odd files in a key store directory and odd certificates: reported, never a crash (security review)."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest
from conftest import RTDS_CHECK_TIME, VectorFn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier

from gateway.gbcs_keys import load_keystore
from gbcs.crypto import Status, ValidityPolicy, Verifier
from gbcs.frame import parse_frame
from gbcs.keystore import MemoryKeyStore

CS06_8F66 = "CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"
ESME = 0x00DB1234567890A0
SUPPLIER = 0x90B3D51F30010000

# A certificate and a private key on brainpoolP160r1 (1.3.36.3.3.2.8.1.1.1), a curve cryptography cannot load.
UNSUPPORTED_CURVE_CERT = b"""-----BEGIN CERTIFICATE-----
MIIBUDCCAQ6gAwIBAgIUVnAM00sWAo5PIYcr1TDZAga60uAwCgYIKoZIzj0EAwIw
DTELMAkGA1UECwwCMDIwHhcNMjYxMTIyMTkxODU3WhcNMzYxMTE5MTkxODU3WjAN
MQswCQYDVQQLDAIwMjBCMBQGByqGSM49AgEGCSskAwMCCAEBAQMqAARzrdDA23O3
FlKKh74PZRSVQ0xxe3sZ/5CVZr8I8NSoqzowc7u1jNpzo2MwYTAdBgNVHQ4EFgQU
zBBS2I7lOpbugW5pQ1t4JoGDEfkwHwYDVR0jBBgwFoAUzBBS2I7lOpbugW5pQ1t4
JoGDEfkwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCB4AwCgYIKoZIzj0E
AwIDMAAwLQIUDGEIMllavfMpq8tCBo35kofZrLICFQDVWv3yEoY/Ln8c5Nzo7bVc
fSArhg==
-----END CERTIFICATE-----
"""
UNSUPPORTED_CURVE_KEY = b"""-----BEGIN PRIVATE KEY-----
MGQCAQAwFAYHKoZIzj0CAQYJKyQDAwIIAQEBBEkwRwIBAQQUa6Ky/fqKXx1qNPOt
h8mIz940jsWhLAMqAARzrdDA23O3FlKKh74PZRSVQ0xxe3sZ/5CVZr8I8NSoqzow
c7u1jNpz
-----END PRIVATE KEY-----
"""


def _odd_cert(mode: str) -> bytes:
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "02")])
    b = (
        x509.CertificateBuilder().issuer_name(name).public_key(k.public_key()).serial_number(1)
        .not_valid_before(datetime.datetime(2015, 1, 1)).not_valid_after(datetime.datetime(2040, 1, 1))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
    )
    if mode == "san":  # a SubjectAltName whose value is not GeneralNames
        b = b.subject_name(name).add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x04\x02\x00\x00"), critical=False
        )
    else:  # x500UniqueIdentifier as a UTF8String with non-latin-1 characters
        b = b.subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "02"),
            x509.NameAttribute(ObjectIdentifier("2.5.4.45"), "\u20ac" * 8, _type=x509.name._ASN1Type.UTF8String),
        ]))
    return b.sign(k, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _store_dir(tmp_path: Path, shared: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    shutil.copy2(shared / "gbcs" / "rtds-keystore" / "00db1234567890a0-ds.pem", d)
    return d


def test_odd_certificates_and_keys_are_skipped_and_the_rest_loads(
    tmp_path: Path, shared: Path, vector: VectorFn
) -> None:
    d = _store_dir(tmp_path, shared)
    (d / "90b3d51f30010000-ds.pem").write_bytes(_odd_cert("san"))
    (d / "90b3d51f30020000-ds.pem").write_bytes(_odd_cert("uid"))
    (d / "90b3d51f30010000-ka.key").write_bytes(UNSUPPORTED_CURVE_KEY)
    (d / "odd.certs.pem").write_bytes(_odd_cert("san") + _odd_cert("uid"))
    for index in (None, tmp_path / "gbcs-keys.idx"):
        store = load_keystore(d) if index is None else load_keystore(d, index=index)
        skipped = dict(store.skipped)
        assert "90b3d51f30010000-ds.pem" in skipped
        assert "90b3d51f30020000-ds.pem" in skipped
        assert "odd.certs.pem#0" in skipped and "odd.certs.pem#1" in skipped
        assert "90b3d51f30010000-ka.key" in skipped
        assert store.ds_certificate(ESME) is not None
        check = Verifier(store, policy=ValidityPolicy.AT_TIME).verify_signature(
            parse_frame(vector(CS06_8F66)), RTDS_CHECK_TIME
        )
        assert check.status is Status.VALID


def test_certificate_on_an_unsupported_curve_is_unverifiable(vector: VectorFn) -> None:
    cert = x509.load_pem_x509_certificate(UNSUPPORTED_CURVE_CERT)
    store = MemoryKeyStore()
    store.add_certificate(cert, "ds", ESME)
    check = Verifier(store, policy=ValidityPolicy.IGNORE).verify_signature(parse_frame(vector(CS06_8F66)))
    assert check.status is Status.UNVERIFIABLE
    assert "P-256" in check.reason


def test_certificate_with_malformed_extensions_is_unverifiable(vector: VectorFn) -> None:
    cert = x509.load_pem_x509_certificate(_odd_cert("san"))
    store = MemoryKeyStore()
    store.ds[ESME] = cert  # as a store that does not look inside its certificates would hold it
    check = Verifier(store, policy=ValidityPolicy.IGNORE).verify_signature(parse_frame(vector(CS06_8F66)))
    assert check.status is Status.UNVERIFIABLE
    assert "malformed" in check.reason


def _stray_device_cert(eui: int) -> bytes:
    """A device DS certificate naming ``eui`` (SAN hwModuleName) under a key of its own."""
    k = ec.generate_private_key(ec.SECP256R1())
    hw = bytes.fromhex("300f06032a03040408") + eui.to_bytes(8, "big")
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "E357")]))
        .public_key(k.public_key()).serial_number(7)
        .not_valid_before(datetime.datetime(2015, 1, 1)).not_valid_after(datetime.datetime(9999, 1, 1))
        .add_extension(x509.SubjectAlternativeName([x509.OtherName(ObjectIdentifier("1.3.6.1.5.5.7.8.4"), hw)]),
                       critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .sign(k, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("stray", ["00db123456789001-ds.pem", "00dbffffffffffff-ds.pem", "a.certs.pem"])
def test_another_certificate_naming_a_device_is_held_beside_its_own_file_not_instead(
    tmp_path: Path, shared: Path, vector: VectorFn, stray: str
) -> None:
    """A certificate that names the device itself, from whichever file (a bundle downloaded after a
    certificate replacement, a copy under another name), is held beside the device's own; the device's own
    still verifies its frames and the other one never makes a frame it did not sign valid."""
    d = _store_dir(tmp_path, shared)
    (d / stray).write_bytes(_stray_device_cert(ESME))
    store = load_keystore(d)
    check = Verifier(store).verify_signature(parse_frame(vector(CS06_8F66)), RTDS_CHECK_TIME)
    assert check.status is Status.VALID
    assert len(store.ds_certificates(ESME)) == 2
    loser = f"{stray}#0" if stray.endswith(".certs.pem") else stray
    assert loser not in dict(store.skipped)
