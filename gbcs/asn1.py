"""ASN.1 DER payloads (security credentials, join/unjoin, firmware: CS02x, CS03x/CS04x, CS06 …).

:func:`decode_der` turns DER bytes into a JSON-able tree; :func:`read_tlv` is the primitive the typed
decoders in :mod:`gbcs.payload` use. Only definite lengths; high tag numbers are supported.
"""

from __future__ import annotations

from gbcs.reader import Reader
from gbcs.timefmt import GeneralizedTime

__all__ = ["Tlv", "decode_der", "read_tlv"]

_UNIVERSAL = {
    0x01: "BOOLEAN",
    0x02: "INTEGER",
    0x03: "BIT STRING",
    0x04: "OCTET STRING",
    0x05: "NULL",
    0x06: "OBJECT IDENTIFIER",
    0x0A: "ENUMERATED",
    0x0C: "UTF8String",
    0x13: "PrintableString",
    0x16: "IA5String",
    0x17: "UTCTime",
    0x18: "GeneralizedTime",
    0x30: "SEQUENCE",
    0x31: "SET",
}

Tlv = tuple[int, int, int]  # (tag, value start, value end)


def read_tlv(r: Reader) -> Tlv:
    """Read one DER TLV header; return (tag, value start, value end) and move past the value."""
    at = r.pos
    tag = r.u8("ASN.1 tag")
    if tag & 0x1F == 0x1F:  # high tag number form
        n = 0
        while True:
            b = r.u8("ASN.1 tag number")
            n = (n << 7) | (b & 0x7F)
            if not b & 0x80:
                break
            if n > 1 << 28:
                raise r.fail("ASN.1 tag number too large", at)
        tag = (tag << 24) | n
    length = r.length("ASN.1 length")
    start = r.pos
    r.need(length, f"ASN.1 value of tag 0x{tag:02X} at {at}")
    r.pos += length
    return tag, start, start + length


def _oid(v: bytes) -> str:
    if not v:
        return ""
    parts: list[int] = []
    n = 0
    for b in v:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(n)
            n = 0
    if not parts:
        return ""
    first = parts[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(p) for p in head + parts[1:])


# An INTEGER longer than this is rendered as hex only: GBCS integers (counters, codes, serial numbers,
# ECDSA r/s) are far shorter, and Python refuses int→str beyond 4,300 digits (~1,790 octets).
_INT_VALUE_MAX_OCTETS = 64


def decode_der(r: Reader, depth: int = 0) -> dict[str, object]:
    """Decode one TLV (recursively) from ``r`` into a JSON-able node."""
    if depth > 32:
        raise r.fail("ASN.1 nesting deeper than 32")
    at = r.pos
    tag, start, end = read_tlv(r)
    buf = r.buf
    cls = (tag >> 6) & 3 if tag < 0x100 else (tag >> 30) & 3
    constructed = bool((tag if tag < 0x100 else tag >> 24) & 0x20)
    name = _UNIVERSAL.get(tag) if cls == 0 else None
    if name is None:
        num = tag & 0x1F if tag < 0x100 else tag & 0xFFFFFF
        name = ("UNIVERSAL", "APPLICATION", "CONTEXT", "PRIVATE")[cls] + f" [{num}]"
    node: dict[str, object] = {"asn1": name, "offset": at}
    if constructed:
        sub = Reader(buf, start, end, r.what)
        children = []
        while sub.pos < sub.end:
            children.append(decode_der(sub, depth + 1))
        node["children"] = children
        return node
    value = buf[start:end]
    if tag == 0x02 or tag == 0x0A:
        if not value:
            raise r.fail("empty INTEGER", at)
        if len(value) <= _INT_VALUE_MAX_OCTETS:  # longer ones are shown as hex only (int→str limits)
            node["value"] = int.from_bytes(value, "big", signed=True)
        node["hex"] = value.hex()
    elif tag == 0x05:
        if value:
            raise r.fail("NULL with a non-empty value", at)
    elif tag == 0x01:
        if len(value) != 1:
            raise r.fail("BOOLEAN must be one octet", at)
        node["value"] = value != b"\x00"
    elif tag == 0x06:
        node["oid"] = _oid(value)
    elif tag == 0x18:
        try:
            node["time"] = GeneralizedTime.parse(value).to_json()
        except ValueError as e:
            raise r.fail(str(e), at) from None
    elif tag in (0x0C, 0x13, 0x16, 0x17):
        node["text"] = value.decode("utf-8", "replace")
    else:
        node["hex"] = value.hex()
    return node
