"""``POST /proxy``: an explicit JSON request to a registered service; a thin adapter over
the proxy's own pipeline. The same ``decide()`` (service, dial target, plan), the same
request pipeline (core/pipeline.py: request checks and dropped headers, the token decision,
injection and body wait, the ``forward`` record, the one hop-by-hop set), the same response
gate rules (``gate_head``, ``stream_filter``) and the same canonical audit line.
Caller-supplied credentials are refused, not stripped.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from mitmproxy import http

from vaultproxy.access.agents import AgentRecord
from vaultproxy.admin.context import AdminContext, admin_context, caller, proxy_state
from vaultproxy.admin.models import ErrorOut, ProxyIn
from vaultproxy.admin.proxy_access import check_access
from vaultproxy.audit.canonical import record_decision
from vaultproxy.config.models import Service
from vaultproxy.core.decide import Decision, Facts, Plan, decide, still_valid
from vaultproxy.core.pipeline import (
    HOP_BY_HOP,
    check_request,
    hop_free,
    inject_body,
    inject_head,
    needs_token,
    record_forward,
)
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import (
    AgentScope,
    BodyTooLarge,
    LockedError,
    UnscannableResponse,
    VaultproxyError,
    error_response,
)
from vaultproxy.inject import STRIP_HEADERS
from vaultproxy.inject.request import auth_slot, canonical_name
from vaultproxy.mint.cache import Issued
from vaultproxy.net.hostnames import split_authority
from vaultproxy.net.outbound import UpstreamKey
from vaultproxy.net.resolve import resolve_checked
from vaultproxy.values.placeholders import basic_credentials
from vaultproxy.values.redact import Redactor, gate_head, stream_filter

router = APIRouter()



class BadRequest(VaultproxyError):
    status, code, public = 400, "invalid_request", "invalid request"


class AuthHeaderRefused(VaultproxyError):
    status, code, public = 400, "auth_header_refused", "credentials are added by vaultproxy"


class UnknownService(VaultproxyError):
    status, code, public = 404, "unknown_service", "no such service"


def pick_host(st: ProxyState, service: Service, requested: str | None) -> tuple[str, int]:
    if requested:
        host, port = split_authority(requested)
        port = 443 if port is None else port
        found = st.registry.lookup(host, port) if 0 < port < 65536 else None
        if found is None or found.name != service.name:
            raise BadRequest(f"host is not one of service {service.name}'s hosts")
        return host, port
    for entry in service.hosts:
        if "*" not in entry:
            host, port = split_authority(entry)
            return host, 443 if port is None else port
    raise BadRequest(f"service {service.name} has only wildcard hosts; pass \"host\"")


def _carries(value: str, ph: str) -> bool:
    raw = value.encode("utf-8", "surrogateescape")
    creds = basic_credentials(raw)
    return ph.encode() in raw or (creds is not None and ph.encode() in creds)


def caller_headers(service: Service, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """The caller's headers minus hop-by-hop ones (and Host: vaultproxy sets it); a
    credential header is refused unless it carries this service's placeholder where
    placeholder mode substitutes headers. The header section itself is checked later with
    the proxy's own ``check_request``."""
    auth_names = set(STRIP_HEADERS)
    if service.header_name:
        auth_names.add(canonical_name(service.header_name.encode()).decode())
    placeholder = service.mode == "placeholder"
    slot = auth_slot(service) if "auth" in service.substitute_in else None
    any_header = placeholder and "header" in service.substitute_in
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers.items():
        raw = name.encode("latin-1", "replace")
        lname = canonical_name(raw).decode("latin-1")
        if raw.lower() in HOP_BY_HOP or lname == "host":
            continue
        may_carry = placeholder and (any_header or lname.encode() == slot)
        carries = may_carry and _carries(value, service.placeholder_text)
        if lname in auth_names and not (carries and lname != "proxy-authorization"):
            raise AuthHeaderRefused(
                f"header {lname} is not allowed: vaultproxy adds the credential for "
                f"{service.name} (use its placeholder in placeholder mode)"
            )
        out.append((raw, value.encode("utf-8", "surrogateescape")))
    return out


