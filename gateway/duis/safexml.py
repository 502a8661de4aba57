"""Safe XML parsing for untrusted DUIS bytes.

Theory of operation: DUIS documents never need a DTD, so any DOCTYPE is rejected by a byte scan
of the prolog *before* libxml2 sees the document (a billion-laughs or external-entity document
costs microseconds and nothing is expanded). The lxml parser itself is configured as a second
line of defence: no DTD loading, no entity resolution, no network, no huge-tree mode (so even a
DOCTYPE that reached it could neither load nor expand anything). Comments are dropped at parse time:
C14N without comments ignores them for the signature, so keeping them would let a comment injected
into a signed value (``…:10<!---->1``) change what the decoder reads without breaking the signature. Input is
capped in size and must be UTF-8 (or its ASCII subset): DUIS is UTF-8, and refusing other
encodings keeps the prolog scan sound.
"""

from __future__ import annotations

import re

from lxml import etree

from gateway.duis.errors import DoctypeForbidden, MalformedXml, OversizeBody, UnsupportedEncoding

__all__ = ["DEFAULT_MAX_BYTES", "parse_xml"]

DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB

_ROOT_START = re.compile(rb"<[A-Za-z_\x80-\xff]")
_ENCODING_DECL = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_OK_ENCODINGS = {b"utf-8", b"utf8", b"us-ascii", b"ascii"}
_COMMON_DECLS = (b'<?xml version="1.0" encoding="UTF-8"?>', b"<?xml version='1.0' encoding='UTF-8'?>")
# XML declarations that need no scan (UTF-8 or no encoding, nothing else in them); see parse_xml.
_PLAIN_DECLS = frozenset(
    f"<?xml version={q}1.0{q}{enc}{sa}?>".encode()
    for q in ('"', "'")
    for enc in ("", *(f" encoding={q}{e}{q}" for e in ("UTF-8", "utf-8")))
    for sa in ("", f" standalone={q}no{q}", f" standalone={q}yes{q}")
)
# For bytes.startswith, the DCC's and lxml's spellings first (no declaration is a prefix of another).
_PLAIN_DECLS_TUPLE = tuple(sorted(_PLAIN_DECLS, key=lambda d: (d not in _COMMON_DECLS, d)))
_ROOT_AFTER_DECL = re.compile(rb"[ \t\r\n]*<[A-Za-z_\x80-\xff]")
# The bytes ``[A-Za-z_\x80-\xff]`` of the pattern above (a root element name's first byte).
_NAME_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_" + bytes(range(0x80, 0x100)))


def _make_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
        remove_comments=True,  # a comment inside signed text must not split what the decoder reads
        collect_ids=False,
    )


_PARSER = _make_parser()


def parse_xml(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """Parse untrusted bytes into an lxml element, or raise a named :class:`DuisError`."""
    if len(data) > max_bytes:
        raise OversizeBody(f"body is {len(data)} bytes, cap is {max_bytes}")
    # Fast path: the prolog is exactly one of the usual UTF-8 XML declarations followed by white
    # space and the root's start tag. Such a prolog holds no "<!" and a good encoding, so the
    # scan below would pass it; anything else (BOM, comments, PIs, DOCTYPE, other encodings or
    # spellings) takes the scan.
    plain = False
    if data.startswith(_PLAIN_DECLS_TUPLE):
        i = data.find(b"?>") + 2
        try:  # "<" or "\n<" and a name-start byte (the usual forms), else the pattern decides
            c = data[i]
            if c == 0x3C:
                plain = data[i + 1] in _NAME_START
            elif c == 0x0A and data[i + 1] == 0x3C:
                plain = data[i + 2] in _NAME_START
            else:
                plain = _ROOT_AFTER_DECL.match(data, i) is not None
        except IndexError:  # the document ends in or right after the declaration
            plain = False
    if not plain:
        _check_prolog(data)
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise MalformedXml(str(exc).splitlines()[0][:200]) from None
    except ValueError as exc:  # e.g. lxml refusing unicode strings with declarations
        raise MalformedXml(str(exc)[:200]) from None


def _check_prolog(data: bytes) -> None:
    """The security scan of everything before the root element (runs before libxml2 sees it)."""
    head = data[:4]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head:
        raise UnsupportedEncoding("only UTF-8 DUIS is accepted (UTF-16 or NUL bytes found)")
    root_match = _ROOT_START.search(data)
    if root_match is None:
        raise MalformedXml("no root element") if data.strip() else MalformedXml("empty document")
    start = root_match.start()
    if start:  # a prolog: XML declaration, comments, processing instructions, (forbidden) DOCTYPE
        prolog = data[:start]
        if b"<!" in prolog and (b"<!DOCTYPE" in prolog or b"<!ENTITY" in prolog):
            raise DoctypeForbidden("DOCTYPE/entity declarations are not accepted in DUIS")
        m = _ENCODING_DECL.match(prolog.lstrip(b"\xef\xbb\xbf")) if b"encoding" in prolog else None
        if m is not None and m.group(1).lower() not in _OK_ENCODINGS:
            raise UnsupportedEncoding(f"encoding {m.group(1).decode('ascii', 'replace')!r} not accepted")
