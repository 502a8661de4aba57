"""Named errors. Every rejection the gateway makes has a stable ``code`` (used in metrics,
audit records and HTTP 400 reasons) and a one-line human message."""

from __future__ import annotations

__all__ = ["DuisgwError"]


class DuisgwError(Exception):
    """Base of every named error raised by the gateway (never for an invalid signature: that is a result)."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
