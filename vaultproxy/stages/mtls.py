"""MtlsEntry: the mutual-TLS listener (`run --mtls-listen`, ``[mtls]``). The outer TLS of a
connection on that listener is ours (seam/mtls.py: client certificate required, issued by
``client_ca``); the verified certificate's CN names the agent for every request on the
connection, with that agent's scopes and no token. A connection on the mTLS listener with
no recorded CN is refused (407), never served anonymously -- also if this stage failed."""

from __future__ import annotations

import logging

from mitmproxy import connection, tls
from OpenSSL import SSL

from vaultproxy.seam import mtls as seam_mtls
from vaultproxy.stages.runtime import Runtime, Stage

logger = logging.getLogger(__name__)


def _spec(client: connection.Client) -> str | None:
    mode = getattr(client, "proxy_mode", None)
    return getattr(mode, "full_spec", None)


def cert_agent_of(rt: Runtime, client: connection.Client) -> str | None:
    """None off the mTLS listener; else the CN (or "" when none was verified)."""
    return rt.connections.cert_agent(client.id, _spec(client))


class MtlsEntry(Stage):
    """Not in the required chain: added only when ``--mtls-listen`` is given."""

    def __init__(self, rt: Runtime, spec: str, ctx: SSL.Context) -> None:
        super().__init__(rt)
        self.spec = spec
        self.ctx = ctx
        self._outer: set[str] = set()  # clients whose outer handshake is ours
        rt.connections.mtls_spec = spec

    def load(self, loader: object) -> None:
        return None  # not one of REQUIRED_STAGES

    def done(self) -> None:
        return None

    def tls_start_client(self, data: tls.TlsData) -> None:
        client = data.context.client
        if _spec(client) != self.spec or client.id in self._outer:
            return  # another listener, or the inner TLS of a tunnel: mitmproxy's own
        self._outer.add(client.id)
        seam_mtls.start_outer(data, self.ctx)

    def tls_established_client(self, data: tls.TlsData) -> None:
        client = data.context.client
        if _spec(client) != self.spec or client.id not in self._outer:
            return
        if self.rt.connections.cert_agent(client.id, self.spec):
            return  # the inner TLS of a tunnel: the identity was taken at the outer one
        self.rt.connections.set_cert_agent(client.id, seam_mtls.peer_cn(client) or "")

    def tls_failed_client(self, data: tls.TlsData) -> None:
        client = data.context.client
        if _spec(client) == self.spec and not self.rt.connections.cert_agent(client.id,
                                                                                self.spec):
            logger.info("mTLS: refused a handshake from %s (no certificate from client_ca)",
                        client.peername[0] if client.peername else "?")

    def client_disconnected(self, client: connection.Client) -> None:
        self._outer.discard(client.id)
