"""The DSP-facing ingress in worker processes: :class:`IngressPool` (``[server] ingress_processes``).

Theory of operation
===================

The gateway process owns everything that must exist once: the engine and its SQLite store, the
outbox and delivery, the admin listener, timers and reloads. At capacity it is bound to one core by
its interpreter lock, and a large share of that core went to work that needs none of it: the aiohttp
server receiving the DSP's POSTs, and classification (safe parse, XML signature, DUIS decode, GBCS
check), which is pure CPU. With ``ingress_processes = N`` both run in N worker processes:

* the gateway process binds the ingress socket (``server.host``, ``server.port``, ``reuse_port``)
  and never accepts on it. Each worker is ``spawn``-ed with a duplicate of it and serves the same
  :class:`gateway.service.ingress.Ingress` on it (routes, size cap, timeouts, status codes, TLS): the
  kernel hands each new connection to one worker;
* a worker classifies each message itself and sends (lane, destination, original bytes, time
  received, the classification without its parsed model and signature reports) to the gateway process, which
  decides, records and enqueues it and sends back the :class:`~gateway.service.api.AcceptResult`. The
  classified messages of one frame are queued for the engine together and answered by one future
  (:meth:`GatewayProcessor.accept_classified_many`: one task per frame, not a task, a coroutine chain and a
  future per message); each gets the answer :meth:`GatewayProcessor.accept_classified` would give it. The
  worker answers the DSP only then: a 2xx still means "durably recorded by the gateway process";
* what the ingress keeps (the bytes of a 404, 415 or 500) and counts (requests, rejects, decisions,
  decision latency) is relayed the same way: the gateway process writes the rejects (the worker waits
  for that before answering) and applies the counts to its :class:`~gateway.service.metrics.Metrics`,
  so ``/metrics`` stays one view of the whole service. Counts are added up in the worker and relayed
  once per event-loop iteration (one ``counts`` item for however many requests it answered).

Channel. One ``socketpair`` per worker carrying frames (4-byte length, then a pickled list),
non-blocking on both sides (asyncio transports: a full socket buffer never blocks either event loop).
Everything one side queues in one loop iteration travels in one frame, so under load a frame carries
a batch of requests one way and a batch of answers the other.

States of a worker (transitions in ``_TRANSITIONS``)::

    starting --ready--> serving --stop--> stopping --stopped--> stopped
    starting|serving|stopping --lost--> dead     (replaced, unless the pool is stopping)
    serving --(hang watch: SIGKILL)--> ... --lost--> dead

Failures. A worker that dies takes only its own connections down. Requests it had sent are still
decided and recorded, and the DSP's re-delivery gets the original decision (engine idempotency);
requests it had not sent were never answered 2xx, so the DSP re-delivers them. The pool starts a
replacement, at most one every ``_RESTART_DELAY`` seconds. When the gateway process dies, each
worker sees its channel close, fails what it was waiting for (503), stops listening and exits.

Poison messages and hangs. A worker classifies one message at a time, synchronously on its event loop,
so a message that crashes it (a fault in a C extension, an OOM kill) or never finishes (an endless loop
in C code, holding the loop) would otherwise kill its worker, then the replacement that gets the DSP's
re-delivery, and so on; and a worker whose loop is held was never noticed. So:

* the slot (:class:`_Slot`): each worker has a small shared-memory file (``memfd``) the pool created and
  maps too. Before classifying a message the worker copies it there (body up to ``max_body_bytes``, with
  its length, lane, user and the monotonic time it began; a body over the capacity: its SHA-256 and
  length only) and marks it held; after, it clears the mark (about 0.65 µs for a 1.6 KB AD1 whose
  classification takes ~140 µs). When a worker dies the pool reads its slot: a held message is what the
  worker was classifying;
* the hang watch (:meth:`IngressPool._watch_hangs`): the pool pings each serving worker every fifth of
  ``[server] ingress_hang_timeout`` (at most every ``_PING_EVERY_MAX`` s); the worker's event loop
  answers. A worker that has neither sent anything nor begun a classification (its slot's time) within
  the timeout of an unanswered ping is hung: killed (SIGKILL, counted ``hung``) and handled as a death.
  A classification is thus never killed before it has held the loop for the whole timeout; a backlog of
  quick ones keeps the worker alive. Found within the timeout plus two ping periods;
* strikes: a message found in a dead worker's slot is a suspect, counted by its SHA-256 (the last
  ``_DIGESTS_KEPT``). Nothing else happens the first time (a death may have nothing to do with the
  message, and the DSP re-delivers it). In the slot of a second dead worker (``_STRIKES``, as the
  classify pool's retry-once rule) it is a *poison* message: the pool keeps one rejects row for it
  (reason ``classify_worker_died``, lane and user from the slot, its bytes if the slot held them: the
  ingress's reject path, so ``duisgw audit rejects`` lists it), counts it in the rejects metric and as
  ``poison``, logs it once at ERROR and sends every worker, and every replacement before it serves,
  ``("poison", [(sha256, length), ...])`` (the last ``_DIGESTS_KEPT``; held in memory, and read back at
  start from the rejects rows it kept, which name each message's length and digest, for as long as the
  rejects' retention keeps them);
* a worker refuses a poison message unclassified: 400 ``classify_worker_died`` (as every input the
  gateway will not process is answered 400 with its reason code; a 503 would tell the DSP to re-deliver
  what can only kill workers), counted per delivery; the gateway process answers its ``keep`` with the
  row it already kept (one row per message, not per delivery). The check costs nothing while no poison
  message is known; then a lookup of the body's length, and a SHA-256 only for a body of a poison length.

A dead or killed worker's other requests are not answered: their connections drop and the DSP
re-delivers them, as for any worker death (what it had passed on is still decided). Tests make a worker
die or hang on a chosen message with a ``sitecustomize`` of their own (tests/service/poisonhook/): nothing
in this module serves them.

Stop (graceful shutdown). The pool sends ``stop``; each worker marks its ingress draining (new
requests get 503), closes its listener, waits for its in-flight requests (``server.shutdown_timeout``)
while the gateway process keeps answering them, relays its last counts, says ``stopped`` and exits.

Reload (:meth:`IngressPool.reload`: the SMKI store and the GBCS key store). The pool's spec takes the new
classifier spec (what a replacement worker builds) and each worker of an older generation is sent
``("reload", generation, material, keys)`` over its channel: off its event loop it builds the SMKI store
from those bytes and maps the key index the gateway process wrote (each only when it changed:
:func:`gateway.pipeline.reload_classifier`), swaps its classifier (one reference: a request is classified
wholly with the classifier it started with) and answers ``("reload-ok", generation)``. A worker that
finds the key index it maps corrupt says ``("event", KEY_INDEX_CORRUPT)``: the gateway process counts it
and rebuilds the index, which reaches the worker as such a reload. A worker that cannot build it, or does not answer in time, is killed and replaced from the new
spec (its unanswered requests are re-delivered by the DSP, as for any worker death).

TLS reload (:meth:`IngressPool.reload_tls`). Each worker serves its listening socket through a
:class:`~gateway.service.tls.ServerContextSwitch`. The gateway process judges the ``[server.tls]`` files
(:mod:`gateway.service.tls_reload`) and sends ``("tls", digest)``: the worker reads the same files off its
event loop, checks their digest, swaps the context in force for new handshakes (the listening socket and
the connections already open keep theirs), closes the open connections whose client certificate the new
lists revoke (:meth:`~gateway.service.tls.ServerContextSwitch.cut_revoked`: a request under way is answered
first) and answers ``("tls-ok", digest, cut)`` (how many it closed: the gateway process counts and logs them
once for the pool), or ``("tls-failed", digest, why)`` keeping the context it had (it is not replaced). A
worker still starting is sent the reload too (it applies it once it listens). A worker started later (a
replacement) does not read the files: the pool keeps the bytes of the material in force (read at start, and
again by a reload the gateway process accepted, checked against its digest) and spawns it with them
(:func:`~gateway.service.tls.server_context_from`), so a file an operator left unusable, or a list the
gateway process refused, never stops a replacement from starting nor puts unjudged material in force.

Clock. With ``clock = "message"`` a message without the ``X-DUISGW-Arrival`` header takes the engine
clock as its arrival, which only the gateway process knows: a worker sends such a message
unclassified, and the gateway process classifies it (:meth:`GatewayProcessor.accept`). So is every
message when the processor classifies nothing itself (``mode = "passthrough"``): the worker then
runs the HTTP side only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import gc
import hashlib
import itertools
import logging
import mmap
import multiprocessing
import os
import re
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from multiprocessing import reduction
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol, cast

from aiohttp import web

from gateway.errors import DuisgwError
from gateway.gbcs_keys import IndexedKeyStore, KeyStoreRef
from gateway.pipeline import (
    KEY_INDEX_CORRUPT,
    TLS_OVERTAKEN_CUT,
    Classified,
    Classifier,
    ClassifierSpec,
    message_time,
    reload_classifier,
)
from gateway.service.api import AcceptResult, Lane, Processor, StoreUnavailable
from gateway.service.channel import Channel, open_channel
from gateway.service.config import ServerConfig, ServiceConfig
from gateway.service.ingress import Ingress, IngressRunner
from gateway.service.logs import configure_logging
from gateway.service.metrics import Metrics
from gateway.service.outbox import RejectStore
from gateway.service.processor import arrival_context, current_arrival
from gateway.service.tls import (
    ServerContextSwitch,
    read_material,
    resumed_session_middleware,
    server_context,
    server_context_from,
)
from gateway.service.tls_reload import prepare_as
from gateway.service.workers import join_processes
from gateway.smki import SmkiMaterial

__all__ = [
    "ClassifiedProcessor",
    "IngressPool",
    "IngressSpec",
    "IngressUnavailable",
    "PoisonMessage",
    "RemoteFailure",
    "RemoteRejected",
    "ingress_worker_main",
    "listening_socket",
]

log = logging.getLogger("duisgw.ingress")

_RESTART_DELAY = 1.0  # seconds between the start of a replacement worker and the next
_COUNTS = frozenset({"count_request", "count_reject", "count_accepted"})  # relayed sums (_RelayCounts)
_STRIKES = 2  # deaths of workers holding one message in their slot that make it a poison message
_DIGESTS_KEPT = 1024  # suspect digests, and poison digests, kept (the oldest forgotten first)
#: how a poison message's rejects row names its length and digest (:func:`_poison_id`), read back at start
_KEPT_POISON = re.compile(r"\((\d+) bytes, sha256 ([0-9a-f]{64})\)")


def _poison_id(length: int, digest: bytes) -> str:
    """The part of a poison message's rejects detail that :data:`_KEPT_POISON` reads back."""
    return f"({length} bytes, sha256 {digest.hex()})"
