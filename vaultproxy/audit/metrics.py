"""Prometheus metrics (``GET /metrics``). Fed from audit events: the Record stage and the
``/proxy`` route pass each event through :func:`observed`, so both paths count alike.

Labels are service names and outcome/reason codes, never hosts, paths or values.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from threading import get_ident, local
from time import time
from typing import Any

# Submodules, not the package: a worker never serves /metrics, and the package's
# ``__init__`` imports the exposition servers (http.server, wsgiref, urllib.request).
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics import Counter, Gauge
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from vaultproxy.audit.event import SPEC_FIELDS, AnyEvent, AuditEvent

REGISTRY = CollectorRegistry(auto_describe=True)

# FLOWS and LATENCY without a lock (one ``threading.Lock`` acquire costs ~2.6k instructions
# per request, more than the update): every thread that calls ``observed`` counts in rows of
# its own (``_THREADS[get_ident()]``), so no two threads ever write one value, and a scrape
# sums the rows of every thread, copying each dict and list by one C call (atomic under the
# GIL). A series' first sight is ``dict.setdefault`` on ``_SEEN_*`` (atomic too), so the
# exposition keeps prometheus_client's order (first observed first) and ``_created``.
# a flow row: [count, the thread's latency row of its service once it took one (or None)]
_THREADS: dict[int, tuple[dict[tuple[str, str], list[Any]], dict[str, list[float]]]] = {}
# ``rows``: the calling thread's entry of ``_THREADS`` and a cell of its own: the last
# (service, outcome) it counted, as given, with their label and row (``counted``)
_LOCAL = local()
_SEEN_FLOWS: dict[tuple[str, str], float] = {}  # (service, outcome) -> created
_SEEN_LATENCY: dict[str, float] = {}  # service -> created
# PROMETHEUS_DISABLE_CREATED_SERIES, read as prometheus_client.metrics reads it at import.
_CREATED = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
    "true", "1", "t")


class _Flows(Collector):
    """``vaultproxy_flows`` (a counter by service and outcome): the exposition of
    ``Counter("vaultproxy_flows", ..., ["service", "outcome"])`` (series in first-seen order,
    ``_total`` then ``_created``), summed over every thread's rows at scrape time."""

    NAME = "vaultproxy_flows"
    DOC = "Intercepted requests by service and outcome"

    def __init__(self) -> None:
        self.threads: dict[int, tuple[dict[tuple[str, str], list[Any]], Any]] = _THREADS
        self.seen: dict[tuple[str, str], float] = _SEEN_FLOWS

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.NAME, self.DOC, labels=["service", "outcome"])

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    def totals(self) -> dict[tuple[str, str], float]:
        out = dict.fromkeys(list(self.seen), 0.0)
        for rows, _ in list(self.threads.values()):
            for key, row in list(rows.items()):
                out[key] = out.get(key, 0.0) + row[0]
        return out

    def collect(self) -> Iterator[CounterMetricFamily]:
        seen = list(self.seen.items())
        totals = self.totals()
        family = self._family()
        for labels, created in seen:
            family.add_metric(labels, totals[labels], created=created if _CREATED else None)
        yield family

    def value(self, service: str, outcome: str) -> float:
        """The count for one label pair (0.0 before its first request)."""
        return self.totals().get((service, outcome), 0.0)


