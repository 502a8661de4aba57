"""A bounds-checked forward reader over a byte buffer, shared by the payload decoders.

Offsets are absolute positions in the buffer (for a frame's content: positions in ``Frame.raw``), so
an error says where in the message the problem is. Only :mod:`gbcs.errors` exceptions are raised.
"""

from __future__ import annotations

from dataclasses import dataclass

from gbcs.errors import BadPayload, TrailingBytes, Truncated
from gbcs.frame import read_length

__all__ = ["EncryptedBlock", "Reader"]


@dataclass(frozen=True, slots=True)
class EncryptedBlock:
    """A GBCS-encrypted block ``31 ‖ IC(4) ‖ ciphertext ‖ tag(12)`` found inside a payload (GBCS.md §6.4)."""

    offset: int  # of the 0x31 security-control byte, in the buffer the payload was decoded from
    length: int  # security header + ciphertext + tag
    family: str  # "DLMS" (plaintext is DLMS Data) or "GBZ" (plaintext is a ZCL payload)
    where: str  # readable location, e.g. "GBZ component 3"


class Reader:
    __slots__ = ("buf", "end", "pos", "what")

    def __init__(self, buf: bytes, pos: int, end: int, what: str) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.what = what

    def need(self, n: int, field: str) -> None:
        if self.pos + n > self.end:
            raise Truncated(
                f"{self.what}: {field} needs {n} byte(s), {max(self.end - self.pos, 0)} left", self.pos
            )

    def u8(self, field: str) -> int:
        if self.pos >= self.end:
            raise Truncated(f"{self.what}: input ends where the {field} was expected", self.pos)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def uint(self, n: int, field: str, *, little: bool = False, signed: bool = False) -> int:
        self.need(n, field)
        v = int.from_bytes(self.buf[self.pos : self.pos + n], "little" if little else "big", signed=signed)
        self.pos += n
        return v

    def take(self, n: int, field: str) -> bytes:
        self.need(n, field)
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def length(self, field: str) -> int:
        n, self.pos = read_length(self.buf, self.pos, self.end, f"{self.what}: {field}")
        return n

    def sub(self, n: int, field: str, what: str | None = None) -> Reader:
        """A reader over the next ``n`` bytes; this reader moves past them."""
        self.need(n, field)
        r = Reader(self.buf, self.pos, self.pos + n, what or self.what)
        self.pos += n
        return r

    @property
    def left(self) -> int:
        return self.end - self.pos

    def done(self, field: str) -> None:
        if self.pos < self.end:
            raise TrailingBytes(f"{self.what}: {self.end - self.pos} unexpected byte(s) after the {field}", self.pos)

    def fail(self, message: str, at: int | None = None) -> BadPayload:
        return BadPayload(f"{self.what}: {message}", self.pos if at is None else at)
