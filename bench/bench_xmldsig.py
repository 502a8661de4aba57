"""XML-signature verification throughput: ``python bench/bench_xmldsig.py [--quick]``.

Measures verified messages/s on one core (this process, one thread) for a DSP-signed SR 11.3 response
(DCC Boxed layout, 11.3 CS06 GBCS payload, ~1.9 KB):

* duisgw ``verify`` from bytes (safe parse + verify) and from an already-parsed tree,
* baseline (a): the raw ECDSA P-256/SHA-256 verify of ``cryptography`` alone (the floor of any verifier),
* baseline (b): ``signxml`` verifying the same document (same profile: ecdsa-sha256, SHA-256 digest,
  enveloped, implicit inclusive C14N for the reference, exclusive C14N for SignedInfo), given the
  already-parsed ``cryptography`` certificate (its fastest use; the PEM-string use is shown too),
* the two ways of producing the bytes to hash and to verify: duisgw's (one inclusive C14N of the
  whole document, the Signature's run cut out and read literally, SignedInfo's exclusive C14N derived
  from it) and the obvious one (deep copy, remove the Signature, C14N; plus the exclusive C14N of
  SignedInfo),
* and the floor of any verifier built on lxml + cryptography: the document's C14N plus the raw ECDSA
  verify in one call, with no other work (what ``verify`` costs beyond it is its Python work: tree
  access, reading the Signature, SHA-256, DER, certificate lookup, policy and the result).

Before timing, the benchmark checks that the fast path (and its literal reader of compact runs) is
really taken for the benchmarked document and that its bytes equal the slow path's.

Prints a table with ratios against the baselines and writes ``bench/out/xmldsig.json``.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: E402
from lxml import etree  # noqa: E402

from gateway.duis.safexml import parse_xml  # noqa: E402
from gateway.duis.xmldsig import (  # noqa: E402
    _c14n,
    _compact_profile,
    _digest_input,
    _enveloped_c14n,
    _enveloped_c14n_slow,
    _examine,
    _forms,
    _pattern_profile,
    sign,
    verify,
)
from gateway.smki import CertificateStore, SigningPolicy  # noqa: E402

SR = "http://www.dccinterface.co.uk/ServiceUserGateway"
RAW = "raw ECDSA P-256 verify (cryptography)"
BYTES = "duisgw verify, from bytes (parse+verify)"
TREE = "duisgw verify, parsed tree"
SIGNXML = "signxml verify, from bytes, certificate"
FLOOR = "floor: C14N of the document + raw ECDSA"


def response_11_3(gbcs_hex: str, declare_dsig_on_root: bool = True) -> bytes:
    extra = (
        ' xmlns:ns3="http://www.w3.org/2000/09/xmldsig#" xmlns:ra="http://www.dccinterface.co.uk/ResponseAndAlert"'
        if declare_dsig_on_root
        else ""
    )
    payload = base64.b64encode(bytes.fromhex(gbcs_hex)).decode()
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="no"?><sr:Response xmlns:sr="{SR}"{extra} '
        'schemaVersion="5.4"><sr:Header>'
        "<sr:RequestID>90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1000</sr:RequestID>"
        "<sr:ResponseID>00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00:1000</sr:ResponseID>"
        "<sr:ResponseCode>I0</sr:ResponseCode><sr:ResponseDateTime>2026-01-15T08:59:41.500Z</sr:ResponseDateTime>"
        "</sr:Header><sr:Body><sr:ResponseMessage><sr:ServiceReference>11.3</sr:ServiceReference>"
        "<sr:ServiceReferenceVariant>11.3</sr:ServiceReferenceVariant>"
        f"<sr:GBCSPayload>{payload}</sr:GBCSPayload></sr:ResponseMessage></sr:Body></sr:Response>"
    ).encode()


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    n, repeats = (300, 3) if quick else (2000, 9)
    if not (SHARED / "smki").is_dir():
        print(f"reference material not found at {SHARED}", file=sys.stderr)
        return 2
    store = CertificateStore.from_directory(SHARED / "smki" / "dccboxed")
    policy = SigningPolicy()
    (dsp,) = [c for c in store if c.name == "Z1-accessControlBroker-dSPXmlSign"]
    assert dsp.private_key is not None
    gbcs_hex = (
        (SHARED / "gbcs/rtds-4.5.0/11.3_CS06/CS06_11.3_IMMEDIATE_SUCCESS_RESPONSE_GBCS.HEX")
        .read_text()
        .strip()
    )
    signed = sign(response_11_3(gbcs_hex), dsp.private_key, dsp)
    tree = parse_xml(signed)
    assert verify(signed, store, policy).valid and verify(tree, store, policy).valid

    # (a) raw ECDSA over the same SignedInfo bytes, key already loaded
    si = tree.find(
        "{http://www.w3.org/2000/09/xmldsig#}Signature/{http://www.w3.org/2000/09/xmldsig#}SignedInfo"
    )
    assert si is not None
    si_c14n = etree.tostring(si, method="c14n", exclusive=True)
    sv = tree.findtext(
        "{http://www.w3.org/2000/09/xmldsig#}Signature/{http://www.w3.org/2000/09/xmldsig#}SignatureValue"
    )
    raw = base64.b64decode("".join((sv or "").split()))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    pub = dsp.public_key
    algo = ec.ECDSA(hashes.SHA256())
    pub.verify(der, si_c14n, algo)

    # (b) signxml, configured for this exact profile
    from cryptography import x509
    from signxml.algorithms import DigestAlgorithm, SignatureMethod
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    cert_pem = (SHARED / "smki/dccboxed/Z1-accessControlBroker-dSPXmlSign.pem").read_text()
    cert_obj = x509.load_pem_x509_certificate(cert_pem.encode())
    cfg = SignatureConfiguration(
        require_x509=False,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA256}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
        expect_references=1,
    )
    XMLVerifier().verify(signed, x509_cert=cert_obj, expect_config=cfg)
    XMLVerifier().verify(signed, x509_cert=cert_pem, expect_config=cfg)

    # the benchmarked document must take the fast path, and its digest input must be the slow path's
    sig = tree[len(tree) - 1]
    examined = _examine(tree, sig)
    assert examined.span is not None, "fast path not taken"
    assert examined.profile.signed_info_c14n == si_c14n
    compact = _compact_profile(examined.canonical, *examined.span, _forms(sig.prefix))
    assert compact is not None, "the literal reader did not read the benchmarked run"
    assert compact == _pattern_profile(examined.canonical, *examined.span, _forms(sig.prefix))
    assert _enveloped_c14n(tree) == _enveloped_c14n_slow(tree)

    def ecdsa() -> None:
        pub.verify(der, si_c14n, algo)

    doc = tree.getroottree()

    def floor() -> None:
        etree.tostring(doc, method="c14n")
        pub.verify(der, si_c14n, algo)

    cases: dict[str, Callable[[], object]] = {
        RAW: ecdsa,
        BYTES: lambda: verify(signed, store, policy),
        TREE: lambda: verify(tree, store, policy),
        SIGNXML: lambda: XMLVerifier().verify(signed, x509_cert=cert_obj, expect_config=cfg),
        "signxml verify, from bytes, PEM string": lambda: XMLVerifier().verify(
            signed, x509_cert=cert_pem, expect_config=cfg
        ),
        FLOOR: floor,
        "digest input + SignedInfo bytes: duisgw": lambda: _digest_input(tree, _examine(tree, sig)),
        "digest input + SignedInfo bytes: obvious way": lambda: (
            _enveloped_c14n_slow(tree),
            _c14n(si, exclusive=True),
        ),
        "inclusive C14N of the document only": lambda: _c14n(tree.getroottree()),
        "safe parse only (parse_xml)": lambda: parse_xml(signed),
    }
    # Interleaved rounds: every case is measured once per round, so load from other processes on this
    # shared machine hits all cases alike; ratios are taken per round, then the median is reported.
    # Both wall-clock time and this thread's CPU time are recorded: on a loaded machine the CPU time
    # (time.thread_time) leaves out the time the process waited for a core, which is what "per core" means.
    load_before = os.getloadavg()
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        for _ in range(max(5, n // 50)):
            fn()
    for _ in range(repeats):
        for name, fn in cases.items():
            iters = n if not name.startswith("signxml") else max(30, n // 5)
            c0 = time.thread_time()
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            t1 = time.perf_counter()
            c1 = time.thread_time()
            wall[name].append(iters / (t1 - t0))
            cpu[name].append(iters / max(c1 - c0, 1e-9))

    def ratio(rates: list[float], base: list[float]) -> float:
        return round(statistics.median(r / b for r, b in zip(rates, base, strict=True)), 3)

    results: dict[str, dict[str, object]] = {}
    for name in cases:
        med, cmed = statistics.median(wall[name]), statistics.median(cpu[name])
        results[name] = {
            "per_s": round(med, 1),
            "us_per_call": round(1e6 / med, 2),
            "runs_per_s": [round(r, 1) for r in wall[name]],
            "x_raw_ecdsa": ratio(wall[name], wall[RAW]),
            "x_signxml": ratio(wall[name], wall[SIGNXML]),
            "cpu_per_s": round(cmed, 1),
            "cpu_us_per_call": round(1e6 / cmed, 2),
            "cpu_x_raw_ecdsa": ratio(cpu[name], cpu[RAW]),
            "cpu_x_signxml": ratio(cpu[name], cpu[SIGNXML]),
        }
    load_after = os.getloadavg()
    print(
        f"document: signed 11.3 response, {len(signed)} bytes; {n} calls x {repeats} runs, median; one core"
    )
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    print(f"{'':44} {'---------- wall clock ----------':>38}  {'---------- CPU time ----------':>38}")
    head = f"{'msgs/s':>10} {'µs/call':>9} {'× ECDSA':>8} {'× signxml':>9}"
    print(f"{'case':44} {head}  {head}")
    for name, r in results.items():
        print(
            f"{name:44} {r['per_s']:10.0f} {r['us_per_call']:9.1f} {r['x_raw_ecdsa']:8.2f} {r['x_signxml']:9.2f}"
            f"  {r['cpu_per_s']:10.0f} {r['cpu_us_per_call']:9.1f} {r['cpu_x_raw_ecdsa']:8.2f}"
            f" {r['cpu_x_signxml']:9.2f}"
        )
    summary = {
        "area": "xmldsig",
        "quick": quick,
        "document_bytes": len(signed),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "python": platform.python_version(),
        "lxml": ".".join(map(str, etree.LXML_VERSION)),
        "libxml2": ".".join(map(str, etree.LIBXML_VERSION)),
        "results": results,
        "ratios": {
            "bytes_vs_raw_ecdsa": results[BYTES]["x_raw_ecdsa"],
            "tree_vs_raw_ecdsa": results[TREE]["x_raw_ecdsa"],
            "bytes_vs_signxml": results[BYTES]["x_signxml"],
            "tree_vs_signxml": results[TREE]["x_signxml"],
            "cpu_bytes_vs_raw_ecdsa": results[BYTES]["cpu_x_raw_ecdsa"],
            "cpu_tree_vs_raw_ecdsa": results[TREE]["cpu_x_raw_ecdsa"],
            "cpu_bytes_vs_signxml": results[BYTES]["cpu_x_signxml"],
            "cpu_tree_vs_signxml": results[TREE]["cpu_x_signxml"],
            "floor_vs_signxml": results[FLOOR]["x_signxml"],
        },
    }
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "xmldsig.json").write_text(json.dumps(summary, indent=2))
    for k, v in summary["ratios"].items():  # type: ignore[attr-defined]
        print(f"{k}: {v:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
