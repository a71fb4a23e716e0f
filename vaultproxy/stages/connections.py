"""Per client connection: what its CONNECT decided (the tunnel) and whether a hook failed on
it. One table per chain, entries dropped when the client disconnects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vaultproxy.core.decide import Decision


@dataclass
class Tunnel:
    """One client connection's CONNECT: its decision (target, service, agent and the token
    digest it proved), and what the connection learnt since."""

    decision: Decision
    cert_agent: str | None = None  # the mTLS client certificate's CN (no token)
    pinned: tuple[str, int] | None = None  # the checked address we dial
    sni: str | None = None  # the server name of the agent's TLS ClientHello
    broken: bool = False  # a hook failed on this connection: refuse every request on it
    # Identify: the last request's decision and what it was decided from (the registry
    # object, the CONNECT's decision, SNI, Host, scheme); reused only under the very same
    # (stages/identify.py)
    memo: tuple[object, Decision, str | None, str | bytes, bytes, Decision] | None = None
    # Pool: what this tunnel's exchange made of it and the policy (stages/pool.py ``_make``;
    # valid under the stage's token, the snapshot and the options object it names)
    pool_made: Any = field(default=None, repr=False)  # (holds the snapshot: not in repr)

    @property
    def host(self) -> str:
        """The CONNECT target's host (normalised): routing uses only this."""
        assert self.decision.target is not None
        return self.decision.target[0]

    @property
    def port(self) -> int:
        assert self.decision.target is not None
        return self.decision.target[1]


class Connections:
    def __init__(self) -> None:
        # client id -> its tunnel; ``tunnel()`` reads it (per-request stages read it directly)
        self.tunnels: dict[str, Tunnel] = {}
        # connections marked broken while they had no tunnel (plain HTTP, or before the
        # CONNECT): ``broken`` asks this and the tunnel's own flag
        self.broken_ids: set[str] = set()
        self.mtls_spec: str | None = None  # the mTLS listener's mode (stages/mtls.py)
        self._cert_agents: dict[str, str] = {}  # client id -> CN its certificate proved

    def set_cert_agent(self, client_id: str, cn: str) -> None:
        self._cert_agents[client_id] = cn

    def cert_agent(self, client_id: str, proxy_mode: str | None) -> str | None:
        """None: not an mTLS connection. Else the CN its verified client certificate named
        ("" when none was recorded: such a connection is refused, never anonymous)."""
        if self.mtls_spec is None or proxy_mode != self.mtls_spec:
            return None
        return self._cert_agents.get(client_id, "")

    def tunnel(self, client_id: str) -> Tunnel | None:
        return self.tunnels.get(client_id)

    def open(self, client_id: str, tunnel: Tunnel) -> None:
        self.tunnels[client_id] = tunnel

    def mark_broken(self, client_id: str) -> None:
        tunnel = self.tunnels.get(client_id)
        if tunnel is not None:
            tunnel.broken = True
        else:
            self.broken_ids.add(client_id)

    def broken(self, client_id: str) -> bool:
        tunnel = self.tunnels.get(client_id)
        return client_id in self.broken_ids or (tunnel is not None and tunnel.broken)

    def close(self, client_id: str) -> None:
        self.tunnels.pop(client_id, None)
        self.broken_ids.discard(client_id)
        self._cert_agents.pop(client_id, None)
