"""A real third-party MCP server from PyPI (``mcp-server-fetch``, installed into a
test-local venv) launched from `vaultproxy mcp config`'s entry under `vaultproxy exec`: its
outbound HTTPS goes through the proxy and gets the injected credential, the credential it
reflects comes back redacted, and it holds no secret."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests import canary
from tests.harness.proxy import REPO, ProxyProcess, cli
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block
from tests.integration.test_mcp import reflect, texts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Not under /tmp: `exec` gives the server a private /tmp. Kept between runs (pip is slow).
VENV = REPO / ".test-venvs" / "mcp-server-fetch"


def fetch_server() -> Path:
    exe = VENV / "bin" / "mcp-server-fetch"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "mcp-server-fetch"],
                       check=True, timeout=600, capture_output=True)
    return exe


@pytest.fixture(scope="module")
def proxy(start_proxy: Any, upstream: Upstream) -> Iterator[tuple[ProxyProcess, str]]:
    exe = fetch_server()
    upstream.handler = reflect
    secret = canary.make_canary()
    toml = (service_block("ai", "host_inject", "bearer", upstream.port)
            + "[[mcp_server]]\nname = \"fetch\"\n"
            + f"command = [{json.dumps(str(exe))}, \"--ignore-robots-txt\"]\n")
    yield start_proxy(toml, {"ai": secret}), secret


def test_mcp_server_fetch_under_exec_gets_the_credential(
        proxy: tuple[ProxyProcess, str], upstream: Upstream) -> None:
    proc, secret = proxy
    entry = json.loads(cli(proc.home.path, "mcp", "config").stdout)["mcpServers"]["fetch"]
    assert entry["args"][0] == "exec" and "--no-isolate" not in entry["args"]
    params = StdioServerParameters(command=entry["command"], args=entry["args"],
                                   env={"PATH": os.environ.get("PATH", "")}, cwd=str(REPO))

    async def go() -> Any:
        async with stdio_client(params) as streams, \
                ClientSession(streams[0], streams[1], read_timeout_seconds=60) as s:
            await s.initialize()
            return await s.call_tool("fetch", {"url": "https://ai.api.test/fetched",
                                               "raw": True})
    result = asyncio.run(go())
    out = texts(result)
    assert not result.is_error, out
    assert "Bearer __vault.ai__" in out  # the reflected credential, redacted
    seen = [r for r in upstream.received if r.path == "/fetched"][-1]
    assert seen.header("authorization") == f"Bearer {secret}"
    assert secret not in out
