"""An independent reference model of the correlation engine's rules, for the model-based test.

Written from DOMAIN.md §4 and docs/ENGINE.md §2-§8 (the rules), not from ``gateway/engine``: plain
dictionaries and lists, every decision recomputed from scratch, no indexes. It covers a small world: ESMEs on
Comms Hubs (a snapshot, and the links verified traffic teaches or ends, ENGINE.md §3: 8.2 observations ordered
by their own times, status changes that end links, hubs' ends), a GUID list, immediate and future-dated
activations with their 8F66 / 8F67 outcomes and cancellations, unverified evidence, AD1s, restorations (among
them ones whose device clock is unreliable), operator releases (§6), duplicates, the hold limit and retention
(and the prune budget, §8: which of the records due the engine prunes at a tick is its choice, checked against
the rule and then followed).

Where a rule leaves a choice open (which of several activations that explain an AD1 gives its window,
the forward reason when several are plausible) the model computes the set of acceptable answers;
``Expect`` carries it and the test checks the engine's answer is one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.engine import EngineConfig

IMMEDIATE = "immediate"
FUTURE = "future"

#: status changes that end links (ENGINE.md §3), as the alert's choice element names them
METER_REMOVED = "MeterDecommissioningOrWithdrawal"
HUB_DECOMMISSIONED = "CHFDecommissioning"
DEVICE_REMOVED = "DeviceRemovedFromInventory"
METER_IDENTITY = "MeterIdentity"

#: the weights of an MPAN core's first 12 digits (ENGINE.md §3)
_MPAN_PRIMES = (3, 5, 7, 13, 17, 19, 23, 29, 31, 37, 41, 43)

Window = tuple[datetime, datetime]

_NO_TIME = datetime.min  # (a placeholder in sort keys: never compared with a time)

#: forward reasons that say "activation evidence was there" (ENGINE.md §6: such a forward is kept)
EVIDENCE_FORWARDS = frozenset(
    {"hold-timeout", "outside-window", "activation-failed", "fd-failed", "cancelled", "evidence-unverified"}
)

#: the tables whose records the prune budget bounds (ENGINE.md §8)
BUDGETED = ("seen", "suppressed", "unverified")


def mpan_core(value: str | None) -> str | None:
    """An MPxN as the join compares it (spaces ignored), or None when it is not a 13-digit MPAN core whose
    check digit holds: no meter is joined through it, and it is never learned (ENGINE.md §3)."""
    if value is None:
        return None
    s = value.replace(" ", "").strip()
    if len(s) != 13 or not (s.isascii() and s.isdigit()):
        return None
    return (
        s if sum(int(d) * p for d, p in zip(s, _MPAN_PRIMES, strict=False)) % 11 % 10 == int(s[12]) else None
    )


@dataclass(frozen=True)
class Link:
    """A learned Comms Hub or MPxN link of one ESME (``value`` None: a removal ended it) and the own time of the
    evidence behind it (None: evidence without a time, older than any timed evidence)."""

    value: int | str | None
    time: datetime | None


def _takes(old: Link | None, time: datetime | None, end: bool) -> bool:
    """Whether evidence of ``time`` (a link, or its ``end``) replaces what is known of that link: only
    evidence at least as new does; of the same instant the later-applied, but an end wins a link (§3)."""
    if old is None:
        return True
    if time == old.time:
        return end or old.value is not None
    return time is not None and (old.time is None or time > old.time)


@dataclass
class Act:
    """One SR 11.3 command's record, keyed (esme, counter) (one supplier in this world)."""

    esme: int
    counter: int
    state: str  # pending-immediate | pending-future | confirmed | failed | cancelled
    request_seen: datetime | None = None
    requested: str | None = None  # IMMEDIATE / FUTURE / "cancel"
    execution: datetime | None = None  # the request's ExecutionDateTime
    accepted_at: datetime | None = None  # ResponseDateTime of an "accepted" (NULL) response
    anchor: datetime | None = None  # activation time of a confirmed / failed record
    via: str | None = None  # response | 8F66 | 8F67 (what confirmed / failed it)
    future: bool = False  # decided by a response, but a future-dated command (request, or "accepted" first)
    times: list[datetime] = field(default_factory=list)  # its event times and clock (retention: the latest)


