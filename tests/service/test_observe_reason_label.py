"""The observation lane's ``duisgw_messages_total`` series carry a stable reason code: evidence that
failed a check counts under ``reason="unverified"`` whatever the check said, so the per-message
detail (device EUIs, exception text, schema messages) never becomes a label value, one time series
per device kept for the life of the process. The detail stays with the message in the store."""

from __future__ import annotations

from pathlib import Path

from servicekit import DNO_USER, Receiver, counters, pipeline_config, running

from gateway.service.app import Service
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.scenario import Scenario, World


def _observe_series(service: Service) -> dict[tuple[str, ...], float]:
    return counters(service, "duisgw_messages", where=lambda labels: labels["lane"] == "observe")


async def test_unverified_observations_of_two_devices_count_under_one_stable_reason(
    tmp_path: Path, receiver: Receiver
) -> None:
    world = World.generated("observe-reason")
    s = Scenario("observe-reason", world)
    f = world.factory
    bodies = []
    for n, counter in ((1, 7001), (2, 7002)):
        esme, _, _ = world.meter(n)
        # device-signed and DSP-signed, but addressed to the ESME itself, not the RequestID's
        # originator: not evidence, and the problem names the device
        bodies.append(f.activate_response(esme, counter, s.t("09:00"), gbcs_recipient=esme))
    reference = world.write_reference(tmp_path / "reference")
    service = make_service(build_gateway(pipeline_config(tmp_path, reference, receiver.url, DNO_USER)))
    async with running(service):
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            answers = [await dsp.post(TimedMessage(s.t("09:00"), "observe", body)) for body in bodies]
        series = _observe_series(service)
        proc = service.processor
        assert isinstance(proc, GatewayProcessor) and proc.durable is not None
        kept = {m["message_id"]: m for m in await proc.call(proc.durable.store.messages)}
    assert [a.status for a in answers] == [204, 204]
    assert series == {("observe", "ResponseMessage.GBCSPayload", "observe", "unverified"): 2.0}
    for answer, n in zip(answers, (1, 2), strict=True):  # the detail is kept with the message
        esme, _, _ = world.meter(n)
        reason = str(kept[str(answer.message_id)]["reason"])
        assert reason.startswith("unverified: gbcs-mismatch:") and f"{esme:016X}" in reason.replace("-", "")
