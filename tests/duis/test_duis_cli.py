"""``duisgw decode`` and ``duisgw validate``: output and exit codes."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from gateway.cli import main
from gateway.cli import validate as validate_cli
from gateway.cli.decode import payload_json, read_input
from gateway.duis.errors import OversizeBody, ValidationFailed
from gateway.duis.schema import load_compact


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


def test_validate_of_a_doctype_hidden_after_a_comment_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    evil = tmp_path / "evil.xml"
    evil.write_bytes(b'<!--<x--><!DOCTYPE r SYSTEM "/etc/passwd"><r/>')
    assert main(["validate", str(evil)]) == 2
    err = capsys.readouterr().err
    assert "doctype_forbidden" in err and err.count("\n") == 1


# A tree that carries a DTD (only a parser other than safexml's can make one): libxml2's XSD
# validator fails on it with XMLSchemaValidateError ("Internal error in XML Schema validation").
_DTD_TREE = (
    b'<!DOCTYPE sr:Response [<!ENTITY e "X">]><sr:Response '
    b'xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway" schemaVersion="5.1"><sr:Header>'
    b"<sr:ResponseCode>E&e;65</sr:ResponseCode><sr:ResponseDateTime>2022-07-22T09:37:56Z"
    b"</sr:ResponseDateTime></sr:Header><sr:Body><sr:ResponseMessage><sr:ServiceReference>11.2"
    b"</sr:ServiceReference><sr:ServiceReferenceVariant>11.2</sr:ServiceReferenceVariant>"
    b"</sr:ResponseMessage></sr:Body></sr:Response>"
)


def _dtd_tree() -> etree._Element:
    return etree.fromstring(
        _DTD_TREE, etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True)
    )


def test_schema_validator_failure_is_a_named_error_not_an_lxml_exception() -> None:
    schema = load_compact()
    with pytest.raises(ValidationFailed):
        schema.validate(_dtd_tree())
    assert schema.is_valid(_dtd_tree()) is False


def test_validate_exits_2_with_one_line_when_the_validator_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "doc.xml"
    doc.write_bytes(b"<r/>")
    monkeypatch.setattr(validate_cli, "parse_xml", lambda data, max_bytes: _dtd_tree())
    assert main(["validate", str(doc)]) == 2
    err = capsys.readouterr().err
    assert "validation_failed" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- input size cap while
# reading (the whole input used to be read before the cap: `duisgw decode /dev/zero` ran out of memory)


class _Endless(io.RawIOBase):
    """A stream of zero bytes that never ends (counts what was read; refuses past ``stop``)."""

    def __init__(self, stop: int) -> None:
        self.read_so_far = 0
        self.stop = stop

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = len(buffer)
        self.read_so_far += n
        if self.read_so_far > self.stop:
            raise AssertionError("the whole input is being read")
        buffer[:n] = bytes(n)
        return n


@pytest.mark.parametrize("command", ["decode", "validate"])
def test_an_endless_stdin_is_oversize_after_reading_one_byte_more_than_the_cap(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _Endless(stop=64 << 20)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(raw)))
    assert main([command, "--max-bytes", "100000", "-"]) == 2
    err = capsys.readouterr().err
    assert "oversize_body" in err and err.count("\n") == 1
    assert raw.read_so_far <= 100_001 + io.DEFAULT_BUFFER_SIZE


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize(
    "argv",
    [["decode"], ["validate"], ["verify", "--certs", "."], ["sign", "--key", "/dev/null", "--cert", "/dev/null"]],
)
def test_dev_zero_is_oversize_not_out_of_memory(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([argv[0], "/dev/zero", *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert "oversize_body" in err and err.count("\n") == 1


def test_read_input_reads_a_file_up_to_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "doc.xml"
    path.write_bytes(b"x" * 10)
    assert read_input(str(path), 10) == b"x" * 10
    with pytest.raises(OversizeBody):
        read_input(str(path), 9)
