"""Inject: the last stage before the request leaves. Enforce the request's decision (a
refusal, or a passthrough with nothing to add), strip what the agent sent and add the real
credential of the decision's plan (``requestheaders``, so bodies can still stream; a body
substitution waits for the whole body in ``request``)."""

from __future__ import annotations

from mitmproxy import http

from vaultproxy.decoding import limit_accept_encoding
from vaultproxy.errors import BodyTooLarge, VaultproxyError
from vaultproxy.inject import prepare_request, substitute_request_body
from vaultproxy.inject.minted import credential
from vaultproxy.inject.sigv4 import sign_at_head, sign_request
from vaultproxy.stages.ahead import forward_ahead, keep_redactor
from vaultproxy.stages.flowrecord import record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.runtime import Stage


class TunnelBroken(VaultproxyError):
    status, code, public = 500, "internal", "internal proxy error"


class Inject(Stage):
    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # refused by an earlier stage
        st = self.rt.state()
        req = flow.request
        req.headers.pop("proxy-authorization", None)
        rec = record_of(flow)
        tunnel = self.rt.connections.tunnel(flow.client_conn.id)
        if tunnel is None:
            for surface in _surfaces(req):  # a misdirected placeholder is refused
                st.snapshot.index.scan(surface, "")
            req.stream = not rec.hold_body  # buffered for the honeytoken scan (access.py)
            return
        if self.rt.connections.broken(flow.client_conn.id):
            raise TunnelBroken()
        decision = rec.decision
        if decision is None:
            raise TunnelBroken()  # Identify did not run: never inject undecided
        if decision.refusal is not None:
            raise decision.refusal
        plan = decision.plan
        if plan is None:
            return  # passthrough tunnels carry no flows we inspect
        entry = st.session.entry_for(plan.service)
        secret, fields = entry.value, entry.fields
        if rec.minted is not None:  # the token the Mint stage fetched (stages/mint.py)
            secret, fields = credential(rec.minted, plan.service.auth)
        result = prepare_request(req, plan.service, secret, fields, st.snapshot.index)
        rec.injected = result.injected
        keep_redactor(st, rec)
        if rec.injected:
            forward_ahead(st, flow, rec, tunnel.host)
        limit_accept_encoding(req.headers)
        if plan.service.auth == "aws_sigv4":  # signed over the final head (and maybe body)
            wait_body = not sign_at_head(req, plan.service, entry.fields)
            if not wait_body:
                forward_ahead(st, flow, rec, tunnel.host)  # signed: a credential leaves
        else:
            wait_body = plan.substitute_body
        if wait_body:
            length = req.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > plan.max_body:
                raise BodyTooLarge()
            rec.body = (entry, plan.max_body)
        else:
            req.stream = not rec.hold_body  # buffered for the honeytoken scan (access.py)

    @guarded
    def request(self, flow: http.HTTPFlow) -> None:
        rec = record_of(flow)
        pending, rec.body = rec.body, None
        if pending is None or flow.response is not None or rec.service is None:
            return
        entry, limit = pending
        body = flow.request.raw_content or b""
        if len(body) > limit:
            raise BodyTooLarge()
        st = self.rt.state()
        tunnel = self.rt.connections.tunnel(flow.client_conn.id)
        host = tunnel.host if tunnel is not None else flow.request.host
        if rec.service.auth == "aws_sigv4":
            sign_request(flow.request, rec.service, entry.fields, body)
            forward_ahead(st, flow, rec, host)
            return
        if substitute_request_body(flow.request, rec.service, entry, st.snapshot.index):
            rec.injected = True
            forward_ahead(st, flow, rec, host)


def _surfaces(req: http.Request) -> list[bytes]:
    out = [req.path.encode("utf-8", "surrogateescape")]
    for k, v in req.headers.fields:
        out.append(k)
        out.append(v)
    return out
