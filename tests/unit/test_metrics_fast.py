"""audit/metrics.py's own FLOWS/LATENCY collectors against prometheus_client's ``Counter`` and
``Histogram`` (what they replace), fed by the old ``observed`` (kept here as the reference):
the same ``/metrics`` exposition after seeded events, ``_created`` values aside."""

from __future__ import annotations

import math
import random
import re
import threading
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import Counter, Histogram
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import CollectorRegistry

from vaultproxy.audit import metrics
from vaultproxy.audit.event import AuditEvent, request_event

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Reference:
    """The metrics as they were: prometheus_client objects and the old ``observed``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.flows = Counter("vaultproxy_flows", "Intercepted requests by service and outcome",
                             ["service", "outcome"], registry=self.registry)
        self.latency = Histogram(
            "vaultproxy_injection_latency_seconds",
            "Time from request start (before injection) to the upstream's response, by service",
            ["service"], registry=self.registry, buckets=BUCKETS,
        )
        self.upstream = Counter(
            "vaultproxy_upstream_errors", "Upstream connection/TLS failures by service and code",
            ["service", "code"], registry=self.registry,
        )
        self._flows: dict[Any, Any] = {}
        self._latency: dict[Any, Any] = {}

    def observed(self, event: Any) -> Any:
        try:
            if event.event == "request":
                service = event.service or "-"
                key = (service, event.outcome)
                flows = self._flows.get(key)
                if flows is None:
                    flows = self._flows[key] = self.flows.labels(service, event.outcome)
                flows.inc()
                if event.reason in metrics.UPSTREAM_CODES:
                    self.upstream.labels(service, event.reason).inc()
                if event.duration_ms is not None and event.outcome in ("injected", "forwarded"):
                    latency = self._latency.get(service)
                    if latency is None:
                        latency = self._latency[service] = self.latency.labels(service)
                    latency.observe(event.duration_ms / 1000.0)
        except Exception:  # noqa: BLE001, S110
            pass
        return event


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> CollectorRegistry:
    """Fresh collectors behind ``metrics.observed``, in their own registry, in the order
    audit/metrics.py registers them."""
    monkeypatch.setattr(metrics, "_THREADS", {})
    monkeypatch.setattr(metrics, "_LOCAL", threading.local())  # (each thread's rows in it)
    monkeypatch.setattr(metrics, "_SEEN_FLOWS", {})
    monkeypatch.setattr(metrics, "_SEEN_LATENCY", {})
    registry = CollectorRegistry(auto_describe=True)
    flows, latency = metrics._Flows(), metrics._Latency()  # on the dicts above
    registry.register(flows)
    registry.register(latency)
    upstream = Counter(
        "vaultproxy_upstream_errors", "Upstream connection/TLS failures by service and code",
        ["service", "code"], registry=registry,
    )
    monkeypatch.setattr(metrics, "UPSTREAM_ERRORS", upstream)
    return registry


_CREATED = re.compile(rb"^(\S+_created(?:\{.*\})?) \S+$", re.M)


def _exposition(registry: CollectorRegistry, openmetrics: bool = False) -> bytes:
    text = (generate_openmetrics if openmetrics else generate_latest)(registry)
    created = _CREATED.findall(text)
    assert all(c for c in created)
    return _CREATED.sub(rb"\1 CREATED", text)


# Labels of every kind production writes (service None is "-"), and some it could: quotes,
# backslashes, newlines and non-ASCII must be escaped alike.
SERVICES = [None, "hi", "github", "svc-single", "a_b.c", "\u00fcn\u00efcode", 'q"uo\\te\nnl', ""]
OUTCOMES = ["injected", "forwarded", "denied", "blocked", "ok", "streamed", "forwarding",
            "error", "refused", "upstream_error"]
REASONS = [None, None, "upstream_unreachable", "upstream_tls", "not_allowed", "deadline"]


def _duration(rng: random.Random) -> float | None:
    kind = rng.randrange(8)
    if kind == 0:
        return None
    if kind == 1:  # exactly on a bucket bound (in ms), and just around it
        b = rng.choice(BUCKETS) * 1000
        return rng.choice([b, b + 0.001, b - 0.001, math.nextafter(b, 0)])
    if kind == 2:
        return rng.choice([0.0, 0, 1, 30000, 30000.001, 1e9, 5e12])
    return rng.expovariate(1 / 200) if kind < 6 else rng.uniform(0, 40000)


def _events(seed: int, n: int) -> list[Any]:
    rng = random.Random(seed)
    out: list[Any] = []
    for _ in range(n):
        service, outcome = rng.choice(SERVICES), rng.choice(OUTCOMES)
        reason, duration = rng.choice(REASONS), _duration(rng)
        if rng.random() < 0.7:  # the Record stage's line
            out.append(request_event("request", outcome, "agent", service, "host_inject",
                                     "GET", "h.example", "/x", 200, duration, reason))
        else:  # a worker's record, parsed by the supervisor; or an event not counted
            out.append(AuditEvent(event=rng.choice(["request", "request", "forward", "sync"]),
                                  service=service, outcome=outcome, reason=reason,
                                  duration_ms=duration))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exposition_is_prometheus_clients(fast: CollectorRegistry, seed: int) -> None:
    ref = _Reference()
    assert _exposition(fast) == _exposition(ref.registry)  # no series yet: HELP/TYPE only
    for n, event in enumerate(_events(seed, 3000)):
        assert metrics.observed(event) is event
        ref.observed(event)
        if n in (0, 1, 10, 500):
            assert _exposition(fast) == _exposition(ref.registry)
    text = _exposition(fast)
    assert text == _exposition(ref.registry)
    assert _exposition(fast, True) == _exposition(ref.registry, True)
    # every kind reached: each bucket, escaped labels, the upstream counter, both families
    for le in metrics._Latency.LE:
        assert f'le="{le}"'.encode() in text
    assert rb'service="q\"uo\\te\nnl"' in text and b'service="-"' in text
    assert b"vaultproxy_upstream_errors_total{" in text
    # values, not only their text: sums are the same float (same additions, same order)
    for fam_f, fam_r in zip(fast.collect(), ref.registry.collect(), strict=True):
        assert (fam_f.name, fam_f.type, fam_f.documentation) == (
            fam_r.name, fam_r.type, fam_r.documentation)
        sf = [(s.name, s.labels, s.value) for s in fam_f.samples if not s.name.endswith("_created")]
        sr = [(s.name, s.labels, s.value) for s in fam_r.samples if not s.name.endswith("_created")]
        assert sf == sr
        assert [type(s.value) for s in fam_f.samples] == [type(s.value) for s in fam_r.samples]


def test_every_bucket_edge_counts_as_prometheus_clients(fast: CollectorRegistry) -> None:
    """The first bucket by one comparison, the others by bisection (``counted``): each bound
    exactly, a float either side of it, 0, -0.0, negatives, NaN, infinities, huge values,
    ints, for two outcomes of one service (one histogram row, kept in both flow rows)
    and a service whose first request had no latency: the same samples as Histogram."""
    ref = _Reference()
    values: list[Any] = [0, 0.0, -0.0, -1.0, -math.inf, math.inf, math.nan, 1e300, 5, 5e12]
    for bound in BUCKETS:
        ms = bound * 1000
        values += [ms, math.nextafter(ms, 0), math.nextafter(ms, math.inf), ms + 0.001,
                   ms - 0.001, int(ms) if ms == int(ms) else ms]
    values += [math.nextafter(0.005, 1) * 1000, 0.005 * 1000, 4.999999999999999]
    events: list[Any] = [request_event("request", "denied", None, "late", None, None, None,
                                       None, 403, None, None)]
    for v in values:
        for service, outcome in (("hi", "injected"), ("hi", "forwarded"), ("late", "injected")):
            events.append(_Event(service, outcome, None, v))
    for event in events:
        metrics.observed(event)
        ref.observed(event)
    assert _exposition(fast) == _exposition(ref.registry)
    for fam_f, fam_r in zip(fast.collect(), ref.registry.collect(), strict=True):
        sf = [(s.name, s.labels, s.value) for s in fam_f.samples if not s.name.endswith("_created")]
        sr = [(s.name, s.labels, s.value) for s in fam_r.samples if not s.name.endswith("_created")]
        assert repr(sf) == repr(sr)  # (repr: NaN sums compare too)
    get = fast.get_sample_value
    assert get("vaultproxy_injection_latency_seconds_bucket",
               {"service": "hi", "le": "0.005"}) == 24  # the first bucket reached (2 x 12)


def test_created_is_the_first_observation(fast: CollectorRegistry) -> None:
    import time

    t0 = time.time()
    metrics.observed(request_event("request", "injected", None, "hi", None, None, None, None,
                                   200, 12.0, None))
    t1 = time.time()
    created = [s.value for fam in fast.collect() for s in fam.samples
               if s.name.endswith("_created")]
    assert len(created) == 2 and all(t0 <= c <= t1 for c in created)


def test_module_registry_order_is_unchanged() -> None:
    names = [m.name for m in metrics.REGISTRY.collect()]
    assert names[:3] == ["vaultproxy_flows", "vaultproxy_injection_latency_seconds",
                         "vaultproxy_upstream_errors"]


def test_threads_lose_no_update(fast: CollectorRegistry) -> None:
    """``observed`` from several threads while another scrapes: every update is counted."""
    line = request_event("request", "injected", None, "hi", None, None, None, None, 200, 7.0,
                         None)
    metrics.observed(line)  # first seen on this thread: its _created stays
    created = [s for fam in fast.collect() for s in fam.samples if s.name.endswith("_created")]
    assert len(created) == 2
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            generate_latest(fast)

    started = threading.Barrier(4)  # all alive at once: no thread reuses an ended one's id

    def feed() -> None:
        started.wait()
        for _ in range(20_000):
            metrics.observed(line)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    threads = [threading.Thread(target=feed) for _ in range(4)]
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
        stop.set()
        scraper.join()
    get = fast.get_sample_value
    assert get("vaultproxy_flows_total", {"service": "hi", "outcome": "injected"}) == 80_001
    assert get("vaultproxy_injection_latency_seconds_count", {"service": "hi"}) == 80_001
    assert get("vaultproxy_injection_latency_seconds_bucket",
               {"service": "hi", "le": "0.005"}) == 0
    assert get("vaultproxy_injection_latency_seconds_bucket",
               {"service": "hi", "le": "0.01"}) == 80_001
    assert len(metrics._THREADS) == 5  # each thread counted in rows of its own
    assert [s for fam in fast.collect() for s in fam.samples
            if s.name.endswith("_created")] == created


class _Odd(str):
    """A str subclass (its ``str()`` is its value). One whose ``__str__`` said something
    else is left out: the old cache, keyed by the raw value, then counted a later equal plain
    str under the subclass's label; the new code labels each by its ``str()``."""


