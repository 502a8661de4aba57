"""The files of a capture its writer rotates, found by the name given to the writer's ``-w``.

Theory of operation
-------------------
A long-running capture is written into a series of files: ``tcpdump -C SIZE`` (``NAME``, ``NAME1``,
``NAME2`` ...), ``tcpdump -C SIZE -W N`` (a ring: ``NAME0`` ... ``NAME{N-1}``, the count padded to the digits of
``N - 1``, the oldest file overwritten in place when the ring wraps), ``tcpdump -G SECS`` with a ``strftime``
pattern (``name-%Y%m%d%H%M%S.pcap``; with ``-C`` too, the count appended, from 1 again in each period) and
``dumpcap -b`` (``PREFIX_NNNNN_YYYYmmddHHMMSS.EXT`` from ``-w PREFIX.EXT``, or ``PREFIX_YYYYmmddHHMMSS_NNNNN.EXT``
with ``-b nametimenum:2``; with ``-b files:N`` the oldest file is deleted when the N+1-th is started).
:class:`Rotation` is that set, named as the writer was told (``-w``): it lists the directory for the files of
the set, orders them as they were written (the time each file was last written, then the count, the file number,
or the time in the name; the names alone do not say it when a ``-G`` name's local time goes back an hour with the
clocks, or a dumpcap restarted with the same ``-w`` numbers its files from 00001 again), and says which file comes
after the one being read, once it has been started: any file of the set not read yet. A writer closes a file before it starts the next one (tcpdump's
``pcap_dump_close``, then ``pcap_dump_open``; dumpcap's ring buffer the same), so a file whose successor exists
is complete: read to its end, it is finished.

A file of the set that is not there any more when its turn comes (deleted by dumpcap's ring buffer, which the
replay fell behind; or overwritten by tcpdump's ring before it was read) is lost: :meth:`Rotation.successor`
names it, with the file after it, so that the reader can say so (``file-lost``). Files deleted before the
first one read are not counted: that history is not the replay's.

A finished file compressed in place (``tcpdump -z gzip``: once tcpdump has closed ``NAME1`` and started the next
file, ``gzip NAME1`` writes ``NAME1.gz``, gives it ``NAME1``'s modification time, and removes ``NAME1``) is the same
file of the set under its compressed name: ``NAME1.gz`` is ``NAME1`` (:attr:`RotatedFile.name`; its ``path`` is the
``.gz``), ordered as ``NAME1`` is, read once, and not lost. While both are there (gzip still writing the ``.gz``),
the file is ``NAME1``; a ``.gz`` that is there with a file of its name is not looked at. A file the writer is
writing is never compressed (tcpdump compresses a file after closing it), so the file being written is always
the plain one.

The naming is matched by regular expressions built from the name; :func:`classify_names` (pure: names in, the
kind of set and the files' order out) is kept apart from the listing (:meth:`Rotation.listing`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = ["RotatedFile", "Rotation", "RotationNameError", "classify_names"]

Kind = Literal["tcpdump", "tcpdump-ring", "tcpdump-time", "dumpcap"]

#: dumpcap's file numbers: ``%05u`` of a counter kept below this (it starts again at 0 past it)
_DUMPCAP_WRAP: Final = 100_000

# strftime directives tcpdump -G names a file by that give its order (regex, the field); %F, %T and %R are
# written out as the directives they stand for
_DIRECTIVES: Final = {
    "Y": (r"(\d{4})", "Y"),
    "y": (r"(\d{2})", "y"),
    "m": (r"(\d{2})", "m"),
    "d": (r"(\d{2})", "d"),
    "e": (r"([ \d]\d)", "d"),
    "j": (r"(\d{3})", "j"),
    "H": (r"(\d{2})", "H"),
    "M": (r"(\d{2})", "M"),
    "S": (r"(\d{2})", "S"),
    "s": (r"(\d+)", "s"),
}
_COMPOSITE: Final = {"F": "%Y-%m-%d", "T": "%H:%M:%S", "R": "%H:%M"}
_ORDER: Final = ("s", "Y", "m", "d", "j", "H", "M", "S")  # most significant first (%y counts as Y)


class RotationNameError(ValueError):
    """A ``-w`` name whose rotated files cannot be ordered (a strftime directive that does not give an order)."""


@dataclass(frozen=True, slots=True)
class RotatedFile:
    """One file of a rotated capture as a listing found it. ``key``: its place in the order of writing (from
    its name; a tcpdump ring's: its number only, the order is by ``mtime_ns``); ``number``: its count (tcpdump
    ``-C``), its file number (dumpcap), None when the name has none (``-G`` alone)."""

    path: Path
    key: tuple[int, ...]
    number: int | None
    ino: int
    mtime_ns: int
    size: int
    #: ``path`` is the file compressed in place (``tcpdump -z gzip``: ``NAME1.gz`` for ``NAME1``)
    compressed: bool = False

    @property
    def name(self) -> str:
        """The name the writer gave the file (of a compressed one: without its ``.gz``): the set's bookkeeping
        (read, lost, the ring's numbers) goes by it."""
        return self.path.name[: -len(GZ_SUFFIX)] if self.compressed else self.path.name


#: the suffix ``gzip`` gives the file it compresses (``tcpdump -z gzip``)
GZ_SUFFIX: Final = ".gz"


def _entries(names: list[str]) -> list[tuple[str, str]]:
    """Each directory entry with the name it is matched by: its own, and for a ``NAME.gz`` whose ``NAME`` is not
    there (gzip has finished: the file compressed in place) that name too. A ``NAME.gz`` next to its ``NAME`` is
    gzip still at work (or a copy): the plain file is the file of the set."""
    there = set(names)
    out = []
    for n in names:
        out.append((n, n))
        if n.endswith(GZ_SUFFIX) and len(n) > len(GZ_SUFFIX) and n[: -len(GZ_SUFFIX)] not in there:
            out.append((n, n[: -len(GZ_SUFFIX)]))
    return out


def _split_ext(name: str) -> tuple[str, str]:
    """dumpcap's prefix and suffix of a ``-w`` name: around its last dot (none: no suffix)."""
    dot = name.rfind(".")
    return (name[:dot], name[dot:]) if dot > 0 else (name, "")


def _time_pattern(name: str) -> tuple[re.Pattern[str], list[str]]:
    """tcpdump -G: the regular expression of the names ``name`` (a strftime pattern) expands to, followed by the
    ``-C`` count when there is one; and the field of each group. :class:`RotationNameError` for a directive
    that does not give the files' order."""
    out: list[str] = []
    fields: list[str] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c != "%":
            out.append(re.escape(c))
            i += 1
            continue
        if i + 1 >= len(name):
            raise RotationNameError(f"{name!r} ends with a lone '%'")
        d = name[i + 1]
        i += 2
        if d == "%":
            out.append(re.escape("%"))
        elif d in _COMPOSITE:
            sub, sub_fields = _time_pattern(_COMPOSITE[d])
            out.append(sub.pattern[1 : -len(r"(\d*)$")])
            fields.extend(sub_fields)
        elif d in _DIRECTIVES:
            regex, field = _DIRECTIVES[d]
            out.append(regex)
            fields.append(field)
        else:
            raise RotationNameError(
                f"{name!r}: the strftime directive %{d} does not say in which order the files were written "
                "(use %Y %m %d %H %M %S, %j, %s, %F or %T, e.g. name-%Y%m%d%H%M%S.pcap)"
            )
    return re.compile("^" + "".join(out) + r"(\d*)$"), fields


def _time_key(groups: tuple[str, ...], fields: list[str]) -> tuple[int, ...]:
    values = dict.fromkeys(_ORDER, 0)
    for value, field in zip(groups, fields, strict=False):
        v = int(value.strip() or 0)
        if field == "y":
            field, v = "Y", v + (2000 if v < 69 else 1900)
        values[field] = v
    count = groups[len(fields)]
    return (*(values[f] for f in _ORDER), int(count) if count else 0)


def classify_names(
    name: str, names: list[str], kind: Kind | None = None
) -> tuple[Kind | None, dict[str, tuple[tuple[int, ...], int | None]]]:
    """Which of ``names`` (a directory's entries) are files of the capture written with ``-w name`` (its
    basename), and how they are ordered: the kind of set (``kind``, when already known, is kept: files of
    another naming are then not its own), and each file's key and number (see :class:`RotatedFile`). None
    when no file of the set is there. :class:`RotationNameError` when tcpdump- and dumpcap-named files of
    ``name`` are both there (which is which capture cannot be told). A file compressed in place (``NAME1.gz``,
    ``tcpdump -z gzip``) is the file it was (``NAME1``), under its entry's name; not while ``NAME1`` is there
    too (see :func:`_entries`)."""
    found_kind, files = _classify(name, names, kind)
    return found_kind, {n: (key, number) for n, (key, number, _gz) in files.items()}


#: a file of the set: its key, its number, and whether it is compressed in place (matched without its .gz)
_Entry = tuple[tuple[int, ...], int | None, bool]


def _classify(name: str, names: list[str], kind: Kind | None = None) -> tuple[Kind | None, dict[str, _Entry]]:
    """:func:`classify_names`, each file with whether it is one compressed in place (``NAME1.gz``)."""
    found: dict[Kind, dict[str, _Entry]] = {}
    entries = _entries(names)
    if "%" in name:
        pattern, fields = _time_pattern(name)
        for e, n in entries:
            m = pattern.match(n)
            if m:
                count = m.group(len(fields) + 1)
                found.setdefault("tcpdump-time", {})[e] = (
                    _time_key(m.groups(), fields),
                    int(count) if count else None,
                    e != n,
                )
    else:
        counted = re.compile("^" + re.escape(name) + r"(\d*)$")
        prefix, ext = _split_ext(name)
        numbered = re.compile("^" + re.escape(prefix) + r"_(\d{5,})_(\d{14})" + re.escape(ext) + "$")
        timed = re.compile("^" + re.escape(prefix) + r"_(\d{14})_(\d{5,})" + re.escape(ext) + "$")
        tcp: dict[str, _Entry] = {}
        dumpcap: dict[str, _Entry] = {}
        bare = False  # the bare NAME (tcpdump -C's first file), or its .gz, is there
        for e, n in entries:
            if (m := counted.match(n)) is not None:
                digits = m.group(1)
                tcp[e] = ((int(digits),) if digits else (0,), int(digits) if digits else 0, e != n)
                bare = bare or not digits
            elif (m := numbered.match(n) or timed.match(n)) is not None:
                number = int(m.group(1) if m.re is numbered else m.group(2))
                dumpcap[e] = ((number,), number, e != n)
        if tcp:
            # a ring (-W): the count is always there (NAME0, NAME00 ...), the bare NAME never is
            ring = not bare and any(n[len(name)] == "0" for n in tcp)
            found["tcpdump-ring" if ring else "tcpdump"] = tcp
        if dumpcap:
            found["dumpcap"] = dumpcap
    if kind is not None:
        return kind, found.get(kind, {})
    if len(found) > 1:
        raise RotationNameError(
            f"files named as tcpdump names them and files named as dumpcap names them are both there for "
            f"{name!r} ({', '.join(sorted(n for files in found.values() for n in files)[:4])} ...): which "
            "belong to the capture being written cannot be told; move the others away"
        )
    if not found:
        return None, {}
    (only,) = found
    return only, found[only]


class Rotation:
    """The files of the capture written with ``-w path`` (see the module docstring). :meth:`listing` looks
    at the directory; :meth:`first` and :meth:`successor` pick the file to read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.directory = self.path.parent
        self.kind: Kind | None = None
        if "%" in self.name:
            _time_pattern(self.name)  # a name that cannot be ordered: refused now
        #: files of the set found by a listing after the one being read: one found so and gone when its turn
        #: comes was deleted before it was read
        self._seen: dict[str, RotatedFile] = {}
        #: a ring: the numbers its files have had (its size is the largest, plus one), and the digits of its count
        self._numbers: set[int] = set()
        self._width = 0
        #: the files read, or lost (not a ring): any other file of the set is
        #: still to be read, whatever its name says (a tcpdump -G name's local time goes back an hour when the
        #: clocks do; a dumpcap restarted with the same -w numbers its files from 00001 again)
        self._past: set[str] = set()

    def __str__(self) -> str:
        return str(self.path)

    def listing(self, after: RotatedFile | None = None) -> list[RotatedFile]:
        """The files of the set in the directory now (``OSError`` when the directory cannot be read); ``after``:
        only those written after it (by their names; a tcpdump ring's: all), the others not looked at."""
        with os.scandir(self.directory) as it:
            names = [e.name for e in it]
        kind, files = _classify(self.name, names, self.kind)
        if kind is None:
            return []
        self.kind = kind
        if kind != "tcpdump-ring":
            # (a file gone is not looked for again; one compressed in place is still there, as its .gz)
            self._past.intersection_update(
                n[: -len(GZ_SUFFIX)] if gz else n for n, (_, _, gz) in files.items()
            )
        out = []
        for n, (key, number, gz) in files.items():
            path = self.directory / n
            if (  # (written before ``after``: not looked at)
                after is not None
                and kind != "tcpdump-ring"
                and self._ahead(RotatedFile(path, key, number, 0, 0, 0, gz), after) is None
            ):
                continue
            try:
                st = path.stat()
            except OSError:
                continue  # gone between the listing and the look at it
            if not stat.S_ISREG(st.st_mode):
                continue
            f = RotatedFile(path, key, number, st.st_ino, st.st_mtime_ns, st.st_size, gz)
            out.append(f)
            if kind == "tcpdump-ring" and number is not None:
                self._numbers.add(number)
                self._width = max(self._width, len(f.name) - len(self.name))
        return out

    def _ahead(self, f: RotatedFile, current: RotatedFile) -> tuple[int, ...] | None:
        """Where ``f`` comes after ``current`` (None: it does not: read or lost). Every file of the set not read yet comes after it, in the order it was last written, then by its
        name (:meth:`_by_name`): the names alone do not say it when a tcpdump -G name's local time goes back an
        hour with the clocks, or a dumpcap restarted with the same ``-w`` numbers its files from 00001 again."""
        if f.name in self._past or f.name == current.name:
            return None
        return (f.mtime_ns, *self._by_name(f, current))

    def _by_name(self, f: RotatedFile, current: RotatedFile) -> tuple[int, ...]:
        """``f``'s place after ``current`` by their names: dumpcap's numbers come round past 99999 (the step
        from ``current``'s number), the others' keys."""
        if self.kind == "dumpcap":
            assert f.number is not None and current.number is not None
            return ((f.number - current.number) % _DUMPCAP_WRAP,)
        return f.key

    def _before(self, f: RotatedFile, current: RotatedFile) -> bool:
        """``f`` was written before ``current``, by their names (dumpcap: up to half of the numbers before it)."""
        if self.kind == "dumpcap":
            assert f.number is not None and current.number is not None
            return 0 < (current.number - f.number) % _DUMPCAP_WRAP < _DUMPCAP_WRAP // 2
        return f.key < current.key

    def first(self, files: list[RotatedFile]) -> RotatedFile | None:
        """The file to start with: the oldest of the set there now (None: none is)."""
        if not files:
            return None
        if self.kind == "tcpdump-ring":
            return min(files, key=lambda f: (f.mtime_ns, f.key))
        # the one written first (its writer's names, their order told by the time each was last written, then
        # by the names)
        oldest = min(f.mtime_ns for f in files)
        same = [f for f in files if f.mtime_ns == oldest]
        start = same[0]
        for f in same[1:]:  # the one no other is before
            if self._before(f, start):
                start = f
        self._past = {start.name}
        self._seen = {}
        self._remember(start, files)
        return start

    def _remember(self, current: RotatedFile, files: list[RotatedFile]) -> None:
        self._seen = {n: f for n, f in self._seen.items() if self._ahead(f, current) is not None}
        for f in files:
            if self._ahead(f, current) is not None:
                self._seen.setdefault(f.name, f)

    def successor(
        self, current: RotatedFile, opened_mtime_ns: int, files: list[RotatedFile]
    ) -> tuple[RotatedFile | None, list[str]]:
        """The file written after ``current`` (``files``: a listing), once it has been started (None: not yet);
        and the names of the files between the two that are not there to be read (deleted or overwritten
        before their turn: lost). ``opened_mtime_ns``: ``current``'s modification time when it was opened (a
        tcpdump ring: the file after it is the one written since, its names coming round again)."""
        if self.kind == "tcpdump-ring":
            later = [f for f in files if f.name != current.name and f.mtime_ns > opened_mtime_ns]
            if not later:
                return None, []
            nxt = min(later, key=lambda f: (f.mtime_ns, f.key))
            return nxt, self._ring_lost(current, nxt)
        self._remember(current, files)
        ahead = [(at, f) for f in files if (at := self._ahead(f, current)) is not None]
        if not ahead:
            return None, []
        until, nxt = min(ahead, key=lambda pair: pair[0])
        there = {f.name for f in files}
        lost = sorted(
            (
                (at, f)
                for f in self._seen.values()
                if (at := self._ahead(f, current)) is not None and at < until and f.name not in there
            ),
            key=lambda pair: pair[0],
        )
        names = [f.name for _at, f in lost]
        self._past.update(names, (current.name,))  # read, or lost: not after any file any more
        for name in names:
            self._seen.pop(name, None)
        if self.kind in ("dumpcap", "tcpdump") and current.number is not None and nxt.number is not None:
            # numbered files: those between the two that no listing found were deleted before it looked (not when
            # the next one's number is not after the current one's: a writer started again, from its first number)
            known = {f.number for _at, f in lost}
            span = until[1] if self.kind == "dumpcap" else nxt.number - current.number
            if self.kind == "dumpcap" and span >= _DUMPCAP_WRAP // 2:
                span = 0
            for k in range(1, span):
                n = (current.number + k) % _DUMPCAP_WRAP if self.kind == "dumpcap" else current.number + k
                if n not in known:
                    names.append(self._unseen_name(n))
        return nxt, names

    def forget(self, gone: RotatedFile) -> None:
        """``gone`` (a file :meth:`successor` gave) could not be opened: it is not counted as lost again."""
        self._seen.pop(gone.name, None)

    def _unseen_name(self, number: int) -> str:
        """The name of a file of the set no listing found (deleted before the replay looked)."""
        if self.kind == "dumpcap":
            prefix, ext = _split_ext(self.name)
            return f"{prefix}_{number:05d}_*{ext}"
        return f"{self.name}{number}"

    def _ring_lost(self, current: RotatedFile, nxt: RotatedFile) -> list[str]:
        """A tcpdump ring: the files between ``current`` and ``nxt`` in the ring's order (overwritten since)."""
        if current.number is None or nxt.number is None or not self._numbers:
            return []
        size = max(self._numbers) + 1
        n = current.number + 1 if current.number + 1 in self._numbers else 0
        lost: list[str] = []
        while n != nxt.number and len(lost) < size:
            lost.append(f"{self.name}{n:0{self._width}d}")
            n = (n + 1) % size
        return lost
