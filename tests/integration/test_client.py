"""`vaultproxy.client` against a running proxy: every method of `Client` and `AsyncClient`,
over admin.sock (`from_home`) and over TCP with the admin token; errors are one type
(`APIError`) carrying the proxy's code -- `locked` for a locked proxy."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import PASSWORD, ProxyHome, ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import service_block
from vaultproxy.client import APIError, AsyncClient, Client


def _handler(rec: Received) -> Reply:
    if rec.path == "/teapot":
        return 418, [(b"content-type", b"application/json")], [b'{"upstream": "teapot"}']
    body = {"path": rec.path, "query": rec.query, "method": rec.method,
            "auth": rec.header("authorization"), "x-note": rec.header("x-note"),
            "body": rec.body.decode()}
    return 200, [(b"content-type", b"application/json")], [json.dumps(body).encode()]


@dataclass
class Env:
    proxy: ProxyProcess
    upstream: Upstream
    secret: str

    @property
    def home(self) -> Path:
        return self.proxy.home.path

    def tcp(self) -> Client:
        token = (self.home / "admin-token").read_text().strip()
        return Client(str(self.proxy.extra["admin_url"]), token)

    def client(self, transport: str) -> Client:
        return Client.from_home(self.home) if transport == "uds" else self.tcp()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("client")
    canary.watch(base)
    up = Upstream(base, handler=_handler).start()
    secret = make_canary()
    held = '[{ method = "POST", path = "/hold/*", action = "approve" }]'
    toml = ("[approvals]\nhold_seconds = 20\n\n"
            + service_block("svc", "host_inject", "bearer", up.port)
            + service_block("held", "host_inject", "bearer", up.port, rules=held))
    home = ProxyHome.create(base, toml, {"svc": secret, "held": make_canary()},
                            files={"upstream-ca.pem": up.ca_file.read_bytes()})
    proxy = ProxyProcess.start(home)
    yield Env(proxy, up, secret)
    proxy.stop()
    up.stop()


@pytest.fixture(params=["uds", "tcp"])
def client(request: pytest.FixtureRequest, env: Env) -> Iterator[Client]:
    with env.client(request.param) as c:
        yield c


def test_status_and_services(client: Client) -> None:
    status = client.status()
    assert status["status"] == "ok" and status["locked"] is False and status["services"] == 2
    (svc,) = [s for s in client.services() if s["name"] == "svc"]
    assert svc["name"] == "svc" and svc["secret_present"] is True and svc["auth"] == "bearer"


def test_proxy_adds_the_credential_and_redacts_it(client: Client, env: Env) -> None:
    r = client.proxy("svc", "get", "/echo", headers={"X-Note": "hi"},
                     query={"q": "1", "multi": ["a", "b"]})
    assert r.status_code == 200
    got = r.json()
    received = env.upstream.received[-1]
    assert received.header("authorization") == f"Bearer {env.secret}"  # injected upstream
    assert got["auth"] == "Bearer __vault.svc__"  # ... and redacted on the way back
    assert env.secret not in r.text
    assert got["x-note"] == "hi" and got["method"] == "GET"
    assert received.query == "q=1&multi=a&multi=b"
    posted = client.proxy("svc", "POST", "/items", json={"n": 1}).json()
    assert json.loads(posted["body"]) == {"n": 1}
    assert client.proxy("svc", "PUT", "/raw", content=b"plain text").json()["body"] == \
        "plain text"
    # A service's own error is its answer, returned, not raised.
    teapot = client.proxy("svc", "GET", "/teapot")
    assert teapot.status_code == 418 and teapot.json() == {"upstream": "teapot"}


def test_proxy_refusals_raise_one_type_with_the_code(client: Client, env: Env) -> None:
    before = len(env.upstream.received)
    with pytest.raises(APIError) as e:
        client.proxy("svc", "GET", "/", headers={"Authorization": "Bearer mine"})
    assert (e.value.status, e.value.code) == (400, "auth_header_refused")
    with pytest.raises(APIError) as e:
        client.proxy("nope", "GET", "/")
    assert (e.value.status, e.value.code) == (404, "unknown_service")
    assert len(env.upstream.received) == before
    with pytest.raises(ValueError, match="json= or content="):
        client.proxy("svc", "POST", "/", json={}, content="x")
    with pytest.raises(ValueError, match="UTF-8"):
        client.proxy("svc", "POST", "/", content=b"\xff\xfe")


def test_secrets_write_only(client: Client) -> None:
    value = make_canary()
    info = client.set_secret("extra", fields={"username": "u", "password": value})
    assert info["name"] == "extra" and info["fields"] == ["password", "username"]
    listed = client.secrets()
    assert {s["name"] for s in listed} >= {"svc", "extra"}
    assert value not in json.dumps(listed)
    client.delete_secret("extra")
    assert "extra" not in {s["name"] for s in client.secrets()}
    with pytest.raises(APIError) as e:
        client.delete_secret("extra")
    assert (e.value.status, e.value.code) == (404, "not_found")
    with pytest.raises(APIError) as e:
        client.set_secret("../x", "v")  # one path segment: never another endpoint
    assert e.value.status in (404, 422)


def test_reload_audit_sources_sync(client: Client) -> None:
    assert client.reload() == {"before": 2, "after": 2}
    client.proxy("svc", "GET", "/audited")
    records = client.audit(limit=50, service="svc")
    assert any(r["path"] == "/audited" and r["service"] == "svc" for r in records)
    admin = [r for r in client.audit(limit=200) if r["event"] == "admin"]
    assert any(r["reason"] == "reload" for r in admin)
    assert client.sources()["sources"] == []
    assert client.sync()["ok"] is True


def test_invalid_reload_carries_the_problems(env: Env) -> None:
    services = env.home / "services.toml"
    original = services.read_text()
    services.write_text(original + "\n[proxy]\nbogus = 1\n")
    try:
        with Client.from_home(env.home) as c, pytest.raises(APIError) as e:
            c.reload()
    finally:
        services.write_text(original)
    assert (e.value.status, e.value.code) == (409, "config_invalid")
    assert any("bogus" in p for p in e.value.details["problems"])


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_approvals_and_decide_round_trip(client: Client, env: Env, decision: str) -> None:
    # A request held by an `approve` rule shows in approvals(); decide() releases it.
    result: dict[str, object] = {}

    def agent() -> None:
        with env.client("uds") as c:
            try:
                result["status"] = c.proxy("held", "POST", f"/hold/{decision}").status_code
            except APIError as e:
                result["code"] = e.code

    t = threading.Thread(target=agent)
    t.start()
    deadline = time.monotonic() + 15
    pending: list[dict[str, object]] = []
    while not pending and time.monotonic() < deadline:
        pending = [a for a in client.approvals()
                   if a["path"] == f"/hold/{decision}" and a["state"] == "pending"]
        time.sleep(0.05)
    assert pending, "the held request never showed in approvals()"
    client.decide(str(pending[0]["id"]), decision)  # type: ignore[arg-type]
    t.join(15)
    assert result == ({"status": 200} if decision == "approve" else {"code": "approval_denied"})
    with pytest.raises(APIError) as e:
        client.decide(str(pending[0]["id"]), "approve")
    assert (e.value.status, e.value.code) == (409, "approval_decided")
    with pytest.raises(APIError) as e:
        client.decide("no-such-approval", "approve", grant_seconds=60)
    assert (e.value.status, e.value.code) == (404, "approval_unknown")
    with pytest.raises(ValueError, match="approve"):
        client.decide("abc", "maybe")  # type: ignore[arg-type]


def _unlock_past_backoff(t: Client) -> None:
    """Unlock as the caller whose wrong password started a backoff (1 s, admin/ratelimit.py):
    its success ends the backoff, so no later test on this proxy inherits a 429 for that
    caller (on a fast proxy the next TCP unlock came within the second)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            t.unlock(PASSWORD)
            return
        except APIError as e:
            if e.code != "rate_limited" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_locked_proxy_raises_locked_and_unlock_restores(env: Env) -> None:
    with Client.from_home(env.home) as c, env.tcp() as t:
        c.lock()
        try:
            assert t.status()["locked"] is True
            for who in (c, t):
                with pytest.raises(APIError) as e:
                    who.proxy("svc", "GET", "/while-locked")
                assert (e.value.status, e.value.code) == (503, "locked")
                assert "unlock" in e.value.message
            with pytest.raises(APIError) as e:
                t.unlock("not the password")
            assert (e.value.status, e.value.code) == (403, "unlock_failed")
        finally:
            _unlock_past_backoff(t)
        assert c.status()["locked"] is False
        assert c.proxy("svc", "GET", "/after-unlock").status_code == 200


