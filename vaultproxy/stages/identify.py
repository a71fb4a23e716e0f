"""Identify: who is the agent? Read Proxy-Authorization (on CONNECT for tunnels, per request
for plain HTTP), verify the agent token in constant time, check its service scope before
anything is dialled or injected, and never let the header travel further."""

from __future__ import annotations

from mitmproxy import http

from vaultproxy.agents import AgentRecord, parse_proxy_authorization, verify
from vaultproxy.errors import AgentAuthRequired, AgentScope, LockedError
from vaultproxy.hostnames import normal_host
from vaultproxy.stages import runtime
from vaultproxy.stages.guard import guarded
from vaultproxy.state import ProxyState

M_AGENT = "vaultproxy.agent"


def _identify(st: ProxyState, header: str | None) -> AgentRecord | None:
    """The verified agent, None for an allowed anonymous caller; raise to refuse."""
    creds = parse_proxy_authorization(header)
    required = st.registry.config.proxy.require_agent_auth
    if header is None and not required:
        return None
    if st.locked:
        raise LockedError()  # agent hashes live in the keystore: cannot verify yet
    record = verify(st.session.agents, creds.name, creds.token) if creds is not None else None
    if record is None:
        # Wrong credentials are refused even when anonymous use is allowed: an agent that
        # means to be scoped must not silently run unscoped.
        raise AgentAuthRequired()
    return record


def _check_scope(st: ProxyState, agent: AgentRecord | None, host: str, port: int) -> None:
    if agent is None:
        return
    service = st.registry.lookup(normal_host(host), port)
    if service is not None and not agent.allows(service.name):
        raise AgentScope(f"agent {agent.name} may not use service {service.name}")


class Identify:
    def load(self, loader: object) -> None:
        runtime.stage_loaded("Identify")

    def done(self) -> None:
        runtime.stage_unloaded("Identify")

    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        header = flow.request.headers.pop("proxy-authorization", None)
        st = runtime.state()
        agent = _identify(st, header)
        if agent is not None:
            flow.metadata[M_AGENT] = agent.name
        _check_scope(st, agent, flow.request.host, flow.request.port)

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        header = flow.request.headers.pop("proxy-authorization", None)
        if flow.response is not None:
            return
        st = runtime.state()
        if flow.client_conn.id in st.tunnels:
            return  # inside a CONNECT tunnel: the identity was set on the tunnel
        # A plain-HTTP proxy request: each one carries its own credentials.
        agent = _identify(st, header)
        if agent is not None:
            flow.metadata[M_AGENT] = agent.name
        _check_scope(st, agent, flow.request.host, flow.request.port)
