"""A running gateway given a signed restoration alert whose device marks its interruption time invalid
(DLMS clock status bit 0): forwarded (``not-paired``) although its AD1 was suppressed, the problem counted in
``duisgw_verify_failures_total{reason="device-clock-unreliable"}``, and the durable audit record of the
decision carries the flag and the evidence that say why. The same alert with a clean clock status is
suppressed as paired and counts nothing. Only the clean restoration's age (and the AD1's) is observed in
``duisgw_late_alert_age_seconds``."""

from __future__ import annotations

from pathlib import Path

from servicekit import DNO_USER, Receiver, counters, pipeline_config, running

from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.scenario import Scenario, World


async def test_a_restoration_with_an_invalid_device_clock_is_forwarded_counted_and_audited(
    tmp_path: Path, receiver: Receiver
) -> None:
    world = World.generated("clock-status")
    s = Scenario("clock-status", world)
    esme, ch, mpan = world.meter(1)
    f = world.factory
    response = f.activate_response(esme, 1000, s.t("09:00:40"))
    ad1 = f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1)
    invalid = f.restoration(esme, s.t("09:03:30"), s.t("09:06"), s.t("09:08"), interruption_clock_status=0x01)
    clean = f.restoration(esme, s.t("09:03:30"), s.t("09:06"), s.t("09:09"))
    reference = world.write_reference(tmp_path / "reference")
    service = make_service(build_gateway(pipeline_config(tmp_path, reference, receiver.url, DNO_USER)))
    async with running(service):
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            await dsp.post(TimedMessage(s.t("09:00:40"), "observe", response))
            answers = [
                await dsp.post(TimedMessage(s.t(at), "inline", body))
                for at, body in (("09:07", ad1), ("09:08", invalid), ("09:09", clean))
            ]
        failures = counters(service, "duisgw_verify_failures")
        lateness = [counters(service, "duisgw_late_alert_age_seconds", (end,)) for end in ("_count", "_sum")]
        proc = service.processor
        assert isinstance(proc, GatewayProcessor) and proc.durable is not None
        store = proc.durable.store
        audit = await proc.call(store.audit)
    assert [(a.status, a.decision) for a in answers] == [
        (200, "suppress"),
        (200, "forward"),
        (200, "suppress"),
    ]
    by_id = {r["message_id"]: r for r in audit}
    assert [by_id[a.message_id]["reason"] for a in answers] == [
        "activation-window",
        "not-paired",
        "restoration-paired",
    ]
    assert failures == {("device-clock-unreliable",): 1.0}
    # the AD1 (arrived 09:07, started 09:03:30) and the clean restoration (arrived 09:09, interrupted
    # 09:03:30) are observed; the doubted interruption time is not
    assert lateness == [{(): 2.0}, {(): 210.0 + 330.0}]
    record = by_id[answers[1].message_id]
    assert record["flags"] == ["device-clock-unreliable"]
    [evidence] = record["evidence"]
    assert evidence["role"] == "device-clock-unreliable"
    assert evidence["detail"] == "interruption date-time clock status 0x01 (invalid-value)"
