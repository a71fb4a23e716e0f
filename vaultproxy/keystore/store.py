"""The Keystore: open/create the encrypted file, edit entries in memory, save atomically.

Changes are in memory until ``save()``. The data key (DEK) stays the same for the life of a
keystore; the password slot wraps it with Argon2id(password), so ``change_password`` only
re-wraps. Decrypted values are held as ``Secret`` and never put in messages or reprs.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vaultproxy.errors import KeystoreError
from vaultproxy.files.home import check_private
from vaultproxy.keystore import atomic, entries, format
from vaultproxy.keystore.crypto import OpenFailed, derive_key, seal, unseal, wipe
from vaultproxy.keystore.entries import Body, Entry, Retired, SharedEntry
from vaultproxy.keystore.format import DEFAULT_KDF, Header, KdfParams, Slot
from vaultproxy.keystore.synced import SourceCache, SyncedItem
from vaultproxy.secret import Secret

# Every save raises weaker KDF parameters to at least these. Tests that must stay fast
# (the crash test's writer) lower it; production code never touches it.
KDF_FLOOR: KdfParams = DEFAULT_KDF
# Retired values kept at most (the oldest go first); a save also drops those older than
# ``Keystore.retired_days`` when the proxy set it from ``[proxy] retired_redact_days``.
MAX_RETIRED = 1024
DAY = 86400.0


def _wrap(password: Secret, dek: bytearray, kdf: KdfParams,
          keep: tuple[Slot, ...] = ()) -> tuple[Header, tuple[Slot, ...]]:
    """A fresh salt, the header that goes with it, and the slots: a new password slot
    wrapping ``dek``, then ``keep`` (a TPM slot, which does not depend on the header)."""
    kdf.check()
    sizing = Slot(format.SLOT_PASSWORD, bytes(format.PASSWORD_SLOT_LEN))
    header = format.header_for(kdf, secrets.token_bytes(format.SALT_LEN), (sizing, *keep))
    kek = derive_key(password, header.salt, kdf)
    try:
        payload = seal(kek, dek, header.pack())
    finally:
        wipe(kek)
    return header, (Slot(format.SLOT_PASSWORD, payload), *keep)


# ``Keystore._shared``'s items: see ``get_shared``.
_Shared = tuple[Entry, Secret | None, tuple[tuple[str, Secret], ...], float, float, SharedEntry]


class WrongPassword(KeystoreError):
    """The master password does not open the keystore (callers add where it came from)."""


class Keystore:
    """An unlocked keystore. Build it with ``create`` or ``open``, never directly."""

    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, path: Path, header: Header, slots: tuple[Slot, ...], dek: bytearray,
                 found: Body, disk: bytes | None, password: Secret | None) -> None:
        self.path = Path(path)
        self._header = header
        self._slots = slots
        self._dek = dek
        self._entries, self._internal, self._synced = found.entries, found.internal, found.synced
        self._retired: list[Retired] = found.retired
        # None: keep every retired value (the CLI, which does not read [proxy]); 0: keep none.
        self.retired_days: float | None = None
        self._disk = disk  # SHA-256 of the file as we last read or wrote it
        # Kept only while the KDF parameters are below the floor, to upgrade on save.
        self._password = password
        self._via_tpm = False  # unlocked by the TPM slot: no password to upgrade the KDF with
        # entry name -> (the stored entry, its value, its fields' items, created, updated,
        # the read-only copy made of them): ``get_shared``
        self._shared: dict[str, _Shared] = {}
        # ``wipe``: every edit, save, refresh and ``plaintext`` holds ``_mutex`` (``_writing``)
        # and refuses once ``_wiped`` is set; the wipe itself never waits for it
        self._mutex = threading.Lock()
        self._wiped = False
        self._wipe_done = False

    def __repr__(self) -> str:
        return f"Keystore(path={str(self.path)!r}, entries={len(self._entries)})"

    # -- wiping (the proxy locks) ----------------------------------------------------------

    def wipe(self) -> None:
        """Overwrite this object's copy of every secret (entries, their fields, internal
        entries, synced values, retired values), the data key and the kept password, and
        refuse every later edit, save, refresh and ``plaintext`` (KeystoreError): the
        session calls it when the proxy locks. Best effort as ``Secret.wipe`` is: bytes
        already revealed (a redactor's, a request's) are not reached.

        Never a half-written file: an edit or a save under way in another thread (the admin
        API's, a sync's, a mint's write-back) finishes first, and that thread wipes as it
        lets go of the keystore (``_writing``); the caller (the event loop) does not wait for
        it. A write that starts after this refuses before touching anything."""
        self._wiped = True  # first: a writer that lets go after this sees it (below)
        if not self._mutex.acquire(blocking=False):
            return  # a writer holds it: it wipes on its way out
        try:
            self._wipe_now()
        finally:
            self._mutex.release()

    @property
    def wiped(self) -> bool:
        return self._wiped

    def _wipe_now(self) -> None:
        if self._wipe_done:
            return
        self._wipe_done = True
        self.forget_shared()
        held: list[Secret | None] = []
        tables = (self._entries, self._internal)
        self._entries, self._internal = {}, {}
        for table in tables:
            for entry in list(table.values()):
                held.append(entry.value)
                held.extend(list(entry.fields.values()))
        synced, self._synced = self._synced, {}
        for cache in list(synced.values()):
            for item in list(cache.items.values()):
                held.extend(list(item.fields.values()))
        retired, self._retired = self._retired, []
        held.extend(r.value for r in retired)
        for secret in held:
            if secret is not None:
                secret.wipe()
        wipe(self._dek)
        self._dek = bytearray()
        if self._password is not None:
            self._password.wipe()
            self._password = None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the keystore for an edit, a save, a refresh or ``plaintext``; refuse once it
        was wiped. A ``wipe`` that came meanwhile is done here, after letting go (it set
        ``_wiped`` before trying the lock, and this reads it after releasing: one of the
        two always wipes)."""
        try:
            with self._mutex:
                if self._wiped:
                    raise KeystoreError(
                        "the proxy was locked meanwhile and this keystore copy is wiped; "
                        "nothing was written: unlock (`vaultproxy unlock`) and try again"
                    )
                yield
        finally:  # (also when this write failed or refused: another may have held it)
            if self._wiped:
                self.wipe()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path | str, password: Secret, kdf: KdfParams | None = None) -> Keystore:
        """Write a new, empty keystore at ``path``; refuses if a file is already there."""
        path = Path(path)
        kdf = kdf or DEFAULT_KDF
        dek = bytearray(secrets.token_bytes(format.KEY_LEN))
        header, slots = _wrap(password, dek, kdf)
        keep = Secret(password.reveal()) if kdf.raised_to(KDF_FLOOR) != kdf else None
        store = cls(path, header, slots, dek, Body({}, {}), None, keep)
        store._write(header, slots)  # as asked; a later save() raises weak parameters
        return store

    @classmethod
    def open(cls, path: Path | str, password: Secret) -> Keystore:
        """Unlock ``path``; every failure is one KeystoreError line naming the fix."""
        path = Path(path)
        parsed, data = cls._read(path)
        dek = cls._unwrap(path, parsed, password)
        kdf = parsed.header.kdf
        keep = Secret(password.reveal()) if kdf.raised_to(KDF_FLOOR) != kdf else None
        return cls._opened(path, parsed, data, dek, keep)

    @classmethod
    def open_tpm(cls, path: Path | str, tcti: str | None = None) -> Keystore:
        """Unlock ``path`` with its TPM slot (no password); TpmError says why it cannot."""
        from vaultproxy.keystore import tpm

        path = Path(path)
        parsed, data = cls._read(path)
        slot = next((s for s in parsed.slots if s.type == format.SLOT_TPM), None)
        if slot is None:
            raise KeystoreError(f"{path} has no TPM slot; add one with `vaultproxy tpm seal`")
        dek = tpm.unseal(slot.payload, tcti)
        try:
            store = cls._opened(path, parsed, data, dek, None, what="the key from its TPM slot")
        except KeystoreError as e:
            raise tpm.TpmRefused(str(e)) from None
        store._via_tpm = True
        return store

    @staticmethod
    def _read(path: Path) -> tuple[format.Parsed, bytes]:
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
        return format.parse(data), data

    @classmethod
    def _opened(cls, path: Path, parsed: format.Parsed, data: bytes, dek: bytearray,
                keep: Secret | None, what: str = "") -> Keystore:
        """Decrypt the body with ``dek`` (wiped on failure) and build the Keystore."""
        try:
            plain = unseal(dek, parsed.body, parsed.header_bytes)
        except OpenFailed:
            wipe(dek)
            if keep is not None:
                keep.wipe()
            if what:
                raise KeystoreError(f"{path} does not open with {what} (the slot or the file "
                                    "was modified); unlock with the master password") from None
            raise KeystoreError(
                f"{path} fails authentication: it was modified outside vaultproxy; "
                "restore keystore.enc.bak"
            ) from None
        try:
            found = entries.decode(plain)
        finally:
            wipe(plain)
        return cls(path, parsed.header, parsed.slots, dek, found, atomic.digest(data), keep)

    @staticmethod
    def has_tpm_slot(path: Path | str) -> bool:
        """True if the keystore file at ``path`` has a TPM slot (read without unlocking)."""
        path = Path(path)
        data = atomic.read_file(path)
        if data is None:
            return False
        return any(s.type == format.SLOT_TPM for s in format.parse(data).slots)

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
        with self._writing():
            return self._refresh()

    def _refresh(self) -> bool:
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
        self._entries, self._internal, self._synced = found.entries, found.internal, found.synced
        self._retired = found.retired
        self.forget_shared()
        return True

    def plaintext(self) -> bytearray:
        """The decrypted entries, encoded as in the file body (caller wipes the buffer)."""
        with self._writing():
            return entries.encode(self._body())

    def _body(self) -> Body:
        return Body(self._entries, self._internal, self._synced, self._retired)

    # -- entries (in memory until save) ----------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry | None:
        entry = self._entries.get(name)
        return entry.copy() if entry is not None else None

    def get_shared(self, name: str) -> Entry | None:
        """``get(name)`` for readers that change nothing they get (``Session.entry_for``:
        the request path, the minter, the redactors, ``/env``): a copy as ``get`` makes,
        read-only (``SharedEntry``), made once and handed to each such reader while the
        stored entry is as it was when it was made. "As it was" is told by identity: the
        same stored Entry object, the same value Secret object, the same Secret object
        under each field name (no field added or gone) and the same timestamps; every
        change ``set_value``, ``set_field``, ``remove`` or ``refresh`` makes fails one of
        those, so the next call copies anew (tests/unit/test_speed_stages4.py compares it
        with ``get`` over seeded edits)."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        memo = self._shared.get(name)
        if (memo is not None and memo[0] is entry and memo[1] is entry.value
                and memo[3] == entry.updated and memo[4] == entry.created):
            fields, held = entry.fields, memo[2]
            if not held:  # (no generator for an entry without fields, the common one)
                if not fields:
                    return memo[5]
            elif len(fields) == len(held) and all(fields.get(k) is v for k, v in held):
                return memo[5]
        if memo is not None:
            memo[5].drop_made()
        items = tuple(entry.fields.items())
        shared = SharedEntry(entry)
        self._shared[name] = (entry, entry.value, items, entry.updated, entry.created, shared)
        return shared

    def forget_shared(self, name: str | None = None) -> None:
        """Hand out no shared copy made so far (of ``name``; None: of every entry), and drop
        what the injection made of each (``SharedEntry.made``): the next ``get_shared``
        copies anew. Called on every write here, and by the session on a lock, an unlock and
        a reload."""
        if name is None:
            memos = list(self._shared.values())
            self._shared = {}
        else:
            memo = self._shared.pop(name, None)
            memos = [] if memo is None else [memo]
        for memo in memos:
            memo[5].drop_made()

    def _touch(self, table: dict[str, Entry], name: str) -> Entry:
        now = self.clock()
        entry = table.get(name)
        if entry is None:
            entry = table[name] = Entry(name=name, created=now)
        entry.updated = now
        return entry

    def set_value(self, name: str, value: Secret) -> None:
        entries.check_entry_name(name)
        with self._writing():
            self._set_value(name, value)

    def _set_value(self, name: str, value: Secret) -> None:
        self.forget_shared(name)
        entry = self._touch(self._entries, name)
        self._retire(name, None, entry.value, entry.updated, value)
        entry.value = Secret(value.reveal())

    def set_field(self, name: str, field: str, value: Secret) -> None:
        entries.check_entry_name(name)
        entries.check_name(field, "field name")
        with self._writing():
            self._set_field(name, field, value)

    def _set_field(self, name: str, field: str, value: Secret) -> None:
        self.forget_shared(name)
        entry = self._touch(self._entries, name)
        self._retire(name, field, entry.fields.get(field), entry.updated, value)
        entry.fields[field] = Secret(value.reveal())

    def remove(self, name: str) -> bool:
        with self._writing():
            return self._remove(name)

    def _remove(self, name: str) -> bool:
        self.forget_shared(name)
        entry = self._entries.pop(name, None)
        if entry is None:
            return False
        now = self.clock()
        self._retire(name, None, entry.value, now)
        for field, old in entry.fields.items():
            self._retire(name, field, old, now)
        return True

    # -- retired values (still redacted for [proxy] retired_redact_days) -------------------

    def _retire(self, owner: str, field: str | None, old: Secret | None, now: float,
                new: Secret | None = None) -> None:
        """Keep ``old`` as retired at ``now`` unless ``new`` is the same value (or keeping is
        off)."""
        if old is None or not old or self.retired_days == 0 or (new is not None and old == new):
            return
        for r in self._retired:
            if r.owner == owner and r.field == field and r.value == old:
                r.retired = now
                return
        self._retired.append(Retired(owner, field, Secret(old.reveal()), now))
        del self._retired[:-MAX_RETIRED]

    def retired_values(self, owner: str, since: float,
                       skip_fields: frozenset[str] = frozenset()) -> list[Secret]:
        """The values retired from ``owner`` (an entry, or ``SOURCE:ITEM``) after ``since``,
        but not those of ``skip_fields`` (fields that are not secret, like ``username``)."""
        return [r.value for r in self._retired
                if r.owner == owner and r.retired >= since and r.field not in skip_fields]

    def retired_count(self) -> int:
        return len(self._retired)

    def _prune_retired(self) -> None:
        days = self.retired_days
        if days is not None:
            since = self.clock() - days * DAY
            self._retired = [r for r in self._retired if days > 0 and r.retired >= since]

    # -- internal entries ("namespace:name", e.g. "agent:ci-bot" -> token hash) -------------

    def set_internal(self, name: str, value: Secret) -> None:
        entries.check_internal_name(name)
        with self._writing():
            self._touch(self._internal, name).value = Secret(value.reveal())

    def get_internal(self, name: str) -> Secret | None:
        entry = self._internal.get(name)
        return entry.value if entry is not None else None

    def internal_names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._internal if n.startswith(prefix))

    def remove_internal(self, name: str) -> bool:
        with self._writing():
            return self._internal.pop(name, None) is not None

    # -- values cached from external sources (keystore/synced.py, SPEC §9) ----------------

    def source_names(self) -> list[str]:
        return sorted(self._synced)

    def source_cache(self, source: str) -> SourceCache | None:
        """A copy of what is cached for ``source`` (its items are shared, not copied)."""
        cache = self._synced.get(source)
        return cache.copy() if cache is not None else None

    def synced_item(self, source: str, key: str) -> SyncedItem | None:
        cache = self._synced.get(source)
        return cache.items.get(key) if cache is not None else None

    def put_source_cache(self, source: str, cache: SourceCache) -> None:
        """Replace what is cached for ``source`` (in memory until ``save``); a field value
        that changed or went away is retired."""
        with self._writing():
            old = self._synced.get(source)
            if old is not None:
                self._retire_items(source, old, cache)
            self._synced[source] = cache

    def remove_source_cache(self, source: str) -> bool:
        with self._writing():
            old = self._synced.pop(source, None)
            if old is None:
                return False
            self._retire_items(source, old, SourceCache())
            return True

    def _retire_items(self, source: str, old: SourceCache, new: SourceCache) -> None:
        now = None
        for key, item in old.items.items():
            kept = new.items.get(key)
            for field, value in item.fields.items():
                current = kept.fields.get(field) if kept is not None else None
                if current is None or not current == value:
                    now = self.clock() if now is None else now
                    self._retire(f"{source}:{key}", field, value, now, current)

    # -- writing ---------------------------------------------------------------------------

    @property
    def kdf(self) -> KdfParams:
        return self._header.kdf

    def save(self) -> None:
        """Write all entries (atomically, under the lock); raise weak KDF params first."""
        with self._writing():
            self._save()

    def _save(self) -> None:
        self._check_rewritable()
        header, slots = self._header, self._slots
        target = header.kdf.raised_to(KDF_FLOOR)
        if target != header.kdf and not (self._password is None and self._via_tpm):
            if self._password is None:
                raise KeystoreError("cannot upgrade the KDF parameters without the password")
            header, slots = _wrap(self._password, self._dek, target, self._other_slots())
        self._write(header, slots)
        if self._password is not None and target == header.kdf:
            self._password.wipe()
            self._password = None

    def change_password(self, new: Secret) -> None:
        """Re-wrap the data key under ``new`` (fresh salt) and save; entries are untouched."""
        with self._writing():
            self._change_password(new)

    def _change_password(self, new: Secret) -> None:
        self._check_rewritable()
        header, slots = _wrap(new, self._dek, self._header.kdf.raised_to(KDF_FLOOR),
                              self._other_slots())
        self._write(header, slots, backup_old=False)
        if self._password is not None:
            self._password.wipe()
            self._password = None

    def _check_rewritable(self) -> None:
        if not self._dek:
            raise KeystoreError("this is a worker's read-only view of the keystore")
        unknown = sorted({s.type for s in self._slots} - {format.SLOT_PASSWORD, format.SLOT_TPM})
        if unknown:
            raise KeystoreError(
                f"{self.path} has key slot types {unknown} this vaultproxy cannot rewrite; "
                "upgrade vaultproxy"
            )

    # -- the TPM slot (keystore/tpm.py; the password slot always stays, as recovery) --------

    @property
    def tpm_sealed(self) -> bool:
        return any(s.type == format.SLOT_TPM for s in self._slots)

    def _other_slots(self) -> tuple[Slot, ...]:
        return tuple(s for s in self._slots if s.type != format.SLOT_PASSWORD)

    def _check_password(self, password: Secret) -> None:
        """The password must open this keystore's password slot (it is re-wrapped next)."""
        parsed = format.Parsed(self._header, self._header.pack(), self._slots, b"")
        wipe(self._unwrap(self.path, parsed, password))

    def add_tpm_slot(self, password: Secret, tcti: str | None = None) -> None:
        """Seal the data key to the TPM (replacing any TPM slot) and save atomically.

        The slot table is part of the header, i.e. of every AES-GCM AAD, so the password
        slot is re-wrapped (fresh salt): hence ``password``, checked first.
        """
        with self._writing():
            self._add_tpm_slot(password, tcti)

    def _add_tpm_slot(self, password: Secret, tcti: str | None) -> None:
        from vaultproxy.keystore import tpm

        self._check_rewritable()
        self._check_password(password)
        payload = tpm.seal(self._dek, tcti)
        check = tpm.unseal(payload, tcti)  # never write a slot this TPM cannot open
        try:
            if not hmac.compare_digest(bytes(check), bytes(self._dek)):
                raise tpm.TpmError("the TPM returned another key than it sealed; not saved")
        finally:
            wipe(check)
        keep = tuple(s for s in self._other_slots() if s.type != format.SLOT_TPM)
        header, slots = _wrap(password, self._dek, self._header.kdf.raised_to(KDF_FLOOR),
                              (*keep, Slot(format.SLOT_TPM, payload)))
        self._write(header, slots)

    def remove_tpm_slot(self, password: Secret) -> bool:
        """Drop the TPM slot (False if there is none). keystore.enc.bak becomes a copy of the
        new file, so no file in the home opens with the TPM any more."""
        with self._writing():
            return self._remove_tpm_slot(password)

    def _remove_tpm_slot(self, password: Secret) -> bool:
        if not self.tpm_sealed:
            return False
        self._check_rewritable()
        self._check_password(password)
        keep = tuple(s for s in self._other_slots() if s.type != format.SLOT_TPM)
        header, slots = _wrap(password, self._dek, self._header.kdf.raised_to(KDF_FLOOR), keep)
        self._write(header, slots, backup_old=False)
        return True

    def _write(self, header: Header, slots: tuple[Slot, ...], backup_old: bool = True) -> None:
        self._prune_retired()
        header_bytes = header.pack()
        plain = entries.encode(self._body())
        try:
            body = seal(self._dek, plain, header_bytes)
        finally:
            wipe(plain)
        data = format.assemble(header, list(slots), body)
        atomic.replace(self.path, data, self._disk, backup_old=backup_old)
        self._header, self._slots, self._disk = header, slots, atomic.digest(data)
