"""Engine state shared by several gateway instances through Redis (``[state] backend = "redis"``).

Theory of operation
===================

The engine stays the pure :class:`gateway.engine.engine.Engine`. What changes is where its state
lives: instead of one engine holding every record in memory, each message is decided by a
*transient* engine built for that message from the records it can touch, and the records it
changed are written back atomically with an optimistic compare-and-set. Any instance can take
any message; a killed instance loses nothing that was committed.

Partitions (what is keyed by what)
----------------------------------
The engine's decisions only ever look at the state of a few ESMEs and Comms Hubs:

- ``E(esme)`` — one Redis hash per ESME, ``{prefix}e:{<ESME hex>}``: its activations
  (``a:<key>``), the held messages that name it (``h:<message id>``), the suppressed AD1s that
  name it (``s:<message id>``), its unverified evidence (``u:<message id>``) and a version ``v``.
- ``C(ch)`` — one hash per Comms Hub, ``{prefix}c:{<CH hex>}``: the suppressed AD1s of that CH
  (a restoration alert pairs by ESME or by CH), a reference to each held AD1 of that CH (``o:<message
  id>``: the ESMEs whose ``E`` holds its record; a restoration of any ESME behind the hub waits for it)
  and a version ``v``.

An event's *partition set*: an AD1 → ``E`` of every ESME the inventory puts behind its CH or
MPAN, and ``C(ch)``; a restoration alert → ``E(esme)`` and ``C`` of the ESME's CH; activation
evidence (11.3 request/response, 8F66/8F67) and inventory observations and removals → ``E(esme)`` (a
Comms Hub decommissioned or removed: also ``E`` of every ESME behind it); anything else → none.
Because a held message can be released by whatever touches one of its ESMEs (and releasing it can
release others), the set is closed over every held message found in it: the
partitions of the held message's own event are added until nothing changes (a fixpoint); a held AD1
referenced by a loaded ``C(ch)`` adds ``E`` of the ESMEs the reference names. A reference whose record is
not in those partitions (its hold was released by an instance of a version that did not write references)
is ignored and removed by the commit.

Per message (:meth:`RedisState.decide`):

1. **Load** (one MULTI/EXEC snapshot): the message's idempotency key (and the key of the id its bytes may have
   been decided under instead, :func:`same_bytes_id`: see "The same bytes under their other id" below), the
   shared gateway clock, new learned inventory links, the state's epoch and the learned list's generation and
   length (see "Losing the shared state"), and every partition hash of the set (records and versions).
2. **Decide**: ``Engine.restore`` from those records, ``Tick(shared clock)`` (releases holds
   whose deadline the shared clock already passed and prunes records past retention, exactly as
   the single-node engine would have done when its clock passed them), then ``handle(event)``.
3. **Commit** (one Lua script, atomic): if the state's epoch is not the one loaded (the state was lost
   since the load) the commit is refused before anything is written and loaded again; if the
   idempotency key exists the message is a duplicate (another instance won: its stored decision is
   returned); if any partition's version changed (or the other id's key, when one was loaded)
   since the load the commit is refused and steps 1–3 are retried; otherwise every
   ``StateChange`` is written, the versions of the written partitions are bumped, the idempotency
   key is set (``SET NX`` semantics, inside the script), decisions are appended to the shared
   decision log, each suppression is added to its UTC day's shared suppression index (once per life of
   the message; :mod:`gateway.store.shared_audit`), and the shared clock moves to ``max(clock, new)`` (never
   past Redis time + ``max_clock_ahead``: see "Time" below). A
   transaction that paired a restoration alert with a suppressed AD1 whose operator-release marker of the
   life paired with exists (``{prefix}operator-release-life:<µs>:<id>``, µs the time of that life's
   suppression decision, ``SuppressedOutage.decided_at``: ``duisgw audit release`` took it; the releasing
   instance has not taken the release in, so the AD1's record is still in the partitions) is refused before
   anything is written, and decided again at once with that AD1 marked released in the view (``not-paired``,
   as after the take-in). The message id's marker (``{prefix}operator-release:<id>``) refuses it only when a
   version before lives wrote it (no ``life`` field) at or after that life's suppression (:func:`_paired_lives`,
   :func:`_legacy_refusal`): a release of an earlier life of the message id does not unpair a later one. The
   marker is taken before the release records anything, so a commit after it sees it, and a release whose
   marker came after the commit finds the pairing in the shared suppression index (written by that commit) and in
   the paired AD1's *pairing index* (``{prefix}paired:<AD1 id>``: each restoration suppressed as paired with it, with
   the life paired with, written by the same commit; what ``duisgw audit release`` reads, :data:`_COMMIT`'s
   ``setnx`` op marks the time the index began, ``{prefix}paired-index-since``: lives before it are searched in the
   day index, :mod:`gateway.store.shared_audit`).

The same bytes under their other id
----------------------------------
A message whose XML signature did not verify is decided under ``<identity>#unverified:<digest of its bytes>``,
so the same bytes have two ids when their signature verified at one delivery and not at another (a revocation
list past its ``nextUpdate`` at one arrival only, an SMKI reload between them). The single-node engine answers the
second as the duplicate of the first (``Engine._same_bytes``, docs/ENGINE.md §8); here the transaction's engine
holds no idempotency key, so the transaction does it: the load also reads the key of the other id
(:func:`same_bytes_id`: a marked id's *signed twin*; a verified — or otherwise unmarked — inline message's marked
id), and :meth:`RedisState._same_bytes_duplicate` answers the duplicate of it by the engine's rules (the twin's key
kept with this event's digest; the marked id's key an inline message's forward — a quarantine is not —; within
retention by the gateway clock), committing nothing, as for a duplicate of the message's own id. Otherwise the
decision's commit checks that key is still as loaded (a negative index among the checks of ``_COMMIT``): two
instances deciding the two ids at once commit one decision, the other's commit is refused and its next load
answers the duplicate. A verified observation loads no other key (it is evidence as on its own); an event without
a digest neither.

Compare-and-set over every partition read gives serialisable decisions: each committed decision
saw exactly the state the single-node engine would have shown it in the same commit order. Events
with disjoint partition sets never conflict (an AD1 on one CH and an activation on another ESME
proceed in parallel on any instances); only the shared clock is not versioned — it is monotonic
(``max``) and only stamps ``decided_at``, hold deadlines and retention.

Holds, time-outs and released messages
--------------------------------------
A hold writes its record into every ``E`` it names, into ``{prefix}hm:<id>``, the message's
original bytes into ``{prefix}raw:<id>``, its DNO destination and DUIS kind (when the ingress gave
them: :meth:`RedisState.decide`'s ``route``) into ``{prefix}route:<id>`` and ``{prefix}route-kind:<id>``
and the id into the sorted set ``{prefix}held`` scored by deadline — all in the hold's one commit, so no
instance sees a hold without its route. The route keys have no time to live while the message is held;
the release's commit gives them one (retention + 1 h: the releasing instance reads them after it). :meth:`RedisState.tick` (every instance, every tick) moves the shared clock and
releases the holds whose deadline passed, each in the same load/decide/commit transaction as
above — the commit's version check makes the release exclusive, so whichever instance ticks
first wins and a killed instance's holds are released by another.

A released message is decided by an instance that may never have seen it: the release decision,
the held event and the original bytes stay in Redis (``{prefix}rel:<id>``, sorted set
``{prefix}released`` scored by commit time) until the deciding instance has recorded them in its
own SQLite store and outbox (:meth:`RedisState.ack_releases`). If it dies first, another
instance takes the entry over after ``lease`` seconds of Redis time (:meth:`RedisState.take_over_releases`):
releases are decided once and delivered at least once. Each due hold and each release to take over is
handled on its own: one whose record this version cannot decode (a newer version's, e.g. a reason code
added since) is skipped — logged and counted once, remembered so that it is not retried at every tick,
listed in the hash ``{prefix}unreadable`` for an operator — and left where it is, so that an instance that
can decode it releases it (its commit, or the release's acknowledgement, removes the listing); it stops
neither the other holds nor the take-overs. A release so skipped keeps its lease: the claim that found it
unreadable puts its score back (``_UNCLAIM``), so an instance that can decode it takes it over at its next
tick, and it is remembered for as long as it exists (``rel:<id>``), not only while its lease is run out.

Inventory links learned from traffic are appended to ``{prefix}learned``; every load brings an
instance's inventory up to date before the partition set is computed. Each link is ordered by the
time of its evidence (not by its place in the list), so every instance ends with the newest. A hub's
end (:class:`gateway.engine.state.HubEnd`: ``ch`` and ``time``, no ``esme``) is a row of the same list,
kept per hub by every instance; an instance's inventory learns a transaction's links and hub ends only
after its commit succeeded. A row is written only when the ESME's learned state changed (a repeated 8.2
writes none). The list stays bounded: once it is longer than ``compact_min`` (10,000) rows and twice what
its last compaction left, one instance (lock ``{prefix}learned-compacting``; every instance that found it
due reads its length and generation again under the lock, and leaves it once another compacted it) rewrites
it as one row per ESME and one per hub end (:class:`_LearnedFold`: what applying every row leaves, in the
order ``Engine.restore`` applies a single node's rows), keeping the rows appended meanwhile behind them in the
same atomic swap (``_COMPACT_SWAP``), and moves its generation ``{prefix}learned-gen`` to ``G+1:n:m`` (rows
0..n-1 became m rows): an instance that had read the n rows carries its offset over; any other reads the
list again. The start-up reads the whole list (in pages of ``_LEARNED_PAGE`` rows, folded then applied) before the
instance decides anything; while it runs, an instance never applies more than a page of rows at once on its engine
loop: a load reads at most ``learned_page`` rows past its offset (:data:`_LOAD_PAGE`) and stops applying them once
it spent ``learned_budget`` (:data:`_LOAD_BUDGET`), a tick applies pages for about ``catch_up_budget``
(:meth:`RedisState._catch_up`), and a list to read again from 0 (a loss, a compaction of rows it had not all read) is
read the same way. Until it has applied every row to the list's end the instance *lags* (:attr:`RedisState.lagging`,
:attr:`_Snapshot.lagging`): an AD1 its links would suppress or hold is forwarded instead (:meth:`RedisState._attempt`:
rows it has not read may move a meter off the AD1's hub), and it compacts nothing. An idle instance catches up
faster: :class:`gateway.store.shared.SharedEngine` runs a thread that applies the list in slices while its engine
loop decides nothing (:meth:`aside_position`, :meth:`aside_read`, :meth:`aside_apply`); the ticks leave the catch-up
to it meanwhile (:attr:`catching_up_aside`).

Losing the shared state
-----------------------
Redis restarted without persistence, a failover to a replica without the state, the keys deleted: the
instances run on against an empty (or older) state. Each state has an epoch, ``{prefix}epoch``, a random
token set (if absent) by the first instance to start on it; every load reads it with the learned list's
generation and length (``_LOAD``), every tick too (:meth:`RedisState.check_shared`), and every commit
checks it (``{'epoch'}``: refused before anything is written). An epoch gone → a new one (``_ADOPT_EPOCH``:
the first instance to see it sets it, the others adopt it); changed → adopted; the learned list shorter
than what this instance read of it, or the commit count ``{prefix}commits`` (moved on by every commit) lower
than it read, under the same epoch (a restart from an older RDB snapshot, a replica that lags) → a new
epoch, so that every instance notices. Each instance then counts the loss once (:attr:`RedisState.lost`,
``duisgw_shared_state_lost_total``), logs it at ERROR, reads the learned list again from 0 (links merge by
the time of their evidence: what it knew stays, what was learned since is applied), and, at its next tick,
publishes back the links and hub ends it holds that the new list does not have (:meth:`RedisState.republish_learned`:
one instance at a time, what the list lacks by the merge rule; the ESMEs and hubs it applied or committed are
tracked for it, :class:`_Ids`; holding many, from a thread with its own loop and connection, so that the engine
loop goes on deciding: :meth:`RedisState._republish_step`). From the moment it notices the loss until every row
is appended it *owes* the list its links (``{prefix}learned-owed:<epoch>``, :data:`_OWE`, a lease in Redis time):
every load reads the count, and while it is not 0 an instance that did not read the state before the loss (it
knows only the new list) does not suppress or hold an AD1 on its links — decided with no ESME joined through the
AD1's hub or MPAN, forwarded, counted and logged (:meth:`RedisState._attempt`) — and no instance compacts the list.
Then, before anything is released, writes back the activation records it recorded
(:meth:`RedisState.restore_activations`: a version only over none or over one whose evidence it includes) and
holds again the holds it recorded (:class:`gateway.store.shared.SharedEngine`, :meth:`RedisState.restore_hold`),
each with its original deadline. Decisions are not refused meanwhile (docs/SCALE-OUT.md, *Losing the shared
state*, says why and what stays lost).

Retention runs on the gateway clock, as on a single node
--------------------------------------------------------
Duplicates: the idempotency key ``{prefix}seen:<id>`` (the engine's ``Seen`` record, with the
latest decision) counts until the gateway clock passes its retention (``at + retention <= clock``,
the engine's pruning rule): a message whose key is past it is decided afresh (the commit refuses
when the key changed since it was read: racing instances decide it once), and every tick sweeps the
keys past it (the sorted set ``{prefix}seen-expiry``, scored by that time, re-scored when the key is
rewritten). Partition records are pruned by the engine at every load, by the same clock. The
wall-clock TTLs (``2 × retention + 1 day`` for keys and partitions) are only a memory safety net for
idle state: a partition holding a held message has none (it is released when the gateway clock passes
its deadline, however late in wall time), and one with a future-dated activation keeps it until the
activation's retention after its execution time.

Time: host clocks against Redis time
------------------------------------
The shared clock never goes back, so whoever moves it moves it for every instance. With ``clock = "wall"``
the instances move it with their host clocks (ticks, and the arrivals they stamp), so every move is held
against Redis ``TIME``, read inside the scripts (``RedisStateConfig.max_clock_ahead``, 5 s): a tick whose
time is further ahead moves the clock to Redis time instead (``_TICK``); a message's arrival that far
ahead is taken at Redis time before the decision (from the skew measured at this instance's last tick)
and, whatever the estimate, a commit that would move the clock further is refused before anything is
written (``{'skew', Redis time}``) and decided again at Redis time. Only the arrival is touched — the
message's own times, which every window test uses, are the sender's. The skew (host minus Redis, at each
tick) and the times a host clock was not taken are kept for the metrics, with a rate-limited warning.
``clock = "message"`` (``max_clock_ahead = None``): the clock is the messages' time, bounded by nothing.
Release leases are Redis time whatever the mode: the releasing commit scores ``{prefix}released`` with
Redis time (op ``znow``) and the tick and claim scripts compare it with Redis time, so no two hosts' clocks
are ever compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import socket
import threading
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis

from gateway.engine.activation import ActEvent, Activation, ActState, apply, expires_at, format_key
from gateway.engine.config import EngineConfig
from gateway.engine.effects import (
    Action,
    Decision,
    Duplicate,
    Effect,
    Reason,
    StateChange,
    Table,
    paired_outages,
)
from gateway.engine.engine import Engine
from gateway.engine.errors import EngineStateError, StoreError
from gateway.engine.events import (
    CANCELLATION_SENTINEL,
    DEVICE_REMOVED,
    HUB_DECOMMISSIONED,
    UNSIGNED_MARK,
    ActivationRequested,
    ActivationResponse,
    Event,
    FutureDatedOutcome,
    InlineEvent,
    InventoryObserved,
    InventoryUnlinked,
    MessageEvent,
    PowerOutage,
    SupplyRestored,
    Tick,
    signed_twin,
    unsigned_id,
)
from gateway.engine.ports import InventoryView, ScopeView
from gateway.engine.records import decode_tagged, encode_tagged, from_record, to_record
from gateway.engine.state import (
    RELEASED_NOTE,
    ClockRecord,
    HeldMessage,
    HubEnd,
    LearnedLink,
    Seen,
    SuppressedOutage,
    UnverifiedEvidence,
    after_hub_end,
    hub_end_fact,
    merge_learned,
)
from gateway.inventory import InventoryRegistry

__all__ = [
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "MAX_CLOCK_AHEAD",
    "RedisState",
    "RedisStateConfig",
    "Released",
    "TxResult",
    "partition_keys",
    "redis_client",
    "same_bytes_id",
]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(value: datetime) -> int:
    """Microseconds since the epoch (exact: an int, compared in Lua as a double < 2^53)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(value: int) -> datetime:
    from datetime import timedelta

    return _EPOCH + timedelta(microseconds=value)


_log = logging.getLogger("duisgw.shared")

#: ``clock = "wall"``: seconds a host's clock may be ahead of Redis time and still move the shared gateway
#: clock (hosts kept in step by NTP are milliseconds apart; beyond it Redis time is taken in its place)
MAX_CLOCK_AHEAD = 5.0

