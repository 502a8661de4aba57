"""Named errors of the correlation engine and its state store (all derive from ``DuisgwError``).

The engine itself never raises for the *content* of an event (bad evidence is a decision reason,
not an exception); these errors are for programming/configuration faults and unreadable state."""

from __future__ import annotations

from gateway.errors import DuisgwError

__all__ = ["EngineConfigError", "EngineStateError", "StoreError"]


class EngineConfigError(DuisgwError):
    """An :class:`~gateway.engine.config.EngineConfig` value is out of its allowed range."""

    code = "engine_config"


class EngineStateError(DuisgwError):
    """A stored engine record cannot be read back (unknown table, kind or field)."""

    code = "engine_state"


class StoreError(DuisgwError):
    """The durable state store cannot do what was asked (closed, unknown message, bad schema)."""

    code = "store"
