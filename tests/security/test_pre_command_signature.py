"""An SR 11.3 CV5 request is evidence only when its SignedPreCommand's GBCS signature verifies against
the supplier's DS certificate. A pre-command whose signature cannot be checked (no DS certificate for
the signer in the key store) or carries none is unverified evidence, like a request whose XML
signature failed: it neither opens a pending activation (which holds the AD1) nor moves an immediate
activation's window back to the request (which suppresses an AD1 that started before
``activation - window_before``); the AD1 is forwarded with ``evidence-unverified``.

Each case runs through the real classifier and a fresh durable engine (``run_case``), first with a
key store that holds the supplier's DS certificate (the request is verified: the AD1 is held or
suppressed, which shows the case measures what the request does), then with the pre-command made
unverifiable. A pre-command that verifies, but against the DS certificate of another party than the
RequestID's originator (the supplier whose XML signature the request carries), is not the supplier's
command either; nor is one whose signer's DS certificate lacks the Supplier role (a network operator's
own CV5, both of its signatures good: CS06 is a Supplier command).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.duis.encode import encode
from gateway.duis.model import Request, RequestHeader, SignedPreCommand
from gateway.duis.values import MessageId
from gateway.duis.xmldsig import sign
from gateway.gbcs_keys import load_keystore
from gateway.pipeline import Classifier
from gateway.smki import CertificateStore, SigningPolicy
from gateway.testkit.messages import DNO_EUI, MSG_CS06, SUPPLIER_EUI, cs06_command_content
from gateway.testkit.pki import ROLE_NETWORK_OPERATOR
from gbcs.crypto import Status, Verifier, sign_frame
from gbcs.frame import build_general_signing
from tests.security.lab import OTHER, Case, Lab, Outcome, run_case, t

METER = 71
COUNTER = 7100
REQUEST_AT = t("09:00:00")


@pytest.fixture(scope="module")
def without_supplier_key(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The lab's classifier, but its GBCS key store lacks the supplier's DS certificate."""
    keys = tmp_path_factory.mktemp("keys") / "gbcs-keys"
    shutil.copytree(lab.refs["gbcs_keys"], keys)
    (keys / f"{SUPPLIER_EUI:016x}-ds.pem").unlink()
    keystore = load_keystore(keys)
    assert keystore.ds_certificate(SUPPLIER_EUI) is None
    return Classifier(
        certificates=CertificateStore.from_path(lab.refs["certs"]),
        signing_policy=SigningPolicy(),
        gbcs_verifier=Verifier(keystore, acb_eui=getattr(keystore, "acb_eui", None)),
    )


def cv5_request(lab: Lab, *, signed: bool = True) -> bytes:
    """The supplier's immediate SR 11.3 CV5 request (SignedPreCommand), its pre-command signed by the
    supplier's DS key (``signed=False``: no GBCS signature at all)."""
    factory = lab.f if signed else lab.factory_with_device_key(lambda _eui: None)
    return factory.activate_request(lab.meter(METER)[0], COUNTER, signed_pre_command=True)


def window_start_case(lab: Lab, request: bytes) -> Case:
    """The response comes 40 min after the request; the AD1 started 5 min after the request, so only the
    request's time puts it inside the window (``activation - window_before`` is 09:25)."""
    esme, ch, mpan = lab.meter(METER)
    response = lab.f.activate_response(esme, COUNTER, t("09:40:00"))
    return (
        Case()
        .attack(REQUEST_AT, "observe", request)
        .setup(t("09:40:00"), "observe", response)
        .target(t("09:41:00"), lab.f.ad1(ch, mpan, t("09:05:00"), t("09:41:00"), 7101))
    )


def pending_case(lab: Lab, request: bytes) -> Case:
    """No response (yet): the AD1 arrives while the activation would be pending."""
    _esme, ch, mpan = lab.meter(METER)
    return Case().attack(REQUEST_AT, "observe", request).target(t("09:07:00"), lab.f.ad1(ch, mpan, t("09:03:30"), t("09:07:00"), 7102))


def decision(outcome: Outcome) -> tuple[str, str, bool]:
    [line] = outcome.targets
    return line["decision"], line["reason"], line["held"]


def test_a_verified_pre_command_opens_and_widens_the_window(lab: Lab, classifier: Classifier, tmp_path: Path) -> None:
    request = cv5_request(lab)
    widened = run_case(lab, classifier, window_start_case(lab, request), tmp_path)
    assert widened.stopped_by == ["verified"]
    assert decision(widened) == ("suppress", "activation-window", False)
    pending = run_case(lab, classifier, pending_case(lab, request), tmp_path)
    assert decision(pending) == ("forward", "hold-timeout", True)


