"""Symbolic links in a GBCS key folder: a link that loops (or leads nowhere) and a link to a folder are
skipped with a warning, listed in ``skipped``, and everything else loads, with or without the persisted
index (the indexed load used to fail with ``OSError: Too many levels of symbolic links``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import gateway.gbcs_keys as gk
from gateway.gbcs_keys import IndexedKeyStore, load_keystore
from gateway.testkit.pki import TestPKI

EUIS = [0x00DB000000000A00 + i for i in range(3)]


def _keys_with_links(tmp_path: Path) -> Path:
    pki = TestPKI(seed="key-folder-links")
    for eui in EUIS[:2]:
        pki.device(eui)
    keys = pki.write_gbcs_keystore(tmp_path / "keys")
    nested = keys / "more"
    nested.mkdir()
    third = pki.device(EUIS[2])
    (nested / f"{third.name}.pem").write_bytes(third.cert_pem)
    os.symlink("loop-b-ds.pem", keys / "loop-a-ds.pem")  # a -> b -> a
    os.symlink("loop-a-ds.pem", keys / "loop-b-ds.pem")
    os.symlink("00db00000000ffff-ds.pem", keys / "self-ds.pem")
    os.symlink("self-ds.pem", keys / "00db00000000ffff-ds.pem")  # a loop named like a device file
    os.symlink("..", nested / "up")  # a folder loop: keys/more/up/more/up/...
    os.symlink("missing.pem", keys / "dangling-ds.pem")
    return keys


@pytest.mark.parametrize("indexed", [False, True], ids=["directory", "indexed"])
def test_a_symlink_loop_is_skipped_with_a_warning_and_the_rest_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, indexed: bool
) -> None:
    keys = _keys_with_links(tmp_path)
    index = tmp_path / "state" / "gbcs-keys.idx"
    with caplog.at_level(logging.WARNING, logger="duisgw.gbcs_keys"):
        store = load_keystore(keys, index=index) if indexed else load_keystore(keys)
    assert isinstance(store, IndexedKeyStore) is indexed
    for eui in EUIS:
        assert store.ds_certificate(eui) is not None, f"{eui:016X} not loaded"
    skipped = dict(store.skipped)
    for loop in ("loop-a-ds.pem", "loop-b-ds.pem", "self-ds.pem", "00db00000000ffff-ds.pem"):
        assert "symbolic link" in skipped[loop] and "loop" in skipped[loop], skipped
    assert "not followed" in skipped["more/up"]
    assert "dangling" in skipped["dangling-ds.pem"]
    warned = {getattr(r, "entry", None) for r in caplog.records if r.levelname == "WARNING"}
    assert {"loop-a-ds.pem", "loop-b-ds.pem", "self-ds.pem", "more/up", "dangling-ds.pem"} <= warned


def test_a_reused_index_still_reports_the_skipped_links(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = _keys_with_links(tmp_path)
    index = tmp_path / "gbcs-keys.idx"
    load_keystore(keys, index=index)
    inode = index.stat().st_ino
    with caplog.at_level(logging.WARNING, logger="duisgw.gbcs_keys"):
        again = load_keystore(keys, index=index)
    assert index.stat().st_ino == inode  # the links do not change the listing: the index is reused
    assert "loop-a-ds.pem" in dict(again.skipped)
    assert any(getattr(r, "entry", None) == "loop-a-ds.pem" for r in caplog.records)


def test_repairing_a_looping_link_rebuilds_the_index_with_its_certificate(tmp_path: Path) -> None:
    keys = _keys_with_links(tmp_path)
    index = tmp_path / "gbcs-keys.idx"
    store = load_keystore(keys, index=index)
    assert store.ds_certificate(0x00DB00000000FFFF) is None
    pki = TestPKI(seed="key-folder-links")
    fixed = pki.device(0x00DB00000000FFFF)
    (keys / "self-ds.pem").unlink()
    (keys / "self-ds.pem").write_bytes(fixed.cert_pem)  # the link now leads to a certificate
    store = load_keystore(keys, index=index)
    assert store.ds_certificate(0x00DB00000000FFFF) is not None


def test_a_file_gone_between_the_listing_and_its_reading_is_skipped(tmp_path: Path) -> None:
    pki = TestPKI(seed="key-folder-links")
    for eui in EUIS[:2]:
        pki.device(eui)
    keys = pki.write_gbcs_keystore(tmp_path / "keys")
    listing, unusable = gk._walk(keys)
    (keys / f"{EUIS[0]:016x}-ds.pem").unlink()  # removed after the folder was listed
    store = gk._load_directory(keys, listing, unusable)
    assert store.ds_certificate(EUIS[1]) is not None and store.ds_certificate(EUIS[0]) is None
    assert "cannot be read" in dict(store.skipped)[f"{EUIS[0]:016x}-ds.pem"]
