"""Hot reload of the TLS material and the admin token (``Service.reload_transport``: what ``duisgw serve``
runs on SIGHUP and ``POST /admin/reload``). The CAs, certificates, keys and revocation lists are generated
here and written over the files the configuration names, as an operator replaces them; the listeners, the
DNO receiver and the clients are real (real sockets, real handshakes), and so are the ingress worker
processes and the sender process."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from servicekit import (
    MOSQUITTO,
    Broker,
    Ca,
    Issued,
    KeepAlive,
    Receiver,
    _write_key,
    client_ctx,
    counters,
    duis_body,
    free_port,
    running,
    serial_of,
    service_config,
)

from gateway.service.app import Service
from gateway.service.config import AdminConfig, DestinationConfig, TlsClientConfig, TlsServerConfig
from gateway.service.tls import ResumedPeerCheck, read_crls, server_context

PEM = serialization.Encoding.PEM
XML = {"Content-Type": "application/xml"}


@pytest.fixture(scope="module")
def ca() -> Ca:
    return Ca("duisgw reload test CA")


async def handshake(port: int, ctx: ssl.SSLContext, body: bytes) -> tuple[int, int]:
    """A new connection: the serial number of the certificate the listener presents, and the status of
    one POST on it."""
    conn = await KeepAlive.open(port, ctx)
    try:
        return conn.peer_serial, await conn.post(body)
    finally:
        await conn.close()


def stale(svc: Service) -> dict[tuple[str, ...], float]:
    return counters(svc, "duisgw_reference_stale", ("_stale",))


def crl_gauge(svc: Service) -> dict[tuple[str, ...], float]:
    return counters(svc, "duisgw_tls_crl_next_update_seconds", ("_seconds",))


def next_update(pem: bytes, tmp: Path) -> float:
    f = tmp / "probe.crl.pem"
    f.write_bytes(pem)
    (crl,) = read_crls(str(f))
    assert crl.next_update_utc is not None
    return crl.next_update_utc.timestamp()


@dataclass
class Files:
    """The files a configuration names (overwritten in place, as an operator replaces them)."""

    folder: Path

    def __getattr__(self, name: str) -> Path:
        return self.folder / f"{name}.pem"


def tls_ingress(tmp_path: Path, receiver: Receiver, tls: TlsServerConfig, **server: Any) -> Service:
    cfg = service_config(tmp_path, receiver.url)
    return Service(replace(cfg, server=replace(cfg.server, tls=tls, **server)))


def server_rotation(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> tuple[Files, Issued, Issued, ssl.SSLContext, Service]:
    """An ingress over TLS (not started) serving ``old`` of two server certificates of ``ca`` (``new`` is the
    one an operator rotates to), and a client context trusting ``ca``."""
    f = Files(tmp_path)
    old, new = ca.server(), ca.server()
    old.write(f.cert, f.key)
    trust = client_ctx(ca.write(f.ca))
    return (
        f,
        old,
        new,
        trust,
        tls_ingress(tmp_path, receiver, TlsServerConfig(cert_file=str(f.cert), key_file=str(f.key))),
    )


# ------------------------------------------------------------------ the ingress: a rotated certificate


async def test_a_rotated_server_certificate_is_what_a_new_handshake_sees_while_an_open_keep_alive_connection_goes_on(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> None:
    f, old, new, trust, svc = server_rotation(tmp_path, ca, receiver)
    async with running(svc):
        port = svc.port
        kept = await KeepAlive.open(port, trust)
        assert kept.peer_serial == old.cert.serial_number
        assert await kept.post(duis_body(1)) == 204

        new.write(f.cert, f.key)  # the operator rotates the certificate, then reloads
        report = await svc.reload_transport()

        assert report["tls"]["server"]["status"] == "reloaded", report
        assert svc.port == port  # the listening socket was not reopened
        assert await handshake(port, trust, duis_body(2)) == (new.cert.serial_number, 204)
        assert await kept.post(duis_body(3)) == 204  # the connection made before the reload still works
        assert kept.peer_serial == old.cert.serial_number
        await kept.close()
        assert (await svc.reload_transport())["tls"]["server"] == {"status": "unchanged"}
        await receiver.wait_for(3)
    assert sorted(r.body for r in receiver.log) == sorted(duis_body(n) for n in (1, 2, 3))


async def test_a_bad_new_key_keeps_the_certificate_in_force_and_the_reload_says_why_until_it_is_fixed(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> None:
    f, old, new, trust, svc = server_rotation(tmp_path, ca, receiver)
    async with running(svc):
        assert stale(svc)[("tls",)] == 0
        f.cert.write_bytes(new.cert.public_bytes(PEM))  # the new certificate, with the old key: no match
        report = await svc.reload_transport()
        assert report["tls"]["server"]["status"] == "refused"
        assert "mismatch" in report["tls"]["server"]["refused"].lower()
        assert stale(svc)[("tls",)] == 1
        assert await handshake(svc.port, trust, duis_body(1)) == (old.cert.serial_number, 204)

        f.key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        assert (await svc.reload_transport())["tls"]["server"]["status"] == "refused"
        assert await handshake(svc.port, trust, duis_body(2)) == (old.cert.serial_number, 204)

        new.write(f.cert, f.key)  # fixed: the next reload puts it in force and clears the gauge
        assert (await svc.reload_transport())["tls"]["server"]["status"] == "reloaded"
        assert stale(svc)[("tls",)] == 0
        assert await handshake(svc.port, trust, duis_body(3)) == (new.cert.serial_number, 204)


# ------------------------------------------------------------------ the ingress: a CRL published later


def mutual(f: Files) -> TlsServerConfig:
    return TlsServerConfig(
        cert_file=str(f.cert), key_file=str(f.key), client_ca_file=str(f.ca), crl_file=str(f.crl)
    )


def two_clients_on_mutual_tls(
    tmp_path: Path, ca: Ca, receiver: Receiver, **server: Any
) -> tuple[Files, Issued, Issued, Service]:
    """An ingress with mutual TLS and an empty revocation list (not started; ``server``: other ``[server]``
    options), and two clients of its CA ("DSP a", "DSP b") with their files written."""
    f = Files(tmp_path)
    ca.server().write(f.cert, f.key)
    ca.write(f.ca)
    dsp, other = ca.client("DSP a"), ca.client("DSP b")
    dsp.write(f.dsp, f.dsp_key)
    other.write(f.other, f.other_key)
    f.crl.write_bytes(ca.crl([]))
    return f, dsp, other, tls_ingress(tmp_path, receiver, mutual(f), **server)


async def test_a_crl_published_later_refuses_the_revoked_client_s_new_handshakes_after_reload(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> None:
    f = Files(tmp_path)
    ca.server().write(f.cert, f.key)
    ca.write(f.ca)
    dsp, other = ca.client("DSP a"), ca.client("DSP b")
    dsp.write(f.dsp, f.dsp_key)
    other.write(f.other, f.other_key)
    first = ca.crl([])
    f.crl.write_bytes(first)
    svc = tls_ingress(tmp_path, receiver, mutual(f))
    async with running(svc):
        as_dsp, as_other = client_ctx(f.ca, (f.dsp, f.dsp_key)), client_ctx(f.ca, (f.other, f.other_key))
        assert (await handshake(svc.port, as_dsp, duis_body(1)))[1] == 204
        assert crl_gauge(svc) == {("server", "CN=duisgw reload test CA"): next_update(first, tmp_path)}

        later = ca.crl([dsp], valid_for=dt.timedelta(days=2))
        f.crl.write_bytes(later)  # the CA publishes a list revoking the DSP's certificate
        assert (await svc.reload_transport())["tls"]["server"]["status"] == "reloaded"

        with pytest.raises((ssl.SSLError, ConnectionError, ValueError, asyncio.IncompleteReadError)):
            await handshake(svc.port, as_dsp, duis_body(2))  # refused at the handshake: no status at all
        assert (await handshake(svc.port, as_other, duis_body(3)))[1] == 204
        assert crl_gauge(svc) == {("server", "CN=duisgw reload test CA"): next_update(later, tmp_path)}
        await receiver.wait_for(2)
    assert sorted(r.body for r in receiver.log) == sorted([duis_body(1), duis_body(3)])


def cut(svc: Service) -> dict[tuple[str, ...], float]:
    return counters(svc, "duisgw_tls_connections_cut")


async def test_a_reload_whose_crl_revokes_a_client_closes_its_open_keep_alive_connections_and_counts_them(
    tmp_path: Path, ca: Ca, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The connections a revoked client opened before the reload are closed by the listener (the next request
    on them gets no answer); another client's connection goes on; the closures are counted, logged once and
    reported."""
    f, dsp, _other, svc = two_clients_on_mutual_tls(tmp_path, ca, receiver)
    async with running(svc):
        as_dsp, as_other = client_ctx(f.ca, (f.dsp, f.dsp_key)), client_ctx(f.ca, (f.other, f.other_key))
        revoked_conns = [await KeepAlive.open(svc.port, as_dsp) for _ in range(2)]
        kept = await KeepAlive.open(svc.port, as_other)
        for n, conn in enumerate([*revoked_conns, kept]):
            assert await conn.post(duis_body(n)) == 204

        f.crl.write_bytes(ca.crl([dsp]))
        with caplog.at_level(logging.WARNING, logger="duisgw.service"):
            report = await svc.reload_transport()

        assert report["tls"]["server"]["status"] == "reloaded", report
        assert report["tls"]["server"]["connections_cut"] == 2
        for conn in revoked_conns:
            assert await conn.closed_by_listener()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
            await revoked_conns[0].post(duis_body(10))  # no answer: the listener closed it
        assert await kept.post(duis_body(11)) == 204  # not revoked: its connection goes on
        assert cut(svc) == {("server",): 2}
        lines = [r.getMessage() for r in caplog.records if "open connection(s) closed" in r.getMessage()]
        assert lines == [
            "TLS reload of server: 2 open connection(s) closed: the revocation lists put in force revoke "
            "their client certificate"
        ]

        assert (await svc.reload_transport())["tls"]["server"] == {"status": "unchanged"}
        assert cut(svc) == {("server",): 2}  # the same lists again: nothing more to cut
        for conn in [*revoked_conns, kept]:
            await conn.close()
    assert duis_body(10) not in [r.body for r in receiver.log]


