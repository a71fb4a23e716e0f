"""Record: one audit event per intercepted flow and per refused tunnel (SPEC §8)."""

from __future__ import annotations

import time

from mitmproxy import http

from vaultproxy.audit import AuditEvent, metrics
from vaultproxy.hostnames import normal_host
from vaultproxy.stages import runtime
from vaultproxy.stages.guard import M_DENIED, guarded
from vaultproxy.stages.inject import M_AGENT, M_INJECTED, M_PATH, M_SERVICE, M_T0
from vaultproxy.state import ProxyState

M_AUDITED = "vaultproxy.audited"


def _event(
    st: ProxyState, flow: http.HTTPFlow, event: str, outcome: str, reason: str | None
) -> AuditEvent:
    meta = flow.metadata
    service = meta.get(M_SERVICE)
    t0 = meta.get(M_T0)
    duration = (time.monotonic() - t0) * 1000 if t0 is not None else None
    response = flow.response
    request = flow.request
    if event == "tunnel_refused":
        host = request.host
        if service is None:  # name the registered service it targeted
            service = st.registry.lookup(normal_host(host), request.port)
    else:
        tunnel = st.tunnels.get(flow.client_conn.id)
        host = tunnel.host if tunnel is not None else request.pretty_host
    return AuditEvent(
        event=event,
        agent=meta.get(M_AGENT),
        service=getattr(service, "name", None),
        mode=getattr(service, "mode", None),
        method=request.method,
        host=host,
        path=meta.get(M_PATH) if event != "tunnel_refused" else None,
        status=response.status_code if response is not None else None,
        duration_ms=duration,
        outcome=outcome,
        reason=reason,
    )


def _record(flow: http.HTTPFlow, event: str, outcome: str, reason: str | None) -> None:
    if flow.metadata.get(M_AUDITED):
        return
    st = runtime.current()
    if st is None:
        return
    flow.metadata[M_AUDITED] = True
    st.audit.record(metrics.observed(_event(st, flow, event, outcome, reason)))


class Record:
    def load(self, loader: object) -> None:
        runtime.stage_loaded("Record")

    def done(self) -> None:
        runtime.stage_unloaded("Record")

    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        denied = flow.metadata.get(M_DENIED)
        if denied is not None:
            _record(flow, "tunnel_refused", "denied", denied[0])

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        st = runtime.current()
        if st is not None and M_SERVICE in flow.metadata:
            st.inflight += 1
            flow.metadata["vaultproxy.counted"] = True

    def _finish(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.pop("vaultproxy.counted", False):
            st = runtime.current()
            if st is not None:
                st.inflight -= 1

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)
        denied = flow.metadata.get(M_DENIED)
        if denied is not None:
            _record(flow, "request", "denied", denied[0])
        elif M_SERVICE in flow.metadata:
            injected = flow.metadata.get(M_INJECTED, False)
            _record(flow, "request", "injected" if injected else "forwarded", None)

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)
        denied = flow.metadata.get(M_DENIED)
        if denied is not None:
            _record(flow, "request", "denied", denied[0])
        elif M_SERVICE in flow.metadata:
            _record(flow, "request", "error", "upstream error")

    @guarded
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)
