"""``vaultproxy mcp``: the MCP server over stdio for clients that launch servers as
commands. It is a transport bridge, not a second server: every JSON-RPC message read from
stdin goes to the running proxy's streamable HTTP endpoint (the SDK's client transport) and
every message from there is written to stdout (the SDK's stdio transport), so the tools,
their scopes, the pipeline and the audit are those of the proxy itself.

Where it connects: ``admin.sock`` of the home when it is there (a same-uid peer, the
operator), else, inside ``vaultproxy exec`` (the home is hidden there), the reserved host
``https://vaultproxy.internal/mcp`` through ``HTTPS_PROXY`` with the agent's proxy
credentials and the CA bundle of ``SSL_CERT_FILE``."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server

logger = logging.getLogger(__name__)

RESERVED_URL = "https://vaultproxy.internal/mcp"
SOCKET_URL = "http://localhost/mcp"
TIMEOUT = httpx2.Timeout(30, read=None)  # a tool call may be held for an approval


class NoProxy(Exception):
    """Neither admin.sock nor HTTPS_PROXY leads to a running vaultproxy."""


@dataclass(frozen=True)
class Target:
    url: str
    client: httpx2.AsyncClient
    how: str  # for the one log line on stderr


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def pick_target(admin_sock: Path, environ: dict[str, str]) -> Target:
    if admin_sock.exists() and _socket_alive(admin_sock):
        transport = httpx2.AsyncHTTPTransport(uds=str(admin_sock))
        return Target(SOCKET_URL, httpx2.AsyncClient(transport=transport, timeout=TIMEOUT),
                      f"admin.sock {admin_sock}")
    proxy = environ.get("HTTPS_PROXY") or environ.get("https_proxy")
    if proxy:
        bundle = environ.get("SSL_CERT_FILE")
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=bundle) if bundle
                                         else True)
        client = httpx2.AsyncClient(proxy=proxy, verify=verify, timeout=TIMEOUT, trust_env=False)
        return Target(RESERVED_URL, client, "HTTPS_PROXY -> vaultproxy.internal")
    raise NoProxy(f"no running vaultproxy: {admin_sock} does not answer and HTTPS_PROXY is "
                  "not set (start `vaultproxy run`, or run this under `vaultproxy exec`)")


async def bridge(target: Target) -> None:
    """Pump messages both ways until stdin closes (the client hung up)."""
    logger.info("vaultproxy mcp: serving stdio through %s", target.how)
    async with target.client, streamable_http_client(target.url,
                                                     http_client=target.client) as remote:
        remote_read, remote_write = remote[0], remote[1]
        async with stdio_server() as (local_read, local_write):
            async with anyio.create_task_group() as tg:

                async def up() -> None:
                    async for msg in local_read:
                        if isinstance(msg, Exception):
                            logger.warning("vaultproxy mcp: unreadable input: %s",
                                           type(msg).__name__)
                            continue
                        await remote_write.send(msg)
                    tg.cancel_scope.cancel()  # stdin closed: the client is gone

                async def down() -> None:
                    async for msg in remote_read:
                        if isinstance(msg, Exception):
                            logger.warning("vaultproxy mcp: the proxy's stream failed: %s",
                                           type(msg).__name__)
                            continue
                        await local_write.send(msg)

                tg.start_soon(up)
                tg.start_soon(down)


def run_bridge(admin_sock: Path) -> None:
    target = pick_target(admin_sock, dict(os.environ))
    anyio.run(bridge, target)
