"""``/mcp`` on the admin listener (SPEC §11): the SDK's streamable HTTP transport behind our
own caller check. The bearer is the admin token (the operator) or an agent's
``NAME:TOKEN`` (that agent, with its scopes); a same-uid ``admin.sock`` peer is the operator.
The Guard already refused a rebindable ``Host``; the SDK's own check is therefore off."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Receive, Scope, Send

from vaultproxy import __version__
from vaultproxy.access.agents import AgentRecord
from vaultproxy.admin.context import AdminContext
from vaultproxy.admin.guard import TRANSPORT_KEY
from vaultproxy.admin.token import bearer_matches
from vaultproxy.core.decide import identify
from vaultproxy.errors import (
    BodyTooLarge,
    HoneytokenUsed,
    LockedError,
    VaultproxyError,
    error_body,
    error_response,
)
from vaultproxy.mcp.reserved import AGENT_HEADER, AGENT_ID_HEADER, ANONYMOUS, SESSION_HEADER
from vaultproxy.values.honeytokens import Sighting, screen

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


async def _refuse(send: Send, status: int, code: str, message: str,
                  rpc_id: object = ...) -> None:
    """Our error (SPEC §5). With ``rpc_id`` (a refused JSON-RPC request) the body is a
    JSON-RPC error whose ``data`` is that error, which an MCP client shows as the call's
    error; the status and ``X-Vaultproxy-Error`` are the same."""
    body = error_body(code, message)
    if rpc_id is not ...:
        body = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "error": {
            "code": -32600, "message": f"{code}: {message}",
            "data": json.loads(body)}}).encode()
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
                # an unidentified caller of the reserved host: what it opens is readable by
                # its own MCP session only (a secret the SDK issued to it at initialize)
                session = _header(scope, SESSION_HEADER.encode())
                owner = f"mcp-session:{session.decode('latin-1')}" if session else ""
                return McpCaller(None, "mcp:anonymous", relayed=True, anonymous=True,
                                 owner=owner)
            # https://vaultproxy.internal/mcp (stages/reserved.py): the proxy proved the agent
            # (its name and the identity of the token it proved: not a later agent of that
            # name)
            st = self.ctx.live.state
            agents = st.session.agents if st is not None else {}
            record = agents.get(relayed.decode("ascii", "replace"))
            proven = (_header(scope, AGENT_ID_HEADER.lower().encode()) or b"").decode("latin-1")
            if record is None or not proven or record.identity != proven:
                return None
            return McpCaller(record, f"mcp:agent:{record.name}", relayed=True)
        agent = agent_bearer(self.ctx, header)
        return McpCaller(agent, f"mcp:agent:{agent.name}") if agent is not None else None

    async def _screened(self, who: McpCaller, receive: Receive, send: Send
                        ) -> Receive | None:
        """The request body, scanned for honeytokens (values/honeytokens.py, the scan every
        entry runs) before the SDK parses it: every tool call's arguments, and any other
        text an agent sends here. Returns a ``receive`` that replays it, or None when the
        request was refused (and answered)."""
        chunks: list[bytes] = []
        size, more = 0, True
        st = self.ctx.live.state
        limit = (st.registry.config.proxy.max_body_mb if st is not None else 32) * 1024 * 1024
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, 413, BodyTooLarge.code, BodyTooLarge.public)
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if st is not None and st.snapshot.honeytokens and body:
            call = _tool_call(body)
            try:
                screen(st.snapshot.honeytokens, [(call.surface, body)], st.audit,
                       st.access_desk().alert, lambda: call.sighting(who.name))
            except HoneytokenUsed as e:
                await _refused_call(send, call, e)
                return None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return replay

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

        if scope.get("method") == "POST":
            screened = await self._screened(who, receive, send)
            if screened is None:
                return
            receive = screened
        scope[IDENTITY_KEY] = who
        await self._started()
        await self.manager.handle_request(scope, receive, send)


@dataclass(frozen=True)
class _Call:
    """What a refused JSON-RPC message was, for its audit record and its answer."""

    rpc_id: object  # None: a notification, or not JSON-RPC
    tool: str | None  # a ``tools/call``'s tool
    arguments: dict[str, Any]

    @property
    def surface(self) -> str:
        return f"MCP {self.tool} arguments" if self.tool else "MCP request"

    def sighting(self, agent: str | None) -> Sighting:
        args = self.arguments
        service, method, path = (args.get(k) for k in ("service", "method", "path"))
        text = {k: v if isinstance(v, str) else None for k, v in
                (("service", service), ("method", method), ("path", path))}
        return Sighting(agent, text["service"], (text["method"] or "POST")[:16],
                        None, (text["path"] or MCP_PATH).split("?")[0][:512], "mcp",
                        f"through MCP {self.tool or 'request'}")


def _tool_call(body: bytes) -> _Call:
    with contextlib.suppress(ValueError):
        data = json.loads(body)
        if isinstance(data, dict):
            rpc_id = data.get("id") if isinstance(data.get("id"), str | int) else None
            params = data.get("params")
            if data.get("method") == "tools/call" and isinstance(params, dict):
                args = params.get("arguments")
                name = params.get("name")
                return _Call(rpc_id, str(name)[:64] if isinstance(name, str) else "?",
                             args if isinstance(args, dict) else {})
            return _Call(rpc_id, None, {})
    return _Call(None, None, {})


async def _refused_call(send: Send, call: _Call, e: VaultproxyError) -> None:
    """A ``tools/call`` gets the tool error the tool itself would give (the model reads it
    as the call's result); any other message a JSON-RPC error (403)."""
    status, code, message = error_response(e)
    if call.tool is None or call.rpc_id is None:
        await _refuse(send, status, code, message, rpc_id=call.rpc_id)
        return
    body = json.dumps({"jsonrpc": "2.0", "id": call.rpc_id, "result": {
        "content": [{"type": "text", "text": f"{call.tool}: {code}: {message}"}],
        "isError": True}}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-vaultproxy-error", code.encode())]})
    await send({"type": "http.response.body", "body": body})
