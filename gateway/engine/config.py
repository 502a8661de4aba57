"""Every MP102B policy of the correlation engine, as ONE typed, validated, immutable object.

None of the figures in the public record (30-minute window, 15-minute lead, the 8F67 policy, the
scope) is final, so all of them are configuration here, never code. ``EngineConfig()`` gives the
defaults described in docs/ENGINE.md; :meth:`EngineConfig.from_mapping` reads the same fields from
plain data (a TOML/JSON table) with durations written as seconds or ``"90s"``, ``"15m"``, ``"2h"``,
``"2d"`` (or a combination such as ``"2d45m"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Literal

from gateway.engine.errors import EngineConfigError

__all__ = [
    "CS06_RESULTS",
    "DEFAULT_LATE_DELIVERY",
    "EngineConfig",
    "FdFailurePolicy",
    "NaiveTimestampPolicy",
    "RestorationPolicy",
    "ScopeMode",
    "parse_duration",
]

ScopeMode = Literal["guid-list", "manufacturer", "all"]
FdFailurePolicy = Literal["forward", "suppress"]
RestorationPolicy = Literal["suppress-paired", "forward"]
NaiveTimestampPolicy = Literal["utc", "reject"]

#: GBCS CS06 ``responseCode`` values: 0 success, 1 no image held, 2 hash mismatch, 3 activation failure.
CS06_RESULTS = frozenset({0, 1, 2, 3})
#: The DCC re-delivers undelivered device alerts for up to two days (DOMAIN.md §4).
DEFAULT_LATE_DELIVERY = timedelta(days=2)

_SCOPES = ("guid-list", "manufacturer", "all")
_FD_POLICIES = ("forward", "suppress")
_RESTORATION = ("suppress-paired", "forward")
_NAIVE = ("utc", "reject")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: object) -> timedelta:
    """``timedelta`` from a timedelta, a number of seconds, or text such as ``"15m"`` / ``"2d45m"``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise EngineConfigError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text and re.fullmatch(r"\d+(?:\.\d+)?", text):
            return timedelta(seconds=float(text))
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise EngineConfigError(f"not a duration (use e.g. 90s, 15m, 2h, 2d45m): {value!r}")
        return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))
    raise EngineConfigError(f"not a duration: {value!r}")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise EngineConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    assert isinstance(value, str)
    return value


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Policies of the MP102B correlation engine (see docs/ENGINE.md for the meaning of each).

    - ``scope``: which ESMEs are affected: ``guid-list`` (the manufacturer's GUID list, default),
      ``manufacturer`` (every ESME whose inventory manufacturer is one of ``manufacturers``), ``all``.
    - ``window_before`` / ``window_after``: an AD1 is explained by an activation when
      ``opens <= StartDateTime <= activation + window_after``; ``opens`` is the time the 11.3
      request was observed, or else ``activation - window_before``.
    - ``request_lead_max``: an immediate activation's window opens at its request, but never more than
      this before the response (a response that comes hours after its request does not stretch the
      window over those hours); a request observed only after its response (or any outcome of its command)
      changes neither the window nor the record's kind (ENGINE.md §4).
    - ``hold_limit``: longest time (gateway clock: arrival times and ticks) an AD1 is held while the
      outcome of a pending activation is on its way; the hold ends when the clock reaches
      ``held + hold_limit`` (an outcome stamped with that instant is too late); 0: nothing is held. A
      restoration waiting for held AD1s waits for those due before ``held + 2 * hold_limit`` (those held before
      its own ``held + hold_limit``), the deadline its hold decision states, so it is held less than
      ``2 * hold_limit`` (ENGINE.md §6).
    - ``activation_results``: CS06 response codes that count as "the meter activated" (default {0}).
    - ``fd_failure_policy``: an 8F67 (future-dated activation failed) ``forward`` (default: it retracts
      the activation, the fail-safe reading of DOMAIN.md) or ``suppress`` (count it as a reboot).
    - ``restoration_policy``: a restoration alert (8F35-8F3C) paired with a suppressed AD1 is
      ``suppress-paired`` (default) or ``forward``.
    - ``retention``: how long activation state and idempotency keys are kept (default 2 days + window).
    - ``naive_timestamp_policy``: a date-time without offset is read as UTC (``utc``, default) or the
      event is not used (``reject``: observation ignored, inline message forwarded).
    - ``clock_skew_flag``: meter (GBCS) vs DCC (ResponseDateTime) clock disagreement that is flagged.
    - ``quarantine_unverified_inline``: inline messages whose own signature failed are forwarded
      (False, default: fail open) or kept as suppressed/quarantined (True).
    """

    scope: ScopeMode = "guid-list"
    manufacturers: frozenset[str] = field(default_factory=frozenset)
    window_before: timedelta = timedelta(minutes=15)
    window_after: timedelta = timedelta(minutes=30)
    request_lead_max: timedelta = timedelta(minutes=60)
    hold_limit: timedelta = timedelta(minutes=10)
    activation_results: frozenset[int] = frozenset({0})
    fd_failure_policy: FdFailurePolicy = "forward"
    restoration_policy: RestorationPolicy = "suppress-paired"
    retention: timedelta | None = None
    naive_timestamp_policy: NaiveTimestampPolicy = "utc"
    clock_skew_flag: timedelta = timedelta(minutes=5)
    quarantine_unverified_inline: bool = False

    def __post_init__(self) -> None:
        _choice("scope", self.scope, _SCOPES)
        _choice("fd_failure_policy", self.fd_failure_policy, _FD_POLICIES)
        _choice("restoration_policy", self.restoration_policy, _RESTORATION)
        _choice("naive_timestamp_policy", self.naive_timestamp_policy, _NAIVE)
        for name in ("window_before", "window_after", "request_lead_max", "hold_limit", "clock_skew_flag"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value < timedelta(0):
                raise EngineConfigError(f"{name} must be a non-negative timedelta; got {value!r}")
        if self.request_lead_max < self.window_before:
            raise EngineConfigError(
                f"request_lead_max must be at least window_before ({self.window_before}); got {self.request_lead_max!r}"
            )
        if not isinstance(self.manufacturers, frozenset) or not all(
            isinstance(m, str) and m.strip() for m in self.manufacturers
        ):
            raise EngineConfigError("manufacturers must be a frozenset of non-empty names")
        # names are compared case-insensitively and without surrounding blanks
        object.__setattr__(self, "manufacturers", frozenset(m.strip().casefold() for m in self.manufacturers))
        if self.scope == "manufacturer" and not self.manufacturers:
            raise EngineConfigError("scope 'manufacturer' needs at least one name in manufacturers")
        if not isinstance(self.activation_results, frozenset) or not self.activation_results <= CS06_RESULTS:
            raise EngineConfigError(
                f"activation_results must be a frozenset within {sorted(CS06_RESULTS)}; got {self.activation_results!r}"
            )
        if not isinstance(self.quarantine_unverified_inline, bool):
            raise EngineConfigError("quarantine_unverified_inline must be a bool")
        if self.retention is None:
            object.__setattr__(self, "retention", DEFAULT_LATE_DELIVERY + self.window)
        elif not isinstance(self.retention, timedelta) or self.retention < self.window + self.hold_limit:
            raise EngineConfigError(
                f"retention must be a timedelta of at least window_before + window_after + hold_limit "
                f"({self.window + self.hold_limit}); got {self.retention!r}"
            )

    @property
    def window(self) -> timedelta:
        """``window_before + window_after``: the full width of an activation window."""
        return self.window_before + self.window_after

    @property
    def widest_window(self) -> timedelta:
        """``request_lead_max + window_after``: no activation window is wider (an immediate one opens at
        most ``request_lead_max`` before its response, any other ``window_before`` before its anchor, and
        ``request_lead_max >= window_before``), so a time further than this from an AD1's StartDateTime
        is never inside the window that explains that AD1."""
        return self.request_lead_max + self.window_after

    @property
    def keep_for(self) -> timedelta:
        """The retention period, always set after validation."""
        assert self.retention is not None
        return self.retention

    def in_scope_manufacturer(self, name: str | None) -> bool:
        return name is not None and name.strip().casefold() in self.manufacturers

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> EngineConfig:
        """Build from plain data (keys = field names, ``-`` or ``_``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, object] = {}
        for raw_key, value in data.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                raise EngineConfigError(f"unknown engine setting {raw_key!r}")
            try:  # (a value's own problem names its setting: `replay --config` shows it as it is)
                if key in ("window_before", "window_after", "request_lead_max", "hold_limit", "clock_skew_flag", "retention"):
                    kwargs[key] = None if value is None and key == "retention" else parse_duration(value)
                elif key == "manufacturers":
                    kwargs[key] = frozenset(_names(value))
                elif key == "activation_results":
                    kwargs[key] = frozenset(_ints(value))
                else:
                    kwargs[key] = value
            except EngineConfigError as exc:
                if exc.message.startswith(key):
                    raise
                raise EngineConfigError(f"{raw_key}: {exc.message}") from None
        return cls(**kwargs)  # type: ignore[arg-type]

    def to_mapping(self) -> dict[str, object]:
        """Plain-data form (durations in seconds), e.g. for the audit log and ``duisgw`` diagnostics."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, timedelta):
                out[f.name] = value.total_seconds()
            elif isinstance(value, frozenset):
                out[f.name] = sorted(value)
            else:
                out[f.name] = value
        return out


def _names(value: object) -> Iterable[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    raise EngineConfigError(f"manufacturers must be a name or a list of names; got {value!r}")


def _ints(value: object) -> Iterable[int]:
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int):
                raise EngineConfigError(f"activation_results must be integers; got {v!r}")
            out.append(v)
        return out
    raise EngineConfigError(f"activation_results must be a list of integers; got {value!r}")
