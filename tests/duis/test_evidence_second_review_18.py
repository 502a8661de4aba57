"""Second review of evidence review 18 (commit c3ff9f5): the problems an 11.3 message whose DUIS header
contradicts it gets quote that header.

``ResponseCode`` and ``ServiceReferenceVariant`` are any text when no schema is configured (``[pipeline]
schema`` is empty by default; the XSD's enumerations bound them only when it is), up to the message size
limit. A problem is kept whole with its message: in the event's ``verification`` (the engine's idempotency note,
its unverified-evidence record and every AD1 forward that names that evidence), the decision's audit and the
logs. So a problem quotes such a value only as far as a DUIS 5.4 code goes, then says how long it was; its
metric label (the text before the first ``:``) stays ``duis-mismatch``.

The real CS06 11.3 request templates (CV4, SRV 11.3; ../shared/duis/templates), re-signed with the DCC Boxed
supplier's XML-signing key, stay verified evidence with no ``duis-mismatch``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import test_evidence_review_18 as review18
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_private_key, load_pem_private_key
from lxml import etree

from gateway.duis.model import (
    ActivateFirmware,
    ResponseMessage,
)
from gateway.duis.xmldsig import sign
from gateway.engine.events import ActivationRequested, ActivationResponse
from gateway.gbcs_keys import load_keystore
from gateway.pipeline import Classified, Classifier
from gateway.smki import CertificateStore, SigningPolicy
from gbcs.crypto import Verifier

T = datetime(2026, 3, 2, 9, 0, 40, tzinfo=UTC)
#: far beyond any DUIS 5.4 code, well inside the default 1 MiB message limit
HUGE = 200_000
#: a problem that quotes a header value stays about this long (the longest fixed text is ~120 characters)
BOUND = 300


class Lab(review18.Lab):
    """The first review's lab (a world of its own): a signed 11.3 response under a chosen code and SRV, classified."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, seed="evidence-second-review-18")

    def classified(self, counter: int, *, code: str = "I0", srv: str = "11.3") -> Classified:
        body = self.response(counter, ResponseMessage("11.3", srv, self.cs06_response(counter)), code)
        return self.classifier.classify("observe", body, T)

    def classified_request(self, counter: int, srv: str) -> Classified:
        body = self.request(counter, 4, srv, ActivateFirmware(review18.IMAGE_HASH, None))
        return self.classifier.classify("observe", body, T)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab(tmp_path_factory.mktemp("evidence-second-review-18"))


def _mismatch(c: Classified) -> str:
    """The one ``duis-mismatch`` problem of ``c`` (its other signatures all verify)."""
    assert c.rejection is None, c.rejection
    found = [p for p in c.problems if p.split(":", 1)[0] == "duis-mismatch"]
    assert len(found) == 1 and len(c.problems) == 1, c.problems
    return found[0]


def _bounded(c: Classified, problem: str) -> None:
    assert len(problem) <= BOUND, len(problem)
    assert len(c.events) == 1
    ev = c.events[0]
    assert not ev.verified  # still never evidence
    assert len(ev.verification) <= BOUND, len(ev.verification)


def test_an_oversized_error_response_code_is_quoted_by_its_start_and_length(lab: Lab) -> None:
    code = "E" + "7" * HUGE
    c = lab.classified(1000, code=code)
    assert isinstance(c.events[0], ActivationResponse)
    problem = _mismatch(c)
    _bounded(c, problem)
    assert f"({len(code)} characters)" in problem


def test_an_oversized_response_service_reference_variant_is_quoted_by_its_start_and_length(lab: Lab) -> None:
    srv = "11.2" + "9" * HUGE
    c = lab.classified(1001, srv=srv)
    assert isinstance(c.events[0], ActivationResponse)
    problem = _mismatch(c)
    _bounded(c, problem)
    assert f"({len(srv)} characters)" in problem


def test_an_oversized_request_service_reference_variant_is_quoted_by_its_start_and_length(lab: Lab) -> None:
    srv = "11.2" + "9" * HUGE
    c = lab.classified_request(1002, srv)
    assert isinstance(c.events[0], ActivationRequested)
    problem = _mismatch(c)
    _bounded(c, problem)
    assert f"({len(srv)} characters)" in problem


@pytest.mark.parametrize(
    ("code", "srv"), [("E21", "11.3"), ("W110101", "11.3"), ("E050112", "11.3"), ("I0", "11.2")]
)
def test_a_duis_5_4_code_or_variant_is_quoted_whole(lab: Lab, code: str, srv: str) -> None:
    problem = _mismatch(lab.classified(1003, code=code, srv=srv))
    assert (code in problem) if code != "I0" else (repr(srv) in problem), problem
    assert "characters)" not in problem


def _private_key(path: Path) -> object:
    raw = path.read_bytes()
    try:
        return load_der_private_key(raw, None)
    except ValueError:
        return load_pem_private_key(raw, None)


@pytest.mark.parametrize("scenario", ["IMMEDIATE", "FUTURE_DATED", "CANCELLATION"])
def test_the_real_cs06_templates_resigned_by_the_supplier_stay_evidence(shared: Path, scenario: str) -> None:
    boxed = shared / "smki" / "dccboxed"
    classifier = Classifier(
        certificates=CertificateStore.from_directory(boxed),
        signing_policy=SigningPolicy(),
        gbcs_verifier=Verifier(load_keystore(shared / "gbcs" / "rtds-keystore")),
    )
    template = shared / "duis" / "templates" / f"CS06_11.3_{scenario}_SUCCESS_REQUEST_DUIS.XML"
    root = etree.fromstring(template.read_bytes())
    for placeholder in root.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
        root.remove(placeholder)
    key = _private_key(boxed / "xml-sign-90B3D51F30010000-ds.key")
    cert = x509.load_pem_x509_certificate((boxed / "xml-sign-90B3D51F30010000-ds.pem").read_bytes())
    body = sign(etree.tostring(root), key, cert)  # type: ignore[arg-type]
    # inside the RTDS supplier DS certificate's validity (2015-10-30..2025-10-29), which the CV4 role check reads
    c = classifier.classify("observe", body, datetime(2020, 1, 1, 12, tzinfo=UTC))
    assert c.problems == (), c.problems
    assert len(c.events) == 1
    ev = c.events[0]
    assert isinstance(ev, ActivationRequested) and ev.verified
    assert ev.is_cancellation == (scenario == "CANCELLATION")