_PING_EVERY_MAX = 5.0  # seconds: the hang watch pings at most this far apart (ingress_hang_timeout / 5)

_TRANSITIONS: dict[tuple[str, str], str] = {
    ("starting", "ready"): "serving",
    ("serving", "stop"): "stopping",
    ("stopping", "stopped"): "stopped",
    ("starting", "lost"): "dead",
    ("serving", "lost"): "dead",
    ("stopping", "lost"): "dead",
    ("stopped", "lost"): "stopped",
}


# ------------------------------------------------------------------------------------------ errors


class IngressUnavailable(StoreUnavailable):
    """The gateway process cannot answer an ingress worker now (it is gone, or stopping): 503."""

    code = "gateway_unavailable"


class RemoteUnavailable(StoreUnavailable):
    """The gateway process answered "unavailable" with its own reason code: 503 with that code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteRejected(DuisgwError):
    """The gateway process refused the message with a named error: 400 with that code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteFailure(RuntimeError):
    """The gateway process failed on the message (a bug): the ingress keeps the bytes, 500."""


def _remote_error(kind: str, code: str, message: str) -> Exception:
    if kind == "unavailable":
        return RemoteUnavailable(code, message)
    if kind == "rejected":
        return RemoteRejected(code, message)
    return RemoteFailure(message)


class PoisonMessage(DuisgwError):
    """The message was in the slot of two ingress workers that died (or hung) while classifying it: a worker
    refuses it unclassified (400, like any input the gateway will not process; module docstring)."""

    code = "classify_worker_died"


# ------------------------------------------------------------------------------------------ the slot


#: state (1 byte) at 0; at 8: the monotonic time the classification started (kept after it ends: the hang
#: watch's evidence of progress), the body's length, its lane and its user (a Pascal string); then the
#: digest (a body over the slot's capacity) and the body
_SLOT_INFO = struct.Struct("<dIB255p")
_SLOT_INFO_AT = 8
_SLOT_DIGEST_AT = _SLOT_INFO_AT + _SLOT_INFO.size
_SLOT_BODY_AT = (_SLOT_DIGEST_AT + 32 + 63) // 64 * 64
_EMPTY, _HELD, _DIGEST_ONLY = 0, 1, 2
_LANES = (Lane.INLINE, Lane.OBSERVE)


@dataclass(frozen=True, slots=True)
class _Held:
    """What a dead worker's slot held: the message it was classifying."""

    digest: bytes  # SHA-256 of the body
    length: int
    lane: str
    user: str | None
    body: bytes | None  # None: over the slot's capacity (its digest and length only)


@dataclass(slots=True)
class _Poison:
    """A poison message the pool knows: its length (the workers' pre-filter) and its rejects row."""

    length: int
    #: the row kept for it (its bytes when the slot held them): later copies refused add none
    row: asyncio.Future[int | None]


