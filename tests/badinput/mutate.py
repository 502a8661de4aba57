"""Byte- and XML-level mutations of valid inputs (for hypothesis and for the memory run)."""

from __future__ import annotations

import random

from hypothesis import strategies as st

#: fragments that make XML parsers and decoders take unusual paths
XML_TOKENS: tuple[bytes, ...] = (
    b"<", b">", b"&", b"&amp;", b"&#0;", b"&#x110000;", b"]]>", b"<![CDATA[", b"<!--", b"-->", b"<?pi?>",
    b"<!DOCTYPE x>", b'<!ENTITY a "b">', b"&a;", b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"</sr:Body>",
    b"<sr:Body>", b'xmlns:sr="urn:evil" ', b'xmlns="http://www.dccinterface.co.uk/ServiceUserGateway" ',
    b"<ds:Signature/>", b"-", b":", b"9999-99-99T99:99:99Z", b"00-DB-12-34-56-78-90-A0", b"=", b"AAAA",
    b"\r\n", b" ", b"\t", b"x" * 300,
)  # fmt: skip

OPS = ("flip", "delete", "insert", "token", "truncate", "duplicate", "swap")


def apply(data: bytes, ops: list[tuple[str, int, int, bytes]]) -> bytes:
    """Apply ``(op, a, b, blob)`` mutations; positions are taken modulo the current length."""
    buf = bytearray(data)
    for op, a, b, blob in ops:
        n = len(buf)
        if n == 0:
            buf.extend(blob)
            continue
        i = a % n
        if op == "flip":
            buf[i] ^= 1 << (b % 8)
        elif op == "delete":
            del buf[i : i + 1 + b % 64]
        elif op == "insert":
            buf[i:i] = blob
        elif op == "token":
            buf[i:i] = XML_TOKENS[b % len(XML_TOKENS)]
        elif op == "truncate":
            del buf[i:]
        elif op == "duplicate":
            buf[i:i] = buf[i : i + 1 + b % 200]
        elif op == "swap":
            j = b % n
            buf[i], buf[j] = buf[j], buf[i]
    return bytes(buf)


def op_strategy() -> st.SearchStrategy[tuple[str, int, int, bytes]]:
    return st.tuples(
        st.sampled_from(OPS),
        st.integers(0, 1 << 20),
        st.integers(0, 1 << 16),
        st.binary(min_size=0, max_size=16),
    )


def mutations(max_ops: int = 6) -> st.SearchStrategy[list[tuple[str, int, int, bytes]]]:
    return st.lists(op_strategy(), min_size=1, max_size=max_ops)


def random_ops(rng: random.Random, max_ops: int = 6) -> list[tuple[str, int, int, bytes]]:
    return [
        (rng.choice(OPS), rng.randrange(1 << 20), rng.randrange(1 << 16), rng.randbytes(rng.randrange(17)))
        for _ in range(rng.randint(1, max_ops))
    ]


#: values put into element text by the tree mutator
TEXT_VALUES: tuple[str, ...] = (
    "", " ", "0", "-1", "99999999999999999999999", "1e9", "NaN", "2026-13-45T25:61:61Z", "2026-03-02T09:00:00",
    "2026-03-02T09:00:00+23:59", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "24:00:00", "FF-FF", "ZZ",
    "00-DB-12-34-56-78-90-A0", "00DB1234567890A0", "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1",
    "a:b:c", "::", "AD1", "8F66", "8F6", "GGGG", "====", "AAAA", "AA==", "3q2+7w==", "x" * 5000, "\u2603", "11.3",
)  # fmt: skip

TREE_OPS = ("text", "delete", "duplicate", "swap", "rename", "attr", "empty", "move")


def apply_tree(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    """Structural mutations that keep the document well-formed (reach the decoder, not the parser)."""
    from lxml import etree

    root = etree.fromstring(data)
    for op, a, b in ops:
        els = list(root.iter(etree.Element))
        el = els[a % len(els)]
        parent = el.getparent()
        if op == "text":
            el.text = TEXT_VALUES[b % len(TEXT_VALUES)]
        elif op == "empty":
            for c in list(el):
                el.remove(c)
            el.text = None
        elif parent is None:
            continue
        elif op == "delete":
            parent.remove(el)
        elif op == "duplicate":
            from copy import deepcopy

            el.addnext(deepcopy(el))
        elif op == "swap":
            other = els[b % len(els)]
            if other.getparent() is parent and other is not el:
                i, j = parent.index(el), parent.index(other)
                parent.remove(el)
                parent.insert(j, el)
                _ = i
        elif op == "rename":
            qn = etree.QName(el)
            el.tag = f"{{{qn.namespace}}}{qn.localname[::-1]}" if qn.namespace else qn.localname[::-1]
        elif op == "attr":
            el.set(f"a{b % 5}", TEXT_VALUES[b % len(TEXT_VALUES)])
        elif op == "move":
            target = els[b % len(els)]
            if el not in target.iterancestors() and target is not el and el not in list(target.iter()):
                parent.remove(el)
                target.append(el)
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8")


def tree_mutations(max_ops: int = 4) -> st.SearchStrategy[list[tuple[str, int, int]]]:
    return st.lists(
        st.tuples(st.sampled_from(TREE_OPS), st.integers(0, 10_000), st.integers(0, 10_000)),
        min_size=1,
        max_size=max_ops,
    )
