"""Instructions per exchange of the pool's own HTTP/1.1 client alone (net/h1pool.py), no
proxy: ``H1Pool.exchange`` + ``body_now`` (the stage's common path: a pooled keep-alive
connection, a Content-Length body that came with the head) against nginx over TLS, 1 KB
GETs, uvloop. Each tree runs twice under callgrind (``--instr-atstart=yes``): the same
set-up and warm-up with 0 and with N exchanges; the difference over N is the exchange's
cost (the loop's own work per turn included). ``--strace``: the system calls per exchange
instead (``strace -c -f``, the same 0/N difference).

    .venv/bin/python bench/h1cg.py --tree base=/tmp/base --tree now=. -n 2000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lean import load
from bench.upstream import Nginx, stop_process

NAME = "hi.bench.test"

RUN = r'''
import sys, uvloop
from vaultproxy.net.h1pool import H1Pool
from vaultproxy.net.outbound import UpstreamKey, pool_context
from pathlib import Path
port, ca, n = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
NAME = "hi.bench.test"

async def main():
    pool = H1Pool(pool_context(UpstreamKey("b", NAME, ca, False), http2=False), 30)
    headers = [(b"Host", NAME.encode()), (b"Accept", b"*/*"), (b"User-Agent", b"bench")]

    async def one():
        resp = await pool.exchange("127.0.0.1", port, NAME, b"GET", b"/1k", headers, b"",
                                   5.0, 5.0)
        body = resp.body_now()
        assert body is not None and len(body) == 1024, body

    for _ in range(100):
        await one()
    for _ in range(n):
        await one()
    await pool.aclose()

uvloop.run(main())
'''


def _callgrind(tree: Path, port: int, ca: Path, n: int, work: Path) -> int:
    out = work / "cg.out"
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONMALLOC": "malloc"}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, "-c", RUN, str(port), str(ca), str(n)],
                   env=env, check=True, capture_output=True, cwd=work)
    text = out.read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert found is not None
    return int(found[1])


def _strace(tree: Path, port: int, ca: Path, n: int, work: Path) -> dict[str, int]:
    out = work / "strace.txt"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(["strace", "-f", "-c", "-o", str(out), sys.executable, "-c", RUN,
                    str(port), str(ca), str(n)], env=env, check=True, capture_output=True,
                   cwd=work)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if (len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit()
                and parts[-1] != "total"):
            counts[parts[-1]] = int(parts[3])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--strace", action="store_true")
    args = ap.parse_args()
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree]
    work = Path(tempfile.mkdtemp(prefix="vp-h1cg-"))
    work.chmod(0o755)
    nginx = Nginx(work / "nginx").start()
    try:
        for name, tree in trees:
            if args.strace:
                zero = _strace(tree, nginx.port, nginx.ca_file, 0, work)
                full = _strace(tree, nginx.port, nginx.ca_file, args.n, work)
                per = {k: (full.get(k, 0) - zero.get(k, 0)) / args.n for k in full}
                shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()) if v >= 0.05)
                print(f"{name:>8}: per exchange: {shown}; load {load()}", flush=True)
                continue
            zero = _callgrind(tree, nginx.port, nginx.ca_file, 0, work)
            full = _callgrind(tree, nginx.port, nginx.ca_file, args.n, work)
            print(f"{name:>8}: {(full - zero) / args.n / 1000:.2f} k instructions per "
                  f"exchange; load {load()}", flush=True)
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
