"""inject/: strip, inject (host_inject) and substitute (placeholder) on real mitmproxy requests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any, get_args
from urllib.parse import parse_qsl, quote

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from vaultproxy.config.models import AuthType, Service
from vaultproxy.errors import PlaceholderMisdirected, PlaceholderUnknown, SecretMissing
from vaultproxy.inject import (
    STRATEGIES,
    STRIP_HEADERS,
    body_context,
    placeholder_secret,
    prepare_request,
    substitute_body,
)
from vaultproxy.secret import Secret
from vaultproxy.values.placeholders import PlaceholderIndex

Canary = Callable[[], str]
PH = "__vault.svc__"
OTHER = "__vault.other__"
INDEX = PlaceholderIndex({PH: "svc", OTHER: "other"})
AGENT_JUNK = "agent-sent-junk"


def svc(**kw: Any) -> Service:
    base: dict[str, Any] = {"name": "svc", "hosts": ("api.example.com",)}
    base.update(kw)
    if base.get("auth") != "header":  # the model allows these only with their auth type
        base.pop("header_name", None)
        base.pop("prefix", None)
    if base.get("auth") != "query_param":
        base.pop("param_name", None)
    return Service(**base)


def req(path: str = "/v1/x", headers: list[tuple[str, str]] | None = None) -> http.Request:
    r = tutils.treq(path=path.encode(), headers=http.Headers())
    for k, v in headers or []:
        r.headers.add(k, v)
    return r


def snapshot(r: http.Request) -> Any:
    return r.get_state()  # type: ignore[no-untyped-call]


def junk_headers(extra: str | None = None) -> list[tuple[str, str]]:
    names = list(STRIP_HEADERS) + ([extra] if extra else [])
    return [(n, AGENT_JUNK) for n in names] + [("Accept", "application/json")]


def assert_no_junk(r: http.Request) -> None:
    assert AGENT_JUNK.encode() not in bytes(r.headers)
    assert r.headers.get("accept") == "application/json"


def secrets(canary: Canary) -> tuple[Secret, dict[str, Secret], str, str, str]:
    value, user, pw = canary(), canary(), canary()
    return Secret(value), {"username": Secret(user), "password": Secret(pw)}, value, user, pw


def test_one_strategy_per_auth_type() -> None:
    from vaultproxy.mint.base import MINTERS  # minted types: a minter, not a strategy

    for auth in get_args(AuthType):  # exactly one implementation each
        assert (auth in STRATEGIES) != (auth in MINTERS), auth
    assert set(STRATEGIES) <= set(get_args(AuthType))
    for auth, strategy in STRATEGIES.items():
        assert strategy.auth == auth


# --- host_inject -----------------------------------------------------------------------------


def test_host_inject_bearer(canary: Canary) -> None:
    value, fields, v, _, _ = secrets(canary)
    r = req(headers=junk_headers())
    res = prepare_request(r, svc(mode="host_inject", auth="bearer"), value, fields, INDEX)
    assert res.injected
    assert r.headers.get_all("authorization") == [f"Bearer {v}"]
    assert_no_junk(r)
    assert set(res.stripped) == set(STRIP_HEADERS)


def test_host_inject_header_with_prefix(canary: Canary) -> None:
    value, fields, v, _, _ = secrets(canary)
    r = req(headers=junk_headers("X-Goog-Api-Key"))
    s = svc(mode="host_inject", auth="header", header_name="X-Goog-Api-Key", prefix="Token ")
    assert prepare_request(r, s, value, fields, INDEX).injected
    assert r.headers.get_all("x-goog-api-key") == [f"Token {v}"]
    for name in STRIP_HEADERS:
        assert name not in r.headers
    assert_no_junk(r)


def test_host_inject_basic(canary: Canary) -> None:
    value, fields, _, user, pw = secrets(canary)
    r = req(headers=junk_headers())
    assert prepare_request(r, svc(mode="host_inject", auth="basic"), None, fields, INDEX).injected
    expected = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
    assert r.headers.get_all("authorization") == [expected]
    assert_no_junk(r)


def test_host_inject_query_param_replaces_agent_copies(canary: Canary) -> None:
    value, fields, v, _, _ = secrets(canary)
    r = req("/v1/x?a=1&key=mine&k%65y=smuggled&b=%2F+", headers=junk_headers())
    s = svc(mode="host_inject", auth="query_param", param_name="key")
    assert prepare_request(r, s, value, fields, INDEX).injected
    assert r.path == f"/v1/x?a=1&b=%2F+&key={quote(v, safe='')}"
    for name in STRIP_HEADERS:
        assert name not in r.headers


def test_host_inject_query_param_percent_encodes(canary: Canary) -> None:
    v = canary() + "&x=1 /"
    r = req("/v1/x")
    s = svc(mode="host_inject", auth="query_param", param_name="key")
    prepare_request(r, s, Secret(v), {}, INDEX)
    assert dict(parse_qsl(r.path.split("?", 1)[1])) == {"key": v}


@pytest.mark.parametrize(
    ("auth", "value", "fields"),
    [
        ("bearer", None, {}),
        ("bearer", "", {}),
        ("header", None, {}),
        ("query_param", None, {}),
        ("basic", None, {"password": "p"}),
        ("basic", None, {"username": "u"}),
        ("basic", None, {"username": "u:x", "password": "p"}),
    ],
)
def test_host_inject_secret_missing_changes_nothing(
    auth: str, value: str | None, fields: dict[str, str]
) -> None:
    s = svc(mode="host_inject", auth=auth, header_name="X-K", param_name="key")
    r = req("/v1/x?key=agent", headers=junk_headers())
    before = snapshot(r)
    with pytest.raises(SecretMissing):
        prepare_request(
            r,
            s,
            None if value is None else Secret(value),
            {k: Secret(x) for k, x in fields.items()},
            INDEX,
        )
    assert snapshot(r) == before


@pytest.mark.parametrize("bad", ["\r\nX-Evil: 1", "\n", "\x00"])
def test_header_injection_refused(bad: str, canary: Canary) -> None:
    r = req()
    before = snapshot(r)
    with pytest.raises(SecretMissing):
        prepare_request(
            r, svc(mode="host_inject", auth="bearer"), Secret(canary() + bad), {}, INDEX
        )
    assert snapshot(r) == before


# --- placeholder mode ------------------------------------------------------------------------


def test_placeholder_bearer(canary: Canary) -> None:
    value, fields, v, _, _ = secrets(canary)
    headers = [h for h in junk_headers() if h[0] != "authorization"]
    r = req(headers=[("Authorization", f"Bearer {PH}"), *headers])
    res = prepare_request(r, svc(mode="placeholder", auth="bearer"), value, fields, INDEX)
    assert res.injected and res.surfaces == ("auth",)
    assert r.headers.get_all("authorization") == [f"Bearer {v}"]
    assert_no_junk(r)


def test_placeholder_header(canary: Canary) -> None:
    """By default only the auth slot (header_name) is substituted; X-Api-Key, a strip-list
    header that is not this service's slot, is removed even though it carries the
    placeholder."""
    value, fields, v, _, _ = secrets(canary)
    r = req(headers=[("X-Api-Key", PH), ("X-Goog-Key", f"Token {PH}"), *junk_headers()])
    s = svc(mode="placeholder", auth="header", header_name="X-Goog-Key")
    assert prepare_request(r, s, value, fields, INDEX).injected
    assert "x-api-key" not in r.headers
    assert r.headers.get_all("x-goog-key") == [f"Token {v}"]
    assert_no_junk(r)


def test_placeholder_any_header_opt_in(canary: Canary) -> None:
    value, fields, v, _, _ = secrets(canary)
    r = req(headers=[("X-Api-Key", PH), ("X-Goog-Key", f"Token {PH}"), *junk_headers()])
    s = svc(mode="placeholder", auth="header", header_name="X-Goog-Key", substitute_in=("header",))
    res = prepare_request(r, s, value, fields, INDEX)
    assert res.surfaces == ("header",)
    assert r.headers.get_all("x-api-key") == [v]
    assert r.headers.get_all("x-goog-key") == [f"Token {v}"]


@pytest.mark.parametrize("name", ["X-Note", "X-Debug-Echo", "Referer", "User-Agent"])
def test_placeholder_outside_the_auth_slot_stays_a_placeholder(
    canary: Canary, name: str
) -> None:
    """The agent cannot choose where the secret lands: a placeholder in a header the upstream
    might store and show back is forwarded as the placeholder text."""
    value, fields, v, _, _ = secrets(canary)
    r = req(headers=[("Authorization", f"Bearer {PH}"), (name, f"note {PH}")])
    prepare_request(r, svc(mode="placeholder", auth="bearer"), value, fields, INDEX)
    assert r.headers[name] == f"note {PH}"
    assert r.headers["authorization"] == f"Bearer {v}"
    # negative twin: with the opt-in the same header carries the secret
    r = req(headers=[(name, f"note {PH}")])
    s = svc(mode="placeholder", auth="bearer", substitute_in=("header",))
    prepare_request(r, s, value, fields, INDEX)
    assert r.headers[name] == f"note {v}"


def test_placeholder_in_other_query_param_stays(canary: Canary) -> None:
    value, fields, v, _, _ = secrets(canary)
    s = svc(mode="placeholder", auth="query_param", param_name="key")
    r = req(f"/v1/x?key={PH}&note={PH}", headers=[])
    prepare_request(r, s, value, fields, INDEX)
    assert r.path == f"/v1/x?key={quote(v, safe='')}&note={PH}"
    s = svc(mode="placeholder", auth="query_param", param_name="key", substitute_in=("query",))
    r = req(f"/v1/x?key={PH}&note={PH}", headers=[])
    prepare_request(r, s, value, fields, INDEX)
    assert r.path == f"/v1/x?key={quote(v, safe='')}&note={quote(v, safe='')}"


@pytest.mark.parametrize("spelling", ["X_Api_Key", "x_api_key", "AUTHORIZATION", "Cookie"])
def test_strip_every_spelling(canary: Canary, spelling: str) -> None:
    """CGI-style upstreams read ``X_Api_Key`` as ``X-Api-Key``: stripped like it."""
    value, fields, _, _, _ = secrets(canary)
    r = req(headers=[(spelling, AGENT_JUNK)])
    prepare_request(r, svc(mode="host_inject", auth="bearer"), value, fields, INDEX)
    assert all(AGENT_JUNK.encode() not in v for _, v in r.headers.fields)


def test_placeholder_in_basic_header(canary: Canary) -> None:
    value, fields, _, _, pw = secrets(canary)
    basic = "Basic " + base64.b64encode(f"agentuser:{PH}".encode()).decode()
    r = req(headers=[("Authorization", basic), ("Authorization", AGENT_JUNK)])
    assert prepare_request(r, svc(mode="placeholder", auth="basic"), None, fields, INDEX).injected
    [got] = r.headers.get_all("authorization")
    scheme, b64 = got.split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(b64) == f"agentuser:{pw}".encode()


def test_placeholder_in_basic_header_of_bearer_service(canary: Canary) -> None:
    # git-style "x-access-token:<token>" Basic credential carrying a bearer placeholder
    value, _, v, _, _ = secrets(canary)
    basic = "basic " + base64.b64encode(f"x-access-token:{PH}".encode()).decode()
    r = req(headers=[("Authorization", basic)])
    prepare_request(r, svc(mode="placeholder", auth="bearer"), value, {}, INDEX)
    assert base64.b64decode(r.headers["authorization"].split()[1]) == f"x-access-token:{v}".encode()


def test_placeholder_query_param(canary: Canary) -> None:
    value, fields, v, _, _ = secrets(canary)
    r = req(f"/v1/x?key={PH}&key=agentkey&a=1", headers=junk_headers())
    s = svc(mode="placeholder", auth="query_param", param_name="key")
    res = prepare_request(r, s, value, fields, INDEX)
    assert res.injected and res.surfaces == ("auth",)
    assert r.path == f"/v1/x?key={quote(v, safe='')}&a=1"
    assert "query:key" in res.stripped
    for name in STRIP_HEADERS:
        assert name not in r.headers


@pytest.mark.parametrize("auth", ["bearer", "header", "basic", "query_param"])
def test_placeholder_absent_sends_no_credential(auth: str) -> None:
    s = svc(mode="placeholder", auth=auth, header_name="X-K", param_name="key")
    r = req("/v1/x?key=agentkey&a=1", headers=junk_headers("X-K" if auth == "header" else None))
    res = prepare_request(r, s, None, {}, INDEX)  # no secret needed: nothing to inject
    assert not res.injected
    assert_no_junk(r)
    assert "x-k" not in r.headers
    if auth == "query_param":
        assert r.path == "/v1/x?a=1"


def test_placeholder_path_opt_in(canary: Canary) -> None:
    value, _, v, _, _ = secrets(canary)
    v2 = v + "/x"
    r = req(f"/bot{PH}/send?q={PH}")
    s = svc(mode="placeholder", auth="bearer", substitute_in=("path",))
    res = prepare_request(r, s, Secret(v2), {}, INDEX)
    assert res.surfaces == ("path",)
    assert r.path == f"/bot{quote(v2, safe='')}/send?q={PH}"  # query not allowed: left as text


def test_placeholder_path_not_allowed_by_default(canary: Canary) -> None:
    value, _, _, _, _ = secrets(canary)
    r = req(f"/bot{PH}/send")
    res = prepare_request(r, svc(mode="placeholder", auth="bearer"), value, {}, INDEX)
    assert not res.injected and r.path == f"/bot{PH}/send"


def test_placeholder_header_surface_not_allowed_strips(canary: Canary) -> None:
    value, _, v, _, _ = secrets(canary)
    r = req(f"/x?key={PH}", headers=[("Authorization", f"Bearer {PH}"), ("X-Other", PH)])
    s = svc(mode="placeholder", auth="bearer", substitute_in=("query",))
    res = prepare_request(r, s, value, {}, INDEX)
    assert "authorization" not in r.headers
    assert r.headers["x-other"] == PH  # harmless text in a surface that is not allowed
    assert r.path == f"/x?key={v}"
    assert res.surfaces == ("query",)


def test_proxy_authorization_always_stripped(canary: Canary) -> None:
    value, _, _, _, _ = secrets(canary)
    r = req(headers=[("Proxy-Authorization", f"Bearer {PH}")])
    prepare_request(r, svc(mode="placeholder", auth="bearer"), value, {}, INDEX)
    assert "proxy-authorization" not in r.headers


def test_placeholder_present_but_secret_missing_changes_nothing() -> None:
    r = req(headers=[("Authorization", f"Bearer {PH}"), ("Cookie", AGENT_JUNK)])
    before = snapshot(r)
    with pytest.raises(SecretMissing):
        prepare_request(r, svc(mode="placeholder", auth="bearer"), None, {}, INDEX)
    assert snapshot(r) == before


def test_host_inject_leaves_placeholder_text(canary: Canary) -> None:
    value, _, v, _, _ = secrets(canary)
    r = req(f"/x?q={PH}", headers=[("Authorization", f"Bearer {PH}")])
    prepare_request(r, svc(mode="host_inject", auth="bearer"), value, {}, INDEX)
    assert r.headers.get_all("authorization") == [f"Bearer {v}"]
    assert r.path == f"/x?q={PH}"


# --- refusals happen before any mutation ------------------------------------------------------


REFUSED = [
    ("/x", [("Authorization", f"Bearer {OTHER}")], PlaceholderMisdirected),
    ("/x", [("X-Anything", OTHER)], PlaceholderMisdirected),
    (f"/x?k={OTHER}", [], PlaceholderMisdirected),
    ("/x?k=__vault%2Eother__", [], PlaceholderMisdirected),
    ("/x?k=" + "".join(f"%{c:02x}" for c in OTHER.encode()), [], PlaceholderMisdirected),
    ("/__vault%2eother__/x", [], PlaceholderMisdirected),
    (f"/{OTHER}/x", [], PlaceholderMisdirected),
    (
        "/x",
        [("Authorization", "Basic " + base64.b64encode(f"u:{OTHER}".encode()).decode())],
        PlaceholderMisdirected,
    ),
    ("/x", [(OTHER, "header-name-carrier")], PlaceholderMisdirected),
    ("/x", [("Authorization", "Bearer __vault.ghost__")], PlaceholderUnknown),
    ("/x?k=__vault%2Eghost__", [], PlaceholderUnknown),
]


@pytest.mark.parametrize("mode", ["placeholder", "host_inject"])
@pytest.mark.parametrize(("path", "headers", "error"), REFUSED)
def test_refused_before_any_change(
    mode: str, path: str, headers: list[tuple[str, str]], error: type[Exception], canary: Canary
) -> None:
    value, fields, _, _, _ = secrets(canary)
    r = req(path, headers=[("Authorization", f"Bearer {PH}"), ("Cookie", AGENT_JUNK), *headers])
    before = snapshot(r)
    with pytest.raises(error):
        prepare_request(r, svc(mode=mode, auth="bearer"), value, fields, INDEX)
    assert snapshot(r) == before


# --- body ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctype", "expected"),
    [
        ("application/json", "json"),
        ("application/json; charset=utf-8", "json"),
        ("application/vnd.api+json", "json"),
        ("application/x-www-form-urlencoded", "form"),
        ("multipart/form-data; boundary=x", "raw"),
        ("", "raw"),
    ],
)
def test_body_context(ctype: str, expected: str) -> None:
    assert body_context(ctype) == expected


def test_substitute_body_json_and_form(canary: Canary) -> None:
    v = canary() + '"\\ &+='
    body = json.dumps({"api_key": PH}).encode()
    out = substitute_body(body, "application/json", PH.encode(), v.encode())
    assert json.loads(out) == {"api_key": v}
    form = f"a=1&api_key={PH}".encode()
    out = substitute_body(form, "application/x-www-form-urlencoded", PH.encode(), v.encode())
    assert dict(parse_qsl(out.decode())) == {"a": "1", "api_key": v}
    assert substitute_body(PH.encode(), "text/plain", PH.encode(), v.encode()) == v.encode()


def test_placeholder_secret_per_auth(canary: Canary) -> None:
    value, fields, v, _, pw = secrets(canary)
    assert placeholder_secret(svc(mode="placeholder", auth="bearer"), value, fields) == v.encode()
    assert placeholder_secret(svc(mode="placeholder", auth="basic"), value, fields) == pw.encode()
