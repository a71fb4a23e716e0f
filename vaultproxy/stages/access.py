"""The proxy's adapter for SPEC §10: honeytokens, request rules, rate limits and approvals.

Called from the request path at one place per hook (marked ``ACCESS`` in request_gate.py and
identify.py); the checks themselves are the core's (access/enforce.py, values/honeytokens.py), the
same ones ``POST /proxy`` calls.

* Honeytokens are looked for in everything the proxy can read: every request on an
  intercepted host and every plain-HTTP request (request line, headers, query, body), and the
  ``Proxy-Authorization`` of a CONNECT or plain request. The bytes inside a *passthrough*
  CONNECT tunnel are TLS the proxy never terminates: a decoy sent there is not seen (register
  the host, or set ``egress = "block"``, to cover it). While any honeytoken is configured,
  request bodies that would otherwise stream are buffered (up to ``max_body_mb``) and scanned
  before anything is forwarded.
* Rules see the normalised path (access/rules.py), and that path is what goes upstream.
* A request held for approval waits here, in ``requestheaders`` (in ``request`` when its
  body is held for the honeytoken scan, which comes first): nothing has been minted,
  injected or sent yet; other flows go on meanwhile. Its agent is checked again after the
  wait (``agent rm``/``rotate`` or a TTL during the hold refuses it, as in a kept tunnel).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterator
from typing import NoReturn

from mitmproxy import http

from vaultproxy.access.agents import identity_of
from vaultproxy.access.approvals import Ticket
from vaultproxy.access.enforce import OPEN, ServiceAccess, enforce
from vaultproxy.access.rules import normalise_target
from vaultproxy.core.decide import Facts, still_valid
from vaultproxy.core.pipeline import header_names
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import BodyTooLarge, NotReady
from vaultproxy.net.hostnames import normal_host
from vaultproxy.stages.flowrecord import KEY, FlowRecord, record_of
from vaultproxy.stages.runtime import Runtime
from vaultproxy.values.honeytokens import Sighting, refuse

CONNECT_TARGET = "connect target"


def _caught(rt: Runtime, st: ProxyState, flow: http.HTTPFlow, name: str, surface: str
            ) -> NoReturn:
    rec = record_of(flow)
    tunnel = rt.connections.tunnel(flow.client_conn.id)
    # the request's decision, else (a CONNECT's Proxy-Authorization, not yet decided) the
    # tunnel's; a plain request or CONNECT undecided: its own target, no agent
    decision = rec.decision or (tunnel.decision if tunnel is not None else None)
    service = decision.service if decision is not None else None
    agent = decision.agent if decision is not None else None
    target = decision.target if decision is not None else None
    host: str | None = target[0] if target is not None else normal_host(flow.request.host)
    if surface == CONNECT_TARGET:
        host = None  # the name is the decoy: not into the audit record
    path = rec.path if tunnel is not None else None
    refuse(st.audit, st.access_desk().alert, name, surface,
           Sighting(agent, service.name if service is not None else None, flow.request.method,
                    host, path, "proxy", f"toward {host}"))


def take_proxy_authorization(rt: Runtime, flow: http.HTTPFlow) -> str | None:
    """Pop ``Proxy-Authorization`` (it never travels further) after a honeytoken check; a
    CONNECT's target name is checked too (it is resolved: a DNS query would carry a decoy)."""
    headers = flow.request.data.headers  # (``flow.request.headers``)
    # presence first: ``pop`` of an absent name costs a KeyError inside MutableMapping.pop
    header: str | None = (
        headers.pop("proxy-authorization", None)
        if b"proxy-authorization" in header_names(headers.fields) else None
    )
    st = rt.live.state  # ``rt.current()``
    if st is not None and st.snapshot.honeytokens.active and flow.request.method == "CONNECT":
        target = flow.request.data.authority or flow.request.host.encode("idna", "replace")
        name = st.snapshot.honeytokens.find(target)
        if name is not None:
            _caught(rt, st, flow, name, CONNECT_TARGET)
    if header is not None and st is not None and st.snapshot.honeytokens.active:
        name = st.snapshot.honeytokens.find(header.encode("utf-8", "surrogateescape"))
        if name is not None:
            _caught(rt, st, flow, name, "proxy-authorization")
    return header


def _head_surfaces(req: http.Request) -> Iterator[tuple[str, bytes]]:
    yield "method", req.data.method  # a token: ``__vault.x__`` is a valid method name
    path, _, query = req.data.path.partition(b"?")
    yield "path", path
    yield "query", query
    for k, v in req.headers.fields:
        yield "header", k + b": " + v


async def on_request_headers(rt: Runtime, flow: http.HTTPFlow) -> None:
    """Honeytokens in the head; then, for an intercepted service, normalise the path and
    apply its rules, rate limit and approvals (raises the SPEC §5 refusal). A body held for
    the honeytoken scan is scanned first (``on_request_body`` then applies the rules): a
    decoy is reported even where a rule would refuse or hold the request, and no person is
    asked about a request that carries one."""
    pending = request_headers(rt, flow)
    if pending is not None:
        await pending


