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
