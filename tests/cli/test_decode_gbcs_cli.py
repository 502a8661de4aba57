"""``duisgw decode`` decodes GBCS on its own (hex/binary) and the GBCS payloads inside DUIS documents,
verifying device signatures when given a key store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.testkit.scenario import World

CS06 = "gbcs/rtds-4.5.0/11.3_CS06"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(["decode", *argv])
    return rc, capsys.readouterr().out


def test_hex_gbcs_alert_decodes_and_its_signature_verifies_with_the_keystore(
    shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vec = shared / CS06 / "CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT_GBCS.HEX"
    rc, out = _run(capsys, str(vec), "--keys", str(shared / "gbcs/rtds-keystore"), "--at", "2020-01-01T00:00:00Z")
    assert rc == 0
    obj = json.loads(out)
    assert obj["frame"]["message_code"] == "0x00CA"
    assert obj["payload"]["typed"]["command_originator_counter"] == 1001
    assert obj["verification"]["signature"]["status"] == "valid"


def test_binary_gbcs_with_a_flipped_signed_byte_is_reported_invalid(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = bytearray.fromhex((shared / CS06 / "CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT_GBCS.HEX").read_text())
    raw[40] ^= 0x01
    f = tmp_path / "alert.bin"
    f.write_bytes(bytes(raw))
    rc, out = _run(capsys, str(f), "--keys", str(shared / "gbcs/rtds-keystore"), "--at", "2020-01-01T00:00:00Z")
    assert rc == 0
    assert json.loads(out)["verification"]["signature"]["status"] == "invalid"


def test_gbcs_payload_inside_a_duis_response_is_decoded_and_verified_at_the_response_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World.generated()
    esme, _ch, _mpan = world.meter(1)
    refs = world.write_reference(tmp_path / "ref")
    doc = tmp_path / "resp.xml"
    doc.write_bytes(world.factory.activate_response(esme, 1000, datetime(2026, 3, 2, 9, 0, tzinfo=UTC)))
    rc, out = _run(capsys, str(doc), "--keys", str(refs["gbcs_keys"]))
    assert rc == 0
    gbcs = json.loads(out)["body"]["payload"]["gbcs"]
    assert gbcs["frame"]["originator"] == "00-DB-00-00-00-00-00-01"
    assert gbcs["payload"]["typed"]["response_code"] == 0
    assert gbcs["verification"]["signature"]["status"] == "valid"
    rc, text = _run(capsys, str(doc), "--text")
    assert rc == 0 and "ResponseMessage" in text and "Activate" in text


def test_text_that_is_neither_duis_nor_gbcs_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "junk.txt"
    f.write_text("hello world")
    assert main(["decode", str(f)]) == 2
    assert "duisgw decode" in capsys.readouterr().err
