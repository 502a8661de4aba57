"""``duisgw audit list --since T`` through the decision log's index by decision time (``decisions_time``), not the
walk from the log's start: exactly the rows the walk gives, in the walk's order.

The index keys each decision by the instant of its ``decided_at`` (``julianday()``: its own offset applied), so
it holds decisions recorded out of time order (``clock = "message"``, late alerts, an operator release dated by
the wall clock) where they belong. The reader takes the decisions the index puts at or after ``T`` (and those it
cannot date), keeps each that is the latest of its life, and orders them by their lives' first decisions; the
walk's own conditions are applied to each. The properties below compare the two on logs of random decisions
(random message ids, actions and times, in and out of order, in several offsets, and texts neither SQLite nor
Python reads), on a store of this version and on one the previous schema wrote, then opened by this version (the
index built over its rows then). A store this version never opened read-write has no index: ``list --since``
walks it, and says so on stderr.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from archive_support import OUT_OF_SCOPE_CH, audit, query, store_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.engine import EngineConfig, PowerOutage, Tick
from gateway.guids import GuidSet
from gateway.inventory import Inventory
from gateway.store import DurableEngine, SqliteStore
from gateway.store.sqlite import DecisionReader

ACTIONS = ("suppress", "forward", "hold", "release-forward", "release-suppress")
DISPOSITIONS = {"forward": ["forward", "release-forward"], "suppress": ["suppress", "release-suppress"],
                "hold": ["hold"]}  # fmt: skip
BASE = datetime(2026, 3, 2, 12, tzinfo=UTC)
OFFSETS = [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5)),
           timezone(timedelta(hours=5, minutes=30, seconds=15))]  # fmt: skip  (the last: NULL to julianday())

instants = st.builds(lambda s, us: BASE + timedelta(seconds=s, microseconds=us),
                     st.integers(-3 * 3600, 3 * 3600), st.sampled_from([0, 1, 500_000, 999_999]))  # fmt: skip


def _text(at: datetime, style: int, offset: timezone) -> str:
    if style == 0:
        return at.astimezone(offset).isoformat()
    if style == 1:
        return at.replace(tzinfo=None).isoformat()  # naive: UTC to both readers
    return at.isoformat().replace("+00:00", "Z")


decided_texts = st.one_of(
    st.builds(_text, instants, st.integers(0, 2), st.sampled_from(OFFSETS)),
    # what only another tool writes: texts neither reads, one only SQLite reads (a julian day number, a date),
    # and 'now' (SQLite reads it as the time of the read; an index may not evaluate it)
    st.sampled_from(["", "garbage", "now", "NOW", "123", "2026-03-02", "2026-03-02 12:00:00"]),
)
decision_rows = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.sampled_from(ACTIONS), st.sampled_from(["r1", "r2"]),
              decided_texts),
    max_size=40,
)  # fmt: skip
filters = st.tuples(st.sampled_from([None, "forward", "suppress", "hold"]), st.sampled_from([None, "r1", "r2"]))


def _write(db: sqlite3.Connection, rows: list[tuple[str, str, str, str]]) -> None:
    """The decisions, in this order (their numbers), as the store's ``decisions`` rows."""
    db.executemany(
        "INSERT INTO decisions(seq, message_id, action, reason, decided_at, event_time, record) "
        "VALUES (?,?,?,?,?,?,?)",
        [
            (n, mid, action, reason, at, None,
             json.dumps({"message_id": mid, "action": action, "reason": reason, "decided_at": at}))
            for n, (mid, action, reason, at) in enumerate(rows, 1)
        ],
    )  # fmt: skip


def _listing(reader: Any, since: datetime, chosen: tuple[str | None, str | None], by_time: bool) -> list[Any]:
    decision, reason = chosen
    actions = None if decision is None else DISPOSITIONS[decision]
    return list(reader.latest_decisions(actions=actions, reason=reason, since=since, by_time=by_time))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=decision_rows, since=instants, chosen=filters, at_a_decision=st.integers(0, 60))
def test_the_index_gives_the_walks_rows_in_the_walks_order_for_random_decision_times(
    rows: list[tuple[str, str, str, str]], since: datetime, chosen: tuple[str | None, str | None], at_a_decision: int
) -> None:
    store = SqliteStore(":memory:", checkpoint_interval=0)
    try:
        _write(store._conn(), rows)  # ('now' among them: the index takes it)
        readable = [r[3] for r in rows if r[3] and r[3][0] == "2" and "T" in r[3]]
        if readable and at_a_decision < len(readable):  # a bound exactly at a decision's time
            value = datetime.fromisoformat(readable[at_a_decision].replace("Z", "+00:00"))
            since = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        walked = _listing(store, since, chosen, by_time=False)
        assert _listing(store, since, chosen, by_time=True) == walked
    finally:
        store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=decision_rows, since=instants, chosen=filters)
