"""The health report: one item per secret value (entry value or field) of the keystore.

Reuse is found by HMAC-SHA256 fingerprints under a random key drawn for each report and
dropped with it: fingerprints are compared in memory, never stored or returned, and cannot be
matched against any other run's. Fields that name rather than authenticate are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vaultproxy.health.strength import weak_reasons
from vaultproxy.keystore import Keystore
from vaultproxy.secret import Secret

# Identifiers, not secrets: equal usernames across services are normal, not "reuse".
NOT_SECRET_FIELDS = frozenset({"username", "email", "client_id", "app_id", "installation_id",
                               "access_key_id"})


@dataclass
class Item:
    name: str
    field: str | None
    weak_reasons: list[str]
    reused_with: list[str] = dataclasses.field(default_factory=list)
    breached: bool | None = None  # None: the breach check is off or failed

    @property
    def label(self) -> str:
        return self.name if self.field is None else f"{self.name}.{self.field}"

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "field": self.field, "weak": bool(self.weak_reasons),
                "weak_reasons": list(self.weak_reasons), "reused": bool(self.reused_with),
                "reused_with": list(self.reused_with), "breached": self.breached}


@dataclass
class BreachCheck:
    enabled: bool = False
    status: str = "off"  # off | ok | error
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"enabled": self.enabled, "status": self.status, "error": self.error}


@dataclass
class Report:
    items: list[Item]
    breach_check: BreachCheck

    def as_dict(self) -> dict[str, object]:
        summary = {"checked": len(self.items),
                   "weak": sum(1 for i in self.items if i.weak_reasons),
                   "reused": sum(1 for i in self.items if i.reused_with),
                   "breached": sum(1 for i in self.items if i.breached)}
        return {"secrets": [i.as_dict() for i in self.items], "summary": summary,
                "breach_check": self.breach_check.as_dict()}


def secret_values(ks: Keystore) -> Iterator[tuple[str, str | None, Secret]]:
    """(entry, field or None, value) for every audited value, in name order."""
    for name in ks.names():
        entry = ks.get(name)
        if entry is None:
            continue
        if entry.value is not None:
            yield name, None, entry.value
        for fname in sorted(entry.fields):
            if fname not in NOT_SECRET_FIELDS:
                yield name, fname, entry.fields[fname]
    for source in ks.source_names():  # values synced from external sources: "SOURCE:PATH"
        cache = ks.source_cache(source)
        for key, item in sorted(cache.items.items()) if cache is not None else ():
            for fname in sorted(item.fields):
                if fname not in NOT_SECRET_FIELDS and fname not in item.totp:
                    yield f"{source}:{key}", fname, item.fields[fname]


def build(values: Iterable[tuple[str, str | None, Secret]]) -> tuple[Report, dict[str, Secret]]:
    """Weak and reused verdicts; also label -> value for the breach check (caller drops it)."""
    key = bytearray(secrets.token_bytes(32))  # this report's fingerprint key, never kept
    items: list[Item] = []
    groups: dict[bytes, list[Item]] = {}
    by_label: dict[str, Secret] = {}
    try:
        for name, fname, value in values:
            raw = value.reveal()
            item = Item(name, fname, weak_reasons(raw))
            items.append(item)
            groups.setdefault(hmac.new(bytes(key), raw, hashlib.sha256).digest(), []).append(item)
            by_label[item.label] = value
    finally:
        for i in range(len(key)):
            key[i] = 0
    for group in groups.values():
        for item in group:
            item.reused_with = [o.label for o in group if o is not item]
    return Report(items, BreachCheck()), by_label
