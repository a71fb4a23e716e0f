"""Unlock at start from the keystore's TPM slot, for both ways the proxy runs (`vaultproxy
run` and `mitmdump -s addons/vaultproxy.py`): the opened keystore, or None (no slot, or this
TPM would not unseal it: the reason is logged and the caller falls back to the password)."""

from __future__ import annotations

import logging
from pathlib import Path

from vaultproxy.errors import KeystoreError
from vaultproxy.keystore.store import Keystore

logger = logging.getLogger(__name__)


def try_unlock(path: Path) -> Keystore | None:
    from vaultproxy.keystore import tpm

    try:
        if not Keystore.has_tpm_slot(path):
            return None
        store = Keystore.open_tpm(path)
    except KeystoreError as e:  # TpmError included
        logger.warning("TPM unlock failed: %s", e)
        return None
    logger.info("keystore unlocked with its TPM slot (TPM at %s)", tpm.tcti())
    return store
