"""``decide()``: one pure decision per request — which service, which agent, what to inject,
where to dial, or why not.

Plain data in (the target, what the agent presented, the registry and the agents), a
``Decision`` out; no flow, socket, file or clock. The proxy stages and ``POST /proxy`` adapt
their world to ``Facts`` and act on the ``Decision``; the canonical audit line
(decision_log.py) records it.

Three ways a request arrives (``Facts.via``):

* ``"connect"``: a CONNECT (``host_header`` None) or a request inside its tunnel. The target
  is the CONNECT target, never Host or SNI; a request whose Host/SNI names another host, or
  that is plaintext, is refused.
* ``"plain"``: a plain-HTTP proxy request (``GET http://host/``): never to a registered
  service (no credential over plaintext), and only where egress allows.
* ``"admin"``: ``POST /proxy``; the admin token authenticated the caller, no agent.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from vaultproxy.access.agents import AgentRecord, parse_proxy_authorization, verify
from vaultproxy.config.models import Service
from vaultproxy.errors import (
    AgentAuthRequired,
    AgentScope,
    AgentTokenExpired,
    DestinationDenied,
    EgressBlocked,
    HostMismatch,
    LockedError,
    VaultproxyError,
)
from vaultproxy.loaded.registry import Registry
from vaultproxy.mint.base import MINTERS
from vaultproxy.net.hostnames import normal_host, same_target, split_authority
from vaultproxy.unshadow import unshadowed

Via = Literal["connect", "plain", "admin"]


@unshadowed
@dataclass(frozen=True)
class Facts:
    """What is known of one request, as plain data."""

    via: Via
    host: str  # the CONNECT target (or the plain request's host): routing uses only this
    port: int
    proxy_authorization: str | None = None  # as the agent sent it (CONNECT or plain request)
    host_header: str | None = None  # None: deciding the CONNECT itself
    sni: str | None = None  # the TLS ClientHello's server name, if any
    scheme: str = "https"
    agent: str | None = None  # inside a tunnel: the agent its CONNECT proved
    agent_digest: bytes | None = None  # ... and the token hash it proved it with
    now: float | None = None  # epoch seconds, for token lifetimes (None: any lifetime is over)
    cert_agent: str | None = None  # mTLS listener: the verified client certificate's CN


BodyMode = Literal["stream", "substitute", "sign"]

# Request headers an upstream (or a balancer in front of it) may route on: the credential is
# bound to the CONNECT host alone, so they never reach an intercepted service.
ROUTING_HEADERS = frozenset(
    {b"forwarded", b"x-forwarded-host", b"x-forwarded-server", b"x-host", b"x-original-host"}
)
# A partial response can slice a reflected secret into pieces no redactor recognises: removed
# unless the service sets ``allow_range``.
RANGE_HEADERS = frozenset({b"range", b"if-range"})


@unshadowed
@dataclass(frozen=True)
class Plan:
    """How a credential goes onto one request to ``service``; every entry acts on it as is.

    ``drop``: canonical header names removed before anything else. ``mint``: the credential
    is a minted token, fetched before injecting. ``body``: ``stream`` (the head carries the
    credential), ``substitute`` (the body waits whole for the placeholder) or ``sign`` (SigV4:
    signed at the head when no body hash is needed, else over the whole body). ``resend``: a
    401 to a body-less idempotent request may be resent once with a fresh token.
    """

    service: Service
    body: BodyMode
    max_body: int  # bytes
    drop: frozenset[bytes] = ROUTING_HEADERS | RANGE_HEADERS
    mint: bool = False
    resend: bool = False

    @property
    def substitute_body(self) -> bool:
        return self.body == "substitute"


@unshadowed
@dataclass(frozen=True)
class Decision:
    """The verdict on one request (or CONNECT): the only place it is carried. The audit
    line is this and the outcome."""

    service: Service | None
    agent: str | None
    dial: tuple[str, int] | None = None  # where to dial (connect_to applied), then checked
    plan: Plan | None = None  # None: nothing is injected (passthrough, plain, refused)
    refusal: VaultproxyError | None = None
    agent_digest: bytes | None = None  # the verified agent's token hash (a tunnel keeps it)
    target: tuple[str, int] | None = None  # the routed target (normalised host, port)

    @property
    def code(self) -> str | None:
        return None if self.refusal is None else self.refusal.code


def decide(
    facts: Facts, registry: Registry, agents: Mapping[str, AgentRecord] | None
) -> Decision:
    """The decision for ``facts``; ``agents`` None means locked (no hash to verify with)."""
    target = normal_host(facts.host)
    service = registry.lookup(target, facts.port) if 0 < facts.port < 65536 else None
    agent, digest = facts.agent, facts.agent_digest
    try:
        if facts.via != "admin" and (facts.via == "plain" or facts.host_header is None):
            record = (
                by_certificate(facts.cert_agent, agents) if facts.cert_agent is not None
                else identify(facts.proxy_authorization, registry, agents, facts.now)
            )
            agent = record.name if record is not None else None
            digest = record.digest if record is not None and facts.cert_agent is None else None
            if record is not None and service is not None and not record.allows(service.name):
                raise AgentScope(f"agent {record.name} may not use service {service.name}")
        elif facts.agent is not None:
            still_valid(facts, agents)
        if facts.via == "plain":
            return _plain(facts, target, registry, agent)
        dial = _dial(service, target, facts.port)
        if facts.host_header is None:  # the CONNECT
            if service is None and registry.config.proxy.egress == "block":
                raise EgressBlocked(
                    f"{target}:{facts.port} is not registered and egress is blocked"
                )
            return Decision(service, agent, dial, agent_digest=digest,
                            target=(target, facts.port))
        if service is None:  # a passthrough tunnel: nothing to inject
            return Decision(None, agent, dial, target=(target, facts.port))
        if facts.scheme != "https":
            raise DestinationDenied("plaintext HTTP inside a tunnel to a registered service")
        sni_differs = bool(facts.sni) and normal_host(facts.sni or "") != target
        if sni_differs or not same_target(facts.host_header, target, facts.port):
            raise HostMismatch()
        plan = _plan(service, registry, resend=facts.via == "connect")
        return Decision(service, agent, dial, plan, target=(target, facts.port))
    except VaultproxyError as e:
        return Decision(service, agent, refusal=e, target=(target, facts.port))


def identify(
    header: str | None,
    registry: Registry,
    agents: Mapping[str, AgentRecord] | None,
    now: float | None = None,
) -> AgentRecord | None:
    """The verified agent, None for an allowed anonymous caller; raise to refuse."""
    creds = parse_proxy_authorization(header)
    if header is None and not registry.config.proxy.require_agent_auth:
        return None
    if agents is None:
        raise LockedError()  # agent hashes live in the keystore: cannot verify yet
    record = verify(agents, creds.name, creds.token) if creds is not None else None
    if record is None:
        # Wrong credentials are refused even when anonymous use is allowed: an agent that
        # means to be scoped must not silently run unscoped.
        raise AgentAuthRequired()
    if record.expired(now):  # only a caller who proved the token learns it has expired
        raise AgentTokenExpired()
    return record


def by_certificate(cn: str, agents: Mapping[str, AgentRecord] | None) -> AgentRecord:
    """The agent a verified mTLS client certificate names by its CN (no token: the
    certificate is the credential; its own validity was checked in the handshake)."""
    if agents is None:
        raise LockedError()
    record = agents.get(cn) if cn else None
    if record is None:
        raise AgentAuthRequired("the client certificate's CN names no agent")
    return record


def still_valid(facts: Facts, agents: Mapping[str, AgentRecord] | None) -> None:
    """Inside a tunnel: the agent its CONNECT proved still holds that token (not removed,
    not rotated) and the token has not expired since, so a kept-alive connection does not
    outlive ``agent rm``/``rotate`` or a TTL. Locked: nothing to check against (and nothing
    will be injected)."""
    agent_still_valid(facts.agent, facts.agent_digest, facts.cert_agent, agents, facts.now)


def agent_still_valid(
    agent: str | None, digest: bytes | None, cert_agent: str | None,
    agents: Mapping[str, AgentRecord] | None, now: float | None,
) -> None:
    """``still_valid`` of a tunnel's agent, from the tunnel's own fields (no ``Facts``)."""
    if agents is None or agent is None:
        return
    if cert_agent is not None:  # an mTLS tunnel: the agent must still exist
        by_certificate(cert_agent, agents)
        return
    record = agents.get(agent)
    if record is None or digest is None or not hmac.compare_digest(record.digest, digest):
        raise AgentAuthRequired(f"agent {agent}'s token was rotated or removed")
    if record.expired(now):
        raise AgentTokenExpired()


def _plain(facts: Facts, target: str, registry: Registry, agent: str | None) -> Decision:
    if registry.is_registered_host(target):
        raise DestinationDenied("plaintext HTTP to a registered service; use https")
    if registry.config.proxy.egress == "block":
        raise EgressBlocked(f"{target} is not registered and egress is blocked")
    return Decision(None, agent, (target, facts.port), target=(target, facts.port))


def _dial(service: Service | None, host: str, port: int) -> tuple[str, int]:
    if service is not None and service.connect_to:
        h, p = split_authority(service.connect_to)
        return h, p if p and p > 0 else port
    return host, port


def _plan(service: Service, registry: Registry, resend: bool) -> Plan:
    body: BodyMode = "stream"
    if service.auth == "aws_sigv4":
        body = "sign"
    elif service.mode == "placeholder" and "body" in service.substitute_in:
        body = "substitute"
    drop = ROUTING_HEADERS if service.allow_range else ROUTING_HEADERS | RANGE_HEADERS
    mint = service.auth in MINTERS
    return Plan(
        service, body, registry.config.proxy.max_body_mb * 1024 * 1024, drop=drop, mint=mint,
        resend=resend and mint,
    )