@pytest.mark.parametrize(
    ("signed", "problem"),
    [(True, "gbcs-signature-unverifiable:"), (False, "gbcs-signature-not-present:")],
    ids=["no-certificate-for-the-signer", "no-signature"],
)
def test_an_unverifiable_pre_command_is_unverified_evidence(
    lab: Lab, without_supplier_key: Classifier, classifier: Classifier, signed: bool, problem: str, tmp_path: Path
) -> None:
    clf = without_supplier_key if signed else classifier
    request = cv5_request(lab, signed=signed)
    widened = run_case(lab, clf, window_start_case(lab, request), tmp_path)
    assert decision(widened) == ("forward", "evidence-unverified", False)  # the window opens at 09:25
    pending = run_case(lab, clf, pending_case(lab, request), tmp_path)
    assert decision(pending) == ("forward", "evidence-unverified", False)  # nothing pending: not held

    assert widened.stopped_by[0].startswith(problem)
    c = clf.classify("observe", request, REQUEST_AT)
    [event] = c.events
    assert not c.verified and not event.verified
    assert [p.split(":", 1)[0] + ":" for p in c.problems] == [problem], c.problems


def pre_command_signed_by_another_party(lab: Lab) -> bytes:
    """A CV5 request XML-signed by the supplier whose pre-command names another GBCS originator (a device
    whose DS certificate is in the key store) and is validly signed with that party's key."""
    esme = lab.meter(METER)[0]
    other = lab.meter(OTHER + METER)[0]
    frame = build_general_signing(
        cra=1, originator_counter=COUNTER, originator=other, recipient=esme, message_code=MSG_CS06,
        content=cs06_command_content(lab.f.image_hash, COUNTER, None),
    )  # fmt: skip
    doc = Request(
        RequestHeader(MessageId(SUPPLIER_EUI, esme, COUNTER), 5, "11.3", "11.3"),
        SignedPreCommand(sign_frame(frame, lab.device_key(OTHER + METER)), None),
    )
    supplier = lab.world.supplier
    assert supplier is not None
    return sign(encode(doc), supplier.key, supplier.certificate)


def test_a_pre_command_signed_by_another_party_than_the_requests_originator_is_not_evidence(
    lab: Lab, classifier: Classifier, tmp_path: Path
) -> None:
    request = pre_command_signed_by_another_party(lab)
    widened = run_case(lab, classifier, window_start_case(lab, request), tmp_path)
    assert decision(widened) == ("forward", "evidence-unverified", False)
    c = classifier.classify("observe", request, REQUEST_AT)
    # the signature itself is good; the signer is wrong twice: not the RequestID's originator, and a
    # device, whose DS certificate has no Supplier role (CS06 is a Supplier command)
    assert c.gbcs is not None and c.gbcs.status is Status.UNVERIFIABLE
    assert "not the Supplier role 02" in c.gbcs.reason
    kinds = [p.split(":", 1)[0] for p in c.problems]
    assert kinds == ["gbcs-mismatch", "gbcs-signature-unverifiable"], c.problems


