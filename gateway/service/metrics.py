"""Prometheus metrics of one service instance, on a private :class:`CollectorRegistry`.

Theory of operation: every collector lives on the registry owned by a :class:`Metrics` object
(never the process-global one), so several services or tests can run in one process. The transport
updates message, reject, latency, HTTP and outbox figures itself; the decision pipeline receives the
same object and updates the pipeline-only ones (verify failures, held count, late-alert age).
Outbox depth/age gauges are refreshed by the delivery manager from the database, not at scrape
time, so a scrape never touches SQLite.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_LATE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 6 * 3600.0, 86400.0, 2 * 86400.0, 7 * 86400.0)


class Metrics:
    """Every metric the gateway exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
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
        self.mqtt_received = Counter(
            "duisgw_mqtt_received", "Messages received on MQTT observation topics.", registry=r
        )

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
