"""Minted OAuth credentials (SPEC §4.1) through the real proxy, against a real authorization
server (authlib's server components, tests/harness/oauth_server.py) that rotates refresh
tokens and rejects a reused one."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import canary
from tests.harness.oauth_server import OAuthServer, Token
from tests.harness.proxy import PASSWORD, ProxyHome, ProxyProcess, cli
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block
from vaultproxy.files.home import Home
from vaultproxy.keystore import Keystore
from vaultproxy.secret import Secret

pytestmark = pytest.mark.integration


def oauth_block(name: str, server: OAuthServer, auth: str = "oauth2_refresh",
                mode: str = "host_inject", **extra: str) -> str:
    lines = [
        "[[service]]", f'name = "{name}"', f'hosts = ["{name}.oauth.api.test"]',
        f'mode = "{mode}"', f'auth = "{auth}"',
        f'connect_to = "127.0.0.1:{server.port}"', "allow_loopback = true",
        'ca_cert = "oauth-ca.pem"',
    ]
    extra.setdefault("token_url", f'"https://{name}.oauth.api.test/token"')
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


def stored_field(home: ProxyHome, entry: str, field: str) -> str | None:
    """What keystore.enc on disk holds (opened as a fresh process would)."""
    ks = Keystore.open(Home(home.path).keystore, Secret(PASSWORD))
    found = ks.get(entry)
    value = found.fields.get(field) if found is not None else None
    return value.reveal_str() if value is not None else None


def audited(proxy: ProxyProcess, pred: Callable[[dict[str, object]], bool], n: int = 1
            ) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    found: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        found = [e for e in proxy.audit() if e.get("event") == "request" and pred(e)]
        if len(found) >= n:
            break
        time.sleep(0.05)
    return found


@pytest.fixture(scope="module")
def oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthServer]:
    server = OAuthServer(tmp_path_factory.mktemp("oauth")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def make_proxy(tmp_path_factory: pytest.TempPathFactory, oauth: OAuthServer
               ) -> Iterator[Callable[..., ProxyProcess]]:
    procs: list[ProxyProcess] = []
    base_dir = tmp_path_factory.mktemp("minted-proxies")
    canary.watch(base_dir)
    made = iter(range(1000))

    def start(services: str, secrets: dict[str, object], *, args: tuple[str, ...] = (),
              files: dict[str, bytes] | None = None) -> ProxyProcess:
        base = base_dir / f"p{next(made)}"
        base.mkdir()
        home = ProxyHome.create(base, services, secrets,  # type: ignore[arg-type]
                                files={"oauth-ca.pem": oauth.ca_file.read_bytes(),
                                       **(files or {})})
        proc = ProxyProcess.start(home, args=args)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.stop()


def _refresh_secrets(oauth: OAuthServer) -> dict[str, str]:
    return {"client_id": oauth.client.client_id, "client_secret": oauth.client.client_secret,
            "refresh_token": oauth.seed_refresh_token()}


def test_refresh_exchange_injects_a_bearer_and_writes_the_rotated_token_back_first(
    make_proxy: Callable[..., ProxyProcess], oauth: OAuthServer
) -> None:
    secrets = _refresh_secrets(oauth)
    proxy = make_proxy(oauth_block("rt", oauth, scope='"read"'), {"rt": secrets})
    on_disk: list[bool] = []

    def check(tok: Token) -> None:  # runs when the API sees an access token
        on_disk.append(stored_field(proxy.home, "rt", "refresh_token") == tok.refresh_token)

    before = oauth.exchanges["refresh_token"]
    oauth.on_api = check
    try:
        with agent_client(proxy) as c:
            first = c.get("https://rt.oauth.api.test/api/things",
                          headers={"Authorization": "Bearer agent-own"})
            second = c.get("https://rt.oauth.api.test/api/things")
    finally:
        oauth.on_api = None
    assert first.status_code == 200, first.text + proxy.output()
    assert second.status_code == 200
    assert oauth.exchanges["refresh_token"] == before + 1  # the second one was cached
    used = oauth.api_seen[-1]
    assert used.refresh_token is not None and used.refresh_token != secrets["refresh_token"]
    # The rotated refresh token was on disk before the access token reached the API.
    assert on_disk == [True, True]
    assert oauth.last_auth_header is not None and oauth.last_auth_header.startswith("Basic ")
    assert oauth.last_form.get("scope") == "read"
    reasons = [e["reason"] for e in audited(proxy, lambda e: e["service"] == "rt", 2)]
    assert reasons[:2] == ["minted", "cached"]


def test_write_back_survives_a_sigkill_between_exchange_and_use(
    make_proxy: Callable[..., ProxyProcess], oauth: OAuthServer
) -> None:
    secrets = _refresh_secrets(oauth)
    proxy = make_proxy(oauth_block("kill", oauth), {"kill": secrets})
    oauth.slow_seconds = 5.0

    def agent() -> None:
        try:
            with agent_client(proxy) as c:
                c.get("https://kill.oauth.api.test/api/slow")
        except httpx.HTTPError:
            pass  # the proxy dies under it

    t = threading.Thread(target=agent, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    rotated = secrets["refresh_token"]
    while time.monotonic() < deadline and rotated == secrets["refresh_token"]:
        rotated = stored_field(proxy.home, "kill", "refresh_token") or rotated
    proxy.proc.kill()  # SIGKILL: right after the keystore write was observed
    proxy.proc.wait()
    oauth.slow_seconds = 0.0
    t.join(10)
    assert rotated != secrets["refresh_token"], "the rotated refresh token was never written"
    # The server rotated: the old refresh token is dead, only the written-back one works.
    refused = oauth.refused["refresh_token"]
    again = ProxyProcess.start(proxy.home)
    try:
        with agent_client(again) as c:
            r = c.get("https://kill.oauth.api.test/api/after-restart")
    finally:
        again.stop()
    assert r.status_code == 200, r.text + again.output()
    assert oauth.refused["refresh_token"] == refused
    assert oauth.api_seen[-1].refresh_token == stored_field(proxy.home, "kill", "refresh_token")


def test_a_used_refresh_token_is_502_token_unavailable_and_nothing_is_forwarded(
    make_proxy: Callable[..., ProxyProcess], oauth: OAuthServer
) -> None:
    """The negative twin of write-back: a proxy holding a refresh token the server has
    already rotated away (what a lost write-back would leave) gets no token."""
    secrets = _refresh_secrets(oauth)
    with httpx.Client(verify=str(oauth.ca_file)) as c:  # spend it directly
        r = c.post(f"https://127.0.0.1:{oauth.port}/token",
                   data={"grant_type": "refresh_token", "refresh_token": secrets["refresh_token"]},
                   auth=(oauth.client.client_id, oauth.client.client_secret))
    assert r.status_code == 200
    proxy = make_proxy(oauth_block("stale", oauth), {"stale": secrets})
    seen, refused = len(oauth.api_seen), oauth.refused["refresh_token"]
    api_refused = oauth.api_refused
    with agent_client(proxy) as c:
        r = c.get("https://stale.oauth.api.test/api/things")
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "token_unavailable"
    assert r.headers["x-vaultproxy-error"] == "token_unavailable"
    assert oauth.refused["refresh_token"] == refused + 1
    assert len(oauth.api_seen) == seen and oauth.api_refused == api_refused  # nothing sent
    assert "answered 400" in proxy.output()
    assert secrets["refresh_token"] not in r.text + proxy.output()
    assert audited(proxy, lambda e: e["reason"] == "token_unavailable")


def test_a_401_drops_the_token_and_an_idempotent_request_is_retried_once(
    make_proxy: Callable[..., ProxyProcess], oauth: OAuthServer
) -> None:
    proxy = make_proxy(oauth_block("re", oauth), {"re": _refresh_secrets(oauth)})
    with agent_client(proxy) as c:
        assert c.get("https://re.oauth.api.test/api/a").status_code == 200
        exchanges = oauth.exchanges["refresh_token"]
        oauth.revoke_all_access()  # the upstream now refuses the cached token
        refused = oauth.api_refused
        r = c.get("https://re.oauth.api.test/api/b")
        assert r.status_code == 200, r.text + proxy.output()
        assert oauth.api_refused == refused + 1  # one 401, then the resend with a new token
        assert oauth.exchanges["refresh_token"] == exchanges + 1
        # Non-idempotent: the 401 comes back, the POST is not sent again.
        oauth.revoke_all_access()
        seen = len(oauth.api_seen)
        p = c.post("https://re.oauth.api.test/api/c", json={"n": 1})
        assert p.status_code == 401
        assert len(oauth.api_seen) == seen and oauth.api_refused == refused + 2
        # ...but the token was dropped: the next request mints anew.
        assert c.get("https://re.oauth.api.test/api/d").status_code == 200
        assert oauth.exchanges["refresh_token"] == exchanges + 2
    reasons = {e["path"]: e["reason"] for e in audited(proxy, lambda e: e["service"] == "re", 4)}
    assert reasons["/api/b"] == "minted_retried"
    assert reasons["/api/d"] == "minted"


def test_fifty_concurrent_requests_with_an_expired_token_make_one_exchange(
    tmp_path_factory: pytest.TempPathFactory, make_proxy: Callable[..., ProxyProcess],
) -> None:
    """Across two worker processes: the supervisor owns the cache, one exchange."""
    short = OAuthServer(tmp_path_factory.mktemp("short"), expires_in=2).start()
    try:
        secrets = {"client_id": short.client.client_id,
                   "client_secret": short.client.client_secret,
                   "refresh_token": short.seed_refresh_token()}
        proxy = make_proxy(oauth_block("fifty", short), {"fifty": secrets},
                           args=("--workers", "2"),
                           files={"oauth-ca.pem": short.ca_file.read_bytes()})
        with agent_client(proxy) as c:
            assert c.get("https://fifty.oauth.api.test/api/warm").status_code == 200
        assert short.exchanges["refresh_token"] == 1
        time.sleep(2.5)  # let the access token expire (server and proxy agree it is stale)

        def one(i: int) -> int:
            with agent_client(proxy) as c:  # a connection each: spread over both workers
                return c.get(f"https://fifty.oauth.api.test/api/n{i}").status_code

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            codes = list(pool.map(one, range(50)))
        assert codes == [200] * 50, proxy.output()
        assert short.exchanges["refresh_token"] == 2  # exactly one more exchange
        assert short.refused["refresh_token"] == 0
        lines = audited(proxy, lambda e: str(e["path"]).startswith("/api/n"), 50)
        assert len(lines) == 50
        assert sorted(e["reason"] for e in lines) == ["cached"] * 49 + ["minted"]
    finally:
        short.stop()


def test_client_credentials_with_scope_audience_params_and_post_auth(
    make_proxy: Callable[..., ProxyProcess], oauth: OAuthServer
) -> None:
    creds = {"client_id": oauth.client.client_id, "client_secret": oauth.client.client_secret}
    toml = oauth_block("ccpost", oauth, "oauth2_client_credentials", scope='"read write"',
                       audience='"https://api.example"', client_auth='"post"',
                       token_params='{ resource = "urn:things" }')
    toml += oauth_block("ccbasic", oauth, "oauth2_client_credentials", client_auth='"basic"')
    proxy = make_proxy(toml, {"ccpost": creds, "ccbasic": creds})
    with agent_client(proxy) as c:
        r = c.get("https://ccpost.oauth.api.test/api/x")
        assert r.status_code == 200, r.text + proxy.output()
        form, header = dict(oauth.last_form), oauth.last_auth_header
        assert c.get("https://ccbasic.oauth.api.test/api/y").status_code == 200
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "read write" and form["audience"] == "https://api.example"
    assert form["resource"] == "urn:things"
    assert form["client_id"] == creds["client_id"] and header is None
    assert oauth.last_auth_header is not None and oauth.last_auth_header.startswith("Basic ")
    assert "client_secret" not in oauth.last_form


def test_a_token_endpoint_on_a_denied_address_is_refused(
    tmp_path: Path, oauth: OAuthServer
) -> None:
    """The token endpoint is judged by the service's egress policy: cloud metadata is never
    allowed (even with allow_loopback), so `check` and `run` refuse the file. (The same
    policy at dial time, for a name that resolves to a denied address: test_mint.py.)"""
    toml = oauth_block("meta", oauth, "oauth2_client_credentials",
                       token_url='"https://169.254.169.254/token"')
    home = ProxyHome.create(tmp_path, toml, {"meta": {"client_id": "c", "client_secret": "s"}},
                            files={"oauth-ca.pem": oauth.ca_file.read_bytes()})
    r = cli(home.path, "check", check=False)
    assert r.returncode == 1
    assert r.stdout.startswith(
        'service "meta" (service[0]).token_url: denied by the address policy'), r.stdout
    with pytest.raises(AssertionError, match="token_url: denied by the address policy"):
        ProxyProcess.start(home)
    # Twin: the same service with its token endpoint on its own (allowed) host starts.
    (home.path / "services.toml").write_text(oauth_block("meta", oauth,
                                                         "oauth2_client_credentials"))
    assert cli(home.path, "check", check=False).returncode == 0


def test_the_agent_never_receives_a_minted_token(
    make_proxy: Callable[..., ProxyProcess], oauth: OAuthServer
) -> None:
    """An upstream reflecting the access token (body and header): the agent gets the
    placeholder. The canary check scans every response the agent got as well."""
    proxy = make_proxy(oauth_block("echo", oauth), {"echo": _refresh_secrets(oauth)})
    with agent_client(proxy) as c:
        r = c.get("https://echo.oauth.api.test/api/echo")
    assert r.status_code == 200
    token = oauth.api_seen[-1].access_token
    refresh = oauth.api_seen[-1].refresh_token or ""
    seen = r.text + repr(r.headers.multi_items())
    assert token not in seen and refresh not in seen
    assert "__vault.echo__" in r.json()["saw"] and "__vault.echo__" in r.headers["x-echo"]
    # Twin: the same route asked directly with the token does reflect it.
    with httpx.Client(verify=str(oauth.ca_file)) as direct:
        d = direct.get(f"https://127.0.0.1:{oauth.port}/api/echo",
                       headers={"Authorization": f"Bearer {token}"})
    assert token in d.json()["saw"]


def test_placeholder_mode_mints_only_for_a_marked_request(
    make_proxy: Callable[..., ProxyProcess], oauth: OAuthServer
) -> None:
    proxy = make_proxy(oauth_block("ph", oauth, mode="placeholder"),
                       {"ph": _refresh_secrets(oauth)})
    exchanges = oauth.exchanges["refresh_token"]
    with agent_client(proxy) as c:
        unmarked = c.get("https://ph.oauth.api.test/api/x",
                         headers={"Authorization": "Bearer agent-own"})
        assert unmarked.status_code == 401  # nothing injected, the agent's own stripped
        assert oauth.exchanges["refresh_token"] == exchanges  # and nothing minted
        marked = c.get("https://ph.oauth.api.test/api/x",
                       headers={"Authorization": "Bearer __vault.ph__"})
    assert marked.status_code == 200, marked.text + proxy.output()
    assert oauth.exchanges["refresh_token"] == exchanges + 1


def test_minting_never_blocks_another_service(
    make_proxy: Callable[..., ProxyProcess], oauth: OAuthServer, tmp_path: Path
) -> None:
    """While a token request hangs at the token endpoint, a static service on the same
    (single-process) proxy is served."""
    upstream = Upstream(tmp_path).start()
    try:
        toml = oauth_block("hang", oauth, "oauth2_client_credentials")
        toml += service_block("static", "host_inject", "bearer", upstream.port)
        creds = {"client_id": oauth.client.client_id, "client_secret": oauth.client.client_secret}
        proxy = make_proxy(toml, {"hang": creds, "static": canary.make_canary()},
                           files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
        oauth.token_entered.clear()
        oauth.token_release = threading.Event()
        result: list[int] = []

        def minted() -> None:
            with agent_client(proxy) as c:
                result.append(c.get("https://hang.oauth.api.test/api/x").status_code)

        t = threading.Thread(target=minted, daemon=True)
        t.start()
        try:
            assert oauth.token_entered.wait(20), proxy.output()
            with agent_client(proxy) as c:  # the mint is in flight, held by the server
                r = c.get("https://static.api.test/ok")
            assert r.status_code == 200
            assert not result  # the minted request is still waiting
        finally:
            oauth.token_release.set()
            oauth.token_release = None
        t.join(20)
        assert result == [200]
    finally:
        upstream.stop()


def test_admin_post_proxy_uses_the_same_token_cache(
    make_proxy: Callable[..., ProxyProcess], oauth: OAuthServer
) -> None:
    proxy = make_proxy(oauth_block("adm", oauth), {"adm": _refresh_secrets(oauth)})
    admin = httpx.Client(
        base_url=str(proxy.extra["admin_url"]), timeout=30, trust_env=False,
        headers={"Authorization": "Bearer "
                 + (proxy.home.path / "admin-token").read_text().strip()},
    )
    exchanges = oauth.exchanges["refresh_token"]
    with admin, agent_client(proxy) as c:
        first = admin.post("/proxy", json={"service": "adm", "method": "GET",
                                           "path": "/api/echo"})
        assert first.status_code == 200, first.text + proxy.output()
        token = oauth.api_seen[-1].access_token
        assert token not in first.text and "__vault.adm__" in first.json()["saw"]
        assert c.get("https://adm.oauth.api.test/api/x").status_code == 200  # same token
        assert oauth.api_seen[-1].access_token == token
        assert oauth.exchanges["refresh_token"] == exchanges + 1
        oauth.revoke_all_access()
        refused = admin.post("/proxy", json={"service": "adm", "method": "GET", "path": "/api/y"})
        assert refused.status_code == 401  # no resend here, but the token is dropped
        again = admin.post("/proxy", json={"service": "adm", "method": "GET", "path": "/api/z"})
        assert again.status_code == 200
    assert oauth.exchanges["refresh_token"] == exchanges + 2
