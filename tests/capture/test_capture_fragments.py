"""The capture reader on IP datagrams carried in fragments (IPv4 and IPv6): reassembled in any
order, overlaps compared, conflicts and fragments that never complete reported. The captures are
built here with scapy."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.capture.ipfrag import Defragmenter
from tests.capture.packets import ISN_C, ISN_S, T0, body_of, ether, post, read, request_segment, seg


def _fragments(
    pkt: Any,
    pieces: Sequence[tuple[int, int]],
    *,
    v6: bool,
    ident: int = 0x4242,
    replace: dict[int, bytes] | None = None,
) -> list[Any]:
    """IP fragments of ``pkt`` (an IP/TCP packet) carrying the byte ranges ``pieces`` of its IP
    payload; ``replace`` gives other bytes for the piece at that index (a conflicting copy)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
    from scapy.packet import Raw

    built = pkt.__class__(bytes(pkt))  # checksums and lengths filled
    payload = bytes(built.payload)
    total = len(payload)
    out = []
    for i, (a, b) in enumerate(pieces):
        data = (replace or {}).get(i, payload[a:b])
        more = b < total
        if v6:
            frag = IPv6(src=built.src, dst=built.dst) / IPv6ExtHdrFragment(
                nh=6, offset=a // 8, m=int(more), id=ident
            )
        else:
            frag = IP(src=built.src, dst=built.dst, id=ident, proto=6, flags="MF" if more else 0, frag=a // 8)
        out.append(frag / Raw(data))
    return out


def _capture(path: Path, frames: Sequence[tuple[float, Any]]) -> Path:
    from scapy.utils import PcapWriter

    with PcapWriter(str(path)) as w:
        for t, pkt in frames:
            f = ether() / pkt
            f.time = T0.timestamp() + t
            w.write(f)
    return path


def _conversation(
    path: Path, msg: bytes, fragments: Sequence[tuple[float, Any]], *, v6: bool = False, tail_at: float = 0.1
) -> Path:
    """Handshake, the request's segment as the given fragments, the server's ACK, 204 and FINs."""
    end = ISN_C + 1 + len(msg)
    resp = b"HTTP/1.1 204 No Content\r\n\r\n"
    frames = [
        (0.0, seg(ISN_C, "S", v6=v6)),
        (0.001, seg(ISN_S, "SA", v6=v6, from_client=False, ack=ISN_C + 1)),
        (0.002, seg(ISN_C + 1, "A", v6=v6, ack=ISN_S + 1)),
        *fragments,
        (tail_at, seg(ISN_S + 1, "PA", resp, v6=v6, from_client=False, ack=end)),
        (tail_at + 0.001, seg(end, "FA", v6=v6, ack=ISN_S + 1 + len(resp))),
        (tail_at + 0.002, seg(ISN_S + 1 + len(resp), "FA", v6=v6, from_client=False, ack=end + 1)),
        (tail_at + 0.003, seg(end + 1, "A", v6=v6, ack=ISN_S + 2 + len(resp))),
    ]
    return _capture(path, frames)


PIECES = [(0, 504), (504, 1008), (1008, 1512)]  # then the rest: see _pieces


def _pieces(total: int) -> list[tuple[int, int]]:
    return [*PIECES, (1512, total)]


def _payload_len(msg: bytes) -> int:
    return 20 + len(msg)  # the TCP header (no options) and the request


# -- fragments ----------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["raw", "scapy"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled"])
def test_a_post_carried_in_ip_fragments_is_reassembled_in_any_order(
    tmp_path: Path, decoder: str, v6: bool, order: str
) -> None:
    msg = post(1)
    frags = _fragments(request_segment(msg, v6), _pieces(_payload_len(msg)), v6=v6)
    if order == "reversed":
        frags.reverse()
    elif order == "shuffled":
        frags = [frags[2], frags[0], frags[3], frags[1]]
    times = [0.01 + 0.001 * i for i in range(len(frags))]
    path = _conversation(tmp_path / "f.pcap", msg, list(zip(times, frags, strict=True)), v6=v6)
    reqs, reports = read(path, decoder=decoder)
    assert reports == []
    assert [r.body for r in reqs] == [body_of(msg)]
    assert reqs[0].response_status == 204
    # The request is complete when its datagram is: at the last fragment's capture time.
    assert reqs[0].time == T0 + timedelta(seconds=times[-1])


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_overlapping_fragments_with_the_same_bytes_give_the_request(
    tmp_path: Path, decoder: str, v6: bool
) -> None:
    msg = post(2)
    total = _payload_len(msg)
    # a duplicate of the second fragment, and one straddling the second and third
    pieces = [*_pieces(total), (504, 1008), (800, 1200)]
    frags = _fragments(request_segment(msg, v6), pieces, v6=v6)
    order = [frags[0], frags[4], frags[1], frags[5], frags[2], frags[3]]
    path = _conversation(
        tmp_path / "o.pcap", msg, [(0.01 + 0.001 * i, f) for i, f in enumerate(order)], v6=v6
    )
    reqs, reports = read(path, decoder=decoder)
    assert reports == []
    assert [r.body for r in reqs] == [body_of(msg)]


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_overlapping_fragments_with_different_bytes_are_reported_and_not_reassembled(
    tmp_path: Path, decoder: str, v6: bool
) -> None:
    msg = post(3)
    total = _payload_len(msg)
    seg = request_segment(msg, v6)
    good = _fragments(seg, _pieces(total), v6=v6)
    # a copy of bytes 800..1200 of the datagram with other bytes in it
    clash = bytes(seg.__class__(bytes(seg)).payload)[800:1200].replace(b"0", b"9")
    bad = _fragments(seg, [(800, 1200)], v6=v6, replace={0: clash})
    frags = [good[0], good[1], bad[0], good[2], good[3]]
    path = _conversation(
        tmp_path / "c.pcap", msg, [(0.01 + 0.001 * i, f) for i, f in enumerate(frags)], v6=v6
    )
    reqs, reports = read(path, decoder=decoder)
    assert reqs == []  # which copy the server read, if any, is unknown
    conflicts = [r for r in reports if r.code == "ip-fragment-conflict"]
    assert len(conflicts) == 1
    c = conflicts[0]
    assert c.flow is not None and (c.flow.sport, c.flow.dport) == (40000, 8080)
    assert c.time == T0 + timedelta(seconds=0.012)
    assert "different bytes" in c.detail and f"datagram offset {800 + clash.index(b'9')}" in c.detail
    # the segment is missing from the request stream: the TCP layer reports it as lost
    assert sum(r.requests_lost for r in reports) >= 1


def test_a_conflicting_datagram_s_segment_retransmitted_whole_is_read_from_the_retransmission(
    tmp_path: Path,
) -> None:
    msg = post(4)
    total = _payload_len(msg)
    seg = request_segment(msg, False)
    good = _fragments(seg, _pieces(total), v6=False)
    clash = bytes(seg.__class__(bytes(seg)).payload)[504:1008].replace(b"0", b"9")
    bad = _fragments(seg, [(504, 1008)], v6=False, replace={0: clash})
    frames = [(0.010, good[0]), (0.011, good[1]), (0.012, bad[0]), (0.013, good[2]), (0.014, good[3])]
    frames.append((0.05, seg))  # the client's retransmission, not fragmented
    reqs, reports = read(_conversation(tmp_path / "r.pcap", msg, frames))
    assert [r.body for r in reqs] == [body_of(msg)]
    assert [r.code for r in reports] == ["ip-fragment-conflict"]


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_datagram_whose_last_fragment_is_missing_is_counted_as_incomplete(
    tmp_path: Path, decoder: str, v6: bool
) -> None:
    msg = post(5)
    frags = _fragments(request_segment(msg, v6), _pieces(_payload_len(msg)), v6=v6)[:-1]
    path = _conversation(
        tmp_path / "m.pcap", msg, [(0.01 + 0.001 * i, f) for i, f in enumerate(frags)], v6=v6
    )
    reqs, reports = read(path, decoder=decoder)
    assert reqs == []
    incomplete = [r for r in reports if r.code == "ip-fragments-incomplete"]
    assert len(incomplete) == 1 and incomplete[0].flow is None
    assert incomplete[0].detail.startswith("1 IP datagram (3 fragments) never completed")
    assert "1 still incomplete at the end of the capture" in incomplete[0].detail
    assert sum(r.requests_lost for r in reports) >= 1  # the TCP layer's gap


def test_fragments_further_apart_than_the_reassembly_timeout_are_not_joined(tmp_path: Path) -> None:
    msg = post(6)
    frags = _fragments(request_segment(msg, False), _pieces(_payload_len(msg)), v6=False)
    frames = [(0.01, frags[0]), (0.011, frags[1]), (0.012, frags[2]), (40.0, frags[3])]
    reqs, reports = read(_conversation(tmp_path / "t.pcap", msg, frames, tail_at=40.1), fragment_timeout=30.0)
    assert reqs == []
    incomplete = [r for r in reports if r.code == "ip-fragments-incomplete"]
    assert len(incomplete) == 1
    assert "1 timed out" in incomplete[0].detail and "1 still incomplete" in incomplete[0].detail


def test_a_fragment_of_other_datagram_ids_between_them_does_not_mix_in(tmp_path: Path) -> None:
    # Two requests on one connection, each in its own datagram, their fragments interleaved.
    a, b = post(7), post(8)
    seg_a = request_segment(a, False)
    seg_b = seg(ISN_C + 1 + len(a), "PA", b, ack=ISN_S + 1)
    fa = _fragments(seg_a, _pieces(_payload_len(a)), v6=False, ident=1)
    fb = _fragments(seg_b, _pieces(_payload_len(b)), v6=False, ident=2)
    mixed = [x for pair in zip(fa, fb, strict=True) for x in pair]
    msg = a + b
    path = _conversation(tmp_path / "i.pcap", msg, [(0.01 + 0.001 * i, f) for i, f in enumerate(mixed)])
    reqs, reports = read(path, pair_responses=False)
    assert reports == []
    assert [r.body for r in reqs] == [body_of(a), body_of(b)]


def test_defragmenter_memory_bound_drops_the_oldest_datagram_and_counts_it() -> None:
    d = Defragmenter(max_bytes=1000)
    assert d.add(("a",), 0, True, b"x" * 800, 6, 1) is None
    assert d.add(("b",), 0, True, b"y" * 800, 6, 2) is None  # over 1000 bytes: "a" goes
    assert (len(d), d.held_bytes, d.evicted, d.incomplete, d.incomplete_fragments) == (1, 800, 1, 1, 1)
    assert d.add(("b",), 800, False, b"z" * 10, 6, 3) == (6, b"y" * 800 + b"z" * 10)
    assert (len(d), d.held_bytes, d.reassembled) == (0, 0, 1)


def test_defragmenter_refuses_malformed_fragments() -> None:
    d = Defragmenter()
    assert d.add(("a",), 0, True, b"x" * 7, 6, 1) is None  # not a multiple of 8 and not the last
    assert d.add(("a",), 65528, False, b"x" * 16, 6, 1) is None  # past 65,535
    assert d.add(("a",), 8, True, b"", 6, 1) is None  # empty
    assert (d.malformed, len(d)) == (3, 0)


def test_defragmenter_last_fragments_that_disagree_on_the_end_are_a_conflict() -> None:
    d = Defragmenter()
    assert d.add(("a",), 16, False, b"x" * 8, 6, 1) is None
    assert d.add(("a",), 16, False, b"x" * 16, 6, 2) is None
    assert d.add(("a",), 0, True, b"x" * 16, 6, 3) is None  # absorbed: the datagram is dead
    assert d.conflicts == 1 and [p.offset for p in d.problems] == [24]
    d.close()
    assert d.incomplete == 0  # reported as a conflict, not counted again


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
def test_a_fragment_cut_by_the_snap_length_is_not_used_and_is_counted(tmp_path: Path, decoder: str) -> None:
    import struct

    msg = post(12)
    frags = _fragments(request_segment(msg, False), _pieces(_payload_len(msg)), v6=False)
    path = _conversation(tmp_path / "s.pcap", msg, [(0.01 + 0.001 * i, f) for i, f in enumerate(frags)])
    data = path.read_bytes()
    out, pos, n = bytearray(data[:24]), 24, 0
    while pos < len(data):  # record 4 (the second fragment) keeps its first 100 bytes
        sec, usec, caplen, wirelen = struct.unpack_from("<IIII", data, pos)
        rec = data[pos + 16 : pos + 16 + caplen]
        if n == 4:
            rec = rec[:100]
        out += struct.pack("<IIII", sec, usec, len(rec), wirelen) + rec
        pos += 16 + caplen
        n += 1
    path.write_bytes(bytes(out))
    reqs, reports = read(path, decoder=decoder)
    assert reqs == []
    incomplete = [r for r in reports if r.code == "ip-fragments-incomplete"]
    assert len(incomplete) == 1
    assert incomplete[0].detail.startswith("1 IP datagram (3 fragments) never completed")
    assert "1 fragment(s) cut short by the snap length not used" in incomplete[0].detail
