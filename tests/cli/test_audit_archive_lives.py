"""``duisgw audit archive`` (gateway/store/archive.py) where a message has more than one life, a store more
than one archive run, or a run more than one commit (found by the tenth session's review; each failed before
its fix):

* a message id decided afresh after its retention does not take a decision made after the cut-off into the
  archive;
* a second store's run into another store's archive file is refused before anything moves (one file holds
  one store: the readers join rows by their numbers), and every row of both stays;
* a message id archived, re-delivered after its retention and archived again keeps both lives' rows and
  bytes;
* an observation whose idempotency key is still within the engine's retention is not moved;
* a run cut between its two commits leaves nothing in both files, even when the rows changed before the next
  run (an operator released one meanwhile);
* a store written before the ``operator_releases`` table existed is archived.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from archive_support import AD1_101, CUT, audit, days_later, engine, query, store_path

from gateway.engine import EngineConfig, PowerOutage, Tick
from gateway.engine.effects import Duplicate
from gateway.engine.events import DeviceStatusChange
from gateway.store.archive import ArchiveRefused, archive_settled

CH = 0x00DBFF0000000001







def _ad1(mid: str, at: datetime) -> PowerOutage:
    return PowerOutage(message_id=mid, arrival=at, verified=True, verification="ok", ch=CH, mpan=None,
                       start_time=at - timedelta(minutes=4))  # fmt: skip


def test_a_message_decided_afresh_after_its_retention_does_not_take_its_new_decision_into_the_archive(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AD1 101 (suppressed on 2026-03-02) is re-delivered three days later, past its retention, and decided
    afresh. The live row keeps its first ``updated`` (the re-decision's columns go to an INSERT OR IGNORE),
    so an archive cut between the two decisions moves the message with the decision taken after the cut."""
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    clock = days_later(work, 3)  # AD1 101's key is pruned
    d = engine(db)
    again = clock + timedelta(seconds=1)
    d.submit(_ad1(AD1_101, again), b"<AD1 again/>")  # decided afresh
    d.submit(_ad1("a-later-one", again + timedelta(seconds=1)), b"<AD1/>")  # the store's newest rows
    d.store.close()
    redecided = query(
        db, "SELECT seq, decided_at FROM decisions WHERE message_id = ? ORDER BY seq", (AD1_101,)
    )
    assert len(redecided) == 2  # 2026-03-02's suppression, and the decision afresh
    days_later(work, 4)
    cut = (again - timedelta(hours=1)).isoformat()  # after the first life, before the re-decision

    rc, _, err = audit(capsys, "archive", "--config", config, "--before", cut, "--to", str(archive))
    assert rc == 0, err
    moved_after_cut = query(
        archive,
        "SELECT seq, decided_at FROM decisions WHERE julianday(decided_at) >= julianday(?)",
        (cut,),
    )
    assert moved_after_cut == []  # "its last decision was taken before before"
    assert query(db, "SELECT count(*) FROM decisions WHERE message_id = ?", (AD1_101,)) != [(0,)]


def _fresh_store(db: Path, ids: list[str], start: datetime) -> datetime:
    """Another gateway's store: forwarded AD1s (in no outbox queue, flagged delivered), then one more (the
    newest rows), and the clock four days on. Returns that clock."""
    d = engine(db)
    at = start
    for mid in ids:
        d.submit(_ad1(mid, at), f"<{mid}/>".encode())
        at += timedelta(minutes=1)
    d.store.mark_delivered(ids)
    d.submit(_ad1(f"{ids[0]}-newest", at), b"<newest/>")
    d.submit(Tick(at + timedelta(days=4)))
    d.store.close()
    return at + timedelta(days=4)


