"""The service configuration: one TOML file → one typed, frozen :class:`ServiceConfig`.

Theory of operation: every option is a dataclass field whose ``metadata["doc"]`` says what it
does; its default is the dataclass default. One generic loader walks the dataclasses with their
type hints (str, int, float, bool, tuple[str, ...], nested dataclasses, arrays of tables), so
adding an option is adding a field. Loading collects *every* problem (unknown keys, wrong types,
out-of-range values, cross-field rules, missing files, TLS material that does not load, the transport
security refusals of :func:`transport_security_problems`) as ``path: reason`` strings before raising
:class:`ConfigError` with all of them, so ``duisgw config check`` can list them at once.
:func:`render_default_toml` and :func:`render_markdown` are generated from the same fields, so the
default file and ``docs/CONFIG.md`` cannot drift from the code (a test pins that).

The ``[engine]`` table belongs to the decision pipeline: it is kept as a raw mapping here and
validated by the pipeline (pass a validator to :func:`load_config` / :func:`check_config`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from yarl import URL

from gateway.errors import DuisgwError
from gbcs.eui import EUIError, format_eui, parse_eui

__all__ = [
    "ADMIN_OPEN_PATHS",
    "ADMIN_TOKEN_MIN_CHARS",
    "AdminConfig",
    "ConfigError",
    "DestinationConfig",
    "LoggingConfig",
    "MqttConfig",
    "OutboxConfig",
    "PipelineConfig",
    "ServerConfig",
    "ServiceConfig",
    "StateConfig",
    "StoreConfig",
    "TlsClientConfig",
    "TlsServerConfig",
    "check_config",
    "config_from_mapping",
    "is_loopback_host",
    "load_config",
    "read_admin_token",
    "read_password_file",
    "read_token_file",
    "render_default_toml",
    "render_markdown",
    "transport_security_problems",
    "transport_security_warnings",
]

EngineValidator = Callable[[Mapping[str, Any]], Sequence[str]]
ServiceValidator = Callable[["ServiceConfig"], Sequence[str]]

TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
MODES = ("pipeline", "passthrough")
CLOCKS = ("wall", "message")
STATE_BACKENDS = ("sqlite", "redis")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(DuisgwError):
    """The configuration is unusable; ``problems`` lists every reason as ``path: reason``."""

    code = "bad_config"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid configuration")


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: str = field(
        default="",
        metadata=_doc(
            "PEM server certificate chain; empty = plain HTTP (local use only). The section's files are read "
            "at start and again by each reload (SIGHUP, POST /admin/reload): new handshakes use them, open "
            "connections keep theirs (but those of a client the reloaded crl_file revokes are closed); unusable "
            "files keep the ones in force."
        ),
    )
    key_file: str = field(
        default="", metadata=_doc("PEM private key of the server certificate (unencrypted).")
    )
    client_ca_file: str = field(
        default="",
        metadata=_doc(
            "PEM CA bundle for client certificates; when set, mutual TLS is required (no cert = refused)."
        ),
    )
    crl_file: str = field(
        default="",
        metadata=_doc(
            "PEM file of certificate revocation lists (one or several, e.g. DCCKI CRLs) checked against each "
            "client certificate (needs client_ca_file). Fail-closed: a client whose issuing CA has no CRL "
            "here, or only one past its nextUpdate, is refused at the handshake. Read at start and by each reload "
            "(SIGHUP, POST /admin/reload), like the other files of the section; a reload whose lists revoke a "
            "client also closes the connections it has open (its request under way answered first). "
            "Empty = no revocation check."
        ),
    )
    min_version: str = field(
        default="TLSv1.2", metadata=_doc("Lowest TLS version accepted: TLSv1.2 or TLSv1.3.")
    )


@dataclass(frozen=True)
class TlsClientConfig:
    ca_file: str = field(
        default="",
        metadata=_doc(
            "PEM CA bundle to verify the peer; empty = system trust store. The section's files are read at "
            "start and again by each reload (SIGHUP, POST /admin/reload): new connections use them (MQTT: "
            "the link reconnects with new files at once, losing no publication); unusable files keep the "
            "ones in force."
        ),
    )
    cert_file: str = field(default="", metadata=_doc("PEM client certificate for mutual TLS; empty = none."))
    key_file: str = field(
        default="", metadata=_doc("PEM private key of the client certificate (unencrypted).")
    )
    crl_file: str = field(
        default="",
        metadata=_doc(
            "PEM file of certificate revocation lists (one or several) checked against the server's "
            "certificate. Fail-closed: a server whose issuing CA has no CRL here, or only one past its "
            "nextUpdate, is refused at the handshake. Read at start and by each reload (SIGHUP, POST "
            "/admin/reload), like the other files of the section. Empty = no revocation check."
        ),
    )
    min_version: str = field(
        default="TLSv1.2", metadata=_doc("Lowest TLS version offered: TLSv1.2 or TLSv1.3.")
    )


@dataclass(frozen=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata=_doc("Address the DSP-facing ingress listens on."))
    port: int = field(default=8443, metadata=_doc("Port of the ingress (0 = pick a free port)."))
    max_body_bytes: int = field(
        default=1 << 20,
        metadata=_doc("Largest accepted DUIS message in bytes; bigger bodies get 413 unread."),
    )
    content_types: tuple[str, ...] = field(
        default=("application/xml",), metadata=_doc("Accepted request Content-Types; others get 415.")
    )
    shutdown_timeout: float = field(
        default=30.0, metadata=_doc("Seconds to let in-flight requests finish on shutdown.")
    )
    keepalive_timeout: float = field(
        default=30.0,
        metadata=_doc("Seconds an idle or half-sent connection is kept before it is closed (slow clients)."),
    )
    read_timeout: float = field(
        default=30.0, metadata=_doc("Seconds allowed to receive a request body; slower clients get 408.")
    )
    header_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds allowed to receive a request's headers, from their first byte; a slower client gets 408 "
            "header_timeout and its connection is closed (slow-header clients). A connection idle between "
            "requests is governed by keepalive_timeout."
        ),
    )
    reuse_port: bool = field(
        default=False,
        metadata=_doc(
            "Share the ingress port with other duisgw instances on this host (SO_REUSEPORT: the kernel "
            "spreads new connections across them). In pipeline mode it needs state.backend = redis, so that "
            "they decide as one gateway, and each instance needs a state_dir and store path of its own "
            "(docs/SCALE-OUT.md)."
        ),
    )
    ingress_processes: int = field(
        default=0,
        metadata=_doc(
            "Worker processes that run the DSP-facing HTTP ingress and classify what they receive (safe "
            "parse, XML signature, DUIS decode, GBCS check), sharing one listening socket. Decisions, the "
            "stores, delivery and the admin listener stay in the gateway process, which answers each "
            "request once it is durable. 0 = the ingress runs in the gateway process."
        ),
    )
    ingress_hang_timeout: float = field(
        default=30.0,
        metadata=_doc(
            "With ingress_processes: seconds an ingress worker may go without answering the gateway process's "
            "ping (every fifth of this, at most every 5 s) and without beginning a classification before it is "
            "taken for hung (its event loop held, e.g. by a classification that never ends), killed and replaced. "
            "Keep it well above the slowest legitimate classification (a 1 MiB AD1 takes ~0.5 s). A message "
            "being classified by two workers that died or hung is refused from then on (400 classify_worker_died)."
        ),
    )
    allow_plain_http: bool = field(
        default=False,
        metadata=_doc(
            "Listen with plain HTTP (no [server.tls] certificate) on a host that is not a loopback address, "
            "e.g. behind a TLS-terminating proxy on another host (serve logs a warning at start). Default "
            "false: refused (the DCC delivers over TLS; plain HTTP on the network carries the DUIS traffic in "
            "clear and takes it from anyone who reaches the port). A loopback host (127.0.0.0/8, ::1, "
            "localhost) needs no opt-out."
        ),
    )
    tls: TlsServerConfig = field(default_factory=TlsServerConfig, metadata=_doc("Ingress TLS."))


@dataclass(frozen=True)
class AdminConfig:
    enabled: bool = field(
        default=True,
        metadata=_doc(
            "Serve /metrics, /healthz, /readyz and the control endpoints (/admin/reload, /admin/state, "
            "/admin/tick) on a separate listener. false = /metrics, /healthz and /readyz on the DSP-facing "
            "listener and no control endpoints at all (SIGHUP still reloads)."
        ),
    )
    host: str = field(
        default="127.0.0.1",
        metadata=_doc(
            "Address of the admin listener (plain HTTP, or HTTPS with [admin.tls]). One that is not a loopback "
            "address (127.0.0.0/8, ::1, localhost) needs token_file or mutual TLS ([admin.tls] client_ca_file), "
            "or allow_unauthenticated = true; a token there needs [admin.tls], or allow_plaintext_credentials = "
            "true."
        ),
    )
    port: int = field(default=9108, metadata=_doc("Port of the admin listener (0 = pick a free port)."))
    token_file: str = field(
        default="",
        metadata=_doc(
            "File holding the bearer token of the control endpoints (/admin/reload, /admin/state, "
            "/admin/tick): its first line, UTF-8, at least 16 visible ASCII characters without spaces (e.g. "
            "the output of `openssl rand -hex 32`); read at start and by each reload (SIGHUP, POST /admin/reload: a "
            "new token replaces the old one at once; an unusable file keeps the one in force). A request without "
            "`Authorization: Bearer TOKEN` gets 401 (counted in duisgw_admin_auth_failures_total; logged at most once a minute). "
            "/metrics, /healthz and /readyz stay open. Empty = no token."
        ),
    )
    allow_unauthenticated: bool = field(
        default=False,
        metadata=_doc(
            "Serve the control endpoints without a token on a host that is not a loopback address (whoever "
            "reaches the port can reload the reference data and, with clock = message, move the clock); serve "
            "logs a warning at start. Default false: such a listener is refused."
        ),
    )
    allow_plaintext_credentials: bool = field(
        default=False,
        metadata=_doc(
            "Accept the bearer token (token_file) over plain HTTP (no [admin.tls] certificate) on a host that is "
            "not a loopback address, where it crosses the network in clear (serve logs a warning at start). "
            "Default false: refused; set [admin.tls] cert_file and key_file."
        ),
    )
    tls: TlsServerConfig = field(
        default_factory=TlsServerConfig,
        metadata=_doc(
            "Admin listener TLS (HTTPS for /metrics, the probes and the control endpoints; with client_ca_file "
            "every connection needs a client certificate, Prometheus and probes included)."
        ),
    )


@dataclass(frozen=True)
class StoreConfig:
    path: str = field(
        default="var/duisgw.sqlite3",
        metadata=_doc("SQLite database file (WAL mode): records, rejects, outbox."),
    )
    synchronous: str = field(
        default="FULL",
        metadata=_doc(
            "SQLite synchronous level: FULL (durable against power loss) or NORMAL (against process crash)."
        ),
    )
    busy_timeout: float = field(default=5.0, metadata=_doc("Seconds to wait for a database lock before 503."))
    max_batch: int = field(
        default=512, metadata=_doc("Most write operations group-committed in one transaction.")
    )
    observations_retention_seconds: float = field(
        default=7 * 86400.0,
        metadata=_doc(
            "Observation-lane messages that carry nothing the engine uses (kept in `observations` with their "
            "bytes before the 204) are kept this long, then purged (checked every minute, at most 500 rows per "
            "transaction). They are other parties' traffic, consumption data among it, and no decision rests "
            "on them; 0 = keep them for ever."
        ),
    )
    rejects_retention_seconds: float = field(
        default=90 * 86400.0,
        metadata=_doc(
            "Refused inputs (the `rejects` table: bytes, reason, lane, user; `duisgw audit rejects`) are kept this "
            "long, then purged (checked every minute, at most 500 rows per transaction), so a peer sending bad "
            "input without end cannot fill the disk for good; 0 = keep them for ever."
        ),
    )


@dataclass(frozen=True)
class OutboxConfig:
    max_attempts: int = field(
        default=20,
        metadata=_doc(
            "Attempts a destination may *refuse* a message (reachable: a non-2xx answer, an MQTT PUBACK failure "
            "code or a packet over the broker's maximum, a sender error on that message) before it is "
            "dead-lettered; 0 = never dead-letter."
        ),
    )
    dead_letter_unreachable: bool = field(
        default=False,
        metadata=_doc(
            "Also count connection failures/timeouts toward max_attempts. Default false: an endpoint down for hours "
            "only delays delivery."
        ),
    )
    backoff_initial: float = field(default=0.5, metadata=_doc("First retry delay in seconds."))
    backoff_multiplier: float = field(default=2.0, metadata=_doc("Growth factor of the retry delay."))
    backoff_max: float = field(default=60.0, metadata=_doc("Largest retry delay in seconds."))
    jitter: float = field(
        default=0.5,
        metadata=_doc("Fraction (0..1) of each delay that is randomised downward (spreads retries)."),
    )
    request_timeout: float = field(
        default=10.0, metadata=_doc("Seconds for one delivery attempt (connect + answer).")
    )
    prefetch: int = field(default=64, metadata=_doc("Pending rows read ahead per destination."))
    window: int = field(
        default=1,
        metadata=_doc(
            "Messages in flight per destination. 1 = strict order per destination (message n+1 is sent after "
            "message n is acknowledged). N > 1 = up to N at once, in order per device: a message is never sent "
            "while an earlier one for the same Comms Hub (or MPAN) is unacknowledged, and one without a device "
            "waits for every earlier message. 1..256."
        ),
    )
    sender_process: bool = field(
        default=False,
        metadata=_doc(
            "POST to the DNO endpoints from a process of its own (spawned at start-up, replaced if it dies). "
            "Ordering, the window, retries and the outbox stay in the gateway process; its event loop then no "
            "longer runs the HTTP client, which otherwise competes with the decision engine for one interpreter."
        ),
    )
    poll_interval: float = field(
        default=1.0, metadata=_doc("Seconds between outbox scans when nothing woke a worker.")
    )
    retention_seconds: float = field(
        default=3 * 86400.0,
        metadata=_doc(
            "Delivered rows are kept this long (dedupe of re-deliveries, audit), then purged (checked every "
            "minute, at most 500 rows per transaction so that decisions never wait behind a large purge)."
        ),
    )
    drain_timeout: float = field(
        default=10.0, metadata=_doc("Seconds to let in-flight deliveries finish on shutdown.")
    )


@dataclass(frozen=True)
class DestinationConfig:
    name: str = field(
        default="", metadata=_doc("Destination name (path /duis/dno/{name}, metrics label, MQTT topic).")
    )
    user: str = field(
        default="",
        metadata=_doc("The DNO's DCC User ID (EUI-64, any spelling), also accepted as {user} in the path."),
    )
    url: str = field(
        default="",
        metadata=_doc(
            "http:// or https:// URL of the DNO adaptor's receive endpoint (port 1..65535); empty = no HTTP "
            "delivery."
        ),
    )
    mqtt: bool = field(
        default=True, metadata=_doc("Also publish forwarded messages to MQTT (when [mqtt].publish).")
    )
    allow_plaintext_credentials: bool = field(
        default=False,
        metadata=_doc(
            "Send the user name and password of the url (http://user:password@host/..., sent as HTTP basic "
            "authentication) over plain http:// to a host that is not a loopback address (serve logs a "
            "warning at start). Default false: refused; use https://."
        ),
    )
    tls: TlsClientConfig = field(
        default_factory=TlsClientConfig,
        metadata=_doc("TLS toward the DNO endpoint (an https:// url; set with http:// = a problem)."),
    )


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = field(default=False, metadata=_doc("Connect to an MQTT broker."))
    host: str = field(default="127.0.0.1", metadata=_doc("Broker host."))
    port: int = field(default=1883, metadata=_doc("Broker port."))
    client_id: str = field(
        default="duisgw", metadata=_doc("MQTT client identifier (persistent session key).")
    )
    username: str = field(default="", metadata=_doc("User name; empty = anonymous."))
    password_file: str = field(
        default="", metadata=_doc("File holding the password: its first line, UTF-8 (empty = refused).")
    )
    tls_enabled: bool = field(default=False, metadata=_doc("Use TLS to the broker."))
    allow_plaintext_credentials: bool = field(
        default=False,
        metadata=_doc(
            "Send the password (password_file) without TLS to a broker host that is not a loopback address "
            "(serve logs a warning at start). Default false: refused; set tls_enabled = true."
        ),
    )
    tls: TlsClientConfig = field(
        default_factory=TlsClientConfig,
        metadata=_doc("TLS toward the broker (set without tls_enabled = true = a problem)."),
    )
    keepalive: int = field(default=30, metadata=_doc("Keep-alive in seconds."))
    session_expiry: int = field(
        default=172800,
        metadata=_doc("MQTT v5 session expiry (s): the broker keeps QoS 1 messages while we are away."),
    )
    reconnect_interval: float = field(default=2.0, metadata=_doc("Seconds between reconnection attempts."))
    observe_topics: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Topic filters whose messages are fed to the observation lane: '#' only as the whole last level, "
            "'+' only as a whole level ($share/{name}/{filter} for a shared subscription)."
        ),
    )
    observe_qos: int = field(
        default=1, metadata=_doc("QoS of the observation subscription (acked after durable record).")
    )
    receive_maximum: int = field(
        default=64,
        metadata=_doc(
            "MQTT v5 Receive Maximum announced to the broker (1..65535): the most QoS 1/2 observations a broker "
            "keeping to MQTT 5.0 flow control sends before the gateway acknowledges one (nothing dropped; "
            "mosquitto 2.0 sends more while it drains a backlog: held and processed, with a warning). QoS 0 "
            "observations are queued while fewer than this many wait; beyond, each is dropped "
            "(duisgw_mqtt_observations_dropped_total)."
        ),
    )
    publish: bool = field(
        default=False, metadata=_doc("Publish forwarded messages to per-destination topics.")
    )
    publish_topic: str = field(
        default="duisgw/dno/{destination}",
        metadata=_doc(
            "Topic template; {destination} is the destination name. A topic name: no '+' or '#', "
            "not starting with '$'."
        ),
    )
    publish_qos: int = field(
        default=1,
        metadata=_doc(
            "QoS of publications: 1 or 2, acknowledged by the broker and judged by the reason code of its "
            "PUBACK (QoS 2: PUBREC); 0 = not acknowledged (delivered once sent)."
        ),
    )
    publish_timeout: float = field(
        default=10.0, metadata=_doc("Seconds to wait for the broker's PUBACK (QoS 2: its PUBREC and PUBCOMP).")
    )


@dataclass(frozen=True)
class PipelineConfig:
    state_dir: str = field(
        default="var/state",
        metadata=_doc(
            "Folder of the reference data's binary forms: guids.bin (the imported GUID list), "
            "inventory.last-good.csv (the last inventory snapshot accepted) and gbcs-keys.idx (the GBCS "
            "certificate index); with state_in_store = false also engine.sqlite3 (messages, decisions, "
            "engine records)."
        ),
    )
    certificates: str = field(
        default="",
        metadata=_doc(
            "SMKI certificates for DUIS XML signatures: a PEM/DER folder or a keystore.json (required); "
            "re-read on SIGHUP or POST /admin/reload."
        ),
    )
    crl_dir: str = field(
        default="",
        metadata=_doc(
            "SMKI revocation lists (Organisation CRL, ARLs; PEM or DER): a folder of *.crl / *.arl / "
            "*.crl.pem files, or one file, read with the certificates (lists inside the certificates folder "
            "are read too). A list is used only when its signature verifies against its issuer's "
            "certificate among the certificates, valid at the list's thisUpdate; a signature by a revoked "
            "certificate is never evidence, nor is one whose list is past its nextUpdate or the expiry of "
            "the CA certificate that signed it (fail-closed; duisgw_smki_crl_stale). Read at "
            "start-up and re-read with the certificates on SIGHUP or POST /admin/reload (a list that cannot "
            "be used never replaces one in force). Empty = only the lists in the certificates folder."
        ),
    )
    trust_expired: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            'Expired DUIS signing certificates accepted anyway (test sets), each as "ISSUER#SERIAL": the '
            "issuer's distinguished name as in the certificate (compared like the signature's X509IssuerName: "
            "attribute order, spacing and case do not matter) and the decimal serial, e.g. "
            '"CN=Z1,OU=07#1234". A bare decimal serial is still accepted but matches a certificate with '
            "that serial from any issuer (serve logs a warning for it)."
        ),
    )
    tolerate_whitespace: bool = field(
        default=False, metadata=_doc("Accept XML signatures broken only by whitespace re-indentation.")
    )
    schema: str = field(
        default="",
        metadata=_doc(
            "Official DUIS XSD to validate every message against (lxml, on the hot path); a schema-invalid "
            "message is never evidence and is flagged. Empty = no schema validation."
        ),
    )
    gbcs_keys: str = field(
        default="",
        metadata=_doc(
            "Folder of GBCS device certificates (<eui16hex>-ds.pem) for device signatures (required); re-read "
            "on SIGHUP or POST /admin/reload (a folder that cannot be read, or unreadable files that would take "
            'away certificates in force, keep the key store in force: duisgw_reference_stale{source="gbcs_keys"}).'
        ),
    )
    guids: str = field(
        default="",
        metadata=_doc(
            "MP102B GUID list (.xlsx/.csv/text); imported once, persisted as state_dir/guids.bin and reused "
            "until the source file, guid_column or guid_sheets change (or a new version imports "
            "differently). A source that cannot be imported when serve starts, or is not there at all, "
            "leaves the last good list imported from it with these settings in force "
            "(duisgw_reference_stale = 1 until a reload succeeds; config check warns of a missing one); "
            "without one serve exits 2. Empty = an empty list."
        ),
    )
    guid_column: str = field(
        default="", metadata=_doc("Header name or column letter of the GUID column; empty = detected.")
    )
    guid_sheets: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Worksheets of a GUID workbook to read, by name (hidden ones too); empty = every visible "
            "worksheet with a GUID column (each sheet read or skipped is logged)."
        ),
    )
    max_rejected_fraction: float = field(
        default=0.01,
        metadata=_doc(
            "Largest share of the non-blank rows of the GUID list or of the inventory that may be rejected "
            "(0.01 = 1 %); a source with more is refused: on reload the data in force stays; at start-up "
            "the last good GUID list or inventory snapshot stands in (see guids, inventory), else serve exits 2. "
            "Rejected rows are logged either way. 1 = no limit."
        ),
    )
    inventory: str = field(
        default="",
        metadata=_doc(
            "Inventory snapshot CSV (esme, comms_hub, mpxn, manufacturer, model); each snapshot accepted is "
            "kept as state_dir/inventory.last-good.csv. A source that cannot be imported when serve starts, "
            "or is not there at all, leaves the last good snapshot taken from it in force "
            "(duisgw_reference_stale = 1 until a reload succeeds; config check warns of a missing one); "
            "without one serve exits 2. Empty = none."
        ),
    )
    synchronous: str = field(
        default="FULL",
        metadata=_doc(
            "SQLite synchronous level of the decision state: FULL or NORMAL. With state_in_store the "
            "shared database runs at the stricter of this and [store] synchronous."
        ),
    )
    state_in_store: bool = field(
        default=True,
        metadata=_doc(
            "Keep the decision state's tables (messages, decisions, engine records) in the transport "
            "store's database ([store] path) instead of state_dir/engine.sqlite3, so that a batch's "
            "decisions, routes and outbox rows commit in ONE transaction (one fsync; no crash window "
            'between decision and outbox). SQLite backend only: with [state] backend = "redis" the '
            "instance's messages and audit stay in state_dir/engine.sqlite3."
        ),
    )
    classify_threads: int = field(
        default=0,
        metadata=_doc("Threads that parse and verify messages; 0 = on the event loop (no thread hand-off)."),
    )
    classify_processes: int = field(
        default=0,
        metadata=_doc(
            "Worker processes that parse and verify messages (spawned at start-up, each builds its own "
            "classifier); calls arriving while the workers are busy go to them together (micro-batching). "
            "0 = in the gateway process (classify_threads applies); N >= 1 replaces classify_threads."
        ),
    )
    max_batch: int = field(
        default=256, metadata=_doc("Most messages decided and committed together (group commit).")
    )
    log_forwards: bool = field(
        default=False,
        metadata=_doc("Log every forward decision at INFO (default: DEBUG; suppress/hold/release are INFO)."),
    )


@dataclass(frozen=True)
class StateConfig:
    backend: str = field(
        default="sqlite",
        metadata=_doc(
            "Where the decision engine's state lives: sqlite (one instance; in the transport store, see "
            "pipeline.state_in_store) or redis (several instances behind one address share activations, holds and idempotency keys; each keeps "
            "its own messages, audit and outbox in state_dir). See docs/SCALE-OUT.md."
        ),
    )
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=_doc(
            "Redis URL (redis://, rediss:// for TLS, unix://) of the shared state (backend = redis); a password "
            "in it (redis://user:password@host, or ?password=) is shown as *** in messages. A password over "
            "redis:// to a host that is not a loopback address is refused: use rediss://, or "
            "allow_plaintext_credentials = true."
        ),
    )
    allow_plaintext_credentials: bool = field(
        default=False,
        metadata=_doc(
            "Send the password of redis_url over plain redis:// (no TLS) to a host that is not a loopback "
            "address (serve logs a warning at start). Default false: refused; use rediss://. A unix:// socket "
            "or a loopback host needs no opt-out."
        ),
    )
    key_prefix: str = field(
        default="duisgw:", metadata=_doc("Prefix of every Redis key (one Redis can serve several gateways).")
    )
    instance: str = field(
        default="", metadata=_doc("This instance's name in the shared decision log; empty = host:pid.")
    )
    lease: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds after which another instance takes over a released hold its decider did not record "
            "(a crash between the Redis commit and the local one)."
        ),
    )
    decision_log: int = field(
        default=1000000, metadata=_doc("Approximate length of the shared decision log stream; 0 = no log.")
    )
    max_retries: int = field(
        default=200,
        metadata=_doc("Compare-and-set attempts per message under contention before it fails (503)."),
    )
    replicas: int = field(
        default=0,
        metadata=_doc(
            "After each batch, WAIT until this many Redis replicas have it (Sentinel); 0 = don't wait."
        ),
    )
    wait_timeout: float = field(default=1.0, metadata=_doc("Seconds the WAIT for replicas may take."))
    export_days: int = field(
        default=92,
        metadata=_doc(
            "Days the shared suppression index keeps a day after its last suppression (duisgw audit export "
            "on any instance lists every instance's suppressions, each once, from it); 0 = no index (export "
            "--local only). About 400 bytes per suppression."
        ),
    )


@dataclass(frozen=True)
class LoggingConfig:
    level: str = field(default="INFO", metadata=_doc("DEBUG, INFO, WARNING, ERROR or CRITICAL."))
    format: str = field(default="json", metadata=_doc("json (one object per line) or text."))


@dataclass(frozen=True)
class ServiceConfig:
    mode: str = field(
        default="pipeline",
        metadata=_doc(
            "pipeline (parse/verify/correlate/decide) or passthrough (record and forward unchanged)."
        ),
    )
    tick_interval: float = field(
        default=1.0, metadata=_doc("Seconds between Processor.tick calls (held-message timers).")
    )
    clock: str = field(
        default="wall",
        metadata=_doc(
            "Gateway clock of the decision engine (hold time-outs, retention): wall (the time each message is "
            "received) or message (event time: the X-DUISGW-Arrival header, else the message's own time; for "
            "demos, tests and replays over HTTP)."
        ),
    )
    arrival_max_skew: float = field(
        default=300.0,
        metadata=_doc(
            "clock = message: seconds an X-DUISGW-Arrival header may be EARLIER than the message's own time "
            "(ResponseDateTime): the clocks of the DSP and of whatever recorded the arrival may disagree a "
            "little, but a message does not arrive before it was sent. Beyond it: 400 bad_arrival_header."
        ),
    )
    arrival_max_delay: float = field(
        default=604800.0,
        metadata=_doc(
            "clock = message: seconds an X-DUISGW-Arrival header may be LATER than the message's own time; "
            "for a message without an own time (a request), the most it may be from the engine clock either "
            "way. Beyond it: 400 bad_arrival_header (the engine clock never goes back: one absurd header would "
            "move it for good). A message without the header takes its own time as its arrival: at most this "
            "far AHEAD of the engine clock once the first message has set it (behind it, the message is late), "
            "else 400 implausible_message_time. Default 7 days: the top of the late-alert histogram, and "
            "longer than the "
            "engine's default retention (2 days + windows), past which a late message is decided afresh "
            "anyway; keep it at least the [engine] retention."
        ),
    )
    server: ServerConfig = field(default_factory=ServerConfig, metadata=_doc("DSP-facing ingress."))
    admin: AdminConfig = field(default_factory=AdminConfig, metadata=_doc("Metrics and health endpoints."))
    store: StoreConfig = field(default_factory=StoreConfig, metadata=_doc("Durable store."))
    outbox: OutboxConfig = field(default_factory=OutboxConfig, metadata=_doc("Delivery to DNOs."))
    mqtt: MqttConfig = field(default_factory=MqttConfig, metadata=_doc("MQTT observation and publication."))
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata=_doc("Logs (stderr)."))
    pipeline: PipelineConfig = field(
        default_factory=PipelineConfig,
        metadata=_doc("Decision pipeline: certificates, GUID list, inventory, state."),
    )
    state: StateConfig = field(
        default_factory=StateConfig,
        metadata=_doc("Decision state backend: SQLite (one instance) or Redis (scale-out)."),
    )
    destinations: tuple[DestinationConfig, ...] = field(
        default=(), metadata=_doc("DNO destinations ([[destinations]] array of tables).")
    )
    engine: Mapping[str, Any] = field(
        default_factory=dict,
        metadata=_doc(
            "Decision-engine options (scope, window_before, window_after, hold_limit, policies ...): "
            "docs/ENGINE.md section 12 lists every one with its default. Checked with the engine's own "
            "rules by config check and serve (an unknown key is a problem)."
        ),
    )

    def destination(self, user: str) -> DestinationConfig | None:
        """The destination named by ``user``: its name, or its DCC User ID in any EUI-64 spelling."""
        for d in self.destinations:
            if d.name == user:
                return d
        try:
            eui = parse_eui(user)
        except EUIError:
            return None
        for d in self.destinations:
            if d.user and parse_eui(d.user) == eui:
                return d
        return None


# --------------------------------------------------------------------------------------------- loading


def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is str:
        return "string"
    if tp is bool:
        return "boolean"
    if tp is int:
        return "integer"
    if tp is float:
        return "number"
    if typing.get_origin(tp) is tuple:
        return "array"
    return "table"


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a table")
            return tp()
        return _build(tp, value, path, problems)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{path}: expected an array")
            return ()
        return tuple(_convert(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a table")
            return {}
        return types.MappingProxyType(dict(value))
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected a boolean, got {value!r}")
            return False
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
            return 0
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{path}: expected a number, got {value!r}")
            return 0.0
        try:
            number = float(value)
        except OverflowError:  # a TOML integer beyond a float's range
            number = math.inf
        if not math.isfinite(number):
            problems.append(f"{path}: must be a finite number, got {value!r}")
            return 0.0
        return number
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
            return ""
        return value
    problems.append(f"{path}: unsupported option type")  # pragma: no cover - only if a field is mistyped
    return value


def _build(cls: type[Any], data: Mapping[str, Any], path: str, problems: list[str]) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            problems.append(f"{path + '.' if path else ''}{key}: unknown option")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(
                data[f.name], hints[f.name], f"{path + '.' if path else ''}{f.name}", problems
            )
    return cls(**kwargs)


def _need(cond: bool, problem: str, problems: list[str]) -> None:
    if not cond:
        problems.append(problem)


def read_password_file(path: Path) -> str:
    """The password a password file holds, as the MQTT link sends it: the first line, UTF-8. ValueError
    (the reason) for a file the link could not use: not UTF-8, empty, or a blank first line (a password
    file configured is a password meant: an empty one would be sent as the password)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if not text:
        raise ValueError("empty")
    first = text.splitlines()[0]
    if not first:
        raise ValueError("first line is empty")
    return first


