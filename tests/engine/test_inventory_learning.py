"""What an inventory link learned from traffic (``InventoryObserved``) can do to the AD1 join.

The engine cannot tell a device's type: ``InventoryObserved.esme`` is an ESME by contract (the pipeline
emits one only for a device its message shows to be an ESME: tests/scenarios/test_status_change_learning.py).
What the engine guarantees on its own: a learned device joins a Comms Hub *beside* the ESMEs already
there (it never takes the hub from them), and a device learned without a manufacturer is never in
``manufacturer`` scope.
"""

from __future__ import annotations

from engine_support import CH, ESME, MPAN, MemoryScope, decisions, outage, request, response, run, t

from gateway.engine import Action, Engine, EngineConfig, InventoryObserved, Reason
from gateway.inventory import Inventory, InventoryRow

DEVICE = 0x00DD000000000001  # another device on ESME's Comms Hub, learned from traffic


def _world(config: EngineConfig) -> tuple[Engine, Inventory]:
    inventory = Inventory.from_rows([InventoryRow(ESME, CH, MPAN, "Landis+Gyr", "E470")])
    return Engine(config, MemoryScope([ESME]), inventory), inventory


def _learn_device(eng: Engine) -> None:
    eng.handle(InventoryObserved(message_id="inv-device", arrival=t(-60), verified=True, esme=DEVICE, ch=CH, mpan=None))


def test_a_device_learned_on_a_comms_hub_joins_it_beside_its_esme_and_never_takes_the_hub_from_it() -> None:
    eng, inventory = _world(EngineConfig(scope="all"))
    _learn_device(eng)
    assert sorted(inventory.esmes_for_ch(CH)) == sorted([ESME, DEVICE])
    assert inventory.ch_for_esme(ESME) == CH and list(inventory.esmes_for_mpan(MPAN)) == [ESME]
    run(eng, [request(0), response(0.5)])  # ESME's own activation still explains its hub's outage
    [d] = decisions(eng.handle(outage(2)))
    assert (d.action, d.reason) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW) and ESME in d.esmes


def test_a_device_learned_without_a_manufacturer_is_never_in_manufacturer_scope() -> None:
    eng, _ = _world(EngineConfig(scope="manufacturer", manufacturers=frozenset({"Landis+Gyr"})))
    _learn_device(eng)
    run(eng, [request(0, esme=DEVICE), response(0.5, esme=DEVICE)])
    [d] = decisions(eng.handle(outage(2)))
    assert (d.action, d.reason, d.esmes) == (Action.FORWARD, Reason.NO_ACTIVATION, (ESME,))
