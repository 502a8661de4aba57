"""A running gateway whose GBCS key store lacks the supplier's DS certificate: an SR 11.3 CV5 request
(SignedPreCommand) on the observation lane is recorded as unverified evidence — its reason counted in
``duisgw_verify_failures_total{reason="gbcs-signature-unverifiable"}`` and kept with its bytes in the
decision store — and the AD1 that follows is forwarded (``evidence-unverified``), not held as it is
when the pre-command verifies."""

from __future__ import annotations

from pathlib import Path

import pytest
from servicekit import DNO_USER, Receiver, counters, pipeline_config, running

from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.messages import SUPPLIER_EUI
from gateway.testkit.scenario import Scenario, World


@pytest.mark.parametrize("supplier_key", [True, False], ids=["supplier-key-known", "supplier-key-missing"])
async def test_a_pre_command_signature_that_cannot_be_checked_is_counted_kept_and_not_evidence(
    tmp_path: Path, supplier_key: bool, receiver: Receiver
) -> None:
    world = World.generated("pre-command")
    s = Scenario("pre-command", world)
    esme, ch, mpan = world.meter(1)
    request = world.factory.activate_request(esme, 6001, signed_pre_command=True)
    ad1 = world.factory.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 101)
    reference = world.write_reference(tmp_path / "reference")
    if not supplier_key:
        (reference["gbcs_keys"] / f"{SUPPLIER_EUI:016x}-ds.pem").unlink()
    service = make_service(build_gateway(pipeline_config(tmp_path, reference, receiver.url, DNO_USER)))
    async with running(service):
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            observed = await dsp.post(TimedMessage(s.t("09:00"), "observe", request))
            answer = await dsp.post(TimedMessage(s.t("09:07"), "inline", ad1))
        failures = counters(service, "duisgw_verify_failures")
        proc = service.processor
        assert isinstance(proc, GatewayProcessor) and proc.durable is not None
        store = proc.durable.store
        kept = {m["message_id"]: m for m in await proc.call(store.messages)}
    assert observed.status == 204
    row = kept[str(observed.message_id)]
    assert (row["lane"], bytes(row["raw"])) == ("observation", request)
    if supplier_key:  # verified: the activation is pending, the AD1 waits for its outcome
        assert failures == {}
        assert row["status"] == "observed" and row["reason"] == ""
        assert (answer.status, answer.decision) == (202, "hold")
    else:
        assert failures == {("gbcs-signature-unverifiable",): 1.0}
        assert row["status"] == "observed"
        assert row["reason"].startswith("unverified: gbcs-signature-unverifiable:"), row["reason"]
        assert (answer.status, answer.decision) == (200, "forward")
        assert kept[str(answer.message_id)]["reason"] == "evidence-unverified"
