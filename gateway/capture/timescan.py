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
A gzipped file is read through gzip, as the reader reads it (``gateway.capture.reader._Gunzipped``: a stream cut
short or damaged ends there, for the pass as for the reader). Where the file cannot be walked to its end the same way (it is
not a capture, a block length is malformed, a record is larger than :data:`MAX_BLOCK`), the scan says
so (``complete`` False): its caller must then assume nothing about the rest.

:class:`TimeScanner` is the same pass walked only as far as it is asked to: ``duisgw replay --follow`` keeps
it a bounded distance (:data:`gateway.replay.SCAN_AHEAD`) ahead of the reader of a file that is being
written, as far as it has been written, a record the end cuts being waited for, not taken as the file's end
(a finished capture is walked whole before its first decision: its order is then exactly the whole file's).
:class:`FollowScanner` does that for a rotated capture followed file after file (its reader's offsets run over
the files' bytes one after the other): each file's pass, started when the reader opens it.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Protocol, cast

__all__ = ["MAX_BLOCK", "Ahead", "FollowScanner", "TimeScan", "TimeScanner", "scan_files", "scan_times"]

#: a pcapng block larger than this ends the scan (``complete`` False): scapy would read it whole
MAX_BLOCK: Final = 16 << 20
_CHUNK: Final = 1 << 20
_SHB: Final = 0x0A0D0D0A
_EVERY: Final = 256  # records walked between two looks at where the walk is (TimeScanner.walk)


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
    """A forward-only window on a stream: ``need(n)`` makes ``n`` bytes from ``pos`` available; ``base`` is
    the stream offset of ``buf[0]``. ``growing``: the stream is a file being written, whose end is where it
    ends for now (``need`` tries again on its next call)."""

    __slots__ = ("base", "buf", "eof", "f", "growing", "pos")

    def __init__(self, f: IO[bytes], growing: bool = False) -> None:
        self.f = f
        self.buf = b""
        self.pos = 0
        self.base = 0
        self.eof = False
        self.growing = growing

    def need(self, n: int) -> bool:
        if len(self.buf) - self.pos >= n:
            return True
        if self.eof:
            return False
        parts = [self.buf[self.pos :]]
        have = len(parts[0])
        self.base += self.pos
        while have < n:
            chunk = self._read(max(_CHUNK, n - have))
            if not chunk:
                self.eof = not self.growing
                break
            parts.append(chunk)
            have += len(chunk)
        self.buf = b"".join(parts)
        self.pos = 0
        return have >= n

    def _read(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except EOFError:  # (a stream that ends so: its end, as scapy's readers take it)
            return b""

    def skip(self, n: int) -> bool:
        """Move ``n`` bytes on; False when the stream ends first."""
        left = len(self.buf) - self.pos
        if n <= left:
            self.pos += n
            return True
        n -= left
        self.base += len(self.buf)
        self.buf = b""
        self.pos = 0
        while n > 0:
            chunk = self._read(min(n, _CHUNK))
            if not chunk:
                self.eof = True
                return False
            n -= len(chunk)
            self.base += len(chunk)
        return True


def scan_times(path: str | os.PathLike[str]) -> TimeScan:
    """How far the packet times of the capture at ``path`` go back (see the module docstring).
    Raises ``OSError`` when the file cannot be opened."""
    scanner = TimeScanner(path)
    try:
        scanner.walk()
        return TimeScan(0, 0, 0, False) if scanner.failed else scanner.result()
    finally:
        scanner.close()


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


_PCAP_KINDS: Final = {
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\x3c\x4d": (">", 1),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
}


class TimeScanner:
    """The pass of :func:`scan_times`, walked as far as it is asked to: ``walk(until)`` walks the records
    that start before stream offset ``until`` (the offset in the file, or in its gunzipped stream), so a
    consumer can keep the pass a bounded distance ahead of its reader rather than walk the whole file
    before its first item. The figures (``packets``, ``steps``, ``max_step_ns``; ``latest_ns``, the latest
    time so far) cover the records walked (``offset``: where the next one starts).

    ``done``: nothing more will be walked: the file's end (a record it cuts is the reader's end too), or a
    record the pass cannot walk past as the reader would (``complete`` False: ``failed`` when the file is
    not a capture or could not be read at all). ``growing``: the file is being written (followed as it is
    written): its end, or a record it cuts, is where the pass stops for now, and the next ``walk`` goes on
    from there (never ``done`` but by such a record). A gzipped file is never taken as growing."""

    def __init__(self, path: str | os.PathLike[str], *, growing: bool = False) -> None:
        from gateway.capture.reader import _Gunzipped

        raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._raw = raw
        stream: IO[bytes] = raw
        try:
            if raw.read(2) == b"\x1f\x8b":
                # the content as the reader reads it: to where the gzip stream is cut short or damaged, the reader's
                # end too (a damaged stream ends the pass there, as its end; it raises nothing)
                stream = cast(IO[bytes], _Gunzipped(raw, str(path)))
                growing = False
            raw.seek(0)
        except BaseException:
            raw.close()
            raise
        self.growing = growing
        self._b = _Buffer(stream, growing)
        self.packets = 0
        self.steps = 0
        self.max_step_ns = 0
        self.latest_ns = 0
        self.done = False
        self.complete = True
        self.failed = False  # not a capture, or a reading error (scan_times then gives no figures)
        self._kind = ""  # "pcap" or "pcapng" once its header has been read
        self._head = struct.Struct("<III").unpack_from  # pcap: a record header (endian of the file)
        self._mult = 1000
        self._endian = "<"  # pcapng: of the section
        self._interfaces: list[tuple[int, int]] = []  # pcapng, per interface: (ticks per second, offset ns)
        self._prev = 0  # pcapng: the time of the packet before (a simple packet block takes it)

    @property
    def offset(self) -> int:
        b = self._b
        return b.base + b.pos

    def result(self) -> TimeScan:
        return TimeScan(self.packets, self.steps, self.max_step_ns, self.complete)

    def close(self) -> None:
        self._raw.close()

    def walk(self, until: int | None = None) -> None:
        """Walk the records that start before ``until`` (None: to the end), and up to :data:`_EVERY` more."""
        if self.done or (until is not None and self.offset >= until):
            return
        limit = (1 << 62) if until is None else until
        try:
            if not self._kind and not self._start():
                return
            if self._kind == "pcap":
                self._walk_pcap(limit)
            else:
                self._walk_pcapng(limit)
        except (OSError, EOFError, ValueError, struct.error, zlib.error):
            self._stop(complete=False, failed=True)

    def _stop(self, *, complete: bool, failed: bool = False) -> None:
        self.done = True
        self.complete = complete
        self.failed = failed
        self.close()

    def _start(self) -> bool:
        """Read the file's header; False when it is not there (yet) or not a capture's."""
        b = self._b
        if not b.need(4):
            if not self.growing:
                self._stop(complete=False, failed=True)
            return False
        magic = b.buf[b.pos : b.pos + 4]
        if magic == b"\x0a\x0d\x0d\x0a":
            self._kind = "pcapng"
            return True
        if magic not in _PCAP_KINDS:
            self._stop(complete=False, failed=True)
            return False
        if not b.need(24):
            if not self.growing:
                self._stop(complete=False, failed=True)
            return False
        endian, self._mult = _PCAP_KINDS[magic]
        self._head = struct.Struct(endian + "III").unpack_from
        b.pos += 24
        self._kind = "pcap"
        return True

    def _walk_pcap(self, limit: int) -> None:
        b = self._b
        head = self._head
        mult = self._mult
        growing = self.growing
        packets, steps, worst, latest = self.packets, self.steps, self.max_step_ns, self.latest_ns
        countdown = 1
        try:
            while True:
                countdown -= 1
                # (every so many records: a look at each record made the pass 1.6 times as slow)
                if not countdown:
                    countdown = _EVERY
                    if b.base + b.pos >= limit:
                        return
                # the reader's end too: a clean end, or a record header the file's end cuts
                if not b.need(16):
                    if not growing:
                        self._stop(complete=True)
                    return
                sec, frac, caplen = head(b.buf, b.pos)
                if growing and caplen <= MAX_BLOCK and not b.need(16 + caplen):
                    return  # the record is being written
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
                    self._stop(complete=True)  # the last record cut: the reader reads it too
                    return
        finally:
            self.packets, self.steps, self.max_step_ns, self.latest_ns = packets, steps, worst, latest

    def _walk_pcapng(self, limit: int) -> None:
        b = self._b
        growing = self.growing
        endian = self._endian
        interfaces = self._interfaces
        prev = self._prev
        packets, steps, worst, latest = self.packets, self.steps, self.max_step_ns, self.latest_ns
        countdown = 1
        try:
            while True:
                countdown -= 1
                if not countdown:
                    countdown = _EVERY
                    if b.base + b.pos >= limit:
                        return
                if not b.need(12):  # the end (or a block header the end cuts: where the reader ends too)
                    if not growing:
                        self._stop(complete=True)
                    return
                buf, pos = b.buf, b.pos
                section = endian
                btype = struct.unpack_from(section + "I", buf, pos)[0]
                if btype == _SHB:
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x1a\x2b\x3c\x4d":
                        section = ">"
                    elif bom == b"\x4d\x3c\x2b\x1a":
                        section = "<"
                    else:
                        self._stop(complete=False)
                        return
                blen = struct.unpack_from(section + "I", buf, pos + 4)[0]
                if blen < 12 or blen > MAX_BLOCK or (btype == _SHB and blen < 28):
                    self._stop(complete=False)
                    return
                size = blen + (-blen % 4)
                if not b.need(size):
                    if not growing:
                        self._stop(complete=True)  # the file ends inside a block: the reader's end
                    return
                buf, pos = b.buf, b.pos
                if struct.unpack_from(section + "I", buf, pos + size - 4)[0] != blen:
                    self._stop(complete=False)
                    return
                if btype == _SHB:
                    endian = section
                    interfaces = self._interfaces = []
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
                elif btype == 3 and interfaces:  # simple packet (interface 0): the time of the packet before
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
        finally:
            self._endian, self._prev = endian, prev
            self.packets, self.steps, self.max_step_ns, self.latest_ns = packets, steps, worst, latest


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


class Ahead(Protocol):
    """A pass walked ahead of a reader (:class:`TimeScanner`, :class:`FollowScanner`), as the replay uses it."""

    @property
    def max_step_ns(self) -> int: ...

    @property
    def complete(self) -> bool: ...

    @property
    def done(self) -> bool: ...

    def walk(self, until: int | None = None) -> None: ...

    def close(self) -> None: ...


class FollowScanner:
    """:class:`TimeScanner`'s pass over a rotated capture followed file after file, walked as far as it is asked
    to in its reader's offsets (the files' bytes one after the other: the reader's ``stream_offset``).
    ``current()`` says which file the reader is in: ``(serial, where, base)`` (a number that changes with the
    file, a path that opens it, the offset of its first byte), None when none is open. The pass of a file is
    started when the reader opens it (the next file is not known before that), so it is ahead of the reader
    within that file only; it goes on from the latest time of the file before (a step back from that file into
    this one is counted), and the file before is walked to its end first. ``max_step_ns``: the largest step back the passes have found; ``complete`` False
    once one of them could not walk its file as the reader reads it. Never ``done``: a next file may come."""

    done = False

    def __init__(self, current: Callable[[], tuple[int, str, int] | None]) -> None:
        self._current = current
        self._serial = -1
        self._base = 0
        self._scanner: TimeScanner | None = None
        self.max_step_ns = 0
        self.complete = True

    def walk(self, until: int | None = None) -> None:
        where = self._current()
        if where is None:
            return
        serial, path, base = where
        if serial != self._serial:
            latest = 0
            if self._scanner is not None:  # the file before, finished: walked to its end
                self._scanner.walk()
                self._fold(self._scanner)
                latest = self._scanner.latest_ns
            self.close()
            self._serial, self._base = serial, base
            try:
                self._scanner = TimeScanner(path, growing=True)
                # a step back from the file before into this one counts as one within a file
                self._scanner.latest_ns = latest
            except OSError:
                self._scanner = None  # (the reader says why a file cannot be read)
        scanner = self._scanner
        if scanner is None:
            return
        scanner.walk(None if until is None else until - self._base)
        self._fold(scanner)

    def _fold(self, scanner: TimeScanner) -> None:
        self.max_step_ns = max(self.max_step_ns, scanner.max_step_ns)
        if not scanner.complete:
            self.complete = False

    def close(self) -> None:
        if self._scanner is not None:
            self._scanner.close()
            self._scanner = None
