"""vaultproxy inside a stock mitmdump (`mitmdump -s addons/vaultproxy.py`).

The script is a thin shim over this module. The Gate is added to the master directly, not
through the script, so if a hot reload of the script fails (mitmdump drops it and keeps
serving), the Gate is still there and refuses traffic instead of forwarding it untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from mitmproxy import ctx

from vaultproxy.errors import ConfigError, VaultproxyError
from vaultproxy.home import Home
from vaultproxy.stages import Gate, chain, runtime

logger = logging.getLogger(__name__)

_gate_installed = False


class Bootstrap:
    """Declares the vaultproxy_* options and builds the ProxyState from them."""

    def __init__(self) -> None:
        self._flusher: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        global _gate_installed
        loader.add_option("vaultproxy_home", str, "", "vaultproxy home directory")
        loader.add_option(
            "vaultproxy_password_file", str, "",
            "file holding the master password (else $VAULTPROXY_PASSWORD_FILE; else locked)",
        )
        if not _gate_installed:
            ctx.master.addons.add(Gate())
            _gate_installed = True

    def configure(self, updated: set[str]) -> None:
        if "vaultproxy_home" not in updated and "vaultproxy_password_file" not in updated:
            return
        try:
            self._setup()
        except VaultproxyError as e:
            runtime.install(None)  # the Gate refuses everything until fixed
            lines = e.problems if isinstance(e, ConfigError) else [str(e)]
            logger.error("vaultproxy not loaded, refusing traffic:\n  %s", "\n  ".join(lines))

    def _setup(self) -> None:
        from vaultproxy.ca import load_ca, materialize_mitm_confdir, system_ca_file
        from vaultproxy.cli.password import _from_file
        from vaultproxy.engine.state import ProxyState

        raw = ctx.options.vaultproxy_home
        if not raw:
            raise VaultproxyError("set --set vaultproxy_home=DIR")
        home = Home.resolve(raw)
        home.require()
        load_ca(home)
        confdir = materialize_mitm_confdir(home)
        state = ProxyState.load(home)
        source = ctx.options.vaultproxy_password_file or os.environ.get("VAULTPROXY_PASSWORD_FILE")
        if source:
            password = _from_file(source)
            state.unlock_sync(password)
            password.wipe()
        listen = set()
        for spec in ctx.options.mode:
            host, _, port = spec.rpartition("@")[2].rpartition(":")
            if port.isdigit():
                listen.add((host.strip("[]") or "127.0.0.1", int(port)))
        state.set_own_listeners(frozenset(listen))
        runtime.install(state)
        ctx.options.update(
            confdir=str(confdir),
            connection_strategy="eager",
            ssl_verify_upstream_trusted_ca=str(system_ca_file(home)),
        )

    def running(self) -> None:
        from mitmproxy.net import tls as net_tls

        if getattr(net_tls, "log_master_secret", None) is not None:
            runtime.install(None)
            logger.error("SECURITY: SSLKEYLOGFILE is set: TLS keys would be logged; refusing traffic")
            return
        st = runtime.current()
        if st is not None and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(st.audit.run_flusher())

    def done(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        st = runtime.current()
        if st is not None:
            st.audit.close()


def make_addons() -> list[object]:
    return [Bootstrap(), *chain()]