def _body_bytes(body: object, headers: list[tuple[bytes, bytes]]) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    if not any(k.lower() == b"content-type" for k, _ in headers):
        headers.append((b"Content-Type", b"application/json"))
    return json.dumps(body, separators=(",", ":")).encode()


def decide_request(st: ProxyState, host: str, port: int) -> Decision:
    """The same ``decide()`` as the proxy's, for a caller the admin token authenticated."""
    authority = host if port == 443 else f"{host}:{port}"
    facts = Facts("admin", host, port, host_header=authority)
    decision = decide(facts, st.registry, None if st.locked else st.session.agents)
    if decision.refusal is not None:
        raise decision.refusal
    return decision


def build_request(plan: Plan, host: str, port: int, req_in: ProxyIn) -> http.Request:
    """The caller's request as the transparent path would hold it (mitmproxy's type)."""
    headers = caller_headers(plan.service, req_in.headers)
    content = _body_bytes(req_in.body, headers)
    if len(content) > plan.max_body:
        raise BodyTooLarge()
    authority = host if port == 443 else f"{host}:{port}"
    target = req_in.path
    if req_in.query:
        target += ("&" if "?" in target else "?") + urlencode(req_in.query, doseq=True)
    req = http.Request.make(req_in.method, f"https://{authority}/", content, headers)
    req.data.path = target.encode("ascii")
    req.headers["Host"] = authority
    return req


async def inject(st: ProxyState, plan: Plan, req: http.Request) -> tuple[Issued | None, bool]:
    """The pipeline's token decision and injection, the body being whole already: the
    minted token used (if any) and whether a credential went in. A minted token is not
    resent after a 401 here (``Plan.resend``): the caller gets it and the token is dropped."""
    index = st.snapshot.index
    minted = await st.token_source().get(plan.service) if needs_token(plan, req, index) else None
    done = inject_head(st, req, plan, minted)
    injected = done.injected
    if done.wait_body and inject_body(st, req, plan, done.entry):
        injected = True
    return minted, injected


def to_httpx(req: http.Request, ip: str, port: int) -> httpx.Request:
    url = httpx.URL(scheme="https", host=ip, port=port, raw_path=req.data.path)
    return httpx.Request(req.method, url, headers=hop_free(req.headers.fields),
                         content=req.raw_content or b"")


class _Audit:
    """The canonical decision line of one ``POST /proxy`` (audit/canonical.py)."""

    def __init__(self, st: ProxyState, service: Service | None, req_in: ProxyIn,
                 agent: str | None = None, via: str = "api"):
        self.st, self.service, self.req_in = st, service, req_in
        self.agent, self.via = agent, via
        self.host: str | None = None
        self.t0 = time.monotonic()
        self.token: str | None = None  # "minted" / "cached" for a minted service

    def ahead(self) -> None:
        """The ``forward`` record before an injected request leaves (the pipeline's)."""
        record_forward(
            self.st.audit, self.st.audit.on_failure, agent=self.agent, service=self.service,
            method=self.req_in.method, host=self.host, path=self.req_in.path, via=self.via,
        )

    def record(self, status: int | None, outcome: str, reason: str | None) -> None:
        svc = self.service
        record_decision(
            self.st.audit, event="request", agent=self.agent,
            service=svc.name if svc else self.req_in.service, mode=svc.mode if svc else None,
            method=self.req_in.method, host=self.host, path=self.req_in.path, status=status,
            started=self.t0, outcome=outcome, reason=reason, via=self.via,
        )


@router.post("/proxy", responses={
    200: {"description": "the upstream's response (status, headers and body), redacted"},
    400: {"model": ErrorOut, "description": "invalid request or caller-supplied credential"},
    404: {"model": ErrorOut, "description": "unknown service"},
    429: {"model": ErrorOut, "description": "rate limited"},
    502: {"model": ErrorOut, "description": "upstream unreachable or untrusted"},
})
async def explicit_proxy(req_in: ProxyIn, request: Request) -> Response:
    ctx = admin_context(request)
    ctx.proxy_limit.take(caller(request))
    return await proxy_pipeline(ctx, proxy_state(request), req_in)


