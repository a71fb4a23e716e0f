"""The MCP server (SPEC §11) with the SDK's own client (``ClientSession`` over the SDK's
streamable HTTP transport) against a real ``vaultproxy run``: every tool called, the
upstream's view asserted, and every tool result fed to the canary check."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests import canary
from tests.harness.proxy import REPO, ProxyProcess, cli
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import service_block

pytestmark = pytest.mark.integration

RESERVED = "https://vaultproxy.internal/mcp"
PROBE = Path(__file__).parents[1] / "harness" / "mcp_probe_server.py"


def reflect(rec: Received) -> Reply:
    """Echo what arrived, credential included: the tool result must show it redacted."""
    body = json.dumps({"path": rec.path, "query": rec.query,
                       "authorization": rec.header("authorization"),
                       "body": rec.body.decode("utf-8", "replace")}).encode()
    if rec.path.startswith("/big"):
        body = b"x" * (1024 * 1024 + 10)
    return 200, [(b"content-type", b"application/json"), (b"x-echo", b"yes")], [body]


@dataclass
class Env:
    proxy: ProxyProcess
    upstream: Upstream
    secrets: dict[str, str]
    agent_token: str

    @property
    def admin_url(self) -> str:
        return str(self.proxy.extra["admin_url"]) + "/mcp"

    def admin_token(self) -> str:
        return (self.proxy.home.path / "admin-token").read_text().strip()

    def audit(self) -> list[dict[str, Any]]:
        return self.proxy.audit()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def env(start_proxy: Any, upstream: Upstream) -> Iterator[Env]:
    upstream.handler = reflect
    secrets = {"ai": canary.make_canary(), "other": canary.make_canary(),
               "ph": canary.make_canary()}
    rules = '[{ method = "POST", path = "/hold/*", action = "approve" }]'
    toml = ("# the operator's comment\n[approvals]\nhold_seconds = 20\ngrant_seconds = 0\n\n"
            + service_block("ai", "host_inject", "bearer", upstream.port, rules=rules)
            + service_block("other", "host_inject", "bearer", upstream.port)
            + service_block("ph", "placeholder", "bearer", upstream.port)
            + "[[honeytoken]]\nname = \"decoy\"\n\n"
            + "[[mcp_server]]\nname = \"probe\"\n"
            + f"command = [{json.dumps(sys.executable)}, {json.dumps(str(PROBE))}]\n"
            + 'env = { PROBE_TOKEN = "__vault.ph__" }\n')
    proxy = start_proxy(toml, secrets)
    home = proxy.home
    added = cli(home.path, "agent", "add", "bot", "--services", "ai",
                "--password-file", str(home.password_file))
    token = added.stdout.strip()
    cli(home.path, "reload")
    yield Env(proxy, upstream, secrets, token)


def texts(result: Any) -> str:
    out = "".join(getattr(c, "text", "") for c in result.content)
    canary.scan_text("MCP tool result", out.encode())
    return out


async def scan_notification(message: Any) -> None:
    """Every notification the server sends goes to the canary check too."""
    canary.scan_text("MCP notification", repr(message).encode())


@asynccontextmanager
async def session(url: str, bearer: str, **kw: Any) -> AsyncIterator[ClientSession]:
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"},
                                timeout=httpx2.Timeout(30, read=60))
    async with client, streamable_http_client(
            url, http_client=client, max_sse_event_size=4 << 20) as streams:
        kw.setdefault("message_handler", scan_notification)
        async with ClientSession(streams[0], streams[1], **kw) as s:
            await s.initialize()
            yield s


def run(coro: Any) -> Any:
    return asyncio.run(coro)


TOOLS = {"list_services", "http_request", "whoami", "recent_activity", "approval_status",
         "request_access", "store_secret"}


def test_tools_listed_with_descriptions(env: Env) -> None:
    async def go() -> Any:
        async with session(env.admin_url, env.admin_token()) as s:
            return await s.list_tools()
    tools = run(go()).tools
    assert {t.name for t in tools} == TOOLS
    for t in tools:
        assert t.description and len(t.description) > 80, t.name
        assert "never" in t.description.lower(), t.name  # what it never returns


def test_http_request_injects_and_redacts(env: Env) -> None:
    async def go() -> Any:
        async with session(env.admin_url, f"bot:{env.agent_token}") as s:
            return await s.call_tool("http_request", {
                "service": "ai", "method": "POST", "path": "/v1/x", "query": {"q": "1"},
                "body": {"hello": "world"}})
    result = run(go())
    assert not result.is_error, texts(result)
    out = json.loads(texts(result))
    assert out["status"] == 200 and out["truncated"] is False
    assert out["headers"]["x-echo"] == "yes"
    echoed = json.loads(out["body"])
    # the upstream got the real credential ...
    seen = [r for r in env.upstream.received if r.path.startswith("/v1/x")][-1]
    assert seen.header("authorization") == f"Bearer {env.secrets['ai']}"
    assert seen.query == "q=1" and json.loads(seen.body) == {"hello": "world"}
    # ... and the model got the placeholder back instead of it
    assert echoed["authorization"] == "Bearer __vault.ai__"
    assert env.secrets["ai"] not in json.dumps(out)
    records = [r for r in env.audit() if r.get("path") == "/v1/x" and r["event"] == "request"]
    assert records and records[-1]["via"] == "mcp" and records[-1]["agent"] == "bot"
    assert records[-1]["outcome"] == "injected"


def test_negative_twin_plain_upstream_reflects_secret(env: Env) -> None:
    """Without the response gate the reflected body does carry the secret: the probe is
    real (the upstream echoes the credential it received)."""
    rec = Received("GET", "/v1/x", "", [("authorization", f"Bearer {env.secrets['ai']}")],
                   b"", "1.1")
    _, _, chunks = reflect(rec)
    assert env.secrets["ai"].encode() in b"".join(chunks)


def test_big_body_truncated_and_flagged(env: Env) -> None:
    async def go() -> Any:
        async with session(env.admin_url, env.admin_token()) as s:
            return await s.call_tool("http_request", {"service": "ai", "path": "/big"})
    out = json.loads(texts(run(go())))
    assert out["truncated"] is True and len(out["body"]) == 1024 * 1024


def test_out_of_scope_service_refused(env: Env) -> None:
    before = len(env.upstream.received)

    async def go() -> Any:
        async with session(env.admin_url, f"bot:{env.agent_token}") as s:
            listed = await s.call_tool("list_services", {})
            refused = await s.call_tool("http_request", {"service": "other", "path": "/o"})
            return listed, refused
    listed, refused = run(go())
    names = [s["name"] for s in json.loads(texts(listed))["services"]]
    assert names == ["ai"]
    assert refused.is_error and "agent_scope" in texts(refused)
    assert len(env.upstream.received) == before  # nothing left for the upstream
    # the twin: the operator may use it
    async def twin() -> Any:
        async with session(env.admin_url, env.admin_token()) as s:
            return await s.call_tool("http_request", {"service": "other", "path": "/o"})
    assert json.loads(texts(run(twin())))["status"] == 200


def test_bad_bearer_refused(env: Env) -> None:
    for auth in (None, "Bearer nope", f"Bearer bot:{env.agent_token}x",
                 f"Bearer ghost:{env.agent_token}", f"Basic bot:{env.agent_token}"):
        r = httpx.post(env.admin_url, headers={"Authorization": auth} if auth else {},
                       json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
    # the relay header alone proves nothing: only with the admin token (the proxy's relay)
    r = httpx.post(env.admin_url, headers={"X-Vaultproxy-Mcp-Agent": "bot"},
                   json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401
    r = httpx.post(env.admin_url, headers={"X-Vaultproxy-Mcp-Agent": "ghost",
                                           "Authorization": f"Bearer {env.admin_token()}"},
                   json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401  # an agent the keystore does not know


def test_whoami_and_recent_activity(env: Env) -> None:
    async def go() -> Any:
        async with session(env.admin_url, f"bot:{env.agent_token}") as s:
            await s.call_tool("http_request", {"service": "ai", "path": "/seen"})
            return (await s.call_tool("whoami", {}),
                    await s.call_tool("recent_activity", {"limit": 5}))
    who, recent = run(go())
    assert json.loads(texts(who)) == {"agent": "bot", "operator": False, "scopes": ["ai"],
                                      "locked": False}
    records = json.loads(texts(recent))["records"]
    assert records and records[-1]["path"] == "/seen" and records[-1]["via"] == "mcp"
    # its own records only: its refused call to "other" yes, the operator's 200 there no
    assert not any(r["service"] == "other" and r["status"] == 200 for r in records)


def test_approve_rule_holds_until_approved(env: Env) -> None:
    admin = str(env.proxy.extra["admin_url"])
    headers = {"Authorization": f"Bearer {env.admin_token()}"}
    result: dict[str, Any] = {}

    def call() -> None:
        async def go() -> Any:
            async with session(env.admin_url, f"bot:{env.agent_token}") as s:
                result["held"] = await s.call_tool(
                    "http_request", {"service": "ai", "method": "POST", "path": "/hold/1"})
                pending = [a for a in httpx.get(admin + "/v1/approvals",
                                                headers=headers).json()["approvals"]]
                result["status"] = await s.call_tool("approval_status",
                                                     {"id": pending[-1]["id"]})
        run(go())

    before = len(env.upstream.received)
    t = threading.Thread(target=call)
    t.start()
    approval = None
    for _ in range(100):
        listed = httpx.get(admin + "/v1/approvals", headers=headers).json()["approvals"]
        approval = next((a for a in listed if a["state"] == "pending"), None)
        if approval:
            break
        time.sleep(0.1)
    assert approval is not None and approval["via"] == "mcp" and approval["agent"] == "bot"
    assert len(env.upstream.received) == before  # held: nothing sent yet
    r = httpx.post(admin + f"/v1/approvals/{approval['id']}", headers=headers,
                   json={"decision": "approve"})
    assert r.status_code == 200
    t.join(30)
    assert json.loads(texts(result["held"]))["status"] == 200
    assert env.upstream.received[-1].path == "/hold/1"
    status = json.loads(texts(result["status"]))
    assert status["state"] == "approved" and status["id"] == approval["id"]


def test_store_secret_is_a_url_elicitation(env: Env) -> None:
    asked: list[Any] = []

    async def on_elicit(context: Any, params: Any) -> Any:
        asked.append(params)
        return types.ElicitResult(action="accept")

    async def go() -> Any:
        async with session(env.admin_url, f"bot:{env.agent_token}",
                           elicitation_callback=on_elicit) as s:
            return await s.call_tool("store_secret", {"name": "newapi",
                                                      "reason": "to call newapi"})
    out = json.loads(texts(run(go())))
    assert out["action"] == "accept" and out["name"] == "newapi"
    assert len(asked) == 1 and asked[0].mode == "url"
    assert asked[0].url == out["url"] == "http://127.0.0.1:3202/secrets?name=newapi"
    canary.scan_text("elicitation", repr(asked).encode())

    async def unsupported() -> Any:  # a client without elicitation still learns the URL
        async with session(env.admin_url, env.admin_token()) as s:
            return await s.call_tool("store_secret", {"name": "newapi", "reason": "x"})
    out = json.loads(texts(run(unsupported())))
    assert out["action"] == "unsupported" and out["url"].endswith("/secrets?name=newapi")


def test_request_access_registers_service_when_approved(env: Env) -> None:
    admin = str(env.proxy.extra["admin_url"])
    headers = {"Authorization": f"Bearer {env.admin_token()}"}

    async def ask(host: str) -> Any:
        async with session(env.admin_url, f"bot:{env.agent_token}") as s:
            return await s.call_tool("request_access", {"host": host,
                                                        "reason": "the weather API"})
    proposal = json.loads(texts(run(ask("weather.example.org"))))
    assert proposal["state"] == "pending" and proposal["service"] == "weather-example-org"
    services = env.proxy.home.path / "services.toml"
    assert "weather.example.org" not in services.read_text()  # nothing before approval
    r = httpx.post(admin + f"/v1/approvals/{proposal['id']}", headers=headers,
                   json={"decision": "approve"})
    assert r.status_code == 200
    for _ in range(100):
        if "weather.example.org" in services.read_text():
            break
        time.sleep(0.05)
    text = services.read_text()
    assert 'name = "weather-example-org"' in text
    assert text.startswith("# the operator's comment\n")  # the comment-preserving editor
    listed = httpx.get(admin + "/v1/services", headers=headers).json()["services"]
    new = next(s for s in listed if s["name"] == "weather-example-org")
    assert new["hosts"] == ["weather.example.org"] and new["secret_present"] is False
    # refused: a bad host, and one that is already registered
    bad = run(ask("https://x/y"))
    assert bad.is_error and "invalid_request" in texts(bad)
    dup = run(ask("ai.api.test"))
    assert dup.is_error and "service_exists" in texts(dup)



def test_stdio_server_through_admin_sock(env: Env) -> None:
    """`vaultproxy mcp` launched by the SDK's stdio client: the same tools, the same
    pipeline (a same-uid admin.sock peer is the operator)."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vaultproxy", "mcp", "--home",
                                      str(env.proxy.home.path)],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}, cwd=str(REPO))

    async def go() -> Any:
        async with stdio_client(params) as streams, \
                ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            tools = await s.list_tools()
            who = await s.call_tool("whoami", {})
            got = await s.call_tool("http_request", {"service": "ai", "path": "/stdio"})
            return tools, who, got
    tools, who, got = run(go())
    assert {t.name for t in tools.tools} == TOOLS
    assert json.loads(texts(who))["operator"] is True
    out = json.loads(texts(got))
    assert out["status"] == 200
    assert json.loads(out["body"])["authorization"] == "Bearer __vault.ai__"
    assert env.upstream.received[-1].header("authorization") == f"Bearer {env.secrets['ai']}"
    rec = [r for r in env.audit() if r.get("path") == "/stdio" and r["event"] == "request"]
    assert rec and rec[-1]["via"] == "mcp"


