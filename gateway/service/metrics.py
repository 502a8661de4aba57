"""Prometheus metrics of one service instance, on a private :class:`CollectorRegistry`.

Theory of operation: every collector lives on the registry owned by a :class:`Metrics` object
(never the process-global one), so several services or tests can run in one process. The transport
updates message, reject, latency, HTTP and outbox figures itself; the decision pipeline receives the
same object and updates the pipeline-only ones (verify failures, held count, late-alert age, and the
GBCS key index found corrupt: the key store is loaded before this object exists, so the pipeline hooks
the counter onto the store, and classify workers relay their own finding as an event).
Outbox depth/age gauges are refreshed by the delivery manager from the database, not at scrape
time, so a scrape never touches SQLite. The store's health (``duisgw_store_…``) is told by the stores
themselves, the decision state's and the transport store's (:class:`gateway.store.sqlite.StoreObserver`: one
histogram observation per commit), and by the decision pipeline; the only figures taken at scrape time are the
sizes of the database files and whether they were deleted or replaced (a few ``stat`` calls:
:meth:`Metrics.on_scrape`). The garbage collector's pauses are observed by a ``gc``
callback that ``duisgw serve`` installs (:meth:`Metrics.watch_gc`): the callback is process-wide, so
only the process's own service installs it.

Bounded labels. Every label value comes from a closed set (lanes, decisions, reason codes, statuses,
queues), except a message's ``kind``, which comes from the message: a DCC alert code is free text in the
DUIS schema, a device alert code one of 65,536, a request's body its element's name. The first
:data:`KIND_LABELS_MAX` kinds a process counts keep their own ``kind`` value; a later new one is counted
as ``<family>.other`` (``DCCAlertMessage.other``, ...; ``other`` for an unknown family) and logged once, so
a peer cannot grow the registry (one series per value, for the life of the process) without bound.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["KIND_LABELS_MAX", "STORE_FAILURE_REASONS", "Metrics"]

log = logging.getLogger("duisgw.metrics")

#: distinct ``kind`` values of ``duisgw_messages_total`` a process exports before it counts a new kind as
#: ``<family>.other`` (see the module's Bounded labels)
KIND_LABELS_MAX = 256
_KIND_FAMILIES = frozenset({"ResponseMessage", "DCCAlertMessage", "DeviceAlertMessage", "Request"})

_GC_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_M = TypeVar("_M", bound=MetricWrapperBase)

_COMMIT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_REBUILD_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)

#: the ``reason`` values of ``duisgw_store_commit_failures_total`` (gateway.store.sqlite.FAILURE_REASONS)
STORE_FAILURE_REASONS = ("locked", "full", "io", "readonly", "corrupt", "files_changed", "other")

_LATE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 6 * 3600.0, 86400.0, 2 * 86400.0, 7 * 86400.0)


class Metrics:
    """Every metric the gateway exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._kinds: set[str] = set()  # the kind label values given their own series (KIND_LABELS_MAX)
        self.messages = Counter(
            "duisgw_messages",
            "Messages accepted, by lane, kind, decision and reason.",
            ["lane", "kind", "decision", "reason"],
            registry=r,
        )
        self.rejects = Counter(
            "duisgw_rejects", "Messages refused, by lane and reason code.", ["lane", "reason"], registry=r
        )
        self.verify_failures = Counter(
            "duisgw_verify_failures", "Signature verification failures, by reason.", ["reason"], registry=r
        )
        self.held = Gauge(
            "duisgw_held_messages", "Inline messages currently held awaiting evidence.", registry=r
        )
        self.decision_latency = Histogram(
            "duisgw_decision_latency_seconds",
            "Time from request received to durable decision.",
            ["lane"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.late_alert_age = Histogram(
            "duisgw_late_alert_age_seconds",
            "Age of alerts at arrival (arrival minus their own timestamp).",
            buckets=_LATE_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "duisgw_http_requests",
            "Ingress HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "duisgw_outbox_depth", "Pending outbox rows per queue.", ["queue"], registry=r
        )
        self.outbox_oldest_age = Gauge(
            "duisgw_outbox_oldest_age_seconds",
            "Age of the oldest pending row per queue (0 when empty).",
            ["queue"],
            registry=r,
        )
        self.outbox_dead = Gauge(
            "duisgw_outbox_dead_letters", "Dead-lettered rows per queue.", ["queue"], registry=r
        )
        self.outbox_worker_restarts = Counter(
            "duisgw_outbox_worker_restarts",
            "Delivery workers started again after ending before the stop (a fault: see the error log).",
            ["queue"],
            registry=r,
        )
        self.deliveries = Counter(
            "duisgw_delivery_attempts",
            "Delivery attempts per queue and outcome (delivered, refused, unreachable, dead).",
            ["queue", "outcome"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "duisgw_delivery_seconds",
            "Time of one successful delivery attempt.",
            ["queue"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "duisgw_mqtt_connected", "1 while connected to the MQTT broker.", registry=r
        )
        self.classify_worker_events = Counter(
            "duisgw_classify_worker_events",
            "Classify worker processes: worker-died (a worker was replaced) and poison (a message killed "
            "its worker twice and was answered 503).",
            ["event"],
            registry=r,
        )
        self.ingress_workers = Gauge(
            "duisgw_ingress_workers",
            "Ingress worker processes serving (server.ingress_processes).",
            registry=r,
        )
        self.ingress_worker_events = Counter(
            "duisgw_ingress_worker_events",
            "Ingress worker processes: worker-died (a worker was replaced), hung (killed: no answer within "
            "[server] ingress_hang_timeout; also counted as worker-died), poison (a message was in the slot of two "
            "workers that died or hung: refused from then on) and start-failed.",
            ["event"],
            registry=r,
        )
        self.sender_process_events = Counter(
            "duisgw_sender_process_events",
            "The HTTP sender process (outbox.sender_process): died (it was replaced).",
            ["event"],
            registry=r,
        )
        self.gbcs_key_index_corrupt = Counter(
            "duisgw_gbcs_key_index_corrupt",
            "Times the persisted GBCS key index (state_dir/gbcs-keys.idx) was found corrupt, by the gateway "
            "process, a classify worker or an ingress worker (each process once): that process answers every "
            "device signature unverifiable until the index is rebuilt (the gateway rebuilds it by itself: "
            'duisgw_gbcs_key_index_rebuilds_total{trigger="corrupt"}).',
            registry=r,
        )
        self.gbcs_key_index_rebuilds = Counter(
            "duisgw_gbcs_key_index_rebuilds",
            "GBCS key index rebuilds put in force in every process: trigger=corrupt (by the gateway itself "
            "after an index was found corrupt), trigger=reload (a reload, SIGHUP or POST /admin/reload, "
            "whose key folder changed or whose index was corrupt or gone).",
            ["trigger"],
            registry=r,
        )
        for trigger in ("corrupt", "reload"):  # both series from the start (0): a rise is what to watch
            self.gbcs_key_index_rebuilds.labels(trigger)
        self.release_pairing_refusals = Counter(
            "duisgw_release_pairing_refusals",
            "Decisions refused because a restoration alert was paired with an AD1 an operator released "
            "meanwhile (duisgw audit release): nothing committed, decided again without that AD1. "
            "state=local: a batch (or a retried job) of the gateway's own store; state=shared: a transaction "
            "on the shared state (Redis).",
            ["state"],
            registry=r,
        )
        for state in ("local", "shared"):
            self.release_pairing_refusals.labels(state)
        self.shared_state_up = Gauge(
            "duisgw_shared_state_up",
            "1 while the shared state's Redis ([state] backend = redis) answers a PING within a second (probed "
            "every 5 s and at each /readyz), 0 while it does not: decisions and hold releases fail meanwhile.",
            registry=r,
        )
        self.tick_failures = Counter(
            "duisgw_tick_failures",
            "Engine ticks (hold releases by time, pruning; every tick_interval seconds) that failed: the "
            "store or the shared state unavailable, or a fault (logged once per kind of failure).",
            registry=r,
        )
        self.shared_state_conflicts = Counter(
            "duisgw_shared_state_conflicts",
            "Shared-state (Redis) transactions retried because another instance changed what they read "
            "(compare-and-set): contention between instances, not a fault.",
            registry=r,
        )
        self.shared_state_lost = Counter(
            "duisgw_shared_state_lost",
            "Times this instance found the shared state (Redis) lost: its epoch key gone or changed (Redis "
            "restarted without persistence, a failover to a replica without the state, the keys deleted), or the "
            "learned list or the commit count below what it had read (an older snapshot, a replica that lags), here "
            "or while it was stopped. The "
            "instance re-reads the learned links and holds again the holds it recorded (logged at ERROR); "
            "idempotency keys, activations and other instances' unrecorded holds are gone (docs/SCALE-OUT.md).",
            registry=r,
        )
        self.shared_partial_forwards = Counter(
            "duisgw_shared_links_partial_forwards",
            "AD1s this instance forwarded instead of suppressing or holding them because its learned inventory "
            "links may be incomplete: after a loss of the shared state (Redis) it had not read before, another "
            "instance was still publishing back the links it holds, or this instance had not yet read the shared "
            "learned list to its end (it reads a long list by pages): the links the AD1 was joined on may be "
            "stale (logged at WARNING; docs/SCALE-OUT.md).",
            registry=r,
        )
        self.shared_clock_skew = Gauge(
            "duisgw_shared_clock_skew_seconds",
            "Shared state (Redis), clock = wall: this host's clock minus Redis time, seconds, measured at the "
            "last tick (positive: this host is ahead). Beyond the tolerance (5 s) the host's time does not move "
            "the shared gateway clock: duisgw_shared_clock_refused_total.",
            registry=r,
        )
        self.shared_clock_refused = Counter(
            "duisgw_shared_clock_refused",
            "Shared state (Redis), clock = wall: times this host's clock was more than the tolerance (5 s) ahead "
            "of Redis time, so that Redis time was taken in its place: what=tick (a tick's time), what=message "
            "(a message's arrival; its own times are kept). Check the host's time synchronisation.",
            ["what"],
            registry=r,
        )
        for what in ("tick", "message"):
            self.shared_clock_refused.labels(what)
        self.shared_unreadable = Counter(
            "duisgw_shared_unreadable",
            "Shared state (Redis): held messages (record=hold) and releases to take over (record=release) this "
            "instance could not decode (written by another version?), each counted once: left in place for an "
            "instance that can, listed in the hash {prefix}unreadable (docs/SCALE-OUT.md).",
            ["record"],
            registry=r,
        )
        for record in ("hold", "release"):
            self.shared_unreadable.labels(record)
        self.mqtt_received = Counter(
            "duisgw_mqtt_received", "Messages received on MQTT observation topics.", registry=r
        )
        self.mqtt_subscription_last_received = Gauge(
            "duisgw_mqtt_subscription_last_received_seconds",
            "Unix time of the last observation received on a topic the observation subscription matches, or of the "
            "broker's first grant of it since start while none has come; 0 while it was never granted. A broker "
            "whose ACL filters a granted subscription at delivery (mosquitto's acl_file) says nothing: alert on "
            "time() minus this (docs/OPERATIONS.md).",
            ["subscription"],
            registry=r,
        )
        self.mqtt_observations_dropped = Counter(
            "duisgw_mqtt_observations_dropped",
            "QoS 0 MQTT observations dropped on arrival because [mqtt] receive_maximum observations were "
            "already waiting to be processed (never processed, not kept; not in duisgw_mqtt_received).",
            registry=r,
        )
        self.mqtt_observations_unacked = Gauge(
            "duisgw_mqtt_observations_unacked",
            "QoS 1/2 MQTT observations received on the connection up and not yet acknowledged (queued or being "
            "recorded): at most [mqtt] receive_maximum from a broker that keeps to it (mosquitto 2.0 sends more "
            "while a backlog drains; all are processed).",
            registry=r,
        )
        self.mqtt_link_failures = Counter(
            "duisgw_mqtt_link_failures",
            "MQTT link interruptions by kind: lost (the broker refused or dropped the connection), "
            "network (a socket error) and unexpected (any other error; logged with its type, retried with backoff); "
            "and subscription_refused: an observation topic's SUBACK was a failure code (each try counted).",
            ["kind"],
            registry=r,
        )
        self.mqtt_subscriptions_refused = Gauge(
            "duisgw_mqtt_subscriptions_refused",
            "Observation topics ([mqtt] observe_topics) the broker refused to subscribe the connection up to "
            "(its ACL, say): nothing published there reaches the gateway while above 0; retried with backoff.",
            registry=r,
        )
        self.admin_auth_failures = Counter(
            "duisgw_admin_auth_failures",
            "Requests to the admin listener's control endpoints refused with 401 ([admin] token_file), by "
            "reason: missing (no bearer token) or wrong (a token that is not the configured one).",
            ["reason"],
            registry=r,
        )
        self.gc_pause = Histogram(
            "duisgw_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector, by generation (every thread waits for them).",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=r,
        )
        self.reference_stale = Gauge(
            "duisgw_reference_stale",
            "1 while reference data in force is the last good one, by source: guids and inventory (its "
            "source could not be imported when the gateway started or by a reload), smki (a reload's SMKI certificates or "
            "revocation lists were refused), gbcs_keys (a reload's GBCS device key folder was refused), tls (a "
            "reload's TLS material of a section was refused: the context in force stays), admin_token (a "
            "reload's admin token file was unusable: the token in force stays); the next reload that succeeds "
            "sets it back to 0.",
            ["source"],
            registry=r,
        )
        self.crl_stale = Gauge(
            "duisgw_smki_crl_stale",
            "1 while the freshest SMKI revocation list of an issuer is past its nextUpdate, or past the expiry of "
            "the CA certificate that signed it (wall clock, at each scrape): signatures by that issuer's "
            "certificates are not evidence until a fresh list is loaded (reload).",
            ["issuer"],
            registry=r,
        )
        self.crl_next_update = Gauge(
            "duisgw_smki_crl_next_update_seconds",
            "nextUpdate of the freshest SMKI revocation list of an issuer, or the expiry of the CA certificate "
            "that signed it when that comes first, as a Unix time.",
            ["issuer"],
            registry=r,
        )
        self.tls_crl_next_update = Gauge(
            "duisgw_tls_crl_next_update_seconds",
            "nextUpdate of the freshest TLS revocation list in force (crl_file, read at start and by each reload "
            "that puts a section's new material in force) of an issuer, by TLS section (server, admin, "
            "destination:NAME, mqtt), as a Unix time: past it, every peer certificate of that issuer is refused "
            "at the handshake until a fresh list is reloaded.",
            ["section", "issuer"],
            registry=r,
        )
        self.tls_connections_cut = Counter(
            "duisgw_tls_connections_cut",
            "Open connections of a mutual-TLS listener closed by a reload because a revocation list it put in "
            "force revokes the client certificate they were made with (a handshake the reload overtook: at its "
            "first request), by listener (server: the ingress, in the gateway process or its ingress worker "
            "processes; admin).",
            ["listener"],
            registry=r,
        )
        self.crls_refused = Gauge(
            "duisgw_smki_crls_refused",
            "SMKI revocation lists refused when the store in force was loaded (start-up or reload: unreadable, "
            "issuer not in the store, bad signature, signed when its CA certificate was not valid): they revoke "
            "nothing.",
            registry=r,
        )
        self.gc_frozen = Gauge(
            "duisgw_gc_frozen_objects",
            "Objects moved out of the collector's scans after start-up and reloads (gc.freeze).",
            registry=r,
        )
        self.gc_frozen.set_function(gc.get_freeze_count)
        self.store_commit_seconds = Histogram(
            "duisgw_store_commit_seconds",
            "Store transactions that committed, from BEGIN (the write lock's wait included) to COMMIT's return "
            "(the sync included): the decision state's (a batch of decisions, with [pipeline] state_in_store its "
            "routes and outbox rows in it; a tick; operator releases taken in; the in-the-outbox flags) and the "
            "transport store's own (rejects, observations, routes and outbox rows, delivery marks, dead "
            "letters, purges); the engine's own work not, nor the readiness probe's one-page write.",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.store_commit_failures = Counter(
            "duisgw_store_commit_failures",
            "Store transactions that failed, by reason: locked (a lock held past busy_timeout), full (disk full), "
            "io (an I/O error), readonly, corrupt, files_changed (a database file deleted or replaced while open), "
            "other (anything else: see the error log). Every transaction of duisgw_store_commit_seconds, of either "
            "database, and the one-page writes that check the store can record (after a failure; /readyz).",
            ["reason"],
            registry=r,
        )
        for reason in STORE_FAILURE_REASONS:
            self.store_commit_failures.labels(reason)
        self.store_unavailable = Gauge(
            "duisgw_store_unavailable",
            "1 while the store refuses to record: a transaction of the decision state or of the transport store "
            "failed for a reason that fails every transaction, until its database (either of two) records again: a "
            "refused request only by a request's commit, not by upkeep (ticks, delivery marks, purges) nor a check's "
            "one-page write; or a database file was deleted or replaced: until a restart. Else 0.",
            registry=r,
        )
        self.store_file_bytes = Gauge(
            "duisgw_store_file_bytes",
            "Size of the store's database files at scrape time: database=store ([store] path) or engine "
            "(state_dir/engine.sqlite3, with state_in_store = false or the Redis backend), file=db or wal.",
            ["database", "file"],
            registry=r,
        )
        self.store_checkpoint_seconds = Histogram(
            "duisgw_store_checkpoint_seconds",
            "WAL checkpoints of the store's databases, by database (store or engine, as duisgw_store_file_bytes): "
            "the decision state's database's in the background (PASSIVE, every second, off the commit path); the "
            "transport store's own database's (passthrough, or state_in_store = false) after the commit that left "
            "its WAL at 1,000 pages or more (SQLite's automatic checkpoint, PASSIVE, run and timed by the store).",
            ["database"],
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.store_checkpoint_failures = Counter(
            "duisgw_store_checkpoint_failures",
            "WAL checkpoints of the store's databases that failed, by database (the WAL grows meanwhile).",
            ["database"],
            registry=r,
        )
        self.store_engine_rebuild_seconds = Histogram(
            "duisgw_store_engine_rebuild_seconds",
            "Rebuilds of the decision engine from the store after a batch failed once decided (every idempotency "
            "key within the retention read again: decisions wait meanwhile).",
            buckets=_REBUILD_BUCKETS,
            registry=r,
        )
        self._scrape_hooks: list[Callable[[], None]] = []

    def child(self, metric: _M, *values: str) -> _M:
        """``metric.labels(*values)``, looked up in a dict after the first time: the library's
        ``labels`` checks and locks on every call (about 1.2 µs, several times per message). No label
        set is ever removed from these metrics, so a remembered child is the one the registry exports."""
        key = (id(metric), values)
        found: _M | None = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    # what the ingress records (:class:`gateway.service.ingress.IngressCounts`): an ingress worker
    # process adds its counts up and relays them to its gateway process (gateway.service.ingress_workers)

    def count_request(self, lane: str, status: int, n: int = 1) -> None:
        """``n`` ingress HTTP requests answered with ``status``."""
        self.child(self.http_requests, lane, str(status)).inc(n)

    def count_reject(self, lane: str, reason: str, n: int = 1) -> None:
        """``n`` messages refused by the ingress, by reason code."""
        self.child(self.rejects, lane, reason).inc(n)

    def count_accepted(self, lane: str, kind: str, decision: str, reason: str, n: int = 1) -> None:
        """``n`` messages accepted, with their decision (``kind`` bounded: :meth:`kind_label`)."""
        self.child(self.messages, lane, self.kind_label(kind), decision, reason).inc(n)

    def kind_label(self, kind: str) -> str:
        """The ``kind`` label value a message of ``kind`` is counted under: its own while fewer than
        :data:`KIND_LABELS_MAX` kinds have been, else ``<family>.other`` (``other`` for a family that is
        none of DUIS's)."""
        kinds = self._kinds
        if kind in kinds:
            return kind
        if len(kinds) < KIND_LABELS_MAX:
            kinds.add(kind)
            if len(kinds) == KIND_LABELS_MAX:
                log.warning(
                    "kind label limit reached: later new kinds are counted as <family>.other",
                    extra={"limit": KIND_LABELS_MAX, "kind": kind[:100]},
                )
            return kind
        family = kind.partition(".")[0]
        return f"{family}.other" if family in _KIND_FAMILIES else "other"

    def observe_decision(self, lane: str, seconds: float) -> None:
        """Time from a request's arrival to its durable decision."""
        self.child(self.decision_latency, lane).observe(seconds)

    def delivered(self, queue: str, seconds: float) -> None:
        """One successful delivery attempt on ``queue`` and how long it took."""
        self.child(self.deliveries, queue, "delivered").inc()
        self.child(self.delivery_latency, queue).observe(seconds)

    def watch_gc(self) -> Callable[[], None]:
        """Observe every collection's pause in ``duisgw_gc_pause_seconds``; returns the uninstaller."""
        children = [self.gc_pause.labels(str(g)) for g in range(3)]
        started = [0.0]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                children[info["generation"]].observe(time.perf_counter() - started[0])

        gc.callbacks.append(on_gc)

        def uninstall() -> None:
            if on_gc in gc.callbacks:
                gc.callbacks.remove(on_gc)

        return uninstall

    def on_scrape(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` before each :meth:`render` (to refresh gauges that are cheap to read then and costly
        to keep current: a few ``stat`` calls). A hook that raises is logged; the scrape goes on."""
        self._scrape_hooks.append(hook)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        for hook in self._scrape_hooks:
            try:
                hook()
            except Exception:
                log.exception("a metrics scrape hook failed")
        return generate_latest(self.registry)
