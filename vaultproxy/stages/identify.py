"""Identify: adapt a CONNECT, or a request, to ``Facts`` and take the one ``decide()`` for it.

Proxy-Authorization is read (on CONNECT for tunnels, per request for plain HTTP) and never
travels further. This is the one place a decision's refusal is enforced: the CONNECT, the
plain-HTTP request or the request inside a tunnel is answered here, before anything is
dialled, checked or injected. Raising it hands it to ``guard.deny``, which records it
(``FlowRecord.refusal``), the fact every later stage reads; a refused decision carries no
plan either."""

from __future__ import annotations

import time

from mitmproxy import http

from vaultproxy.core.decide import Decision, Facts, agent_still_valid, decide
from vaultproxy.core.pipeline import header_names
from vaultproxy.core.pipeline import host_header as request_host_header
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import NotReady, VaultproxyError
from vaultproxy.inject import names as _names
from vaultproxy.stages import access
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import KEY, FlowRecord, record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.mtls import cert_agent_of
from vaultproxy.stages.runtime import Stage


class TunnelBroken(VaultproxyError):
    """A hook failed earlier on this connection: refuse every request on it."""

    status, code, public = 500, "internal", "internal proxy error"


def _decide(st: ProxyState, facts: Facts) -> Decision:
    agents = None if st.locked else st.session.agents
    return decide(facts, st.registry, agents)


def _in_tunnel(st: ProxyState, tunnel: Tunnel, req: http.Request,
               seen: tuple[object, tuple[bytes, ...]] | None = None) -> Decision:
    """``decide()`` for a request inside ``tunnel``, reusing the tunnel's last decision when
    nothing it was made from changed. ``seen``: a header fields tuple and its
    ``header_names``, if the caller has them (used only when the request's fields are still
    that very tuple: ``header_names`` is computed otherwise).

    For a request inside a tunnel, ``decide`` reads the registry, the tunnel (its CONNECT's
    decision: target, agent, token digest; the SNI; the certificate's agent), the request's
    Host and scheme, and, for the agent alone, the agents and the clock (``still_valid``).
    So a decision without a refusal, made under the same registry object (a reload builds a
    new one), CONNECT decision, SNI, Host and scheme, is the decision again once the agent
    still holds its token: that check runs on every request, as in ``decide``, and any
    failure of it takes the full ``decide`` (which gives the refusal). A refused decision is
    never reused: each refusal is a fresh exception.

    The memo keeps the Host and the scheme as the request carries them (``_host_key``; the
    scheme's bytes): equal raw values give equal decoded ones, so the memo's key is at
    least as strict as the ``host_header`` and ``scheme`` ``decide`` reads."""
    data = req.data
    scheme = data.scheme
    # ``_host_key(req)``, inline (every request in a tunnel)
    if data.http_version not in (b"HTTP/2.0", b"HTTP/3"):
        fields = data.headers.fields
        names = seen[1] if seen is not None and seen[0] is fields else header_names(fields)
        host_key: str | bytes = (fields[names.index(b"host")][1] if names.count(b"host") == 1
                                 else request_host_header(req) or "")
    else:
        host_key = request_host_header(req) or ""
    registry = st.snapshot.registry  # (``st.registry``)
    connect = tunnel.decision
    memo = tunnel.memo
    if (memo is not None and memo[0] is registry and memo[1] is connect
            and memo[2] == tunnel.sni and memo[3] == host_key and memo[4] == scheme):
        if connect.agent is None:
            return memo[5]
        try:
            agent_still_valid(connect.agent, connect.agent_digest, tunnel.cert_agent,
                              None if st.locked else st.session.agents, time.time())
        except VaultproxyError:
            pass  # the full decision below refuses it, with its reason
        else:
            return memo[5]
    host_header = host_key if isinstance(host_key, str) else host_key.decode(
        "utf-8", "surrogateescape")
    facts = Facts(
        "connect", tunnel.host, tunnel.port, host_header=host_header,
        sni=tunnel.sni, scheme=scheme.decode("utf-8", "surrogateescape"), agent=connect.agent,
        agent_digest=connect.agent_digest, now=time.time(), cert_agent=tunnel.cert_agent,
    )
    decision = _decide(st, facts)
    tunnel.memo = (
        (registry, connect, tunnel.sni, host_key, scheme, decision)
        if decision.refusal is None else None
    )
    return decision