#: a suppression decision's fields kept in the shared suppression index (what the export's CSV needs)
_INDEX_FIELDS = ("message_id", "event_kind", "action", "reason", "decided_at", "event_time", "ch", "mpan",
                 "esmes")  # fmt: skip


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redacted_url(url: str) -> str:
    """``url`` with the password of its user information, and the value of a ``password`` query parameter
    (redis-py reads one), replaced by ``***`` (for messages and logs)."""
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{slash}{tail}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _aware(value: datetime) -> datetime:
    """``value`` with a time zone (a naive one is UTC, as the engine reads it)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _release_marker(value: object) -> dict[str, Any]:
    """An operator release marker's (or done flag's) JSON text as a mapping (one that is not JSON: ``{"raw": text}``)."""
    try:
        data = json.loads(_text(value))
    except ValueError:
        return {"raw": _text(value)}
    return data if isinstance(data, dict) else {"raw": _text(value)}


def _legacy_release_of(marker: dict[str, Any], life: datetime) -> bool:
    """Whether a marker (or done flag) kept by message id is a release of the life suppressed at ``life``: one
    written by a version before lives (no ``life`` field; one with it only mirrors a life's marker, for the
    decision commits) that was made at or after that suppression. Its time unreadable: taken as this life's (a
    second release refused, a restoration not paired: never a release lost)."""
    if "life" in marker:
        return False
    try:
        at = datetime.fromisoformat(str(marker.get("decided_at")).replace("Z", "+00:00"))
    except ValueError:
        return True
    return _aware(at) >= _aware(life)


@dataclass(frozen=True)
class RedisStateConfig:
    """How an instance reaches the shared state.

    ``url``: a redis-py URL (``redis://host:port/db``, ``rediss://`` for TLS, ``unix://``);
    ``prefix``: every key starts with it (several gateways can share one Redis);
    ``instance``: this instance's name in the decision log and release leases (default host:pid);
    ``lease``: seconds after which another instance takes over a release its decider did not record;
    ``decision_log``: approximate length of the shared decision log stream (0 = no log);
    ``max_retries``: compare-and-set attempts before a message fails (then the sender retries);
    ``replicas`` / ``wait_timeout``: after each batch, ``WAIT`` until that many replicas have it
    (0 = don't wait; see docs/SCALE-OUT.md on Sentinel failover);
    ``export_days``: days the shared suppression index (``duisgw audit export``) keeps a day after its last
    write (0 = no index);
    ``max_clock_ahead``: ``clock = "wall"``: seconds this host's clock may be ahead of Redis ``TIME`` when
    it moves the shared gateway clock (a tick, a message's arrival); beyond it the host's time is not taken
    (Redis time is, and the skew is counted and logged). ``None``: no bound (``clock = "message"``: the
    gateway clock is the messages' own time, not a host's)."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "duisgw:"
    instance: str = ""
    lease: float = 30.0
    decision_log: int = 1_000_000
    max_retries: int = 200
    replicas: int = 0
    wait_timeout: float = 1.0
    export_days: int = 92
    max_clock_ahead: float | None = MAX_CLOCK_AHEAD

    def instance_name(self) -> str:
        return self.instance or f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------------------------------ Lua

#: idempotency keys swept per script call (one Redis script holds the server ~1 ms per 1,000 keys)
_SWEEP_LIMIT = 1000
#: sweep calls per tick and instance at most: up to ``_SWEEP_LIMIT * _SWEEP_ROUNDS`` keys a tick, far above
#: any sustained message rate of one tick interval (a backlog beyond is caught up over the next ticks). With
#: one call a tick, more than 1,000 messages a tick (every instance reads the same oldest keys) left the
#: ``seen-expiry`` index growing for as long as the rate lasted: the keys themselves have a wall-clock safety
#: TTL, their index entries none
_SWEEP_ROUNDS = 16

#: the learned list is read in pages of this many rows (a few ms of Redis time each: one instance reading a long
#: list never blocks the others for long)
_LEARNED_PAGE = 10_000
#: a load (and a tick's catch-up) applies at most this many learned rows on the engine loop, and stops earlier once it
#: spent :data:`_LOAD_BUDGET` (20-50 us a row on the real ``Inventory``, measured on a shared 2-core VM); an instance with more unread rows is *lagging* and catches up page by page
#: (:meth:`RedisState._catch_up`): meanwhile an AD1 is not suppressed or held on its links (:meth:`RedisState._attempt`)
_LOAD_PAGE = 1_000
#: a load stops applying learned rows after about this long (seconds) even within its page (a slow or busy host)
_LOAD_BUDGET = 0.025
#: a tick's catch-up of a lagging instance applies pages of learned rows for about this long (seconds) at most
_CATCH_UP_BUDGET = 0.04
#: the learned list is compacted once it is longer than this and than twice what its last compaction left
_COMPACT_MIN = 10_000
#: the compaction's lock lives this long (ms) at most: an instance killed while compacting is no obstacle
_COMPACT_LOCK_MS = 120_000
#: after a loss, an instance holding more learned ESMEs and hubs than this publishes them back from a thread of
#: its own, not inside a tick (~12 us each: 2,000 take ~25 ms; 100,000 took 1.2 s of the engine loop)
_REPUBLISH_INLINE_MAX = 2_000
#: a learned list longer than this is compacted by a thread of its own, not inside a tick (1.9 s per 100,000 rows)
_COMPACT_INLINE_MAX = 20_000

#: seconds a call to the shared state waits for Redis to answer (each command; ``WAIT`` for replicas adds its own
#: ``wait_timeout``), and to connect: a Redis alive but not answering (SIGSTOPped, its host frozen, packets dropped
#: without a reset) fails a call then, like a Redis that is down. Set on every client the instances make
#: (:func:`redis_client`), not left to redis-py's default: none before redis-py 8.0 (every call, and a graceful stop,
#: waited for good), 5 s since. ``?socket_timeout=`` / ``?socket_connect_timeout=`` in ``[state] redis_url`` replace
#: them (URL options win)
COMMAND_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0


def redis_client(url: str, wait_timeout: float = 0.0) -> aioredis.Redis:
    """An asyncio client of the shared state at ``url`` whose calls are bounded (:data:`COMMAND_TIMEOUT`, plus
    ``wait_timeout``: the longest a ``WAIT`` for replicas may block on the server)."""
    return aioredis.Redis.from_url(url, socket_timeout=COMMAND_TIMEOUT + max(0.0, wait_timeout),
                                   socket_connect_timeout=CONNECT_TIMEOUT)  # fmt: skip


#: what decoding a record another version wrote may raise (an unknown reason code, event kind or field)
_UNREADABLE = (EngineStateError, ValueError, KeyError, TypeError)

#: Commit: KEYS = every key the transaction reads or writes. ARGV = seen index (0: none), clock
#: index, new clock (µs, "" = none; ``µs/ahead``: refused, ``{'skew', Redis time µs}``, before anything is written
#: when it would move the clock past Redis ``TIME`` + ``ahead`` µs), held-set index, the seen value the decision was taken on ("" =
#: none: any other value is a duplicate), n checks, (index, version)*n (a negative index: ``-index`` is the
#: idempotency key of the same bytes' other id, :func:`same_bytes_id`, and the value is its whole text as the decision
#: read it, "" = none: any other refuses the commit as a conflict, so the two ids decided at once decide once), n
#: release markers, (index of the life's
#: marker, index of the message id's marker, message id, accepted text)*n (the operator-release markers of the
#: suppressed AD1s a restoration alert of the transaction was paired with, each of the *life* paired with —
#: ``operator-release-life:<µs>:<id>``, µs the time of that life's suppression decision — and the message id's,
#: ``operator-release:<id>``: the life's marker existing refuses the commit, ``{'released', id...}``, before
#: anything is written; the message id's marker without a ``life`` field (a version before lives wrote it: the
#: release of the life suppressed at or before its time) and other than the accepted text (one the caller found
#: was an earlier life's) refuses it too, ``{'legacy', id, marker...}``, for the caller to say whose life it is;
#: one with a ``life`` field mirrors a life's marker and is not read),
#: n bumps, (index, TTL s: 0 = none)*n, then ops: ``hset i f v`` | ``hdel i f`` | ``set i v ttl`` | ``del i`` | ``expire i ttl`` |
#: ``zadd i score m`` | ``znow i m`` (scored by Redis time, ms) | ``zrem i m`` | ``rpush i v`` | ``xadd i maxlen v`` |
#: ``setnx i v`` (set if absent, no TTL: the time the pairing index began) |
#: ``sup i route route-kind id row ttl destination kind life`` (the suppression index, per life); last, the epoch
#: check (:meth:`RedisState._epoch_args`): the indexes of the epoch key and of the commit counter, and the epoch
#: the transaction loaded under — the state lost since the load (the epoch gone or changed) refuses the commit,
#: ``{'epoch'}``, before anything is written; else the counter moves on (``{prefix}commits``: a state restored
#: from an older snapshot, or a replica that lags, shows a lower count to the instances that read a higher one).
_COMMIT = r"""
local epoch_idx = tonumber(ARGV[#ARGV - 2])
if (redis.call('GET', KEYS[epoch_idx]) or '') ~= ARGV[#ARGV] then return {'epoch'} end
redis.call('INCR', KEYS[tonumber(ARGV[#ARGV - 1])])
local seen_idx = tonumber(ARGV[1])
if seen_idx > 0 then
  local v = redis.call('GET', KEYS[seen_idx])
  if v and v ~= ARGV[5] then return {'dup', v} end
end
local n = tonumber(ARGV[6])
local i = 7
for _ = 1, n do
  local ki = tonumber(ARGV[i])
  if ki > 0 then
    local cur = redis.call('HGET', KEYS[ki], 'v') or '0'
    if cur ~= ARGV[i + 1] then return {'conflict', KEYS[ki]} end
  elseif (redis.call('GET', KEYS[-ki]) or '') ~= ARGV[i + 1] then
    -- the idempotency key of the same bytes' other id, not as the decision read it ('' = none)
    return {'conflict', KEYS[-ki]}
  end
  i = i + 2
end
local nr = tonumber(ARGV[i])
i = i + 1
local released, legacy = {}, {}
for _ = 1, nr do
  -- the release marker of the paired AD1's life; else the message id's marker when a version before lives wrote
  -- it (no life: which life it released is the caller's to say, from its time) and it is not the one accepted
  if redis.call('EXISTS', KEYS[tonumber(ARGV[i])]) == 1 then
    released[#released + 1] = ARGV[i + 2]
  else
    local v = redis.call('GET', KEYS[tonumber(ARGV[i + 1])])
    if v and v ~= ARGV[i + 3] then
      local ok, m = pcall(cjson.decode, v)
      if not (ok and type(m) == 'table' and m['life'] ~= nil) then
        legacy[#legacy + 1] = ARGV[i + 2]; legacy[#legacy + 1] = v
      end
    end
  end
  i = i + 4
end
if #released > 0 then return {'released', unpack(released)} end
if #legacy > 0 then return {'legacy', unpack(legacy)} end
local cidx = tonumber(ARGV[2])
local new_clock, ahead = string.match(ARGV[3], '^(-?%d+)/?(%d*)$')
if new_clock then
  local cur = redis.call('GET', KEYS[cidx])
  local moves = (not cur) or tonumber(cur) < tonumber(new_clock)
  if moves and ahead ~= '' then
    -- clock = "wall": never moved past Redis time + the tolerance (a host whose clock is ahead)
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    if tonumber(new_clock) > now + tonumber(ahead) then return {'skew', string.format('%.0f', now)} end
  end
  if moves then redis.call('SET', KEYS[cidx], new_clock) end
end
local nb = tonumber(ARGV[i])
i = i + 1
for _ = 1, nb do
  local k = KEYS[tonumber(ARGV[i])]
  redis.call('HINCRBY', k, 'v', 1)
  local ttl = tonumber(ARGV[i + 1])
  if ttl > 0 then redis.call('EXPIRE', k, ttl) else redis.call('PERSIST', k) end
  i = i + 2
end
local last = #ARGV - 3
while i <= last do
  local op = ARGV[i]
  local k = KEYS[tonumber(ARGV[i + 1])]
  if op == 'hset' then
    redis.call('HSET', k, ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'hdel' then
    redis.call('HDEL', k, ARGV[i + 2]); i = i + 3
  elseif op == 'set' then
    local t = tonumber(ARGV[i + 3])
    if t > 0 then redis.call('SET', k, ARGV[i + 2], 'EX', t) else redis.call('SET', k, ARGV[i + 2]) end
    i = i + 4
  elseif op == 'del' then
    redis.call('DEL', k); i = i + 2
  elseif op == 'expire' then
    redis.call('EXPIRE', k, tonumber(ARGV[i + 2])); i = i + 3
  elseif op == 'zadd' then
    redis.call('ZADD', k, ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'znow' then
    -- scored by Redis time (ms): a release's lease, compared with Redis time by every instance
    local t = redis.call('TIME')
    redis.call('ZADD', k, string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)),
               ARGV[i + 2]); i = i + 3
  elseif op == 'zrem' then
    redis.call('ZREM', k, ARGV[i + 2]); i = i + 3
  elseif op == 'rpush' then
    redis.call('RPUSH', k, ARGV[i + 2]); i = i + 3
  elseif op == 'setnx' then
    redis.call('SET', k, ARGV[i + 2], 'NX'); i = i + 3
  elseif op == 'sup' then
    -- the shared suppression index of the decision's UTC day, one entry per life of a message (a message id
    -- re-delivered after its idempotency key's retention and suppressed afresh is listed again, on the day of that
    -- suppression): ARGV = hash, route, route-kind (key indexes; 0 = none), id, row, ttl, destination, kind, the
    -- life (the suppression's time, µs). Fields d:<id>, r:<id>, k:<id>; a later life of an id already listed that
    -- day: ld:<µs>:<id>, lr:<µs>:<id>, lk:<µs>:<id>
    local mid, row, ttl = ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6])
    local tag, name = '', mid
    local first = redis.call('HGET', k, 'd:' .. mid)
    if first and first ~= row then tag, name = 'l', ARGV[i + 9] .. ':' .. mid end
    if redis.call('HSETNX', k, tag .. 'd:' .. name, row) == 1 then
      local dest, kind = ARGV[i + 7], ARGV[i + 8]
      local ri, ki = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
      if dest == '' and ri > 0 then dest = redis.call('GET', KEYS[ri]) or '' end
      if kind == '' and ki > 0 then kind = redis.call('GET', KEYS[ki]) or '' end
      if dest ~= '' then redis.call('HSET', k, tag .. 'r:' .. name, dest) end
      if kind ~= '' then redis.call('HSET', k, tag .. 'k:' .. name, kind) end
    end
    redis.call('EXPIRE', k, ttl)
    i = i + 10
  elseif op == 'xadd' then
    local maxlen = tonumber(ARGV[i + 2])
    if maxlen > 0 then
      redis.call('XADD', k, 'MAXLEN', '~', maxlen, '*', 'd', ARGV[i + 3])
    end
    i = i + 4
  else
    return redis.error_reply('unknown op ' .. op)
  end
end
return {'ok', redis.call('GET', KEYS[cidx]) or '', redis.call('ZCARD', KEYS[tonumber(ARGV[4])])}
"""

#: Load (one atomic snapshot): KEYS = seen (or clock), clock, learned, epoch, learned-gen, commits, the learned
#: links owed of the epoch the instance reads under (``learned-owed:<epoch>``), partitions...;
#: ARGV = learned offset, the epoch and the learned list's generation the instance reads under ("" = none), the most
#: rows to return (a page, :data:`_LOAD_PAGE`; 0 = every row to the end), "1" when the last key is the idempotency key
#: of the same bytes' other id (:func:`same_bytes_id`: its value is returned after the partitions) else "".
#: Returns {seen, clock, new learned links, epoch, generation, list length, commit count, instances still owing
#: the list links after a loss (their lease, Redis time, not run out), HGETALL of every partition...}; no links when the epoch or the generation is not the instance's or the list is shorter than
#: its offset (the list is not the one it was reading: it reads it again, :meth:`RedisState._sync_shared`).
_LOAD = r"""
local epoch, gen = redis.call('GET', KEYS[4]) or false, redis.call('GET', KEYS[5]) or false
local n = redis.call('LLEN', KEYS[3])
local rows = {}
if epoch == ARGV[2] and (gen or '') == ARGV[3] and n >= tonumber(ARGV[1]) then
  local last = -1
  if tonumber(ARGV[4]) > 0 then last = tonumber(ARGV[1]) + tonumber(ARGV[4]) - 1 end
  rows = redis.call('LRANGE', KEYS[3], tonumber(ARGV[1]), last)
end
local owed = 0
if redis.call('EXISTS', KEYS[7]) == 1 then
  local t = redis.call('TIME')
  owed = redis.call('ZCOUNT', KEYS[7], string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)),
                    '+inf')
end
local out = {redis.call('GET', KEYS[1]) or false, redis.call('GET', KEYS[2]) or false, rows, epoch, gen, n,
             tonumber(redis.call('GET', KEYS[6]) or '0'), owed}
local parts = #KEYS
if ARGV[5] == '1' then parts = parts - 1 end
for i = 8, parts do out[i + 1] = redis.call('HGETALL', KEYS[i]) end
if ARGV[5] == '1' then out[parts + 2] = redis.call('GET', KEYS[#KEYS]) or false end
return out
"""

#: Adopt an epoch. KEYS = epoch; ARGV = the epoch the caller found stale ("" = none), a new random token. Sets
#: the token when there is no epoch or it is still the stale one (the first instance to see a loss starts
#: the new epoch; the others adopt it); returns the epoch in force.
_ADOPT_EPOCH = r"""
local cur = redis.call('GET', KEYS[1])
if (not cur) or (ARGV[1] ~= '' and cur == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2]); return ARGV[2]
end
return cur
"""

#: Compaction's swap. KEYS = learned, the compacted copy, learned-gen, epoch, the compaction lock. ARGV = the
#: generation and epoch the copy was read under, n (rows of the list it folds), m (rows of the copy), the lock's
#: owner. Unless the list changed under it (another generation or epoch, fewer than n rows): the rows appended
#: since (n..) are moved behind the copy, the copy becomes the list and the generation ``G+1:n:m``. Returns the
#: new generation, or false (nothing changed; the copy is dropped). The lock is released either way.
_COMPACT_SWAP = r"""
local ok = (redis.call('GET', KEYS[3]) or '') == ARGV[1] and (redis.call('GET', KEYS[4]) or '') == ARGV[2]
local len = redis.call('LLEN', KEYS[1])
local n = tonumber(ARGV[3])
if redis.call('GET', KEYS[5]) == ARGV[5] then redis.call('DEL', KEYS[5]) end
if (not ok) or len < n then redis.call('DEL', KEYS[2]); return false end
if len > n then
  local tail = redis.call('LRANGE', KEYS[1], n, -1)
  for j = 1, #tail, 1000 do redis.call('RPUSH', KEYS[2], unpack(tail, j, math.min(j + 999, #tail))) end
end
redis.call('UNLINK', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) end
local g = (tonumber(string.match(ARGV[1], '^(%d+):') or '0') or 0) + 1
local value = string.format('%d:%d:%d', g, n, tonumber(ARGV[4]))
redis.call('SET', KEYS[3], value)
return value
"""

#: Tick: KEYS = clock, held, released, seen-expiry. ARGV = now (µs), ahead (µs; "" = no bound), lease (ms),
#: limit, sweep limit.
#: Moves the clock to max(clock, now) — with ``ahead`` (``clock = "wall"``), a ``now`` more than ``ahead`` past
#: Redis ``TIME`` is not taken: Redis time is, in its place. Returns the clock, due held ids, release ids whose
#: lease ran out (scored in Redis time, ms: compared with Redis time), held count, ids whose idempotency key is
#: past retention by the clock, Redis time (µs), 1 when ``now`` was not taken (else 0).
_TICK = r"""
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want, refused = ARGV[1], 0
if ARGV[2] ~= '' and tonumber(want) > now_us + tonumber(ARGV[2]) then
  want = string.format('%.0f', now_us); refused = 1
end
local cur = redis.call('GET', KEYS[1])
if (not cur) or tonumber(cur) < tonumber(want) then
  redis.call('SET', KEYS[1], want); cur = want
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cur, 'LIMIT', 0, tonumber(ARGV[4]))
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', now_ms - tonumber(ARGV[3])),
                         'LIMIT', 0, tonumber(ARGV[4]))
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', cur, 'LIMIT', 0, tonumber(ARGV[5]))
return {cur, due, stale, redis.call('ZCARD', KEYS[2]), expired, string.format('%.0f', now_us), refused}
"""

#: Sweep idempotency keys past retention by the gateway clock. KEYS = seen-expiry, seen keys...;
#: ARGV = clock (µs), their ids... Each is dropped only if its expiry (re-scored whenever its key is
#: rewritten) is still at or before the clock.
_SWEEP = r"""
local clock = tonumber(ARGV[1])
local n = 0
for j = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[j])
  if score and tonumber(score) <= clock then
    redis.call('DEL', KEYS[j])
    redis.call('ZREM', KEYS[1], ARGV[j])
    n = n + 1
  end
end
return n
"""

#: Take over a release whose decider did not record it within the lease. KEYS = released, rel, raw.
#: ARGV = id, lease (ms), new owner. The lease is Redis time (ms) on both sides: the decider's commit scored the
#: entry with it (``znow``), and it is compared with Redis time here, whatever the hosts' clocks say. Returns
#: {rel, raw, the entry's score before the claim, the score the claim gave it} or nil when someone else has it.
_CLAIM = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) > now - tonumber(ARGV[2]) then return nil end
local stamp = string.format('%.0f', now)
redis.call('ZADD', KEYS[1], stamp, ARGV[1])
local rel = redis.call('GET', KEYS[2])
if not rel then redis.call('ZREM', KEYS[1], ARGV[1]); return nil end
return {rel, redis.call('GET', KEYS[3]) or '', score, stamp}
"""

#: Give back a claim (:data:`_CLAIM`) this instance cannot use (a release it cannot decode). KEYS = released.
#: ARGV = id, the score the claim gave the entry, its score before. Puts the old score back when the entry still
#: has the claim's (not acknowledged nor claimed again since): a failed claim does not restart the lease, so an
#: instance that can decode the release takes it over at once. Returns 1 when the score was put back.
_UNCLAIM = r"""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1]); return 1
end
return 0
"""

#: Publish learned rows back after a loss (:meth:`RedisState.republish_learned`). KEYS = learned, epoch, the lock,
#: the epoch's owed set, learned-gen; ARGV = the epoch the rows were compared under, the lock's owner, its time to
#: live (ms), rows... Appends them unless the epoch is not that one (the state was lost again meanwhile: nothing
#: written, {-1}), gives the lock, while its owner's, its time to live again and renews the owner's entry in the
#: owed set (see :data:`_OWE`); returns {the list's length, its generation} (the rows are the last ones of that
#: generation: the instance that wrote them does not parse them again, :meth:`RedisState._apply_learned`).
_APPEND_LEARNED = r"""
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return {-1, ''} end
if redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[4], ARGV[2]) then
  redis.call('ZADD', KEYS[4], string.format('%.0f', now + tonumber(ARGV[3])), ARGV[2])
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
return {redis.call('RPUSH', KEYS[1], unpack(ARGV, 4)), redis.call('GET', KEYS[5]) or ''}
"""

#: An instance owes the learned list the links it holds (a loss noticed; :meth:`RedisState.republish_learned` not
#: done yet). KEYS = epoch, the epoch's owed set (``learned-owed:<epoch>``); ARGV = the epoch, the instance, the
#: entry's lease (ms). Scored by Redis time + the lease (renewed at each tick that tries again, and by each chunk
#: it appends): an instance that dies owing stops counting one lease later. Nothing (0) when the epoch is another.
#: While the set counts an entry, an instance that did not read the state before the loss knows the list is
#: incomplete (the load returns the count) and does not suppress or hold an AD1 on its links.
_OWE = r"""
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], string.format('%.0f', now + tonumber(ARGV[3])), ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

