"""Helpers for the service tests: a real HTTP receiver (DNO side), generated TLS certificates,
a real mosquitto broker, and a helper that runs a whole :class:`Service` on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.pipeline import unverified_identity
from gateway.service.app import Service
from gateway.service.config import (
    AdminConfig,
    DestinationConfig,
    OutboxConfig,
    PipelineConfig,
    ServerConfig,
    ServiceConfig,
    StoreConfig,
)
from gateway.service.simulate import DspSimulator, Posted, TimedMessage
from gateway.testkit.demo import demo_scenario
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import Scenario, World
from gbcs.eui import format_eui

MOSQUITTO = "/usr/sbin/mosquitto"
DNO_USER = format_eui(DNO_EUI)  # the DCC User ID of the test kit's DNO

PEM = serialization.Encoding.PEM

DUIS_NS = "http://www.dccinterface.co.uk/ServiceUserGateway"


def duis_body(n: int, pad: int = 0) -> bytes:
    """A small well-formed DUIS-shaped document, unique per ``n``."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><sr:Response xmlns:sr="{DUIS_NS}" schemaVersion="5.1">'
        f"<sr:Header><sr:RequestID>90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:{n}</sr:RequestID></sr:Header>"
        f"<sr:Body>{'x' * pad}</sr:Body></sr:Response>"
    ).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ receiver


@dataclass
class Received:
    message_id: str
    body: bytes
    content_type: str
    at: float


@dataclass
class Receiver:
    """A DNO adaptor endpoint: records every POST; can refuse chosen ids and go down / come back."""

    port: int = field(default_factory=free_port)
    ssl_context: ssl.SSLContext | None = None
    refuse: set[str] = field(default_factory=set)  # message ids answered 500
    redirect: set[str] = field(default_factory=set)  # message ids answered 302 to /moved
    log: list[Received] = field(default_factory=list)
    moved: list[Received] = field(default_factory=list)  # whatever reached the redirect's target
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}/smartdcc/duis"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        mid = request.headers.get("X-DUISGW-Message-Id", "")
        self.log.append(Received(mid, body, request.headers.get("Content-Type", ""), time.monotonic()))
        if mid in self.refuse:
            return web.Response(status=500, text="refused")
        if mid in self.redirect:
            raise web.HTTPFound("/moved")
        return web.Response(status=204)

    async def _moved(self, request: web.Request) -> web.Response:
        body = await request.read()
        mid = request.headers.get("X-DUISGW-Message-Id", "")
        self.moved.append(Received(mid, body, request.headers.get("Content-Type", ""), time.monotonic()))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_post("/smartdcc/duis", self._handle)
        app.router.add_route("*", "/moved", self._moved)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context, reuse_address=True
        ).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def accepted_ids(self) -> list[str]:
        """Ids answered 2xx, in arrival order, duplicates removed (the receiver's dedupe)."""
        seen: set[str] = set()
        out = []
        for r in self.log:
            if r.message_id in self.refuse or r.message_id in self.redirect or r.message_id in seen:
                continue
            seen.add(r.message_id)
            out.append(r.message_id)
        return out

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted_ids()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver got {len(self.accepted_ids())} of {count} messages")
            await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------------ service


def service_config(tmp_path: Path, receiver_url: str | None = None, **overrides: Any) -> ServiceConfig:
    dests: tuple[DestinationConfig, ...] = ()
    if receiver_url is not None:
        dests = (DestinationConfig(name="dno-a", user="90-B3-D5-1F-30-02-00-00", url=receiver_url),)
    cfg = ServiceConfig(
        mode="passthrough",
        tick_interval=0.2,
        server=ServerConfig(host="127.0.0.1", port=0, max_body_bytes=64 * 1024, shutdown_timeout=5.0),
        admin=AdminConfig(enabled=True, host="127.0.0.1", port=0),
        store=StoreConfig(path=str(tmp_path / "gw.sqlite3"), synchronous="NORMAL"),
        outbox=OutboxConfig(
            backoff_initial=0.05, backoff_max=0.3, poll_interval=0.2, request_timeout=2.0, drain_timeout=3.0
        ),
        destinations=dests,
    )
    return replace(cfg, **overrides)