async def test_a_request_under_way_on_a_revoked_client_s_connection_is_answered_before_it_is_closed(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> None:
    """The cut is aiohttp's graceful close of one connection: the request whose body is still arriving when
    the reload revokes the client is read, decided and answered; only then is the connection closed."""
    f = Files(tmp_path)
    ca.server().write(f.cert, f.key)
    ca.write(f.ca)
    dsp = ca.client("DSP a")
    dsp.write(f.dsp, f.dsp_key)
    f.crl.write_bytes(ca.crl([]))
    svc = tls_ingress(tmp_path, receiver, mutual(f))
    async with running(svc):
        conn = await KeepAlive.open(svc.port, client_ctx(f.ca, (f.dsp, f.dsp_key)))
        body = duis_body(1)
        await conn.send(conn.head(len(body)) + body[:10])  # the request has begun: its handler reads the body
        await asyncio.sleep(0.2)

        f.crl.write_bytes(ca.crl([dsp]))
        report = await svc.reload_transport()
        assert report["tls"]["server"]["connections_cut"] == 1, report

        await conn.send(body[10:])
        assert await conn.answer() == 204  # answered ...
        assert await conn.closed_by_listener()  # ... then closed
        await conn.close()
        await receiver.wait_for(1)
    assert [r.body for r in receiver.log] == [body]


async def test_a_reload_closes_the_admin_listener_connections_of_a_revoked_client(
    tmp_path: Path, ca: Ca
) -> None:
    """The admin listener with mutual TLS (an operator's or a scraper's certificate): the same cut."""
    f = Files(tmp_path)
    ca.server().write(f.cert, f.key)
    ca.write(f.ca)
    operator, scraper = ca.client("operator"), ca.client("scraper")
    operator.write(f.operator, f.operator_key)
    scraper.write(f.scraper, f.scraper_key)
    f.crl.write_bytes(ca.crl([]))
    cfg = service_config(tmp_path)
    svc = Service(replace(cfg, admin=AdminConfig(enabled=True, host="127.0.0.1", port=0, tls=mutual(f))))

    async def get(conn: KeepAlive) -> int:
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        return await conn.answer()

    async with running(svc):
        as_operator = client_ctx(f.ca, (f.operator, f.operator_key))
        revoked = await KeepAlive.open(svc.admin_port, as_operator)
        kept = await KeepAlive.open(svc.admin_port, client_ctx(f.ca, (f.scraper, f.scraper_key)))
        assert await get(revoked) == 200 and await get(kept) == 200

        f.crl.write_bytes(ca.crl([operator]))
        report = await svc.reload_transport()
        assert report["tls"]["admin"] == {
            "status": "reloaded",
            "digest": report["tls"]["admin"]["digest"],
            "connections_cut": 1,
        }
        assert await revoked.closed_by_listener()
        assert await get(kept) == 200
        assert cut(svc) == {("admin",): 1}
        with pytest.raises((ssl.SSLError, ConnectionError, ValueError, asyncio.IncompleteReadError)):
            await get(await KeepAlive.open(svc.admin_port, as_operator))  # and refused at the handshake
        await revoked.close()
        await kept.close()


class Straddling:
    """A TLS client whose handshake is driven by hand (``ssl.MemoryBIO``): its client hello is sent and the
    listener's first flight received, and the handshake is finished only when :meth:`finish` is called."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ssl.SSLContext
    ) -> None:
        self.reader, self.writer = reader, writer
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")

    @classmethod
    async def begin(cls, port: int, ctx: ssl.SSLContext) -> Straddling:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self = cls(reader, writer, ctx)
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        writer.write(self.outgoing.read())  # the client hello: the listener picks its context now
        self.incoming.write(await asyncio.wait_for(reader.read(65536), 10))  # its first flight
        return self

    async def finish(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.writer.write(self.outgoing.read())
                self.incoming.write(await asyncio.wait_for(self.reader.read(65536), 10))
        self.writer.write(self.outgoing.read())  # the client's certificate and finished: judged now

    async def post(self, body: bytes) -> bytes:
        """POST ``body``; what comes back before the connection ends or 10 s pass (b"": closed unanswered)."""
        self.tls.write(
            b"POST /duis/dno/dno-a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.writer.write(self.outgoing.read())
        while True:
            with contextlib.suppress(ssl.SSLWantReadError):
                answer = self.tls.read(65536)
                if answer:
                    return answer
            try:
                data = await asyncio.wait_for(self.reader.read(65536), 10)
            except ConnectionError:
                return b""
            if not data:
                return b""
            self.incoming.write(data)

    def close(self) -> None:
        self.writer.close()


@pytest.mark.parametrize("ingress_processes", [0, 2], ids=["in-process", "2-ingress-workers"])
async def test_a_handshake_the_reload_overtook_gets_no_request_served_when_the_new_lists_revoke_its_client(
    tmp_path: Path, ca: Ca, receiver: Receiver, ingress_processes: int
) -> None:
    """A client hello handed to the previous context, the handshake finished after the reload (so after its
    scan of the open connections): the listener verified the certificate with the previous lists; its first
    request is refused (connection closed) when the lists in force revoke the client, served otherwise. The
    closed connection is counted in ``duisgw_tls_connections_cut_total{listener="server"}``, from an ingress
    worker process too."""
    f, dsp, _other, svc = two_clients_on_mutual_tls(tmp_path, ca, receiver, ingress_processes=ingress_processes)
    async with running(svc):
        as_dsp = await Straddling.begin(svc.port, client_ctx(f.ca, (f.dsp, f.dsp_key)))
        as_other = await Straddling.begin(svc.port, client_ctx(f.ca, (f.other, f.other_key)))

        f.crl.write_bytes(ca.crl([dsp]))
        report = await svc.reload_transport()
        assert report["tls"]["server"]["connections_cut"] == 0  # (not open yet when the reload looked)

        await as_dsp.finish()
        await as_other.finish()
        assert await as_dsp.post(duis_body(1)) == b""  # closed, unanswered
        assert (await as_other.post(duis_body(2))).startswith(b"HTTP/1.1 204")
        as_dsp.close()
        as_other.close()
        await receiver.wait_for(1)
        if not ingress_processes:
            assert svc.ingress_tls is not None and svc.ingress_tls.cut_connections == 1
        for _ in range(100):  # (a worker's count comes over its channel)
            if counters(svc, "duisgw_tls_connections_cut"):
                break
            await asyncio.sleep(0.02)
        assert counters(svc, "duisgw_tls_connections_cut") == {("server",): 1.0}
    assert [r.body for r in receiver.log] == [duis_body(2)]


def test_revokes_needs_a_current_list_signed_by_the_certificate_s_own_issuer_that_lists_it(
    tmp_path: Path, ca: Ca
) -> None:
    """What closes an open connection (:meth:`ResumedPeerCheck.revokes`): only a list that revokes the
    certificate, current and signed by the CA of client_ca_file that issued it; no list, a stale or a foreign
    one, or a certificate from elsewhere is not evidence of revocation."""
    f = Files(tmp_path)
    other = Ca("another CA")
    dsp, revoked, stranger = ca.client("DSP a"), ca.client("DSP b"), other.client("DSP c")
    der = {
        name: c.cert.public_bytes(serialization.Encoding.DER)
        for name, c in (("dsp", dsp), ("revoked", revoked), ("stranger", stranger))
    }
    now = dt.datetime.now(dt.UTC)

    def check(crl: bytes | None) -> ResumedPeerCheck:
        ca.write(f.ca)
        if crl is not None:
            f.crl.write_bytes(crl)
        crl_file = str(f.crl) if crl else ""
        return ResumedPeerCheck(
            TlsServerConfig("unused", "unused", client_ca_file=str(f.ca), crl_file=crl_file)
        )

    listing = check(ca.crl([revoked]))
    assert listing.revokes(der["revoked"], now) and not listing.revokes(der["dsp"], now)
    assert not listing.revokes(der["stranger"], now)  # its issuer is not in client_ca_file
    assert not listing.revokes(b"not a certificate", now)
    assert not check(None).revokes(der["revoked"], now)  # no crl_file
    assert not check(ca.crl([revoked], valid_for=-dt.timedelta(hours=1))).revokes(der["revoked"], now)
    forged = other.crl([revoked])  # lists the serial, but not signed by the certificate's issuer
    assert not check(forged).revokes(der["revoked"], now)


async def test_a_stale_crl_is_refused_on_reload_and_the_list_in_force_stays(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> None:
    """Under the fail-closed rules a list past its nextUpdate would refuse every client: not put in force."""
    f = Files(tmp_path)
    ca.server().write(f.cert, f.key)
    ca.write(f.ca)
    dsp = ca.client("DSP a")
    dsp.write(f.dsp, f.dsp_key)
    f.crl.write_bytes(ca.crl([]))
    svc = tls_ingress(tmp_path, receiver, mutual(f))
    async with running(svc):
        before = crl_gauge(svc)
        f.crl.write_bytes(ca.crl([dsp], valid_for=-dt.timedelta(hours=1)))  # already past its nextUpdate
        report = await svc.reload_transport()
        assert report["tls"]["server"]["status"] == "refused"
        assert (
            "crl_file" in report["tls"]["server"]["refused"]
            and "expired" in report["tls"]["server"]["refused"]
        )
        assert stale(svc)[("tls",)] == 1 and crl_gauge(svc) == before
        assert (await handshake(svc.port, client_ctx(f.ca, (f.dsp, f.dsp_key)), duis_body(1)))[1] == 204


def _tls13_session_roundtrip(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> ssl.SSLSession:
    """A blocking TLS 1.3 connection that may resume ``session``; one POST; a clean close. Returns the
    session to resume next time (raises when the handshake or the request fails)."""
    body = duis_body(9)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
        request = (
            "POST /duis/dno/dno-a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        tls.sendall(request + body)
        answer = tls.recv(100)
        if not answer.startswith(b"HTTP/1.1 204"):
            raise ConnectionError(f"no 204: {answer!r}")
        assert session is None or tls.session_reused
        out = tls.session
        assert out is not None
        tls.close()
        return out


async def test_a_revoked_client_cannot_resume_a_session_made_before_the_crl_reload(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> None:
    """A resumed session skips OpenSSL's check of the client certificate: after a reload the listener
    checks the certificate of a resumed session against the lists in force."""
    f, dsp, _other, svc = two_clients_on_mutual_tls(tmp_path, ca, receiver)
    loop = asyncio.get_running_loop()
    async with running(svc):
        as_dsp, as_other = client_ctx(f.ca, (f.dsp, f.dsp_key)), client_ctx(f.ca, (f.other, f.other_key))
        dsp_session = await loop.run_in_executor(None, _tls13_session_roundtrip, svc.port, as_dsp, None)
        other_session = await loop.run_in_executor(None, _tls13_session_roundtrip, svc.port, as_other, None)

        f.crl.write_bytes(ca.crl([dsp]))
        assert (await svc.reload_transport())["tls"]["server"]["status"] == "reloaded"

        with pytest.raises((ssl.SSLError, ConnectionError)):
            await loop.run_in_executor(None, _tls13_session_roundtrip, svc.port, as_dsp, dsp_session)
        # a client the list does not revoke resumes as before
        await loop.run_in_executor(None, _tls13_session_roundtrip, svc.port, as_other, other_session)
        assert svc.ingress_tls is not None and svc.ingress_tls.refused_resumptions == 1


# ------------------------------------------------------------------ the ingress worker processes


async def test_the_ingress_worker_processes_follow_a_rotated_certificate_and_a_new_crl(
    tmp_path: Path, ca: Ca, receiver: Receiver
) -> None:
    f = Files(tmp_path)
    old, new = ca.server(), ca.server()
    old.write(f.cert, f.key)
    ca.write(f.ca)
    dsp, other = ca.client("DSP a"), ca.client("DSP b")
    dsp.write(f.dsp, f.dsp_key)
    other.write(f.other, f.other_key)
    f.crl.write_bytes(ca.crl([]))
    svc = tls_ingress(tmp_path, receiver, mutual(f), ingress_processes=2)
    async with running(svc):
        assert svc.ingress_pool is not None and svc.ingress_pool.live == 2
        as_dsp, as_other = client_ctx(f.ca, (f.dsp, f.dsp_key)), client_ctx(f.ca, (f.other, f.other_key))
        kept = await KeepAlive.open(svc.port, as_dsp)
        assert await kept.post(duis_body(1)) == 204

        new.write(f.cert, f.key)
        f.crl.write_bytes(ca.crl([dsp]))
        report = await svc.reload_transport()
        assert report["tls"]["server"]["status"] == "reloaded", report

        for n in range(4):  # whichever worker the kernel hands the connection to
            assert await handshake(svc.port, as_other, duis_body(10 + n)) == (new.cert.serial_number, 204)
            with pytest.raises((ssl.SSLError, ConnectionError, ValueError, asyncio.IncompleteReadError)):
                await handshake(svc.port, as_dsp, duis_body(20 + n))
        assert report["tls"]["server"]["connections_cut"] == 1  # kept: the DSP's, in one of the workers
        assert await kept.closed_by_listener()  # closed by its worker
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
            await kept.post(duis_body(2))
        await kept.close()
        assert cut(svc) == {("server",): 1}

        (tmp_path / "key.pem").write_bytes(b"garbage")  # refused in the gateway process: nothing sent
        refused = await svc.reload_transport()
        assert refused["tls"]["server"]["status"] == "refused" and stale(svc)[("tls",)] == 1
        assert await handshake(svc.port, as_other, duis_body(30)) == (new.cert.serial_number, 204)


# ------------------------------------------------------------------ the admin listener and its token


def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n", encoding="utf-8")
    return path


async def test_a_rotated_admin_token_refuses_the_old_one_and_takes_the_new_one(tmp_path: Path) -> None:
    old, new = "a" * 32, "b" * 32
    token_file = write_token(tmp_path / "admin.token", old)
    cfg = service_config(tmp_path)
    svc = Service(replace(cfg, admin=replace(cfg.admin, token_file=str(token_file))))

    async def reload_as(token: str) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{svc.admin_port}/admin/reload"
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, headers={"Authorization": f"Bearer {token}"}) as resp,
        ):
            return resp.status, await resp.json() if resp.status == 200 else None

    async with running(svc):
        taken = {"status": "reloaded", "refused_parts": []}
        assert (await reload_as(old)) == (200, {"tls": {}, "admin_token": {"status": "unchanged"}, **taken})
        write_token(token_file, new)
        assert (await reload_as(old)) == (200, {"tls": {}, "admin_token": {"status": "reloaded"}, **taken})
        assert (await reload_as(old))[0] == 401
        assert (await reload_as(new))[0] == 200

        write_token(token_file, "short")  # unusable: the token in force stays
        status, report = await reload_as(new)
        assert status == 200 and report["admin_token"]["status"] == "refused"
        assert "shorter than" in report["admin_token"]["refused"]
        assert (report["status"], report["refused_parts"]) == ("refused", ["admin_token"])
        assert report["error"] == f"admin_token: {report['admin_token']['refused']}"
        assert stale(svc)[("admin_token",)] == 1
        assert (await reload_as(new))[0] == 200 and (await reload_as("short" * 4))[0] == 401
        write_token(token_file, new)
        await reload_as(new)
        assert stale(svc)[("admin_token",)] == 0


async def test_a_rotated_admin_listener_certificate_is_presented_to_new_connections(
    tmp_path: Path, ca: Ca
) -> None:
    f = Files(tmp_path)
    old, new = ca.server(), ca.server()
    old.write(f.cert, f.key)
    trust = client_ctx(ca.write(f.ca))
    cfg = service_config(tmp_path)
    admin = AdminConfig(enabled=True, host="127.0.0.1", port=0, tls=TlsServerConfig(str(f.cert), str(f.key)))
    svc = Service(replace(cfg, admin=admin))

    async def presented() -> int:
        _reader, writer = await asyncio.open_connection("127.0.0.1", svc.admin_port, ssl=trust)
        try:
            return serial_of(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        finally:
            writer.close()

    async with running(svc):
        assert await presented() == old.cert.serial_number
        new.write(f.cert, f.key)
        assert (await svc.reload_transport())["tls"]["admin"]["status"] == "reloaded"
        assert await presented() == new.cert.serial_number


# ------------------------------------------------------------------ toward the DNO


@pytest.mark.parametrize("sender_process", [False, True], ids=["in-process", "sender-process"])
async def test_a_destination_s_new_ca_file_and_crl_apply_to_new_connections_after_reload(
    tmp_path: Path, ca: Ca, sender_process: bool
) -> None:
    """The DNO's endpoint moves to a certificate of another CA: deliveries fail (kept, retried) until the
    destination's CA file names it and a reload puts it in force; a list revoking it later stops them."""
    f = Files(tmp_path)
    other = Ca("the DNO's new CA")
    endpoint = other.server()
    endpoint.write(f.endpoint, f.endpoint_key)
    ca.write(f.ca)  # the destination trusts the old CA only
    f.crl.write_bytes(ca.crl([]))
    receiver = Receiver(ssl_context=server_context(TlsServerConfig(str(f.endpoint), str(f.endpoint_key))))
    await receiver.start()
    try:
        cfg = service_config(tmp_path, receiver.url)
        dest = replace(cfg.destinations[0], tls=TlsClientConfig(ca_file=str(f.ca), crl_file=str(f.crl)))
        outbox = replace(cfg.outbox, sender_process=sender_process)
        svc = Service(replace(cfg, destinations=(dest,), outbox=outbox))
        async with running(svc), aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=duis_body(1), headers=XML
            ) as r:
                assert r.status == 204
            await until(lambda: rows_tried(svc, 2))
            rows = await svc.outbox.rows("http:dno-a")
            assert rows[0].state == "pending" and "certificate verify failed" in rows[0].last_error

            other.write(f.ca)  # the new CA, and its list
            f.crl.write_bytes(other.crl([]))
            report = await svc.reload_transport()
            assert report["tls"]["destination:dno-a"]["status"] == "reloaded", report
            await receiver.wait_for(1)
            expected = {
                ("destination:dno-a", "CN=the DNO's new CA"): next_update(f.crl.read_bytes(), tmp_path)
            }
            assert crl_gauge(svc) == expected

            f.crl.write_bytes(other.crl([endpoint]))  # later revoked: new connections refuse it
            assert (await svc.reload_transport())["tls"]["destination:dno-a"]["status"] == "reloaded"
            async with http.post(
                f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=duis_body(2), headers=XML
            ) as r:
                assert r.status == 204
            await until(lambda: rows_tried(svc, 2, message=1))
            rows = await svc.outbox.rows("http:dno-a")
            assert "certificate revoked" in next(r for r in rows if r.state == "pending").last_error
    finally:
        await receiver.stop()
    assert [r.body for r in receiver.log] == [duis_body(1)]


