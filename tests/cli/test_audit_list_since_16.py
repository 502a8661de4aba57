"""``duisgw audit list --since T`` prints, for a log that holds what a real gateway writes, the lines of the
documented rule: the same lines, in the same order, with the same ``--limit`` and "more match" notice.

The store is a real gateway's (the live demo's, copied per test), its gateway clock the messages' (March 2026),
and then, in this order:

* an operator releases the demo's AD1 108 (``audit release``: dated by the wall clock, months after the log);
* the gateway's engine decides on in March: two hours of forwarded AD1s, some with arrival times in other
  offsets (``+01:00``; ``+05:30:15``, a text SQLite's ``julianday()`` does not read), and an AD1 held for
  meter 1's firmware activation, taken before ``T`` and released (suppressed) after it when the response comes;
  then more AD1s.

``--since T`` (``T`` minutes after the hold) lists: the operator release — dated ahead of every decision after
it — at the place of AD1 108's first decision; the held AD1 at the place of its hold; the AD1s decided at or after
``T``. The expected lines are read from the whole log by the documented rule (a line per life, its latest
decision, in the order of the lives' first decisions), not by the code under test. (A search for a cut near
``T`` instead of the walk from the log's start was built and measured in the sixteenth session and not kept:
docs/RELIABILITY.md.)
"""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from archive_support import CH_1, ESME_1, MPAN_1, OUT_OF_SCOPE_CH, SUPPLIER, audit, query, store_path

from gateway.engine import ActivationRequested, ActivationResponse, Decision, EngineConfig, PowerOutage
from gateway.guids import GuidSet
from gateway.inventory import Inventory
from gateway.store import DurableEngine, SqliteStore

AD1_108 = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:108|DCCAlertMessage.AD1"
LIFE_STARTS = ("suppress", "forward", "hold")
DISPOSITION = {"forward": "forward", "release-forward": "forward", "suppress": "suppress",
               "release-suppress": "suppress", "hold": "hold"}  # fmt: skip
PLUS_ONE = timezone(timedelta(hours=1))
UNREAD = timezone(timedelta(hours=5, minutes=30, seconds=15))  # isoformat: +05:30:15, NULL to julianday()


def lives_by_rule(db: Path) -> list[dict[str, Any]]:
    """The latest decision of each life, in the order of the lives' first decisions (docs/OPERATIONS.md "## Audit":
    a ``suppress``, ``forward`` or ``hold`` begins a life, releases follow in it)."""
    lives: dict[tuple[str, int], dict[str, Any]] = {}
    current: dict[str, tuple[str, int]] = {}
    for seq, mid, action, record in query(
        db, "SELECT seq, message_id, action, record FROM decisions ORDER BY seq"
    ):
        if action in LIFE_STARTS or mid not in current:
            current[str(mid)] = (str(mid), int(str(seq)))
        lives[current[str(mid)]] = json.loads(str(record))
    return list(lives.values())


def at_of(row: dict[str, Any]) -> datetime:
    at = datetime.fromisoformat(str(row["decided_at"]))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def ad1(mid: str, at: datetime) -> tuple[PowerOutage, bytes]:
    """An AD1 of a hub no inventory row names (forwarded), arriving at ``at`` (in ``at``'s offset)."""
    return (PowerOutage(message_id=mid, arrival=at, verified=True, verification="ok", ch=OUT_OF_SCOPE_CH, mpan=None,
                        start_time=at - timedelta(minutes=4)), b"<AD1/>")  # fmt: skip


