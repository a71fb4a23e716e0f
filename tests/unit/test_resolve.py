"""Connect-time resolution: every DNS answer is judged, exactly one checked IP is dialled."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address

import pytest

from vaultproxy.errors import DestinationDenied, UpstreamUnreachable, error_response
from vaultproxy.net.egress import AddressContext
from vaultproxy.net.resolve import Resolver, resolve_checked, system_resolver

pytestmark = pytest.mark.security

DEFAULT = AddressContext()
PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def fixed(*answers: str) -> tuple[Resolver, list[tuple[str, int]]]:
    calls: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return list(answers)

    return resolver, calls


def run(host: str, port: int, resolver: Resolver, ctx: AddressContext = DEFAULT) -> tuple[str, int]:
    return asyncio.run(resolve_checked(host, port, ctx, resolver))


@pytest.mark.parametrize(
    ("answers", "keyword"),
    [
        (["127.0.0.1"], "loopback"),
        (["::1"], "loopback"),
        (["169.254.169.254"], "metadata"),
        (["fd00:ec2::254"], "metadata"),
        (["::ffff:169.254.169.254"], "IPv4-mapped IPv6 embedding a cloud metadata"),
        (["10.0.0.7"], "private"),
        ([PUBLIC_V4, "127.0.0.1"], "loopback"),
        (["127.0.0.1", PUBLIC_V4], "loopback"),
        ([PUBLIC_V4, PUBLIC_V6, "169.254.169.254"], "metadata"),
        ([PUBLIC_V6, "fe80::1%eth0"], "link-local"),
        ([PUBLIC_V4, "64:ff9b::7f00:1"], "NAT64 IPv6 embedding a loopback"),
        ([PUBLIC_V4, "0.0.0.0"], "unspecified"),
        ([PUBLIC_V4, "not-an-address"], "non-numeric"),
    ],
)
def test_any_denied_answer_denies_the_name(answers: list[str], keyword: str) -> None:
    resolver, calls = fixed(*answers)
    with pytest.raises(DestinationDenied) as info:
        run("rebind.attacker.example", 443, resolver)
    assert keyword in str(info.value)
    assert "rebind.attacker.example" in str(info.value)
    assert calls == [("rebind.attacker.example", 443)]
    status, code, _ = error_response(info.value)
    assert (status, code) == (403, "destination_denied")


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([PUBLIC_V4], PUBLIC_V4),
        ([PUBLIC_V6], PUBLIC_V6),
        ([PUBLIC_V6, PUBLIC_V4], PUBLIC_V6),
        ([PUBLIC_V4, PUBLIC_V4, "8.8.8.8"], PUBLIC_V4),
        (["::ffff:93.184.215.14"], "::ffff:5db8:d70e"),
    ],
)
def test_all_public_answers_return_exactly_one_checked_address(
    answers: list[str], expected: str
) -> None:
    """Negative twin of the above."""
    resolver, calls = fixed(*answers)
    assert run("api.example.com", 443, resolver) == (expected, 443)
    assert calls == [("api.example.com", 443)]


def test_private_answer_allowed_only_with_allow_private() -> None:
    resolver, _ = fixed("10.0.0.7")
    assert run("nas.lan.example", 8443, resolver, AddressContext(allow_private=True)) == (
        "10.0.0.7",
        8443,
    )
    with pytest.raises(DestinationDenied):
        run("nas.lan.example", 8443, resolver, AddressContext(allow_loopback=True))


def test_passthrough_allow_lifts_private_but_never_metadata() -> None:
    ctx = AddressContext(passthrough_allow=("10.1.2.3", "169.254.0.0/16"))
    ok, _ = fixed("10.1.2.3")
    assert run("svc.internal.example", 443, ok, ctx) == ("10.1.2.3", 443)
    bad, _ = fixed("169.254.169.254")
    with pytest.raises(DestinationDenied, match="metadata"):
        run("svc.internal.example", 443, bad, ctx)


def test_own_listener_by_name() -> None:
    ctx = AddressContext(allow_loopback=True, own_listeners=frozenset({("0.0.0.0", 3203)}))
    resolver, _ = fixed("127.0.0.1")
    with pytest.raises(DestinationDenied, match="own listener"):
        run("loop.example", 3203, resolver, ctx)
    assert run("loop.example", 3204, resolver, ctx) == ("127.0.0.1", 3204)


class FlippingResolver:
    """DNS rebinding: public on the first lookup, loopback on every later one."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return [PUBLIC_V4] if self.calls == 1 else ["127.0.0.1"]


def test_rebinding_resolver_cannot_swap_the_checked_address() -> None:
    flip = FlippingResolver()
    assert run("rebind.attacker.example", 443, flip) == (PUBLIC_V4, 443)
    assert flip.calls == 1, "resolve_checked must look the name up exactly once"
    # The next connection looks it up again and is judged again.
    with pytest.raises(DestinationDenied, match="loopback"):
        run("rebind.attacker.example", 443, flip)
    assert flip.calls == 2


def test_no_answers_is_unreachable() -> None:
    resolver, _ = fixed()
    with pytest.raises(UpstreamUnreachable) as info:
        run("empty.example", 443, resolver)
    assert error_response(info.value)[:2] == (502, "upstream_unreachable")


@pytest.mark.parametrize(
    "exc",
    [
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        OSError("boom"),
        UnicodeError("label too long"),
    ],
)
def test_lookup_failure_is_unreachable(exc: Exception) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        raise exc

    with pytest.raises(UpstreamUnreachable, match="could not resolve nx.example"):
        run("nx.example", 443, resolver)


def test_system_resolver_numeric_host() -> None:
    assert asyncio.run(system_resolver("127.0.0.1", 443)) == ["127.0.0.1"]
    assert asyncio.run(system_resolver("::1", 443)) == ["::1"]


def test_system_resolver_is_the_default_and_numeric_hosts_skip_it() -> None:
    with pytest.raises(DestinationDenied, match="loopback"):
        asyncio.run(resolve_checked("0x7f.1", 443, DEFAULT))
    assert asyncio.run(resolve_checked(PUBLIC_V4, 443, DEFAULT)) == (PUBLIC_V4, 443)


def test_system_resolver_answers_for_localhost_are_judged() -> None:
    """The real getaddrinfo path: /etc/hosts answers for a name check_name does not know."""
    answers = asyncio.run(system_resolver("localhost", 443))
    assert answers and all(ip_address(a).is_loopback for a in answers)

    async def via_system(host: str, port: int) -> list[str]:
        return await system_resolver("localhost", port)

    with pytest.raises(DestinationDenied, match="loopback"):
        run("looks-innocent.example", 443, via_system)
