"""The inventory's reload merge (:meth:`InventoryRegistry.reload`) while the engine goes on learning: the merge of
every learned link with the new snapshot takes seconds with many links learned, and the engine's thread (which
opens a learning transaction for each batch) must not wait for it; what it learns meanwhile reaches the new
snapshot as it would have reached the old one (committed kept, rolled back forgotten, open still undoable)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from gateway.inventory import Inventory, InventoryRegistry, InventoryRow, LearnedLink, MergeReport

ESME = 0x00AA_0000_0000_0000
CH = 0x00BB_0000_0000_0000
AT = 2_000_000_000.0


def _snapshot() -> Inventory:
    rows = (InventoryRow(ESME + 100 + i, CH + 100 + i, None) for i in range(8))
    return Inventory.from_rows(rows, as_of=1_000_000_000.0)


def test_learning_during_a_reload_merge_is_neither_blocked_nor_lost() -> None:
    registry = InventoryRegistry(_snapshot())
    registry.learn(ESME + 1, ch=CH + 1, at=AT)  # learned before the reload: kept by the merge
    new = _snapshot()
    engine_done = threading.Event()

    def engine() -> None:  # the engine's batches while the merge runs
        registry.begin_learning()
        registry.learn(ESME + 2, ch=CH + 2, at=AT)
        registry.commit_learning()
        registry.begin_learning()
        registry.learn(ESME + 3, ch=CH + 3, at=AT)
        registry.rollback_learning()  # its store commit failed: forgotten
        registry.learn(ESME + 4, ch=CH + 4, at=AT)
        registry.begin_learning()
        registry.learn(ESME + 5, ch=CH + 5, at=AT)  # the batch still open at the swap
        engine_done.set()

    merge = new.apply_learned

    def merging(links: Iterable[LearnedLink]) -> MergeReport:
        report = merge(links)
        thread = threading.Thread(target=engine, daemon=True)
        thread.start()
        # the engine learns while the merge runs (it waited for the whole merge: a batch stalled for seconds)
        assert engine_done.wait(5), "the engine's learning waited for the reload's merge"
        return report

    new.apply_learned = merging  # type: ignore[method-assign]
    report = registry.reload(new)
    assert report.kept == 1
    assert registry.current is new
    assert [registry.ch_for_esme(ESME + i) for i in range(1, 6)] == [CH + 1, CH + 2, None, CH + 4, CH + 5]
    registry.rollback_learning()  # the open batch fails after the swap: what it learned goes
    assert registry.ch_for_esme(ESME + 5) is None
    assert [registry.ch_for_esme(ESME + i) for i in (1, 2, 4)] == [CH + 1, CH + 2, CH + 4]
    registry.begin_learning()
    registry.learn(ESME + 6, ch=CH + 6, at=AT)
    registry.commit_learning()
    assert registry.ch_for_esme(ESME + 6) == CH + 6 and registry.current is new
