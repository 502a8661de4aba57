"""Revocation lists (``crl_file``) for TLS peers: the DSP's client certificates at the ingress (mutual
TLS), the DNO endpoint's server certificate, and what ``duisgw config check`` says about the file. The
CA, the certificates and the CRLs are generated here; the listeners are real."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from servicekit import Receiver, _ca, _leaf, _write_key, counters, duis_body, running, service_config

from gateway.cli import main
from gateway.service.app import Service
from gateway.service.config import ConfigError, TlsClientConfig, TlsServerConfig
from gateway.service.serve import load_serve_config
from gateway.service.tls import client_context, read_crls, server_context

XML = {"Content-Type": "application/xml"}
PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class CrlPki:
    ca: Path
    server_cert: Path  # good
    server_key: Path
    revoked_server_cert: Path
    revoked_server_key: Path
    client_cert: Path  # good
    client_key: Path
    revoked_client_cert: Path
    revoked_client_key: Path
    crl: Path  # the CA's list: revokes the two "revoked" certificates
    expired_crl: Path  # the same list, past its nextUpdate
    other_crl: Path  # a list of an unrelated CA (the CA's own list missing)
    not_a_crl: Path  # a certificate where a CRL is expected


def _crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: list[x509.Certificate],
    *,
    age: float = 0,
) -> x509.CertificateRevocationList:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=age)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def crl_pki(tmp_path_factory: pytest.TempPathFactory) -> CrlPki:
    d = tmp_path_factory.mktemp("crl-pki")
    ca_key, ca_cert = _ca("duisgw CRL test CA")
    other_key, other_cert = _ca("unrelated CA")
    files: dict[str, Path] = {}
    revoked: list[x509.Certificate] = []
    for name, server in (
        ("server", True),
        ("revoked_server", True),
        ("client", False),
        ("revoked_client", False),
    ):
        key, cert = _leaf("127.0.0.1" if server else f"DSP {name}", ca_key, ca_cert, server=server)
        (d / f"{name}.pem").write_bytes(cert.public_bytes(PEM))
        _write_key(d / f"{name}.key", key)
        files[f"{name}_cert"], files[f"{name}_key"] = d / f"{name}.pem", d / f"{name}.key"
        if name.startswith("revoked"):
            revoked.append(cert)
    (d / "ca.pem").write_bytes(ca_cert.public_bytes(PEM))
    (d / "ca.crl.pem").write_bytes(_crl(ca_key, ca_cert, revoked).public_bytes(PEM))
    (d / "expired.crl.pem").write_bytes(_crl(ca_key, ca_cert, revoked, age=3).public_bytes(PEM))
    (d / "other.crl.pem").write_bytes(_crl(other_key, other_cert, []).public_bytes(PEM))
    return CrlPki(
        ca=d / "ca.pem",
        crl=d / "ca.crl.pem",
        expired_crl=d / "expired.crl.pem",
        other_crl=d / "other.crl.pem",
        not_a_crl=d / "ca.pem",
        **files,
    )


def ingress(tmp_path: Path, pki: CrlPki, receiver: Receiver, crl: Path) -> Service:
    cfg = service_config(tmp_path, receiver.url)
    tls = TlsServerConfig(
        cert_file=str(pki.server_cert),
        key_file=str(pki.server_key),
        client_ca_file=str(pki.ca),
        crl_file=str(crl),
    )
    return Service(replace(cfg, server=replace(cfg.server, tls=tls)))


def dsp(pki: CrlPki, cert: Path, key: Path) -> ssl.SSLContext:
    return client_context(TlsClientConfig(ca_file=str(pki.ca), cert_file=str(cert), key_file=str(key)))


async def post(port: int, ctx: ssl.SSLContext, body: bytes) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"https://127.0.0.1:{port}/duis/dno/dno-a", data=body, headers=XML, ssl=ctx) as resp,
    ):
        return resp.status


# ------------------------------------------------------------------ the ingress under mutual TLS


async def test_ingress_refuses_a_revoked_client_certificate_at_the_handshake_and_accepts_a_good_one(
    tmp_path: Path, crl_pki: CrlPki, receiver: Receiver
) -> None:
    svc = ingress(tmp_path, crl_pki, receiver, crl_pki.crl)
    async with running(svc):
        with pytest.raises(aiohttp.ClientError):  # the handshake fails: no HTTP status at all
            await post(
                svc.port, dsp(crl_pki, crl_pki.revoked_client_cert, crl_pki.revoked_client_key), duis_body(1)
            )
        assert (
            await post(svc.port, dsp(crl_pki, crl_pki.client_cert, crl_pki.client_key), duis_body(2)) == 204
        )
        await receiver.wait_for(1)
    assert [r.body for r in receiver.log] == [duis_body(2)]  # the revoked client's message never got in


async def test_ingress_worker_processes_refuse_a_revoked_client_certificate(
    tmp_path: Path, crl_pki: CrlPki, receiver: Receiver
) -> None:
    """The ingress worker processes build their own context from the configuration: the lists too."""
    svc = ingress(tmp_path, crl_pki, receiver, crl_pki.crl)
    svc = Service(replace(svc.config, server=replace(svc.config.server, ingress_processes=1)))
    async with running(svc):
        assert svc.ingress_pool is not None and svc.ingress_pool.live == 1
        with pytest.raises(aiohttp.ClientError):
            await post(
                svc.port, dsp(crl_pki, crl_pki.revoked_client_cert, crl_pki.revoked_client_key), duis_body(1)
            )
        assert (
            await post(svc.port, dsp(crl_pki, crl_pki.client_cert, crl_pki.client_key), duis_body(2)) == 204
        )
        await receiver.wait_for(1)
    assert [r.body for r in receiver.log] == [duis_body(2)]


async def test_ingress_without_a_crl_of_the_clients_issuer_refuses_every_client_fail_closed(
    tmp_path: Path, crl_pki: CrlPki, receiver: Receiver
) -> None:
    """OpenSSL with VERIFY_CRL_CHECK_LEAF needs a valid list of the peer's issuer: a file holding only
    another CA's list refuses the good client too (so does a list past its nextUpdate)."""
    for n, crl in enumerate((crl_pki.other_crl, crl_pki.expired_crl)):
        svc = ingress(tmp_path / str(n), crl_pki, receiver, crl)
        async with running(svc):
            with pytest.raises(aiohttp.ClientError):
                await post(svc.port, dsp(crl_pki, crl_pki.client_cert, crl_pki.client_key), duis_body(1))
    assert receiver.log == []