@dataclass
class Unverified:
    message_id: str
    esme: int
    times: list[datetime]
    arrival: datetime


@dataclass
class Kept:
    """An AD1 kept for restoration pairing: suppressed (its window) or forwarded (start ± lead + after); an
    operator may have released a suppressed one since (§6). Both of the last two: the DNO got it."""

    message_id: str
    ch: int
    esmes: frozenset[int]
    start: datetime
    window: Window
    forwarded: bool
    decided_at: datetime
    released: bool = False

    @property
    def dno_knows(self) -> bool:
        return self.forwarded or self.released


@dataclass
class Held:
    message_id: str
    kind: str  # ad1 | restoration
    since: datetime
    deadline: datetime  # an AD1's hold limit; a restoration's: the latest deadline of the AD1s it waited for
    ch: int | None = None
    esme: int | None = None
    esmes: frozenset[int] = frozenset()  # an AD1's: its in-scope ESMEs (evidence on them re-decides it)
    time: datetime | None = None  # AD1 StartDateTime / restoration interruption time
    mpan: str | None = None
    # a restoration: the ESMEs it is held under (its own, and those of the AD1s it waited for) and the latest
    # its hold can last, what its hold decision stated (ENGINE.md §6)
    under: frozenset[int] = frozenset()
    stated: datetime | None = None


@dataclass
class Expect:
    """One expected decision: its action and the acceptable reasons (and windows, for a suppression)."""

    message_id: str
    action: str
    reasons: frozenset[str]
    windows: frozenset[tuple[Window, str]] | None = None  # (window, reason) of each explaining activation
    deadline: datetime | None = None  # what a hold decision states: the latest it can last (ENGINE.md §5, §6)
    doubted: bool = False  # a restoration whose device clock is unreliable: flagged (ENGINE.md §6)


@dataclass
class _Verdict:
    action: str  # suppress | hold | forward
    reasons: frozenset[str]
    windows: frozenset[tuple[Window, str]] = frozenset()
    esmes: frozenset[int] = frozenset()


