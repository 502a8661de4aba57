"""The capture reader on pcapng interface options (``if_tsresol``, ``if_tsoffset``, several
sections). The captures are built here with scapy."""

from __future__ import annotations

import struct
from datetime import timedelta
from pathlib import Path

import pytest

from tests.capture.packets import ISN_C, ISN_S, T0, body_of, ether, post, read, request_segment, seg


# -- pcapng -------------------------------------------------------------------------------------
def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _shb() -> bytes:
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def _idb(tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += _opt(9, bytes([tsresol]))
    if tsoffset is not None:
        opts += _opt(14, struct.pack("<q", tsoffset))
    if opts:
        opts += _opt(0, b"")
    return _block(1, struct.pack("<HHI", 1, 0, 0xFFFF) + opts)


def _epb(intid: int, ticks: int, frame: bytes) -> bytes:
    head = struct.pack("<IIIII", intid, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
    return _block(6, head + frame)


def _frames_of_one_exchange(msg: bytes) -> list[bytes]:
    end = ISN_C + 1 + len(msg)
    resp = b"HTTP/1.1 204 No Content\r\n\r\n"
    pkts = [
        seg(ISN_C, "S"),
        seg(ISN_S, "SA", from_client=False, ack=ISN_C + 1),
        request_segment(msg, False),
        seg(ISN_S + 1, "PA", resp, from_client=False, ack=end),
    ]
    return [bytes(ether() / p) for p in pkts]


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
@pytest.mark.parametrize(
    ("tsresol", "per_second"),
    [(None, 10**6), (9, 10**9), (3, 10**3), (0x80 | 20, 2**20), (0x80 | 10, 2**10)],
    ids=["default-us", "10^-9", "10^-3", "2^-20", "2^-10"],
)
@pytest.mark.parametrize(
    "tsoffset", [None, 1_700_000_000, -86_400], ids=["no-offset", "offset", "negative-offset"]
)
def test_pcapng_times_apply_the_interfaces_if_tsresol_and_if_tsoffset(
    tmp_path: Path, decoder: str, tsresol: int | None, per_second: int, tsoffset: int | None
) -> None:
    msg = post(9)
    base = int(T0.timestamp()) - (tsoffset or 0)  # the file's times, before the offset is added
    frac = [0.0, 0.25, 0.5, 0.75]  # exact in every resolution above
    blocks = [_shb(), _idb(tsresol, tsoffset)]
    for f, frame in zip(frac, _frames_of_one_exchange(msg), strict=True):
        blocks.append(_epb(0, (base * per_second) + int(f * per_second), frame))
    path = tmp_path / "t.pcapng"
    path.write_bytes(b"".join(blocks))
    reqs, reports = read(path, decoder=decoder)
    assert reports == []
    assert [(r.first_byte_time, r.time) for r in reqs] == [
        (T0 + timedelta(seconds=0.5), T0 + timedelta(seconds=0.5))
    ]


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
def test_pcapng_sections_each_number_their_own_interfaces(tmp_path: Path, decoder: str) -> None:
    # Two captures concatenated (``cat a.pcapng b.pcapng``): interface 0 of the second section is
    # its own (ns, with an offset), not interface 0 of the first (µs).
    a, b = post(10), post(11)
    t = int(T0.timestamp())
    blocks = [_shb(), _idb()]
    blocks += [_epb(0, t * 10**6 + i, f) for i, f in enumerate(_frames_of_one_exchange(a))]
    blocks += [_shb(), _idb(9, 3600)]
    other = [bytes(f) for f in _frames_of_one_exchange(b)]
    # the second capture's exchange on another client port
    other = [f.replace(struct.pack("!H", 40000), struct.pack("!H", 40001)) for f in other]
    blocks += [_epb(0, (t - 3600 + 10) * 10**9 + i, f) for i, f in enumerate(other)]
    path = tmp_path / "two.pcapng"
    path.write_bytes(b"".join(blocks))
    reqs, reports = read(path, decoder=decoder)
    assert reports == []
    assert [(r.body, r.time) for r in reqs] == [
        (body_of(a), T0 + timedelta(microseconds=2)),
        (body_of(b), T0 + timedelta(seconds=10)),
    ]


def _raw_idb(options: bytes) -> bytes:
    return _block(1, struct.pack("<HHI", 1, 0, 0xFFFF) + options)


@pytest.mark.parametrize("decoder", ["raw", "scapy"])
@pytest.mark.parametrize(
    ("options", "what"),
    [
        (
            _opt(14, struct.pack("<i", 3600)) + _opt(0, b""),
            "its if_tsoffset option is 4 bytes long (must be 8)",
        ),
        (_opt(9, b"\x09\x00") + _opt(0, b""), "its if_tsresol option is 2 bytes long (must be 1)"),
        (_opt(9, b"\x09") + _opt(9, b"\x06") + _opt(0, b""), "its if_tsresol option appears 2 times"),
        (_opt(14, b"\0" * 8) + _opt(14, b"\0" * 8) + _opt(0, b""), "its if_tsoffset option appears 2 times"),
        (struct.pack("<HH", 14, 8) + b"\0\0\0\0", "its if_tsoffset option runs past the end of its block"),
    ],
    ids=["tsoffset-4-bytes", "tsresol-2-bytes", "tsresol-twice", "tsoffset-twice", "tsoffset-past-block"],
)
def test_a_malformed_pcapng_time_option_is_reported_not_silently_ignored(
    tmp_path: Path, decoder: str, options: bytes, what: str
) -> None:
    msg = post(12)
    t = int(T0.timestamp())
    blocks = [_shb(), _idb(), _raw_idb(options)]
    blocks += [_epb(1, t * 10**6 + i, f) for i, f in enumerate(_frames_of_one_exchange(msg))]
    path = tmp_path / "bad-option.pcapng"
    path.write_bytes(b"".join(blocks))
    reqs, reports = read(path, decoder=decoder)
    assert [r.body for r in reqs] == [body_of(msg)]  # the packets are still read
    assert [(r.code, r.flow) for r in reports] == [("bad-timestamp-option", None)]
    assert reports[0].detail.startswith(f"pcapng section 1, interface 1: {what}")
    assert "the capture times of its packets (the replay's arrival times) may be wrong" in reports[0].detail


def test_the_replay_lists_a_malformed_pcapng_time_option_among_its_input_problems(tmp_path: Path) -> None:
    from gateway.replay import InputProblem, iter_inputs

    t = int(T0.timestamp())
    blocks = [_shb(), _raw_idb(_opt(14, b"\x01\x02") + _opt(0, b""))]
    blocks += [_epb(0, t * 10**6 + i, f) for i, f in enumerate(_frames_of_one_exchange(post(13)))]
    path = tmp_path / "bad-option.pcapng"
    path.write_bytes(b"".join(blocks))
    problems = [i for i in iter_inputs([path]) if isinstance(i, InputProblem)]
    assert [(p.code, p.detail.split(":")[0]) for p in problems] == [
        ("bad-timestamp-option", "pcapng section 1, interface 0")
    ]
