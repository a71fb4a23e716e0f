"""services.toml rules for the keys of ``path_prefix``, ``aws_sigv4``,
``google_service_account`` and ``github_app`` (SPEC §4.1), called by the field validators of
``models.Service``. Pure; messages name the rule, never the value.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from vaultproxy.config.problems import Problems
from vaultproxy.config.rules import RuleViolation, parse_host

# key -> the auth type it belongs to, and whether that type requires it
KEYS: dict[str, tuple[str, bool]] = {
    "path_prefix": ("path_prefix", True),
    "region": ("aws_sigv4", True),
    "aws_service": ("aws_sigv4", True),
    "scopes": ("google_service_account", True),
    "api_url": ("github_app", False),
}
# auth types that only make sense injected by the proxy (the agent cannot hold a signature)
HOST_INJECT_ONLY = frozenset({"path_prefix", "aws_sigv4"})
# keystore fields each type needs (core/references.py checks them; optional ones not listed)
FIELDS: dict[str, tuple[str, ...]] = {
    "aws_sigv4": ("access_key_id", "secret_access_key"),
    "google_service_account": ("json",),
    "github_app": ("app_id", "private_key", "installation_id"),
}
# Fields that identify rather than authenticate: not redacted from responses (GitHub's API
# answers carry app and installation ids as numbers; redacting them would corrupt the JSON).
PUBLIC_FIELDS: dict[str, frozenset[str]] = {
    "github_app": frozenset({"app_id", "installation_id"}),
}
SECRET_SLOT = "{secret}"  # noqa: S105 - the marker in path_prefix, not a secret

_PATH_PREFIX_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$")
_AWS_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}$")  # RFC 6749 scope-token


def check_auth(auth: str, mode: object) -> None:
    """Rules on ``auth`` itself for these types."""
    if auth in HOST_INJECT_ONLY and mode == "placeholder":
        raise Problems.one(f'auth = "{auth}" needs mode = "host_inject"')
    if auth == "aws_sigv4" and importlib.util.find_spec("botocore") is None:
        raise Problems.one("auth = \"aws_sigv4\" needs botocore; install it with "
                           "pip install 'vaultproxy[aws]'")


def check_key(key: str, value: Any, data: Mapping[str, Any]) -> Any:
    """``value`` of ``key`` (None: absent) against the service's ``auth`` and its own rule."""
    owner, required = KEYS[key]
    auth = data.get("auth")
    if value is None:
        if auth == owner and required:
            raise Problems.one(f'is required when auth = "{owner}"')
        return None
    if auth is not None and auth != owner:
        raise Problems.one(f'only allowed with auth = "{owner}"')
    try:
        _RULES[key](value)
    except RuleViolation as e:
        raise Problems.one(str(e)) from None
    return value


def _path_prefix(value: str) -> None:
    if value.count(SECRET_SLOT) != 1:
        raise RuleViolation("must hold {secret} exactly once")
    if not _PATH_PREFIX_RE.match(value.replace(SECRET_SLOT, "")):
        raise RuleViolation("must start with '/' and hold only path characters "
                            "(no '?', '#', '%', spaces or braces besides {secret})")


def _aws_name(value: str) -> None:
    if not _AWS_NAME_RE.match(value):
        raise RuleViolation("must be 1-64 characters of a-z, 0-9 and '-' (e.g. us-east-1, s3)")


def _scopes(value: tuple[str, ...]) -> None:
    if not value:
        raise RuleViolation("must list at least one scope")
    for scope in value:
        if not _SCOPE_RE.match(scope):
            raise RuleViolation("each scope must be 1-256 printable characters without "
                                "spaces, quotes or backslashes")


def _api_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        raise RuleViolation("must be an https:// URL")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise RuleViolation("must have no query, fragment or credentials")
    try:
        parse_host(parts.netloc, allow_wildcard=False)
    except RuleViolation as e:
        raise RuleViolation(f"host: {e}") from None


_RULES: dict[str, Callable[[Any], None]] = {
    "path_prefix": _path_prefix,
    "region": _aws_name,
    "aws_service": _aws_name,
    "scopes": _scopes,
    "api_url": _api_url,
}
