"""Egress/SSRF address policy: every address form, at load time and at connect time."""

from __future__ import annotations

import asyncio
import re
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from vaultproxy.errors import DestinationDenied
from vaultproxy.net.egress import (
    AddressContext,
    Verdict,
    check_name,
    check_static,
    judge,
    parse_ip,
    parse_passthrough,
)
from vaultproxy.net.resolve import resolve_checked

pytestmark = pytest.mark.security

DEFAULT = AddressContext()
LOOPBACK = AddressContext(allow_loopback=True)
PRIVATE = AddressContext(allow_private=True)
BOTH = AddressContext(allow_private=True, allow_loopback=True)
PASS_ONE = AddressContext(passthrough_allow=("10.1.2.3",))
PASS_PORT = AddressContext(passthrough_allow=("10.1.2.3:8443", "[fd00::7]:443"))
PASS_LINKLOCAL = AddressContext(passthrough_allow=("169.254.0.0/16", "fe80::/10"))
PASS_ALL = AddressContext(passthrough_allow=("0.0.0.0/0", "::/0"))
OWN = AddressContext(allow_loopback=True, own_listeners=frozenset({("127.0.0.1", 3203)}))
OWN_ANY = AddressContext(
    allow_private=True,
    allow_loopback=True,
    passthrough_allow=("0.0.0.0/0", "::/0"),
    own_listeners=frozenset({("0.0.0.0", 3203), ("::", 3201)}),
)

# Teredo: 2001:0:<server>:<flags>:<port>:<client XOR ffffffff>
TEREDO_LOOPBACK = "2001:0:4136:e378:8000:63bf:80ff:fffe"  # client 127.0.0.1
TEREDO_METADATA = "2001:0:4136:e378:8000:63bf:5601:5601"  # client 169.254.169.254
TEREDO_PUBLIC = "2001:0:4136:e378:8000:63bf:a247:28f1"  # client 93.184.215.14

