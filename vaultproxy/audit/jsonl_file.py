"""The ``audit.jsonl`` file layer: 0600, O_APPEND, one ``write`` per line, size rotation.

Every process of a run (the supervisor and each ``--workers`` process) appends its own
records to the same file: each line goes out in one ``os.write`` on an ``O_APPEND`` fd, which
the kernel appends whole (lines never interleave). A short write (the disk filled up in the
middle of a line) is cut back off with ``ftruncate``, so a failed write leaves no torn line
behind, and the caller keeps the whole line for a later try (no duplicate either).

Rotation with several writers: the one that finds the file full takes an ``flock`` on it,
checks that nobody rotated it meanwhile, and renames; every writer notices a rotation on its
next write (the path names another inode) and reopens.

Not thread-safe by itself; ``AuditLog`` serialises every call behind one lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


# The check of every line through libc's own ``lstat`` (ctypes): the same ``newfstatat``
# syscall as ``os.lstat``, without building an ``os.stat_result`` (20 fields, float and
# nanosecond times as big ints): ~6k instructions a line less (hops.py). Only what it reads,
# st_dev, st_ino, st_size, from the ``struct stat`` the call fills in: at offsets 0, 8 and 48
# on x86_64 and (little-endian) aarch64 glibc; anything else, or a libc without ``lstat``
# (before glibc 2.33), keeps ``os.lstat`` (``_LSTAT`` is None). So does any failure of the
# call: ``os.lstat`` then makes the very same decision (its exception) as before.
_STAT_SIZE = 256  # struct stat is 144 bytes on both; room to spare
_STAT_FIELDS = struct.Struct("=QQ32xq")  # st_dev, st_ino, (nlink mode uid gid pad rdev), st_size


def _libc_lstat() -> Callable[[bytes, object], int] | None:
    """libc's ``lstat(path, buf)`` if it gives what ``os.lstat`` does here, else None."""
    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None)["lstat"]  # CDLL: the GIL let go around it, as os.lstat does
        buf = ctypes.create_string_buffer(_STAT_SIZE)
        # a directory and this file (a size no other field of struct stat has by chance)
        for where in (b"/", os.fsencode(__file__)):
            st = os.lstat(where)
            if fn(where, buf) != 0:  # the buffer itself: an int would go as a 32-bit C int
                return None
            if _STAT_FIELDS.unpack_from(buf) != (st.st_dev, st.st_ino, st.st_size):
                return None
    except (ImportError, OSError, AttributeError, ValueError, TypeError):
        return None
    return fn  # type: ignore[no-any-return]


_LSTAT = _libc_lstat()


def rotated_path(path: Path, index: int) -> Path:
    """``audit.jsonl`` for 0, ``audit.jsonl.<index>`` otherwise."""
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


