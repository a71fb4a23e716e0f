"""Run the embedded proxy: start, announce (banner + run.json), reload on SIGHUP, drain on
SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vaultproxy import __version__
from vaultproxy.admin.actions import (
    audit_admin,
    refresh_keystore,
    reload_registry,
    warn_missing_secrets,
)
from vaultproxy.admin.server import AdminServer
from vaultproxy.audit import status as audit_status
from vaultproxy.audit.log import summary_line
from vaultproxy.ca import CA
from vaultproxy.ca.constraints import home_warnings as constraint_warnings
from vaultproxy.ca.constraints import registered_hosts
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.engine import listener, proxy_socket
from vaultproxy.engine.audit_sinks import AuditSinks
from vaultproxy.engine.lifecycle import (
    claim,
    forget_run_json,
    log_warnings,
    security_warnings,
    url_host,
    write_run_json,
)
from vaultproxy.engine.master import (
    DRAIN_SECONDS,
    MtlsListener,
    build_master,
    drain,
    listen_addresses,
    wait_listening,
    wait_mode,
)
from vaultproxy.engine.workers import Supervisor
from vaultproxy.errors import ConfigError, VaultproxyError, problems_text
from vaultproxy.seam import listener as seam_listener

if TYPE_CHECKING:  # imported only when the dashboard is on (jinja2, templates)
    from vaultproxy.dashboard.server import DashboardServer

logger = logging.getLogger(__name__)

LOCKED_NOTE = "LOCKED (unlock with `vaultproxy unlock`)"


@dataclass(frozen=True)
class ServeOptions:
    listen: tuple[str, int]
    confdir: str
    admin_listen: tuple[str, int] | None = None
    admin_socket: bool = True
    workers: int = 1
    mtls: MtlsListener | None = None  # --mtls-listen (served by this process, not workers)
    dashboard_listen: tuple[str, int] | None = None  # None: no dashboard


def banner(
    state: ProxyState,
    ca: CA,
    proxy: list[tuple[str, int]],
    admin: AdminServer | None = None,
    workers: int = 1,
    dashboard: DashboardServer | None = None,
) -> str:
    services = state.registry.services
    lines = [
        f"vaultproxy {__version__} ready",
        "  proxy:    " + ", ".join(f"http://{url_host(h)}:{p}" for h, p in proxy)
        + (f" ({workers} worker processes)" if workers > 1 else ""),
        f"  keystore: {LOCKED_NOTE if state.locked else 'unlocked'}",
        f"  services: {len(services)}"
        + (": " + ", ".join(s.name for s in services) if services else ""),
        f"  CA:       {ca.cert_path}",
        f"  CA SHA-256 fingerprint: {ca.fingerprint_sha256}",
    ]
    if admin is not None:
        if admin.address is not None:
            h, p = admin.address
            token = state.home.admin_token
            lines.insert(2, f"  admin:    http://{url_host(h)}:{p} (token in {token})")
        if admin.socket_path:
            lines.insert(3, f"  admin socket: {admin.socket_path}")
    if dashboard is not None and dashboard.address is not None:
        lines.insert(2, f"  dashboard: {dashboard.url} (log in: `vaultproxy dashboard`)")
    return "\n".join(lines)


def start_warnings(state: ProxyState, listen_host: str, admin_host: str | None = None
                   ) -> list[str]:
    """`run`'s SECURITY lines: the config's (lifecycle.py, as every start path logs them) and a
    registered host outside a name-constrained CA (which needs the home's CA file)."""
    return (security_warnings(state.registry.config, [listen_host], admin_host)
            + constraint_warnings(state.home, registered_hosts(state.registry.services)))


def reload(state: ProxyState) -> None:
    """SIGHUP: re-read services.toml, then keystore.enc (each keeps the old on error)."""
    try:
        before, after = reload_registry(state)
    except ConfigError as e:
        logger.error(
            "reload refused, keeping the previous registry (%d services):\n%s",
            len(state.registry.services),
            problems_text(e),
        )
        audit_admin(state, caller="signal:SIGHUP", action="reload", method="SIGHUP",
                    path="services.toml", status=409, code="config_invalid")
    except VaultproxyError as e:
        logger.error("reload refused, keeping the previous registry: %s", e)
        audit_admin(state, caller="signal:SIGHUP", action="reload", method="SIGHUP",
                    path="services.toml", status=409, code="config_invalid")
    else:
        print(f"vaultproxy: reloaded services.toml: {before} -> {after} services", flush=True)
        audit_admin(state, caller="signal:SIGHUP", action="reload", method="SIGHUP",
                    path="services.toml", status=200)
    refresh_keystore(state)
    warn_missing_secrets(state)


async def serve(state: ProxyState, ca: CA, opts: ServeOptions) -> int:
    claimed = claim(state.home)  # one proxy per home; released when this process exits
    try:
        return await _serve(state, ca, opts)
    finally:
        os.close(claimed)


async def _serve(state: ProxyState, ca: CA, opts: ServeOptions) -> int:
    live = Live(state)
    admin = AdminServer(state.home, opts.admin_listen, unix=opts.admin_socket, live=live)
    admin.bind()  # before the proxy serves, so its address is an own listener from the start
    workers: list[Supervisor] = []  # the supervisor, once it runs (the dashboard counts them)
    dashboard: DashboardServer | None = None
    if opts.dashboard_listen is not None:
        from vaultproxy.dashboard.server import DashboardServer

        dashboard = DashboardServer(opts.dashboard_listen,
                                    lambda: 1 + sum(len(s.pids()) for s in workers))
        dashboard.bind()
    state.set_own_listeners(frozenset(admin_addrs(admin, dashboard)))
    # One listening socket, bound here once; every worker accepts from it (engine/listener.py)
    sock = listener.bind(*opts.listen)
    try:
        return await _serve_on(state, ca, opts, live, admin, sock, dashboard, workers)
    finally:
        seam_listener.release()
        sock.close()


async def _serve_on(
    state: ProxyState, ca: CA, opts: ServeOptions, live: Live, admin: AdminServer,
    sock: socket.socket, dashboard: DashboardServer | None, workers: list[Supervisor],
) -> int:
    seam_listener.use(sock)
    listen = (opts.listen[0], int(sock.getsockname()[1]))
    await admin.start()
    if dashboard is not None:
        assert admin.ctx is not None
        dashboard.feed.seed(json.dumps(r) for r in await asyncio.to_thread(state.audit.tail, 200))
        state.audit.add_tap(dashboard.feed.offer)
        await dashboard.start(admin.ctx)
        admin.ctx.dashboard_login = dashboard.login_url
    serving = asyncio.Event()  # set when announced: no connection is served before
    m = build_master(live, opts.confdir, listen, serving, opts.mtls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload, state)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    master_task = asyncio.create_task(m.run())
    flusher = asyncio.create_task(state.audit.run_flusher())
    audit_sinks = AuditSinks(state)  # [audit] sinks, [telemetry] (SPEC §13)
    audit_sinks.start()
    supervisor: Supervisor | None = None
    psock: proxy_socket.ProxySocket | None = None
    try:
        addrs = await wait_listening(m, master_task)
        mtls_addrs: list[tuple[str, int]] = []
        if opts.mtls is not None:  # the proxy protocol inside mutual TLS (stages/mtls.py)
            mtls_addrs = await wait_mode(m, master_task, opts.mtls.spec)
            addrs = [a for a in listen_addresses(m) if a not in mtls_addrs]
        own = frozenset(addrs) | frozenset(mtls_addrs) | frozenset(admin_addrs(admin, dashboard))
        state.set_own_listeners(own)
        psock = await proxy_socket.start(state.home, addrs[0])

        def announce() -> None:
            pids = supervisor.pids() if supervisor is not None else []
            write_run_json(state, addrs, admin.address, admin.socket_path, pids,
                           psock.path if psock is not None else None, mtls_addrs,
                           dashboard.address if dashboard is not None else None)

        if opts.workers > 1:
            supervisor = Supervisor(state, count=opts.workers, confdir=opts.confdir,
                                    listen=addrs[0], sock=sock)
            supervisor.on_pids_changed = announce
            supervisor.on_audit_line = _fan_out(audit_sinks, dashboard)
            workers.append(supervisor)
            audit_status.set_peers(supervisor.audit_stats)
            await supervisor.start()
        admin_host = opts.admin_listen[0] if opts.admin_listen is not None else None
        log_warnings(start_warnings(state, opts.listen[0], admin_host)
                     + (dashboard.warnings() if dashboard is not None else []))
        warn_missing_secrets(state)
        print(banner(state, ca, addrs, admin, opts.workers, dashboard), flush=True)
        for h, p in mtls_addrs:
            print(f"  mTLS:     https://{url_host(h)}:{p} (client certificates from "
                  f"[mtls] client_ca; the CN names the agent)", flush=True)
        announce()  # run.json last: whoever waits for it finds the banner and warnings out
        serving.set()
        gc.freeze()  # start-up objects leave the cyclic GC (engine/worker.py says why)
        if supervisor is not None:
            supervisor.serve()
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({master_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if master_task.done():
            master_task.result()
            return 1
        if psock is not None:
            psock.close()  # stop accepting; relayed connections drain with the proxy's
        stopping = (
            asyncio.create_task(supervisor.stop(DRAIN_SECONDS + 5.0))
            if supervisor is not None else None
        )
        await drain(m, state, DRAIN_SECONDS)
        if stopping is not None:
            await stopping
        m.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await master_task
        return 0
    finally:
        if psock is not None:
            await psock.stop()
        if supervisor is not None and supervisor.workers:
            await supervisor.stop(timeout=2.0)
        if dashboard is not None:
            state.audit.remove_tap(dashboard.feed.offer)
            await dashboard.stop()
        await admin.stop()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        state.audit.close()
        await asyncio.to_thread(audit_sinks.stop)
        print(f"vaultproxy: {summary_line(audit_status.combined(state.audit))}", flush=True)
        audit_status.set_peers(None)
        forget_run_json(state.home)
        state.lock()
        live.state = None


def admin_addrs(admin: AdminServer, dashboard: DashboardServer | None = None
                ) -> list[tuple[str, int]]:
    out = [admin.address] if admin.address is not None else []
    if dashboard is not None and dashboard.address is not None:
        out.append(dashboard.address)
    return out


def _fan_out(audit_sinks: AuditSinks, dashboard: DashboardServer | None
             ) -> Callable[[str, int], None]:
    """Workers' audit lines go to the sinks and, when it serves, the dashboard."""
    if dashboard is None:
        return audit_sinks.offer
    feed = dashboard.feed

    def both(line: str, pid: int) -> None:
        audit_sinks.offer(line, pid)
        feed.offer(line, pid)

    return both
