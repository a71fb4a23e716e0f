# ruff: noqa: E501  (table labels)
"""What a NEW agent connection costs `vaultproxy run --workers 1`, A/B between trees. An agent's
`curl`, `gh` or `git` call is one connection: TCP, CONNECT, a TLS handshake with the proxy, one
small request, close (the upstream side comes from the proxy's warm pool: no upstream handshake).
    .venv/bin/python bench/newconn.py --tree base=/tmp/base --tree now=. \\
        --tree base2=/tmp/base --tree now2=. -n 300            # CPU ms, p50, syscalls (/proc)
    .venv/bin/python bench/newconn.py --callgrind --tree base=/tmp/base --tree now=. \\
        --tree base2=/tmp/base --tree now2=. -n 150            # instructions per connection
    .venv/bin/python bench/newconn.py --callgrind --tree now=. --keep   # keep the out files
    .venv/bin/python bench/newconn.py --profile /tmp/nc.prof -n 300    # cProfile of this tree
    .venv/bin/python bench/newconn.py --calls /tmp/nc-calls            # one connection's calls
Each call (sequential, one at a time, after ``--warm`` calls): open a TCP connection to the
proxy, ``CONNECT hi.bench.test:443``, a TLS handshake (the client offers ALPN h2 and
http/1.1, as curl does; the proxy answers http/1.1 as its pooled upstream speaks it), ``GET
/1k``, read the response, close. ``--client curl`` runs one `curl` process per call instead
(its start-up shows in the wall time, not in the proxy's CPU).
``--callgrind``: the proxy under callgrind (bench/callgrind.py's ``start_under_callgrind``), instructions
counted over ``-n`` calls and divided by ``-n``; ``callgrind_annotate`` on the kept out file
(``--keep``) shows the C-level split. Without it, per tree and round: CPU ms per call from
/proc/PID/stat (utime+stime, the system part beside it), the p50 and p90 wall time of a call,
and the system calls of the proxy's main thread per call (``strace -c`` over ``-n // 3`` more
calls; under strace, so not in the CPU window). ``--profile FILE``: cProfile of the proxy's loop
thread over ``-n`` calls (switched on and off inside the process, start-up not in it), printed
by self and cumulative time per call. ``--calls FILE``: every Python call (and C call) of the
loop thread from just before one call's TCP connect to just after its close, to FILE."""

from __future__ import annotations

import argparse
import http.client
import pstats
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.callgrind import instrumented, start_under_callgrind, stop_and_count
from bench.inside import CALLS_PROFILE, sitecustomize, strace_counts, write_site
from bench.lean import TreeProxy, compile_tree, cpu_split, load, passive_opens
from bench.targets import VaultproxyHome
from bench.upstream import Nginx, stop_process

# A loop-thread switch for the proxy (a temporary directory first on PYTHONPATH, as
# bench/hops.py's counters): the loop factory records the loop; a thread polls a control
# file and runs the command on the loop thread (call_soon_threadsafe), then acknowledges.
SITECUSTOMIZE = sitecustomize(CALLS_PROFILE + r'''
import os, sys, threading, time
CTL = os.environ["VP_NEWCONN_CTL"]
LOOPS = []
STATE = {}

def _run(cmd, arg):
    if cmd == "prof-on":
        import cProfile
        STATE["prof"] = cProfile.Profile()
        STATE["prof"].enable()
    elif cmd == "prof-off":
        STATE["prof"].disable()
        STATE["prof"].dump_stats(arg)
    elif cmd == "calls-on":
        CALLS.clear()
        sys.setprofile(_profile)
    elif cmd == "calls-off":
        sys.setprofile(None)
        with open(arg, "w") as fh:
            fh.write("\n".join(CALLS))
    with open(CTL + ".ack", "w") as fh:
        fh.write(cmd)

def _watch():
    while True:
        time.sleep(0.02)
        try:
            text = open(CTL).read()
        except FileNotFoundError:
            continue
        os.unlink(CTL)
        cmd, _, arg = text.partition(" ")
        LOOPS[0].call_soon_threadsafe(_run, cmd, arg)

def _patch(module):
    made = []
    def factory():
        if not made:
            import uvloop
            class Recorded(uvloop.Loop):
                def __init__(self):
                    super().__init__()
                    LOOPS.append(self)
                    threading.Thread(target=_watch, daemon=True).start()
            made.append(Recorded)
        return made[0]
    module.factory = factory

''', "vaultproxy.engine.loop")

