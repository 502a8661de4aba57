"""MP102B decisions end to end: signed DUIS messages built by the project's test kit, replayed through
``duisgw replay`` (classifier + XML/GBCS signature checks + engine + SQLite store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.duis.encode import encode
from gateway.duis.model import Response, ResponseHeader, ResponseMessage
from gateway.duis.values import MessageId
from gateway.testkit.messages import SUPPLIER_EUI, MessageFactory, Signer
from gateway.testkit.pki import ROLE_DSP_XML_SIGN, TestPKI
from gateway.testkit.scenario import Scenario, World
from gbcs.crypto import sign_frame
from gbcs.frame import build_general_signing
from tests.scenarios.support import check_expected, replay, replay_lines


@pytest.fixture
def world() -> World:
    return World.generated()


def test_immediate_activation_then_ad1_inside_the_window_is_suppressed(world: World, tmp_path: Path) -> None:
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("immediate", world)
    s.observe("09:00:00", f.activate_request(esme, 1000))
    s.observe("09:00:40", f.activate_response(esme, 1000, s.t("09:00:40")))
    s.inline("09:07:00", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07:00"), 1), "suppress", "activation-window",
             held=False)  # fmt: skip
    got = replay(s, tmp_path)
    check_expected(s, got)
    line = got[s.steps[-1].message_id]
    assert line["device"] == {"esme": "00-DB-00-00-00-00-00-01", "ch": "00-DC-00-00-00-00-00-01", "mpan": mpan}
    assert {e["message_id"] for e in line["evidence"]} >= {s.steps[1].message_id}


def test_ad1_just_outside_either_edge_of_the_window_is_forwarded(world: World, tmp_path: Path) -> None:
    f = world.factory
    s = Scenario("edges", world)
    # with an observed request the window opens when the request was seen ...
    esme, ch, mpan = world.meter(1)
    s.observe("09:00:00", f.activate_request(esme, 1000))
    s.observe("09:00:40", f.activate_response(esme, 1000, s.t("09:00:40")))
    s.inline("09:05", f.ad1(ch, mpan, s.t("08:59:59"), s.t("09:05"), 1), "forward")  # before the request
    s.inline("09:06", f.ad1(ch, mpan, s.t("09:00:00"), s.t("09:06"), 2), "suppress")  # at the opening edge
    s.inline("09:40", f.ad1(ch, mpan, s.t("09:30:40"), s.t("09:40"), 3), "suppress")  # activation + 30 min
    s.inline("09:41", f.ad1(ch, mpan, s.t("09:30:41"), s.t("09:41"), 4), "forward", "outside-window")
    # ... and without one, at activation - 15 min
    esme2, ch2, mpan2 = world.meter(2)
    s.observe("10:00:40", f.activate_response(esme2, 2000, s.t("10:00:40")))
    s.inline("10:05", f.ad1(ch2, mpan2, s.t("09:45:40"), s.t("10:05"), 5), "suppress")
    s.inline("10:06", f.ad1(ch2, mpan2, s.t("09:45:39"), s.t("10:06"), 6), "forward", "outside-window")
    check_expected(s, replay(s, tmp_path))


def test_comms_hub_of_an_esme_not_in_the_guid_list_is_forwarded(world: World, tmp_path: Path) -> None:
    esme, ch, mpan = world.meter(3, in_scope=False)
    unknown_esme, unknown_ch, unknown_mpan = world.meter(4, known=False)
    f = world.factory
    s = Scenario("scope", world)
    s.observe("09:00:40", f.activate_response(esme, 1000, s.t("09:00:40")))
    s.inline("09:07", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1), "forward", "out-of-scope")
    s.observe("09:00:41", f.activate_response(unknown_esme, 1001, s.t("09:00:41")))
    s.inline("09:08", f.ad1(unknown_ch, unknown_mpan, s.t("09:03:30"), s.t("09:08"), 2), "forward", "ch-unknown")
    check_expected(s, replay(s, tmp_path))


def test_future_dated_activation_confirmed_by_8f66_after_the_ad1_is_held_then_suppressed(
    world: World, tmp_path: Path
) -> None:
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("future-dated", world)
    s.observe("08:00", f.activate_request(esme, 1001, execution=s.t("11:00")))
    s.observe("08:00:30", f.activate_response(esme, 1001, s.t("08:00:30"), result=None))
    s.inline("11:04", f.ad1(ch, mpan, s.t("11:00:50"), s.t("11:04"), 1), "suppress", "fd-confirmed", held=True)
    s.observe("11:06", f.future_dated_outcome(esme, 1001, s.t("11:00"), s.t("11:06")))
    check_expected(s, replay(s, tmp_path))


def test_future_dated_outcome_arriving_before_the_ad1_suppresses_without_hold(world: World, tmp_path: Path) -> None:
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("fd-before", world)
    s.observe("08:00", f.activate_request(esme, 1001, execution=s.t("11:00")))
    s.observe("11:01", f.future_dated_outcome(esme, 1001, s.t("11:00"), s.t("11:01")))
    s.inline("11:04", f.ad1(ch, mpan, s.t("11:00:50"), s.t("11:04"), 1), "suppress", "fd-confirmed", held=False)
    check_expected(s, replay(s, tmp_path))


def _fd_failure(world: World) -> Scenario:
    esme, _ch, _mpan = world.meter(1)
    f = world.factory
    s = Scenario("8f67", world)
    s.observe("08:00", f.activate_request(esme, 1004, execution=s.t("11:00")))
    s.observe("11:01", f.future_dated_outcome(esme, 1004, s.t("11:00"), s.t("11:01"), success=False, result=2))
    return s


def test_8f67_failed_future_dated_activation_is_forwarded_by_default(world: World, tmp_path: Path) -> None:
    s = _fd_failure(world)
    _esme, ch, mpan = world.meter(1)
    s.inline("11:04", world.factory.ad1(ch, mpan, s.t("11:00:50"), s.t("11:04"), 1), "forward", "fd-failed")
    check_expected(s, replay(s, tmp_path))


def test_8f67_counts_as_activation_when_policy_says_a_failed_activation_may_reboot(
    world: World, tmp_path: Path
) -> None:
    s = _fd_failure(world)
    _esme, ch, mpan = world.meter(1)
    s.inline("11:04", world.factory.ad1(ch, mpan, s.t("11:00:50"), s.t("11:04"), 1), "suppress", "fd-failed-counted")
    cfg = tmp_path / "policy.toml"
    cfg.write_text('[engine]\nfd_failure_policy = "suppress"\n')
    check_expected(s, replay(s, tmp_path, "--config", str(cfg)))


def test_cancelled_future_dated_activation_means_the_ad1_is_forwarded(world: World, tmp_path: Path) -> None:
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("cancel", world)
    s.observe("08:00", f.activate_request(esme, 1001, execution=s.t("11:00")))
    s.observe("08:00:30", f.activate_response(esme, 1001, s.t("08:00:30"), result=None))
    s.observe("09:00", f.activate_request(esme, 1002, cancellation=True))
    s.observe("09:00:30", f.activate_response(esme, 1002, s.t("09:00:30"), result=None))
    s.inline("11:04", f.ad1(ch, mpan, s.t("11:00:50"), s.t("11:04"), 1), "forward", "cancelled", held=False)
    check_expected(s, replay(s, tmp_path))


def test_ad1_delivered_two_days_late_is_decided_by_its_own_start_time(world: World, tmp_path: Path) -> None:
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("late", world)
    s.observe("09:00:00", f.activate_request(esme, 1000))
    s.observe("09:00:40", f.activate_response(esme, 1000, s.t("09:00:40")))
    s.inline(s.t("08:50", days=2), f.ad1(ch, mpan, s.t("09:03:30"), s.t("08:50", days=2), 1), "suppress",
             "activation-window")  # fmt: skip
    s.inline(s.t("08:51", days=2), f.ad1(ch, mpan, s.t("08:40", days=2), s.t("08:51", days=2), 2), "forward")
    check_expected(s, replay(s, tmp_path))


def test_duplicate_ad1_gets_one_decision(world: World, tmp_path: Path) -> None:
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("duplicate", world)
    s.observe("09:00:40", f.activate_response(esme, 1000, s.t("09:00:40")))
    ad1 = f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1)
    s.inline("09:07", ad1, "suppress")
    s.inline("09:08", ad1, "suppress")
    lines = replay_lines(s, tmp_path)
    assert [(x["decision"], x.get("duplicate", False)) for x in lines] == [("suppress", False), ("suppress", True)]
    assert lines[0]["message_id"] == lines[1]["message_id"]
    # the duplicate's line names the DUIS kind like the original's (not the engine's event kind)
    assert [x["kind"] for x in lines] == ["DCCAlertMessage.AD1", "DCCAlertMessage.AD1"]


def test_an_ad1_delivered_again_while_held_gets_its_own_duplicate_line_of_its_duis_kind_when_released(
    world: World, tmp_path: Path
) -> None:
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("held-dup", world)
    s.observe("08:00", f.activate_request(esme, 1001, execution=s.t("11:00")))
    s.observe("08:00:30", f.activate_response(esme, 1001, s.t("08:00:30"), result=None))
    ad1 = f.ad1(ch, mpan, s.t("11:00:50"), s.t("11:04"), 1)
    s.inline("11:04", ad1, "suppress", "fd-confirmed", held=True)
    s.inline("11:05", ad1, "suppress", "fd-confirmed", held=True)  # the DCC delivers it again while held
    s.observe("11:06", f.future_dated_outcome(esme, 1001, s.t("11:00"), s.t("11:06")))
    lines = replay_lines(s, tmp_path)
    # one line per DNO-bound message: the re-delivery's own, marked a duplicate, when the original is released
    assert [(x["decision"], x["reason"], x["held"], x["kind"], x.get("duplicate", False)) for x in lines] == [
        ("suppress", "fd-confirmed", True, "DCCAlertMessage.AD1", False),
        ("suppress", "fd-confirmed", True, "DCCAlertMessage.AD1", True),
    ]


def test_restoration_paired_with_a_suppressed_ad1_follows_the_policy(world: World, tmp_path: Path) -> None:
    esme, ch, mpan = world.meter(1)
    other, _och, _ompan = world.meter(2)
    f = world.factory

    def build(name: str, decision: str) -> Scenario:
        s = Scenario(name, world)
        s.observe("09:00:40", f.activate_response(esme, 1000, s.t("09:00:40")))
        s.inline("09:07", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1), "suppress")
        s.inline("09:09", f.restoration(esme, s.t("09:03:30"), s.t("09:06"), s.t("09:09")), decision,
                 "restoration-paired")  # fmt: skip
        # a restoration with no suppressed AD1 behind it is always forwarded
        s.inline("09:10", f.restoration(other, s.t("09:01"), s.t("09:08"), s.t("09:10")), "forward")
        return s

    default = build("restore-default", "suppress")
    check_expected(default, replay(default, tmp_path))
    cfg = tmp_path / "restore.toml"
    cfg.write_text('[engine]\nrestoration_policy = "forward"\n')
    forward = build("restore-forward", "forward")
    check_expected(forward, replay(forward, tmp_path, "--config", str(cfg)))


def _unsigned_response(world: World, esme: int, counter: int, s: Scenario) -> bytes:
    """A well-formed 11.3 response with a valid device signature but no XML signature."""
    frame = build_general_signing(
        cra=2, originator_counter=counter, originator=esme, recipient=SUPPLIER_EUI, message_code=0x0012,
        content=b"\x30\x09\x02\x01\x00\x04\x04\x01\x23\xab\xce",
    )  # fmt: skip
    payload = sign_frame(frame, world.pki.issued[f"{esme:016x}-ds"].private_key)
    header = ResponseHeader("I0", s.t("09:00:40"), request_id=MessageId(SUPPLIER_EUI, esme, counter),
                            response_id=MessageId(esme, SUPPLIER_EUI, counter))  # fmt: skip
    return encode(Response(header, ResponseMessage("11.3", "11.3", payload)))


def test_forged_or_unsigned_activation_evidence_never_suppresses(world: World, tmp_path: Path) -> None:
    f = world.factory
    s = Scenario("forged", world)
    t = s.t
    # 1. no XML signature at all
    e1, c1, m1 = world.meter(1)
    s.observe("09:00:40", _unsigned_response(world, e1, 1000, s))
    s.inline("09:07", f.ad1(c1, m1, t("09:03:30"), t("09:07"), 1), "forward", "evidence-unverified")
    # 2. signed by a DSP-shaped key the certificate store does not know (a forger's own PKI)
    e2, c2, m2 = world.meter(2)
    rogue = TestPKI(seed="forger").organisation("dsp-xml-sign", 0x90B3D51F30000002, ROLE_DSP_XML_SIGN)
    s.observe("09:00:41", f.activate_response(e2, 1001, t("09:00:41"), signer=Signer(rogue.private_key,
                                                                                     rogue.certificate)))  # fmt: skip
    s.inline("09:08", f.ad1(c2, m2, t("09:03:30"), t("09:08"), 2), "forward", "evidence-unverified")
    # 3. a valid XML signature, but by the wrong role (the DNO's user XML-signing key on a DSP response)
    e3, c3, m3 = world.meter(3)
    s.observe("09:00:42", f.activate_response(e3, 1002, t("09:00:42"), signer=world.dno_xml))
    s.inline("09:09", f.ad1(c3, m3, t("09:03:30"), t("09:09"), 3), "forward", "evidence-unverified")
    # 4. DSP-signed, but the GBCS payload is signed by another device's key (device signature invalid)
    e4, c4, m4 = world.meter(4)
    e5, _c5, _m5 = world.meter(5)
    forged_keys = MessageFactory(dsp=world.dsp, supplier=world.supplier,
                                 device_key=lambda eui: world.pki.issued[f"{e5:016x}-ds"].private_key)  # fmt: skip
    s.observe("09:00:43", forged_keys.activate_response(e4, 1003, t("09:00:43")))
    s.inline("09:10", f.ad1(c4, m4, t("09:03:30"), t("09:10"), 4), "forward", "evidence-unverified")
    # 5. a valid response whose GBCS originator is another ESME than the one the RequestID names
    e6, c6, m6 = world.meter(6)
    s.observe("09:00:44", f.activate_response(e6, 1004, t("09:00:44"), gbcs_originator=e5))
    s.inline("09:11", f.ad1(c6, m6, t("09:03:30"), t("09:11"), 5), "forward")
    # 6. a forged 8F66 (device signature by the wrong key) confirms nothing
    e7, c7, m7 = world.meter(7)
    s.observe("08:00", f.activate_request(e7, 1005, execution=t("11:00")))
    s.observe("11:01", forged_keys.future_dated_outcome(e7, 1005, t("11:00"), t("11:01")))
    s.inline("11:04", f.ad1(c7, m7, t("11:00:50"), t("11:04"), 6), "forward")
    got = replay(s, tmp_path)
    check_expected(s, got)
    assert all(line["decision"] == "forward" for line in got.values())


def test_inventory_learned_from_an_8_2_response_is_used_for_a_later_ad1(world: World, tmp_path: Path) -> None:
    esme, ch, mpan = world.meter(9, known=False)
    f = world.factory
    s = Scenario("learned", world)
    s.inline("08:00", f.ad1(ch, mpan, s.t("07:55"), s.t("08:00"), 1), "forward", "ch-unknown")
    s.observe("08:30", f.inventory_response(s.t("08:30"), 77, [(esme, "ESME", mpan, "Landis+Gyr", "E470"),
                                                               (ch, "CHF", None, "Toshiba", "CHF1")]))  # fmt: skip
    s.observe("09:00:40", f.activate_response(esme, 1000, s.t("09:00:40")))
    s.inline("09:07", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 2), "suppress", "activation-window")
    check_expected(s, replay(s, tmp_path))


def test_a_late_8_2_response_older_than_the_one_that_rehomed_an_esme_does_not_move_it_back(
    world: World, tmp_path: Path
) -> None:
    # the DCC re-delivers for up to two days: the inventory read of 09:00 (ESME still on its old hub and
    # MPAN) arrives after the one of 10:00 that moved it; links are ordered by ResponseDateTime, not arrival
    esme, ch, mpan = world.meter(9)
    new_ch, new_mpan = 0x00DC_0000_0000_0F09, "1900000009994"
    f = world.factory
    s = Scenario("late-8.2", world)
    s.observe("10:00", f.inventory_response(s.t("10:00"), 78, [(esme, "ESME", new_mpan, "Landis+Gyr", "E470"),
                                                               (new_ch, "CHF", None, "Toshiba", "CHF1")]))  # fmt: skip
    s.observe("10:30", f.inventory_response(s.t("09:00"), 77, [(esme, "ESME", mpan, "Landis+Gyr", "E470"),
                                                               (ch, "CHF", None, "Toshiba", "CHF1")]))  # fmt: skip
    s.observe("11:00:40", f.activate_response(esme, 1000, s.t("11:00:40")))
    s.inline("11:07", f.ad1(new_ch, new_mpan, s.t("11:03:30"), s.t("11:07"), 2), "suppress", "activation-window")
    check_expected(s, replay(s, tmp_path))


def test_a_restoration_from_an_out_of_scope_meter_on_the_hub_waits_for_the_hubs_held_ad1_and_pairs(
    world: World, tmp_path: Path
) -> None:
    # two electricity meters behind one Comms Hub, only the first in the GUID list: the hub's AD1 waits for
    # the first meter's activation response; the second meter's restoration (same supply, same interruption)
    # waits for that AD1 and ends as it would have after it, whether it came during the hold or after it
    esme, ch, mpan = world.meter(1)
    sibling = 0x00DB_0000_0000_0011
    world.pki.device(sibling)
    world.inventory.append((sibling, ch, "1900000000110", "Other", "X1"))
    f = world.factory

    def build(name: str, restoration_at: str, result: int) -> Scenario:
        s = Scenario(name, world)
        s.observe("09:00:00", f.activate_request(esme, 1000))
        s.inline("09:07", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1),
                 "suppress" if result == 0 else "forward", held=True)  # fmt: skip
        rst = f.restoration(sibling, s.t("09:03:30"), s.t("09:06"), s.t(restoration_at))
        response = f.activate_response(esme, 1000, s.t("09:09"), result=result)
        if restoration_at < "09:09":
            s.inline(restoration_at, rst, "suppress" if result == 0 else "forward",
                     "restoration-paired" if result == 0 else "not-paired", held=True)  # fmt: skip
            s.observe("09:09", response)
        else:
            s.observe("09:09", response)
            s.inline(restoration_at, rst, "suppress" if result == 0 else "forward",
                     "restoration-paired" if result == 0 else "not-paired", held=False)  # fmt: skip
        return s

    for name, at, result in (("during", "09:08", 0), ("after", "09:10", 0), ("during-failed", "09:08", 2)):
        s = build(f"shared-hub-{name}", at, result)
        check_expected(s, replay(s, tmp_path))
