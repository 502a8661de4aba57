"""The decoder's fast paths give exactly what the checking paths give.

Each fast path (canonical MessageId and EUI text through ``bytes.fromhex``, a ResponseID that
swaps its RequestID, the DCC's own xs:dateTime forms, base64 tried before white space is
removed, slot-descriptor construction of model objects, the plain-XML-declaration prolog,
``getchildren`` for ``list(el)``, exact child layouts in the tree walk) is compared with the
reference path it short-cuts,
on generated near-miss inputs: one to three characters of a valid value replaced by digits,
separators, white space, letters and non-ASCII digits.
"""

from __future__ import annotations

import base64
import binascii
import copy
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
from gateway.duis.encode import build_11_3_response, build_ad1_alert, build_device_alert, encode
from gateway.duis.errors import BadBase64, DuisError, InvalidField, MalformedXml
from gateway.duis.model import MessageId, ReadInventory, Request, Response
from gateway.duis.safexml import _PARSER, _PLAIN_DECLS, _check_prolog, parse_xml
from gateway.duis.values import (
    _EUI_RE,
    DateTimePolicy,
    _parse_datetime_strict,
    parse_base64,
    parse_datetime,
    parse_eui_field,
    parse_id_pair,
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
        # offset minutes 60-99: fromisoformat takes them (as +1 h), the XSD does not
        "2000-01-01T00:00:00+01:60",
        "2000-01-01T00:00:00+13:60",
        "2000-01-01T00:00:00-01:99",
        "2000-01-01T00:00:00+01:59",
        "2000-01-01T00:00:00+14:00",
        "2000-01-01T00:00:00-14:01",
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
        # the fromhex path: a prefix int() would take, white space or a separator where a
        # digit belongs, non-ASCII hex, a missing or padded counter
        "0x-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1",
        "0X-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1",
        "0 -B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1",
        " 0-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1",
        "90-B3-D5-1F-30-01-00-0\n:00-DB-12-34-56-78-90-A0:1",
        "90-B3-D5-1F-30-01-00--0:00-DB-12-34-56-78-90-A0:1",
        "90-B3-D5-1F-30-01-00-0::00-DB-12-34-56-78-90-A0:1",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-\uff21\uff10:1",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1 ",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1\n",
        "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:123456789012345678901",
        "90-b3-d5-1f-30-01-00-00:00-db-12-34-56-78-90-a0:7",
        "90-B3-D5-1F-30-01-00-00-00-DB-12-34-56-78-90-A0:1",
    ],
)
def test_message_id_edge_cases_agree_with_the_checked_parser(text: str) -> None:
    assert _outcome(lambda: MessageId.parse(text)) == _outcome(
        lambda: MessageId._parse_checked(text, "RequestID")
    )


def _eui_reference(text: str | None, where: str) -> int:
    """The checking path of ``parse_eui_field`` (white space collapsed, then the pattern)."""
    s = (text or "").strip()
    if _EUI_RE.fullmatch(s) is None:
        raise InvalidField(f"{where}: not a DUIS EUI (HH-HH-HH-HH-HH-HH-HH-HH): {s[:40]!r}")
    return int(s.replace("-", ""), 16)


@given(near_misses(_id_bases.map(lambda s: s[:23]), _ID_ALPHABET))
@settings(max_examples=300, deadline=None)
def test_fast_eui_path_agrees_with_the_pattern(text: str) -> None:
    assert _outcome(lambda: parse_eui_field(text, "DeviceID")) == _outcome(
        lambda: _eui_reference(text, "DeviceID")
    )


@pytest.mark.parametrize(
    "text",
    [
        "90-B3-D5-1F-30-01-00-00",
        "90-b3-d5-1f-30-01-00-00",
        "0x-B3-D5-1F-30-01-00-00",
        "0 -B3-D5-1F-30-01-00-00",
        "90-B3-D5-1F-30-01-00- 0",
        "90-B3-D5-1F-30-01-00--0",
        "90-B3-D5-1F-30-01-00-0g",
        "90-B3-D5-1F-30-01-00-\uff10\uff10",
        "\u0661\u0661-B3-D5-1F-30-01-00-00",
        "90:B3-D5-1F-30-01-00-00",
        "9-0B3-D5-1F-30-01-00-00",
        " 90-B3-D5-1F-30-01-00-00 ",
        "90-B3-D5-1F-30-01-00-00" + " " * 10_000 + "x",
        "",
        None,
    ],
)
def test_eui_edge_cases_agree_with_the_pattern(text: str | None) -> None:
    assert _outcome(lambda: parse_eui_field(text, "DeviceID")) == _outcome(
        lambda: _eui_reference(text, "DeviceID")
    )


