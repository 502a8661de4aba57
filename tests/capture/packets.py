"""Hand-made TCP packets for the capture reader's tests (scapy), and a reader that splits what it yields."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.capture import CapturedRequest, FlowReport, read_capture

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NS = b'xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway"'
CLI4, SRV4 = "10.20.0.2", "10.20.0.1"
CLI6, SRV6 = "2001:db8::2", "2001:db8::1"
ISN_C, ISN_S = 1000, 5000


def post(n: int, size: int = 1400) -> bytes:
    body = b"<sr:Request " + NS + b"><sr:Pad>" + (b"%08d" % n) * (size // 8) + b"</sr:Pad></sr:Request>"
    head = b"POST /duis/observe HTTP/1.1\r\nHost: gw\r\nContent-Type: application/xml\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def body_of(msg: bytes) -> bytes:
    return msg.split(b"\r\n\r\n", 1)[1]


def l3(v6: bool, from_client: bool) -> Any:
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    c, s = (CLI6, SRV6) if v6 else (CLI4, SRV4)
    src, dst = (c, s) if from_client else (s, c)
    return IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)


def seg(
    seq: int, flags: str, payload: bytes = b"", *, v6: bool = False, from_client: bool = True, ack: int = 0
) -> Any:
    from scapy.layers.inet import TCP

    sport, dport = (40000, 8080) if from_client else (8080, 40000)
    pkt = l3(v6, from_client) / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags)
    return pkt / payload if payload else pkt


def ether() -> Any:
    from scapy.layers.l2 import Ether

    # explicit addresses: without them scapy would try to resolve them on the network
    return Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def read(path: Path, **kw: Any) -> tuple[list[CapturedRequest], list[FlowReport]]:
    reqs: list[CapturedRequest] = []
    reports: list[FlowReport] = []
    for item in read_capture(path, **kw):
        (reqs if isinstance(item, CapturedRequest) else reports).append(item)  # type: ignore[arg-type]
    return reqs, reports


def request_segment(msg: bytes, v6: bool) -> Any:
    return seg(ISN_C + 1, "PA", msg, v6=v6, ack=ISN_S + 1)
