"""An operator's release of a quarantined unsigned copy, on the real pipeline and the SQLite store.

With ``[engine] quarantine_unverified_inline = true`` an inline message whose own XML signature failed (here: an
SMKI reload had dropped the DSP's certificate) is kept as suppressed, ``quarantined-unverified``, under
``<identity>#unverified:<digest>``; ``duisgw audit release`` (another connection: another process) forwards it.
When the DCC delivered the same bytes again and their signature verified, the signed copy was decided afresh
under its DUIS identity (forwarded a second time, or suppressed while the DNO had the outage) — whether the running
engine had taken the release in or not, and after a restart. It is the duplicate of the released copy now
(docs/ENGINE.md §8):

- taken in by the running engine (the gateway's redelivery scan);
- released and not taken in yet: the batch that decided the signed copy is refused inside its own write
  transaction (``CopyOfReleasedMessage``, nothing committed) and the engine, rebuilt from the store, answers it as
  the duplicate;
- across a restart, with the release taken in before it or made while the gateway was stopped (the store's row of
  the released message says so: ``SqliteStore.load_engine_records``), which is also what a ``duisgw replay`` of
  a ``--state`` store that holds such a release restores.

Every case runs through the real :class:`gateway.pipeline.Classifier` (real signatures and certificate stores), a
:class:`gateway.store.durable.DurableEngine` on a real :class:`SqliteStore` in a file, and the replay driver.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.engine.config import EngineConfig
from gateway.engine.effects import Decision, Duplicate
from gateway.engine.errors import CopyOfReleasedMessage, StoreError
from gateway.guids import import_guids
from gateway.inventory import import_inventory_csv
from gateway.pipeline import Classifier, unverified_identity
from gateway.replay import InputMessage, ReplayRun
from gateway.store.durable import DurableEngine
from gateway.store.sqlite import SqliteStore
from tests.security.attacks import AD1_AT, AD1_START, RESP_AT, ad1, response
from tests.security.lab import Lab, t

QUARANTINE = EngineConfig(quarantine_unverified_inline=True)
FIRST_AT = t("09:06")  # the first delivery: the DSP's certificate not in the store (before the SMKI reload)
RELEASED_AT = t("09:06:30")


class Gateway:
    """A replay run on a real SQLite store in a file (quarantine configured): classify, decide, commit each
    message; restartable."""

    def __init__(self, path: Path, classifier: Classifier, lab: Lab) -> None:
        self.path, self.classifier, self.lab = path, classifier, lab
        self.store: SqliteStore | None = None
        self.start()

    def start(self) -> None:
        guids, _ = import_guids(self.lab.refs["guids"])
        inventory, _ = import_inventory_csv(self.lab.refs["inventory"])
        self.store = SqliteStore(self.path, checkpoint_interval=0)
        self.durable = DurableEngine(self.store, QUARANTINE, guids, inventory)
        self.run = ReplayRun(self.classifier, self.durable, QUARANTINE.hold_limit, batch_size=1)

    def stop(self) -> None:
        self.run.flush()
        assert self.store is not None
        self.store.close()
        self.store = None

    def feed(self, at: datetime, lane: str, body: bytes, classifier: Classifier | None = None) -> list[dict[str, Any]]:
        self.run.classifier = classifier or self.classifier
        return [*self.run.feed(InputMessage(at, lane, body, "test")), *self.run.flush()]  # type: ignore[arg-type]

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for g in made:
        g.close()


def _gateway(made: list[Gateway], path: Path, classifier: Classifier, lab: Lab) -> Gateway:
    g = Gateway(path, classifier, lab)
    made.append(g)
    return g


def release(path: Path, message_id: str, at: datetime = RELEASED_AT) -> None:
    """``duisgw audit release``'s record of it, from another connection (the CLI is another process)."""
    operator = SqliteStore(path, checkpoint_interval=0)
    try:
        operator.release_suppressed(message_id, "alice", "field visit: a genuine outage", at)
    finally:
        operator.close()


def quarantine(gw: Gateway, body: bytes, without_the_dsp: Classifier, at: datetime = FIRST_AT) -> str:
    [line] = gw.feed(at, "inline", body, without_the_dsp)
    assert (line["decision"], line["reason"]) == ("suppress", "quarantined-unverified"), line
    assert "#unverified:" in line["message_id"]
    return str(line["message_id"])


