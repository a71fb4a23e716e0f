"""The upstream TLS connection for intercepted services: verified, SNI pinned to the CONNECT
host, trust = system CAs (+ the service's ca_cert). Mirrors mitmproxy's TlsConfig, whose
global trust store cannot vary per service (so it builds the context with mitmproxy's
``net.tls`` helpers: engine coupling, hence here). The name check is set through
seam/openssl.py."""

from __future__ import annotations

from pathlib import Path

from mitmproxy import connection, tls
from mitmproxy.net import tls as net_tls
from OpenSSL import SSL

from vaultproxy.seam import openssl


def start_server_tls(
    tls_start: tls.TlsData, sni: str, trust_file: Path, insecure: bool, http2: bool
) -> None:
    server = tls_start.conn
    assert isinstance(server, connection.Server)
    client = tls_start.context.client
    server.sni = sni
    if not server.alpn_offers:
        offers = tuple(client.alpn_offers or ())
        server.alpn_offers = offers if http2 else tuple(x for x in offers if x != b"h2")
    ssl_ctx = net_tls.create_proxy_server_context(
        method=net_tls.Method.TLS_CLIENT_METHOD,
        min_version=net_tls.Version.TLS1_2,
        max_version=net_tls.Version.UNBOUNDED,
        cipher_list=None,
        ecdh_curve=None,
        verify=net_tls.Verify.VERIFY_NONE if insecure else net_tls.Verify.VERIFY_PEER,
        ca_path=None,
        ca_pemfile=str(trust_file),
        client_cert=None,
        legacy_server_connect=False,
    )
    conn = SSL.Connection(ssl_ctx)
    openssl.verify_host(conn, sni)
    if server.alpn_offers:
        conn.set_alpn_protos(list(server.alpn_offers))
    conn.set_connect_state()
    tls_start.ssl_conn = conn
