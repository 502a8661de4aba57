"""ESME <-> Comms Hub <-> MPAN inventory (+ manufacturer, model), sized for millions of meters.

Theory of operation
-------------------
*Storage.* One row per ESME, in parallel typed columns (``array``): ESME EUI (``Q``), CH EUI (``Q``,
``NO_EUI`` when unknown), MPAN key (``Q``, 0 when unknown), manufacturer and model (``I`` indexes
into an interned string table), and two chain pointers (``i``) linking the rows that share a CH and
those that share an MPAN. Three open-addressing hash tables (:class:`_IntIndex`: linear probing over
an ``array('Q')`` of keys and an ``array('i')`` of row numbers, Fibonacci hashing, load <= 0.7) map
ESME -> row, CH -> first row of its chain, MPAN key -> first row of its chain. Every question is a
hash probe plus a short chain walk: O(1), about 60 bytes a meter for the rows and 12-24 bytes a key
for each table, against ~100 bytes a key for a Python ``dict`` of ``int`` objects.

*MPANs* are digit strings; ``"0012345678901"`` and ``"12345678901"`` are different MPANs, so the key
keeps the length: ``(len << 56) | int(digits)``. A non-digit MPxN (only accepted from ``learn``) is
interned in a side table and keyed ``(0xFF << 56) | index``.

*Snapshot and learned links.* The snapshot (a CSV export, :func:`import_inventory_csv`) is the base.
:meth:`Inventory.learn` records links seen in verified traffic (8.2 Read Inventory responses): it
appends a row for a new ESME or updates the row of a known one (re-linking its CH/MPAN chains), and
marks which fields were learned and when (``at``, the message's own time, supplied by the caller; no
clock is read here). Each learned Comms Hub and MPxN link keeps the time of the evidence behind it
(a sparse map: only rows with a timed learned link), and a link is replaced only by evidence at
least as new (the rule of :func:`gateway.engine.state.merge_learned`; evidence without a time is
older than any timed evidence): the end state is the newest evidence's whatever the order in which
messages arrive, and a late message cannot move an ESME back. :meth:`Inventory.unlink` records a
removal (a status change alert that ends links: a meter decommissioned or withdrawn, a Comms Hub
decommissioned, a device removed from the inventory, an MPxN contradicted) the same way: the link is
ended (a learned field with no link, at the removal's time), so a late removal does not undo a newer
re-link and older evidence arriving later does not restore it; an ESME not known yet gets a row without
links. ``learned_links()`` yields exactly those facts with their times (``ended`` for the ended links).
A hub's end is also kept per hub (:meth:`Inventory.end_hub`, the latest end of each): it ends the link to
the hub of every row behind it, and link evidence naming the hub that is not newer than the end is taken
as that link followed by the end (:func:`gateway.engine.state.after_hub_end`), whichever ESME it names
and whichever arrives first. A link ended by a hub's end remembers the hub (a sparse map) and keeps the
time of the link evidence it ended, by which it is ordered: newer evidence naming another hub links the
ESME (it moved off the hub before the hub ended), as it would have had it arrived before the end; a
removal's end (no hub) is ordered by the removal's own time.

*Learning as a transaction.* Between :meth:`Inventory.begin_learning` and
:meth:`Inventory.commit_learning` every row changed is saved as it was (once) and rows added are noted;
:meth:`Inventory.rollback_learning` puts the rows, their chains and the hub ends back and removes the
added rows. The gateway's engine opens one per batch, so a batch whose store commit failed leaves no
link in force that the store does not hold. ``InventoryRegistry.reload`` during a transaction gives the
new snapshot the committed links and learns the transaction's again, in a transaction of its own.

*Reload and merge.* :class:`InventoryRegistry` holds the inventory in force. ``reload(new)`` takes a
fully built snapshot, re-applies the learned links of the current inventory on top of it, and swaps
the reference. A learned link **wins** over the new snapshot when the snapshot has no ``as_of``
time, when the link has no time, or when the link was observed strictly after ``as_of``; otherwise
the snapshot is at least as new and the learned link is dropped (counted in the merge report). A link
ended by a hub's end goes by the time of the evidence it ended only (without one it is older than any
snapshot: the snapshot's link stands, and the hub's end ends it if it is a link to that hub). Every
hub end is kept; it ends the new snapshot's links to the hub only when it is newer than ``as_of`` (or
there is none). A CSV export (:meth:`Inventory.save_csv`) keeps all of it (each learned link's time, the hub that
ended a Comms Hub link, every hub's end): it loads back to the same state.

*Concurrency.* Reads never lock. Writes (``learn``, ``reload``) go through the registry's lock, so
there is a single writer. A chain walk checks each row's own CH/MPAN, so a reader racing a re-link
may miss the moving ESME for an instant but never reports it under the wrong CH or MPAN. That holds for
reads on the writer's own thread (the engine loop) and for the decisions, which tolerate such an instant;
a read on *another* thread can also race a write that grows the ESME index (``_IntIndex._grow`` swaps in
arrays still being filled) and find an ESME learned long ago absent: a thread that must see every learned
ESME reads under :meth:`InventoryRegistry.writes_paused`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.engine.state import LearnedLink as LinkRecord
from gateway.errors import DuisgwError
from gateway.guids import (
    CsvLines,
    StableRead,
    atomic_write_bytes,
    check_rejected,
    decode_text,
    fast_parse_eui,
    file_sha256,
    sniff_dialect,
    summarise,
)
from gateway.mpan import check_char_of
from gbcs.eui import EUIError, format_eui

__all__ = [
    "NO_EUI",
    "Inventory",
    "InventoryImportError",
    "InventoryImportReport",
    "InventoryRegistry",
    "InventoryRow",
    "LearnedLink",
    "MergeReport",
    "import_inventory_csv",
    "mpan_key",
    "mpan_text",
]

NO_EUI = (1 << 64) - 1
"""FF-FF-FF-FF-FF-FF-FF-FF (reserved, never a device): the "no Comms Hub known" marker."""

_GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1
_EMPTY = -1  # slot unused
_END = -1  # end of a chain
_NONE = -2  # a key whose chain is (now) empty
_MAX_LOAD = 0.7
_TEXT_TAG = 0xFF << 56

# learned-field bits
_L_CH = 1
_L_MPAN = 2
_L_MFR = 4
_L_MODEL = 8
_FIELD_BITS = ((_L_CH, "ch"), (_L_MPAN, "mpan"), (_L_MFR, "manufacturer"), (_L_MODEL, "model"))
_NOT_LEARNED = float("-inf")  # learned-time column: never learned
_NO_TIME = -1e308  # learned, but the caller gave no time (wins over any snapshot)

T = TypeVar("T")
_SavedRow = tuple[int, int, int, int, int, float, tuple[float | None, float | None] | None, int | None]
"""A row as it was before a learning transaction changed it (see ``Inventory._undo``)."""

_COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "esme": ("esme", "esmeid", "esmeeui", "esmeguid", "esmeeui64", "meter", "metereui", "meterid"),
    "comms_hub": (
        "commshub",
        "commshubid",
        "commshubeui",
        "commshubdeviceid",
        "communicationshub",
        "ch",
        "chid",
        "cheui",
        "chf",
        "chfid",
        "hub",
    ),
    "mpxn": ("mpxn", "mpan", "mpancore", "mpanid", "mpxnid", "mpn"),
    "manufacturer": ("manufacturer", "manufacturername", "make", "mfr", "esmemanufacturer", "vendor"),
    "model": ("model", "modelid", "esmemodel", "devicemodel", "modelname"),
    "origin": ("origin",),
    "learned_fields": ("learnedfields",),
    "learned_at": ("learnedat",),
    "comms_hub_learned_at": ("commshublearnedat",),
    "mpxn_learned_at": ("mpxnlearnedat",),
    "comms_hub_ended_by": ("commshubendedby",),
    "device_type": ("devicetype", "devtype"),
    # the ESME column of an export listing several device types (read only beside a device-type column)
    "device_id": ("deviceid", "deviceeui", "deviceeui64", "deviceguid", "device"),
}
_REQUIRED = ("esme", "comms_hub", "mpxn")
_EXPORT_HEADER = (
    "esme",
    "comms_hub",
    "mpxn",
    "manufacturer",
    "model",
    "origin",
    "learned_fields",
    "learned_at",
    "comms_hub_learned_at",
    "mpxn_learned_at",
    "comms_hub_ended_by",
)
"""The columns of :meth:`Inventory.save_csv` (the last three since the seventeenth session: an export without them
reads each learned link at ``learned_at`` and an ended Comms Hub link as a removal, as before)."""
_HUB_END = "hub-end"
"""The ``origin`` of an export's row that records a Comms Hub's end (the hub in ``comms_hub``, the time in
``learned_at``, no ESME)."""

_DEVICE_TYPES: dict[str, str] = {
    _t.lower(): _t for _t in ("ESME", "GSME", "GPF", "CHF", "HCALCS", "PPMID", "IHD", "CAD", "SAPC")
}
"""A device-type cell (case, spaces and punctuation ignored) -> its DUIS ``DeviceType``: the values of the
DUIS XSD's ``DeviceType`` (8.2 Read Inventory's ``DSPInventory/Device``) and SAPC (later DUIS versions).
Only ESME rows are meters; any other value is refused (``unknown_device_type``)."""


class InventoryImportError(DuisgwError):
    """An inventory source that cannot be used at all (missing file, no usable header)."""

    code = "inventory_import"


# --------------------------------------------------------------------------------------------
# keys


def mpan_key(mpan: str) -> int | None:
    """The 64-bit key of a digit MPxN (spaces ignored), or None when it is not digits (1..15)."""
    s = mpan.strip().replace(" ", "")
    if 0 < len(s) <= 15 and s.isascii() and s.isdigit():
        return (len(s) << 56) | int(s)
    return None


def mpan_text(key: int) -> str:
    """The MPxN string of a digit key made by :func:`mpan_key`."""
    length = key >> 56
    return f"{key & ((1 << 56) - 1):0{length}d}"


class _IntIndex:
    """Open addressing (linear probing) from a 64-bit int key to an int value, in two arrays.

    No deletion: a key whose value no longer points anywhere keeps its slot with value ``_NONE``.
    """

    __slots__ = ("_keys", "_mask", "_shift", "_used", "_vals")

    def __init__(self, expected: int = 0) -> None:
        bits = 4
        while (1 << bits) * _MAX_LOAD < expected + 1:
            bits += 1
        self._alloc(bits)

    def _alloc(self, bits: int) -> None:
        size = 1 << bits
        self._keys = array("Q", bytes(8 * size))
        self._vals = array("i", [_EMPTY]) * size
        self._mask = size - 1
        self._shift = 64 - bits
        self._used = 0

    def __len__(self) -> int:
        return self._used

    @property
    def nbytes(self) -> int:
        return len(self._keys) * 8 + len(self._vals) * 4

    def get(self, key: int) -> int:
        """The value of ``key``, or ``_EMPTY`` (-1) when absent."""
        keys = self._keys
        vals = self._vals
        mask = self._mask
        i = ((key * _GOLDEN) & _M64) >> self._shift
        while True:
            v = vals[i]
            if v == _EMPTY:
                return _EMPTY
            if keys[i] == key:
                return v
            i = (i + 1) & mask

    def put(self, key: int, value: int) -> int:
        """Set ``key`` to ``value``; returns the previous value (``_EMPTY`` when new)."""
        keys = self._keys
        vals = self._vals
        mask = self._mask
        i = ((key * _GOLDEN) & _M64) >> self._shift
        while True:
            v = vals[i]
            if v == _EMPTY:
                break
            if keys[i] == key:
                vals[i] = value
                return v
            i = (i + 1) & mask
        if (self._used + 1) > len(vals) * _MAX_LOAD:
            self._grow()
            return self.put(key, value)
        keys[i] = key
        vals[i] = value
        self._used += 1
        return _EMPTY

    def _grow(self) -> None:
        old_keys, old_vals, used = self._keys, self._vals, self._used
        self._alloc(64 - self._shift + 1)
        keys, vals, mask, shift = self._keys, self._vals, self._mask, self._shift
        for key, value in zip(old_keys, old_vals, strict=True):
            if value == _EMPTY:
                continue
            i = ((key * _GOLDEN) & _M64) >> shift
            while vals[i] != _EMPTY:
                i = (i + 1) & mask
            keys[i] = key
            vals[i] = value
        self._used = used


# --------------------------------------------------------------------------------------------
# rows and reports


LEARNABLE_FIELDS = ("ch", "mpan", "manufacturer", "model")


@dataclass(frozen=True, slots=True)
class InventoryRow:
    """One ESME's links as stored. ``origin`` is ``"snapshot"`` or ``"learned"`` (traffic taught
    something about it); ``learned_fields`` names the fields that were learned (a subset of
    :data:`LEARNABLE_FIELDS`; a learned ``ch`` / ``mpan`` without a value is a link a removal ended)
    and ``learned_at`` when (POSIX seconds, None when unknown)."""

    esme: int
    ch: int | None
    mpan: str | None
    manufacturer: str | None = None
    model: str | None = None
    origin: str = "snapshot"
    learned_fields: tuple[str, ...] = ()
    learned_at: float | None = None

    def learned_link(self) -> LearnedLink:
        """The learned part of this row (for :meth:`Inventory.apply_learned`). A row keeps one time per
        ESME: each learned link takes it as the time of its evidence."""
        f = self.learned_fields
        at = self.learned_at
        return LearnedLink(
            self.esme,
            self.ch if "ch" in f else None,
            self.mpan if "mpan" in f else None,
            self.manufacturer if "manufacturer" in f else None,
            self.model if "model" in f else None,
            at,
            at if "ch" in f else None,
            at if "mpan" in f else None,
            tuple(n for n, v in (("ch", self.ch), ("mpan", self.mpan)) if n in f and v is None),
        )


@dataclass(frozen=True, slots=True)
class LearnedLink:
    """What traffic taught about one ESME: only the learned fields are set; ``at`` is the latest time
    of its evidence (POSIX seconds) or None when the caller gave none; ``ch_at`` / ``mpan_at`` the
    time of the evidence behind the Comms Hub / MPxN link or its end (None: learned without a time,
    or, for the merge with a snapshot, ``at``)."""

    esme: int
    ch: int | None = None
    mpan: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    at: float | None = None
    ch_at: float | None = None
    mpan_at: float | None = None
    ended: tuple[str, ...] = ()
    """Links a removal ended (``ch`` / ``mpan``, then None), at ``ch_at`` / ``mpan_at``."""
    ch_ended_by: int | None = None
    """The Comms Hub whose end ended the Comms Hub link (``ch`` in ``ended``): ``ch_at`` is then the time
    of the link evidence it ended (:class:`gateway.engine.state.LearnedLink`); None for a removal."""


@dataclass(slots=True)
class InventoryImportReport:
    source: str
    source_sha256: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    rows_read: int = 0
    blank: int = 0
    accepted: int = 0
    duplicates: int = 0
    learned: int = 0
    hub_ends: int = 0
    """Comms Hubs whose end the file records (``origin`` = ``hub-end`` rows of an export, :meth:`Inventory.save_csv`)."""
    skipped: int = 0
    """Rows of a device other than an ESME (a file with a device-type column): not meters, left out."""
    skipped_by_type: dict[str, int] = field(default_factory=dict)
    rejected_count: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    warning_count: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)
    max_rejects: int = 100

    def reject(self, row: int, reason: str, detail: str) -> None:
        self.rejected_count += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        if len(self.rejected) < self.max_rejects:
            self.rejected.append({"row": row, "reason": reason, "detail": detail})

    def warn(self, row: int, reason: str, detail: str) -> None:
        """Something the operator should look at that rejected no row (listed up to ``max_rejects``)."""
        self.warning_count += 1
        if len(self.warnings) < self.max_rejects:
            self.warnings.append({"row": row, "reason": reason, "detail": detail})

    def check_rejected(self, limit: float, setting: str) -> None:
        """Raise :class:`InventoryImportError` when more than ``limit`` of the non-blank rows were rejected
        (rows of other device types, skipped, are not counted)."""
        check_rejected(self, limit, setting, InventoryImportError, skipped=self.skipped)

    def summary(self) -> str:
        """One line: rows read, blank and rejected (by reason), skipped by device type, and the first
        rejected row."""
        r = self.rejected[0] if self.rejected else None
        first = f"row {r['row']}: {r['reason']}: {r['detail']}" if r is not None else None
        text = summarise(self.rows_read, self.blank, self.rejected_count, self.rejected_by_reason, None)
        if self.skipped:
            by_type = ", ".join(f"{t} {n:,}" for t, n in sorted(self.skipped_by_type.items()))
            text += f", {self.skipped:,} skipped as not ESMEs: {by_type}"
        if first:
            text += f"; first: {first[:160]}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_sha256": self.source_sha256,
            "columns": self.columns,
            "rows_read": self.rows_read,
            "blank": self.blank,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "learned": self.learned,
            "hub_ends": self.hub_ends,
            "skipped": self.skipped,
            "skipped_by_type": dict(sorted(self.skipped_by_type.items())),
            "rejected_count": self.rejected_count,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "rejected": self.rejected,
            "warning_count": self.warning_count,
            "warnings": self.warnings,
        }


@dataclass(slots=True)
class MergeReport:
    """What a reload did with the learned links of the inventory it replaced."""

    kept: int = 0
    superseded: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"kept": self.kept, "superseded": self.superseded}


def _posix(at: datetime | float | None) -> float | None:
    if at is None:
        return None
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError("times must be timezone-aware")
        return at.timestamp()
    return float(at)


def _utc(t: float | None) -> datetime | None:
    """A stored evidence time as the aware date-time it was given as (exact to the microsecond)."""
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _takes(
    new: float | None, old: float | None, new_ends: bool, old_ended: bool, same_ended_link: bool = False
) -> bool:
    """The ordering rule of :func:`gateway.engine.state.merge_learned` for one link already learned:
    evidence without a time is older than any timed evidence; of the same instant a removal
    (``new_ends`` / ``old_ended``: an end of the ESME's own link, not a hub's end, which is ordered by the
    time of the link it ended) wins over a link, and a link to the hub whose end ended the link of that
    instant (``same_ended_link``) loses; otherwise the later-applied evidence replaces."""
    if new == old:
        return not same_ended_link and (new_ends or not old_ended)
    return new is not None and (old is None or new > old)


# --------------------------------------------------------------------------------------------
# the inventory


class Inventory:
    """The link table (implements :class:`gateway.engine.ports.InventoryView`)."""

    def __init__(self, expected: int = 0, *, as_of: datetime | float | None = None) -> None:
        self.as_of: float | None = _posix(as_of)
        """Time the snapshot describes (POSIX seconds), or None when unknown."""
        self._esme = array("Q")
        self._ch = array("Q")
        self._mpan = array("Q")
        self._mfr = array("I")
        self._model = array("I")
        self._next_ch = array("i")
        self._next_mpan = array("i")
        self._lmask = array("B")
        self._lat = array("d")
        self._times: dict[int, tuple[float | None, float | None]] = {}
        """Row -> times (POSIX seconds) of the evidence behind its learned Comms Hub and MPxN links
        (sparse: only rows with a timed learned link; absent or None = learned without a time)."""
        self._hub_ends: dict[int, float] = {}
        """Comms Hub -> time (POSIX seconds) of its latest end (:meth:`end_hub`)."""
        self._ch_ended_by: dict[int, int] = {}
        """Row -> the Comms Hub whose end ended its learned Comms Hub link (sparse: only such rows; their
        Comms Hub time is the time of the link evidence the end ended). An ended link of a row absent
        here was ended by a removal of the ESME's own link."""
        self._undo: dict[int, _SavedRow] | None = None
        """While learning is a transaction (:meth:`begin_learning`): each row that existed when it began
        and was changed since, as it was (ch, MPxN key, manufacturer, model, learned mask and time,
        link times); None outside a transaction."""
        self._undo_rows = 0
        self._undo_hubs: dict[int, float | None] = {}
        self._strings: list[str | None] = [None]
        self._string_ids: dict[str, int] = {}
        self._mpan_texts: list[str] = []
        self._mpan_text_ids: dict[str, int] = {}
        self._by_esme = _IntIndex(expected)
        self._by_ch = _IntIndex(expected)
        self._by_mpan = _IntIndex(expected)

    # -- the InventoryView questions -----------------------------------------------------------

    def esmes_for_ch(self, ch: int) -> Sequence[int]:
        if type(ch) is not int or ch == NO_EUI:
            return ()
        row = self._by_ch.get(ch)
        if row < 0:
            return ()
        out: list[int] = []
        chs, nxt, esmes = self._ch, self._next_ch, self._esme
        while row >= 0:
            if chs[row] == ch:
                out.append(esmes[row])
            row = nxt[row]
        return tuple(out)

    def esmes_for_mpan(self, mpan: str) -> Sequence[int]:
        key = self._mpan_lookup_key(mpan)
        if key is None:
            return ()
        row = self._by_mpan.get(key)
        if row < 0:
            return ()
        out: list[int] = []
        mp, nxt, esmes = self._mpan, self._next_mpan, self._esme
        while row >= 0:
            if mp[row] == key:
                out.append(esmes[row])
            row = nxt[row]
        return tuple(out)

    def ch_for_esme(self, esme: int) -> int | None:
        row = self._row(esme)
        if row < 0:
            return None
        ch = self._ch[row]
        return None if ch == NO_EUI else ch

    def mpan_for_esme(self, esme: int) -> str | None:
        row = self._row(esme)
        return None if row < 0 else self._decode_mpan(self._mpan[row])

    def manufacturer_of(self, esme: int) -> str | None:
        row = self._row(esme)
        return None if row < 0 else self._strings[self._mfr[row]]

    def model_of(self, esme: int) -> str | None:
        row = self._row(esme)
        return None if row < 0 else self._strings[self._model[row]]

    def esmes_of_manufacturer(self, manufacturer: str) -> Iterator[int]:
        """Every ESME recorded with this manufacturer (case-insensitive; a scan, for scope=manufacturer
        set-up, not for the per-alert path)."""
        wanted = {
            i
            for i, s in enumerate(self._strings)
            if s is not None and s.casefold() == manufacturer.casefold()
        }
        return (e for e, m in zip(self._esme, self._mfr, strict=True) if m in wanted)

    def __contains__(self, esme: object) -> bool:
        return type(esme) is int and self._row(esme) >= 0

    def __len__(self) -> int:
        return len(self._esme)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns and hash tables (strings excluded)."""
        cols = (self._esme, self._ch, self._mpan, self._mfr, self._model, self._next_ch, self._next_mpan)
        n = sum(len(c) * c.itemsize for c in cols)
        n += len(self._lmask) + len(self._lat) * 8
        return n + self._by_esme.nbytes + self._by_ch.nbytes + self._by_mpan.nbytes

    # -- learning ----------------------------------------------------------------------------

    def learn(
        self,
        esme: int,
        ch: int | None = None,
        mpan: str | None = None,
        manufacturer: str | None = None,
        model: str | None = None,
        *,
        at: datetime | float | None = None,
    ) -> bool:
        """Record links seen in verified traffic; returns True when any stored link changed.

        ``None`` fields are left as they are. ``at`` is the evidence's own time: a Comms Hub or MPxN
        link is taken only when no newer evidence of that link is known (evidence without a time is
        older than any timed evidence), so a late message cannot undo what a newer one taught; it is
        also the time kept for the merge on reload.
        """
        _check_eui(esme, "esme")
        if ch is not None:
            _check_eui(ch, "ch")
        when = _posix(at)
        return self._apply(esme, ch, mpan, manufacturer, model, when, when, when)

    def unlink(
        self, esme: int, *, at: datetime | float | None = None, ch: bool = True, mpan: bool = True
    ) -> bool:
        """End the ESME's Comms Hub and/or MPxN link as of ``at`` (a removal: the meter decommissioned or
        withdrawn, its hub decommissioned, its MPxN contradicted), unless newer evidence of the link is
        known; evidence older than ``at`` learned later does not restore it. An ESME not known yet gets a
        row without links, so that stale evidence cannot link it either. Returns True when a stored link
        changed."""
        _check_eui(esme, "esme")
        when = _posix(at)
        return self._apply(esme, None, None, None, None, when, when, when, ch, mpan)

    def learn_link(self, link: LinkRecord) -> LinkRecord | None:
        """:meth:`learn` for the engine (:class:`gateway.engine.ports.InventoryView`): each link with its
        own evidence time; returns the ESME's learned state when any of it changed (times too)."""
        _check_eui(link.esme, "esme")
        if link.ch is not None:
            _check_eui(link.ch, "ch")
        before = self.learned(link.esme)
        times = [t for t in (link.ch_time, link.mpan_time) if t is not None]
        when = max(times).timestamp() if times else None
        if when is None and link.ch_ended_by is not None:
            # a hub's end of a link without a time of its own (the snapshot's) is no evidence without a time: the
            # ESME keeps the learned time it has, the one its record (the times of its links) gives on a restart
            row = self._row(link.esme)
            if row >= 0 and self._lat[row] not in (_NOT_LEARNED, _NO_TIME):
                when = self._lat[row]
        self._apply(
            link.esme,
            link.ch,
            link.mpan,
            link.manufacturer,
            link.model,
            _posix(link.ch_time),
            _posix(link.mpan_time),
            when,
            "ch" in link.ended,
            "mpan" in link.ended,
            link.ch_ended_by,
        )
        after = self.learned(link.esme)
        return None if after == before else after

    def hub_end(self, ch: int) -> datetime | None:
        """The time of the latest end recorded for this Comms Hub (:meth:`end_hub`), None when none."""
        return _utc(self._hub_ends.get(ch))

    def end_hub(self, ch: int, at: datetime | float) -> bool:
        """Record the Comms Hub's end (``CHFDecommissioning``, a hub removed from the inventory) at ``at``
        (the latest end is kept) and end, as of ``at``, the Comms Hub link of every ESME behind it unless
        newer evidence of the link is known. Link evidence naming the hub that is not newer than its end,
        learned later, ends the ESME's Comms Hub link at the end's time instead of linking it (what it
        would have done had it arrived before the end); evidence newer than the end links as usual.
        Returns True when the recorded end changed."""
        _check_eui(ch, "ch")
        when = _posix(at)
        if when is None:
            raise ValueError("a hub's end needs a time")
        return self._end_hub(ch, when, True)

    def _end_hub(self, ch: int, when: float, end_rows: bool) -> bool:
        old = self._hub_ends.get(ch)
        changed = old is None or when > old
        if changed:
            if self._undo is not None and ch not in self._undo_hubs:
                self._undo_hubs[ch] = old
            self._hub_ends[ch] = when
        if end_rows:
            for esme in self.esmes_for_ch(ch):
                row = self._row(esme)
                linked = self._times.get(row, (None, None))[0] if self._lmask[row] & _L_CH else None
                if linked is not None and linked > when:
                    continue  # linked by evidence newer than the end (the hub re-commissioned)
                self._apply(esme, None, None, None, None, linked, None, when, True, False, ch)
        return changed

    def hub_ends(self) -> Iterator[tuple[int, float]]:
        """Every Comms Hub end recorded: ``(ch, time in POSIX seconds)``."""
        return iter(list(self._hub_ends.items()))

    def apply_hub_ends(self, ends: Iterable[tuple[int, float]]) -> None:
        """Record hub ends of another inventory (a reload): each is kept for the link evidence learned
        later; the Comms Hub links of this snapshot's ESMEs behind the hub end too when the end is newer
        than the snapshot's ``as_of`` (or it has none), as a learned end would."""
        as_of = self.as_of
        for ch, when in ends:
            self._end_hub(ch, when, as_of is None or when > as_of)

    # -- learning as a transaction -------------------------------------------------------------

    def begin_learning(self) -> None:
        """Make what is learned from now on undoable (:meth:`rollback_learning`) until
        :meth:`commit_learning`: a batch whose store commit fails must leave no link in force."""
        self._undo = {}
        self._undo_rows = len(self._esme)
        self._undo_hubs = {}

    def commit_learning(self) -> None:
        """Keep what was learned since :meth:`begin_learning`."""
        self._undo = None
        self._undo_hubs = {}

    def rollback_learning(self) -> None:
        """Return every row, chain and hub end to its state at :meth:`begin_learning` (rows added since
        are removed); nothing when no transaction is open."""
        undo = self._undo
        if undo is None:
            return
        self._undo = None
        first = self._undo_rows
        for row in range(len(self._esme) - 1, first - 1, -1):
            self._set_ch(row, NO_EUI)
            self._set_mpan(row, 0)
            self._by_esme.put(self._esme[row], _NONE)
            self._times.pop(row, None)
            self._ch_ended_by.pop(row, None)
        for col in (
            self._esme,
            self._ch,
            self._mpan,
            self._mfr,
            self._model,
            self._next_ch,
            self._next_mpan,
            self._lmask,
            self._lat,
        ):
            del col[first:]
        for row, (ch, mkey, mfr, model, lmask, lat, times, ended_by) in undo.items():
            if self._ch[row] != ch:
                self._set_ch(row, ch)
            if self._mpan[row] != mkey:
                self._set_mpan(row, mkey)
            self._mfr[row] = mfr
            self._model[row] = model
            self._lmask[row] = lmask
            self._lat[row] = lat
            if times is None:
                self._times.pop(row, None)
            else:
                self._times[row] = times
            if ended_by is None:
                self._ch_ended_by.pop(row, None)
            else:
                self._ch_ended_by[row] = ended_by
        for ch, when in self._undo_hubs.items():
            if when is None:
                self._hub_ends.pop(ch, None)
            else:
                self._hub_ends[ch] = when
        self._undo_hubs = {}

    def learned(self, esme: int) -> LinkRecord | None:
        """What traffic taught about ``esme`` (only the learned fields, each link with the time of its
        evidence; ``at`` None), or None when nothing was learned."""
        row = self._row(esme)
        if row < 0 or not self._lmask[row]:
            return None
        mask = self._lmask[row]
        ch_t, mpan_t = self._times.get(row, (None, None))
        strings = self._strings
        ch = self._ch[row]
        mkey = self._mpan[row]
        return LinkRecord(
            esme,
            None if not mask & _L_CH or ch == NO_EUI else ch,
            self._decode_mpan(mkey) if mask & _L_MPAN else None,
            strings[self._mfr[row]] if mask & _L_MFR else None,
            strings[self._model[row]] if mask & _L_MODEL else None,
            None,
            _utc(ch_t) if mask & _L_CH else None,
            _utc(mpan_t) if mask & _L_MPAN else None,
            _ended(mask, ch, mkey),
            self._ch_ended_by.get(row) if mask & _L_CH and ch == NO_EUI else None,
        )

    def _apply(
        self,
        esme: int,
        ch: int | None,
        mpan: str | None,
        manufacturer: str | None,
        model: str | None,
        ch_time: float | None,
        mpan_time: float | None,
        when: float | None,
        end_ch: bool = False,
        end_mpan: bool = False,
        ch_ended_by: int | None = None,
    ) -> bool:
        """The one writer of learned links (the rule of :func:`gateway.engine.state.merge_learned`, on
        the columns): ``end_ch`` / ``end_mpan`` end that link (a removal) instead of setting it; with
        ``ch_ended_by`` the Comms Hub link was ended by that hub's end, and ``ch_time`` is the time of the
        link evidence it ended. An ended link is a learned field whose column holds no link. Link evidence
        naming a Comms Hub whose end (:meth:`end_hub`) is not older than it is taken as that link ended by
        the hub. Returns True when a stored link changed. EUIs already checked."""
        mkey = self._mpan_store_key(mpan) if mpan is not None and mpan.strip() else None
        if end_ch:
            ch = NO_EUI
        if end_mpan:
            mkey = 0
        row = self._row(esme)
        changed = False
        undo = self._undo
        if row < 0:
            row = self._append(esme, NO_EUI, 0, 0, 0)
            changed = True
        elif undo is not None and row < self._undo_rows and row not in undo:
            undo[row] = (
                self._ch[row],
                self._mpan[row],
                self._mfr[row],
                self._model[row],
                self._lmask[row],
                self._lat[row],
                self._times.get(row),
                self._ch_ended_by.get(row),
            )
        lmask = self._lmask[row]
        old_ch_t, old_mpan_t = self._times.get(row, (None, None))
        if not end_ch:
            ch_ended_by = None
            if ch is not None and self._hub_ends:
                hub_end = self._hub_ends.get(ch)
                if hub_end is not None and (ch_time is None or ch_time <= hub_end):
                    # evidence of a link to a hub that ended since: the link, then the hub's end
                    ch, end_ch, ch_ended_by = NO_EUI, True, ch
        new_ch_t, new_mpan_t = old_ch_t, old_mpan_t
        mask = 0
        if ch is not None:
            ended_by = self._ch_ended_by.get(row) if lmask & _L_CH and self._ch[row] == NO_EUI else None
            old_removed = bool(lmask & _L_CH) and self._ch[row] == NO_EUI and ended_by is None
            removes = end_ch and ch_ended_by is None
            same = not end_ch and ended_by is not None and ch == ended_by
            if not lmask & _L_CH or _takes(ch_time, old_ch_t, removes, old_removed, same):
                mask |= _L_CH
                new_ch_t = ch_time
                if ch_ended_by is None:
                    if self._ch_ended_by.pop(row, None) is not None and ended_by is not None:
                        changed = True
                elif ended_by != ch_ended_by:
                    self._ch_ended_by[row] = ch_ended_by
                    changed = True
                if self._ch[row] != ch:
                    self._set_ch(row, ch)
                    changed = True
        if mkey is not None and (
            not lmask & _L_MPAN or _takes(mpan_time, old_mpan_t, end_mpan, self._mpan[row] == 0)
        ):
            mask |= _L_MPAN
            new_mpan_t = mpan_time
            if self._mpan[row] != mkey:
                self._set_mpan(row, mkey)
                changed = True
        if (new_ch_t, new_mpan_t) != (old_ch_t, old_mpan_t):
            if new_ch_t is None and new_mpan_t is None:
                self._times.pop(row, None)
            else:
                self._times[row] = (new_ch_t, new_mpan_t)
        if manufacturer is not None and manufacturer.strip():
            mask |= _L_MFR
            sid = self._intern(manufacturer.strip())
            if self._mfr[row] != sid:
                self._mfr[row] = sid
                changed = True
        if model is not None and model.strip():
            mask |= _L_MODEL
            sid = self._intern(model.strip())
            if self._model[row] != sid:
                self._model[row] = sid
                changed = True
        if mask or changed:
            self._lmask[row] |= mask
            stamp = _NO_TIME if when is None else when
            prev = self._lat[row]
            if prev == _NOT_LEARNED or stamp == _NO_TIME or (prev != _NO_TIME and stamp > prev):
                self._lat[row] = stamp
        return changed

    def learned_copy(self) -> Inventory:
        """What :meth:`learned_links` and :meth:`hub_ends` read, copied (C-speed copies of the columns: a few
        milliseconds for a 1.4 M-row inventory): an inventory answering only those two, which a reload reads
        in a worker thread while this one goes on learning (:meth:`InventoryRegistry.reload`)."""
        copy = Inventory(as_of=self.as_of)
        copy._esme = array("Q", self._esme)
        copy._ch = array("Q", self._ch)
        copy._mpan = array("Q", self._mpan)
        copy._mfr = array("I", self._mfr)
        copy._model = array("I", self._model)
        copy._lmask = array("B", self._lmask)
        copy._lat = array("d", self._lat)
        copy._times = dict(self._times)
        copy._ch_ended_by = dict(self._ch_ended_by)
        copy._hub_ends = dict(self._hub_ends)
        copy._strings = list(self._strings)
        copy._mpan_texts = list(self._mpan_texts)
        return copy

    def learned_links(self) -> Iterator[LearnedLink]:
        """The facts learned from traffic (only the learned fields of each ESME, with their times)."""
        strings = self._strings
        for row, mask in enumerate(self._lmask):
            if not mask and self._lat[row] == _NOT_LEARNED:
                continue
            at = self._lat[row]
            ch_t, mpan_t = self._times.get(row, (None, None))
            yield LearnedLink(
                esme=self._esme[row],
                ch=self._ch[row] if mask & _L_CH and self._ch[row] != NO_EUI else None,
                mpan=self._decode_mpan(self._mpan[row]) if mask & _L_MPAN else None,
                manufacturer=strings[self._mfr[row]] if mask & _L_MFR else None,
                model=strings[self._model[row]] if mask & _L_MODEL else None,
                at=None if at in (_NO_TIME, _NOT_LEARNED) else at,
                ch_at=ch_t if mask & _L_CH else None,
                mpan_at=mpan_t if mask & _L_MPAN else None,
                ended=_ended(mask, self._ch[row], self._mpan[row]),
                ch_ended_by=self._ch_ended_by.get(row) if mask & _L_CH and self._ch[row] == NO_EUI else None,
            )

    def apply_learned(self, links: Iterable[LearnedLink]) -> MergeReport:
        """Re-apply learned links on top of this inventory; a link (or a link's end) older than (or as
        old as) this snapshot's ``as_of`` is superseded and dropped (each by its own time, else the
        link's ``at``; one without any time is kept). A Comms Hub link ended by its hub's end goes by the
        time of the link evidence it ended only (none: older than the snapshot, whose link stands; the hub's
        end, :meth:`apply_hub_ends`, ends it when it is a link to that hub and the end is newer)."""
        report = MergeReport()
        as_of = self.as_of

        def fresh(t: float | None, at: float | None) -> bool:
            t = at if t is None else t
            return as_of is None or t is None or t > as_of

        def newer(t: float | None) -> bool:
            return as_of is None or (t is not None and t > as_of)

        for link in links:
            ch = link.ch if link.ch is not None and fresh(link.ch_at, link.at) else None
            mpan = link.mpan if link.mpan is not None and fresh(link.mpan_at, link.at) else None
            # a Comms Hub link ended by its hub's end is that link's evidence, by its own time (none: the snapshot's
            # link or evidence without one, older than any snapshot), followed by the end, which the hub keeps
            # (apply_hub_ends: it ends the new snapshot's link to the hub when it is newer than as_of)
            by_hub = link.ch_ended_by is not None
            ended = tuple(
                n
                for n, t in (("ch", link.ch_at), ("mpan", link.mpan_at))
                if n in link.ended and (newer(t) if n == "ch" and by_hub else fresh(t, link.at))
            )
            rest = fresh(None, link.at)
            mfr = link.manufacturer if rest else None
            model = link.model if rest else None
            if ch is None and mpan is None and not ended and mfr is None and model is None:
                report.superseded += 1
                continue
            by = link.ch_ended_by if "ch" in ended else None
            self._apply_link(
                LearnedLink(link.esme, ch, mpan, mfr, model, link.at, link.ch_at, link.mpan_at, ended, by)
            )
            report.kept += 1
        return report

    def _apply_link(self, link: LearnedLink) -> bool:
        """Apply one learned link (from :meth:`learned_links`, a row or a file), each link at its time."""
        _check_eui(link.esme, "esme")
        if link.ch is not None:
            _check_eui(link.ch, "ch")
        return self._apply(
            link.esme,
            link.ch,
            link.mpan,
            link.manufacturer,
            link.model,
            link.ch_at,
            link.mpan_at,
            link.at,
            "ch" in link.ended,
            "mpan" in link.ended,
            link.ch_ended_by,
        )

    # -- bulk load and export ----------------------------------------------------------------

    @classmethod
    def from_rows(
        cls, rows: Iterable[InventoryRow], *, expected: int = 0, as_of: datetime | float | None = None
    ) -> Inventory:
        """Build from rows (``snapshot_rows()`` of another inventory, a state store, a CSV): every row
        sets the base links, then the learned part of learned rows is re-marked as learned (so a
        later reload merges it as before). A repeated ESME: the later row wins."""
        inv = cls(expected, as_of=as_of)
        learned: list[LearnedLink] = []
        for r in rows:
            inv._put_snapshot_row(r.esme, r.ch, r.mpan, r.manufacturer, r.model)
            if r.origin == "learned":
                learned.append(r.learned_link())
        for link in learned:
            inv._apply_link(link)
        return inv

    def _put_snapshot_row(
        self, esme: int, ch: int | None, mpan: str | None, manufacturer: str | None, model: str | None
    ) -> None:
        _check_eui(esme, "esme")
        if ch is not None:
            _check_eui(ch, "ch")
        chv = NO_EUI if ch is None else ch
        mkey = self._mpan_store_key(mpan) if mpan else 0
        mfr = self._intern(manufacturer) if manufacturer else 0
        mdl = self._intern(model) if model else 0
        row = self._row(esme)
        if row < 0:
            self._append(esme, chv, mkey, mfr, mdl)
            return
        if self._ch[row] != chv:
            self._set_ch(row, chv)
        if self._mpan[row] != mkey:
            self._set_mpan(row, mkey)
        self._mfr[row] = mfr
        self._model[row] = mdl

    def snapshot_rows(self) -> Iterator[InventoryRow]:
        """Every row with its current links (``origin`` = learned when traffic taught anything)."""
        strings = self._strings
        for row, esme in enumerate(self._esme):
            ch = self._ch[row]
            at = self._lat[row]
            learned = at != _NOT_LEARNED
            mask = self._lmask[row]
            yield InventoryRow(
                esme=esme,
                ch=None if ch == NO_EUI else ch,
                mpan=self._decode_mpan(self._mpan[row]),
                manufacturer=strings[self._mfr[row]],
                model=strings[self._model[row]],
                origin="learned" if learned else "snapshot",
                learned_fields=tuple(f for bit, f in _FIELD_BITS if mask & bit),
                learned_at=at if learned and at != _NO_TIME else None,
            )

    def to_csv_text(self) -> str:
        """The CSV export (:meth:`save_csv`): one row per ESME, then one ``hub-end`` row per Comms Hub end.

        An ESME's row: its links in force (``esme``, ``comms_hub``, ``mpxn``, ``manufacturer``, ``model``),
        ``origin`` (``learned`` when traffic taught anything about it, else ``snapshot``), ``learned_fields`` (the
        fields learned; a learned ``ch`` / ``mpan`` with a blank link is a link that was ended), ``learned_at``
        (the latest time of its evidence), ``comms_hub_learned_at`` / ``mpxn_learned_at`` (the time of the
        evidence behind the learned Comms Hub / MPxN link or its end; blank: learned without a time) and
        ``comms_hub_ended_by`` (the Comms Hub whose end ended the Comms Hub link; its ``comms_hub_learned_at`` is
        then the time of the link evidence that end ended, blank for the snapshot's link; blank for a removal).
        A hub's end: ``origin`` = ``hub-end``, the hub in ``comms_hub``, the end's time in ``learned_at``, no
        ESME. Times are POSIX seconds (``repr`` of the float: exact). :func:`import_inventory_csv` reads it back
        to the same state (:meth:`learned_links`, :meth:`hub_ends`, every answer)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(_EXPORT_HEADER)

        def when(t: float | None) -> str:
            return "" if t is None else repr(t)

        for row, r in enumerate(self.snapshot_rows()):
            mask = self._lmask[row]
            ch_t, mpan_t = self._times.get(row, (None, None))
            ended_by = self._ch_ended_by.get(row) if mask & _L_CH and r.ch is None else None
            w.writerow(
                [
                    format_eui(r.esme),
                    "" if r.ch is None else format_eui(r.ch),
                    r.mpan or "",
                    r.manufacturer or "",
                    r.model or "",
                    r.origin,
                    " ".join(r.learned_fields),
                    when(r.learned_at),
                    when(ch_t) if mask & _L_CH else "",
                    when(mpan_t) if mask & _L_MPAN else "",
                    "" if ended_by is None else format_eui(ended_by),
                ]
            )
        for ch, at in sorted(self._hub_ends.items()):
            w.writerow(["", format_eui(ch), "", "", "", _HUB_END, "", repr(at), "", "", ""])
        return buf.getvalue()

    def save_csv(self, path: str | os.PathLike[str]) -> None:
        """Export every row (learned ones marked, with their times) and every hub's end atomically
        (:meth:`to_csv_text`); :meth:`load_csv` reads it back to the same state."""
        atomic_write_bytes(Path(path), self.to_csv_text().encode("utf-8"))

    @classmethod
    def load_csv(
        cls, path: str | os.PathLike[str], *, as_of: datetime | float | None = None, max_rejects: int = 100
    ) -> tuple[Inventory, InventoryImportReport]:
        return import_inventory_csv(path, as_of=as_of, max_rejects=max_rejects)

    # -- internals -------------------------------------------------------------------------

    def _row(self, esme: object) -> int:
        if type(esme) is not int or not 0 <= esme < NO_EUI:
            return -1
        return self._by_esme.get(esme)

    def _append(self, esme: int, ch: int, mkey: int, mfr: int, model: int) -> int:
        row = len(self._esme)
        self._esme.append(esme)
        self._ch.append(NO_EUI)
        self._mpan.append(0)
        self._mfr.append(mfr)
        self._model.append(model)
        self._next_ch.append(_END)
        self._next_mpan.append(_END)
        self._lmask.append(0)
        self._lat.append(_NOT_LEARNED)
        self._by_esme.put(esme, row)
        if ch != NO_EUI:
            self._set_ch(row, ch)
        if mkey:
            self._set_mpan(row, mkey)
        return row

    def _set_ch(self, row: int, ch: int) -> None:
        _relink(self._by_ch, self._ch, self._next_ch, row, ch, NO_EUI)

    def _set_mpan(self, row: int, mkey: int) -> None:
        _relink(self._by_mpan, self._mpan, self._next_mpan, row, mkey, 0)

    def _intern(self, s: str) -> int:
        sid = self._string_ids.get(s)
        if sid is None:
            sid = len(self._strings)
            self._strings.append(s)
            self._string_ids[s] = sid
        return sid

    def _mpan_store_key(self, mpan: str) -> int:
        key = mpan_key(mpan)
        if key is not None:
            return key
        text = mpan.strip()
        tid = self._mpan_text_ids.get(text)
        if tid is None:
            tid = len(self._mpan_texts)
            self._mpan_texts.append(text)
            self._mpan_text_ids[text] = tid
        return _TEXT_TAG | tid

    def _mpan_lookup_key(self, mpan: object) -> int | None:
        if not isinstance(mpan, str):
            return None
        key = mpan_key(mpan)
        if key is not None:
            return key
        tid = self._mpan_text_ids.get(mpan.strip())
        return None if tid is None else _TEXT_TAG | tid

    def _decode_mpan(self, key: int) -> str | None:
        if key == 0:
            return None
        if key >> 56 == 0xFF:
            return self._mpan_texts[key & ((1 << 56) - 1)]
        return mpan_text(key)

    def _bulk_load(
        self,
        esme: array[int],
        ch: array[int],
        mpan: array[int],
        mfr: array[int],
        model: array[int],
        by_esme: _IntIndex | None = None,
    ) -> None:
        """Adopt whole columns of distinct ESMEs at once (the fast path of an import); ``by_esme``
        is an already built ESME -> row index of exactly these rows."""
        n = len(esme)
        self._esme, self._ch, self._mpan, self._mfr, self._model = esme, ch, mpan, mfr, model
        self._next_ch = array("i", [_END]) * n
        self._next_mpan = array("i", [_END]) * n
        self._lmask = array("B", bytes(n))
        self._lat = array("d", [_NOT_LEARNED]) * n
        self._times = {}
        self._ch_ended_by = {}
        self._by_esme = by_esme if by_esme is not None else _build_unique(esme)
        self._by_ch = _build_chains(ch, self._next_ch, NO_EUI)
        self._by_mpan = _build_chains(mpan, self._next_mpan, 0)


def _ended(mask: int, ch: int, mkey: int) -> tuple[str, ...]:
    """The learned links of a row that were ended (learned, but the column holds no link)."""
    out: tuple[str, ...] = ("ch",) if mask & _L_CH and ch == NO_EUI else ()
    return (*out, "mpan") if mask & _L_MPAN and mkey == 0 else out


def _check_eui(value: object, what: str) -> None:
    if type(value) is not int or not 0 <= value < NO_EUI:
        raise ValueError(f"{what} must be an EUI-64 int below FF-FF-FF-FF-FF-FF-FF-FF, got {value!r}")


def _relink(index: _IntIndex, column: array[int], nxt: array[int], row: int, key: int, none: int) -> None:
    """Move ``row`` from the chain of its current key to the chain of ``key`` (``none``: no chain)."""
    old = column[row]
    if old != none:
        head = index.get(old)
        if head == row:
            index.put(old, nxt[row] if nxt[row] >= 0 else _NONE)
        else:
            prev = head
            while prev >= 0:
                if nxt[prev] == row:
                    nxt[prev] = nxt[row]
                    break
                prev = nxt[prev]
    column[row] = key
    if key == none:
        nxt[row] = _END
        return
    head = index.get(key)
    nxt[row] = head if head >= 0 else _END
    index.put(key, row)


def _build_unique(keys: array[int]) -> _IntIndex:
    index = _IntIndex(len(keys))
    tkeys, tvals, mask, shift = index._keys, index._vals, index._mask, index._shift
    golden, m64 = _GOLDEN, _M64
    for row, key in enumerate(keys):
        i = ((key * golden) & m64) >> shift
        while tvals[i] != _EMPTY:
            i = (i + 1) & mask
        tkeys[i] = key
        tvals[i] = row
    index._used = len(keys)
    return index


def _build_chains(keys: array[int], nxt: array[int], none: int) -> _IntIndex:
    """Index rows by a non-unique key: the table holds each key's first row, ``nxt`` the chain."""
    index = _IntIndex(len(keys))
    tkeys, tvals, mask, shift = index._keys, index._vals, index._mask, index._shift
    golden, m64 = _GOLDEN, _M64
    used = 0
    for row, key in enumerate(keys):
        if key == none:
            continue
        i = ((key * golden) & m64) >> shift
        while True:
            v = tvals[i]
            if v == _EMPTY:
                tkeys[i] = key
                tvals[i] = row
                used += 1
                break
            if tkeys[i] == key:
                nxt[row] = v
                tvals[i] = row
                break
            i = (i + 1) & mask
    index._used = used
    return index


