"""The JWT-signing minters against endpoints that verify them with the real libraries:
google_service_account (google-auth's verifier) and github_app (pyjwt). The minter is
called directly with a ``post`` built on httpx over real TLS (the proxy wiring is tested in
test_minted_proxy.py). Each success has a twin where the verifier must refuse."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.canary import make_canary
from tests.harness.token_servers import (
    GitHubAppEndpoint,
    GoogleTokenEndpoint,
    RsaKey,
    google_key_file,
)
from tests.harness.upstream import Reply, Upstream
from vaultproxy.config.models import Service
from vaultproxy.mint import github_app, google
from vaultproxy.mint.base import MINTERS, MintContext, Minted, MintFailed, TokenResponse
from vaultproxy.mint.cache import fresh_until
from vaultproxy.secret import Secret

pytestmark = pytest.mark.integration

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


@pytest.fixture(scope="module")
def key() -> RsaKey:
    return RsaKey.make()


@pytest.fixture(scope="module")
def other_key() -> RsaKey:
    return RsaKey.make("someone-else")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """One TLS server; each test routes it to its endpoint with ``route``."""
    up = Upstream(tmp_path_factory.mktemp("tokens"))
    up.handler = lambda rec: (404, [], [b""])
    up.start()
    yield up
    up.stop()


def route(server: Upstream, handler: object) -> None:
    server.handler = handler  # type: ignore[assignment]


class Poster:
    """``MintContext.post`` over httpx, trusting only the test server's CA; counts calls."""

    def __init__(self, ca_file: Path) -> None:
        self.ctx = ssl.create_default_context(cafile=str(ca_file))
        self.calls: list[str] = []

    async def __call__(self, url: str, headers: Mapping[str, str], body: bytes) -> TokenResponse:
        self.calls.append(url)
        async with httpx.AsyncClient(verify=self.ctx, timeout=10) as client:
            r = await client.post(url, headers=dict(headers), content=body)
        return TokenResponse(r.status_code, dict(r.headers), r.content)


def _run(minter: object, ctx: MintContext) -> Minted:
    return asyncio.run(minter(ctx))  # type: ignore[operator]


def google_service(**extra: object) -> Service:
    return Service(name="gcp", hosts=("gcp.api.test",), mode="host_inject",
                   auth="google_service_account", scopes=SCOPES, **extra)  # type: ignore[arg-type]


def github_service(api_url: str) -> Service:
    return Service(name="gh", hosts=("gh.api.test",), mode="host_inject", auth="github_app",
                   api_url=api_url)  # type: ignore[arg-type]


# -- google_service_account -------------------------------------------------------------------


def _google(server: Upstream, key: RsaKey, **kw: object) -> tuple[GoogleTokenEndpoint, str]:
    uri = f"https://127.0.0.1:{server.port}/token"
    ep = GoogleTokenEndpoint(key, uri, "robot@vaultproxy-test.iam.gserviceaccount.com", SCOPES,
                             **kw)  # type: ignore[arg-type]
    route(server, ep.handler)
    return ep, uri


def test_google_assertion_verified_by_google_auth(server: Upstream, key: RsaKey) -> None:
    ep, uri = _google(server, key)
    post = Poster(server.ca_file)
    ctx = MintContext(google_service(),
                      {"json": Secret(google_key_file(key, uri, ep.email))}, post)
    minted = _run(google.mint, ctx)
    assert minted.token.reveal().decode() == ep.issued[-1]
    assert ep.refused == []
    assert minted.expires_at is not None and minted.expires_at > google.clock() + 3000
    assert post.calls == [uri]
    assert "google_service_account" in MINTERS
    assert MINTERS["google_service_account"][1](b"t") == ("Authorization", b"Bearer t")


def test_google_wrong_key_is_refused_by_the_verifier(
    server: Upstream, key: RsaKey, other_key: RsaKey
) -> None:
    """Negative twin: an assertion signed by another key fails google-auth's check, and
    the minter reports the status without the endpoint's body (which quotes it here)."""
    ep, uri = _google(server, key, echo_errors=True)
    signed_by_other = google_key_file(other_key, uri, ep.email)
    ctx = MintContext(google_service(), {"json": Secret(signed_by_other)}, Poster(server.ca_file))
    with pytest.raises(MintFailed) as e:
        _run(google.mint, ctx)
    assert e.value.status == 400
    assert ep.refused and ep.refused[-1].startswith("verify")
    assert "assertion" not in str(e.value) and "eyJ" not in str(e.value)


