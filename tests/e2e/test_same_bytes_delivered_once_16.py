"""End to end: the same bytes reach the DNO once, whether their signature verified at one delivery and not at
the other (``python -m gateway serve`` as a real process, its certificate store reloaded between the two).

A message is decided under its DUIS identity when its XML signature verified, else under
``<identity>#unverified:<digest>``; the engine answers the second delivery of the same bytes under the other id
as a duplicate of the first decision (docs/ENGINE.md §8). The service then enqueued the duplicate of a forward
under the delivery's own id, so the DNO got the same bytes a second time under another
``X-DUISGW-Message-Id`` (its dedupe by message id could not see it). They are enqueued under the id they were
forwarded with now: the outbox holds that row already, and nothing new is sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from conftest import Receiver
from e2ekit import send_all
from test_smki_reload_e2e import Smki, reload_by, start

from gateway.service.simulate import TimedMessage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smki(tmp_path_factory: pytest.TempPathFactory) -> Smki:
    return Smki(tmp_path_factory.mktemp("smki-same-bytes"))


def lone_ad1(smki: Smki, n: int, at: str) -> TimedMessage:
    """An AD1 of premises ``n`` with no firmware activity: forwarded, signed by the DSP."""
    _esme, ch, mpan = smki.world.meter(n)
    t1 = smki.story.t(at)
    return TimedMessage(t1, "inline", smki.world.factory.ad1(ch, mpan, t1 - dt.timedelta(minutes=2), t1, 700 + n))


async def _settled(receiver: Receiver) -> None:
    await receiver.wait_for(1)
    await asyncio.sleep(1.0)  # (a second copy, were one enqueued, would be posted within this)


@pytest.mark.parametrize("first", ["verified", "unverified"])
async def test_an_ad1_forwarded_once_is_not_sent_again_under_its_other_id_after_a_reload_changed_its_verification(
    tmp_path: Path, smki: Smki, receiver: Receiver, first: str
) -> None:
    reference = smki.folder(tmp_path)
    dsp = smki.world.pki.issued["dsp-xml-sign"]
    crl = reference["certs"] / "org.crl.pem"
    if first == "unverified":
        crl.write_bytes(smki.crl([dsp]))  # the DSP's certificate revoked: its signature is not verified
    gw, url = await start(tmp_path, reference, receiver.url, workers="ingress")
    ad1 = lone_ad1(smki, 320 if first == "verified" else 321, "12:00")
    try:
        [one] = await send_all(url, [ad1])
        assert (one.status, one.decision) == (200, "forward"), one
        assert ("#unverified:" in (one.message_id or "")) is (first == "unverified")
        await _settled(receiver)

        crl.write_bytes(smki.crl([] if first == "unverified" else [dsp]))
        report = await reload_by(gw, "admin")
        assert report["status"] == "reloaded", report
        [again] = await send_all(url, [ad1])
        assert again.status == 200 and again.decision == "forward", again
        assert again.message_id != one.message_id  # decided under its other id: a duplicate of the first
        await _settled(receiver)
    finally:
        assert gw.terminate() == 0
    # one POST, under the first delivery's id, with the bytes the DSP sent
    assert [(r.message_id, r.body) for r in receiver.log] == [(one.message_id, ad1.body)]
