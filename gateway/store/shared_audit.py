"""What ``duisgw audit`` reads and writes in the shared state (``[state] backend = "redis"``).

Each instance keeps its own audit (messages, decisions, outbox) in SQLite; two audit facts must be one
across instances, so they live in Redis beside the engine state (``gateway.store.redis_state``):

* **The suppression index** (``{prefix}suppressions:<UTC day>``): every suppression decision
  (``suppress``, or ``release-suppress`` ending a hold) is added to the hash of its day in the
  decision's own commit, once per life of the message (a message id re-delivered after the engine's retention
  and suppressed afresh is listed again, on the day of that suppression, as the ``--local`` export lists it), by
  whichever instance took it. ``duisgw audit export`` on any instance reads it: every instance's suppressions,
  each once, however many instances there are and whichever of them a re-delivery reached. Fields: ``d:<id>``
  the decision (the export's columns), ``r:<id>`` its DNO destination, ``k:<id>`` its DUIS kind; a later life
  of a message id already listed that day: ``ld:<µs>:<id>``, ``lr:<µs>:<id>``, ``lk:<µs>:<id>`` (µs: its
  suppression's time; a version before this one reads the first life of a day only, as it wrote).
* **Operator release markers**, one per *life* of a message (a message id re-delivered after the engine's
  retention and suppressed afresh is a new life, released on its own, as on a single node:
  ``gateway.store.sqlite._LIFE``), named by the time of that life's suppression decision, which every instance
  records alike (``{prefix}operator-release-life:<µs>:<id>``): ``duisgw audit release`` takes the life's marker
  (atomically: one script, set only if absent) before it writes anything locally, so a life is released once
  across instances; a second release of it, from any instance's configuration, is refused with who released it
  and when. The same script sets the message id's marker (``{prefix}operator-release:<id>``) if absent: what
  every instance's decision commit checks before pairing a restoration alert with the AD1 (``redis_state``):
  from the moment it is taken, no restoration is paired with the released AD1, on any instance, even before the
  releasing instance takes the release in. A marker by message id without a ``life`` (a version before lives
  kept only that one) is the release of the life suppressed at or before its time (``decided_at``): that life
  stays released and is not released again; a later life is released. A release that takes again the marker
  an attempt of its own store left (killed before recording anything) rewrites it with its own text, so that a
  refused release names the release recorded. Markers have no time to live (a suppressed message can be
  released at any time: the local audits are never pruned). Once the release is recorded locally it is
  appended to the shared decision log (``{prefix}decisions``, field ``r``: ``{"owner", "release"}``) and
  confirmed (``{prefix}operator-release-done-life:<µs>:<id>``: the release as recorded, its operator, note and
  time, which the export's release columns of that life's row show; ``{prefix}operator-release-done:<id>``
  from a version before lives, read as the marker by message id is), in one script; the export says
  ``released`` only for a confirmed release, so a marker left by a release that died before recording
  anything is never taken for one (a release whose confirmation failed is shown as still suppressed by the
  shared export; the releasing instance's ``--local`` export and its ``audit show`` have it).
* **The pairing index** (``{prefix}paired:<AD1 id>``): every restoration suppressed as paired with an AD1
  (``restoration-paired``) is added to that AD1's hash in the restoration's own commit, by whichever instance
  decided it, with the *life* of the AD1 it was paired with (the time of that life's suppression decision, as the
  commit's engine read it from the AD1's record: ``redis_state._pairings``): field ``<life µs>:<decided µs>:<id>``
  (life ``-``: not known), value ``{"message_id", "decided_at" (µs), "by", "life" (µs or null)}``; it lives as the
  suppression index's days do after its last write. ``duisgw audit release`` reads it (:meth:`SharedAudit.paired_with`:
  one small hash, where the day index took seconds a day). ``{prefix}paired-index-since`` (set once, no TTL): the
  gateway clock of the first suppression a version writing the index committed; a life suppressed before it (or
  within the rolling upgrade after it, while instances of an earlier version may still pair without indexing) is
  also searched in the day index (``gateway.cli.audit``).

A synchronous client: the CLI runs one command and exits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

import redis

from gateway.store.redis_state import _from_us, _Keys, _legacy_release_of, redacted_url
from gateway.store.redis_state import _release_marker as _marker

__all__ = ["Pairing", "SharedAudit"]


@dataclass(frozen=True)
class Pairing:
    """One entry of an AD1's pairing index: the restoration ``message_id``, the instance that decided it (``by``),
    the time of its suppression decision and the life of the AD1 it was paired with (None: not known)."""

    message_id: str
    by: str
    decided_at: datetime
    life: datetime | None


#: KEYS = the life's marker, the message id's marker; ARGV = marker text, the message id's marker as read before
#: ("" = none). Sets the life's marker if absent, and the message id's marker if absent (what every instance's
#: decision commit checks before pairing a restoration with the AD1: ``redis_state``): {'taken', the life's
#: marker already there}, {'changed'} (the message id's marker is no longer what the caller read: it reads it
#: again), or {'ok'}. With one key (the message id's marker: a release that names no life, as before lives were
#: kept): set if absent.
_CLAIM = r"""
local cur = redis.call('GET', KEYS[1])
if cur then return {'taken', cur} end
if #KEYS > 1 then
  local id = redis.call('GET', KEYS[2])
  if (id or '') ~= ARGV[2] then return {'changed'} end
  if not id then redis.call('SET', KEYS[2], ARGV[1]) end
