"""How far a capture's packet times go back: a pass over its record headers only (sans reassembly).

Theory of operation
-------------------
A consumer that replays a capture's requests in arrival-time order (``duisgw replay``) can put them in
that order as it reads them, holding each only until no later packet can be stamped earlier, when it
knows how far the capture's times go back: the largest step back, over the whole file, from the latest
time before a packet to the packet's own (0 for a capture in time order). :func:`scan_times` finds it
by walking the file's record headers, the packets' bytes skipped: about 1.5 µs a record, a fraction of
what reading the capture costs.

The times are computed as :class:`gateway.capture.reader.CaptureReader` computes them (scapy's readers,
and the reader's pcapng corrections): pcap in µs or ns by its magic; pcapng per section, each
interface's ``if_tsresol`` (10^-n or 2^-n s; µs when absent or not 1 byte long; the last of several)
and ``if_tsoffset`` (seconds, applied when given once and 8 bytes long), a packet of an interface the
section has not described not read, a simple packet block without a time keeping the one before it.
A gzipped file is read through gzip. Where the file cannot be walked to its end the same way (it is
not a capture, a block length is malformed, a record is larger than :data:`MAX_BLOCK`), the scan says
so (``complete`` False): its caller must then assume nothing about the rest.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, cast

__all__ = ["MAX_BLOCK", "TimeScan", "scan_times"]

#: a pcapng block larger than this ends the scan (``complete`` False): scapy would read it whole
MAX_BLOCK: Final = 16 << 20
_CHUNK: Final = 1 << 20
_SHB: Final = 0x0A0D0D0A


@dataclass(frozen=True, slots=True)
class TimeScan:
    """``max_step_ns``: the largest step back of a packet's time from the latest before it (0: in time
    order); ``steps``: packets stamped earlier than one before them; ``complete``: the whole file was
    walked (else the figures cover the part before the record that stopped it)."""

    packets: int
    steps: int
    max_step_ns: int
    complete: bool


class _Buffer:
    """A forward-only window on a stream: ``need(n)`` makes ``n`` bytes from ``pos`` available."""

    __slots__ = ("buf", "eof", "f", "pos")

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.buf = b""
        self.pos = 0
        self.eof = False

    def need(self, n: int) -> bool:
        if len(self.buf) - self.pos >= n:
            return True
        if self.eof:
            return False
        parts = [self.buf[self.pos :]]
        have = len(parts[0])
        while have < n:
            chunk = self._read(max(_CHUNK, n - have))
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self.buf = b"".join(parts)
        self.pos = 0
        return have >= n

    def _read(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except EOFError:  # a gzipped file cut short: its end, as scapy's readers take it
            return b""

    def skip(self, n: int) -> bool:
        """Move ``n`` bytes on; False when the stream ends first."""
        left = len(self.buf) - self.pos
        if n <= left:
            self.pos += n
            return True
        n -= left
        self.buf = b""
        self.pos = 0
        while n > 0:
            chunk = self._read(min(n, _CHUNK))
            if not chunk:
                self.eof = True
                return False
            n -= len(chunk)
        return True


def scan_times(path: str | os.PathLike[str]) -> TimeScan:
    """How far the packet times of the capture at ``path`` go back (see the module docstring).
    Raises ``OSError`` when the file cannot be opened."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw) as gz:
                return _scan(cast(IO[bytes], gz))
        return _scan(raw)


def scan_files(paths: list[Path]) -> TimeScan:
    """:func:`scan_times` of several files read as one capture (their packets merged by time): a merge
    of files goes back no further than the furthest of its files does."""
    scans = [scan_times(p) for p in paths]
    return TimeScan(
        sum(s.packets for s in scans),
        sum(s.steps for s in scans),
        max((s.max_step_ns for s in scans), default=0),
        all(s.complete for s in scans),
    )


def _scan(f: IO[bytes]) -> TimeScan:
    b = _Buffer(f)
    try:
        if not b.need(4):
            return TimeScan(0, 0, 0, False)
        magic = b.buf[b.pos : b.pos + 4]
        if magic == b"\x0a\x0d\x0d\x0a":
            return _scan_pcapng(b)
        return _scan_pcap(b, magic)
    except (OSError, EOFError, ValueError, struct.error, gzip.BadGzipFile):
        return TimeScan(0, 0, 0, False)


