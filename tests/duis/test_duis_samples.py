"""Every DUIS sample and RTDS template in ../shared decodes; the broken ones fail by name."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.duis.decode import decode, decode_tree
from gateway.duis.encode import encode
from gateway.duis.errors import InvalidField
from gateway.duis.model import (
    ActivateFirmware,
    DSPInventory,
    RawBody,
    ReadInventory,
    Request,
    Response,
    ResponseMessage,
    UpdateFirmware,
)
from gateway.duis.safexml import parse_xml
from gateway.duis.schema import DuisSchema
from gateway.duis.values import SERVICE_REFERENCES, SRV_COMMAND_VARIANTS, MessageId

BROKEN = {"ECS17b_4.1.1_SINGLE_SUCCESS_REQUEST_DUIS-invalid.XML"}


def _files(shared: Path) -> list[Path]:
    return sorted((shared / "duis" / "samples").iterdir()) + sorted((shared / "duis" / "templates").iterdir())


def test_every_sample_and_template_decodes_and_reencodes_to_the_same_model(shared: Path) -> None:
    seen = 0
    for path in _files(shared):
        if path.name in BROKEN:
            continue
        doc = decode(path.read_bytes())
        assert isinstance(doc, Request | Response), path.name
        again = decode(encode(doc))
        assert again == doc, path.name
        seen += 1
    assert seen > 250


def test_templates_decode_without_cross_field_warnings(shared: Path) -> None:
    noisy = {}
    for path in sorted((shared / "duis" / "templates").iterdir()):
        doc = decode(path.read_bytes())
        if doc.warnings:
            noisy[path.name] = doc.warnings
    assert noisy == {}


def test_double_colon_in_request_id_is_invalid_field(shared: Path) -> None:
    data = (shared / "duis" / "samples" / "ECS17b_4.1.1_SINGLE_SUCCESS_REQUEST_DUIS-invalid.XML").read_bytes()
    with pytest.raises(InvalidField, match="RequestID"):
        decode(data)


def test_readfw_invalid_decodes_with_service_reference_warning_but_fails_the_xsd(
    shared: Path, official_schema: DuisSchema, compact_schema: DuisSchema
) -> None:
    data = (shared / "duis" / "samples" / "readfw-response-invalid.xml").read_bytes()
    doc = decode(data)
    assert isinstance(doc, Response)
    assert any("ServiceReference '11.2.11.2'" in w for w in doc.warnings)
    root = parse_xml(data)
    errors = official_schema.validate(root)
    assert errors and "ServiceReference" in errors[0]
    assert compact_schema.validate(root)


def test_official_and_compact_schema_accept_every_valid_sample(
    shared: Path, official_schema: DuisSchema, compact_schema: DuisSchema
) -> None:
    for path in _files(shared):
        if path.name in BROKEN or path.name == "readfw-response-invalid.xml":
            continue
        root = parse_xml(path.read_bytes())
        assert official_schema.validate(root) == [], path.name
        assert compact_schema.validate(root) == [], path.name


def test_readfw_response_header_ids_and_payload(shared: Path) -> None:
    doc = decode((shared / "duis" / "samples" / "readfw-response.xml").read_bytes())
    assert isinstance(doc, Response)
    h = doc.header
    assert h.request_id == MessageId(0x90B3D51F30010000, 0x88738457002F961E, 1660751141087)
    assert str(h.response_id) == "88-73-84-57-00-2F-96-1E:90-B3-D5-1F-30-01-00-00:1660751141087"
    assert h.response_code == "I0"
    assert h.response_datetime == datetime(2022, 8, 17, 15, 45, 42, 790000, tzinfo=UTC)
    assert doc.schema_version == Decimal("5.1")
    assert isinstance(doc.body, ResponseMessage)
    assert doc.body.service_reference_variant == "11.2"
    payload = doc.body.gbcs_payload
    assert payload is not None and payload[:1] == b"\xdd" and len(payload) == 93
    assert doc.identity == f"{h.response_id}|ResponseMessage.GBCSPayload"


def test_decode_tree_matches_decode_on_the_same_bytes(shared: Path) -> None:
    data = (shared / "duis" / "samples" / "readfw-response.xml").read_bytes()
    assert decode_tree(parse_xml(data)) == decode(data)


def test_acknowledgement_error_has_no_payload_and_an_id_less_identity(shared: Path) -> None:
    doc = decode((shared / "duis" / "samples" / "acknowledgement-error.xml").read_bytes())
    assert isinstance(doc, Response) and isinstance(doc.body, ResponseMessage)
    assert doc.header.response_code == "E65" and doc.header.response_id is None
    assert doc.body.payload is None and doc.kind == "ResponseMessage.Ack"
    assert doc.identity.startswith(
        "90-B3-D5-1F-30-01-00-00:88-73-84-57-00-2F-96-6C:1658482675800|E65|ResponseMessage.Ack|"
    )


def test_inventory_response_devices_are_typed(shared: Path) -> None:
    doc = decode((shared / "duis" / "samples" / "read-inventory-response-5.4.xml").read_bytes())
    assert isinstance(doc, Response) and isinstance(doc.body, ResponseMessage)
    inv = doc.body.payload
    assert isinstance(inv, DSPInventory)
    assert [d.device_type for d in inv.devices] == ["CHF", "CAD", "GPF"]
    chf = inv.devices[0]
    assert chf.device_id == 0x887384906A1002DB and chf.device_status == "Commissioned"
    assert chf.device_firmware_version == "9001" and chf.uprn == 123456789012
    assert chf.property_filter is not None and chf.property_filter.post_code == "1111-111"
    assert inv.devices[1].device_status is None


@pytest.mark.parametrize(
    ("name", "future", "cancel"),
    [
        ("CS06_11.3_IMMEDIATE_SUCCESS_REQUEST_DUIS.XML", False, False),
        ("CS06_11.3_FUTURE_DATED_SUCCESS_REQUEST_DUIS.XML", True, False),
        ("CS06_11.3_CANCELLATION_SUCCESS_REQUEST_DUIS.XML", False, True),
    ],
)
def test_activate_firmware_templates(shared: Path, name: str, future: bool, cancel: bool) -> None:
    doc = decode((shared / "duis" / "templates" / name).read_bytes())
    assert isinstance(doc, Request) and isinstance(doc.body, ActivateFirmware)
    assert doc.header.command_variant == 4 and doc.header.service_reference_variant == "11.3"
    assert doc.header.request_id.target == 0x00DB1234567890A0
    assert len(doc.body.firmware_hash) == 32 and doc.body.firmware_hash[:2] == b"\xaa\x75"
    assert doc.body.is_future_dated is future
    assert doc.body.is_cancellation is cancel
    assert doc.identity == f"{doc.header.request_id}|CV4"


def test_read_inventory_and_update_firmware_templates(shared: Path) -> None:
    inv = decode((shared / "duis" / "templates" / "8.2_READ_INVENTORY_REQUEST_DUIS.XML").read_bytes())
    assert isinstance(inv, Request) and inv.body == ReadInventory(device_id=0x00DB1234567890A2)
    upd = decode((shared / "duis" / "templates" / "11.1_UPDATE_FIRMWARE_REQUEST_DUIS.XML").read_bytes())
    assert isinstance(upd, Request) and isinstance(upd.body, UpdateFirmware)
    assert upd.body.device_ids == (0x00DB1234567890A0,) and upd.body.firmware_version == "00000000"
    assert upd.body.firmware_image[:4] == bytes.fromhex("1EF1EE0B")


def test_other_bodies_are_kept_raw_by_name(shared: Path) -> None:
    doc = decode((shared / "duis" / "samples" / "ECS50_9.1_SUCCESS_REQUEST_DUIS.XML").read_bytes())
    assert isinstance(doc, Request) and isinstance(doc.body, RawBody)
    assert doc.body.name == "RequestCustomerIdentificationNumber"
    # lower-case hex in the sample; the model is case-free and renders upper case
    assert str(doc.header.request_id).startswith("00-DB-12-34-56-78-00-04:")


def test_command_variant_table_agrees_with_the_request_matrix(shared: Path) -> None:
    matrix = json.loads((shared / "duis" / "tables" / "duis-request-matrix.json").read_text())
    assert {row["Service Reference Variant"] for row in matrix} == set(SRV_COMMAND_VARIANTS)
    for row in matrix:
        cvs = set(SRV_COMMAND_VARIANTS[row["Service Reference Variant"]])
        if row["Non-Device Request"] == "Yes":
            assert cvs == {8}, row
        elif row["Critical"] == "Yes":
            assert cvs <= {4, 5, 6, 7}, row
        else:
            assert cvs <= {1, 2, 3}, row


def test_service_reference_set_equals_the_xsd_enumeration(shared: Path) -> None:
    xsd = (shared / "duis" / "schemas" / "DUIS Schema V5.4.xsd").read_text()
    start = xsd.index('<xs:simpleType name="ServiceReference">')
    block = xsd[start : xsd.index("</xs:simpleType>", start)]
    assert set(re.findall(r'value="([^"]+)"', block)) == SERVICE_REFERENCES
