"""``duisgw verify`` / ``duisgw sign``: JSON result and exit codes 0 valid, 1 invalid, 2 unusable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from xmldsig_docs import ad1_alert

from gateway.cli import main


def test_verify_prints_json_and_exits_0_for_a_valid_sample(
    shared: Path, certs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["verify", str(shared / "duis/samples/readfw-response.xml"), "--certs", str(certs_dir)])
    out = json.loads(capsys.readouterr().out)
    assert (
        rc == 0
        and out["valid"] is True
        and out["signer_eui"] == "90-B3-D5-1F-30-00-00-02"
        and out["role_hex"] == "89"
    )


def test_verify_exits_1_for_invalid_and_unsigned(
    shared: Path, certs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "verify",
                str(shared / "duis/samples/readfw-response-badsignature.xml"),
                "--certs",
                str(certs_dir),
            ]
        )
        == 1
    )
    assert json.loads(capsys.readouterr().out)["reason"] == "signature_mismatch"
    assert (
        main(
            [
                "verify",
                str(shared / "duis/samples/readfw-response-no-signature.xml"),
                "--certs",
                str(certs_dir),
            ]
        )
        == 1
    )
    assert json.loads(capsys.readouterr().out)["status"] == "unsigned"


def test_verify_exits_2_for_unusable_input(
    tmp_path: Path, certs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x.xml"
    bad.write_bytes(b"<not-closed")
    assert main(["verify", str(bad), "--certs", str(certs_dir)]) == 2
    assert "malformed_xml" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing.xml"), "--certs", str(certs_dir)]) == 2


def test_sign_then_verify_round_trip_with_at_and_whitespace_options(
    tmp_path: Path, certs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "ad1.xml"
    src.write_bytes(ad1_alert())
    out = tmp_path / "ad1-signed.xml"
    stem = certs_dir / "Z1-accessControlBroker-dSPXmlSign"
    assert main(["sign", str(src), "--key", f"{stem}.key", "--cert", f"{stem}.pem", "-o", str(out)]) == 0
    assert main(["verify", str(out), "--certs", str(certs_dir)]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--certs", str(certs_dir), "--at", "2040-01-01T00:00:00Z"]) == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "certificate_expired"
    pretty = tmp_path / "pretty.xml"
    pretty.write_bytes(out.read_bytes().replace(b"><sr:", b">\n  <sr:"))
    assert main(["verify", str(pretty), "--certs", str(certs_dir)]) == 1
    capsys.readouterr()
    assert main(["verify", str(pretty), "--certs", str(certs_dir), "--tolerate-whitespace"]) == 0
    assert json.loads(capsys.readouterr().out)["whitespace_tolerated"] is True


def test_sign_rejects_a_key_that_does_not_match(
    tmp_path: Path, certs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "ad1.xml"
    src.write_bytes(ad1_alert())
    key = certs_dir / "Z1-supplier-ds.key"
    cert = certs_dir / "Z1-accessControlBroker-dSPXmlSign.pem"
    assert main(["sign", str(src), "--key", str(key), "--cert", str(cert)]) == 2
    assert "signing_error" in capsys.readouterr().err


def test_verify_exits_2_for_a_time_without_a_utc_equivalent(
    tmp_path: Path, certs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the message's own ResponseDateTime (read before the signature: a junk Signature is enough) ...
    junk = ad1_alert(response_dt="0001-01-01T00:00:00+14:00").replace(
        b"</sr:Response>", b'<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"/></sr:Response>'
    )
    doc = tmp_path / "far.xml"
    doc.write_bytes(junk)
    assert main(["verify", str(doc), "--certs", str(certs_dir)]) == 2
    assert "invalid_field" in capsys.readouterr().err
    # ... or the time given on the command line
    stem = certs_dir / "Z1-accessControlBroker-dSPXmlSign"
    signed = tmp_path / "ad1-signed.xml"
    src = tmp_path / "ad1.xml"
    src.write_bytes(ad1_alert())
    assert main(["sign", str(src), "--key", f"{stem}.key", "--cert", f"{stem}.pem", "-o", str(signed)]) == 0
    far = ["--at", "9999-12-31T23:59:59-14:00"]
    assert main(["verify", str(signed), "--certs", str(certs_dir), *far]) == 2
    assert "time_out_of_range" in capsys.readouterr().err
