"""The MP102B correlation engine: events in, decisions and state changes out (sans-I/O).

Theory of operation
===================

``Engine.handle(event)`` takes one event (see ``events``) and returns a list of effects (see
``effects``). It never reads a clock, a socket or a file: the *gateway clock* is the highest
``arrival`` / ``Tick.now`` seen so far and only drives holds and retention; every window test uses
the messages' own times (AD1 StartDateTime, ResponseDateTime, 8F66 execution time).

1. Idempotency first: a message id seen within ``retention`` gets :class:`Duplicate` with its
   latest decision and nothing else happens; so do the same bytes (``digest``) under their other id, their XML
   signature verified at one delivery and not at the other (ENGINE.md §8).
2. Observation lane (11.3 requests/responses, 8F66/8F67, 8.2 inventory, device status): verified
   evidence drives the activation state machine (``activation``); unverified evidence (or a response
   whose GBCS identity does not match its RequestID) is kept apart and can only ever produce the
   reason ``evidence-unverified`` on a forward. Any activation change re-evaluates the messages held
   for that ESME. Verified inventory observations teach the inventory links and status changes that end links
   (a meter decommissioned or withdrawn, a Comms Hub decommissioned, a device removed from the
   inventory, a meter identity contradicting its MPxN link) end them, each ordered by its message's
   own time (``state.merge_learned``), never by arrival: a removal never creates or restores a link.
   A hub's end is also kept per hub (``state.HubEnd``): older link evidence never links any ESME to it.
3. Inline lane: an AD1 is joined CH (and MPAN) -> ESMEs (``InventoryView``) -> in scope? Then every
   activation of those ESMEs is assessed against StartDateTime: any that explains it -> ``suppress``;
   else any pending one that might -> ``hold`` (until its outcome arrives or ``hold_limit`` of gateway
   clock passes, then ``release-suppress`` / ``release-forward``); else ``forward`` with the most
   telling reason. A hold covers ``[since, deadline)``: when the clock reaches the deadline the
   time-out is taken before any event stamped with that instant is applied (``hold_limit`` 0: no hold).
   Restoration alerts pair with suppressed AD1s of their ESME or its Comms Hub (any ESME behind the hub,
   in scope or not), the one whose outage began nearest to their interruption time, and wait for such an
   AD1 while it is held, only when its StartDateTime is within ``widest_window`` of their interruption time
   (and nearer than the kept outage they would pair with); when the nearest kept outage is one the DNO got
   (released by an operator, or forwarded while its ESMEs had activation evidence, after a hold, or when
   decided again while its earlier record was kept: a *forwarded* outage) they are forwarded, as is
   everything else.
   An inline message whose own signature failed is forwarded (or quarantined by configuration) and
   never used as evidence.
4. ``Tick`` advances the clock (never to a time the engine cannot compute with, nor does an arrival), times
   out holds and prunes state older than ``retention``: at most
   ``PRUNE_PER_TICK`` idempotency keys, suppressed outages and unverified evidence records a tick, the
   rest at the next ticks (a clock that jumps a day after a restart does not turn its first tick into
   one transaction that rewrites a day of records).

All state is a set of plain records (``Table``); every change is reported as a
:class:`StateChange` so a store can persist it in the same transaction as the decision, and
:meth:`Engine.restore` rebuilds an engine that continues with identical decisions.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.engine.activation import (
    ActEvent,
    Activation,
    ActivationKey,
    ActState,
    Assessment,
    apply,
    assess,
    classify,
    expires_at,
    format_key,
)
from gateway.engine.config import EngineConfig
from gateway.engine.effects import (
    DEVICE_CLOCK_UNRELIABLE,
    Action,
    Decision,
    Duplicate,
    Effect,
    EvidenceItem,
    Observed,
    Reason,
    StateChange,
    Table,
)
from gateway.engine.errors import EngineStateError
from gateway.engine.events import (
    DEVICE_REMOVED,
    HUB_DECOMMISSIONED,
    METER_IDENTITY,
    UNSIGNED_MARK,
    ActivationRequested,
    ActivationResponse,
    DeviceStatusChange,
    Event,
    FutureDatedOutcome,
    InlineEvent,
    InventoryObserved,
    InventoryUnlinked,
    MessageEvent,
    OtherInline,
    PowerOutage,
    SupplyRestored,
    Tick,
    has_naive_time,
    naive_fields,
    signed_twin,
    time_out_of_range,
    unsigned_id,
    with_utc_times,
)
from gateway.engine.ports import InventoryView, ScopeView
from gateway.engine.records import Record, from_record
from gateway.engine.state import (
    RELEASED_NOTE,
    ClockRecord,
    HeldMessage,
    HubEnd,
    LearnedLink,
    PackedSeen,
    Seen,
    SuppressedOutage,
    UnverifiedEvidence,
    hub_end_fact,
    pack_seen,
    superseded,
    unpack_decision,
    unpack_seen,
)
from gateway.mpan import mpan_check_fails, mpan_core_valid

__all__ = ["Engine"]

_Observation = (
    ActivationRequested
    | ActivationResponse
    | FutureDatedOutcome
    | InventoryObserved
    | InventoryUnlinked
    | DeviceStatusChange
)

_SUPPRESS_RANK = {Reason.ACTIVATION_WINDOW: 0, Reason.FD_CONFIRMED: 1, Reason.FD_FAILED_COUNTED: 2}
_FORWARD_RANK = {
    Reason.FD_FAILED: 0,
    Reason.CANCELLED: 1,
    Reason.ACTIVATION_FAILED: 2,
    Reason.EVIDENCE_UNVERIFIED: 3,
    Reason.OUTSIDE_WINDOW: 4,
    Reason.NO_ACTIVATION: 5,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: why a forwarded AD1 is kept as a forwarded outage (``SuppressedOutage.forwarded``): its in-scope ESMEs had
#: firmware-activation evidence when it was decided, so another AD1 of its hub may be (or become) suppressed
#: with a window over its restoration. An AD1 released forward after a hold is kept whatever its reason, and so
#: is one forwarded when decided again while its earlier record is kept (``Engine._decide``). An AD1 forwarded on
#: arrival on the common path (no evidence), out of scope or of an unknown hub keeps nothing beyond its key.
_KEPT_FORWARDS = frozenset({
    Reason.HOLD_TIMEOUT,
    Reason.OUTSIDE_WINDOW,
    Reason.ACTIVATION_FAILED,
    Reason.FD_FAILED,
    Reason.CANCELLED,
    Reason.EVIDENCE_UNVERIFIED,
})  # fmt: skip

#: most expired idempotency keys, suppressed outages and unverified evidence records one ``Tick`` prunes.
#: Each pruned key is a row update in the store's transaction for that tick: a tick after the clock jumped
#: hours (a restart after downtime) pruned hours of traffic in one batch (18,000 keys: 289 ms and 58 MB of
#: WAL). The gateway ticks every second, so this keeps up with 5,000 msg/s of traffic two days before;
#: a backlog drains over the following ticks. A record waiting for its prune is still read, as it was a moment
#: before: its message, re-delivered more than the retention after it was first seen, is a duplicate of its first
#: decision instead of being decided afresh; a kept outage still pairs (or, one the DNO got, forwards) a
#: restoration whose interruption its window holds, and an AD1 decided again finds its earlier life's record;
#: unverified evidence still names itself in a forward (ENGINE.md §8). Which of the records due a tick takes first
#: is not part of the rules (a restored engine takes them by time, then id).
PRUNE_PER_TICK = 5_000


def _computable_times(config: EngineConfig) -> tuple[datetime, datetime]:
    """The earliest and latest date-times the engine computes with: a day more than everything it adds to or
    subtracts from a time (the widest window either side, the hold limit, the retention) inside the
    calendar's ends, so that no window, deadline or expiry of a kept record can overflow."""
    margin = timedelta(days=1)
    for part in (config.widest_window, config.window_before, config.hold_limit, config.keep_for):
        margin += part
    earliest, latest = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    try:
        return earliest + margin, latest - margin
    except OverflowError:  # a retention of millennia: nothing is computable, every event is out of range
        return latest, earliest


