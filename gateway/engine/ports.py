"""What the correlation engine needs to ask of the world, as protocols (implemented by
``gateway.guids.GuidSet`` and ``gateway.inventory.Inventory``). EUI-64s are ints (see ``gbcs.eui``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from gateway.engine.state import LearnedLink

__all__ = ["InventoryView", "LearningTransactions", "ScopeView"]


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

    def learned(self, esme: int) -> LearnedLink | None:
        """What verified traffic taught about this ESME, each link with the time of its evidence
        (``at`` None); None when nothing was learned."""
        ...

    def learn_link(self, link: LearnedLink) -> LearnedLink | None:
        """Apply links seen in verified traffic by the ordering rule of
        :func:`gateway.engine.state.merge_learned` (each link: the newest evidence by its own time,
        whatever the order of application), after the end of its Comms Hub when one is known
        (:func:`gateway.engine.state.after_hub_end`). Returns the ESME's learned state (as
        :meth:`learned`) when any of it changed, else None."""
        ...

    def hub_end(self, ch: int) -> datetime | None:
        """The time of the latest end recorded for this Comms Hub (:meth:`end_hub`), None when none."""
        ...

    def end_hub(self, ch: int, time: datetime) -> bool:
        """Record the Comms Hub's end at ``time`` (kept when it is the latest) and end, as of ``time``, the
        Comms Hub link of every ESME behind it unless newer evidence of the link is known; link evidence
        not newer than the end, applied later, never links an ESME to the hub. Returns True when the
        recorded end changed."""
        ...


@runtime_checkable
class LearningTransactions(Protocol):
    """An inventory whose learning can be undone (:class:`gateway.inventory.InventoryRegistry`): what is
    learned between :meth:`begin_learning` and :meth:`rollback_learning` is forgotten, so that a batch
    whose store commit failed leaves the inventory as it was before the batch."""

    def begin_learning(self) -> None: ...

    def commit_learning(self) -> None: ...

    def rollback_learning(self) -> None: ...
