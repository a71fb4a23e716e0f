"""Minted credentials (SPEC §4.1): tokens the proxy obtains, caches and refreshes itself."""
