"""End to end: bytes an operator released from quarantine reach the DNO once (``python -m gateway serve`` as a real
process, ``duisgw audit release`` as a real CLI process, the certificate store reloaded between two deliveries).

With ``[engine] quarantine_unverified_inline = true`` an AD1 whose own signature fails (the DSP's certificate
revoked by the list in force) is kept as suppressed under ``<identity>#unverified:<digest>``. An operator releases
it: the DNO gets it. The list is replaced and reloaded, and the DCC delivers the same bytes again: their signature
verifies now. They were decided afresh under their DUIS identity (an AD1 without firmware activity near it:
forwarded), so the DNO got the same AD1 a second time under another ``X-DUISGW-Message-Id``. They are the duplicate
of the released copy now (docs/ENGINE.md §8), whether the release was taken in by the running gateway's scan, not
yet (the batch is refused in its transaction and decided again after the take-in), or made while it was stopped.

The other order: the signed copy came first after the quarantine and was forwarded; releasing the quarantined copy
then would send the DNO the same bytes again. ``duisgw audit release`` refuses it, naming the verified id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from conftest import Receiver, free_port
from e2ekit import DNO_USER, GatewayProcess, run_cli, send_all, write_config
from test_smki_reload_e2e import Smki, reload_by

from gateway.service.simulate import TimedMessage

pytestmark = pytest.mark.slow

QUARANTINE = "\n[engine]\nquarantine_unverified_inline = true\n"


@pytest.fixture(scope="module")
def smki(tmp_path_factory: pytest.TempPathFactory) -> Smki:
    return Smki(tmp_path_factory.mktemp("smki-release-unverified"))


def lone_ad1(smki: Smki, n: int, at: str) -> TimedMessage:
    """An AD1 of premises ``n`` with no firmware activity near it (forwarded when its signature verifies)."""
    _esme, ch, mpan = smki.world.meter(n)
    t1 = smki.story.t(at)
    return TimedMessage(t1, "inline", smki.world.factory.ad1(ch, mpan, t1 - dt.timedelta(minutes=2), t1, 900 + n))


def gateway(tmp_path: Path, reference: dict[str, Path], url: str) -> GatewayProcess:
    admin = free_port()
    cfg = write_config(tmp_path / "gateway.toml", port=free_port(), admin_port=admin, reference=reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": url}], extra=QUARANTINE)  # fmt: skip
    return GatewayProcess(cfg, admin)


def url_of(gw: GatewayProcess) -> str:
    text = gw.config.read_text(encoding="utf-8")
    port = int(text.split("[server]", 1)[1].split("port = ", 1)[1].split("\n", 1)[0])
    return f"http://127.0.0.1:{port}"


def release(gw: GatewayProcess, message_id: str) -> tuple[int, str]:
    done = run_cli("audit", "release", "--config", str(gw.config), message_id, "--operator", "alice",
                   "--note", "field visit: a genuine outage")  # fmt: skip
    return done.returncode, done.stderr


async def _settled(receiver: Receiver, n: int) -> None:
    await receiver.wait_for(n)
    await asyncio.sleep(1.5)  # (a second copy, were one enqueued, would be posted within this)


@pytest.mark.parametrize("when", ["running", "stopped"])
async def test_an_ad1_released_from_quarantine_is_not_sent_again_when_its_signature_verifies_after_a_reload(
    tmp_path: Path, smki: Smki, receiver: Receiver, when: str
) -> None:
    reference = smki.folder(tmp_path)
    dsp = smki.world.pki.issued["dsp-xml-sign"]
    crl = reference["certs"] / "org.crl.pem"
    crl.write_bytes(smki.crl([dsp]))  # the DSP's certificate revoked: its signature is not verified
    gw = gateway(tmp_path, reference, receiver.url)
    ad1 = lone_ad1(smki, 323 if when == "running" else 324, "12:00")
    gw.start()
    try:
        await gw.wait_ready()
        url = url_of(gw)
        [one] = await send_all(url, [ad1])
        assert (one.status, one.decision) == (200, "suppress"), one  # quarantined
        quarantined = str(one.message_id)
        assert "#unverified:" in quarantined
        if when == "stopped":
            assert gw.terminate() == 0, gw.log_tail()
        assert release(gw, quarantined) == (0, "")
        crl.write_bytes(smki.crl([]))  # a list revoking nothing: the DSP's signature verifies again
        if when == "stopped":
            gw.start()  # the new list is read at start; the release is taken in at start
            await gw.wait_ready()
        else:
            report = await reload_by(gw, "admin")
            assert report["status"] == "reloaded", report
        await _settled(receiver, 1)  # the release's delivery
        [again] = await send_all(url, [ad1])  # (running: most likely before the next scan takes the release in)
        assert again.status == 200, again
        assert again.message_id != quarantined  # decided under its verified id: the duplicate of the release
        await _settled(receiver, 1)
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            assert gw.terminate() == 0, gw.log_tail()
    # was: a second POST, the same bytes under their verified id (forward, no-activation)
    assert [(r.message_id, r.body) for r in receiver.log] == [(quarantined, ad1.body)]


async def test_releasing_a_quarantined_copy_whose_signed_copy_was_forwarded_since_is_refused(
    tmp_path: Path, smki: Smki, receiver: Receiver
) -> None:
    reference = smki.folder(tmp_path)
    dsp = smki.world.pki.issued["dsp-xml-sign"]
    crl = reference["certs"] / "org.crl.pem"
    crl.write_bytes(smki.crl([dsp]))
    gw = gateway(tmp_path, reference, receiver.url)
    ad1 = lone_ad1(smki, 325, "12:30")
    gw.start()
    try:
        await gw.wait_ready()
        url = url_of(gw)
        [one] = await send_all(url, [ad1])
        assert (one.status, one.decision) == (200, "suppress"), one
        crl.write_bytes(smki.crl([]))
        report = await reload_by(gw, "admin")
        assert report["status"] == "reloaded", report
        [signed] = await send_all(url, [ad1])  # decided afresh: the quarantine withheld the bytes from the DNO
        assert (signed.status, signed.decision) == (200, "forward"), signed
        await _settled(receiver, 1)
        rc, err = release(gw, str(one.message_id))
        # was: released, the DNO got the same bytes a second time
        assert rc == 1, err
        assert str(signed.message_id) in err and "the DNO has them" in err
        await asyncio.sleep(1.5)
    finally:
        assert gw.terminate() == 0, gw.log_tail()
    assert [(r.message_id, r.body) for r in receiver.log] == [(signed.message_id, ad1.body)]
