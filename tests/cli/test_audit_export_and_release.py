"""``duisgw audit`` on the after-the-fact path a DNO and the DCC's operations team rely on:

* every command refuses a text argument that is not UTF-8 (bytes the shell passed through) with one
  line and exit 2, recording nothing; a reject id beyond SQLite's integers is unknown, not a traceback;
* ``release`` beside a gateway that holds the store's lock: refused whole (exit 2, nothing recorded)
  when the release itself cannot be written within ``[store] busy_timeout``; recorded and left to the
  gateway's redelivery scan (exit 0, said so) when only its outbox row cannot be;
* ``export --out-dir`` writes a file for every configured DNO, the header alone on a day without
  suppressions (a DNO tells "none" from "missing"); an unknown ``--destination`` is refused;
* the export's day is the UTC date of a message's first suppression decision, whatever offset its
  decision time was written with;
* ``list`` and ``export`` read the decision log (never pruned) as a stream: their memory does not
  grow with it.

The stores are a real gateway's (the live demo's work folder, copied per test); the CLI runs in
process through ``main`` or as a real process.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main

PROJECT = Path(__file__).resolve().parents[2]
AD1_101 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:101|DCCAlertMessage.AD1"
AD1_108 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:108|DCCAlertMessage.AD1"
NOT_UTF8 = "\udcff"  # what Python makes of the byte 0xFF in a command-line argument (surrogateescape)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT)}


def configure(folder: Path, section: str, line: str) -> None:
    """Add ``line`` at the top of ``[section]`` of the work folder's config."""
    config = folder / "gateway.toml"
    text = config.read_text(encoding="utf-8")
    assert f"[{section}]\n" in text
    config.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1), encoding="utf-8")


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["audit", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def decisions(db: Path, message_id: str) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT action, reason FROM decisions WHERE message_id = ? ORDER BY seq",
                            (message_id,)).fetchall()  # fmt: skip


def message_row(db: Path, message_id: str) -> tuple[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT status, delivered FROM messages WHERE message_id = ?", (message_id,)
        ).fetchone()
    return str(row[0]), int(row[1])


def outbox_of(db: Path, message_id: str) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT queue, state FROM outbox WHERE message_id = ?", (message_id,)).fetchall()


@contextlib.contextmanager
def locked(db: Path) -> Any:
    """Another process's write transaction on ``db`` (as a gateway's batch), held until the block ends."""
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


# ------------------------------------------------------------------------------------------ unusable input


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("show", AD1_101 + NOT_UTF8), "MESSAGE_ID"),
        (("show", NOT_UTF8, "--bytes"), "MESSAGE_ID"),
        (("release", AD1_101, "--operator", "al" + NOT_UTF8, "--note", "field visit"), "--operator"),
        (("release", AD1_101, "--operator", "alice", "--note", NOT_UTF8), "--note"),
        (("list", "--reason", NOT_UTF8), "--reason"),
        (("export", "--date", "2026-03-02", "--destination", NOT_UTF8), "--destination"),
        (("dead", "list", "--queue", NOT_UTF8), "--queue"),
        (("dead", "requeue", "m-1", NOT_UTF8, "--operator", "alice", "--note", "retry"), "MESSAGE_ID"),
        (("dead", "requeue", "--all", "--operator", NOT_UTF8, "--note", "retry"), "--operator"),
        (("rejects", "--reason", NOT_UTF8), "--reason"),
    ],
)
def test_a_text_argument_that_is_not_utf8_is_refused_with_one_line_and_exit_2(
    work: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], named: str
) -> None:
    # the UTF-8 stores cannot hold (or be asked about) such text: sqlite3 raised UnicodeEncodeError, a traceback
    command = [*args[: 2 if args[0] == "dead" else 1], "--config", str(work / "gateway.toml"),
               *args[2 if args[0] == "dead" else 1 :]]  # fmt: skip
    rc, out, err = audit(capsys, *command)
    assert (rc, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"duisgw audit: {named}: not valid UTF-8 text")
    assert "nothing done" in err
    assert decisions(work / "gateway" / "outbox.sqlite3", AD1_101) == [("suppress", "activation-window")]


def test_a_release_by_an_operator_name_that_is_not_utf8_records_nothing_in_a_real_process(work: Path) -> None:
    db = work / "gateway" / "outbox.sqlite3"
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"gateway", b"audit", b"release", b"--config", bytes(work / "gateway.toml"),
         AD1_101.encode(), b"--operator", b"\xff\xfe", b"--note", b"field visit"],
        env=_env(), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr == b"duisgw audit: --operator: not valid UTF-8 text ('\\udcff\\udcfe'); nothing done\n"
    assert decisions(db, AD1_101) == [("suppress", "activation-window")] and outbox_of(db, AD1_101) == []


