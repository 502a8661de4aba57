"""``duisgw_held_messages`` after a restart: the holds restored from the store are counted at start-up,
not only after the next decision."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running, timed

from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator


async def held_gauge(admin_port: int) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        text = await resp.text()
    [line] = [ln for ln in text.splitlines() if ln.startswith("duisgw_held_messages ")]
    return float(line.split()[1])


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
