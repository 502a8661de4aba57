"""A GUID list or inventory source that is not there at all when serve starts (a workbook on a network
mount briefly absent) is handled as one that is refused: serve starts on the last good form imported from
that very source, flagged stale until a reload imports it, and ``duisgw config check`` warns of it; with no
such form the file is refused (exit 2) with the reason. Through the real start path: the config file read by
:func:`load_serve_config` (the validation of ``serve`` and ``config check``), then :func:`build_gateway`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from servicekit import counters, running

from gateway.cli import main
from gateway.mpan import with_check_digit
from gateway.service.config import ConfigError
from gateway.service.serve import (
    GUIDS_BIN,
    INVENTORY_LAST_GOOD,
    Gateway,
    build_gateway,
    load_serve_config,
    make_service,
)
from gateway.testkit.scenario import World
from gbcs.eui import format_eui

AFFECTED = [0x00DB123400000000 + i for i in range(1, 101)]
WITHDRAWN = 0x00DB1234FFFF0001
HUBS = [0x00DB567800000000 + i for i in range(1, 101)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return World.generated("missing-reference").write_reference(tmp_path_factory.mktemp("reference"))


def _guids(path: Path, euis: list[int]) -> Path:
    path.write_text("ESME GUID\n" + "".join(f"{format_eui(e)}\n" for e in euis), encoding="utf-8")
    return path


def _inventory(path: Path, count: int = len(AFFECTED)) -> Path:
    rows = ["esme,comms_hub,mpxn"] + [
        f"{format_eui(e)},{format_eui(h)},{with_check_digit(str(101234567890 + i))}"
        for i, (e, h) in enumerate(zip(AFFECTED[:count], HUBS[:count], strict=True))
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _config(
    tmp_path: Path, reference: dict[str, Path], *, mode: str = "pipeline", state_dir: str = "state"
) -> Path:
    """A config file naming the sources as an operator does: relative to its folder."""
    path = tmp_path / "gw.toml"
    path.write_text(
        f'mode = "{mode}"\nclock = "message"\n\n'
        '[server]\nhost = "127.0.0.1"\nport = 0\n\n'
        '[admin]\nhost = "127.0.0.1"\nport = 0\n\n'
        '[store]\npath = "gw.sqlite3"\nsynchronous = "NORMAL"\n\n'
        f'[pipeline]\nstate_dir = "{state_dir}"\ncertificates = "{reference["certs"]}"\n'
        f'gbcs_keys = "{reference["gbcs_keys"]}"\nguids = "guids.csv"\ninventory = "inventory.csv"\n'
        'synchronous = "NORMAL"\n',
        encoding="utf-8",
    )
    return path


def _start(config: Path) -> Gateway:
    """What ``duisgw serve`` does before it listens: validate the file, then load the reference data."""
    cfg, _base = load_serve_config(config)
    return build_gateway(cfg)


def _check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["config", "check", str(config)])
    out = capsys.readouterr()
    return code, out.out, out.err


async def _admin(http: aiohttp.ClientSession, port: int, method: str, path: str) -> tuple[int, Any]:
    async with http.request(method, f"http://127.0.0.1:{port}{path}") as resp:
        body = await resp.text()
        return resp.status, json.loads(body) if resp.content_type == "application/json" else body


@pytest.fixture
def sources(tmp_path: Path, reference: dict[str, Path]) -> tuple[Path, Path, Path]:
    """A config file and its two sources, imported once (state/guids.bin, state/inventory.last-good.csv)."""
    guids = _guids(tmp_path / "guids.csv", AFFECTED)
    inventory = _inventory(tmp_path / "inventory.csv")
    config = _config(tmp_path, reference)
    first = _start(config)
    assert first.stale == {} and len(first.guids) == len(AFFECTED) and len(first.inventory) == len(AFFECTED)
    return config, guids, inventory


async def test_a_start_with_the_guid_source_missing_runs_on_the_last_good_list_flagged_stale_until_a_reload(
    sources: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # serve exited 2 in config validation ("pipeline.guids: file not found"), stopping every DNO's
    # traffic, while a refused (present but unusable) source started on the same last good list
    config, guids, _inventory_path = sources
    guids.unlink()
    with caplog.at_level(logging.ERROR, logger="duisgw.serve"):
        gateway = _start(config)
    assert set(gateway.guids.current) == set(AFFECTED)
    assert gateway.stale == {"guids": f"file not found: {guids}"}
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert f"GUID list source {guids} could not be imported (file not found: {guids})" in message
    assert f"starting with the last good list imported from it: {len(AFFECTED)} EUIs" in message

    service = make_service(gateway)
    async with running(service), aiohttp.ClientSession() as http:
        port = service.admin_port
        assert await _admin(http, port, "GET", "/readyz") == (200, "ready\n")
        stale = counters(service, "duisgw_reference_stale", ("stale",))
        assert stale[("guids",)] == 1.0 and stale[("inventory",)] == 0.0
        status, state = await _admin(http, port, "GET", "/admin/state")
        assert status == 200 and state["guids"] == len(AFFECTED)
        assert state["stale"] == {"guids": f"file not found: {guids}"}

        status, failed = await _admin(http, port, "POST", "/admin/reload")  # still missing
        assert status == 422 and str(guids) in failed["error"]
        assert counters(service, "duisgw_reference_stale", ("stale",))[("guids",)] == 1.0

        _guids(guids, [*AFFECTED, WITHDRAWN])  # the mount is back, with a newer list
        status, report = await _admin(http, port, "POST", "/admin/reload")
        assert status == 200 and report["guids"]["count"] == len(AFFECTED) + 1
        assert WITHDRAWN in gateway.guids and gateway.stale == {}
        assert counters(service, "duisgw_reference_stale", ("stale",))[("guids",)] == 0.0
        assert (await _admin(http, port, "GET", "/admin/state"))[1]["stale"] == {}


async def test_a_start_with_the_inventory_source_missing_runs_on_the_last_good_snapshot_flagged_stale(
    sources: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    config, _guids_path, inventory = sources
    inventory.unlink()
    with caplog.at_level(logging.ERROR, logger="duisgw.serve"):
        gateway = _start(config)
    assert len(gateway.inventory) == len(AFFECTED)
    assert list(gateway.inventory.current.esmes_for_ch(HUBS[3])) == [AFFECTED[3]]
    why = f"inventory_import: no such file: {inventory}"  # the importer's named error
    assert gateway.stale == {"inventory": why}
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"inventory source {inventory} could not be imported ({why})" in record.getMessage()

    service = make_service(gateway)
    async with running(service), aiohttp.ClientSession() as http:
        port = service.admin_port
        stale = counters(service, "duisgw_reference_stale", ("stale",))
        assert stale[("inventory",)] == 1.0 and stale[("guids",)] == 0.0
        status, state = await _admin(http, port, "GET", "/admin/state")
        assert state["stale"] == {"inventory": why}

        _inventory(inventory, count=50)  # back, with another snapshot
        status, report = await _admin(http, port, "POST", "/admin/reload")
        assert status == 200 and report["inventory"]["count"] == 50
        assert counters(service, "duisgw_reference_stale", ("stale",))[("inventory",)] == 0.0
        assert gateway.stale == {}


@pytest.mark.parametrize("option", ["guids", "inventory"])
def test_config_check_warns_of_a_missing_source_naming_the_last_good_form_serve_starts_on(
    sources: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], option: str
) -> None:
    config, guids, inventory = sources
    capsys.readouterr()
    (guids if option == "guids" else inventory).unlink()
    code, out, err = _check(config, capsys)
    assert code == 0 and "ok (" in out  # it was 2: serve now starts on this file
    [warning] = err.splitlines()
    state = config.parent / "state"
    if option == "guids":
        assert warning.startswith(
            f"duisgw config: warning: pipeline.guids: file not found: {guids}; serve starts on the last good "
            f"list imported from it ({state / GUIDS_BIN}: {len(AFFECTED)} EUIs, imported 20"
        )
    else:
        assert warning.startswith(
            f"duisgw config: warning: pipeline.inventory: file not found: {inventory}; serve starts on the "
            f"last good snapshot taken from it ({state / INVENTORY_LAST_GOOD}: {len(AFFECTED)} ESMEs, imported 20"
        )
    assert warning.endswith("flagged stale until a reload imports the source")
    assert main(["config", "check", "--quiet", str(config)]) == 0
    assert capsys.readouterr().err == err  # said even with --quiet


def _no_state(tmp_path: Path, reference: dict[str, Path]) -> None:
    pass


def _other_source(tmp_path: Path, reference: dict[str, Path]) -> None:
    """The state folder holds the forms imported from other files (another config's sources)."""
    other = tmp_path / "other"
    other.mkdir()
    _guids(other / "guids.csv", AFFECTED)
    _inventory(other / "inventory.csv")
    config = _config(other, reference, state_dir=str(tmp_path / "state"))
    _start(config)


@pytest.mark.parametrize(
    ("option", "before", "why"),
    [
        ("guids", _no_state, "no last good GUID list to start with: {state}/guids.bin does not exist"),
        ("inventory", _no_state, "no last good inventory to start with: {state}/inventory.last-good.csv does not exist"),
        ("guids", _other_source, "no last good GUID list to start with: {state}/guids.bin was imported from another source"),
        ("inventory", _other_source, "no last good inventory to start with: {state}/inventory.last-good.csv was taken from another source"),
    ],
    ids=["guids-no-state", "inventory-no-state", "guids-other-source", "inventory-other-source"],
)  # fmt: skip
def test_a_missing_source_without_a_last_good_form_of_it_is_refused_with_the_reason(
    tmp_path: Path,
    reference: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    option: str,
    before: Any,
    why: str,
) -> None:
    before(tmp_path, reference)
    _guids(tmp_path / "guids.csv", AFFECTED)
    _inventory(tmp_path / "inventory.csv")
    (tmp_path / f"{option}.csv").unlink()
    config = _config(tmp_path, reference)
    expected = f"pipeline.{option}: file not found: {option}.csv; " + why.format(state=tmp_path / "state")
    with pytest.raises(ConfigError) as raised:
        load_serve_config(config)
    [problem] = raised.value.problems
    assert problem.startswith(expected)
    code, out, err = _check(config, capsys)
    assert (code, out) == (2, "") and err.startswith(f"duisgw config: {expected}")


def test_a_missing_source_stays_a_plain_problem_in_passthrough_mode(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    _inventory(tmp_path / "inventory.csv")
    with pytest.raises(ConfigError) as raised:
        load_serve_config(_config(tmp_path, reference, mode="passthrough"))
    assert raised.value.problems == ["pipeline.guids: file not found: guids.csv"]


def test_config_check_judges_the_last_good_inventory_by_its_recorded_digest_without_importing_it(
    sources: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1.4 M-row snapshot takes seconds to import, and serve imports it once more to start on it: the
    validation (serve's and ``config check``'s) reads only its record and its SHA-256."""
    config, _guids_csv, inventory = sources
    inventory.unlink()
    capsys.readouterr()

    def no_import(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the validation imported the last good inventory")

    monkeypatch.setattr("gateway.service.serve.import_inventory_csv", no_import)
    code, _out, err = _check(config, capsys)
    assert code == 0
    assert f"({config.parent / 'state' / INVENTORY_LAST_GOOD}: {len(AFFECTED)} ESMEs, imported 20" in err


def test_a_last_good_inventory_whose_bytes_changed_is_refused_by_the_check(
    sources: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _guids_csv, inventory = sources
    inventory.unlink()
    copy = config.parent / "state" / INVENTORY_LAST_GOOD
    copy.write_bytes(copy.read_bytes().replace(b"\n", b"\r\n", 1))  # still a good CSV, not the one recorded
    with pytest.raises(ConfigError) as raised:
        load_serve_config(config)
    [problem] = raised.value.problems
    assert problem.endswith(
        f"no last good inventory to start with: {copy} is not the snapshot {copy.name}.import describes"
    )


def test_a_last_good_inventory_recorded_without_its_count_is_named_without_one(
    sources: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A record written before the count was kept (an earlier version's) still lets the snapshot stand in."""
    config, _guids_csv, inventory = sources
    inventory.unlink()
    record = config.parent / "state" / f"{INVENTORY_LAST_GOOD}.import"
    settings = json.loads(record.read_text(encoding="utf-8"))
    assert settings.pop("esmes") == len(AFFECTED)
    record.write_text(json.dumps(settings), encoding="utf-8")
    capsys.readouterr()
    code, _out, err = _check(config, capsys)
    assert code == 0
    assert f"({config.parent / 'state' / INVENTORY_LAST_GOOD}: imported 20" in err
    gateway = _start(config)  # and serve starts on it
    assert len(gateway.inventory) == len(AFFECTED) and "inventory" in gateway.stale
