"""Message identities are the idempotency keys kept in the state store: a DCC re-delivery is recognised
only if the same message gets the same identity, across restarts AND upgrades. These golden values pin
them; a change here re-decides (and re-delivers) every message the DCC sends again, so it needs a
migration, not just an updated test."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.duis.decode import decode
from gateway.testkit.scenario import World

T = datetime(2026, 3, 2, 9, 0, 40, tzinfo=UTC)


def test_identities_of_the_messages_the_decision_depends_on_are_stable() -> None:
    w = World.generated("golden")
    esme, ch, _ = w.meter(1)
    mpan = "1900000000001"  # the MPAN of meter 1 when these were pinned (it now gets a valid check digit)
    f = w.factory
    got = {
        "ad1": decode(f.ad1(ch, mpan, T, T, 77)).identity,
        "request-cv4": decode(f.activate_request(esme, 1000)).identity,
        "request-cv5": decode(f.activate_request(esme, 1000, signed_pre_command=True)).identity,
        "response-11.3": decode(f.activate_response(esme, 1000, T)).identity,
        "8f66": decode(f.future_dated_outcome(esme, 1001, T, T)).identity,
        "8f36": decode(f.restoration(esme, T, T, T)).identity,
        "inventory": decode(f.inventory_response(T, 5, [(esme, "ESME", mpan, "LG", "E470")])).identity,
    }
    assert got == {
        "ad1": "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:77|DCCAlertMessage.AD1",
        "request-cv4": "90-B3-D5-1F-30-01-00-00:00-DB-00-00-00-00-00-01:1000|CV4",
        "request-cv5": "90-B3-D5-1F-30-01-00-00:00-DB-00-00-00-00-00-01:1000|CV5",
        "response-11.3": "00-DB-00-00-00-00-00-01:90-B3-D5-1F-30-01-00-00:1000|ResponseMessage.GBCSPayload",
        "8f66": "00-DB-00-00-00-00-00-01:90-B3-D5-1F-30-01-00-00:1001|ResponseMessage.FutureDatedDeviceAlertMessage#1",
        "8f36": "00-DB-00-00-00-00-00-01:90-B3-D5-1F-30-02-00-00:1048578|DeviceAlertMessage.8F36",
        "inventory": GOLDEN_INVENTORY,
    }


# an identity without ResponseID ends in a digest of the decoded body: pinned too
GOLDEN_INVENTORY = "90-B3-D5-1F-30-02-00-00:90-B3-D5-1F-30-00-00-02:5|I0|ResponseMessage.DSPInventory|2026-03-02T09:00:40Z|72495cb09eb8e18c"