# --------------------------------------------------------------------------------------------
# CSV import


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_UNAMBIGUOUS = ("esme", "comms_hub", "mpxn", "manufacturer", "device_type")
"""Fields two header cells must not both name (the decision depends on them): an error, not a guess."""


def _map_header(header: Sequence[str], where: str) -> dict[str, int]:
    """Field -> column index. A ``device_id`` column is the ESME column only in a file with a device-type
    column and no ESME column (an export of several device types); it is dropped otherwise."""
    alias_to_field = {alias: f for f, aliases in _COLUMN_ALIASES.items() for alias in aliases}
    found: dict[str, int] = {}
    twice: dict[str, tuple[int, int]] = {}  # field -> the first two columns naming it
    for i, cell in enumerate(header):
        f = alias_to_field.get(_norm(cell))
        if f is None:
            continue
        if f not in found:
            found[f] = i
        elif f not in twice:
            twice[f] = (found[f], i)
    device_id = found.pop("device_id", None)
    if device_id is not None and "device_type" in found and "esme" not in found:
        found["esme"] = device_id
        twice["esme"] = twice.get("device_id", (device_id, device_id))
    for f, (j, i) in twice.items():
        if f in _UNAMBIGUOUS and i != j:
            raise InventoryImportError(
                f"{where}: columns {j + 1} ({header[j].strip()!r}) and {i + 1} ({header[i].strip()!r}) both "
                f"name {f}: rename or remove one"
            )
    return found


