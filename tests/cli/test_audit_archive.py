"""``duisgw audit archive``: the settled history moves out of the live decision store into an archive file,
which ``list``, ``show`` and ``export`` read with ``--archive``.

* what moves: messages that arrived and were last decided before the cut-off and are settled (observed,
  suppressed, forwarded and in no outbox queue still pending or dead), with their decisions and routes,
  their bytes unchanged; what does not: a dead-lettered forward, anything after the cut-off, the store's
  newest message and decision (their numbers are where the next ones start);
* the cut-off must be at least the engine's retention before the stored gateway clock: refused otherwise,
  nothing moved;
* a run whose archive commit landed but whose live commit did not (a crash between them) is completed by
  the next run: every row once in the archive, none left in the live store;
* a gateway restored from the live store afterwards decides on, numbering after the archived rows;
* an export of a day from before the latest cut-off says that part of it may be in the archive.

The stores are a real gateway's (the live demo's work folder, copied per test: 23 messages on 2026-03-02,
the stored clock at 11:50:01).
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.engine import EngineConfig, PowerOutage, Tick
from gateway.guids import GuidSet
from gateway.inventory import Inventory
from gateway.store import DurableEngine, SqliteStore

FORWARD_106 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:106|DCCAlertMessage.AD1"
AD1_101 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:101|DCCAlertMessage.AD1"
CUT = "2026-03-02T10:00:00Z"  # 22 of the 23 messages arrived before it


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["audit", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _db(work: Path) -> Path:
    return work / "gateway" / "outbox.sqlite3"


def _query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def _engine(db: Path) -> DurableEngine:
    return DurableEngine(SqliteStore(db), EngineConfig(), GuidSet.from_iterable(()), Inventory())


def _days_later(work: Path, days: float) -> None:
    """The gateway ran on with no traffic: its clock (stored at each tick) moved ``days`` on."""
    d = _engine(_db(work))
    clock = d.engine.clock
    assert clock is not None
    d.submit(Tick(clock + timedelta(days=days)))
    d.store.close()


def test_settled_messages_move_with_their_decisions_and_routes_and_the_archive_reads_like_the_store(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, archive, config = _db(work), work / "archive.sqlite3", str(work / "gateway.toml")
    _days_later(work, 4)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # a dead letter: delivery never succeeded
        conn.execute("UPDATE outbox SET state = 'dead' WHERE message_id = ?", (FORWARD_106,))
    before = {str(m): (raw, s) for m, raw, s in _query(db, "SELECT message_id, raw, status FROM messages")}
    decided = {
        str(m): n for m, n in _query(db, "SELECT message_id, count(*) FROM decisions GROUP BY message_id")
    }
    early = [
        str(m)
        for (m,) in _query(
            db, "SELECT message_id FROM messages WHERE julianday(arrival) < julianday(?)", (CUT,)
        )
    ]
    assert len(early) == 22
    routed = {str(m) for (m,) in _query(db, "SELECT message_id FROM routes")}

    rc, out, err = audit(
        capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive), "--chunk", "7"
    )
    assert rc == 0, err
    moved = [m for m in early if m != FORWARD_106]
    assert out.startswith(f"archived {len(moved)} message(s), ") and "1 message(s) from before" in out

    live = {str(m) for (m,) in _query(db, "SELECT message_id FROM messages")}
    kept = {str(m): (raw, s) for m, raw, s in _query(archive, "SELECT message_id, raw, status FROM messages")}
    assert live == set(before) - set(moved) and FORWARD_106 in live
    assert kept == {m: before[m] for m in moved}  # bytes and status unchanged
    in_archive = dict(_query(archive, "SELECT message_id, count(*) FROM decisions GROUP BY message_id"))
    assert in_archive == {m: decided[m] for m in moved if m in decided}
    assert not _query(
        db, f"SELECT 1 FROM decisions WHERE message_id IN ({','.join('?' * len(moved))})", tuple(moved)
    )
    archived_routes = {str(m) for (m,) in _query(archive, "SELECT message_id FROM routes")}
    assert archived_routes == routed & set(moved) and len(archived_routes) == 7  # the inline ones
    assert {str(m) for (m,) in _query(db, "SELECT message_id FROM routes")} == routed - set(moved)

    rc, out, _ = audit(capsys, "show", AD1_101, "--config", config, "--archive", str(archive))
    assert rc == 0 and "activation-window" in out and "dno" in out
    rc, _, err = audit(capsys, "show", AD1_101, "--config", config)
    assert rc == 1 and "--archive FILE" in err
    rc, out, _ = audit(
        capsys, "list", "--config", config, "--archive", str(archive), "--decision", "suppress"
    )
    assert rc == 0 and out.count("DCCAlertMessage.AD1") == 3 and "DeviceAlertMessage.8F36" in out
    rc, out, _ = audit(
        capsys, "export", "--config", config, "--archive", str(archive), "--date", "2026-03-02"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and len(rows) == 4 and {r["destination"] for r in rows} == {"dno"}
    rc, out, err = audit(capsys, "export", "--config", config, "--date", "2026-03-02")
    assert (
        list(csv.DictReader(io.StringIO(out))) == []
    )  # the live store's day is empty now, and it says where
    assert (
        f"messages settled before 2026-03-02T10:00:00+00:00 were moved to an archive ({archive.resolve()})"
        in err
    )
    rc, out, err = audit(capsys, "export", "--config", config, "--date", "2026-03-03")
    assert "archive" not in err  # a day after the cut-off: nothing of it was moved


def test_a_cut_off_within_the_engine_retention_is_refused_and_nothing_moves(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, archive = _db(work), work / "archive.sqlite3"
    count = _query(db, "SELECT count(*) FROM messages")
    rc, _, err = audit(
        capsys, "archive", "--config", str(work / "gateway.toml"), "--before", CUT, "--to", str(archive)
    )
    assert rc == 2 and "the latest allowed is 2026-02-28T11:05:01" in err and "nothing moved" in err
    assert _query(db, "SELECT count(*) FROM messages") == count and not archive.exists()


def test_a_run_cut_between_its_archive_commit_and_its_live_commit_is_completed_by_the_next(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, archive, config = _db(work), work / "archive.sqlite3", str(work / "gateway.toml")
    _days_later(work, 4)
    saved = work / "saved.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn, contextlib.closing(sqlite3.connect(saved)) as copy:
        conn.backup(copy)  # the live store as it was before the run
    assert audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))[0] == 0
    first = (
        _query(archive, "SELECT * FROM messages ORDER BY seq"),
        _query(archive, "SELECT * FROM decisions ORDER BY seq"),
    )
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(saved, db)  # the live commit lost: every archived row is in both files

    rc, out, _ = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 0 and out.startswith(f"archived {len(first[0])} message(s)")
    again = (
        _query(archive, "SELECT * FROM messages ORDER BY seq"),
        _query(archive, "SELECT * FROM decisions ORDER BY seq"),
    )
    assert again == first  # each row once, unchanged
    archived = [str(r[1]) for r in first[0]]
    held = _query(
        db,
        f"SELECT count(*) FROM messages WHERE message_id IN ({','.join('?' * len(archived))})",
        tuple(archived),
    )
    assert held == [(0,)]


def test_the_newest_rows_stay_and_a_restored_gateway_numbers_after_the_archive(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, archive, config = _db(work), work / "archive.sqlite3", str(work / "gateway.toml")
    _days_later(work, 4)
    newest = (
        _query(db, "SELECT max(seq) FROM messages")[0][0],
        _query(db, "SELECT max(seq) FROM decisions")[0][0],
    )
    rc, _, err = audit(
        capsys, "archive", "--config", config, "--before", "2026-03-03T00:00:00Z", "--to", str(archive)
    )
    assert rc == 0, err
    assert [r[0] for r in _query(db, "SELECT seq FROM messages")] == [newest[0]]
    assert [r[0] for r in _query(db, "SELECT seq FROM decisions")] == [newest[1]]

    d = _engine(db)  # a gateway started on the live store decides on
    clock = d.engine.clock
    assert clock is not None
    at = clock + timedelta(seconds=1)
    ad1 = PowerOutage(message_id="after-the-archive", arrival=at, verified=True, verification="ok",
                      ch=0x00DBFF0000000001, mpan=None, start_time=at - timedelta(minutes=4))  # fmt: skip
    d.submit(ad1, b"<AD1/>")
    d.store.close()
    [(seq,)] = _query(db, "SELECT seq FROM decisions WHERE message_id = 'after-the-archive'")
    assert seq > max(int(str(r[0])) for r in _query(archive, "SELECT seq FROM decisions"))


def test_an_archive_run_beside_a_deciding_gateway_moves_its_rows_and_loses_none_of_the_gateways(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gateway's writer (its own connection, as in ``serve``) commits a batch after each of its decisions
    while the archive moves one message per transaction: each waits for the other's lock, nothing fails."""
    db, archive, config = _db(work), work / "archive.sqlite3", str(work / "gateway.toml")
    _days_later(work, 4)
    d = _engine(db)
    clock = d.engine.clock
    assert clock is not None
    errors: list[BaseException] = []
    done = threading.Event()

    def gateway() -> None:
        try:
            for i in range(300):
                at = clock + timedelta(seconds=i + 1)
                ad1 = PowerOutage(message_id=f"live-{i}", arrival=at, verified=True, verification="ok",
                                  ch=0x00DBFF0000000001, mpan=None, start_time=at - timedelta(minutes=4))  # fmt: skip
                d.submit(ad1, b"<AD1/>")
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=gateway)
    writer.start()
    rc, out, err = audit(
        capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive), "--chunk", "1"
    )
    writer.join(60)
    d.store.close()
    assert done.is_set() and not errors
    assert rc == 0 and out.startswith("archived 22 message(s)"), err  # all 22 settled messages before the cut
    live = [str(m) for (m,) in _query(db, "SELECT message_id FROM messages WHERE message_id LIKE 'live-%'")]
    assert (
        len(live) == 300 and len(_query(db, "SELECT 1 FROM decisions WHERE message_id LIKE 'live-%'")) == 300
    )


def test_an_archive_file_that_is_a_gateways_store_is_refused_for_writing_and_reading(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = _db(work), str(work / "gateway.toml")
    _days_later(work, 4)
    other = work / "other-gateway.sqlite3"
    shutil.copyfile(db, other)  # another gateway's store (its clock, its messages), not an archive
    count = _query(db, "SELECT count(*) FROM messages")
    for target in (db, other):
        rc, _, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(target))
        assert rc == 2 and "nothing moved" in err
    assert (
        _query(db, "SELECT count(*) FROM messages") == count == _query(other, "SELECT count(*) FROM messages")
    )
    rc, _, err = audit(capsys, "list", "--config", config, "--archive", str(other))
    assert rc == 2 and "is not an archive" in err
