"""Named errors of the correlation engine and its state store (all derive from ``DuisgwError``).

The engine itself never raises for the *content* of an event (bad evidence is a decision reason,
not an exception); these errors are for programming/configuration faults and unreadable state."""

from __future__ import annotations

from gateway.errors import DuisgwError

__all__ = ["EngineConfigError", "EngineStateError", "PairedWithReleasedOutage", "StoreError"]


class EngineConfigError(DuisgwError):
    """An :class:`~gateway.engine.config.EngineConfig` value is out of its allowed range."""

    code = "engine_config"


class EngineStateError(DuisgwError):
    """A stored engine record cannot be read back (unknown table, kind or field)."""

    code = "engine_state"


class StoreError(DuisgwError):
    """The durable state store cannot do what was asked (closed, unknown message, bad schema)."""

    code = "store"


class PairedWithReleasedOutage(StoreError):
    """A batch paired a restoration alert with a suppressed AD1 an operator had released (``duisgw audit
    release``, another process) after the running engine last took releases in: its record in memory was
    stale. Raised inside the batch's write transaction, which is rolled back (nothing of the batch is
    durable; the engine is rebuilt from the store, which no longer holds the released outage): the caller
    takes the releases in and decides the batch again. ``outages``: the released AD1s it named."""

    code = "paired_with_released_outage"

    def __init__(self, outages: list[str]) -> None:
        super().__init__(
            f"restoration paired with an AD1 released by an operator meanwhile: {', '.join(outages)}"
        )
        self.outages = outages
