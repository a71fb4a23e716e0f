"""``session`` and ``unifi_dual`` (SPEC §4.1) through the real proxy, against upstreams with
a login route, session expiry and a 401 on stale credentials
(tests/harness/session_server.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.canary import make_canary
from tests.harness.session_server import SessionApp
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block

pytestmark = pytest.mark.integration

NPM_BODY = """'{"identity": "{username}", "secret": "{password}"}'"""
DUP_BODY = """'{"user": {"name": "{username}", "pass": "{password}"}}'"""


@pytest.fixture(scope="module")
def app() -> SessionApp:
    return SessionApp("svc-user", make_canary(), make_canary())


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, app: SessionApp) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("sessions"), handler=app).start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def proxy(start_proxy, upstream: Upstream, app: SessionApp):  # type: ignore[no-untyped-def]
    login = {"username": app.username, "password": app.password}
    toml = service_block("npm", "host_inject", "session", upstream.port,
                         login_url='"/npm/api/tokens"', login_body=NPM_BODY,
                         token_field='"token"')
    toml += service_block("dup", "host_inject", "session", upstream.port,
                          login_url='"/dup/login"', login_body=DUP_BODY, session_cookie="true")
    toml += service_block("unifi", "host_inject", "unifi_dual", upstream.port,
                          login_url='"/unifi/api/auth/login"')
    toml += service_block("badpw", "host_inject", "session", upstream.port,
                          login_url='"/npm/api/tokens"', login_body=NPM_BODY)
    secrets = {"npm": login, "dup": login, "unifi": {**login, "api_key": app.api_key},
               "badpw": {"username": app.username, "password": make_canary()}}
    return start_proxy(toml, secrets)


def test_session_token_login_on_first_use_then_reused(proxy, app: SessionApp) -> None:  # type: ignore[no-untyped-def]
    logins = app.logins["npm"]
    with agent_client(proxy) as c:
        a = c.get("https://npm.api.test/npm/api/nginx/proxy-hosts",
                  headers={"Authorization": "Bearer agent-own", "Cookie": "agent=1"})
        b = c.get("https://npm.api.test/npm/api/users")
    assert (a.status_code, b.status_code) == (200, 200), a.text
    assert app.logins["npm"] == logins + 1
    seen = a.json()["seen"]
    assert seen["authorization"] == "__vault.npm__"  # redacted on the way back
    assert seen["cookie"] is None  # the agent's own cookie was stripped


def test_session_expiry_relogs_in_once_and_retries_an_idempotent_request(
    proxy, app: SessionApp  # type: ignore[no-untyped-def]
) -> None:
    with agent_client(proxy) as c:
        assert c.get("https://npm.api.test/npm/api/a").status_code == 200
        logins, refused = app.logins["npm"], app.api_refused["npm"]
        app.expire_sessions()
        r = c.get("https://npm.api.test/npm/api/b")
        assert r.status_code == 200, r.text
        assert app.logins["npm"] == logins + 1 and app.api_refused["npm"] == refused + 1
        # A POST with a stale session gets the 401 back and is not resent...
        app.expire_sessions()
        bodies = len(app.received_bodies)
        p = c.post("https://npm.api.test/npm/api/c", json={"create": 1})
        assert p.status_code == 401
        assert len(app.received_bodies) == bodies
        # ...and the next request logs in again.
        assert c.get("https://npm.api.test/npm/api/d").status_code == 200
        assert app.logins["npm"] == logins + 2


def test_session_cookie(proxy, app: SessionApp) -> None:  # type: ignore[no-untyped-def]
    with agent_client(proxy) as c:
        r = c.get("https://dup.api.test/dup/api/v1/backups", headers={"Cookie": "session-id=x"})
        assert r.status_code == 200, r.text
        app.expire_sessions()
        again = c.get("https://dup.api.test/dup/api/v1/backups")
    assert again.status_code == 200
    assert app.logins["dup"] >= 2
    assert "session-id=" not in again.text + repr(again.headers.multi_items())
    assert "__vault.dup__" in again.json()["seen"]["cookie"]
    assert "set-cookie" not in again.headers


def test_unifi_api_key_then_session_fallback(proxy, app: SessionApp) -> None:  # type: ignore[no-untyped-def]
    with agent_client(proxy) as c:
        r = c.get("https://unifi.api.test/unifi/proxy/network/integration/v1/sites")
        assert r.status_code == 200, r.text
        assert app.logins["unifi"] == 0  # the API key alone
        assert r.json()["seen"]["api_key"] == "__vault.unifi__"
        app.api_key_valid = False  # e.g. the key was revoked: fall back to a session
        r = c.get("https://unifi.api.test/unifi/proxy/network/api/s/default/stat/health")
        assert r.status_code == 200, r.text
        assert app.logins["unifi"] == 1
        seen = r.json()["seen"]
        assert seen["api_key"] is None and seen["csrf"] == "__vault.unifi__"
        assert seen["cookie"] == "__vault.unifi__"
        # The session is kept; when it expires, one re-login.
        assert c.get("https://unifi.api.test/unifi/api/self").status_code == 200
        assert app.logins["unifi"] == 1
        app.expire_sessions()
        assert c.get("https://unifi.api.test/unifi/api/self").status_code == 200
        assert app.logins["unifi"] == 2


def test_a_refused_login_is_502_token_unavailable_and_nothing_is_forwarded(
    proxy, app: SessionApp  # type: ignore[no-untyped-def]
) -> None:
    refused, ok = app.refused_logins, sum(app.api_ok.values())
    api_refused = sum(app.api_refused.values())
    with agent_client(proxy) as c:
        r = c.get("https://badpw.api.test/npm/api/users")
    assert r.status_code == 502
    assert json.loads(r.text)["error"]["code"] == "token_unavailable"
    assert app.refused_logins == refused + 1
    assert sum(app.api_ok.values()) == ok and sum(app.api_refused.values()) == api_refused
    assert "answered 401" in proxy.output()
