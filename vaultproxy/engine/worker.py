"""One extra worker process of ``vaultproxy run --workers N`` (see engine/workers.py).

Started by the supervisor as ``python -m vaultproxy.engine.worker FD``, where FD is its end
of a private socketpair. It receives its whole configuration and state over that channel
(never argv or environment), accepts from the listening socket the supervisor bound and
passed down (engine/listener.py) through the same stage chain as the supervisor, forwards
audit records, and applies state changes in order. It has no admin listener and ignores
SIGINT/SIGHUP (the supervisor handles those); SIGTERM or a ``stop`` message drains and exits
0; a closed channel (supervisor gone) locks and exits 1.
"""

# ruff: noqa: E402  (seam_imports.lean() must run before the imports below)
from __future__ import annotations

from vaultproxy.seam import imports as seam_imports

seam_imports.lean()  # before anything imports mitmproxy.master or httpx (seam/imports.py)

import asyncio
import contextlib
import faulthandler
import gc
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from vaultproxy.core.state import Live, ProxyState
from vaultproxy.engine import loop as engine_loop
from vaultproxy.engine import nodump
from vaultproxy.engine.access_channel import RemoteDesk
from vaultproxy.engine.channel import ChannelClosed, frame, read_frame
from vaultproxy.engine.master import DRAIN_SECONDS, build_master, drain, wait_listening
from vaultproxy.engine.tokens import RemoteTokens, apply_redact, deliver
from vaultproxy.engine.worker_audit import WorkerAudit
from vaultproxy.files.home import Home
from vaultproxy.keystore import Keystore
from vaultproxy.keystore.crypto import wipe
from vaultproxy.seam import accept as seam_accept
from vaultproxy.seam import listener as seam_listener
from vaultproxy.values import logfilter

logger = logging.getLogger("vaultproxy.worker")



def apply_state(state: ProxyState, header: dict[str, Any], payload: bytearray) -> None:
    """Make ``state`` what the supervisor sent: registry text, own listeners, keystore."""
    try:
        text = header["config"]
        trust = header.get("trust")
        mine = sorted(str(p) for p in state.snapshot.trust_files.values())
        if text != state.snapshot.text or (trust is not None and trust != mine):
            state.reload_text(text)  # (a changed ca_cert file: same text, new trust file)
        own = frozenset((str(h), int(p)) for h, p in header["own"])
        if own != state.own_listeners:
            state.set_own_listeners(own)
        if header["locked"]:
            if not state.locked:
                state.lock()
        else:
            state.install_keystore(Keystore.view(state.home.keystore, payload))
    finally:
        wipe(payload)


async def _follow(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: ProxyState,
    serving: asyncio.Event | None = None,
) -> str:
    """Apply the supervisor's messages in order; return why we stopped ("stop" or "eof")."""
    try:
        while True:
            header, payload = await read_frame(reader)
            op = header["op"]
            if op == "state":
                apply_state(state, header, payload)
            elif op == "minted":  # the supervisor's answer to our "mint" (engine/tokens.py)
                deliver(state, header, payload)
                continue
            elif op == "access_answer":  # approvals / rate limits (access_channel.py)
                if isinstance(state.access, RemoteDesk):
                    state.access.answer(header)
                continue
            elif op == "redact":  # minted values to redact, pushed before anyone uses them
                for name in apply_redact(state, payload):
                    service = state.registry.by_name(name)
                    if service is not None:  # compile it now, off the loop, not in a reply
                        asyncio.get_running_loop().run_in_executor(
                            None, state.session.redactor_for, service)
                if header.get("n"):  # the supervisor waits for this before using the token
                    writer.write(frame({"op": "pong", "n": header["n"]}))
                continue
            elif op == "stop":
                return "stop"
            elif op == "serve" and serving is not None:
                serving.set()
            if op in ("state", "ping"):
                pong = {"op": "pong", "n": header.get("n", 0), **_audit_report(state),
                        **_OCCUPANCY.report()}
                writer.write(frame(pong))
    except ChannelClosed:
        return "eof"


ORPHAN_DRAIN_SECONDS = 5.0


def _audit_report(state: ProxyState) -> dict[str, Any]:
    report = getattr(state.audit, "report", None)
    return {"audit": report()} if callable(report) else {}