_SCIENTIFIC = re.compile(r"[0-9](?:\.[0-9]+)?[eE][+-]?[0-9]+|[0-9]+\.[0-9]*")


def _excel_number_hint(raw: str) -> str:
    """A hint when a cell holds what Excel writes for a long number (1.23457E+12, 1234567890123.0)."""
    if _SCIENTIFIC.fullmatch(raw):
        return (
            ": Excel wrote the value as a number (scientific notation or a decimal point), so digits or "
            "leading zeros may be lost; format the column as Text before exporting"
        )
    return ""


def import_inventory_csv(
    path: str | os.PathLike[str], *, as_of: datetime | float | None = None, max_rejects: int = 100
) -> tuple[Inventory, InventoryImportReport]:
    """Load an inventory snapshot CSV (decoded as :func:`gateway.guids.decode_text` does: byte-order
    mark, else UTF-8, else Windows-1252; a workbook is refused: export it as CSV).

    The first non-blank record is the header; it must name ``esme``, ``comms_hub`` and ``mpxn``
    (case-insensitive; aliases such as ``ch``, ``Comms Hub``, ``mpan``, ``MPAN Core`` accepted) and
    may name ``manufacturer`` and ``model``. Files written by :meth:`Inventory.save_csv` also carry
    ``origin``, ``learned_fields``, ``learned_at``, ``comms_hub_learned_at``, ``mpxn_learned_at`` and
    ``comms_hub_ended_by``, and ``hub-end`` rows (:meth:`Inventory.to_csv_text`): learned rows come back as
    learned links, each at its own time and a Comms Hub link ended by a hub's end as that (without the last
    three columns, as an earlier version wrote: each at ``learned_at``, an ended link a removal), and the hubs'
    ends as they were (``hub_ends`` in the report; a hub-end row without a usable hub or time, or with an ESME,
    is rejected ``bad_hub_end``; a hub named for a link that is not a learned, ended one
    ``bad_comms_hub_ended_by``). Per row: the ESME must be
    an EUI-64; the CH an EUI-64 or blank; the MPxN digits (spaces ignored) or blank. A repeated ESME
    with the same links counts as a duplicate; with different links every row of it is rejected
    (``conflicting_duplicate``) and the ESME left out: which hub it is on is not known. Two header
    cells naming the ESME, CH, MPxN or manufacturer column are an error. An MPxN given for ESMEs on
    different hubs is a warning (``mpxn_on_several_hubs``): an AD1 of any of them joins them all. A
    13-digit MPxN whose check digit is wrong (:mod:`gateway.mpan`) is a warning too
    (``bad_mpan_check_digit``, with the row's line): the row is imported without its MPxN (its other
    links are good; a link through an MPAN that cannot be valid would only ever join wrongly). So is an
    MPxN of digits that are not 13 (``mpxn_not_mpan``): every row imported is an ESME (the inventory holds
    no other device type), whose MPxN is its MPAN core, never a gas meter's MPRN (6 to 10 digits).

    A file may list several device types (an 8.2 Read Inventory style export) in a ``device_type``
    column (``Device Type``, ``DeviceType``, ``devtype``); its ESME column may then be named ``Device ID``
    (``DeviceID``, ``Device EUI``, ``Device GUID``, ``Device``). Each row's type is read case-insensitively
    (spaces and punctuation ignored) as one of the DUIS ``DeviceType`` values (:data:`_DEVICE_TYPES`):
    ESME rows are imported; rows of another known type (a GSME, whose MPxN is an MPRN; a CHF, the hub
    itself; GPF, PPMID, IHD, CAD, HCALCS, SAPC) are skipped, counted per type (``skipped_by_type``) with
    one warning ``skipped_device_type`` per type naming its first row, and count toward no rejection
    limit; a row with another value is rejected (``unknown_device_type``, or ``missing_device_type``
    when blank). Without the column every row is taken as an ESME.
    """
    p = Path(path)
    if not p.is_file():
        raise InventoryImportError(f"no such file: {p}")
    stable = StableRead(p, InventoryImportError)
    report = InventoryImportReport(source=str(p), max_rejects=max_rejects)
    report.source_sha256 = file_sha256(p)
    text = decode_text(p.read_bytes(), p.name, InventoryImportError, "export it as CSV")
    records = CsvLines(
        csv.reader(io.StringIO(text, newline=""), sniff_dialect(text, csv.excel)),
        p.name,
        InventoryImportError,
    )
    reader = iter(records)
    header_line = 0
    header: list[str] | None = None
    for rec in reader:
        if any(c.strip() for c in rec) and not rec[0].lstrip().startswith("#"):
            header = rec
            header_line = records.start
            break
    if header is None:
        raise InventoryImportError(f"{p.name}: empty file")
    cols = _map_header(header, f"{p.name}: header row {header_line}")
    missing = [f for f in _REQUIRED if f not in cols]
    if missing:
        raise InventoryImportError(
            f"{p.name}: header row {header_line} does not name {', '.join(missing)} (found: {header})"
        )
    report.columns = {f: header[i].strip() for f, i in cols.items()}

    c_esme, c_ch, c_mp = cols["esme"], cols["comms_hub"], cols["mpxn"]
    c_mfr, c_model = cols.get("manufacturer"), cols.get("model")
    c_origin, c_at, c_fields = cols.get("origin"), cols.get("learned_at"), cols.get("learned_fields")
    # an export's times of each learned link and the hub that ended a Comms Hub link (Inventory.save_csv); an
    # export without them reads each learned link at learned_at, an ended Comms Hub link as a removal
    c_ch_at, c_mp_at = cols.get("comms_hub_learned_at"), cols.get("mpxn_learned_at")
    c_ended_by = cols.get("comms_hub_ended_by")
    hub_ends: dict[int, float] = {}  # an export's hub-end rows: Comms Hub -> the latest end
    c_type = cols.get("device_type")
    width = max(cols.values()) + 1
    device_types = _DEVICE_TYPES
    skipped: dict[str, list[int]] = {}  # device type -> [rows, first row]

    esmes = array("Q")
    chs = array("Q")
    mps = array("Q")
    mfrs = array("I")
    models = array("I")
    strings: list[str | None] = [None]
    string_ids: dict[str, int] = {}
    rownums = array("I")  # spreadsheet row of each accepted ESME (for duplicate reports)
    # ESME -> row: becomes the inventory's ESME index. Sized by the line ends the csv module knows (LF,
    # CRLF, and CR alone as Excel for Mac writes): the probe below never grows the table, so it must
    # have room for every record
    lines = text.count("\n") + text.count("\r") - text.count("\r\n") + 1
    seen = _IntIndex(lines)
    tkeys, tvals, tmask, shift = seen._keys, seen._vals, seen._mask, seen._shift
    golden, m64 = _GOLDEN, _M64
    learned: list[LearnedLink] = []
    conflicted: dict[int, int] = {}  # accepted row -> first row that contradicts it
    fast = fast_parse_eui
    rows_read = blank = 0

    def intern(s: str) -> int:
        sid = string_ids.get(s)
        if sid is None:
            sid = len(strings)
            strings.append(s)
            string_ids[s] = sid
        return sid

    for rec in reader:
        rownum = records.start  # the line the record starts on (a quoted field may hold line breaks)
        rows_read += 1
        if len(rec) < width:
            if not any(c.strip() for c in rec):
                blank += 1
                continue
            rec = rec + [""] * (width - len(rec))
        origin = rec[c_origin].strip().lower() if c_origin is not None else ""
        if origin == _HUB_END:
            # an export's record of a Comms Hub's end (Inventory.save_csv): kept for the link evidence learned
            # later; it ends no row of the file (the rows are as the export found them, the end applied)
            hub_end = _hub_end_cells(rec[c_esme], rec[c_ch], rec[c_at] if c_at is not None else "")
            if hub_end is None:
                report.reject(
                    rownum,
                    "bad_hub_end",
                    "a hub-end row names a Comms Hub (an EUI-64) and the time of its end (learned_at), and no ESME",
                )
            elif hub_end[1] > hub_ends.get(hub_end[0], -math.inf):
                hub_ends[hub_end[0]] = hub_end[1]
            continue
        if c_type is not None:
            raw = rec[c_type]
            if raw != "ESME":
                kind = device_types.get(_norm(raw))
                if kind != "ESME":
                    if kind is not None:  # a device of another type: no meter, no link to import
                        seen_kind = skipped.get(kind)
                        if seen_kind is None:
                            skipped[kind] = [1, rownum]
                        else:
                            seen_kind[0] += 1
                    elif not any(c.strip() for c in rec):
                        blank += 1
                    elif not raw.strip():
                        report.reject(rownum, "missing_device_type", "no device type in the row")
                    else:
                        report.reject(
                            rownum,
                            "unknown_device_type",
                            f"device type {raw.strip()[:40]!r} is none of {', '.join(device_types.values())}",
                        )
                    continue
        raw = rec[c_esme].strip()
        if not raw:
            if not any(c.strip() for c in rec):
                blank += 1
            else:
                report.reject(rownum, "missing_esme", "no ESME EUI in the row")
            continue
        try:
            esme = fast(raw)
        except EUIError as e:
            report.reject(rownum, "bad_esme", f"{e}{_excel_number_hint(raw)}")
            continue
        if esme == NO_EUI:
            report.reject(rownum, "bad_esme", "FF-FF-FF-FF-FF-FF-FF-FF is reserved")
            continue
        raw = rec[c_ch].strip()
        if raw:
            try:
                ch = fast(raw)
            except EUIError as e:
                report.reject(rownum, "bad_comms_hub", f"{e}{_excel_number_hint(raw)}")
                continue
            if ch == NO_EUI:
                report.reject(rownum, "bad_comms_hub", "FF-FF-FF-FF-FF-FF-FF-FF is reserved")
                continue
        else:
            ch = NO_EUI
        raw = rec[c_mp].strip()
        if raw:
            if len(raw) <= 15 and raw.isdigit() and raw.isascii():
                mk = (len(raw) << 56) | int(raw)
            else:
                key = mpan_key(raw)
                if key is None:
                    report.reject(
                        rownum, "bad_mpxn", f"MPxN must be 1-15 digits: {raw[:40]!r}{_excel_number_hint(raw)}"
                    )
                    continue
                mk = key
            if mk >> 56 == 13:
                digits = mpan_text(mk)
                if check_char_of(digits) != digits[12]:
                    # no link through an MPAN that cannot be valid; the row's other links are good
                    report.warn(
                        rownum,
                        "bad_mpan_check_digit",
                        f"MPxN {digits} fails the MPAN check digit (expected {check_char_of(digits)}, "
                        f"not {digits[12]}): the row is imported without it",
                    )
                    mk = 0
            else:
                # every row imported is an ESME, whose MPxN is its 13-digit MPAN core: a gas meter's MPRN or a
                # cut or padded MPAN is no link an AD1 (an electricity alert) may join through
                report.warn(
                    rownum,
                    "mpxn_not_mpan",
                    f"MPxN {mpan_text(mk)} is not a 13-digit MPAN core ({mk >> 56} digits; an ESME's MPxN "
                    "is its MPAN): the row is imported without it",
                )
                mk = 0
        else:
            mk = 0
        mfr_s = rec[c_mfr].strip() if c_mfr is not None else ""
        model_s = rec[c_model].strip() if c_model is not None else ""
        link: LearnedLink | None = None
        if origin == "learned":
            at_s = rec[c_at].strip() if c_at is not None else ""
            try:
                at = _time_cell(at_s)
            except ValueError:
                report.reject(
                    rownum, "bad_learned_at", f"learned_at is not a time (POSIX seconds): {at_s[:40]!r}"
                )
                continue
            fields = tuple(rec[c_fields].split()) if c_fields is not None else LEARNABLE_FIELDS
            link = InventoryRow(
                esme,
                None if ch == NO_EUI else ch,
                mpan_text(mk) if mk else None,
                mfr_s or None,
                model_s or None,
                "learned",
                fields,
                at,
            ).learned_link()
            if c_ch_at is not None or c_mp_at is not None:  # each link's own time (blank: without one)
                try:
                    ch_at = _time_cell(rec[c_ch_at]) if c_ch_at is not None else at
                    mpan_at = _time_cell(rec[c_mp_at]) if c_mp_at is not None else at
                except ValueError:
                    report.reject(
                        rownum,
                        "bad_learned_at",
                        "comms_hub_learned_at / mpxn_learned_at is not a time (POSIX seconds): "
                        f"{(rec[c_ch_at] if c_ch_at is not None else '')[:40]!r}, "
                        f"{(rec[c_mp_at] if c_mp_at is not None else '')[:40]!r}",
                    )
                    continue
                link = replace(
                    link,
                    ch_at=ch_at if "ch" in fields else None,
                    mpan_at=mpan_at if "mpan" in fields else None,
                )
        # (read only in a file that has the column: a snapshot's rows pay nothing for it)
        ended_by_s = rec[c_ended_by].strip() if c_ended_by is not None else ""
        if ended_by_s:
            try:
                ended_by = fast(ended_by_s)
            except EUIError as e:
                report.reject(rownum, "bad_comms_hub_ended_by", f"{e}{_excel_number_hint(ended_by_s)}")
                continue
            if ended_by == NO_EUI or link is None or "ch" not in link.ended:
                report.reject(
                    rownum,
                    "bad_comms_hub_ended_by",
                    f"comms_hub_ended_by {ended_by_s[:40]!r} on a row whose Comms Hub link is not a learned link "
                    "that was ended (origin learned, ch learned, comms_hub blank)",
                )
                continue
            link = replace(link, ch_ended_by=ended_by)
        mfr = string_ids.get(mfr_s, 0) if mfr_s else 0
        if mfr == 0 and mfr_s:
            mfr = intern(mfr_s)
        mdl = string_ids.get(model_s, 0) if model_s else 0
        if mdl == 0 and model_s:
            mdl = intern(model_s)
        # duplicate check and ESME index in one probe of the pre-sized table (never grows here)
        i = ((esme * golden) & m64) >> shift
        while True:
            prev = tvals[i]
            if prev == _EMPTY or tkeys[i] == esme:
                break
            i = (i + 1) & tmask
        if prev >= 0:
            if chs[prev] == ch and mps[prev] == mk and mfrs[prev] == mfr and models[prev] == mdl:
                report.duplicates += 1
            else:
                report.reject(
                    rownum,
                    "conflicting_duplicate",
                    f"ESME {format_eui(esme)} already listed at row {rownums[prev]} with other links: "
                    "left out of the inventory",
                )
                conflicted.setdefault(prev, rownum)
            continue
        if link is not None:
            learned.append(link)
            report.learned += 1
        row = len(esmes)
        tkeys[i] = esme
        tvals[i] = row
        rownums.append(rownum)
        esmes.append(esme)
        chs.append(ch)
        mps.append(mk)
        mfrs.append(mfr)
        models.append(mdl)

    stable.check()
    for kind, (count, first_row) in sorted(skipped.items(), key=lambda kv: kv[1][1]):
        report.skipped_by_type[kind] = count
        report.skipped += count
        report.warn(
            first_row,
            "skipped_device_type",
            f"{count:,} {'row' if count == 1 else 'rows'} of device type {kind} (the first at this row) "
            "skipped: only ESMEs are meters",
        )
    for line, detail in records.warnings():
        report.warn(line, "multiline_record", detail)
    if conflicted:
        # an ESME whose rows disagree on its links is left out: which hub or MPAN it has is not known,
        # and joining it to the wrong one lets its activation suppress another premises' outage
        for prev, other in conflicted.items():
            report.reject(
                rownums[prev],
                "conflicting_duplicate",
                f"ESME {format_eui(esmes[prev])} listed again at row {other} with other links: left out of the "
                "inventory",
            )
        report.rejected.sort(key=lambda r: r["row"])
        gone = {esmes[prev] for prev in conflicted}
        keep = [r for r in range(len(esmes)) if r not in conflicted]
        esmes, chs, mps, mfrs, models, rownums = (
            array(a.typecode, [a[r] for r in keep]) for a in (esmes, chs, mps, mfrs, models, rownums)
        )
        learned = [link for link in learned if link.esme not in gone]
        report.learned = len(learned)
        by_esme = None  # rebuilt from the rows kept
    else:
        seen._used = len(esmes)
        by_esme = seen
    report.rows_read = rows_read
    report.blank = blank
    report.accepted = len(esmes)
    report.hub_ends = len(hub_ends)
    if not esmes and not hub_ends and rows_read:
        # rows, and not one ESME among them: no AD1 could be joined. A header alone is a deliberately
        # empty snapshot
        raise InventoryImportError(f"{p.name}: no ESME accepted ({report.summary()})")
    inv = Inventory(0, as_of=as_of)
    inv._strings = strings
    inv._string_ids = string_ids
    inv._bulk_load(esmes, chs, mps, mfrs, models, by_esme)
    _warn_shared_mpxn(inv, rownums, report)
    del rownums
    for link in learned:
        inv._apply_link(link)
    # after the learned links: the rows are the state the export found, each hub's end already applied to them
    for hub, end in hub_ends.items():
        inv._end_hub(hub, end, False)
    return inv, report


