"""TCP reassembly of one direction of a connection (sans-I/O).

Theory of operation
-------------------
:class:`TcpStream` turns the segments of one direction, in capture order, into the byte stream
the receiver saw, and hands it to a :class:`StreamSink` (the HTTP parser side of the reader):
``on_data(bytes, ts)`` for bytes in order, ``on_gap(length, ts)`` when bytes are known to be
missing, ``on_conflict(offset, ts)`` when the bytes from ``offset`` on are ambiguous (below),
``on_end(ts)`` once. Time is the capture time (integer ns) passed in; nothing here reads a clock
or a file.

Sequence numbers are turned into 64-bit stream offsets relative to the first data byte (ISN+1
when the SYN was seen, else the first segment's sequence number -- a midstream pick-up). A
segment's offset is unwrapped against the next expected offset (``_unwrap``), so 32-bit
wrap-around and streams over 4 GiB need nothing special.

Per segment, with ``next`` the next offset the sink expects:

    end <= next           old retransmission: compared with the delivered bytes still held
    off <= next < end     in order (possibly overlapping): the new part goes to the sink, the
                          overlapping part is compared, then held segments that now fit drain
    off > next            out of order: held in ``_pending`` (compared with a copy already held)

Held bytes are bounded by ``max_pending``: when exceeded, or at the end of the stream (FIN
reached, RST, eviction, end of capture), the hole before the lowest held segment is declared
a gap (``on_gap``) and delivery resumes after it. A FIN marks where the stream ends; the stream
ends cleanly when every byte before it has been delivered. ``discard()`` stops buffering (used
once the sink can no longer use the bytes, e.g. after a gap made the rest untrustworthy).

A segment the capture cut short (snap length) comes with ``cut``, the number of its bytes not
captured: they occupy sequence space like any other, so the FIN is placed where the whole
segment ends and, unless another copy brings them, they are a gap when the stream ends
(``_hi``: the end of the furthest cut segment).

Two copies of the same bytes that differ (overlapping segments, a retransmission) leave the
receiver's view unknown: its TCP may have kept either, or got only the one the capture missed.
``ack(seq)`` gives the acknowledgement numbers of the other direction: once the receiver has
acknowledged bytes it has its copy, and a later different copy is discarded by it. So a
difference in bytes already acknowledged is only counted (``conflicts_acked``: the first copy,
the one used, is the receiver's); a difference in bytes not yet acknowledged is a conflict:
``on_conflict(offset)`` with the first differing offset, at once when the sink has had those
bytes, else when delivery reaches them (the bytes before it are delivered first). The stream
goes on; what the bytes from ``offset`` on mean is for the sink to refuse. Bytes beyond a FIN's
place, a FIN placed before bytes already seen and a second FIN elsewhere are conflicts at the
FIN's place too (``_fin_conflict``): the receiver took the FIN or the bytes, whichever it got first.

For the comparison the stream keeps references (no copies) to delivered chunks: those not yet
acknowledged, up to ``max_pending`` bytes, when the other direction acknowledges at all (the
receiver's packets are in the capture); else the last ``_RECENT`` chunks. A retransmission of
bytes no longer held is dropped unchecked.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Protocol

__all__ = ["StreamSink", "TcpStream", "seq_diff"]

_MASK: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000
_RECENT: Final = 16


def seq_diff(a: int, b: int) -> int:
    """Signed 32-bit difference ``a - b`` in sequence space (RFC 1982 style)."""
    d = (a - b) & _MASK
    return d - 0x100000000 if d >= _HALF else d


class StreamSink(Protocol):
    def on_data(self, data: bytes, ts: int) -> None: ...

    def on_gap(self, length: int, ts: int) -> None: ...

    def on_conflict(self, offset: int, ts: int) -> None: ...

    def on_end(self, ts: int) -> None: ...


def _first_difference(a: bytes, b: bytes) -> int:
    """Index of the first byte where ``a`` and ``b`` (same length, known to differ) differ."""
    lo, hi = 0, len(a)
    while hi - lo > 64:  # bisect on slices (C comparisons), then scan the last few bytes
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return hi  # pragma: no cover - only called when they differ


class TcpStream:
    """One direction of a TCP connection being reassembled (see the module docstring)."""

    __slots__ = (
        "_base",
        "_discard",
        "_fin_at",
        "_fin_bad",
        "_hi",
        "_pending",
        "_poison_at",
        "_recent",
        "ack_seq",
        "acked",
        "conflict_at",
        "conflicts",
        "conflicts_acked",
        "delivered",
        "ended",
        "gap_bytes",
        "gaps",
        "max_pending",
        "midstream",
        "next",
        "peer_acks",
        "pending_bytes",
        "retransmitted",
        "sink",
        "syn_seen",
    )

    def __init__(self, sink: StreamSink, *, max_pending: int = 1 << 20) -> None:
        self.sink = sink
        self.max_pending = max_pending
        self._base: int | None = None  # sequence number of stream offset 0
        self.next = 0  # next offset the sink expects
        self._pending: dict[int, tuple[bytes, int]] = {}
        self.pending_bytes = 0
        self._fin_at: int | None = None
        self._fin_bad = False  # a FIN conflict has been signalled
        self._hi = 0  # end offset of the furthest segment cut by the snap length (cut bytes included)
        # delivered chunks kept for comparison, (end offset, bytes), contiguous and in order
        self._recent: deque[tuple[int, bytes]] = deque()
        self._poison_at: int | None = None  # a conflict in bytes held, not yet delivered
        self._discard = False
        self.acked = 0  # stream offset up to which the receiver has acknowledged
        self.ack_seq = -1  # the last acknowledgement number applied (callers skip repeats)
        self.peer_acks = False  # an acknowledgement of this stream has been seen
        self.syn_seen = False
        self.midstream = False
        self.ended = False
        self.delivered = 0
        self.retransmitted = 0
        self.conflicts = 0  # differences in bytes not yet acknowledged (sent to on_conflict)
        self.conflict_at: int | None = None
        self.conflicts_acked = 0  # differences in bytes the receiver had acknowledged
        self.gaps = 0
        self.gap_bytes = 0

    @property
    def base(self) -> int | None:
        """Sequence number of stream offset 0 (None before the first SYN or data)."""
        return self._base

    # -- inputs -------------------------------------------------------------------------------
    def syn(self, seq: int) -> None:
        """A SYN (or SYN/ACK) from this side with sequence number ``seq``."""
        if self._base is None:
            self._base = (seq + 1) & _MASK
            self.syn_seen = True

    def ack(self, seq: int) -> None:
        """The receiver acknowledged everything before sequence number ``seq``."""
        base = self._base
        if base is None or self.ended:
            return
        self.ack_seq = seq
        self.peer_acks = True
        nxt = self.next
        d = ((seq - base) - nxt) & _MASK  # _unwrap, inline: this runs for most packets
        off = nxt + (d - 0x100000000 if d >= _HALF else d)
        if off <= self.acked:
            return
        self.acked = off
        recent = self._recent
        while recent and recent[0][0] <= off:
            recent.popleft()

    def segment(self, seq: int, data: bytes, fin: bool, ts: int, cut: int = 0) -> None:
        """A segment from this side: sequence number, payload (may be empty), FIN flag; ``cut``:
        bytes of its payload after ``data`` that are not in the capture (snap length)."""
        if self.ended:
            return
        if self._base is None:
            if not data and not fin and not cut:
                return
            self._base = seq
            self.midstream = True
        off = self._unwrap(seq)
        if cut or fin:
            end = off + len(data) + cut
            if cut and end > self._hi:
                self._hi = end
            if fin and end != self._fin_at:
                self._fin(end, ts)
        if data:
            if self._fin_at is not None and off + len(data) > self._fin_at:
                self._fin_conflict(self._fin_at, ts)  # bytes beyond the FIN's place
            if self._discard:
                self.next = max(self.next, off + len(data))
            else:
                self._data(off, data, ts)
        if self._fin_at is not None and self.next >= self._fin_at and not self._pending:
            self._finish(ts)

    def _fin(self, end: int, ts: int) -> None:
        """A FIN placed at stream offset ``end`` (the first one, or one elsewhere than before)."""
        if self._fin_at is None:
            seen = max(self.next, self._hi, *(o + len(d) for o, (d, _) in self._pending.items()))
            if end >= seen:
                self._fin_at = end
                return
        self._fin_conflict(end, ts)  # before bytes already seen, or a second FIN elsewhere

    def _fin_conflict(self, at: int, ts: int) -> None:
        """Bytes beyond a FIN's place: the receiver took the FIN or the bytes, whichever came
        first to it. From ``at`` on the stream is ambiguous, unless the receiver acknowledged
        past it (it took the bytes: the FIN is ignored)."""
        if at < self.acked:
            self.conflicts_acked += 1
            if self._fin_at is not None and self._fin_at < self.acked:
                self._fin_at = None
            return
        self._fin_at = at if self._fin_at is None else min(at, self._fin_at)
        self._conflict(at)
        if self._fin_bad:
            return
        self._fin_bad = True
        if at < self.next:
            self.sink.on_conflict(at, ts)
        elif self._poison_at is None or at < self._poison_at:
            self._poison_at = at

    def reset_acceptable(self, seq: int) -> bool:
        """Whether the receiver's TCP takes an RST from this side with sequence number ``seq``
        (RFC 5961 3.2, as Linux does): only at the next sequence number it expects, or one less
        after this side's FIN. Elsewhere in its window it answers with a challenge ACK, outside
        it it drops the RST: the connection goes on either way. The capture may have missed
        bytes the receiver got, so any place from the next byte delivered here to the end of the
        furthest byte seen (the FIN's sequence number included) counts as the next expected one.
        A side of which nothing is known yet (no SYN, no data) is not checked."""
        if self._base is None:
            return True
        off = self._unwrap(seq)
        if off < self.next:
            return False
        end = max(self.next, self._hi)
        for o, (d, _) in self._pending.items():
            end = max(end, o + len(d))
        if self._fin_at is not None:
            end = max(end, self._fin_at + 1)
        return off <= end

    def close(self, ts: int) -> None:
        """The stream will get nothing more (RST, eviction, end of capture): flush and end."""
        if self.ended:
            return
        while self._pending:
            self._skip_gap(ts)
        end = self._hi if self._fin_at is None else self._fin_at  # (bytes held are drained above)
        if self.next < end and not self._discard:
            self._gap(end - self.next, ts)
            self.next = end
        self._finish(ts)

    def discard(self) -> None:
        """Stop buffering: the sink has no more use for the bytes."""
        self._discard = True
        self._pending.clear()
        self.pending_bytes = 0
        self._recent.clear()
        self._poison_at = None

    # -- internals ----------------------------------------------------------------------------
    def _unwrap(self, seq: int) -> int:
        assert self._base is not None
        rel = (seq - self._base) & _MASK
        return self.next + seq_diff(rel, self.next & _MASK)

    def _data(self, off: int, data: bytes, ts: int) -> None:
        nxt = self.next
        end = off + len(data)
        if end <= nxt:
            self.retransmitted += 1
            self._compare(off, data, ts)
            return
        if off > nxt:
            self._hold(off, data, ts)
            return
        if off < nxt:
            self.retransmitted += 1
            self._compare(off, data[: nxt - off], ts)
            data = data[nxt - off :]
        self._deliver(data, ts)
        if self._pending:
            self._drain(ts)

    def _deliver(self, data: bytes, ts: int) -> None:
        n = len(data)
        if self._poison_at is not None and self.next + n > self._poison_at:
            self._deliver_poisoned(data, ts)
            return
        end = self.next + n
        recent = self._recent
        recent.append((end, data))
        if len(recent) > _RECENT and (
            not self.peer_acks or end - recent[0][0] + len(recent[0][1]) > self.max_pending
        ):
            recent.popleft()
        self.next = end
        self.delivered += n
        self.sink.on_data(data, ts)

    def _deliver_poisoned(self, data: bytes, ts: int) -> None:
        """A conflict in bytes held until now: deliver up to it, tell the sink, go on."""
        poison = self._poison_at
        assert poison is not None
        self._poison_at = None
        head = poison - self.next
        if head > 0:
            self._deliver(data[:head], ts)
            data = data[head:]
        self.sink.on_conflict(poison, ts)
        if self._discard:
            self.next += len(data)
        elif data:
            self._deliver(data, ts)

    def _hold(self, off: int, data: bytes, ts: int) -> None:
        pending = self._pending
        while data:
            have = pending.get(off)
            if have is None:
                pending[off] = (data, ts)
                self.pending_bytes += len(data)
                break
            held = have[0]
            n = min(len(held), len(data))
            self.retransmitted += 1
            if held[:n] != data[:n]:
                at = off + _first_difference(held[:n], data[:n])
                if at < self.acked:
                    self.conflicts_acked += 1  # the receiver had its copy
                else:
                    self._conflict(at)
                    if self._poison_at is None or at < self._poison_at:
                        self._poison_at = at
            off += n
            data = data[n:]
        while self.pending_bytes > self.max_pending and self._pending:
            self._skip_gap(ts)

    def _drain(self, ts: int) -> None:
        pending = self._pending
        while pending and not self._discard:
            nxt = self.next
            item = pending.pop(nxt, None)
            if item is not None:
                self.pending_bytes -= len(item[0])
                self._deliver(item[0], ts)
                continue
            low = min(pending)
            if low > nxt:
                return
            data, _ = pending.pop(low)
            self.pending_bytes -= len(data)
            end = low + len(data)
            self.retransmitted += 1
            if end <= nxt:
                self._compare(low, data, ts)
                continue
            self._compare(low, data[: nxt - low], ts)
            self._deliver(data[nxt - low :], ts)

    def _skip_gap(self, ts: int) -> None:
        low = min(self._pending)
        if low > self.next:
            self._gap(low - self.next, ts)
            self.next = low
        self._drain(ts)
        if self._discard:
            self._pending.clear()
            self.pending_bytes = 0

    def _gap(self, length: int, ts: int) -> None:
        self.gaps += 1
        self.gap_bytes += length
        self._recent.clear()
        self.sink.on_gap(length, ts)

    def _compare(self, off: int, data: bytes, ts: int) -> None:
        """``data`` is another copy of delivered bytes from ``off``: compare with those held."""
        end = off + len(data)
        acked = self.acked
        first: int | None = None  # first difference in bytes not yet acknowledged
        for r_end, r_data in self._recent:
            r_off = r_end - len(r_data)
            lo = max(off, r_off)
            hi = min(end, r_end)
            if lo >= hi:
                continue
            a, b = data[lo - off : hi - off], r_data[lo - r_off : hi - r_off]
            if a == b:
                continue
            at = lo + _first_difference(a, b)
            if at < acked:
                self.conflicts_acked += 1  # the receiver had its copy (the one used)
                split = acked - lo
                if split >= hi - lo or a[split:] == b[split:]:
                    continue
                at = acked + _first_difference(a[split:], b[split:])
            if first is None or at < first:
                first = at
        if first is not None:
            self._conflict(first)
            self.sink.on_conflict(first, ts)

    def _conflict(self, off: int) -> None:
        self.conflicts += 1
        if self.conflict_at is None or off < self.conflict_at:
            self.conflict_at = off

    def _finish(self, ts: int) -> None:
        if self._poison_at is not None and self._poison_at <= self.next:
            self.sink.on_conflict(self._poison_at, ts)  # at the very end: nothing crossed it
        self.ended = True
        self._pending.clear()
        self.pending_bytes = 0
        self._recent.clear()
        self._poison_at = None
        self.sink.on_end(ts)