async def rows_tried(svc: Service, attempts: int, message: int = 0) -> bool:
    rows = await svc.outbox.rows("http:dno-a")
    return len(rows) > message and rows[message].attempts >= attempts


async def until(check: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ MQTT


@contextlib.asynccontextmanager
async def mqtt_over_tls(tmp_path: Path, f: Files, tls: TlsClientConfig) -> AsyncIterator[Service]:
    """A real mosquitto serving TLS with ``f.broker`` / ``f.broker_key``, and a running service whose MQTT
    link (subscribe only, reconnecting every 0.2 s) connects to it with ``tls``."""
    if shutil.which(MOSQUITTO) is None:
        pytest.skip(f"{MOSQUITTO} is not installed (Debian package mosquitto): MQTT tests need a real broker")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        f"certfile {f.broker}\nkeyfile {f.broker_key}\n" + ("user root\n" if os.geteuid() == 0 else "")
        # (as root mosquitto would read them as the user "mosquitto", who cannot enter pytest's folder)
    )
    broker = Broker(port, conf, log_file=tmp_path / "mosquitto.log")
    broker.start()
    try:
        cfg = service_config(tmp_path)
        mqtt = replace(
            cfg.mqtt,
            enabled=True,
            port=port,
            tls_enabled=True,
            tls=tls,
            reconnect_interval=0.2,
            publish=False,
        )
        svc = Service(replace(cfg, mqtt=mqtt))
        async with running(svc):
            yield svc
    finally:
        broker.stop()


