"""Fixtures for the XML-signature tests: the DCC Boxed certificate store, the test DSP and User
credentials, and literal DUIS documents (AD1 alert, 11.3 response, 8.2 inventory response) built
from DUIS.md §5.3 / §4.1 (the DUIS encoder is written separately)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.smki import CertificateStore, SigningPolicy, SmkiCertificate


@pytest.fixture(scope="session")
def certs_dir(shared: Path) -> Path:
    return shared / "smki" / "dccboxed"


@pytest.fixture(scope="session")
def store(certs_dir: Path) -> CertificateStore:
    s = CertificateStore.from_directory(certs_dir, strict=True)
    assert len(s) == 19
    return s


@pytest.fixture(scope="session")
def policy() -> SigningPolicy:
    return SigningPolicy()


def _cred(store: CertificateStore, name: str) -> SmkiCertificate:
    (c,) = [c for c in store if c.name == name]
    assert c.private_key is not None
    return c


@pytest.fixture(scope="session")
def credential(store: CertificateStore) -> Callable[[str], SmkiCertificate]:
    return lambda name: _cred(store, name)


@pytest.fixture(scope="session")
def dsp(store: CertificateStore) -> SmkiCertificate:
    return _cred(store, "Z1-accessControlBroker-dSPXmlSign")


@pytest.fixture(scope="session")
def cs06_immediate_response_hex(shared: Path) -> str:
    path = shared / "gbcs" / "rtds-4.5.0" / "11.3_CS06" / "CS06_11.3_IMMEDIATE_SUCCESS_RESPONSE_GBCS.HEX"
    return path.read_text().strip()


@pytest.fixture(scope="session")
def xmlsec1() -> Callable[[bytes, Path, Path], subprocess.CompletedProcess[str]]:
    exe = shutil.which("xmlsec1")
    if exe is None:
        pytest.skip("xmlsec1 (Debian package xmlsec1) is not installed")

    def run(signed: bytes, cert_pem: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
        doc = tmp / "signed.xml"
        doc.write_bytes(signed)
        return subprocess.run(
            [exe, "--verify", "--pubkey-cert-pem", str(cert_pem), str(doc)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    return run
