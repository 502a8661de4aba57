from __future__ import annotations

import time

import pytest

from gateway.duis.errors import DoctypeForbidden, MalformedXml, OversizeBody, UnsupportedEncoding
from gateway.duis.safexml import parse_xml

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<sr:Response xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway">&lol9;</sr:Response>"""

XXE = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""


def test_billion_laughs_is_rejected_before_any_expansion() -> None:
    t0 = time.perf_counter()
    for _ in range(100):
        with pytest.raises(DoctypeForbidden):
            parse_xml(BILLION_LAUGHS)
    assert (time.perf_counter() - t0) / 100 < 0.001


def test_external_entity_is_rejected() -> None:
    with pytest.raises(DoctypeForbidden):
        parse_xml(XXE)


def test_body_over_the_cap_is_rejected_without_parsing() -> None:
    with pytest.raises(OversizeBody):
        parse_xml(b"<a>" + b"x" * 100 + b"</a>", max_bytes=50)


def test_malformed_xml_has_a_named_error() -> None:
    with pytest.raises(MalformedXml):
        parse_xml(b"<a><b></a>")
    with pytest.raises(MalformedXml):
        parse_xml(b"   ")


def test_non_utf8_encodings_are_refused() -> None:
    with pytest.raises(UnsupportedEncoding):
        parse_xml('<?xml version="1.0" encoding="UTF-16"?><a/>'.encode("utf-16"))
    with pytest.raises(UnsupportedEncoding):
        parse_xml(b'<?xml version="1.0" encoding="ISO-8859-1"?><a/>')


def test_doctype_text_inside_content_is_not_a_doctype() -> None:
    root = parse_xml(b"<a><![CDATA[<!DOCTYPE x>]]></a>")
    assert root.text == "<!DOCTYPE x>"