# (form, port, context, allowed, keyword the reason must contain)
CASES: list[tuple[str, int, AddressContext, bool, str]] = [
    # --- IPv4 loopback, every textual form getaddrinfo accepts
    ("127.0.0.1", 443, DEFAULT, False, "loopback"),
    ("127.255.255.254", 443, DEFAULT, False, "loopback"),
    ("2130706433", 443, DEFAULT, False, "loopback"),
    ("0177.0.0.1", 443, DEFAULT, False, "loopback"),
    ("0177.1", 443, DEFAULT, False, "loopback"),
    ("017700000001", 443, DEFAULT, False, "loopback"),
    ("0x7f.1", 443, DEFAULT, False, "loopback"),
    ("0X7F.0.0.1", 443, DEFAULT, False, "loopback"),
    ("0x7f000001", 443, DEFAULT, False, "loopback"),
    ("127.1", 443, DEFAULT, False, "loopback"),
    ("127.0.1", 443, DEFAULT, False, "loopback"),
    # --- IPv6 loopback
    ("::1", 443, DEFAULT, False, "loopback"),
    ("[::1]", 443, DEFAULT, False, "loopback"),
    ("0:0:0:0:0:0:0:1", 443, DEFAULT, False, "loopback"),
    ("::1%lo", 443, DEFAULT, False, "loopback"),
    # --- cloud metadata, every form
    ("169.254.169.254", 80, DEFAULT, False, "metadata"),
    ("2852039166", 80, DEFAULT, False, "metadata"),
    ("0xa9fea9fe", 80, DEFAULT, False, "metadata"),
    ("0251.0376.0251.0376", 80, DEFAULT, False, "metadata"),
    ("0xa9.0xfe.0xa9.0xfe", 80, DEFAULT, False, "metadata"),
    ("169.254.43518", 80, DEFAULT, False, "metadata"),
    ("169.16689662", 80, DEFAULT, False, "metadata"),
    ("169.254.170.2", 80, DEFAULT, False, "metadata"),
    ("100.100.100.200", 80, DEFAULT, False, "metadata"),
    ("100.100.100.200", 80, PRIVATE, False, "metadata"),
    ("192.0.0.192", 80, BOTH, False, "metadata"),
    ("168.63.129.16", 80, DEFAULT, False, "metadata"),
    ("fd00:ec2::254", 80, DEFAULT, False, "metadata"),
    ("[fd00:ec2::254]", 80, PRIVATE, False, "metadata"),
    ("fd20:ce::254", 80, PRIVATE, False, "metadata"),
    # --- unspecified
    ("0", 443, DEFAULT, False, "unspecified"),
    ("00", 443, DEFAULT, False, "unspecified"),
    ("0x0", 443, DEFAULT, False, "unspecified"),
    ("0.0.0.0", 443, BOTH, False, "unspecified"),
    ("0.1.2.3", 443, DEFAULT, False, "unspecified"),
    ("::", 443, BOTH, False, "unspecified"),
    ("[::]", 443, DEFAULT, False, "unspecified"),
    # --- link-local
    ("169.254.1.1", 443, BOTH, False, "link-local"),
    ("fe80::1", 443, BOTH, False, "link-local"),
    ("fe80::1%eth0", 443, DEFAULT, False, "link-local"),
    ("[fe80::a9fe:a9fe%25eth0]", 443, DEFAULT, False, "link-local"),
    ("febf::1", 443, DEFAULT, False, "link-local"),
    # --- private
    ("10.1.2.3", 443, DEFAULT, False, "private"),
    ("012.1.2.3", 443, DEFAULT, False, "private"),
    ("0xa.1.2.3", 443, DEFAULT, False, "private"),
    ("167772161", 443, DEFAULT, False, "private"),
    ("172.16.0.1", 443, DEFAULT, False, "private"),
    ("172.31.255.255", 443, DEFAULT, False, "private"),
    ("192.168.1.1", 443, DEFAULT, False, "private"),
    ("3232235777", 443, DEFAULT, False, "private"),
    ("fc00::1", 443, DEFAULT, False, "unique-local"),
    ("fd12:3456::1", 443, DEFAULT, False, "unique-local"),
    ("100.64.0.1", 443, DEFAULT, False, "carrier-grade NAT"),
    ("100.127.255.255", 443, DEFAULT, False, "carrier-grade NAT"),
    # --- multicast, broadcast, reserved, benchmarking, documentation, IETF, site-local
    ("224.0.0.1", 443, BOTH, False, "multicast"),
    ("239.255.255.250", 443, DEFAULT, False, "multicast"),
    ("ff02::1", 443, BOTH, False, "multicast"),
    ("ff05::2", 443, DEFAULT, False, "multicast"),
    ("ff0e::1", 443, DEFAULT, False, "multicast"),
    ("255.255.255.255", 443, BOTH, False, "broadcast"),
    ("4294967295", 443, DEFAULT, False, "broadcast"),
    ("0xffffffff", 443, DEFAULT, False, "broadcast"),
    ("240.0.0.1", 443, DEFAULT, False, "reserved"),
    ("250.1.2.3", 443, BOTH, False, "reserved"),
    ("198.18.0.1", 443, DEFAULT, False, "benchmarking"),
    ("198.19.255.255", 443, DEFAULT, False, "benchmarking"),
    ("192.0.2.1", 443, DEFAULT, False, "documentation"),
    ("198.51.100.7", 443, DEFAULT, False, "documentation"),
    ("203.0.113.9", 443, DEFAULT, False, "documentation"),
    ("2001:db8::1", 443, DEFAULT, False, "documentation"),
    ("3fff::1", 443, DEFAULT, False, "documentation"),
    ("192.0.0.8", 443, BOTH, False, "IETF protocol assignment"),
    ("2001:2::1", 443, DEFAULT, False, "IETF protocol assignment"),
    ("fec0::1", 443, BOTH, False, "site-local"),
    ("feff::1", 443, DEFAULT, False, "site-local"),
    ("100::1", 443, DEFAULT, False, "discard-only"),
    ("4000::1", 443, DEFAULT, False, "reserved"),
    # --- IPv6 wrappings of loopback
    ("::ffff:127.0.0.1", 443, DEFAULT, False, "IPv4-mapped IPv6 embedding a loopback"),
    ("::ffff:7f00:1", 443, DEFAULT, False, "IPv4-mapped IPv6 embedding a loopback"),
    ("[::ffff:127.0.0.1]", 443, DEFAULT, False, "IPv4-mapped IPv6 embedding a loopback"),
    ("0:0:0:0:0:ffff:127.0.0.1", 443, DEFAULT, False, "IPv4-mapped"),
    ("::127.0.0.1", 443, DEFAULT, False, "IPv4-compatible IPv6 embedding a loopback"),
    ("::127.0.0.1", 443, LOOPBACK, False, "IPv4-compatible"),
    ("2002:7f00:1::1", 443, DEFAULT, False, "6to4 IPv6 embedding a loopback"),
    (TEREDO_LOOPBACK, 443, DEFAULT, False, "Teredo IPv6 (client) embedding a loopback"),
    ("64:ff9b::127.0.0.1", 443, DEFAULT, False, "NAT64 IPv6 embedding a loopback"),
    ("64:ff9b::7f00:1", 443, DEFAULT, False, "NAT64 IPv6 embedding a loopback"),
    ("64:ff9b:1::127.0.0.1", 443, PRIVATE, False, "local-use NAT64 IPv6 embedding a loopback"),
    # --- IPv6 wrappings of metadata (lifting flags change nothing)
    ("::ffff:169.254.169.254", 80, BOTH, False, "IPv4-mapped IPv6 embedding a cloud metadata"),
    ("::ffff:a9fe:a9fe", 80, DEFAULT, False, "IPv4-mapped IPv6 embedding a cloud metadata"),
    ("::169.254.169.254", 80, DEFAULT, False, "IPv4-compatible IPv6 embedding a cloud metadata"),
    ("2002:a9fe:a9fe::", 80, BOTH, False, "6to4 IPv6 embedding a cloud metadata"),
    (TEREDO_METADATA, 80, DEFAULT, False, "Teredo IPv6 (client) embedding a cloud metadata"),
    ("64:ff9b::169.254.169.254", 80, BOTH, False, "NAT64 IPv6 embedding a cloud metadata"),
    ("64:ff9b::a9fe:a9fe", 80, DEFAULT, False, "NAT64 IPv6 embedding a cloud metadata"),
    ("64:ff9b:1::a9fe:a9fe", 80, BOTH, False, "local-use NAT64 IPv6 embedding a cloud metadata"),
    ("64:ff9b:1:a9fe:a9:fe00::", 80, BOTH, False, "local-use NAT64 IPv6 embedding a cloud"),
    ("::ffff:100.100.100.200", 80, PRIVATE, False, "IPv4-mapped IPv6 embedding a cloud metadata"),
    # --- IPv6 wrappings of private and other denied ranges
    ("::ffff:10.0.0.1", 443, DEFAULT, False, "IPv4-mapped IPv6 embedding a private"),
    ("::ffff:192.168.1.1", 443, DEFAULT, False, "IPv4-mapped IPv6 embedding a private"),
    ("2002:c0a8:101::1", 443, DEFAULT, False, "6to4 IPv6 embedding a private"),
    ("64:ff9b::10.0.0.1", 443, DEFAULT, False, "NAT64 IPv6 embedding a private"),
    ("::ffff:100.64.0.1", 443, DEFAULT, False, "embedding a carrier-grade NAT"),
    ("::ffff:0.0.0.0", 443, BOTH, False, "IPv4-mapped IPv6 embedding an unspecified"),
    ("::ffff:224.0.0.1", 443, BOTH, False, "IPv4-mapped IPv6 embedding a multicast"),
    ("64:ff9b::239.1.1.1", 443, DEFAULT, False, "NAT64 IPv6 embedding a multicast"),
    ("::ffff:169.254.1.1", 443, BOTH, False, "embedding a link-local"),
    (TEREDO_PUBLIC, 443, DEFAULT, False, "Teredo"),
    # --- allow_loopback lifts loopback only
    ("127.0.0.1", 443, LOOPBACK, True, "loopback"),
    ("0x7f.1", 443, LOOPBACK, True, "loopback"),
    ("::1", 443, LOOPBACK, True, "loopback"),
    ("::ffff:127.0.0.1", 443, LOOPBACK, True, "IPv4-mapped"),
    ("10.0.0.1", 443, LOOPBACK, False, "private"),
    ("169.254.169.254", 80, LOOPBACK, False, "metadata"),
    ("100.64.0.1", 443, LOOPBACK, False, "carrier-grade NAT"),
    # --- allow_private lifts private/CGNAT/ULA only
    ("10.1.2.3", 443, PRIVATE, True, "private"),
    ("192.168.1.1", 443, PRIVATE, True, "private"),
    ("fd12::1", 443, PRIVATE, True, "unique-local"),
    ("100.64.0.1", 443, PRIVATE, True, "carrier-grade NAT"),
    ("::ffff:10.1.2.3", 443, PRIVATE, True, "IPv4-mapped"),
    ("64:ff9b::10.1.2.3", 443, PRIVATE, True, "NAT64"),
    ("64:ff9b:1::808:808", 443, PRIVATE, True, "local-use NAT64"),
    ("64:ff9b:1::808:808", 443, DEFAULT, False, "local-use NAT64"),
    ("127.0.0.1", 443, PRIVATE, False, "loopback"),
    ("169.254.1.1", 443, PRIVATE, False, "link-local"),
    # --- passthrough_allow lifts matching private/loopback only
    ("10.1.2.3", 443, PASS_ONE, True, "passthrough_allow"),
    ("::ffff:10.1.2.3", 443, PASS_ONE, True, "IPv4-mapped"),
    ("10.1.2.4", 443, PASS_ONE, False, "private"),
    ("10.1.2.3", 8443, PASS_PORT, True, "passthrough_allow"),
    ("10.1.2.3", 443, PASS_PORT, False, "private"),
    ("fd00::7", 443, PASS_PORT, True, "passthrough_allow"),
    ("fd00::7", 80, PASS_PORT, False, "unique-local"),
    ("169.254.169.254", 80, PASS_LINKLOCAL, False, "metadata"),
    ("169.254.1.1", 80, PASS_LINKLOCAL, False, "link-local"),
    ("fe80::1", 80, PASS_LINKLOCAL, False, "link-local"),
    ("127.0.0.1", 443, PASS_ALL, True, "passthrough_allow"),
    ("192.168.0.1", 443, PASS_ALL, True, "passthrough_allow"),
    ("169.254.169.254", 80, PASS_ALL, False, "metadata"),
    ("fd00:ec2::254", 80, PASS_ALL, False, "metadata"),
    ("224.0.0.1", 443, PASS_ALL, False, "multicast"),
    ("0.0.0.0", 443, PASS_ALL, False, "unspecified"),
    ("::ffff:169.254.169.254", 80, PASS_ALL, False, "metadata"),
    # --- the proxy's own listeners
    ("127.0.0.1", 3203, OWN, False, "own listener"),
    ("0x7f.1", 3203, OWN, False, "own listener"),
    ("::ffff:127.0.0.1", 3203, OWN, False, "IPv4-mapped IPv6 embedding the proxy's own"),
    ("64:ff9b::127.0.0.1", 3203, OWN, False, "own listener"),
    ("127.0.0.1", 3204, OWN, True, "loopback"),
    ("127.0.0.2", 3203, OWN, True, "loopback"),
    ("10.0.0.5", 3203, OWN_ANY, False, "own listener"),
    ("127.0.0.2", 3203, OWN_ANY, False, "own listener"),
    ("::1", 3203, OWN_ANY, False, "own listener"),
    ("::1", 3201, OWN_ANY, False, "own listener"),
    ("100.64.0.1", 3201, OWN_ANY, False, "own listener"),
    ("127.0.0.1", 3202, OWN_ANY, True, "passthrough_allow"),
    ("93.184.215.14", 3203, OWN_ANY, True, "global"),
    # --- negative twins: public addresses are allowed in every form
    ("93.184.215.14", 443, DEFAULT, True, "global"),
    ("1572394766", 443, DEFAULT, True, "global"),
    ("0x5d.0xb8.0xd7.0xe", 443, DEFAULT, True, "global"),
    ("8.8.8.8", 443, DEFAULT, True, "global"),
    ("1.1", 443, DEFAULT, True, "global"),
    ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", 443, DEFAULT, True, "global"),
    ("[2606:2800:21f:cb07:6820:80da:af6b:8b2c]", 443, DEFAULT, True, "global"),
    ("2001:4860:4860::8888", 443, DEFAULT, True, "global"),
    ("2001:4:112::1", 443, DEFAULT, True, "global"),
    ("::ffff:93.184.215.14", 443, DEFAULT, True, "IPv4-mapped"),
    ("64:ff9b::8.8.8.8", 443, DEFAULT, True, "NAT64"),
    ("2002:5db8:d70e::1", 443, DEFAULT, True, "6to4"),
    ("100.63.255.255", 443, DEFAULT, True, "global"),
    ("100.128.0.1", 443, DEFAULT, True, "global"),
    ("172.15.255.255", 443, DEFAULT, True, "global"),
    ("172.32.0.1", 443, DEFAULT, True, "global"),
    ("169.253.255.255", 443, DEFAULT, True, "global"),
    ("198.17.255.255", 443, DEFAULT, True, "global"),
    ("198.20.0.1", 443, DEFAULT, True, "global"),
    ("223.255.255.255", 443, DEFAULT, True, "global"),
    ("11.0.0.1", 443, DEFAULT, True, "global"),
    ("1.0.0.0", 443, DEFAULT, True, "global"),
    ("fbff::1", 443, DEFAULT, False, "reserved"),
]


