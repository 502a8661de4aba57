"""``duisgw audit list --limit N`` reads only what it shows; the rule of a message's lives stated once.

* ``list`` prints the latest decision of every life of every inline message in first-decision order. It grouped
  the whole decision log by life before it printed its first line: ``--limit N`` took 2.3 s at 500,000
  decisions (docs/RELIABILITY.md, fourteenth session), an operator's "the last few suppressions" as long as the
  whole listing's SQL. The listing now walks the log in its own order and takes each life at the decision that
  began it, so the first lines cost the same whatever the size of the log (the SQLite work to give them is
  counted with a progress handler: it failed before the change, growing with the log).
* The output is what it was: the lines and their order are those the documented rule gives (a line per life:
  a held message's final decision, an operator release, a message id decided afresh after its retention), for
  every ``--limit`` and filter, ``--since`` to the microsecond and in any offset.
* ``audit release`` on shared state names the life it releases by that life's suppression: read with the same
  SQL statement of the rule of lives as the listing (``DecisionReads.life_suppression``), no longer repeated
  in Python in ``gateway/cli/audit.py``.

The stores are a real gateway's (the live demo's, copied per test) with the lives decided by the gateway's
engine on them (tests/cli/archive_support.py), or logs of forwarded AD1s the engine decided.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from archive_support import AD1_101, OUT_OF_SCOPE_CH, ArchivedTwice, audit, query, store_path

from gateway.engine import EngineConfig, PowerOutage
from gateway.guids import GuidSet
from gateway.inventory import Inventory
from gateway.store import DurableEngine, SqliteStore
from gateway.store.sqlite import DecisionReader

AD1_102 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:102|DCCAlertMessage.AD1"  # held, then suppressed
AD1_106 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:106|DCCAlertMessage.AD1"  # forwarded
AD1_108 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:108|DCCAlertMessage.AD1"  # suppressed
LIFE_STARTS = ("suppress", "forward", "hold")
DISPOSITION = {"forward": "forward", "release-forward": "forward", "suppress": "suppress",
               "release-suppress": "suppress", "hold": "hold"}  # fmt: skip


# ------------------------------------------------------------------------------------------ the rule, in the test


def lives_by_rule(db: Path) -> list[dict[str, Any]]:
    """The latest decision of each life of each message id, in the order of each life's first decision, read
    from the whole log by the documented rule (docs/OPERATIONS.md "## Audit"): the engine decides a message once
    a life (``suppress``, ``forward``, ``hold``), then only releases follow in that life; a message id decided
    again begins its next life. Decisions of a message id before its first such action are a life of their own."""
    lives: dict[tuple[str, int], list[dict[str, Any]]] = {}
    current: dict[str, tuple[str, int]] = {}
    for seq, mid, action, record in query(
        db, "SELECT seq, message_id, action, record FROM decisions ORDER BY seq"
    ):
        if action in LIFE_STARTS or mid not in current:
            current[str(mid)] = (str(mid), int(str(seq)))
            lives[current[str(mid)]] = []
        lives[current[str(mid)]].append(json.loads(str(record)))
    return [decisions[-1] for decisions in lives.values()]  # (a dict keeps the order the lives began in)


def at_of(row: dict[str, Any]) -> datetime:
    at = datetime.fromisoformat(str(row["decided_at"]))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def listed(
    capsys: pytest.CaptureFixture[str], config: str, *args: str
) -> tuple[int, list[tuple[str, ...]], str]:
    """``list --json``: its exit code, (message id, action, reason, decided_at) of each line, its stderr."""
    rc, out, err = audit(capsys, "list", "--config", config, "--json", *args)
    lines = [json.loads(line) for line in out.splitlines()]
    return rc, [(r["message_id"], r["action"], r["reason"], r["decided_at"]) for r in lines], err


def shown(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [(r["message_id"], r["action"], r["reason"], r["decided_at"]) for r in rows]


@pytest.fixture
def lives(work: Path, capsys: pytest.CaptureFixture[str]) -> ArchivedTwice:
    """The demo's store (AD1 102 held, then suppressed ``fd-confirmed``; a restoration paired) with AD1 108
    released by an operator, and AD1 101 released by an operator, its retention passed, re-delivered and
    suppressed afresh: two lives, the first released."""
    config = str(work / "gateway.toml")
    rc, _out, err = audit(
        capsys, "release", AD1_108, "--config", config, "--operator", "bob", "--note", "site visit"
    )
    assert rc == 0, err
    story = ArchivedTwice(work, capsys)
    story.first_life_ends(released=True)
    story.decide_second()
    return story


# ------------------------------------------------------------------------------------------ what it reads


def forwarded_log(db: Path, count: int) -> None:
    """``count`` AD1s of a hub no inventory row names, each forwarded by the gateway's engine: ``count``
    decisions, each a life of its own."""
    t0 = datetime(2026, 3, 2, 8, tzinfo=UTC)
    d = DurableEngine(SqliteStore(db), EngineConfig(), GuidSet.from_iterable(()), Inventory())
    for start in range(0, count, 500):
        batch = []
        for j in range(start, min(count, start + 500)):
            at = t0 + timedelta(seconds=j)
            batch.append((PowerOutage(message_id=f"ad1-{j:06d}", arrival=at, verified=True, verification="ok",
                                      ch=OUT_OF_SCOPE_CH, mpan=None, start_time=at - timedelta(minutes=4)),
                          b"<AD1/>"))  # fmt: skip
        d.submit_many(batch)
    d.store.close()


def work_for_first_rows(db: Path, take: int, **filters: Any) -> tuple[int, list[str]]:
    """The SQLite work (virtual machine steps, in hundreds) ``latest_decisions`` does to give its first ``take``
    rows, as ``audit list --limit`` takes them (then closes it); and the message ids it gave."""
    with DecisionReader(db) as reader:
        steps = 0

        def step() -> int:
            nonlocal steps
            steps += 1
            return 0  # go on

        reader._conn().set_progress_handler(step, 100)
        rows = reader.latest_decisions(**filters)
        got = [str(r["message_id"]) for r in itertools.islice(rows, take)]
        rows.close()
    return steps, got


@pytest.fixture(scope="module")
def small_and_large_logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Logs of 1,000 and 10,000 forwarded AD1s (built once: the tests only read them)."""
    folder = tmp_path_factory.mktemp("logs")
    small, large = folder / "small.sqlite3", folder / "large.sqlite3"
    forwarded_log(small, 1_000)
    forwarded_log(large, 10_000)
    return small, large


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"actions": ["forward", "release-forward"]},  # --decision forward
        {"reason": "ch-unknown"},
        {"since": datetime(2026, 3, 2, 8, tzinfo=UTC)},
    ],
    ids=["no-filter", "decision", "reason", "since"],
)
def test_the_first_lines_of_list_cost_the_same_at_1000_and_at_10000_decisions(
    small_and_large_logs: tuple[Path, Path], filters: dict[str, Any]
) -> None:
    """``list --limit 20`` takes 21 rows (the 21st says that more match). Before, the log was grouped by life
    first: the work grew with the log (about ten times more steps at ten times the decisions: 681 and 6,801
    hundreds of steps; now 10 and 10)."""
    small, large = small_and_large_logs
    work_small, first_small = work_for_first_rows(small, 21, **filters)
    work_large, first_large = work_for_first_rows(large, 21, **filters)
    assert first_small == first_large == [f"ad1-{j:06d}" for j in range(21)]
    assert work_large <= work_small + 5, (work_small, work_large)