def pipeline_config(
    tmp_path: Path, reference: dict[str, Path], receiver_url: str, user: str, **pipeline: Any
) -> ServiceConfig:
    """A decision-pipeline gateway (event-time clock) on the test kit's reference data, forwarding to
    one DNO (``user``) at ``receiver_url``; ``pipeline`` overrides :class:`PipelineConfig` options."""
    return service_config(
        tmp_path,
        mode="pipeline",
        clock="message",
        destinations=(DestinationConfig(name="dno-a", user=user, url=receiver_url),),
        pipeline=PipelineConfig(
            state_dir=str(tmp_path / "state"),
            certificates=str(reference["certs"]),
            gbcs_keys=str(reference["gbcs_keys"]),
            guids=str(reference["guids"]),
            inventory=str(reference["inventory"]),
            synchronous="NORMAL",
            **pipeline,
        ),
    )


def outages(world: World, n: int) -> list[TimedMessage]:
    """``n`` AD1s of distinct premises with no firmware activity: every one is forwarded."""
    story = Scenario("outages", world)
    out = []
    for i in range(n):
        _esme, ch, mpan = world.meter(200 + i)
        when = story.t("12:00:00") + dt.timedelta(seconds=i)
        out.append(
            TimedMessage(
                when, "inline", world.factory.ad1(ch, mpan, when - dt.timedelta(minutes=2), when, 900 + i)
            )
        )
    return out


def demo_with_bad_input(world: World) -> Scenario:
    """The demo scenario plus two inline messages it lacks: an AD1 whose DSP signature was broken in
    transit (still decided, never trusted) and bytes that are not XML at all (rejected, 400)."""
    demo = demo_scenario(world)
    _e9, c9, m9 = world.meter(9)
    ad1 = world.factory.ad1(c9, m9, demo.t("10:00:00"), demo.t("10:02:00"), 109)
    at = ad1.index(b"SignatureValue>") + len(b"SignatureValue>")
    forged = ad1[:at] + (b"B" if ad1[at : at + 1] == b"A" else b"A") + ad1[at + 1 :]
    demo.inline("10:02:00", forged, "forward", label="AD1 with a broken DSP signature")
    # decided under its own identity, never the genuine AD1's (gateway.pipeline.unverified_identity)
    demo.steps[-1] = replace(demo.steps[-1], message_id=unverified_identity(demo.steps[-1].message_id, forged))
    demo.steps.append(replace(demo.steps[-1], body=b"<not-duis", label="not XML", expect=None,
                              message_id="not-xml"))  # fmt: skip
    return demo


def ad1_stream(world: World, count: int, *, first_meter: int, first_counter: int) -> Scenario:
    """``count`` AD1s of distinct premises one second apart, each a genuine outage (forwarded)."""
    stream = Scenario("stream", world)
    for i in range(count):
        _e, ch, mpan = world.meter(first_meter + i)
        when = stream.t("12:00:00") + dt.timedelta(seconds=i)
        stream.inline(
            when,
            world.factory.ad1(ch, mpan, when - dt.timedelta(minutes=2), when, first_counter + i),
            "forward",
        )
    return stream


@dataclass(frozen=True)
class Lab:
    """A generated world's reference data with two scenarios: the demo with bad input, and a stream."""

    world: World
    demo: Scenario
    stream: Scenario  # AD1s of distinct premises (forwarded: genuine outages)
    reference: dict[str, Path]


def make_lab(name: str, folder: Path, *, stream: int, first_meter: int, first_counter: int) -> Lab:
    world = World.generated(name)
    return Lab(
        world,
        demo_with_bad_input(world),
        ad1_stream(world, stream, first_meter=first_meter, first_counter=first_counter),
        world.write_reference(folder),
    )


