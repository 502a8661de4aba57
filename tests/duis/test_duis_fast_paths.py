"""The decoder's fast paths give exactly what the checking paths give.

Each fast path (canonical MessageId and EUI text, the DCC's own xs:dateTime forms, base64 without
the b64decode wrapper, slot-descriptor construction of model objects, the plain-XML-declaration
prolog, exact child layouts in the tree walk) is compared with the reference path it short-cuts,
on generated near-miss inputs: one to three characters of a valid value replaced by digits,
separators, white space, letters and non-ASCII digits.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from duis_strategies import requests, responses
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.duis import decode as decode_module
from gateway.duis.decode import decode
from gateway.duis.encode import encode
from gateway.duis.errors import BadBase64, DuisError, InvalidField, MalformedXml
from gateway.duis.model import MessageId, ReadInventory, Request, Response
from gateway.duis.safexml import _PARSER, _PLAIN_DECLS, _check_prolog, parse_xml
from gateway.duis.values import (
    _EUI_RE,
    DateTimePolicy,
    _eui_text_to_int,
    _parse_datetime_strict,
    parse_base64,
    parse_datetime,
    parse_eui_field,
)

SR = "{http://www.dccinterface.co.uk/ServiceUserGateway}"


@st.composite
def near_misses(draw: st.DrawFn, base: st.SearchStrategy[str], alphabet: str) -> str:
    """A valid value with up to three characters replaced (and sometimes padded with white space)."""
    chars = list(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(chars) - 1))
        chars[i] = draw(st.sampled_from(alphabet))
    text = "".join(chars)
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.sampled_from([" ", "\n", "\t"])) + text + draw(st.sampled_from(["", " ", "\n"]))
    return text


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except DuisError as exc:
        return (type(exc).__name__, str(exc))


# --------------------------------------------------------------------------- xs:dateTime

_DT_ALPHABET = "0123456789-:T.Z+ ,zt\u0664\uff19"
_dt_bases = st.builds(
    lambda d, ms, frac: (
        d.strftime("%Y-%m-%dT%H:%M:%S") + (f".{d.microsecond // 1000:03d}" if ms else "") + frac
    ),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.booleans(),
    st.sampled_from(["Z", "Z", "Z", "", "+01:00", "-05:30", "+14:00"]),
)


def _dt_outcome(text: str, policy: DateTimePolicy, parse: Callable[..., datetime]) -> tuple[str, Any]:
    warnings: list[str] = []

    def run() -> tuple[Any, ...]:
        value = parse(text, "When", policy, warnings)
        return (value, value.utcoffset(), value.tzinfo, tuple(warnings))

    return _outcome(run)


@given(near_misses(_dt_bases, _DT_ALPHABET), st.sampled_from(list(DateTimePolicy)))
@settings(max_examples=400, deadline=None)
def test_fast_datetime_paths_agree_with_the_strict_parser(text: str, policy: DateTimePolicy) -> None:
    assert _dt_outcome(text, policy, parse_datetime) == _dt_outcome(text, policy, _parse_datetime_strict)


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-15T09:04:12Z",
        "2026-01-15T09:04:12.123Z",
        "2026-01-15T24:00:00Z",
        "2026-01-15T24:00:00.000Z",
        "2026-02-29T09:04:12.123Z",
        "0000-01-15T09:04:12Z",
        "2026-01-15T09:04:12,123Z",
        "2026-01-15T09:0\u0664:12.123Z",
        "2026-01-15T09:04:12.12-Z",
        "2026-01-15T09:04:1-.123Z",
    ],
)
def test_fast_datetime_path_edge_cases_agree_with_the_strict_parser(text: str) -> None:
    for policy in DateTimePolicy:
        assert _dt_outcome(text, policy, parse_datetime) == _dt_outcome(text, policy, _parse_datetime_strict)


def test_utc_fast_path_returns_the_utc_singleton() -> None:
    value = parse_datetime("2026-01-15T09:04:12.123Z", "x", DateTimePolicy.REJECT_NAIVE, None)
    assert value == datetime(2026, 1, 15, 9, 4, 12, 123000, tzinfo=UTC) and value.tzinfo is UTC


# --------------------------------------------------------------------------- MessageId and EUI

_ID_ALPHABET = "0123456789ABCDEFabcdefg-: +_\n\u0661\uff19"
_uint64 = st.integers(0, 2**64 - 1)
_id_bases = st.builds(
    lambda o, t, c, lower: str(MessageId(o, t, c)).lower() if lower else str(MessageId(o, t, c)),
    _uint64,
    _uint64,
    st.one_of(_uint64, st.integers(0, 10**6)),
    st.booleans(),
)


@given(near_misses(_id_bases, _ID_ALPHABET))
@settings(max_examples=400, deadline=None)
def test_fast_message_id_path_agrees_with_the_checked_parser(text: str) -> None:
    fast = _outcome(lambda: MessageId.parse(text, "RequestID"))
    checked = _outcome(lambda: MessageId._parse_checked(text, "RequestID"))
    assert fast == checked
    if fast[0] == "ok":
        mid = fast[1]
        rebuilt = MessageId(mid.originator, mid.target, mid.counter)  # __post_init__ range checks
        assert mid == rebuilt and hash(mid) == hash(rebuilt) and repr(mid) == repr(rebuilt)


@pytest.mark.parametrize(
    "text",
    [
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:18446744073709551616",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:99999999999999999999",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:18446744073709551615",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:0",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:00",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:\u0661",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:+1",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1:2",
        "\uff190-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1",
        "90-B3-D5-1F-30-01-00_0:00-DB-12-34-56-78-90-A0:1",
    ],
)
def test_message_id_edge_cases_agree_with_the_checked_parser(text: str) -> None:
    assert _outcome(lambda: MessageId.parse(text)) == _outcome(
        lambda: MessageId._parse_checked(text, "RequestID")
    )


def _eui_reference(text: str) -> int:
    s = text.strip()
    if _EUI_RE.fullmatch(s) is None:
        raise InvalidField("not an EUI")
    return int(s.replace("-", ""), 16)


@given(near_misses(_id_bases.map(lambda s: s[:23]), _ID_ALPHABET))
@settings(max_examples=300, deadline=None)
def test_cached_eui_conversion_agrees_with_the_pattern(text: str) -> None:
    if len(text) == 23:
        assert _eui_text_to_int(text) == (int(text.replace("-", ""), 16) if _EUI_RE.fullmatch(text) else None)
    assert _outcome(lambda: parse_eui_field(text, "DeviceID"))[0] == _outcome(lambda: _eui_reference(text))[0]
    if _outcome(lambda: _eui_reference(text))[0] == "ok":
        assert parse_eui_field(text, "DeviceID") == _eui_reference(text)


def test_eui_cache_takes_only_the_exact_length() -> None:
    before = _eui_text_to_int.cache_info().currsize
    with pytest.raises(InvalidField):
        parse_eui_field("90-B3-D5-1F-30-01-00-00" + " " * 10_000 + "x", "DeviceID")
    assert parse_eui_field(" 90-B3-D5-1F-30-01-00-00 ", "DeviceID") == 0x90B3D51F30010000
    assert _eui_text_to_int.cache_info().currsize == before  # neither long text reached the cache
    info = _eui_text_to_int.cache_info()
    assert info.maxsize is not None and info.currsize <= info.maxsize


# --------------------------------------------------------------------------- base64

_B64_ALPHABET = "ABCxyz019+/= \n\r\t-_.\u00c0"


@given(
    near_misses(
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()).filter(bool), _B64_ALPHABET
    )
)
@settings(max_examples=400, deadline=None)
def test_base64_fast_path_is_b64decode_validate(text: str) -> None:
    squeezed = re.sub(r"[ \t\r\n]+", "", text)
    try:
        expected: tuple[str, Any] = ("ok", base64.b64decode(squeezed, validate=True))
    except (binascii.Error, ValueError) as exc:
        expected = ("BadBase64", str(BadBase64(f"x: not base64: {exc}")))
    assert _outcome(lambda: parse_base64(text, "x")) == expected


def test_bad_base64_is_still_a_named_error() -> None:
    with pytest.raises(BadBase64):
        parse_base64("AB=C", "GBCSPayload")
    with pytest.raises(BadBase64, match="ASCII"):
        parse_base64("AA\u00c0A", "GBCSPayload")


# --------------------------------------------------------------------------- model builders


def _builders() -> dict[str, Callable[..., Any]]:
    return {name: fn for name, fn in vars(decode_module).items() if name.startswith("_build_")}


def test_builders_exist_for_the_hot_model_classes() -> None:
    assert {"_build_response", "_build_response_header", "_build_dcc_alert", "_build_power_outage"} <= set(
        _builders()
    )


@given(responses())
@settings(max_examples=60, deadline=None)
def test_builder_objects_equal_and_hash_like_constructed_ones(doc: Response) -> None:
    by_class = {_builder_of(fn): fn for fn in _builders().values()}
    decoded = decode(encode(doc))
    assert isinstance(decoded, Response)
    for obj in (decoded, decoded.header, decoded.body, getattr(decoded.body, "alert", None)):
        build = by_class.get(type(obj))
        if build is None:
            continue
        values = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
        built, made = build(*values), type(obj)(*values)
        assert obj == made and built == made and hash(built) == hash(made) and repr(built) == repr(made)


def _builder_of(fn: Callable[..., Any]) -> type | None:
    cells = [c.cell_contents for c in (fn.__closure__ or ()) if isinstance(c.cell_contents, type)]
    return cells[0] if cells else None


def test_every_builder_matches_its_class_constructor() -> None:
    for name, fn in _builders().items():
        cls = _builder_of(fn)
        assert cls is not None, name
        names = [f.name for f in dataclasses.fields(cls)]
        values = [f"v{i}" for i in range(len(names))]
        built, made = fn(*values), cls(*values)
        assert built == made and hash(built) == hash(made) and repr(built) == repr(made), name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(built, names[0], "changed")


def test_builder_refuses_classes_that_validate_in_post_init() -> None:
    for cls in (ReadInventory, MessageId):
        with pytest.raises(TypeError):
            decode_module._builder(cls)


# --------------------------------------------------------------------------- safe parse prolog

_PROLOG_PIECES = st.lists(
    st.sampled_from(
        [
            *sorted(_PLAIN_DECLS),
            b'<?xml version="1.0" encoding="ISO-8859-1"?>',
            b'<?xml version="1.0" encoding="UTF-16"?>',
            b"<?xml  version='1.0'?>",
            b"<!DOCTYPE r>",
            b'<!ENTITY x "y">',
            b"<!-- c -->",
            b"<?pi x?>",
            b"\xef\xbb\xbf",
            b"\n",
            b" ",
            b"x",
        ]
    ),
    max_size=3,
)


@given(_PROLOG_PIECES, st.sampled_from([b"<r/>", b"<sr:a xmlns:sr='urn:x'/>", b"<_x>t</_x>", b"", b"</r>"]))
@settings(max_examples=300, deadline=None)
def test_plain_declaration_fast_path_agrees_with_the_prolog_scan(pieces: list[bytes], root: bytes) -> None:
    data = b"".join(pieces) + root

    def reference() -> bytes:
        _check_prolog(data)  # the full prolog scan, then the same parser
        try:
            return bytes(etree.tostring(etree.fromstring(data, _PARSER)))
        except etree.XMLSyntaxError as exc:
            raise MalformedXml(str(exc).splitlines()[0][:200]) from None

    assert _outcome(lambda: bytes(etree.tostring(parse_xml(data)))) == _outcome(reference)


# --------------------------------------------------------------------------- tree walk layouts

_CONTAINERS = {
    SR + name
    for name in (
        "Request",
        "Response",
        "Header",
        "Body",
        "ResponseMessage",
        "DCCAlertMessage",
        "DCCAlert",
        "PowerOutageEvent",
        "DeviceAlertMessage",
    )
}


def _with_processing_instructions(data: bytes) -> bytes:
    """The same document with a PI as the first child of every container the walk interprets:
    no exact-layout fast path applies any more, so the checking walk (which skips PIs) runs."""
    root = etree.fromstring(data)
    for el in list(root.iter()):
        if el.tag in _CONTAINERS and (el.tag != SR + "DCCAlert" or el.getparent() is not None):
            el.insert(0, etree.ProcessingInstruction("force", "checking-walk"))
    return bytes(etree.tostring(root))


@given(st.one_of(responses(), requests()))
@settings(max_examples=150, deadline=None)
def test_exact_layout_fast_paths_agree_with_the_checking_walk(doc: Request | Response) -> None:
    data = encode(doc)
    fast, checked = decode(data), decode(_with_processing_instructions(data))
    assert fast == checked
    assert fast.warnings == checked.warnings
    assert repr(fast) == repr(checked)


def test_datetimes_with_non_ascii_digits_are_rejected() -> None:
    import pytest

    from gateway.duis.errors import InvalidField
    from gateway.duis.values import DateTimePolicy, parse_datetime

    with pytest.raises(InvalidField):
        parse_datetime("2026-01-15T09:0\u0664:12Z", "ResponseDateTime", DateTimePolicy.NAIVE_IS_UTC, [])
