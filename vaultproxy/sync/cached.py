"""A service's secret from the keystore's source cache: ``secret = "SOURCE:PATH#FIELD"``.

``#FIELD`` given: that field is the entry's value (bearer, header, query_param...); a field
holding a TOTP seed gives the code valid now. No field: the item's fields are the entry's
fields (``auth = "basic"``: ``username`` and ``password``).
Pure over the unlocked keystore; the proxy calls it per request (session.entry_for).
"""

from __future__ import annotations

from functools import lru_cache

from vaultproxy.errors import SecretMissing
from vaultproxy.keystore import Entry, Keystore
from vaultproxy.sync.base import Ref, is_ref, parse_ref
from vaultproxy.sync.totp import current_code


@lru_cache(maxsize=1024)
def ref_of(secret: str) -> Ref:
    """``parse_ref`` of a validated services.toml value (parsed once per distinct text)."""
    return parse_ref(secret)


def cached_entry(ks: Keystore, ref: Ref, service: str) -> Entry:
    """The Entry ``ref`` names in the cache; SecretMissing says what to sync."""
    item = ks.synced_item(ref.source, ref.item_key)
    if item is None:
        raise SecretMissing(
            f"service {service}: {ref.source}:{ref.item_key} is not synced yet "
            f"(run `vaultproxy sync {ref.source}`)"
        )
    if ref.field is None:
        return Entry(str(ref), None, dict(item.fields), item.synced, item.synced)
    value = item.fields.get(ref.field)
    if value is None:
        raise SecretMissing(
            f"service {service}: {ref.source}:{ref.item_key} has no field {ref.field!r}"
        )
    if ref.field in item.totp:  # a seed: the code valid now, never the seed itself
        value = current_code(value, f"service {service}: {ref.source}:{ref.item_key}")
    return Entry(str(ref), value, {}, item.synced, item.synced)


def has_secret(ks: Keystore, secret: str) -> bool:
    """Does the keystore hold what a service's ``secret`` names (an entry, or a synced item
    with the referenced field)?"""
    if not is_ref(secret):
        return ks.get(secret) is not None
    ref = ref_of(secret)
    item = ks.synced_item(ref.source, ref.item_key)
    return item is not None and (ref.field is None or ref.field in item.fields)
