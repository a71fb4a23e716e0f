"""Agent token lifetimes and rotation against a running proxy with two worker processes:
`agent add --ttl` applies at once and expires into 407 agent_token_expired (a wrong token
stays agent_auth_required), `agent rotate` ends the old token (also on a kept-alive
connection) and the new one works, `agent list` shows expiry, and each change is an
``admin`` audit record naming the agent and the caller, never the token."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import ProxyHome, ProxyProcess, cli
from tests.harness.raw import recv_response
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block

FRESH_CONNECTIONS = 8  # each a new CONNECT; SO_REUSEPORT spreads them over both workers
TTL = 6.0


def _basic(name: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()


def _connect_code(port: int, name: str, token: str) -> str | None:
    """The proxy's answer to one CONNECT: None for 200, else its error code."""
    target = "svc-a.api.test:443"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: "
                  f"{_basic(name, token)}\r\n\r\n".encode())
        status, headers, body = recv_response(s)
    if status == 200:
        return None
    code = json.loads(body)["error"]["code"]
    assert headers["x-vaultproxy-error"] == code
    if status == 407:
        assert headers["proxy-authenticate"].lower().startswith("basic")
    return str(code)


class Env:
    def __init__(self, proxy: ProxyProcess, secret: str) -> None:
        self.proxy = proxy
        self.secret = secret
        self.pw = ("--password-file", str(proxy.home.password_file))

    def agent(self, *args: str) -> str:
        return cli(self.proxy.home.path, "agent", *args, *self.pw).stdout

    def client(self, name: str, token: str) -> httpx.Client:
        url = self.proxy.url.replace("http://", f"http://{name}:{token}@")
        ctx = ssl.create_default_context(cafile=str(self.proxy.home.ca_cert))
        return httpx.Client(proxy=url, verify=ctx, timeout=20)

    def codes(self, name: str, token: str) -> set[str | None]:
        return {_connect_code(self.proxy.port, name, token) for _ in range(FRESH_CONNECTIONS)}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("agent-ttl")
    canary.watch(base)
    toml = "[proxy]\nrequire_agent_auth = true\n\n" + service_block(
        "svc-a", "host_inject", "bearer", upstream.port
    )
    secret = make_canary()
    home = ProxyHome.create(
        base, toml, {"svc-a": secret}, files={"upstream-ca.pem": upstream.ca_file.read_bytes()}
    )
    proxy = ProxyProcess.start(home, args=("--workers", "2"))
    assert proxy.extra.get("workers") == 2
    yield Env(proxy, secret)
    proxy.stop()


def test_short_ttl_expires_into_its_own_407(env: Env, upstream: Upstream) -> None:
    token = env.agent("add", "brief", "--services", "svc-a", "--ttl", f"{int(TTL)}s").strip()
    added = time.time()
    # Applied to the running proxy at once (no restart), in every worker.
    assert env.codes("brief", token) == {None}
    with env.client("brief", token) as c:
        r = c.get("https://svc-a.api.test/before-expiry")
    assert r.status_code == 200
    assert upstream.received[-1].header("authorization") == f"Bearer {env.secret}"
    listed = env.agent("list")
    row = next(line for line in listed.splitlines() if line.startswith("brief "))
    assert "EXPIRES" in listed and "(in 0m" in row
    time.sleep(max(0.0, added + TTL + 0.5 - time.time()))
    assert env.codes("brief", token) == {"agent_token_expired"}
    # Twin: a wrong token for the same agent is still "wrong", not "expired".
    assert env.codes("brief", "vpa_" + "A" * 43) == {"agent_auth_required"}
    assert "(expired)" in env.agent("list")
    before = len(upstream.received)
    with env.client("brief", token) as c, pytest.raises(httpx.ProxyError):
        c.get("https://svc-a.api.test/after-expiry")
    assert len(upstream.received) == before
    # Rotation brings an expired agent back with the same lifetime.
    fresh = env.agent("rotate", "brief").strip()
    assert env.codes("brief", fresh) == {None}


def test_rotate_ends_the_old_token_even_on_an_open_connection(
    env: Env, upstream: Upstream
) -> None:
    old = env.agent("add", "rot", "--services", "svc-a", "--ttl", "1h").strip()
    with env.client("rot", old) as kept:
        assert kept.get("https://svc-a.api.test/old-1").status_code == 200
        new = env.agent("rotate", "rot").strip()
        assert new != old and new.startswith("vpa_")
        before = len(upstream.received)
        # The same kept-alive tunnel: its next request is refused inside it.
        r = kept.get("https://svc-a.api.test/old-2")
        assert r.status_code == 407 and r.json()["error"]["code"] == "agent_auth_required"
        assert len(upstream.received) == before
    assert env.codes("rot", old) == {"agent_auth_required"}
    assert env.codes("rot", new) == {None}
    with env.client("rot", new) as c:
        assert c.get("https://svc-a.api.test/new").status_code == 200
    assert upstream.received[-1].path == "/new"
    row = next(line for line in env.agent("list").splitlines() if line.startswith("rot "))
    assert "(in 59m" in row or "(in 1h00m)" in row  # the same lifetime again, from now
    env.agent("rm", "rot")
    assert env.codes("rot", new) == {"agent_auth_required"}


def test_each_agent_change_is_audited_without_the_token(env: Env) -> None:
    token = env.agent("add", "audited", "--services", "svc-a", "--ttl", "never").strip()
    rotated = env.agent("rotate", "audited").strip()
    env.agent("rm", "audited")
    events = [e for e in env.proxy.audit()
              if e.get("event") == "admin" and e.get("agent") == "audited"]
    assert [e["reason"] for e in events] == ["agent_add", "agent_rotate", "agent_rm"]
    assert all(str(e["caller"]).startswith("cli:uid=") and e["outcome"] == "ok"
               for e in events)
    text = (env.proxy.home.path / "audit.jsonl").read_text()
    assert token not in text and rotated not in text


def test_bad_ttl_and_unknown_agent_are_clear_errors(env: Env) -> None:
    home = env.proxy.home.path
    bad = cli(home, "agent", "add", "x", "--services", "svc-a", "--ttl", "soon", *env.pw,
              check=False)
    assert bad.returncode == 2 and "--ttl" in bad.stderr and "24h" in bad.stderr
    assert bad.stdout == ""
    missing = cli(home, "agent", "rotate", "nobody", *env.pw, check=False)
    assert missing.returncode == 1 and "no agent named nobody" in missing.stderr
    assert missing.stdout == ""
