"""``auth = "github_app"``: a GitHub App's private key -> an installation access token.

The keystore entry holds ``app_id``, ``private_key`` (the App's PEM) and ``installation_id``.
The minter signs the App JWT with pyjwt (RS256; ``iss`` the app id, ``iat`` a minute in the
past for clock drift, ``exp`` nine minutes ahead: GitHub allows at most ten), then
``POST {api_url}/app/installations/{installation_id}/access_tokens`` with it. The answer's
``token`` goes on requests as ``Authorization: token <token>`` and is cached until
``EARLY`` seconds before its ``expires_at`` (an hour after issue): a request never leaves
with a token about to lapse. The App key and JWT go only to ``api_url`` (https, under the
service's egress policy).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vaultproxy.mint.answer import expires_at_iso, https_url, json_answer, token_of
from vaultproxy.mint.base import NEEDS, MintContext, Minted, MintFailed, register
from vaultproxy.mint.cache import MARGIN
from vaultproxy.secret import Secret

DEFAULT_API_URL = "https://api.github.com"
EARLY = 300  # the token is treated as expired this many seconds before GitHub's expires_at
API_VERSION = "2022-11-28"
clock: Callable[[], float] = time.time


def _field(ctx: MintContext, name: str) -> bytes:
    value = ctx.fields.get(name)
    if value is None or not value:
        raise MintFailed(ctx.service.name, None, f"keystore entry has no field {name!r}")
    return value.reveal().strip()


def app_jwt(app_id: str, private_key: bytes, now: float) -> str:
    import jwt  # pyjwt here, not at import: a worker never mints (~0.4 MiB each)

    issued = int(now) - 60
    claims = {"iss": app_id, "iat": issued, "exp": issued + 600 - 60}
    return jwt.encode(claims, private_key, algorithm="RS256")


def tokens_url(api_url: str, installation_id: str) -> str:
    return f"{api_url.rstrip('/')}/app/installations/{installation_id}/access_tokens"


async def mint(ctx: MintContext) -> Minted:
    name = ctx.service.name
    app_id = _field(ctx, "app_id").decode("ascii", "replace")
    installation = _field(ctx, "installation_id").decode("ascii", "replace")
    # Both go into a URL or a claim: digits only (a client id "Iv1.<hex>" for app_id too).
    if not installation.isdigit():
        raise MintFailed(name, None, "field 'installation_id' must be the installation's number")
    if not (app_id.isdigit() or (app_id.startswith("Iv") and app_id.replace(".", "").isalnum())):
        raise MintFailed(name, None, "field 'app_id' must be the App's id or client id")
    api_url = https_url(name, getattr(ctx.service, "api_url", None) or DEFAULT_API_URL, "api_url")
    now = clock()
    import jwt

    try:
        signed = app_jwt(app_id, _field(ctx, "private_key"), now)
    except (ValueError, TypeError, jwt.PyJWTError):
        raise MintFailed(name, None, "field 'private_key' is not a usable RSA key") from None
    resp = await ctx.post(
        tokens_url(api_url, installation),
        {
            "authorization": f"Bearer {signed}",
            "accept": "application/vnd.github+json",
            "x-github-api-version": API_VERSION,
            "user-agent": "vaultproxy",
        },
        b"",
    )
    data = json_answer(name, resp, ok=(200, 201))
    token = token_of(name, resp.status, data, "token")
    expires = expires_at_iso(name, resp.status, data)
    # The cache replaces a token MARGIN before the expiry it is given: hand it the expiry
    # that makes it replace this one EARLY seconds before GitHub's.
    shifted = None if expires is None else expires - EARLY + MARGIN
    return Minted(token=Secret(token), expires_at=shifted)


def token_header(token: bytes) -> tuple[str, bytes]:
    return "Authorization", b"token " + token


register("github_app", mint, header=token_header)
NEEDS["github_app"] = ("app_id", "private_key", "installation_id")
