"""Approvals through the real proxy (SPEC §10): curl and the openai SDK held on an `approve`
rule, decided from `vaultproxy approvals --watch` at a real terminal (pexpect), from `approve`
/ `deny`, and by the clock; what the upstream saw is asserted every time."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pexpect
import pytest

from tests import canary
from tests.harness.proxy import REPO, ProxyProcess, cli
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block

pytestmark = pytest.mark.integration

HOLD = 5
GRANT = 4


@dataclass
class Env:
    proxy: ProxyProcess
    upstream: Upstream
    secret: str
    notified: Path


@pytest.fixture(scope="module")
def env(start_proxy: object, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    notified = tmp_path_factory.mktemp("notify") / "log"
    script = notified.parent / "notify.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.argv[-1] + '\\n')\n")
    secret = canary.make_canary()
    rules = ('[{ method = "POST", path = "/hold/*", action = "approve" }, '
             '{ method = "*", path = "/forbidden*", action = "deny" }]')
    toml = (f"[approvals]\nhold_seconds = {HOLD}\ngrant_seconds = {GRANT}\n"
            f"notify_command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, "
            f"{json.dumps(str(notified))}]\n\n"
            + service_block("ai", "host_inject", "bearer", upstream.port, rules=rules))
    proxy = start_proxy(toml, {"ai": secret})  # type: ignore[operator]
    yield Env(proxy, upstream, secret, notified)


def curl(env: Env, method: str, path: str, data: str | None = None) -> subprocess.Popen[str]:
    cmd = ["curl", "-sS", "--max-time", "30", "-x", env.proxy.url, "--cacert",
           str(env.proxy.home.ca_cert), "-X", method, "-D", "-",
           f"https://ai.api.test{path}"]
    if data is not None:
        cmd += ["-H", "Content-Type: application/json", "--data", data]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str]) -> tuple[int, dict[str, str], str]:
    out, err = p.communicate(timeout=40)
    assert p.returncode == 0, err
    rest, head = out.replace("\r\n", "\n"), ""
    while rest.startswith("HTTP/"):  # the CONNECT's "200 Connection established" first
        head, _, rest = rest.partition("\n\n")
    body = rest
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    canary.scan_text("curl output", out.encode())
    return status, headers, body


def received(env: Env, path: str) -> int:
    return sum(1 for r in env.upstream.received if r.path == path)


def pending(env: Env, path: str, timeout: float = 10) -> dict[str, object]:
    """The pending approval for ``path`` (the CLI lists it as JSON)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with admin(env.proxy) as c:
            listed = c.get("/v1/approvals").json()["approvals"]
        for a in listed:
            if a["path"] == path and a["state"] == "pending":
                return a  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no pending approval for {path}")


def admin(proxy: ProxyProcess) -> httpx.Client:
    token = (proxy.home.path / "admin-token").read_text().strip()
    return httpx.Client(base_url=str(proxy.extra["admin_url"]), timeout=30,
                        headers={"Authorization": f"Bearer {token}"})


def watch(env: Env) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable, ["-m", "vaultproxy", "approvals", "--watch", "--home",
                         str(env.proxy.home.path)],
        cwd=str(REPO), env={**os.environ, "PYTHONUNBUFFERED": "1"}, encoding="utf-8",
        timeout=20,
    )
    child.expect("watching")
    return child


def openai_client(env: Env) -> openai.OpenAI:
    ctx = ssl.create_default_context(cafile=str(env.proxy.home.ca_cert))
    http_client = httpx.Client(proxy=env.proxy.url, verify=ctx, timeout=30)
    return openai.OpenAI(api_key="sk-agent-holds-no-key", base_url="https://ai.api.test/hold/v1",
                         http_client=http_client, max_retries=0)


def test_curl_approved_from_watch_at_a_terminal(env: Env) -> None:
    child = watch(env)
    try:
        p = curl(env, "POST", "/hold/curl-once", data='{"x": 1}')
        child.expect(r"approval (\w+) \(proxy\)")
        aid = child.match.group(1)
        child.expect("agent:   \\(anonymous\\)")
        child.expect("service: ai")
        child.expect("request: POST https://ai.api.test/hold/curl-once")
        child.expect("body:    8 bytes")
        child.expect(r"\[o\] approve once")
        assert received(env, "/hold/curl-once") == 0  # held: nothing went upstream yet
        child.sendline("o")
        child.expect(f"{aid}: approved")
        status, _, body = finish(p)
    finally:
        child.sendintr()
        child.expect(pexpect.EOF)
    assert status == 200, body
    assert received(env, "/hold/curl-once") == 1  # exactly one request reached the upstream
    up = next(r for r in env.upstream.received if r.path == "/hold/curl-once")
    assert up.header("authorization") == f"Bearer {env.secret}"
    assert canary.make_canary is not None and env.secret not in child.before
    records = [r for r in env.proxy.audit() if r["event"] == "approval" and r["id"] == aid]
    assert [(r["decision"], r["decided_by"]) for r in records] == [
        ("requested", None), ("approve", "cli")]
    assert aid in env.notified.read_text()  # notify_command ran with the summary


