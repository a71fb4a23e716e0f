"""Field rules for services.toml: pure functions, messages that name the rule, never the value.

Every checker raises :class:`RuleViolation` with a message fit to follow ``path: ``.
The host parser is shared with the registry so the two can never disagree.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from vaultproxy.net import egress

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SECRET_RE = NAME_RE
ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
PLACEHOLDER_RE = re.compile(r"^[A-Za-z0-9._-]{8,128}$")
TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # RFC 9110 token
PARAM_RE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")  # RFC 3986 unreserved
LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
LOOKUP_RE = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")
PORT_RE = re.compile(r"^[0-9]{1,5}$")

DEFAULT_PORT = 443

# Headers that frame or route the request: injecting a credential into them is never meant.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
    "keep-alive", "proxy-connection", "proxy-authorization", "expect",
})
# Variables `vaultproxy env/exec` sets itself, or that change how programs load code.
RESERVED_ENV = frozenset({
    "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS", "NODE_USE_ENV_PROXY", "NODE_OPTIONS", "PATH", "HOME", "SHELL",
    "PYTHONPATH", "PYTHONHOME",
})
RESERVED_ENV_PREFIXES = ("VAULTPROXY_", "LD_", "DYLD_")


class RuleViolation(ValueError):
    """A value broke a rule; the message names the rule and never contains the value."""


def one_of(choices: tuple[str, ...]) -> str:
    quoted = [f'"{c}"' for c in choices]
    if len(quoted) == 2:
        return f"must be {quoted[0]} or {quoted[1]}"
    return f"must be one of {', '.join(quoted[:-1])} or {quoted[-1]}"


def check_name(value: str) -> None:
    if not NAME_RE.match(value):
        raise RuleViolation(
            "must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"
        )


check_secret_name = check_name


def check_env(value: str) -> None:
    if not ENV_RE.match(value):
        raise RuleViolation("must be an environment variable name: A-Z, 0-9 and '_', "
                            "not starting with a digit")
    if value in RESERVED_ENV or value.startswith(RESERVED_ENV_PREFIXES):
        raise RuleViolation("is reserved (set by vaultproxy or used by the loader)")


def check_header_name(value: str) -> None:
    if not TOKEN_RE.match(value):
        raise RuleViolation("must be an HTTP header name (token characters, 1-128 long)")
    if value.lower() in RESERVED_HEADERS:
        raise RuleViolation("names a header that frames or routes the request; pick another")


def check_param_name(value: str) -> None:
    if not PARAM_RE.match(value):
        raise RuleViolation("must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', '~' or '-'")


def check_prefix(value: str) -> None:
    if not value or len(value) > 64 or any(not (" " <= c <= "~") for c in value):
        raise RuleViolation("must be 1-64 printable ASCII characters (no control characters)")


def check_ca_file(file: Path) -> None:
    if not file.is_file():
        raise RuleViolation("file not found (a relative path is resolved against the "
                            "vaultproxy home)")
    try:
        data = file.read_bytes()
    except OSError:
        raise RuleViolation("file cannot be read") from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise RuleViolation("is not a PEM certificate file") from None


def default_placeholder(name: str) -> str:
    return f"__vault.{name}__"


def check_placeholder(value: str, service_name: str | None) -> None:
    if not PLACEHOLDER_RE.match(value):
        raise RuleViolation("must be 8-128 characters of A-Z, a-z, 0-9, '.', '_' or '-'")
    if value.startswith("__vault.") and service_name is not None and (
        value != default_placeholder(service_name)
    ):
        raise RuleViolation('a placeholder of the form "__vault.<name>__" must use this '
                            "service's own name")


# --- hosts and addresses -------------------------------------------------------------


@dataclass(frozen=True)
class HostSpec:
    """A parsed ``host[:port]``. ``host`` is lowercase ASCII, an IP without brackets
    (canonical form), or, when ``wildcard``, the domain after ``*.``."""

    host: str
    port: int
    wildcard: bool = False
    is_ip: bool = False


def _check_port(raw: str) -> int:
    if not PORT_RE.match(raw) or not 1 <= int(raw) <= 65535:
        raise RuleViolation("port must be a number from 1 to 65535")
    return int(raw)


def check_dns_name(host: str) -> None:
    if not host.isascii():
        raise RuleViolation("must be ASCII; write internationalised names as punycode (xn--)")
    if host != host.lower():
        raise RuleViolation("must be lowercase")
    if host.endswith("."):
        raise RuleViolation("must not end with a dot")
    labels = host.split(".")
    if len(host) > 253 or not all(LABEL_RE.match(label) for label in labels):
        raise RuleViolation("is not a valid DNS name")
    if labels[-1].isdigit():
        raise RuleViolation("is neither a valid DNS name nor a valid IP address")


def _split(value: str, require_port: bool) -> tuple[str, int | None, bool]:
    """-> (host text, port or None, bracketed)."""
    if not value:
        raise RuleViolation("must not be empty")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise RuleViolation("must not contain whitespace or control characters")
    if "/" in value or "@" in value or "?" in value or "#" in value:
        raise RuleViolation("must be host or host:port, not a URL")
    if value.startswith("["):
        m = re.fullmatch(r"\[([^\[\]]+)\](?::(.*))?", value)
        if not m:
            raise RuleViolation("must be [ipv6] or [ipv6]:port")
        port = _check_port(m.group(2)) if m.group(2) is not None else None
        return m.group(1), port, True
    if value.count(":") > 1:
        raise RuleViolation("IPv6 addresses must be written in brackets, as [addr] or [addr]:port")
    if ":" in value:
        host, _, raw_port = value.partition(":")
        return host, _check_port(raw_port), False
    return value, None, False


def parse_host(value: str, *, allow_wildcard: bool = True, require_port: bool = False,
               default_port: int = DEFAULT_PORT) -> HostSpec:
    """Parse ``host``, ``host:port``, ``ip:port``, ``[v6]:port`` or ``*.domain[:port]``."""
    host, port, bracketed = _split(value, require_port)
    if port is None:
        if require_port:
            raise RuleViolation("must include a port (host:port)")
        port = default_port
    if bracketed:
        try:
            return HostSpec(str(ipaddress.IPv6Address(host)), port, is_ip=True)
        except ValueError:
            raise RuleViolation("is not a valid IPv6 address") from None
    if not host:
        raise RuleViolation("host must not be empty")
    if "*" in host:
        if not allow_wildcard:
            raise RuleViolation("wildcards are not allowed here")
        suffix = host[2:]
        if not host.startswith("*.") or "*" in suffix:
            raise RuleViolation('wildcard may only be "*." followed by a domain')
        check_dns_name(suffix)
        if "." not in suffix:
            raise RuleViolation('wildcard needs a domain of at least two labels after "*."')
        return HostSpec(suffix, port, wildcard=True)
    try:
        return HostSpec(str(ipaddress.IPv4Address(host)), port, is_ip=True)
    except ValueError:
        pass
    check_dns_name(host)
    return HostSpec(host, port)


@functools.lru_cache(maxsize=1024)
def normalize_lookup_host(host: str) -> str | None:
    """Canonical form of a host seen on the wire (CONNECT target, SNI); None if unusable.

    Lowercase, one trailing dot dropped, brackets dropped, IPs canonical, Unicode -> punycode.
    Cached (a pure function of the text): a name is looked up on every request, and
    trying it as an IP address first costs two raised ValueErrors (~6 us).
    """
    h = host.strip()
    if h.endswith("."):
        h = h[:-1]
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if not h:
        return None
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        pass
    if not h.isascii():
        try:
            h = h.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    h = h.lower()
    return h if LOOKUP_RE.match(h) else None


@dataclass(frozen=True)
class AllowEntry:
    """A ``[proxy] passthrough_allow`` entry: a network, optionally limited to one port."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None