async def proxy_pipeline(ctx: AdminContext, st: ProxyState, req_in: ProxyIn, *,
                         agent: AgentRecord | None = None, via: str = "api",
                         owner: str = "") -> Response:
    """One explicit request through the whole pipeline. ``agent``: the verified agent the
    caller proved (its scopes apply; None = the admin-token holder); ``via``: the audit's
    channel (``api`` for ``POST /proxy``, ``mcp`` for the MCP ``http_request`` tool)."""
    service = st.registry.by_name(req_in.service)
    if service is None:
        raise UnknownService(f"no service named {req_in.service}")
    audit = _Audit(st, service, req_in, agent.name if agent else None, via)
    try:
        if agent is not None and not agent.allows(service.name):
            raise AgentScope(f"agent {agent.name} may not use service {service.name}")
        host, port = pick_host(st, service, req_in.host)
        audit.host = host
        decision = decide_request(st, host, port)
        plan, target = decision.plan, decision.target
        if plan is None or decision.dial is None or target is None:  # pragma: no cover
            raise UnknownService(f"no service named {req_in.service}")
        # ACCESS (SPEC §10): honeytokens, rules, rate limit, approval - one call
        req_in = await check_access(st, service, host, req_in,
                                    agent.name if agent else None, via,
                                    agent_id=agent.identity if agent else "", owner=owner)
        if agent is not None:  # a hold can outlast the agent: agent rm / rotate, its TTL
            still_valid(Facts("admin", host, port, agent=agent.name, agent_digest=agent.digest,
                              now=time.time()), None if st.locked else st.session.agents)
        req = build_request(plan, host, port, req_in)
        check_request(req, plan, target)  # the proxy's request checks and dropped headers
        minted, injected = await inject(st, plan, req)
        audit.token = minted.source if minted is not None else None
        redactor = st.session.redactor_for(service)
        if redactor is None:
            raise LockedError()
        ip, dial_port = await resolve_checked(*decision.dial, st.snapshot.address_context(service))
        trust = st.snapshot.trust_file(service)
        key = UpstreamKey(service.name, host, trust, service.insecure_tls)
        if injected:
            audit.ahead()
        upstream = await ctx.clients.send(key, to_httpx(req, ip, dial_port))
        if minted is not None and upstream.status_code == 401:  # the next call mints anew
            st.token_source().reject(minted.service, minted.gen)
    except VaultproxyError as e:
        status, code, _ = error_response(e)
        audit.record(status, "denied", code)
        raise
    return await _relay(upstream, redactor, audit, injected)


async def _relay(upstream: httpx.Response, redactor: Redactor, audit: _Audit,
                 injected: bool) -> Response:
    headers = http.Headers([(k, v) for k, v in upstream.headers.raw])
    try:
        encoding, decode = gate_head(redactor, headers)  # the response gate's header rules
    except UnscannableResponse:
        await upstream.aclose()
        audit.record(502, "denied", "upstream_unreachable")
        raise
    if encoding:
        del headers["content-encoding"]
    raw = hop_free(headers.fields)
    outcome = "injected" if injected else "forwarded"

    async def body() -> AsyncIterator[bytes]:
        emit = stream_filter(redactor, decode)  # the response gate's body filter
        done = False
        try:
            async for chunk in upstream.aiter_raw():
                if chunk:
                    for out in emit(chunk):
                        yield out
            final = b"".join(emit(b""))
            done = True
            if final:
                yield final
        except httpx.HTTPError:
            return  # the upstream broke off: the agent gets a truncated body, audit says so
        finally:
            audit.record(upstream.status_code, outcome if done else "error",
                         audit.token if done else "client_or_upstream_aborted")
            await upstream.aclose()

    response = StreamingResponse(body(), status_code=upstream.status_code)
    response.raw_headers = raw
    return response
