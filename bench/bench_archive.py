"""Archiving the settled history (``duisgw audit archive``): ``python bench/bench_archive.py [--quick]``.

Builds a decision store of N forwarded and delivered AD1s (1.6 KB bytes each, ``DurableEngine`` on SQLite),
moves its clock four days on (a tick), then archives everything before the cut-off with
``gateway.store.archive.archive_settled`` at chunks of 100 and 500 messages, each on a fresh copy of the
store. Reported: messages moved per second and the time of one chunk's transaction (what a running
gateway's next commit waits behind), against the baseline measured in the same run: the same rows copied
into another database and deleted in ONE transaction (``ATTACH``, ``INSERT ... SELECT``, ``DELETE``: the
floor of moving those bytes, with nothing checked and the gateway locked out for the whole copy).
Writes bench/out/archive.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(ROOT))

from gateway.engine import EngineConfig, PowerOutage, Tick  # noqa: E402
from gateway.guids import GuidSet  # noqa: E402
from gateway.inventory import Inventory  # noqa: E402
from gateway.store import DurableEngine, SqliteStore  # noqa: E402
from gateway.store.archive import archive_settled  # noqa: E402

T0 = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
CH = 0x00DBFF0000000000  # no inventory row names it: every AD1 is forwarded


def build(path: Path, count: int, raw: bytes) -> None:
    d = DurableEngine(SqliteStore(path), EngineConfig(), GuidSet.from_iterable(()), Inventory())
    for start in range(0, count, 512):
        batch = []
        for j in range(start, min(count, start + 512)):
            at = T0 + timedelta(milliseconds=j)
            ad1 = PowerOutage(message_id=f"h{j:09d}", arrival=at, verified=True, verification="ok", ch=CH,
                              mpan=None, start_time=at - timedelta(minutes=4))  # fmt: skip
            batch.append((ad1, raw))
        d.submit_many(batch)
        d.store.mark_delivered(f"h{j:09d}" for j in range(start, min(count, start + 512)))
    clock = d.engine.clock
    assert clock is not None
    d.submit(Tick(clock + timedelta(days=4)))
    d.store.close()


def baseline(path: Path, archive: Path) -> float:
    """Seconds to copy every message but the newest (and its decisions) and delete them, one transaction."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"ATTACH DATABASE '{archive}' AS arch")
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE arch.messages AS SELECT * FROM messages WHERE 0")
        conn.execute("CREATE TABLE arch.decisions AS SELECT * FROM decisions WHERE 0")
        top = conn.execute("SELECT max(seq) FROM messages").fetchone()[0]
        conn.execute("INSERT INTO arch.messages SELECT * FROM messages WHERE seq < ?", (top,))
        conn.execute(
            "INSERT INTO arch.decisions SELECT * FROM decisions WHERE message_id IN "
            "(SELECT message_id FROM messages WHERE seq < ?)",
            (top,),
        )
        conn.execute(
            "DELETE FROM decisions WHERE message_id IN (SELECT message_id FROM messages WHERE seq < ?)", (top,)
        )
        conn.execute("DELETE FROM messages WHERE seq < ?", (top,))
        conn.execute("COMMIT")
        return time.perf_counter() - t
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20,000 messages instead of 100,000")
    ap.add_argument("--messages", type=int, default=None)
    args = ap.parse_args(argv)
    count = args.messages or (20_000 if args.quick else 100_000)
    raw = os.urandom(1200).hex().encode()[:1600]
    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    results: dict[str, object] = {"messages": count, "python": sys.version.split()[0], "loadavg": os.getloadavg()[0]}
    try:
        base = work / "store.sqlite3"
        t = time.perf_counter()
        build(base, count, raw)
        print(f"store: {count:,} forwarded, delivered AD1s ({base.stat().st_size >> 20} MiB) in "
              f"{time.perf_counter() - t:.1f} s", flush=True)  # fmt: skip

        def fresh() -> Path:
            db = work / "run.sqlite3"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{work / 'archive.sqlite3'}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(base, db)
            return db

        floor = baseline(fresh(), work / "archive.sqlite3")
        moved = count - 1
        rows = [("baseline: one transaction, INSERT ... SELECT + DELETE", moved / floor, floor * 1e3, 1)]
        for chunk in (100, 500):
            db = fresh()
            t = time.perf_counter()
            report = archive_settled(db, work / "archive.sqlite3", before=T0 + timedelta(days=1),
                                     keep_for=EngineConfig().keep_for, transport_db=None, chunk=chunk)  # fmt: skip
            wall = time.perf_counter() - t
            assert report.messages == moved, report
            rows.append((f"archive_settled, {chunk} a chunk", moved / wall, wall / report.transactions * 1e3,
                         report.transactions))  # fmt: skip
    finally:
        shutil.rmtree(work)
    print(f"\n{'run':<55} {'messages/s':>11} {'ms a transaction':>17} {'transactions':>13} {'vs baseline':>12}")
    for name, rate, ms, n in rows:
        print(f"{name:<55} {rate:>11,.0f} {ms:>17.1f} {n:>13,} {rate / rows[0][1]:>12.2f}")
    results["rows"] = [{"run": n, "per_s": round(r), "ms_per_transaction": round(ms, 2), "transactions": t}
                       for n, r, ms, t in rows]  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "archive.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