@dataclass(slots=True)
class _Verdict:
    """The outcome of evaluating one inline message against the current state."""

    verdict: str  # "forward" | "suppress" | "hold"
    reason: Reason
    esmes: tuple[int, ...] = ()
    opens: datetime | None = None
    closes: datetime | None = None
    activation: Activation | None = None
    evidence: tuple[EvidenceItem, ...] = ()
    hold_esmes: tuple[int, ...] = ()


class Engine:
    """The sans-I/O correlation engine. One instance owns the state of one gateway."""

    def __init__(self, config: EngineConfig, scope: ScopeView, inventory: InventoryView) -> None:
        self.config = config
        self.scope = scope
        self.inventory = inventory
        self._clock: datetime | None = None
        self._acts: dict[ActivationKey, Activation] = {}
        self._acts_by_esme: dict[int, list[ActivationKey]] = {}
        self._act_expiry: list[tuple[datetime, ActivationKey]] = []
        self._held: dict[str, HeldMessage] = {}
        self._held_by_esme: dict[int, set[str]] = {}
        self._held_by_ch: dict[int, set[str]] = {}  # held AD1s by their Comms Hub (restorations wait on them)
        self._hold_heap: list[tuple[datetime, str]] = []
        self._seen: dict[str, PackedSeen] = {}  # packed: the collector does not walk them (state.PackedSeen)
        self._seen_order: deque[tuple[datetime, str]] = deque()
        # the inline messages forwarded under an unsigned id (their XML signature did not verify), by the id the
        # same bytes have signed: the same bytes verified later are their duplicate (few: empty on the hot path)
        self._unsigned_inline: dict[str, set[str]] = {}
        self._suppressed: dict[str, SuppressedOutage] = {}
        self._suppressed_by_esme: dict[int, list[str]] = {}
        self._suppressed_by_ch: dict[int, list[str]] = {}
        self._suppressed_order: deque[tuple[datetime, str]] = deque()
        self._unverified: dict[str, UnverifiedEvidence] = {}
        self._unverified_by_esme: dict[int, list[str]] = {}
        self._unverified_order: deque[tuple[datetime, str]] = deque()
        # an event with a date-time outside these is not computed with (Reason.TIME_OUT_OF_RANGE): the engine
        # adds and subtracts its windows, holds and retention to the times it keeps (ENGINE.md §7)
        self._earliest, self._latest = _computable_times(config)

    # ------------------------------------------------------------------ public API

    @property
    def clock(self) -> datetime | None:
        """The gateway clock: latest arrival or tick seen (None before the first event)."""
        return self._clock

    def handle(self, event: Event) -> list[Effect]:
        """Process one event; returns decisions, duplicates, observations and state changes, in order."""
        out: list[Effect] = []
        if isinstance(event, Tick):
            now = event.now if event.now.tzinfo is not None else event.now.replace(tzinfo=UTC)
            # a time the engine cannot compute with never becomes the clock: its holds and retention would overflow
            if self._earliest <= now <= self._latest:
                self._advance(now, out)
            self._prune(out)
            if self._clock is not None:
                out.append(StateChange(Table.CLOCK, "clock", ClockRecord(self._clock)))
            return out
        rejected: Reason | None = None
        if has_naive_time(event):
            naive = naive_fields(event)
            if self.config.naive_timestamp_policy == "reject" and naive != ("arrival",):
                rejected = Reason.NAIVE_TIMESTAMP
            fixed = with_utc_times(event)
            assert not isinstance(fixed, Tick)
            event = fixed
        arrival = event.arrival
        if time_out_of_range(event, self._earliest, self._latest):
            rejected = Reason.TIME_OUT_OF_RANGE
            if not self._earliest <= arrival <= self._latest:
                # the gateway clock never moves to a time the engine cannot compute with (every later hold,
                # key and retention would overflow): the message is decided at the clock as it is
                arrival = self._earliest if self._clock is None else self._clock
        clock = self._clock
        if clock is None or arrival > clock:
            self._advance(arrival, out)
        seen = self._seen.get(event.message_id)
        if seen is None and (self._unsigned_inline or not event.verified) and event.digest is not None:
            seen = self._same_bytes(event)  # (the same bytes decided under their other id: ENGINE.md §8)
        if seen is not None:
            out.append(Duplicate(event.message_id, unpack_decision(seen)))
            return out
        if type(event) is PowerOutage and event.verified and rejected is None:  # the hot path
            verdict = self._evaluate_outage(event)
            if verdict.verdict == "hold":
                self._hold(event, verdict, out)
            else:
                self._decide(
                    event, verdict, Action.SUPPRESS if verdict.verdict == "suppress" else Action.FORWARD, out
                )
        elif event.lane == "inline":
            assert isinstance(event, PowerOutage | SupplyRestored | OtherInline)
            self._inline(event, out, rejected)
        else:
            assert isinstance(event, _Observation)
            self._observe(event, out, rejected)
        return out

    def released_by_operator(self, message_id: str) -> list[Effect]:
        """An operator released this suppressed message (``duisgw audit release``): the DNO got it. Returns the
        state changes to persist (nothing when unknown or already taken in).

        A suppressed AD1: the DNO got the outage and must get its restoration. Its record is kept, marked
        released, for the rest of its retention: a restoration alert whose nearest outage in a window is this one
        is forwarded, not paired with it nor with another suppressed AD1 of the hub whose window contains it (§6).

        An inline message quarantined under its unsigned id (``quarantined-unverified``): the DNO got its bytes.
        Its idempotency key is marked released (:data:`RELEASED_NOTE`) and indexed as an unsigned forward's is,
        so the same bytes signed later are its duplicate, not decided afresh (forwarded a second time, or
        suppressed while the DNO has them: §8). A quarantined AD1 is kept as a released outage, its window its
        ``StartDateTime`` ± ``widest_window`` as a forwarded one's (it was never evaluated: no activation window),
        under the ESMEs its hub and MPAN join now, for the retention from the release; and when the same bytes
        were decided under their signed id since (the signed copy came before the release) and that AD1 is kept
        as a suppressed outage, that record is marked released too: it is the outage the DNO got."""
        out: list[Effect] = []
        rec = self._suppressed.get(message_id)
        if rec is not None and not rec.released:
            rec = replace(rec, released=True)
            self._suppressed[message_id] = rec  # same indexes and pruning order (decided_at unchanged)
            out.append(StateChange(Table.SUPPRESSED, message_id, rec))
        packed = self._seen.get(message_id) if UNSIGNED_MARK in message_id else None
        if packed is not None:
            seen = unpack_seen(packed)
            if _quarantined(seen):
                self._released_copy(seen, out)
        return out

    def _released_copy(self, seen: Seen, out: list[Effect]) -> None:
        """The release of the inline message quarantined under the unsigned id of ``seen`` (``released_by_operator``).
        Each part is done once: a store may have marked the key released already (it reads a key whose message an
        operator released as such: ``SqliteStore.load_engine_records``), the release being taken in after that."""
        mid, decision = seen.message_id, seen.decision
        assert decision is not None
        if seen.note != RELEASED_NOTE:
            seen = replace(seen, note=RELEASED_NOTE)
            self._seen[mid] = pack_seen(seen)  # (its ``at`` unchanged: the same place in the prune order)
            out.append(StateChange(Table.SEEN, mid, seen))
        self._index_unsigned(mid)
        if decision.event_kind != PowerOutage.kind or decision.ch is None or decision.event_time is None:
            return
        if mid not in self._suppressed:
            inv = self.inventory
            esmes = set(inv.esmes_for_ch(decision.ch))
            if decision.mpan and mpan_core_valid(_mpxn(decision.mpan)):
                esmes.update(inv.esmes_for_mpan(decision.mpan))
            start, reach = decision.event_time, self.config.widest_window
            rec = SuppressedOutage(
                mid, decision.ch, decision.mpan, tuple(sorted(esmes)), start, start - reach, start + reach,
                self._now(), released=True,
            )  # fmt: skip
            rec = self._put_suppressed(rec)
            out.append(StateChange(Table.SUPPRESSED, mid, rec))
        twin = signed_twin(mid, seen.digest)
        kept = None if twin is None else self._seen.get(twin)
        if twin is not None and kept is not None and kept[4] == seen.digest:  # (PackedSeen's digest: the same bytes)
            signed_rec = self._suppressed.get(twin)
            if signed_rec is not None and not signed_rec.dno_knows:
                signed_rec = replace(signed_rec, released=True)
                self._suppressed[twin] = signed_rec
                out.append(StateChange(Table.SUPPRESSED, twin, signed_rec))

    def release_not_taken_in(self, message_id: str) -> bool:
        """Whether ``message_id`` is the key, kept here, of an inline message quarantined under its unsigned id
        whose operator release this engine has not taken in (:meth:`released_by_operator`). When an operator did
        release it, the same bytes signed were decided here afresh where the engine rebuilt from the store
        (which reads the release from the message's row) answers them as its duplicate (ENGINE.md §8). False
        for a key not kept (its retention passed: the rebuilt engine forgets it too) or taken in."""
        packed = self._seen.get(message_id) if UNSIGNED_MARK in message_id else None
        if packed is None:
            return False
        seen = unpack_seen(packed)
        return _quarantined(seen) and seen.note != RELEASED_NOTE

    def held(self) -> list[HeldMessage]:
        """Messages currently held, oldest first."""
        return sorted(self._held.values(), key=lambda h: (h.since, h.event.message_id))

    def held_count(self) -> int:
        """How many messages are held now (``len(held())`` without listing and sorting them)."""
        return len(self._held)

    def activations(self) -> list[Activation]:
        return list(self._acts.values())

    def decision_for(self, message_id: str) -> Decision | None:
        """The latest decision on an inline message still within retention."""
        seen = self._seen.get(message_id)
        return None if seen is None else unpack_decision(seen)

    def export_state(self) -> Iterator[StateChange]:
        """Every record of the engine's state (restorable with :meth:`restore`).

        Inventory links learned from traffic are owned by the inventory; they are reported as
        ``Table.LEARNED`` state changes when learned and re-applied by :meth:`restore`."""
        if self._clock is not None:
            yield StateChange(Table.CLOCK, "clock", ClockRecord(self._clock))
        for act in self._acts.values():
            yield StateChange(Table.ACTIVATION, format_key(act.key), act)
        for mid, h in self._held.items():
            yield StateChange(Table.HELD, mid, h)
        for mid, s in self._seen.items():
            yield StateChange(Table.SEEN, mid, unpack_seen(s))
        for mid, o in self._suppressed.items():
            yield StateChange(Table.SUPPRESSED, mid, o)
        for mid, u in self._unverified.items():
            yield StateChange(Table.UNVERIFIED, mid, u)

    @classmethod
    def restore(
        cls,
        config: EngineConfig,
        scope: ScopeView,
        inventory: InventoryView,
        records: Iterable[tuple[str, str, Mapping[str, Any]]],
    ) -> Engine:
        """An engine whose state is the given ``(table, key, record)`` rows (as persisted from
        :class:`StateChange` effects or :meth:`export_state`); learned links are re-applied to
        ``inventory``. Raises :class:`EngineStateError` on an unreadable record."""
        eng = cls(config, scope, inventory)
        latest = _EPOCH
        seen: list[Seen] = []
        supp: list[SuppressedOutage] = []
        unv: list[UnverifiedEvidence] = []
        hub_ends: list[HubEnd] = []
        for table, _key, rec in records:
            try:
                tbl = Table(table)
            except ValueError as exc:
                raise EngineStateError(f"unknown state table {table!r}") from exc
            if tbl is Table.CLOCK:
                now = from_record(ClockRecord, rec).now
                if now <= eng._latest:  # (else stamped by an earlier version's clock at the calendar's end)
                    latest = max(latest, now)
            elif tbl is Table.ACTIVATION:
                act = from_record(Activation, rec)
                if not eng._times_computable(act):
                    continue  # kept by an earlier version: its windows cannot be computed (never evidence)
                eng._put_act(act)
                latest = max(latest, act.updated_at)
            elif tbl is Table.HELD:
                h = from_record(HeldMessage, rec)
                eng._put_held(h)
                if h.since <= eng._latest:
                    latest = max(latest, h.since)
            elif tbl is Table.SEEN:
                s = from_record(Seen, rec)
                if s.at <= eng._latest and (s.decision is None or s.decision.decided_at <= eng._latest):
                    seen.append(s)  # (else stamped by such a clock: its retention cannot be computed)
            elif tbl is Table.SUPPRESSED:
                o = from_record(SuppressedOutage, rec)
                if o.decided_at <= eng._latest:
                    supp.append(o)
            elif tbl is Table.UNVERIFIED:
                u = from_record(UnverifiedEvidence, rec)
                if eng._times_computable(u):  # (else kept by an earlier version: never to be said)
                    unv.append(u)
            elif tbl is Table.HUB_END:
                hub_ends.append(from_record(HubEnd, rec))
            else:  # ordered by the time of each link's evidence: the order of the rows does not matter
                inventory.learn_link(from_record(LearnedLink, rec))
        # after every ESME's stored state (each already holds what the hub's end did to it when applied):
        # the end then only ends the links to the hub of snapshot rows nothing learned about
        for end in hub_ends:
            inventory.end_hub(end.ch, end.time)
        for s in sorted(seen, key=lambda r: (r.at, r.message_id)):
            eng._seen[s.message_id] = pack_seen(s)
            eng._seen_order.append((s.at, s.message_id))
            if s.decision is not None and (
                s.decision.action is Action.FORWARD or (s.note == RELEASED_NOTE and _quarantined(s))
            ):
                # (an inline message forwarded under an unsigned id, or quarantined under one and released since)
                eng._index_unsigned(s.message_id)
            latest = max(latest, s.at if s.decision is None else max(s.at, s.decision.decided_at))
        for o in sorted(supp, key=lambda r: (r.decided_at, r.message_id)):
            eng._put_suppressed(o)
            latest = max(latest, o.decided_at)
        for u in sorted(unv, key=lambda r: (r.at, r.message_id)):
            eng._put_unverified(u)
            latest = max(latest, u.at)
        eng._clock = None if latest == _EPOCH else latest
        return eng

    def _times_computable(self, record: Activation | UnverifiedEvidence) -> bool:
        """Whether every date-time of a stored record is one the engine computes with (see ``_earliest``; the
        records hold the offset-aware times of the events they came from)."""
        return not time_out_of_range(record, self._earliest, self._latest)

    # ------------------------------------------------------------------ clock, holds, pruning

    def _advance(self, now: datetime, out: list[Effect]) -> None:
        if self._clock is not None and now <= self._clock:
            return
        self._clock = now
        heap = self._hold_heap
        while heap and heap[0][0] <= now:
            deadline, mid = heapq.heappop(heap)
            held = self._held.get(mid)
            if held is not None and held.deadline == deadline:
                self._release(held, out)

    def _prune(self, out: list[Effect]) -> None:
        now = self._clock
        if now is None:
            return
        keep = self.config.keep_for
        heap = self._act_expiry
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            act = self._acts.get(key)
            if act is not None and expires_at(act, self.config) <= now:
                assert apply(act, None, ActEvent.EXPIRE, self.config, now) is None
                self._drop_act(key)
                out.append(StateChange(Table.ACTIVATION, format_key(key), None))
        budget = PRUNE_PER_TICK
        for order, table, store in (
            (self._seen_order, Table.SEEN, self._seen),
            (self._suppressed_order, Table.SUPPRESSED, self._suppressed),
            (self._unverified_order, Table.UNVERIFIED, self._unverified),
        ):
            while budget > 0 and order and order[0][0] + keep <= now:
                budget -= 1
                at, mid = order.popleft()
                rec = store.get(mid)
                if rec is not None and _at(rec) == at:
                    del store[mid]
                    if table is Table.SUPPRESSED:
                        assert isinstance(rec, SuppressedOutage)
                        self._unindex_suppressed(rec)
                    elif table is Table.UNVERIFIED:
                        assert isinstance(rec, UnverifiedEvidence)
                        _remove(self._unverified_by_esme, rec.esme, mid)
                    elif self._unsigned_inline and table is Table.SEEN:
                        self._unindex_unsigned(mid)
                    out.append(StateChange(table, mid, None))

    # ------------------------------------------------------------------ observation lane

    def _observe(
        self,
        event: _Observation,
        out: list[Effect],
        rejected: Reason | None,
    ) -> None:
        clock = self._now()
        note = ""
        used = False
        if rejected is not None:
            note = rejected.value
        elif not event.verified:
            note = f"unverified: {event.verification}"
            self._keep_unverified(event, out)
        elif isinstance(event, ActivationResponse) and not (
            event.originator_matches and event.counter_matches
        ):
            note = "response does not match its request (GBCS originator/counter)"
            self._keep_unverified(event, out)
        elif isinstance(event, ActivationRequested | ActivationResponse | FutureDatedOutcome):
            used = True
            self._evidence(event, out)
        elif isinstance(event, InventoryObserved):
            used = True
            note = self._learn(event, out)
        elif isinstance(event, InventoryUnlinked):
            used = True
            note = self._unlink(event, out)
        else:
            used = True
            note = event.change
        out.append(Observed(event.message_id, event.kind, used, note))
        self._mark_seen(Seen(event.message_id, event.kind, clock, None, note, event.digest), out)

    def _learn(self, event: InventoryObserved, out: list[Effect]) -> str:
        """Apply the links of an inventory observation, each ordered by the message's own time (a late
        observation older than what is known does not move the ESME back). The stored record is the
        ESME's whole learned state with the time of each link (what this observation leaves open keeps
        what is known: a partial 8.2 must not erase the CH learned before on restore). Returns the note."""
        inv = self.inventory
        mpan = event.mpan.strip() if event.mpan is not None and event.mpan.strip() else None
        refused = None
        if mpan is not None and not mpan_core_valid(_mpxn(mpan)):
            # an ESME's MPxN is its 13-digit MPAN core: anything else is no link (learned, it would
            # join AD1s carrying the same text)
            refused, mpan = mpan, None
        fact = LearnedLink(
            event.esme,
            event.ch,
            mpan,
            event.manufacturer,
            event.model,
            None,
            event.time if event.ch is not None else None,
            event.time if mpan is not None else None,
        )
        prior = inv.learned(event.esme)
        hub_end = None if event.ch is None else inv.hub_end(event.ch)
        state = inv.learn_link(fact)
        if state is not None:
            out.append(StateChange(Table.LEARNED, f"{event.esme:016X}", replace(state, at=self._now())))
        if refused is not None:
            rest = "; learned the rest" if state is not None else ""
            failed = mpan_check_fails(_mpxn(refused))
            why = "fails the MPAN check digit" if failed else "is not a 13-digit MPAN"
            return f"MPxN {refused} {why}: not learned{rest}"
        stale = superseded(prior, fact)
        if stale:
            assert prior is not None
            newer = ", ".join(f"{name} {_when(getattr(prior, name + '_time'))}" for name in stale)
            return f"stale: newer evidence of its {newer}" + (
                "; learned the rest" if state is not None else ""
            )
        if hub_end is not None and (event.time is None or event.time <= hub_end):
            assert event.ch is not None
            return (
                f"its Comms Hub {event.ch:016X} ended {_when(hub_end)}, not before this evidence: "
                "not linked to it"
            )
        return "learned" if state is not None else "known"

    def _unlink(self, event: InventoryUnlinked, out: list[Effect]) -> str:
        """A status change alert that ends links (see :class:`InventoryUnlinked` for how each ``change``
        reads its device): end them as of the alert's own time, unless newer evidence of them is known
        (a late removal does not undo a newer re-link), and remember each end (evidence older than it,
        arriving later, does not restore the link). It never creates or restores a link; it can only
        make suppression rarer. Returns the note."""
        head = f"unlinked by {event.change} {_when(event.time)}: "
        inv = self.inventory
        if event.change == HUB_DECOMMISSIONED or (
            event.change == DEVICE_REMOVED and inv.esmes_for_ch(event.esme)
        ):
            return head + self._end_hub(event.esme, event.time, out)
        if event.change == METER_IDENTITY:
            return head + self._end_contradicted_mpxn(event, out)
        note = self._end_links(event.esme, ("ch", "mpan"), event.time, out)
        if event.change == DEVICE_REMOVED:
            # a device removed from the inventory is no Comms Hub of any ESME either (it may be a hub
            # without ESMEs known behind it): link evidence older than its removal never links to it
            self._record_hub_end(event.esme, event.time, out)
        return head + note

    def _record_hub_end(self, ch: int, time: datetime, out: list[Effect]) -> None:
        """Keep the hub's end per hub (:class:`HubEnd`): later link evidence not newer than it never links
        an ESME to the hub, whichever ESME it names."""
        if self.inventory.end_hub(ch, time):
            end = self.inventory.hub_end(ch)
            assert end is not None
            out.append(StateChange(Table.HUB_END, f"{ch:016X}", HubEnd(ch, end, self._now())))

    def _end_links(self, esme: int, names: tuple[str, ...], time: datetime, out: list[Effect]) -> str:
        """End the links ``names`` (``ch`` / ``mpan``) of ``esme`` as of ``time`` (an ESME not known yet
        gets a row without links). Returns what was ended and what newer evidence kept."""
        inv = self.inventory
        had = {"ch": inv.ch_for_esme(esme), "mpan": inv.mpan_for_esme(esme)}
        fact = LearnedLink(
            esme,
            None,
            None,
            None,
            None,
            None,
            time if "ch" in names else None,
            time if "mpan" in names else None,
            names,
        )
        prior = inv.learned(esme)
        state = inv.learn_link(fact)
        if state is not None:
            out.append(StateChange(Table.LEARNED, f"{esme:016X}", replace(state, at=self._now())))
        kept = superseded(prior, fact)
        ended = [
            f"Comms Hub {value:016X}" if name == "ch" else f"MPxN {value}"
            for name, value in had.items()
            if name in names and value is not None and name not in kept
        ]
        note = f"ended its {' and '.join(ended)}" if ended else "no link to end"
        if kept:
            assert prior is not None
            note += "; kept (newer evidence) its " + ", ".join(
                f"{name} {_when(getattr(prior, name + '_time'))}" for name in kept
            )
        return note

    def _end_hub(self, ch: int, time: datetime, out: list[Effect]) -> str:
        """A Comms Hub decommissioned or removed: end the Comms Hub link of every ESME behind it, and keep
        the hub's end (:meth:`_record_hub_end`)."""
        inv = self.inventory
        esmes = sorted(inv.esmes_for_ch(ch))
        if not esmes:
            self._record_hub_end(ch, time, out)
            return f"no ESME behind Comms Hub {ch:016X} (its end is kept)"
        ended: list[str] = []
        kept: list[str] = []
        for esme in esmes:
            prior = inv.learned(esme)
            # the link ended by the hub, ordered by the time of its evidence (state.hub_end_fact)
            fact = hub_end_fact(prior, esme, ch, time)
            if fact is None:
                assert prior is not None
                kept.append(f"{esme:016X} {_when(prior.ch_time)}")
                continue
            state = inv.learn_link(fact)
            if state is not None:
                out.append(StateChange(Table.LEARNED, f"{esme:016X}", replace(state, at=self._now())))
            ended.append(f"{esme:016X}")
        self._record_hub_end(ch, time, out)
        note = "no link to end"
        if ended:
            note = f"ended the link to Comms Hub {ch:016X} of ESME {', '.join(ended)}"
        if kept:
            note += f"; kept (newer evidence) the link to Comms Hub {ch:016X} of ESME " + ", ".join(kept)
        return note

    def _end_contradicted_mpxn(self, event: InventoryUnlinked, out: list[Effect]) -> str:
        """A meter's identity states its MPxNs: its MPxN link ends when it is none of them (the alert
        contradicts it). The stated MPxNs are not learned: only an end is taken from the alert."""
        known = self.inventory.mpan_for_esme(event.esme)
        if known is None:
            return "no MPxN link to end"
        stated = {_mpxn(m) for m in event.mpxns if _mpxn(m)}
        if not stated or _mpxn(known) in stated:
            return f"its MPxN {known} is not contradicted"
        note = self._end_links(event.esme, ("mpan",), event.time, out)
        return f"{note} (it states {', '.join(event.mpxns)})"

    def _keep_unverified(
        self,
        event: _Observation,
        out: list[Effect],
    ) -> None:
        if isinstance(event, ActivationRequested):
            role, when = ("cancellation" if event.is_cancellation else "request"), event.seen_at
            if event.execution_time is not None and not event.is_cancellation:
                when = event.execution_time
        elif isinstance(event, ActivationResponse):
            role, when = "response", event.response_time
        elif isinstance(event, FutureDatedOutcome):
            role, when = "fd-outcome", event.execution_time
        else:
            return
        if role == "cancellation":
            return  # a cancellation can only ever retract: nothing to say about it when unverified
        rec = UnverifiedEvidence(event.message_id, event.esme, role, when, event.verification, self._now())
        self._put_unverified(rec)
        out.append(StateChange(Table.UNVERIFIED, rec.message_id, rec))

    def _evidence(
        self, event: ActivationRequested | ActivationResponse | FutureDatedOutcome, out: list[Effect]
    ) -> None:
        cfg = self.config
        key: ActivationKey = (
            (event.esme, event.supplier, event.command_counter)
            if isinstance(event, FutureDatedOutcome)
            else (event.esme, event.supplier, event.counter)
        )
        machine_event = classify(event, cfg)
        self._transition(key, event, machine_event, out)
        if machine_event is ActEvent.REQUEST_CANCEL:
            assert isinstance(event, ActivationRequested)
            for other in sorted(self._acts_by_esme.get(event.esme, ())):
                act = self._acts[other]
                if other != key and act.state is ActState.PENDING_FUTURE and _cancellable(act, event.seen_at):
                    self._transition(other, event, ActEvent.RETRACT, out)
        elif machine_event is ActEvent.RESPONSE_ACCEPTED:
            self._cancelled_before(key, out)
        self._reevaluate(event.esme, out)

    def _cancelled_before(self, key: ActivationKey, out: list[Effect]) -> None:
        """A command the device accepted (its "accepted" response's ``ResponseDateTime``) no later than a cancellation
        of its ESME was observed, taken in only after that cancellation: the cancellation retracts it, as it would
        have had the response come first (``_evidence``; ENGINE.md §4) — the command was pending on the device when
        the cancellation was sent. Not one whose request was observed after the cancellation (a command sent after
        it), nor one whose execution time had come when it was observed (``_cancellable``)."""
        act = self._acts.get(key)
        if act is None or act.state is not ActState.PENDING_FUTURE or act.accepted_at is None:
            return
        found: tuple[datetime, str, EvidenceItem, Activation] | None = None
        for other in self._acts_by_esme.get(act.esme, ()):
            cancel = self._acts[other]
            seen = cancel.requested_at
            if other == key or cancel.command != "cancel" or seen is None:
                continue
            if act.accepted_at > seen or (act.requested_at is not None and act.requested_at > seen):
                continue
            if not _cancellable(act, seen):
                continue
            item = next((e for e in cancel.evidence if e.role == "cancellation" and e.time == seen), None)
            if item is not None and (found is None or (seen, format_key(other)) < found[:2]):
                found = (seen, format_key(other), item, cancel)
        if found is None:
            return
        seen, _, item, cancel = found
        # the cancellation request as it was taken in (its record keeps its id and the time it was observed)
        request = ActivationRequested(
            message_id=item.message_id,
            arrival=self._now(),
            verified=True,
            supplier=cancel.supplier,
            esme=cancel.esme,
            counter=cancel.counter,
            execution_time=None,
            is_cancellation=True,
            seen_at=seen,
        )
        self._transition(key, request, ActEvent.RETRACT, out)

    def _transition(
        self,
        key: ActivationKey,
        event: ActivationRequested | ActivationResponse | FutureDatedOutcome,
        machine_event: ActEvent,
        out: list[Effect],
    ) -> None:
        current = self._acts.get(key)
        new = apply(current, event, machine_event, self.config, self._now())
        if new is None:
            if current is not None:
                self._drop_act(key)
                out.append(StateChange(Table.ACTIVATION, format_key(key), None))
            return
        if new == current:
            return
        self._put_act(new)
        out.append(StateChange(Table.ACTIVATION, format_key(key), new))

    # ------------------------------------------------------------------ inline lane

    def _inline(
        self, event: PowerOutage | SupplyRestored | OtherInline, out: list[Effect], rejected: Reason | None
    ) -> None:
        if not event.verified and (rejected is not None or not self.config.quarantine_unverified_inline):
            self._index_unsigned(event.message_id)  # forwarded: the DNO has these bytes (a quarantine: not)
        if rejected is not None:
            self._decide(event, _Verdict("forward", rejected), Action.FORWARD, out)
        elif not event.verified:
            if self.config.quarantine_unverified_inline:
                self._decide(event, _Verdict("suppress", Reason.QUARANTINED), Action.SUPPRESS, out)
            else:
                self._decide(event, _Verdict("forward", Reason.INLINE_UNVERIFIED), Action.FORWARD, out)
        elif isinstance(event, OtherInline):
            self._decide(event, _Verdict("forward", Reason.OTHER_INLINE), Action.FORWARD, out)
        else:
            verdict = self._evaluate(event)
            if verdict.verdict == "hold":
                self._hold(event, verdict, out)
            else:
                action = Action.SUPPRESS if verdict.verdict == "suppress" else Action.FORWARD
                self._decide(event, verdict, action, out)

    def _evaluate(self, event: InlineEvent) -> _Verdict:
        if isinstance(event, PowerOutage):
            return self._evaluate_outage(event)
        if isinstance(event, SupplyRestored):
            return self._evaluate_restoration(event)
        return _Verdict("forward", Reason.OTHER_INLINE)

    def _in_scope(self, esmes: Sequence[int]) -> tuple[int, ...]:
        mode = self.config.scope
        if mode == "guid-list":
            scope = self.scope
            if len(esmes) == 1:
                return (esmes[0],) if esmes[0] in scope else ()
            return tuple([e for e in esmes if e in scope])
        if mode == "manufacturer":
            cfg, inv = self.config, self.inventory
            return tuple([e for e in esmes if cfg.in_scope_manufacturer(inv.manufacturer_of(e))])
        return tuple(esmes)

    def _evaluate_outage(self, event: PowerOutage) -> _Verdict:
        """Join CH (then MPAN) -> ESMEs -> scope -> activations. The MPAN is consulted only when
        the CH's ESMEs do not already explain the outage: it can add ESMEs (a stale or re-homed
        CH), never take any away, so skipping it then cannot change a suppression. An MPxN that is not
        a 13-digit MPAN core with its check digit is no MPAN: no meter is joined through it (forward
        side)."""
        inv = self.inventory
        esmes: Sequence[int] = inv.esmes_for_ch(event.ch)
        if len(esmes) > 1:
            # in EUI order: the inventory's own order of a hub's or an MPxN's ESMEs follows the order their links
            # were applied in, which a restore (or a reload) does not repeat, and the decision (its ESMEs, its
            # evidence, the kept and held records) must be the same after one
            esmes = sorted(esmes)
        verdict = self._assess(esmes, event.start_time) if esmes else None
        if (
            (verdict is None or verdict.verdict != "suppress")
            and event.mpan
            and mpan_core_valid(_mpxn(event.mpan))
        ):
            by_mpan = inv.esmes_for_mpan(event.mpan)
            extra = [e for e in by_mpan if e not in esmes]
            if extra:
                esmes = sorted((*esmes, *extra))
                verdict = self._assess(esmes, event.start_time)
        if verdict is None:
            return _Verdict("forward", Reason.CH_UNKNOWN)
        return verdict

    def _assess(self, esmes: Sequence[int], start: datetime) -> _Verdict:
        in_scope = self._in_scope(esmes)
        if not in_scope:
            return _Verdict("forward", Reason.OUT_OF_SCOPE, tuple(esmes))
        acts_by_esme = self._acts_by_esme
        keys = [k for e in in_scope for k in acts_by_esme.get(e, ())]
        if not keys and not self._unverified:
            return _Verdict("forward", Reason.NO_ACTIVATION, in_scope)  # the common path
        cfg = self.config
        suppress: list[tuple[Assessment, Activation]] = []
        pending: list[tuple[Assessment, Activation]] = []
        other: list[tuple[Assessment, Activation]] = []
        for key in keys:
            act = self._acts[key]
            a = assess(act, start, cfg)
            if a is None:
                continue
            if a.verdict == "suppress":
                suppress.append((a, act))
            elif a.verdict == "pending":
                pending.append((a, act))
            else:
                other.append((a, act))
        if suppress:
            a, act = min(suppress, key=lambda p: (_SUPPRESS_RANK[p[0].reason], format_key(p[1].key)))
            return _Verdict("suppress", a.reason, in_scope, a.opens, a.closes, act, act.evidence)
        if pending:
            pending.sort(key=lambda p: format_key(p[1].key))
            a, act = pending[0]
            evidence = tuple(item for _, p in pending for item in p.evidence)
            # held under every in-scope ESME: evidence on any of them may decide it
            return _Verdict("hold", a.reason, in_scope, a.opens, a.closes, act, evidence, in_scope)
        best = min(other, key=lambda p: (_FORWARD_RANK[p[0].reason], format_key(p[1].key))) if other else None
        unverified = self._unverified_match(in_scope, start)
        if unverified and (
            best is None or _FORWARD_RANK[Reason.EVIDENCE_UNVERIFIED] < _FORWARD_RANK[best[0].reason]
        ):
            return _Verdict("forward", Reason.EVIDENCE_UNVERIFIED, in_scope, evidence=unverified)
        if best is not None:
            a, act = best
            return _Verdict("forward", a.reason, in_scope, a.opens, a.closes, act, act.evidence)
        return _Verdict("forward", Reason.NO_ACTIVATION, in_scope)

    def _unverified_match(self, esmes: Sequence[int], start: datetime) -> tuple[EvidenceItem, ...]:
        if not self._unverified:
            return ()
        before, after = self.config.window_before, self.config.window_after
        items = []
        unverified = self._unverified
        for esme in esmes:
            # by time, then id: the order a restored engine loads them in (not the order they were taken in)
            for mid in sorted(self._unverified_by_esme.get(esme, ()), key=lambda m: (unverified[m].at, m)):
                u = unverified[mid]
                if u.time - before <= start <= u.time + after:
                    items.append(
                        EvidenceItem(
                            "unverified", u.message_id, u.esme, u.time, f"{u.role}: {u.verification}"
                        )
                    )
        return tuple(items)

    def _evaluate_restoration(self, event: SupplyRestored) -> _Verdict:
        esme = event.esme
        if event.clock_unreliable:
            # the device says its own clock does not vouch for the interruption time: no window test can
            # rest on it, so neither pairing nor waiting for a held AD1 (forwarded: the safe direction)
            item = EvidenceItem(
                DEVICE_CLOCK_UNRELIABLE,
                event.message_id,
                esme,
                event.interruption_time,
                event.clock_unreliable,
            )
            return _Verdict("forward", Reason.NOT_PAIRED, (esme,), evidence=(item,))
        ids = list(self._suppressed_by_esme.get(esme, ()))
        ch = self.inventory.ch_for_esme(esme)
        if ch is not None:
            ids.extend(i for i in self._suppressed_by_ch.get(ch, ()) if i not in ids)
        t = event.interruption_time
        # of the kept AD1s whose window contains the interruption, the one whose outage began nearest to it (the
        # outage it restores; then by message id): two outages of one hub can both fall in one window (a genuine
        # cut after the reboot), and the pairing is what an operator's release follows. When the DNO got that
        # one (an operator released it, or it was forwarded: ``SuppressedOutage.dno_knows``), its restoration
        # is forwarded, not paired with another suppressed AD1 of the hub
        paired = min(
            (o for o in map(self._suppressed.__getitem__, ids) if o.opens <= t <= o.closes),
            key=lambda o: (abs(o.start_time - t), o.message_id),
            default=None,
        )
        # wait for a held AD1 it could pair with once decided: one held for this ESME or one of its Comms Hub
        # (the pairing above takes both: the outage is the hub's power, every meter on that supply restores
        # with it, in scope or not), only when the window that would explain the AD1 could contain the
        # interruption (it contains the AD1's StartDateTime and is never wider than widest_window: an
        # interruption further away is another outage's, decided now, not after it), and only when that AD1
        # would be nearer to the interruption than the kept one chosen above: the restoration ends as it
        # would have had it come after the held AD1 was decided
        reach = self.config.widest_window
        candidates = set(self._held_by_esme.get(esme, ()))
        if ch is not None:
            candidates.update(self._held_by_ch.get(ch, ()))
        nearest = None if paired is None else (abs(paired.start_time - t), paired.message_id)
        # only for the AD1s due before the deadline its hold decision states (``_hold``: held + 2 * hold_limit, so
        # those held before its own held + hold_limit; one held later is as one that came after it was decided):
        # it is never held past what its hold stated, not for as long as nearer AD1s keep coming
        own = self._held.get(event.message_id)
        limit = self._now() + 2 * self.config.hold_limit if own is None else own.decision.hold_deadline
        # a hold whose own deadline is not before the one its decision states was taken by a version before that
        # rule (its decision stated its own held + hold_limit, and it waited for the AD1s held before that, its
        # deadline moving with theirs; this version's never reaches what it stated): it waits for the AD1s that
        # version waited for, as it would have, not for fewer (decided earlier, it was paired with a farther
        # suppressed AD1 while the DNO got the nearer one, its restoration withheld)
        by_hold = own is not None and limit is not None and own.deadline >= limit
        waiting = sorted(
            mid
            for mid in candidates
            if isinstance(ev := self._held[mid].event, PowerOutage)
            and abs(ev.start_time - t) <= reach
            and (limit is None or (self._held[mid].since if by_hold else self._held[mid].deadline) < limit)
            and (nearest is None or (abs(ev.start_time - t), mid) < nearest)
        )
        if waiting:
            items = tuple(EvidenceItem("held-outage", m, esme, self._held[m].since) for m in waiting)
            # held under its own ESME and under those of the AD1s it waits for: releasing one of them
            # re-evaluates the messages held for its ESMEs (``_release``), this restoration among them
            hold_esmes = sorted({e for m in waiting for e in self._held[m].esmes} - {esme})
            return _Verdict(
                "hold", Reason.PENDING_OUTAGE, (esme,), evidence=items, hold_esmes=(esme, *hold_esmes)
            )
        if paired is not None and paired.dno_knows:
            role = "released-outage" if paired.released else "forwarded-outage"
            item = EvidenceItem(role, paired.message_id, paired.ch, paired.start_time)
            return _Verdict("forward", Reason.NOT_PAIRED, (esme,), evidence=(item,))
        if paired is not None:
            verdict = "suppress" if self.config.restoration_policy == "suppress-paired" else "forward"
            item = EvidenceItem("suppressed-outage", paired.message_id, paired.ch, paired.start_time)
            return _Verdict(
                verdict, Reason.RESTORATION_PAIRED, (esme,), paired.opens, paired.closes, None, (item,)
            )
        return _Verdict("forward", Reason.NOT_PAIRED, (esme,))

    def _hold(self, event: InlineEvent, verdict: _Verdict, out: list[Effect]) -> None:
        now = self._now()
        deadline = now + self.config.hold_limit
        if deadline <= now:
            # hold_limit 0: the deadline is reached the moment the hold would begin (``_advance`` times a hold
            # out when the clock reaches its deadline), so nothing is held: decided now, as at a time-out
            self._decide(event, _timed_out(verdict), Action.FORWARD, out)
            return
        # what the hold decision states (the audit's record of the hold, a re-delivery's answer): the latest it can
        # last. An AD1's is its deadline; a restoration waits for the held AD1s due before held + 2 * hold_limit
        # (``_evaluate_restoration``), its deadline moving with them (``_wait_on``), so it states that
        stated = deadline + self.config.hold_limit if isinstance(event, SupplyRestored) else deadline
        decision = self._decision(event, verdict, Action.HOLD, stated)
        held = HeldMessage(event, now, deadline, verdict.hold_esmes, decision)
        self._put_held(held)
        out.append(decision)
        out.append(StateChange(Table.HELD, event.message_id, held))
        self._mark_seen(Seen(event.message_id, event.kind, now, decision, "", event.digest), out)

    def _reevaluate(self, esme: int, out: list[Effect]) -> None:
        """Re-decide the messages held for ``esme`` (outages first, then restorations)."""
        ids = self._held_by_esme.get(esme)
        if not ids:
            return
        ordered = sorted(
            ids, key=lambda m: (not isinstance(self._held[m].event, PowerOutage), self._held[m].since, m)
        )
        for mid in ordered:
            held = self._held.get(mid)
            if held is not None:
                verdict = self._evaluate(held.event)
                if verdict.verdict != "hold":
                    self._release(held, out, verdict)
                elif isinstance(held.event, SupplyRestored):
                    self._wait_on(held, verdict, out)

    def _wait_on(self, held: HeldMessage, verdict: _Verdict, out: list[Effect]) -> None:
        """A restoration still waiting (``pending-outage``) for held AD1s, maybe others than when it was held (one
        held since, nearer to its interruption): it is decided when they are, so it is held under their ESMEs and
        until the latest of their deadlines (never before its own), not timed out on a limit of its own."""
        waited = [
            h.deadline
            for item in verdict.evidence
            if item.role == "held-outage" and (h := self._held.get(item.message_id)) is not None
        ]
        deadline = max([held.deadline, *waited])
        esmes = tuple(sorted(set(held.esmes) | set(verdict.hold_esmes)))
        if deadline == held.deadline and esmes == held.esmes:
            return
        self._unhold(held)
        again = replace(held, deadline=deadline, esmes=esmes)
        self._put_held(again)
        out.append(StateChange(Table.HELD, held.event.message_id, again))

    def _release(self, held: HeldMessage, out: list[Effect], verdict: _Verdict | None = None) -> None:
        """End a hold: with ``verdict`` when new evidence decided it, else (time-out) with whatever
        evidence exists now; a message still waiting is then forwarded as ``hold-timeout`` (a restoration still
        waiting for held AD1s is decided with them instead, ``_wait_on``)."""
        event = held.event
        if verdict is None:
            verdict = self._evaluate(event)
            if verdict.verdict == "hold" and isinstance(event, SupplyRestored):
                # the AD1s it waits for that are due at this instant time out first (their release decides it);
                # it waits on for the others
                now = self._now()
                for item in verdict.evidence:
                    ad1 = self._held.get(item.message_id)
                    if item.role == "held-outage" and ad1 is not None and ad1.deadline <= now:
                        self._release(ad1, out)
                current = self._held.get(event.message_id)
                if current is None:
                    return
                verdict = self._evaluate(event)
                if verdict.verdict == "hold":
                    self._wait_on(current, verdict, out)
                    return
                held = current
        if verdict.verdict == "hold":
            verdict = _timed_out(verdict)
        self._unhold(held)
        out.append(StateChange(Table.HELD, event.message_id, None))
        action = Action.RELEASE_SUPPRESS if verdict.verdict == "suppress" else Action.RELEASE_FORWARD
        self._decide(event, verdict, action, out, first_at=held.since, held_for=held.esmes)
        if isinstance(event, PowerOutage):
            for esme in held.esmes:
                self._reevaluate(esme, out)

    def _decide(
        self,
        event: InlineEvent,
        verdict: _Verdict,
        action: Action,
        out: list[Effect],
        first_at: datetime | None = None,
        held_for: tuple[int, ...] = (),
    ) -> None:
        """Record the decision (``first_at``: when it was held, ``held_for``: the ESMEs it was held for) and, for an
        AD1, its kept outage."""
        decision = self._decision(event, verdict, action, None)
        out.append(decision)
        at = decision.decided_at if first_at is None else first_at
        seen = Seen(event.message_id, event.kind, at, decision, "", event.digest)
        self._mark_seen(seen, out, replace=first_at is not None)
        if type(event) is not PowerOutage:
            return
        if verdict.verdict == "suppress" and verdict.opens is not None and verdict.closes is not None:
            rec = SuppressedOutage(
                event.message_id,
                event.ch,
                event.mpan,
                verdict.esmes,
                event.start_time,
                verdict.opens,
                verdict.closes,
                self._now(),
            )
        elif verdict.verdict == "forward" and (
            verdict.reason in _KEPT_FORWARDS or first_at is not None or event.message_id in self._suppressed
        ):
            # the DNO got it while its in-scope ESMEs had firmware-activation evidence: another AD1 of the hub
            # may yet be suppressed with a window over its restoration, which must not pair with that one. So
            # also, whatever the reason, when it was held (it had such evidence then, and a restoration may have
            # waited for it as the nearer outage: its meter decommissioned or its activation gone during the
            # hold, it is released out-of-scope, ch-unknown or no-activation) and when it is decided again
            # while its earlier life's record is kept (a suppressed outage no longer: the DNO got it now)
            reach = self.config.widest_window
            start = event.start_time
            esmes = verdict.esmes
            if held_for and not set(held_for) <= set(esmes):
                # an AD1 released forward after a hold is kept under the ESMEs it was held for too: a restoration of
                # one of them may have waited for it as the nearer outage (held under them), and its links may have
                # ended during the hold (the meter decommissioned: released ch-unknown or out-of-scope, its own ESME
                # no longer joined), which must not leave that restoration paired with a farther suppressed AD1
                esmes = tuple(sorted({*esmes, *held_for}))
            rec = SuppressedOutage(
                event.message_id,
                event.ch,
                event.mpan,
                esmes,
                start,
                start - reach,
                start + reach,
                self._now(),
                forwarded=True,
            )
        else:
            return
        rec = self._put_suppressed(rec)
        out.append(StateChange(Table.SUPPRESSED, rec.message_id, rec))

    def _decision(
        self, event: InlineEvent, verdict: _Verdict, action: Action, deadline: datetime | None
    ) -> Decision:
        act = verdict.activation
        if isinstance(event, PowerOutage):
            event_time: datetime | None = event.start_time
            ch: int | None = event.ch
            mpan = event.mpan
        elif isinstance(event, SupplyRestored):
            event_time, ch, mpan = event.interruption_time, None, None
        else:
            event_time, ch, mpan = event.event_time, None, None
        flags: tuple[str, ...] = ()
        if act is not None and act.skew_flagged:
            flags = ("clock-skew",)
        if isinstance(event, SupplyRestored) and event.clock_unreliable:
            flags = (*flags, DEVICE_CLOCK_UNRELIABLE)
        return Decision(
            event.message_id,
            event.kind,
            action,
            verdict.reason,
            self._now(),
            event_time,
            ch,
            mpan,
            verdict.esmes,
            verdict.opens,
            verdict.closes,
            None if act is None else format_key(act.key),
            verdict.evidence,
            flags,
            deadline,
        )

    # ------------------------------------------------------------------ indexes

    def _now(self) -> datetime:
        assert self._clock is not None
        return self._clock

    def _mark_seen(self, seen: Seen, out: list[Effect], replace: bool = False) -> None:
        if not replace:
            self._seen_order.append((seen.at, seen.message_id))
        self._seen[seen.message_id] = pack_seen(seen)
        out.append(StateChange(Table.SEEN, seen.message_id, seen))

    def _same_bytes(self, event: MessageEvent) -> PackedSeen | None:
        """The key of the same bytes under their other id, when it is kept (ENGINE.md §8). A message whose XML
        signature did not verify (its id marked with the digest of its bytes): the key of the id it has signed,
        when that key was kept with the same digest (its signed copy was taken; different bytes naming its
        identity never have that digest). An inline message: the key of the id its bytes have unsigned, when an
        inline message was forwarded under it (the DNO has these bytes; a quarantined copy was withheld from it,
        and an observation verified later is evidence, as on its own: both are decided afresh)."""
        mid, digest = event.message_id, event.digest
        assert digest is not None
        if event.lane == "inline" and (unsigned := self._unsigned_inline.get(mid)) is not None:
            alias = unsigned_id(mid, digest)
            if alias in unsigned:
                return self._seen.get(alias)
        if event.verified:
            return None  # only an unsigned message's id carries its digest's mark: the verified path looks no further
        twin = signed_twin(mid, digest)
        if twin is None:
            return None
        packed = self._seen.get(twin)
        # PackedSeen's digest: only a key kept with this digest is of the same bytes
        return packed if packed is not None and packed[4] == digest else None

    def _index_unsigned(self, message_id: str) -> None:
        """An inline message forwarded under an unsigned id (``<identity>#unverified:<digest>``; an inline
        message's id is its identity): indexed by its identity, the id the same bytes have signed."""
        identity, mark, _digest = message_id.rpartition(UNSIGNED_MARK)
        if mark:
            self._unsigned_inline.setdefault(identity, set()).add(message_id)

    def _unindex_unsigned(self, message_id: str) -> None:
        identity, mark, _digest = message_id.rpartition(UNSIGNED_MARK)
        ids = self._unsigned_inline.get(identity) if mark else None
        if ids is not None:
            ids.discard(message_id)
            if not ids:
                del self._unsigned_inline[identity]

    def _put_act(self, act: Activation) -> None:
        key = act.key
        if key not in self._acts:
            self._acts_by_esme.setdefault(act.esme, []).append(key)
        self._acts[key] = act
        heapq.heappush(self._act_expiry, (expires_at(act, self.config), key))

    def _drop_act(self, key: ActivationKey) -> None:
        self._acts.pop(key, None)
        _remove(self._acts_by_esme, key[0], key)

    def _put_held(self, held: HeldMessage) -> None:
        mid = held.event.message_id
        self._held[mid] = held
        for esme in held.esmes:
            self._held_by_esme.setdefault(esme, set()).add(mid)
        if isinstance(held.event, PowerOutage):
            self._held_by_ch.setdefault(held.event.ch, set()).add(mid)
        heapq.heappush(self._hold_heap, (held.deadline, mid))

    def _unhold(self, held: HeldMessage) -> None:
        mid = held.event.message_id
        self._held.pop(mid, None)
        for esme in held.esmes:
            ids = self._held_by_esme.get(esme)
            if ids is not None:
                ids.discard(mid)
                if not ids:
                    del self._held_by_esme[esme]
        if isinstance(held.event, PowerOutage):
            ids = self._held_by_ch.get(held.event.ch)
            if ids is not None:
                ids.discard(mid)
                if not ids:
                    del self._held_by_ch[held.event.ch]

    def _put_suppressed(self, rec: SuppressedOutage) -> SuppressedOutage:
        """Keep ``rec``; returns the record kept. An AD1 decided again (re-delivered once its idempotency key
        was pruned, its record not yet: a held AD1's key is as old as its hold, its record as its release)
        replaces its record, indexed once, and stays known to the DNO if it was (released or forwarded)."""
        old = self._suppressed.get(rec.message_id)
        if old is not None:
            self._unindex_suppressed(old)
            if old.dno_knows and not rec.dno_knows:
                rec = replace(rec, released=old.released, forwarded=old.forwarded)
        self._suppressed[rec.message_id] = rec
        for esme in rec.esmes:
            self._suppressed_by_esme.setdefault(esme, []).append(rec.message_id)
        self._suppressed_by_ch.setdefault(rec.ch, []).append(rec.message_id)
        self._suppressed_order.append((rec.decided_at, rec.message_id))
        return rec

    def _unindex_suppressed(self, rec: SuppressedOutage) -> None:
        for esme in rec.esmes:
            _remove(self._suppressed_by_esme, esme, rec.message_id)
        _remove(self._suppressed_by_ch, rec.ch, rec.message_id)

    def _put_unverified(self, rec: UnverifiedEvidence) -> None:
        old = self._unverified.get(rec.message_id)
        if old is not None:  # taken again once its key was pruned, its record not yet: indexed once
            _remove(self._unverified_by_esme, old.esme, rec.message_id)
        self._unverified[rec.message_id] = rec
        self._unverified_by_esme.setdefault(rec.esme, []).append(rec.message_id)
        self._unverified_order.append((rec.at, rec.message_id))


