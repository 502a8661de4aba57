"""Offline driver: replay recorded DUIS traffic through the same classifier and engine as the gateway.

Theory of operation
===================

Inputs become a stream of :class:`InputMessage` (arrival time, lane, bytes) in arrival order:

* a JSONL event script — one object a line, ``{"time": ISO-8601 arrival, "lane": "inline"|"observe",
  "file": path relative to the script}`` or ``"xml"`` with the document inline; every line is checked
  (UTF-8, JSON, lane, time, its file there) before the first message is read;
* a directory of DUIS files (``*.xml``; any other entry is named as a skipped input, ``not-xml-file``)
  — arrival order is file-name order, the arrival time is each message's own timestamp
  (``ResponseDateTime``; a request, which has none, takes the previous message's time, and those before
  the first message with a time take that message's), and the lane follows the message: device and DCC
  alerts are DNO-bound (``inline``), everything else is observed;
* a pcap/pcapng capture, or one gzipped (``.pcap.gz``, ``.pcapng.gz``, ``.cap.gz``, a rotated file's ``cap.pcap1.gz``,
  or any name, told by the gzip magic and the capture's magic inside it: :func:`_kind`), read through gzip as it is
  decompressed and decided exactly as the same file uncompressed (a gzip stream cut short or damaged ends the file
  there: what it held before is read, and a ``truncated-file`` problem names what went wrong) — HTTP requests to
  ``/duis/dno/{user}`` (inline) and ``/duis/observe``,
  at the capture's timestamps, in the order the gateway acknowledged them (:mod:`gateway.capture.reader`),
  or in arrival-time order when the capture's packets are not in time order (:func:`_time_ordered`),
  each as soon as the reader has it (a capture is not read whole first); a request on the inline lane
  that the gateway's HTTP ingress refuses (its body size, Content-Encoding, Content-Type, or a body that
  is not DUIS) is a skipped input that still gets its ``reject`` line; one capture file that is being
  written is read as it grows (:func:`follow_capture`, ``duisgw replay --follow``: not a gzipped one, whose end
  is written last), and so are the files of a capture its writer rotates (``--follow --rotated``), including
  those it compresses once finished (``tcpdump -z gzip``: ``NAME1`` read as ``NAME1.gz`` once it is that,
  :mod:`gateway.capture.rotation`).

Several inputs given together are merged by arrival time (a stable merge: each input keeps its own
order, and inputs tie in the order given), so that the result does not depend on the order of the
command line. The captures among them (gzipped or not, in any mix) are read as one capture, their packets merged
by capture time: a capture rotated into several files (``tcpdump -C``/``-G``, a dumpcap ring buffer) has connections that
go on from one file into the next, and each is reassembled as one connection. Every input is opened,
and its first item read, before the first message is decided:
an unusable one (missing, of an unknown type, not a capture, a bad script line) stops the run before
it starts.

:class:`ReplayRun` feeds each message to the :class:`gateway.pipeline.Classifier` and the resulting
events to a :class:`gateway.store.durable.DurableEngine` in event time (a ``Tick`` at each arrival
releases holds whose limit has passed; a final tick past the hold limit flushes the rest), and emits one
JSON object per inline message when it is finally decided — so a held message gets its line later.
Messages are classified one by one and handed to the engine in batches committed as one transaction
(group commit); a tick is added whenever event time has advanced by ``tick_every``.
With a persistent ``--state`` store a killed replay can be re-run on the same input: the messages it
had already decided come back as duplicates carrying their original decision.
"""

from __future__ import annotations

import heapq
import itertools
import json
import pickle
import re
import tempfile
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from gateway.duis.decode import decode
from gateway.duis.model import DCCAlertMessage, DeviceAlertMessage, Response
from gateway.engine.effects import Action, Decision, Duplicate, Effect
from gateway.engine.events import (
    ActivationRequested,
    ActivationResponse,
    FutureDatedOutcome,
    OtherInline,
    PowerOutage,
    SupplyRestored,
    Tick,
)
from gateway.errors import DuisgwError
from gateway.pipeline import (
    Classified,
    Classifier,
    ClassifierSpec,
    LaneName,
    WorkerFailure,
    classify_chunk,
    init_worker,
)
from gateway.report.html import DecisionRow, Mark, ReportData, VerifyFailure, Window
from gateway.store.durable import DurableEngine
from gbcs.eui import format_eui

if TYPE_CHECKING:
    from gateway.capture.reader import CaptureReader, Follow
    from gateway.capture.rotation import Rotation
    from gateway.capture.timescan import Ahead

__all__ = [
    "ClassifierSpec",
    "IngressLimits",
    "InputError",
    "InputMessage",
    "ReplayRun",
    "classify_in_workers",
    "follow_capture",
    "iter_inputs",
]


class InputError(DuisgwError):
    """A replay input that cannot be used (missing file, bad script line)."""

    code = "bad-input"


@dataclass(frozen=True, slots=True)
class InputMessage:
    time: datetime
    lane: LaneName
    body: bytes
    source: str
    #: the ``{user}`` of the inline lane it was captured on (None: not known, as in a script or a directory)
    user: str | None = None
    #: the Content-Type it was captured with (None: not known)
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class InputProblem:
    """Part of an input that was skipped (reported, never fatal): a damaged capture flow, a request the
    gateway's HTTP ingress refuses, a file of a directory that is not read. ``lane`` is ``"inline"`` for
    a DNO-bound request the gateway refuses (it gets a ``reject`` line), at ``time``."""

    source: str
    code: str
    detail: str
    lane: LaneName | None = None
    time: datetime | None = None
    #: DUIS requests of a capture lost to damage the gateway did not see (a ``gap``: segments the capture
    #: missed; the requests after it on the connection; an ``overlap-conflict``): each gets a ``lost`` line.
    #: ``lane`` is then the lost request's lane when its head was read (None: not known)
    lost: int = 0
    first_byte_time: datetime | None = None
    bytes_seen: int = 0


def _later(t: datetime, by: timedelta) -> datetime:
    """``t + by``, or the calendar's last instant when that is past it (an input timed at the calendar's end:
    the engine decides it, ``time-out-of-range``, and ignores a tick it cannot compute with)."""
    try:
        return t + by
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def _parse_time(text: str, where: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{where}: bad time {text!r}: {exc}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _script_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The numbered lines of a script that carry an entry (not blank, not a ``#`` comment)."""
    try:
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"{path.name}:{n}: not UTF-8 (byte {exc.start + 1} of the line)"
                    ) from None
                line = line.strip().lstrip("\ufeff") if n == 1 else line.strip()
                if line and not line.startswith("#"):
                    yield n, line
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _script_entry(path: Path, n: int, line: str) -> tuple[datetime, LaneName, str | Path]:
    """One script line: arrival, lane, and the document inline (``str``) or the file holding it."""
    where = f"{path.name}:{n}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: each line must be a JSON object")
    lane = obj.get("lane")
    if lane not in ("inline", "observe"):
        raise InputError(f"{where}: lane must be 'inline' or 'observe', got {lane!r}")
    when = _parse_time(str(obj.get("time")), where)
    if "xml" in obj:
        if not isinstance(obj["xml"], str):
            raise InputError(f"{where}: 'xml' must be a string, got {type(obj['xml']).__name__}")
        return when, lane, obj["xml"]
    if "file" in obj:
        if not isinstance(obj["file"], str):
            raise InputError(f"{where}: 'file' must be a string, got {type(obj['file']).__name__}")
        return when, lane, path.parent / obj["file"]
    raise InputError(f"{where}: needs 'file' or 'xml'")


