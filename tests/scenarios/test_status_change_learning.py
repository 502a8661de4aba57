"""What a device status change alert (DCC alert ``DeviceStatusChangeEvent``) may teach the inventory.

The inventory is ESME <-> Comms Hub <-> MPAN: every device it links to a Comms Hub is an ESME the
AD1 join may pick and, under scope ``all`` (or ``manufacturer``), a suppression target. A
``MeterDecommissioningOrWithdrawal`` names its meter (an ESME or a gas meter), the meter's MPxNs and
its associated devices (the Comms Hub among them), but not the meter's type: only the MPxN tells. An
MPAN (13 digits, and a secondary import or export MPAN only an ESME has) is an electricity meter; an
MPRN (at most 10 digits) a gas meter, which must not be learned as the ESME of its Comms Hub.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.duis.encode import encode
from gateway.duis.model import (
    AssociatedDevice,
    DCCAlertMessage,
    DeviceStatusChangeEvent,
    MeterMPxNs,
    Response,
    ResponseHeader,
)
from gateway.duis.values import MessageId
from gateway.duis.xmldsig import sign
from gateway.engine import InventoryObserved
from gateway.gbcs_keys import load_keystore
from gateway.pipeline import Classifier
from gateway.smki import CertificateStore, SigningPolicy
from gateway.testkit.messages import DCC_EUI, SUPPLIER_EUI
from gateway.testkit.scenario import Scenario, World
from gbcs.crypto import Verifier
from tests.scenarios.support import check_expected, replay

GSME = 0x00DD_0000_0000_0001  # the gas meter of premises 1 (its GPF: GPF)
GPF = 0x00DE_0000_0000_0001
CH1 = 0x00DC_0000_0000_0001  # premises 1's Comms Hub (World.meter(1))
ESME2 = 0x00DB_0000_0000_0002  # an ESME the inventory does not know yet
MPRN = "1234567890"


@pytest.fixture
def world() -> World:
    return World.generated()


def _decommissioned(
    world: World, meter: int, mpxns: MeterMPxNs, associated: list[tuple[int, str]], at: datetime, counter: int
) -> bytes:
    """A signed DCC alert: ``meter`` decommissioned or withdrawn (the N-code is not tied to the kind)."""
    alert = DeviceStatusChangeEvent(
        meter, "MeterDecommissioningOrWithdrawal", mpxns, None, tuple(AssociatedDevice(e, t) for e, t in associated)
    )
    doc = Response(ResponseHeader("I0", at, None, MessageId(DCC_EUI, SUPPLIER_EUI, counter)), DCCAlertMessage("N16", alert))
    return sign(encode(doc), world.dsp.key, world.dsp.certificate)


def _gas_meter_activation_then_ad1(world: World, name: str) -> Scenario:
    """Premises 1: ESME on CH; its gas meter is withdrawn (the alert names the CH), then a supplier
    activates new firmware on the gas meter, and the Comms Hub reports an outage a few minutes later."""
    _esme, ch, mpan = world.meter(1)
    world.pki.device(GSME)
    f = world.factory
    s = Scenario(name, world)
    s.observe("08:00", _decommissioned(world, GSME, MeterMPxNs(MPRN), [(ch, "CHF"), (GPF, "GPF")], s.t("08:00"), 1))
    s.observe("09:00:00", f.activate_request(GSME, 1000))
    s.observe("09:00:40", f.activate_response(GSME, 1000, s.t("09:00:40")))
    # a gas meter's reboot does not take the Comms Hub's power away: this is a genuine outage
    s.inline("09:07", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1), "forward", "no-activation", held=False)
    return s


def test_a_withdrawn_gas_meter_is_not_learned_as_an_esme_so_its_activation_never_suppresses_under_scope_all(
    world: World, tmp_path: Path
) -> None:
    s = _gas_meter_activation_then_ad1(world, "gas-scope-all")
    cfg = tmp_path / "all.toml"
    cfg.write_text('[engine]\nscope = "all"\n')
    got = replay(s, tmp_path, "--config", str(cfg))
    check_expected(s, got)
    assert "00-DD-00-00-00-00-00-01" not in json.dumps(got[s.steps[-1].message_id])  # nothing of the gas meter


def test_a_withdrawn_gas_meter_never_suppresses_under_scope_manufacturer(world: World, tmp_path: Path) -> None:
    s = _gas_meter_activation_then_ad1(world, "gas-scope-manufacturer")
    cfg = tmp_path / "manufacturer.toml"
    cfg.write_text('[engine]\nscope = "manufacturer"\nmanufacturers = ["Landis+Gyr"]\n')
    check_expected(s, replay(s, tmp_path, "--config", str(cfg)))


@pytest.fixture(scope="module")
def classified_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Classifier]:
    world = World.generated()
    world.meter(1)
    refs = world.write_reference(tmp_path_factory.mktemp("status-change"))
    classifier = Classifier(
        certificates=CertificateStore.from_path(refs["certs"]),
        signing_policy=SigningPolicy(),
        gbcs_verifier=Verifier(load_keystore(refs["gbcs_keys"])),
    )
    return world, classifier


def _learned_from(world: World, classifier: Classifier, meter: int, mpxns: MeterMPxNs) -> list[InventoryObserved]:
    at = datetime(2026, 3, 2, 8, tzinfo=UTC)
    body = _decommissioned(world, meter, mpxns, [(CH1, "CHF"), (GPF, "GPF")], at, 7)
    c = classifier.classify("observation", body, at)
    assert c.rejection is None and c.xml is not None and c.xml.valid and not c.problems, c
    return [e for e in c.events if isinstance(e, InventoryObserved)]


def test_a_status_change_of_a_meter_with_an_mpan_is_learned_as_the_esme_of_its_comms_hub(
    classified_world: tuple[World, Classifier],
) -> None:
    [link] = _learned_from(*classified_world, ESME2, MeterMPxNs("1900000000002", None, "1900000000099"))
    assert (link.esme, link.ch, link.mpan, link.verified) == (ESME2, CH1, "1900000000002", True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mpxn=st.text("0123456789", min_size=1, max_size=13) | st.from_regex(r"\A[0-9A-Z ]{1,13}\Z"))
def test_a_status_change_teaches_a_link_only_when_its_import_mpxn_is_an_mpan(
    classified_world: tuple[World, Classifier], mpxn: str
) -> None:
    # an MPRN (gas, at most 10 digits) or anything else that is not a 13-digit MPAN never makes an ESME
    learned = _learned_from(*classified_world, GSME, MeterMPxNs(mpxn))
    is_mpan = len(mpxn) == 13 and mpxn.isdigit()
    assert [(e.esme, e.ch, e.mpan) for e in learned] == ([(GSME, CH1, mpxn)] if is_mpan else [])
