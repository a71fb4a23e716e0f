# ruff: noqa: E501  (table labels)
"""Event-loop hops per request of `vaultproxy run --workers 1`, A/B between trees: what the
event loop does between the agent's request bytes and the response's write on one keep-alive
connection (sequential 1 KB GETs through a CONNECT tunnel, lean HTTP/1.1 path, pool on).
    .venv/bin/python bench/hops.py                                    # this tree
    .venv/bin/python bench/hops.py --tree base=/tmp/base --tree now=. -n 500
    .venv/bin/python bench/hops.py ... --think 2      # the agent waits 2 ms before each request
    .venv/bin/python bench/hops.py ... --calls /tmp/c # the Python calls of one request cycle
    .venv/bin/python bench/hops.py ... --bytecodes    # bytecodes per function per request
    .venv/bin/python bench/hops.py --callgrind --tree base=/tmp/base --tree now=. \
        --tree base2=/tmp/base --tree now2=. -n 1000  # instructions per sequential request
    .venv/bin/python bench/hops.py --callgrind --tree w1=. --tree w2=. --workers w2:2
        # --workers 2: the instructions of both processes (one serves the connection)
Per request, counted (not timed, so the machine's load does not move them):
  loop turns   ``epoll_wait``/``epoll_pwait`` calls of the serving thread (``strace -c``):
               one per turn of uvloop's loop (a turn with work queued polls with a zero
               timeout); beside it the same count over as long an idle time
  syscalls     every other system call of that thread in the same window, by name
  call_soon    callbacks queued for the next turn (``loop.call_soon``: a future's done
               callbacks, a task's wake-up), by what they call
  tasks        ``loop.create_task`` calls, by coroutine, and how many ran to their end inside
               ``create_task`` (mitmproxy's eager task factory)
  futures      ``loop.create_future`` calls; timers (``call_later``/``call_at``)
``--callgrind``: instructions per request of the same sequential requests, the proxy under
callgrind (bench/callgrind.py's method without hey's ten connections: steadier, 1-4 k of
~1.2 M between runs of one tree, more with ``--think``, and the latency case). A 1 KB GET
costs ~1.22 M here, ~1.27 M from ``hey -c 1`` and ~1.97 M from ``hey -c 10`` in
bench/callgrind.py: under valgrind hey's ten connections come with new ones (TLS handshakes
show in that profile, and their number varies: that bench's run-to-run spread). Compare
like with like.
The proxy starts with a ``sitecustomize`` (a temporary directory first on PYTHONPATH; the
tree's code is not changed) whose loop factory (engine/loop.py ``factory``) makes a subclass of
uvloop's loop that counts these in Python; its counters go to a file every 0.2 s (a thread:
the strace counts are of the main thread only)."""

from __future__ import annotations

import argparse
import ast
import http.client
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.callgrind import instrumented, start_under_callgrind, stop_and_count
from bench.inside import CALLS_PROFILE, sitecustomize, strace_counts, write_site
from bench.lean import TreeProxy, compile_tree, load, workers_by_tree, workers_for
from bench.targets import VaultproxyHome
from bench.upstream import Nginx, stop_process

