"""An operator's release of an inline message quarantined under its unsigned id is known to the engine.

With ``quarantine_unverified_inline``, an inline message whose own XML signature failed is kept as suppressed
(``quarantined-unverified``) under ``<identity>#unverified:<digest of its bytes>``. An operator may release it
(``duisgw audit release``): the DNO gets its bytes. The engine kept no record of that release (it keeps one only
for a suppressed AD1's outage), so when the DCC delivered the same bytes again and their signature now verified (a
renewed CRL, an SMKI reload) the signed copy was decided afresh under its DUIS identity:

- forwarded: the DNO got the same bytes a second time, under another ``X-DUISGW-Message-Id``;
- suppressed (an AD1 on verified activation evidence): the operator's release was contradicted, and the
  restoration of that outage was paired with the signed copy and withheld while the DNO had the outage open.

Now the release is taken in as what it is, a forward of those bytes (docs/ENGINE.md §8): the signed copy is a
duplicate of the released copy's key, across an export and restore, and a released AD1 is kept as a released
outage for its restorations (§6), as a suppressed AD1 an operator released is.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

from engine_support import (
    CH,
    ESME,
    decisions,
    other,
    outage,
    request,
    response,
    restored,
    run,
    standard_world,
    t,
    tick,
)

from gateway.engine import Action, Engine, EngineConfig, Reason
from gateway.engine.effects import Decision, Duplicate, Effect, StateChange, Table
from gateway.engine.events import MessageEvent, unsigned_id
from gateway.engine.records import to_record
from gateway.engine.state import RELEASED_NOTE, Seen, SuppressedOutage

D1 = 0x0123456789ABCDEF01234567
D2 = 0xFEDCBA9876543210FEDCBA98
QUARANTINE = EngineConfig(quarantine_unverified_inline=True)


def signed(ev: MessageEvent, digest: int = D1) -> MessageEvent:
    return dataclasses.replace(ev, digest=digest)


def unsigned(ev: MessageEvent, digest: int = D1) -> MessageEvent:
    """``ev`` as the pipeline gives the same bytes when their XML signature does not verify."""
    return dataclasses.replace(
        ev, message_id=unsigned_id(ev.message_id, digest), verified=False,
        verification="xml-signature-unverifiable:revocation_list_stale", digest=digest,
    )  # fmt: skip


def later(ev: MessageEvent, minutes: float) -> MessageEvent:
    return dataclasses.replace(ev, arrival=ev.arrival + timedelta(minutes=minutes))


def dups(effects: list[Effect]) -> list[Duplicate]:
    return [e for e in effects if isinstance(e, Duplicate)]


def only(effects: list[Effect]) -> Decision:
    [d] = decisions(effects)
    return d


def restored_copy(eng: Engine) -> Engine:
    """What a store keeps of ``eng`` (its exported records, as JSON text), restored."""
    rows = [
        (c.table.value, c.key, json.loads(json.dumps(to_record(c.value))))
        for c in eng.export_state()
        if c.value is not None
    ]
    return Engine.restore(eng.config, eng.scope, eng.inventory, rows)


def quarantined(eng: Engine, ev: MessageEvent, digest: int = D1) -> MessageEvent:
    """``ev``'s bytes (of ``digest``) delivered unsigned and quarantined; returns that delivery."""
    copy = unsigned(ev, digest)
    d = only(eng.handle(copy))
    assert (d.message_id, d.action, d.reason) == (copy.message_id, Action.SUPPRESS, Reason.QUARANTINED)
    return copy


# ------------------------------------------------------------------ the signed copy after the release


def test_an_ad1_released_from_quarantine_is_a_duplicate_when_its_bytes_come_again_verified() -> None:
    eng = standard_world(QUARANTINE)
    ad1 = signed(outage(1.5, mid="ad1-q"))
    copy = quarantined(eng, ad1)
    changes = eng.released_by_operator(copy.message_id)  # the DNO gets the bytes now
    assert changes  # the release changes the engine's state (kept by the store)
    run(eng, [request(0), response(1)])  # verified evidence that would suppress it
    out = eng.handle(later(ad1, 10))  # the DCC delivers it again; its signature verifies now
    # was: suppress (activation-window), contradicting the release
    assert not decisions(out)
    [dup] = dups(out)
    assert dup.message_id == "ad1-q"
    assert dup.original is not None and dup.original.message_id == copy.message_id
    assert not [c for c in out if isinstance(c, StateChange) and c.key == "ad1-q"]  # keeps nothing of its own


