"""Read DUIS requests out of pcap / pcapng captures, streaming, in constant memory.

Theory of operation
-------------------
A capture taken in front of the gateway holds the HTTP/1.1 POSTs the gateway ingests
(``POST /duis/dno/{user}`` -> lane ``inline``; ``POST /duis/observe`` -> lane ``observe``) and the
gateway's responses. :class:`CaptureReader` walks the file once and yields, as soon as each is
known, a :class:`CapturedRequest` per DUIS request and a :class:`FlowReport` per thing that was
damaged, skipped or suspicious.

Layers, each owned by one module:

* file format -- scapy's ``RawPcapReader`` gives raw frames and their capture metadata; pcapng
  through a subclass of its ``RawPcapNgReader`` (``_pcapng_reader``) that applies ``if_tsoffset``
  and numbers interfaces per section. The file is never loaded whole. Several files are read as one
  capture (a rotated capture) by merging their records by capture time (``_walk_files``), so a
  connection that goes on from one file into the next is one connection to the layers below. One file
  that is being written is read as it grows (``Follow``; ``_FollowedFile``, ``_records``): a record is read
  once it is written whole, and :meth:`CaptureReader.following` marks each time the reader has caught up.
* link / IP / TCP headers -- the hot loop (``_run_raw``) does header arithmetic with ``struct`` on
  the raw frame for Ethernet (with VLAN tags), Linux cooked SLL/SLL2, raw IPv4/IPv6 and BSD
  loopback/NULL; any other link type is handed to scapy's dissector for that packet
  (``_scapy_fields``). ``decoder="scapy"`` dissects *every* packet with scapy instead -- the slow
  baseline the benchmark compares against.
* IP fragments (IPv4, IPv6 fragment headers) of TCP datagrams -- ``ipfrag.Defragmenter``, one
  for the file, bounded in time (``fragment_timeout``, capture time) and memory
  (``max_fragment_bytes``); conflicting overlaps are reported (``ip-fragment-conflict``) and
  the datagram is not used.
* TCP reassembly per direction -- ``tcp.TcpStream``.
* HTTP framing per direction -- ``http.HttpStreamParser`` (llhttp underneath, through httptools); requests from the
  client stream, responses from the server stream; the n-th response of a connection answers
  its n-th request (whose method and Upgrade header the response parser is told).

Flows: a connection is keyed by its 4-tuple, both directions. The client is the side that sent
the SYN; without a handshake in the capture, the side talking to a port in ``ports``, else the
side whose first bytes look like a request, else the side with the higher port. A connection
ends on FIN from both sides, on an RST its receiver takes (RFC 5961: at the sequence number it
expects, ``TcpStream.reset_acceptable``; others are counted in an ``ignored-rst`` report), after
``idle_timeout`` seconds of capture time without a packet, or at the end of the file; its state
is then dropped, so memory is bounded by the number
of concurrently open connections times the per-flow bounds (held out-of-order bytes
``max_pending``, message head ``max_head``, stored body ``max_body``), whatever the file size.
After FIN or RST, segments on its addresses and ports are ignored for 120 s (counted in a
``late-data`` report when they carry data); a connection dropped by the reader itself (idle
timeout, full flow table) is picked up again, without its start, when traffic resumes on it.

A request is yielded once it is settled (see ``_Connection``): its bytes are then the ones the
server read, and a retransmission that differs before that makes it unusable (``overlap-conflict``).

Damage is reported, never raised: a missing segment (gap) damages the request in progress and
makes everything after it on that connection untrusted (reported with an estimate of the
requests lost); the next connection starts clean. A truncated or corrupt file ends the walk at
the last readable record with a ``truncated-file`` report; flows still open then are flushed (their
incomplete requests reported). Only a file that is not a capture at all raises
:class:`CaptureError`.

Times are capture times: ``first_byte_time`` is the time of the packet holding the request's
first byte, ``time`` that of the packet that completed it (UTC). IP and TCP checksums are not
verified (captures taken on the sending host carry offloaded, unfilled checksums).
"""

from __future__ import annotations

import functools
import heapq
import os
import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import Collection, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final, Literal, NamedTuple, cast

from gateway.capture.http import HttpProblem, HttpRequest, HttpResponse, HttpStreamParser
from gateway.capture.ipfrag import Defragmenter
from gateway.capture.rotation import GZ_SUFFIX, RotatedFile, Rotation
from gateway.capture.tcp import TcpStream
from gateway.errors import DuisgwError

__all__ = [
    "CaptureError",
    "CaptureReader",
    "CapturedRequest",
    "Flow",
    "FlowReport",
    "Follow",
    "Lane",
    "read_capture",
]

Lane = Literal["inline", "observe"]
DUIS_NAMESPACE: Final = b"http://www.dccinterface.co.uk/ServiceUserGateway"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NS_US: Final = timedelta(microseconds=1)
_FIN: Final = 0x01
_SYN: Final = 0x02
_RST: Final = 0x04
_ACK: Final = 0x10
_METHODS: Final = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")
_TIME_WAIT_NS: Final = 120 * 1_000_000_000
_MAX_CLOSED: Final = 65536
_MAX_AWAITING: Final = 256
_REQ_LINE_END: Final = b" HTTP/1.1\r\n"
# Refusals after which the gateway's HTTP server closes the connection: a body that does not
# decode is a payload error for aiohttp, which closes it; a body over the cap is answered 413 and
# the connection closed (gateway/service/ingress.py, ``_text(close=True)``).
_CLOSING: Final = frozenset({"content-encoding", "oversize-body"})
# Largest record read whole: scapy's own bound on one read (4 x 65,535). Its iterators cut each
# record at 65,535 bytes, but a loopback frame is up to 65,549 (Linux lo: a 65,536-byte MTU).
_MAX_RECORD: Final = 4 * 0xFFFF
_VLAN: Final = frozenset((0x8100, 0x88A8, 0x9100))  # 802.1Q, 802.1ad and old QinQ tag types
_TCP_HDR = struct.Struct("!HHIIH")
_U16 = struct.Struct("!H")
_MAX_FRAG_DATAGRAMS: Final = 4096  # IP datagrams under reassembly at once
_V6_EXT: Final = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options


class CaptureError(DuisgwError):
    """The file is not a readable pcap/pcapng capture at all (damage inside one is reported)."""

    code = "capture-unreadable"


class Follow:
    """How a capture file that is being written (``tcpdump -w``, dumpcap) is read: to the end written so far,
    then, each time more is wanted, after waiting for the file to grow (its size looked at every ``poll``
    seconds). A record the file's end cuts is one being written: it is waited for, not taken as damage.

    The following ends, and the capture with it, once :meth:`stop` has been called (no record is read
    after that; a signal handler may call it: it sets an attribute), after ``idle`` seconds without the
    file growing (None: never), or when the file becomes shorter than what was read of it (overwritten or
    truncated; a rotated capture read file after file, :class:`gateway.capture.rotation.Rotation`, goes on
    with its next file instead). ``reason`` says why it ended (None while it goes on)."""

    def __init__(self, *, poll: float = 0.05, idle: float | None = None) -> None:
        self.poll = poll
        self.idle = idle
        self.reason: str | None = None
        self._size: object = -1
        self._grown = 0.0

    def stop(self, reason: str = "stopped") -> None:
        if self.reason is None:
            self.reason = reason

    def pause(self, fd: int, pos: int, *, shrink_ends: bool = True) -> int:
        """Wait ``poll`` seconds for the file (``fd``, read up to ``pos``) to grow, and end the following when
        it has not grown for ``idle`` seconds or (``shrink_ends``) has become shorter than ``pos``. Returns the
        file's size."""
        time.sleep(self.poll)
        size = os.fstat(fd).st_size
        if size < pos and shrink_ends:
            self.stop(f"the file became shorter ({size} bytes) than what was read of it ({pos} bytes)")
        else:
            self.observe(size)
        return size

    def wait(self, progress: object) -> None:
        """Wait ``poll`` seconds for something to read, ``progress`` being what is there to read so far (it
        changes when there is more: a file's size, the files of a rotated capture)."""
        time.sleep(self.poll)
        self.observe(progress)

    def observe(self, progress: object) -> None:
        """``progress`` (see :meth:`wait`) as it is now: the following ends once it has not changed for ``idle``
        seconds."""
        now = time.monotonic()
        if progress != self._size:
            self._size = progress
            self._grown = now
        elif self.idle is not None and now - self._grown >= self.idle:
            self.stop(f"no growth for {self.idle:g} s")


class _FollowedFile:
    """A file being written, as scapy's readers read it: ``read(n)`` waits for the ``n`` bytes (the rest of a
    record being written) while the following goes on; once it has ended, a read gives what is there.

    A file of a rotated capture (``rotated``): once its writer has started the next file (``final``), it is
    finished and a read gives what is there too; and a file found shorter than what was read of it was
    overwritten (a tcpdump ring came round to it): ``overwritten``, and the read gives what it had."""

    __slots__ = ("_fd", "_fh", "_follow", "final", "name", "overwritten", "rotated")

    def __init__(self, fh: IO[bytes], follow: Follow, *, rotated: bool = False) -> None:
        self._fh = fh
        self._fd = fh.fileno()
        self._follow = follow
        self.name = fh.name
        self.rotated = rotated
        self.final = False
        self.overwritten = False

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        if n < 0 or len(data) >= n or self._follow.reason is not None or self.final:
            return data
        parts = [data]
        have = len(data)
        while have < n and self._follow.reason is None and not self.final:
            pos = self._fh.tell()
            if self._follow.pause(self._fd, pos, shrink_ends=not self.rotated) < pos:
                self.overwritten = self.final = True
                break
            more = self._fh.read(n - have)
            if more:
                parts.append(more)
                have += len(more)
        return b"".join(parts)

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fh.seek(pos, whence)

    def fileno(self) -> int:
        return self._fd

    @property
    def inner(self) -> IO[bytes]:
        return self._fh

    def close(self) -> None:
        self._fh.close()


GZIP_MAGIC: Final = b"\x1f\x8b"
#: decompressed bytes taken from gzip at a time (at most)
_GZ_CHUNK: Final = 1 << 18
#: compressed bytes read from a gzipped file at a time
_GZ_IN: Final = 1 << 16
#: decompressed bytes kept behind the reading position: a look back at the end of a file within them (the bytes
#: after its last whole record) does not decompress it again
_GZ_KEEP: Final = 2 << 20
#: the largest read of a gzipped file's content: a pcapng block announced longer (scapy reads a block whole; no
#: capture tool writes one this long) is damage, not read (a few KiB of gzip can announce and hold 4 GiB)
_GZ_MAX_READ: Final = 64 << 20


