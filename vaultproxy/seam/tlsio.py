"""mitmproxy's TLS layers drain their outgoing memory BIO without an exception at the end
(a speed patch of the seam).

``TLSLayer.tls_interact`` runs after every read and every write of every TLS connection
(twice per proxied request on the agent's side): it calls ``bio_read`` until pyOpenSSL
raises ``WantReadError``, an exception built and caught each time. The patched loop asks the
memory BIO how many bytes it holds (``BIO_get_mem_data``, what ``BIO_read`` reads from) and
reads while there are any: the same ``SendData`` commands, in the same sizes, and no
exception. A connection without memory BIOs (never in mitmproxy) or a pyOpenSSL without the
binding keeps mitmproxy's loop. tests/unit/test_speed_tlsio.py checks the count against
``bio_read``'s own answer."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from mitmproxy.proxy import commands
from mitmproxy.proxy.layers import tls
from OpenSSL import SSL

from vaultproxy.seam.need import missing

_SendData = commands.SendData


def missing_symbol() -> str | None:
    lib = getattr(SSL, "_lib", None)
    return (missing(tls, "TLSLayer") or missing(tls.TLSLayer, "tls_interact")
            or missing(SSL, "_lib", "_ffi") or missing(lib, "BIO_get_mem_data")
            or missing(SSL.Connection, "bio_read"))


def pending_out(conn: Any) -> int | None:
    """Bytes waiting in ``conn``'s outgoing memory BIO (None: it has none)."""
    bio = getattr(conn, "_from_ssl", None)
    if bio is None or type(conn) is not SSL.Connection:
        return None
    return int(SSL._lib.BIO_get_mem_data(bio, SSL._ffi.NULL))  # type: ignore[attr-defined]


def install() -> bool:
    if getattr(tls.TLSLayer, "_vaultproxy_fast", False):
        return True
    if missing_symbol() is not None:
        return False
    stock = tls.TLSLayer.tls_interact
    lib, null = SSL._lib, SSL._ffi.NULL  # type: ignore[attr-defined]

    def tls_interact(self: Any) -> Generator[Any, Any, None]:
        conn = self.tls
        bio = getattr(conn, "_from_ssl", None)
        if bio is None or type(conn) is not SSL.Connection:
            yield from stock(self)
            return
        while lib.BIO_get_mem_data(bio, null) > 0:
            yield _SendData(self.conn, conn.bio_read(65535))

    tls.TLSLayer.tls_interact = tls_interact  # type: ignore[method-assign]
    tls.TLSLayer._vaultproxy_fast = True  # type: ignore[attr-defined]
    return True