def test_a_store_the_previous_schema_wrote_is_walked_until_opened_then_read_through_the_index_alike(
    rows: list[tuple[str, str, str, str]], since: datetime, chosen: tuple[str | None, str | None]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.sqlite3"
        SqliteStore(path, checkpoint_interval=0).close()
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            # the previous schema: this one without the index by decision time (nothing else changed)
            db.execute("DROP INDEX decisions_time")
            _write(db, [r for r in rows if r[3].lower() != "now"])  # (a gateway writes no 'now')
        with DecisionReader(path) as reader:
            assert reader.since_plan(since) == "no-index"  # a read-only reader cannot make it: the walk
            walked = _listing(reader, since, chosen, by_time=False)
        SqliteStore(path, checkpoint_interval=0).close()  # this version opens it: the index built over its rows
        with DecisionReader(path) as reader:
            assert reader.has_time_index()
            assert _listing(reader, since, chosen, by_time=True) == walked
            assert _listing(reader, since, chosen, by_time=False) == walked


# ------------------------------------------------------------------ the command, on a real gateway's store


def _decide_on(db: Path, minutes: int) -> datetime:
    """The gateway decides on: an out-of-scope AD1 forwarded a minute, for ``minutes`` minutes, each recorded
    with an arrival (and decision) time in turn an hour ahead, behind or in another offset; returns the clock."""
    d = DurableEngine(SqliteStore(db), EngineConfig(), GuidSet.from_iterable(()), Inventory())
    try:
        clock = d.engine.clock
        assert clock is not None
        for m in range(minutes):
            at = clock + timedelta(minutes=m + 1)
            d.submit(Tick(at))
            ad1 = PowerOutage(message_id=f"late-{m}", arrival=at.astimezone(OFFSETS[m % 3]), verified=True,
                              verification="ok", ch=OUT_OF_SCOPE_CH, mpan=None, start_time=at - timedelta(minutes=3))  # fmt: skip
            d.submit(ad1, b"<AD1/>")
        final = d.engine.clock
        assert final is not None
        return final
    finally:
        d.store.close()


@pytest.mark.parametrize("extra", [[], ["--limit", "7"], ["--decision", "forward"], ["--json"]])
def test_list_since_prints_the_same_through_the_index_as_by_the_walk_of_a_store_not_yet_migrated(
    work: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    db, config = store_path(work), str(work / "gateway.toml")
    clock = _decide_on(db, 90)
    since = (clock - timedelta(minutes=20)).isoformat()  # 21 of the 90 AD1s
    # released by an operator now (the wall clock): dated far from the log's other decisions, listed where the
    # life of the demo's message began
    suppressed = query(db, "SELECT message_id FROM messages WHERE status = 'suppress' ORDER BY seq")
    rc, _, err = audit(capsys, "release", str(suppressed[0][0]), "--config", config, "--operator", "alice",
                       "--note", "field visit", "--without-restoration")  # fmt: skip
    assert rc == 0, err
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DROP INDEX decisions_time")  # as the previous version left it
    rc, walked, err = audit(capsys, "list", "--config", config, "--since", since, *extra)
    assert rc == 0, err
    assert "no index by decision time yet" in err and "read from its start" in err
    assert query(db, "SELECT count(*) FROM sqlite_master WHERE name = 'decisions_time'") == [(0,)]  # read-only

    SqliteStore(db).close()  # this version's gateway (or `audit release`) opens it: the index is built
    with DecisionReader(db) as reader:
        assert reader.since_plan(datetime.fromisoformat(since)) == "index"
    rc, indexed, err_after = audit(capsys, "list", "--config", config, "--since", since, *extra)
    assert rc == 0, err_after
    assert indexed == walked
    assert "no index" not in err_after
    assert err_after == err.replace(err.splitlines()[0] + "\n", "")  # the count and "more match" lines alike
    lines = indexed.splitlines()
    assert len(lines) == (7 if "--limit" in extra else 22)  # the release's line and the 21 AD1s'
    assert (suppressed[0][0] in lines[0]) and all("late-" in line for line in lines[1:])


def test_a_since_before_most_of_the_log_is_walked_with_the_same_lines(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = store_path(work), str(work / "gateway.toml")
    clock = _decide_on(db, 20)
    early = clock - timedelta(days=30)
    with DecisionReader(db) as reader:
        assert reader.since_plan(early) == "walk"  # the whole log: the walk pays
        assert reader.since_plan(clock - timedelta(minutes=2)) == "index"
        assert list(reader.latest_decisions(since=early, by_time=True)) == list(reader.latest_decisions(since=early))
    rc, out, err = audit(capsys, "list", "--config", config, "--since", early.isoformat())
    assert rc == 0 and "no index" not in err
    rc_all, everything, _ = audit(capsys, "list", "--config", config)
    assert (rc_all, out) == (0, everything)


def test_a_decision_dated_now_by_another_tool_is_written_and_listed_as_the_walk_lists_it(tmp_path: Path) -> None:
    # SQLite refuses to evaluate julianday('now') for an index: a row holding it would fail its insert (every
    # batch after it refused) and the index's build over a log holding one; the index's key is NULL for it
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path, checkpoint_interval=0)
    try:
        _write(store._conn(), [("a", "forward", "r1", "now"), ("b", "forward", "r1", BASE.isoformat())])
    finally:
        store.close()
    SqliteStore(path, checkpoint_interval=0).close()
    with DecisionReader(path) as reader:
        since = BASE - timedelta(hours=1)
        walked = list(reader.latest_decisions(since=since))
        assert [r["message_id"] for r in walked] == ["a", "b"]
        assert list(reader.latest_decisions(since=since, by_time=True)) == walked
