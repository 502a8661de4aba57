"""Hot reload of the reference data (``Gateway.reload``: what ``POST /admin/reload`` and SIGHUP run) when a part
is refused. Each part (TLS sections, admin token, SMKI store, GBCS key store, GUID list, inventory) is judged on
its own: a refused GUID list or inventory keeps what is in force, flagged stale
(``duisgw_reference_stale``, ``stale`` in ``/admin/state``) until a reload imports the source, and keeps no
other part out; the answer of ``POST /admin/reload`` and the reload's log line carry every part's outcome."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from servicekit import DNO_USER, _ca, _leaf, _write_key, counters, pipeline_config, running

from gateway.service.app import Service
from gateway.service.config import TlsServerConfig
from gateway.service.serve import GUIDS_BIN, INVENTORY_LAST_GOOD, Gateway, build_gateway, make_service
from gateway.testkit.scenario import World

AT = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
NEW_METER = 500  # its device certificate is dropped into the key folder after start
OLD_TOKEN, NEW_TOKEN = "a" * 32, "b" * 32


def _break_guids(path: Path) -> None:
    """Serial numbers where the EUIs belong: the import refuses the source."""
    path.write_text("ESME GUID\n" + "".join(f"LG{i:06d}\n" for i in range(50)), encoding="utf-8")


def _break_inventory(path: Path) -> None:
    path.write_text("esme,comms_hub\nnot an eui,also not\n", encoding="utf-8")


def _stale(service: Service) -> dict[str, float]:
    return {labels[0]: v for labels, v in counters(service, "duisgw_reference_stale", ("stale",)).items()}


async def _admin(service: Service, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{service.admin_port}{path}", headers=headers) as resp,
    ):
        return (
            resp.status,
            await resp.json() if resp.content_type == "application/json" else await resp.text(),
        )


@pytest.mark.parametrize("part", ["guids", "inventory"])
async def test_a_refused_guid_list_or_inventory_on_reload_stays_in_force_flagged_stale_until_a_reload_imports_it(
    tmp_path: Path, part: str
) -> None:
    # the data in force was kept (right) but the gauge operators alert on stayed 0 and /admin/state said
    # nothing: the list in force was older than its source without anyone told but the reload's caller
    world = World.generated("reload-stale")
    reference = world.write_reference(tmp_path / "reference")
    gateway = build_gateway(pipeline_config(tmp_path, reference, "http://127.0.0.1:9/", DNO_USER))
    state_dir = Path(gateway.config.pipeline.state_dir)
    kept = {name: (state_dir / name).read_bytes() for name in (GUIDS_BIN, INVENTORY_LAST_GOOD)}
    good = reference[part].read_bytes()
    registry = gateway.guids if part == "guids" else gateway.inventory
    in_force, generation = registry.current, registry.generation
    service = make_service(gateway)
    async with running(service):
        assert set(_stale(service).values()) == {0.0}
        (_break_guids if part == "guids" else _break_inventory)(reference[part])

        status, report = await _admin(service, "POST", "/admin/reload")
        assert status == 422, report
        assert (registry.current, registry.generation) == (in_force, generation)  # kept in force
        assert {name: (state_dir / name).read_bytes() for name in kept} == kept  # last good forms untouched
        assert _stale(service) == {
            "guids": float(part == "guids"),
            "inventory": float(part == "inventory"),
            "smki": 0.0,
            "gbcs_keys": 0.0,
        }
        status, state = await _admin(service, "GET", "/admin/state")
        assert list(state["stale"]) == [part], state
        assert report[part]["status"] == "refused" and report[part]["refused"] == state["stale"][part], report
        assert report[part]["generation"] == generation and report[part]["count"] == len(in_force)
        assert (await _admin(service, "POST", "/admin/reload"))[0] == 422  # still refused: still stale
        assert _stale(service)[part] == 1.0

        reference[part].write_bytes(good)  # fixed: the next reload imports it and clears the flag
        status, report = await _admin(service, "POST", "/admin/reload")
        assert status == 200 and report[part]["status"] == "reloaded", report
        assert registry.generation > generation
        assert set(_stale(service).values()) == {0.0} and gateway.stale == {}
        assert (await _admin(service, "GET", "/admin/state"))[1]["stale"] == {}


@dataclass
class Rig:
    """A pipeline gateway with a TLS ingress and an admin token, whose files the test replaces."""

    world: World
    reference: dict[str, Path]
    gateway: Gateway
    service: Service
    server_cert: Path
    server_key: Path
    token_file: Path
    new_device_cert: tuple[Path, bytes]

    def rotate_everything_and_break_the_guid_list(self) -> None:
        """A new server certificate, a new admin token, a new device certificate, and a bad GUID source."""
        ca_key, ca_cert = _ca("reload report CA")
        key, cert = _leaf("127.0.0.1", ca_key, ca_cert, server=True)
        self.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(self.server_key, key)
        self.token_file.write_text(NEW_TOKEN + "\n", encoding="utf-8")
        path, pem = self.new_device_cert
        path.write_bytes(pem)
        _break_guids(self.reference["guids"])

    def verified(self, counter: int) -> bool:
        """Whether the new meter's device-signed response is verified evidence in the gateway process."""
        esme, _ch, _mpan = self.world.meter(NEW_METER)
        body = self.world.factory.activate_response(esme, counter, AT)
        c = self.gateway.classifier.classify("observe", body, AT + dt.timedelta(seconds=5))
        assert c.rejection is None and c.events, c
        return all(e.verified for e in c.events)


