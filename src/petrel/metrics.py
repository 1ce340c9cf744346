"""Prometheus metrics: what ``GET /metrics`` on an ``http`` listener exports.

The counters live here, in one registry, so the SMTP path pays a counter add (a lock
and a float) and nothing else; the gauges that describe state (queue by state, sync
rounds) are read only when Prometheus scrapes (`StateCollector`). Names follow the
Prometheus conventions: ``petrel_`` prefix, units in names, counters end in ``_total``.

Processes: these are the counts of the process that serves HTTP, the ``petrel serve``
parent. With ``server.workers > 1`` the SMTP sessions run in worker processes, so
``petrel_connections_total``, ``petrel_messages_rejected_total``, the TLS and the AUTH
counters cover the parent's own sessions only (none); ``petrel_messages_accepted_total``
is counted by the queue manager, which every message reaches, so it is right either way.

Other parts of Petrel add their own counters with `counter` (the same registry, the
same naming rule), e.g. refusal counts by reason from the antispam checks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "ACCEPTED",
    "AUTH_FAILURES",
    "AUTH_LOCKOUTS",
    "CONNECTIONS",
    "DELIVERIES",
    "DELIVERY_LATENCY",
    "REGISTRY",
    "SESSIONS",
    "TLS_FAILURES",
    "TLS_HANDSHAKES",
    "StateCollector",
    "accepted",
    "connection",
    "counter",
    "delivery",
    "latency",
    "rejected",
    "rejection_reason",
    "total_rejected",
]

# No ``_created`` series: half the lines, and nothing a dashboard uses.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """A new ``petrel_<name>_total`` counter in Petrel's registry (for other packages)."""
    if not name.startswith("petrel_"):
        name = f"petrel_{name}"
    return Counter(name, documentation, list(labels), registry=REGISTRY)


CONNECTIONS = counter("connections", "SMTP connections admitted, by listener mode", ["listener"])
SESSIONS = Gauge("petrel_sessions_active", "SMTP sessions open now", registry=REGISTRY)
ACCEPTED = counter(
    "messages_accepted",
    "Messages the queue manager took (SMTP, sendmail, worker sessions, DSN notices), by source",
    ["source"],
)
_REJECTED = counter(
    "messages_rejected",
    "SMTP refusals of a connection, sender, recipient or message text, by reason",
    ["reason"],
)
DELIVERIES = counter(
    "deliveries",
    "Recipient delivery attempts that ended, by transport and outcome",
    ["transport", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "petrel_delivery_latency_seconds",
    "From acceptance to a recipient's successful delivery",
    ["transport"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
    registry=REGISTRY,
)
TLS_HANDSHAKES = counter("tls_handshakes", "TLS handshakes completed (STARTTLS or implicit)")
TLS_FAILURES = counter("tls_handshake_failures", "TLS handshakes that failed")
AUTH_FAILURES = counter("auth_failures", "Failed SMTP AUTH attempts (and failed HTTP logins)")
AUTH_LOCKOUTS = counter("auth_lockouts", "Clients locked out by the AUTH throttle")

# Enhanced status codes (RFC 3463) of Petrel's refusals, and what they mean.
_REASONS = {
    "5.7.1": "relay",  # also the tricks at a local domain: both are relay attempts
    "5.1.1": "unknown_user",
    "5.1.3": "bad_address",
    "5.4.6": "loop",
    "5.3.4": "size",
    "5.6.0": "malformed",
    "5.5.2": "malformed",
    "4.7.1": "rate",
    "4.5.3": "too_many_recipients",
    "4.3.1": "no_storage",
    "4.7.0": "connection_limit",
    "5.7.0": "auth_required",
    "5.7.8": "auth",
}


class _Reason:
    """One reason's counter child, and the count the dashboard reads."""

    __slots__ = ("child", "count")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.count = 0


_rejected_by_reason: dict[str, _Reason] = {}


def rejection_reason(status: str | None) -> str:
    """The ``reason`` label for a refusal's enhanced status code."""
    return _REASONS.get(status or "", "policy")


def rejected(status: str | None) -> None:
    """Count one refusal (its children are made once per reason: the add stays cheap)."""
    reason = rejection_reason(status)
    found = _rejected_by_reason.get(reason)
    if found is None:
        found = _rejected_by_reason[reason] = _Reason(_REJECTED.labels(reason=reason))
    found.child.inc()
    found.count += 1


def total_rejected() -> int:
    """Every refusal counted so far, whatever its reason (the console's dashboard)."""
    return sum(child.count for child in _rejected_by_reason.values())


# Labelled children, made once: ``labels()`` takes a lock and builds a key on each call.
@functools.cache
def connection(listener: str) -> Counter:
    return CONNECTIONS.labels(listener)


@functools.cache
def accepted(source: str) -> Counter:
    return ACCEPTED.labels(source)


@functools.cache
def delivery(transport: str, outcome: str) -> Counter:
    return DELIVERIES.labels(transport, outcome)


@functools.cache
def latency(transport: str) -> Histogram:
    return DELIVERY_LATENCY.labels(transport)


class StateCollector(Collector):
    """Gauges read at scrape time from the running server: no cost between scrapes."""

    def __init__(
        self,
        queue_counts: Callable[[], dict[str, int]],
        sync_rounds: Callable[[], int],
        commits: Callable[[], int],
    ) -> None:
        self._queue_counts = queue_counts
        self._sync_rounds = sync_rounds
        self._commits = commits

    def collect(self) -> Iterable[Metric]:
        queue = GaugeMetricFamily(
            "petrel_queue_messages", "Messages in the queue, by state", labels=["state"]
        )
        for state, count in self._queue_counts().items():
            if state != "total":
                queue.add_metric([state], count)
        yield queue
        yield CounterMetricFamily(
            "petrel_sync_rounds",
            "File system syncs (group commits and Maildir batches)",
            value=self._sync_rounds(),
        )
        yield CounterMetricFamily(
            "petrel_spool_commits",
            "Messages made durable in the spool by this process",
            value=self._commits(),
        )