class _Gunzipped:
    """A gzipped capture file's content, as scapy's readers read a file: inflated by :mod:`zlib` (one gzip member
    or several: concatenated members are one content, zeros after a member skipped as gzip skips them), a chunk
    at a time, never whole in memory. The last :data:`_GZ_KEEP` bytes read are kept, so a look back a little way
    (the end of the file checked after its last record: ``CaptureReader._trailing_garbage``) costs nothing;
    further back, the file is decompressed again.

    A gzip stream cut short (a truncated ``.gz``) or damaged (data that does not inflate, a CRC or length that does
    not match, bytes after the last member that are not one) ends the content where it went wrong: everything
    inflated before that is read, up to the last byte the compressed data before the damage gives (not only the
    chunks before the one the damage is in: a damaged first chunk is not a file that cannot be read), and
    ``error`` says what went wrong and where (the reader reports the file as ended early: ``truncated-file``)."""

    __slots__ = ("_after", "_at", "_base", "_cur", "_d", "_fed", "_hist", "_hist_size", "_raw", "_read_in",
                 "_tail", "eof", "error", "name")  # fmt: skip

    def __init__(self, raw: IO[bytes], name: str) -> None:
        self._raw = raw
        self.name = name
        self._d = zlib.decompressobj(31)  # the member being inflated (gzip header; CRC-32 and length checked)
        self._fed = False  # it has been given compressed bytes
        self._after = False  # a member has ended before it
        self._tail = b""  # compressed bytes read and not inflated yet
        self._read_in = 0  # compressed bytes read from the file
        self._cur = b""  # the chunk being read
        self._base = 0  # the content offset of its first byte
        self._at = 0  # the position in it
        self._hist: deque[bytes] = deque()  # the chunks before it, kept (about _GZ_KEEP bytes)
        self._hist_size = 0
        self.eof = False  # the content's end (or where it went wrong) reached
        self.error: str | None = None

    def read(self, n: int = -1) -> bytes:
        cur = self._cur
        at = self._at
        end = at + n
        if n >= 0 and end <= len(cur):
            self._at = end
            return cur[at:end]
        return self._read_more(n)

    def _read_more(self, n: int) -> bytes:
        if n < 0 or n > _GZ_MAX_READ:
            if self.error is None:
                self.error = (
                    f"a read of {n if n >= 0 else 'everything'} bytes at byte {self.tell()} of the content (a "
                    f"record announced longer than {_GZ_MAX_READ >> 20} MiB: no capture tool writes one) is not made"
                )
            self.eof = True
            return b""
        parts: list[bytes] = []
        have = 0
        while True:
            cur, at = self._cur, self._at
            take = min(n - have, len(cur) - at)
            if take > 0:
                parts.append(cur[at : at + take])
                self._at = at + take
                have += take
            if have >= n or not self._next_chunk():
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _next_chunk(self) -> bool:
        """The next chunk of the content, once the current one has been read (False: the end, or damage)."""
        if self.eof:
            return False
        chunk, problem = self._inflate()
        if chunk:
            old = self._cur
            if old:
                self._hist.append(old)
                self._hist_size += len(old)
                while self._hist_size - len(self._hist[0]) >= _GZ_KEEP:
                    self._hist_size -= len(self._hist.popleft())
            self._base += len(old)
            self._cur = chunk
            self._at = 0
        if problem is not None:
            self.eof = True
            if self.error is None:  # (decompressed again from the start: the same damage, said once)
                self.error = f"{problem}, at byte {self._base + len(self._cur)} of its content"
        elif not chunk:
            self.eof = True
        return bool(chunk)

    def _inflate(self) -> tuple[bytes, str | None]:
        """The next piece of the content (at most :data:`_GZ_CHUNK` bytes; empty: nothing is left), and what went
        wrong when the stream ends after it (cut short, damaged: the piece is then what inflates before that)."""
        while True:
            if not self._tail:
                try:
                    data = self._raw.read(_GZ_IN)
                except (OSError, ValueError) as e:
                    return b"", f"the gzip file cannot be read ({e}; {self._read_in} bytes of it read)"
                if not data:
                    if self._fed:  # inside a member: the rest of it (and its CRC-32 and length) is not there
                        return b"", (
                            "the gzip stream is cut short (no end-of-stream marker): the .gz file is truncated "
                            f"({self._read_in} bytes of it read)"
                        )
                    return b"", None  # the end, after a whole member
                self._read_in += len(data)
                self._tail = data
            tail = self._tail
            # between members: zeros some tools pad with are skipped, as gzip skips them
            if self._after and not self._fed:
                tail = tail.lstrip(b"\0")
                if not tail:
                    self._tail = b""
                    continue
            before = self._d.copy()
            try:
                out = self._d.decompress(tail, _GZ_CHUNK)
            except zlib.error as e:
                # zlib gives nothing of a call that meets damage: what the bytes before it inflate to is found again
                out, used = _inflate_before_damage(before, tail)
                self._tail = b""
                where = self._read_in - len(tail) + used
                return out, f"the gzip stream is damaged ({e}, at byte {where} of the compressed file)"
            self._fed = True
            # the member's end (its CRC-32 and length matched): what follows is the next member
            if self._d.eof:
                self._tail = self._d.unused_data
                self._d = zlib.decompressobj(31)
                self._fed = False
                self._after = True
            else:
                self._tail = self._d.unconsumed_tail
            if out:
                return out, None

    def exhausted(self) -> bool:
        """Nothing is left to read (its end, or where it went wrong)."""
        return self._at >= len(self._cur) and not self._next_chunk()

    def tell(self) -> int:
        return self._base + self._at

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self.tell()
        elif whence != 0:
            raise OSError("a gzipped capture is not sought from its end")
        if pos < self._base:  # back, before the chunk being read
            start = self._base - self._hist_size
            if pos >= start:  # within the chunks kept: they are the chunk read now
                self._cur = b"".join((*self._hist, self._cur))
                self._hist.clear()
                self._hist_size = 0
                self._base = start
            else:  # further back: decompressed again from the start (``error``, when there was one, is kept)
                self._raw.seek(0)
                self._d = zlib.decompressobj(31)
                self._fed = self._after = False
                self._tail = b""
                self._read_in = 0
                self._cur, self._base, self._at, self.eof = b"", 0, 0, False
                self._hist.clear()
                self._hist_size = 0
        while pos > self._base + len(self._cur) and self._next_chunk():  # forward
            pass
        self._at = max(0, min(pos - self._base, len(self._cur)))
        return self.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()


def _inflate_before_damage(before: Any, data: bytes) -> tuple[bytes, int]:
    """What the inflater ``before`` (its state before ``data``, which meets damage) gives of ``data`` up to the
    damage: the longest start of ``data`` that inflates without an error (found by halving), and its length."""
    good, bad = 0, len(data)
    out = b""
    while bad - good > 1:
        mid = (good + bad) // 2
        try:
            got = before.copy().decompress(data[:mid], _GZ_CHUNK)
        except zlib.error:
            bad = mid
        else:
            good, out = mid, got
    return out, good


def _gunzipped(f: object) -> _Gunzipped | None:
    """The gzipped file's content ``f`` reads (None: ``f`` is not one)."""
    if isinstance(f, _FollowedFile):
        f = f.inner
    return f if isinstance(f, _Gunzipped) else None


def _gunzip_capture(fh: IO[bytes], path: Path) -> _Gunzipped:
    """The content of the gzipped file ``fh``, once it is known to start as a pcap or pcapng capture;
    :class:`CaptureError` when it does not (a gzip of something else) or the gzip stream cannot be read at all."""
    gz = _Gunzipped(fh, str(path))
    head = gz.read(4)
    if gz.error is not None and len(head) < 4:
        raise CaptureError(f"{path}: a gzipped file that cannot be read: {gz.error}")
    if head not in _PCAP_MAGICS and head != _NG_SHB:
        raise CaptureError(
            f"{path}: a gzipped file whose content is not a pcap/pcapng capture (it starts with {head!r})"
        )
    gz.seek(0)
    return gz


