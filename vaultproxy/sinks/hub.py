"""The audit sinks of one run (SPEC §13): every audit record, from every process, goes to each
configured sink exactly once.

The supervisor owns the sinks. Its own records reach :meth:`SinkHub.offer` from its audit
log (``AuditLog.taps``); a ``--workers`` process writes its records to ``audit.jsonl`` itself
and sends each line to the supervisor over its channel (engine/worker_audit.py), which
offers it here with the worker's pid. So each record is exported once, by one process, with
one set of connections, counters and health, and one process's records stay in order (one
channel, one queue per sink, a failed batch retried before anything newer).

Each sink has its own :class:`~vaultproxy.sinks.sender.Sender`: a bounded queue and a
thread, so a slow, refusing or absent receiver never slows or fails a request.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vaultproxy.audit import metrics
from vaultproxy.config.audit import AuditSettings, TelemetrySettings, split_syslog
from vaultproxy.sinks.record import Record
from vaultproxy.sinks.sender import CAPACITY, DEGRADED_AFTER, Sender
from vaultproxy.sinks.syslog import SyslogSink
from vaultproxy.sinks.webhook import KeySource, WebhookSink

log = logging.getLogger(__name__)

# Internal knobs (tests use short values; not part of the configuration file).
DEGRADED_ENV = "VAULTPROXY_SINK_DEGRADED_AFTER"
CAPACITY_ENV = "VAULTPROXY_SINK_CAPACITY"


class StdoutSink:
    """``stdout``: each record as its ``audit.jsonl`` line (for a container's log driver)."""

    async def send(self, batch: Sequence[Record]) -> None:
        sys.stdout.write("".join(r.line + "\n" for r in batch))
        sys.stdout.flush()


class SinkHub:
    def __init__(self, senders: Sequence[Sender], traces: Sender | None = None,
                 wants_span: Callable[[Record], bool] | None = None) -> None:
        self.senders = list(senders)
        self.traces = traces
        self._wants_span = wants_span

    @property
    def all(self) -> list[Sender]:
        return self.senders + ([self.traces] if self.traces is not None else [])

    def offer(self, line: str, pid: int | None = None) -> None:
        """One record, as written to ``audit.jsonl``; never blocks, never raises."""
        try:
            rec = Record.of(line, pid)
            for sender in self.senders:
                sender.offer(rec)
            if self.traces is not None and self._wants_span is not None \
                    and self._wants_span(rec):
                self.traces.offer(rec)
        except Exception as e:  # noqa: BLE001 - a sink must never break the audit path
            log.error("audit sinks: a record was not queued (%s)", type(e).__name__)

    def start(self) -> None:
        for sender in self.all:
            sender.start()

    def stop(self, timeout: float = 2.0) -> None:
        """All senders drain at once, for ``timeout`` seconds in all."""
        for sender in self.all:
            sender.begin_stop()
        deadline = time.monotonic() + timeout
        for sender in self.all:
            sender.finish_stop(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, dict[str, Any]]:
        return {s.name: s.stats() for s in self.all}

    def problems(self) -> list[str]:
        return [p for p in (s.problem() for s in self.all) if p is not None]


def build(audit: AuditSettings, telemetry: TelemetrySettings, key: KeySource,
          trust_file: Callable[[], Path]) -> SinkHub | None:
    """The hub for ``[audit] sinks`` and ``[telemetry]``; None when there is nothing to feed.
    Nothing is dialled here (a receiver that is down is retried by its sender)."""
    if not audit.sinks and not telemetry.traces:
        return None
    ctx = audit.address_context()
    tuning = _tuning()
    senders: list[Sender] = []
    for name in audit.sinks:
        if name == "stdout":
            senders.append(Sender("stdout", StdoutSink().send, **tuning))
        elif name == "syslog":
            scheme, host, port = split_syslog(audit.syslog)
            sink = SyslogSink(scheme, host, port, ctx)
            senders.append(Sender("syslog", sink.send, close=sink.close, **tuning))
        elif name == "webhook":
            assert audit.webhook_url is not None  # the model requires it with "webhook"
            hook = WebhookSink(audit.webhook_url, ctx, trust_file(), key)
            senders.append(Sender("webhook", hook.send, close=hook.close, **tuning))
        elif name == "otlp":
            # OpenTelemetry + protobuf + requests: ~20 MiB, imported only when configured.
            from vaultproxy.sinks.otlp import OtlpLogSink

            logs = OtlpLogSink(ctx, trust_file())
            _warn_refused("otlp", logs.check())
            senders.append(Sender("otlp", logs.send, close=logs.close, **tuning))
    traces: Sender | None = None
    wants_span = None
    if telemetry.traces:
        from vaultproxy.sinks.otlp import OtlpTraceSink

        spans = OtlpTraceSink(ctx, trust_file())
        _warn_refused("traces", spans.check())
        traces = Sender("traces", spans.send, close=spans.close, **tuning)
        wants_span = spans.wants
    return SinkHub(senders, traces, wants_span)


def _warn_refused(name: str, why: str | None) -> None:
    if why is not None:
        log.error("audit sink %s: %s; its records are queued and dropped until this is fixed",
                  name, why)


def _tuning() -> dict[str, Any]:
    out: dict[str, Any] = {"degraded_after": DEGRADED_AFTER, "capacity": CAPACITY}
    for env, key, kind in ((DEGRADED_ENV, "degraded_after", float),
                           (CAPACITY_ENV, "capacity", int)):
        raw = os.environ.get(env)
        if raw:
            try:
                out[key] = kind(raw)
            except ValueError:
                log.warning("ignoring %s (not a number)", env)
    return out


# -- /metrics -----------------------------------------------------------------------------
class _SinkCollector(Collector):
    def __init__(self) -> None:
        self.hub: SinkHub | None = None

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        hub = self.hub
        if hub is None:
            return
        families = {
            "sent": CounterMetricFamily("vaultproxy_audit_sink_records_sent",
                                        "Records a sink delivered", labels=["sink"]),
            "retried": CounterMetricFamily(
                "vaultproxy_audit_sink_records_retried",
                "Records in a batch whose send failed and was queued again", labels=["sink"]),
            "dropped": CounterMetricFamily(
                "vaultproxy_audit_sink_records_dropped",
                "Records a sink lost (queue full: oldest first; or left at shutdown)",
                labels=["sink"]),
        }
        queued = GaugeMetricFamily("vaultproxy_audit_sink_records_queued",
                                   "Records waiting in a sink's queue", labels=["sink"])
        failing = GaugeMetricFamily("vaultproxy_audit_sink_failing",
                                    "1 while a sink's sends fail", labels=["sink"])
        for name, s in hub.stats().items():
            for key, family in families.items():
                family.add_metric([name], float(s[key]))
            queued.add_metric([name], float(s["queued"]))
            failing.add_metric([name], 0.0 if s["failing_since"] is None else 1.0)
        yield from families.values()
        yield queued
        yield failing


COLLECTOR = _SinkCollector()
metrics.REGISTRY.register(COLLECTOR)


def bind(hub: SinkHub | None) -> None:
    """Make ``/metrics`` report ``hub`` (None: no sink metrics)."""
    COLLECTOR.hub = hub