#: the admin listener's paths served without the bearer token (Prometheus and probes)
ADMIN_OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
#: the shortest admin token accepted (``openssl rand -hex 32`` gives 64)
ADMIN_TOKEN_MIN_CHARS = 16


def read_token_file(path: Path) -> str:
    """The bearer token a token file holds, read as :func:`read_password_file` reads a password (the
    first line, UTF-8; ValueError for a file not UTF-8, empty or with a blank first line), and ValueError
    too for a token that is not at least :data:`ADMIN_TOKEN_MIN_CHARS` visible ASCII characters without
    spaces: it travels in an HTTP header, where spaces at its ends would be lost and other characters
    mangled, and a short one is guessed."""
    token = read_password_file(path)
    if not all("!" <= c <= "~" for c in token):
        raise ValueError("the token must be visible ASCII characters without spaces")
    if len(token) < ADMIN_TOKEN_MIN_CHARS:
        raise ValueError(f"the token is shorter than {ADMIN_TOKEN_MIN_CHARS} characters")
    return token


def read_admin_token(admin: AdminConfig, base_dir: Path | None = None) -> str | None:
    """The admin listener's bearer token (``None`` when ``token_file`` is not set), its path resolved
    against ``base_dir``; :class:`ConfigError` when the file cannot be used (what config check reports)."""
    if not admin.token_file:
        return None
    p = Path(admin.token_file)
    if base_dir is not None and not p.is_absolute():
        p = base_dir / p
    try:
        return read_token_file(p)
    except ValueError as exc:
        raise ConfigError([f"admin.token_file: {exc}: {admin.token_file}"]) from None
    except OSError as exc:
        raise ConfigError(
            [f"admin.token_file: unreadable ({exc.strerror or exc}): {admin.token_file}"]
        ) from None


