"""A reload under traffic: the inventory's merge with the links learned from traffic (every learned link
re-applied on top of the new snapshot) must not run on the event loop, which serves the ingress, the admin
listener (``/healthz``, ``/readyz``, ``/metrics``) and the outbox: with many links learned (every 8.2 Read
Inventory response teaches one) the merge takes seconds, and every request the loop should answer waited for
it (a load balancer's probe timed out, a DSP request in flight stalled)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from pathlib import Path

from servicekit import DNO_USER, pipeline_config, running

from gateway.service.serve import build_gateway, make_service
from gateway.testkit.scenario import World

#: links learned from traffic before the reload (scaled down from a 1.4 M-meter estate: the merge costs
#: about 8 µs a link here, so this is a merge of about 1 s; at 1.4 M learned links it is about 11 s)
LEARNED = 120_000


class Prober(threading.Thread):
    """``GET url`` every 10 ms from a thread of its own (a load balancer's probe: not on the gateway's loop),
    keeping the slowest answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.slowest, self.answers = url, 0.0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as resp:
                assert resp.status == 200
            self.slowest = max(self.slowest, time.perf_counter() - t)
            self.answers += 1
            self.stop.wait(0.01)


async def test_a_reload_merging_many_learned_links_keeps_the_event_loop_answering(tmp_path: Path) -> None:
    world = World.generated("reload-loop")
    reference = world.write_reference(tmp_path / "reference")
    gateway = build_gateway(pipeline_config(tmp_path, reference, "http://127.0.0.1:9/", DNO_USER))
    base_esme, base_ch = 0x00AA_0000_0000_0000, 0x00BB_0000_0000_0000
    for i in range(LEARNED):  # as the engine learns them from 8.2 responses (newer than any snapshot)
        gateway.inventory.learn(base_esme + i, ch=base_ch + i // 4, at=2_000_000_000.0)
    generation = gateway.inventory.generation
    service = make_service(gateway)
    async with running(service):
        prober = Prober(f"http://127.0.0.1:{service.admin_port}/healthz")
        prober.start()
        try:
            began = time.perf_counter()
            report = await gateway.reload()
            took = time.perf_counter() - began
        finally:
            prober.stop.set()
            await asyncio.to_thread(prober.join, 30)  # the loop answers its last probe meanwhile
    assert report["inventory"]["status"] == "reloaded", report
    assert gateway.inventory.generation == generation + 1
    assert report["inventory"]["kept"] == LEARNED  # every learned link survived the new snapshot
    assert gateway.inventory.ch_for_esme(base_esme + LEARNED - 1) == base_ch + (LEARNED - 1) // 4
    # the reload itself takes a while (the merge); the loop answers all along
    assert prober.slowest < 0.3, f"/healthz waited {prober.slowest:.2f} s during a {took:.2f} s reload"
    assert prober.answers > 5
