"""Reading a token endpoint's answer, shared by the JWT-signing minters.

Everything here raises :class:`MintFailed` naming the service and the endpoint's status,
never the body: a token endpoint may echo what it was sent (an assertion, a key id)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from vaultproxy.mint.base import MintFailed, TokenResponse


def json_answer(service: str, resp: TokenResponse, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    """The endpoint's JSON object, if it answered one of ``ok``."""
    if resp.status not in ok:
        raise MintFailed(service, resp.status, "the token endpoint refused the request")
    try:
        data = json.loads(resp.body)
    except (ValueError, UnicodeDecodeError):
        raise MintFailed(service, resp.status, "the answer is not JSON") from None
    if not isinstance(data, dict):
        raise MintFailed(service, resp.status, "the answer is not a JSON object")
    return data


def token_of(service: str, status: int, data: dict[str, Any], key: str) -> bytes:
    """The token under ``key``: a non-empty printable ASCII string (it goes in a header)."""
    token = data.get(key)
    if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
        raise MintFailed(service, status, f"the answer has no usable {key!r}")
    return token.encode("ascii")


def expires_in(service: str, status: int, data: dict[str, Any], now: float) -> float | None:
    """``now + expires_in`` (seconds), None when the endpoint did not say."""
    value = data.get("expires_in")
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise MintFailed(service, status, "the answer's expires_in is not a positive number")
    return now + float(value)


def expires_at_iso(service: str, status: int, data: dict[str, Any]) -> float | None:
    """An ISO 8601 ``expires_at`` (GitHub's ``2016-07-11T22:14:10Z``) as epoch seconds."""
    value = data.get("expires_at")
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise MintFailed(service, status, "the answer's expires_at is not a timestamp") from None
    if when.tzinfo is None:
        raise MintFailed(service, status, "the answer's expires_at has no time zone")
    return when.timestamp()


def https_url(service: str, url: str, what: str) -> str:
    """``url`` if it is an https URL with a host; a credential never goes over plaintext."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise MintFailed(service, None, f"{what} must be an https URL")
    return url
