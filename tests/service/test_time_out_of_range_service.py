"""Through a real gateway (both ingress layouts): one unsigned 11.3 request posted to the observation lane with an
ExecutionDateTime of ``0001-01-01`` used to make every later AD1 of its ESME fail in the engine
(``OverflowError``: 503 for ever, re-delivered by the DSP, never reaching the DNO). Now the request is observed
but not used (``time-out-of-range``) and the AD1s are decided and delivered (tests/engine/test_time_out_of_range.py
pins the engine's rule)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running

from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage

MIN = datetime(1, 1, 1, tzinfo=UTC)


def unsigned(body: bytes) -> bytes:
    start, end = body.index(b"<ds:Signature"), body.index(b"</ds:Signature>") + len(b"</ds:Signature>")
    return body[:start] + body[end:]


@pytest.mark.parametrize("ingress", [0, 2], ids=["in-process", "ingress-workers"])
async def test_an_unsigned_request_executed_at_year_one_does_not_stop_the_esmes_ad1s(
    tmp_path: Path, ingress: int
) -> None:
    lab = make_lab("year-one", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    w, f = lab.world, lab.world.factory
    esme, ch, mpan = w.meter(3)
    t0 = lab.demo.t("08:00:00")
    poison = TimedMessage(t0, "observe", unsigned(f.activate_request(esme, 88006, execution=MIN)))
    ad1s = [
        TimedMessage(t0 + timedelta(minutes=n, seconds=30), "inline",
                     f.ad1(ch, mpan, t0 + timedelta(minutes=n), t0 + timedelta(minutes=n, seconds=30), 6000 + n))
        for n in (1, 2)
    ]  # fmt: skip
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
        cfg = replace(cfg, server=replace(cfg.server, ingress_processes=ingress))
        service = make_service(build_gateway(cfg))
        async with running(service):
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                observed = await dsp.post(poison)
                assert observed.status == 204
                answers = [await dsp.post(m) for m in ad1s]
                assert [(a.status, a.decision) for a in answers] == [(200, "forward")] * 2
            await receiver.wait_for(2)
    finally:
        await receiver.stop()
    assert sorted(r.body for r in receiver.log) == sorted(m.body for m in ad1s)
