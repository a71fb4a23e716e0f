"""The admin API against a real `vaultproxy run` and a real TLS upstream: every endpoint over
TCP (bearer token, Host guard) and over admin.sock; lock/unlock; POST /proxy injecting like
the transparent path; the admin port refused at CONNECT."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.canary import make_canary
from tests.harness.proxy import PASSWORD, ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import agent_client, service_block
from tests.integration.test_inject import MATRIX, _agent_request, _expected

pytestmark = pytest.mark.integration


def echo_handler(rec: Received) -> Reply:
    """Echo what arrived (credentials included): the proxy must redact it on the way back."""
    body = json.dumps(
        {"path": rec.path, "query": rec.query, "auth": rec.header("authorization"),
         "key": rec.header("x-service-key")}
    ).encode()
    return 200, [(b"content-type", b"application/json")], [body]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("upstream"), handler=echo_handler).start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def admin_proxy(start_proxy, upstream: Upstream):  # type: ignore[no-untyped-def]
    toml = '[proxy]\npassthrough_allow = ["127.0.0.0/8"]\n\n' + "".join(
        service_block(n, m, a, upstream.port, **x) for n, m, a, x in MATRIX
    )
    secrets: dict[str, object] = {}
    for name, _m, auth, _x in MATRIX:
        secrets[name] = (
            {"username": "svc-user", "password": make_canary()}
            if auth == "basic"
            else make_canary()
        )
    proxy = start_proxy(toml, secrets)
    return proxy, Quiet(secrets)


class Quiet(dict[str, object]):
    """The test secrets; never shown in a failure report."""

    def __repr__(self) -> str:
        return "<secrets>"


def token(proxy: ProxyProcess) -> str:
    return (proxy.home.path / "admin-token").read_text().strip()


def tcp(proxy: ProxyProcess, auth: bool = True, caller: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token(proxy)}"} if auth else {}
    if caller:
        headers["X-Caller-Id"] = caller
    return httpx.Client(base_url=str(proxy.extra["admin_url"]), headers=headers, timeout=30,
                        trust_env=False)


def unix(proxy: ProxyProcess, caller: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(proxy.extra["admin_socket"]))
    headers = {"X-Caller-Id": caller} if caller else {}
    return httpx.Client(transport=transport, base_url="http://localhost", headers=headers,
                        timeout=30, trust_env=False)


def client(proxy: ProxyProcess, kind: str, caller: str | None = None) -> httpx.Client:
    return tcp(proxy, caller=caller) if kind == "tcp" else unix(proxy, caller=caller)


def no_canary(text: str, secrets: dict[str, object]) -> None:
    for v in secrets.values():
        for s in v.values() if isinstance(v, dict) else [v]:
            if str(s).startswith("vpcanary_"):
                assert str(s) not in text


# -- files, auth, host guard ---------------------------------------------------------------

def test_run_json_token_and_socket_files(admin_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    home = proxy.home.path
    assert proxy.extra["admin"] and proxy.extra["admin_socket"] == str(home / "admin.sock")
    assert (home / "admin-token").stat().st_mode & 0o777 == 0o600
    assert (home / "admin.sock").stat().st_mode & 0o777 == 0o600
    assert len(token(proxy)) >= 40


ENDPOINTS = [
    ("GET", "/v1/services", None), ("GET", "/v1/secrets", None), ("GET", "/v1/audit", None),
    ("GET", "/metrics", None), ("GET", "/openapi.json", None), ("POST", "/v1/reload", None),
    ("POST", "/v1/lock", None), ("POST", "/v1/unlock", {"password": "x"}),
    ("PUT", "/v1/secrets/zz", {"value": "v"}), ("DELETE", "/v1/secrets/zz", None),
    ("POST", "/proxy", {"service": "hi-bearer"}),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), ENDPOINTS, ids=[e[1] + e[0] for e in ENDPOINTS]
)
def test_tcp_needs_the_token(admin_proxy, upstream, method, path, body) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    seen = len(upstream.received)
    with tcp(proxy, auth=False) as c:
        r = c.request(method, path, json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = c.request(method, path, json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = c.request(method, path, json=body, headers={"Authorization": token(proxy)})
        assert r.status_code == 401  # no "Bearer" scheme
    assert len(upstream.received) == seen
    assert proxy.proc.poll() is None
    with tcp(proxy) as c:  # still unlocked: nothing above ran
        assert c.get("/v1/health").json()["locked"] is False


def test_health_needs_no_auth(admin_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    with tcp(proxy, auth=False) as c:
        body = c.get("/v1/health").json()
    assert body == {"status": "ok", "locked": False, "services": len(MATRIX), "version": "0.1.0"}
    with unix(proxy) as c:
        assert c.get("/v1/health").json()["services"] == len(MATRIX)


@pytest.mark.parametrize("host", ["evil.example", "rebind.attacker.test:3201", ""])
def test_dns_rebinding_guard(admin_proxy, host: str) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    with tcp(proxy) as c:
        r = c.get("/v1/services", headers={"Host": host})
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_refused"
        port = str(proxy.extra["admin"]).rsplit(":", 1)[1]
        for ok in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
            assert c.get("/v1/services", headers={"Host": ok}).status_code == 200


# -- every endpoint, both transports -------------------------------------------------------

@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_read_endpoints(admin_proxy, kind: str) -> None:  # type: ignore[no-untyped-def]
    proxy, secrets = admin_proxy
    with client(proxy, kind) as c:
        services = c.get("/v1/services").json()["services"]
        assert [s["name"] for s in services] == [m[0] for m in MATRIX]
        assert all(s["secret_present"] for s in services)
        listed = c.get("/v1/secrets").json()["secrets"]
        assert {s["name"] for s in listed} >= set(secrets)
        basic = next(s for s in listed if s["name"] == "hi-basic")
        assert basic["fields"] == ["password", "username"] and basic["has_value"] is False
        spec = c.get("/openapi.json").json()
        assert {"/v1/health", "/v1/unlock", "/proxy", "/v1/secrets/{name}"} <= set(spec["paths"])
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and "vaultproxy_locked 0.0" in metrics.text
        texts = [json.dumps(services), json.dumps(listed), metrics.text]
    for t in texts:
        no_canary(t, secrets)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_secret_put_list_delete(admin_proxy, kind: str, canary) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    value, field = canary(), canary()
    name = f"extra-{kind}"
    with client(proxy, kind, caller=f"writer-{kind}") as c:
        r = c.put(f"/v1/secrets/{name}", json={"value": value, "fields": {"password": field}})
        assert r.status_code == 200, r.text
        assert r.json()["has_value"] and r.json()["fields"] == ["password"]
        assert value not in r.text and field not in r.text
        listed = c.get("/v1/secrets").text
        assert name in listed and value not in listed and field not in listed
        assert c.put(f"/v1/secrets/{name}", json={}).status_code == 422
        assert c.put("/v1/secrets/Bad%20Name", json={"value": "x"}).status_code == 422
        r = c.delete(f"/v1/secrets/{name}")
        assert r.status_code == 200 and r.json() == {"name": name, "deleted": True}
        assert c.delete(f"/v1/secrets/{name}").status_code == 404
        audit = c.get("/v1/audit", params={"limit": 50}).json()["records"]
    mine = [a for a in audit if a["event"] == "admin" and a.get("caller") == f"id:writer-{kind}"]
    assert [a["reason"] for a in mine] == ["secret_put", "secret_delete"]
    assert value not in json.dumps(audit)
    # The file on disk changed too (a fresh CLI read sees no leftover entry).
    assert (proxy.home.path / "keystore.enc").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_reload_counts_and_invalid_file(admin_proxy, kind: str) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    path = proxy.home.path / "services.toml"
    good = path.read_text()
    with client(proxy, kind) as c:
        r = c.post("/v1/reload")
        assert r.status_code == 200 and r.json() == {"before": len(MATRIX), "after": len(MATRIX)}
        path.write_text(good + '\n[[service]]\nname = "BAD"\nbogus = 1\n')
        try:
            r = c.post("/v1/reload")
        finally:
            path.write_text(good)
        assert r.status_code == 409 and r.json()["error"]["code"] == "config_invalid"
        problems = r.json()["error"]["problems"]
        assert problems and all(isinstance(p, str) for p in problems)
        assert c.get("/v1/health").json()["services"] == len(MATRIX)  # previous registry kept
        assert "vaultproxy_reloads_total" in c.get("/metrics").text


def test_audit_filters(admin_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    with agent_client(proxy) as a:
        a.get("https://hi-bearer.api.test/for-audit")
    with tcp(proxy) as c:
        recs = c.get("/v1/audit", params={"service": "hi-bearer", "limit": 1}).json()["records"]
        assert len(recs) == 1 and recs[0]["service"] == "hi-bearer"
        assert recs[0]["path"] == "/for-audit"
        late = c.get("/v1/audit", params={"since": "2999-01-01T00:00:00.000Z"}).json()
        assert late["records"] == []
        assert c.get("/v1/audit", params={"limit": 0}).status_code == 422
        text = c.get("/metrics").text
    assert 'vaultproxy_flows_total{outcome="injected",service="hi-bearer"}' in text
    assert "vaultproxy_injection_latency_seconds_bucket" in text


# -- lock / unlock ----------------------------------------------------------------------------

def test_lock_then_unlock_and_backoff(admin_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    proxy, secrets = admin_proxy
    with unix(proxy, caller="locker") as c, agent_client(proxy) as agent:
        assert c.post("/v1/lock").json() == {"locked": True}
        r = agent.get("https://hi-bearer.api.test/while-locked")
        assert r.status_code == 503 and r.json()["error"]["code"] == "locked"
        assert c.get("/v1/health").json()["locked"] is True
        assert c.get("/v1/secrets").json()["error"]["code"] == "locked"
        assert "vaultproxy_locked 1.0" in c.get("/metrics").text
        # Wrong passwords: the first is checked, the next one right away is refused (backoff).
        bad = c.post("/v1/unlock", json={"password": "wrong"}, headers={"X-Caller-Id": "guesser"})
        assert bad.status_code == 403 and bad.json()["error"]["code"] == "unlock_failed"
        again = c.post("/v1/unlock", json={"password": PASSWORD},
                       headers={"X-Caller-Id": "guesser"})
        # refused before the KDF: even the right password is not tried during the backoff
        assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limited"
        assert int(again.headers["Retry-After"]) >= 1
        assert c.get("/v1/health").json()["locked"] is True
        time.sleep(1.1)
        bad2 = c.post("/v1/unlock", json={"password": "wrong2"}, headers={"X-Caller-Id": "guesser"})
        assert bad2.status_code == 403
        third = c.post("/v1/unlock", json={"password": "x"}, headers={"X-Caller-Id": "guesser"})
        assert int(third.headers["Retry-After"]) >= 2  # doubled
        # A new X-Caller-Id on the same socket (same uid) does not reset the backoff...
        renamed = c.post("/v1/unlock", json={"password": PASSWORD},
                         headers={"X-Caller-Id": "someone-else"})
        assert renamed.status_code == 429 and int(renamed.headers["Retry-After"]) >= 2
        # ...another peer (the TCP listener, holding the token) is not held back by it.
        with tcp(proxy, caller="operator") as op:
            ok = op.post("/v1/unlock", json={"password": PASSWORD})
        assert ok.status_code == 200 and ok.json() == {"locked": False}
        r = agent.get("https://hi-bearer.api.test/after-unlock")
        assert r.status_code == 200
        assert upstream.received[-1].header("authorization") == f"Bearer {secrets['hi-bearer']}"
        audit = c.get("/v1/audit", params={"limit": 30}).json()["records"]
    actions = [(a["reason"], a["caller"]) for a in audit if a["event"] == "admin"]
    assert ("lock", "id:locker") in actions and ("unlock", "id:operator") in actions
    assert ("unlock: unlock_failed", "id:guesser") in actions
    assert PASSWORD not in json.dumps(audit) and PASSWORD not in proxy.output()


# -- POST /proxy -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize(("name", "mode", "auth", "extra"), MATRIX, ids=[m[0] for m in MATRIX])
def test_proxy_injects_like_the_transparent_path(  # type: ignore[no-untyped-def]
    admin_proxy, upstream, kind, name, mode, auth, extra
):
    proxy, secrets = admin_proxy
    headers, params = _agent_request(name, mode, auth)
    for junk in ("X-Api-Key", "X-Plex-Token", "Cookie"):
        headers.pop(junk)
    if mode == "host_inject" or auth not in ("bearer", "basic"):
        headers.pop("Authorization")
    with client(proxy, kind, caller=f"proxy-{kind}") as c:
        r = c.post("/proxy", json={"service": name, "method": "GET", "path": "/v1/things",
                                   "headers": headers, "query": params})
    assert r.status_code == 200, r.text
    rec = upstream.received[-1]
    assert rec.path == "/v1/things" and rec.header("host") == f"{name}.api.test"
    where, key, value = _expected(name, mode, auth, secrets[name])
    if where == "header":
        assert rec.header(key) == value
    else:
        assert f"{key}={value}" in rec.query.split("&")
    # The upstream echoed the credential; the caller sees the placeholder instead.
    no_canary(r.text, secrets)
    assert f"__vault.{name}__" in r.text


@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key", "Cookie", "Proxy-Authorization",
                                    "X-Service-Key"])
def test_proxy_refuses_caller_credentials(admin_proxy, upstream, header: str) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    seen = len(upstream.received)
    service = "hi-header" if header == "X-Service-Key" else "hi-bearer"
    with tcp(proxy, caller="refused") as c:
        r = c.post("/proxy", json={"service": service, "headers": {header: "Bearer mine"}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "auth_header_refused"
    assert len(upstream.received) == seen


def test_proxy_policy_errors(admin_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    seen = len(upstream.received)
    with unix(proxy, caller="policy") as c:
        r = c.post("/proxy", json={"service": "ph-bearer",
                                   "headers": {"X-Other": "__vault.hi-bearer__"}})
        assert r.status_code == 403 and r.json()["error"]["code"] == "placeholder_misdirected"
        r = c.post("/proxy", json={"service": "ph-bearer", "query": {"a": "__vault.nobody__"}})
        assert r.status_code == 403 and r.json()["error"]["code"] == "placeholder_unknown"
        r = c.post("/proxy", json={"service": "nope"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_service"
        r = c.post("/proxy", json={"service": "hi-bearer", "host": "ph-bearer.api.test"})
        assert r.status_code == 400
    assert len(upstream.received) == seen


def test_proxy_is_rate_limited(admin_proxy) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    proxy, _ = admin_proxy
    with tcp(proxy, caller="flooder") as c, ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: c.post("/proxy", json={"service": "no-such"}),
                                range(240)))
    codes = [r.status_code for r in replies]
    assert 429 in codes and codes.count(404) >= 50, codes
    limited = next(r for r in replies if r.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    with tcp(proxy, caller="someone-else") as c:  # per caller
        assert c.post("/proxy", json={"service": "no-such"}).status_code == 404


# -- the admin port is not reachable through the proxy ---------------------------------------

def _connect(proxy: ProxyProcess, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return s.recv(4096)


def test_admin_port_refused_at_connect(admin_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    admin = str(proxy.extra["admin"])
    # Twin: loopback is allowed for passthrough here (passthrough_allow), so the upstream works...
    assert _connect(proxy, f"127.0.0.1:{upstream.port}").startswith(b"HTTP/1.1 200")
    # ...but the admin port, an own listener, is refused (and so is the proxy's own port).
    refused = _connect(proxy, admin)
    assert refused.startswith(b"HTTP/1.1 403") and b"destination_denied" in refused
    assert _connect(proxy, f"localhost:{admin.rsplit(':', 1)[1]}").startswith(b"HTTP/1.1 403")
    assert _connect(proxy, f"127.0.0.1:{proxy.port}").startswith(b"HTTP/1.1 403")


# -- the socket refuses other users -----------------------------------------------------------

PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect-refused", e.errno); sys.exit(0)
s.settimeout(10)
try:
    s.sendall(b"GET /v1/health HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
    data = s.recv(100)
except OSError:  # reset/broken pipe: refused without a reply
    data = b""
print("reply", repr(data[:12]))
"""


