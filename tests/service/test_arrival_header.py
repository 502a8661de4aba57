"""``clock = "message"``: a malformed ``X-DUISGW-Arrival`` header is bad input like any other 400 — the
bytes are kept in the rejects table with the reason ``bad_arrival_header`` and counted in
``duisgw_rejects_total`` (and ``duisgw_http_requests_total``), in the gateway process and in ingress
worker processes alike; nothing is decided or delivered."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running, timed

from gateway.service.app import Service
from gateway.service.processor import ARRIVAL_HEADER, GatewayProcessor
from gateway.service.serve import build_gateway, make_service


def counters(service: Service, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels.values()): s.value
        for m in service.metrics.registry.collect()
        if m.name == name
        for s in m.samples
        if s.name.endswith("_total")
    }


@pytest.mark.parametrize("ingress_processes", [0, 1], ids=["gateway-process", "ingress-worker"])
async def test_a_bad_arrival_header_is_a_kept_and_counted_reject(tmp_path: Path, ingress_processes: int) -> None:
    lab = make_lab("bad-arrival", tmp_path / "reference", stream=1, first_meter=300, first_counter=3000)
    [ad1] = timed(lab.stream)
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
        cfg = replace(cfg, server=replace(cfg.server, ingress_processes=ingress_processes))
        service = make_service(build_gateway(cfg))
        async with running(service), aiohttp.ClientSession() as http:
            headers = {"Content-Type": "application/xml", ARRIVAL_HEADER: "yesterday-ish"}
            async with http.post(f"http://127.0.0.1:{service.port}/duis/dno/{DNO_USER}", data=ad1.body,
                                 headers=headers) as resp:  # fmt: skip
                status, text = resp.status, await resp.text()
            kept = await service.rejects.all()
            rejects = counters(service, "duisgw_rejects")
            requests = counters(service, "duisgw_http_requests")
            proc = service.processor
            assert isinstance(proc, GatewayProcessor) and proc.durable is not None
            store = proc.durable.store
            decided = await proc.call(store.messages)
        assert status == 400 and text.startswith("bad_arrival_header: "), (status, text)
        assert "yesterday-ish" in text
        assert [(r["lane"], r["user"], r["reason"], bytes(r["body"])) for r in kept] == [
            ("inline", "dno-a", "bad_arrival_header", ad1.body)
        ]
        assert "yesterday-ish" in kept[0]["detail"]
        assert rejects == {("inline", "bad_arrival_header"): 1.0}
        assert requests == {("inline", "400"): 1.0}
        assert decided == []  # nothing reached the engine
        assert receiver.log == []
    finally:
        await receiver.stop()
