"""The Keystore: open/create the encrypted file, edit entries in memory, save atomically.

Changes are in memory until ``save()``. The data key (DEK) stays the same for the life of a
keystore; the password slot wraps it with Argon2id(password), so ``change_password`` only
re-wraps. Decrypted values are held as ``Secret`` and never put in messages or reprs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from vaultproxy.errors import KeystoreError
from vaultproxy.home import check_private
from vaultproxy.keystore import atomic, entries, format
from vaultproxy.keystore.crypto import OpenFailed, derive_key, seal, unseal, wipe
from vaultproxy.keystore.entries import Entry
from vaultproxy.keystore.format import DEFAULT_KDF, Header, KdfParams, Slot
from vaultproxy.secret import Secret

# Every save raises weaker KDF parameters to at least these. Tests that must stay fast
# (the crash test's writer) lower it; production code never touches it.
KDF_FLOOR: KdfParams = DEFAULT_KDF


def _password_header(kdf: KdfParams, salt: bytes) -> Header:
    return Header(kdf, salt, (format.SLOT_PASSWORD,), (format.PASSWORD_SLOT_LEN,))


def _wrap(password: Secret, dek: bytearray, kdf: KdfParams) -> tuple[Header, Slot]:
    """A fresh salt, the header that goes with it, and the password slot wrapping ``dek``."""
    kdf.check()
    header = _password_header(kdf, secrets.token_bytes(format.SALT_LEN))
    kek = derive_key(password, header.salt, kdf)
    try:
        payload = seal(kek, dek, header.pack())
    finally:
        wipe(kek)
    return header, Slot(format.SLOT_PASSWORD, payload)


class WrongPassword(KeystoreError):
    """The master password does not open the keystore (callers add where it came from)."""


class Keystore:
    """An unlocked keystore. Build it with ``create`` or ``open``, never directly."""

    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, path: Path, header: Header, slots: tuple[Slot, ...], dek: bytearray,
                 found: tuple[dict[str, Entry], dict[str, Entry]], disk: bytes | None,
                 password: Secret | None) -> None:
        self.path = Path(path)
        self._header = header
        self._slots = slots
        self._dek = dek
        self._entries, self._internal = found
        self._disk = disk  # SHA-256 of the file as we last read or wrote it
        # Kept only while the KDF parameters are below the floor, to upgrade on save.
        self._password = password

    def __repr__(self) -> str:
        return f"Keystore(path={str(self.path)!r}, entries={len(self._entries)})"

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path | str, password: Secret, kdf: KdfParams | None = None) -> Keystore:
        """Write a new, empty keystore at ``path``; refuses if a file is already there."""
        path = Path(path)
        kdf = kdf or DEFAULT_KDF
        dek = bytearray(secrets.token_bytes(format.KEY_LEN))
        header, slot = _wrap(password, dek, kdf)
        keep = Secret(password.reveal()) if kdf.raised_to(KDF_FLOOR) != kdf else None
        store = cls(path, header, (slot,), dek, ({}, {}), None, keep)
        store._write(header, (slot,))  # as asked; a later save() raises weak parameters
        return store

    @classmethod
    def open(cls, path: Path | str, password: Secret) -> Keystore:
        """Unlock ``path``; every failure is one KeystoreError line naming the fix."""
        path = Path(path)
        if not path.parent.is_dir():
            raise KeystoreError(
                f"vaultproxy home {path.parent} does not exist; run `vaultproxy init "
                f"--home {path.parent}` first"
            )
        check_private(path.parent, 0o700)
        if not path.exists() and not path.is_symlink():
            raise KeystoreError(
                f"no keystore at {path}; run `vaultproxy init --home {path.parent}` first"
            )
        check_private(path, 0o600)
        data = atomic.read_file(path)
        if data is None:
            raise KeystoreError(f"no keystore at {path}")
        parsed = format.parse(data)
        dek = cls._unwrap(path, parsed, password)
        try:
            plain = unseal(dek, parsed.body, parsed.header_bytes)
        except OpenFailed:
            wipe(dek)
            raise KeystoreError(
                f"{path} fails authentication: it was modified outside vaultproxy; "
                "restore keystore.enc.bak"
            ) from None
        try:
            found = entries.decode(plain)
        finally:
            wipe(plain)
        kdf = parsed.header.kdf
        keep = Secret(password.reveal()) if kdf.raised_to(KDF_FLOOR) != kdf else None
        return cls(path, parsed.header, parsed.slots, dek, found, atomic.digest(data), keep)

    @staticmethod
    def _unwrap(path: Path, parsed: format.Parsed, password: Secret) -> bytearray:
        slot = next((s for s in parsed.slots if s.type == format.SLOT_PASSWORD), None)
        if slot is None or len(slot.payload) != format.PASSWORD_SLOT_LEN:
            raise KeystoreError(f"{path} has no usable password key slot; restore keystore.enc.bak")
        kek = derive_key(password, parsed.header.salt, parsed.header.kdf)
        try:
            dek = unseal(kek, slot.payload, parsed.header_bytes)
        except OpenFailed:
            raise WrongPassword(f"cannot unlock {path}: wrong master password") from None
        finally:
            wipe(kek)
        if len(dek) != format.KEY_LEN:
            raise KeystoreError(f"{path} has a malformed key slot; restore keystore.enc.bak")
        return dek

    @classmethod
    async def open_async(cls, path: Path | str, password: Secret) -> Keystore:
        """``open`` in a worker thread, so the KDF does not block the event loop."""
        return await asyncio.to_thread(cls.open, path, password)

    @classmethod
    def view(cls, path: Path | str, plain: bytes | bytearray) -> Keystore:
        """A read-only keystore built from ``plaintext()`` of an unlocked one.

        ``vaultproxy run --workers N`` hands this to each worker process over a private
        socketpair; a view has no data key, so ``save``/``change_password`` refuse.
        """
        return cls(Path(path), Header(DEFAULT_KDF, b"", (), ()), (), bytearray(),
                   entries.decode(plain), None, None)

    def refresh(self) -> bool:
        """Re-read the file with the data key held in memory; True if it had changed.

        Picks up what another process wrote (``vaultproxy secret set``, ``agent add``,
        ``passwd``) without the password. A file sealed under another data key (a new
        keystore in its place) or damaged is a KeystoreError, and this object is unchanged.
        """
        if not self._dek:
            raise KeystoreError("this is a worker's read-only view of the keystore")
        data = atomic.read_file(self.path)
        if data is None:
            raise KeystoreError(f"{self.path} is gone; restore keystore.enc.bak")
        digest = atomic.digest(data)
        if digest == self._disk:
            return False
        parsed = format.parse(data)
        try:
            plain = unseal(self._dek, parsed.body, parsed.header_bytes)
        except OpenFailed:
            raise KeystoreError(
                f"{self.path} is not the keystore this proxy unlocked (another data key, or "
                "modified outside vaultproxy); unlock again or restart to use it"
            ) from None
        try:
            found = entries.decode(plain)
        finally:
            wipe(plain)
        if parsed.slots != self._slots and self._password is not None:
            self._password.wipe()  # the password may have changed: never re-wrap under it
            self._password = None
        self._header, self._slots, self._disk = parsed.header, parsed.slots, digest
        self._entries, self._internal = found
        return True

    def plaintext(self) -> bytearray:
        """The decrypted entries, encoded as in the file body (caller wipes the buffer)."""
        return entries.encode(self._entries, self._internal)

    # -- entries (in memory until save) ----------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry | None:
        entry = self._entries.get(name)
        return entry.copy() if entry is not None else None

    def _touch(self, table: dict[str, Entry], name: str) -> Entry:
        now = self.clock()
        entry = table.get(name)
        if entry is None:
            entry = table[name] = Entry(name=name, created=now)
        entry.updated = now
        return entry

    def set_value(self, name: str, value: Secret) -> None:
        entries.check_name(name)
        self._touch(self._entries, name).value = Secret(value.reveal())

    def set_field(self, name: str, field: str, value: Secret) -> None:
        entries.check_name(name)
        entries.check_name(field, "field name")
        self._touch(self._entries, name).fields[field] = Secret(value.reveal())

    def remove(self, name: str) -> bool:
        return self._entries.pop(name, None) is not None

    # -- internal entries ("namespace:name", e.g. "agent:ci-bot" -> token hash) -------------

    def set_internal(self, name: str, value: Secret) -> None:
        entries.check_internal_name(name)
        self._touch(self._internal, name).value = Secret(value.reveal())

    def get_internal(self, name: str) -> Secret | None:
        entry = self._internal.get(name)
        return entry.value if entry is not None else None

    def internal_names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._internal if n.startswith(prefix))

    def remove_internal(self, name: str) -> bool:
        return self._internal.pop(name, None) is not None

    # -- writing ---------------------------------------------------------------------------

    @property
    def kdf(self) -> KdfParams:
        return self._header.kdf

    def save(self) -> None:
        """Write all entries (atomically, under the lock); raise weak KDF params first."""
        self._check_rewritable()
        header, slots = self._header, self._slots
        target = header.kdf.raised_to(KDF_FLOOR)
        if target != header.kdf:
            if self._password is None:
                raise KeystoreError("cannot upgrade the KDF parameters without the password")
            header, slot = _wrap(self._password, self._dek, target)
            slots = (slot,)
        self._write(header, slots)
        if self._password is not None and target == header.kdf:
            self._password.wipe()
            self._password = None

    def change_password(self, new: Secret) -> None:
        """Re-wrap the data key under ``new`` (fresh salt) and save; entries are untouched."""
        self._check_rewritable()
        header, slot = _wrap(new, self._dek, self._header.kdf.raised_to(KDF_FLOOR))
        self._write(header, (slot,), backup_old=False)
        if self._password is not None:
            self._password.wipe()
            self._password = None

    def _check_rewritable(self) -> None:
        if not self._dek:
            raise KeystoreError("this is a worker's read-only view of the keystore")
        unknown = sorted({s.type for s in self._slots} - {format.SLOT_PASSWORD})
        if unknown:
            raise KeystoreError(
                f"{self.path} has key slot types {unknown} this vaultproxy cannot rewrite; "
                "upgrade vaultproxy"
            )

    def _write(self, header: Header, slots: tuple[Slot, ...], backup_old: bool = True) -> None:
        header_bytes = header.pack()
        plain = entries.encode(self._entries, self._internal)
        try:
            body = seal(self._dek, plain, header_bytes)
        finally:
            wipe(plain)
        data = format.assemble(header, list(slots), body)
        atomic.replace(self.path, data, self._disk, backup_old=backup_old)
        self._header, self._slots, self._disk = header, slots, atomic.digest(data)
