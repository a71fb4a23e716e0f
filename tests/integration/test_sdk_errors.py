"""The agent sees *why*: vaultproxy's error text reaches the exception of the official SDKs.

Each SDK runs as an agent would, in its own process, with only ``HTTPS_PROXY`` and the CA
variables pointing at vaultproxy: the openai Python SDK, the anthropic Python SDK, and the
npm ``openai`` package (installed from the npm registry into this session's tmp dir; a
failed install fails the test). Before the error shape was an object, the openai SDKs
printed only "Error code: 503".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.canary import make_canary
from tests.harness.proxy import ProxyProcess
from tests.integration.conftest import service_block

pytestmark = pytest.mark.integration

LOCKED_TEXT = "the vaultproxy keystore is locked"
MISSING_TEXT = "keystore has no entry for service sdk-missing"

PY_OPENAI = """
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-placeholder", max_retries=0)
try:
    client.models.list()
except openai.APIStatusError as e:
    print(f"{type(e).__name__} {e.status_code}: {e}")
"""

PY_ANTHROPIC = """
import sys, anthropic
client = anthropic.Anthropic(base_url=sys.argv[1], api_key="sk-ant-placeholder", max_retries=0)
try:
    client.messages.create(model="claude-x", max_tokens=1,
                           messages=[{"role": "user", "content": "hi"}])
except anthropic.APIStatusError as e:
    print(f"{type(e).__name__} {e.status_code}: {e}")
"""

# Node 20's fetch ignores HTTPS_PROXY; undici's EnvHttpProxyAgent reads it (what a Node agent
# does), and NODE_EXTRA_CA_CERTS adds vaultproxy's CA to Node's roots.
NODE_OPENAI = """
const { EnvHttpProxyAgent } = require("undici");
const OpenAI = require("openai");
const client = new OpenAI({ baseURL: process.argv[2], apiKey: "sk-placeholder", maxRetries: 0,
                            fetchOptions: { dispatcher: new EnvHttpProxyAgent() } });
client.models.list().then(() => console.log("no error"), (e) => {
  console.log(`${e.constructor.name} ${e.status}: ${e.message}`);
});
"""


@pytest.fixture(scope="session")
def node_openai(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test-local node_modules with the npm `openai` package (and undici for the proxy)."""
    npm = shutil.which("npm")
    assert npm is not None, "npm is not installed (apt install npm)"
    d = tmp_path_factory.getbasetemp() / "npm-openai"
    if not (d / "node_modules" / "openai").is_dir():
        d.mkdir(exist_ok=True)
        (d / "package.json").write_text('{"name": "vp-sdk-test", "private": true}')
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "openai", "undici"],
                           cwd=d, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "npm_config_cache": str(d / ".npm-cache")})
        assert r.returncode == 0, f"npm install openai failed:\n{r.stdout}\n{r.stderr}"
    return d


def agent_env(proxy: ProxyProcess) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")}
    ca = str(proxy.home.ca_cert)
    return {**keep, "HTTPS_PROXY": proxy.url, "https_proxy": proxy.url, "SSL_CERT_FILE": ca,
            "NODE_EXTRA_CA_CERTS": ca}


@pytest.fixture(scope="module")
def locked(start_proxy, upstream) -> ProxyProcess:  # type: ignore[no-untyped-def]
    services = service_block("sdk-locked", "host_inject", "bearer", upstream.port)
    return start_proxy(services, {"sdk-locked": make_canary()}, locked=True)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def missing(start_proxy, upstream) -> ProxyProcess:  # type: ignore[no-untyped-def]
    services = service_block("sdk-missing", "host_inject", "bearer", upstream.port)
    return start_proxy(services, {})  # type: ignore[no-any-return]


def run_py(script: str, proxy: ProxyProcess, base_url: str) -> str:
    r = subprocess.run([sys.executable, "-c", script, base_url], capture_output=True,
                       text=True, timeout=60, env=agent_env(proxy))
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_openai_python_sdk_shows_the_locked_message(locked: ProxyProcess) -> None:
    out = run_py(PY_OPENAI, locked, "https://sdk-locked.api.test/v1")
    assert out.startswith("InternalServerError 503: Error code: 503"), out
    assert LOCKED_TEXT in out and "vaultproxy unlock" in out, out


def test_anthropic_python_sdk_shows_the_locked_message(locked: ProxyProcess) -> None:
    out = run_py(PY_ANTHROPIC, locked, "https://sdk-locked.api.test")
    assert "503" in out and LOCKED_TEXT in out, out


def test_openai_python_sdk_shows_a_missing_secret(missing: ProxyProcess) -> None:
    out = run_py(PY_OPENAI, missing, "https://sdk-missing.api.test/v1")
    assert "502" in out and MISSING_TEXT in out, out


def test_npm_openai_shows_the_locked_message(locked: ProxyProcess, node_openai: Path) -> None:
    script = node_openai / "agent.js"
    script.write_text(NODE_OPENAI)
    r = subprocess.run(["node", str(script), "https://sdk-locked.api.test/v1"],
                       capture_output=True, text=True, timeout=60, cwd=node_openai,
                       env=agent_env(locked))
    assert r.returncode == 0, r.stderr
    assert "InternalServerError 503" in r.stdout and LOCKED_TEXT in r.stdout, r.stdout


def test_without_the_ca_the_sdk_sees_only_a_connection_error(locked: ProxyProcess) -> None:
    """The negative twin: the message above came through vaultproxy's TLS, not from anywhere
    else -- an agent that does not trust the CA gets no vaultproxy text at all."""
    env = agent_env(locked)
    env.pop("SSL_CERT_FILE")
    script = PY_OPENAI.replace("except openai.APIStatusError", "except openai.APIError")
    script = script.replace("{e.status_code}", "{getattr(e, 'status_code', None)}")
    r = subprocess.run([sys.executable, "-c", script, "https://sdk-locked.api.test/v1"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert "APIConnectionError" in r.stdout and LOCKED_TEXT not in r.stdout, r.stdout


def test_post_proxy_gives_the_same_shape(locked: ProxyProcess) -> None:
    sock = locked.home.path / "admin.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                      base_url="http://localhost") as c:
        r = c.post("/proxy", json={"service": "sdk-locked", "method": "GET", "path": "/"})
    assert r.status_code == 503 and r.headers["X-Vaultproxy-Error"] == "locked"
    body = r.json()
    assert body["error"]["type"] == "vaultproxy_error" and body["error"]["code"] == "locked"
    assert LOCKED_TEXT in body["error"]["message"]
    assert json.dumps(body).count(LOCKED_TEXT) == 1
