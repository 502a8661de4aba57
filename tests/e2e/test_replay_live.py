"""``duisgw replay CAPTURE --target URL``: a recorded capture replayed into a live gateway over HTTP
decides exactly as the scenario expects; ``--speed`` paces the sends by the recorded arrival times."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from conftest import Receiver
from e2ekit import PROJECT, GatewayProcess, Traffic, end_of, final_decisions, run_cli
from test_gateway_e2e import forwards, start_gateway

from gateway.capture.writer import CaptureWriter
from gateway.service.simulate import TimedMessage

sys.path.insert(0, str(PROJECT / "tools"))
import make_captures

pytestmark = pytest.mark.slow


async def test_a_capture_replayed_into_a_live_gateway_gets_the_expected_decisions(
    tmp_path: Path, traffic: Traffic, receiver: Receiver
) -> None:
    capture = tmp_path / "demo.pcap"
    with CaptureWriter(capture, "pcap") as w:
        w.write_connections(make_captures.connections(traffic.demo))
    gw: GatewayProcess
    gw, port = await start_gateway(tmp_path / "gw", traffic, receiver.url)
    try:
        out = tmp_path / "sent.jsonl"
        proc = run_cli("replay", str(capture), "--target", f"http://127.0.0.1:{port}", "--speed", "0",
                       "--jsonl", str(out), "--quiet")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(lines) == len(traffic.demo.steps)
        assert all(x["status"] in (200, 202, 204) for x in lines), lines
        messages = [TimedMessage(s.at, s.lane, s.body) for s in traffic.demo.steps]
        await gw.admin("POST", "/admin/tick", {"now": end_of(messages).isoformat()})
        demo_forwards = {str(e["message_id"]) for e in traffic.demo.expected() if e["decision"] == "forward"}
        assert demo_forwards <= forwards(traffic)
        await receiver.wait_for(len(demo_forwards))
    finally:
        assert gw.terminate() == 0, gw.log_tail()
    decided = final_decisions(gw.config)
    expected = {str(e["message_id"]): str(e["decision"]) for e in traffic.demo.expected()}
    assert {m: d for m, (d, _r) in decided.items() if m in expected} == expected
    assert set(receiver.accepted_ids()) == demo_forwards


def test_speed_paces_sends_by_the_recorded_arrival_gaps(tmp_path: Path, traffic: Traffic) -> None:
    # nobody listens on the target: every send fails fast, but the pacing between them is still observable
    script = tmp_path / "s.jsonl"
    script.write_text(
        "".join(
            json.dumps({"time": f"2026-03-02T09:00:{s:02d}Z", "lane": "inline", "xml": "<x/>"}) + "\n"
            for s in (0, 10, 20)
        )
    )
    t0 = time.monotonic()
    proc = run_cli("replay", str(script), "--target", "http://127.0.0.1:9", "--speed", "20", "--retry-for", "0", "--quiet",
                   "--jsonl", str(tmp_path / "o.jsonl"))  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr  # no message was taken: the replay failed (it used to exit 0)
    assert elapsed >= 1.0  # 20 s of recording at 20x
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == [None, None, None] and all("error" in x for x in lines)
