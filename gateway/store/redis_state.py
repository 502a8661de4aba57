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

1. **Load** (one MULTI/EXEC snapshot): the message's idempotency key, the shared gateway clock,
   new learned inventory links, and every partition hash of the set (records and versions).
2. **Decide**: ``Engine.restore`` from those records, ``Tick(shared clock)`` (releases holds
   whose deadline the shared clock already passed and prunes records past retention, exactly as
   the single-node engine would have done when its clock passed them), then ``handle(event)``.
3. **Commit** (one Lua script, atomic): if the idempotency key exists the message is a duplicate
   (another instance won: its stored decision is returned); if any partition's version changed
   since the load the commit is refused and steps 1–3 are retried; otherwise every
   ``StateChange`` is written, the versions of the written partitions are bumped, the idempotency
   key is set (``SET NX`` semantics, inside the script), decisions are appended to the shared
   decision log, each suppression is added to its UTC day's shared suppression index (once per message
   id; :mod:`gateway.store.shared_audit`), and the shared clock moves to ``max(clock, new)``. A
   transaction that paired a restoration alert with a suppressed AD1 whose operator-release marker
   exists (``{prefix}operator-release:<id>``: ``duisgw audit release`` took it; the releasing instance
   has not taken the release in, so the AD1's record is still in the partitions) is refused before
   anything is written, and decided again at once with that AD1 marked released in the view (``not-paired``,
   as after the take-in). The marker is taken before the release records anything, so a commit after
   it sees it, and a release whose marker came after the commit finds the pairing in the shared
   suppression index (written by that commit).

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
instance takes the entry over after ``lease`` seconds (:meth:`RedisState.take_over_releases`):
releases are decided once and delivered at least once.

Inventory links learned from traffic are appended to ``{prefix}learned``; every load brings an
instance's inventory up to date before the partition set is computed. Each link is ordered by the
time of its evidence (not by its place in the list), so every instance ends with the newest. A hub's
end (:class:`gateway.engine.state.HubEnd`: ``ch`` and ``time``, no ``esme``) is a row of the same list,
kept per hub by every instance; an instance's inventory learns a transaction's links and hub ends only
after its commit succeeded.

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
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, cast

import redis.asyncio as aioredis

from gateway.engine.activation import Activation, expires_at
from gateway.engine.config import EngineConfig
from gateway.engine.effects import Action, Decision, Duplicate, Effect, StateChange, Table, paired_outages
from gateway.engine.engine import Engine
from gateway.engine.errors import StoreError
from gateway.engine.events import (
    DEVICE_REMOVED,
    HUB_DECOMMISSIONED,
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
)
from gateway.engine.ports import InventoryView, ScopeView
from gateway.engine.records import decode_tagged, encode_tagged, from_record, to_record
from gateway.engine.state import (
    HeldMessage,
    HubEnd,
    LearnedLink,
    Seen,
    SuppressedOutage,
    UnverifiedEvidence,
    after_hub_end,
    merge_learned,
)

__all__ = [
    "RedisState",
    "RedisStateConfig",
    "Released",
    "TxResult",
    "partition_keys",
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
    write (0 = no index)."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "duisgw:"
    instance: str = ""
    lease: float = 30.0
    decision_log: int = 1_000_000
    max_retries: int = 200
    replicas: int = 0
    wait_timeout: float = 1.0
    export_days: int = 92

    def instance_name(self) -> str:
        return self.instance or f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------------------------------ Lua

#: idempotency keys swept per tick and instance at most (every instance ticks every ``tick_interval``: a
#: backlog is caught up over the next ticks; the wall-clock safety TTL bounds it whatever happens)
_SWEEP_LIMIT = 1000

#: Commit: KEYS = every key the transaction reads or writes. ARGV = seen index (0: none), clock
#: index, new clock (µs, "" = none), held-set index, the seen value the decision was taken on ("" =
#: none: any other value is a duplicate), n checks, (index, version)*n, n release markers, (index, message
#: id)*n (the operator-release markers of the suppressed AD1s a restoration alert of the transaction was
#: paired with: one that exists refuses the commit, ``{'released', id...}``, before anything is written),
#: n bumps, (index, TTL s: 0 = none)*n, then ops: ``hset i f v`` | ``hdel i f`` | ``set i v ttl`` | ``del i`` | ``expire i ttl`` |
#: ``zadd i score m`` | ``zrem i m`` | ``rpush i v`` | ``xadd i maxlen v`` |
#: ``sup i marker route route-kind day id row ttl destination kind`` (the suppression index).
_COMMIT = r"""
local seen_idx = tonumber(ARGV[1])
if seen_idx > 0 then
  local v = redis.call('GET', KEYS[seen_idx])
  if v and v ~= ARGV[5] then return {'dup', v} end
end
local n = tonumber(ARGV[6])
local i = 7
for _ = 1, n do
  local cur = redis.call('HGET', KEYS[tonumber(ARGV[i])], 'v') or '0'
  if cur ~= ARGV[i + 1] then return {'conflict', KEYS[tonumber(ARGV[i])]} end
  i = i + 2
end
local nr = tonumber(ARGV[i])
i = i + 1
local released = {}
for _ = 1, nr do
  if redis.call('EXISTS', KEYS[tonumber(ARGV[i])]) == 1 then released[#released + 1] = ARGV[i + 1] end
  i = i + 2
end
if #released > 0 then return {'released', unpack(released)} end
local cidx = tonumber(ARGV[2])
if ARGV[3] ~= '' then
  local cur = redis.call('GET', KEYS[cidx])
  if (not cur) or tonumber(cur) < tonumber(ARGV[3]) then redis.call('SET', KEYS[cidx], ARGV[3]) end
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
local last = #ARGV
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
  elseif op == 'zrem' then
    redis.call('ZREM', k, ARGV[i + 2]); i = i + 3
  elseif op == 'rpush' then
    redis.call('RPUSH', k, ARGV[i + 2]); i = i + 3
  elseif op == 'sup' then
    -- the shared suppression index: ARGV = hash, marker, route, route-kind (key indexes; 0 = none), day,
    -- id, row, ttl, destination, kind. Once per message id: a message decided afresh after its idempotency
    -- key's retention stays on the day of its first suppression (marker), listed once.
    local marker = KEYS[tonumber(ARGV[i + 2])]
    local day, mid, ttl = ARGV[i + 5], ARGV[i + 6], tonumber(ARGV[i + 8])
    local was = redis.call('GET', marker)
    if (not was) or was == day then
      redis.call('SET', marker, day, 'EX', ttl)
      if redis.call('HSETNX', k, 'd:' .. mid, ARGV[i + 7]) == 1 then
        local dest, kind = ARGV[i + 9], ARGV[i + 10]
        local ri, ki = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
        if dest == '' and ri > 0 then dest = redis.call('GET', KEYS[ri]) or '' end
        if kind == '' and ki > 0 then kind = redis.call('GET', KEYS[ki]) or '' end
        if dest ~= '' then redis.call('HSET', k, 'r:' .. mid, dest) end
        if kind ~= '' then redis.call('HSET', k, 'k:' .. mid, kind) end
      end
      redis.call('EXPIRE', k, ttl)
    end
    i = i + 11
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

#: Load (one atomic snapshot): KEYS = seen (or clock), clock, learned, partitions...; ARGV = learned
#: offset. Returns {seen, clock, new learned links, HGETALL of every partition...}.
_LOAD = r"""
local out = {redis.call('GET', KEYS[1]) or false, redis.call('GET', KEYS[2]) or false,
             redis.call('LRANGE', KEYS[3], tonumber(ARGV[1]), -1)}
for i = 4, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
"""

#: Tick: KEYS = clock, held, released, seen-expiry. ARGV = now (µs), wall now (ms), lease (ms), limit,
#: sweep limit.
#: Moves the clock to max(clock, now); returns the clock, due held ids, stale release ids, held count,
#: ids whose idempotency key is past retention by the clock.
_TICK = r"""
local cur = redis.call('GET', KEYS[1])
if (not cur) or tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1]); cur = ARGV[1]
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cur, 'LIMIT', 0, tonumber(ARGV[4]))
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]),
                         'LIMIT', 0, tonumber(ARGV[4]))
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', cur, 'LIMIT', 0, tonumber(ARGV[5]))
return {cur, due, stale, redis.call('ZCARD', KEYS[2]), expired}
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
#: ARGV = id, wall now (ms), lease (ms), new owner. Returns {rel, raw} or nil when someone else has it.
_CLAIM = r"""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) > tonumber(ARGV[2]) - tonumber(ARGV[3]) then return nil end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local rel = redis.call('GET', KEYS[2])
if not rel then redis.call('ZREM', KEYS[1], ARGV[1]); return nil end
return {rel, redis.call('GET', KEYS[3]) or ''}
"""


