"""Where a running `vaultproxy run` spends its CPU on the keep-alive path, by sampling
(py-spy), not by tracing: cProfile (bench/profile.py) slows the proxy several times over and
inflates small Python calls; a sampler leaves it at full speed.

    .venv/bin/pip install py-spy          # once; not a dependency of the package
    .venv/bin/python bench/spy.py                     # host_inject, 10 s of hey -c 10
    .venv/bin/python bench/spy.py --raw /tmp/s.txt    # keep the collapsed stacks

Starts nginx and the proxy from this tree (`--workers 1`), warms it up, then records the
proxy's process with ``py-spy record --format raw`` while `hey -c 10` fetches a 1 KB body over
keep-alive connections, and prints the share of samples by area (self time: the frame on
top), the top frames by self time and the top functions by inclusive time. Shares, not
absolute numbers: coroutine stacks are sampled as far as py-spy can walk them."""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import run_hey
from bench.targets import Vaultproxy, VaultproxyHome
from bench.upstream import Nginx

AREAS = [  # first match wins; matched against the frame's text
    ("vaultproxy (ours, seam included)", "vaultproxy/"),
    ("httpcore", "httpcore/"),
    ("h11", "h11/"),
    ("anyio", "anyio/"),
    ("mitmproxy TLS layer", "mitmproxy/proxy/layers/tls"),
    ("mitmproxy HTTP layer", "mitmproxy/proxy/layers/http"),
    ("mitmproxy HTTP/1 reading", "mitmproxy/net/http"),
    ("mitmproxy layer machinery", "mitmproxy/proxy/"),
    ("mitmproxy flow model", "mitmproxy/http.py"),
    ("mitmproxy flow model", "mitmproxy/coretypes"),
    ("mitmproxy flow model", "mitmproxy/flow.py"),
    ("other mitmproxy", "mitmproxy/"),
    ("pyOpenSSL", "OpenSSL/"),
    ("asyncio", "asyncio/"),
]


def summarise(raw: Path, top: int = 25) -> str:
    self_: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        self_[frames[-1]] += n
        areas[next((a for a, needle in AREAS if needle in frames[-1]), "other")] += n
        for f in {re.sub(r":\d+\)", ")", f) for f in frames}:
            incl[f] += n
    if not total:
        return "no samples (is the proxy idle, or py-spy not permitted to attach?)"
    pct = 100 / total
    out = [f"{total} samples", "", "| area (self) | share |", "|---|---|"]
    out += [f"| {a} | {n * pct:.1f}% |" for a, n in areas.most_common()]
    out += ["", "| frame (self) | share |", "|---|---|"]
    out += [f"| `{f[:120]}` | {n * pct:.1f}% |" for f, n in self_.most_common(top)]
    out += ["", "| function (inclusive) | share |", "|---|---|"]
    skip = ("runpy", "/cli/", "__main__", "asyncio/runners.py", "base_events.py")
    out += [
        f"| `{f[:120]}` | {n * pct:.1f}% |"
        for f, n in incl.most_common(top * 3)
        if not any(s in f for s in skip)
    ][:top]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="recorded load (s)")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument(
        "--service", default="hi", choices=("hi", "ph"), help="hi: host_inject, ph: placeholder"
    )
    ap.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="vp-spy-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    raw = args.raw or work / "spy.txt"
    nginx = Nginx(work / "nginx").start()
    try:
        home = VaultproxyHome.create(work / "vp", nginx)
        t = Vaultproxy("vp-spy", "vaultproxy (py-spy)", nginx, work / "vp-run")
        t.home, t.service = home, args.service
        t.start()
        try:
            run_hey(t.base + "/1k", proxy=t.proxy, conns=10, duration_s=2)  # warm
            assert t.proc is not None
            rec = subprocess.Popen(
                [
                    spy,
                    "record",
                    "-r",
                    str(args.rate),
                    "--format",
                    "raw",
                    "-o",
                    str(raw),
                    "-p",
                    str(t.proc.pid),
                    "-d",
                    str(int(args.seconds + 2)),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            res = run_hey(t.base + "/1k", proxy=t.proxy, conns=10, duration_s=args.seconds)
            rec.wait(timeout=args.seconds + 30)
        finally:
            t.stop()
    finally:
        nginx.stop()
    ok = res.statuses.get(200, 0)
    print(
        f"{ok} requests answered 200 in {args.seconds:.0f} s (statuses {res.statuses}), "
        f"load {os.getloadavg()[0]:.2f}\n"
    )
    print(summarise(raw))
    if args.raw is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