def _case_id(case: tuple[str, int, AddressContext, bool, str]) -> str:
    form, port, _, allowed, keyword = case
    return f"{form}:{port}-{'allow' if allowed else 'deny'}-{keyword[:24]}"


def test_table_is_large() -> None:
    assert len(CASES) >= 60
    assert len({(c[0], c[1], id(c[2])) for c in CASES}) == len(CASES)


def _assert_decision(d: Verdict, allowed: bool, keyword: str) -> None:
    assert d.allowed is allowed, d
    assert d.code == ("" if allowed else "destination_denied")
    assert keyword in d.reason, d


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_load_time(case: tuple[str, int, AddressContext, bool, str]) -> None:
    form, port, ctx, allowed, keyword = case
    _assert_decision(check_static(form, port, ctx), allowed, keyword)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_connect_time_numeric_host(case: tuple[str, int, AddressContext, bool, str]) -> None:
    form, port, ctx, allowed, keyword = case

    async def resolver(host: str, port: int) -> list[str]:
        raise AssertionError("a numeric host must not be resolved")

    if allowed:
        got = asyncio.run(resolve_checked(form, port, ctx, resolver))
        assert got == (str(parse_ip(form)), port)
    else:
        with pytest.raises(DestinationDenied, match=re.escape(keyword)):
            asyncio.run(resolve_checked(form, port, ctx, resolver))


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_connect_time_resolved(case: tuple[str, int, AddressContext, bool, str]) -> None:
    """The same form returned by DNS for an innocent-looking name."""
    form, port, ctx, allowed, keyword = case
    calls: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return [form]

    coro = resolve_checked("api.upstream.example", port, ctx, resolver)
    if allowed:
        assert asyncio.run(coro) == (str(parse_ip(form)), port)
    else:
        with pytest.raises(DestinationDenied) as info:
            asyncio.run(coro)
        assert keyword in str(info.value)
        assert "api.upstream.example resolves to" in str(info.value)
    assert calls == [("api.upstream.example", port)]