@pytest.fixture(scope="module")
def with_network_operator_ds(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> tuple[Classifier, Any]:
    """The lab's classifier, its GBCS key store also holding the network operator's DS certificate
    (role 0x03), and that credential: a DCC User that may XML-sign requests but never send CS06."""
    dno_ds = lab.world.pki.organisation("dno-ds", DNO_EUI, ROLE_NETWORK_OPERATOR)
    keys = tmp_path_factory.mktemp("keys") / "gbcs-keys"
    shutil.copytree(lab.refs["gbcs_keys"], keys)
    (keys / f"{DNO_EUI:016x}-ds.pem").write_bytes(dno_ds.cert_pem)
    keystore = load_keystore(keys)
    clf = Classifier(
        certificates=CertificateStore.from_path(lab.refs["certs"]),
        signing_policy=SigningPolicy(),
        gbcs_verifier=Verifier(keystore, acb_eui=getattr(keystore, "acb_eui", None)),
    )
    return clf, dno_ds


def test_a_pre_command_signed_by_a_network_operator_is_not_cs06_evidence(
    lab: Lab, with_network_operator_ds: tuple[Classifier, Any], tmp_path: Path
) -> None:
    """CS06 is a Supplier command (DOMAIN.md: only suppliers may send 11.3). A network operator's CV5 —
    XML-signed with its own user XML-signing certificate (0x87, its EUI in the RequestID) and its
    pre-command GBCS-signed with its own DS key (role 0x03) — verifies on both signatures, but its
    signer holds the wrong role: it must not open a pending activation that holds the meter's AD1."""
    clf, dno_ds = with_network_operator_ds
    esme = lab.meter(METER)[0]
    frame = build_general_signing(
        cra=1, originator_counter=COUNTER, originator=DNO_EUI, recipient=esme, message_code=MSG_CS06,
        content=cs06_command_content(lab.f.image_hash, COUNTER, None),
    )  # fmt: skip
    doc = Request(
        RequestHeader(MessageId(DNO_EUI, esme, COUNTER), 5, "11.3", "11.3"),
        SignedPreCommand(sign_frame(frame, dno_ds.private_key), None),
    )
    dno_xml = lab.world.dno_xml
    request = sign(encode(doc), dno_xml.key, dno_xml.certificate)

    c = clf.classify("observe", request, REQUEST_AT)
    assert c.xml is not None and c.xml.valid  # the DNO's XML signature is good
    assert c.gbcs is not None and c.gbcs.status is Status.UNVERIFIABLE and "role 03" in c.gbcs.reason
    [event] = c.events
    assert not event.verified
    pending = run_case(lab, clf, pending_case(lab, request), tmp_path)
    assert decision(pending) == ("forward", "evidence-unverified", False)  # not held


LATER = t("11:00:00")
OTHER_TIME = t("12:00:00")
DUIS_CANCEL = datetime(3000, 12, 31, tzinfo=UTC)  # the DUIS cancellation sentinel
GBCS_CANCEL = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # CS06's (GBCS.md §5)


def cv5_with(
    lab: Lab, duis_execution: datetime | None, gbcs_execution: datetime | None, content_counter: int = COUNTER
) -> bytes:
    """The supplier's CV5, both signatures good, its DUIS ``ExecutionDateTime`` and the signed CS06
    command (executionDateTime, originatorCounter) set independently."""
    esme = lab.meter(METER)[0]
    frame = build_general_signing(
        cra=1, originator_counter=COUNTER, originator=SUPPLIER_EUI, recipient=esme, message_code=MSG_CS06,
        content=cs06_command_content(lab.f.image_hash, content_counter, gbcs_execution),
    )  # fmt: skip
    key = lab.f.device_key(SUPPLIER_EUI)
    assert key is not None
    doc = Request(
        RequestHeader(MessageId(SUPPLIER_EUI, esme, COUNTER), 5, "11.3", "11.3"),
        SignedPreCommand(sign_frame(frame, key), duis_execution),
    )
    supplier = lab.world.supplier
    assert supplier is not None
    return sign(encode(doc), supplier.key, supplier.certificate)


@pytest.mark.parametrize(
    ("duis", "gbcs"),
    [(None, None), (LATER, LATER), (DUIS_CANCEL, GBCS_CANCEL)],
    ids=["immediate", "future-dated", "cancellation"],
)
def test_a_pre_command_whose_signed_command_agrees_with_the_request_is_evidence(
    lab: Lab, classifier: Classifier, duis: datetime | None, gbcs: datetime | None
) -> None:
    c = classifier.classify("observe", cv5_with(lab, duis, gbcs), REQUEST_AT)
    assert c.verified, c.problems
    [event] = c.events
    assert event.verified


@pytest.mark.parametrize(
    ("duis", "gbcs", "content_counter"),
    [
        (None, LATER, COUNTER),  # the request says now, the supplier signed a future-dated activation
        (LATER, None, COUNTER),  # the request says later, the signed command activates at once
        (LATER, OTHER_TIME, COUNTER),  # two execution times
        (DUIS_CANCEL, None, COUNTER),  # the request cancels, the signed command activates at once
        (None, GBCS_CANCEL, COUNTER),  # the request activates, the signed command cancels
        (None, None, COUNTER + 1),  # the command's originatorCounter is not its header's (GBCS.md §5)
    ],
    ids=["now-vs-later", "later-vs-now", "two-times", "cancel-vs-now", "now-vs-cancel", "content-counter"],
)
def test_a_pre_command_whose_signed_command_disagrees_with_the_request_is_not_evidence(
    lab: Lab, classifier: Classifier, duis: datetime | None, gbcs: datetime | None, content_counter: int
) -> None:
    """What the device executes is the GBCS command the supplier signed, not the DUIS ExecutionDateTime
    beside it: a CV5 whose two disagree is not evidence of either."""
    c = classifier.classify("observe", cv5_with(lab, duis, gbcs, content_counter), REQUEST_AT)
    assert c.gbcs is not None and c.gbcs.ok  # both signatures are good
    assert [p.split(":", 1)[0] for p in c.problems] == ["gbcs-mismatch"], c.problems
    [event] = c.events
    assert not event.verified


def test_an_immediate_request_whose_signed_command_is_future_dated_does_not_hold_the_ad1(
    lab: Lab, classifier: Classifier, tmp_path: Path
) -> None:
    """The DUIS request says "now", the signed CS06 command says 11:00: taken at its DUIS word it
    opened a pending immediate activation that held the AD1 of 09:03:30."""
    pending = run_case(lab, classifier, pending_case(lab, cv5_with(lab, None, LATER)), tmp_path)
    assert decision(pending) == ("forward", "evidence-unverified", False)