def _host_key(req: http.Request) -> str | bytes:
    """What ``decide`` reads of the request's Host, as cheaply as it can be told apart: an
    HTTP/1 request with exactly one Host field, that field's raw value (its decoding is the
    ``host_header``); any other, the ``host_header`` itself ("" for none) (a str is never
    equal to bytes, so a key of one kind never matches a memo of the other)."""
    data = req.data
    if data.http_version not in (b"HTTP/2.0", b"HTTP/3"):
        fields = data.headers.fields
        names = header_names(fields)
        if names.count(b"host") == 1:
            return fields[names.index(b"host")][1]
    return request_host_header(req) or ""


class Identify(Stage):
    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if record_of(flow).answered:
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
        rt = self.rt
        st = rt.live.state  # ``rt.state()``, inline
        # ``take_proxy_authorization`` returns None and checks nothing for a request without
        # a Proxy-Authorization field while no honeytoken is configured (the common one)
        header: str | None = None
        fields = flow.request.data.headers.fields
        # ``header_names(fields)``, its memo's test inline (``_in_tunnel`` reads them too,
        # if still these)
        known = _names._names_memo
        names = known[1] if known[0] is fields else header_names(fields)
        if (b"proxy-authorization" in names
                or (st is not None and st.snapshot.honeytokens.active)):
            header = access.take_proxy_authorization(rt, flow)  # ACCESS: honeytokens
            st = rt.live.state
        # ``record_of(flow)``, inline: the record is made here on every request (no stage
        # before this one makes it, unless it refused the flow)
        metadata = flow.metadata
        rec: FlowRecord | None = metadata.get(KEY)
        if rec is None:
            rec = metadata[KEY] = FlowRecord()
        if rec.answered:
            return
        if st is None:
            raise NotReady()
        req = flow.request
        conns = rt.connections
        tunnel = conns.tunnels.get(flow.client_conn.id)  # (``tunnel()``)
        if tunnel is not None:
            # ``_in_tunnel``'s answer from the tunnel's memo, inline, for the common request:
            # HTTP/1 with one Host field, its fields still the ones named above, in a tunnel
            # whose CONNECT carried no agent (an agent's token is checked in ``_in_tunnel``
            # on every request); anything else takes ``_in_tunnel`` itself
            # (tests/unit/test_speed_req10.py compares the two)
            data = req.data
            memo = tunnel.memo
            if (memo is not None and memo[0] is st.snapshot.registry
                    and memo[1] is tunnel.decision and memo[1].agent is None
                    and data.headers.fields is fields and memo[2] == tunnel.sni
                    and memo[4] == data.scheme
                    and data.http_version not in (b"HTTP/2.0", b"HTTP/3")
                    and names.count(b"host") == 1
                    and memo[3] == fields[names.index(b"host")][1]):
                decision = rec.decision = memo[5]
            else:
                decision = rec.decision = _in_tunnel(st, tunnel, req, (fields, names))
            if tunnel.broken or flow.client_conn.id in conns.broken_ids:  # ``broken()``
                raise TunnelBroken()
            if decision.refusal is not None:
                raise decision.refusal
            return
        # A plain-HTTP proxy request: each one carries its own credentials.
        facts = Facts("plain", req.host, req.port, proxy_authorization=header, scheme=req.scheme,
                      now=time.time(), cert_agent=cert_agent_of(self.rt, flow.client_conn))
        decision = rec.decision = _decide(st, facts)
        if decision.refusal is not None:
            raise decision.refusal
