"""Crash-safe replacement of the keystore file, serialised by an exclusive lock file.

write order, each step a ``write_atomic`` (temp O_CREAT|O_EXCL|O_NOFOLLOW 0600 -> write ->
fsync -> ``os.replace`` -> fsync the directory): the current file to ``<name>.bak``, then the
new bytes to ``<name>``. A crash at any point leaves ``<name>`` holding either the old or
the new bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from vaultproxy.errors import KeystoreError
from vaultproxy.files.atomic_file import write_atomic

LOCK_TIMEOUT = 10.0
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def read_file(path: Path) -> bytes | None:
    """The file's bytes, or None if it does not exist; never follows a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise KeystoreError(f"{path} is a symbolic link; refusing to follow it") from None
        raise KeystoreError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``<path>.lock`` (created 0600) for the block."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600)
    except OSError as e:
        raise KeystoreError(f"cannot create lock file {lock_path}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise KeystoreError(
                        f"another process holds {lock_path}; wait for it to finish and retry"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."  # as write_atomic's temp names


def _remove_stale_temps(path: Path) -> None:
    """Temps left by a writer that was killed (we hold the lock, so none is in use)."""
    prefix = _temp_prefix(path)
    for p in path.parent.iterdir():
        if p.name.startswith(prefix) and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)  # also matches the temps of "<name>.bak"


def replace(path: Path, data: bytes, expect: bytes | None, *, backup_old: bool = True) -> None:
    """Atomically make ``path`` hold ``data``, keeping the previous file as ``<path>.bak``.

    With ``backup_old=False`` the backup becomes a copy of the *new* file instead, written
    after the replace (used by a password change, so no file keeps the old password's slot).

    ``expect`` is the SHA-256 of the file as the caller last saw it (None: it must not
    exist). If the file changed meanwhile, nothing is written and KeystoreError is raised.
    """
    with locked(path):
        _remove_stale_temps(path)
        current = read_file(path)
        if expect is None and current is not None:
            raise KeystoreError(f"{path} already exists; refusing to overwrite it")
        if expect is not None and (current is None or digest(current) != expect):
            raise KeystoreError(
                f"{path} was changed by another process since it was opened; "
                "nothing was written, run the command again"
            )
        try:
            bak = path.with_name(path.name + ".bak")
            if current is not None and backup_old:
                write_atomic(bak, current)
            write_atomic(path, data)
            if not backup_old:
                write_atomic(bak, data)
        except OSError as e:
            raise KeystoreError(f"cannot write {path}: {e.strerror}") from None