class _Event:
    """An event with values no caller writes today (the model validates them): the fast
    path must still count as the old one did, or skip as it did (it raised)."""

    event = "request"

    def __init__(self, service: Any, outcome: Any, reason: Any, duration_ms: Any) -> None:
        self.service, self.outcome = service, outcome
        self.reason, self.duration_ms = reason, duration_ms


def test_odd_values_count_as_before(fast: CollectorRegistry) -> None:
    ref = _Reference()
    odd: list[Any] = [
        _Event(_Odd("x"), "injected", None, 3.0), _Event("s", _Odd("injected"), None, 3.0),
        _Event(None, None, None, 1.0), _Event(7, "forwarded", "upstream_tls", 2),
        _Event(["u"], "injected", None, 1.0), _Event("s", {"o": 1}, None, 1.0),
        _Event("s", "injected", None, math.nan), _Event("s", "injected", None, -5.0),
        _Event("s", "injected", None, math.inf), _Event("s", "injected", None, -math.inf),
        _Event("s", "injected", None, "12"), _Event("s", "forwarded", None, True),
        _Event("", "injected", None, 10**400), _Event("s", "injected", ["r"], 1.0),
    ]
    for event in odd:
        assert metrics.observed(event) is event
        ref.observed(event)
        assert _exposition(fast) == _exposition(ref.registry)


