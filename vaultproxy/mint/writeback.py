"""Saving rotated keystore fields (a new refresh token) through the keystore's own atomic
write path: re-read what other processes wrote, set the fields, ``save()`` (temp file +
fsync + ``os.replace`` under the keystore's lock file, keystore/atomic.py).

Runs in a thread (the save fsyncs). A write that loses a race with another writer is tried
again on top of what that writer left, a few times, then raises KeystoreError.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from vaultproxy.errors import KeystoreError
from vaultproxy.keystore import Keystore
from vaultproxy.secret import Secret

ATTEMPTS = 3
_lock = threading.Lock()  # one write-back at a time in this process


def save_fields(ks: Keystore, entry: str, fields: Mapping[str, Secret]) -> None:
    """Make keystore entry ``entry`` hold ``fields`` (others unchanged), on disk."""
    with _lock:
        for attempt in range(ATTEMPTS):
            try:
                ks.refresh()  # on top of what the CLI or the admin API wrote meanwhile
                for name, value in fields.items():
                    ks.set_field(entry, name, value)
                ks.save()
            except KeystoreError:
                if attempt == ATTEMPTS - 1:
                    raise
                continue
            if _holds(ks, entry, fields):
                return
        raise KeystoreError(f"keystore entry {entry!r} did not keep the rotated fields")


def _holds(ks: Keystore, entry: str, fields: Mapping[str, Secret]) -> bool:
    found = ks.get(entry)
    if found is None:
        return False
    return all(
        name in found.fields and found.fields[name].reveal() == value.reveal()
        for name, value in fields.items()
    )
