"""Reload of the TLS material of one section (``duisgw serve``: SIGHUP, ``POST /admin/reload``).

A reload reads a section's files (certificate chain, key, CA file, ``crl_file``) and judges them before
anything is swapped: :func:`prepare_section` answers *unchanged* (the same bytes as the material in
force: :func:`~gateway.service.tls.material_digest`), *refused* (a file missing or unreadable, a key that
does not match its certificate, an encrypted key, a ``crl_file`` that :func:`~gateway.service.tls.crl_problem`
refuses: not signed by the section's CA, past its ``nextUpdate`` or not yet valid, holding anything but
lists) or a new context built exactly as at start-up. Refused material leaves the context in force; the
caller (:meth:`gateway.service.app.Service.reload_transport`) reports it. The digest is taken before and
after the context is built: files replaced while they were read are refused (reload again).

Where each context goes: listeners through their :class:`~gateway.service.tls.ServerContextSwitch` (the
gateway process's ingress and admin listener, each ingress worker process), DNO destinations through
:meth:`gateway.service.delivery.HttpSender.use_context` (in the sender process with ``[outbox]
sender_process``), MQTT through :meth:`gateway.service.mqtt.MqttLink.use_tls_context`, then
:meth:`~gateway.service.mqtt.MqttLink.reconnect` (the link leaves the connection opened with the old
material, gracefully, and connects again with the new one; the report's ``link`` says how that went).
A worker process reads the files itself and checks it read what the gateway process judged (the
digest): Python's ``ssl`` loads a certificate chain and key from files only.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from gateway.service.config import TlsClientConfig, TlsServerConfig
from gateway.service.tls import (
    ResumedPeerCheck,
    client_context,
    crl_problem,
    material_digest,
    section_crl_next_updates,
    server_context,
)

__all__ = ["PreparedSection", "prepare_as", "prepare_section"]


@dataclass(frozen=True)
class PreparedSection:
    """What a reload read of one TLS section: a new ``context`` (with the digest of its files, the
    resumed-session check of a listener that verifies clients, and its lists' ``nextUpdate`` by issuer),
    the same material as ``in_force`` (``context`` None, ``refused`` None), or why it is ``refused``."""

    name: str
    digest: str = ""
    context: ssl.SSLContext | None = None
    resumed: ResumedPeerCheck | None = None
    next_updates: dict[str, dt.datetime] = field(default_factory=dict)
    refused: str | None = None

    @property
    def unchanged(self) -> bool:
        return self.context is None and self.refused is None


def prepare_section(
    name: str,
    cfg: TlsServerConfig | TlsClientConfig,
    base_dir: Path | None,
    in_force: str | None,
    now: dt.datetime,
) -> PreparedSection:
    """Read and judge the files of section ``name`` (blocking: run it in a worker thread); ``in_force``:
    the digest of the material in force (``None``: build whatever the files hold)."""
    try:
        digest = material_digest(cfg, base_dir=base_dir)
        if digest == in_force:
            return PreparedSection(name, digest)
        context: ssl.SSLContext | None
        if isinstance(cfg, TlsServerConfig):
            context = server_context(cfg, base_dir=base_dir)
        else:
            context = client_context(cfg, base_dir=base_dir)
        if context is None:  # (a listener section always has a certificate here)
            return PreparedSection(name, digest, refused="no certificate configured")
        if (problem := crl_problem(cfg, base_dir=base_dir, now=now)) is not None:
            return PreparedSection(name, digest, refused=f"crl_file: {problem}")
        resumed = (
            ResumedPeerCheck(cfg, base_dir=base_dir)
            if isinstance(cfg, TlsServerConfig) and cfg.client_ca_file
            else None
        )
        next_updates = section_crl_next_updates(cfg, base_dir=base_dir)
        if material_digest(cfg, base_dir=base_dir) != digest:
            return PreparedSection(
                name,
                digest,
                refused="the files changed while they were read (replace them, then reload again)",
            )
    except (ssl.SSLError, OSError, ValueError) as exc:
        return PreparedSection(name, refused=str(exc) or type(exc).__name__)
    return PreparedSection(name, digest, context, resumed, next_updates)


def prepare_as(
    name: str, cfg: TlsServerConfig | TlsClientConfig, base_dir: Path | None, digest: str, now: dt.datetime
) -> PreparedSection:
    """In a worker process: the section's context built from its files, refused unless they are the very
    files the gateway process judged (``digest``)."""
    prepared = prepare_section(name, cfg, base_dir, None, now)
    if prepared.refused is None and prepared.digest != digest:
        return PreparedSection(
            name,
            prepared.digest,
            refused="the files changed since the gateway process read them (replace them, then reload again)",
        )
    return prepared
