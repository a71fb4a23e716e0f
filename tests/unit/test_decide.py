"""``decide()`` as a table of facts -> verdict, as smokescreen tests its ``Decide``: every
row is the plain data an entry hands in and the whole verdict it must get back (the
refusal code, or the service, the agent, where to dial and the plan: body mode, headers to
drop, mint, resend). No flow, socket, file or clock.

The hostile-agent rows are the ones a request shaped to move a credential must hit: a Host,
SNI or scheme that differs from the CONNECT target, plaintext to a registered host, a forged
or out-of-scope agent, a locked keystore, an unregistered host under ``egress = "block"``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomlkit

from vaultproxy.access.agents import make_record, new_token
from vaultproxy.config.load import parse_config
from vaultproxy.core.decide import RANGE_HEADERS, ROUTING_HEADERS, Decision, Facts, decide
from vaultproxy.loaded.registry import Registry

SERVICES = [
    {"name": "api", "hosts": ["api.example.com"], "mode": "host_inject", "auth": "bearer"},
    {"name": "ph", "hosts": ["ph.example.com"], "mode": "placeholder", "auth": "bearer",
     "substitute_in": ["auth", "body"]},
    {"name": "rng", "hosts": ["rng.example.com"], "mode": "host_inject", "auth": "bearer",
     "allow_range": True},
    {"name": "ct", "hosts": ["ct.example.com"], "mode": "host_inject", "auth": "bearer",
     "connect_to": "10.0.0.9:8443", "allow_private": True},
    {"name": "aws", "hosts": ["s3.example.com"], "mode": "host_inject", "auth": "aws_sigv4",
     "region": "us-east-1", "aws_service": "s3"},
    {"name": "oa", "hosts": ["oa.example.com"], "mode": "host_inject",
     "auth": "oauth2_client_credentials", "token_url": "https://auth.example.com/token"},
]


def _registry(**proxy: object) -> Registry:
    doc = {"proxy": proxy, "service": SERVICES} if proxy else {"service": SERVICES}
    return Registry.from_config(parse_config(tomlkit.dumps(doc), Path("/nonexistent")))


OPEN = _registry()
STRICT = _registry(require_agent_auth=True, egress="block")

TOKEN = new_token()
AGENTS = {"bot": make_record("bot", TOKEN, ["api"], 0.0)}


def _basic(name: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()


GOOD_AUTH = _basic("bot", TOKEN.reveal().decode())
BAD_AUTH = _basic("bot", "vpa_" + "A" * 43)


def req(host: str, port: int = 443, **kw: object) -> Facts:
    """A request inside a tunnel to ``host`` whose Host header names it."""
    fields: dict[str, object] = {"host_header": host if port == 443 else f"{host}:{port}"}
    fields.update(kw)
    return Facts("connect", host, port, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Verdict:
    """The parts of a Decision a row asserts; ``code`` set means refused."""

    code: str | None = None
    service: str | None = None
    agent: str | None = None
    dial: tuple[str, int] | None = None
    body: str | None = None  # the plan's body mode; None: no plan
    drop: frozenset[bytes] | None = None
    mint: bool = False
    resend: bool = False


def verdict(d: Decision) -> Verdict:
    plan = d.plan
    return Verdict(
        code=d.code, service=d.service.name if d.service is not None else None,
        agent=d.agent, dial=d.dial if d.refusal is None else None,
        body=plan.body if plan is not None else None,
        drop=plan.drop if plan is not None else None,
        mint=plan.mint if plan is not None else False,
        resend=plan.resend if plan is not None else False,
    )


ALL_DROP = ROUTING_HEADERS | RANGE_HEADERS
API = ("api.example.com", 443)

# name -> (facts, registry, agents (None: locked), expected verdict)
TABLE: dict[str, tuple[Facts, Registry, dict[str, object] | None, Verdict]] = {
    # -- CONNECTs -----------------------------------------------------------------------
    "connect-registered": (
        Facts("connect", "api.example.com", 443), OPEN, {}, Verdict(service="api", dial=API)),
    "connect-case-and-dot": (
        Facts("connect", "API.Example.COM.", 443), OPEN, {}, Verdict(service="api", dial=API)),
    "connect-connect_to": (
        Facts("connect", "ct.example.com", 443), OPEN, {},
        Verdict(service="ct", dial=("10.0.0.9", 8443))),
    "connect-unregistered-passthrough": (
        Facts("connect", "elsewhere.test", 443), OPEN, {},
        Verdict(dial=("elsewhere.test", 443))),
    "connect-unregistered-egress-block": (
        Facts("connect", "elsewhere.test", 443, proxy_authorization=GOOD_AUTH), STRICT,
        AGENTS, Verdict(code="egress_blocked", agent="bot")),
    "connect-agent-in-scope": (
        Facts("connect", "api.example.com", 443, proxy_authorization=GOOD_AUTH), STRICT,
        AGENTS, Verdict(service="api", agent="bot", dial=API)),
    "connect-agent-out-of-scope": (
        Facts("connect", "ph.example.com", 443, proxy_authorization=GOOD_AUTH), STRICT,
        AGENTS, Verdict(code="agent_scope", service="ph", agent="bot")),
    "connect-no-agent-when-required": (
        Facts("connect", "api.example.com", 443), STRICT, AGENTS,
        Verdict(code="agent_auth_required", service="api")),
    "connect-forged-agent-token": (
        Facts("connect", "api.example.com", 443, proxy_authorization=BAD_AUTH), OPEN, AGENTS,
        Verdict(code="agent_auth_required", service="api")),
    "connect-locked-cannot-verify": (
        Facts("connect", "api.example.com", 443, proxy_authorization=GOOD_AUTH), OPEN, None,
        Verdict(code="locked", service="api")),
    "connect-port-zero": (
        Facts("connect", "api.example.com", 0), STRICT, AGENTS,
        Verdict(code="agent_auth_required")),
    # -- requests inside a tunnel: the plan -----------------------------------------------
    "request-host-inject": (
        req("api.example.com"), OPEN, {},
        Verdict(service="api", dial=API, body="stream", drop=ALL_DROP)),
    "request-placeholder-body": (
        req("ph.example.com"), OPEN, {},
        Verdict(service="ph", dial=("ph.example.com", 443), body="substitute",
                drop=ALL_DROP)),
    "request-allow-range-keeps-range": (
        req("rng.example.com"), OPEN, {},
        Verdict(service="rng", dial=("rng.example.com", 443), body="stream",
                drop=ROUTING_HEADERS)),
    "request-sigv4-signs": (
        req("s3.example.com"), OPEN, {},
        Verdict(service="aws", dial=("s3.example.com", 443), body="sign", drop=ALL_DROP)),
    "request-minted-mints-and-resends": (
        req("oa.example.com"), OPEN, {},
        Verdict(service="oa", dial=("oa.example.com", 443), body="stream", drop=ALL_DROP,
                mint=True, resend=True)),
    "request-tunnel-agent-carried": (
        req("api.example.com", agent="bot", agent_digest=AGENTS["bot"].digest, now=1.0),
        STRICT, AGENTS,
        Verdict(service="api", agent="bot", dial=API, body="stream", drop=ALL_DROP)),
    # the tunnel's agent no longer holds the token its CONNECT proved (rotated or removed)
    "hostile-tunnel-agent-without-its-token": (
        req("api.example.com", agent="bot", now=1.0), STRICT, AGENTS,
        Verdict(code="agent_auth_required", service="api", agent="bot")),
    "request-passthrough-no-plan": (
        req("elsewhere.test"), OPEN, {}, Verdict(dial=("elsewhere.test", 443))),
    # -- hostile requests inside a tunnel -------------------------------------------------
    "hostile-host-header-other-host": (
        req("api.example.com", host_header="evil.example"), OPEN, {},
        Verdict(code="host_mismatch", service="api")),
    "hostile-host-header-other-port": (
        req("api.example.com", host_header="api.example.com:8443"), OPEN, {},
        Verdict(code="host_mismatch", service="api")),
    "hostile-host-header-empty": (
        req("api.example.com", host_header=""), OPEN, {},
        Verdict(code="host_mismatch", service="api")),
    "hostile-sni-other-host": (
        req("api.example.com", sni="evil.example"), OPEN, {},
        Verdict(code="host_mismatch", service="api")),
    "hostile-plaintext-in-tunnel": (
        req("api.example.com", scheme="http"), OPEN, {},
        Verdict(code="destination_denied", service="api")),
    "hostile-host-header-registered-other-service": (
        req("api.example.com", host_header="ph.example.com"), OPEN, {},
        Verdict(code="host_mismatch", service="api")),
    # -- plain-HTTP proxy requests --------------------------------------------------------
    "plain-to-registered-host": (
        Facts("plain", "api.example.com", 80, scheme="http"), OPEN, {},
        Verdict(code="destination_denied")),
    "plain-unregistered": (
        Facts("plain", "elsewhere.test", 80, scheme="http"), OPEN, {},
        Verdict(dial=("elsewhere.test", 80))),
    "plain-unregistered-egress-block": (
        Facts("plain", "elsewhere.test", 80, proxy_authorization=GOOD_AUTH, scheme="http"),
        STRICT, AGENTS, Verdict(code="egress_blocked", agent="bot")),
    "plain-without-agent-when-required": (
        Facts("plain", "elsewhere.test", 80, scheme="http"), STRICT, AGENTS,
        Verdict(code="agent_auth_required")),
    # -- POST /proxy (the admin token authenticated the caller; no agent, no resend) ------
    "admin-injects": (
        Facts("admin", "api.example.com", 443, host_header="api.example.com"), STRICT, None,
        Verdict(service="api", dial=API, body="stream", drop=ALL_DROP)),
    "admin-minted-no-resend": (
        Facts("admin", "oa.example.com", 443, host_header="oa.example.com"), OPEN, None,
        Verdict(service="oa", dial=("oa.example.com", 443), body="stream", drop=ALL_DROP,
                mint=True)),
    "admin-allow-range": (
        Facts("admin", "rng.example.com", 443, host_header="rng.example.com"), OPEN, None,
        Verdict(service="rng", dial=("rng.example.com", 443), body="stream",
                drop=ROUTING_HEADERS)),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_decide_table(name: str) -> None:
    facts, registry, agents, expected = TABLE[name]
    assert verdict(decide(facts, registry, agents)) == expected  # type: ignore[arg-type]


def test_a_refusal_carries_no_plan_and_no_dial() -> None:
    """Nothing downstream can act on a refused verdict: it has no plan to inject with."""
    for name, (facts, registry, agents, expected) in TABLE.items():
        d = decide(facts, registry, agents)  # type: ignore[arg-type]
        if expected.code is not None:
            assert d.plan is None and d.dial is None, name


def test_target_is_the_routed_one_never_host_or_sni() -> None:
    d = decide(req("API.example.com", host_header="api.example.com", sni="api.example.com"),
               OPEN, {})
    assert d.target == API and d.plan is not None
    refused = decide(req("api.example.com", host_header="evil.example"), OPEN, {})
    assert refused.target == API  # the audit names what the CONNECT targeted
