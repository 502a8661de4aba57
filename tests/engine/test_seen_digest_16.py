"""The same bytes are decided once, whether their XML signature verified at one delivery and not at another.

A message is decided under its DUIS identity when its XML signature verified against the right role's
certificate, else under ``<identity>#unverified:<digest of its bytes>`` (an unsigned copy never squats a
genuine message's identity). Every event carries the digest of its message's bytes, and every idempotency key
keeps it, so the engine tells the same bytes under their two ids (docs/ENGINE.md §8):

- signed first, the same bytes unsigned later (a revocation list past its nextUpdate at the second arrival, an
  SMKI reload that dropped the signer): a duplicate of the signed decision. It used to be decided afresh: an
  AD1 suppressed on verified evidence was forwarded ``inline-unverified`` (a false AD1 reached the DNO);
- unsigned first, the same bytes signed later, on the inline lane: a duplicate of the unsigned decision (it was
  decided again: forwarded twice, or suppressed after the DNO had it); an observation signed later is evidence
  as it is on its own.

Different bytes naming the same identity are still decided afresh, in both orders.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine import Engine, EngineConfig
from gateway.engine.effects import Duplicate, Effect, Observed, StateChange, Table
from gateway.engine.events import MessageEvent, digest_text, signed_twin, unsigned_id
from gateway.engine.state import Seen, pack_seen, unpack_seen
from gateway.pipeline import body_digest, unverified_identity
from tests.engine.engine_support import (
    decisions,
    decisions_restored_at_every_cut,
    other,
    outage,
    request,
    response,
    run,
    standard_world,
    t,
    tick,
)

D1 = 0x0123456789ABCDEF01234567  # the pipeline's digests: the first 96 bits of the SHA-256 of the bytes
D2 = 0xFEDCBA9876543210FEDCBA98


def unsigned(ev: MessageEvent, digest: int = D1) -> MessageEvent:
    """``ev`` as the pipeline gives the same bytes when their XML signature does not verify."""
    return dataclasses.replace(
        ev, message_id=unsigned_id(ev.message_id, digest), verified=False,
        verification="xml-signature-unverifiable:revocation_list_stale", digest=digest,
    )  # fmt: skip


def signed(ev: MessageEvent, digest: int = D1) -> MessageEvent:
    return dataclasses.replace(ev, digest=digest)


def later(ev: MessageEvent, minutes: float) -> MessageEvent:
    return dataclasses.replace(ev, arrival=ev.arrival + timedelta(minutes=minutes))


def dups(effects: list[Effect]) -> list[Duplicate]:
    return [e for e in effects if isinstance(e, Duplicate)]


def key_kept(eng: Engine, message_id: str) -> bool:
    return any(c.table is Table.SEEN and c.key == message_id for c in eng.export_state())


# ------------------------------------------------------------------ the packed key keeps the digest


def test_an_idempotency_key_keeps_the_digest_of_its_message_bytes_as_the_int_the_event_carried() -> None:
    seen = Seen("ad1-1", "power-outage", t(0), None, "", D1)
    packed = pack_seen(seen)
    assert packed[4] is seen.digest and unpack_seen(packed) == seen  # (no conversion on the engine's thread)
    assert pack_seen(Seen("ad1-1", "power-outage", t(0)))[4] is None


@settings(max_examples=200)
@given(st.none() | st.integers(0, 2**96 - 1), st.booleans())
def test_a_key_with_any_digest_comes_back_exactly_and_is_not_tracked_by_the_collector(
    digest: int | None, decided: bool
) -> None:
    eng = standard_world()
    ev = dataclasses.replace(outage(1.5) if decided else request(0), digest=digest)
    [seen] = [c.value for c in eng.handle(ev) if isinstance(c, StateChange) and c.table is Table.SEEN]
    assert isinstance(seen, Seen) and seen.digest == digest
    packed = pack_seen(seen)
    assert unpack_seen(packed) == seen
    gc.collect(0)
    gc.collect(1)
    assert not gc.is_tracked(packed)


def test_the_pipelines_unverified_ids_are_the_engines_unsigned_ids_of_the_digest_of_the_bytes() -> None:
    body = b"<sr:Response>...</sr:Response>"
    digest = body_digest(body)
    assert digest == int(hashlib.sha256(body).hexdigest()[:24], 16)  # the same text as ids kept before it
    assert unverified_identity("R|kind", body) == unsigned_id("R|kind", digest)
    assert unsigned_id("R|kind", digest) == f"R|kind#unverified:{hashlib.sha256(body).hexdigest()[:24]}"


def test_the_unsigned_id_of_a_message_and_its_signed_twin() -> None:
    hex1 = "0123456789abcdef01234567"
    assert unsigned_id("R|kind", D1) == f"R|kind#unverified:{hex1}" and digest_text(D1) == hex1
    assert signed_twin(f"R|kind#unverified:{hex1}", D1) == "R|kind"
    assert (
        signed_twin(f"R|kind#unverified:{hex1}#inv:00DB", D1) == "R|kind#inv:00DB"
    )  # an observation's event
    assert signed_twin(f"R|kind#unverified:{hex1}", D2) is None  # other bytes
    assert signed_twin("R|kind", D1) is None and signed_twin(f"R|kind#unverified:{hex1}", None) is None
    assert signed_twin(unsigned_id("R|kind", 7), 7) == "R|kind"  # (leading zeros: always 24 digits)


# ------------------------------------------------------------------ signed first, the same bytes unsigned later


def test_an_ad1_suppressed_on_verified_evidence_is_a_duplicate_when_its_bytes_come_again_unverified() -> None:
    eng = standard_world()
    ad1 = signed(outage(1.5, mid="ad1-1"))
    out = run(eng, [request(0), response(1), ad1])
    assert [(d.message_id, d.disposition) for d in decisions(out)] == [("ad1-1", "suppress")]
    again = later(unsigned(ad1), 60)
    out = eng.handle(again)
    assert not decisions(out)  # was: forward inline-unverified (a false AD1 to the DNO)
    [dup] = dups(out)
    assert dup.message_id == again.message_id  # the delivery's own id: the shell finds its answer by it
    assert dup.original is not None and dup.original.message_id == "ad1-1"
    assert dup.original.disposition == "suppress"
    assert not key_kept(eng, again.message_id)  # nothing new kept


def test_a_forwarded_message_re_delivered_unverified_is_a_duplicate_of_its_forward() -> None:
    eng = standard_world()
    ad1 = signed(outage(200, mid="ad1-2"))
    first = eng.handle(ad1)
    assert [d.disposition for d in decisions(first)] == ["forward"]
    out = eng.handle(later(unsigned(ad1), 5))
    assert not decisions(out)
    [dup] = dups(out)
    assert dup.original is not None and (dup.original.message_id, dup.original.reason.value) == (
        "ad1-2", "no-activation",
    )  # fmt: skip


def test_a_held_ad1_re_delivered_unverified_reports_the_hold_and_is_released_once() -> None:
    eng = standard_world()
    ad1 = signed(outage(310.5, mid="ad1-held"))
    out = run(eng, [request(300, counter=1001, execute=310), ad1])
    assert [d.action.value for d in decisions(out)] == ["hold"]
    out = eng.handle(later(unsigned(ad1), 1))
    [dup] = dups(out)
    assert dup.original is not None and dup.original.action.value == "hold" and not decisions(out)
    out = eng.handle(tick(330))
    assert [(d.message_id, d.action.value) for d in decisions(out)] == [("ad1-held", "release-forward")]


def test_an_observation_taken_as_evidence_is_a_duplicate_when_its_bytes_come_again_unverified() -> None:
    eng = standard_world()
    rsp = signed(response(1, mid="rsp-1"))
    eng.handle(request(0))
    assert [o.used for o in eng.handle(rsp) if isinstance(o, Observed)] == [True]
    again = later(unsigned(rsp), 30)
    out = eng.handle(again)
    [dup] = dups(out)
    assert dup.message_id == again.message_id and dup.original is None
    assert not [o for o in out if isinstance(o, Observed)]
    # it is not kept as unverified evidence of its ESME: the bytes are the verified evidence already taken
    assert not [c for c in out if isinstance(c, StateChange)]
    assert not [c for c in eng.export_state() if c.table is Table.UNVERIFIED]


def test_different_bytes_naming_a_decided_identity_are_still_decided_afresh() -> None:
    eng = standard_world()
    ad1 = signed(outage(1.5, mid="ad1-3"))
    run(eng, [request(0), response(1), ad1])
    squatter = later(unsigned(ad1, D2), 5)  # another digest: not the signed message's bytes
    out = eng.handle(squatter)
    assert not dups(out)
    assert [(d.message_id, d.disposition, d.reason.value) for d in decisions(out)] == [
        (squatter.message_id, "forward", "inline-unverified"),
    ]


def test_a_key_kept_without_a_digest_is_not_the_twin_of_any_bytes() -> None:
    # keys kept before digests were (and events made without one): decided as before
    eng = standard_world()
    ad1 = outage(1.5, mid="ad1-4")  # no digest
    run(eng, [request(0), response(1), ad1])
    out = eng.handle(later(unsigned(ad1), 5))
    assert not dups(out) and [d.reason.value for d in decisions(out)] == ["inline-unverified"]


# ------------------------------------------------------------------ unsigned first, the same bytes signed later


def test_an_inline_message_forwarded_unverified_is_a_duplicate_when_its_bytes_come_again_verified() -> None:
    eng = standard_world()
    ad1 = signed(outage(1.5, mid="ad1-5"))
    first = eng.handle(unsigned(ad1))
    assert [(d.disposition, d.reason.value) for d in decisions(first)] == [("forward", "inline-unverified")]
    # the evidence comes meanwhile: decided afresh, the signed AD1 would now be suppressed after the DNO had it
    run(eng, [request(0), response(1)])
    out = eng.handle(later(ad1, 2))
    assert not decisions(out)  # was: suppress (activation-window)
    [dup] = dups(out)
    assert dup.message_id == "ad1-5"
    assert dup.original is not None and dup.original.message_id == unsigned_id("ad1-5", D1)
    assert not key_kept(eng, "ad1-5")


def test_a_message_quarantined_unverified_is_decided_afresh_when_its_bytes_come_again_verified() -> None:
    # quarantined, it was withheld from the DNO for want of a verified signature: once its signature verifies it is
    # decided on its own (a duplicate of the quarantine would withhold a genuine alert until an operator came)
    eng = standard_world(EngineConfig(quarantine_unverified_inline=True))
    msg = signed(other(1, mid="oth-1"))
    assert [d.reason.value for d in decisions(eng.handle(unsigned(msg)))] == ["quarantined-unverified"]
    out = eng.handle(later(msg, 1))
    assert not dups(out) and [(d.message_id, d.reason.value) for d in decisions(out)] == [
        ("oth-1", "other-inline")
    ]
    ad1 = signed(outage(1.5, mid="ad1-q"))
    eng.handle(unsigned(ad1))
    run(eng, [request(0), response(1)])
    out = eng.handle(later(ad1, 2))
    assert [(d.message_id, d.disposition, d.reason.value) for d in decisions(out)] == [
        ("ad1-q", "suppress", "activation-window"),  # on its verified evidence
    ]
    # and the other order: a quarantine is never what a verified copy decided before gets instead
    first = signed(other(5, mid="oth-2"))
    eng.handle(first)
    [dup] = dups(eng.handle(later(unsigned(first), 1)))
    assert dup.original is not None and dup.original.reason.value == "other-inline"


def test_other_bytes_or_another_identity_signed_after_an_unsigned_inline_message_are_decided_afresh() -> None:
    eng = standard_world()
    ad1 = signed(outage(200, mid="ad1-6"))
    eng.handle(unsigned(ad1))
    out = eng.handle(later(signed(ad1, D2), 1))  # the genuine message, other bytes: the squatting case
    assert not dups(out) and [d.message_id for d in decisions(out)] == ["ad1-6"]
    other_id = signed(outage(200, mid="ad1-7"))  # the same digest under another identity: not its twin
    assert [d.message_id for d in decisions(eng.handle(other_id))] == ["ad1-7"]


def test_an_observation_unverified_first_is_taken_as_evidence_when_its_bytes_come_again_verified() -> None:
    eng = standard_world()
    rsp = signed(response(1, mid="rsp-2"))
    eng.handle(request(0))
    first = eng.handle(unsigned(rsp))
    assert [o.used for o in first if isinstance(o, Observed)] == [False]
    out = eng.handle(later(rsp, 1))
    assert not dups(out) and [o.used for o in out if isinstance(o, Observed)] == [True]
    assert [d.disposition for d in decisions(eng.handle(outage(1.5)))] == ["suppress"]


# ------------------------------------------------------------------ retention, restart


@pytest.mark.parametrize("order", ["signed-first", "unsigned-first"])
def test_the_other_id_is_a_duplicate_only_while_the_key_of_the_first_is_within_retention(order: str) -> None:
    cfg = EngineConfig()
    eng = standard_world(cfg)
    ad1 = signed(outage(200, mid="ad1-8"))
    first, second = (ad1, unsigned(ad1)) if order == "signed-first" else (unsigned(ad1), ad1)
    eng.handle(first)
    assert dups(eng.handle(later(second, 60)))  # within retention: its duplicate
    gone = 200 + cfg.keep_for.total_seconds() / 60 + 10
    eng.handle(tick(gone))  # the first key is pruned (and, unsigned, its index entry)
    assert not key_kept(eng, first.message_id)
    assert not eng._unsigned_inline  # (the index of unsigned inline keys goes with them: it does not grow)
    out = eng.handle(dataclasses.replace(second, arrival=t(gone + 1)))
    assert not dups(out) and [d.message_id for d in decisions(out)] == [second.message_id]  # decided afresh


@pytest.mark.parametrize("order", ["signed-first", "unsigned-first"])
def test_a_restored_engine_answers_the_twin_as_the_engine_it_was_restored_from(order: str) -> None:
    ad1 = signed(outage(1.5, mid="ad1-9"))
    if order == "signed-first":
        events = [request(0), response(1), ad1, later(unsigned(ad1), 30), tick(60)]
    else:
        events = [unsigned(ad1), request(0), response(1), later(ad1, 30), tick(60)]
    runs = decisions_restored_at_every_cut(events, standard_world, lambda: standard_world().inventory)
    assert all(r == runs[-1] for r in runs)  # the same decisions whatever the cut
    assert len(runs[-1]) == 1  # one decision: the second delivery is a duplicate at every cut
