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
from archive_support import AD1_101, CUT, audit, days_later, engine, query, store_path

from gateway.engine import PowerOutage
from gateway.store import SqliteStore

FORWARD_106 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:106|DCCAlertMessage.AD1"







def test_settled_messages_move_with_their_decisions_and_routes_and_the_archive_reads_like_the_store(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # a dead letter: delivery never succeeded
        conn.execute("UPDATE outbox SET state = 'dead' WHERE message_id = ?", (FORWARD_106,))
    before = {str(m): (raw, s) for m, raw, s in query(db, "SELECT message_id, raw, status FROM messages")}
    decided = {
        str(m): n for m, n in query(db, "SELECT message_id, count(*) FROM decisions GROUP BY message_id")
    }
    early = [
        str(m)
        for (m,) in query(
            db, "SELECT message_id FROM messages WHERE julianday(arrival) < julianday(?)", (CUT,)
        )
    ]
    assert len(early) == 22
    routed = {str(m) for (m,) in query(db, "SELECT message_id FROM routes")}

    rc, out, err = audit(
        capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive), "--chunk", "7"
    )
    assert rc == 0, err
    moved = [m for m in early if m != FORWARD_106]
    assert out.startswith(f"archived {len(moved)} message(s), ") and "1 message(s) from before" in out

    live = {str(m) for (m,) in query(db, "SELECT message_id FROM messages")}
    kept = {str(m): (raw, s) for m, raw, s in query(archive, "SELECT message_id, raw, status FROM messages")}
    assert live == set(before) - set(moved) and FORWARD_106 in live
    assert kept == {m: before[m] for m in moved}  # bytes and status unchanged
    in_archive = dict(query(archive, "SELECT message_id, count(*) FROM decisions GROUP BY message_id"))
    assert in_archive == {m: decided[m] for m in moved if m in decided}
    assert not query(
        db, f"SELECT 1 FROM decisions WHERE message_id IN ({','.join('?' * len(moved))})", tuple(moved)
    )
    archived_routes = {str(m) for (m,) in query(archive, "SELECT message_id FROM routes")}
    assert archived_routes == routed & set(moved) and len(archived_routes) == 7  # the inline ones
    assert {str(m) for (m,) in query(db, "SELECT message_id FROM routes")} == routed - set(moved)

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
    db, archive = store_path(work), work / "archive.sqlite3"
    count = query(db, "SELECT count(*) FROM messages")
    rc, _, err = audit(
        capsys, "archive", "--config", str(work / "gateway.toml"), "--before", CUT, "--to", str(archive)
    )
    assert rc == 2 and "the latest allowed is 2026-02-28T11:05:01" in err and "nothing moved" in err
    assert query(db, "SELECT count(*) FROM messages") == count and not archive.exists()


def test_a_run_cut_between_its_archive_commit_and_its_live_commit_is_completed_by_the_next(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    saved = work / "saved.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn, contextlib.closing(sqlite3.connect(saved)) as copy:
        conn.backup(copy)  # the live store as it was before the run
    assert audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))[0] == 0
    first = (
        query(archive, "SELECT * FROM messages ORDER BY seq"),
        query(archive, "SELECT * FROM decisions ORDER BY seq"),
    )
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(saved, db)  # the live commit lost: every archived row is in both files

    rc, out, _ = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 0 and out.startswith(f"archived {len(first[0])} message(s)")
    again = (
        query(archive, "SELECT * FROM messages ORDER BY seq"),
        query(archive, "SELECT * FROM decisions ORDER BY seq"),
    )
    assert again == first  # each row once, unchanged
    archived = [str(r[1]) for r in first[0]]
    held = query(
        db,
        f"SELECT count(*) FROM messages WHERE message_id IN ({','.join('?' * len(archived))})",
        tuple(archived),
    )
    assert held == [(0,)]


