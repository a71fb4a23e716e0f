"""Connect-time resolution: resolve once, judge every answer, return the one to dial.

The caller dials exactly the returned (ip, port); there is no second lookup, so a DNS
answer that changes between check and connect (rebinding) cannot swap the address.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from vaultproxy.errors import DestinationDenied, UpstreamUnreachable
from vaultproxy.net.egress import (
    AddressContext,
    IPAddress,
    check_name,
    judge,
    parse_ip,
    with_article,
)

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> address strings, in the order to try them."""


async def system_resolver(host: str, port: int) -> list[str]:
    """``getaddrinfo`` on the running loop (TCP); the address part of every answer."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in infos]


def _denied(reason: str) -> DestinationDenied:
    return DestinationDenied(f"destination denied: {reason}")


async def resolve_checked(
    host: str,
    port: int,
    ctx: AddressContext,
    resolver: Resolver = system_resolver,
) -> tuple[str, int]:
    """The single checked (ip, port) to dial for ``host``.

    A numeric host is judged as is. A name is refused by ``check_name`` or resolved once;
    every answer is judged and any denied one refuses the whole name (DestinationDenied);
    no answer, or a failed lookup, is UpstreamUnreachable. The first answer is returned.
    """
    literal = parse_ip(host)
    if literal is not None:
        verdict = judge(literal, port, ctx)
        if not verdict.allowed:
            raise _denied(verdict.reason)
        return str(literal), port
    refused = check_name(host)
    if refused is not None:
        raise _denied(refused.reason)
    try:
        answers = await resolver(host, port)
    except (OSError, UnicodeError):
        raise UpstreamUnreachable(f"could not resolve {host}") from None
    chosen: IPAddress | None = None
    for text in answers:
        ip = parse_ip(text)
        if ip is None:
            raise _denied(f"{host} resolved to a non-numeric answer")
        verdict = judge(ip, port, ctx)
        if not verdict.allowed:
            raise _denied(f"{host} resolves to {with_article(verdict.reason)}")
        if chosen is None:
            chosen = ip
    if chosen is None:
        raise UpstreamUnreachable(f"{host} has no addresses")
    return str(chosen), port
