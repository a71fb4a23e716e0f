"""``oauth2_refresh`` and ``oauth2_client_credentials`` (SPEC §4.1, RFC 6749 §6 and §4.4).

``oauth2_refresh`` exchanges the keystore entry's ``refresh_token``; when the server rotates
it (a new ``refresh_token`` in the answer), the new one is handed back as ``write_back`` and
the token cache saves it before the access token is used.

``oauth2_client_credentials`` asks with ``client_id``/``client_secret``, plus the service's
``scope``, ``audience`` and ``token_params``.

Client authentication (``client_auth``): ``basic`` (RFC 6749 §2.3.1: both parts
form-encoded, then HTTP Basic) or ``post`` (in the form body). Unset: ``basic`` when the
entry has a ``client_secret``, else ``client_id`` alone in the body (a public client).

The answer must be ``200`` with a JSON object carrying a string ``access_token`` and, if it
names one, ``token_type`` Bearer. ``expires_in`` sets the expiry. Anything else is a
MintFailed naming the status only: the body may echo what was sent.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from urllib.parse import quote_plus, urlencode

from vaultproxy.config.models import Service
from vaultproxy.mint.base import (
    NEEDS,
    MintContext,
    Minted,
    MintFailed,
    TokenResponse,
    register,
)
from vaultproxy.secret import Secret

FORM = "application/x-www-form-urlencoded"


def need(ctx: MintContext, name: str) -> str:
    secret = ctx.fields.get(name)
    if secret is None or not secret:
        raise MintFailed(ctx.service.name, None,
                         f"keystore entry {ctx.service.secret_name!r} has no field {name!r}")
    return secret.reveal_str()


def _optional(ctx: MintContext, name: str) -> str | None:
    secret = ctx.fields.get(name)
    return secret.reveal_str() if secret else None


def client_auth(
    service: Service, client_id: str, client_secret: str | None, form: dict[str, str]
) -> dict[str, str]:
    """Headers for the token request; adds the client's credentials to ``form`` for post."""
    how = service.client_auth or ("basic" if client_secret else "post")
    headers = {"Content-Type": FORM, "Accept": "application/json"}
    if how == "basic" and client_secret is not None:
        pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    else:
        form["client_id"] = client_id
        if client_secret is not None:
            form["client_secret"] = client_secret
    return headers


def token_answer(service: Service, resp: TokenResponse) -> tuple[str, float | None, str | None]:
    """(access token, expires_at, refresh token or None) from a token endpoint's answer."""
    if resp.status != 200:
        raise MintFailed(service.name, resp.status, "the token request was refused")
    try:
        data = json.loads(resp.body)
    except ValueError:
        raise MintFailed(service.name, resp.status, "the answer is not JSON") from None
    if not isinstance(data, dict):
        raise MintFailed(service.name, resp.status, "the answer is not a JSON object")
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise MintFailed(service.name, resp.status, "the answer has no access_token")
    kind = data.get("token_type", "Bearer")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise MintFailed(service.name, resp.status, "the token_type is not Bearer")
    expires_in = data.get("expires_in")
    expires_at = None
    if isinstance(expires_in, int | float | str) and str(expires_in).isdigit():
        expires_at = time.time() + int(expires_in)
    refresh = data.get("refresh_token")
    return token, expires_at, refresh if isinstance(refresh, str) and refresh else None


async def _exchange(ctx: MintContext, form: dict[str, str], headers: Mapping[str, str]
                    ) -> tuple[str, float | None, str | None]:
    url = ctx.service.token_url or ""
    if not url:
        raise MintFailed(ctx.service.name, None, "token_url is not set")
    resp = await ctx.post(url, headers, urlencode(form).encode("ascii"))
    return token_answer(ctx.service, resp)


async def refresh_token(ctx: MintContext) -> Minted:
    service = ctx.service
    current = need(ctx, "refresh_token")
    form = {"grant_type": "refresh_token", "refresh_token": current}
    if service.scope:
        form["scope"] = service.scope
    headers = client_auth(service, need(ctx, "client_id"), _optional(ctx, "client_secret"), form)
    token, expires_at, rotated = await _exchange(ctx, form, headers)
    write_back = None
    if rotated is not None and rotated != current:
        write_back = {"refresh_token": Secret(rotated)}
    return Minted(Secret(token), expires_at, write_back)


async def client_credentials(ctx: MintContext) -> Minted:
    service = ctx.service
    form = {"grant_type": "client_credentials"}
    if service.scope:
        form["scope"] = service.scope
    if service.audience:
        form["audience"] = service.audience
    form.update(dict(service.token_params or ()))
    headers = client_auth(service, need(ctx, "client_id"), need(ctx, "client_secret"), form)
    token, expires_at, _refresh = await _exchange(ctx, form, headers)
    return Minted(Secret(token), expires_at)


register("oauth2_refresh", refresh_token)
register("oauth2_client_credentials", client_credentials)
NEEDS["oauth2_refresh"] = ("client_id", "refresh_token")
NEEDS["oauth2_client_credentials"] = ("client_id", "client_secret")
