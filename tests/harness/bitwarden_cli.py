"""The official Bitwarden CLI (``@bitwarden/cli`` from npm), the oracle of the Bitwarden tests.

Installed once per version into a cache directory (``$VAULTPROXY_TEST_CACHE``, default
``~/.cache/vaultproxy-tests``) with npm; a missing node/npm fails the tests that need it
with the fix (CI installs both in .ci/run). Each :class:`BwCli` has its own data directory
and talks only to the test server, trusting its CA via ``NODE_EXTRA_CA_CERTS``. Secrets
(the master password, item JSON) go through the environment and stdin, never argv.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Pinned: 2026.6.0 is the newest release that still runs on Node 20 (Debian's nodejs);
# 2026.7.0 on declare engines node ~22.
BW_CLI_VERSION = "2026.6.0"


def cache_dir() -> Path:
    root = os.environ.get("VAULTPROXY_TEST_CACHE") or str(Path.home() / ".cache/vaultproxy-tests")
    return Path(root)


def _npm_env(npm: str) -> dict[str, str]:
    """tests/conftest.py clears NODE_EXTRA_CA_CERTS for every test; npm may need it to reach
    its registry (a TLS-inspecting network): npm's own ``cafile``, else the system bundle."""
    env = dict(os.environ)
    cafile = subprocess.run([npm, "config", "get", "cafile"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL).stdout.strip()
    for candidate in (cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and candidate not in ("null", "undefined") and Path(candidate).is_file():
            env["NODE_EXTRA_CA_CERTS"] = candidate
            break
    return env


def install_cli() -> Path:
    """The path of ``bw.js`` for BW_CLI_VERSION, installed with npm on first use."""
    target = cache_dir() / f"bitwarden-cli-{BW_CLI_VERSION}"
    bw_js = target / "node_modules/@bitwarden/cli/build/bw.js"
    if bw_js.is_file():
        return bw_js
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail(
            "the Bitwarden tests need node and npm to install the official Bitwarden CLI "
            "(apt-get install nodejs npm; .ci/run does)", pytrace=False,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="bw-cli-", dir=target.parent))
    result = subprocess.run(
        [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--ignore-scripts",
         "--no-save", "--loglevel=error", f"@bitwarden/cli@{BW_CLI_VERSION}"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env=_npm_env(npm),
    )  # fmt: skip
    installed = staging / "node_modules/@bitwarden/cli/build/bw.js"
    if result.returncode != 0 or not installed.is_file():
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"npm install @bitwarden/cli@{BW_CLI_VERSION} failed:\n{result.stderr[-2000:]}",
                    pytrace=False)
    try:
        staging.rename(target)  # atomic; a concurrent run that won keeps its copy
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return bw_js


class BwCli:
    """One CLI "installation": its own data dir, configured for ``server_url``."""

    def __init__(self, bw_js: Path, home: Path, server_url: str, ca_file: Path) -> None:
        self.bw_js = bw_js
        self.home = home
        self.session: str | None = None
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "BITWARDENCLI_APPDATA_DIR": str(home / "bw-data"),
            "NODE_EXTRA_CA_CERTS": str(ca_file),
            "BW_NOINTERACTION": "true",
        }
        self.run("config", "server", server_url)

    def run(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        full = {**self.env, **(env or {})}
        if self.session:
            full["BW_SESSION"] = self.session
        result = subprocess.run(
            ["node", str(self.bw_js), *args, "--nointeraction"], env=full, input=stdin,
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"bw {args[0]} {args[1] if len(args) > 1 else ''} failed "
                                 f"({result.returncode}): {result.stderr[-1500:]}")
        return result

    def login(self, email: str, password: str) -> None:
        result = self.run("login", email, "--passwordenv", "BW_PASSWORD", "--raw",
                          env={"BW_PASSWORD": password})
        self.session = result.stdout.strip().splitlines()[-1]

    def unlock(self, password: str) -> None:
        """``bw lock`` then ``bw unlock``: a fresh session key from the master password."""
        self.run("lock")
        self.session = None
        result = self.run("unlock", "--passwordenv", "BW_PASSWORD", "--raw",
                          env={"BW_PASSWORD": password})
        self.session = result.stdout.strip().splitlines()[-1]

    def create(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        encoded = base64.b64encode(json.dumps(obj).encode()).decode()
        out: dict[str, Any] = json.loads(self.run("create", kind, stdin=encoded).stdout)
        return out
