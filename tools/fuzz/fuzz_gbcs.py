"""Atheris harness: arbitrary bytes -> GBCS ``parse_frame`` / ``decode_payload`` / ``describe``.
Only ``gbcs.errors.GbcsError`` subclasses may escape.

    .venv/bin/pip install atheris
    .venv/bin/python tools/fuzz/fuzz_gbcs.py -max_total_time=60 [CORPUS_DIR ...]

With ``DUISGW_SHARED`` (or ``../shared``) present, ``describe`` also verifies against the RTDS key store.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from gbcs.errors import GbcsError
    from gbcs.frame import parse_frame
    from gbcs.payload import decode_payload
    from gbcs.render import describe

AT = datetime(2020, 1, 1, tzinfo=UTC)
_shared = Path(os.environ.get("DUISGW_SHARED", ROOT.parent / "shared"))
KEYSTORE = None
if (_shared / "gbcs" / "rtds-keystore").is_dir():
    from gateway.gbcs_keys import load_keystore

    KEYSTORE = load_keystore(_shared / "gbcs" / "rtds-keystore")


def test_one_input(data: bytes) -> None:
    try:
        frame = parse_frame(data)
        decode_payload(frame)
        describe(data, KEYSTORE, at=AT)
    except GbcsError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
