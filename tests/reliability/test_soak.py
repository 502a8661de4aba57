"""The fault suite: nothing the gateway acknowledged is ever lost, nothing is decided twice.

``test_soak_...`` is the CI form of ``tools/soak.py`` (docs/RELIABILITY.md "Fault suite"): a real
``python -m gateway serve`` process, a real DNO receiver and mosquitto, 15,000 signed messages, six
SIGKILLs, a freeze longer than the DSP's timeout, the DNO down for most of the stream, two broker
restarts. The reconciliation itself is pinned down first on hand-made records, so that a soak that
reports 0 lost is known to be able to see a loss.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from soakkit import REPORTS, Acked, Figures, SoakMessage, dump, plan_faults, reconcile, run_soak

SEED = 2026
MESSAGES = 15_000
KILLS = 6


def _msg(i: int, lane: str, expect: str | None = None, group: str = "g") -> SoakMessage:
    body = f"<m{i}/>".encode()
    return SoakMessage(i, datetime(2026, 3, 2, tzinfo=UTC), lane, body, f"id{i}", i, group, expect)


def test_reconcile_sees_every_kind_of_loss_double_decision_and_wrong_delivery() -> None:
    plan = [_msg(i, "inline", "forward") for i in range(6)] + [_msg(6, "inline", "suppress"), _msg(7, "observe")]
    acked = {m.message_id: Acked(200, m.expect, 100.0) for m in plan}
    decisions = [
        ("id0", "forward"),  # delivered twice: one at-least-once duplicate
        ("id1", "forward"),  # never delivered: lost
        ("id2", "hold"),  # still held: lost
        ("id3", "forward"),
        ("id3", "release-forward"),  # decided twice
        ("id5", "hold"),
        ("id5", "release-forward"),  # held then released: fine
        ("id6", "suppress"),  # ...but the DNO received it
    ]  # id4: no decision at all (lost); id7: an observation the engine did not store (lost)
    receipts = [
        ("id0", plan[0].sha256, 100.5),
        ("id0", plan[0].sha256, 101.0),
        ("id3", "0" * 64, 102.0),  # altered bytes
        ("id5", plan[5].sha256, 103.0),
        ("id6", plan[6].sha256, 104.0),
    ]
    decisions.append(("id-never-sent", "forward"))
    receipts.append(("id-never-sent", "1" * 64, 105.0))
    fig = reconcile(plan, acked, decisions, stored=[], receipts=receipts)
    assert (fig.lost_no_decision, fig.lost_not_delivered, fig.still_held, fig.observations_lost) == (1, 1, 1, 1)
    assert fig.lost == 4
    assert fig.decided_twice == 1
    assert fig.held_then_released == 1
    assert fig.duplicates_delivered == 1
    assert fig.bytes_altered == 1
    assert fig.suppressed_delivered == 1
    assert (fig.unknown_decided, fig.unknown_delivered) == (1, 1)
    assert fig.max_outbox_age_s == pytest.approx(3.0)  # id5: acknowledged as a forward at 100, first received at 103
    assert {"id1", "id2", "id4", "id7"} <= set(fig.examples["lost"])


def test_a_clean_record_reconciles_to_zero_lost() -> None:
    plan = [_msg(0, "inline", "forward"), _msg(1, "inline", "suppress"), _msg(2, "observe")]
    acked = {m.message_id: Acked(200 if m.lane == "inline" else 204, m.expect, 10.0) for m in plan}
    decisions = [("id0", "forward"), ("id1", "hold"), ("id1", "release-suppress")]
    fig = reconcile(plan, acked, decisions, stored=["id0", "id1", "id2"], receipts=[("id0", plan[0].sha256, 10.25)])
    assert (fig.lost, fig.decided_twice, fig.duplicates_delivered, fig.decision_mismatch) == (0, 0, 0, 0)
    assert (fig.forwards, fig.suppressions, fig.held_then_released) == (1, 1, 1)
    assert fig.max_outbox_age_s == pytest.approx(0.25)


def test_fault_positions_are_seeded_and_inside_the_stream() -> None:
    a, b = plan_faults(15_000, KILLS, SEED), plan_faults(15_000, KILLS, SEED)
    assert a == b
    assert len(set(a.kills)) == KILLS and all(0 < k < 15_000 for k in a.kills + a.stalls)
    assert plan_faults(15_000, KILLS, SEED + 1).kills != a.kills
    (down, up), _bounce = a.dno_down
    assert up - down >= 0.5 * 15_000  # long enough for thousands of forwards to queue on disk


@pytest.mark.soak
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_loses_nothing_acknowledged_through_kills_freezes_and_outages(tmp_path: Path) -> None:
    figures: Figures
    log: list[str] = []
    figures, plan = run_soak(tmp_path, messages=MESSAGES, kills=KILLS, seed=SEED, progress=log.append)
    REPORTS.append((f"fault suite soak: {len(plan.messages):,} messages, {KILLS} kills, seed {SEED}",
                    figures.table()))  # fmt: skip
    dump(figures, tmp_path / "soak.json", seed=SEED)
    detail = figures.table() + "\n" + "\n".join(log)
    assert len(plan.messages) >= 10_000 and figures.acked == len(plan.messages), detail
    assert figures.kills >= 5, detail
    assert figures.lost == 0, detail
    assert figures.decided_twice == 0, detail
    assert figures.suppressed_delivered == 0, detail
    assert figures.unknown_decided == 0 and figures.unknown_delivered == 0, detail
    assert figures.bytes_altered == 0, detail
    assert figures.answer_changed == 0, detail
    assert figures.decision_mismatch == 0, detail
    assert figures.dead_letters == 0, detail
    assert figures.held_then_released > 0 and figures.forwards > 0 and figures.suppressions > 0, detail
    assert figures.peak_outbox_depth >= 1_500, detail  # the DNO outage really filled the disk-backed outbox