async def test_a_reloaded_mqtt_ca_file_is_tried_at_once_and_the_report_says_whether_the_link_came_back(
    tmp_path: Path, ca: Ca
) -> None:
    """The broker moves to a certificate of another CA: the link cannot connect (it keeps retrying) until
    ``[mqtt.tls] ca_file`` names the new CA and a reload puts it in force, when it connects at once and the
    report says so. A reload while connected re-establishes the link with the new file: one that does not
    trust the broker leaves the link down, and the report says why."""
    f = Files(tmp_path)
    broker_ca = Ca("the broker's CA")
    broker_ca.server().write(f.broker, f.broker_key)
    ca.write(f.ca)  # the link trusts another CA first
    async with mqtt_over_tls(tmp_path, f, TlsClientConfig(ca_file=str(f.ca))) as svc:
        assert svc.mqtt is not None
        await until(lambda: _failures(svc, 2))
        assert not svc.mqtt.connected

        broker_ca.write(f.ca)
        failures = sum(counters(svc, "duisgw_mqtt_link_failures").values())
        await until(lambda: _failures(svc, failures + 2))  # reconnects use the context in force, not
        assert not svc.mqtt.connected  # the files: only a reload puts the new CA in force
        report = await svc.reload_transport()
        assert report["tls"]["mqtt"] == {
            "status": "reloaded",
            "digest": report["tls"]["mqtt"]["digest"],
            "link": {"status": "reconnected"},
        }
        assert svc.mqtt.connected
        connections = svc.mqtt.connections

        ca.write(f.ca)  # reloaded while connected: the link leaves its connection for one with this CA
        link = (await svc.reload_transport())["tls"]["mqtt"]["link"]
        assert link["status"] == "failed"
        assert "certificate verify failed" in link["error"]
        assert not svc.mqtt.connected and svc.mqtt.connections == connections


