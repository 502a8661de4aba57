"""Reloading the GBCS key store (:func:`gateway.gbcs_keys.reload_keystore`): an unchanged folder keeps the
store in force without touching the index; a changed one is parsed and judged *before* the index is
replaced (atomically), so a refused folder (missing, unreadable files that would take certificates away)
leaves both the store in force and the on-disk index as they were; other processes' mappings of the old
index are never disturbed, and an old store found corrupt never removes the new index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.gbcs_keys import IndexedKeyStore, KeyStoreRef, load_keystore, reload_keystore
from gateway.testkit.pki import TestPKI

A = 0x00DB000000000A01
B = 0x00DB000000000A02
C = 0x00DB000000000A03


@pytest.fixture
def pki() -> TestPKI:
    pki = TestPKI(seed="key-reload")
    for eui in (A, B, C):
        pki.device(eui)
    return pki


@pytest.fixture
def folder(pki: TestPKI, tmp_path: Path) -> Path:
    keys = pki.write_gbcs_keystore(tmp_path / "keys")
    (keys / f"{C:016x}-ds.pem").unlink()  # C's certificate arrives later
    return keys


def _start(folder: Path, index: Path) -> IndexedKeyStore:
    store = load_keystore(folder, index=index)
    assert isinstance(store, IndexedKeyStore)
    return store


def _inode(path: Path) -> int:
    return os.stat(path).st_ino


def test_an_unchanged_folder_keeps_the_store_in_force_and_leaves_the_index_alone(
    folder: Path, tmp_path: Path
) -> None:
    index = tmp_path / "keys.idx"
    current = _start(folder, index)
    before = _inode(index)
    again = reload_keystore(folder, index=index, current=current)
    assert (again.store, again.refused) == (None, None)
    assert _inode(index) == before


def test_a_certificate_added_after_start_is_held_after_the_reload_and_not_before(
    pki: TestPKI, folder: Path, tmp_path: Path
) -> None:
    index = tmp_path / "keys.idx"
    current = _start(folder, index)
    assert current.ds_certificate(C) is None
    (folder / f"{C:016x}-ds.pem").write_bytes(pki.issued[f"{C:016x}-ds"].cert_pem)
    assert current.ds_certificate(C) is None  # on disk, not in force until a reload
    reloaded = reload_keystore(folder, index=index, current=current)
    assert reloaded.refused is None and reloaded.store is not None
    assert reloaded.store.ds_certificate(C) == pki.issued[f"{C:016x}-ds"].certificate
    assert reloaded.store.digest != current.digest
    # the store in force until the swap still reads its own mapping (the old file, renamed over)
    assert current.ds_certificate(A) is not None and current.ds_certificate(C) is None
    assert current.corrupt is None
    # a process started now maps the new generation by its reference, without walking the folder
    opened = reloaded.store.ref().open()
    assert opened.digest == reloaded.store.digest and opened.ds_certificate(C) is not None


def test_a_certificate_removed_from_the_folder_goes_with_the_reload(folder: Path, tmp_path: Path) -> None:
    index = tmp_path / "keys.idx"
    current = _start(folder, index)
    (folder / f"{B:016x}-ds.pem").unlink()
    reloaded = reload_keystore(folder, index=index, current=current)
    assert reloaded.refused is None and reloaded.store is not None
    assert reloaded.store.ds_certificate(B) is None and reloaded.store.ds_certificate(A) is not None


@pytest.mark.parametrize("damage", ["garbage", "dangling-link", "folder-missing", "folder-is-a-file"])
def test_a_key_store_that_cannot_be_read_is_refused_and_the_index_in_force_is_untouched(
    folder: Path, tmp_path: Path, damage: str
) -> None:
    index = tmp_path / "keys.idx"
    current = _start(folder, index)
    before = (_inode(index), index.read_bytes())
    cert = folder / f"{B:016x}-ds.pem"
    if damage == "garbage":
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    elif damage == "dangling-link":
        cert.unlink()
        cert.symlink_to(tmp_path / "nowhere.pem")
    elif damage == "folder-missing":
        folder.rename(tmp_path / "moved")
    else:
        folder.rename(tmp_path / "moved")
        folder.write_bytes(b"a file where the folder was")
    reloaded = reload_keystore(folder, index=index, current=current)
    assert reloaded.store is None and reloaded.refused, reloaded
    if damage in ("garbage", "dangling-link"):
        assert f"{B:016x}-ds.pem" in reloaded.refused and "1 certificate(s) in force" in reloaded.refused
    assert (_inode(index), index.read_bytes()) == before  # the index in force, as a new worker would map it
    assert current.ds_certificate(B) is not None


def test_a_bad_file_that_takes_nothing_away_does_not_block_the_reload(
    pki: TestPKI, folder: Path, tmp_path: Path
) -> None:
    index = tmp_path / "keys.idx"
    current = _start(folder, index)
    (folder / f"{C:016x}-ds.pem").write_bytes(pki.issued[f"{C:016x}-ds"].cert_pem)
    (folder / "0123456789abcdef-ds.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nbad\n-----END CERTIFICATE-----\n"
    )
    reloaded = reload_keystore(folder, index=index, current=current)
    assert reloaded.refused is None and reloaded.store is not None
    assert reloaded.store.ds_certificate(C) is not None
    assert any(name == "0123456789abcdef-ds.pem" for name, _why in reloaded.store.skipped)


def test_an_old_store_found_corrupt_after_a_reload_never_removes_the_new_index(
    pki: TestPKI, folder: Path, tmp_path: Path
) -> None:
    index = tmp_path / "keys.idx"
    current = _start(folder, index)
    (folder / f"{C:016x}-ds.pem").write_bytes(pki.issued[f"{C:016x}-ds"].cert_pem)
    reloaded = reload_keystore(folder, index=index, current=current)
    assert reloaded.store is not None
    current._unusable("found corrupt by a process that still maps the old index")  # (what a bad entry does)
    assert index.exists() and reloaded.store.ref().open().ds_certificate(C) is not None
    # the corrupt store in force is rebuilt by a reload even though the folder did not change
    rebuilt = reload_keystore(folder, index=index, current=current)
    assert rebuilt.store is not None and rebuilt.store.corrupt is None


def test_a_reference_whose_index_was_replaced_since_loads_the_folder_instead(
    pki: TestPKI, folder: Path, tmp_path: Path
) -> None:
    index = tmp_path / "keys.idx"
    ref = _start(folder, index).ref()
    (folder / f"{C:016x}-ds.pem").write_bytes(pki.issued[f"{C:016x}-ds"].cert_pem)
    load_keystore(folder, index=index)  # another generation written over it
    opened = ref.open()  # not that generation any more: the folder as it is now
    assert opened.ds_certificate(C) is not None
    assert isinstance(KeyStoreRef(str(folder), str(index), b"\x00" * 32).open(), IndexedKeyStore)


def test_an_index_removed_by_a_worker_that_found_it_corrupt_is_rebuilt_by_the_next_reload(
    folder: Path, tmp_path: Path
) -> None:
    index = tmp_path / "keys.idx"
    current = _start(folder, index)  # the gateway process's store: it found nothing wrong itself
    index.unlink()  # what a worker process that found its mapping corrupt does
    rebuilt = reload_keystore(folder, index=index, current=current)
    assert rebuilt.refused is None and rebuilt.store is not None and index.exists()
    # the same listing, another index file: another generation, so the workers reopen it
    assert rebuilt.store.digest == current.digest
    assert rebuilt.store.ref().generation != current.ref().generation


def test_a_folder_emptied_of_every_certificate_never_replaces_the_store_in_force(
    folder: Path, tmp_path: Path
) -> None:
    index = tmp_path / "keys.idx"
    current = _start(folder, index)
    for f in folder.iterdir():
        f.unlink()
    reloaded = reload_keystore(folder, index=index, current=current)
    assert (reloaded.store, reloaded.refused) == (None, "no usable GBCS certificate in the new key store")
    assert current.ds_certificate(A) is not None