def parse_allow_entry(value: str) -> AllowEntry:
    if "/" in value:
        try:
            return AllowEntry(ipaddress.ip_network(value, strict=True))
        except ValueError as e:
            if "host bits" in str(e):
                raise RuleViolation("CIDR has host bits set (use the network address)") from None
            raise RuleViolation("must be a CIDR (10.1.0.0/16) or ip:port") from None
    try:
        return AllowEntry(ipaddress.ip_network(value))
    except ValueError:
        pass
    try:
        spec = parse_host(value, allow_wildcard=False, require_port=True)
    except RuleViolation:
        raise RuleViolation("must be a CIDR (10.1.0.0/16) or ip:port") from None
    if not spec.is_ip:
        raise RuleViolation("must be an IP address or CIDR, not a host name")
    return AllowEntry(ipaddress.ip_network(spec.host), spec.port)


_PRIVATE_REASONS = ("private", "carrier-grade NAT", "unique-local", "local-use NAT64")


def check_address(host: str, port: int, ctx: egress.AddressContext) -> None:
    """The load-time address policy (SPEC §5) for an address in services.toml: a service's
    IP host or ``connect_to``, a source's URL, a token endpoint. The message names the
    kind of address and the setting that would permit it, never the address."""
    verdict = egress.check_static(host, port, ctx)
    if verdict.allowed:
        return
    hint = ""
    if verdict.reason.startswith("loopback") and not ctx.allow_loopback:
        hint = "; set allow_loopback = true to permit it"
    elif verdict.reason.startswith(_PRIVATE_REASONS) and not ctx.allow_private:
        hint = "; set allow_private = true to permit it"
    raise RuleViolation(
        f"denied by the address policy: {egress.with_article(verdict.reason)}{hint}"
    )
