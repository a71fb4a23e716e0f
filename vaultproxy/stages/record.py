"""Record: the canonical audit line of each intercepted flow and each refused tunnel: the
flow's decision and its outcome (``denied`` when ``FlowRecord.refusal`` is set, else
``injected``, ``forwarded`` or ``error``); written by audit/canonical.py. A flow nothing
decided (refused before Identify ran) is recorded with its tunnel's decision, else its own
request target."""

from __future__ import annotations

import logging
import time
from typing import Any

from mitmproxy import http

from vaultproxy.audit.canonical import ahead_request, decision_record, record_decision
from vaultproxy.errors import ClientDisconnected, InvalidRequest, UpstreamTimeout
from vaultproxy.net.hostnames import normal_host
from vaultproxy.seam import deadlines, refusals
from vaultproxy.seam.aftersend import KEY as AFTER
from vaultproxy.seam.aftersend import Later
from vaultproxy.seam.engine_errors import classify_engine_error, client_gone
from vaultproxy.stages.ahead import METHOD_TEXT
from vaultproxy.stages.flowrecord import KEY, FlowRecord, Outcome, handed, record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.mint import token_reason
from vaultproxy.stages.runtime import Runtime, Stage

logger = logging.getLogger(__name__)


def _record(
    rt: Runtime, flow: http.HTTPFlow, event: str, outcome: Outcome, reason: str | None,
    status: int | None = None, rec: FlowRecord | None = None, later: Later | None = None,
) -> None:
    """``later``: the flow's ``Later`` (seam/aftersend.py): the record is made now, exactly
    as without it, and written right after the response's send."""
    if rec is None:
        rec = record_of(flow)
    if rec.outcome is not None:
        return
    st = rt.live.state  # ``rt.current()``
    if st is None:
        return
    if event == "request":
        marked = refusals._marked  # (``refusals.take``, only when any connection is marked)
        if marked:
            refused = marked.pop(flow.client_conn.id, None)
            if refused is not None:  # mitmproxy's HTTP/1 reader answered it, not our stages
                outcome, reason, status = "denied", InvalidRequest.code, refused
    rec.outcome = outcome
    request, response = flow.request, flow.response
    decision = rec.decision
    if later is not None:
        made = rec.ahead  # the flow's ``forward`` line's texts (stages/ahead.py)
        if (
            made is not None and made[4] is decision and made[5] is request.data.method
            and made[6] is rec.path and event == "request"
        ):
            # the very decision, raw method and path that line was made of: the same agent,
            # service, mode, method, host and path (``Decision`` and ``Service`` are frozen),
            # so the same texts; the rest is taken as ``decision_record`` takes it
            if status is None and response is not None:
                status = response.data.status_code
            if ahead_request(st.audit, made, status, rec.t0, outcome, reason, later):
                return
    if decision is None and event == "request":  # refused before Identify decided it
        tunnel = rt.connections.tunnel(flow.client_conn.id)
        decision = tunnel.decision if tunnel is not None else None  # its CONNECT's
    service = decision.service if decision is not None else None
    agent = decision.agent if decision is not None else None
    if decision is not None and decision.target is not None:
        host = decision.target[0]
    elif event == "tunnel_refused":  # refused before it was decided (not ready)
        host = request.host
        service = st.registry.lookup(normal_host(host), request.port)
    else:
        host = request.pretty_host
    if status is None and response is not None:
        status = response.data.status_code  # (``response.status_code``)
    raw = request.data.method  # ``request.method`` (as stages/ahead.py reads it)
    method = METHOD_TEXT.get(raw) if type(raw) is bytes else None
    decision_record(  # record_decision by position
        st.audit, event, agent,
        service.name if service is not None else None,
        service.mode if service is not None else None,
        request.method if method is None else method, host,
        rec.path if event != "tunnel_refused" else None, status, rec.t0, outcome, reason,
        None, later,
    )


