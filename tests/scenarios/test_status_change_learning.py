"""What a device status change alert (DCC alert ``DeviceStatusChangeEvent``) does to the inventory.

The inventory is ESME <-> Comms Hub <-> MPAN: every device it links to a Comms Hub is an ESME the
AD1 join may pick and, under scope ``all`` (or ``manufacturer``), a suppression target. A
``MeterDecommissioningOrWithdrawal`` names its meter (an ESME or a gas meter), the meter's MPxNs and
its associated devices (the Comms Hub among them): it says the meter's links are ending, so it teaches
no link (it used to teach "this meter is on this Comms Hub": a gas meter became its hub's ESME, and a
late alert moved an ESME back to its old hub). It ends the meter's Comms Hub and MPxN links as of its
own time (``InventoryUnlinked``), ordered against the other evidence by event time. A ``MeterIdentity``
teaches no link but ends an MPxN link it contradicts, and a ``CHFDecommissioning`` or
``DeviceRemovedFromInventory`` ends the links of the device it names (why: the notes above their tests at
the end).
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
from gateway.engine import DeviceStatusChange, InventoryObserved, InventoryUnlinked
from gateway.gbcs_keys import load_keystore
from gateway.pipeline import Classifier
from gateway.smki import CertificateStore, SigningPolicy
from gateway.testkit.messages import DCC_EUI, SUPPLIER_EUI
from gateway.testkit.scenario import Scenario, World
from gbcs.crypto import Verifier
from tests.scenarios.support import check_expected, replay

GSME = 0x00DD_0000_0000_0001  # the gas meter of premises 1 (its GPF: GPF)
GPF = 0x00DE_0000_0000_0001
ESME1 = 0x00DB_0000_0000_0001  # premises 1's ESME (World.meter(1)), known to the inventory
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


def _classified(world: World, classifier: Classifier, meter: int, mpxns: MeterMPxNs) -> list[object]:
    at = datetime(2026, 3, 2, 8, tzinfo=UTC)
    body = _decommissioned(world, meter, mpxns, [(CH1, "CHF"), (GPF, "GPF")], at, 7)
    c = classifier.classify("observation", body, at)
    assert c.rejection is None and c.xml is not None and c.xml.valid and not c.problems, c
    return list(c.events)


def test_a_decommissioning_or_withdrawal_teaches_no_link_it_ends_the_meters_links_as_of_its_own_time(
    classified_world: tuple[World, Classifier],
) -> None:
    events = _classified(*classified_world, ESME2, MeterMPxNs("1900000000022", None, "1900000000991"))
    assert not [e for e in events if isinstance(e, InventoryObserved)]
    [end] = [e for e in events if isinstance(e, InventoryUnlinked)]
    assert (end.esme, end.ch, end.mpan, end.change, end.verified) == (
        ESME2, CH1, "1900000000022", "MeterDecommissioningOrWithdrawal", True
    )  # fmt: skip
    assert end.time == datetime(2026, 3, 2, 8, tzinfo=UTC)  # the alert's ResponseDateTime, not its arrival


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mpxn=st.text("0123456789", min_size=1, max_size=13) | st.from_regex(r"\A[0-9A-Z ]{1,13}\Z"))
def test_a_decommissioning_or_withdrawal_never_teaches_a_link_whatever_its_mpxn(
    classified_world: tuple[World, Classifier], mpxn: str
) -> None:
    # an MPAN, an MPRN (gas) or anything else: the meter's links end, none is learned
    events = _classified(*classified_world, GSME, MeterMPxNs(mpxn))
    assert not [e for e in events if isinstance(e, InventoryObserved)]
    assert [(e.esme, e.ch) for e in events if isinstance(e, InventoryUnlinked)] == [(GSME, CH1)]


def _withdrawn_then(world: World, name: str, *, late_8_2: bool) -> Scenario:
    """Premises 1's ESME (in scope, on its Comms Hub) is withdrawn at 10:00 (the alert names the hub). Either
    an 8.2 read of 09:00, still showing the old link, is re-delivered after it, or nothing else comes; then
    the ESME's firmware activation is reported and the hub an outage a few minutes later."""
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario(name, world)
    s.observe("10:00", _decommissioned(world, esme, MeterMPxNs(mpan), [(ch, "CHF")], s.t("10:00"), 1))
    if late_8_2:
        s.observe("10:30", f.inventory_response(s.t("09:00"), 77, [(esme, "ESME", mpan, "Landis+Gyr", "E470"),
                                                                   (ch, "CHF", None, "Toshiba", "CHF1")]))  # fmt: skip
    s.observe("11:00:00", f.activate_request(esme, 1000))
    s.observe("11:00:40", f.activate_response(esme, 1000, s.t("11:00:40")))
    # the hub's outage after the removal is no longer attributed to the withdrawn meter's activation
    s.inline("11:07", f.ad1(ch, mpan, s.t("11:03:30"), s.t("11:07"), 1), "forward", "ch-unknown", held=False)
    return s


