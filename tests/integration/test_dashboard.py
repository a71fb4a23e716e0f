"""The dashboard (SPEC §12) in a real browser: Playwright driving Debian's chromium against a
real `vaultproxy run`, requests made by curl through the proxy, and the refusals (CSRF,
forged Host, no session) probed with httpx, each beside a twin that passes."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import canary
from tests.harness.proxy import REPO, ProxyProcess, cli
from tests.harness.upstream import Received, Reply, Upstream, default_handler
from tests.integration.conftest import service_block

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
DOC_IMG = REPO / "docs" / "operator" / "img"
# The pages are rendered and captured on every run; only VAULTPROXY_SHOTS=1 writes them over
# the documented screenshots (a plain test run leaves the checkout clean).
IMG = DOC_IMG if os.environ.get("VAULTPROXY_SHOTS") == "1" else Path(
    tempfile.gettempdir()) / f"vaultproxy-shots-{os.getuid()}"
HOLD = 30


@dataclass
class Env:
    proxy: ProxyProcess
    upstream: Upstream
    secret: str
    url: str  # the dashboard's base URL


@pytest.fixture(scope="module")
def env(start_proxy: Any, upstream: Upstream) -> Iterator[Env]:
    secret = canary.make_canary()
    rules = '[{ method = "POST", path = "/hold/*", action = "approve" }]'
    toml = (f"[approvals]\nhold_seconds = {HOLD}\ngrant_seconds = 60\n\n"
            + service_block("ai", "host_inject", "bearer", upstream.port, rules=rules)
            + service_block("store", "host_inject", "bearer", upstream.port)
            + service_block("missing", "host_inject", "bearer", upstream.port)
            + service_block("elicited", "host_inject", "bearer", upstream.port))
    proxy = start_proxy(toml, {"ai": secret}, args=("--dashboard-listen", "127.0.0.1:0"))
    url = str(proxy.extra["dashboard_url"])
    yield Env(proxy, upstream, secret, url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium for the run (only this module drives a browser). Module scope, not
    session: sync Playwright keeps an event loop running in the main thread while it lives,
    and every later test's ``asyncio.run`` would then fail."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--no-sandbox"])
        yield b
        b.close()


def login_url(env: Env) -> str:
    out = cli(env.proxy.home.path, "dashboard").stdout.strip()
    assert re.fullmatch(re.escape(env.url) + r"/login#token=[A-Za-z0-9_-]{40,}", out), out
    return out


@pytest.fixture(scope="module")
def page(env: Env, browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 640})
    pg = context.new_page()
    errors: list[str] = []  # CSP violations and script errors show up here
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    pg.goto(login_url(env))
    pg.wait_for_url(env.url + "/")
    yield pg
    context.close()


def curl(env: Env, method: str, host: str, path: str) -> subprocess.Popen[str]:
    cmd = ["curl", "-sS", "--max-time", "40", "-x", env.proxy.url, "--cacert",
           str(env.proxy.home.ca_cert), "-X", method, "-o", "-", "-w", "\n%{http_code}",
           f"https://{host}.api.test{path}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    canary.scan_text("curl output", out.encode())
    body, _, status = out.rpartition("\n")
    return int(status), body


def shot(pg: Any, name: str, full: bool = False) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(IMG / f"dashboard-{name}.png"), full_page=full)


def no_secret(pg: Any, *secrets: str) -> None:
    html = pg.content()
    canary.scan_text(f"dashboard page {pg.url}", html.encode())
    for s in secrets:
        assert s not in html


def test_login_and_overview_shows_services(env: Env, page: Any) -> None:
    assert page.url == env.url + "/"
    assert "#token" not in page.url
    services = page.locator("#services")
    assert "ai" in services.inner_text() and "store" in services.inner_text()
    assert page.locator("svg.plot").count() == 2  # requests per minute: by service, by outcome
    assert page.locator("#locked").inner_text() == "unlocked"
    cookies = page.context.cookies()
    assert len(cookies) == 1
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    shot(page, "overview")


def test_login_url_works_once(env: Env, browser: Any) -> None:
    url = login_url(env)
    first = httpx.post(env.url + "/login", json={"token": url.split("=", 1)[1]},
                       headers={"Origin": env.url})
    assert first.status_code == 200 and "httponly" in first.headers["set-cookie"].lower()
    again = httpx.post(env.url + "/login", json={"token": url.split("=", 1)[1]},
                       headers={"Origin": env.url})
    assert again.status_code == 403
    assert again.json()["error"]["code"] == "login_refused"


def test_request_appears_live(env: Env, page: Any) -> None:
    page.goto(env.url + "/requests")
    page.locator("#live.on").wait_for(timeout=5000)
    marker = f"/live-{time.monotonic_ns()}"
    status, _ = finish(curl(env, "GET", "ai", marker))
    assert status == 200
    started = time.monotonic()
    row = page.locator("#requests tbody tr", has_text=marker)
    row.wait_for(timeout=1000)  # within a second of the response
    assert time.monotonic() - started < 1.0
    assert "injected" in row.inner_text()
    no_secret(page, env.secret)


def test_refused_request_shows_code_and_fix(env: Env, page: Any) -> None:
    page.goto(env.url + "/requests")
    page.locator("#live.on").wait_for(timeout=5000)
    status, _ = finish(curl(env, "GET", "store", "/needs-secret"))
    assert status == 502
    row = page.locator("#requests tbody tr", has_text="/needs-secret")
    row.wait_for(timeout=2000)
    assert "secret_missing" in row.inner_text()
    assert "Secrets page" in row.inner_text()  # the fix
    shot(page, "requests")


def _held(env: Env, page: Any, path: str) -> subprocess.Popen[str]:
    page.goto(env.url + "/approvals")
    agent = curl(env, "POST", "ai", path)
    page.locator(".approval", has_text=path).wait_for(timeout=5000)
    page.locator("#bell.on", has_text="1").wait_for(timeout=5000)  # the badge on every page
    return agent


def test_approval_approved_in_browser(env: Env, page: Any) -> None:
    path = f"/hold/yes-{time.monotonic_ns()}"
    agent = _held(env, page, path)
    assert not any(r.path == path for r in env.upstream.received)  # held: nothing sent
    shot(page, "approvals")
    page.locator(".approval", has_text=path).get_by_role("button", name="Approve once").click()
    status, _ = finish(agent)
    assert status == 200
    got = [r for r in env.upstream.received if r.path == path]
    assert len(got) == 1 and got[0].header("authorization") == f"Bearer {env.secret}"
    decided = [r for r in env.proxy.audit() if r.get("event") == "approval"
               and r.get("decided_by") == "dashboard"]
    assert decided, "the approval record names the dashboard"
    no_secret(page, env.secret)


def test_approval_denied_in_browser(env: Env, page: Any) -> None:
    path = f"/hold/no-{time.monotonic_ns()}"
    agent = _held(env, page, path)
    page.locator(".approval", has_text=path).get_by_role("button", name="Deny").click()
    status, body = finish(agent)
    assert status == 403 and '"approval_denied"' in body
    assert not any(r.path == path for r in env.upstream.received)
    page.goto(env.url + "/approvals")
    assert "denied" in page.locator("table").inner_text()


def test_approval_with_grant_in_browser(env: Env, page: Any) -> None:
    path = f"/hold/grant-{time.monotonic_ns()}"
    agent = _held(env, page, path)
    card = page.locator(".approval", has_text=path)
    card.locator("input[name=grant]").fill("120")
    time.sleep(1.5)  # the list refreshes meanwhile: what is typed stays
    assert card.locator("input[name=grant]").input_value() == "120"
    card.get_by_role("button", name="Approve with grant").click()
    assert finish(agent)[0] == 200
    again = curl(env, "POST", "ai", path)  # the grant admits the same rule at once
    assert finish(again)[0] == 200
    assert len([r for r in env.upstream.received if r.path == path]) == 2
    page.goto(env.url + "/approvals")
    assert "approved" in page.locator("table").inner_text()


def test_secret_form_stores_what_the_proxy_injects(env: Env, page: Any) -> None:
    value = canary.make_canary()
    page.goto(env.url + "/secrets")
    page.fill("input[name=name]", "store")
    page.fill("input[name=value]", value)
    page.get_by_role("button", name="Store", exact=True).click()
    page.wait_for_url(env.url + "/secrets")
    assert "stored store" in page.content()
    shot(page, "secrets")
    status, _ = finish(curl(env, "GET", "store", "/after-form"))
    assert status == 200
    got = [r for r in env.upstream.received if r.path == "/after-form"]
    assert got and got[-1].header("authorization") == f"Bearer {value}"
    for name in ("", "requests", "approvals", "services", "agents", "sources", "secrets"):
        page.goto(f"{env.url}/{name}")
        no_secret(page, value, env.secret)
        if name in ("", "services", "agents", "sources"):
            shot(page, name or "overview", full=not name)  # overview last: its plots have traffic
    assert page.errors == []  # no CSP violation, no script error on any page


def _reflecting(rec: Received) -> Reply:
    """Echo the credential the upstream received (under /elicited only): a tool result
    carries it back unless the response gate redacts it."""
    if not rec.path.startswith("/elicited"):
        return default_handler(rec)
    body = json.dumps({"path": rec.path, "authorization": rec.header("authorization")})
    return 200, [(b"content-type", b"application/json")], [body.encode()]


def test_store_secret_elicits_the_dashboard_form(env: Env, page: Any) -> None:
    """`store_secret` end to end: the SDK's client (an agent's MCP session on the admin
    listener) is sent by URL elicitation to the dashboard's write-only form, the person types
    the value in chromium, the proxy injects it, and nothing the model side received (tool
    results, the elicitation, notifications) ever held the value. The MCP client runs in a
    thread of its own: sync Playwright keeps an event loop running in this one."""
    from mcp import types

    from tests.integration.test_mcp import session as mcp_session

    home = env.proxy.home
    token = cli(home.path, "agent", "add", "scribe", "--services", "elicited",
                "--password-file", str(home.password_file)).stdout.strip()
    cli(home.path, "reload")
    value = canary.make_canary()
    transcript: list[str] = []  # everything the MCP client received, serialised
    urls: queue.Queue[str | None] = queue.Queue()
    stored = threading.Event()
    out: dict[str, Any] = {}

    async def on_elicit(context: Any, params: Any) -> Any:
        transcript.append(params.model_dump_json())
        urls.put(params.url)
        await asyncio.to_thread(stored.wait, 60)  # the person fills the form meanwhile
        return types.ElicitResult(action="accept")

    async def on_message(message: Any) -> None:
        transcript.append(repr(message))

    async def model_side() -> None:
        async with mcp_session(str(env.proxy.extra["admin_url"]) + "/mcp",
                               f"scribe:{token}", elicitation_callback=on_elicit,
                               message_handler=on_message) as s:
            for name, args in (
                    ("store_secret", {"name": "elicited", "reason": "to call elicited"}),
                    ("http_request", {"service": "elicited", "path": "/elicited/after"}),
                    ("list_services", {}), ("recent_activity", {"limit": 10})):
                result = await s.call_tool(name, args)
                transcript.append(result.model_dump_json())
                out[name] = result

    def client() -> None:
        try:
            asyncio.run(model_side())
        except BaseException as e:  # handed to the test thread, which re-raises it
            out["error"] = e
        finally:
            urls.put(None)

    env.upstream.handler = _reflecting
    worker = threading.Thread(target=client)
    worker.start()
    try:
        url = urls.get(timeout=60)
        assert url is not None, out.get("error")
        assert url == f"{env.url}/secrets?name=elicited"  # run.json's dashboard, not 3202
        page.goto(url)
        assert page.input_value("input[name=name]") == "elicited"  # prefilled from the URL
        page.fill("input[name=value]", value)
        page.get_by_role("button", name="Store", exact=True).click()
        page.wait_for_url(env.url + "/secrets")
        assert "stored elicited" in page.content()
        no_secret(page, value)
        stored.set()
        worker.join(60)
    finally:
        stored.set()
        env.upstream.handler = default_handler
    assert not worker.is_alive() and "error" not in out, out.get("error")
    answer = json.loads(out["store_secret"].content[0].text)
    assert answer == {"name": "elicited", "url": url, "action": "accept"}
    got = json.loads(json.loads(out["http_request"].content[0].text)["body"])
    assert got["authorization"] == "Bearer __vault.elicited__"  # redacted on the way back
    # through the proxy with curl too: the upstream sees the value the browser stored
    assert finish(curl(env, "GET", "elicited", "/elicited/curl"))[0] == 200
    seen = [r.header("authorization") for r in env.upstream.received
            if r.path.startswith("/elicited/")]
    # the negative twin: the upstream did receive the value (and reflected it), so the
    # transcript below could have held it
    assert seen == [f"Bearer {value}"] * 2
    text = "\n".join(transcript)
    assert url in text and "__vault.elicited__" in text  # the transcript is the real one
    assert value not in text
    canary.scan_text("MCP transcript", text.encode())


# -- refusals (httpx), each with a twin that passes --------------------------------------
@pytest.fixture(scope="module")
def session(env: Env) -> Iterator[tuple[httpx.Client, str]]:
    token = login_url(env).split("=", 1)[1]
    with httpx.Client(base_url=env.url, follow_redirects=False) as client:
        r = client.post("/login", json={"token": token}, headers={"Origin": env.url})
        assert r.status_code == 200
        page = client.get("/sources")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        yield client, csrf.group(1)


def test_cross_origin_post_refused(env: Env, session: tuple[httpx.Client, str]) -> None:
    client, csrf = session
    r = client.post("/lock", data={"csrf": csrf}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_refused"
    r = client.post("/lock", data={"csrf": csrf},
                    headers={"Origin": env.url, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = client.post("/lock", data={}, headers={"Origin": env.url})  # no CSRF token
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_refused"
    r = client.post("/lock", data={"csrf": "x" + csrf}, headers={"Origin": env.url})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_refused"
    assert httpx.get(env.proxy.extra["admin_url"] + "/v1/health").json()["locked"] is False
    twin = client.post("/sources/sync", data={"csrf": csrf}, headers={"Origin": env.url})
    assert twin.status_code == 303  # the same session, origin and token pass


def test_forged_host_refused(env: Env, session: tuple[httpx.Client, str]) -> None:
    client, _ = session
    port = env.url.rsplit(":", 1)[1]
    r = client.get("/", headers={"Host": f"rebind.example:{port}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_refused"
    assert client.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_missing_session_refused(env: Env, session: tuple[httpx.Client, str]) -> None:
    r = httpx.get(env.url + "/secrets")
    assert r.status_code == 401 and "vaultproxy dashboard" in r.text
    r = httpx.post(env.url + "/secrets", data={"name": "ai", "value": "x"},
                   headers={"Origin": env.url})
    assert r.status_code == 401 and r.json()["error"]["code"] == "session_required"
    r = httpx.get(env.url + "/events/requests", headers={"Accept": "text/event-stream"})
    assert r.status_code == 401
    client, _ = session
    assert client.get("/secrets").status_code == 200  # twin: with the session


def test_security_headers(env: Env, session: tuple[httpx.Client, str]) -> None:
    client, _ = session
    for path in ("/", "/login", "/static/htmx.min.js", "/nope"):
        h = client.get(path).headers
        assert h["content-security-policy"].startswith("default-src 'self'")
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["cache-control"] == "no-store"
        assert h["x-content-type-options"] == "nosniff"
        assert h["x-frame-options"] == "DENY"


def test_logout_ends_the_session(env: Env) -> None:
    token = login_url(env).split("=", 1)[1]
    with httpx.Client(base_url=env.url) as client:
        _logout(env, client, token)


def _logout(env: Env, client: httpx.Client, token: str) -> None:
    assert client.post("/login", json={"token": token}, headers={"Origin": env.url}
                       ).status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text)
    assert csrf is not None
    cookie = dict(client.cookies)
    assert client.post("/logout", data={"csrf": csrf.group(1)},
                       headers={"Origin": env.url}).status_code == 200
    assert httpx.get(env.url + "/", cookies=cookie).status_code == 401  # the old cookie is dead


def test_banner_run_json_and_status(env: Env) -> None:
    assert env.proxy.extra["dashboard"]
    assert f"dashboard: {env.url}" in env.proxy.output()
    status = cli(env.proxy.home.path, "status").stdout
    assert f"dashboard: {env.url} (log in: `vaultproxy dashboard`)" in status
    assert json.loads(cli(env.proxy.home.path, "status", "--json").stdout)[
        "dashboard_url"] == env.url


def test_img_paths_documented() -> None:
    doc = (REPO / "docs" / "operator" / "DASHBOARD.md").read_text()
    shots = sorted(DOC_IMG.glob("dashboard-*.png"))
    assert len(shots) >= 7
    for p in shots:
        assert f"img/{p.name}" in doc


def test_requests_filter(env: Env, session: tuple[httpx.Client, str]) -> None:
    client, _ = session
    assert finish(curl(env, "GET", "ai", "/filter-ai"))[0] == 200
    assert finish(curl(env, "GET", "missing", "/filter-missing"))[0] == 502
    time.sleep(0.3)
    only = client.get("/requests", params={"service": "missing"}).text
    assert "/filter-missing" in only and "/filter-ai" not in only
    refused = client.get("/requests", params={"outcome": "denied"}).text
    assert "/filter-missing" in refused and "/filter-ai" not in refused
    both = client.get("/requests").text
    assert "/filter-missing" in both and "/filter-ai" in both


def _agent_status(env: Env, name: str, token: str) -> int:
    host, port = env.proxy.url.removeprefix("http://").rsplit(":", 1)
    p = subprocess.run(["curl", "-sS", "--max-time", "20", "-x",
                        f"http://{name}:{token}@{host}:{port}", "--cacert",
                        str(env.proxy.home.ca_cert), "-o", "/dev/null", "-w",
                        "%{http_code} %{http_connect}", "https://ai.api.test/agent"],
                       capture_output=True, text=True, timeout=30)
    code, connect = (int(x) for x in p.stdout.split())
    return code or connect  # a refused CONNECT: its status


def test_agent_revoked_from_the_dashboard(env: Env, session: tuple[httpx.Client, str]) -> None:
    home = env.proxy.home
    token = cli(home.path, "agent", "add", "bot", "--services", "ai", "--password-file",
                str(home.password_file)).stdout.strip()
    forever = cli(home.path, "agent", "add", "forever", "--services", "ai", "--ttl", "never",
                  "--password-file", str(home.password_file)).stdout.strip()
    cli(home.path, "reload")
    assert _agent_status(env, "bot", token) == 200
    client, csrf = session
    page = client.get("/agents").text
    assert "bot" in page and token not in page and forever not in page
    # each token's expiry: the default lifetime (24h) from now, and one that never expires
    row = re.search(r"<tr><td>bot</td>.*?</tr>", page)
    assert row is not None
    assert re.search(r'<td class="expiry">\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ '
                     r"\(in 2[34]h\d\dm\)</td>", row.group(0)), row.group(0)
    row = re.search(r"<tr><td>forever</td>.*?</tr>", page)
    assert row is not None and '<td class="expiry">never</td>' in row.group(0)
    r = client.post("/agents/bot/revoke", data={"csrf": csrf}, headers={"Origin": env.url})
    assert r.status_code == 303
    assert "agent bot revoked" in client.get("/agents").text
    assert _agent_status(env, "bot", token) == 407


def test_lock_and_unlock_from_the_dashboard(env: Env, session: tuple[httpx.Client, str]
                                            ) -> None:
    from tests.harness.proxy import PASSWORD

    client, csrf = session
    origin = {"Origin": env.url}
    assert client.post("/lock", data={"csrf": csrf}, headers=origin).status_code == 303
    status, body = finish(curl(env, "GET", "ai", "/while-locked"))
    assert status == 503 and '"locked"' in body
    assert "master password" in client.get("/secrets").text
    wrong = client.post("/unlock", data={"csrf": csrf, "password": "not it"}, headers=origin)
    assert wrong.status_code == 303
    assert "unlock_failed" in client.get("/secrets").text
    time.sleep(1.1)  # the backoff after a wrong password
    ok = client.post("/unlock", data={"csrf": csrf, "password": PASSWORD}, headers=origin)
    assert ok.status_code == 303
    assert "unlocked" in client.get("/secrets").text
    assert finish(curl(env, "GET", "ai", "/after-unlock"))[0] == 200
    records = [r for r in env.proxy.audit() if r.get("event") == "admin"
               and r.get("reason") in ("lock", "unlock")]
    assert records  # audited, as the admin API's own calls


def test_dashboard_off(shared: Any) -> None:
    """`--dashboard-listen ""` (the harness default): nothing listens, and the command says so."""
    r = cli(shared.proxy.home.path, "dashboard", check=False)
    assert r.returncode == 1 and "dashboard is off" in r.stderr and not r.stdout
    assert shared.proxy.extra["dashboard"] is None


def test_services_health_and_secret_link(env: Env, session: tuple[httpx.Client, str]) -> None:
    client, _ = session
    plain = client.get("/services").text
    assert "check-health" in plain and "<th>health</th>" not in plain
    checked = client.get("/services", params={"health": "1"}).text
    assert "<th>health</th>" in checked
    row = re.search(r"<tr><td>ai</td>.*?</tr>", checked)
    assert row is not None
    assert re.search(r">(ok|weak|reused|breached)</td></tr>$", row.group(0))
    assert env.secret not in checked
    assert 'value="missing"' in client.get("/secrets", params={"name": "missing"}).text
    assert "<x>" not in client.get("/secrets", params={"name": '"><x>'}).text


def test_dashboard_open_starts_the_browser(env: Env, tmp_path: Path) -> None:
    """`--open` hands the URL to the browser ($BROWSER here: a script that records it)."""
    seen = tmp_path / "seen"
    script = tmp_path / "browser.py"
    script.write_text("import sys\nopen(sys.argv[2], 'w').write(sys.argv[1])\n")
    import sys

    r = cli(env.proxy.home.path, "dashboard", "--open",
            env={"BROWSER": f"{sys.executable} {script} %s {seen}"})
    url = r.stdout.strip()
    assert seen.read_text() == url and "#token=" in url
    with httpx.Client(base_url=env.url) as c:  # and it logs in, once
        assert c.post("/login", json={"token": url.split("=", 1)[1]},
                      headers={"Origin": env.url}).status_code == 200


def test_requests_of_every_worker(start_proxy: Any, upstream: Upstream) -> None:
    """With --workers 2 the Requests page shows the records of every worker process (they
    reach the supervisor, which serves the dashboard)."""
    toml = service_block("ai", "host_inject", "bearer", upstream.port)
    proxy = start_proxy(toml, {"ai": canary.make_canary()},
                        args=("--dashboard-listen", "127.0.0.1:0", "--workers", "2"))
    base = str(proxy.extra["dashboard_url"])
    token = cli(proxy.home.path, "dashboard").stdout.strip().split("=", 1)[1]
    env = Env(proxy, upstream, "", base)
    paths = [f"/w-{i}-{time.monotonic_ns()}" for i in range(12)]
    for p in paths:  # new connections: the kernel spreads them over the workers
        assert finish(curl(env, "GET", "ai", p))[0] == 200
    with httpx.Client(base_url=base) as c:
        assert c.post("/login", json={"token": token}, headers={"Origin": base}
                      ).status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            page = c.get("/requests").text
            if all(p in page for p in paths):
                break
            time.sleep(0.2)
        assert [p for p in paths if p not in page] == []
        assert ">2</span>" in c.get("/").text  # workers


def test_refusals_are_shown_not_raised(env: Env, session: tuple[httpx.Client, str]) -> None:
    """An admin function's refusal becomes a note on the page: its code and public message."""
    client, csrf = session
    origin = {"Origin": env.url}
    r = client.post("/approvals/nope", data={"csrf": csrf, "decision": "approve"},
                    headers=origin)
    assert r.status_code == 303
    assert "refused (approval_unknown)" in client.get("/approvals").text
    r = client.post("/secrets", data={"csrf": csrf, "name": "Bad Name", "value": "x"},
                    headers=origin)
    assert r.status_code == 303 and "refused: a name is" in client.get("/secrets").text
    assert client.post("/approvals/x", data={"csrf": csrf, "decision": "grant",
                                             "grant": "nan"}, headers=origin).status_code == 303
