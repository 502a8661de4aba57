"""Write realistic captures of DUIS HTTP traffic (for tests, benchmarks and demos).

:class:`CaptureWriter` turns connections -- lists of :class:`Exchange` (one HTTP request and the
gateway's response each) -- into the packets a tap in front of the gateway would see: TCP
three-way handshake, requests segmented at the MSS, keep-alive (several requests per
connection) or pipelining, the server's responses (``204 No Content`` by default) carrying the
ACK, delayed ACKs, FIN teardown; Ethernet + IPv4 by default (IPv6 when the addresses are IPv6;
Linux cooked, raw IP or BSD loopback link layers on request). Packets are built with scapy and
written with scapy's ``PcapWriter`` / ``PcapNgWriter`` (capture timestamps from the scenario).

Damage for tests (:class:`Impairments`, client->server data segments only): reorder adjacent
segments, retransmit segments (optionally with different content), drop segments (as a capture
that missed them: the server still got them and answers), random segmentation; plus
:func:`truncate_capture` to cut the file at a byte offset, :meth:`CaptureWriter.write_udp` for
non-TCP noise, and ``Exchange(raw=...)`` for a TCP flow that is not HTTP.

Every ``write_*`` returns a manifest (:class:`WrittenRequest`) of what a correct reader must find,
with the capture times at which each request's first and last bytes became available in order
(which reordering and retransmission shift).
"""

from __future__ import annotations

import bisect
import heapq
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "CaptureWriter",
    "Connection",
    "Exchange",
    "Impairments",
    "WrittenRequest",
    "build_request",
    "truncate_capture",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = 1000  # ns
_REASONS: Final = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    503: "Service Unavailable",
}
_LINKTYPES: Final = {"ethernet": 1, "sll": 113, "raw": 101, "null": 0}


