"""Subprocess driver for the crash test: replays an event script through DurableEngine + SQLite.

Usage: ``python crash_driver.py DB SCRIPT BATCH``. SCRIPT is JSON lines ``{"event": <tagged event
record>, "raw": <hex of the original bytes or null>}``. On every start the engine is restored from
DB and the script is submitted again from three batches before the last message the store kept
(a sender re-delivering what it has no acknowledgement for; already-decided ids are duplicates).
Prints ``resume N`` and then ``ack N`` after each commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope

from gateway.engine import EngineConfig, Event
from gateway.engine.records import decode_tagged
from gateway.store import DurableEngine, SqliteStore


def world_rows(n: int) -> list[tuple[int, int, str, str]]:
    return [(ESME + i, CH + i, f"{int(MPAN) + i:013d}", "Landis+Gyr") for i in range(n)]


def main(db: str, script: str, batch: int, n_esmes: int) -> int:
    rows = world_rows(n_esmes)
    store = SqliteStore(db)
    durable = DurableEngine(store, EngineConfig(), MemoryScope(r[0] for r in rows[::2] + rows[1::4]), MemoryInventory(rows))
    lines = Path(script).read_text().splitlines()
    items: list[tuple[Event, bytes | None]] = []
    for line in lines:
        rec = json.loads(line)
        items.append((decode_tagged(rec["event"]), None if rec["raw"] is None else bytes.fromhex(rec["raw"])))
    # resume a little before the last message the store has (the sender re-delivers what it has no
    # acknowledgement for, and some of that was committed just before the crash: duplicates)
    kept = {m["message_id"] for m in store.messages()}
    last = max((i for i, (ev, _) in enumerate(items) if getattr(ev, "message_id", None) in kept), default=-1)
    resume = max(0, last + 1 - 3 * batch)
    print(f"resume {resume}", flush=True)
    for i in range(resume, len(items), batch):
        durable.submit_many(items[i : i + batch])
        print(f"ack {i + batch}", flush=True)
    store.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