def test_openai_sdk_approved_from_watch(env: Env) -> None:
    child = watch(env)
    try:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            client = openai_client(env)
            fut = pool.submit(lambda: client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}]))
            child.expect(r"request: POST https://ai.api.test/hold/v1/chat/completions")
            child.expect(r"\[o\] approve once")
            child.sendline("o")
            child.expect("approved")
            fut.result(timeout=30)
            client.close()
    finally:
        child.sendintr()
        child.expect(pexpect.EOF)
    assert received(env, "/hold/v1/chat/completions") == 1


def test_denied_gets_approval_denied_and_nothing_upstream(env: Env) -> None:
    p = curl(env, "POST", "/hold/curl-denied")
    a = pending(env, "/hold/curl-denied")
    cli(env.proxy.home.path, "deny", str(a["id"]))
    status, headers, body = finish(p)
    assert status == 403
    assert json.loads(body)["error"]["code"] == "approval_denied"
    assert headers["x-vaultproxy-error"] == "approval_denied"
    assert received(env, "/hold/curl-denied") == 0


def test_openai_sdk_denied(env: Env) -> None:
    import concurrent.futures

    client = openai_client(env)
    client.base_url = httpx.URL("https://ai.api.test/hold/denied/v1/")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(lambda: client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]))
        a = pending(env, "/hold/denied/v1/chat/completions")
        cli(env.proxy.home.path, "deny", str(a["id"]))
        with pytest.raises(openai.PermissionDeniedError) as e:
            fut.result(timeout=30)
    client.close()
    assert e.value.code == "approval_denied"
    assert received(env, "/hold/denied/v1/chat/completions") == 0


def test_timeout_then_late_approval_grants_the_retry_for_grant_seconds(env: Env) -> None:
    path = "/hold/late"
    status, headers, body = finish(curl(env, "POST", path))
    assert status == 403
    assert json.loads(body)["error"]["code"] == "approval_timeout"
    aid = headers["x-vaultproxy-approval"]
    assert received(env, path) == 0
    out = cli(env.proxy.home.path, "approve", aid).stdout
    assert "approved" in out
    status, _, _ = finish(curl(env, "POST", path))  # the retry passes (a one-use grant)
    assert status == 200
    assert received(env, path) == 1
    records = [r for r in env.proxy.audit() if r["event"] == "approval" and r["id"] == aid]
    assert [r["decided_by"] for r in records] == [None, "timeout", "cli"]
    assert any(r["event"] == "admin" and r["path"] == f"/v1/approvals/{aid}"
               and r["caller"] for r in env.proxy.audit())  # who decided, as an admin record
    # the grant is spent: the next one is held again (and times out)
    status, headers, body = finish(curl(env, "POST", path))
    assert json.loads(body)["error"]["code"] == "approval_timeout"
    assert received(env, path) == 1


def test_grant_admits_within_grant_seconds_not_after(env: Env) -> None:
    path = "/hold/granted"
    status, headers, _ = finish(curl(env, "POST", path))
    assert status == 403
    aid = headers["x-vaultproxy-approval"]
    cli(env.proxy.home.path, "approve", aid, "--grant", str(GRANT))
    t0 = time.monotonic()
    for _ in range(2):
        status, _, _ = finish(curl(env, "POST", path))
        assert status == 200
    assert time.monotonic() - t0 < GRANT
    time.sleep(max(0.0, GRANT + 0.5 - (time.monotonic() - t0)))
    status, _, body = finish(curl(env, "POST", path))  # after grant_seconds: held again
    assert json.loads(body)["error"]["code"] == "approval_timeout"
    assert received(env, path) == 2


def test_deny_rule_and_unheld_requests(env: Env) -> None:
    status, headers, body = finish(curl(env, "GET", "/forbidden/x"))
    assert status == 403 and json.loads(body)["error"]["code"] == "request_denied"
    assert received(env, "/forbidden/x") == 0
    status, _, _ = finish(curl(env, "GET", "/hold/x"))  # GET is not held (negative twin)
    assert status == 200
    assert received(env, "/hold/x") == 1


def test_post_proxy_is_held_and_decided_like_a_proxied_request(env: Env) -> None:
    import concurrent.futures

    with admin(env.proxy) as a, concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(a.post, "/proxy", json={"service": "ai", "method": "POST",
                                                  "path": "/hold/./via-api/../api"})
        x = pending(env, "/hold/api")  # held under its normalised path
        assert x["via"] == "api" and received(env, "/hold/api") == 0
        with admin(env.proxy) as b:
            assert b.post(f"/v1/approvals/{x['id']}", json={"decision": "approve"}).json()[
                "state"] == "approved"
        r = fut.result(timeout=30)
    canary.scan_text("POST /proxy", r.content)
    assert r.status_code == 200
    assert received(env, "/hold/api") == 1