def audit_of(gw: Gateway) -> list[tuple[str, str, str]]:
    assert gw.store is not None
    return [(r["message_id"], r["action"], r["reason"]) for r in gw.store.audit()]


# ------------------------------------------------------------------ the signed copy after the release


@pytest.mark.parametrize("when", ["taken-in", "restarted", "released-while-stopped"])
def test_the_signed_copy_of_an_ad1_released_from_quarantine_is_its_duplicate(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, gateways: list[Gateway], when: str
) -> None:
    n = 71
    genuine = ad1(lab, n)
    path = tmp_path / "state.db"
    gw = _gateway(gateways, path, classifier, lab)
    alias = quarantine(gw, genuine, without_the_dsp)
    if when == "released-while-stopped":
        gw.stop()
        release(path, alias)
        gw.start()  # not taken in yet: the store's row of the message says it was released
    else:
        release(path, alias)
        assert gw.durable.take_in_operator_releases() == [(alias, "power-outage")]
        if when == "restarted":
            gw.stop()
            gw.start()
    gw.feed(RESP_AT, "observe", response(lab, n))  # verified evidence that would suppress it now
    [again] = gw.feed(AD1_AT, "inline", genuine)  # after the SMKI reload: its signature verifies
    identity = classifier.classify("inline", genuine, AD1_AT).message_id
    assert alias == unverified_identity(identity, genuine)
    # was: a decision of its own, suppress (activation-window): the operator's release contradicted, the
    # outage's restoration to be withheld while the DNO has the outage
    assert (again["message_id"], again.get("duplicate"), again.get("duplicate_of")) == (identity, True, alias)
    assert audit_of(gw) == [
        (alias, "suppress", "quarantined-unverified"),
        (alias, "release-forward", "operator-release"),
    ]
    assert gw.store is not None and gw.store.status(identity) == "observed"
    if when == "released-while-stopped":
        assert gw.durable.take_in_operator_releases() == [(alias, "power-outage")]  # still taken in once
    assert gw.durable.take_in_operator_releases() == []
    gw.stop()
    gw.start()
    assert gw.durable.recovered == []


def test_the_signed_copy_of_another_message_released_from_quarantine_is_not_forwarded_again(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, gateways: list[Gateway]
) -> None:
    n = 72  # an AD1 without firmware activity near it: its signed copy would be forwarded (no-activation)
    genuine = ad1(lab, n)
    path = tmp_path / "state.db"
    gw = _gateway(gateways, path, classifier, lab)
    alias = quarantine(gw, genuine, without_the_dsp)
    release(path, alias)
    gw.durable.take_in_operator_releases()
    [again] = gw.feed(AD1_AT, "inline", genuine)
    # was: forward (no-activation) under its plain id, the DNO's second copy of the bytes the release sent it
    assert again.get("duplicate_of") == alias and again["decision"] != "forward"
    assert gw.store is not None and [mid for mid, _raw in gw.store.undelivered()] == [alias]  # one forward


def test_a_signed_copy_decided_before_the_release_is_taken_in_is_refused_and_then_answered_as_its_duplicate(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, gateways: list[Gateway]
) -> None:
    # the release commits between two scans of the running gateway: the engine in memory does not know it yet
    n = 73
    genuine = ad1(lab, n)
    path = tmp_path / "state.db"
    gw = _gateway(gateways, path, classifier, lab)
    alias = quarantine(gw, genuine, without_the_dsp)
    gw.feed(RESP_AT, "observe", response(lab, n))
    release(path, alias)
    signed = classifier.classify("inline", genuine, AD1_AT)
    [event] = signed.events
    with pytest.raises(CopyOfReleasedMessage) as refused:
        gw.durable.submit(event, genuine)
    assert refused.value.released == [alias]
    assert gw.store is not None and gw.store.status(signed.message_id) is None  # nothing of it committed
    # decided again (before the take-in, as the gateway's retry of one job after a failed take-in would):
    # the engine rebuilt from the store knows the release
    out = gw.durable.submit(event, genuine)
    assert not [e for e in out if isinstance(e, Decision)]
    [dup] = [e for e in out if isinstance(e, Duplicate)]
    assert dup.original is not None and dup.original.message_id == alias
    assert gw.durable.take_in_operator_releases() == [(alias, "power-outage")]


