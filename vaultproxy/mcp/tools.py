"""The MCP tools (SPEC §11), written for a model to read: each description says what the
tool does, what it never returns and what its errors mean.

This module only knows the SDK and a ``Backend``: the admin layer implements the backend
with the proxy's own pipeline, so a tool call is the same request, with the same rules,
approvals, injection, response gate and audit, as ``POST /proxy``. Every tool's answer is
one JSON text that the backend has passed through the response gate (``scrub``)."""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

INSTRUCTIONS = (
    "vaultproxy holds the real credentials of the HTTP services listed by list_services and "
    "adds them to your requests. You never see a secret value: call http_request with the "
    "service name and the path, without any Authorization header. If a service you need is "
    "missing, call request_access; if its secret is missing, call store_secret so a person "
    "can type it into vaultproxy's dashboard."
)


class Refused(Exception):
    """A refusal the model should read: ``code`` is vaultproxy's error code (SPEC §5)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Backend(Protocol):
    """What the tools ask of the running proxy, for the caller of the current request."""

    def caller(self, ctx: Context) -> object: ...
    def scrub(self, text: str) -> str: ...
    async def list_services(self, who: object) -> dict[str, Any]: ...
    async def http_request(self, who: object, call: dict[str, Any]) -> dict[str, Any]: ...
    async def whoami(self, who: object) -> dict[str, Any]: ...
    async def recent_activity(self, who: object, limit: int) -> dict[str, Any]: ...
    async def approval_status(self, who: object, approval_id: str) -> dict[str, Any]: ...
    async def request_access(self, who: object, host: str, reason: str) -> dict[str, Any]: ...
    async def store_secret(self, who: object, ctx: Context, name: str,
                           reason: str) -> dict[str, Any]: ...


def build_server(backend: Backend, version: str) -> MCPServer:
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    server: MCPServer = MCPServer("vaultproxy", version=version, instructions=INSTRUCTIONS,
                                  log_level="WARNING")
    # MCPServer calls logging.basicConfig: the proxy's own logging (and its redacting
    # filter) stays as it was configured
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]

    async def answer(work: Any) -> str:
        try:
            result = await work
        except Refused as e:
            raise ToolError(backend.scrub(str(e))) from None
        return backend.scrub(json.dumps(result, ensure_ascii=False))

    @server.tool(structured_output=False)
    async def list_services(ctx: Context) -> str:
        """List the HTTP services you may call through vaultproxy: name, hosts, mode, auth
        type, placeholder, environment variable, request rules and whether the secret is set.

        Never returns a secret value. A service whose "secret_present" is false answers
        502 secret_missing until someone stores its secret (see store_secret)."""
        return await answer(backend.list_services(backend.caller(ctx)))

    @server.tool(structured_output=False)
    async def http_request(ctx: Context, service: str, method: str = "GET", path: str = "/",
                           headers: dict[str, str] | None = None,
                           query: dict[str, str | list[str]] | None = None,
                           body: str | dict[str, Any] | list[Any] | None = None) -> str:
        """Send one HTTPS request to a registered service; vaultproxy adds the credential.

        service: a name from list_services. path: starts with "/" (no scheme or host).
        headers: never send Authorization or API-key headers - they are refused
        (auth_header_refused); vaultproxy adds them. body: text, or JSON (object/array).
        Returns {"status", "headers", "body"} of the upstream's answer as text; a body over
        1 MiB is cut and "truncated" is true. Any secret echoed by the service is replaced
        by its placeholder: you never receive a credential.
        Errors name a code: agent_scope (not your service), unknown_service,
        request_denied (a rule forbids it), approval_denied / approval_timeout (a person
        refused or did not answer; approval_status tells you more), rate_limited,
        secret_missing, locked (vaultproxy is locked), upstream_* (the service is down)."""
        call = {"service": service, "method": method, "path": path, "headers": headers or {},
                "query": query or {}, "body": body}
        return await answer(backend.http_request(backend.caller(ctx), call))

    @server.tool(structured_output=False)
    async def whoami(ctx: Context) -> str:
        """Who vaultproxy thinks you are: your agent name (null for the operator), the
        services you may use (null: all), and whether vaultproxy is locked (then every
        request fails with "locked" until a person unlocks it). Never returns a token."""
        return await answer(backend.whoami(backend.caller(ctx)))

    @server.tool(structured_output=False)
    async def recent_activity(ctx: Context, limit: int = 20) -> str:
        """Your own most recent requests from vaultproxy's audit log (newest last, at most
        200): time, service, method, host, path (no query), status, outcome and reason.
        Never returns request or response bodies, query strings or secrets."""
        return await answer(backend.recent_activity(backend.caller(ctx),
                                                    max(1, min(limit, 200))))

    @server.tool(structured_output=False)
    async def approval_status(ctx: Context, id: str) -> str:
        """The state of an approval: pending, approved, denied or timed_out, with the
        request it is about. Use the id from an approval_timeout error or from
        request_access. After "approved" (or a grant), retry the same request.
        Never returns a secret or a request body.
        Error approval_unknown: no such id among your approvals."""
        return await answer(backend.approval_status(backend.caller(ctx), id))

    @server.tool(structured_output=False)
    async def request_access(ctx: Context, host: str, reason: str) -> str:
        """Ask the operator to register a new service for a host (e.g. "api.example.com").
        Returns a proposal id right away; a person approves or denies it. Once approved the
        service exists, but its secret must still be stored (store_secret) before requests
        carry a credential. reason: one sentence the person will read.
        Never grants anything by itself; never returns a secret."""
        return await answer(backend.request_access(backend.caller(ctx), host, reason))

    @server.tool(structured_output=False)
    async def store_secret(ctx: Context, name: str, reason: str) -> str:
        """Ask a person to store a secret named `name` in vaultproxy: the person is shown a
        link to vaultproxy's dashboard, where they type the value into a write-only form.
        The value never passes through you or this conversation - do not ask the user to
        paste it here. Returns whether the person accepted to open the link."""
        return await answer(backend.store_secret(backend.caller(ctx), ctx, name, reason))

    return server
