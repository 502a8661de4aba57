"""The engine against an independent model of its rules (tests/engine/engine_model.py), step by step.

A hypothesis state machine drives a small world — ESMEs A (in the GUID list) and B (not) on hub H1, C (in
the list) on hub H2, U (in the list, unknown to the inventory), hub H3 unknown — with immediate and
future-dated activations (8F66 / 8F67, cancellations), unverified copies of evidence, AD1s and
restorations (some whose device clock is unreliable), re-deliveries, the inventory's learning (8.2
observations moving an ESME to another hub or MPxN, in any order of their own times, and the status changes
that end links: a meter decommissioned, a hub decommissioned, a device removed, a meter identity), operator
releases, clock ticks small and large (window edges, hold limits, retention) and a restore from what the store
keeps at any point (the engine runs on the gateway's own inventory, ``InventoryRegistry``, and a restore re-applies
the learned links and hub ends to a fresh snapshot). Worlds: the defaults; the other policies; scope by
manufacturer with unverified inline messages quarantined; a prune budget of three records a tick. After every step it checks the
engine's decisions against the model's, its inventory's links and its activations against the model's, that a
twin engine never restored decides the same, that a duplicate changes nothing, and at the end that every
inline message got exactly one final decision and that every record due was pruned.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from engine_model import (
    BUDGETED,
    DEVICE_REMOVED,
    HUB_DECOMMISSIONED,
    METER_IDENTITY,
    METER_REMOVED,
    Act,
    Expect,
    Model,
)
from engine_support import SUPPLIER, T0, MemoryScope
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.engine import (
    ActivationRequested,
    ActivationResponse,
    Decision,
    Duplicate,
    Effect,
    Engine,
    EngineConfig,
    FutureDatedOutcome,
    InventoryObserved,
    InventoryUnlinked,
    Observed,
    PowerOutage,
    StateChange,
    SupplyRestored,
    Tick,
)
from gateway.engine import engine as engine_module
from gateway.engine.effects import DEVICE_CLOCK_UNRELIABLE
from gateway.engine.events import ALERT_FD_FAILURE, ALERT_FD_SUCCESS, CANCELLATION_SENTINEL, MessageEvent
from gateway.engine.records import to_record
from gateway.engine.state import Seen, SuppressedOutage, UnverifiedEvidence
from gateway.inventory import Inventory, InventoryRegistry, InventoryRow

A, B, C, U = 0x00DB0000000000A1, 0x00DB0000000000B1, 0x00DB0000000000C1, 0x00DB0000000000F1
H1, H2, H3 = 0x00DB0000000000A2, 0x00DB0000000000C2, 0x00DB0000000000E2
MPAN_A, MPAN_B, MPAN_C, MPAN_NONE = "1000000000012", "2000000000024", "3000000000036", "4000000000048"
MPAN_U = "5000000000004"  # a valid MPAN core no snapshot row holds
MPAN_A_SPACED = "1000 0000 0001 2"  # MPAN_A as a message may write it (spaces ignored)
MPAN_BAD = "1000000000013"  # 13 digits, the check digit wrong: no MPAN (never joined, never learned)
ROWS = [(A, H1, MPAN_A, "Landis+Gyr"), (B, H1, MPAN_B, "Other"), (C, H2, MPAN_C, "Landis+Gyr")]
METERS = [A, B, C, U]
HUBS = [H1, H2, H3]
MPANS = [MPAN_A, MPAN_B, MPAN_C, MPAN_U, MPAN_NONE]
WHY = "interruption date-time clock status 0x02 (doubtful-value)"
GUIDS = frozenset({A, C, U})
CONFIG = EngineConfig()
S = timedelta(seconds=1)
M = timedelta(minutes=1)

SMALL_STEPS = [S, 30 * S, M, 3 * M, 5 * M, 9 * M + 59 * S, 10 * M, 14 * M, 15 * M, 29 * M]
LARGE_STEPS = [timedelta(hours=1), timedelta(hours=3), timedelta(days=3)]
RESPONSE_LAGS = [timedelta(0), 30 * S, 2 * M, 20 * M, 61 * M]
EXECUTE_IN = [S, M, 5 * M, 16 * M, 2 * timedelta(hours=1)]
INTERESTING = [
    timedelta(0), S, -S, -CONFIG.window_before, -CONFIG.window_before - S, CONFIG.window_after,
    CONFIG.window_after + S, CONFIG.window_before + CONFIG.window_after,
    CONFIG.window_before + CONFIG.window_after + S, -CONFIG.request_lead_max, -CONFIG.request_lead_max - S,
    CONFIG.request_lead_max + CONFIG.window_after, CONFIG.request_lead_max + CONFIG.window_after + S, 3 * M,
]  # fmt: skip


def _inventory() -> InventoryRegistry:
    """The snapshot, in the inventory the gateway runs with (learned links are applied to it by the engine and
    re-applied by a restore)."""
    rows = [InventoryRow(esme, ch, mpan, manufacturer) for esme, ch, mpan, manufacturer in ROWS]
    return InventoryRegistry(Inventory.from_rows(rows))


def _mpxn(value: str | None) -> str | None:
    return None if value is None else value.replace(" ", "")


def _record_time(table: str, value: object) -> datetime | None:
    """The time a budgeted record's retention runs from (``None`` for other tables)."""
    if table == "seen" and isinstance(value, Seen):
        return value.at
    if table == "suppressed" and isinstance(value, SuppressedOutage):
        return value.decided_at
    if table == "unverified" and isinstance(value, UnverifiedEvidence):
        return value.at
    return None


def _decisions(out: list[Effect]) -> list[Decision]:
    return [e for e in out if isinstance(e, Decision)]


