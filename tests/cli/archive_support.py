"""What the archive tests share (tests/cli/test_audit_archive*.py): the CLI, the demo's store, its clock."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.engine import EngineConfig, Tick
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
