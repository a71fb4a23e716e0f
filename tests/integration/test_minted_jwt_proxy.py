"""github_app and google_service_account through the real proxy: agent -> proxy -> an
upstream that checks the injected token, whose token endpoint verifies the proxy's JWT
(tests/harness/token_servers.py). The agent never sees the token or the key: the issued
tokens are canaries, an echo route reflects what the upstream got, and every reply is
scanned. Twins: a keystore key the endpoint does not know gets ``502 token_unavailable``
and nothing is forwarded; the agent's own credential never reaches the upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests import canary
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.harness.token_servers import (
    GitHubAppEndpoint,
    GoogleTokenEndpoint,
    RsaKey,
    google_key_file,
)
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import agent_client

pytestmark = pytest.mark.integration

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
EMAIL = "robot@vaultproxy-test.iam.gserviceaccount.com"

SERVICES = """
[[service]]
name = "gh"
hosts = ["gh.api.test"]
mode = "host_inject"
auth = "github_app"
api_url = "https://gh.api.test"
connect_to = "127.0.0.1:{gh}"
allow_loopback = true
ca_cert = "upstream-ca.pem"

[[service]]
name = "gh-bad"
hosts = ["gh-bad.api.test"]
mode = "host_inject"
auth = "github_app"
api_url = "https://gh-bad.api.test"
connect_to = "127.0.0.1:{gh}"
allow_loopback = true
ca_cert = "upstream-ca.pem"

[[service]]
name = "gcp"
hosts = ["gcp.api.test"]
mode = "host_inject"
auth = "google_service_account"
scopes = {scopes}
connect_to = "127.0.0.1:{gcp}"
allow_loopback = true
ca_cert = "upstream-ca.pem"

[[service]]
name = "gcp-bad"
hosts = ["gcp-bad.api.test"]
mode = "host_inject"
auth = "google_service_account"
scopes = {scopes}
connect_to = "127.0.0.1:{gcp}"
allow_loopback = true
ca_cert = "upstream-ca.pem"
"""


def with_echo(handler: object) -> object:
    """The endpoint's handler, plus ``/echo`` which reflects the Authorization it got."""

    def route(rec: Received) -> Reply:
        reply: Reply = handler(rec)  # type: ignore[operator]
        if rec.path == "/echo" and reply[0] == 200:
            auth = (rec.header("authorization") or "").encode()
            return 200, [(b"content-type", b"text/plain")], [b"you sent: " + auth]
        if rec.path == "/installation" and reply[0] == 200:  # as GitHub answers: ids in JSON
            body = b'{"id": 7777777, "app_id": 424242, "target_id": 14242421}'
            return 200, [(b"content-type", b"application/json")], [body]
        return reply

    return route


@pytest.fixture(scope="module")
def key() -> RsaKey:
    return RsaKey.make()


@pytest.fixture(scope="module")
def github(
    tmp_path_factory: pytest.TempPathFactory, key: RsaKey
) -> Iterator[tuple[Upstream, GitHubAppEndpoint]]:
    ep = GitHubAppEndpoint(key, "424242", "7777777")
    up = Upstream(tmp_path_factory.mktemp("gh"))
    up.handler = with_echo(ep.handler)  # type: ignore[assignment]
    up.start()
    yield up, ep
    up.stop()


@pytest.fixture(scope="module")
def google(
    tmp_path_factory: pytest.TempPathFactory, key: RsaKey
) -> Iterator[tuple[Upstream, GoogleTokenEndpoint]]:
    ep = GoogleTokenEndpoint(key, "https://gcp.api.test/token", EMAIL, SCOPES, echo_errors=True,
                             also_audiences=("https://gcp-bad.api.test/token",))
    up = Upstream(tmp_path_factory.mktemp("gcp"))
    up.handler = with_echo(ep.handler)  # type: ignore[assignment]
    up.start()
    yield up, ep
    up.stop()


