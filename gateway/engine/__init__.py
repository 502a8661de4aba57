"""The MP102B correlation engine (sans-I/O): verified DUIS/GBCS facts in, decisions out.

Start with :class:`Engine` (``engine``), the event types (``events``), the decisions and state
changes it returns (``effects``), its single configuration object (``config``) and the
firmware-activation state machine (``activation``). docs/ENGINE.md explains it for people.
"""

from __future__ import annotations

from gateway.engine.activation import Activation, ActState
from gateway.engine.config import EngineConfig
from gateway.engine.effects import (
    DEVICE_CLOCK_UNRELIABLE,
    Action,
    Decision,
    Duplicate,
    Effect,
    EvidenceItem,
    Observed,
    Reason,
    StateChange,
    Table,
)
from gateway.engine.engine import Engine, records_of
from gateway.engine.errors import EngineConfigError, EngineStateError, StoreError
from gateway.engine.events import (
    ActivationRequested,
    ActivationResponse,
    DeviceStatusChange,
    Event,
    FutureDatedOutcome,
    InlineEvent,
    InventoryObserved,
    InventoryUnlinked,
    ObservationEvent,
    OtherInline,
    PowerOutage,
    SupplyRestored,
    Tick,
)
from gateway.engine.ports import InventoryView, ScopeView

__all__ = [
    "DEVICE_CLOCK_UNRELIABLE",
    "ActState",
    "Action",
    "Activation",
    "ActivationRequested",
    "ActivationResponse",
    "Decision",
    "DeviceStatusChange",
    "Duplicate",
    "Effect",
    "Engine",
    "EngineConfig",
    "EngineConfigError",
    "EngineStateError",
    "Event",
    "EvidenceItem",
    "FutureDatedOutcome",
    "InlineEvent",
    "InventoryObserved",
    "InventoryUnlinked",
    "InventoryView",
    "ObservationEvent",
    "Observed",
    "OtherInline",
    "PowerOutage",
    "Reason",
    "ScopeView",
    "StateChange",
    "StoreError",
    "SupplyRestored",
    "Table",
    "Tick",
    "records_of",
]
