"""``duisgw replay NAME --follow --rotated`` (session 17): a capture its writer rotates (``tcpdump -C``/``-G``/``-W``,
``dumpcap -b``) followed file after file as it is written, a connection that goes on from one file into the next
reassembled as one, a file a ring buffer deleted or overwrote before it was read named (``file-lost``) and counted,
SIGINT/SIGTERM/``--idle`` ending it as they end a followed file; and ``--follow`` with ``--target``."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.capture.reader import CapturedRequest, CaptureReader, FlowReport, Follow
from gateway.capture.rotation import RotatedFile, Rotation, RotationNameError, classify_names
from gateway.capture.writer import Connection, Exchange
from gateway.cli import main
from tests.capture.test_replay_follow_16 import _capture, _lines, _records, _wait_for
from tests.capture.test_replay_review_14 import INLINE, PROJECT, Lab, _lane_path, _replay, _write, lab  # noqa: F401
from tests.capture.test_replay_streaming_15 import T0, _body

# ------------------------------------------------------------------------------ helpers


def _posts(recs: list[tuple[int, bytes]]) -> list[int]:
    """The indices of the records that carry the start of a request."""
    return [i for i, (_port, r) in enumerate(recs) if b"POST /duis/" in r]


def _parts(recs: list[tuple[int, bytes]], cuts: list[int]) -> list[bytes]:
    """The records cut into files at the given record indices."""
    bounds = [0, *cuts, len(recs)]
    return [b"".join(r for _p, r in recs[a:b]) for a, b in itertools.pairwise(bounds)]


def _write_pieces(path: Path, data: bytes, piece: int = 1500, pause: float = 0.002) -> None:
    with path.open("ab") as f:
        for i in range(0, len(data), piece):
            f.write(data[i : i + piece])
            f.flush()
            time.sleep(pause)


def _rotate(
    files: list[tuple[Path, bytes]], piece: int = 1500, pause: float = 0.002, gap: float = 0.0
) -> None:
    """Write ``files`` as a rotating capture tool writes them: one after the other, each in pieces (records cut
    anywhere), the next one created once the one before it is written whole."""
    for path, data in files:
        _write_pieces(path, data, piece, pause)
        time.sleep(gap)


def _follow_items(
    name: Path, writer: Callable[[], None] | None = None, idle: float = 1.0
) -> list[CapturedRequest | FlowReport]:
    """The items of the rotated capture written with ``-w name`` read as it is written (``writer``, in a thread),
    until it has not grown for ``idle`` seconds."""
    follow = Follow(poll=0.01, idle=idle)
    thread = threading.Thread(target=writer) if writer is not None else None
    if thread is not None:
        thread.start()
    try:
        reader = CaptureReader(Rotation(name), pair_responses=False, follow=follow)
        return [x for x in reader.following() if x is not None]
    finally:
        if thread is not None:
            thread.join()


def _finished(paths: list[Path]) -> list[CapturedRequest | FlowReport]:
    return list(CaptureReader(paths, pair_responses=False))


def _requests(items: list[Any]) -> list[CapturedRequest]:
    return [x for x in items if isinstance(x, CapturedRequest)]


def _reports(items: list[Any]) -> list[FlowReport]:
    return [x for x in items if isinstance(x, FlowReport)]


def _source(
    tmp: Path, n: int = 9, size: int = 5000, fmt: str = "pcapng"
) -> tuple[bytes, list[tuple[int, bytes]]]:
    """One keep-alive connection of ``n`` requests (bodies of ``size`` bytes: four segments each), as a header and
    its records."""
    ex = tuple(Exchange("/duis/observe", _body(i, size), T0 + timedelta(seconds=i)) for i in range(n))
    return _records(_write(tmp / f"src.{fmt}", [Connection(ex, client=("10.0.0.2", 41001))], fmt))


# ------------------------------------------------------------------------------ 1. the names of a rotated capture


def test_tcpdump_count_names_are_ordered_by_their_count_not_their_name() -> None:
    kind, files = classify_names(
        "cap.pcap", ["cap.pcap", "cap.pcap10", "cap.pcap2", "cap.pcap1", "other", "cap.pcapx"]
    )
    assert kind == "tcpdump"
    assert sorted(files, key=lambda n: files[n][0]) == ["cap.pcap", "cap.pcap1", "cap.pcap2", "cap.pcap10"]


def test_a_tcpdump_ring_is_told_by_its_padded_count_and_dumpcap_names_by_their_file_number() -> None:
    assert classify_names("cap.pcap", ["cap.pcap00", "cap.pcap01", "cap.pcap11"])[0] == "tcpdump-ring"
    assert classify_names("cap.pcap", ["cap.pcap0", "cap.pcap1"])[0] == "tcpdump-ring"
    kind, files = classify_names(
        "ring.pcapng",
        [
            "ring_00002_20261124153001.pcapng",
            "ring_20261124153000_00001.pcapng",
            "ring.pcapng.txt",
            "ring_1_x.pcapng",
        ],
    )
    assert kind == "dumpcap" and {n: v[1] for n, v in files.items()} == {
        "ring_00002_20261124153001.pcapng": 2,
        "ring_20261124153000_00001.pcapng": 1,
    }


def test_tcpdump_time_names_are_ordered_by_the_time_in_them_then_by_their_count() -> None:
    names = [
        "n-20261124153000.pcap1",
        "n-20261124152959.pcap",
        "n-20261124153000.pcap",
        "n-20261124153000.pcap10",
    ]
    kind, files = classify_names("n-%Y%m%d%H%M%S.pcap", names)
    assert kind == "tcpdump-time"
    assert sorted(files, key=lambda n: files[n][0]) == [
        "n-20261124152959.pcap",
        "n-20261124153000.pcap",
        "n-20261124153000.pcap1",
        "n-20261124153000.pcap10",
    ]
    assert classify_names("n-%F_%T.pcap", ["n-2026-11-24_15:30:00.pcap"])[0] == "tcpdump-time"
    with pytest.raises(RotationNameError, match="%a does not say in which order"):
        classify_names("n-%a.pcap", [])


def test_files_of_both_namings_for_one_name_are_refused() -> None:
    with pytest.raises(RotationNameError, match="both there"):
        classify_names("ring.pcapng", ["ring.pcapng", "ring_00001_20261124153000.pcapng"])


def _rf(name: str, key: tuple[int, ...], number: int | None, mtime: int = 0) -> RotatedFile:
    return RotatedFile(Path(name), key, number, 0, mtime, 0)


def test_the_file_after_the_one_read_is_the_next_one_written_and_those_gone_between_are_named_lost() -> None:
    rot = Rotation("/nowhere/ring.pcapng")
    rot.kind = "dumpcap"
    one, two, three, four = (_rf(f"ring_{n:05d}_20261124153000.pcapng", (n,), n) for n in (1, 2, 3, 4))
    assert rot.first([two, one]) is one
    assert rot.successor(one, 0, [one]) == (None, [])  # not started yet: the current one is not finished
    assert rot.successor(one, 0, [one, two, three]) == (two, [])
    # the ring deleted 2 and 3 (seen) before their turn, and 5 was never seen: all named
    six = _rf("ring_00006_20261124153000.pcapng", (6,), 6)
    assert rot.successor(one, 0, [one, four]) == (four, [two.name, three.name])
    assert rot.successor(four, 0, [six]) == (six, ["ring_00005_*.pcapng"])
    # dumpcap's numbers come round after 99999
    last, zero = (_rf(f"ring_{n:05d}_20261124153000.pcapng", (n,), n) for n in (99999, 0))
    assert rot.first([zero, last]) is last
    assert rot.successor(last, 0, [last, zero]) == (zero, [])


def test_tcpdump_time_files_seen_and_gone_before_their_turn_are_named_lost() -> None:
    rot = Rotation("/nowhere/n-%H%M%S.pcap")
    rot.kind = "tcpdump-time"
    a, b, c, d = (_rf(f"n-1530{s:02d}.pcap", (0, 0, 0, 0, 0, 15, 30, s, 0), None) for s in (0, 1, 2, 3))
    assert rot.first([a, b, c]) is a
    assert rot.successor(a, 0, [a, d]) == (d, [b.name, c.name])


def test_a_tcpdump_ring_goes_on_with_the_file_written_after_the_one_read_by_time_and_names_those_overwritten() -> (
    None
):
    rot = Rotation("/nowhere/cap.pcap")
    rot.kind = "tcpdump-ring"
    rot._numbers, rot._width = {0, 1, 2}, 1
    f0, f1, f2 = (_rf(f"cap.pcap{n}", (n,), n, mtime=m) for n, m in ((0, 300), (1, 100), (2, 200)))
    assert rot.first([f0, f1, f2]) is f1  # the oldest: the ring's writer is at 0
    assert rot.successor(f1, 100, [f0, f1, f2]) == (f2, [])
    assert rot.successor(f2, 200, [f0, f1, f2]) == (f0, [])  # round to 0
    f1_again = _rf("cap.pcap1", (1,), 1, mtime=400)
    assert rot.successor(f0, 300, [f0, f1_again, f2]) == (f1_again, [])
    assert rot.successor(f0, 300, [f0, f1_again, _rf("cap.pcap2", (2,), 2, mtime=500)]) == (f1_again, [])
    # 1 was overwritten before it was read (2 is the oldest written since 0): 1's earlier content is lost
    assert rot.successor(
        f0, 300, [f0, _rf("cap.pcap1", (1,), 1, mtime=600), _rf("cap.pcap2", (2,), 2, 500)]
    ) == (
        _rf("cap.pcap2", (2,), 2, 500),
        ["cap.pcap1"],
    )


# ------------------------------------------------------------------------------ 2. the reader


@pytest.mark.parametrize(
    ("fmt", "names"),
    [
        (
            "pcapng",
            [
                "ring_00001_20261124153000.pcapng",
                "ring_00002_20261124153005.pcapng",
                "ring_00003_20261124153009.pcapng",
            ],
        ),
        ("pcap", ["cap.pcap", "cap.pcap1", "cap.pcap2"]),
        ("pcap", ["n-20261124153000.pcap", "n-20261124153005.pcap", "n-20261124153010.pcap"]),
    ],
    ids=["dumpcap-b", "tcpdump-C", "tcpdump-G"],
)
def test_a_rotated_capture_is_followed_file_after_file_and_a_request_cut_by_the_rotation_is_one_request(
    tmp_path: Path, fmt: str, names: list[str]
) -> None:
    # before: --follow read one file; the next files were not read, and read file by file a request the rotation
    # cut was picked up midstream in the next file and lost
    head, recs = _source(tmp_path, fmt=fmt)
    posts = _posts(recs)
    cuts = [posts[2] + 1, posts[6] + 2]  # inside the third request, and inside the seventh
    parts = _parts(recs, cuts)
    finished = tmp_path / "finished"
    finished.mkdir()
    for n, part in zip(names, parts, strict=True):
        (finished / n).write_bytes(head + part)
    reference = _finished([finished / n for n in names])
    assert len(_requests(reference)) == 9 and _reports(reference) == []
    live = tmp_path / "live"
    live.mkdir()
    w = {"dumpcap-b": "ring.pcapng", "tcpdump-C": "cap.pcap", "tcpdump-G": "n-%Y%m%d%H%M%S.pcap"}
    w_name = w[
        "dumpcap-b" if names[0].startswith("ring") else "tcpdump-C" if names[0] == "cap.pcap" else "tcpdump-G"
    ]
    got = _follow_items(
        live / w_name, lambda: _rotate([(live / n, head + p) for n, p in zip(names, parts, strict=True)])
    )
    assert got == reference  # the same requests, each whole, and no report (no gap, no midstream pick-up)
    assert [x.file for x in _requests(got)][2] == names[1]  # the third completed in the second file


def test_the_reader_gives_a_mark_when_it_has_read_what_is_written_and_goes_on_when_the_next_file_starts(
    tmp_path: Path,
) -> None:
    head, recs = _source(tmp_path, n=4)
    posts = _posts(recs)
    parts = _parts(recs, [posts[2] + 1])
    a, b = tmp_path / "cap.pcapng", tmp_path / "cap.pcapng1"
    a.write_bytes(head + parts[0])
    follow = Follow(poll=0.01)
    items = CaptureReader(Rotation(tmp_path / "cap.pcapng"), pair_responses=False, follow=follow).following()
    first: list[object] = []
    while (item := next(items)) is not None:
        first.append(item)
    assert [type(x) for x in first] == [CapturedRequest] * 2  # the third: its first segment only, so far
    b.write_bytes(head + parts[1][:100])  # the writer started the next file: the first one is finished
    rest: list[object] = []
    while (item := next(items)) is not None:
        rest.append(item)
    b.write_bytes(head + parts[1])
    while (item := next(items)) is not None:
        rest.append(item)
    follow.stop("test")
    rest += [x for x in items if x is not None]
    assert [x.body for x in _requests(first + rest)] == [x.body for x in _requests(_finished([a, b]))]
    assert _reports(rest) == []


def test_a_file_deleted_by_a_ring_buffer_before_it_was_read_is_named_lost_and_the_next_ones_are_read(
    tmp_path: Path,
) -> None:
    # dumpcap -b files:N: the replay fell behind, 2 and 3 were deleted before their turn; the connections of 1 and
    # 4 are read, the files between are named (and what they held of a connection is a gap in it)
    files = []
    for n in range(1, 5):
        ex = tuple(
            Exchange("/duis/observe", _body(10 * n + i, 2000), T0 + timedelta(seconds=10 * n + i))
            for i in range(2)
        )
        files.append(
            _write(
                tmp_path / f"ring_{n:05d}_20261124153000.pcapng",
                [Connection(ex, client=("10.0.0.2", 41000 + n))],
            )
        )
    reference = _requests(_finished([files[0], files[3]]))
    files[1].unlink()
    files[2].unlink()
    got = _follow_items(tmp_path / "ring.pcapng", idle=0.5)
    assert [x.body for x in _requests(got)] == [x.body for x in reference]
    lost = [x for x in _reports(got) if x.code == "file-lost"]
    assert [x.file for x in lost] == ["ring_00002_*.pcapng", "ring_00003_*.pcapng"]
    assert all("before it was read" in x.detail and "its packets are lost" in x.detail for x in lost)


def test_a_file_deleted_while_it_is_read_is_read_to_its_end(tmp_path: Path) -> None:
    # a ring buffer deletes the oldest file when it starts a new one: the one the replay has open is still read
    head, recs = _source(tmp_path, n=6)
    posts = _posts(recs)
    parts = _parts(recs, [posts[3] + 1, posts[5] + 1])
    names = [tmp_path / f"ring_{n:05d}_20261124153000.pcapng" for n in (1, 2, 3)]
    half = len(parts[0]) // 2
    names[0].write_bytes(head + parts[0][:half])
    follow = Follow(poll=0.01, idle=0.5)
    items = CaptureReader(Rotation(tmp_path / "ring.pcapng"), pair_responses=False, follow=follow).following()
    got: list[Any] = []
    while (item := next(items)) is not None:
        got.append(item)
    with names[0].open("ab") as f:
        f.write(parts[0][half:])
    names[1].write_bytes(head + parts[1])
    names[2].write_bytes(head + parts[2])
    names[0].unlink()  # deleted while the reader has it open, before it read the rest
    got += [x for x in items if x is not None]
    assert len(_requests(got)) == 6 and _reports(got) == []


def test_a_tcpdump_ring_that_overwrites_the_file_being_read_says_what_was_lost_and_goes_on(
    tmp_path: Path,
) -> None:
    # tcpdump -C -W 3: the replay is a whole ring behind: the file it reads is overwritten (truncated and written
    # again); what it held after what was read is lost, named; the ring is read on in the order it was written
    head, recs = _source(tmp_path, n=8, fmt="pcap")
    posts = _posts(recs)
    parts = _parts(recs, [posts[2], posts[4], posts[6]])
    ring = [tmp_path / f"cap.pcap{n}" for n in range(3)]
    ring[0].write_bytes(head + parts[0])
    follow = Follow(poll=0.01, idle=0.5)
    items = CaptureReader(Rotation(tmp_path / "cap.pcap"), pair_responses=False, follow=follow).following()
    first = next(items)
    assert isinstance(first, CapturedRequest)
    for k, part in ((1, parts[1]), (2, parts[2]), (0, parts[3])):  # round the ring, over the file being read
        time.sleep(0.03)  # (distinct modification times)
        ring[k].write_bytes(head + part)
    got = [first, *(x for x in items if x is not None)]
    lost = [x for x in _reports(got) if x.code == "file-lost"]
    assert (
        len(lost) == 1
        and lost[0].file == "cap.pcap0"
        and "overwritten by the capture's ring buffer" in lost[0].detail
    )
    bodies = [x.body for x in _requests(got)]
    whole = [x.body for x in _requests(_finished([_keep(tmp_path, "all.pcap", head, b"".join(parts))]))]
    # the rest of the old 0 lost; 1, 2 and the new 0 read
    assert bodies[0] == whole[0] and bodies[-4:] == whole[-4:]


def _keep(tmp: Path, name: str, head: bytes, data: bytes) -> Path:
    (tmp / "keep").mkdir(exist_ok=True)
    path = tmp / "keep" / name
    path.write_bytes(head + data)
    return path


# ------------------------------------------------------------------------------ 3. duisgw replay --follow --rotated


def _follow_rotated(lab: Lab, name: Path, out: Path, *extra: str) -> subprocess.Popen[str]:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    args = [sys.executable, "-m", "gateway", "replay", str(name), "--follow", "--rotated", *lab.args(), "--jsonl",
            str(out), *extra]  # fmt: skip
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lab_rotation(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp: Path,
    fmt: str,
    names: list[str],
) -> tuple[list[tuple[str, bytes]], list[dict[str, Any]]]:
    """The lab's capture (the immediate activation on one keep-alive connection, then two AD1s on two more) cut
    into three files, the first cut inside the first connection's second request; and the lines of a replay of
    the three files once written (given together: read as one capture)."""
    source = _capture(lab, tmp, fmt)
    head, recs = _records(source)
    posts = [i for i in _posts(recs) if recs[i][0] == 41001]
    cuts = [posts[1] + 1, _posts(recs)[-1]]
    files = [(n, head + part) for n, part in zip(names, _parts(recs, cuts), strict=True)]
    done = tmp / "finished"
    done.mkdir()
    for n, data in files:
        (done / n).write_bytes(data)
    _rc, reference = _replay(lab, tmp, *(done / n for n, _ in files))
    return files, reference


@pytest.mark.parametrize(
    ("fmt", "w", "names", "sig"),
    [
        ("pcap", "cap.pcap", ["cap.pcap", "cap.pcap1", "cap.pcap2"], signal.SIGINT),
        ("pcapng", "ring.pcapng", [f"ring_{n:05d}_20261124153000.pcapng" for n in (1, 2, 3)], signal.SIGTERM),
    ],
    ids=["tcpdump-C-SIGINT", "dumpcap-b-SIGTERM"],
)
def test_a_rotated_capture_is_decided_while_it_is_written_and_a_signal_ends_it_as_its_end_would(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    fmt: str,
    w: str,
    names: list[str],
    sig: signal.Signals,
) -> None:
    files, reference = _lab_rotation(lab, tmp_path, fmt, names)
    imm_ids = {str(e["message_id"]) for e in lab.imm.expected()}
    assert imm_ids < {str(x["message_id"]) for x in reference} and len(reference) == len(imm_ids) + 2
    live = tmp_path / "live"
    live.mkdir()
    out = tmp_path / "follow.jsonl"
    proc = _follow_rotated(lab, live / w, out)
    try:
        time.sleep(0.3)  # the replay waits for the capture's first file
        _rotate([(live / n, data) for n, data in files])
        _wait_for("every decision", lambda: len(_lines(out)) >= len(reference), proc)
        proc.send_signal(sig)
        _stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert _lines(out) == reference  # each request decided once, as a replay of the finished files decides it
    assert f"following {live / w} ended: {sig.name}" in err
    assert "truncated-file" not in err and "midstream" not in err and "lost" not in err


def test_files_lost_before_they_were_read_get_a_line_each_and_are_counted_in_the_summary(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    names = [f"ring_{n:05d}_20261124153000.pcapng" for n in (1, 2, 3)]
    files, _ = _lab_rotation(lab, tmp_path, "pcapng", names)
    live = tmp_path / "live"
    live.mkdir()
    # the second was deleted by the ring buffer before the replay got to it
    for n, data in (files[0], files[2]):
        (live / n).write_bytes(data)
    kept = tmp_path / "kept"
    kept.mkdir()
    for n, data in (files[0], files[2]):
        (kept / n).write_bytes(data)
    _rc, reference = _replay(lab, tmp_path, *(kept / n for n in (names[0], names[2])))
    out = tmp_path / "follow.jsonl"
    html = tmp_path / "report.html"
    proc = _follow_rotated(lab, live / "ring.pcapng", out, "--idle", "1", "--html", str(html))
    _stdout, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    lines = _lines(out)
    lost = [x for x in lines if x["reason"] == "file-lost"]
    assert len(lost) == 1 and lost[0]["message_id"] == "lost:ring_00002_*.pcapng"
    assert (lost[0]["decision"], lost[0]["requests"], lost[0]["lane"]) == ("lost", None, None)
    assert "deleted or overwritten before it was read" in lost[0]["detail"]
    # the rest as a replay of the files that were there decides it (the connection the lost file cut short: the
    # requests it lost are lost lines of their own, a gap)
    assert [x for x in lines if x["reason"] != "file-lost"] == reference
    assert "files-lost 1" in err
    assert (
        "the capture is incomplete: 1 file of the rotated capture was deleted or overwritten before being read"
        in err
    )
    assert "ring_00002_*.pcapng: file-lost:" in err
    assert "file-lost" in html.read_text()


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("{live}/cap.pcap", "--rotated"), "--rotated names a capture being written (with --follow)"),
        (
            ("{live}/cap.pcap", "{live}/b.pcap", "--follow", "--rotated"),
            "the name a rotated capture is written with",
        ),
        (("{live}/nodir/cap.pcap", "--follow", "--rotated"), "no such directory"),
        (("{live}", "--follow", "--rotated"), "is a directory"),
        (
            ("{live}/n-%a.pcap", "--follow", "--rotated"),
            "the strftime directive %a does not say in which order",
        ),
        (("{mixed}/ring.pcapng", "--follow", "--rotated"), "both there"),
    ],
)
def test_rotated_refuses_what_it_cannot_follow_with_one_line(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    why: str,
) -> None:
    (tmp_path / "mixed").mkdir()
    for n in ("ring.pcapng", "ring_00001_20261124153000.pcapng"):
        (tmp_path / "mixed" / n).write_bytes(b"")
    rc = main(["replay", *(a.format(live=tmp_path, mixed=tmp_path / "mixed") for a in args), *lab.args()])
    err = capsys.readouterr().err
    assert rc == 2 and why in err and len(err.strip().splitlines()) == 1, err


def test_a_signal_before_any_file_of_the_rotated_capture_is_written_exits_2(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    out = tmp_path / "follow.jsonl"
    proc = _follow_rotated(lab, tmp_path / "ring.pcapng", out)
    # its handlers are installed just after it opens its --jsonl output (a fixed sleep was too short on a loaded
    # host: the signal came during the interpreter's start-up and killed it, -2)
    deadline = time.monotonic() + 60
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "following ended (SIGINT) before a file of the rotated capture was written" in err


def test_the_finished_files_of_a_tcpdump_rotation_are_replayed_together_whatever_their_suffix(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    # before: `duisgw replay cap.pcap cap.pcap1 cap.pcap2` (tcpdump -C's files) was refused: "unknown input type
    # '.pcap1'", and so was a capture written with `tcpdump -w capture` (no extension)
    files, reference = _lab_rotation(lab, tmp_path, "pcap", ["cap.pcap", "cap.pcap1", "cap.pcap2"])
    plain = tmp_path / "plain"
    plain.mkdir()
    for n, (_name, data) in zip(("capture", "capture1", "capture2"), files, strict=True):
        (plain / n).write_bytes(data)
    rc, lines = _replay(lab, tmp_path, *(plain / n for n in ("capture2", "capture", "capture1")))
    assert rc == 0 and lines == reference and len(lines) == len(lab.imm.expected()) + 2


# ------------------------------------------------------------------------------ 4. --follow --target


@pytest.mark.slow
async def test_a_rotated_capture_being_written_is_sent_to_a_live_gateway_as_it_is_read(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    # before: `--follow --target` was refused ("--follow decides in this process"); a test team mirroring live
    # traffic into a staging gateway had to wait for the capture to end
    from tests.capture.test_replay_review_14 import (
        DNO_USER,
        GatewayProcess,
        Receiver,
        free_port,
        write_config,
    )

    names = [f"ring_{n:05d}_20261124153000.pcapng" for n in (1, 2, 3)]
    files, reference = _lab_rotation(lab, tmp_path, "pcapng", names)
    dno = Receiver()
    await dno.start()
    port, admin = free_port(), free_port()
    config = write_config(tmp_path / "gateway.toml", port=port, admin_port=admin, reference=lab.refs,
                          destinations=[{"name": "dno-a", "user": DNO_USER, "url": dno.url}])  # fmt: skip
    gw = GatewayProcess(config, admin)
    gw.start()
    live = tmp_path / "live"
    live.mkdir()
    out = tmp_path / "sent.jsonl"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    try:
        await gw.wait_ready()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "replay", str(live / "ring.pcapng"), "--follow", "--rotated",
             "--target", f"http://127.0.0.1:{port}", "--speed", "0", "--jsonl", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            await asyncio.to_thread(_rotate, [(live / n, data) for n, data in files])
            sent = len(lab.imm.steps) + 2
            await asyncio.to_thread(_wait_for, "every message sent", lambda: len(_lines(out)) >= sent, proc)
            decided_before_the_end = _lines(out)
            proc.send_signal(signal.SIGINT)
            _stdout, err = await asyncio.to_thread(proc.communicate, timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        assert gw.terminate() == 0, gw.log_tail()
        await dno.stop()
    assert proc.returncode == 0, err
    lines = _lines(out)
    # each sent once, while the capture was written
    assert lines == decided_before_the_end and len(lines) == sent
    assert all(x["status"] in (200, 202, 204) for x in lines), lines
    live_decisions = {x["message_id"]: x["decision"] for x in lines if x["lane"] == "inline"}
    # as the in-process replay decides
    assert live_decisions == {x["message_id"]: x["decision"] for x in reference}
    assert f"following {live / 'ring.pcapng'} ended: SIGINT" in err


# ------------------------------------------------------------------------------ 5. a real capture tool


class _Gateway204(threading.Thread):
    """A real HTTP/1.1 server on loopback that answers each POST ``204`` (the gateway's answer to a forward), for
    the capture tool to capture the traffic to."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(daemon=True)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _post_all(port: int, messages: list[tuple[str, bytes]], pause: float) -> None:
    """POST ``messages`` (path, body) to the server on one keep-alive connection, ``pause`` seconds apart."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for path, body in messages:
            conn.request("POST", path, body, {"Content-Type": "application/xml"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 204
            time.sleep(pause)
    finally:
        conn.close()


def _start_dumpcap(directory: Path, port: int) -> subprocess.Popen[str]:
    """``dumpcap -b filesize:8`` on loopback for the server's port (skips the test when dumpcap is not installed
    or may not capture here)."""
    dumpcap = shutil.which("dumpcap")
    if dumpcap is None:
        pytest.skip(
            "dumpcap is not installed (Debian: apt-get install tshark): a real rotating capture needs it"
        )
    proc = subprocess.Popen(
        [dumpcap, "-i", "lo", "-f", f"tcp port {port}", "-b", "filesize:8", "-w", str(directory / "ring.pcapng"),
         "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    end = time.monotonic() + 15
    while not any(directory.iterdir()):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            _out, err = proc.communicate()
            pytest.skip(
                f"dumpcap cannot capture on loopback here (exit {proc.returncode}): {err.strip()[-300:]}"
            )
        time.sleep(0.05)
    time.sleep(0.5)  # (capturing once its first file is written)
    return proc


def test_a_capture_dumpcap_rotates_on_loopback_is_followed_into_each_of_its_files(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    server = _Gateway204()
    server.start()
    ring = tmp_path / "ring"
    ring.mkdir()
    out = tmp_path / "follow.jsonl"
    dumpcap = _start_dumpcap(ring, server.port)
    proc = _follow_rotated(lab, ring / "ring.pcapng", out)
    try:
        imm = [(_lane_path(st.lane), st.body) for st in lab.imm.steps]
        _post_all(server.port, imm, 0.2)  # one keep-alive connection: the files switch under it
        _post_all(server.port, [(INLINE, lab.big[0])], 0.1)
        _post_all(server.port, [(INLINE, lab.big[1])], 0.1)
        inline = sum(1 for st in lab.imm.steps if st.lane == "inline") + 2
        _wait_for("a decision of every DNO-bound request", lambda: len(_lines(out)) >= inline, proc)
        dumpcap.send_signal(signal.SIGTERM)  # the capture ends (its last file finished)
        dumpcap.communicate(timeout=30)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _stdout, err = proc.communicate(timeout=60)
    finally:
        for p in (proc, dumpcap):
            if p.poll() is None:
                p.kill()
        server.stop()
    assert proc.returncode == 0, err
    files = sorted(ring.iterdir())
    assert len(files) >= 3, files  # dumpcap rotated the capture
    lines = _lines(out)
    rc, reference = _replay(lab, tmp_path, *files)  # the files once written, read together
    assert rc == 0 and lines == reference and len(lines) == inline
    assert all(x["decision"] in ("forward", "suppress") for x in lines)
    assert "file-lost" not in err and "midstream" not in err
    files_of: dict[object, set[str | None]] = {}
    for r in _requests(_finished(files)):
        files_of.setdefault(r.flow, set()).add(r.file)
    assert any(len(names) > 1 for names in files_of.values())  # a connection went on into the next file


# ------------------------------------------------------------------------------ 6. arrival-time order


@pytest.mark.parametrize("skew_ms", [10, 400])
def test_a_rotated_capture_whose_times_go_back_is_replayed_in_the_arrival_time_order_of_its_finished_files(
    tmp_path: Path, skew_ms: int
) -> None:
    # two interfaces' clocks apart, the capture rotated: the pass over each file's headers (and the step back from
    # one file into the next) gives the order a replay of the finished files gives
    from gateway.replay import IngressLimits, InputMessage, InputProblem, _read_capture, follow_capture
    from tests.capture.test_replay_streaming_15 import _skewed, _whole_file_order

    head, recs = _records(_skewed(tmp_path, timedelta(milliseconds=skew_ms), per_side=60, size=2000))
    n = len(recs)
    names = [tmp_path / "rot" / x for x in ("cap.pcap", "cap.pcap1", "cap.pcap2")]
    names[0].parent.mkdir()
    for path, part in zip(names, _parts(recs, [n // 3, 2 * n // 3]), strict=True):
        path.write_bytes(head + part)
    whole = _whole_file_order(_read_capture(names, IngressLimits()))
    assert sum(1 for x in whole if not isinstance(x, FlowReport) and x.source.startswith("cap.pcap2")) > 10
    follow = Follow(poll=0.01)
    items = follow_capture([names[0]], follow, rotated=True)
    got = []
    while (item := next(items)) is not None:
        got.append(item)
    follow.stop("test")
    got += [x for x in items if x is not None]
    # the messages in the same order (the reports may differ: the finished files are merged by packet time, the
    # rotated capture is read in the order it was written, a file after the one before it)
    assert [x for x in got if isinstance(x, InputMessage)] == [
        x for x in whole if isinstance(x, InputMessage)
    ]
    assert any(isinstance(x, InputProblem) and x.code == "reordered" for x in got)


def test_the_pass_over_the_next_file_starts_when_the_reader_opens_it_not_some_bytes_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the second file starts with two requests, then holds two more stamped earlier (a clock step): its pass must
    # be walked as soon as the reader is in it, before those first two are given out (the pass is walked every
    # SCAN_AHEAD / 8 bytes of the reader's progress, which a new file must not have to wait for)
    import gateway.replay as replay_module
    from gateway.replay import InputMessage, follow_capture

    monkeypatch.setattr(replay_module, "SCAN_AHEAD", 256 << 10)

    def records(name: str, port: int, times: list[float]) -> tuple[bytes, list[tuple[int, bytes]]]:
        ex = tuple(
            Exchange("/duis/observe", _body(port * 100 + i, 600), T0 + timedelta(seconds=t))
            for i, t in enumerate(times)
        )
        return _records(_write(tmp_path / name, [Connection(ex, client=("10.0.0.2", port))], "pcap"))

    head, first = records("a.pcap", 41001, [float(i) for i in range(20)])
    _h, late = records("b.pcap", 41002, [30.0, 31.0])
    _h, early = records("c.pcap", 41003, [29.5, 29.6])
    rot = tmp_path / "rot"
    rot.mkdir()
    (rot / "cap.pcap").write_bytes(head + b"".join(r for _p, r in first))
    (rot / "cap.pcap1").write_bytes(head + b"".join(r for _p, r in late + early))
    follow = Follow(poll=0.01)
    items = follow_capture([rot / "cap.pcap"], follow, rotated=True)
    got = []
    while (item := next(items)) is not None:
        got.append(item)
    follow.stop("test")
    got += [x for x in items if x is not None]
    times = [x.time for x in got if isinstance(x, InputMessage)]
    assert len(times) == 24 and times == sorted(times)