def _check_password_file(
    path: str,
    where: str,
    base: Path | None,
    problems: list[str],
    read: Callable[[Path], str] = read_password_file,
) -> None:
    """A password (or token) file must exist and be usable as it is read (``read``, by default
    :func:`read_password_file`)."""
    p = _check_file(path, where, base, problems)
    if p is None:
        return
    try:
        read(p)
    except ValueError as exc:
        problems.append(f"{where}: {exc}: {path}")
    except OSError as exc:
        problems.append(f"{where}: unreadable ({exc.strerror or exc}): {path}")


def _check_file(path: str, where: str, base: Path | None, problems: list[str]) -> Path | None:
    """The file ``path`` names (relative to ``base``), or None: not set, or not found (a problem)."""
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute() and base is not None:
        p = base / p
    if not p.is_file():
        problems.append(f"{where}: file not found: {path}")
        return None
    return p


def _check_tls_client(t: TlsClientConfig, where: str, base: Path | None, problems: list[str]) -> None:
    _need(
        t.min_version in TLS_VERSIONS,
        f"{where}.min_version: must be one of {', '.join(TLS_VERSIONS)}",
        problems,
    )
    _need(bool(t.cert_file) == bool(t.key_file), f"{where}: cert_file and key_file go together", problems)
    for name in ("ca_file", "cert_file", "key_file", "crl_file"):
        _check_file(getattr(t, name), f"{where}.{name}", base, problems)
    _check_tls_material(t, where, base, problems)
    _check_tls_crl(t, where, base, problems)