def test_server_context_checks_the_leaf_against_the_lists(crl_pki: CrlPki) -> None:
    ctx = server_context(
        TlsServerConfig(
            cert_file=str(crl_pki.server_cert),
            key_file=str(crl_pki.server_key),
            client_ca_file=str(crl_pki.ca),
            crl_file=str(crl_pki.crl),
        )
    )
    assert ctx is not None and ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_a_crl_file_holding_a_certificate_is_refused_not_trusted(crl_pki: CrlPki, tmp_path: Path) -> None:
    """``load_verify_locations`` would take a certificate in the file for a trust anchor."""
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(crl_pki.crl.read_bytes() + crl_pki.ca.read_bytes())
    for bad in (mixed, crl_pki.not_a_crl):
        with pytest.raises(ValueError, match="not only revocation lists"):
            client_context(TlsClientConfig(ca_file=str(crl_pki.ca), crl_file=str(bad)))
    several = tmp_path / "several.pem"
    several.write_bytes(crl_pki.crl.read_bytes() + crl_pki.other_crl.read_bytes())
    assert len(read_crls(str(several))) == 2


# ------------------------------------------------------------------ toward the DNO


async def test_dno_client_refuses_a_revoked_server_certificate_and_keeps_the_message_for_retry(
    tmp_path: Path, crl_pki: CrlPki
) -> None:
    revoked_ctx = server_context(
        TlsServerConfig(cert_file=str(crl_pki.revoked_server_cert), key_file=str(crl_pki.revoked_server_key))
    )
    receiver = Receiver(ssl_context=revoked_ctx)
    await receiver.start()
    try:
        cfg = service_config(tmp_path, receiver.url)
        dest = replace(
            cfg.destinations[0], tls=TlsClientConfig(ca_file=str(crl_pki.ca), crl_file=str(crl_pki.crl))
        )
        svc = Service(replace(cfg, destinations=(dest,)))
        async with running(svc), aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=duis_body(4), headers=XML
            ) as r:
                assert r.status == 204
            rows = await svc.outbox.rows("http:dno-a")
            for _ in range(200):
                rows = await svc.outbox.rows("http:dno-a")
                if rows and rows[0].attempts >= 2:
                    break
                await asyncio.sleep(0.05)
            assert len(rows) == 1 and rows[0].attempts >= 2  # tried, failed, tried again
            assert rows[0].state == "pending"  # not delivered, not dead-lettered: kept for the next attempt
            assert "certificate revoked" in rows[0].last_error
            assert rows[0].body == duis_body(4)
    finally:
        await receiver.stop()
    assert receiver.log == []  # no request reached the revoked endpoint


