"""Follow ``audit.jsonl`` as it grows (``tail -F``): the live view of every process's records.

Every process of a run (the supervisor and each ``--workers`` process) appends its own
records to the one file (audit/jsonl_file.py), so reading the file is the one view that
sees them all, in the order they reached the disk, without a second delivery path that
could drift from the record of truth. A rotation (the path names a new inode) is followed:
the rest of the old file is read first, then the new one from its start.

Used by ``GET /v1/audit/stream`` (SSE) and by ``vaultproxy run``'s per-request lines.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 256 * 1024


class Follower:
    """New complete lines of ``path`` since the last call (from its end at creation)."""

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = Path(path)
        self._fd = -1
        self._ino: tuple[int, int] | None = None
        self._pending = b""
        self._open(at_end=not from_start)

    def _open(self, *, at_end: bool) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return  # not there yet: the next poll tries again (from its start)
        st = os.fstat(fd)
        self._fd, self._ino, self._pending = fd, (st.st_dev, st.st_ino), b""
        if at_end:
            os.lseek(fd, 0, os.SEEK_END)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read_all(self) -> bytes:
        out = b""
        while True:
            block = os.read(self._fd, _CHUNK)
            if not block:
                return out
            out += block

    def poll(self) -> list[str]:
        """The lines appended since the last poll (each without its newline)."""
        if self._fd < 0:
            self._open(at_end=False)
            if self._fd < 0:
                return []
        data = self._pending + self._read_all()
        try:
            st = os.stat(self.path)
            rotated = (st.st_dev, st.st_ino) != self._ino
        except OSError:
            rotated = False  # renamed away and not recreated yet: keep reading the old fd
        if rotated:
            self.close()
            self._open(at_end=False)
            if self._fd >= 0:
                data += b"" if data.endswith(b"\n") or not data else b"\n"
                data += self._read_all()
        lines = data.split(b"\n")
        self._pending = lines.pop()
        return [line.decode("utf-8", "replace") for line in lines if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        """``poll()`` decoded: the new records that are JSON objects."""
        out = []
        for line in self.poll():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def matches(record: dict[str, Any], service: str | None, agent: str | None) -> bool:
    """The ``--service`` / ``--agent`` filters of ``tail`` and the stream."""
    if service is not None and record.get("service") != service:
        return False
    return agent is None or record.get("agent") == agent
