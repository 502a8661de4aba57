"""``duisgw replay`` of gzipped captures (session 18): a finished ``.pcap.gz``/``.pcapng.gz``/``.cap.gz``, a rotated
file's ``cap.pcap1.gz`` or a gzip whose name does not say is replayed exactly as its uncompressed form; a gzip stream
cut short or damaged ends the file there, named, what came before it read; and ``--follow --rotated`` reads a file
``tcpdump -z gzip`` compressed before the reader got to it from its ``.gz``, once, in its place, a ``.gz`` deleted
before its turn being a lost file."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import os
import shutil
import subprocess
import threading
import time
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.capture.reader import (
    CapturedRequest,
    CaptureError,
    CaptureReader,
    FlowReport,
    Follow,
    _Gunzipped,
)
from gateway.capture.rotation import Rotation, classify_names
from gateway.capture.writer import Connection, Exchange
from gateway.cli import main
from tests.capture.test_replay_follow_16 import _capture, _lines, _records, _wait_for
from tests.capture.test_replay_review_14 import Lab, _replay, _write, lab  # noqa: F401
from tests.capture.test_replay_rotation_17 import _follow_rotated, _lab_rotation, _parts, _posts
from tests.capture.test_replay_streaming_15 import T0, _body

GZIP = shutil.which("gzip")
needs_gzip = pytest.mark.skipif(GZIP is None, reason="the gzip command-line tool is not installed")

# ------------------------------------------------------------------------------ helpers


def _gz(path: Path, data: bytes, *, members: list[int] | None = None) -> Path:
    """``data`` gzipped into ``path`` (``members``: cut there into concatenated gzip members)."""
    bounds = [0, *(members or []), len(data)]
    path.write_bytes(b"".join(gzip.compress(data[a:b]) for a, b in itertools.pairwise(bounds)))
    return path


def _gzip_tool(path: Path) -> Path:
    """``gzip FILE`` as tcpdump -z runs it: FILE.gz written (with FILE's modification time), then FILE removed."""
    assert GZIP is not None
    subprocess.run([GZIP, str(path)], check=True, stdin=subprocess.DEVNULL)
    gz = path.with_name(path.name + ".gz")
    assert gz.exists() and not path.exists()
    return gz


def _unnamed(items: list[Any]) -> list[Any]:
    """The items without the file names they carry (a plain file and its .gz are named differently)."""
    return [dataclasses.replace(x, file=None) for x in items]


def _read(path: Path | list[Path]) -> list[CapturedRequest | FlowReport]:
    return list(CaptureReader(path, pair_responses=False))


def _requests(items: list[Any]) -> list[CapturedRequest]:
    return [x for x in items if isinstance(x, CapturedRequest)]


def _reports(items: list[Any]) -> list[FlowReport]:
    return [x for x in items if isinstance(x, FlowReport)]


def _source(tmp: Path, n: int = 12, size: int = 3000, fmt: str = "pcap", port: int = 41001) -> Path:
    ex = tuple(
        Exchange("/duis/observe", _body(port * 100 + i, size), T0 + timedelta(seconds=i)) for i in range(n)
    )
    return _write(tmp / f"src-{port}.{fmt}", [Connection(ex, client=("10.0.0.2", port))], fmt)


def _summary(err: str, *names: str) -> list[str]:
    """The replay's stderr, the file names of its inputs taken out (a plain file and its .gz name themselves)."""
    for n in names:
        err = err.replace(n, "FILE")
    return err.splitlines()


# ------------------------------------------------------------------------------ 1. finished gzipped inputs


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("pcap", "c.pcap.gz"),
        ("pcapng", "c.pcapng.gz"),
        ("pcap", "c.cap.gz"),
        ("pcap", "cap.pcap1.gz"),
        ("pcapng", "capture"),  # tcpdump -w capture, gzipped in place: the name does not say
        ("pcap", "archive.gz"),
    ],
)
def test_a_gzipped_capture_is_replayed_line_for_line_as_its_uncompressed_form(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
    name: str,
) -> None:
    # before: "c.pcap.gz: unknown input type '.gz'" (exit 2), and a gzip named as nothing in particular the same
    plain = _capture(lab, tmp_path, fmt)
    rc, reference = _replay(lab, tmp_path, plain)
    ref_err = capsys.readouterr().err
    assert rc == 0 and len(reference) == len(lab.imm.expected()) + 2
    (tmp_path / "gz").mkdir()
    packed = _gz(tmp_path / "gz" / name, plain.read_bytes())
    rc, lines = _replay(lab, tmp_path, packed)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert lines == reference
    assert _summary(err, name) == _summary(ref_err, plain.name)