def _ns(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    d = t - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


def _dt(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


@dataclass(frozen=True)
class Exchange:
    """One HTTP request (and the server's response) on a connection.

    ``time``: when the client starts sending it (later if the previous exchange on the connection
    is not finished). ``chunk_size``: send the body with ``Transfer-Encoding: chunked`` in chunks
    of this size. ``raw``: send these bytes instead of an HTTP request (no response).
    """

    path: str
    body: bytes
    time: datetime
    method: str = "POST"
    content_type: str | None = "application/xml"
    headers: tuple[tuple[str, str], ...] = ()
    chunk_size: int | None = None
    response_status: int | None = 204
    response_delay: timedelta = timedelta(milliseconds=2)
    raw: bytes | None = None


@dataclass(frozen=True)
class Impairments:
    """Damage applied to the client->server data segments of one connection.

    ``reorder``/``retransmit``: probability per segment of being swapped with the next one / sent
    again a little later. ``corrupt_retransmit``: retransmitted copies carry different bytes.
    ``drop``: indices (0-based, in sending order over the connection) of data segments left out
    of the capture. ``random_segmentation``: segment sizes drawn in 1..MSS instead of MSS.
    """

    reorder: float = 0.0
    retransmit: float = 0.0
    corrupt_retransmit: bool = False
    drop: frozenset[int] = frozenset()
    random_segmentation: bool = False
    seed: int = 0


@dataclass(frozen=True)
class Connection:
    """A TCP connection from ``client`` to ``server`` carrying ``exchanges`` in order."""

    exchanges: Sequence[Exchange]
    client: tuple[str, int] = ("10.20.0.2", 40000)
    server: tuple[str, int] = ("10.20.0.1", 8080)
    pipelined: bool = False
    handshake: bool = True
    teardown: bool = True
    impairments: Impairments = field(default_factory=Impairments)
    host: str = "duisgw.example"
    client_isn: int | None = None
    server_isn: int | None = None


@dataclass(frozen=True)
class WrittenRequest:
    """What a correct reader must find for one exchange."""

    flow: tuple[str, int, str, int]
    exchange: Exchange
    first_byte_time: datetime
    time: datetime
    response_status: int | None
    damaged: bool  # a segment it needs was dropped, or it follows such a segment on its connection


def build_request(ex: Exchange, host: str) -> bytes:
    """The bytes of the HTTP/1.1 request for an exchange."""
    if ex.raw is not None:
        return ex.raw
    lines = [f"{ex.method} {ex.path} HTTP/1.1", f"Host: {host}"]
    if ex.content_type is not None:
        lines.append(f"Content-Type: {ex.content_type}")
    lines.extend(f"{k}: {v}" for k, v in ex.headers)
    if ex.chunk_size:
        lines.append("Transfer-Encoding: chunked")
        size = ex.chunk_size
        body = b"".join(
            b"%x\r\n%s\r\n" % (len(ex.body[i : i + size]), ex.body[i : i + size])
            for i in range(0, len(ex.body), size)
        )
        body += b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(ex.body)}")
        body = ex.body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _response(status: int) -> bytes:
    reason = _REASONS.get(status, "Status")
    head = f"HTTP/1.1 {status} {reason}\r\nServer: duisgw\r\n"
    if status != 204 and not 100 <= status < 200 and status != 304:
        head += "Content-Length: 0\r\n"
    return (head + "\r\n").encode("ascii")


def truncate_capture(path: str | os.PathLike[str], at: int) -> None:
    """Cut a capture file at byte offset ``at`` (a capture interrupted mid-record)."""
    os.truncate(path, at)


# A planned packet: (time ns, order, from_client, flags, seq offset, payload) -- offsets are relative
# to each side's ISN+1 (SYN at -1).
_Planned = tuple[int, int, bool, str, int, bytes]


class CaptureWriter:
    """Writes connections as packets into a pcap or pcapng file (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        format: Literal["pcap", "pcapng"] = "pcap",
        *,
        mss: int = 1448,
        link: Literal["ethernet", "sll", "raw", "null"] = "ethernet",
        nano: bool = False,
    ) -> None:
        from scapy.utils import PcapNgWriter, PcapWriter

        self.path = Path(path)
        self.format = format
        self.mss = mss
        self.link = link
        self.packets = 0
        self._ip_id = 1
        self._writer: Any
        if format == "pcap":
            self._writer = PcapWriter(str(self.path), linktype=_LINKTYPES[link], nano=nano)
            self._nano = nano
        elif format == "pcapng":
            self._writer = PcapNgWriter(str(self.path))
            self._nano = False
        else:
            raise ValueError(f"unknown capture format {format!r}")
        self._header = False

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._header:
            self._writer.linktype = _LINKTYPES[self.link]
            self._writer.write_header(None)
            self._header = True
        self._writer.close()

    # -- public writing API --------------------------------------------------------------------
    def write_connection(self, conn: Connection) -> list[WrittenRequest]:
        return self.write_connections([conn])

    def write_connections(self, conns: Iterable[Connection]) -> list[WrittenRequest]:
        """Write the connections' packets interleaved in time order; returns the manifest."""
        manifest: list[WrittenRequest] = []
        streams: list[Iterator[tuple[int, int, Any]]] = []
        for n, conn in enumerate(conns):
            planned, written = self._plan(conn)
            manifest.extend(written)
            streams.append(self._packets(conn, planned, n))
        for ts, _, pkt in heapq.merge(*streams, key=lambda x: (x[0], x[1])):
            self._write(pkt, ts)
        return manifest

    def write_connections_lazily(self, conns: Iterable[Connection]) -> Iterator[WrittenRequest]:
        """Like :meth:`write_connections` for connections already in time order that do not
        overlap: one connection in memory at a time (for very large benchmark captures)."""
        for conn in conns:
            planned, written = self._plan(conn)
            for ts, _, pkt in self._packets(conn, planned, 0):
                self._write(pkt, ts)
            yield from written

    def write_udp(self, time: datetime, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        """One UDP datagram (noise the reader must skip)."""
        from scapy.layers.inet import UDP
        from scapy.packet import Raw

        ip = self._ip(src[0], dst[0])
        udp = UDP(sport=src[1], dport=dst[1])
        udp.add_payload(Raw(payload))
        ip.add_payload(udp)
        self._write(self._link(ip, True), _ns(time))

    # -- planning -------------------------------------------------------------------------------
    def _plan(self, conn: Connection) -> tuple[list[_Planned], list[WrittenRequest]]:
        imp = conn.impairments
        rng = random.Random(imp.seed)
        mss = self.mss
        plan: list[_Planned] = []
        order = 0

        def add(t: int, from_client: bool, flags: str, seq: int, payload: bytes = b"") -> None:
            nonlocal order
            plan.append((t, order, from_client, flags, seq, payload))
            order += 1

        def cut(data: bytes) -> list[bytes]:
            out: list[bytes] = []
            i = 0
            while i < len(data):
                n = rng.randint(1, mss) if imp.random_segmentation else mss
                out.append(data[i : i + n])
                i += n
            return out

        if not conn.exchanges:
            return [], []
        t0 = _ns(conn.exchanges[0].time)
        c_off = 0  # client bytes sent so far
        s_off = 0
        if conn.handshake:
            add(t0 - 300 * _US, True, "S", -1)
            add(t0 - 200 * _US, False, "SA", -1)
            add(t0 - 100 * _US, True, "A", 0)
        seg_index = 0
        # client segments as really delivered: (offset, end, first arrival time)
        arrivals: list[tuple[int, int, int]] = []
        dropped: list[tuple[int, int]] = []

        def send_client(data: bytes, start: int) -> int:
            """Send ``data`` (client stream offset ``c_off``) from time ``start``; returns the time of
            the last packet sent."""
            nonlocal c_off, seg_index
            segs: list[tuple[int, bytes, bool]] = []  # (offset, payload, is_copy)
            for piece in cut(data):
                segs.append((c_off, piece, False))
                c_off += len(piece)
            indexed = []
            for off, piece, _ in segs:
                indexed.append((seg_index, off, piece))
                seg_index += 1
            # reorder: swap with the next one
            i = 0
            while i + 1 < len(indexed):
                if imp.reorder and rng.random() < imp.reorder:
                    indexed[i], indexed[i + 1] = indexed[i + 1], indexed[i]
                    i += 2
                else:
                    i += 1
            sends: list[tuple[int, int, bytes, bool]] = [
                (ix, off, piece, False) for ix, off, piece in indexed
            ]
            if imp.retransmit:
                k = 0
                while k < len(sends):
                    ix, off, piece, copy = sends[k]
                    if not copy and rng.random() < imp.retransmit:
                        again = bytes(b ^ 0x20 for b in piece) if imp.corrupt_retransmit else piece
                        sends.insert(min(k + 2, len(sends)), (ix, off, again, True))
                    k += 1
            t = start
            for ix, off, piece, copy in sends:
                if ix in imp.drop and not copy:
                    dropped.append((off, off + len(piece)))
                else:
                    add(t, True, "PA", off, piece)
                    if not copy:
                        arrivals.append((off, off + len(piece), t))
                t += 15 * _US
            return t - 15 * _US

        def send_server(data: bytes, start: int) -> int:
            nonlocal s_off
            t = start
            for i in range(0, len(data), mss):
                piece = data[i : i + mss]
                add(t, False, "PA", s_off, piece)
                s_off += len(piece)
                t += 15 * _US
            return t - 15 * _US

        # request byte ranges [start, end) in the client stream, per exchange
        ranges: list[tuple[int, int]] = []
        statuses: list[int | None] = []
        t = t0
        if conn.pipelined:
            reqs = [build_request(ex, conn.host) for ex in conn.exchanges]
            pos = c_off
            for data in reqs:
                ranges.append((pos, pos + len(data)))
                pos += len(data)
            blob = b"".join(reqs)
            last = send_client(blob, t)
            resp = b""
            for ex in conn.exchanges:
                ok = ex.raw is None and ex.response_status is not None
                statuses.append(ex.response_status if ok else None)
                if ok and ex.response_status is not None:
                    resp += _response(ex.response_status)
            end = last
            if resp:
                end = send_server(resp, last + _ns_delta(conn.exchanges[-1].response_delay))
            t = end
        else:
            prev_end = t0 - 10 * _US
            for n, ex in enumerate(conn.exchanges):
                start = max(_ns(ex.time), prev_end + 10 * _US)
                data = build_request(ex, conn.host)
                ranges.append((c_off, c_off + len(data)))
                last = send_client(data, start)
                end = last
                status = ex.response_status if ex.raw is None else None
                statuses.append(status)
                if status is not None:
                    end = send_server(_response(status), last + _ns_delta(ex.response_delay))
                nxt = _ns(conn.exchanges[n + 1].time) if n + 1 < len(conn.exchanges) else None
                if nxt is None or nxt > end + 40_000 * _US:
                    add(end + 40 * _US, True, "A", c_off)  # delayed ACK
                    end += 40 * _US
                prev_end = end
            t = prev_end
        if conn.teardown:
            add(t + 100 * _US, True, "FA", c_off)
            add(t + 200 * _US, False, "FA", s_off)
            add(t + 300 * _US, True, "A", c_off + 1)
        # -- manifest ------------------------------------------------------------------------
        available = _Availability(arrivals)
        first_gap = min((s for s, _ in dropped), default=None)
        written: list[WrittenRequest] = []
        flow = (conn.client[0], conn.client[1], conn.server[0], conn.server[1])
        for ex, (start, end), status in zip(conn.exchanges, ranges, statuses, strict=True):
            damaged = first_gap is not None and end > first_gap
            if ex.raw is not None:
                continue
            written.append(
                WrittenRequest(
                    flow,
                    ex,
                    _dt(available.at(start)) if not damaged else _dt(0),
                    _dt(available.at(end - 1)) if not damaged else _dt(0),
                    status,
                    damaged,
                )
            )
        plan.sort(key=lambda p: (p[0], p[1]))
        return plan, written

    # -- packets --------------------------------------------------------------------------------
    def _packets(self, conn: Connection, plan: list[_Planned], n: int) -> Iterator[tuple[int, int, Any]]:
        from scapy.layers.inet import TCP
        from scapy.packet import Raw

        rng = random.Random(conn.impairments.seed ^ 0x5EED)
        c_isn = conn.client_isn if conn.client_isn is not None else rng.getrandbits(32)
        s_isn = conn.server_isn if conn.server_isn is not None else rng.getrandbits(32)
        (ca, cp), (sa, sp) = conn.client, conn.server
        c_next = 0  # highest client offset sent (for the server's ACK)
        s_next = 0
        s_fin = 0
        for t, order, from_client, flags, off, payload in plan:
            if from_client:
                seq = (c_isn + 1 + off) & 0xFFFFFFFF
                c_next = max(c_next, off + len(payload) + (1 if "F" in flags else 0))
                ack = (s_isn + 1 + s_next + s_fin) & 0xFFFFFFFF if "A" in flags else 0
                ip = self._ip(ca, sa)
                tcp = TCP(sport=cp, dport=sp, seq=seq, ack=ack, flags=flags, window=502)
            else:
                seq = (s_isn + 1 + off) & 0xFFFFFFFF
                s_next = max(s_next, off + len(payload))
                if "F" in flags:
                    s_fin = 1
                # the server got every client byte sent so far, even those the capture missed
                ack = (c_isn + 1 + c_next) & 0xFFFFFFFF if "A" in flags else 0
                ip = self._ip(sa, ca)
                tcp = TCP(sport=sp, dport=cp, seq=seq, ack=ack, flags=flags, window=509)
            if payload:
                tcp.add_payload(Raw(payload))
            ip.add_payload(tcp)
            yield (t, n * 1_000_000_000 + order, self._link(ip, from_client))

    def _ip(self, src: str, dst: str) -> Any:
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import IPv6

        if ":" in src:
            return IPv6(src=src, dst=dst, hlim=64)
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        return IP(src=src, dst=dst, id=self._ip_id, flags="DF", ttl=64)

    def _link(self, ip: Any, outbound: bool) -> Any:
        from scapy.layers.l2 import CookedLinux, Ether, Loopback

        v6 = ip.version == 6
        if self.link == "ethernet":
            macs = ("02:00:5e:10:00:02", "02:00:5e:10:00:01")
            e = Ether(src=macs[0] if outbound else macs[1], dst=macs[1] if outbound else macs[0])
            e.add_payload(ip)
            return e
        if self.link == "sll":
            c = CookedLinux(
                pkttype=4 if outbound else 0,
                lladdrtype=1,
                lladdrlen=6,
                src=b"\x02\x00\x5e\x10\x00\x02\x00\x00",
            )
            c.proto = 0x86DD if v6 else 0x0800
            c.add_payload(ip)
            return c
        if self.link == "null":
            lo = Loopback(type=30 if v6 else 2)
            lo.add_payload(ip)
            return lo
        return ip

    def _write(self, pkt: Any, ts: int) -> None:
        w = self._writer
        if not self._header:
            w.linktype = _LINKTYPES[self.link]
            w.write_header(pkt)
            self._header = True
        sec, frac = divmod(ts, 1_000_000_000)
        if self.format == "pcapng":
            w.write_packet(pkt, sec=Decimal(ts) / Decimal(1_000_000_000))
        elif self._nano:
            w.write_packet(pkt, sec=sec, usec=frac)
        else:
            w.write_packet(pkt, sec=sec, usec=frac // 1000)
        self.packets += 1


def _ns_delta(d: timedelta) -> int:
    return (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


class _Availability:
    """Capture time at which client stream byte ``offset`` became available in order: the latest
    first arrival among the segments covering bytes 0..offset (prefix maximum over offsets)."""

    def __init__(self, arrivals: list[tuple[int, int, int]]) -> None:
        arrivals = sorted(arrivals)
        self._starts = [s for s, _, _ in arrivals]
        self._latest: list[int] = []
        latest = 0
        for _, _, t in arrivals:
            latest = max(latest, t)
            self._latest.append(latest)

    def at(self, offset: int) -> int:
        i = bisect.bisect_right(self._starts, offset)
        return self._latest[i - 1] if i else 0
