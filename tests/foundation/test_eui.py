from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gbcs.eui import EUIError, eui_from_bytes, eui_to_bytes, format_eui, parse_eui, parse_eui_strict


@pytest.mark.parametrize(
    "text",
    [
        "00-DB-12-34-56-78-90-A0",
        "00-db-12-34-56-78-90-a0",
        "00:DB:12:34:56:78:90:A0",
        "00DB1234567890A0",
        "  00db1234567890a0 \t",
        "0x00DB1234567890A0",
        "00 DB 12 34 56 78 90 A0",
    ],
)
def test_every_common_spelling_parses_to_the_same_int(text: str) -> None:
    assert parse_eui(text) == 0x00DB1234567890A0


@pytest.mark.parametrize("text", ["", "00-DB", "00DB1234567890A", "00DB1234567890A0FF", "ZZDB1234567890A0", "00D-B12-34567890A0"])
def test_malformed_euis_are_rejected_with_a_named_error(text: str) -> None:
    with pytest.raises(EUIError) as info:
        parse_eui(text)
    assert info.value.code == "bad_eui"


def test_strict_form_accepts_only_the_duis_lexical_form() -> None:
    assert parse_eui_strict(" 90-b3-d5-1f-30-00-00-02 ") == 0x90B3D51F30000002
    with pytest.raises(EUIError):
        parse_eui_strict("90B3D51F30000002")


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_format_and_parse_round_trip(value: int) -> None:
    text = format_eui(value)
    assert len(text) == 23 and text == text.upper()
    assert parse_eui(text) == value == parse_eui_strict(text)
    assert eui_from_bytes(eui_to_bytes(value)) == value