def test_a_signed_copy_decided_before_the_quarantine_is_released_is_not_refused(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, gateways: list[Gateway]
) -> None:
    # the unchanged order: the signed copy decided first (afresh: the quarantine withheld the bytes), then a
    # release of the quarantined copy pending: nothing about it to refuse
    n = 74
    genuine = ad1(lab, n)
    path = tmp_path / "state.db"
    gw = _gateway(gateways, path, classifier, lab)
    alias = quarantine(gw, genuine, without_the_dsp)
    [signed] = gw.feed(AD1_AT, "inline", genuine)
    assert (signed["decision"], signed.get("duplicate")) == ("forward", None)
    # the store refuses this release now (the same bytes taken in under their verified id: second review,
    # tests/state/test_store_review_17.py); an older CLI wrote it: that test writes it as one did
    with pytest.raises(StoreError, match="verified id"):
        release(path, alias)
    [other] = gw.feed(t("09:20"), "inline", ad1(lab, 75, start=t("09:15"), at=t("09:20")))
    assert other["decision"] == "forward"


# ------------------------------------------------------------------ the restoration of a released AD1


def test_the_restoration_of_an_ad1_released_from_quarantine_is_forwarded_across_a_restart(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, gateways: list[Gateway]
) -> None:
    # the reboot's AD1 is suppressed; a genuine cut on the same hub minutes later has its AD1 quarantined (its
    # signature failed) and released by an operator: the DNO has that outage, so its end must reach the DNO
    n = 76
    esme, ch, mpan = lab.meter(n)
    path = tmp_path / "state.db"
    gw = _gateway(gateways, path, classifier, lab)
    gw.feed(RESP_AT, "observe", response(lab, n))
    [reboot] = gw.feed(AD1_AT, "inline", ad1(lab, n))
    assert (reboot["decision"], reboot["reason"]) == ("suppress", "activation-window")
    cut_start, cut_at = AD1_START + dt.timedelta(minutes=12), AD1_AT + dt.timedelta(minutes=12)
    cut = lab.f.ad1(ch, mpan, cut_start, cut_at, 900 + n)
    alias = quarantine(gw, cut, without_the_dsp, cut_at)
    release(path, alias, cut_at + dt.timedelta(minutes=1))
    gw.durable.take_in_operator_releases()
    gw.stop()
    gw.start()
    back = cut_start + dt.timedelta(minutes=6)
    [rst] = gw.feed(back + dt.timedelta(minutes=1), "inline", lab.f.restoration(esme, cut_start, back, back))
    # was: suppress (restoration-paired with the reboot's AD1): the DNO kept the released outage open
    assert (rst["decision"], rst["reason"]) == ("forward", "not-paired"), rst
    [boot] = gw.feed(back + dt.timedelta(minutes=2), "inline",
                     lab.f.restoration(esme, AD1_START, AD1_START + dt.timedelta(minutes=1), back))  # fmt: skip
    assert (boot["decision"], boot["reason"]) == ("suppress", "restoration-paired")  # the reboot's own


# ------------------------------------------------------------------ the converse: a verified suppression released


def test_a_released_verified_suppression_is_the_answer_to_its_bytes_coming_again_unverified(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, gateways: list[Gateway]
) -> None:
    n = 77
    esme, _ch, _mpan = lab.meter(n)
    genuine = ad1(lab, n)
    path = tmp_path / "state.db"
    gw = _gateway(gateways, path, classifier, lab)
    gw.feed(RESP_AT, "observe", response(lab, n))
    [line] = gw.feed(AD1_AT, "inline", genuine)
    assert (line["decision"], line["reason"]) == ("suppress", "activation-window")
    release(path, line["message_id"], t("09:08"))
    gw.durable.take_in_operator_releases()
    gw.stop()
    gw.start()
    [again] = gw.feed(t("09:10"), "inline", genuine, without_the_dsp)  # the same bytes, signature unverifiable now
    # a duplicate of the released suppression: not quarantined (withheld again) nor forwarded a second time
    assert (again.get("duplicate"), again.get("duplicate_of")) == (True, line["message_id"])
    assert gw.store is not None and [mid for mid, _raw in gw.store.undelivered()] == [line["message_id"]]
    back = AD1_START + dt.timedelta(minutes=6)
    [rst] = gw.feed(t("09:11"), "inline", lab.f.restoration(esme, AD1_START, back, t("09:11")))
    assert (rst["decision"], rst["reason"]) == ("forward", "not-paired")