class _Slot:
    """Shared memory (one ``memfd``/temporary file mapped by the pool and by one worker) in which a worker
    records the message it is classifying, and clears it after: when the worker dies, the pool reads what
    killed it. One per worker (a worker classifies one message at a time, on its event loop). Pickled
    for the worker's spawn as a duplicate of its file descriptor."""

    def __init__(self, fd: int, capacity: int, *, owner: bool) -> None:
        self.capacity = capacity
        self.size = _SLOT_BODY_AT + capacity
        if owner:
            os.ftruncate(fd, self.size)
        self._fd = fd if owner else -1  # the pool's descriptor, kept until the worker is spawned
        self._mm = mmap.mmap(fd, self.size)
        if not owner:
            os.close(fd)

    @classmethod
    def create(cls, capacity: int) -> _Slot:
        """A new slot in the pool (a memory file where the platform has them)."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("duisgw-ingress-slot", os.MFD_CLOEXEC)
        else:  # pragma: no cover - Linux has memfd_create
            with tempfile.TemporaryFile() as f:
                fd = os.dup(f.fileno())
        try:
            return cls(fd, capacity, owner=True)
        except BaseException:
            os.close(fd)
            raise

    def __reduce__(self) -> tuple[Any, ...]:  # (only while the pool spawns its worker: DupFd passes the fd)
        return (_attach_slot, (reduction.DupFd(self._fd), self.capacity))

    def spawned(self) -> None:
        """The worker holds its own descriptor now: the pool keeps the mapping only."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self.spawned()
        with contextlib.suppress(BufferError, ValueError):
            self._mm.close()

    # the worker's side (the hot path: a copy of the body and two header writes, then one byte to clear)

    def hold(self, lane: Lane, user: str | None, body: bytes) -> None:
        mm = self._mm
        n = len(body)
        if n <= self.capacity:
            mm[_SLOT_BODY_AT : _SLOT_BODY_AT + n] = body
            state = _HELD
        else:
            mm[_SLOT_DIGEST_AT : _SLOT_DIGEST_AT + 32] = hashlib.sha256(body).digest()
            state = _DIGEST_ONLY
        who = user.encode("utf-8", "replace") if user else b""
        _SLOT_INFO.pack_into(mm, _SLOT_INFO_AT, time.monotonic(), n, lane is Lane.OBSERVE, who)
        mm[0] = state  # last: a worker killed before this line was not classifying it yet

    def clear(self) -> None:
        self._mm[0] = _EMPTY

    # the pool's side

    def started(self) -> float:
        """When (``time.monotonic``, the same clock in every process) the worker last began a classification."""
        started: float = _SLOT_INFO.unpack_from(self._mm, _SLOT_INFO_AT)[0]
        return started

    def take(self) -> _Held | None:
        """What the (dead) worker was classifying, if anything."""
        mm = self._mm
        state = mm[0]
        if state not in (_HELD, _DIGEST_ONLY):
            return None
        _started, n, observe, who = _SLOT_INFO.unpack_from(mm, _SLOT_INFO_AT)
        user = who.decode("utf-8", "replace") or None
        lane = _LANES[1 if observe else 0].value
        if state == _HELD and n <= self.capacity:
            body = mm[_SLOT_BODY_AT : _SLOT_BODY_AT + n]
            return _Held(hashlib.sha256(body).digest(), n, lane, user, body)
        return _Held(bytes(mm[_SLOT_DIGEST_AT : _SLOT_DIGEST_AT + 32]), n, lane, user, None)


def _attach_slot(fd: Any, capacity: int) -> _Slot:
    """In the worker: map the slot the pool made (``fd``: the duplicate spawn passed)."""
    return _Slot(int(fd.detach()), capacity, owner=False)


# ------------------------------------------------------------------------------------------ channel


# ------------------------------------------------------------------------------------------ worker side


@dataclass(frozen=True)
class IngressSpec:
    """What an ingress worker needs (paths and options only: cheap to pickle)."""

    config: ServiceConfig
    #: the classifier each worker builds; ``None``: the worker only runs the HTTP side
    classifier: ClassifierSpec | None = None
    base_dir: Path | None = None
    #: aiohttp middlewares around each request (module-level functions: pickled by name)
    middlewares: tuple[Any, ...] = ()


