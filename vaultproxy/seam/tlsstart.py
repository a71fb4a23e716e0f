"""The agent's TLS connection set up without converting its leaf certificate and key anew for
every connection (a speed patch of the seam).

mitmproxy's ``TlsConfig.tls_start_client`` makes the agent's ``SSL.Connection`` from a cached
context (``net.tls.create_client_proxy_context`` is an ``lru_cache``) and then hands it the
leaf of the certificate store's entry as ``cryptography`` objects: pyOpenSSL converts each,
every time, by serialising it to DER and parsing it back (``X509.from_cryptography``,
``PKey.from_cryptography_key``: ``public_bytes``/``d2i_X509`` and ``private_bytes``/
``d2i_PrivateKey``, which recomputes the EC public point), ~0.65 M instructions of a new agent
connection's ~9.5 M (bench/newconn.py). The entry is the same object for every connection
to the same names (the store keeps it), and so are its certificate and key. Before that,
``TlsConfig.get_cert`` turns the SNI and the server's address into x509 names through
``_ip_or_dns_name``, which tries ``ipaddress.ip_address`` first (two exceptions for a DNS
name): the result, an immutable name, is kept per text (at most ``NAME_CAP``).

The patched method is mitmproxy's, line for line, except that the two conversions are made
once per (entry, certificate, key) and kept: the connection gets the same certificate and
key through the same OpenSSL calls pyOpenSSL makes (``SSL_use_certificate``,
``SSL_use_PrivateKey``; OpenSSL takes a reference to each, as for a context's certificate),
and a failure of either raises what pyOpenSSL raises after it. The cache holds the entry it
was made for and is used only while that entry still holds the same certificate and key
objects, so a new certificate store (a reload, a rotated CA), a new leaf or an entry changed
in place is converted anew; it holds at most ``CAP`` entries (emptied when full) and is
emptied when the ``TlsConfig``'s certificate store is another than before (a reload, a rotated
CA), so no old leaf key is kept past its store.

mitmproxy's method is fingerprinted (``need.unchanged``): one that differs stays mitmproxy's,
with one WARNING. ``VAULTPROXY_FAST_TLS_START=0`` keeps it too (A/B). Installed before
seam/pool.py wraps the method (seam/defences.py). tests/unit/test_speed_tlsstart.py compares
both on real handshakes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import certs, connection, ctx
from mitmproxy.net import tls as net_tls
from OpenSSL import SSL, crypto

from vaultproxy.seam import need
from vaultproxy.seam.need import missing

logger = logging.getLogger(__name__)

ENV = "VAULTPROXY_FAST_TLS_START"
#: ``need.fingerprint`` of mitmproxy 12.3's ``TlsConfig.tls_start_client`` (source text)
FINGERPRINT = "d3093c897eeafc2f"
#: its ``need.code_fingerprint`` on ``need.CODE_MAGIC``'s bytecode
CODE_FINGERPRINT = "5dedf2992a630c7e"
#: entries whose converted certificate and key are kept
CAP = 256
#: ``need.fingerprint`` and ``need.code_fingerprint`` of mitmproxy 12.3's
#: ``tlsconfig._ip_or_dns_name``
NAME_FINGERPRINTS = ("917731da75e70544", "21b36b7f7766684e")
#: names whose GeneralName is kept
NAME_CAP = 1024

#: mitmproxy's own method, as ``TlsConfig`` had it before ``install`` (for the tests)
STOCK: dict[str, Callable[..., Any]] = {}
_installed = False

#: id(entry) -> (entry, its cryptography certificate, its key, X509, PKey)
_converted: dict[int, tuple[Any, Any, Any, Any, Any]] = {}
#: the certificate store the kept entries came from: another (a reload, a rotated CA)
#: empties the cache, so no old leaf key outlives its store here
_store: list[Any] = [None]

# mitmproxy's modules the method reads, imported by ``install`` (as seam/pool.py does: the
# addon package is imported on demand, seam/imports.py)
tlsconfig: Any = None
modes: Any = None


def _modules() -> None:
    global tlsconfig, modes
    if tlsconfig is None:
        from mitmproxy.addons import tlsconfig as tlsconfig_module
        from mitmproxy.proxy.layers import modes as modes_module

        tlsconfig, modes = tlsconfig_module, modes_module


def missing_symbol() -> str | None:
    _modules()
    lib = getattr(SSL, "_lib", None)
    return (missing(tlsconfig, "TlsConfig", "_default_ciphers", "alpn_select_callback",
                    "AppData", "_ip_or_dns_name")
            or missing(tlsconfig.TlsConfig, "tls_start_client", "get_cert")
            or missing(net_tls, "create_client_proxy_context", "Method", "Version",
                       "get_curve")
            or missing(modes, "HttpProxy")
            or missing(SSL, "_lib", "_raise_current_error")
            or missing(lib, "SSL_use_certificate", "SSL_use_PrivateKey")
            or missing(SSL.Connection(SSL.Context(SSL.TLS_METHOD)), "_ssl", "_context")
            or missing(SSL.Context, "_raise_passphrase_exception")
            or missing(crypto.X509, "from_cryptography")
            or missing(crypto.PKey, "from_cryptography_key")
            or missing(certs.Cert, "to_cryptography"))


#: name -> its x509.GeneralName, as ``_ip_or_dns_name`` made it
_names: dict[str, Any] = {}


def _make_names(stock: Callable[[str], Any]) -> Callable[[str], Any]:
    def _ip_or_dns_name(val: str) -> Any:
        """mitmproxy's ``_ip_or_dns_name``: a pure function of the text (an IPAddress, or
        the IDNA-encoded DNSName; both immutable), made once per name. What it raises is
        raised each time (nothing kept)."""
        found = _names.get(val) if type(val) is str else None
        if found is None:
            found = stock(val)
            if type(val) is str:
                if len(_names) >= NAME_CAP:
                    _names.clear()
                _names[val] = found
        return found

    return _ip_or_dns_name


def converted(entry: certs.CertStoreEntry) -> tuple[Any, Any, Any, Any, Any]:
    """``(entry, certificate, key, X509, PKey)``: the entry's leaf as pyOpenSSL objects,
    converted once while the entry holds the same certificate and key."""
    cert, key = entry.cert.to_cryptography(), entry.privatekey
    found = _converted.get(id(entry))
    if found is None or found[0] is not entry or found[1] is not cert or found[2] is not key:
        found = (entry, cert, key, crypto.X509.from_cryptography(cert),
                 crypto.PKey.from_cryptography_key(key))
        if len(_converted) >= CAP:
            _converted.clear()
        _converted[id(entry)] = found
    return found


def _use_leaf(conn: SSL.Connection, entry: certs.CertStoreEntry) -> None:
    """``conn.use_certificate(entry.cert.to_cryptography())`` and
    ``conn.use_privatekey(entry.privatekey)`` from the converted objects."""
    _, _, _, x509, pkey = converted(entry)
    lib = SSL._lib  # type: ignore[attr-defined]
    if not lib.SSL_use_certificate(conn._ssl, x509._x509):
        SSL._raise_current_error()  # type: ignore[attr-defined]
    if not lib.SSL_use_PrivateKey(conn._ssl, pkey._pkey):
        conn._context._raise_passphrase_exception()


def tls_start_client(self: Any, tls_start: Any) -> None:
    """mitmproxy's ``TlsConfig.tls_start_client`` with the leaf from ``converted``."""
    if tls_start.ssl_conn is not None:
        return  # a user addon has already provided the pyOpenSSL context.

    assert isinstance(tls_start.conn, connection.Client)

    client: connection.Client = tls_start.conn
    server: connection.Server = tls_start.context.server

    entry = self.get_cert(tls_start.context)
    if self.certstore is not _store[0]:
        _converted.clear()
        _store[0] = self.certstore

    if not client.cipher_list and ctx.options.ciphers_client:
        client.cipher_list = ctx.options.ciphers_client.split(":")
    # don't assign to client.cipher_list, doesn't need to be stored.
    cipher_list = client.cipher_list or tlsconfig._default_ciphers(
        net_tls.Version[ctx.options.tls_version_client_min]
    )

    extra_chain_certs = []
    if entry.chain_file is None and len(entry.chain_certs) > 1:
        extra_chain_certs.extend(entry.chain_certs)
    if ctx.options.add_upstream_certs_to_client_chain:
        extra_chain_certs.extend(server.certificate_list)

    ssl_ctx = net_tls.create_client_proxy_context(
        method=net_tls.Method.DTLS_SERVER_METHOD
        if tls_start.is_dtls
        else net_tls.Method.TLS_SERVER_METHOD,
        min_version=net_tls.Version[ctx.options.tls_version_client_min],
        max_version=net_tls.Version[ctx.options.tls_version_client_max],
        cipher_list=tuple(cipher_list),
        ecdh_curve=net_tls.get_curve(ctx.options.tls_ecdh_curve_client),
        chain_file=entry.chain_file,
        request_client_cert=ctx.options.request_client_cert,
        alpn_select_callback=tlsconfig.alpn_select_callback,
        extra_chain_certs=tuple(extra_chain_certs),
        dhparams=self.certstore.dhparams,
    )
    tls_start.ssl_conn = SSL.Connection(ssl_ctx)

    _use_leaf(tls_start.ssl_conn, entry)

    # Force HTTP/1 for secure web proxies, we currently don't support CONNECT over HTTP/2.
    if len(tls_start.context.layers) == 2 and isinstance(
        tls_start.context.layers[0], modes.HttpProxy
    ):
        client_alpn: bytes | None = b"http/1.1"
    else:
        client_alpn = client.alpn

    tls_start.ssl_conn.set_app_data(
        tlsconfig.AppData(
            client_alpn=client_alpn,
            server_alpn=server.alpn,
            http2=ctx.options.http2,
        )
    )
    tls_start.ssl_conn.set_accept_state()


