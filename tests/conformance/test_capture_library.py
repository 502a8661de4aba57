"""Conformance over the scenario capture library (``captures/``, made by ``tools/make_captures.py``):
every capture replays to its expected decisions, tshark reads every capture and sees each HTTP
request, damaged captures degrade gracefully, and the HTML report renders in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.capture.writer import CaptureWriter, Connection, Exchange, Impairments, truncate_capture
from gateway.cli import main
from gateway.testkit.library import genuine_outage_during_campaign, immediate_activation
from gateway.testkit.scenario import Scenario, World

PROJECT = Path(__file__).resolve().parents[2]
CAPTURES = PROJECT / "captures"
sys.path.insert(0, str(PROJECT / "tools"))
import make_captures  # noqa: E402

INDEX = json.loads((CAPTURES / "index.json").read_text()) if (CAPTURES / "index.json").exists() else []


def _replay(capture: Path, certs: Path, out: Path, refs: Path = CAPTURES, *extra: str) -> dict[str, dict[str, Any]]:
    rc = main(
        [
            "replay", str(capture),
            "--guids", str(refs / "guids.csv"),
            "--inventory", str(refs / "inventory.csv"),
            "--certs", str(certs),
            "--gbcs-keys", str(refs / "gbcs-keys"),
            "--jsonl", str(out),
            "--quiet",
            *extra,
        ]
    )  # fmt: skip
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    return {x["message_id"]: x for x in lines}


def _compare(expected_file: Path, got: dict[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
    bad = []
    for line in expected_file.read_text().splitlines():
        exp = json.loads(line)
        g = got.get(exp["message_id"])
        if g is None:
            bad.append((exp.get("label"), "missing"))
        elif g["decision"] != exp["decision"] or ("reason" in exp and g["reason"] != exp["reason"]):
            bad.append((exp.get("label"), exp["decision"], exp.get("reason"), g["decision"], g["reason"]))
        elif "held" in exp and g["held"] != exp["held"]:
            bad.append((exp.get("label"), "held", exp["held"], g["held"]))
    return bad


def test_the_library_index_lists_every_scenario() -> None:
    assert {e["name"] for e in INDEX} == set(make_captures.SCENARIOS)


@pytest.mark.parametrize("entry", INDEX, ids=[e["name"] for e in INDEX])
def test_every_capture_replays_with_its_expected_decisions(entry: dict[str, Any], shared: Path, tmp_path: Path) -> None:
    got = _replay(CAPTURES / entry["capture"], shared / "smki" / "dccboxed", tmp_path / "out.jsonl")
    assert _compare(CAPTURES / f"{entry['name']}.expected.jsonl", got) == []
    assert len({m for m in got}) == len((CAPTURES / f"{entry['name']}.expected.jsonl").read_text().splitlines())


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (Debian package tshark)")
@pytest.mark.parametrize("entry", INDEX, ids=[e["name"] for e in INDEX])
def test_tshark_reads_every_capture_and_sees_each_http_request(entry: dict[str, Any]) -> None:
    proc = subprocess.run(
        ["tshark", "-r", str(CAPTURES / entry["capture"]), "-Y", "http.request", "-T", "fields",
         "-e", "http.request.method", "-e", "http.request.uri"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rows = [r.split("\t") for r in proc.stdout.splitlines() if r.strip()]
    assert len(rows) == entry["messages"]
    assert all(method == "POST" for method, _ in rows)
    assert sum(uri.startswith("/duis/dno/") for _, uri in rows) == entry["inline"]


def _write(scenario: Scenario, path: Path, impair: Impairments | None = None) -> Path:
    conns = make_captures.connections(scenario)
    if impair is not None:
        conns = [type(c)(c.exchanges, client=c.client, server=c.server, impairments=impair) for c in conns]
    with CaptureWriter(path, "pcap", mss=536) as w:
        w.write_connections(conns)
    return path


def test_reordered_and_retransmitted_segments_give_the_same_decisions_as_a_clean_capture(tmp_path: Path) -> None:
    world = World.generated()
    scenario = genuine_outage_during_campaign(world)
    refs = tmp_path / "refs"
    world.write_reference(refs)
    clean = _replay(_write(scenario, tmp_path / "clean.pcap"), refs / "certs", tmp_path / "c.jsonl", refs)
    messy = Impairments(reorder=0.3, retransmit=0.3, random_segmentation=True, seed=5)
    damaged = _replay(_write(scenario, tmp_path / "messy.pcap", messy), refs / "certs", tmp_path / "m.jsonl", refs)
    assert {k: (v["decision"], v["reason"]) for k, v in damaged.items()} == {
        k: (v["decision"], v["reason"]) for k, v in clean.items()
    }
    assert len(clean) == sum(1 for s in scenario.steps if s.lane == "inline")


def test_a_truncated_capture_gives_the_decisions_of_complete_flows_and_reports_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World.generated()
    scenario = immediate_activation(world)
    refs = tmp_path / "refs"
    world.write_reference(refs)
    path = _write(scenario, tmp_path / "cut.pcap")
    full = _replay(path, refs / "certs", tmp_path / "full.jsonl", refs)
    truncate_capture(path, path.stat().st_size - 700)  # cut inside the last request of the inline flow
    rc = main(["replay", str(path), "--guids", str(refs / "guids.csv"), "--inventory", str(refs / "inventory.csv"),
               "--certs", str(refs / "certs"), "--gbcs-keys", str(refs / "gbcs-keys"),
               "--jsonl", str(tmp_path / "cut.jsonl")])  # fmt: skip
    assert rc == 0
    cut = [json.loads(x) for x in (tmp_path / "cut.jsonl").read_text().splitlines()]
    assert 0 < len(cut) < len(full)
    for line in cut:  # what was complete is decided exactly as in the full capture
        assert full[line["message_id"]]["decision"] == line["decision"]
    err = capsys.readouterr().err
    assert "skipped" in err and "cut.pcap" in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)")
def test_html_report_renders_in_headless_chromium_with_timeline_summary_and_failures(tmp_path: Path) -> None:
    from PIL import Image

    world = World.generated()
    from gateway.testkit.library import forged_evidence

    scenario = immediate_activation(world)
    forged = forged_evidence(world)
    scenario.steps.extend(forged.steps)
    scenario.steps.sort(key=lambda s: s.at)
    paths = scenario.write(tmp_path / "s")
    report = tmp_path / "report.html"
    assert main(["replay", str(paths["script"]), "--guids", str(paths["guids"]), "--inventory",
                 str(paths["inventory"]), "--certs", str(paths["certs"]), "--gbcs-keys", str(paths["gbcs_keys"]),
                 "--jsonl", str(tmp_path / "o.jsonl"), "--html", str(report), "--quiet"]) == 0  # fmt: skip
    assert CHROMIUM is not None
    common = [CHROMIUM, *_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'id="timeline"' in dom.stdout and 'id="summary"' in dom.stdout and 'id="verify-failures"' in dom.stdout
    assert dom.stdout.count('class="window"') >= 1 and "activation-window" in dom.stdout
    assert "xml-signature-invalid" in dom.stdout  # the forged evidence is listed
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,900", report.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 900)
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20) or []}

    def near(rgb: tuple[int, int, int]) -> bool:
        return any(sum(abs(a - b) for a, b in zip(c, rgb, strict=True)) < 40 for c in colours)

    assert near((0x2C, 0xA0, 0x2C))  # suppress marker / window outline (green)
    assert near((0xD6, 0x27, 0x28))  # forwarded AD1 marker (red)
    assert near((0x1F, 0x77, 0xB4))  # activation marker (blue)


def test_parallel_classification_gives_the_same_decisions_in_the_same_order(shared: Path, tmp_path: Path) -> None:
    capture = CAPTURES / "genuine-outage-during-campaign.pcap"
    certs = shared / "smki" / "dccboxed"
    one = _replay(capture, certs, tmp_path / "one.jsonl", CAPTURES, "--workers", "1")
    two = _replay(capture, certs, tmp_path / "two.jsonl", CAPTURES, "--workers", "2")
    assert list(one) == list(two)
    assert (tmp_path / "one.jsonl").read_text() == (tmp_path / "two.jsonl").read_text()


def _client_side_only(src: Path, dst: Path) -> Path:
    """The capture as ``tcpdump 'dst port 8080'`` would have taken it: the gateway's packets left out."""
    from scapy.layers.inet import TCP
    from scapy.utils import PcapReader, PcapWriter

    with PcapReader(str(src)) as r, PcapWriter(str(dst), linktype=r.linktype) as w:
        for pkt in r:
            if TCP not in pkt or pkt[TCP].sport != 8080:
                w.write(pkt)
    return dst


