"""XML attacks against the DUIS parser, decoder and classifier: every one ends in a named rejection
(or, where the document is harmless, a decoded message that is never evidence), quickly, with no
entity expanded, no file or URL read and no XInclude processed."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from lxml import etree

from gateway.duis.decode import decode
from gateway.duis.safexml import DEFAULT_MAX_BYTES, parse_xml
from gateway.errors import DuisgwError
from gateway.pipeline import Classifier
from gateway.testkit.scenario import World
from tests.badinput import tally

SR = "http://www.dccinterface.co.uk/ServiceUserGateway"
NOW = datetime(2026, 3, 2, 9, 10, tzinfo=UTC)
HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _response(body: str = "", attrs: str = "", prefix: str = "sr") -> bytes:
    p = f"{prefix}:" if prefix else ""
    ns = f'xmlns:{prefix}="{SR}"' if prefix else f'xmlns="{SR}"'
    return (
        f'<{p}Response {ns} schemaVersion="5.4"{attrs}><{p}Header><{p}ResponseCode>I0</{p}ResponseCode>'
        f"<{p}ResponseDateTime>2026-03-02T09:00:00Z</{p}ResponseDateTime></{p}Header>"
        f"<{p}Body>{body}</{p}Body></{p}Response>"
    ).encode()


BILLION_LAUGHS = (
    HEAD
    + b"""<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<sr:Response xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway">&lol9;</sr:Response>"""
)

QUADRATIC = HEAD + b'<!DOCTYPE r [<!ENTITY a "' + b"A" * 50_000 + b'">]><r>' + b"&a;" * 10_000 + b"</r>"

CASES: dict[str, tuple[bytes, set[str]]] = {
    "billion laughs": (BILLION_LAUGHS, {"doctype_forbidden"}),
    "quadratic blowup (one huge entity referenced 10k times)": (QUADRATIC, {"doctype_forbidden"}),
    "external entity SYSTEM file://": (
        HEAD + b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + _response("&x;"), {"doctype_forbidden"}),
    "external entity SYSTEM http://": (
        HEAD + b'<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]>' + _response("&x;"), {"doctype_forbidden"}),
    "parameter entity (external DTD)": (
        HEAD + b'<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>' + _response(),
        {"doctype_forbidden"}),
    "external DTD subset only": (HEAD + b'<!DOCTYPE r SYSTEM "file:///etc/passwd">' + _response(), {"doctype_forbidden"}),
    "DOCTYPE after a comment and a PI in the prolog": (
        HEAD + b"<!-- c --><?pi x?><!DOCTYPE r [<!ENTITY a 'b'>]>" + _response("&a;"), {"doctype_forbidden"}),
    "undeclared entity reference without DTD": (_response("&xxe;"), {"malformed_xml"}),
    "XInclude of /etc/passwd (must not be processed)": (
        _response('<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" parse="text"/>'),
        {"invalid_field"}),
    "deep nesting (100k elements)": (
        HEAD + b"<a>" * 100_000 + b"</a>" * 100_000, {"malformed_xml"}),
    "deep nesting inside a DUIS Body (10k)": (_response("<x>" * 10_000 + "</x>" * 10_000), {"malformed_xml"}),
    "huge attribute value (900 KB, no DTD)": (_response(attrs=' big="' + "A" * 900_000 + '"'), {"invalid_field"}),
    "many attributes (20k)": (
        _response(attrs="".join(f' a{i}="{i}"' for i in range(20_000))), {"too_complex"}),
    "very long text (900 KB) in ResponseCode": (
        _response().replace(b">I0<", b">" + b"I" * 900_000 + b"<"), {"invalid_field", "accepted"}),
    "sr prefix bound to another URI": (_response().replace(SR.encode(), b"urn:evil"), {"not_duis"}),
    "default namespace instead of sr prefix": (_response(prefix=""), {"invalid_field", "accepted"}),
    "UTF-16 with BOM": ('<?xml version="1.0" encoding="UTF-16"?>'.encode("utf-16") + _response().decode().encode("utf-16")[2:],
                        {"unsupported_encoding"}),
    "UTF-16LE without BOM": (_response().decode().encode("utf-16-le"), {"unsupported_encoding"}),
    "UTF-32": (_response().decode().encode("utf-32"), {"unsupported_encoding"}),
    "ISO-8859-1 declared": (b'<?xml version="1.0" encoding="ISO-8859-1"?>' + _response(), {"unsupported_encoding"}),
    "EBCDIC declared": (b'<?xml version="1.0" encoding="IBM037"?>' + _response(), {"unsupported_encoding"}),
    "UTF-8 BOM": (b"\xef\xbb\xbf" + HEAD + _response(), {"invalid_field", "accepted"}),
    "NUL byte in a text value": (_response().replace(b">I0<", b">I\x000<"), {"malformed_xml"}),
    "NUL bytes first": (b"\x00\x00" + _response(), {"unsupported_encoding"}),
    "invalid UTF-8": (_response().replace(b">I0<", b">I\xff\xfe0<"), {"malformed_xml"}),
    "oversized body (1 MiB + 1)": (_response("x" * (DEFAULT_MAX_BYTES + 1)), {"oversize_body"}),
    "empty body": (b"", {"malformed_xml"}),
    "white space only": (b" \r\n\t ", {"malformed_xml"}),
    "not XML (JSON)": (b'{"Response": 1}', {"malformed_xml"}),
    "HTML": (b"<html><body>hi</body></html>", {"not_duis"}),
    "two roots": (_response() + _response(), {"malformed_xml"}),
    "CDATA hiding markup in a field": (
        _response().replace(b">I0<", b"><![CDATA[</sr:ResponseCode><sr:Evil/>]]><"), {"invalid_field", "accepted"}),
}  # fmt: skip


