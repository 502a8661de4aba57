"""What the archive tests share (tests/cli/test_audit_archive*.py): the CLI, the demo's store, its clock, and
the demo's AD1 101 archived in two lives (:class:`ArchivedTwice`)."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.engine import ActivationRequested, ActivationResponse, Decision, EngineConfig, PowerOutage, Tick
from gateway.guids import GuidSet
from gateway.inventory import Inventory
from gateway.store import DurableEngine, SqliteStore

AD1_101 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:101|DCCAlertMessage.AD1"
CUT = "2026-03-02T10:00:00Z"  # 22 of the demo's 23 messages arrived before it


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["audit", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def store_path(work: Path) -> Path:
    return work / "gateway" / "outbox.sqlite3"


def query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def engine(db: Path) -> DurableEngine:
    return DurableEngine(SqliteStore(db), EngineConfig(), GuidSet.from_iterable(()), Inventory())


def days_later(work: Path, days: float) -> datetime:
    """The gateway ran on with no traffic: its clock (stored at each tick) moved ``days`` on."""
    d = engine(store_path(work))
    clock = d.engine.clock
    assert clock is not None
    d.submit(Tick(clock + timedelta(days=days)))
    d.store.close()
    return clock + timedelta(days=days)


# ------------------------------------------------------------------ a message id archived twice

SUPPLIER = 0x90B3D51F30010000
# the demo's meter 1: in its GUID list, on the hub CH_1 and MPAN_1 (inventory.csv)
ESME_1 = 0x00DB000000000001
CH_1 = 0x00DC000000000001
MPAN_1 = "1900000000013"
OUT_OF_SCOPE_CH = 0x00DBFF0000000001  # no inventory row names it: an AD1 of it is forwarded


class ArchivedTwice:
    """The demo's AD1 101 in two lives, each archived into the same file (``archive.sqlite3`` in the work
    folder): the demo's (suppressed on 2026-03-02, ``activation-window``) and a re-delivery after its
    retention, decided afresh and suppressed again (``activation-window``: meter 1 activated firmware again),
    or forwarded.
    The steps, between which a test may look: :meth:`archive_first`, :meth:`decide_second`,
    :meth:`archive_second`. A life released by an operator (``audit release``, its delivery then done) is
    released before it is archived.

    An operator's release is dated by the wall clock, the engine's decisions by the gateway clock (the demo's,
    March 2026, moved on as a test needs): a released life is archived with a cut-off a minute after its
    release, the gateway clock first moved the retention past it. So a second life is released only when the
    first was not (else its release would be dated before its suppression)."""

    def __init__(self, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.work, self.capsys = work, capsys
        self.db, self.archive = store_path(work), work / "archive.sqlite3"
        self.config = str(work / "gateway.toml")
        self.first_released = self.second_released = False
        self.second_at: datetime | None = None
        self._second_cut: datetime | None = None
        self._first_cut: datetime | None = None  # a first life released and not archived (first_life_ends)
        self._newest = 0

    def _release(self) -> datetime:
        """Release AD1 101 (its delivery done); a cut-off just after the release."""
        rc, _, err = audit(self.capsys, "release", AD1_101, "--config", self.config, "--operator", "alice",
                           "--note", "genuine outage", "--without-restoration")  # fmt: skip
        assert rc == 0, err
        with contextlib.closing(sqlite3.connect(self.db)) as conn, conn:  # the DNO got it
            conn.execute(
                "UPDATE outbox SET state = 'delivered', done_at = 0 WHERE message_id = ?", (AD1_101,)
            )
        return datetime.now(UTC) + timedelta(minutes=1)

    def _archive(self, cut: datetime) -> None:
        """A forwarded AD1 a second after the gateway clock (the store's newest rows, which stay), the clock
        moved on past the cut-off's retention, and an archive run into the file."""
        d = engine(self.db)
        clock = d.engine.clock
        assert clock is not None
        self._newest += 1
        at = clock + timedelta(seconds=1)
        newest = PowerOutage(
            message_id=f"newest-{self._newest}", arrival=at, verified=True, verification="ok",
            ch=OUT_OF_SCOPE_CH, mpan=None, start_time=at - timedelta(minutes=4),
        )  # fmt: skip
        d.submit(newest, b"<AD1/>")
        d.submit(Tick(max(at, cut + timedelta(days=4))))
        d.store.close()
        rc, _, err = audit(self.capsys, "archive", "--config", self.config, "--before", cut.isoformat(),
                           "--to", str(self.archive))  # fmt: skip
        assert rc == 0, err

    def archive_first(self, *, released: bool = False) -> None:
        """The demo's life of AD1 101 (released first when ``released``) moves to the archive."""
        self.first_released = released
        self._archive(self._release() if released else datetime.fromisoformat(CUT))
        assert query(self.archive, "SELECT count(*) FROM messages WHERE message_id = ?", (AD1_101,)) == [(1,)]
        assert query(self.db, "SELECT count(*) FROM messages WHERE message_id = ?", (AD1_101,)) == [(0,)]

    def decide_second(self, *, released: bool = False, forwarded: bool = False) -> datetime:
        """The DSP re-delivers AD1 101 after its retention, minutes after meter 1 activated firmware again:
        decided afresh, suppressed (then released when ``released``), or, when ``forwarded``, forwarded as
        ``out-of-scope`` (meter 1 no longer in the GUID list) and delivered; its route recorded as the
        gateway records one. Returns when it arrived and was decided."""
        assert not (released and (self.first_released or forwarded))
        inventory = Inventory.load_csv(self.work / "inventory.csv")[0]
        scope = GuidSet.from_iterable(() if forwarded else [ESME_1])
        d = DurableEngine(SqliteStore(self.db), EngineConfig(), scope, inventory)
        clock = d.engine.clock
        assert clock is not None
        at = clock + timedelta(seconds=1)
        answered = at + timedelta(seconds=35)
        arrival = at + timedelta(minutes=6)
        request = ActivationRequested(
            message_id="req-again", arrival=at, verified=True, verification="ok", supplier=SUPPLIER,
            esme=ESME_1, counter=5101, execution_time=None, is_cancellation=False, seen_at=at,
        )  # fmt: skip
        response = ActivationResponse(
            message_id="rsp-again", arrival=answered, verified=True, verification="ok", esme=ESME_1,
            supplier=SUPPLIER, counter=5101, response_time=answered, result=0,
        )  # fmt: skip
        outage = PowerOutage(
            message_id=AD1_101, arrival=arrival, verified=True, verification="ok", ch=CH_1, mpan=MPAN_1,
            start_time=arrival - timedelta(minutes=3, seconds=30),
        )  # fmt: skip
        d.submit(request, None)
        d.submit(response, None)
        out = d.submit(outage, b"<AD1 101 re-delivered/>")
        if forwarded:
            d.store.mark_delivered([AD1_101])  # (its delivery done)
        d.store.close()
        decided = [(e.action.value, e.reason.value) for e in out if isinstance(e, Decision)]
        expected = ("forward", "out-of-scope") if forwarded else ("suppress", "activation-window")
        assert decided == [expected], out
        with contextlib.closing(sqlite3.connect(self.db)) as conn, conn:  # as the gateway routes one
            conn.execute(
                "INSERT OR IGNORE INTO routes (message_id, destination, received_at, kind) VALUES (?, 'dno', ?, ?)",
                (AD1_101, arrival.isoformat(), "DCCAlertMessage.AD1"),
            )
        self.second_at = arrival
        self.second_released = released
        self._second_cut = self._release() if released else arrival + timedelta(minutes=30)
        return arrival

    def first_life_ends(self, *, released: bool = False) -> None:
        """Instead of :meth:`archive_first`: the first life (released first when ``released``) stays in the live
        store and its retention passes, so the re-delivery (:meth:`decide_second`) is decided afresh on the same
        ``messages`` row (the row is upserted: one row, two lives)."""
        if released:
            self._first_cut = self._release()  # (an archive run must come after the release: archive_second)
            self.first_released = True
        days_later(self.work, 4)

    def archive_second(self, *, rows: int = 2) -> None:
        """The second life moves to the same archive: AD1 101 has two rows there (one when both lives were
        decided on one live row: :meth:`first_life_ends`)."""
        assert self._second_cut is not None, "decide_second first"
        self._archive(max(self._second_cut, self._first_cut or self._second_cut))
        archived = query(self.archive, "SELECT count(*) FROM messages WHERE message_id = ?", (AD1_101,))
        assert archived == [(rows,)]
        assert query(self.db, "SELECT count(*) FROM messages WHERE message_id = ?", (AD1_101,)) == [(0,)]
