"""Minted credentials (SPEC §4.1): tokens the proxy obtains, caches and refreshes itself.

``base`` is the interface every type implements; each type's module registers its minter on
import, here. ``cache`` is the token cache (one owner per proxy), ``transport`` how token
endpoints are dialled, ``writeback`` how rotated fields reach the keystore.
"""

from vaultproxy.mint import github_app, google, login, oauth2  # noqa: F401 - each registers its types
from vaultproxy.mint.base import (
    MINTERS,
    NEEDS,
    TRIGGER_HEADER,
    MintContext,
    Minted,
    MintFailed,
    TokenResponse,
    register,
)
from vaultproxy.mint.cache import Issued, TokenCache, TokenSource

__all__ = [
    "MINTERS",
    "NEEDS",
    "TRIGGER_HEADER",
    "Issued",
    "MintContext",
    "MintFailed",
    "Minted",
    "TokenCache",
    "TokenResponse",
    "TokenSource",
    "register",
]