def test_wrong_token_and_no_proxy(env: Env, tmp_path: Path) -> None:
    with Client(str(env.proxy.extra["admin_url"]), "wrong") as c, pytest.raises(APIError) as e:
        c.services()
    assert e.value.status == 401 and e.value.code
    with Client.from_home(tmp_path) as c, pytest.raises(APIError) as e:
        c.status()
    assert e.value.status is None and e.value.code == "not_running"
    with Client(str(env.proxy.extra["admin_url"]), "wrong") as c:
        assert "wrong" not in repr(c)


def test_async_client_every_method(env: Env) -> None:
    async def scenario(c: AsyncClient) -> None:
        assert (await c.status())["locked"] is False
        assert [s["name"] for s in await c.services()] == ["svc", "held"]
        r = await c.proxy("svc", "GET", "/async", query={"a": "b"})
        assert r.status_code == 200 and r.json()["auth"] == "Bearer __vault.svc__"
        assert env.upstream.received[-1].header("authorization") == f"Bearer {env.secret}"
        assert (await c.proxy("svc", "POST", "/j", json=[1])).json()["body"] == "[1]"
        assert (await c.proxy("svc", "GET", "/teapot")).status_code == 418
        await c.set_secret("async-x", make_canary())
        assert "async-x" in {s["name"] for s in await c.secrets()}
        await c.delete_secret("async-x")
        assert await c.reload() == {"before": 2, "after": 2}
        assert any(r.get("path") == "/async" for r in await c.audit(limit=50))
        assert (await c.sources())["sources"] == []
        assert (await c.sync())["ok"] is True
        assert isinstance(await c.approvals(), list)
        with pytest.raises(APIError) as e:
            await c.decide("abc", "deny")
        assert (e.value.status, e.value.code) == (404, "approval_unknown")
        await c.lock()
        try:
            with pytest.raises(APIError) as e:
                await c.proxy("svc", "GET", "/locked")
            assert (e.value.status, e.value.code) == (503, "locked")
        finally:
            await c.unlock(PASSWORD.encode())
        assert (await c.status())["locked"] is False

    async def main() -> None:
        token = (env.home / "admin-token").read_text().strip()
        async with AsyncClient.from_home(env.home) as c:
            await scenario(c)
        async with AsyncClient(str(env.proxy.extra["admin_url"]), token) as c:
            await scenario(c)
        async with AsyncClient.from_home(env.home / "nowhere") as c:
            with pytest.raises(APIError) as e:
                await c.status()
            assert e.value.code == "not_running"

    asyncio.run(main())