def _check_tls_server(t: TlsServerConfig, where: str, base: Path | None, problems: list[str]) -> None:
    """A listener's TLS section (``[server.tls]``, ``[admin.tls]``): its settings, its files, and its
    context built as serve builds it."""
    _need(
        t.min_version in TLS_VERSIONS,
        f"{where}.min_version: must be one of {', '.join(TLS_VERSIONS)}",
        problems,
    )
    _need(bool(t.cert_file) == bool(t.key_file), f"{where}: cert_file and key_file go together", problems)
    _need(
        not t.client_ca_file or bool(t.cert_file),
        f"{where}.client_ca_file: mutual TLS needs cert_file/key_file",
        problems,
    )
    _need(
        not t.crl_file or bool(t.client_ca_file),
        f"{where}.crl_file: set, but client_ca_file is not (no client certificate is checked, so none against "
        "the revocation lists); set client_ca_file (mutual TLS)",
        problems,
    )
    for name in ("cert_file", "key_file", "client_ca_file", "crl_file"):
        _check_file(getattr(t, name), f"{where}.{name}", base, problems)
    _check_tls_material(t, where, base, problems)
    _check_tls_crl(t, where, base, problems)


def _check_tls_material(
    t: TlsServerConfig | TlsClientConfig, where: str, base: Path | None, problems: list[str]
) -> None:
    """The TLS context built as ``duisgw serve`` builds it, once the section's own checks passed: a
    certificate not matching its key, a file holding no certificate or an encrypted key is a problem
    here, not an ``ssl`` error half-way through the start."""
    files = (t.cert_file, t.client_ca_file if isinstance(t, TlsServerConfig) else t.ca_file)
    if not any(files) or any(p.startswith((f"{where}.", f"{where}:")) for p in problems):
        return  # nothing of the operator's to load (the system CAs), or already reported
    from gateway.service.tls import tls_problem  # (tls imports this module)

    # (the revocation lists are judged on their own, with a problem naming crl_file: _check_tls_crl)
    if (problem := tls_problem(dataclasses.replace(t, crl_file=""), base_dir=base)) is not None:
        problems.append(f"{where}: unusable certificate, key or CA file ({problem})")


