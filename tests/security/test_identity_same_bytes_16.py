"""The same bytes are decided once, whether their signature verified at one delivery and not at another.

The gateway decides a message under its DUIS identity when its XML signature verified against the right
role's certificate, else under ``<identity>#unverified:<digest of its bytes>``, so that an unsigned copy never
squats a genuine message's identity (test_identity_squatting.py). The same bytes therefore had two ids when
their signature verified at one delivery and not at another — a revocation list past its nextUpdate at the
second arrival only, an SMKI reload between them — and the re-delivery was decided afresh: an AD1 suppressed on
verified evidence was forwarded ``inline-unverified`` at its re-delivery (a false AD1 reached the DNO), and an
inline message forwarded unverified was decided again once its signature verified. Now each event carries the
digest of its bytes and each idempotency key keeps it: the re-delivery is a duplicate of the first decision,
across a restart too (docs/ENGINE.md §8). Different bytes naming the same identity are still decided afresh.

Every case runs through the real :class:`gateway.pipeline.Classifier` (real signatures, real revocation lists,
real certificate stores) and a :class:`gateway.store.durable.DurableEngine` on a real :class:`SqliteStore`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.engine.config import EngineConfig
from gateway.engine.effects import Duplicate
from gateway.guids import import_guids
from gateway.inventory import import_inventory_csv
from gateway.pipeline import Classifier, unverified_identity
from gateway.replay import InputMessage, ReplayRun
from gateway.smki import CertificateStore, SigningPolicy
from gateway.store.durable import DurableEngine
from gateway.store.sqlite import SqliteStore
from gbcs.crypto import Verifier
from gbcs.keystore import MemoryKeyStore
from tests.engine.engine_support import MemoryInventory, MemoryScope
from tests.security import lab as L
from tests.security.attacks import AD1_AT, RESP_AT, ad1, response
from tests.security.lab import REVOKED_AT, Case, Lab, run_case, t

#: the lab organisation CA's revocation list, as a test store holds it here: due again at 10:00 (the day's
#: messages before then verify; from then on every signature it covers is unverifiable: fail-closed)
NEXT_UPDATE = t("10:00")
AGAIN_AT = t("10:30")  # a DCC re-delivery of the same bytes, past the list's nextUpdate


@pytest.fixture(scope="module")
def stale_at_ten(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The lab's classifier with a revocation list whose nextUpdate is 10:00 (no newer list was loaded)."""
    certs = tmp_path_factory.mktemp("certs-crl-due-at-ten") / "certs"
    shutil.copytree(lab.refs["certs"], certs)
    pki = lab.world.pki
    crl = pki.crl([(pki.issued["dsp-revoked"], REVOKED_AT)], this_update=REVOKED_AT, next_update=NEXT_UPDATE)
    (certs / "org.crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return lab.classifier(CertificateStore.from_path(certs))


@pytest.fixture(scope="module")
def without_the_dsp(lab: Lab) -> Classifier:
    """The lab's classifier after an SMKI reload that dropped the DSP's XML-signing certificate."""
    full = CertificateStore.from_path(lab.refs["certs"])
    dsp = lab.world.dsp.certificate.serial_number
    return lab.classifier(CertificateStore(c for c in full if c.certificate.serial_number != dsp))


class Gateway:
    """A replay run on a real SQLite store in a file: classify, decide, commit each message; restartable."""

    def __init__(self, path: Path, classifier: Classifier, lab: Lab | None = None) -> None:
        self.path, self.classifier, self.lab = path, classifier, lab
        self.config = EngineConfig()
        self.store: SqliteStore | None = None
        self.lines: list[dict[str, Any]] = []
        self.start()

    def start(self) -> None:
        if self.lab is not None:
            guids, _ = import_guids(self.lab.refs["guids"])
            inventory, _ = import_inventory_csv(self.lab.refs["inventory"])
            self.durable = DurableEngine(self.open(), self.config, guids, inventory)
        else:
            self.durable = DurableEngine(self.open(), self.config, MemoryScope(()), MemoryInventory())
        self.run = ReplayRun(self.classifier, self.durable, self.config.hold_limit, batch_size=1)

    def open(self) -> SqliteStore:
        self.store = SqliteStore(self.path, checkpoint_interval=0)
        return self.store

    def restart(self) -> None:
        self.lines += self.run.flush()
        assert self.store is not None
        self.store.close()
        self.start()

    def feed(
        self, at: datetime, lane: str, body: bytes, classifier: Classifier | None = None
    ) -> list[dict[str, Any]]:
        self.run.classifier = classifier or self.classifier
        got = [*self.run.feed(InputMessage(at, lane, body, "test")), *self.run.flush()]  # type: ignore[arg-type]
        self.lines += got
        return got

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for g in made:
        g.close()


def _gateway(made: list[Gateway], path: Path, classifier: Classifier, lab: Lab | None = None) -> Gateway:
    g = Gateway(path, classifier, lab)
    made.append(g)
    return g


def _only(lines: list[dict[str, Any]], message_id: str) -> dict[str, Any]:
    [line] = [x for x in lines if x["message_id"] == message_id]
    return line


# ------------------------------------------------------------------ verified first, the same bytes unverified later


def test_an_ad1_suppressed_on_verified_evidence_is_not_forwarded_when_its_bytes_come_again_past_the_crls_next_update(
    lab: Lab, stale_at_ten: Classifier, tmp_path: Path
) -> None:
    n = 61
    genuine = ad1(lab, n)
    first = stale_at_ten.classify("inline", genuine, AD1_AT)
    again = stale_at_ten.classify("inline", genuine, AGAIN_AT)
    assert not first.problems  # the list is fresh at 09:07
    assert again.problems == ("xml-signature-unverifiable:revocation_list_stale",)  # and stale at 10:30
    assert again.message_id == unverified_identity(first.message_id, genuine)
    case = (
        Case().setup(RESP_AT, "observe", response(lab, n)).target(AD1_AT, genuine).target(AGAIN_AT, genuine)
    )
    outcome = run_case(lab, stale_at_ten, case, tmp_path)
    once, twice = outcome.targets
    assert (once["decision"], once["reason"]) == ("suppress", "activation-window")
    # was: forward (inline-unverified), a false AD1 to the DNO; now the duplicate of the suppression
    assert (twice["message_id"], twice["decision"], twice["reason"]) == (
        again.message_id,
        "suppress",
        "activation-window",
    )
    assert twice["duplicate"] is True and twice["duplicate_of"] == first.message_id


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
def test_the_re_delivery_past_the_crls_next_update_is_a_duplicate_across_a_restart(
    lab: Lab, stale_at_ten: Classifier, tmp_path: Path, gateways: list[Gateway], restart: bool
) -> None:
    n = 62
    genuine = ad1(lab, n)
    gw = _gateway(gateways, tmp_path / "state.db", stale_at_ten, lab)
    gw.feed(RESP_AT, "observe", response(lab, n))
    [line] = gw.feed(AD1_AT, "inline", genuine)
    assert line["decision"] == "suppress"
    if restart:
        gw.restart()  # the engine is restored from the store: the key keeps the digest of the AD1's bytes
    alias = unverified_identity(line["message_id"], genuine)
    [again] = gw.feed(AGAIN_AT, "inline", genuine)
    assert (again["message_id"], again["decision"], again.get("duplicate")) == (alias, "suppress", True)
    store = gw.store
    assert store is not None
    # its row is taken in as a duplicate, not left to be decided again at the next start
    assert (store.status(alias), store.undecided()) == ("observed", [])
    assert [r["message_id"] for r in store.audit()] == [line["message_id"]]  # one decision: the suppression
    gw.restart()
    assert gw.durable.recovered == []


def test_an_ad1_forwarded_is_not_decided_again_when_its_bytes_come_again_past_the_crls_next_update(
    lab: Lab, stale_at_ten: Classifier, tmp_path: Path, gateways: list[Gateway]
) -> None:
    genuine = ad1(lab, 63)  # no activation near its meter: forwarded
    gw = _gateway(gateways, tmp_path / "state.db", stale_at_ten, lab)
    [line] = gw.feed(AD1_AT, "inline", genuine)
    assert (line["decision"], line["reason"]) == ("forward", "no-activation")
    [again] = gw.feed(AGAIN_AT, "inline", genuine)
    # was: a second decision, forward (inline-unverified), under the other id
    assert (again["decision"], again["reason"], again["duplicate_of"]) == (
        "forward",
        "no-activation",
        line["message_id"],
    )
    assert gw.store is not None and len(gw.store.audit()) == 1


def test_an_activation_response_taken_as_evidence_is_not_kept_as_unverified_evidence_when_it_comes_again(
    lab: Lab, stale_at_ten: Classifier, tmp_path: Path, gateways: list[Gateway]
) -> None:
    n = 64
    rsp = response(lab, n)
    gw = _gateway(gateways, tmp_path / "state.db", stale_at_ten, lab)
    gw.feed(RESP_AT, "observe", rsp)
    gw.feed(AGAIN_AT, "observe", rsp)  # the DCC delivers it again, past the list's nextUpdate
    alias = stale_at_ten.classify("observe", rsp, AGAIN_AT).message_id
    store = gw.store
    assert store is not None
    # was: observed unused ("unverified: ...") and kept as unverified evidence of its ESME
    assert (store.status(alias), [r for r in gw.durable.engine.export_state() if r.table.value == "unverified"]) == (
        "observed", [],
    )  # fmt: skip
    assert next(r for r in store.messages() if r["message_id"] == alias)["reason"] == "duplicate"


# ------------------------------------------------------------------ unverified first, the same bytes verified later


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
def test_an_inline_message_forwarded_unverified_is_not_decided_again_when_its_signature_verifies_after_a_reload(
    lab: Lab,
    classifier: Classifier,
    without_the_dsp: Classifier,
    tmp_path: Path,
    gateways: list[Gateway],
    restart: bool,
) -> None:
    n = 65
    genuine = ad1(lab, n)
    gw = _gateway(gateways, tmp_path / "state.db", classifier, lab)
    [first] = gw.feed(t("09:06"), "inline", genuine, without_the_dsp)  # before the SMKI reload
    assert (first["decision"], first["reason"]) == ("forward", "inline-unverified")
    gw.feed(RESP_AT, "observe", response(lab, n))  # evidence that would now suppress it
    if restart:
        gw.restart()
    [again] = gw.feed(AD1_AT, "inline", genuine)  # after the reload: its signature verifies
    # was: suppress (activation-window), after the DNO had it; now the duplicate of its forward
    assert (again["decision"], again["reason"], again["duplicate_of"]) == (
        "forward",
        "inline-unverified",
        first["message_id"],
    )
    assert gw.store is not None and [r["message_id"] for r in gw.store.audit()] == [first["message_id"]]


def test_an_activation_response_unverified_first_is_taken_as_evidence_when_its_signature_verifies_after_a_reload(
    lab: Lab, classifier: Classifier, without_the_dsp: Classifier, tmp_path: Path, gateways: list[Gateway]
) -> None:
    n = 66
    rsp = response(lab, n)
    gw = _gateway(gateways, tmp_path / "state.db", classifier, lab)
    gw.feed(t("09:00:45"), "observe", rsp, without_the_dsp)  # not evidence: its signer is unknown
    gw.feed(t("09:01"), "observe", rsp)  # the first copy could not be used: this one is
    [line] = gw.feed(AD1_AT, "inline", ad1(lab, n))
    assert (line["decision"], line["reason"]) == ("suppress", "activation-window")


# ------------------------------------------------------------------ different bytes naming the same identity


def test_an_unsigned_copy_of_a_suppressed_ad1_is_still_decided_afresh(
    lab: Lab, classifier: Classifier, tmp_path: Path
) -> None:
    n = 67
    genuine = ad1(lab, n)
    squatter = L.strip_signature(genuine)  # other bytes naming the same identity
    case = (
        Case()
        .setup(RESP_AT, "observe", response(lab, n))
        .target(AD1_AT, genuine)
        .target(t("09:08"), squatter)
    )
    once, copy = run_case(lab, classifier, case, tmp_path).targets
    assert (once["decision"], once["reason"]) == ("suppress", "activation-window")
    assert (copy["decision"], copy["reason"]) == ("forward", "inline-unverified") and "duplicate" not in copy


def test_a_genuine_ad1_after_an_unsigned_copy_of_it_is_still_decided_on_its_own(
    lab: Lab, classifier: Classifier, tmp_path: Path
) -> None:
    n = 68
    genuine = ad1(lab, n)
    squatter = L.strip_signature(genuine)
    case = (
        Case()
        .target(t("09:06"), squatter)
        .setup(RESP_AT, "observe", response(lab, n))
        .target(AD1_AT, genuine)
    )
    copy, real = run_case(lab, classifier, case, tmp_path).targets
    assert (copy["decision"], copy["reason"]) == ("forward", "inline-unverified")
    assert (real["decision"], real["reason"]) == ("suppress", "activation-window") and "duplicate" not in real


# ------------------------------------------------------------------ a real DCC Boxed message


def test_a_dcc_boxed_signed_response_forwarded_once_is_a_duplicate_after_a_reload_dropped_its_signer_and_a_restart(
    shared: Path, tmp_path: Path, gateways: list[Gateway]
) -> None:
    body = (shared / "duis" / "samples" / "readfw-response.xml").read_bytes()
    full = CertificateStore.from_directory(shared / "smki" / "dccboxed", strict=True)
    verifier = Verifier(MemoryKeyStore())
    before = Classifier(certificates=full, signing_policy=SigningPolicy(), gbcs_verifier=verifier)
    signer = before.classify("inline", body, t("09:00")).xml
    assert signer is not None and signer.valid
    dropped = CertificateStore(c for c in full if c.name != signer.certificate_name)  # the SMKI reload
    after = before.with_certificates(dropped)
    unsigned = after.classify("inline", body, t("09:30"))
    assert unsigned.problems and unsigned.message_id == unverified_identity(
        before.classify("inline", body, t("09:00")).message_id, body
    )
    gw = _gateway(gateways, tmp_path / "state.db", before)
    [line] = gw.feed(t("09:00"), "inline", body)
    assert (line["decision"], line["reason"]) == ("forward", "other-inline")
    gw.restart()
    [again] = gw.feed(t("09:30"), "inline", body, after)
    # was: a second forward (inline-unverified) under the other id: the DNO had the message twice
    assert (again["message_id"], again["decision"], again["duplicate_of"]) == (
        unsigned.message_id, "forward", line["message_id"],
    )  # fmt: skip
    [effects] = gw.durable.submit_many([(e, body) for e in unsigned.events])  # (and the engine says why)
    [dup] = [e for e in effects if isinstance(e, Duplicate)]
    assert dup.original is not None and dup.original.message_id == line["message_id"]