def test_gzipped_and_plain_files_of_one_capture_given_together_are_read_as_one_capture(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a rotation archived half gzipped: the connection the rotation cut goes on from a .gz into a plain file
    files, reference = _lab_rotation(lab, tmp_path, "pcap", ["cap.pcap", "cap.pcap1", "cap.pcap2"])
    capsys.readouterr()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    given = []
    for i, (n, data) in enumerate(files):
        if i == 1:
            (mixed / n).write_bytes(data)
            given.append(mixed / n)
        else:
            given.append(_gz(mixed / f"{n}.gz", data))
    rc, lines = _replay(lab, tmp_path, *reversed(given))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert lines == reference
    assert "truncated" not in err and "midstream" not in err and "lost" not in err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_capture_in_any_number_of_concatenated_gzip_members_reads_as_the_plain_capture(
    tmp_path: Path, data: st.DataObject
) -> None:
    fmt = data.draw(st.sampled_from(["pcap", "pcapng"]))
    plain = tmp_path / f"src-41001.{fmt}"
    if not plain.exists():
        _source(tmp_path, fmt=fmt)
    content = plain.read_bytes()
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(content) - 1), max_size=6))))
    packed = _gz(tmp_path / f"m.{fmt}.gz", content, members=cuts)
    assert _unnamed(_read(packed)) == _unnamed(_read(plain))


@settings(max_examples=60, deadline=None)
@given(
    content=st.binary(min_size=0, max_size=5000),
    members=st.lists(st.integers(0, 5000), max_size=4),
    ops=st.lists(st.tuples(st.sampled_from(["read", "back", "tell"]), st.integers(0, 3000)), max_size=40),
)
def test_the_gzip_stream_gives_the_content_whatever_the_reads_and_the_looks_back(
    content: bytes, members: list[int], ops: list[tuple[str, int]]
) -> None:
    import io

    bounds = [0, *sorted(m for m in members if m <= len(content)), len(content)]
    raw = b"".join(gzip.compress(content[a:b]) for a, b in itertools.pairwise(bounds))
    gz = _Gunzipped(io.BufferedReader(io.BytesIO(raw)), "x.gz")
    pos = 0
    for op, n in ops:
        if op == "read":
            assert gz.read(n) == content[pos : pos + n]
            pos = min(len(content), pos + n)
        elif op == "back":
            pos = max(0, pos - n)
            assert gz.seek(pos) == pos
        assert gz.tell() == pos
    assert gz.read(len(content)) == content[pos:] and gz.error is None


# ------------------------------------------------------------------------------ 2. damaged gzip streams


def _gunzip_prefix(raw: bytes) -> bytes:
    """All that a gzip stream cut short holds (what zlib decompresses of it)."""
    return zlib.decompressobj(wbits=31).decompress(raw)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_a_truncated_gzip_ends_the_file_there_as_a_truncated_capture_does_and_says_so(
    tmp_path: Path, fmt: str
) -> None:
    # before: EOFError out of the reader (the replay crashed); everything read before it lost with it
    a = _source(tmp_path, fmt=fmt, port=41001)
    raw = gzip.compress(a.read_bytes())
    cut = tmp_path / f"cut.{fmt}.gz"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    same = tmp_path / f"same.{fmt}"  # the plain file ending where the gzip stream does
    same.write_bytes(_gunzip_prefix(cut.read_bytes()))
    got, expected = _read(cut), _read(same)
    assert len(_requests(got)) >= 1 and _requests(got) == [
        dataclasses.replace(r, file=cut.name) for r in _requests(expected)
    ]
    cut_report = [r for r in _reports(got) if r.code == "truncated-file"]
    assert len(cut_report) == 1 and cut_report[0].file == cut.name
    assert (
        "the .gz file is truncated" in cut_report[0].detail and "the file ends early" in cut_report[0].detail
    )
    # the rest is what the plain file cut at the same byte gives: its open connection cut, reported so
    assert [r.code for r in _reports(got)] == [r.code for r in _reports(expected)]
    assert "truncated-flow" in [r.code for r in _reports(got)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0.0, 1.0))