def _check_tls_crl(
    t: TlsServerConfig | TlsClientConfig, where: str, base: Path | None, problems: list[str]
) -> None:
    """The section's ``crl_file`` read and judged as the handshake would use it, once the section's
    other checks passed: revocation lists only, each signed by a certificate of the section's CA file,
    none past its ``nextUpdate`` (OpenSSL would refuse every peer that list covers)."""
    if not t.crl_file or any(p.startswith((f"{where}.", f"{where}:")) for p in problems):
        return
    from gateway.service.tls import crl_problem  # (tls imports this module)

    now = dt.datetime.now(dt.UTC)
    if (problem := crl_problem(t, base_dir=base, now=now)) is not None:
        problems.append(f"{where}.crl_file: unusable revocation list file ({problem})")


def _port_ok(port: int) -> bool:
    return 0 <= port <= 65535


def _split_url(url: str) -> tuple[SplitResult | None, str | None]:
    """``urlsplit(url)`` and the problem with it (an unparsable URL is a problem, not an exception)."""
    try:
        return urlsplit(url), None
    except ValueError as exc:
        return None, f"not a valid URL ({exc})"


def _url_port_problem(parts: SplitResult, *, connect: bool = False) -> str | None:
    """The problem with a URL's port (``connect``: the port is dialled, so 0 is a problem too)."""
    try:
        port = parts.port
    except ValueError as exc:  # "Port out of range 0-65535", "Port could not be cast to integer value as ..."
        return f"bad port ({exc})"
    if connect and port == 0:
        return "bad port (must be 1..65535)"
    return None


def http_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a destination's endpoint (``None`` when it can)."""
    parts, problem = _split_url(url)
    if parts is None:
        return problem
    scheme = url.split(":", 1)[0]
    if scheme not in ("http", "https"):  # lower case: the TLS settings apply to an ``https:`` prefix
        return "an http(s) URL (http:// or https://, lower case)"
    if not parts.hostname:
        return "an http(s) URL with a host"
    if any(c.isspace() or not c.isprintable() for c in parts.hostname):
        return f"host {parts.hostname!r}: no spaces or control characters"
    if (problem := _url_port_problem(parts, connect=True)) is not None:
        return problem
    try:
        URL(url)  # what the HTTP client (aiohttp) parses
    except (ValueError, TypeError) as exc:
        return f"not a valid URL ({exc})"
    return None


MQTT_TOPIC_MAX_BYTES = 65535  # an MQTT UTF-8 string's length prefix is two bytes


