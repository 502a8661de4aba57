"""DUIS decode throughput vs a bare lxml parse of the same bytes, in the same run.

    .venv/bin/python bench/bench_duis.py [--quick]

Messages: a signed-shaped SR 11.3 device response and an AD1 DCC alert, both built with the
encoder and given the ``ds:Signature`` block of ``readfw-response.xml`` (a real DSP signature
structure; the signature does not verify for them, decode does not verify signatures), and
``readfw-response.xml`` itself. For each: ``lxml.etree.fromstring`` (baseline), the full
``gateway.duis.decode.decode`` (safe parse + typed walk + cross-field checks), and
``decode_tree`` alone (walk of an already parsed tree, as after signature verification).
Writes ``bench/out/duis.json``.
"""

from __future__ import annotations

import copy
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.duis.decode import decode, decode_tree  # noqa: E402
from gateway.duis.encode import build_11_3_response, build_ad1_alert, encode  # noqa: E402
from gateway.duis.safexml import parse_xml  # noqa: E402
from gateway.duis.values import MessageId  # noqa: E402

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
        mpxn="1234567890123",
        response_datetime=t,
        response_id=MessageId(0x90B3D51F30000002, 0x90B3D51F30020000, 1768467852000),
    )
    return {
        "11.3 response (signed)": _with_signature(encode(resp), signature),
        "AD1 alert (signed)": _with_signature(encode(ad1), signature),
        "readfw-response.xml": readfw,
    }


def rates(fns: dict[str, Callable[[], object]], batch: int, rounds: int) -> dict[str, float]:
    """Calls per second for each function, interleaved: every round times one batch of each in
    turn, and the best batch counts. Interleaving keeps the comparison fair on a machine whose
    load changes during the run (both sides see the same load)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: batch / t for name, t in best.items()}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    n, repeats = (500, 10) if quick else (1_000, 60)
    if not SHARED.is_dir():
        print(f"reference material not found at {SHARED}", file=sys.stderr)
        return 2
    results = []
    print(
        f"{'message':<26}{'bytes':>7}{'lxml parse/s':>14}{'decode/s':>11}{'ratio':>7}"
        f"{'walk only/s':>13}{'parse_xml/s':>13}{'ratio':>7}"
    )
    for name, data in messages().items():
        decode(data)  # warm up and check it decodes
        parsed = etree.fromstring(data)
        measured = rates(
            {
                "bare": lambda d=data: etree.fromstring(d),  # type: ignore[misc]
                "safe": lambda d=data: parse_xml(d),  # type: ignore[misc]
                "full": lambda d=data: decode(d),  # type: ignore[misc]
                "walk": lambda r=parsed: decode_tree(r),  # type: ignore[misc]
            },
            n,
            repeats,
        )
        bare, safe, full, walk = measured["bare"], measured["safe"], measured["full"], measured["walk"]
        ratio = full / bare
        results.append(
            {
                "message": name,
                "bytes": len(data),
                "lxml_fromstring_per_s": round(bare),
                "decode_per_s": round(full),
                "ratio_decode_vs_lxml": round(ratio, 3),
                "decode_tree_per_s": round(walk),
                "safexml_parse_per_s": round(safe),
                "ratio_safexml_vs_lxml": round(safe / bare, 3),
            }
        )
        print(
            f"{name:<26}{len(data):>7}{bare:>14,.0f}{full:>11,.0f}{ratio:>7.2f}"
            f"{walk:>13,.0f}{safe:>13,.0f}{safe / bare:>7.2f}"
        )
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "area": "duis",
        "quick": quick,
        "batch": n,
        "rounds": repeats,
        "method": "interleaved batches, best batch per function",
        "python": platform.python_version(),
        "lxml": ".".join(map(str, etree.LXML_VERSION)),
        "target": "decode >= 0.5 x lxml.etree.fromstring",
        "results": results,
    }
    (out / "duis.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"target: full decode >= 0.5x bare lxml parse; wrote {out / 'duis.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
