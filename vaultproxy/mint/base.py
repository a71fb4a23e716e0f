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
    # The token this mint replaces (expired, or refused by the upstream with a 401), if any.
    # A minter may use it to choose its next step (unifi_dual: API key first, then a session).
    previous: Minted | None = None


@dataclass(frozen=True)
class Minted:
    """A token and how long it lives. ``repr`` never shows a token or a rotated field."""

    token: Secret
    expires_at: float | None  # epoch seconds; None: the endpoint did not say
    # Keystore fields to persist before the token is used (a rotated refresh token).
    write_back: Mapping[str, Secret] | None = None
    # The headers to set, when not just ``header(token)`` of the type's registration (a
    # session cookie plus a CSRF token, a per-service header name). Every value is a secret.
    headers: tuple[tuple[str, Secret], ...] = ()
    # Values to redact on their own that are only sent inside a longer header (each cookie
    # value of a ``Cookie`` jar): an upstream may echo one alone (an httpbin-style /cookies).
    redact_also: tuple[Secret, ...] = ()

    def __repr__(self) -> str:
        names = [n for n, _ in self.headers]
        return f"Minted(expires_at={self.expires_at!r}, headers={names!r})"

    def secrets(self) -> list[bytes]:
        """Every secret byte string this mint produced (for the response redactor)."""
        out = [self.token.reveal()]
        out += [v.reveal() for _, v in self.headers]
        out += [v.reveal() for v in (self.write_back or {}).values()]
        out += [v.reveal() for v in self.redact_also]
        return [s for s in out if len(s) >= 4]


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


# The keystore fields each minted type needs (``vaultproxy check`` reports a missing one).
NEEDS: dict[str, tuple[str, ...]] = {}

# The header the agent marks a placeholder-mode request with (SPEC §4.1, SERVICES.md), per
# type where it is not Authorization.
TRIGGER_HEADER: dict[str, str] = {}


def bearer_header(token: bytes) -> tuple[str, bytes]:
    return "Authorization", b"Bearer " + token


MINTERS: dict[str, tuple[Minter, HeaderFor]] = {}


def register(auth: str, minter: Minter, header: HeaderFor = bearer_header) -> None:
    """Each minted type's module registers itself here (imported by ``vaultproxy.mint``)."""
    MINTERS[auth] = (minter, header)
