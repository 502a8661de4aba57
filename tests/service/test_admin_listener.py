"""With ``[admin] enabled = false`` the DSP-facing listener serves /metrics, /healthz and /readyz, but never
the control endpoints (/admin/reload, /admin/state, /admin/tick): whoever can reach the DUIS port must not
be able to move the gateway's clock or reload its reference data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running

from gateway.service.config import AdminConfig
from gateway.service.serve import build_gateway, make_service


async def test_without_an_admin_listener_the_control_endpoints_are_not_served_on_the_dsp_port(tmp_path: Path, receiver: Receiver) -> None:
    lab = make_lab("admin-off", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
    cfg = dataclasses.replace(cfg, admin=AdminConfig(enabled=False))
    service = make_service(build_gateway(cfg))
    async with running(service), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{service.port}"
        for path in ("/metrics", "/healthz", "/readyz"):
            async with http.get(base + path) as resp:
                assert resp.status == 200, path
        async with http.post(base + "/admin/tick", json={"now": "2030-01-01T00:00:00Z"}) as resp:
            assert resp.status in (404, 405)
        async with http.post(base + "/admin/reload") as resp:
            assert resp.status in (404, 405)
        async with http.get(base + "/admin/state") as resp:
            assert resp.status in (404, 405)


async def test_admin_tick_refuses_a_time_the_engine_cannot_compute_with_and_keeps_its_clock(tmp_path: Path, receiver: Receiver) -> None:
    """``POST /admin/tick`` (message clock) moves the engine clock, which never goes back: a date at the
    calendar's end (9999-12-31) used to be taken, and every later tick then failed with OverflowError.
    It is a 400 naming the reason now, the clock stays where it was, and a sane tick still works."""
    lab = make_lab("admin-tick", tmp_path / "reference", stream=0, first_meter=320, first_counter=3200)
    service = make_service(build_gateway(pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)))
    async with running(service), aiohttp.ClientSession() as http:
        tick = f"http://127.0.0.1:{service.admin_port}/admin/tick"
        for absurd in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00"):
            async with http.post(tick, json={"now": absurd}) as resp:
                assert resp.status == 400, absurd
                error = (await resp.json())["error"]
                assert "cannot be a message's arrival" in error
                assert error.startswith('the tick\'s "now"') and "X-DUISGW-Arrival" not in error, error
        async with http.post(tick, json={"now": "2030-01-01T00:00:00Z"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["released"] == []
