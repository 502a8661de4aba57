"""The GUID list and the inventory as serve reads them at start-up and on reload: which sheets and
column, when the persisted list is reused, how many rejected rows a source may have, when the last good
list stands in for a source that cannot be imported at start-up, and what the operator is told (reload
report, log, metrics)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xlsxwriter
from servicekit import counters, pipeline_config, running

from gateway.errors import DuisgwError
from gateway.guids import GuidMeta, GuidSet, file_sha256
from gateway.mpan import with_check_digit
from gateway.service import serve as serve_module
from gateway.service.serve import GUIDS_BIN, INVENTORY_LAST_GOOD, Gateway, build_gateway, make_service
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import World
from gbcs.eui import format_eui

AFFECTED = [0x00DB123400000000 + i for i in range(1, 201)]
WITHDRAWN = 0x00DB1234FFFF0001
HUBS = [0x00DB567800000000 + i for i in range(1, 201)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return World.generated("reference-inputs").write_reference(tmp_path_factory.mktemp("reference"))


def _workbook(path: Path, sheets: dict[str, list[list[str]]]) -> Path:
    wb = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False})
    for name, rows in sheets.items():
        ws = wb.add_worksheet(name)
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                ws.write_string(r, c, cell)
    wb.close()
    return path


def _inventory(path: Path, bad_rows: int = 0) -> Path:
    rows = ["esme,comms_hub,mpxn"]
    rows += [
        f"{format_eui(e)},{format_eui(h)},{with_check_digit(str(101234567890 + i))}"
        for i, (e, h) in enumerate(zip(AFFECTED, HUBS, strict=True))
    ]
    rows += [f"LG{i:06d},{format_eui(HUBS[0])},1012345678999" for i in range(bad_rows)]  # serial numbers
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _gateway(
    tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path, **pipeline: object
) -> Gateway:
    files = dict(reference, guids=guids, inventory=inventory)
    return build_gateway(
        pipeline_config(tmp_path, files, "http://127.0.0.1:9/", format_eui(DNO_EUI), **pipeline)
    )


def _list(path: Path, good: list[int], bad: int = 0) -> Path:
    path.write_text(
        "ESME GUID\n"
        + "".join(f"{format_eui(e)}\n" for e in good)
        + "".join(f"LG{i:06d}\n" for i in range(bad)),
        encoding="utf-8",
    )
    return path


async def test_a_reload_whose_sources_are_mostly_rejected_rows_keeps_the_data_in_force(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    # serial numbers pasted where the EUIs belong: the few EUIs left made a list a fraction of the
    # one in force, and it was swapped in without a word (only the CLI showed rejected rows)
    guids = _list(tmp_path / "guids.csv", AFFECTED)
    inventory = _inventory(tmp_path / "inventory.csv")
    gateway = _gateway(tmp_path, reference, guids, inventory)
    assert len(gateway.guids) == len(AFFECTED) and len(gateway.inventory) == len(AFFECTED)
    generations = (gateway.guids.generation, gateway.inventory.generation)

    _list(guids, AFFECTED[:20], bad=180)
    report = await gateway.reload()
    assert report["refused_parts"] == ["guids"] and report["guids"]["status"] == "refused"
    assert re.search(
        r"guids\.csv: 180 of 200 non-blank rows rejected \(90\.0%, more than "
        r"\[pipeline\] max_rejected_fraction = 0\.01\): .*bad_eui 180; first: row 22: bad_eui",
        report["guids"]["refused"],
    ), report["guids"]
    assert gateway.guids.generation == generations[0]
    _list(guids, AFFECTED)
    _inventory(inventory, bad_rows=40)
    report = await gateway.reload()
    assert report["refused_parts"] == ["inventory"] and report["inventory"]["status"] == "refused"
    assert re.search(
        r"inventory\.csv: 40 of 240 non-blank rows rejected .* first: row 202: bad_esme",
        report["inventory"]["refused"],
    ), report["inventory"]
    # each refused source kept its data in force; the other, still good, was taken by the same reload
    assert (gateway.guids.generation, gateway.inventory.generation) == (
        generations[0] + 1,
        generations[1] + 1,
    )
    assert len(gateway.guids) == len(AFFECTED) and len(gateway.inventory) == len(AFFECTED)

    # under the limit the source is taken, and the report and the log say what was rejected
    _inventory(inventory, bad_rows=1)
    _list(guids, AFFECTED, bad=1)
    report = await gateway.reload()
    assert report["guids"]["import"]["rejected_by_reason"] == {"bad_eui": 1}
    assert report["guids"]["import"]["first_rejected"] == [
        {"row": 202, "reason": "bad_eui", "detail": "not an EUI-64 (need 16 hex digits): 'LG000000'"}
    ]
    assert report["inventory"]["import"]["rejected_by_reason"] == {"bad_esme": 1}
    assert report["inventory"]["import"]["first_rejected"][0]["row"] == 202


async def test_the_import_log_names_rejected_rows_and_skipped_sheets(
    tmp_path: Path, reference: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    book = _workbook(
        tmp_path / "guids.xlsx",
        {
            "Readme": [["Affected meters"]],
            "Affected": [["ESME GUID"]] + [[format_eui(e)] for e in AFFECTED] + [["oops"]],
        },
    )
    with caplog.at_level(logging.INFO, logger="duisgw.serve"):
        _gateway(tmp_path, reference, book, _inventory(tmp_path / "inventory.csv"))
    [guid_log] = [r for r in caplog.records if r.getMessage().startswith("GUID list imported")]
    assert guid_log.levelno == logging.WARNING
    # the message itself says what happened (the text log format shows no extras)
    assert guid_log.getMessage() == (
        "GUID list imported from guids.xlsx: 200 EUIs; 1 rows rejected (bad_eui 1), first sheet 'Affected' "
        "row 202: bad_eui; sheets skipped: 'Readme' (no EUI column found)"
    )
    found = guid_log.__dict__["import"]
    assert '"sheets_skipped": [{"name": "Readme", "reason": "no EUI column found"}]' in found
    assert '"sheet": "Affected"' in found and '"row": 202' in found
    [inv_log] = [r for r in caplog.records if r.getMessage().startswith("inventory imported")]
    assert inv_log.levelno == logging.INFO and '"accepted": 200' in inv_log.__dict__["import"]


async def test_an_inventory_listing_other_device_types_is_taken_with_its_skipped_rows_named_in_the_log(
    tmp_path: Path, reference: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # an 8.2-style export: each hub's ESME, plus gas meters and the hubs themselves (more rows than the
    # 1 % rejection limit allows if they were counted as bad ESMEs; here they are not ESMEs at all)
    rows = ["Device ID,Device Type,Comms Hub,MPxN"]
    rows += [
        f"{format_eui(e)},ESME,{format_eui(h)},{with_check_digit(str(101234567890 + i))}"
        for i, (e, h) in enumerate(zip(AFFECTED, HUBS, strict=True))
    ]
    rows += [f"{format_eui(h + 0x10000)},GSME,{format_eui(h)},1234567890" for h in HUBS[:3]]
    rows += [f"{format_eui(h)},CHF,{format_eui(h)}," for h in HUBS[:2]]
    inventory = tmp_path / "inventory.csv"
    inventory.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="duisgw.serve"):
        gateway = _gateway(tmp_path, reference, _list(tmp_path / "guids.csv", AFFECTED), inventory)
    assert len(gateway.inventory) == len(AFFECTED) and HUBS[0] not in gateway.inventory.current
    assert gateway.inventory.esmes_for_ch(HUBS[0]) == (AFFECTED[0],)
    [inv_log] = [r for r in caplog.records if r.getMessage().startswith("inventory imported")]
    assert inv_log.levelno == logging.WARNING
    assert inv_log.getMessage() == (
        "inventory imported from inventory.csv: 200 ESMEs, 5 rows of other device types skipped (CHF 2, "
        "GSME 3); 0 rows rejected; 2 warnings (first: skipped_device_type)"
    )
    assert '"skipped_by_type": {"CHF": 2, "GSME": 3}' in inv_log.__dict__["import"]


async def test_guid_sheets_choose_the_worksheets_and_a_changed_setting_imports_the_list_again(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    book = _workbook(
        tmp_path / "guids.xlsx",
        {
            "Affected": [["ESME GUID"]] + [[format_eui(e)] for e in AFFECTED],
            "Withdrawn": [["ESME GUID"], [format_eui(WITHDRAWN)]],
        },
    )
    inventory = _inventory(tmp_path / "inventory.csv")
    every_sheet = _gateway(tmp_path, reference, book, inventory)
    assert WITHDRAWN in every_sheet.guids  # every visible sheet by default
    # the same source, guids.bin already made from it: the new setting must not reuse that list
    affected_only = _gateway(tmp_path, reference, book, inventory, guid_sheets=("Affected",))
    assert WITHDRAWN not in affected_only.guids and len(affected_only.guids) == len(AFFECTED)
    by_letter = _gateway(tmp_path, reference, book, inventory, guid_sheets=("Withdrawn",), guid_column="A")
    assert set(by_letter.guids.current) == {WITHDRAWN}


async def test_a_list_persisted_by_an_older_importer_is_imported_again(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    # guids.bin made by a version whose import yielded other EUIs from the same source (a hidden sheet
    # read, a hub column taken): reused for ever while the source file did not change
    guids = _list(tmp_path / "guids.csv", AFFECTED)
    state = tmp_path / "state"
    state.mkdir()
    stale = GuidSet.from_iterable([*AFFECTED, WITHDRAWN])
    stale.save(
        state / GUIDS_BIN,
        GuidMeta("guids.csv", file_sha256(guids), serve_module.datetime.now(serve_module.UTC)),
    )
    gateway = _gateway(tmp_path, reference, guids, _inventory(tmp_path / "inventory.csv"))
    assert WITHDRAWN not in gateway.guids and len(gateway.guids) == len(AFFECTED)
    again = _gateway(tmp_path, reference, guids, _inventory(tmp_path / "inventory.csv"))
    assert again.guids.current == gateway.guids.current


async def test_an_unexpected_reload_error_is_logged_with_its_traceback_and_the_data_stays(
    tmp_path: Path,
    reference: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = _gateway(
        tmp_path, reference, _list(tmp_path / "guids.csv", AFFECTED), _inventory(tmp_path / "i.csv")
    )
    generations = (gateway.guids.generation, gateway.inventory.generation)

    def broken(*_args: object) -> object:
        raise RuntimeError("a reader bug")

    monkeypatch.setattr(serve_module, "_load_inventory", broken)
    with caplog.at_level(logging.ERROR, logger="duisgw.serve"):
        await gateway.reload_logged()  # the SIGHUP handler: it raised out of its task, logged nowhere useful
    [record] = [r for r in caplog.records if "could not be read" in r.getMessage()]
    assert record.exc_info is not None and record.__dict__["error"] == "RuntimeError: a reader bug"
    assert record.getMessage() == "inventory could not be read: RuntimeError: a reader bug"
    # the inventory is refused as any unusable source is (kept, flagged stale); the GUID list is taken
    assert gateway.inventory.generation == generations[1]
    assert gateway.stale == {"inventory": "RuntimeError: a reader bug"}
    assert gateway.guids.generation == generations[0] + 1


async def _admin(http: aiohttp.ClientSession, port: int, method: str, path: str) -> tuple[int, Any]:
    async with http.request(method, f"http://127.0.0.1:{port}{path}") as resp:
        body = await resp.text()
        return resp.status, json.loads(body) if resp.content_type == "application/json" else body


def _stale(gateway_service: Any) -> dict[tuple[str, ...], float]:
    return counters(gateway_service, "duisgw_reference_stale", ("stale",))


async def test_a_start_with_a_refused_source_runs_on_the_last_good_list_flagged_stale_until_a_reload_succeeds(
    tmp_path: Path, reference: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # serve exited 2 when the source had been replaced by a bad one, stopping every DNO's traffic, while
    # the list imported from the good one was still in guids.bin (a reload kept it in force)
    guids = _list(tmp_path / "guids.csv", AFFECTED)
    inventory = _inventory(tmp_path / "inventory.csv")
    _gateway(tmp_path, reference, guids, inventory)  # a good import: state/guids.bin
    _list(guids, AFFECTED[:20], bad=180)  # the new source: serial numbers where the EUIs belong
    with caplog.at_level(logging.ERROR, logger="duisgw.serve"):
        gateway = _gateway(tmp_path, reference, guids, inventory)
    assert set(gateway.guids.current) == set(AFFECTED)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert f"GUID list source {guids} could not be imported" in message
    assert "180 of 200 non-blank rows rejected" in message and "the last good list" in message
    assert f"{len(AFFECTED)} EUIs" in message
    assert "180 of 200" in gateway.stale["guids"]

    service = make_service(gateway)
    async with running(service), aiohttp.ClientSession() as http:
        port = service.admin_port
        assert await _admin(http, port, "GET", "/readyz") == (200, "ready\n")  # deciding, on a valid list
        assert _stale(service) == {("guids",): 1.0, ("inventory",): 0.0, ("smki",): 0.0, ("gbcs_keys",): 0.0}
        status, text = await _admin(http, port, "GET", "/metrics")
        assert status == 200 and 'duisgw_reference_stale{source="guids"} 1.0' in text
        status, state = await _admin(http, port, "GET", "/admin/state")
        assert state["guids"] == len(AFFECTED) and "180 of 200" in state["stale"]["guids"]

        status, failed = await _admin(http, port, "POST", "/admin/reload")  # still the bad source
        assert status == 422 and "180 of 200" in failed["error"]
        assert _stale(service) == {("guids",): 1.0, ("inventory",): 0.0, ("smki",): 0.0, ("gbcs_keys",): 0.0}
        assert set(gateway.guids.current) == set(AFFECTED)

        _list(guids, [*AFFECTED, WITHDRAWN])  # a good source again
        status, report = await _admin(http, port, "POST", "/admin/reload")
        assert status == 200 and report["guids"]["count"] == len(AFFECTED) + 1
        assert WITHDRAWN in gateway.guids
        assert _stale(service) == {("guids",): 0.0, ("inventory",): 0.0, ("smki",): 0.0, ("gbcs_keys",): 0.0}
        assert gateway.stale == {}
        status, state = await _admin(http, port, "GET", "/admin/state")
        assert state["stale"] == {}


async def test_an_unreadable_source_at_start_up_also_falls_back_to_the_last_good_list(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    guids = _list(tmp_path / "guids.csv", AFFECTED)
    inventory = _inventory(tmp_path / "inventory.csv")
    first = _gateway(tmp_path, reference, guids, inventory)
    assert first.stale == {}
    guids.write_text("", encoding="utf-8")  # an empty .csv: no EUI column
    gateway = _gateway(tmp_path, reference, guids, inventory)
    assert set(gateway.guids.current) == set(AFFECTED)
    assert gateway.stale == {"guids": "guid_import: guids.csv: no EUI column found"}


def _other_source(tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path) -> None:
    _gateway(tmp_path, reference, _list(tmp_path / "other.csv", AFFECTED), inventory)


def _other_column(tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path) -> None:
    _gateway(tmp_path, reference, guids, inventory, guid_column="A")


def _other_sheets(tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path) -> None:
    _gateway(tmp_path, reference, guids, inventory, guid_sheets=("Sheet1",))


def _damaged(tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path) -> None:
    _gateway(tmp_path, reference, guids, inventory)
    binary = tmp_path / "state" / GUIDS_BIN
    binary.write_bytes(binary.read_bytes()[:-8])


def _settings_lost(tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path) -> None:
    _gateway(tmp_path, reference, guids, inventory)
    (tmp_path / "state" / (GUIDS_BIN + ".import")).unlink()


def _nothing(tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path) -> None:
    pass


@pytest.mark.parametrize(
    ("before", "why_not"),
    [
        (_nothing, r"guids\.bin does not exist"),
        (_other_source, r"guids\.bin was imported from another source \(.*other\.csv\)"),
        (_other_column, r"guids\.bin was imported with another column \('A', now ''\)"),
        (_other_sheets, r"guids\.bin was imported with another sheets \(\['Sheet1'\], now \[\]\)"),
        (_damaged, r"guids\.bin is unusable \(guid_file: "),
        (_settings_lost, r"the settings .*guids\.bin was imported with are unknown"),
    ],
    ids=["no-list", "other-source", "other-column", "other-sheets", "damaged", "settings-lost"],
)
async def test_a_start_with_a_refused_source_fails_when_no_last_good_list_was_made_from_it_with_these_settings(
    tmp_path: Path, reference: dict[str, Path], before: Any, why_not: str
) -> None:
    guids = _list(tmp_path / "guids.csv", AFFECTED)
    inventory = _inventory(tmp_path / "inventory.csv")
    before(tmp_path, reference, guids, inventory)
    _list(guids, AFFECTED[:20], bad=180)
    with pytest.raises(
        DuisgwError,
        match=r"^guid_import: guids\.csv: 180 of 200 non-blank rows rejected .*; no last good GUID list to "
        r"start with: .*" + why_not,
    ):
        _gateway(tmp_path, reference, guids, inventory)


async def test_a_list_reused_under_settings_recorded_without_their_source_can_stand_in_later(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    # guids.bin.import as the previous version wrote it (no source path): the list is reused, and the
    # settings file now names its source, so the list may stand in for that source once it goes bad
    guids = _list(tmp_path / "guids.csv", AFFECTED)
    inventory = _inventory(tmp_path / "inventory.csv")
    _gateway(tmp_path, reference, guids, inventory)
    settings_file = tmp_path / "state" / (GUIDS_BIN + ".import")
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    assert settings.pop("source") == str(guids)
    settings_file.write_text(json.dumps(settings), encoding="utf-8")
    reused = _gateway(tmp_path, reference, guids, inventory)
    assert set(reused.guids.current) == set(AFFECTED)
    assert json.loads(settings_file.read_text(encoding="utf-8"))["source"] == str(guids)
    _list(guids, AFFECTED[:20], bad=180)
    gateway = _gateway(tmp_path, reference, guids, inventory)
    assert set(gateway.guids.current) == set(AFFECTED) and "guids" in gateway.stale


async def test_an_unexpected_import_error_at_start_up_also_falls_back_and_is_logged_with_its_traceback(
    tmp_path: Path,
    reference: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guids = _list(tmp_path / "guids.csv", AFFECTED)
    inventory = _inventory(tmp_path / "inventory.csv")
    _gateway(tmp_path, reference, guids, inventory)
    _list(guids, [*AFFECTED, WITHDRAWN])  # a new source, which the importer trips over

    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("a reader bug")

    monkeypatch.setattr(serve_module, "import_guids", broken)
    with caplog.at_level(logging.ERROR, logger="duisgw.serve"):
        gateway = _gateway(tmp_path, reference, guids, inventory)
    assert set(gateway.guids.current) == set(AFFECTED)
    assert gateway.stale == {"guids": "RuntimeError: a reader bug"}
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None and "(RuntimeError: a reader bug)" in record.getMessage()

    (tmp_path / "state" / GUIDS_BIN).unlink()  # nothing to fall back on: the error itself, as before
    with pytest.raises(RuntimeError, match="a reader bug"):
        _gateway(tmp_path, reference, guids, inventory)


# ---- the inventory's last good snapshot (state_dir/inventory.last-good.csv)


async def test_a_start_with_a_refused_inventory_runs_on_the_last_good_snapshot_flagged_stale_until_a_reload(
    tmp_path: Path, reference: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # serve exited 2 when the inventory source had been replaced by a bad one: the snapshot in force
    # had no persisted form, so every DNO's traffic stopped until the file was fixed
    guids = _list(tmp_path / "guids.csv", AFFECTED)
    inventory = _inventory(tmp_path / "inventory.csv")
    good = inventory.read_bytes()
    first = _gateway(tmp_path, reference, guids, inventory)
    copy = tmp_path / "state" / INVENTORY_LAST_GOOD
    assert first.stale == {} and copy.read_bytes() == good  # the accepted snapshot, byte for byte
    record = json.loads((tmp_path / "state" / (INVENTORY_LAST_GOOD + ".import")).read_text(encoding="utf-8"))
    assert (record["source"], record["source_sha256"]) == (str(inventory), file_sha256(inventory))

    _inventory(inventory, bad_rows=40)  # the new source: serial numbers where the ESME EUIs belong
    with caplog.at_level(logging.ERROR, logger="duisgw.serve"):
        gateway = _gateway(tmp_path, reference, guids, inventory)
    assert copy.read_bytes() == good  # a refused source never replaces it
    assert len(gateway.inventory) == len(AFFECTED)
    assert list(gateway.inventory.current.esmes_for_ch(HUBS[3])) == [AFFECTED[3]]
    [logged] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = logged.getMessage()
    assert f"inventory source {inventory} could not be imported" in message
    assert "40 of 240 non-blank rows rejected" in message and "the last good snapshot" in message
    assert f"{len(AFFECTED)} ESMEs, imported {record['imported_at']}" in message
    assert "40 of 240" in gateway.stale["inventory"] and "guids" not in gateway.stale

    service = make_service(gateway)
    async with running(service), aiohttp.ClientSession() as http:
        port = service.admin_port
        assert await _admin(http, port, "GET", "/readyz") == (200, "ready\n")
        assert _stale(service) == {("guids",): 0.0, ("inventory",): 1.0, ("smki",): 0.0, ("gbcs_keys",): 0.0}
        status, text = await _admin(http, port, "GET", "/metrics")
        assert status == 200 and 'duisgw_reference_stale{source="inventory"} 1.0' in text
        status, state = await _admin(http, port, "GET", "/admin/state")
        assert state["inventory"] == len(AFFECTED) and "40 of 240" in state["stale"]["inventory"]

        status, failed = await _admin(http, port, "POST", "/admin/reload")  # still the bad source
        assert status == 422 and "40 of 240" in failed["error"]
        assert _stale(service)[("inventory",)] == 1.0

        _inventory(inventory, bad_rows=1)  # a good source again (under the rejection limit)
        status, report = await _admin(http, port, "POST", "/admin/reload")
        assert status == 200 and report["inventory"]["count"] == len(AFFECTED)
        assert _stale(service)[("inventory",)] == 0.0 and gateway.stale == {}
    assert copy.read_bytes() == inventory.read_bytes() != good  # the reload kept the new snapshot


def _inventory_other_source(tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path) -> None:
    _gateway(tmp_path, reference, guids, _inventory(tmp_path / "other.csv"))


def _inventory_altered(tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path) -> None:
    _gateway(tmp_path, reference, guids, inventory)
    copy = tmp_path / "state" / INVENTORY_LAST_GOOD
    copy.write_bytes(copy.read_bytes()[:-40])  # cut short: not the snapshot its record describes


def _inventory_record_lost(tmp_path: Path, reference: dict[str, Path], guids: Path, inventory: Path) -> None:
    _gateway(tmp_path, reference, guids, inventory)
    (tmp_path / "state" / (INVENTORY_LAST_GOOD + ".import")).unlink()


@pytest.mark.parametrize(
    ("before", "why_not"),
    [
        (_nothing, r"inventory\.last-good\.csv does not exist"),
        (
            _inventory_other_source,
            r"inventory\.last-good\.csv was taken from another source \(.*other\.csv\)",
        ),
        (
            _inventory_altered,
            r"inventory\.last-good\.csv is not the snapshot inventory\.last-good\.csv\.import ",
        ),
        (_inventory_record_lost, r"the source of .*inventory\.last-good\.csv is unknown"),
    ],
    ids=["no-copy", "other-source", "altered", "record-lost"],
)
async def test_a_start_with_a_refused_inventory_fails_without_a_last_good_snapshot_of_that_source(
    tmp_path: Path, reference: dict[str, Path], before: Any, why_not: str
) -> None:
    guids = _list(tmp_path / "guids.csv", AFFECTED)
    inventory = _inventory(tmp_path / "inventory.csv")
    before(tmp_path, reference, guids, inventory)
    _inventory(inventory, bad_rows=40)
    with pytest.raises(
        DuisgwError,
        match=r"^inventory_import: inventory\.csv: 40 of 240 non-blank rows rejected .*; no last good inventory "
        r"to start with: .*" + why_not,
    ):
        _gateway(tmp_path, reference, guids, inventory)


async def test_a_source_replaced_between_its_import_and_its_copy_is_not_kept_as_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _inventory(tmp_path / "inventory.csv")
    digest = file_sha256(source)
    state = tmp_path / "state"
    assert serve_module.keep_last_good_inventory(source, digest, state)
    assert not serve_module.keep_last_good_inventory(source, digest, state)  # already there: not copied again
    _inventory(source, bad_rows=1)  # the bytes now differ from the ones imported
    with caplog.at_level(logging.WARNING, logger="duisgw.serve"):
        assert not serve_module.keep_last_good_inventory(tmp_path / "inventory.csv", "0" * 64, state)
    assert "changed after it was imported" in caplog.text
    assert file_sha256(state / INVENTORY_LAST_GOOD) == digest