class _Occupancy:
    """What this worker tells the supervisor of its connections, which pings only a worker
    that holds one (engine/workers.py): ``busy`` at once when it takes a connection while
    the supervisor takes it for idle; ``conns`` (their number) in every pong, which is how
    it learns that the last one ended (at the next ping: not a frame per connection). Until
    it is told ``idle`` the supervisor takes a worker for busy."""

    _BUSY = frame({"op": "busy"})
    _IDLE = frame({"op": "idle"})

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.idle_told = False  # the supervisor's last word from us: no connection

    def start(self, writer: asyncio.StreamWriter) -> None:
        """From now on (the shared socket's SharedServer counts connections)."""
        self.writer = writer
        seam_accept.OCCUPANCY.notify = self._notify
        if seam_accept.OCCUPANCY.count == 0:
            self.idle_told = True
            writer.write(self._IDLE)

    def _notify(self, busy: bool) -> None:
        writer = self.writer
        if busy and self.idle_told and writer is not None and not writer.is_closing():
            self.idle_told = False
            writer.write(self._BUSY)

    def report(self) -> dict[str, int]:
        """``conns`` for a pong (nothing before ``start``: the supervisor keeps "busy")."""
        if self.writer is None:
            return {}
        count = seam_accept.OCCUPANCY.count
        self.idle_told = count == 0
        return {"conns": count}


_OCCUPANCY = _Occupancy()


async def orphaned(m: Any, state: ProxyState) -> None:
    """The supervisor is gone (its end of the channel closed: it exited or was killed).
    At once: stop accepting and lock (a request not yet injected gets ``503 locked``); the
    requests already forwarded finish, scrubbed with the redactor they were injected under
    and audited by this process itself (worker_audit.py); then exit."""
    logger.error("the supervisor is gone; this worker stops accepting, locks, finishes its "
                 "%d in-flight request(s) and exits", state.inflight)
    m.options.update(server=False)
    state.lock()
    if isinstance(state.tokens, RemoteTokens):
        state.tokens.abandon()  # no one will answer a token request any more
    await drain(m, state, ORPHAN_DRAIN_SECONDS)
    m.shutdown()


async def run(fd: int) -> int:
    loop = asyncio.get_running_loop()
    os.set_inheritable(fd, False)  # nothing this worker might start gets the channel
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        header, payload = await read_frame(reader)
    except ChannelClosed:
        return 1
    if header["op"] != "init":
        return 2
    home = Home(Path(header["home"]))
    audit = WorkerAudit(home.audit, writer, loop)
    state = ProxyState.from_text(home, header["config"], audit=audit)
    state.tokens = RemoteTokens(state, writer.write)  # the supervisor owns minted tokens
    state.access = RemoteDesk(  # the supervisor owns approvals and rate limits
        writer.write, lambda: float(state.registry.config.approvals.hold_seconds))
    apply_state(state, header, payload)
    live = Live(state)
    listen_fd = header.get("listen_fd")
    if isinstance(listen_fd, int):
        os.set_inheritable(listen_fd, False)
        seam_listener.use(socket.socket(fileno=listen_fd))
    host, port = header["listen"]
    serving = asyncio.Event()  # set by the supervisor's "serve" once the run is announced
    m = build_master(live, header["confdir"], (str(host), int(port)), serving)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    master_task = asyncio.create_task(m.run())
    follower: asyncio.Task[str] | None = None
    try:
        await wait_listening(m, master_task)
        writer.write(frame({"op": "ready"}))
        if isinstance(listen_fd, int):  # the shared socket's SharedServer counts connections
            _OCCUPANCY.start(writer)
        # The ~70k objects of start-up (modules, config, chain) leave the cyclic GC: a full
        # collection walked them all (~100 ms, a pause in whatever response was streaming).
        gc.freeze()
        follower = asyncio.create_task(_follow(reader, writer, state, serving))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({master_task, follower, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if master_task.done():
            master_task.result()
            return 1
        if follower.done() and follower.result() == "eof":
            await orphaned(m, state)
            with contextlib.suppress(asyncio.CancelledError):
                await master_task  # a clean exit: nothing left for asyncio.run to cancel
            return 1
        await drain(m, state, DRAIN_SECONDS)
        m.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await master_task
        return 0
    finally:
        if follower is not None:
            follower.cancel()
        state.lock()
        live.state = None
        state.audit.close()
        with contextlib.suppress(Exception):
            writer.write(frame({"op": "audit_state", **_audit_report(state)}))
            await writer.drain()  # the last counters
        writer.close()
        print(f"vaultproxy worker (pid {os.getpid()}): {state.audit.summary()}", file=sys.stderr,
              flush=True)


def main(argv: list[str]) -> int:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nodump.disable()  # execve made us dumpable again
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # `kill -USR1 PID` prints where a wedged worker is (its Python stacks) to the proxy log.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logfilter.install()
    if len(argv) != 2 or not argv[1].isdigit():
        print("vaultproxy worker: started by `vaultproxy run --workers N`, not by hand",
              file=sys.stderr)
        return 2
    return engine_loop.run(run, int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
