"""``duisgw replay`` as test teams use it on recorded traffic (review 13): inputs given together,
unusable inputs, every DNO-bound message accounted for, directories, the HTML report on large
inputs, and the live replay (``--target``) into a real gateway or a recording HTTP server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.capture.writer import CaptureWriter, Connection, Exchange
from gateway.cli import main
from gateway.report.html import DecisionRow, Mark, ReportData, VerifyFailure, render_html
from gateway.testkit.library import future_dated_8f66_after_ad1, immediate_activation
from gateway.testkit.scenario import Scenario, World

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "tools"))
sys.path.insert(0, str(PROJECT / "tests" / "e2e"))
sys.path.insert(0, str(PROJECT / "tests" / "service"))
import make_captures  # noqa: E402
from e2ekit import DNO_USER, GatewayProcess, write_config  # noqa: E402
from servicekit import Receiver, free_port  # noqa: E402


@dataclass
class Lab:
    """One world (PKI, GUID list, inventory) with the scenarios the tests replay, and its reference files."""

    world: World
    imm: Scenario  # immediate activation: request, response, AD1 (suppress), 8F36 (suppress)
    fd: Scenario  # future-dated: request, accepted, AD1 (held), 8F66 (the AD1 released, suppressed)
    outage_a: bytes  # a genuine outage (forwarded), for DNO A
    outage_b: bytes  # another, for DNO B
    refs: dict[str, Path] = field(default_factory=dict)

    def args(self) -> list[str]:
        return ["--guids", str(self.refs["guids"]), "--inventory", str(self.refs["inventory"]),
                "--certs", str(self.refs["certs"]), "--gbcs-keys", str(self.refs["gbcs_keys"]),
                "--workers", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    world = World.generated()
    imm = immediate_activation(world)
    fd = future_dated_8f66_after_ad1(world)
    _, ch_a, mpan_a = world.meter(161)
    _, ch_b, mpan_b = world.meter(162)
    t = imm.t
    outage_a = world.factory.ad1(ch_a, mpan_a, t("11:00"), t("11:03"), 1161)
    outage_b = world.factory.ad1(ch_b, mpan_b, t("11:01"), t("11:04"), 1162)
    lab = Lab(world, imm, fd, outage_a, outage_b)
    lab.refs = world.write_reference(tmp_path_factory.mktemp("refs"))  # after every meter is made
    return lab


def _script(path: Path, rows: list[tuple[datetime, str, bytes]], *, extra: str = "") -> Path:
    """A JSONL event script of (arrival, lane, bytes), the bytes in files beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (at, lane, body) in enumerate(rows):
        name = f"{path.stem}-{i:03d}.xml"
        (path.parent / name).write_bytes(body)
        lines.append(json.dumps({"time": at.isoformat(), "lane": lane, "file": name}))
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def _steps(s: Scenario) -> list[tuple[datetime, str, bytes]]:
    return [(st.at, st.lane, st.body) for st in s.steps]


def _replay(
    lab: Lab, tmp: Path, *inputs: Path | str, extra: tuple[str, ...] = ()
) -> tuple[int, list[dict[str, Any]]]:
    out = tmp / "out.jsonl"
    rc = main(["replay", *map(str, inputs), *lab.args(), "--jsonl", str(out), *extra])
    lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    return rc, lines


# ------------------------------------------------------------------------------ inputs


def test_inputs_given_together_are_replayed_in_event_time_whatever_their_order_on_the_command_line(
    lab: Lab, tmp_path: Path
) -> None:
    # the DNO-bound messages in one script, the observed traffic they depend on in another: given
    # inline-first, the AD1 was decided before the activation it follows had been read (forwarded)
    rows = _steps(lab.imm)
    inline = _script(tmp_path / "inline.jsonl", [r for r in rows if r[1] == "inline"])
    observe = _script(tmp_path / "observe.jsonl", [r for r in rows if r[1] == "observe"])
    rc, lines = _replay(lab, tmp_path, inline, observe, extra=("--quiet",))
    assert rc == 0
    expected = {str(e["message_id"]): (e["decision"], e["reason"]) for e in lab.imm.expected()}
    assert {x["message_id"]: (x["decision"], x["reason"]) for x in lines} == expected


