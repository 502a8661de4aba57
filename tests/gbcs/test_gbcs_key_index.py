"""The persisted GBCS key index (``load_keystore(path, index=FILE)``): the same certificates as the
directory, parsed on first use, rebuilt whenever the directory changes or the file is not a usable index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import RTDS_CHECK_TIME
from cryptography.hazmat.primitives.serialization import Encoding

import gateway.gbcs_keys as gk
from gateway.gbcs_keys import IndexedKeyStore, load_keystore
from gateway.testkit.pki import TestPKI
from gbcs.crypto import Verifier
from gbcs.errors import GbcsError
from gbcs.frame import parse_frame


@pytest.fixture
def rtds_keys(shared: Path) -> Path:
    return shared / "gbcs" / "rtds-keystore"


def der(cert: object) -> bytes:
    return cert.public_bytes(Encoding.DER)  # type: ignore[attr-defined,no-any-return]


def test_index_gives_every_certificate_and_key_of_the_directory(rtds_keys: Path, tmp_path: Path) -> None:
    eager = load_keystore(rtds_keys)
    indexed = load_keystore(rtds_keys, index=tmp_path / "keys.idx")
    assert isinstance(indexed, IndexedKeyStore) and not isinstance(eager, IndexedKeyStore)
    assert len(indexed) == len(eager.ds) + len(eager.ka) > 0
    for eui, cert in eager.ds.items():
        found = indexed.ds_certificate(eui)
        assert found is not None and der(found) == der(cert)
    for eui, cert in eager.ka.items():
        found = indexed.ka_certificate(eui)
        assert found is not None and der(found) == der(cert)
    assert indexed.acb_eui == eager.acb_eui is not None
    assert set(indexed.ka_private) == set(eager.ka_private) and set(indexed.ds_private) == set(eager.ds_private)
    assert indexed.mismatched == eager.mismatched  # reported by the load that built the index
    assert indexed.ds_certificate(0x0123456789ABCDEF) is None and indexed.ka_certificate(1) is None


def test_an_unchanged_directory_reuses_the_index_without_parsing_it(
    rtds_keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "keys.idx"
    first = load_keystore(rtds_keys, index=index)

    def no_parsing(*_a: object, **_k: object) -> None:
        raise AssertionError("the directory was parsed again")

    monkeypatch.setattr(gk, "_load_directory", no_parsing)
    again = load_keystore(rtds_keys, index=index)
    assert isinstance(again, IndexedKeyStore) and len(again) == len(first)


def test_a_changed_directory_rebuilds_the_index(tmp_path: Path) -> None:
    pki = TestPKI(seed="key-index")
    for i in range(3):
        pki.device(0x00DB000000000000 + i)
    keys = pki.write_gbcs_keystore(tmp_path / "keys")
    index = tmp_path / "keys.idx"
    assert len(load_keystore(keys, index=index)) == 3
    new = pki.device(0x00DB0000000000FF)
    (keys / f"{new.name}.pem").write_bytes(new.cert_pem)  # a device added
    store = load_keystore(keys, index=index)
    assert len(store) == 4
    found = store.ds_certificate(0x00DB0000000000FF)
    assert found is not None and der(found) == der(new.certificate)
    victim = keys / "00db000000000000-ds.pem"  # a device removed
    victim.unlink()
    store = load_keystore(keys, index=index)
    assert len(store) == 3 and store.ds_certificate(0x00DB000000000000) is None


@pytest.mark.parametrize(
    "damage",
    [b"", b"garbage", b"DUISGWK1" + bytes(64), None],
    ids=["empty", "garbage", "header-only", "truncated"],
)
def test_an_unusable_index_file_is_rebuilt(tmp_path: Path, damage: bytes | None) -> None:
    pki = TestPKI(seed="key-index-damage")
    pki.device(0x00DB000000000042)
    keys = pki.write_gbcs_keystore(tmp_path / "keys")
    index = tmp_path / "keys.idx"
    load_keystore(keys, index=index)
    data = index.read_bytes()
    index.write_bytes(data[: len(data) - 10] if damage is None else damage)
    store = load_keystore(keys, index=index)
    assert store.ds_certificate(0x00DB000000000042) is not None
    assert not list(tmp_path.glob("keys.idx.*tmp"))


def test_parsed_certificates_are_bounded_by_the_cache(tmp_path: Path) -> None:
    pki = TestPKI(seed="key-index-lru")
    euis = [0x00DB000000001000 + i for i in range(6)]
    for eui in euis:
        pki.device(eui)
    keys = pki.write_gbcs_keystore(tmp_path / "keys", bundle=True)
    store = load_keystore(keys, index=tmp_path / "keys.idx")
    assert isinstance(store, IndexedKeyStore)
    store._cache_size = 2
    for _ in range(2):
        for eui in euis:
            assert store.ds_certificate(eui) is not None
    assert len(store._cache) == 2


def test_the_index_is_replaced_atomically(tmp_path: Path) -> None:
    pki = TestPKI(seed="key-index-atomic")
    pki.device(0x00DB000000000007)
    keys = pki.write_gbcs_keystore(tmp_path / "keys")
    index = tmp_path / "state" / "keys.idx"
    load_keystore(keys, index=index)
    inode = index.stat().st_ino
    os.utime(keys / "00db000000000007-ds.pem", ns=(1, 1))  # same bytes, another mtime: rebuilt
    load_keystore(keys, index=index)
    assert index.stat().st_ino != inode  # a new file renamed into place, not rewritten in place


def test_every_rtds_signature_verifies_the_same_through_the_index(
    rtds_keys: Path, vectors: dict[str, bytes], tmp_path: Path
) -> None:
    eager = Verifier(load_keystore(rtds_keys))
    indexed = Verifier(load_keystore(rtds_keys, index=tmp_path / "keys.idx"))
    valid = 0
    for raw in vectors.values():
        try:
            frame = parse_frame(raw)
        except GbcsError:
            continue
        a = eager.verify_signature(frame, RTDS_CHECK_TIME)
        b = indexed.verify_signature(frame, RTDS_CHECK_TIME)
        assert (a.status, a.reason) == (b.status, b.reason)
        valid += a.status.name == "VALID"
    assert valid >= 373
