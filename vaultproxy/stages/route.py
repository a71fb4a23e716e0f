"""Route: act on the CONNECT's decision — an intercepted tunnel (registered host) or one passed
through untouched; check the address it will dial; remember the target so later stages route
on it, not on Host/SNI."""

from __future__ import annotations

from mitmproxy import connection, http, tls
from mitmproxy.proxy.layer import NextLayer

from vaultproxy.errors import DestinationDenied
from vaultproxy.net.resolve import resolve_checked
from vaultproxy.seam.layers import raw_tunnel
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.mtls import cert_agent_of
from vaultproxy.stages.runtime import Stage


class Route(Stage):
    @guarded
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        rec = record_of(flow)
        if rec.answered:
            return  # already refused (ready, agent auth) or served (the reserved host)
        st = self.rt.state()
        decision = rec.decision
        if decision is None or decision.dial is None or decision.target is None:
            raise DestinationDenied("the tunnel was not decided")
        tunnel = Tunnel(decision, cert_agent=cert_agent_of(self.rt, flow.client_conn))
        self.rt.connections.open(flow.client_conn.id, tunnel)
        policy = st.snapshot.address_context(decision.service)
        tunnel.pinned = await resolve_checked(*decision.dial, policy)

    @guarded
    def next_layer(self, nextlayer: NextLayer) -> None:
        if nextlayer.layer is not None:
            return
        ctx = nextlayer.context
        tunnel = self.rt.connections.tunnel(ctx.client.id)
        if tunnel is None or ctx.server.address is None:
            return
        if tunnel.decision.service is None:
            raw_tunnel(nextlayer)  # unregistered host: TLS never terminated, nothing inspected

    @guarded
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        tunnel = self.rt.connections.tunnel(data.context.client.id)
        if tunnel is None or tunnel.decision.service is None:
            return
        tunnel.sni = data.client_hello.sni

    def client_disconnected(self, client: connection.Client) -> None:
        self.rt.connections.close(client.id)