class _Latency(Collector):
    """``vaultproxy_injection_latency_seconds`` (a histogram by service): the exposition of
    ``Histogram(..., ["service"], buckets=BOUNDS)`` (cumulative ``_bucket`` samples with
    ``le`` as prometheus_client writes it, ``_count``, ``_sum``, ``_created``)."""

    NAME = "vaultproxy_injection_latency_seconds"
    DOC = "Time from request start (before injection) to the upstream's response, by service"
    BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, math.inf)
    LE = tuple(floatToGoString(b) for b in BOUNDS)  # type: ignore[no-untyped-call]

    def __init__(self) -> None:
        #: per thread: service -> [sum, count in bucket 0, ..., count in bucket +Inf] (counts
        #: per bucket, not cumulative: prometheus_client's Histogram keeps them so too).
        self.threads: dict[int, tuple[Any, dict[str, list[float]]]] = _THREADS
        self.seen: dict[str, float] = _SEEN_LATENCY

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.NAME, self.DOC, labels=["service"])

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[HistogramMetricFamily]:
        seen = list(self.seen.items())
        totals: dict[str, list[float]] = {}
        for _, rows in list(self.threads.values()):
            for service, row in list(rows.items()):
                row = list(row)
                have = totals.get(service)
                if have is None:
                    totals[service] = row
                else:
                    totals[service] = [x + y for x, y in zip(have, row, strict=True)]
        family = self._family()
        empty = [0.0] * (len(self.BOUNDS) + 1)
        for service, created in seen:
            row = totals.get(service, empty)
            acc = 0.0
            buckets = []
            for le, n in zip(self.LE, row[1:], strict=True):
                acc += n
                buckets.append((le, acc))
            family.add_metric([service], buckets, row[0])
            if _CREATED:
                family.samples.append(Sample(self.NAME + "_created", {"service": service},
                                             created, None, None))
        yield family


FLOWS = _Flows()
LATENCY = _Latency()
REGISTRY.register(FLOWS)
REGISTRY.register(LATENCY)
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


_BOUNDS = LATENCY.BOUNDS
_NBUCKETS = len(_BOUNDS)
# ``counted`` compares a float with these bounds written out: the same numbers, or no import
if _BOUNDS != (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf):
    raise RuntimeError("metrics: counted's written-out latency buckets are not LATENCY.BOUNDS")


def observed[E: AnyEvent](event: E) -> E:
    """Count one audit event; returns it unchanged (so a caller can wrap ``record(...)``)."""
    try:
        fields = (event.event, event.service, event.outcome, event.reason, event.duration_ms)
    except Exception:  # noqa: BLE001 - metrics must never break the request path
        return event
    counted(*fields)
    return event


def observed_line(record: dict[str, Any]) -> None:
    """Count a ``request`` record a ``--workers`` process sent (its line, parsed): what
    ``observed(AuditEvent(**record))`` counts (nothing when the model refuses the record),
    by ``line_fields`` without the model when it takes the record, else by the model."""
    fields = line_fields(record)
    if fields is None:
        try:
            event = AuditEvent(**record)
        except Exception:  # noqa: BLE001 - a record the model refuses is not counted
            return
        observed(event)
    else:
        counted(*fields)


_LINE_KEYS = frozenset(SPEC_FIELDS)
_LINE_KEYS_VIA = frozenset((*SPEC_FIELDS, "via"))
# ``TS_PATTERN`` in ASCII digits: every digit made "0" gives exactly this (``str.translate``:
# a tenth of a regular expression's match)
_TS_SHAPE = "0000-00-00T00:00:00.000Z"
_TO_ZERO = str.maketrans("123456789", "000000000")


def line_fields(record: dict[str, Any]) -> tuple[str, str | None, str, str | None,
                                                 float | None] | None:
    """``(event, service, outcome, reason, duration_ms)`` of ``AuditEvent(**record)`` (what
    ``observed`` counts), for a record the model takes as it is: exactly the SPEC §8 fields
    (and ``via``), every text a ``str`` or None, the event and outcome not empty, the
    status an ``int`` or None, the duration a finite ``float`` or None (rounded to 3
    decimals, as the model does), the ``ts`` of its pattern in ASCII digits, no admin or
    approval event (the lines audit/canonical.py writes). None for anything else, which
    the caller leaves to the model (tests/unit/test_speed_audit.py compares both)."""
    keys = record.keys()
    if keys != _LINE_KEYS and keys != _LINE_KEYS_VIA:
        return None
    event, outcome = record["event"], record["outcome"]
    if (
        type(event) is not str or type(outcome) is not str or not event or not outcome
        or event == "admin" or event == "approval"
    ):
        return None
    for name in ("agent", "service", "mode", "method", "host", "path", "reason", "via"):
        value = record.get(name)
        if value is not None and type(value) is not str:
            return None
    status = record["status"]
    if status is not None and type(status) is not int:
        return None
    ts = record["ts"]
    if type(ts) is not str or len(ts) != 24 or ts.translate(_TO_ZERO) != _TS_SHAPE:
        return None
    duration = record["duration_ms"]
    if duration is not None:
        if type(duration) is not float or not math.isfinite(duration):
            return None
        duration = round(duration, 3)
    return event, record["service"], outcome, record["reason"], duration


