"""Revoked certificates give no evidence. The lab's certificate folder holds the organisation CA's
certificate and its CRL (the lab's ``dsp-revoked`` credential is on it): the attacks signed with that key
are in the catalogue (``attacks.py``, category ``certificate``). Here: without the CRL the same evidence
does suppress (so the list is what stops it), and a supplier whose GBCS DS certificate is on the CRL sends
CV5 requests that neither widen a window nor open a pending activation, although both of the request's
signatures verify."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.pipeline import Classifier
from gateway.smki import CertificateStore
from gbcs.crypto import Status
from tests.security.attacks import ATTACKS
from tests.security.lab import REVOKED_AT, Lab, run_case
from tests.security.test_pre_command_signature import (
    REQUEST_AT,
    cv5_request,
    decision,
    pending_case,
    window_start_case,
)


@pytest.fixture(scope="module")
def without_crl(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The lab's classifier, its certificate folder without the CRL."""
    certs = tmp_path_factory.mktemp("certs") / "certs"
    shutil.copytree(lab.refs["certs"], certs)
    (certs / "org.crl.pem").unlink()
    store = CertificateStore.from_path(certs)
    assert store.crls == []
    return lab.classifier(store)


@pytest.fixture(scope="module")
def supplier_revoked(lab: Lab) -> Classifier:
    """The lab's classifier, with a newer CRL that also revokes the supplier's DS certificate (role 0x02)."""
    pki = lab.world.pki
    store = CertificateStore.from_path(lab.refs["certs"])
    store.add_crl(
        pki.crl([(pki.issued["dsp-revoked"], REVOKED_AT), (pki.issued["supplier-ds"], REVOKED_AT)]),
        name="org-2.crl",
    )
    return lab.classifier(store)


@pytest.mark.parametrize("name", [a.name for a in ATTACKS if "revoked" in a.name.lower()])
def test_the_revoked_key_attacks_would_suppress_without_the_crl(
    lab: Lab, without_crl: Classifier, classifier: Classifier, name: str, tmp_path: Path
) -> None:
    (i, attack) = next((i, a) for i, a in enumerate(ATTACKS) if a.name == name)
    case = attack.build(lab, i + 1)
    assert run_case(lab, without_crl, case, tmp_path).suppressed == 1
    stopped = run_case(lab, classifier, case, tmp_path)
    assert stopped.suppressed == 0
    assert stopped.stopped_by == ["xml-signature-revoked:certificate_revoked"]


def test_a_cv5_request_whose_supplier_ds_certificate_is_revoked_is_not_evidence(
    lab: Lab, classifier: Classifier, supplier_revoked: Classifier, tmp_path: Path
) -> None:
    request = cv5_request(lab)
    assert decision(run_case(lab, classifier, window_start_case(lab, request), tmp_path)) == (
        "suppress", "activation-window", False,
    )  # fmt: skip
    widened = run_case(lab, supplier_revoked, window_start_case(lab, request), tmp_path)
    assert decision(widened) == ("forward", "evidence-unverified", False)
    pending = run_case(lab, supplier_revoked, pending_case(lab, request), tmp_path)
    assert decision(pending) == ("forward", "evidence-unverified", False)  # nothing pending: not held

    c = supplier_revoked.classify("observe", request, REQUEST_AT)
    assert c.xml is not None and c.xml.valid  # the supplier's XML-signing certificate is not revoked
    assert c.gbcs is not None and c.gbcs.status is Status.REVOKED
    assert [p.split(":", 1)[0] for p in c.problems] == ["gbcs-signature-revoked"], c.problems
    [event] = c.events
    assert not event.verified
