"""bench/run.py, unchanged, plus the proxy's CPU time per request for each measured workload.

    .venv/bin/python bench/cpu_per_request.py --quick --rounds 2 --no-doc

Takes run.py's arguments. Wall-clock req/s on a shared, loaded machine mostly measures the
other work; the CPU the proxy's own processes spent (utime+stime from /proc, summed over
every worker) per request does much less so. Prints, after run.py's output, the CPU ms per
request per round and target, and each vaultproxy target's ratio to bare mitmdump measured
in the same round (lower is better). Run it from the root of the tree under test: it imports
that tree's bench/ and the proxy it starts runs that tree's code."""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.getcwd())
import bench.run as br  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
KEYS = {1: "conc10", 3: "seq", 4: "newconn", 5: "passthrough"}  # run.measure's call order
LOG: list[tuple[int, str, int, float, int]] = []  # round, target, call index, cpu s, requests
state: dict[str, Any] = {"t": None, "i": 0, "round": 0, "seen": set()}


def _ticks(pids: list[int]) -> int:
    return sum(br.cpu_ticks(p) for p in pids)


def _wrap(fn: Callable[..., Any], count: Callable[[Any], int]) -> Callable[..., Any]:
    def inner(*a: Any, **kw: Any) -> Any:
        t = state["t"]
        pids = list(t.pids) if t is not None else []
        before = _ticks(pids)
        res = fn(*a, **kw)
        after = _ticks(pids)
        if t is not None:
            LOG.append((state["round"], t.name, state["i"], (after - before) / HZ, count(res)))
            state["i"] += 1
        return res

    return inner


def measure(t: Any, d: dict[str, float], results: dict[str, dict[str, object]]) -> None:
    if t.name in state["seen"]:  # a target seen again: the next round began
        state["seen"] = set()
        state["round"] += 1
    state["seen"].add(t.name)
    state["t"], state["i"] = t, 0
    try:
        _measure(t, d, results)
    finally:
        state["t"] = None


def report() -> None:
    per: dict[tuple[int, str, str], float] = {}
    for rnd, name, i, cpu, n in LOG:
        if i in KEYS and n:
            per[(rnd, name, KEYS[i])] = 1000 * cpu / n
    rounds = sorted({k[0] for k in per})
    names = [n for n in dict.fromkeys(k[1] for k in per) if n != "direct"]
    print("\nCPU ms per request (proxy processes' utime+stime / requests), per round:")
    for key in KEYS.values():
        print(f"  {key}: " + "; ".join(
            f"{n} " + ",".join(f"{per.get((r, n, key), float('nan')):.3f}" for r in rounds)
            for n in names))  # fmt: skip
    print("CPU-per-request ratio vaultproxy / mitmdump (lower is better), median (rounds):")
    for key in KEYS.values():
        cells = []
        for n in (n for n in names if n.startswith("vp-")):
            rs = [per[(r, n, key)] / per[(r, "mitmdump", key)] for r in rounds
                  if (r, n, key) in per and per.get((r, "mitmdump", key))]  # fmt: skip
            cells.append(
                f"{n} {statistics.median(rs):.2f} ({', '.join(f'{x:.2f}' for x in rs)})"
                if rs
                else f"{n} -"
            )
        print(f"CPURATIO {key}: " + " | ".join(cells))


br.run_hey = _wrap(br.run_hey, lambda r: sum(r.statuses.values()))
br.sequential = _wrap(br.sequential, lambda r: r.count)
_measure = br.measure
br.measure = measure

if __name__ == "__main__":
    rc = br.main(sys.argv[1:])
    report()
    sys.exit(rc)
