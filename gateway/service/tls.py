"""TLS contexts from configuration (``ssl`` module, TLS 1.2 or later only).

The ingress presents the DNO's Receive Response Service identity to the DSP and, with a client
CA configured, requires the DSP's client certificate (mutual TLS; a client without a certificate
fails the handshake). Toward DNO endpoints and the MQTT broker the gateway is a TLS client that
verifies the peer (host name included) and optionally presents its own certificate.

A local client of a listener whose configuration it reads (``duisgw demo`` calling the admin
listener) trusts exactly the certificate that listener presents (:func:`pinned_client_context`).

Private keys are read unencrypted: an encrypted key is refused with a :class:`ValueError` (OpenSSL
would otherwise ask for its pass phrase on the terminal, and block a service started from one).
``duisgw config check`` builds these very contexts (:func:`tls_problem`), so a certificate that does
not match its key, a file that holds no certificate or an encrypted key is a listed problem there,
not a failure of ``duisgw serve`` half-way through its start.

Revocation (``crl_file``): the PEM revocation lists are loaded into the context's store
(``load_verify_locations``) with ``VERIFY_CRL_CHECK_LEAF``: OpenSSL checks the peer's own certificate
against the list of its issuer, and that is fail-closed: a peer whose issuer has no list in the file, or
only lists past their ``nextUpdate`` (or not yet valid, or badly signed), fails the handshake like a
revoked one. Only the leaf is checked (not ``VERIFY_CRL_CHECK_CHAIN``): that would also demand the root's
authority revocation list for every intermediate; an issuing CA withdrawn is taken out of the CA file.
The file must hold revocation lists and nothing else: ``load_verify_locations`` would take a certificate
found there for a trust anchor (:func:`read_crls` refuses it).

Reload (:mod:`gateway.service.tls_reload`). A context's lists can only be added to, never taken out
(``load_verify_locations``), so a reload builds a new context from the files and puts it in force whole.
A listening socket keeps the context it was opened with: :class:`ServerContextSwitch` gives that context an
``sni_callback`` (called for every handshake, with or without a server name) that hands the connection to
the context in force (``SSLObject.context``): its certificate chain and key, its trust store and lists.
The verification mode and flags stay those of the listening context, which the configuration sets (the
files do not): the same in both. Connections already open keep the context they were made with, but not
when the new lists revoke their client: :meth:`ServerContextSwitch.cut_revoked` closes those (no request is
read from them after the one under way, which is answered first), judged by
:meth:`ResumedPeerCheck.revokes` on the certificate each connection's handshake verified; only a list that
revokes it counts (a certificate whose issuer is not in the CA file, e.g. issued by an intermediate the
client sent, cannot have its list's signature checked here and is left to its next handshake).
A *resumed* session (a TLS 1.2 session id or a TLS 1.3 ticket of an earlier handshake) skips OpenSSL's
check of the client's certificate, and the listening context's session cache and ticket keys outlive a
reload: once a reload has put other material in force, :class:`ResumedPeerCheck` checks the certificate of
a resumed session against it (issued directly by a certificate of the client CA file in force and, with a
``crl_file``, a current list of its issuer signed by it that does not list it). Python cannot read the
peer's certificate before the handshake is done, so the listener's application does it
(:func:`resumed_session_middleware`) and a refused connection is closed before its request is read, as a
refused handshake would be; the client's next connection makes a full handshake, which OpenSSL checks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from gateway.service.config import ServiceConfig, TlsClientConfig, TlsServerConfig

__all__ = [
    "ResumedPeerCheck",
    "ServerContextSwitch",
    "client_context",
    "crl_problem",
    "material_digest",
    "pinned_client_context",
    "read_crls",
    "read_material",
    "resumed_session_middleware",
    "server_context",
    "server_context_from",
    "tls_problem",
]

log = logging.getLogger("duisgw.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _min_version(name: str) -> ssl.TLSVersion:
    try:
        return _VERSIONS[name]
    except KeyError:
        raise ValueError(f"unsupported TLS version {name!r} (TLSv1.2 or TLSv1.3)") from None


def _resolve(path: str, base: Path | None) -> str:
    p = Path(path)
    if base is not None and not p.is_absolute():
        p = base / p
    return str(p)


def _no_pass_phrase() -> str:
    raise ValueError(
        "the private key is encrypted (pass phrase protected): give it unencrypted, readable only by the service"
    )


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    ctx.load_cert_chain(cert, key, password=_no_pass_phrase)


_PEM_LABEL = re.compile(rb"-----BEGIN ([^-\r\n]*)-----")
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def read_crls(path: str) -> list[x509.CertificateRevocationList]:
    """The revocation lists of the PEM file ``path`` (one or several), or a :class:`ValueError`: a file
    with no PEM revocation list, or with anything else (a certificate there would become a trust anchor
    of the context), or a list that does not parse."""
    with open(path, "rb") as fh:
        data = fh.read()
    labels = _PEM_LABEL.findall(data)
    if not labels:
        raise ValueError(f"{path}: no PEM revocation list (-----BEGIN X509 CRL-----) in the file")
    others = sorted({label.decode("ascii", "replace") for label in labels if label != b"X509 CRL"})
    if others:
        raise ValueError(
            f"{path}: holds {', '.join(others)}, not only revocation lists (a certificate there would be trusted)"
        )
    blocks = _PEM_CRL.findall(data)
    if len(blocks) != len(labels):
        raise ValueError(f"{path}: a revocation list is not terminated (-----END X509 CRL-----)")
    return [x509.load_pem_x509_crl(block) for block in blocks]


def _load_crls(ctx: ssl.SSLContext, path: str) -> None:
    read_crls(path)  # only revocation lists: nothing of this file may become a trust anchor
    ctx.load_verify_locations(cafile=path)
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def crl_problem(
    cfg: TlsServerConfig | TlsClientConfig, *, base_dir: Path | None = None, now: dt.datetime
) -> str | None:
    """Why the ``crl_file`` of ``cfg`` would refuse peers it should not (``None`` when it would not, or
    there is none): a list that is not signed by a certificate of the section's CA file (checked only
    when the section names one: the system trust store is not enumerated), one past its ``nextUpdate`` or
    not yet valid at ``now`` (OpenSSL refuses every peer of that issuer then)."""
    if not cfg.crl_file:
        return None
    try:
        crls = read_crls(_resolve(cfg.crl_file, base_dir))
        ca_file = cfg.client_ca_file if isinstance(cfg, TlsServerConfig) else cfg.ca_file
        cas: list[x509.Certificate] = []
        if ca_file:
            with open(_resolve(ca_file, base_dir), "rb") as fh:
                cas = x509.load_pem_x509_certificates(fh.read())
        ssl.create_default_context(cafile=_resolve(cfg.crl_file, base_dir))  # as OpenSSL loads it
    except (ssl.SSLError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    for crl in crls:
        issuer = crl.issuer.rfc4514_string()
        if ca_file and not any(_signed_by(crl, ca) for ca in cas):
            return f"the revocation list of {issuer} is not signed by a certificate of {ca_file}"
        if crl.last_update_utc > now:
            return f"the revocation list of {issuer} is not valid before {crl.last_update_utc.isoformat()}"
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            return (
                f"the revocation list of {issuer} expired at {crl.next_update_utc.isoformat()} (nextUpdate): "
                "every peer it covers would be refused"
            )
    return None


def tls_sections(cfg: ServiceConfig) -> list[tuple[str, TlsServerConfig | TlsClientConfig]]:
    """The TLS sections in use, by name: ``server`` and ``admin`` (listeners with a certificate),
    ``destination:NAME`` (``https:`` URLs), ``mqtt`` (with ``tls_enabled``)."""
    sections: list[tuple[str, TlsServerConfig | TlsClientConfig]] = []
    if cfg.server.tls.cert_file:
        sections.append(("server", cfg.server.tls))
    if cfg.admin.enabled and cfg.admin.tls.cert_file:
        sections.append(("admin", cfg.admin.tls))
    sections += [(f"destination:{d.name}", d.tls) for d in cfg.destinations if d.url.startswith("https:")]
    if cfg.mqtt.enabled and cfg.mqtt.tls_enabled:
        sections.append(("mqtt", cfg.mqtt.tls))
    return sections


def section_crl_next_updates(
    tls: TlsServerConfig | TlsClientConfig, *, base_dir: Path | None = None
) -> dict[str, dt.datetime]:
    """By issuer: the latest ``nextUpdate`` of the revocation lists in the section's ``crl_file`` (a list
    without ``nextUpdate`` is left out: it does not expire)."""
    out: dict[str, dt.datetime] = {}
    if not tls.crl_file:
        return out
    for crl in read_crls(_resolve(tls.crl_file, base_dir)):
        issuer = crl.issuer.rfc4514_string()
        if crl.next_update_utc is not None and (issuer not in out or crl.next_update_utc > out[issuer]):
            out[issuer] = crl.next_update_utc
    return out


def crl_next_updates(
    cfg: ServiceConfig, *, base_dir: Path | None = None
) -> dict[tuple[str, str], dt.datetime]:
    """By (TLS section, issuer): the latest ``nextUpdate`` of the revocation lists in the ``crl_file`` of
    every TLS section in use (``server``, ``admin``, ``destination:NAME``, ``mqtt``), as the gateway
    loads them at start. A list without ``nextUpdate`` is left out (it does not expire)."""
    out: dict[tuple[str, str], dt.datetime] = {}
    for name, tls in tls_sections(cfg):
        for issuer, next_update in section_crl_next_updates(tls, base_dir=base_dir).items():
            out[(name, issuer)] = next_update
    return out


def section_files(cfg: TlsServerConfig | TlsClientConfig) -> tuple[tuple[str, str], ...]:
    """The files of a TLS section, by option name (those that are set)."""
    names = (
        ("cert_file", "key_file", "client_ca_file", "crl_file")
        if isinstance(cfg, TlsServerConfig)
        else ("ca_file", "cert_file", "key_file", "crl_file")
    )
    return tuple((name, getattr(cfg, name)) for name in names if getattr(cfg, name))


def material_digest(cfg: TlsServerConfig | TlsClientConfig, *, base_dir: Path | None = None) -> str:
    """The SHA-256 of the section's files (names and bytes): what a reload compares with the material in
    force, and what a worker process checks it read the same files as the gateway process. ``OSError``
    for a file that cannot be read."""
    return read_material(cfg, base_dir=base_dir)[0]


def read_material(
    cfg: TlsServerConfig | TlsClientConfig, *, base_dir: Path | None = None
) -> tuple[str, dict[str, bytes]]:
    """The section's files read once: their :func:`material_digest` and their bytes by option name (what an
    ingress worker process started later builds its context from: :func:`server_context_from`)."""
    h = hashlib.sha256()
    files: dict[str, bytes] = {}
    for name, path in section_files(cfg):
        with open(_resolve(path, base_dir), "rb") as fh:
            data = fh.read()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
        files[name] = data
    return h.hexdigest(), files


def server_context_from(cfg: TlsServerConfig, files: dict[str, bytes]) -> ssl.SSLContext | None:
    """:func:`server_context` built from the bytes :func:`read_material` read (not from the files as they are
    now): an ingress worker process started after they changed on disk (an operator's new files not accepted
    by a reload, or not yet reloaded) serves the material in force. Python's ``ssl`` loads a certificate chain
    and key from files only: each is given as an anonymous memory file of this process (``memfd``), closed
    once the context holds it."""
    fds: list[int] = []
    try:
        paths: dict[str, str] = {}
        for name, data in files.items():
            fd = os.memfd_create(f"duisgw-tls-{name}", os.MFD_CLOEXEC)
            fds.append(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            paths[name] = f"/proc/self/fd/{fd}"
        return server_context(replace(cfg, **paths), base_dir=None)
    finally:
        for fd in fds:
            os.close(fd)


class ResumedPeerCheck:
    """Whether the client certificate of a *resumed* TLS session would still be accepted by the client CA
    file and revocation lists of a listener's section (read when this is built): a resumed session skips
    OpenSSL's check of the certificate, so after a reload it is checked here (module docstring). The
    certificate must be issued directly by a certificate of the CA file (its signature verified); with
    a ``crl_file``, a list of that issuer signed by it and current at ``now`` must exist (fail-closed, as
    OpenSSL's leaf check) and none may list the certificate's serial number."""

    def __init__(self, cfg: TlsServerConfig, *, base_dir: Path | None = None) -> None:
        cas: list[x509.Certificate] = []
        if cfg.client_ca_file:
            with open(_resolve(cfg.client_ca_file, base_dir), "rb") as fh:
                cas = x509.load_pem_x509_certificates(fh.read())
        self.cas = cas
        self.crls = read_crls(_resolve(cfg.crl_file, base_dir)) if cfg.crl_file else None

    def problem(self, der: bytes, now: dt.datetime) -> str | None:
        """Why the certificate ``der`` (DER) is refused now, or ``None``."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return "the certificate of the resumed session does not parse"
        issuers = self._issuers(cert)
        if not issuers:
            return "the certificate of the resumed session is not issued by a CA of client_ca_file in force"
        if self.crls is None:
            return None
        lists = self._current_lists(issuers, now)
        if not lists:
            return "no current revocation list of the issuer of the resumed session's certificate"
        if _listed(cert, lists):
            return "the certificate of the resumed session is revoked"
        return None

    def revokes(self, der: bytes, now: dt.datetime) -> bool:
        """Whether a list of this section revokes the certificate ``der`` (DER) at ``now``: a list current
        at ``now`` and signed by a certificate of the CA file that issued ``der`` directly (what OpenSSL's
        leaf check finds at a handshake) lists its serial number. Only that positive evidence counts here
        (:meth:`ServerContextSwitch.cut_revoked` closes open connections on it); a certificate that does
        not parse, whose issuer is not in the CA file or has no current list is not *revoked*."""
        if self.crls is None:
            return False
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        return _listed(cert, self._current_lists(self._issuers(cert), now))

    def _issuers(self, cert: x509.Certificate) -> list[x509.Certificate]:
        return [ca for ca in self.cas if ca.subject == cert.issuer and _issued_by(cert, ca)]

    def _current_lists(
        self, issuers: list[x509.Certificate], now: dt.datetime
    ) -> list[x509.CertificateRevocationList]:
        return [
            crl
            for crl in self.crls or ()
            if any(_signed_by(crl, ca) for ca in issuers)
            and crl.last_update_utc <= now
            and (crl.next_update_utc is None or now <= crl.next_update_utc)
        ]


def _listed(cert: x509.Certificate, lists: list[x509.CertificateRevocationList]) -> bool:
    return any(crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None for crl in lists)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class ServerContextSwitch:
    """The TLS context of a listener whose material reloads (module docstring): :attr:`listening` is the
    context the socket is opened with (built at start, never changed); :meth:`swap` puts a context built
    from the same section in force for the handshakes that begin after it; connections already open keep
    theirs, and :meth:`cut_revoked` closes those whose client certificate the lists put in force revoke."""

    def __init__(
        self,
        listening: ssl.SSLContext,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        on_overtaken: Callable[[], None] | None = None,
    ) -> None:
        self.listening = listening
        # called for each connection :meth:`made_before_problem` closes (the owner counts it in the metrics)
        self.on_overtaken = on_overtaken
        self.current = listening
        self._resumed: ResumedPeerCheck | None = None
        self._clock = clock if clock is not None else (lambda: dt.datetime.now(dt.UTC))
        self.refused_resumptions = 0  # resumed handshakes refused (observability, tests)
        self.cut_connections = 0  # open connections closed by cut_revoked (observability, tests)
        self._cutting: dict[web.RequestHandler, asyncio.Task[None]] = {}  # idle ones, being closed
        self._busy: dict[web.RequestHandler, int] = {}  # connections with a request under way (middleware)
        self._after_answer: set[web.RequestHandler] = set()  # to close once their request is answered
        self._judged: dict[bytes, bool] = {}  # client certificate -> revoked by the lists in force
        listening.sni_callback = self._select

    def swap(self, context: ssl.SSLContext, resumed: ResumedPeerCheck | None = None) -> None:
        """Put ``context`` in force for new handshakes; ``resumed``: how to check the client certificate of
        a resumed session (listeners that verify clients)."""
        self._resumed = resumed
        self._judged = {}
        self.current = context

    def _select(
        self, conn: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        current = self.current
        if current is not self.listening:
            conn.context = current
        return None

    def cut_revoked(self, server: web.Server, grace: float) -> int:
        """Close the open connections of ``server`` (the listener's aiohttp server) whose client certificate
        (the one its handshake verified) the revocation lists in force revoke (:meth:`ResumedPeerCheck.revokes`;
        nothing without a ``crl_file``, nor on a listener that does not verify clients); how many. Called
        right after :meth:`swap`. No request after the one under way is read from such a connection. An idle
        one is closed at once, as aiohttp's graceful shutdown closes a connection (``RequestHandler.close``,
        then ``shutdown``). One with a request under way (:func:`resumed_session_middleware` knows: it
        runs from the request's head on, while its body is still arriving) is closed once that request is
        answered (aiohttp's ``close`` would drop the rest of its body), or after ``grace`` seconds if it is
        not answered by then. A connection already being cut is not counted again."""
        check = self._resumed
        if check is None or check.crls is None:
            return 0
        now = self._clock()
        loop = asyncio.get_running_loop()
        judged: dict[bytes, bool] = {}  # (the same client certificate on many connections: judged once)
        cut = 0
        for handler in server.connections:
            transport = handler.transport
            conn = transport.get_extra_info("ssl_object") if transport is not None else None
            if conn is None or handler in self._cutting or handler in self._after_answer:
                continue
            der = conn.getpeercert(binary_form=True)
            if der is None:
                continue
            if der not in judged:
                judged[der] = check.revokes(der, now)
            if not judged[der]:
                continue
            cut += 1
            if handler in self._busy:
                self._after_answer.add(handler)
                loop.call_later(grace, self._overdue, handler)
            else:
                handler.close()  # (at once: no request is read from it any more)
                self._cutting[handler] = loop.create_task(self._close(handler, grace))
        self.cut_connections += cut
        return cut

    def made_before_problem(self, conn: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """Why a request on ``conn`` is refused when its handshake was verified by a context no longer in force
        and the lists in force revoke its client certificate (``None``: not so). :meth:`cut_revoked` closes
        the connections open at the reload; this catches a handshake the reload overtook (its client hello
        handed to the previous context, its end after the scan). Judged once per certificate and lists."""
        check = self._resumed
        if check is None or check.crls is None or conn.context is self.current:
            return None
        der = conn.getpeercert(binary_form=True)
        if der is None:
            return None
        revoked = self._judged.get(der)
        if revoked is None:
            if len(self._judged) >= 4096:  # (a bound: client certificates are few)
                self._judged.clear()
            revoked = self._judged[der] = check.revokes(der, self._clock())
        if not revoked:
            return None
        problem = (
            "the client certificate of a connection made before the reload is revoked by the lists in force"
        )
        self.cut_connections += 1
        log.warning("TLS connection closed: %s", problem, extra={"error": problem})
        if self.on_overtaken is not None:
            self.on_overtaken()
        return problem

    def request_started(self, handler: web.RequestHandler) -> bool:
        """A request's head has been read on ``handler``'s connection (:func:`resumed_session_middleware`):
        ``False`` when that connection is being cut (serve nothing more on it)."""
        if handler in self._cutting or handler in self._after_answer:
            return False
        self._busy[handler] = self._busy.get(handler, 0) + 1
        return True

    def request_done(self, handler: web.RequestHandler) -> None:
        """The request started on ``handler``'s connection is done: its answer goes out next; a connection
        :meth:`cut_revoked` marked is closed after it (``RequestHandler.close``: aiohttp closes the
        connection once that answer is written)."""
        left = self._busy.pop(handler, 1) - 1
        if left > 0:
            self._busy[handler] = left
        if handler in self._after_answer and not left:
            self._after_answer.discard(handler)
            handler.close()

    def _overdue(self, handler: web.RequestHandler) -> None:
        if handler in self._after_answer:  # (not answered within the grace period)
            self._after_answer.discard(handler)
            handler.force_close()

    async def _close(self, handler: web.RequestHandler, grace: float) -> None:
        """Close the idle connection of ``handler`` (a request that began meanwhile: ``grace`` seconds)."""
        try:
            await handler.shutdown(grace)
        except Exception as exc:  # (never out of a background task: the connection is closed all the same)
            log.warning("closing a revoked client's connection failed: %s: %s", type(exc).__name__, exc)
            handler.force_close()
        finally:
            self._cutting.pop(handler, None)

    def resumed_problem(self, conn: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """After the handshake: why the client certificate of ``conn``'s *resumed* session is refused by the
        material in force (``None``: not resumed, no reload put other material in force, or accepted).
        Python cannot read the peer's certificate before the handshake is done, so the listener's
        application asks this (:func:`resumed_session_middleware`) and closes a refused connection."""
        check = self._resumed
        if check is None or self.current is self.listening or not conn.session_reused:
            return None
        der = conn.getpeercert(binary_form=True)
        problem = (
            "the resumed session has no client certificate"
            if der is None
            else check.problem(der, self._clock())
        )
        if problem is not None:
            self.refused_resumptions += 1
            log.warning("TLS session resumption refused: %s", problem, extra={"error": problem})
        return problem


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    if ca.subject != crl.issuer:
        return False
    try:  # (a certificate's key may be one that signs nothing: X25519, ML-KEM ...)
        return crl.is_signature_valid(cast(CertificateIssuerPublicKeyTypes, ca.public_key()))
    except (TypeError, ValueError):
        return False


def tls_problem(cfg: TlsServerConfig | TlsClientConfig, *, base_dir: Path | None = None) -> str | None:
    """Why the context of ``cfg`` cannot be built (``None`` when it can): what ``duisgw config check``
    reports for TLS material that ``duisgw serve`` would refuse."""
    try:
        if isinstance(cfg, TlsServerConfig):
            server_context(cfg, base_dir=base_dir)
        else:
            client_context(cfg, base_dir=base_dir)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def server_context(cfg: TlsServerConfig, *, base_dir: Path | None = None) -> ssl.SSLContext | None:
    """The ingress SSL context, or ``None`` for plain HTTP (no certificate configured)."""
    if not cfg.cert_file:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _min_version(cfg.min_version)
    _load_chain(ctx, _resolve(cfg.cert_file, base_dir), _resolve(cfg.key_file, base_dir))
    if cfg.client_ca_file:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=_resolve(cfg.client_ca_file, base_dir))
    if cfg.crl_file:
        if not cfg.client_ca_file:
            raise ValueError("crl_file needs client_ca_file (no client certificate is checked without it)")
        _load_crls(ctx, _resolve(cfg.crl_file, base_dir))
    return ctx


def client_context(cfg: TlsClientConfig, *, base_dir: Path | None = None) -> ssl.SSLContext:
    """A verifying client context (peer certificate and host name checked)."""
    if cfg.ca_file:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_resolve(cfg.ca_file, base_dir))
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = _min_version(cfg.min_version)
    if cfg.cert_file:
        _load_chain(ctx, _resolve(cfg.cert_file, base_dir), _resolve(cfg.key_file, base_dir))
    if cfg.crl_file:
        _load_crls(ctx, _resolve(cfg.crl_file, base_dir))
    return ctx


def pinned_client_context(
    cert_file: str,
    *,
    base_dir: Path | None = None,
    client_cert: tuple[str, str] | None = None,
    min_version: str = "TLSv1.2",
) -> ssl.SSLContext:
    """A client context that trusts exactly one certificate: the first of ``cert_file`` (a listener's
    own certificate chain, its leaf first), and nothing else (not the system trust store, not the CA
    that issued it, not the chain's other certificates). The peer must present that very certificate
    (OpenSSL compares it whole; partial-chain verification lets a leaf be the trust anchor), so its
    host name is not checked: a local client reaches a listener on a wildcard address through the
    loopback address, which the certificate need not name. ``client_cert`` (certificate, key): presented
    for mutual TLS."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    with open(_resolve(cert_file, base_dir), "rb") as fh:
        certs = x509.load_pem_x509_certificates(fh.read())
    pin = certs[0].public_bytes(Encoding.PEM).decode()
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pin)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.check_hostname = False  # (the whole certificate is pinned; see above)
    ctx.minimum_version = _min_version(min_version)
    if client_cert is not None:
        _load_chain(ctx, _resolve(client_cert[0], base_dir), _resolve(client_cert[1], base_dir))
    return ctx


def resumed_session_middleware(switch: Callable[[], ServerContextSwitch | None]) -> Any:
    """An aiohttp middleware for a listener behind the switch ``switch()`` returns (``None``: no TLS, nothing
    to check): a request on a connection whose resumed TLS
    session carries a client certificate the material in force refuses
    (:meth:`ServerContextSwitch.resumed_problem`) is not read: the connection is closed without an answer,
    as a refused handshake would have been (the client's next connection makes a full handshake); so is
    one on a connection made under earlier material whose client the lists in force revoke
    (:meth:`ServerContextSwitch.made_before_problem`). It also
    tells the switch which connections have a request under way (:meth:`ServerContextSwitch.request_started`,
    :meth:`~ServerContextSwitch.request_done`), so that a reload's :meth:`~ServerContextSwitch.cut_revoked`
    closes those after their answer, and serves nothing more on a connection being cut."""

    @web.middleware
    async def check_resumed(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport, current = request.transport, switch()
        conn = (
            transport.get_extra_info("ssl_object") if transport is not None and current is not None else None
        )
        if conn is None or current is None:
            return await handler(request)
        assert transport is not None
        protocol = request.protocol
        if not current.request_started(protocol):  # a connection being cut: nothing more is served on it
            transport.abort()  # (the answer below is never sent: the connection is gone)
            return web.Response(status=403, text="TLS client certificate revoked\n")
        try:
            if current.resumed_problem(conn) is not None or current.made_before_problem(conn) is not None:
                transport.abort()
                return web.Response(status=403, text="TLS client certificate refused\n")
            return await handler(request)
        finally:
            current.request_done(protocol)

    return check_resumed
