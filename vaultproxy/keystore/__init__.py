"""The encrypted keystore: Argon2id-wrapped data key, AES-256-GCM entries, atomic saves.

File format: docs/operator/KEYSTORE.md. Public API::

    Keystore.create(path, password, kdf=None) / Keystore.open(path, password)
    ks.names() / ks.get(name) / ks.set_value(name, v) / ks.set_field(name, f, v)
    ks.remove(name) / ks.save() / ks.change_password(new)
    ks.set_internal("agent:NAME", v) / ks.get_internal(...) / ks.internal_names("agent:")
    ks.source_cache(SOURCE) / ks.synced_item(SOURCE, KEY) / ks.put_source_cache(SOURCE, c)
"""

from __future__ import annotations

from pathlib import Path

from vaultproxy.keystore.entries import Entry
from vaultproxy.keystore.format import DEFAULT_KDF, KdfParams
from vaultproxy.keystore.store import Keystore
from vaultproxy.secret import Secret

__all__ = ["DEFAULT_KDF", "Entry", "KdfParams", "Keystore", "open_async"]


async def open_async(path: Path | str, password: Secret) -> Keystore:
    """``Keystore.open`` in a worker thread (the KDF takes ~0.1-0.5 s of CPU)."""
    return await Keystore.open_async(path, password)
