"""The seam's speed patches: cheaper ways for mitmproxy to do what it does anyway.

None of them is a defence. Each checks that mitmproxy still has what it changes; if not,
the Master keeps mitmproxy's stock behaviour and one WARNING says which symbol moved, so an
upgrade can make the proxy slower, never different."""

from __future__ import annotations

import logging

from mitmproxy import addonmanager, http, master

from vaultproxy.seam import clienthello, connio, headers, objects, options, tlsio
from vaultproxy.seam.dispatch import IndexedAddonManager, missing_symbol
from vaultproxy.seam.need import missing

logger = logging.getLogger(__name__)


def _stock(what: str, symbol: str) -> None:
    logger.warning("mitmproxy has no %s: %s stays mitmproxy's own (slower)", symbol, what)


_no_field_type_check = objects.no_field_type_check  # (objects.py asks for this one)


def addon_manager(m: master.Master) -> addonmanager.AddonManager:
    """Give ``m`` the manager production runs: indexed dispatch, or mitmproxy's own."""
    symbol = missing_symbol() or missing(m.addons, "_configure_all")
    if symbol is not None:
        _stock("hook dispatch", symbol)
        return m.addons
    m.options.changed.disconnect(m.addons._configure_all)
    m.addons = IndexedAddonManager(m)
    return m.addons


def tune(m: master.Master) -> addonmanager.AddonManager:
    """Apply every speed patch to a fresh Master (before addons are added); its manager."""
    # mitmproxy re-checks the type of every field of every request and response it builds
    # (``MessageData.__post_init__``, defined only ``if __debug__``: a development check that
    # mitmproxy itself drops under ``python -O``). ~70 µs per flow, ~5% of the CPU of a 1 KB
    # request. This process is ours, so we drop that one check (asserts stay on).
    if __debug__ and missing(http.MessageData, "__post_init__") is None:
        http.MessageData.__post_init__ = _no_field_type_check  # type: ignore[method-assign,assignment]
    # Nothing in our chain implements mitmproxy's deprecated ``add_log`` event; its handler
    # would still format every log record and wake the event loop for it.
    symbol = missing(m, "_legacy_log_events")
    if symbol is None:
        m._legacy_log_events.uninstall()
    else:
        _stock("the legacy add_log handler", symbol)
    # Header lookups in one loop per call (seam/headers.py): ~25 per proxied request.
    if not headers.install():
        _stock("header lookup", headers.missing_symbol() or "Headers")
    # Hook objects checked once per class, flow ids without a UUID object (seam/objects.py).
    if not objects.install():
        _stock("hook and flow id construction", objects.missing_symbol() or "Hook")
    # TLS output drained without a WantReadError per read or write (seam/tlsio.py).
    if not tlsio.install():
        _stock("the TLS layer's output loop", tlsio.missing_symbol() or "TLSLayer")
    # The agent's ClientHello read in one pass, not by the kaitaistruct grammar
    # (seam/clienthello.py): once per new agent connection.
    clienthello.install()  # (its own WARNING if it stays mitmproxy's)
    # ``ctx.options.<name>`` without deepcopy of an atomic value (seam/options.py): ~32 per
    # new agent connection.
    options.install()  # (its own WARNING if it stays mitmproxy's)
    # Events handed to the layers and writers drained with fewer frames (seam/connio.py).
    if not connio.install():
        _stock("the connection handler's event loop", connio.missing_symbol() or "server")
    return addon_manager(m)