def test_the_newest_rows_stay_and_a_restored_gateway_numbers_after_the_archive(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    newest = (
        query(db, "SELECT max(seq) FROM messages")[0][0],
        query(db, "SELECT max(seq) FROM decisions")[0][0],
    )
    rc, _, err = audit(
        capsys, "archive", "--config", config, "--before", "2026-03-03T00:00:00Z", "--to", str(archive)
    )
    assert rc == 0, err
    assert [r[0] for r in query(db, "SELECT seq FROM messages")] == [newest[0]]
    assert [r[0] for r in query(db, "SELECT seq FROM decisions")] == [newest[1]]

    d = engine(db)  # a gateway started on the live store decides on
    clock = d.engine.clock
    assert clock is not None
    at = clock + timedelta(seconds=1)
    ad1 = PowerOutage(message_id="after-the-archive", arrival=at, verified=True, verification="ok",
                      ch=0x00DBFF0000000001, mpan=None, start_time=at - timedelta(minutes=4))  # fmt: skip
    d.submit(ad1, b"<AD1/>")
    d.store.close()
    [(seq,)] = query(db, "SELECT seq FROM decisions WHERE message_id = 'after-the-archive'")
    assert seq > max(int(str(r[0])) for r in query(archive, "SELECT seq FROM decisions"))


def test_an_archive_run_beside_a_deciding_gateway_moves_its_rows_and_loses_none_of_the_gateways(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gateway's writer (its own connection, as in ``serve``) commits a batch after each of its decisions
    while the archive moves one message per transaction: each waits for the other's lock, nothing fails."""
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    d = engine(db)
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
    live = [str(m) for (m,) in query(db, "SELECT message_id FROM messages WHERE message_id LIKE 'live-%'")]
    assert (
        len(live) == 300 and len(query(db, "SELECT 1 FROM decisions WHERE message_id LIKE 'live-%'")) == 300
    )


def test_an_archive_file_that_is_a_gateways_store_is_refused_for_writing_and_reading(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = store_path(work), str(work / "gateway.toml")
    days_later(work, 4)
    other = work / "other-gateway.sqlite3"
    shutil.copyfile(db, other)  # another gateway's store (its clock, its messages), not an archive
    count = query(db, "SELECT count(*) FROM messages")
    for target in (db, other):
        rc, _, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(target))
        assert rc == 2 and "nothing moved" in err
    assert (
        query(db, "SELECT count(*) FROM messages") == count == query(other, "SELECT count(*) FROM messages")
    )
    rc, _, err = audit(capsys, "list", "--config", config, "--archive", str(other))
    assert rc == 2 and "is not an archive" in err


def test_a_run_cut_between_a_chunks_two_commits_is_resolved_by_the_next_run_into_that_file(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive commit of AD1 101's chunk landed, the live commit did not (an I/O error between them): the
    chunk is in both files, recorded in the archive. A run into another file is refused while it is (it would
    be in two archives); an operator releases AD1 101 meanwhile; the next run into the file finishes the
    chunk's unchanged messages and takes AD1 101's copy back out (the live store's row stands)."""
    from gateway.store import archive as archive_module

    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    write = archive_module._Run._write

    def cut(run: archive_module._Run, moved: archive_module._Chunk) -> None:
        write(run, moved)  # the archive's commit
        at = moved.messages[0].index("message_id")
        if any(r[at] == AD1_101 for r in moved.messages[1]):
            raise OSError("I/O error between the two commits")

    monkeypatch.setattr(archive_module._Run, "_write", cut)
    rc, _, err = audit(
        capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive), "--chunk", "7"
    )
    assert rc == 2 and "I/O error" in err
    monkeypatch.undo()
    live = {str(m) for (m,) in query(db, "SELECT message_id FROM messages")}
    archived = {str(m) for (m,) in query(archive, "SELECT message_id FROM messages")}
    assert AD1_101 in live & archived  # the cut chunk: in both files

    elsewhere = work / "archive-b.sqlite3"
    rc, _, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(elsewhere))
    assert rc == 2 and f"--to {archive.resolve()}` again first" in err and "nothing moved" in err
    assert not elsewhere.exists()

    rc, _, err = audit(
        capsys, "release", AD1_101, "--config", config, "--operator", "alice", "--note", "genuine"
    )
    assert rc == 0, err
    rc, out, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 0, err
    assert "changed since taken back out of the archive" in out
    live = {str(m) for (m,) in query(db, "SELECT message_id FROM messages")}
    archived = {str(m) for (m,) in query(archive, "SELECT message_id FROM messages")}
    assert AD1_101 in live and live & archived == set()
    live_decisions = {int(str(s)) for (s,) in query(db, "SELECT seq FROM decisions")}
    assert live_decisions.isdisjoint(int(str(s)) for (s,) in query(archive, "SELECT seq FROM decisions"))


def test_an_archive_an_earlier_version_made_is_converted_at_its_first_run_and_keeps_its_rows(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An earlier version's archive (``message_id`` UNIQUE, one route per message id) is rewritten once in
    this format: its rows stay, and a message id can then have a row per life. A format this version does
    not know is refused."""
    from gateway.store.sqlite import ROUTES_SCHEMA

    archive, config = work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    old = SqliteStore(archive, checkpoint_interval=0)  # as the earlier version made it
    conn = old._conn()
    conn.execute(ROUTES_SCHEMA)
    conn.execute("INSERT INTO meta(key, value) VALUES ('archive', 'duisgw decision archive')")
    conn.execute(
        "INSERT INTO messages(seq, message_id, lane, kind, arrival, raw, status, delivered) "
        "VALUES (0, 'archived-earlier', 'inline', 'DCCAlertMessage.AD1', '2025-12-01T00:00:00+00:00', ?, "
        "'forward', 1)",
        (b"<AD1 archived earlier/>",),
    )
    conn.execute(
        "INSERT INTO routes(message_id, destination, received_at, kind) "
        "VALUES ('archived-earlier', 'dno', '2025-12-01T00:00:00+00:00', 'DCCAlertMessage.AD1')"
    )
    old.close()
    assert any(r[2] for r in query(archive, "PRAGMA index_list(messages)"))  # a UNIQUE index

    rc, out, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 0 and out.startswith("archived 22 message(s)"), err
    assert query(archive, "SELECT raw FROM messages WHERE message_id = 'archived-earlier'") == [
        (b"<AD1 archived earlier/>",)
    ]
    assert query(archive, "SELECT destination FROM routes WHERE message_id = 'archived-earlier'") == [
        ("dno",)
    ]
    assert not any(r[2] for r in query(archive, "PRAGMA index_list(messages)"))  # message_id: not unique
    assert query(archive, "SELECT value FROM meta WHERE key = 'archive_format'") == [("2",)]
    assert query(archive, "SELECT count(*) FROM messages") == [(23,)]
    rc, out, _ = audit(capsys, "show", AD1_101, "--config", config, "--archive", str(archive))
    assert rc == 0 and "activation-window" in out

    with contextlib.closing(sqlite3.connect(archive)) as conn, conn:
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'archive_format'")
    rc, _, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 2 and "archive format 3" in err and "nothing moved" in err


def test_a_run_that_moves_nothing_records_no_cut_off(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The live store records the cut-off and the file in the transaction of a run's first delete: a run
    that moved nothing leaves no note for `export` (nor does a refused one)."""
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    rc, out, err = audit(
        capsys, "archive", "--config", config, "--before", "2026-03-01T00:00:00Z", "--to", str(archive)
    )
    assert rc == 1 and out.startswith("archived 0 message(s)"), err
    assert query(db, "SELECT key FROM meta WHERE key IN ('archived_before', 'archive_files')") == []
    _, _, err = audit(capsys, "export", "--config", config, "--date", "2026-02-28")
    assert "archive" not in err


def test_a_live_store_restored_from_before_a_run_of_several_chunks_leaves_nothing_in_both_files(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The live store is restored from a backup taken before a run of several chunks (the run's deletes
    lost), and an operator then releases AD1 101, whose chunk was not the run's last. The next run takes its
    copy back out of the archive (the live store's row stands) and moves the others again, once."""
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    saved = work / "saved.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn, contextlib.closing(sqlite3.connect(saved)) as copy:
        conn.backup(copy)
    rc, _, err = audit(
        capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive), "--chunk", "7"
    )
    assert rc == 0, err
    first = query(archive, "SELECT * FROM messages WHERE message_id != ? ORDER BY seq", (AD1_101,))
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(saved, db)
    rc, _, err = audit(
        capsys, "release", AD1_101, "--config", config, "--operator", "alice", "--note", "genuine"
    )
    assert rc == 0, err

    rc, out, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 0 and "changed since taken back out of the archive" in out, err
    live = {str(m) for (m,) in query(db, "SELECT message_id FROM messages")}
    archived = {str(m) for (m,) in query(archive, "SELECT message_id FROM messages")}
    assert AD1_101 in live and live & archived == set()
    again = query(archive, "SELECT * FROM messages WHERE message_id != ? ORDER BY seq", (AD1_101,))
    paired = {
        str(m) for (m,) in query(db, "SELECT message_id FROM decisions WHERE reason = 'operator-release'")
    }
    assert [r for r in again if str(r[1]) not in paired] == [r for r in first if str(r[1]) not in paired]


def test_a_conflicting_row_that_appears_while_a_run_goes_on_stops_it_before_that_chunk_is_deleted(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row another store would have written under the number of one of this store's decisions appears in
    the archive after the run's checks: the chunks before it move, that chunk is refused before its
    delete (nothing of it leaves the live store, nothing of it is added to the archive)."""
    from gateway.store import archive as archive_module

    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    [(late_id, late_seq)] = query(
        db,
        "SELECT message_id, seq FROM messages WHERE julianday(arrival) < julianday(?) AND seq > 14 "
        "AND EXISTS (SELECT 1 FROM decisions d WHERE d.message_id = messages.message_id) ORDER BY seq LIMIT 1",
        (CUT,),
    )
    [(dseq,)] = query(db, "SELECT min(seq) FROM decisions WHERE message_id = ?", (late_id,))
    claim = archive_module._Run.claim

    def then_a_conflict(run: archive_module._Run, store_id: str, mark: bool) -> None:
        claim(run, store_id, mark)
        run.arch.execute(
            "INSERT INTO decisions(seq, message_id, action, reason, decided_at, record) "
            "VALUES (?, 'another-stores', 'forward', 'other-inline', '2026-01-01T00:00:00+00:00', '{}')",
            (dseq,),
        )

    monkeypatch.setattr(archive_module._Run, "claim", then_a_conflict)
    rc, _, err = audit(
        capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive), "--chunk", "7"
    )
    moved = query(archive, "SELECT count(*) FROM messages")[0][0]
    assert rc == 2 and f"decisions #{dseq}" in err and f"; {moved} message(s) moved before it" in err
    assert isinstance(moved, int) and 0 < moved < 22
    assert query(db, "SELECT count(*) FROM messages WHERE seq = ?", (late_seq,)) == [(1,)]
    assert query(archive, "SELECT count(*) FROM messages WHERE seq >= ?", (late_seq,)) == [(0,)]
    archived = {str(m) for (m,) in query(archive, "SELECT message_id FROM messages")}
    live = {str(m) for (m,) in query(db, "SELECT message_id FROM messages")}
    assert archived & live == set()
