"""A processing instruction (or, in a tree from another parser, a comment) inside a simple value
does not change what is decoded: each value reads as its text nodes concatenated.

The safe parser keeps PIs (C14N keeps them, so signatures need them). ``el.text`` stops at the
first child node, so ``…:1<?x?>001`` (XSD-valid) used to decode as counter 1. The decoder drops
PIs from its own tree, and decodes a caller's tree that holds one from a copy (the caller's tree,
which may be signature-verified afterwards, is never changed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from duis_strategies import requests, responses
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.duis.decode import decode, decode_tree
from gateway.duis.encode import encode
from gateway.duis.errors import DuisError
from gateway.duis.model import Request, Response
from gateway.duis.safexml import may_hold_pis, parse_xml
from gateway.duis.schema import DuisSchema

SR = "http://www.dccinterface.co.uk/ServiceUserGateway"
RQ = "90-B3-D5-1F-30-01-00-00:88-73-84-57-00-2F-96-6C:1655991767747"
RS = "88-73-84-57-00-2F-96-6C:90-B3-D5-1F-30-01-00-00:1655991767747"
PAYLOAD = "3QAAAAAAAFURAAAAAN8JAgAAAYGQzRSDCIhzhFcAL5ZsCJCz1R8wAAACABIAWZCz1R8wAQAAAAABgZDNEsMR2iDNFIMAAAEJBAwVAAABAQAAsmMe6aqF4htmxPZp"


def _response(
    rq: str = RQ,
    rs: str = RS,
    code: str = "I0",
    when: str = "2022-06-23T13:42:52.264Z",
    payload: str = PAYLOAD,
) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<sr:Response xmlns:sr="{SR}" schemaVersion="5.1"><sr:Header>'
        f"<sr:RequestID>{rq}</sr:RequestID><sr:ResponseID>{rs}</sr:ResponseID>"
        f"<sr:ResponseCode>{code}</sr:ResponseCode><sr:ResponseDateTime>{when}</sr:ResponseDateTime>"
        f"</sr:Header><sr:Body><sr:ResponseMessage><sr:ServiceReference>11.2</sr:ServiceReference>"
        f"<sr:ServiceReferenceVariant>11.2</sr:ServiceReferenceVariant><sr:GBCSPayload>{payload}"
        f"</sr:GBCSPayload></sr:ResponseMessage></sr:Body></sr:Response>"
    ).encode()


def _request(
    rid: str = "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1001",
    when: str = "2030-01-15T09:00:00.00+05:00",
) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<sr:Request xmlns:sr="{SR}" schemaVersion="5.4"><sr:Header>'
        f"<sr:RequestID>{rid}</sr:RequestID><sr:CommandVariant>4</sr:CommandVariant>"
        f"<sr:ServiceReference>11.3</sr:ServiceReference><sr:ServiceReferenceVariant>11.3</sr:ServiceReferenceVariant>"
        f"</sr:Header><sr:Body><sr:ActivateFirmware><sr:ExecutionDateTime>{when}</sr:ExecutionDateTime>"
        f"<sr:FirmwareHash>AA758690730934FF0685AA758690730934FF0685657788990011223344556677</sr:FirmwareHash>"
        f"</sr:ActivateFirmware></sr:Body></sr:Request>"
    ).encode()


CASES = {
    "RequestID (request)": (
        _request(rid="90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1<?x?>001"),
        _request(),
    ),
    "ExecutionDateTime": (_request(when="2030-01-15T09:00:00.00<?x?>+05:00"), _request()),
    "RequestID (response)": (_response(rq=RQ[:50] + "<?x y?>" + RQ[50:]), _response()),
    "ResponseID": (_response(rs=RS[:3] + "<?x?>" + RS[3:]), _response()),
    "ResponseCode": (_response(code="I<?p?>0"), _response()),
    "ResponseDateTime": (_response(when="2022-06-23T13:42:52<?p?>.264Z"), _response()),
    "GBCSPayload": (_response(payload=PAYLOAD[:4] + "<?x?>" + PAYLOAD[4:]), _response()),
    "several PIs in one value": (_response(code="<?a?>I<?b?><?c?>0<?d?>"), _response()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_pi_inside_a_simple_value_decodes_as_the_value_without_it(name: str) -> None:
    with_pi, without = CASES[name]
    expected = decode(without)
    assert decode(with_pi) == expected
    assert decode(with_pi).warnings == expected.warnings
    assert decode_tree(parse_xml(with_pi)) == expected
    assert decode_tree(parse_xml(with_pi), pis=True) == expected


@pytest.mark.parametrize("name", list(CASES))
def test_a_pi_split_value_is_schema_valid_so_the_xsd_does_not_catch_it(
    name: str, official_schema: DuisSchema
) -> None:
    with_pi, without = CASES[name]
    assert official_schema.validate(parse_xml(with_pi)) == official_schema.validate(parse_xml(without))


def test_decode_tree_leaves_the_callers_tree_as_it_was() -> None:
    with_pi = CASES["RequestID (request)"][0]
    root = parse_xml(with_pi)
    before = etree.tostring(root, method="c14n")
    decode_tree(root)
    assert etree.tostring(root, method="c14n") == before
    assert len(list(root.iter(etree.ProcessingInstruction))) == 1


def test_a_comment_in_a_tree_from_another_parser_is_ignored_too() -> None:
    root = etree.fromstring(_response(code="I<!--c-->0"))  # lxml's default parser keeps comments
    assert decode_tree(root) == decode(_response())


def test_may_hold_pis_is_false_for_the_usual_message_and_true_for_a_pi() -> None:
    assert not may_hold_pis(_response())
    assert not may_hold_pis(b"<r>what?</r>")
    assert may_hold_pis(_response(code="I<?p?>0"))
    assert may_hold_pis(b'<?xml version="1.0"?><r><?p?></r>')
    assert may_hold_pis(b"<r><?p?></r>")


_PROLOGS = [
    b"",
    b'<?xml version="1.0" encoding="UTF-8"?>',
    b"<?xml version='1.0'?>\n",
    b"\xef\xbb\xbf",
    b"<?pi?>",
    b"<?pi a?b?>",
    b"<!--?-->",
]
_PIECES = [
    b"t",
    b"?",
    b"??",
    b"<?p?>",
    b"<?p x?>",
    b"<![CDATA[<?]]>",
    b"<![CDATA[?>]]>",
    b"<e a='?'/>",
    b"<e>?</e>",
    b"<!--<?-->",
    b"&#63;",
]


@given(st.sampled_from(_PROLOGS), st.lists(st.sampled_from(_PIECES), max_size=6))
@settings(max_examples=300, deadline=None)
def test_may_hold_pis_is_false_only_when_the_root_holds_no_pi(prolog: bytes, pieces: list[bytes]) -> None:
    data = prolog + b"<r>" + b"".join(pieces) + b"</r>"
    root = parse_xml(data)
    if not may_hold_pis(data):
        assert next(root.iter(etree.ProcessingInstruction), None) is None


def test_samples_decode_the_same_with_a_pi_in_every_value(shared: Path) -> None:
    files = sorted((shared / "duis" / "samples").glob("*")) + sorted(
        (shared / "duis" / "templates").glob("*")
    )
    checked = 0
    for path in files:
        data = path.read_bytes()
        try:
            expected = decode(data)
        except DuisError:  # the deliberately broken samples are tested elsewhere
            continue
        assert decode(_split_every_value(data)) == expected, path.name
        checked += 1
    assert checked > 40


def _split_every_value(data: bytes, at: int | None = None) -> bytes:
    """``data`` with a PI inside the text of every element that has text (at ``at``, or the middle)."""
    root = etree.fromstring(data)
    for el in list(root.iter()):
        text = el.text
        if isinstance(el.tag, str) and text and len(el) == 0:
            k = len(text) // 2 if at is None else min(at, len(text))
            pi = etree.ProcessingInstruction("split", "here")
            el.text = text[:k]
            pi.tail = text[k:]
            el.insert(0, pi)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


@given(st.one_of(responses(), requests()), st.integers(0, 40))
@settings(max_examples=150, deadline=None)
def test_generated_messages_decode_the_same_with_a_pi_in_every_value(
    doc: Request | Response, at: int
) -> None:
    data = encode(doc)
    split = _split_every_value(data, at)
    assert may_hold_pis(split)
    assert decode(split) == decode(data) == doc
    assert decode_tree(parse_xml(split)) == doc
