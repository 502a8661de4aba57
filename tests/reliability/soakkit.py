"""The fault suite's soak: signed traffic through a real gateway process under seeded faults, then a
reconciliation of what the DSP had acknowledged against the audit store and what the DNO received.

Theory of operation
===================

*Traffic* (:func:`build_plan`): premises groups drawn with a seeded RNG, each on its own meter and
Comms Hub, so every message has a distinct DUIS identity:

======== ============================================================ ===========================
group    messages (lane)                                              inline decisions expected
======== ============================================================ ===========================
reboot   11.3 request, 11.3 success (observe); AD1, 8F36 (inline)      suppress, suppress (paired)
outage   AD1, 8F36 restoration (inline), no activation                 forward, forward
fd-held  11.3 future-dated request + "accepted" (observe); AD1         suppress (held, released by
         (inline, held); 8F66 two minutes later (observe)              the 8F66: fd-confirmed)
fd-timeout as fd-held without the 8F66                                 forward (hold-timeout)
noise    11.3 request + success (observe), no AD1                      -
======== ============================================================ ===========================

*Sending* (:class:`Soak`): the messages go in event-time order through ``concurrency`` parallel DSP
connections (the ``X-DUISGW-Arrival`` header carries each message's time: the gateway runs with
``clock = "message"``); one premises' messages are sent strictly one after the other. A message
whose POST did not get a 2xx (connection refused while the gateway is down, reset by a kill, a
client timeout while the gateway is frozen) is sent again until it is acknowledged, like the DCC's
re-delivery; a fraction of acknowledged messages is sent again on purpose (an acknowledgement lost
on the way back). Every acknowledged message is recorded with its answer and the time of the answer.

*Faults* (:func:`plan_faults`, positions counted in acknowledged messages): SIGKILL of the gateway
at seeded points, then a restart on the same state and ports; SIGSTOP for longer than the DSP's
client timeout (timeouts, then re-sends of messages the gateway had in fact accepted); the DNO
receiver stopped for a long stretch (thousands of forwards wait in the disk-backed outbox) and
bounced once more later; the MQTT broker restarted twice.

*End*: the gateway is stopped with SIGTERM (it must exit 0), started again, its event clock moved
past every hold (``POST /admin/tick``), and the run waits (bounded) until the outbox is drained and
nothing is held or undecided; then it is stopped cleanly and :func:`reconcile` compares the DSP's
record, the engine's decision log (in the transport store's ``outbox.sqlite3``) and the receiver's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent / "e2e", HERE.parent / "service"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from e2ekit import DNO_USER, GatewayProcess, write_config  # noqa: E402
from servicekit import MOSQUITTO, Broker, Receiver, free_port  # noqa: E402

from gateway.duis.decode import decode  # noqa: E402
from gateway.service.simulate import DspSimulator, TimedMessage  # noqa: E402
from gateway.testkit.scenario import World  # noqa: E402

__all__ = [
    "REPORTS",
    "FaultPlan",
    "Figures",
    "HashingReceiver",
    "Soak",
    "SoakMessage",
    "SoakPlan",
    "build_plan",
    "plan_faults",
    "reconcile",
    "run_soak",
]

DAY = datetime(2026, 3, 2, tzinfo=UTC)
GROUPS = ("reboot", "outage", "fd-held", "fd-timeout", "noise")
WEIGHTS = (30, 35, 10, 5, 20)
HOLD_LIMIT = timedelta(minutes=10)
#: (title, figure table) of every soak run in this process: printed at the end of a pytest run
REPORTS: list[tuple[str, str]] = []
FINAL_ACTIONS = {
    "forward": "forward",
    "release-forward": "forward",
    "suppress": "suppress",
    "release-suppress": "suppress",
}
ACK = (200, 202, 204)


# ------------------------------------------------------------------------------------------ traffic


@dataclass(frozen=True, slots=True)
class SoakMessage:
    """One distinct message of the soak: event-time arrival, lane, signed bytes, identity."""

    index: int
    at: datetime
    lane: str
    body: bytes
    message_id: str
    premises: int
    group: str
    expect: str | None = None  # forward | suppress (inline lane)
    reason: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class SoakPlan:
    world: World
    messages: list[SoakMessage]
    reference: dict[str, Path]
    groups: Counter[str]

    @property
    def inline(self) -> list[SoakMessage]:
        return [m for m in self.messages if m.lane == "inline"]

    @property
    def end(self) -> datetime:
        return max(m.at for m in self.messages)


def build_plan(out: Path, messages: int, seed: int) -> SoakPlan:
    """At least ``messages`` distinct signed messages in premises groups (see the module docstring),
    the reference data (GUID list, inventory, certificates, one GBCS key bundle) written to ``out``."""
    rng = random.Random(seed)
    world = World.generated()
    f = world.factory
    s = timedelta(seconds=1)
    raw: list[tuple[datetime, str, bytes, int, str, str | None, str | None]] = []
    groups: Counter[str] = Counter()
    base = DAY
    premises = 0
    alert_counter = 1_000_000
    while len(raw) < messages:
        premises += 1
        n = 20_000 + premises
        kind = rng.choices(GROUPS, WEIGHTS)[0]
        groups[kind] += 1
        base += rng.uniform(2.0, 8.0) * s
        b = base.replace(microsecond=0)
        esme, ch, mpan = world.meter(n)
        alert_counter += 1

        def add(at: datetime, lane: str, body: bytes, expect: str | None = None, reason: str | None = None,
                _n: int = n, _k: str = kind) -> None:  # fmt: skip
            raw.append((at, lane, body, _n, _k, expect, reason))

        if kind == "reboot":
            add(b, "observe", f.activate_request(esme, 7000))
            add(b + 30 * s, "observe", f.activate_response(esme, 7000, b + 30 * s, gbcs_time=b + 28 * s))
            add(b + 300 * s, "inline", f.ad1(ch, mpan, b + 180 * s, b + 300 * s, alert_counter),
                "suppress", "activation-window")  # fmt: skip
            add(b + 360 * s, "inline", f.restoration(esme, b + 180 * s, b + 270 * s, b + 360 * s),
                "suppress", "restoration-paired")  # fmt: skip
        elif kind == "outage":
            add(b + 180 * s, "inline", f.ad1(ch, mpan, b, b + 180 * s, alert_counter), "forward", "no-activation")
            add(b + 1260 * s, "inline", f.restoration(esme, b, b + 1200 * s, b + 1260 * s), "forward",
                "not-paired")  # fmt: skip
        elif kind in ("fd-held", "fd-timeout"):
            execution = b + 2400 * s
            add(b, "observe", f.activate_request(esme, 7000, execution=execution))
            add(b + 30 * s, "observe", f.activate_response(esme, 7000, b + 30 * s, result=None))
            if kind == "fd-held":
                ad1 = f.ad1(ch, mpan, execution + 50 * s, execution + 240 * s, alert_counter)
                add(execution + 240 * s, "inline", ad1, "suppress", "fd-confirmed")
                add(execution + 360 * s, "observe", f.future_dated_outcome(esme, 7000, execution, execution + 360 * s))
            else:
                ad1 = f.ad1(ch, mpan, execution + 50 * s, execution + 240 * s, alert_counter)
                add(execution + 240 * s, "inline", ad1, "forward", "hold-timeout")
        else:  # noise: observation traffic only
            add(b, "observe", f.activate_request(esme, 7000))
            add(b + 40 * s, "observe", f.activate_response(esme, 7000, b + 40 * s))
    raw.sort(key=lambda r: r[0])
    out_msgs = []
    for i, (at, lane, body, n, kind, expect, reason) in enumerate(raw):
        out_msgs.append(SoakMessage(i, at, lane, body, decode(body).identity, n, kind, expect, reason))
    ids = [m.message_id for m in out_msgs]
    if len(set(ids)) != len(ids):
        raise AssertionError("the soak plan has two messages with one identity")
    reference = world.write_reference(out, bundle=True)
    return SoakPlan(world, out_msgs, reference, groups)


# ------------------------------------------------------------------------------------------ faults


@dataclass(frozen=True)
class FaultPlan:
    """Fault positions, counted in acknowledged messages."""

    kills: tuple[int, ...]
    stalls: tuple[int, ...]
    dno_down: tuple[tuple[int, int], ...]
    broker_restarts: tuple[int, ...]
    resend_rate: float = 0.01  # acknowledged messages sent again on purpose (lost acknowledgement)
    stall_seconds: float = 5.0  # longer than the DSP's client timeout


def plan_faults(messages: int, kills: int, seed: int, *, stalls: int | None = None) -> FaultPlan:
    rng = random.Random(seed * 7919 + 17)
    lo, hi = max(1, int(0.03 * messages)), max(2, int(0.97 * messages))
    kill_at = tuple(sorted(rng.sample(range(lo, hi), kills)))
    n_stalls = stalls if stalls is not None else max(1, kills // 5)
    stall_at = tuple(sorted(rng.sample(range(lo, hi), n_stalls)))
    down = ((int(0.12 * messages), int(0.70 * messages)), (int(0.72 * messages), int(0.76 * messages)))
    broker = (int(0.35 * messages), int(0.86 * messages))
    return FaultPlan(kill_at, stall_at, down, broker)


# ------------------------------------------------------------------------------------------ receivers


@dataclass
class HashingReceiver(Receiver):
    """The DNO adaptor: records (message id, SHA-256 of the body, wall time) of every POST; 204."""

    receipts: list[tuple[str, str, float]] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        mid = request.headers.get("X-DUISGW-Message-Id", "")
        self.receipts.append((mid, hashlib.sha256(body).hexdigest(), time.time()))
        return web.Response(status=204)


class MqttTally:
    """A persistent-session MQTT v5 subscriber to the gateway's publications (reconnects after a
    broker restart); counts deliveries per ``message_id`` user property and keeps the payload hash."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: Counter[str] = Counter()
        self.hashes: dict[str, str] = {}
        self.ready = asyncio.Event()

    async def run(self) -> None:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        while True:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier="soak-tally", clean_start=False,
                                          protocol=aiomqtt.ProtocolVersion.V5, properties=props) as client:  # fmt: skip
                    await client.subscribe("duisgw/dno/#", qos=1)
                    self.ready.set()
                    async for message in client.messages:
                        pairs = dict(getattr(message.properties, "UserProperty", []) or [])
                        mid = str(pairs.get("message_id", ""))
                        payload = message.payload
                        data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                        self.received[mid] += 1
                        self.hashes.setdefault(mid, hashlib.sha256(data).hexdigest())
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)