class EveryInterval:
    """At most one log line per key per ``interval`` seconds; the next says how many it
    stood for (a down upstream under load must not become a log line per request)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[object, float] = {}
        self._quiet: dict[object, int] = {}

    def allow(self, key: object) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return False
        if len(self._last) > 4096:  # bounded: forget old keys
            self._last.clear()
        self._last[key] = now
        return True

    def since(self, key: object) -> str:
        n = self._quiet.pop(key, 0)
        return f" (and {n} more since the last line)" if n else ""


def _error_code(flow: http.HTTPFlow) -> tuple[int, str]:
    """The status and code for a flow that ended in an error (the agent got this answer,
    or, with a response already under way, its connection closed)."""
    if deadlines.timed_out(flow.client_conn.id) is not None:
        return UpstreamTimeout.status, UpstreamTimeout.code
    if client_gone(flow):  # the agent cut it: not the upstream's failure
        return ClientDisconnected.status, ClientDisconnected.code
    message = flow.error.msg if flow.error is not None else ""
    status, code, _ = classify_engine_error(502, message)
    return status, code


def refused_head(rt: Runtime, client: Any, status: int) -> None:
    """mitmproxy refused a request head it could not parse: no flow, still a record (the
    seam calls it: ``seam.defences.Hooks``)."""
    st = rt.current()
    if st is None:
        return
    tunnel = rt.connections.tunnel(client.id)
    decision = tunnel.decision if tunnel is not None else None
    service = decision.service if decision is not None else None
    record_decision(
        st.audit, event="request", agent=decision.agent if decision is not None else None,
        service=service.name if service is not None else None,
        mode=service.mode if service is not None else None, method=None,
        host=tunnel.host if tunnel is not None else None, path=None, status=status,
        started=None, outcome="denied", reason=InvalidRequest.code,
    )


class Record(Stage):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self._connect_log = EveryInterval(5.0)
        # a flow counted in ProxyState.inflight: its record's ``inflight`` (a set of flow ids
        # here before: an add, a look-up and a discard per request)

    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        refusal = record_of(flow).refusal
        if refusal is not None:
            _record(self.rt, flow, "tunnel_refused", "denied", refusal.code)

    @guarded
    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """A CONNECT refused after our stages let it through (the dial failed or timed out):
        the ResponseGate put our error on it; audit and log the code the agent got."""
        rec = record_of(flow)
        resp = flow.response
        if rec.refusal is not None or rec.outcome is not None or resp is None:
            return
        code = resp.headers.get("x-vaultproxy-error", "upstream_unreachable")
        target = f"{flow.request.host}:{flow.request.port}"
        if self._connect_log.allow((target, code)):  # the audit has every one
            logger.warning("CONNECT %s refused: %d %s%s", target, resp.status_code, code,
                           self._connect_log.since((target, code)))
        _record(self.rt, flow, "tunnel_refused", "error", code, resp.status_code)

    @guarded
    @handed
    def requestheaders(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        st = self.rt.live.state  # ``rt.current()``
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        decision = rec.decision
        if st is not None and decision is not None and decision.service is not None:
            st.inflight += 1
            rec.inflight = True

    def _finish(self, flow: http.HTTPFlow) -> None:
        rec: FlowRecord | None = flow.metadata.get(KEY)  # (none made: a flow without one
        if rec is not None and rec.inflight:  # was never counted)
            rec.inflight = False
            st = self.rt.live.state  # ``rt.current()``
            if st is not None:
                st.inflight -= 1

    @guarded
    @handed
    def response(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        metadata = flow.metadata
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = metadata.get(KEY) or record_of(flow)
        if rec.inflight:  # ``self._finish(flow)``, without its call
            rec.inflight = False
            st = self.rt.live.state  # ``rt.current()``
            if st is not None:
                st.inflight -= 1
        decision = rec.decision
        # (the lean layer's ``Later``, when it sends this response whole: the record is
        # written right after the send, seam/aftersend.py)
        if rec.refusal is not None:
            _record(self.rt, flow, "request", "denied", rec.refusal.code, None, rec,
                    metadata.get(AFTER))
        elif decision is not None and decision.service is not None:
            outcome: Outcome = "injected" if rec.injected else "forwarded"
            _record(self.rt, flow, "request", outcome,  # (by position: once per request)
                    token_reason(rec) if rec.minted is not None else None, None, rec,
                    metadata.get(AFTER))

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)
        rec = record_of(flow)
        decision = rec.decision
        if rec.refusal is not None:
            _record(self.rt, flow, "request", "denied", rec.refusal.code)
        elif decision is not None and decision.service is not None:
            status, code = _error_code(flow)
            _record(self.rt, flow, "request", "error", code, status)

    @guarded
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)
