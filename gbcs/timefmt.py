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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "CANCELLATION_SENTINEL",
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
            local = datetime(y, mo, d, h, mi, s, hs * 10_000, tzinfo=timezone(timedelta(minutes=self.deviation)))
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
