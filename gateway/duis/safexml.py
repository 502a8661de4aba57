"""Safe XML parsing for untrusted DUIS bytes.

Theory of operation: DUIS documents never need a DTD, so any DOCTYPE is rejected by a byte scan
of the prolog *before* libxml2 sees the document (a billion-laughs or external-entity document
costs microseconds and nothing is expanded). The scan reads the prolog the way an XML parser
does: an optional UTF-8 BOM, the XML declaration (checked against its grammar: version, encoding,
standalone), then white space, comments (``<!--`` to the first ``-->``, with no ``--`` inside) and
processing instructions (``<?target`` to the first ``?>``) skipped by their real terminators, until
the root's start tag. Any other ``<!`` (DOCTYPE, ENTITY, ...) is :class:`DoctypeForbidden`; an
unterminated comment or PI, text, or a misplaced declaration before the root is
:class:`MalformedXml`. So markup inside a comment or a PI (``<!--<x--><!DOCTYPE ...>``) is never
taken for the root, and no DOCTYPE can follow one unseen.

The lxml parser itself is the second line of defence: no DTD loading, no entity resolution, no
network, no huge-tree mode, and a resolver (:class:`_RefuseAll`) that refuses every external
resource libxml2 asks for (DTD, entity, any file or URL) with :class:`DoctypeForbidden` before it
is opened, so a DOCTYPE that reached libxml2 could neither read a file (nor block on a FIFO) nor
fetch a URL. A tree that carries a DTD anyway (internal or external subset) is rejected after the
parse. (The usual prolog, one of the plain UTF-8 XML declarations followed by white space and the
root's start tag, is recognised from its bytes and needs neither the scan nor the DTD check: it
has no room for a DOCTYPE.)

Comments are dropped at parse time: C14N without comments ignores them for the signature, so
keeping them would let a comment injected into a signed value (``…:10<!---->1``) change what the
decoder reads without breaking the signature. Processing instructions are kept (C14N keeps them,
so signatures need them); the decoder reads simple values with PIs skipped
(:func:`may_hold_pis` tells it when it must). Input is capped in size and must be UTF-8 (or its
ASCII subset): DUIS is UTF-8, and refusing other encodings keeps the prolog scan sound.

The parsed tree is bounded in what the signature check's C14N (libxml2) costs about the square of:
namespace declarations (every element pays for the namespaces in scope, each checked against the
others: 8,000 declarations on a root took 6 s, 30,000 took 139 s) and attributes on one element
(sorted by insertion: 90,000 took 29 s). More than :data:`MAX_NAMESPACE_DECLARATIONS` in the
document, :data:`MAX_ATTRIBUTES_PER_ELEMENT` on one element or :data:`MAX_ATTRIBUTES` in all is
:class:`TooComplex`. DUIS needs a few: the samples and templates in ``../shared`` declare at most 4
namespaces and carry at most 1 attribute on an element (the XSDs allow 4) and 54 in all.
The namespace bound is small on purpose: C14N costs about elements x declarations², so at 16 a
1 MiB document of empty elements costs about 0.3 s (4 declarations: 0.07 s), at 64 already 4 s.
The check costs two byte counts on a usual message: every declaration spells ``xmlns`` and every
attribute ``=`` in the bytes (names and the ``=`` come from no entity or character reference, and
the bytes are UTF-8), so when there are no more of those than the bounds the tree cannot exceed
them; otherwise the tree itself is counted (namespace declarations by an :func:`lxml.etree.iterwalk`
of ``start-ns`` events; attributes by an XPath ``count(//@*)``, then element by element only when
that total is over the bound for one element), so ``xmlns`` or ``=`` in text, comments, PIs or
attribute values never refuse a document.
"""

from __future__ import annotations

import re
from typing import Any, cast

from lxml import etree

from gateway.duis.errors import DoctypeForbidden, MalformedXml, OversizeBody, TooComplex, UnsupportedEncoding

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTES_PER_ELEMENT",
    "MAX_NAMESPACE_DECLARATIONS",
    "may_hold_pis",
    "parse_xml",
]

DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB
# What the signature check's C14N costs about the square of (see the module docstring). DUIS in
# ../shared (12 samples, 297 templates): at most 4 declarations, 1 attribute on an element, 54 in all.
MAX_NAMESPACE_DECLARATIONS = 16  # in the whole document (xmlns="" and re-declarations count)
MAX_ATTRIBUTES_PER_ELEMENT = 64  # namespace declarations are not attributes
MAX_ATTRIBUTES = 4096  # in the whole document

_BOM = b"\xef\xbb\xbf"
# The XML declaration, as its grammar allows it (XML 1.0 productions 23-32): anything else that
# starts like one is refused before libxml2 could read it differently.
_XML_DECL = re.compile(
    rb"""<\?xml [ \t\r\n]+ version [ \t\r\n]* = [ \t\r\n]* (?: "1\.[0-9]+" | '1\.[0-9]+' )
    (?: [ \t\r\n]+ encoding [ \t\r\n]* = [ \t\r\n]*
        (?: "([A-Za-z][A-Za-z0-9._-]*)" | '([A-Za-z][A-Za-z0-9._-]*)' ) )?
    (?: [ \t\r\n]+ standalone [ \t\r\n]* = [ \t\r\n]* (?: "(?:yes|no)" | '(?:yes|no)' ) )?
    [ \t\r\n]* \?>""",
    re.VERBOSE,
)
_WS_RUN = re.compile(rb"[ \t\r\n]*")
_PI_TARGET = re.compile(rb"[A-Za-z_:\x80-\xff][A-Za-z0-9._:\x80-\xff-]*")
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


class _RefuseAll(etree.Resolver):
    """Refuses every external resource libxml2 asks for (DTD, entity, XInclude, any file or URL).

    Raising here makes lxml return no input to libxml2 (nothing is opened) and re-raise the error
    from the parse call, so the caller gets this named error.
    """

    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:  # type: ignore[override]
        shown = (system_url or public_id or "?")[:100]
        raise DoctypeForbidden(f"external resource refused: {shown!r} (DUIS needs no DTD or entity)")


def _make_parser() -> etree.XMLParser:
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
        remove_comments=True,  # a comment inside signed text must not split what the decoder reads
        collect_ids=False,
    )
    parser.resolvers.add(_RefuseAll())
    return parser


_PARSER = _make_parser()
_START_NS = ("start-ns",)
_COUNT_ATTRIBUTES = etree.XPath("count(//@*)")


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
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise MalformedXml(str(exc).splitlines()[0][:200]) from None
    except ValueError as exc:  # e.g. lxml refusing unicode strings with declarations
        raise MalformedXml(str(exc)[:200]) from None
    if not plain:
        # Second line of defence (a plain prolog has no room for a DOCTYPE): a tree that carries a
        # DTD is refused, whatever the scan above concluded.
        info = root.getroottree().docinfo
        if info.internalDTD is not None or info.externalDTD is not None:
            raise DoctypeForbidden("DOCTYPE declarations are not accepted in DUIS")
    # The bytes bound the declarations ("xmlns") and attributes ("=") from above; only when they
    # could exceed a bound is the tree counted (see the module docstring).
    if data.count(b"xmlns") > MAX_NAMESPACE_DECLARATIONS:
        _check_namespace_declarations(root)
    if data.count(b"=") > MAX_ATTRIBUTES_PER_ELEMENT:
        _check_attributes(root)
    return root


def _check_namespace_declarations(root: etree._Element) -> None:
    for n, _ in enumerate(etree.iterwalk(root, events=_START_NS), 1):  # one event per declaration
        if n > MAX_NAMESPACE_DECLARATIONS:
            raise TooComplex(f"more than {MAX_NAMESPACE_DECLARATIONS} namespace declarations in the document")


