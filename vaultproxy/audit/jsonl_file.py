"""The ``audit.jsonl`` file layer: 0600, O_APPEND, size-based rotation to ``.1`` ... ``.N``.

Not thread-safe by itself; ``AuditLog`` serialises every call behind one lock.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


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
        self.max_bytes = max_bytes
        self.backups = backups

    def append(self, lines: Sequence[str]) -> int:
        """Write ``lines`` in order; return how many were written (all, unless an OSError).

        On an OSError the count written so far is attached as ``written`` on the exception,
        so the caller can keep exactly the rest for the next try.
        """
        done = 0
        try:
            while done < len(lines):
                done += self._append_some(lines[done:])
        except OSError as e:
            e.written = done  # type: ignore[attr-defined]
            raise
        return done

    def _append_some(self, lines: Sequence[str]) -> int:
        """Fill the current file as far as it goes (rotating first if needed)."""
        fd = self._open()
        try:
            size = os.fstat(fd).st_size
            first = lines[0].encode("utf-8")
            if size > 0 and size + len(first) > self.max_bytes:
                os.close(fd)
                fd = -1
                self._rotate()
                fd = self._open()
                size = 0
            # End a line torn by an earlier failed write, so it cannot swallow ours.
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            chunk = [first]
            size += len(first)
            for line in lines[1:]:
                data = line.encode("utf-8")
                if size + len(data) > self.max_bytes:
                    break
                chunk.append(data)
                size += len(data)
            _write_all(fd, (b"\n" if torn else b"") + b"".join(chunk))
            return len(chunk)
        finally:
            if fd >= 0:
                os.close(fd)

    def _open(self) -> int:
        fd = os.open(self.path, _OPEN_FLAGS, FILE_MODE)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                log.warning(
                    "audit log %s had mode %04o; tightening to %04o", self.path, mode, FILE_MODE
                )
                os.fchmod(fd, FILE_MODE)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _rotate(self) -> None:
        """``.N-1 -> .N`` ... ``.1 -> .2``, current -> ``.1`` (the oldest falls off)."""
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