class _Kept:
    """A sink that keeps what ``decision_record`` hands it (and counts metrics here)."""

    counts_metrics = True

    def __init__(self) -> None:
        self.events: list[Any] = []

    def record(self, event: Any) -> None:
        self.events.append(event)


@pytest.mark.parametrize("seed", [4, 5])
def test_decision_record_counts_as_observed(fast: CollectorRegistry, seed: int) -> None:
    """``canonical.decision_record`` counts its record by ``metrics.counted`` from the values
    the record was made of (no field read back from it): the same exposition, sample values
    and types as the old ``observed`` fed the record itself, on seeded values (odd ones too:
    a str subclass, an int, an unhashable label, an empty service)."""
    import time

    from vaultproxy.audit.canonical import decision_record

    ref = _Reference()
    sink = _Kept()
    rng = random.Random(seed)
    odd_services: list[Any] = [_Odd("x"), 7, ["u"], ""]
    odd_outcomes: list[Any] = [_Odd("injected"), 7, {"o": 1}]
    for n in range(3000):
        service = rng.choice(SERVICES + odd_services) if rng.random() < 0.1 else rng.choice(
            SERVICES)
        outcome = rng.choice(odd_outcomes) if rng.random() < 0.05 else rng.choice(OUTCOMES)
        started = None if rng.random() < 0.2 else time.monotonic() - rng.expovariate(5)
        event = rng.choice(["request", "request", "request", "forward", "tunnel_refused"])
        decision_record(sink, event, "agent", service, "host_inject", "GET", "h.example", "/x",
                        200, started, outcome, rng.choice(REASONS + [["r"]]))
        ref.observed(sink.events[-1])
        if n in (0, 1, 10, 500):
            assert _exposition(fast) == _exposition(ref.registry)
    assert _exposition(fast) == _exposition(ref.registry)
    assert _exposition(fast, True) == _exposition(ref.registry, True)
    for fam_f, fam_r in zip(fast.collect(), ref.registry.collect(), strict=True):
        sf = [(s.name, s.labels, s.value) for s in fam_f.samples if not s.name.endswith("_created")]
        sr = [(s.name, s.labels, s.value) for s in fam_r.samples if not s.name.endswith("_created")]
        assert sf == sr
    text = _exposition(fast)  # twin: every kind reached
    assert b"vaultproxy_upstream_errors_total{" in text and b'service="7"' in text
    assert b"vaultproxy_injection_latency_seconds_sum" in text