SITECUSTOMIZE = sitecustomize(CALLS_PROFILE + r'''
import collections, os, threading, time
OUT = os.environ["VP_HOPS_OUT"]
C = collections.Counter()

def _name(cb):
    owner = getattr(cb, "__self__", None)
    if owner is not None and type(owner).__name__ == "Task":
        coro = owner.get_coro()
        return "wake " + getattr(coro, "__qualname__", repr(coro))
    if owner is not None and hasattr(cb, "__name__") and not isinstance(owner, type):
        return type(owner).__qualname__ + "." + cb.__name__
    return getattr(cb, "__qualname__", None) or repr(cb)

TRACE = os.environ.get("VP_HOPS_TRACE")

def _trace(n):
    import sys
    if n == 300:
        sys.setprofile(_profile)
    elif n == 301:
        sys.setprofile(None)
        with open(TRACE, "w") as fh:
            fh.write("\n".join(CALLS))

def _dump():
    while True:
        time.sleep(0.2)
        tmp = OUT + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(repr(dict(C)))
        os.replace(tmp, OUT)

def _factory():
    import uvloop

    class CountingLoop(uvloop.Loop):
        def call_soon(self, callback, *args, context=None):
            C["call_soon"] += 1
            C["soon: " + _name(callback)] += 1
            return super().call_soon(callback, *args, context=context)

        def call_later(self, delay, callback, *args, context=None):
            C["timers"] += 1
            C["timer: " + _name(callback)] += 1
            return super().call_later(delay, callback, *args, context=context)

        def create_future(self):
            C["futures"] += 1
            return super().create_future()

        def create_task(self, coro, *, name=None, context=None):
            C["tasks"] += 1
            key = "task: " + getattr(coro, "__qualname__", "?")
            C[key] += 1
            if TRACE and key.endswith("hook_task"):
                _trace(C[key])
            task = super().create_task(coro, name=name, context=context)
            if task.done():
                C["tasks done in create_task"] += 1
            return task

    threading.Thread(target=_dump, daemon=True).start()
    return CountingLoop

BYTECODES = os.environ.get("VP_HOPS_BYTECODES")
_KEYS = {}
_LINES = {}

def _instruction(code, offset):
    # one bytecode instruction: counted by function ("bc: dir/file.py:qualname") and, with
    # VP_HOPS_BYTECODES=lines, by line of vaultproxy/seam ("ln: seam/file.py:line")
    key = _KEYS.get(code)
    if key is None:
        tail = "/".join(code.co_filename.rsplit("/", 2)[-2:])
        key = _KEYS[code] = "bc: " + tail + ":" + code.co_qualname
        if BYTECODES == "lines" and "/seam/" in code.co_filename:
            for start, end, line in code.co_lines():
                for at in range(start, end, 2):
                    _LINES[(code, at)] = "ln: " + tail + ":" + str(line)
    C[key] += 1
    line = _LINES.get((code, offset))
    if line is not None:
        C[line] += 1

def _arm_bytecodes():
    # on once the proxy serves (100 hook tasks: the bench's warm-up), not during its start
    import sys
    mon = sys.monitoring
    mon.use_tool_id(4, "vp-hops-bytecodes")
    mon.register_callback(4, mon.events.INSTRUCTION, _instruction)
    while C["tasks"] < 100:
        time.sleep(0.05)
    mon.set_events(4, mon.events.INSTRUCTION)

if BYTECODES:
    threading.Thread(target=_arm_bytecodes, daemon=True).start()

def _patch(module):
    cls = []
    def factory():
        if not cls:
            cls.append(_factory())
        return cls[0]
    module.factory = factory

''', "vaultproxy.engine.loop")


def read_counts(path: Path) -> dict[str, int]:
    for _ in range(50):
        try:
            found: dict[str, int] = ast.literal_eval(path.read_text())
            return found
        except (FileNotFoundError, SyntaxError, ValueError):
            time.sleep(0.1)
    raise RuntimeError(f"no counts in {path}")


def settled(path: Path) -> dict[str, int]:
    """The counters once the proxy is idle (two dumps alike)."""
    time.sleep(0.5)
    return read_counts(path)


def connect(t: TreeProxy) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    assert t.proxy is not None
    phost, pport = t.proxy.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(phost, int(pport), context=ctx, timeout=20)
    conn.set_tunnel(t.base.removeprefix("https://"), 443)
    return conn


SERVED_BY = "any"  # --served-by: which process of --workers N must serve the connection


