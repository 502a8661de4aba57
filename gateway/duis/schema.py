"""XSD validation of DUIS documents: the official DUIS XSD when configured, else duisgw's compact one.

Theory of operation: validation is lxml ``XMLSchema`` (libxml2) on a tree that was already parsed
safely (:func:`gateway.duis.safexml.parse_xml`), so a message is parsed once and validated in
microseconds. Loading happens once at start-up.

The official DUIS 5.4 XSD (``DUIS Schema V5.4.xsd`` as published by the SEC / DCC, also shipped
with the DCC Boxed signing tool) cannot be loaded by libxml2 as delivered:

1. it imports ``MMC Schema V5.4.xsd`` -- a ``schemaLocation`` with spaces, which libxml2 does not
   turn into a loadable URI;
2. ``xmldsig-core-schema.xsd`` starts with a DOCTYPE pointing at the W3C DTD on the network.

The operator's files are never edited. Instead the schema is parsed through an lxml
:class:`etree.Resolver` that serves only files from the main XSD's own directory, rewrites
space-containing ``schemaLocation`` values to their URI-escaped form in memory, and strips the
DOCTYPE in memory (the xmldsig schema does not use the entities it declares). Network access is
off and any other location is refused, so loading a schema never leaves the directory.

``xmlschema`` (pure Python, slow, but with readable reasons) is used only by :func:`explain`, off
the hot path, for the CLI's ``--explain``.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from lxml import etree

from gateway.duis.errors import SchemaUnavailable, ValidationFailed

__all__ = ["COMPACT_SCHEMA_NAME", "DuisSchema", "explain", "load_compact", "load_official", "load_schema"]

COMPACT_SCHEMA_NAME = "duisgw-compact.xsd"
_XS = "{http://www.w3.org/2001/XMLSchema}"
_DOCTYPE = re.compile(rb"<!DOCTYPE\s[^\[>]*(?:\[.*?\]\s*)?>", re.S)


def _schema_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )


def _prepare(data: bytes, parser: etree.XMLParser, base_url: str) -> etree._Element:
    """Strip a DOCTYPE and escape space-containing schemaLocations, in memory."""
    data = _DOCTYPE.sub(b"", data, count=1)
    root = etree.fromstring(data, parser, base_url=base_url)
    for el in root.iter(_XS + "import", _XS + "include", _XS + "redefine"):
        loc = el.get("schemaLocation")
        if loc and " " in loc:
            el.set("schemaLocation", quote(loc, safe="/:"))
    return root


class _DirectoryResolver(etree.Resolver):
    """Serves schema documents from one directory only (DOCTYPE stripped, locations escaped)."""

    def __init__(self, directory: Path, parser_factory: Any) -> None:
        super().__init__()
        self.directory = directory.resolve()
        self.parser_factory = parser_factory
        self.refused: list[str] = []

    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:  # type: ignore[override]
        path = unquote(urlsplit(system_url).path if "://" in system_url else system_url)
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = self.directory / candidate
        try:
            candidate = candidate.resolve()
        except OSError:
            candidate = self.directory / "\0"
        if candidate.parent != self.directory or not candidate.is_file():
            # Not one of the schema's own files: refuse (no network, no other directories).
            self.refused.append(system_url)
            return self.resolve_string(b"<refused/>", context, base_url=system_url)
        root = _prepare(candidate.read_bytes(), self.parser_factory(), str(candidate))
        return self.resolve_string(etree.tostring(root), context, base_url=str(candidate))


class DuisSchema:
    """A loaded XSD. :meth:`validate` returns the error lines (empty when valid)."""

    __slots__ = ("_schema", "source", "xsd_path")

    def __init__(self, schema: etree.XMLSchema, source: str, xsd_path: Path | None) -> None:
        self._schema = schema
        self.source = source
        self.xsd_path = xsd_path

    def validate(self, root: etree._Element) -> list[str]:
        """Validate a parsed DUIS root element; return ``["line N: message", ...]`` (empty = valid).

        :class:`ValidationFailed` when libxml2 cannot judge the tree (it raises
        ``XMLSchemaValidateError`` on some trees, e.g. ones that carry a DTD).
        """
        try:
            if self._schema.validate(root):
                return []
        except etree.Error as exc:
            raise ValidationFailed(f"the XSD validator failed: {str(exc).splitlines()[0][:200]}") from None
        log: Any = self._schema.error_log  # lxml-stubs miss _ErrorLog.__iter__
        return [f"line {e.line}: {e.message}" for e in log]

    def is_valid(self, root: etree._Element) -> bool:
        """Whether the tree is valid; False also when the validator cannot judge it."""
        try:
            return bool(self._schema.validate(root))
        except etree.Error:
            return False

    def __repr__(self) -> str:
        return f"DuisSchema({self.source!r})"


def load_official(path: str | os.PathLike[str]) -> DuisSchema:
    """Load the official DUIS XSD (``DUIS Schema V5.4.xsd``) and its imports from the same directory."""
    xsd = Path(path)
    if not xsd.is_file():
        raise SchemaUnavailable(f"DUIS XSD not found: {xsd}")
    directory = xsd.resolve().parent

    parser = _schema_parser()
    resolver = _DirectoryResolver(directory, _schema_parser)
    parser.resolvers.add(resolver)
    try:
        root = _prepare(xsd.read_bytes(), parser, str(xsd.resolve()))
        schema = etree.XMLSchema(root)
    except (etree.XMLSyntaxError, etree.XMLSchemaParseError, OSError) as exc:
        extra = f" (refused locations: {', '.join(resolver.refused)})" if resolver.refused else ""
        raise SchemaUnavailable(
            f"cannot load DUIS XSD {xsd}: {str(exc).splitlines()[0][:200]}{extra}"
        ) from None
    return DuisSchema(schema, str(xsd), xsd.resolve())


def _compact_path() -> Path:
    """The packaged compact XSD, found through importlib.resources.

    Falls back to the package's ``__path__`` entries when the package is seen as a namespace
    package (an editable install made before ``duis_schemas/__init__.py`` existed yields a
    namespace path with a non-directory entry, which ``importlib.resources`` refuses).
    """
    try:
        ref = importlib.resources.files("duis_schemas").joinpath(COMPACT_SCHEMA_NAME)
        with importlib.resources.as_file(ref) as path:
            if path.is_file():
                return Path(path)
    except (OSError, ModuleNotFoundError):
        pass
    import duis_schemas

    for entry in getattr(duis_schemas, "__path__", []):
        candidate = Path(entry) / COMPACT_SCHEMA_NAME
        if candidate.is_file():
            return candidate
    raise SchemaUnavailable(f"compact DUIS XSD {COMPACT_SCHEMA_NAME} not found in package duis_schemas")


def load_compact() -> DuisSchema:
    """Load duisgw's own compact XSD (package data ``duis_schemas/duisgw-compact.xsd``)."""
    path = _compact_path()
    try:
        root = etree.fromstring(path.read_bytes(), _schema_parser())
        schema = etree.XMLSchema(root)
    except (OSError, etree.XMLSyntaxError, etree.XMLSchemaParseError) as exc:
        raise SchemaUnavailable(f"cannot load the compact DUIS XSD: {exc}") from None
    return DuisSchema(schema, "compact", path)


def load_schema(path: str | os.PathLike[str] | None = None) -> DuisSchema:
    """The official XSD at ``path`` when given, else the compact schema."""
    return load_compact() if path is None else load_official(path)


def explain(root: etree._Element, xsd_path: str | os.PathLike[str] | None = None) -> list[str]:
    """Readable validation reasons from the ``xmlschema`` library (slow; for operators, not traffic).

    The document is passed as the already parsed lxml tree, so ``xmlschema`` never parses
    untrusted bytes itself. Schema loading is sandboxed to the XSD's directory.
    """
    import xmlschema  # local import: heavy, only needed here

    path = Path(xsd_path) if xsd_path is not None else _compact_path()
    try:
        schema = xmlschema.XMLSchema(str(path), allow="sandbox")
    except Exception as exc:  # xmlschema raises many types; all mean "cannot load"
        raise SchemaUnavailable(f"xmlschema cannot load {path}: {str(exc).splitlines()[0][:200]}") from None
    lines: list[str] = []
    for err in schema.iter_errors(xmlschema.XMLResource(root, allow="none")):
        where = getattr(err, "path", None) or "?"
        reason = getattr(err, "reason", None) or str(err).splitlines()[0]
        lines.append(f"{where}: {reason}")
    return lines