async def test_dno_client_delivers_to_a_server_whose_certificate_is_not_revoked(
    tmp_path: Path, crl_pki: CrlPki
) -> None:
    good_ctx = server_context(
        TlsServerConfig(cert_file=str(crl_pki.server_cert), key_file=str(crl_pki.server_key))
    )
    receiver = Receiver(ssl_context=good_ctx)
    await receiver.start()
    try:
        cfg = service_config(tmp_path, receiver.url)
        dest = replace(
            cfg.destinations[0], tls=TlsClientConfig(ca_file=str(crl_pki.ca), crl_file=str(crl_pki.crl))
        )
        async with (
            running(Service(replace(cfg, destinations=(dest,)))) as svc,
            aiohttp.ClientSession() as http,
        ):
            async with http.post(
                f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=duis_body(5), headers=XML
            ) as r:
                assert r.status == 204
            await receiver.wait_for(1)
            gauge = counters(svc, "duisgw_tls_crl_next_update_seconds", ("_seconds",))
    finally:
        await receiver.stop()
    assert [r.body for r in receiver.log] == [duis_body(5)]
    assert gauge == {("destination:dno-a", "CN=duisgw CRL test CA"): _next_update(crl_pki.crl)}


def _next_update(path: Path) -> float:
    (crl,) = read_crls(str(path))
    assert crl.next_update_utc is not None
    return crl.next_update_utc.timestamp()


async def test_the_next_update_of_each_tls_revocation_list_read_at_start_is_a_gauge(
    tmp_path: Path, crl_pki: CrlPki, receiver: Receiver
) -> None:
    """Past nextUpdate every peer of that issuer is refused (fail-closed): the gauge is what to alert on."""
    async with running(ingress(tmp_path, crl_pki, receiver, crl_pki.crl)) as svc:
        gauge = counters(svc, "duisgw_tls_crl_next_update_seconds", ("_seconds",))
    assert gauge == {("server", "CN=duisgw CRL test CA"): _next_update(crl_pki.crl)}


# ------------------------------------------------------------------ config check


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    f = tmp_path / "gw.toml"
    f.write_text('mode = "passthrough"\n' + text, encoding="utf-8")
    code = main(["config", "check", str(f)])
    return code, capsys.readouterr().err


def _server_tls(pki: CrlPki, crl: Path, *, client_ca: bool = True) -> str:
    ca = f'client_ca_file = "{pki.ca}"\n' if client_ca else ""
    return (
        f'[server.tls]\ncert_file = "{pki.server_cert}"\nkey_file = "{pki.server_key}"\n{ca}crl_file = "{crl}"\n'
        '[[destinations]]\nname = "dno-a"\nurl = "http://127.0.0.1:1/"\n'
    )


