"""End to end: hot reload of the SMKI certificate store and its revocation lists (SIGHUP, ``POST
/admin/reload``) in ``python -m gateway serve`` as a real process, with its worker processes.

Each case is a premises whose DSP-signed activation response is followed five minutes later by an AD1: the
AD1 is suppressed only when the response's signature is evidence (verified against a certificate that no
list in force revokes, under a list that is not stale), else forwarded. The certificate folder is the
test's own copy of a generated world's (with the organisation CA that signs the CRLs); lists are dropped
into it while the gateway runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

import e2ekit
import pytest
from conftest import Receiver, free_port
from cryptography.hazmat.primitives import serialization
from e2ekit import GatewayProcess, ad1_decision, start_with_workers

from gateway.service.simulate import TimedMessage
from gateway.smki import DCC_EUI, ROLE_DSP_XML_SIGN
from gateway.testkit.messages import MessageFactory, Signer
from gateway.testkit.pki import Credential
from gateway.testkit.scenario import Scenario, World

pytestmark = pytest.mark.slow

UTC = dt.UTC
FAR = dt.datetime.now(UTC) + dt.timedelta(days=365)  # a list's nextUpdate that stays fresh, on both clocks


class Smki:
    """A generated world whose certificate folder also holds the organisation CA (it signs the CRLs) and a
    second DSP XML-signing certificate (``old``: revoked by the lists of some cases)."""

    def __init__(self, out: Path) -> None:
        self.world = World.generated("smki-reload")
        pki = self.world.pki
        self.old = pki.organisation("dsp-old", DCC_EUI, ROLE_DSP_XML_SIGN)
        pki.org_ca()
        for n in range(300, 330):  # the cases' premises: in the GUID list and the inventory written now
            self.world.meter(n)
        self.reference = self.world.write_reference(out)
        self.story = Scenario("smki", self.world)
        self.issuer = pki.crl([]).issuer.rfc4514_string()

    def folder(self, tmp: Path) -> dict[str, Path]:
        """The reference data with a certificate folder of the test's own."""
        certs = tmp / "certs"
        shutil.copytree(self.reference["certs"], certs)
        return {**self.reference, "certs": certs}

    def crl(self, revoked: list[Credential], *, next_update: dt.datetime = FAR) -> bytes:
        when = dt.datetime(2026, 2, 1, tzinfo=UTC)
        crl = self.world.pki.crl(
            [(c, when) for c in revoked],
            this_update=dt.datetime(2026, 2, 1, tzinfo=UTC),
            next_update=next_update,
        )
        return crl.public_bytes(serialization.Encoding.PEM)

    def case(self, n: int, at: str, signer: Credential | None = None) -> list[TimedMessage]:
        """Premises ``n``: an activation response at ``at`` (signed by the DSP, or ``signer``), an AD1 5 min later."""
        f = self.world.factory
        if signer is not None:
            f = MessageFactory(dsp=Signer(signer.private_key, signer.certificate), supplier=self.world.supplier,
                               device_key=f.device_key)  # fmt: skip
        esme, ch, mpan = self.world.meter(n)
        t0 = self.story.t(at)
        t1 = t0 + dt.timedelta(minutes=5)
        return [
            TimedMessage(t0, "observe", f.activate_response(esme, 8000 + n, t0)),
            TimedMessage(t1, "inline", f.ad1(ch, mpan, t1 - dt.timedelta(minutes=2), t1, 500 + n)),
        ]


@pytest.fixture(scope="module")
def smki(tmp_path_factory: pytest.TempPathFactory) -> Smki:
    return Smki(tmp_path_factory.mktemp("smki"))


async def start(
    tmp: Path, reference: dict[str, Path], url: str, *, workers: str
) -> tuple[GatewayProcess, str]:
    return await start_with_workers(tmp, reference, url, workers=workers, port=free_port(), admin=free_port())


