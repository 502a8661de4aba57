"""Input sniffing, rendering, date-time decoding, the directory key store and the generated tables."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import RTDS_CHECK_TIME, VectorFn

from gateway.gbcs_keys import DirectoryKeyStore
from gbcs.errors import GbcsError
from gbcs.render import describe, looks_like_gbcs, to_text
from gbcs.tables import ALERT_CODES, MESSAGE_CODES, alert_code_name, message_code_name
from gbcs.timefmt import DlmsDateTime, GeneralizedTime, gbz_time

CS06_8F66 = "CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"


def test_looks_like_gbcs_accepts_binary_hex_and_base64(vector: VectorFn) -> None:
    raw = vector(CS06_8F66)
    spaced = " ".join(raw.hex()[i : i + 8] for i in range(0, len(raw) * 2, 8)).encode()
    assert looks_like_gbcs(raw) == raw
    assert looks_like_gbcs(raw.hex().upper().encode() + b"\r\n") == raw
    assert looks_like_gbcs(b"\n  " + spaced + b"\n") == raw
    assert looks_like_gbcs(base64.b64encode(raw)) == raw
    assert looks_like_gbcs(base64.encodebytes(raw)) == raw  # wrapped lines


@pytest.mark.parametrize("junk", [b"", b"   ", b"<xml/>", b"30 26 04 20", b"hello world", b"\x00\x01", b"ABC"])
def test_looks_like_gbcs_rejects_other_input(junk: bytes) -> None:
    assert looks_like_gbcs(junk) is None


def test_describe_without_a_keystore_says_nothing_was_verified(vector: VectorFn) -> None:
    d = describe(vector(CS06_8F66))
    ver = d["verification"]
    assert isinstance(ver, dict) and ver["signature"]["status"] == "unverifiable"
    assert "nothing verified" in str(ver["key_store"])


def test_describe_reports_names_typed_payload_and_verified_checks(vector: VectorFn, keystore: DirectoryKeyStore) -> None:
    d = describe(vector(CS06_8F66), keystore, at=RTDS_CHECK_TIME)
    json.dumps(d)
    frame, payload, ver = d["frame"], d["payload"], d["verification"]
    assert isinstance(frame, dict) and isinstance(payload, dict) and isinstance(ver, dict)
    assert frame["message_code"] == "0x00CA" and frame["alert_code"] == "8F66"
    assert frame["originator"] == "00-DB-12-34-56-78-90-A0"
    assert payload["typed"]["command_originator_counter"] == 1001
    assert ver["verified"] == ["signature"]
    text = to_text(d)
    assert "  outcome: Success\n" in text and "firmware_version: 0123ABCF" in text


def test_describe_without_a_time_says_validity_was_not_checked(vector: VectorFn, keystore: DirectoryKeyStore) -> None:
    d = describe(vector("GNCA-DLMS_NA_810E_ALERT"), keystore)
    ver = d["verification"]
    assert isinstance(ver, dict)
    assert ver["certificate_validity"] == "not checked (no time given)"
    assert ver["verified"] == ["mac"]


def test_describe_decrypts_encrypted_blocks(vector: VectorFn, keystore: DirectoryKeyStore) -> None:
    d = describe(vector("ECS68_NA_8F0A_SINGLE_ALERT"), keystore, at=RTDS_CHECK_TIME)
    ver = d["verification"]
    assert isinstance(ver, dict)
    (block,) = ver["decryption"]
    assert block["status"] == "valid" and block["decoded"]["type"] in ("structure", "array")


def test_describe_raises_named_errors_for_garbage() -> None:
    with pytest.raises(GbcsError):
        describe(b"\xdf\x09\x01")


def test_dlms_date_time_handles_unspecified_fields_and_sentinels() -> None:
    dt = DlmsDateTime.from_bytes(bytes.fromhex("07DF0101FF000000008000FF"))
    assert dt.to_datetime() == datetime(2015, 1, 1, tzinfo=UTC) and dt.deviation is None and dt.day_of_week is None
    wild = DlmsDateTime.from_bytes(bytes.fromhex("FFFFFF01FF0C00FFFF8000FF"))
    assert wild.to_datetime() is None and wild.year is None and wild.text() == "****-**-01T12:00:**"
    assert DlmsDateTime.from_bytes(bytes.fromhex("0000000000000000008000FF")).text() == "NOW"
    assert DlmsDateTime.from_bytes(bytes.fromhex("FFFFFFFFFFFFFFFFFF8000FF")).is_never
    local = DlmsDateTime.from_bytes(bytes.fromhex("07E4060F010C0000000078" + "00"))  # deviation +120 min
    assert local.deviation == 120 and local.to_datetime() == datetime(2020, 6, 15, 10, 0, tzinfo=UTC)
    assert DlmsDateTime.from_bytes(bytes.fromhex("07DF023EFF000000008000FF")).to_datetime() is None  # 62 Feb


def test_gbz_and_generalized_times() -> None:
    assert gbz_time(0x1C374A80) == datetime(2015, 1, 1, tzinfo=UTC)
    assert gbz_time(0x38818890) == datetime(2030, 1, 15, 9, tzinfo=UTC)
    g = GeneralizedTime.parse(b"99991231235959Z")
    assert g.is_cancellation and not GeneralizedTime.parse(b"20300115090000Z").is_cancellation
    with pytest.raises(ValueError):
        GeneralizedTime.parse(b"2030011509000Z")


def test_directory_keystore_indexes_by_certificate_eui(keystore: DirectoryKeyStore) -> None:
    from gbcs.keystore import certificate_eui

    assert keystore.acb_eui == 0x90B3D51F30000002
    esme_ds = keystore.ds_certificate(0x00DB1234567890A0)
    assert esme_ds is not None and certificate_eui(esme_ds) == 0x00DB1234567890A0
    assert keystore.ka_private_key(0x90B3D51F30010000) is not None
    assert keystore.ka_private_key(0x00DB1234567890A0) is None
    # the WAN provider's ka.pem is a copy of supplier 2's certificate: indexed by the certificate's EUI
    assert ("90b3d51f30000007-ka.pem", 0x90B3D51F30030000) in keystore.mismatched
    assert keystore.ka_certificate(0x90B3D51F30000007) is None
    skipped = dict(keystore.skipped)
    assert "bare public key" in skipped["fffffffffffffffe-ka.pem"]


def test_load_keystore_rejects_a_missing_directory(tmp_path: Path) -> None:
    from gateway.gbcs_keys import load_keystore

    with pytest.raises(FileNotFoundError):
        load_keystore(tmp_path / "nope")


def test_tables_name_codes_and_are_up_to_date(shared: Path, project_root: Path) -> None:
    assert message_code_name(0x0012) == "CS06 Activate Firmware"
    assert MESSAGE_CODES[0x0012].message_type == "SME.C.C"
    assert alert_code_name(0x8F36).startswith("Supply Outage Restored")
    assert 0x8F66 in ALERT_CODES and "unknown" in alert_code_name(0x0001)
    rc = subprocess.run(
        [sys.executable, str(project_root / "tools" / "gen_gbcs_tables.py"), "--check", "--shared", str(shared)],
        capture_output=True, text=True, check=False,
    )
    assert rc.returncode == 0, rc.stderr
