"""End to end: hot reload of the GBCS device key store (``[pipeline] gbcs_keys``: SIGHUP, ``POST
/admin/reload``) in ``python -m gateway serve`` as a real process, with its worker processes classifying.

Each case is a premises whose device-signed activation response (the ESME's GBCS signature) is followed
five minutes later by an AD1: the AD1 is suppressed only when the response's device signature verifies
against the ESME's DS certificate in the key store in force, else forwarded (unverified evidence). The
key folder is the test's own copy of a generated world's, with some meters' certificates held back and
dropped in (or taken out, or damaged) while the gateway runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import e2ekit
import pytest
from conftest import Receiver, free_port
from e2ekit import GatewayProcess, ad1_decision, start_with_workers

from gateway.service.simulate import TimedMessage
from gateway.testkit.scenario import Scenario, World

pytestmark = pytest.mark.slow


class Keys:
    """A generated world; meters 400-439 are the cases' premises."""

    def __init__(self, out: Path) -> None:
        self.world = World.generated("gbcs-keys-reload")
        for n in range(400, 440):
            self.world.meter(n)
        self.reference = self.world.write_reference(out)
        self.story = Scenario("keys", self.world)

    def folder(self, tmp: Path, *, without: range) -> dict[str, Path]:
        """The reference data with a key folder of the test's own, holding no DS certificate of the meters
        ``without``."""
        keys = tmp / "gbcs-keys"
        shutil.copytree(self.reference["gbcs_keys"], keys)
        for n in without:
            self.cert(keys, n).unlink()
        return {**self.reference, "gbcs_keys": keys}

    def cert(self, keys: Path, n: int) -> Path:
        esme, _ch, _mpan = self.world.meter(n)
        return keys / f"{esme:016x}-ds.pem"

    def pem(self, n: int) -> bytes:
        esme, _ch, _mpan = self.world.meter(n)
        return self.world.pki.issued[f"{esme:016x}-ds"].cert_pem

    def case(self, n: int, at: str, counter: int) -> list[TimedMessage]:
        """Premises ``n``: a device-signed activation response at ``at``, an AD1 5 min later."""
        f = self.world.factory
        esme, ch, mpan = self.world.meter(n)
        t0 = self.story.t(at)
        t1 = t0 + dt.timedelta(minutes=5)
        return [
            TimedMessage(t0, "observe", f.activate_response(esme, counter, t0)),
            TimedMessage(t1, "inline", f.ad1(ch, mpan, t1 - dt.timedelta(minutes=2), t1, counter)),
        ]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


async def start(
    tmp: Path, reference: dict[str, Path], url: str, *, workers: str
) -> tuple[GatewayProcess, str]:
    return await start_with_workers(tmp, reference, url, workers=workers, port=free_port(), admin=free_port())


async def metric(gw: GatewayProcess, name: str, **labels: str) -> float | None:
    return await e2ekit.metric(gw.admin_port, name, **labels)


async def reload_by(gw: GatewayProcess, how: str) -> dict[str, Any]:
    """Reload by SIGHUP (waits for the key store generation to move) or ``POST /admin/reload`` (its report)."""
    before = (await gw.admin("GET", "/admin/state"))["gbcs_keys"]["generation"]
    if how == "admin":
        report: dict[str, Any] = await gw.admin("POST", "/admin/reload")
        return report["gbcs_keys"]
    gw.hup()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = (await gw.admin("GET", "/admin/state"))["gbcs_keys"]
        if state["generation"] != before:
            return {**state, "status": "reloaded"}
        await asyncio.sleep(0.05)
    raise AssertionError(f"the GBCS key store was not reloaded on SIGHUP: {gw.log_tail()}")


@pytest.mark.parametrize(
    ("workers", "how"), [("classify", "admin"), ("ingress", "admin"), ("ingress", "hup")]
)
async def test_a_device_certificate_dropped_in_after_start_makes_its_evidence_verify_after_the_reload(
    tmp_path: Path, keys: Keys, receiver: Receiver, workers: str, how: str
) -> None:
    reference = keys.folder(tmp_path, without=range(400, 402))
    gw, url = await start(tmp_path, reference, receiver.url, workers=workers)
    try:
        assert await ad1_decision(url, keys.case(400, "10:00", 7001)) == "forward"  # no DS certificate
        keys.cert(reference["gbcs_keys"], 400).write_bytes(keys.pem(400))
        keys.cert(reference["gbcs_keys"], 401).write_bytes(keys.pem(401))
        # on disk but not loaded: the key store in force (in the worker too) does not hold it
        assert await ad1_decision(url, keys.case(400, "10:10", 7002)) == "forward"

        report = await reload_by(gw, how)
        assert report["status"] == "reloaded" and report["generation"] == 2, report
        if how == "admin":  # the worker process reopened its key store before the answer
            assert report["workers"] == {workers: {"reloaded": 1, "replaced": 0}}, report
        assert await ad1_decision(url, keys.case(400, "10:20", 7003)) == "suppress"
        assert await ad1_decision(url, keys.case(401, "10:30", 7004)) == "suppress"
        assert await ad1_decision(url, keys.case(402, "10:40", 7005)) == "suppress"  # held from the start
        assert await metric(gw, "duisgw_reference_stale", source="gbcs_keys") == 0
        assert await metric(gw, "duisgw_gbcs_key_index_rebuilds_total", trigger="reload") == 1
        assert await metric(gw, "duisgw_gbcs_key_index_rebuilds_total", trigger="corrupt") == 0
    finally:
        assert gw.terminate() == 0
    assert "GBCS key store reloaded" in gw.log_tail(50000)


