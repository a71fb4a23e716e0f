"""Leaf names under a name-constrained CA: mitmproxy puts into each leaf the upstream
certificate's CN and SANs, the client's SNI (or our own IP) and the server address, so a
leaf for ``api.example.com`` can also name ``example.com``, ``*.cdn.net`` or ``127.0.0.1``.
A client enforcing the CA's Name Constraints rejects a leaf if *any* name in it falls
outside them, so with a constrained CA only the permitted names stay in the leaf.

``CertStore.get_cert`` is wrapped once per process; with no filter installed (an
unconstrained CA) it behaves exactly as mitmproxy's. A missing symbol refuses start-up only
when a filter is asked for (seam/need.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509
from mitmproxy import certs

from vaultproxy.seam.need import need

Permits = Callable[[str], bool]

_permits: Permits | None = None
_installed = False


def _name(general: x509.GeneralName) -> str:
    return str(general.value)


def _filtered(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_cert(self: certs.CertStore, commonname: str | None,
                 sans: Iterable[x509.GeneralName], *args: Any, **kwargs: Any) -> Any:
        permits = _permits
        if permits is None:
            return original(self, commonname, sans, *args, **kwargs)
        kept = [s for s in sans if isinstance(s, x509.DNSName | x509.IPAddress)
                and permits(_name(s))]
        if commonname is not None and not permits(commonname):
            commonname = next((_name(s) for s in kept if isinstance(s, x509.DNSName)), None)
        return original(self, commonname, kept, *args, **kwargs)

    return get_cert


def install(permits: Permits | None) -> None:
    """Keep only names ``permits`` accepts in every leaf from now on (None: all names)."""
    global _permits, _installed
    if permits is not None and not _installed:
        original = need(certs.CertStore, "get_cert")
        certs.CertStore.get_cert = _filtered(original)  # type: ignore[method-assign]
        _installed = True
    _permits = permits
