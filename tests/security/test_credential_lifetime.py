"""Threat: a hostile upstream reflects a credential the proxy injected *earlier* -- a token
minted before many forced re-mints, a token another worker process minted, one cookie value
out of a session's jar, a secret value that was rotated since, or one from before a restart
-- hoping the redactor has forgotten it (SPEC §5: every value, for as long as it may be
valid, in every worker before any worker uses it).

The upstream (tests/harness/lifetime_server.py) mints tokens, logs sessions in, answers 401
on demand and reflects any credential it ever issued or received. Each case has a negative
twin: the same reflection through ``twin`` (a service that never injected the value) comes
back verbatim -- so the reflected value really is the credential, and only the redactor
stands between it and the agent -- or, with ``retired_redact_days = 0``, the old value of a
rotated secret comes back in clear.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import canary
from tests.harness.lifetime_server import LifetimeApp, value
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block
from tests.integration.test_workers import all_pids, fan_out

pytestmark = [pytest.mark.security, pytest.mark.integration]

Start = Callable[..., ProxyProcess]


@pytest.fixture(scope="module")
def app() -> LifetimeApp:
    return LifetimeApp()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, app: LifetimeApp) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("lifetime-upstream"), handler=app).start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Start]:
    procs: list[ProxyProcess] = []
    base = tmp_path_factory.mktemp("lifetime-proxies")
    canary.watch(base)

    def go(toml: str, secrets: dict[str, object], args: tuple[str, ...] = ()) -> ProxyProcess:
        d = base / f"p{len(procs)}"
        d.mkdir()
        home = ProxyHome.create(d, toml, secrets,  # type: ignore[arg-type]
                                files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
        p = ProxyProcess.start(home, args=args)
        procs.append(p)
        return p

    yield go
    for p in procs:
        p.stop()


def minted_services(port: int) -> str:
    return (
        service_block("oc", "host_inject", "oauth2_client_credentials", port,
                      token_url='"https://oc.api.test/token"')
        + service_block("sess", "host_inject", "session", port, login_url='"/login"',
                        session_cookie="true")
        + service_block("uni", "host_inject", "unifi_dual", port,
                        login_url='"/unifi/api/auth/login"')
        + service_block("twin", "host_inject", "bearer", port)
    )


def minted_secrets(app: LifetimeApp) -> dict[str, object]:
    login = {"username": "svc", "password": value()}
    return {"oc": {"client_id": "cid", "client_secret": value()}, "sess": login,
            "uni": {**login, "api_key": app.api_key}, "twin": value()}


@pytest.fixture(scope="module")
def proxy(start: Start, upstream: Upstream, app: LifetimeApp) -> ProxyProcess:
    return start(minted_services(upstream.port), minted_secrets(app))


def plain_client(proxy: ProxyProcess) -> httpx.Client:
    """The twins' client: it reads a credential in clear on purpose (they are not canaries)."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    return httpx.Client(proxy=proxy.url, verify=ctx, timeout=20)


def reflected(r: httpx.Response) -> tuple[str, str]:
    """(body value, X-Echo header) of a /reflect/... answer."""
    assert r.status_code == 200, r.text
    return r.json()["value"], r.headers.get("x-echo", "")


def assert_redacted(r: httpx.Response, secret: str, placeholder: str) -> None:
    text = r.text + repr(r.headers.multi_items())
    assert secret not in text
    assert reflected(r) == (placeholder, placeholder)


# --- minted tokens: every one until it expires ------------------------------------------------


def test_the_first_token_stays_redacted_after_many_forced_remints(
    proxy: ProxyProcess, app: LifetimeApp
) -> None:
    with agent_client(proxy) as c:
        assert c.get("https://oc.api.test/api/ok").status_code == 200
        first = app.issued[0]
        for _ in range(12):  # each: a 401, a re-mint and a resend, a 401 again
            assert c.get("https://oc.api.test/api/force401").status_code == 401
        assert len(app.issued) >= 12  # at least 11 re-mints since the first (old limit: 8)
        r = c.get("https://oc.api.test/reflect/first-token")
    assert_redacted(r, first, "__vault.oc__")


def test_twin_the_reflection_is_the_first_token_itself(
    proxy: ProxyProcess, app: LifetimeApp
) -> None:
    with agent_client(proxy) as c:
        assert c.get("https://oc.api.test/api/ok").status_code == 200
    with plain_client(proxy) as c:
        r = c.get("https://twin.api.test/reflect/first-token")
    assert reflected(r) == (app.issued[0], app.issued[0])  # what the upstream issued


# --- session cookies and CSRF tokens: each value on its own ---------------------------------


def test_a_session_cookie_value_echoed_alone_is_redacted(
    proxy: ProxyProcess, app: LifetimeApp
) -> None:
    with agent_client(proxy) as c:
        r = c.get("https://sess.api.test/cookies")  # httpbin's /cookies
        assert r.status_code == 200, r.text
        sid = app.sids[-1]
        assert sid not in r.text
        assert r.json()["cookies"] == {"sid": "__vault.sess__", "theme": "dark"}
        assert_redacted(c.get("https://sess.api.test/reflect/sid"), sid, "__vault.sess__")


def test_unifi_session_cookie_and_csrf_token_echoed_alone_are_redacted(
    proxy: ProxyProcess, app: LifetimeApp
) -> None:
    app.api_key_valid = False  # the key is refused: unifi_dual falls back to a session
    try:
        with agent_client(proxy) as c:
            r = c.get("https://uni.api.test/unifi/cookies")
            assert r.status_code == 200, r.text
            jwt = next(iter(app.unifi_cookies))
            assert jwt not in r.text and r.json()["cookies"] == {"TOKEN": "__vault.uni__"}
            assert_redacted(c.get("https://uni.api.test/unifi/reflect/csrf"), app.csrfs[-1],
                            "__vault.uni__")
    finally:
        app.api_key_valid = True


