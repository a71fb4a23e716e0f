"""Ready: refuse all traffic while the vaultproxy chain is incomplete (e.g. a script failed to
reload under mitmdump), the engine seam is not in place, or no home is loaded. It lives in
the package, outside the script."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mitmproxy import http

from vaultproxy.errors import VaultproxyError
from vaultproxy.seam import defences
from vaultproxy.stages.guard import deny, guarded
from vaultproxy.stages.runtime import Stage


class ChainIncomplete(VaultproxyError):
    status, code, public = 503, "not_ready", "vaultproxy is not fully loaded; refusing traffic"


#: How long a connection that arrives before the run is announced waits for it.
SERVING_WAIT = 60.0


class Ready(Stage):
    async def client_connected(self, client: Any) -> None:
        """Hold a connection until the run serves (``run.json`` and the ready line are out,
        every worker listens): nothing is read, decided or injected before that."""
        serving = self.rt.serving
        if serving is None or serving.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(serving.wait(), SERVING_WAIT)
        if not serving.is_set():
            client.error = "vaultproxy is not serving yet"

    def _check(self, flow: http.HTTPFlow) -> None:
        rt = self.rt
        # ``rt.current()`` and ``rt.chain_complete()`` read as the attributes they return
        if rt.live.state is None or not rt.complete or not defences.installed():
            deny(flow, ChainIncomplete())

    @guarded
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        rt = self.rt  # ``_check``, inline: every request (``defences.installed()`` read
        # as the flag it returns)
        if rt.live.state is None or not rt.complete or not defences._installed:
            deny(flow, ChainIncomplete())