def test_a_capture_without_the_gateways_answers_replays_in_arrival_order(tmp_path: Path) -> None:
    # The AD1 is held for a future-dated activation whose outcome (8F66) comes 25 s later, past a
    # hold_limit of 20 s: the gateway forwards it at its deadline (hold-timeout). The replay of a
    # capture that holds no response must feed the AD1 when it arrived, not when the reader gave
    # up waiting for its response (30 s later, after the 8F66, which made it a suppress).
    world = World.generated()
    s = Scenario("late-8f66", world)
    f, t = world.factory, s.t
    esme, ch, mpan = world.meter(131)
    s.observe("06:05:00", f.activate_request(esme, 7031, execution=t("10:30")), "11.3 future-dated 10:30")
    s.observe("06:05:30", f.activate_response(esme, 7031, t("06:05:30"), result=None), "accepted for later")
    other, _, _ = world.meter(132)  # opens the observation connection that carries the 8F66 too
    s.observe("10:33:40", f.activate_request(other, 7032), "11.3 on another meter")
    s.inline("10:34:05", f.ad1(ch, mpan, t("10:30:50"), t("10:34:05"), 1131), "forward", "hold-timeout",
             held=True, label="AD1, 8F66 too late")  # fmt: skip
    s.observe("10:34:30", f.future_dated_outcome(esme, 7031, t("10:30"), t("10:34:30")), "8F66 after the hold limit")
    refs = tmp_path / "refs"
    paths = s.write(tmp_path / "s", reference=world.write_reference(refs))
    config = tmp_path / "gw.toml"
    config.write_text('[engine]\nhold_limit = "20s"\n', encoding="utf-8")
    truth = _replay(paths["script"], refs / "certs", tmp_path / "truth.jsonl", refs, "--config", str(config))
    assert _compare(paths["expected"], truth) == []
    full = _write(s, tmp_path / "full.pcap")
    one_sided = _client_side_only(full, tmp_path / "requests-only.pcap")
    got = _replay(one_sided, refs / "certs", tmp_path / "got.jsonl", refs, "--config", str(config))
    assert _compare(paths["expected"], got) == []


