"""The SQLite state store and DurableEngine: persistence, recovery, and SIGKILL at random points."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from engine_support import (
    CH,
    ESME,
    MPAN,
    MemoryInventory,
    MemoryScope,
    decisions,
    fd_outcome,
    outage,
    request,
    response,
    restored,
    standard_world,
    t,
    tick,
)

from gateway.engine import Action, EngineConfig, StoreError
from gateway.engine.errors import PairedWithReleasedOutage
from gateway.engine.records import encode_tagged
from gateway.store import DurableEngine, SqliteStore

HERE = Path(__file__).resolve().parent


def _durable(path: Path) -> DurableEngine:
    eng = standard_world()
    return DurableEngine(SqliteStore(path), EngineConfig(), eng.scope, eng.inventory)


def test_suppressed_message_keeps_its_original_bytes_and_is_releasable(tmp_path: Path) -> None:
    d = _durable(tmp_path / "s.sqlite3")
    d.submit(request(0))
    d.submit(response(0.5))
    ad1 = outage(2)
    raw = b"<sr:Response>signed AD1 bytes \xe2\x80\x94 unchanged</sr:Response>"
    [dec] = decisions(d.submit(ad1, raw))
    assert dec.action is Action.SUPPRESS
    store = d.store
    assert store.status(ad1.message_id) == "suppress" and store.original_bytes(ad1.message_id) == raw
    assert store.undelivered() == []
    assert store.release_suppressed(ad1.message_id, "ops", "genuine outage", t(60)) == raw
    assert store.undelivered() == [(ad1.message_id, raw)]
    assert [r["reason"] for r in store.audit(ad1.message_id)] == ["activation-window", "operator-release"]
    store.mark_delivered([ad1.message_id])
    assert store.undelivered() == []
    with pytest.raises(StoreError):
        store.release_suppressed(ad1.message_id, "ops", "again", t(61))


def test_a_release_by_another_writer_does_not_collide_with_the_running_engines_next_decision(
    tmp_path: Path,
) -> None:
    # `duisgw audit release` runs in another process on the same database while the gateway keeps deciding
    path = tmp_path / "s.sqlite3"
    d = _durable(path)
    d.submit(request(0))
    d.submit(response(0.5))
    ad1 = outage(2)
    [dec] = decisions(d.submit(ad1, b"<AD1/>"))
    assert dec.action is Action.SUPPRESS
    operator = SqliteStore(path, checkpoint_interval=0)
    try:
        assert operator.release_suppressed(ad1.message_id, "ops", "genuine outage", t(60)) == b"<AD1/>"
    finally:
        operator.close()
    later = outage(30, mid="ad1-later")
    [after] = decisions(
        d.submit(later, b"<AD1 later/>")
    )  # used to fail: UNIQUE constraint failed: decisions.seq
    assert after.message_id == later.message_id
    db = d.store._conn()
    seqs = [r[0] for r in db.execute("SELECT seq FROM decisions ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))
    # every message's decision reference points at a decision of that message
    for mid, ref in db.execute(
        "SELECT message_id, decision_seq FROM messages WHERE decision_seq IS NOT NULL"
    ):
        assert db.execute("SELECT message_id FROM decisions WHERE seq=?", (ref,)).fetchone()[0] == mid
    d.store.close()


def _suppressed_ad1(path: Path) -> DurableEngine:
    d = _durable(path)
    d.submit(request(0))
    d.submit(response(0.5))
    [dec] = decisions(d.submit(outage(2, mid="ad1"), b"<AD1/>"))
    assert dec.action is Action.SUPPRESS
    return d


def _release(path: Path) -> None:  # `duisgw audit release`, in another process
    operator = SqliteStore(path, checkpoint_interval=0)
    try:
        operator.release_suppressed("ad1", "ops", "customer confirms no supply", t(60))
    finally:
        operator.close()


def test_an_operator_released_outage_does_not_suppress_its_restoration_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    _suppressed_ad1(path).store.close()
    _release(path)
    eng = standard_world()
    again = DurableEngine(SqliteStore(path), EngineConfig(), eng.scope, eng.inventory)
    [dec] = decisions(again.submit(restored(2, arrival=70, mid="rst"), b"<restored/>"))
    assert dec.action is Action.FORWARD  # the DNO got the outage: it must get its restoration
    again.store.close()


def test_an_operator_released_outage_does_not_suppress_its_restoration_in_the_running_engine(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    live = _suppressed_ad1(path)
    _release(path)
    live.released_by_operator(["ad1"])  # what the gateway's redelivery scan does when it finds the release
    [dec] = decisions(live.submit(restored(2, arrival=70, mid="rst"), b"<restored/>"))
    assert dec.action is Action.FORWARD
    live.store.close()


def test_a_restoration_paired_with_an_outage_released_since_the_last_take_in_commits_nothing(
    tmp_path: Path,
) -> None:
    # the release commits after the running engine last took releases in: its record of the AD1 is stale. The
    # batch's own write transaction sees the release (operator_releases, not taken in) and refuses the pairing
    path = tmp_path / "s.sqlite3"
    live = _suppressed_ad1(path)
    _release(path)
    with pytest.raises(PairedWithReleasedOutage) as refused:
        live.submit(restored(2, arrival=70, mid="rst"), b"<restored/>")
    assert refused.value.outages == ["ad1"]
    assert live.store.status("rst") is None  # nothing of the batch is durable
    assert [r["reason"] for r in live.store.audit("ad1")] == ["activation-window", "operator-release"]
    # the engine was rebuilt from the store, where the released outage is no longer a suppressed one
    [dec] = decisions(live.submit(restored(2, arrival=70, mid="rst"), b"<restored/>"))
    assert (dec.action, dec.reason.value) == (Action.FORWARD, "not-paired")
    assert [r["reason"] for r in live.store.audit("rst")] == ["not-paired"]
    assert [mid for mid, _kind in live.take_in_operator_releases()] == ["ad1"]  # still to take in, once
    live.store.close()


def test_a_restoration_paired_with_an_outage_nobody_released_commits_as_before(tmp_path: Path) -> None:
    # a pairing with an AD1 still suppressed commits as before: the check refuses only a release not taken in
    path = tmp_path / "s.sqlite3"
    live = _suppressed_ad1(path)
    [dec] = decisions(live.submit(restored(2, arrival=70, mid="rst"), b"<restored/>"))
    assert (dec.action, dec.reason.value) == (Action.SUPPRESS, "restoration-paired")
    assert live.store.status("rst") == "suppress"
    live.store.close()


def test_decisions_and_state_survive_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    d = _durable(path)
    d.submit_many(
        [(request(-600, counter=1001, execute=0), None), (response(-599, counter=1001, accepted=True), None)]
    )
    ad1 = outage(1)
    assert decisions(d.submit(ad1, b"ad1"))[0].action is Action.HOLD
    assert d.store.status(ad1.message_id) == "hold"
    d.store.close()
    again = _durable(path)
    assert [h.event.message_id for h in again.engine.held()] == [ad1.message_id]
    [released] = decisions(again.submit(fd_outcome(0, arrival=6)))
    assert (released.message_id, released.action) == (ad1.message_id, Action.RELEASE_SUPPRESS)
    assert again.store.status(ad1.message_id) == "suppress"
    assert [r["action"] for r in again.store.audit(ad1.message_id)] == ["hold", "release-suppress"]


def test_accepted_but_undecided_messages_are_decided_on_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    ad1 = outage(2)
    store.accept(ad1, b"raw")
    store.commit()  # kept, then the process died before deciding
    store.close()
    d = _durable(path)
    assert [x.message_id for x in decisions(d.recovered)] == [ad1.message_id]
    assert d.store.status(ad1.message_id) == "forward" and d.store.undelivered() == [(ad1.message_id, b"raw")]


def test_a_failure_inside_a_batch_rolls_back_store_and_engine_together(tmp_path: Path) -> None:
    d = _durable(tmp_path / "s.sqlite3")
    d.submit(request(0))
    good = outage(1)
    with pytest.raises(AttributeError):
        d.submit_many([(response(0.5), None), (good, b"x"), (object(), None)])  # type: ignore[list-item]
    assert d.store.status(good.message_id) is None
    assert d.engine.decision_for(good.message_id) is None
    [dec] = decisions(d.submit(good, b"x"))
    assert dec.action is Action.HOLD  # the response was rolled back with the batch


def test_store_refuses_unknown_synchronous_mode(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "x.sqlite3", synchronous="OFF")  # type: ignore[arg-type]


# ---- crash at random points -----------------------------------------------------------------


def _script(path: Path, n_esmes: int, seed: int) -> int:
    """A mixed event stream over n_esmes meters: activations of every kind, AD1s, restorations,
    duplicates, ticks. Returns the number of lines."""
    rnd = random.Random(seed)
    lines = []
    minute = 0.0
    for i in range(n_esmes):
        esme, ch, mpan = ESME + i, 0x00DB1234567890A2 + i, f"{1234567890126 + i:013d}"
        kind = rnd.choice(["immediate", "future", "cancel", "none", "pending"])
        minute += rnd.uniform(0.1, 2)
        evs: list[object] = []
        if kind == "immediate":
            evs += [request(minute, esme=esme, counter=i), response(minute + 0.5, esme=esme, counter=i)]
        elif kind == "future":
            evs += [request(minute - 600, esme=esme, counter=i, execute=minute)]
        elif kind == "cancel":
            evs += [
                request(minute - 600, esme=esme, counter=i, execute=minute),
                request(minute - 300, esme=esme, counter=i + 10_000, cancel=True),
            ]
        elif kind == "pending":
            evs += [request(minute, esme=esme, counter=i)]
        ad1 = outage(minute + 1, ch=ch, mpan=mpan)
        evs.append(ad1)
        if kind == "future":
            evs.append(
                fd_outcome(minute, arrival=minute + 6, esme=esme, counter=i, success=rnd.random() < 0.7)
            )
        if rnd.random() < 0.3:
            evs.append(ad1)  # DCC re-delivery
        evs.append(restored(minute + 1, esme=esme))
        if rnd.random() < 0.3:
            evs.append(tick(minute + 20))
        for ev in evs:
            raw = None
            if getattr(ev, "lane", "") == "inline":
                raw = (
                    f"<original {ev.message_id}>".encode() + bytes(rnd.randrange(256) for _ in range(16))
                ).hex()  # type: ignore[attr-defined]
            lines.append(json.dumps({"event": encode_tagged(ev), "raw": raw}))
    # ends with a tick that times out what is still held (within retention: re-deliveries stay duplicates)
    lines.append(json.dumps({"event": encode_tagged(tick(minute + 60)), "raw": None}))
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def _driver(db: Path, script: Path, batch: int, n: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent)}
    return subprocess.Popen(
        [sys.executable, str(HERE / "crash_driver.py"), str(db), str(script), str(batch), str(n)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _snapshot(db: Path) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The audit log (decision records, without the row number) and every kept message."""
    store = SqliteStore(db)
    try:
        audit = [{k: v for k, v in row.items() if k != "seq"} for row in store.audit()]
        return audit, store.messages()
    finally:
        store.close()