def counted(
    event: object, service: Any, outcome: Any, reason: object, duration_ms: Any,
) -> None:
    """``observed`` from the event's fields, as values (audit/canonical.py passes those of the
    record it just made, which are its own: no field read back from the record)."""
    try:
        if event == "request":
            try:  # this thread's rows (a thread-local: no ident made and looked up)
                mine = _LOCAL.rows
                last = mine[2][0]
            except AttributeError:  # (its first count: its rows are made below)
                mine = last = None
            if last is not None and last[0] is service and last[1] is outcome:
                # the very service and outcome objects of this thread's last count: its
                # label and row (what the look-up below gives them: no key made, no hash)
                service, row = last[2], last[3]
            else:
                given = service
                service = service or "-"
                label = outcome
                exact = True
                if type(service) is not str or type(label) is not str:
                    # As before: an unhashable value raised (the cache's look-up), anything
                    # else was stringified by prometheus_client's labels() (a str subclass
                    # too).
                    hash((service, label))
                    service, label = str(service), str(label)
                    exact = False
                if mine is None:  # (its first count: an ended thread's ident, its rows)
                    mine = _LOCAL.rows = (*_THREADS.setdefault(get_ident(), ({}, {})), [None])
                key = (service, label)
                row = mine[0].get(key)
                if row is None:
                    _SEEN_FLOWS.setdefault(key, time())
                    # [count, the thread's histogram row of the service once it took a
                    # latency]
                    row = mine[0][key] = [0.0, None]
                if exact:  # (exact str labels only: the same objects give the same row)
                    mine[2][0] = (given, outcome, service, row)
            row[0] += 1.0
            if reason in UPSTREAM_CODES:
                UPSTREAM_ERRORS.labels(service, reason).inc()
            if duration_ms is not None and outcome in ("injected", "forwarded"):
                hist: list[float] | None = row[1]  # (``mine[1][service]``, kept in the row)
                if hist is None:
                    hist = mine[1].get(service)
                    if hist is None:  # as labels() before: the series, even if the next raises
                        _SEEN_LATENCY.setdefault(service, time())
                        hist = mine[1][service] = [0.0] * (_NBUCKETS + 1)
                    row[1] = hist
                amount = duration_ms / 1000.0
                hist[0] += amount  # the sum first, as Histogram.observe
                # Histogram.observe's ``amount <= bound`` for the first bound that holds; NaN
                # holds for none (only the sum takes it). A float's bucket by comparisons of
                # floats (``_BOUNDS`` written out, checked at import; ``hist[1 + bucket]``),
                # the first bucket (a proxied request's usual one) by one; any other
                # amount's by bisection.
                if type(amount) is float:
                    if amount <= 0.005:
                        hist[1] += 1.0
                    elif amount <= 0.1:
                        hist[2 if amount <= 0.01 else 3 if amount <= 0.025 else 4
                             if amount <= 0.05 else 5] += 1.0
                    elif amount <= 2.5:
                        hist[6 if amount <= 0.25 else 7 if amount <= 0.5 else 8
                             if amount <= 1.0 else 9] += 1.0
                    elif amount <= 30.0:
                        hist[10 if amount <= 5.0 else 11 if amount <= 10.0 else 12] += 1.0
                    elif amount > 30.0:  # +Inf's bucket (NaN is in none)
                        hist[13] += 1.0
                else:
                    i = bisect_left(_BOUNDS, amount) if amount == amount else _NBUCKETS
                    if i < _NBUCKETS:
                        hist[i + 1] += 1.0
    except Exception:  # noqa: BLE001, S110 - metrics must never break the request path
        pass


def bind(locked: Callable[[], bool], services: Callable[[], int]) -> None:
    """Make the gauges read the live state at scrape time."""
    LOCKED.set_function(lambda: 1.0 if locked() else 0.0)
    SERVICES.set_function(lambda: float(services()))


def render() -> bytes:
    from prometheus_client.exposition import generate_latest

    return generate_latest(REGISTRY)