def test_a_reject_id_beyond_sqlite_integers_is_unknown_not_a_traceback(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for rid in ("99999999999999999999999", str(2**63)):  # OverflowError from sqlite3 before
        rc, out, err = audit(capsys, "rejects", "show", rid, "--config", str(work / "gateway.toml"))
        assert (rc, out, err) == (1, "", f"duisgw audit: unknown reject {rid}\n")


# ------------------------------------------------------------------------------------------ release


def test_a_release_that_cannot_get_the_lock_within_busy_timeout_exits_2_and_records_nothing(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(work, "store", "busy_timeout = 0.3")
    db = work / "gateway" / "outbox.sqlite3"
    with locked(db):
        rc, out, err = audit(capsys, "release", "--config", str(work / "gateway.toml"), AD1_108,
                             "--operator", "alice", "--note", "field visit: genuine outage")  # fmt: skip
    # sqlite3.OperationalError escaped as a traceback after a fixed 5 s wait
    assert (rc, out) == (2, "")
    assert err == f"duisgw audit: {db}: database is locked; nothing released\n"
    assert decisions(db, AD1_108) == [("suppress", "activation-window")]
    assert message_row(db, AD1_108) == ("suppress", 0) and outbox_of(db, AD1_108) == []
    # once the gateway lets go, the same release goes through, once
    rc, out, err = audit(capsys, "release", "--config", str(work / "gateway.toml"), AD1_108,
                         "--operator", "alice", "--note", "field visit: genuine outage")  # fmt: skip
    assert rc == 0 and out.endswith("(1 outbox row(s)) by alice\n"), err
    assert decisions(db, AD1_108)[-1] == ("release-forward", "operator-release")
    assert outbox_of(db, AD1_108) == [("http:dno", "pending")]


def test_a_release_whose_outbox_row_cannot_be_written_is_recorded_and_left_to_the_redelivery_scan(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # decision state apart from the transport store ([pipeline] state_in_store = false): the release is
    # committed in engine.sqlite3 while a gateway's batch holds the transport store's lock
    transport = work / "gateway" / "outbox.sqlite3"
    engine = work / "gateway" / "state" / "engine.sqlite3"
    shutil.copyfile(transport, engine)
    configure(work, "pipeline", "state_in_store = false")
    configure(work, "store", "busy_timeout = 0.3")
    with locked(transport):
        rc, out, err = audit(capsys, "release", "--config", str(work / "gateway.toml"), AD1_108,
                             "--operator", "alice", "--note", "field visit: genuine outage")  # fmt: skip
    # a traceback (exit 1) before, with the release already committed
    assert rc == 0 and err == ""
    assert out.startswith(
        f"released {AD1_108} to dno by alice (recorded); its outbox row was not written here"
    )
    assert "the gateway writes it at its next redelivery scan" in out
    assert decisions(engine, AD1_108)[-1] == ("release-forward", "operator-release")
    # an undelivered forward: what the gateway's redelivery scan puts in the outbox (at start and every 5 s)
    assert message_row(engine, AD1_108) == ("forward", 0)
    assert outbox_of(transport, AD1_108) == []


# ------------------------------------------------------------------------------------------ export


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_export_into_an_out_dir_writes_every_dnos_file_with_the_header_alone_when_it_had_none(
    work: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = work / "gateway.toml"
    with config.open("a", encoding="utf-8") as f:
        f.write(
            '\n[[destinations]]\nname = "dno-b"\nuser = "90-B3-D5-1F-30-02-00-09"\nurl = "http://127.0.0.1:9/duis"\n'
        )
    out_dir = tmp_path / "exports"
    rc, out, err = audit(
        capsys, "export", "--config", str(config), "--date", "2026-03-02", "--out-dir", str(out_dir)
    )
    assert rc == 0, err
    # dno-b had no suppressions that day: no file at all before, indistinguishable from a failed export
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "suppressions-2026-03-02-dno-b.csv",
        "suppressions-2026-03-02-dno.csv",
    ]
    assert len(read_csv(out_dir / "suppressions-2026-03-02-dno.csv")) == 4
    header_only = (out_dir / "suppressions-2026-03-02-dno-b.csv").read_text(encoding="utf-8")
    assert (
        header_only
        == "date,destination,message_id,kind,ch,mpan,esme,start_datetime,reason,evidence_message_ids,status,"
        "decided_at,released_at,released_by,release_note\n"
    )
    assert out.splitlines() == [f"{out_dir}/suppressions-2026-03-02-dno.csv: 4 suppression(s)",
                                f"{out_dir}/suppressions-2026-03-02-dno-b.csv: 0 suppression(s)"]  # fmt: skip

    rc, out, err = audit(capsys, "export", "--config", str(config), "--date", "2026-03-03", "--out-dir", str(out_dir),
                         "--destination", "dno")  # fmt: skip
    assert rc == 1  # nothing matched: still a file, with its header
    assert read_csv(out_dir / "suppressions-2026-03-03-dno.csv") == []
    assert not (out_dir / "suppressions-2026-03-03-dno-b.csv").exists()  # not asked for
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no partial file left


def test_export_of_a_destination_the_gateway_does_not_know_exits_2(
    work: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, out, err = audit(capsys, "export", "--config", str(work / "gateway.toml"), "--date", "2026-03-02",
                         "--destination", "dno-x", "--out-dir", str(tmp_path / "x"))  # fmt: skip
    # an empty export (exit 1) before: a typo read as "no suppressions"
    assert (rc, out) == (2, "")
    assert (
        err == "duisgw audit: --destination: 'dno-x' is not a destination of this gateway (configured: dno)\n"
    )
    assert not (tmp_path / "x").exists()


def set_decided_at(db: Path, message_id: str, at: str) -> None:
    """Rewrite when the message's suppression was decided (the column and the record, as the store writes them)."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        seq, record = conn.execute("SELECT seq, record FROM decisions WHERE message_id = ? AND action = 'suppress'",
                                   (message_id,)).fetchone()  # fmt: skip
        conn.execute("UPDATE decisions SET decided_at = ?, record = ? WHERE seq = ?",
                     (at, json.dumps({**json.loads(record), "decided_at": at}), seq))  # fmt: skip


def exported(capsys: pytest.CaptureFixture[str], config: Path, day: str) -> list[str]:
    _rc, out, _err = audit(capsys, "export", "--config", str(config), "--date", day)
    return [r["message_id"] for r in csv.DictReader(io.StringIO(out))]


def test_the_export_day_is_the_utc_date_of_the_first_suppression_whatever_offset_it_was_written_with(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = work / "gateway" / "outbox.sqlite3", work / "gateway.toml"
    set_decided_at(db, AD1_101, "2026-03-03T00:30:00+01:00")  # 23:30 UTC on the 2nd (00:30 BST on the 3rd)
    set_decided_at(db, AD1_108, "2026-03-02T23:30:00-01:00")  # 00:30 UTC on the 3rd
    second, third = exported(capsys, config, "2026-03-02"), exported(capsys, config, "2026-03-03")
    assert AD1_101 in second and AD1_101 not in third
    assert AD1_108 in third and AD1_108 not in second
    assert len(second) + len(third) == 4
    # released later: still on the day of its suppression, with status "released"
    rc, _out, err = audit(capsys, "release", "--config", str(config), AD1_101, "--operator", "alice",
                          "--note", "genuine outage")  # fmt: skip
    assert rc == 0, err
    _rc, out, _err = audit(capsys, "export", "--config", str(config), "--date", "2026-03-02")
    assert {r["message_id"]: r["status"] for r in csv.DictReader(io.StringIO(out))}[AD1_101] == "released"
    assert AD1_101 not in exported(capsys, config, "2026-11-23")  # not again on the day of its release


# ------------------------------------------------------------------------------------------ large logs


def peak_rss_kib(config: Path, *args: str) -> tuple[int, int]:
    """(exit code, peak resident size in KiB) of ``duisgw audit ARGS`` in a process of its own: its
    ``VmHWM`` (``ru_maxrss`` keeps the forking test process's size across the exec)."""
    code = (
        "import re, sys\n"
        "from gateway.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "sys.stdout.flush()\n"
        "status = open('/proc/self/status', encoding='ascii').read()\n"
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "audit", *args[:1], "--config", str(config), *args[1:]],
                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120,
                          check=False)  # fmt: skip
    return done.returncode, int(done.stderr.strip().splitlines()[-1])


@pytest.mark.skipif(
    not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc (Linux)"
)
def test_list_and_export_memory_does_not_grow_with_the_decision_log(work: Path) -> None:
    db, config = work / "gateway" / "outbox.sqlite3", work / "gateway.toml"
    small = {what: peak_rss_kib(config, *what) for what in (("list",), ("export", "--date", "2026-03-02"))}
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        record = json.loads(
            conn.execute("SELECT record FROM decisions WHERE action = 'suppress'").fetchone()[0]
        )
        rows = []
        for i in range(60_000):  # the log is never pruned: a campaign month's AD1s, scaled down
            mid = f"90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:{100_000 + i}|DCCAlertMessage.AD1"
            rows.append((mid, "suppress", "activation-window", "2026-03-02T12:00:00+00:00",
                         json.dumps({**record, "message_id": mid, "decided_at": "2026-03-02T12:00:00+00:00"})))  # fmt: skip
        conn.executemany(
            "INSERT INTO decisions(message_id, action, reason, decided_at, record) VALUES (?,?,?,?,?)", rows
        )
    for what, (rc, before) in small.items():
        rc_large, after = peak_rss_kib(config, *what)
        assert (rc, rc_large) == (0, 0)
        # every decision was loaded and parsed at once before: about 5 KiB each (≈300 MiB here)
        assert after - before < 40_000, f"{what}: peak {before} KiB -> {after} KiB"


# ------------------------------------------------------------------------------------------ terminal output


async def test_text_listings_show_control_characters_escaped_never_raw(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.service.api import Delivery
    from gateway.service.outbox import Outbox, RejectStore, SqliteStore

    hostile = "\x1b[2J\x1b[31mEVIL\x07\u202e"  # clear the screen, red, bell, right-to-left override
    store = SqliteStore(work / "gateway" / "outbox.sqlite3")
    await store.open()
    try:
        # a POST to /duis/dno/%1b%5b2J... is refused 404 and kept with the user of its URL path
        await RejectStore(store).record(lane="inline", user=hostile, reason="unknown_destination",
                                        detail=f"no destination {hostile}", body=b"junk",
                                        received_at=dt.datetime(2026, 3, 2, 8, tzinfo=dt.UTC))  # fmt: skip
        outbox = Outbox(store, lambda d: ("http:dno",))
        await outbox.enqueue_many([Delivery("m-1", "dno", b"<m/>", {})])
        (row,) = [r for r in await outbox.rows("http:dno") if r.message_id == "m-1"]
        await outbox.dead_letter(row.seq, error=f"HTTP 500 {hostile}", refused=True)  # a DNO's reason phrase
    finally:
        await store.close()
    config = str(work / "gateway.toml")
    for args in (("rejects", "--config", config), ("dead", "list", "--config", config)):
        rc, out, _err = audit(capsys, *args)
        assert rc == 0
        # the bytes went to the operator's terminal as they were
        assert not any(c in out for c in "\x1b\x07\u202e"), out
        assert "\\x1b[2J\\x1b[31mEVIL\\x07\\u202e" in out
    rc, out, _err = audit(capsys, "rejects", "--config", config, "--json")
    assert json.loads(out.splitlines()[-1])["user"] == hostile  # --json keeps the value, escaped by JSON


# ------------------------------------------------------------------------------------------ list --limit


def test_list_limit_gives_the_first_n_of_the_listing_order_after_the_filters_and_says_when_more_match(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(work / "gateway.toml")

    def listed(*args: str) -> tuple[int, list[dict[str, Any]], str]:
        rc, out, err = audit(capsys, "list", "--config", config, "--json", *args)
        return rc, [json.loads(line) for line in out.splitlines()], err

    rc, everything, err = listed()
    assert rc == 0 and len(everything) >= 3 and err == ""
    assert all("decided_by" not in r for r in everything)  # single node: the JSON keys of before
    rc, first_two, err = listed("--limit", "2")
    assert (rc, first_two) == (0, everything[:2])  # the listing's own order: first decision first
    assert err == "2 message(s): the first 2 (--limit 2); more match (--limit 0 for all)\n"
    suppressed = [r for r in everything if r["decision"] == "suppress"]
    assert len(suppressed) >= 2
    rc, one, _err = listed("--decision", "suppress", "--limit", "1")
    assert (rc, one) == (0, suppressed[:1])  # the filters first, then the limit
    assert listed("--limit", str(len(everything)))[1:] == (everything, "")  # exactly all: nothing more to say
    assert listed("--limit", "0")[:2] == (0, everything)
    rc, out, err = audit(capsys, "list", "--config", config, "--limit", "-1")
    assert (rc, out) == (2, "") and "--limit: must be 0 (all) or more, got -1" in err

    # the real process, text: one line of the five columns of before (no decided_by on a single node)
    done = subprocess.run([sys.executable, "-m", "gateway", "audit", "list", "--config", config, "--limit", "1"],
                          env=_env(), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    fields = line.split()
    assert len(fields) == 5
    assert (fields[0], fields[-1]) == (everything[0]["decided_at"], everything[0]["message_id"])
    assert done.stderr == "1 message(s): the first 1 (--limit 1); more match (--limit 0 for all)\n"
