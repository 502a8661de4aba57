"""``duisgw audit release`` of a suppressed AD1 whose restoration alert was suppressed as paired with it
(``restoration-paired``, evidence: that AD1) releases the restoration too: a DNO that gets the outage
but never its end sees a premises off supply for ever.

Pinned down, on the stores of a real gateway run (the live demo: AD1 101 suppressed, the 8F36
restoration of meter 1 paired with it): the restoration is recorded as its own operator release (who,
and a note saying it follows the AD1's), put in the same destination's outbox queue AFTER the AD1 in
the same transaction, named in the output; exactly once (a second release of the AD1 is refused and
releases nothing; a restoration released on its own before is not released again); ``--without-restoration``
releases the AD1 alone; when the outbox cannot be written both releases stand, left to the gateway's
redelivery scan in arrival order. (Shared state: tests/scaleout/test_shared_audit_cli.py.)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from test_audit_export_and_release import (
    AD1_101,
    AD1_108,
    audit,
    configure,
    decisions,
    locked,
    message_row,
)

from gateway.store.sqlite import SqliteStore

RESTORATION = "00-DB-00-00-00-00-00-01:90-B3-D5-1F-30-02-00-00:1048577|DeviceAlertMessage.8F36"
NOTE = "field visit: genuine outage"


def release_rows(db: Path, message_id: str) -> list[dict[str, object]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT record FROM decisions WHERE message_id = ? AND action = 'release-forward'",
                            (message_id,)).fetchall()  # fmt: skip
    return [json.loads(r[0]) for r in rows]


def outbox(db: Path) -> list[tuple[str, str]]:
    """``(queue, message id)`` of every outbox row, in queue order."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT queue, message_id FROM outbox ORDER BY seq").fetchall()


def test_the_demo_pairs_its_restoration_with_ad1_101(work: Path) -> None:
    store = SqliteStore(work / "gateway" / "outbox.sqlite3", checkpoint_interval=0)
    try:
        assert store.paired_restorations(AD1_101) == [RESTORATION]
        assert store.paired_restorations(AD1_108) == []
    finally:
        store.close()


def test_releasing_an_ad1_releases_its_paired_restoration_after_it_once(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = work / "gateway" / "outbox.sqlite3", str(work / "gateway.toml")
    before = outbox(db)
    rc, out, err = audit(
        capsys, "release", "--config", config, AD1_101, "--operator", "alice", "--note", NOTE
    )
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        f"released {AD1_101} to dno (1 outbox row(s)) by alice",
        f"released {RESTORATION} to dno (1 outbox row(s)), the restoration paired with {AD1_101}, "
        "queued after it, by alice",
    ]
    # same queue, the AD1 first
    assert outbox(db)[len(before) :] == [("http:dno", AD1_101), ("http:dno", RESTORATION)]
    (ad1,) = release_rows(db, AD1_101)
    (restored,) = release_rows(db, RESTORATION)
    assert (ad1["operator"], ad1["note"]) == ("alice", NOTE)
    assert (restored["operator"], restored["reason"]) == ("alice", "operator-release")
    assert restored["note"] == f"follows the release of {AD1_101}: {NOTE}"
    assert message_row(db, RESTORATION) == ("forward", 1)  # in the outbox: not the redelivery scan's again
    # the gateway takes both in (counted once each, under their kinds)
    store = SqliteStore(db, checkpoint_interval=0)
    try:
        assert [mid for _seq, mid, _kind in store.operator_releases()] == [AD1_101, RESTORATION]
    finally:
        store.close()

    # exactly once: a second release of the AD1 is refused and releases nothing more
    rc, out, err = audit(
        capsys, "release", "--config", config, AD1_101, "--operator", "bob", "--note", "again"
    )
    assert (rc, out) == (1, "")
    assert "is forward, not suppressed" in err
    rc, out, err = audit(
        capsys, "release", "--config", config, RESTORATION, "--operator", "bob", "--note", "x"
    )
    assert (rc, out) == (1, "")
    assert len(release_rows(db, AD1_101)) == len(release_rows(db, RESTORATION)) == 1
    assert outbox(db)[len(before) :] == [("http:dno", AD1_101), ("http:dno", RESTORATION)]


def test_without_restoration_releases_the_ad1_alone(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, config = work / "gateway" / "outbox.sqlite3", str(work / "gateway.toml")
    rc, out, err = audit(capsys, "release", "--config", config, AD1_101, "--operator", "alice", "--note", NOTE,
                         "--without-restoration")  # fmt: skip
    assert (rc, err) == (0, "")
    assert out == f"released {AD1_101} to dno (1 outbox row(s)) by alice\n"
    assert decisions(db, RESTORATION) == [("suppress", "restoration-paired")]
    assert message_row(db, RESTORATION) == ("suppress", 0)
    assert RESTORATION not in [mid for _q, mid in outbox(db)]
    # the operator may release it on its own later, as before
    rc, out, err = audit(
        capsys, "release", "--config", config, RESTORATION, "--operator", "alice", "--note", "now"
    )
    assert rc == 0 and out == f"released {RESTORATION} to dno (1 outbox row(s)) by alice\n", err


def test_a_restoration_released_on_its_own_before_is_not_released_again_with_its_ad1(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = work / "gateway" / "outbox.sqlite3", str(work / "gateway.toml")
    rc, _out, err = audit(
        capsys, "release", "--config", config, RESTORATION, "--operator", "bob", "--note", "first"
    )
    assert rc == 0, err
    rc, out, err = audit(
        capsys, "release", "--config", config, AD1_101, "--operator", "alice", "--note", NOTE
    )
    assert (rc, err) == (0, "")
    assert out == f"released {AD1_101} to dno (1 outbox row(s)) by alice\n"
    assert [r["operator"] for r in release_rows(db, RESTORATION)] == ["bob"]
    assert [mid for _q, mid in outbox(db)].count(RESTORATION) == 1


def test_when_the_outbox_cannot_be_written_both_releases_stand_for_the_redelivery_scan_in_order(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    transport = work / "gateway" / "outbox.sqlite3"
    engine = work / "gateway" / "state" / "engine.sqlite3"
    shutil.copyfile(transport, engine)
    configure(work, "pipeline", "state_in_store = false")
    configure(work, "store", "busy_timeout = 0.3")
    with locked(transport):
        rc, out, err = audit(capsys, "release", "--config", str(work / "gateway.toml"), AD1_101,
                             "--operator", "alice", "--note", NOTE)  # fmt: skip
    assert (rc, err) == (0, "")
    first, second = out.splitlines()
    assert first.startswith(
        f"released {AD1_101} to dno by alice (recorded); its outbox row was not written here"
    )
    assert second.startswith(
        f"released {RESTORATION} to dno, the restoration paired with {AD1_101}, queued after it, by alice "
        "(recorded); its outbox row was not written here"
    )
    # undelivered forwards, in arrival order: what the redelivery scan enqueues, in that order
    store = SqliteStore(engine, checkpoint_interval=0)
    try:
        assert [mid for mid, _raw in store.undelivered()] == [AD1_101, RESTORATION]
    finally:
        store.close()