# ------------------------------------------------------------------------------------------ keys


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.clock = f"{prefix}clock"
        self.held = f"{prefix}held"
        self.released = f"{prefix}released"
        self.learned = f"{prefix}learned"
        self.decisions = f"{prefix}decisions"
        self.seen_expiry = f"{prefix}seen-expiry"

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
        """The shared suppression index of one UTC day (hash: ``d:<id>`` row, ``r:<id>`` destination,
        ``k:<id>`` DUIS kind)."""
        return f"{self.prefix}suppressions:{day.isoformat()}"

    def suppressed_on(self, mid: str) -> str:
        """The day a message entered the suppression index (it is listed on that day only)."""
        return f"{self.prefix}suppressed-on:{mid}"

    def operator_release(self, mid: str) -> str:
        """The shared marker of an operator release (``duisgw audit release``: exactly once across instances)."""
        return f"{self.prefix}operator-release:{mid}"

    def operator_release_done(self, mid: str) -> str:
        """Set when that release is recorded (locally, then in the shared decision log): what the export reads."""
        return f"{self.prefix}operator-release-done:{mid}"


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


@dataclass(frozen=True)
class _Refused:
    """A commit refused: a restoration alert of the transaction was paired with these suppressed AD1s, whose
    operator-release marker exists (``duisgw audit release`` took it; its instance has not taken it in)."""

    outages: list[str]


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

    def rows_list(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(t, key, rec) for (t, key), rec in self.rows.items()]


