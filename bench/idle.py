"""What an idle `vaultproxy run --workers 1` costs, A/B between trees: how often its event
loop wakes and how much CPU it spends while nobody sends anything.

    .venv/bin/python bench/idle.py --tree base=/tmp/base --tree now=. [--seconds 10 --cpu 60]
    .venv/bin/python bench/idle.py --tree base=/tmp/base --tree now=. --workers 2  # each process

Per tree: start the proxy (bench/lean.py's TreeProxy, the dashboard off), send 20 keep-alive
requests through it (so its pool holds a warm upstream connection, as after real use), wait
3 s, then
  wakeups     ``strace -c -f -p PID`` over ``--seconds``: system calls per second of every
              thread (an idle loop's are its ``epoll_pwait`` returns; the turn a timer's
              callback queues polls once more with a zero timeout)
  CPU         utime+stime of the process (/proc/PID/stat) over ``--cpu`` seconds, per minute
With ``--workers [name:]N`` each of the N processes is counted on its own (one strace per pid,
at the same time; the supervisor first), and the CPU is their sum.
The pool's connection expires ``upstream_pool_idle`` (30 s) after the requests: one wake to
close it falls in the CPU window."""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.hops import connect, requests
from bench.inside import strace_counts
from bench.lean import (
    TreeProxy,
    compile_tree,
    cpu_split_all,
    load,
    workers_by_tree,
    workers_for,
)
from bench.targets import VaultproxyHome
from bench.upstream import Nginx, stop_process


def strace_each(pids: list[int], work: Path, name: str, seconds: float) -> list[dict[str, int]]:
    """``strace_counts`` (every thread) of each pid, all over the same ``seconds``."""
    if len(pids) == 1:
        return [strace_counts(pids[0], work / f"strace-{name}.txt", lambda: time.sleep(seconds),
                              threads=True)]
    out: list[dict[str, int]] = [{} for _ in pids]

    def one(i: int) -> None:
        out[i] = strace_counts(pids[i], work / f"strace-{name}-{i}.txt",
                               lambda: time.sleep(seconds), threads=True)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(pids))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("--seconds", type=float, default=10.0, help="strace window")
    ap.add_argument("--cpu", type=float, default=60.0, help="CPU window")
    ap.add_argument("--workers", action="append", default=[], metavar="[name:]N",
                    help="`--workers N` for every tree, or one (name:N; default 1)")
    args = ap.parse_args()
    workers = workers_by_tree(args.workers)
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree] or [
        ("this", Path(__file__).resolve().parents[1])
    ]
    for _, tree in trees:
        compile_tree(tree)
    work = Path(tempfile.mkdtemp(prefix="vp-idle-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    nginx = Nginx(work / "nginx").start()
    try:
        home = VaultproxyHome.create(work / "home", nginx)
        for name, tree in trees:
            t = TreeProxy(f"vp-{name}", name, nginx, work)
            t.home, t.service, t.tree = home, "hi", tree
            t.workers = workers_for(workers, name)
            t.start()
            assert t.proc is not None
            pids = t.pids
            try:
                conn = connect(t)
                requests(conn, 20)
                conn.close()
                time.sleep(3)
                each = strace_each(pids, work, name, args.seconds)
                u0, s0 = cpu_split_all(pids)
                time.sleep(args.cpu)
                u1, s1 = cpu_split_all(pids)
            finally:
                t.stop()
            per_min = (u1 + s1 - u0 - s0) * 1000 * 60 / args.cpu
            for i, calls in enumerate(each):
                polls = calls.get("epoll_pwait", 0) + calls.get("epoll_wait", 0)
                total = sum(calls.values())
                who = "" if len(pids) == 1 else f" [{'supervisor' if i == 0 else f'worker {i}'}]"
                print(f"{name:>8}{who}: {polls / args.seconds:.1f} epoll waits/s, "
                      f"{total / args.seconds:.1f} syscalls/s (strace -c -f, {args.seconds:g} "
                      f"s: {dict(calls)})", flush=True)
            print(f"{name:>8}: CPU {per_min:.0f} ms per idle minute (user {(u1 - u0) * 1000:.0f} "
                  f"ms, sys {(s1 - s0) * 1000:.0f} ms over {args.cpu:g} s, {len(pids)} "
                  f"process(es)); load {load()}", flush=True)
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
