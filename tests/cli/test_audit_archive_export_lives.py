"""``duisgw audit export|list`` where a message id lived twice (re-delivered by the DSP after the engine's
retention and decided afresh), from the live store and from an archive (``--archive``): one CSV row / one line
per life, each with that life's own decision, reason, time and release status. A release belongs to the life it
was made on. The lives are told apart by the decision log (``gateway.store.sqlite._LIFE``), whether the first
life was archived before the re-delivery (two archive rows) or both were decided on one live row (upserted) and
archived together. (Each test failed before the fix: the export listed one suppression per message id, so the
second life's was missing, and took the release status of whichever life was decided last; the listing showed
one line per id.)

The stores are a real gateway's (the live demo's, copied per test); the second life is decided by the
gateway's engine on the same store (tests/cli/archive_support.py, :class:`ArchivedTwice`).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from archive_support import AD1_101, ArchivedTwice, audit

FIRST_DAY = "2026-03-02"  # the demo's: AD1 101's first life was suppressed at 08:06:10 UTC
FIRST_START = "2026-03-02T08:03:40+00:00"  # its StartDateTime


def _rows_of(out: str, message_id: str = AD1_101) -> list[dict[str, str]]:
    return [r for r in csv.DictReader(io.StringIO(out)) if r["message_id"] == message_id]


def _export(lives: ArchivedTwice, day: str, *, archive: bool = True) -> list[dict[str, str]]:
    """AD1 101's rows in the export of ``day`` (from the archive, or the live store)."""
    where = ("--archive", str(lives.archive)) if archive else ()
    rc, out, err = audit(lives.capsys, "export", "--config", lives.config, "--date", day, *where)
    assert rc in (0, 1), err
    return _rows_of(out)


def _listed(lives: ArchivedTwice, *args: str, archive: bool = True) -> list[dict[str, object]]:
    """AD1 101's objects in ``list --json`` (from the archive, or the live store)."""
    where = ("--archive", str(lives.archive)) if archive else ()
    rc, out, err = audit(lives.capsys, "list", "--config", lives.config, "--json", *args, *where)
    assert rc in (0, 1), err
    return [item for item in map(json.loads, out.splitlines()) if item["message_id"] == AD1_101]


