"""Named errors of the DUIS layer (parsing, model, encoding, schema)."""

from __future__ import annotations

from gateway.errors import DuisgwError


class DuisError(DuisgwError):
    code = "duis_error"


class MalformedXml(DuisError):
    """Not well-formed XML."""

    code = "malformed_xml"


class DoctypeForbidden(DuisError):
    """A DOCTYPE (and so any entity declaration) is never accepted: no entity expansion, ever."""

    code = "doctype_forbidden"


class TooComplex(DuisError):
    """More namespace declarations or attributes than any DUIS document needs (the signature check's
    C14N costs about their square: a few thousand would stall the gateway for seconds to minutes)."""

    code = "too_complex"


class OversizeBody(DuisError):
    code = "oversize_body"


class UnsupportedEncoding(DuisError):
    code = "unsupported_encoding"


class NotDuis(DuisError):
    """Well-formed XML that is not a DUIS document the gateway knows (wrong root or namespace)."""

    code = "not_duis"


class InvalidField(DuisError):
    """A field whose lexical form is wrong (EUI, RequestID, dateTime, hexBinary, base64, ...)."""

    code = "invalid_field"


class BadBase64(InvalidField):
    code = "bad_base64"


class SchemaInvalid(DuisError):
    code = "schema_invalid"


class ValidationFailed(DuisError):
    """The XSD validator could not judge the document (libxml2 reported an internal error)."""

    code = "validation_failed"


class UnencodableModel(DuisError):
    """A model value the encoder cannot write as DUIS (e.g. a naive date-time)."""

    code = "unencodable_model"


class SchemaUnavailable(DuisError):
    """The XSD could not be loaded (missing file, unresolvable import, not a schema)."""

    code = "schema_unavailable"
