"""Minted credentials (SPEC §4.1): tokens the proxy obtains, caches and refreshes itself."""

# Each minted type registers itself in base.MINTERS on import.
from vaultproxy.mint import github_app, google  # noqa: F401
