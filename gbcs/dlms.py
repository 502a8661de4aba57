"""DLMS/COSEM payloads (ESME and CHF use cases): A-XDR ``Data`` and the three GBCS APDUs.

* ``D9`` Access-Request: long-invoke-id-and-priority(4), date-time (``00`` absent), a list of
  access-request-specifications (Get/Set/Action, with or without selective access) and a list of Data.
* ``DA`` Access-Response: invoke id(4), date-time, optional request specifications, a list of Data and
  a list of access-response-specifications (result codes).
* ``0F`` Data-Notification (alerts): invoke id(4), date-time, then one Data (a structure whose first
  two elements are the alert code and its time stamp).

Data is decoded into JSON-able nodes ``{"type": …, "value"|"hex"|"items": …, "offset": …}``. Octet
strings of 12 octets also carry their reading as a DLMS date-time. An octet string ``31 ‖ IC ‖ … ‖ tag``
that follows DLMS protection parameters is recorded as an :class:`~gbcs.reader.EncryptedBlock`.
"""

from __future__ import annotations

from gbcs.reader import EncryptedBlock, Reader
from gbcs.timefmt import DlmsDateTime

__all__ = ["decode_apdu", "decode_data", "obis_text"]

_FIXED: dict[int, tuple[str, int, bool]] = {
    3: ("boolean", 1, False),
    5: ("double-long", 4, True),
    6: ("double-long-unsigned", 4, False),
    13: ("bcd", 1, False),
    15: ("integer", 1, True),
    16: ("long", 2, True),
    17: ("unsigned", 1, False),
    18: ("long-unsigned", 2, False),
    20: ("long64", 8, True),
    21: ("long64-unsigned", 8, False),
    22: ("enum", 1, False),
}
_FLOAT = {23: ("float32", 4), 24: ("float64", 8)}
_DATE_TYPES = {25: ("date-time", 12), 26: ("date", 5), 27: ("time", 4)}

DATA_ACCESS_RESULT = {
    0: "Success",
    1: "Hardware Fault",
    2: "Temporary Failure",
    3: "Read Write Denied",
    4: "Object Undefined",
    9: "Object Class Inconsistent",
    11: "Object Unavailable",
    12: "Type Unmatched",
    13: "Scope of Access Violated",
    14: "Data Block Unavailable",
    15: "Long Get/Action Aborted",
    16: "No Long Get/Action in Progress",
    17: "Long Set Aborted",
    18: "No Long Set in Progress",
    19: "Data Block Number Invalid",
    250: "Other Reason",
}


def obis_text(b: bytes) -> str:
    return f"{b[0]}-{b[1]}:{b[2]}.{b[3]}.{b[4]}.{b[5]}"


class _Ctx:
    __slots__ = ("blocks", "depth")

    def __init__(self, blocks: list[EncryptedBlock]) -> None:
        self.blocks = blocks
        self.depth = 0


def _looks_like_protection_parameters(node: dict[str, object]) -> bool:
    """Structure/array containing (within two levels) the 9-octet transaction id ``04 ‖ counter``."""
    stack: list[tuple[dict[str, object], int]] = [(node, 0)]
    while stack:
        n, d = stack.pop()
        if n.get("type") == "octet-string" and isinstance(n.get("hex"), str):
            h = str(n["hex"])
            if len(h) == 18 and h.startswith("04"):
                return True
        items = n.get("items")
        if d < 3 and isinstance(items, list):
            stack.extend((i, d + 1) for i in items if isinstance(i, dict))
    return False