def test_message_content_with_markup_is_escaped_in_the_html_report(tmp_path: Path) -> None:
    # A ResponseID and an MPxN carrying "<script>" (XML-escaped in the message, so plain text
    # once parsed), and a request path with it: the report shows them as text, never as markup.
    world = World.generated()
    s = Scenario("markup", world)
    f, t = world.factory, s.t
    _, ch, mpan = world.meter(141)
    ad1 = f.ad1(ch, mpan, t("09:00:00"), t("09:05:00"), 1141)
    evil = b"&lt;script&gt;alert(1)&lt;/script&gt;"
    tampered = ad1.replace(b":1141</sr:ResponseID>", b":1141" + evil + b"</sr:ResponseID>")
    tampered = tampered.replace(b"</sr:MPxN>", evil + b"</sr:MPxN>")
    assert tampered.count(evil) == 2
    exchanges = [
        Exchange(make_captures.lane_path("inline"), tampered, t("09:05:00")),
        Exchange("/<script>alert(2)</script>", ad1, t("09:05:01")),
    ]
    refs = tmp_path / "refs"
    world.write_reference(refs)
    capture = tmp_path / "markup.pcap"
    with CaptureWriter(capture, "pcap") as w:
        w.write_connections([Connection(exchanges)])
    report = tmp_path / "report.html"
    _replay(capture, refs / "certs", tmp_path / "o.jsonl", refs, "--html", str(report))
    html = report.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert html.count("&lt;script&gt;") >= 2  # the ResponseID and the path are shown, escaped


def test_a_replay_keeps_every_skipped_input_counted_by_code_but_only_the_first_in_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A long capture full of requests the replay skips (a health check on the DUIS port): the
    # replay's memory must not grow with them. Every one is counted by its code; the first
    # ``keep_problems`` are kept in full for the report.
    from datetime import timedelta

    from gateway.replay import InputProblem, ReplayRun

    run = ReplayRun(None, None, timedelta(0), keep_problems=10)  # type: ignore[arg-type]
    for i in range(25):
        run.feed(InputProblem(f"c.pcap:{i}", "non-duis-path" if i % 5 else "not-http", "GET /healthz"))
    assert len(run.problems) == 10 and run.problems[0].source == "c.pcap:0"
    assert run.problem_counts == {"non-duis-path": 20, "not-http": 5}
    assert run.stats["input-problems"] == 25

    world = World.generated()
    s = immediate_activation(world)
    refs = tmp_path / "refs"
    world.write_reference(refs)
    health = [Exchange("/healthz", b"", s.steps[0].at + timedelta(seconds=i), method="GET") for i in range(1200)]
    capture = tmp_path / "health.pcap"
    with CaptureWriter(capture, "pcap") as w:
        w.write_connections([*make_captures.connections(s), Connection(health, client=("10.20.0.9", 45000))])
    report = tmp_path / "r.html"
    rc = main(["replay", str(capture), "--guids", str(refs / "guids.csv"), "--inventory", str(refs / "inventory.csv"),
               "--certs", str(refs / "certs"), "--gbcs-keys", str(refs / "gbcs-keys"), "--jsonl", str(tmp_path / "o.jsonl"),
               "--html", str(report)])  # fmt: skip
    assert rc == 0
    assert "skipped inputs by code: non-duis-path 1200" in capsys.readouterr().err
    html = report.read_text(encoding="utf-8")
    assert html.count("non-duis-path") == 1000 + 1 and "200 more skipped inputs not listed" in html