def test_a_bad_script_line_stops_the_replay_before_any_message_is_decided(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _script(tmp_path / "s.jsonl", _steps(lab.imm), extra="{not json\n")
    rc, lines = _replay(lab, tmp_path, script, extra=("--batch", "1", "--quiet"))
    assert rc == 2
    assert lines == []  # not the decisions of the lines before it, the held ones never given theirs
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s.jsonl:5" in err and "Traceback" not in err


@pytest.mark.parametrize("second", ["missing", "unknown-type", "not-a-capture"])
def test_an_unusable_later_input_stops_the_replay_before_any_message_is_decided(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str], second: str
) -> None:
    script = _script(tmp_path / "s.jsonl", _steps(lab.imm))
    bad = {"missing": tmp_path / "nosuch.pcap", "unknown-type": tmp_path / "notes.txt",
           "not-a-capture": tmp_path / "junk.pcap"}[second]  # fmt: skip
    if second != "missing":
        bad.write_bytes(b"this is not a capture\n" * 10)
    rc, lines = _replay(lab, tmp_path, script, bad, extra=("--batch", "1", "--quiet"))
    assert rc == 2
    assert lines == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and bad.name in err and "Traceback" not in err


def test_a_script_that_is_not_utf8_exits_2_with_one_line_naming_the_line(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "latin1.jsonl"
    good = json.dumps({"time": "2026-03-02T09:00:00Z", "lane": "inline", "xml": "<a/>"})
    script.write_bytes(
        good.encode()
        + b"\n"
        + '{"time": "2026-03-02T09:00:01Z", "lane": "inline", "xml": "caf\xe9"}\n'.encode("latin-1")
    )
    rc, lines = _replay(lab, tmp_path, script, extra=("--quiet",))
    assert rc == 2 and lines == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "latin1.jsonl:2" in err and "UTF-8" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ one line per DNO-bound message


def test_a_held_alert_delivered_again_while_held_gets_its_own_line_when_it_is_released(
    lab: Lab, tmp_path: Path
) -> None:
    rows = _steps(lab.fd)
    ad1 = next(r for r in rows if r[1] == "inline")
    again = (ad1[0] + timedelta(seconds=55), "inline", ad1[2])  # before the 8F66 that releases it
    rows.insert(rows.index(ad1) + 1, again)
    rc, lines = _replay(lab, tmp_path, _script(tmp_path / "s.jsonl", rows), extra=("--quiet",))
    assert rc == 0
    assert len(lines) == 2  # two DNO-bound deliveries, two lines
    first, second = lines
    assert first["message_id"] == second["message_id"]
    assert (first["decision"], first["reason"], "duplicate" in first) == ("suppress", "fd-confirmed", False)
    assert (second["decision"], second["reason"], second.get("duplicate")) == (
        "suppress",
        "fd-confirmed",
        True,
    )


def test_an_observation_with_the_id_of_an_inline_message_adds_no_line(lab: Lab, tmp_path: Path) -> None:
    rows = _steps(lab.imm)
    request, response, *alerts = rows
    # the same 11.3 response, DNO-bound first
    copy = (response[0] - timedelta(seconds=5), "inline", response[2])
    script = _script(tmp_path / "s.jsonl", [request, copy, response, *alerts])
    rc, lines = _replay(lab, tmp_path, script, extra=("--quiet",))
    assert rc == 0
    assert len(lines) == 3  # three inline messages; the observed copy is not DNO-bound
    assert not any(x.get("duplicate") for x in lines)


def test_an_inline_message_whose_id_was_observed_before_gets_a_line(lab: Lab, tmp_path: Path) -> None:
    rows = _steps(lab.imm)
    request, response, *alerts = rows
    copy = (response[0] + timedelta(seconds=25), "inline", response[2])  # observed, then sent to the DNO too
    script = _script(tmp_path / "s.jsonl", [request, response, copy, *alerts])
    rc, lines = _replay(lab, tmp_path, script, extra=("--quiet",))
    assert rc == 0
    assert len(lines) == 3
    line = lines[0]
    assert line["kind"] == "ResponseMessage.GBCSPayload" and line["duplicate"] is True
    assert (line["decision"], line["reason"]) == ("forward", "duplicate")  # as the gateway answers it


# ------------------------------------------------------------------------------ directories


def test_a_directory_that_starts_with_a_request_verifies_it_at_the_time_of_the_next_message(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a request has no time of its own: it took the previous message's, and the first one 1970-01-01,
    # when the supplier's XML-signing certificate was not valid yet (unverified, its evidence lost)
    folder = tmp_path / "messages"
    folder.mkdir()
    for i, st in enumerate(lab.imm.steps):
        (folder / f"{i:04d}.xml").write_bytes(st.body)
    rc, lines = _replay(lab, tmp_path, folder)
    assert rc == 0
    err = capsys.readouterr().err
    assert "verification-problems" not in err, err
    ad1 = lines[0]
    assert ad1["decision"] == "suppress"
    assert "request" in {e["role"] for e in ad1["evidence"]}


def test_a_directory_names_the_files_it_does_not_read(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "messages"
    folder.mkdir()
    for i, st in enumerate(lab.imm.steps):
        (folder / f"{i:04d}.xml").write_bytes(st.body)
    (folder / "0009.duis").write_bytes(lab.outage_a)  # a DNO-bound message under another name
    rc, lines = _replay(lab, tmp_path, folder)
    assert rc == 0 and len(lines) == 2
    err = capsys.readouterr().err
    assert "0009.duis" in err and "skipped inputs by code: not-xml-file 1" in err


# ------------------------------------------------------------------------------ captures


def test_inline_requests_the_gateway_refuses_in_a_capture_get_a_reject_line_each(
    lab: Lab, tmp_path: Path
) -> None:
    t0 = lab.imm.t("11:03")
    inline = make_captures.lane_path("inline")
    exchanges = [
        Exchange(inline, lab.outage_a, t0, content_type="text/plain"),  # the gateway's 415
        Exchange(inline, b"hello, not DUIS", t0 + timedelta(seconds=1)),  # the gateway's 400
        Exchange("/duis/observe", b"hello, not DUIS", t0 + timedelta(seconds=2)),  # not DNO-bound: no line
        Exchange(inline, lab.outage_b, t0 + timedelta(seconds=3)),
    ]
    capture = tmp_path / "refused.pcap"
    with CaptureWriter(capture, "pcap") as w:
        w.write_connections([Connection(exchanges)])
    rc, lines = _replay(lab, tmp_path, capture, extra=("--quiet",))
    assert rc == 0
    assert [(x["decision"], x["reason"]) for x in lines] == [
        ("reject", "not-xml"),
        ("reject", "non-duis-body"),
        ("forward", "no-activation"),
    ]
    assert lines[0]["decided_at"].startswith("2026-03-02T11:03:00") and "text/plain" in lines[0]["detail"]
    assert len({x["message_id"] for x in lines}) == 3


def test_a_capture_without_requests_says_it_replayed_no_messages(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = tmp_path / "empty.pcap"
    with CaptureWriter(capture, "pcap") as w:
        w.write_connections([])
    rc, lines = _replay(lab, tmp_path, capture)
    assert rc == 0 and lines == []
    assert capsys.readouterr().err == "duisgw replay: no messages\n"  # was "duisgw replay: " and nothing


# ------------------------------------------------------------------------------ the HTML report


def _big_report(n: int) -> ReportData:
    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    data = ReportData("big", "storm.pcap")
    for i in range(n):
        device = f"00-DC-00-00-00-{i >> 16:02X}-{(i >> 8) & 255:02X}-{i & 255:02X}"
        data.marks.append(Mark(device, t0 + timedelta(seconds=i), "ad1", f"ad1 {i}", "forward"))
        data.decisions.append(DecisionRow(f"ad1 {i}", "AD1", "forward", "no-activation", False, device, t0))
    return data


def test_html_report_of_50k_devices_renders_in_seconds(tmp_path: Path) -> None:
    data = _big_report(50_000)
    t0 = time.monotonic()
    html = render_html(data)
    assert time.monotonic() - t0 < 5.0  # took 21 s: the device list was searched once per mark
    assert "49940 more devices not drawn" in html


def test_html_report_lists_at_most_max_rows_verification_failures_and_says_how_many_there_were() -> None:
    data = _big_report(10)
    data.verify_failures.extend(
        VerifyFailure(f"forged {i}", "AD1", "xml-signature-invalid", "x" * 200) for i in range(5000)
    )
    html = render_html(data, max_rows=2000)
    assert html.count("forged ") == 2000
    assert "first 2000 of 5000 verification failures listed" in html
    assert len(html) < 1_000_000


# ------------------------------------------------------------------------------ live replay


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@dataclass
class Seen:
    path: str
    content_type: str | None
    body: bytes


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[Seen]]]:
    """An HTTP server standing in for the gateway: records each request's raw path, Content-Type and body."""
    seen: list[Seen] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(Seen(request.raw_path, request.headers.get("Content-Type"), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


def _capture(path: Path, exchanges: list[Exchange]) -> Path:
    with CaptureWriter(path, "pcap") as w:
        w.write_connections([Connection(exchanges)])
    return path


@pytest.mark.slow
async def test_live_replay_posts_each_inline_message_to_the_dno_user_it_was_captured_for(
    lab: Lab, tmp_path: Path
) -> None:
    t0 = lab.imm.t("11:03")
    capture = _capture(tmp_path / "two-dnos.pcap", [
        Exchange(f"/duis/dno/{DNO_USER}", lab.outage_a, t0),
        Exchange("/duis/dno/dno-b", lab.outage_b, t0 + timedelta(seconds=60)),
    ])  # fmt: skip
    dno_a, dno_b = Receiver(), Receiver()
    await dno_a.start()
    await dno_b.start()
    port, admin = free_port(), free_port()
    config = write_config(tmp_path / "gateway.toml", port=port, admin_port=admin, reference=lab.refs,
                          destinations=[{"name": "dno-a", "user": DNO_USER, "url": dno_a.url},
                                        {"name": "dno-b", "user": "90-B3-D5-1F-30-02-00-0B", "url": dno_b.url}])  # fmt: skip
    gw = GatewayProcess(config, admin)
    gw.start()
    try:
        await gw.wait_ready()
        proc = await asyncio.to_thread(_cli, "replay", str(capture), "--target", f"http://127.0.0.1:{port}",
                                       "--speed", "0", "--quiet")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        answers = [json.loads(x) for x in proc.stdout.splitlines()]
        assert [(a["status"], a["decision"]) for a in answers] == [(200, "forward"), (200, "forward")], (
            answers
        )
        await dno_a.wait_for(1)
        await dno_b.wait_for(1)
        await asyncio.sleep(0.3)
    finally:
        assert gw.terminate() == 0, gw.log_tail()
        await dno_a.stop()
        await dno_b.stop()
    assert [r.body for r in dno_a.log] == [lab.outage_a]
    assert [r.body for r in dno_b.log] == [lab.outage_b]  # not delivered to DNO A's adaptor


async def test_live_replay_sends_the_captured_content_type_with_the_original_bytes(
    lab: Lab, tmp_path: Path, recorder: tuple[str, list[Seen]]
) -> None:
    url, seen = recorder
    ctype = "application/xml; charset=utf-8"
    capture = _capture(tmp_path / "c.pcap", [Exchange(f"/duis/dno/{DNO_USER}", lab.outage_a, lab.imm.t("11:03"),
                                                      content_type=ctype)])  # fmt: skip
    proc = await asyncio.to_thread(_cli, "replay", str(capture), "--target", url, "--speed", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert [(s.content_type, s.body) for s in seen] == [(ctype, lab.outage_a)]


async def test_live_replay_percent_encodes_a_captured_user_with_a_slash_as_it_was_sent(
    lab: Lab, tmp_path: Path, recorder: tuple[str, list[Seen]]
) -> None:
    url, seen = recorder
    capture = _capture(
        tmp_path / "c.pcap", [Exchange("/duis/dno/north%2Fwest", lab.outage_a, lab.imm.t("11:03"))]
    )
    proc = await asyncio.to_thread(_cli, "replay", str(capture), "--target", url, "--speed", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert [s.path for s in seen] == ["/duis/dno/north%2Fwest"]


async def test_live_replay_reads_a_capture_with_the_configured_content_types(
    lab: Lab, tmp_path: Path, recorder: tuple[str, list[Seen]]
) -> None:
    url, seen = recorder
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\ncontent_types = ["application/xml", "text/xml"]\n', encoding="utf-8")
    capture = _capture(tmp_path / "c.pcap", [Exchange(f"/duis/dno/{DNO_USER}", lab.outage_a, lab.imm.t("11:03"),
                                                      content_type="text/xml")])  # fmt: skip
    proc = await asyncio.to_thread(_cli, "replay", str(capture), "--target", url, "--speed", "0",
                                   "--config", str(config), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [(s.content_type, s.body) for s in seen] == [("text/xml", lab.outage_a)]


async def test_live_replay_gives_a_line_to_each_inline_request_it_does_not_send(
    lab: Lab, tmp_path: Path, recorder: tuple[str, list[Seen]]
) -> None:
    url, seen = recorder
    t0 = lab.imm.t("11:03")
    capture = _capture(tmp_path / "c.pcap", [
        Exchange(f"/duis/dno/{DNO_USER}", lab.outage_a, t0, content_type="text/plain"),
        Exchange(f"/duis/dno/{DNO_USER}", lab.outage_b, t0 + timedelta(seconds=1)),
    ])  # fmt: skip
    proc = await asyncio.to_thread(_cli, "replay", str(capture), "--target", url, "--speed", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [(x["lane"], x["status"], x.get("skipped")) for x in lines] == [
        ("inline", None, "not-xml"),
        ("inline", 204, None),
    ]
    assert [s.body for s in seen] == [lab.outage_b]


def test_live_replay_with_a_target_that_is_not_an_http_url_exits_2_before_sending(
    lab: Lab, tmp_path: Path
) -> None:
    script = _script(tmp_path / "s.jsonl", _steps(lab.imm))
    t0 = time.monotonic()
    proc = _cli("replay", str(script), "--target", "127.0.0.1:8443", "--speed", "0")
    assert time.monotonic() - t0 < 20  # it retried each message for --retry-for (30 s) before
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "--target" in proc.stderr


def test_live_replay_refuses_a_speed_that_is_not_a_number(lab: Lab, tmp_path: Path) -> None:
    script = _script(tmp_path / "s.jsonl", _steps(lab.imm))
    proc = _cli("replay", str(script), "--target", "http://127.0.0.1:9", "--speed", "nan", "--retry-for", "0")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "--speed" in proc.stderr


def test_live_replay_refuses_a_retry_time_that_is_not_a_number(lab: Lab, tmp_path: Path) -> None:
    # --retry-for nan made every deadline comparison false: a target refusing connections was retried for ever
    script = _script(tmp_path / "s.jsonl", _steps(lab.imm))
    proc = _cli("replay", str(script), "--target", "http://127.0.0.1:9", "--speed", "0", "--retry-for", "nan",
                timeout=30)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "--retry-for" in proc.stderr


def test_a_message_timed_at_the_calendars_end_is_decided_and_the_replay_finishes(lab: Lab, tmp_path: Path) -> None:
    """An AD1 arriving at 9999-12-31T23:55 (a script's time, or a DUIS file's own): the engine decides it
    (``time-out-of-range``) and never moves its clock there, but the replay's own arithmetic (the next tick,
    the final tick past every hold limit) overflowed: a traceback instead of a line."""
    at = datetime(9999, 12, 31, 23, 55, tzinfo=UTC)
    script = _script(tmp_path / "end.jsonl", [(at, "inline", lab.outage_a)])
    rc, lines = _replay(lab, tmp_path, script, extra=("--quiet",))
    assert rc == 0
    assert [(x["decision"], x["reason"]) for x in lines] == [("forward", "time-out-of-range")]
