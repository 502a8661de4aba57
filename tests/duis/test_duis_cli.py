"""``duisgw decode`` and ``duisgw validate``: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli.decode import payload_json


def test_decode_prints_one_json_object_with_typed_body(
    shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decode", str(shared / "duis" / "samples" / "readfw-response.xml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "Response" and out["body_kind"] == "ResponseMessage.GBCSPayload"
    assert out["header"]["request_id"] == "90-B3-D5-1F-30-01-00-00:88-73-84-57-00-2F-96-1E:1660751141087"
    assert out["body"]["payload"]["hex"].startswith("DD00") and out["warnings"] == []


def test_decode_renders_euis_and_warnings(shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", str(shared / "duis" / "samples" / "readfw-response-invalid.xml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["warnings"]
    assert main(["decode", str(shared / "duis" / "samples" / "read-inventory-response-5.4.xml")]) == 0
    inv = json.loads(capsys.readouterr().out)
    assert inv["body"]["payload"]["devices"][0]["device_id"] == "88-73-84-90-6A-10-02-DB"


def test_decode_text_is_an_indented_tree(shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "decode",
                "--text",
                str(shared / "duis" / "templates" / "CS06_11.3_FUTURE_DATED_SUCCESS_REQUEST_DUIS.XML"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "body: (ActivateFirmware)" in text and "  execution_datetime: 2030-01-15T09:00:00Z" in text


def test_decode_of_broken_or_missing_input_exits_2_with_one_line(
    shared: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert (
        main(
            [
                "decode",
                str(shared / "duis" / "samples" / "ECS17b_4.1.1_SINGLE_SUCCESS_REQUEST_DUIS-invalid.XML"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "invalid_field" in err and err.count("\n") == 1
    assert main(["decode", str(tmp_path / "nope.xml")]) == 2
    evil = tmp_path / "evil.xml"
    evil.write_bytes(b'<!DOCTYPE x [<!ENTITY e "x">]><x>&e;</x>')
    assert main(["decode", str(evil)]) == 2
    assert "doctype_forbidden" in capsys.readouterr().err


def test_validate_exit_codes(shared: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    xsd = str(shared / "duis" / "schemas" / "DUIS Schema V5.4.xsd")
    samples = shared / "duis" / "samples"
    assert main(["validate", str(samples / "readfw-response.xml"), "--schema", xsd]) == 0
    assert main(["validate", str(samples / "readfw-response.xml")]) == 0
    assert main(["validate", str(samples / "readfw-response-invalid.xml"), "--schema", xsd]) == 1
    assert "ServiceReference" in capsys.readouterr().out
    assert (
        main(["validate", str(samples / "readfw-response.xml"), "--schema", str(tmp_path / "missing.xsd")])
        == 2
    )
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<unclosed")
    assert main(["validate", str(bad)]) == 2


def test_validate_explain_adds_readable_reasons(shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = shared / "duis" / "samples"
    assert main(["validate", "--explain", str(samples / "readfw-response-invalid.xml")]) == 1
    out = capsys.readouterr().out
    assert "explained:" in out and "/sr:Response/sr:Body/sr:ResponseMessage/sr:ServiceReference" in out


def test_payload_json_keeps_the_hex_and_reports_an_undecodable_gbcs_frame() -> None:
    out = payload_json(b"\xdf\x09")
    assert out["hex"] == "DF09" and out["octets"] == 2
    assert out["gbcs_error"]["code"] == "gbcs_truncated"
