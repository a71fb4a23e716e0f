"""The ``secret = "SOURCE:PATH[?version=N][#FIELD]"`` reference syntax (SPEC §9): how a
service names a value synced from a ``[[source]]``. Pure parsing; services.toml validation
and the sync code both use it."""

from __future__ import annotations

import re
from dataclasses import dataclass

SOURCE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SOURCE_ENTRY_PREFIX = "source."  # the keystore entry holding a source's own credentials
MAX_PATH = 512
_VERSION_RE = re.compile(r"\?version=([1-9][0-9]{0,8})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

KV_KINDS = frozenset({"openbao", "vault"})


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