# ------------------------------------------------------------------------------------------ what it prints


def test_list_prints_a_line_per_life_as_the_rule_gives_and_every_limit_is_the_first_lines_of_it(
    lives: ArchivedTwice, capsys: pytest.CaptureFixture[str]
) -> None:
    """A held message's final decision, an operator release (the line of the life it was made on), a message id
    decided afresh after its retention (a line per life), in first-decision order; ``--limit N`` the first
    ``N`` lines of exactly that, saying when more match."""
    expected = shown(lives_by_rule(lives.db))
    rc, everything, err = listed(capsys, lives.config)
    assert (rc, err) == (0, "")
    assert everything == expected
    assert [line for line in everything if line[0] == AD1_101] == [
        (AD1_101, "release-forward", "operator-release", everything[0][3]),
        (AD1_101, "suppress", "activation-window", everything[-1][3]),
    ]  # its first life (the first line) released, its second (the last) suppressed
    assert (AD1_102, "release-suppress", "fd-confirmed") in [line[:3] for line in everything]
    assert (AD1_108, "release-forward", "operator-release") in [line[:3] for line in everything]
    for n in range(1, len(expected) + 2):
        rc, first, err = listed(capsys, lives.config, "--limit", str(n))
        assert (rc, first) == (0, expected[:n])
        more = f"{n} message(s): the first {n} (--limit {n}); more match (--limit 0 for all)\n"
        assert err == (more if n < len(expected) else "")


@pytest.mark.parametrize("decision", [None, "forward", "suppress", "hold"])
@pytest.mark.parametrize("reason", [None, "operator-release", "activation-window", "fd-confirmed"])
def test_list_filters_the_latest_decision_of_each_life_then_limits(
    lives: ArchivedTwice, capsys: pytest.CaptureFixture[str], decision: str | None, reason: str | None
) -> None:
    everything = lives_by_rule(lives.db)
    expected = shown([r for r in everything if (decision is None or DISPOSITION[r["action"]] == decision)
                      and (reason is None or r["reason"] == reason)])  # fmt: skip
    args = [*(("--decision", decision) if decision else ()), *(("--reason", reason) if reason else ())]
    rc, lines, _err = listed(capsys, lives.config, *args)
    assert (rc, lines) == (0 if expected else 1, expected)
    for n in (1, 2):
        rc, lines, _err = listed(capsys, lives.config, *args, "--limit", str(n))
        assert (rc, lines) == (0 if expected else 1, expected[:n])


