"""``duisgw replay`` review 15: a capture replayed as it is read (not read whole before its first decision),
in arrival-time order when its packets are not in time order; and a capture rotated into several files
(``tcpdump -C``/``-G``, a dumpcap ring buffer) read as one, a connection split across two files reassembled
as one connection whatever the order the files are named in."""

from __future__ import annotations

import gzip
import os
import random
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.capture.reader import CapturedRequest, CaptureReader, FlowReport
from gateway.capture.writer import CaptureWriter, Connection, Exchange, Impairments
from gateway.replay import (
    IngressLimits,
    InputMessage,
    InputProblem,
    _iter_capture,
    _read_capture,
    _time_ordered,
    iter_inputs,
)
from tests.capture.test_replay_review_14 import INLINE, Lab, _lane_path, _replay, _write, lab  # noqa: F401

NS = b'xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway"'
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _body(n: int, size: int = 2000) -> bytes:
    return b"<sr:Request " + NS + b"><sr:Pad>" + (b"%08d" % n) * (size // 8) + b"</sr:Pad></sr:Request>"


# ------------------------------------------------------------------------------ pcap records


@dataclass
class Records:
    """A little-endian pcap file (as scapy's PcapWriter writes it) as its header and its records."""

    header: bytes
    records: list[bytes]

    @classmethod
    def read(cls, path: Path) -> Records:
        data = path.read_bytes()
        assert data[:4] == b"\xd4\xc3\xb2\xa1", "a little-endian microsecond pcap"
        out, pos = [], 24
        while pos < len(data):
            caplen = struct.unpack_from("<I", data, pos + 8)[0]
            out.append(data[pos : pos + 16 + caplen])
            pos += 16 + caplen
        return cls(data[:24], out)

    def write(self, path: Path, records: Iterable[bytes] | None = None) -> Path:
        path.write_bytes(self.header + b"".join(self.records if records is None else records))
        return path


def _stamp(rec: bytes) -> int:
    sec, usec = struct.unpack_from("<II", rec)
    return sec * 1_000_000 + usec


def _restamp(rec: bytes, us: int) -> bytes:
    return struct.pack("<II", us // 1_000_000, us % 1_000_000) + rec[8:]


def _payload(rec: bytes) -> bytes:
    """The TCP payload of an Ethernet/IPv4 record."""
    ip = 16 + 14
    ihl = (rec[ip] & 0x0F) * 4
    total = struct.unpack_from("!H", rec, ip + 2)[0]
    tcp = ip + ihl
    return rec[tcp + (rec[tcp + 12] >> 4) * 4 : ip + total]


def _ports(rec: bytes) -> tuple[int, int]:
    """The TCP ports (source, destination) of an Ethernet/IPv4 record."""
    tcp = 16 + 14 + (rec[16 + 14] & 0x0F) * 4
    return struct.unpack_from("!HH", rec, tcp)


def _split_inside_a_request(recs: list[bytes], nth: int = 0) -> int:
    """The index of a record that continues a request begun in the record before it: a file cut there
    splits the request (and its connection) across two files. ``nth``: the nth such place."""
    found = [
        i
        for i in range(1, len(recs))
        if _payload(recs[i])
        and _payload(recs[i - 1]).startswith(b"POST ")
        and not _payload(recs[i]).startswith(b"POST ")
    ]
    return found[nth]


def _fd_position(path: Path) -> int | None:
    """Where this process's open file description of ``path`` is (None: not open)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
                    if line.startswith("pos:"):
                        return int(line.split()[1])
        except OSError:
            continue
    return None


# ------------------------------------------------------------------------------ reference order


def _whole_file_order(items: Iterator[InputMessage | InputProblem]) -> list[InputMessage | InputProblem]:
    """The order of the fourteenth session: the whole capture read first, then, when its packets went back
    (a ``time-backwards`` report) and some request came after a later one, stably sorted by arrival time
    (a skipped input without a time of its own after the message before it); else the reader's order."""
    got = list(items)
    keys: list[datetime] = []
    last = datetime.min.replace(tzinfo=UTC)
    latest = last
    late = 0
    backwards = False
    for x in got:
        if isinstance(x, InputProblem) and x.code == "time-backwards" and x.lane is None:
            backwards = True
        if x.time is not None and isinstance(x, InputMessage):
            late += x.time < latest
            latest = max(latest, x.time)
            last = x.time
        keys.append(x.time if x.time is not None else last)
    if backwards and late:
        return [got[i] for i in sorted(range(len(got)), key=keys.__getitem__)]
    return got


def _without_notice(items: Iterable[InputMessage | InputProblem]) -> list[InputMessage | InputProblem]:
    return [x for x in items if not (isinstance(x, InputProblem) and x.code == "reordered")]


# ------------------------------------------------------------------------------ captures


@pytest.fixture(scope="module")
def long_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 requests of 2 KB on 30 keep-alive connections, one every 10 ms: 8.4 MB of a capture in time order."""
    path = tmp_path_factory.mktemp("long") / "long.pcap"
    conns = []
    for c in range(30):
        ex = tuple(Exchange("/duis/observe", _body(c * 100 + i), T0 + timedelta(milliseconds=10 * (c + 30 * i)))
                   for i in range(100))  # fmt: skip
        conns.append(Connection(ex, client=("10.0.0.2", 42000 + c)))
    return _write(path, conns, "pcap")


def _skewed(
    tmp: Path, skew: timedelta, *, per_side: int = 40, size: int = 600, name: str = "skewed.pcap"
) -> Path:
    """Two interfaces' traffic in one file, in the order it was captured, one interface's clock ``skew``
    behind the other's: its packets are stamped earlier than those captured before them."""
    sides = []
    for side in range(2):
        ex = tuple(Exchange("/duis/observe", _body(side * 1000 + i, size), T0 + timedelta(milliseconds=50 * i + 7 * side))
                   for i in range(per_side))  # fmt: skip
        p = _write(tmp / f"side{side}.pcap", [Connection(ex, client=("10.0.0.2", 43000 + side))], "pcap")
        sides.append(Records.read(p))
    lag = int(skew / timedelta(microseconds=1))
    tagged = [(_stamp(r), r) for r in sides[0].records] + [
        (_stamp(r), _restamp(r, _stamp(r) - lag)) for r in sides[1].records
    ]
    tagged.sort(key=lambda x: x[0])  # the order of capture: by true time; side 1 stamped ``skew`` early
    return sides[0].write(tmp / name, (r for _, r in tagged))


def _cat_merged(tmp: Path) -> Path:
    """Two captures concatenated (``cat`` of two pcapng files): the second, an hour earlier, after the first."""
    parts = []
    for k, start in enumerate((T0 + timedelta(hours=1), T0)):
        ex = tuple(
            Exchange("/duis/observe", _body(k * 100 + i, 600), start + timedelta(seconds=i))
            for i in range(20)
        )
        parts.append(_write(tmp / f"part{k}.pcapng", [Connection(ex, client=("10.0.0.2", 44000 + k))]))
    merged = tmp / "cat.pcapng"
    merged.write_bytes(b"".join(p.read_bytes() for p in parts))
    return merged


# ------------------------------------------------------------------------------ 1. streaming


def test_a_time_ordered_capture_gives_its_first_message_while_most_of_the_file_is_still_unread(
    long_capture: Path,
) -> None:
    # the fourteenth session read the whole capture into a spool before yielding its first message: a
    # multi-GB capture gave no decision for minutes, and a spool file as large as the capture's bodies
    items = iter_inputs([long_capture])
    first = next(items)
    assert isinstance(first, InputMessage)
    pos = _fd_position(long_capture)
    assert pos is not None, "the capture was read to its end (and closed) before its first message"
    assert pos < long_capture.stat().st_size // 2
    rest = list(items)
    assert sum(isinstance(x, InputMessage) for x in rest) == 2999


def test_a_capture_whose_clocks_differ_a_little_is_replayed_in_time_order_as_it_is_read(
    tmp_path: Path,
) -> None:
    # two interfaces, one clock 0.3 s behind: each request in arrival-time order, and the first one
    # yielded long before the end of the file has been read
    path = _skewed(tmp_path, timedelta(milliseconds=300), per_side=800, size=4000)
    items = iter_inputs([path])
    first = next(items)
    pos = _fd_position(path)
    assert pos is not None and pos < path.stat().st_size // 2
    got = [first, *items]
    times = [x.time for x in got if isinstance(x, InputMessage)]
    assert len(times) == 1600 and times == sorted(times)
    assert _without_notice(got) == _without_notice(_whole_file_order(_read_capture(path, IngressLimits())))
    notice = [x for x in got if isinstance(x, InputProblem) and x.code == "reordered"]
    assert len(notice) == 1 and "came in the file after a later one" in notice[0].detail


@pytest.mark.parametrize(
    "shape",
    [
        "in-order",
        "skewed-10ms",
        "skewed-2s",
        "cat-merged",
        "gap",
        "one-clock-step",
        "jittered",
        "unacknowledged",
    ],
)
def test_a_capture_streamed_gives_the_items_reading_it_whole_first_gave(tmp_path: Path, shape: str) -> None:
    if shape == "in-order":
        path = _write(tmp_path / "c.pcap", [Connection(tuple(Exchange("/duis/observe", _body(i, 600), T0 + timedelta(seconds=i)) for i in range(30)))], "pcap")  # fmt: skip
    elif shape.startswith("skewed"):
        path = _skewed(tmp_path, timedelta(milliseconds=10 if shape == "skewed-10ms" else 2000))
    elif shape == "cat-merged":
        path = _cat_merged(tmp_path)
    elif shape == "gap":
        ex = tuple(
            Exchange("/duis/dno/90-B3-D5-1F-30-02-00-00", _body(i, 4000), T0 + timedelta(seconds=i))
            for i in range(6)
        )
        path = _write(
            tmp_path / "g.pcap", [Connection(ex, impairments=Impairments(drop=frozenset({4})))], "pcap"
        )
    elif shape == "jittered":  # packets of three connections, one in five stamped up to 20 ms early
        conns = [
            Connection(
                tuple(Exchange("/duis/observe", _body(c * 100 + i, 900), T0 + timedelta(milliseconds=13 * i + 5 * c)) for i in range(40)),
                client=("10.0.0.2", 46000 + c),
            )
            for c in range(3)
        ]  # fmt: skip
        recs = Records.read(_write(tmp_path / "j.pcap", conns, "pcap"))
        rng = random.Random(15)
        path = recs.write(
            tmp_path / "jittered.pcap",
            [
                _restamp(r, _stamp(r) - rng.randrange(20_000)) if rng.random() < 0.2 else r
                for r in recs.records
            ],
        )
    elif shape == "unacknowledged":
        # the server's packets to one interface's connection missing after its tenth request: the requests
        # after it wait for an acknowledgement until the connection ends, their places long passed
        recs = Records.read(_skewed(tmp_path, timedelta(milliseconds=10)))
        cut = _stamp(recs.records[0]) + 500_000
        path = recs.write(
            tmp_path / "unacked.pcap",
            [r for r in recs.records if not (_ports(r) == (8080, 43000) and _stamp(r) > cut)],
        )
    else:  # a clock stepped back 30 s in the middle of a capture
        path = _write(tmp_path / "s.pcap", [Connection(tuple(Exchange("/duis/observe", _body(i, 600), T0 + timedelta(seconds=i)) for i in range(60)))], "pcap")  # fmt: skip
        recs = Records.read(path)
        half = len(recs.records) // 2
        recs.write(
            path, recs.records[:half] + [_restamp(r, _stamp(r) - 30_000_000) for r in recs.records[half:]]
        )
    whole = _whole_file_order(_read_capture(path, IngressLimits()))
    streamed = list(_iter_capture(path, IngressLimits()))
    assert _without_notice(streamed) == _without_notice(whole)
    spooled = list(_iter_capture(path, IngressLimits(), memory=1))  # every held item in the temporary file
    assert spooled == streamed


def test_a_step_back_further_than_the_window_is_named_in_the_notice() -> None:
    # a plain stream of items with a window of 1 s: a request 5 s earlier than one already given out
    # cannot be put before it any more; the notice says how many came too late for their place
    def msg(sec: int) -> InputMessage:
        return InputMessage(T0 + timedelta(seconds=sec), "observe", b"<x/>", f"m{sec}")

    items = [
        msg(0),
        msg(10),
        msg(12),
        msg(5),
        msg(13),
        InputProblem("c", "time-backwards", "packets went back"),
    ]
    got = list(_time_ordered(iter(items), "c", window=timedelta(seconds=1)))
    assert [x.source for x in got if isinstance(x, InputMessage)] == ["m0", "m10", "m5", "m12", "m13"]
    notice = got[-1]
    assert isinstance(notice, InputProblem) and notice.code == "reordered"
    assert "1 of the capture's requests came in the file after a later one" in notice.detail
    assert "1 of them after a later one had been replayed" in notice.detail


# ------------------------------------------------------------------------------ 2. several files


def _rotated(
    tmp: Path, recs: Records, at: int, names: tuple[str, str] = ("rot0.pcap", "rot1.pcap")
) -> tuple[Path, Path]:
    return (recs.write(tmp / names[0], recs.records[:at]), recs.write(tmp / names[1], recs.records[at:]))


def _requests(reader: CaptureReader) -> tuple[list[CapturedRequest], list[FlowReport]]:
    reqs: list[CapturedRequest] = []
    reports: list[FlowReport] = []
    for item in reader:
        (reqs if isinstance(item, CapturedRequest) else reports).append(item)  # type: ignore[arg-type]
    return reqs, reports


def _same(a: CapturedRequest, b: CapturedRequest) -> bool:
    return (a.time, a.first_byte_time, a.flow, a.path, a.body, a.response_status) == (
        b.time, b.first_byte_time, b.flow, b.path, b.body, b.response_status,
    )  # fmt: skip


@pytest.mark.parametrize("order", ["as-written", "reversed"])
def test_a_connection_split_across_two_rotated_files_is_read_as_one_connection(
    tmp_path: Path, order: str
) -> None:
    # ``tcpdump -C`` cut the capture inside a request: read file by file, the second file's half of the
    # connection was picked up midstream, the request the cut went through lost (a gap) or skipped
    ex = tuple(Exchange("/duis/observe", _body(i, 5000), T0 + timedelta(seconds=i)) for i in range(4))
    whole = _write(tmp_path / "whole.pcap", [Connection(ex)], "pcap")
    recs = Records.read(whole)
    a, b = _rotated(tmp_path, recs, _split_inside_a_request(recs.records, 1))
    expected, _ = _requests(CaptureReader(whole))
    reqs, reports = _requests(CaptureReader([a, b] if order == "as-written" else [b, a]))
    assert len(reqs) == 4 and all(_same(x, y) for x, y in zip(reqs, expected, strict=True))
    assert reports == []
    # the request the cut went through was completed in the second file
    assert [r.file for r in reqs] == ["rot0.pcap", "rot1.pcap", "rot1.pcap", "rot1.pcap"]


def test_files_of_different_formats_and_link_types_are_read_as_one_capture(tmp_path: Path) -> None:
    # a ring buffer restarted with other options: a pcap of Ethernet frames, then a gzipped pcapng of
    # Linux cooked frames, of the same connections
    ex = tuple(Exchange("/duis/observe", _body(i, 3000), T0 + timedelta(seconds=i)) for i in range(6))
    conns = [Connection(ex, client=("10.0.0.2", 45000)), Connection(ex, client=("10.0.0.3", 45001))]
    whole = _write(tmp_path / "whole.pcap", conns, "pcap")
    expected, _ = _requests(CaptureReader(whole))
    with CaptureWriter(tmp_path / "sll.pcapng", "pcapng", link="sll") as w:
        w.write_connections(conns)
    eth, sll = Records.read(whole), _ng_records(tmp_path / "sll.pcapng")
    cut = _split_inside_a_request(eth.records, 3)
    first = eth.write(tmp_path / "ring0.pcap", eth.records[:cut])
    second = tmp_path / "ring1.pcapng.gz"
    second.write_bytes(gzip.compress(sll.header + b"".join(sll.records[cut:])))
    reqs, reports = _requests(CaptureReader([second, first]))
    assert reports == []
    assert sorted((r.time, r.flow.sport, r.body) for r in reqs) == sorted(
        (r.time, r.flow.sport, r.body) for r in expected
    )


@dataclass
class NgRecords:
    header: bytes  # the section header and interface description blocks
    records: list[bytes]  # the enhanced packet blocks, one per frame


def _ng_records(path: Path) -> NgRecords:
    data = path.read_bytes()
    pos, head, recs = 0, b"", []
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        block = data[pos : pos + blen]
        if btype == 6:
            recs.append(block)
        else:
            head += block
        pos += blen
    return NgRecords(head, recs)


def test_a_truncated_file_of_a_rotated_capture_is_named_and_the_connection_it_cut_is_reported_cut(
    tmp_path: Path,
) -> None:
    ex = tuple(Exchange("/duis/observe", _body(i, 5000), T0 + timedelta(seconds=i)) for i in range(4))
    whole = _write(tmp_path / "whole.pcap", [Connection(ex, teardown=False)], "pcap")
    recs = Records.read(whole)
    at = _split_inside_a_request(recs.records, 1)
    a, b = _rotated(tmp_path, recs, at)
    b.write_bytes(b.read_bytes()[: len(recs.header) + sum(map(len, recs.records[at:])) - 700])  # the last cut
    reqs, reports = _requests(CaptureReader([b, a]))
    assert len(reqs) == 3
    truncated = [r for r in reports if r.code == "truncated-file"]
    assert (
        len(truncated) == 1
        and truncated[0].file == "rot1.pcap"
        and truncated[0].detail.startswith("rot1.pcap: ")
    )
    assert "truncated-flow" in [r.code for r in reports]


def test_replaying_a_rotated_capture_decides_as_the_whole_capture_whatever_the_order_of_its_files(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    # the activation's request and response, the AD1 and the restoration on one keep-alive connection, the
    # file rotated inside the AD1: read file by file, the AD1 was lost and the restoration forwarded
    ex = tuple(Exchange(_lane_path(st.lane), st.body, st.at) for st in lab.imm.steps)
    whole = _write(tmp_path / "whole.pcap", [Connection(ex, client=("10.0.0.2", 41001))], "pcap")
    recs = Records.read(whole)
    inline_at = next(
        i for i, r in enumerate(recs.records) if _payload(r).startswith(f"POST {INLINE}".encode())
    )
    cut = next(i for i in range(inline_at + 1, len(recs.records)) if _payload(recs.records[i]))
    a, b = _rotated(tmp_path, recs, cut)
    expected = {str(e["message_id"]): (e["decision"], e["reason"]) for e in lab.imm.expected()}
    for inputs in ((a, b), (b, a)):
        rc, lines = _replay(lab, tmp_path, *inputs)
        assert rc == 0
        assert {x["message_id"]: (x["decision"], x["reason"]) for x in lines} == expected


def test_a_request_the_rotation_cut_and_the_capture_damaged_is_one_lost_request_named_by_the_file_of_the_damage(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    # the second AD1 begun in the ring's first file, its next segment missed in the second: one request lost
    # in a gap, with what is known of it (its lane, when its first byte came); read file by file, the first
    # file's end cut it and the second file's part was skipped as a midstream pick-up
    t0 = lab.imm.t("11:03")
    inline = Connection((Exchange(INLINE, lab.big[0], t0), Exchange(INLINE, lab.big[1], t0 + timedelta(seconds=2))),
                        client=("10.0.0.2", 41001))  # fmt: skip
    whole = _write(tmp_path / "whole.pcap", [inline], "pcap")
    recs = Records.read(whole)
    second = [i for i, r in enumerate(recs.records) if _payload(r).startswith(b"POST ")][1]
    assert _payload(recs.records[second + 1]) and _payload(recs.records[second + 2])  # it goes on in two more
    a = recs.write(tmp_path / "ring_00001.pcap", recs.records[: second + 1])
    b = recs.write(tmp_path / "ring_00002.pcap", recs.records[second + 2 :])  # (second + 1 missed)
    for inputs in ((a, b), (b, a)):
        rc, lines = _replay(lab, tmp_path, *inputs)
        assert rc == 0
        assert [(x["decision"], x["reason"]) for x in lines] == [
            ("forward", "no-activation"),
            ("lost", "gap"),
        ]
        lost = lines[1]
        assert lost["message_id"].startswith("lost:ring_00002.pcap:10.0.0.2:41001 -> ")
        assert (lost["lane"], lost["requests"], lost["first_byte_time"]) == (
            "inline",
            1,
            "2026-03-02T11:03:02Z",
        )


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
def test_both_decoders_read_several_files_as_one(tmp_path: Path, decoder: str) -> None:
    ex = tuple(Exchange("/duis/observe", _body(i, 5000), T0 + timedelta(seconds=i)) for i in range(4))
    recs = Records.read(_write(tmp_path / "whole.pcap", [Connection(ex)], "pcap"))
    a, b = _rotated(tmp_path, recs, _split_inside_a_request(recs.records, 2))
    reqs, reports = _requests(CaptureReader([b, a], decoder=decoder))
    assert reports == []
    assert [r.body for r in reqs] == [e.body for e in ex]


def test_the_reordered_notice_is_printed_however_many_skipped_inputs_came_before_it(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the notice now comes after the capture's items, behind its skipped inputs: the summary printed the
    # first 20 of those only
    recs = Records.read(_skewed(tmp_path, timedelta(milliseconds=10)))
    health = tuple(
        Exchange("/health", b"", T0 + timedelta(milliseconds=30 * i), method="GET", content_type=None)
        for i in range(25)
    )
    noise = Records.read(
        _write(tmp_path / "noise.pcap", [Connection(health, client=("10.0.0.9", 47000))], "pcap")
    )
    path = recs.write(tmp_path / "mixed.pcap", noise.records + recs.records)
    rc, _lines = _replay(lab, tmp_path, path)
    assert rc == 0
    err = capsys.readouterr().err
    assert "non-duis-path 25" in err
    assert "mixed.pcap: reordered: " in err and "came in the file after a later one" in err


def test_the_spool_gives_back_every_item_and_deletes_each_file_once_it_has_given_back_all_of_it() -> None:
    from gateway.replay import _Spool

    spool = _Spool(1, file_size=10_000)  # one item in memory, the others in files of about 10 kB
    items = [
        InputMessage(T0 + timedelta(seconds=i), "observe", b"x%05d" % i * 20, f"m{i}") for i in range(12_000)
    ]
    rng = random.Random(3)
    order: list[int] = []
    out: list[InputMessage | InputProblem] = []
    most_files = 0
    for block in range(0, len(items) + 100, 50):  # added 50 at a time; taken two blocks later, shuffled
        for i in range(block, min(block + 50, len(items))):
            spool.add(i, items[i])
        due = [i for i in range(block - 100, block - 50) if 0 <= i < len(items)]
        rng.shuffle(due)
        for i in due:
            order.append(i)
            out.append(spool.take(i))
        most_files = max(most_files, len(spool.files))
    assert sorted(order) == list(range(len(items)))
    assert out == [items[i] for i in order]
    assert (
        spool.current > 100 and most_files <= 5
    )  # files deleted once emptied: what is on disk is what is held
    assert len(spool.where) <= 4096 + 150  # the places of the items taken back forgotten
    spool.close()
