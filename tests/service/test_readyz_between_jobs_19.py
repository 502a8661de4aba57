"""``/readyz`` answers a store probe not answered within its wait from the last outcome while the store's thread is
busy (``SqliteStore.busy_for``). Between two jobs — one ended, the next queued — the thread read as idle for those
microseconds, and a probe whose wait ended then made ``/readyz`` say ``store_unavailable`` once on a busy, healthy
gateway. A job queued on the thread now makes it busy (0 s into the next job)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.service.outbox import SqliteStore


async def test_the_stores_thread_between_two_jobs_is_busy_not_idle(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gw.sqlite3", synchronous="NORMAL")
    await store.open()
    try:
        clock = store.executor
        assert store.busy_for() is None  # idle
        gate = threading.Event()
        # the thread taken by something that is no job of the clock's: the instant between two jobs, held open
        between = ThreadPoolExecutor.submit(clock, gate.wait, 10)
        queued = clock.submit(lambda: "next")
        await asyncio.sleep(0.05)
        assert not queued.done()  # (waiting for the thread)
        assert store.busy_for() == 0.0  # was: None (idle), and /readyz said store_unavailable
        gate.set()
        assert await asyncio.wrap_future(queued) == "next"
        assert between.result(5) is True
        assert store.busy_for() is None  # idle again: nothing queued
        running = threading.Event()
        release = threading.Event()

        def long_job() -> None:
            running.set()
            release.wait(10)

        job = clock.submit(long_job)
        assert await asyncio.to_thread(running.wait, 5)
        ran = store.busy_for()
        assert ran is not None and ran >= 0.0  # a job in progress: its time so far
        release.set()
        await asyncio.wrap_future(job)
        assert store.busy_for() is None
    finally:
        await store.close()
