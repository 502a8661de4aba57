"""A reload re-reads the GBCS device key store in the gateway process (``Gateway.reload``, what SIGHUP and
``POST /admin/reload`` run): a device certificate dropped into ``[pipeline] gbcs_keys`` after start makes
that device's signed evidence verify after the reload and not before, a removed one stops verifying, and a
key folder that cannot be read keeps the key store in force and flags it stale
(``duisgw_reference_stale{source="gbcs_keys"}``). The worker processes: tests/e2e/test_gbcs_keys_reload_e2e.py."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from servicekit import DNO_USER, pipeline_config

from gateway.service.serve import GBCS_KEYS_INDEX, Gateway, build_gateway, make_service
from gateway.testkit.scenario import World

UTC = dt.UTC
AT = dt.datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def _verified(gateway: Gateway, world: World, n: int, counter: int) -> tuple[bool, tuple[str, ...]]:
    """Whether meter ``n``'s device-signed activation response is verified evidence in the gateway process."""
    esme, _ch, _mpan = world.meter(n)
    body = world.factory.activate_response(esme, counter, AT)
    c = gateway.classifier.classify("observe", body, AT + dt.timedelta(seconds=5))
    assert c.rejection is None and c.events, c
    return all(e.verified for e in c.events), c.problems


def _stale(gateway: Gateway) -> float:
    service = make_service(gateway)
    [sample] = [
        s
        for m in service.metrics.reference_stale.collect()
        for s in m.samples
        if s.labels == {"source": "gbcs_keys"}
    ]
    return sample.value


async def test_reload_re_reads_the_gbcs_key_store_in_the_gateway_process(tmp_path: Path) -> None:
    world = World.generated("gbcs-keys-reload-in-process")
    for n in (500, 501, 502):
        world.meter(n)
    reference = world.write_reference(tmp_path / "reference")
    folder = tmp_path / "gbcs-keys"
    shutil.copytree(reference["gbcs_keys"], folder)
    reference = {**reference, "gbcs_keys": folder}
    cert = {n: folder / f"{world.meter(n)[0]:016x}-ds.pem" for n in (500, 501, 502)}
    pem = cert[500].read_bytes()
    cert[500].unlink()
    gateway = build_gateway(pipeline_config(tmp_path, reference, "http://127.0.0.1:9/", DNO_USER))
    index = Path(gateway.config.pipeline.state_dir) / GBCS_KEYS_INDEX

    ok, problems = _verified(gateway, world, 500, 1)
    assert not ok and any(p.startswith("gbcs-signature-unverifiable") for p in problems), problems
    cert[500].write_bytes(pem)
    assert not _verified(gateway, world, 500, 2)[0]  # in the folder, not yet in force

    report = (await gateway.reload())["gbcs_keys"]
    assert (report["status"], report["generation"]) == ("reloaded", 2), report
    assert _verified(gateway, world, 500, 3) == (True, ())
    assert (await gateway.reload())["gbcs_keys"]["status"] == "unchanged"

    cert[501].unlink()  # taken out: it goes
    assert _verified(gateway, world, 501, 4)[0]
    assert (await gateway.reload())["gbcs_keys"]["status"] == "reloaded"
    assert not _verified(gateway, world, 501, 5)[0]

    index_before = index.read_bytes()
    cert[502].write_bytes(b"-----BEGIN CERTIFICATE-----\nunreadable\n-----END CERTIFICATE-----\n")
    report = (await gateway.reload())["gbcs_keys"]
    assert report["status"] == "refused" and cert[502].name in report["refused"], report
    assert report["generation"] == 3 and cert[502].name in gateway.stale["gbcs_keys"]
    assert _stale(gateway) == 1.0
    assert _verified(gateway, world, 502, 6) == (True, ())  # the store in force still holds it
    assert index.read_bytes() == index_before  # and so does the index a worker started now would map

    shutil.rmtree(folder)  # a folder that is gone altogether: refused too
    report = (await gateway.reload())["gbcs_keys"]
    assert report["status"] == "refused" and "not found" in report["refused"], report
    assert _verified(gateway, world, 500, 7) == (True, ())
