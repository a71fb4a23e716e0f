"""``auth = "google_service_account"``: a Google service-account key -> access token.

The keystore entry's ``json`` field is the key file Google issues (``client_email``,
``private_key``, ``private_key_id``, ``token_uri``). The minter signs an RS256 assertion with
pyjwt (RFC 7523: ``iss`` the client email, ``aud`` the key's ``token_uri``, ``scope`` the
service's ``scopes``, one hour) and exchanges it at ``token_uri`` with the JWT-bearer grant;
the answer's ``access_token`` goes on requests as ``Authorization: Bearer``. The private key
never leaves the proxy; the assertion goes only to ``token_uri`` (https, under the
service's egress policy).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from vaultproxy.mint.answer import expires_in, https_url, json_answer, token_of
from vaultproxy.mint.base import NEEDS, MintContext, Minted, MintFailed, register
from vaultproxy.secret import Secret

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # Google's maximum
clock: Callable[[], float] = time.time


def key_info(service: str, ctx: MintContext) -> dict[str, Any]:
    """The key file's fields this minter needs, checked (names only in errors)."""
    raw = ctx.fields.get("json")
    if raw is None or not raw:
        raise MintFailed(service, None, "keystore entry has no field 'json' (the key file)")
    try:
        info = json.loads(raw.reveal())
    except (ValueError, UnicodeDecodeError):
        raise MintFailed(service, None, "field 'json' is not JSON (store the key file)") from None
    if not isinstance(info, dict):
        raise MintFailed(service, None, "field 'json' is not a key file object")
    for name in ("client_email", "private_key", "token_uri"):
        if not isinstance(info.get(name), str) or not info[name]:
            raise MintFailed(service, None, f"the key file in field 'json' has no {name!r}")
    https_url(service, info["token_uri"], "the key file's token_uri")
    return info


def assertion(info: dict[str, Any], scopes: tuple[str, ...], now: float) -> str:
    import jwt  # pyjwt here, not at import: a worker never mints (~0.4 MiB each)

    issued = int(now)
    claims = {
        "iss": info["client_email"],
        "aud": info["token_uri"],
        "scope": " ".join(scopes),
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }
    headers = {"kid": info["private_key_id"]} if info.get("private_key_id") else None
    return jwt.encode(claims, info["private_key"], algorithm="RS256", headers=headers)


async def mint(ctx: MintContext) -> Minted:
    name = ctx.service.name
    info = key_info(name, ctx)
    scopes = tuple(getattr(ctx.service, "scopes", ()) or ())
    now = clock()
    import jwt

    try:
        signed = assertion(info, scopes, now)
    except (ValueError, TypeError, jwt.PyJWTError):
        # pyjwt/cryptography errors about a bad key may quote parts of it: say only that.
        raise MintFailed(name, None, "the key file's private_key is not a usable RSA key") from None
    body = urlencode({"grant_type": GRANT_TYPE, "assertion": signed}).encode("ascii")
    resp = await ctx.post(
        info["token_uri"],
        {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"},
        body,
    )
    data = json_answer(name, resp)
    return Minted(
        token=Secret(token_of(name, resp.status, data, "access_token")),
        expires_at=expires_in(name, resp.status, data, now),
    )


register("google_service_account", mint)
NEEDS["google_service_account"] = ("json",)