class Story:
    """The demo's store with the release and the decisions of the module's docstring."""

    def __init__(self, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.db, self.config = store_path(work), str(work / "gateway.toml")
        rc, _out, err = audit(capsys, "release", AD1_108, "--config", self.config, "--operator", "bob",
                              "--note", "site visit", "--without-restoration")  # fmt: skip
        assert rc == 0, err
        inventory = Inventory.load_csv(work / "inventory.csv")[0]
        d = DurableEngine(SqliteStore(self.db), EngineConfig(), GuidSet.from_iterable([ESME_1]), inventory)
        clock = d.engine.clock
        assert clock is not None
        t = clock + timedelta(minutes=1)
        for i in range(120):  # two hours, one a minute; every 20th in +01:00, every 30th in +05:30:15
            at = t + timedelta(minutes=i)
            zone = UNREAD if i % 30 == 7 else PLUS_ONE if i % 20 == 3 else UTC
            d.submit(*ad1(f"early-{i:03d}", at.astimezone(zone)))
        self.held_at = t + timedelta(minutes=120)
        requested = self.held_at - timedelta(seconds=30)
        d.submit(ActivationRequested(message_id="req-16", arrival=requested, verified=True, verification="ok",
                                     supplier=SUPPLIER, esme=ESME_1, counter=16016, execution_time=None,
                                     is_cancellation=False, seen_at=requested), None)  # fmt: skip
        out = d.submit(PowerOutage(message_id="held-16", arrival=self.held_at, verified=True, verification="ok",
                                   ch=CH_1, mpan=MPAN_1, start_time=requested + timedelta(seconds=20)), b"<AD1 held/>")  # fmt: skip
        assert [e.action.value for e in out if isinstance(e, Decision)] == ["hold"], out
        for i in range(1, 8):
            d.submit(*ad1(f"mid-{i}", self.held_at + timedelta(minutes=i)))
        answered = self.held_at + timedelta(minutes=8)
        out = d.submit(ActivationResponse(message_id="rsp-16", arrival=answered, verified=True, verification="ok",
                                          esme=ESME_1, supplier=SUPPLIER, counter=16016,
                                          response_time=requested + timedelta(seconds=35), result=0), None)  # fmt: skip
        assert [e.action.value for e in out if isinstance(e, Decision)] == ["release-suppress"], out
        for i in range(9, 40):
            at = self.held_at + timedelta(minutes=i)
            d.submit(
                *ad1(
                    f"late-{i:02d}",
                    at.astimezone(UNREAD if i % 10 == 4 else PLUS_ONE if i % 10 == 5 else UTC),
                )
            )
        d.store.close()
        self.since = self.held_at + timedelta(minutes=5)


@pytest.fixture
def story(work: Path, capsys: pytest.CaptureFixture[str]) -> Story:
    return Story(work, capsys)


def listed(
    capsys: pytest.CaptureFixture[str], config: str, *args: str
) -> tuple[int, list[tuple[str, ...]], str]:
    rc, out, err = audit(capsys, "list", "--config", config, "--json", *args)
    lines = [json.loads(line) for line in out.splitlines()]
    return rc, [(r["message_id"], r["action"], r["reason"], r["decided_at"]) for r in lines], err


def shown(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [(r["message_id"], r["action"], r["reason"], r["decided_at"]) for r in rows]


def test_the_story_s_log_has_the_texts_it_is_meant_to_test(story: Story) -> None:
    texts = [str(r[0]) for r in query(story.db, "SELECT decided_at FROM decisions ORDER BY seq")]
    assert any(t.endswith("+01:00") for t in texts) and any(t.endswith("+05:30:15") for t in texts)
    unread = query(story.db, "SELECT count(*) FROM decisions WHERE julianday(decided_at) IS NULL")[0][0]
    assert unread == 4 + 3  # early AD1s 7, 37, 67, 97; late AD1s 14, 24, 34
    assert len(query(story.db, "SELECT decision_seq FROM operator_releases")) == 1


def test_list_since_prints_the_lines_of_the_whole_logs_rule_in_its_order_for_every_limit(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = shown([r for r in lives_by_rule(story.db) if at_of(r) >= story.since])
    assert expected[0][:3] == (
        AD1_108,
        "release-forward",
        "operator-release",
    )  # the release, at its life's place
    assert expected[1][:3] == (
        "held-16",
        "release-suppress",
        "activation-window",
    )  # held before T, released after
    assert [line[0] for line in expected[2:]] == [
        "mid-5",
        "mid-6",
        "mid-7",
        *(f"late-{i:02d}" for i in range(9, 40)),
    ]
    for text in (story.since.isoformat(), story.since.astimezone(UNREAD).isoformat(),
                 story.since.astimezone(UTC).replace(tzinfo=None).isoformat()):  # fmt: skip
        rc, lines, err = listed(capsys, story.config, "--since", text)
        assert (rc, lines, err) == (0, expected, "")
    for n in (1, 2, 3, len(expected) - 1, len(expected), len(expected) + 1):
        rc, lines, err = listed(capsys, story.config, "--since", story.since.isoformat(), "--limit", str(n))
        assert (rc, lines) == (0, expected[:n])
        more = f"{n} message(s): the first {n} (--limit {n}); more match (--limit 0 for all)\n"
        assert err == (more if n < len(expected) else "")
    rc, out, err = audit(capsys, "list", "--config", story.config, "--since", story.since.isoformat())
    assert [line.split()[-1] for line in out.splitlines()] == [line[0] for line in expected]
    assert (rc, err) == (0, f"{len(expected)} message(s)\n")


@pytest.mark.parametrize("minutes", [-125, -61, -60, -59, -1, 0, 1, 8, 9, 30, 39, 40])
@pytest.mark.parametrize("decision", [None, "forward", "suppress"])
def test_list_since_at_any_time_of_the_story_is_the_rule_filtered(
    story: Story, capsys: pytest.CaptureFixture[str], minutes: int, decision: str | None
) -> None:
    """``T`` from before the first AD1 after the release (the cut then before the release) to after the last."""
    since = story.held_at + timedelta(minutes=minutes)
    everything = lives_by_rule(story.db)
    expected = shown([r for r in everything if at_of(r) >= since
                      and (decision is None or DISPOSITION[r["action"]] == decision)])  # fmt: skip
    args = ("--decision", decision) if decision else ()
    rc, lines, _err = listed(capsys, story.config, "--since", since.isoformat(), *args)
    assert (rc, lines) == (0 if expected else 1, expected)


def test_list_since_lists_a_decision_whose_time_cannot_be_read_and_says_so(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:
    # a log another tool wrote (the engine never does): the listing ended in a ValueError traceback
    import sqlite3

    with sqlite3.connect(story.db) as db:
        db.execute(
            "UPDATE decisions SET decided_at = 'not a time', record = json_set(record, '$.decided_at', 'not a time') "
            "WHERE message_id = 'late-20'"
        )
    rc, out, err = audit(capsys, "list", "--config", story.config, "--since", story.since.isoformat())
    assert rc == 0, err
    assert any(line.endswith(" late-20") and line.startswith("not a time") for line in out.splitlines()), out
    assert "1 of them listed with a decided_at that is not an ISO-8601 time" in err