@pytest.mark.parametrize("late_8_2", [False, True], ids=["alone", "older-8.2-after-it"])
def test_a_withdrawn_meters_links_end_so_its_hubs_later_ad1_is_not_attributed_to_its_activation(
    world: World, tmp_path: Path, late_8_2: bool
) -> None:
    s = _withdrawn_then(world, f"withdrawn-{late_8_2}", late_8_2=late_8_2)
    check_expected(s, replay(s, tmp_path))


def test_a_withdrawal_delivered_late_does_not_move_an_esme_back_to_its_old_hub(world: World, tmp_path: Path) -> None:
    # 10:00: an 8.2 read shows the ESME on a new hub and MPAN; the withdrawal of 09:00 (naming the old hub)
    # arrives at 10:30. It used to teach "on the old hub" and move the ESME back; now it is older evidence
    esme, ch, mpan = world.meter(1)
    new_ch, new_mpan = 0x00DC_0000_0000_0F01, "1900000009016"
    f = world.factory
    s = Scenario("late-withdrawal", world)
    s.observe("10:00", f.inventory_response(s.t("10:00"), 78, [(esme, "ESME", new_mpan, "Landis+Gyr", "E470"),
                                                               (new_ch, "CHF", None, "Toshiba", "CHF1")]))  # fmt: skip
    s.observe("10:30", _decommissioned(world, esme, MeterMPxNs(mpan), [(ch, "CHF")], s.t("09:00"), 1))
    s.observe("11:00:40", f.activate_response(esme, 1000, s.t("11:00:40")))
    s.inline("11:07", f.ad1(new_ch, new_mpan, s.t("11:03:30"), s.t("11:07"), 1), "suppress", "activation-window")
    check_expected(s, replay(s, tmp_path))


# ---- MeterIdentity: teaches no link, ends a contradicted MPxN link ---------------------------------
#
# A ``MeterIdentity`` status change names a meter and states its MPxNs (import, secondary import, export;
# optionally its ESMEVariant), but no associated device. Could it update the MPAN of an ESME already
# linked (an MPxN corrected with SR 8.4 UpdateMPxN, say)? The reference does not say so: DOMAIN.md names
# 8.2 responses as the source of ESME/CH/MPAN links and lists status change alerts without saying which
# carry links; DUIS.md finds the DCCAlertCode <-> alert element mapping "not determinable", and the XSD
# gives MeterIdentity no meaning beyond its fields: not the event behind it (commissioning, a correction,
# a re-statement) nor the time from which the MPxN holds. A learned MPAN widens the AD1 join (AD1s
# carrying it would join the ESME and its activations could suppress them), the unsafe direction; without
# documented meaning it is not evidence, so none is learned. What the fields do say, signed by the DSP,
# is which MPxNs the meter has as of the alert: an MPxN link to none of them (crossed MPANs, corrected) is
# contradicted, and ending it can only make suppression rarer, so that link ends as of the alert's time.


