"""Record: the canonical audit line of each intercepted flow and each refused tunnel, from the
flow's record (its decision and what the stages did); written by audit/canonical.py."""

from __future__ import annotations

from typing import Any

from mitmproxy import http

from vaultproxy.audit.canonical import record_decision
from vaultproxy.errors import InvalidRequest
from vaultproxy.hostnames import normal_host
from vaultproxy.seam import refusals
from vaultproxy.stages.flowrecord import record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.mint import token_reason
from vaultproxy.stages.runtime import Runtime, Stage


def _record(
    rt: Runtime, flow: http.HTTPFlow, event: str, outcome: str, reason: str | None,
    status: int | None = None,
) -> None:
    rec = record_of(flow)
    if rec.audited:
        return
    st = rt.current()
    if st is None:
        return
    rec.audited = True
    if event == "request":
        refused = refusals.take(flow.client_conn.id)
        if refused is not None:  # mitmproxy's HTTP/1 reader answered it, not our stages
            outcome, reason, status = "denied", InvalidRequest.code, refused
    request, response = flow.request, flow.response
    decision = rec.decision
    service = decision.service if decision is not None else None
    agent = decision.agent if decision is not None else None
    if decision is not None and decision.target is not None:
        host = decision.target[0]
    elif event == "tunnel_refused":  # refused before it was decided (not ready)
        host = request.host
        service = st.registry.lookup(normal_host(host), request.port)
    else:
        tunnel = rt.connections.tunnel(flow.client_conn.id)
        host = tunnel.host if tunnel is not None else request.pretty_host
    record_decision(
        st.audit,
        event=event,
        agent=agent,
        service=service.name if service is not None else None,
        mode=service.mode if service is not None else None,
        method=request.method,
        host=host,
        path=rec.path if event != "tunnel_refused" else None,
        status=status if status is not None else (
            response.status_code if response is not None else None),
        started=rec.t0,
        outcome=outcome,
        reason=reason,
    )


def refused_head(rt: Runtime, client: Any, status: int) -> None:
    """mitmproxy refused a request head it could not parse: no flow, still a record (the
    seam calls it: ``seam.defences.Hooks``)."""
    st = rt.current()
    if st is None:
        return
    tunnel = rt.connections.tunnel(client.id)
    service = tunnel.service if tunnel is not None else None
    record_decision(
        st.audit, event="request", agent=tunnel.agent if tunnel is not None else None,
        service=service.name if service is not None else None,
        mode=service.mode if service is not None else None, method=None,
        host=tunnel.host if tunnel is not None else None, path=None, status=status,
        started=None, outcome="denied", reason=InvalidRequest.code,
    )


class Record(Stage):
    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        denied = record_of(flow).denied
        if denied is not None:
            _record(self.rt, flow, "tunnel_refused", "denied", denied[0])

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        st = self.rt.current()
        rec = record_of(flow)
        if st is not None and rec.service is not None:
            st.inflight += 1
            rec.counted = True

    def _finish(self, flow: http.HTTPFlow) -> None:
        rec = record_of(flow)
        if rec.counted:
            rec.counted = False
            st = self.rt.current()
            if st is not None:
                st.inflight -= 1

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)
        rec = record_of(flow)
        if rec.denied is not None:
            _record(self.rt, flow, "request", "denied", rec.denied[0])
        elif rec.service is not None:
            outcome = "injected" if rec.injected else "forwarded"
            _record(self.rt, flow, "request", outcome, token_reason(rec))

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)
        rec = record_of(flow)
        if rec.denied is not None:
            _record(self.rt, flow, "request", "denied", rec.denied[0])
        elif rec.service is not None:
            _record(self.rt, flow, "request", "error", "upstream error")

    @guarded
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)
