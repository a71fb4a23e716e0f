"""The minter interface shared by every minted auth type (SPEC §4.1).

A minter turns a service's keystore fields into a token by talking to a token endpoint. It
never sees a flow and never dials by itself: ``MintContext.post`` is the egress-checked
transport (the service's ``allow_*``/``ca_cert`` policy), supplied by the token cache that owns
single-flight, expiry and write-back. A minter raises :class:`MintFailed` naming the endpoint's
status, never its body (a token endpoint may echo what it was sent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from vaultproxy.config.models import Service
from vaultproxy.secret import Secret


@dataclass(frozen=True)
class TokenResponse:
    """What the token endpoint answered. ``body`` is for the minter's parser only."""

    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


# post(url, headers, body) -> TokenResponse; dials under the service's egress policy.
Post = Callable[[str, Mapping[str, str], bytes], Awaitable[TokenResponse]]


@dataclass(frozen=True)
class MintContext:
    service: Service
    fields: Mapping[str, Secret]  # the keystore entry's fields (value under "value")
    post: Post


@dataclass(frozen=True)
class Minted:
    """A token and how long it lives. ``repr`` never shows a token or a rotated field."""

    token: Secret
    expires_at: float | None  # epoch seconds; None: the endpoint did not say
    # Keystore fields to persist before the token is used (a rotated refresh token).
    write_back: Mapping[str, Secret] | None = None


class MintFailed(Exception):
    """A mint did not produce a token. The message names the service and the endpoint's
    status (or the transport failure), never a body or a credential."""

    def __init__(self, service: str, status: int | None, reason: str) -> None:
        self.service = service
        self.status = status
        where = f"token endpoint answered {status}" if status is not None else "token endpoint"
        super().__init__(f"service {service!r}: {where}: {reason}")


Minter = Callable[[MintContext], Awaitable[Minted]]
# How a token goes on the request: (header name, value bytes) from the token bytes.
HeaderFor = Callable[[bytes], tuple[str, bytes]]


def bearer_header(token: bytes) -> tuple[str, bytes]:
    return "Authorization", b"Bearer " + token


MINTERS: dict[str, tuple[Minter, HeaderFor]] = {}


def register(auth: str, minter: Minter, header: HeaderFor = bearer_header) -> None:
    """Each minted type's module registers itself here (imported by ``vaultproxy.mint``)."""
    MINTERS[auth] = (minter, header)