@pytest.mark.parametrize("batch", [1, 16])
def test_sigkill_at_random_points_loses_nothing_and_decides_identically(tmp_path: Path, batch: int) -> None:
    n = 80
    script = tmp_path / "script.jsonl"
    _script(script, n, seed=1234 + batch)
    reference = tmp_path / "reference.sqlite3"
    ref = _driver(reference, script, batch, n)
    out, _ = ref.communicate(timeout=120)
    assert ref.returncode == 0 and out.strip().endswith("done")
    want_audit, want_messages = _snapshot(reference)
    actions = {a["action"] for a in want_audit}
    assert {"suppress", "hold", "release-suppress", "forward"} <= actions

    crashed = tmp_path / "crashed.sqlite3"
    rnd = random.Random(batch)
    kills = 0
    for run_no in range(40):
        proc = _driver(crashed, script, batch, n)
        assert proc.stdout is not None
        finished = False
        if run_no % 2:
            # kill after a random number of commits (the process is already on the next batch)
            stop_after, acks = rnd.randrange(1, 4), 0
            for line in proc.stdout:
                finished = line.startswith("done")
                if line.startswith("ack"):
                    acks += 1
                    if acks >= stop_after:
                        break
        else:
            # kill at a random moment, wherever the process is (restore, engine, inside a commit)
            proc.stdout.readline()
            try:
                proc.wait(timeout=rnd.uniform(0.0, 0.03))
                finished = True
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        proc.stdout.close()
        if finished or proc.returncode == 0:
            break
    assert kills >= 3
    final = _driver(crashed, script, batch, n)
    out, _ = final.communicate(timeout=120)
    assert final.returncode == 0 and out.strip().endswith("done")
    got_audit, got_messages = _snapshot(crashed)
    assert [(a["message_id"], a["action"]) for a in got_audit] == [
        (a["message_id"], a["action"]) for a in want_audit
    ]
    assert got_audit == want_audit
    assert got_messages == want_messages
    inline = [m for m in got_messages if m["lane"] == "inline"]
    assert (
        inline
        and all(m["raw"] for m in inline)
        and all(m["status"] in ("forward", "suppress") for m in inline)
    )


