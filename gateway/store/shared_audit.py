"""What ``duisgw audit`` reads and writes in the shared state (``[state] backend = "redis"``).

Each instance keeps its own audit (messages, decisions, outbox) in SQLite; two audit facts must be one
across instances, so they live in Redis beside the engine state (``gateway.store.redis_state``):

* **The suppression index** (``{prefix}suppressions:<UTC day>``): every suppression decision
  (``suppress``, or ``release-suppress`` ending a hold) is added to the hash of its day in the
  decision's own commit, once per message id, by whichever instance took it. ``duisgw audit export`` on
  any instance reads it: every instance's suppressions, each once, however many instances there are and
  whichever of them a re-delivery reached. Fields: ``d:<id>`` the decision (the export's columns),
  ``r:<id>`` its DNO destination, ``k:<id>`` its DUIS kind.
* **Operator release markers** (``{prefix}operator-release:<id>``): ``duisgw audit release`` takes the
  marker (atomically: one script, set only if absent) before it writes anything locally, so a message is
  released once across instances; a second release, from any instance's configuration, is refused with
  who released it and when. The marker has no time to live (a suppressed message can be released at any
  time: the local audits are never pruned). Once the release is recorded locally it is appended to the
  shared decision log (``{prefix}decisions``, field ``r``: ``{"owner", "release"}``) and confirmed
  (``{prefix}operator-release-done:<id>``: the release as recorded, its operator, note and time, which the
  export's release columns show), in one script; the export says ``released`` only for a confirmed release,
  so a marker left by a release that died before recording anything is never taken for one (a release
  whose confirmation failed is shown as still suppressed by the shared export; the releasing instance's
  ``--local`` export and its ``audit show`` have it). The marker is also what every instance's decision
  commit checks before pairing a restoration alert with the AD1 (``redis_state``): from the moment it is
  taken, no restoration is paired with the released AD1, on any instance, even before the
  releasing instance takes the release in.

A synchronous client: the CLI runs one command and exits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from typing import Any, cast

import redis

from gateway.store.redis_state import _from_us, _Keys, redacted_url

__all__ = ["SharedAudit"]

#: KEYS = marker; ARGV = marker text. Sets the marker if absent; returns the marker already there, or nil.
_CLAIM = r"""
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1])
return false
"""

#: KEYS = marker; ARGV = marker text. Deletes the marker only if it is still that one; 1 when deleted.
_WITHDRAW = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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
        self._withdraw = self.redis.register_script(_WITHDRAW)
        self._confirm = self.redis.register_script(_CONFIRM)

    def close(self) -> None:
        self.redis.close()

    # ------------------------------------------------------------------ operator releases

    def claim_release(self, message_id: str, marker: str) -> dict[str, Any] | None:
        """Take the release marker of ``message_id`` (``marker``: its JSON text). None: taken now; else the
        marker another release took before (that release's ``operator``, ``instance``, ``at`` ...)."""
        got = self._claim(keys=[self.keys.operator_release(message_id)], args=[marker])
        if got is None:
            return None
        return _marker(got)

    def withdraw_release(self, message_id: str, marker: str) -> bool:
        """Give the marker back (the local release could not be recorded): only if it is still ``marker``."""
        return bool(self._withdraw(keys=[self.keys.operator_release(message_id)], args=[marker]))

    def confirm_release(self, message_id: str, marker: str, owner: str, recorded: str | None = None) -> bool:
        """Append the recorded release to the shared decision log (field ``r``) and confirm it (the done flag
        :meth:`releases` reads) while the marker is ours. ``recorded``: the release as recorded locally (its
        JSON text: ``operator``, ``note``, ``decided_at`` ...) when it is not the marker's (a release that took
        again a marker left by an earlier attempt of its store records its own operator, note and time)."""
        release = marker if recorded is None else recorded
        entry = json.dumps({"owner": owner, "release": json.loads(release)}, separators=(",", ":"))
        keys = [
            self.keys.operator_release(message_id),
            self.keys.decisions,
            self.keys.operator_release_done(message_id),
        ]
        return bool(self._confirm(keys=keys, args=[marker, self.decision_log, entry, release]))

    def releases(self, message_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The confirmed releases of these messages (each the release as recorded: ``operator``, ``note``,
        ``decided_at``, ``instance`` ...): recorded by their instance and confirmed here
        (:meth:`confirm_release`). A marker alone is not a release: one left by a release that died before
        recording anything (or could not be given back) names a message still suppressed, never delivered."""
        out: dict[str, dict[str, Any]] = {}
        ids = list(message_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            values = cast(list[Any], self.redis.mget([self.keys.operator_release_done(m) for m in chunk]))
            out.update({m: _marker(v) for m, v in zip(chunk, values, strict=True) if v})
        return out

    # ------------------------------------------------------------------ suppression index

    def clock(self) -> datetime | None:
        """The shared gateway clock (None: no instance has ticked)."""
        value = self.redis.get(self.keys.clock)
        return None if value is None else _from_us(int(cast(bytes, value)))

    def suppressions(self, day: date) -> Iterator[tuple[dict[str, Any], str, str]]:
        """The suppressions indexed on ``day``: ``(decision row, destination, DUIS kind)`` ("" when
        unknown), in no particular order (read with HSCAN)."""
        key = self.keys.suppressions(day)
        rows: dict[str, dict[str, Any]] = {}
        dest: dict[str, str] = {}
        kind: dict[str, str] = {}
        for name, value in self.redis.hscan_iter(key, count=1000):
            tag, _, mid = _text(name).partition(":")
            if tag == "d":
                rows[mid] = json.loads(value)
            elif tag == "r":
                dest[mid] = _text(value)
            elif tag == "k":
                kind[mid] = _text(value)
        for mid, row in rows.items():
            yield row, dest.get(mid, ""), kind.get(mid, "")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _marker(value: object) -> dict[str, Any]:
    try:
        data = json.loads(_text(value))
    except ValueError:
        return {"raw": _text(value)}
    return data if isinstance(data, dict) else {"raw": _text(value)}
