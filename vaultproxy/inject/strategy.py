"""The auth-strategy interface, like tokenizer's processor.go: one small object per auth type.

A strategy never sees a flow. It works on a :class:`Draft` (plain header fields and the raw
request target) so ``prepare_request`` can build the whole change first and commit it at
once: a raise anywhere leaves the request untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol

from vaultproxy.config.models import Service
from vaultproxy.errors import ConfigError, SecretMissing
from vaultproxy.secret import Secret

HeaderFields = list[tuple[bytes, bytes]]

_HEADER_UNSAFE = (b"\r", b"\n", b"\x00")


_NONE: frozenset[bytes] = frozenset()


class Draft:
    """A mutable working copy of the parts of a request injection may change. (A plain
    slotted class: one is built per injected request, a dataclass with a default factory
    costs several times as much.)"""

    __slots__ = ("absent", "headers", "path", "query", "stripped")

    def __init__(self, headers: HeaderFields, path: bytes, query: bytes | None,
                 stripped: list[str] | None = None) -> None:
        self.headers = headers
        self.path = path  # the path part of the request target, without "?"
        self.query = query  # None: no "?" in the target
        self.stripped: list[str] = [] if stripped is None else stripped
        # Canonical names (``inject.request.canonical_name``) no field of ``headers`` has:
        # set by the strip that removed them all; any field added makes it empty again
        # (``set_header``, the one way a field is added; removing fields keeps it true).
        self.absent: frozenset[bytes] = frozenset()

    def __repr__(self) -> str:  # names only: headers, path and query may hold the credential
        return f"Draft(stripped={self.stripped!r})"

    def target(self) -> bytes:
        return self.path if self.query is None else self.path + b"?" + self.query

    def set_header(self, name: str, value: bytes) -> None:
        spelled = _spelled.get(name)  # the name's bytes, lower-cased and canonical, kept
        if spelled is None:
            spelled = _spell(name)
        lname = spelled[1]
        # A field named ``lname`` (any case) has ``lname``'s canonical name: none is left
        # when that is ``absent`` (host_inject: the strip took every such field already).
        if spelled[2] not in self.absent:
            self.headers = [(k, v) for k, v in self.headers if k.lower() != lname]
        self.absent = _NONE
        self.headers.append((spelled[0], value))


# ``set_header``'s name as bytes: as given, lower-cased, and canonical (``_`` read as ``-``),
# per name (the auth types' constants and services.toml's ``header_name``s: a few, bounded).
# Names, never values.
_spelled: dict[str, tuple[bytes, bytes, bytes]] = {}


def _spell(name: str) -> tuple[bytes, bytes, bytes]:
    lname = name.lower().encode("ascii")  # (a name that is not ASCII raises, as it did)
    spelled = (name.encode("ascii"), lname, lname.replace(b"_", b"-"))
    if len(_spelled) >= 256:
        _spelled.clear()
    _spelled[name] = spelled
    return spelled


class Strategy(Protocol):
    """One auth type. ``auth`` is the services.toml ``auth`` value it implements."""

    auth: ClassVar[str]

    def placeholder_secret(
        self, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> bytes:
        """The bytes that replace this service's placeholder (placeholder mode)."""
        ...

    def inject(
        self, draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> None:
        """Put the credential on ``draft`` (host_inject mode). Raise SecretMissing if absent."""
        ...


def need_value(service: Service, value: Secret | None) -> bytes:
    # (revealed first, then tested: ``not value`` is a Python-level ``Secret.__bool__``
    # call, and the revealed bytes are empty exactly when the Secret is)
    secret = b"" if value is None else value.reveal()
    if not secret:
        raise SecretMissing(
            f"service {service.name!r}: keystore entry {service.secret_name!r} has no value"
        )
    return secret


def need_header_value(service: Service, value: Secret | None, prefix: bytes = b"") -> bytes:
    """``header_safe(service, prefix + need_value(service, value))`` in one call (bearer and
    header: every injected request): the same checks, in the same order, the same errors."""
    secret = b"" if value is None else value.reveal()
    if not secret:
        raise SecretMissing(
            f"service {service.name!r}: keystore entry {service.secret_name!r} has no value"
        )
    if prefix:
        secret = prefix + secret
    if 13 in secret or 10 in secret or 0 in secret:  # ``header_safe``, inline
        raise SecretMissing(
            f"service {service.name!r}: the secret holds CR, LF or NUL and cannot go in a header"
        )
    return secret


def need_field(service: Service, fields: Mapping[str, Secret], name: str) -> bytes:
    secret = fields.get(name)
    if secret is None or not secret:
        raise SecretMissing(
            f"service {service.name!r}: keystore entry {service.secret_name!r} "
            f"has no field {name!r}"
        )
    return secret.reveal()


def need_option(service: Service, option: str) -> str:
    value = getattr(service, option)
    if not value:
        raise ConfigError([f"service.{service.name}.{option}: required for auth = {service.auth}"])
    return str(value)


def header_safe(service: Service, secret: bytes) -> bytes:
    """Refuse a secret that would split or end a header line (request smuggling)."""
    # a CR, LF or NUL by three memchr (``int in bytes``): ``re.search(rb"[\r\n\x00]")``
    # costs ~2k instructions more (tests/unit/test_speed_stages4.py compares them)
    if 13 in secret or 10 in secret or 0 in secret:
        raise SecretMissing(
            f"service {service.name!r}: the secret holds CR, LF or NUL and cannot go in a header"
        )
    return secret


class ValueStrategy:
    """Base of the strategies whose credential is the entry's value: in placeholder mode the
    placeholder is swapped for exactly that value."""

    def placeholder_secret(
        self, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> bytes:
        return need_value(service, value)
