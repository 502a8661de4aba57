"""The framed channel between the gateway process and its workers (gateway.service.channel):
4-byte length + pickled list per frame, read whatever way the bytes are split."""

from __future__ import annotations

import asyncio
import itertools
import pickle
import socket
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.service.channel import Channel, open_channel


def frames(*batches: list[Any]) -> bytes:
    out = b""
    for batch in batches:
        data = pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)
        out += struct.pack(">I", len(data)) + data
    return out


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def reader() -> tuple[Channel, list[Any], list[str]]:
    got: list[Any] = []
    lost: list[str] = []
    ch = Channel(got.extend, lambda: lost.append("lost"))
    ch.connection_made(FakeTransport())
    return ch, got, lost


BATCHES = [[("accept", 1, "inline", None, b"<x/>" * 50)], [("count", "count_request", ("inline", 200))] * 3, []]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(frames(*BATCHES))), max_size=12))
def test_frames_split_anywhere_give_the_same_items_in_order(cuts: list[int]) -> None:
    stream = frames(*BATCHES)
    ch, got, lost = reader()
    bounds = [0, *sorted(cuts), len(stream)]
    for a, b in itertools.pairwise(bounds):
        if b > a:
            ch.data_received(stream[a:b])
    assert got == [item for batch in BATCHES for item in batch]
    assert lost == []
    assert ch._buf == bytearray()  # nothing left over once every frame is complete


def test_a_partial_frame_waits_for_the_rest() -> None:
    stream = frames(BATCHES[0])
    ch, got, _lost = reader()
    ch.data_received(stream[:3])  # not even the length
    ch.data_received(stream[3:-1])
    assert got == []
    ch.data_received(stream[-1:])
    assert got == BATCHES[0]


def test_an_unreadable_frame_closes_the_channel() -> None:
    ch, got, _lost = reader()
    ch.data_received(struct.pack(">I", 5) + b"nope!")
    assert got == []
    assert ch.transport is not None and ch.transport.closed  # type: ignore[attr-defined]


async def test_items_sent_in_one_loop_iteration_arrive_as_one_frame_and_closing_is_seen_by_the_peer() -> None:
    a_sock, b_sock = socket.socketpair()
    received: list[Any] = []
    calls: list[int] = []
    done = asyncio.Event()
    b_lost = asyncio.Event()

    def on_items(items: list[Any]) -> None:
        calls.append(len(items))
        received.extend(items)
        if len(received) == 100:
            done.set()

    a = await open_channel(a_sock, lambda items: None, lambda: None)
    await open_channel(b_sock, on_items, b_lost.set)
    for i in range(100):
        a.send(("n", i, b"x" * 3000))  # 300 kB: more than the socket buffer, never blocks the loop
    await asyncio.wait_for(done.wait(), 5)
    assert [item[1] for item in received] == list(range(100))
    assert calls == [100]  # one frame, however many reads it took
    a.close()
    await asyncio.wait_for(b_lost.wait(), 5)
    a.send(("late",))  # sending on a closed channel is a no-op, not an error


async def test_a_flushed_frame_reaches_the_transport_in_one_write() -> None:
    """One write per frame: asyncio sends it at once (one send(2)), header and pickle together."""
    ch = Channel(lambda items: None, lambda: None)
    transport = FakeTransport()
    ch.connection_made(transport)
    for item in BATCHES[0] + BATCHES[1]:
        ch.send(item)
    await asyncio.sleep(0)  # the flush runs in the next loop iteration
    assert transport.writes == [frames(BATCHES[0] + BATCHES[1])]