def _timed_out(verdict: _Verdict) -> _Verdict:
    """A message still waiting when its hold ends: forwarded as ``hold-timeout``, with what it waited for."""
    return _Verdict(
        "forward",
        Reason.HOLD_TIMEOUT,
        verdict.esmes,
        verdict.opens,
        verdict.closes,
        verdict.activation,
        verdict.evidence,
    )


def _remove(index: dict[Any, list[Any]], key: Any, item: Any) -> None:
    items = index.get(key)
    if items is not None:
        try:
            items.remove(item)
        except ValueError:
            return
        if not items:
            del index[key]


def _mpxn(value: str) -> str:
    """An MPxN as compared with another (spaces ignored, as the inventory's keys do)."""
    return value.replace(" ", "").strip()


def _when(time: datetime | None) -> str:
    return "(no time)" if time is None else f"at {time.isoformat()}"


def _cancellable(act: Activation, cancelled_at: datetime) -> bool:
    """Whether a cancellation observed at ``cancelled_at`` retracts the pending future-dated ``act``: the
    device applies a cancel to an activation still pending on it, so not to one whose execution time had
    come when the cancel was sent (it ran, or is running: its 8F66/8F67, or the hold's time-out, decides)."""
    return act.execution_time is None or act.execution_time > cancelled_at


def _quarantined(seen: Seen) -> bool:
    """Whether ``seen`` is the key of an inline message quarantined under its unsigned id (its own signature
    failed, ``quarantine_unverified_inline``): what an operator's release makes a forward of its bytes."""
    d = seen.decision
    return d is not None and d.reason is Reason.QUARANTINED and UNSIGNED_MARK in seen.message_id


def _at(rec: PackedSeen | SuppressedOutage | UnverifiedEvidence) -> datetime:
    if isinstance(rec, tuple):
        at: datetime = rec[2]  # PackedSeen's ``at``
        return at
    return rec.decided_at if isinstance(rec, SuppressedOutage) else rec.at


def records_of(changes: Iterable[StateChange]) -> Iterator[tuple[str, str, Record]]:
    """``(table, key, record)`` rows of upserts, e.g. to feed :meth:`Engine.restore` from
    :meth:`Engine.export_state` directly."""
    from gateway.engine.records import to_record

    for ch in changes:
        if ch.value is not None:
            yield ch.table.value, ch.key, to_record(ch.value)
