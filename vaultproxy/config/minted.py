"""services.toml keys of the minted auth types (SPEC §4.1), checked for config/models.py.

Each key belongs to some auth types (``KEY_OWNERS``) and may be required by some
(``REQUIRED``); :func:`check_key` is the one field validator they share, so a key on the
wrong type, a missing one and a malformed one are reported at the key, naming the rule and
never the value. Token and login URLs are judged by the service's address policy here
already (an IP literal or a denied name); the proxy judges every resolved address again
when it dials.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from vaultproxy.config import rules
from vaultproxy.config.problems import Problems, TypeProblem
from vaultproxy.config.rules import HostSpec, RuleViolation
from vaultproxy.net import egress

OAUTH = ("oauth2_refresh", "oauth2_client_credentials")
MINTED_AUTHS = (*OAUTH, "session", "unifi_dual")

KEY_OWNERS: dict[str, tuple[str, ...]] = {
    "token_url": OAUTH,
    "scope": OAUTH,
    "audience": ("oauth2_client_credentials",),
    "token_params": ("oauth2_client_credentials",),
    "client_auth": OAUTH,
    "login_url": ("session", "unifi_dual"),
    "login_body": ("session",),
    "session_cookie": ("session",),
    "token_field": ("session",),
    "token_header": ("session",),
}
REQUIRED: dict[str, tuple[str, ...]] = {"token_url": OAUTH, "login_url": ("session",)}

CLIENT_AUTHS = ("basic", "post")
RESERVED_PARAMS = frozenset({
    "grant_type", "client_id", "client_secret", "scope", "audience", "refresh_token",
    "assertion", "client_assertion", "client_assertion_type",
})
_PARAM_RE = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
_FIELD_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,15}$")
_PATH_RE = re.compile(r"^/[!-~]{0,1023}$")  # printable ASCII, no space


def _owners(owners: tuple[str, ...]) -> str:
    return "auth = " + " or ".join(f'"{a}"' for a in owners)


def check_key(field: str, value: Any, data: Mapping[str, Any],
              address: egress.AddressContext) -> Any:
    """The field validator of every minted key (see the module docstring)."""
    auth = data.get("auth")
    owners = KEY_OWNERS[field]
    if value is None or value is False:
        if isinstance(auth, str) and auth in REQUIRED.get(field, ()):
            raise Problems.one(f'is required when auth = "{auth}"')
        return value
    if isinstance(auth, str) and auth not in owners:
        raise Problems.one(f"only allowed with {_owners(owners)}")
    _CHECKS[field](value, data, address)
    return value


def _text(value: str, data: Mapping[str, Any], address: egress.AddressContext) -> None:
    if not value or len(value) > 1024 or any(not (" " <= c <= "~") for c in value):
        raise Problems.one("must be 1-1024 printable ASCII characters")


def _token_url(value: str, data: Mapping[str, Any], address: egress.AddressContext) -> None:
    _url(value, data, address, own_host=False)


def _login_url(value: str, data: Mapping[str, Any], address: egress.AddressContext) -> None:
    _url(value, data, address, own_host=True)


def _url(value: str, data: Mapping[str, Any], address: egress.AddressContext,
         *, own_host: bool) -> None:
    if value.startswith("/"):
        if value.startswith("//") or not _PATH_RE.match(value):
            raise Problems.one("a path must start with one '/' and be printable ASCII "
                               "without spaces")
        hosts = data.get("hosts") or ()
        if hosts and all(h.startswith("*.") for h in hosts):
            raise Problems.one("a path needs a host that is not a wildcard; give a full "
                               "https:// URL")
        return
    try:
        parts = urlsplit(value)
        netloc = parts.netloc
    except ValueError:
        raise Problems.one("must be an https:// URL or a path starting with '/'") from None
    if parts.scheme != "https" or not netloc:
        raise Problems.one("must be an https:// URL or a path starting with '/'")
    if "@" in netloc or parts.fragment:
        raise Problems.one("must not carry credentials or a fragment")
    try:
        spec = rules.parse_host(netloc, allow_wildcard=False)
    except RuleViolation as e:
        raise Problems.one(f"host: {e}") from None
    if own_host and not any(_matches(spec, h) for h in data.get("hosts") or ()):
        raise Problems.one("must be on one of the service's own hosts")
    try:
        rules.check_address(spec.host, spec.port, address)
    except RuleViolation as e:
        raise Problems.one(str(e)) from None


def _matches(spec: HostSpec, entry: str) -> bool:
    try:
        own = rules.parse_host(entry)
    except RuleViolation:
        return False
    if own.port != spec.port:
        return False
    if not own.wildcard:
        return own.host == spec.host
    head, _, rest = spec.host.partition(".")
    return bool(head) and rest == own.host


def _client_auth(value: str, data: Mapping[str, Any], address: egress.AddressContext) -> None:
    if value not in CLIENT_AUTHS:
        raise Problems.one(rules.one_of(CLIENT_AUTHS))


def token_params(value: object) -> object:
    """BeforeValidator: a table of strings -> sorted (key, value) pairs (hashable)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeProblem.one("must be a table of strings")
    return tuple(sorted(value.items()))


def _token_params(value: tuple[tuple[str, str], ...], data: Mapping[str, Any],
                  address: egress.AddressContext) -> None:
    for key, _ in value:
        if not _PARAM_RE.match(key):
            raise Problems.one("keys must be 1-64 of A-Z, a-z, 0-9, '.', '_', '~' or '-'")
        if key in RESERVED_PARAMS:
            raise Problems.one("a key names a parameter vaultproxy sets itself (grant_type, "
                               "client_id, client_secret, scope, audience, ...); use that key")


def _login_body(value: str, data: Mapping[str, Any], address: egress.AddressContext) -> None:
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise Problems.one("must be a JSON object (strings may contain {username} and "
                           "{password})")


def _session_cookie(value: bool, data: Mapping[str, Any], address: egress.AddressContext
                    ) -> None:
    return None


def _token_field(value: str, data: Mapping[str, Any], address: egress.AddressContext) -> None:
    if data.get("session_cookie"):
        raise Problems.one("not with session_cookie = true (the cookie is the credential)")
    if not _FIELD_RE.match(value):
        raise Problems.one("must be a dotted path of names (e.g. data.token)")


def _token_header(value: str, data: Mapping[str, Any], address: egress.AddressContext
                  ) -> None:
    name, colon, prefix = value.partition(":")
    if not colon:
        raise Problems.one('must be "Name: Prefix" or "Name:"')
    try:
        rules.check_header_name(name.strip())
        if prefix.strip():
            rules.check_prefix(prefix.strip())
    except RuleViolation as e:
        raise Problems.one(str(e)) from None


_CHECKS: dict[str, Callable[[Any, Mapping[str, Any], egress.AddressContext], None]] = {
    "token_url": _token_url,
    "scope": _text,
    "audience": _text,
    "token_params": _token_params,
    "client_auth": _client_auth,
    "login_url": _login_url,
    "login_body": _login_body,
    "session_cookie": _session_cookie,
    "token_field": _token_field,
    "token_header": _token_header,
}


def substitute_problem(auth: str, substitute_in: tuple[str, ...]) -> str | None:
    """A minted token is never substituted where the agent chooses (SERVICES.md)."""
    if auth in MINTED_AUTHS and tuple(substitute_in) != ("auth",):
        return f'must be ["auth"] with auth = "{auth}" (a minted token is injected whole)'
    return None
