"""The SMKI store's material (what a reload reads once and every process builds from) and the rule that
decides whether a reloaded store may replace the one in force (:func:`gateway.smki.replacement_problem`)."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.smki import (
    DCC_EUI,
    ROLE_DSP_XML_SIGN,
    CertificateStore,
    SmkiError,
    SmkiMaterial,
    replacement_problem,
)
from gateway.testkit.pki import TestPKI, derive_key

WHEN = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


@pytest.fixture
def folder(tmp_path: Path) -> tuple[TestPKI, Path]:
    pki = TestPKI(seed="material")
    pki.org_ca()
    old = pki.organisation("dsp-old", DCC_EUI, ROLE_DSP_XML_SIGN)
    pki.organisation("dsp-new", DCC_EUI, ROLE_DSP_XML_SIGN)
    certs = pki.write_smki_dir(tmp_path / "certs", with_keys=False)
    (certs / "org.crl.pem").write_bytes(pki.crl([(old, WHEN)]).public_bytes(serialization.Encoding.PEM))
    return pki, certs


def test_the_material_builds_the_store_from_path_builds_and_travels_by_pickle(
    folder: tuple[TestPKI, Path],
) -> None:
    _pki, certs = folder
    material = SmkiMaterial.read(certs)
    again = pickle.loads(pickle.dumps(material))
    assert again.digest == material.digest == SmkiMaterial.read(certs).digest
    built, direct = again.build(), CertificateStore.from_path(certs)
    assert sorted(c.serial for c in built) == sorted(c.serial for c in direct) and len(built) == 3
    assert [c.name for c in built.crls] == [c.name for c in direct.crls] == ["org.crl.pem"]
    (certs / "org.crl.pem").write_bytes(b"changed")
    assert SmkiMaterial.read(certs).digest != material.digest


def test_an_unreadable_certificate_folder_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(SmkiError):
        SmkiMaterial.read(tmp_path / "missing")


def test_a_refused_list_that_would_replace_the_good_one_is_refused(folder: tuple[TestPKI, Path]) -> None:
    pki, certs = folder
    current = SmkiMaterial.read(certs).build()
    forged = pki.crl([], signing_key=derive_key("forger"), authority_key_id=False)
    (certs / "org.crl.pem").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    problem = replacement_problem(current, SmkiMaterial.read(certs).build())
    assert (
        problem is not None
        and "org.crl.pem (crl_signature_invalid)" in problem
        and "revocation lists" in problem
    )
    (certs / "org.crl.pem").write_bytes(b"not a list")
    assert replacement_problem(current, SmkiMaterial.read(certs).build()) is not None


def test_a_bad_file_that_takes_nothing_away_and_a_list_removed_on_purpose_do_not_block_a_reload(
    folder: tuple[TestPKI, Path],
) -> None:
    _pki, certs = folder
    current = SmkiMaterial.read(certs).build()
    (certs / "stray.crl").write_bytes(b"not a list")  # refused, but the good list is still there
    candidate = SmkiMaterial.read(certs).build()
    assert candidate.rejected and replacement_problem(current, candidate) is None
    (certs / "stray.crl").unlink()
    (certs / "org.crl.pem").unlink()  # no refusal: the operator's decision
    assert replacement_problem(current, SmkiMaterial.read(certs).build()) is None


def test_a_store_without_any_certificate_never_replaces_the_one_in_force(
    folder: tuple[TestPKI, Path],
) -> None:
    _pki, certs = folder
    current = SmkiMaterial.read(certs).build()
    for f in certs.iterdir():
        f.unlink()
    assert (
        replacement_problem(current, SmkiMaterial.read(certs).build())
        == "no usable SMKI certificate in the new material"
    )
