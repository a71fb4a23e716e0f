"""The source interface (SPEC §9): what every kind of external store implements.

A service takes its secret from a source with ``secret = "SOURCE:PATH#FIELD"``
(:func:`parse_ref` -> :class:`Ref`). The sync (vaultproxy/sync/run.py) groups the refs of
every service by source, builds the source from its ``[[source]]`` table
(:class:`SourceSpec` -> :func:`build_source`), and asks it once per sync::

    fetched = await source.fetch(clients, creds, refs)

- ``clients``: the proxy's outbound clients (vaultproxy/net/outbound.py). A source dials only
  through them, to an address ``resolve_checked(host, port, spec.address)`` judged, with
  TLS verified against ``spec.trust_file`` (system CAs + the source's ``ca_cert``); plain
  ``http://`` only to a loopback address (:func:`check_plain_http`).
- ``creds``: the fields of the keystore entry ``source.<name>`` (openbao/vault: ``token``,
  or ``role_id`` + ``secret_id``; bitwarden: ``email`` + ``password``, or ``client_id`` +
  ``client_secret`` + ``password``).
- ``refs``: every distinct item the services want from this source (no two refs share an
  item key; ``Ref.field`` is informative: fetch returns all fields of the item).

It returns ``{ref: Fetched(fields, version)}`` for every ref whose item exists. A ref whose
item the source does not have is left out (the sync reports it as not found and keeps its
cached value). Anything that fails the source as a whole (unreachable, refused by the egress
policy, TLS, a bad login, a malformed answer) raises :class:`SourceError`, whose message
names the source and the reason, never a credential, a value or a response body.

Kinds are looked up lazily (:data:`KINDS`: ``"module:Class"``), each class built with
``Class.from_spec(spec)``; one module per kind (openbao.py, bitwarden.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx

# The reference syntax lives with the config that validates it (config/refs.py).
from vaultproxy.config import refs
from vaultproxy.errors import VaultproxyError
from vaultproxy.net.egress import AddressContext, parse_ip
from vaultproxy.net.outbound import UpstreamClients, UpstreamKey
from vaultproxy.net.resolve import resolve_checked
from vaultproxy.secret import Secret

KV_KINDS = refs.KV_KINDS
MAX_PATH = refs.MAX_PATH
SOURCE_ENTRY_PREFIX = refs.SOURCE_ENTRY_PREFIX
SOURCE_NAME_RE = refs.SOURCE_NAME_RE
Ref = refs.Ref
RefError = refs.RefError
is_ref = refs.is_ref
parse_ref = refs.parse_ref

KINDS: dict[str, str] = {
    "openbao": "vaultproxy.sync.openbao:OpenBaoSource",
    "vault": "vaultproxy.sync.openbao:OpenBaoSource",
    "bitwarden": "vaultproxy.sync.bitwarden:BitwardenSource",
}


class SourceError(VaultproxyError):
    """A source could not be read; the message names the source and the reason only."""

    status, code, public = 502, "source_unavailable", "the external secret source failed"


def source_entry(name: str) -> str:
    """The keystore entry holding source ``name``'s own credentials."""
    return SOURCE_ENTRY_PREFIX + name


@dataclass(frozen=True, eq=False)
class Fetched:
    """One item as a source returned it: every field (secret values) and its version (KV
    version number; bitwarden: the item's revision date). ``repr`` shows field names only.

    ``totp``: names of fields whose value is a TOTP seed (a base32 secret or an
    ``otpauth://totp/`` URI, e.g. Bitwarden's ``totp``); the cache keeps the seed and a
    service naming that field gets the code valid when its request is made (keystore/totp.py).
    """

    fields: dict[str, Secret]
    version: int | str
    totp: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"Fetched(fields={sorted(self.fields)}, version={self.version!r})"


@dataclass(frozen=True)
class SourceSpec:
    """A ``[[source]]`` table resolved for dialling (what ``from_spec`` gets)."""

    name: str
    kind: str  # openbao | vault | bitwarden
    url: str  # https://host[:port][/prefix] (http:// only to a loopback address)
    auth: str  # openbao/vault: token | approle; bitwarden: password | apikey
    trust_file: Path  # system CAs + the source's ca_cert
    address: AddressContext  # allow_private / allow_loopback, and the proxy's own listeners
    mount: str = "secret"  # KV v2 mount (openbao/vault)
    folder: str | None = None  # bitwarden: only items in this folder (None: every item)
    extra: Mapping[str, object] = field(default_factory=dict)  # kind-specific settings