def _probe(sock: str, as_nobody: bool) -> str:
    import subprocess

    cmd = ["/usr/bin/python3", "-c", PROBE, sock]
    if as_nobody:
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a probe as nobody")
def test_socket_refuses_another_uid(admin_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = admin_proxy
    sock = str(proxy.extra["admin_socket"])
    home = Path(proxy.home.path)
    assert _probe(sock, as_nobody=False).startswith("reply b'HTTP/1.1 200")
    # As shipped: the 0700 home and the 0600 socket keep nobody out at the file system.
    assert _probe(sock, as_nobody=True).startswith("connect-refused")
    assert home.stat().st_mode & 0o777 == 0o700
    # Test-only: a hard link to the same socket in a directory nobody can reach, and the
    # inode opened to everyone. The file system now lets nobody connect; SO_PEERCRED must
    # still refuse, before any reply.
    import tempfile

    open_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(open_dir, 0o755)
    link = open_dir / "admin.sock"
    os.link(sock, link)
    os.chmod(sock, 0o666)
    try:
        out = _probe(str(link), as_nobody=True)
    finally:
        os.chmod(sock, 0o600)
        link.unlink()
        open_dir.rmdir()
    assert out == "reply b''", out
    assert "refused a connection from another user" in proxy.output()
    assert _probe(sock, as_nobody=False).startswith("reply b'HTTP/1.1 200")
