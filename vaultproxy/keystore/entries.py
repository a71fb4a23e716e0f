"""Keystore entries: the Entry type, name rules, and the JSON plaintext encoding.

Plaintext (only ever inside the AES-GCM body)::

    {"format": 1,
     "entries":  {NAME: {"value": B64 | null, "fields": {FIELD: B64}, "created": T, "updated": T}},
     "internal": {"ns:NAME": {"value": B64, "fields": {}, "created": T, "updated": T}},
     "synced":   {SOURCE: ...},
     "retired":  [{"owner": OWNER, "field": FIELD | null, "value": B64, "retired": T}]}

B64 is standard base64 with padding; T is a Unix timestamp (float seconds). ``synced`` (values
cached from external sources, keystore/synced.py) is absent in files written before sources
existed; ``retired`` (values a rotation or removal replaced, still redacted in responses for
``[proxy] retired_redact_days``) is absent when empty. OWNER is the entry name, or
``SOURCE:ITEM`` for a value synced from a source. Entry names are NAME, or ``source.NAME``:
the reserved namespace holding the credentials of the ``[[source]]`` called NAME (SPEC §9).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vaultproxy.errors import KeystoreError, UsageError
from vaultproxy.keystore import synced
from vaultproxy.keystore.synced import SourceCache
from vaultproxy.secret import Secret

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# "source.bao": the credentials vaultproxy logs in to the [[source]] "bao" with.
SOURCE_ENTRY_RE = re.compile(r"source\.[a-z0-9][a-z0-9_-]{0,63}")
# Internal entries (e.g. "agent:ci-bot" for agent-token hashes) live in their own namespace,
# never listed by names() and never reachable through the public get/set methods.
INTERNAL_RE = re.compile(r"[a-z][a-z0-9]{0,15}:[a-z0-9][a-z0-9_-]{0,63}")
PLAINTEXT_FORMAT = 1


@dataclass(eq=False)
class Entry:
    """One named secret: a value, named fields, or both. ``repr`` shows names only."""

    name: str
    value: Secret | None = None
    fields: dict[str, Secret] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0

    def __repr__(self) -> str:
        return (
            f"Entry(name={self.name!r}, value={'<set>' if self.value is not None else None}, "
            f"fields={sorted(self.fields)!r}, created={self.created}, updated={self.updated})"
        )

    def copy(self) -> Entry:
        return Entry(self.name, self.value, dict(self.fields), self.created, self.updated)


class SharedEntry(Entry):
    """A copy of an entry (``Entry.copy``'s: the same Secrets, its own fields) that
    ``Keystore.get_shared`` hands to every reader while the stored entry stays as it was.
    Read-only, so no reader can change what another reads: its ``fields`` is a
    ``MappingProxyType`` over its own dict, and no attribute can be set or deleted on it.
    ``copy()`` gives a plain, writable ``Entry``.

    ``made``: what the injection made of this entry for one service (inject/request.py
    ``made_for``: the finished credential header field, revealed bytes), kept here and
    nowhere else, so it lives no longer than the copy it was made of; the keystore drops it
    (``drop_made``) whenever it stops handing this copy out (an entry written or removed, a
    refresh, a lock, an unlock, a reload: ``Keystore.forget_shared``). Its type shows no
    value in a repr."""

    made: Any  # (not a dataclass field: SharedEntry is no dataclass of its own)

    def __init__(self, entry: Entry) -> None:
        put = object.__setattr__
        put(self, "name", entry.name)
        put(self, "value", entry.value)
        put(self, "fields", MappingProxyType(dict(entry.fields)))
        put(self, "created", entry.created)
        put(self, "updated", entry.updated)
        put(self, "made", None)

    def keep_made(self, made: object) -> None:
        object.__setattr__(self, "made", made)

    def drop_made(self) -> None:
        object.__setattr__(self, "made", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a shared keystore entry is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a shared keystore entry is read-only")


def check_name(name: str, what: str = "entry name") -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid {what} {name!r}: use 1-64 of a-z 0-9 _ -, starting with a letter or digit"
        )


def check_entry_name(name: str) -> None:
    """An entry name: NAME, or ``source.NAME`` (a source's own credentials)."""
    if not isinstance(name, str) or not (NAME_RE.fullmatch(name)
                                         or SOURCE_ENTRY_RE.fullmatch(name)):
        raise UsageError(
            f"invalid entry name {name!r}: use 1-64 of a-z 0-9 _ -, starting with a letter or "
            "digit (or source.NAME for the credentials of the [[source]] NAME)"
        )


def check_internal_name(name: str) -> None:
    if not isinstance(name, str) or not INTERNAL_RE.fullmatch(name):
        raise UsageError(f"invalid internal entry name {name!r}: use NAMESPACE:NAME")


def _b64(secret: Secret) -> str:
    return base64.b64encode(secret.reveal()).decode("ascii")


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "value": _b64(entry.value) if entry.value is not None else None,
        "fields": {k: _b64(v) for k, v in sorted(entry.fields.items())},
        "created": entry.created,
        "updated": entry.updated,
    }


@dataclass(eq=False)
class Retired:
    """A value that a rotation or removal replaced. ``repr`` shows names only."""

    owner: str  # the entry name, or "SOURCE:ITEM" of a synced item
    field: str | None  # None: the entry's value
    value: Secret
    retired: float  # when it was replaced (Unix seconds)

    def __repr__(self) -> str:
        return f"Retired(owner={self.owner!r}, field={self.field!r}, retired={self.retired})"


@dataclass(eq=False)
class Body:
    """The decrypted keystore body: entries, internal entries, synced source caches."""

    entries: dict[str, Entry]
    internal: dict[str, Entry]
    synced: dict[str, SourceCache] = field(default_factory=dict)
    retired: list[Retired] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"Body(entries={sorted(self.entries)!r}, internal={len(self.internal)}, "
                f"synced={sorted(self.synced)!r}, retired={len(self.retired)})")