def _identity(world: World, meter: int, mpxns: MeterMPxNs, variant: str | None, at: datetime, counter: int) -> bytes:
    alert = DeviceStatusChangeEvent(meter, "MeterIdentity", mpxns, variant)
    doc = Response(ResponseHeader("I0", at, None, MessageId(DCC_EUI, SUPPLIER_EUI, counter)), DCCAlertMessage("N17", alert))
    return sign(encode(doc), world.dsp.key, world.dsp.certificate)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mpxn=st.text("0123456789", min_size=1, max_size=13),
    variant=st.sampled_from((None, "A", "B", "C", "ADE")),
)
def test_a_meter_identity_status_change_teaches_no_link_it_states_the_mpxns_a_link_may_not_contradict(
    classified_world: tuple[World, Classifier], mpxn: str, variant: str | None
) -> None:
    world, classifier = classified_world
    at = datetime(2026, 3, 2, 8, tzinfo=UTC)
    mpxns = MeterMPxNs(mpxn, "1900000000031", "1900000000040")
    c = classifier.classify("observation", _identity(world, ESME1, mpxns, variant, at, 9), at)
    assert c.rejection is None and c.xml is not None and c.xml.valid and not c.problems, c
    assert not [e for e in c.events if isinstance(e, InventoryObserved)]
    [end] = [e for e in c.events if isinstance(e, InventoryUnlinked)]
    assert (end.esme, end.change, end.mpxns, end.time, end.verified) == (
        ESME1, "MeterIdentity", (mpxn, "1900000000031", "1900000000040"), at, True
    )  # fmt: skip
    assert [e.change for e in c.events if isinstance(e, DeviceStatusChange)] == ["MeterIdentity"]


def test_a_meter_identity_stating_another_mpan_ends_the_old_mpan_link_and_does_not_learn_the_new(
    world: World, tmp_path: Path
) -> None:
    esme, ch, mpan = world.meter(1)
    stated = "1900000007774"
    f = world.factory
    s = Scenario("meter-identity", world)
    s.observe("10:00", _identity(world, esme, MeterMPxNs(stated), "A", s.t("10:00"), 1))
    s.observe("11:00:40", f.activate_response(esme, 1000, s.t("11:00:40")))
    # an AD1 of another hub carrying the stated MPAN does not join the ESME: that MPAN was not learned
    s.inline("11:07", f.ad1(0x00DC_0000_0000_0F01, stated, s.t("11:03:30"), s.t("11:07"), 1), "forward", "ch-unknown")
    # nor one carrying the old MPAN: the identity contradicted it (it used to join by it and be suppressed)
    old_mpan_elsewhere = f.ad1(0x00DC_0000_0000_0F02, mpan, s.t("11:03:35"), s.t("11:07:30"), 3)
    s.inline("11:07:30", old_mpan_elsewhere, "forward", "ch-unknown")
    # its own hub still does
    s.inline("11:08", f.ad1(ch, mpan, s.t("11:03:40"), s.t("11:08"), 2), "suppress", "activation-window")
    check_expected(s, replay(s, tmp_path))


def test_a_meter_identity_stating_the_known_mpan_keeps_the_link(world: World, tmp_path: Path) -> None:
    esme, _ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("meter-identity-same", world)
    s.observe("10:00", _identity(world, esme, MeterMPxNs("1900000007774", mpan), "B", s.t("10:00"), 1))
    s.observe("11:00:40", f.activate_response(esme, 1000, s.t("11:00:40")))
    by_mpan = f.ad1(0x00DC_0000_0000_0F02, mpan, s.t("11:03:35"), s.t("11:07"), 3)  # another hub, its MPAN
    s.inline("11:07", by_mpan, "suppress", "activation-window")
    check_expected(s, replay(s, tmp_path))


# ---- CHFDecommissioning / DeviceRemovedFromInventory: end links ----------------------------------
#
# Both bodies are empty (XSD: ``<xs:complexType name="CHFDecommissioning"/>``): the device is the event's
# ``DeviceID``. ``CHFDecommissioning`` can only name a Comms Hub (its name), so the links of the ESMEs
# behind it end. ``DeviceRemovedFromInventory`` names a device of any type that left the Smart Metering
# Inventory: no link to it or from it holds after that, so a Comms Hub's links to its ESMEs end, and a
# meter's Comms Hub and MPxN links. Neither teaches a link.