def test_google_wrong_scope_is_refused(server: Upstream, key: RsaKey) -> None:
    ep, uri = _google(server, key)
    svc = Service(name="gcp", hosts=("gcp.api.test",), mode="host_inject",
                  auth="google_service_account", scopes=("https://other/scope",))  # type: ignore[call-arg]
    ctx = MintContext(svc, {"json": Secret(google_key_file(key, uri, ep.email))},
                      Poster(server.ca_file))
    with pytest.raises(MintFailed):
        _run(google.mint, ctx)
    assert ep.refused[-1] == "claims"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda k: {**k, "token_uri": k["token_uri"].replace("https:", "http:")}, "https"),
        (lambda k: {kk: v for kk, v in k.items() if kk != "private_key"}, "private_key"),
        (lambda k: {**k, "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n"}, "RSA key"),
    ],
)
def test_google_bad_key_file_never_dials(
    server: Upstream, key: RsaKey, mutate: object, reason: str
) -> None:
    ep, uri = _google(server, key)
    info = json.loads(google_key_file(key, uri, ep.email))
    post = Poster(server.ca_file)
    ctx = MintContext(google_service(), {"json": Secret(json.dumps(mutate(info)))}, post)  # type: ignore[operator]
    with pytest.raises(MintFailed) as e:
        _run(google.mint, ctx)
    assert reason in str(e.value)
    assert post.calls == []


def test_google_no_json_field(server: Upstream) -> None:
    post = Poster(server.ca_file)
    with pytest.raises(MintFailed, match="'json'"):
        _run(google.mint, MintContext(google_service(), {}, post))
    assert post.calls == []


# -- github_app ---------------------------------------------------------------------------


def _github(server: Upstream, key: RsaKey, **kw: object) -> tuple[GitHubAppEndpoint, str]:
    ep = GitHubAppEndpoint(key, "424242", "7777777", **kw)  # type: ignore[arg-type]
    route(server, ep.handler)
    return ep, f"https://127.0.0.1:{server.port}"


def _gh_fields(key: RsaKey, app_id: str = "424242", inst: str = "7777777") -> dict[str, Secret]:
    return {"app_id": Secret(app_id), "private_key": Secret(key.private_pem),
            "installation_id": Secret(inst)}


def test_github_app_jwt_verified_by_pyjwt(server: Upstream, key: RsaKey) -> None:
    ep, api = _github(server, key)
    post = Poster(server.ca_file)
    minted = _run(github_app.mint, MintContext(github_service(api), _gh_fields(key), post))
    assert minted.token.reveal().decode() == ep.issued[-1]
    assert post.calls == [f"{api}/app/installations/7777777/access_tokens"]
    # The cache uses it until 5 minutes before GitHub's expires_at (an hour here).
    now = github_app.clock()
    until = fresh_until(minted, now)
    assert until is not None and abs(until - (now + 3600 - 300)) < 5
    header = MINTERS["github_app"][1]
    assert header(b"ghs_x") == ("Authorization", b"token ghs_x")


def test_github_app_wrong_key_is_refused(server: Upstream, key: RsaKey, other_key: RsaKey) -> None:
    """Negative twin: a JWT signed by a key that is not the App's fails pyjwt's check."""
    ep, api = _github(server, key)
    with pytest.raises(MintFailed) as e:
        _run(github_app.mint, MintContext(github_service(api), _gh_fields(other_key),
                                          Poster(server.ca_file)))
    assert e.value.status == 401
    assert ep.refused[-1] == "verify: InvalidSignatureError"


def test_github_app_wrong_app_id_is_refused(server: Upstream, key: RsaKey) -> None:
    ep, api = _github(server, key)
    with pytest.raises(MintFailed):
        _run(github_app.mint, MintContext(github_service(api), _gh_fields(key, app_id="1"),
                                          Poster(server.ca_file)))
    assert ep.refused[-1] == "verify: InvalidIssuerError"


@pytest.mark.parametrize("inst", ["../../user", "7777777/../../x", "", "12 3"])
def test_github_app_installation_id_cannot_steer_the_url(
    server: Upstream, key: RsaKey, inst: str
) -> None:
    _ep, api = _github(server, key)
    post = Poster(server.ca_file)
    with pytest.raises(MintFailed):
        _run(github_app.mint, MintContext(github_service(api), _gh_fields(key, inst=inst), post))
    assert post.calls == []


def test_github_app_plain_http_api_url_never_dials(server: Upstream, key: RsaKey) -> None:
    """services.toml refuses such an api_url (test_config_signed.py); the minter refuses it
    too, for a Service built without validation."""
    post = Poster(server.ca_file)
    svc = github_service(f"https://127.0.0.1:{server.port}").model_copy(
        update={"api_url": "http://127.0.0.1:1"})
    with pytest.raises(MintFailed, match="https"):
        _run(github_app.mint, MintContext(svc, _gh_fields(key), post))
    assert post.calls == []


def test_github_app_answer_without_token(server: Upstream, key: RsaKey) -> None:
    def handler(rec: object) -> Reply:
        return 201, [(b"content-type", b"application/json")], [b'{"expires_at": "x"}']

    route(server, handler)
    api = f"https://127.0.0.1:{server.port}"
    with pytest.raises(MintFailed, match="token"):
        _run(github_app.mint, MintContext(github_service(api), _gh_fields(key),
                                          Poster(server.ca_file)))


def test_minted_repr_hides_the_token() -> None:
    secret = make_canary()
    assert secret not in repr(Minted(Secret(secret), None))
