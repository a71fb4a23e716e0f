# ruff: noqa: E402  (seam_imports.lean() must run before mitmproxy.master is imported)
"""The embedded mitmproxy Master: our stages first, then only the default addons we need."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from vaultproxy.seam import imports as seam_imports

seam_imports.lean()  # before mitmproxy.master imports mitmproxy.addons (seam/imports.py)

from mitmproxy import master, options
from mitmproxy.addons import (
    core,
    dns_resolver,
    next_layer,
    proxyserver,
)
from OpenSSL import SSL

from vaultproxy.ca import MITM_BASENAME, system_ca_file
from vaultproxy.ca.constraints import leaf_filter_for
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.engine import default_addons
from vaultproxy.errors import VaultproxyError
from vaultproxy.seam import defences, leaf_names, speed
from vaultproxy.stages import Ready, Runtime, chain, seam_hooks
from vaultproxy.stages.mtls import MtlsEntry


def mitm_options(state: ProxyState, confdir: str, listen: tuple[str, int]) -> dict[str, object]:
    """Option values shared by the embedded path and (where settable) the mitmdump path."""
    host, port = listen
    return {
        "mode": [mode_spec(listen)],
        "confdir": confdir,
        "connection_strategy": "eager",
        "ssl_verify_upstream_trusted_ca": str(system_ca_file(state.home)),
        "ssl_insecure": False,
        "http2": True,
        "termlog_verbosity": "warn",
        "flow_detail": 0,
        "stream_large_bodies": None,
        # A 101 to anything but WebSocket (or non-HTTP inside an intercepted tunnel) must
        # not become a raw TCP pipe that no stage sees; passthrough tunnels are raw anyway.
        "rawtcp": False,
    }


def leaf_filter(confdir: str) -> leaf_names.Permits | None:
    """A name-constrained CA: which names its leaves may carry (None: unconstrained)."""
    return leaf_filter_for(Path(confdir) / f"{MITM_BASENAME}-ca-cert.pem")


def mode_spec(listen: tuple[str, int]) -> str:
    host, port = listen
    return f"regular@{host}:{port}" if ":" not in host else f"regular@[{host}]:{port}"


@dataclass(frozen=True)
class MtlsListener:
    """``--mtls-listen``: where, and the TLS context that requires client certificates."""

    listen: tuple[str, int]
    context: SSL.Context

    @property
    def spec(self) -> str:
        return mode_spec(self.listen)


def build_master(
    live: Live, confdir: str, listen: tuple[str, int], serving: asyncio.Event | None = None,
    mtls: MtlsListener | None = None,
) -> master.Master:
    """Must be called with a running event loop (mitmproxy binds to it). The stages serve
    whatever state ``live`` holds, once ``serving`` is set (None: at once)."""
    rt = Runtime(live)
    defences.install(seam_hooks(rt))  # the one call that couples the engine to this chain
    leaf_names.install(leaf_filter(confdir))  # a name-constrained CA's leaves (ca/constraints)
    if defences.keylog_active():
        raise VaultproxyError(
            "SECURITY: mitmproxy opened a TLS key log (SSLKEYLOGFILE/MITMPROXY_SSLKEYLOGFILE "
            "was set before vaultproxy was imported); refusing to start. Unset both."
        )
    opts = options.Options()
    m = master.Master(opts, with_termlog=False)
    rt.serving = serving
    # mitmproxy logs four INFO lines per connection (client/server connect/disconnect):
    # per-connection noise and CPU under load. The audit log records every intercepted flow;
    # warnings and errors from mitmproxy's connection handling still show.
    logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
    # Indexed hook dispatch and fewer per-flow checks, or mitmproxy's own (seam/speed.py).
    speed.tune(m).add(
        Ready(rt),
        *chain(rt),
        *([MtlsEntry(rt, mtls.spec, mtls.context)] if mtls is not None else []),
        core.Core(),
        default_addons.DisableH2C(),  # mitmproxy's, a cheap test first (engine/default_addons)
        proxyserver.Proxyserver(),
        dns_resolver.DnsResolver(),
        next_layer.NextLayer(),
        default_addons.TlsConfig(),  # mitmproxy's, a cheap test first (engine/default_addons)
    )
    values = {k: v for k, v in mitm_options(live.require(), confdir, listen).items() if k in opts}
    if mtls is not None:  # a second listener: the proxy protocol inside mutual TLS
        values["mode"] = [mode_spec(listen), mtls.spec]
    opts.update(**values)
    return m


def listen_addresses(m: master.Master) -> list[tuple[str, int]]:
    ps = m.addons.get("proxyserver")
    return [(str(a[0]), int(a[1])) for a in ps.listen_addrs()]


def mode_addresses(m: master.Master, spec: str) -> list[tuple[str, int]]:
    """The addresses the listener of mode ``spec`` is bound to."""
    ps = m.addons.get("proxyserver")
    return [(str(a[0]), int(a[1])) for server in ps.servers
            if server.mode.full_spec == spec for a in server.listen_addrs]


async def wait_listening(m: master.Master, task: asyncio.Task[None]) -> list[tuple[str, int]]:
    for _ in range(200):
        if task.done():
            task.result()
            raise VaultproxyError("the proxy stopped during start-up")
        addrs = listen_addresses(m)
        if addrs:
            return addrs
        await asyncio.sleep(0.05)
    raise VaultproxyError("the proxy did not start listening within 10 s (is the port in use?)")


async def wait_mode(
    m: master.Master, task: asyncio.Task[None], spec: str
) -> list[tuple[str, int]]:
    """The bound addresses of the listener of mode ``spec``, once it listens."""
    for _ in range(200):
        if task.done():
            task.result()
            raise VaultproxyError("the proxy stopped during start-up")
        addrs = mode_addresses(m, spec)
        if addrs:
            return addrs
        await asyncio.sleep(0.05)
    raise VaultproxyError("the mTLS listener did not start within 10 s (is the port in use?)")


DRAIN_SECONDS = 10.0  # how long SIGTERM waits for in-flight requests (every process)


async def drain(m: master.Master, state: ProxyState, seconds: float = DRAIN_SECONDS) -> None:
    """Stop accepting, then give in-flight requests a bounded time to finish."""
    m.options.update(server=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while state.inflight > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if state.inflight > 0:
        print(f"vaultproxy: {state.inflight} requests still in flight at shutdown", file=sys.stderr)
