"""Named GBCS codec errors.

Every error has a stable ``code`` string (for metrics, audit records and CLI messages), the byte
``offset`` in the input where the problem was found, and a one-line message saying what was wrong.
Codec functions raise only these (never ``IndexError``/``ValueError`` from a slice or a struct).
An invalid signature or MAC is *not* an error: it is a verification result (see :mod:`gbcs.crypto`).
"""

from __future__ import annotations

__all__ = [
    "BadField",
    "BadPayload",
    "GbcsError",
    "LengthMismatch",
    "NonMinimalLength",
    "NotGbcs",
    "TrailingBytes",
    "Truncated",
    "UnsupportedFrame",
]


class GbcsError(Exception):
    """Base of every named GBCS codec error."""

    code: str = "gbcs_error"

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        where = f" at offset {self.offset}" if self.offset is not None else ""
        return f"{self.code}{where}: {self.message}"


class NotGbcs(GbcsError):
    """The input does not start like a GBCS frame (neither ``DD 00`` nor ``DF``)."""

    code = "gbcs_not_a_frame"


class UnsupportedFrame(GbcsError):
    """A recognised but unsupported frame kind (e.g. a GBT block, ``DD 09 …``)."""

    code = "gbcs_unsupported_frame"


class Truncated(GbcsError):
    """The input ends before a field or a declared length is complete."""

    code = "gbcs_truncated"


class TrailingBytes(GbcsError):
    """Bytes follow the end of the frame (or of a length-delimited element)."""

    code = "gbcs_trailing_bytes"


class LengthMismatch(GbcsError):
    """Two lengths that must agree do not (e.g. the MAC header length and the General-Signing APDU)."""

    code = "gbcs_length_mismatch"


class BadField(GbcsError):
    """A header field holds a value the framing does not allow (wrong tag, length, CRA flag …)."""

    code = "gbcs_bad_field"


class NonMinimalLength(BadField):
    """A length that no signature or MAC covers (the signature field's, the MAC header's) written in a
    longer form than needed (``81 40`` for 64): accepting it would give one authenticated frame several
    byte forms that all verify."""

    code = "gbcs_non_minimal_length"


class BadPayload(GbcsError):
    """The content (DLMS, GBZ or ASN.1 payload) does not decode. Offsets are within the whole frame."""

    code = "gbcs_bad_payload"
