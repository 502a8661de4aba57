"""A restoration alert held by the version before a restoration's hold stated ``held + 2 × hold_limit`` is decided
after an upgrade as that version would have decided it.

That version (docs/ENGINE.md §6, before the fourteenth session's loose ends) stated the restoration's own
``held + hold_limit`` in its hold decision, and the restoration waited for the held AD1s of its ESME or hub held
before that, nearer to its interruption than the kept outage it would pair with. This version states
``held + 2 × hold_limit`` and waits for the held AD1s *due* before what it stated. Restored from the previous
version's state, a held restoration kept the deadline it stated then, and this version's test on it (AD1s due
before ``held + hold_limit``: only those held before the restoration) dropped the AD1s held after it. So it was
decided earlier than either version would have: paired with a farther suppressed AD1 of the hub and suppressed,
while the nearer AD1, held after it, was then forwarded — the DNO got that outage and never its end.

A hold of the previous version is known by its own deadline: this version's never reaches the deadline its decision
states (it waits only for AD1s due before it), the previous version's started there. Such a hold waits for what the
previous version waited for.
"""

from __future__ import annotations

import dataclasses
import json

from engine_support import (
    decisions,
    fd_outcome,
    outage,
    request,
    response,
    restored,
    run,
    standard_world,
    t,
    tick,
)

from gateway.engine import Engine, EngineConfig
from gateway.engine.effects import StateChange, Table
from gateway.engine.records import to_record
from gateway.engine.state import HeldMessage

CONFIG = EngineConfig()  # hold_limit 10 min


def _held_like_the_previous_version(eng: Engine, message_id: str) -> list[tuple[str, str, dict[str, object]]]:
    """``eng``'s records as a store keeps them, with the held restoration ``message_id`` as the previous version
    kept it: its hold decision stating its own ``held + hold_limit`` (its deadline then)."""
    rows = []
    for c in eng.export_state():
        rec = c.value
        if c.table is Table.HELD and c.key == message_id:
            assert isinstance(rec, HeldMessage)
            assert rec.decision.hold_deadline == rec.since + 2 * CONFIG.hold_limit  # (what this version states)
            stated = rec.since + CONFIG.hold_limit
            rec = dataclasses.replace(rec, deadline=stated, decision=dataclasses.replace(rec.decision, hold_deadline=stated))
        rows.append((c.table.value, c.key, json.loads(json.dumps(to_record(rec)))))
    return rows


def _as_stored(eng: Engine) -> list[tuple[str, str, dict[str, object]]]:
    return [(c.table.value, c.key, json.loads(json.dumps(to_record(c.value)))) for c in eng.export_state()]


def _two_outages_and_their_restoration() -> Engine:
    """An immediate activation and a future-dated one (at 35) pending on the ESME. The reboot's AD1 (outage at 5) is
    held; the restoration of an outage at 31 waits for it; a genuine cut's AD1 (outage at 33), held after the
    restoration, is nearer to its interruption."""
    eng = standard_world(CONFIG)
    run(eng, [request(0, counter=1000, mid="req-now"), request(0, counter=1001, execute=35, mid="req-35")])
    out = run(eng, [outage(5, arrival=8.5, mid="ad1-reboot"), restored(31, arrival=9, mid="rst"),
                    outage(33, arrival=10, mid="ad1-cut")])  # fmt: skip
    assert [(d.message_id, d.action.value) for d in decisions(out)] == [
        ("ad1-reboot", "hold"), ("rst", "hold"), ("ad1-cut", "hold"),
    ]  # fmt: skip
    return eng


def test_a_restoration_held_by_the_previous_version_waits_for_the_nearer_ad1_held_after_it() -> None:
    # the response confirms the immediate activation (window [0, 31]): the reboot's AD1 is suppressed, the cut's
    # (at 33, outside it) still waits for the future-dated one, whose 8F67 then forwards it
    rest = [response(1, counter=1000, arrival=11, mid="rsp"), fd_outcome(35, counter=1001, success=False, arrival=15)]
    eng = _two_outages_and_their_restoration()
    ours = decisions(run(Engine.restore(CONFIG, eng.scope, eng.inventory, _as_stored(eng)), rest))
    theirs = decisions(run(Engine.restore(CONFIG, eng.scope, eng.inventory, _held_like_the_previous_version(eng, "rst")), rest))
    expected = [
        ("ad1-reboot", "release-suppress", "activation-window"),
        ("ad1-cut", "release-forward", "fd-failed"),
        ("rst", "release-forward", "not-paired"),  # its nearest outage, the cut, is one the DNO got
    ]
    assert [(d.message_id, d.action.value, d.reason.value) for d in ours] == expected
    # was: rst release-suppress (restoration-paired with the reboot's AD1) before the cut's AD1 was forwarded
    assert [(d.message_id, d.action.value, d.reason.value) for d in theirs] == expected


def test_a_restoration_held_by_the_previous_version_is_held_on_with_the_nearer_ad1_past_what_it_stated() -> None:
    # nothing decides the AD1s: the reboot's times out at 18.5, and the restoration waits on for the cut's AD1 (due at
    # 20, past the 19 it stated), as the previous version would have; it is decided with it
    eng = _two_outages_and_their_restoration()
    again = Engine.restore(CONFIG, eng.scope, eng.inventory, _held_like_the_previous_version(eng, "rst"))
    out = decisions(again.handle(tick(18.5)))
    assert [(d.message_id, d.action.value, d.reason.value) for d in out] == [
        ("ad1-reboot", "release-forward", "hold-timeout")
    ]  # was: and rst release-forward (not-paired, forwarded-outage ad1-reboot), not waiting for the nearer cut
    assert {h.event.message_id: h.deadline for h in again.held()} == {"rst": t(20), "ad1-cut": t(20)}
    assert not decisions(again.handle(tick(19)))
    out = decisions(again.handle(tick(20)))
    assert [(d.message_id, d.action.value, d.reason.value) for d in out] == [
        ("ad1-cut", "release-forward", "hold-timeout"),
        ("rst", "release-forward", "not-paired"),
    ]
    assert [(e.role, e.message_id) for e in out[1].evidence] == [("forwarded-outage", "ad1-cut")]


def test_a_restoration_held_by_this_version_never_reaches_the_deadline_its_hold_states() -> None:
    # what tells the two apart: this version's hold waits only for AD1s due before what it stated
    eng = _two_outages_and_their_restoration()
    for at in (11, 19, 20, 25):
        eng.handle(tick(at))
        for h in eng.held():
            if h.event.message_id == "rst":
                assert h.decision.hold_deadline is not None and h.deadline < h.decision.hold_deadline
    assert not [c for c in eng.export_state() if isinstance(c, StateChange) and c.table is Table.HELD]
