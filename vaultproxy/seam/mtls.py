"""The mutual-TLS listener's TLS, in pyOpenSSL as mitmproxy speaks it: the proxy protocol
inside a TLS connection whose client must present a certificate issued by ``client_ca``.

mitmproxy serves a TLS-wrapped ("secure web") proxy on a regular listener: its NextLayer
puts a ``ClientTLSLayer`` under the HTTP proxy layer when the first bytes are a ClientHello,
and asks ``tls_start_client`` for the connection. We answer that hook for the *outer*
handshake of the mTLS listener with our own context -- our server certificate, peer
verification against ``client_ca`` with a certificate required -- before mitmproxy's
TlsConfig would make one from the MITM CA (it leaves a connection alone once ``ssl_conn``
is set). A client without a certificate, or with one from another CA, fails the handshake:
nothing of the proxy protocol is read. The inner TLS of each CONNECT tunnel is mitmproxy's
as on the plain listener."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mitmproxy import connection, tls
from OpenSSL import SSL

from vaultproxy.seam.need import need

_VERIFY = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE


def _http11(_conn: SSL.Connection, offered: list[bytes]) -> Any:
    # CONNECT over HTTP/2 is not served by mitmproxy: the proxy connection speaks HTTP/1.1.
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def server_context(cert: Path, key: Path, client_ca: Path) -> SSL.Context:
    """TLS >= 1.2, our certificate chain, client certificates required from ``client_ca``.
    Raises OpenSSL.SSL.Error on an unreadable or mismatched file."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    ctx.check_privatekey()
    ctx.load_verify_locations(str(client_ca))
    ctx.load_client_ca(str(client_ca).encode())
    ctx.set_verify(_VERIFY, lambda _c, _x, _errno, _depth, ok: bool(ok))
    ctx.set_alpn_select_callback(_http11)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # every connection proves its certificate
    return ctx


def start_outer(data: tls.TlsData, ctx: SSL.Context) -> None:
    """Answer ``tls_start_client`` for the outer handshake with ``ctx``."""
    conn = SSL.Connection(ctx)
    conn.set_accept_state()
    data.ssl_conn = conn


def peer_cn(client: connection.Client) -> str | None:
    """The CN of the certificate the client proved (the handshake verified it)."""
    chain = need(client, "certificate_list")
    if not chain:
        return None
    cn = chain[0].cn
    return str(cn) if cn else None


def listener_of(client: connection.Client) -> tuple[str, int] | None:
    """The local address the client connected to."""
    sockname = need(client, "sockname")
    return (str(sockname[0]), int(sockname[1])) if sockname else None