class Model:
    """The rules, as a naive interpreter. ``chooser(message_id, windows)`` picks the window an AD1 is
    suppressed under when several activations explain it (the test answers with the engine's choice when
    it is one of them)."""

    def __init__(
        self,
        config: EngineConfig,
        hub_of: Mapping[int, int],
        mpan_of: Mapping[int, str],
        in_scope: frozenset[int],
        manufacturer_of: Mapping[int, str] | None = None,
    ) -> None:
        self.c = config
        self.retention = config.retention or timedelta(days=2) + config.window_before + config.window_after
        # the inventory: the snapshot's links, what verified traffic taught or ended (each MPxN link with the time
        # of its evidence: the ESME's learned link replaces the snapshot's), and each Comms Hub's latest end (§3).
        # Comms Hub links are kept as the facts themselves — every verified link evidence of an ESME (its own time,
        # the hub, its arrival) and every end of the ESME's own links — and read in the order of their own times
        # (ch_of): the end state does not depend on the order they arrived in
        self.snapshot_ch: dict[int, int] = dict(hub_of)
        self.snapshot_mpan: dict[int, str] = {
            e: m for e, m in ((e, mpan_core(m)) for e, m in mpan_of.items()) if m
        }
        self.ch_evidence: dict[int, list[tuple[datetime | None, int, int]]] = {}
        self.ch_removals: dict[int, list[datetime]] = {}
        self.learned_mpan: dict[int, Link] = {}
        self.hub_ends: dict[int, datetime] = {}
        self._facts = 0  # arrivals of link evidence (of one instant: the later applied wins)
        self.guids = in_scope
        # manufacturers: the snapshot's, replaced by any verified 8.2 that names one (§3)
        self.manufacturers: dict[int, str] = dict(manufacturer_of or {})
        self.clock: datetime | None = None
        self.acts: dict[tuple[int, int], Act] = {}
        self.unverified: dict[str, Unverified] = {}
        self.kept: dict[str, Kept] = {}
        self.held: dict[str, Held] = {}
        self.seen: dict[str, datetime] = {}  # message id -> when its key was taken (retention)
        self.latest: dict[str, str | None] = {}  # message id -> latest action (None: an observation)
        self.chooser: Callable[[str, frozenset[Window]], Window] = lambda _mid, ws: min(ws)
        self.reason_chooser: Callable[[str, frozenset[str]], str] = lambda _mid, rs: min(rs)

    # ------------------------------------------------------------------ the inventory (ENGINE.md §3)

    def ch_of(self, esme: int) -> int | None:
        """The ESME's Comms Hub: that of its newest link evidence (by own time; evidence without a time is older
        than any timed, the snapshot's link older than any evidence; of one instant the later arrived), unless a
        removal of its own links or the end of that hub is not older than that evidence (an end wins a link of
        its instant; any end is newer than the snapshot's link and than evidence without a time)."""
        evidence = self.ch_evidence.get(esme)
        if evidence:
            time, hub, _ = max(evidence, key=lambda e: (e[0] is not None, e[0] or _NO_TIME, e[2]))
        elif esme in self.snapshot_ch:
            time, hub = None, self.snapshot_ch[esme]
        else:
            return None
        for end in (*self.ch_removals.get(esme, ()), self.hub_ends.get(hub)):
            if end is not None and (time is None or end >= time):
                return None
        return hub

    @property
    def learned_ch(self) -> dict[int, Link]:
        """Each ESME whose Comms Hub link traffic taught or ended: its hub now and the newest own time of those
        facts."""
        out: dict[int, Link] = {}
        for esme in {*self.ch_evidence, *self.ch_removals}:
            times = [e[0] for e in self.ch_evidence.get(esme, ()) if e[0] is not None]
            times += self.ch_removals.get(esme, [])
            out[esme] = Link(self.ch_of(esme), max(times) if times else None)
        return out

    def mpan_of(self, esme: int) -> str | None:
        link = self.learned_mpan.get(esme)
        return self.snapshot_mpan.get(esme) if link is None else link.value  # type: ignore[return-value]

    def devices(self) -> set[int]:
        learned = {*self.ch_evidence, *self.ch_removals, *self.learned_mpan}
        return {*self.snapshot_ch, *self.snapshot_mpan, *learned}

    def esmes_on(self, ch: int) -> frozenset[int]:
        return frozenset(e for e in self.devices() if self.ch_of(e) == ch)

    def esmes_with(self, mpan: str | None) -> frozenset[int]:
        core = mpan_core(mpan)
        return (
            frozenset() if core is None else frozenset(e for e in self.devices() if self.mpan_of(e) == core)
        )

    def scoped(self, esmes: Iterable[int]) -> frozenset[int]:
        """The ESMEs in scope (§3): on the GUID list, of one of the manufacturers named (case-insensitive; an ESME
        of no known manufacturer never is), or all."""
        if self.c.scope == "guid-list":
            return frozenset(esmes) & self.guids
        if self.c.scope == "manufacturer":
            names = {n.strip().casefold() for n in self.c.manufacturers}
            return frozenset(
                e for e in esmes if (self.manufacturers.get(e) or "").strip().casefold() in names
            )
        return frozenset(esmes)

    def learn(
        self,
        mid: str,
        esme: int,
        ch: int | None,
        mpan: str | None,
        time: datetime | None,
        manufacturer: str | None = None,
    ) -> None:
        """A verified 8.2 observation: its Comms Hub link is one more fact (ch_of orders them); its MPxN link
        replaces what is known of it only when its evidence is at least as new; an MPxN that is no MPAN core is not
        learned (the rest is). Decides nothing, re-decides nothing."""
        self._observed(mid)
        if ch is not None:
            self._facts += 1
            self.ch_evidence.setdefault(esme, []).append((time, ch, self._facts))
        core = mpan_core(mpan) if mpan is not None and mpan.strip() else None
        if core is not None and _takes(self.learned_mpan.get(esme), time, False):
            self.learned_mpan[esme] = Link(core, time)
        if manufacturer is not None and manufacturer.strip():
            self.manufacturers[esme] = manufacturer.strip()

    def unlink(self, mid: str, change: str, device: int, time: datetime, mpxns: Iterable[str] = ()) -> None:
        """A verified status change that ends links, as of its own time (§3's table); never creates a link."""
        self._observed(mid)
        behind = self.esmes_on(device)
        if change == HUB_DECOMMISSIONED or (change == DEVICE_REMOVED and behind):
            self._end_hub(device, time)  # (the links to it of the ESMEs on it end: ch_of)
        elif change == METER_IDENTITY:
            known = self.mpan_of(device)
            stated = {m.replace(" ", "").strip() for m in mpxns} - {""}
            if known is not None and stated and known not in stated:
                self._end(device, ("mpan",), time)
        else:
            self._end(device, ("ch", "mpan"), time)
            if change == DEVICE_REMOVED:  # a removed device is no one's Comms Hub either
                self._end_hub(device, time)

    def _end(self, esme: int, names: tuple[str, ...], time: datetime) -> None:
        if "ch" in names:
            self.ch_removals.setdefault(esme, []).append(time)
        if "mpan" in names and _takes(self.learned_mpan.get(esme), time, True):
            self.learned_mpan[esme] = Link(None, time)

    def _end_hub(self, ch: int, time: datetime) -> None:
        old = self.hub_ends.get(ch)
        self.hub_ends[ch] = time if old is None else max(old, time)

    def _observed(self, mid: str) -> None:
        assert self.clock is not None
        self.seen[mid] = self.clock
        self.latest[mid] = None

    # ------------------------------------------------------------------ clock

    def advance(self, now: datetime) -> list[Expect]:
        """The gateway clock reaches ``now``: holds whose deadline it reaches end (oldest deadline first)."""
        out: list[Expect] = []
        if self.clock is not None and now <= self.clock:
            return out
        self.clock = now
        done: set[tuple[str, datetime]] = set()
        while True:
            due = sorted(
                (
                    h
                    for h in self.held.values()
                    if h.deadline <= now and (h.message_id, h.deadline) not in done
                ),
                key=lambda h: (h.deadline, h.message_id),
            )
            if not due:
                break
            h = due[0]
            done.add((h.message_id, h.deadline))
            if h.kind == "ad1":
                self._release(h, out, timed_out=True)
            else:
                # the AD1s it waits for that are due now time out first (their release decides it), then it is
                # decided, or waits on for those due later
                for ad1 in self._waited(h):
                    if ad1.deadline <= now and ad1.message_id in self.held:
                        self._release(ad1, out, timed_out=True)
                if h.message_id in self.held:
                    self._redecide_restoration(h, out)
        return out

    def due(self) -> dict[str, set[str]]:
        """The records the retention has passed (the clock reached their time + retention), by table."""
        assert self.clock is not None
        now, keep = self.clock, self.retention
        return {
            "seen": {mid for mid, at in self.seen.items() if at + keep <= now and mid not in self.held},
            "suppressed": {mid for mid, k in self.kept.items() if k.decided_at + keep <= now},
            "unverified": {mid for mid, u in self.unverified.items() if u.arrival + keep <= now},
        }

    def prune(self, pruned: Mapping[str, set[str]] | None = None) -> None:
        """On a tick: drop the activations the retention has passed, and the keys, kept outages and unverified
        evidence ``pruned`` names (the engine's choice, checked by :meth:`prune_problem`; None: every one due)."""
        assert self.clock is not None
        now, keep = self.clock, self.retention
        for key, act in list(self.acts.items()):
            if max(act.times) + keep <= now:
                del self.acts[key]
        take = self.due() if pruned is None else pruned
        for mid in take["seen"]:
            del self.seen[mid]
            self.latest.pop(mid, None)
        for mid in take["suppressed"]:
            del self.kept[mid]
        for mid in take["unverified"]:
            del self.unverified[mid]

    def prune_problem(self, pruned: Mapping[str, set[str]], budget: int | None) -> str | None:
        """What is wrong with a tick's prune of ``pruned`` (None: nothing): only records the retention has
        passed, at most ``budget`` of them (None: no budget reached, so every one due), §8."""
        due = self.due()
        for table in BUDGETED:
            early = pruned[table] - due[table]
            if early:
                return f"{table} pruned before their retention: {sorted(early)}"
        total = sum(len(pruned[t]) for t in BUDGETED)
        if budget is None:
            left = {t: sorted(due[t] - pruned[t]) for t in BUDGETED if due[t] - pruned[t]}
            return f"due but not pruned: {left}" if left else None
        return f"{total} records pruned at one tick, budget {budget}" if total > budget else None

    # ------------------------------------------------------------------ messages

    def duplicate(self, message_id: str) -> bool:
        return message_id in self.seen

    def observe(self, mid: str, esme: int, kind: str, **f: object) -> list[Expect]:
        """A verified observation: the transition table (ENGINE.md §4), then the holds of the ESME."""
        assert self.clock is not None
        self.seen[mid] = self.clock
        self.latest[mid] = None
        counter = f["counter"]
        assert isinstance(counter, int)
        key = (esme, counter)
        act = self.acts.get(key)
        now = self.clock
        if kind == "request":
            requested = f["requested"]
            execution = f.get("execution")
            assert execution is None or isinstance(execution, datetime)
            if act is None:
                state = {"immediate": "pending-immediate", "future": "pending-future", "cancel": "cancelled"}
                act = Act(esme, counter, state[str(requested)])
                self.acts[key] = act
            elif requested == "cancel" and act.state == "pending-future":
                act.state = "cancelled"
            # a request observed after its command's outcome (confirmed or failed) is evidence only: the outcome
            # fixed the record's kind and window (ENGINE.md §4), and its execution time is not the record's
            decided = act.state in ("confirmed", "failed")
            if act.request_seen is None and not decided:
                act.request_seen = now
                act.requested = str(requested)
                act.execution = execution
            act.times.append(now)
            if execution is not None and not decided:
                act.times.append(execution)
            if requested == "cancel":
                for other in self.acts.values():
                    if (
                        other.esme == esme
                        and other.state == "pending-future"
                        and (self._execution(other) is None or self._execution(other) > now)  # type: ignore[operator]
                    ):
                        other.state = "cancelled"
        elif kind == "response":
            at = f["at"]
            result = f["result"]
            assert isinstance(at, datetime)
            act = act or self.acts.setdefault(key, Act(esme, counter, "new"))
            act.times.append(at)
            if result is None:  # accepted for future execution
                if act.state in ("new", "pending-immediate"):
                    act.state = "pending-future"
                if act.accepted_at is None:
                    act.accepted_at = at
                if act.state == "pending-future" and any(
                    # a cancellation of the ESME observed no earlier than the device accepted the command (and not
                    # before its request was observed), taken in first: it retracts it as in the other order (§4)
                    other.esme == esme
                    and other.requested == "cancel"
                    and other.request_seen is not None
                    and act.accepted_at <= other.request_seen
                    and (act.request_seen is None or act.request_seen <= other.request_seen)
                    and (self._execution(act) is None or self._execution(act) > other.request_seen)  # type: ignore[operator]
                    for other in self.acts.values()
                    if other is not act
                ):
                    act.state = "cancelled"
            elif act.state in ("new", "pending-immediate", "pending-future"):
                ok = result in self.c.activation_results
                act.state, act.anchor, act.via = ("confirmed" if ok else "failed"), at, "response"
                act.future = act.requested == FUTURE or (
                    act.requested is None and act.accepted_at is not None
                )
        elif kind == "outcome":
            at = f["at"]
            success = f["success"]
            assert isinstance(at, datetime)
            act = act or self.acts.setdefault(key, Act(esme, counter, "new"))
            act.times.append(at)
            if success and act.state in ("new", "pending-immediate", "pending-future", "failed", "cancelled"):
                act.state, act.anchor, act.via = "confirmed", at, "8F66"
            elif not success and act.state in ("new", "pending-immediate", "pending-future", "cancelled"):
                act.state, act.anchor, act.via = "failed", at, "8F67"
        self.acts[key].times.append(
            now
        )  # the gateway clock at its last change (retention, with its event times)
        out: list[Expect] = []
        self._reevaluate({esme}, out)
        return out

    def observe_unverified(
        self, mid: str, esme: int, times: list[datetime], *, cancellation: bool = False
    ) -> None:
        """Evidence whose signature failed: kept apart (never evidence) so that a forward it would have changed can
        say so (§7); an unverified cancellation is not kept: it could only ever have retracted."""
        assert self.clock is not None
        self.seen[mid] = self.clock
        self.latest[mid] = None
        if not cancellation:
            self.unverified[mid] = Unverified(mid, esme, times, self.clock)

    def outage(
        self, mid: str, ch: int, mpan: str | None, start: datetime, verified: bool = True
    ) -> list[Expect]:
        assert self.clock is not None
        self.seen[mid] = self.clock
        out: list[Expect] = []
        if not verified:
            self._emit(out, self._unverified_inline(mid))
            return out
        verdict = self._assess_outage(ch, mpan, start)
        if verdict.action == "hold" and self.c.hold_limit > timedelta(0):
            self.held[mid] = Held(
                mid, "ad1", self.clock, self.clock + self.c.hold_limit, ch=ch, esmes=verdict.esmes,
                time=start, mpan=mpan,
            )  # fmt: skip
            self._emit(out, Expect(mid, "hold", verdict.reasons, deadline=self.clock + self.c.hold_limit))
            return out
        if verdict.action == "hold":
            verdict = _Verdict("forward", frozenset({"hold-timeout"}), esmes=verdict.esmes)
        self._decide_outage(mid, ch, start, verdict, out, released=False)
        return out

    def restoration(
        self, mid: str, esme: int, interrupted: datetime, verified: bool = True, doubted: bool = False
    ) -> list[Expect]:
        assert self.clock is not None
        self.seen[mid] = self.clock
        out: list[Expect] = []
        if not verified:
            # its own signature failed (fail open, or quarantined, §7): a doubted clock on top of it is flagged, and
            # it is forwarded either way (§6 says not-paired, §7 inline-unverified: both say why) unless quarantined
            expect = self._unverified_inline(mid)
            if doubted and expect.action == "forward":
                expect.reasons = frozenset({"inline-unverified", "not-paired"})
            expect.doubted = doubted
            self._emit(out, expect)
            return out
        if doubted:
            # the device marks its interruption time unreliable: never paired, never waits (§6)
            self._emit(out, Expect(mid, "forward", frozenset({"not-paired"}), doubted=True))
            return out
        limit = self.c.hold_limit
        held = Held(
            mid, "restoration", self.clock, self.clock + limit, esme=esme, time=interrupted,
            under=frozenset({esme}), stated=self.clock + 2 * limit,
        )  # fmt: skip
        waited = self._waited(held) if limit > timedelta(0) else []
        if waited:
            held.under |= {e for h in waited for e in h.esmes}
            self.held[mid] = held
            # it states the latest it can be held: it waits only for the AD1s due before that (ENGINE.md §6)
            self._emit(out, Expect(mid, "hold", frozenset({"pending-outage"}), deadline=held.stated))
        else:
            self._emit(out, self._restoration_verdict(held, released=False))
        return out

    def _unverified_inline(self, mid: str) -> Expect:
        """An inline message whose own signature failed (§7): forwarded, or kept as suppressed under quarantine; never
        evidence, never kept for pairing."""
        if self.c.quarantine_unverified_inline:
            return Expect(mid, "suppress", frozenset({"quarantined-unverified"}))
        return Expect(mid, "forward", frozenset({"inline-unverified"}))

    def release(self, mid: str) -> bool:
        """An operator released this suppressed AD1 (ENGINE.md §6): its kept record is marked released (kept
        for the rest of its retention). Whether anything changed."""
        kept = self.kept.get(mid)
        if kept is None or kept.released:
            return False
        kept.released = True
        return True

    # ------------------------------------------------------------------ the AD1 decision

    def _execution(self, act: Act) -> datetime | None:
        return act.execution if act.requested == FUTURE else None

    def _confirmed_window(self, act: Act) -> Window:
        assert act.anchor is not None
        before, after = self.c.window_before, self.c.window_after
        seen = act.request_seen
        if act.via == "response" and not act.future:  # (a future-dated command's window, whatever decided it)
            if seen is not None and seen <= act.anchor:
                opens = max(seen, act.anchor - self.c.request_lead_max)
            else:
                opens = act.anchor - before
        else:
            opens = act.anchor - before
            if seen is not None and seen <= act.anchor:
                opens = max(opens, seen)
        return opens, act.anchor + after

    def _pending_window(self, act: Act) -> tuple[datetime, datetime | None] | None:
        before, after = self.c.window_before, self.c.window_after
        seen = act.request_seen
        if act.state == "pending-immediate":
            assert seen is not None
            return seen, seen + before + after
        if act.state == "pending-future":
            execution = self._execution(act)
            if execution is not None:
                opens = execution - before
                if seen is not None and seen <= execution:
                    opens = max(opens, seen)
                return opens, execution + after
            assert act.accepted_at is not None
            opens = act.accepted_at - before
            if seen is not None:
                opens = max(opens, seen)
            return opens, None
        return None

    def _assess(self, esmes: frozenset[int], start: datetime) -> _Verdict:
        explaining: set[tuple[Window, str]] = set()
        pending: set[str] = set()
        forward: set[str] = set()
        for act in self.acts.values():
            if act.esme not in esmes:
                continue
            if act.state == "confirmed":
                w = self._confirmed_window(act)
                if w[0] <= start <= w[1]:
                    immediate = act.via == "response" and not act.future
                    explaining.add((w, "activation-window" if immediate else "fd-confirmed"))
                else:
                    forward.add("outside-window")
            elif act.state == "failed":
                w = self._confirmed_window(act)
                if act.via == "8F67" and self.c.fd_failure_policy == "suppress" and w[0] <= start <= w[1]:
                    explaining.add((w, "fd-failed-counted"))
                forward |= {"fd-failed" if act.via == "8F67" else "activation-failed", "outside-window"}
            elif act.state == "cancelled":
                forward |= {"cancelled", "outside-window"}
                if act.requested == "cancel":  # a cancel command's own record is no activation
                    forward.add("no-activation")
            else:
                pw = self._pending_window(act)
                assert pw is not None
                if pw[0] <= start and (pw[1] is None or start <= pw[1]):
                    pending.add(act.state)
                else:
                    forward.add("outside-window")
        if explaining:
            return _Verdict("suppress", frozenset(r for _, r in explaining), frozenset(explaining), esmes)
        if pending:
            return _Verdict("hold", frozenset(pending), esmes=esmes)
        if not forward:
            forward.add("no-activation")
        if any(u.esme in esmes for u in self.unverified.values()):
            forward.add("evidence-unverified")  # (when it would have explained it: the model does not judge)
        return _Verdict("forward", frozenset(forward), esmes=esmes)

    def _assess_outage(self, ch: int, mpan: str | None, start: datetime) -> _Verdict:
        """The join (§3): the hub's ESMEs, and when they do not explain the AD1 those of its MPxN (if it is an
        MPAN core) too; then the in-scope ones' activations. Out of scope: the joined ESMEs, unknown: none."""
        by_ch = self.esmes_on(ch)
        by_ch_in = self.scoped(by_ch)
        if by_ch_in:
            first = self._assess(by_ch_in, start)
            if first.action == "suppress":
                return first
        joined = by_ch | self.esmes_with(mpan)
        if not joined:
            return _Verdict("forward", frozenset({"ch-unknown"}))
        if not self.scoped(joined):
            return _Verdict("forward", frozenset({"out-of-scope"}), esmes=joined)
        return self._assess(self.scoped(joined), start)

    def _decide_outage(
        self,
        mid: str,
        ch: int,
        start: datetime,
        verdict: _Verdict,
        out: list[Expect],
        *,
        released: bool,
        held_for: frozenset[int] = frozenset(),
    ) -> None:
        assert self.clock is not None
        prefix = "release-" if released else ""
        earlier = self.kept.get(mid)
        if verdict.action == "suppress":
            window = self.chooser(mid, frozenset(w for w, _ in verdict.windows))
            kept = Kept(mid, ch, verdict.esmes, start, window, False, self.clock)
            if earlier is not None and earlier.dno_knows:
                # decided again while its earlier life's record is kept: an AD1 the DNO got stays one (§8)
                kept.forwarded, kept.released = earlier.forwarded, earlier.released
            self.kept[mid] = kept
            self._emit(out, Expect(mid, prefix + "suppress", verdict.reasons, verdict.windows))
            return
        assert verdict.action == "forward"
        if released or earlier is not None or self.reason_chooser(mid, verdict.reasons) in EVIDENCE_FORWARDS:
            wide = self.c.request_lead_max + self.c.window_after
            # released after a hold: kept for the restorations that may have waited for it as the nearer outage
            # (§6), so under the ESMEs it was held for too (their links may have ended during the hold)
            esmes = verdict.esmes | held_for
            self.kept[mid] = Kept(mid, ch, esmes, start, (start - wide, start + wide), True, self.clock)
        self._emit(out, Expect(mid, prefix + "forward", verdict.reasons))

    # ------------------------------------------------------------------ restorations

    def _related(self, esme: int, ch: int | None, esmes: frozenset[int]) -> bool:
        hub = self.ch_of(esme)
        return esme in esmes or (hub is not None and hub == ch)

    def _nearest_kept(self, r: Held) -> Kept | None:
        assert r.esme is not None and r.time is not None
        found = [
            k for k in self.kept.values()
            if self._related(r.esme, k.ch, k.esmes) and k.window[0] <= r.time <= k.window[1]
        ]  # fmt: skip
        if not found:
            return None
        t = r.time
        return min(found, key=lambda k: (abs(k.start - t), k.message_id))

    def _waited(self, r: Held) -> list[Held]:
        """The held AD1s the restoration ``r`` waits for (ENGINE.md §6): of its ESME or its Comms Hub, due before
        what its hold states, near enough to its interruption for a window to hold both, and nearer to it than
        the kept outage it would pair with now (then by message id)."""
        assert r.esme is not None and r.time is not None and r.stated is not None
        t = r.time
        reach = self.c.request_lead_max + self.c.window_after
        near = self._nearest_kept(r)
        waited = []
        for h in self.held.values():
            if h.kind != "ad1" or not self._related(r.esme, h.ch, h.esmes):
                continue
            if h.deadline >= r.stated:
                continue  # due when its hold ends at the latest (held after its own limit): as one after it
            assert h.time is not None
            if abs(h.time - t) > reach:
                continue
            if near is None or (abs(h.time - t), h.message_id) < (abs(near.start - t), near.message_id):
                waited.append(h)
        return waited

    def _restoration_verdict(self, r: Held, *, released: bool) -> Expect:
        prefix = "release-" if released else ""
        near = self._nearest_kept(r)
        if near is None or near.dno_knows:
            return Expect(r.message_id, prefix + "forward", frozenset({"not-paired"}))
        action = "suppress" if self.c.restoration_policy == "suppress-paired" else "forward"
        return Expect(r.message_id, prefix + action, frozenset({"restoration-paired"}))

    def _redecide_restoration(self, r: Held, out: list[Expect]) -> None:
        """A held restoration re-decided: it waits on (held under the ESMEs of the AD1s it waits for too, until
        the latest of their deadlines), or it is decided as if it had come after the AD1s it waited for."""
        waited = self._waited(r)
        if waited:
            r.under |= {e for h in waited for e in h.esmes}
            r.deadline = max(r.deadline, *(h.deadline for h in waited))
            return
        del self.held[r.message_id]
        self._emit(out, self._restoration_verdict(r, released=True))

    # ------------------------------------------------------------------ holds

    def _reevaluate(self, esmes: Iterable[int], out: list[Expect]) -> None:
        """Evidence on ``esmes``, or the release of an AD1 held under them: the messages held under them are
        decided again (AD1s first, then restorations, oldest first)."""
        esmes = set(esmes)
        for h in sorted(self.held.values(), key=lambda h: (h.since, h.message_id)):
            if h.kind == "ad1" and h.esmes & esmes and h.message_id in self.held:
                assert h.ch is not None and h.time is not None
                verdict = self._assess_outage(h.ch, h.mpan, h.time)
                if verdict.action != "hold":
                    self._release(h, out, timed_out=False, verdict=verdict)
        for r in sorted(self.held.values(), key=lambda x: (x.since, x.message_id)):
            if r.kind == "restoration" and r.message_id in self.held and r.under & esmes:
                self._redecide_restoration(r, out)

    def _release(
        self, h: Held, out: list[Expect], *, timed_out: bool, verdict: _Verdict | None = None
    ) -> None:
        del self.held[h.message_id]
        assert h.ch is not None and h.time is not None
        if verdict is None:
            verdict = self._assess_outage(h.ch, h.mpan, h.time)
        if verdict.action == "hold":
            verdict = _Verdict("forward", frozenset({"hold-timeout"}), esmes=h.esmes)
        self._decide_outage(h.message_id, h.ch, h.time, verdict, out, released=True, held_for=h.esmes)
        # the messages held under its ESMEs are decided again: the restorations waiting on it as if they had come
        # after it (ENGINE.md §6: "so releasing the AD1 re-decides it")
        self._reevaluate(h.esmes, out)

    def _emit(self, out: list[Expect], e: Expect) -> None:
        self.latest[e.message_id] = e.action
        out.append(e)