# ---------------------------------------------------------------------------------------
# parse_ip agrees with getaddrinfo(AI_NUMERICHOST)

NUMERIC_FORMS = [
    "127.0.0.1",
    "2130706433",
    "0177.0.0.1",
    "0x7f.1",
    "127.1",
    "0",
    "00",
    "0x0",
    "1.2.3",
    "0X7F.0x0.0.1",
    "017700000001",
    "4294967295",
    "0xffffffff",
    "169.254.43518",
    "0251.0376.0251.0376",
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "fe80::1%lo",
    "64:ff9b::1.2.3.4",
    "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
    "0:0:0:0:0:0:0:1",
    "127.0.0.1\x00junk",
]
NOT_NUMERIC = [
    "",
    " ",
    "4294967296",
    "1.2.3.256",
    "08.1.1.1",
    "0x",
    "0x100000000",
    "127.0.0.1.",
    "127.0.0.1 foo",
    "127.0.0.1\tx",
    "127.0.0.1\n",
    "::ffff:0127.0.0.1",
    "::ffff:0x7f.1",
    "::127.1",
    "+1",
    "-1",
    "1e3",
    "localhost",
    "example.com",
    "१२७.0.0.1",
    "1.2.3.4.5",
]


def _gai(text: str) -> IPv4Address | IPv6Address | None:
    try:
        infos = socket.getaddrinfo(text, 80, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return ip_address(str(infos[0][4][0]).split("%", 1)[0])


@pytest.mark.parametrize("text", NUMERIC_FORMS)
def test_parse_ip_matches_getaddrinfo(text: str) -> None:
    expected = _gai(text)
    assert expected is not None
    assert parse_ip(text) == expected


@pytest.mark.parametrize("text", NOT_NUMERIC)
def test_parse_ip_rejects_what_getaddrinfo_rejects(text: str) -> None:
    assert _gai(text) is None
    assert parse_ip(text) is None


def test_parse_ip_brackets_and_zone() -> None:
    assert parse_ip("[::1]") == IPv6Address("::1")
    assert parse_ip("[fe80::1%eth0]") == IPv6Address("fe80::1")
    assert parse_ip("fe80::1%eth0") == IPv6Address("fe80::1")
    assert parse_ip("[2606:2800:21f:cb07:6820:80da:af6b:8b2c]") == IPv6Address(
        "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
    )
    assert parse_ip("[]") is None
    assert parse_ip("[localhost]") is None


def test_decide_ignores_scope_id() -> None:
    assert not judge(IPv6Address("fe80::1%eth0"), 443, BOTH).allowed
    assert judge(IPv6Address("::1%lo"), 443, LOOPBACK).allowed


# ---------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("name", "keyword"),
    [
        ("localhost", "localhost"),
        ("LOCALHOST", "localhost"),
        ("localhost.", "localhost"),
        ("foo.localhost", "localhost"),
        ("api.github.com.localhost.", "localhost"),
        ("localhost.localdomain", "localhost"),
        ("ip6-localhost", "localhost"),
        ("ip6-loopback", "localhost"),
        ("\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54", "localhost"),  # fullwidth
        ("metadata", "metadata"),
        ("metadata.google.internal", "metadata"),
        ("Metadata.Google.Internal.", "metadata"),
        ("metadata.goog", "metadata"),
        ("instance-data", "metadata"),
        ("instance-data.ec2.internal", "metadata"),
        ("localhost\x00.evil.example", "control"),
        ("api.example.com\n", "control"),
        ("", "empty"),
    ],
)
def test_denied_names(name: str, keyword: str) -> None:
    d = check_name(name)
    assert d is not None and not d.allowed and keyword in d.reason
    assert d.code == "destination_denied"
    assert check_static(name, 443, BOTH) == d


