"""Pipeline metrics: ``duisgw_held_messages`` after a restart (the holds restored from the store are
counted at start-up, not only after the next decision); ``duisgw_late_alert_age_seconds`` counts an alert
once, not again for each DCC re-delivery."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running, timed

from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator


async def metric(admin_port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        text = await resp.text()
    [line] = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


async def held_gauge(admin_port: int) -> float:
    return await metric(admin_port, "duisgw_held_messages")


async def test_the_held_gauge_counts_the_holds_restored_at_start_up(tmp_path: Path) -> None:
    lab = make_lab("held-gauge", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
        service = make_service(build_gateway(cfg))
        held = 0
        async with running(service):
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                for message in timed(lab.demo):  # up to the first message the gateway holds
                    answer = await dsp.post(message)
                    if answer.status == 202:
                        held += 1
                        break
            assert held == 1 and await held_gauge(service.admin_port) == 1.0
        again = make_service(build_gateway(cfg))
        async with running(again):
            assert await held_gauge(again.admin_port) == 1.0  # was 0 until the next decision
    finally:
        await receiver.stop()


async def test_a_re_delivered_alert_is_not_counted_again_as_a_late_alert(tmp_path: Path) -> None:
    lab = make_lab("late-once", tmp_path / "reference", stream=2, first_meter=300, first_counter=3000)
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
        service = make_service(build_gateway(cfg))
        async with running(service):
            first, second = timed(lab.stream)
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                answers = [await dsp.post(m) for m in (first, first, second)]  # the DCC re-delivers the first
            assert [(a.status, a.decision) for a in answers] == [(200, "forward")] * 3
            assert answers[0].message_id == answers[1].message_id != answers[2].message_id
            assert await metric(service.admin_port, "duisgw_late_alert_age_seconds_count") == 2.0
    finally:
        await receiver.stop()
