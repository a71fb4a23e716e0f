"""vaultproxy inside a stock mitmdump (`mitmdump -s addons/vaultproxy.py`).

The script is a thin shim over this module. The Ready stage is added to the master directly, not
through the script, so if a hot reload of the script fails (mitmdump drops it and keeps
serving), the Ready stage is still there and refuses traffic instead of forwarding it untouched.
Until the Ready stage is in, the shim's load gate (addons/vaultproxy.py) refuses everything: it
is in the chain before this module's first ``load`` line runs, and goes only once the whole
registration went through (SECURITY 66).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from mitmproxy import ctx
from mitmproxy.proxy.mode_specs import ProxyMode

from vaultproxy.admin.server import AdminServer
from vaultproxy.core.state import ProxyState
from vaultproxy.dashboard.server import DashboardServer
from vaultproxy.engine import nodump
from vaultproxy.engine.audit_sinks import AuditSinks
from vaultproxy.engine.lifecycle import (
    claim,
    forget_run_json,
    log_warnings,
    security_warnings,
    write_run_json,
)
from vaultproxy.errors import ConfigError, VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.files.password_file import read_file
from vaultproxy.keystore.tpm_unlock import try_unlock
from vaultproxy.net.hostnames import parse_listen
from vaultproxy.seam import defences
from vaultproxy.stages import Ready, Runtime, chain, seam_hooks
from vaultproxy.values import logfilter

logger = logging.getLogger(__name__)

_gate_installed = False
# The chain's shared runtime lives in the package, not the script: it outlives a script
# reload, so the Ready stage (added once) sees the reloaded stages and the loaded home.
_RT = Runtime()

# Options of mitmdump's default addons that would store flows (with credentials) on disk.
_FLOW_SINKS = ("save_stream_file", "hardump")
_stopping: set[asyncio.Task[None]] = set()


#: the options ``Bootstrap.load`` declares
OPTIONS = ("vaultproxy_home", "vaultproxy_password_file", "vaultproxy_admin_listen",
           "vaultproxy_dashboard_listen")


def _take_repeated(options: Any) -> list[tuple[str, int]]:
    """Our options given more than once on the command line (``--set vaultproxy_home=A
    --set vaultproxy_home=B``), taken out of mitmproxy's deferred options, with their counts.

    mitmproxy keeps a ``--set`` of an option no addon has declared yet and parses it when
    one does (``OptionManager.process_deferred``, at the end of the next addon's
    registration); a non-list option given twice makes that parse raise, the script's
    registration stops half-way, and nothing of vaultproxy, not even the Ready stage that
    refuses traffic, is in the chain: mitmdump would forward everything unproxied, and say
    nothing. Taken out here, before the Ready stage is added, the rest loads; ``configure``
    then refuses traffic and names the option (tests/integration/test_mitmdump.py)."""
    deferred = getattr(options, "deferred", None)
    if not isinstance(deferred, dict):
        return []
    repeated = []
    for name in OPTIONS:
        values = getattr(deferred.get(name), "val", None)
        if isinstance(values, list) and len(values) > 1:
            del deferred[name]
            repeated.append((name, len(values)))
    return repeated


class Bootstrap:
    """Declares the vaultproxy_* options and builds the ProxyState from them."""

    def __init__(self) -> None:
        self._twice: list[tuple[str, int]] = []  # our options given more than once (load)
        self._flusher: asyncio.Task[None] | None = None
        self._admin: AdminServer | None = None
        self._claim: int | None = None
        self._admin_task: asyncio.Task[None] | None = None
        self._wrote_run_json = False
        self._sinks: AuditSinks | None = None  # [audit] sinks, [telemetry] (SPEC §13)
        self._dashboard: DashboardServer | None = None  # SPEC §12

    def load(self, loader: Any) -> None:
        global _gate_installed
        nodump.disable()  # mitmdump holds the decrypted keystore too (engine/nodump.py)
        loader.add_option("vaultproxy_home", str, "", "vaultproxy home directory")
        loader.add_option(
            "vaultproxy_password_file", str, "",
            "file holding the master password (else $VAULTPROXY_PASSWORD_FILE; else locked)",
        )
        loader.add_option(
            "vaultproxy_admin_listen", str, "127.0.0.1:3201",
            "admin API HOST:PORT (port 0 = any free port; empty = no TCP listener; "
            "admin.sock is always created in the home)",
        )
        loader.add_option(
            "vaultproxy_dashboard_listen", str,
            os.environ.get("VAULTPROXY_DASHBOARD_LISTEN", "127.0.0.1:3202"),
            "web dashboard HOST:PORT (port 0 = any free port; empty = off); log in with "
            "`vaultproxy dashboard`",
        )
        logfilter.install()
        self._twice = _take_repeated(ctx.master.options)
        if not _gate_installed:
            ctx.master.addons.add(Ready(_RT))
            _gate_installed = True
        try:
            defences.install(seam_hooks(_RT))  # this (reloaded) chain's callbacks
        except defences.EngineMismatch as e:  # the Ready stage refuses traffic while not installed
            logger.error("%s", e)

    def configure(self, updated: set[str]) -> None:
        if self._twice:
            _RT.live.state = None  # the Ready stage refuses everything until fixed
            logger.error("vaultproxy not loaded, refusing traffic:\n  %s", "\n  ".join(
                f"--set {name} is given {n} times: give it once" for name, n in self._twice))
            return
        if "vaultproxy_home" in updated or "vaultproxy_password_file" in updated:
            try:
                self._setup()
            except VaultproxyError as e:
                _RT.live.state = None  # the Ready stage refuses everything until fixed
                lines = e.problems if isinstance(e, ConfigError) else [str(e)]
                logger.error("vaultproxy not loaded, refusing traffic:\n  %s", "\n  ".join(lines))
        self._quiet_flow_output(updated)

    def _quiet_flow_output(self, updated: set[str]) -> None:
        """mitmdump's dumper prints each flow *after* our stages ran: a query-param credential
        would reach stdout. Keep flow output off, and refuse traffic while a flow file or HAR
        dump (which would store injected credentials) is configured."""
        opts = ctx.options
        if "flow_detail" in updated and getattr(opts, "flow_detail", 0) > 0:
            logger.warning("SECURITY: flow_detail forced to 0: it would print injected credentials")
            opts.update(flow_detail=0)
        sinks = [n for n in _FLOW_SINKS if n in opts and getattr(opts, n)]
        if sinks:
            _RT.live.state = None
            logger.error(
                "SECURITY: %s would write injected credentials to disk; refusing traffic "
                "until unset",
                ", ".join(sinks),
            )

    def _setup(self) -> None:
        from vaultproxy.ca import load_ca, materialize_mitm_confdir, system_ca_file
        from vaultproxy.core.state import ProxyState

        raw = ctx.options.vaultproxy_home
        if not raw:
            raise VaultproxyError("set --set vaultproxy_home=DIR")
        home = Home.resolve(raw)
        home.require()
        load_ca(home)
        confdir = materialize_mitm_confdir(home)
        from vaultproxy.engine.master import leaf_filter
        from vaultproxy.seam import leaf_names

        leaf_names.install(leaf_filter(str(confdir)))  # a name-constrained CA's leaves
        state = ProxyState.load(home)
        source = ctx.options.vaultproxy_password_file or os.environ.get("VAULTPROXY_PASSWORD_FILE")
        sealed = try_unlock(home.keystore)  # a TPM slot this TPM unseals: as `vaultproxy run`
        if sealed is not None or source:
            from vaultproxy.admin.actions import warn_missing_secrets

            if sealed is not None:
                state.install_keystore(sealed)
            elif source:
                password = read_file(source, home.path)
                try:
                    state.unlock_sync(password)
                finally:
                    password.wipe()
            warn_missing_secrets(state)
        listen = set()
        for spec in ctx.options.mode:
            host, _, port = spec.rpartition("@")[2].rpartition(":")
            if port.isdigit():
                listen.add((host.strip("[]") or "127.0.0.1", int(port)))
        if self._admin is not None and self._admin.address is not None:
            listen.add(self._admin.address)
        state.set_own_listeners(frozenset(listen))
        _RT.live.state = state
        log_warnings(security_warnings(state.registry.config, _proxy_hosts(), _admin_host()))
        ctx.options.update(
            confdir=str(confdir),
            connection_strategy="eager",
            rawtcp=False,
            ssl_verify_upstream_trusted_ca=str(system_ca_file(home)),
        )

    def running(self) -> None:
        if defences.keylog_active():
            _RT.live.state = None
            logger.error(
                "SECURITY: SSLKEYLOGFILE is set: TLS keys would be logged; refusing traffic"
            )
            return
        st = _RT.current()
        if st is not None and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(st.audit.run_flusher())
        if st is not None and self._sinks is None:
            self._sinks = AuditSinks(st)
            self._sinks.start()
        if st is not None and self._admin is None and self._admin_task is None:
            # running/done must be sync here: the script loader invokes them synchronously.
            self._admin_task = asyncio.get_running_loop().create_task(self._start_admin(st))

    async def _start_admin(self, st: ProxyState) -> None:
        """The admin API in mitmdump's loop. A failure is logged; the proxy keeps its gate."""

        try:
            raw = ctx.options.vaultproxy_admin_listen.strip()
            listen = parse_listen(raw, "vaultproxy_admin_listen") if raw else None
            if self._claim is None:
                self._claim = claim(st.home)  # one proxy per home (admin-token, admin.sock)
            admin = AdminServer(st.home, listen, live=_RT.live)
            admin.bind()
            await admin.start()
        except VaultproxyError as e:
            logger.error("vaultproxy admin API not started: %s", e)
            return
        self._admin = admin
        if admin.address is not None:
            st.set_own_listeners(st.own_listeners | {admin.address})
        logger.warning(
            "vaultproxy admin API: %s, socket %s (token in %s)",
            f"http://{admin.address[0]}:{admin.address[1]}" if admin.address else "no TCP",
            admin.socket_path, st.home.admin_token,
        )
        await self._start_dashboard(st, admin)
        await self._announce(st, admin)

    async def _start_dashboard(self, st: ProxyState, admin: AdminServer) -> None:
        """The dashboard beside the admin API, as `vaultproxy run` serves it."""
        raw = ctx.options.vaultproxy_dashboard_listen.strip()
        if not raw or admin.ctx is None:
            return
        try:
            dashboard = DashboardServer(parse_listen(raw, "vaultproxy_dashboard_listen"),
                                        lambda: 1)
            dashboard.bind()
            await dashboard.start(admin.ctx)
        except VaultproxyError as e:
            logger.error("vaultproxy dashboard not started: %s", e)
            return
        self._dashboard = dashboard
        st.audit.add_tap(dashboard.feed.offer)
        admin.ctx.dashboard_login = dashboard.login_url
        if dashboard.address is not None:
            st.set_own_listeners(st.own_listeners | {dashboard.address})
        for w in dashboard.warnings():
            logger.warning("%s", w)
        logger.warning("vaultproxy dashboard: %s (log in: `vaultproxy dashboard`)",
                       dashboard.url)

    async def _announce(self, st: ProxyState, admin: AdminServer) -> None:
        """Write run.json once mitmdump listens, so `vaultproxy env`/`exec`/`status` work."""
        for _ in range(200):
            addrs = [(str(a[0]), int(a[1]))
                     for a in ctx.master.addons.get("proxyserver").listen_addrs()]
            if addrs:
                dash = self._dashboard.address if self._dashboard is not None else None
                write_run_json(st, addrs, admin.address, admin.socket_path, dashboard=dash)
                self._wrote_run_json = True
                return
            await asyncio.sleep(0.05)
        logger.warning("vaultproxy: mitmdump is not listening yet; run.json not written")

    def done(self) -> None:
        if self._admin_task is not None and not self._admin_task.done():
            self._admin_task.cancel()
        if self._admin is not None:
            admin, self._admin = self._admin, None
            admin.close_listeners()  # the port and socket are free for a reloaded script
            with contextlib.suppress(RuntimeError):  # no running loop: nothing left to await
                task = asyncio.get_running_loop().create_task(admin.stop())
                _stopping.add(task)
                task.add_done_callback(_stopping.discard)
        if self._dashboard is not None:
            dashboard, self._dashboard = self._dashboard, None
            st0 = _RT.current()
            if st0 is not None:
                st0.audit.remove_tap(dashboard.feed.offer)
            with contextlib.suppress(RuntimeError):  # no running loop: nothing left to await
                task = asyncio.get_running_loop().create_task(dashboard.stop())
                _stopping.add(task)
                task.add_done_callback(_stopping.discard)
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._sinks is not None:
            sinks, self._sinks = self._sinks, None
            sinks.stop()
        st = _RT.current()
        if st is not None:
            st.audit.close()
            logger.warning("vaultproxy: %s", st.audit.summary())
            if self._wrote_run_json:
                forget_run_json(st.home)


def _proxy_hosts() -> list[str]:
    """The host of every proxy mode mitmdump serves (an empty one: every interface)."""
    return [ProxyMode.parse(spec).listen_host(ctx.options.listen_host)
            for spec in ctx.options.mode]


def _admin_host() -> str | None:
    raw = ctx.options.vaultproxy_admin_listen.strip()
    if not raw:
        return None
    try:
        return parse_listen(raw, "vaultproxy_admin_listen")[0]
    except VaultproxyError:
        return None  # reported when the admin API starts


def make_addons() -> list[object]:
    return [Bootstrap(), *chain(_RT)]
