"""An MPAN whose check digit is wrong (gateway/mpan.py) is never a link the engine suppresses through.

An AD1 is joined to meters by its Comms Hub and, when the hub's ESMEs do not explain it, by its MPxN
(docs/ENGINE.md section 3). A 13-digit MPxN that fails the check digit cannot be a meter's MPAN: the
engine does not join through it (the AD1 is decided on its hub's ESMEs alone, ``ch-unknown`` when there
are none), and an 8.2 observation does not teach it (the rest of the observation is learned). A
``MeterIdentity`` stating such MPxNs may still end a link (ending one only narrows the join). The same
holds for an MPxN that is not 13 digits (an ESME's MPxN is its MPAN core; the inventory holds ESMEs only,
so a gas meter's MPRN is never judged here).
"""

from __future__ import annotations

from engine_support import CH, ESME, MemoryScope, decisions, learned, outage, request, response, run, unlinked

from gateway.engine import Action, Engine, EngineConfig, Observed, Reason
from gateway.engine.events import METER_IDENTITY
from gateway.inventory import Inventory, InventoryRow
from gateway.mpan import mpan_check_fails, mpan_core_valid

VALID = "1030006718997"  # a valid core (tests of the public mpan package)
BAD = "1030006718990"  # the same 12 digits, a wrong check digit
FOREIGN_CH = 0x00DB0000000000FF  # a hub the inventory does not know
NEW_CH = 0x00DB0000000000C1


def _world(mpan: str) -> tuple[Engine, Inventory]:
    """ESME (in scope) on CH with ``mpan``, its activation confirmed at minute 0."""
    inventory = Inventory.from_rows([InventoryRow(ESME, CH, mpan, "Landis+Gyr", "E470")])
    eng = Engine(EngineConfig(), MemoryScope([ESME]), inventory)
    run(eng, [request(0), response(0.5)])
    return eng, inventory


def test_the_fixture_mpans_are_one_valid_core_and_one_with_a_wrong_check_digit() -> None:
    assert mpan_core_valid(VALID) and mpan_check_fails(BAD)


def test_an_ad1_of_another_hub_is_joined_through_a_valid_mpan() -> None:
    eng, _ = _world(VALID)
    [d] = decisions(eng.handle(outage(2, ch=FOREIGN_CH, mpan=VALID)))
    assert (d.action, d.reason, d.esmes) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW, (ESME,))


def test_an_ad1_of_another_hub_is_not_joined_through_an_mpan_with_a_wrong_check_digit() -> None:
    # an inventory row holding that MPAN (a snapshot imported before rows were checked) does not help it
    eng, inventory = _world(BAD)
    assert list(inventory.esmes_for_mpan(BAD)) == [ESME]
    [d] = decisions(eng.handle(outage(2, ch=FOREIGN_CH, mpan=BAD)))
    assert (d.action, d.reason, d.esmes) == (Action.FORWARD, Reason.CH_UNKNOWN, ())


def test_spaces_in_the_mpxn_are_ignored_by_the_check_as_by_the_join() -> None:
    eng, _ = _world(BAD)
    [d] = decisions(eng.handle(outage(2, ch=FOREIGN_CH, mpan="1030 0067 18990")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.CH_UNKNOWN)


def test_an_ad1_of_the_meters_own_hub_is_still_decided_on_the_hub_whatever_its_mpxn() -> None:
    eng, _ = _world(VALID)
    [d] = decisions(eng.handle(outage(2, ch=CH, mpan=BAD)))
    assert (d.action, d.reason, d.esmes) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW, (ESME,))


def test_an_8_2_observation_does_not_teach_an_mpan_with_a_wrong_check_digit_but_learns_the_rest() -> None:
    eng, inventory = _world(VALID)
    effects = eng.handle(learned(1, esme=ESME, ch=NEW_CH, mpan=BAD, time=1))
    [note] = [o.note for o in effects if isinstance(o, Observed)]
    assert note == f"MPxN {BAD} fails the MPAN check digit: not learned; learned the rest"
    assert inventory.ch_for_esme(ESME) == NEW_CH  # the hub is learned
    assert inventory.mpan_for_esme(ESME) == VALID  # the MPAN link is the one known before
    assert list(inventory.esmes_for_mpan(BAD)) == []
    [d] = decisions(eng.handle(outage(2, ch=FOREIGN_CH, mpan=BAD)))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.CH_UNKNOWN)


def test_an_8_2_observation_of_a_valid_mpan_is_learned() -> None:
    eng, inventory = _world(VALID)
    other = "2000000000006"
    assert mpan_core_valid(other)
    eng.handle(learned(1, esme=ESME, ch=CH, mpan=other, time=1))
    assert inventory.mpan_for_esme(ESME) == other


def test_a_meter_identity_stating_only_an_mpxn_with_a_wrong_check_digit_still_ends_the_contradicted_link() -> (
    None
):
    # ending a link only narrows the join (the forward side): the identity's DSP-signed MPxNs are not learned
    eng, inventory = _world(VALID)
    eng.handle(unlinked(1, esme=ESME, change=METER_IDENTITY, mpxns=(BAD,), time=1))
    assert inventory.mpan_for_esme(ESME) is None
    assert list(inventory.esmes_for_mpan(VALID)) == list(inventory.esmes_for_mpan(BAD)) == []


NOT_MPANS = ("1234567890", "103000671899", "10300067189970", "GB-ABC-1")  # an MPRN's length, cut, long, text


def test_an_ad1_of_another_hub_is_not_joined_through_an_mpxn_that_is_not_thirteen_digits() -> None:
    # inventory rows holding them (a snapshot imported, or links learned, before MPxNs were judged) do
    # not help: those AD1s were suppressed through an MPxN that is no MPAN
    for mpxn in NOT_MPANS:
        eng, inventory = _world(mpxn)
        assert list(inventory.esmes_for_mpan(mpxn)) == [ESME]
        [d] = decisions(eng.handle(outage(2, ch=FOREIGN_CH, mpan=mpxn)))
        assert (mpxn, d.action, d.reason, d.esmes) == (mpxn, Action.FORWARD, Reason.CH_UNKNOWN, ())


def test_an_8_2_observation_does_not_teach_an_mpxn_that_is_not_thirteen_digits_but_learns_the_rest() -> None:
    for mpxn in NOT_MPANS:
        eng, inventory = _world(VALID)
        effects = eng.handle(learned(1, esme=ESME, ch=NEW_CH, mpan=mpxn, time=1))
        [note] = [o.note for o in effects if isinstance(o, Observed)]
        assert note == f"MPxN {mpxn} is not a 13-digit MPAN: not learned; learned the rest"
        assert inventory.ch_for_esme(ESME) == NEW_CH
        assert inventory.mpan_for_esme(ESME) == VALID
        assert list(inventory.esmes_for_mpan(mpxn)) == []
