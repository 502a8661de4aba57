"""Encoder: byte-stable, round-trips every model kind, and everything it writes is valid DUIS 5.4."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from duis_strategies import requests, responses
from hypothesis import HealthCheck, given, settings

from gateway.duis.decode import decode
from gateway.duis.encode import (
    build_11_3_request,
    build_11_3_response,
    build_ad1_alert,
    build_device_alert,
    build_device_status_change_alert,
    build_future_dated_alert_response,
    build_inventory_response,
    encode,
)
from gateway.duis.errors import UnencodableModel
from gateway.duis.model import (
    DCCAlertMessage,
    DeviceStatusChangeEvent,
    FutureDatedDeviceAlertMessage,
    InventoryDevice,
    MeterMPxNs,
    PowerOutageEvent,
    Request,
    Response,
    ResponseMessage,
    SignedPreCommand,
)
from gateway.duis.safexml import parse_xml
from gateway.duis.schema import DuisSchema
from gateway.duis.values import MessageId

SUPPLIER, DNO, DCC = 0x90B3D51F30010000, 0x90B3D51F30020000, 0x90B3D51F30000002
ESME, CHF = 0x00DB1234567890A0, 0x00DB1234567890A2
T0 = datetime(2026, 1, 15, 9, 4, 12, tzinfo=UTC)


def _hex_file(shared: Path, rel: str) -> bytes:
    return bytes.fromhex((shared / "gbcs" / "rtds-4.5.0" / rel).read_text().split()[0])


def _built(shared: Path) -> dict[str, Request | Response]:
    rid = MessageId(SUPPLIER, ESME, 1001)
    return {
        "ad1": build_ad1_alert(
            comms_hub_device_id=0x887384906A1002DB,
            start_datetime=datetime(2026, 1, 15, 9, 0, 5, tzinfo=UTC),
            mpxn="1234567890126",
            response_datetime=T0,
            response_id=MessageId(DCC, DNO, 1768467852000),
        ),
        "11.3-response": build_11_3_response(
            request_id=rid,
            gbcs_payload=_hex_file(shared, "11.3_CS06/CS06_11.3_IMMEDIATE_SUCCESS_RESPONSE_GBCS.HEX"),
            response_datetime=T0,
        ),
        "11.3-8F66": build_future_dated_alert_response(
            request_id=rid,
            gbcs_payload=_hex_file(shared, "11.3_CS06/CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT_GBCS.HEX"),
            response_datetime=T0,
        ),
        "11.3-8F67": build_future_dated_alert_response(
            request_id=rid,
            gbcs_payload=_hex_file(shared, "11.3_CS06/CS06_11.3_8F67_FUTURE_DATED_ERROR_ALERT_GBCS.HEX"),
            response_datetime=T0,
            success=False,
        ),
        "8.2-inventory": build_inventory_response(
            request_id=MessageId(DNO, DCC, 42),
            devices=(
                InventoryDevice(
                    ESME,
                    "ESME",
                    "L+G",
                    "E470",
                    "Commissioned",
                    device_firmware_version="0123ABCF",
                    import_mpxn="1234567890123",
                ),
                InventoryDevice(CHF, "CHF", "106C", "433100AC", "Commissioned", import_mpxn="1234567890123"),
            ),
            response_datetime=T0,
        ),
        "8F36-device-alert": build_device_alert(
            alert_code=b"\x8f\x36",
            gbcs_payload=_hex_file(shared, "NA_ECS80/ECS80_NA_8F36_ALERT_GBCS.HEX"),
            response_datetime=T0,
            response_id=MessageId(ESME, DNO, 7),
        ),
        "status-change": build_device_status_change_alert(
            device_id=ESME,
            change="MeterIdentity",
            mpxns=MeterMPxNs("1234567890123"),
            dcc_alert_code="N12",
            response_datetime=T0,
        ),
        "11.3-CV4": build_11_3_request(request_id=rid, firmware_hash=bytes(range(32))),
        "11.3-CV5-future": build_11_3_request(
            request_id=rid,
            command_variant=5,
            signed_pre_command=_hex_file(shared, "11.3_CS06/CS06_11.3_FUTURE_DATED_SUCCESS_COMMAND_GBCS.HEX"),
            execution_datetime=datetime(2030, 1, 15, 9, tzinfo=UTC),
        ),
        "11.3-CV5-cancel": build_11_3_request(
            request_id=rid,
            command_variant=5,
            signed_pre_command=b"\xdf\x09",
            execution_datetime=datetime(3000, 12, 31, tzinfo=UTC),
        ),
    }


def test_builders_encode_to_official_and_compact_valid_duis_that_round_trips(
    shared: Path, official_schema: DuisSchema, compact_schema: DuisSchema
) -> None:
    for name, model in _built(shared).items():
        data = encode(model)
        root = parse_xml(data)
        assert official_schema.validate(root) == [], name
        assert compact_schema.validate(root) == [], name
        back = decode(data)
        assert back == model, name
        assert back.warnings == (), (name, back.warnings)
        assert encode(back) == data, name


def test_builder_shapes(shared: Path) -> None:
    built = _built(shared)
    ad1 = built["ad1"]
    assert isinstance(ad1, Response) and isinstance(ad1.body, DCCAlertMessage)
    assert isinstance(ad1.body.alert, PowerOutageEvent)
    fd = built["11.3-8F67"]
    assert isinstance(fd, Response) and isinstance(fd.body, ResponseMessage)
    assert (
        isinstance(fd.body.payload, FutureDatedDeviceAlertMessage)
        and fd.body.payload.alert_code == b"\x8f\x67"
    )
    assert str(fd.header.response_id) == "00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00:1001"
    assert fd.identity != built["11.3-response"].identity  # same ResponseID form, different messages
    cv5 = built["11.3-CV5-cancel"]
    assert isinstance(cv5, Request) and isinstance(cv5.body, SignedPreCommand) and cv5.body.is_cancellation
    sc = built["status-change"]
    assert isinstance(sc, Response) and isinstance(sc.body, DCCAlertMessage)
    assert isinstance(sc.body.alert, DeviceStatusChangeEvent)


def test_encoding_is_byte_stable_and_uses_the_sr_prefix(shared: Path) -> None:
    model = _built(shared)["ad1"]
    a, b = encode(model), encode(replace(model))
    assert a == b
    assert a.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<sr:Response xmlns:sr=")
    assert b"ds:Signature" not in a and b"\n  " not in a


def test_naive_datetime_in_a_model_is_unencodable() -> None:
    model = build_ad1_alert(
        comms_hub_device_id=1, start_datetime=datetime(2026, 1, 1), mpxn="1234567890123", response_datetime=T0
    )
    with pytest.raises(UnencodableModel):
        encode(model)


def test_identity_is_the_same_for_a_redelivered_message_and_differs_for_another_hub(shared: Path) -> None:
    ad1 = _built(shared)["ad1"]
    assert isinstance(ad1, Response)
    no_id = replace(ad1, header=replace(ad1.header, response_id=None))
    assert decode(encode(no_id)).identity == no_id.identity
    assert isinstance(no_id.body, DCCAlertMessage) and isinstance(no_id.body.alert, PowerOutageEvent)
    other_hub = replace(
        no_id, body=replace(no_id.body, alert=replace(no_id.body.alert, comms_hub_device_id=2))
    )
    assert other_hub.identity != no_id.identity


@given(responses())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_response_model_round_trips_and_is_valid_duis(
    official_schema: DuisSchema, compact_schema: DuisSchema, model: Response
) -> None:
    data = encode(model)
    assert decode(data) == model
    root = parse_xml(data)
    assert official_schema.validate(root) == []
    assert compact_schema.validate(root) == []


@given(requests())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_request_model_round_trips_and_is_valid_duis(
    official_schema: DuisSchema, compact_schema: DuisSchema, model: Request
) -> None:
    data = encode(model)
    back = decode(data)
    assert back == model
    assert back.warnings == ()
    root = parse_xml(data)
    assert official_schema.validate(root) == []
    assert compact_schema.validate(root) == []


def test_comments_and_pretty_printing_do_not_change_the_model(shared: Path) -> None:
    # the decoder's exact-shape fast paths and its checking walk must agree
    for name, model in _built(shared).items():
        data = encode(model)
        commented = data.replace(b"><sr:", b"><!-- c --><sr:").replace(b"></sr:", b"><!-- d --></sr:")
        pretty = data.replace(b"><sr:", b">\n  <sr:")
        assert decode(commented) == model, name
        assert decode(pretty) == model, name


def test_throttled_ad1_takes_the_checking_walk_and_round_trips() -> None:
    model = build_ad1_alert(
        comms_hub_device_id=0x887384906A1002DB,
        start_datetime=datetime(2026, 1, 15, 9, 0, 5, tzinfo=UTC),
        mpxn="1234567890123",
        response_datetime=T0,
        throttled_alert_sequence_id=7,
        throttled_alert_count=3,
    )
    assert decode(encode(model)) == model