HOST = "hi.bench.test"


class Caller:
    """One agent call per ``call()``: a new connection through the proxy's CONNECT tunnel."""

    def __init__(self, t: TreeProxy, client: str, work: Path) -> None:
        assert t.proxy is not None
        self.proxy = t.proxy
        phost, pport = t.proxy.removeprefix("http://").rsplit(":", 1)
        self.addr = (phost, int(pport))
        self.client = client
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.ctx.set_alpn_protocols(["h2", "http/1.1"])  # as curl offers
        # Until the pool knows its upstream speaks HTTP/1.1 the proxy prefers h2: the
        # warm-up offers only http/1.1 (as a curl --http1.1 would), so the pool learns it.
        self.h1 = ssl.create_default_context()
        self.h1.check_hostname = False
        self.h1.verify_mode = ssl.CERT_NONE
        self.h1.set_alpn_protocols(["http/1.1"])
        self.out = work / "curl-body"

    def call(self, warm: bool = False) -> float:
        t0 = time.perf_counter()
        if self.client == "curl":
            done = subprocess.run(
                ["curl", "-sS", "-k", "-o", str(self.out), "-w", "%{http_code}",
                 "--proxy", self.proxy, f"https://{HOST}/1k"],
                capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
            if done.stdout != "200":
                raise RuntimeError(f"curl: {done.stdout!r} {done.stderr!r}")
            return time.perf_counter() - t0
        sock = socket.create_connection(self.addr, timeout=20)
        try:
            sock.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError(f"CONNECT: closed after {head!r}")
                head += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"CONNECT: {head!r}")
            tls = (self.h1 if warm else self.ctx).wrap_socket(sock, server_hostname=HOST)
            if tls.selected_alpn_protocol() != "http/1.1":
                raise RuntimeError(f"ALPN {tls.selected_alpn_protocol()!r}")
            conn = http.client.HTTPConnection(HOST)
            conn.sock = tls
            conn.request("GET", "/1k", headers={"User-Agent": "curl/8.5.0", "Accept": "*/*"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            tls.close()
        finally:
            sock.close()
        return time.perf_counter() - t0

    def calls(self, n: int) -> list[float]:
        return [self.call() for _ in range(n)]

    def warm(self, n: int) -> None:
        for _ in range(n):
            self.call(warm=True)


def command(ctl: Path, cmd: str) -> None:
    """Run ``cmd`` on the proxy's loop thread (the sitecustomize's watcher) and wait for it."""
    ack = Path(str(ctl) + ".ack")
    ack.unlink(missing_ok=True)
    ctl.write_text(cmd)
    t0 = time.monotonic()
    while not ack.exists():
        if time.monotonic() - t0 > 30:
            raise RuntimeError(f"no acknowledgement of {cmd!r}")
        time.sleep(0.01)


def measure(t: TreeProxy, n: int, warm: int, client: str, work: Path) -> dict[str, object]:
    t.start()
    assert t.proc is not None
    pid = t.proc.pid
    try:
        caller = Caller(t, client, work)
        caller.warm(warm)  # leaves, the pool's upstream connection, caches
        time.sleep(0.3)
        opens = passive_opens()
        u0, s0 = cpu_split(pid)
        walls = caller.calls(n)
        u1, s1 = cpu_split(pid)
        opens = passive_opens() - opens
        # the system calls of the main thread over n // 3 more calls
        sys_calls = strace_counts(pid, work / f"strace-{t.name}.txt",
                                  lambda: caller.calls(max(n // 3, 10)), attach=1.0)
    finally:
        t.stop()
    walls.sort()
    m = max(n // 3, 10)
    return {
        "cpu_ms": (u1 + s1 - u0 - s0) * 1000 / n,
        "sys_ms": (s1 - s0) * 1000 / n,
        "p50": statistics.median(walls) * 1000,
        "p90": walls[int(len(walls) * 0.9)] * 1000,
        "opens": opens,
        "syscalls": {k: v / m for k, v in sys_calls.items()},
    }


def instructions(t: TreeProxy, n: int, warm: int, client: str, work: Path) -> float:
    out = work / f"callgrind.{t.name}.out"
    proc, t.proxy = start_under_callgrind(t, out)
    total = 0
    try:
        caller = Caller(t, client, work)
        caller.warm(warm)
        instrumented(proc.pid, True)
        caller.calls(n)
        instrumented(proc.pid, False)
    finally:
        total = stop_and_count(proc, out)
    return total / n


def profiled(t: TreeProxy, n: int, warm: int, client: str, work: Path, prof: str | None,
             calls: str | None) -> None:
    ctl = work / f"ctl-{t.name}"
    t.extra_env = {**(t.extra_env or {}), "VP_NEWCONN_CTL": str(ctl)}
    t.start()
    try:
        caller = Caller(t, client, work)
        caller.warm(warm)
        if prof:
            command(ctl, "prof-on")
            caller.calls(n)
            command(ctl, f"prof-off {prof}")
        if calls:
            command(ctl, "calls-on")
            caller.call()
            time.sleep(0.2)  # the proxy's side of the close
            command(ctl, f"calls-off {calls}")
    finally:
        t.stop()
    if prof:
        print(f"\ncProfile of {n} new connections ({t.name}, load {load()}): {prof}")
        st = pstats.Stats(prof)
        st.sort_stats("tottime").print_stats(40)
        st.sort_stats("cumulative").print_stats(60)
    if calls:
        lines = Path(calls).read_text().splitlines()
        print(f"{len(lines)} calls of one new connection written to {calls} "
              f"({sum(1 for x in lines if x.startswith('py'))} Python functions)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable, interleaved)")
    ap.add_argument("--env", action="append", default=[],
                    help="name:KEY=VALUE, an environment variable for that tree's proxy")
    ap.add_argument("-n", type=int, default=None,
                    help="calls counted (default 150 under --callgrind, else 300)")
    ap.add_argument("--warm", type=int, default=20, help="calls before counting")
    ap.add_argument("--rounds", type=int, default=1, help="rounds over the trees (/proc mode)")
    ap.add_argument("--client", choices=("python", "curl"), default="python")
    ap.add_argument("--callgrind", action="store_true", help="instructions per new connection")
    ap.add_argument("--keep", action="store_true", help="print the work directory (out files)")
    ap.add_argument("--profile", help="cProfile of the first tree's proxy over -n calls to FILE")
    ap.add_argument("--calls", help="the Python calls of one new connection to FILE")
    args = ap.parse_args()
    n = args.n or (150 if args.callgrind else 300)
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
    work = Path(tempfile.mkdtemp(prefix="vp-newconn-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    nginx = Nginx(work / "nginx").start()
    print(f"{n} new connections per tree, {args.client} client; work dir {work}", flush=True)

    def proxy(name: str, tree: Path) -> TreeProxy:
        t = TreeProxy(f"vp-{name}", name, nginx, work)
        t.home, t.service, t.tree, t.extra_env = home, "hi", tree, dict(envs.get(name, {}))
        return t

    try:
        home = VaultproxyHome.create(work / "home", nginx)
        if args.profile or args.calls:
            site = write_site(work, SITECUSTOMIZE)
            name, tree = trees[0]
            t = proxy(name, tree)
            t.path_prefix = str(site)
            profiled(t, n, args.warm, args.client, work, args.profile, args.calls)
            return
        if args.callgrind:
            for name, tree in trees:
                per = instructions(proxy(name, tree), n, args.warm, args.client, work)
                print(f"{name:>8}: {per / 1e6:.3f} M instructions per new connection; "
                      f"load {load()}", flush=True)
            if args.keep:
                print(f"out files: {work}/callgrind.*.out")
            return
        rows: dict[str, list[dict[str, object]]] = {name: [] for name, _ in trees}
        for r in range(args.rounds):
            for name, tree in trees:
                row = measure(proxy(name, tree), n, args.warm, args.client, work)
                rows[name].append(row)
                print(f"round {r + 1} {name:>8}: CPU {row['cpu_ms']:.3f} ms per call "
                      f"(sys {row['sys_ms']:.3f}), p50 {row['p50']:.3f} ms, p90 {row['p90']:.3f} ms, "
                      f"TCP opens {row['opens']}; load {load()}", flush=True)
        for name, _ in trees:
            last = rows[name][-1]["syscalls"]
            assert isinstance(last, dict)
            print(f"\n{name}: system calls of the proxy's main thread per new connection "
                  f"(last round): {sum(last.values()):.1f}")
            print(" ".join(f"{k} {v:.2f}" for k, v in sorted(last.items(), key=lambda kv: -kv[1])
                           if v >= 0.1))
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
