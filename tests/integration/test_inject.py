"""The product's main job: the upstream receives exactly the real credential, the agent's own
auth headers are stripped, and placeholder mode without a placeholder sends none."""

from __future__ import annotations

import base64
import subprocess

import pytest
import requests

from tests.canary import make_canary
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block

STRIPPED = ("authorization", "proxy-authorization", "x-api-key", "x-plex-token", "cookie")

AGENT_JUNK = {
    "Authorization": "Bearer agent-own-token",
    "X-Api-Key": "agent-own-key",
    "X-Plex-Token": "agent-plex",
    "Cookie": "session=agent",
}

MATRIX = [
    ("hi-bearer", "host_inject", "bearer", {}),
    (
        "hi-header",
        "host_inject",
        "header",
        {"header_name": '"X-Service-Key"', "prefix": '"Token "'},
    ),
    ("hi-basic", "host_inject", "basic", {}),
    ("hi-query", "host_inject", "query_param", {"param_name": '"key"'}),
    ("ph-bearer", "placeholder", "bearer", {}),
    ("ph-header", "placeholder", "header", {"header_name": '"X-Service-Key"'}),
    ("ph-basic", "placeholder", "basic", {}),
    ("ph-query", "placeholder", "query_param", {"param_name": '"key"'}),
]


@pytest.fixture(scope="module")
def matrix_proxy(start_proxy, upstream: Upstream):  # type: ignore[no-untyped-def]
    toml = "".join(service_block(n, m, a, upstream.port, **x) for n, m, a, x in MATRIX)
    secrets: dict[str, object] = {}
    for name, _m, auth, _x in MATRIX:
        secrets[name] = (
            {"username": "svc-user", "password": make_canary()}
            if auth == "basic"
            else make_canary()
        )
    proxy = start_proxy(toml, secrets)
    return proxy, secrets


def _agent_request(name: str, mode: str, auth: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and query the agent sends: its own junk, plus the placeholder in placeholder mode."""
    headers = dict(AGENT_JUNK)
    params: dict[str, str] = {"q": "1"}
    if mode == "placeholder":
        ph = f"__vault.{name}__"
        if auth == "bearer":
            headers["Authorization"] = f"Bearer {ph}"
        elif auth == "header":
            headers["X-Service-Key"] = ph
        elif auth == "basic":
            headers["Authorization"] = (
                "Basic " + base64.b64encode(f"agent-user:{ph}".encode()).decode()
            )
        elif auth == "query_param":
            params["key"] = ph
    return headers, params


def _expected(name: str, mode: str, auth: str, secret: object) -> tuple[str, str, str]:
    """(where, name, exact value) the upstream must see."""
    if auth == "bearer":
        return "header", "authorization", f"Bearer {secret}"
    if auth == "header":
        prefix = "Token " if mode == "host_inject" else ""
        return "header", "x-service-key", f"{prefix}{secret}"
    if auth == "basic":
        assert isinstance(secret, dict)
        user = "svc-user" if mode == "host_inject" else "agent-user"
        raw = f"{user}:{secret['password']}".encode()
        return "header", "authorization", "Basic " + base64.b64encode(raw).decode()
    return "query", "key", str(secret)


@pytest.mark.parametrize(("name", "mode", "auth", "extra"), MATRIX, ids=[m[0] for m in MATRIX])
def test_each_mode_and_auth_injects_exactly(matrix_proxy, upstream, name, mode, auth, extra):  # type: ignore[no-untyped-def]
    proxy, secrets = matrix_proxy
    headers, params = _agent_request(name, mode, auth)
    with agent_client(proxy) as c:
        r = c.get(f"https://{name}.api.test/v1/things", headers=headers, params=params)
    assert r.status_code == 200, r.text
    rec = upstream.received[-1]
    where, key, value = _expected(name, mode, auth, secrets[name])
    if where == "header":
        assert rec.header(key) == value
    else:
        assert f"{key}={value}" in rec.query.split("&")
    # Every strip-list header the agent sent is gone (unless it is the injected one).
    for h in STRIPPED:
        if h != key:
            assert h not in rec.header_names(), h
    assert "agent-own" not in repr(rec.headers)


@pytest.mark.parametrize("name", ["ph-bearer", "ph-header", "ph-basic", "ph-query"])
def test_placeholder_mode_without_placeholder_sends_no_credential(matrix_proxy, upstream, name):  # type: ignore[no-untyped-def]
    proxy, secrets = matrix_proxy
    with agent_client(proxy) as c:
        r = c.get(f"https://{name}.api.test/plain", headers=AGENT_JUNK, params={"key": "mine"})
    assert r.status_code == 200
    rec = upstream.received[-1]
    for h in (*STRIPPED, "x-service-key"):
        assert h not in rec.header_names()
    secret = secrets[name]
    text = repr(rec.headers) + rec.query
    for s in secret.values() if isinstance(secret, dict) else [secret]:
        if s != "svc-user":
            assert s not in text


def test_curl_and_requests_get_the_same_injection(matrix_proxy, upstream):  # type: ignore[no-untyped-def]
    proxy, secrets = matrix_proxy
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--proxy",
            proxy.url,
            "--cacert",
            str(proxy.home.ca_cert),
            "-H",
            "Authorization: Bearer agent-own",
            "https://hi-bearer.api.test/curl",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert upstream.received[-1].header("authorization") == f"Bearer {secrets['hi-bearer']}"
    r = requests.get(
        "https://hi-query.api.test/requests",
        params={"key": "agent"},
        proxies={"https": proxy.url},
        verify=str(proxy.home.ca_cert),
        timeout=30,
    )
    assert r.status_code == 200
    assert f"key={secrets['hi-query']}" in upstream.received[-1].query


def test_unregistered_host_passes_through_with_its_own_certificate(start_proxy, upstream, canary):  # type: ignore[no-untyped-def]
    toml = f'[proxy]\npassthrough_allow = ["127.0.0.1:{upstream.port}"]\n\n' + service_block(
        "hi-bearer", "host_inject", "bearer", upstream.port
    )
    proxy = start_proxy(toml, {"hi-bearer": canary()})
    # The client trusts ONLY the upstream's CA: it works only if TLS is not terminated.
    r = requests.get(
        f"https://127.0.0.1:{upstream.port}/direct",
        headers={"Authorization": "Bearer agent-own"},
        proxies={"https": proxy.url},
        verify=str(upstream.ca_file),
        timeout=30,
    )
    assert r.status_code == 200
    assert upstream.received[-1].header("authorization") == "Bearer agent-own"
    # Negative twin: trusting only vaultproxy's CA fails for the passthrough host.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(
            f"https://127.0.0.1:{upstream.port}/direct",
            proxies={"https": proxy.url},
            verify=str(proxy.home.ca_cert),
            timeout=30,
        )


def test_audit_records_each_intercepted_flow(matrix_proxy, upstream):  # type: ignore[no-untyped-def]
    proxy, _ = matrix_proxy
    with agent_client(proxy) as c:
        c.get("https://hi-bearer.api.test/a/b?token=zzz")
    proxy.stop()
    records = [r for r in proxy.audit() if r["event"] == "request"]
    assert records, proxy.output()
    rec = records[-1]
    assert set(rec) >= {
        "ts",
        "event",
        "agent",
        "service",
        "mode",
        "method",
        "host",
        "path",
        "status",
        "duration_ms",
        "outcome",
        "reason",
    }
    assert (rec["service"], rec["method"], rec["path"], rec["status"]) == (
        "hi-bearer",
        "GET",
        "/a/b",
        200,
    )
    assert rec["host"] == "hi-bearer.api.test" and rec["outcome"] == "injected"
