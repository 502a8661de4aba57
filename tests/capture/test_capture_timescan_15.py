"""``gateway.capture.timescan``: how far a capture's packet times go back, from its record headers only, must
be what the capture reader finds reading the whole file (``duisgw replay`` holds a capture's requests for
that long, so a scan that found less would let a request be replayed after a later one)."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import pytest

from gateway.capture.reader import CaptureReader
from gateway.capture.timescan import scan_times
from tests.capture.test_capture_pcapng_times import _block, _epb, _idb, _opt, _raw_idb, _shb

FRAME = b"\x02" * 12 + b"\x08\x06" + b"\0" * 28  # an Ethernet ARP frame: a packet the reader counts and skips


def _reader_figures(path: Path) -> tuple[int, int, int]:
    reader = CaptureReader(path, keep_reports=False)
    for _ in reader:
        pass
    return reader.stats.packets, reader.stats.time_backwards, reader.stats.max_time_back_ns


def _pcap(rng: random.Random, endian: str, nano: bool) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)]
    t = 1_772_000_000 * 10**6
    for _ in range(rng.randrange(1, 60)):
        t += rng.randrange(-3000, 20000)
        sec, frac = divmod(t * (1000 if nano else 1), 10**9 if nano else 10**6)
        out.append(struct.pack(endian + "IIII", sec, frac, len(FRAME), len(FRAME)) + FRAME)
    return b"".join(out)


def _pcapng(rng: random.Random) -> bytes:
    out = []
    t = 1_772_000_000
    for _section in range(rng.randrange(1, 4)):
        out.append(_shb())
        interfaces = []
        for _ in range(rng.randrange(1, 4)):
            kind = rng.randrange(5)
            if kind == 0:
                out.append(_idb())
                interfaces.append((10**6, 0))
            elif kind == 1:
                offset = rng.choice([0, 3600, -60])
                out.append(_idb(9, offset))
                interfaces.append((10**9, offset))
            elif kind == 2:
                offset = rng.choice([0, 3600, -60])
                out.append(_idb(0x80 | 20, offset))
                interfaces.append((2**20, offset))
            elif kind == 3:  # a malformed if_tsoffset (4 bytes): not applied
                out.append(_raw_idb(_opt(14, struct.pack("<i", 3600)) + _opt(0, b"")))
                interfaces.append((10**6, 0))
            else:  # if_tsresol twice: the last one counts
                out.append(_raw_idb(_opt(9, b"\x09") + _opt(9, b"\x03") + _opt(0, b"")))
                interfaces.append((10**3, 0))
        for _ in range(rng.randrange(1, 40)):
            t += rng.randrange(-2, 10)
            which = rng.randrange(len(interfaces) + 1)  # one past the last: an interface not described
            kind = rng.randrange(10)
            if kind == 0:  # a simple packet block (no time)
                out.append(_block(3, struct.pack("<I", len(FRAME)) + FRAME))
            elif kind == 1:  # another kind of block (name resolution): not a packet
                out.append(_block(4, b"\0" * 8))
            elif which == len(interfaces):
                out.append(_epb(which, 12345, FRAME))
            else:
                per_s, _offset = interfaces[which]
                out.append(_epb(which, t * per_s + rng.randrange(per_s), FRAME))
    return b"".join(out)


@pytest.mark.parametrize("seed", range(40))
def test_the_scan_finds_the_steps_back_the_reader_finds(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    kind = seed % 4
    if kind == 0:
        data = _pcap(rng, "<", False)
    elif kind == 1:
        data = _pcap(rng, ">", True)
    else:
        data = _pcapng(rng)
    path = tmp_path / ("c.pcapng" if kind >= 2 else "c.pcap")
    path.write_bytes(gzip.compress(data) if kind == 3 else data)
    scan = scan_times(path)
    assert scan.complete
    assert (scan.packets, scan.steps, scan.max_step_ns) == _reader_figures(path)


def test_a_capture_cut_short_is_scanned_to_where_the_reader_stops(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = _pcapng(rng) + _pcapng(rng)
    for cut in (len(data) - 3, len(data) - 40, len(data) // 2 + 1):
        path = tmp_path / f"cut{cut}.pcapng"
        path.write_bytes(data[:cut])
        scan = scan_times(path)
        assert scan.complete
        assert (scan.packets, scan.steps, scan.max_step_ns) == _reader_figures(path)


def test_a_block_the_scan_cannot_walk_past_makes_it_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcapng"
    path.write_bytes(_shb() + _idb() + struct.pack("<II", 6, 10) + b"\0" * 40)  # a block length under 12
    assert not scan_times(path).complete
    junk = tmp_path / "notes.pcap"
    junk.write_bytes(b"this is not a capture\n" * 4)
    assert not scan_times(junk).complete
