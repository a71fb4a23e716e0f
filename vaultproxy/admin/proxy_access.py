"""``POST /proxy``'s adapter for SPEC §10: the same honeytoken scan, rules, rate limit and
approval hold as a proxied request (access/enforce.py, values/honeytokens.py), called once from
proxy_route.py before anything is minted, injected or sent. The caller is the admin-token
holder (no agent): rate limits and grants count it as the anonymous agent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlencode

from vaultproxy.access.approvals import Ticket
from vaultproxy.access.enforce import OPEN, enforce
from vaultproxy.access.rules import normalise_target
from vaultproxy.admin.models import ProxyIn
from vaultproxy.config.models import Service
from vaultproxy.core.state import ProxyState
from vaultproxy.values.honeytokens import Sighting, screen

_ENTRY = {"api": "POST /proxy", "mcp": "MCP http_request"}


def _body(req_in: ProxyIn) -> bytes:
    if req_in.body is None:
        return b""
    if isinstance(req_in.body, str):
        return req_in.body.encode("utf-8", "surrogatepass")
    return json.dumps(req_in.body, separators=(",", ":")).encode()


def _surfaces(req_in: ProxyIn, body: bytes) -> Iterator[tuple[str, bytes]]:
    yield "path", req_in.path.encode("utf-8", "surrogateescape")
    yield "query", urlencode(req_in.query, doseq=True).encode("utf-8", "surrogateescape")
    for k, v in req_in.headers.items():
        yield "header", f"{k}: {v}".encode("utf-8", "surrogateescape")
    yield "body", body


async def check_access(st: ProxyState, service: Service, host: str, req_in: ProxyIn,
                       agent: str | None = None, via: str = "api", *, agent_id: str = "",
                       owner: str = "") -> ProxyIn:
    """Raise the SPEC §5 refusal, or return the request with its path normalised.
    ``agent_id``: the agent's token-bound identity (its grants); ``owner``: who else may
    read an approval it opens (an anonymous MCP session), see access/approvals.py."""
    body = _body(req_in)
    decoys = st.snapshot.honeytokens
    screen(decoys, _surfaces(req_in, body), st.audit, st.access_desk().alert,
           lambda: Sighting(agent, service.name, req_in.method, host,
                            req_in.path.split("?")[0], via,
                            f"through {_ENTRY.get(via, via)} toward {host}"))
    access = st.snapshot.access_of(service)
    if access is OPEN:
        return req_in
    normal = normalise_target(req_in.path)
    path = normal.split("?", 1)[0]
    ticket = Ticket(agent=agent, service=service.name, method=req_in.method.upper(), host=host,
                    path=path, body_size=len(body), rule="", via=via, agent_id=agent_id,
                    owner=owner)
    await enforce(st.access_desk, access, req_in.method, path, lambda: ticket)
    return req_in if normal == req_in.path else req_in.model_copy(update={"path": normal})