def _status(
    world: World, device: int, change: str, at: datetime, counter: int, *, signer: str = "dsp"
) -> bytes:
    alert = DeviceStatusChangeEvent(device, change)
    header = ResponseHeader("I0", at, None, MessageId(DCC_EUI, SUPPLIER_EUI, counter))
    doc = Response(header, DCCAlertMessage("N18", alert))
    key = world.dsp if signer == "dsp" else world.supplier
    return sign(encode(doc), key.key, key.certificate)


@pytest.mark.parametrize("change", ["CHFDecommissioning", "DeviceRemovedFromInventory"])
def test_a_hub_decommissioning_or_removal_is_classified_as_an_end_of_the_links_of_the_device_it_names(
    classified_world: tuple[World, Classifier], change: str
) -> None:
    world, classifier = classified_world
    at = datetime(2026, 3, 2, 8, tzinfo=UTC)
    c = classifier.classify("observation", _status(world, CH1, change, at, 11), at)
    assert c.rejection is None and c.xml is not None and c.xml.valid and not c.problems, c
    assert not [e for e in c.events if isinstance(e, InventoryObserved)]
    [end] = [e for e in c.events if isinstance(e, InventoryUnlinked)]
    assert (end.esme, end.ch, end.mpan, end.mpxns, end.change, end.time, end.verified) == (
        CH1, None, None, (), change, at, True
    )  # fmt: skip


def test_a_status_change_signed_by_another_role_than_the_dsp_ends_nothing(
    classified_world: tuple[World, Classifier],
) -> None:
    world, classifier = classified_world
    at = datetime(2026, 3, 2, 8, tzinfo=UTC)
    body = _status(world, CH1, "CHFDecommissioning", at, 12, signer="supplier")
    c = classifier.classify("observation", body, at)
    [end] = [e for e in c.events if isinstance(e, InventoryUnlinked)]
    assert not end.verified and end.verification.startswith("xml-signature-")


def _hub_then_ad1(world: World, name: str, change: str, *, signer: str = "dsp") -> Scenario:
    """Premises 1's ESME (in scope) is activated; at 10:00 its Comms Hub is decommissioned (or removed
    from the inventory); at 11:07 that hub reports an outage without an MPxN the inventory holds."""
    esme, ch, _mpan = world.meter(1)
    f = world.factory
    s = Scenario(name, world)
    s.observe("10:00", _status(world, ch, change, s.t("10:00"), 1, signer=signer))
    s.observe("11:00:40", f.activate_response(esme, 1000, s.t("11:00:40")))
    return s


@pytest.mark.parametrize("change", ["CHFDecommissioning", "DeviceRemovedFromInventory"])
def test_after_its_hub_is_decommissioned_or_removed_the_hubs_ad1_is_not_attributed_to_the_esme(
    world: World, tmp_path: Path, change: str
) -> None:
    s = _hub_then_ad1(world, f"hub-{change}", change)
    ad1 = world.factory.ad1(CH1, "1900000005554", s.t("11:03:30"), s.t("11:07"), 1)
    s.inline("11:07", ad1, "forward", "ch-unknown")
    check_expected(s, replay(s, tmp_path))


def test_a_hub_decommissioning_signed_by_a_supplier_unlinks_nothing(world: World, tmp_path: Path) -> None:
    s = _hub_then_ad1(world, "hub-wrong-signer", "CHFDecommissioning", signer="supplier")
    s.inline("11:07", world.factory.ad1(CH1, "1900000005554", s.t("11:03:30"), s.t("11:07"), 1), "suppress",
             "activation-window")  # fmt: skip
    check_expected(s, replay(s, tmp_path))


def test_an_esme_removed_from_the_inventory_is_joined_by_neither_its_hub_nor_its_mpan(
    world: World, tmp_path: Path
) -> None:
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("esme-removed", world)
    s.observe("10:00", _status(world, esme, "DeviceRemovedFromInventory", s.t("10:00"), 1))
    s.observe("11:00:40", f.activate_response(esme, 1000, s.t("11:00:40")))
    s.inline("11:07", f.ad1(ch, mpan, s.t("11:03:30"), s.t("11:07"), 1), "forward", "ch-unknown")
    check_expected(s, replay(s, tmp_path))