def _read_script_file(fpath: Path, where: str) -> bytes:
    try:
        return fpath.read_bytes()
    except OSError as exc:
        raise InputError(f"{where}: cannot read {fpath}: {exc.strerror or exc}") from None


def _iter_script(path: Path) -> Iterator[InputMessage | InputProblem]:
    # every line is checked before the first message is yielded: a bad line stops the run before any
    # message is decided, not after the lines before it were (and with the messages held then never given
    # their lines)
    for n, line in _script_lines(path):
        _when, _lane, what = _script_entry(path, n, line)
        if isinstance(what, Path) and not what.is_file():
            _read_script_file(what, f"{path.name}:{n}")  # raises with the reason
    for n, line in _script_lines(path):
        when, lane, what = _script_entry(path, n, line)
        where = f"{path.name}:{n}"
        body = what.encode("utf-8") if isinstance(what, str) else _read_script_file(what, where)
        yield InputMessage(when, lane, body, where)


def _directory_message(body: bytes) -> tuple[LaneName, datetime | None]:
    """The lane of a directory's DUIS file and its own time (None for a request, which has none, and for
    a file that does not decode: kept on the inline lane, where the classifier rejects it with its reason)."""
    try:
        doc = decode(body)
    except DuisgwError:
        return "inline", None
    if isinstance(doc, Response):
        lane: LaneName = "inline" if isinstance(doc.body, DCCAlertMessage | DeviceAlertMessage) else "observe"
        return lane, doc.header.response_datetime
    return "observe", None


def _read_directory_file(f: Path) -> bytes:
    try:
        return f.read_bytes()
    except OSError as exc:
        raise InputError(f"{f}: cannot read: {exc.strerror or exc}") from None


def _iter_directory(path: Path) -> Iterator[InputMessage | InputProblem]:
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    files: list[Path] = []
    for p in entries:
        if p.is_file() and p.suffix.lower() == ".xml":
            files.append(p)
        else:
            what = "a directory" if p.is_dir() else "a file"
            yield InputProblem(
                p.name, "not-xml-file", f"{what} not read: only the *.xml files of {path} are read"
            )
    last: datetime | None = None
    # the files before the first message with a time of its own (requests, files that do not decode):
    # they take that message's time, as those after it take the time of the message before them
    waiting: list[tuple[Path, LaneName]] = []
    for f in files:
        body = _read_directory_file(f)
        lane, own = _directory_message(body)
        if own is not None:
            last = own
        if last is None:
            waiting.append((f, lane))
            continue
        for w, wlane in waiting:
            yield InputMessage(last, wlane, _read_directory_file(w), w.name)
        waiting.clear()
        yield InputMessage(last, lane, body, f.name)
    for w, wlane in waiting:  # no message with a time at all: the file's own (modification) time
        try:
            mtime = datetime.fromtimestamp(w.stat().st_mtime, UTC)
        except OSError as exc:
            raise InputError(f"{w}: cannot read: {exc.strerror or exc}") from None
        yield InputMessage(mtime, wlane, _read_directory_file(w), w.name)


@dataclass(frozen=True, slots=True)
class IngressLimits:
    """What the gateway's HTTP ingress accepts (its ``[server]`` settings), so that a capture is
    read as the gateway read it: a larger body (413) or another Content-Type (415) is refused."""

    max_body_bytes: int = 1 << 20
    content_types: tuple[str, ...] = ("application/xml",)


#: bytes of held capture items (their bodies) kept in memory before the rest goes to temporary files
SPOOL_MEMORY = 16 << 20
#: bytes written to one temporary spool file before the next is started (each is deleted once every item
#: it holds has been replayed)
SPOOL_FILE = 64 << 20


class _SpoolFile:
    __slots__ = ("file", "live", "written")

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix="duisgw-replay-")  # noqa: SIM115 - closed by _Spool
        self.live = 0  # items in it not taken back yet
        self.written = 0


_IN_MEMORY = -1
_TAKEN = -2
_AT_BITS = 40  # a spilled item's place: (file number << _AT_BITS) | offset in that file
_AT_MASK = (1 << _AT_BITS) - 1


class _Spool:
    """Items held, numbered 0, 1, 2 ... as they are added, in memory up to ``memory`` bytes of bodies, the
    others pickled to temporary files; taken back in any order. A file is deleted once every item in it
    has been taken back, so what is held on disk follows what is held, not what went through; and what
    is kept per item is 8 bytes (its place), for the items between the oldest one still held and the last."""

    def __init__(self, memory: int, file_size: int = SPOOL_FILE) -> None:
        self.memory = memory
        self.file_size = max(memory, file_size)  # bytes written to a file before the next is started
        self.size = 0  # bytes of the bodies held in memory
        self.held: dict[int, InputMessage | InputProblem] = {}
        self.where = array("q")  # per item from number ``base`` on: its place, _IN_MEMORY or _TAKEN
        self.base = 0
        self.taken = 0  # items taken since the front of ``where`` was last trimmed
        self.files: dict[int, _SpoolFile] = {}
        self.current = -1  # the number of the file written to

    def add(self, n: int, item: InputMessage | InputProblem) -> None:
        assert n == self.base + len(self.where), "items are numbered as they are added"
        if self.size < self.memory:
            self.held[n] = item
            self.size += _spool_size(item)
            self.where.append(_IN_MEMORY)
            return
        cur = self.files.get(self.current)
        if cur is None or cur.written >= self.file_size:
            self.current += 1
            cur = self.files[self.current] = _SpoolFile()
        at = cur.written
        cur.file.seek(at)
        pickle.dump(item, cur.file, protocol=pickle.HIGHEST_PROTOCOL)
        cur.written = cur.file.tell()
        cur.live += 1
        self.where.append((self.current << _AT_BITS) | at)

    def take(self, n: int) -> InputMessage | InputProblem:
        where = self.where
        place = where[n - self.base]
        where[n - self.base] = _TAKEN
        if place == _IN_MEMORY:
            item = self.held.pop(n)
            self.size -= _spool_size(item)
        else:
            number = place >> _AT_BITS
            f = self.files[number]
            f.file.seek(place & _AT_MASK)
            item = cast(InputMessage | InputProblem, pickle.load(f.file))
            f.live -= 1
            if not f.live:
                if number == self.current:  # empty: written again from its start
                    f.written = 0
                    f.file.truncate(0)
                else:
                    f.file.close()
                    del self.files[number]
        self.taken += 1
        if self.taken >= 4096:  # forget the places of the oldest items, once all taken
            self.taken = 0
            k = 0
            while k < len(where) and where[k] == _TAKEN:
                k += 1
            if k:
                del where[:k]
                self.base += k
        return item

    def close(self) -> None:
        for f in self.files.values():
            f.file.close()
        self.files = {}
        self.held = {}
        self.where = array("q")