@pytest.fixture(scope="module", params=["1", "2"], ids=["1-worker", "2-workers"])
def proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    key: RsaKey,
    github: tuple[Upstream, GitHubAppEndpoint],
    google: tuple[Upstream, GoogleTokenEndpoint],
) -> Iterator[ProxyProcess]:
    gh_up, _ = github
    gcp_up, gcp_ep = google
    other = RsaKey.make("not-the-app")
    base = tmp_path_factory.mktemp("minted-jwt")
    canary.watch(base)
    scopes = "[" + ", ".join(f'"{s}"' for s in SCOPES) + "]"
    gh_fields = {"app_id": "424242", "installation_id": "7777777"}
    home = ProxyHome.create(
        base,
        SERVICES.format(gh=gh_up.port, gcp=gcp_up.port, scopes=scopes),
        {
            "gh": {**gh_fields, "private_key": key.private_pem},
            "gh-bad": {**gh_fields, "private_key": other.private_pem},
            "gcp": {"json": google_key_file(key, gcp_ep.token_uri, EMAIL)},
            "gcp-bad": {"json": google_key_file(other, "https://gcp-bad.api.test/token", EMAIL)},
        },
        # Both upstreams' CAs in one trust file (each Upstream has its own trustme CA).
        files={"upstream-ca.pem": gh_up.ca_file.read_bytes() + gcp_up.ca_file.read_bytes()},
    )
    p = ProxyProcess.start(home, args=("--workers", request.param))
    yield p
    p.stop()


def _reasons(proxy: ProxyProcess, name: str, n: int) -> list[object]:
    """The audit ``reason`` of the service's injected requests, once ``n`` are written (a
    line is written after its reply is sent)."""
    deadline = time.monotonic() + 10
    while True:
        reasons = [e.get("reason") for e in proxy.audit()
                   if e.get("service") == name and e.get("outcome") == "injected"]
        if len(reasons) >= n or time.monotonic() > deadline:
            return reasons
        time.sleep(0.05)


def _key_lines(key: RsaKey) -> list[str]:
    return [line for line in key.private_pem.splitlines() if "-----" not in line]


@pytest.mark.parametrize(("name", "scheme"), [("gh", "token"), ("gcp", "Bearer")])
def test_minted_token_reaches_the_upstream_not_the_agent(
    proxy: ProxyProcess,
    github: tuple[Upstream, GitHubAppEndpoint],
    google: tuple[Upstream, GoogleTokenEndpoint],
    key: RsaKey,
    name: str,
    scheme: str,
) -> None:
    up, ep = github if name == "gh" else google
    issued = len(ep.issued)
    with agent_client(proxy) as client:
        first = client.get(f"https://{name}.api.test/repos/x",
                           headers={"Authorization": "Bearer agent-own-token"})
        echo = client.get(f"https://{name}.api.test/echo")
    assert first.status_code == 200, first.text[:300]
    assert echo.status_code == 200
    token = ep.issued[-1]
    got = [r.header("authorization") for r in up.received
           if not r.path.startswith(("/app/", "/token"))]
    assert got[-2:] == [f"{scheme} {token}"] * 2  # the agent's own token replaced
    assert len(ep.issued) == issued + 1  # one mint: the second request used the cache
    assert token not in echo.text and "__vault." + name + "__" in echo.text
    for line in _key_lines(key)[:3]:
        assert line not in first.text + echo.text
    assert _reasons(proxy, name, 2)[:2] == ["minted", "cached"]


@pytest.mark.parametrize("name", ["gh-bad", "gcp-bad"])
def test_key_the_endpoint_does_not_know_gets_token_unavailable(
    proxy: ProxyProcess,
    github: tuple[Upstream, GitHubAppEndpoint],
    google: tuple[Upstream, GoogleTokenEndpoint],
    name: str,
) -> None:
    up, ep = github if name.startswith("gh") else google
    refused = len(ep.refused)
    forwarded = [r for r in up.received if r.path == "/repos/y"]
    with agent_client(proxy) as client:
        r = client.get(f"https://{name}.api.test/repos/y")
    assert r.status_code == 502
    assert r.headers["x-vaultproxy-error"] == "token_unavailable"
    assert len(ep.refused) > refused  # the verifier saw the JWT and refused it
    assert ep.refused[-1].startswith("verify")  # for its signature
    assert [r for r in up.received if r.path == "/repos/y"] == forwarded  # nothing forwarded
    assert "eyJ" not in r.text and "assertion" not in r.text
    assert "eyJ" not in proxy.output()  # the endpoint's body (quoting the JWT) is not logged


def test_github_ids_are_not_redacted(proxy: ProxyProcess) -> None:
    """app_id and installation_id identify, they do not authenticate: the agent gets them
    as GitHub sent them (redacting them would corrupt the JSON numbers they appear in)."""
    with agent_client(proxy) as client:
        r = client.get("https://gh.api.test/installation")
    assert r.status_code == 200
    assert r.json() == {"id": 7777777, "app_id": 424242, "target_id": 14242421}