def test_a_restoration_waiting_for_its_hubs_held_ad1_is_released_with_it_after_a_restart(
    tmp_path: Path,
) -> None:
    # a second ESME behind the AD1's Comms Hub, not in scope: its restoration waits for the held AD1 (indexed
    # under the hub), and that wait survives reopening the store
    sibling = 0x00DB1234567892A0

    def durable() -> DurableEngine:
        inventory = MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr"), (sibling, CH, "5555555555555", "Other")])
        return DurableEngine(SqliteStore(path), EngineConfig(), MemoryScope([ESME]), inventory)

    path = tmp_path / "s.sqlite3"
    d = durable()
    d.submit(request(0))
    assert decisions(d.submit(outage(1, mid="ad1"), b"ad1"))[0].action is Action.HOLD
    [waiting] = decisions(d.submit(restored(1, arrival=6, esme=sibling, mid="rst"), b"rst"))
    assert (waiting.action, waiting.reason.value) == (Action.HOLD, "pending-outage")
    d.store.close()
    again = durable()
    out = decisions(again.submit(response(0.5, arrival=7)))
    assert [(x.message_id, x.action, x.reason.value) for x in out] == [
        ("ad1", Action.RELEASE_SUPPRESS, "activation-window"),
        ("rst", Action.RELEASE_SUPPRESS, "restoration-paired"),
    ]
    assert again.store.status("rst") == "suppress"
    again.store.close()
