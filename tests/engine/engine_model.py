"""An independent reference model of the correlation engine's rules, for the model-based test.

Written from DOMAIN.md §4 and docs/ENGINE.md §2-§8 (the rules), not from ``gateway/engine``: plain
dictionaries and lists, every decision recomputed from scratch, no indexes. It covers a small static
world (no inventory learning): ESMEs on Comms Hubs, a GUID list, immediate and future-dated activations
with their 8F66 / 8F67 outcomes and cancellations, unverified evidence, AD1s, restorations, duplicates,
the hold limit and retention.

Where a rule leaves a choice open (which of several activations that explain an AD1 gives its window,
the forward reason when several are plausible) the model computes the set of acceptable answers;
``Expect`` carries it and the test checks the engine's answer is one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.engine import EngineConfig

IMMEDIATE = "immediate"
FUTURE = "future"

Window = tuple[datetime, datetime]

#: forward reasons that say "activation evidence was there" (ENGINE.md §6: such a forward is kept)
EVIDENCE_FORWARDS = frozenset(
    {"hold-timeout", "outside-window", "activation-failed", "fd-failed", "cancelled", "evidence-unverified"}
)


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
    """An AD1 kept for restoration pairing: suppressed (its window) or forwarded (start ± lead + after)."""

    message_id: str
    ch: int
    esmes: frozenset[int]
    start: datetime
    window: Window
    forwarded: bool
    decided_at: datetime


@dataclass
class Held:
    message_id: str
    kind: str  # ad1 | restoration
    since: datetime
    deadline: datetime | None  # the hold limit (a restoration's own: its hold states one more hold limit, §6)
    ch: int | None = None
    esme: int | None = None
    esmes: frozenset[int] = frozenset()
    time: datetime | None = None  # AD1 StartDateTime / restoration interruption time
    mpan: str | None = None


@dataclass
class Expect:
    """One expected decision: its action and the acceptable reasons (and windows, for a suppression)."""

    message_id: str
    action: str
    reasons: frozenset[str]
    windows: frozenset[tuple[Window, str]] | None = None  # (window, reason) of each explaining activation
    deadline: datetime | None = None  # what a hold decision states: the latest it can last (ENGINE.md §5, §6)


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
    ) -> None:
        self.c = config
        self.retention = config.retention or timedelta(days=2) + config.window_before + config.window_after
        self.hub_of = dict(hub_of)
        self.mpan_of = dict(mpan_of)
        self.in_scope = in_scope
        self.clock: datetime | None = None
        self.acts: dict[tuple[int, int], Act] = {}
        self.unverified: dict[str, Unverified] = {}
        self.kept: dict[str, Kept] = {}
        self.held: dict[str, Held] = {}
        self.seen: dict[str, datetime] = {}  # message id -> when its key was taken (retention)
        self.latest: dict[str, str | None] = {}  # message id -> latest action (None: an observation)
        self.chooser: Callable[[str, frozenset[Window]], Window] = lambda _mid, ws: min(ws)
        self.reason_chooser: Callable[[str, frozenset[str]], str] = lambda _mid, rs: min(rs)

    # ------------------------------------------------------------------ clock

    def advance(self, now: datetime) -> list[Expect]:
        """The gateway clock reaches ``now``: holds whose deadline it reaches time out (oldest first)."""
        out: list[Expect] = []
        if self.clock is not None and now <= self.clock:
            return out
        self.clock = now
        while True:
            due = sorted(
                (
                    h
                    for h in self.held.values()
                    if h.kind == "ad1" and h.deadline is not None and h.deadline <= now
                ),
                key=lambda h: (h.deadline, h.message_id),
            )
            if not due:
                break
            self._release(due[0], out, timed_out=True)
        return out

    def prune(self) -> None:
        """On a tick: drop what the retention has passed (the clock reached time + retention)."""
        assert self.clock is not None
        now, keep = self.clock, self.retention
        for key, act in list(self.acts.items()):
            if max(act.times) + keep <= now:
                del self.acts[key]
        for mid, u in list(self.unverified.items()):
            if u.arrival + keep <= now:
                del self.unverified[mid]
        for mid, k in list(self.kept.items()):
            if k.decided_at + keep <= now:
                del self.kept[mid]
        for mid, at in list(self.seen.items()):
            if at + keep <= now and mid not in self.held:
                del self.seen[mid]
                self.latest.pop(mid, None)

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

    def observe_unverified(self, mid: str, esme: int, times: list[datetime]) -> None:
        assert self.clock is not None
        self.seen[mid] = self.clock
        self.latest[mid] = None
        self.unverified[mid] = Unverified(mid, esme, times, self.clock)

    def outage(
        self, mid: str, ch: int, mpan: str | None, start: datetime, verified: bool = True
    ) -> list[Expect]:
        assert self.clock is not None
        self.seen[mid] = self.clock
        out: list[Expect] = []
        if not verified:
            self._emit(out, Expect(mid, "forward", frozenset({"inline-unverified"})))
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

    def restoration(self, mid: str, esme: int, interrupted: datetime, verified: bool = True) -> list[Expect]:
        assert self.clock is not None
        self.seen[mid] = self.clock
        out: list[Expect] = []
        if not verified:
            self._emit(out, Expect(mid, "forward", frozenset({"inline-unverified"})))
            return out
        # its deadline here is its own hold limit: it waits only for AD1s held before it (ENGINE.md §6)
        held = Held(
            mid, "restoration", self.clock, self.clock + self.c.hold_limit, esme=esme, time=interrupted
        )
        if self._waits(held):
            self.held[mid] = held
            # it states the latest it can be held: it waits only for the AD1s due before that (ENGINE.md §6)
            stated = self.clock + 2 * self.c.hold_limit
            self._emit(out, Expect(mid, "hold", frozenset({"pending-outage"}), deadline=stated))
        else:
            self._emit(out, self._restoration_verdict(held, released=False))
        return out

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
        by_ch = frozenset(e for e, h in self.hub_of.items() if h == ch)
        by_ch_in = by_ch & self.in_scope
        if by_ch_in:
            first = self._assess(by_ch_in, start)
            if first.action == "suppress":
                return first
        by_mpan = frozenset(e for e, m in self.mpan_of.items() if mpan is not None and m == mpan)
        joined = by_ch | by_mpan
        if not joined:
            return _Verdict("forward", frozenset({"ch-unknown"}))
        if not joined & self.in_scope:
            return _Verdict("forward", frozenset({"out-of-scope"}))
        return self._assess(joined & self.in_scope, start)

    def _decide_outage(
        self, mid: str, ch: int, start: datetime, verdict: _Verdict, out: list[Expect], *, released: bool
    ) -> None:
        assert self.clock is not None
        prefix = "release-" if released else ""
        if verdict.action == "suppress":
            window = self.chooser(mid, frozenset(w for w, _ in verdict.windows))
            self.kept[mid] = Kept(mid, ch, verdict.esmes, start, window, False, self.clock)
            self._emit(out, Expect(mid, prefix + "suppress", verdict.reasons, verdict.windows))
            return
        assert verdict.action == "forward"
        earlier = self.kept.get(mid)
        if released or earlier is not None or self.reason_chooser(mid, verdict.reasons) in EVIDENCE_FORWARDS:
            wide = self.c.request_lead_max + self.c.window_after
            self.kept[mid] = Kept(
                mid, ch, verdict.esmes, start, (start - wide, start + wide), True, self.clock
            )
        self._emit(out, Expect(mid, prefix + "forward", verdict.reasons))

    # ------------------------------------------------------------------ restorations

    def _related(self, esme: int, ch: int | None, esmes: frozenset[int]) -> bool:
        hub = self.hub_of.get(esme)
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

    def _waits(self, r: Held) -> bool:
        assert r.esme is not None and r.time is not None
        t = r.time
        reach = self.c.request_lead_max + self.c.window_after
        near = self._nearest_kept(r)
        for h in self.held.values():
            if h.kind != "ad1" or not self._related(r.esme, h.ch, h.esmes):
                continue
            stated = None if r.deadline is None else r.deadline + self.c.hold_limit  # what its hold decision stated
            if stated is not None and h.deadline is not None and h.deadline >= stated:
                continue  # due when its hold ends at the latest (held after its own limit): as one after it
            assert h.time is not None
            if abs(h.time - t) > reach:
                continue
            if near is None or (abs(h.time - t), h.message_id) < (abs(near.start - t), near.message_id):
                return True
        return False

    def _restoration_verdict(self, r: Held, *, released: bool) -> Expect:
        prefix = "release-" if released else ""
        near = self._nearest_kept(r)
        if near is None or near.forwarded:
            return Expect(r.message_id, prefix + "forward", frozenset({"not-paired"}))
        action = "suppress" if self.c.restoration_policy == "suppress-paired" else "forward"
        return Expect(r.message_id, prefix + action, frozenset({"restoration-paired"}))

    # ------------------------------------------------------------------ holds

    def _reevaluate(self, esmes: set[int], out: list[Expect]) -> None:
        for h in sorted(self.held.values(), key=lambda h: (h.since, h.message_id)):
            if h.kind == "ad1" and h.esmes & esmes and h.message_id in self.held:
                assert h.ch is not None and h.time is not None
                verdict = self._assess_outage(h.ch, h.mpan, h.time)
                if verdict.action != "hold":
                    self._release(h, out, timed_out=False, verdict=verdict)
        # a restoration is held under its own ESME and those of the AD1s it waits for (ENGINE.md §6): evidence on
        # them re-evaluates it too, and it is decided once no held AD1 nearer than its nearest kept one remains
        for r in sorted(self.held.values(), key=lambda x: (x.since, x.message_id)):
            if r.kind != "restoration" or r.message_id not in self.held:
                continue
            assert r.esme is not None
            under = {r.esme} | {e for h in self.held.values() if h.kind == "ad1" and self._related(r.esme, h.ch, h.esmes)
                                for e in h.esmes}  # fmt: skip
            if under & esmes and not self._waits(r):
                del self.held[r.message_id]
                self._emit(out, self._restoration_verdict(r, released=True))

    def _release(
        self, h: Held, out: list[Expect], *, timed_out: bool, verdict: _Verdict | None = None
    ) -> None:
        del self.held[h.message_id]
        assert h.ch is not None and h.time is not None
        if verdict is None:
            verdict = self._assess_outage(h.ch, h.mpan, h.time)
        if verdict.action == "hold":
            verdict = _Verdict("forward", frozenset({"hold-timeout"}), esmes=h.esmes)
        self._decide_outage(h.message_id, h.ch, h.time, verdict, out, released=True)
        # the restorations waiting on it are decided as if they had come after it
        for r in sorted(self.held.values(), key=lambda x: (x.since, x.message_id)):
            if r.kind == "restoration" and not self._waits(r):
                del self.held[r.message_id]
                self._emit(out, self._restoration_verdict(r, released=True))

    def _emit(self, out: list[Expect], e: Expect) -> None:
        self.latest[e.message_id] = e.action
        out.append(e)
