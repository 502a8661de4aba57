"""Write seed corpora for the atheris harnesses: testkit-built signed DUIS messages and their GBCS
payloads, plus (when ``../shared`` is present) the DUIS samples and the RTDS 4.5.0 vectors.

    .venv/bin/python tools/fuzz/make_corpus.py /tmp/fuzz-corpus
    # -> /tmp/fuzz-corpus/duis/*, /tmp/fuzz-corpus/gbcs/*
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.duis.decode import decode  # noqa: E402
from gateway.testkit.scenario import Scenario, World  # noqa: E402


def main(out: Path) -> int:
    duis, gbcs = out / "duis", out / "gbcs"
    duis.mkdir(parents=True, exist_ok=True)
    gbcs.mkdir(parents=True, exist_ok=True)
    w = World.generated()
    esme, ch, mpan = w.meter(1)
    f, s = w.factory, Scenario("corpus", w)
    messages = [
        f.activate_request(esme, 1000),
        f.activate_request(esme, 1001, execution=s.t("11:00"), signed_pre_command=True),
        f.activate_response(esme, 1000, s.t("09:00:40")),
        f.future_dated_outcome(esme, 1001, s.t("11:00"), s.t("11:01")),
        f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1),
        f.restoration(esme, s.t("09:03:30"), s.t("09:06"), s.t("09:09")),
    ]
    for i, m in enumerate(messages):
        (duis / f"testkit-{i}.xml").write_bytes(m)
        body = decode(m).body
        payload = getattr(body, "gbcs_payload", None) or getattr(
            getattr(body, "payload", None), "gbcs_payload", None
        )
        if payload:
            (gbcs / f"testkit-{i}.bin").write_bytes(payload)
    shared = Path(os.environ.get("DUISGW_SHARED", ROOT.parent / "shared"))
    if (shared / "duis" / "samples").is_dir():
        for p in (shared / "duis" / "samples").iterdir():
            (duis / p.name).write_bytes(p.read_bytes())
        for p in (shared / "gbcs" / "rtds-4.5.0").rglob("*.HEX"):
            (gbcs / (p.stem + ".bin")).write_bytes(bytes.fromhex(p.read_text().strip()))
    print(
        f"{len(list(duis.iterdir()))} DUIS seeds in {duis}, {len(list(gbcs.iterdir()))} GBCS seeds in {gbcs}"
    )
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    parser.add_argument(
        "out", nargs="?", type=Path, default=Path("fuzz-corpus"), help="corpus folder (default fuzz-corpus)"
    )
    args = parser.parse_args(argv)
    return main(args.out)


if __name__ == "__main__":
    sys.exit(cli())
