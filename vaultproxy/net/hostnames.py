"""Host-name comparisons used by routing: one normal form for CONNECT targets, SNI and Host."""

from __future__ import annotations

from vaultproxy.errors import UsageError


def normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def split_authority(authority: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` -> (normal host, port or None)."""
    a = authority.strip()
    if a.startswith("["):
        end = a.find("]")
        host, rest = a[1:end], a[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        return normal_host(host), port
    if a.count(":") == 1:
        host, _, p = a.partition(":")
        return normal_host(host), int(p) if p.isdigit() else -1
    return normal_host(a), None


def same_target(authority: str, host: str, port: int) -> bool:
    """Does a Host/:authority value name exactly the tunnel target?"""
    h, p = split_authority(authority)
    if h != normal_host(host):
        return False
    return p is None or p == port


def parse_listen(text: str, flag: str) -> tuple[str, int]:
    host, port = split_authority(text)
    if not host or port is None or not 0 <= port <= 65535:
        raise UsageError(f"{flag} must be HOST:PORT, for example 127.0.0.1:3203")
    return host, port
