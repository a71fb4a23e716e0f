"""Commands known to ignore ``HTTPS_PROXY``, detected cheaply before `exec` starts them.

Only a warning: under isolation such a client fails to connect (it cannot send anything
around the proxy), under ``--no-isolate`` it would talk to the real host directly with the
placeholder. docs/operator/AGENTS.md lists each runtime's behaviour. Today: Node older than
22.21, whose global ``fetch`` ignores both ``HTTPS_PROXY`` and ``NODE_USE_ENV_PROXY``
unless the program installs a proxy-aware dispatcher (which we cannot see from outside).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence

NODE_NAMES = ("node", "nodejs")
NODE_LAUNCHERS = ("npx", "npm", "pnpm", "yarn")  # run node programs with the `node` on PATH
NODE_ENV_PROXY_SINCE = (22, 21)
VERSION_TIMEOUT = 5.0
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int] | None:
    m = _VERSION_RE.match(text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def node_ignores_proxy(version: tuple[int, int]) -> bool:
    """Before 22.21, and all of 23 (NODE_USE_ENV_PROXY came with 24 and was backported to
    22.21 only)."""
    return version < NODE_ENV_PROXY_SINCE or version[0] == 23


def node_version(executable: str) -> tuple[int, int] | None:
    try:
        r = subprocess.run([executable, "--version"], capture_output=True, text=True,  # noqa: S603
                           timeout=VERSION_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(r.stdout) if r.returncode == 0 else None


def warning(argv: Sequence[str], path: str | None = None) -> str | None:
    """One line for stderr when ``argv`` starts a runtime that ignores the proxy, else None."""
    name = os.path.basename(argv[0]) if argv else ""
    if name not in NODE_NAMES + NODE_LAUNCHERS:
        return None
    exe = shutil.which(argv[0] if name in NODE_NAMES else "node", path=path)
    version = node_version(exe) if exe else None
    if version is None or not node_ignores_proxy(version):
        return None
    major, minor = version
    return (
        f"vaultproxy: warning: node {major}.{minor} ignores HTTPS_PROXY for fetch() "
        f"(Node >= 22.21 honours NODE_USE_ENV_PROXY=1): requests not sent through undici's "
        "EnvHttpProxyAgent will fail to connect; see docs/operator/AGENTS.md"
    )