async def scrape(gw: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return await e2ekit.scrape(gw.admin_port)


async def metric(gw: GatewayProcess, name: str, **labels: str) -> float | None:
    return await e2ekit.metric(gw.admin_port, name, **labels)


async def reload_by(gw: GatewayProcess, how: str) -> dict[str, Any]:
    """Reload by SIGHUP (waits for the SMKI generation to move) or ``POST /admin/reload`` (its report)."""
    before = (await gw.admin("GET", "/admin/state"))["smki"]["generation"]
    if how == "admin":
        report: dict[str, Any] = await gw.admin("POST", "/admin/reload")
        return report["smki"]
    gw.hup()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = (await gw.admin("GET", "/admin/state"))["smki"]
        if state["generation"] != before:
            return {**state, "status": "reloaded"}
        await asyncio.sleep(0.05)
    raise AssertionError(f"the SMKI store was not reloaded on SIGHUP: {gw.log_tail()}")


@pytest.mark.parametrize(("workers", "how"), [("ingress", "hup"), ("ingress", "admin"), ("classify", "hup")])
async def test_a_crl_dropped_in_after_start_revokes_the_dsp_certificate_in_every_process_after_the_reload(
    tmp_path: Path, smki: Smki, receiver: Receiver, workers: str, how: str
) -> None:
    reference = smki.folder(tmp_path)
    gw, url = await start(tmp_path, reference, receiver.url, workers=workers)
    dsp = smki.world.pki.issued["dsp-xml-sign"]
    try:
        assert await ad1_decision(url, smki.case(301, "10:00")) == "suppress"
        (reference["certs"] / "org.crl.pem").write_bytes(smki.crl([dsp]))
        # on disk but not loaded: the store in force (in the workers too) still trusts the DSP certificate
        assert await ad1_decision(url, smki.case(302, "10:10")) == "suppress"
        assert await metric(gw, "duisgw_verify_failures_total", reason="xml-signature-revoked") is None

        report = await reload_by(gw, how)
        assert report["status"] == "reloaded" and report["revocation_lists"] == 1, report
        if how == "admin":  # the worker process rebuilt its store before the answer
            assert report["workers"] == {workers: {"reloaded": 1, "replaced": 0}}, report
        assert await ad1_decision(url, smki.case(303, "10:20")) == "forward"
        assert await ad1_decision(url, smki.case(304, "10:30")) == "forward"
        # both signatures of each case (the response and the AD1) were refused as revoked
        assert await metric(gw, "duisgw_verify_failures_total", reason="xml-signature-revoked") == 4
    finally:
        assert gw.terminate() == 0
    assert "SMKI certificate store reloaded" in gw.log_tail(50000)


async def test_a_stale_list_replaced_by_a_fresh_one_on_reload_makes_the_evidence_verified_again(
    tmp_path: Path, smki: Smki, receiver: Receiver
) -> None:
    reference = smki.folder(tmp_path)
    stale_at = dt.datetime(2026, 3, 1, tzinfo=UTC)  # before the messages' day, and before the wall clock
    (reference["certs"] / "org.crl.pem").write_bytes(smki.crl([smki.old], next_update=stale_at))
    gw, url = await start(tmp_path, reference, receiver.url, workers="ingress")
    try:
        assert await metric(gw, "duisgw_smki_crl_stale", issuer=smki.issuer) == 1
        assert await ad1_decision(url, smki.case(311, "11:00")) == "forward"  # fail-closed: not evidence
        assert await metric(gw, "duisgw_verify_failures_total", reason="xml-signature-unverifiable") == 2

        (reference["certs"] / "org.crl.pem").write_bytes(smki.crl([smki.old]))
        report = await reload_by(gw, "admin")
        assert report["status"] == "reloaded" and report["workers"] == {
            "ingress": {"reloaded": 1, "replaced": 0}
        }
        assert await ad1_decision(url, smki.case(312, "11:10")) == "suppress"
        assert await metric(gw, "duisgw_smki_crl_stale", issuer=smki.issuer) == 0
        assert (
            await metric(gw, "duisgw_smki_crl_next_update_seconds", issuer=smki.issuer)
            == FAR.replace(microsecond=0).timestamp()
        )
        assert await metric(gw, "duisgw_verify_failures_total", reason="xml-signature-unverifiable") == 2
    finally:
        assert gw.terminate() == 0


@pytest.mark.parametrize("bad", ["garbage", "forged"])
async def test_a_bad_crl_on_reload_keeps_the_list_in_force_and_raises_the_stale_reference_metric(
    tmp_path: Path, smki: Smki, receiver: Receiver, bad: str
) -> None:
    reference = smki.folder(tmp_path)
    good = smki.crl([smki.old])
    (reference["certs"] / "org.crl.pem").write_bytes(good)
    gw, url = await start(tmp_path, reference, receiver.url, workers="ingress")
    try:
        assert await metric(gw, "duisgw_reference_stale", source="smki") == 0
        assert await ad1_decision(url, smki.case(321, "12:00", signer=smki.old)) == "forward"  # revoked
        if bad == "garbage":
            replacement = b"-----BEGIN X509 CRL-----\nnot a list\n-----END X509 CRL-----\n"
        else:  # a list with the CA's name, signed by another key: it would un-revoke the old DSP certificate
            from gateway.testkit.pki import derive_key

            forged = smki.world.pki.crl([], signing_key=derive_key("forger"), authority_key_id=False)
            replacement = forged.public_bytes(serialization.Encoding.PEM)
        (reference["certs"] / "org.crl.pem").write_bytes(replacement)
        report = await reload_by(gw, "admin")
        assert report["status"] == "refused" and "org.crl.pem" in report["refused"], report
        assert (report["generation"], report["revocation_lists"]) == (1, 1)
        assert await metric(gw, "duisgw_reference_stale", source="smki") == 1
        state = await gw.admin("GET", "/admin/state")
        assert "org.crl.pem" in state["stale"]["smki"]
        # the list in force still revokes the old DSP certificate, in the ingress worker too
        assert await ad1_decision(url, smki.case(322, "12:10", signer=smki.old)) == "forward"
        assert await ad1_decision(url, smki.case(323, "12:20")) == "suppress"  # the good DSP certificate

        (reference["certs"] / "org.crl.pem").write_bytes(good)  # put back: the same bytes, no longer stale
        report = await reload_by(gw, "admin")
        assert (report["status"], report["generation"]) == ("unchanged", 1)
        assert await metric(gw, "duisgw_reference_stale", source="smki") == 0
    finally:
        assert gw.terminate() == 0
    assert "SMKI reload refused" in gw.log_tail(50000)


async def test_the_crl_stale_gauge_flips_while_the_gateway_runs_and_a_reload_clears_it(
    tmp_path: Path, smki: Smki, receiver: Receiver
) -> None:
    reference = smki.folder(tmp_path)
    soon = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(seconds=8)
    (reference["certs"] / "org.crl.pem").write_bytes(smki.crl([], next_update=soon))
    gw, _url = await start(tmp_path, reference, receiver.url, workers="ingress")
    try:
        assert await metric(gw, "duisgw_smki_crl_stale", issuer=smki.issuer) == 0
        assert await metric(gw, "duisgw_smki_crl_next_update_seconds", issuer=smki.issuer) == soon.timestamp()
        await asyncio.sleep(max(0.0, (soon - dt.datetime.now(UTC)).total_seconds()) + 1.0)
        assert (
            await metric(gw, "duisgw_smki_crl_stale", issuer=smki.issuer) == 1
        )  # nothing reloaded: time moved

        (reference["certs"] / "org.crl.pem").write_bytes(smki.crl([]))
        await reload_by(gw, "hup")
        assert await metric(gw, "duisgw_smki_crl_stale", issuer=smki.issuer) == 0
    finally:
        assert gw.terminate() == 0
