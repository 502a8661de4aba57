"""EUI-64 identifiers, shared by the GBCS codec and the DUIS layer.

An EUI-64 is held as a plain ``int`` (0 .. 2**64-1): compact in large sets (GUID list,
inventory) and cheap to compare. Text forms are normalised to the DUIS lexical form,
upper-case and hyphenated (``00-DB-12-34-56-78-90-A0``).
"""

from __future__ import annotations

import re

__all__ = ["EUIError", "eui_from_bytes", "eui_to_bytes", "format_eui", "parse_eui", "parse_eui_strict"]

_HEX16 = re.compile(r"[0-9A-Fa-f]{16}")
_STRICT = re.compile(r"[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){7}")
_SEPARATORS = str.maketrans("", "", "-: .\t")


class EUIError(ValueError):
    """A string that is not an EUI-64 in any accepted spelling."""

    code = "bad_eui"


def parse_eui(text: str) -> int:
    """Parse an EUI-64 written hyphenated, colon-separated, dotted, spaced or as bare hex, any case.

    Surrounding white space is ignored. Raises :class:`EUIError` with the reason otherwise.
    """
    if not isinstance(text, str):
        raise EUIError(f"EUI-64 must be text, got {type(text).__name__}")
    s = text.strip()
    if s[:2] in ("0x", "0X"):
        s = s[2:]
    compact = s.translate(_SEPARATORS)
    if not _HEX16.fullmatch(compact):
        raise EUIError(f"not an EUI-64 (need 16 hex digits): {text.strip()[:40]!r}")
    if compact != s:
        # separators must split the value into 8 octets
        groups = re.split(r"[-:. \t]", s)
        if len(groups) != 8 or any(len(g) != 2 for g in groups):
            raise EUIError(f"EUI-64 separators must split 8 octets: {text.strip()[:40]!r}")
    return int(compact, 16)


def parse_eui_strict(text: str) -> int:
    """Parse the DUIS ``sr:EUI`` lexical form only (``HH-HH-HH-HH-HH-HH-HH-HH``, xs:token white space)."""
    s = text.strip()
    if not _STRICT.fullmatch(s):
        raise EUIError(f"not a DUIS EUI (HH-HH-HH-HH-HH-HH-HH-HH): {s[:40]!r}")
    return int(s.replace("-", ""), 16)


_EUI_MAX = (1 << 64) - 1


def format_eui(value: int) -> str:
    """Render an EUI-64 int in the DUIS form, upper-case and hyphenated."""
    if not 0 <= value <= _EUI_MAX:
        raise EUIError(f"EUI-64 out of range: {value}")
    # one C call for the octets and their separators: about 8x cheaper than slicing the hex text
    return value.to_bytes(8, "big").hex("-").upper()


def eui_from_bytes(data: bytes) -> int:
    """An 8-octet system title to an EUI-64 int."""
    if len(data) != 8:
        raise EUIError(f"system title must be 8 octets, got {len(data)}")
    return int.from_bytes(data, "big")


def eui_to_bytes(value: int) -> bytes:
    return value.to_bytes(8, "big")
