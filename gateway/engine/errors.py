"""Named errors of the correlation engine and its state store (all derive from ``DuisgwError``).

The engine itself never raises for the *content* of an event (bad evidence is a decision reason,
not an exception); these errors are for programming/configuration faults and unreadable state."""

from __future__ import annotations

from gateway.errors import DuisgwError

__all__ = [
    "CopyOfReleasedMessage",
    "EngineConfigError",
    "EngineStateError",
    "PairedWithReleasedOutage",
    "ReleasedMeanwhile",
    "StoreError",
]


class EngineConfigError(DuisgwError):
    """An :class:`~gateway.engine.config.EngineConfig` value is out of its allowed range."""

    code = "engine_config"


class EngineStateError(DuisgwError):
    """A stored engine record cannot be read back (unknown table, kind or field)."""

    code = "engine_state"


class StoreError(DuisgwError):
    """The durable state store cannot do what was asked (closed, unknown message, bad schema)."""

    code = "store"


class ReleasedMeanwhile(StoreError):
    """A batch was decided on engine state that an operator release (``duisgw audit release``, another process)
    recorded after the running engine last took releases in has changed. Raised inside the batch's write
    transaction, which is rolled back (nothing of the batch is durable; the engine is rebuilt from the store):
    the caller takes the releases in and decides the batch again. Not a fault of the store."""

    code = "released_meanwhile"


class PairedWithReleasedOutage(ReleasedMeanwhile):
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


class CopyOfReleasedMessage(ReleasedMeanwhile):
    """A batch decided afresh an inline message whose bytes an operator had released under its unsigned id (the
    copy quarantined when its own signature failed: ``quarantined-unverified``) after the running engine last
    took releases in, or decided a restoration alert while such a released copy of an AD1 was not taken in yet
    (its outage, which the DNO now has, was not kept). The signed copy of released bytes is their duplicate
    (docs/ENGINE.md §8), which the engine rebuilt from the store answers; the caller takes the releases in and
    decides the batch again. ``released``: the releases not taken in yet that it concerns (their unsigned ids)."""

    code = "copy_of_released_message"

    def __init__(self, released: list[str]) -> None:
        super().__init__(
            "decided while the release of a quarantined copy was not taken in yet: " + ", ".join(released)
        )
        self.released = released
