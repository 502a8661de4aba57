"""An operator release (``duisgw audit release``, a real CLI process on the same SQLite state) committed
between a batch's pre-batch take-in of releases (``GatewayProcessor._take_in_before_pairing``) and that
batch's commit. The running engine still held the released AD1 as a suppressed outage and paired the
restoration alert with it, and the release had looked for paired restorations before that pairing was
committed: the DNO got the outage and never its end.

The batch's own write transaction (``BEGIN IMMEDIATE``) now checks whether an AD1 its restorations paired
with has an operator release not taken in yet; it has: nothing of the batch is committed, the engine is
rebuilt from the store, the releases are taken in and the job decided again, once. Pinned in both layouts
(decisions in the transport store's database, and apart from it: the check runs in the decision database,
where the release is written too)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from servicekit import (
    DNO_USER,
    Lab,
    Receiver,
    counters,
    make_lab,
    operator_releases,
    pipeline_config,
    release_story,
    running,
    suppressed_after_activation,
)

from gateway.engine.errors import PairedWithReleasedOutage
from gateway.service.api import AcceptResult, Lane, StoreUnavailable
from gateway.service.config import ServiceConfig
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator, TimedMessage

PROJECT = Path(__file__).resolve().parents[2]
RELEASED = ("inline", "DCCAlertMessage.AD1", "release-forward", "operator-release")


def write_toml(cfg: ServiceConfig, path: Path) -> Path:
    """The configuration file of the gateway ``cfg`` describes, for ``duisgw audit --config``."""
    p = cfg.pipeline
    (dest,) = cfg.destinations
    path.write_text(
        f'mode = "pipeline"\nclock = "message"\n\n[store]\npath = {json.dumps(cfg.store.path)}\n'
        f'synchronous = "NORMAL"\n\n[pipeline]\nstate_dir = {json.dumps(p.state_dir)}\n'
        f"certificates = {json.dumps(p.certificates)}\ngbcs_keys = {json.dumps(p.gbcs_keys)}\n"
        f"guids = {json.dumps(p.guids)}\ninventory = {json.dumps(p.inventory)}\n"
        f"state_in_store = {json.dumps(p.state_in_store)}\n\n[[destinations]]\nname = {json.dumps(dest.name)}\n"
        f"user = {json.dumps(dest.user)}\nurl = {json.dumps(dest.url)}\n",
        encoding="utf-8",
    )
    return path


def audit_release(config: Path, message_id: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "release", "--config", str(config), message_id,
         "--operator", "ops", "--note", "customer has no supply"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def decisions_of(cfg: ServiceConfig, message_id: str) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(engine_db_path(cfg))) as conn:
        rows = conn.execute(
            "SELECT action, reason FROM decisions WHERE message_id = ? ORDER BY seq", (message_id,)
        ).fetchall()
    return [(str(a), str(r)) for a, r in rows]


REFUSALS = "duisgw_release_pairing_refusals"


def outbox_rows(cfg: ServiceConfig) -> list[str]:
    with contextlib.closing(sqlite3.connect(cfg.store.path)) as conn:
        return [str(r[0]) for r in conn.execute("SELECT message_id FROM outbox ORDER BY seq")]


@pytest.mark.parametrize("state_in_store", [True, False], ids=["one-database", "two-databases"])
async def test_a_release_committed_between_the_take_in_and_the_batch_commit_does_not_pair_the_restoration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_in_store: bool
) -> None:
    lab = make_lab(
        "release-during-batch", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000
    )
    request, response, ad1, restoration = release_story(lab)
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER, state_in_store=state_in_store)
        config = write_toml(cfg, tmp_path / "gateway.toml")
        service = make_service(build_gateway(cfg))
        async with running(service):
            proc = service.processor
            assert proc is not None
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                (suppressed,) = await suppressed_after_activation(dsp, request, response, ad1)
                outage_id = str(suppressed.message_id)

                take_in = proc._take_in_before_pairing
                releases: list[subprocess.CompletedProcess[str]] = []
                calls: list[int] = []

                def take_in_then_release() -> None:
                    """The engine thread's pre-batch take-in, then (the first time) the operator's release,
                    committed in full before the batch decides and commits."""
                    take_in()
                    calls.append(len(calls))
                    if not releases:
                        releases.append(audit_release(config, outage_id))

                monkeypatch.setattr(proc, "_take_in_before_pairing", take_in_then_release)
                after = await dsp.post(restoration)
                assert (after.status, after.decision) == (200, "forward")
            (released,) = releases
            assert released.returncode == 0, released.stderr
            # the release ran before the batch committed: it found no paired restoration to release
            assert released.stdout.splitlines() == [f"released {outage_id} to dno-a (1 outbox row(s)) by ops"]
            assert calls == [0, 1]  # the batch, then its one retry, each after taking releases in
            assert operator_releases(service) == {RELEASED: 1.0}  # taken in (and counted) once
            assert counters(service, REFUSALS) == {("local",): 1.0, ("shared",): 0.0}  # the batch refused once
            await receiver.wait_for(2)
            assert await proc.redeliver() == 0  # nothing left undelivered, nothing enqueued again
        restoration_id = str(after.message_id)
        assert decisions_of(cfg, restoration_id) == [("forward", "not-paired")]  # decided once
        assert decisions_of(cfg, outage_id) == [("suppress", "activation-window"),
                                                ("release-forward", "operator-release")]  # fmt: skip
        assert sorted(outbox_rows(cfg)) == sorted([outage_id, restoration_id])
    finally:
        await receiver.stop()
    assert sorted(r.body for r in receiver.log) == sorted([ad1.body, restoration.body])  # each once


def second_reboot(lab: Lab) -> TimedMessage:
    """The demo meter's AD1 of a second reboot within the same activation window (outage at 08:03:50):
    suppressed too."""
    _esme, ch, mpan = lab.world.meter(1)
    t = lab.demo.t
    return TimedMessage(
        t("08:06:30"), "inline", lab.world.factory.ad1(ch, mpan, t("08:03:50"), t("08:06:30"), 1101)
    )


def release_at_take_ins(
    monkeypatch: pytest.MonkeyPatch, proc: GatewayProcessor, config: Path, to_release: list[str | None]
) -> tuple[list[subprocess.CompletedProcess[str]], list[int]]:
    """Make each of the engine thread's take-ins of releases (``_take_in_before_pairing``) be followed by the
    operator's release of the next id of ``to_release`` (None: no release at that take-in), committed in full
    before the batch decides. Returns the releases made and the take-ins counted, as they happen."""
    take_in = proc._take_in_before_pairing
    releases: list[subprocess.CompletedProcess[str]] = []
    calls: list[int] = []

    def take_in_then_release() -> None:
        take_in()
        calls.append(len(calls))
        if to_release and (mid := to_release.pop(0)) is not None:
            releases.append(audit_release(config, mid))

    monkeypatch.setattr(proc, "_take_in_before_pairing", take_in_then_release)
    return releases, calls


async def test_a_restoration_retried_after_its_outages_release_is_forwarded_whatever_is_released_during_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restoration could pair with two suppressed AD1s of its meter (two reboots in one activation window);
    it restores the first (its outage began at the interruption time). The first is released during the
    batch, the second during the batch's retry. The retry forwards the restoration: its nearest outage is the
    released one (kept, marked released), so it pairs with neither, and the second release cannot refuse it."""
    lab = make_lab(
        "release-during-retry", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000
    )
    request, response, ad1, restoration = release_story(lab)
    again = second_reboot(lab)
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
        config = write_toml(cfg, tmp_path / "gateway.toml")
        service = make_service(build_gateway(cfg))
        async with running(service):
            proc = service.processor
            assert proc is not None
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                outages = await suppressed_after_activation(dsp, request, response, ad1, again)
                restored, other = (str(a.message_id) for a in outages)
                releases, _calls = release_at_take_ins(monkeypatch, proc, config, [restored, other])
                after = await dsp.post(restoration)
                assert (after.status, after.decision) == (200, "forward")
                assert len(releases) == 2  # the batch and its one retry
            assert [r.returncode for r in releases] == [0, 0], [r.stderr for r in releases]
            assert counters(service, REFUSALS) == {("local",): 1.0, ("shared",): 0.0}  # the batch only
            await receiver.wait_for(3)
        assert decisions_of(cfg, str(after.message_id)) == [("forward", "not-paired")]
    finally:
        await receiver.stop()
    assert sorted(r.body for r in receiver.log) == sorted([ad1.body, again.body, restoration.body])


