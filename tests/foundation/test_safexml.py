from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lxml import etree

from gateway.duis import safexml
from gateway.duis.errors import DoctypeForbidden, MalformedXml, OversizeBody, UnsupportedEncoding
from gateway.duis.safexml import parse_xml

PROJECT = Path(__file__).resolve().parents[2]

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


# --------------------------------------------------------------------------- prolog scan (markup
# inside a leading comment or PI was taken for the root, so a DOCTYPE after it reached libxml2)

SR_RESPONSE = (
    b'<sr:Response xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway" schemaVersion="5.4">'
    b"<sr:Header><sr:ResponseCode>E&e;65</sr:ResponseCode></sr:Header></sr:Response>"
)


@pytest.mark.parametrize(
    "doc",
    [
        b'<!--<x--><!DOCTYPE r SYSTEM "/etc/passwd"><r/>',
        b'<?xml version="1.0"?><!--<x--><!DOCTYPE r SYSTEM "/etc/passwd"><r/>',
        b'<?pi <x?><!DOCTYPE r SYSTEM "/etc/passwd"><r/>',
        b'<?pi a="<x"?>\n<!-- <y --> <!DOCTYPE r SYSTEM "file:///etc/passwd"><r/>',
        b'<!--<x--><!DOCTYPE r PUBLIC "-//x//y" "/etc/passwd"><r/>',
        b'<!-- <note --><!DOCTYPE sr:Response [<!ENTITY e "X">]>' + SR_RESPONSE,
        b'<!--<x--><!DOCTYPE r [<!ATTLIST r xmlns CDATA "urn:x">]><r/>',
        b"<!--<x--><!ENTITY e 'x'><r/>",
    ],
    ids=["comment", "decl+comment", "pi", "pi+comment", "public", "internal-entity", "attlist", "entity"],
)
def test_doctype_after_a_comment_or_pi_holding_markup_is_forbidden(doc: bytes) -> None:
    with pytest.raises(DoctypeForbidden):
        parse_xml(doc)


def test_billion_laughs_after_a_comment_is_forbidden_in_well_under_a_millisecond() -> None:
    doc = b"<!--<sr:Response>-->" + BILLION_LAUGHS[BILLION_LAUGHS.index(b"<!DOCTYPE") :]
    t0 = time.perf_counter()
    for _ in range(100):
        with pytest.raises(DoctypeForbidden):
            parse_xml(doc)
    assert (time.perf_counter() - t0) / 100 < 0.001


@pytest.mark.parametrize(
    "doc",
    [
        b"<!-- never closed <r/>",
        b"<?pi never closed <r/>",
        b"<?pi",
        b'<?xml version="1.0"?><!-- a -- b --><r/>',  # "--" inside a comment
        b"<!-- a ---><r/>",
        b"<? nameless?><r/>",
        b'<?xml version="1.0"?><?xml version="1.0"?><r/>',  # a second declaration
        b' <?xml version="1.0"?><r/>',  # a declaration not at the start
        b"<?xml?><r/>",  # a declaration without its version
        b"""<?xml version="1.0" encoding='?><r/>'?><!DOCTYPE r SYSTEM "/etc/passwd"><r/>""",
        b"text<r/>",
        b"</x><r/>",
    ],
)
def test_malformed_prolog_is_malformed_xml_before_libxml2(doc: bytes) -> None:
    with pytest.raises(MalformedXml):
        parse_xml(doc)


@pytest.mark.parametrize(
    "doc",
    [
        b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- <x --><?pi <y?>\n<r>t</r>',
        b"\xef\xbb\xbf<?xml version='1.0' encoding='utf-8' standalone='yes'?><r>t</r>",
        b'<?xml-stylesheet href="s.xsl"?><r>t</r>',
        b"<!----><r>t</r>",
        b'<?xml version="1.1"?>\r\n<r>t</r>',
    ],
)
def test_comments_and_pis_before_the_root_are_still_accepted(doc: bytes) -> None:
    assert parse_xml(doc).text == "t"


def test_the_parser_refuses_every_external_resource_with_a_named_error() -> None:
    """Defence in depth: even a DOCTYPE that reached libxml2 opens no file (resolver refuses)."""
    for doc in (
        b'<!DOCTYPE r SYSTEM "/etc/hostname"><r/>',
        b'<!DOCTYPE r PUBLIC "-//x//y" "file:///etc/hostname"><r/>',
        b'<!DOCTYPE r [<!ENTITY % p SYSTEM "/etc/hostname"> %p;]><r/>',
    ):
        with pytest.raises(DoctypeForbidden, match="external resource refused"):
            etree.fromstring(doc, safexml._PARSER)
    # a general external entity is not even asked for (resolve_entities=False): never expanded
    root = etree.fromstring(
        b'<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/hostname">]><r>&e;</r>', safexml._PARSER
    )
    assert root.text is None and len(root) == 1 and root[0].tag is etree.Entity  # a bare &e; reference


def test_a_tree_carrying_a_dtd_is_refused_even_if_the_prolog_scan_missed_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(safexml, "_check_prolog", lambda data: None)
    for doc in (b'<!DOCTYPE r [<!ENTITY e "x">]><r>&e;</r>', b"<!DOCTYPE r><r/>"):
        with pytest.raises(DoctypeForbidden):
            parse_xml(doc)


_FIFO_CHILD = """
import sys
from lxml import etree
from gateway.duis import safexml
from gateway.duis.errors import DuisError
fifo = sys.argv[1]
for label, parse in (
    ("parse_xml", lambda d: safexml.parse_xml(d)),
    ("parser", lambda d: etree.fromstring(d, safexml._PARSER)),
):
    for doc in (
        b'<!--<a--><!DOCTYPE r SYSTEM "' + fifo.encode() + b'"><r/>',
        b'<!DOCTYPE r [<!ENTITY e SYSTEM "' + fifo.encode() + b'">]><r>&e;</r>',
    ):
        try:
            parse(doc)
            print(label, "parsed")
        except DuisError as exc:
            print(label, exc.code)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_an_external_id_naming_a_fifo_neither_blocks_nor_is_opened(tmp_path: Path) -> None:
    """A FIFO blocks whoever opens it for reading: the parse must not try (run in a child process
    with a timeout, so a regression fails instead of hanging the suite)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    done = subprocess.run(
        [sys.executable, "-c", _FIFO_CHILD, str(fifo)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == [
        "parse_xml doctype_forbidden",
        "parse_xml doctype_forbidden",
        "parser doctype_forbidden",
        "parser parsed",  # the general entity is never resolved, so nothing is opened either
    ]