def release_story(lab: Lab) -> tuple[TimedMessage, TimedMessage, TimedMessage, TimedMessage]:
    """The lab demo's meter-1 story an operator release races: the immediate 11.3 request, its success
    response, the AD1 of the reboot (suppressed) and the 8F36 restoration that pairs with it."""
    steps = {s.label: s for s in lab.demo.steps}
    request, response, ad1, restoration = (
        TimedMessage(steps[label].at, steps[label].lane, steps[label].body)
        for label in ("11.3 request, meter 1 (immediate)", "11.3 response: success", "AD1 meter 1 (reboot)",
                      "8F36 restoration meter 1")
    )  # fmt: skip
    return request, response, ad1, restoration


async def suppressed_after_activation(
    dsp: DspSimulator, request: TimedMessage, response: TimedMessage, *outages: TimedMessage
) -> list[Posted]:
    """Post an activation (the 11.3 request and its success response), then each AD1 of the reboot: every
    AD1 is answered 200 ``suppress`` (asserted). Returns the AD1s' answers."""
    await dsp.post(request)
    await dsp.post(response)
    answers = [await dsp.post(m) for m in outages]
    assert [(a.status, a.decision) for a in answers] == [(200, "suppress")] * len(outages)
    return answers


def timed(steps: Scenario) -> list[TimedMessage]:
    """A scenario's messages in arrival order, as the DSP simulator sends them."""
    return [TimedMessage(s.at, s.lane, s.body) for s in sorted(steps.steps, key=lambda s: s.at)]


async def play_demo(service: Service, lab: Lab, receiver: Receiver, hold_limit: dt.timedelta) -> list[Posted]:
    """Send the lab's demo through a running gateway, tick its clock past every hold, wait until the
    DNO has every expected forward (and a moment more: anything wrongly delivered shows up); returns
    the gateway's answers."""
    messages = timed(lab.demo)
    async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
        answers = await dsp.run(messages)
    end = max(m.at for m in messages) + hold_limit + dt.timedelta(seconds=1)
    async with aiohttp.ClientSession() as http:
        tick = f"http://127.0.0.1:{service.admin_port}/admin/tick"
        async with http.post(tick, json={"now": end.isoformat()}) as resp:
            assert resp.status == 200
    forwards = {s.message_id for s in lab.demo.steps if s.expect and s.expect.decision == "forward"}
    await receiver.wait_for(len(forwards))
    await asyncio.sleep(0.2)
    return answers


def operator_releases(service: Service) -> dict[tuple[str, ...], float]:
    """``duisgw_messages`` counted for operator releases taken in (reason ``operator-release``), by labels."""
    return counters(service, "duisgw_messages", where=lambda labels: labels["reason"] == "operator-release")


def counters(
    service: Service,
    name: str,
    suffixes: tuple[str, ...] = ("_total",),
    *,
    where: Callable[[dict[str, str]], bool] = lambda _labels: True,
) -> dict[tuple[str, ...], float]:
    """The samples of the metric ``name`` (those whose sample name ends in one of ``suffixes`` and whose
    labels ``where`` accepts), by their label values."""
    return {
        tuple(s.labels.values()): s.value
        for m in service.metrics.registry.collect()
        if m.name == name
        for s in m.samples
        if s.name.endswith(suffixes) and where(s.labels)
    }


@contextlib.asynccontextmanager
async def running(service: Service) -> AsyncIterator[Service]:
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


# ------------------------------------------------------------------------------------------ TLS


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing the server trusts


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    cn: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(d: Path) -> Pki:
    ca_key, ca_cert = _ca("duisgw test CA")
    s_key, s_cert = _leaf("127.0.0.1", ca_key, ca_cert, server=True)
    c_key, c_cert = _leaf("test DSP client", ca_key, ca_cert, server=False)
    _o_key, o_cert = _ca("unrelated CA")
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (d / "other-ca.pem").write_bytes(o_cert.public_bytes(pem))
    (d / "server.pem").write_bytes(s_cert.public_bytes(pem))
    _write_key(d / "server.key", s_key)
    (d / "client.pem").write_bytes(c_cert.public_bytes(pem))
    _write_key(d / "client.key", c_key)
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "other-ca.pem",
    )


# ------------------------------------------------------------------------------------------ TLS reloads


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def write(self, cert: Path, key: Path) -> None:
        cert.write_bytes(self.cert.public_bytes(PEM))
        _write_key(key, self.key)


