"""Agent identities end to end: `agent add/list/rm`, 407 without (valid) credentials when
required, 403 agent_scope before the upstream is contacted, the agent named in audit, and
Proxy-Authorization never reaching the upstream."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import REPO, ProxyHome, ProxyProcess, cli
from tests.harness.raw import recv_response
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block


def _connect(
    port: int, target: str, auth: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A raw CONNECT; returns (status, headers, body) of the proxy's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if auth is not None:
            head += f"Proxy-Authorization: {auth}\r\n"
        s.sendall((head + "\r\n").encode())
        return _read_response(s)


def _plain_get(port: int, url: str, auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        host = url.split("/")[2]
        head = f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        if auth is not None:
            head += f"Proxy-Authorization: {auth}\r\n"
        s.sendall((head + "\r\n").encode())
        return _read_response(s)


_read_response = recv_response



def basic(name: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()


class Env:
    def __init__(self, proxy: ProxyProcess, token: str, secrets: dict[str, str]) -> None:
        self.proxy = proxy
        self.token = token
        self.secrets = secrets

    def client(self, name: str = "bot", token: str | None = None) -> httpx.Client:
        url = self.proxy.url.replace("http://", f"http://{name}:{token or self.token}@")
        ctx = ssl.create_default_context(cafile=str(self.proxy.home.ca_cert))
        return httpx.Client(proxy=url, verify=ctx, timeout=20)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("agents")
    canary.watch(base)
    toml = "[proxy]\nrequire_agent_auth = true\n\n" + "".join(
        service_block(n, "host_inject", "bearer", upstream.port) for n in ("svc-a", "svc-b")
    )
    secrets = {"svc-a": make_canary(), "svc-b": make_canary()}
    home = ProxyHome.create(
        base, toml, secrets, files={"upstream-ca.pem": upstream.ca_file.read_bytes()}
    )
    pw = ("--password-file", str(home.password_file))
    added = cli(home.path, "agent", "add", "bot", "--services", "svc-a", *pw)
    token = added.stdout.strip()
    assert added.stdout == token + "\n"  # the token, alone on stdout
    cli(home.path, "agent", "add", "gone", "--services", "svc-a,svc-b", *pw)
    cli(home.path, "agent", "rm", "gone", *pw)
    proxy = ProxyProcess.start(home)
    yield Env(proxy, token, secrets)
    proxy.stop()


def test_agent_cli_add_list_rm(env: Env) -> None:
    home = env.proxy.home
    pw = ("--password-file", str(home.password_file))
    listed = cli(home.path, "agent", "list", *pw).stdout
    assert "bot" in listed and "svc-a" in listed
    assert "gone" not in listed
    assert env.token not in listed
    bad = cli(home.path, "agent", "add", "x", "--services", "svc-a,nope", *pw, check=False)
    assert bad.returncode == 2 and "nope" in bad.stderr
    again = cli(home.path, "agent", "add", "bot", "--services", "svc-a", *pw, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = cli(home.path, "agent", "rm", "nobody", *pw, check=False)
    assert missing.returncode == 1
    # Only a hash is stored: the token is nowhere in the home (the keystore is encrypted,
    # so also check the plaintext agent record via list output above).
    for p in home.path.rglob("*"):
        if p.is_file():
            assert env.token.encode() not in p.read_bytes(), p


def test_in_scope_agent_reaches_upstream_with_secret(env: Env, upstream: Upstream) -> None:
    with env.client() as c:
        r = c.get("https://svc-a.api.test/in-scope", headers={"Proxy-Authorization": "x"})
    assert r.status_code == 200, r.text
    rec = upstream.received[-1]
    assert rec.path == "/in-scope"
    assert rec.header("authorization") == f"Bearer {env.secrets['svc-a']}"
    assert "proxy-authorization" not in rec.header_names()
    assert env.token not in repr(rec.headers)


def test_out_of_scope_is_403_and_upstream_untouched(env: Env, upstream: Upstream) -> None:
    before = len(upstream.received)
    status, headers, body = _connect(env.proxy.port, "svc-b.api.test:443", basic("bot", env.token))
    assert status == 403
    assert headers["x-vaultproxy-error"] == "agent_scope"
    assert json.loads(body)["error"]["code"] == "agent_scope"
    with env.client() as c, pytest.raises(httpx.ProxyError):
        c.get("https://svc-b.api.test/out-of-scope")
    assert len(upstream.received) == before


@pytest.mark.parametrize(
    "auth",
    [None, basic("bot", "vpa_" + "A" * 43), basic("nobody", "vpa_" + "A" * 43), "Bearer x",
     "Basic !!!"],
    ids=["anonymous", "wrong-token", "unknown-agent", "not-basic", "garbage"],
)
def test_missing_or_wrong_credentials_get_407(
    env: Env, upstream: Upstream, auth: str | None
) -> None:
    before = len(upstream.received)
    status, headers, body = _connect(env.proxy.port, "svc-a.api.test:443", auth)
    assert status == 407
    assert headers["x-vaultproxy-error"] == "agent_auth_required"
    assert headers["proxy-authenticate"].lower().startswith("basic")
    assert json.loads(body)["error"]["code"] == "agent_auth_required"
    assert len(upstream.received) == before


def test_wrong_token_of_real_agent_is_refused(env: Env) -> None:
    # The real token with its last character changed: constant-time compare, still refused.
    last = "B" if env.token[-1] != "B" else "C"
    status, _h, _b = _connect(
        env.proxy.port, "svc-a.api.test:443", basic("bot", env.token[:-1] + last)
    )
    assert status == 407


def test_plain_http_requests_need_credentials_too(env: Env) -> None:
    status, headers, _b = _plain_get(env.proxy.port, "http://unregistered.invalid/x")
    assert status == 407
    assert "proxy-authenticate" in headers


def test_audit_names_the_agent(env: Env) -> None:
    with env.client() as c:
        assert c.get("https://svc-a.api.test/audited").status_code == 200
    _connect(env.proxy.port, "svc-b.api.test:443", basic("bot", env.token))
    events: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the audit log is flushed in the background
        events = env.proxy.audit()
        if any(e.get("path") == "/audited" for e in events) and any(
            e.get("reason") == "agent_scope" for e in events
        ):
            break
        time.sleep(0.1)
    ok = [e for e in events if e.get("path") == "/audited"]
    assert ok and ok[-1]["agent"] == "bot" and ok[-1]["service"] == "svc-a"
    refused = [e for e in events if e.get("reason") == "agent_scope"]
    assert refused and refused[-1]["agent"] == "bot"
    assert refused[-1]["service"] == "svc-b" and refused[-1]["event"] == "tunnel_refused"
    assert env.token not in json.dumps(events)


def test_exec_with_agent_token_file(env: Env, upstream: Upstream, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(env.token + "\n")
    home = env.proxy.home.path
    base = [sys.executable, "-m", "vaultproxy", "exec", "--home", str(home), "--agent", "bot"]
    ok = subprocess.run(
        [*base, "--token-file", str(token_file), "--", "curl", "-sS", "-o", "/dev/null",
         "-w", "%{http_code}", "https://svc-a.api.test/via-exec"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert ok.stdout == "200", ok.stderr
    assert upstream.received[-1].path == "/via-exec"
    assert upstream.received[-1].header("authorization") == f"Bearer {env.secrets['svc-a']}"
    # The same token from the environment; the variable itself is not passed to the command.
    seen = subprocess.run(
        [*base, "--", "env"], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "VAULTPROXY_AGENT_TOKEN": env.token,
             "VAULTPROXY_PASSWORD_FILE": "/nonexistent"},
    )
    assert seen.returncode == 0, seen.stderr
    names = {line.split("=", 1)[0] for line in seen.stdout.splitlines()}
    assert not {n for n in names if n.startswith("VAULTPROXY_")}
    assert f"HTTPS_PROXY=http://bot:{env.token}@127.0.0.1:{env.proxy.port}" in seen.stdout
    # No token anywhere: a clear error, nothing run.
    none = subprocess.run([*base, "--", "true"], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={"PATH": "/usr/bin:/bin"})
    assert none.returncode == 2 and "--token-file" in none.stderr
