"""The second review of the shared-state commit of the fourteenth session: what the thread that publishes the
learned links back after a loss reads of the inventory while the engine loop learns.

The inventory registry's reads take no lock: safe on the thread that writes it, not on another one. Learning a new
ESME may grow the ESME index, which swaps its arrays and refills them; a read on another thread meanwhile finds an
ESME learned long ago absent — twice in a row as easily as once (a refill of a large index takes long). The
publication then skipped that ESME: its learned link never reached the new list, and once the instance left the
owed set, instances started after the loss decided on the inventory snapshot's (possibly stale) link."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from gateway.engine import EngineConfig
from gateway.guids import GuidSet
from gateway.inventory import Inventory, InventoryRegistry
from gateway.store.redis_state import RedisState, RedisStateConfig, _LearnedFold

AT = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
KNOWN = [0x00AA000000000001 + i for i in range(2_000)]
CH_OLD, CH_NEW = 0x00DB000000000001, 0x00DB000000000002


def test_links_read_by_the_publishing_thread_while_the_engine_loop_learns_are_never_skipped() -> None:
    registry = InventoryRegistry(Inventory())
    for esme in KNOWN:
        registry.learn(esme, ch=CH_OLD, at=AT)
    # (no Redis: what the thread reads of the inventory is all this exercises; nothing connects)
    state = RedisState(RedisStateConfig(url="redis://127.0.0.1:1/0", instance="a"), EngineConfig(),
                       GuidSet.from_iterable(()), registry)  # fmt: skip
    published: list[int] = []
    done = threading.Event()

    # what _republish_thread does with the ESMEs (against an empty list: every one is missing from it)
    def publish() -> None:
        while not done.is_set():
            published.append(sum(1 for _ in state._missing_learned(_LearnedFold(), KNOWN, set())))

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        for i in range(300_000):  # the engine loop learns new ESMEs meanwhile (the index grows several times)
            registry.learn(0x00BB000000000001 + i, ch=CH_NEW, at=AT)
    finally:
        done.set()
        thread.join()
    assert published and set(published) == {len(KNOWN)}, sorted(set(published))[:5]
