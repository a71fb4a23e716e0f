"""Which inherited environment variables hold a stored secret (SPEC §7), and what an agent
gets instead: the value with each secret swapped for its placeholder, or nothing.

Pure: the caller (the admin route ``POST /v1/agent-env``, run by the proxy, which holds the
secrets anyway) passes the secrets in; `vaultproxy exec`/`env` send candidate values and
never hold a secret value themselves. A value is swapped only when *every* secret in it
belongs to a placeholder-mode service (the tool reading the variable then works through the
proxy, as Anthropic's sandbox-runtime masks credentials); any other secret in it (a
host_inject service's, an agent token, the admin token) drops the variable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vaultproxy.access.agents import TOKEN_RE

MIN_SECRET_LEN = 4  # as the redactor: shorter values would match ordinary text


@dataclass(frozen=True)
class Known:
    """One stored secret value and the placeholder that stands for it (None: none may)."""

    value: str
    placeholder: str | None

    def __repr__(self) -> str:
        return f"Known(placeholder={self.placeholder!r})"


@dataclass(frozen=True)
class Verdict:
    swap: dict[str, str]  # name -> the value with every secret replaced by its placeholder
    drop: tuple[str, ...]

    def __repr__(self) -> str:
        return f"Verdict(swap={sorted(self.swap)!r}, drop={list(self.drop)!r})"


def known_secrets(pairs: Iterable[tuple[str, str | None]]) -> list[Known]:
    """Distinct secrets, longest first (so a secret containing another is swapped whole); a
    value both with and without a placeholder counts as without (it is then dropped)."""
    out: dict[str, str | None] = {}
    for value, placeholder in pairs:
        if len(value) < MIN_SECRET_LEN:
            continue
        if value in out and out[value] != placeholder:
            out[value] = None
        else:
            out[value] = placeholder
    return [Known(v, p) for v, p in sorted(out.items(), key=lambda kv: -len(kv[0]))]


class _Table:
    def __init__(self, found: list[Known]) -> None:
        self.table = {k.value: k.placeholder or "" for k in found}

    def __call__(self, m: re.Match[str]) -> str:
        return self.table[m.group(0)]


def check(values: Mapping[str, str], secrets: list[Known]) -> Verdict:
    swap: dict[str, str] = {}
    drop: list[str] = []
    for name, value in values.items():
        found = [k for k in secrets if k.value in value]
        if TOKEN_RE.search(value) or any(k.placeholder is None for k in found):
            drop.append(name)
        elif found:
            pattern = re.compile("|".join(re.escape(k.value) for k in found))
            swap[name] = pattern.sub(_Table(found), value)
    return Verdict(swap, tuple(drop))
