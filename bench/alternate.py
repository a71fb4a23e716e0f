"""CPU per request of `vaultproxy run`, A/B with every proxy up at once, in alternating turns.

    .venv/bin/python bench/alternate.py --tree uv=. --tree asyncio=. \\
        --env asyncio:VAULTPROXY_UVLOOP=0 --turns 4 -n 2000

bench/lean.py starts each tree anew per round (it also times the start); here every tree's
proxy starts once, gets a warm-up, and then each turn sends ``-n`` 1 KB keep-alive GETs
(`hey -c 10`) to each proxy in turn, reading utime and stime (/proc/PID/stat) before and
after: the trees share every minute of the machine's load drift, one turn apart. Each tree
has its own home (one proxy per home) on one nginx. The load average is printed per turn."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lean import TICK, TreeProxy, compile_tree, load
from bench.load import run_hey
from bench.targets import VaultproxyHome
from bench.upstream import Nginx, stop_process


def times(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("--env", action="append", default=[], help="name:KEY=VALUE")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("-n", type=int, default=2000, help="requests per turn")
    args = ap.parse_args()
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree]
    if len(trees) < 2:
        ap.error("give two or more --tree name=path")
    envs: dict[str, dict[str, str]] = {}
    for spec in args.env:
        name, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        envs.setdefault(name, {})[key] = value
    for _, tree in trees:
        compile_tree(tree)
    work = Path(tempfile.mkdtemp(prefix="vp-alternate-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    nginx = Nginx(work / "nginx").start()
    proxies: dict[str, TreeProxy] = {}
    try:
        for name, tree in trees:
            t = TreeProxy(f"vp-{name}", name, nginx, work)
            t.home = VaultproxyHome.create(work / f"home-{name}", nginx)
            t.service, t.tree, t.extra_env = "hi", tree, envs.get(name)
            t.start()
            proxies[name] = t
        for t in proxies.values():
            run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=300)  # warm
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in proxies}
        for turn in range(args.turns):
            for name, t in proxies.items():
                assert t.proc is not None
                u0, s0 = times(t.proc.pid)
                res = run_hey(t.base + "/1k", proxy=t.proxy, conns=10, count=args.n)
                u1, s1 = times(t.proc.pid)
                ok = max(res.statuses.get(200, 0), 1)
                rows[name].append(((u1 - u0) * 1000 / ok, (s1 - s0) * 1000 / ok))
                u, s = rows[name][-1]
                print(f"turn {turn + 1} {name:>8}: user {u:.3f} + sys {s:.3f} = {u + s:.3f} "
                      f"ms/req ({ok} ok); load {load()}", flush=True)
        print("\nmedians (user + sys per request):")
        for name, r in rows.items():
            print(f"{name:>8}: {statistics.median(u + s for u, s in r):.3f} ms "
                  f"(user {statistics.median(u for u, _ in r):.3f}, "
                  f"sys {statistics.median(s for _, s in r):.3f})")
    finally:
        for t in proxies.values():
            t.stop()
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
