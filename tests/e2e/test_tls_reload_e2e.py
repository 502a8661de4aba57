"""End to end: ``python -m gateway serve`` as a real process, its ingress in a worker process, reloads its
TLS material on SIGHUP and on ``POST /admin/reload``: a rotated certificate is what a new handshake sees, a
key that does not match keeps the certificate in force and the reload, the state and the metrics say so; a
revocation list that revokes a client closes the keep-alive connections it has open (in the gateway process
or in every ingress worker process)."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import Receiver, free_port
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from e2ekit import DNO_USER, GatewayProcess, Traffic, write_config
from prometheus_client.parser import text_string_to_metric_families
from servicekit import Ca, KeepAlive, _ca, _leaf, _write_key, client_ctx

pytestmark = pytest.mark.slow

PEM = serialization.Encoding.PEM


async def presented(port: int, trust: ssl.SSLContext) -> int:
    """The serial number of the certificate a new handshake with the ingress sees."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


async def metric(gw: GatewayProcess, name: str, labels: dict[str, str]) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_sighup_and_admin_reload_rotate_the_ingress_certificate_in_the_worker_processes(
    tmp_path: Path, traffic: Traffic, receiver: Receiver
) -> None:
    ca_key, ca_cert = _ca("duisgw e2e reload CA")
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(PEM))
    trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"

    def issue() -> int:
        k, c = _leaf("127.0.0.1", ca_key, ca_cert, server=True)
        cert.write_bytes(c.public_bytes(PEM))
        _write_key(key, k)
        return c.serial_number

    first = issue()
    port, admin = free_port(), free_port()
    dest = {"name": "dno-a", "user": DNO_USER, "url": receiver.url}
    config = write_config(
        tmp_path / "gateway.toml",
        port=port,
        admin_port=admin,
        reference=traffic.reference,
        destinations=[dest],
        server_tls=f'\n[server.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n',
        server_extra="ingress_processes = 1\n",
    )
    gw = GatewayProcess(config, admin)
    gw.start()
    try:
        await gw.wait_ready()
        assert await presented(port, trust) == first

        second = issue()
        gw.hup()
        deadline = time.monotonic() + 30
        while await presented(port, trust) != second:
            assert time.monotonic() < deadline, gw.log_tail()
            await asyncio.sleep(0.1)
        assert "TLS material of server reloaded" in gw.log_tail(20000)

        report = await gw.admin("POST", "/admin/reload")
        assert report["tls"] == {"server": {"status": "unchanged"}}

        k, _c = _leaf("127.0.0.1", ca_key, ca_cert, server=True)
        _write_key(key, k)  # a key that is not the certificate's
        report = await gw.admin("POST", "/admin/reload")
        assert report["tls"]["server"]["status"] == "refused"
        state = await gw.admin("GET", "/admin/state")
        assert "server" in state["stale"]["tls"]
        assert await metric(gw, "duisgw_reference_stale", {"source": "tls"}) == 1
        assert await presented(port, trust) == second  # the certificate in force stays
    finally:
        assert gw.terminate() == 0


@pytest.mark.parametrize("ingress_processes", [0, 2], ids=["in-process", "2-ingress-workers"])
async def test_a_reloaded_crl_closes_the_open_keep_alive_connections_of_the_clients_it_revokes(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, ingress_processes: int
) -> None:
    """Mutual TLS ingress with a ``crl_file``: clients A, B and C hold keep-alive connections. A list revoking
    A, then SIGHUP: A's connections are closed by the gateway (the next request on them gets no answer), and
    counted in ``/metrics``; a list revoking B too, then ``POST /admin/reload``: B's connection is closed and
    the report says how many were; C's connection goes on working throughout."""
    ca = Ca("duisgw e2e revocation CA")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "crl")}
    ca.write(files["ca"])
    ca.server().write(files["cert"], files["key"])
    clients = {name: ca.client(f"DSP {name}") for name in "ABC"}
    ctx = {}
    for name, issued in clients.items():
        issued.write(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        ctx[name] = client_ctx(files["ca"], (tmp_path / f"{name}.pem", tmp_path / f"{name}.key"))
    files["crl"].write_bytes(ca.crl([]))
    port, admin = free_port(), free_port()
    config = write_config(
        tmp_path / "gateway.toml",
        port=port,
        admin_port=admin,
        reference=traffic.reference,
        destinations=[{"name": "dno-a", "user": DNO_USER, "url": receiver.url}],
        server_tls=(
            f'\n[server.tls]\ncert_file = "{files["cert"]}"\nkey_file = "{files["key"]}"\n'
            f'client_ca_file = "{files["ca"]}"\ncrl_file = "{files["crl"]}"\n'
        ),
        server_extra=f"ingress_processes = {ingress_processes}\n",
    )
    bodies = iter([s.body for s in traffic.stream.steps if s.lane == "observe"])
    gw = GatewayProcess(config, admin)
    gw.start()
    try:
        await gw.wait_ready()
        conns = {name: [await KeepAlive.open(port, ctx[name], "/duis/observe") for _ in range(n)]
                 for name, n in (("A", 4), ("B", 1), ("C", 1))}  # fmt: skip
        for conn in [c for group in conns.values() for c in group]:
            assert await conn.post(next(bodies)) == 204
        assert await metric(gw, "duisgw_tls_connections_cut_total", {"listener": "server"}) is None

        files["crl"].write_bytes(ca.crl([clients["A"]]))
        gw.hup()
        deadline = time.monotonic() + 30
        while await metric(gw, "duisgw_tls_connections_cut_total", {"listener": "server"}) != 4:
            assert time.monotonic() < deadline, gw.log_tail()
            await asyncio.sleep(0.1)
        for conn in conns["A"]:
            assert await conn.closed_by_listener(), "a revoked client's connection is still open"
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
            await conns["A"][0].post(next(bodies))
        assert await conns["B"][0].post(next(bodies)) == 204
        assert await conns["C"][0].post(next(bodies)) == 204
        log = gw.log_tail(50000)
        assert log.count("TLS reload of server: 4 open connection(s) closed") == 1, log

        files["crl"].write_bytes(ca.crl([clients["A"], clients["B"]]))
        report = await gw.admin("POST", "/admin/reload")
        assert report["tls"]["server"]["status"] == "reloaded", report
        assert report["tls"]["server"]["connections_cut"] == 1
        assert await conns["B"][0].closed_by_listener()
        assert await conns["C"][0].post(next(bodies)) == 204  # not revoked: still the same connection
        assert await metric(gw, "duisgw_tls_connections_cut_total", {"listener": "server"}) == 5
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            refused = await KeepAlive.open(port, ctx["B"], "/duis/observe")  # and refused at the handshake
            await refused.post(next(bodies))
        for conn in [c for group in conns.values() for c in group]:
            await conn.close()
    finally:
        assert gw.terminate() == 0
