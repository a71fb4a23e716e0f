"""Where audit records go besides ``audit.jsonl`` (SPEC §13): stdout, syslog, OTLP logs, a
signed webhook, and OTLP request spans; batched and retried off the request path."""

from __future__ import annotations

from vaultproxy.sinks.hub import SinkHub, bind, build

__all__ = ["SinkHub", "bind", "build"]
