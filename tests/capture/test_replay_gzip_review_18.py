"""Second review of gzipped captures in ``duisgw replay`` (session 18): what inflates before a damaged spot of a gzip
stream is read to its last byte (zlib gives nothing of a call that meets damage: a file damaged in its first chunk
was refused whole, one damaged further on lost up to a chunk before the damage); a damaged ``.gz`` of a rotated
capture followed file after file ends that file, named, instead of raising out of the pass over its packet times;
and a file of a rotated capture compressed by a tool that copies its time to the second only (pigz) is read from its
``.gz``, not counted lost."""

from __future__ import annotations

import base64
import gzip
import io
import os
import random
import time
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.capture.reader import CapturedRequest, CaptureReader, Follow, _Gunzipped
from gateway.capture.rotation import Rotation
from gateway.capture.timescan import scan_times
from gateway.capture.writer import Connection, Exchange
from tests.capture.test_replay_follow_16 import _capture, _lines, _records, _wait_for
from tests.capture.test_replay_gzip_18 import _read, _reports, _requests, _unnamed
from tests.capture.test_replay_review_14 import Lab, _replay, _write, lab  # noqa: F401
from tests.capture.test_replay_rotation_17 import _follow_rotated, _lab_rotation, _posts
from tests.capture.test_replay_streaming_15 import NS, T0

