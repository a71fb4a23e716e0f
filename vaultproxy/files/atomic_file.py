"""``write_atomic()``: the one way vaultproxy replaces a file it owns.

temp file next to ``path`` (``O_CREAT|O_EXCL|O_NOFOLLOW``, exact ``mode`` whatever the umask)
-> write -> fsync -> ``os.replace`` (or, with ``exclusive``, a hard link that fails if ``path``
exists) -> fsync the directory. A crash leaves the old bytes or the new, never a torn file;
a symlink planted at the temp name is never followed."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_name(path: Path) -> Path:
    """Where ``write_atomic`` stages ``path`` (``.<name>.<random>.tmp``, same directory)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def write_atomic(
    path: Path, data: bytes | str, *, mode: int = 0o600, exclusive: bool = False
) -> None:
    """Make ``path`` hold ``data``; OSError on failure (FileExistsError when ``exclusive``
    and ``path`` exists), and the file then keeps its old contents."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = temp_name(path)
    fd = os.open(tmp, _FLAGS, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            _link_no_clobber(tmp, path)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_no_clobber(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # atomic, and fails if path exists
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # A filesystem without hard links: check, then rename (a small race, but no torn file).
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
