"""CPU per exchange of the pool's own HTTP/1.1 client alone (net/h1pool.py), A/B by
transport: ``H1Pool`` against nginx over TLS, keep-alive, sequential 1 KB GETs, on uvloop
(as ``vaultproxy run``) or asyncio's loop. Thread CPU time over many exchanges, rounds of
each transport interleaved (the machine is shared: compare within one run).

    .venv/bin/python bench/h1leg.py -n 3000 --rounds 5 [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lean import load
from bench.upstream import Nginx, stop_process
from vaultproxy.net.h1pool import H1Pool
from vaultproxy.net.outbound import UpstreamKey, pool_context

NAME = "hi.bench.test"


async def _rounds(port: int, ca: Path, transport: str, n: int) -> float:
    pool = H1Pool(pool_context(UpstreamKey("b", NAME, ca, False), http2=False), 30,
                  transport=transport)
    headers = [(b"Host", NAME.encode()), (b"Accept", b"*/*")]

    async def one() -> None:
        resp = await pool.exchange("127.0.0.1", port, NAME, b"GET", b"/1k", headers, b"",
                                   5.0, 5.0)
        while await resp.next_chunk(5.0) is not None:
            pass

    for _ in range(50):
        await one()
    t0 = time.thread_time()
    for _ in range(n):
        await one()
    spent = time.thread_time() - t0
    await pool.aclose()
    return spent / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--transports", default="loop,socket")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vp-h1leg-"))
    work.chmod(0o755)
    nginx = Nginx(work / "nginx").start()
    results: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for transport in args.transports.split(","):
                if args.loop == "uvloop":
                    import uvloop
                    us = uvloop.run(_rounds(nginx.port, nginx.ca_file, transport, args.n))
                else:
                    us = asyncio.run(_rounds(nginx.port, nginx.ca_file, transport, args.n))
                results.setdefault(transport, []).append(us)
        for transport, values in results.items():
            values.sort()
            print(f"{transport:>8}: median {values[len(values) // 2]:.1f} us CPU/exchange "
                  f"(min {values[0]:.1f}, max {values[-1]:.1f}); {args.loop}; load {load()}")
    finally:
        stop_process(nginx.proc) if nginx.proc else None


if __name__ == "__main__":
    main()