# a gzip member's header: deflate, no flags, no time, unknown OS
_GZ_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _damaged_gzip(content: bytes, good: int) -> bytes:
    """A gzip member whose deflate data gives ``content[:good]`` whole (flushed there, on a byte boundary) and then
    holds a block of a type deflate does not have: zlib refuses it where it is (``invalid block type``), and what
    inflates before the damage is exactly ``content[:good]``."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = c.compress(content[:good]) + c.flush(zlib.Z_FULL_FLUSH)
    return _GZ_HEADER + data + b"\x07" + content[good : good + 64]


def _incompressible(tmp: Path, n: int = 12, size: int = 3000, port: int = 41001) -> Path:
    """A capture of ``n`` requests whose bodies pad with random base64: its gzip is nearly as long as it is."""
    rnd = random.Random(port)
    bodies = [b"<sr:Request " + NS + b"><sr:Pad>" + base64.b64encode(rnd.randbytes(size * 3 // 4)) + b"</sr:Pad>"
              b"</sr:Request>" for _ in range(n)]  # fmt: skip
    ex = tuple(Exchange("/duis/observe", body, T0 + timedelta(seconds=i)) for i, body in enumerate(bodies))
    return _write(tmp / f"rnd-{port}.pcap", [Connection(ex, client=("10.0.0.2", port))], "pcap")


def _inside_request(path: Path, k: int) -> int:
    """A content offset 10 bytes into the record that carries the start of the ``k``-th request of ``path``."""
    head, recs = _records(path)
    at = _posts(recs)[k]
    return len(head) + sum(len(r) for _port, r in recs[:at]) + 10


def _content(gz: _Gunzipped, step: int) -> bytes:
    parts = []
    while part := gz.read(step):
        parts.append(part)
    return b"".join(parts)


# ------------------------------------------------------------------------------ what inflates before damage is read


@pytest.mark.parametrize("good", [0, 1, 5000, 262_143, 262_144, 300_000, 599_999])
@pytest.mark.parametrize("step", [1000, 65_536])
def test_every_byte_that_inflates_before_the_damage_is_read_and_the_damage_is_named_where_it_is(
    good: int, step: int
) -> None:
    # before: zlib raised for the whole call that met the damage, and its output (up to a 256 KiB chunk, a few
    # thousand bytes at this compression) was lost with it: the content ended before the damage, not at it
    content = random.Random(good).randbytes(600_000)
    gz = _Gunzipped(io.BufferedReader(io.BytesIO(_damaged_gzip(content, good))), "x.gz")  # type: ignore[arg-type]
    assert _content(gz, step) == content[:good]
    assert gz.error is not None and "the gzip stream is damaged" in gz.error
    assert "invalid block type" in gz.error
    assert f"at byte {good} of its content" in gz.error
    assert gz.tell() == good and gz.exhausted()


def test_a_member_after_whole_ones_damaged_or_a_crc_that_does_not_match_gives_all_that_came_before() -> None:
    content = random.Random(7).randbytes(200_000)
    whole = gzip.compress(content[:120_000])
    gz = _Gunzipped(
        io.BufferedReader(io.BytesIO(whole + b"\0" * 512 + _damaged_gzip(content[120_000:], 50_000))),  # type: ignore[arg-type]
        "x.gz",
    )
    assert _content(gz, 4096) == content[:170_000]
    assert gz.error is not None and "at byte 170000 of its content" in gz.error
    bad_crc = bytearray(gzip.compress(content))
    bad_crc[-8] ^= 0xFF  # the member's CRC-32
    gz = _Gunzipped(io.BufferedReader(io.BytesIO(bytes(bad_crc))), "x.gz")  # type: ignore[arg-type]
    assert _content(gz, 4096) == content
    assert gz.error is not None and "incorrect data check" in gz.error


def test_a_capture_damaged_in_its_first_gzip_chunk_is_read_up_to_the_damage_not_refused(
    tmp_path: Path,
) -> None:
    # before: "a gzipped file that cannot be read" (CaptureError: duisgw replay exit 2; a rotated capture's file
    # counted lost), though the requests before the damage inflate whole
    plain = _incompressible(tmp_path)
    content = plain.read_bytes()
    good = _inside_request(plain, 1)
    bad = tmp_path / "bad.pcap.gz"
    bad.write_bytes(_damaged_gzip(content, good))
    same = tmp_path / "same.pcap"  # the plain file ending where the gzip stream's content does
    same.write_bytes(content[:good])
    got, expected = _read(bad), _read(same)
    assert len(_requests(got)) >= 1 and _requests(_unnamed(got)) == _requests(_unnamed(expected))
    cut = [r for r in _reports(got) if r.code == "truncated-file"]
    assert len(cut) == 1 and "the gzip stream is damaged" in cut[0].detail
    assert f"at byte {good} of its content" in cut[0].detail
    assert [r.code for r in _reports(got)] == [r.code for r in _reports(expected)]


def test_a_capture_whose_gzip_is_damaged_early_is_replayed_as_the_plain_file_cut_there(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # before: exit 2 ("not a readable pcap/pcapng capture" / "a gzipped file that cannot be read"), nothing decided
    source = _capture(lab, tmp_path, "pcap")
    content = source.read_bytes()
    good = _inside_request(source, -1)  # (inside its last request: those before it decided)
    same = tmp_path / "same.pcap"
    same.write_bytes(content[:good])
    rc, reference = _replay(lab, tmp_path, same)
    capsys.readouterr()
    assert rc == 0 and reference
    for name in ("bad.pcap.gz", "capture"):  # (a name that does not say: told by its content)
        bad = tmp_path / name
        bad.write_bytes(_damaged_gzip(content, good))
        rc, lines = _replay(lab, tmp_path, bad)
        err = capsys.readouterr().err
        assert rc == 0, err
        assert lines == reference
        assert "truncated-file" in err and "the gzip stream is damaged" in err


def test_the_pass_over_packet_times_ends_where_the_reader_ends_a_damaged_gzip(tmp_path: Path) -> None:
    # before: the pass raised zlib.error out of a damaged stream (a finished capture: no window, everything held;
    # a rotated capture followed: the replay crashed)
    plain = _incompressible(tmp_path, n=30)
    content = plain.read_bytes()
    good = _inside_request(plain, 20)
    bad = tmp_path / "bad.pcap.gz"
    bad.write_bytes(gzip.compress(content[:good]) + _damaged_gzip(content[good:], 0))
    same = tmp_path / "same.pcap"
    same.write_bytes(content[:good])
    assert scan_times(bad) == scan_times(same) and scan_times(bad).complete


# ------------------------------------------------------------------------------ --follow --rotated


def test_a_damaged_gz_of_a_rotated_capture_ends_that_file_named_and_the_capture_is_read_on(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    # before: zlib.error raised out of the pass walked ahead of the reader (gateway.capture.timescan): the replay
    # crashed (a traceback, exit 1) instead of naming the damaged file and reading the next one
    names = ["cap.pcap", "cap.pcap1", "cap.pcap2"]
    files, reference = _lab_rotation(lab, tmp_path, "pcap", names)
    live = tmp_path / "live"
    live.mkdir()
    for n, data in files:
        if n == "cap.pcap1":  # its content whole, then a member that is damaged
            (live / f"{n}.gz").write_bytes(gzip.compress(data) + _damaged_gzip(b"", 0))
        else:
            (live / n).write_bytes(data)
        time.sleep(0.02)  # (distinct modification times, as files written one after the other have)
    out = tmp_path / "follow.jsonl"
    proc = _follow_rotated(lab, live / "cap.pcap", out, "--idle", "1")
    try:
        _wait_for("every decision", lambda: len(_lines(out)) >= len(reference), proc)
        _stdout, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert _lines(out) == reference
    assert "cap.pcap1.gz: the gzip stream is damaged" in err


def test_a_ring_file_pigz_compressed_with_its_time_cut_to_the_second_is_read_from_its_gz(
    tmp_path: Path,
) -> None:
    # tcpdump -C -W 3 -z pigz: pigz gives the .gz the time of the file it compressed in whole seconds (utimes, the
    # microseconds 0), earlier than the file's own. before: that .gz was taken as an earlier round's: cap.pcap1,
    # known as the file after cap.pcap0, was counted lost (file-lost) and its requests were not read
    sources = [_incompressible(tmp_path, n=3, port=41000 + k) for k in range(3)]
    ring = [tmp_path / f"cap.pcap{k}" for k in range(3)]
    second = int(time.time()) - 100
    for k, (path, src) in enumerate(zip(ring, sources, strict=True)):
        path.write_bytes(src.read_bytes())
        at = (second + k) * 1_000_000_000 + 500_000_000  # (half a second past a whole one)
        os.utime(path, ns=(at, at))
    expected = [r for src in sources for r in _requests(_unnamed(_read(src)))]  # file after file
    follow = Follow(poll=0.01, idle=0.5)
    items = CaptureReader(Rotation(tmp_path / "cap.pcap"), pair_responses=False, follow=follow).following()
    got: list[Any] = [next(items)]
    assert isinstance(got[0], CapturedRequest) and got[0].file == "cap.pcap0"
    # pigz cap.pcap1: the .gz written, its time set in whole seconds, the file removed
    gz = ring[1].with_name("cap.pcap1.gz")
    gz.write_bytes(gzip.compress(ring[1].read_bytes()))
    whole = (ring[1].stat().st_mtime_ns // 1_000_000_000) * 1_000_000_000
    os.utime(gz, ns=(whole, whole))
    ring[1].unlink()
    got += [x for x in items if x is not None]
    assert [r for r in _reports(got) if r.code == "file-lost"] == []
    assert _requests(_unnamed(got)) == expected
    assert "cap.pcap1.gz" in {x.file for x in _requests(got)}
