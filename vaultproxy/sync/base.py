"""The source interface (SPEC §9): what every kind of external store implements.

A service takes its secret from a source with ``secret = "SOURCE:PATH#FIELD"``
(:func:`parse_ref` -> :class:`Ref`). The sync (vaultproxy/sync/run.py) groups the refs of
every service by source, builds the source from its ``[[source]]`` table
(:class:`SourceSpec` -> :func:`build_source`), and asks it once per sync::

    fetched = await source.fetch(clients, creds, refs)

- ``clients``: the proxy's outbound clients (vaultproxy/outbound.py). A source dials only
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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Protocol

from vaultproxy.errors import VaultproxyError
from vaultproxy.outbound import UpstreamClients
from vaultproxy.policy import AddressContext, parse_ip
from vaultproxy.secret import Secret

SOURCE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SOURCE_ENTRY_PREFIX = "source."  # the keystore entry holding a source's own credentials
MAX_PATH = 512
_VERSION_RE = re.compile(r"\?version=([1-9][0-9]{0,8})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

KINDS: dict[str, str] = {
    "openbao": "vaultproxy.sync.openbao:OpenBaoSource",
    "vault": "vaultproxy.sync.openbao:OpenBaoSource",
    "bitwarden": "vaultproxy.sync.bitwarden:BitwardenSource",
}
KV_KINDS = frozenset({"openbao", "vault"})


class SourceError(VaultproxyError):
    """A source could not be read; the message names the source and the reason only."""

    status, code, public = 502, "source_unavailable", "the external secret source failed"


class RefError(ValueError):
    """A ``secret = "SOURCE:PATH#FIELD"`` that does not parse; the message quotes nothing."""


@dataclass(frozen=True, slots=True)
class Ref:
    """One secret a service takes from a source: ``SOURCE:PATH[?version=N][#FIELD]``.

    ``path``: the KV path below the mount (openbao/vault) or the item's name in the folder
    (bitwarden). ``field``: which field becomes the service's value; None: the item's
    fields are the entry's fields (``auth = "basic"``: ``username`` + ``password``).
    ``version``: a pinned KV version (openbao/vault only); None: the latest.
    """

    source: str
    path: str
    field: str | None = None
    version: int | None = None

    @property
    def item_key(self) -> str:
        """The cache key of the item within its source (the field is not part of it)."""
        return self.path if self.version is None else f"{self.path}?version={self.version}"

    @property
    def item(self) -> Ref:
        """This ref without its field: what a source fetches."""
        return Ref(self.source, self.path, None, self.version)

    def __str__(self) -> str:
        return f"{self.source}:{self.item_key}" + ("" if self.field is None else f"#{self.field}")


def is_ref(secret: str) -> bool:
    """True if a service's ``secret`` names a source item rather than a keystore entry."""
    return ":" in secret


def parse_ref(text: str) -> Ref:
    """``SOURCE:PATH[?version=N][#FIELD]`` -> Ref; RefError names the rule, never the text.

    The field is after the *last* ``#`` (an item name may hold one, then name the field).
    """
    source, sep, rest = text.partition(":")
    if not sep:
        raise RefError('must be "SOURCE:PATH#FIELD" (a source reference)')
    if not SOURCE_NAME_RE.fullmatch(source):
        raise RefError("the source name must be 1-64 of a-z 0-9 _ -, starting with a "
                       "letter or digit")
    path, hash_, fld = rest.rpartition("#") if "#" in rest else (rest, "", "")
    if hash_ and not fld:
        raise RefError("the field after # is empty")
    version: int | None = None
    match = _VERSION_RE.search(path)
    if match:
        version = int(match.group(1))
        path = path[: match.start()]
    elif "?version=" in path:
        raise RefError("?version= must be a whole number from 1")
    if not path.strip() or len(path) > MAX_PATH:
        raise RefError(f"the path must be 1-{MAX_PATH} characters")
    if _CONTROL.search(path) or _CONTROL.search(fld):
        raise RefError("the path and field must not hold control characters")
    return Ref(source, path, fld or None, version)


def source_entry(name: str) -> str:
    """The keystore entry holding source ``name``'s own credentials."""
    return SOURCE_ENTRY_PREFIX + name


@dataclass(frozen=True, eq=False)
class Fetched:
    """One item as a source returned it: every field (secret values) and its version (KV
    version number; bitwarden: the item's revision date). ``repr`` shows field names only.

    ``totp``: names of fields whose value is a TOTP seed (a base32 secret or an
    ``otpauth://totp/`` URI, e.g. Bitwarden's ``totp``); the cache keeps the seed and a
    service naming that field gets the code valid when its request is made (sync/totp.py).
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
