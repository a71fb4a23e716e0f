"""The MCP ``http_request`` tool's one way into the request pipeline: the same function
``POST /proxy`` runs (proxy_route.py: request gate, rules, approvals, injection, response
gate, audit), with ``via="mcp"`` and the caller's agent. Only the rendering differs: the
streamed, already redacted answer becomes ``{status, headers, body}`` text for the model."""

from __future__ import annotations

from typing import Any

from fastapi.responses import StreamingResponse

from vaultproxy.access.agents import AgentRecord
from vaultproxy.admin.context import AdminContext
from vaultproxy.admin.models import ProxyIn
from vaultproxy.admin.proxy_route import proxy_pipeline
from vaultproxy.core.state import ProxyState

MAX_BODY = 1024 * 1024  # what a tool result carries; the rest is cut and flagged


async def http_request(ctx: AdminContext, st: ProxyState, req_in: ProxyIn,
                       agent: AgentRecord | None, owner: str = "") -> dict[str, Any]:
    response = await proxy_pipeline(ctx, st, req_in, agent=agent, via="mcp", owner=owner)
    body, truncated = bytearray(), False
    if isinstance(response, StreamingResponse):
        iterator = response.body_iterator
        try:
            async for chunk in iterator:
                part = chunk if isinstance(chunk, bytes) else str(chunk).encode()
                if len(body) + len(part) > MAX_BODY:
                    body += part[: MAX_BODY - len(body)]
                    truncated = True
                    break
                body += part
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # closes the upstream and writes the audit record
    else:  # pragma: no cover - the pipeline streams every upstream answer
        body += bytes(response.body)
    headers: dict[str, str] = {}
    for k, v in response.raw_headers:
        name = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return {"status": response.status_code, "headers": headers,
            "body": body.decode("utf-8", "replace"), "truncated": truncated}
