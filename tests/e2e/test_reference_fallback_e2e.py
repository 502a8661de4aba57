"""``duisgw serve`` as a process, started after its GUID list or inventory source was replaced by one it
refuses: it runs on the last good list (``guids.bin``) or snapshot (``inventory.last-good.csv``) it
imported from that source (and says so in its log and metrics), or exits 2 with the reason when there is
none."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from conftest import free_port
from e2ekit import DNO_USER, GatewayProcess, Traffic, run_cli, write_config

from gateway.guids import GuidSet


def _config(tmp: Path, traffic: Traffic, guids: Path, inventory: Path | None = None) -> tuple[Path, int]:
    admin = free_port()
    dest = {"name": "dno-a", "user": DNO_USER, "url": "http://127.0.0.1:9/"}
    reference = dict(traffic.reference, **({"inventory": inventory} if inventory is not None else {}))
    cfg = write_config(tmp / "gateway.toml", port=free_port(), admin_port=admin, reference=reference,
                       destinations=[dest], guids=guids)  # fmt: skip
    return cfg, admin


def _refused(guids: Path) -> None:
    """Serial numbers where the EUIs belong: not one EUI accepted."""
    guids.write_text("ESME GUID\n" + "".join(f"LG{i:06d}\n" for i in range(50)), encoding="utf-8")


async def test_serve_started_on_a_refused_guid_list_runs_on_the_last_good_one_and_says_so(
    tmp_path: Path, traffic: Traffic
) -> None:
    guids = tmp_path / "guids.csv"
    guids.write_bytes(traffic.reference["guids"].read_bytes())
    cfg, admin = _config(tmp_path, traffic, guids)
    gw = GatewayProcess(cfg, admin)
    gw.start()  # a good import: state/guids.bin
    await gw.wait_ready()
    assert gw.terminate() == 0, gw.log_tail()
    good = GuidSet.load(tmp_path / "state" / "guids.bin")

    _refused(guids)
    gw.start()
    try:
        await gw.wait_ready()  # it exited 2 here: no DNO traffic at all until the file was fixed
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{admin}/metrics") as resp,
        ):
            metrics = await resp.text()
        assert 'duisgw_reference_stale{source="guids"} 1.0' in metrics
        state = await gw.admin("GET", "/admin/state")
        assert state["guids"] == len(good)
        assert "guids.csv: no EUI accepted (50 rows read" in state["stale"]["guids"]
    finally:
        assert gw.terminate() == 0, gw.log_tail()
    assert f"GUID list source {guids} could not be imported" in gw.log_tail(20_000)


def test_serve_exits_2_with_the_reason_when_a_refused_guid_list_has_no_last_good_one(
    tmp_path: Path, traffic: Traffic
) -> None:
    guids = tmp_path / "guids.csv"
    _refused(guids)
    cfg, _admin = _config(tmp_path, traffic, guids)
    done = run_cli("serve", "--config", str(cfg))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "duisgw serve: guid_import: guids.csv: no EUI accepted (50 rows read" in done.stderr
    assert "no last good GUID list to start with" in done.stderr and "guids.bin does not exist" in done.stderr


def _refused_inventory(inventory: Path) -> None:
    """Serial numbers where the ESME EUIs belong: not one ESME accepted."""
    rows = "".join(f"LG{i:06d},00-DB-00-00-00-00-00-01,1030006718997\n" for i in range(50))
    inventory.write_text("esme,comms_hub,mpxn\n" + rows, encoding="utf-8")


async def test_serve_started_on_a_refused_inventory_runs_on_the_last_good_snapshot_and_says_so(
    tmp_path: Path, traffic: Traffic
) -> None:
    guids = tmp_path / "guids.csv"
    guids.write_bytes(traffic.reference["guids"].read_bytes())
    inventory = tmp_path / "inventory.csv"
    inventory.write_bytes(traffic.reference["inventory"].read_bytes())
    cfg, admin = _config(tmp_path, traffic, guids, inventory)
    gw = GatewayProcess(cfg, admin)
    gw.start()  # a good import: state/inventory.last-good.csv
    await gw.wait_ready()
    good = (await gw.admin("GET", "/admin/state"))["inventory"]
    assert good > 0
    assert gw.terminate() == 0, gw.log_tail()
    assert (tmp_path / "state" / "inventory.last-good.csv").read_bytes() == inventory.read_bytes()

    _refused_inventory(inventory)
    gw.start()
    try:
        await gw.wait_ready()  # it exited 2 here
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{admin}/metrics") as resp,
        ):
            metrics = await resp.text()
        assert 'duisgw_reference_stale{source="inventory"} 1.0' in metrics
        assert 'duisgw_reference_stale{source="guids"} 0.0' in metrics
        state = await gw.admin("GET", "/admin/state")
        assert state["inventory"] == good
        assert "inventory.csv: no ESME accepted" in state["stale"]["inventory"]
    finally:
        assert gw.terminate() == 0, gw.log_tail()
    assert f"inventory source {inventory} could not be imported" in gw.log_tail(20_000)


def test_serve_exits_2_with_the_reason_when_a_refused_inventory_has_no_last_good_snapshot(
    tmp_path: Path, traffic: Traffic
) -> None:
    guids = tmp_path / "guids.csv"
    guids.write_bytes(traffic.reference["guids"].read_bytes())
    inventory = tmp_path / "inventory.csv"
    _refused_inventory(inventory)
    cfg, _admin = _config(tmp_path, traffic, guids, inventory)
    done = run_cli("serve", "--config", str(cfg))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "duisgw serve: inventory_import: inventory.csv: no ESME accepted" in done.stderr
    assert "no last good inventory to start with" in done.stderr
    assert "inventory.last-good.csv does not exist" in done.stderr


async def test_serve_started_with_its_guid_source_missing_runs_on_the_last_good_list_and_says_so(
    tmp_path: Path, traffic: Traffic
) -> None:
    # a workbook on a network mount briefly absent at start-up: serve exited 2 in config validation
    # ("pipeline.guids: file not found"), although a refused source started on the last good list
    guids = tmp_path / "guids.csv"
    guids.write_bytes(traffic.reference["guids"].read_bytes())
    cfg, admin = _config(tmp_path, traffic, guids)
    gw = GatewayProcess(cfg, admin)
    gw.start()  # a good import: state/guids.bin
    await gw.wait_ready()
    assert gw.terminate() == 0, gw.log_tail()
    good = GuidSet.load(tmp_path / "state" / "guids.bin")

    checked = run_cli("config", "check", str(cfg))
    assert checked.returncode == 0, checked.stderr
    guids.unlink()
    checked = run_cli("config", "check", str(cfg))
    assert checked.returncode == 0 and "ok (" in checked.stdout, checked.stderr
    warning = (
        f"duisgw config: warning: pipeline.guids: file not found: {guids}; serve starts on the last good list"
    )
    assert warning in checked.stderr
    gw.start()
    try:
        await gw.wait_ready()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{admin}/metrics") as resp,
        ):
            metrics = await resp.text()
        assert 'duisgw_reference_stale{source="guids"} 1.0' in metrics
        state = await gw.admin("GET", "/admin/state")
        assert state["guids"] == len(good)
        assert state["stale"] == {"guids": f"file not found: {guids}"}
    finally:
        assert gw.terminate() == 0, gw.log_tail()
    assert f"GUID list source {guids} could not be imported (file not found: {guids})" in gw.log_tail(20_000)


def test_serve_exits_2_with_the_reason_when_its_missing_guid_source_has_no_last_good_list(
    tmp_path: Path, traffic: Traffic
) -> None:
    guids = tmp_path / "guids.csv"  # never there: nothing was ever imported from it
    cfg, _admin = _config(tmp_path, traffic, guids)
    done = run_cli("serve", "--config", str(cfg))
    assert done.returncode == 2, done.stdout + done.stderr
    reason = f"duisgw serve: pipeline.guids: file not found: {guids}; no last good GUID list to start with: "
    assert reason in done.stderr
    assert "guids.bin does not exist" in done.stderr
    checked = run_cli("config", "check", str(cfg))
    assert checked.returncode == 2 and "no last good GUID list to start with" in checked.stderr


async def test_serve_started_with_its_inventory_source_missing_runs_on_the_last_good_snapshot(
    tmp_path: Path, traffic: Traffic
) -> None:
    guids = tmp_path / "guids.csv"
    guids.write_bytes(traffic.reference["guids"].read_bytes())
    inventory = tmp_path / "inventory.csv"
    inventory.write_bytes(traffic.reference["inventory"].read_bytes())
    cfg, admin = _config(tmp_path, traffic, guids, inventory)
    gw = GatewayProcess(cfg, admin)
    gw.start()  # a good import: state/inventory.last-good.csv
    await gw.wait_ready()
    good = (await gw.admin("GET", "/admin/state"))["inventory"]
    assert good > 0
    assert gw.terminate() == 0, gw.log_tail()

    inventory.unlink()
    gw.start()
    try:
        await gw.wait_ready()  # it exited 2 here (config validation)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{admin}/metrics") as resp,
        ):
            metrics = await resp.text()
        assert 'duisgw_reference_stale{source="inventory"} 1.0' in metrics
        state = await gw.admin("GET", "/admin/state")
        assert state["inventory"] == good
        assert state["stale"] == {"inventory": f"inventory_import: no such file: {inventory}"}
    finally:
        assert gw.terminate() == 0, gw.log_tail()
    assert f"inventory source {inventory} could not be imported" in gw.log_tail(20_000)
