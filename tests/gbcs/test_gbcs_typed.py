"""Typed payloads of the use cases the gateway acts on, against the values in GBCS.md §5/§9."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import VectorFn

from gbcs.frame import CRA, parse_frame
from gbcs.payload import (
    ActivateFirmwareCommand,
    ActivateFirmwareResponse,
    FirmwareActivationAlert,
    FirmwareReceiptAlert,
    FutureDatedInstructionAlert,
    MeterIntegrityWarningAlert,
    SupplyOutageRestoredAlert,
    decode_payload,
)

ESME = 0x00DB1234567890A0
GSME = 0x00DB1234567890A1
SUPPLIER = 0x90B3D51F30010000
DNO = 0x90B3D51F30020000
IMAGE_HASH = bytes.fromhex("AA758690730934FF0685AA758690730934FF0685657788990011223344556677")

CS06_COMMANDS = [
    # scenario, counter, execution time (None = immediate), cancellation
    ("IMMEDIATE_SUCCESS", 1000, None, False),
    ("IMMEDIATE_ERROR", 1005, None, False),
    ("FUTURE_DATED_SUCCESS", 1001, datetime(2030, 1, 15, 9, 0, 0, tzinfo=UTC), False),
    ("FUTURE_DATED_ERROR", 1004, datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC), False),
    ("CANCELLATION_SUCCESS", 1002, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), True),
]


@pytest.mark.parametrize("kind", ["PRECOMMAND", "COMMAND"])
@pytest.mark.parametrize(("scenario", "counter", "execution", "cancel"), CS06_COMMANDS)
def test_cs06_command_decodes_hash_counter_and_execution_time(
    vector: VectorFn, kind: str, scenario: str, counter: int, execution: datetime | None, cancel: bool
) -> None:
    frame = parse_frame(vector(f"CS06_11.3_{scenario}_{kind}"))
    assert (frame.cra, frame.message_code) == (CRA.COMMAND, 0x0012)
    assert (frame.originator, frame.recipient, frame.originator_counter) == (SUPPLIER, ESME, counter)
    cmd = decode_payload(frame).typed
    assert isinstance(cmd, ActivateFirmwareCommand)
    assert cmd.image_hash == IMAGE_HASH
    assert cmd.originator_counter == counter
    assert cmd.execution_date_time == execution
    assert cmd.is_immediate is (execution is None)
    assert cmd.is_cancellation is cancel


@pytest.mark.parametrize(
    ("scenario", "counter", "accepted", "code", "version"),
    [
        ("IMMEDIATE_SUCCESS", 1000, False, 0, "0123ABCE"),
        ("IMMEDIATE_ERROR", 1005, False, 1, "0123ABCF"),
        ("FUTURE_DATED_SUCCESS", 1001, True, None, None),
        ("FUTURE_DATED_ERROR", 1004, True, None, None),
        ("CANCELLATION_SUCCESS", 1002, True, None, None),
    ],
)
def test_cs06_response_decodes_outcome_or_command_accepted(
    vector: VectorFn, scenario: str, counter: int, accepted: bool, code: int | None, version: str | None
) -> None:
    frame = parse_frame(vector(f"CS06_11.3_{scenario}_RESPONSE"))
    assert (frame.cra, frame.originator, frame.recipient, frame.originator_counter) == (
        CRA.RESPONSE,
        ESME,
        SUPPLIER,
        counter,
    )
    assert frame.date_time is not None
    resp = decode_payload(frame).typed
    assert isinstance(resp, ActivateFirmwareResponse)
    assert resp.accepted_for_later is accepted
    assert resp.response_code == code
    assert (resp.firmware_version.hex().upper() if resp.firmware_version else None) == version
    assert resp.response_name == {None: "Command Accepted", 0: "Success", 1: "No Image Held"}[code]


@pytest.mark.parametrize(
    ("name", "alert_ctr", "alert", "execution", "ref_ctr", "code", "outcome"),
    [
        (
            "CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT",
            2000,
            0x8F66,
            datetime(2030, 1, 15, 9, tzinfo=UTC),
            1001,
            0,
            "Success",
        ),
        (
            "CS06_11.3_8F67_FUTURE_DATED_ERROR_ALERT",
            2001,
            0x8F67,
            datetime(2030, 1, 1, tzinfo=UTC),
            1004,
            2,
            "Hash Mismatch",
        ),
    ],
)
def test_cs06_future_dated_alert_carries_the_commands_counter_and_outcome(
    vector: VectorFn,
    name: str,
    alert_ctr: int,
    alert: int,
    execution: datetime,
    ref_ctr: int,
    code: int,
    outcome: str,
) -> None:
    frame = parse_frame(vector(name))
    assert (frame.cra, frame.message_code, frame.alert_code) == (CRA.ALERT, 0x00CA, alert)
    assert (frame.originator, frame.recipient, frame.originator_counter) == (ESME, SUPPLIER, alert_ctr)
    a = decode_payload(frame).typed
    assert isinstance(a, FirmwareActivationAlert)
    assert (a.alert_code, a.execution.value, a.originator_counter, a.response_code) == (
        alert,
        execution,
        ref_ctr,
        code,
    )
    assert a.response_name == outcome
    assert a.firmware_version == bytes.fromhex("0123ABCF")
    assert a.succeeded is (alert == 0x8F66)


def test_ecs80_8f36_gives_interruption_and_restoration_times(vector: VectorFn) -> None:
    frame = parse_frame(vector("ECS80_NA_8F36_ALERT"))
    assert (frame.message_code, frame.alert_code, frame.originator, frame.recipient) == (
        0x0067,
        0x8F36,
        ESME,
        DNO,
    )
    assert frame.originator_counter == 2003
    a = decode_payload(frame).typed
    assert isinstance(a, SupplyOutageRestoredAlert)
    assert a.alert_code == 0x8F36
    assert a.time_stamp.to_datetime() == datetime(2015, 1, 1, tzinfo=UTC)
    assert a.interruption.to_datetime() == datetime(2014, 12, 31, 23, 50, tzinfo=UTC)
    assert a.restoration.to_datetime() == datetime(2014, 12, 31, 23, 59, tzinfo=UTC)
    # RTDS leaves every clock status unspecified (0xFF): no word on the clock, so no doubt either
    assert not any(t.unreliable for t in (a.time_stamp, a.interruption, a.restoration))


@pytest.mark.parametrize(
    ("name", "orig", "ctr", "msg", "hash_byte"),
    [
        ("FDRA-DLMS_NA_8F72_ALERT", ESME, 2000, 0x00CE, 0x01),
        ("FDRA-ZigBee_NA_8F72_ALERT", GSME, 3000, 0x00CF, 0xA1),
    ],
)
def test_firmware_receipt_alert_8f72_carries_the_calculated_hash(
    vector: VectorFn, name: str, orig: int, ctr: int, msg: int, hash_byte: int
) -> None:
    frame = parse_frame(vector(name))
    assert (frame.message_code, frame.alert_code, frame.originator, frame.originator_counter) == (
        msg,
        0x8F72,
        orig,
        ctr,
    )
    a = decode_payload(frame).typed
    assert isinstance(a, FirmwareReceiptAlert)
    assert a.image_hash == bytes([hash_byte]) * 32
    assert a.verified
    assert a.time_stamp == datetime(2015, 1, 1, tzinfo=UTC)


def test_dlms_future_dated_alert_names_the_original_command(vector: VectorFn) -> None:
    a = decode_payload(parse_frame(vector("ECS08_2.1_8F66_FUTURE_DATED_SUCCESS_ALERT_CALENDAR"))).typed
    assert isinstance(a, FutureDatedInstructionAlert)
    assert (a.alert_code, a.message_code, a.originator_counter) == (0x8F66, 0x001F, 1004)
    assert a.instruction == {"class_id": 9000, "instance": "0-0:94.44.128.28", "attribute": 6}


def test_gbz_future_dated_alert_names_the_original_command(vector: VectorFn) -> None:
    a = decode_payload(
        parse_frame(vector("GCS05_2.1_8F66_FUTURE_DATED_SUCCESS_ALERT_PUBLISH_CALENDAR"))
    ).typed
    assert isinstance(a, FutureDatedInstructionAlert)
    assert (a.alert_code, a.message_code, a.originator_counter) == (0x8F66, 0x006F, 1001)
    assert a.instruction["cluster"] == "0707" and a.instruction["command"] == 0


@pytest.mark.parametrize("name", ["MIIWA-DLMS_NA_81A0_ALERT", "MIIWA-ZigBee_NA_81A0_ALERT"])
def test_meter_integrity_warning_unexpected_hardware_reset(vector: VectorFn, name: str) -> None:
    a = decode_payload(parse_frame(vector(name))).typed
    assert isinstance(a, MeterIntegrityWarningAlert)
    assert (a.alert_code, a.warning_code) == (0x81A0, 0x0005)


@pytest.mark.parametrize(
    ("name", "alert"),
    [
        ("GCA-DLMS_NA_8F30_ALERT", 0x8F30),
        ("GCA-ZigBee_NA_8F30_ALERT", 0x8F30),
        ("GNCA-DLMS_NA_810E_ALERT", 0x810E),
        ("GNCA-ZigBee_NA_810E_ALERT", 0x810E),
        ("CCS08_NA_NA_ALERT", 0x8F8A),
        ("CS09_NA_8F8B_ALERT", 0x8F8B),
    ],
)
def test_alert_code_is_found_in_every_payload_family(vector: VectorFn, name: str, alert: int) -> None:
    assert parse_frame(vector(name)).alert_code == alert
