"""What request rules cost (SPEC §10): 50 rules per service must add <= 2 % CPU per request.

    .venv/bin/python bench/rules.py [--requests 400] [--rounds 7]

One real `vaultproxy run` with two host_inject services on the same loopback TLS upstream:
``plain`` (no rules) and ``ruled`` (50 rules, none of which matches the benchmark path, so
every request tries all 50 and falls to ``default_action = "allow"``: the worst case).
Requests alternate in blocks between the two services over keep-alive connections; the
proxy's CPU time (utime + stime from /proc) per request is measured per block, and the
medians over the rounds are compared. Also prints the pure cost of one ``verdict()`` call
with 50 rules, the part of the difference that is the rule match itself."""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block
from vaultproxy.access.rules import Rule, RuleTable, normalise_path

N_RULES = 50
PATH = "/v1/models/bench-model/completions"


def rules_toml() -> str:
    items = [f'{{ method = "{m}", path = "/api/v{i}/repos/*/items/*", action = "{a}" }}'
             for i, (m, a) in enumerate((("GET", "allow"), ("POST", "approve"),
                                         ("*", "deny"), ("DELETE", "deny")) * 13)][:N_RULES]
    return "[" + ", ".join(items) + "]"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def block(client: httpx.Client, pid: int, host: str, n: int) -> float:
    """Proxy CPU microseconds per request over ``n`` requests."""
    before = cpu_seconds(pid)
    for _ in range(n):
        r = client.get(f"https://{host}{PATH}")
        assert r.status_code == 200, r.text
    return (cpu_seconds(pid) - before) / n * 1e6


def micro() -> tuple[float, float]:
    """(µs per verdict() with 50 rules, µs per normalise_path) on the benchmark path."""
    table = RuleTable([Rule(m, f"/api/v{i}/repos/*/items/*", "deny")
                       for i, m in enumerate(["GET", "*", "POST", "DELETE"] * 13)][:N_RULES],
                      "allow")
    n = 200_000
    v = timeit.timeit(lambda: table.verdict("GET", PATH), number=n) / n * 1e6
    p = timeit.timeit(lambda: normalise_path(PATH), number=n) / n * 1e6
    return v, p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400, help="requests per block")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "up").mkdir()
        up = Upstream(base / "up").start()
        toml = (service_block("plain", "host_inject", "bearer", up.port)
                + service_block("ruled", "host_inject", "bearer", up.port,
                                rules=rules_toml()))
        home = ProxyHome.create(base / "p", toml, {"plain": "vpbench_" + "a" * 24,
                                                    "ruled": "vpbench_" + "b" * 24},
                                files={"upstream-ca.pem": up.ca_file.read_bytes()})
        proxy = ProxyProcess.start(home)
        pid = proxy.proc.pid
        ctx = ssl.create_default_context(cafile=str(home.ca_cert))
        plain_us: list[float] = []
        ruled_us: list[float] = []
        try:
            with httpx.Client(proxy=proxy.url, verify=ctx, timeout=30) as c1, \
                    httpx.Client(proxy=proxy.url, verify=ctx, timeout=30) as c2:
                block(c1, pid, "plain.api.test", 50)  # warm up both paths
                block(c2, pid, "ruled.api.test", 50)
                for i in range(args.rounds):
                    order = [(c1, "plain.api.test", plain_us), (c2, "ruled.api.test", ruled_us)]
                    for client, host, out in order if i % 2 == 0 else order[::-1]:
                        out.append(block(client, pid, host, args.requests))
        finally:
            proxy.stop()
            up.stop()
    p, r = statistics.median(plain_us), statistics.median(ruled_us)
    v, n = micro()
    print(f"proxy CPU per request, median of {args.rounds} rounds x {args.requests} requests:")
    print(f"  no rules : {p:8.1f} us   (rounds: {', '.join(f'{x:.0f}' for x in plain_us)})")
    print(f"  50 rules : {r:8.1f} us   (rounds: {', '.join(f'{x:.0f}' for x in ruled_us)})")
    print(f"  difference: {r - p:+.1f} us = {(r - p) / p * 100:+.2f} % (budget: +2 %)")
    print(f"pure cost: verdict() with {N_RULES} rules {v:.2f} us, normalise_path {n:.2f} us "
          f"= {(v + n) / p * 100:.2f} % of a request's CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
