"""Dial: every upstream dial goes to an address the policy checked (pinned; no second DNS
lookup), and intercepted upstreams get verified TLS with the SNI pinned to the CONNECT host."""

from __future__ import annotations

from mitmproxy import ctx, tls
from mitmproxy.proxy import server_hooks

from vaultproxy.errors import DestinationDenied
from vaultproxy.net.resolve import resolve_checked
from vaultproxy.seam.upstream_tls import start_server_tls
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.runtime import Stage


class Dial(Stage):
    @guarded
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        st = self.rt.state()
        address = data.server.address
        if address is None:
            raise DestinationDenied("no destination")
        tunnel = self.rt.connections.tunnel(data.client.id)
        if tunnel is not None:
            if tunnel.pinned is None:
                raise DestinationDenied("tunnel target was not checked")
            if address[1] != tunnel.port and address != tunnel.pinned:
                raise DestinationDenied("dial target differs from the tunnel target")
            data.server.address = tunnel.pinned
            if tunnel.decision.service is not None:
                data.server.sni = tunnel.host
            return
        # Plain-HTTP proxying (no tunnel): resolve, check every answer, dial what we checked.
        host, port = str(address[0]), int(address[1])
        data.server.address = await resolve_checked(host, port, st.snapshot.address_context(None))

    @guarded
    def tls_start_server(self, tls_start: tls.TlsData) -> None:
        st = self.rt.state()
        tunnel = self.rt.connections.tunnel(tls_start.context.client.id)
        service = tunnel.decision.service if tunnel is not None else None
        if tunnel is None or service is None:
            return
        start_server_tls(
            tls_start,
            sni=tunnel.host,
            trust_file=st.snapshot.trust_file(service),
            insecure=service.insecure_tls,
            http2=bool(ctx.options.http2),
        )
