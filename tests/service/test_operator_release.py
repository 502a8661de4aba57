"""An operator releases a suppressed AD1 (``duisgw audit release``, another process) while the gateway runs:
the gateway's redelivery scan delivers it and drops its suppressed-outage record, so the restoration alert
of that outage is forwarded too (the DNO that got the outage must get its restoration)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from servicekit import (
    DNO_USER,
    Receiver,
    make_lab,
    operator_releases,
    pipeline_config,
    release_story,
    running,
    suppressed_after_activation,
)

from gateway.service.config import ServiceConfig
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.store.sqlite import SqliteStore

RELEASED = ("inline", "DCCAlertMessage.AD1", "release-forward", "operator-release")


async def test_a_released_outage_reaches_the_dno_and_its_restoration_is_not_paired_away(tmp_path: Path) -> None:
    lab = make_lab("operator-release", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    request, response, ad1, restoration = release_story(lab)
    reference = lab.reference
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER)
        service = make_service(build_gateway(cfg))
        async with running(service):
            proc = service.processor
            assert proc is not None
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                (suppressed,) = await suppressed_after_activation(dsp, request, response, ad1)
                operator = SqliteStore(engine_db_path(cfg), checkpoint_interval=0)
                try:
                    operator.release_suppressed(str(suppressed.message_id), "ops", "customer has no supply",
                                                datetime.now(UTC))  # fmt: skip
                finally:
                    operator.close()
                assert await proc.redeliver() == 1  # the scan (every few seconds) finds the release
                await receiver.wait_for(1)
                after = await dsp.post(restoration)
                assert (after.status, after.decision) == (200, "forward")
                await receiver.wait_for(2)
    finally:
        await receiver.stop()
    assert [r.body for r in receiver.log] == [ad1.body, restoration.body]


@pytest.mark.parametrize("state_in_store", [True, False], ids=["one-database", "two-databases"])
async def test_an_operator_release_is_counted_once_under_its_duis_kind_even_across_a_restart(
    tmp_path: Path, state_in_store: bool
) -> None:
    """The gateway takes a release in at its scan: counted once in ``duisgw_messages``
    (``release-forward`` / ``operator-release``, under the DUIS kind), however many scans follow, and
    not again by the restarted gateway's scans; a release made while it is stopped is counted at its
    start."""
    lab = make_lab("operator-release-count", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    steps = {s.label: s for s in lab.demo.steps}
    messages = [TimedMessage(steps[label].at, steps[label].lane, steps[label].body)
                for label in ("11.3 request, meter 1 (immediate)", "11.3 response: success", "AD1 meter 1 (reboot)",
                              "11.3 response: success, meter 8", "8.2 inventory response, premises 8",
                              "AD1 meter 8 (CH learned from 8.2)")]  # fmt: skip
    receiver = Receiver()
    await receiver.start()
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER, state_in_store=state_in_store)

    def release(message_id: str) -> None:
        operator = SqliteStore(engine_db_path(cfg), checkpoint_interval=0)
        try:
            operator.release_suppressed(message_id, "ops", "customer has no supply", datetime.now(UTC))
        finally:
            operator.close()

    try:
        service = make_service(build_gateway(cfg))
        async with running(service):
            proc = service.processor
            assert proc is not None
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                answers = [await dsp.post(m) for m in sorted(messages, key=lambda m: m.at)]
            first, second = (str(a.message_id) for a in answers if a.decision == "suppress")
            release(first)
            assert operator_releases(service) == {}  # not seen yet
            assert await proc.redeliver() == 1
            assert operator_releases(service) == {RELEASED: 1.0}
            assert await proc.redeliver() == 0
            assert operator_releases(service) == {RELEASED: 1.0}
            await receiver.wait_for(1)
        release(second)  # while the gateway is stopped
        restarted = make_service(build_gateway(cfg))
        async with running(restarted):  # its start-up scan takes in the second, and only the second
            assert restarted.processor is not None
            assert operator_releases(restarted) == {RELEASED: 1.0}
            assert await restarted.processor.redeliver() == 0
            assert operator_releases(restarted) == {RELEASED: 1.0}
            await receiver.wait_for(2)
    finally:
        await receiver.stop()


@pytest.mark.parametrize("state_in_store", [True, False], ids=["one-database", "two-databases"])
async def test_a_restoration_arriving_before_the_scan_took_the_release_in_is_forwarded_not_paired(
    tmp_path: Path, state_in_store: bool
) -> None:
    """The release is recorded (``duisgw audit release``, another process) and the restoration of that
    outage arrives before the gateway's redelivery scan (every few seconds) took the release in: the
    running engine still held the AD1's suppressed-outage record in memory and paired the restoration
    away. A batch with a restoration alert takes the recorded releases in first: forwarded, in order."""
    reference = tmp_path / "reference"
    lab = make_lab("operator-release-race", reference, stream=0, first_meter=300, first_counter=3000)
    request, response, ad1, restoration = release_story(lab)
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER, state_in_store=state_in_store)
        service = make_service(build_gateway(cfg))
        async with running(service):
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                (suppressed,) = await suppressed_after_activation(dsp, request, response, ad1)
                operator = SqliteStore(engine_db_path(cfg), checkpoint_interval=0)
                try:
                    operator.release_suppressed(str(suppressed.message_id), "ops", "customer has no supply",
                                                datetime.now(UTC))  # fmt: skip
                finally:
                    operator.close()
                after = await dsp.post(restoration)  # no scan in between
                assert (after.status, after.decision) == (200, "forward")
            assert operator_releases(service) == {RELEASED: 1.0}  # taken in (and counted) once, by that batch
            assert service.processor is not None
            # the released AD1's outbox row (`audit release` writes it itself)
            assert await service.processor.redeliver() == 1
            assert operator_releases(service) == {RELEASED: 1.0}
            await receiver.wait_for(2)
        (row,) = [r for r in service_audit(cfg) if r["message_id"] == after.message_id]
        assert (row["action"], row["reason"]) == ("forward", "not-paired")
    finally:
        await receiver.stop()
    assert sorted(r.body for r in receiver.log) == sorted([ad1.body, restoration.body])


def service_audit(cfg: ServiceConfig) -> list[dict[str, object]]:
    store = SqliteStore(engine_db_path(cfg), checkpoint_interval=0)
    try:
        return list(store.audit())
    finally:
        store.close()