class Ca:
    """A CA issuing server and client certificates and revocation lists."""

    def __init__(self, name: str) -> None:
        self.key, self.cert = _ca(name)

    def server(self) -> Issued:
        return Issued(*_leaf("127.0.0.1", self.key, self.cert, server=True))

    def client(self, name: str) -> Issued:
        return Issued(*_leaf(name, self.key, self.cert, server=False))

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(PEM))
        return path

    def crl(self, revoked: list[Issued], *, valid_for: dt.timedelta = dt.timedelta(days=1)) -> bytes:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(min(now, now + valid_for) - dt.timedelta(minutes=5))
            .next_update(now + valid_for)
        )
        for r in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(r.cert.serial_number)
                .revocation_date(now)
                .build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(PEM)


def client_ctx(ca_file: Path, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    return ctx


def serial_of(der: bytes | None) -> int:
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class KeepAlive:
    """One HTTP/1.1 connection to a listener, kept open between requests (a DSP's keep-alive connection),
    POSTing to ``path``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
        self.reader, self.writer, self.path = reader, writer, path

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, path: str = "/duis/dno/dno-a") -> KeepAlive:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        return cls(reader, writer, path)

    @property
    def peer_serial(self) -> int:
        return serial_of(self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True))

    def head(self, length: int) -> bytes:
        """The head of a POST of a ``length``-byte XML body."""
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> int:
        """The status of the next answer (its body read and dropped); a :class:`ConnectionError` when the
        listener closed the connection instead."""
        status = await asyncio.wait_for(self.reader.readline(), 10)
        if not status:
            raise ConnectionError("the listener closed the connection without an answer")
        length = 0
        while (line := await asyncio.wait_for(self.reader.readline(), 10)) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(self.reader.readexactly(length), 10)
        return int(status.split()[1])

    async def post(self, body: bytes) -> int:
        await self.send(self.head(len(body)) + body)
        return await self.answer()

    async def closed_by_listener(self, timeout: float = 10.0) -> bool:
        """Whether the listener closes the connection (end of stream, or reset) within ``timeout``
        seconds, without sending anything more."""
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# ------------------------------------------------------------------------------------------ mosquitto


@dataclass
class Broker:
    port: int
    conf: Path
    proc: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None  # mosquitto's log (its stderr), appended to

    def start(self) -> None:
        with contextlib.ExitStack() as stack:
            log = self.log_file
            err = subprocess.DEVNULL if log is None else stack.enter_context(log.open("ab"))
            command = [MOSQUITTO, "-c", str(self.conf)]
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    @classmethod
    def in_folder(cls, folder: Path, *, persistence: bool, log_file: Path | None = None) -> Broker:
        """A started mosquitto on a free loopback port, configured in ``folder`` (skips if not installed);
        with ``log_file`` its log (the default types: error, warning, notice, information) goes there."""
        import shutil

        import pytest

        if not Path(MOSQUITTO).exists() or shutil.which(MOSQUITTO) is None:
            pytest.skip(
                f"{MOSQUITTO} is not installed (Debian package mosquitto): MQTT tests need a real broker"
            )
        port = free_port()
        data = folder / "mosquitto"
        data.mkdir(exist_ok=True)
        conf = data / "mosquitto.conf"
        store = f"persistence true\npersistence_location {data}/\n" if persistence else "persistence false\n"
        log = "log_dest stderr\n" if log_file is not None else "log_dest none\n"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{store}{log}")
        broker = cls(port, conf, log_file=log_file)
        broker.start()
        return broker

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def counted_writes(store: Any) -> Iterator[list[int]]:
    """Count the transactions ``store.write`` runs inside the block (``counts[0]``)."""
    counts = [0]
    write = store.write

    async def counted(fn: Any) -> Any:
        counts[0] += 1
        return await write(fn)

    store.write = counted
    try:
        yield counts
    finally:
        store.write = write


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Another connection (another process's, as far as the gateway can tell) holding ``db``'s write lock."""
    holder = sqlite3.connect(str(db), isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()