def _time_cell(raw: str) -> float | None:
    """A time cell of an export (POSIX seconds; blank: none); ValueError unless a number that an aware date-time
    holds (years 1 to 9999): the inventory answers each time it keeps as one (:func:`_utc`), so a time beyond (``inf``,
    ``nan``, ``1e18``) would make every question about its meter or hub raise."""
    raw = raw.strip()
    if not raw:
        return None
    t = float(raw)
    if not math.isfinite(t):
        raise ValueError(raw)
    try:
        _utc(t)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(raw) from exc
    return t


def _hub_end_cells(esme: str, ch: str, at: str) -> tuple[int, float] | None:
    """A hub-end row's hub and time, or None when it has no usable hub (an EUI-64), no usable time, or an ESME."""
    if esme.strip() or not ch.strip():
        return None
    try:
        hub = fast_parse_eui(ch.strip())
        when = _time_cell(at)
    except (EUIError, ValueError):
        return None
    return None if hub == NO_EUI or when is None else (hub, when)


def _warn_shared_mpxn(inv: Inventory, rownums: array[int], report: InventoryImportReport) -> None:
    """Warn once for each MPxN given for ESMEs on different Comms Hubs: an AD1 names its MPxN, so the
    AD1 of any of those hubs joins all of them (legitimate for a meter exchange listed with both
    meters, otherwise a data error that lets one premises' activation suppress another's outage).
    One walk of each MPxN's chain: linear however many rows share a value."""
    chs, mps, nxt, esmes = inv._ch, inv._mpan, inv._next_mpan, inv._esme
    found: list[tuple[int, int, int, int]] = []  # (first row, row on another hub, ESMEs, hubs)
    for head in inv._by_mpan._vals:
        if head < 0 or nxt[head] < 0:  # no MPxN here, or one ESME only
            continue
        rows = []
        row = head
        while row >= 0:  # the chain runs from the last row of an MPxN back to its first
            rows.append(row)
            row = nxt[row]
        if len(rows) < 2:
            continue
        hub_count = len({chs[r] for r in rows})
        if hub_count > 1:
            rows.reverse()
            other = next(r for r in rows if chs[r] != chs[rows[0]])
            found.append((rows[0], other, len(rows), hub_count))
    for first, other, n, hubs in sorted(found):
        report.warn(
            rownums[other],
            "mpxn_on_several_hubs",
            f"MPxN {mpan_text(mps[other])} is given for {n} ESMEs on {hubs} Comms Hubs (also ESME "
            f"{format_eui(esmes[first])}, row {rownums[first]}): an AD1 of any of those hubs joins all of them",
        )


