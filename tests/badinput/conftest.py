"""Fixtures of the bad-input suite and the figure table it prints at the end of the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.gbcs_keys import load_keystore
from gateway.pipeline import Classifier
from gateway.smki import CertificateStore, SigningPolicy
from gateway.testkit.scenario import Scenario, World
from gbcs.crypto import Verifier
from tests.badinput import tally


@pytest.fixture(scope="session")
def world() -> World:
    w = World.generated()
    for n in range(1, 4):
        w.meter(n)
    return w


@pytest.fixture(scope="session")
def world_refs(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return world.write_reference(tmp_path_factory.mktemp("badinput-world"))


@pytest.fixture(scope="session")
def classifier(world_refs: dict[str, Path]) -> Classifier:
    keystore = load_keystore(world_refs["gbcs_keys"])
    return Classifier(
        certificates=CertificateStore.from_path(world_refs["certs"]),
        signing_policy=SigningPolicy(),
        gbcs_verifier=Verifier(keystore),
    )


@pytest.fixture(scope="session")
def testkit_messages(world: World) -> list[bytes]:
    """Signed DUIS messages of every kind the decision depends on (valid, for mutation)."""
    f = world.factory
    s = Scenario("seeds", world)
    e1, c1, m1 = 0x00DB_0000_0000_0001, 0x00DC_0000_0000_0001, "1900000000013"
    return [
        f.activate_request(e1, 1000),
        f.activate_request(e1, 1001, execution=s.t("11:00"), signed_pre_command=True),
        f.activate_response(e1, 1000, s.t("09:00:40")),
        f.future_dated_outcome(e1, 1001, s.t("11:00"), s.t("11:01")),
        f.ad1(c1, m1, s.t("09:03:30"), s.t("09:07"), 1),
        f.restoration(e1, s.t("09:03:30"), s.t("09:06"), s.t("09:09")),
        f.inventory_response(
            s.t("08:30"), 77, [(e1, "ESME", m1, "Landis+Gyr", "E470"), (c1, "CHF", None, "T", "C")]
        ),
    ]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not tally.TRIED and not tally.FIGURES:
        return
    terminalreporter.section("bad-input suite: inputs, crashes, named rejections")
    for line in tally.table():
        terminalreporter.write_line(line)