def test_another_inline_message_released_from_quarantine_is_not_forwarded_again_when_it_comes_verified() -> None:
    eng = standard_world(QUARANTINE)
    msg = signed(other(1, mid="oth-q"))
    copy = quarantined(eng, msg)
    eng.released_by_operator(copy.message_id)
    out = eng.handle(later(msg, 5))
    # was: forward (other-inline) under its plain id: the DNO got the bytes twice
    assert not decisions(out)
    [dup] = dups(out)
    assert dup.original is not None and dup.original.message_id == copy.message_id


def test_a_quarantined_copy_not_released_still_leaves_its_signed_copy_to_be_decided_afresh() -> None:
    # unchanged: a quarantine withheld the bytes from the DNO, so their signed copy is decided on its own
    eng = standard_world(QUARANTINE)
    ad1 = signed(outage(1.5, mid="ad1-nr"))
    quarantined(eng, ad1)
    run(eng, [request(0), response(1)])
    d = only(eng.handle(later(ad1, 10)))
    assert (d.message_id, d.action, d.reason) == ("ad1-nr", Action.SUPPRESS, Reason.ACTIVATION_WINDOW)


def test_other_bytes_under_the_released_identity_are_still_decided_afresh() -> None:
    eng = standard_world(QUARANTINE)
    ad1 = signed(outage(200, mid="ad1-sq"))
    copy = quarantined(eng, ad1)
    eng.released_by_operator(copy.message_id)
    d = only(eng.handle(later(signed(ad1, D2), 5)))  # the identity with other bytes: not what was released
    assert (d.message_id, d.action) == ("ad1-sq", Action.FORWARD)


def test_the_release_is_kept_in_the_quarantined_key_and_taken_once() -> None:
    eng = standard_world(QUARANTINE)
    copy = quarantined(eng, signed(other(1, mid="oth-k")))
    changes = eng.released_by_operator(copy.message_id)
    seen = [c.value for c in changes if isinstance(c, StateChange) and c.table is Table.SEEN]
    assert [(s.message_id, s.note, s.digest) for s in seen if isinstance(s, Seen)] == [
        (copy.message_id, RELEASED_NOTE, D1)
    ]
    decision = seen[0].decision
    assert decision is not None and decision.reason is Reason.QUARANTINED  # its decision is the quarantine's
    assert eng.released_by_operator(copy.message_id) == []  # taken in once
    assert eng.released_by_operator("no-such-message") == []


def test_a_restored_engine_knows_the_release() -> None:
    eng = standard_world(QUARANTINE)
    msg = signed(other(1, mid="oth-r"))
    copy = quarantined(eng, msg)
    eng.released_by_operator(copy.message_id)
    again = restored_copy(eng)
    out = again.handle(later(msg, 5))
    assert not decisions(out) and [d.original.message_id for d in dups(out) if d.original] == [copy.message_id]


def test_the_release_is_forgotten_with_the_quarantined_key_at_its_retention() -> None:
    eng = standard_world(QUARANTINE)
    msg = signed(other(1, mid="oth-p"))
    copy = quarantined(eng, msg)
    eng.released_by_operator(copy.message_id)
    gone = 1 + QUARANTINE.keep_for.total_seconds() / 60 + 10
    eng.handle(tick(gone))
    assert not eng._unsigned_inline  # (the index goes with the key: it does not grow)
    d = only(eng.handle(dataclasses.replace(msg, arrival=t(gone + 1))))
    assert (d.message_id, d.reason) == ("oth-p", Reason.OTHER_INLINE)  # a message re-delivered after retention


# ------------------------------------------------------------------ the restoration of a released AD1


def _reboot_suppressed(eng: Engine) -> None:
    run(eng, [request(0), response(0.5)])
    d = only(eng.handle(outage(2, mid="ad1-reboot")))
    assert (d.action, d.reason) == (Action.SUPPRESS, Reason.ACTIVATION_WINDOW)


def test_the_restoration_of_an_ad1_released_from_quarantine_is_forwarded_not_paired() -> None:
    # a genuine cut on the hub minutes after the reboot; its AD1's signature failed (quarantined) and an operator
    # released it: the DNO has that outage. Its restoration must reach the DNO too, as a released AD1's does
    eng = standard_world(QUARANTINE)
    _reboot_suppressed(eng)
    copy = quarantined(eng, signed(outage(20, mid="ad1-cut")))
    changes = eng.released_by_operator(copy.message_id)
    kept = [c.value for c in changes if isinstance(c, StateChange) and c.table is Table.SUPPRESSED]
    assert [(k.message_id, k.released, k.ch, k.esmes) for k in kept if isinstance(k, SuppressedOutage)] == [
        (copy.message_id, True, CH, (ESME,))
    ]
    d = only(eng.handle(restored(20, arrival=40, mid="rst-cut")))
    # was: suppress (restoration-paired with the reboot's AD1): the DNO kept an outage open that had ended
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    assert [(e.role, e.message_id) for e in d.evidence] == [("released-outage", copy.message_id)]
    # the reboot's own restoration still pairs with the reboot's AD1
    d = only(eng.handle(restored(2, arrival=41, mid="rst-reboot")))
    assert (d.action, d.reason) == (Action.SUPPRESS, Reason.RESTORATION_PAIRED)


