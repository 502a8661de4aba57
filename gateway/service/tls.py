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
found there for a trust anchor (:func:`read_crls` refuses it). The lists are read once, when the context
is built (start-up): a new list needs a restart.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from gateway.service.config import ServiceConfig, TlsClientConfig, TlsServerConfig

__all__ = [
    "client_context",
    "crl_problem",
    "pinned_client_context",
    "read_crls",
    "server_context",
    "tls_problem",
]

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


def crl_next_updates(
    cfg: ServiceConfig, *, base_dir: Path | None = None
) -> dict[tuple[str, str], dt.datetime]:
    """By (TLS section, issuer): the latest ``nextUpdate`` of the revocation lists in the ``crl_file`` of
    every TLS section in use (``server``, ``admin``, ``destination:NAME``, ``mqtt``), as the gateway
    loads them at start. A list without ``nextUpdate`` is left out (it does not expire)."""
    sections: list[tuple[str, TlsServerConfig | TlsClientConfig]] = [("server", cfg.server.tls)]
    if cfg.admin.enabled:
        sections.append(("admin", cfg.admin.tls))
    sections += [(f"destination:{d.name}", d.tls) for d in cfg.destinations if d.url.startswith("https:")]
    if cfg.mqtt.enabled and cfg.mqtt.tls_enabled:
        sections.append(("mqtt", cfg.mqtt.tls))
    out: dict[tuple[str, str], dt.datetime] = {}
    for name, tls in sections:
        if not tls.crl_file:
            continue
        for crl in read_crls(_resolve(tls.crl_file, base_dir)):
            key = (name, crl.issuer.rfc4514_string())
            if crl.next_update_utc is not None and (key not in out or crl.next_update_utc > out[key]):
                out[key] = crl.next_update_utc
    return out


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
