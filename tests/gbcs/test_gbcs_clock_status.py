"""The DLMS clock-status octet (IEC 62056-6-2 ``clock_status``) as the codec exposes it: which of the
256 values say the device's own time is not to be trusted (bits 0 invalid value, 1 doubtful value, 3
invalid clock status), which do not (bit 2 different clock base, bit 7 daylight saving, reserved bits
4-6), and ``0xFF`` = not specified, which says nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from gateway.testkit.messages import ecs80_content
from gbcs.frame import build_general_signing, parse_frame
from gbcs.payload import SupplyOutageRestoredAlert, decode_payload
from gbcs.timefmt import CLOCK_UNRELIABLE, ClockStatus, DlmsDateTime

# 2015-01-01T00:00:00Z, deviation unspecified; the 12th octet is the clock status
DATE_OCTETS = bytes.fromhex("07DF0101FF000000008000")


def _with_status(status: int, date: bytes = DATE_OCTETS) -> DlmsDateTime:
    return DlmsDateTime.from_bytes(date + bytes([status]))


def test_the_unreliable_bits_are_invalid_value_doubtful_value_and_invalid_clock_status() -> None:
    assert int(CLOCK_UNRELIABLE) == 0x0B
    assert ClockStatus.DIFFERENT_CLOCK_BASE not in CLOCK_UNRELIABLE
    assert ClockStatus.DAYLIGHT_SAVING_ACTIVE not in CLOCK_UNRELIABLE


@given(st.integers(min_value=0, max_value=255))
def test_a_time_is_unreliable_exactly_when_a_specified_status_sets_bit_0_1_or_3(status: int) -> None:
    dt = _with_status(status)
    expected = status != 0xFF and bool(status & 0b0000_1011)
    assert dt.unreliable is expected
    assert (dt.unreliable_reason() is not None) is expected
    if status == 0xFF:
        assert dt.clock_status is None and dt.clock_flags is None
    else:
        assert dt.clock_flags is not None and int(dt.clock_flags) == status


@given(st.integers(min_value=0, max_value=255))
def test_the_reason_names_each_unreliable_bit_set_and_no_other(status: int) -> None:
    reason = _with_status(status).unreliable_reason()
    if reason is None:
        return
    assert reason.startswith(f"clock status 0x{status:02X} (")
    named = {
        0x01: "invalid-value",
        0x02: "doubtful-value",
        0x08: "invalid-clock-status",
        0x04: "different-clock-base",
        0x80: "daylight-saving-active",
    }
    for bit, name in named.items():
        assert (name in reason) is (bit in (0x01, 0x02, 0x08) and bool(status & bit)), (bit, reason)


@given(st.binary(min_size=11, max_size=11), st.integers(min_value=0, max_value=255))
def test_the_clock_status_does_not_change_the_time_read(date: bytes, status: int) -> None:
    # the status is the device's word on the time, not part of it: the codec reads the same instant,
    # and whether that instant is trusted is the caller's policy
    plain = DlmsDateTime.from_bytes(date + b"\x00")
    flagged = DlmsDateTime.from_bytes(date + bytes([status]))
    assert flagged.to_datetime() == plain.to_datetime()
    assert flagged.unreliable is (status != 0xFF and bool(status & 0x0B))


def test_rtds_style_unspecified_status_is_no_information() -> None:
    dt = DlmsDateTime.from_bytes(bytes.fromhex("07DE0C1FFF173200008000FF"))
    assert dt.to_datetime() == datetime(2014, 12, 31, 23, 50, tzinfo=UTC)
    assert not dt.unreliable and dt.unreliable_reason() is None


def test_an_ecs80_alert_carries_each_date_times_own_clock_status() -> None:
    t = datetime(2026, 3, 2, 9, 3, 30, tzinfo=UTC)
    content = bytearray(ecs80_content(0x8F36, 7, t, t, t))
    # the three 12-octet date-times end at the content's end, 14 octets apart (09 0C + 12 octets)
    content[-1] = 0x00  # restoration: clean
    content[-15] = 0x02  # interruption: doubtful value
    content[-29] = 0x04  # time stamp: different clock base only
    frame = parse_frame(
        build_general_signing(
            cra=3,
            originator_counter=7,
            originator=0x00DB000000000001,
            recipient=0x90B3D51F30020000,
            message_code=0x0067,
            content=bytes(content),
        )
    )
    alert = decode_payload(frame).typed
    assert isinstance(alert, SupplyOutageRestoredAlert)
    assert alert.interruption.unreliable and alert.interruption.unreliable_reason() == (
        "clock status 0x02 (doubtful-value)"
    )
    assert not alert.restoration.unreliable
    assert (
        not alert.time_stamp.unreliable and alert.time_stamp.clock_flags == ClockStatus.DIFFERENT_CLOCK_BASE
    )
    assert alert.interruption.to_datetime() == t
