"""Upstream hostname verification through pyOpenSSL's raw OpenSSL bindings (``SSL._lib``).

pyOpenSSL has no public call that pins the name (or IP) an upstream certificate must carry,
so we set it on the connection's ``X509_VERIFY_PARAM`` as mitmproxy does. A defence: a
missing binding refuses start-up (``check()``, run by ``defences.install()``)."""

from __future__ import annotations

import ipaddress
from typing import Any

from OpenSSL import SSL

from vaultproxy.seam.need import EngineMismatch, need

# X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, as mitmproxy.
_HOSTFLAGS = 0x4 | 0x20
_CALLS = (
    "SSL_get0_param",
    "X509_VERIFY_PARAM_set_hostflags",
    "X509_VERIFY_PARAM_set1_host",
    "X509_VERIFY_PARAM_set1_ip",
)


def _lib() -> Any:
    lib = need(SSL, "_lib")
    for name in _CALLS:
        need(lib, name)
    return lib


def check() -> None:
    """Raise EngineMismatch if pyOpenSSL lost a binding ``verify_host`` needs."""
    _lib()


def verify_host(conn: SSL.Connection, sni: str) -> None:
    """Send ``sni`` and make the handshake fail unless the certificate is for it."""
    lib = _lib()
    param = lib.SSL_get0_param(need(conn, "_ssl"))
    lib.X509_VERIFY_PARAM_set_hostflags(param, _HOSTFLAGS)
    try:
        ip = ipaddress.ip_address(sni).packed
    except ValueError:
        name = sni.encode("idna")
        conn.set_tlsext_host_name(name)
        ok = lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))
    else:
        ok = lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))
    if ok != 1:
        raise EngineMismatch("could not set upstream hostname verification")