def _rig(tmp_path: Path) -> Rig:
    world = World.generated("reload-report")
    world.meter(NEW_METER)
    reference = world.write_reference(tmp_path / "reference")
    folder = tmp_path / "gbcs-keys"
    shutil.copytree(reference["gbcs_keys"], folder)
    reference = {**reference, "gbcs_keys": folder}
    device_cert = folder / f"{world.meter(NEW_METER)[0]:016x}-ds.pem"
    pem = device_cert.read_bytes()
    device_cert.unlink()
    ca_key, ca_cert = _ca("reload report CA")
    key, cert = _leaf("127.0.0.1", ca_key, ca_cert, server=True)
    server_cert, server_key = tmp_path / "server.pem", tmp_path / "server.key"
    server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, key)
    token_file = tmp_path / "admin.token"
    token_file.write_text(OLD_TOKEN + "\n", encoding="utf-8")
    cfg = pipeline_config(tmp_path, reference, "http://127.0.0.1:9/", DNO_USER)
    cfg = replace(
        cfg,
        server=replace(cfg.server, tls=TlsServerConfig(cert_file=str(server_cert), key_file=str(server_key))),
        admin=replace(cfg.admin, token_file=str(token_file)),
    )
    gateway = build_gateway(cfg)
    service = make_service(gateway)
    return Rig(world, reference, gateway, service, server_cert, server_key, token_file, (device_cert, pem))


async def test_a_reload_that_refuses_the_guid_list_answers_every_part_and_takes_the_others(
    tmp_path: Path,
) -> None:
    # pipeline mode answered 422 {"error": ...} alone: the TLS and admin token outcomes were only logged,
    # and nothing after the GUID list was even read (a new device certificate waited for a good list)
    rig = _rig(tmp_path)
    inventory_generation = rig.gateway.inventory.generation
    async with running(rig.service):
        assert not rig.verified(1)
        rig.rotate_everything_and_break_the_guid_list()

        status, report = await _admin(rig.service, "POST", "/admin/reload", OLD_TOKEN)
        assert status == 422, report
        assert (report["status"], report["refused_parts"]) == ("refused", ["guids"]), report
        assert report["error"] == f"guids: {report['guids']['refused']}"
        assert "no EUI accepted (50 rows read" in report["guids"]["refused"], report["guids"]
        assert report["tls"]["server"]["status"] == "reloaded", report
        assert report["admin_token"] == {"status": "reloaded"}
        assert (report["smki"]["status"], report["gbcs_keys"]["status"]) == ("unchanged", "reloaded"), report
        assert report["inventory"]["status"] == "reloaded"
        assert (
            report["inventory"]["generation"] == rig.gateway.inventory.generation == inventory_generation + 1
        )

        assert rig.verified(2)  # the new device certificate is in force: the refused list kept nothing out
        assert (await _admin(rig.service, "GET", "/admin/state", OLD_TOKEN))[0] == 401  # the new token is
        status, state = await _admin(rig.service, "GET", "/admin/state", NEW_TOKEN)
        assert status == 200 and state["stale"] == {"guids": report["guids"]["refused"]}, state
        assert _stale(rig.service) == {
            "guids": 1.0,
            "inventory": 0.0,
            "smki": 0.0,
            "gbcs_keys": 0.0,
            "tls": 0.0,
            "admin_token": 0.0,
        }


