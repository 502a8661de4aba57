"""Fixtures of the quarantined-copy release tests (``test_release_unverified_store_17.py``,
``test_store_review_17.py``): the security lab's signed world and its classifier, with and without the DSP's
XML-signing certificate (before and after an SMKI reload). Module-scoped: each module builds its own lab."""

from __future__ import annotations

import pytest

from gateway.pipeline import Classifier
from gateway.smki import CertificateStore
from tests.security.lab import Lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab.build(tmp_path_factory.mktemp("state-lab"))


@pytest.fixture(scope="module")
def classifier(lab: Lab) -> Classifier:
    return lab.classifier()


@pytest.fixture(scope="module")
def without_the_dsp(lab: Lab) -> Classifier:
    """The lab's classifier before the SMKI reload that added the DSP's XML-signing certificate."""
    full = CertificateStore.from_path(lab.refs["certs"])
    dsp = lab.world.dsp.certificate.serial_number
    return lab.classifier(CertificateStore(c for c in full if c.certificate.serial_number != dsp))