# ------------------------------------------------------------------------------------------ figures


@dataclass
class Figures:
    """What the soak measured. ``lost`` and ``decided_twice`` must be 0."""

    messages: int = 0
    inline: int = 0
    acked: int = 0
    posts: int = 0
    resent_after_failure: int = 0
    resent_after_timeout: int = 0
    resent_on_purpose: int = 0
    kills: int = 0
    stalls: int = 0
    dno_outages: int = 0
    broker_restarts: int = 0
    forwards: int = 0
    suppressions: int = 0
    held_then_released: int = 0
    lost: int = 0
    lost_no_decision: int = 0
    lost_not_delivered: int = 0
    still_held: int = 0
    observations_lost: int = 0
    decided_twice: int = 0
    suppressed_delivered: int = 0
    unknown_decided: int = 0
    unknown_delivered: int = 0
    bytes_altered: int = 0
    answer_changed: int = 0
    decision_mismatch: int = 0
    duplicates_delivered: int = 0
    dead_letters: int = 0
    max_outbox_age_s: float = 0.0
    max_outbox_age_metric_s: float = 0.0
    peak_outbox_depth: int = 0
    mqtt_published: int | None = None
    mqtt_missing: int | None = None
    mqtt_duplicates: int | None = None
    restarts_s: list[float] = field(default_factory=list)  # SIGKILL -> /readyz 200, each kill
    drain_s: float = 0.0
    wall_s: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        def v(x: object) -> str:
            if x is None:
                return "-"
            return f"{x:.1f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)

        return [
            ("messages (distinct) / inline", f"{self.messages:,} / {self.inline:,}"),
            ("acknowledged by the gateway", v(self.acked)),
            ("POSTs (incl. re-sends)", v(self.posts)),
            ("re-sent: failed POST / timeout / ack lost",
             f"{self.resent_after_failure:,} / {self.resent_after_timeout:,} / {self.resent_on_purpose:,}"),
            ("kills done (SIGKILL + restart)", v(self.kills)),
            ("freezes (SIGSTOP > client timeout)", v(self.stalls)),
            ("DNO receiver outages / broker restarts", f"{self.dno_outages} / {self.broker_restarts}"),
            ("final forwards / suppressions", f"{self.forwards:,} / {self.suppressions:,}"),
            ("held, then released", v(self.held_then_released)),
            ("**messages lost**", v(self.lost)),
            ("  no final decision / forward not delivered / still held",
             f"{self.lost_no_decision} / {self.lost_not_delivered} / {self.still_held}"),
            ("observation evidence lost", v(self.observations_lost)),
            ("**decided twice**", v(self.decided_twice)),
            ("suppressed but delivered", v(self.suppressed_delivered)),
            ("decided / delivered under an identity never sent",
             f"{self.unknown_decided} / {self.unknown_delivered}"),
            ("delivered with altered bytes", v(self.bytes_altered)),
            ("answer to the DSP contradicted by the final decision", v(self.answer_changed)),
            ("final decision differs from the scenario's", v(self.decision_mismatch)),
            ("duplicates delivered (at-least-once)", v(self.duplicates_delivered)),
            ("dead letters", v(self.dead_letters)),
            ("max outbox age, receiver vs acceptance (s)", v(self.max_outbox_age_s)),
            ("max outbox age, gateway metric (s)", v(self.max_outbox_age_metric_s)),
            ("peak outbox depth (http queue)", v(self.peak_outbox_depth)),
            ("MQTT: published / missing / duplicates",
             f"{v(self.mqtt_published)} / {v(self.mqtt_missing)} / {v(self.mqtt_duplicates)}"),
            ("restart after a kill, mean / max (s)",
             f"{statistics.fmean(self.restarts_s):.1f} / {max(self.restarts_s):.1f}" if self.restarts_s else "-"),
            ("drain after the clean restart (s)", v(self.drain_s)),
            ("wall time (s)", v(self.wall_s)),
        ]

    def table(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {val}" for k, val in rows]
        for name, ids in self.examples.items():
            if ids:
                lines.append(f"examples of {name}: {', '.join(ids[:5])}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Acked:
    """The DSP's record of one message: first acknowledgement (status, decision, wall time)."""

    status: int
    decision: str | None
    at: float
    answers: list[tuple[int, str | None]] = field(default_factory=list)


def reconcile(
    plan: Iterable[SoakMessage],
    acked: Mapping[str, Acked],
    decisions: Iterable[tuple[str, str]],
    stored: Iterable[str],
    receipts: Iterable[tuple[str, str, float]],
    *,
    figures: Figures | None = None,
) -> Figures:
    """Compare the DSP's acknowledged messages with the decision log (``(message_id, action)`` in
    order), the ids of the messages the engine stored, and the DNO receiver's ``(id, sha256, time)``.

    Lost: an acknowledged inline message without a final decision, still held, or decided forward
    and never received; an acknowledged observation not stored. Decided twice: more than one final
    (forward/suppress, or a release of a hold) decision for one message."""
    fig = figures if figures is not None else Figures()
    msgs = {m.message_id: m for m in plan}
    history: dict[str, list[str]] = {}
    for mid, action in decisions:
        history.setdefault(mid, []).append(action)
    stored_ids = set(stored)
    got: dict[str, list[tuple[str, float]]] = {}
    for mid, digest, at in receipts:
        got.setdefault(mid, []).append((digest, at))
    ex: dict[str, list[str]] = {k: [] for k in ("lost", "decided-twice", "suppressed-delivered", "altered",
                                                 "answer-changed", "mismatch", "unknown-identity")}  # fmt: skip

    fig.messages = len(msgs)
    fig.inline = sum(1 for m in msgs.values() if m.lane == "inline")
    fig.acked = sum(1 for mid in msgs if mid in acked)
    for mid, m in msgs.items():
        if mid not in acked:
            continue
        if m.lane != "inline":
            if mid not in stored_ids:
                fig.observations_lost += 1
                ex["lost"].append(mid)
            continue
        actions = history.get(mid, [])
        finals = [FINAL_ACTIONS[a] for a in actions if a in FINAL_ACTIONS]
        if len(finals) > 1:
            fig.decided_twice += 1
            ex["decided-twice"].append(mid)
        if "hold" in actions and finals:
            fig.held_then_released += 1
        if not finals:
            if actions and actions[-1] == "hold":
                fig.still_held += 1
            else:
                fig.lost_no_decision += 1
            ex["lost"].append(mid)
            continue
        final = finals[-1]
        answer = acked[mid].decision
        if answer in ("forward", "suppress") and answer != final:
            fig.answer_changed += 1
            ex["answer-changed"].append(mid)
        if m.expect is not None and final != m.expect:
            fig.decision_mismatch += 1
            ex["mismatch"].append(f"{mid}={final}({m.group})")
        received = got.get(mid, [])
        if final == "forward":
            fig.forwards += 1
            if not received:
                fig.lost_not_delivered += 1
                ex["lost"].append(mid)
            else:
                fig.duplicates_delivered += len(received) - 1
                if any(d != m.sha256 for d, _ in received):
                    fig.bytes_altered += 1
                    ex["altered"].append(mid)
                if acked[mid].decision == "forward":
                    fig.max_outbox_age_s = max(fig.max_outbox_age_s, min(a for _, a in received) - acked[mid].at)
        else:
            fig.suppressions += 1
            if received:
                fig.suppressed_delivered += 1
                ex["suppressed-delivered"].append(mid)
    # an identity the DSP never sent: the gateway identified a message differently from the plan
    # (e.g. its decoder changed between two starts): every such message is also counted lost above
    unknown = sorted(mid for mid in got if mid not in msgs)
    fig.unknown_delivered = len(unknown)
    fig.unknown_decided = len({mid for mid in history if mid not in msgs})
    ex["unknown-identity"] = unknown
    fig.lost = fig.lost_no_decision + fig.lost_not_delivered + fig.still_held + fig.observations_lost
    fig.max_outbox_age_s = max(0.0, fig.max_outbox_age_s)
    fig.examples = {k: v for k, v in ex.items() if v}
    return fig


# ------------------------------------------------------------------------------------------ the run


def _metric(text: str, name: str, label: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            with contextlib.suppress(ValueError):
                return float(line.rsplit(" ", 1)[1])
    return None


class Soak:
    """One soak run: a gateway subprocess, a DNO receiver, mosquitto (optional), the DSP, the faults."""

    def __init__(
        self,
        plan: SoakPlan,
        faults: FaultPlan,
        workdir: Path,
        *,
        seed: int,
        concurrency: int = 8,
        client_timeout: float = 3.0,
        mqtt: bool = True,
        drain_timeout: float = 300.0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.faults = faults
        self.workdir = workdir
        self.rng = random.Random(seed * 31 + 7)
        self.concurrency = concurrency
        self.client_timeout = client_timeout
        self.use_mqtt = mqtt and Path(MOSQUITTO).exists()
        self.drain_timeout = drain_timeout
        self.progress = progress or (lambda _s: None)
        self.fig = Figures()
        self.acked: dict[str, Acked] = {}
        self.receiver = HashingReceiver()
        self.broker: Broker | None = None
        self.tally: MqttTally | None = None
        self.gw: GatewayProcess | None = None
        self.port = 0

    # -------------------------------------------------------------- setup

    def _config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, admin = free_port(), free_port()
        extra = ""
        if self.broker is not None:
            extra = (f'\n[mqtt]\nenabled = true\nport = {self.broker.port}\nclient_id = "duisgw-soak"\n'
                     "publish = true\nreconnect_interval = 0.5\n")  # fmt: skip
        cfg = write_config(self.workdir / "gateway.toml", port=self.port, admin_port=admin,
                           reference=self.plan.reference, extra=extra,
                           destinations=[{"name": "dno-a", "user": DNO_USER, "url": self.receiver.url}])  # fmt: skip
        text = cfg.read_text(encoding="utf-8").replace('level = "INFO"', 'level = "WARNING"')
        cfg.write_text(text, encoding="utf-8")
        return cfg

    def _start_broker(self) -> None:
        if not self.use_mqtt:
            return
        data = self.workdir / "mosquitto"
        data.mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = data / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                        f"persistence_location {data}/\nmax_queued_messages 0\nlog_dest none\n")  # fmt: skip
        self.broker = Broker(port, conf)
        self.broker.start()

    # -------------------------------------------------------------- the DSP

    async def _post_until_acked(self, dsp: DspSimulator, m: SoakMessage) -> None:
        tm = TimedMessage(m.at, m.lane, m.body)
        first = True
        while True:
            if not first:
                await asyncio.sleep(0.05)
            first = False
            self.fig.posts += 1
            try:
                posted = await dsp.post(tm)
            except TimeoutError:
                self.fig.resent_after_timeout += 1
                continue
            except (aiohttp.ClientError, OSError):
                self.fig.resent_after_failure += 1
                continue
            if posted.status not in ACK:
                if posted.status == 503:
                    self.fig.resent_after_failure += 1
                    continue
                raise AssertionError(f"{m.message_id}: HTTP {posted.status} {posted.text[:200]}")
            rec = self.acked.get(m.message_id)
            if rec is None:
                rec = self.acked[m.message_id] = Acked(posted.status, posted.decision, time.time())
            rec.answers.append((posted.status, posted.decision))
            if self.rng.random() < self.faults.resend_rate and len(rec.answers) == 1:
                self.fig.resent_on_purpose += 1  # the acknowledgement was "lost": the DSP sends it again
                continue
            return

    async def _dispatch(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.client_timeout)
        connector = aiohttp.TCPConnector(limit=self.concurrency * 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            dsp = DspSimulator(f"http://127.0.0.1:{self.port}", DNO_USER, session=http, retry_for=0.0)
            sem = asyncio.Semaphore(self.concurrency)
            last: dict[int, asyncio.Task[None]] = {}
            tasks: set[asyncio.Task[None]] = set()

            async def one(m: SoakMessage, before: asyncio.Task[None] | None) -> None:
                try:
                    if before is not None:
                        await before
                    await self._post_until_acked(dsp, m)
                finally:
                    sem.release()

            for m in self.plan.messages:
                await sem.acquire()
                task = asyncio.create_task(one(m, last.get(m.premises)))
                last[m.premises] = task
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if len(tasks) > 4 * self.concurrency:
                    await asyncio.sleep(0)
            while tasks:
                done = list(tasks)
                await asyncio.gather(*done)

    # -------------------------------------------------------------- faults

    async def _restart(self, delay: float) -> None:
        gw = self.gw
        assert gw is not None
        await asyncio.sleep(delay)
        gw.start()
        await gw.wait_ready(timeout=120.0)

    async def _faults(self, done: asyncio.Event) -> None:
        f = self.faults
        events: list[tuple[int, str]] = [(k, "kill") for k in f.kills] + [(k, "stall") for k in f.stalls]
        for a, b in f.dno_down:
            events += [(a, "dno-down"), (b, "dno-up")]
        events += [(k, "broker") for k in f.broker_restarts]
        events.sort()
        gw = self.gw
        assert gw is not None and gw.proc is not None
        for at, what in events:
            while len(self.acked) < at and not done.is_set():
                await asyncio.sleep(0.01)
            if done.is_set():
                break
            if what == "kill":
                t_kill = time.monotonic()
                gw.kill()
                self.fig.kills += 1
                self.progress(f"kill {self.fig.kills} at {len(self.acked):,} acknowledged")
                await self._restart(self.rng.uniform(0.0, 0.5))
                self.fig.restarts_s.append(time.monotonic() - t_kill)
            elif what == "stall":
                assert gw.proc is not None
                os.kill(gw.proc.pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(f.stall_seconds)
                finally:
                    os.kill(gw.proc.pid, signal.SIGCONT)
                self.fig.stalls += 1
                self.progress(f"freeze {self.fig.stalls} at {len(self.acked):,} acknowledged")
            elif what == "dno-down":
                await self.receiver.stop()
                self.fig.dno_outages += 1
                self.progress(f"DNO receiver down at {len(self.acked):,} acknowledged")
            elif what == "dno-up":
                await self.receiver.start()
                self.progress(f"DNO receiver up at {len(self.acked):,} acknowledged")
            elif what == "broker" and self.broker is not None:
                await asyncio.to_thread(self.broker.stop)
                await asyncio.sleep(0.5)
                await asyncio.to_thread(self.broker.start)
                self.fig.broker_restarts += 1
                self.progress(f"broker restarted at {len(self.acked):,} acknowledged")
        if self.receiver._runner is None:
            await self.receiver.start()

    async def _monitor(self) -> None:
        assert self.gw is not None
        url = f"http://127.0.0.1:{self.gw.admin_port}/metrics"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with http.get(url) as resp:
                        text = await resp.text()
                    depth = _metric(text, "duisgw_outbox_depth", 'queue="http:dno-a"')
                    age = _metric(text, "duisgw_outbox_oldest_age_seconds", 'queue="http:dno-a"')
                    if depth is not None:
                        self.fig.peak_outbox_depth = max(self.fig.peak_outbox_depth, int(depth))
                    if age is not None:
                        self.fig.max_outbox_age_metric_s = max(self.fig.max_outbox_age_metric_s, age)
                await asyncio.sleep(0.5)

    async def _reporter(self) -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(15)
            n = len(self.acked)
            rate = n / max(1e-9, time.monotonic() - t0)
            self.progress(f"{n:,}/{len(self.plan.messages):,} acknowledged ({rate:.0f}/s), "
                          f"{len(self.receiver.receipts):,} deliveries, kills {self.fig.kills}")  # fmt: skip

    # -------------------------------------------------------------- end

    def _pending(self) -> tuple[int, int, int]:
        """(outbox rows pending, inline messages held or undecided, forwards not yet in the outbox)."""
        assert self.gw is not None
        outbox = self.workdir / "outbox.sqlite3"
        engine = outbox  # the decision state is in the transport store's database ([pipeline] state_in_store)
        with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)) as c:
            pending = int(c.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0])
        with contextlib.closing(sqlite3.connect(f"file:{engine}?mode=ro", uri=True, timeout=5)) as c:
            held = int(c.execute("SELECT count(*) FROM messages WHERE lane = 'inline' AND status IN "
                                 "('hold', 'accepted')").fetchone()[0])  # fmt: skip
            unflagged = int(c.execute("SELECT count(*) FROM messages WHERE status = 'forward' AND delivered = 0")
                            .fetchone()[0])  # fmt: skip
        return pending, held, unflagged

    async def _drain(self) -> None:
        gw = self.gw
        assert gw is not None
        code = await asyncio.to_thread(gw.terminate, 60.0)
        if code != 0:
            raise AssertionError(f"SIGTERM: gateway exited {code}: {gw.log_tail()}")
        t0 = time.monotonic()
        gw.start()
        await gw.wait_ready(timeout=120.0)
        end = self.plan.end + HOLD_LIMIT + timedelta(seconds=1)
        await gw.admin("POST", "/admin/tick", {"now": end.isoformat()})
        deadline = time.monotonic() + self.drain_timeout
        while True:
            pending, held, unflagged = await asyncio.to_thread(self._pending)
            if pending == 0 and held == 0 and unflagged == 0:
                break
            if time.monotonic() > deadline:
                self.progress(f"drain timed out: {pending} outbox rows pending, {held} held, {unflagged} unflagged")
                break
            await asyncio.sleep(0.5)
        if self.tally is not None:  # let the subscriber take what the broker still holds for it
            await asyncio.sleep(1.0)
        self.fig.drain_s = time.monotonic() - t0
        code = await asyncio.to_thread(gw.terminate, 60.0)
        if code != 0:
            raise AssertionError(f"SIGTERM: gateway exited {code}: {gw.log_tail()}")

    def _read_state(self) -> tuple[list[tuple[str, str]], list[str], int]:
        engine = self.workdir / "outbox.sqlite3"  # [pipeline] state_in_store: one database
        with contextlib.closing(sqlite3.connect(f"file:{engine}?mode=ro", uri=True)) as c:
            decisions = [(str(a), str(b)) for a, b in c.execute("SELECT message_id, action FROM decisions ORDER BY seq")]
            stored = [str(r[0]) for r in c.execute("SELECT message_id FROM messages")]
        outbox = self.workdir / "outbox.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)) as c:
            dead = int(c.execute("SELECT count(*) FROM outbox WHERE state = 'dead'").fetchone()[0])
        return decisions, stored, dead

    # -------------------------------------------------------------- run

    async def run(self) -> Figures:
        t0 = time.monotonic()
        background: list[asyncio.Task[Any]] = []
        self._start_broker()
        try:
            if self.broker is not None:
                self.tally = MqttTally(self.broker.port)
                background.append(asyncio.create_task(self.tally.run()))
                await asyncio.wait_for(self.tally.ready.wait(), 20)
            await self.receiver.start()
            self.gw = GatewayProcess(self._config(), 0)
            self.gw.admin_port = int(_admin_port(self.gw.config))
            self.gw.start()
            await self.gw.wait_ready(timeout=120.0)
            background.append(asyncio.create_task(self._monitor()))
            background.append(asyncio.create_task(self._reporter()))
            done = asyncio.Event()
            faults = asyncio.create_task(self._faults(done))
            try:
                await self._dispatch()
            finally:
                done.set()
                await faults
            self.progress(f"all {len(self.acked):,} messages acknowledged; clean restart and drain")
            await self._drain()
        finally:
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            gw = self.gw
            if gw is not None and gw.proc is not None and gw.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(gw.proc.pid, signal.SIGCONT)
                gw.kill()
            await self.receiver.stop()
            if self.broker is not None:
                await asyncio.to_thread(self.broker.stop)
        decisions, stored, dead = await asyncio.to_thread(self._read_state)
        fig = reconcile(self.plan.messages, self.acked, decisions, stored, self.receiver.receipts, figures=self.fig)
        fig.dead_letters = dead
        if self.tally is not None:
            forwards = {mid for mid, a in _finals(decisions).items() if a == "forward"}
            fig.mqtt_published = len(forwards & set(self.tally.received))
            fig.mqtt_missing = len(forwards - set(self.tally.received))
            fig.mqtt_duplicates = sum(c - 1 for c in self.tally.received.values())
        fig.wall_s = time.monotonic() - t0
        return fig


def _finals(decisions: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for mid, action in decisions:
        if action in FINAL_ACTIONS:
            out[mid] = FINAL_ACTIONS[action]
    return out


def _admin_port(config: Path) -> int:
    import tomllib

    return int(tomllib.loads(config.read_text(encoding="utf-8"))["admin"]["port"])


def run_soak(
    workdir: Path,
    *,
    messages: int,
    kills: int,
    seed: int,
    concurrency: int = 8,
    mqtt: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[Figures, SoakPlan]:
    """Build the traffic, run the soak, reconcile; returns the figures (and the plan, for checks)."""
    say = progress or (lambda _s: None)
    t0 = time.monotonic()
    plan = build_plan(workdir / "reference", messages, seed)
    say(f"built {len(plan.messages):,} signed messages ({dict(plan.groups)}) in {time.monotonic() - t0:.1f} s")
    faults = plan_faults(len(plan.messages), kills, seed)
    soak = Soak(plan, faults, workdir / "run", seed=seed, concurrency=concurrency, mqtt=mqtt, progress=say)
    figures = asyncio.run(soak.run()) if _no_loop() else None
    if figures is None:
        raise RuntimeError("run_soak must be called outside an event loop (use Soak.run inside one)")
    return figures, plan


def _no_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def dump(figures: Figures, path: Path, **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**figures.as_dict(), **extra}, indent=2, default=str) + "\n", encoding="utf-8")