def test_a_gzip_cut_anywhere_gives_what_it_holds_and_a_named_end_never_an_exception(
    tmp_path: Path, frac: float
) -> None:
    a = tmp_path / "src-41001.pcapng"
    if not a.exists():
        _source(tmp_path, fmt="pcapng")
    raw = gzip.compress(a.read_bytes())
    cut = tmp_path / "cut.pcapng.gz"
    cut.write_bytes(raw[: max(2, int(len(raw) * frac))])  # (its first two bytes: the gzip magic)
    same = tmp_path / "same.pcapng"
    same.write_bytes(_gunzip_prefix(cut.read_bytes()))
    try:
        got = _read(cut)
    except CaptureError as e:  # cut inside the capture's header: refused, as a plain file cut there is, named
        assert "the .gz file is truncated" in str(e)
        with pytest.raises(CaptureError):
            _read(same)
        return
    assert _requests(_unnamed(got)) == _requests(_unnamed(_read(same)))
    if len(cut.read_bytes()) < len(raw):
        assert any(r.code == "truncated-file" and "truncated" in r.detail for r in _reports(got))


def test_a_corrupt_gzip_stream_ends_the_file_where_the_damage_is_found_and_names_it(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # before: scapy took the gzip error for the file's end: the rest of the capture silently not read, no report
    a = _source(tmp_path, n=30, fmt="pcap")
    raw = bytearray(gzip.compress(a.read_bytes()))
    mid = len(raw) // 2
    raw[mid : mid + 40] = bytes(b ^ 0x5A for b in raw[mid : mid + 40])
    bad = tmp_path / "bad.pcap.gz"
    bad.write_bytes(bytes(raw))
    got = _read(bad)
    whole = _requests(_unnamed(_read(a)))
    reqs = _requests(_unnamed(got))
    assert 0 < len(reqs) < len(whole) and reqs == whole[: len(reqs)]
    named = [r for r in _reports(got) if r.code == "truncated-file"]
    assert len(named) == 1 and "the gzip stream is damaged" in named[0].detail
    assert "of its content" in named[0].detail and "the file ends early" in named[0].detail
    rc, _ = _replay(lab, tmp_path, bad)
    err = capsys.readouterr().err
    assert rc == 0 and "truncated-file" in err and "the gzip stream is damaged" in err


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (
            "notes.pcap.gz",
            "a gzipped file whose content is not a pcap/pcapng capture (it starts with b'this')",
        ),
        ("notes.gz", "unknown input type '.gz'"),
    ],
)
def test_a_gzip_of_something_else_is_refused_with_one_line(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    why: str,
) -> None:
    path = _gz(tmp_path / name, b"this is not a capture at all\n" * 50)
    rc, lines = _replay(lab, tmp_path, path)
    err = capsys.readouterr().err
    assert rc == 2 and lines == [] and why in err and len(err.strip().splitlines()) == 1, err


def test_a_gzip_cut_inside_its_header_is_a_named_capture_error(tmp_path: Path) -> None:
    a = _source(tmp_path)
    path = tmp_path / "short.pcap.gz"
    path.write_bytes(gzip.compress(a.read_bytes())[:12])
    with pytest.raises(
        CaptureError, match="a gzipped file that cannot be read: the gzip stream is cut short"
    ):
        _read(path)


def test_a_gzipped_block_announced_longer_than_any_capture_writes_is_damage_not_a_read_of_it_whole(
    tmp_path: Path,
) -> None:
    # a few hundred KiB of gzip announcing (and holding) a 100 MiB pcapng block: not read whole into memory
    a = _source(tmp_path, n=3, fmt="pcapng")
    head = a.read_bytes()
    blen = 100 << 20
    block = (
        (6).to_bytes(4, "little") + blen.to_bytes(4, "little") + bytes(blen - 12) + blen.to_bytes(4, "little")
    )
    path = _gz(tmp_path / "huge.pcapng.gz", head + block)
    got = _read(path)
    assert len(_requests(got)) == 3
    named = [r for r in _reports(got) if r.code == "truncated-file"]
    assert len(named) == 1 and "no capture tool writes one" in named[0].detail