def test_stdio_without_a_proxy_says_how(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "vaultproxy", "mcp", "--home", str(tmp_path)],
                       capture_output=True, text=True, timeout=30, cwd=REPO,
                       env={"PATH": os.environ.get("PATH", "")}, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "vaultproxy run" in r.stderr and "Traceback" not in r.stderr


def agent_proxy_url(env: Env, name: str = "bot", token: str | None = None) -> str:
    return env.proxy.url.replace("http://", f"http://{name}:{token or env.agent_token}@")


def test_reserved_host_through_the_proxy(env: Env) -> None:
    """https://vaultproxy.internal/mcp through the proxy, with the agent's proxy
    credentials as its identity (the name resolves nowhere: the proxy answers it)."""
    ca = ssl.create_default_context(cafile=str(env.proxy.home.ca_cert))

    async def go(proxy: str) -> Any:
        client = httpx2.AsyncClient(proxy=proxy, verify=ca, trust_env=False,
                                    timeout=httpx2.Timeout(30, read=60))
        async with client, streamable_http_client(RESERVED, http_client=client) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                await s.initialize()
                who = await s.call_tool("whoami", {})
                got = await s.call_tool("http_request", {"service": "ai", "path": "/via-res"})
                refused = await s.call_tool("http_request", {"service": "other", "path": "/r"})
                stored = await s.call_tool("store_secret", {"name": "k", "reason": "r"})
                return who, got, refused, stored
    who, got, refused, stored = run(go(agent_proxy_url(env)))
    # the relay answers whole: store_secret hands out the URL instead of eliciting
    assert json.loads(texts(stored))["action"] == "open_url"
    assert json.loads(texts(who))["agent"] == "bot"
    out = json.loads(texts(got))
    assert out["status"] == 200
    assert json.loads(out["body"])["authorization"] == "Bearer __vault.ai__"
    assert refused.is_error and "agent_scope" in texts(refused)
    rec = [r for r in env.audit() if r.get("path") == "/via-res" and r["event"] == "request"]
    assert rec and rec[-1]["via"] == "mcp" and rec[-1]["agent"] == "bot"
    # wrong proxy credentials: the CONNECT is refused like any other
    with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the 407 in its own errors
        run(go(agent_proxy_url(env, token="vpa_wrong")))