#: Release a lock key this instance holds. KEYS = lock; ARGV = owner. Returns 1 when it was deleted.
_UNLOCK = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# ------------------------------------------------------------------------------------------ keys


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.clock = f"{prefix}clock"
        self.held = f"{prefix}held"
        self.released = f"{prefix}released"
        self.learned = f"{prefix}learned"
        #: the shared state's epoch: a random token set (if absent) by the first instance to start on it; gone
        #: or changed = the state this instance was reading was lost (see "Losing the shared state")
        self.epoch = f"{prefix}epoch"
        #: commits of this epoch, counted by the commit script: lower than an instance read = the state went back
        self.commits = f"{prefix}commits"
        #: the learned list's compaction generation ``G:n:m`` (rows 0..n-1 were rewritten as m rows)
        self.learned_gen = f"{prefix}learned-gen"
        self.learned_compacting = f"{prefix}learned-compacting"  # the compaction's lock (one instance)
        #: the lock of publishing learned links back after a loss (one instance at a time)
        self.learned_republishing = f"{prefix}learned-republishing"
        self.decisions = f"{prefix}decisions"
        self.seen_expiry = f"{prefix}seen-expiry"
        #: holds and releases an instance could not decode (``hold:<id>`` / ``release:<id>``), for an operator
        self.unreadable = f"{prefix}unreadable"

    def learned_owed(self, epoch: str | None) -> str:
        """The instances that owe the learned list of ``epoch`` the links they hold (see :data:`_OWE`)."""
        return f"{self.prefix}learned-owed:{epoch or '-'}"

    def esme(self, esme: int) -> str:
        return f"{self.prefix}e:{{{esme:016X}}}"

    def ch(self, ch: int) -> str:
        return f"{self.prefix}c:{{{ch:016X}}}"

    def seen(self, mid: str) -> str:
        return f"{self.prefix}seen:{mid}"

    def held_record(self, mid: str) -> str:
        return f"{self.prefix}hm:{mid}"

    def raw(self, mid: str) -> str:
        return f"{self.prefix}raw:{mid}"

    def release(self, mid: str) -> str:
        return f"{self.prefix}rel:{mid}"

    def route(self, mid: str) -> str:
        return f"{self.prefix}route:{mid}"

    def route_kind(self, mid: str) -> str:
        return f"{self.prefix}route-kind:{mid}"

    def suppressions(self, day: date) -> str:
        """The shared suppression index of one UTC day, one entry per life of a message suppressed that day (hash:
        ``d:<id>`` row, ``r:<id>`` destination, ``k:<id>`` DUIS kind; a later life of a message id listed that day
        already: ``ld:<µs>:<id>``, ``lr:<µs>:<id>``, ``lk:<µs>:<id>``, µs its suppression's time). (A version
        before lives listed an id once, on its first day: ``{prefix}suppressed-on:<id>`` kept that day, for
        ``export_days``; such keys are no longer read, and expire.)"""
        return f"{self.prefix}suppressions:{day.isoformat()}"

    def paired(self, mid: str) -> str:
        """The pairing index of the AD1 ``mid``: a hash, one field per restoration suppressed as paired with it
        (``<life µs>:<decided µs>:<restoration id>``, life ``-`` when the record paired with was not known;
        value: :func:`_pairing_row`), written by the restoration's suppression commit (``duisgw audit release``
        reads it: :meth:`gateway.store.shared_audit.SharedAudit.paired_with`)."""
        return f"{self.prefix}paired:{mid}"

    @property
    def paired_since(self) -> str:
        """The gateway clock (µs) of the first suppression committed by a version that writes the pairing
        index (set once, no TTL): a life suppressed before it may have pairings indexed by day only."""
        return f"{self.prefix}paired-index-since"

    def operator_release(self, mid: str) -> str:
        """The shared marker of an operator release (``duisgw audit release``: exactly once across instances)."""
        return f"{self.prefix}operator-release:{mid}"

    def operator_release_done(self, mid: str) -> str:
        """Set when that release is recorded (locally, then in the shared decision log): what the export reads."""
        return f"{self.prefix}operator-release-done:{mid}"

    def operator_release_life(self, mid: str, life: datetime) -> str:
        """The release marker of one *life* of ``mid`` (``life``: the time of that life's suppression decision, as
        every instance records it; ``gateway.store.shared_audit``). The life comes first, as digits, so that no
        message id can make one life's key another's."""
        return f"{self.prefix}operator-release-life:{_us(_aware(life))}:{mid}"

    def operator_release_done_life(self, mid: str, life: datetime) -> str:
        """The confirmed release of one life of ``mid`` (what the export reads)."""
        return f"{self.prefix}operator-release-done-life:{_us(_aware(life))}:{mid}"


def partition_keys(prefix: str, event: MessageEvent | HeldMessage, inventory: InventoryView) -> set[str]:
    """The partition hashes ``event`` (or a held message) may read or write (see the module doc)."""
    k = _Keys(prefix)
    out: set[str] = set()
    if isinstance(event, HeldMessage):
        out.update(k.esme(e) for e in event.esmes)
        ev: MessageEvent = event.event
    else:
        ev = event
    if isinstance(ev, PowerOutage):
        out.update(k.esme(e) for e in inventory.esmes_for_ch(ev.ch))
        if ev.mpan:
            out.update(k.esme(e) for e in inventory.esmes_for_mpan(ev.mpan))
        out.add(k.ch(ev.ch))
    elif isinstance(ev, SupplyRestored):
        out.add(k.esme(ev.esme))
        ch = inventory.ch_for_esme(ev.esme)
        if ch is not None:
            out.add(k.ch(ch))
    elif isinstance(
        ev,
        ActivationRequested | ActivationResponse | FutureDatedOutcome | InventoryObserved | InventoryUnlinked,
    ):
        out.add(k.esme(ev.esme))
        if isinstance(ev, InventoryUnlinked) and ev.change in (HUB_DECOMMISSIONED, DEVICE_REMOVED):
            out.update(k.esme(e) for e in inventory.esmes_for_ch(ev.esme))  # a hub: the ESMEs it unlinks
    return out


def same_bytes_id(event: MessageEvent) -> tuple[str, bool] | None:
    """The other id the same bytes may have been decided under (docs/ENGINE.md §8), whose idempotency key a
    transaction loads beside its own, and whether it is the id the bytes have *unsigned* (True) or *signed* (False):

    - an unverified event whose id is marked with the digest of its own bytes (its XML signature did not verify): the
      id without the mark, its *signed twin* (:func:`gateway.engine.events.signed_twin`; an observation event's
      suffix stays);
    - else an inline event: the id its bytes have when their signature does not verify
      (:func:`gateway.engine.events.unsigned_id`): an inline message forwarded under it is what the DNO has;
    - else None (an observation whose signature verified is evidence as on its own), and None for an event without a
      digest (no key is its twin).

    The single-node engine answers the same (``Engine._same_bytes``), from its keys in memory."""
    digest = event.digest
    if digest is None:
        return None
    mid = event.message_id
    if not event.verified:  # (only an unsigned message's id carries its digest's mark: a verified one looks no further)
        twin = signed_twin(mid, digest)
        if twin is not None:
            return twin, False
    return (unsigned_id(mid, digest), True) if event.lane == "inline" else None


# ------------------------------------------------------------------------------------------ results


@dataclass(slots=True)
class Released:
    """A held message released in a transaction: its event and original bytes (for the local store)."""

    decision: Decision
    event: InlineEvent
    raw: bytes | None
    owner: str = ""  # the instance that decided the release