async def test_a_broker_certificate_revoked_in_the_mqtt_crl_file_is_refused_and_a_reloaded_list_lets_it_in(
    tmp_path: Path,
) -> None:
    """``[mqtt.tls] crl_file`` against a real TLS broker: while the list revokes the broker's certificate the
    link cannot connect (every attempt refused at the handshake, counted, retried); a reload of a fresh list
    that no longer revokes it lets the next reconnect in."""
    f = Files(tmp_path)
    broker_ca = Ca("the broker's CA")
    cert = broker_ca.server()
    cert.write(f.broker, f.broker_key)
    broker_ca.write(f.ca)
    f.crl.write_bytes(broker_ca.crl([cert]))
    async with mqtt_over_tls(tmp_path, f, TlsClientConfig(ca_file=str(f.ca), crl_file=str(f.crl))) as svc:
        assert svc.mqtt is not None
        await until(lambda: _failures(svc, 3))  # revoked: refused at every attempt
        assert not svc.mqtt.connected

        f.crl.write_bytes(broker_ca.crl([]))  # the CA's next list revokes nothing
        report = await svc.reload_transport()
        assert report["tls"]["mqtt"]["status"] == "reloaded", report
        assert await svc.mqtt.wait_connected(10)


async def _failures(svc: Service, n: int) -> bool:
    return sum(counters(svc, "duisgw_mqtt_link_failures").values()) >= n


