"""Read the newest audit records back: current file first, then ``.1``, ``.2`` ... as needed.

Files are read backwards in blocks, so ``tail(limit=100)`` on a 10 MB file reads only its
end. Lines that are not a JSON object (a torn write) are skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vaultproxy.audit.jsonl_file import rotated_path

_BLOCK = 64 * 1024


def read_tail(
    path: Path,
    *,
    backups: int,
    limit: int,
    since: str | None = None,
    service: str | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` records matching the filters, oldest first (newest last).

    ``since`` keeps records whose ``ts`` string is ``>= since`` (timestamps share one fixed
    format, so string order is time order); ``service`` keeps records of that service.
    """
    found: list[dict[str, Any]] = []
    if limit <= 0:
        return found
    for index in range(backups + 1):
        for record in _records_backwards(rotated_path(path, index)):
            if since is not None and str(record.get("ts", "")) < since:
                continue
            if service is not None and record.get("service") != service:
                continue
            found.append(record)
            if len(found) >= limit:
                found.reverse()
                return found
    found.reverse()
    return found


def _records_backwards(path: Path) -> Iterator[dict[str, Any]]:
    for raw in _lines_backwards(path):
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def _lines_backwards(path: Path) -> Iterator[bytes]:
    """The non-empty lines of ``path``, last first; nothing if the file does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        end = os.fstat(fd).st_size
        rest = b""
        while end > 0:
            start = max(0, end - _BLOCK)
            block = os.pread(fd, end - start, start) + rest
            end = start
            lines = block.split(b"\n")
            rest = lines.pop(0)  # may continue in the previous block
            for line in reversed(lines):
                if line.strip():
                    yield line
        if rest.strip():
            yield rest
    finally:
        os.close(fd)