def test_the_restoration_after_the_released_ad1s_signed_copy_is_forwarded() -> None:
    # the signed copy comes between the release and the restoration: it is the duplicate of the release (it was
    # suppressed, and the restoration paired with it and withheld while the DNO had the outage)
    eng = standard_world(QUARANTINE)
    _reboot_suppressed(eng)
    ad1 = signed(outage(20, mid="ad1-cut2"))
    copy = quarantined(eng, ad1)
    eng.released_by_operator(copy.message_id)
    assert not decisions(eng.handle(later(ad1, 5)))
    d = only(eng.handle(restored(20, arrival=40, mid="rst-cut2")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    again = restored_copy(eng)  # and a restored engine decides the same
    d = only(again.handle(restored(20, arrival=40, mid="rst-cut2b")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)


def test_a_released_ad1s_record_from_quarantine_is_pruned_with_the_retention_from_its_release() -> None:
    eng = standard_world(QUARANTINE)
    copy = quarantined(eng, signed(outage(20, mid="ad1-cut3")))
    eng.handle(tick(30))
    eng.released_by_operator(copy.message_id)
    out = eng.handle(tick(30 + QUARANTINE.keep_for.total_seconds() / 60))
    assert StateChange(Table.SUPPRESSED, copy.message_id, None) in out


# ------------------------------------------------------------------ the converse: a verified suppression released


def test_a_released_verified_suppression_stays_the_answer_when_its_bytes_come_again_unverified() -> None:
    eng = standard_world(QUARANTINE)
    _reboot_suppressed(eng)
    ad1 = signed(outage(20, mid="ad1-v"))
    assert only(eng.handle(ad1)).action is Action.SUPPRESS
    assert eng.released_by_operator("ad1-v")
    out = eng.handle(later(unsigned(ad1), 10))  # the same bytes, their signature unverifiable now
    assert not decisions(out)  # not quarantined (nor forwarded): the duplicate of the released suppression
    [dup] = dups(out)
    assert dup.original is not None and dup.original.message_id == "ad1-v"
    d = only(eng.handle(restored(20, arrival=40, mid="rst-v")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)
    assert [(e.role, e.message_id) for e in d.evidence] == [("released-outage", "ad1-v")]


def test_releasing_the_quarantined_copy_after_its_signed_copy_was_suppressed_releases_that_outage_too() -> None:
    # the signed copy came first after the quarantine (decided afresh: suppressed on verified evidence), then an
    # operator released the quarantined copy: the DNO has the outage, so its restoration must not be withheld
    eng = standard_world(QUARANTINE)
    _reboot_suppressed(eng)
    ad1 = signed(outage(20, mid="ad1-s"))
    copy = quarantined(eng, ad1)
    assert only(eng.handle(later(ad1, 5))).action is Action.SUPPRESS
    changes = eng.released_by_operator(copy.message_id)
    kept = {c.key: c.value for c in changes if isinstance(c, StateChange) and c.table is Table.SUPPRESSED}
    signed_rec = kept.get("ad1-s")
    assert isinstance(signed_rec, SuppressedOutage) and signed_rec.released
    d = only(eng.handle(restored(20, arrival=40, mid="rst-s")))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)  # was: suppress (paired with ad1-s)
    assert restored_copy(eng).released_by_operator(copy.message_id) == []  # restored: taken in already


def test_a_quarantined_copy_with_other_bytes_than_the_suppressed_ad1_does_not_release_it() -> None:
    eng = standard_world(QUARANTINE)
    _reboot_suppressed(eng)
    ad1 = signed(outage(20, mid="ad1-o"))
    copy = quarantined(eng, ad1, D2)  # an unsigned copy with other bytes naming the identity
    assert only(eng.handle(later(ad1, 5))).action is Action.SUPPRESS
    changes = eng.released_by_operator(copy.message_id)
    assert "ad1-o" not in {c.key for c in changes if isinstance(c, StateChange)}