@pytest.mark.parametrize(
    "name",
    [
        "api.example.com",
        "localhost.example.com",
        "mylocalhost.com",
        "metadata.example.com",
        "instance-data.example.org",
        "xn--bcher-kva.example",
        "b\u00fccher.example",
    ],
)
def test_allowed_names(name: str) -> None:
    assert check_name(name) is None
    d = check_static(name, 443, DEFAULT)
    assert d.allowed and d.code == ""


@pytest.mark.parametrize("name", ["localhost", "metadata.google.internal", "foo.localhost."])
def test_denied_name_is_never_resolved(name: str) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        raise AssertionError("a denied name must not be resolved")

    with pytest.raises(DestinationDenied):
        asyncio.run(resolve_checked(name, 443, BOTH, resolver))


# ---------------------------------------------------------------------------------------
# Ports and context parsing


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_invalid_ports(port: int) -> None:
    assert not judge(IPv4Address("93.184.215.14"), port, DEFAULT).allowed
    assert not check_static("api.example.com", port, DEFAULT).allowed


@pytest.mark.parametrize(
    "entry",
    [
        "10.0.0.0/8",
        "10.1.2.3",
        "10.1.2.3:8443",
        "fd00::/8",
        "fd00::7",
        "[fd00::7]:443",
        "[fd00::7]",
        " 192.168.0.0/16 ",
    ],
)
def test_passthrough_entries_parse(entry: str) -> None:
    parse_passthrough(entry)
    AddressContext(passthrough_allow=(entry,))


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "example.com",
        "10.0.0.0/33",
        "10.1.2.3:0",
        "10.1.2.3:70000",
        "0x7f.1",
        "10.1.2.3:http",
        "[fd00::7",
        "[fd00::7]x",
        "fd00::7:443:",
        "127.1",
    ],
)
def test_passthrough_entries_rejected(entry: str) -> None:
    with pytest.raises(ValueError, match="passthrough_allow entry"):
        AddressContext(passthrough_allow=(entry,))