class Source(Protocol):
    """One external store. ``fetch`` is called once per sync, with every wanted item."""

    name: str

    async def fetch(
        self, clients: UpstreamClients, creds: Mapping[str, Secret], refs: Sequence[Ref]
    ) -> dict[Ref, Fetched]:
        """Log in with ``creds`` and read every ref's item (module docstring)."""
        ...


class SourceKind(Protocol):
    """What :data:`KINDS` names: a class built from its spec."""

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> Source: ...


def build_source(spec: SourceSpec) -> Source:
    """The source object for ``spec`` (its kind's module is imported on first use)."""
    target = KINDS.get(spec.kind)
    if target is None:
        raise SourceError(f"source {spec.name}: unknown kind {spec.kind!r}")
    module_name, _, cls_name = target.partition(":")
    try:
        kind: SourceKind = getattr(import_module(module_name), cls_name)
    except (ImportError, AttributeError):
        raise SourceError(
            f"source {spec.name}: kind {spec.kind} is not available in this vaultproxy"
        ) from None
    return kind.from_spec(spec)


def check_plain_http(name: str, scheme: str, ip: str) -> None:
    """Refuse ``http://`` to anything but a loopback address (a credential would cross the
    network in clear); call after resolving, with the address about to be dialled."""
    if scheme == "https":
        return
    literal = parse_ip(ip)
    if scheme != "http" or literal is None or not literal.is_loopback:
        raise SourceError(
            f"source {name}: plain HTTP is allowed only to a loopback address; use https://"
        )


def need(name: str, creds: Mapping[str, Secret], *fields: str) -> list[Secret]:
    """The named credential fields, or a SourceError naming the entry and the fix."""
    missing = [f for f in fields if f not in creds or not creds[f]]
    if missing:
        entry = source_entry(name)
        raise SourceError(
            f"source {name}: keystore entry {entry} lacks field(s) {', '.join(missing)} "
            f"(`vaultproxy secret set {entry} --field {missing[0]}`)"
        )
    return [creds[f] for f in fields]


@dataclass(frozen=True)
class Reply:
    """A source's answer: its status and whole body (read up to the caller's limit)."""

    status: int
    body: bytes = field(repr=False)


async def call_source(
    clients: UpstreamClients, *, name: str, url: str, address: AddressContext,
    trust_file: Path, method: str, api: str, headers: Mapping[str, str],
    body: bytes | None = None, limit: int, decoded: bool = False,
) -> Reply:
    """One request to a source at ``url`` + ``api`` under its egress policy: the host is
    resolved and judged (``address``), the checked IP dialled with the URL's host as Host and
    SNI, TLS verified against ``trust_file``, plain HTTP only to loopback. The body is read up
    to ``limit`` bytes (``decoded``: after Content-Encoding). Errors name the source, the
    method and path, never a header, a body or a value."""
    parts = urlsplit(url)
    host, scheme = parts.hostname or "", parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    try:
        ip, port = await resolve_checked(host, port, address)
    except VaultproxyError as e:  # denied by the egress policy, or no address
        raise SourceError(f"source {name}: {e}") from None
    check_plain_http(name, scheme, ip)
    path = parts.path.rstrip("/") + api  # a server behind a reverse proxy's path prefix
    sent = {"Host": parts.netloc, "Accept": "application/json", **headers}
    target = httpx.URL(scheme=scheme, host=ip, port=port, raw_path=path.encode())
    key = UpstreamKey(f"source.{name}", host, trust_file, False)
    what = f"{method} {api.split('?', 1)[0]}"
    try:
        response = await clients.send(key, httpx.Request(method, target, headers=sent,
                                                         content=body or b""))
    except VaultproxyError as e:
        raise SourceError(f"source {name}: {what}: {e}") from None
    try:
        raw = b""
        async for chunk in (response.aiter_bytes() if decoded else response.aiter_raw()):
            raw += chunk
            if len(raw) > limit:
                raise SourceError(f"source {name}: {what}: the response is over "
                                  f"{limit >> 20} MiB")
    finally:
        await response.aclose()
    return Reply(response.status_code, raw)
