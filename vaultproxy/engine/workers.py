"""``vaultproxy run --workers N``: the supervisor side.

The process started by ``vaultproxy run`` is worker 0 *and* the supervisor: it serves proxy
traffic like a single-process run, and it alone holds the admin API, ``run.json``, the audit
sinks and the signals (every worker appends its own records to ``audit.jsonl``). It starts
N-1 more worker processes (``python -m vaultproxy.engine.worker``) that accept from the
same listening socket, bound once here and passed to each worker at spawn
(engine/listener.py): one accept queue, so a stopped or wedged worker strands no new
connection, and nothing else can join the port.

Coherence, over one private socketpair per worker (engine/channel.py):

- State: every change of the supervisor's ProxyState (reload, unlock, lock, secret write)
  sends the whole state - services.toml text, own listeners, the keystore plaintext or
  "locked" - to every worker. ``ProxyState.settled()`` (called by the admin API before it
  answers a lock, unlock, secret write or reload) pings every worker and waits for the pong,
  which a worker sends only after applying everything before it. A worker that does not
  answer within ``SETTLE_TIMEOUT`` is killed; its replacement starts from the current state.
- Audit: every worker appends its own records to ``audit.jsonl`` (engine/worker_audit.py)
  and sends each line to the supervisor, which counts it for ``/metrics`` and feeds the sinks;
  ``GET /v1/audit`` and ``/metrics`` run the same barrier first, so a request answered by a
  worker is in the audit before the admin API reads it.
- Heartbeat: every ``HEARTBEAT_INTERVAL`` the supervisor pings each watched worker; one that
  has not answered for ``HEARTBEAT_DEADLINE`` (wedged, or stopped with SIGSTOP) is replaced:
  a new worker starts in its slot at once, the old one is continued and asked to drain, and
  killed if it has not exited after ``DRAIN_SECONDS``. Each step is logged. Watched: a worker
  that holds a connection (it says ``busy`` at once when it takes one after it was idle, and
  its number of connections in every pong: engine/worker.py ``_Occupancy``), is starting,
  has a ping unanswered, or that the kernel reported stopped (``_watch_stops``: a thread
  blocked in ``waitid``, no timer). A worker with no connection strands nothing if it stops
  or wedges (it accepts nothing then; the others take every new connection), and a stop is
  seen at once: so while no worker holds a connection, no process of an idle proxy wakes.
  The barrier never waits on a stopped worker: it is killed at once (it cannot confirm the
  new state, and it must not serve a connection under the old one when continued).
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
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vaultproxy.audit import metrics
from vaultproxy.core.state import ProxyState
from vaultproxy.core.wakeup import Wakeup
from vaultproxy.engine.access_channel import AccessServer
from vaultproxy.engine.channel import ChannelClosed, frame, read_frame
from vaultproxy.engine.tokens import redact_frame, spawn_serve
from vaultproxy.errors import VaultproxyError
from vaultproxy.keystore.crypto import wipe

logger = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 10.0
RESTART_WINDOW = 60.0
MAX_RESTARTS = 5
MAX_WORKERS = 64
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_DEADLINE = 5.0  # no pong for this long: the worker is replaced
RETIRE_SECONDS = 12.0  # a replaced worker's time to drain (DRAIN_SECONDS + margin), then kill


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
    last_pong: float = field(default_factory=time.monotonic)
    last_ping: float = 0.0  # when the heartbeat last pinged it
    missed: int = 0  # heartbeat rounds in a row without an answer
    retiring: bool = False  # replaced (heartbeat, barrier): not waited on, not restarted
    written: int = 0  # audit records it sent as written (its "written", counted here)
    gone: bool = False  # exited; its counters are in the supervisor's ``_gone_audit``
    busy: bool = True  # holds a connection (its ``busy``/``idle``; busy until it says idle)
    stop_seq: int = -1  # the last frame number sent before the kernel said it stopped

    def send(self, data: bytes) -> None:
        if self.alive and not self.writer.is_closing():
            self.writer.write(data)

    async def wait_acked(self, n: int) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: self.acked >= n or not self.alive)


class Supervisor:
    def __init__(
        self, state: ProxyState, *, count: int, confdir: str, listen: tuple[str, int],
        sock: socket.socket | None = None,
    ) -> None:
        self.state = state
        self.sock = sock  # the shared listening socket (engine/listener.py)
        self.count = count
        self.confdir = confdir
        self.listen = listen
        self.workers: dict[int, _Worker] = {}
        self.on_pids_changed: Callable[[], None] | None = None
        # Each line a worker wrote to audit.jsonl, with its pid: the audit sinks (sinks/hub.py).
        self.on_audit_line: Callable[[str, int], None] | None = None
        self._seq = 0
        self._stopping = False
        self._restarts: dict[int, deque[float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._respawns: set[asyncio.Task[None]] = set()
        self._gone_audit: list[dict[str, Any]] = []  # last counters of exited workers
        self._serving = False
        self.access = AccessServer(state.access_desk)  # SPEC §10: the desk lives here
        self._heartbeat: asyncio.Task[None] | None = None
        self._retired: set[_Worker] = set()  # replaced, still draining or being killed
        self._follows: set[asyncio.Task[None]] = set()
        self._beat_wake = Wakeup()  # the heartbeat sleeps on it while no worker is watched

    def serve(self) -> None:
        """The run is announced: every worker starts serving (a replacement does at once)."""
        self._serving = True
        for w in self.workers.values():
            w.send(frame({"op": "serve"}))

    def audit_stats(self) -> list[dict[str, Any]]:
        """Every worker's audit counters (exited ones included), as they last reported --
        ``written`` never below the records the supervisor itself received from it, so a
        worker killed between two reports takes none of its count with it."""
        procs = [w for w in {*self.workers.values(), *self._retired} if not w.gone]
        live = [_counted(w) for w in procs if w.audit is not None or w.written]
        return self._gone_audit + live

    # -- start / stop ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start workers 1..N-1 and wait until each one listens."""
        self._loop = asyncio.get_running_loop()
        self.state.on_change.append(self._on_change)
        self.state.barrier = self.barrier
        self.state.minted_push = self.push_minted
        try:
            await asyncio.gather(*(self._spawn(slot) for slot in range(1, self.count)))
        except BaseException:
            await self.stop(timeout=2.0)
            raise
        self._heartbeat = asyncio.create_task(self._beat())

    def pids(self) -> list[int]:
        return [w.proc.pid for _, w in sorted(self.workers.items()) if w.alive]

    async def stop(self, timeout: float) -> None:
        """Ask every worker to drain and exit; kill what is left after ``timeout``."""
        self._stopping = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._beat_wake.wake()
        for task in list(self._respawns):
            task.cancel()
        workers = list(self.workers.values()) + [w for w in self._retiring_workers()
                                                  if w not in self.workers.values()]
        for w in workers:
            if w.retiring:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, signal.SIGCONT)
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
        self.state.minted_push = None

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

    async def push_minted(
        self, service: str, values: list[bytes], expires_at: float | None
    ) -> None:
        """Every live worker redacts ``values`` before this returns (engine/tokens.py)."""
        if not values or not any(w.alive for w in self.workers.values()):
            return
        targets = [w for w in self.workers.values() if w.alive]
        self._seq += 1
        n = self._seq
        data = redact_frame([(service, v, expires_at) for v in values], n)
        for w in targets:
            w.send(data)
        # Each worker answers pong n once it has applied the frame (engine/worker.py).
        await asyncio.gather(*(self._await_ack(w, n) for w in targets))

    async def barrier(self) -> None:
        """Return once every live worker has applied everything sent so far (a stopped one is
        replaced instead: it cannot confirm, and must not serve under the old state)."""
        targets = []
        for w in list(self.workers.values()):
            if not w.alive or w.retiring:
                continue
            if proc_stopped(w.proc.pid):
                self._replace(w, "is stopped (SIGSTOP?) and cannot take the new state",
                              drain=False)
                continue
            targets.append(w)
        if not targets:
            return
        self._seq += 1
        n = self._seq
        ping = frame({"op": "ping", "n": n})
        for w in targets:
            w.send(ping)
        await asyncio.gather(*(self._await_ack(w, n) for w in targets))

    async def _await_ack(self, w: _Worker, n: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        try:
            while True:
                try:
                    await asyncio.wait_for(w.wait_acked(n), 0.25)
                    return
                except TimeoutError:
                    if proc_stopped(w.proc.pid):  # stopped while we wait: never block on it
                        self._replace(w, "is stopped (SIGSTOP?) and cannot take the new state",
                                      drain=False)
                        return
                    if loop.time() >= deadline:
                        raise
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
            # the shared listening socket: inherited by this worker only (pass_fds)
            fds = (child_fd,) if self.sock is None else (child_fd, self.sock.fileno())
            env = {k: v for k, v in os.environ.items() if k != "VAULTPROXY_PASSWORD_FILE"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vaultproxy.engine.worker", str(child_fd),
                pass_fds=fds, start_new_session=True, env=env,
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
            "listen_fd": self.sock.fileno() if self.sock is not None else None,
        }))
        minted = self.state.session.minted_values()
        if minted:  # before it serves: every token minted so far (engine/tokens.py)
            w.send(redact_frame(minted))
        w.task = asyncio.create_task(self._follow(w))
        self._follows.add(w.task)  # held until it ends, whatever becomes of ``w``
        w.task.add_done_callback(self._follows.discard)
        self._watch_stops(w)
        self._beat_wake.wake()  # a starting worker is watched (stopped during start-up?)
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
                    w.written += bool(header.get("ok", True))
                    if payload:
                        self._audit(payload, w.proc.pid)
                elif op == "mint":  # a minted token (engine/tokens.py): the supervisor owns them
                    spawn_serve(self.state, w.send, header)
                elif op == "access":  # approvals, grants, rate limits (access_channel.py)
                    self.access.spawn(w.slot, w.send, header)
                elif op == "busy" or op == "idle":  # a connection after its idle / at start
                    w.busy = op == "busy"
                    if w.busy:
                        self._beat_wake.wake()
                elif op == "audit_state" or op == "pong":
                    if isinstance(header.get("audit"), dict):
                        w.audit = header["audit"]
                    conns = header.get("conns")
                    if type(conns) is int:  # (a pong: its connections when it answered)
                        w.busy = conns > 0
                if op == "pong":
                    w.last_pong = time.monotonic()
                    async with w.cond:
                        w.acked = max(w.acked, int(header.get("n", 0)))
                        w.cond.notify_all()
                elif op == "ready" and not w.ready.done():
                    w.last_pong = time.monotonic()
                    w.ready.set_result(None)
        except ChannelClosed:
            pass
        finally:
            async with w.cond:
                w.alive = False
                w.cond.notify_all()
            self.access.cancel_for(w.slot)  # its held requests are gone; decisions stay
            w.writer.close()
            rc = await w.proc.wait()
            if w.audit is not None or w.written:
                self._gone_audit.append(_counted(w))
            w.gone = True
            if self.workers.get(w.slot) is w:
                del self.workers[w.slot]
            self._exited(w, rc)

    def _exited(self, w: _Worker, rc: int) -> None:
        if not w.ready.done():
            w.ready.set_exception(
                VaultproxyError(f"worker {w.slot} exited during start-up ({_describe(rc)})")
            )
            w.ready.exception()  # retrieved: _spawn may have stopped waiting (its timeout)
            return
        if self._stopping:
            return
        if w.retiring:
            logger.warning("replaced worker %d (pid %d) exited (%s)", w.slot, w.proc.pid,
                           _describe(rc))
            return
        logger.warning("worker %d (pid %d) exited (%s); restarting it", w.slot, w.proc.pid,
                       _describe(rc))
        if self.on_pids_changed is not None:
            self.on_pids_changed()
        self._restart(w.slot, 0.2)

    def _restart(self, slot: int, delay: float) -> None:
        """Start a worker in ``slot`` after ``delay`` (at most MAX_RESTARTS per window)."""
        now = time.monotonic()
        recent = self._restarts.setdefault(slot, deque())
        while recent and now - recent[0] > RESTART_WINDOW:
            recent.popleft()
        if len(recent) >= MAX_RESTARTS:
            logger.error("worker %d exited %d times in %.0f s; not restarting it",
                         slot, len(recent), RESTART_WINDOW)
            return
        recent.append(now)
        task = asyncio.create_task(self._respawn(slot, delay))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, slot: int, delay: float = 0.2) -> None:
        await asyncio.sleep(delay)
        current = self.workers.get(slot)
        if current is not None and current.alive and not current.retiring:
            return  # another start already filled the slot: never orphan a live worker
        try:
            await self._spawn(slot)
        except VaultproxyError as e:
            logger.error("restarting worker %d failed: %s; trying again in 5 s", slot, e)
            if not self._stopping:
                self._restart(slot, 5.0)  # never leave the slot empty for good
            return
        if self.on_pids_changed is not None:
            self.on_pids_changed()

    # -- heartbeat and replacement --------------------------------------------------------
    async def _beat(self) -> None:
        """Ping each watched worker every HEARTBEAT_INTERVAL; replace one silent for the
        deadline. Counted in rounds too: a supervisor that was itself held up (a busy or
        stopped event loop) does not take its own lateness for its workers' silence.
        While no worker is watched (``_watched``: each idle, answered and running) it
        sleeps until one is: an idle proxy is not woken."""
        while not self._stopping:
            if not any(self._watched(w) for w in self.workers.values()):
                await self._beat_wake.sleep(None)
                continue
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            now = time.monotonic()
            for w in list(self.workers.values()):
                if not w.alive or w.retiring:
                    continue
                if not w.ready.done():  # starting: only a stop is worth acting on early
                    if proc_stopped(w.proc.pid):
                        self._replace(w, "was stopped during start-up", drain=False)
                    continue
                if not self._watched(w):
                    w.missed = 0
                    continue
                w.missed = w.missed + 1 if w.last_pong < w.last_ping else 0
                silent = now - w.last_pong
                if silent > HEARTBEAT_DEADLINE and w.missed * HEARTBEAT_INTERVAL >= \
                        HEARTBEAT_DEADLINE:
                    how = "is stopped" if proc_stopped(w.proc.pid) else "is not responding"
                    self._replace(w, f"{how}: no heartbeat answer for {silent:.1f} s",
                                  drain=True)
                else:
                    w.last_ping = now
                    self._seq += 1  # (numbered: a pong to it is an answer after any stop)
                    w.send(frame({"op": "ping", "n": self._seq}))

    @staticmethod
    def _watched(w: _Worker) -> bool:
        """Is ``w`` pinged: it is starting, holds a connection, has a ping unanswered, or
        the kernel said it stopped and it has not answered anything sent since. A worker
        with no connection that runs strands nothing if it stops or wedges (it accepts
        nothing then: the others take every new connection), and a stop is reported
        (``_watch_stops``): it is pinged, and replaced on the deadline, from then on."""
        return (
            not w.ready.done() or w.busy or w.last_pong < w.last_ping
            or w.acked <= w.stop_seq
        )

    def _watch_stops(self, w: _Worker) -> None:
        """A thread that waits (``waitid``, no timer) for the kernel's notice that ``w``'s
        process stopped (SIGSTOP, SIGTSTP): the heartbeat then watches it. It ends with
        the process (``WNOWAIT``: the loop's child watcher still reaps it)."""
        loop = self._loop
        if loop is None:
            return
        pid = w.proc.pid

        def wait() -> None:
            while True:
                try:
                    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WSTOPPED | os.WNOWAIT)
                except ChildProcessError:
                    return  # reaped
                if info is None or info.si_code in (os.CLD_EXITED, os.CLD_KILLED,
                                                    os.CLD_DUMPED):
                    return
                try:  # take this stop's notice (never an exit: WEXITED is not asked)
                    taken = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOHANG)
                except ChildProcessError:
                    return
                try:
                    loop.call_soon_threadsafe(self._stopped, w)
                except RuntimeError:
                    return  # the loop is closed
                if taken is None:  # (never: a notice that cannot be taken) no spin
                    time.sleep(HEARTBEAT_INTERVAL)

        threading.Thread(target=wait, name=f"vaultproxy-worker-{w.slot}-stops",
                         daemon=True).start()

    def _stopped(self, w: _Worker) -> None:
        w.stop_seq = self._seq  # every frame numbered after this was sent after the stop
        self._beat_wake.wake()

    def _replace(self, w: _Worker, why: str, *, drain: bool) -> None:
        """Start a new worker in ``w``'s slot now; drain (or kill) ``w`` in the background."""
        w.retiring = True
        logger.error("worker %d (pid %d) %s; replacing it (%s)", w.slot, w.proc.pid, why,
                     "the old one drains first" if drain else "killed")
        self._retired.add(w)
        task = asyncio.create_task(self._retire(w, drain))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)
        if not self._stopping:
            self._restart(w.slot, 0.0)

    async def _retire(self, w: _Worker, drain: bool) -> None:
        try:
            if drain:
                w.send(frame({"op": "stop"}))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, signal.SIGCONT)
                try:
                    await asyncio.wait_for(asyncio.shield(w.proc.wait()), RETIRE_SECONDS)
                    return
                except TimeoutError:
                    logger.error("replaced worker %d (pid %d) did not drain in %.0f s; "
                                 "killing it", w.slot, w.proc.pid, RETIRE_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            await w.proc.wait()
        finally:
            self._retired.discard(w)

    def _retiring_workers(self) -> list[_Worker]:
        return list(self._retired)

    def _audit(self, payload: bytearray, pid: int) -> None:
        # The worker wrote the record to audit.jsonl itself (engine/worker_audit.py); the
        # copy it sends is counted here, for /metrics, and fed to the audit sinks.
        try:
            line = payload.decode("utf-8")
        except UnicodeDecodeError:
            return
        if self.on_audit_line is not None:
            self.on_audit_line(line, pid)
        if '"request"' not in line and "\\" not in line:
            # Without an escape, a JSON string is its text between quotes: no value of this
            # line is "request", so it is no request record (a ``forward`` one): not parsed.
            return
        try:
            record = json.loads(line)
            if record.get("event") == "request":  # the only event /metrics counts
                metrics.observed_line(record)  # (observed(AuditEvent(**record)), lighter)
        except Exception:  # noqa: BLE001, S110 - metrics must never break the audit path
            pass


def _counted(w: _Worker) -> dict[str, Any]:
    stats = dict(w.audit or {"written": 0, "failed": 0, "dropped": 0, "pending": 0,
                             "healthy": True})
    stats["written"] = max(int(stats.get("written", 0)), w.written)
    return stats


def proc_stopped(pid: int) -> bool:
    """Is ``pid`` in a stop state (SIGSTOP/SIGTSTP, or a tracer's)? Linux /proc only."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2:].split(b" ", 1)
    return bool(fields) and fields[0] in (b"T", b"t")


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"