def _swap(text: str) -> str:
    """What a device's ResponseID looks like for this RequestID (the two EUIs swapped)."""
    return text[24:47] + ":" + text[:23] + text[47:]


def _pair_reference(request_text: str, response_text: str) -> tuple[MessageId, MessageId]:
    return MessageId.parse(request_text, "RequestID"), MessageId.parse(response_text, "ResponseID")


_id_texts = near_misses(_id_bases, _ID_ALPHABET)


@given(
    _id_texts,
    st.one_of(
        st.just("swap"),
        _id_texts.map(lambda t: ("near-miss of swap", t)),
        _id_texts.map(lambda t: ("other", t)),
    ),
    st.integers(0, 2),
)
@settings(max_examples=400, deadline=None)
def test_id_pair_agrees_with_two_separate_parses(
    request_text: str, choice: str | tuple[str, str], edit: int
) -> None:
    if choice == "swap":
        response_text = _swap(request_text)
    elif choice[0] == "near-miss of swap":
        other = choice[1]
        swapped = list(_swap(request_text))
        if swapped and edit:  # change one character of the swap (taken from the other text)
            i = len(other) % len(swapped)
            swapped[i] = other[(i + edit) % len(other)] if other else " "
        response_text = "".join(swapped)
    else:
        response_text = choice[1]
    got = _outcome(lambda: parse_id_pair(request_text, response_text))
    assert got == _outcome(lambda: _pair_reference(request_text, response_text))
    if got[0] == "ok":
        for mid in got[1]:
            rebuilt = MessageId(mid.originator, mid.target, mid.counter)  # __post_init__ range checks
            assert mid == rebuilt and hash(mid) == hash(rebuilt) and repr(mid) == repr(rebuilt)


@pytest.mark.parametrize(
    ("request_text", "response_text"),
    [
        (
            "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:17",
            "00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00:17",
        ),
        (
            "90-b3-d5-1f-30-01-00-00:00-db-12-34-56-78-90-a0:17",
            "00-db-12-34-56-78-90-a0:90-b3-d5-1f-30-01-00-00:17",
        ),
        (
            "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:17 ",
            "00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00:17 ",
        ),
        (
            " 90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:17",
            "0-DB-12-34-56-78-90-A0::90-B3-D5-1F-30-01-00-00:17",
        ),
        (
            "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:17",
            "00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00:18",
        ),
        (
            "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:017",
            "00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00:017",
        ),
        (
            "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:17",
            "00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00",
        ),
        ("90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:17", ""),
        ("", ":"),
    ],
)
def test_id_pair_edge_cases_agree_with_two_separate_parses(request_text: str, response_text: str) -> None:
    assert _outcome(lambda: parse_id_pair(request_text, response_text)) == _outcome(
        lambda: _pair_reference(request_text, response_text)
    )


# --------------------------------------------------------------------------- base64

_B64_ALPHABET = "ABCxyz019+/= \n\r\t-_.\u00c0"


def _b64decode_squeezed(text: str) -> tuple[str, Any]:
    """The reference outcome: strict base64 of the value with its white space removed."""
    squeezed = re.sub(r"[ \t\r\n]+", "", text)
    try:
        return ("ok", base64.b64decode(squeezed, validate=True))
    except (binascii.Error, ValueError) as exc:
        return ("BadBase64", str(BadBase64(f"x: not base64: {exc}")))


@given(
    near_misses(
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()).filter(bool), _B64_ALPHABET
    )
)
@settings(max_examples=400, deadline=None)
def test_base64_fast_path_is_b64decode_validate(text: str) -> None:
    assert _outcome(lambda: parse_base64(text, "x")) == _b64decode_squeezed(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n",
        "QUJD",
        "QUJD\n",
        " QU JD\r\n",
        "QUJ\tD",
        "QUJ",
        "QUJ D=",
        "AA\u00c0 A",
        "QUJD\u00a0",
        "QU-D",
    ],
)
def test_base64_edge_cases_are_b64decode_validate_on_the_squeezed_value(text: str) -> None:
    assert _outcome(lambda: parse_base64(text, "x")) == _b64decode_squeezed(text)


def test_bad_base64_is_still_a_named_error() -> None:
    with pytest.raises(BadBase64):
        parse_base64("AB=C", "GBCSPayload")
    with pytest.raises(BadBase64, match="ASCII"):
        parse_base64("AA\u00c0A", "GBCSPayload")


