"""Prometheus metrics: what ``GET /metrics`` on an ``http`` listener exports.

The counters live here, in one registry, so the SMTP path pays a counter add (a lock
and a float) and nothing else; the gauges that describe state (queue by state, sync
rounds) are read only when Prometheus scrapes (`StateCollector`). Names follow the
Prometheus conventions: ``petrel_`` prefix, units in names, counters end in ``_total``.

Processes: with ``server.workers > 1`` the SMTP sessions run in worker processes. The
parent (`share_with_workers`, before it starts them) gives them
``PROMETHEUS_MULTIPROC_DIR=<data_dir>/metrics``, so each worker's counters live in
mmap'ed files there (prometheus-client's multiprocess mode), and `exposition` adds the
files to the parent's own counters: connections, refusals, TLS, AUTH and direct
deliveries are counted across every process.

Other parts of Petrel add their own counters with `counter` (the same registry, the
same naming rule), e.g. refusal counts by reason from the antispam checks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from petrel.policy.refusals import Reason

__all__ = [
    "ACCEPTED",
    "AUTH_FAILURES",
    "AUTH_LOCKOUTS",
    "CONNECTIONS",
    "DELIVERIES",
    "DELIVERY_LATENCY",
    "MULTIPROCESS_ENV",
    "REGISTRY",
    "SESSIONS",
    "TLS_FAILURES",
    "TLS_HANDSHAKES",
    "RefusalCollector",
    "StateCollector",
    "accepted",
    "connection",
    "counter",
    "delivered_at_intake",
    "delivery",
    "exposition",
    "latency",
    "message_source",
    "rejected",
    "rejection_reason",
    "share_with_workers",
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
SESSIONS = Gauge(
    "petrel_sessions_active",
    "SMTP sessions open now",
    registry=REGISTRY,
    multiprocess_mode="livesum",  # workers: the sum over the living processes
)
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
COMMIT_BATCH = Histogram(
    "petrel_commit_batch_messages",
    "Messages made durable by one group commit of the spool (one sync round)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
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


_rejected_by_reason: dict[str, Counter] = {}


def rejection_reason(status: str | None) -> str:
    """The ``reason`` label for a refusal's enhanced status code."""
    return _REASONS.get(status or "", "policy")


def rejected(status: str | None, reason: str | None = None) -> None:
    """Count one refusal, by ``reason`` or else by its status code (children are made
    once per reason: the add stays cheap)."""
    reason = reason or rejection_reason(status)
    child = _rejected_by_reason.get(reason)
    if child is None:
        child = _rejected_by_reason[reason] = _REJECTED.labels(reason=reason)
    child.inc()


def total_rejected() -> int:
    """Every refusal counted so far, whatever its reason, in every process (dashboard)."""
    return int(
        sum(
            sample.value
            for family in _exposed().collect()
            if family.name == "petrel_messages_rejected"
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )


def message_source(protocol: str, notice: str | None) -> str:
    """The ``source`` label of ``petrel_messages_accepted_total`` for an envelope."""
    if notice is not None:
        return "notice"
    protocol = protocol.upper()
    if "LMTP" in protocol:
        return "lmtp"
    return "smtp" if "SMTP" in protocol else "local"


def delivered_at_intake(source: str, recipients: int, age: float, queued: bool) -> None:
    """Direct delivery (intake/direct.py) put ``recipients`` copies in their mailboxes;
    ``queued``: the rest of the message went to the queue, which counts it as accepted."""
    if not queued:
        accepted(source).inc()
    for _ in range(recipients):
        delivery("local", "delivered").inc()
        latency("local").observe(age)


# -- several processes -------------------------------------------------------------------

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_shared: Path | None = None  # the parent's view of its workers' files


def share_with_workers(directory: Path) -> None:
    """Make the worker processes started from now on count into files in ``directory``.

    Called by the parent before it starts them; files of an earlier run are removed (a
    new server starts from zero, as a single process does).
    """
    global _shared
    directory.mkdir(mode=0o700, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROCESS_ENV] = str(directory)
    _shared = directory


def _reap(directory: Path) -> None:
    """A dead worker's open sessions are no longer open (its counters stay counted)."""
    for path in directory.glob("gauge_livesum_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass


class _Summed(Collector):
    """This process's registry plus the workers' files, the same series added up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        _reap(self.directory)
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for source in (self.files.collect(), REGISTRY.collect()):  # type: ignore[no-untyped-call]
            for family in source:
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation, family.type)
                    values[family.name] = {}
                summed = values[family.name]
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    summed[key] = summed.get(key, 0.0) + sample.value
        for name, family in families.items():
            for (sample, labels), value in values[name].items():
                family.add_sample(sample, dict(labels), value)
            yield family


def _exposed() -> Collector:
    return REGISTRY if _shared is None else _Summed(_shared)


def exposition() -> bytes:
    """``/metrics``: the Prometheus text format of every process's counters."""
    if _shared is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Summed(_shared))
    return generate_latest(registry)


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


class RefusalCollector(Collector):
    """``petrel_refusals_total{reason}``: `policy.refusals.Refusals`, the refusals for
    what a client is or does (rates, caps, DNSBL, pregreet, greylisting, sender checks),
    already shared by every worker through ``<data_dir>/refusals`` and kept over restarts."""

    def __init__(self, snapshot: Callable[[], Mapping[Reason, int]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "petrel_refusals", "Refusals by reason (policy/refusals.py)", labels=["reason"]
        )
        for reason, count in self._snapshot().items():
            family.add_metric([reason], count)
        yield family


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
            if state != "total" and isinstance(count, int):  # a cluster's may be an error
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
