"""The second review of the store's fourteenth-session commit: a fault that the store's one-page probe
(``SqliteStore.writable``) does not show.

A full disk still lets SQLite rewrite a page the database already has (the header's ``user_version``, a WAL frame
over one already written), so the probe passes while every batch that needs a new page fails. Each failed batch
then cost a full rebuild of the engine (every idempotency key within the retention: ~35 s at 2 M keys) — the very
cost the commit meant to pay once per fault. ``PRAGMA max_page_count`` gives that fault for real: ``SQLITE_FULL``
for a transaction that grows the database, none for one that rewrites a page.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from test_store_review_14 import ad1, decided, durable, fill_disk, free_disk

from gateway.store.sqlite import StoreHeldOff, failure_reason, unavailable


def test_a_full_disk_the_one_page_probe_does_not_see_rebuilds_the_engine_once_then_holds_off(
    tmp_path: Path,
) -> None:
    d, store = durable(tmp_path / "s.sqlite3")
    d.rebuild_holdoff = 0.2
    try:
        d.submit(ad1("first", 0), b"a")
        loads = store.loads
        conn = fill_disk(store)  # (the disk full: no new page, an old one rewritten)
        store.writable()  # (the probe passes on this store)
        errors: list[BaseException] = []
        for i in range(5):
            with pytest.raises((sqlite3.OperationalError, StoreHeldOff)) as caught:
                d.submit(ad1(f"big-{i}", 1 + i), b"x" * 100_000)
            errors.append(caught.value)
        # the first fails at its commit; the second, after the probe passed and the engine was rebuilt, fails the
        # same way; then none is decided on a rebuild for nothing until the hold-off is over
        assert d.rebuilds == 1 and store.loads - loads == 1, (d.rebuilds, [str(e) for e in errors])
        assert [type(e) for e in errors[2:]] == [StoreHeldOff] * 3
        assert all(unavailable(e) for e in errors)  # the service answers the whole batch 503 (not job by job)
        assert failure_reason(errors[0]) == "full"
        free_disk(conn)  # space again
        with pytest.raises(StoreHeldOff):  # (still within the hold-off)
            d.submit(ad1("big-0", 1), b"x" * 100_000)
        time.sleep(0.25)
        # rebuilt once more, and the refused messages are decided afresh, not answered as duplicates
        for i in range(5):
            assert decided(d.submit(ad1(f"big-{i}", 1 + i), b"x" * 100_000)) == [(f"big-{i}", "forward")]
        assert d.rebuilds == 2 and not d.stale
    finally:
        store.close()


def test_the_hold_off_doubles_while_the_fault_lasts_and_a_commit_resets_it(tmp_path: Path) -> None:
    d, store = durable(tmp_path / "s.sqlite3")
    d.rebuild_holdoff, d.rebuild_holdoff_max = 0.1, 0.3
    try:
        d.submit(ad1("first", 0), b"a")
        conn = fill_disk(store)  # (the disk full: no new page, an old one rewritten)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            d.submit(ad1("big", 1), b"x" * 100_000)  # stale
        with pytest.raises(sqlite3.OperationalError, match="full"):
            d.submit(ad1("big", 1), b"x" * 100_000)  # rebuilt, failed again: held off
        waits = []
        for _ in range(3):
            began = time.monotonic()
            while True:
                try:
                    d.submit(ad1("big", 1), b"x" * 100_000)
                except StoreHeldOff:
                    time.sleep(0.01)
                    continue
                except sqlite3.OperationalError:
                    break  # (the next rebuild's batch, failed again)
            waits.append(time.monotonic() - began)
            assert d.stale
        assert 0.08 < waits[0] < waits[1] and waits[2] < 0.5, waits  # 0.1, 0.2, then 0.3 at most
        free_disk(conn)
        while True:
            try:
                assert decided(d.submit(ad1("big", 1), b"x" * 100_000)) == [("big", "forward")]
                break
            except StoreHeldOff:
                time.sleep(0.01)
        fill_disk(store)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            d.submit(ad1("big-2", 2), b"x" * 100_000)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            d.submit(ad1("big-2", 2), b"x" * 100_000)
        with pytest.raises(StoreHeldOff, match=r"for 0\.[01]"):  # the first hold-off again: a commit reset it
            d.submit(ad1("big-2", 2), b"x" * 100_000)
    finally:
        store.close()