# --------------------------------------------------------------------------- model builders


def _builders() -> dict[str, Callable[..., Any]]:
    return {name: fn for name, fn in vars(decode_module).items() if name.startswith("_build_")}


def test_builders_exist_for_the_model_classes_of_the_other_fast_paths() -> None:
    assert {
        "_build_dcc_alert",
        "_build_power_outage",
        "_build_response_message",
        "_build_device_alert",
    } <= set(_builders())


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


@pytest.mark.parametrize("name", ["11.3 response", "AD1", "AD1 with a RequestID only", "device alert"])
def test_objects_the_hot_paths_build_inline_equal_hash_and_freeze_like_constructed_ones(name: str) -> None:
    """The hot layouts build Response, ResponseHeader, ResponseMessage, DCCAlertMessage and
    PowerOutageEvent through their slot setters: each field set, the object a frozen value like
    the one the class's constructor makes."""
    decoded = decode(_hot_documents()[name])
    assert isinstance(decoded, Response)
    objs = [decoded, decoded.header, decoded.body, getattr(decoded.body, "alert", None)]
    for obj in filter(None, objs):
        names = [f.name for f in dataclasses.fields(obj)]
        values = [getattr(obj, n) for n in names]  # AttributeError if a slot was left unset
        made = type(obj)(*values)
        assert obj == made and hash(obj) == hash(made) and repr(obj) == repr(made)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, names[0], "changed")


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
        with pytest.raises(TypeError):
            decode_module._slot_setters(cls)


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


_ROOTS = [
    b"<r/>",
    b"<sr:a xmlns:sr='urn:x'/>",
    b"<_x>t</_x>",
    b"",
    b"</r>",
    b"<",
    b"\n<",
    b"\n",
    b"<\xc3\xa9/>",
    b"\n<\xc3\xa9/>",
    b"<1/>",
    b"\n<1/>",
    b"<:a/>",
    b"\r\n<r/>",
    b"\n\n<r/>",
    b"\n <r/>",
    b"\n<!DOCTYPE r><r/>",
    b"<!DOCTYPE r><r/>",
    b"\n-x<!DOCTYPE r><r/>",
    b"-x<!DOCTYPE r><r/>",
]


@given(_PROLOG_PIECES, st.sampled_from(_ROOTS))
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


def test_children_helper_is_list_of_the_element() -> None:
    """``_children`` (``getchildren``) gives what ``list(el)`` gives: elements and PIs (and
    comments, for trees from other parsers) in document order, not text."""
    for data in (
        b"<a>t<?p x?><b/>tail<c>u</c><!--c--><?q?>end</a>",
        b"<a/>",
        b"<a>text only</a>",
        b"<a><?only-a-pi?></a>",
    ):
        for parser in (_PARSER, None):
            el = etree.fromstring(data, parser)
            assert decode_module._children(el) == list(el)
            for child in el.iter():
                assert decode_module._children(child) == list(child)


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
    no exact-layout fast path applies any more, so the checking walk (which skips PIs) runs when
    the tree is decoded with its PIs (:func:`_decode_walk`; ``decode`` would drop them first)."""
    root = etree.fromstring(data)
    for el in list(root.iter()):
        if el.tag in _CONTAINERS and (el.tag != SR + "DCCAlert" or el.getparent() is not None):
            el.insert(0, etree.ProcessingInstruction("force", "checking-walk"))
    return bytes(etree.tostring(root))


def _decode_walk(data: bytes) -> Request | Response:
    """Decode with the tree's PIs kept (``pis=False``: the decoder is told there are none, so it
    does not drop them), so that PIs between the children of containers force the checking walk."""
    return decode_module.decode_tree(parse_xml(data), pis=False)


@given(st.one_of(responses(), requests()))
@settings(max_examples=150, deadline=None)
def test_exact_layout_fast_paths_agree_with_the_checking_walk(doc: Request | Response) -> None:
    data = encode(doc)
    fast, checked = decode(data), _decode_walk(_with_processing_instructions(data))
    assert fast == checked
    assert fast.warnings == checked.warnings
    assert repr(fast) == repr(checked)


def _decode_outcome(data: bytes, walk: bool = False) -> tuple[str, Any]:
    try:
        out = _decode_walk(data) if walk else decode(data)
    except DuisError as exc:
        return (type(exc).__name__, str(exc))
    return ("ok", (out, out.warnings, repr(out)))


def _reshaped(data: bytes, container: int, op: int, a: int, b: int) -> bytes:
    """The document with one interpreted container's children reordered, duplicated, dropped or renamed."""
    root = etree.fromstring(data)
    containers = [el for el in root.iter() if el.tag in _CONTAINERS]
    el = containers[container % len(containers)]
    children = list(el)
    if not children:
        return data
    first, second = children[a % len(children)], children[b % len(children)]
    if op == 0 and first is not second:  # swap two children
        i, j = el.index(first), el.index(second)
        el[i], el[j] = etree.Element("placeholder"), etree.Element("placeholder")
        el[i], el[j] = second, first
    elif op == 1:  # duplicate one
        first.addnext(copy.deepcopy(first))
    elif op == 2:  # drop one
        el.remove(first)
    elif first.tag != second.tag:  # rename one to a sibling's name
        first.tag = second.tag
    else:  # or to the same name in another namespace
        first.tag = "{urn:other}" + etree.QName(first).localname
    return bytes(etree.tostring(root))


