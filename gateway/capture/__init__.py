"""Packet captures of DUIS traffic: read requests out of pcap/pcapng files (``reader``) and write
realistic captures (``writer``). See docs/CAPTURES.md."""

from __future__ import annotations

from gateway.capture.reader import (
    CapturedRequest,
    CaptureError,
    CaptureReader,
    Flow,
    FlowReport,
    Lane,
    read_capture,
)
from gateway.capture.writer import (
    CaptureWriter,
    Connection,
    Exchange,
    Impairments,
    WrittenRequest,
    truncate_capture,
)

__all__ = [
    "CaptureError",
    "CaptureReader",
    "CaptureWriter",
    "CapturedRequest",
    "Connection",
    "Exchange",
    "Flow",
    "FlowReport",
    "Impairments",
    "Lane",
    "WrittenRequest",
    "read_capture",
    "truncate_capture",
]