# ------------------------------------------------------------------ MQTT: reconnecting on reload, traffic


@dataclass
class MqttPki:
    """The broker's CA and its server certificate; the clients' CA (the broker requires a client
    certificate it issued and takes its common name as the user name, which mosquitto logs with each
    connection)."""

    broker_ca: Ca
    clients_ca: Ca
    broker: Issued


def mqtt_pki() -> MqttPki:
    broker_ca = Ca("the broker's CA")
    return MqttPki(broker_ca, Ca("the MQTT clients' CA"), broker_ca.server())


class Subscriber:
    """A DNO's MQTT client on the TLS broker (its own client certificate): a persistent session subscribed
    with QoS 1 to every destination topic, keeping every message received in order (a message the broker
    sends twice is there twice)."""

    def __init__(self, port: int, pki: MqttPki, folder: Path) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(pki.broker_ca.write(folder / "sub-ca.pem")))
        pki.clients_ca.client("dno-subscriber").write(folder / "sub.pem", folder / "sub.key")
        self.ctx.load_cert_chain(str(folder / "sub.pem"), str(folder / "sub.key"))
        self.received: list[tuple[str, bytes]] = []  # (message_id user property, payload)
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def client(self, identifier: str, *, clean: bool = False) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        return aiomqtt.Client(
            "127.0.0.1", self.port, identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=clean, properties=props, tls_context=self.ctx,
        )  # fmt: skip

    async def _run(self) -> None:
        async with self.client("dno-subscriber") as client:
            await client.subscribe("duisgw/dno/#", qos=1)
            self.ready.set()
            async for message in client.messages:
                props = dict(getattr(message.properties, "UserProperty", []))
                assert isinstance(message.payload, bytes)
                self.received.append((props["message_id"], message.payload))

    async def __aenter__(self) -> Subscriber:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def observe(self, body: bytes) -> None:
        """A DSP publishing ``body`` (QoS 1) on the observation topic the gateway subscribes to."""
        async with self.client("dsp-observer", clean=True) as client:
            await client.publish("dsp/observe/11.3", body, qos=1)


@contextlib.asynccontextmanager
async def mqtt_link_over_mutual_tls(
    tmp_path: Path, f: Files, pki: MqttPki, tls: TlsClientConfig, brokers: list[Broker] | None = None
) -> AsyncIterator[tuple[Service, Subscriber]]:
    """A real mosquitto serving TLS with ``pki.broker`` and requiring a client certificate of
    ``pki.clients_ca``; a running service whose MQTT link (client id ``duisgw``, connected with ``tls``)
    publishes the forwards of destination ``dno-a`` with QoS 1 and subscribes to ``dsp/observe/#``; a DNO
    subscriber on the broker (appended to ``brokers``, when given)."""

    if shutil.which(MOSQUITTO) is None:
        pytest.skip(f"{MOSQUITTO} is not installed (Debian package mosquitto): MQTT tests need a real broker")
    port = free_port()
    pki.broker.write(f.broker, f.broker_key)
    pki.clients_ca.write(f.clients_ca)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        f"certfile {f.broker}\nkeyfile {f.broker_key}\ncafile {f.clients_ca}\n"
        "require_certificate true\nuse_identity_as_username true\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    broker = Broker(port, conf, log_file=tmp_path / "mosquitto.log")
    broker.start()
    if brokers is not None:
        brokers.append(broker)
    try:
        cfg = service_config(tmp_path)
        mqtt = replace(
            cfg.mqtt, enabled=True, port=port, client_id="duisgw", tls_enabled=True, tls=tls,
            reconnect_interval=0.2, publish=True, publish_timeout=3.0, observe_topics=("dsp/observe/#",),
        )  # fmt: skip
        dest = DestinationConfig(name="dno-a", user="90-B3-D5-1F-30-02-00-00")  # MQTT only
        svc = Service(replace(cfg, mqtt=mqtt, destinations=(dest,)))
        async with running(svc), Subscriber(port, pki, tmp_path) as sub:
            assert svc.mqtt is not None and await svc.mqtt.wait_connected(10)
            yield svc, sub
    finally:
        broker.stop()


def gateway_connections(tmp_path: Path) -> list[str]:
    """The user name (the client certificate's common name) of each connection of client id ``duisgw``
    that mosquitto logged, in order."""
    text = (tmp_path / "mosquitto.log").read_text(errors="replace")
    return re.findall(r"New client connected from \S+ as duisgw \(.*?u'([^']*)'\)", text)


async def post(http: aiohttp.ClientSession, svc: Service, n: int) -> str:
    """Forward ``duis_body(n)`` through the ingress (accepted durably: 204); its message id."""
    async with http.post(
        f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=duis_body(n), headers=XML
    ) as resp:
        assert resp.status == 204, await resp.text()
        return resp.headers["X-DUISGW-Message-Id"]


async def admin_reload(http: aiohttp.ClientSession, svc: Service) -> dict[str, Any]:
    """``POST /admin/reload`` on the admin listener: its JSON report."""
    async with http.post(f"http://127.0.0.1:{svc.admin_port}/admin/reload") as resp:
        assert resp.status == 200
        report: dict[str, Any] = await resp.json()
        return report


