"""A framed channel between two processes of the gateway: :class:`Channel` (asyncio protocol).

Theory of operation: one ``socketpair`` end per side; a frame is a 4-byte big-endian length and a
pickled list of items. Everything one side sends during one event-loop iteration goes in one frame
(flushed by ``call_soon``), so under load one frame carries a batch. Both sides are non-blocking
asyncio transports: a full socket buffer never blocks an event loop. A frame that does not unpickle
closes the channel (the peer is broken); either side sees the other go away as ``connection_lost``.
Only processes of one gateway talk over it (pickle is not for untrusted peers).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

__all__ = ["Channel", "open_channel"]

log = logging.getLogger("duisgw.channel")

_HEADER = struct.Struct(">I")
_PICKLE = pickle.HIGHEST_PROTOCOL


class Channel(asyncio.Protocol):
    """One end of a worker's socketpair: frames of pickled lists, one frame per loop iteration."""

    def __init__(self, on_items: Callable[[list[Any]], None], on_lost: Callable[[], None]) -> None:
        self._on_items = on_items
        self._on_lost = on_lost
        self._buf = bytearray()
        self._out: list[Any] = []
        self._flush_soon = False
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        items: list[Any] = []
        pos, end = 0, len(buf)
        try:
            with memoryview(buf) as view:
                while end - pos >= 4:
                    (size,) = _HEADER.unpack_from(view, pos)
                    if end - pos - 4 < size:
                        break
                    items.extend(pickle.loads(view[pos + 4 : pos + 4 + size]))
                    pos += 4 + size
        except Exception:  # a frame that does not unpickle: the other side is broken
            log.exception("channel: unreadable frame; closing it")
            self.close()
            return
        if pos:
            del buf[:pos]
        if items:
            self._on_items(items)

    def send(self, item: Any) -> None:
        if self.closed:
            return
        self._out.append(item)
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        out, self._out = self._out, []
        if not out or self.closed or self.transport is None:
            return
        data = pickle.dumps(out, _PICKLE)
        # one write, so one send(2) per frame: two writes would send the 4-byte header on its own
        self.transport.writelines((_HEADER.pack(len(data)), data))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost()


async def open_channel(
    sock: socket.socket, on_items: Callable[[list[Any]], None], on_lost: Callable[[], None]
) -> Channel:
    sock.setblocking(False)
    _, proto = await asyncio.get_running_loop().create_connection(lambda: Channel(on_items, on_lost), sock=sock)
    return proto
