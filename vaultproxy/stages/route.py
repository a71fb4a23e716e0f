"""Route: decide per CONNECT whether a tunnel is intercepted (registered host), passed through
untouched, or refused; remember the target so later stages route on it, not on Host/SNI."""

from __future__ import annotations

from mitmproxy import connection, http, tls
from mitmproxy.proxy import layers
from mitmproxy.proxy.layer import NextLayer

from vaultproxy.errors import EgressBlocked
from vaultproxy.hostnames import normal_host, split_authority
from vaultproxy.resolve import resolve_checked
from vaultproxy.stages import runtime
from vaultproxy.stages.guard import guarded
from vaultproxy.state import Tunnel


class Route:
    def load(self, loader: object) -> None:
        runtime.stage_loaded("Route")

    def done(self) -> None:
        runtime.stage_unloaded("Route")

    @guarded
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # already refused (gate, agent auth)
        st = runtime.state()
        host, port = normal_host(flow.request.host), flow.request.port
        service = st.registry.lookup(host, port)
        tunnel = Tunnel(host=host, port=port, service=service)
        tunnel.agent = flow.metadata.get("vaultproxy.agent")
        st.tunnels[flow.client_conn.id] = tunnel
        if service is None and st.registry.config.proxy.egress == "block":
            raise EgressBlocked(f"{host}:{port} is not registered and egress is blocked")
        dial_host, dial_port = host, port
        if service is not None and service.connect_to:
            h, p = split_authority(service.connect_to)
            dial_host, dial_port = h, p if p and p > 0 else port
        policy = st.snapshot.address_context(service)
        tunnel.pinned = await resolve_checked(dial_host, dial_port, policy)

    @guarded
    def next_layer(self, nextlayer: NextLayer) -> None:
        if nextlayer.layer is not None:
            return
        st = runtime.state()
        ctx = nextlayer.context
        tunnel = st.tunnels.get(ctx.client.id)
        if tunnel is None or ctx.server.address is None:
            return
        if tunnel.service is None:
            # Unregistered host: a raw tunnel, TLS never terminated, nothing inspected.
            nextlayer.layer = layers.TCPLayer(ctx, ignore=True)

    @guarded
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        st = runtime.state()
        tunnel = st.tunnels.get(data.context.client.id)
        if tunnel is None or tunnel.service is None:
            return
        sni = data.client_hello.sni
        if sni and normal_host(sni) != tunnel.host:
            tunnel.sni_mismatch = True

    def client_disconnected(self, client: connection.Client) -> None:
        st = runtime.current()
        if st is not None:
            st.tunnels.pop(client.id, None)
            st.broken_clients.discard(client.id)