def _mqtt_topic_problem(topic: str, *, is_filter: bool) -> str | None:
    """Why ``topic`` is not a valid MQTT topic filter (``is_filter``) or topic name (MQTT 5.0 §4.7)."""
    if not topic:
        return "empty topic"
    if "\x00" in topic:
        return "NUL character in topic"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in topic):
        return "control character in topic"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "not encodable as UTF-8"
    if size > MQTT_TOPIC_MAX_BYTES:
        return f"longer than {MQTT_TOPIC_MAX_BYTES} bytes ({size})"
    if not is_filter:
        if "+" in topic or "#" in topic:
            return "a topic name cannot contain the wildcards '+' or '#'"
        if topic.startswith("$"):
            return "a topic name cannot start with '$' (reserved for the broker)"
        return None
    if topic.startswith("$share/"):  # shared subscription: $share/{ShareName}/{filter}
        _, name, *rest = topic.split("/", 2)
        if not name or "+" in name or "#" in name or not rest or not rest[0]:
            return "a shared subscription is $share/{name}/{filter} (name without '+' or '#')"
        topic = rest[0]
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one (e.g. a/b/#)"
        if "+" in level and level != "+":
            return "'+' must be a whole level (e.g. a/+/c)"
    return None


_ANY_HOST = ("", "0.0.0.0", "::", "*")
#: the largest arrival bound accepted (seconds): 100 years, far beyond any plausible delay, well inside
#: what a date-time can add
_ARRIVAL_BOUND_MAX = 100 * 366 * 86400.0


def _same_listen_address(host_a: str, port_a: int, host_b: str, port_b: int) -> bool:
    """Whether two listeners would collide: one fixed port on one host (or a wildcard address)."""
    if port_a != port_b or port_a == 0:
        return False
    return host_a == host_b or host_a in _ANY_HOST or host_b in _ANY_HOST


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a listener's address, a peer's host) is a loopback address: 127.0.0.0/8, ::1
    (also as an IPv4-mapped address) or the name ``localhost``. The wildcard addresses ("", 0.0.0.0, ::)
    and every other name are not: what a name resolves to is not known here."""
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _plaintext_url_credentials(d: DestinationConfig) -> str | None:
    """The host a destination's url would send its user name and password to in clear: an http:// url
    with credentials (aiohttp sends them as basic authentication) to a host that is not a loopback
    address; else ``None``."""
    parts, _problem = _split_url(d.url)
    if parts is None or d.url.split(":", 1)[0] != "http" or not (parts.username or parts.password):
        return None
    host = parts.hostname or ""
    return None if is_loopback_host(host) else host


def _admin_token_in_clear(a: AdminConfig) -> bool:
    """Whether the admin listener's bearer token would cross the network in clear: a token on a plain-HTTP
    listener (no ``[admin.tls]`` certificate) on a host that is not a loopback address."""
    return a.enabled and bool(a.token_file) and not a.tls.cert_file and not is_loopback_host(a.host)


def _plaintext_redis_password(st: StateConfig) -> str | None:
    """The host the shared state's Redis password would be sent to in clear: a ``redis://`` url (not
    ``rediss://``, not ``unix://``) with a password, in its user information or as redis-py's
    ``?password=`` query parameter, to a host that is not a loopback address (redis-py connects to
    ``localhost`` when the url names no host); else ``None`` (also when backend is not redis: the url
    is not used)."""
    if st.backend != "redis":
        return None
    parts, _problem = _split_url(st.redis_url)
    if parts is None or parts.scheme != "redis":
        return None
    query = parse_qs(parts.query)
    if not (parts.password or any(query.get("password", []))):
        return None
    host = parts.hostname or next((h for h in query.get("host", []) if h), "localhost")
    return None if is_loopback_host(host) else host


def transport_security_problems(cfg: ServiceConfig) -> list[str]:
    """What would cross the network without protection, each as ``path: CODE: detail``, unless its
    section opts out: an admin listener on a host that is not a loopback address without a token
    (``unauthenticated_admin``), a plain-HTTP ingress on such a host (``plain_http_ingress``), an MQTT
    password without TLS or a destination url's credentials over http:// to such a host
    (``plaintext_credentials``). ``duisgw config check`` lists them; the service refuses to start on them."""
    out: list[str] = []
    a = cfg.admin
    if (
        a.enabled
        and not a.token_file
        and not a.tls.client_ca_file
        and not a.allow_unauthenticated
        and not is_loopback_host(a.host)
    ):
        out.append(
            f"admin.host: unauthenticated_admin: {a.host!r} is not a loopback address and neither "
            "admin.token_file nor [admin.tls] client_ca_file (mutual TLS) is set: the control endpoints "
            "(/admin/reload, /admin/state, /admin/tick) would be open to whoever reaches the port; set "
            "token_file (with [admin.tls]), client_ca_file, or allow_unauthenticated = true"
        )
    if _admin_token_in_clear(a) and not a.allow_plaintext_credentials:
        out.append(
            f"admin.token_file: plaintext_credentials: the bearer token would cross the network in clear: "
            f"{a.host!r} is not a loopback address and [admin.tls] has no certificate; set [admin.tls] "
            "cert_file and key_file, or allow_plaintext_credentials = true"
        )
    s = cfg.server
    if not s.tls.cert_file and not s.allow_plain_http and not is_loopback_host(s.host):
        out.append(
            f"server.host: plain_http_ingress: {s.host!r} is not a loopback address and [server.tls] has no "
            "certificate: the DUIS traffic would cross the network in clear; set [server.tls] cert_file and "
            "key_file, or allow_plain_http = true (a TLS-terminating proxy in front)"
        )
    m = cfg.mqtt
    if (
        m.enabled
        and m.password_file
        and not m.tls_enabled
        and not m.allow_plaintext_credentials
        and not is_loopback_host(m.host)
    ):
        out.append(
            f"mqtt.password_file: plaintext_credentials: the password would be sent without TLS to {m.host!r}, "
            "not a loopback address; set tls_enabled = true, or allow_plaintext_credentials = true"
        )
    for i, d in enumerate(cfg.destinations):
        if not d.allow_plaintext_credentials and (host := _plaintext_url_credentials(d)) is not None:
            out.append(
                f"destinations[{i}].url: plaintext_credentials: the url's user name and password would be sent "
                f"(basic authentication) over plain http:// to {host!r}, not a loopback address; use https://, "
                "or allow_plaintext_credentials = true"
            )
    st = cfg.state
    if not st.allow_plaintext_credentials and (host := _plaintext_redis_password(st)) is not None:
        from gateway.store.redis_state import redacted_url  # (redis: only when there is something to say)

        out.append(
            f"state.redis_url: plaintext_credentials: the password of {redacted_url(st.redis_url)} would be sent "
            f"without TLS to {host!r}, not a loopback address; use rediss://, or allow_plaintext_credentials = true"
        )
    return out


def transport_security_warnings(cfg: ServiceConfig) -> list[str]:
    """What serve logs at WARNING when it starts: each opt-out of :func:`transport_security_problems` in
    force (none with TLS and a token, or mutual TLS, on the admin listener)."""
    out: list[str] = []
    a = cfg.admin
    if a.enabled and not is_loopback_host(a.host):
        if not a.token_file and not a.tls.client_ca_file and a.allow_unauthenticated:
            out.append(
                f"[admin] allow_unauthenticated: the control endpoints (/admin/reload, /admin/state, /admin/tick) "
                f"on {a.host} are open to whoever reaches the port"
            )
        elif _admin_token_in_clear(a) and a.allow_plaintext_credentials:
            out.append(
                f"[admin] allow_plaintext_credentials: the admin listener on {a.host} is plain HTTP: its bearer "
                "token crosses the network in clear"
            )
    s = cfg.server
    if not s.tls.cert_file and s.allow_plain_http and not is_loopback_host(s.host):
        out.append(f"[server] allow_plain_http: the DSP-facing ingress on {s.host} is plain HTTP")
    m = cfg.mqtt
    if (
        m.enabled
        and m.password_file
        and not m.tls_enabled
        and m.allow_plaintext_credentials
        and not is_loopback_host(m.host)
    ):
        out.append(f"[mqtt] allow_plaintext_credentials: the MQTT password is sent without TLS to {m.host}")
    for d in cfg.destinations:
        if d.allow_plaintext_credentials and (host := _plaintext_url_credentials(d)) is not None:
            out.append(
                f"[[destinations]] {d.name}: allow_plaintext_credentials: the url's credentials are sent over "
                f"plain http:// to {host}"
            )
    st = cfg.state
    if st.allow_plaintext_credentials and (host := _plaintext_redis_password(st)) is not None:
        out.append(f"[state] allow_plaintext_credentials: the Redis password is sent without TLS to {host}")
    return out


def _validate(cfg: ServiceConfig, base: Path | None, problems: list[str]) -> None:
    _need(cfg.mode in MODES, f"mode: must be one of {', '.join(MODES)}", problems)
    _need(cfg.tick_interval > 0, "tick_interval: must be > 0", problems)
    _need(cfg.clock in CLOCKS, f"clock: must be one of {', '.join(CLOCKS)}", problems)
    _need(0 <= cfg.arrival_max_skew <= _ARRIVAL_BOUND_MAX, f"arrival_max_skew: must be 0..{_ARRIVAL_BOUND_MAX:g} seconds",
          problems)  # fmt: skip
    _need(0 <= cfg.arrival_max_delay <= _ARRIVAL_BOUND_MAX,
          f"arrival_max_delay: must be 0..{_ARRIVAL_BOUND_MAX:g} seconds", problems)  # fmt: skip
    _validate_pipeline(cfg, base, problems)
    s = cfg.server
    _need(_port_ok(s.port), "server.port: must be 0..65535", problems)
    _need(s.max_body_bytes >= 1024, "server.max_body_bytes: must be >= 1024", problems)
    _need(bool(s.content_types), "server.content_types: at least one content type", problems)
    for i, ct in enumerate(s.content_types):
        _need(
            "/" in ct and ct == ct.strip().lower() and ";" not in ct,
            f"server.content_types[{i}]: a lower-case media type without parameters",
            problems,
        )
    _need(s.shutdown_timeout >= 0, "server.shutdown_timeout: must be >= 0", problems)
    _need(s.keepalive_timeout > 0, "server.keepalive_timeout: must be > 0", problems)
    _need(s.read_timeout > 0, "server.read_timeout: must be > 0", problems)
    _need(s.header_timeout > 0, "server.header_timeout: must be > 0", problems)
    _need(s.ingress_processes >= 0, "server.ingress_processes: must be >= 0", problems)
    _need(s.ingress_hang_timeout > 0, "server.ingress_hang_timeout: must be > 0", problems)
    _need(
        s.ingress_processes == 0 or cfg.admin.enabled,
        "server.ingress_processes: needs admin.enabled (the workers serve only the DUIS routes)",
        problems,
    )
    _check_tls_server(s.tls, "server.tls", base, problems)
    _need(_port_ok(cfg.admin.port), "admin.port: must be 0..65535", problems)
    if cfg.admin.enabled:
        _check_tls_server(cfg.admin.tls, "admin.tls", base, problems)
    else:
        _need(
            cfg.admin.tls == TlsServerConfig(),
            "admin.tls: set, but admin.enabled is false (there is no admin listener; /metrics and the probes "
            "are served on the DSP-facing listener, with [server.tls])",
            problems,
        )
    _need(
        not _same_listen_address(cfg.server.host, cfg.server.port, cfg.admin.host, cfg.admin.port)
        or not cfg.admin.enabled,
        f"admin.port: {cfg.admin.port} is also server.port on the same host (the admin listener needs a port "
        "of its own)",
        problems,
    )
    _validate_store(cfg, problems)
    o = cfg.outbox
    _need(o.max_attempts >= 0, "outbox.max_attempts: must be >= 0", problems)
    _need(o.backoff_initial > 0, "outbox.backoff_initial: must be > 0", problems)
    _need(o.backoff_multiplier >= 1, "outbox.backoff_multiplier: must be >= 1", problems)
    _need(o.backoff_max >= o.backoff_initial, "outbox.backoff_max: must be >= backoff_initial", problems)
    _need(0 <= o.jitter <= 1, "outbox.jitter: must be within 0..1", problems)
    _need(o.request_timeout > 0, "outbox.request_timeout: must be > 0", problems)
    _need(o.prefetch >= 1, "outbox.prefetch: must be >= 1", problems)
    _need(1 <= o.window <= 256, "outbox.window: must be in 1..256", problems)
    _need(o.poll_interval > 0, "outbox.poll_interval: must be > 0", problems)
    _need(o.retention_seconds >= 0, "outbox.retention_seconds: must be >= 0", problems)
    _need(o.drain_timeout >= 0, "outbox.drain_timeout: must be >= 0", problems)
    seen_names: set[str] = set()
    seen_users: set[int] = set()
    for i, d in enumerate(cfg.destinations):
        where = f"destinations[{i}]"
        if not d.name:
            problems.append(f"{where}.name: required")
        elif not all(c.isalnum() or c in "-_." for c in d.name):
            problems.append(f"{where}.name: letters, digits, '-', '_' and '.' only")
        elif d.name in seen_names:
            problems.append(f"{where}.name: duplicate destination {d.name!r}")
        seen_names.add(d.name)
        if d.user:
            try:
                eui = parse_eui(d.user)
            except EUIError as exc:
                problems.append(f"{where}.user: {exc}")
            else:
                if eui in seen_users:
                    problems.append(f"{where}.user: duplicate DCC User ID {format_eui(eui)}")
                seen_users.add(eui)
        if d.url and (problem := http_url_problem(d.url)) is not None:
            problems.append(f"{where}.url: {problem}")
        _need(
            bool(d.url) or (cfg.mqtt.enabled and cfg.mqtt.publish and d.mqtt),
            f"{where}: no url and no MQTT publication: forwarded messages would go nowhere",
            problems,
        )
        _check_tls_client(d.tls, f"{where}.tls", base, problems)
        _need(
            not d.url.startswith("http:") or d.tls == TlsClientConfig(),
            f"{where}.tls: set, but url is http:// (plain HTTP: no TLS, no client certificate); use https://",
            problems,
        )
    m = cfg.mqtt
    _need(_port_ok(m.port), "mqtt.port: must be 0..65535", problems)
    _need(m.keepalive >= 1, "mqtt.keepalive: must be >= 1", problems)
    _need(m.session_expiry >= 0, "mqtt.session_expiry: must be >= 0", problems)
    _need(m.reconnect_interval > 0, "mqtt.reconnect_interval: must be > 0", problems)
    _need(m.observe_qos in (0, 1, 2), "mqtt.observe_qos: 0, 1 or 2", problems)
    _need(1 <= m.receive_maximum <= 65535, "mqtt.receive_maximum: must be within 1..65535", problems)
    _need(m.publish_qos in (0, 1, 2), "mqtt.publish_qos: 0, 1 or 2", problems)
    _need(m.publish_timeout > 0, "mqtt.publish_timeout: must be > 0", problems)
    if "{destination}" not in m.publish_topic:
        problems.append("mqtt.publish_topic: must contain {destination}")
    else:  # the topics published to: destination names add no wildcard or level, only length
        longest = max((d.name for d in cfg.destinations), key=len, default="dno")
        topic = m.publish_topic.replace("{destination}", longest or "dno")
        if (problem := _mqtt_topic_problem(topic, is_filter=False)) is not None:
            problems.append(f"mqtt.publish_topic: {problem} (expanded: {topic[:80]!r})")
    for i, topic in enumerate(m.observe_topics):
        if (problem := _mqtt_topic_problem(topic, is_filter=True)) is not None:
            problems.append(f"mqtt.observe_topics[{i}]: {problem}: {topic[:80]!r}")
    _check_password_file(m.password_file, "mqtt.password_file", base, problems)
    if m.tls_enabled:
        _check_tls_client(m.tls, "mqtt.tls", base, problems)
    _need(
        not m.enabled or m.tls_enabled or m.tls == TlsClientConfig(),
        "mqtt.tls: set, but mqtt.tls_enabled is false (plain TCP: no TLS, no client certificate, the password "
        "in clear); set tls_enabled = true",
        problems,
    )
    _need(cfg.logging.level.upper() in LOG_LEVELS, f"logging.level: one of {', '.join(LOG_LEVELS)}", problems)
    _need(cfg.logging.format in ("json", "text"), "logging.format: json or text", problems)
    _check_password_file(cfg.admin.token_file, "admin.token_file", base, problems, read_token_file)
    problems.extend(transport_security_problems(cfg))


def _check_dir(path: str, where: str, base: Path | None, problems: list[str]) -> None:
    if not path:
        return
    p = Path(path)
    if not p.is_absolute() and base is not None:
        p = base / p
    if not p.is_dir():
        problems.append(f"{where}: folder not found: {path}")


def _validate_pipeline(cfg: ServiceConfig, base: Path | None, problems: list[str]) -> None:
    pl = cfg.pipeline
    _validate_state_location(cfg, problems)
    _need(pl.classify_threads >= 0, "pipeline.classify_threads: must be >= 0", problems)
    _need(pl.classify_processes >= 0, "pipeline.classify_processes: must be >= 0", problems)
    _need(pl.max_batch >= 1, "pipeline.max_batch: must be >= 1", problems)
    _need(
        0 <= pl.max_rejected_fraction <= 1,
        "pipeline.max_rejected_fraction: must be between 0 and 1",
        problems,
    )
    _need(
        all(s.strip() for s in pl.guid_sheets),
        "pipeline.guid_sheets: sheet names must not be empty",
        problems,
    )
    from gateway.smki import BadTrustEntry, parse_trust_entry  # (cryptography: only when validating)

    for i, entry in enumerate(pl.trust_expired):
        try:
            parse_trust_entry(entry)
        except BadTrustEntry as exc:
            problems.append(f"pipeline.trust_expired[{i}]: {exc.message}")
    # (``duisgw serve`` also requires certificates and gbcs_keys in pipeline mode: see
    # gateway.service.serve.pipeline_problems; the default file leaves them empty)
    if pl.certificates:
        p = Path(pl.certificates)
        full = p if p.is_absolute() or base is None else base / p
        if full.is_dir():
            pass
        else:
            _check_file(pl.certificates, "pipeline.certificates", base, problems)
    if pl.crl_dir:
        p = Path(pl.crl_dir)
        full = p if p.is_absolute() or base is None else base / p
        if not (full.is_dir() or full.is_file()):
            problems.append(f"pipeline.crl_dir: no such folder or file: {pl.crl_dir}")
    _check_dir(pl.gbcs_keys, "pipeline.gbcs_keys", base, problems)
    # (a guids or inventory source that is not there is judged by serve's validator,
    # gateway.service.serve.reference_source_checks: its last good form may stand in at start-up)
    _validate_state(cfg, problems)


def _validate_store(cfg: ServiceConfig, problems: list[str]) -> None:
    """``[store]``: the transport store (and, with ``state_in_store``, the decision state's database)."""
    st = cfg.store
    _need(bool(st.path), "store.path: required", problems)
    _need(st.synchronous in ("FULL", "NORMAL"), "store.synchronous: FULL or NORMAL", problems)
    _need(st.busy_timeout >= 0, "store.busy_timeout: must be >= 0", problems)
    _need(st.max_batch >= 1, "store.max_batch: must be >= 1", problems)
    _need(
        st.observations_retention_seconds >= 0, "store.observations_retention_seconds: must be >= 0", problems
    )
    _need(st.rejects_retention_seconds >= 0, "store.rejects_retention_seconds: must be >= 0", problems)


def _validate_state_location(cfg: ServiceConfig, problems: list[str]) -> None:
    """``[pipeline] state_dir`` and ``synchronous``: where and how the decision state is kept."""
    pl = cfg.pipeline
    _need(bool(pl.state_dir), "pipeline.state_dir: required", problems)
    _need(pl.synchronous in ("FULL", "NORMAL"), "pipeline.synchronous: FULL or NORMAL", problems)


def _validate_state(cfg: ServiceConfig, problems: list[str]) -> None:
    """``[state]``: the decision state's backend (SQLite, or Redis shared by instances)."""
    st = cfg.state
    _need(
        st.backend in STATE_BACKENDS, f"state.backend: must be one of {', '.join(STATE_BACKENDS)}", problems
    )
    parts, problem = _split_url(st.redis_url)
    if parts is None:
        problems.append(f"state.redis_url: {problem}")
    elif parts.scheme not in ("redis", "rediss", "unix"):
        problems.append("state.redis_url: a redis://, rediss:// or unix:// URL")
    elif (problem := _url_port_problem(parts, connect=True)) is not None:
        problems.append(f"state.redis_url: {problem}")
    _need(
        not cfg.server.reuse_port or st.backend == "redis" or cfg.mode != "pipeline",
        "server.reuse_port: instances sharing a port must share their decision state (state.backend = redis)",
        problems,
    )
    _need(bool(st.key_prefix), "state.key_prefix: required", problems)
    _need(st.lease > 0, "state.lease: must be > 0", problems)
    _need(st.decision_log >= 0, "state.decision_log: must be >= 0", problems)
    _need(st.max_retries >= 1, "state.max_retries: must be >= 1", problems)
    _need(st.replicas >= 0, "state.replicas: must be >= 0", problems)
    _need(st.wait_timeout > 0, "state.wait_timeout: must be > 0", problems)
    _need(st.export_days >= 0, "state.export_days: must be >= 0", problems)


def _validate_state_only(cfg: ServiceConfig, problems: list[str]) -> None:
    """The rules on the options that say where the state is and how it is shaped (``config_from_mapping``'s
    ``state_only``): what a reader of the state (``duisgw audit``) needs, without the files the service reads."""
    _need(cfg.mode in MODES, f"mode: must be one of {', '.join(MODES)}", problems)
    _validate_store(cfg, problems)
    _validate_state_location(cfg, problems)
    _validate_state(cfg, problems)


def _option_path(problem: str) -> str:
    """The option a ``path: reason`` problem is about."""
    return problem.split(":", 1)[0]


def _inside_any(path: str, flagged: set[str]) -> bool:
    """Whether ``path`` is one of ``flagged`` or an option inside one of them (``a.b`` / ``a[0]`` in ``a``)."""
    return any(path == f or path.startswith((f + ".", f + "[")) for f in flagged)


def config_from_mapping(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    engine_validator: EngineValidator | None = None,
    service_validator: ServiceValidator | None = None,
    state_only: bool = False,
) -> ServiceConfig:
    """Build and validate a :class:`ServiceConfig` from parsed TOML; raises :class:`ConfigError`.

    Relative file paths are resolved against ``base_dir`` (the config file's folder) for checks.
    ``service_validator`` adds the rules of a caller (``duisgw serve``'s pipeline requirements), listed
    with the others. ``state_only``: of the cross-field rules only those on where the state is and how it is
    shaped (``[store]``, ``[pipeline] state_dir``, ``[state]``, ``mode``; the options' types and names are
    checked all the same): none of the files the service reads (TLS material, certificates, keys, reference
    lists, tokens) is opened — for a reader of the state, ``duisgw audit``.
    """
    problems: list[str] = []
    cfg: ServiceConfig = _build(ServiceConfig, data, "", problems)
    # cross-field rules too, except on options already reported and the options inside a table already
    # reported (they hold placeholder values); matched on whole option paths, so that ``s`` (unknown)
    # hides nothing of ``server``
    flagged = {_option_path(p) for p in problems}
    more: list[str] = []
    if state_only:
        _validate_state_only(cfg, more)
    else:
        _validate(cfg, base_dir, more)
    if service_validator is not None:
        more.extend(service_validator(cfg))
    problems.extend(p for p in more if not _inside_any(_option_path(p), flagged))
    if engine_validator is not None:
        problems.extend(f"engine.{p}" for p in engine_validator(cfg.engine))
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(
    path: str | Path,
    *,
    engine_validator: EngineValidator | None = None,
    service_validator: ServiceValidator | None = None,
    state_only: bool = False,
) -> ServiceConfig:
    """Read and validate a TOML config file; raises :class:`ConfigError` (every problem listed);
    ``state_only``: see :func:`config_from_mapping`."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read ({exc.strerror or exc})"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML ({exc})"]) from None
    return config_from_mapping(
        data,
        base_dir=p.resolve().parent,
        engine_validator=engine_validator,
        service_validator=service_validator,
        state_only=state_only,
    )


def check_config(
    path: str | Path,
    *,
    engine_validator: EngineValidator | None = None,
    service_validator: ServiceValidator | None = None,
) -> list[str]:
    """Every problem of a config file (empty when it is usable)."""
    try:
        load_config(path, engine_validator=engine_validator, service_validator=service_validator)
    except ConfigError as exc:
        return exc.problems
    return []


# --------------------------------------------------------------------------------------------- rendering


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r}")  # pragma: no cover


def _render_table(obj: Any, header: str, out: list[str], prefix: str = "", *, array: bool = False) -> None:
    scalars: list[str] = []
    tables: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        elif f.name in ("destinations", "engine"):
            continue
        else:
            for line in str(f.metadata.get("doc", "")).splitlines():
                scalars.append(f"{prefix}# {line}")
            scalars.append(f"{prefix}{f.name} = {_toml_value(value)}")
    if header:
        out.append(f"{prefix}[[{header}]]" if array else f"{prefix}[{header}]")
    out.extend(scalars)
    for name, value in tables:
        out.append("")
        _render_table(value, f"{header}.{name}" if header else name, out, prefix)


def render_default_toml() -> str:
    """A complete config file with every option at its default, each with its documentation."""
    out = [
        "# duisgw service configuration (TOML). Every option is shown at its default.",
        "# Check a file with: duisgw config check FILE (what duisgw serve checks before it starts).",
        "# In pipeline mode (the default) [pipeline] certificates and gbcs_keys are required.",
        "",
    ]
    _render_table(ServiceConfig(), "", out)
    out += [
        "",
        "# DNO destinations: one [[destinations]] table each. Example (uncomment and edit):",
    ]
    example = DestinationConfig(
        name="dno-a", user="90-B3-D5-1F-30-02-00-00", url="https://dno-a.example:8443/duis"
    )
    _render_table(example, "destinations", out, prefix="# ", array=True)
    out += [
        "",
        "# Decision-engine options, none set: each at its default (docs/ENGINE.md section 12 lists them).",
        "[engine]",
        "",
    ]
    return "\n".join(out)


def _md_rows(cls: type[Any], prefix: str, rows: list[str], sections: list[tuple[str, type[Any]]]) -> None:
    hints = _hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = getattr(default, f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            sections.append((f"{prefix}{f.name}", tp))
            continue
        if f.name == "destinations":
            sections.append(("destinations", DestinationConfig))
            continue
        shown = "{}" if f.name == "engine" else _toml_value(value)
        doc = str(f.metadata.get("doc", "")).replace("|", "\\|")
        rows.append(f"| `{f.name}` | {_type_name(tp)} | `{shown}` | {doc} |")


def render_markdown() -> str:
    """The option reference (docs/CONFIG.md body), generated from the dataclasses."""
    out = [
        "# duisgw service configuration",
        "",
        "One TOML file, read with `tomllib`. Every option, its type and its default; unknown keys are errors.",
        "`duisgw config default` prints a complete file at the defaults; `duisgw config check FILE` validates",
        "one as `duisgw serve` does before it starts (every option, the `[engine]` policy, the pipeline's",
        "requirements): exit 0 when serve will accept it, 2 with every problem listed on stderr. The default",
        'file needs `[pipeline] certificates` and `gbcs_keys` (or `mode = "passthrough"`) to pass. The',
        "certificates, GBCS keys, GUID list and inventory themselves are read when serve starts, which exits 2",
        "when they are unusable (`duisgw guids import` and `duisgw inventory import` check the lists first).",
        "Numbers must be finite; URLs must parse (a destination's: `http://` or `https://`, with a host and",
        "a port in 1..65535); MQTT topic filters and the expanded publish topic must follow the MQTT rules;",
        "the admin listener needs a port of its own. TLS certificates, keys, CA files and revocation lists",
        "are loaded as serve loads them: a certificate that does not match its key, a CA file holding no",
        "certificate, an encrypted (pass phrase protected) key, or a `crl_file` holding anything but PEM",
        "CRLs, a CRL not signed by a certificate of the section's CA file or one past its nextUpdate is a",
        "problem, and so are TLS settings that would be ignored (`[destinations.tls]` with an `http://` url,",
        "`[mqtt.tls]` without `tls_enabled = true` while `[mqtt] enabled`: the link would be plain text; `[admin.tls]` with the admin",
        "listener disabled; a listener's `crl_file` without `client_ca_file`). What would cross the network",
        "unprotected is refused unless its section opts out (docs/OPERATIONS.md, *Transport security",
        "refusals*): an admin listener on a host that is not a loopback address without `token_file` or mutual",
        "TLS, its token there without `[admin.tls]`, a plain-HTTP ingress there, an MQTT password without TLS,",
        "a destination url's user name and password over `http://` or a Redis password over `redis://` to",
        "such a host. Relative file paths are relative to the config",
        "file's folder (for the check, and for `duisgw serve`, which resolves every path against it).",
        "This page is generated by `gateway.service.config.render_markdown()`; a test keeps it in sync.",
        "",
    ]
    pending: list[tuple[str, type[Any]]] = [("", ServiceConfig)]
    while pending:
        name, cls = pending.pop(0)
        rows: list[str] = []
        subs: list[tuple[str, type[Any]]] = []
        _md_rows(cls, f"{name}." if name else "", rows, subs)
        title = (
            "top level"
            if not name
            else ("`[[destinations]]` (one per DNO)" if name == "destinations" else f"`[{name}]`")
        )
        out += [
            f"## {title}",
            "",
            "| option | type | default | meaning |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
        ]
        pending[0:0] = subs
    out += [
        "## Example: mutual TLS toward the DSP, one DNO over HTTPS, MQTT mirror",
        "",
        "```toml",
        'mode = "pipeline"',
        "",
        "[server]",
        'host = "0.0.0.0"',
        "port = 8443",
        "",
        "[server.tls]",
        'cert_file = "/etc/duisgw/rrs.pem"        # the identity the DSP connects to',
        'key_file = "/etc/duisgw/rrs.key"',
        'client_ca_file = "/etc/duisgw/dccki-ca.pem" # DSP client certificates (mutual TLS)',
        'crl_file = "/etc/duisgw/dccki-crls.pem"     # DCCKI CRLs: a revoked DSP certificate is refused',
        "",
        "[store]",
        'path = "/var/lib/duisgw/duisgw.sqlite3"',
        "",
        "[pipeline]",
        'state_dir = "/var/lib/duisgw/state"',
        'certificates = "/etc/duisgw/smki"          # XML-signing certificates, CRLs/ARLs: re-read on reload',
        'gbcs_keys = "/etc/duisgw/gbcs-keys"        # device DS certificates: re-read on reload',
        'guids = "/etc/duisgw/mp102b-guids.xlsx"    # re-read on SIGHUP or POST /admin/reload',
        'inventory = "/etc/duisgw/inventory.csv"    # re-read on reload too',
        "",
        "[engine]",
        'window_before = "15m"',
        'window_after = "30m"',
        'hold_limit = "10m"',
        "",
        "[mqtt]",
        "enabled = true",
        'host = "broker.internal"',
        "publish = true",
        'observe_topics = ["dsp/observe/#"]',
        "",
        "[[destinations]]",
        'name = "dno-a"',
        'user = "90-B3-D5-1F-30-02-00-00"',
        'url = "https://adaptor.dno-a.internal:8443/smartdcc/duis"',
        "",
        "[destinations.tls]",
        'ca_file = "/etc/duisgw/dno-a-ca.pem"',
        'cert_file = "/etc/duisgw/gw-client.pem"',
        'key_file = "/etc/duisgw/gw-client.key"',
        "```",
        "",
        "The DSP posts inline traffic for this DNO to `/duis/dno/dno-a` or `/duis/dno/90-B3-D5-1F-30-02-00-00`",
        "and observation traffic to `/duis/observe`. Forwarded messages go to the outbox queues `http:dno-a`",
        "and `mqtt:dno-a` (topic `duisgw/dno/dno-a`), each delivered in order with retries.",
        "",
    ]
    return "\n".join(out)
