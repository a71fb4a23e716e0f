"""Values synced from external sources (SPEC §9), cached inside the encrypted keystore body.

So the proxy keeps serving while a source is down, and a restart serves what the last good
sync brought. Plaintext (inside the AES-GCM body, next to ``entries`` and ``internal``)::

    "synced": {SOURCE: {"ok": T | null, "attempt": T | null, "error": STR | null,
                        "items": {KEY: {"path": P, "version": V, "synced": T,
                                        "fields": {FIELD: B64}, "totp": [FIELD]}}}}

KEY is the item key (``PATH`` or ``PATH?version=N``), V the source's version of the item (KV
version number; bitwarden revision date), T a Unix timestamp, ``totp`` (only when not
empty) the fields holding a TOTP seed rather than a value (the code is computed when used).
``error`` is the last failed sync's reason (names and statuses only, never a value), null
after a good one.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from vaultproxy.secret import Secret


@dataclass(eq=False)
class SyncedItem:
    """One cached item of a source. ``repr`` shows names only."""

    path: str
    version: int | str
    synced: float
    fields: dict[str, Secret] = field(default_factory=dict)
    totp: tuple[str, ...] = ()  # fields holding a TOTP seed (sync/totp.py)

    def __repr__(self) -> str:
        return (f"SyncedItem(path={self.path!r}, version={self.version!r}, "
                f"fields={sorted(self.fields)!r}, synced={self.synced})")

    def same_as(self, other: SyncedItem) -> bool:
        """Same version and the same field values (constant-time per value)."""
        return (self.version == other.version and self.path == other.path
                and self.totp == other.totp
                and self.fields.keys() == other.fields.keys()
                and all(v == other.fields[k] for k, v in self.fields.items()))


@dataclass(eq=False)
class SourceCache:
    """A source's cached items and the outcome of its last sync."""

    items: dict[str, SyncedItem] = field(default_factory=dict)
    ok: float | None = None  # last successful sync
    attempt: float | None = None  # last sync, successful or not
    error: str | None = None  # why the last sync failed (None: it did not)

    def __repr__(self) -> str:
        return (f"SourceCache(items={sorted(self.items)!r}, ok={self.ok}, "
                f"attempt={self.attempt}, error={self.error!r})")

    def copy(self) -> SourceCache:
        return SourceCache(dict(self.items), self.ok, self.attempt, self.error)


def _b64(secret: Secret) -> str:
    return base64.b64encode(secret.reveal()).decode("ascii")


def _unb64(raw: object) -> Secret:
    if not isinstance(raw, str):
        raise ValueError("value is not a string")
    return Secret(bytearray(base64.b64decode(raw.encode("ascii"), validate=True)))


def _item_json(item: SyncedItem) -> dict[str, Any]:
    out: dict[str, Any] = {"path": item.path, "version": item.version, "synced": item.synced,
                           "fields": {k: _b64(v) for k, v in sorted(item.fields.items())}}
    if item.totp:
        out["totp"] = list(item.totp)
    return out


def encode(synced: dict[str, SourceCache]) -> dict[str, Any]:
    return {
        name: {
            "ok": cache.ok,
            "attempt": cache.attempt,
            "error": cache.error,
            "items": {key: _item_json(item) for key, item in sorted(cache.items.items())},
        }
        for name, cache in sorted(synced.items())
    }


def _time(raw: object) -> float | None:
    if raw is None:
        return None
    if not isinstance(raw, int | float) or isinstance(raw, bool):
        raise ValueError("bad timestamp")
    return float(raw)


def _item(raw: object) -> SyncedItem:
    if not isinstance(raw, dict):
        raise ValueError("item is not an object")
    path, version, fields = raw.get("path"), raw.get("version"), raw.get("fields", {})
    if not isinstance(path, str) or not isinstance(version, int | str):
        raise ValueError("bad item")
    totp = raw.get("totp", [])
    if not isinstance(fields, dict) or not isinstance(totp, list):
        raise ValueError("fields is not an object")
    return SyncedItem(path, version, _time(raw.get("synced")) or 0.0,
                      {str(k): _unb64(v) for k, v in fields.items()},
                      tuple(sorted(str(t) for t in totp)))


def decode(raw: object) -> dict[str, SourceCache]:
    """The ``synced`` section (absent in files written before sources existed: empty);
    ValueError on a malformed one (the caller turns it into a KeystoreError)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("synced is not an object")
    out: dict[str, SourceCache] = {}
    for name, src in raw.items():
        if not isinstance(src, dict) or not isinstance(src.get("items", {}), dict):
            raise ValueError("bad source cache")
        error = src.get("error")
        if error is not None and not isinstance(error, str):
            raise ValueError("bad error")
        out[str(name)] = SourceCache(
            {str(k): _item(v) for k, v in src.get("items", {}).items()},
            _time(src.get("ok")), _time(src.get("attempt")), error,
        )
    return out
