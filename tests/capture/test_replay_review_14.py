"""``duisgw replay`` review 14: captures whose time goes backwards, requests lost in a TCP gap, the final
decision of a message a live gateway held, the report's memory, and scenarios with an unsigned
DNO-bound message."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.capture.writer import CaptureWriter, Connection, Exchange, Impairments
from gateway.cli import main
from gateway.report.html import DecisionRow, Mark, ReportData, VerifyFailure, Window, render_html
from gateway.testkit.library import future_dated_8f66_after_ad1, immediate_activation
from gateway.testkit.messages import DCC_EUI, Signer
from gateway.testkit.pki import ROLE_DSP_XML_SIGN, TestPKI
from gateway.testkit.scenario import Scenario, World

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "tests" / "e2e"))
sys.path.insert(0, str(PROJECT / "tests" / "service"))
sys.path.insert(0, str(PROJECT / "tests" / "scenarios"))
from e2ekit import DNO_USER, GatewayProcess, write_config  # noqa: E402
from servicekit import Receiver, free_port  # noqa: E402
from support import check_expected, replay  # noqa: E402

INLINE = f"/duis/dno/{DNO_USER}"


@dataclass
class Lab:
    world: World
    imm: Scenario  # immediate activation: request, response, AD1 (suppress), 8F36 (suppress)
    fd: Scenario  # future-dated: request, accepted, AD1 (held), 8F66 (the AD1 released, suppressed)
    forged: Scenario  # a forged copy of an AD1 (forwarded), then the genuine AD1 (suppressed)
    big: list[bytes]  # two genuine AD1s of meters with no activation (forwarded), large enough for 3+ segments
    refs: dict[str, Path] = field(default_factory=dict)

    def args(self) -> list[str]:
        return ["--guids", str(self.refs["guids"]), "--inventory", str(self.refs["inventory"]),
                "--certs", str(self.refs["certs"]), "--gbcs-keys", str(self.refs["gbcs_keys"]),
                "--workers", "1"]  # fmt: skip


def _forged_scenario(world: World) -> Scenario:
    s = Scenario("forged-inline-copy", world)
    f, t = world.factory, s.t
    esme, ch, mpan = world.meter(171)
    rogue = TestPKI(seed="someone-else").organisation("rogue-dsp", DCC_EUI, ROLE_DSP_XML_SIGN)
    s.observe("09:00:00", f.activate_request(esme, 7171), "11.3 request")
    s.observe("09:00:35", f.activate_response(esme, 7171, t("09:00:35")), "11.3 success")
    # the same AD1 (same identity) signed by a key that is not the DSP's: decided under its own id, never
    # suppressed; the genuine one after it is suppressed by the activation
    forged = f.ad1(ch, mpan, t("09:03:45"), t("09:06:00"), 1171, signer=Signer(rogue.private_key, rogue.certificate))
    s.inline("09:06:00", forged, "forward", label="forged copy of the AD1")
    s.inline("09:06:20", f.ad1(ch, mpan, t("09:03:45"), t("09:06:00"), 1171), "suppress", "activation-window",
             label="genuine AD1")  # fmt: skip
    return s


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    world = World.generated()
    imm = immediate_activation(world)
    fd = future_dated_8f66_after_ad1(world)
    forged = _forged_scenario(world)
    big = []
    for n in (172, 173):
        _, ch, mpan = world.meter(n)
        big.append(world.factory.ad1(ch, mpan, imm.t("11:00"), imm.t("11:03"), 1100 + n))
    lab = Lab(world, imm, fd, forged, big)
    lab.refs = world.write_reference(tmp_path_factory.mktemp("refs"))  # after every meter is made
    return lab


def _write(path: Path, connections: list[Connection], fmt: str = "pcapng") -> Path:
    with CaptureWriter(path, fmt) as w:  # type: ignore[arg-type]
        w.write_connections(connections)
    return path


def _lane_path(lane: str) -> str:
    return INLINE if lane == "inline" else "/duis/observe"


def _replay(lab: Lab, tmp: Path, *inputs: Path, extra: tuple[str, ...] = ()) -> tuple[int, list[dict[str, Any]]]:
    out = tmp / "out.jsonl"
    rc = main(["replay", *map(str, inputs), *lab.args(), "--jsonl", str(out), *extra])
    lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    return rc, lines


# ------------------------------------------------------------------------------ time going backwards


def _merged_capture(lab: Lab, tmp: Path, scenario: Scenario) -> Path:
    """The DNO-bound traffic captured on one interface, the observed traffic on another, the two files
    concatenated (as ``mergecap -a`` or ``cat`` of two pcapng files make): the second half of the file
    is earlier than the first."""
    parts = []
    for lane, port in (("inline", 41001), ("observe", 41002)):
        ex = [Exchange(_lane_path(lane), st.body, st.at) for st in scenario.steps if st.lane == lane]
        parts.append(_write(tmp / f"{lane}.pcapng", [Connection(tuple(ex), client=("10.0.0.2", port))]))
    merged = tmp / "merged.pcapng"
    merged.write_bytes(b"".join(p.read_bytes() for p in parts))
    return merged


def test_a_capture_whose_time_goes_backwards_is_replayed_in_arrival_time_order(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # in file order the AD1 and the restoration were decided before the activation they follow had been
    # read: both forwarded to the DNO, an outage that never was
    merged = _merged_capture(lab, tmp_path, lab.imm)
    rc, lines = _replay(lab, tmp_path, merged)
    assert rc == 0
    expected = {str(e["message_id"]): (e["decision"], e["reason"]) for e in lab.imm.expected()}
    assert {x["message_id"]: (x["decision"], x["reason"]) for x in lines} == expected
    err = capsys.readouterr().err
    assert "reordered" in err and "2 of the capture's requests came in the file after a later one" in err


def test_a_capture_in_time_order_keeps_the_order_in_which_the_gateway_acknowledged_the_requests(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = [Exchange(_lane_path(st.lane), st.body, st.at) for st in lab.imm.steps]
    rc, lines = _replay(lab, tmp_path, _write(tmp_path / "c.pcapng", [Connection(tuple(ex))]))
    assert rc == 0
    assert [x["message_id"] for x in lines] == [str(e["message_id"]) for e in lab.imm.expected()]
    assert "reordered" not in capsys.readouterr().err


def test_a_reordered_capture_larger_than_the_memory_spool_is_replayed_from_its_temporary_file(
    lab: Lab, tmp_path: Path
) -> None:
    from gateway.replay import IngressLimits, InputMessage, _iter_capture, _read_capture, _time_ordered

    merged = _merged_capture(lab, tmp_path, lab.imm)
    in_memory = list(_iter_capture(merged, IngressLimits()))
    spooled = list(_time_ordered(_read_capture(merged, IngressLimits()), merged.name, memory=1))
    assert spooled == in_memory
    times = [x.time for x in spooled if isinstance(x, InputMessage)]
    assert times == sorted(times) and len(times) == len(lab.imm.steps)


# ------------------------------------------------------------------------------ requests lost in a gap


def _gap_capture(lab: Lab, tmp: Path) -> Path:
    """One connection with two AD1s whose second segment the capture missed: the first AD1 is damaged,
    the second comes after the gap; the observed traffic on another connection is whole."""
    t0 = lab.imm.t("11:03")
    inline = Connection((Exchange(INLINE, lab.big[0], t0), Exchange(INLINE, lab.big[1], t0 + timedelta(seconds=2))),
                        client=("10.0.0.2", 41001), impairments=Impairments(drop=frozenset({1})))  # fmt: skip
    return _write(tmp / "gap.pcapng", [inline])


def test_requests_lost_in_a_tcp_gap_each_get_a_lost_line_and_are_counted(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, lines = _replay(lab, tmp_path, _gap_capture(lab, tmp_path))
    assert rc == 0
    lost = [x for x in lines if x["decision"] == "lost"]
    assert [(x["reason"], x["lane"], x["requests"]) for x in lost] == [("gap", "inline", 1), ("untrusted", None, 1)]
    damaged = lost[0]
    assert damaged["message_id"].startswith("lost:gap.pcapng:10.0.0.2:41001 -> ")
    assert damaged["bytes_seen"] > 0 and damaged["first_byte_time"] == "2026-03-02T11:03:00Z"
    assert damaged["decided_at"] is not None
    err = capsys.readouterr().err
    assert "lost 2" in err and "the capture is incomplete: 2 requests" in err


async def test_a_live_replay_gives_a_line_to_requests_lost_in_a_tcp_gap(lab: Lab, tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        proc = await asyncio.to_thread(_cli, "replay", str(_gap_capture(lab, tmp_path)), "--target",
                                       f"http://127.0.0.1:{port}", "--speed", "0")  # fmt: skip
    finally:
        await runner.cleanup()
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [(x["status"], x.get("lost"), x["requests"]) for x in lines] == [(None, "gap", 1), (None, "untrusted", 1)]
    assert seen == []
    assert "the capture is incomplete: 2 requests" in proc.stderr


# ------------------------------------------------------------------------------ held, then decided (live)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.slow
async def test_a_live_replay_reports_the_final_decision_of_a_message_the_gateway_held(
    lab: Lab, tmp_path: Path
) -> None:
    # the AD1 is held (its activation is future-dated, no outcome yet); the 8F66 that comes after it on
    # the observation lane releases it, suppressed: that decision is answered to no POST
    ex = [Exchange(_lane_path(st.lane), st.body, st.at) for st in lab.fd.steps]
    capture = _write(tmp_path / "fd.pcap", [Connection(tuple(ex))], "pcap")
    dno = Receiver()
    await dno.start()
    port, admin = free_port(), free_port()
    config = write_config(tmp_path / "gateway.toml", port=port, admin_port=admin, reference=lab.refs,
                          destinations=[{"name": "dno-a", "user": DNO_USER, "url": dno.url}])  # fmt: skip
    gw = GatewayProcess(config, admin)
    gw.start()
    try:
        await gw.wait_ready()
        proc = await asyncio.to_thread(_cli, "replay", str(capture), "--target", f"http://127.0.0.1:{port}",
                                       "--speed", "0", "--gateway-config", str(config), "--quiet")  # fmt: skip
    finally:
        assert gw.terminate() == 0, gw.log_tail()
        await dno.stop()
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    ad1 = next(x for x in lines if x["lane"] == "inline" and x.get("status") == 202)
    assert ad1["decision"] == "hold"
    final = lines[-1]
    assert final["message_id"] == ad1["message_id"]
    assert (final["final"], final["action"], final["reason"]) == ("suppress", "release-suppress", "fd-confirmed")
    assert final["decided_at"] == "2026-03-02T10:36:00.000015Z"  # the 8F66's arrival
    assert dno.log == []  # suppressed: nothing delivered


def test_a_gateway_config_without_a_target_exits_2(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, lines = _replay(lab, tmp_path, tmp_path, extra=("--gateway-config", str(tmp_path / "g.toml")))
    err = capsys.readouterr().err
    # refused for that combination (not for the missing g.toml or another unusable input), in one line, and
    # before anything is decided
    assert rc == 2 and lines == []
    assert err.strip().splitlines() == [
        "duisgw replay: --gateway-config reads a live gateway's decisions: only with --target URL"
    ], err


# ------------------------------------------------------------------------------ the report's memory


def _rows(n: int) -> list[tuple[Mark, Window, DecisionRow, VerifyFailure]]:
    t0 = datetime(2026, 3, 2, 9)
    out = []
    for i in range(n):
        dev = f"00-DB-00-00-00-{i // 65536:02X}-{i // 256 % 256:02X}-{i % 256:02X}"
        t = t0 + timedelta(seconds=i)
        mid = f"90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:{1000 + i}|DCCAlertMessage.AD1"
        out.append((Mark(dev, t, "ad1", mid[:60], "suppress"), Window(dev, t - timedelta(minutes=5), t),
                    DecisionRow(mid, "DCCAlertMessage.AD1", "suppress", "activation-window", False, dev, t),
                    VerifyFailure(mid, "AD1", "xml-signature-invalid", "x" * 100)))  # fmt: skip
    return out


def test_the_report_of_a_long_replay_keeps_only_what_it_shows_and_renders_the_same() -> None:
    rows = _rows(5000)
    full = ReportData("r", "s", [m for m, _, _, _ in rows], [w for _, w, _, _ in rows],
                      [d for _, _, d, _ in rows], [f for _, _, _, f in rows])  # fmt: skip
    bounded = ReportData("r", "s")
    for m, w, d, f in rows:
        bounded.add_mark(m)
        bounded.add_window(w)
        bounded.add_decision(d)
        bounded.add_failure(f)
    assert len(bounded.decisions) == 2000 and len(bounded.verify_failures) == 2000
    assert len(bounded.marks) == 60
    assert render_html(bounded) == render_html(full)


def test_the_report_data_of_200k_messages_stays_small() -> None:
    rows = _rows(200_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        data = ReportData("r", "s")
        for m, w, d, f in rows:
            data.add_mark(m)
            data.add_window(w)
            data.add_decision(d)
            data.add_failure(f)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # what grows is the device set for the "N more devices" count (200,000 distinct devices here), not
    # the rows: about 20 MB before for the rows' references alone, now the set
    assert grown < 16 << 20, grown
    assert "first 2000 of 200000 decisions listed" in render_html(data)


# ------------------------------------------------------------------------------ unsigned DNO-bound steps


def test_a_scenario_names_an_inline_message_that_does_not_verify_by_the_id_the_gateway_decides_it_under(
    lab: Lab, tmp_path: Path
) -> None:
    s = lab.forged
    ids = [str(e["message_id"]) for e in s.expected()]
    assert len(ids) == 2 and ids[0].startswith(ids[1] + "#unverified:")
    got = replay(s, tmp_path, "--workers", "1")
    assert set(got) == set(ids)
    check_expected(s, got)  # the forged copy forwarded, the genuine AD1 suppressed