def install() -> bool:
    """Replace ``TlsConfig.tls_start_client`` if it is the one this was written against;
    False: it stays mitmproxy's (a symbol moved, its code changed, or switched off)."""
    global _installed
    if _installed:
        return True
    if not need.may_install(ENV, missing_symbol, logger, "the agent's TLS start stays mitmproxy's"):
        return False
    stock = tlsconfig.TlsConfig.tls_start_client
    if not need.unchanged(stock, FINGERPRINT, CODE_FINGERPRINT):
        logger.warning("mitmproxy's TlsConfig.tls_start_client is not the one vaultproxy's "
                       "fast TLS start was written against: it stays mitmproxy's (slower)")
        return False
    STOCK["tls_start_client"] = stock
    tlsconfig.TlsConfig.tls_start_client = tls_start_client  # type: ignore[method-assign]
    names = tlsconfig._ip_or_dns_name
    if need.unchanged(names, *NAME_FINGERPRINTS):
        STOCK["_ip_or_dns_name"] = names
        tlsconfig._ip_or_dns_name = _make_names(names)  # TlsConfig.get_cert's, 2-3 per leaf
    else:
        logger.warning("mitmproxy's tlsconfig._ip_or_dns_name is not the one vaultproxy's "
                       "name memo was written against: it stays mitmproxy's (slower)")
    _installed = True
    return True


def installed() -> bool:
    return _installed
