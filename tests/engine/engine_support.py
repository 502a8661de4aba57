"""Small real in-memory implementations of the engine's ports, and readable event builders.

``MemoryScope`` (frozenset-backed GUID list) and ``MemoryInventory`` (dict-backed ESME<->CH<->MPAN
links) satisfy ``gateway.engine.ports``; the builders make events whose times are minutes after
``T0`` so that scenarios read like a timeline.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from gateway.engine import (
    ActivationRequested,
    ActivationResponse,
    Decision,
    Effect,
    Engine,
    EngineConfig,
    FutureDatedOutcome,
    InventoryObserved,
    InventoryUnlinked,
    OtherInline,
    PowerOutage,
    StateChange,
    SupplyRestored,
    Tick,
)
from gateway.engine.events import ALERT_FD_FAILURE, ALERT_FD_SUCCESS, CANCELLATION_SENTINEL
from gateway.engine.ports import InventoryView
from gateway.engine.records import to_record
from gateway.engine.state import LearnedLink, after_hub_end, hub_end_fact, merge_learned

T0 = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
SUPPLIER = 0x90B3D51F30010000
ESME = 0x00DB1234567890A0
CH = 0x00DB1234567890A2
MPAN = "1234567890126"
OTHER_ESME = 0x00DB1234567891A0
OTHER_CH = 0x00DB1234567891A2
OTHER_MPAN = "9999999999993"

_ids = itertools.count(1)


def t(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _mid(prefix: str, mid: str | None) -> str:
    return mid if mid is not None else f"{prefix}-{next(_ids)}"


class MemoryScope:
    """The GUID list as a frozenset of EUI ints."""

    def __init__(self, euis: Iterable[int]) -> None:
        self._euis = frozenset(euis)

    def __contains__(self, eui: object) -> bool:
        return eui in self._euis

    def __len__(self) -> int:
        return len(self._euis)


class MemoryInventory:
    """ESME -> (CH, MPAN, manufacturer, model) with reverse indexes, learnable."""

    def __init__(self, rows: Iterable[tuple[int, int | None, str | None, str | None]] = ()) -> None:
        self._rows: dict[int, list[object]] = {}
        self._by_ch: dict[int, list[int]] = {}
        self._by_mpan: dict[str, list[int]] = {}
        self._learned: dict[int, LearnedLink] = {}
        self._hub_ends: dict[int, datetime] = {}
        for esme, ch, mpan, manufacturer in rows:
            self.learn(esme, ch, mpan, manufacturer)

    def esmes_for_ch(self, ch: int) -> Sequence[int]:
        return self._by_ch.get(ch, ())

    def esmes_for_mpan(self, mpan: str) -> Sequence[int]:
        return self._by_mpan.get(mpan, ())

    def ch_for_esme(self, esme: int) -> int | None:
        row = self._rows.get(esme)
        return None if row is None else row[0]  # type: ignore[return-value]

    def mpan_for_esme(self, esme: int) -> str | None:
        row = self._rows.get(esme)
        return None if row is None else row[1]  # type: ignore[return-value]

    def manufacturer_of(self, esme: int) -> str | None:
        row = self._rows.get(esme)
        return None if row is None else row[2]  # type: ignore[return-value]

    def learned(self, esme: int) -> LearnedLink | None:
        return self._learned.get(esme)

    def learn_link(self, link: LearnedLink) -> LearnedLink | None:
        """The engine's port: the ordering rule itself (``merge_learned``), then the links it keeps."""
        prior = self._learned.get(link.esme)
        end = None if link.ch is None else self.hub_end(link.ch)
        state = merge_learned(prior, after_hub_end(prior, link, end))
        if state == prior:
            return None
        self._learned[link.esme] = state
        self.learn(state.esme, state.ch, state.mpan, state.manufacturer, state.model)
        if "ch" in state.ended and self._rows[state.esme][0] is not None:
            self._by_ch[self._rows[state.esme][0]].remove(state.esme)  # type: ignore[index]
            self._rows[state.esme][0] = None
        if "mpan" in state.ended and self._rows[state.esme][1] is not None:
            self._by_mpan[self._rows[state.esme][1]].remove(state.esme)  # type: ignore[index]
            self._rows[state.esme][1] = None
        return state

    def hub_end(self, ch: int) -> datetime | None:
        return self._hub_ends.get(ch)

    def end_hub(self, ch: int, time: datetime) -> bool:
        """The port's rule: keep the latest end; end the hub link of every ESME behind it."""
        for esme in list(self.esmes_for_ch(ch)):
            fact = hub_end_fact(self._learned.get(esme), esme, ch, time)
            if fact is not None:
                self.learn_link(fact)
        old = self._hub_ends.get(ch)
        if old is not None and old >= time:
            return False
        self._hub_ends[ch] = time
        return True

    def learn(
        self,
        esme: int,
        ch: int | None = None,
        mpan: str | None = None,
        manufacturer: str | None = None,
        model: str | None = None,
    ) -> bool:
        """Set the links given (a snapshot row, or what ``learn_link`` keeps)."""
        row = self._rows.setdefault(esme, [None, None, None, None])
        new = [ch, mpan, manufacturer, model]
        changed = False
        for i, value in enumerate(new):
            if value is not None and row[i] != value:
                if i == 0 and row[0] is not None:
                    self._by_ch[row[0]].remove(esme)  # type: ignore[index]
                if i == 1 and row[1] is not None:
                    self._by_mpan[row[1]].remove(esme)  # type: ignore[index]
                row[i] = value
                if i == 0:
                    self._by_ch.setdefault(value, []).append(esme)  # type: ignore[arg-type]
                if i == 1:
                    self._by_mpan.setdefault(value, []).append(esme)  # type: ignore[arg-type]
                changed = True
        return changed


