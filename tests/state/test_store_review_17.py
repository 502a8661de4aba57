"""Second review of the operator release of a quarantined unsigned copy (seventeenth session), on the real
pipeline and the SQLite store.

A batch is refused (``CopyOfReleasedMessage``) only for what the engine rebuilt from the store answers otherwise:
the signed copy of the *same bytes* whose quarantined key the engine still keeps. Otherwise the refusal is
repeated by every rebuild (a ``duisgw replay`` of a ``--state`` store, which never takes releases in, stopped on
it; the gateway refused the batch once and decided it again after a take-in that changed nothing):

- other bytes naming the same identity (never a duplicate of the quarantined copy, docs/ENGINE.md §8);
- the same bytes after the retention of the quarantined key (the engine forgot it: decided afresh, as after the
  take-in).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.engine.config import EngineConfig
from gateway.engine.effects import Decision, Duplicate
from gateway.engine.events import Tick
from gateway.guids import import_guids
from gateway.inventory import import_inventory_csv
from gateway.pipeline import Classifier
from gateway.replay import InputMessage, ReplayRun
from gateway.store.durable import DurableEngine
from gateway.store.sqlite import SqliteStore
from tests.security.attacks import AD1_AT, AD1_START, RESP_AT, ad1, response
from tests.security.lab import Lab, t

QUARANTINE = EngineConfig(quarantine_unverified_inline=True)
FIRST_AT = t("09:06")


class Node:
    """A DurableEngine on a real SQLite store in a file, fed through the replay driver."""

    def __init__(self, path: Path, lab: Lab, config: EngineConfig = QUARANTINE) -> None:
        guids, _ = import_guids(lab.refs["guids"])
        inventory, _ = import_inventory_csv(lab.refs["inventory"])
        self.store = SqliteStore(path, checkpoint_interval=0)
        self.durable = DurableEngine(self.store, config, guids, inventory)
        self.run = ReplayRun(lab.classifier(), self.durable, config.hold_limit, batch_size=1)

    def feed(
        self, classifier: Classifier, at: dt.datetime, lane: str, body: bytes
    ) -> list[dict[str, object]]:
        self.run.classifier = classifier
        return [*self.run.feed(InputMessage(at, lane, body, "test")), *self.run.flush()]  # type: ignore[arg-type]


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for n in made:
        n.store.close()


def _release(path: Path, message_id: str, at: dt.datetime) -> None:
    operator = SqliteStore(path, checkpoint_interval=0)
    try:
        operator.release_suppressed(message_id, "alice", "field visit", at)
    finally:
        operator.close()


def _quarantine(node: Node, without_the_dsp: Classifier, body: bytes, at: dt.datetime = FIRST_AT) -> str:
    [line] = node.feed(without_the_dsp, at, "inline", body)
    assert (line["decision"], line["reason"]) == ("suppress", "quarantined-unverified"), line
    return str(line["message_id"])


def test_other_bytes_naming_the_identity_of_a_released_quarantined_copy_are_decided_without_a_refusal(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, nodes: list[Node]
) -> None:
    # the quarantined AD1 and another AD1 under the same ResponseID (other bytes: another StartDateTime), signed
    n = 81
    path = tmp_path / "state.db"
    node = Node(path, lab)
    nodes.append(node)
    alias = _quarantine(node, without_the_dsp, ad1(lab, n, counter=981))
    _release(path, alias, t("09:06:30"))  # not taken in: a replay of this store never takes it in
    other = ad1(lab, n, start=AD1_START + dt.timedelta(minutes=1), counter=981)
    signed = classifier.classify("inline", other, AD1_AT)
    assert alias.startswith(signed.message_id + "#unverified:")
    [event] = signed.events
    # was: CopyOfReleasedMessage at every try (the engine rebuilt from the store decides other bytes afresh, as
    # it must: never the duplicate of another message's bytes), the replay stopped on it
    out = node.durable.submit(event, other)
    [decision] = [e for e in out if isinstance(e, Decision)]
    assert decision.message_id == signed.message_id
    assert node.store.status(signed.message_id) == "forward"


def test_the_same_bytes_after_the_quarantined_keys_retention_are_decided_afresh_without_a_refusal(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, nodes: list[Node]
) -> None:
    config = EngineConfig(quarantine_unverified_inline=True, retention=dt.timedelta(hours=12))
    n = 82
    body = ad1(lab, n)
    path = tmp_path / "state.db"
    node = Node(path, lab, config)
    nodes.append(node)
    alias = _quarantine(node, without_the_dsp, body)
    later = FIRST_AT + dt.timedelta(hours=13)
    node.durable.submit(Tick(later))  # the quarantined key's retention passed: pruned
    assert node.store.status(alias) == "suppress"  # its row stays: an operator can release it still
    _release(path, alias, later)
    signed = classifier.classify("inline", body, later)
    [event] = signed.events
    # was: CopyOfReleasedMessage at every try: the engine rebuilt from the store had forgotten the key too, and
    # decided the signed copy afresh again (as the engine that takes the release in does)
    out = node.durable.submit(event, body)
    assert [e.message_id for e in out if isinstance(e, Decision)] == [signed.message_id]
    assert not [e for e in out if isinstance(e, Duplicate)]


def test_the_same_bytes_within_the_retention_are_still_refused_then_answered_as_the_releases_duplicate(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, nodes: list[Node]
) -> None:
    # the refusal that stays (the rebuilt engine answers otherwise): pins that the narrowing keeps it
    from gateway.engine.errors import CopyOfReleasedMessage

    n = 83
    body = ad1(lab, n)
    path = tmp_path / "state.db"
    node = Node(path, lab)
    nodes.append(node)
    node.feed(classifier, RESP_AT, "observe", response(lab, n))
    alias = _quarantine(node, without_the_dsp, body)
    _release(path, alias, t("09:06:30"))
    [event] = classifier.classify("inline", body, AD1_AT).events
    with pytest.raises(CopyOfReleasedMessage):
        node.durable.submit(event, body)
    out = node.durable.submit(event, body)
    [dup] = [e for e in out if isinstance(e, Duplicate)]
    assert dup.original is not None and dup.original.message_id == alias


# ------------------------------------------------------------------ the restoration while such a release is pending


def _reboot_and_quarantined_cut(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, node: Node, path: Path, n: int
) -> tuple[int, dt.datetime, str]:
    """The reboot's AD1 suppressed on verified evidence; a genuine cut on the same hub minutes later has its AD1
    quarantined (its signature failed) and released by an operator (not taken in): the DNO has that outage."""
    esme, ch, mpan = lab.meter(n)
    node.feed(classifier, RESP_AT, "observe", response(lab, n))
    [reboot] = node.feed(classifier, AD1_AT, "inline", ad1(lab, n))
    assert (reboot["decision"], reboot["reason"]) == ("suppress", "activation-window")
    cut_start, cut_at = AD1_START + dt.timedelta(minutes=12), AD1_AT + dt.timedelta(minutes=12)
    alias = _quarantine(node, without_the_dsp, lab.f.ad1(ch, mpan, cut_start, cut_at, 900 + n), cut_at)
    _release(path, alias, cut_at + dt.timedelta(minutes=1))
    return esme, cut_start, alias


def test_a_restoration_decided_while_a_quarantined_ad1s_release_is_not_taken_in_is_not_paired_with_another_ad1(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, nodes: list[Node]
) -> None:
    # the release commits after the gateway's take-in before the batch (or a replay of the store, which never
    # takes releases in): the engine in memory has not kept the released cut's outage
    from gateway.engine.errors import CopyOfReleasedMessage

    n = 78
    path = tmp_path / "state.db"
    node = Node(path, lab)
    nodes.append(node)
    esme, cut_start, alias = _reboot_and_quarantined_cut(lab, classifier, without_the_dsp, node, path, n)
    back = cut_start + dt.timedelta(minutes=6)
    body = lab.f.restoration(esme, cut_start, back, back)
    [event] = classifier.classify("inline", body, back + dt.timedelta(minutes=1)).events
    try:
        out = node.durable.submit(event, body)
    except (
        CopyOfReleasedMessage
    ) as refused:  # nothing committed: decided again (no take-in: as a replay would)
        assert refused.released == [alias]
        out = node.durable.submit(event, body)
    [decision] = [e for e in out if isinstance(e, Decision)]
    # was: suppress (restoration-paired with the reboot's AD1), committed: the DNO kept the released cut open
    assert (decision.action.value, decision.reason.value) == ("forward", "not-paired")
    assert [i.role for i in decision.evidence] == ["released-outage"]
    assert node.durable.take_in_operator_releases() == [(alias, "power-outage")]  # taken in once, as ever


def test_a_restoration_replayed_on_a_store_holding_a_quarantined_ad1s_release_is_not_paired_with_another_ad1(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, nodes: list[Node]
) -> None:
    # released while the gateway was stopped; then ``duisgw replay --state`` of that store (never takes it in)
    n = 79
    path = tmp_path / "state.db"
    node = Node(path, lab)
    nodes.append(node)
    esme, cut_start, _alias = _reboot_and_quarantined_cut(lab, classifier, without_the_dsp, node, path, n)
    node.store.close()
    nodes.remove(node)
    replay = Node(path, lab)
    nodes.append(replay)
    back = cut_start + dt.timedelta(minutes=6)
    [rst] = replay.feed(
        classifier, back + dt.timedelta(minutes=1), "inline", lab.f.restoration(esme, cut_start, back, back)
    )
    # was: suppress (restoration-paired with the reboot's AD1)
    assert (rst["decision"], rst["reason"]) == ("forward", "not-paired"), rst
    # then taken in (nothing more to do: the engine had it) and a restart: the released outage kept by the replay
    # was written with its commit, so the engine restored without the pending release still keeps it
    assert replay.durable.take_in_operator_releases() == [(_alias, "power-outage")]
    replay.store.close()
    nodes.remove(replay)
    again = Node(path, lab)
    nodes.append(again)
    later = back + dt.timedelta(minutes=3)
    [rst2] = again.feed(classifier, later, "inline", lab.f.restoration(esme, cut_start, back, later))
    assert (rst2["decision"], rst2["reason"]) == ("forward", "not-paired"), rst2


# ------------------------------------------------------------------ the release racing the signed copy's commit


@pytest.mark.parametrize("evidence", [False, True], ids=["forwarded", "suppressed"])
def test_the_release_of_a_quarantined_copy_is_refused_in_its_transaction_once_the_signed_copy_is_committed(
    lab: Lab,
    classifier: Classifier,
    without_the_dsp: Classifier,
    tmp_path: Path,
    nodes: list[Node],
    evidence: bool,
) -> None:
    # ``duisgw audit release`` checks the signed copy (``_taken_in_signed``) before its write transaction; the
    # gateway commits the signed copy in between (here: before the store's release is called)
    from gateway.engine.errors import StoreError

    n = 80 if evidence else 77
    body = ad1(lab, n)
    path = tmp_path / "state.db"
    node = Node(path, lab)
    nodes.append(node)
    if evidence:
        node.feed(classifier, RESP_AT, "observe", response(lab, n))
    alias = _quarantine(node, without_the_dsp, body)
    [signed] = node.feed(classifier, AD1_AT, "inline", body)
    assert signed["decision"] == ("suppress" if evidence else "forward")
    # was: released: the DNO got the same bytes a second time under another X-DUISGW-Message-Id (forwarded), or
    # the outage while its restoration is paired with the signed copy's suppressed outage and withheld
    with pytest.raises(StoreError, match="verified id"):
        _release(path, alias, t("09:10"))
    assert node.store.status(alias) == "suppress"
    assert node.store.operator_releases() == []


def _release_by_an_older_cli(path: Path, message_id: str, at: dt.datetime) -> None:
    """What ``duisgw audit release`` of a version before the seventeenth session wrote (no look at the signed
    copy): the release's row, decision and ``operator_releases`` entry, committed from another connection."""
    import json
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        seq = int(db.execute("SELECT coalesce(max(seq), 0) + 1 FROM decisions").fetchone()[0])
        db.execute(
            "UPDATE messages SET status='forward', reason='operator-release', delivered=0, updated=? WHERE message_id=?",
            (at.isoformat(), message_id),
        )
        record = {"message_id": message_id, "action": "release-forward", "reason": "operator-release",
                  "operator": "alice", "note": "older cli", "decided_at": at.isoformat()}  # fmt: skip
        db.execute(
            "INSERT INTO decisions(seq, message_id, action, reason, decided_at, event_time, record) VALUES (?,?,?,?,?,?,?)",
            (
                seq,
                message_id,
                "release-forward",
                "operator-release",
                at.isoformat(),
                None,
                json.dumps(record),
            ),
        )
        db.execute("INSERT INTO operator_releases(decision_seq, message_id) VALUES (?, ?)", (seq, message_id))
        db.execute("COMMIT")
    finally:
        db.close()


def test_a_release_of_a_quarantined_copy_written_after_its_signed_copy_refuses_no_later_batch(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, nodes: list[Node]
) -> None:
    # the order the store now refuses, written by an older CLI: the signed copy decided first, then the release
    # of the quarantined copy pending; nothing about it to refuse in the gateway's later batches
    n = 76
    body = ad1(lab, n)
    path = tmp_path / "state.db"
    node = Node(path, lab)
    nodes.append(node)
    alias = _quarantine(node, without_the_dsp, body)
    [signed] = node.feed(classifier, AD1_AT, "inline", body)
    assert (signed["decision"], signed.get("duplicate")) == ("forward", None)
    _release_by_an_older_cli(path, alias, t("09:10"))
    [again] = node.feed(classifier, t("09:11"), "inline", body)  # a re-delivery of the signed copy
    assert again.get("duplicate") is True and again["message_id"] == signed["message_id"]
    [other] = node.feed(classifier, t("09:20"), "inline", ad1(lab, 75, start=t("09:15"), at=t("09:20")))
    assert other["decision"] == "forward"
