"""The engine's layers a stage picks for a connection: today only the raw tunnel of an
unregistered host (TLS never terminated, nothing inspected). mitmproxy's layer classes are
engine internals; stages name what they want, this module builds it."""

from __future__ import annotations

from mitmproxy.proxy import layers
from mitmproxy.proxy.layer import NextLayer


def raw_tunnel(nextlayer: NextLayer) -> None:
    """Relay the connection's bytes untouched, never decoded as HTTP or TLS."""
    nextlayer.layer = layers.TCPLayer(nextlayer.context, ignore=True)
