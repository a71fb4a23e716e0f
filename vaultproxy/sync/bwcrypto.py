"""Bitwarden's key derivation and cipher strings, composed from ``cryptography`` primitives.

Nothing here is new cryptography; it is Bitwarden's documented composition (its security
whitepaper, "Account keys" and "Encryption"), each step one library call:

- master key: PBKDF2-HMAC-SHA256(password, salt = the lower-cased e-mail, N iterations), or
  Argon2id(password, salt = SHA-256(lower-cased e-mail), t, m MiB, p) -- 32 bytes.
- master password hash (what a password login sends instead of the password):
  PBKDF2-HMAC-SHA256(master key, salt = the password, 1 iteration), base64.
- stretched master key: HKDF-Expand-SHA256(master key, info "enc", 32) ||
  HKDF-Expand-SHA256(master key, info "mac", 32) -- the key that wraps the user key.
- cipher string type 2 ``2.<iv>|<ct>|<mac>``: AES-256-CBC (PKCS#7) + HMAC-SHA256 over
  iv||ct with the second half of a 64-byte key; the MAC is verified (constant time, by
  ``cryptography``'s ``HMAC.verify``) *before* anything is decrypted.
- cipher string types 3/4 ``4.<data>``: RSA-OAEP (SHA-256 / SHA-1) with the user's private
  key (an organisation's key is sent to its members this way).

Errors name which check failed, never a key, a plaintext or a cipher string.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import load_der_private_key

KDF_PBKDF2 = 0
KDF_ARGON2ID = 1

# What a server may ask for. Bitwarden's own clients refuse weaker settings; the upper
# bounds stop a hostile server from making one sync burn minutes of CPU or GiBs of memory.
PBKDF2_MIN, PBKDF2_MAX = 5_000, 2_000_000
ARGON2_ITER = (2, 10)
ARGON2_MEMORY_MIB = (15, 1024)
ARGON2_PARALLELISM = (1, 16)


class CryptoError(ValueError):
    """A key or cipher string failed a check; the message names the check only."""


@dataclass(frozen=True)
class Kdf:
    """The account's KDF settings, as prelogin (or the token response) states them."""

    kind: int  # KDF_PBKDF2 | KDF_ARGON2ID
    iterations: int
    memory_mib: int | None = None  # Argon2id only
    parallelism: int | None = None  # Argon2id only

    def check(self) -> None:
        """Refuse settings outside what Bitwarden allows (CryptoError names the bound)."""
        if self.kind == KDF_PBKDF2:
            if not PBKDF2_MIN <= self.iterations <= PBKDF2_MAX:
                raise CryptoError(
                    f"PBKDF2 iterations {self.iterations} outside {PBKDF2_MIN}-{PBKDF2_MAX}"
                )
            return
        if self.kind != KDF_ARGON2ID:
            raise CryptoError(f"unknown KDF type {self.kind} (0 = PBKDF2, 1 = Argon2id)")
        for label, value, (low, high) in (
            ("iterations", self.iterations, ARGON2_ITER),
            ("memory (MiB)", self.memory_mib, ARGON2_MEMORY_MIB),
            ("parallelism", self.parallelism, ARGON2_PARALLELISM),
        ):
            if not isinstance(value, int) or not low <= value <= high:
                raise CryptoError(f"Argon2id {label} {value} outside {low}-{high}")


@dataclass(frozen=True, eq=False)
class SymmetricKey:
    """A 64-byte Bitwarden key: AES-256 encryption key + HMAC-SHA256 key."""

    enc: bytes
    mac: bytes

    @classmethod
    def from_bytes(cls, raw: bytes) -> SymmetricKey:
        if len(raw) != 64:
            raise CryptoError(f"a symmetric key must be 64 bytes, not {len(raw)}")
        return cls(raw[:32], raw[32:])

    def __repr__(self) -> str:
        return "SymmetricKey(***)"


