"""Reserved: ``https://vaultproxy.internal/mcp`` is answered by the proxy itself (SPEC §11),
never resolved or forwarded. Its CONNECT proves the agent like any other (Proxy-Authorization,
``decide.identify``), TLS is terminated with our CA, and each request is relayed to the MCP
endpoint of the admin API (which only the supervisor serves, so every worker reaches the
same approvals) with the admin token and the proven agent's name, which that endpoint
trusts from the admin-token holder only. A CONNECT that fails identification is refused
here, like any other."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import httpx
from mitmproxy import http
from mitmproxy.proxy import layers
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.proxy.layers.http import HTTPMode

from vaultproxy.access.agents import identity_of
from vaultproxy.core.decide import Decision, identify
from vaultproxy.errors import DestinationDenied, LockedError, NotReady
from vaultproxy.mcp.reserved import (
    AGENT_HEADER,
    AGENT_ID_HEADER,
    ANONYMOUS,
    MCP_PATH,
    RESERVED_HOST,
)
from vaultproxy.net.hostnames import normal_host
from vaultproxy.net.outbound import admin_client
from vaultproxy.stages import access
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import idle_unless, record_of
from vaultproxy.stages.guard import guarded, guarded_sometimes_async
from vaultproxy.stages.runtime import Runtime, Stage

TIMEOUT = httpx.Timeout(30, read=None)  # a tool call may be held for an approval


class AdminUnavailable(NotReady):
    public = "the MCP endpoint needs the admin API's TCP listener (--admin-listen)"


@dataclass
class _Client:
    agent: str | None
    digest: bytes | None = None  # the token hash the CONNECT proved (per-request re-check)
    tls: bool = False


class Reserved(Stage):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self._clients: dict[str, _Client] = {}

    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        if record_of(flow).answered or normal_host(req.host) != RESERVED_HOST:
            return
        header = access.take_proxy_authorization(self.rt, flow)  # ACCESS: honeytokens
        st = self.rt.state()
        record = identify(header, st.registry, None if st.locked else st.session.agents,
                          time.time())
        self._clients[flow.client_conn.id] = _Client(record.name if record else None,
                                                     record.digest if record else None)
        # answered here: no upstream dial, no DNS; the tunnel is ours
        _serve(flow, http.Response.make(200))

    @guarded
    def next_layer(self, nextlayer: NextLayer) -> None:
        ctx = nextlayer.context
        client = self._clients.get(ctx.client.id)
        if client is None or nextlayer.layer is not None:
            return
        if not client.tls:
            client.tls = True
            nextlayer.layer = layers.ClientTLSLayer(ctx)
        else:
            nextlayer.layer = layers.HttpLayer(ctx, HTTPMode.transparent)

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        client = self._clients.get(flow.client_conn.id)
        if client is None:
            # not ours: only a plain request (no tunnel) can name the reserved host
            if self.rt.connections.tunnels.get(flow.client_conn.id) is not None:
                return
            if record_of(flow).answered:
                return
            if normal_host(flow.request.host) == RESERVED_HOST:
                # plain http:// to the reserved name: refused, never resolved or forwarded
                raise DestinationDenied(f"use https://{RESERVED_HOST}{MCP_PATH}")
            return
        if record_of(flow).answered:
            return
        # the other stages see a tunnel to no service: nothing to inject, nothing to dial
        if self.rt.connections.tunnel(flow.client_conn.id) is None:
            ours = Decision(None, client.agent, agent_digest=client.digest,
                            target=(RESERVED_HOST, 443))
            self.rt.connections.open(flow.client_conn.id, Tunnel(ours))
        if flow.request.path.split("?")[0] != MCP_PATH or flow.request.method == "GET":
            # GET: no standalone server stream here (the SDK client does without one)
            status = 405 if flow.request.method == "GET" else 404
            _serve(flow, http.Response.make(status, b"", {"Allow": "POST, DELETE"}))

    @guarded_sometimes_async
    @idle_unless(addon_true=("_clients",))
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Only the MCP endpoint's flows wait here (the relay): any other costs no coroutine."""
        client = self._clients.get(flow.client_conn.id)
        if client is None or record_of(flow).answered:
            return None
        return self._relay(flow, client)

    async def _relay(self, flow: http.HTTPFlow, client: _Client) -> None:
        # ACCESS: the body was held for the honeytoken scan; this stage answers before
        # RequestGate's ``request`` would run, so the scan runs here, before the relay
        await access.on_request_body(self.rt, flow)
        st = self.rt.state()
        if st.locked and client.agent is not None:
            raise LockedError()
        url, token = _admin(st.home.run_json, st.home.admin_token)
        req = flow.request
        headers = [(k, v) for k, v in req.headers.items(multi=True)
                   if k.lower() not in ("host", "authorization", "content-length",
                                        AGENT_HEADER.lower(), AGENT_ID_HEADER.lower(),
                                        "connection")]
        headers += [("Authorization", f"Bearer {token}"),
                    (AGENT_HEADER, client.agent or ANONYMOUS),
                    (AGENT_ID_HEADER, identity_of(client.digest))]
        async with admin_client(TIMEOUT) as c:
            got = await c.request(req.method, url + MCP_PATH, headers=headers,
                                  content=req.raw_content or b"")
        keep = [(k.encode(), v.encode()) for k, v in got.headers.multi_items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                     "content-encoding")]
        _serve(flow, http.Response.make(got.status_code, got.content, keep))

    def client_disconnected(self, client: object) -> None:
        self._clients.pop(getattr(client, "id", ""), None)


def _serve(flow: http.HTTPFlow, response: http.Response) -> None:
    """Answer ``flow`` ourselves (``FlowRecord.served``): no later stage acts on it."""
    record_of(flow).serve()
    flow.response = response


def _admin(run_json: Path, token_file: Path) -> tuple[str, str]:
    """The admin API's TCP URL (run.json) and its token (both in the home, 0600)."""
    try:
        url = json.loads(run_json.read_text()).get("admin_url")
        token = token_file.read_text().strip()
    except (OSError, ValueError, AttributeError):
        raise AdminUnavailable() from None
    if not url or not token:
        raise AdminUnavailable()
    return str(url), token
