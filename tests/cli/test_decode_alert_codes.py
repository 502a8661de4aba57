"""``duisgw decode`` and the alert code of a GBCS alert: named the same way wherever it is shown, and a
DUIS alert code (``AlertCode``, ``FutureDatedAlertCode``) that disagrees with the signed GBCS alert it
carries is reported, as the gateway's pipeline reports it (``gbcs-mismatch``)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gateway.cli import main

CS06 = "gbcs/rtds-4.5.0/11.3_CS06/CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT_GBCS.HEX"
ECS80 = "gbcs/rtds-4.5.0/NA_ECS80/ECS80_NA_8F36_ALERT_GBCS.HEX"
ECS100 = "gbcs/rtds-4.5.0/NA_ECS100/ECS100_NA_8F85_ALERT_GBCS.HEX"
NS = 'xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway"'


def _decode(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    rc = main(["decode", *argv])
    out = capsys.readouterr().out
    assert rc == 0
    obj = json.loads(out)
    assert isinstance(obj, dict)
    return obj


def _b64(shared: Path, vector: str) -> str:
    return base64.b64encode(bytes.fromhex((shared / vector).read_text().strip())).decode()


def _future_dated(shared: Path, code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><sr:Response {NS} schemaVersion="5.4"><sr:Header>'
        "<sr:RequestID>90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1001</sr:RequestID>"
        "<sr:ResponseCode>I0</sr:ResponseCode><sr:ResponseDateTime>2030-01-15T09:00:05Z</sr:ResponseDateTime>"
        "</sr:Header><sr:Body><sr:ResponseMessage><sr:ServiceReference>11.3</sr:ServiceReference>"
        "<sr:ServiceReferenceVariant>11.3</sr:ServiceReferenceVariant><sr:FutureDatedDeviceAlertMessage>"
        f"<sr:FutureDatedAlertCode>{code}</sr:FutureDatedAlertCode>"
        f"<sr:GBCSPayload>{_b64(shared, CS06)}</sr:GBCSPayload><sr:InstructionNumber>1</sr:InstructionNumber>"
        "<sr:TotalCommandInstructions>1</sr:TotalCommandInstructions></sr:FutureDatedDeviceAlertMessage>"
        "</sr:ResponseMessage></sr:Body></sr:Response>"
    ).encode()


def _device_alert(shared: Path, code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><sr:Response {NS} schemaVersion="5.4"><sr:Header>'
        "<sr:ResponseID>00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-02-00-00:2003</sr:ResponseID>"
        "<sr:ResponseCode>I0</sr:ResponseCode><sr:ResponseDateTime>2020-01-01T00:00:05Z</sr:ResponseDateTime>"
        f"</sr:Header><sr:Body><sr:DeviceAlertMessage><sr:AlertCode>{code}</sr:AlertCode>"
        f"<sr:GBCSPayload>{_b64(shared, ECS80)}</sr:GBCSPayload></sr:DeviceAlertMessage></sr:Body></sr:Response>"
    ).encode()


def test_an_unknown_alert_code_is_named_alike_in_the_frame_and_in_the_payload(
    shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = _decode(capsys, str(shared / ECS100))
    frame = obj["frame"]
    payload = obj["payload"]
    assert isinstance(frame, dict) and isinstance(payload, dict)
    assert frame["alert_code"] == "8F85"
    items = payload["tree"]["body"]["items"]
    assert items[0]["alert_code_name"] == "unknown alert code 0x8F85"
    assert frame["alert_code_name"] == items[0]["alert_code_name"]  # was "" in the frame


@pytest.mark.parametrize("code", ["8F66", "8f66"])
def test_a_future_dated_alert_code_that_matches_its_gbcs_alert_is_not_flagged(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], code: str
) -> None:
    doc = tmp_path / "fd.xml"
    doc.write_bytes(_future_dated(shared, code))
    assert _decode(capsys, str(doc))["warnings"] == []


def test_a_future_dated_alert_code_that_disagrees_with_its_gbcs_alert_is_flagged(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "fd.xml"
    doc.write_bytes(_future_dated(shared, "8F67"))  # the signed GBCS alert says 8F66 (actioned)
    warnings = _decode(capsys, str(doc))["warnings"]
    assert warnings == ["FutureDatedAlertCode 8F67 but the GBCS alert is 8F66"]


def test_a_device_alert_code_that_disagrees_with_its_gbcs_alert_is_flagged_in_text_too(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "ok.xml"
    good.write_bytes(_device_alert(shared, "8f36"))
    assert _decode(capsys, str(good))["warnings"] == []
    doc = tmp_path / "da.xml"
    doc.write_bytes(_device_alert(shared, "8F35"))  # the signed GBCS alert says 8F36
    assert _decode(capsys, str(doc))["warnings"] == ["AlertCode 8F35 but the GBCS alert is 8F36"]
    assert main(["decode", "--text", str(doc)]) == 0
    assert "AlertCode 8F35 but the GBCS alert is 8F36" in capsys.readouterr().out
