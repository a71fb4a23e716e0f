"""Inject: the last stage before the request leaves. Put the decision's plan into effect
through the shared pipeline (core/pipeline.py): strip what the agent sent and add the real
credential at ``requestheaders`` (so bodies can still stream); a body substitution or a
body signature waits for the whole body in ``request``, and so does the whole injection of a
body held for the honeytoken scan (nothing added, no ``forward`` line, before it passed).
A refused decision has no plan and was answered by Identify; an undecided request is refused
here rather than injected."""

from __future__ import annotations

from mitmproxy import http

from vaultproxy.core.decide import Plan
from vaultproxy.core.pipeline import header_names, inject_body, inject_head
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import NotReady, VaultproxyError
from vaultproxy.inject import names as _names
from vaultproxy.stages.ahead import forward_ahead
from vaultproxy.stages.flowrecord import KEY, FlowRecord, handed, idle_unless, record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.runtime import Stage


class Undecided(VaultproxyError):
    status, code, public = 500, "internal", "internal proxy error"


class Inject(Stage):
    @guarded
    @handed
    def requestheaders(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        if rec.answered:
            return  # refused (or served) by an earlier stage
        st = self.rt.live.state  # ``rt.state()``, inline
        if st is None:
            raise NotReady()
        req = flow.request
        headers = req.data.headers  # (``req.headers``)
        fields = headers.fields  # (``header_names(fields)``, its memo's test inline)
        memo = _names._names_memo
        if b"proxy-authorization" in (memo[1] if memo[0] is fields else header_names(fields)):
            headers.pop("proxy-authorization", None)
        tunnel = self.rt.connections.tunnels.get(flow.client_conn.id)
        if tunnel is None:
            st.snapshot.index.scan_all(_surfaces(req), "")  # a misdirected placeholder: refused
            req.stream = not rec.hold_body  # buffered for the honeytoken scan (access.py)
            return
        decision = rec.decision
        if decision is None:
            raise Undecided()  # Identify did not run: never inject undecided
        plan = decision.plan
        if plan is None:
            return  # passthrough tunnels carry no flows we inspect
        if rec.hold_body:
            return  # the body is scanned for honeytokens first (access.py): see ``request``
        self._head(flow, plan, st, rec)

    def _head(self, flow: http.HTTPFlow, plan: Plan, st: ProxyState, rec: FlowRecord) -> None:
        req = flow.request
        done = inject_head(st, req, plan, rec.minted)
        if rec.redactor is None:  # ``keep_redactor``, inline: every injected request
            rec.redactor = st.session.redactor_for(plan.service)
        if done.injected:
            rec.injected = True
            forward_ahead(st, flow, rec)
        if done.wait_body:
            rec.body = done.entry
        else:
            req.stream = not rec.hold_body  # buffered for the honeytoken scan (access.py)

    @guarded
    @idle_unless(rec_true=("hold_body",), rec_set=("body",))
    @handed
    def request(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        decision = rec.decision
        if rec.hold_body and not rec.answered and decision is not None and decision.plan:
            # A body held for the honeytoken scan passed it (RequestGate runs first): only
            # now is the credential added and the ``forward`` line written, so a refused
            # decoy never had either.
            self._head(flow, decision.plan, self.rt.state(), rec)
        entry, rec.body = rec.body, None
        if entry is None or rec.answered or decision is None or decision.plan is None:
            return
        st = self.rt.state()
        if inject_body(st, flow.request, decision.plan, entry) and not rec.injected:
            rec.injected = True
            forward_ahead(st, flow, rec)  # once: the head carried none


def _surfaces(req: http.Request) -> list[bytes]:
    out = [req.path.encode("utf-8", "surrogateescape")]
    for k, v in req.headers.fields:
        out.append(k)
        out.append(v)
    return out
