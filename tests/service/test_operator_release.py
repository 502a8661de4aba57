"""An operator releases a suppressed AD1 (``duisgw audit release``, another process) while the gateway runs:
the gateway's redelivery scan delivers it and drops its suppressed-outage record, so the restoration alert
of that outage is forwarded too (the DNO that got the outage must get its restoration)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running

from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.store.sqlite import SqliteStore


async def test_a_released_outage_reaches_the_dno_and_its_restoration_is_not_paired_away(tmp_path: Path) -> None:
    lab = make_lab("operator-release", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    steps = {s.label: s for s in lab.demo.steps}
    request, response, ad1, restoration = (
        TimedMessage(steps[label].at, steps[label].lane, steps[label].body)
        for label in ("11.3 request, meter 1 (immediate)", "11.3 response: success", "AD1 meter 1 (reboot)",
                      "8F36 restoration meter 1")
    )  # fmt: skip
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
                await dsp.post(request)
                await dsp.post(response)
                suppressed = await dsp.post(ad1)
                assert (suppressed.status, suppressed.decision) == (200, "suppress")
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