# --------------------------------------------------------------------------------------------
# run-time replacement


class InventoryRegistry:
    """Holds the inventory in force (an InventoryView itself). Reads use ``current`` without a lock;
    ``learn`` and ``reload`` are serialised, and ``reload`` swaps the reference only after the new
    snapshot has been merged with the learned links (see the module docstring for the merge rule).

    The merge itself (every learned link re-applied on the new snapshot: about 8 µs a link, seconds with
    hundreds of thousands learned) runs without the lock, on a copy of what was learned taken between two
    learning transactions; what is learned meanwhile is journaled and learned again on the new snapshot under
    the lock, just before the swap. The engine's learning waits only for the copy and that replay."""

    __slots__ = ("_changed", "_current", "_generation", "_journal", "_lock", "_replay")

    #: seconds a reload waits for the learning transaction open (an engine batch) to end before it copies
    #: what was learned; past it, the merge is done under the lock as a whole (the engine waits for it)
    QUIET_WAIT = 5.0

    def __init__(self, initial: Inventory | None = None) -> None:
        self._current = initial if initial is not None else Inventory()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._generation = 0
        self._replay: list[Callable[[Inventory], object]] | None = None
        """While learning is a transaction: what was learned in it, to learn again on a reloaded snapshot."""
        self._journal: list[tuple[str, Callable[[Inventory], object] | None]] | None = None
        """While a reload merges without the lock: every learning step since its copy, and the transactions'
        boundaries (``begin``, ``step``, ``commit``, ``rollback``), to learn again on the new snapshot."""

    @property
    def current(self) -> Inventory:
        return self._current

    @property
    def generation(self) -> int:
        return self._generation

    def writes_paused(self) -> threading.Lock:
        """The lock every write holds, as a context manager: reads under it see no write half done (for a
        thread other than the writer's that must not miss a learned ESME; hold it briefly: learning waits)."""
        return self._lock

    def reload(self, new: Inventory) -> MergeReport:
        """Install a freshly loaded snapshot, keeping learned links newer than its ``as_of`` and every hub
        end. During a learning transaction the snapshot takes what was committed, then learns the
        transaction's links again, in a transaction of its own (so that a rollback still forgets them).
        Call it off the event loop (a worker thread): the merge takes seconds with many links learned; the
        lock is held only to copy what was learned and, at the end, to learn again what came meanwhile."""
        with self._lock:
            quiet = self._changed.wait_for(lambda: self._replay is None, timeout=self.QUIET_WAIT)
            if not quiet or self._journal is not None:  # a batch that does not end (or a reload merging)
                return self._merge_locked(new)
            learned = self._current.learned_copy()
            self._journal = []
        try:
            report = new.apply_learned(learned.learned_links())
            new.apply_hub_ends(learned.hub_ends())
        except BaseException:
            with self._lock:
                self._journal = None
            raise
        del learned
        with self._lock:
            journal, self._journal = self._journal, None
            assert journal is not None
            pending: list[Callable[[Inventory], object]] | None = None
            for kind, step in journal:
                if kind == "begin":
                    pending = []
                elif kind == "step":
                    assert step is not None
                    if pending is None:
                        step(new)
                    else:
                        pending.append(step)
                elif kind == "commit":
                    for again in pending or ():
                        again(new)
                    pending = None
                else:  # rollback: forgotten
                    pending = None
            # the transaction open now: learned again, in a transaction of its own
            if self._replay is not None:
                new.begin_learning()
                for again in pending or ():
                    again(new)
            self._current = new
            self._generation += 1
            return report

    def _merge_locked(self, new: Inventory) -> MergeReport:
        """:meth:`reload`'s merge as a whole under the lock (held by the caller)."""
        replay = self._replay
        if replay is not None:
            self._current.rollback_learning()
        report = new.apply_learned(self._current.learned_links())
        new.apply_hub_ends(self._current.hub_ends())
        if replay is not None:
            new.begin_learning()
            for again in replay:
                again(new)
        self._current = new
        self._generation += 1
        return report

    def _note(self, kind: str, step: Callable[[Inventory], object] | None = None) -> None:
        if self._journal is not None:
            self._journal.append((kind, step))

    def begin_learning(self) -> None:
        """Open a learning transaction (:meth:`Inventory.begin_learning`): the gateway's engine opens one
        for each batch and rolls it back when the batch's store commit fails."""
        with self._lock:
            self._current.begin_learning()
            self._replay = []
            self._note("begin")

    def commit_learning(self) -> None:
        with self._lock:
            self._current.commit_learning()
            self._replay = None
            self._note("commit")
            self._changed.notify_all()

    def rollback_learning(self) -> None:
        with self._lock:
            self._current.rollback_learning()
            self._replay = None
            self._note("rollback")
            self._changed.notify_all()

    def _learning(self, step: Callable[[Inventory], T]) -> T:
        with self._lock:
            if self._replay is not None:
                self._replay.append(step)
            self._note("step", step)
            return step(self._current)

    def learn(
        self,
        esme: int,
        ch: int | None = None,
        mpan: str | None = None,
        manufacturer: str | None = None,
        model: str | None = None,
        *,
        at: datetime | float | None = None,
    ) -> bool:
        return self._learning(lambda inv: inv.learn(esme, ch, mpan, manufacturer, model, at=at))

    def unlink(
        self, esme: int, *, at: datetime | float | None = None, ch: bool = True, mpan: bool = True
    ) -> bool:
        return self._learning(lambda inv: inv.unlink(esme, at=at, ch=ch, mpan=mpan))

    def learn_link(self, link: LinkRecord) -> LinkRecord | None:
        return self._learning(lambda inv: inv.learn_link(link))

    def end_hub(self, ch: int, time: datetime | float) -> bool:
        return self._learning(lambda inv: inv.end_hub(ch, time))

    def hub_end(self, ch: int) -> datetime | None:
        return self._current.hub_end(ch)

    def learned(self, esme: int) -> LinkRecord | None:
        return self._current.learned(esme)

    def esmes_for_ch(self, ch: int) -> Sequence[int]:
        return self._current.esmes_for_ch(ch)

    def esmes_for_mpan(self, mpan: str) -> Sequence[int]:
        return self._current.esmes_for_mpan(mpan)

    def ch_for_esme(self, esme: int) -> int | None:
        return self._current.ch_for_esme(esme)

    def mpan_for_esme(self, esme: int) -> str | None:
        return self._current.mpan_for_esme(esme)

    def manufacturer_of(self, esme: int) -> str | None:
        return self._current.manufacturer_of(esme)

    def model_of(self, esme: int) -> str | None:
        return self._current.model_of(esme)

    def __len__(self) -> int:
        return len(self._current)
