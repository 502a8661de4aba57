"""Attacks on the evidence the suppression decision depends on: none may suppress an AD1.

Each attack of ``attacks.ATTACKS`` runs on its own premises through the real classifier (XML
signature, SMKI role policy, GBCS device signature, identity checks) and a fresh durable engine,
staged so that genuine evidence would have suppressed the AD1 (the ``control`` rows prove it).
The figure table (attempts by category, suppressions caused) is printed at the end of the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.pipeline import Classifier
from tests.security.attacks import ATTACKS, Attack
from tests.security.lab import ROWS, Lab, run_case


def _param(i: int, a: Attack) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=a.known_bug)] if a.known_bug else []
    return pytest.param(i, a, id=f"{a.category}:{a.name}", marks=marks)


ATTACK_PARAMS = [_param(i, a) for i, a in enumerate(ATTACKS) if not a.control]
CONTROL_PARAMS = [_param(i, a) for i, a in enumerate(ATTACKS) if a.control]


#: a target AD1 decided for one of these was not judged on the attack's evidence at all: its own premises
#: (an in-scope meter on a known hub, a verified AD1 the engine can compute with) were not staged
NOT_STAGED = {
    "out-of-scope",
    "ch-unknown",
    "inline-unverified",
    "quarantined-unverified",
    "naive-timestamp",
    "time-out-of-range",
}


def _run(lab: Lab, classifier: Classifier, i: int, a: Attack, tmp_path: Path) -> int:
    outcome = run_case(lab, classifier, a.build(lab, i + 1), tmp_path)
    # "no suppression" proves a defence only when the AD1 could have been suppressed on genuine evidence
    assert outcome.targets and not NOT_STAGED & {line["reason"] for line in outcome.targets}, outcome.targets
    if not a.control:  # each attack step was classified and its fate recorded
        assert outcome.stopped_by and all(outcome.stopped_by), outcome.stopped_by
    decisions = ", ".join(f"{line['decision']} ({line['reason']})" for line in outcome.targets)
    ROWS.append(
        {
            "category": a.category,
            "name": a.name,
            "suppressed": outcome.suppressed,
            "stopped_by": ", ".join(outcome.stopped_by) or "-",
            "decision": decisions,
            "known_bug": a.known_bug is not None,
        }
    )
    return outcome.suppressed


@pytest.mark.parametrize(("i", "attack"), CONTROL_PARAMS)
def test_genuine_evidence_staged_like_the_attacks_does_suppress(
    lab: Lab, classifier: Classifier, i: int, attack: Attack, tmp_path: Path
) -> None:
    assert _run(lab, classifier, i, attack, tmp_path) == 1


@pytest.mark.parametrize(("i", "attack"), ATTACK_PARAMS)
def test_attack_causes_no_suppression(
    lab: Lab, classifier: Classifier, i: int, attack: Attack, tmp_path: Path
) -> None:
    assert _run(lab, classifier, i, attack, tmp_path) == 0
