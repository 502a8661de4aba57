"""A message whose XML signature does not verify cannot take a genuine message's identity.

The engine's idempotency key is the DUIS identity (``ResponseID|kind``, ``RequestID|CV``), which is text
anyone can write. A POST that copies a genuine message's identity without its valid signature (stripped,
or any forgery) used to be decided first under that identity, so the genuine message arriving after it
was answered as its duplicate and never used: a genuine 11.3 response was lost as evidence (its reboot's
AD1 forwarded), and a genuine AD1 never reached the DNO (the forgery had been forwarded in its place, under
the same ``X-DUISGW-Message-Id``). Now a message whose signature did not verify against the right role is
decided under ``<identity>#unverified:<digest of its bytes>``: its re-deliveries are still duplicates of
it, and it never collides with the signed message.
"""

from __future__ import annotations

from pathlib import Path

from gateway.pipeline import Classifier
from tests.security import lab as L
from tests.security.attacks import AD1_AT, RESP_AT, ad1, response
from tests.security.lab import Case, Lab, run_case, t


def test_an_unsigned_copy_of_an_activation_response_sent_first_does_not_cost_the_genuine_one_as_evidence(
    lab: Lab, classifier: Classifier, tmp_path: Path
) -> None:
    n = 71
    genuine = response(lab, n)
    squatter = L.strip_signature(genuine)
    assert classifier.classify("observe", squatter, RESP_AT).problems  # unsigned: not evidence
    case = (
        Case()
        .attack(t("09:00:20"), "observe", squatter)
        .setup(RESP_AT, "observe", genuine)
        .target(AD1_AT, ad1(lab, n))
    )
    outcome = run_case(lab, classifier, case, tmp_path)
    assert [(x["decision"], x["reason"]) for x in outcome.targets] == [("suppress", "activation-window")]


def test_an_unsigned_copy_of_an_ad1_sent_first_does_not_keep_the_genuine_ad1_from_the_dno(
    lab: Lab, classifier: Classifier, tmp_path: Path
) -> None:
    n = 72
    genuine = ad1(lab, n)  # no activation near its meter: forwarded
    squatter = L.strip_signature(genuine)
    first = classifier.classify("inline", squatter, t("09:06"))
    real = classifier.classify("inline", genuine, AD1_AT)
    assert not real.problems and first.problems
    assert first.message_id != real.message_id
    assert first.message_id.startswith(f"{real.message_id}#unverified:")
    outcome = run_case(
        lab, classifier, Case().attack(t("09:06"), "inline", squatter).target(AD1_AT, genuine), tmp_path
    )
    [line] = outcome.targets
    assert line["message_id"] == real.message_id
    assert line["decision"] == "forward" and line["reason"] != "duplicate", line


def test_a_re_delivered_unsigned_message_is_still_a_duplicate_of_itself(
    lab: Lab, classifier: Classifier
) -> None:
    squatter = L.strip_signature(ad1(lab, 73))
    once, again = (classifier.classify("inline", squatter, at) for at in (t("09:06"), t("09:08")))
    assert once.message_id == again.message_id
    assert all(ev.message_id == once.message_id for ev in once.events if hasattr(ev, "message_id"))
    other = L.strip_signature(ad1(lab, 74))
    assert classifier.classify("inline", other, t("09:06")).message_id != once.message_id
