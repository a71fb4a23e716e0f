"""Argon2id key derivation and AES-256-GCM sealing; plain functions, no files.

The KDF is CPU- and memory-heavy (about 0.1-0.5 s at the default profile); async callers
run it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import secrets

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultproxy.keystore.format import KEY_LEN, NONCE_LEN, KdfParams
from vaultproxy.secret import Secret


class OpenFailed(Exception):
    """An AES-GCM open failed (wrong key, or modified data). Carries no detail on purpose."""


def derive_key(password: Secret, salt: bytes, kdf: KdfParams) -> bytearray:
    """Argon2id(password, salt) -> 32-byte key-encryption key (caller wipes it)."""
    raw = hash_secret_raw(
        secret=password.reveal(),
        salt=salt,
        time_cost=kdf.time_cost,
        memory_cost=kdf.memory_kib,
        parallelism=kdf.parallelism,
        hash_len=KEY_LEN,
        type=Type.ID,
    )
    return bytearray(raw)


def seal(key: bytes | bytearray, plaintext: bytes | bytearray, aad: bytes) -> bytes:
    """nonce(12) + AES-256-GCM ciphertext + tag(16); a fresh random nonce every call."""
    nonce = secrets.token_bytes(NONCE_LEN)
    return nonce + AESGCM(bytes(key)).encrypt(nonce, bytes(plaintext), aad)


def unseal(key: bytes | bytearray, blob: bytes, aad: bytes) -> bytearray:
    """Inverse of ``seal``; raises OpenFailed without saying why."""
    try:
        plain = AESGCM(bytes(key)).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad)
    except (InvalidTag, ValueError):
        raise OpenFailed from None
    return bytearray(plain)


def wipe(buf: bytearray) -> None:
    """Best-effort overwrite of our own copy of key material."""
    for i in range(len(buf)):
        buf[i] = 0
