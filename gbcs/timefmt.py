"""Date-time encodings found in GBCS payloads, decoded without looking at any clock.

* DLMS ``date-time`` (12 octets): year(2) month day day-of-week hour minute second hundredths
  deviation(2, signed minutes, ``0x8000`` = unspecified) clock-status(1). Every field may be
  "not specified" (``0xFF``/``0xFFFF``); month/day also have DST and "last day" specials. The two GBCS
  sentinels are NOW (all date/time octets zero) and NEVER (all ``0xFF``).
* GBZ time: uint32 big-endian seconds since 2000-01-01T00:00:00Z.
* ASN.1 ``GeneralizedTime`` ``YYYYMMDDHHMMSSZ``; CS06 uses ``99991231235959Z`` to cancel a pending
  future-dated activation.

GBCS date-times are UTC. A DLMS date-time with an unspecified deviation is taken as UTC; a specified
deviation ``d`` is applied as *local = UTC + d minutes* (the IEC 62056-6-2 edition 12+ convention).

The DLMS clock-status octet (IEC 62056-6-2 ``clock_status``, :class:`ClockStatus`) is the device's own
word on its clock: bit 0 invalid value, bit 1 doubtful value, bit 2 different clock base, bit 3 invalid
clock status, bit 7 daylight saving active (bits 4-6 reserved); ``0xFF`` = not specified (no
information). :attr:`DlmsDateTime.unreliable` names the bits by which the device says the time itself
is not to be trusted (0, 1 and 3); what a caller does with that is the caller's policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "CANCELLATION_SENTINEL",
    "CLOCK_UNRELIABLE",
    "ClockStatus",
    "DlmsDateTime",
    "GeneralizedTime",
    "gbz_time",
    "gbz_time_json",
]

GBZ_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
CANCELLATION_SENTINEL = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_NOW = bytes(9)
_NEVER = b"\xff" * 9


def _opt(v: int, unspecified: int = 0xFF) -> int | None:
    return None if v == unspecified else v


class ClockStatus(enum.IntFlag):
    """The defined bits of a DLMS ``clock_status`` octet (IEC 62056-6-2; bits 4-6 are reserved)."""

    INVALID_VALUE = 0x01  # the time could not be recovered after an incident (e.g. a power loss)
    DOUBTFUL_VALUE = 0x02  # recovered after an incident, but not guaranteed
    DIFFERENT_CLOCK_BASE = 0x04  # timed from another source than the clock object's clock_base
    INVALID_CLOCK_STATUS = 0x08  # at least one bit of this status is itself invalid
    DAYLIGHT_SAVING_ACTIVE = 0x80


#: The bits by which a device says a date-time's value is not to be trusted: invalid value, doubtful
#: value, invalid clock status. "Different clock base" is not among them: it says which source timed the
#: clock (a meter timed by the mains frequency runs on its crystal while the supply is off), not that
#: the value is wrong.
CLOCK_UNRELIABLE = ClockStatus.INVALID_VALUE | ClockStatus.DOUBTFUL_VALUE | ClockStatus.INVALID_CLOCK_STATUS


def _flag_names(flags: ClockStatus) -> tuple[str, ...]:
    return tuple((m.name or "").lower().replace("_", "-") for m in ClockStatus if m & flags)


@dataclass(frozen=True, slots=True)
class DlmsDateTime:
    """A DLMS date-time with every field optional (``None`` = not specified)."""

    raw: bytes
    year: int | None
    month: int | None  # 1-12, or 0xFD/0xFE (DST end/begin) kept as is
    day: int | None  # 1-31, or 0xFD/0xFE (2nd last / last day)
    day_of_week: int | None
    hour: int | None
    minute: int | None
    second: int | None
    hundredths: int | None
    deviation: int | None  # minutes, signed
    clock_status: int | None

    @classmethod
    def from_bytes(cls, raw: bytes) -> DlmsDateTime:
        if len(raw) != 12:
            raise ValueError(f"DLMS date-time is 12 octets, got {len(raw)}")
        year = int.from_bytes(raw[0:2], "big")
        dev = int.from_bytes(raw[9:11], "big", signed=True)
        return cls(
            raw=bytes(raw),
            year=None if year == 0xFFFF else year,
            month=_opt(raw[2]),
            day=_opt(raw[3]),
            day_of_week=_opt(raw[4]),
            hour=_opt(raw[5]),
            minute=_opt(raw[6]),
            second=_opt(raw[7]),
            hundredths=_opt(raw[8]),
            deviation=None if dev == -0x8000 else dev,
            clock_status=_opt(raw[11]),
        )

    @property
    def is_now(self) -> bool:
        """The GBCS "NOW" sentinel (all date and time octets zero)."""
        return self.raw[:9] == _NOW

    @property
    def is_never(self) -> bool:
        """The GBCS "NEVER" sentinel (all date and time octets 0xFF)."""
        return self.raw[:9] == _NEVER

    @property
    def clock_flags(self) -> ClockStatus | None:
        """The clock-status octet as flags (reserved bits kept); None when it is ``0xFF`` (not specified)."""
        return None if self.clock_status is None else ClockStatus(self.clock_status)

    @property
    def unreliable(self) -> bool:
        """The device marks this time invalid, doubtful or of invalid clock status (:data:`CLOCK_UNRELIABLE`).
        A clock status that is not specified (``0xFF``) says nothing: False."""
        return self.clock_status is not None and bool(self.clock_status & CLOCK_UNRELIABLE)

    def unreliable_reason(self) -> str | None:
        """Why the device's clock status says this time is not to be trusted, e.g. ``clock status 0x03
        (invalid-value, doubtful-value)``; None when :attr:`unreliable` is False."""
        if self.clock_status is None or not self.unreliable:
            return None
        names = _flag_names(ClockStatus(self.clock_status) & CLOCK_UNRELIABLE)
        return f"clock status 0x{self.clock_status:02X} ({', '.join(names)})"

    def to_datetime(self) -> datetime | None:
        """An aware UTC ``datetime`` when year, month, day, hour, minute and second are all specified
        and valid; ``None`` otherwise (a wildcard, a sentinel, an impossible date, or a deviation that
        moves the instant outside years 1..9999)."""
        y, mo, d, h, mi, s = self.year, self.month, self.day, self.hour, self.minute, self.second
        if y is None or mo is None or d is None or h is None or mi is None or s is None:
            return None
        try:
            hs = self.hundredths or 0
            if self.deviation is None:
                return datetime(y, mo, d, h, mi, s, hs * 10_000, tzinfo=UTC)
            local = datetime(
                y, mo, d, h, mi, s, hs * 10_000, tzinfo=timezone(timedelta(minutes=self.deviation))
            )
            return local.astimezone(UTC)
        except (ValueError, OverflowError):  # impossible date, or the UTC instant is outside years 1..9999
            return None

    def text(self) -> str:
        """A readable rendering: ISO 8601 when fully specified, else fields with ``*`` wildcards."""
        if self.is_now:
            return "NOW"
        if self.is_never:
            return "NEVER"
        dt = self.to_datetime()
        if dt is not None:
            return dt.isoformat().replace("+00:00", "Z")

        def f(v: int | None, width: int) -> str:
            return "*" * width if v is None else f"{v:0{width}d}"

        return (
            f"{f(self.year, 4)}-{f(self.month, 2)}-{f(self.day, 2)}T"
            f"{f(self.hour, 2)}:{f(self.minute, 2)}:{f(self.second, 2)}"
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"hex": self.raw.hex(), "text": self.text()}
        if self.deviation is not None:
            out["deviation_minutes"] = self.deviation
        if self.clock_status is not None:
            out["clock_status"] = self.clock_status
        return out


def gbz_time(value: int) -> datetime:
    """GBZ uint32 seconds since 2000-01-01T00:00:00Z as an aware UTC ``datetime``."""
    return GBZ_EPOCH + timedelta(seconds=value)


def gbz_time_json(value: int) -> dict[str, object]:
    return {"seconds_since_2000": value, "text": gbz_time(value).isoformat().replace("+00:00", "Z")}


@dataclass(frozen=True, slots=True)
class GeneralizedTime:
    """An ASN.1 GeneralizedTime in the GBCS ``YYYYMMDDHHMMSSZ`` form."""

    text: str
    value: datetime

    @classmethod
    def parse(cls, raw: bytes) -> GeneralizedTime:
        """Parse the 15-octet ``YYYYMMDDHHMMSSZ`` form. Raises ``ValueError`` otherwise."""
        if len(raw) != 15 or raw[14:] != b"Z" or not raw[:14].isdigit():
            raise ValueError(f"GeneralizedTime must be YYYYMMDDHHMMSSZ, got {raw[:20]!r}")
        t = raw.decode("ascii")
        value = datetime(
            int(t[0:4]), int(t[4:6]), int(t[6:8]), int(t[8:10]), int(t[10:12]), int(t[12:14]), tzinfo=UTC
        )
        return cls(t, value)

    @property
    def is_cancellation(self) -> bool:
        """``99991231235959Z``: the CS06 marker that cancels a pending future-dated activation."""
        return self.value == CANCELLATION_SENTINEL

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"text": self.value.isoformat().replace("+00:00", "Z"), "raw": self.text}
        if self.is_cancellation:
            out["cancellation"] = True
        return out
