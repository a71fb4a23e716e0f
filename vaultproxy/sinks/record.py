"""What a sink queues: one audit record as written to ``audit.jsonl`` and the pid of the
process that made it (the supervisor, or the ``--workers`` process that sent it)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Record:
    line: str  # the JSON object, no trailing newline
    pid: int

    @classmethod
    def of(cls, line: str, pid: int | None = None) -> Record:
        return cls(line.rstrip("\n"), os.getpid() if pid is None else pid)

    def fields(self) -> dict[str, Any]:
        """The record as a dict ({} if it does not parse: it is still forwarded verbatim).
        Parsed once, in the first sender thread that asks; callers must not change it."""
        return self._fields

    @cached_property
    def _fields(self) -> dict[str, Any]:
        try:
            data = json.loads(self.line)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
