"""Structured logs: one JSON object per line on stderr.

Loggers are named ``duisgw.*``; context goes in ``extra=`` (``message_id``, ``destination``,
``queue``, ``lane``, ``reason``, ...) and becomes top-level keys of the JSON object. Message bodies
are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from gateway.service.config import LoggingConfig

__all__ = ["JsonFormatter", "configure_logging"]

# attributes every LogRecord has: anything else was passed through ``extra=``
_STANDARD = frozenset(
    logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as a single-line JSON object (``ts``, ``level``, ``logger``, ``msg`` + extras)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


_HANDLER_NAME = "duisgw-service"


def configure_logging(cfg: LoggingConfig, stream: IO[str] | None = None) -> logging.Handler:
    """Install (or replace) the service's handler on the root logger; returns the handler."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:
            root.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(cfg.level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