def test_config_check_accepts_crl_files_on_the_ingress_a_destination_and_mqtt(
    tmp_path: Path, crl_pki: CrlPki, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        f'[server.tls]\ncert_file = "{crl_pki.server_cert}"\nkey_file = "{crl_pki.server_key}"\n'
        f'client_ca_file = "{crl_pki.ca}"\ncrl_file = "{crl_pki.crl}"\n'
        '[[destinations]]\nname = "dno-a"\nurl = "https://127.0.0.1:1/"\n'
        f'[destinations.tls]\nca_file = "{crl_pki.ca}"\ncrl_file = "{crl_pki.crl}"\n'
        "[mqtt]\nenabled = true\ntls_enabled = true\n"
        f'[mqtt.tls]\nca_file = "{crl_pki.ca}"\ncrl_file = "{crl_pki.crl}"\n'
    )
    assert _check(tmp_path, text, capsys) == (0, "")


def test_config_check_refuses_a_crl_file_where_no_peer_certificate_is_checked(
    tmp_path: Path, crl_pki: CrlPki, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _check(tmp_path, _server_tls(crl_pki, crl_pki.crl, client_ca=False), capsys)
    assert code == 2
    assert "duisgw config: server.tls.crl_file: set, but client_ca_file is not" in err
    with pytest.raises(ConfigError):  # serve runs the same validation before it starts
        load_serve_config(tmp_path / "gw.toml")
    with pytest.raises(ValueError, match="crl_file needs client_ca_file"):
        server_context(
            TlsServerConfig(
                cert_file=str(crl_pki.server_cert),
                key_file=str(crl_pki.server_key),
                crl_file=str(crl_pki.crl),
            )
        )


@pytest.mark.parametrize(
    ("which", "says"),
    [
        ("not_a_crl", "not only revocation lists"),
        ("other_crl", "is not signed by a certificate of"),
        ("expired_crl", "expired at"),
    ],
)
def test_config_check_refuses_a_crl_file_that_would_refuse_the_wrong_peers(
    tmp_path: Path, crl_pki: CrlPki, capsys: pytest.CaptureFixture[str], which: str, says: str
) -> None:
    code, err = _check(tmp_path, _server_tls(crl_pki, getattr(crl_pki, which)), capsys)
    assert code == 2
    assert "duisgw config: server.tls.crl_file: unusable revocation list file (" in err and says in err


def test_config_check_refuses_a_bad_crl_file_on_a_destination(
    tmp_path: Path, crl_pki: CrlPki, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.crl"
    garbage.write_bytes(b"not PEM at all\n")
    code, err = _check(
        tmp_path,
        (
            '[[destinations]]\nname = "dno-a"\nurl = "https://127.0.0.1:1/"\n'
            f'[destinations.tls]\nca_file = "{crl_pki.ca}"\ncrl_file = "{garbage}"\n'
        ),
        capsys,
    )
    assert code == 2 and "destinations[0].tls.crl_file: unusable revocation list file (" in err
    assert "no PEM revocation list" in err


def test_config_check_refuses_an_admin_crl_file_without_client_ca_file(
    tmp_path: Path, crl_pki: CrlPki, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = (
        "[admin]\nenabled = true\nport = 18081\n"
        f'[admin.tls]\ncert_file = "{crl_pki.server_cert}"\nkey_file = "{crl_pki.server_key}"\n'
    )
    dest = '[[destinations]]\nname = "dno-a"\nurl = "http://127.0.0.1:1/"\n'
    code, err = _check(tmp_path, admin + f'crl_file = "{crl_pki.crl}"\n' + dest, capsys)
    assert code == 2 and "duisgw config: admin.tls.crl_file: set, but client_ca_file is not" in err
    good = admin + f'client_ca_file = "{crl_pki.ca}"\ncrl_file = "{crl_pki.crl}"\n' + dest
    assert _check(tmp_path, good, capsys) == (0, "")