class JsonlFile:
    """Appends whole lines; starts a fresh file when the next line would pass ``max_bytes``."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if backups < 0:
            raise ValueError("backups must be 0 or more")
        self.path = path
        # for the stat of every line: the bytes ``os.lstat`` makes of the path itself
        # (``os.fsencode``, as its path converter does), made once (-0.3k instructions a line)
        self._where = os.fsencode(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = -1
        self._ino: tuple[int, int] | None = None
        self._dev = self._inode = -1  # ``_ino`` apart, for the check of every line
        # libc's lstat and the buffer it fills (one per file: AuditLog serialises calls);
        # not for a path with a NUL in it (C would stop there; os.lstat raises ValueError)
        self._lstat = _LSTAT if b"\0" not in self._where else None
        # ``_at``: a pointer to ``_stat`` made once (``byref`` of a ctypes array over it,
        # which ctypes passes as it is: no argtypes, whose conversions cost +1.2k a call; no
        # int address, which C would take as a 32-bit int)
        self._stat = bytearray(_STAT_SIZE)  # (exported to ``_at``: never resized)
        self._at: object = None
        if self._lstat is not None:
            import ctypes

            self._at = ctypes.byref((ctypes.c_char * _STAT_SIZE).from_buffer(self._stat))

    def append(self, lines: Sequence[str]) -> int:
        """Write ``lines`` in order, one ``write`` each; return how many were written.

        On an OSError the count written so far is attached as ``written`` on the exception,
        so the caller can keep exactly the rest for the next try.
        """
        done = 0
        try:
            for line in lines:
                self.write_line(line.encode("utf-8"))
                done += 1
        except OSError as e:
            e.written = done  # type: ignore[attr-defined]
            raise
        return done

    def write_line(self, data: bytes) -> None:
        """Append one whole line or nothing (raises OSError; nothing of it stays behind).

        The path's ``stat`` is of the very inode the fd holds while nobody rotated the file
        (no ``fstat`` as well): ``_current`` inline for that case, two lines per request.
        libc's ``lstat`` first (``_LSTAT``, the fields read from its buffer); when it fails,
        or is not there, ``os.lstat`` as before (the same answer, or the same exception)."""
        fast = self._lstat
        if fast is not None and fast(self._where, self._at) == 0:
            dev, ino, size = _STAT_FIELDS.unpack_from(self._stat)
        else:
            try:
                st = os.lstat(self._where)  # (os.stat without following: no keyword to parse)
            except FileNotFoundError:
                dev = ino = size = -2  # no inode: to ``_current`` below
            else:
                # st[1], st[2], st[6]: st_ino, st_dev, st_size by their fixed places in the
                # tuple (os.stat_result's documented order; a named read is not specialised)
                dev, ino, size = st[2], st[1], st[6]
        # No fd open: ``_inode`` is -1, which no st_ino is (nor -2).
        if ino == self._inode and dev == self._dev:
            fd = self._fd
        else:
            fd, size = self._current()
        length = len(data)
        if size > 0 and size + length > self.max_bytes:
            self._rotate(fd)
            fd, size = self._current()
        written = os.write(fd, data)
        if written != length:
            self._short(fd, written)

    def _short(self, fd: int, written: int) -> None:
        """A line's write cut short: what of it was written is removed; raises OSError."""
        self._cut_back(fd, written)
        raise OSError(errno.ENOSPC, "short write to the audit log; the line was removed")

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._ino = -1, None
        self._dev = self._inode = -1

    # -- internals ------------------------------------------------------------------------
    def _current(self) -> tuple[int, int]:
        """The fd of the file the path names now (reopened after anyone's rotation), and
        that file's size: the path's ``stat`` is of the very inode the fd holds, so no
        ``fstat`` is needed as well (two records per proxied request)."""
        try:
            st = os.lstat(self._where)  # (os.stat without following: no keyword to parse)
        except FileNotFoundError:
            st = None
        known = self._ino
        if (st is not None and self._fd >= 0 and known is not None
                and st.st_ino == known[1] and st.st_dev == known[0]):
            return self._fd, st.st_size
        self.close()
        fd = self._open()
        st = os.fstat(fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        self._dev, self._inode = st.st_dev, st.st_ino
        return fd, st.st_size

    def _cut_back(self, fd: int, written: int) -> None:
        """Remove the ``written`` bytes of a line cut short (unless someone wrote after it)."""
        if written <= 0:
            return
        with contextlib.suppress(OSError):
            end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: just past our bytes
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, end - written)
                return
            # Someone appended after our fragment: end it, so it cannot swallow a line.
            os.write(fd, b"\n")

    def _open(self) -> int:
        fd = os.open(self.path, _OPEN_FLAGS, FILE_MODE)
        try:
            st = os.fstat(fd)
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                log.warning(
                    "audit log %s had mode %04o; tightening to %04o", self.path, mode, FILE_MODE
                )
                os.fchmod(fd, FILE_MODE)
            # End a line torn by a crash mid-write, so it cannot swallow ours.
            if st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n":
                os.write(fd, b"\n")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _rotate(self, fd: int) -> None:
        """``.N-1 -> .N`` ... ``.1 -> .2``, current -> ``.1`` (the oldest falls off), under
        an flock on the current file, unless another writer rotated it first."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            try:
                st = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                return  # rotated away (backups = 0) by another writer
            if (st.st_dev, st.st_ino) != self._ino or st.st_size == 0:
                return  # another writer rotated it meanwhile
            if self.backups == 0:
                os.unlink(self.path)
                return
            for index in range(self.backups - 1, 0, -1):
                older = rotated_path(self.path, index)
                if older.exists():
                    os.replace(older, rotated_path(self.path, index + 1))
            first = rotated_path(self.path, 1)
            os.replace(self.path, first)
            os.chmod(first, FILE_MODE)
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
