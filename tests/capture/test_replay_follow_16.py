"""``duisgw replay --follow CAPTURE`` review 16: a capture replayed while it is being written (``tcpdump -w``),
each request decided as soon as the reader gives it, a record the file's end cuts waited for rather than taken
as damage, ended by SIGINT/SIGTERM or ``--idle`` as a capture's end ends it; and the first decision of a
large capture no longer waiting for the pass over its packet headers to reach the end of the file."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import gateway.replay as replay_module
from gateway.capture.reader import CapturedRequest, CaptureReader, FlowReport, Follow
from gateway.capture.writer import Connection, Exchange
from gateway.cli import main
from gateway.replay import (
    IngressLimits,
    InputMessage,
    InputProblem,
    _iter_capture,
    _read_capture,
)
from tests.capture.test_replay_review_14 import INLINE, Lab, _lane_path, _replay, _write, lab  # noqa: F401
from tests.capture.test_replay_streaming_15 import (
    T0,
    _body,
    _skewed,
    _whole_file_order,
    _without_notice,
)

PROJECT = Path(__file__).resolve().parents[2]
SERVER_PORT = 8080  # the writer's default server port


# ------------------------------------------------------------------------------ a capture and its records


def _client_port(frame: bytes) -> int:
    """The client's port of an Ethernet/IPv4 TCP frame."""
    ihl = (frame[14] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    return dport if sport == SERVER_PORT else sport


def _records(path: Path) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A capture the writer wrote (pcap, or pcapng), as its header (pcapng: its section and interface
    blocks) and its packet records, each with the client port of its connection."""
    data = path.read_bytes()
    recs: list[tuple[int, bytes]] = []
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        pos, head = 0, b""
        while pos < len(data):
            btype, blen = struct.unpack_from("<II", data, pos)
            block = data[pos : pos + blen]
            if btype == 6:
                recs.append((_client_port(block[28:]), block))
            else:
                assert not recs, "only packet blocks after the header"
                head += block
            pos += blen
        return head, recs
    assert data[:4] == b"\xd4\xc3\xb2\xa1", "a little-endian microsecond pcap"
    pos = 24
    while pos < len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        rec = data[pos : pos + 16 + caplen]
        recs.append((_client_port(rec[16:]), rec))
        pos += 16 + caplen
    return data[:24], recs


def _capture(lab: Lab, tmp: Path, fmt: str) -> Path:  # noqa: F811 - the fixture imported above
    """The immediate activation (its 11.3 request and response, the AD1 and the 8F36: suppressed) on one
    keep-alive connection (client port 41001), then, two hours later on another connection (41002), an AD1
    of a meter without activation (forwarded), and on a third (41003) another one."""
    imm = tuple(Exchange(_lane_path(st.lane), st.body, st.at) for st in lab.imm.steps)
    t = lab.imm.t("11:03")
    return _write(
        tmp / f"source.{fmt}",
        [
            Connection(imm, client=("10.0.0.2", 41001)),
            Connection((Exchange(INLINE, lab.big[0], t),), client=("10.0.0.3", 41002)),
            Connection((Exchange(INLINE, lab.big[1], t + timedelta(minutes=2)),), client=("10.0.0.4", 41003)),
        ],
        fmt,
    )


def _append(path: Path, data: bytes, piece: int = 1000, pause: float = 0.01) -> None:
    """Append ``data`` to ``path`` as a capture tool writes it: ``piece`` bytes at a time (cutting records
    anywhere), each flushed, ``pause`` seconds apart."""
    with path.open("ab") as f:
        for i in range(0, len(data), piece):
            f.write(data[i : i + piece])
            f.flush()
            time.sleep(pause)


def _follow(lab: Lab, path: Path, out: Path, *extra: str) -> subprocess.Popen[str]:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    args = [
        sys.executable,
        "-m",
        "gateway",
        "replay",
        str(path),
        "--follow",
        *lab.args(),
        "--jsonl",
        str(out),
    ]
    return subprocess.Popen(
        [*args, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _lines(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    text = out.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


def _wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"the replay ended (exit {proc.returncode}) before {what}: {proc.stderr.read()}"
            )  # type: ignore[union-attr]
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.05)


def _decided(out: Path) -> set[str]:
    return {str(x["message_id"]) for x in _lines(out)}


def _ids(lines: list[dict[str, Any]]) -> list[str]:
    return [str(x["message_id"]) for x in lines]


# ------------------------------------------------------------------------------ 1. following


@pytest.mark.parametrize(
    ("fmt", "sig"),
    [("pcap", signal.SIGINT), ("pcapng", signal.SIGTERM)],
    ids=["pcap-SIGINT", "pcapng-SIGTERM"],
)
def test_a_followed_capture_is_decided_while_it_is_written_and_a_signal_ends_it_as_its_end_would(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    fmt: str,
    sig: signal.Signals,
) -> None:
    # the fifteenth session read a capture to its end first; a file still being written was read to where the
    # writer had got, the record it was writing taken as damage (truncated-file), and then the replay ended
    source = _capture(lab, tmp_path, fmt)
    head, recs = _records(source)
    first = b"".join(r for port, r in recs if port == 41001)
    second = [r for port, r in recs if port == 41002]
    _, reference = _replay(lab, tmp_path, _finished(tmp_path, head, first + b"".join(second), fmt))
    imm_ids = {str(e["message_id"]) for e in lab.imm.expected()}
    assert imm_ids < set(_ids(reference)) and len(reference) == len(imm_ids) + 1
    live = tmp_path / f"live.{fmt}"
    live.write_bytes(head[:10])  # not even the file's header whole yet
    out = tmp_path / "follow.jsonl"
    proc = _follow(lab, live, out)
    try:
        time.sleep(0.3)
        _append(live, head[10:])
        _append(live, first)
        # the writer has not finished: the first connection's decisions are out
        _wait_for("decision of the first connection", lambda: imm_ids <= _decided(out), proc)
        assert len(_lines(out)) == len(imm_ids)
        time.sleep(1.0)  # a pause: the next connection's request comes later
        data = next(i for i, r in enumerate(second) if b"POST " in r)
        _append(live, b"".join(second[:data]))
        with live.open("ab") as f:  # the record carrying the request's head, in two writes
            f.write(second[data][:60])
            f.flush()
            time.sleep(0.6)
            f.write(second[data][60:])
            f.flush()
        _append(live, b"".join(second[data + 1 :]))
        _wait_for("decision of the second connection", lambda: set(_ids(reference)) <= _decided(out), proc)
        proc.send_signal(sig)
        _stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = _lines(out)
    assert lines == reference  # each request decided once, as a replay of the finished file decides it
    assert f"following {live} ended: {sig.name}" in err
    assert "truncated-file" not in err  # the record written in two pieces was waited for


def _finished(tmp: Path, head: bytes, records: bytes, fmt: str) -> Path:
    path = tmp / f"finished.{fmt}"
    path.write_bytes(head + records)
    return path


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_a_signal_while_a_record_is_half_written_decides_every_complete_request_once(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    fmt: str,
) -> None:
    source = _capture(lab, tmp_path, fmt)
    head, recs = _records(source)
    whole = b"".join(r for port, r in recs if port in (41001, 41002))
    third = [r for port, r in recs if port == 41003]
    data = next(i for i, r in enumerate(third) if b"POST " in r)
    cut = b"".join(third[:data]) + third[data][:100]  # the third connection's request: its first record cut
    live = tmp_path / f"live.{fmt}"
    live.write_bytes(b"")
    out = tmp_path / "follow.jsonl"
    proc = _follow(lab, live, out)
    try:
        _append(live, head + whole + cut, piece=4000)
        _, complete = _replay(lab, tmp_path, _finished(tmp_path, head, whole, fmt))
        _wait_for("decisions of the complete requests", lambda: set(_ids(complete)) <= _decided(out), proc)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = _lines(out)
    assert lines == complete and len(set(_ids(lines))) == len(lines) == 3
    assert "following ended (SIGINT) at byte " in err  # the half-written record: named, not decided
    assert live.stat().st_size == len(head + whole + cut)


def test_idle_ends_the_following_once_the_file_has_stopped_growing_and_the_run_writes_what_it_writes_at_its_end(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    source = _capture(lab, tmp_path, "pcapng")
    _, reference = _replay(lab, tmp_path, source)
    live = tmp_path / "live.pcapng"
    live.write_bytes(b"")
    out, state, html = tmp_path / "follow.jsonl", tmp_path / "state.db", tmp_path / "report.html"
    proc = _follow(lab, live, out, "--idle", "1.5", "--state", str(state), "--html", str(html))
    try:
        _append(live, source.read_bytes(), piece=3000, pause=0.02)
        _stdout, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert _lines(out) == reference
    assert f"following {live} ended: no growth for 1.5 s" in err
    # the report and the state, as a replay of the finished file writes them
    assert html.read_text().startswith("<!DOCTYPE html>") and "duisgw replay" in html.read_text()
    rc, again = _replay(lab, tmp_path, source, extra=("--state", str(state)))
    assert rc == 0 and [x.get("duplicate") for x in again] == [True] * len(reference)


def test_a_followed_file_read_by_the_reader_gives_a_mark_each_time_it_has_read_what_is_written(
    tmp_path: Path,
) -> None:
    # the reader itself: a record cut by the end of what is written is waited for, not reported
    ex = tuple(Exchange("/duis/observe", _body(i, 3000), T0 + timedelta(seconds=i)) for i in range(3))
    head, recs = _records(_write(tmp_path / "src.pcap", [Connection(ex, client=("10.0.0.2", 41001))], "pcap"))
    live = tmp_path / "live.pcap"
    live.write_bytes(head + b"".join(r for _, r in recs[:5]) + recs[5][1][:30])
    follow = Follow(poll=0.01)
    items = CaptureReader(live, pair_responses=False, follow=follow).following()
    got: list[object] = []
    while (item := next(items)) is not None:
        got.append(item)
    assert got == []  # the handshake and the first segments: nothing complete, nothing damaged
    with live.open("ab") as f:
        f.write(recs[5][1][30:] + b"".join(r for _, r in recs[6:]))
    rest: list[object] = []
    while (item := next(items)) is not None:  # the rest of the record, then the records after it
        rest.append(item)
    follow.stop("test")
    rest += list(items)  # (the connection's end: nothing more is read once the following has ended)
    assert all(isinstance(x, CapturedRequest) for x in rest)  # no report at all: no damage
    assert [x.body for x in rest if isinstance(x, CapturedRequest)] == [e.body for e in ex]


def test_a_stop_ends_the_following_at_once_and_names_what_was_not_read(tmp_path: Path) -> None:
    # a replay catching up on a long capture is stopped: it ends now (what it has read is decided), not once
    # it has read all the file holds
    ex = tuple(Exchange("/duis/observe", _body(i, 3000), T0 + timedelta(seconds=i)) for i in range(3))
    path = _write(tmp_path / "live.pcap", [Connection(ex, client=("10.0.0.2", 41001))], "pcap")
    follow = Follow(poll=0.01)
    items = CaptureReader(path, pair_responses=False, follow=follow).following()
    first = next(items)
    assert isinstance(first, CapturedRequest) and first.body == ex[0].body
    follow.stop("SIGINT")
    rest = list(items)
    assert not any(isinstance(x, CapturedRequest) for x in rest)
    cut = [x for x in rest if isinstance(x, FlowReport) and x.code == "truncated-file"]
    assert len(cut) == 1 and cut[0].detail.startswith("following ended (SIGINT) at byte ")
    assert "(records not read by then, or one still being written) are not read" in cut[0].detail
    assert "truncated-flow" in [x.code for x in rest if isinstance(x, FlowReport)]


@pytest.mark.parametrize(
    ("inputs", "options", "why"),
    [
        (("{a}", "{b}"), (), "--follow reads one capture file as it is written; 2 inputs were given"),
        (("{dir}",), (), "--follow reads a capture file (.pcap, .pcapng) as it is written;"),
        (("{script}",), (), "--follow reads a capture file (.pcap, .pcapng) as it is written;"),
        (("{gz}",), (), "a gzipped capture cannot be followed as it is written"),
        (("{a}",), ("--workers", "4"), "--workers must be 1"),
        (("{a}",), ("--idle", "0"), "--idle must be a number of seconds > 0"),
    ],
)
def test_follow_refuses_what_it_cannot_follow_with_one_line(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    inputs: tuple[str, ...],
    options: tuple[str, ...],
    why: str,
) -> None:
    ex = (Exchange("/duis/observe", _body(1, 600), T0),)
    a = _write(tmp_path / "a.pcap", [Connection(ex)], "pcap")
    b = _write(tmp_path / "b.pcap", [Connection(ex)], "pcap")
    (tmp_path / "dir").mkdir()
    script = tmp_path / "s.jsonl"
    script.write_text("")
    gz = tmp_path / "c.pcap"
    gz.write_bytes(gzip.compress(a.read_bytes()))
    names = {"a": a, "b": b, "dir": tmp_path / "dir", "script": script, "gz": gz}
    out = tmp_path / "out.jsonl"
    rc = main(
        [
            "replay",
            *(x.format(**names) for x in inputs),
            "--follow",
            *lab.args(),
            "--jsonl",
            str(out),
            *options,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and why in err and len(err.strip().splitlines()) == 1


def test_idle_without_follow_is_refused(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a = _write(tmp_path / "a.pcap", [Connection((Exchange("/duis/observe", _body(1, 600), T0),))], "pcap")
    rc = main(["replay", str(a), "--idle", "5", *lab.args()])
    assert rc == 2 and "--idle ends a --follow: only with --follow" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 2. the pass over the headers


def test_a_finished_capture_is_replayed_in_the_order_of_the_whole_file_wherever_two_captures_were_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a finished file's pass walks it whole before its first message: the order does not depend on where two
    # captures concatenated in the wrong order were joined (the bounded pass, kept only for a followed file, is
    # not used: even a tiny one changes nothing here)
    monkeypatch.setattr(replay_module, "SCAN_AHEAD", 4 << 10)
    path = _cat_merged(tmp_path, 200)
    whole = _whole_file_order(_read_capture(path, IngressLimits()))
    got = list(_iter_capture(path, IngressLimits()))
    assert _without_notice(got) == _without_notice(whole)
    notice = [x for x in got if isinstance(x, InputProblem) and x.code == "reordered"]
    assert len(notice) == 1 and "after a later one had been replayed" not in notice[0].detail


@pytest.mark.parametrize("shape", ["skewed-10ms", "skewed-2s"])
def test_a_followed_capture_whose_pass_is_kept_a_little_ahead_still_gives_the_order_of_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    # the clocks of two interfaces differ from the start: the pass finds it ahead of the reader
    monkeypatch.setattr(replay_module, "SCAN_AHEAD", 64 << 10)
    skew = timedelta(milliseconds=10 if shape == "skewed-10ms" else 2000)
    path = _skewed(tmp_path, skew, per_side=300, size=2000)
    assert path.stat().st_size > 16 * (64 << 10)
    whole = _whole_file_order(_read_capture(path, IngressLimits()))
    assert _without_notice(_followed_to_its_end(path)) == _without_notice(whole)


def test_a_followed_capture_stepping_back_beyond_its_pass_further_than_it_covers_is_named_in_the_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the limit of a bounded pass (a followed file only): two captures concatenated, the second an hour earlier,
    # the join further ahead than the pass is kept: the first file's requests read before the pass found the
    # join are replayed before the second file's, and the notice says how many came too late for their place
    monkeypatch.setattr(replay_module, "SCAN_AHEAD", 4 << 10)
    path = _cat_merged(tmp_path, 200)
    got = _followed_to_its_end(path)
    notice = [x for x in got if isinstance(x, InputProblem) and x.code == "reordered"]
    assert len(notice) == 1 and "after a later one had been replayed" in notice[0].detail
    assert sum(isinstance(x, InputMessage) for x in got) == 400
    # with the pass kept far enough ahead, the whole file's order
    monkeypatch.setattr(replay_module, "SCAN_AHEAD", 64 << 20)
    whole = _whole_file_order(_read_capture(path, IngressLimits()))
    assert _without_notice(_followed_to_its_end(path)) == _without_notice(whole)


def _followed_to_its_end(path: Path) -> list[InputMessage | InputProblem]:
    """The items of ``path`` (finished) replayed as a followed file: read to its end, then stopped."""
    follow = Follow(poll=0.01)
    items = replay_module.follow_capture([path], follow)
    got: list[InputMessage | InputProblem] = []
    while (item := next(items)) is not None:
        got.append(item)
    follow.stop("test")
    return got + [x for x in items if x is not None]


def _cat_merged(tmp: Path, n: int) -> Path:
    """Two captures of ``n`` requests concatenated (``cat`` of two pcapng files): the second, an hour
    earlier, after the first."""
    parts = []
    for k, start in enumerate((T0 + timedelta(hours=1), T0)):
        ex = tuple(
            Exchange("/duis/observe", _body(k * 1000 + i, 600), start + timedelta(seconds=i))
            for i in range(n)
        )
        parts.append(_write(tmp / f"part{k}.pcapng", [Connection(ex, client=("10.0.0.2", 44000 + k))]))
    merged = tmp / "cat.pcapng"
    merged.write_bytes(b"".join(p.read_bytes() for p in parts))
    return merged


def test_a_followed_capture_is_held_only_for_the_steps_back_its_packets_make(
    tmp_path: Path,
) -> None:
    # a followed capture with two interfaces' clocks 10 ms apart, read to the end written so far: what the
    # window allows is given before the reader waits, and the order is the one of the whole file
    path = _skewed(tmp_path, timedelta(milliseconds=10), per_side=40, size=600)
    whole = _whole_file_order(_read_capture(path, IngressLimits()))
    follow = Follow(poll=0.01)
    items = replay_module.follow_capture([path], follow)
    before_wait: list[InputMessage | InputProblem] = []
    while (item := next(items)) is not None:
        before_wait.append(item)
    messages = [x for x in whole if isinstance(x, InputMessage)]
    assert len([x for x in before_wait if isinstance(x, InputMessage)]) >= len(messages) - 2
    follow.stop("test")
    rest = [x for x in items if x is not None]
    assert _without_notice(before_wait + rest) == _without_notice(whole)
