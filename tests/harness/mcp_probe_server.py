"""A small third-party-style MCP server (the SDK's MCPServer over stdio) for tests: it knows
nothing of vaultproxy, reads its credential from $PROBE_TOKEN and makes HTTPS requests with
httpx's usual environment (HTTPS_PROXY, SSL_CERT_FILE), as MCP servers from PyPI do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("probe")


@server.tool(structured_output=False)
def fetch(url: str) -> str:
    """GET url with Authorization: Bearer $PROBE_TOKEN; the status and body."""
    token = os.environ.get("PROBE_TOKEN", "")
    r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
    return json.dumps({"status": r.status_code, "body": r.text, "token_env": token})


@server.tool(structured_output=False)
def read(path: str) -> str:
    """Whether a file can be read from inside this server's sandbox."""
    try:
        return json.dumps({"readable": True, "size": len(Path(path).read_bytes())})
    except OSError as e:
        return json.dumps({"readable": False, "error": type(e).__name__})


if __name__ == "__main__":
    server.run("stdio")
