"""Gate: refuse all traffic while the vaultproxy chain is incomplete (e.g. a script failed to
reload under mitmdump), the engine seam is not in place, or no home is loaded. It lives in
the package, outside the script."""

from __future__ import annotations

from mitmproxy import http

from vaultproxy.errors import VaultproxyError
from vaultproxy.seam import defences
from vaultproxy.stages.guard import deny, guarded
from vaultproxy.stages.runtime import Stage


class ChainIncomplete(VaultproxyError):
    status, code, public = 503, "not_ready", "vaultproxy is not fully loaded; refusing traffic"


class Gate(Stage):
    def _check(self, flow: http.HTTPFlow) -> None:
        if self.rt.current() is None or not self.rt.chain_complete() or not defences.installed():
            deny(flow, ChainIncomplete())

    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._check(flow)
