"""Two of mitmproxy's default addons with a cheap test in front of their ``request`` hook.

Both run for every request and almost never act; each acts exactly when mitmproxy's would
(it calls mitmproxy's own code then), and skips only what is provably a no-op:

* ``TlsConfig.request`` answers a fetch of the MITM CA's CRL (a path ending in
  ``/mitmproxy-<CA serial>.crl``) and, with ``--set emudhra``, kills requests to the eMudhra
  revocation hosts. mitmproxy's hook formats the CRL path (the CA's serial, read from the
  certificate) and reads two options (``ctx.options`` deep-copies each value) per request;
  here the path is formatted once per CA and the options are read in ``configure``, which
  mitmproxy calls on every change of them. The path is compared as bytes: ``Request.path``
  is ``data.path`` decoded (UTF-8, surrogateescape), and an ASCII suffix ends the text
  exactly when its bytes end the raw path.
* ``DisableH2C.request`` strips an ``Upgrade: h2c`` offer and kills an HTTP/2 preface read as
  a request (``PRI * HTTP/2.0``): nothing to do without an ``Upgrade`` header or a method
  that upper-cases to ``PRI``, which is what is tested first.

The class names stay mitmproxy's (addon names are the lower-cased class name, and
``m.addons.get("tlsconfig")`` must still find it). tests/unit/test_speed_defaults.py runs
each against mitmproxy's own on the same seeded flows."""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx, http
from mitmproxy.addons import disable_h2c, tlsconfig

from vaultproxy.core.pipeline import header_names
from vaultproxy.inject import names as _names


class TlsConfig(tlsconfig.TlsConfig):
    # (instance attributes, no class default: CPython 3.12 specialises no read of an
    # instance attribute a class attribute of the same name shadows, ~3x a plain one's)
    _emudhra: bool
    _crl: tuple[object, bytes] | None

    def __init__(self) -> None:
        super().__init__()
        self._emudhra = False
        self._crl = None

    def configure(self, updated: Any) -> None:
        super().configure(updated)  # type: ignore[no-untyped-call]
        self._emudhra = bool(ctx.options.emudhra or ctx.options.emudhra_old)

    def request(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.error or flow.response:
            return
        # ``self._crl_path()``, its memo's test inline (every request)
        memo = self._crl
        crl = (memo[1] if memo is not None and memo[0] is self.certstore.default_ca
               else self._crl_path())
        if self._emudhra or flow.request.data.path.endswith(crl):
            super().request(flow)

    def _crl_path(self) -> bytes:
        """``crl_path()`` as bytes, formatted once per CA certificate."""
        ca = self.certstore.default_ca
        memo = self._crl
        if memo is None or memo[0] is not ca:
            memo = self._crl = (ca, self.crl_path().encode("ascii"))
        return memo[1]


class DisableH2C(disable_h2c.DisableH2C):
    def request(self, f: http.HTTPFlow) -> None:
        data = f.request.data
        method = data.method
        fields = data.headers.fields
        memo = _names._names_memo  # (``header_names(fields)``, its memo's test inline)
        # ``Request.method`` is the decoded method upper-cased: for ASCII bytes that is
        # ``bytes.upper``; anything else (``"prı".upper() == "PRI"``) takes mitmproxy's path
        if (not method.isascii() or method.upper() == b"PRI"
                or b"upgrade" in (memo[1] if memo[0] is fields else header_names(fields))):
            self.process_flow(f)  # type: ignore[no-untyped-call]