def standard_world(config: EngineConfig | None = None) -> Engine:
    """ESME on CH/MPAN in scope; OTHER_ESME on OTHER_CH known but not in scope."""
    scope = MemoryScope([ESME])
    inventory = MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr"), (OTHER_ESME, OTHER_CH, OTHER_MPAN, "Other")])
    return Engine(config or EngineConfig(), scope, inventory)


# ---- event builders (times in minutes after T0) -----------------------------------------


def request(
    at: float,
    *,
    counter: int = 1000,
    esme: int = ESME,
    execute: float | None = None,
    cancel: bool = False,
    verified: bool = True,
    mid: str | None = None,
) -> ActivationRequested:
    return ActivationRequested(
        message_id=_mid("req", mid),
        arrival=t(at),
        verified=verified,
        verification="ok" if verified else "xml signature invalid",
        supplier=SUPPLIER,
        esme=esme,
        counter=counter,
        execution_time=CANCELLATION_SENTINEL if cancel else (None if execute is None else t(execute)),
        is_cancellation=cancel,
        seen_at=t(at),
    )


def response(
    at: float,
    *,
    counter: int = 1000,
    esme: int = ESME,
    result: int | None = 0,
    accepted: bool = False,
    gbcs_at: float | None = None,
    verified: bool = True,
    arrival: float | None = None,
    mid: str | None = None,
) -> ActivationResponse:
    return ActivationResponse(
        message_id=_mid("rsp", mid),
        arrival=t(at if arrival is None else arrival),
        verified=verified,
        verification="ok" if verified else "gbcs signature invalid",
        esme=esme,
        supplier=SUPPLIER,
        counter=counter,
        response_time=t(at),
        result=None if accepted else result,
        accepted_future=accepted,
        gbcs_time=None if gbcs_at is None else t(gbcs_at),
    )


def fd_outcome(
    execute: float,
    *,
    arrival: float | None = None,
    counter: int = 1001,
    esme: int = ESME,
    success: bool = True,
    verified: bool = True,
    mid: str | None = None,
) -> FutureDatedOutcome:
    return FutureDatedOutcome(
        message_id=_mid("fd", mid),
        arrival=t(execute if arrival is None else arrival),
        verified=verified,
        verification="ok" if verified else "gbcs signature invalid",
        esme=esme,
        supplier=SUPPLIER,
        command_counter=counter,
        execution_time=t(execute),
        result=0 if success else 2,
        alert_code=ALERT_FD_SUCCESS if success else ALERT_FD_FAILURE,
    )


def outage(
    start: float,
    *,
    arrival: float | None = None,
    ch: int = CH,
    mpan: str | None = MPAN,
    verified: bool = True,
    mid: str | None = None,
) -> PowerOutage:
    """An AD1; by default it arrives 3.5 minutes after the outage started (the CH waits 3 min)."""
    return PowerOutage(
        message_id=_mid("ad1", mid),
        arrival=t(start + 3.5 if arrival is None else arrival),
        verified=verified,
        verification="ok" if verified else "xml signature invalid",
        ch=ch,
        mpan=mpan,
        start_time=t(start),
    )