async def all_received(sub: Subscriber, sent: dict[str, bytes], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while missing := set(sent) - {mid for mid, _ in sub.received}:
        assert asyncio.get_running_loop().time() < deadline, (
            f"{len(missing)} forwards never reached the subscriber"
        )
        await asyncio.sleep(0.05)


def assert_at_least_once_and_nothing_lost(sub: Subscriber, sent: dict[str, bytes]) -> None:
    """The QoS 1 contract: every forward reaches the subscriber byte for byte at least once (a repeat is
    allowed: subscribers dedupe on ``message_id``), and nothing else arrives."""
    assert {mid for mid, _ in sub.received} == set(sent)
    for mid, payload in sub.received:
        assert payload == sent[mid], mid


async def pending(svc: Service) -> int:
    return sum(s.depth for s in await svc.outbox.stats())


async def observed(svc: Service) -> list[bytes]:
    """The bodies recorded on the observation lane, in order."""
    rows = await svc.store.read(
        lambda c: c.execute(
            "SELECT body FROM passthrough_messages WHERE lane = 'observe' ORDER BY rowid"
        ).fetchall()
    )
    return [bytes(r[0]) for r in rows]


async def test_a_reload_of_a_new_mqtt_client_certificate_reconnects_the_link_and_loses_no_publication(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """End to end against a real TLS mosquitto that requires client certificates: forwards flow to a DNO
    subscriber and observations to the observe lane; a reload with the files unchanged does not reconnect.
    The client certificate is replaced while forwards are being posted, and ``POST /admin/reload`` makes
    the link reconnect with it at once: the broker logs a new connection under the new certificate's name,
    the report says ``reconnected``, and so does the log. Every forward posted before, during and after the
    reload reaches the subscriber at least once, byte for byte (QoS 1: none lost), the outbox ends empty,
    and an observation is taken on the new connection."""
    f = Files(tmp_path)
    pki = mqtt_pki()
    pki.broker_ca.write(f.ca)
    pki.clients_ca.client("duisgw-first").write(f.client, f.client_key)
    tls = TlsClientConfig(ca_file=str(f.ca), cert_file=str(f.client), key_file=str(f.client_key))
    sent: dict[str, bytes] = {}
    with caplog.at_level(logging.INFO, logger="duisgw.service"):
        async with (
            mqtt_link_over_mutual_tls(tmp_path, f, pki, tls) as (svc, sub),
            aiohttp.ClientSession() as http,
        ):
            assert svc.mqtt is not None
            for n in range(10):
                sent[await post(http, svc, n)] = duis_body(n)
            await sub.observe(duis_body(100))
            await all_received(sub, sent)
            await until(lambda: _observed(svc, 1))

            unchanged = await admin_reload(http, svc)  # the same files: the link stays as it is
            assert svc.mqtt.connections == 1 and gateway_connections(tmp_path) == ["duisgw-first"]

            async def keep_posting() -> None:
                for n in range(10, 50):
                    sent[await post(http, svc, n)] = duis_body(n)
                    await asyncio.sleep(0.01)

            poster = asyncio.create_task(keep_posting())
            await until(lambda: _posted(sent, 20))  # the reload comes while forwards are posted and published
            pki.clients_ca.client("duisgw-second").write(tmp_path / "next.pem", tmp_path / "next.key")
            os.replace(tmp_path / "next.key", f.client_key)  # each file replaced in one step
            os.replace(tmp_path / "next.pem", f.client)
            report = await admin_reload(http, svc)
            await poster
            for n in range(50, 60):
                sent[await post(http, svc, n)] = duis_body(n)
            await sub.observe(duis_body(101))
            await all_received(sub, sent)
            await until(lambda: _observed(svc, 2))
            await until(lambda: _drained(svc))
            assert svc.mqtt.connected and svc.mqtt.connections == 2
            bodies = await observed(svc)

    assert unchanged["tls"]["mqtt"] == {"status": "unchanged"}
    assert report["status"] == "reloaded"
    assert report["tls"]["mqtt"] == {
        "status": "reloaded",
        "digest": report["tls"]["mqtt"]["digest"],
        "link": {"status": "reconnected"},
    }
    assert gateway_connections(tmp_path) == ["duisgw-first", "duisgw-second"]  # the broker saw the new one
    assert len(sent) == 60
    assert_at_least_once_and_nothing_lost(sub, sent)
    assert bodies == [duis_body(100), duis_body(101)]
    messages = [r.getMessage() for r in caplog.records]
    assert "MQTT link re-established with the reloaded TLS material" in messages


async def test_a_reloaded_mqtt_crl_that_revokes_the_broker_takes_the_link_down_says_why_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new ``[mqtt.tls] crl_file`` revoking the broker's certificate: the reload does not leave the link
    on the connection the old list let in. It reconnects, is refused at the handshake, and the report
    (``tls.mqtt.link``: ``failed`` with the reason) and an ERROR line say so; the forwards posted meanwhile
    are accepted and wait in the outbox. A list that no longer revokes the broker, reloaded, brings the link
    back at once, and every forward reaches the subscriber at least once (none lost)."""
    f = Files(tmp_path)
    pki = mqtt_pki()
    pki.broker_ca.write(f.ca)
    f.crl.write_bytes(pki.broker_ca.crl([]))
    pki.clients_ca.client("duisgw-client").write(f.client, f.client_key)
    tls = TlsClientConfig(
        ca_file=str(f.ca), cert_file=str(f.client), key_file=str(f.client_key), crl_file=str(f.crl)
    )
    sent: dict[str, bytes] = {}
    with caplog.at_level(logging.INFO, logger="duisgw.service"):
        async with (
            mqtt_link_over_mutual_tls(tmp_path, f, pki, tls) as (svc, sub),
            aiohttp.ClientSession() as http,
        ):
            assert svc.mqtt is not None
            for n in range(5):
                sent[await post(http, svc, n)] = duis_body(n)
            await all_received(sub, sent)

            f.crl.write_bytes(pki.broker_ca.crl([pki.broker]))
            revoked = await admin_reload(http, svc)
            assert not svc.mqtt.connected
            assert counters(svc, "duisgw_mqtt_connected", ("",)) == {(): 0.0}
            for n in range(5, 10):
                sent[await post(http, svc, n)] = duis_body(n)
            await asyncio.sleep(0.5)
            assert await pending(svc) == 5  # accepted, kept, not published to a revoked broker
            assert len({mid for mid, _ in sub.received}) == 5

            f.crl.write_bytes(pki.broker_ca.crl([]))  # the CA's next list revokes nothing
            restored = await admin_reload(http, svc)
            await all_received(sub, sent)
            await until(lambda: _drained(svc))

    assert revoked["status"] == "reloaded"  # the material was taken: the broker is what it refuses
    link = revoked["tls"]["mqtt"]["link"]
    assert link["status"] == "failed"
    assert "certificate revoked" in link["error"]
    assert restored["tls"]["mqtt"]["link"] == {"status": "reconnected"}
    assert gateway_connections(tmp_path) == ["duisgw-client", "duisgw-client"]
    assert_at_least_once_and_nothing_lost(sub, sent)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "duisgw.service"]
    assert [r.getMessage().split(" (", 1)[0] for r in errors] == [
        "MQTT link not re-established with the reloaded TLS material"
    ]
    assert "certificate revoked" in errors[0].getMessage()


async def test_unusable_new_mqtt_tls_files_are_refused_and_the_link_goes_on_with_its_connection(
    tmp_path: Path,
) -> None:
    """A reload that refuses the new ``[mqtt.tls]`` files (a key that does not match the certificate) keeps
    the link on its connection: no reconnect, forwards still published, the section reported ``refused``
    with the reason."""
    f = Files(tmp_path)
    pki = mqtt_pki()
    pki.broker_ca.write(f.ca)
    pki.clients_ca.client("duisgw-client").write(f.client, f.client_key)
    tls = TlsClientConfig(ca_file=str(f.ca), cert_file=str(f.client), key_file=str(f.client_key))
    sent: dict[str, bytes] = {}
    async with (
        mqtt_link_over_mutual_tls(tmp_path, f, pki, tls) as (svc, sub),
        aiohttp.ClientSession() as http,
    ):
        assert svc.mqtt is not None
        sent[await post(http, svc, 1)] = duis_body(1)
        await all_received(sub, sent)
        other = pki.clients_ca.client("someone else")
        _write_key(f.client_key, other.key)  # the certificate stays: the key no longer matches it
        report = await admin_reload(http, svc)
        sent[await post(http, svc, 2)] = duis_body(2)
        await all_received(sub, sent)
        assert svc.mqtt.connected and svc.mqtt.connections == 1

    assert report["status"] == "refused"
    assert report["refused_parts"] == ["tls.mqtt"]
    assert report["tls"]["mqtt"]["status"] == "refused"
    assert "link" not in report["tls"]["mqtt"]
    assert gateway_connections(tmp_path) == ["duisgw-client"]
    assert_at_least_once_and_nothing_lost(sub, sent)


async def test_a_publication_in_flight_when_the_link_reconnects_gets_its_puback_before_the_link_leaves(
    tmp_path: Path,
) -> None:
    """The drain of a reconnect, made deterministic by pausing the broker (SIGSTOP): a forward published
    and awaiting its PUBACK when the reload comes holds the reconnect (the reload waits, the connection
    stays) until the PUBACK arrives on the old connection (SIGCONT); then the link reconnects with the new
    certificate. The forward is delivered once, not published again."""
    f = Files(tmp_path)
    pki = mqtt_pki()
    pki.broker_ca.write(f.ca)
    pki.clients_ca.client("duisgw-first").write(f.client, f.client_key)
    tls = TlsClientConfig(ca_file=str(f.ca), cert_file=str(f.client), key_file=str(f.client_key))
    brokers: list[Broker] = []
    sent: dict[str, bytes] = {}
    async with (
        mqtt_link_over_mutual_tls(tmp_path, f, pki, tls, brokers) as (svc, sub),
        aiohttp.ClientSession() as http,
    ):
        assert svc.mqtt is not None
        [broker] = brokers
        assert broker.proc is not None
        sent[await post(http, svc, 1)] = duis_body(1)
        await all_received(sub, sent)

        broker.proc.send_signal(signal.SIGSTOP)
        try:
            sent[await post(http, svc, 2)] = duis_body(2)
            await until(lambda: _in_flight(svc, 1))  # published, no PUBACK while the broker is paused
            pki.clients_ca.client("duisgw-second").write(f.client, f.client_key)
            reload = asyncio.create_task(admin_reload(http, svc))
            await asyncio.sleep(0.5)
            assert not reload.done()  # the reconnect waits for the PUBACK
            assert svc.mqtt.in_flight == 1 and svc.mqtt.connections == 1
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        report = await asyncio.wait_for(reload, 15)
        await all_received(sub, sent)
        await until(lambda: _drained(svc))

    assert report["tls"]["mqtt"]["link"] == {"status": "reconnected"}
    assert gateway_connections(tmp_path) == ["duisgw-first", "duisgw-second"]
    assert sorted(sub.received) == sorted(sent.items())  # each once: the PUBACK came on the old connection


async def _in_flight(svc: Service, n: int) -> bool:
    return svc.mqtt is not None and svc.mqtt.in_flight >= n


async def _observed(svc: Service, n: int) -> bool:
    return len(await observed(svc)) >= n


async def _posted(sent: dict[str, bytes], n: int) -> bool:
    return len(sent) >= n


async def _drained(svc: Service) -> bool:
    return await pending(svc) == 0


# ------------------------------------------------------------------ duisgw serve, mode = "passthrough"


async def test_sighup_reloads_the_admin_token_of_a_passthrough_gateway(tmp_path: Path) -> None:
    """``serve`` in pass-through mode has no reference data, but SIGHUP still reloads its transport."""
    import signal

    from servicekit import free_port

    from gateway.service.serve import serve

    old, new = "c" * 32, "d" * 32
    token_file = write_token(tmp_path / "admin.token", old)
    cfg = service_config(tmp_path)
    cfg = replace(cfg, admin=replace(cfg.admin, port=free_port(), token_file=str(token_file)))
    url = f"http://127.0.0.1:{cfg.admin.port}/admin/reload"

    async def status(token: str) -> int | None:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, headers={"Authorization": f"Bearer {token}"}) as resp,
            ):
                return resp.status
        except aiohttp.ClientConnectionError:
            return None

    root = logging.getLogger()  # serve() installs its log handler on the root logger: put it back after
    handlers, level = list(root.handlers), root.level
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop=stop))
    try:
        await until(lambda: _is(status(old), 200))
        write_token(token_file, new)
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: _is(status(old), 401))
        assert await status(new) == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        root.handlers[:] = handlers
        root.setLevel(level)


async def _is(answer: Any, expected: int) -> bool:
    return bool(await answer == expected)


def test_the_certificate_of_a_resumed_session_is_judged_as_a_full_handshake_would_judge_it(
    tmp_path: Path, ca: Ca
) -> None:
    """What a resumed session is refused for after a reload: its issuer no longer in the client CA file,
    no current list of its issuer (fail-closed, like OpenSSL's leaf check), or a list revoking it."""
    from gateway.service.tls import ResumedPeerCheck

    f = Files(tmp_path)
    other = Ca("another CA")
    dsp, revoked = ca.client("DSP a"), ca.client("DSP b")
    der = {
        name: c.cert.public_bytes(serialization.Encoding.DER)
        for name, c in (("dsp", dsp), ("revoked", revoked))
    }
    now = dt.datetime.now(dt.UTC)

    def check(ca_file: Ca, crl: bytes | None) -> ResumedPeerCheck:
        ca_file.write(f.ca)
        if crl is not None:
            f.crl.write_bytes(crl)
        cfg = TlsServerConfig(
            cert_file="unused",
            key_file="unused",
            client_ca_file=str(f.ca),
            crl_file=str(f.crl) if crl else "",
        )
        return ResumedPeerCheck(cfg)

    good = check(ca, ca.crl([revoked]))
    assert good.problem(der["dsp"], now) is None
    assert "revoked" in (good.problem(der["revoked"], now) or "")
    assert "not issued by a CA of client_ca_file" in (check(other, None).problem(der["dsp"], now) or "")
    assert check(ca, None).problem(der["revoked"], now) is None  # no crl_file: no revocation check
    stale_list = check(ca, ca.crl([], valid_for=-dt.timedelta(hours=1)))
    assert "no current revocation list" in (stale_list.problem(der["dsp"], now) or "")
    foreign_list = check(ca, other.crl([]))
    assert "no current revocation list" in (foreign_list.problem(der["dsp"], now) or "")
