"""A corrupt GBCS key index found while the gateway runs is counted in
``duisgw_gbcs_key_index_corrupt_total``: by the gateway process itself, and relayed by a classify
worker process that finds it in its own mapping of the index. Each process counts it once. The gateway
then rebuilds the index by itself (no reload), at most once per ``Gateway.key_heal_interval``
(``duisgw_gbcs_key_index_rebuilds_total{trigger="corrupt"}``). With real worker processes:
tests/e2e/test_gbcs_keys_reload_e2e.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import time
from pathlib import Path

import aiohttp
import pytest
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running, timed

from gateway.gbcs_keys import IndexedKeyStore, load_keystore
from gateway.service.serve import GBCS_KEYS_INDEX, Gateway, build_gateway, make_service
from gateway.service.simulate import DspSimulator
from gateway.testkit.pki import TestPKI
from gateway.testkit.scenario import World

_HEADER = struct.Struct("<8s32sQQQ")  # the index header (gateway.gbcs_keys): magic, digest, ACB, #DS, #KA


def corrupt_every_certificate(index: Path) -> None:
    """Flip the first octet (the SEQUENCE tag) of every certificate in the index, leaving its header
    (and so the key folder's listing digest) as it was: the load takes it for a good index."""
    raw = bytearray(index.read_bytes())
    _magic, _digest, _acb, n_ds, n_ka = _HEADER.unpack_from(raw, 0)
    blob = _HEADER.size + 20 * (n_ds + n_ka)
    at = _HEADER.size
    for n in (n_ds, n_ka):
        offsets = struct.unpack_from(f"<{n}Q", raw, at + 8 * n)
        for o in offsets:
            raw[blob + o] ^= 0xFF
        at += 20 * n
    index.write_bytes(bytes(raw))


def corrupt_in_place(index: Path) -> None:
    """:func:`corrupt_every_certificate` written into the very file (same inode, never truncated): what a
    process that maps it reads from then on, as a disk or a stray writer would damage it."""
    raw = index.read_bytes()
    with open(index, "r+b") as f:
        for at, (was, now) in enumerate(zip(raw, _corrupted(raw), strict=True)):
            if was != now:
                f.seek(at)
                f.write(bytes([now]))


def _corrupted(raw: bytes) -> bytes:
    out = bytearray(raw)
    _magic, _digest, _acb, n_ds, n_ka = _HEADER.unpack_from(out, 0)
    blob = _HEADER.size + 20 * (n_ds + n_ka)
    at = _HEADER.size
    for n in (n_ds, n_ka):
        for o in struct.unpack_from(f"<{n}Q", out, at + 8 * n):
            out[blob + o] ^= 0xFF
        at += 20 * n
    return bytes(out)


async def scrape(admin_port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        text = await resp.text()
    [line] = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


REBUILT = 'duisgw_gbcs_key_index_rebuilds_total{trigger="corrupt"}'


async def wait_for_scrape(admin_port: int, name: str, value: float, timeout: float = 10.0) -> float:
    """Poll ``name`` until it reads ``value``; the seconds it took."""
    start = time.monotonic()
    while (found := await scrape(admin_port, name)) != value:
        assert time.monotonic() - start < timeout, f"{name} = {found}, not {value}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "classify-worker"])
async def test_a_corrupt_key_index_found_at_run_time_is_counted_once(
    tmp_path: Path, processes: int, receiver: Receiver
) -> None:
    lab = make_lab("key-index-metric", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER, classify_processes=processes)
    build_gateway(cfg)  # writes state_dir/gbcs-keys.idx for the key folder
    index = Path(cfg.pipeline.state_dir) / GBCS_KEYS_INDEX
    corrupt_every_certificate(index)
    service = make_service(build_gateway(cfg))  # the digest still matches: the damaged index is mapped
    async with running(service):
        assert await scrape(service.admin_port, "duisgw_gbcs_key_index_corrupt_total") == 0.0
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            await dsp.run(timed(lab.demo))  # device-signed CS06 responses and 8F66 alerts among them
        assert await scrape(service.admin_port, "duisgw_gbcs_key_index_corrupt_total") == 1.0
        # removed when found, then rebuilt by the gateway itself (no reload): the new one is good
        await wait_for_scrape(service.admin_port, REBUILT, 1.0)
        assert await scrape(service.admin_port, "duisgw_gbcs_key_index_corrupt_total") == 1.0
    rebuilt = load_keystore(lab.reference["gbcs_keys"], index=index)
    assert rebuilt.maps(index) and rebuilt.corrupt is None
    assert all(rebuilt.ds_certificate(e) is not None for e in rebuilt._ds.euis)
    assert rebuilt.corrupt is None


def test_watch_corrupt_reports_once_and_at_once_when_already_corrupt(tmp_path: Path) -> None:
    pki = TestPKI(seed="key-index-watch")
    eui = 0x00DB000000000B01
    pki.device(eui)
    keys = pki.write_gbcs_keystore(tmp_path / "keys")
    index = tmp_path / "keys.idx"
    load_keystore(keys, index=index)
    corrupt_every_certificate(index)
    store = load_keystore(keys, index=index)
    assert isinstance(store, IndexedKeyStore)
    heard: list[str] = []
    store.watch_corrupt(heard.append)
    assert heard == []  # nothing found yet
    for _ in range(3):
        assert store.ds_certificate(eui) is None
    assert len(heard) == 1 and "does not parse" in heard[0]
    late: list[str] = []
    store.watch_corrupt(late.append)  # hooked after the finding (e.g. metrics made later): still told
    assert late == heard


AT = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)


def _verified(gateway: Gateway, world: World, n: int, counter: int) -> bool:
    """Whether meter ``n``'s device-signed activation response is verified evidence in the gateway process."""
    esme, _ch, _mpan = world.meter(n)
    body = world.factory.activate_response(esme, counter, AT)
    c = gateway.classifier.classify("observe", body, AT + dt.timedelta(seconds=5))
    assert c.rejection is None and c.events, c
    return all(e.verified for e in c.events)


async def test_the_gateway_rebuilds_a_corrupt_index_by_itself_at_most_once_per_interval(
    tmp_path: Path, receiver: Receiver
) -> None:
    world = World.generated("key-index-heal")
    for n in range(600, 610):
        world.meter(n)
    reference = world.write_reference(tmp_path / "reference")
    gateway = build_gateway(pipeline_config(tmp_path, reference, receiver.url, DNO_USER))
    gateway.key_heal_interval = 1.5
    index = Path(gateway.config.pipeline.state_dir) / GBCS_KEYS_INDEX
    service = make_service(gateway)
    corrupt = "duisgw_gbcs_key_index_corrupt_total"
    async with running(service):
        port = service.admin_port
        assert await scrape(port, REBUILT) == 0.0
        assert _verified(gateway, world, 600, 1)
        t0 = time.monotonic()
        corrupt_in_place(index)  # while it is mapped: the next certificate looked up does not parse
        assert not _verified(gateway, world, 601, 2)  # fail-closed: unverifiable, never another key
        assert await scrape(port, corrupt) == 1.0
        await wait_for_scrape(port, REBUILT, 1.0, timeout=5.0)  # at once: no SIGHUP, no /admin/reload
        assert gateway.keys_generation == 2 and gateway.classifier.gbcs.keystore.corrupt is None
        assert _verified(gateway, world, 601, 3) and _verified(gateway, world, 602, 4)

        corrupt_in_place(index)  # the rebuilt file damaged too (a folder that keeps producing one)
        assert not _verified(gateway, world, 603, 5)
        assert await scrape(port, corrupt) == 2.0
        for _ in range(5):
            gateway.key_index_corrupt()  # more findings meanwhile: one rebuild covers them
        await asyncio.sleep(0.3)
        if time.monotonic() < t0 + 1.2:  # (the bound: the second rebuild waits for the interval)
            assert await scrape(port, REBUILT) == 1.0 and not _verified(gateway, world, 604, 6)
        await wait_for_scrape(port, REBUILT, 2.0, timeout=5.0)
        assert time.monotonic() >= t0 + 1.5  # no sooner than the interval after the first one started
        assert _verified(gateway, world, 604, 7) and gateway.keys_generation == 3
        await asyncio.sleep(2.0)  # the findings that waited: one more look, nothing to rebuild
        assert await scrape(port, REBUILT) == 2.0 and gateway.keys_generation == 3
        assert await scrape(port, 'duisgw_gbcs_key_index_rebuilds_total{trigger="reload"}') == 0.0
        assert (await gateway.reload())["gbcs_keys"]["status"] == "unchanged"