_PCAP_MAGICS: Final = frozenset(
    (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1")
)
_NG_SHB: Final = b"\x0a\x0d\x0d\x0a"
_NG_PACKETS: Final = frozenset((2, 3, 6))  # (obsolete) packet, simple packet, enhanced packet blocks
#: a block (pcapng) or record (pcap) announced longer than this is not waited for (no capture tool writes
#: one): it is read as it is, as in a file that is not being written
_FOLLOW_MAX: Final = 16 << 20
#: a tcpdump ring read file after file: records read between two looks at whether the file being read has been
#: written again (the ring came round to it)
_RING_CHECK: Final = 64
#: a rotated capture: each file's stream offsets start at a multiple of this (``CaptureReader.stream_offset``)
_FILE_SPAN: Final = 1 << 48
#: what a followed file's records give when the next record is not written yet (see ``_records``)
_WAITING: Final[tuple[bytes, Any]] = (b"", None)


def _ng_next_packet(fd: int, at: int, size: int, endian: str) -> tuple[int, bool | None]:
    """From stream offset ``at`` of a pcapng file ``size`` bytes long, past the whole blocks that are not
    packets: where that walk stopped, and whether a whole packet block is there (True), a block not written
    whole yet or nothing (False), or a block whose header is malformed (None: for scapy's reader to refuse)."""
    while size - at >= 12:
        head = os.pread(fd, 12, at)
        if len(head) < 12:
            return at, False
        if head[:4] == _NG_SHB:  # a new section: its own byte order
            bom = head[8:12]
            if bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            elif bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            else:
                return at, None
        btype, blen = struct.unpack(endian + "II", head[:8])
        if blen < 12 or blen > _FOLLOW_MAX:
            return at, None
        end = at + blen + (-blen % 4)
        if end > size:
            return at, False
        if btype in _NG_PACKETS:
            return at, True
        at = end
    return at, False


@dataclass(frozen=True, slots=True)
class Flow:
    """A TCP connection, client -> server."""

    src: str
    sport: int
    dst: str
    dport: int

    def __str__(self) -> str:
        def ep(a: str, p: int) -> str:
            return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"

        return f"{ep(self.src, self.sport)} -> {ep(self.dst, self.dport)}"


@dataclass(frozen=True, slots=True)
class CapturedRequest:
    """One DUIS request found in a capture.

    ``time``: capture time of the packet that completed the request; ``first_byte_time``: of the
    packet that carried its first byte (both UTC). ``user``: the ``{user}`` path segment of the
    inline lane, percent-decoded, as sent (an EUI-64 such as ``90-B3-D5-1F-30-02-00-00`` or a
    configured name); None on the observe lane. ``response_status``: status of the gateway's
    response on the same connection, None when it was not in the capture.
    """

    time: datetime
    first_byte_time: datetime
    flow: Flow
    method: str
    path: str
    lane: Lane
    user: str | None
    headers: tuple[tuple[str, str], ...]
    body: bytes
    response_status: int | None = None
    #: the name of the capture file holding the packet that completed it (of several read as one)
    file: str | None = None

    def header(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None


@dataclass(frozen=True, slots=True)
class FlowReport:
    """Something in the capture that was damaged, skipped or suspicious (see docs/CAPTURES.md).

    ``flow`` is None for file-level reports. ``requests_lost`` counts requests known (or, after a
    gap, estimated from request lines seen) not to be yielded because of this.
    """

    code: str
    detail: str
    flow: Flow | None = None
    time: datetime | None = None
    requests_lost: int = 0
    path: str | None = None
    #: a request lost in a ``gap``: the capture time of its first byte, and how many of its bytes came
    first_byte_time: datetime | None = None
    bytes_seen: int = 0
    #: the name of the capture file being read when it was made (of several read as one)
    file: str | None = None

    def __str__(self) -> str:
        where = f" [{self.flow}]" if self.flow else ""
        return f"{self.code}{where}: {self.detail}"


@dataclass(slots=True)
class CaptureStats:
    packets: int = 0
    tcp_packets: int = 0
    bytes_read: int = 0
    connections: int = 0
    requests: int = 0
    reports: int = 0
    udp_packets: int = 0
    other_ip_packets: int = 0
    non_ip_packets: int = 0
    ip_fragments: int = 0
    ip_fragments_cut: int = 0  # fragments cut short by the snap length (not used)
    unsupported_link: int = 0
    snapped_segments: int = 0
    snapped_bytes: int = 0
    time_backwards: int = 0  # packets with a capture time earlier than one before them
    max_time_back_ns: int = 0
    late_segments: int = 0
    late_data_segments: int = 0
    late_data_bytes: int = 0
    evicted_idle: int = 0
    max_open_connections: int = 0
    linktypes: dict[int, int] = field(default_factory=dict)


class _NgMeta(NamedTuple):
    """What the walk needs of a pcapng packet record."""

    linktype: int
    ts: int | None  # ns since the epoch, if_tsresol and if_tsoffset applied; None: no time (SPB)
    #: a pcap record shorter than its declared length (the file's end cut it); only when several files
    #: are read as one (a pcapng record is never short: a cut block is not read)
    short: bool = False


@functools.cache
def _pcapng_reader() -> Any:
    """scapy's ``RawPcapNgReader``, corrected where it is wrong for this reader:

    * the interface's ``if_tsoffset`` (option 14: seconds to add to its timestamps) is applied
      (scapy does not read it); its ``if_tsresol`` (option 9: 10^-n, or 2^-n when the top bit is
      set) is scapy's, which reads both kinds;
    * interface IDs are numbered per section, as pcapng defines them (a file of concatenated
      captures has several sections; scapy numbers interfaces across the whole file);
    * records carry :class:`_NgMeta`, the capture time in ns computed once here.
    """
    from scapy.utils import RawPcapNgReader

    class PcapNgReader(RawPcapNgReader):
        section = -1  # sections read so far, less one
        option_problems: list[str] | None = None  # malformed time options, for the reader to report

        def _read_block_shb(self) -> None:
            super()._read_block_shb()
            self.interfaces = []  # a new section: its interfaces are numbered from 0
            self.offsets_ns: list[int] = []
            self.section += 1
            if self.option_problems is None:
                self.option_problems = []

        def _read_block_idb(self, block: bytes, size: int) -> None:
            super()._read_block_idb(block, size)
            found = self._time_options(block[8:])
            resol, offset = found[9], found[14]
            off = 0
            if len(offset) == 1 and offset[0] is not None and len(offset[0]) == 8:
                off = struct.unpack(self.endian + "q", offset[0])[0]
            self.offsets_ns.append(off * 1_000_000_000)
            where = f"pcapng section {self.section + 1}, interface {len(self.interfaces) - 1}"
            for name, values, size_ok, fallback in (
                ("if_tsresol", resol, 1, "the default resolution (µs) is used"),
                ("if_tsoffset", offset, 8, "no offset is applied"),
            ):
                if not values or (len(values) == 1 and values[0] is not None and len(values[0]) == size_ok):
                    continue
                if len(values) > 1:
                    what = f"appears {len(values)} times (once at most)"
                    fallback = "the last one is used" if name == "if_tsresol" else fallback
                elif values[0] is None:
                    what = "runs past the end of its block"
                else:
                    what = f"is {len(values[0])} bytes long (must be {size_ok})"
                assert self.option_problems is not None
                self.option_problems.append(
                    f"{where}: its {name} option {what}; {fallback}, so the capture times of its packets "
                    "(the replay's arrival times) may be wrong"
                )

        def _time_options(self, area: bytes) -> dict[int, list[bytes | None]]:
            """The values of the ``if_tsresol`` (9) and ``if_tsoffset`` (14) options of an IDB's
            option area, each occurrence in order; None for one that runs past the area."""
            found: dict[int, list[bytes | None]] = {9: [], 14: []}
            at = 0
            fmt = self.endian + "HH"
            while len(area) - at >= 4:
                code, length = struct.unpack_from(fmt, area, at)
                if code == 0:  # opt_endofopt
                    break
                start = at + 4
                if code in found:
                    found[code].append(area[start : start + length] if start + length <= len(area) else None)
                at = start + length + (-length % 4)
            return found

        def _stamp(self, res: Any, intid: int) -> tuple[bytes, _NgMeta] | None:
            if res is None:
                return None
            data, meta = res
            if meta.tshigh is None:
                return (data, _NgMeta(meta.linktype, None))
            ticks = (meta.tshigh << 32) | meta.tslow
            ts = ticks * 1_000_000_000 // meta.tsresol + self.offsets_ns[intid]
            return (data, _NgMeta(meta.linktype, ts))

        def _read_block_epb(self, block: bytes, size: int) -> Any:
            # The hot one, read here (scapy's parses each packet's options, which the reader
            # does not use), with scapy's checks: a short block ends the file, a record of an
            # interface the section has not described is skipped.
            try:
                intid, tshigh, tslow, caplen, _ = struct.unpack_from(self.endian + "5I", block)
            except struct.error:
                raise EOFError from None
            if intid >= len(self.interfaces):
                return None
            linktype, _, options = self.interfaces[intid]
            ts = ((tshigh << 32) | tslow) * 1_000_000_000 // options["tsresol"] + self.offsets_ns[intid]
            return (block[20 : 20 + min(caplen, size)], _NgMeta(linktype, ts))

        def _read_block_pkt(self, block: bytes, size: int) -> Any:
            res = super()._read_block_pkt(block, size)
            return self._stamp(res, struct.unpack_from(self.endian + "H", block)[0] if res else 0)

        def _read_block_spb(self, block: bytes, size: int) -> Any:
            return self._stamp(super()._read_block_spb(block, size), 0)

    return PcapNgReader


def _record_time(record: tuple[int, int, bytes, _NgMeta]) -> int:
    return record[0]


def ns_to_datetime(ns: int) -> datetime:
    """Capture time (ns since the epoch) as an aware UTC datetime (microsecond precision)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


@dataclass(slots=True)
class _Awaiting:
    request: HttpRequest
    lane: Lane | None  # None: rejected (reported already), kept only to pair responses in order
    user: str | None
    path: str
    file: str  # the file of the packet that completed it


class _ClientSide:
    """Sink of the client->server stream: frames requests, classifies them."""

    __slots__ = ("closed", "conn", "lost_lines", "parser", "started")

    def __init__(self, conn: _Connection, parser: HttpStreamParser) -> None:
        self.conn = conn
        self.parser = parser
        self.started = False
        self.closed = False  # the gateway closed the connection after a request it refused
        self.lost_lines = 0  # request lines seen after the stream became untrusted

    def on_data(self, data: bytes, ts: int) -> None:
        parser = self.parser
        if not self.started:
            self.started = True
            if self.conn.client.midstream:
                parser.midstream()
        if parser.dead:
            self.lost_lines += data.count(_REQ_LINE_END)
            parser.discarded += len(data)
            return
        for ev in parser.feed(data, ts):
            if self.closed:  # framed in this delivery after a request that closed the connection
                if isinstance(ev, HttpRequest):
                    self.lost_lines += 1
                    parser.discarded += ev.end - ev.start
                continue
            self.conn.on_request_event(ev)

    def close(self) -> None:
        """The gateway closes the connection after the request just framed: it reads no more."""
        self.closed = True
        self.parser.stop()
        self.conn.client.discard()

    def on_gap(self, length: int, ts: int) -> None:
        for ev in self.parser.gap(length, ts):
            self.conn.on_request_event(ev)

    def on_conflict(self, offset: int, ts: int) -> None:
        self.conn.on_request_conflict(offset, ts)

    def on_end(self, ts: int) -> None:
        for ev in self.parser.end(ts):
            self.conn.on_request_event(ev)


class _ServerSide:
    """Sink of the server->client stream: frames responses, pairs them with requests."""

    __slots__ = ("conn", "parser", "started")

    def __init__(self, conn: _Connection, parser: HttpStreamParser) -> None:
        self.conn = conn
        self.parser = parser
        self.started = False

    def on_data(self, data: bytes, ts: int) -> None:
        parser = self.parser
        if not self.started:
            self.started = True
            if self.conn.server.midstream:
                parser.midstream()
        if parser.dead:
            parser.discarded += len(data)
            return
        for ev in parser.feed(data, ts):
            self.conn.on_response_event(ev)

    def on_gap(self, length: int, ts: int) -> None:
        for ev in self.parser.gap(length, ts):
            self.conn.on_response_event(ev)

    def on_conflict(self, offset: int, ts: int) -> None:
        for ev in self.parser.conflict(offset, ts):
            self.conn.on_response_event(ev)

    def on_end(self, ts: int) -> None:
        for ev in self.parser.end(ts):
            self.conn.on_response_event(ev)


class _Connection:
    """Both directions of one connection. A complete request is yielded when it is settled:

    * with ``pair_responses`` (while the response stream can be followed): when its response
      comes (``awaiting``; the n-th response answers the n-th request);
    * otherwise: once the server has acknowledged its last byte (``unsettled``), or at once when
      the capture holds no acknowledgement from the server at all.

    A settled request's bytes are the ones the server read, so a retransmission that differs
    from them later changes nothing; one that differs before makes every request not settled
    yet from that offset on unusable (``on_request_conflict``). A request still waiting when its
    connection ends, or ``response_timeout`` after it was complete, is yielded as it is.
    """

    __slots__ = (
        "awaiting",
        "client",
        "client_ack",
        "client_key",
        "finished",
        "flow",
        "framed",
        "ignored_resets",
        "last_ts",
        "reader",
        "released_end",
        "req_side",
        "resp_side",
        "responses",
        "server",
        "server_key",
        "unpaired_responses",
        "unsettled",
    )

    def __init__(self, reader: CaptureReader, client_key: tuple[Any, ...], flow: Flow, ts: int) -> None:
        self.reader = reader
        self.client_key = client_key
        self.server_key = (client_key[2], client_key[3], client_key[0], client_key[1])
        self.flow = flow
        self.last_ts = ts
        self.finished = False
        self.awaiting: deque[_Awaiting] = deque()  # waiting for their response
        self.unsettled: deque[_Awaiting] = deque()  # waiting for the server's acknowledgement
        self.framed = 0  # requests framed on this connection
        self.responses = 0  # final responses framed
        self.released_end = 0  # stream offset where the last request yielded ends
        self.unpaired_responses = 0
        self.ignored_resets = 0  # RST segments the receiver does not take (not where it expects one)
        self.client_ack = -1  # the acknowledgement number of the client's last ACK
        self.req_side = _ClientSide(
            self, HttpStreamParser("request", max_head=reader.max_head, max_body=reader.max_body)
        )
        self.resp_side = _ServerSide(self, HttpStreamParser("response", max_head=reader.max_head))
        self.client = TcpStream(self.req_side, max_pending=reader.max_pending)
        self.server = TcpStream(self.resp_side, max_pending=reader.max_pending)

    # -- events from the HTTP parsers ---------------------------------------------------------
    def on_request_event(self, ev: HttpRequest | HttpResponse | HttpProblem) -> None:
        reader = self.reader
        if isinstance(ev, HttpRequest):
            self.resp_side.parser.expect_response_to(ev.method, upgrade=ev.header("upgrade") is not None)
            lane, user, path, problem = _classify(ev, reader.max_body, reader.content_types)
            if problem is not None:
                code, detail = problem
                if code in _CLOSING:  # nothing after it on this connection reaches the gateway
                    detail += "; nothing after it on the connection is used"
                    self.req_side.close()
                reader.report(code, detail, self.flow, ev.last_ts, 1, path)
                lane = None
            self.framed += 1
            item = _Awaiting(ev, lane, user, path, reader._file)
            if reader.pair_responses and not self.resp_side.parser.dead:
                self.awaiting.append(item)
                reader._waiting[id(self)] = self
                if len(self.awaiting) > _MAX_AWAITING:
                    self._release(self.awaiting.popleft(), None)
            elif lane is None:
                pass
            elif not self.client.peer_acks or self.client.acked >= ev.end:
                self._release(item, None)
            else:
                self.unsettled.append(item)
                reader._waiting[id(self)] = self
                if len(self.unsettled) > _MAX_AWAITING:
                    self._release(self.unsettled.popleft(), None)
            return
        if isinstance(ev, HttpProblem):
            if ev.code == "resync":
                reader.report("midstream", ev.detail, self.flow, ev.ts)
                return
            if ev.code in ("not-http",):
                self.client.discard()
                self.server.discard()
            lost = 1 if ev.in_message or ev.code == "gap" else 0  # client bytes are requests
            if ev.first_ts:  # a request lost in a gap: what is known of it
                reader.report(ev.code, "request stream: " + ev.detail, self.flow, ev.ts, lost, ev.path,
                              first_ts=ev.first_ts, seen=ev.seen)  # fmt: skip
            else:
                reader.report(ev.code, "request stream: " + ev.detail, self.flow, ev.ts, lost)

    def on_request_conflict(self, offset: int, ts: int) -> None:
        """The request stream's bytes from ``offset`` on are ambiguous (see TcpStream): requests
        not settled yet that end after it are not used, nor is anything framed after it."""
        withheld = 0
        for queue in (self.awaiting, self.unsettled):
            for item in queue:
                if item.lane is not None and item.request.end > offset:
                    item.lane = None  # kept in ``awaiting`` to pair the responses in order
                    withheld += 1
        events = self.req_side.parser.conflict(offset, ts)
        yielded = self.released_end > offset
        if not events and not withheld and not yielded:
            return  # the stream was untrusted already
        lost = withheld + sum(1 for e in events if isinstance(e, HttpProblem) and e.in_message)
        detail = (
            f"request stream: a retransmission differs from the first copy at stream offset {offset}, "
            "before the server acknowledged it: which copy the server read is unknown"
        )
        if withheld:
            detail += f"; {withheld} complete request(s) not yet acknowledged are not used"
        if yielded:
            detail += (
                "; a request already yielded (the capture holds no acknowledgement of it) has bytes "
                "after that offset and may not be what the server read"
            )
        self.reader.report("overlap-conflict", detail, self.flow, ts, lost)

    def settle(self) -> None:
        """The server's acknowledgement moved: yield the requests it covers."""
        unsettled = self.unsettled
        acked = self.client.acked
        while unsettled and unsettled[0].request.end <= acked:
            self._release(unsettled.popleft(), None)
        if not unsettled and not self.awaiting:
            self.reader._waiting.pop(id(self), None)

    def on_response_event(self, ev: HttpRequest | HttpResponse | HttpProblem) -> None:
        if isinstance(ev, HttpResponse):
            self.responses += 1
            if self.awaiting:
                self._release(self.awaiting.popleft(), ev.status)
            elif not self.reader.pair_responses and self.responses <= self.framed:
                pass  # answers a request yielded without waiting for it
            else:
                self.unpaired_responses += 1
            return
        if isinstance(ev, HttpProblem):
            if ev.code == "resync":
                return
            # Responses after this point cannot be paired: release what waits, without status.
            self.flush_awaiting()
            self.reader.report("response-" + ev.code, "response stream: " + ev.detail, self.flow, ev.ts)

    def _release(self, item: _Awaiting, status: int | None) -> None:
        if item.lane is not None:
            if item.request.end > self.released_end:
                self.released_end = item.request.end
            self.reader.emit(self, item, status)

    def flush_awaiting(self) -> None:
        while self.awaiting:
            self._release(self.awaiting.popleft(), None)

    def flush_unsettled(self) -> None:
        while self.unsettled:
            self._release(self.unsettled.popleft(), None)

    # -- end of the connection ----------------------------------------------------------------
    def finish(self, ts: int, why: str) -> None:
        if self.finished:
            return
        self.finished = True
        self.client.close(ts)
        self.server.close(ts)
        self.flush_awaiting()
        self.flush_unsettled()
        reader = self.reader
        side = self.req_side
        if side.lost_lines:
            reader.report(
                "untrusted",
                f"{side.parser.discarded} bytes after the damage not used "
                f"(about {side.lost_lines} more requests lost); connection ended by {why}",
                self.flow,
                ts,
                side.lost_lines,
            )
        for name, stream in (("request", self.client), ("response", self.server)):
            if stream.conflicts_acked:
                reader.report(
                    "overlap-conflict-acked",
                    f"{stream.conflicts_acked} retransmitted segment(s) on the {name} stream differ from "
                    "bytes the receiver had already acknowledged: it kept its first copy, the one used",
                    self.flow,
                    ts,
                )
        if self.ignored_resets:
            n = self.ignored_resets
            reader.report(
                "ignored-rst",
                f"{n} RST segment{'s' if n != 1 else ''} with a sequence number the receiver does not take "
                "(not the next one it expects: outside its window it drops them, inside it answers with a "
                "challenge ACK, RFC 5961) did not end the connection, as they do not end it for the receiver",
                self.flow,
                ts,
            )
        if self.unpaired_responses:
            reader.report(
                "unpaired-response",
                f"{self.unpaired_responses} response(s) with no request in the capture",
                self.flow,
                ts,
            )


def _classify(
    req: HttpRequest, max_body: int, content_types: frozenset[str]
) -> tuple[Lane | None, str | None, str, tuple[str, str] | None]:
    """Lane, user, path of a request, or the reason it is not a DUIS request. The route is found
    as the gateway's router finds it (aiohttp): on the target's path with its percent-escapes
    decoded except ``%2F`` and ``%25`` (``HttpRequest.path``), ``{user}`` a non-empty segment
    without ``/`` or braces, then with ``%2F`` and ``%25`` decoded. The refusals come in the order
    of the gateway's ingress handler: the body's size (413) and its Content-Encoding (400; after
    either the connection ends: ``_CLOSING``) before its Content-Type (415)."""
    target = req.target
    path = req.path
    lane: Lane | None = None
    user: str | None = None
    if path == "/duis/observe":
        lane = "observe"
    elif path.startswith("/duis/dno/"):
        u = path[10:]
        if u and "/" not in u and "{" not in u and "}" not in u:
            lane = "inline"
            user = u.replace("%2F", "/").replace("%25", "%") if "%" in u else u
    if lane is None:
        return None, None, path, ("non-duis-path", f"{req.method} {target[:200]} is not a DUIS ingress path")
    if req.method != "POST":
        return None, None, path, ("non-duis-path", f"{req.method} {target[:200]}: DUIS is only POSTed")
    if req.oversize:
        detail = f"body over {max_body} bytes (the gateway's server.max_body_bytes): the gateway answers 413 and closes the connection"
        return None, None, path, ("oversize-body", detail)
    if req.encoding_error is not None:
        coding = req.header("content-encoding")
        detail = f"Content-Encoding {coding!r}: {req.encoding_error}; the gateway answers 400 and closes the connection"
        return None, None, path, ("content-encoding", detail)
    ctype = req.header("content-type")
    media = ctype.split(";", 1)[0].strip().lower() if ctype is not None else None
    if media not in content_types:
        detail = f"Content-Type {ctype!r}, not one the gateway accepts ({', '.join(sorted(content_types))})"
        return None, None, path, ("not-xml", detail)
    body = req.body
    head = body[:64].lstrip(b"\xef\xbb\xbf").lstrip()
    if not head.startswith(b"<") or body.find(DUIS_NAMESPACE) < 0:
        return None, None, path, ("non-duis-body", f"body of {len(body)} bytes is not a DUIS XML document")
    return lane, user, path, None


def _addr(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


class CaptureReader:
    """Iterate over a capture: yields :class:`CapturedRequest` and :class:`FlowReport` items.

    ``ports``: only TCP traffic to or from these ports is considered (None: all TCP).
    ``pair_responses``: hold each request until its response is seen (or cannot be) to fill
    ``response_status``; False yields each request once the server has acknowledged its last
    byte, or as soon as it is complete when the capture holds no acknowledgement from the server.
    ``decoder``: ``"raw"`` (header arithmetic, default) or ``"scapy"`` (full scapy dissection).
    ``fragment_timeout``: seconds of capture time a fragmented IP datagram has to complete after
    its first fragment; ``max_fragment_bytes``: fragment data held for reassembly at once (see
    ``ipfrag``). ``max_body`` and ``content_types``: the gateway's ``server.max_body_bytes`` and
    ``server.content_types`` (a request on a DUIS lane with a larger body, or of another
    Content-Type, is refused).
    ``path``: one capture file, or several read as one capture (a capture rotated into several files:
    ``tcpdump -C``/``-G``, a dumpcap ring buffer; or files of several interfaces): their packets are
    merged by capture time (packets of equal times in the order of the files' names), so a connection
    that goes on from one file into the next is reassembled as one, whatever the order they are given
    in. Each item's ``file`` names the file of the packet that made it.
    ``follow``: the file (one) is being written: it is read as :class:`Follow` says, and :meth:`following`
    gives its items with a ``None`` each time everything written so far has been read. ``path`` may then be
    a :class:`gateway.capture.rotation.Rotation`, the files of a capture its writer rotates (``tcpdump -C``/
    ``-G``/``-W``, ``dumpcap -b``): they are read one after the other as they are written, each once the one
    before it is finished (its writer has started the next), as one capture (a connection that goes on from
    one file into the next is one connection); a file of the set that is gone before its turn (deleted by a
    ring buffer the replay fell behind) gets a ``file-lost`` report.
    After iteration, ``reports`` holds every report yielded and ``stats`` the counters.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Rotation,
        *,
        ports: set[int] | None = None,
        pair_responses: bool = True,
        idle_timeout: float = 300.0,
        response_timeout: float = 30.0,
        decoder: Literal["raw", "scapy"] = "raw",
        max_flows: int = 100_000,
        max_pending: int = 1 << 20,
        max_head: int = 64 * 1024,
        max_body: int = 1 << 20,
        content_types: Collection[str] = ("application/xml",),
        keep_reports: bool = True,
        fragment_timeout: float = 30.0,
        max_fragment_bytes: int = 4 << 20,
        follow: Follow | None = None,
    ) -> None:
        self._rotation: Rotation | None = None
        if isinstance(path, Rotation):
            if follow is None:
                raise ValueError("the files of a rotated capture are read as they are written: with follow")
            self._rotation = path
            paths = [path.path]
        else:
            paths = [Path(path)] if isinstance(path, str | os.PathLike) else [Path(p) for p in path]
        if not paths:
            raise ValueError("CaptureReader needs a capture file")
        if follow is not None and len(paths) != 1:
            raise ValueError("a capture is followed as it is written one file at a time")
        #: the files, in the order equal capture times are read in (by name)
        self.paths = sorted(paths, key=lambda p: (p.name, str(p))) if len(paths) > 1 else paths
        self.path = self.paths[0]
        self._file = self.path.name  # the file of the packet being read (several files: it changes)
        self.ports = frozenset(ports) if ports is not None else None
        self.pair_responses = pair_responses
        self.idle_ns = int(idle_timeout * 1e9)
        self.response_ns = int(response_timeout * 1e9)
        self.decoder = decoder
        self.max_flows = max_flows
        self.max_pending = max_pending
        self.max_head = max_head
        self.max_body = max_body
        self.content_types = frozenset(content_types)
        self.keep_reports = keep_reports
        self.reports: list[FlowReport] = []
        self.stats = CaptureStats()
        self._out: list[CapturedRequest | FlowReport] = []
        self._flows: dict[tuple[Any, ...], tuple[_Connection, bool]] = {}
        self._conns: dict[int, _Connection] = {}
        self._closed: dict[tuple[Any, ...], int] = {}
        self._sweep_every = max(1, min(self.idle_ns, self.response_ns) // 4)
        self._next_sweep: int | None = None
        self._last_ts = 0
        self._used = False
        self._failure: str | None = None
        self._waiting: dict[int, _Connection] = {}  # connections that hold complete requests not yielded
        self._last_file_truncated = False  # several files: the last one to end was cut
        self._follow = follow
        self._known_size = 0  # following: the file's size when it was last looked at
        self._stream: Any = None  # one file: the stream scapy reads (for ``stream_offset``)
        self._stream_base = 0  # a rotated capture: the bytes of the files read before the current one
        self._current: _RotatedCurrent | None = None  # a rotated capture: the file being read
        self._serial = 0  # a rotated capture: files opened so far
        self.fragment_timeout = fragment_timeout
        self._defrag = Defragmenter(
            timeout_ns=int(fragment_timeout * 1e9),
            max_datagrams=_MAX_FRAG_DATAGRAMS,
            max_bytes=max_fragment_bytes,
        )

    # -- output -------------------------------------------------------------------------------
    def report(
        self,
        code: str,
        detail: str,
        flow: Flow | None = None,
        ts: int | None = None,
        requests_lost: int = 0,
        path: str | None = None,
        *,
        first_ts: int = 0,
        seen: int = 0,
    ) -> None:
        r = FlowReport(
            code, detail, flow, ns_to_datetime(ts) if ts is not None else None, requests_lost, path,
            ns_to_datetime(first_ts) if first_ts else None, seen, self._file,
        )  # fmt: skip
        self.stats.reports += 1
        if self.keep_reports:
            self.reports.append(r)
        self._out.append(r)

    def emit(self, conn: _Connection, item: _Awaiting, status: int | None) -> None:
        req = item.request
        assert item.lane is not None
        self.stats.requests += 1
        self._out.append(
            CapturedRequest(
                ns_to_datetime(req.last_ts),
                ns_to_datetime(req.first_ts),
                conn.flow,
                req.method,
                item.path,
                item.lane,
                item.user,
                req.headers,
                req.body,
                status,
                item.file,
            )
        )

    def requests(self) -> Iterator[CapturedRequest]:
        """Only the requests; reports are collected in ``self.reports``."""
        for item in self:
            if isinstance(item, CapturedRequest):
                yield item

    # -- reading position (for a consumer that reorders what it is given) ------------------------
    @property
    def position_ns(self) -> int:
        """The capture time (ns since the epoch) of the packet read last; 0 before the first."""
        return self._last_ts

    @property
    def stream_offset(self) -> int | None:
        """One file: the offset in its stream (the file, or its gunzipped content) of the end of the record
        read last, where the next one starts; None for several files, before the file is open or after it
        is closed. A rotated capture: the offset in its files' bytes one after the other, each file's from the
        next multiple of 2^48 after where the one before it was read to (``stream_file`` gives the current
        one's first)."""
        f = self._stream
        if f is None:
            return None
        try:
            return self._stream_base + int(f.tell())
        except (OSError, ValueError):
            return None

    @property
    def stream_file(self) -> tuple[int, str, int] | None:
        """A rotated capture: the file being read, as ``(serial, where, base)``: its number among the files
        opened (it changes with the file), a path that opens it (the reader's own open file, as a file of a
        ring buffer may be deleted while it is read) and its first byte's :attr:`stream_offset`. None before
        the first file is open and after the capture's end."""
        cur = self._current
        if cur is None or self._stream is None:
            return None
        proc = f"/proc/self/fd/{cur.stream.fileno()}"
        return cur.serial, proc if os.path.exists(proc) else str(cur.file.path), cur.base

    @property
    def rotated(self) -> bool:
        """The capture is a rotated one, read file after file as it is written."""
        return self._rotation is not None

    def pending_since_ns(self) -> int | None:
        """The earliest capture time (ns) an item still to be yielded is known to carry: a request complete
        but waiting (for the server's acknowledgement, or for its response), or an item of the batch being
        yielded (made with one packet: those before the current one count too); None when there is none."""
        best: int | None = None
        for made in self._out:
            if made.time is not None:
                t = (made.time - _EPOCH) // _NS_US * 1000
                if best is None or t < best:
                    best = t
        waiting = self._waiting
        for key in list(waiting):
            conn = waiting[key]
            first: int | None = None
            for queue in (conn.awaiting, conn.unsettled):
                for aw in queue:
                    if aw.lane is not None and (first is None or aw.request.last_ts < first):
                        first = aw.request.last_ts
            if first is None:
                del waiting[key]
            elif best is None or first < best:
                best = first
        return best

    # -- the walk -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[CapturedRequest | FlowReport]:
        for item in self._iterate():
            if item is not None:
                yield item

    def following(self) -> Iterator[CapturedRequest | FlowReport | None]:
        """The items, as iterating gives them, and, while a file that is being written is followed
        (``follow``), a ``None`` each time everything written so far has been read: what it made has been
        given, and the reader waits for more (``follow.poll``) when the next item is asked for."""
        return self._iterate()

    def _iterate(self) -> Iterator[CapturedRequest | FlowReport | None]:
        if self._used:
            raise RuntimeError("a CaptureReader can be iterated once")
        self._used = True
        if self._rotation is not None:
            yield from self._walk_rotated()
            return
        if len(self.paths) > 1:
            yield from self._walk_files()
            return
        fh, raw = self._open(self.path)
        try:
            yield from self._walk(raw)
        finally:
            self._stream = None
            fh.close()

    def _open(self, path: Path) -> tuple[IO[bytes], Any]:
        """The file and scapy's reader of it (pcapng, else pcap); :class:`CaptureError` when it is not one."""
        from scapy.error import Scapy_Exception
        from scapy.utils import RawPcapReader

        try:
            fh: IO[bytes] = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the caller
        except OSError as e:
            raise CaptureError(f"{path}: {e.strerror or e}") from e
        errors = (Scapy_Exception, EOFError, OSError, struct.error, ValueError)
        stream: Any = fh
        try:
            if self._follow is not None:
                self._await_header(path, fh.fileno(), self._follow)
                stream = _FollowedFile(fh, self._follow)
            elif os.pread(fh.fileno(), 2, 0) == GZIP_MAGIC:  # read through gzip, as it is decompressed
                stream = _gunzip_capture(fh, path)
            try:
                raw = _pcapng_reader()(stream)
            except errors:
                try:  # not pcapng: pcap (which scapy's RawPcapReader tries first)
                    stream.seek(0)
                    raw = RawPcapReader(stream)
                except errors as e:
                    gz = _gunzipped(stream)
                    cut = f": {gz.error}" if gz is not None and gz.error is not None else ""
                    raise CaptureError(f"{path}: not a readable pcap/pcapng capture ({e}){cut}") from e
        except BaseException:
            fh.close()
            raise
        return fh, raw

    @staticmethod
    def _await_header(path: Path, fd: int, follow: Follow) -> None:
        """Following: wait until the file's header (pcap) or first section header block (pcapng) is written
        whole, so that scapy's reader reads a whole one. :class:`CaptureError` when the following ends first,
        or for a gzipped file (it cannot be read as it is written: gzip writes a file's end last)."""
        while True:
            size = os.fstat(fd).st_size
            head = os.pread(fd, 12, 0)
            if head[:2] == GZIP_MAGIC:
                raise CaptureError(
                    f"{path}: a gzipped capture cannot be followed as it is written (replay it without --follow)"
                )
            if len(head) >= 4:
                if head[:4] in _PCAP_MAGICS:
                    if size >= 24:
                        return
                elif head[:4] != _NG_SHB:
                    return  # not a capture: scapy's readers say so
                elif len(head) == 12:
                    at, whole = _ng_next_packet(fd, 0, size, "<")
                    if whole is None or at > 0:  # malformed (scapy's reader refuses it), or whole
                        return
            if follow.reason is not None:
                raise CaptureError(
                    f"{path}: following ended ({follow.reason}) before the capture's header was written whole"
                )
            follow.pause(fd, 0)

    def _walk(self, raw: Any) -> Iterator[CapturedRequest | FlowReport | None]:
        from scapy.utils import RawPcapNgReader

        is_ng = isinstance(raw, RawPcapNgReader)
        f: IO[bytes] = raw.f  # the (possibly gunzipped) stream scapy reads
        self._stream = f
        out = self._out
        good_pos = f.tell()
        last_short = False
        records = self._records(raw)
        it = (
            self._run_scapy(records, raw, is_ng)
            if self.decoder == "scapy"
            else self._run_raw(records, raw, is_ng)
        )
        for short in it:
            if short is None:  # following: everything written so far has been read
                yield None
                continue
            last_short = short
            good_pos = f.tell()
            if out:
                yield from out
                out.clear()
        if self._follow is not None:
            truncated = self._followed_end(raw, good_pos, is_ng)
        else:
            truncated = self._file_end(
                f, good_pos, is_ng, self._failure, last_short, self._last_ts or None, ""
            )
        yield from self._end(truncated)

    def _followed_end(self, raw: Any, good_pos: int, is_ng: bool) -> bool:
        """The end of a followed file (:meth:`_file_end` for one that is being written): a ``truncated-file``
        report when the file holds more than was read (a record still being written, records written after
        the end of the following), or has become shorter than what was read of it."""
        follow = self._follow
        assert follow is not None
        f = raw.f
        if self._failure is not None:
            follow.stop("an unreadable record")
            return self._file_end(f, good_pos, is_ng, self._failure, False, self._last_ts or None, "")
        # (the capture has ended: a read past its end does not wait; ended without a stop, a record scapy's
        # reader could not read on from, as one that does not fit the file's format)
        follow.stop("a record that is not a well-formed one")
        fd = f.fileno()
        size = os.fstat(fd).st_size
        ts = self._last_ts or None
        if size < good_pos:
            detail = (
                f"following ended ({follow.reason}): the file is {size} bytes long, shorter than the {good_pos} "
                "bytes read of it (overwritten or truncated while it was followed)"
            )
            self.report("truncated-file", detail, None, ts)
            return True
        stop = _ng_next_packet(fd, good_pos, size, raw.endian)[0] if is_ng else good_pos
        if size == stop:  # (a pcapng file may end with blocks that are not packets: statistics)
            return False
        detail = (
            f"following ended ({follow.reason}) at byte {good_pos}: the {size - stop} bytes after byte {stop} "
            "(records not read by then, or one still being written) are not read"
        )
        self.report("truncated-file", detail, None, ts)
        return True

    def _file_end(
        self, f: IO[bytes], good_pos: int, is_ng: bool, failure: str | None, last_short: bool, ts: int | None,
        prefix: str,
    ) -> bool:  # fmt: skip
        """At the end of a file's records: was it a clean end? A ``truncated-file`` report when it was not
        (``prefix``: the file's name, when several are read)."""
        trailing = self._trailing_garbage(f, good_pos, is_ng)
        gz = _gunzipped(f)
        # (a gzip stream cut short or damaged: the content ends there)
        if gz is not None and gz.error is not None:
            detail = (
                f"{gz.error}: the file ends early; its records up to byte {good_pos} of its content were read, "
                "what it held after that is lost"
            )
        elif failure is not None:
            detail = f"unreadable record after byte {good_pos} ({failure}); the rest of the file is not read"
        elif trailing:
            detail = (
                f"file ends inside a record: {trailing} bytes after byte offset {good_pos} "
                "are not a complete record (truncated or corrupt capture)"
            )
        elif last_short:
            detail = "the last record is shorter than its declared length: file truncated"
        else:
            return False
        self.report("truncated-file", prefix + detail, None, ts)
        return True

    def _end(self, truncated: bool) -> Iterator[CapturedRequest | FlowReport]:
        """The end of the capture: the connections still open are ended (``truncated``: cut by the end of a
        truncated file), then the file-level reports."""
        out = self._out
        end_ts = self._last_ts
        self._defrag.close()
        for conn in list(self._conns.values()):
            if truncated:
                self.report(
                    "truncated-flow",
                    "connection still open where the capture file is cut: what it carried after that is lost",
                    conn.flow,
                    end_ts,
                )
            self._finish(conn, end_ts, "end of a truncated capture" if truncated else "end of capture")
        self._summary(end_ts)
        if out:
            yield from out
            out.clear()

    def _walk_files(self) -> Iterator[CapturedRequest | FlowReport]:
        """Several files read as one capture: their records merged by capture time (a file's own records
        in its order; equal times in the order of ``paths``), each file's end checked when it comes."""
        from scapy.utils import RawPcapNgReader

        handles: list[IO[bytes]] = []
        try:
            sources = []
            for i, path in enumerate(self.paths):
                fh, raw = self._open(path)
                handles.append(fh)
                sources.append(self._file_records(i, path.name, raw, isinstance(raw, RawPcapNgReader)))
            names = [p.name for p in self.paths]

            def current() -> Iterator[tuple[bytes, _NgMeta]]:
                for _ts, i, data, meta in heapq.merge(*sources, key=_record_time):
                    self._file = names[i]
                    yield data, meta

            out = self._out
            it = (
                self._run_scapy(current(), None, True)
                if self.decoder == "scapy"
                else self._run_raw(current(), None, True)
            )
            for _short in it:
                if out:
                    yield from out
                    out.clear()
            yield from self._end(self._last_file_truncated)
        finally:
            for fh in handles:
                fh.close()

    def _file_records(
        self, i: int, name: str, raw: Any, is_ng: bool
    ) -> Iterator[tuple[int, int, bytes, _NgMeta]]:
        """The records of the ``i``-th of several files, each with its capture time (a pcapng packet
        without one takes the time of the file's packet before it); at the file's end, whether it was
        cut (a ``truncated-file`` report naming it, at the time of its last packet)."""
        f: IO[bytes] = raw.f
        read = raw._read_packet
        problems: list[str] | None = getattr(raw, "option_problems", None)
        linktype = 0 if is_ng else int(raw.linktype)
        mult = 1 if getattr(raw, "nano", False) else 1000
        good_pos = f.tell()
        ts = 0
        short = False
        failure: str | None = None
        while True:
            try:
                rec = read(_MAX_RECORD)
            except EOFError:
                rec = None
            except Exception as e:
                failure = f"{type(e).__name__}: {e}"
                rec = None
            if problems:  # (None for pcap)
                for detail in problems:
                    self._report_in(name, "bad-timestamp-option", f"{name}: {detail}", self._last_ts or None)
                problems.clear()
            if rec is None:
                break
            data, meta = rec
            if is_ng:
                if meta.ts is not None:
                    ts = meta.ts
                    item = meta
                else:
                    item = _NgMeta(meta.linktype, ts)
            else:
                ts = meta.sec * 1_000_000_000 + meta.usec * mult
                short = len(data) < meta.caplen and len(data) < _MAX_RECORD
                item = _NgMeta(linktype, ts, short)
            good_pos = f.tell()
            yield ts, i, data, item
        was = self._file
        self._file = name
        cut = self._file_end(f, good_pos, is_ng, failure, short, ts or None, f"{name}: ")
        self._last_file_truncated = cut
        self._file = was

    # -- a rotated capture, followed file after file ---------------------------------------------
    def _walk_rotated(self) -> Iterator[CapturedRequest | FlowReport | None]:
        """The files of a rotated capture read as one, each as it is written, the next once it has been
        started (see :class:`gateway.capture.rotation.Rotation`)."""
        out = self._out
        records = self._rotated_records()
        it = (
            self._run_scapy(records, None, True)
            if self.decoder == "scapy"
            else self._run_raw(records, None, True)
        )
        try:
            for short in it:
                # (before a None too: the reports of a file's end, of files lost, go out before the wait)
                if out:
                    yield from out
                    out.clear()
                if short is None:
                    yield None
            yield from self._end(self._rotated_end())
        finally:
            if self._current is not None:
                self._current.stream.close()
            self._stream = None
            self._current = None

    def _rotated_records(self) -> Iterator[tuple[bytes, Any]]:
        """The records of the rotated capture's files, one file after the other, as :meth:`_records` gives a
        followed file's (``_WAITING`` when everything written so far has been read), as ``_NgMeta`` (each file
        has its own link type and time resolution). :class:`CaptureError` when the following ends before the
        first file's header is written, or the first file is not a capture that can be followed."""
        follow = self._follow
        assert follow is not None
        cur: _RotatedCurrent | None = yield from self._rotated_first()
        while cur is not None:
            yield from self._rotated_file(cur)
            if follow.reason is not None:
                return  # (the end of the capture: :meth:`_rotated_end` says what was not read)
            cur = yield from self._rotated_switch(cur)

    def _rotated_first(self) -> Generator[tuple[bytes, Any], None, _RotatedCurrent]:
        """Wait for the first file of the set (the oldest there) and open it; the files deleted before it are
        not counted as lost (the replay had not started). Returns it (a generator's return value)."""
        rot = self._rotation
        follow = self._follow
        assert rot is not None and follow is not None
        while True:
            try:
                files = rot.listing()
            except OSError as e:
                raise CaptureError(f"{rot.directory}: {e.strerror or e}") from None
            first = rot.first(files)
            if first is not None:
                try:
                    cur = yield from self._rotated_open(first)
                except FileNotFoundError:
                    continue  # deleted between the listing and the open: the oldest is another one now
                except _Unusable as e:
                    raise CaptureError(str(e)) from None
                if cur is None:
                    raise CaptureError(
                        f"{first.path}: following ended ({follow.reason}) before the capture's header was "
                        "written whole"
                    )
                return cur
            if follow.reason is not None:
                raise CaptureError(
                    f"{rot}: following ended ({follow.reason}) before a file of the rotated capture was written "
                    f"(none in {rot.directory} is named as tcpdump or dumpcap names the files of -w {rot.name})"
                )
            follow.wait(0)

    def _rotated_open(self, f: RotatedFile) -> Generator[tuple[bytes, Any], None, _RotatedCurrent | None]:
        """Open a file of the set once its header is written whole (waited for: a writer may have it in its
        buffer). Returns the file (None when the following ended first). ``FileNotFoundError`` when it is
        gone; :class:`_Unusable` when it is not a capture that can be followed."""
        from scapy.error import Scapy_Exception
        from scapy.utils import RawPcapReader

        follow = self._follow
        assert follow is not None
        try:
            fh: IO[bytes] = open(f.path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            instead = self._compressed_instead(f)
            if instead is None:
                raise
            f, fh = instead
        except OSError as e:
            raise _Unusable(f"{f.path}: {e.strerror or e}") from None
        try:
            st = os.fstat(fh.fileno())
            announced = False
            while not self._header_whole(fh.fileno()):
                if follow.reason is not None:
                    fh.close()
                    return None
                if not announced:  # (a None to the consumer before the wait)
                    announced = True
                    yield _WAITING
                follow.pause(fh.fileno(), 0)
            if os.pread(fh.fileno(), 2, 0) == GZIP_MAGIC:
                # a file compressed once its writer had finished it (tcpdump -z gzip): read through gzip, whole
                try:
                    gz = _gunzip_capture(fh, f.path)
                except CaptureError as e:
                    raise _Unusable(str(e)) from None
                stream = _FollowedFile(cast(IO[bytes], gz), follow, rotated=True)
                stream.final = True
            else:
                stream = _FollowedFile(fh, follow, rotated=True)
            source = cast(Any, stream)
            errors = (Scapy_Exception, EOFError, OSError, struct.error, ValueError)
            try:
                raw: Any = _pcapng_reader()(source)
            except errors:
                try:
                    stream.seek(0)
                    raw = RawPcapReader(source)
                except errors as e:
                    raise _Unusable(f"{f.path}: not a readable pcap/pcapng capture ({e})") from None
        except BaseException:
            fh.close()
            raise
        self._serial += 1
        cur = _RotatedCurrent(f, stream, raw, st.st_mtime_ns, self._serial, self._stream_base)
        self._current = cur
        self._stream = stream
        self._known_size = 0
        self._file = f.path.name
        return cur

    @staticmethod
    def _compressed_instead(f: RotatedFile) -> tuple[RotatedFile, IO[bytes]] | None:
        """``f`` (listed as it was written) is gone: the file it became when its writer compressed it once
        finished (``tcpdump -z gzip``: ``NAME1.gz``, written whole before ``NAME1`` is removed), opened; None when
        there is none. A ``.gz`` last written before ``f`` was (gzip gives it the time of the file it compressed;
        pigz that time's whole seconds: a ``.gz`` of the same second is it) is not it: an earlier file of the same
        name's (a ring's earlier round)."""
        if f.compressed:
            return None
        path = f.path.with_name(f.path.name + GZ_SUFFIX)
        try:
            fh: IO[bytes] = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the caller
        except OSError:
            return None
        st = os.fstat(fh.fileno())
        whole_second = f.mtime_ns - f.mtime_ns % 1_000_000_000
        if st.st_mtime_ns < whole_second or os.pread(fh.fileno(), 2, 0) != GZIP_MAGIC:
            fh.close()
            return None
        found = RotatedFile(path, f.key, f.number, st.st_ino, st.st_mtime_ns, st.st_size, compressed=True)
        return found, fh

    @staticmethod
    def _header_whole(fd: int) -> bool:
        """A file's header (pcap) or first section header and interface blocks (pcapng) written whole; or
        what is there already shows it is not a capture that can be followed (for the open to say so)."""
        size = os.fstat(fd).st_size
        head = os.pread(fd, 12, 0)
        if len(head) < 4:
            return head[:2] == b"\x1f\x8b"
        if head[:4] in _PCAP_MAGICS:
            return size >= 24
        if head[:4] != _NG_SHB:
            return True
        if len(head) < 12:
            return False
        at, whole = _ng_next_packet(fd, 0, size, "<")
        return whole is None or at > 0

    def _rotated_file(self, cur: _RotatedCurrent) -> Iterator[tuple[bytes, Any]]:
        """The records of the file being read, as they are written, until it is finished (its writer has
        started the next file, and it has been read to its end) or the following ends."""
        follow = self._follow
        assert follow is not None
        raw = cur.raw
        read = raw._read_packet
        f = raw.f
        problems: list[str] | None = getattr(raw, "option_problems", None)
        linktype = 0 if cur.is_ng else int(raw.linktype)
        mult = 1 if getattr(raw, "nano", False) else 1000
        ring = self._rotation is not None and self._rotation.kind == "tcpdump-ring"
        countdown = 1
        while True:
            if follow.reason is not None:
                return
            # a ring comes round to the file the replay reads when it is a whole ring behind (a compressed file: never)
            if ring and not cur.gz:
                countdown -= 1
                if not countdown:
                    countdown = _RING_CHECK
                    self._ring_overwritten(cur)
            if cur.stream.overwritten:  # nothing more of it is read: the next file is waited for
                yield from self._rotated_await_next(cur)
                return
            if not cur.stream.final and not self._written_whole(raw):
                if not self._rotated_next(cur):
                    yield _WAITING
                    while (
                        follow.reason is None and not self._written_whole(raw) and not self._rotated_next(cur)
                    ):
                        self._rotated_pause(cur)
                continue
            try:
                rec = read(_MAX_RECORD)
            except EOFError:
                rec = None
            except Exception as e:
                cur.failure = f"{type(e).__name__}: {e}"
                rec = None
            if problems:  # (None for pcap)
                for detail in problems:
                    self.report(
                        "bad-timestamp-option", f"{cur.file.path.name}: {detail}", None, self._last_ts or None
                    )
                problems.clear()
            if rec is None:
                if cur.stream.final or follow.reason is not None:
                    cur.ended = cur.stream.final
                    # (a compressed file: finished, and read, before its successor was seen)
                    if cur.ended and cur.next is None:
                        yield from self._rotated_await_next(cur)
                    return
                # a record that cannot be read in a file its writer has not finished: nothing more of it is
                # read (its end says so); the next file is waited for
                yield from self._rotated_await_next(cur)
                return
            data, meta = rec
            if cur.is_ng:
                if meta.ts is not None:
                    cur.ts = meta.ts
                    item = meta
                else:
                    item = _NgMeta(meta.linktype, cur.ts)
            else:
                cur.ts = meta.sec * 1_000_000_000 + meta.usec * mult
                cur.short = len(data) < meta.caplen and len(data) < _MAX_RECORD
                item = _NgMeta(linktype, cur.ts, cur.short)
            cur.good_pos = f.tell()
            yield data, item

    def _rotated_await_next(self, cur: _RotatedCurrent) -> Iterator[tuple[bytes, Any]]:
        """Wait for the writer to start the file after ``cur`` (or for the following to end)."""
        follow = self._follow
        assert follow is not None
        if self._rotated_next(cur):
            return
        yield _WAITING
        while follow.reason is None and not self._rotated_next(cur):
            self._rotated_pause(cur)

    def _rotated_next(self, cur: _RotatedCurrent) -> bool:
        """Has the writer started the file after ``cur``? Then ``cur`` is finished (``final``: read to its end,
        nothing is waited for) and ``cur.next`` says which file comes next, and which files before it are lost."""
        if cur.next is not None:
            return True
        rot = self._rotation
        assert rot is not None
        try:
            files = rot.listing(cur.file)
        except OSError:
            return False  # (the directory cannot be read just now: looked at again after the next wait)
        nxt, lost = rot.successor(cur.file, cur.opened_mtime_ns, files)
        if nxt is None:
            return False
        if rot.kind == "tcpdump-ring" and not cur.gz:  # (a compressed file is not written again)
            mtime = os.fstat(cur.stream.fileno()).st_mtime_ns
            if mtime > nxt.mtime_ns:
                cur.stream.overwritten = True  # written again after the next file was: the ring came round to it
            cur.final_mtime_ns = mtime
        cur.next = (nxt, lost)
        cur.stream.final = True
        return True

    def _ring_overwritten(self, cur: _RotatedCurrent) -> None:
        """A tcpdump ring: has the file being read been written again (the ring came round to it) since it was
        finished (its writer started the next file)? Looked at every :data:`_RING_CHECK` records, so that
        records of the new content are not read as the rest of the old one (at most that many can be)."""
        if not cur.stream.final:
            self._rotated_next(cur)
        if cur.final_mtime_ns is not None and not cur.stream.overwritten:
            st = os.fstat(cur.stream.fileno())
            if st.st_mtime_ns != cur.final_mtime_ns or st.st_size < cur.stream.tell():
                cur.stream.overwritten = True

    def _rotated_pause(self, cur: _RotatedCurrent) -> None:
        follow = self._follow
        assert follow is not None
        if cur.gz:  # (a compressed file does not grow: the next file is waited for)
            follow.wait(cur.serial)
            return
        pos = cur.stream.tell()
        if follow.pause(cur.stream.fileno(), pos, shrink_ends=False) < pos:
            cur.stream.overwritten = True  # truncated under the reader: a tcpdump ring came round to it

    def _rotated_switch(
        self, cur: _RotatedCurrent
    ) -> Generator[tuple[bytes, Any], None, _RotatedCurrent | None]:
        """The end of a finished file (a ``truncated-file`` report when it was cut, a ``file-lost`` one when
        it was overwritten while it was read), then the next file opened; each file between the two that is
        not there to be read gets a ``file-lost`` report, and so does the next one when it is gone before it
        is opened, or is not a capture (the one after it is then waited for). Returns the next file (None when
        the following ended first)."""
        rot = self._rotation
        follow = self._follow
        assert rot is not None and follow is not None
        self._rotated_close(cur)
        assert cur.next is not None
        nxt, lost = cur.next
        while True:
            self._report_lost(lost)
            try:
                return (yield from self._rotated_open(nxt))
            except FileNotFoundError:
                why = "deleted before it was read (a ring buffer: the replay fell behind the capture)"
            except _Unusable as e:
                why = f"not read: {e}"
            rot.forget(nxt)
            gone_name = nxt.path.name
            self._report_in(
                gone_name, "file-lost", f"{gone_name}: {why}; its packets are lost", self._last_ts or None
            )
            gone = nxt
            announced = False
            while True:
                try:
                    files = rot.listing(gone)
                except OSError:
                    files = None
                if files is not None:
                    found, lost = rot.successor(gone, gone.mtime_ns, files)
                    if found is not None:
                        nxt = found
                        break
                if follow.reason is not None:
                    return None
                if not announced:
                    announced = True
                    yield _WAITING
                follow.wait(len(files or ()))

    def _report_lost(self, names: list[str]) -> None:
        for name in names:
            self._report_in(
                name, "file-lost",
                f"{name}: a file of the rotated capture that was deleted or overwritten before it was read (a ring "
                "buffer: the replay fell behind the capture); its packets are lost",
                self._last_ts or None,
            )  # fmt: skip

    def _rotated_close(self, cur: _RotatedCurrent, stopped: str | None = None) -> None:
        """The end of a finished file of the set, checked (and reported) as a file of several read as one;
        ``stopped``: a compressed file whose reading the end of the following stopped (why)."""
        name = cur.file.path.name
        ts = self._last_ts or None
        if stopped is not None:
            self._report_in(
                name, "truncated-file",
                f"{name}: following ended ({stopped}) at byte {cur.good_pos} of its gunzipped content: what it holds "
                "after that is not read",
                ts,
            )  # fmt: skip
            self._last_file_truncated = True
        elif cur.stream.overwritten:
            self._report_in(
                name, "file-lost",
                f"{name}: overwritten by the capture's ring buffer (tcpdump -W) while it was read: what it held "
                f"after byte {cur.good_pos} is lost (the replay fell a whole ring behind the capture)",
                ts,
            )  # fmt: skip
        else:
            was = self._file
            self._file = name
            self._last_file_truncated = self._file_end(
                cur.raw.f, cur.good_pos, cur.is_ng, cur.failure, cur.short, ts, f"{name}: "
            )
            self._file = was
        # the next file's offsets start at the next multiple of _FILE_SPAN: a consumer that walks a pass ahead of
        # the reader every so many bytes (gateway.replay._time_ordered) sees the reader move on at once
        end = cur.base + max(cur.good_pos, cur.stream.tell())
        self._stream_base = end + _FILE_SPAN - end % _FILE_SPAN
        self._stream = None
        self._current = None
        cur.stream.close()

    def _rotated_end(self) -> bool:
        """The end of a followed rotated capture (the following has ended): the file being read, as a followed
        file's end (:meth:`_followed_end`); a file its writer had finished, as a file of several; the files
        known to come after it are named as not read, or lost. Whether the capture ended cut."""
        cur = self._current
        follow = self._follow
        assert follow is not None
        if cur is None:  # (ended waiting for a file: what was before it was read whole)
            return False
        nxt, lost = cur.next if cur.next is not None else (None, [])
        gz = _gunzipped(cur.stream)
        if cur.ended or cur.stream.overwritten:  # read to its end (its writer had finished it), or overwritten
            self._rotated_close(cur)
            truncated = self._last_file_truncated or cur.stream.overwritten
        elif gz is not None:  # a compressed (finished) file, the following ended while it was read
            self._rotated_close(cur, None if gz.exhausted() else follow.reason)
            truncated = self._last_file_truncated
        else:  # the following ended while it was read
            self._failure = cur.failure
            truncated = self._followed_end(cur.raw, cur.good_pos, cur.is_ng)
        self._report_lost(lost)
        if nxt is None:
            return truncated
        try:
            size = nxt.path.stat().st_size
        except OSError:
            size = nxt.size
        self._report_in(
            nxt.path.name, "truncated-file",
            f"following ended ({follow.reason}) before {nxt.path.name}, the next file of the rotated capture, was read: "
            f"its {size} bytes (and those of any file after it) are not read",
            self._last_ts or None,
        )  # fmt: skip
        return True

    def _report_in(self, name: str, code: str, detail: str, ts: int | None) -> None:
        """A file-level report about the file ``name`` (of several), whichever file is being read."""
        was = self._file
        self._file = name
        self.report(code, detail, None, ts)
        self._file = was

    def _records(self, raw: Any) -> Iterator[tuple[bytes, Any]]:
        """scapy's records, each up to ``_MAX_RECORD`` bytes (its iterator cuts them at 65,535);
        a reading error ends them (remembered in ``_failure``). A pcapng interface's malformed
        time option is reported as soon as its description block has been read.

        Following a file that is being written: a record is read once it is written whole; when the next
        one is not, ``_WAITING`` (the reader has read everything written so far), then a wait for it. Once
        the following has ended, no record is read: the capture ends there."""
        read = raw._read_packet
        problems: list[str] | None = getattr(raw, "option_problems", None)
        follow = self._follow
        f = raw.f
        while True:
            if follow is not None:
                if follow.reason is None and not self._written_whole(raw):
                    yield _WAITING
                    while follow.reason is None and not self._written_whole(raw):
                        follow.pause(f.fileno(), f.tell())
                if follow.reason is not None:  # ended (stopped, idle): the capture ends here
                    return
            try:
                rec = read(_MAX_RECORD)
            except EOFError:
                rec = None
            except Exception as e:
                self._failure = f"{type(e).__name__}: {e}"
                rec = None
            if problems:  # (None for pcap)
                for detail in problems:
                    self.report("bad-timestamp-option", detail, None, self._last_ts or None)
                problems.clear()
            if rec is None:
                return
            yield rec

    def _written_whole(self, raw: Any) -> bool:
        """Following: is the next record (pcapng: the next packet block, and the blocks before it) written
        whole? True too for one whose header is malformed, which scapy's reader refuses at once. (A read of
        a record not written whole waits in ``_FollowedFile`` anyway: this is what lets ``_WAITING`` come
        before the reader waits.)"""
        f = raw.f
        at = f.tell()
        if self._known_size - at > _FOLLOW_MAX + 16:  # catching up, far from the end: no look at the file
            return True
        fd = f.fileno()
        size = self._known_size = os.fstat(fd).st_size
        if size - at > _FOLLOW_MAX + 16:
            return True
        if isinstance(raw, _pcapng_reader()):
            return _ng_next_packet(fd, at, size, raw.endian)[1] is not False
        if size - at < 16:
            return False
        head = os.pread(fd, 4, at + 8)
        if len(head) < 4:
            return False
        caplen: int = struct.unpack(raw.endian + "I", head)[0]
        return caplen > _FOLLOW_MAX or size - at - 16 >= caplen

    def _trailing_garbage(self, f: IO[bytes], pos: int, is_ng: bool) -> int:
        """Bytes after the last complete record that do not form complete records."""
        try:
            f.seek(pos)
            tail = f.read(1 << 20)
        except (OSError, ValueError):
            return 0
        if not tail:
            return 0
        if not is_ng:
            return len(tail)
        # pcapng: non-packet blocks (statistics, name resolution...) may legitimately follow.
        i = 0
        endian = "<"
        while i < len(tail):
            if len(tail) - i < 12:
                return len(tail) - i
            btype = tail[i : i + 4]
            if btype == b"\x0a\x0d\x0d\x0a":
                endian = "<" if tail[i + 8 : i + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            (blen,) = struct.unpack_from(endian + "I", tail, i + 4)
            if blen < 12 or blen % 4 or i + blen > len(tail):
                return len(tail) - i
            (trail,) = struct.unpack_from(endian + "I", tail, i + blen - 4)
            if trail != blen:
                return len(tail) - i
            i += blen
        return 0

    def _summary(self, ts: int) -> None:
        s = self.stats
        t = ts or None
        if s.udp_packets or s.other_ip_packets:
            self.report(
                "non-tcp",
                f"{s.udp_packets} UDP and {s.other_ip_packets} other non-TCP IP packets skipped",
                None,
                t,
            )
        if s.non_ip_packets:
            self.report("non-ip", f"{s.non_ip_packets} frames without IPv4/IPv6 skipped", None, t)
        d = self._defrag
        if d.incomplete or s.ip_fragments_cut:
            parts = [
                f"{n} {what}"
                for n, what in (
                    (d.timed_out, f"timed out ({self.fragment_timeout:g} s after their first fragment)"),
                    (d.evicted, "dropped to keep within max_fragment_bytes"),
                    (d.at_end, "still incomplete at the end of the capture"),
                )
                if n
            ]
            detail = (
                f"{d.incomplete} IP datagram{'s' if d.incomplete != 1 else ''} ({d.incomplete_fragments} "
                f"fragment{'s' if d.incomplete_fragments != 1 else ''}) never completed"
                + (": " + ", ".join(parts) if parts else "")
            )
            if s.ip_fragments_cut:
                detail += f"; {s.ip_fragments_cut} fragment(s) cut short by the snap length not used"
            self.report(
                "ip-fragments-incomplete",
                detail + ". A TCP segment they carried is missing from its stream (reported there as a gap)",
                None,
                t,
            )
        if d.malformed:
            self.report(
                "ip-fragments-malformed",
                f"{d.malformed} malformed IP fragment(s) refused (not the last and not a multiple of 8 "
                "bytes, empty, or reaching past 65,535 bytes), as receivers refuse them",
                None,
                t,
            )
        if s.late_data_segments:
            n = s.late_data_segments
            self.report(
                "late-data",
                f"{n} segment{'s' if n != 1 else ''} carrying {s.late_data_bytes} bytes came on the addresses and "
                f"ports of a connection closed by FIN or RST less than {_TIME_WAIT_NS // 1_000_000_000} s before "
                "and were not used (retransmissions, or a new connection whose handshake is not in the capture)",
                None,
                t,
            )
        if s.time_backwards:
            one = s.time_backwards == 1
            self.report(
                "time-backwards",
                f"{s.time_backwards} packet{'' if one else 's'} carr{'ies' if one else 'y'} a capture time "
                "earlier than a packet before it in the "
                f"file (up to {s.max_time_back_ns / 1e9:.6f} s earlier): requests are read in file order, "
                "but their times, which the replay takes as arrival times, are not in that order "
                "(duisgw replay replays them in time order)",
                None,
                t,
            )
        if s.snapped_segments:
            self.report(
                "snapped",
                f"{s.snapped_segments} TCP segments were cut short by the capture's snap length "
                f"({s.snapped_bytes} bytes of them are not in the file): those bytes are gaps in their streams",
                None,
                t,
            )
        if s.unsupported_link:
            self.report(
                "unsupported-linktype",
                f"{s.unsupported_link} frames of an unsupported link type skipped",
                None,
                t,
            )

    # -- per-packet entry (shared by both decoders) --------------------------------------------
    def _tcp(
        self,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes,
        ts: int,
        cut: int = 0,
    ) -> None:
        """One TCP segment; ``cut``: bytes of its payload the capture does not hold (snap length)."""
        ports = self.ports
        if ports is not None and sport not in ports and dport not in ports:
            return
        self.stats.tcp_packets += 1
        key = (src, sport, dst, dport)
        entry = self._flows.get(key)
        if entry is not None and flags & _SYN and not flags & _ACK:
            conn, fc = entry
            base = (conn.client if fc else conn.server).base
            if not fc or (base is not None and base != ((seq + 1) & 0xFFFFFFFF)):
                self._finish(conn, ts, "port reuse")  # a new connection on the same 4-tuple
                entry = None
        if entry is None:
            entry = self._new_connection(key, flags, payload, ts)
            if entry is None:
                return
        conn, from_client = entry
        conn.last_ts = ts
        if flags & _RST:
            # The receiver takes an RST only at the sequence number it expects (RFC 5961): the
            # one its last acknowledgement named, or, as far as the capture shows, the next byte
            # (``reset_acceptable``); it drops any other, whole. A reset it takes ends the
            # connection; what the segment carries is not read (the receiver discards it).
            if from_client:
                taken = seq == conn.client.ack_seq or conn.client.reset_acceptable(seq)
            else:
                taken = seq == conn.client_ack or conn.server.reset_acceptable(seq)
            if taken:
                self._finish(conn, ts, "reset")
            else:
                conn.ignored_resets += 1
            return
        if from_client:
            if flags & _ACK:
                conn.client_ack = ack  # the client's next expected byte, as it last said
        elif flags & _ACK and ack != conn.client.ack_seq:
            # The server acknowledges request bytes: they settle requests. (The client's
            # acknowledgements of the responses are not followed: the response stream keeps its
            # last 16 segments to compare, and a difference there only loses response statuses.)
            conn.client.ack(ack)
            if conn.unsettled:
                conn.settle()
        stream = conn.client if from_client else conn.server
        if flags & _SYN:
            stream.syn(seq)
            seq = (seq + 1) & 0xFFFFFFFF
            if not payload and not flags & _FIN and not cut:
                return
        if cut:
            stream.segment(seq, payload, bool(flags & _FIN), ts, cut)
        elif payload or flags & _FIN:
            stream.segment(seq, payload, bool(flags & _FIN), ts)
        if conn.client.ended and conn.server.ended:
            self._finish(conn, ts, "close")

    def _new_connection(
        self, key: tuple[Any, ...], flags: int, payload: bytes, ts: int
    ) -> tuple[_Connection, bool] | None:
        syn = flags & _SYN
        closed_at = self._closed.get(key)
        if closed_at is not None:
            if not syn and ts - closed_at < _TIME_WAIT_NS:
                self.stats.late_segments += 1
                if payload:
                    self.stats.late_data_segments += 1
                    self.stats.late_data_bytes += len(payload)
                return None
            del self._closed[key]
        if not syn and not payload:
            return None  # a pure ACK/FIN/RST of a connection we know nothing about
        src, sport, dst, dport = key
        ports = self.ports
        if syn:
            from_client = not flags & _ACK
        elif ports is not None and dport in ports and sport not in ports:
            from_client = True
        elif (ports is not None and sport in ports and dport not in ports) or payload.startswith(b"HTTP/"):
            from_client = False
        elif payload.startswith(_METHODS):
            from_client = True
        else:
            from_client = sport > dport
        ckey = key if from_client else (dst, dport, src, sport)
        flow = Flow(_addr(ckey[0]), ckey[1], _addr(ckey[2]), ckey[3])
        conn = _Connection(self, ckey, flow, ts)
        self._flows[conn.client_key] = (conn, True)
        self._flows[conn.server_key] = (conn, False)
        self._conns[id(conn)] = conn
        self.stats.connections += 1
        n = len(self._conns)
        if n > self.stats.max_open_connections:
            self.stats.max_open_connections = n
            if n > self.max_flows:
                self._evict_oldest(ts)
        return (conn, from_client)

    def _finish(self, conn: _Connection, ts: int, why: str, *, closed_by_peer: bool = True) -> None:
        """End a connection. ``closed_by_peer``: it ended by FIN or RST, so segments that still
        come on its 4-tuple for a while are late ones of this connection. A connection dropped
        by the reader (idle timeout, full flow table) is still open on the wire: what comes on
        its 4-tuple later is picked up as a new connection."""
        conn.finish(ts, why)
        self._waiting.pop(id(conn), None)
        self._flows.pop(conn.client_key, None)
        self._flows.pop(conn.server_key, None)
        self._conns.pop(id(conn), None)
        if not closed_by_peer:
            return
        closed = self._closed
        closed[conn.client_key] = ts
        closed[conn.server_key] = ts
        while len(closed) > _MAX_CLOSED:
            del closed[next(iter(closed))]

    def _evict_oldest(self, ts: int) -> None:
        conns = sorted(self._conns.values(), key=lambda c: c.last_ts)
        for conn in conns[: max(1, len(conns) // 10)]:
            self.report("evicted", "too many open connections: oldest evicted", conn.flow, ts)
            self._finish(conn, ts, "eviction (flow table full)", closed_by_peer=False)

    def _sweep(self, ts: int) -> None:
        idle_before = ts - self.idle_ns
        resp_before = ts - self.response_ns
        for conn in list(self._conns.values()):
            if conn.last_ts < idle_before:
                self.stats.evicted_idle += 1
                self._finish(conn, ts, "idle timeout", closed_by_peer=False)
                continue
            for aw in (conn.awaiting, conn.unsettled):
                while aw and aw[0].request.last_ts < resp_before:
                    conn._release(aw.popleft(), None)
        self._defrag.expire(ts)
        closed = self._closed
        while closed:
            k = next(iter(closed))
            if ts - closed[k] < _TIME_WAIT_NS:
                break
            del closed[k]

    # -- decoders -------------------------------------------------------------------------------
    def _clock(self, ts: int) -> None:
        """Track capture time; run the idle/response sweep when due."""
        self._last_ts = ts
        nxt = self._next_sweep
        if nxt is None:
            self._next_sweep = ts + self._sweep_every
        elif ts >= nxt:
            self._sweep(ts)
            self._next_sweep = ts + self._sweep_every

    def _run_raw(self, records: Iterator[tuple[bytes, Any]], raw: Any, is_ng: bool) -> Iterator[bool | None]:
        """The lean path: raw frames from scapy's reader, headers parsed here. Yields per packet
        whether the record was shorter than its declared length (None for ``_WAITING``: a followed
        file read to its end so far)."""
        stats = self.stats
        tcp = self._tcp
        unpack_tcp = _TCP_HDR.unpack_from
        linktype = 0 if is_ng else int(raw.linktype)
        nano = bool(getattr(raw, "nano", False))
        mult = 1 if nano else 1000
        ts = 0
        latest = 0
        counts = stats.linktypes
        next_sweep = 0
        for data, meta in records:
            if meta is None:  # _WAITING
                yield None
                continue
            stats.packets += 1
            dlen = len(data)
            stats.bytes_read += dlen
            if is_ng:
                linktype = meta.linktype
                if meta.ts is not None:
                    ts = meta.ts
                short = meta.short
            else:
                ts = meta.sec * 1_000_000_000 + meta.usec * mult
                short = dlen < meta.caplen and dlen < _MAX_RECORD
            if ts < latest:
                self._time_back(latest - ts)
            else:
                latest = ts
            if ts >= next_sweep:
                self._clock(ts)
                next_sweep = self._next_sweep or 0
            else:
                self._last_ts = ts
            # -- link layer ---------------------------------------------------------------------
            if linktype == 1:  # Ethernet
                if dlen < 14:
                    stats.non_ip_packets += 1
                    yield short
                    continue
                et = (data[12] << 8) | data[13]
                off = 14
                while et in _VLAN and dlen >= off + 4:
                    et = (data[off + 2] << 8) | data[off + 3]
                    off += 4
            elif linktype == 113:  # Linux cooked (SLL); 802.1Q tags the kernel did not strip follow it
                if dlen < 16:
                    stats.non_ip_packets += 1
                    yield short
                    continue
                et = (data[14] << 8) | data[15]
                off = 16
                while et in _VLAN and dlen >= off + 4:
                    et = (data[off + 2] << 8) | data[off + 3]
                    off += 4
            elif linktype == 276:  # Linux cooked v2 (SLL2)
                if dlen < 20:
                    stats.non_ip_packets += 1
                    yield short
                    continue
                et = (data[0] << 8) | data[1]
                off = 20
                while et in _VLAN and dlen >= off + 4:
                    et = (data[off + 2] << 8) | data[off + 3]
                    off += 4
            elif linktype in (101, 12, 14, 228, 229):  # raw IP
                off = 0
                v = data[0] >> 4 if dlen else 0
                et = 0x0800 if v == 4 else 0x86DD if v == 6 else 0
            elif linktype in (0, 108):  # BSD loopback / NULL (family in host or network order)
                if dlen < 4:
                    stats.non_ip_packets += 1
                    yield short
                    continue
                fam = data[0] | data[3]
                et = 0x0800 if fam == 2 else 0x86DD if fam in (10, 24, 28, 30) else 0
                off = 4
            else:
                counts[linktype] = counts.get(linktype, 0) + 1
                self._scapy_packet(_scapy_fields(data, linktype), ts, short)
                yield short
                continue
            # -- IP -----------------------------------------------------------------------------
            if et == 0x0800:
                if dlen < off + 20:
                    stats.non_ip_packets += 1
                    yield short
                    continue
                ihl = (data[off] & 0x0F) << 2
                total = (data[off + 2] << 8) | data[off + 3]
                proto = data[off + 9]
                src = data[off + 12 : off + 16]
                dst = data[off + 16 : off + 20]
                end = off + total
                l4 = off + ihl
                if (data[off + 6] & 0x3F) or data[off + 7]:  # MF set or fragment offset
                    fo = (data[off + 6] << 8) | data[off + 7]
                    cut = end > dlen
                    self._fragment(src, dst, data[off + 4 : off + 6], (fo & 0x1FFF) << 3, bool(fo & 0x2000), proto, data[l4:end], cut, False, ts)  # fmt: skip
                    yield short
                    continue
            elif et == 0x86DD:
                if dlen < off + 40:
                    stats.non_ip_packets += 1
                    yield short
                    continue
                end = off + 40 + ((data[off + 4] << 8) | data[off + 5])
                proto = data[off + 6]
                src = data[off + 8 : off + 24]
                dst = data[off + 24 : off + 40]
                l4 = off + 40
                while proto in _V6_EXT and dlen >= l4 + 2:  # hop-by-hop, routing, dest. options
                    proto = data[l4]
                    l4 += (data[l4 + 1] + 1) << 3
                if proto == 44:  # fragment header: next header, reserved, offset|M, identification
                    if dlen < l4 + 8:
                        stats.ip_fragments += 1
                        stats.ip_fragments_cut += 1
                    else:
                        fo = (data[l4 + 2] << 8) | data[l4 + 3]
                        self._fragment(src, dst, data[l4 + 4 : l4 + 8], fo & 0xFFF8, bool(fo & 1), data[l4], data[l4 + 8 : end], end > dlen, True, ts)  # fmt: skip
                    yield short
                    continue
            else:
                stats.non_ip_packets += 1
                yield short
                continue
            if proto != 6:
                if proto == 17:
                    stats.udp_packets += 1
                else:
                    stats.other_ip_packets += 1
                yield short
                continue
            if dlen < l4 + 20:
                yield short
                continue
            sport, dport, seq, ack, offflags = unpack_tcp(data, l4)
            start = l4 + ((offflags >> 12) << 2)
            if end <= dlen:
                tcp(src, sport, dst, dport, seq, ack, offflags & 0x3F, data[start:end] if end > start else b"", ts)  # fmt: skip
            else:  # the record holds only the first dlen bytes of this datagram
                cut = end - max(start, dlen)
                if not short:  # cut by the snap length (a record cut by the file's end is reported as such)
                    stats.snapped_segments += 1
                    stats.snapped_bytes += cut
                tcp(src, sport, dst, dport, seq, ack, offflags & 0x3F, data[start:], ts, cut)
            yield short

    def _scapy_packet(self, fields: _ScapyFields | None, ts: int, short: bool) -> None:
        if fields is None:
            self.stats.unsupported_link += 1
        elif fields[1] is not None:
            self._scapy_tcp(fields[1], ts, short)
        elif fields[2] is not None:
            self._fragment(*fields[2], ts)
        else:
            self._count_other(fields[0])

    # -- IP fragments -----------------------------------------------------------------------------
    def _fragment(
        self,
        src: bytes,
        dst: bytes,
        ident: bytes,
        offset: int,
        more: bool,
        proto: int,
        payload: bytes,
        cut: bool,
        v6: bool,
        ts: int,
    ) -> None:
        """One IP fragment (``proto``: IPv6's fragment header's next header); a TCP segment it
        completes goes on like any other, with the capture time of the fragment that completed it.
        Only TCP datagrams are reassembled; other fragments are counted as the packets they are."""
        stats = self.stats
        stats.ip_fragments += 1
        if proto != 6 and not (v6 and proto in (43, 60)):
            self._count_other("udp" if proto == 17 else "ip")
            return
        if cut:  # the record does not hold the whole fragment (snap length, truncated file)
            stats.ip_fragments_cut += 1
            return
        d = self._defrag
        got = d.add((src, dst, ident) if v6 else (src, dst, proto, ident), offset, more, payload, proto, ts)
        if d.problems:
            self._fragment_conflicts()
        if got is None:
            return
        proto, whole = got
        n = len(whole)
        l4 = 0
        while proto in _V6_EXT and v6 and n >= l4 + 2:
            proto = whole[l4]
            l4 += (whole[l4 + 1] + 1) << 3
        if proto != 6:
            self._count_other("udp" if proto == 17 else "ip")
            return
        if n < l4 + 20:
            return
        sport, dport, seq, ack, offflags = _TCP_HDR.unpack_from(whole, l4)
        start = l4 + ((offflags >> 12) << 2)
        self._tcp(src, sport, dst, dport, seq, ack, offflags & 0x3F, whole[start:], ts)

    def _fragment_conflicts(self) -> None:
        d = self._defrag
        for p in d.problems:
            src, dst, ident = cast(bytes, p.key[0]), cast(bytes, p.key[1]), cast(bytes, p.key[-1])
            flow = None
            if p.proto == 6 and len(p.head) >= 4:
                sport, dport = struct.unpack_from("!HH", p.head)
                entry = self._flows.get((src, sport, dst, dport))
                flow = entry[0].flow if entry is not None else Flow(_addr(src), sport, _addr(dst), dport)
            self.report(
                "ip-fragment-conflict",
                f"IP datagram {int.from_bytes(ident):#x} from {_addr(src)} to {_addr(dst)}: {p.detail}. Not "
                "reassembled: which copy the receiver kept, if any, is unknown; the TCP segment it carried is "
                "missing from its stream unless sent again",
                flow,
                p.ts,
            )
        d.problems.clear()

    def _scapy_tcp(self, f: _TcpFields, ts: int, short: bool) -> None:
        cut = f[8]
        if cut and not short:
            self.stats.snapped_segments += 1
            self.stats.snapped_bytes += cut
        self._tcp(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], ts, cut)

    def _time_back(self, step: int) -> None:
        self.stats.time_backwards += 1
        if step > self.stats.max_time_back_ns:
            self.stats.max_time_back_ns = step

    def _count_other(self, kind: str) -> None:
        if kind == "udp":
            self.stats.udp_packets += 1
        elif kind == "ip":
            self.stats.other_ip_packets += 1
        elif kind == "frag":
            self.stats.ip_fragments += 1
        else:
            self.stats.non_ip_packets += 1

    def _run_scapy(
        self, records: Iterator[tuple[bytes, Any]], raw: Any, is_ng: bool
    ) -> Iterator[bool | None]:
        """The baseline: every frame dissected by scapy (``conf.l2types``); None as :meth:`_run_raw` yields it."""
        stats = self.stats
        linktype = 0 if is_ng else int(raw.linktype)
        nano = bool(getattr(raw, "nano", False))
        ts = 0
        latest = 0
        for data, meta in records:
            if meta is None:  # _WAITING
                yield None
                continue
            stats.packets += 1
            stats.bytes_read += len(data)
            if is_ng:
                linktype = meta.linktype
                if meta.ts is not None:
                    ts = meta.ts
                short = meta.short
            else:
                ts = meta.sec * 1_000_000_000 + meta.usec * (1 if nano else 1000)
                short = len(data) < meta.caplen and len(data) < _MAX_RECORD
            if ts < latest:
                self._time_back(latest - ts)
            else:
                latest = ts
            self._clock(ts)
            self._scapy_packet(_scapy_fields(data, linktype), ts, short)
            yield short


class _Unusable(Exception):
    """A file of a rotated capture that cannot be read as one (not a capture, a gzip of something else): why."""


class _RotatedCurrent:
    """The file of a rotated capture being read: its scapy reader, where the reading is, and, once its writer
    has started the next file, which that is (``next``: the file and the names of those lost before it)."""

    __slots__ = ("base", "ended", "failure", "file", "final_mtime_ns", "good_pos", "gz", "is_ng", "next",
                 "opened_mtime_ns", "raw", "serial", "short", "stream", "ts")  # fmt: skip

    def __init__(
        self, file: RotatedFile, stream: _FollowedFile, raw: Any, opened_mtime_ns: int, serial: int, base: int
    ) -> None:
        from scapy.utils import RawPcapNgReader

        self.file = file
        self.stream = stream
        self.raw = raw
        self.is_ng = isinstance(raw, RawPcapNgReader)
        #: a file compressed once its writer had finished it (tcpdump -z gzip): read whole, never written again
        self.gz = _gunzipped(stream) is not None
        self.opened_mtime_ns = opened_mtime_ns
        self.serial = serial
        self.base = base
        self.good_pos = stream.tell()
        self.ts = 0
        self.short = False
        self.failure: str | None = None
        self.next: tuple[RotatedFile, list[str]] | None = None
        self.ended = False  # read to its end (its writer had finished it)
        #: a tcpdump ring: the file's modification time when its writer was found to have finished it
        self.final_mtime_ns: int | None = None


_TcpFields = tuple[bytes, int, bytes, int, int, int, int, bytes, int]
# src, dst, identification, offset, more fragments, protocol, payload, cut, IPv6 (as _fragment takes them)
_FragFields = tuple[bytes, bytes, bytes, int, bool, int, bytes, bool, bool]
_ScapyFields = tuple[str, _TcpFields | None, _FragFields | None]


def _scapy_fields(data: bytes, linktype: int) -> _ScapyFields | None:
    """Dissect one frame with scapy; ``("tcp", (src, sport, dst, dport, seq, ack, flags, payload, cut), None)``
    (``cut``: payload bytes the IP length announces that the frame does not hold),
    ``("frag", None, (src, dst, ident, offset, more, proto, payload, cut, v6))`` for an IP fragment,
    ``("udp"|"ip"|"nonip", None, None)``, or None when scapy has no dissector for the link type."""
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment

    cls = conf.l2types.num2layer.get(linktype)
    if cls is None:
        return None
    try:
        pkt = cls(data)
    except Exception:
        return ("nonip", None, None)
    if IP in pkt:
        ip = pkt[IP]
        src = socket.inet_pton(socket.AF_INET, ip.src)
        dst = socket.inet_pton(socket.AF_INET, ip.dst)
        if ip.flags.MF or ip.frag:
            raw = ip.original  # the layer's bytes as captured (to the frame's end)
            hl = ip.ihl * 4
            frag = raw[hl : ip.len]
            cut = len(raw) < ip.len
            return ("frag", None, (src, dst, struct.pack("!H", ip.id), ip.frag * 8, bool(ip.flags.MF), ip.proto, frag, cut, False))  # fmt: skip
        declared = ip.len - ip.ihl * 4 if ip.len is not None and ip.ihl is not None else None
    elif IPv6 in pkt:
        ip = pkt[IPv6]
        src = socket.inet_pton(socket.AF_INET6, ip.src)
        dst = socket.inet_pton(socket.AF_INET6, ip.dst)
        if IPv6ExtHdrFragment in pkt:
            fh = pkt[IPv6ExtHdrFragment]
            raw = ip.original
            at = len(raw) - len(fh.original)  # where the fragment header starts
            frag = raw[at + 8 : 40 + ip.plen]
            cut = len(raw) < 40 + ip.plen
            return ("frag", None, (src, dst, struct.pack("!I", fh.id), fh.offset * 8, bool(fh.m), fh.nh, frag, cut, True))  # fmt: skip
        declared = None
    else:
        return ("nonip", None, None)
    if TCP not in pkt:
        return ("udp", None, None) if ip.payload.name == "UDP" else ("ip", None, None)
    t = pkt[TCP]
    payload = bytes(t.payload)
    if declared is None and ip.plen is not None:  # IPv6: the payload length less extension headers
        declared = ip.plen - (len(bytes(ip.payload)) - len(bytes(t)))
    cut = 0
    if declared is not None:
        size = max(0, declared - (t.dataofs or 5) * 4)
        cut = max(0, size - len(payload))
        payload = payload[:size]
    fields = (src, int(t.sport), dst, int(t.dport), int(t.seq), int(t.ack), int(t.flags) & 0x3F, payload, cut)
    return ("tcp", fields, None)


def read_capture(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    ports: set[int] | None = None,
    **options: Any,
) -> Iterator[CapturedRequest | FlowReport]:
    """Stream the DUIS requests and the damage reports of a pcap/pcapng file, or of several files read as
    one capture (see CaptureReader)."""
    return iter(CaptureReader(path, ports=ports, **options))