async def test_a_second_release_during_the_retry_fails_the_job_once_and_its_redelivery_is_forwarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry is bounded. One ingress frame (one batch) holds two restorations of the meter, each restoring
    one of its two suppressed AD1s. The first AD1 is released during the batch: the batch is refused, and each
    job decided again after taking the releases in. The first restoration is forwarded (its outage released);
    the second AD1 is released during the second job's retry (after its take-in, before its commit), so that
    retry pairs its restoration with an AD1 released meanwhile. It is not decided a third time: answered 503
    (the refusal) with nothing of it durable, and the DSP's re-delivery, after the take-in, is forwarded."""
    lab = make_lab(
        "release-during-retry", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000
    )
    request, response, ad1, restoration = release_story(lab)
    esme, _ch, _mpan = lab.world.meter(1)
    t = lab.demo.t
    f = lab.world.factory
    again = second_reboot(lab)
    # the restoration of the second reboot (its interruption at that AD1's start)
    restoration2 = TimedMessage(
        t("08:09:05"), "inline", f.restoration(esme, t("08:03:50"), t("08:05:25"), t("08:09:05"))
    )
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
        config = write_toml(cfg, tmp_path / "gateway.toml")
        service = make_service(build_gateway(cfg))
        async with running(service):
            proc = service.processor
            assert proc is not None
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                outages = await suppressed_after_activation(dsp, request, response, ad1, again)
                first, second = (str(a.message_id) for a in outages)
                # take-ins: the batch's (then the first release), the first job's retry, the second job's retry
                # (then the second release)
                releases, calls = release_at_take_ins(monkeypatch, proc, config, [first, None, second])
                frame = [
                    (m, proc.classifier.classify("inline", m.body, m.at)) for m in (restoration, restoration2)
                ]
                dest = cfg.destinations[0].name
                answers = await proc.accept_classified_many(
                    [(Lane.INLINE, dest, m.body, m.at, c) for m, c in frame]
                )
                assert calls == [0, 1, 2]  # the batch and each job's one retry: no third attempt
                kept, refused = answers
                assert isinstance(kept, AcceptResult) and (kept.status, kept.decision, kept.reason) == (
                    200,
                    "forward",
                    "not-paired",
                )
                # answered 503 (the store's refusal), as a frame's refused job is
                assert isinstance(refused, StoreUnavailable) and PairedWithReleasedOutage.code in str(
                    refused
                ), refused
                ids = [c.events[0].message_id for _m, c in frame]
                assert decisions_of(cfg, ids[1]) == []  # nothing of it durable
                redelivered = await dsp.post(restoration2)
                assert (redelivered.status, redelivered.decision) == (200, "forward")
            assert [r.returncode for r in releases] == [0, 0], [r.stderr for r in releases]
            assert operator_releases(service) == {RELEASED: 2.0}
            assert counters(service, REFUSALS) == {
                ("local",): 2.0,
                ("shared",): 0.0,
            }  # the batch, then one job
            await receiver.wait_for(4)
        assert [decisions_of(cfg, i) for i in ids] == [[("forward", "not-paired")]] * 2
    finally:
        await receiver.stop()
    assert sorted(r.body for r in receiver.log) == sorted(
        [ad1.body, again.body, restoration.body, restoration2.body]
    )
