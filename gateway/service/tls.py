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
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.service.config import TlsClientConfig, TlsServerConfig

__all__ = ["client_context", "pinned_client_context", "server_context", "tls_problem"]

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