class EngineAgainstModel(RuleBasedStateMachine):
    config = CONFIG
    #: the prune budget the engine runs with (``PRUNE_PER_TICK``); None: one this world never reaches
    budget: int | None = None

    def __init__(self) -> None:
        super().__init__()
        assert self.budget is None or self.budget == engine_module.PRUNE_PER_TICK
        self.scope = MemoryScope(GUIDS)
        self.engine = Engine(self.config, self.scope, _inventory())
        self.twin = Engine(self.config, self.scope, _inventory())  # never restored
        self.model = Model(
            self.config,
            {A: H1, B: H1, C: H2},
            {A: MPAN_A, B: MPAN_B, C: MPAN_C},
            GUIDS,
            {esme: manufacturer for esme, _, _, manufacturer in ROWS},
        )
        self.table: dict[tuple[str, str], object] = {}
        self.twin_table: dict[tuple[str, str], object] = {}
        self.twin_resyncs = 0
        self.now = T0
        self.ids = itertools.count(1)
        self.counters = itertools.count(100)
        self.stories: list[tuple[int, int, str, datetime | None]] = []  # (esme, counter, kind, execution)
        self.sent: list[MessageEvent] = []
        self.evidence: list[MessageEvent] = []
        self.inline: set[str] = set()
        self.finals: dict[str, int] = {}  # inline message id -> final decisions since its key was taken
        self.restores = 0
        self.broken = False

    # ------------------------------------------------------------------ driving both sides

    def _mid(self, kind: str) -> str:
        return f"{kind}-{next(self.ids):04d}"

    def _feed(self, event: object) -> list[Effect]:
        if self.budget is not None and self._waiting_prune(self.table) != self._waiting_prune(
            self.twin_table
        ):
            # which records due a budgeted tick prunes first is the engine's choice (a restored engine orders them
            # by time then id, a live one as they came, ENGINE.md §8): a message re-delivered while its key waits
            # is a duplicate in one and decided afresh in the other, both allowed. The twin starts again from here
            self._resync_twin()
        out = self.engine.handle(event)  # type: ignore[arg-type]
        twin = self.twin.handle(event)  # type: ignore[arg-type]
        assert _decisions(out) == _decisions(twin), "a restored engine decided otherwise than the original"
        assert [e for e in out if isinstance(e, Duplicate)] == [e for e in twin if isinstance(e, Duplicate)]
        self._keep(out, self.table)
        self._keep(twin, self.twin_table)
        return out

    @staticmethod
    def _keep(out: list[Effect], table: dict[tuple[str, str], object]) -> None:
        for c in out:
            if isinstance(c, StateChange):
                if c.value is None:
                    table.pop((c.table.value, c.key), None)
                else:
                    table[(c.table.value, c.key)] = c.value

    def _waiting_prune(self, table: Mapping[tuple[str, str], object]) -> set[tuple[str, str]]:
        """The budgeted records of ``table`` the retention has passed (kept until a tick's budget reaches them)."""
        clock = self.engine.clock
        if clock is None:
            return set()
        keep = self.model.retention
        return {
            key for key, value in table.items()
            if (at := _record_time(key[0], value)) is not None and at + keep <= clock
        }  # fmt: skip

    def _restore(self, table: Mapping[tuple[str, str], object]) -> Engine:
        rows = [(tbl, key, json.loads(json.dumps(to_record(v)))) for (tbl, key), v in table.items()]
        return Engine.restore(self.config, self.scope, _inventory(), rows)

    def _resync_twin(self) -> None:
        self.twin = self._restore(self.table)
        self.twin_table = dict(self.table)
        self.twin_resyncs += 1

    def _choose(self, out: list[Effect]) -> None:
        chosen = {d.message_id: (d.window_opens, d.window_closes) for d in _decisions(out)}

        def chooser(mid: str, windows: frozenset[tuple[datetime, datetime]]) -> tuple[datetime, datetime]:
            w = chosen.get(mid)
            return w if w in windows else min(windows)  # type: ignore[return-value]

        reasons = {d.message_id: d.reason.value for d in _decisions(out)}

        def reason_chooser(mid: str, allowed: frozenset[str]) -> str:
            r = reasons.get(mid)
            return r if r in allowed else min(allowed)  # type: ignore[return-value]

        self.model.chooser = chooser
        self.model.reason_chooser = reason_chooser

    def _compare(self, out: list[Effect], expected: list[Expect], what: str) -> None:
        self.broken = True
        got = _decisions(out)
        got_by: dict[str, list[Decision]] = {}
        for d in got:
            got_by.setdefault(d.message_id, []).append(d)
        exp_by: dict[str, list[Expect]] = {}
        for e in expected:
            exp_by.setdefault(e.message_id, []).append(e)
        shown = [(d.message_id, d.action.value, d.reason.value) for d in got]
        wanted = [(e.message_id, e.action, sorted(e.reasons)) for e in expected]
        assert set(got_by) == set(exp_by), f"{what}: engine {shown} model {wanted}"
        for mid, ds in got_by.items():
            es = exp_by[mid]
            assert [d.action.value for d in ds] == [e.action for e in es], (
                f"{what}: engine {shown} model {wanted}"
            )
            for d, e in zip(ds, es, strict=True):
                assert d.reason.value in e.reasons, (
                    f"{what}: {mid} reason {d.reason.value}, model {sorted(e.reasons)}"
                )
                if e.deadline is not None:
                    assert d.hold_deadline == e.deadline, (
                        f"{what}: {mid} hold deadline {d.hold_deadline}, model {e.deadline}"
                    )
                if e.windows is not None:
                    window = ((d.window_opens, d.window_closes), d.reason.value)
                    assert window in e.windows, (
                        f"{what}: {mid} window {window} not the model's {sorted(e.windows)}"
                    )
                if d.event_kind == "supply-restored":
                    assert (DEVICE_CLOCK_UNRELIABLE in d.flags) == e.doubted, (
                        f"{what}: {mid} flags {d.flags}, device clock unreliable: {e.doubted}"
                    )
                if (
                    d.event_kind == "power-outage"
                    and d.disposition == "suppress"
                    and d.reason.value != "quarantined-unverified"
                ):
                    self._suppression_is_explained(d)
                if d.disposition is not None and mid in self.inline:
                    self.finals[mid] = self.finals.get(mid, 0) + 1
                    assert self.finals[mid] == 1, f"{mid} decided twice"
        self.broken = False

    def _suppression_is_explained(self, d: Decision) -> None:
        """Never suppressed but on verified evidence of an activation of an in-scope ESME the AD1 joins, whose
        window holds its StartDateTime."""
        assert d.activation is not None and d.event_time is not None, d
        esme, _supplier, counter = d.activation.split(":")
        act = self.model.acts.get((int(esme, 16), int(counter)))
        assert act is not None and act.state in ("confirmed", "failed"), (
            f"{d.message_id}: no verified activation"
        )
        assert act.esme in self.model.scoped({act.esme}) and act.esme in d.esmes, d
        assert d.ch is not None
        joined = self.model.esmes_on(d.ch) | self.model.esmes_with(
            d.mpan
        )  # the links known when it is decided
        assert act.esme in joined, f"{d.message_id}: suppressed on an ESME it does not join"
        assert d.window_opens is not None and d.window_closes is not None
        assert d.window_opens <= d.event_time <= d.window_closes

    def _message(self, event: MessageEvent, expect: object) -> list[Effect]:
        """Feed one message arriving at ``now``; ``expect(model)`` gives the model's decisions."""
        duplicate = self.model.duplicate(event.message_id)
        before = sorted(repr(c) for c in self.engine.export_state()) if duplicate else []
        if event.lane == "inline" and not duplicate:
            self.inline.add(event.message_id)
            self.finals.pop(event.message_id, None)  # a key taken again: decided afresh (after retention)
        out = self._feed(event)
        self._choose(out)
        expected = self.model.advance(self.now)
        if duplicate:
            self._compare(out, expected, f"re-delivery of {event.message_id}")
            dups = [e for e in out if isinstance(e, Duplicate)]
            assert len(dups) == 1, (
                f"re-delivery of {event.message_id} within retention not a duplicate: {out}"
            )
            latest = self.model.latest.get(event.message_id)
            assert (None if dups[0].original is None else dups[0].original.action.value) == latest
            if not expected:
                assert sorted(repr(c) for c in self.engine.export_state()) == before, (
                    "a duplicate changed state"
                )
                assert all(isinstance(e, Duplicate) for e in out), f"a duplicate had effects: {out}"
            return out
        expected += expect(self.model)  # type: ignore[operator]
        self._compare(out, expected, f"{type(event).__name__} {event.message_id}")
        self.sent.append(event)
        return out

    # ------------------------------------------------------------------ activations

    @rule(esme=st.sampled_from([A, A, B, C, U]))
    def immediate_request(self, esme: int) -> None:
        counter = next(self.counters)
        ev = ActivationRequested(
            message_id=self._mid("req"), arrival=self.now, verified=True, supplier=SUPPLIER, esme=esme,
            counter=counter, execution_time=None, is_cancellation=False, seen_at=self.now,
        )  # fmt: skip
        self.stories.append((esme, counter, "immediate", None))
        self.evidence.append(ev)
        self._message(
            ev, lambda m: m.observe(ev.message_id, esme, "request", counter=counter, requested="immediate")
        )

    @rule(esme=st.sampled_from([A, A, C, U]), ahead=st.sampled_from(EXECUTE_IN))
    def future_request(self, esme: int, ahead: timedelta) -> None:
        counter = next(self.counters)
        execution = self.now + ahead
        ev = ActivationRequested(
            message_id=self._mid("req"), arrival=self.now, verified=True, supplier=SUPPLIER, esme=esme,
            counter=counter, execution_time=execution, is_cancellation=False, seen_at=self.now,
        )  # fmt: skip
        self.stories.append((esme, counter, "future", execution))
        self.evidence.append(ev)
        self._message(
            ev,
            lambda m: m.observe(
                ev.message_id, esme, "request", counter=counter, requested="future", execution=execution
            ),
        )

    @rule(esme=st.sampled_from([A, A, C]))
    def cancellation(self, esme: int) -> None:
        counter = next(self.counters)
        ev = ActivationRequested(
            message_id=self._mid("req"), arrival=self.now, verified=True, supplier=SUPPLIER, esme=esme,
            counter=counter, execution_time=CANCELLATION_SENTINEL, is_cancellation=True, seen_at=self.now,
        )  # fmt: skip
        self.stories.append((esme, counter, "cancel", None))
        self.evidence.append(ev)
        self._message(
            ev, lambda m: m.observe(ev.message_id, esme, "request", counter=counter, requested="cancel")
        )

    @rule(data=st.data(), result=st.sampled_from([0, 0, 3, None]), lag=st.sampled_from(RESPONSE_LAGS))
    def response(self, data: st.DataObject, result: int | None, lag: timedelta) -> None:
        """An 11.3 response to a story (immediate: a result; future-dated or cancel: "accepted"; a future-dated
        one or one only "accepted" may also get a result, ENGINE.md §4), or to a command never observed (a new
        counter)."""
        if result is None:
            stories = [s for s in self.stories if s[2] != "immediate"]
        else:
            stories = [s for s in self.stories if s[2] != "cancel"]
        story = data.draw(st.sampled_from([*stories, None]))
        if story is None:
            story = (data.draw(st.sampled_from([A, C, U])), next(self.counters), "unrequested", None)
            self.stories.append(story)
        esme, counter = story[0], story[1]
        at = self.now - lag
        ev = ActivationResponse(
            message_id=self._mid("rsp"), arrival=self.now, verified=True, esme=esme, supplier=SUPPLIER,
            counter=counter, response_time=at, result=result, accepted_future=result is None,
        )  # fmt: skip
        self.evidence.append(ev)
        self._message(
            ev, lambda m: m.observe(ev.message_id, esme, "response", counter=counter, at=at, result=result)
        )

    @rule(data=st.data(), success=st.booleans())
    def fd_outcome(self, data: st.DataObject, success: bool) -> None:
        """An 8F66 / 8F67 of a future-dated story (its execution time; cancelled or not), or of a command never
        observed, or of a cancellation command's own counter (executed 2 minutes ago: a device should not send
        that one, but it is confirmed as an 8F66 of a command never observed would be, ENGINE.md §4)."""
        stories = [s for s in self.stories if s[2] in ("future", "cancel")]
        story = data.draw(st.sampled_from([*stories, None]))
        if story is None:
            story = (data.draw(st.sampled_from([A, C])), next(self.counters), "unrequested", self.now)
            self.stories.append(story)
        esme, counter = story[0], story[1]
        at = story[3] if story[3] is not None else self.now - 2 * M
        ev = FutureDatedOutcome(
            message_id=self._mid("fd"), arrival=self.now, verified=True, esme=esme, supplier=SUPPLIER,
            command_counter=counter, execution_time=at, result=0 if success else 2,
            alert_code=ALERT_FD_SUCCESS if success else ALERT_FD_FAILURE,
        )  # fmt: skip
        self.evidence.append(ev)
        self._message(
            ev, lambda m: m.observe(ev.message_id, esme, "outcome", counter=counter, at=at, success=success)
        )

    @precondition(
        lambda self: any(
            s[2] == "unrequested" and (act := self.model.acts.get((s[0], s[1]))) is not None
            and act.state in ("confirmed", "failed") and act.request_seen is None
            for s in self.stories
        )
    )  # fmt: skip
    @rule(data=st.data(), future=st.booleans(), lag=st.sampled_from([timedelta(0), 20 * M, -20 * M]))
    def late_request(self, data: st.DataObject, future: bool, lag: timedelta) -> None:
        """The request of a command whose outcome (a response or an 8F66/8F67) was taken in first, observed only
        now (its observation delayed), immediate or future-dated (executed at the outcome's time, give or take:
        a clock ahead of the gateway's, or behind it): evidence only, the record's kind and window stay as the
        outcome set them (ENGINE.md §4)."""
        decided = [
            s for s in self.stories
            if s[2] == "unrequested" and (act := self.model.acts.get((s[0], s[1]))) is not None
            and act.state in ("confirmed", "failed") and act.request_seen is None
        ]  # fmt: skip
        esme, counter = data.draw(st.sampled_from(decided))[:2]
        anchor = self.model.acts[(esme, counter)].anchor
        assert anchor is not None
        execution = anchor + lag if future else None
        ev = ActivationRequested(
            message_id=self._mid("req"), arrival=self.now, verified=True, supplier=SUPPLIER, esme=esme,
            counter=counter, execution_time=execution, is_cancellation=False, seen_at=self.now,
        )  # fmt: skip
        self.evidence.append(ev)
        self._message(
            ev,
            lambda m: m.observe(
                ev.message_id, esme, "request", counter=counter, requested="future" if future else "immediate",
                execution=execution,
            ),
        )  # fmt: skip

    @precondition(lambda self: bool(self.evidence))
    @rule(data=st.data())
    def unverified_copy(self, data: st.DataObject) -> None:
        """A copy of evidence whose signature does not verify (its own identity, as the pipeline marks it)."""
        original = data.draw(st.sampled_from(self.evidence))
        ev = replace(original, message_id=f"{original.message_id}#unverified:{next(self.ids)}", arrival=self.now,
                     verified=False, verification="xml signature invalid")  # fmt: skip
        if isinstance(ev, ActivationRequested):
            ev = replace(ev, seen_at=self.now)
        times = [
            t for t in (
                getattr(ev, "seen_at", None), getattr(ev, "response_time", None), getattr(ev, "execution_time", None)
            ) if t is not None and t != CANCELLATION_SENTINEL
        ]  # fmt: skip
        esme = ev.esme  # type: ignore[attr-defined]
        cancellation = getattr(ev, "is_cancellation", False)
        out = self._message(
            ev, lambda m: (m.observe_unverified(ev.message_id, esme, times, cancellation=cancellation), [])[1]
        )
        assert [e.used for e in out if isinstance(e, Observed)] == [False], "unverified evidence was used"

    @rule(esme=st.sampled_from([A, C]), lag=st.sampled_from(RESPONSE_LAGS), result=st.sampled_from([0, None]))
    def forged_activation(self, esme: int, lag: timedelta, result: int | None) -> None:
        """An unsigned "activation" of a command never observed: it must neither suppress nor hold anything."""
        counter = next(self.counters)
        at = self.now - lag
        ev = ActivationResponse(
            message_id=f"rsp-{next(self.ids):04d}#unverified:forged", arrival=self.now, verified=False,
            verification="xml signature invalid", esme=esme, supplier=SUPPLIER, counter=counter, response_time=at,
            result=result, accepted_future=result is None,
        )  # fmt: skip
        out = self._message(ev, lambda m: (m.observe_unverified(ev.message_id, esme, [at]), [])[1])
        assert [e.used for e in out if isinstance(e, Observed)] == [False], "unverified evidence was used"

    # ------------------------------------------------------------------ the inventory (ENGINE.md §3)

    def _link_times(self) -> list[datetime]:
        """Own times for link evidence: now, a little or much earlier (a late delivery), and the very instants
        of the evidence already known (ties: an end wins a link, else the later applied) and next to them."""
        times = {
            self.now,
            self.now - S,
            self.now - 10 * M,
            self.now - timedelta(hours=1),
            self.now - timedelta(days=1),
        }
        known = [link.time for link in (*self.model.learned_ch.values(), *self.model.learned_mpan.values())]
        for at in [*known, *self.model.hub_ends.values()]:
            if at is not None:
                times |= {at, at - S, at + S}
        return sorted(times)

    def _inventory_message(self, ev: InventoryObserved | InventoryUnlinked) -> None:
        def expect(m: Model) -> list[Expect]:
            if not ev.verified:
                m._observed(ev.message_id)  # only verified alerts teach or end links
            elif isinstance(ev, InventoryObserved):
                m.learn(ev.message_id, ev.esme, ev.ch, ev.mpan, ev.time, ev.manufacturer)
            else:
                m.unlink(ev.message_id, ev.change, ev.esme, ev.time, ev.mpxns)
            return []

        duplicate = self.model.duplicate(ev.message_id)
        out = self._message(ev, expect)
        if not duplicate:
            assert [e.used for e in out if isinstance(e, Observed)] == [ev.verified], out

    @rule(
        data=st.data(),
        esme=st.sampled_from([A, A, B, C, U, U]),
        verified=st.sampled_from([True] * 7 + [False]),
    )
    def inventory_observed(self, data: st.DataObject, esme: int, verified: bool) -> None:
        """An 8.2 observation: the ESME on a hub (maybe another: re-homed) and an MPxN (maybe another, or one that
        is no MPAN core), of its own time: now, late, or at the instant of evidence already known."""
        ch = data.draw(st.sampled_from([self.model.ch_of(esme), H1, H2, H3, None]))
        mpan = data.draw(
            st.sampled_from(
                [self.model.mpan_of(esme), MPAN_A, MPAN_C, MPAN_U, MPAN_A_SPACED, MPAN_BAD, "12345", None]
            )
        )
        time = data.draw(st.sampled_from([*self._link_times(), None]))
        ev = InventoryObserved(
            message_id=self._mid("inv"), arrival=self.now, verified=verified,
            verification="ok" if verified else "xml signature invalid", esme=esme, ch=ch, mpan=mpan,
            manufacturer=data.draw(st.sampled_from(["Landis+Gyr", "Landis+Gyr", "Other", " landis+gyr ", " ", None])),
            time=time,
        )  # fmt: skip
        self._inventory_message(ev)
        self.sent.append(ev)

    @rule(
        data=st.data(),
        change=st.sampled_from([METER_REMOVED, HUB_DECOMMISSIONED, DEVICE_REMOVED, METER_IDENTITY]),
        verified=st.sampled_from([True] * 7 + [False]),
    )
    def status_change(self, data: st.DataObject, change: str, verified: bool) -> None:
        """A device status change alert that ends links (ENGINE.md §3's table), of its own time."""
        if change == HUB_DECOMMISSIONED:
            device = data.draw(st.sampled_from(HUBS))
        elif change == DEVICE_REMOVED:
            device = data.draw(st.sampled_from([*METERS, *HUBS]))
        else:
            device = data.draw(st.sampled_from(METERS))
        mpxns: tuple[str, ...] = ()
        if change == METER_IDENTITY:
            mpxns = data.draw(
                st.sampled_from([
                    (MPAN_A,), (MPAN_B,), (MPAN_C, MPAN_A), (MPAN_A_SPACED,), (MPAN_U,), (MPAN_BAD,), (" ",), (),
                ])
            )  # fmt: skip
        time = data.draw(st.sampled_from(self._link_times()))
        ev = InventoryUnlinked(
            message_id=self._mid("unl"), arrival=self.now, verified=verified,
            verification="ok" if verified else "xml signature invalid", esme=device, ch=None, mpan=None,
            change=change, time=time, mpxns=mpxns,
        )  # fmt: skip
        self._inventory_message(ev)
        self.sent.append(ev)

    # ------------------------------------------------------------------ operator releases (ENGINE.md §6)

    @precondition(lambda self: any(not k.forwarded for k in self.model.kept.values()))
    @rule(data=st.data(), then_restored=st.booleans())
    def operator_release(self, data: st.DataObject, then_restored: bool) -> None:
        """``duisgw audit release`` of a suppressed AD1 (or of one already released, or of an id the engine does not
        keep): its record is marked released, and a restoration whose nearest outage it is reaches the DNO."""
        suppressed = sorted(
            mid for mid, k in self.model.kept.items() if not k.forwarded and mid not in self.model.held
        )
        mid = data.draw(st.sampled_from([*suppressed, "ad1-never-seen"]))
        out = self.engine.released_by_operator(mid)
        twin = self.twin.released_by_operator(mid)
        assert out == twin, "a restored engine released otherwise than the original"
        self._keep(out, self.table)
        self._keep(twin, self.twin_table)
        if self.model.release(mid):
            [change] = out
            assert isinstance(change, StateChange) and isinstance(change.value, SuppressedOutage), out
            assert change.key == mid and change.value.released, out
        else:
            assert out == [], f"release of {mid}: {out}"
        kept = self.model.kept.get(mid)
        if then_restored and kept is not None:  # the outage the DNO now has ends (or another near it)
            self._restoration_of(data, (kept.ch, kept.esmes, kept.start))

    @precondition(lambda self: any(h.kind == "ad1" for h in self.model.held.values()))
    @rule(
        data=st.data(),
        change=st.sampled_from(["moved", "meter-removed", "hub-decommissioned", "joined", "mpan-ended"]),
        outcome=st.sampled_from([None, True, False]),
    )
    def relink_while_held(self, data: st.DataObject, change: str, outcome: bool | None) -> None:
        """While an AD1 is held, the inventory changes under it (ENGINE.md §3: it is decided at its outcome or
        time-out with the links then known): the ESME it waits for moves to another hub, is decommissioned, its
        hub is, another ESME is learned behind its hub, or its MPxN link ends; then maybe the awaited outcome."""
        held = data.draw(st.sampled_from(sorted(
            (h for h in self.model.held.values() if h.kind == "ad1"), key=lambda h: h.message_id
        )))  # fmt: skip
        assert held.ch is not None
        esme = data.draw(st.sampled_from(sorted(held.esmes) or [U]))
        ev: InventoryObserved | InventoryUnlinked
        if change == "moved":
            other = data.draw(st.sampled_from([h for h in HUBS if h != held.ch]))
            ev = InventoryObserved(
                message_id=self._mid("inv"), arrival=self.now, verified=True, esme=esme, ch=other,
                mpan=data.draw(st.sampled_from([self.model.mpan_of(esme), MPAN_U])), time=self.now,
            )  # fmt: skip
        elif change == "joined":
            ev = InventoryObserved(
                message_id=self._mid("inv"), arrival=self.now, verified=True, esme=data.draw(st.sampled_from(METERS)),
                ch=held.ch, mpan=None, time=self.now,
            )  # fmt: skip
        else:
            kind = {"meter-removed": METER_REMOVED, "hub-decommissioned": HUB_DECOMMISSIONED}.get(
                change, METER_IDENTITY
            )
            ev = InventoryUnlinked(
                message_id=self._mid("unl"), arrival=self.now, verified=True,
                esme=held.ch if kind == HUB_DECOMMISSIONED else esme, ch=None, mpan=None, change=kind,
                time=self.now, mpxns=(MPAN_U,) if kind == METER_IDENTITY else (),
            )  # fmt: skip
        self._inventory_message(ev)
        self.sent.append(ev)
        pending = sorted(
            (a for a in self.model.acts.values() if a.state.startswith("pending") and a.esme in held.esmes),
            key=lambda a: a.counter,
        )
        if outcome is not None and pending:
            self.now += data.draw(st.sampled_from([S, 5 * M]))
            self._outcome_of(data.draw(st.sampled_from(pending)), outcome)

    # ------------------------------------------------------------------ inline

    def _interesting(self, esmes: frozenset[int] | None = None) -> list[datetime]:
        """Times near the edges of the windows of the activations (of ``esmes``) and unverified evidence."""
        points = {self.now - 3 * M}
        for act in self.model.acts.values():
            if esmes is not None and act.esme not in esmes:
                continue
            for base in (act.request_seen, act.anchor, act.execution, act.accepted_at):
                if base is not None and base != CANCELLATION_SENTINEL:
                    points |= {base + d for d in INTERESTING}
        for u in self.model.unverified.values():
            if esmes is None or u.esme in esmes:
                points |= {
                    base + d
                    for base in u.times
                    for d in (timedelta(0), -CONFIG.window_before, CONFIG.window_after)
                }
        return sorted(points)

    @rule(data=st.data(), verified=st.sampled_from([True] * 7 + [False]))
    def ad1(self, data: st.DataObject, verified: bool) -> None:
        """An AD1 of a hub (H3: unknown, its MPxN may still name A); mostly of an ESME with evidence, starting
        near an edge of one of its windows."""
        known = sorted(
            {a.esme for a in self.model.acts.values()} | {u.esme for u in self.model.unverified.values()}
        )
        esme = data.draw(st.sampled_from([*known, *known, *known, None]))
        if esme is None:
            ch, mpan = data.draw(
                st.sampled_from([(H1, MPAN_A), (H1, None), (H2, MPAN_C), (H3, None), (H3, MPAN_A)])
            )
        else:  # its hub and MPxN as the inventory has them now, or the other's alone (a hub re-homed, an MPxN moved)
            hub, mp = self.model.ch_of(esme) or H3, self.model.mpan_of(esme)
            neighbour = next(
                (self.model.mpan_of(e) for e in sorted(self.model.esmes_on(hub)) if e != esme), None
            )
            ch, mpan = data.draw(
                st.sampled_from([
                    (hub, mp), (hub, mp), (hub, neighbour), (hub, None), (H3, mp or MPAN_A), (hub, MPAN_NONE),
                    (hub, MPAN_BAD), (H3, MPAN_A_SPACED),
                ])
            )  # fmt: skip
        start = data.draw(st.sampled_from(self._interesting(None if esme is None else frozenset({esme}))))
        ev = PowerOutage(
            message_id=self._mid("ad1"), arrival=self.now, verified=verified,
            verification="ok" if verified else "xml signature invalid", ch=ch, mpan=mpan, start_time=start,
        )  # fmt: skip
        self._message(ev, lambda m: m.outage(ev.message_id, ch, mpan, start, verified))

    @rule(
        data=st.data(),
        verified=st.sampled_from([True] * 7 + [False]),
        doubted=st.sampled_from([False] * 6 + [True]),
    )
    def restoration(self, data: st.DataObject, verified: bool, doubted: bool) -> None:
        """A restoration alert, mostly of an ESME of a kept or held AD1 (its hub's, in scope or not, or one it
        joined), interrupted near that AD1's start or the edges of its window; some with an interruption time
        the device's clock status marks unreliable (never paired, never held, ENGINE.md §6)."""
        outages = [(k.ch, k.esmes, k.start) for k in self.model.kept.values()] + [
            (h.ch, h.esmes, h.time) for h in self.model.held.values() if h.kind == "ad1"
        ]
        released = [(k.ch, k.esmes, k.start) for k in self.model.kept.values() if k.released]
        target = data.draw(st.sampled_from([*outages, *outages, *outages, *released, *released, None]))
        self._restoration_of(data, target, verified, doubted)  # type: ignore[arg-type]

    def _restoration_of(
        self,
        data: st.DataObject,
        target: tuple[int, frozenset[int], datetime] | None,
        verified: bool = True,
        doubted: bool = False,
    ) -> None:
        """A restoration of the outage ``target`` (its hub, ESMEs and start), of an ESME of it, or of any."""
        wide = CONFIG.request_lead_max + CONFIG.window_after
        if target is None:
            esme = data.draw(st.sampled_from([A, B, C, U]))
            interrupted = data.draw(st.sampled_from(self._interesting()))
        else:
            ch, esmes, start = target
            related = sorted(self.model.esmes_on(ch) | set(esmes)) or [U]
            esme = data.draw(st.sampled_from(related))
            offsets = [timedelta(0), M, -M, 2 * M, 31 * M, -16 * M, wide, wide + S, -wide - S]
            interrupted = start + data.draw(st.sampled_from(offsets))
        ev = SupplyRestored(
            message_id=self._mid("rst"), arrival=self.now, verified=verified,
            verification="ok" if verified else "xml signature invalid", esme=esme, alert_code=0x8F36,
            interruption_time=interrupted, restoration_time=interrupted + 4 * M, clock_unreliable=WHY if doubted else "",
        )  # fmt: skip
        self._message(ev, lambda m: m.restoration(ev.message_id, esme, interrupted, verified, doubted))

    @precondition(lambda self: any(a.state.startswith("pending") for a in self.model.acts.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", None]))
    def reboot_while_pending(self, data: st.DataObject, outcome: str | None) -> None:
        """The story MP102B is about, made of the messages above: an AD1 of a pending activation's hub (held),
        a restoration of that hub's outage (waiting for it), then maybe the activation's outcome."""
        pending = [
            a for a in self.model.acts.values()
            if a.state.startswith("pending") and self.model.scoped({a.esme}) and self.model.ch_of(a.esme) is not None
        ]  # fmt: skip
        if not pending:
            return
        act = data.draw(st.sampled_from(pending))
        ch = self.model.ch_of(act.esme)
        mpan = self.model.mpan_of(act.esme)
        assert ch is not None
        restorer = data.draw(st.sampled_from(sorted(self.model.esmes_on(ch))))
        window = self.model._pending_window(act)
        assert window is not None
        start = window[0] + data.draw(st.sampled_from([timedelta(0), M, 10 * M]))
        ad1 = PowerOutage(
            message_id=self._mid("ad1"), arrival=self.now, verified=True, ch=ch, mpan=mpan, start_time=start
        )
        self._message(ad1, lambda m: m.outage(ad1.message_id, ch, mpan, start))
        esme = restorer
        rst = SupplyRestored(
            message_id=self._mid("rst"), arrival=self.now, verified=True, esme=esme, alert_code=0x8F36,
            interruption_time=start, restoration_time=start + 4 * M,
        )  # fmt: skip
        self._message(rst, lambda m: m.restoration(rst.message_id, esme, start))
        if outcome is None:
            return
        self.now += data.draw(st.sampled_from([S, 5 * M]))
        self._outcome_of(act, outcome == "success")

    def _outcome_of(self, act: Act, success: bool) -> None:
        """The outcome of a pending activation, arriving now: its 11.3 response, or its 8F66 / 8F67."""
        if act.state == "pending-immediate":
            result = 0 if success else 3
            at = self.now
            ev: MessageEvent = ActivationResponse(
                message_id=self._mid("rsp"), arrival=self.now, verified=True, esme=act.esme, supplier=SUPPLIER,
                counter=act.counter, response_time=at, result=result,
            )  # fmt: skip
            self._message(ev, lambda m: m.observe(ev.message_id, act.esme, "response", counter=act.counter, at=at,
                                                  result=result))  # fmt: skip
        else:
            at = act.execution or self.now
            ev = FutureDatedOutcome(
                message_id=self._mid("fd"), arrival=self.now, verified=True, esme=act.esme, supplier=SUPPLIER,
                command_counter=act.counter, execution_time=at, result=0 if success else 2,
                alert_code=ALERT_FD_SUCCESS if success else ALERT_FD_FAILURE,
            )  # fmt: skip
            self._message(ev, lambda m: m.observe(ev.message_id, act.esme, "outcome", counter=act.counter, at=at,
                                                  success=success))  # fmt: skip
        self.sent.append(ev)

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def redelivery(self, data: st.DataObject) -> None:
        """The DCC delivers a message again (same identity and content, arriving now)."""
        ev = replace(data.draw(st.sampled_from(self.sent)), arrival=self.now)
        self._redeliver(ev)

    def _redeliver(self, ev: MessageEvent) -> None:
        if isinstance(ev, PowerOutage):
            self._message(ev, lambda m: m.outage(ev.message_id, ev.ch, ev.mpan, ev.start_time, ev.verified))
        elif isinstance(ev, SupplyRestored):
            self._message(
                ev,
                lambda m: m.restoration(
                    ev.message_id, ev.esme, ev.interruption_time, ev.verified, bool(ev.clock_unreliable)
                ),
            )
        elif isinstance(ev, InventoryObserved | InventoryUnlinked):
            self._inventory_message(ev)
        elif not ev.verified:
            times = [t for t in (getattr(ev, "seen_at", None), getattr(ev, "response_time", None),
                                 getattr(ev, "execution_time", None)) if t is not None and t != CANCELLATION_SENTINEL]  # fmt: skip
            cancellation = getattr(ev, "is_cancellation", False)
            esme: int = ev.esme  # type: ignore[attr-defined]
            self._message(
                ev,
                lambda m: (m.observe_unverified(ev.message_id, esme, times, cancellation=cancellation), [])[
                    1
                ],
            )
        elif isinstance(ev, ActivationRequested):
            ev = replace(ev, seen_at=self.now)
            kind = (
                "cancel" if ev.is_cancellation else ("immediate" if ev.execution_time is None else "future")
            )
            execution = None if kind != "future" else ev.execution_time
            self._message(ev, lambda m: m.observe(ev.message_id, ev.esme, "request", counter=ev.counter,
                                                  requested=kind, execution=execution))  # fmt: skip
        elif isinstance(ev, ActivationResponse):
            self._message(ev, lambda m: m.observe(ev.message_id, ev.esme, "response", counter=ev.counter,
                                                  at=ev.response_time, result=ev.result))  # fmt: skip
        elif isinstance(ev, FutureDatedOutcome):
            self._message(ev, lambda m: m.observe(ev.message_id, ev.esme, "outcome", counter=ev.command_counter,
                                                  at=ev.execution_time, success=ev.succeeded))  # fmt: skip

    # ------------------------------------------------------------------ clock and restart

    def _tick(self, now: datetime) -> None:
        self.now = max(self.now, now)
        out = self._feed(Tick(self.now))
        self._choose(out)
        expected = self.model.advance(self.now)
        pruned = {
            table: {
                c.key
                for c in out
                if isinstance(c, StateChange) and c.table.value == table and c.value is None
            }
            for table in BUDGETED
        }
        # the holds it times out are decided before anything is pruned (with the evidence the retention then drops)
        self._compare(out, expected, f"tick to {self.now - T0}")
        self.broken = True
        problem = self.model.prune_problem(pruned, self.budget)
        assert problem is None, f"tick to {self.now - T0}: {problem}"
        self.broken = False
        self.model.prune(pruned)
        for mid in [mid for mid in self.finals if mid not in self.model.seen]:
            del self.finals[mid]

    @rule(step=st.sampled_from(SMALL_STEPS))
    def tick_small(self, step: timedelta) -> None:
        self._tick(self.now + step)

    @rule(step=st.sampled_from(LARGE_STEPS))
    def tick_large(self, step: timedelta) -> None:
        self._tick(self.now + step)

    @precondition(lambda self: any(h.deadline is not None for h in self.model.held.values()))
    @rule(data=st.data(), delta=st.sampled_from([timedelta(0), -S]))
    def tick_to_a_deadline(self, data: st.DataObject, delta: timedelta) -> None:
        deadlines = sorted({h.deadline for h in self.model.held.values() if h.deadline is not None})
        self._tick(data.draw(st.sampled_from(deadlines)) + delta)

    @precondition(lambda self: any(h.deadline is not None for h in self.model.held.values()))
    @rule(data=st.data())
    def evidence_at_a_deadline(self, data: st.DataObject) -> None:
        """The clock jumps to a hold's deadline by the arrival of an outcome stamped with that instant."""
        deadlines = sorted({h.deadline for h in self.model.held.values() if h.deadline is not None})
        self.now = max(self.now, data.draw(st.sampled_from(deadlines)))
        if data.draw(st.booleans()):
            self.fd_outcome(data, True)
        else:
            self.response(data, 0, timedelta(0))

    @rule()
    def restart_from_the_store(self) -> None:
        """Restore an engine from what the store keeps (the latest value of every state change, as JSON)."""
        self.engine = self._restore(self.table)
        self.restores += 1
        assert [h.event.message_id for h in self.engine.held()] == [
            h.event.message_id for h in self.twin.held()
        ]

    # ------------------------------------------------------------------ invariants

    @invariant()
    def held_messages_are_the_models(self) -> None:
        assert {h.event.message_id for h in self.engine.held()} == set(self.model.held)

    @invariant()
    def activations_are_the_models(self) -> None:
        got = {(a.esme, a.counter): a.state.value for a in self.engine.activations()}
        assert got == {key: act.state for key, act in self.model.acts.items()}

    @invariant()
    def the_inventory_links_are_the_models(self) -> None:
        """What the engine joins through (the live inventory, and the one a restore rebuilt) is what the rules of
        ENGINE.md §3 make of the snapshot and the link evidence so far, whatever order it came in."""
        m = self.model
        for name, engine in (("engine", self.engine), ("twin", self.twin)):
            inv = engine.inventory
            for device in (*METERS, *HUBS):
                got = (inv.ch_for_esme(device), _mpxn(inv.mpan_for_esme(device)))
                assert got == (m.ch_of(device), m.mpan_of(device)), f"{name}: links of {device:016X}: {got}"
            for hub in HUBS:
                assert set(inv.esmes_for_ch(hub)) == m.esmes_on(hub), f"{name}: ESMEs of hub {hub:016X}"
            for mpan in MPANS:
                assert set(inv.esmes_for_mpan(mpan)) == m.esmes_with(mpan), f"{name}: ESMEs of MPxN {mpan}"

    @invariant()
    def nothing_is_held_past_its_limit(self) -> None:
        clock = self.engine.clock
        for h in self.engine.held():
            if isinstance(h.event, PowerOutage):
                assert clock is not None and clock < h.since + self.config.hold_limit
            else:  # a restoration waits for AD1s held before its own limit, each for at most the hold limit
                assert clock is not None and clock < h.since + 2 * self.config.hold_limit
            # never past what its hold decision stated (the audit's record, a re-delivery's answer)
            assert h.decision.hold_deadline is not None and clock < h.decision.hold_deadline

    def teardown(self) -> None:
        """Every inline message is eventually forwarded or suppressed exactly once, and every record the retention
        has passed is pruned, at most a budget a tick (ENGINE.md §8)."""
        if self.broken:
            return  # a step failed: hypothesis reports that failure
        self._tick(self.now + self.config.hold_limit)
        assert not self.engine.held()
        for mid in self.inline:
            if mid in self.model.seen:
                assert self.finals.get(mid) == 1, f"{mid} got {self.finals.get(mid, 0)} final decisions"
        for _ in range(len(self.table) + 1):
            if not any(self.model.due().values()):
                break
            self._tick(self.now + S)
        assert not any(self.model.due().values()), f"never pruned: {self.model.due()}"


_SETTINGS = settings(
    max_examples=int(os.environ.get("ENGINE_MODEL_EXAMPLES", "240")),
    stateful_step_count=int(os.environ.get("ENGINE_MODEL_STEPS", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class EngineAgainstModelOtherPolicies(EngineAgainstModel):
    """The same world under the other policies: 8F67 counted as a reboot, paired restorations forwarded, a
    short hold limit."""

    config = EngineConfig(
        fd_failure_policy="suppress", restoration_policy="forward", hold_limit=timedelta(minutes=2)
    )


class EngineAgainstModelInManufacturerScope(EngineAgainstModel):
    """The same world in scope by manufacturer (A and C are Landis+Gyr, B another; what an 8.2 names replaces it,
    an ESME of none is out of scope), an AD1 or restoration whose own signature failed quarantined."""

    config = EngineConfig(
        scope="manufacturer", manufacturers=frozenset({"landis+gyr"}), quarantine_unverified_inline=True
    )


class EngineAgainstModelUnderAPruneBudget(EngineAgainstModel):
    """The default world with a prune budget of a few records a tick (``PRUNE_PER_TICK``, ENGINE.md §8): after a
    large tick keys, kept outages and unverified evidence wait for their prune, a key maybe before its record."""

    budget = 3


EngineAgainstModel.TestCase.settings = _SETTINGS
EngineAgainstModelOtherPolicies.TestCase.settings = settings(
    _SETTINGS, max_examples=_SETTINGS.max_examples // 3
)
test_engine_against_its_model = EngineAgainstModel.TestCase
test_engine_against_its_model_under_other_policies = EngineAgainstModelOtherPolicies.TestCase
EngineAgainstModelInManufacturerScope.TestCase.settings = settings(
    _SETTINGS, max_examples=_SETTINGS.max_examples // 3
)
test_engine_against_its_model_in_manufacturer_scope = EngineAgainstModelInManufacturerScope.TestCase


def test_engine_against_its_model_under_a_prune_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = EngineAgainstModelUnderAPruneBudget.budget
    assert budget is not None
    monkeypatch.setattr(engine_module, "PRUNE_PER_TICK", budget)
    run_state_machine_as_test(
        EngineAgainstModelUnderAPruneBudget,
        settings=settings(_SETTINGS, max_examples=_SETTINGS.max_examples // 3),
    )
