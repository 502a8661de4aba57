"""IP fragment reassembly for the capture reader: sans-I/O (bytes and capture times in), bounded.

A datagram is keyed as its receiver keys it: IPv4 by (source, destination, protocol,
identification) (RFC 791), IPv6 by (source, destination, identification) (RFC 8200). Its
fragments are held until they cover it from offset 0 to the end given by its last fragment (the
one with More Fragments clear); the payload (what follows the IP header, or the IPv6 fragment
header) is then handed back whole, with the protocol (or IPv6 next header) of the fragment at
offset 0.

Overlaps: bytes that two fragments both carry are compared. The same bytes twice (a duplicated
fragment, a re-fragmented retransmission) change nothing, whatever the receiver does with
overlaps. Different bytes are a conflict: receivers differ (some keep the first copy, some the
last; Linux drops a datagram with overlapping fragments, and RFC 5722 requires IPv6 receivers to),
so which bytes the server read, if any, is unknown. Such a datagram is never reassembled: the
conflict is handed back (``problems``), its bytes are dropped, and fragments that still come for
it are absorbed until its timeout. A last fragment that disagrees with another on where the
datagram ends, or bytes beyond that end, are conflicts too.

Malformed fragments are refused (counted in ``malformed``), as receivers refuse them: a fragment
that is not the last with a length that is not a multiple of 8, an empty one, one reaching past
65,535 bytes.

Bounds: a datagram not complete ``timeout_ns`` of capture time after its first fragment came is
dropped (as the receiver's reassembly timer drops it); beyond ``max_datagrams`` held, or
``max_bytes`` of fragment data held, the oldest are dropped. Every datagram dropped incomplete is
counted (``incomplete``, ``incomplete_fragments``, and why: ``timed_out``, ``evicted``,
``at_end``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = ["Defragmenter", "FragmentConflict"]

MAX_DATAGRAM: Final = 65535


@dataclass(frozen=True, slots=True)
class FragmentConflict:
    """A datagram not reassembled because two of its fragments disagree.

    ``key``: the datagram's key as given to :meth:`Defragmenter.add`; ``proto``: the protocol of
    its fragment at offset 0 (-1 when that had not come); ``head``: its first bytes
    (the transport header's start) when the fragment at offset 0 had come, else ``b""``;
    ``offset``: the first byte the fragments disagree on; ``ts``: capture time of the fragment
    that showed it."""

    key: tuple[object, ...]
    proto: int
    head: bytes
    offset: int
    ts: int
    detail: str


class _Datagram:
    __slots__ = ("dead", "first_ts", "fragments", "head", "pieces", "proto", "size", "starts", "total")

    def __init__(self, ts: int) -> None:
        self.first_ts = ts
        self.starts: list[int] = []  # sorted starts of ``pieces`` (which do not overlap)
        self.pieces: list[bytes] = []
        self.size = 0  # bytes held
        self.total: int | None = None  # payload length, once the last fragment came
        self.fragments = 0
        self.proto = -1  # protocol / next header of the fragment at offset 0
        self.head = b""
        self.dead = False  # conflicting: absorbed until its timeout


class Defragmenter:
    """Reassembles fragmented IP datagrams, within bounds (see the module docstring)."""

    def __init__(
        self, *, timeout_ns: int = 30 * 1_000_000_000, max_datagrams: int = 4096, max_bytes: int = 4 << 20
    ) -> None:
        self.timeout_ns = timeout_ns
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self._table: OrderedDict[tuple[object, ...], _Datagram] = OrderedDict()
        self.held_bytes = 0
        self.problems: list[FragmentConflict] = []  # drained by the caller
        self.reassembled = 0
        self.malformed = 0
        self.conflicts = 0
        self.incomplete = 0
        self.incomplete_fragments = 0
        self.timed_out = 0
        self.evicted = 0
        self.at_end = 0

    def __len__(self) -> int:
        return len(self._table)

    def add(
        self, key: tuple[object, ...], offset: int, more: bool, data: bytes, proto: int, ts: int
    ) -> tuple[int, bytes] | None:
        """One fragment: ``offset`` in bytes, ``more`` its More Fragments flag, ``data`` what it
        carries, ``proto`` its protocol (IPv6: its fragment header's next header). Returns
        ``(proto, payload)`` when it completes its datagram, else None."""
        end = offset + len(data)
        if (more and (not data or len(data) % 8)) or end > MAX_DATAGRAM or (not data and offset):
            self.malformed += 1
            return None
        table = self._table
        dg = table.get(key)
        if dg is not None and ts - dg.first_ts > self.timeout_ns:
            self._drop(key, dg, "timed_out")
            dg = None
        if dg is None:
            if not offset and not more:  # the whole datagram in one (IPv6 atomic fragment)
                self.reassembled += 1
                return (proto, data)
            dg = _Datagram(ts)
            table[key] = dg
        dg.fragments += 1
        if dg.dead:
            return None
        if not more:
            if dg.total is not None and dg.total != end:
                self._conflict(key, dg, min(dg.total, end), ts, "two last fragments end at different offsets")
                return None
            if dg.starts and dg.starts[-1] + len(dg.pieces[-1]) > end:
                self._conflict(key, dg, end, ts, "a fragment carries bytes beyond the last fragment's end")
                return None
            dg.total = end
        elif dg.total is not None and end > dg.total:
            self._conflict(key, dg, dg.total, ts, "a fragment carries bytes beyond the last fragment's end")
            return None
        if not offset:
            dg.proto = proto
            dg.head = data[:8]
        # Compare with what is held; keep only the bytes not held yet.
        starts, pieces = dg.starts, dg.pieces
        i = max(0, bisect_right(starts, offset) - 1)
        pos = offset
        new: list[tuple[int, bytes]] = []
        while i < len(starts) and starts[i] < end:
            ps = starts[i]
            pd = pieces[i]
            pe = ps + len(pd)
            i += 1
            if pe <= pos:
                continue
            if ps > pos:
                new.append((pos, data[pos - offset : ps - offset]))
            lo, hi = max(ps, pos), min(pe, end)
            if pd[lo - ps : hi - ps] != data[lo - offset : hi - offset]:
                at = lo + next(k for k in range(hi - lo) if pd[lo - ps + k] != data[lo - offset + k])
                self._conflict(key, dg, at, ts, "overlapping fragments carry different bytes")
                return None
            pos = hi
        if pos < end:
            new.append((pos, data[pos - offset :]))
        for s, b in new:
            j = bisect_right(starts, s)
            starts.insert(j, s)
            pieces.insert(j, b)
            dg.size += len(b)
            self.held_bytes += len(b)
        if dg.total is not None and dg.size == dg.total:
            del table[key]
            self.held_bytes -= dg.size
            self.reassembled += 1
            return (dg.proto, b"".join(pieces))
        self._bound(key)
        return None

    def expire(self, ts: int) -> None:
        """Drop the datagrams whose reassembly time is over at capture time ``ts``."""
        table = self._table
        limit = ts - self.timeout_ns
        while table:
            key, dg = next(iter(table.items()))
            if dg.first_ts >= limit:
                break
            self._drop(key, dg, "timed_out")

    def close(self) -> None:
        """End of the capture: what is still held never completed."""
        for key, dg in list(self._table.items()):
            self._drop(key, dg, "at_end")

    # -- internals ------------------------------------------------------------------------------
    def _conflict(self, key: tuple[object, ...], dg: _Datagram, at: int, ts: int, why: str) -> None:
        self.conflicts += 1
        self.problems.append(
            FragmentConflict(key, dg.proto, dg.head, at, ts, f"{why} (datagram offset {at})")
        )
        dg.dead = True
        self.held_bytes -= dg.size
        dg.size = 0
        dg.starts = []
        dg.pieces = []

    def _drop(self, key: tuple[object, ...], dg: _Datagram, why: str) -> None:
        del self._table[key]
        self.held_bytes -= dg.size
        if dg.dead:  # reported as a conflict already
            return
        self.incomplete += 1
        self.incomplete_fragments += dg.fragments
        if why == "timed_out":
            self.timed_out += 1
        elif why == "evicted":
            self.evicted += 1
        else:
            self.at_end += 1

    def _bound(self, keep: tuple[object, ...]) -> None:
        table = self._table
        while (len(table) > self.max_datagrams or self.held_bytes > self.max_bytes) and len(table) > 1:
            old = next(k for k in table if k != keep)  # the one just added to is kept
            self._drop(old, table[old], "evicted")