def test_export_of_an_archive_lists_the_suppression_of_each_life_on_the_day_of_that_lifes_decision(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DNO reconciles each suppression the gateway made: the second life's suppression is a row of its own
    day's export, the same row the live store gave for it before it was archived; the first life's stays on
    its day, once."""
    lives = ArchivedTwice(work, capsys)
    lives.archive_first()
    second = lives.decide_second()
    second_day = second.date().isoformat()
    assert second_day != FIRST_DAY
    [live_row] = _export(lives, second_day, archive=False)  # the live store's row of the second life
    assert live_row["start_datetime"] == (second - timedelta(minutes=3, seconds=30)).isoformat()
    lives.archive_second()

    assert _export(lives, second_day, archive=False) == []  # moved
    assert _export(lives, second_day) == [live_row]
    [first] = _export(lives, FIRST_DAY)
    assert (first["date"], first["start_datetime"], first["reason"], first["status"]) == (
        FIRST_DAY,
        FIRST_START,
        "activation-window",
        "suppressed",
    )
    assert live_row["reason"] == "activation-window" and live_row["status"] == "suppressed"
    assert live_row["destination"] == first["destination"] == "dno"


def test_export_of_an_archive_marks_released_only_the_life_whose_suppression_was_released(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator released the first life (the DNO got it); the second life was suppressed and never
    released: its row says ``suppressed``, the first life's ``released``, whichever life was decided last."""
    lives = ArchivedTwice(work, capsys)
    lives.archive_first(released=True)
    second_day = lives.decide_second().date().isoformat()
    lives.archive_second()

    assert [(r["start_datetime"], r["status"]) for r in _export(lives, FIRST_DAY)] == [
        (FIRST_START, "released")
    ]
    [second] = _export(lives, second_day)
    assert second["status"] == "suppressed" and second["reason"] == "activation-window"


def test_a_release_of_the_second_life_does_not_mark_the_first_lifes_export_row_released(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first life was suppressed and never released; an operator released the second: the first life's
    row stays ``suppressed`` (its suppression was never delivered), the second life's is ``released``."""
    lives = ArchivedTwice(work, capsys)
    lives.archive_first()
    second_day = lives.decide_second(released=True).date().isoformat()
    [live_row] = _export(lives, second_day, archive=False)
    assert live_row["status"] == "released"
    lives.archive_second()

    assert [(r["start_datetime"], r["status"]) for r in _export(lives, FIRST_DAY)] == [
        (FIRST_START, "suppressed")
    ]
    assert _export(lives, second_day) == [live_row]


def test_list_of_an_archive_shows_one_line_per_life_with_that_lifes_latest_decision(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first life was released by an operator (its latest decision: ``forward``, ``operator-release``),
    the second suppressed: ``list --archive`` gives a line for each, in first-decision order, the second
    life's the one the live store listed before it was archived; ``--decision`` filters each life by its
    own latest decision."""
    lives = ArchivedTwice(work, capsys)
    lives.archive_first(released=True)
    lives.decide_second()
    [live_item] = _listed(lives, archive=False)
    lives.archive_second()

    first, second = _listed(lives)
    assert (first["decision"], first["reason"]) == ("forward", "operator-release")
    assert second == live_item
    assert (second["decision"], second["reason"]) == ("suppress", "activation-window")
    assert _listed(lives, "--decision", "suppress") == [second]
    assert _listed(lives, "--decision", "forward") == [first]
    assert _listed(lives, "--reason", "operator-release") == [first]

    rc, out, err = audit(capsys, "list", "--config", lives.config, "--archive", str(lives.archive))
    assert rc == 0, err
    lines = [line for line in out.splitlines() if line.endswith(AD1_101)]
    assert len(lines) == 2 and lines[0].startswith(str(first["decided_at"]))
    assert lines[1].startswith(str(second["decided_at"]))


def test_a_forwarded_second_life_does_not_mark_the_first_lifes_suppression_released(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second life was forwarded (its meter no longer in the GUID list): the DNO got that delivery, not
    the first life's suppressed alert, which nobody released: the first life's row stays ``suppressed``, and
    the second life's day has no suppression of it."""
    lives = ArchivedTwice(work, capsys)
    lives.archive_first()
    second_day = lives.decide_second(forwarded=True).date().isoformat()
    lives.archive_second()

    assert [(r["start_datetime"], r["status"]) for r in _export(lives, FIRST_DAY)] == [
        (FIRST_START, "suppressed")
    ]
    assert _export(lives, second_day) == []
    first, second = _listed(lives)
    assert (first["decision"], first["reason"]) == ("suppress", "activation-window")
    assert (second["decision"], second["reason"]) == ("forward", "out-of-scope")


@pytest.mark.parametrize("released", [False, True], ids=["suppressed", "first-released"])
def test_two_lives_decided_on_one_live_row_are_exported_and_listed_per_life_live_and_archived(
    work: Path, capsys: pytest.CaptureFixture[str], released: bool
) -> None:
    """The re-delivery came before anything was archived: the live store keeps one ``messages`` row for both
    lives (upserted when decided afresh). The live store's export and listing already give each life its own
    row and line, and an archive run that moves that one row gives the same."""
    lives = ArchivedTwice(work, capsys)
    lives.first_life_ends(released=released)
    second_day = lives.decide_second().date().isoformat()
    first_status = "released" if released else "suppressed"
    for archive in (False, True):
        if archive:
            lives.archive_second(rows=1)
        assert [(r["start_datetime"], r["status"]) for r in _export(lives, FIRST_DAY, archive=archive)] == [
            (FIRST_START, first_status)
        ]
        [second] = _export(lives, second_day, archive=archive)
        assert (second["status"], second["reason"]) == ("suppressed", "activation-window")
        first, latest = _listed(lives, archive=archive)
        assert (first["decision"], first["reason"]) == (
            ("forward", "operator-release") if released else ("suppress", "activation-window")
        )
        assert (latest["decision"], latest["reason"]) == ("suppress", "activation-window")
