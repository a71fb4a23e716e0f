# ruff: noqa: E501  (table labels)
"""The proxy's own time on the agent's clock per sequential keep-alive request, A/B between
trees, interleaved, from the proxy main thread's system calls (perf syscall tracepoints: no
ptrace stop per call as strace's, so the figures are the code's, not the tracer's):

  request path   the agent's read returns (~90 B: one TLS record) -> the upstream's write
                 starts (~145 B: the request, with the forward record written before it)
  response path  the upstream's body read returns (1288 B: the 1 KB response's record) ->
                 the agent's write starts (1286 B)

Work the proxy does after the agent's write (and before the agent's next request) is in
neither. A p50 of each over ``-n`` requests per round; less moved by the machine's load than
bench/lean.py's added p50 (which also holds the kernel's loopback hops and the client).

    .venv/bin/python bench/pathtime.py --tree base=/tmp/base --tree now=/tmp/now --rounds 3

Needs ``perf`` with the syscalls tracepoints readable (root in this sandbox). The sizes
above are bench/targets.py's 1 KB GET through a host_inject bearer service."""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.hops import connect, requests
from bench.lean import TreeProxy, compile_tree, load
from bench.targets import VaultproxyHome
from bench.upstream import Nginx, stop_process

EVENTS = "syscalls:sys_enter_read,syscalls:sys_exit_read,syscalls:sys_enter_write"
AGENT_READ = range(80, 101)  # the request's TLS record
UPSTREAM_BODY, AGENT_WRITE, UPSTREAM_WRITE = 1288, 1286, 145
_LINE = re.compile(r"\s([\d.]+):\s+syscalls:sys_(enter|exit)_(read|write):\s*(.*)$")


def _int(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    return int(m.group(1), 0) if m else -1


def spans(perf_script: str) -> tuple[list[float], list[float]]:
    """(response path, request path) durations in seconds, one per request."""
    resp: list[float] = []
    req: list[float] = []
    t_up: float | None = None
    t_agent: float | None = None
    for line in perf_script.splitlines():
        m = _LINE.search(line)
        if m is None:
            continue
        ts, kind, name, args = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        if kind == "exit" and name == "read":
            ret = _int(r"(0x[0-9a-f]+|-?\d+)", args)
            if ret == UPSTREAM_BODY:
                t_up = ts
            elif ret in AGENT_READ:
                t_agent = ts
        elif kind == "enter" and name == "write":
            count = _int(r"count: (0x[0-9a-f]+|\d+)", args)
            if count == AGENT_WRITE and t_up is not None:
                resp.append(ts - t_up)
                t_up = None
            elif count == UPSTREAM_WRITE and t_agent is not None:
                req.append(ts - t_agent)
                t_agent = None
    return resp, req


def window(t: TreeProxy, n: int, out: Path) -> tuple[list[float], list[float]]:
    assert t.proc is not None
    conn = connect(t)
    try:
        requests(conn, 200)  # warm: the tunnel, its lean layer, the pooled upstream
        perf = subprocess.Popen(["perf", "record", "-q", "-e", EVENTS, "-t", str(t.proc.pid),
                                 "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        requests(conn, n)
        perf.send_signal(signal.SIGINT)
        perf.wait(30)
    finally:
        conn.close()
    text = subprocess.run(["perf", "script", "-i", str(out)], capture_output=True, text=True,
                          check=True).stdout
    return spans(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("-n", type=int, default=1000, help="requests per round and tree")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    trees = [(spec.split("=", 1)[0], Path(spec.split("=", 1)[1])) for spec in args.tree]
    if not trees:
        trees = [("this", Path("."))]
    for _, tree in trees:
        compile_tree(tree)
    work = Path(tempfile.mkdtemp(prefix="vp-pathtime-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    nginx = Nginx(work / "nginx").start()
    every: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _ in trees}
    try:
        home = VaultproxyHome.create(work / "home", nginx)
        for r in range(args.rounds):
            for name, tree in trees:
                t = TreeProxy(f"vp-{name}", name, nginx, work)
                t.home, t.service, t.tree = home, "hi", tree
                t.start()
                try:
                    resp, req = window(t, args.n, work / f"perf-{name}-{r}.data")
                finally:
                    if t.proc is not None:
                        stop_process(t.proc)
                every[name][0].extend(resp)
                every[name][1].extend(req)
                print(f"round {r + 1} {name:>6}: response path p50 "
                      f"{statistics.median(resp) * 1e6:.1f} us ({len(resp)}), request path p50 "
                      f"{statistics.median(req) * 1e6:.1f} us ({len(req)}); load {load()}",
                      flush=True)
    finally:
        if nginx.proc:
            stop_process(nginx.proc)
    print()
    for name, (resp, req) in every.items():
        a, b = statistics.median(resp) * 1e6, statistics.median(req) * 1e6
        print(f"{name:>6}: response path p50 {a:.1f} us, request path p50 {b:.1f} us "
              f"(sum {a + b:.1f} us)")


if __name__ == "__main__":
    main()
