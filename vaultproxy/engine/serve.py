"""Run the embedded proxy: start, announce (banner + run.json), reload on SIGHUP, drain on
SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from vaultproxy import __version__
from vaultproxy.admin.actions import refresh_keystore, reload_registry, warn_missing_secrets
from vaultproxy.admin.server import AdminServer
from vaultproxy.atomic_file import write_atomic
from vaultproxy.audit import status as audit_status
from vaultproxy.audit.log import summary_line
from vaultproxy.ca import CA
from vaultproxy.config.models import SURFACE_RISKS
from vaultproxy.dashboard.server import DashboardServer
from vaultproxy.engine import proxy_socket, reuseport, stale
from vaultproxy.engine.audit_sinks import AuditSinks
from vaultproxy.engine.master import DRAIN_SECONDS, build_master, drain, wait_listening
from vaultproxy.engine.workers import Supervisor
from vaultproxy.errors import ConfigError, VaultproxyError, problems_text
from vaultproxy.seam import reuseport as seam_reuseport
from vaultproxy.state import Live, ProxyState
from vaultproxy.sync.run import source_warnings

logger = logging.getLogger(__name__)

LOCKED_NOTE = "LOCKED (unlock with `vaultproxy unlock`)"


@dataclass(frozen=True)
class ServeOptions:
    listen: tuple[str, int]
    confdir: str
    admin_listen: tuple[str, int] | None = None
    admin_socket: bool = True
    workers: int = 1
    dashboard_listen: tuple[str, int] | None = None  # None: no dashboard


def write_run_json(
    state: ProxyState,
    proxy: list[tuple[str, int]],
    admin: tuple[str, int] | None = None,
    admin_socket: str | None = None,
    worker_pids: list[int] | None = None,
    proxy_sock: str | None = None,
    dashboard: tuple[str, int] | None = None,
) -> None:
    data = {
        "pid": os.getpid(),
        "version": __version__,
        "proxy": [f"{h}:{p}" for h, p in proxy],
        "proxy_url": f"http://{_url_host(proxy[0][0])}:{proxy[0][1]}",
        "admin": f"{_url_host(admin[0])}:{admin[1]}" if admin else None,
        "admin_url": f"http://{_url_host(admin[0])}:{admin[1]}" if admin else None,
        "admin_socket": admin_socket,
        "proxy_socket": proxy_sock,  # for isolated `vaultproxy exec` (engine/proxy_socket.py)
        "home": str(state.home.path),
        "workers": 1 + len(worker_pids or []),
        "worker_pids": list(worker_pids or []),  # besides "pid", which is worker 0
        "dashboard": f"{_url_host(dashboard[0])}:{dashboard[1]}" if dashboard else None,
        "dashboard_url": f"http://{_url_host(dashboard[0])}:{dashboard[1]}" if dashboard else None,
    }
    write_atomic(state.home.run_json, json.dumps(data))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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
        "  proxy:    " + ", ".join(f"http://{_url_host(h)}:{p}" for h, p in proxy)
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
            lines.insert(2, f"  admin:    http://{_url_host(h)}:{p} (token in {token})")
        if admin.socket_path:
            lines.insert(3, f"  admin socket: {admin.socket_path}")
    if dashboard is not None and dashboard.address is not None:
        lines.insert(2, f"  dashboard: {dashboard.url} (log in: `vaultproxy dashboard`)")
    return "\n".join(lines)


def security_warnings(state: ProxyState, listen: tuple[str, int]) -> list[str]:
    out = []
    for s in state.registry.services:
        if s.insecure_tls:
            out.append(
                f"SECURITY: service {s.name} has insecure_tls = true: upstream TLS is NOT verified"
            )
        if s.allow_loopback:
            out.append(f"SECURITY: service {s.name} may reach loopback addresses (allow_loopback)")
        if s.allow_private:
            out.append(f"SECURITY: service {s.name} may reach private addresses (allow_private)")
        if s.mode == "placeholder":
            for surface in s.substitute_in:
                if surface in SURFACE_RISKS:
                    out.append(
                        f"SECURITY: service {s.name} substitutes its secret in "
                        f"{SURFACE_RISKS[surface]} (substitute_in)"
                    )
        if s.allow_range:
            out.append(
                f"SECURITY: service {s.name} keeps Range requests (allow_range): partial "
                "responses can slice a reflected secret past the redactor"
            )
    if state.registry.config.audit.on_failure == "continue":
        out.append(
            'SECURITY: [audit] on_failure = "continue": when audit.jsonl cannot be written, '
            "credentials are still injected and those uses are NOT audited"
        )
    audit = state.registry.config.audit
    for flag, where in ((audit.allow_loopback, "loopback"), (audit.allow_private, "private")):
        if flag and (audit.sinks or state.registry.config.telemetry.traces):
            out.append(f"SECURITY: [audit] allow_{where} = true: audit sinks may reach {where} "
                       "addresses")
    out.extend(source_warnings(state.registry.config))
    if state.registry.config.proxy.passthrough_allow:
        out.append(
            "SECURITY: passthrough_allow lets unregistered traffic reach listed private addresses"
        )
    if listen[0] not in ("127.0.0.1", "::1", "localhost"):
        out.append(
            f"SECURITY: the proxy listens on {listen[0]}, not loopback: other hosts can use it"
        )
    return out


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
    except VaultproxyError as e:
        logger.error("reload refused, keeping the previous registry: %s", e)
    else:
        print(f"vaultproxy: reloaded services.toml: {before} -> {after} services", flush=True)
    refresh_keystore(state)
    warn_missing_secrets(state)


async def serve(state: ProxyState, ca: CA, opts: ServeOptions) -> int:
    claim = state.home.claim()  # one proxy per home; released when this process exits
    stale.clean_stale(state.home)  # what a killed run left (we hold the claim: it is gone)
    try:
        return await _serve(state, ca, opts)
    finally:
        os.close(claim)


async def _serve(state: ProxyState, ca: CA, opts: ServeOptions) -> int:
    live = Live(state)
    admin = AdminServer(state.home, opts.admin_listen, unix=opts.admin_socket, live=live)
    admin.bind()  # before the proxy serves, so its address is an own listener from the start
    supervisor: Supervisor | None = None
    dashboard = (DashboardServer(opts.dashboard_listen,
                                 lambda: 1 + len(supervisor.pids() if supervisor else []))
                 if opts.dashboard_listen is not None else None)
    if dashboard is not None:
        dashboard.bind()
    state.set_own_listeners(frozenset(admin_addrs(admin, dashboard)))
    listen = opts.listen
    if opts.workers > 1:
        seam_reuseport.enable()
        listen = (listen[0], reuseport.probe(*listen))
    await admin.start()
    if dashboard is not None:
        assert admin.ctx is not None
        dashboard.feed.seed(json.dumps(r) for r in await asyncio.to_thread(state.audit.tail, 200))
        state.audit.taps.append(dashboard.feed.offer)
        await dashboard.start(admin.ctx)
        admin.ctx.dashboard_login = dashboard.login_url
    serving = asyncio.Event()  # set when announced: no connection is served before
    m = build_master(live, opts.confdir, listen, serving)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload, state)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    master_task = asyncio.create_task(m.run())
    flusher = asyncio.create_task(state.audit.run_flusher())
    audit_sinks = AuditSinks(state)  # [audit] sinks, [telemetry] (SPEC §13)
    audit_sinks.start()
    psock: proxy_socket.ProxySocket | None = None
    try:
        addrs = await wait_listening(m, master_task)
        state.set_own_listeners(frozenset(addrs) | frozenset(admin_addrs(admin, dashboard)))
        psock = await proxy_socket.start(state.home, addrs[0])

        def announce() -> None:
            pids = supervisor.pids() if supervisor is not None else []
            write_run_json(state, addrs, admin.address, admin.socket_path, pids,
                           psock.path if psock is not None else None,
                           dashboard.address if dashboard is not None else None)

        if opts.workers > 1:
            supervisor = Supervisor(state, count=opts.workers, confdir=opts.confdir,
                                    listen=addrs[0])
            supervisor.on_pids_changed = announce
            supervisor.on_audit_line = _fan_out(audit_sinks, dashboard)
            audit_status.set_peers(supervisor.audit_stats)
            await supervisor.start()
        for w in (security_warnings(state, opts.listen) + admin.warnings()
                  + (dashboard.warnings() if dashboard is not None else [])):
            logger.warning("%s", w)
        warn_missing_secrets(state)
        print(banner(state, ca, addrs, admin, opts.workers, dashboard), flush=True)
        announce()  # run.json last: whoever waits for it finds the banner and warnings out
        serving.set()
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
            if dashboard.feed.offer in state.audit.taps:
                state.audit.taps.remove(dashboard.feed.offer)
            await dashboard.stop()
        await admin.stop()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        state.audit.close()
        await asyncio.to_thread(audit_sinks.stop)
        print(f"vaultproxy: {summary_line(audit_status.combined(state.audit))}", flush=True)
        audit_status.set_peers(None)
        with contextlib.suppress(FileNotFoundError, ValueError, AttributeError):
            if json.loads(state.home.run_json.read_text()).get("pid") == os.getpid():
                state.home.run_json.unlink()
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
