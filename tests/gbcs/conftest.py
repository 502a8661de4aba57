"""Fixtures for the GBCS codec tests: the RTDS 4.5.0 vectors and key store under ../shared."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.gbcs_keys import DirectoryKeyStore, load_keystore

# A time inside the validity of every RTDS certificate (devices 2016-04-06..9999, organisations
# 2015-10/12..2025-10/12). The payloads' own times (2015) precede the device certificates.
RTDS_CHECK_TIME = datetime(2020, 1, 1, tzinfo=UTC)

VectorFn = Callable[[str], bytes]


@pytest.fixture(scope="session")
def rtds(shared: Path) -> Path:
    return shared / "gbcs" / "rtds-4.5.0"


@pytest.fixture(scope="session")
def vectors(rtds: Path) -> dict[str, bytes]:
    """Every RTDS vector, by file name, as binary."""
    return {p.name: bytes.fromhex(p.read_text().strip()) for p in sorted(rtds.rglob("*.HEX"))}


@pytest.fixture(scope="session")
def keystore(shared: Path) -> DirectoryKeyStore:
    return load_keystore(shared / "gbcs" / "rtds-keystore")


@pytest.fixture(scope="session")
def vector(vectors: dict[str, bytes]) -> VectorFn:
    def get(name: str) -> bytes:
        if not name.endswith(".HEX"):
            name += "_GBCS.HEX"
        return vectors[name]

    return get
