"""TLS contexts from configuration (``ssl`` module, TLS 1.2 or later only).

The ingress presents the DNO's Receive Response Service identity to the DSP and, with a client
CA configured, requires the DSP's client certificate (mutual TLS; a client without a certificate
fails the handshake). Toward DNO endpoints and the MQTT broker the gateway is a TLS client that
verifies the peer (host name included) and optionally presents its own certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.service.config import TlsClientConfig, TlsServerConfig

__all__ = ["client_context", "server_context"]

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


def server_context(cfg: TlsServerConfig, *, base_dir: Path | None = None) -> ssl.SSLContext | None:
    """The ingress SSL context, or ``None`` for plain HTTP (no certificate configured)."""
    if not cfg.cert_file:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _min_version(cfg.min_version)
    ctx.load_cert_chain(_resolve(cfg.cert_file, base_dir), _resolve(cfg.key_file, base_dir))
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
        ctx.load_cert_chain(_resolve(cfg.cert_file, base_dir), _resolve(cfg.key_file, base_dir))
    return ctx
