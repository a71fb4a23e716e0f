"""``/mcp`` on the admin listener (SPEC §11): the SDK's streamable HTTP transport behind our
own caller check. The bearer is the admin token (the operator) or an agent's
``NAME:TOKEN`` (that agent, with its scopes); a same-uid ``admin.sock`` peer is the operator.
The Guard already refused a rebindable ``Host``; the SDK's own check is therefore off."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from vaultproxy import __version__
from vaultproxy.access.agents import AgentRecord
from vaultproxy.admin.context import AdminContext
from vaultproxy.admin.guard import TRANSPORT_KEY
from vaultproxy.admin.token import bearer_matches
from vaultproxy.core.decide import identify
from vaultproxy.errors import LockedError, VaultproxyError, error_body, error_response
from vaultproxy.mcp.reserved import AGENT_HEADER, ANONYMOUS

if TYPE_CHECKING:
    from vaultproxy.admin.mcp_backend import McpCaller

MCP_PATH = "/mcp"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return bytes(v)
    return None


def agent_bearer(ctx: AdminContext, header: bytes | None) -> AgentRecord | None:
    """The agent whose ``Bearer NAME:TOKEN`` this is (verified against the keystore's
    hashes, the proxy's own ``identify``), else None."""
    if not header or not header[:7].lower() == b"bearer ":
        return None
    raw = header[7:].strip()
    if b":" not in raw:
        return None
    st = ctx.live.state
    if st is None:
        return None
    if st.locked:
        raise LockedError()  # agent hashes live in the keystore: say so, not "unauthorized"
    basic = "Basic " + base64.b64encode(raw).decode("ascii")
    with contextlib.suppress(VaultproxyError):
        return identify(basic, st.registry, st.session.agents, time.time())
    return None


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = error_body(code, message)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               (b"x-vaultproxy-error", code.encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="vaultproxy"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class McpEndpoint:
    """A raw ASGI endpoint; the SDK's session manager runs in a task started on first use
    (the admin app runs uvicorn with ``lifespan="off"``) and stopped by ``aclose``.

    The MCP SDK (and the tool server built on it) is imported and built on the first request
    to ``/mcp``, not at start: it is ~25 MiB of modules that a proxy nobody asks over MCP
    never needs, and every start would pay its import time."""

    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self.manager: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def _load(self) -> None:
        from mcp.server.transport_security import TransportSecuritySettings

        from vaultproxy.admin.mcp_backend import AdminBackend
        from vaultproxy.mcp.tools import build_server

        server = build_server(AdminBackend(self.ctx), __version__)
        server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.manager = server.session_manager

    async def _run(self) -> None:
        async with self.manager.run():
            self._ready.set()
            await asyncio.Event().wait()

    async def _started(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        await self._ready.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def who(self, scope: Scope) -> McpCaller | None:
        from vaultproxy.admin.mcp_backend import McpCaller

        header = _header(scope, b"authorization")
        if scope.get(TRANSPORT_KEY) == "unix":
            return McpCaller(None, "mcp:unix")
        if bearer_matches(header, self.ctx.token):
            relayed = _header(scope, AGENT_HEADER.lower().encode())
            if relayed is None:
                return McpCaller(None, "mcp:admin")
            if relayed == ANONYMOUS.encode():
                return McpCaller(None, "mcp:anonymous", relayed=True)
            # https://vaultproxy.internal/mcp (stages/reserved.py): the proxy proved the agent
            st = self.ctx.live.state
            agents = st.session.agents if st is not None else {}
            record = agents.get(relayed.decode("ascii", "replace"))
            return McpCaller(record, f"mcp:agent:{record.name}", relayed=True) if record else None
        agent = agent_bearer(self.ctx, header)
        return McpCaller(agent, f"mcp:agent:{agent.name}") if agent is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.manager is None:
            self._load()
        try:
            who = self.who(scope)
        except VaultproxyError as e:
            status, code, message = error_response(e)
            await _refuse(send, status, code, message)
            return
        if who is None:
            await _refuse(send, 401, "unauthorized", "send the admin token or an agent's "
                          "NAME:TOKEN as the bearer")
            return
        from vaultproxy.admin.mcp_backend import IDENTITY_KEY

        scope[IDENTITY_KEY] = who
        await self._started()
        await self.manager.handle_request(scope, receive, send)
