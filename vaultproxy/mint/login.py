"""``session`` and ``unifi_dual`` (SPEC §4.1): a login on the service's own host.

``session``: POST ``login_body`` (JSON; every string ``{username}``/``{password}`` filled
in from the keystore entry, JSON-escaped because the template is parsed first) to
``login_url``. With ``session_cookie = true`` the cookies the login set are sent back as
``Cookie``; otherwise the token at ``token_field`` (a dotted path into the JSON answer,
default ``token``) goes in ``token_header`` (``"Name: Prefix"``, default
``Authorization: Bearer``). A session has no known expiry: a 401 drops it and the next
request logs in again.

``unifi_dual``: the entry's ``api_key`` as ``X-API-KEY`` first (no network). Once the
upstream refused it with a 401, a session login at ``login_url`` (default
``/api/auth/login``): its cookies plus ``X-CSRF-Token`` (the login's ``X-CSRF-Token``
header, else the ``csrfToken`` claim of the UniFi OS ``TOKEN`` cookie).

Only the status of a refused login is reported, never its body.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from vaultproxy.mint.base import (
    NEEDS,
    TRIGGER_HEADER,
    MintContext,
    Minted,
    MintFailed,
    register,
)
from vaultproxy.mint.oauth2 import need
from vaultproxy.secret import Secret

DEFAULT_BODY = '{"username": "{username}", "password": "{password}"}'
DEFAULT_HEADER = "Authorization: Bearer"
UNIFI_LOGIN = "/api/auth/login"
_JSON = {"Content-Type": "application/json", "Accept": "application/json"}


def fill(template: object, values: Mapping[str, str]) -> object:
    """``template`` (parsed JSON) with ``{name}`` in every string replaced by its value."""
    if isinstance(template, str):
        out = template
        for name, value in values.items():
            out = out.replace("{" + name + "}", value)
        return out
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    return template


def login_body(template: str | None, username: str, password: str) -> bytes:
    parsed = json.loads(template or DEFAULT_BODY)  # checked when services.toml is loaded
    return json.dumps(fill(parsed, {"username": username, "password": password})).encode()


def cookies(headers: Mapping[str, str]) -> str:
    """``name=value; ...`` of every cookie the answer set (attributes dropped)."""
    pairs = []
    for line in headers.get("set-cookie", "").split("\n"):
        pair = line.split(";", 1)[0].strip()
        if "=" in pair and pair.split("=", 1)[1]:
            pairs.append(pair)
    return "; ".join(pairs)


# A cookie value shorter than this is not redacted on its own ("theme=dark" would blank every
# "dark" in a response); a session id that short could be guessed anyway.
COOKIE_VALUE_MIN = 8


def cookie_values(jar: str) -> tuple[Secret, ...]:
    """Each cookie value of ``name=value; ...`` on its own, and as a client may see it
    (unquoted, percent-decoded), for the redactor (SPEC §5: each cookie value)."""
    out: list[str] = []
    for pair in jar.split(";"):
        value = pair.partition("=")[2].strip()
        forms = {value}
        if len(value) >= 2 and value[0] == value[-1] == '"':
            forms.add(value[1:-1])
        forms |= {unquote(f) for f in forms}
        out += [f for f in sorted(forms) if len(f) >= COOKIE_VALUE_MIN and f not in out]
    return tuple(Secret(v) for v in out)


def dotted(data: Any, path: str) -> str | None:
    for part in path.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data if isinstance(data, str) and data else None


def header_of(spec: str | None) -> tuple[str, str]:
    """``"Name: Prefix"`` -> (name, "Prefix ") ; ``"Name:"`` -> (name, "")."""
    name, _, prefix = (spec or DEFAULT_HEADER).partition(":")
    prefix = prefix.strip()
    return name.strip(), prefix + " " if prefix else ""


async def _login(
    ctx: MintContext, url: str, template: str | None
) -> tuple[bytes, Mapping[str, str]]:
    body = login_body(template, need(ctx, "username"), need(ctx, "password"))
    resp = await ctx.post(url, _JSON, body)
    if resp.status not in (200, 201):
        raise MintFailed(ctx.service.name, resp.status, "the login was refused")
    return resp.body, resp.headers


async def session_login(ctx: MintContext) -> Minted:
    service = ctx.service
    url = service.login_url or ""
    if not url:
        raise MintFailed(service.name, None, "login_url is not set")
    body, headers = await _login(ctx, url, service.login_body)
    if service.session_cookie:
        jar = cookies(headers)
        if not jar:
            raise MintFailed(service.name, 200, "the login set no cookie")
        return Minted(Secret(jar), None, headers=(("Cookie", Secret(jar)),),
                      redact_also=cookie_values(jar))
    try:
        data = json.loads(body)
    except ValueError:
        raise MintFailed(service.name, 200, "the login answer is not JSON") from None
    token = dotted(data, service.token_field or "token")
    if token is None:
        raise MintFailed(service.name, 200, "the login answer has no token at token_field")
    name, prefix = header_of(service.token_header)
    return Minted(Secret(token), None, headers=((name, Secret(prefix + token)),))


def _csrf_claim(jar: str) -> str | None:
    """The ``csrfToken`` claim of a UniFi OS ``TOKEN`` cookie (a JWT; read, not verified:
    the proxy only echoes it back to the host that issued it)."""
    for pair in jar.split("; "):
        name, _, value = pair.partition("=")
        if name != "TOKEN" or value.count(".") != 2:
            continue
        part = value.split(".")[1]
        try:
            claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except (ValueError, binascii.Error):
            return None
        csrf = claims.get("csrfToken") if isinstance(claims, dict) else None
        return csrf if isinstance(csrf, str) and csrf else None
    return None


async def unifi_dual(ctx: MintContext) -> Minted:
    service = ctx.service
    if ctx.previous is None:  # first use: the API key, no network
        key = Secret(need(ctx, "api_key"))
        return Minted(key, None, headers=(("X-API-KEY", key),))
    url = service.login_url or UNIFI_LOGIN
    _body, headers = await _login(ctx, url, None)
    jar = cookies(headers)
    if not jar:
        raise MintFailed(service.name, 200, "the login set no cookie")
    csrf = headers.get("x-csrf-token", "").split("\n")[0].strip() or _csrf_claim(jar)
    out = [("Cookie", Secret(jar))]
    if csrf:
        out.append(("X-CSRF-Token", Secret(csrf)))
    return Minted(Secret(jar), None, headers=tuple(out), redact_also=cookie_values(jar))


register("session", session_login)
register("unifi_dual", unifi_dual)
NEEDS["session"] = ("username", "password")
NEEDS["unifi_dual"] = ("api_key", "username", "password")
TRIGGER_HEADER["unifi_dual"] = "x-api-key"
