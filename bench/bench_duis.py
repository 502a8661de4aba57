"""DUIS decode throughput vs a bare lxml parse of the same bytes, in the same run.

    .venv/bin/python bench/bench_duis.py [--quick]

Messages: a signed-shaped SR 11.3 device response and an AD1 DCC alert, both built with the
encoder and given the ``ds:Signature`` block of ``readfw-response.xml`` (a real DSP signature
structure; the signature does not verify for them, decode does not verify signatures), and
``readfw-response.xml`` itself. For each: ``lxml.etree.fromstring`` (baseline), the full
``gateway.duis.decode.decode`` (safe parse + typed walk + cross-field checks),
``safexml.parse_xml`` alone, and ``decode_tree`` alone (walk of an already parsed tree, as after
signature verification).

Each message is timed over V variants (default 5,000) that differ in what differs between real
messages: the counter of the Request/ResponseID, the device EUI (the ESME in 11.3 ids, the Comms
Hub in an AD1, with its MPAN) and the date-times, so nothing the decoder might remember between
messages can flatter it (it keeps no EUI cache; only tiny bounded memos of recurring values such as
the schemaVersion spelling and the ServiceReference pair). The old figure (the same bytes over and
over) is kept as the ``repeated`` column.

Timing: CPU time (``time.process_time``) of batches, interleaved (each round times one batch of
each function in turn), best batch of all rounds; the ratios compare figures from the same rounds.
Writes ``bench/out/duis.json``.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.duis.decode import decode, decode_tree  # noqa: E402
from gateway.duis.encode import build_11_3_response, build_ad1_alert, encode  # noqa: E402
from gateway.duis.safexml import parse_xml  # noqa: E402
from gateway.duis.values import MessageId  # noqa: E402
from gateway.mpan import mpan_check_digit  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DS = "{http://www.w3.org/2000/09/xmldsig#}Signature"


def _with_signature(data: bytes, signature: etree._Element) -> bytes:
    root = etree.fromstring(data)
    root.append(copy.deepcopy(signature))
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def messages() -> dict[str, bytes]:
    readfw = (SHARED / "duis" / "samples" / "readfw-response.xml").read_bytes()
    signature = etree.fromstring(readfw).find(DS)
    assert signature is not None
    payload = bytes.fromhex(
        (SHARED / "gbcs" / "rtds-4.5.0" / "11.3_CS06" / "CS06_11.3_IMMEDIATE_SUCCESS_RESPONSE_GBCS.HEX")
        .read_text()
        .split()[0]
    )
    t = datetime(2026, 1, 15, 9, 4, 12, 123000, tzinfo=UTC)
    resp = build_11_3_response(
        request_id=MessageId(0x90B3D51F30010000, 0x00DB1234567890A0, 1768467852000),
        gbcs_payload=payload,
        response_datetime=t,
    )
    ad1 = build_ad1_alert(
        comms_hub_device_id=0x887384906A1002DB,
        start_datetime=datetime(2026, 1, 15, 9, 0, 5, tzinfo=UTC),
        mpxn="1234567890126",
        response_datetime=t,
        response_id=MessageId(0x90B3D51F30000002, 0x90B3D51F30020000, 1768467852000),
    )
    return {
        "11.3 response (signed)": _with_signature(encode(resp), signature),
        "AD1 alert (signed)": _with_signature(encode(ad1), signature),
        "readfw-response.xml": readfw,
    }


def _eui(i: int, salt: int) -> bytes:
    v = (0x00DB_0000_0000_0000 | (salt << 32) | i) & ((1 << 64) - 1)
    return "-".join(f"{(v >> (8 * k)) & 0xFF:02X}" for k in range(7, -1, -1)).encode()


def _mpan(first12: int) -> bytes:
    digits = f"{first12:012d}"
    return f"{digits}{mpan_check_digit(digits)}".encode()


# Same-length substitutions that turn one message into variant i: (original bytes, variant i).
_VARY: dict[str, list[tuple[bytes, Callable[[int], bytes]]]] = {
    "11.3 response (signed)": [
        (b"00-DB-12-34-56-78-90-A0", lambda i: _eui(i, 0x1234)),  # the ESME, in both ids
        (b"1768467852000", lambda i: str(1768467852000 + i).encode()),
        (
            b"2026-01-15T09:04:12.123Z",
            lambda i: f"2026-01-15T09:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z".encode(),
        ),
    ],
    "AD1 alert (signed)": [
        (b"88-73-84-90-6A-10-02-DB", lambda i: _eui(i, 0x5678)),  # the Comms Hub
        (b"1234567890126", lambda i: _mpan(123456789012 + i)),  # its MPAN (a valid core, as real ones are)
        (b"1768467852000", lambda i: str(1768467852000 + i).encode()),
        (
            b"2026-01-15T09:04:12.123Z",
            lambda i: f"2026-01-15T09:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z".encode(),
        ),
        (b"2026-01-15T09:00:05Z", lambda i: f"2026-01-15T08:{i // 60 % 60:02d}:{i % 60:02d}Z".encode()),
    ],
    "readfw-response.xml": [
        (b"88-73-84-57-00-2F-96-1E", lambda i: _eui(i, 0x9ABC)),
        (b"1660751141087", lambda i: str(1660751141087 + i).encode()),
        (
            b"2022-08-17T15:45:42.790Z",
            lambda i: f"2022-08-17T15:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z".encode(),
        ),
    ],
}


def variants(name: str, data: bytes, count: int) -> list[bytes]:
    """``count`` distinct messages like ``data`` (see the module docstring)."""
    out = []
    for i in range(count):
        d = data
        for old, new in _VARY[name]:
            assert old in data, (name, old)
            value = new(i)
            assert len(value) == len(old), (old, value)
            d = d.replace(old, value)
        out.append(d)
    return out


def rates(
    fns: dict[str, Callable[[object], object]], inputs: dict[str, Sequence[object]], batch: int, rounds: int
) -> dict[str, float]:
    """Calls per CPU second for each function, interleaved: every round times one batch of each
    in turn, and the best batch counts. Interleaving keeps the comparison fair on a machine whose
    load changes during the run (all sides see the same load). Batches walk through the inputs,
    so successive rounds see different variants."""
    best = dict.fromkeys(fns, float("inf"))
    clock = time.process_time
    for r in range(rounds):
        for name, fn in fns.items():
            items = inputs[name]
            start = (r * batch) % len(items)
            chunk = list(items[start : start + batch])
            if len(chunk) < batch:
                chunk += list(items[: batch - len(chunk)])
            t0 = clock()
            for item in chunk:
                fn(item)
            best[name] = min(best[name], clock() - t0)
    return {name: batch / t for name, t in best.items()}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    n, repeats, count = (500, 12, 5_000) if quick else (1_000, 60, 5_000)
    if not SHARED.is_dir():
        print(f"reference material not found at {SHARED}", file=sys.stderr)
        return 2
    results = []
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{'message':<26}{'bytes':>7}{'lxml parse/s':>14}{'decode/s':>11}{'ratio':>7}"
        f"{'parse_xml':>11}{'walk only/s':>13}{'repeated':>10}"
    )
    for name, data in messages().items():
        many = variants(name, data, count)
        for d in many[:50]:
            decode(d)  # warm up and check every variant shape decodes
        trees = [etree.fromstring(d) for d in many]
        measured = rates(
            {
                "bare": etree.fromstring,
                "safe": parse_xml,  # type: ignore[dict-item]
                "full": decode,  # type: ignore[dict-item]
                "walk": decode_tree,  # type: ignore[dict-item]
                "bare_same": lambda _, d=data: etree.fromstring(d),  # type: ignore[misc]
                "full_same": lambda _, d=data: decode(d),  # type: ignore[misc]
            },
            {"bare": many, "safe": many, "full": many, "walk": trees, "bare_same": many, "full_same": many},
            n,
            repeats,
        )
        bare, safe, full, walk = measured["bare"], measured["safe"], measured["full"], measured["walk"]
        same = measured["full_same"] / measured["bare_same"]
        ratio = full / bare
        results.append(
            {
                "message": name,
                "bytes": len(data),
                "variants": count,
                "lxml_fromstring_per_s": round(bare),
                "decode_per_s": round(full),
                "ratio_decode_vs_lxml": round(ratio, 3),
                "safexml_parse_per_s": round(safe),
                "ratio_safexml_vs_lxml": round(safe / bare, 3),
                "decode_tree_per_s": round(walk),
                "ratio_decode_vs_lxml_repeated_bytes": round(same, 3),
            }
        )
        print(
            f"{name:<26}{len(data):>7}{bare:>14,.0f}{full:>11,.0f}{ratio:>7.2f}"
            f"{safe / bare:>11.2f}{walk:>13,.0f}{same:>10.2f}"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "area": "duis",
        "quick": quick,
        "batch": n,
        "rounds": repeats,
        "method": "CPU time, interleaved batches over distinct variants, best batch per function",
        "python": platform.python_version(),
        "lxml": ".".join(map(str, etree.LXML_VERSION)),
        "load_average": os.getloadavg(),
        "target": "decode >= 0.5 x lxml.etree.fromstring",
        "results": results,
    }
    (out / "duis.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"target: full decode >= 0.5x bare lxml parse (ratio column); wrote {out / 'duis.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