def test_a_second_store_archived_into_the_same_file_loses_no_row_of_either(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two gateway instances on one host (each its own store, OPERATIONS *State on disk*), or one store rebuilt
    after a layout change or restored from a backup, archived into one yearly file: both number their rows
    from 1. The archive wrote messages with INSERT OR REPLACE and decisions with INSERT OR IGNORE by number,
    so the second run replaced the first's messages and dropped its own decisions, having deleted them live.

    (Amended with the fix: the archive keeps the store's numbers, which its readers join the decision log
    by, so one file holds one store. The second store's run is refused before anything moves, its rows stay
    live, the first store's stay in the archive; it archives into a file of its own, and once it has an
    identity of its own the first store's file is refused to it by identity.)"""
    archive, config = work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    rc, _, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 0, err
    first = {str(m): bytes(r) for m, r in query(archive, "SELECT message_id, raw FROM messages")}
    first_decisions = query(archive, "SELECT message_id, decided_at, record FROM decisions ORDER BY seq")
    assert len(first) == 22

    other = work / "other" / "outbox.sqlite3"
    other.parent.mkdir()
    ids = [f"other-{i}" for i in range(5)]
    start = datetime(2026, 3, 10, tzinfo=UTC)
    _fresh_store(other, ids, start)
    decisions_b = query(
        other, "SELECT message_id, decided_at, record FROM decisions WHERE message_id LIKE 'other-_'"
    )
    assert len(decisions_b) == 5
    keep_for = EngineConfig().keep_for
    with pytest.raises(ArchiveRefused, match="another store's archive") as refused:
        archive_settled(
            other, archive, before=start + timedelta(hours=1), keep_for=keep_for, transport_db=None
        )
    assert refused.value.moved.messages == 0
    assert query(other, "SELECT count(*) FROM messages WHERE message_id LIKE 'other-_'") == [
        (5,)
    ]  # nothing moved: all still live
    assert (
        query(other, "SELECT message_id, decided_at, record FROM decisions WHERE message_id LIKE 'other-_'")
        == decisions_b
    )

    kept = {str(m): bytes(r) for m, r in query(archive, "SELECT message_id, raw FROM messages")}
    assert kept == first  # the first store's messages are all still there, and only they
    decisions = query(archive, "SELECT message_id, decided_at, record FROM decisions ORDER BY seq")
    assert decisions == first_decisions

    own = work / "other" / "archive.sqlite3"  # the second store's own file
    report = archive_settled(
        other, own, before=start + timedelta(hours=1), keep_for=keep_for, transport_db=None
    )
    assert report.messages == 5
    assert {str(m) for (m,) in query(own, "SELECT message_id FROM messages")} == set(ids)
    own_decisions = query(own, "SELECT message_id, decided_at, record FROM decisions ORDER BY seq")
    assert all(r in own_decisions for r in decisions_b)  # the second store's decisions too
    with pytest.raises(ArchiveRefused, match="archive of another decision store"):
        archive_settled(
            other, archive, before=start + timedelta(hours=1), keep_for=keep_for, transport_db=None
        )
    assert {str(m): bytes(r) for m, r in query(archive, "SELECT message_id, raw FROM messages")} == first


def test_a_message_id_archived_twice_keeps_the_first_lifes_row_and_bytes(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AD1 101 is archived; the DSP re-delivers it after its retention; the gateway decides it afresh (a new
    row: the old one is in the archive) and a later run archives that too. INSERT OR REPLACE on the
    archive's ``messages`` (``message_id`` UNIQUE) deletes the first row, its original bytes and arrival,
    which were durable in the archive only."""
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    [(raw, arrival)] = query(db, "SELECT raw, arrival FROM messages WHERE message_id = ?", (AD1_101,))
    clock = days_later(work, 4)
    rc, _, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 0, err
    assert query(archive, "SELECT raw, arrival FROM messages WHERE message_id = ?", (AD1_101,)) == [
        (raw, arrival)
    ]

    d = engine(db)  # the gateway, restarted on the live store: AD1 101's key is not there any more
    again = clock + timedelta(seconds=1)
    d.submit(_ad1(AD1_101, again), b"<AD1 re-delivered/>")
    d.store.mark_delivered([AD1_101])  # (its delivery done)
    d.submit(_ad1("a-later-one", again + timedelta(seconds=1)), b"<AD1/>")
    d.store.close()
    days_later(work, 4)
    cut = (again + timedelta(minutes=30)).isoformat()
    rc, _, err = audit(capsys, "archive", "--config", config, "--before", cut, "--to", str(archive))
    assert rc == 0, err

    rows = query(archive, "SELECT raw, arrival FROM messages WHERE message_id = ?", (AD1_101,))
    assert (raw, arrival) in rows  # the first delivery's bytes, which the live store no longer has

    # (added with the fix) `show --archive` lists both lives; `--bytes` names one with --seq
    [(first_seq,), (second_seq,)] = query(
        archive, "SELECT seq FROM messages WHERE message_id = ? ORDER BY seq", (AD1_101,)
    )
    rc, out, err = audit(capsys, "show", AD1_101, "--config", config, "--archive", str(archive))
    assert rc == 0, err
    shown = json.loads(out)
    assert [r["seq"] for r in shown["rows"]] == [first_seq, second_seq]
    assert shown["rows"][0]["arrival"] == arrival
    rc, _, err = audit(capsys, "show", AD1_101, "--config", config, "--archive", str(archive), "--bytes")
    assert rc == 1 and "--seq" in err
    rc, out, err = audit(capsys, "show", AD1_101, "--config", config, "--archive", str(archive), "--bytes",
                         "--seq", str(first_seq))  # fmt: skip
    assert rc == 0 and out.encode() == raw, err  # (the demo's bytes are UTF-8 XML)


def test_an_observation_whose_key_is_still_kept_is_not_moved(tmp_path: Path) -> None:
    """``clock = "message"``: a late observation (its X-DUISGW-Arrival header up to 7 days behind the engine
    clock) is seen, its idempotency key kept, at the engine clock, not at its arrival; ``updated`` stays
    NULL for an observation. The archive selects on ``coalesce(updated, arrival)`` and so moves it while
    the engine still keeps its key: a gateway restarted on the live store decides its re-delivery afresh
    (a second row, the same message in both files) instead of as a duplicate."""
    db, archive = tmp_path / "store.sqlite3", tmp_path / "archive.sqlite3"
    now = datetime(2026, 3, 10, tzinfo=UTC)
    keep_for = EngineConfig().keep_for

    def late(at: datetime) -> DeviceStatusChange:
        return DeviceStatusChange(message_id="late-8F36", arrival=at, verified=True, device=CH,
                                  change="MeterDecommissioningOrWithdrawal", time=at)  # fmt: skip

    d = engine(db)
    d.submit(Tick(now))
    d.submit(late(now - timedelta(days=3)), b"<late/>")  # seen at `now`
    d.submit(_ad1("newest", now + timedelta(seconds=1)), b"<AD1/>")
    d.submit(Tick(now + keep_for - timedelta(hours=1)))  # the key is kept one more hour
    d.store.close()
    [(seen_at,)] = query(db, "SELECT seen_at FROM messages WHERE message_id = 'late-8F36'")
    assert seen_at == now.isoformat()

    archive_settled(db, archive, before=now - timedelta(hours=2), keep_for=keep_for, transport_db=None)

    d = engine(db)  # restarted: the key is within the retention
    out = d.submit(late(now - timedelta(days=3)), b"<late/>")
    d.store.close()
    assert any(isinstance(e, Duplicate) for e in out), out
    assert query(archive, "SELECT count(*) FROM messages WHERE message_id = 'late-8F36'") == [(0,)]


def test_a_run_cut_between_its_commits_leaves_nothing_in_both_files_when_a_row_changed_meanwhile(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The archive commit landed, the live commit did not: AD1 101 is in both files. An operator then
    releases it (it is in the live store: releasable). The next run no longer selects it (decided since),
    so the stale copy stays in the archive for good: its suppression is exported from the archive, its
    decisions are in both files."""
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    saved = work / "saved.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn, contextlib.closing(sqlite3.connect(saved)) as copy:
        conn.backup(copy)
    assert audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))[0] == 0
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(saved, db)  # the live commit lost

    rc, _, err = audit(
        capsys, "release", AD1_101, "--config", config, "--operator", "alice", "--note", "genuine"
    )
    assert rc == 0, err
    rc, _, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 0, err

    live = {str(m) for (m,) in query(db, "SELECT message_id FROM messages")}
    archived = {str(m) for (m,) in query(archive, "SELECT message_id FROM messages")}
    assert AD1_101 in live
    assert live & archived == set()  # every row in one file, as the docs promise after the next run


def test_a_store_written_before_operator_releases_existed_is_archived(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store last written by a gateway from before the ``operator_releases`` table (schema version "1"
    all along: the table is created when a current ``SqliteStore`` opens the file, which the archive's own
    connection never does). The archive guards a missing ``routes`` and ``outbox`` but not this table: its
    first chunk with decisions fails with ``no such table: operator_releases``."""
    db, archive, config = store_path(work), work / "archive.sqlite3", str(work / "gateway.toml")
    days_later(work, 4)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM operator_releases").fetchone() == (0,)
        conn.execute("DROP TABLE operator_releases")  # as an older gateway's store: no such table
    rc, out, err = audit(capsys, "archive", "--config", config, "--before", CUT, "--to", str(archive))
    assert rc == 0, err
    assert out.startswith("archived 22 message(s)")
