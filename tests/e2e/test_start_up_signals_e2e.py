"""End to end: signals that reach ``duisgw serve`` while it reads its reference data at start-up.

Before the service listens, ``serve`` builds the classifier and imports the GUID list and the inventory
(``build_gateway``, in a worker thread): ~13 s for a 1.4 M-row inventory (docs/PERFORMANCE-engine.md). The
signal handlers were installed only after that, so meanwhile the signals kept their default action:

* SIGTERM killed the process (exit status -15, never 0; nothing logged) — "SIGTERM ... exit 0"
  (docs/OPERATIONS.md, *Reload, shutdown*) did not hold for a stop during start-up;
* SIGHUP — a reload, e.g. ``systemctl reload`` run by a deployment right after a restart — killed the
  gateway outright (and a service manager takes a death by SIGHUP for a clean exit: not restarted).

Now a SIGTERM (SIGINT) then stops the gateway before it starts, exit 0; a SIGHUP is a reload, run once the
service listens (the files it replaced may have been read before it came), the gateway serving on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import free_port
from e2ekit import DNO_USER, GatewayProcess, write_config

from gateway.testkit.scenario import World

pytestmark = pytest.mark.slow

ROWS = 300_000  # an inventory that takes seconds to import (a real one: 1.4 M rows, ~13 s)


def _eui(prefix: str, i: int) -> str:
    return f"{prefix}-{(i >> 16) & 255:02X}-{(i >> 8) & 255:02X}-{i & 255:02X}-00-01"


def _big_inventory(path: Path, rows: int) -> Path:
    with path.open("w", encoding="utf-8") as f:
        f.write("esme,comms_hub,mpxn,manufacturer,model\n")
        for i in range(rows):
            f.write(f"{_eui('00-DB-10', i)},{_eui('00-DC-10', i)},,L,E\n")
    return path


def _gateway(tmp: Path) -> tuple[GatewayProcess, dict[str, Path]]:
    world = World.generated("start-up-signals")
    reference = world.write_reference(tmp / "reference")
    reference = {**reference, "inventory": _big_inventory(tmp / "inventory.csv", ROWS)}
    admin = free_port()
    cfg = write_config(tmp / "gateway.toml", port=free_port(), admin_port=admin, reference=reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": "http://127.0.0.1:9/duis"}])  # fmt: skip
    return GatewayProcess(cfg, admin), reference


async def _wait_for_log(gw: GatewayProcess, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in gw.log_tail(1_000_000):
        assert gw.proc is not None and gw.proc.poll() is None, gw.log_tail()
        assert time.monotonic() < deadline, f"{text!r} not logged: {gw.log_tail()}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_while_the_reference_data_is_read_exits_0_without_starting(
    tmp_path: Path, sig: signal.Signals
) -> None:
    gw, _reference = _gateway(tmp_path)
    gw.start()
    try:
        await _wait_for_log(gw, "GUID list ready")  # the inventory import (seconds) comes next
        assert "duisgw service listening" not in gw.log_tail(1_000_000)
        assert gw.proc is not None
        gw.proc.send_signal(sig)
        rc = await asyncio.to_thread(gw.proc.wait, 60)
    finally:
        gw.kill()
    log = gw.log_tail(1_000_000)
    assert rc == 0, log  # was -15 (killed by SIGTERM)
    assert "duisgw service listening" not in log
    assert "stop requested while the reference data was being read" in log
    assert "Traceback" not in log


async def test_a_sighup_while_the_reference_data_is_read_reloads_once_serving(tmp_path: Path) -> None:
    gw, reference = _gateway(tmp_path)
    gw.start()
    try:
        await _wait_for_log(gw, "GUID list ready")  # the GUID list was read: a new one comes now
        guids = reference["guids"]
        first = guids.read_text(encoding="utf-8")
        new = guids.with_name("guids.new")
        new.write_text(first.rstrip("\n") + "\n00-DB-77-77-77-77-77-01\n", encoding="utf-8")
        os.replace(new, guids)  # replaced in one step, then the reload asked for
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        await gw.wait_ready(60)  # was: the gateway exited with -1 (killed by SIGHUP)
        before = len(first.strip().splitlines()) - 1  # (the header line)
        deadline = time.monotonic() + 30
        while (state := await gw.admin("GET", "/admin/state"))["guids"] != before + 1:
            assert time.monotonic() < deadline, f"the new GUID list is not in force: {state}, {gw.log_tail()}"
            await asyncio.sleep(0.1)
    finally:
        rc = gw.terminate()
    assert rc == 0, gw.log_tail()
    log = gw.log_tail(1_000_000)
    assert log.index("duisgw service listening") < log.index("reference data reloaded")
