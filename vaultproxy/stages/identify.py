"""Identify: adapt a CONNECT, or a request, to ``Facts`` and take the one ``decide()`` for it.

Proxy-Authorization is read (on CONNECT for tunnels, per request for plain HTTP) and never
travels further. A CONNECT or plain-HTTP request that the decision refuses is answered here,
before anything is dialled; a request inside a tunnel keeps its decision in the flow's
record, and Inject, the last stage before a credential, enforces it (after the RequestGate's
shape checks)."""

from __future__ import annotations

import time

from mitmproxy import http

from vaultproxy.decide import Decision, Facts, decide
from vaultproxy.stages import access
from vaultproxy.stages.flowrecord import record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.mtls import cert_agent_of
from vaultproxy.stages.runtime import Stage
from vaultproxy.state import ProxyState


def _decide(st: ProxyState, facts: Facts) -> Decision:
    agents = None if st.locked else st.session.agents
    return decide(facts, st.registry, agents)


class Identify(Stage):
    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        header = access.take_proxy_authorization(self.rt, flow)  # ACCESS: honeytokens
        req = flow.request
        facts = Facts("connect", req.host, req.port, proxy_authorization=header, now=time.time(),
                      cert_agent=cert_agent_of(self.rt, flow.client_conn))
        decision = record_of(flow).decision = _decide(self.rt.state(), facts)
        if decision.refusal is not None:
            raise decision.refusal

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        header = access.take_proxy_authorization(self.rt, flow)  # ACCESS: honeytokens
        if flow.response is not None:
            return
        st = self.rt.state()
        req = flow.request
        rec = record_of(flow)
        tunnel = self.rt.connections.tunnel(flow.client_conn.id)
        if tunnel is not None:
            facts = Facts(
                "connect", tunnel.host, tunnel.port, host_header=req.host_header or "",
                sni=tunnel.sni, scheme=req.scheme, agent=tunnel.agent,
                agent_digest=tunnel.agent_digest, now=time.time(), cert_agent=tunnel.cert_agent,
            )
            rec.decision = _decide(st, facts)
            rec.agent, rec.service = tunnel.agent, tunnel.service
            return  # Inject enforces it
        # A plain-HTTP proxy request: each one carries its own credentials.
        facts = Facts("plain", req.host, req.port, proxy_authorization=header, scheme=req.scheme,
                      now=time.time(), cert_agent=cert_agent_of(self.rt, flow.client_conn))
        decision = rec.decision = _decide(st, facts)
        rec.agent = decision.agent
        if decision.refusal is not None:
            raise decision.refusal