@dataclass(slots=True)
class TxResult:
    """One committed transaction: the engine's effects, the released messages, the shared clock."""

    effects: list[Effect]
    released: list[Released] = field(default_factory=list)
    attempts: int = 1
    #: a duplicate: the instance whose decision it carries (written in the idempotency key since this
    #: version; "" when an older instance decided it)
    decided_by: str = ""
    #: the shared state's epoch the transaction committed under (None: nothing committed, a duplicate). A hold
    #: committed under an epoch lost since is held again by its instance (:class:`gateway.store.shared.SharedEngine`)
    epoch: str | None = None
    #: the JSON text of each activation record the commit wrote, by ``id()`` of the record among the effects (the
    #: instance records the same text in its own store: :class:`gateway.store.shared.SharedEngine`)
    texts: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Refused:
    """A commit refused: a restoration alert of the transaction was paired with these suppressed AD1s, whose
    operator-release marker of the life paired with exists (``duisgw audit release`` took it; its instance has not
    taken it in; or a version before lives took the message id's marker after that life's suppression).
    ``accepted``: markers by message id a version before lives left that are an earlier life's release, not the
    life's paired with (``(message id, life µs)`` → the marker's text): the commit is tried again without
    refusing on them."""

    outages: list[str]
    accepted: dict[tuple[str, int], bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class _Skewed:
    """A commit refused (``clock = "wall"``): it would have moved the shared clock more than
    ``max_clock_ahead`` past Redis time (the message's arrival, stamped by this host, is ahead of it)."""

    redis_now: datetime


class _ViewInventory:
    """The local inventory as seen by one transient engine: reads go to ``base``; a learned link is only
    recorded (applied to ``base`` after the commit succeeded, so a retried transaction learns again),
    and :meth:`learned` shows it merged by the same rule the inventory applies
    (:func:`gateway.engine.state.merge_learned`), so the record the engine writes is the one the
    inventory will hold."""

    def __init__(self, base: InventoryView) -> None:
        self.base = base
        self.pending: list[LearnedLink | HubEnd] = []
        self._states: dict[int, LearnedLink | None] = {}
        self._hub_ends: dict[int, datetime] = {}

    def esmes_for_ch(self, ch: int) -> Sequence[int]:
        return self.base.esmes_for_ch(ch)

    def esmes_for_mpan(self, mpan: str) -> Sequence[int]:
        return self.base.esmes_for_mpan(mpan)

    def ch_for_esme(self, esme: int) -> int | None:
        return self.base.ch_for_esme(esme)

    def mpan_for_esme(self, esme: int) -> str | None:
        return self.base.mpan_for_esme(esme)

    def manufacturer_of(self, esme: int) -> str | None:
        return self.base.manufacturer_of(esme)

    def learned(self, esme: int) -> LearnedLink | None:
        if esme in self._states:
            return self._states[esme]
        return self.base.learned(esme)

    def learn_link(self, link: LearnedLink) -> LearnedLink | None:
        prior = self.learned(link.esme)
        end = None if link.ch is None else self.hub_end(link.ch)
        state = merge_learned(prior, after_hub_end(prior, link, end))
        self.pending.append(link)
        if state == prior:
            return None
        self._states[link.esme] = state
        return state

    def hub_end(self, ch: int) -> datetime | None:
        if ch in self._hub_ends:
            return self._hub_ends[ch]
        return self.base.hub_end(ch)

    def end_hub(self, ch: int, time: datetime) -> bool:
        """Recorded (applied to ``base`` after the commit); the engine ends the links of the ESMEs behind
        the hub itself, each by :meth:`learn_link`."""
        old = self.hub_end(ch)
        self.pending.append(HubEnd(ch, time))
        if old is not None and old >= time:
            return False
        self._hub_ends[ch] = time
        return True


_R = TypeVar("_R")


def _in_own_thread(
    name: str,
    url: str,
    work: Callable[[aioredis.Redis], Awaitable[_R]],
    keep: Callable[[_R | BaseException], None],
) -> threading.Thread:
    """A daemon thread, started, that runs ``work`` on an event loop and a Redis connection (to ``url``) of its own
    and hands its result, or what it raised, to ``keep`` (on that thread): for work too long for the engine loop
    (a compaction, a publication after a loss), whose outcome a later tick collects."""

    async def run() -> _R:
        client: aioredis.Redis = redis_client(url)
        try:
            return await work(client)
        finally:
            await cast(Any, client).aclose()

    def main() -> None:
        outcome: _R | BaseException
        try:
            outcome = asyncio.run(run())
        except BaseException as exc:  # (reported by the tick that collects it)
            outcome = exc
        keep(outcome)

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    return thread


def _writer_lock(inv: InventoryView) -> contextlib.AbstractContextManager[object]:
    """The lock every write of ``inv`` holds (:meth:`gateway.inventory.InventoryRegistry.writes_paused`): a read
    under it sees no write half done. The registry's reads are lock-free for the engine loop, its one writer's
    thread, but not for another thread: growing the ESME index swaps its arrays while a reader may use the new,
    half-filled ones (an ESME learned long ago read as absent). None for another inventory (tests)."""
    return inv.writes_paused() if isinstance(inv, InventoryRegistry) else contextlib.nullcontext()


class _HubUnjoined(_ViewInventory):
    """:class:`_ViewInventory` joining no ESME through one AD1's Comms Hub and MPAN (the learned links are
    incomplete after a loss: :attr:`RedisState.links_partial`): the engine forwards it (``ch-unknown``)."""

    def __init__(self, base: InventoryView, ch: int, mpan: str | None) -> None:
        super().__init__(base)
        self._ch = ch
        self._mpan = mpan

    def esmes_for_ch(self, ch: int) -> Sequence[int]:
        return () if ch == self._ch else self.base.esmes_for_ch(ch)

    def esmes_for_mpan(self, mpan: str) -> Sequence[int]:
        return () if mpan == self._mpan else self.base.esmes_for_mpan(mpan)


@dataclass(slots=True)
class _Snapshot:
    seen: bytes | None
    clock: datetime | None
    learned: list[bytes]
    learned_from: int  # the learned list's index of learned[0]
    versions: dict[str, bytes]
    rows: dict[tuple[str, str], dict[str, Any]]
    held: dict[str, HeldMessage]
    suppressed: dict[str, SuppressedOutage]
    unverified: dict[str, int]
    #: ``o:<id>`` references to the held AD1s of a loaded ``C(ch)``: id -> (that partition, the hold's ESMEs)
    hub_holds: dict[str, tuple[str, list[int]]] = field(default_factory=dict)
    #: this instance had not applied every row of the learned list as the load read it (it reads a page per load:
    #: :data:`_LOAD_PAGE`): rows it has not read may change the links an AD1 is joined on (:meth:`RedisState._attempt`)
    lagging: bool = False
    #: the other id the same bytes may have been decided under (:func:`same_bytes_id`; None: none loaded) and its
    #: idempotency key as loaded (None: none kept): the commit checks that it is still that
    other_id: str | None = None
    other: bytes | None = None

    def rows_list(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(t, key, rec) for (t, key), rec in self.rows.items()]


class _Ops:
    """The commit script's KEYS and ARGV, built op by op."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.ops: list[str | bytes | int] = []
        self.texts: dict[int, str] = {}  # the JSON text of each activation record written, by id(record)

    def idx(self, key: str) -> int:
        i = self.index.get(key)
        if i is None:
            self.keys.append(key)
            i = self.index[key] = len(self.keys)
        return i

    def add(self, op: str, key: str, *args: str | bytes | int) -> None:
        self.ops.extend((op, self.idx(key), *args))


# ------------------------------------------------------------------------------------------ the store


class RedisState:
    """Decide events against engine state shared in Redis (async; one per instance and event loop)."""

    def __init__(
        self,
        config: RedisStateConfig,
        engine_config: EngineConfig,
        scope: ScopeView,
        inventory: InventoryView,
        *,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.config = config
        self.engine_config = engine_config
        self.scope = scope
        self.inventory = inventory
        self.instance = config.instance_name()
        self.keys = _Keys(config.prefix)
        self.redis: aioredis.Redis = client if client is not None else redis_client(
            config.url, config.wait_timeout if config.replicas > 0 else 0.0
        )
        self._load_script = self.redis.register_script(_LOAD)
        self._commit = self.redis.register_script(_COMMIT)
        self._tick = self.redis.register_script(_TICK)
        self._claim = self.redis.register_script(_CLAIM)
        self._unclaim = self.redis.register_script(_UNCLAIM)
        self._unlock = self.redis.register_script(_UNLOCK)
        self._sweep = self.redis.register_script(_SWEEP)
        self._adopt_epoch = self.redis.register_script(_ADOPT_EPOCH)
        self._compact_swap = self.redis.register_script(_COMPACT_SWAP)
        self._append_learned = self.redis.register_script(_APPEND_LEARNED)
        self._owe_script = self.redis.register_script(_OWE)
        self._learned_offset = 0
        #: the shared state this instance reads: its epoch (None before the first load or start) and the learned
        #: list's generation ("" = never compacted); see "Losing the shared state" in the module doc
        self.epoch: str | None = None
        self._learned_gen = ""
        self._commits = 0  # the highest commit count of this epoch this instance read
        self._sync_lock = asyncio.Lock()
        #: times this instance found the shared state lost (Redis restarted empty, a failover to a replica
        #: without it, the keys deleted): ``duisgw_shared_state_lost_total``
        self.lost = 0
        #: the learned list is compacted (one row per ESME and per hub end) once it is longer than this and
        #: than twice what its last compaction left (:meth:`compact_learned`)
        self.compact_min = _COMPACT_MIN
        self._compact_due = False
        #: the learned list as this instance's last full read folded it, kept for the compaction it made due
        self._folded: tuple[str | None, str, int, _LearnedFold] | None = None
        self._list_len = 0  # the learned list's length at the last check
        #: a list longer than this is compacted by a thread of its own (:meth:`_compact_step`)
        self.compact_inline_max = _COMPACT_INLINE_MAX
        self._compactor: threading.Thread | None = None
        self._compact_outcome: bool | BaseException = False
        #: the ESMEs and hubs whose learned links (hub ends) this instance applied, from the shared list or its own
        #: commits: after a loss it publishes back what it holds of them that the new list does not have
        #: (:meth:`republish_learned`, once per loss: ``_republish_due``)
        self._learned_esmes = _Ids()
        self._learned_hubs: set[int] = set()
        self._republish_due = False
        #: learned rows this instance published back after losses (observability, tests)
        self.republished = 0
        #: holding more ESMEs and hubs than this, the publication runs in a thread of its own (:meth:`_republish_step`)
        self.republish_inline_max = _REPUBLISH_INLINE_MAX
        self._republisher: threading.Thread | None = None
        self._republish_outcome: tuple[str | None, int | BaseException | None] = (None, None)
        self._republish_stop = threading.Event()
        #: the rows this instance published back: (epoch, generation, first index, end); not parsed again here
        self._own_rows: list[tuple[str, str, int, int]] = []
        #: instances owing the learned list links after a loss, as of this instance's last load (:data:`_OWE`)
        self._owed = 0
        #: whether this instance read the shared state before the loss of the epoch it reads (it holds in memory
        #: the links learned before: it noticed the loss); an instance started since knows only the new list
        self._read_before_loss = False
        #: as of this instance's last load: another instance still owes the learned list links it held before a
        #: loss that this instance did not read the state before (:data:`_OWE`): the list may lack links, so an
        #: AD1 is not suppressed or held on them (:meth:`_attempt`)
        self.links_partial = False
        #: AD1s this instance forwarded because the learned list was incomplete after a loss, or because this instance
        #: had not read it to its end yet (:attr:`lagging`), where its links would have suppressed or held them (for a
        #: metric; each is logged at WARNING)
        self.partial_forwards = 0
        #: of those, the AD1s forwarded because this instance lagged behind the learned list (for tests, logs)
        self.lag_forwards = 0
        #: a load applies at most this many learned rows (:data:`_LOAD_PAGE`; 0 = no bound), a tick's catch-up
        #: pages of it for about ``catch_up_budget`` seconds (:meth:`_catch_up`)
        self.learned_page = _LOAD_PAGE
        self.catch_up_budget = _CATCH_UP_BUDGET
        #: a load (and each page of a catch-up) stops applying learned rows once it spent this long (seconds; None:
        #: the whole page): the rest are read again by the next load or tick
        self.learned_budget: float | None = _LOAD_BUDGET
        #: as of this instance's last load or tick: the learned list has rows this instance has not applied
        self.lagging = False
        #: a thread catches this instance up with the learned list while its engine loop is idle (set by
        #: :class:`gateway.store.shared.SharedEngine`: :meth:`aside_read`, :meth:`aside_apply`): a tick then leaves
        #: the catch-up to it (:meth:`_catch_up` does nothing)
        self.catching_up_aside = False
        keep = int(engine_config.keep_for.total_seconds())
        self._ttl = keep + 3600
        #: wall-clock TTL of partitions and idempotency keys: only a memory safety net (retention runs
        #: on the gateway clock), longer than retention so that a gateway clock slower than the wall
        #: clock (``clock = "message"``, every instance stopped) does not lose state a single node keeps
        self._safety_ttl = 2 * keep + 86_400
        self.clock: datetime | None = None
        self.held_count = 0
        self.conflicts = 0  # compare-and-set retries (observability, benchmarks)
        #: commits refused because a restoration was paired with an AD1 an operator released meanwhile
        self.release_refusals = 0
        #: ``clock = "wall"`` (``max_clock_ahead``): this host's clock minus Redis time, seconds, as measured at
        #: the last tick (None before the first); ticks and message arrivals whose time was not taken because
        #: it was more than ``max_clock_ahead`` ahead of Redis time (Redis time was taken in its place)
        self.clock_skew: float | None = None
        self.clock_refused: dict[str, int] = {"tick": 0, "message": 0}
        self._skew_warned = -1e18  # time.monotonic() of the last skew warning (rate-limited)
        self._skew_unwarned = 0
        #: records this version could not decode (a newer version's hold or release, e.g. a reason code added
        #: since): skipped, left where they are for an instance that can decode them, never retried by this one
        self.unreadable: dict[str, int] = {"hold": 0, "release": 0}
        self._unreadable_holds: set[str] = set()
        self._unreadable_releases: set[str] = set()

    async def aclose(self) -> None:
        compactor = self._compactor
        if compactor is not None:  # (bounded: it holds its lock 2 min at most)
            await asyncio.to_thread(compactor.join, 10.0)
            self._compactor = None
        thread = self._republisher
        if thread is not None:  # a publication in progress stops at its next chunk (its entry lapses with its lease)
            self._republish_stop.set()
            await asyncio.to_thread(thread.join, 10.0)
            self._republisher = None
        await cast(Any, self.redis).aclose()  # (the installed stubs predate aclose)

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Check the connection, the server's eviction policy and persistence, join the shared state's epoch
        (start it on a new state), apply every learned link (read in pages), read the shared clock and held
        count; compact the learned list when it is due."""
        await self._check_eviction()
        await self._check_persistence()
        await self._sync_shared()
        async with self.redis.pipeline(transaction=True) as p:
            p.get(self.keys.clock)
            p.zcard(self.keys.held)
            clock, held = await p.execute()
        self.clock = None if clock is None else _from_us(int(clock))
        self.held_count = int(held)
        if self._compact_due:
            await self.compact_learned(if_due=True)

    async def _check_persistence(self) -> None:
        """Warn (never refuse: a test Redis keeps nothing) when Redis would not keep the shared state across
        its own restart: without an append-only file (``appendonly yes``) a restart or crash loses what was
        written since the last snapshot, or everything without snapshots (``save ""``). The instances notice
        the loss and recover what they can (:meth:`_sync_shared`, :meth:`restore_hold`), but idempotency
        keys, activations and the holds of a stopped instance are gone. A server that does not let us read
        its configuration is started with a warning too."""
        try:
            got = await self.redis.config_get("appendonly")
            saves = await self.redis.config_get("save")
        except aioredis.ResponseError as exc:
            _log.warning("shared state: cannot read the Redis persistence settings (%s); without appendonly yes a "
                         "Redis restart loses the shared state (docs/SCALE-OUT.md)", exc)  # fmt: skip
            return
        both = {**cast(dict[Any, Any], got), **cast(dict[Any, Any], saves)}
        conf = {_text(k): _text(v) for k, v in both.items()}
        if conf.get("appendonly", "no") != "yes":
            save = conf.get("save", "")
            _log.warning(
                "shared state: Redis at %s keeps no append-only file (appendonly %s, save %s): a Redis restart or "
                "crash loses the shared state written since %s (held messages, idempotency keys, activations); "
                "set appendonly yes (docs/SCALE-OUT.md)",
                redacted_url(self.config.url), conf.get("appendonly", "?"), repr(save),
                "its last snapshot" if save else "it started",
            )  # fmt: skip

    # ------------------------------------------------------------------ the state in force: epoch, learned list

    async def check_shared(self) -> None:
        """Whether the shared state is still the one this instance reads (every tick; every load checks it
        too): when its epoch is gone or changed, or the learned list was compacted or lost rows, bring this
        instance up to date (:meth:`_sync_shared`). After a loss, the learned links this instance holds that the
        new list does not have are published back here (:meth:`republish_learned`), then a due compaction of the
        learned list runs."""
        floor = self._floor()
        epoch, gen, n, commits = await self._shared_snapshot()
        if not self._in_sync(epoch, gen, n, commits, floor):
            await self._sync_shared()
        else:
            # rows past this instance's offset are the rule (its own commits' rows and other instances' since its
            # last load: its next load reads them); it lags when they are more than a page (:meth:`_catch_up`)
            self.lagging = 0 < self.learned_page < n - self._learned_offset
        if self._republish_due:
            await self._republish_step()
        self._compaction_collected()
        if self._compact_due and not self._republish_due:
            # (the count as of now: an instance that loads nothing would otherwise go by its last load's)
            now_ms = int(time.time() * 1000)
            self._owed = int(await self.redis.zcount(self.keys.learned_owed(self.epoch), now_ms, "+inf"))
        if self._compact_due and not (self._republish_due or self._owed or self.lagging):
            # (not while links are published back after a loss: an instance whose offset is not past the rows a
            # compaction folds reads the whole list again, and the rows published back are many)
            await self._compact_step()

    async def _shared_snapshot(self, client: aioredis.Redis | None = None) -> tuple[object, object, int, int]:
        """One MULTI/EXEC read of the shared state's epoch, learned-list generation and length, and commit count."""
        k = self.keys
        async with (self.redis if client is None else client).pipeline(transaction=True) as p:
            p.get(k.epoch)
            p.get(k.learned_gen)
            p.llen(k.learned)
            p.get(k.commits)
            epoch, gen, n, commits = await p.execute()
        return epoch, gen, int(n), int(commits or 0)

    def _floor(self) -> tuple[str | None, int, int]:
        """What this instance has read of the shared state, taken when it sends a read: its epoch, its offset
        in the learned list and the highest commit count it saw. A later read showing less is a state that
        went back (a read answered after another that saw more is no sign of one: the floor is taken before)."""
        return self.epoch, self._learned_offset, self._commits

    def _in_sync(self, epoch: object, gen: object, n: int, commits: int, floor: tuple[str | None, int, int]) -> bool:
        """Whether a snapshot's epoch, learned generation, list length and commit count are what this instance
        reads (its epoch and generation, nothing below ``floor``). Notes whether a compaction is due (no longer
        once another instance compacted the list)."""
        gen_text = "" if gen is None else _text(gen)
        self._list_len = n
        self._compact_due = self._compaction_due(gen_text, n)
        if not self._compact_due:
            self._folded = None
        was, offset, count = floor
        if epoch is None or _text(epoch) != self.epoch or was != self.epoch or gen_text != self._learned_gen:
            return False
        if n < offset or commits < count:
            return False
        self._commits = max(self._commits, commits)
        return True

    async def _sync_shared(self) -> None:
        """Join the shared state in force. No epoch (a new state, or one that lost it) → start one (a random
        token; the first instance to get there sets it, the others adopt it). The same epoch and generation
        but a learned list shorter than what this instance read of it → the state went back in time (a
        failover to a replica that lags): a new epoch, so that every instance recovers. Another epoch than
        the one this instance read under → the state was LOST: counted (:attr:`lost`), logged at ERROR once,
        and the learned list read again from 0 (merging is by the time of each link's evidence: what was
        applied already changes nothing); the holds the instance recorded are re-submitted by
        :class:`gateway.store.shared.SharedEngine` (:meth:`restore_hold`). Another generation of the list
        (a compaction) → the offset is carried over when this instance had read every row the compaction
        folded, else the list is read again from 0."""
        k = self.keys
        async with self._sync_lock:
            floor = self._floor()
            got, gen_b, n, commits = await self._shared_snapshot()
            if self._in_sync(got, gen_b, n, commits, floor):
                return  # (another transaction of this instance brought it up to date meanwhile)
            gen = "" if gen_b is None else _text(gen_b)
            epoch = None if got is None else _text(got)
            # the same epoch, but fewer commits, or (same generation) fewer learned rows than this instance saw
            went_back = (
                epoch is not None
                and epoch == self.epoch
                and (commits < floor[2] or (gen == self._learned_gen and n < floor[1]))
            )
            if epoch is None or went_back:
                stale = (self.epoch or "") if went_back else ""
                epoch = _text(await self._adopt_epoch(keys=[k.epoch], args=[stale, os.urandom(16).hex()]))
            if self.epoch is not None and epoch != self.epoch:
                self.lost += 1
                _log.error(
                    "shared state LOST: the Redis state this instance was reading is gone (%s; epoch %s -> %s): "
                    "held messages, idempotency keys, activations and releases not yet recorded went with it. "
                    "Reading the learned inventory links again; this instance publishes back those it holds, and "
                    "re-submits the holds and activations it recorded",
                    "it went back in time" if went_back else "its epoch vanished or changed",
                    self.epoch, epoch, extra={"instance": self.instance},
                )  # fmt: skip
                # what this instance learned before the loss is in its memory only: published back at its next
                # tick, once the new list is read (nothing when it holds nothing); owed from now on (below)
                self._republish_due = bool(len(self._learned_esmes) or self._learned_hubs)
                self._read_before_loss = True
            elif gen != self._learned_gen and self.epoch is not None:
                moved = self._carried_offset(gen, n)
                if moved is not None:
                    self._learned_offset, self._learned_gen = moved, gen
                    self._note_lag(n)
                    return
            if self.epoch is not None and self.learned_page > 0:
                # running (not at start-up): the list is read again from 0 a page per load and tick, never whole on
                # the engine loop (~42 us a row: a minute at 1.4 M). Until the last page is applied this instance
                # lags (:attr:`lagging`): an AD1 is not suppressed or held on its links meanwhile (:meth:`_attempt`);
                # the rows merge by the time of their evidence, so what it holds already is not moved back
                if epoch != self.epoch:
                    self._commits = 0  # (counted from this epoch on: the next read raises it)
                self.epoch, self._learned_gen, self._learned_offset = epoch, gen, 0
                self._compact_due, self._folded = False, None
                self._note_lag(n)
                if self._republish_due:  # owed at once: an instance started since must not take the list as complete
                    await self._owe()
                return
            # folded first (one state per ESME, one end per hub: what applying every row in turn leaves,
            # :class:`_LearnedFold`), then applied: a long list costs one pass, and its compaction no read
            fold = _LearnedFold()
            epoch_read, gen_read, rows = await self._scan_learned(fold.add, fold.reset)
            fold.apply(self.inventory)
            self._learned_esmes.extend(fold.states)
            self._learned_hubs.update(fold.ends)
            self._learned_offset, self._learned_gen = rows, gen_read
            if (epoch_read if epoch_read is not None else epoch) != self.epoch:
                self._commits = 0  # (counted from this epoch on: the next read raises it)
            self.epoch = epoch_read if epoch_read is not None else epoch
            self._compact_due = rows > max(self.compact_min, 2 * len(fold))
            self._folded = (epoch_read, gen_read, rows, fold) if self._compact_due else None
            if self._republish_due:  # owed at once: an instance started since must not take the list as complete
                await self._owe()

    def _skip_own(self) -> None:
        """Move this instance's offset past the rows it published back itself that start there (what it holds
        already: never parsed again, :meth:`_apply_learned`), so that a page is spent on rows it has not read."""
        here = (self.epoch, self._learned_gen)
        moved = True
        while moved:
            moved = False
            for e, g, a, b in list(self._own_rows):
                if (e, g) == here and a <= self._learned_offset < b:
                    self._learned_offset, moved = b, True

    def _note_lag(self, n: int) -> bool:
        """Note whether this instance lags behind the learned list of ``n`` rows (of the epoch and generation it
        reads): rows past what it applied (:attr:`lagging`)."""
        self.lagging = self._learned_offset < n
        return self.lagging

    @property
    def learned_offset(self) -> int:
        """How many rows of the learned list (of the epoch and generation this instance reads) it applied."""
        return self._learned_offset

    @property
    def learned_behind(self) -> int:
        """Rows of the learned list, as this instance last saw its length, that it has not applied."""
        return max(0, self._list_len - self._learned_offset)

    def aside_position(self) -> tuple[str | None, str, int] | None:
        """Where a catch-up off the engine loop reads next (:class:`gateway.store.shared.SharedEngine`: called while
        the engine loop does nothing): ``(epoch, generation, offset)``, or None when this instance does not lag
        (every row of the learned list as last seen applied) or reads no list yet. Moves the offset past this
        instance's own rows first (:meth:`_skip_own`)."""
        self._skip_own()
        if self.epoch is None or self.learned_page <= 0 or self._learned_offset >= self._list_len:
            self._note_lag(self._list_len)
            return None
        return self.epoch, self._learned_gen, self._learned_offset

    def aside_read(self, client: Any, where: tuple[str | None, str, int]) -> tuple[tuple[str | None, str], list[bytes], int]:
        """Read a page of the learned list at ``where`` (:meth:`aside_position`) with ``client``, a synchronous
        Redis client of the catching-up thread's own (not the engine loop's): ``((epoch, generation), rows, the
        list's length)``, read in one MULTI/EXEC (the rows are of the list that epoch and generation name)."""
        k = self.keys
        offset = where[2]
        p = client.pipeline(transaction=True)
        p.get(k.epoch)
        p.get(k.learned_gen)
        p.lrange(k.learned, offset, offset + self.learned_page - 1)
        p.llen(k.learned)
        epoch, gen, rows, n = p.execute()
        return (None if epoch is None else _text(epoch), "" if gen is None else _text(gen)), list(rows), int(n)

    def aside_apply(
        self, where: tuple[str | None, str, int], read: tuple[str | None, str], rows: Sequence[bytes], n: int,
        budget: float | None,
    ) -> int | None:
        """Apply ``rows`` (:meth:`aside_read` at ``where``, of the list ``read`` names, ``n`` rows long) for about
        ``budget`` seconds, while the engine loop does nothing (:class:`gateway.store.shared.SharedEngine`); the
        rows past what this instance applied meanwhile only (:meth:`_apply_learned`). Returns the offset reached,
        or None when the rows are not of the list this instance reads any more (the state lost, the list compacted
        or shorter: its next load or tick brings it up to date and the next read starts there)."""
        here = (self.epoch, self._learned_gen)
        if read != here or where[:2] != here or n < where[2]:
            return None
        self._apply_learned(rows, where[2], budget)
        self._list_len = max(self._list_len, n)  # (a load since may have seen a longer list: not forgotten)
        self._note_lag(self._list_len)
        return self._learned_offset

    async def _catch_up(self) -> None:
        """A tick's catch-up of a lagging instance (:attr:`lagging`): apply pages of the learned list (each read
        with the epoch and generation in one MULTI/EXEC: none of another list) for about ``catch_up_budget``
        seconds, so that an idle instance catches up without stalling its engine loop: the first page as a load's
        (``learned_budget``), each further one within what is left of the budget. Nothing while a thread catches
        up while the engine loop is idle (:attr:`catching_up_aside`): a tick would only add to its stall."""
        if self.catching_up_aside:
            return
        k = self.keys
        began = time.monotonic()
        first = True
        while self._learned_offset < self._list_len and self.learned_page > 0:
            left = self.catch_up_budget - (time.monotonic() - began)
            if not first and left <= 0:
                return
            budget = self.learned_budget if first or self.learned_budget is None else min(self.learned_budget, left)
            first = False
            self._skip_own()
            offset, here = self._learned_offset, (self.epoch, self._learned_gen)
            async with self.redis.pipeline(transaction=True) as p:
                p.get(k.epoch)
                p.get(k.learned_gen)
                p.lrange(k.learned, offset, offset + self.learned_page - 1)
                p.llen(k.learned)
                epoch, gen, rows, n = await p.execute()
            now = (None if epoch is None else _text(epoch), "" if gen is None else _text(gen))
            if now != here or (self.epoch, self._learned_gen) != here or int(n) < offset:
                return  # not the list this instance reads (any more): the next load or tick brings it up to date
            self._apply_learned(rows, offset, budget)
            self._list_len = int(n)
            self._note_lag(int(n))

    def _compaction_due(self, gen: str, n: int) -> bool:
        """Whether the learned list (``n`` rows, generation ``gen``) is to be compacted: longer than
        ``compact_min`` and than twice what its last compaction left."""
        return n > max(self.compact_min, 2 * _compacted_rows(gen))

    def _carried_offset(self, gen: str, n: int) -> int | None:
        """This instance's offset in the list of generation ``gen`` (``G:n:m``: its rows 0..n-1 were rewritten
        as m rows, the rest moved behind them), when it is the compaction of the list this instance read and
        the instance had read every row it folded (None: read the list again)."""
        try:
            g, folded, kept = (int(x) for x in gen.split(":"))
        except ValueError:
            return None
        own = int(self._learned_gen.split(":", 1)[0]) if self._learned_gen else 0
        if g != own + 1 or self._learned_offset < folded:
            return None
        offset = kept + self._learned_offset - folded
        return offset if offset <= n else None

    async def _scan_learned(
        self,
        page: Callable[[Sequence[bytes]], None],
        restart: Callable[[], None] | None = None,
        client: aioredis.Redis | None = None,
    ) -> tuple[str | None, str, int]:
        """Read the whole learned list in pages (:data:`_LEARNED_PAGE` rows, each with the epoch and the
        generation in one MULTI/EXEC), handing each page to ``page``; when the epoch or the generation
        changes under it, ``restart()`` and read it again from 0. Returns the epoch, the generation and the
        rows read. ``client``: another connection than this instance's (a thread's own)."""
        k = self.keys
        redis = self.redis if client is None else client
        while True:
            first: tuple[object, object] | None = None
            done = 0
            while True:
                async with redis.pipeline(transaction=True) as p:
                    p.get(k.epoch)
                    p.get(k.learned_gen)
                    p.lrange(k.learned, done, done + _LEARNED_PAGE - 1)
                    epoch, gen, rows = await p.execute()
                if first is None:
                    first = (epoch, gen)
                elif first != (epoch, gen):
                    break
                page(rows)
                done += len(rows)
                if len(rows) < _LEARNED_PAGE:
                    return None if epoch is None else _text(epoch), "" if gen is None else _text(gen), done
            if restart is not None:
                restart()

    async def compact_learned(self, *, if_due: bool = False) -> bool:
        """Rewrite the learned list as one row per ESME (its learned state) and one per hub end (the latest),
        as every instance merges them (:class:`_LearnedFold`; a single node keeps its learned state the same
        way), so that it stays about as long as the number of ESMEs and hubs learned, whatever the traffic.
        One instance at a time (a lock key); the rows appended meanwhile are kept behind the rewritten ones
        and the generation moves on (``G+1:n:m``): every instance carries its offset over (or reads the list
        again). ``if_due`` (a compaction this instance found due: :meth:`check_shared`, :meth:`start`): once
        it holds the lock, only if the list is still due — every instance that read it past the threshold
        finds it due, and all but the first would otherwise read and rewrite it again inside a tick. True
        when this instance compacted it."""
        self._compact_due = False
        folded, self._folded = self._folded, None
        return await self._compact(self.redis, if_due, folded)

    async def _compact_step(self) -> None:
        """A tick's compaction of the learned list, when due: a list of up to ``compact_inline_max`` rows is
        compacted here (:meth:`compact_learned`); a longer one (1.9 s of CPU per 100,000 rows: after a loss,
        every link published back makes the list due at once) by a thread with its own event loop and Redis
        connection, so that the engine loop goes on deciding; a later tick collects its outcome."""
        if not self._compaction_collected():
            return
        if self._list_len <= self.compact_inline_max:
            await self.compact_learned(if_due=True)
            return
        self._compact_due = False
        folded, self._folded = self._folded, None
        self._compactor = _in_own_thread(f"duisgw-compact-{self.instance}", self.config.url,
                                         lambda client: self._compact(client, True, folded),
                                         self._keep_compact_outcome)  # fmt: skip

    def _compaction_collected(self) -> bool:
        """Whether no compaction thread runs (one that ended is collected: its failure logged)."""
        thread = self._compactor
        if thread is None:
            return True
        if thread.is_alive():
            return False
        thread.join()
        self._compactor = None
        if isinstance(self._compact_outcome, BaseException):
            _log.error("shared state: compacting the learned list failed (tried again when due): %s",
                       self._compact_outcome, extra={"instance": self.instance})  # fmt: skip
        return True

    def _keep_compact_outcome(self, outcome: bool | BaseException) -> None:
        """The outcome of :meth:`_compact` in its thread (it reads nothing of this instance but the ``folded``
        handed over), for the next tick (:meth:`_compaction_collected`)."""
        self._compact_outcome = outcome

    async def _compact(
        self, redis: aioredis.Redis, if_due: bool, folded: tuple[str | None, str, int, _LearnedFold] | None
    ) -> bool:
        """:meth:`compact_learned`'s work through ``redis`` (this instance's connection, or a thread's own)."""
        k = self.keys
        if not await redis.set(k.learned_compacting, self.instance, nx=True, px=_COMPACT_LOCK_MS):
            return False  # another instance is compacting it
        copy = f"{k.prefix}learned-compacted:{self.instance}"
        try:
            if if_due:  # read again under the lock: another instance may have compacted it since
                epoch_now, gen_b, n_now, _commits = await self._shared_snapshot(redis)
                gen_now = "" if gen_b is None else _text(gen_b)
                if not self._compaction_due(gen_now, n_now):
                    await self._unlock(keys=[k.learned_compacting], args=[self.instance], client=redis)
                    return False
                now = (None if epoch_now is None else _text(epoch_now), gen_now)
                if folded is not None and (folded[0], folded[1]) != now:
                    folded = None  # not the list this instance folded: its swap would fail, read it again
            if folded is None:
                fold = _LearnedFold()
                epoch, gen, n = await self._scan_learned(fold.add, fold.reset, redis)
            else:  # this instance has just read (and folded) the whole list: the swap checks it is still that
                epoch, gen, n, fold = folded
            rows = fold.rows()
            await redis.delete(copy)
            for at in range(0, len(rows), 1000):
                async with redis.pipeline(transaction=False) as p:
                    p.rpush(copy, *rows[at : at + 1000])
                    p.pexpire(copy, _COMPACT_LOCK_MS)
                    await p.execute()
            swapped = await self._compact_swap(
                keys=[k.learned, copy, k.learned_gen, k.epoch, k.learned_compacting],
                args=[gen, epoch or "", n, len(rows), self.instance],
                client=redis,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await redis.delete(copy)
                await self._unlock(keys=[k.learned_compacting], args=[self.instance], client=redis)
            raise
        if not swapped:
            return False
        _log.info("shared state: learned inventory links compacted: %d rows -> %d", n, len(rows),
                  extra={"instance": self.instance, "generation": _text(swapped)})  # fmt: skip
        return True

    async def republish_learned(self) -> int | None:
        """After a loss of the shared state (:meth:`_sync_shared` made it due): publish back to the learned list
        the links and hub ends this instance holds (what it applied from the list before the loss, and its own
        commits) that the list does not have, so that an instance started after the loss knows them too. One
        instance at a time (a lock key, ``{prefix}learned-republishing``, 2 min at most): each reads the whole
        list under it and appends only what the list lacks, compared as every instance merges them (by the
        time of each link's evidence: :class:`_LearnedFold`), one row per ESME (its learned state as this
        instance holds it) then one per hub end — so of several instances holding the same links, the first
        publishes them and the others nothing; a link learned since the loss from newer evidence is not moved
        back (the merge keeps it), and a late older one does not win over what is published. The rows are
        ordinary rows of the list (compacted like any). Returns the rows published, or None when it is still
        due (another instance holds the lock, or the state was lost again meanwhile: tried again at the next
        tick). This runs here, on the caller's loop; :meth:`check_shared` runs it in a thread of its own when
        this instance holds more than ``republish_inline_max`` ESMEs and hubs (:meth:`_republish_step`)."""
        epoch = self.epoch
        await self._owe()
        got = await self._republish(self.redis, epoch, self._learned_esmes, set(self._learned_hubs), None)
        self._republish_done(epoch, got)
        return got

    async def _owe(self, client: aioredis.Redis | None = None) -> None:
        """Enter (or renew) this instance in the owed set of the epoch it reads (:data:`_OWE`)."""
        if self.epoch is not None:
            await self._owe_script(keys=[self.keys.epoch, self.keys.learned_owed(self.epoch)],
                                   args=[self.epoch, self.instance, _COMPACT_LOCK_MS], client=client)  # fmt: skip

    async def _republish_step(self) -> None:
        """A tick's part of the publication after a loss. Holding few links (``republish_inline_max``): published
        here (a few ms). Holding more: published by a thread with its own event loop and Redis connection
        (:func:`_in_own_thread`), so that the engine loop goes on deciding — 100,000 ESMEs take ~1.2 s of
        CPU, the field's 1.4 M about 17 s; each later tick collects its outcome (published: done; still due:
        started again). Meanwhile, and from the loss on, this instance's entry in the epoch's owed set
        (:data:`_OWE`) tells every instance that did not read the state before the loss that the list lacks
        links: it does not suppress or hold an AD1 on the strength of its links (:meth:`_attempt`)."""
        thread = self._republisher
        if thread is not None:
            if thread.is_alive():
                return  # still publishing (each chunk renews the lock and this instance's entry)
            thread.join()
            self._republisher = None
            epoch, outcome = self._republish_outcome
            if isinstance(outcome, BaseException):
                _log.error("shared state: publishing the learned links back after the loss failed (tried again at "
                           "the next tick): %s", outcome, extra={"instance": self.instance})  # fmt: skip
            else:
                self._republish_done(epoch, outcome)
            if not self._republish_due:
                return
        if len(self._learned_esmes) + len(self._learned_hubs) <= self.republish_inline_max:
            await self.republish_learned()
            return
        await self._owe()
        if await self.redis.exists(self.keys.learned_republishing):
            return  # another instance is publishing: tried again at the next tick (no thread for nothing)
        # what the thread reads of this instance: copies (the engine loop goes on appending to them); the
        # inventory itself has one writer and lock-free readers (gateway.inventory, *Concurrency*)
        esmes, hubs, epoch = self._learned_esmes.copy(), set(self._learned_hubs), self.epoch
        self._republish_stop.clear()

        def keep(outcome: int | BaseException | None) -> None:  # (the next tick tries again on a failure)
            self._republish_outcome = (epoch, outcome)

        self._republisher = _in_own_thread(f"duisgw-republish-{self.instance}", self.config.url,
                                           lambda client: self._republish(client, epoch, esmes, hubs,
                                                                          self._republish_stop),
                                           keep)  # fmt: skip

    def _republish_done(self, epoch: str | None, published: int | None) -> None:
        """The outcome of a publication made under ``epoch``: done unless still due (None) or the state was lost
        again since (another epoch: due again, in the new one)."""
        if published is None or epoch != self.epoch:
            return
        self._republish_due = False
        self.republished += published
        if published:
            _log.warning("shared state: %d learned inventory links and hub ends this instance held are published "
                         "back to the learned list after the loss", published,
                         extra={"instance": self.instance})  # fmt: skip

    async def _republish(
        self, client: aioredis.Redis, epoch: str | None, esmes: Iterable[int], hubs: set[int],
        stop: threading.Event | None,
    ) -> int | None:  # fmt: skip
        """:meth:`republish_learned`'s work through ``client``, under ``epoch`` (None: still due). Once every row
        is appended, this instance leaves the epoch's owed set (before the lock is released)."""
        k = self.keys
        if epoch is None:
            return None
        if not await client.set(k.learned_republishing, self.instance, nx=True, px=_COMPACT_LOCK_MS):
            return None
        owed = k.learned_owed(epoch)
        try:
            fold = _LearnedFold()
            scanned, _gen, _n = await self._scan_learned(fold.add, fold.reset, client)
            if scanned is None or scanned != epoch:
                return None  # not the state this instance reads: its next check brings it up to date first
            published = 0
            rows = self._missing_learned(fold, esmes, hubs)  # streamed: never all rows at once
            while chunk := list(itertools.islice(rows, 1000)):
                if stop is not None and stop.is_set():
                    return None
                got = await self._append_learned(keys=[k.learned, k.epoch, k.learned_republishing, owed, k.learned_gen],
                                                 args=[epoch, self.instance, _COMPACT_LOCK_MS, *chunk],
                                                 client=client)  # fmt: skip
                if int(got[0]) < 0:
                    return None
                # (list.append: atomic, read by the engine loop without a lock)
                self._own_rows.append((epoch, _text(got[1]), int(got[0]) - len(chunk), int(got[0])))
                published += len(chunk)
            await client.zrem(owed, self.instance)
        finally:
            await self._unlock(keys=[k.learned_republishing], args=[self.instance], client=client)
        return published

    def _missing_learned(self, fold: _LearnedFold, esmes: Iterable[int], hubs: set[int]) -> Iterator[bytes]:
        """The rows of what this instance holds (its inventory's learned state of each ESME of ``esmes`` — those it
        applied or committed links of —, the latest end of each hub of ``hubs``) that the list folded as ``fold``
        does not have: each ESME whose state would change were the row applied to the list, each hub end newer
        than the list's. (A thread reads while the engine loop may learn: each state is read under the inventory
        registry's writer lock, :func:`_writer_lock` — a lock-free read racing a write that grows the ESME index
        finds a learned ESME absent, and two such reads agree: its link would never be published back.)"""
        inv = self.inventory
        lock = _writer_lock(inv)
        for esme in esmes:
            with lock:
                mine = inv.learned(esme)
            if mine is None:
                continue
            theirs = fold.states.get(esme)
            if theirs is not None:
                end = None if mine.ch is None else fold.ends.get(mine.ch)
                if merge_learned(theirs, after_hub_end(theirs, mine, end)) == theirs:
                    continue  # the list has it, or newer evidence of it
            yield _dumps(to_record(replace(mine, at=None))).encode()
        for ch in sorted(hubs):
            ended = inv.hub_end(ch)
            known = fold.ends.get(ch)
            if ended is not None and (known is None or ended > known):
                yield _dumps(to_record(HubEnd(ch, ended))).encode()

    async def _check_eviction(self) -> None:
        """Refuse a server that may evict keys: the state is partitions, held-message bodies and an index
        of the held, each written on its own, and losing one of them (an ``E(esme)`` evicted while its
        held index entry stays) leaves a message neither decided nor delivered. With a memory limit
        (``maxmemory`` > 0) only ``maxmemory-policy noeviction`` is safe (the ``volatile-*`` policies evict
        our keys too: they carry a time to live); without one nothing is evicted. A server that does not
        let us read its configuration (``CONFIG`` renamed or not permitted) is started with a warning."""
        try:
            got = await self.redis.config_get("maxmemory*")
        except aioredis.ResponseError as exc:
            _log.warning(
                "shared state: cannot read the Redis eviction policy (%s); it must be noeviction", exc
            )
            return
        conf = {_text(k): _text(v) for k, v in cast(dict[Any, Any], got).items()}
        limit, policy = conf.get("maxmemory", "0"), conf.get("maxmemory-policy", "noeviction")
        if limit not in ("", "0") and policy != "noeviction":
            raise StoreError(
                f"shared state: Redis at {redacted_url(self.config.url)} may evict keys (maxmemory {limit}, maxmemory-policy "
                f"{policy}); set maxmemory-policy noeviction (or no maxmemory): an evicted partition loses held "
                "messages"
            )

    def _apply_learned(self, rows: Sequence[bytes], start: int, budget: float | None = None) -> None:
        """Apply the learned links ``rows`` read from list index ``start``. Several transactions of this
        instance load concurrently from the same offset: only the rows past what is applied already are
        applied, and the offset moves to the end of what was read (never by the count read, which skipped
        the links learned next when two loads read the same rows). ``budget`` (seconds): stop once that long
        was spent (checked every 32 rows) and move the offset only past the rows applied — the rest are read
        again by the next load or tick (a slow or busy host applies fewer rows a load, not a longer stall)."""
        # each link is ordered by the time of its evidence, so replaying the list in commit order ends
        # where the single node would, and an entry written before those times existed counts as older
        end = start + len(rows)
        if end <= self._learned_offset:
            return
        here = (self.epoch, self._learned_gen)
        # the rows this instance published back after a loss (what it holds already) are not parsed again
        own = sorted((a, b) for e, g, a, b in self._own_rows if (e, g) == here and b > self._learned_offset and a < end)
        spans: list[tuple[int, int]] = []  # the list's index ranges to apply (the own rows cut out)
        at = max(start, self._learned_offset)
        for a, b in own:
            if a > at:
                spans.append((at, a))
            at = max(at, b)
        if at < end:
            spans.append((at, end))
        deadline = None if budget is None else time.monotonic() + budget
        done = 0
        for a, b in spans:
            for i in range(a, b):
                rec = json.loads(rows[i - start])
                _learn(self.inventory, rec)
                if "esme" in rec:
                    self._learned_esmes.add(int(rec["esme"]))
                elif "ch" in rec:
                    self._learned_hubs.add(int(rec["ch"]))
                done += 1
                if deadline is not None and done % 32 == 0 and i + 1 < end and time.monotonic() > deadline:
                    end = i + 1  # the rest at the next load or tick
                    break
            else:
                continue
            break
        self._learned_offset = end
        if self._own_rows:  # (one the thread appends meanwhile may go: its rows are parsed then, nothing else)
            self._own_rows = [r for r in self._own_rows if (r[0], r[1]) == here and r[3] > end]

    # ------------------------------------------------------------------ load

    async def _load(self, keys: Sequence[str], mid: str | None, other: str | None = None) -> _Snapshot:
        """The snapshot a transaction decides on: ``mid``'s idempotency key, the clock, the learned links, the
        partitions ``keys`` and, when ``other`` is given (:func:`same_bytes_id`), the idempotency key of that id."""
        k = self.keys
        first = k.seen(mid) if mid is not None else k.clock
        tail = [] if other is None else [k.seen(other)]
        while True:
            self._skip_own()
            floor = self._floor()
            epoch, offset, gen = floor[0], floor[1], self._learned_gen
            res = await self._load_script(
                keys=[first, k.clock, k.learned, k.epoch, k.learned_gen, k.commits, k.learned_owed(epoch), *keys,
                      *tail],
                args=[offset, epoch or "", gen, self.learned_page, "1" if tail else ""],
            )  # fmt: skip
            current = (self.epoch, self._learned_gen) == (epoch, gen)
            if current and self._in_sync(res[3], res[4], int(res[5]), int(res[6]), floor):
                # another instance still owes the list links it held before a loss this instance did not see
                self._owed = int(res[7])
                self.links_partial = self._owed > 0 and not self._read_before_loss
                break
            if current:  # the state is not the one this instance was reading
                await self._sync_shared()
            # (else another transaction of this instance brought it up to date while this one read: again)
        # the new links (a page at most), applied before anything else runs (a later load may not apply them again)
        self._apply_learned(res[2], offset, self.learned_budget)
        # rows of the list as this load read it that this instance has not applied (a later page): it lags
        lagging = self._note_lag(int(res[5]))
        seen = res[0] if mid is not None else None
        clock = None if res[1] is None else _from_us(int(res[1]))
        snap = _Snapshot(seen, clock, list(res[2]), offset, {}, {}, {}, {}, {}, lagging=lagging)
        if other is not None:
            snap.other_id, snap.other = other, res[8 + len(keys)]
        for key, flat in zip(keys, res[8 : 8 + len(keys)], strict=True):
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            snap.versions[key] = fields.get(b"v", b"0")
            for name, value in fields.items():
                tag, _, rest = name.decode().partition(":")
                if tag == "v" and not rest:
                    continue
                rec = json.loads(value)
                if tag == "a":
                    snap.rows[("activation", rest)] = rec
                elif tag == "h":
                    if rest not in snap.held:
                        snap.held[rest] = from_record(HeldMessage, rec)
                        snap.rows[("held", rest)] = rec
                elif tag == "s":
                    if rest not in snap.suppressed:
                        snap.suppressed[rest] = from_record(SuppressedOutage, rec)
                        snap.rows[("suppressed", rest)] = rec
                elif tag == "u":
                    snap.rows[("unverified", rest)] = rec
                    snap.unverified[rest] = int(rec["esme"])
                elif tag == "o":  # a held AD1 of this Comms Hub: its record is in E of its ESMEs
                    snap.hub_holds[rest] = (key, [int(e) for e in rec])
        return snap

    def _closure(self, event: MessageEvent | None, snap: _Snapshot) -> set[str]:
        need: set[str] = set() if event is None else partition_keys(self.keys.prefix, event, self.inventory)
        for held in snap.held.values():
            need |= partition_keys(self.keys.prefix, held, self.inventory)
        need |= {self.keys.esme(e) for _, esmes in snap.hub_holds.values() for e in esmes}
        return need

    # ------------------------------------------------------------------ decide

    async def decide(
        self, event: MessageEvent, raw: bytes | None, route: tuple[str, str] | None = None
    ) -> TxResult:
        """Decide one message event against the shared state (retrying on conflicts). ``route``: the DNO
        destination and DUIS kind the ingress recorded for the message (``(destination, kind)``, kind ""
        when unknown); when the message is held they are written in the hold's own commit
        (``route:<id>``, ``route-kind:<id>``), so no instance can see the hold without its route."""
        assert not isinstance(event, Tick)
        return await self._transact(event, raw, set(), None, route)

    async def _transact(
        self,
        event: MessageEvent | None,
        raw: bytes | None,
        extra: set[str],
        tick_to: datetime | None,
        route: tuple[str, str] | None = None,
    ) -> TxResult:
        mid = None if event is None else event.message_id
        # the other id the same bytes may have been decided under (docs/ENGINE.md §8): its key is loaded too
        other = None if event is None else same_bytes_id(event)
        if event is not None:  # clock = "wall": an arrival this host stamped ahead of Redis time is not taken
            event = self._bounded_arrival(event, None)
        ev = event
        #: suppressed AD1s an operator released (their shared marker exists) that a commit of this
        #: transaction refused to pair a restoration with: marked released in the view from then on
        released: set[str] = set()
        #: markers by message id a version before lives left on an earlier life of an AD1 paired with (not a
        #: release of the life paired with): ``(id, life µs)`` → the marker's text, not refused again
        accepted: dict[tuple[str, int], bytes] = {}
        for attempt in range(1, self.config.max_retries + 1):
            parts = set(extra) | (
                partition_keys(self.keys.prefix, ev, self.inventory) if ev is not None else set()
            )
            while True:
                keys = sorted(parts)
                snap = await self._load(keys, mid, None if other is None else other[0])  # (it applied new links)
                need = self._closure(ev, snap) | parts
                if need <= set(keys):
                    break
                parts = need
            if snap.seen is not None and not self._seen_expired(snap.seen, snap.clock, tick_to):
                dup = _duplicate(mid or "", snap.seen)
                dup.attempts = attempt
                return dup
            if snap.other is not None and event is not None and other is not None:
                # the same bytes decided under their other id (their XML signature verified at one delivery and
                # not at the other): the duplicate of that decision, as on a single node (``Engine._same_bytes``)
                twin = self._same_bytes_duplicate(event, other[1], snap.other, snap.clock, tick_to)
                if twin is not None:
                    twin.attempts = attempt
                    return twin
            # (a key past retention by the gateway clock is decided afresh, as the single node pruned its
            # Seen; the commit checks that the key is still the one read)
            result = await self._attempt(event, raw, snap, keys, tick_to, route, released, accepted)
            if isinstance(result, _Refused):
                # a release marker by message id that a version before lives left on an earlier life: not this
                # life's release, the commit is tried again accepting it (each text once: no loop)
                accepted.update(result.accepted)
                if not result.outages:
                    continue
                # not a conflict: decided again at once without those AD1s (each is refused once: a
                # transaction cannot loop on them), as the releasing instance's take-in will leave the state
                _log.warning("shared state: a restoration alert was paired with an AD1 an operator released "
                             "meanwhile: nothing committed, deciding again without it",
                             extra={"message_id": mid, "outages": result.outages})  # fmt: skip
                released.update(result.outages)
                self.release_refusals += 1
                continue
            if isinstance(result, _Skewed):
                # this host's clock is ahead of Redis time by more than the tolerance (and the estimate
                # taken at the last tick did not know yet): decided again at Redis time, nothing committed
                self._observe_redis_time(result.redis_now, time.time())
                if event is not None:
                    ev = event = self._bounded_arrival(event, result.redis_now)
                if tick_to is not None and tick_to > result.redis_now:
                    tick_to = result.redis_now
                continue
            if result is not None:
                result.attempts = attempt
                return result
            self.conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise StoreError(f"shared state: no commit after {self.config.max_retries} attempts (contention)")

    # ------------------------------------------------------------------ the host clock against Redis time

    def _clock_arg(self, new_clock: datetime | None) -> str | int:
        """The commit's clock argument: the clock it moves to, with the bound past Redis time it may not move
        beyond (``clock = "wall"``; the script refuses it, ``{'skew', Redis time}``)."""
        if new_clock is None:
            return ""
        if self.config.max_clock_ahead is None:
            return _us(new_clock)
        return f"{_us(new_clock)}/{int(self.config.max_clock_ahead * 1_000_000)}"

    def _observe_redis_time(self, redis_now: datetime, host: float) -> None:
        """Redis time ``redis_now`` was read when this host's clock said ``host`` (seconds since the epoch)."""
        self.clock_skew = host - _us(redis_now) / 1_000_000

    def _bounded_arrival(self, event: MessageEvent, redis_now: datetime | None) -> MessageEvent:
        """``clock = "wall"``: ``event`` with its arrival (this host's clock when it received it) taken back to
        Redis time when it is more than ``max_clock_ahead`` ahead of it: a host clock ahead must not move the
        shared clock (every hold deadline and retention follows it). Redis time is ``redis_now`` (a commit
        refused it) or estimated from the skew measured at the last tick (none yet: the commit is the check).
        The message's own times, which every window test uses, are not touched."""
        ahead = self.config.max_clock_ahead
        if ahead is None:
            return event
        arrival = event.arrival if event.arrival.tzinfo is not None else event.arrival.replace(tzinfo=UTC)
        if redis_now is None:
            if self.clock_skew is None:
                return event
            redis_now = _from_us(int((time.time() - self.clock_skew) * 1_000_000))
        if (arrival - redis_now).total_seconds() <= ahead:
            return event
        self.clock_refused["message"] += 1
        self._warn_skew("a message's arrival", arrival, redis_now)
        return replace(event, arrival=redis_now)

    def _warn_skew(self, what: str, host: datetime, redis_now: datetime, *, taken: bool = True) -> None:
        """A WARNING at most once a minute (the times it was not logged since are counted in the next)."""
        mono = time.monotonic()
        if mono - self._skew_warned < 60:
            self._skew_unwarned += 1
            return
        if taken:
            _log.warning(
                "shared state: %s (%s, this host's clock) is %.3f s ahead of Redis time %s, more than "
                "max_clock_ahead (%s s): Redis time taken in its place (%d more since the last warning); "
                "check this host's time synchronisation (NTP)",
                what, host.isoformat(), (host - redis_now).total_seconds(), redis_now.isoformat(),
                self.config.max_clock_ahead, self._skew_unwarned,
                extra={"instance": self.instance},
            )  # fmt: skip
        else:
            _log.warning(
                "shared state: %s (%s) is %.3f s ahead of Redis time %s (it never goes back: holds and "
                "retention run that far ahead until Redis time catches up; see docs/SCALE-OUT.md, The clock)",
                what, host.isoformat(), (host - redis_now).total_seconds(), redis_now.isoformat(),
                extra={"instance": self.instance},
            )  # fmt: skip
        self._skew_warned = mono
        self._skew_unwarned = 0

    def _seen_expired(self, stored: bytes, clock: datetime | None, tick_to: datetime | None) -> bool:
        """Whether an idempotency key is past retention by the gateway clock the transaction runs at
        (the engine prunes a ``Seen`` once ``at + retention <= clock``)."""
        return self._past_retention(from_record(Seen, json.loads(stored)).at, clock, tick_to)

    def _past_retention(self, at: datetime, clock: datetime | None, tick_to: datetime | None) -> bool:
        if tick_to is not None and (clock is None or tick_to > clock):
            clock = tick_to
        return clock is not None and at + self.engine_config.keep_for <= clock

    def _same_bytes_duplicate(
        self, event: MessageEvent, unsigned: bool, stored: bytes, clock: datetime | None, tick_to: datetime | None
    ) -> TxResult | None:
        """The duplicate of the same bytes decided under their other id, whose idempotency key ``stored`` the load
        read (:func:`same_bytes_id`), when it is one — the single-node engine's rules (``Engine._same_bytes``,
        docs/ENGINE.md §8): the key is within retention by the gateway clock, and it is the *signed twin*'s kept
        with this event's digest (different bytes naming the identity have another), or (``unsigned``) the key of
        an inline message forwarded under the id the same bytes have unsigned (the DNO has them; a quarantined copy
        was withheld from it: not its duplicate — unless an operator released it since, its key marked
        :data:`RELEASED_NOTE` by the take-in, :meth:`release_by_operator`: the DNO has them then). None: decided
        afresh. The :class:`Duplicate` names the delivery's
        own id; its ``original`` is the other id's decision (None for an observation)."""
        data = json.loads(stored)
        seen = from_record(Seen, data)
        if self._past_retention(seen.at, clock, tick_to):
            return None
        d = seen.decision
        if unsigned:
            if d is None or not (d.action is Action.FORWARD or _released_quarantine(seen)):
                return None
        elif seen.digest is None or seen.digest != event.digest:
            return None
        by = data.get("by") if isinstance(data, dict) else None
        return TxResult([Duplicate(event.message_id, d)], decided_by=by if isinstance(by, str) else "")

    async def _attempt(
        self,
        event: MessageEvent | None,
        raw: bytes | None,
        snap: _Snapshot,
        keys: Sequence[str],
        tick_to: datetime | None,
        route: tuple[str, str] | None = None,
        released_ids: set[str] | frozenset[str] = frozenset(),
        accepted: dict[tuple[str, int], bytes] | None = None,
    ) -> TxResult | _Refused | _Skewed | None:
        """One load's decision and its commit: the transaction's result, None on a conflict (load again),
        :class:`_Refused` when a restoration alert was paired with a suppressed AD1 whose operator-release
        marker of the life paired with exists (``released_ids``: those AD1s, marked released in the view: decided
        as if already taken in), or whose marker by message id a version before lives left was not known yet to be
        another life's (``accepted``: those known), or :class:`_Skewed` when the commit would have moved the shared
        clock more than ``max_clock_ahead`` past Redis time (``clock = "wall"``: the event's arrival is from a host
        clock ahead)."""
        view_inv = _ViewInventory(self.inventory)
        rows = [
            (t, key, {**rec, "released": True}) if t == "suppressed" and key in released_ids else (t, key, rec)
            for t, key, rec in snap.rows_list()
        ]
        clock = snap.clock
        if tick_to is not None and (clock is None or tick_to > clock):
            clock = tick_to
        view = Engine.restore(self.engine_config, self.scope, view_inv, rows)
        effects: list[Effect] = []
        if clock is not None:
            effects.extend(view.handle(Tick(clock)))
        if event is not None:
            effects.extend(view.handle(cast(Event, event)))
        withheld: Decision | None = None
        if (self.links_partial or snap.lagging) and isinstance(event, PowerOutage):
            # after a loss this instance did not read the state before, the learned list still lacks links another
            # instance holds (it owes them): the links this AD1 was joined on may be stale (a meter moved off the
            # hub). Not suppressed or held on them: decided with no ESME joined through its hub or MPAN (forwarded)
            withheld = next((d for d in effects if isinstance(d, Decision) and d.message_id == event.message_id
                             and d.action in (Action.SUPPRESS, Action.HOLD)), None)  # fmt: skip
            if withheld is not None:
                view_inv = _HubUnjoined(self.inventory, event.ch, event.mpan)
                view = Engine.restore(self.engine_config, self.scope, view_inv, rows)
                effects = list(view.handle(Tick(clock))) if clock is not None else []
                effects.extend(view.handle(cast(Event, event)))
        ops = _Ops()
        k = self.keys
        seen_idx = ops.idx(k.seen(event.message_id)) if event is not None else 0
        seen_was: bytes = snap.seen or b""
        clock_idx = ops.idx(k.clock)
        held_idx = ops.idx(k.held)
        written: set[str] = set()
        held_now: dict[str, HeldMessage] = dict(snap.held)
        new_clock = view.clock
        released: list[Released] = []
        keep = self._safety_ttl
        mid = None if event is None else event.message_id
        pairings = _pairings(effects, snap)
        for eff in effects:
            if isinstance(eff, StateChange):
                self._translate(eff, ops, written, held_now, snap, event, raw, keep, route)
            elif isinstance(eff, Decision):
                rec = to_record(eff)
                if self.config.decision_log > 0:
                    ops.add("xadd", k.decisions, self.config.decision_log,
                            _dumps({"owner": self.instance, "decision": rec}))  # fmt: skip
                if eff.action in (Action.SUPPRESS, Action.RELEASE_SUPPRESS) and self.config.export_days > 0:
                    self._index_suppression(ops, eff, rec, route if eff.message_id == mid else None)
                if eff.action in (Action.SUPPRESS, Action.RELEASE_SUPPRESS):
                    self._index_pairings(ops, eff, pairings.get(id(eff), ()))
                if eff.message_id != mid:  # a release: kept in Redis until recorded locally
                    held = held_now.get(eff.message_id) or snap.held.get(eff.message_id)
                    if held is None:  # pragma: no cover - a release always has its held record
                        raise StoreError(f"release of {eff.message_id!r} without its held record")
                    released.append(Released(eff, held.event, None, self.instance))
                    ops.add("znow", k.released, eff.message_id)  # the lease runs on Redis time
                    ops.add("set", k.release(eff.message_id),
                            _dumps({"owner": self.instance, "decision": rec, "event": encode_tagged(held.event)}), 0)  # fmt: skip
        for ref, (part, _esmes) in sorted(snap.hub_holds.items()):
            if ref not in snap.held:  # its hold was released by an older instance, which leaves the reference
                written.add(part)
                ops.add("hdel", part, f"o:{ref}")
        checks: list[str | bytes | int] = []
        for key in keys:
            checks.extend((ops.idx(key), snap.versions[key]))
        if snap.other_id is not None:
            # the key of the same bytes' other id as loaded (none, or one that was not their decision): a commit
            # under it meanwhile (another instance deciding the other id at once) refuses this one, which loads again
            # and answers the duplicate of it
            checks.extend((-ops.idx(k.seen(snap.other_id)), snap.other or b""))
        # the operator-release markers of the AD1s its restorations were paired with, of the life paired with (a
        # release of an earlier life of the message id is not this one's): `duisgw audit release` takes the
        # marker before anything else, so one taken before this commit is seen by it, and a release taken after
        # it finds the pairing (the shared suppression index, written by this commit)
        markers: list[str | bytes | int] = []
        paired = _paired_lives(effects, snap)
        for outage_id, life in paired:
            by_id = ops.idx(k.operator_release(outage_id))
            own = by_id if life is None else ops.idx(k.operator_release_life(outage_id, life))
            ok = b"" if life is None else (accepted or {}).get((outage_id, _us(_aware(life))), b"")
            markers.extend((own, by_id, outage_id, ok))
        copy = _quarantined_copy(event, snap)
        if copy is not None:
            # the same bytes quarantined under their unsigned id (``snap.other``), not taken in as released: an
            # operator's release of that copy (``duisgw audit release`` takes its marker first) makes this message
            # its duplicate (the DNO has the bytes) — refused, answered so, as after the releasing instance's
            # take-in (:meth:`release_by_operator`), where a single node refuses the batch (CopyOfReleasedMessage)
            copy_id, copy_life = copy
            markers.extend((ops.idx(k.operator_release_life(copy_id, copy_life)), ops.idx(k.operator_release(copy_id)),
                            copy_id, (accepted or {}).get((copy_id, _us(_aware(copy_life))), b"")))  # fmt: skip
            paired = [*paired, (copy_id, copy_life)]
        bumps = self._bumps(ops, written, held_now, view, new_clock)
        under = self.epoch  # the epoch the commit checks (:meth:`_epoch_args`): the one it commits under
        argv: list[str | bytes | int] = [
            seen_idx,
            clock_idx,
            self._clock_arg(new_clock),
            held_idx,
            seen_was,
            len(checks) // 2,
            *checks,
            len(paired),
            *markers,
            len(bumps) // 2,
            *bumps,
            *ops.ops,
            *self._epoch_args(ops),
        ]
        res = await self._commit(keys=ops.keys, args=argv)
        status = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        if status == "dup":
            return _duplicate(mid or "", res[1])
        if status in ("conflict", "epoch"):  # (epoch: the state was lost since the load, which notices it)
            return None
        if status in ("released", "legacy"):
            refused = (_Refused([_bytes(m).decode() for m in res[1:]]) if status == "released"
                       else _legacy_refusal(paired, res[1:]))  # fmt: skip
            if copy is not None and copy[0] in refused.outages and event is not None and snap.other is not None:
                # the release of the quarantined copy of these bytes: this message is its duplicate
                return _duplicate_of_copy(event.message_id, snap.other)
            return refused
        if status == "skew":
            return _Skewed(_from_us(int(res[1])))
        if withheld is not None and snap.lagging:
            self.partial_forwards += 1
            self.lag_forwards += 1
            _log.warning("shared state: AD1 %s forwarded, not %s (%s): this instance has not read the learned inventory "
                         "links to the end of the shared list yet (it catches up a page per load and tick), and rows "
                         "it has not read may change the links it was joined on", withheld.message_id,
                         withheld.action.value, withheld.reason, extra={"message_id": withheld.message_id,
                                                                        "instance": self.instance})  # fmt: skip
        elif withheld is not None:
            self.partial_forwards += 1
            _log.warning("shared state: AD1 %s forwarded, not %s (%s): the learned inventory links are incomplete "
                         "after the loss of the shared state (another instance is still publishing back those it "
                         "holds), and the links it was joined on may be stale", withheld.message_id,
                         withheld.action.value, withheld.reason, extra={"message_id": withheld.message_id,
                                                                        "instance": self.instance})  # fmt: skip
        for fact in view_inv.pending:
            if isinstance(fact, HubEnd):
                self.inventory.end_hub(fact.ch, fact.time)
                self._learned_hubs.add(fact.ch)
            else:
                self.inventory.learn_link(fact)
                self._learned_esmes.add(fact.esme)
        if res[1]:
            self.clock = _from_us(int(res[1]))
        self.held_count = int(res[2])
        if released:
            raws = await self.redis.mget([k.raw(r.decision.message_id) for r in released])
            for r, body in zip(released, raws, strict=True):
                r.raw = _bytes(body) if body else None
        return TxResult(effects, released, epoch=under, texts=ops.texts)

    def _index_suppression(
        self, ops: _Ops, eff: Decision, rec: dict[str, Any], route: tuple[str, str] | None
    ) -> None:
        """Add ``eff`` (a suppression) to the shared suppression index of its UTC day (``duisgw audit
        export``), in the decision's own commit: listed once whichever instance decided it. ``route``: the
        message's destination and kind when this transaction received it; a released hold's are copied from
        its shared route keys by the script."""
        k = self.keys
        mid = eff.message_id
        at = eff.decided_at if eff.decided_at.tzinfo is not None else eff.decided_at.replace(tzinfo=UTC)
        day = at.astimezone(UTC).date()
        row = {key: rec[key] for key in _INDEX_FIELDS if key in rec}
        row["evidence"] = [{"message_id": e.message_id} for e in eff.evidence if e.message_id]
        row["by"] = self.instance
        dest, kind = route if route is not None else ("", "")
        ops.add("sup", k.suppressions(day),
                0 if route is not None else ops.idx(k.route(mid)), 0 if route is not None else ops.idx(k.route_kind(mid)),
                mid, _dumps(row), self.config.export_days * 86_400 + 86_400, dest, kind, _us(at))  # fmt: skip

    def _index_pairings(self, ops: _Ops, eff: Decision, lives: Sequence[tuple[str, datetime | None]]) -> None:
        """Add the suppression ``eff``, a restoration's, to the pairing index of each AD1 it was paired with
        (``lives``: ``(AD1 id, the life paired with)``, :func:`_pairings`; none for any other suppression), in the
        decision's own commit, and mark the time the index began (every suppression's commit sets it if absent: the
        first one's time stays). The key lives as the suppression index's days do after its last write (at least
        twice the retention: ``export_days`` 0 keeps no day index, the pairing index is still what a release
        reads)."""
        k = self.keys
        at = _aware(eff.decided_at)
        ops.add("setnx", k.paired_since, _us(at))
        ttl = max(self.config.export_days * 86_400 + 86_400, self._safety_ttl)
        for outage_id, life in lives:
            key = k.paired(outage_id)
            life_us = "-" if life is None else str(_us(_aware(life)))
            field = f"{life_us}:{_us(at)}:{eff.message_id}"
            ops.add("hset", key, field, _pairing_row(eff, at, life, self.instance))
            ops.add("expire", key, ttl)

    def _bumps(
        self,
        ops: _Ops,
        written: set[str],
        held_now: dict[str, HeldMessage],
        view: Engine,
        clock: datetime | None,
    ) -> list[str | bytes | int]:
        """``(index, TTL)`` of every partition written, flat. The TTL is a memory safety net, never the
        retention (the engine prunes by the gateway clock): none while the partition holds a held message
        (released when the gateway clock passes its deadline, however late in wall time), else the safety
        TTL plus how far past the clock its latest activation's retention ends (a future-dated activation
        is kept until retention after its execution time)."""
        k = self.keys
        holding = {k.esme(e) for h in held_now.values() for e in h.esmes}
        holding |= {k.ch(h.event.ch) for h in held_now.values() if isinstance(h.event, PowerOutage)}
        until: dict[str, datetime] = {}
        for act in view.activations():
            part, end = k.esme(act.esme), expires_at(act, self.engine_config)
            if part in written and (part not in until or end > until[part]):
                until[part] = end
        out: list[str | bytes | int] = []
        for key in sorted(written):
            ttl = 0
            if key not in holding:
                ttl = self._safety_ttl
                last = until.get(key)
                if last is not None and clock is not None and last > clock:
                    ttl += int((last - clock).total_seconds()) + 1
            out.extend((ops.idx(key), ttl))
        return out

    def _translate(
        self,
        eff: StateChange,
        ops: _Ops,
        written: set[str],
        held_now: dict[str, HeldMessage],
        snap: _Snapshot,
        event: MessageEvent | None,
        raw: bytes | None,
        keep: int,
        route: tuple[str, str] | None = None,
    ) -> None:
        k = self.keys
        table, key, value = eff.table, eff.key, eff.value
        if table is Table.ACTIVATION:
            part = k.esme(int(key.split(":", 1)[0], 16))
            written.add(part)
            if value is None:
                ops.add("hdel", part, f"a:{key}")
            else:
                assert isinstance(value, Activation)
                text = ops.texts[id(value)] = _dumps(to_record(value))
                ops.add("hset", part, f"a:{key}", text)
        elif table is Table.HELD:
            if value is None:
                old = held_now.pop(key, None)
                for e in () if old is None else old.esmes:
                    written.add(k.esme(e))
                    ops.add("hdel", k.esme(e), f"h:{key}")
                if old is not None and isinstance(old.event, PowerOutage):
                    written.add(k.ch(old.event.ch))
                    ops.add("hdel", k.ch(old.event.ch), f"o:{key}")
                ops.add("del", k.held_record(key))
                ops.add("zrem", k.held, key)
                ops.add("hdel", k.unreadable, f"hold:{key}")  # set aside by an instance that could not read it
                # the route stays while held; from the release on it expires with the message's state
                # (the releasing instance, or one taking the release over, reads it after this commit)
                ops.add("expire", k.route(key), self._ttl)
                ops.add("expire", k.route_kind(key), self._ttl)
            else:
                assert isinstance(value, HeldMessage)
                held_now[key] = value
                text = _dumps(to_record(value))
                for e in value.esmes:
                    written.add(k.esme(e))
                    ops.add("hset", k.esme(e), f"h:{key}", text)
                if isinstance(value.event, PowerOutage):
                    # a restoration of any ESME behind the hub loads C(ch) and must find the held AD1
                    written.add(k.ch(value.event.ch))
                    ops.add("hset", k.ch(value.event.ch), f"o:{key}", _dumps(list(value.esmes)))
                ops.add("set", k.held_record(key), text, 0)
                ops.add("zadd", k.held, _us(value.deadline), key)
                if event is not None and key == event.message_id:
                    if raw is not None:
                        ops.add("set", k.raw(key), raw, 0)
                    if route is not None:  # in the hold's own commit: never a hold without its route
                        dest, kind = route
                        ops.add("set", k.route(key), dest.encode(), 0)
                        if kind:
                            ops.add("set", k.route_kind(key), kind.encode(), 0)
        elif table is Table.SEEN:
            if value is None:
                ops.add("del", k.seen(key))
                ops.add("zrem", k.seen_expiry, key)
            else:
                assert isinstance(value, Seen)
                # "by": the instance that decided, for another instance answering a re-delivery as a duplicate
                # (its local audit says whose decision it recorded); from_record ignores the extra field
                ops.add("set", k.seen(key), _dumps({**to_record(value), "by": self.instance}), keep)
                # swept by the tick once the gateway clock passes its retention (the engine's rule)
                ops.add("zadd", k.seen_expiry, _us(value.at + self.engine_config.keep_for), key)
        elif table is Table.SUPPRESSED:
            rec = value if value is not None else snap.suppressed.get(key)
            if rec is None:
                return
            assert isinstance(rec, SuppressedOutage)
            parts = [k.esme(e) for e in rec.esmes] + [k.ch(rec.ch)]
            stext: str | None = None if value is None else _dumps(to_record(value))
            for part in parts:
                written.add(part)
                if stext is None:  # pruned: a record past retention, removed wherever it is
                    ops.add("hdel", part, f"s:{key}")
                else:
                    ops.add("hset", part, f"s:{key}", stext)
        elif table is Table.UNVERIFIED:
            if value is None:
                esme = snap.unverified.get(key)
                if esme is not None:
                    written.add(k.esme(esme))
                    ops.add("hdel", k.esme(esme), f"u:{key}")
            else:
                assert isinstance(value, UnverifiedEvidence)
                written.add(k.esme(value.esme))
                ops.add("hset", k.esme(value.esme), f"u:{key}", _dumps(to_record(value)))
        elif table is Table.LEARNED:
            assert isinstance(value, LearnedLink)
            ops.add("rpush", k.learned, _dumps(to_record(value)))
        elif table is Table.HUB_END:  # in the learned list too: every instance applies it in its order
            assert isinstance(value, HubEnd)
            ops.add("rpush", k.learned, _dumps(to_record(value)))
        # Table.CLOCK: the shared clock is moved to max(clock, view clock) by the commit itself

    # ------------------------------------------------------------------ operator releases

    async def release_by_operator(self, mid: str, ch: int | None, life: datetime | None = None) -> bool:
        """An operator released the suppressed AD1 ``mid`` of Comms Hub ``ch`` (``duisgw audit release``):
        mark its suppressed-outage record released in the shared state, wherever it is (``s:<mid>`` in
        ``C(ch)`` and in ``E`` of every ESME it names; kept for its retention, as on a single node:
        :meth:`Engine.released_by_operator`), in one compare-and-set transaction like any decision: the
        versions of every partition read are checked and those written are bumped, so a restoration
        being paired with it on another instance either commits first (paired, as on a single node
        whose scan came later) or is retried against the state with it released. Idempotent: False when
        the record is not there (pruned past retention) or already released. ``life``: the time of the
        suppression decision of the life released (the record keeps it, ``decided_at``): a record of another life
        — the message id delivered again past the retention and suppressed afresh, by any instance, before this
        instance took the release in late (stopped, or Redis out of its reach meanwhile) — is not this release's,
        and is left as it is (False), as a single node, which took the release in before that life began, leaves
        it. None: whatever life the state holds (a release whose life is not known).

        An inline message quarantined under its unsigned id (``<identity>#unverified:<digest>``, ``seen:<mid>`` holding
        a ``quarantined-unverified`` decision; ``ch`` its hub when it is an AD1, else None): :meth:`_release_quarantined`
        (its key marked released, a quarantined AD1 kept as a released outage, as on a single node)."""
        if UNSIGNED_MARK in mid:
            done = await self._release_quarantined(mid, life)
            if done is not None:
                return done
        if ch is None:
            return False
        k = self.keys
        for attempt in range(1, self.config.max_retries + 1):
            parts = {k.ch(ch)}
            while True:
                keys = sorted(parts)
                snap = await self._load(keys, None)  # (it applied the new learned links)
                rec = snap.suppressed.get(mid)
                need = set(parts) if rec is None else parts | {k.ch(rec.ch)} | {k.esme(e) for e in rec.esmes}
                for held in snap.held.values():  # the restored view holds whole records, as in decide()
                    need |= partition_keys(k.prefix, held, self.inventory)
                need |= {k.esme(e) for _, esmes in snap.hub_holds.values() for e in esmes}
                if need <= set(keys):
                    break
                parts = need
            if rec is None or rec.released:
                return False
            if life is not None and _us(_aware(rec.decided_at)) != _us(_aware(life)):
                return False  # another life of the message id (see above)
            view = Engine.restore(
                self.engine_config, self.scope, _ViewInventory(self.inventory), snap.rows_list()
            )
            ops = _Ops()
            clock_idx = ops.idx(k.clock)
            held_idx = ops.idx(k.held)
            written: set[str] = set()
            held_now = dict(snap.held)
            for eff in view.released_by_operator(mid):
                if isinstance(eff, StateChange):
                    self._translate(eff, ops, written, held_now, snap, None, None, 0)
            checks: list[str | bytes | int] = []
            for key in keys:
                checks.extend((ops.idx(key), snap.versions[key]))
            bumps = self._bumps(ops, written, held_now, view, snap.clock)
            argv: list[str | bytes | int] = [0, clock_idx, "", held_idx, "", len(keys), *checks, 0, len(bumps) // 2,
                                             *bumps, *ops.ops, *self._epoch_args(ops)]  # fmt: skip
            res = await self._commit(keys=ops.keys, args=argv)
            status = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
            if status == "ok":
                return True
            self.conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise StoreError(f"shared state: no commit after {self.config.max_retries} attempts (contention)")

    async def _release_quarantined(self, mid: str, life: datetime | None) -> bool | None:
        """The operator release of the inline message quarantined under its unsigned id ``mid`` (its own XML signature
        failed, ``quarantine_unverified_inline``), taken in as a single node takes it in
        (:meth:`Engine.released_by_operator`, docs/ENGINE.md §8): its idempotency key ``seen:<mid>`` is rewritten with
        the note :data:`RELEASED_NOTE` (same ``at``, digest, decision and deciding instance), so that the same bytes
        delivered again signed, to any instance, are its duplicate (:meth:`_same_bytes_duplicate`), not decided afresh
        (forwarded a second time, or suppressed while the DNO has them); a quarantined AD1 is kept as a released
        outage (``s:<mid>`` in ``C(ch)`` and ``E`` of the ESMEs its hub and MPAN join now) for its restorations, and
        the suppressed-outage record of its signed copy (the same bytes decided under their verified id before the
        release) is marked released too. One compare-and-set transaction: the partitions read, ``seen:<mid>`` and the
        signed id's key are checked as read. ``life``: the time of the quarantine decision released (another life of
        ``mid``, decided afresh past the retention, is not this release's: False). None: ``seen:<mid>`` is not a
        quarantine's key (nothing of this kind to do); False: gone (past retention), another life, or taken in
        already."""
        k = self.keys
        for attempt in range(1, self.config.max_retries + 1):
            stored = await self.redis.get(k.seen(mid))
            if stored is None:
                return None
            try:
                seen = from_record(Seen, json.loads(stored))
            except _UNREADABLE:  # (a newer version's key: not this version's to mark; never blocks the take-in)
                return None
            decision = seen.decision
            if decision is None or not _quarantine_of(seen):
                return None
            if life is not None and _us(_aware(decision.decided_at)) != _us(_aware(life)):
                return False  # another life of the id
            twin = signed_twin(mid, seen.digest)
            parts: set[str] = set()
            if decision.event_kind == PowerOutage.kind and decision.ch is not None:
                parts.add(k.ch(decision.ch))
                parts.update(k.esme(e) for e in self.inventory.esmes_for_ch(decision.ch))
                if decision.mpan:
                    parts.update(k.esme(e) for e in self.inventory.esmes_for_mpan(decision.mpan))
            while True:
                keys = sorted(parts)
                snap = await self._load(keys, mid, twin)
                need = set(parts)
                for held in snap.held.values():  # the restored view holds whole records, as in decide()
                    need |= partition_keys(k.prefix, held, self.inventory)
                need |= {k.esme(e) for _, esmes in snap.hub_holds.values() for e in esmes}
                if need <= set(keys):
                    break
                parts = need
            if snap.seen != stored:
                continue  # rewritten between the two reads: again
            rows = snap.rows_list()
            if snap.clock is not None:  # the release's time, for a released outage's retention
                rows.append((Table.CLOCK.value, "clock", to_record(ClockRecord(snap.clock))))
            rows.append((Table.SEEN.value, mid, json.loads(stored)))
            if twin is not None and snap.other is not None:
                rows.append((Table.SEEN.value, twin, json.loads(snap.other)))
            view = Engine.restore(self.engine_config, self.scope, _ViewInventory(self.inventory), rows)
            changes = [eff for eff in view.released_by_operator(mid) if isinstance(eff, StateChange)]
            if not changes:
                return False
            ops = _Ops()
            clock_idx = ops.idx(k.clock)
            held_idx = ops.idx(k.held)
            written: set[str] = set()
            held_now = dict(snap.held)
            by = json.loads(stored).get("by")
            for eff in changes:
                if eff.table is Table.SEEN and eff.key == mid and isinstance(eff.value, Seen):
                    # the key as it was (its ``at``: the same retention, its deciding instance), noted released
                    text = _dumps({**to_record(eff.value), **({"by": by} if isinstance(by, str) else {})})
                    ops.add("set", k.seen(mid), text, self._safety_ttl)
                    ops.add("zadd", k.seen_expiry, _us(eff.value.at + self.engine_config.keep_for), mid)
                elif eff.table is Table.SUPPRESSED:
                    self._translate(eff, ops, written, held_now, snap, None, None, 0)
            checks: list[str | bytes | int] = []
            for key in keys:
                checks.extend((ops.idx(key), snap.versions[key]))
            checks.extend((-ops.idx(k.seen(mid)), stored))  # the key as read
            if twin is not None:
                checks.extend((-ops.idx(k.seen(twin)), snap.other or b""))
            bumps = self._bumps(ops, written, held_now, view, snap.clock)
            argv: list[str | bytes | int] = [0, clock_idx, "", held_idx, "", len(checks) // 2, *checks, 0,
                                             len(bumps) // 2, *bumps, *ops.ops, *self._epoch_args(ops)]  # fmt: skip
            res = await self._commit(keys=ops.keys, args=argv)
            if _bytes(res[0]).decode() == "ok":
                return True
            self.conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise StoreError(f"shared state: no commit after {self.config.max_retries} attempts (contention)")

    # ------------------------------------------------------------------ tick, releases

    async def tick(self, now: datetime, limit: int = 256) -> tuple[list[TxResult], list[Released]]:
        """Move the shared clock to ``now`` (never back; ``clock = "wall"``: a ``now`` more than
        ``max_clock_ahead`` ahead of Redis time is not taken, Redis time is), release every hold whose
        deadline it passed (one transaction each; whoever commits first wins), and take over releases whose
        decider did not record them within the lease (Redis time). Returns the transactions and the
        taken-over releases (to be recorded locally, then :meth:`ack_releases`).

        A hold (or a release to take over) whose record this version cannot decode — written by a newer
        version, a reason code added since — is skipped, not deleted: logged and counted once, listed in
        ``{prefix}unreadable`` for an operator, never retried by this instance (an instance that can decode it
        releases it), and it stops neither the other holds nor the take-overs. Any other failure of a hold's
        transaction (Redis unreachable, contention) ends the hold loop for this tick; the take-overs still
        run, and it is raised when nothing was released or taken over (else logged, the rest retried at the
        next tick)."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        await self.check_shared()  # the state lost? the learned list compacted (or due)?
        await self._catch_up()  # rows of the learned list not applied yet: a page or a few (a bounded time)
        k = self.keys
        ahead = self.config.max_clock_ahead
        skipped = len(self._unreadable_holds) + len(self._unreadable_releases)
        before = time.time()
        res = await self._tick(
            keys=[k.clock, k.held, k.released, k.seen_expiry],
            args=[_us(now), "" if ahead is None else int(ahead * 1_000_000), int(self.config.lease * 1000),
                  limit + skipped, _SWEEP_LIMIT],
        )  # fmt: skip
        redis_now = _from_us(int(res[5]))
        self._observe_redis_time(redis_now, (before + time.time()) / 2)
        clock = _from_us(int(res[0]))
        if int(res[6]):
            self.clock_refused["tick"] += 1
            self._warn_skew("a tick's time", now, redis_now)
        elif ahead is not None and (clock - redis_now).total_seconds() > ahead + 1:
            # moved there before this check existed (or Redis's own clock stepped back): it never goes back
            self._warn_skew("the shared gateway clock", clock, redis_now, taken=False)
        self.clock = clock
        self.held_count = int(res[3])
        expired = [_bytes(m).decode() for m in res[4]]
        for more in range(_SWEEP_ROUNDS):
            if not expired:
                break
            await self._sweep(keys=[k.seen_expiry, *[k.seen(m) for m in expired]], args=[res[0], *expired])
            if len(expired) < _SWEEP_LIMIT or more == _SWEEP_ROUNDS - 1:
                break
            got = await self.redis.zrangebyscore(k.seen_expiry, "-inf", int(res[0]), start=0, num=_SWEEP_LIMIT)
            expired = [_bytes(m).decode() for m in got]
        due = [_bytes(m).decode() for m in res[1]]
        if len(due) < limit + skipped:  # every due hold is listed: those not listed were released by others
            self._unreadable_holds &= set(due)
        results: list[TxResult] = []
        failure: Exception | None = None
        for mid in due:
            if mid in self._unreadable_holds:
                continue
            try:
                rec = await self.redis.get(k.held_record(mid))
                if rec is None:
                    continue  # released meanwhile
                held = from_record(HeldMessage, json.loads(rec))
                if held.deadline > clock:
                    continue
                tx = await self._transact(None, None, partition_keys(k.prefix, held, self.inventory), clock)
            except _UNREADABLE as exc:
                await self._set_aside("hold", mid, exc)
                continue
            except Exception as exc:
                failure = exc
                break
            if tx.effects:
                results.append(tx)
        taken = await self.take_over_releases([_bytes(m).decode() for m in res[2]])
        if failure is not None:
            if not results and not taken:
                raise failure
            _log.error("shared state: releasing the held messages due stopped at a failure; the rest are "
                       "released at the next tick", exc_info=failure)  # fmt: skip
        return results, taken

    async def take_over_releases(self, stale: Sequence[str]) -> list[Released]:
        """Take over the releases ``stale`` (their lease ran out), each on its own: one this version cannot
        decode is set aside (see :meth:`tick`) and not claimed again while it exists (``rel:<id>``), stale or
        not (an instance that can decode it may have claimed it, and die before recording it)."""
        await self._forget_releases_gone(stale)
        taken: list[Released] = []
        for mid in stale:
            if mid in self._unreadable_releases:
                continue
            got = await self.take_over(mid)
            if got is not None:
                taken.append(got)
        return taken

    async def _forget_releases_gone(self, stale: Sequence[str]) -> None:
        """Forget the releases set aside (:meth:`_set_aside`) that are gone: acknowledged by an instance that
        could decode them (their ``rel:<id>`` deleted), or lost with the state. One still listed stale is
        still there; the others are looked up (one round trip, only when this instance set any aside)."""
        listed = set(stale)
        unsure = [mid for mid in self._unreadable_releases if mid not in listed]
        if not unsure:
            return
        async with self.redis.pipeline(transaction=False) as p:
            for mid in unsure:
                p.exists(self.keys.release(mid))
            there = await p.execute()
        self._unreadable_releases -= {mid for mid, n in zip(unsure, there, strict=True) if not int(n)}

    async def take_over(self, mid: str) -> Released | None:
        """Claim a release whose decider did not record it within the lease, by Redis time (None: not stale,
        gone, or not decodable by this version: then it is set aside and the claim given back — its lease
        score put back as it was, so that an instance that can decode it takes it over at its next tick)."""
        k = self.keys
        got = await self._claim(
            keys=[k.released, k.release(mid), k.raw(mid)],
            args=[mid, int(self.config.lease * 1000), self.instance],
        )
        if got is None:
            return None
        try:
            rel = json.loads(got[0])
            decision = from_record(Decision, rel["decision"])
            event = decode_tagged(rel["event"])
        except _UNREADABLE as exc:
            await self._set_aside("release", mid, exc)
            try:
                await self._unclaim(keys=[k.released], args=[mid, got[3], got[2]])
            except aioredis.RedisError as err:  # it is taken over a lease later, as before
                _log.warning("shared state: cannot give back the claim of release %s: %s", mid, err)
            return None
        return Released(decision, event, bytes(got[1]) if got[1] else None, str(rel.get("owner") or ""))

    async def _set_aside(self, what: str, mid: str, exc: Exception) -> None:
        """A hold or release (``what``) this version cannot decode: logged and counted once, remembered so
        that this instance does not try it again, and listed in the shared hash ``{prefix}unreadable``
        (field ``hold:<id>`` / ``release:<id>``: the instance, the error and when) for an operator. The record
        stays where it is: an instance that can decode it (a newer version) releases it and removes the
        entry."""
        (self._unreadable_holds if what == "hold" else self._unreadable_releases).add(mid)
        self.unreadable[what] += 1
        _log.error(
            "shared state: cannot decode the %s of message %s (%s: %s), written by another version? Left in "
            "place for an instance that can (listed in %s); this instance will not try it again",
            what, mid, type(exc).__name__, exc, self.keys.unreadable,
            extra={"message_id": mid, "instance": self.instance},
        )  # fmt: skip
        note = {"by": self.instance, "error": f"{type(exc).__name__}: {exc}"[:500],
                "at": datetime.now(UTC).isoformat()}  # fmt: skip
        try:
            await self.redis.hset(self.keys.unreadable, f"{what}:{mid}", _dumps(note))
        except aioredis.RedisError as err:  # the listing is for an operator: the skip itself is local
            _log.warning("shared state: cannot list %s:%s in %s: %s", what, mid, self.keys.unreadable, err)

    async def ack_releases(self, mids: Iterable[str]) -> None:
        """The releases are recorded in this instance's store: drop them (and their bytes) from Redis."""
        ids = list(dict.fromkeys(mids))
        if not ids:
            return
        k = self.keys
        async with self.redis.pipeline(transaction=True) as p:
            p.zrem(k.released, *ids)
            p.delete(*[k.release(m) for m in ids], *[k.raw(m) for m in ids])
            p.hdel(k.unreadable, *[f"release:{m}" for m in ids])  # set aside by an instance that could not read it
            await p.execute()

    async def wait_replicas(self) -> None:
        """``WAIT replicas timeout`` when configured (durability across a Sentinel failover)."""
        if self.config.replicas > 0:
            got = await cast(Any, self.redis).execute_command(
                "WAIT", self.config.replicas, int(self.config.wait_timeout * 1000)
            )
            if int(got) < self.config.replicas:
                raise StoreError(
                    f"shared state: only {int(got)} of {self.config.replicas} replicas acknowledged"
                )

    # ------------------------------------------------------------------ inspection (tests, admin)

    async def decision_log(self) -> list[tuple[str, Decision]]:
        """The shared decision log, oldest first: ``(instance, decision)``."""
        rows = await self.redis.xrange(self.keys.decisions)
        out = []
        for _id, fields in rows or []:
            if not fields or b"d" not in fields:  # an operator release (field "r"), not an engine decision
                continue
            item = json.loads(fields[b"d"])
            out.append((str(item["owner"]), from_record(Decision, item["decision"])))
        return out

    async def routes(self, mids: Sequence[str]) -> dict[str, str]:
        """The DNO destinations recorded with these messages' holds (those known). The kind has a key of its
        own (``route-kind:<id>``) beside the destination (``route:<id>``, as an earlier version wrote it
        after the hold), so a route shared by an earlier version (no kind) still routes."""
        if not mids:
            return {}
        values = await self.redis.mget([self.keys.route(m) for m in mids])
        return {m: _bytes(v).decode() for m, v in zip(mids, values, strict=True) if v}

    async def route_kinds(self, mids: Sequence[str]) -> dict[str, str]:
        """The recorded DUIS kinds of these messages (those known: not a route shared without one)."""
        if not mids:
            return {}
        values = await self.redis.mget([self.keys.route_kind(m) for m in mids])
        return {m: _bytes(v).decode() for m, v in zip(mids, values, strict=True) if v}

    async def held_ids(self) -> list[str]:
        return [_bytes(m).decode() for m in await self.redis.zrange(self.keys.held, 0, -1)]

    # ------------------------------------------------------------------ after a loss of the shared state

    def _epoch_args(self, ops: _Ops) -> list[str | bytes | int]:
        """The commit's last three arguments: the indexes of the epoch key and of the commit counter, and the
        epoch this instance reads under (a state lost since the load refuses the commit, ``{'epoch'}``, before
        anything is written)."""
        return [ops.idx(self.keys.epoch), ops.idx(self.keys.commits), self.epoch or ""]

    async def restore_hold(self, held: HeldMessage, raw: bytes | None, route: tuple[str, str] | None) -> bool:
        """After the shared state was lost: hold ``held`` (a hold this instance committed, as it recorded it:
        :class:`gateway.store.shared.SharedEngine`) again exactly as it was committed — its record in ``E``
        of its ESMEs, its reference in ``C(ch)``, ``hm:``, the original bytes, its route, the held index
        scored by its ORIGINAL deadline, and its idempotency key carrying the hold decision (so that a
        re-delivery is a duplicate of it) — in one compare-and-set transaction like a decision's. The next
        tick of any instance releases it when the deadline passed, or evidence does before, as for any
        hold. Nothing (False) when the message is held already or has an idempotency key (decided since,
        e.g. the DSP re-delivered it to another instance), or when its bytes were forwarded since under the id they
        have unsigned (re-delivered once their XML signature no longer verified, decided afresh since the loss: the
        DNO has them; a quarantined copy does not count, as for :meth:`_same_bytes_duplicate`). The commit checks
        that key is still as read (an instance deciding it meanwhile: loaded again)."""
        k = self.keys
        mid = held.event.message_id
        digest = held.event.digest
        other = None if digest is None else unsigned_id(mid, digest)
        for attempt in range(1, self.config.max_retries + 1):
            parts = partition_keys(k.prefix, held, self.inventory)
            while True:
                keys = sorted(parts)
                snap = await self._load(keys, mid, other)
                need = self._closure(None, snap) | parts
                if need <= set(keys):
                    break
                parts = need
            if snap.seen is not None or mid in snap.held:
                return False
            if snap.other is not None and self._same_bytes_duplicate(held.event, True, snap.other, snap.clock,
                                                                     None) is not None:  # fmt: skip
                return False
            ops = _Ops()
            seen_idx = ops.idx(k.seen(mid))
            clock_idx = ops.idx(k.clock)
            held_idx = ops.idx(k.held)
            written: set[str] = set()
            held_now = dict(snap.held)
            seen = Seen(mid, held.event.kind, held.since, held.decision)
            for eff in (StateChange(Table.HELD, mid, held), StateChange(Table.SEEN, mid, seen)):
                self._translate(eff, ops, written, held_now, snap, held.event, raw, self._safety_ttl, route)
            rows = snap.rows_list()
            view = Engine.restore(self.engine_config, self.scope, _ViewInventory(self.inventory), rows)
            checks: list[str | bytes | int] = []
            for key in keys:
                checks.extend((ops.idx(key), snap.versions[key]))
            if other is not None:  # the unsigned id's key, as read ('' = none: a forward since refuses the commit)
                checks.extend((-ops.idx(k.seen(other)), snap.other or b""))
            bumps = self._bumps(ops, written, held_now, view, snap.clock)
            argv: list[str | bytes | int] = [seen_idx, clock_idx, "", held_idx, "", len(checks) // 2, *checks, 0,
                                             len(bumps) // 2, *bumps, *ops.ops, *self._epoch_args(ops)]  # fmt: skip
            res = await self._commit(keys=ops.keys, args=argv)
            status = _bytes(res[0]).decode()
            if status == "ok":
                self.held_count = int(res[2])
                return True
            if status == "dup":
                return False
            self.conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise StoreError(f"shared state: no commit after {self.config.max_retries} attempts (contention)")

    def bounded_now(self, now: datetime) -> datetime:
        """``now`` (this host's clock, a tick's time) as the tick will take it: ``clock = "wall"``, Redis time
        (estimated from the skew measured at the last tick) when it is more than ``max_clock_ahead`` ahead of it."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        ahead = self.config.max_clock_ahead
        if ahead is None or self.clock_skew is None:
            return now
        redis_now = _from_us(int((time.time() - self.clock_skew) * 1_000_000))
        return redis_now if (now - redis_now).total_seconds() > ahead else now

    async def restore_activations(
        self, esme: int, acts: Sequence[Activation], now: datetime | None = None
    ) -> tuple[list[str], list[str]]:
        """After the shared state was lost: write back into ``E(esme)`` the activation records ``acts`` (this
        instance's newest version of each it committed, as committed: :class:`gateway.store.shared.SharedEngine`)
        that the state does not have, in one compare-and-set transaction like a decision's (the partition's
        version checked and bumped). Of one record (same key) a version is written only over none, or over one
        whose evidence it includes all of and is not the same version (more evidence, or the same evidence
        later): evidence is only ever appended to a record and its ``updated_at`` never goes back, so this
        orders the versions of one record on any instance without a shared counter (the commit count starts
        again with the state); a record knowing evidence this version does not (taken since the loss, or a
        newer version another instance wrote back) is left as it is. A pending future-dated version is
        retracted when the partition holds a cancellation of the meter sent after this version's last change
        and before its execution time (taken since the loss: it retracted nothing then), as the cancellation
        would have retracted it. Nothing is written past its retention by the gateway clock (the shared one, or
        ``now``: the tick about to move it). Returns the keys written and the keys past retention."""
        k = self.keys
        part = k.esme(esme)
        cfg = self.engine_config
        for attempt in range(1, self.config.max_retries + 1):
            snap = await self._load([part], None)  # (it applied the new learned links)
            clock = snap.clock
            if now is not None and (clock is None or now > clock):
                clock = now
            current: dict[str, Activation] = {}
            for (table, key), rec in snap.rows.items():
                if table == "activation":
                    current[key] = from_record(Activation, rec)
            writes: dict[str, Activation] = {}
            expired: list[str] = []
            for act in sorted(acts, key=lambda a: a.key):
                key = format_key(act.key)
                if clock is not None and expires_at(act, cfg) <= clock:
                    expired.append(key)
                    continue
                mine = _retracted(act, current, cfg)
                theirs = current.get(key)
                if theirs is not None:
                    if any(e not in mine.evidence for e in theirs.evidence) or (
                        len(theirs.evidence) == len(mine.evidence) and mine.updated_at <= theirs.updated_at
                    ):
                        continue  # the state knows evidence this version does not, or has this version
                    mine = replace(mine, updated_at=max(mine.updated_at, theirs.updated_at))
                writes[key] = current[key] = mine
            if not writes:
                return [], expired
            ops = _Ops()
            clock_idx = ops.idx(k.clock)
            held_idx = ops.idx(k.held)
            for key, value in writes.items():
                ops.add("hset", part, f"a:{key}", _dumps(to_record(value)))
            rows = [(t, key, rec) for (t, key), rec in snap.rows.items() if t != "activation"]
            rows.extend(("activation", key, to_record(value)) for key, value in current.items())
            view = Engine.restore(cfg, self.scope, _ViewInventory(self.inventory), rows)
            bumps = self._bumps(ops, {part}, dict(snap.held), view, snap.clock)
            argv: list[str | bytes | int] = [0, clock_idx, "", held_idx, "", 1, ops.idx(part), snap.versions[part], 0,
                                             len(bumps) // 2, *bumps, *ops.ops, *self._epoch_args(ops)]  # fmt: skip
            res = await self._commit(keys=ops.keys, args=argv)
            if _bytes(res[0]).decode() == "ok":
                return sorted(writes), expired
            self.conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise StoreError(f"shared state: no commit after {self.config.max_retries} attempts (contention)")

    async def activation_records(self, esmes: Sequence[int]) -> dict[int, list[tuple[str, bytes]]]:
        """The activation records (key, JSON as committed) of ``E(esme)`` of each of ``esmes`` (one MULTI/EXEC)."""
        if not esmes:
            return {}
        async with self.redis.pipeline(transaction=True) as p:
            for esme in esmes:
                p.hgetall(self.keys.esme(esme))
            got = await p.execute()
        out: dict[int, list[tuple[str, bytes]]] = {}
        for esme, fields in zip(esmes, got, strict=True):
            out[esme] = sorted((_bytes(f).decode()[2:], _bytes(v)) for f, v in cast(dict[Any, Any], fields).items()
                               if _bytes(f).startswith(b"a:"))  # fmt: skip
        return out

    async def held_records(self, mids: Sequence[str]) -> dict[str, tuple[bytes, str | None, str | None]]:
        """The held record (``hm:<id>``, as its hold committed it), route and route kind of those of ``mids``
        held now (one MULTI/EXEC)."""
        k = self.keys
        if not mids:
            return {}
        async with self.redis.pipeline(transaction=True) as p:
            for mid in mids:
                p.get(k.held_record(mid))
                p.get(k.route(mid))
                p.get(k.route_kind(mid))
            got = await p.execute()
        out: dict[str, tuple[bytes, str | None, str | None]] = {}
        for at, mid in enumerate(mids):
            rec, dest, kind = got[3 * at : 3 * at + 3]
            if rec is not None:
                out[mid] = (_bytes(rec), _text(dest) if dest else None, _text(kind) if kind else None)
        return out

    async def holding(self, mids: Sequence[str]) -> tuple[str | None, set[str]]:
        """The epoch in force and which of ``mids`` are held now (one MULTI/EXEC: the answer says nothing of a
        state other than that epoch's)."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as p:
            p.get(k.epoch)
            for mid in mids:
                p.zscore(k.held, mid)
            got = await p.execute()
        epoch = None if got[0] is None else _text(got[0])
        return epoch, {mid for mid, score in zip(mids, got[1:], strict=True) if score is not None}


def _bytes(value: object) -> bytes:
    """A reply value as bytes (the client returns bytes; redis-py's types also allow str)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def _learn(inventory: InventoryView, rec: dict[str, Any]) -> None:
    """Apply one row of the learned list: an ESME's learned state, or a hub's end (``ch`` and ``time``,
    no ``esme``: :class:`HubEnd`)."""
    if "esme" not in rec and "time" in rec:
        end = from_record(HubEnd, rec)
        inventory.end_hub(end.ch, end.time)
    else:
        inventory.learn_link(from_record(LearnedLink, rec))


def _retracted(act: Activation, current: dict[str, Activation], cfg: EngineConfig) -> Activation:
    """``act`` (a pending future-dated activation given back after a loss) as the state machine leaves it after
    a cancellation in ``current`` (its partition's records) that would have retracted it: the cancellation
    command's own record (``command`` cancel) of the same meter, sent after ``act``'s last change (so ``act``
    existed, pending, when it was taken) and before ``act``'s execution time (the engine's rule: a cancel does
    not apply to an activation whose time had come). The cancellation may have been taken since the loss (it
    retracted nothing then: ``act`` was not in the state), or before it by an instance that gave its record back
    (that instance retracted ``act`` then, and gives back the same retracted version, which one of the two keeps).
    The retraction is the state machine's own step (:func:`apply`, ``RETRACT``),
    with the cancellation's evidence item — a record only ever made from verified evidence — at the time the
    cancellation was sent (about when it was taken: the version's ``updated_at``)."""
    if act.state is not ActState.PENDING_FUTURE:
        return act
    for other in sorted(current.values(), key=lambda a: a.key):
        sent = other.requested_at
        if other.command != "cancel" or other.esme != act.esme or other.key == act.key or sent is None:
            continue
        if sent <= act.updated_at or (act.execution_time is not None and act.execution_time <= sent):
            continue
        item = next((e for e in other.evidence if e.role == "cancellation"), None)
        if item is None or item in act.evidence:
            continue
        cancel = ActivationRequested(message_id=item.message_id, arrival=sent, verified=True, supplier=other.supplier,
                                     esme=other.esme, counter=other.counter, execution_time=CANCELLATION_SENTINEL,
                                     is_cancellation=True, seen_at=item.time or sent)  # fmt: skip
        done = apply(act, cancel, ActEvent.RETRACT, cfg, sent)
        if done is not None:
            return done
    return act


class _Ids:
    """EUI-64s as a compact array (8 bytes each, where a set of ints costs about 60): appended as they come,
    the duplicates folded away whenever it has doubled since its last fold (the same ESMEs are learned again
    and again: refreshes of their links)."""

    def __init__(self) -> None:
        self._ids = array("Q")
        self._folded = 0

    def add(self, eui: int) -> None:
        self._ids.append(eui)
        if len(self._ids) > 2 * self._folded + 1024:
            self._fold()

    def extend(self, euis: Iterable[int]) -> None:
        self._ids.extend(euis)
        if len(self._ids) > 2 * self._folded + 1024:
            self._fold()

    def _fold(self) -> None:
        self._ids = array("Q", sorted(set(self._ids)))
        self._folded = len(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def copy(self) -> _Ids:
        """A copy (the array's bytes; nothing folded: cheap on the engine loop)."""
        out = _Ids()
        out._ids = array("Q", self._ids)
        return out

    def __iter__(self) -> Iterator[int]:
        """Each id once (the duplicates folded first; not to be added to while iterated)."""
        self._fold()
        return iter(self._ids)


def _compacted_rows(gen: str) -> int:
    """The rows the last compaction left (``m`` of the generation ``G:n:m``; 0 when never compacted)."""
    parts = gen.split(":")
    return int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 0


class _LearnedFold:
    """The learned list folded as a fresh instance applies it (:func:`_learn`): per ESME its learned state
    (:func:`gateway.engine.state.merge_learned` of its rows, each after the end of its hub known at that
    row, :func:`gateway.engine.state.after_hub_end`), per hub its latest end (which ends the hub link of
    the ESMEs learned behind it, as the inventory's ``end_hub`` does). :meth:`rows` writes them as a single
    node keeps them (one row per ESME, then the hub ends: the order ``Engine.restore`` applies them in)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.states: dict[int, LearnedLink] = {}
        self.ends: dict[int, datetime] = {}
        self.behind: dict[int, set[int]] = {}  # hub -> ESMEs whose learned state links them to it

    def _put(self, state: LearnedLink) -> None:
        old = self.states.get(state.esme)
        if old is not None and old.ch is not None and old.ch != state.ch:
            self.behind.get(old.ch, set()).discard(state.esme)
        if state.ch is not None:
            self.behind.setdefault(state.ch, set()).add(state.esme)
        self.states[state.esme] = state

    def add(self, rows: Sequence[bytes]) -> None:
        for row in rows:
            rec = json.loads(row)
            if "esme" not in rec and "time" in rec:
                end = from_record(HubEnd, rec)
                old = self.ends.get(end.ch)
                if old is None or end.time > old:
                    self.ends[end.ch] = end.time
                for esme in sorted(self.behind.get(end.ch, ())):
                    fact = hub_end_fact(self.states[esme], esme, end.ch, end.time)  # (None: linked since)
                    if fact is not None:
                        self._put(merge_learned(self.states[esme], fact))
            else:
                link = from_record(LearnedLink, rec)
                prior = self.states.get(link.esme)
                hub_end = None if link.ch is None else self.ends.get(link.ch)
                self._put(merge_learned(prior, after_hub_end(prior, link, hub_end)))

    def __len__(self) -> int:
        return len(self.states) + len(self.ends)

    def apply(self, inventory: InventoryView) -> None:
        """Apply the fold to ``inventory`` as its rows would be (every ESME's state, then the hub ends)."""
        for state in self.states.values():
            inventory.learn_link(state)
        for ch, at in self.ends.items():
            inventory.end_hub(ch, at)

    def rows(self) -> list[bytes]:
        out = [_dumps(to_record(state)).encode() for state in self.states.values()]
        out.extend(_dumps(to_record(HubEnd(ch, at))).encode() for ch, at in self.ends.items())
        return out


def _paired_lives(effects: Sequence[Effect], snap: _Snapshot) -> list[tuple[str, datetime | None]]:
    """The suppressed AD1s that restoration alerts among ``effects`` were paired with (:func:`paired_outages`),
    each with the *life* paired with: the time of its suppression decision (``SuppressedOutage.decided_at``, which
    names the life's operator-release marker), from the record as it stood when the restoration was decided — the
    transaction's own (an AD1 released suppressed earlier in it) or the loaded one; None when neither is known
    (the message id's marker is then what the commit checks)."""
    wanted = set(paired_outages([effects]))
    if not wanted:
        return []
    now: dict[str, SuppressedOutage | None] = {}
    lives: dict[str, datetime | None] = {}
    for eff in effects:
        if isinstance(eff, StateChange) and eff.table is Table.SUPPRESSED and eff.key in wanted:
            now[eff.key] = eff.value if isinstance(eff.value, SuppressedOutage) else None
        elif isinstance(eff, Decision) and eff.reason is Reason.RESTORATION_PAIRED:
            for item in eff.evidence:
                if item.role != "suppressed-outage" or item.message_id in lives:
                    continue
                rec = now[item.message_id] if item.message_id in now else snap.suppressed.get(item.message_id)
                lives[item.message_id] = None if rec is None else rec.decided_at
    return [(mid, lives.get(mid)) for mid in sorted(wanted)]


def _pairings(effects: Sequence[Effect], snap: _Snapshot) -> dict[int, list[tuple[str, datetime | None]]]:
    """For each restoration decision among ``effects`` paired with suppressed AD1s (``restoration-paired``, its
    ``suppressed-outage`` evidence), by ``id()`` of the decision: ``(AD1 id, the life paired with)``, the life the
    time of the AD1's suppression decision (``SuppressedOutage.decided_at``) in its record as it stood when that
    restoration was decided — replaced earlier in the transaction (an AD1 released suppressed, a new life) or as
    loaded; None when neither is known. Each decision's own: exact where :func:`_paired_lives` keeps one life per
    AD1 for the commit's guard."""
    out: dict[int, list[tuple[str, datetime | None]]] = {}
    now: dict[str, SuppressedOutage | None] = {}
    for eff in effects:
        if isinstance(eff, StateChange) and eff.table is Table.SUPPRESSED:
            now[eff.key] = eff.value if isinstance(eff.value, SuppressedOutage) else None
        elif isinstance(eff, Decision) and eff.reason is Reason.RESTORATION_PAIRED:
            lives: list[tuple[str, datetime | None]] = []
            for item in eff.evidence:
                if item.role != "suppressed-outage" or any(m == item.message_id for m, _ in lives):
                    continue
                rec = now[item.message_id] if item.message_id in now else snap.suppressed.get(item.message_id)
                lives.append((item.message_id, None if rec is None else rec.decided_at))
            if lives:
                out[id(eff)] = lives
    return out


def _pairing_row(eff: Decision, at: datetime, life: datetime | None, instance: str) -> str:
    """A pairing index entry (:meth:`_Keys.paired`): the restoration's id, its suppression's time (µs, ``at``), the
    instance that decided it and the life of the AD1 paired with (µs; None: not known)."""
    return _dumps({"message_id": eff.message_id, "decided_at": _us(at), "by": instance,
                   "life": None if life is None else _us(_aware(life))})  # fmt: skip


def _legacy_refusal(paired: Sequence[tuple[str, datetime | None]], found: Sequence[object]) -> _Refused:
    """The commit's ``{'legacy', id, marker ...}``: markers by message id that a version before lives left, none
    of the life paired with. Each is that life's release when it was made at or after the life's suppression
    (:func:`_legacy_release_of`: refused, decided again with the AD1 marked released), else an earlier life's
    (accepted: the commit is tried again without refusing on it)."""
    lives = dict(paired)
    out = _Refused([])
    for at in range(0, len(found) - 1, 2):
        mid, text = _bytes(found[at]).decode(), _bytes(found[at + 1])
        life = lives.get(mid)
        if life is None or _legacy_release_of(_release_marker(text), life):
            out.outages.append(mid)
        else:
            out.accepted[(mid, _us(_aware(life)))] = text
    return out


def _duplicate(mid: str, stored: bytes) -> TxResult:
    """A duplicate's transaction: the stored decision, and the instance that took it (``by``, beside the
    ``Seen`` record in the idempotency key; absent when an instance of an earlier version wrote it)."""
    data = json.loads(stored)
    seen = from_record(Seen, data)
    by = data.get("by") if isinstance(data, dict) else None
    return TxResult([Duplicate(mid, seen.decision)], decided_by=by if isinstance(by, str) else "")


def _quarantine_of(seen: Seen) -> bool:
    """Whether ``seen`` is the key of an inline message quarantined under its unsigned id (its own XML signature
    failed, ``quarantine_unverified_inline``: kept as suppressed, ``quarantined-unverified``), released or not."""
    d = seen.decision
    return d is not None and d.reason is Reason.QUARANTINED and UNSIGNED_MARK in seen.message_id


def _released_quarantine(seen: Seen) -> bool:
    """Whether ``seen`` is such a quarantined key an operator released since (``duisgw audit release``, taken in:
    :meth:`RedisState.release_by_operator` marked it :data:`RELEASED_NOTE`): the DNO has its bytes, as of a forward."""
    return seen.note == RELEASED_NOTE and _quarantine_of(seen)


def _quarantined_copy(event: MessageEvent | None, snap: _Snapshot) -> tuple[str, datetime] | None:
    """The id and life (the time of its quarantine decision) of the copy of ``event``'s bytes quarantined under their
    unsigned id, whose key the transaction loaded (``snap.other``: :func:`same_bytes_id`) and an operator's release
    of which is not taken in (not :func:`_released_quarantine`: else it is the duplicate already). None: no such key."""
    if event is None or snap.other_id is None or snap.other is None or UNSIGNED_MARK not in snap.other_id:
        return None
    if event.lane != "inline" or UNSIGNED_MARK in event.message_id:
        return None
    try:
        seen = from_record(Seen, json.loads(snap.other))
    except _UNREADABLE:
        return None
    if seen.decision is None or not _quarantine_of(seen) or _released_quarantine(seen):
        return None
    return snap.other_id, seen.decision.decided_at


def _duplicate_of_copy(mid: str, stored: bytes) -> TxResult:
    """The duplicate of the released quarantined copy of ``mid``'s bytes (its key ``stored``): the quarantine's
    decision, and the instance that took it, as :meth:`RedisState._same_bytes_duplicate` answers once the release
    is taken in."""
    data = json.loads(stored)
    seen = from_record(Seen, data)
    by = data.get("by") if isinstance(data, dict) else None
    return TxResult([Duplicate(mid, seen.decision)], decided_by=by if isinstance(by, str) else "")
