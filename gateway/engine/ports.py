"""What the correlation engine needs to ask of the world, as protocols (implemented by
``gateway.guids.GuidSet`` and ``gateway.inventory.Inventory``). EUI-64s are ints (see ``gbcs.eui``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["InventoryView", "ScopeView"]


class ScopeView(Protocol):
    """The MP102B GUID list: the set of affected ESME EUI-64s."""

    def __contains__(self, eui: object) -> bool: ...

    def __len__(self) -> int: ...


class InventoryView(Protocol):
    """ESME <-> Comms Hub <-> MPAN (+ manufacturer, model) links, from a snapshot and learned from traffic."""

    def esmes_for_ch(self, ch: int) -> Sequence[int]:
        """ESMEs known to sit behind this Comms Hub (empty when unknown)."""
        ...

    def esmes_for_mpan(self, mpan: str) -> Sequence[int]:
        """ESMEs known to serve this MPAN (empty when unknown)."""
        ...

    def ch_for_esme(self, esme: int) -> int | None: ...

    def mpan_for_esme(self, esme: int) -> str | None: ...

    def manufacturer_of(self, esme: int) -> str | None: ...

    def learn(
        self,
        esme: int,
        ch: int | None = None,
        mpan: str | None = None,
        manufacturer: str | None = None,
        model: str | None = None,
    ) -> bool:
        """Record a link seen in verified traffic; returns True when anything changed."""
        ...
