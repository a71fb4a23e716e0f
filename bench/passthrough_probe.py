"""Repeat the bench's passthrough row on fresh proxies, to catch its intermittent slow runs.

    .venv/bin/python bench/passthrough_probe.py 30     # 30 fresh `vaultproxy run`s, ~10 min

Each round starts a proxy, runs the intercepted workloads bench/run.py runs before the
passthrough row (warm-up, 10 keep-alive conns, new connection per request), checks the
proxy is idle, then runs 3 s of `hey -c 10` to nginx's passthrough port. It prints the
passthrough req/s, the proxy's CPU (% of one core) while idle before and during the row,
and its open fds. See docs/BENCHMARKS.md ("The passthrough row")."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import run_hey
from bench.run import cpu_ticks
from bench.targets import Vaultproxy, VaultproxyHome
from bench.upstream import Nginx


def main(rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="vaultproxy-ptprobe-"))
    work.chmod(0o755)  # nginx workers run unprivileged when we are root
    nginx = Nginx(work / "nginx").start()
    home = VaultproxyHome.create(work / "vp", nginx)
    try:
        for i in range(rounds):
            vp = Vaultproxy("vp-hi", "vaultproxy host_inject", nginx, work / "vp")
            vp.home, vp.service, vp.workers = home, "hi", 1
            vp.start()
            try:
                pid = vp.pids[0]
                run_hey(vp.base + "/1k", proxy=vp.proxy, duration_s=1)
                run_hey(vp.base + "/1k", proxy=vp.proxy, conns=10, duration_s=4)
                run_hey(vp.base + "/1k", proxy=vp.proxy, conns=10, duration_s=4, keepalive=False)
                idle = []
                for _ in range(4):
                    before = cpu_ticks(pid)
                    time.sleep(0.5)
                    idle.append((cpu_ticks(pid) - before) * 2)  # 100 Hz ticks per 0.5 s -> %
                before, t0 = cpu_ticks(pid), time.monotonic()
                res = run_hey(vp.passthrough_base + "/1k", proxy=vp.proxy, conns=10, duration_s=3)
                during = (cpu_ticks(pid) - before) / (time.monotonic() - t0)
                fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
                print(f"{i} passthrough {res.rps:.0f} req/s; proxy CPU idle before {idle} %, "
                      f"during {during:.0f} %; fds {fds}", flush=True)
            finally:
                vp.stop()
    finally:
        nginx.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