def test_list_since_keeps_exactly_the_lives_decided_at_or_after_it_to_the_microsecond_in_any_offset(
    lives: ArchivedTwice, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--since`` is compared with the latest decision's exact time (the SQL reads only what may match, to the
    second: a line decided half a second before it is still left out)."""
    everything = lives_by_rule(lives.db)
    decided = sorted({at_of(r) for r in everything})
    middle = decided[len(decided) // 2]
    for since in (middle, middle + timedelta(microseconds=1), middle - timedelta(microseconds=1),
                  middle + timedelta(milliseconds=500), middle - timedelta(milliseconds=500), decided[0],
                  decided[-1] + timedelta(microseconds=1)):  # fmt: skip
        expected = shown([r for r in everything if at_of(r) >= since])
        texts = (
            since.isoformat(),  # +00:00
            since.astimezone(UTC).replace(tzinfo=None).isoformat(),  # no offset: UTC
            since.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            since.astimezone(datetime.fromisoformat("2026-01-01T00:00:00+05:30").tzinfo).isoformat(),
        )
        for text in texts:
            rc, lines, _err = listed(capsys, lives.config, "--since", text)
            assert (rc, lines) == (0 if expected else 1, expected), text
            rc, lines, _err = listed(capsys, lives.config, "--since", text, "--limit", "1")
            assert lines == expected[:1], text


def test_decisions_before_a_message_ids_first_life_start_are_a_life_of_their_own_listed_as_before(
    lives: ArchivedTwice, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log in which a message id's first decisions are releases (none the engine writes: a log written
    otherwise) lists them as one life, begun by the first of them, before the life its next decision begins;
    as the grouping by ``_LIFE`` did."""
    (top,) = query(lives.db, "SELECT max(seq) FROM decisions")[0]
    at = "2026-03-10T10:00:00+00:00"
    rows = [("legacy-1", "release-suppress", "fd-confirmed"), ("legacy-2", "release-forward", "operator-release"),
            ("legacy-1", "release-forward", "operator-release"), ("legacy-1", "forward", "outside-window"),
            ("legacy-2", "release-forward", "operator-release")]  # fmt: skip
    with contextlib.closing(sqlite3.connect(lives.db)) as conn, conn:
        for n, (mid, action, reason) in enumerate(rows, start=int(str(top)) + 1):
            record = {"message_id": mid, "action": action, "reason": reason, "decided_at": at}
            conn.execute("INSERT INTO decisions(seq, message_id, action, reason, decided_at, event_time, record) "
                         "VALUES (?,?,?,?,?,NULL,?)", (n, mid, action, reason, at, json.dumps(record)))  # fmt: skip
    expected = shown(lives_by_rule(lives.db))
    assert [line[:2] for line in expected[-3:]] == [
        ("legacy-1", "release-forward"),
        ("legacy-2", "release-forward"),
        ("legacy-1", "forward"),
    ]
    rc, lines, _err = listed(capsys, lives.config)
    assert (rc, lines) == (0, expected)
    rc, lines, _err = listed(capsys, lives.config, "--decision", "forward", "--limit", "3")
    assert lines == [line for line in expected if DISPOSITION[line[1]] == "forward"][:3]


# ------------------------------------------------------------------------------------------ the life released


def test_the_suppression_of_a_message_ids_current_life_is_read_by_the_rule_of_lives(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What names the life an operator release is made on (shared state): the current life's suppression, or
    none when the current life suppressed nothing (a second life forwarded must not be taken for its first)."""
    story = ArchivedTwice(work, capsys)
    with DecisionReader(store_path(work)) as reader:
        first = reader.life_suppression(AD1_101)
        assert first is not None and (first["action"], first["decided_at"]) == (
            "suppress",
            "2026-03-02T08:06:10+00:00",
        )
        held = reader.life_suppression(AD1_102)  # held, then suppressed: the decision that ended its hold
        assert held is not None and (held["action"], held["reason"]) == ("release-suppress", "fd-confirmed")
        assert reader.life_suppression(AD1_106) is None  # forwarded
        assert reader.life_suppression("no-such-message") is None
    story.first_life_ends(released=True)
    with DecisionReader(store_path(work)) as reader:
        released = reader.life_suppression(AD1_101)  # released: still the life its suppression began
        assert released is not None and released["seq"] == first["seq"]
    second_at = story.decide_second()
    with DecisionReader(store_path(work)) as reader:
        second = reader.life_suppression(AD1_101)
        assert second is not None and second["action"] == "suppress"
        assert datetime.fromisoformat(second["decided_at"]) >= second_at - timedelta(minutes=1)
        assert second["seq"] > first["seq"]


def test_a_second_life_forwarded_has_no_suppression_to_release(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    story = ArchivedTwice(work, capsys)
    story.first_life_ends()
    story.decide_second(forwarded=True)
    with DecisionReader(store_path(work)) as reader:
        assert reader.life_suppression(AD1_101) is None
        assert [r["action"] for r in reader.audit(AD1_101)] == ["suppress", "forward"]
