"""What an agent inherits from the environment `vaultproxy exec`/`env` was started in (SPEC §7).

An allowlist, in every mode: the names below, ``LC_*``, and what the operator keeps with
``--keep-env NAME`` / ``[agent] keep_env``. A denylist ("strip what looks like a token")
misses the next spelling; an allowlist passes only what a tool needs to run in a terminal.

Then no value holding a stored secret passes, kept or not: the running proxy is asked
(``POST /v1/agent-env`` over admin.sock, vaultproxy/admin/env_routes.py) which variables
hold one. A secret of a placeholder-mode service is swapped for its placeholder (the tool
reading the variable keeps working, through the proxy); any other drops the variable. A
warning names each variable, never its value. This process never holds a secret value.

When the proxy cannot answer (locked, or no admin.sock), only the built-in names pass
(unchecked: none of them is where a credential lives) and the kept ones are dropped, with a
warning naming them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vaultproxy.cli import control
from vaultproxy.errors import UsageError, VaultproxyError
from vaultproxy.files.home import Home

PASSED = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "COLORTERM", "LANG", "TZ",
          "TMPDIR", "EDITOR", "VISUAL", "PAGER", "NO_COLOR", "FORCE_COLOR", "CI")
PASSED_PREFIXES = ("LC_",)
# Never passed, kept or not: ours (password file, agent token, home) and proxy settings that
# would route around the ones we set.
NEVER_PREFIXES = ("VAULTPROXY_",)
NEVER = frozenset({"ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"})
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Inherited:
    env: dict[str, str]
    swapped: list[str] = field(default_factory=list)  # held a secret: placeholder instead
    dropped: list[str] = field(default_factory=list)  # held a secret: not passed
    unchecked: bool = False  # the proxy could not check: kept names were dropped


def check_keep(names: Iterable[str]) -> tuple[str, ...]:
    out = []
    for name in names:
        if not NAME_RE.fullmatch(name):
            raise UsageError(f"--keep-env {name!r}: not an environment variable name")
        if name.startswith(NEVER_PREFIXES) or name in NEVER:
            raise UsageError(f"--keep-env {name}: vaultproxy never passes {name} to an agent "
                             "(it would carry vaultproxy's own secrets or route around the "
                             "proxy)")
        out.append(name)
    return tuple(dict.fromkeys(out))


def passes(name: str, keep: Iterable[str] = ()) -> bool:
    return name in PASSED or name.startswith(PASSED_PREFIXES) or name in keep


def ask_proxy(home: Home, values: Mapping[str, str]) -> tuple[dict[str, str], list[str]] | None:
    """(swap, drop) from the running proxy, or None when it cannot answer."""
    try:
        status, data = control.call(home, "POST", "/v1/agent-env",
                                    json.dumps({"env": dict(values)}).encode())
    except VaultproxyError:
        return None
    if status != 200 or not isinstance(data, dict):
        return None
    swap = data.get("swap")
    drop = data.get("drop")
    if not isinstance(swap, dict) or not isinstance(drop, list):
        return None
    return {str(k): str(v) for k, v in swap.items()}, [str(d) for d in drop]


def inherit(home: Home, base: Mapping[str, str], keep: Iterable[str],
            warn: Callable[[str], None]) -> Inherited:
    keep = tuple(keep)
    candidates = {k: v for k, v in base.items()
                  if not k.startswith(NEVER_PREFIXES) and k not in NEVER}
    answer = ask_proxy(home, candidates)
    if answer is None:
        kept = [k for k in keep if k in candidates and not passes(k)]
        if kept:
            warn(f"the proxy could not check the environment for stored secrets (locked or "
                 f"not reachable over admin.sock): not passing {', '.join(kept)}")
        return Inherited({k: v for k, v in candidates.items() if passes(k)}, unchecked=True)
    swap, drop = answer
    out = Inherited({k: v for k, v in candidates.items() if passes(k, keep) and k not in drop})
    for name in sorted(swap):
        if name in candidates:
            out.env[name] = swap[name]
            out.swapped.append(name)
            warn(f"${name} holds a stored secret: the agent gets its placeholder instead")
    for name in sorted(set(drop) & set(candidates)):
        out.dropped.append(name)
        warn(f"${name} holds a stored secret: not passed to the agent")
    return out