def _scan_pcap(b: _Buffer, magic: bytes) -> TimeScan:
    kinds = {
        b"\xa1\xb2\xc3\xd4": (">", 1000),
        b"\xd4\xc3\xb2\xa1": ("<", 1000),
        b"\xa1\xb2\x3c\x4d": (">", 1),
        b"\x4d\x3c\xb2\xa1": ("<", 1),
    }
    if magic not in kinds or not b.need(24):
        return TimeScan(0, 0, 0, False)
    endian, mult = kinds[magic]
    b.pos += 24
    head = struct.Struct(endian + "III").unpack_from
    packets = steps = worst = latest = 0
    while True:
        if not b.need(16):  # the reader's end too: a clean end, or a record header the file's end cuts
            return TimeScan(packets, steps, worst, True)
        sec, frac, caplen = head(b.buf, b.pos)
        b.pos += 16
        ts = sec * 1_000_000_000 + frac * mult
        packets += 1
        if ts < latest:
            steps += 1
            if latest - ts > worst:
                worst = latest - ts
        else:
            latest = ts
        if not b.skip(caplen):
            return TimeScan(packets, steps, worst, True)  # the last record cut: the reader reads it too


def _scan_pcapng(b: _Buffer) -> TimeScan:
    endian = "<"
    # per interface of the section: (ticks per second, offset in ns)
    interfaces: list[tuple[int, int]] = []
    packets = steps = worst = latest = 0
    prev = 0  # the time of the packet before (a simple packet block takes it, as the reader does)
    while True:
        if not b.need(12):  # the end (or a block header the end cuts: where the reader ends too)
            return TimeScan(packets, steps, worst, True)
        buf, pos = b.buf, b.pos
        btype = struct.unpack_from(endian + "I", buf, pos)[0]
        if btype == _SHB:
            bom = buf[pos + 8 : pos + 12]
            if bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            elif bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            else:
                return TimeScan(packets, steps, worst, False)
            interfaces = []
        blen = struct.unpack_from(endian + "I", buf, pos + 4)[0]
        if blen < 12 or blen > MAX_BLOCK or (btype == _SHB and blen < 28):
            return TimeScan(packets, steps, worst, False)
        size = blen + (-blen % 4)
        if not b.need(size):
            return TimeScan(packets, steps, worst, True)  # the file ends inside a block: the reader's end
        buf, pos = b.buf, b.pos
        if struct.unpack_from(endian + "I", buf, pos + size - 4)[0] != blen:
            return TimeScan(packets, steps, worst, False)
        ts: int | None = None
        if btype == 1:  # interface description
            interfaces.append(_interface(buf[pos + 16 : pos + blen - 4], endian))
        elif btype == 6:  # enhanced packet
            intid, hi, lo = struct.unpack_from(endian + "III", buf, pos + 8)
            if intid < len(interfaces):
                per_s, offset = interfaces[intid]
                ts = ((hi << 32) | lo) * 1_000_000_000 // per_s + offset
        elif btype == 2:  # (obsolete) packet block
            intid, _drops, hi, lo = struct.unpack_from(endian + "HHII", buf, pos + 8)
            if intid < len(interfaces):
                per_s, offset = interfaces[intid]
                ts = ((hi << 32) | lo) * 1_000_000_000 // per_s + offset
        elif btype == 3 and interfaces:  # simple packet (of interface 0): the time of the packet before it
            ts = prev
        b.pos += size
        if ts is not None:
            prev = ts
            packets += 1
            if ts < latest:
                steps += 1
                if latest - ts > worst:
                    worst = latest - ts
            else:
                latest = ts


def _interface(area: bytes, endian: str) -> tuple[int, int]:
    """An interface's ticks per second and time offset (ns) from its options, as the reader takes them:
    ``if_tsresol`` as scapy reads it (the last complete one; used when 1 byte long), ``if_tsoffset``
    as the reader's pcapng class reads it (used when given once, complete and 8 bytes long)."""
    resol: bytes | None = None
    offsets: list[bytes | None] = []
    at = 0
    opt = struct.Struct(endian + "HH").unpack_from
    while len(area) - at >= 4:
        code, length = opt(area, at)
        if code == 0:
            break
        start = at + 4
        whole = start + length <= len(area)
        if code == 9 and whole:
            resol = area[start : start + length]
        elif code == 14:
            offsets.append(area[start : start + length] if whole else None)
        at = start + length + (-length % 4)
    per_s = 1_000_000
    if resol is not None and len(resol) == 1:
        per_s = (2 if resol[0] & 128 else 10) ** (resol[0] & 127)
    offset = 0
    if len(offsets) == 1 and offsets[0] is not None and len(offsets[0]) == 8:
        offset = struct.unpack(endian + "q", offsets[0])[0] * 1_000_000_000
    return per_s, offset
