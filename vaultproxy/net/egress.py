"""Egress / SSRF address policy: which upstream (ip, port) the proxy may dial.

Pure: no sockets, no mitmproxy. ``judge`` gives one address its ``Verdict`` (an egress
verdict, not the request's ``Decision`` of core/decide.py); ``check_name`` refuses names that
always mean the local host or a cloud metadata service; ``check_static`` is the load-time
check for configured hosts. ``vaultproxy.net.resolve`` applies these to every
address a name resolves to at connect time.

IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64)
are unwrapped and the embedded address is judged too, so ``::ffff:127.0.0.1`` is refused
like ``127.0.0.1``. ``ipaddress.is_global`` is not used: it calls NAT64, 6to4,
``::a.b.c.d``, ``fec0::/10`` and (on 3.11/3.12) multicast global.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Final

IPAddress = IPv4Address | IPv6Address

DENIED_CODE: Final = "destination_denied"


@dataclass(frozen=True)
class Verdict:
    """``code`` is "" when allowed, else "destination_denied"; ``reason`` names the rule."""

    allowed: bool
    code: str
    reason: str


def _allow(reason: str) -> Verdict:
    return Verdict(True, "", reason)


def _deny(reason: str) -> Verdict:
    return Verdict(False, DENIED_CODE, reason)


class _Kind(Enum):
    GLOBAL = "global"  # allowed (wrapping forms: after their embedded IPv4 was judged)
    LOOPBACK = "loopback"  # allow_loopback or passthrough_allow lifts it
    PRIVATE = "private"  # allow_private or passthrough_allow lifts it
    HARD = "hard"  # nothing lifts it


_Rule = tuple[IPv4Network | IPv6Network, _Kind, str]

_METADATA = "cloud metadata address"

# First match wins; the specific entries come before the ranges that contain them.
_V4_RULES: Final[tuple[_Rule, ...]] = tuple(
    (IPv4Network(net), kind, reason)
    for net, kind, reason in (
        ("169.254.169.254/32", _Kind.HARD, _METADATA),  # AWS, GCP, Azure, OpenStack, ...
        ("169.254.169.253/32", _Kind.HARD, _METADATA),  # AWS VPC DNS
        ("169.254.169.123/32", _Kind.HARD, _METADATA),  # AWS time sync
        ("169.254.170.2/32", _Kind.HARD, _METADATA),  # AWS ECS task metadata
        ("169.254.170.23/32", _Kind.HARD, _METADATA),  # AWS EKS pod identity
        ("169.254.0.23/32", _Kind.HARD, _METADATA),  # Tencent Cloud
        ("100.100.100.200/32", _Kind.HARD, _METADATA),  # Alibaba Cloud
        ("192.0.0.192/32", _Kind.HARD, _METADATA),  # Oracle Cloud
        ("168.63.129.16/32", _Kind.HARD, _METADATA),  # Azure WireServer
        ("0.0.0.0/8", _Kind.HARD, "unspecified address"),
        ("127.0.0.0/8", _Kind.LOOPBACK, "loopback address"),
        ("169.254.0.0/16", _Kind.HARD, "link-local address"),
        ("10.0.0.0/8", _Kind.PRIVATE, "private address"),
        ("172.16.0.0/12", _Kind.PRIVATE, "private address"),
        ("192.168.0.0/16", _Kind.PRIVATE, "private address"),
        ("100.64.0.0/10", _Kind.PRIVATE, "carrier-grade NAT address"),
        ("192.0.0.0/24", _Kind.HARD, "IETF protocol assignment address"),
        ("192.0.2.0/24", _Kind.HARD, "documentation address"),
        ("198.51.100.0/24", _Kind.HARD, "documentation address"),
        ("203.0.113.0/24", _Kind.HARD, "documentation address"),
        ("192.88.99.0/24", _Kind.HARD, "deprecated 6to4 relay anycast address"),
        ("198.18.0.0/15", _Kind.HARD, "benchmarking address"),
        ("224.0.0.0/4", _Kind.HARD, "multicast address"),
        ("255.255.255.255/32", _Kind.HARD, "broadcast address"),
        ("240.0.0.0/4", _Kind.HARD, "reserved address"),
    )
)

_V6_RULES: Final[tuple[_Rule, ...]] = tuple(
    (IPv6Network(net), kind, reason)
    for net, kind, reason in (
        ("::/128", _Kind.HARD, "unspecified address"),
        ("::1/128", _Kind.LOOPBACK, "loopback address"),
        ("::ffff:0:0/96", _Kind.GLOBAL, "IPv4-mapped address"),
        ("::/96", _Kind.HARD, "deprecated IPv4-compatible address"),
        ("64:ff9b::/96", _Kind.GLOBAL, "NAT64 address"),
        ("64:ff9b:1::/48", _Kind.PRIVATE, "local-use NAT64 address"),
        ("::/8", _Kind.HARD, "reserved address"),
        ("100::/64", _Kind.HARD, "discard-only address"),
        ("100:0:0:1::/64", _Kind.HARD, "reserved address"),
        ("2001:db8::/32", _Kind.HARD, "documentation address"),
        ("2001::/32", _Kind.HARD, "Teredo address"),
        ("2001:1::1/128", _Kind.GLOBAL, "global address"),  # PCP anycast
        ("2001:1::2/128", _Kind.GLOBAL, "global address"),  # TURN anycast
        ("2001:1::3/128", _Kind.GLOBAL, "global address"),  # DNS-SD SRP anycast
        ("2001:3::/32", _Kind.GLOBAL, "global address"),  # AMT
        ("2001:4:112::/48", _Kind.GLOBAL, "global address"),  # AS112-v6
        ("2001:20::/28", _Kind.GLOBAL, "global address"),  # ORCHIDv2
        ("2001:30::/28", _Kind.GLOBAL, "global address"),  # DRIP
        ("2001::/23", _Kind.HARD, "IETF protocol assignment address"),
        ("2002::/16", _Kind.GLOBAL, "6to4 address"),
        ("3fff::/20", _Kind.HARD, "documentation address"),
        ("5f00::/16", _Kind.HARD, "reserved address"),  # SRv6 SIDs
        ("fd00:ec2::/32", _Kind.HARD, _METADATA),  # AWS IMDS fd00:ec2::254, DNS, NTP
        ("fd20:ce::254/128", _Kind.HARD, _METADATA),  # GCP
        ("fc00::/7", _Kind.PRIVATE, "unique-local address"),
        ("fe80::/10", _Kind.HARD, "link-local address"),
        ("fec0::/10", _Kind.HARD, "site-local address"),
        ("ff00::/8", _Kind.HARD, "multicast address"),
        ("2000::/3", _Kind.GLOBAL, "global address"),
        ("::/0", _Kind.HARD, "reserved address"),
    )
)

_GLOBAL: Final = (_Kind.GLOBAL, "global address")
_LOCAL_KINDS: Final = frozenset({_Kind.LOOPBACK, _Kind.PRIVATE})

_NAT64_WKP: Final = IPv6Network("64:ff9b::/96")
_NAT64_LOCAL: Final = IPv6Network("64:ff9b:1::/48")
_COMPAT: Final = IPv6Network("::/96")
_V4_THIS_NET: Final = IPv4Network("0.0.0.0/8")


def _classify(ip: IPAddress) -> tuple[_Kind, str]:
    rules = _V4_RULES if ip.version == 4 else _V6_RULES
    for net, kind, reason in rules:
        if ip in net:
            return kind, reason
    return _GLOBAL  # IPv4 outside every special range (IPv6 ends with a ::/0 rule)


# ---------------------------------------------------------------------------------------
# Context: flags plus precompiled passthrough_allow entries and own listeners


@dataclass(frozen=True)
class PassthroughEntry:
    net: IPv4Network | IPv6Network
    port: int | None  # None: any port


def parse_passthrough(entry: str) -> PassthroughEntry:
    """Parse one ``passthrough_allow`` entry: a CIDR, a bare IP, or ``ip:port``/``[v6]:port``.

    Raises ValueError naming the entry when it is none of these.
    """
    text = entry.strip()
    try:
        if "/" in text:
            return PassthroughEntry(ip_network(text, strict=False), None)
        host, port = text, None
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(text)
            port = int(rest[1:]) if rest else None
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = int(port_text)
        if port is not None and not 0 < port < 65536:
            raise ValueError(text)
        return PassthroughEntry(ip_network(ip_address(host)), port)
    except ValueError:
        raise ValueError(
            f"passthrough_allow entry {entry!r} is not a CIDR, an IP or ip:port"
        ) from None


def passthrough_never_applies(entry: str) -> str | None:
    """Why a ``passthrough_allow`` entry can never let anything through, or None.

    An entry lifts only loopback/private denials; one that lies wholly inside an
    always-denied range (metadata, link-local, documentation, multicast ...) changes
    nothing. Rules are first-match, so a more specific liftable rule seen before the
    containing hard one means part of the entry can apply.
    """
    net = parse_passthrough(entry).net
    rules = _V4_RULES if net.version == 4 else _V6_RULES
    for rule_net, kind, reason in rules:
        if not net.overlaps(rule_net):  # type: ignore[arg-type]
            continue
        if kind is not _Kind.HARD:
            return None
        if net.subnet_of(rule_net):  # type: ignore[arg-type]
            return f"inside {rule_net}, {with_article(reason)} range, which is always denied"
    return None


@dataclass(frozen=True)
class AddressContext:
    """Per-use flags. Entries are parsed once, at construction; ``judge`` parses nothing.

    ``passthrough_allow`` (CIDRs, IPs or ip:port) lifts loopback/private/CGNAT/ULA denials
    for matching addresses, never the hard ones. ``own_listeners`` are the proxy's own
    (ip, port) sockets; a wildcard ip (``0.0.0.0``/``::``, or one that does not parse)
    denies that port on every loopback/private address. A public interface address is
    unknown to this pure module: pass it as an explicit (ip, port) entry.
    """

    allow_private: bool = False
    allow_loopback: bool = False
    passthrough_allow: tuple[str, ...] = ()
    own_listeners: frozenset[tuple[str, int]] = frozenset()
    _passthrough: tuple[PassthroughEntry, ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    _listeners: frozenset[tuple[IPAddress, int]] = field(
        init=False, repr=False, compare=False, default=frozenset()
    )
    _wildcard_ports: frozenset[int] = field(
        init=False, repr=False, compare=False, default=frozenset()
    )

    def __post_init__(self) -> None:
        entries = tuple(parse_passthrough(e) for e in self.passthrough_allow)
        exact: set[tuple[IPAddress, int]] = set()
        wildcard: set[int] = set()
        for host, port in self.own_listeners:
            ip = parse_ip(host)
            if ip is None or ip.is_unspecified:
                wildcard.add(port)
            else:
                exact.add((ip, port))
        object.__setattr__(self, "_passthrough", entries)
        object.__setattr__(self, "_listeners", frozenset(exact))
        object.__setattr__(self, "_wildcard_ports", frozenset(wildcard))


def _passthrough_matches(ctx: AddressContext, ip: IPAddress, port: int) -> bool:
    return any(ip in p.net and (p.port is None or p.port == port) for p in ctx._passthrough)


def _is_own_listener(ctx: AddressContext, ip: IPAddress, port: int, kind: _Kind) -> bool:
    if (ip, port) in ctx._listeners:
        return True
    return port in ctx._wildcard_ports and kind in _LOCAL_KINDS


# ---------------------------------------------------------------------------------------
# Parsing


def parse_ip(text: str) -> IPAddress | None:
    """Every numeric host form ``getaddrinfo`` accepts, normalised; None for a DNS name.

    IPv4 goes through ``inet_aton`` (the BSD forms: ``2130706433``, ``0177.0.0.1``,
    ``0x7f.1``, ``127.1``, ``0``); IPv6 through ``ipaddress``, brackets and zone id removed.
    Like ``getaddrinfo``, the text ends at a NUL; whitespace (which ``inet_aton`` would
    accept as a terminator) makes it not numeric.
    """
    text = text.split("\x00", 1)[0]
    if not text or any(c.isspace() for c in text):
        return None
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    if not text.isascii():
        return None
    try:
        return IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _strip_scope(ip: IPAddress) -> IPAddress:
    if isinstance(ip, IPv6Address) and ip.scope_id is not None:
        return IPv6Address(int(ip))
    return ip


def _embedded(ip: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its wrapping."""
    found: list[tuple[str, IPv4Address]] = []
    if ip.ipv4_mapped is not None:
        found.append(("IPv4-mapped IPv6", ip.ipv4_mapped))
    elif ip in _COMPAT and int(ip) > 1:
        found.append(("IPv4-compatible IPv6", IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip.sixtofour is not None:
        found.append(("6to4 IPv6", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found.append(("Teredo IPv6 (client)", client))
        found.append(("Teredo IPv6 (server)", server))
    if ip in _NAT64_WKP:
        found.append(("NAT64 IPv6", IPv4Address(int(ip) & 0xFFFFFFFF)))
    elif ip in _NAT64_LOCAL:
        found.extend(("local-use NAT64 IPv6", v4) for v4 in _rfc6052_candidates(ip))
    return found


def _rfc6052_candidates(ip: IPv6Address) -> list[IPv4Address]:
    """IPv4 addresses embedded at each RFC 6052 prefix length a /48 block may use.

    Bits 64-71 (the "u" octet) are skipped. A /48, /56 or /64 candidate in 0.0.0.0/8 is
    what that layout reads from another layout's zeros, and is ignored (so 0.0.0.1-
    0.255.255.255 embedded at /48-/64 is not caught; the block needs allow_private and
    0/8 is not routable). /96 is always judged, last, so a denial names the other first.
    """
    bits = int(ip).to_bytes(16, "big")
    layouts = {48: bits[6:8] + bits[9:11], 56: bits[7:8] + bits[9:12], 64: bits[9:13]}
    found = [v4 for v4 in map(IPv4Address, layouts.values()) if v4 not in _V4_THIS_NET]
    return [*found, IPv4Address(bits[12:16])]


# ---------------------------------------------------------------------------------------
# Verdicts


def with_article(reason: str) -> str:
    """ "a loopback address", "an IETF ...", "the proxy's own listener"."""
    if reason.startswith("the "):
        return reason
    return ("an " if reason[:1].lower() in "aeiou" else "a ") + reason


def _judge_one(ip: IPAddress, port: int, ctx: AddressContext) -> Verdict:
    kind, reason = _classify(ip)
    if _is_own_listener(ctx, ip, port, kind):
        return _deny("the proxy's own listener")
    if kind is _Kind.GLOBAL:
        return _allow(reason)
    if kind is _Kind.HARD:
        return _deny(reason)
    if _passthrough_matches(ctx, ip, port):
        return _allow(f"{reason} (passthrough_allow)")
    if kind is _Kind.LOOPBACK and ctx.allow_loopback:
        return _allow(f"{reason} (allow_loopback)")
    if kind is _Kind.PRIVATE and ctx.allow_private:
        return _allow(f"{reason} (allow_private)")
    return _deny(reason)


def judge(ip: IPAddress, port: int, ctx: AddressContext) -> Verdict:
    """May the proxy dial ``ip``:``port``? IPv6 wrappings are judged with their IPv4."""
    if not 0 < port < 65536:
        return _deny("invalid port")
    ip = _strip_scope(ip)
    if isinstance(ip, IPv6Address):
        for wrapping, inner in _embedded(ip):
            verdict = _judge_one(inner, port, ctx)
            if not verdict.allowed:
                return _deny(f"{wrapping} embedding {with_article(verdict.reason)}")
    return _judge_one(ip, port, ctx)


# Names that always mean this host or a metadata service, whatever DNS says.
_DENIED_NAMES: Final = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "localhost4",
        "localhost4.localdomain4",
        "localhost6",
        "localhost6.localdomain6",
        "ip6-localhost",
        "ip6-loopback",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
    }
)
_DENIED_SUFFIXES: Final = (".localhost",)


def _normalise_name(host: str) -> str:
    name = host.strip().rstrip(".")
    try:  # what getaddrinfo does with a str host: IDNA (nameprep folds case and width)
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return name.casefold()


def check_name(host: str) -> Verdict | None:
    """A Verdict denying ``host`` when the name itself is refused, else None."""
    if not host:
        return _deny("empty host name")
    if any(not c.isprintable() or c.isspace() for c in host):
        return _deny("host name with control or space characters")
    name = _normalise_name(host)
    if name in _DENIED_NAMES or name.endswith(_DENIED_SUFFIXES):
        metadata = "localhost" not in name and not name.startswith("ip6-")
        return _deny("cloud metadata name" if metadata else "localhost name")
    return None


def check_static(host: str, port: int, ctx: AddressContext) -> Verdict:
    """Load-time check of a configured host or ``connect_to`` value.

    An IP literal is judged now; a name passes unless ``check_name`` refuses it (its
    addresses are judged at connect time by ``vaultproxy.net.resolve.resolve_checked``).
    """
    ip = parse_ip(host)
    if ip is not None:
        return judge(ip, port, ctx)
    denied = check_name(host)
    if denied is not None:
        return denied
    if not 0 < port < 65536:
        return _deny("invalid port")
    return _allow("host name (checked when resolved)")
