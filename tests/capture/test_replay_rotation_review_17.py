"""Second review of the seventeenth session's rotated-capture following: defects found and pinned."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from gateway.capture.rotation import RotatedFile, Rotation
from gateway.capture.writer import Connection, Exchange
from tests.capture.test_replay_review_14 import _write
from tests.capture.test_replay_rotation_17 import _finished, _follow_items, _reports, _requests, _rotate
from tests.capture.test_replay_streaming_15 import T0, _body


def _rf(name: str, key: tuple[int, ...]) -> RotatedFile:
    return RotatedFile(Path(name), key, None, 0, 0, 0)


def _key(hms: str) -> tuple[int, ...]:
    return (0, 2026, 10, 25, 0, int(hms[:2]), int(hms[2:4]), int(hms[4:]), 0)


def test_a_tcpdump_time_file_named_earlier_than_the_one_read_but_written_after_it_is_read_next() -> None:
    # tcpdump -G names its files in local time: when the clocks go back (the last Sunday of October in the UK),
    # the hour 01:00-02:00 is named again, after the files of its first pass
    rot = Rotation("/nowhere/n-%Y%m%d%H%M%S.pcap")
    rot.kind = "tcpdump-time"
    a, b = _rf("n-20261025014000.pcap", _key("014000")), _rf("n-20261025015000.pcap", _key("015000"))
    assert rot.first([a, b]) is a
    assert rot.successor(a, 0, [a, b]) == (b, [])
    # the clocks went back at 02:00 BST: the next file is named 01:00 (GMT), before those read
    again = _rf("n-20261025010000.pcap", _key("010000"))
    assert rot.successor(b, 0, [a, b, again]) == (again, [])
    # and the files of the first pass (01:40, 01:50), read already, are not read again after it
    later = _rf("n-20261025011000.pcap", _key("011000"))
    assert rot.successor(again, 0, [a, b, again]) == (None, [])
    assert rot.successor(again, 0, [a, b, again, later]) == (later, [])


def test_the_requests_of_a_tcpdump_time_capture_across_the_clocks_going_back_are_all_read(
    tmp_path: Path,
) -> None:
    # before: the files of the repeated hour (named before the one read) were never "after" it: skipped, their
    # requests not read, and nothing said so (no file-lost, no report): a silent loss of an hour of traffic
    names = [
        "n-20261025014000.pcap",  # 01:40 BST
        "n-20261025015000.pcap",  # 01:50 BST
        "n-20261025010000.pcap",  # 01:00 GMT (= 02:00 BST)
        "n-20261025011000.pcap",  # 01:10 GMT
        "n-20261025012000.pcap",  # 01:20 GMT
    ]
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for n, name in enumerate(names):
        ex = tuple(
            Exchange("/duis/observe", _body(10 * n + i, 1500), T0 + timedelta(seconds=10 * n + i))
            for i in range(2)
        )
        files.append(_write(src / name, [Connection(ex, client=("10.0.0.2", 41000 + n))], "pcap"))
    reference = _requests(_finished(files))
    assert len(reference) == 10
    live = tmp_path / "live"
    live.mkdir()
    for f in files[:2]:  # the first pass, written before the replay started
        (live / f.name).write_bytes(f.read_bytes())
    got = _follow_items(
        live / "n-%Y%m%d%H%M%S.pcap",
        lambda: _rotate([(live / f.name, f.read_bytes()) for f in files[2:]], gap=0.2),
        idle=1.5,
    )
    assert [x.body for x in _requests(got)] == [x.body for x in reference]
    assert [x.file for x in _requests(got)][4:6] == [names[2]] * 2
    assert [x.code for x in _reports(got)] == []


def _conn_files(directory: Path, names: list[str], fmt: str = "pcapng") -> list[Path]:
    """One file per name, each one connection of two requests of its own (a different client port)."""
    directory.mkdir(exist_ok=True)
    out = []
    for n, name in enumerate(names):
        ex = tuple(
            Exchange("/duis/observe", _body(10 * n + i, 1500), T0 + timedelta(seconds=10 * n + i))
            for i in range(2)
        )
        out.append(_write(directory / name, [Connection(ex, client=("10.0.0.2", 41000 + n))], fmt))
    return out


def test_the_files_of_a_dumpcap_restarted_with_the_same_name_are_all_read_none_named_lost(
    tmp_path: Path,
) -> None:
    # dumpcap numbers the files of each run from 00001: after a restart (a crash, a reboot, the service restarted)
    # with the same -w, the new run's 00001 and 00002 are "behind" the old run's 00002 by their numbers.
    # before: they were skipped, and the new run's 00003, "one after" 00002, read next: two files' requests not
    # read, and nothing said so
    names = [
        "ring_00001_20261124153000.pcapng",  # the run before the restart
        "ring_00002_20261124153010.pcapng",
        "ring_00001_20261124160000.pcapng",  # the run after it
        "ring_00002_20261124160010.pcapng",
        "ring_00003_20261124160020.pcapng",
    ]
    files = _conn_files(tmp_path / "src", names)
    reference = _requests(_finished(files))
    assert len(reference) == 10
    live = tmp_path / "live"
    live.mkdir()
    for f in files[:2]:
        (live / f.name).write_bytes(f.read_bytes())
    got = _follow_items(
        live / "ring.pcapng",
        lambda: _rotate([(live / f.name, f.read_bytes()) for f in files[2:]], gap=0.2),
        idle=1.5,
    )
    assert [x.body for x in _requests(got)] == [x.body for x in reference]
    assert [x.code for x in _reports(got)] == []