def request_headers(rt: Runtime, flow: http.HTTPFlow, rec: FlowRecord | None = None
                    ) -> Awaitable[None] | None:
    """``on_request_headers`` without a coroutine when nothing can wait: the honeytoken scan
    and a service without rules (``OPEN``) finish here (None); rules, a rate limit or an
    approval return the awaitable that applies them. ``rec``: the flow's record, if the
    caller has it."""
    if rec is None:
        rec = record_of(flow)
    if rec.answered:
        return None
    st = rt.live.state  # ``rt.state()``, inline
    if st is None:
        raise NotReady()
    req = flow.request
    decoys = st.snapshot.honeytokens
    if decoys.active:
        hit = decoys.find_any(_head_surfaces(req))
        if hit is not None:
            _caught(rt, st, flow, *hit)
        rec.hold_body = _may_have_body(req)
        if rec.hold_body:
            length = req.headers.get("content-length", "")
            limit = st.registry.config.proxy.max_body_mb * 1024 * 1024
            if length.strip().isdigit() and int(length) > limit:
                raise BodyTooLarge()
            return None  # the rules once the body passed the scan (on_request_body)
    # ``_enforce_start``, inline (every request)
    decision = rec.decision
    if decision is None or decision.plan is None or decision.target is None:
        return None  # not intercepted: no credential, no rules
    access = st.snapshot.access_of(decision.plan.service)
    return None if access is OPEN else _enforce_rules(rt, st, flow, access)


def _enforce_start(st: ProxyState, rec: FlowRecord) -> ServiceAccess | None:
    """The rules of an intercepted service, or None when there are none to apply (not
    intercepted, or ``OPEN``): then nothing waits and nothing changes."""
    decision = rec.decision
    if decision is None or decision.plan is None or decision.target is None:
        return None  # not intercepted: no credential, no rules
    access = st.snapshot.access_of(decision.plan.service)
    return None if access is OPEN else access


async def _enforce(rt: Runtime, st: ProxyState, flow: http.HTTPFlow) -> None:
    """For an intercepted service: normalise the path, then its rules, rate limit and
    approvals; then the agent again, if it waited."""
    access = _enforce_start(st, record_of(flow))
    if access is not None:
        await _enforce_rules(rt, st, flow, access)


async def _enforce_rules(rt: Runtime, st: ProxyState, flow: http.HTTPFlow, access: ServiceAccess
                         ) -> None:
    req = flow.request
    rec = record_of(flow)
    tunnel = rt.connections.tunnel(flow.client_conn.id)
    decision = rec.decision
    assert decision is not None and decision.plan is not None and decision.target is not None
    target = req.data.path.decode("latin-1")
    normal = normalise_target(target)
    if normal != target:
        req.data.path = normal.encode("latin-1")  # what the rule saw is what goes upstream
        rec.path = normal.split("?", 1)[0]
    path = normal.split("?", 1)[0]
    service, agent, host = decision.plan.service.name, decision.agent, decision.target[0]

    def ticket() -> Ticket:
        length = req.headers.get("content-length", "")
        size = int(length) if length.strip().isdigit() else None
        if rec.hold_body and req.raw_content is not None:
            size = len(req.raw_content)  # here already
        return Ticket(agent=agent, service=service, method=req.method.upper(), host=host,
                      path=path, body_size=size, rule="", agent_id=_identity(rt, st, flow))

    await enforce(st.access_desk, access, req.method, path, ticket)
    # A hold can outlast the agent (agent rm / rotate, its TTL): the token its CONNECT proved
    # (the tunnel's decision carries the digest) is checked again, as Identify does.
    connect = tunnel.decision if tunnel is not None else None
    if connect is not None and connect.agent is not None:
        st = rt.state()
        still_valid(Facts("connect", host, decision.target[1], host_header="",
                          agent=connect.agent, agent_digest=connect.agent_digest,
                          now=time.time(), cert_agent=tunnel.cert_agent if tunnel else None),
                    None if st.locked else st.session.agents)


def _identity(rt: Runtime, st: ProxyState, flow: http.HTTPFlow) -> str:
    """The identity the tunnel's CONNECT proved (its token hash; an mTLS agent, which has no
    token on the wire, the current record of its certificate's name)."""
    tunnel = rt.connections.tunnel(flow.client_conn.id)
    connect = tunnel.decision if tunnel is not None else None
    if connect is None or connect.agent is None:
        return ""
    if connect.agent_digest is not None:
        return identity_of(connect.agent_digest)
    record = None if st.locked else st.session.agents.get(connect.agent)
    return record.identity if record is not None else ""


def request_body(rt: Runtime, flow: http.HTTPFlow) -> Awaitable[None] | None:
    """``on_request_body``, or None (no coroutine) for a body that was not held."""
    rec: FlowRecord = flow.metadata.get(KEY) or record_of(flow)
    if not rec.hold_body or rec.answered:
        return None
    return on_request_body(rt, flow)


async def on_request_body(rt: Runtime, flow: http.HTTPFlow) -> None:
    """A body buffered for the honeytoken scan: scan it before it is forwarded, then (it
    passed) the rules, rate limit and approvals ``on_request_headers`` left for now."""
    rec = record_of(flow)
    if not rec.hold_body or rec.answered:
        return
    st = rt.state()
    body = flow.request.raw_content or b""
    if len(body) > st.registry.config.proxy.max_body_mb * 1024 * 1024:
        raise BodyTooLarge()
    decoys = st.snapshot.honeytokens
    name = decoys.find(body) if decoys else None
    if name is not None:
        _caught(rt, st, flow, name, "body")
    await _enforce(rt, st, flow)


def _may_have_body(req: http.Request) -> bool:
    length = req.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in req.headers or not req.http_version.startswith("HTTP/1")