def test_twin_the_echoed_cookie_and_csrf_are_the_issued_values(
    proxy: ProxyProcess, app: LifetimeApp
) -> None:
    with agent_client(proxy) as c:
        assert c.get("https://sess.api.test/api/ok").status_code == 200
    with plain_client(proxy) as c:
        sid = reflected(c.get("https://twin.api.test/reflect/sid"))
        assert sid == (app.sids[-1], app.sids[-1])
        if app.csrfs:
            assert reflected(c.get("https://twin.api.test/reflect/csrf"))[0] == app.csrfs[-1]


# --- --workers 2: minted in one worker, reflected through the other -------------------------


def from_every_worker(p: ProxyProcess, host: str, path: str) -> list[httpx.Response]:
    """``fan_out``'s rounds, one request after another (each 401 its own re-mint), until every
    process has answered at least one. Every reply of every round is returned, to be
    checked."""
    replies, seen = fan_out(p, host, path, together=False)
    assert all(seen[pid] >= 1 for pid in all_pids(p)), f"a worker served nothing: {seen}"
    return replies


def test_a_token_minted_in_one_worker_is_redacted_in_every_worker(
    start: Start, upstream: Upstream, app: LifetimeApp
) -> None:
    p = start(minted_services(upstream.port), minted_secrets(app), args=("--workers", "2"))
    app.issued.clear()  # /reflect/first-token: the first one this proxy minted
    issued = 0
    with agent_client(p) as c:
        assert c.get("https://oc.api.test/api/ok").status_code == 200
    first = app.issued[0]
    # Re-mints asked for by both workers (each 401 drops the token wherever it was used).
    replies = from_every_worker(p, "oc.api.test", "/api/force401")
    assert {r.status_code for r in replies} == {401}
    assert len(app.issued) >= issued + 10  # re-mints (concurrent 401s share one)
    replies = from_every_worker(p, "oc.api.test", "/reflect/first-token")  # both answer
    for r in replies:
        assert_redacted(r, first, "__vault.oc__")
    for r in fan_out(p, "twin.api.test", "/reflect/first-token")[0]:  # twin: verbatim
        assert reflected(r) == (app.issued[0], app.issued[0])
    # A worker started later (here: the replacement of a killed one) knows them all too.
    (old,) = p.extra["worker_pids"]  # type: ignore[misc]
    os.kill(old, signal.SIGKILL)  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = json.loads((p.home.path / "run.json").read_text())["worker_pids"]
        if pids and pids != [old] and f"(pid {pids[0]}) serves" in p.output():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker not replaced:\n{p.output()}")
    replies = from_every_worker(p, "oc.api.test", "/reflect/first-token")
    for r in replies:
        assert_redacted(r, first, "__vault.oc__")


# --- retired values: after a rotation, and after a restart ------------------------------------


def rotation_services(port: int, name: str, days: int | None) -> str:
    head = "" if days is None else f"[proxy]\nretired_redact_days = {days}\n\n"
    return head + service_block(name, "host_inject", "bearer", port)


def rotate(p: ProxyProcess, name: str, new: str) -> None:
    token = (p.home.path / "admin-token").read_text().strip()
    with httpx.Client(base_url=str(p.extra["admin_url"]), trust_env=False, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as admin:
        r = admin.put(f"/v1/secrets/{name}", json={"value": new})
    assert r.status_code == 200, r.text


def reflect_first(p: ProxyProcess, name: str, client: Callable[..., httpx.Client]
                  ) -> httpx.Response:
    with client(p) as c:
        return c.get(f"https://{name}.api.test/reflect/first-bearer?of={name}.api.test")


def test_a_rotated_value_stays_redacted_also_after_a_restart(
    start: Start, upstream: Upstream, app: LifetimeApp
) -> None:
    old, new = value(), value()
    p = start(rotation_services(upstream.port, "rot", None), {"rot": old})
    with agent_client(p) as c:
        assert c.get("https://rot.api.test/api/ok").status_code == 200
    rotate(p, "rot", new)
    assert_redacted(reflect_first(p, "rot", agent_client), old, "__vault.rot__")
    assert app.bearers["rot.api.test"][-1] == new  # the new value is what goes upstream now
    assert p.stop() == 0
    again = ProxyProcess.start(p.home)  # the retired value comes back from keystore.enc
    try:
        assert_redacted(reflect_first(again, "rot", agent_client), old, "__vault.rot__")
    finally:
        again.stop()
    assert old.encode() not in (p.home.path / "keystore.enc").read_bytes()  # encrypted


def test_twin_with_retired_redact_days_0_the_old_value_comes_back(
    start: Start, upstream: Upstream, app: LifetimeApp
) -> None:
    old, new = value(), value()
    p = start(rotation_services(upstream.port, "rot0", 0), {"rot0": old})
    with agent_client(p) as c:
        assert c.get("https://rot0.api.test/api/ok").status_code == 200
    rotate(p, "rot0", new)
    assert reflected(reflect_first(p, "rot0", plain_client)) == (old, old)
    assert "SECURITY: [proxy] retired_redact_days = 0" in p.output()


def test_retired_redact_days_is_validated(tmp_path: Path, upstream: Upstream) -> None:
    from tests.harness.proxy import cli

    home = ProxyHome.create(tmp_path, rotation_services(upstream.port, "v", -1), {"v": value()},
                            files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
    r = cli(home.path, "check", check=False)
    assert r.returncode != 0
    assert "proxy.retired_redact_days: must be a whole number of days from 0 to 3650" in (
        r.stdout + r.stderr)
