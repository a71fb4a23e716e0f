"""The lifecycle every start path shares (``vaultproxy run`` and its workers in serve.py,
``mitmdump -s addons/vaultproxy.py`` in mitmdump.py), in order:

1. ``claim``: one proxy per home, then the files a killed run left are removed;
2. the admin server and the listeners (each path's own engine);
3. ``security_warnings``: the ``SECURITY:`` lines for the settings that weaken the proxy, a
   pure function of the config and the listen addresses, logged by ``log_warnings``;
4. ``write_run_json`` once serving (``vaultproxy env``/``exec``/``status`` read it);
5. at stop, ``forget_run_json``.

The workers of ``run --workers N`` serve the supervisor's config and home: the supervisor
does all of this once for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable

from vaultproxy import __version__
from vaultproxy.config.models import SURFACE_RISKS, Config
from vaultproxy.core.state import ProxyState
from vaultproxy.engine import stale
from vaultproxy.files.atomic_file import write_atomic
from vaultproxy.files.home import Home
from vaultproxy.sync.run import source_warnings

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def security_warnings(
    config: Config, proxy_hosts: Iterable[str], admin_host: str | None = None
) -> list[str]:
    """The ``SECURITY:`` lines for ``config`` served on ``proxy_hosts`` (an empty host: every
    interface), with the admin API on ``admin_host`` (None: no TCP listener)."""
    out = []
    for s in config.services:
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
    if config.audit.on_failure == "continue":
        out.append(
            'SECURITY: [audit] on_failure = "continue": when audit.jsonl cannot be written, '
            "credentials are still injected and those uses are NOT audited"
        )
    for flag, where in ((config.audit.allow_loopback, "loopback"),
                        (config.audit.allow_private, "private")):
        if flag and (config.audit.sinks or config.telemetry.traces):
            out.append(f"SECURITY: [audit] allow_{where} = true: audit sinks may reach {where} "
                       "addresses")
    if config.proxy.retired_redact_days == 0:
        out.append(
            "SECURITY: [proxy] retired_redact_days = 0: a rotated or removed secret value is "
            "no longer redacted; an upstream that still accepts it can echo it to the agent"
        )
    out.extend(source_warnings(config))
    if config.proxy.passthrough_allow:
        out.append(
            "SECURITY: passthrough_allow lets unregistered traffic reach listed private addresses"
        )
    for host in dict.fromkeys(proxy_hosts):
        if host not in LOOPBACK_HOSTS:
            where = host or "every interface"
            out.append(
                f"SECURITY: the proxy listens on {where}, not loopback: other hosts can use it"
            )
    if admin_host is not None and admin_host not in LOOPBACK_HOSTS:
        out.append(f"SECURITY: the admin API listens on {admin_host}, not loopback: other "
                   "hosts can reach it (the bearer token is its only protection)")
    return out


def log_warnings(lines: Iterable[str]) -> None:
    """Every start path logs its lines through this one call."""
    for line in lines:
        logger.warning("%s", line)


def claim(home: Home) -> int:
    """Claim the home (the fd holds it until closed or the process exits), then remove what a
    killed run left: whoever held the claim is gone."""
    fd = home.claim()
    stale.clean_stale(home)
    return fd


def write_run_json(
    state: ProxyState,
    proxy: list[tuple[str, int]],
    admin: tuple[str, int] | None = None,
    admin_socket: str | None = None,
    worker_pids: list[int] | None = None,
    proxy_sock: str | None = None,
    mtls: list[tuple[str, int]] | None = None,
    dashboard: tuple[str, int] | None = None,
) -> None:
    data = {
        "pid": os.getpid(),
        "version": __version__,
        "proxy": [f"{h}:{p}" for h, p in proxy],
        "proxy_url": f"http://{url_host(proxy[0][0])}:{proxy[0][1]}",
        "admin": f"{url_host(admin[0])}:{admin[1]}" if admin else None,
        "admin_url": f"http://{url_host(admin[0])}:{admin[1]}" if admin else None,
        "admin_socket": admin_socket,
        "proxy_socket": proxy_sock,  # for isolated `vaultproxy exec` (engine/proxy_socket.py)
        "mtls": [f"{url_host(h)}:{p}" for h, p in mtls or []],  # `run --mtls-listen`
        "home": str(state.home.path),
        "workers": 1 + len(worker_pids or []),
        "worker_pids": list(worker_pids or []),  # besides "pid", which is worker 0
        "dashboard": f"{url_host(dashboard[0])}:{dashboard[1]}" if dashboard else None,
        "dashboard_url": f"http://{url_host(dashboard[0])}:{dashboard[1]}" if dashboard else None,
    }
    write_atomic(state.home.run_json, json.dumps(data))


def url_host(host: str) -> str:
    """A host as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def forget_run_json(home: Home) -> None:
    """Remove run.json if this process wrote it."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if json.loads(home.run_json.read_text()).get("pid") == os.getpid():
            home.run_json.unlink()
