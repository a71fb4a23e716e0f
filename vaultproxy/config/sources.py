"""``[[source]]`` in services.toml (SPEC §9): external stores services take secrets from,
and the rules for ``secret = "SOURCE:PATH#FIELD"`` in a service.

```toml
[[source]]
name = "bao"                   # services say secret = "bao:PATH#FIELD"
kind = "openbao"               # openbao | vault (KV v2) | bitwarden
url = "https://127.0.0.1:8200"
auth = "token"                 # openbao/vault: token | approle; bitwarden: password | apikey
mount = "secret"               # openbao/vault only (default "secret"); namespace likewise
folder = "vault-proxy"         # bitwarden only (default: every item)
refresh_seconds = 300          # 0 (default) = only on `vaultproxy sync`
ca_cert = "bao-ca.pem"         # extra trust anchor (relative to the home)
allow_private = false          # the egress policy, as for services
allow_loopback = false
```

The source's own credentials are the keystore entry ``source.<name>``, never a service's
secret. Plain ``http://`` only to a loopback address (a dev server). Messages name the field
and the rule, never the value (docs/operator/SOURCES.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import StrictBool, ValidationInfo, field_validator

from vaultproxy.config import rules
from vaultproxy.config.fields import Model, ca_file, choice, ruled
from vaultproxy.config.problems import Problems
from vaultproxy.config.refs import KV_KINDS, RefError, is_ref, parse_ref
from vaultproxy.config.rules import RuleViolation
from vaultproxy.net import egress

SourceKind = Literal["openbao", "vault", "bitwarden"]
AUTHS: dict[str, tuple[str, ...]] = {
    "openbao": ("token", "approle"),
    "vault": ("token", "approle"),
    "bitwarden": ("password", "apikey"),
}
MAX_REFRESH = 7 * 24 * 3600
_MOUNT = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/?")


class SourceConfig(Model):
    # Declared in the order they are checked: a rule may read an earlier field (info.data).
    name: Annotated[str, ruled(rules.check_name)]
    kind: SourceKind
    auth: str
    allow_private: StrictBool = False
    allow_loopback: StrictBool = False
    url: str
    mount: str | None = None
    namespace: str | None = None
    folder: str | None = None
    refresh_seconds: int = 0
    ca_cert: str | None = None

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: object) -> object:
        return choice(value, get_args(SourceKind))

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind is None:
            return value
        choice(value, AUTHS[kind])
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, url: str, info: ValidationInfo) -> str:
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise Problems.one("must be an https:// URL") from None
        host = parts.hostname
        if parts.port == 0:
            raise Problems.one("must not use port 0")
        if parts.scheme not in ("https", "http") or not host:
            raise Problems.one("must be an https:// URL (http:// only to a loopback address)")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise Problems.one("must have no query, fragment or credentials (the credentials "
                               "go in the keystore entry source.NAME)")
        literal = egress.parse_ip(host)
        if parts.scheme == "http" and (literal is None or not literal.is_loopback):
            raise Problems.one("plain http:// is allowed only to a loopback address "
                               "(127.0.0.1 or [::1]); use https://")
        ctx = egress.AddressContext(allow_private=info.data.get("allow_private") is True,
                                    allow_loopback=info.data.get("allow_loopback") is True)
        try:  # an IP literal now; a name's addresses when dialled
            rules.check_address(str(literal) if literal else host, port, ctx)
        except RuleViolation as e:
            raise Problems.one(str(e)) from None
        return url

    @field_validator("mount", "namespace")
    @classmethod
    def _kv_keys(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind is not None and kind not in KV_KINDS:
            raise Problems.one('only allowed with kind = "openbao" or "vault"')
        if len(value) > 256 or not _MOUNT.fullmatch(value) or any(
                part in (".", "..") for part in value.split("/")):
            raise Problems.one("must be 1-256 of A-Z a-z 0-9 _ . - in /-separated parts")
        return value

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind is not None and kind != "bitwarden":
            raise Problems.one('only allowed with kind = "bitwarden"')
        if not value or len(value) > 256 or any(ord(c) < 32 for c in value):
            raise Problems.one("must be 1-256 characters without control characters")
        return value

    @field_validator("refresh_seconds", mode="before")
    @classmethod
    def _refresh(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not (
                0 <= value <= MAX_REFRESH):
            raise Problems.one(f"must be a whole number from 0 (only on sync) to {MAX_REFRESH}")
        return value

    @field_validator("ca_cert")
    @classmethod
    def _ca_cert(cls, value: str, info: ValidationInfo) -> str:
        return ca_file(value, info)

    @property
    def kv_mount(self) -> str:
        return self.mount or "secret"

    @property
    def plain_http(self) -> bool:
        return urlsplit(self.url).scheme == "http"


def check_secret(value: str) -> None:
    """A service's ``secret``: a keystore entry name, or ``SOURCE:PATH[?version=N][#FIELD]``;
    never a source's own credentials (``source.NAME``)."""
    if value.startswith("source."):
        raise RuleViolation("names a source's own credentials (source.NAME); take a synced "
                            'item instead: "SOURCE:PATH#FIELD"')
    if is_ref(value):
        try:
            parse_ref(value)
        except RefError as e:
            raise RuleViolation(f'a source reference {e}') from None
        return
    rules.check_secret_name(value)


def source_problems(sources: Sequence[SourceConfig],
                    services: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Across tables: unique source names; every reference names a defined source, and a
    pinned ``?version=`` only a KV one (openbao/vault)."""
    problems: list[tuple[str, str]] = []
    kinds: dict[str, str] = {}
    for i, src in enumerate(sources):
        if src.name in kinds:
            first = [s.name for s in sources].index(src.name)
            problems.append((f"source[{i}].name", f"already used by source[{first}]"))
        kinds.setdefault(src.name, src.kind)
    for i, svc in enumerate(services):
        secret = svc.get("secret")
        if not isinstance(secret, str) or not is_ref(secret):
            continue
        try:
            ref = parse_ref(secret)
        except RefError:
            continue  # reported by the field's own rule
        kind = kinds.get(ref.source)
        if kind is None:
            problems.append((f"service[{i}].secret", "names a source that no [[source]] "
                             "defines (the part before the colon)"))
        elif ref.version is not None and kind not in KV_KINDS:
            problems.append((f"service[{i}].secret", "?version= is only for openbao/vault "
                             "sources"))
    return problems