def restored(
    interrupted: float, *, arrival: float | None = None, esme: int = ESME, mid: str | None = None
) -> SupplyRestored:
    return SupplyRestored(
        message_id=_mid("rst", mid),
        arrival=t(interrupted + 5 if arrival is None else arrival),
        verified=True,
        esme=esme,
        alert_code=0x8F36,
        interruption_time=t(interrupted),
        restoration_time=t(interrupted + 4),
    )


def learned(
    at: float,
    *,
    esme: int,
    ch: int | None,
    mpan: str | None,
    mid: str | None = None,
    time: float | None = None,
) -> InventoryObserved:
    """An 8.2 observation arriving at ``at``; ``time`` is its own ResponseDateTime (None: untimed)."""
    return InventoryObserved(
        message_id=_mid("inv", mid),
        arrival=t(at),
        verified=True,
        esme=esme,
        ch=ch,
        mpan=mpan,
        manufacturer="Landis+Gyr",
        time=None if time is None else t(time),
    )


def unlinked(
    at: float,
    *,
    esme: int = ESME,
    time: float,
    ch: int | None = CH,
    mpan: str | None = MPAN,
    mid: str | None = None,
    change: str = "MeterDecommissioningOrWithdrawal",
    mpxns: tuple[str, ...] = (),
) -> InventoryUnlinked:
    """A DCC status change alert arriving at ``at``, of its own time ``time``: by default the meter
    decommissioned or withdrawn; ``change`` another that ends links (``esme`` is then the device the
    alert names: the Comms Hub of a ``CHFDecommissioning``), ``mpxns`` a ``MeterIdentity``'s MPxNs."""
    return InventoryUnlinked(
        message_id=_mid("unl", mid),
        arrival=t(at),
        verified=True,
        esme=esme,
        ch=ch,
        mpan=mpan,
        change=change,
        time=t(time),
        mpxns=mpxns,
    )


def other(at: float, *, verified: bool = True, mid: str | None = None) -> OtherInline:
    return OtherInline(
        message_id=_mid("oth", mid), arrival=t(at), verified=verified, description="DeviceAlertMessage 8F0A"
    )


def tick(at: float) -> Tick:
    return Tick(t(at))


def decisions(effects: Iterable[Effect]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


def run(engine: Engine, events: Iterable[object]) -> list[Effect]:
    out: list[Effect] = []
    for ev in events:
        out.extend(engine.handle(ev))  # type: ignore[arg-type]
    return out


def final(effects: Iterable[Effect]) -> dict[str, tuple[str | None, str]]:
    """message id -> (disposition, reason) of its latest decision."""
    result: dict[str, tuple[str | None, str]] = {}
    for d in decisions(effects):
        result[d.message_id] = (d.disposition, d.reason.value)
    return result


def decisions_restored_at_every_cut(
    events: Sequence[object], world: Callable[[], Engine], inventory: Callable[[], InventoryView]
) -> list[list[Decision]]:
    """The decisions of ``events``, once per cut point: run up to the cut on ``world()``, keep what a store keeps
    (the latest value of every ``StateChange``, as JSON text), restore a new engine from it on ``inventory()``
    (the snapshot: learned links are re-applied from their records) and run the rest."""
    runs = []
    for cut in range(len(events) + 1):
        first = world()
        table: dict[tuple[str, str], object] = {}
        effects: list[Effect] = []
        for ev in events[:cut]:
            out = first.handle(ev)  # type: ignore[arg-type]
            effects += out
            for c in out:
                if isinstance(c, StateChange):
                    if c.value is None:
                        table.pop((c.table.value, c.key), None)
                    else:
                        table[(c.table.value, c.key)] = c.value
        rows = [(tbl, key, json.loads(json.dumps(to_record(v)))) for (tbl, key), v in table.items()]
        second = Engine.restore(EngineConfig(), first.scope, inventory(), rows)
        for ev in events[cut:]:
            effects += second.handle(ev)  # type: ignore[arg-type]
        runs.append(decisions(effects))
    return runs