def _spool_size(item: InputMessage | InputProblem) -> int:
    return len(item.body) if isinstance(item, InputMessage) else len(item.detail)


def _time_ordered(
    items: Iterator[InputMessage | InputProblem | None],
    source: str,
    memory: int = SPOOL_MEMORY,
    window: timedelta | None = None,
) -> Iterator[InputMessage | InputProblem | None]:
    """A capture's items in arrival-time order when the file's packets are not in time order (merged
    captures, several interfaces, a clock step), else in reading order; each given out as soon as its
    place is known.

    The engine decides in event time: the gateway clock follows the arrival times (holds released, a
    message too far ahead refused), and whether evidence came before an alert is the order of arrival. A
    capture replayed in file order gives it arrivals going back, the evidence of one interface after the
    alerts of another. ``window``: how far the capture's packet times go back at most (the largest step
    back from the latest time before a packet), found by a pass over the capture's record headers
    (:mod:`gateway.capture.timescan`) that walks the whole capture before the first item
    (:func:`_capture_window`: I/O only, 0.45 s for 230 MB), so that the order is the whole file's; for a file
    being written (``--follow``), whose end is not there yet, that pass is walked :data:`SCAN_AHEAD` bytes
    ahead of the reader, and the window is the largest step back it has found so far. None (and no capture):
    not known.

    * 0 (the packets are in time order, as far as the pass has gone): each item is given out as it is read,
      in the reader's order (the order in which the gateway acknowledged the requests);
    * more: the items are held and given out stably sorted by arrival time (the reader's order for equal
      times; a skipped input without a time of its own after the message before it), each once no item
      still to come can be earlier: once the reader is ``window`` past it and no complete request it holds
      (waiting for the server's acknowledgement) is earlier. A capture whose times go back by a little
      (interfaces whose clocks or buffers differ) is held for that little; one that goes back by hours (two
      captures concatenated in the wrong order) is held, in effect, whole;
    * not known (the pass could not walk the file as the reader reads it): the rest of the capture is held,
      then replayed sorted when its packets went back (a ``time-backwards`` report) and some request came
      after a later one, else in the reader's order.

    Should the reader's packets go back further than ``window`` after all (a followed file: further than the
    pass had found :data:`SCAN_AHEAD` bytes ahead, by more than the capture time those bytes cover), the
    window grows to it, and a request that comes after a later one was given out stays after it. Held items
    are kept in a spool (``memory`` bytes of bodies in memory, the rest in temporary files), so memory does
    not grow with what is held. A ``reordered`` notice comes after the capture's items when some requests
    came in the file after a later one: how many, and by how much at most (and how many came after a later
    one had been given out).

    A ``None`` among ``items`` (a followed capture read to the end written so far) is passed on, after the
    items whose place is known by then."""
    reader: CaptureReader | None = getattr(items, "reader", None)
    ahead: Ahead | None = None
    if window is None and isinstance(items, _CaptureItems):
        if items.follow is not None:  # (one file, being written: its end is not there to scan)
            ahead = items.scanner()  # None: the file cannot be opened (the reader says why)
        else:
            window = items.window()
    hold = window is None and ahead is None  # everything held, its order known at the end
    bound = 0 if window is None else max(0, window // _US)  # µs
    spool = _Spool(memory)
    heap: list[int] = []  # per item held: (arrival µs << _AT_BITS) | its number (in reading order)
    n = 0
    key = last = -(1 << 63)  # the arrival (µs) of the item, and of the message before it, in reading order
    now = -(1 << 63)  # how far the reading has gone, in capture time (µs)
    backwards = False
    latest = -(1 << 63)  # the latest arrival of a message before this one, in reading order
    late = 0
    worst = 0
    given = -(1 << 63)  # the latest arrival given out
    too_late = 0  # requests that came after a later one had been given out
    walked = 0  # the reader's offset from which the pass is walked on again
    try:
        for item in items:
            if item is not None:
                if isinstance(item, InputProblem) and item.code == "time-backwards" and item.lane is None:
                    backwards = True
                when = item.time
                if when is not None:
                    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
                    key = (when - _EPOCH) // _US
                    if isinstance(item, InputMessage):
                        last = key
                        if key < latest:
                            late += 1
                            worst = max(worst, latest - key)
                        latest = max(latest, key)
                else:
                    key = last
            if ahead is not None and reader is not None:  # the pass kept SCAN_AHEAD ahead of the reader
                at = reader.stream_offset
                if at is not None and (at >= walked or item is None):  # (walked on every SCAN_AHEAD / 8)
                    ahead.walk(at + SCAN_AHEAD)
                    walked = at + SCAN_AHEAD // 8
                if not ahead.complete:
                    hold = True
                elif ahead.max_step_ns:
                    bound = max(bound, -(-ahead.max_step_ns // 1000))
                if ahead.done:
                    ahead.close()
                    ahead = None
            if hold:
                if item is None:
                    yield None
                else:
                    heap.append((key << _AT_BITS) | n)
                    spool.add(n, item)
                    n += 1
                continue
            if reader is not None:
                now = max(now, reader.position_ns // 1000)
                went_back = -(-reader.stats.max_time_back_ns // 1000)
                if went_back > bound:  # further than the scan said: the window follows the reader
                    bound = went_back
            elif item is not None and key > now:
                now = key
            if item is not None:
                if not bound and not heap:  # in time order: given out as read
                    given = max(given, key)
                    yield item
                    continue
                if key < given and isinstance(item, InputMessage):  # one later was given out: after it
                    too_late += 1
                heapq.heappush(heap, (key << _AT_BITS) | n)
                spool.add(n, item)
                n += 1
            if heap:
                horizon = now - bound
                if reader is not None and heap[0] >> _AT_BITS <= horizon:
                    pending = reader.pending_since_ns()
                    if pending is not None:
                        horizon = min(horizon, pending // 1000)
                while heap and heap[0] >> _AT_BITS <= horizon:
                    first = heapq.heappop(heap)
                    given = max(given, first >> _AT_BITS)
                    yield spool.take(first & _AT_MASK)
            if item is None:
                yield None
        if hold:  # sorted by arrival when the packets went back and some request came after a later one
            order = sorted(heap) if backwards and late else sorted(heap, key=lambda e: e & _AT_MASK)
            heap = []
            for e in order:
                yield spool.take(e & _AT_MASK)
        while heap:
            yield spool.take(heapq.heappop(heap) & _AT_MASK)
        if backwards and late:
            detail = (
                f"{late} of the capture's requests came in the file after a later one (up to "
                f"{worst / 1e6:.6f} s earlier than one before them): the file's packets are not in time "
                "order, so its requests are replayed in arrival-time order"
            )
            if too_late:
                detail += (
                    f"; {too_late} of them after a later one had been replayed (their packets went back "
                    "further than the replay held the capture's requests for), so they are replayed after it"
                )
            yield InputProblem(source, "reordered", detail)
    finally:
        if ahead is not None:
            ahead.close()
        spool.close()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _capture_window(paths: Sequence[Path]) -> timedelta | None:
    """How far the packet times of a capture (one file, or several read as one) go back at most, from a
    pass over its record headers (:mod:`gateway.capture.timescan`); None when that pass could not read
    the files to their end as the reader reads them."""
    from gateway.capture.timescan import scan_files

    try:
        scan = scan_files(list(paths))
    except (OSError, EOFError, zlib.error):
        return None  # the reader says why the file cannot be read (a gzip stream that is damaged: where)
    if not scan.complete:
        return None
    return timedelta(microseconds=-(-scan.max_step_ns // 1000))


def _capture_name(paths: Sequence[Path]) -> str:
    names = [p.name for p in paths]
    return "+".join(names) if len(names) <= 3 else f"{names[0]}+...+{names[-1]} ({len(names)} files)"


#: how far (bytes of the file) the pass over a followed capture's record headers is kept ahead of its reader
#: (:func:`_time_ordered`; a finished capture's is walked whole first): a step back of the packets' times beyond
#: it that is larger than any the pass has found comes in time when it is no larger than the capture time these
#: bytes cover
SCAN_AHEAD = 64 << 20


def _iter_capture(
    path: Path | Sequence[Path], limits: IngressLimits, memory: int = SPOOL_MEMORY
) -> Iterator[InputMessage | InputProblem]:
    items = _read_capture(path, limits)
    ordered = _time_ordered(items, _capture_name(items.paths), memory)
    return _read_ahead(cast(Iterator[InputMessage | InputProblem], ordered))  # (None: only when following)


#: a capture's items are read ahead of the replay by this many at most, or this many bytes of bodies: reading
#: a batch, then deciding it, keeps each one's working set in the CPU's caches (item by item, reading and
#: deciding in turn, the replay of a 44,000-request capture took about 20 % more CPU)
READ_AHEAD_ITEMS = 512
READ_AHEAD_BYTES = 1 << 20


def _read_ahead(
    items: Iterator[InputMessage | InputProblem], count: int = READ_AHEAD_ITEMS, size: int = READ_AHEAD_BYTES
) -> Iterator[InputMessage | InputProblem]:
    """``items`` as they are, read ``count`` items (or ``size`` bytes of bodies) ahead at a time."""
    while True:
        batch: list[InputMessage | InputProblem] = []
        held = 0
        for item in items:
            batch.append(item)
            held += _spool_size(item)
            if len(batch) >= count or held >= size:
                break
        if not batch:
            return
        yield from batch


class _CaptureItems:
    """A capture's items (one file, or several read as one) as the reader gives them, in its order; the
    reader (``reader``) says how far it has read, for :func:`_time_ordered`. ``follow``: the file (one) is
    being written, and is read as it is (a ``None`` each time everything written so far has been read)."""

    def __init__(
        self, path: Path | Sequence[Path] | Rotation, limits: IngressLimits, follow: Follow | None = None
    ) -> None:
        from gateway.capture.reader import CaptureReader
        from gateway.capture.rotation import Rotation

        # Requests in the order the gateway got them, each once the capture shows the gateway had its
        # bytes (its acknowledgement): waiting for the responses, which the replay does not use, would
        # delay a request whose response is not in the capture by the response timeout, after others.
        # keep_reports=False: every report is yielded here and kept (bounded) by the ReplayRun.
        self.reader = CaptureReader(
            path if isinstance(path, Path | Rotation) else list(path),
            pair_responses=False,
            keep_reports=False,
            max_body=limits.max_body_bytes,
            content_types=limits.content_types,
            follow=follow,
        )
        self.follow = follow
        self.paths: list[Path] = self.reader.paths
        self._items = _capture_items(self.reader)

    def __iter__(self) -> Iterator[InputMessage | InputProblem | None]:
        return self

    def __next__(self) -> InputMessage | InputProblem | None:
        return next(self._items)

    def window(self) -> timedelta | None:
        return _capture_window(self.paths)

    def scanner(self) -> Ahead | None:
        """One file: the pass over its record headers, to be walked ahead of the reader (None when the file
        cannot be opened: the reader says why); a rotated capture: each file's, as the reader opens it."""
        from gateway.capture.timescan import FollowScanner, TimeScanner

        if self.reader.rotated:
            return FollowScanner(lambda: self.reader.stream_file)
        try:
            return TimeScanner(self.paths[0], growing=self.follow is not None)
        except OSError:
            return None


def _read_capture(
    path: Path | Sequence[Path] | Rotation, limits: IngressLimits, follow: Follow | None = None
) -> _CaptureItems:
    return _CaptureItems(path, limits, follow)


def _capture_items(reader: CaptureReader) -> Iterator[InputMessage | InputProblem | None]:
    from gateway.capture.reader import CapturedRequest, Flow

    gapped: set[Flow] = set()  # connections with a gap: the requests after it were lost with it
    cut: set[Flow] = set()  # connections open where a truncated file ends: what they lost, it lost there
    for item in reader.following():
        if item is None:  # a followed capture read to the end written so far
            yield None
            continue
        where = f"{item.file}:{item.flow}"
        if isinstance(item, CapturedRequest):
            yield InputMessage(item.time, item.lane, item.body, where, item.user, item.header("content-type"))
        elif (
            item.code in _LOST
            and item.requests_lost
            and item.flow is not None
            and item.flow not in cut
            and (item.code != "untrusted" or item.flow in gapped)
        ):
            # requests the gateway got (the capture missed some of their bytes, or holds two copies that
            # differ): each is named by a ``lost`` line, so that the capture is seen to be incomplete
            if item.code == "gap":
                gapped.add(item.flow)
            elif item.code == "untrusted":
                gapped.discard(item.flow)
            yield InputProblem(where, item.code, item.detail, _lane_of(item.path), item.time,
                               item.requests_lost, item.first_byte_time, item.bytes_seen)  # fmt: skip
        elif item.code in _REFUSED and item.path is not None and _is_inline_path(item.path):
            # a DNO-bound request the gateway's ingress refuses (413, 400, 415): it gets a reject line
            yield InputProblem(where, item.code, item.detail, "inline", item.time)
        elif item.code == FILE_LOST:
            # a file of a rotated capture deleted or overwritten before it was read: its line names it
            yield InputProblem(str(item.file), item.code, item.detail, None, item.time)
        else:
            if item.code == "truncated-flow" and item.flow is not None:
                # the request the file's end cuts is this report's (its bytes missing at the end are a
                # ``gap`` that follows): a capture that stops, not bytes missing inside it
                cut.add(item.flow)
            yield InputProblem(where, item.code, item.detail)


#: the capture reader's code for a file of a rotated capture that was gone (deleted, overwritten) before it was read
FILE_LOST = "file-lost"

#: a capture reader's codes for a request on a DUIS lane that the gateway's HTTP ingress refuses
_REFUSED = frozenset({"oversize-body", "content-encoding", "not-xml", "non-duis-body"})

#: a capture reader's codes for requests the gateway got but the capture does not hold whole (``untrusted``:
#: only after a ``gap`` on the same connection; after a framing error the gateway refused them too)
_LOST = frozenset({"gap", "untrusted", "overlap-conflict"})


def _lane_of(path: str | None) -> LaneName | None:
    """The lane of a request path (None: not known, or not a DUIS lane)."""
    if path is None:
        return None
    if _is_inline_path(path):
        return "inline"
    return "observe" if path == "/duis/observe" else None


def _is_inline_path(path: str) -> bool:
    """``/duis/dno/{user}``, as the gateway's router (and the capture reader) takes it."""
    user = path[10:] if path.startswith("/duis/dno/") else ""
    return bool(user) and not any(c in user for c in "/{}")


def _kind(p: Path) -> str:
    """What an input is (``directory``, ``capture``, ``script``); raises :class:`InputError` for an unusable path.
    A capture gzipped (``.pcap.gz``, ``cap.pcap1.gz``; or any name whose content is a gzip of a capture) is a
    capture: the reader reads it through gzip."""
    if p.is_dir():
        return "directory"
    if not p.is_file():
        raise InputError(f"no such input: {p}")
    name = p.name.lower()
    gzipped = name.endswith(".gz")
    suffix = Path(name[:-3]).suffix if gzipped else p.suffix.lower()
    if suffix in (".pcap", ".pcapng", ".cap") or _ROTATED_SUFFIX.fullmatch(suffix):
        return "capture"
    if suffix in (".jsonl", ".ndjson", ".json") and not gzipped:
        return "script"
    # a name that does not say: tcpdump -w NAME, its rotated files NAME1, NAME2 ..., a capture gzipped as NAME.gz
    if _starts_as_capture(p):
        return "capture"
    raise InputError(
        f"{p}: unknown input type {p.suffix!r} (expected .jsonl, a directory, or a pcap/pcapng capture, "
        "optionally gzipped: .pcap, .pcapng, .cap, .pcap.gz ...)"
    )


#: the suffix of a rotated capture's files (tcpdump -C/-W: ``cap.pcap1``, ``cap.pcap01`` ...)
_ROTATED_SUFFIX = re.compile(r"\.(?:pcap|pcapng|cap)\d+")


def _starts_as_capture(p: Path) -> bool:
    """Does the file start as a pcap or pcapng capture (its first bytes, whatever its name), or as a gzip whose
    content does (its first bytes decompressed as the reader decompresses them, damage after them or not: the file
    is not read further)?"""
    from gateway.capture.reader import _Gunzipped

    try:
        with p.open("rb") as f:
            head = f.read(4)
            if head[:2] != b"\x1f\x8b":
                return head in _CAPTURE_MAGICS
            f.seek(0)
            return _Gunzipped(f, str(p)).read(4) in _CAPTURE_MAGICS
    except OSError:
        return False


def _opener(p: Path, limits: IngressLimits) -> Iterator[InputMessage | InputProblem]:
    """The (not yet started) reader of one input; raises :class:`InputError` for an unusable path."""
    kind = _kind(p)
    if kind == "directory":
        return _iter_directory(p)
    if kind == "capture":
        return _iter_capture(p, limits)
    return _iter_script(p)


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def _keyed(
    items: Iterator[InputMessage | InputProblem],
) -> Iterator[tuple[datetime, InputMessage | InputProblem]]:
    """Each item with the arrival time it is merged by: a message's own, a skipped input's own when it
    has one, else that of the message before it in the same input."""
    last = _EARLIEST
    for item in items:
        when = item.time
        if when is not None:
            when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
            if isinstance(item, InputMessage):
                last = when
        yield (when if when is not None else last), item


def iter_inputs(
    paths: Sequence[Path], limits: IngressLimits = IngressLimits()
) -> Iterator[InputMessage | InputProblem]:
    """All inputs, several merged by arrival time (stable: each keeps its own order, ties go in the order
    given). The captures among them are read as one capture (their packets merged by capture time, so a
    connection that goes on from one file into the next is one connection: a rotated capture), which takes
    the place of the first of them. Every input is checked, opened and its first item read before this
    returns, so an unusable one raises :class:`InputError` (or :class:`gateway.capture.reader.CaptureError`)
    here, before any message is used. ``limits``: the gateway's ingress settings a capture is read with."""
    kinds = [_kind(p) for p in paths]  # every path checked first: the cheap refusals
    captures = [p for p, k in zip(paths, kinds, strict=True) if k == "capture"]
    readers: list[Iterator[InputMessage | InputProblem]] = []
    for p, kind in zip(paths, kinds, strict=True):
        if kind != "capture":
            readers.append(_opener(p, limits))
        elif captures:
            readers.append(_iter_capture(captures[0] if len(captures) == 1 else captures, limits))
            captures = []
    primed: list[Iterator[InputMessage | InputProblem]] = []
    for reader in readers:
        first = next(reader, None)  # opens it (and checks a whole script)
        primed.append(itertools.chain((first,), reader) if first is not None else iter(()))
    if len(primed) == 1:
        return primed[0]
    merged = heapq.merge(*(_keyed(r) for r in primed), key=lambda pair: pair[0])
    return (item for _when, item in merged)


def follow_capture(
    paths: Sequence[Path], follow: Follow, limits: IngressLimits = IngressLimits(), *, rotated: bool = False
) -> Iterator[InputMessage | InputProblem | None]:
    """The items of one capture file that is being written (``tcpdump -w``, dumpcap), as :func:`iter_inputs`
    gives a capture's, read as ``follow`` says: to the end written so far, then as it grows, until the
    following ends (:class:`gateway.capture.reader.Follow`); a ``None`` each time everything written so far has
    been read and every item whose place is known by then has been given (the replay then commits what it
    has decided). ``rotated``: ``paths`` is the name the capture tool writes a rotated capture with (its
    ``-w``: ``tcpdump -C``/``-G``/``-W``, ``dumpcap -b``), whose files are read one after the other as they are
    written (:class:`gateway.capture.rotation.Rotation`); a file of it that is gone before its turn is a
    ``file-lost`` item. Raises :class:`InputError` unless ``paths`` is one capture file (or, ``rotated``, one
    name in a directory), and :class:`gateway.capture.reader.CaptureError` for a file that already shows it is
    not a capture that can be followed (the rest is found as it is read)."""
    from gateway.capture.reader import CaptureError

    if len(paths) != 1:
        what = (
            "the name a rotated capture is written with (tcpdump's or dumpcap's -w)"
            if rotated
            else "one capture file as it is written"
        )
        raise InputError(f"--follow reads {what}; {len(paths)} inputs were given")
    path = paths[0]
    if rotated:
        return _time_ordered(_read_capture(_rotation(path), limits, follow), path.name)
    kind = _kind(path)
    if kind != "capture":
        raise InputError(
            f"--follow reads a capture file (.pcap, .pcapng) as it is written; {path} is a {kind}"
        )
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(f"{path}: {e.strerror or e}") from None
    # (gzip writes the end of a file last: what it holds is known once it is whole)
    if head[:2] == b"\x1f\x8b":
        raise CaptureError(
            f"{path}: a gzipped capture cannot be followed as it is written (replay it without --follow)"
        )
    if len(head) == 4 and head not in _CAPTURE_MAGICS:
        raise CaptureError(f"{path}: not a pcap/pcapng capture (it starts with {head!r})")
    items = _read_capture(path, limits, follow)
    return _time_ordered(items, _capture_name(items.paths))


def _rotation(path: Path) -> Rotation:
    """The rotated capture written with ``-w path``; :class:`InputError` when it cannot be one: its directory
    is not there, ``path`` is a directory, or its name's strftime pattern does not give the files' order."""
    from gateway.capture.rotation import Rotation, RotationNameError, classify_names

    if path.is_dir():
        raise InputError(f"--rotated names the files of a capture by its -w name; {path} is a directory")
    if not path.parent.is_dir():
        raise InputError(f"{path}: no such directory: {path.parent}")
    try:
        rotation = Rotation(path)
        classify_names(rotation.name, sorted(p.name for p in path.parent.iterdir()))  # both namings there?
    except RotationNameError as e:
        raise InputError(f"--rotated {path}: {e}") from None
    except OSError as e:
        raise InputError(f"{path.parent}: cannot read: {e.strerror or e}") from None
    return rotation


_CAPTURE_MAGICS = frozenset(
    (b"\x0a\x0d\x0d\x0a", b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1")
)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class _Pending:
    classified: Classified
    held: bool = False
    #: a re-delivery of a message held when it came: its line is written when the original is released
    waiting: bool = False


@dataclass
class ReplayRun:
    """Runs messages through classifier + durable engine in event time; collects decision lines."""

    classifier: Classifier
    engine: DurableEngine
    hold_limit: timedelta
    report: ReportData | None = None
    #: events handed to the engine in one transaction (group commit); 1 = commit every message
    batch_size: int = 256
    #: event-time granularity of the gateway clock's ticks (hold releases happen at most this late)
    tick_every: timedelta = timedelta(seconds=1)
    _batch: list[tuple[Any, bytes | None]] = field(default_factory=list)
    _last_tick: datetime | None = None
    #: per message id, one entry per delivery not yet given its line, oldest first (a duplicate delivered
    #: before its original's line was written has its own entry, so each line takes its own message's kind)
    _pending: dict[str, list[_Pending]] = field(default_factory=dict)
    _last_time: datetime | None = None
    stats: dict[str, int] = field(default_factory=dict)
    #: the first ``keep_problems`` skipped inputs in full; all of them are counted by code
    problems: list[InputProblem] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)
    keep_problems: int = 1000
    #: the ``lost`` line ids given so far, by how many lines took each (two reports of one connection at one
    #: capture time - a gap and the requests after it - must not share an id)
    _lost_ids: dict[str, int] = field(default_factory=dict)

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def feed(self, item: InputMessage | InputProblem) -> list[dict[str, Any]]:
        """Classify one input now; hand it to the engine with the next group commit. Returns the decision
        lines that became final (when a batch was committed)."""
        if isinstance(item, InputProblem):
            return self.feed_classified(item, None)
        return self.feed_classified(item, self.classifier.classify(item.lane, item.body, item.time))

    def feed_classified(
        self, item: InputMessage | InputProblem, c: Classified | None
    ) -> list[dict[str, Any]]:
        """Like :meth:`feed` for a message already classified (e.g. by a worker process)."""
        if isinstance(item, InputProblem) or c is None:
            assert isinstance(item, InputProblem)
            # (a reordered notice: one per capture; a file lost: listed whatever their number)
            if len(self.problems) < self.keep_problems or item.code in ("reordered", FILE_LOST):
                self.problems.append(item)
            self.problem_counts[item.code] = self.problem_counts.get(item.code, 0) + 1
            self._count("input-problems")
            if item.lost:  # requests the gateway got and the capture does not hold whole: named, not dropped
                return [*self.flush(), self._lost_line(item)]
            if item.code == FILE_LOST:  # a file of a rotated capture gone before it was read: named, counted
                return [*self.flush(), self._file_lost_line(item)]
            if item.lane == "inline":  # a DNO-bound request the gateway's ingress refuses: named, not dropped
                return [*self.flush(), self._refused_line(item)]
            return []
        self._count(f"lane-{item.lane}")
        if self._last_time is None or item.time > self._last_time:
            self._last_time = item.time
        lines: list[dict[str, Any]] = []
        if c.problems or c.rejection is not None:
            self._count("verification-problems" if c.rejection is None else "rejected")
            if self.report is not None:
                reason = c.rejection.code if c.rejection is not None else c.problems[0].split(":", 1)[0]
                detail = c.rejection.detail if c.rejection is not None else "; ".join(c.problems)
                self.report.add_failure(VerifyFailure(c.message_id, c.kind, reason, detail[:240]))
        if c.rejection is not None:
            if item.lane == "inline":
                lines.extend(self.flush())  # keep output in arrival order
                lines.append(self._rejected_line(c))
            return lines
        if self.report is not None:
            self._marks_for_observation(c)
        if self._last_tick is None or item.time >= _later(self._last_tick, self.tick_every):
            self._batch.append((Tick(item.time), None))
            self._last_tick = item.time
        for ev in c.events:
            is_inline = isinstance(ev, PowerOutage | SupplyRestored | OtherInline)
            self._batch.append((ev, item.body if is_inline else None))
            if is_inline:
                self._pending.setdefault(ev.message_id, []).append(_Pending(c))
        if len(self._batch) >= self.batch_size:
            lines.extend(self.flush())
        return lines

    def flush(self) -> list[dict[str, Any]]:
        """Commit the batched events in one transaction; the decision lines it made final."""
        if not self._batch:
            return []
        batch, self._batch = self._batch, []
        lines: list[dict[str, Any]] = []
        for (event, _raw), effects in zip(batch, self.engine.submit_many(batch), strict=True):
            # an inline event's own Duplicate is a re-delivered DNO-bound message (a line); an observation's
            # is not DNO-bound (none), even when its id is that of an inline message
            own = event.message_id if isinstance(event, PowerOutage | SupplyRestored | OtherInline) else None
            lines.extend(self._lines(effects, own))
        return lines

    def recovered(self) -> list[dict[str, Any]]:
        """Lines for messages accepted before a crash and decided on start-up (normally none)."""
        return self._lines(self.engine.recovered)

    def finish(self) -> list[dict[str, Any]]:
        """Commit what is batched, then advance event time past every hold limit so held messages get
        their final decision."""
        lines = self.flush()
        if self._last_time is None:
            return lines
        end = _later(self._last_time, self.hold_limit + timedelta(seconds=1))
        return lines + self._lines(self.engine.submit(Tick(end)))

    # ------------------------------------------------------------------ output

    def _lines(self, effects: Iterable[Effect], own: str | None = None) -> list[dict[str, Any]]:
        """The lines of one event's effects; ``own``: the message id of the inline event that made them."""
        out: list[dict[str, Any]] = []
        for eff in effects:
            if isinstance(eff, Decision):
                if eff.action is Action.HOLD:
                    if (entries := self._pending.get(eff.message_id)) is not None:
                        entries[0].held = True
                    self._count("held")
                    continue
                out.append(self._decision_line(eff, self._take(eff.message_id)))
                out.extend(self._released_duplicates(eff))
            elif isinstance(eff, Duplicate) and eff.message_id == own:
                if eff.original is None:  # its id was taken in as an observation: no decision of its own
                    out.append(self._seen_line(eff.message_id, self._take(eff.message_id)))
                    continue
                if eff.original.action is Action.HOLD:  # still held: its line comes with the release
                    held_id = eff.original.message_id
                    if held_id != eff.message_id and (moved := self._take(eff.message_id)) is not None:
                        # the same bytes held under their other id (docs/ENGINE.md §8): this delivery's line comes
                        # with that hold's release, after the lines of those before it
                        self._pending.setdefault(held_id, []).append(moved)
                    entries = self._pending.get(held_id)
                    if entries:
                        waiting = next((e for e in entries[1:] if not e.waiting), None)
                        if waiting is not None:  # the held original has its entry: this one waits behind it
                            waiting.waiting = True
                        else:  # held before a restart: this delivery's entry stands for it
                            entries[0].held = True
                    continue
                pending = self._take(eff.message_id)
                line = self._decision_line(eff.original, pending)
                line["duplicate"] = True
                if eff.original.message_id != eff.message_id:  # the same bytes decided under their other id
                    line["message_id"], line["duplicate_of"] = eff.message_id, eff.original.message_id
                self._count("duplicates")
                out.append(line)
        return out

    def _released_duplicates(self, d: Decision) -> list[dict[str, Any]]:
        """The lines of the re-deliveries that came while ``d``'s message was held: its decision, as duplicates."""
        out: list[dict[str, Any]] = []
        while (entries := self._pending.get(d.message_id)) and entries[0].waiting:
            pending = self._take(d.message_id)
            line = self._decision_line(d, pending)
            line["duplicate"] = True
            if pending is not None and pending.classified.message_id != d.message_id:  # its bytes' other id
                line["message_id"], line["duplicate_of"] = pending.classified.message_id, d.message_id
            self._count("duplicates")
            out.append(line)
        return out

    def _take(self, message_id: str) -> _Pending | None:
        """The oldest delivery of ``message_id`` still waiting for its line (None if none is)."""
        entries = self._pending.get(message_id)
        if not entries:
            return None
        pending = entries.pop(0)
        if not entries:
            del self._pending[message_id]
        return pending

    def _device(self, d: Decision, c: Classified | None) -> dict[str, str | None]:
        esme = format_eui(d.esmes[0]) if d.esmes else (c.device.get("esme") if c is not None else None)
        ch = format_eui(d.ch) if d.ch is not None else (c.device.get("ch") if c is not None else None)
        mpan = d.mpan if d.mpan is not None else (c.device.get("mpan") if c is not None else None)
        return {"esme": esme, "ch": ch, "mpan": mpan}

    def _decision_line(self, d: Decision, pending: _Pending | None) -> dict[str, Any]:
        c = pending.classified if pending is not None else None
        final = d.disposition or "forward"
        held = d.action in (Action.RELEASE_FORWARD, Action.RELEASE_SUPPRESS) or bool(pending and pending.held)
        self._count(f"decision-{final}")
        line: dict[str, Any] = {
            "message_id": d.message_id,
            "kind": c.kind if c is not None else d.event_kind,
            "decision": final,
            "action": str(d.action),
            "held": held,
            "reason": str(d.reason),
            "evidence": [
                {
                    "role": e.role,
                    "message_id": e.message_id,
                    "device": format_eui(e.device) if e.device is not None else None,
                    "time": _iso(e.time),
                    **({"detail": e.detail} if e.detail else {}),
                }
                for e in d.evidence
            ],
            "device": self._device(d, c),
            "event_time": _iso(d.event_time),
            "decided_at": _iso(d.decided_at),
        }
        if d.window_opens is not None or d.window_closes is not None:
            line["window"] = {"opens": _iso(d.window_opens), "closes": _iso(d.window_closes)}
        if d.flags:
            line["flags"] = list(d.flags)
        if c is not None and c.problems:
            line["verification"] = list(c.problems)
        if self.report is not None:
            self._marks_for_decision(d, line)
        return line

    def _rejected_line(self, c: Classified) -> dict[str, Any]:
        assert c.rejection is not None
        self._count("decision-reject")
        return {
            "message_id": c.message_id,
            "kind": "rejected",
            "decision": "reject",
            "action": "reject",
            "held": False,
            "reason": c.rejection.code,
            "detail": c.rejection.detail,
            "evidence": [],
            "device": {"esme": None, "ch": None, "mpan": None},
            "event_time": None,
            "decided_at": _iso(c.arrival),
        }

    def _seen_line(self, message_id: str, pending: _Pending | None) -> dict[str, Any]:
        """An inline message whose id the engine took in before as an observation: it has no decision of
        its own (the engine's Duplicate without one), and the gateway answers it ``forward``."""
        c = pending.classified if pending is not None else None
        self._count("decision-forward")
        self._count("duplicates")
        device = c.device if c is not None else {}
        line: dict[str, Any] = {
            "message_id": message_id,
            "kind": c.kind if c is not None else "other-inline",
            "decision": "forward",
            "action": "forward",
            "held": False,
            "reason": "duplicate",
            "detail": "its message id was taken in before as an observation: the engine has no decision of "
            "its own for it, and the gateway answers forward",
            "evidence": [],
            "device": {k: device.get(k) for k in ("esme", "ch", "mpan")},
            "event_time": _iso(c.event_time) if c is not None else None,
            "decided_at": _iso(c.arrival) if c is not None else None,
            "duplicate": True,
        }
        if c is not None and c.problems:
            line["verification"] = list(c.problems)
        if self.report is not None:
            label = line["device"]["esme"] or line["device"]["ch"] or "?"
            self.report.add_decision(
                DecisionRow(
                    message_id,
                    line["kind"],
                    "forward",
                    "duplicate",
                    False,
                    label,
                    c.event_time if c else None,
                )
            )
        return line

    def _refused_line(self, p: InputProblem) -> dict[str, Any]:
        """A DNO-bound request the gateway's HTTP ingress refuses (a capture's ``oversize-body``,
        ``content-encoding``, ``not-xml`` or ``non-duis-body``): a reject line named by the reader's code."""
        self._count("decision-reject")
        return {
            "message_id": f"rejected:{p.source}@{_iso(p.time)}",
            "kind": "rejected",
            "decision": "reject",
            "action": "reject",
            "held": False,
            "reason": p.code,
            "detail": p.detail,
            "evidence": [],
            "device": {"esme": None, "ch": None, "mpan": None},
            "event_time": None,
            "decided_at": _iso(p.time),
        }

    def _lost_line(self, p: InputProblem) -> dict[str, Any]:
        """Requests of a capture lost to its damage (:data:`_LOST`): the gateway got them, the replay cannot
        decide them. One line per report, ``decision: "lost"``, with what is known of them."""
        self.stats["lost"] = self.stats.get("lost", 0) + p.lost
        self._count("decision-lost")
        base = f"lost:{p.source}@{_iso(p.time)}"
        n = self._lost_ids[base] = self._lost_ids.get(base, 0) + 1
        line: dict[str, Any] = {
            "message_id": base if n == 1 else f"{base}#{n}",
            "kind": "lost",
            "decision": "lost",
            "action": "lost",
            "held": False,
            "reason": p.code,
            "detail": p.detail,
            "lane": p.lane,
            "requests": p.lost,
            "evidence": [],
            "device": {"esme": None, "ch": None, "mpan": None},
            "event_time": None,
            "decided_at": _iso(p.time),
        }
        if p.first_byte_time is not None:
            line["first_byte_time"] = _iso(p.first_byte_time)
            line["bytes_seen"] = p.bytes_seen
        if self.report is not None:
            self.report.add_decision(
                DecisionRow(line["message_id"], "lost", "lost", p.code, False, "?", p.time)
            )
        return line

    def _file_lost_line(self, p: InputProblem) -> dict[str, Any]:
        """A file of a rotated capture that was deleted or overwritten before it was read (a ring buffer the
        replay fell behind): what it held is lost, and how many requests that was is not known."""
        self.stats["files-lost"] = self.stats.get("files-lost", 0) + 1
        self._count("decision-lost")
        line: dict[str, Any] = {
            "message_id": f"lost:{p.source}",
            "kind": "lost",
            "decision": "lost",
            "action": "lost",
            "held": False,
            "reason": p.code,
            "detail": p.detail,
            "lane": None,
            "requests": None,
            "evidence": [],
            "device": {"esme": None, "ch": None, "mpan": None},
            "event_time": None,
            "decided_at": _iso(p.time),
        }
        if self.report is not None:
            self.report.add_decision(
                DecisionRow(line["message_id"], "lost", "lost", p.code, False, "?", p.time)
            )
        return line

    # ------------------------------------------------------------------ report marks

    def _marks_for_observation(self, c: Classified) -> None:
        assert self.report is not None
        for ev in c.events:
            tag = "" if ev.verified else " (unverified)"
            if isinstance(ev, ActivationRequested):
                dev = format_eui(ev.esme)
                if ev.is_cancellation:
                    self.report.add_mark(
                        Mark(dev, ev.seen_at, "cancellation", f"cancel #{ev.counter}{tag}")
                    )
                elif ev.execution_time is not None:
                    self.report.add_mark(
                        Mark(dev, ev.execution_time, "activation-pending", f"future-dated #{ev.counter}{tag}")
                    )
            elif isinstance(ev, ActivationResponse) and ev.result is not None:
                kind = "activation" if ev.result == 0 else "activation-failed"
                self.report.add_mark(
                    Mark(format_eui(ev.esme), ev.response_time, kind, f"11.3 result {ev.result}{tag}")
                )
            elif isinstance(ev, FutureDatedOutcome):
                kind = "activation" if ev.succeeded else "activation-failed"
                self.report.add_mark(
                    Mark(format_eui(ev.esme), ev.execution_time, kind, f"{ev.alert_code:04X}{tag}")
                )

    def _marks_for_decision(self, d: Decision, line: dict[str, Any]) -> None:
        assert self.report is not None
        dev = line["device"]
        label = dev.get("esme") or dev.get("ch") or "?"
        if d.event_time is not None:
            kind = {"power-outage": "ad1", "supply-restored": "restoration"}.get(d.event_kind, "other")
            self.report.add_mark(Mark(label, d.event_time, kind, d.message_id[:60], line["decision"]))
            if d.window_opens is not None and d.window_closes is not None:
                self.report.add_window(Window(label, d.window_opens, d.window_closes))
        self.report.add_decision(
            DecisionRow(
                d.message_id,
                line["kind"],
                line["decision"],
                line["reason"],
                line["held"],
                label,
                d.event_time,
            )
        )


# ---------------------------------------------------------------------- parallel classification


# ``ClassifierSpec`` lives in gateway.pipeline (the gateway's classify workers use it too); re-exported here.


def _worker_classify(chunk: list[tuple[LaneName, bytes, datetime]]) -> list[Classified]:
    # the decoded model stays in the worker: the replay needs only the events and the verdicts
    out: list[Classified] = []
    for result in classify_chunk(chunk):
        if isinstance(result, WorkerFailure):
            raise RuntimeError(f"classification failed in a worker: {result.error}")
        out.append(result)
    return out


def _init_replay_worker(spec: ClassifierSpec, parent: int) -> None:
    """Pool initializer: build the classifier, and leave when the replay process is gone. A replay
    that is killed (SIGKILL) cannot shut its pool down, and its forked workers, which hold both ends
    of the task queue, would otherwise wait on it for ever."""
    import threading

    init_worker(spec)
    threading.Thread(
        target=_exit_with_parent, args=(parent,), name="duisgw-parent-watch", daemon=True
    ).start()


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    import os
    import time

    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def classify_in_workers(
    items: Iterable[InputMessage | InputProblem], spec: ClassifierSpec, workers: int, *, chunk: int = 64
) -> Iterator[tuple[InputMessage | InputProblem, Classified | None]]:
    """Classify in ``workers`` processes, yielding ``(item, classified)`` in input order.

    At most ``4 × workers`` chunks are in flight, so memory stays bounded however long the input is."""
    import collections
    import itertools
    from concurrent.futures import Future, ProcessPoolExecutor

    window: collections.deque[tuple[list[InputMessage | InputProblem], Future[list[Classified]] | None]]
    window = collections.deque()
    it = iter(items)
    import os

    with ProcessPoolExecutor(workers, initializer=_init_replay_worker, initargs=(spec, os.getpid())) as pool:

        def submit() -> bool:
            batch = list(itertools.islice(it, chunk))
            if not batch:
                return False
            msgs = [(i.lane, i.body, i.time) for i in batch if isinstance(i, InputMessage)]
            window.append((batch, pool.submit(_worker_classify, msgs) if msgs else None))
            return True

        while len(window) < 4 * workers and submit():
            pass
        while window:
            batch, fut = window.popleft()
            results = iter(fut.result() if fut is not None else [])
            for item in batch:
                yield item, (next(results) if isinstance(item, InputMessage) else None)
            submit()
