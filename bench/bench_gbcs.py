"""GBCS codec benchmark: messages/s over the whole RTDS 4.5.0 corpus on one core.

Run: ``.venv/bin/python bench/bench_gbcs.py [--quick]``. Figures (best of N rounds):

* parse-only: ``parse_frame`` on every vector;
* parse+payload: ``parse_frame`` + ``decode_payload`` (generic tree and typed values);
* parse+verify: ``parse_frame`` + ``Verifier.verify_signature`` (signed vectors are checked; the rest
  report "not present"); public keys are cached per certificate by the verifier;
* parse+MAC: ``parse_frame`` + ``Verifier.verify_mac`` (ECDH secrets cached per key pair);
* baseline: raw ``cryptography`` ECDSA P-256 verification of the same signatures with preloaded keys and
  pre-cut data (no parsing, no lookups), expressed per corpus pass so the ratio reads directly.

Writes ``bench/out/gbcs.json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: E402

from gateway.gbcs_keys import load_keystore  # noqa: E402
from gbcs.crypto import Verifier  # noqa: E402
from gbcs.frame import SignatureField, parse_frame  # noqa: E402
from gbcs.payload import decode_payload  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
AT = datetime(2020, 1, 1, tzinfo=UTC)


def best_of(rounds: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    rounds = 3 if quick else 10
    corpus = [bytes.fromhex(p.read_text().strip()) for p in sorted((SHARED / "gbcs" / "rtds-4.5.0").rglob("*.HEX"))]
    store = load_keystore(SHARED / "gbcs" / "rtds-keystore")
    verifier = Verifier(store, acb_eui=store.acb_eui)
    n = len(corpus)
    frames = [parse_frame(r) for r in corpus]
    signed = [f for f in frames if f.signature_field is SignatureField.PRESENT]

    def parse_only() -> None:
        for r in corpus:
            parse_frame(r)

    def parse_payload() -> None:
        for r in corpus:
            decode_payload(parse_frame(r))

    def parse_verify() -> None:
        for r in corpus:
            f = parse_frame(r)
            if not verifier.verify_signature(f, AT).ok and f.signature_field is SignatureField.PRESENT:
                raise SystemExit("signature failed")

    def parse_mac() -> None:
        for r in corpus:
            verifier.verify_mac(parse_frame(r), AT)

    prepared = []
    for f in signed:
        cert = store.ds_certificate(f.originator)
        assert cert is not None
        pub = cert.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        sig = f.signature
        assert sig is not None
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        prepared.append((pub, der, f.signed_bytes))
    algo = ec.ECDSA(hashes.SHA256())

    def baseline() -> None:
        for pub, der, data in prepared:
            pub.verify(der, data, algo)

    parse_verify()  # warm caches
    parse_mac()
    results = {}
    for name, fn in [("parse-only", parse_only), ("parse+payload", parse_payload), ("parse+verify", parse_verify),
                     ("parse+MAC", parse_mac), ("baseline raw ECDSA verify", baseline)]:
        t = best_of(rounds, fn)
        results[name] = {"seconds_per_corpus": t, "msg_per_s": n / t}
    base = results["baseline raw ECDSA verify"]["seconds_per_corpus"]
    print(f"RTDS corpus: {n} messages, {len(signed)} signed; best of {rounds} rounds, one core")
    print(f"{'measure':<28}{'ms/corpus':>11}{'msg/s':>11}{'x baseline time':>17}")
    for name, r in results.items():
        print(f"{name:<28}{r['seconds_per_corpus'] * 1e3:>11.2f}{r['msg_per_s']:>11.0f}{r['seconds_per_corpus'] / base:>17.2f}")
    print(f"raw ECDSA verify: {base / len(signed) * 1e6:.1f} us/signature")
    targets = {"parse-only": 20_000, "parse+verify": 9_000}
    for name, target in targets.items():
        ok = results[name]["msg_per_s"] >= target
        print(f"target {name} >= {target} msg/s: {'met' if ok else 'NOT met'}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gbcs.json").write_text(
        json.dumps({"corpus": n, "signed": len(signed), "rounds": rounds, "results": results, "targets": targets},
                   indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