def test_a_single_gzipped_capture_is_not_followed_and_the_refusal_says_why(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _gz(tmp_path / "live.pcap.gz", _source(tmp_path).read_bytes())
    rc = main(["replay", str(path), "--follow", *lab.args(), "--jsonl", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "a gzipped capture cannot be followed as it is written (replay it without --follow)" in err


# ------------------------------------------------------------------------------ 3. --follow --rotated with tcpdump -z gzip


def test_names_compressed_in_place_are_the_files_they_were_and_a_gz_beside_its_file_is_not_looked_at() -> (
    None
):
    kind, files = classify_names(
        "cap.pcap", ["cap.pcap.gz", "cap.pcap1.gz", "cap.pcap2", "cap.pcap2.gz", "x.gz"]
    )
    assert kind == "tcpdump" and files == {
        "cap.pcap.gz": ((0,), 0),
        "cap.pcap1.gz": ((1,), 1),
        "cap.pcap2": ((2,), 2),
    }
    assert classify_names("cap.pcap", ["cap.pcap0.gz", "cap.pcap1"])[0] == "tcpdump-ring"
    kind, files = classify_names("n-%Y%m%d%H%M%S.pcap", ["n-20261124153000.pcap.gz", "n-20261124153100.pcap"])
    assert kind == "tcpdump-time" and set(files) == {"n-20261124153000.pcap.gz", "n-20261124153100.pcap"}


def _pieces(tmp: Path, n_files: int = 4, fmt: str = "pcap") -> tuple[bytes, list[bytes]]:
    """One keep-alive connection of 12 requests cut into ``n_files`` files, each cut inside a request."""
    head, recs = _records(_source(tmp, fmt=fmt))
    posts = _posts(recs)
    step = len(posts) // n_files
    return head, _parts(recs, [posts[step * k] + 1 for k in range(1, n_files)])


@needs_gzip
def test_files_gzipped_before_the_reader_gets_to_them_are_read_from_their_gz_once_in_their_place(
    tmp_path: Path,
) -> None:
    # before: cap.pcap1.gz was no file of the set: cap.pcap1, listed, then gone, was a file-lost, its requests lost
    head, parts = _pieces(tmp_path)
    finished = tmp_path / "finished"
    finished.mkdir()
    names = ["cap.pcap", "cap.pcap1", "cap.pcap2", "cap.pcap3"]
    for n, part in zip(names, parts, strict=True):
        (finished / n).write_bytes(head + part)
    reference = _read([finished / n for n in names])
    assert len(_requests(reference)) == 12 and _reports(reference) == []
    live = tmp_path / "live"
    live.mkdir()
    for n, part in zip(names[:3], parts[:3], strict=True):
        (live / n).write_bytes(head + part)
        time.sleep(0.02)  # (distinct modification times, as files written one after the other have)
    _gzip_tool(live / "cap.pcap1")  # compressed before the reader starts: listed as its .gz from the first
    (live / "cap.pcap3").write_bytes(head + parts[3][:200])  # the file being written
    follow = Follow(poll=0.01, idle=0.5)
    items = CaptureReader(Rotation(live / "cap.pcap"), pair_responses=False, follow=follow).following()
    got: list[Any] = [next(items)]
    assert isinstance(got[0], CapturedRequest) and got[0].file == "cap.pcap"
    _gzip_tool(live / "cap.pcap2")  # listed as cap.pcap2, compressed before its turn
    while (item := next(items)) is not None:
        got.append(item)
    _gzip_tool(live / "cap.pcap")  # already read whole: its .gz is not read again
    with (live / "cap.pcap3").open("ab") as f:
        f.write(parts[3][200:])
    got += [x for x in items if x is not None]
    assert _requests(_unnamed(got)) == _requests(_unnamed(reference))  # each once, in order
    assert _reports(got) == [], _reports(got)
    assert [x.file for x in _requests(got)][-1] == "cap.pcap3"
    assert {x.file for x in _requests(got)} == {"cap.pcap", "cap.pcap1.gz", "cap.pcap2.gz", "cap.pcap3"}


@needs_gzip
def test_a_ring_file_its_successor_was_taken_as_then_gzipped_is_read_from_its_gz(tmp_path: Path) -> None:
    # tcpdump -C -W 3 -z gzip: the reader knows the file after the one it reads (cap.pcap1) from its first record;
    # gzip replaces it before the reader opens it: read from cap.pcap1.gz, not lost
    head, parts = _pieces(tmp_path, 3)
    ring = [tmp_path / f"cap.pcap{n}" for n in range(3)]
    for path, part in zip(ring, parts, strict=True):
        path.write_bytes(head + part)
        time.sleep(0.02)
    reference = _read(ring)
    follow = Follow(poll=0.01, idle=0.5)
    items = CaptureReader(Rotation(tmp_path / "cap.pcap"), pair_responses=False, follow=follow).following()
    got: list[Any] = [next(items)]
    assert isinstance(got[0], CapturedRequest) and got[0].file == "cap.pcap0"
    _gzip_tool(ring[1])
    got += [x for x in items if x is not None]
    assert _requests(_unnamed(got)) == _requests(_unnamed(reference)) and _reports(got) == []
    assert "cap.pcap1.gz" in {x.file for x in _requests(got)}


@needs_gzip
def test_a_ring_gz_deleted_before_it_was_read_is_a_lost_file_and_the_ring_is_read_on(tmp_path: Path) -> None:
    # tcpdump -C -W 3 -z gzip, the compressed files cleaned up behind the capture: cap.pcap1.gz is deleted before the
    # replay got to it: named lost (file-lost), cap.pcap0 and cap.pcap2 read
    files = []
    for n in range(3):
        files.append(_source(tmp_path, n=3, port=41000 + n))
    ring = [tmp_path / f"cap.pcap{n}" for n in range(3)]
    for path, src in zip(ring, files, strict=True):
        path.write_bytes(src.read_bytes())
        time.sleep(0.02)
    gz1 = _gzip_tool(ring[1])
    follow = Follow(poll=0.01, idle=0.5)
    items = CaptureReader(Rotation(tmp_path / "cap.pcap"), pair_responses=False, follow=follow).following()
    got: list[Any] = [next(items)]
    assert isinstance(got[0], CapturedRequest) and got[0].file == "cap.pcap0"
    gz1.unlink()
    got += [x for x in items if x is not None]
    lost = [x for x in _reports(got) if x.code == "file-lost"]
    assert (
        len(lost) == 1 and lost[0].file == "cap.pcap1.gz" and "deleted before it was read" in lost[0].detail
    )
    expected = _requests(_unnamed(_read(files[0]))) + _requests(_unnamed(_read(files[2])))  # file after file
    assert _requests(_unnamed(got)) == expected


def _writer_with_gzip(live: Path, files: list[tuple[str, bytes]]) -> None:
    """tcpdump -C -z gzip as it writes: each file in pieces; at each rotation the new file opened (its header and a
    first piece), the old one gzipped (gzip writes NAME.gz, then removes NAME), then the new one written on."""
    previous: Path | None = None
    for n, data in files:
        path = live / n
        with path.open("ab") as f:
            f.write(data[:300])
            f.flush()
            if previous is not None:
                _gzip_tool(previous)
            for i in range(300, len(data), 1500):
                f.write(data[i : i + 1500])
                f.flush()
                time.sleep(0.002)
        previous = path


@needs_gzip
@pytest.mark.parametrize("late", [False, True], ids=["followed-as-written", "started-after-the-rotations"])
def test_a_rotated_capture_gzipped_by_its_writer_is_decided_as_its_finished_files_are(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    late: bool,
) -> None:
    names = ["cap.pcap", "cap.pcap1", "cap.pcap2"]
    files, reference = _lab_rotation(lab, tmp_path, "pcap", names)
    live = tmp_path / "live"
    live.mkdir()
    out = tmp_path / "follow.jsonl"
    if late:  # the replay starts once two files are finished and gzipped: both read from their .gz
        _writer_with_gzip(live, files)
        proc = _follow_rotated(lab, live / "cap.pcap", out, "--idle", "1")
        writer = None
    else:
        proc = _follow_rotated(lab, live / "cap.pcap", out, "--idle", "3")
        time.sleep(0.3)  # the replay waits for the capture's first file
        writer = threading.Thread(target=_writer_with_gzip, args=(live, files))
        writer.start()
    try:
        _wait_for("every decision", lambda: len(_lines(out)) >= len(reference), proc)
        _stdout, err = proc.communicate(timeout=90)
    finally:
        if writer is not None:
            writer.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert sorted(os.listdir(live)) == ["cap.pcap.gz", "cap.pcap1.gz", "cap.pcap2"]
    assert _lines(out) == reference  # each request decided once, as a replay of the finished files decides it
    assert "truncated-file" not in err and "midstream" not in err and "lost" not in err
