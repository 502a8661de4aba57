"""Hostile payloads found by the security review: each must end in a named error or a usable value."""

from __future__ import annotations

import time

import pytest

from gbcs.errors import BadPayload
from gbcs.frame import build_general_signing, parse_frame
from gbcs.payload import decode_payload


def _notification(data: bytes) -> bytes:
    content = bytes.fromhex("0F200007D000") + data  # Data-Notification, invoke id, no date-time
    return build_general_signing(
        cra=3, originator_counter=2000, originator=0x00DB1234567890A0, recipient=0x90B3D51F30010000,
        message_code=0x1000, content=content, null_signature=True,
    )


@pytest.mark.parametrize("n", [0xFFFF, 0x10])
def test_compact_array_of_nested_null_arrays_is_refused(n: int) -> None:
    # structure{ array[n] of array[n] of null-data, unsigned }: one content byte, n*n nodes.
    td = bytes([0x02, 0x02, 0x01]) + n.to_bytes(2, "big") + bytes([0x01]) + n.to_bytes(2, "big") + bytes([0x00, 0x11])
    frame = _notification(bytes([0x13]) + td + bytes([0x01, 0x07]))
    t = time.monotonic()
    with pytest.raises(BadPayload, match="compact-array"):
        decode_payload(parse_frame(frame))
    assert time.monotonic() - t < 1.0


def test_compact_array_of_ordinary_structures_still_decodes() -> None:
    # compact-array of structure{ unsigned, long-unsigned }, two values.
    td = bytes([0x02, 0x02, 0x11, 0x12])
    frame = _notification(bytes([0x13]) + td + bytes([0x06, 1, 0, 2, 3, 0, 4]))
    body = decode_payload(parse_frame(frame)).tree["body"]
    assert isinstance(body, dict) and body["type"] == "compact-array"
    items = body["items"]
    assert isinstance(items, list) and len(items) == 2


@pytest.mark.parametrize(
    "raw",
    [
        "270F0C1FFF173B3B00FFC4FF",  # 9999-12-31 23:59:59, deviation -60: UTC instant in year 10000
        "00010101FF000000000003C0",  # 0001-01-01 00:00:00, deviation +3: UTC instant before year 1
        "00010101FF00000000003CFF",  # 0001-01-01 00:00:00, deviation +60
    ],
)
def test_date_time_outside_the_calendar_is_not_representable(raw: str) -> None:
    from gbcs.timefmt import DlmsDateTime

    d = DlmsDateTime.from_bytes(bytes.fromhex(raw))
    assert d.to_datetime() is None
    assert d.text().startswith(("9999-12-31T", "0001-01-01T"))
    assert d.to_json()["hex"] == raw.lower()


def test_overflowing_date_time_in_an_alert_decodes() -> None:
    # structure{ alert code 8F36, time stamp, interruption 9999-12-31 23:59:59 dev -60 }
    def octets12(h: str) -> bytes:
        return bytes([0x09, 0x0C]) + bytes.fromhex(h)

    data = (
        bytes([0x02, 0x03, 0x12, 0x8F, 0x36])
        + octets12("07DF0101FF000000008000FF")
        + octets12("270F0C1FFF173B3B00FFC4FF")
    )
    body = decode_payload(parse_frame(_notification(data))).tree["body"]
    assert isinstance(body, dict)
    items = body["items"]
    assert isinstance(items, list) and items[2]["date_time"] == "9999-12-31T23:59:59"


def _asn1_frame(content: bytes, message_code: int = 0x0008, cra: int = 2) -> bytes:
    return build_general_signing(
        cra=cra, originator_counter=1000, originator=0x00DB1234567890A0, recipient=0x90B3D51F30010000,
        message_code=message_code, content=content, null_signature=True,
    )


def test_huge_asn1_integer_renders_as_hex() -> None:
    import json

    from gbcs.render import describe

    integer = b"\x02\x82\x07\xd0" + b"\x7f" * 2000
    content = b"\x30\x82" + len(integer).to_bytes(2, "big") + integer
    text = json.dumps(describe(_asn1_frame(content)))
    assert "7f7f7f" in text


def test_small_asn1_integer_keeps_its_value() -> None:
    from gbcs.render import describe

    content = b"\x30\x03\x02\x01\x05"
    assert '"value": 5' in __import__("json").dumps(describe(_asn1_frame(content)))


def test_oversized_counter_in_cs06_command_is_a_named_error() -> None:
    counter = b"\x02\x82\x07\xd0" + b"\x7f" * 2000
    body = b"\x04\x20" + bytes(32) + counter
    content = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    with pytest.raises(BadPayload, match="originatorCounter"):
        decode_payload(parse_frame(_asn1_frame(content, message_code=0x0012, cra=1)))