async def test_a_removed_certificate_stops_verifying_and_an_unreadable_one_keeps_the_store_in_force(
    tmp_path: Path, keys: Keys, receiver: Receiver
) -> None:
    reference = keys.folder(tmp_path, without=range(0))
    folder = reference["gbcs_keys"]
    gw, url = await start(tmp_path, reference, receiver.url, workers="classify")
    try:
        assert await ad1_decision(url, keys.case(410, "11:00", 7101)) == "suppress"

        keys.cert(folder, 410).unlink()  # taken out on purpose: it goes with the reload
        report = await reload_by(gw, "admin")
        assert (report["status"], report["generation"]) == ("reloaded", 2), report
        # (hours later: no window of the 11:00 activation reaches it)
        assert await ad1_decision(url, keys.case(410, "14:00", 7102)) == "forward"

        damaged = keys.cert(folder, 411)
        damaged.write_bytes(b"-----BEGIN CERTIFICATE-----\ndamaged\n-----END CERTIFICATE-----\n")
        report = await reload_by(gw, "admin")
        assert report["status"] == "refused" and damaged.name in report["refused"], report
        assert report["generation"] == 2
        assert await metric(gw, "duisgw_reference_stale", source="gbcs_keys") == 1
        state = await gw.admin("GET", "/admin/state")
        assert damaged.name in state["stale"]["gbcs_keys"]
        # the key store in force still holds the certificate, in the classify worker too (411's first case)
        assert await ad1_decision(url, keys.case(411, "15:00", 7103)) == "suppress"
        assert await ad1_decision(url, keys.case(410, "16:00", 7104)) == "forward"  # and not the removed one

        damaged.write_bytes(keys.pem(411))  # repaired: a new listing, accepted
        report = await reload_by(gw, "admin")
        assert (report["status"], report["generation"]) == ("reloaded", 3), report
        assert await metric(gw, "duisgw_reference_stale", source="gbcs_keys") == 0
        assert await ad1_decision(url, keys.case(412, "17:00", 7105)) == "suppress"
    finally:
        assert gw.terminate() == 0
    assert "GBCS key store reload refused" in gw.log_tail(50000)


def corrupt_in_place(index: Path) -> None:
    """Flip the first octet of every certificate in the index, in the very file (same inode, never
    truncated: what every process mapping it reads from then on), its header (and so the key folder's
    listing digest) as it was."""
    header = struct.Struct("<8s32sQQQ")  # gateway.gbcs_keys: magic, digest, ACB, #DS, #KA
    with open(index, "r+b") as f:
        raw = f.read()
        _magic, _digest, _acb, n_ds, n_ka = header.unpack_from(raw, 0)
        blob, at = header.size + 20 * (n_ds + n_ka), header.size
        for n in (n_ds, n_ka):
            for o in struct.unpack_from(f"<{n}Q", raw, at + 8 * n):
                f.seek(blob + o)
                f.write(bytes([raw[blob + o] ^ 0xFF]))
            at += 20 * n


async def wait_metric(
    gw: GatewayProcess, name: str, value: float, timeout: float = 10.0, **labels: str
) -> None:
    deadline = time.monotonic() + timeout
    while (found := await metric(gw, name, **labels)) != value:
        assert time.monotonic() < deadline, f"{name}{labels} = {found}, not {value}: {gw.log_tail()}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("workers", ["classify", "ingress"])
async def test_an_index_corrupted_while_serving_is_rebuilt_by_the_gateway_itself_and_verifies_again(
    tmp_path: Path, keys: Keys, receiver: Receiver, workers: str
) -> None:
    reference = keys.folder(tmp_path, without=range(0))
    gw, url = await start(tmp_path, reference, receiver.url, workers=workers)
    index = gw.config.parent / "state" / "gbcs-keys.idx"
    try:
        assert await ad1_decision(url, keys.case(420, "10:00", 7201)) == "suppress"
        assert await metric(gw, "duisgw_gbcs_key_index_rebuilds_total", trigger="corrupt") == 0

        corrupt_in_place(index)  # while the gateway and its worker map it
        # the worker looks 421's certificate up in the damaged index: unverifiable, the AD1 forwarded
        assert await ad1_decision(url, keys.case(421, "11:00", 7202)) == "forward"
        await wait_metric(gw, "duisgw_gbcs_key_index_corrupt_total", 1)
        # no SIGHUP, no /admin/reload: the gateway rebuilds the index and every process maps the new one
        await wait_metric(gw, "duisgw_gbcs_key_index_rebuilds_total", 1, timeout=5.0, trigger="corrupt")
        state = (await gw.admin("GET", "/admin/state"))["gbcs_keys"]
        assert state["generation"] == 2, state
        assert await ad1_decision(url, keys.case(421, "12:00", 7203)) == "suppress"
        assert await ad1_decision(url, keys.case(422, "13:00", 7204)) == "suppress"
        assert await metric(gw, "duisgw_gbcs_key_index_corrupt_total") == 1
        assert await metric(gw, "duisgw_gbcs_key_index_rebuilds_total", trigger="reload") == 0
    finally:
        assert gw.terminate() == 0
    log = gw.log_tail(50000)
    assert "GBCS key index corrupt" in log and "GBCS key index rebuilt after it was found corrupt" in log