def _outcome(classifier: Classifier, body: bytes) -> str:
    c = classifier.classify("inline", body, NOW)
    if c.rejection is not None:
        return c.rejection.code
    assert not c.verified, "an unsigned attack document must never count as verified"
    return "accepted"


@pytest.mark.parametrize("name", list(CASES))
def test_xml_attack_is_a_named_rejection_quickly(classifier: Classifier, name: str) -> None:
    body, allowed = CASES[name]
    t0 = time.perf_counter()
    outcome = _outcome(classifier, body)
    elapsed = time.perf_counter() - t0
    tally.count("xml-attacks", outcome)
    assert outcome in allowed, (name, outcome)
    assert elapsed < 2.0, f"{name} took {elapsed:.2f}s"
    # the decoder alone raises the same named error (or decodes a harmless document)
    if outcome != "accepted":
        with pytest.raises(DuisgwError) as exc:
            decode(body)
        assert exc.value.code == outcome


def test_doctype_is_rejected_before_any_expansion() -> None:
    t0 = time.perf_counter()
    for _ in range(200):
        with pytest.raises(DuisgwError):
            parse_xml(BILLION_LAUGHS)
    assert time.perf_counter() - t0 < 1.0


def test_xinclude_element_is_left_as_an_element_and_never_processed() -> None:
    body = _response(
        '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" parse="text"/>'
    )
    root = parse_xml(body)
    inc = root.find(".//{http://www.w3.org/2001/XInclude}include")
    assert inc is not None
    assert b"root:" not in etree.tostring(root)


def test_ds_prefix_rebound_inside_signature_is_never_a_valid_signature(
    classifier: Classifier, testkit_messages: list[bytes]
) -> None:
    # the genuine 11.3 response with its SignedInfo moved to another namespace under the same prefix
    signed = testkit_messages[2]
    tampered = signed.replace(b"<ds:SignedInfo>", b'<ds:SignedInfo xmlns:ds="urn:evil">', 1)
    assert tampered != signed
    c = classifier.classify("observe", tampered, NOW)
    tally.count(
        "xml-attacks",
        c.rejection.code if c.rejection else (c.problems[0].split(":")[1] if c.problems else "ok"),
    )
    assert c.xml is not None and not c.xml.valid
    assert not any(ev.verified for ev in c.events)


def test_default_namespace_rewrite_of_a_signed_message_breaks_its_signature(
    classifier: Classifier, testkit_messages: list[bytes]
) -> None:
    # same element URIs (the decoder matches by URI) but another serialisation: the inclusive C14N
    # digest covers prefixes, so the rewritten copy is never verified evidence
    signed = testkit_messages[2]
    rewritten = signed.replace(b"sr:", b"").replace(b"xmlns:sr=", b"xmlns=")
    c = classifier.classify("observe", rewritten, NOW)
    tally.count("xml-attacks", c.rejection.code if c.rejection else "decoded, signature invalid")
    assert c.rejection is None  # the document itself is fine ...
    assert c.xml is not None and not c.xml.valid  # ... but not genuine
    assert c.events and not any(ev.verified for ev in c.events)




def test_comment_injected_into_a_signed_field_does_not_change_what_is_decoded(
    classifier: Classifier, world: World
) -> None:
    at = datetime(2026, 3, 2, 9, 7, tzinfo=UTC)
    ad1 = world.factory.ad1(0x00DC_0000_0000_0001, "1900000000013", at, at, 12)
    genuine = classifier.classify("inline", ad1, NOW)
    assert genuine.verified
    injected = ad1.replace(b":12</sr:ResponseID>", b":1<!---->2</sr:ResponseID>")
    assert injected != ad1
    c = classifier.classify("inline", injected, NOW)
    if c.verified:  # a verified message must decode to exactly what was signed
        assert c.message_id == genuine.message_id