def test_context_is_hashable_and_compares_on_inputs() -> None:
    a = AddressContext(passthrough_allow=("10.0.0.0/8",))
    b = AddressContext(passthrough_allow=("10.0.0.0/8",))
    assert a == b and hash(a) == hash(b)
    assert "_passthrough" not in repr(a)


def test_unparsable_listener_host_is_a_wildcard() -> None:
    ctx = AddressContext(allow_loopback=True, own_listeners=frozenset({("localhost", 3203)}))
    assert not judge(IPv4Address("127.0.0.1"), 3203, ctx).allowed
    assert judge(IPv4Address("127.0.0.1"), 3204, ctx).allowed


@pytest.mark.parametrize(
    ("entry", "never"),
    [
        ("169.254.169.254", "cloud metadata"),
        ("169.254.0.0/16", "link-local"),
        ("192.0.2.0/24", "documentation"),
        ("224.0.0.1:53", "multicast"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fe80::1", "link-local"),
        ("10.0.0.0/8", None),
        ("127.0.0.1:8080", None),
        ("0.0.0.0/0", None),  # wide, but covers liftable ranges too
        ("169.0.0.0/8", None),  # contains link-local, but also ordinary addresses
        ("fc00::/7", None),
    ],
)
def test_passthrough_entries_that_can_never_apply(entry: str, never: str | None) -> None:
    from vaultproxy.net.egress import passthrough_never_applies

    why = passthrough_never_applies(entry)
    if never is None:
        assert why is None
    else:
        assert why is not None and never in why