end
redis.call('SET', KEYS[1], ARGV[1])
return {'ok'}
"""

#: KEYS = the life's marker, the message id's marker (the same key twice for a release that names no life); ARGV =
#: the marker found, the new marker text. Takes again the marker a killed attempt left: while it is still the one
#: found (in the life's key, or, none there, in the message id's: one a version before lives left), both become
#: the new text (the message id's only if it was the one found, or none); 1 then.
_RETAKE = r"""
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur ~= ARGV[1] then return 0 end
elseif redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
local id = redis.call('GET', KEYS[2])
if (not id) or id == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""

#: KEYS = marker keys; ARGV = marker text. Deletes each key that is still that marker; how many.
_WITHDRAW = r"""
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then n = n + redis.call('DEL', k) end
end
return n
"""

#: KEYS = marker, decision log, done flag; ARGV = marker text, maxlen, log entry, the release as recorded. While
#: the marker is still this release's: appends the release to the decision log and sets the done flag to the
#: release as recorded (what the export reads: who, when, why); 1 then.
_CONFIRM = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local maxlen = tonumber(ARGV[2])
if maxlen > 0 then redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'r', ARGV[3]) end
redis.call('SET', KEYS[3], ARGV[4])
return 1
"""


class SharedAudit:
    """The shared audit facts of one gateway configuration (see the module doc)."""

    def __init__(self, url: str, prefix: str, decision_log: int = 1_000_000) -> None:
        self.url = url
        self.shown_url = redacted_url(url)
        self.keys = _Keys(prefix)
        self.decision_log = decision_log
        self.redis: redis.Redis = redis.Redis.from_url(url, socket_timeout=10.0, socket_connect_timeout=5.0)
        self._claim = self.redis.register_script(_CLAIM)
        self._retake = self.redis.register_script(_RETAKE)
        self._withdraw = self.redis.register_script(_WITHDRAW)
        self._confirm = self.redis.register_script(_CONFIRM)

    def close(self) -> None:
        self.redis.close()

    # ------------------------------------------------------------------ operator releases

    def life_marker_key(self, message_id: str, life: datetime) -> str:
        """The release marker of one life of ``message_id`` (``life``: the time of that life's suppression
        decision, as every instance records it). The life comes first, as digits, so that no message id can
        make one life's key another's."""
        return self.keys.operator_release_life(message_id, life)

    def life_done_key(self, message_id: str, life: datetime) -> str:
        """The confirmed release of one life of ``message_id`` (what the export reads)."""
        return self.keys.operator_release_done_life(message_id, life)

    def _marker_keys(self, message_id: str, life: datetime | None) -> list[str]:
        """The life's marker and the message id's (the message id's twice for a release that names no life)."""
        by_id = self.keys.operator_release(message_id)
        return [by_id if life is None else self.life_marker_key(message_id, life), by_id]

    def claim(self, message_id: str, marker: str, life: datetime | None = None) -> str | None:
        """Take the release marker of the life of ``message_id`` whose suppression was decided at ``life``
        (``marker``: its JSON text). None: taken now; else the text of the marker another release took before:
        that life's, or one a version before lives left by message id (its ``decided_at``, the time of that
        release, not before ``life``: a release of this life; one before it released an earlier life, and
        this life is taken). The message id's marker is also set when absent (every instance's decision commit
        checks it before pairing a restoration with the AD1). ``life`` None: the message id's marker alone,
        as before lives were kept."""
        keys = self._marker_keys(message_id, life)
        for _ in range(8):
            seen = self.redis.get(keys[1]) if life is not None else None
            if seen is not None and life is not None and _legacy_release_of(_marker(seen), life):
                return _text(seen)
            got = cast(list[Any], self._claim(keys=keys if life is not None else keys[:1],
                                               args=[marker, "" if seen is None else _text(seen)]))  # fmt: skip
            tag = _text(got[0])
            if tag == "ok":
                return None
            if tag == "taken":
                return _text(got[1])
            # 'changed': the message id's marker moved between the read and the script: read it again
        raise redis.RedisError(f"the release markers of {message_id!r} kept changing while they were taken")

    def claim_release(
        self, message_id: str, marker: str, life: datetime | None = None
    ) -> dict[str, Any] | None:
        """:meth:`claim`, the marker found parsed (that release's ``operator``, ``instance``, ``at`` ...)."""
        got = self.claim(message_id, marker, life)
        return None if got is None else _marker(got)

    def retake_release(self, message_id: str, found: str, marker: str, life: datetime | None = None) -> bool:
        """Take again the marker ``found`` (the text :meth:`claim` returned: left by an attempt of the releasing
        store that recorded nothing) as ``marker``, this release's text: the marker then names the release
        that is recorded (who, when, why), for a release refused later. False: it is no longer ``found``."""
        return bool(self._retake(keys=self._marker_keys(message_id, life), args=[found, marker]))

    def withdraw_release(self, message_id: str, marker: str, life: datetime | None = None) -> bool:
        """Give the marker back (the local release could not be recorded): only where it is still ``marker``
        (the life's, and the message id's if this release set it)."""
        keys = list(dict.fromkeys(self._marker_keys(message_id, life)))
        return bool(self._withdraw(keys=keys, args=[marker]))

    def confirm_release(
        self,
        message_id: str,
        marker: str,
        owner: str,
        recorded: str | None = None,
        life: datetime | None = None,
    ) -> bool:
        """Append the recorded release to the shared decision log (field ``r``) and confirm it (the life's done
        flag, :meth:`releases` reads it) while the life's marker is ours. ``recorded``: the release as recorded
        locally (its JSON text: ``operator``, ``note``, ``decided_at`` ...) when it is not the marker's."""
        release = marker if recorded is None else recorded
        entry = json.dumps({"owner": owner, "release": json.loads(release)}, separators=(",", ":"))
        keys = [
            self._marker_keys(message_id, life)[0],
            self.keys.decisions,
            self.keys.operator_release_done(message_id)
            if life is None
            else self.life_done_key(message_id, life),
        ]
        return bool(self._confirm(keys=keys, args=[marker, self.decision_log, entry, release]))

    def releases(self, lives: Sequence[tuple[str, datetime | None]]) -> list[dict[str, Any] | None]:
        """The confirmed release of each of these lives (``(message id, time of the life's suppression
        decision)``), in their order: the release as recorded (``operator``, ``note``, ``decided_at``,
        ``instance`` ...), recorded by its instance and confirmed here (:meth:`confirm_release`), or None. A
        release a version before lives confirmed by message id is the life's when it was made at or after the
        life's suppression (a release before it was an earlier life's). A marker alone is not a release: one
        left by a release that died before recording anything (or could not be given back) names a message
        still suppressed, never delivered."""
        out: list[dict[str, Any] | None] = []
        items = list(lives)
        for start in range(0, len(items), 250):
            chunk = items[start : start + 250]
            keys: list[str] = []
            for mid, life in chunk:
                keys.append(self.keys.operator_release_done(mid))
                keys.append(
                    self.keys.operator_release_done(mid) if life is None else self.life_done_key(mid, life)
                )
            values = cast(list[Any], self.redis.mget(keys))
            for n, (_mid, life) in enumerate(chunk):
                by_id, own = values[2 * n], values[2 * n + 1]
                if own is not None and life is not None:
                    out.append(_marker(own))
                elif by_id is not None and (life is None or _legacy_release_of(_marker(by_id), life)):
                    out.append(_marker(by_id))
                else:
                    out.append(None)
        return out

    # ------------------------------------------------------------------ pairing index

    def paired_index_since(self) -> datetime | None:
        """The gateway clock of the first suppression committed by a version that writes the pairing index (None:
        none yet, or the state was lost since)."""
        value = self.redis.get(self.keys.paired_since)
        return None if value is None else _from_us(int(cast(bytes, value)))

    def pairings(self, ad1_id: str) -> list[Pairing]:
        """Every restoration suppressed as paired with the AD1 ``ad1_id`` that the pairing index holds, each life of
        the AD1 (and of the restoration: a message id re-delivered after the retention and paired again is listed
        again), in the order of their suppression."""
        out: list[Pairing] = []
        for _name, value in self.redis.hscan_iter(self.keys.paired(ad1_id), count=1000):
            try:
                row = json.loads(value)
                life = row.get("life")
                out.append(Pairing(str(row["message_id"]), str(row.get("by") or "?"), _from_us(int(row["decided_at"])),
                                   None if life is None else _from_us(int(life))))  # fmt: skip
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # (never written so: an entry that cannot be read names nothing)
        out.sort(key=lambda p: (p.decided_at, p.message_id))
        return out

    def paired_with(self, ad1_id: str, life: datetime) -> list[Pairing]:
        """The restorations suppressed as paired with the life of ``ad1_id`` suppressed at ``life`` (and those
        whose life paired with was not known when they were decided: named, never missed), from the pairing
        index."""
        return [p for p in self.pairings(ad1_id) if p.life is None or p.life == life]

    # ------------------------------------------------------------------ idempotency keys

    def idempotency_key(self, message_id: str) -> dict[str, Any] | None:
        """The shared idempotency key of ``message_id`` (``{prefix}seen:<id>``: the ``Seen`` record with its latest
        decision, its ``digest`` and ``by``, the instance that decided), as written; None: none kept (never decided,
        or past the engine's retention), or unreadable."""
        value = self.redis.get(self.keys.seen(message_id))
        if value is None:
            return None
        try:
            data = json.loads(cast(bytes, value))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    # ------------------------------------------------------------------ suppression index

    def clock(self) -> datetime | None:
        """The shared gateway clock (None: no instance has ticked)."""
        value = self.redis.get(self.keys.clock)
        return None if value is None else _from_us(int(cast(bytes, value)))

    def suppressions(self, day: date) -> Iterator[tuple[dict[str, Any], str, str]]:
        """The suppressions indexed on ``day``, one per life of a message (a message id suppressed afresh after its
        retention is listed again, on the day of that suppression): ``(decision row, destination, DUIS kind)`` (""
        when unknown), in no particular order (read with HSCAN)."""
        key = self.keys.suppressions(day)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        dest: dict[tuple[str, str], str] = {}
        kind: dict[tuple[str, str], str] = {}
        for name, value in self.redis.hscan_iter(key, count=1000):
            # d:<id> (the first life of the id listed that day), ld:<µs>:<id> (a later one): the same entry by
            # the rest of the name, within its family
            tag, _, rest = _text(name).partition(":")
            family, tag = ("l", tag[1:]) if tag[:1] == "l" else ("", tag)
            if tag == "d":
                rows[(family, rest)] = json.loads(value)
            elif tag == "r":
                dest[(family, rest)] = _text(value)
            elif tag == "k":
                kind[(family, rest)] = _text(value)
        for entry, row in rows.items():
            yield row, dest.get(entry, ""), kind.get(entry, "")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
