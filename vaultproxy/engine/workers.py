"""``vaultproxy run --workers N``: the supervisor side.

The process started by ``vaultproxy run`` is worker 0 *and* the supervisor: it serves proxy
traffic like a single-process run, and it alone holds the admin API, ``run.json``, the audit
file and the signals. It starts N-1 more worker processes (``python -m
vaultproxy.engine.worker``) that bind the same proxy address with SO_REUSEPORT
(seam/reuseport.py; engine/port_check.py checks the port first); the kernel spreads new
connections across all N.

Coherence, over one private socketpair per worker (engine/channel.py):

- State: every change of the supervisor's ProxyState (reload, unlock, lock, secret write)
  sends the whole state - services.toml text, own listeners, the keystore plaintext or
  "locked" - to every worker. ``ProxyState.settled()`` (called by the admin API before it
  answers a lock, unlock, secret write or reload) pings every worker and waits for the pong,
  which a worker sends only after applying everything before it. A worker that does not
  answer within ``SETTLE_TIMEOUT`` is killed; its replacement starts from the current state.
- Audit: workers send each record to the supervisor, the only writer of ``audit.jsonl``;
  ``GET /v1/audit`` and ``/metrics`` run the same barrier first, so a request answered by a
  worker is in the audit before the admin API reads it.
- Lifetime: a worker that exits unexpectedly is restarted (at most ``MAX_RESTARTS`` per
  ``RESTART_WINDOW`` per slot); a worker whose channel closes (supervisor gone) locks and
  exits at once. SIGTERM to the supervisor sends ``stop`` to every worker: each drains its
  in-flight requests and exits; their last audit records arrive before the file is closed.

The keystore plaintext crosses a process boundary here: a same-uid socketpair that no other
process holds (the fds are not inheritable except for the one passed to its worker), never
argv, environment or a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vaultproxy.audit import AuditEvent, metrics
from vaultproxy.engine.channel import ChannelClosed, frame, read_frame
from vaultproxy.engine.tokens import spawn_serve
from vaultproxy.errors import VaultproxyError
from vaultproxy.keystore.crypto import wipe
from vaultproxy.state import ProxyState

logger = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 10.0
RESTART_WINDOW = 60.0
MAX_RESTARTS = 5
MAX_WORKERS = 64


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(eq=False)
class _Worker:
    slot: int
    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    ready: asyncio.Future[None]
    acked: int = 0
    alive: bool = True
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None
    audit: dict[str, Any] | None = None  # its audit counters, as last reported

    def send(self, data: bytes) -> None:
        if self.alive and not self.writer.is_closing():
            self.writer.write(data)

    async def wait_acked(self, n: int) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: self.acked >= n or not self.alive)


class Supervisor:
    def __init__(
        self, state: ProxyState, *, count: int, confdir: str, listen: tuple[str, int]
    ) -> None:
        self.state = state
        self.count = count
        self.confdir = confdir
        self.listen = listen
        self.workers: dict[int, _Worker] = {}
        self.on_pids_changed: Callable[[], None] | None = None
        self._seq = 0
        self._stopping = False
        self._restarts: dict[int, deque[float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._respawns: set[asyncio.Task[None]] = set()
        self._gone_audit: list[dict[str, Any]] = []  # last counters of exited workers
        self._serving = False

    def serve(self) -> None:
        """The run is announced: every worker starts serving (a replacement does at once)."""
        self._serving = True
        for w in self.workers.values():
            w.send(frame({"op": "serve"}))

    def audit_stats(self) -> list[dict[str, Any]]:
        """Every worker's audit counters (exited ones included), as they last reported."""
        live = [w.audit for w in self.workers.values() if w.audit is not None]
        return self._gone_audit + live

    # -- start / stop ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start workers 1..N-1 and wait until each one listens."""
        self._loop = asyncio.get_running_loop()
        self.state.on_change.append(self._on_change)
        self.state.barrier = self.barrier
        try:
            await asyncio.gather(*(self._spawn(slot) for slot in range(1, self.count)))
        except BaseException:
            await self.stop(timeout=2.0)
            raise

    def pids(self) -> list[int]:
        return [w.proc.pid for _, w in sorted(self.workers.items()) if w.alive]

    async def stop(self, timeout: float) -> None:
        """Ask every worker to drain and exit; kill what is left after ``timeout``."""
        self._stopping = True
        for task in list(self._respawns):
            task.cancel()
        workers = list(self.workers.values())
        bye = frame({"op": "stop"})
        for w in workers:
            w.send(bye)
        procs = [w.proc.wait() for w in workers]
        if procs:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(p) for p in procs], timeout=timeout
            )
            if pending:
                logger.warning("%d worker(s) did not stop in %.0f s; killing",
                               len(pending), timeout)
                for w in workers:
                    if w.proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            w.proc.kill()
                await asyncio.wait(pending)
        tasks = [w.task for w in workers if w.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)  # their last audit records
        with contextlib.suppress(ValueError):
            self.state.on_change.remove(self._on_change)
        self.state.barrier = None

    # -- state changes and the barrier ----------------------------------------------------
    def _on_change(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._push()
        else:  # unlock runs the KDF in a thread
            loop.call_soon_threadsafe(self._push)

    def _state_frame(self, header: dict[str, object]) -> bytes:
        st = self.state
        ks = st.session.keystore
        plain = ks.plaintext() if ks is not None else bytearray()
        try:
            self._seq += 1
            return frame(
                {
                    **header,
                    "n": self._seq,
                    "config": st.snapshot.text,
                    "own": sorted([h, p] for h, p in st.own_listeners),
                    "locked": ks is None,
                    # ca_cert files are named by content: a changed one makes workers rebuild
                    "trust": sorted(str(p) for p in st.snapshot.trust_files.values()),
                },
                plain,
            )
        finally:
            wipe(plain)

    def _push(self) -> None:
        if not self.workers or self._stopping:
            return
        data = self._state_frame({"op": "state"})
        for w in list(self.workers.values()):
            w.send(data)

    async def barrier(self) -> None:
        """Return once every live worker has applied everything sent so far."""
        targets = [w for w in self.workers.values() if w.alive]
        if not targets:
            return
        self._seq += 1
        n = self._seq
        ping = frame({"op": "ping", "n": n})
        for w in targets:
            w.send(ping)
        await asyncio.gather(*(self._await_ack(w, n) for w in targets))

    async def _await_ack(self, w: _Worker, n: int) -> None:
        try:
            await asyncio.wait_for(w.wait_acked(n), SETTLE_TIMEOUT)
        except TimeoutError:
            logger.error(
                "worker %d (pid %d) did not confirm the new state within %.0f s; killing it",
                w.slot, w.proc.pid, SETTLE_TIMEOUT,
            )
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            await w.proc.wait()

    # -- one worker -----------------------------------------------------------------------
    async def _spawn(self, slot: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            child_fd = child.fileno()
            os.set_inheritable(child_fd, True)
            env = {k: v for k, v in os.environ.items() if k != "VAULTPROXY_PASSWORD_FILE"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vaultproxy.engine.worker", str(child_fd),
                pass_fds=(child_fd,), start_new_session=True, env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        w = _Worker(slot, proc, writer, reader, ready)
        self.workers[slot] = w
        home = str(self.state.home.path)
        w.send(self._state_frame({
            "op": "init", "slot": slot, "home": home, "confdir": self.confdir,
            "listen": list(self.listen),
        }))
        w.task = asyncio.create_task(self._follow(w))
        if self._serving and self.on_pids_changed is not None:
            self.on_pids_changed()  # a replacement: its pid is listed from its first moment
        try:
            await asyncio.wait_for(asyncio.shield(ready), READY_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise VaultproxyError(
                f"worker {slot} did not start listening within {READY_TIMEOUT:.0f} s"
            ) from None
        if self._serving:
            w.send(frame({"op": "serve"}))
            logger.warning("worker %d (pid %d) serves", slot, proc.pid)

    async def _follow(self, w: _Worker) -> None:
        try:
            while True:
                header, payload = await read_frame(w.reader)
                op = header["op"]
                if op == "audit":
                    self._audit(payload)
                elif op == "mint":  # a minted token (engine/tokens.py): the supervisor owns them
                    spawn_serve(self.state, w.send, header)
                elif op == "audit_state" or op == "pong":
                    if isinstance(header.get("audit"), dict):
                        w.audit = header["audit"]
                if op == "pong":
                    async with w.cond:
                        w.acked = max(w.acked, int(header.get("n", 0)))
                        w.cond.notify_all()
                elif op == "ready" and not w.ready.done():
                    w.ready.set_result(None)
        except ChannelClosed:
            pass
        finally:
            async with w.cond:
                w.alive = False
                w.cond.notify_all()
            w.writer.close()
            rc = await w.proc.wait()
            if w.audit is not None:
                self._gone_audit.append(w.audit)
            if self.workers.get(w.slot) is w:
                del self.workers[w.slot]
            self._exited(w, rc)

    def _exited(self, w: _Worker, rc: int) -> None:
        if not w.ready.done():
            w.ready.set_exception(
                VaultproxyError(f"worker {w.slot} exited during start-up ({_describe(rc)})")
            )
            return
        if self._stopping:
            return
        logger.warning("worker %d (pid %d) exited (%s); restarting it", w.slot, w.proc.pid,
                       _describe(rc))
        if self.on_pids_changed is not None:
            self.on_pids_changed()
        now = time.monotonic()
        recent = self._restarts.setdefault(w.slot, deque())
        while recent and now - recent[0] > RESTART_WINDOW:
            recent.popleft()
        if len(recent) >= MAX_RESTARTS:
            logger.error("worker %d exited %d times in %.0f s; not restarting it",
                         w.slot, len(recent), RESTART_WINDOW)
            return
        recent.append(now)
        task = asyncio.create_task(self._respawn(w.slot))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, slot: int) -> None:
        await asyncio.sleep(0.2)
        try:
            await self._spawn(slot)
        except VaultproxyError as e:
            logger.error("restarting worker %d failed: %s", slot, e)
            return
        if self.on_pids_changed is not None:
            self.on_pids_changed()

    def _audit(self, payload: bytearray) -> None:
        # The worker wrote the record to audit.jsonl itself (engine/worker_audit.py); the
        # copy it sends is only counted here, for /metrics.
        try:
            line = payload.decode("utf-8")
            metrics.observed(AuditEvent(**json.loads(line)))
        except Exception:  # noqa: BLE001, S110 - metrics must never break the audit path
            pass


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"
