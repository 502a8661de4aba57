#!/usr/bin/env python3
"""Build the scenario capture library in ``captures/`` (or ``--out DIR``).

Each scenario of :mod:`gateway.testkit.library` becomes a packet capture of the DSP's HTTP POSTs to the
gateway — ``/duis/observe`` for observed traffic, ``/duis/dno/{DNO EUI}`` for DNO-bound messages — with
TCP handshakes, MSS segmentation, keep-alive connections (a new connection after an idle gap), the
gateway's 204 answers and capture timestamps equal to the scenario's arrival times; plus
``<name>.expected.jsonl`` (the decision each inline message must get). The library shares
``guids.csv``, ``inventory.csv`` and ``gbcs-keys/devices.certs.pem`` (the generated device certificates).

DUIS documents are signed with the DCC Boxed test keys from ``../shared/smki/dccboxed`` (DSP role 0x89
and the supplier's/DNO's XML-signing keys), so replaying needs ``--certs ../shared/smki/dccboxed``;
GBCS payloads are signed by devices of the project's deterministic test PKI.

    python tools/make_captures.py [--shared ../shared] [--out captures] [--only NAME ...] [--storm-ad1s N]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.capture.writer import CaptureWriter, Connection, Exchange  # noqa: E402
from gateway.testkit.library import SCENARIOS, storm  # noqa: E402
from gateway.testkit.messages import DNO_EUI  # noqa: E402
from gateway.testkit.scenario import Scenario, World  # noqa: E402
from gbcs.eui import format_eui  # noqa: E402

IDLE = timedelta(seconds=90)  # a keep-alive connection is closed after this much silence
MAX_PER_CONNECTION = 200


def lane_path(lane: str) -> str:
    return f"/duis/dno/{format_eui(DNO_EUI)}" if lane == "inline" else "/duis/observe"


def connections(scenario: Scenario) -> list[Connection]:
    """Group the scenario's messages into keep-alive connections per lane (new one after an idle gap)."""
    conns: list[Connection] = []
    current: dict[str, list[Exchange]] = {}
    last: dict[str, object] = {}
    port = 41000

    def close(lane: str) -> None:
        nonlocal port
        ex = current.pop(lane, [])
        if ex:
            port += 1
            conns.append(Connection(tuple(ex), client=("10.20.0.2", port), server=("10.20.0.1", 8080)))

    for step in scenario.steps:
        prev = last.get(step.lane)
        if prev is not None and (step.at - prev > IDLE or len(current.get(step.lane, [])) >= MAX_PER_CONNECTION):  # type: ignore[operator]
            close(step.lane)
        current.setdefault(step.lane, []).append(Exchange(lane_path(step.lane), step.body, step.at))
        last[step.lane] = step.at
    for lane in list(current):
        close(lane)
    return conns


def write_scenario(scenario: Scenario, out: Path, fmt: str) -> Path:
    path = out / f"{scenario.name}.{fmt}"
    with CaptureWriter(path, fmt) as w:  # type: ignore[arg-type]
        w.write_connections(connections(scenario))
    expected = out / f"{scenario.name}.expected.jsonl"
    expected.write_text("".join(json.dumps(e) + "\n" for e in scenario.expected()), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--out", type=Path, default=ROOT / "captures")
    ap.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    ap.add_argument("--storm-ad1s", type=int, default=10_000)
    ap.add_argument("--storm-activations", type=int, default=1_000)
    args = ap.parse_args(argv)
    if not (args.shared / "smki" / "dccboxed").is_dir():
        print(f"make_captures: need the DCC Boxed test keys under {args.shared}/smki/dccboxed", file=sys.stderr)
        return 2
    world = World.with_shared_dsp(args.shared)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(SCENARIOS)
    index = []
    for name in names:
        if name == "storm":
            scenario = storm(world, args.storm_ad1s, args.storm_activations)
        else:
            scenario = SCENARIOS[name](world)
        fmt = "pcapng" if name in ("storm", "duplicates") else "pcap"
        path = write_scenario(scenario, out, fmt)
        inline = sum(1 for s in scenario.steps if s.lane == "inline")
        index.append({"name": name, "capture": path.name, "messages": len(scenario.steps), "inline": inline,
                      "description": scenario.description})  # fmt: skip
        print(f"{path.name}: {len(scenario.steps)} messages ({inline} inline), {path.stat().st_size:,} bytes")
    world.write_reference(out, bundle=True)
    if not args.only:
        (out / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