def decode_data(r: Reader, ctx: _Ctx | None = None) -> dict[str, object]:
    """Decode one A-XDR ``Data`` element."""
    if ctx is None:
        ctx = _Ctx([])
    at = r.pos
    tag = r.u8("DLMS data tag")
    fixed = _FIXED.get(tag)
    if fixed is not None:
        name, size, signed = fixed
        v = r.uint(size, name, signed=signed)
        return {"type": name, "value": bool(v) if tag == 3 else v, "offset": at}
    if tag in (1, 2):
        if ctx.depth > 32:
            raise r.fail("DLMS data nesting deeper than 32", at)
        n = r.length("element count")
        items: list[dict[str, object]] = []
        ctx.depth += 1
        for _ in range(n):
            item_at = r.pos
            item = decode_data(r, ctx)
            if (
                items
                and item["type"] == "octet-string"
                and _is_cipher_octets(r, item)
                and _looks_like_protection_parameters(items[-1])
            ):
                off = int(str(item["value_offset"]))
                ln = int(str(item["length"]))
                item["encrypted_block"] = len(ctx.blocks)
                ctx.blocks.append(EncryptedBlock(off, ln, "DLMS", f"DLMS octet-string at offset {item_at}"))
            items.append(item)
        ctx.depth -= 1
        return {"type": "array" if tag == 1 else "structure", "items": items, "offset": at}
    if tag in (9, 10, 12):
        n = r.length("string length")
        start = r.pos
        sv = r.take(n, "string value")
        node: dict[str, object] = {"offset": at, "value_offset": start, "length": n}
        if tag == 9:
            node["type"] = "octet-string"
            node["hex"] = sv.hex()
            if n == 12:
                node["date_time"] = DlmsDateTime.from_bytes(sv).text()
            elif n > 1 and all(0x20 <= c < 0x7F for c in sv):
                node["text"] = sv.decode("ascii")
        else:
            node["type"] = "visible-string" if tag == 10 else "utf8-string"
            node["text"] = sv.decode("latin-1" if tag == 10 else "utf-8", "replace")
        return node
    if tag == 0:
        return {"type": "null-data", "offset": at}
    if tag == 4:
        bits = r.length("bit-string length")
        bv = r.take((bits + 7) // 8, "bit-string value")
        return {"type": "bit-string", "bits": bits, "hex": bv.hex(), "offset": at}
    if tag in _FLOAT:
        name, size = _FLOAT[tag]
        return {"type": name, "hex": r.take(size, name).hex(), "offset": at}
    if tag in _DATE_TYPES:
        name, size = _DATE_TYPES[tag]
        dv = r.take(size, name)
        node = {"type": name, "hex": dv.hex(), "offset": at}
        if size == 12:
            node["date_time"] = DlmsDateTime.from_bytes(dv).text()
        return node
    if tag == 19:
        return _compact_array(r, at)
    if tag == 255:
        return {"type": "dont-care", "offset": at}
    raise r.fail(f"unknown DLMS data tag {tag} (0x{tag:02X})", at)


def _is_cipher_octets(r: Reader, item: dict[str, object]) -> bool:
    ln = item.get("length")
    off = item.get("value_offset")
    return isinstance(ln, int) and isinstance(off, int) and ln >= 17 and r.buf[off] == 0x31


def _type_description(r: Reader, depth: int = 0) -> object:
    if depth > 16:
        raise r.fail("compact-array type description nesting deeper than 16")
    at = r.pos
    tag = r.u8("type description tag")
    if tag == 1:
        n = r.uint(2, "array element count")
        return ("array", n, _type_description(r, depth + 1))
    if tag == 2:
        n = r.length("structure element count")
        return ("structure", [_type_description(r, depth + 1) for _ in range(n)])
    if tag in _FIXED or tag in (0, 4, 9, 10, 12) or tag in _FLOAT or tag in _DATE_TYPES:
        return tag
    raise r.fail(f"unsupported type {tag} in a compact-array type description", at)


def _min_width(td: object) -> int:
    """The fewest content bytes one value of a compact-array type description takes."""
    if isinstance(td, tuple):
        if td[0] == "array":
            return int(td[1]) * _min_width(td[2])
        return sum(_min_width(t) for t in td[1])
    assert isinstance(td, int)
    if td in _FIXED:
        return _FIXED[td][1]
    if td in _FLOAT:
        return _FLOAT[td][1]
    if td in _DATE_TYPES:
        return _DATE_TYPES[td][1]
    return 0 if td == 0 else 1  # null-data takes nothing; strings and bit-strings at least their length


def _node_count(td: object) -> int:
    """How many decoded nodes one value of a compact-array type description produces."""
    if isinstance(td, tuple):
        if td[0] == "array":
            return 1 + int(td[1]) * _node_count(td[2])
        return 1 + sum(_node_count(t) for t in td[1])
    return 1


# A value may produce at most this many nodes per content byte it takes (plus a small allowance for
# structures that carry a few null-data members): nested arrays of null-data would otherwise build
# billions of nodes from a few bytes of type description.
_NODES_PER_BYTE = 4
_NODES_ALLOWANCE = 64


def _typed_value(r: Reader, td: object) -> dict[str, object]:
    if isinstance(td, tuple):
        if td[0] == "array":
            return {"type": "array", "items": [_typed_value(r, td[2]) for _ in range(int(td[1]))]}
        return {"type": "structure", "items": [_typed_value(r, t) for t in td[1]]}
    assert isinstance(td, int)
    # Contents carry no tag: decode as if the tag were present, by reading a synthetic element.
    tag = td
    at = r.pos
    if tag in _FIXED:
        name, size, signed = _FIXED[tag]
        v = r.uint(size, name, signed=signed)
        return {"type": name, "value": bool(v) if tag == 3 else v, "offset": at}
    if tag in (9, 10, 12):
        n = r.length("string length")
        tv = r.take(n, "string value")
        return {"type": {9: "octet-string", 10: "visible-string", 12: "utf8-string"}[tag], "hex": tv.hex(), "offset": at}
    if tag == 4:
        bits = r.length("bit-string length")
        return {"type": "bit-string", "bits": bits, "hex": r.take((bits + 7) // 8, "bit-string").hex(), "offset": at}
    if tag in _FLOAT:
        name, size = _FLOAT[tag]
        return {"type": name, "hex": r.take(size, name).hex(), "offset": at}
    if tag in _DATE_TYPES:
        name, size = _DATE_TYPES[tag]
        return {"type": name, "hex": r.take(size, name).hex(), "offset": at}
    return {"type": "null-data", "offset": at}


def _compact_array(r: Reader, at: int) -> dict[str, object]:
    td = _type_description(r)
    n = r.length("compact-array contents length")
    width = _min_width(td)
    if width == 0:  # values that take no bytes would repeat without end
        raise r.fail("compact-array element type takes no content bytes (null-data)", at)
    sub = r.sub(n, "compact-array contents")
    if width > n:
        raise sub.fail(f"compact-array element needs at least {width} bytes, contents hold {n}", at)
    nodes = _node_count(td)
    if nodes > _NODES_PER_BYTE * width + _NODES_ALLOWANCE:
        raise sub.fail(
            f"compact-array element type produces {nodes} values from at least {width} content bytes", at
        )
    items = []
    while sub.pos < sub.end:
        items.append(_typed_value(sub, td))
    return {"type": "compact-array", "items": items, "offset": at}


def _descriptor(r: Reader, method: bool) -> dict[str, object]:
    class_id = r.uint(2, "COSEM class id")
    obis = r.take(6, "COSEM instance id")
    member = r.uint(1, "COSEM method id" if method else "COSEM attribute id", signed=True)
    return {"class_id": class_id, "instance": obis_text(obis), ("method" if method else "attribute"): member}


_REQ_KIND = {1: "get", 2: "set", 3: "action", 4: "get-with-selection", 5: "set-with-selection", 6: "action-with-selection"}


def _request_spec(r: Reader, ctx: _Ctx) -> dict[str, object]:
    at = r.pos
    choice = r.u8("access-request-specification choice")
    kind = _REQ_KIND.get(choice)
    if kind is None:
        raise r.fail(f"unknown access-request-specification choice {choice}", at)
    spec: dict[str, object] = {"kind": kind, **_descriptor(r, method=choice in (3, 6))}
    if choice >= 4:
        spec["access_selector"] = r.u8("access selector")
        spec["access_parameters"] = decode_data(r, ctx)
    return spec


def _list(r: Reader, field: str) -> int:
    return r.length(f"{field} count")


def decode_apdu(r: Reader, blocks: list[EncryptedBlock]) -> dict[str, object]:
    """Decode a whole DLMS APDU (``D9``, ``DA`` or ``0F``) filling ``r``."""
    ctx = _Ctx(blocks)
    at = r.pos
    tag = r.u8("DLMS APDU tag")
    invoke = r.uint(4, "long-invoke-id-and-priority")
    out: dict[str, object] = {"invoke_id": invoke}
    dt_len = r.length("date-time")
    if dt_len:
        if dt_len != 12:
            raise r.fail(f"APDU date-time must be 0 or 12 octets, got {dt_len}")
        out["date_time"] = DlmsDateTime.from_bytes(r.take(12, "date-time")).to_json()
    if tag == 0xD9:
        out["apdu"] = "access-request"
        out["requests"] = [_request_spec(r, ctx) for _ in range(_list(r, "access-request-specification"))]
        out["data"] = [decode_data(r, ctx) for _ in range(_list(r, "data"))]
    elif tag == 0xDA:
        out["apdu"] = "access-response"
        if r.u8("access-request-specification presence"):
            out["requests"] = [_request_spec(r, ctx) for _ in range(_list(r, "access-request-specification"))]
        out["data"] = [decode_data(r, ctx) for _ in range(_list(r, "access-response data"))]
        results = []
        for _ in range(_list(r, "access-response-specification")):
            c_at = r.pos
            choice = r.u8("access-response-specification choice")
            if choice not in (1, 2, 3):
                raise r.fail(f"unknown access-response-specification choice {choice}", c_at)
            code = r.u8("result")
            results.append(
                {"kind": {1: "get", 2: "set", 3: "action"}[choice], "result": code,
                 "result_name": DATA_ACCESS_RESULT.get(code, "")}
            )
        out["results"] = results
    elif tag == 0x0F:
        out["apdu"] = "data-notification"
        out["body"] = decode_data(r, ctx)
    else:
        raise r.fail(f"not a GBCS DLMS APDU tag 0x{tag:02X}", at)
    r.done("DLMS APDU")
    return out
