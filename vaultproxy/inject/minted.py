"""Minted auth types (SPEC §4.1) as injection strategies.

The token comes from the token cache (mint/cache.py), fetched by the Mint stage before
Inject runs; Inject hands it here as ``value`` and the headers to set as ``fields`` (a
:class:`MintedHeaders`, built by :func:`credential`). Without one (nothing was minted) the
request is refused with ``502 token_unavailable``: a minted service is never forwarded
unauthenticated, and the keystore fields (client secret, refresh token, password) are never
put on a request by this strategy.

Placeholder mode: the agent marks a request by sending the service's placeholder in the
type's trigger header (``Authorization``; ``X-API-KEY`` for ``unifi_dual``). Such a
request gets exactly what host_inject would add (the marked header is replaced); one
without the placeholder gets nothing and mints nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from vaultproxy.config.models import Service
from vaultproxy.errors import TokenUnavailable
from vaultproxy.inject.strategy import Draft, header_safe
from vaultproxy.mint.base import MINTERS, TRIGGER_HEADER, Minted
from vaultproxy.mint.cache import Issued
from vaultproxy.secret import Secret


class MintedHeaders(dict[str, Secret]):
    """Header name -> value of a minted credential (only these are ever injected)."""


# id(Minted) -> (that Minted, its headers): built once per token, not once per request.
_built: dict[int, tuple[Minted, MintedHeaders]] = {}


def credential(issued: Issued, auth: str) -> tuple[Secret, MintedHeaders]:
    """(token, headers to set) for an issued token of a service with ``auth``."""
    minted = issued.minted
    known = _built.get(id(minted))
    if known is not None and known[0] is minted:
        return minted.token, known[1]
    if minted.headers:
        headers = MintedHeaders(minted.headers)
    else:
        _minter, header_for = MINTERS[auth]
        name, value = header_for(minted.token.reveal())
        headers = MintedHeaders({name: Secret(value)})
    if len(_built) >= 256:
        _built.clear()
    _built[id(minted)] = (minted, headers)
    return minted.token, headers


def trigger_header(service: Service) -> bytes:
    """The (lower-case) header a placeholder-mode agent puts the placeholder in."""
    return TRIGGER_HEADER.get(service.auth, "authorization").encode("ascii")


def is_minted(service: Service) -> bool:
    return service.auth in MINTERS


class MintedCredential:
    auth: ClassVar[str] = "minted"

    def placeholder_secret(
        self, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> bytes:
        # Minted types are never substituted into agent-chosen places (config refuses
        # substitute_in beyond "auth"; "auth" injects whole, see the module docstring).
        raise TokenUnavailable(f"service {service.name}: a minted token is never substituted")

    def inject(
        self, draft: Draft, service: Service, value: Secret | None, fields: Mapping[str, Secret]
    ) -> None:
        if value is None or not isinstance(fields, MintedHeaders) or not fields:
            raise TokenUnavailable(f"vaultproxy has no token for service {service.name}")
        for name, secret in fields.items():
            draft.set_header(name, header_safe(service, secret.reveal()))