@given(
    st.one_of(responses(), requests()),
    st.integers(0, 20),
    st.integers(0, 3),
    st.integers(0, 9),
    st.integers(0, 9),
)
@settings(max_examples=400, deadline=None)
def test_exact_layout_fast_paths_agree_with_the_checking_walk_on_reshaped_documents(
    doc: Request | Response, container: int, op: int, a: int, b: int
) -> None:
    """Children in the wrong order, twice, missing or misnamed: the fast paths must neither accept
    what the checking walk rejects nor explain it differently."""
    data = _reshaped(encode(doc), container, op, a, b)
    assert _decode_outcome(data) == _decode_outcome(_with_processing_instructions(data), walk=True)


def _hot_documents() -> dict[str, bytes]:
    t = datetime(2026, 1, 15, 9, 4, 12, 123000, tzinfo=UTC)
    rid = MessageId(0x90B3D51F30010000, 0x00DB1234567890A0, 1768467852000)
    dcc = MessageId(0x90B3D51F30000002, 0x90B3D51F30020000, 17)
    return {
        "11.3 response": encode(
            build_11_3_response(request_id=rid, gbcs_payload=b"\xdf\x09", response_datetime=t)
        ),
        "AD1": encode(
            build_ad1_alert(
                comms_hub_device_id=0x887384906A1002DB,
                start_datetime=t,
                mpxn="1234567890126",
                response_datetime=t,
                response_id=dcc,
            )
        ),
        "device alert": encode(
            build_device_alert(
                alert_code=b"\x8f\x36", gbcs_payload=b"\x01\x02", response_datetime=t, response_id=dcc
            )
        ),
        "AD1 whose MPAN fails its check digit": encode(
            build_ad1_alert(
                comms_hub_device_id=0x887384906A1002DB,
                start_datetime=t,
                mpxn="1234567890123",
                response_datetime=t,
                response_id=dcc,
            )
        ),
        "AD1 with a RequestID only": encode(
            build_ad1_alert(
                comms_hub_device_id=0x887384906A1002DB,
                start_datetime=t,
                mpxn="1234567890126",
                response_datetime=t,
                request_id=rid,
            )
        ),
    }


def _all_reshapes(data: bytes) -> list[bytes]:
    root = etree.fromstring(data)
    count = sum(1 for el in root.iter() if el.tag in _CONTAINERS)
    widths = [len(el) for el in root.iter() if el.tag in _CONTAINERS]
    out = []
    for container in range(count):
        w = max(widths[container], 1)
        for op in range(4):
            for a in range(w):
                for b in range(w):
                    out.append(_reshaped(data, container, op, a, b))
    return out


@pytest.mark.parametrize("name", list(_hot_documents()))
def test_exact_layout_fast_paths_agree_with_the_checking_walk_on_every_reshape_of_the_hot_messages(
    name: str,
) -> None:
    """Every swap, duplicate, drop and rename of a child in every interpreted container of the hot
    messages (11.3 response, AD1, device alert) decodes as the checking walk decodes it."""
    for data in _all_reshapes(_hot_documents()[name]):
        assert _decode_outcome(data) == _decode_outcome(_with_processing_instructions(data), walk=True), data


def test_datetimes_with_non_ascii_digits_are_rejected() -> None:
    import pytest

    from gateway.duis.errors import InvalidField
    from gateway.duis.values import DateTimePolicy, parse_datetime

    with pytest.raises(InvalidField):
        parse_datetime("2026-01-15T09:0\u0664:12Z", "ResponseDateTime", DateTimePolicy.NAIVE_IS_UTC, [])