async def test_the_sighup_reload_logs_one_line_naming_every_part_s_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # SIGHUP logged "reload failed; the previous GUID list and inventory stay in force: ..." and nothing
    # said what became of the TLS material, the admin token, the SMKI store or the key store
    rig = _rig(tmp_path)

    def summary() -> logging.LogRecord:
        [record] = [r for r in caplog.records if r.getMessage().startswith("reference data reload")]
        caplog.clear()
        return record

    async with running(rig.service):
        rig.rotate_everything_and_break_the_guid_list()
        with caplog.at_level(logging.INFO, logger="duisgw"):
            await rig.gateway.reload_logged()  # the SIGHUP handler's body
        record = summary()
        message = record.getMessage()
        assert record.levelno == logging.WARNING, message
        assert message.startswith("reference data reload refused guids (") and "no EUI accepted" in message, (
            message
        )
        for outcome in (
            "tls.server reloaded",
            "admin_token reloaded",
            "smki unchanged",
            "gbcs_keys reloaded",
            "inventory reloaded",
        ):
            assert outcome in message, message

        rig.reference["guids"].write_text("ESME GUID\n", encoding="utf-8")  # a good (empty) list: all taken
        with caplog.at_level(logging.INFO, logger="duisgw"):
            await rig.gateway.reload_logged()
        record = summary()
        assert record.levelno == logging.INFO
        assert record.getMessage() == (
            "reference data reloaded: tls.server unchanged, admin_token unchanged, smki unchanged, "
            "gbcs_keys unchanged, guids reloaded, inventory reloaded"
        )
        assert rig.gateway.stale == {}


async def test_a_reload_that_refuses_the_inventory_still_takes_the_new_guid_list(tmp_path: Path) -> None:
    # the two were all or nothing: a bad snapshot kept the new GUIDs out too, flagged nowhere
    world = World.generated("reload")
    reference = world.write_reference(tmp_path / "reference")
    gateway = build_gateway(pipeline_config(tmp_path, reference, "http://127.0.0.1:9/", DNO_USER))
    guids_before, generation = len(gateway.guids), gateway.guids.generation
    inventory, inventory_generation = gateway.inventory.current, gateway.inventory.generation

    with reference["guids"].open("a", encoding="utf-8") as f:  # two more GUIDs ...
        f.write("00-11-22-33-44-55-66-01\n00-11-22-33-44-55-66-02\n")
    _break_inventory(reference["inventory"])  # ... and a bad snapshot
    report = await gateway.reload()
    assert (report["status"], report["refused_parts"]) == ("refused", ["inventory"]), report
    assert report["guids"]["status"] == "reloaded" and report["guids"]["count"] == guids_before + 2
    assert (len(gateway.guids), gateway.guids.generation) == (guids_before + 2, generation + 1)
    assert (gateway.inventory.current, gateway.inventory.generation) == (inventory, inventory_generation)
    assert set(gateway.stale) == {"inventory"}


async def test_a_reload_that_fails_unexpectedly_is_logged_with_its_traceback_and_answers_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World.generated("reload")
    reference = world.write_reference(tmp_path / "reference")
    gateway = build_gateway(pipeline_config(tmp_path, reference, "http://127.0.0.1:9/", DNO_USER))

    async def broken(*_args: object) -> object:
        raise RuntimeError("a worker round bug")

    monkeypatch.setattr(gateway, "_reload_classifier", broken)
    service = make_service(gateway)
    async with running(service):
        with caplog.at_level(logging.ERROR, logger="duisgw.serve"):
            await gateway.reload_logged()  # SIGHUP: never lost in the signal's task
            status, answer = await _admin(service, "POST", "/admin/reload")
    assert (status, answer) == (500, {"error": "RuntimeError: a worker round bug"})
    records = [r for r in caplog.records if r.getMessage().startswith("reload failed unexpectedly")]
    assert len(records) == 2 and all(r.exc_info is not None for r in records)
    assert records[0].getMessage() == "reload failed unexpectedly: RuntimeError: a worker round bug"