def test_reserved_host_refuses_other_paths(env: Env) -> None:
    ca = ssl.create_default_context(cafile=str(env.proxy.home.ca_cert))
    with httpx.Client(proxy=agent_proxy_url(env), verify=ca, timeout=20) as c:
        assert c.get(RESERVED).status_code == 405  # no standalone stream
        assert c.post("https://vaultproxy.internal/other", json={}).status_code == 404
        canary.scan_text("reserved host", c.get(RESERVED).content)
        plain = c.post("http://vaultproxy.internal/mcp", json={})
        assert plain.status_code == 403
        assert plain.json()["error"]["code"] == "destination_denied"


def test_stdio_inside_exec_environment_uses_https_proxy(env: Env, tmp_path: Path) -> None:
    """Where the home is not visible (inside `vaultproxy exec`), `vaultproxy mcp` reaches
    the reserved host through HTTPS_PROXY as the agent."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vaultproxy", "mcp", "--home", str(tmp_path)],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
             "HTTPS_PROXY": agent_proxy_url(env),
             "SSL_CERT_FILE": str(env.proxy.home.ca_cert)}, cwd=str(REPO))

    async def go() -> Any:
        async with stdio_client(params) as streams, \
                ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            return await s.call_tool("whoami", {}), await s.call_tool(
                "http_request", {"service": "ai", "path": "/stdio-proxy"})
    who, got = run(go())
    assert json.loads(texts(who))["agent"] == "bot"
    assert json.loads(texts(got))["status"] == 200


def mcp_config(env: Env, *extra: str) -> dict[str, Any]:
    out = cli(env.proxy.home.path, "mcp", "config", *extra).stdout
    canary.scan_text("mcp config", out.encode())
    return json.loads(out)  # type: ignore[no-any-return]


def test_mcp_config_shapes(env: Env) -> None:
    claude = mcp_config(env)["mcpServers"]
    assert set(claude) == {"vaultproxy", "probe"}
    probe = claude["probe"]
    assert probe["type"] == "stdio" and probe["command"].endswith("vaultproxy")
    args = probe["args"]
    assert args[:3] == ["exec", "--home", str(env.proxy.home.path)]
    assert "--no-isolate" not in args
    assert args[args.index("--") + 1:] == ["env", "PROBE_TOKEN=__vault.ph__", sys.executable,
                                           str(PROBE)]
    assert claude["vaultproxy"]["args"][0] == "mcp"
    generic = mcp_config(env, "--client", "generic")["mcpServers"]
    assert "type" not in generic["probe"] and generic["probe"]["args"] == args


def test_configured_server_runs_under_exec_with_injected_credential(env: Env) -> None:
    """The .mcp.json entry, launched as an MCP client would: the server runs in the exec
    sandbox, its HTTPS goes through the proxy, which swaps its placeholder for the secret;
    it never holds the secret and cannot read the home."""
    entry = mcp_config(env)["mcpServers"]["probe"]
    params = StdioServerParameters(command=entry["command"], args=entry["args"],
                                   env={"PATH": os.environ.get("PATH", "")}, cwd=str(REPO))

    async def go() -> Any:
        async with stdio_client(params) as streams, \
                ClientSession(streams[0], streams[1], read_timeout_seconds=60) as s:
            await s.initialize()
            got = await s.call_tool("fetch", {"url": "https://ph.api.test/probe"})
            home = await s.call_tool("read", {"path": str(env.proxy.home.path /
                                                          "services.toml")})
            return got, home
    got, home = run(go())
    out = json.loads(texts(got))
    assert out["token_env"] == "__vault.ph__"  # what the server holds
    assert out["status"] == 200
    assert json.loads(out["body"])["authorization"] == "Bearer __vault.ph__"
    seen = [r for r in env.upstream.received if r.path == "/probe"][-1]
    assert seen.header("authorization") == f"Bearer {env.secrets['ph']}"
    assert json.loads(texts(home))["readable"] is False
    # the twin: outside the sandbox the same file is readable
    assert (env.proxy.home.path / "services.toml").read_bytes()


def test_stdio_server_inside_real_exec_as_the_agent(env: Env) -> None:
    """`vaultproxy exec --agent bot -- vaultproxy mcp`: inside the sandbox the home (and
    admin.sock) is hidden, so the bridge reaches the reserved host through the proxy, and the
    tools act as agent bot (its scopes), proven by its proxy credentials."""
    exe = str(Path(sys.executable).parent / "vaultproxy")
    params = StdioServerParameters(
        command=exe, args=["exec", "--home", str(env.proxy.home.path), "--agent", "bot", "--",
                           exe, "mcp"],
        env={"PATH": os.environ.get("PATH", ""), "VAULTPROXY_AGENT_TOKEN": env.agent_token},
        cwd=str(REPO))

    async def go() -> Any:
        async with stdio_client(params) as streams, \
                ClientSession(streams[0], streams[1], read_timeout_seconds=60) as s:
            await s.initialize()
            return (await s.call_tool("whoami", {}),
                    await s.call_tool("http_request", {"service": "ai", "path": "/in-exec"}),
                    await s.call_tool("http_request", {"service": "other", "path": "/no"}))
    who, got, refused = run(go())
    assert json.loads(texts(who))["agent"] == "bot"
    out = json.loads(texts(got))
    assert out["status"] == 200
    assert json.loads(out["body"])["authorization"] == "Bearer __vault.ai__"
    assert refused.is_error and "agent_scope" in texts(refused)


def test_reserved_host_with_two_workers(env: Env, start_proxy: Any, upstream: Upstream) -> None:
    """Under `--workers 2` each worker relays the reserved host to the supervisor's /mcp:
    calls over several connections all work and land in one audit."""
    secret = canary.make_canary()
    proxy = start_proxy(service_block("ai", "host_inject", "bearer", upstream.port),
                        {"ai": secret}, args=("--workers", "2"))
    ca = ssl.create_default_context(cafile=str(proxy.home.ca_cert))

    async def one(i: int) -> Any:
        client = httpx2.AsyncClient(proxy=proxy.url, verify=ca, trust_env=False,
                                    timeout=httpx2.Timeout(30, read=60))
        async with client, streamable_http_client(RESERVED, http_client=client) as streams:
            async with ClientSession(streams[0], streams[1],
                                     message_handler=scan_notification) as s:
                await s.initialize()
                return await s.call_tool("http_request", {"service": "ai", "path": f"/w{i}"})

    async def many() -> list[Any]:
        return list(await asyncio.gather(*(one(i) for i in range(6))))
    for result in run(many()):
        out = json.loads(texts(result))
        assert out["status"] == 200
        assert json.loads(out["body"])["authorization"] == "Bearer __vault.ai__"
    paths = {r["path"] for r in proxy.audit() if r.get("via") == "mcp"}
    assert {f"/w{i}" for i in range(6)} <= paths


def test_honeytoken_in_a_tool_call_refused_and_audited(env: Env) -> None:
    before = len(env.upstream.received)

    async def go() -> Any:
        async with session(env.admin_url, f"bot:{env.agent_token}") as s:
            return await s.call_tool("http_request", {
                "service": "ai", "path": "/decoy", "headers": {"X-Note": "__vault.decoy__"}})
    result = run(go())
    assert result.is_error and ": honeytoken: " in texts(result)
    assert len(env.upstream.received) == before
    hits = [r for r in env.audit() if r["event"] == "honeytoken" and r["path"] == "/decoy"]
    assert hits and hits[-1]["agent"] == "bot" and "via mcp" in hits[-1]["reason"]


def test_locked_proxy_says_so(start_proxy: Any, upstream: Upstream) -> None:
    proxy = start_proxy(service_block("ai", "host_inject", "bearer", upstream.port),
                        {"ai": canary.make_canary()})
    cli(proxy.home.path, "lock")
    token = (proxy.home.path / "admin-token").read_text().strip()
    url = str(proxy.extra["admin_url"]) + "/mcp"

    async def go() -> Any:
        async with session(url, token) as s:
            return (await s.call_tool("whoami", {}),
                    await s.call_tool("http_request", {"service": "ai", "path": "/x"}))
    who, refused = run(go())
    assert json.loads(texts(who))["locked"] is True
    assert refused.is_error and ": locked: " in texts(refused)
    r = httpx.post(url, headers={"Authorization": "Bearer bot:vpa_x"},
                   json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "locked"
