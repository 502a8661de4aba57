"""``duisgw audit export --date D --tz ZONE``: the suppressions whose first suppression decision falls in
the civil day D of ZONE (a DNO reconciles by the GB day: ``Europe/London``, GMT in winter, BST in
summer), not the UTC day D.

Pinned down on the stores of a real gateway run (the live demo's four suppressions, their decision
times moved): both clock changes of 2026 (29 March: a 23-hour day; 25 October: a 25-hour day, its
01:00-02:00 twice), a row decided at 23:30 UTC in summer is in the NEXT local day, the CSV header and
the file names say which day convention they use, the default (UTC) output is unchanged, and an unknown
zone is refused. (Shared state: tests/scaleout/test_shared_audit_cli.py.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_audit_export_and_release import AD1_101, AD1_108, audit

RESTORATION = "00-DB-00-00-00-00-00-01:90-B3-D5-1F-30-02-00-00:1048577|DeviceAlertMessage.8F36"
AD1_102 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:102|DCCAlertMessage.AD1"  # held, then suppressed
UTC_HEADER = (
    "date,destination,message_id,kind,ch,mpan,esme,start_datetime,reason,evidence_message_ids,status,"
    "decided_at,released_at,released_by,release_note"
)
GB_HEADER = UTC_HEADER.replace("date,", "date_Europe/London,", 1)


def decided(work: Path, times: dict[str, str]) -> Path:
    """Move the first suppression decision of each message to ``times[message id]`` (the column and the
    record, as the store writes them); the configuration."""
    with contextlib.closing(sqlite3.connect(work / "gateway" / "outbox.sqlite3")) as conn, conn:
        for mid, at in times.items():
            seq, record = conn.execute(
                "SELECT seq, record FROM decisions WHERE message_id = ? AND action IN ('suppress', "
                "'release-suppress') ORDER BY seq LIMIT 1",
                (mid,),
            ).fetchone()
            conn.execute(
                "UPDATE decisions SET decided_at = ?, record = ? WHERE seq = ?",
                (at, json.dumps({**json.loads(record), "decided_at": at}), seq),
            )
    return work / "gateway.toml"


def export(
    capsys: pytest.CaptureFixture[str], config: Path, day: str, *tz: str
) -> tuple[int, str, list[str]]:
    """(exit code, header line, message ids) of ``export --date day [--tz ...]``."""
    rc, out, err = audit(capsys, "export", "--config", str(config), "--date", day, *tz)
    assert rc in (0, 1), err
    header, *rows = out.splitlines()
    ids = [r["message_id"] for r in csv.DictReader(io.StringIO(out))]
    assert len(ids) == len(rows)
    return rc, header, ids


GB = ("--tz", "Europe/London")


def test_the_gb_day_the_clocks_go_forward_is_23_hours(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = decided(work, {
        AD1_101: "2026-03-28T23:59:59+00:00",  # 23:59:59 GMT on the 28th
        RESTORATION: "2026-03-29T00:30:00+00:00",  # 00:30 GMT: the first hour of the 29th
        AD1_108: "2026-03-29T22:59:59+00:00",  # 23:59:59 BST: its last second
        AD1_102: "2026-03-29T23:00:00+00:00",  # 00:00 BST on the 30th
    })  # fmt: skip
    assert export(capsys, config, "2026-03-29", *GB) == (0, GB_HEADER, [RESTORATION, AD1_108])
    assert export(capsys, config, "2026-03-28", *GB)[2] == [AD1_101]
    assert export(capsys, config, "2026-03-30", *GB)[2] == [AD1_102]
    # the UTC day, as before (and by default)
    assert export(capsys, config, "2026-03-29") == (0, UTC_HEADER, [RESTORATION, AD1_108, AD1_102])


def test_the_gb_day_the_clocks_go_back_is_25_hours(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = decided(work, {
        AD1_101: "2026-10-24T22:59:59+00:00",  # 23:59:59 BST on the 24th
        RESTORATION: "2026-10-24T23:00:00+00:00",  # 00:00 BST on the 25th
        AD1_108: "2026-10-25T01:30:00+01:00",  # 01:30 BST (00:30 UTC) ...
        AD1_102: "2026-10-25T23:59:59+00:00",  # 23:59:59 GMT: the 25th hour's last second
    })  # fmt: skip
    assert export(capsys, config, "2026-10-25", *GB)[2] == [RESTORATION, AD1_108, AD1_102]
    assert export(capsys, config, "2026-10-24", *GB)[2] == [AD1_101]
    assert export(capsys, config, "2026-10-26", *GB) == (1, GB_HEADER, [])
    assert export(capsys, config, "2026-10-24")[2] == [AD1_101, RESTORATION]  # UTC


def test_a_row_at_2330_utc_in_summer_is_in_the_next_gb_day(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = decided(work, {AD1_101: "2026-06-01T23:30:00+00:00", AD1_108: "2026-06-01T22:59:00+00:00",
                            RESTORATION: "2026-05-01T12:00:00+00:00", AD1_102: "2026-05-01T12:00:00+00:00"})  # fmt: skip
    assert export(capsys, config, "2026-06-01", *GB)[2] == [AD1_108]
    rc, _header, ids = export(capsys, config, "2026-06-02", *GB)
    assert (rc, ids) == (0, [AD1_101])
    _rc, out, _err = audit(capsys, "export", "--config", str(config), "--date", "2026-06-02", *GB)
    (row,) = csv.DictReader(io.StringIO(out))
    assert row["date_Europe/London"] == "2026-06-02"
    assert export(capsys, config, "2026-06-01")[2] == [AD1_101, AD1_108]  # UTC day: both, decision order
    # the explicit UTC zone is the default
    assert export(capsys, config, "2026-06-01", "--tz", "UTC") == export(capsys, config, "2026-06-01")


def test_local_day_files_say_their_zone_in_name_and_header_and_utc_files_are_unchanged(
    work: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = decided(work, {AD1_101: "2026-06-01T23:30:00+00:00"})
    out_dir = tmp_path / "exports"
    rc, out, err = audit(capsys, "export", "--config", str(config), "--date", "2026-06-02", *GB,
                         "--out-dir", str(out_dir))  # fmt: skip
    assert rc == 0, err
    local = out_dir / "suppressions-2026-06-02-Europe_London-dno.csv"
    assert out == f"{local}: 1 suppression(s)\n"
    header, row = local.read_text(encoding="utf-8").splitlines()
    assert header == GB_HEADER and row.startswith(f"2026-06-02,dno,{AD1_101},")
    rc, out, err = audit(
        capsys, "export", "--config", str(config), "--date", "2026-06-01", "--out-dir", str(out_dir)
    )
    assert rc == 0, err
    utc = out_dir / "suppressions-2026-06-01-dno.csv"
    assert utc.read_text(encoding="utf-8").splitlines()[0] == UTC_HEADER
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([local.name, utc.name])


@pytest.mark.parametrize("zone", ["Europe/Londres", "../../etc/passwd", "", "GMT+1/x"])
def test_an_unknown_time_zone_is_refused_with_exit_2(
    work: Path, capsys: pytest.CaptureFixture[str], zone: str
) -> None:
    rc, out, err = audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", "2026-03-02",
                         "--tz", zone)  # fmt: skip
    assert (rc, out) == (2, "")
    assert err == f"duisgw audit: --tz: not a known IANA time zone: {zone!r} (e.g. Europe/London)\n"


def test_the_gb_day_needs_no_zone_database_from_the_os(work: Path, tmp_path: Path) -> None:
    """``PYTHONTZPATH`` at an empty folder: no system zone files (a slim container); the ``tzdata``
    dependency provides Europe/London."""
    config = decided(work, {AD1_101: "2026-06-01T23:30:00+00:00"})
    empty = tmp_path / "no-zoneinfo"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYTHONTZPATH": str(empty)}
    done = subprocess.run([sys.executable, "-m", "gateway", "audit", "export", "--config", str(config), "--date",
                           "2026-06-02", *GB], env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [r["message_id"] for r in csv.DictReader(io.StringIO(done.stdout))] == [AD1_101]
