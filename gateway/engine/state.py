"""The engine's own state records besides activations (plain dataclasses, see ``records``).

The hot ones are slotted but not frozen (cheaper to build); they are never mutated: treat them as
immutable values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from gateway.engine.effects import Action, Decision, EvidenceItem, Reason
from gateway.engine.events import InlineEvent
from gateway.engine.records import register_kind

__all__ = [
    "RELEASED_NOTE",
    "ClockRecord",
    "HeldMessage",
    "HubEnd",
    "LearnedLink",
    "PackedSeen",
    "Seen",
    "SuppressedOutage",
    "UnverifiedEvidence",
    "after_hub_end",
    "hub_end_fact",
    "merge_learned",
    "pack_seen",
    "superseded",
    "unpack_decision",
    "unpack_seen",
]


@register_kind
@dataclass(slots=True)
class HeldMessage:
    """An inline message waiting (at most until ``deadline``, gateway clock) for evidence on its way.
    ``esmes`` are the in-scope ESMEs whose evidence can release it; ``decision`` the hold decision."""

    kind: ClassVar[str] = "held"

    event: InlineEvent
    since: datetime
    deadline: datetime
    esmes: tuple[int, ...]
    decision: Decision


@register_kind
@dataclass(slots=True)
class SuppressedOutage:
    """A suppressed AD1, kept so that a restoration alert of the same ESME/CH can be paired with it.

    ``released``: an operator released it since (``duisgw audit release``: the DNO got the outage). It is
    kept, for the same retention, so that a restoration of *that* outage arriving later is forwarded
    rather than paired with another suppressed AD1 whose window contains it (docs/ENGINE.md §6).

    ``forwarded``: not a suppressed AD1 but one the DNO got when it was decided (forwarded, its in-scope
    ESMEs having firmware-activation evidence: held until its limit, outside the window, failed, cancelled,
    or that evidence unverified;
    released forward after a hold for any reason; or forwarded when decided again while its earlier record was
    kept), kept for the same reason as a released one. ``opens`` / ``closes`` are then the interruption times a
    restoration of it could have: its ``start_time`` ± ``EngineConfig.widest_window`` (no window that
    could explain an AD1 is wider, so no suppressed AD1 nearer to the restoration lies outside them)."""

    kind: ClassVar[str] = "suppressed"

    message_id: str
    ch: int
    mpan: str | None
    esmes: tuple[int, ...]
    start_time: datetime
    opens: datetime
    closes: datetime
    decided_at: datetime
    released: bool = False
    forwarded: bool = False

    @property
    def dno_knows(self) -> bool:
        """Whether the DNO got this AD1 (an operator released it, or it was forwarded): a restoration whose
        nearest outage it is must reach the DNO too."""
        return self.released or self.forwarded


@register_kind
@dataclass(slots=True)
class UnverifiedEvidence:
    """Activation evidence that failed verification: never used to suppress, only to say so."""

    kind: ClassVar[str] = "unverified"

    message_id: str
    esme: int
    role: str
    time: datetime
    verification: str
    at: datetime


@register_kind
@dataclass(slots=True)
class Seen:
    """Idempotency key: a message id already handled, with its latest decision (inline lane).

    ``digest``: the digest of the message's bytes (:attr:`gateway.engine.events.MessageEvent.digest`; None when
    the event carried none, or the key was kept before it was recorded): the same bytes re-delivered under the
    other id of the two a message can have (its XML signature verified at one delivery and not at the other) are
    answered as its duplicate (ENGINE.md §8)."""

    kind: ClassVar[str] = "seen"

    message_id: str
    event_kind: str
    at: datetime
    decision: Decision | None = None
    note: str = ""
    digest: int | None = None


#: The note of the idempotency key of an inline message quarantined under its unsigned id
#: (``quarantined-unverified``) that an operator released since (``duisgw audit release``): the DNO got its bytes,
#: so the same bytes signed later are its duplicate (ENGINE.md §8). An inline message's key has no other note.
RELEASED_NOTE = "operator-release"


#: An idempotency key as the engine keeps it in memory, :func:`pack_seen`'s form of a :class:`Seen`: one
#: flat tuple, ``(message_id, event_kind, at, note, digest)`` followed, when it has a decision, by the decision's
#: fields in their order with the action and reason as their text and the evidence items' fields one after
#: the other in one tuple. The digest is the 96-bit int the event carried (40 bytes: its 24 hex digits as text
#: would take 73), kept as it is. Every element is a str, an int, a datetime, None or a tuple of those, so CPython
#: stops tracking the tuple in the young collections it passes through (its inner tuples at the first,
#: itself at the next) and it never reaches the oldest generation as a container to walk. A gateway keeps
#: one key per message for the retention (~2 M at 1 M AD1s a day); kept as dataclasses they were two
#: tracked objects each, which every generation-2 collection walked with every thread stopped (~0.36 ms per
#: 1,000 keys: docs/PERFORMANCE.md, *Garbage-collector pauses*).
PackedSeen = tuple[Any, ...]

_ACTIONS: dict[str, Action] = {a.value: a for a in Action}
_REASONS: dict[str, Reason] = {r.value: r for r in Reason}
_EVIDENCE_WIDTH = 5  # role, message_id, device, time, detail
_HEADER = 5  # message_id, event_kind, at, note, digest: a key without a decision


def pack_seen(seen: Seen) -> PackedSeen:
    """``seen`` as an exact tuple of untracked values (:data:`PackedSeen`); :func:`unpack_seen` inverts it.
    The layout names every field of :class:`Seen`, :class:`Decision` and :class:`EvidenceItem`
    (tests/engine/test_seen_packed.py fails when one of them gains a field)."""
    d = seen.decision
    if d is None:
        return (seen.message_id, seen.event_kind, seen.at, seen.note, seen.digest)
    ev = d.evidence
    evidence = (
        tuple([x for e in ev for x in (e.role, e.message_id, e.device, e.time, e.detail)]) if ev else ()
    )
    return (
        seen.message_id,
        seen.event_kind,
        seen.at,
        seen.note,
        seen.digest,
        d.message_id,
        d.event_kind,
        d.action._value_,
        d.reason._value_,
        d.decided_at,
        d.event_time,
        d.ch,
        d.mpan,
        d.esmes,
        d.window_opens,
        d.window_closes,
        d.activation,
        evidence,
        d.flags,
        d.hold_deadline,
    )


def unpack_decision(packed: PackedSeen) -> Decision | None:
    """The decision of a :data:`PackedSeen` (None for a key without one)."""
    if len(packed) == _HEADER:
        return None
    (
        mid,
        kind,
        action,
        reason,
        decided_at,
        event_time,
        ch,
        mpan,
        esmes,
        opens,
        closes,
        act,
        ev,
        flags,
        hold,
    ) = packed[_HEADER:]
    w = _EVIDENCE_WIDTH
    evidence = tuple([EvidenceItem(*ev[i : i + w]) for i in range(0, len(ev), w)]) if ev else ()
    return Decision(
        mid, kind, _ACTIONS[action], _REASONS[reason], decided_at, event_time, ch, mpan, esmes, opens, closes,
        act, evidence, flags, hold,
    )  # fmt: skip


def unpack_seen(packed: PackedSeen) -> Seen:
    """The :class:`Seen` that :func:`pack_seen` packed (an equal value)."""
    return Seen(packed[0], packed[1], packed[2], unpack_decision(packed), packed[3], packed[4])


@register_kind
@dataclass(frozen=True, slots=True)
class ClockRecord:
    """The gateway clock (latest arrival or tick) at the last Tick."""

    kind: ClassVar[str] = "clock"

    now: datetime


@register_kind
@dataclass(frozen=True, slots=True)
class LearnedLink:
    """What verified traffic taught about one ESME's links (re-applied to the inventory on restore).

    Only learned fields are set. ``ch_time`` / ``mpan_time`` are the own times of the messages the
    Comms Hub / MPxN link was learned from (``ResponseDateTime``: event time, never the gateway clock);
    ``None`` is a link learned without a time (a record written before these fields existed), older
    than any timed evidence. ``ended`` names the links a removal ended (a status change alert that
    ends links, :class:`gateway.engine.events.InventoryUnlinked`: ``ch`` / ``mpan`` is then None, and
    its time is the removal's). ``ch_ended_by`` is the Comms Hub whose end (:class:`HubEnd`) ended the
    Comms Hub link: ``ch_time`` is then the time of the link evidence that end ended (None: evidence
    without a time, or the snapshot's link), not the end's (kept per hub); None for an end of the ESME's
    own link (a meter decommissioned, withdrawn or removed, at ``ch_time``), and in records written
    before this field existed (read as such an end, as they were). ``at`` is the gateway
    clock when the engine recorded it (``None`` for the inventory's own view of the learned state).
    :func:`merge_learned` is the ordering rule."""

    kind: ClassVar[str] = "learned"

    esme: int
    ch: int | None
    mpan: str | None
    manufacturer: str | None
    model: str | None
    at: datetime | None
    ch_time: datetime | None = None
    mpan_time: datetime | None = None
    ended: tuple[str, ...] = ()
    ch_ended_by: int | None = None

    def __post_init__(self) -> None:
        for name in self.ended:
            if name not in ("ch", "mpan") or getattr(self, name) is not None:
                raise ValueError(f"ended names a link that is not ended: {name!r}")
        if self.ch_ended_by is not None and "ch" not in self.ended:
            raise ValueError("ch_ended_by names the hub of a Comms Hub link that is not ended")

    def has(self, name: str) -> bool:
        """Whether this says anything of link ``name`` (``ch`` / ``mpan``): a value, or that it ended."""
        return getattr(self, name) is not None or name in self.ended


@register_kind
@dataclass(frozen=True, slots=True)
class HubEnd:
    """A Comms Hub's end (``CHFDecommissioning``, or ``DeviceRemovedFromInventory`` of the device), kept
    per hub: ``time`` is the alert's own time (``ResponseDateTime``; the latest end when there were
    several). Link evidence naming the hub that is not newer than it never links an ESME to the hub
    (:func:`after_hub_end`), whichever arrives first; evidence newer than it (the hub re-commissioned)
    links as usual. ``at`` is the gateway clock when the engine recorded it (``None`` for the inventory's
    own view)."""

    kind: ClassVar[str] = "hub-end"

    ch: int
    time: datetime
    at: datetime | None = None


_LINKS = (("ch", "ch_time"), ("mpan", "mpan_time"))


def _removed(state: LearnedLink, name: str) -> bool:
    """Whether ``state``'s link ``name`` was ended by a removal of the ESME's own link (its time is the
    removal's), rather than held (a link) or ended by its hub's end (its time is the evidence's)."""
    return name in state.ended and (name != "ch" or state.ch_ended_by is None)


def _takes(old: LearnedLink | None, fact: LearnedLink, name: str, time_name: str) -> bool:
    """Whether ``fact``'s link ``name`` (a value or its end) replaces ``old``'s: ``old`` has none, or its
    evidence is older. Evidence without a time is older than any timed evidence; of the same instant,
    a removal wins over a link (a removal never loses to a link it cannot be ordered against: ending a
    link only ever makes suppression rarer), otherwise the later-applied fact. A Comms Hub link ended by
    its hub's end (``ch_ended_by``) is ordered by the time of the link evidence it ended, as that link
    (the hub's end itself is kept per hub, :func:`after_hub_end`): newer evidence of another hub replaces
    it, and it replaces what that link would have."""
    if not fact.has(name):
        return False
    if old is None or not old.has(name):
        return True
    new_t, old_t = getattr(fact, time_name), getattr(old, time_name)
    if new_t == old_t:
        if name == "ch" and old.ch_ended_by is not None and fact.ch == old.ch_ended_by:
            return False  # that very link, which its hub's end ended since
        return _removed(fact, name) or not _removed(old, name)
    return new_t is not None and (old_t is None or new_t > old_t)


def merge_learned(old: LearnedLink | None, fact: LearnedLink) -> LearnedLink:
    """The learned state of one ESME after ``fact``: each link (Comms Hub, MPxN) is the one of the
    newest evidence by its own message time, whatever order the messages arrived in: a late 8.2
    response older than what is known does not move the ESME back, a late removal does not undo a
    newer re-link, and evidence older than a removal does not restore the link it ended. Manufacturer
    and model are replaced by any fact that gives them. ``at`` is ``None``: a state, not a record."""
    ch = fact if _takes(old, fact, "ch", "ch_time") else old
    mpan = fact if _takes(old, fact, "mpan", "mpan_time") else old
    ended: tuple[str, ...] = ("ch",) if ch is not None and "ch" in ch.ended else ()
    if mpan is not None and "mpan" in mpan.ended:
        ended += ("mpan",)
    return LearnedLink(
        fact.esme,
        None if ch is None else ch.ch,
        None if mpan is None else mpan.mpan,
        _text(fact.manufacturer) or (None if old is None else old.manufacturer),
        _text(fact.model) or (None if old is None else old.model),
        None,
        None if ch is None else ch.ch_time,
        None if mpan is None else mpan.mpan_time,
        ended,
        ch.ch_ended_by if ch is not None and "ch" in ended else None,
    )


def after_hub_end(old: LearnedLink | None, fact: LearnedLink, end: datetime | None) -> LearnedLink:
    """``fact`` as it is applied when its Comms Hub ended at ``end`` (None: no end known): link evidence
    not newer than the end (evidence without a time is older than any) is the link followed by the hub's
    end, as it would have been had the evidence arrived before the end: the ESME's Comms Hub link ended
    by that hub (``ch_ended_by``), ordered by the evidence's own time like the link (:func:`merge_learned`
    takes it exactly when it would take the link). Evidence newer than the end is ``fact`` unchanged."""
    if end is None or fact.ch is None or (fact.ch_time is not None and fact.ch_time > end):
        return fact
    return LearnedLink(
        fact.esme,
        None,
        fact.mpan,
        fact.manufacturer,
        fact.model,
        fact.at,
        fact.ch_time,
        fact.mpan_time,
        ("ch", *(n for n in fact.ended if n != "ch")),
        fact.ch,
    )


def hub_end_fact(old: LearnedLink | None, esme: int, ch: int, end: datetime) -> LearnedLink | None:
    """The fact the end of Comms Hub ``ch`` at ``end`` is for ``esme``, an ESME behind it whose learned
    state is ``old`` (None, or nothing of its Comms Hub: the snapshot's link): its link to the hub ended
    by the hub, ordered by the time of that link's evidence (:func:`after_hub_end`). None when that
    evidence is newer than the end (the hub re-commissioned since: the link stays)."""
    linked = None if old is None or old.ch is None else old.ch_time
    if linked is not None and linked > end:
        return None
    return LearnedLink(esme, None, None, None, None, None, linked, None, ("ch",), ch)


def _text(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def superseded(old: LearnedLink | None, fact: LearnedLink) -> tuple[str, ...]:
    """The links of ``fact`` (values or ends) that :func:`merge_learned` does not take: newer evidence
    of them is known."""
    return tuple(
        name for name, time_name in _LINKS if fact.has(name) and not _takes(old, fact, name, time_name)
    )