def holder(pids: list[int], conn: http.client.HTTPSConnection) -> int | None:
    """Which of ``pids`` holds the proxy's end of ``conn`` (/proc/net/tcp: the socket
    whose remote port is the client's local port; /proc/PID/fd: who holds its inode)."""
    assert conn.sock is not None
    port = conn.sock.getsockname()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[2].rsplit(":", 1)[1], 16) == port:
            inodes.add(f"socket:[{f[9]}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None


THINK = 0.0  # seconds the agent waits between a response and its next request (--think)


def requests(conn: http.client.HTTPSConnection, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        if THINK:
            time.sleep(THINK)
        conn.request("GET", "/1k")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")
    return time.perf_counter() - t0


def measure(t: TreeProxy, n: int, out: Path, work: Path, trace: bool) -> None:
    t.start()
    assert t.proc is not None
    pid = t.proc.pid
    try:
        conn = connect(t)
        requests(conn, 200)  # warm: the tunnel, its lean layer, the pooled upstream
        before = settled(out)
        spent = requests(conn, n)
        after = settled(out)
        # the system calls of the main thread over n more requests, then over as long idle
        sys_calls = strace_counts(pid, work / f"strace-{t.name}.txt",
                                  lambda: requests(conn, n), attach=1.0)
        idle = strace_counts(pid, work / f"strace-idle-{t.name}.txt", lambda: time.sleep(spent))
        if trace:
            seq = work / f"strace-seq-{t.name}.txt"
            proc = subprocess.Popen(["strace", "-tt", "-p", str(pid), "-o", str(seq)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            requests(conn, 3)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=20)
            print(seq.read_text())
        conn.close()
    finally:
        t.stop()
    print(f"\n{t.name}: {n} sequential requests on one connection, {spent * 1e3 / n:.3f} ms each "
          f"(load {load()})")
    print(f"| per request | {t.name} |\n|---|---:|")
    polls = ("epoll_wait", "epoll_pwait")
    turns = sum(sys_calls.get(p, 0) for p in polls)
    idle_turns = sum(idle.get(p, 0) for p in polls)
    print(f"| loop turns (epoll_wait/epoll_pwait) | {turns / n:.2f} (idle as long: {idle_turns / n:.2f}) |")
    for name, calls in sorted(sys_calls.items(), key=lambda kv: -kv[1]):
        if name not in polls and calls >= n // 10:
            print(f"| syscall {name} | {calls / n:.2f} |")
    keys = sorted(set(after) | set(before), key=lambda k: -(after.get(k, 0) - before.get(k, 0)))
    for key in ("call_soon", "tasks", "tasks done in create_task", "futures", "timers"):
        print(f"| {key} | {(after.get(key, 0) - before.get(key, 0)) / n:.2f} |")
    bytecodes = sum(after.get(k, 0) - before.get(k, 0) for k in keys if k.startswith("bc: "))
    if bytecodes:
        print(f"| bytecodes (all functions) | {bytecodes / n:.2f} |")
    for key in keys:
        if ":" in key:
            d = after.get(key, 0) - before.get(key, 0)
            if d >= n // 10:
                print(f"| {key} | {d / n:.2f} |")


def instructions(t: TreeProxy, n: int, out: Path) -> float:
    """Instructions per request of ``n`` sequential requests on one keep-alive connection,
    the proxy under ``valgrind --tool=callgrind --instr-atstart=no`` (bench/callgrind.py's
    start and count, without hey's concurrency: one connection, the latency case)."""
    proc, t.proxy = start_under_callgrind(t, out)
    by_pid: dict[str, int] = {}
    try:
        conn = connect(t)
        requests(conn, 100)
        if t.worker_pids and SERVED_BY != "any":  # --workers N: the process it landed on
            for _ in range(40):
                held = holder([proc.pid, *t.worker_pids], conn)
                if (held == proc.pid) == (SERVED_BY == "supervisor"):
                    break
                conn.close()
                conn = connect(t)
                requests(conn, 100)
            else:
                raise RuntimeError(f"no connection served by the {SERVED_BY} in 40 tries")
        instrumented([proc.pid, *t.worker_pids], True)
        requests(conn, n)
        instrumented([proc.pid, *t.worker_pids], False)
        conn.close()
    finally:
        total = stop_and_count(proc, out, by_pid)
    if len(by_pid) > 1:  # --workers N: which process served the connection, which idled
        print("          per process: " + ", ".join(
            f"pid {pid}{' (supervisor)' if int(pid) == proc.pid else ''} "
            f"{ir / n / 1e6:.4f} M" for pid, ir in sorted(by_pid.items())), flush=True)
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("--env", action="append", default=[],
                    help="name:KEY=VALUE, an environment variable for that tree's proxy")
    ap.add_argument("-n", type=int, default=500, help="requests counted")
    ap.add_argument("--trace", action="store_true",
                    help="also print the system calls of 3 requests (strace -tt)")
    ap.add_argument("--calls", help="write the Python calls of one request cycle (from one "
                    "hook task's creation to the next) to CALLS.<tree name>")
    ap.add_argument("--think", type=float, default=0.0,
                    help="ms the agent waits before each request (an agent slower than "
                    "the proxy: every loop turn the proxy takes after a response shows)")
    ap.add_argument("--bytecodes", nargs="?", const="functions", choices=("functions", "lines"),
                    help="also count the Python bytecode instructions each function executes "
                    "per request (sys.monitoring: exact, load-independent; the proxy runs "
                    "several times slower, so its ms are not comparable); 'lines': also per "
                    "line of vaultproxy/seam")
    ap.add_argument("--callgrind", action="store_true",
                    help="instead: instructions per sequential request under callgrind")
    ap.add_argument("--workers", action="append", default=[], metavar="[name:]N",
                    help="`--workers N` for every tree, or one (name:N; default 1); with "
                    "--callgrind the instructions of all N processes (and each one's)")
    ap.add_argument("--served-by", choices=("any", "worker", "supervisor"), default="any",
                    help="with --workers N and --callgrind: reconnect until the connection "
                    "is served by an extra worker (or the supervisor, worker 0)")
    args = ap.parse_args()
    workers = workers_by_tree(args.workers)
    global SERVED_BY
    SERVED_BY = args.served_by
    global THINK
    THINK = args.think / 1000
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree] or [
        ("this", Path(__file__).resolve().parents[1])
    ]
    envs: dict[str, dict[str, str]] = {}
    for spec in args.env:
        name, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        envs.setdefault(name, {})[key] = value
    for _, tree in trees:
        compile_tree(tree)
    work = Path(tempfile.mkdtemp(prefix="vp-hops-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    site = write_site(work, SITECUSTOMIZE)
    nginx = Nginx(work / "nginx").start()
    try:
        home = VaultproxyHome.create(work / "home", nginx)
        if args.callgrind:
            for name, tree in trees:
                t = TreeProxy(f"vp-{name}", name, nginx, work)
                t.home, t.service, t.tree, t.extra_env = home, "hi", tree, envs.get(name)
                t.workers = workers_for(workers, name)
                per = instructions(t, args.n, work / f"callgrind.{name}.out")
                print(f"{name:>8}: {per / 1e6:.4f} M instructions per sequential request; "
                      f"load {load()}", flush=True)
            return
        for name, tree in trees:
            out = work / f"counts-{name}.txt"
            t = TreeProxy(f"vp-{name}", name, nginx, work)
            t.home, t.service, t.tree = home, "hi", tree
            t.workers = workers_for(workers, name)
            t.extra_env = {"VP_HOPS_OUT": str(out), **envs.get(name, {})}
            if args.calls:
                t.extra_env["VP_HOPS_TRACE"] = f"{args.calls}.{name}"
            if args.bytecodes:
                t.extra_env["VP_HOPS_BYTECODES"] = args.bytecodes
            t.path_prefix = str(site)
            measure(t, args.n, out, work, args.trace)
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
