"""The keystore file layout (v1; v2 adds a TPM slot), byte by byte; pure, no files or keys.

Layout (all integers big-endian; docs/operator/KEYSTORE.md is the normative description):

    header   magic "VPKSTOR1"(8) version(1) kdf_id(1) time_cost(4) memory_kib(4)
             parallelism(4) salt(16) slot_count(1) then per slot: type(1) reserved(1) length(2)
    slots    each slot's payload, in table order (a password slot: nonce(12) + wrapped key(48);
             a TPM slot: template(1) + TPM2B_PUBLIC + TPM2B_PRIVATE of the sealed data key)
    body     nonce(12) + AES-256-GCM(data key, JSON entries, aad=header)
    trailer  SHA-256 of everything before it (32) -- damage detection only, not security

Every AES-GCM operation uses the whole header as associated data, so changing any header
byte (KDF params, salt, slot table) makes both the key unwrap and the body fail.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from vaultproxy.errors import KeystoreError

MAGIC = b"VPKSTOR1"
VERSION = 2  # the newest this code reads; a file is written with the lowest that fits it
VERSIONS = (1, 2)  # 2 = may hold a TPM slot (docs/operator/KEYSTORE.md)
KDF_ARGON2ID = 1  # Argon2id, version 0x13, 32-byte output
SALT_LEN = 16
NONCE_LEN = 12
KEY_LEN = 32
TAG_LEN = 16
CHECKSUM_LEN = 32
MAX_SLOTS = 8

SLOT_PASSWORD = 1  # payload: nonce(12) + GCM(KEK from Argon2id(password), data key)
SLOT_TPM = 2  # payload: the data key sealed by a TPM 2.0 (keystore/tpm.py), format v2
PASSWORD_SLOT_LEN = NONCE_LEN + KEY_LEN + TAG_LEN

_FIXED = struct.Struct(">8sBBIII16sB")  # magic .. slot_count: 39 bytes
_SLOT = struct.Struct(">BBH")  # type, reserved (0), payload length

# Bounds on KDF parameters read from a file, so a damaged header cannot ask for 1 TiB.
MAX_TIME_COST = 64
MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_PARALLELISM = 64


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters; the default is the RFC 9106 low-memory profile."""

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4

    def check(self) -> None:
        ok = (
            1 <= self.time_cost <= MAX_TIME_COST
            and 1 <= self.parallelism <= MAX_PARALLELISM
            and 8 * self.parallelism <= self.memory_kib <= MAX_MEMORY_KIB
        )
        if not ok:
            raise KeystoreError(
                "keystore KDF parameters are out of range "
                f"(time_cost 1..{MAX_TIME_COST}, parallelism 1..{MAX_PARALLELISM}, "
                f"memory_kib 8*parallelism..{MAX_MEMORY_KIB})"
            )

    def raised_to(self, floor: KdfParams) -> KdfParams:
        """Each parameter at least as strong as ``floor``'s."""
        return KdfParams(
            max(self.time_cost, floor.time_cost),
            max(self.memory_kib, floor.memory_kib),
            max(self.parallelism, floor.parallelism),
        )


DEFAULT_KDF = KdfParams()


@dataclass(frozen=True)
class Slot:
    type: int
    payload: bytes


@dataclass(frozen=True)
class Header:
    kdf: KdfParams
    salt: bytes
    slot_types: tuple[int, ...]
    slot_lengths: tuple[int, ...]
    version: int = 1

    def pack(self) -> bytes:
        out = [
            _FIXED.pack(
                MAGIC,
                self.version,
                KDF_ARGON2ID,
                self.kdf.time_cost,
                self.kdf.memory_kib,
                self.kdf.parallelism,
                self.salt,
                len(self.slot_types),
            )
        ]
        for kind, length in zip(self.slot_types, self.slot_lengths, strict=True):
            out.append(_SLOT.pack(kind, 0, length))
        return b"".join(out)


@dataclass(frozen=True)
class Parsed:
    header: Header
    header_bytes: bytes  # the exact bytes, used as AES-GCM associated data
    slots: tuple[Slot, ...]
    body: bytes  # nonce + ciphertext + tag


def header_for(kdf: KdfParams, salt: bytes, slots: tuple[Slot, ...]) -> Header:
    """The header for ``slots``, with the lowest format version that can describe them."""
    version = 2 if any(s.type == SLOT_TPM for s in slots) else 1
    return Header(kdf, salt, tuple(s.type for s in slots),
                  tuple(len(s.payload) for s in slots), version)


def assemble(header: Header, slots: list[Slot], body: bytes) -> bytes:
    """Header, slot payloads, body, then the SHA-256 trailer."""
    data = header.pack() + b"".join(s.payload for s in slots) + body
    return data + hashlib.sha256(data).digest()


def _damaged(what: str) -> KeystoreError:
    return KeystoreError(
        f"keystore file is damaged ({what}); restore keystore.enc.bak from the same directory"
    )


def parse(data: bytes) -> Parsed:
    """Split a keystore file into its parts; raises KeystoreError naming what is wrong."""
    if len(data) <= len(MAGIC):
        if MAGIC.startswith(data):
            raise _damaged("truncated")
        raise KeystoreError("this file is not a vaultproxy keystore (bad magic bytes)")
    if not hmac.compare_digest(data[: len(MAGIC)], MAGIC):
        raise KeystoreError("this file is not a vaultproxy keystore (bad magic bytes)")
    if data[len(MAGIC)] not in VERSIONS:
        raise KeystoreError(
            f"keystore format version {data[len(MAGIC)]} is not supported by this vaultproxy "
            f"(it reads versions up to {VERSION}); upgrade vaultproxy"
        )
    if len(data) < _FIXED.size + CHECKSUM_LEN:
        raise _damaged("truncated")
    content, trailer = data[:-CHECKSUM_LEN], data[-CHECKSUM_LEN:]
    if not hmac.compare_digest(hashlib.sha256(content).digest(), trailer):
        raise _damaged("checksum mismatch: truncated or modified")
    _, _, kdf_id, t, m, p, salt, count = _FIXED.unpack_from(content)
    if kdf_id != KDF_ARGON2ID:
        raise KeystoreError(f"keystore uses unknown KDF id {kdf_id}; upgrade vaultproxy")
    kdf = KdfParams(t, m, p)
    kdf.check()
    if not 1 <= count <= MAX_SLOTS:
        raise _damaged("bad key-slot count")
    head_len = _FIXED.size + count * _SLOT.size
    if len(content) < head_len:
        raise _damaged("truncated header")
    types: list[int] = []
    lengths: list[int] = []
    for i in range(count):
        kind, reserved, length = _SLOT.unpack_from(content, _FIXED.size + i * _SLOT.size)
        if reserved != 0:
            raise _damaged("bad key-slot entry")
        types.append(kind)
        lengths.append(length)
    slots: list[Slot] = []
    pos = head_len
    for kind, length in zip(types, lengths, strict=True):
        slots.append(Slot(kind, content[pos : pos + length]))
        pos += length
    body = content[pos:]
    if pos > len(content) or len(body) < NONCE_LEN + TAG_LEN:
        raise _damaged("truncated")
    header = Header(kdf, salt, tuple(types), tuple(lengths), data[len(MAGIC)])
    return Parsed(header, content[:head_len], tuple(slots), body)
