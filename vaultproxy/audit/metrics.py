"""Prometheus metrics (``GET /metrics``). Fed from audit events: the Record stage and the
``/proxy`` route pass each event through :func:`observed`, so both paths count alike.

Labels are service names and outcome/reason codes, never hosts, paths or values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# Submodules, not the package: a worker never serves /metrics, and the package's
# ``__init__`` imports the exposition servers (http.server, wsgiref, urllib.request).
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics import Counter, Gauge, Histogram
from prometheus_client.registry import Collector, CollectorRegistry

from vaultproxy.audit.event import AnyEvent

REGISTRY = CollectorRegistry(auto_describe=True)

FLOWS = Counter(
    "vaultproxy_flows", "Intercepted requests by service and outcome",
    ["service", "outcome"], registry=REGISTRY,
)
LATENCY = Histogram(
    "vaultproxy_injection_latency_seconds",
    "Time from request start (before injection) to the upstream's response, by service",
    ["service"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPSTREAM_ERRORS = Counter(
    "vaultproxy_upstream_errors", "Upstream connection/TLS failures by service and code",
    ["service", "code"], registry=REGISTRY,
)
RELOADS = Counter(
    "vaultproxy_reloads", "services.toml reloads by result (ok|invalid)", ["result"],
    registry=REGISTRY,
)
ADMIN_ACTIONS = Counter(
    "vaultproxy_admin_actions", "Admin API actions by action and result", ["action", "result"],
    registry=REGISTRY,
)
SOURCE_SYNCS = Counter(
    "vaultproxy_source_syncs", "Syncs of external sources by source and result (ok|failed)",
    ["source", "result"], registry=REGISTRY,
)
LOCKED = Gauge("vaultproxy_locked", "1 while the keystore is locked", registry=REGISTRY)
SERVICES = Gauge("vaultproxy_services", "Services in the loaded registry", registry=REGISTRY)



class _AuditCollector(Collector):
    """Audit records written / failed / dropped, summed over every process."""

    def __init__(self) -> None:
        self.read: Callable[[], dict[str, Any]] | None = None

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        read = self.read
        if read is None:
            return
        try:
            s = read()
        except Exception:  # noqa: BLE001 - a scrape must not fail
            return
        for key, text in (
            ("written", "Audit records written to audit.jsonl"),
            ("failed", "Audit record writes that failed (kept for a retry, or refused)"),
            ("dropped", "Audit records lost for good (retry buffer full, or unserialisable)"),
        ):
            yield CounterMetricFamily(f"vaultproxy_audit_records_{key}", text,
                                      value=float(s.get(key, 0)))
        yield GaugeMetricFamily("vaultproxy_audit_records_pending",
                                "Audit records waiting for a write to work again",
                                value=float(s.get("pending", 0)))
        yield GaugeMetricFamily("vaultproxy_audit_healthy",
                                "1 while every process writes its audit records",
                                value=1.0 if s.get("healthy", True) else 0.0)


AUDIT = _AuditCollector()
REGISTRY.register(AUDIT)


def bind_audit(read: Callable[[], dict[str, Any]] | None) -> None:
    """Make the audit counters read ``read()`` (audit/status.py ``combined``) at scrape time."""
    AUDIT.read = read


UPSTREAM_CODES = frozenset({"upstream_unreachable", "upstream_tls"})


# The children of FLOWS and LATENCY by label values, looked up once: ``labels()`` converts,
# checks and locks on every call, and ``observed`` runs twice per proxied request.
_flows: dict[tuple[str, str], Any] = {}
_latency: dict[str, Any] = {}


def observed[E: AnyEvent](event: E) -> E:
    """Count one audit event; returns it unchanged (so a caller can wrap ``record(...)``)."""
    try:
        if event.event == "request":
            service = event.service or "-"
            key = (service, event.outcome)
            flows = _flows.get(key)
            if flows is None:
                flows = _flows[key] = FLOWS.labels(service, event.outcome)
            flows.inc()
            if event.reason in UPSTREAM_CODES:
                UPSTREAM_ERRORS.labels(service, event.reason).inc()
            if event.duration_ms is not None and event.outcome in ("injected", "forwarded"):
                latency = _latency.get(service)
                if latency is None:
                    latency = _latency[service] = LATENCY.labels(service)
                latency.observe(event.duration_ms / 1000.0)
    except Exception:  # noqa: BLE001, S110 - metrics must never break the request path
        pass
    return event


def bind(locked: Callable[[], bool], services: Callable[[], int]) -> None:
    """Make the gauges read the live state at scrape time."""
    LOCKED.set_function(lambda: 1.0 if locked() else 0.0)
    SERVICES.set_function(lambda: float(services()))


def render() -> bytes:
    from prometheus_client.exposition import generate_latest

    return generate_latest(REGISTRY)
