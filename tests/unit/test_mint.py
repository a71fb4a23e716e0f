"""Pure parts of minted credentials (SPEC §4.1): token answers, client authentication,
login bodies and cookies, what a minted strategy may put on a request."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from tests.canary import make_canary
from vaultproxy.errors import TokenUnavailable
from vaultproxy.inject.minted import MintedCredential, MintedHeaders, credential
from vaultproxy.inject.strategy import Draft
from vaultproxy.mint.base import Minted, MintFailed, TokenResponse
from vaultproxy.mint.cache import Issued, fresh_until
from vaultproxy.mint.login import _csrf_claim, cookies, dotted, header_of, login_body
from vaultproxy.mint.oauth2 import client_auth, token_answer
from vaultproxy.secret import Secret


class _Svc:
    """Only what these pure functions read of a Service."""

    name = "svc"
    secret_name = "svc"
    client_auth: str | None = None


def _answer(status: int, body: object) -> TokenResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return TokenResponse(status, {"content-type": "application/json"}, raw)


def test_token_answer_reads_token_expiry_and_rotated_refresh_token() -> None:
    access, refresh = make_canary(), make_canary()
    token, expires_at, rotated = token_answer(
        _Svc(),  # type: ignore[arg-type]
        _answer(200, {"access_token": access, "token_type": "bearer", "expires_in": 3600,
                      "refresh_token": refresh}),
    )
    assert (token, rotated) == (access, refresh)
    assert expires_at is not None and expires_at > 0


@pytest.mark.parametrize("body", [
    {"token_type": "Bearer"},  # no access_token
    {"access_token": "", "token_type": "Bearer"},
    {"access_token": "x" * 10, "token_type": "mac"},  # not a bearer token
    [1, 2],
    b"<html>not json</html>",
])
def test_token_answer_refuses_what_is_not_a_bearer_token(body: object) -> None:
    with pytest.raises(MintFailed):
        token_answer(_Svc(), _answer(200, body))  # type: ignore[arg-type]


def test_a_refused_exchange_names_the_status_never_the_body() -> None:
    echoed = make_canary()  # a token endpoint may echo what it was sent
    with pytest.raises(MintFailed) as err:
        token_answer(_Svc(), _answer(400, {"error": "invalid_grant", "echo": echoed}))  # type: ignore[arg-type]
    assert err.value.status == 400
    assert "400" in str(err.value)
    assert echoed not in str(err.value) and "invalid_grant" not in str(err.value)


def test_client_auth_basic_form_encodes_both_parts() -> None:
    form: dict[str, str] = {}
    svc = _Svc()
    svc.client_auth = "basic"
    headers = client_auth(svc, "id:with space", "s&cr=t+", form)  # type: ignore[arg-type]
    user, _, password = base64.b64decode(headers["Authorization"][6:]).decode().partition(":")
    assert (unquote_plus(user), unquote_plus(password)) == ("id:with space", "s&cr=t+")
    assert form == {}  # nothing in the body


def test_client_auth_post_puts_the_credentials_in_the_body() -> None:
    form: dict[str, str] = {}
    svc = _Svc()
    svc.client_auth = "post"
    headers = client_auth(svc, "cid", "csecret", form)  # type: ignore[arg-type]
    assert "Authorization" not in headers
    assert form == {"client_id": "cid", "client_secret": "csecret"}


def test_public_client_sends_only_its_id() -> None:
    form: dict[str, str] = {}
    headers = client_auth(_Svc(), "cid", None, form)  # type: ignore[arg-type]
    assert "Authorization" not in headers and form == {"client_id": "cid"}


def test_login_body_escapes_the_credentials_as_json() -> None:
    hostile = 'p"w", "admin": true, "x": "\\'
    body = login_body('{"identity": "{username}", "secret": "{password}", "n": 1}',
                      "me", hostile)
    assert json.loads(body) == {"identity": "me", "secret": hostile, "n": 1}


def test_login_body_default_and_nested_templates() -> None:
    assert json.loads(login_body(None, "u", "p")) == {"username": "u", "password": "p"}
    nested = login_body('{"user": {"name": "{username}", "pass": "{password}"}}', "u", "p")
    assert json.loads(nested) == {"user": {"name": "u", "pass": "p"}}


def test_cookies_keep_name_value_pairs_only() -> None:
    jar = cookies({"set-cookie": "sid=abc; Path=/; HttpOnly\ntheme=dark; Max-Age=5\nempty=; x"})
    assert jar == "sid=abc; theme=dark"


def test_dotted_paths() -> None:
    data = {"data": {"items": [{"token": "t1"}]}, "token": "top", "n": 5}
    assert dotted(data, "token") == "top"
    assert dotted(data, "data.items.0.token") == "t1"
    assert dotted(data, "n") is None and dotted(data, "data.missing") is None


def test_token_header_spec() -> None:
    assert header_of(None) == ("Authorization", "Bearer ")
    assert header_of("X-Auth-Token:") == ("X-Auth-Token", "")
    assert header_of("Authorization: Token") == ("Authorization", "Token ")


def test_unifi_csrf_claim_from_the_token_cookie() -> None:
    claims = base64.urlsafe_b64encode(b'{"csrfToken": "c-123"}').rstrip(b"=").decode()
    assert _csrf_claim(f"other=1; TOKEN=h.{claims}.s") == "c-123"
    assert _csrf_claim("TOKEN=not-a-jwt") is None


def test_minted_repr_never_shows_a_secret() -> None:
    token, refresh = make_canary(), make_canary()
    minted = Minted(Secret(token), 1.0, {"refresh_token": Secret(refresh)},
                    headers=(("Cookie", Secret("sid=" + token)),))
    issued = Issued("svc", 1, minted, "minted", None)
    for text in (repr(minted), str(minted), repr(issued)):
        assert token not in text and refresh not in text
    assert set(minted.secrets()) == {token.encode(), refresh.encode(), b"sid=" + token.encode()}


def test_the_minted_strategy_never_puts_keystore_fields_on_a_request() -> None:
    """Without a minted token (a MintedHeaders), the strategy refuses: the client secret or
    refresh token of the entry can never be injected by mistake."""
    fields = {"client_secret": Secret(make_canary()), "refresh_token": Secret(make_canary())}
    draft = Draft(headers=[], path=b"/", query=None)
    with pytest.raises(TokenUnavailable):
        MintedCredential().inject(draft, _Svc(), Secret("v"), fields)  # type: ignore[arg-type]
    assert draft.headers == []


def test_the_minted_strategy_sets_exactly_the_minted_headers() -> None:
    token = make_canary()
    issued = Issued("svc", 1, Minted(Secret(token), None), "minted", None)
    value, headers = credential(issued, "oauth2_refresh")
    assert isinstance(headers, MintedHeaders)
    draft = Draft(headers=[(b"authorization", b"Bearer agent")], path=b"/", query=None)
    MintedCredential().inject(draft, _Svc(), value, headers)  # type: ignore[arg-type]
    assert draft.headers == [(b"Authorization", b"Bearer " + token.encode())]


def test_fresh_until_keeps_a_margin_of_at_most_a_tenth_of_the_lifetime() -> None:
    assert fresh_until(Minted(Secret("t"), None), 100.0) is None
    assert fresh_until(Minted(Secret("t"), 100.0 + 3600), 100.0) == 100.0 + 3600 - 60
    assert fresh_until(Minted(Secret("t"), 100.0 + 10), 100.0) == pytest.approx(109.0)


# -- the token endpoint's transport: the service's egress policy at dial time --------------

SERVICE_TOML = """\
[[service]]
name = "m"
hosts = ["api.example.com"]
mode = "host_inject"
auth = "oauth2_client_credentials"
token_url = "https://auth.example.com/token"
allow_loopback = true
"""


def _post(tmp_path: Path, answer: str) -> tuple[object, list[str]]:
    from vaultproxy.files.home import Home
    from vaultproxy.loaded.snapshot import Snapshot
    from vaultproxy.mint.transport import post_for
    from vaultproxy.net.outbound import UpstreamClients

    home = Home(tmp_path / "home")
    home.create()
    snap = Snapshot.build(home, SERVICE_TOML, frozenset())
    service = snap.registry.by_name("m")
    assert service is not None
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)  # a DNS answer this machine cannot give (the seam net/resolve.py has)
        return [answer]

    return post_for(snap, UpstreamClients(), service, resolver), asked


@pytest.mark.parametrize("answer", ["169.254.169.254", "10.0.0.7", "fd00:ec2::254"])
def test_a_token_endpoint_resolving_to_a_denied_address_is_never_dialled(
    tmp_path: Path, answer: str
) -> None:
    post, asked = _post(tmp_path, answer)
    with pytest.raises(MintFailed) as err:
        asyncio.run(post("https://auth.example.com/token", {}, b"x"))  # type: ignore[operator]
    assert asked == ["auth.example.com"]
    assert "destination denied" in str(err.value) and err.value.status is None


def test_twin_an_allowed_answer_is_dialled(tmp_path: Path) -> None:
    """Loopback is allowed for this service: the dial happens (and finds nobody on 443)."""
    post, asked = _post(tmp_path, "127.0.0.1")
    with pytest.raises(MintFailed) as err:
        asyncio.run(post("https://auth.example.com/token", {}, b"x"))  # type: ignore[operator]
    assert asked == ["auth.example.com"]
    assert "destination denied" not in str(err.value)
