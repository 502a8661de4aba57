"""Admin listener review (twentieth session): what an unauthenticated client can do to the admin listener.

1. The 401 log line names the request's path. aiohttp's ``request.path`` is percent-decoded, so
   ``/admin/x%0A...`` put a line break (and any control character) in the message: with
   ``[logging] format = "text"`` anyone reaching the port forged log lines. The path is logged escaped.
2. The default admin listener (127.0.0.1, no token: the loopback rule lets it go without one) answered
   a web browser: any page the operator opens can POST cross-site to ``http://127.0.0.1:9108`` (a
   "simple" request: no preflight), and ``/admin/tick`` read its JSON from a ``text/plain`` body, so a
   page moved the engine clock for good (``clock = "message"``) or fired reloads. A request a browser
   marks as made by a page (``Origin``, ``Sec-Fetch-Site`` other than ``none``) is refused (403) on
   the control endpoints, the clock unmoved; scripts, curl and ``duisgw demo`` send neither.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import aiohttp
import pytest
import yarl
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running, service_config

from gateway.service.app import Service
from gateway.service.config import AdminConfig
from gateway.service.serve import build_gateway, make_service

TOKEN = "0123456789abcdef0123456789abcdef"


async def test_a_refused_path_cannot_put_a_line_break_or_control_character_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "admin.token").write_text(TOKEN + "\n")
    cfg = service_config(tmp_path, admin=AdminConfig(host="127.0.0.1", port=0, token_file="admin.token"))
    forged = "/admin/x%0D%0A2026-11-25%2001:00:00,000%20INFO%20duisgw.service:%20admin%20token%20reloaded%1B%5B2J"
    with caplog.at_level(logging.WARNING, logger="duisgw.service"):
        async with running(Service(cfg, base_dir=tmp_path)) as svc, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{svc.admin_port}{forged}"
            async with http.get(yarl_encoded(url)) as resp:
                assert resp.status == 401
    refusals = [r for r in caplog.records if "admin request refused" in r.getMessage()]
    assert len(refusals) == 1
    message = refusals[0].getMessage()
    for ch in ("\n", "\r", "\x1b"):
        assert ch not in message and ch not in str(refusals[0].__dict__["path"]), repr(message)
    assert "/admin/x" in message  # still names the path, escaped
    line = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(refusals[0])
    assert len(line.splitlines()) == 1


def yarl_encoded(url: str) -> yarl.URL:
    return yarl.URL(url, encoded=True)


async def test_a_web_page_cannot_move_the_clock_or_reload_through_a_tokenless_loopback_admin_listener(
    tmp_path: Path, receiver: Receiver
) -> None:
    lab = make_lab("admin-csrf", tmp_path / "reference", stream=0, first_meter=360, first_counter=3600)
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
    cfg = dataclasses.replace(cfg, admin=AdminConfig(host="127.0.0.1", port=0))  # the default: no token
    service = make_service(build_gateway(cfg))
    async with running(service), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{service.admin_port}"

        async def clock() -> str | None:
            async with http.get(base + "/admin/state") as resp:
                assert resp.status == 200
                return (await resp.json())["clock"]

        before = await clock()
        # what fetch(url, {method: "POST", mode: "no-cors", body: JSON.stringify(...)}) sends
        page = {"Origin": "https://attacker.example", "Content-Type": "text/plain;charset=UTF-8",
                "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
        async with http.post(base + "/admin/tick", data=b'{"now": "2099-01-01T00:00:00Z"}', headers=page) as resp:
            assert resp.status == 403, await resp.text()
        assert await clock() == before
        async with http.post(base + "/admin/reload", headers={"Origin": "null"}) as resp:
            assert resp.status == 403
        async with http.get(base + "/admin/state", headers={"Sec-Fetch-Site": "same-origin"}) as resp:
            assert resp.status == 403  # a rebound name: the page is same-origin with the listener
        # probes and scrapers are not browsers' pages, and the metrics stay open to them
        async with http.get(base + "/metrics", headers={"Origin": "https://grafana.example"}) as resp:
            assert resp.status == 200
        # a script (no Origin; curl, duisgw demo) still moves it
        async with http.post(base + "/admin/tick", json={"now": "2030-01-01T00:00:00Z"},
                             headers={"Sec-Fetch-Site": "none"}) as resp:
            assert resp.status == 200
        assert (await clock() or "").startswith("2030-01-01")


async def test_a_storm_of_reload_requests_runs_a_bounded_number_of_reloads_and_answers_each(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """``POST /admin/reload`` N times at once (a retrying client, a deploy tool hitting every host): each
    used to queue a whole reload of its own behind the others (GUID list, inventory merge, SMKI, GBCS key
    index: seconds each on a real estate), so N requests held the reload lock for N reloads. A request
    that comes while a reload is waiting to begin joins that one (it reads the files after the request
    came, so its answer is as fresh as one of its own): at most the one running and one more."""
    lab = make_lab("admin-storm", tmp_path / "reference", stream=0, first_meter=380, first_counter=3800)
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
    service = make_service(build_gateway(cfg))
    with caplog.at_level(logging.INFO, logger="duisgw"):
        async with running(service), aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{service.admin_port}/admin/reload"

            async def reload() -> tuple[int, str]:
                async with http.post(url) as resp:
                    return resp.status, (await resp.json())["status"]

            caplog.clear()
            answers = await asyncio.gather(*(reload() for _ in range(20)))
            assert answers == [(200, "reloaded")] * 20
            runs = [r for r in caplog.records if r.getMessage().startswith("reference data reloaded")]
            assert 1 <= len(runs) <= 2, len(runs)
            # and one after the storm still reloads (nothing left joined to a finished run)
            caplog.clear()
            assert await reload() == (200, "reloaded")
            assert len([r for r in caplog.records if r.getMessage().startswith("reference data reloaded")]) == 1
