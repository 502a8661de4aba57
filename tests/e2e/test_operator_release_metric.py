"""End to end: ``duisgw audit release`` (a real CLI process) releases suppressed AD1s of a real gateway
process. The gateway takes each release in once — at its redelivery scan while it runs, at start-up for
a release made while it was stopped — and then:

* counts it in ``duisgw_messages`` under the DUIS kind with ``decision = release-forward`` and
  ``reason = operator-release`` (the action and reason the release records in the audit log), exactly
  once: a restart does not count a release again, however many scans see its row;
* no longer holds the released AD1 as a suppressed outage, so its restoration alert is forwarded (the
  CLI puts the AD1 in the outbox and flags it delivered itself, so the scan's undelivered forwards never
  showed the running gateway this release).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import Receiver, free_port
from e2ekit import DNO_USER, GatewayProcess, Traffic, run_cli, send_all, write_config
from prometheus_client.parser import text_string_to_metric_families

from gateway.service.simulate import TimedMessage

pytestmark = pytest.mark.slow

AD1 = "DCCAlertMessage.AD1"
RELEASED = ("inline", AD1, "release-forward", "operator-release")


async def operator_releases(gw: GatewayProcess) -> float:
    """``duisgw_messages_total`` of operator releases, from the admin listener's ``/metrics`` (0 if absent)."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = (s.labels.get("lane"), s.labels.get("kind"), s.labels.get("decision"), s.labels.get("reason"))
            if s.name == "duisgw_messages_total" and labels == RELEASED:
                return float(s.value)
    return 0.0


async def counted(gw: GatewayProcess, expected: float, timeout: float = 15.0) -> None:
    """Until the gateway has counted ``expected`` operator releases (its scan runs every 5 s)."""
    deadline = time.monotonic() + timeout
    while (got := await operator_releases(gw)) != expected:
        assert got < expected, f"{got} operator releases counted, expected {expected}"
        assert time.monotonic() < deadline, f"{got} operator releases counted after {timeout}s, expected {expected}"
        await asyncio.sleep(0.2)


def release(gw: GatewayProcess, message_id: str) -> None:
    done = run_cli("audit", "release", "--config", str(gw.config), message_id, "--operator", "alice",
                   "--note", "field visit: a genuine outage")  # fmt: skip
    assert done.returncode == 0, done.stderr


async def test_an_operator_release_is_counted_once_under_its_duis_kind_and_frees_its_restoration(
    tmp_path: Path, traffic: Traffic, receiver: Receiver
) -> None:
    steps = {s.label: s for s in [*traffic.demo.steps, *traffic.stream.steps]}
    first = [TimedMessage(steps[label].at, steps[label].lane, steps[label].body)
             for label in ("11.3 request, meter 1 (immediate)", "11.3 response: success", "AD1 meter 1 (reboot)",
                           "11.3 request 21", "11.3 response 21", "AD1 21 reboot")]  # fmt: skip
    restoration = steps["8F36 restoration meter 1"]
    port, admin = free_port(), free_port()
    cfg = write_config(tmp_path / "gateway.toml", port=port, admin_port=admin, reference=traffic.reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": receiver.url}])  # fmt: skip
    gw = GatewayProcess(cfg, admin)
    gw.start()
    try:
        await gw.wait_ready()
        answers = await send_all(f"http://127.0.0.1:{port}", first)
        meter1, meter21 = (str(a.message_id) for a in answers if a.decision is not None and a.status == 200)
        assert [a.decision for a in answers if a.status != 204] == ["suppress", "suppress"]

        await asyncio.to_thread(release, gw, meter1)
        await receiver.wait_for(1)  # the CLI put it in the outbox: delivered at once
        await counted(gw, 1.0)  # taken in by the scan: counted
        again = await send_all(f"http://127.0.0.1:{port}",
                               [TimedMessage(restoration.at, restoration.lane, restoration.body)])  # fmt: skip
        assert [(a.status, a.decision) for a in again] == [(200, "forward")]  # not paired with a released AD1
        await receiver.wait_for(2)
        await asyncio.sleep(5.5)  # another scan: nothing counted twice
        assert await operator_releases(gw) == 1.0
        assert gw.terminate() == 0, gw.log_tail()

        await asyncio.to_thread(release, gw, meter21)  # while the gateway is stopped
        gw.start()
        await gw.wait_ready()
        await receiver.wait_for(3)
        await counted(gw, 1.0)  # the new release, once; the one taken in before the restart is not counted again
        await asyncio.sleep(5.5)
        assert await operator_releases(gw) == 1.0
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            assert gw.terminate() == 0, gw.log_tail()