def _check_attributes(root: etree._Element) -> None:
    total = int(cast(float, _COUNT_ATTRIBUTES(root)))  # (in C; namespace declarations are no attributes)
    if total <= MAX_ATTRIBUTES_PER_ELEMENT:  # no element can hold more
        return
    if total > MAX_ATTRIBUTES:
        raise TooComplex(f"{total} attributes in all in the document, at most {MAX_ATTRIBUTES} accepted")
    for el in root.iter(etree.Element):  # elements only (a PI's pseudo-attributes are none)
        if (n := len(el.attrib)) > MAX_ATTRIBUTES_PER_ELEMENT:
            raise TooComplex(f"{n} attributes on one element, at most {MAX_ATTRIBUTES_PER_ELEMENT} accepted")


def _check_prolog(data: bytes) -> None:
    """The security scan of everything before the root element (runs before libxml2 sees it)."""
    head = data[:4]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head:
        raise UnsupportedEncoding("only UTF-8 DUIS is accepted (UTF-16 or NUL bytes found)")
    pos = 3 if data.startswith(_BOM) else 0
    if data.startswith(b"<?xml", pos) and data[pos + 5 : pos + 6] in (b" ", b"\t", b"\r", b"\n", b"?"):
        decl = _XML_DECL.match(data, pos)
        if decl is None:
            raise MalformedXml("malformed XML declaration")
        encoding = decl.group(1) or decl.group(2)
        if encoding is not None and encoding.lower() not in _OK_ENCODINGS:
            raise UnsupportedEncoding(f"encoding {encoding.decode('ascii', 'replace')!r} not accepted")
        pos = decl.end()
    n = len(data)
    while True:
        pos = _WS_RUN.match(data, pos).end()  # type: ignore[union-attr]  # (matches the empty string)
        if pos >= n:
            raise MalformedXml("no root element") if data.strip() else MalformedXml("empty document")
        if data[pos] != 0x3C:  # "<"
            raise MalformedXml("text before the root element")
        nxt = data[pos + 1] if pos + 1 < n else -1
        if nxt in _NAME_START:
            return  # the root's start tag
        if nxt == 0x3F:  # "<?": a processing instruction, to its first "?>"
            target = _PI_TARGET.match(data, pos + 2)
            if target is None:
                raise MalformedXml("processing instruction without a target before the root element")
            if target.group().lower() == b"xml":
                raise MalformedXml("XML declaration not at the start of the document")
            after = target.end()
            if after >= n:
                raise MalformedXml("unterminated processing instruction before the root element")
            if not data.startswith(b"?>", after) and data[after : after + 1] not in (
                b" ",
                b"\t",
                b"\r",
                b"\n",
            ):
                raise MalformedXml("malformed processing instruction before the root element")
            end = data.find(b"?>", after)
            if end < 0:
                raise MalformedXml("unterminated processing instruction before the root element")
            pos = end + 2
        elif data.startswith(b"<!--", pos):  # a comment, to its first "-->"
            end = data.find(b"-->", pos + 4)
            if end < 0:
                raise MalformedXml("unterminated comment before the root element")
            text = data[pos + 4 : end]
            if b"--" in text or text.endswith(b"-"):
                raise MalformedXml("'--' inside a comment before the root element")
            pos = end + 3
        elif nxt == 0x21:  # "<!" and not a comment: DOCTYPE, ENTITY, CDATA, ...
            raise DoctypeForbidden("DOCTYPE/entity declarations are not accepted in DUIS")
        else:
            raise MalformedXml("markup before the root element is not a start tag")


def may_hold_pis(data: bytes) -> bool:
    """Whether the root element :func:`parse_xml` made of ``data`` may hold a processing instruction.

    False is exact; True may be a false alarm (a ``?`` in a value and a ``<?`` in a CDATA section,
    an attribute value or the prolog). A PI in the root needs two ``?`` (``<?`` and ``?>``) beyond
    the ``<?…?>`` a document may start with (its XML declaration, which ``parse_xml`` accepts only
    with no ``?`` before its ``?>``, or a PI): so a document with at most one ``?`` after its first
    two bytes has none. That costs two ``memchr``-class finds (the first stops at the declaration's
    end); the search for ``<?`` runs only when more ``?`` are found.
    """
    q = data.find(b"?", 2)
    return q >= 0 and data.find(b"?", q + 1) >= 0 and data.find(b"<?", 1) >= 0
