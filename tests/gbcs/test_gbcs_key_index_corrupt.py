"""A corrupted persisted key index (directory unchanged, so its listing digest still matches) is never
trusted: no crash, never another device's certificate; the file is removed so the next load rebuilds."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from conftest import RTDS_CHECK_TIME, VectorFn

from gateway.gbcs_keys import IndexedKeyStore, load_keystore
from gbcs.crypto import Status, Verifier
from gbcs.frame import parse_frame

CS06_8F66 = "CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"
ESME = 0x00DB1234567890A0
_HDR = struct.Struct("<8s32sQQQ")


def _corrupt(index: Path, mode: str) -> None:
    raw = bytearray(index.read_bytes())
    _, _, _, nds, nka = _HDR.unpack_from(raw, 0)
    if mode == "der":  # the first certificate's SEQUENCE tag
        raw[_HDR.size + 20 * (nds + nka)] ^= 0xFF
    else:  # swap DS entries 0 and 1 (A0 <-> A1): offsets and lengths
        o = _HDR.size + 8 * nds
        raw[o : o + 8], raw[o + 8 : o + 16] = raw[o + 8 : o + 16], raw[o : o + 8]
        n = _HDR.size + 16 * nds
        raw[n : n + 4], raw[n + 4 : n + 8] = raw[n + 4 : n + 8], raw[n : n + 4]
    index.write_bytes(bytes(raw))


@pytest.mark.parametrize("mode", ["der", "swap"])
def test_corrupt_index_is_not_trusted_and_rebuilt_next_time(
    tmp_path: Path, shared: Path, vector: VectorFn, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for n in ["00db1234567890a0-ds.pem", "00db1234567890a1-ds.pem", "90b3d51f30010000-ds.pem"]:
        shutil.copy2(shared / "gbcs" / "rtds-keystore" / n, keys / n)
    index = tmp_path / "gbcs-keys.idx"
    load_keystore(keys, index=index)
    _corrupt(index, mode)
    store = load_keystore(keys, index=index)
    assert isinstance(store, IndexedKeyStore)
    frame = parse_frame(vector(CS06_8F66))
    check = Verifier(store).verify_signature(frame, RTDS_CHECK_TIME)
    assert check.status is Status.UNVERIFIABLE  # never INVALID from another device's certificate
    assert store.corrupt is not None and store.ds_certificate(ESME) is None
    assert not index.exists()
    logged = [r for r in caplog.records if r.levelname == "ERROR" and "key index corrupt" in r.getMessage()]
    assert len(logged) == 1  # once, not at every lookup
    rebuilt = load_keystore(keys, index=index)
    assert Verifier(rebuilt).verify_signature(frame, RTDS_CHECK_TIME).status is Status.VALID