class _Link:
    """The worker's side of the channel: remote calls (awaited) and one-way counts."""

    def __init__(self) -> None:
        self.channel: Channel | None = None
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.stop_requested = asyncio.Event()
        self.lost = False
        #: what to do with ``("reload", generation, material, keys)`` (set once the worker's processor exists)
        self.on_reload: Callable[[str, SmkiMaterial | None, KeyStoreRef | None], None] | None = None
        self._early_reload: list[tuple[str, SmkiMaterial | None, KeyStoreRef | None]] = []
        #: what to do with ``("tls", digest)`` (set once the worker's listener exists)
        self.on_tls: Callable[[str], None] | None = None
        self._early_tls: list[str] = []
        #: the poison messages (``("poison", [(sha256, length), ...])``: refused unclassified): their
        #: lengths, a pre-filter (empty: no digest is computed), and their digests
        self.poison_lengths: frozenset[int] = frozenset()
        self.poison: frozenset[bytes] = frozenset()

    def call(self, tag: str, *args: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.lost or self.channel is None:
            fut.set_exception(IngressUnavailable("the gateway process is gone"))
            return fut
        seq = next(self._seq)
        self._pending[seq] = fut
        self.channel.send((tag, seq, *args))
        return fut

    def notify(self, *item: Any) -> None:
        if self.channel is not None:
            self.channel.send(item)

    def on_items(self, items: list[Any]) -> None:
        for item in items:
            tag = item[0]
            if tag == "ok" or tag == "err":
                fut = self._pending.pop(item[1], None)
                if fut is None or fut.done():
                    continue
                if tag == "ok":
                    fut.set_result(item[2])
                else:
                    fut.set_exception(_remote_error(item[2], item[3], item[4]))
            elif tag == "ping":  # the hang watch: answered by this event loop, so only while it turns
                self.notify("pong")
            elif tag == "poison":
                self.poison = frozenset(digest for digest, _n in item[1])
                self.poison_lengths = frozenset(n for _digest, n in item[1])
            elif tag == "stop":
                self.stop_requested.set()
            elif tag == "reload":
                if self.on_reload is None:
                    self._early_reload.append((item[1], item[2], item[3]))
                else:
                    self.on_reload(item[1], item[2], item[3])
            elif tag == "tls":
                if self.on_tls is None:
                    self._early_tls.append(item[1])
                else:
                    self.on_tls(item[1])

    def handle_reload(self, handler: Callable[[str, SmkiMaterial | None, KeyStoreRef | None], None]) -> None:
        """Set the reload handler (and give it what came before it was set)."""
        self.on_reload = handler
        early, self._early_reload = self._early_reload, []
        for generation, material, keys in early:
            handler(generation, material, keys)

    def handle_tls(self, handler: Callable[[str], None]) -> None:
        """Set the TLS reload handler (and give it what came before it was set)."""
        self.on_tls = handler
        early, self._early_tls = self._early_tls, []
        for digest in early:
            handler(digest)

    def on_lost(self) -> None:
        self.lost = True
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(IngressUnavailable("the gateway process is gone"))
        self.stop_requested.set()


def _wire(c: Classified) -> Classified:
    """What the gateway process needs of a classification: :func:`~gateway.pipeline.portable` without
    the signature reports and device ids, which only the classifying side reads (the outcome stays in
    ``problems`` and in each event's ``verified``). Unpickling it costs 13 µs instead of 22 for an AD1."""
    return Classified(
        lane=c.lane,
        arrival=c.arrival,
        message_id=c.message_id,
        kind=c.kind,
        events=c.events,
        rejection=c.rejection,
        problems=c.problems,
        event_time=c.event_time,
        doc_time=message_time(c),
    )


class _RemoteProcessor:
    """The ingress worker's :class:`~gateway.service.api.Processor`: classify here, decide there."""

    def __init__(self, link: _Link, classifier: Classifier | None, clock: str, slot: _Slot) -> None:
        self.link = link
        self.classifier = classifier
        self.clock = clock
        self.slot = slot

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        lengths = self.link.poison_lengths
        if lengths and len(body) in lengths:  # (no poison message known: nothing computed)
            digest = hashlib.sha256(body).digest()
            if digest in self.link.poison:
                raise PoisonMessage(
                    f"this message was being classified by {_STRIKES} ingress workers that died or hung: "
                    f"refused unclassified (sha256 {digest.hex()})"
                )
        header_time = current_arrival() if self.clock == "message" else None
        c: Classified | None = None
        if self.classifier is not None and (self.clock == "wall" or header_time is not None):
            arrival = received_at if header_time is None else header_time
            slot = self.slot
            slot.hold(lane, user, body)  # what the pool reads if this worker dies or hangs classifying it
            try:
                c = _wire(self.classifier.classify(lane.value, body, arrival))
            finally:
                slot.clear()
        result: AcceptResult = await self.link.call(
            "accept", lane.value, user, body, received_at, header_time, c
        )
        return result

    async def tick(self, now: datetime) -> None:
        """Timers run in the gateway process."""
        return None


class _RemoteRejects:
    """The ingress worker's reject store: the gateway process writes them (awaited)."""

    def __init__(self, link: _Link) -> None:
        self.link = link

    async def record(
        self,
        *,
        lane: str,
        user: str | None,
        reason: str,
        detail: str | None,
        body: bytes,
        received_at: datetime,
    ) -> int:
        rowid: int = await self.link.call("keep", lane, user, reason, detail, body, received_at)
        return rowid


class _RelayCounts:
    """The ingress worker's counts, applied to the gateway process's metrics: added up here and relayed
    as one ``counts`` item per event-loop iteration (so under load one item covers a frame's requests,
    instead of three items per request). Decision latencies travel as they are, each one observed."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self._counts: dict[tuple[str, tuple[Any, ...]], int] = {}
        self._latencies: list[tuple[str, float]] = []
        self._due = False

    def count_request(self, lane: str, status: int) -> None:
        self._add("count_request", (lane, status))

    def count_reject(self, lane: str, reason: str) -> None:
        self._add("count_reject", (lane, reason))

    def count_accepted(self, lane: str, kind: str, decision: str, reason: str) -> None:
        self._add("count_accepted", (lane, kind, decision, reason))

    def observe_decision(self, lane: str, seconds: float) -> None:
        self._latencies.append((lane, seconds))
        self._soon()

    def _add(self, name: str, args: tuple[Any, ...]) -> None:
        key = (name, args)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._soon()

    def _soon(self) -> None:
        if not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(self.relay)

    def relay(self) -> None:
        """Send what was counted since the last relay (also called before the worker says ``stopped``)."""
        self._due = False
        if self._counts or self._latencies:
            counts, self._counts = self._counts, {}
            latencies, self._latencies = self._latencies, []
            self.link.notify("counts", counts, latencies)


def ingress_worker_main(
    spec: IngressSpec,
    listener: socket.socket,
    channel: socket.socket,
    slot: _Slot,
    tls: dict[str, bytes] | None = None,
) -> None:
    """An ingress worker process: serve the ingress on ``listener`` until told to stop or the gateway
    process goes away. Signals are the gateway process's to handle (it stops the workers itself).
    ``slot``: where it records the message it is classifying (the pool reads it if this process dies);
    ``tls``: the bytes of the ``[server.tls]`` files in force (:attr:`IngressPool.tls_material`), which it
    serves instead of what the files hold now (``None``: read the files)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    configure_logging(spec.config.logging)
    asyncio.run(_serve_worker(spec, listener, channel, slot, tls))


async def _serve_worker(
    spec: IngressSpec,
    listener: socket.socket,
    channel_sock: socket.socket,
    slot: _Slot,
    tls: dict[str, bytes] | None = None,
) -> None:
    cfg = spec.config
    link = _Link()
    link.channel = await open_channel(channel_sock, link.on_items, link.on_lost)
    try:
        classifier = spec.classifier.build() if spec.classifier is not None else None
        ssl_ctx = (
            server_context_from(cfg.server.tls, tls)
            if tls is not None
            else server_context(cfg.server.tls, base_dir=spec.base_dir)
        )
    except Exception as exc:
        link.notify("failed", f"{type(exc).__name__}: {exc}"[:500])
        link.channel.close()
        return
    gc.collect()  # the classifier's certificates and keys live as long as the process
    gc.freeze()
    counts = _RelayCounts(link)
    processor = _RemoteProcessor(link, classifier, cfg.clock, slot)
    _watch_keystore(link, classifier)
    reloads: set[asyncio.Task[None]] = set()

    holds = {"smki": "", "keys": ""}
    if spec.classifier is not None:
        smki, keys = spec.classifier.smki, spec.classifier.keys
        holds = {"smki": smki.digest if smki else "", "keys": keys.generation if keys else ""}

    def on_reload(generation: str, material: SmkiMaterial | None, keys: KeyStoreRef | None) -> None:
        task = asyncio.get_running_loop().create_task(
            _reload_reference(link, processor, generation, material, keys, holds)
        )
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    link.handle_reload(on_reload)
    switch = (
        ServerContextSwitch(ssl_ctx, on_overtaken=lambda: link.notify("event", TLS_OVERTAKEN_CUT))
        if ssl_ctx is not None
        else None
    )
    ingress = Ingress(cfg, processor, _RemoteRejects(link), counts)
    # the resumed-session check only with mutual TLS (client certificates): otherwise it has nothing to check
    mutual = bool(cfg.server.tls.cert_file and cfg.server.tls.client_ca_file)
    middlewares = [*([resumed_session_middleware(lambda: switch)] if mutual else []), *spec.middlewares]
    app = web.Application(client_max_size=cfg.server.max_body_bytes, middlewares=middlewares)
    ingress.add_routes(app)
    runner = IngressRunner(  # (answers what aiohttp's parser refuses as the ingress does)
        app,
        ingress,
        access_log=None,
        shutdown_timeout=cfg.server.shutdown_timeout,
        keepalive_timeout=cfg.server.keepalive_timeout,
    )
    await runner.setup()

    def on_tls(digest: str) -> None:
        task = asyncio.get_running_loop().create_task(_reload_tls(link, spec, switch, runner, digest))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    link.handle_tls(on_tls)  # (once the runner exists: a reload closes its revoked clients' connections)
    listener.setblocking(False)
    await web.SockSite(runner, listener, ssl_context=switch.listening if switch is not None else None).start()
    link.notify("ready", os.getpid())
    await link.stop_requested.wait()
    ingress.draining = True
    await runner.cleanup()  # stop listening, wait for in-flight requests (answered while the link is up)
    if not link.lost:
        counts.relay()  # the last counts, before "stopped"
        link.notify("stopped")
        link.channel.close()


def _watch_keystore(link: _Link, classifier: Classifier | None) -> None:
    """Tell the gateway process (``("event", KEY_INDEX_CORRUPT)``) when this worker finds the GBCS key index
    it maps corrupt: the gateway process counts it and rebuilds the index (its classifier runs on this
    event loop; a finding in another thread is handed over to it)."""
    keystore = classifier.gbcs.keystore if classifier is not None else None
    if not isinstance(keystore, IndexedKeyStore):
        return
    loop = asyncio.get_running_loop()

    def found(_why: str) -> None:
        loop.call_soon_threadsafe(link.notify, "event", KEY_INDEX_CORRUPT)

    keystore.watch_corrupt(found)


async def _reload_tls(
    link: _Link, spec: IngressSpec, switch: ServerContextSwitch | None, runner: web.AppRunner, digest: str
) -> None:
    """Build the ``[server.tls]`` context from the files in a thread, check they are those the gateway
    process judged, put it in force for new handshakes and close the open connections whose client
    certificate its lists revoke (:meth:`~gateway.service.tls.ServerContextSwitch.cut_revoked`), saying how
    many; say why not when it cannot."""
    try:
        if switch is None:
            raise ValueError("this worker serves plain HTTP: no TLS context to reload")
        now = dt.datetime.now(dt.UTC)
        prepared = await asyncio.get_running_loop().run_in_executor(
            None, prepare_as, "server", spec.config.server.tls, spec.base_dir, digest, now
        )
        if prepared.refused is not None or prepared.context is None:
            raise ValueError(prepared.refused or "no context built")
        switch.swap(prepared.context, prepared.resumed)
        server = runner.server
        cut = switch.cut_revoked(server, spec.config.server.shutdown_timeout) if server is not None else 0
    except Exception as exc:
        link.notify("tls-failed", digest, f"{type(exc).__name__}: {exc}"[:500])
        return
    link.notify("tls-ok", digest, cut)


async def _reload_reference(
    link: _Link,
    processor: _RemoteProcessor,
    generation: str,
    material: SmkiMaterial | None,
    keys: KeyStoreRef | None,
    holds: dict[str, str],
) -> None:
    """Build the SMKI store from ``material`` and open the GBCS key store of ``keys`` (what changed) in a
    thread, then swap the worker's classifier (one reference assignment on the event loop, between two
    requests) and say so; say why not when it cannot be built."""
    try:
        if processor.classifier is not None:
            was = processor.classifier
            held = dict(holds)
            new = await asyncio.get_running_loop().run_in_executor(
                None, reload_classifier, was, material, keys, held
            )
            processor.classifier = new
            holds.update(held)
            if new.gbcs.keystore is not was.gbcs.keystore:
                _watch_keystore(link, new)
    except Exception as exc:
        link.notify("reload-failed", generation, f"{type(exc).__name__}: {exc}"[:500])
        return
    link.notify("reload-ok", generation)


# ------------------------------------------------------------------------------------------ gateway side


class ClassifiedProcessor(Processor, Protocol):
    """A processor that also takes messages an ingress worker has classified."""

    async def accept_classified(
        self, lane: Lane, user: str | None, body: bytes, received_at: datetime, c: Classified
    ) -> AcceptResult: ...

    async def accept_classified_many(
        self, reqs: Sequence[tuple[Lane, str | None, bytes, datetime, Classified]]
    ) -> list[AcceptResult | BaseException]:
        """:meth:`accept_classified` for several messages: each one's result or exception, in order."""
        ...

    def key_index_corrupt(self) -> None:
        """An ingress worker found the GBCS key index it maps corrupt (count it; the gateway rebuilds it)."""


def listening_socket(server: ServerConfig, backlog: int = 1024) -> socket.socket:
    """The ingress socket, bound and listening (``SO_REUSEPORT`` with ``reuse_port``)."""
    infos = socket.getaddrinfo(
        server.host or None, server.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if server.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Worker:
    __slots__ = (
        "channel", "done", "generation", "heard", "hung", "pid", "ping_at", "proc", "ready", "reloaded", "slot",
        "state", "tls_reloaded",
    )  # fmt: skip

    def __init__(
        self,
        proc: BaseProcess,
        ready: asyncio.Future[None],
        done: asyncio.Future[None],
        generation: str,
        slot: _Slot,
    ) -> None:
        self.proc = proc
        self.slot = slot  # what it is classifying (read when it dies)
        self.heard = time.monotonic()  # when its last frame arrived (the hang watch)
        self.ping_at = 0.0  # when the hang watch sent the ping not yet answered (0: none)
        self.hung = False  # killed by the hang watch
        self.pid = proc.pid or 0
        self.ready = ready
        self.done = done  # set when the worker has stopped or is gone
        self.channel: Channel | None = None
        self.state = "starting"
        self.generation = generation  # the reference data (spec generation) its classifier was built from
        self.reloaded: asyncio.Future[bool] | None = None  # a reload waiting for this worker
        #: a TLS reload waiting: (why it failed or None, connections it cut)
        self.tls_reloaded: asyncio.Future[tuple[str | None, int]] | None = None

    def move(self, event: str) -> None:
        self.state = _TRANSITIONS[(self.state, event)]


class IngressPool:
    """The ingress in ``processes`` worker processes, fed by one listening socket (module docstring)."""

    def __init__(
        self,
        spec: IngressSpec,
        processes: int,
        processor: Processor,
        rejects: RejectStore,
        metrics: Metrics,
        *,
        mp_context: str = "spawn",
        start_timeout: float = 120.0,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        if mp_context == "fork":
            raise ValueError("never fork the gateway process (it has threads): use spawn or forkserver")
        if spec.classifier is not None and not hasattr(processor, "accept_classified"):
            raise ValueError("workers that classify need a processor with accept_classified")
        self.spec = spec
        self.processes = processes
        self.processor = processor
        self.rejects = rejects
        self.metrics = metrics
        self.start_timeout = start_timeout
        self._ctx: Any = multiprocessing.get_context(mp_context)
        self._listener: socket.socket | None = None
        self._workers: list[_Worker] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._restarts: set[asyncio.Task[None]] = set()
        self._last_restart = 0.0
        self._stopping = False
        self.restarts = 0  # workers started to replace dead ones (observability, tests)
        self.classified = 0  # messages a worker classified
        self.unclassified = 0  # messages a worker sent for this process to classify
        self.frames = 0  # batches received from the workers
        self.served: dict[int, int] = {}  # messages per worker pid
        #: the reference data the workers are to hold (the classifier spec's generation: :meth:`reload`)
        self.generation = spec.classifier.generation if spec.classifier is not None else ""
        self.reloads = 0  # workers that rebuilt their SMKI store or reopened their GBCS key store
        #: messages found in the slot of a dead (or hung) worker: strikes by SHA-256 (the last _DIGESTS_KEPT)
        self._suspects: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        #: poison messages (_STRIKES strikes): refused by the workers unclassified (the last _DIGESTS_KEPT)
        self._poison: collections.OrderedDict[bytes, _Poison] = collections.OrderedDict()
        self._watch: asyncio.Task[None] | None = None
        #: the bytes of the ``[server.tls]`` files in force, by option (read at start, replaced by an accepted
        #: :meth:`reload_tls`): what a worker started later serves, whatever the files hold by then (a refused
        #: reload leaves them as the operator wrote them); ``None``: plain HTTP, or no memory files here
        self.tls_material: dict[str, bytes] | None = None

    @property
    def pids(self) -> list[int]:
        """The process ids of the serving workers."""
        return [w.pid for w in self._workers if w.state == "serving"]

    @property
    def live(self) -> int:
        """How many workers are serving."""
        return sum(1 for w in self._workers if w.state == "serving")

    # ------------------------------------------------------------------ lifecycle

    async def start(self, listener: socket.socket) -> None:
        """Start the workers on ``listener``; return when each serves (else :class:`IngressUnavailable`)."""
        self._listener = listener
        tls = self.spec.config.server.tls
        if tls.cert_file and hasattr(os, "memfd_create"):
            self.tls_material = read_material(tls, base_dir=self.spec.base_dir)[1]
        await self._remember_poison()
        results = await asyncio.gather(
            *(self._spawn() for _ in range(self.processes)), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop(timeout=5.0)
            raise IngressUnavailable(f"ingress workers could not be started: {failed[0]}") from failed[0]
        self._watch = asyncio.get_running_loop().create_task(self._watch_hangs(), name="duisgw-ingress-watch")
        log.info("ingress workers serving", extra={"processes": self.processes, "pids": self.pids})

    async def _spawn(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        slot = _Slot.create(self.spec.config.server.max_body_bytes)
        proc = self._ctx.Process(
            target=ingress_worker_main,
            args=(self.spec, self._listener, child, slot, self.tls_material),
            name="duisgw-ingress",
            daemon=True,
        )
        try:
            proc.start()
        except BaseException:
            slot.close()
            raise
        finally:
            child.close()
            slot.spawned()
        w = _Worker(proc, loop.create_future(), loop.create_future(), self.generation, slot)
        self._workers.append(w)
        w.channel = await open_channel(parent, lambda items: self._on_items(w, items), lambda: self._lost(w))
        if self._poison:  # before it serves: it refuses them from its first request on
            w.channel.send(("poison", self._poison_list()))
        try:
            await asyncio.wait_for(asyncio.shield(w.ready), self.start_timeout)
        except BaseException:
            self._kill(w)
            raise

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the workers gracefully (each drains its in-flight requests), then join them."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        for t in list(self._restarts):
            t.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)
        wait = timeout if timeout is not None else self.spec.config.server.shutdown_timeout + 10.0
        for w in self._workers:
            if w.state == "serving" and w.channel is not None:
                w.move("stop")
                w.channel.send(("stop",))
            elif w.state == "starting":
                self._kill(w)
        pending = [w.done for w in self._workers if not w.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=wait)
        workers, self._workers = self._workers, []
        for w in workers:
            if w.channel is not None:
                w.channel.close()
        await join_processes([w.proc for w in workers])
        for w in workers:
            w.slot.close()
        if self._tasks:  # requests of workers that went away: still decided and recorded
            await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("ingress workers stopped", extra={"processes": len(workers)})

    async def reload(self, classifier: ClassifierSpec, timeout: float = 60.0) -> dict[str, int]:
        """Make every worker classify with the reference data of ``classifier`` (its SMKI material and GBCS
        key store: module docstring): returns once each serving worker has swapped them in (``reloaded``) or
        was replaced (``replaced``)."""
        if self.spec.classifier is None:
            return {"reloaded": 0, "replaced": 0}  # the workers classify nothing
        self.spec = replace(self.spec, classifier=classifier)
        self.generation = classifier.generation
        material, keys = classifier.smki, classifier.keys
        loop = asyncio.get_running_loop()
        waiting: dict[_Worker, asyncio.Future[bool]] = {}
        for w in self._workers:
            if w.state not in ("starting", "serving") or w.generation == self.generation or w.channel is None:
                continue
            w.reloaded = loop.create_future()
            waiting[w] = w.reloaded
            w.channel.send(("reload", self.generation, material, keys))
        if waiting:
            _done, late = await asyncio.wait(waiting.values(), timeout=timeout)
            for w, fut in waiting.items():
                if fut in late:
                    log.error("ingress worker did not reload its reference data in time: replacing it",
                              extra={"pid": w.pid, "timeout": timeout})  # fmt: skip
                    self._kill(w)
            if late:
                await asyncio.wait(late, timeout=10.0)
        reloaded = sum(1 for f in waiting.values() if f.done() and not f.cancelled() and f.result())
        return {"reloaded": reloaded, "replaced": len(waiting) - reloaded}

    async def reload_tls(self, digest: str, timeout: float = 60.0) -> dict[str, Any]:
        """Make every worker, serving or starting, put the ``[server.tls]`` material of ``digest`` in force
        (module docstring), and have the workers started from now on serve it: ``reloaded`` and ``failed``
        counts, ``errors`` (why, per worker pid) and ``cut`` (the open connections of revoked clients the
        workers closed)."""
        loop = asyncio.get_running_loop()
        if self.tls_material is not None:
            tls = self.spec.config.server.tls
            try:
                read, files = await loop.run_in_executor(
                    None, lambda: read_material(tls, base_dir=self.spec.base_dir)
                )
            except OSError:
                read, files = "", {}
            if read == digest:  # (else the files changed again: the workers refuse them too)
                self.tls_material = files
        waiting: dict[_Worker, asyncio.Future[tuple[str | None, int]]] = {}
        for w in self._workers:
            # (a starting worker was spawned with the material in force before: it applies this once it listens)
            if w.state not in ("starting", "serving") or w.channel is None:
                continue
            w.tls_reloaded = loop.create_future()
            waiting[w] = w.tls_reloaded
            w.channel.send(("tls", digest))
        errors: dict[str, str] = {}
        cut = 0
        if waiting:
            await asyncio.wait(waiting.values(), timeout=timeout)
        for w, fut in waiting.items():
            w.tls_reloaded = None
            if not fut.done():
                errors[str(w.pid)] = f"no answer within {timeout:g} s"
                continue
            why, closed = fut.result()
            cut += closed
            if why is not None:
                errors[str(w.pid)] = why
        return {"reloaded": len(waiting) - len(errors), "failed": len(errors), "errors": errors, "cut": cut}

    # ------------------------------------------------------------------ the channel

    def _on_items(self, w: _Worker, items: list[Any]) -> None:
        self.frames += 1
        w.heard = time.monotonic()  # (its event loop turns: the hang watch's evidence, with its slot's)
        classified: list[Any] = []  # the frame's classified accepts: decided together (_accept_many)
        for item in items:
            tag = item[0]
            if tag == "counts":
                self._apply_counts(item[1], item[2])
            elif tag == "event":
                if item[1] == KEY_INDEX_CORRUPT and self.spec.classifier is not None:
                    cast(ClassifiedProcessor, self.processor).key_index_corrupt()
                elif item[1] == TLS_OVERTAKEN_CUT:
                    self.metrics.tls_connections_cut.labels("server").inc()
            elif tag == "accept":
                self.served[w.pid] = self.served.get(w.pid, 0) + 1
                if item[-1] is None:
                    self.unclassified += 1
                    self._task(self._accept(w, *item[1:]))
                else:
                    self.classified += 1
                    classified.append(item)
            elif tag == "keep":
                self._task(self._keep(w, *item[1:]))
            elif tag == "ready":
                w.pid = int(item[1])
                w.move("ready")
                if not w.ready.done():
                    w.ready.set_result(None)
            elif tag == "failed":
                if not w.ready.done():
                    w.ready.set_exception(IngressUnavailable(f"ingress worker failed to start: {item[1]}"))
            elif tag == "stopped":
                w.move("stopped")
                if not w.done.done():
                    w.done.set_result(None)
            elif tag == "reload-ok":
                w.generation = str(item[1])
                self.reloads += 1
                if w.reloaded is not None and not w.reloaded.done() and w.generation == self.generation:
                    w.reloaded.set_result(True)
            elif tag in ("tls-ok", "tls-failed"):
                if w.tls_reloaded is not None and not w.tls_reloaded.done():
                    w.tls_reloaded.set_result((None, int(item[2])) if tag == "tls-ok" else (str(item[2]), 0))
            elif tag == "reload-failed":
                log.error("ingress worker could not build the reloaded reference data: replacing it",
                          extra={"pid": w.pid, "error": str(item[2])})  # fmt: skip
                self._kill(w)  # its replacement builds from the new spec
        if classified:
            if hasattr(self.processor, "accept_classified_many"):
                self._task(self._accept_many(w, classified))
            else:
                for item in classified:
                    self._task(self._accept(w, *item[1:]))

    def _apply_counts(
        self, counts: dict[tuple[str, tuple[Any, ...]], int], latencies: list[tuple[str, float]]
    ) -> None:
        metrics = self.metrics
        for (name, args), n in counts.items():
            if name in _COUNTS:
                getattr(metrics, name)(*args, n=n)
        for lane, seconds in latencies:
            metrics.observe_decision(lane, seconds)

    def _task(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reply(self, w: _Worker, item: tuple[Any, ...]) -> None:
        if w.channel is not None:
            w.channel.send(item)

    async def _accept(
        self,
        w: _Worker,
        seq: int,
        lane: str,
        user: str | None,
        body: bytes,
        received_at: datetime,
        header_time: datetime | None,
        c: Classified | None,
    ) -> None:
        async def decide() -> AcceptResult:
            if c is None:
                with arrival_context(header_time):
                    return await self.processor.accept(Lane(lane), user, body, received_at)
            proc = cast(ClassifiedProcessor, self.processor)
            return await proc.accept_classified(Lane(lane), user, body, received_at, c)

        await self._answer(w, seq, decide(), "processor failed", lane)

    async def _accept_many(self, w: _Worker, items: list[Any]) -> None:
        """The classified accepts of one frame, queued for the engine together and answered each by its
        own outcome (as :meth:`_answer` answers one). One task per frame, not per message."""
        proc = cast(ClassifiedProcessor, self.processor)
        reqs = [(Lane(item[2]), item[3], item[4], item[5], item[7]) for item in items]
        try:
            results = await proc.accept_classified_many(reqs)
        except Exception as exc:  # pragma: no cover - accept_classified_many answers per message
            results = [exc] * len(items)
        for item, result in zip(items, results, strict=True):
            if isinstance(result, BaseException):
                self._reply(w, self._error(w, item[1], result, "processor failed", item[2]))
            else:
                self._reply(w, ("ok", item[1], result))

    def _error(self, w: _Worker, seq: int, exc: BaseException, failure: str, lane: str) -> tuple[Any, ...]:
        """A call's error as the worker's ingress turns it into a status: 503 (unavailable), 400 (a named
        error) or 500 (anything else: logged here)."""
        if isinstance(exc, StoreUnavailable):
            return ("err", seq, "unavailable", exc.code, exc.message)
        if isinstance(exc, DuisgwError):
            return ("err", seq, "rejected", exc.code, exc.message)
        log.error(failure, extra={"lane": lane, "worker": w.pid}, exc_info=exc)
        return ("err", seq, "failed", "internal_error", f"{type(exc).__name__}: {exc}"[:500])

    async def _keep(
        self,
        w: _Worker,
        seq: int,
        lane: str,
        user: str | None,
        reason: str,
        detail: str | None,
        body: bytes,
        received_at: datetime,
    ) -> None:
        if reason == PoisonMessage.code:  # a copy of a poison message a worker refused: one row per message
            known = self._poison.get(hashlib.sha256(body).digest())
            if known is not None and (row := await known.row) is not None:
                self._reply(w, ("ok", seq, row))
                return
        kept = self.rejects.record(
            lane=lane, user=user, reason=reason, detail=detail, body=body, received_at=received_at
        )
        await self._answer(w, seq, kept, "could not keep rejected bytes", lane)

    async def _answer(self, w: _Worker, seq: int, work: Awaitable[Any], failure: str, lane: str) -> None:
        """Run one call of a worker's and send back its value, or its error by kind (the worker's
        ingress turns them into 503, 400 and 500 as for a call in its own process)."""
        try:
            self._reply(w, ("ok", seq, await work))
        except Exception as exc:
            self._reply(w, self._error(w, seq, exc, failure, lane))

    # ------------------------------------------------------------------ failures

    def _kill(self, w: _Worker) -> None:
        if w.channel is not None:
            w.channel.close()
        if w.proc.is_alive():
            w.proc.kill()

    def _lost(self, w: _Worker) -> None:
        was = w.state
        w.move("lost")
        w.ping_at = 0.0
        if w.tls_reloaded is not None and not w.tls_reloaded.done():
            w.tls_reloaded.set_result(
                ("the worker exited (its replacement starts with the material in force)", 0)
            )
        if w.reloaded is not None and not w.reloaded.done():
            w.reloaded.set_result(False)  # replaced: its successor builds from the new spec
        if not w.ready.done():
            w.ready.set_exception(IngressUnavailable("the ingress worker exited while starting"))
        if not w.done.done():
            w.done.set_result(None)
        if was in ("stopping", "stopped") or self._stopping:
            return
        if w in self._workers:
            self._workers.remove(w)
        with contextlib.suppress(Exception):
            w.proc.join(0.1)
        held = w.slot.take()  # (the process is gone: what it was classifying stays as it left it)
        w.slot.close()
        if was == "starting":
            return  # reported by _spawn
        self.metrics.ingress_worker_events.labels("worker-died").inc()
        strikes = self._strike(held) if held is not None else 0
        log.error("ingress worker hung and was killed: starting another" if w.hung
                  else "ingress worker process died: starting another",
                  extra={"pid": w.pid, "exitcode": w.proc.exitcode, "restarts": self.restarts + 1,
                         "suspect": held.digest.hex() if held is not None else None,
                         "strikes": strikes})  # fmt: skip
        if held is not None and strikes == _STRIKES:
            self._poisoned(held)
        self.restarts += 1
        task = asyncio.get_running_loop().create_task(self._restart(), name="duisgw-ingress-restart")
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    # ------------------------------------------------------------------ poison messages, hangs

    def _strike(self, held: _Held) -> int:
        """One more death with ``held`` in the dead worker's slot: its strikes. A message already poison (a
        copy that reached a worker before the news did) gets more than :data:`_STRIKES`: the workers are told
        again, and it is not kept or counted again."""
        if held.digest in self._poison:
            self._tell_poison()
            return _STRIKES + 1
        strikes = self._suspects.pop(held.digest, 0) + 1
        if strikes < _STRIKES:
            self._suspects[held.digest] = strikes
            while len(self._suspects) > _DIGESTS_KEPT:
                self._suspects.popitem(last=False)
        return strikes

    def _poisoned(self, held: _Held) -> None:
        """``held`` was in the slot of :data:`_STRIKES` dead workers: a poison message. Keep it (one rejects
        row, with its bytes when the slot held them), count it, log it once and tell every worker."""
        row: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._poison[held.digest] = _Poison(held.length, row)
        while len(self._poison) > _DIGESTS_KEPT:
            self._poison.popitem(last=False)
        self.metrics.ingress_worker_events.labels("poison").inc()
        self.metrics.count_reject(held.lane, PoisonMessage.code)
        log.error("a message was being classified by %d ingress workers that died or hung: its later deliveries "
                  "are refused unclassified (400 %s)", _STRIKES, PoisonMessage.code,
                  extra={"lane": held.lane, "user": held.user, "bytes": held.length,
                         "sha256": held.digest.hex()})  # fmt: skip
        self._tell_poison()
        self._task(self._keep_poison(held, row))

    async def _keep_poison(self, held: _Held, row: asyncio.Future[int | None]) -> None:
        detail = (
            f"{_STRIKES} ingress workers died or hung classifying this message "
            f"{_poison_id(held.length, held.digest)}; its later deliveries are refused unclassified"
            + ("" if held.body is not None else "; over the slot's capacity: bytes not kept")
        )
        try:
            rowid: int | None = await self.rejects.record(
                lane=held.lane,
                user=held.user,
                reason=PoisonMessage.code,
                detail=detail,
                body=held.body if held.body is not None else b"",
                received_at=dt.datetime.now(dt.UTC),
            )
        except Exception as exc:  # a later copy refused keeps its own row then
            log.error("could not keep the bytes of a poison message: %s", exc,
                      extra={"lane": held.lane, "sha256": held.digest.hex()})  # fmt: skip
            rowid = None
        row.set_result(rowid)

    async def _remember_poison(self) -> None:
        """The poison messages of earlier runs, from their rejects rows (kept for the rejects' retention): the
        workers refuse them from their first request on, and a refused copy adds no row. A row of another path
        with the same reason (a classify worker's, the MQTT lane's) names no length and digest: not one."""
        try:
            rows = await self.rejects.details(PoisonMessage.code, _DIGESTS_KEPT)
        except Exception as exc:  # (the store down at start: the rule starts empty, as it did before)
            log.warning("cannot read the poison messages of earlier runs: %s", exc)
            return
        loop = asyncio.get_running_loop()
        for rowid, detail in rows:
            if (m := _KEPT_POISON.search(detail)) is None:
                continue
            row: asyncio.Future[int | None] = loop.create_future()
            row.set_result(rowid)
            self._poison[bytes.fromhex(m[2])] = _Poison(int(m[1]), row)
        if self._poison:
            log.info("ingress workers refuse %d poison message(s) kept by earlier runs", len(self._poison))

    def _poison_list(self) -> list[tuple[bytes, int]]:
        return [(digest, p.length) for digest, p in self._poison.items()]

    def _tell_poison(self) -> None:
        """Send every worker the poison messages (all of them: a worker replaces what it had)."""
        item = ("poison", self._poison_list())
        for w in self._workers:
            if w.state in ("starting", "serving") and w.channel is not None:
                w.channel.send(item)

    async def _watch_hangs(self) -> None:
        """Ping each serving worker; kill one that has neither answered a ping (any frame counts) nor begun a
        classification within ``[server] ingress_hang_timeout`` of it: its event loop is held (a classification
        that never ends). Its death is then handled as any other (its slot read, a replacement started)."""
        timeout = self.spec.config.server.ingress_hang_timeout
        every = min(max(timeout / 5, 0.01), _PING_EVERY_MAX)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for w in self._workers:
                if w.state != "serving" or w.channel is None or w.hung:
                    continue
                if w.ping_at and max(w.heard, w.slot.started()) < w.ping_at:  # not answered, no progress
                    if now - w.ping_at >= timeout:
                        self._hung(w, now - w.ping_at)
                    continue
                w.ping_at = now
                w.channel.send(("ping",))

    def _hung(self, w: _Worker, silent: float) -> None:
        w.hung = True
        self.metrics.ingress_worker_events.labels("hung").inc()
        log.error("ingress worker hung: killing it",
                  extra={"pid": w.pid, "silent_seconds": round(silent, 3),
                         "timeout": self.spec.config.server.ingress_hang_timeout})  # fmt: skip
        if w.proc.is_alive():
            w.proc.kill()  # EOF on its channel once it is gone: _lost reads its slot and replaces it

    async def _restart(self) -> None:
        delay = self._last_restart + _RESTART_DELAY - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._last_restart = time.monotonic()
        try:
            await self._spawn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("ingress worker could not be started", extra={"error": f"{type(exc).__name__}: {exc}"})
            if not self._stopping:
                self.metrics.ingress_worker_events.labels("start-failed").inc()
                task = asyncio.get_running_loop().create_task(self._restart(), name="duisgw-ingress-restart")
                self._restarts.add(task)
                task.add_done_callback(self._restarts.discard)