def encode(body: Body) -> bytearray:
    """The plaintext body as UTF-8 JSON bytes (caller wipes the returned buffer)."""
    doc: dict[str, Any] = {
        "format": PLAINTEXT_FORMAT,
        "entries": {n: _entry_json(e) for n, e in sorted(body.entries.items())},
        "internal": {n: _entry_json(e) for n, e in sorted(body.internal.items())},
    }
    if body.synced:
        doc["synced"] = synced.encode(body.synced)
    if body.retired:
        doc["retired"] = [
            {"owner": r.owner, "field": r.field, "value": _b64(r.value), "retired": r.retired}
            for r in body.retired
        ]
    return bytearray(json.dumps(doc, separators=(",", ":")).encode("utf-8"))


def _unb64(raw: object) -> Secret:
    if not isinstance(raw, str):
        raise ValueError("value is not a string")
    return Secret(bytearray(base64.b64decode(raw.encode("ascii"), validate=True)))


def _entry(name: str, raw: object) -> Entry:
    if not isinstance(raw, dict):
        raise ValueError("entry is not an object")
    value = raw.get("value")
    fields = raw.get("fields", {})
    if not isinstance(fields, dict):
        raise ValueError("fields is not an object")
    created, updated = raw.get("created", 0.0), raw.get("updated", 0.0)
    if not isinstance(created, int | float) or not isinstance(updated, int | float):
        raise ValueError("bad timestamp")
    return Entry(
        name=name,
        value=None if value is None else _unb64(value),
        fields={str(k): _unb64(v) for k, v in fields.items()},
        created=float(created),
        updated=float(updated),
    )


def decode(plain: bytes | bytearray) -> Body:
    """Parse the decrypted body; a malformed body is a KeystoreError that quotes nothing."""
    try:
        doc = json.loads(bytes(plain))
        if not isinstance(doc, dict) or doc.get("format") != PLAINTEXT_FORMAT:
            raise ValueError("unknown plaintext format")
        entries_raw, internal_raw = doc.get("entries", {}), doc.get("internal", {})
        if not isinstance(entries_raw, dict) or not isinstance(internal_raw, dict):
            raise ValueError("entries is not an object")
        entries = {str(n): _entry(str(n), e) for n, e in entries_raw.items()}
        internal = {str(n): _entry(str(n), e) for n, e in internal_raw.items()}
        caches = synced.decode(doc.get("synced"))
        retired = _retired(doc.get("retired"))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise KeystoreError(
            "keystore contents are unreadable after decryption; restore keystore.enc.bak"
        ) from None
    return Body(entries, internal, caches, retired)


def _retired(raw: object) -> list[Retired]:
    """The ``retired`` list (absent in files written before it existed: empty)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("retired is not a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("retired item is not an object")
        owner, fld, when = item.get("owner"), item.get("field"), item.get("retired")
        if (not isinstance(owner, str) or (fld is not None and not isinstance(fld, str))
                or not isinstance(when, int | float) or isinstance(when, bool)):
            raise ValueError("bad retired item")
        out.append(Retired(owner, fld, _unb64(item.get("value")), float(when)))
    return out