class _Ops:
    """The commit script's KEYS and ARGV, built op by op."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.ops: list[str | bytes | int] = []

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
        self.redis: aioredis.Redis = client if client is not None else aioredis.Redis.from_url(config.url)
        self._load_script = self.redis.register_script(_LOAD)
        self._commit = self.redis.register_script(_COMMIT)
        self._tick = self.redis.register_script(_TICK)
        self._claim = self.redis.register_script(_CLAIM)
        self._sweep = self.redis.register_script(_SWEEP)
        self._learned_offset = 0
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

    async def aclose(self) -> None:
        await cast(Any, self.redis).aclose()  # (the installed stubs predate aclose)

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Check the connection and the server's eviction policy, apply every learned link, read the
        shared clock and held count."""
        await self._check_eviction()
        async with self.redis.pipeline(transaction=True) as p:
            p.get(self.keys.clock)
            p.lrange(self.keys.learned, 0, -1)
            p.zcard(self.keys.held)
            clock, learned, held = await p.execute()
        self._apply_learned(learned, 0)
        self.clock = None if clock is None else _from_us(int(clock))
        self.held_count = int(held)

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

    def _apply_learned(self, rows: Sequence[bytes], start: int) -> None:
        """Apply the learned links ``rows`` read from list index ``start``. Several transactions of this
        instance load concurrently from the same offset: only the rows past what is applied already are
        applied, and the offset moves to the end of what was read (never by the count read, which skipped
        the links learned next when two loads read the same rows)."""
        # each link is ordered by the time of its evidence, so replaying the list in commit order ends
        # where the single node would, and an entry written before those times existed counts as older
        end = start + len(rows)
        if end <= self._learned_offset:
            return
        for row in rows[max(0, self._learned_offset - start) :]:
            _learn(self.inventory, json.loads(row))
        self._learned_offset = end

    # ------------------------------------------------------------------ load

    async def _load(self, keys: Sequence[str], mid: str | None) -> _Snapshot:
        k = self.keys
        first = k.seen(mid) if mid is not None else k.clock
        offset = self._learned_offset
        res = await self._load_script(keys=[first, k.clock, k.learned, *keys], args=[offset])
        seen = res[0] if mid is not None else None
        clock = None if res[1] is None else _from_us(int(res[1]))
        snap = _Snapshot(seen, clock, list(res[2]), offset, {}, {}, {}, {}, {})
        for key, flat in zip(keys, res[3:], strict=True):
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
        ev = event
        #: suppressed AD1s an operator released (their shared marker exists) that a commit of this
        #: transaction refused to pair a restoration with: marked released in the view from then on
        released: set[str] = set()
        for attempt in range(1, self.config.max_retries + 1):
            parts = set(extra) | (
                partition_keys(self.keys.prefix, ev, self.inventory) if ev is not None else set()
            )
            while True:
                keys = sorted(parts)
                snap = await self._load(keys, mid)
                if snap.learned:
                    self._apply_learned(snap.learned, snap.learned_from)
                need = self._closure(ev, snap) | parts
                if need <= set(keys):
                    break
                parts = need
            if snap.seen is not None and not self._seen_expired(snap.seen, snap.clock, tick_to):
                dup = _duplicate(mid or "", snap.seen)
                dup.attempts = attempt
                return dup
            # (a key past retention by the gateway clock is decided afresh, as the single node pruned its
            # Seen; the commit checks that the key is still the one read)
            result = await self._attempt(event, raw, snap, keys, tick_to, route, released)
            if isinstance(result, _Refused):
                # not a conflict: decided again at once without those AD1s (each is refused once: a
                # transaction cannot loop on them), as the releasing instance's take-in will leave the state
                _log.warning("shared state: a restoration alert was paired with an AD1 an operator released "
                             "meanwhile: nothing committed, deciding again without it",
                             extra={"message_id": mid, "outages": result.outages})  # fmt: skip
                released.update(result.outages)
                self.release_refusals += 1
                continue
            if result is not None:
                result.attempts = attempt
                return result
            self.conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise StoreError(f"shared state: no commit after {self.config.max_retries} attempts (contention)")

    def _seen_expired(self, stored: bytes, clock: datetime | None, tick_to: datetime | None) -> bool:
        """Whether an idempotency key is past retention by the gateway clock the transaction runs at
        (the engine prunes a ``Seen`` once ``at + retention <= clock``)."""
        if tick_to is not None and (clock is None or tick_to > clock):
            clock = tick_to
        if clock is None:
            return False
        at = from_record(Seen, json.loads(stored)).at
        return at + self.engine_config.keep_for <= clock

    async def _attempt(
        self,
        event: MessageEvent | None,
        raw: bytes | None,
        snap: _Snapshot,
        keys: Sequence[str],
        tick_to: datetime | None,
        route: tuple[str, str] | None = None,
        released_ids: set[str] | frozenset[str] = frozenset(),
    ) -> TxResult | _Refused | None:
        """One load's decision and its commit: the transaction's result, None on a conflict (load again), or
        :class:`_Refused` when a restoration alert was paired with a suppressed AD1 whose operator-release
        marker exists (``released_ids``: those AD1s, marked released in the view: decided as if already taken
        in)."""
        view_inv = _ViewInventory(self.inventory)
        rows = [
            (t, key, {**rec, "released": True}) if t == "suppressed" and key in released_ids else (t, key, rec)
            for t, key, rec in snap.rows_list()
        ]
        view = Engine.restore(self.engine_config, self.scope, view_inv, rows)
        clock = snap.clock
        if tick_to is not None and (clock is None or tick_to > clock):
            clock = tick_to
        effects: list[Effect] = []
        if clock is not None:
            effects.extend(view.handle(Tick(clock)))
        if event is not None:
            effects.extend(view.handle(cast(Event, event)))
        ops = _Ops()
        k = self.keys
        seen_idx = ops.idx(k.seen(event.message_id)) if event is not None else 0
        seen_was: bytes = snap.seen or b""
        clock_idx = ops.idx(k.clock)
        held_idx = ops.idx(k.held)
        wall_ms = int(time.time() * 1000)
        written: set[str] = set()
        held_now: dict[str, HeldMessage] = dict(snap.held)
        new_clock = view.clock
        released: list[Released] = []
        keep = self._safety_ttl
        mid = None if event is None else event.message_id
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
                if eff.message_id != mid:  # a release: kept in Redis until recorded locally
                    held = held_now.get(eff.message_id) or snap.held.get(eff.message_id)
                    if held is None:  # pragma: no cover - a release always has its held record
                        raise StoreError(f"release of {eff.message_id!r} without its held record")
                    released.append(Released(eff, held.event, None, self.instance))
                    ops.add("zadd", k.released, wall_ms, eff.message_id)
                    ops.add("set", k.release(eff.message_id),
                            _dumps({"owner": self.instance, "decision": rec, "event": encode_tagged(held.event)}), 0)  # fmt: skip
        for ref, (part, _esmes) in sorted(snap.hub_holds.items()):
            if ref not in snap.held:  # its hold was released by an older instance, which leaves the reference
                written.add(part)
                ops.add("hdel", part, f"o:{ref}")
        checks: list[str | bytes | int] = []
        for key in keys:
            checks.extend((ops.idx(key), snap.versions[key]))
        # the operator-release markers of the AD1s its restorations were paired with: `duisgw audit release`
        # takes the marker before anything else, so one taken before this commit is seen by it, and a release
        # taken after it finds the pairing (the shared suppression index, written by this commit)
        markers: list[str | bytes | int] = []
        paired = paired_outages([effects])
        for outage_id in paired:
            markers.extend((ops.idx(k.operator_release(outage_id)), outage_id))
        bumps = self._bumps(ops, written, held_now, view, new_clock)
        argv: list[str | bytes | int] = [
            seen_idx,
            clock_idx,
            "" if new_clock is None else _us(new_clock),
            held_idx,
            seen_was,
            len(keys),
            *checks,
            len(paired),
            *markers,
            len(bumps) // 2,
            *bumps,
            *ops.ops,
        ]
        res = await self._commit(keys=ops.keys, args=argv)
        status = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        if status == "dup":
            return _duplicate(mid or "", res[1])
        if status == "conflict":
            return None
        if status == "released":
            return _Refused([_bytes(m).decode() for m in res[1:]])
        for fact in view_inv.pending:
            if isinstance(fact, HubEnd):
                self.inventory.end_hub(fact.ch, fact.time)
            else:
                self.inventory.learn_link(fact)
        if res[1]:
            self.clock = _from_us(int(res[1]))
        self.held_count = int(res[2])
        if released:
            raws = await self.redis.mget([k.raw(r.decision.message_id) for r in released])
            for r, body in zip(released, raws, strict=True):
                r.raw = _bytes(body) if body else None
        return TxResult(effects, released)

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
        ops.add("sup", k.suppressions(day), ops.idx(k.suppressed_on(mid)),
                0 if route is not None else ops.idx(k.route(mid)), 0 if route is not None else ops.idx(k.route_kind(mid)),
                day.isoformat(), mid, _dumps(row), self.config.export_days * 86_400 + 86_400, dest, kind)  # fmt: skip

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
                ops.add("hset", part, f"a:{key}", _dumps(to_record(value)))
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

    async def release_by_operator(self, mid: str, ch: int) -> bool:
        """An operator released the suppressed AD1 ``mid`` of Comms Hub ``ch`` (``duisgw audit release``):
        mark its suppressed-outage record released in the shared state, wherever it is (``s:<mid>`` in
        ``C(ch)`` and in ``E`` of every ESME it names; kept for its retention, as on a single node:
        :meth:`Engine.released_by_operator`), in one compare-and-set transaction like any decision: the
        versions of every partition read are checked and those written are bumped, so a restoration
        being paired with it on another instance either commits first (paired, as on a single node
        whose scan came later) or is retried against the state with it released. Idempotent: False when
        the record is not there (pruned past retention) or already released."""
        k = self.keys
        for attempt in range(1, self.config.max_retries + 1):
            parts = {k.ch(ch)}
            while True:
                keys = sorted(parts)
                snap = await self._load(keys, None)
                if snap.learned:
                    self._apply_learned(snap.learned, snap.learned_from)
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
                                             *bumps, *ops.ops]  # fmt: skip
            res = await self._commit(keys=ops.keys, args=argv)
            status = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
            if status == "ok":
                return True
            self.conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise StoreError(f"shared state: no commit after {self.config.max_retries} attempts (contention)")

    # ------------------------------------------------------------------ tick, releases

    async def tick(self, now: datetime, limit: int = 256) -> tuple[list[TxResult], list[Released]]:
        """Move the shared clock to ``now`` (never back), release every hold whose deadline it
        passed (one transaction each; whoever commits first wins), and take over releases whose
        decider did not record them within the lease. Returns the transactions and the taken-over
        releases (to be recorded locally, then :meth:`ack_releases`)."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        k = self.keys
        wall_ms = int(time.time() * 1000)
        res = await self._tick(
            keys=[k.clock, k.held, k.released, k.seen_expiry],
            args=[_us(now), wall_ms, int(self.config.lease * 1000), limit, _SWEEP_LIMIT],
        )
        clock = _from_us(int(res[0]))
        self.clock = clock
        self.held_count = int(res[3])
        expired = [_bytes(m).decode() for m in res[4]]
        if expired:
            await self._sweep(keys=[k.seen_expiry, *[k.seen(m) for m in expired]], args=[res[0], *expired])
        results: list[TxResult] = []
        for raw_mid in res[1]:
            mid = raw_mid.decode()
            rec = await self.redis.get(k.held_record(mid))
            if rec is None:
                continue  # released meanwhile
            held = from_record(HeldMessage, json.loads(rec))
            if held.deadline > clock:
                continue
            tx = await self._transact(None, None, partition_keys(k.prefix, held, self.inventory), clock)
            if tx.effects:
                results.append(tx)
        taken: list[Released] = []
        for raw_mid in res[2]:
            got = await self.take_over(raw_mid.decode())
            if got is not None:
                taken.append(got)
        return results, taken

    async def take_over(self, mid: str) -> Released | None:
        """Claim a release whose decider did not record it within the lease (None: not stale / gone)."""
        k = self.keys
        wall_ms = int(time.time() * 1000)
        got = await self._claim(
            keys=[k.released, k.release(mid), k.raw(mid)],
            args=[mid, wall_ms, int(self.config.lease * 1000), self.instance],
        )
        if got is None:
            return None
        rel = json.loads(got[0])
        decision = from_record(Decision, rel["decision"])
        event = decode_tagged(rel["event"])
        return Released(decision, event, bytes(got[1]) if got[1] else None, str(rel.get("owner") or ""))

    async def ack_releases(self, mids: Iterable[str]) -> None:
        """The releases are recorded in this instance's store: drop them (and their bytes) from Redis."""
        ids = list(dict.fromkeys(mids))
        if not ids:
            return
        k = self.keys
        async with self.redis.pipeline(transaction=True) as p:
            p.zrem(k.released, *ids)
            p.delete(*[k.release(m) for m in ids], *[k.raw(m) for m in ids])
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


def _duplicate(mid: str, stored: bytes) -> TxResult:
    """A duplicate's transaction: the stored decision, and the instance that took it (``by``, beside the
    ``Seen`` record in the idempotency key; absent when an instance of an earlier version wrote it)."""
    data = json.loads(stored)
    seen = from_record(Seen, data)
    by = data.get("by") if isinstance(data, dict) else None
    return TxResult([Duplicate(mid, seen.decision)], decided_by=by if isinstance(by, str) else "")
