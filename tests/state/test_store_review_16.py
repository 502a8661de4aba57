"""Second review of the sixteenth session's fix 6c569fb on the SQLite store: an idempotency key's digest is kept
after its note in ``messages.seen_note`` (separated by U+001F, docs/ENGINE.md §8).

A note an earlier version wrote holds no digest, and nothing kept a note from holding U+001F then: the engine's
notes carry the verification text of the message (``unverified: <its problems>``), which a store must take
whatever it is. Such a record made every start fail (``int(..., 16)`` on the text after the character: a
gateway that cannot restore its engine does not start) or, when that text happened to be hexadecimal, read back
another note and a digest its message never had.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from gateway.engine.config import EngineConfig
from gateway.engine.effects import Table
from gateway.engine.events import InventoryObserved
from gateway.engine.state import Seen
from gateway.store.durable import DurableEngine
from gateway.store.sqlite import SqliteStore
from tests.engine.engine_support import ESME, MemoryInventory, MemoryScope, t


def _observed(verification: str) -> InventoryObserved:
    return InventoryObserved(
        message_id="inv-1#inv:00DB1234567890A0", arrival=t(1), verified=False, verification=verification,
        digest=0x0123456789ABCDEF01234567, esme=ESME, ch=None, mpan=None, time=t(0),
    )  # fmt: skip


def _keys(durable: DurableEngine) -> dict[str, Seen]:
    out: dict[str, Seen] = {}
    for change in durable.engine.export_state():
        if change.table is Table.SEEN:
            assert isinstance(change.value, Seen)
            out[change.key] = change.value
    return out


@pytest.mark.parametrize(
    "old_note",
    [
        "unverified: gbcs-mismatch:\x1fx",  # the text after U+001F is no digest
        "unverified: gbcs-mismatch:\x1fbeef",  # nor is hexadecimal text that is not one
        "unverified: a\x1f\x1fb",
    ],
)
def test_a_key_an_earlier_version_kept_with_u_001f_in_its_note_is_restored_with_that_note_and_no_digest(
    tmp_path: Path, old_note: str
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, checkpoint_interval=0)
    durable = DurableEngine(store, EngineConfig(), MemoryScope([ESME]), MemoryInventory())
    durable.submit(_observed("ok"))
    store.close()
    with sqlite3.connect(path) as db:  # the key as the earlier version wrote it: its note, nothing after it
        assert db.execute("UPDATE messages SET seen_note=?", (old_note,)).rowcount == 1
    db.close()
    store = SqliteStore(path, checkpoint_interval=0)
    try:
        # was: ValueError (every start failed)
        again = DurableEngine(store, EngineConfig(), MemoryScope([ESME]), MemoryInventory())
        [key] = _keys(again).values()
        assert (key.note, key.digest) == (old_note, None)
    finally:
        store.close()


@pytest.mark.parametrize("digest", [0x0123456789ABCDEF01234567, 7, None])
@pytest.mark.parametrize("verification", ["ok", "a\x1fb", "a\x1f" + "0" * 24, "\x1f", "a\x1f\x1f"])
def test_a_key_this_version_keeps_comes_back_with_its_note_and_digest_whatever_the_note(
    tmp_path: Path, verification: str, digest: int | None
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, checkpoint_interval=0)
    durable = DurableEngine(store, EngineConfig(), MemoryScope([ESME]), MemoryInventory())
    durable.submit(dataclasses.replace(_observed(verification), digest=digest))
    want = _keys(durable)
    assert [(k.note, k.digest) for k in want.values()] == [(f"unverified: {verification}", digest)]
    store.close()
    store = SqliteStore(path, checkpoint_interval=0)
    try:
        again = DurableEngine(store, EngineConfig(), MemoryScope([ESME]), MemoryInventory())
        assert _keys(again) == want
    finally:
        store.close()
