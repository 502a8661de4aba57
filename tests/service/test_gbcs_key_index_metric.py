"""A corrupt GBCS key index found while the gateway runs is counted in
``duisgw_gbcs_key_index_corrupt_total``: by the gateway process itself, and relayed by a classify
worker process that finds it in its own mapping of the index. Each process counts it once."""

from __future__ import annotations

import struct
from pathlib import Path

import aiohttp
import pytest
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running, timed

from gateway.gbcs_keys import IndexedKeyStore, load_keystore
from gateway.service.serve import GBCS_KEYS_INDEX, build_gateway, make_service
from gateway.service.simulate import DspSimulator
from gateway.testkit.pki import TestPKI

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


async def scrape(admin_port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        text = await resp.text()
    [line] = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "classify-worker"])
async def test_a_corrupt_key_index_found_at_run_time_is_counted_once(tmp_path: Path, processes: int, receiver: Receiver) -> None:
    lab = make_lab("key-index-metric", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    cfg = pipeline_config(
        tmp_path, lab.reference, receiver.url, DNO_USER, classify_processes=processes
    )
    build_gateway(cfg)  # writes state_dir/gbcs-keys.idx for the key folder
    index = Path(cfg.pipeline.state_dir) / GBCS_KEYS_INDEX
    corrupt_every_certificate(index)
    service = make_service(build_gateway(cfg))  # the digest still matches: the damaged index is mapped
    async with running(service):
        assert await scrape(service.admin_port, "duisgw_gbcs_key_index_corrupt_total") == 0.0
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            await dsp.run(timed(lab.demo))  # device-signed CS06 responses and 8F66 alerts among them
        assert await scrape(service.admin_port, "duisgw_gbcs_key_index_corrupt_total") == 1.0
    assert not index.exists()  # removed when found: the next start rebuilds it


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