def master_key(password: bytes, email: str, kdf: Kdf) -> bytes:
    """The 32-byte master key from the master password and the account's e-mail."""
    kdf.check()
    salt = email.strip().lower().encode("utf-8")
    if kdf.kind == KDF_PBKDF2:
        return PBKDF2HMAC(hashes.SHA256(), 32, salt, kdf.iterations).derive(password)
    assert kdf.memory_mib is not None and kdf.parallelism is not None  # check() saw them
    return hash_secret_raw(
        password, hashlib.sha256(salt).digest(), time_cost=kdf.iterations,
        memory_cost=kdf.memory_mib * 1024, parallelism=kdf.parallelism, hash_len=32,
        type=Type.ID,
    )  # fmt: skip


def master_password_hash(master: bytes, password: bytes) -> str:
    """What a password login sends (base64): one PBKDF2 round of the master key."""
    derived = PBKDF2HMAC(hashes.SHA256(), 32, password, 1).derive(master)
    return base64.b64encode(derived).decode("ascii")


def stretch(master: bytes) -> SymmetricKey:
    """The stretched master key (HKDF-Expand "enc" / "mac") that wraps the user key."""
    enc = HKDFExpand(hashes.SHA256(), 32, b"enc").derive(master)
    mac = HKDFExpand(hashes.SHA256(), 32, b"mac").derive(master)
    return SymmetricKey(enc, mac)


def _b64(part: str, what: str) -> bytes:
    try:
        return base64.b64decode(part, validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError(f"{what} is not valid base64") from None


def decrypt_sym(cipher_string: str, key: SymmetricKey) -> bytes:
    """Decrypt a type 2 cipher string, its MAC verified first (CryptoError if not type 2)."""
    kind, dot, rest = cipher_string.partition(".")
    if not dot or kind != "2":
        # Type 0 (AES-CBC without a MAC) and 1 (AES-128) are refused: unauthenticated.
        raise CryptoError(f"cipher string type {kind[:2]!r} is not 2 (AES-256-CBC+HMAC)")
    parts = rest.split("|")
    if len(parts) != 3:
        raise CryptoError("a type 2 cipher string has three parts (iv|data|mac)")
    iv, data, mac = (_b64(p, "a cipher string part") for p in parts)
    if len(iv) != 16 or len(mac) != 32 or not data or len(data) % 16:
        raise CryptoError("a type 2 cipher string has the wrong iv, data or mac length")
    h = HMAC(key.mac, hashes.SHA256())
    h.update(iv + data)
    try:
        h.verify(mac)  # constant time; nothing is decrypted unless this passes
    except InvalidSignature:
        raise CryptoError("MAC check failed (tampered data, or the wrong key)") from None
    decryptor = Cipher(algorithms.AES(key.enc), modes.CBC(iv)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CryptoError("bad padding after a valid MAC (a broken client wrote it)") from None


def decrypt_str(cipher_string: str, key: SymmetricKey) -> str:
    try:
        return decrypt_sym(cipher_string, key).decode("utf-8")
    except UnicodeDecodeError:
        raise CryptoError("a decrypted text is not UTF-8") from None


def load_private_key(wrapped: str, user_key: SymmetricKey) -> rsa.RSAPrivateKey:
    """The user's RSA private key (PKCS#8 DER, wrapped with the user key)."""
    der = decrypt_sym(wrapped, user_key)
    try:
        key = load_der_private_key(der, password=None)
    except ValueError:
        raise CryptoError("the private key does not parse as PKCS#8") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CryptoError("the private key is not an RSA key")
    return key


def decrypt_rsa(cipher_string: str, private_key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt a type 3 (RSA-OAEP SHA-256) or 4 (RSA-OAEP SHA-1) cipher string."""
    kind, dot, rest = cipher_string.partition(".")
    algorithm: hashes.HashAlgorithm
    if dot and kind == "4":
        algorithm = hashes.SHA1()  # noqa: S303 - OAEP's hash; Bitwarden's type 4 is defined so
    elif dot and kind == "3":
        algorithm = hashes.SHA256()
    else:
        raise CryptoError(f"cipher string type {kind[:2]!r} is not 3 or 4 (RSA-OAEP)")
    data = _b64(rest.split("|")[0], "an RSA cipher string")
    try:
        return private_key.decrypt(data, OAEP(MGF1(algorithm), algorithm, None))
    except ValueError:
        raise CryptoError("RSA-OAEP decryption failed (the wrong key, or tampered)") from None
