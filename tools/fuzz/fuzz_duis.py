"""Atheris harness: arbitrary bytes -> DUIS decoder and the whole classifier (parse, XML signature,
decode, GBCS). Only named ``DuisgwError`` subclasses may escape ``decode``; ``classify`` never raises.

    .venv/bin/pip install atheris
    .venv/bin/python tools/fuzz/fuzz_duis.py -max_total_time=60 [CORPUS_DIR ...]
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from gateway.duis.decode import decode
    from gateway.errors import DuisgwError
    from gateway.pipeline import Classifier
    from gateway.smki import CertificateStore, SigningPolicy
    from gbcs.crypto import Verifier
    from gbcs.keystore import MemoryKeyStore

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CLASSIFIER = Classifier(
    certificates=CertificateStore([]),
    signing_policy=SigningPolicy(),
    gbcs_verifier=Verifier(MemoryKeyStore()),
)


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(DuisgwError):
        decode(data)
    CLASSIFIER.classify("inline", data, NOW)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
