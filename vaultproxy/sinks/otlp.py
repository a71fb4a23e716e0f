"""The ``otlp`` sink and ``[telemetry] traces``: audit records as OpenTelemetry log records,
and one span per proxied request, exported over OTLP/HTTP (protobuf) by the OpenTelemetry
SDK's own exporters, configured by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_{LOGS,TRACES}_ENDPOINT``, ``..._HEADERS``, ``..._TIMEOUT``,
``..._CERTIFICATE``, ``..._COMPRESSION``). Resource: ``service.name = "vaultproxy"``.

A log record's body is the record's JSON line; each non-null field is also an attribute
(``vaultproxy.<field>``), the process that made it is ``process.pid``.

A span is built from a ``request`` record after the fact (start = ``ts`` - ``duration_ms``),
so every process's requests become spans in the one process that exports (the sinks live in
the supervisor). Its attributes are the service, agent, method, status, outcome, reason and
duration; never the host, the path, a query or a header value.

Export goes through vaultproxy's own queue (sinks/sender.py), not the SDK's batch
processors, so that all sinks batch, retry, drop and count the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from vaultproxy import __version__
from vaultproxy.net.egress import AddressContext
from vaultproxy.sinks.egress import CheckedSession, EgressDenied, check_url
from vaultproxy.sinks.record import Record
from vaultproxy.sinks.sender import SinkFailed

SCOPE = InstrumentationScope("vaultproxy.audit", __version__)
DEFAULT_BASE = "http://localhost:4318"
SPAN_FIELDS = ("service", "agent", "method", "status", "outcome", "reason", "mode")
_ids = RandomIdGenerator()


def resource() -> Resource:
    """``OTEL_RESOURCE_ATTRIBUTES`` may add attributes; ``service.name`` stays vaultproxy."""
    return Resource.create().merge(
        Resource({"service.name": "vaultproxy", "service.version": __version__}))


def endpoint(signal: str) -> str:
    """The URL the SDK would use for ``signal`` ("logs" or "traces"), from the environment."""
    specific = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific:
        return specific
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_BASE
    return f"{base.removesuffix('/')}/v1/{signal}"


def _certificate(signal: str, trust_file: Path) -> str | None:
    """Our trust file (system CAs + ``[audit] ca_cert``) unless the operator set the OTEL
    certificate variables, which the SDK then reads itself."""
    if os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_CERTIFICATE") or os.environ.get(
            "OTEL_EXPORTER_OTLP_CERTIFICATE"):
        return None
    return str(trust_file)


def _nanos(ts: object) -> int | None:
    if not isinstance(ts, str):
        return None
    try:
        return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return None


def _attr(value: object) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    return json.dumps(value, separators=(",", ":"))


def log_record(rec: Record, res: Resource) -> ReadableLogRecord:
    data = rec.fields()
    attributes = {f"vaultproxy.{k}": _attr(v) for k, v in data.items() if v is not None}
    attributes["process.pid"] = rec.pid
    refused = data.get("outcome") in ("denied", "refused", "blocked")
    return ReadableLogRecord(
        LogRecord(
            timestamp=_nanos(data.get("ts")),
            severity_number=SeverityNumber.WARN if refused else SeverityNumber.INFO,
            severity_text="WARN" if refused else "INFO",
            body=rec.line,
            attributes=attributes,
            event_name=f"vaultproxy.audit.{data.get('event') or 'record'}",
        ),
        resource=res,
        instrumentation_scope=SCOPE,
    )


def span_of(rec: Record, res: Resource) -> ReadableSpan | None:
    """The span of one proxied request's ``request`` record; None for any other record."""
    data = rec.fields()
    end = _nanos(data.get("ts"))
    if data.get("event") != "request" or end is None:
        return None
    duration = data.get("duration_ms")
    start = end - int(float(duration) * 1e6) if isinstance(duration, int | float) else end
    attributes: dict[str, Any] = {}
    for key in SPAN_FIELDS:
        value = data.get(key)
        if value is not None:
            attributes[_SPAN_KEYS.get(key, f"vaultproxy.{key}")] = _attr(value)
    if isinstance(duration, int | float):
        attributes["vaultproxy.duration_ms"] = float(duration)
    attributes["process.pid"] = rec.pid
    status = data.get("status")
    failed = isinstance(status, int) and status >= 500
    context = SpanContext(_ids.generate_trace_id(), _ids.generate_span_id(), is_remote=False,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return ReadableSpan(
        name=f"{data.get('method') or 'request'} {data.get('service') or '-'}",
        context=context, resource=res, attributes=attributes, kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR if failed else StatusCode.UNSET),
        start_time=start, end_time=end, instrumentation_scope=SCOPE,
    )


_SPAN_KEYS = {"method": "http.request.method", "status": "http.response.status_code"}


class OtlpLogSink:
    def __init__(self, ctx: AddressContext, trust_file: Path) -> None:
        self.url = endpoint("logs")
        self.ctx = ctx
        self.resource = resource()
        self.exporter = OTLPLogExporter(
            endpoint=self.url, certificate_file=_certificate("logs", trust_file),
            session=CheckedSession(ctx))

    def check(self) -> str | None:
        """Why the endpoint is refused by the egress policy now (for a start-up line)."""
        return _refused(self.url, self.ctx)

    async def send(self, batch: Sequence[Record]) -> None:
        result = self.exporter.export([log_record(r, self.resource) for r in batch])
        if result is not LogRecordExportResult.SUCCESS:
            raise SinkFailed(_failed(self.url, self.ctx))

    async def close(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]


class OtlpTraceSink:
    def __init__(self, ctx: AddressContext, trust_file: Path) -> None:
        self.url = endpoint("traces")
        self.ctx = ctx
        self.resource = resource()
        self.exporter = OTLPSpanExporter(
            endpoint=self.url, certificate_file=_certificate("traces", trust_file),
            session=CheckedSession(ctx))

    def check(self) -> str | None:
        return _refused(self.url, self.ctx)

    @staticmethod
    def wants(rec: Record) -> bool:
        """A cheap test on the request path (the conversion happens in the sender's thread):
        a record line names its event as the second field, ``"event":"request"``."""
        return '"event":"request"' in rec.line

    async def send(self, batch: Sequence[Record]) -> None:
        spans = [s for s in (span_of(r, self.resource) for r in batch) if s is not None]
        if not spans:
            return
        result = self.exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            raise SinkFailed(_failed(self.url, self.ctx))

    async def close(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]


def _refused(url: str, ctx: AddressContext) -> str | None:
    try:
        check_url(url, ctx)
    except EgressDenied as e:
        return str(e)
    return None


def _failed(url: str, ctx: AddressContext) -> str:
    """The reason a failed export gives: the egress refusal if that is it, else generic
    (the exporter logged the status itself)."""
    return _refused(url, ctx) or "the OTLP export failed (see the log line before)"
