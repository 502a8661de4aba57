"""Captures: what the writer puts in a pcap/pcapng the reader gets back, and damage is reported."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.capture import (
    CapturedRequest,
    CaptureError,
    CaptureReader,
    CaptureWriter,
    Connection,
    Exchange,
    FlowReport,
    Impairments,
    WrittenRequest,
    read_capture,
    truncate_capture,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
DNO = "90-B3-D5-1F-30-02-00-00"
NS = b'xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway"'


def duis_body(n: int, size: int = 2000) -> bytes:
    head = b'<?xml version="1.0" encoding="UTF-8"?><sr:Response ' + NS + b' schemaVersion="5.1"><sr:Header>'
    head += b"<sr:RequestID>90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:%d</sr:RequestID>" % n
    pad = b"<sr:Pad>" + (b"%08d" % n) * max(0, (size - len(head) - 40) // 8) + b"</sr:Pad>"
    return head + pad + b"</sr:Header></sr:Response>"


def exchanges(n: int, start: datetime = T0, *, chunked_every: int = 0, size: int = 2000) -> list[Exchange]:
    out = []
    for i in range(n):
        path = "/duis/observe" if i % 3 == 2 else f"/duis/dno/{DNO}"
        chunk = 500 if chunked_every and i % chunked_every == 0 else None
        out.append(
            Exchange(path, duis_body(i, size), start + timedelta(milliseconds=5 * i), chunk_size=chunk)
        )
    return out


def client(i: int) -> tuple[str, int]:
    return (f"10.20.1.{10 + i}", 41000 + i)


def read_all(path: Path, **kw: object) -> tuple[list[CapturedRequest], list[FlowReport]]:
    reqs: list[CapturedRequest] = []
    reports: list[FlowReport] = []
    for item in read_capture(path, **kw):  # type: ignore[arg-type]
        if isinstance(item, CapturedRequest):
            reqs.append(item)
        else:
            reports.append(item)
    return reqs, reports


def key(r: CapturedRequest) -> tuple[str, int, bytes]:
    return (r.flow.src, r.flow.sport, r.body)


def assert_matches_manifest(
    reqs: list[CapturedRequest], manifest: Sequence[WrittenRequest], *, times: bool = True
) -> None:
    expected = [m for m in manifest if not m.damaged]
    assert len(reqs) == len(expected)
    by_key = {(m.flow[0], m.flow[1], m.exchange.body): m for m in expected}
    assert len(by_key) == len(expected)
    for r in reqs:
        m = by_key[key(r)]
        ex = m.exchange
        assert r.body == ex.body
        assert r.path == ex.path
        assert r.method == ex.method
        assert (r.flow.src, r.flow.sport, r.flow.dst, r.flow.dport) == m.flow
        if ex.path == "/duis/observe":
            assert r.lane == "observe" and r.user is None
        else:
            assert r.lane == "inline" and r.user == ex.path.rsplit("/", 1)[1]
        assert r.response_status == m.response_status
        assert r.header("content-type") == "application/xml"
        if times:
            assert r.time == m.time
            assert r.first_byte_time == m.first_byte_time


def write(path: Path, conns: list[Connection], fmt: str = "pcap", **kw: object) -> list[WrittenRequest]:
    with CaptureWriter(path, fmt, **kw) as w:  # type: ignore[arg-type]
        return w.write_connections(conns)


# -- round trip --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_round_trip_gives_every_request_byte_identical_with_lane_user_and_times(
    tmp_path: Path, fmt: str
) -> None:
    conns = [Connection(exchanges(6, T0 + timedelta(milliseconds=i)), client=client(i)) for i in range(4)]
    manifest = write(tmp_path / f"c.{fmt}", conns, fmt)
    reqs, reports = read_all(tmp_path / f"c.{fmt}")
    assert reports == []
    assert_matches_manifest(reqs, manifest)
    assert {r.lane for r in reqs} == {"inline", "observe"}
    assert all(r.time.tzinfo is not None and r.first_byte_time <= r.time for r in reqs)


def test_nanosecond_pcap_round_trips(tmp_path: Path) -> None:
    manifest = write(tmp_path / "n.pcap", [Connection(exchanges(3))], nano=True)
    reqs, reports = read_all(tmp_path / "n.pcap")
    assert reports == []
    assert_matches_manifest(reqs, manifest)


def test_sample_duis_message_from_shared_round_trips(tmp_path: Path, shared: Path) -> None:
    body = (shared / "duis" / "samples" / "readfw-response.xml").read_bytes()
    ex = [Exchange(f"/duis/dno/{DNO}", body, T0), Exchange("/duis/observe", body, T0 + timedelta(seconds=1))]
    write(tmp_path / "s.pcapng", [Connection(ex)], "pcapng")
    reqs, reports = read_all(tmp_path / "s.pcapng")
    assert reports == []
    assert [(r.lane, r.body) for r in reqs] == [("inline", body), ("observe", body)]


@pytest.mark.parametrize("link", ["sll", "raw", "null"])
def test_other_link_layers_and_ipv6_are_read(tmp_path: Path, link: str) -> None:
    conns = [
        Connection(exchanges(3), client=client(0)),
        Connection(exchanges(3), client=("2001:db8::2", 42000), server=("2001:db8::1", 8080)),
    ]
    manifest = write(tmp_path / "l.pcapng", conns, "pcapng", link=link)
    reqs, reports = read_all(tmp_path / "l.pcapng")
    assert reports == []
    assert_matches_manifest(reqs, manifest)
    assert str(reqs[-1].flow) in {
        "10.20.1.10:41000 -> 10.20.0.1:8080",
        "[2001:db8::2]:42000 -> [2001:db8::1]:8080",
    }


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_frames_longer_than_65535_bytes_as_on_a_loopback_interface_are_read_whole(
    tmp_path: Path, fmt: str
) -> None:
    # Linux loopback has a 65,536-byte MTU: a full segment is a 65,549-byte Ethernet frame. scapy's
    # readers cut every record at 65,535 bytes unless asked for more.
    big = exchanges(3, size=200_000)
    manifest = write(tmp_path / f"lo.{fmt}", [Connection(big, server=("127.0.0.1", 8080))], fmt, mss=65483)
    for decoder in ("raw", "scapy"):
        reqs, reports = read_all(tmp_path / f"lo.{fmt}", decoder=decoder)
        assert reports == []
        assert_matches_manifest(reqs, manifest)


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
@pytest.mark.parametrize("link", ["sll", "sll2"])
def test_vlan_tags_after_a_linux_cooked_header_are_followed(tmp_path: Path, link: str, decoder: str) -> None:
    # A cooked capture on an interface that does not strip 802.1Q tags: protocol 0x8100, the tag
    # follows the cooked header.
    from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q

    cooked = CookedLinux(proto=0x8100) if link == "sll" else CookedLinuxV2(proto=0x8100)
    req = _post(0)
    frames = [
        (i / 1000, cooked / Dot1Q(vlan=7, type=0x0800) / _seg(*args, **kw).payload)
        for i, (args, kw) in enumerate([
            ((1000, "S"), {}), ((5000, "SA"), {"from_client": False, "ack": 1001}),
            ((1001, "PA", req), {"ack": 5001}),
            ((5001, "PA", b"HTTP/1.1 204 No Content\r\n\r\n"), {"from_client": False, "ack": 1001 + len(req)}),
        ])
    ]  # fmt: skip
    reqs, reports = read_all(_frames(tmp_path / "v.pcap", frames), decoder=decoder)
    assert reports == []
    assert [(r.lane, r.response_status) for r in reqs] == [("observe", 204)]


def test_scapy_dissection_decoder_gives_the_same_requests_as_the_raw_path(tmp_path: Path) -> None:
    conns = [Connection(exchanges(4, chunked_every=2), client=client(i), pipelined=i == 1) for i in range(3)]
    manifest = write(tmp_path / "d.pcap", conns)
    fast, _ = read_all(tmp_path / "d.pcap")
    slow, reports = read_all(tmp_path / "d.pcap", decoder="scapy")
    assert reports == []
    assert fast == slow
    assert_matches_manifest(slow, manifest)


# -- tshark ------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_tshark_sees_every_request_the_writer_wrote(tmp_path: Path, fmt: str) -> None:
    conns = [
        Connection(exchanges(5, chunked_every=2), client=client(0)),
        Connection(exchanges(4), client=client(1), pipelined=True),
        Connection(exchanges(3), client=client(2), server=("10.20.0.1", 8443)),
    ]
    manifest = write(tmp_path / f"t.{fmt}", conns, fmt)
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(tmp_path / f"t.{fmt}"),
            "-d",
            "tcp.port==8443,http",
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "tcp.srcport",
            "-e",
            "http.request.uri",
            "-e",
            "http.content_length",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split("\n")
    seen = sorted(tuple(line.split("\t")) for line in out if line.strip())
    want = sorted(
        (str(m.flow[1]), m.exchange.path, "" if m.exchange.chunk_size else str(len(m.exchange.body)))
        for m in manifest
    )
    assert seen == want


# -- keep-alive, pipelining, chunked -----------------------------------------------------------
def test_keep_alive_pipelining_and_chunked_bodies_are_framed(tmp_path: Path) -> None:
    conns = [
        Connection(exchanges(8, chunked_every=3, size=5000), client=client(0)),
        Connection(exchanges(8, chunked_every=2, size=300), client=client(1), pipelined=True),
    ]
    manifest = write(tmp_path / "k.pcap", conns)
    reqs, reports = read_all(tmp_path / "k.pcap")
    assert reports == []
    assert_matches_manifest(reqs, manifest)
    assert sum(1 for r in reqs if r.header("transfer-encoding") == "chunked") == 3 + 4


def test_requests_are_yielded_without_waiting_for_responses_when_pairing_is_off(tmp_path: Path) -> None:
    manifest = write(tmp_path / "p.pcap", [Connection(exchanges(4))])
    reqs, reports = read_all(tmp_path / "p.pcap", pair_responses=False)
    assert [r.body for r in reqs] == [m.exchange.body for m in manifest]
    assert all(r.response_status is None for r in reqs)
    assert reports == []  # the responses answer requests already yielded: not unpaired


def test_without_pairing_a_request_is_yielded_once_the_server_acknowledged_it(tmp_path: Path) -> None:
    # Each request is yielded when the server's acknowledgement of its last byte is read (here
    # it comes with the response), not before: so at that point in the capture's packets.
    write(tmp_path / "a.pcap", [Connection(exchanges(3))])
    reader = CaptureReader(tmp_path / "a.pcap", pair_responses=False)
    seen: list[int] = []
    for item in reader:
        assert isinstance(item, CapturedRequest)
        seen.append(reader.stats.packets)
    ends = [
        i for i, (_, meta) in enumerate(_records(tmp_path / "a.pcap"), 1) if meta.startswith(b"HTTP/1.1 204")
    ]
    assert seen == ends


def _records(path: Path) -> list[tuple[float, bytes]]:
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap

    return [(float(p.time), bytes(p[TCP].payload)) for p in rdpcap(str(path))]


# -- TCP damage --------------------------------------------------------------------------------
def test_out_of_order_and_retransmitted_segments_give_the_same_requests_as_a_clean_capture(
    tmp_path: Path,
) -> None:
    clean = [Connection(exchanges(10, size=6000), client=client(i)) for i in range(3)]
    messy = [
        Connection(c.exchanges, client=c.client, impairments=Impairments(reorder=0.5, retransmit=0.3, seed=i))
        for i, c in enumerate(clean)
    ]
    write(tmp_path / "clean.pcap", clean)
    manifest = write(tmp_path / "messy.pcap", messy)
    a, ra = read_all(tmp_path / "clean.pcap")
    b, rb = read_all(tmp_path / "messy.pcap")
    assert ra == rb == []

    def strip(rs: list[CapturedRequest]) -> list[tuple[object, ...]]:
        return sorted((str(r.flow), r.path, r.lane, r.user, r.headers, r.body, r.response_status) for r in rs)

    assert strip(a) == strip(b)
    assert_matches_manifest(b, manifest)  # including the shifted completion times


@pytest.mark.parametrize("pair_responses", [True, False])
def test_a_retransmission_with_other_bytes_before_the_server_acknowledged_them_is_never_yielded(
    tmp_path: Path, pair_responses: bool
) -> None:
    # The copies differ and the server had not acknowledged either: which one it read is
    # unknown, so no request with bytes from that offset on is yielded (the framing itself may
    # differ after it); those before are.
    exs = exchanges(4, size=4000)
    manifest = write(
        tmp_path / "x.pcap",
        [Connection(exs, impairments=Impairments(retransmit=0.5, corrupt_retransmit=True, seed=3))],
    )
    reqs, reports = read_all(tmp_path / "x.pcap", pair_responses=pair_responses)
    conflict = [r for r in reports if r.code == "overlap-conflict"]
    assert len(conflict) == 1 and conflict[0].flow is not None and conflict[0].flow.sport == 40000
    assert len(reqs) < len(manifest)
    assert [r.body for r in reqs] == [m.exchange.body for m in manifest[: len(reqs)]]
    assert len(reqs) + sum(r.requests_lost for r in reports) >= len(manifest)


def _exchange_with_a_retransmission(tmp_path: Path, *, acked_first: bool) -> Path:
    """One request in one segment, sent again with one byte changed, before or after the server's
    acknowledgement; then the 204."""
    req = _post(0)
    other = req[:-20] + b"X" + req[-19:]
    ack = 1001 + len(req)
    frames = [
        (0.0, _seg(1000, "S")), (0.001, _seg(5000, "SA", from_client=False, ack=1001)),
        (0.002, _seg(1001, "A", ack=5001)), (0.003, _seg(1001, "PA", req, ack=5001)),
    ]  # fmt: skip
    ack_pkt = _seg(5001, "A", from_client=False, ack=ack)
    again = _seg(1001, "PA", other, ack=5001)
    frames += list(zip((0.004, 0.005), [ack_pkt, again] if acked_first else [again, ack_pkt], strict=True))
    frames += [(0.006, _seg(5001, "PA", b"HTTP/1.1 204 No Content\r\n\r\n", from_client=False, ack=ack))]
    return _frames(tmp_path / f"r{acked_first}.pcap", frames)


@pytest.mark.parametrize("pair_responses", [True, False])
def test_a_retransmission_with_other_bytes_after_the_server_acknowledged_them_changes_nothing(
    tmp_path: Path, pair_responses: bool
) -> None:
    # The server had its copy when the other one came; it discards the late one.
    reqs, reports = read_all(
        _exchange_with_a_retransmission(tmp_path, acked_first=True), pair_responses=pair_responses
    )
    assert [r.body for r in reqs] == [_post(0).split(b"\r\n\r\n", 1)[1]]
    assert reports == []


@pytest.mark.parametrize("pair_responses", [True, False])
def test_a_retransmission_with_other_bytes_before_the_acknowledgement_loses_that_request(
    tmp_path: Path, pair_responses: bool
) -> None:
    reqs, reports = read_all(
        _exchange_with_a_retransmission(tmp_path, acked_first=False), pair_responses=pair_responses
    )
    assert reqs == []
    assert [(r.code, r.requests_lost) for r in reports] == [("overlap-conflict", 1)]
    assert f"stream offset {len(_post(0)) - 20}" in reports[0].detail


def test_a_request_sent_past_the_clients_fin_is_not_yielded(tmp_path: Path) -> None:
    # The FIN ends the client's stream after request 0; a segment placed beyond it carries a
    # request, and comes before request 0's last part: which of the two the server's TCP took
    # depends on its arrival order, so request 1 is not yielded (request 0 is: it ends at the FIN).
    r0, r1 = _post(0), _post(1)
    half = len(r0) // 2
    fin_at = 1001 + len(r0)
    frames = [
        (0.0, _seg(1000, "S")), (0.001, _seg(5000, "SA", from_client=False, ack=1001)),
        (0.002, _seg(1001, "PA", r0[:half], ack=5001)),
        (0.003, _seg(fin_at, "FA", ack=5001)),
        (0.004, _seg(fin_at, "PA", r1, ack=5001)),
        (0.005, _seg(1001 + half, "PA", r0[half:], ack=5001)),
        (0.006, _seg(5001, "PA", b"HTTP/1.1 204 No Content\r\n\r\n", from_client=False, ack=fin_at + 1)),
    ]  # fmt: skip
    reqs, reports = read_all(_frames(tmp_path / "f.pcap", frames), pair_responses=False)
    assert [r.body for r in reqs] == [r0.split(b"\r\n\r\n", 1)[1]]
    assert [r.code for r in reports] == ["overlap-conflict", "untrusted"]  # untrusted: request 1's line
    assert f"stream offset {len(r0)}" in reports[0].detail and reports[1].requests_lost == 1


def test_overlapping_out_of_order_copies_that_differ_lose_the_request_they_fall_in(tmp_path: Path) -> None:
    # Two different copies of the second half arrive before the first half: the bytes before the
    # difference are delivered, the request they belong to is not yielded.
    req = _post(0)
    half = len(req) // 2
    other = req[half:-20] + b"X" + req[-19:]
    frames = [
        (0.0, _seg(1000, "S")), (0.001, _seg(5000, "SA", from_client=False, ack=1001)),
        (0.002, _seg(1001 + half, "PA", req[half:], ack=5001)),
        (0.003, _seg(1001 + half, "PA", other, ack=5001)),
        (0.004, _seg(1001, "PA", req[:half], ack=5001)),
        (0.005, _seg(5001, "PA", b"HTTP/1.1 204 No Content\r\n\r\n", from_client=False, ack=1001 + len(req))),
    ]  # fmt: skip
    reqs, reports = read_all(_frames(tmp_path / "o.pcap", frames))
    assert reqs == []
    assert [(r.code, r.requests_lost) for r in reports] == [("overlap-conflict", 1), ("unpaired-response", 0)]
    assert f"stream offset {len(req) - 20}" in reports[0].detail


def test_dropped_segment_reports_that_flow_and_leaves_other_flows_intact(tmp_path: Path) -> None:
    conns = [
        Connection(exchanges(6), client=client(0)),
        Connection(exchanges(6), client=client(1), impairments=Impairments(drop=frozenset({5}))),
        Connection(exchanges(6), client=client(2)),
    ]
    manifest = write(tmp_path / "g.pcap", conns)
    damaged = [m for m in manifest if m.damaged]
    assert damaged and all(m.flow[1] == client(1)[1] for m in damaged)
    reqs, reports = read_all(tmp_path / "g.pcap")
    assert_matches_manifest(reqs, manifest)
    assert {r.flow.sport for r in reports if r.flow} == {client(1)[1]}
    codes = [r.code for r in reports]
    assert "gap" in codes
    lost = sum(r.requests_lost for r in reports)
    assert lost >= len(damaged) - 1  # the one in progress plus the untrusted ones after it


def test_a_new_connection_after_a_gap_is_trusted_again(tmp_path: Path) -> None:
    c = client(0)
    conns = [
        Connection(exchanges(3), client=c, impairments=Impairments(drop=frozenset({1}))),
        Connection(exchanges(3, T0 + timedelta(seconds=5)), client=(c[0], c[1] + 1)),
    ]
    manifest = write(tmp_path / "n.pcap", conns)
    reqs, reports = read_all(tmp_path / "n.pcap")
    assert_matches_manifest(reqs, manifest)
    assert len(reqs) == 3 and {r.flow.sport for r in reqs} == {c[1] + 1}
    assert reports and all(r.flow is not None and r.flow.sport == c[1] for r in reports)


def test_a_keep_alive_connection_idle_past_the_timeout_is_picked_up_again(tmp_path: Path) -> None:
    # The idle sweep drops the connection's state; its next request is on the same 4-tuple
    # without a handshake and must be read, not ignored as a late segment of a closed connection.
    exs = [replace(e, time=e.time + timedelta(seconds=330 * (i // 2))) for i, e in enumerate(exchanges(4))]
    manifest = write(tmp_path / "i.pcap", [Connection(exs)])
    reader = CaptureReader(tmp_path / "i.pcap", idle_timeout=300)
    reqs = list(reader.requests())
    assert_matches_manifest(reqs, manifest)
    assert reader.reports == [] and reader.stats.evicted_idle == 1 and reader.stats.connections == 2


def test_a_connection_evicted_from_a_full_flow_table_is_picked_up_again(tmp_path: Path) -> None:
    conns = [Connection(exchanges(4, T0 + timedelta(seconds=i)), client=client(i)) for i in range(2)]
    late = [
        replace(e, body=e.body + b" ", time=e.time + timedelta(seconds=10 * (i // 2)))
        for i, e in enumerate(exchanges(4))
    ]
    conns[0] = Connection(late, client=client(0))
    manifest = write(tmp_path / "e.pcap", conns)
    reader = CaptureReader(tmp_path / "e.pcap", max_flows=1)
    reqs = list(reader.requests())
    assert_matches_manifest(reqs, manifest)
    assert [r.code for r in reader.reports] == ["evicted"]


def _frames(path: Path, frames: Sequence[tuple[float, Any]]) -> Path:
    """A pcap of hand-made frames (capture time in seconds after T0, scapy packet)."""
    from scapy.utils import PcapWriter

    with PcapWriter(str(path)) as w:
        for t, pkt in frames:
            pkt.time = T0.timestamp() + t
            w.write(pkt)
    return path


def _seg(seq: int, flags: str, payload: bytes = b"", *, from_client: bool = True, ack: int = 0) -> Any:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    a, b = ("10.20.0.2", 40000), ("10.20.0.1", 8080)
    (src, sport), (dst, dport) = (a, b) if from_client else (b, a)
    pkt = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags)
    return pkt / payload if payload else pkt


def _post(n: int) -> bytes:
    body = duis_body(n, 300)
    return (
        b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )


def test_data_on_the_4_tuple_of_a_reset_connection_is_reported_not_dropped_silently(tmp_path: Path) -> None:
    # A connection is reset; 10 s later a request comes on the same 4-tuple without a SYN in the
    # capture. It is not used (a late segment of the closed connection, for all the reader knows),
    # but it must be counted in a report.
    p = _frames(tmp_path / "late.pcap", [
        (0.0, _seg(1000, "S")), (0.001, _seg(5000, "SA", from_client=False, ack=1001)),
        (0.002, _seg(1001, "PA", _post(0), ack=5001)),
        (0.003, _seg(5001, "RA", from_client=False)),
        (10.0, _seg(90000, "PA", _post(1))),
    ])  # fmt: skip
    reqs, reports = read_all(p)
    assert len(reqs) == 1
    late = [r for r in reports if r.code == "late-data"]
    assert len(late) == 1 and late[0].flow is None
    assert "1 segment" in late[0].detail and f"{len(_post(1))} bytes" in late[0].detail


_RESP = b"HTTP/1.1 204 No Content\r\n\r\n"
_L0 = len(_post(0))


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
@pytest.mark.parametrize(
    ("from_client", "seq", "taken"),
    [
        (False, 5001 + len(_RESP) + 10**6, False),  # beyond the server's window
        (True, 1001 + _L0 + 10**6, False),  # beyond the client's window
        (True, (1001 + _L0 + 3_000_000_000) & 0xFFFFFFFF, False),  # far away in sequence space
        (True, 1001 + _L0 + 100, False),  # in the window, not the next byte: a challenge ACK
        (True, 1001 + 10, False),  # an old sequence number, already received
        (True, 1001 + _L0, True),  # exactly the next byte: a reset
        (False, 5001 + len(_RESP), True),
    ],
    ids=["server-out-of-window", "client-out-of-window", "client-far", "client-in-window", "client-old",
         "client-exact", "server-exact"],
)  # fmt: skip
def test_an_rst_the_receiver_does_not_take_does_not_end_the_connection(
    tmp_path: Path, decoder: str, from_client: bool, seq: int, taken: bool
) -> None:
    # RFC 5961 (Linux): a TCP takes an RST only at the sequence number it expects next; it drops
    # one outside its window and answers one elsewhere in it with a challenge ACK. The connection
    # then goes on, and so must the reader: the second request is one the gateway read.
    p = _frames(tmp_path / "rst.pcap", [
        (0.0, _seg(1000, "S")), (0.001, _seg(5000, "SA", from_client=False, ack=1001)),
        (0.002, _seg(1001, "PA", _post(0), ack=5001)),
        (0.003, _seg(5001, "PA", _RESP, from_client=False, ack=1001 + _L0)),
        (0.004, _seg(seq, "RA", from_client=from_client, ack=1001 + _L0 if not from_client else 5001 + len(_RESP))),
        (0.005, _seg(1001 + _L0, "PA", _post(1), ack=5001 + len(_RESP))),
        (0.006, _seg(5001 + len(_RESP), "PA", _RESP, from_client=False, ack=1001 + _L0 + len(_post(1)))),
    ])  # fmt: skip
    reqs, reports = read_all(p, decoder=decoder)
    if taken:
        assert [r.body for r in reqs] == [_post(0).split(b"\r\n\r\n", 1)[1]]
        assert [r.code for r in reports] == ["late-data"]
    else:
        assert [(r.body, r.response_status) for r in reqs] == [
            (_post(0).split(b"\r\n\r\n", 1)[1], 204),
            (_post(1).split(b"\r\n\r\n", 1)[1], 204),
        ]
        assert [(r.code, r.flow) for r in reports] == [("ignored-rst", reqs[0].flow)]
        assert reports[0].detail.startswith("1 RST segment with a sequence number the receiver does not take")


def test_an_rst_at_the_sequence_number_the_receiver_last_acknowledged_is_taken_beyond_what_the_capture_holds(
    tmp_path: Path,
) -> None:
    # The capture missed the server's response; the client's ACK says it got it. The server's
    # RST after it is where the client expects it: the connection ends there, and the request
    # that follows on the same ports is not one the server read.
    end = 5001 + len(_RESP)
    p = _frames(tmp_path / "rst-acked.pcap", [
        (0.0, _seg(1000, "S")), (0.001, _seg(5000, "SA", from_client=False, ack=1001)),
        (0.002, _seg(1001, "PA", _post(0), ack=5001)),
        (0.003, _seg(1001 + _L0, "A", ack=end)),
        (0.004, _seg(end, "R", from_client=False)),
        (0.005, _seg(1001 + _L0, "PA", _post(1), ack=end)),
    ])  # fmt: skip
    reqs, reports = read_all(p)
    assert [(r.body, r.response_status) for r in reqs] == [(_post(0).split(b"\r\n\r\n", 1)[1], None)]
    assert [r.code for r in reports] == ["late-data"]


def _snap(path: Path, snaplen: int, records: set[int] | None = None) -> Path:
    """Rewrite a little-endian µs pcap as if captured with ``snaplen``: the chosen records (all
    when None) keep their first ``snaplen`` bytes and their original length."""
    import struct

    data = path.read_bytes()
    out, pos, n = bytearray(data[:24]), 24, 0
    out[16:20] = struct.pack("<I", snaplen)
    while pos < len(data):
        sec, usec, caplen, wirelen = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + caplen]
        if records is None or n in records:
            frame = frame[:snaplen]
        out += struct.pack("<IIII", sec, usec, len(frame), wirelen) + frame
        pos += 16 + caplen
        n += 1
    path.write_bytes(bytes(out))
    return path


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
def test_a_capture_with_a_short_snap_length_gives_no_request_and_names_the_snap_length(
    tmp_path: Path, decoder: str
) -> None:
    write(tmp_path / "s.pcap", [Connection(exchanges(3))])
    reqs, reports = read_all(_snap(tmp_path / "s.pcap", 200), decoder=decoder)
    assert reqs == []
    snapped = [r for r in reports if r.code == "snapped"]
    assert len(snapped) == 1 and "snap length" in snapped[0].detail
    assert sum(r.requests_lost for r in reports) >= 1


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
def test_requests_cut_off_by_the_snap_length_after_a_complete_one_are_reported(
    tmp_path: Path, decoder: str
) -> None:
    # One segment carries the end of request 0, request 1 whole and the FIN; the capture keeps
    # only the bytes up to the end of request 0. Request 1 is lost and must be reported as such
    # (the FIN's place is where the whole segment ends, not where the captured bytes end).
    r0, r1 = _post(0), _post(1)
    head = len(r0) - 50
    frames = [
        (0.0, _seg(1000, "S")), (0.001, _seg(5000, "SA", from_client=False, ack=1001)),
        (0.002, _seg(1001, "A", ack=5001)),
        (0.003, _seg(1001, "PA", r0[:head], ack=5001)),
        (0.004, _seg(1001 + head, "FPA", r0[head:] + r1, ack=5001)),
        (0.005, _seg(5001, "FA", from_client=False, ack=1001 + len(r0) + len(r1) + 1)),
        (0.006, _seg(1002 + len(r0) + len(r1), "A", ack=5002)),
    ]  # fmt: skip
    p = _frames(tmp_path / "c.pcap", frames)
    cut_at = len(_seg(0, "PA", r0[head:]))  # the frame up to the end of request 0
    reqs, reports = read_all(_snap(p, cut_at, {4}), decoder=decoder)
    assert [r.body for r in reqs] == [r0.split(b"\r\n\r\n", 1)[1]]
    codes = [r.code for r in reports]
    assert "snapped" in codes and "gap" in codes
    assert sum(r.requests_lost for r in reports) == 1


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
def test_capture_times_that_go_backwards_are_reported(tmp_path: Path, decoder: str) -> None:
    # A record stamped 5 s before the one it follows (merged captures, a clock step): the
    # requests are still read, in file order, and the report says their times are not in order.
    import struct

    path = tmp_path / "b.pcap"
    manifest = write(path, [Connection(exchanges(4))])
    data = bytearray(path.read_bytes())
    pos, n = 24, 0
    while pos < len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        if n == 6:
            sec = struct.unpack_from("<I", data, pos)[0]
            struct.pack_into("<I", data, pos, sec - 5)
        pos += 16 + caplen
        n += 1
    path.write_bytes(bytes(data))
    reqs, reports = read_all(path, decoder=decoder)
    assert [r.body for r in reqs] == [m.exchange.body for m in manifest]
    assert [r.code for r in reports] == ["time-backwards"]
    assert reports[0].detail.startswith("1 packet carries") and "(up to 4.99" in reports[0].detail


def test_sequence_numbers_wrapping_around_zero_are_followed(tmp_path: Path) -> None:
    conn = Connection(exchanges(5, size=3000), client_isn=0xFFFFFFFF - 4000, server_isn=0xFFFFFFF0)
    manifest = write(tmp_path / "w.pcap", [conn])
    reqs, reports = read_all(tmp_path / "w.pcap")
    assert reports == []
    assert_matches_manifest(reqs, manifest)


def test_a_flow_picked_up_without_handshake_resynchronises_on_the_next_request(tmp_path: Path) -> None:
    manifest = write(tmp_path / "m.pcap", [Connection(exchanges(4), handshake=False)])
    reqs, reports = read_all(tmp_path / "m.pcap", ports={8080})
    assert reports == []
    assert_matches_manifest(reqs, manifest)


# -- truncated / unreadable files --------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_truncated_file_gives_the_complete_flows_and_a_clear_report_for_the_rest(
    tmp_path: Path, fmt: str
) -> None:
    p = tmp_path / f"t.{fmt}"
    early = Connection(exchanges(4), client=client(0))
    late = Connection(exchanges(4, T0 + timedelta(seconds=10)), client=client(1), teardown=False)
    manifest = write(p, [early, late], fmt)
    size = p.stat().st_size
    truncate_capture(p, size - 1500)  # inside the last request's data
    reqs, reports = read_all(p)
    assert [r.code for r in reports if r.flow is None] == ["truncated-file"]
    got = {key(r) for r in reqs}
    for m in manifest:
        if m.flow[1] == client(0)[1] or m.exchange is not late.exchanges[-1]:
            assert (m.flow[0], m.flow[1], m.exchange.body) in got
    assert len(reqs) == 7
    cut = [r.code for r in reports if r.flow is not None]
    assert all(r.flow.sport == client(1)[1] for r in reports if r.flow is not None)
    assert "truncated-flow" in cut
    # the partial last record holds part of the request; its IP length says the rest is missing
    if fmt == "pcap":
        assert "gap" in cut


def test_file_cut_inside_a_record_header_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "h.pcap"
    write(p, [Connection(exchanges(2))])
    with p.open("ab") as f:
        f.write(b"\x01\x02\x03")
    reqs, reports = read_all(p)
    assert len(reqs) == 2
    assert [r.code for r in reports] == ["truncated-file"]


def test_a_file_that_is_not_a_capture_raises_a_named_error(tmp_path: Path) -> None:
    p = tmp_path / "x.pcap"
    p.write_bytes(b"this is not a capture at all")
    with pytest.raises(CaptureError) as e:
        list(read_capture(p))
    assert e.value.code == "capture-unreadable"


# -- non-HTTP, non-DUIS ------------------------------------------------------------------------
def test_non_http_traffic_is_reported_and_skipped(tmp_path: Path) -> None:
    rng = random.Random(7)
    noise = bytes(rng.getrandbits(8) for _ in range(3000))
    p = tmp_path / "n.pcap"
    with CaptureWriter(p) as w:
        w.write_udp(T0 - timedelta(seconds=1), ("10.9.9.9", 53000), ("10.9.9.1", 53), b"\x12\x34 not dns")
        manifest = w.write_connections(
            [
                Connection(exchanges(3), client=client(0)),
                Connection([Exchange("", b"", T0, raw=noise)], client=client(1), server=("10.20.0.1", 9999)),
            ]
        )
    reqs, reports = read_all(p)
    assert_matches_manifest(reqs, manifest)
    codes = {r.code: r for r in reports}
    assert set(codes) == {"not-http", "non-tcp"}
    assert codes["not-http"].flow is not None and codes["not-http"].flow.sport == client(1)[1]
    assert "1 UDP" in codes["non-tcp"].detail


def test_non_duis_paths_bodies_and_content_types_are_reported_not_yielded(tmp_path: Path) -> None:
    good = duis_body(1)
    exs = [
        Exchange("/duis/dno/90-B3-D5-1F-30-02-00-00", good, T0),
        Exchange("/metrics", good, T0 + timedelta(milliseconds=10)),
        Exchange("/duis/observe", good, T0 + timedelta(milliseconds=20), content_type="text/plain"),
        Exchange("/duis/observe", b'{"json": true}', T0 + timedelta(milliseconds=30)),
        Exchange("/duis/observe", good, T0 + timedelta(milliseconds=40), method="PUT"),
        Exchange("/duis/dno/dno-east%20one?x=1", good, T0 + timedelta(milliseconds=50)),
    ]
    write(tmp_path / "d.pcap", [Connection(exs)])
    reqs, reports = read_all(tmp_path / "d.pcap")
    assert [(r.lane, r.user) for r in reqs] == [("inline", DNO), ("inline", "dno-east one")]
    assert [r.code for r in reports] == ["non-duis-path", "not-xml", "non-duis-body", "non-duis-path"]
    assert [r.path for r in reports] == ["/metrics", "/duis/observe", "/duis/observe", "/duis/observe"]


def test_reader_object_collects_reports_and_yields_only_requests(tmp_path: Path) -> None:
    p = tmp_path / "r.pcap"
    with CaptureWriter(p) as w:
        w.write_udp(T0 - timedelta(seconds=1), ("10.9.9.9", 53000), ("10.9.9.1", 53), b"x")
        w.write_connections([Connection(exchanges(2))])
    reader = CaptureReader(p)
    reqs = list(reader.requests())
    assert len(reqs) == 2 and [r.code for r in reader.reports] == ["non-tcp"]
    assert reader.stats.connections == 1 and reader.stats.udp_packets == 1


def test_ports_filter_ignores_other_tcp_traffic(tmp_path: Path) -> None:
    conns = [
        Connection(exchanges(2), client=client(0)),
        Connection(exchanges(2), client=client(1), server=("10.20.0.1", 9000)),
    ]
    write(tmp_path / "f.pcap", conns)
    reqs, _ = read_all(tmp_path / "f.pcap", ports={9000})
    assert {r.flow.dport for r in reqs} == {9000} and len(reqs) == 2


# -- property: segmentation and order do not change what is extracted ----------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31),
    reorder=st.floats(0, 0.9),
    retransmit=st.floats(0, 0.5),
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=5),
    pipelined=st.booleans(),
    chunk=st.one_of(st.none(), st.integers(1, 3000)),
)
def test_random_segmentation_and_reordering_extract_identical_requests(
    tmp_path: Path,
    seed: int,
    reorder: float,
    retransmit: float,
    sizes: list[int],
    pipelined: bool,
    chunk: int | None,
) -> None:
    exs = [
        Exchange(
            f"/duis/dno/{DNO}" if i % 2 else "/duis/observe",
            duis_body(i, s),
            T0 + timedelta(milliseconds=3 * i),
            chunk_size=chunk,
        )
        for i, s in enumerate(sizes)
    ]
    base = Connection(exs, pipelined=pipelined)
    messy = Connection(
        exs,
        pipelined=pipelined,
        impairments=Impairments(reorder=reorder, retransmit=retransmit, random_segmentation=True, seed=seed),
    )
    write(tmp_path / "a.pcap", [base])
    manifest = write(tmp_path / "b.pcap", [messy], mss=1448)
    a, ra = read_all(tmp_path / "a.pcap")
    b, rb = read_all(tmp_path / "b.pcap")
    assert ra == rb == []
    assert [(r.path, r.lane, r.user, r.headers, r.body, r.response_status) for r in a] == [
        (r.path, r.lane, r.user, r.headers, r.body, r.response_status) for r in b
    ]
    assert_matches_manifest(b, manifest)
