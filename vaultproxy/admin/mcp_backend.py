"""The MCP tools' backend on the admin side (SPEC §11): who is calling, what they may see,
and the proxy's own pipeline for ``http_request`` (admin/mcp_pipeline.py). Every answer is
scrubbed by the response gate's redactors before it reaches the model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mcp.server.mcpserver import Context
from pydantic import ValidationError

from vaultproxy.access.agents import AgentRecord
from vaultproxy.access.approvals import Approval, Ticket, UnknownApproval
from vaultproxy.admin import mcp_pipeline
from vaultproxy.admin.actions import audit_admin, reload_registry
from vaultproxy.admin.approval_routes import owner_desk
from vaultproxy.admin.context import AdminContext
from vaultproxy.admin.models import ProxyIn
from vaultproxy.admin.ratelimit import TooFast
from vaultproxy.config.edit import add_service
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import VaultproxyError, error_response
from vaultproxy.keystore.cached import has_secret
from vaultproxy.mcp.tools import Refused

logger = logging.getLogger(__name__)

IDENTITY_KEY = "vaultproxy.mcp.caller"
DASHBOARD = "http://127.0.0.1:3202"
HOST_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}"
                     r"[a-z0-9])?)+$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ACTIVITY_FIELDS = ("ts", "event", "service", "method", "host", "path", "status", "outcome",
                   "reason", "via")


@dataclass(frozen=True)
class McpCaller:
    """The proven caller of one MCP request: an agent (its token), or the operator (the
    admin token, or a same-uid ``admin.sock`` peer) when ``agent`` is None."""

    agent: AgentRecord | None
    label: str  # for rate limits and admin audit lines
    relayed: bool = False  # through https://vaultproxy.internal/mcp (one buffered answer)
    # an unidentified caller of the reserved host (``require_agent_auth = false``): not the
    # operator; ``owner`` is its MCP session, the only key to the approvals it opened
    anonymous: bool = False
    owner: str = ""

    @property
    def name(self) -> str | None:
        return self.agent.name if self.agent is not None else None

    @property
    def operator(self) -> bool:
        return self.agent is None and not self.anonymous

    @property
    def agent_id(self) -> str:
        return self.agent.identity if self.agent is not None else ""

    def may_read(self, ticket: Ticket) -> bool:
        """The operator reads every approval; anyone else only its own (approvals.py)."""
        return self.operator or ticket.readable_by(self.name, self.agent_id, self.owner)


def _refused(e: VaultproxyError) -> Refused:
    _status, code, message = error_response(e)
    extra = dict(e.extra_headers)
    if "X-Vaultproxy-Approval" in extra:
        message += f" (approval id {extra['X-Vaultproxy-Approval']}: see approval_status)"
    return Refused(code, message)


class AdminBackend:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self._proposals: set[asyncio.Task[None]] = set()

    def caller(self, ctx: Context) -> McpCaller:
        request = ctx.request_context.request
        who = getattr(request, "scope", {}).get(IDENTITY_KEY)
        if not isinstance(who, McpCaller):  # the endpoint sets it on every request
            raise Refused("unauthorized", "no caller identity on this request")
        return who

    def _state(self) -> ProxyState:
        try:
            return self.ctx.live.require()
        except VaultproxyError as e:
            raise _refused(e) from None

    def scrub(self, text: str) -> str:
        """The response gate over a whole tool answer: every service's redactor."""
        st = self.ctx.live.state
        if st is None:
            return text
        data = text.encode("utf-8", "surrogatepass")
        for service in st.registry.services:
            redactor = st.session.redactor_for(service)
            if redactor is not None:
                data = redactor.redact(data)
        return data.decode("utf-8", "replace")

    async def list_services(self, who: object) -> dict[str, Any]:
        assert isinstance(who, McpCaller)
        st = self._state()
        ks = st.session.keystore
        out = []
        for s in st.registry.services:
            if who.agent is not None and not who.agent.allows(s.name):
                continue
            out.append({
                "name": s.name, "hosts": list(s.hosts), "mode": s.mode, "auth": s.auth,
                "placeholder": s.placeholder_text, "env": s.env,
                "rules": [r.model_dump() for r in s.request_rules],
                "default_action": s.default_action,
                "secret_present": None if ks is None else has_secret(ks, s.secret_name),
            })
        return {"services": out, "locked": st.locked}

    async def http_request(self, who: object, call: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(who, McpCaller)
        st = self._state()
        try:
            req_in = ProxyIn.model_validate(call)
        except ValidationError as e:
            lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                     for err in e.errors()[:5]]
            raise Refused("invalid_request", "; ".join(lines)) from None
        try:
            self.ctx.proxy_limit.take(who.label)
            return await mcp_pipeline.http_request(self.ctx, st, req_in, who.agent, who.owner)
        except TooFast as e:
            raise Refused("rate_limited", f"{e}; retry after {e.retry_after} s") from None
        except VaultproxyError as e:
            raise _refused(e) from None

    async def whoami(self, who: object) -> dict[str, Any]:
        assert isinstance(who, McpCaller)
        st = self.ctx.live.state
        scopes = sorted(who.agent.services) if who.agent is not None else None
        return {"agent": who.name, "operator": who.operator, "scopes": scopes,
                "locked": True if st is None else st.locked}

    async def recent_activity(self, who: object, limit: int) -> dict[str, Any]:
        assert isinstance(who, McpCaller)
        st = self._state()
        await st.settled()
        records = await asyncio.to_thread(st.audit.tail, max(limit * 20, 1000), None, None)
        if who.anonymous:  # no name in the audit tells one anonymous caller from another
            return {"records": [], "note": "an unidentified caller has no activity of its own; "
                    "connect as an agent (vaultproxy agent add)"}
        own = [r for r in records if r.get("agent") == who.name
               and r.get("event") in ("request", "approval", "honeytoken")]
        return {"records": [{k: r.get(k) for k in ACTIVITY_FIELDS} for r in own[-limit:]]}

    def _approval(self, who: McpCaller, approval_id: str) -> Approval:
        st = self._state()
        try:
            found = owner_desk(st).book.get(approval_id[:64])
        except UnknownApproval:
            found = None
        if found is None or not who.may_read(found.ticket):
            raise Refused("approval_unknown", f"no approval with id {approval_id[:64]!r} "
                          "among yours")
        return found

    async def approval_status(self, who: object, approval_id: str) -> dict[str, Any]:
        assert isinstance(who, McpCaller)
        a = self._approval(who, approval_id)
        t = a.ticket
        return {"id": a.id, "state": a.state, "service": t.service, "method": t.method,
                "host": t.host, "path": t.path, "decided_by": a.decided_by,
                "grant_until": a.grant_until, "deadline": a.deadline}

    async def request_access(self, who: object, host: str, reason: str) -> dict[str, Any]:
        assert isinstance(who, McpCaller)
        st = self._state()
        host = host.strip().lower().rstrip(".")
        if not HOST_RE.match(host):
            raise Refused("invalid_request", "host must be a DNS name like api.example.com "
                          "(no scheme, port or path)")
        if st.registry.lookup(host, 443) is not None:
            raise Refused("service_exists", f"{host} is already a registered service's host; "
                          "see list_services")
        name = re.sub(r"[^a-z0-9]+", "-", host).strip("-")[:64]
        taken = _name_taken(st, name)
        if taken:
            raise Refused("service_exists", f"{host} would be registered as service {name!r}, "
                          f"but {taken}; ask the operator to add the service by hand")
        # agent text an operator reads at a terminal: printable characters only
        note = " ".join("".join(c for c in reason if c.isprintable() or c.isspace()).split())
        note = note[:200].replace("'", "")
        ticket = Ticket(agent=who.name, service=name, method="REGISTER", host=host, path="/",
                        body_size=None, rule=f"request_access: {note}", via="mcp",
                        agent_id=who.agent_id, owner=who.owner)
        desk = owner_desk(st)
        task = asyncio.create_task(self._propose(st, ticket))
        self._proposals.add(task)
        task.add_done_callback(self._proposals.discard)
        for _ in range(100):  # hold() opens the approval before its first await
            await asyncio.sleep(0)
            for a in reversed(desk.listed()):
                if a.ticket == ticket and a.state == "pending":
                    return {"id": a.id, "state": a.state, "service": name,
                            "deadline": a.deadline}
        raise Refused("internal", "the proposal could not be queued")

    async def _propose(self, st: ProxyState, ticket: Ticket) -> None:
        with contextlib.suppress(VaultproxyError):
            result = await st.access_desk().hold(ticket)
            if result.outcome not in ("approved", "granted"):
                return
            taken = _name_taken(st, ticket.service)
            if taken:  # the name was taken while the proposal waited
                logger.warning("request_access: not registering %s: %s", ticket.service, taken)
                return
            table = {"name": ticket.service, "hosts": [ticket.host], "mode": "placeholder",
                     "auth": "bearer"}
            try:
                await asyncio.to_thread(add_service, st.home.services, table)
                reload_registry(st)
            except VaultproxyError as e:
                logger.warning("request_access: could not register %s: %s", ticket.service,
                               type(e).__name__)
                return
            audit_admin(st, caller=f"mcp:{ticket.agent or 'operator'}", action="add_service",
                        method="REGISTER", path=f"/services/{ticket.service}", status=200)

    async def store_secret(self, who: object, ctx: Context, name: str,
                           reason: str) -> dict[str, Any]:
        assert isinstance(who, McpCaller)
        if not NAME_RE.match(name):
            raise Refused("invalid_request", "name must match ^[a-z0-9][a-z0-9_-]{0,63}$")
        st = self._state()
        url = f"{_dashboard(st)}/secrets?name={quote(name)}"
        if who.relayed:  # the proxy's relay answers a call whole: no elicitation round trip
            return {"name": name, "url": url, "action": "open_url",
                    "note": "ask the person to open this URL and store the value there"}
        message = (f"vaultproxy: please store the secret {name!r} in the dashboard "
                   f"({' '.join(reason.split())[:200]}). Never paste it into the chat.")
        try:
            result = await ctx.elicit_url(message, url, uuid.uuid4().hex)
        except Exception as e:  # the client cannot show URL elicitations: say where to go
            logger.info("store_secret: URL elicitation unavailable (%s)", type(e).__name__)
            return {"name": name, "url": url, "action": "unsupported",
                    "note": "ask the person to open this URL and store the value there"}
        return {"name": name, "url": url, "action": result.action}


def _name_taken(st: ProxyState, name: str) -> str | None:
    """Why ``name`` cannot be a proposed service's (its secret is the keystore entry of that
    name, "still to be set"): a service has it, or uses an entry of that name, or the entry
    already holds a value -- registering would hand that secret to the agent's host."""
    if st.registry.by_name(name) is not None:
        return "a service has that name"
    if any(s.secret_name == name for s in st.registry.services):
        return "another service's secret has that name"
    ks = st.session.keystore
    if ks is None:
        return "the proxy is locked (the keystore cannot be checked)"
    if has_secret(ks, name):
        return "a keystore entry of that name already holds a value"
    return None


def _dashboard(st: ProxyState) -> str:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        data = json.loads(st.home.run_json.read_text())
        address = data.get("dashboard_url") or data.get("dashboard")
        if isinstance(address, str) and address:
            return address if address.startswith("http") else f"http://{address}"
    return DASHBOARD
