# ruff: noqa: E501  (table labels)
"""Instructions (or CPU) per request of the audit path alone, in-process, A/B between trees:
the ``forward`` line as Inject writes it (``stages/ahead.forward_ahead``), the ``request``
line as Record writes it (``stages/record._record``, metrics included), and the FlowRecord
look-ups of one request (``record_of``, 16 per request, on a flow that has its record),
each on a real ``AuditLog`` (a tmp ``audit.jsonl``, rotation at its default size) over a
host_inject bearer service as bench/reqhooks.py builds it:

    .venv/bin/python bench/auditpath.py --tree base=/tmp/base-s11 --tree now=. --callgrind
    .venv/bin/python bench/auditpath.py --tree now=.                       # thread CPU, us

Each part runs in its own valgrind process (instrumentation on around its loop only)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

PARTS = ("forward", "request", "record_of", "both")
SERVICES = """
[[service]]
name = "hi"
hosts = ["hi.bench.test"]
mode = "host_inject"
auth = "bearer"
connect_to = "127.0.0.1:9"
allow_loopback = true
"""


def setup() -> tuple[Any, Any, Any]:
    from mitmproxy import connection, http
    from mitmproxy.net.http import http1

    from tests.harness.proxy import ProxyHome
    from vaultproxy.core.decide import Decision
    from vaultproxy.core.state import Live, ProxyState
    from vaultproxy.files.home import Home
    from vaultproxy.stages.connections import Tunnel
    from vaultproxy.stages.runtime import Runtime

    base = Path(tempfile.mkdtemp(prefix="vp-auditpath-"))
    home_t = ProxyHome.create(base, SERVICES, {"hi": "vpbench_auditpath_value"})
    st = ProxyState.load(Home(home_t.path))
    rt = Runtime(Live(st))
    client = connection.Client(peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 3203),
                               timestamp_start=time.time())
    server = connection.Server(address=("127.0.0.1", 9))
    decision = Decision(st.registry.services[0], None, ("127.0.0.1", 9),
                        target=("hi.bench.test", 443))
    rt.connections.open(client.id, Tunnel(decision, pinned=("127.0.0.1", 9), sni="hi.bench.test"))
    head = b"GET /1k HTTP/1.1\r\nHost: hi.bench.test\r\nUser-Agent: hey/0.0.1\r\n\r\n"

    def new_flow() -> Any:
        from vaultproxy.stages.flowrecord import record_of

        req = http1.read_request_head(head.split(b"\r\n")[:-2])
        req.data.host, req.data.port = server.address
        req.scheme = "https"
        flow = http.HTTPFlow(client, server)
        flow.request = req
        flow.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(), b"", None,
                                      timestamp_start=time.time(), timestamp_end=None)
        rec = record_of(flow)
        rec.decision, rec.path, rec.t0, rec.injected = decision, "/1k", time.monotonic(), True
        return flow

    return rt, st, new_flow


def loop(part: str, n: int, valgrind: bool) -> float:
    from vaultproxy.stages.ahead import forward_ahead
    from vaultproxy.stages.flowrecord import record_of
    from vaultproxy.stages.record import _record

    rt, st, new_flow = setup()
    for spec in filter(None, os.environ.get("AUDITPATH_STUB", "").split(",")):
        # what a part costs: the run with it replaced (module:attr=module2:attr2, or a no-op)
        import importlib

        spec, _, repl = spec.partition("=")
        mod_name, _, attr = spec.partition(":")
        owner: Any = importlib.import_module(mod_name)
        *path, name = attr.split(".")
        for p in path:
            owner = getattr(owner, p)
        if repl:
            m2, _, a2 = repl.partition(":")
            new: Any = importlib.import_module(m2)
            for p in a2.split("."):
                new = getattr(new, p)
        else:
            def new(*a: Any, **k: Any) -> Any:
                return True
        setattr(owner, name, new)
    flows = [new_flow() for _ in range(n + 200)]

    def one(flow: Any) -> None:
        if part in ("forward", "both"):
            forward_ahead(st, flow, record_of(flow))
        if part in ("request", "both"):
            _record(rt, flow, "request", "injected", None)
        if part == "record_of":
            for _ in range(16):
                record_of(flow)

    for f in flows[:200]:
        one(f)
    gc.collect()
    gc.disable()
    if valgrind:
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True,
                       capture_output=True)
    t0 = time.thread_time_ns()
    for f in flows[200:]:
        one(f)
    t = time.thread_time_ns() - t0
    if valgrind:
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True,
                       capture_output=True)
    st.audit.close()
    return t / n / 1000


def callgrind(tree: str, part: str, n: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="vp-auditpath-cg-")) / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           sys.executable, __file__, "--inside-valgrind", "--part", part, "-n", str(n),
           "--tree", f"x={tree}"]
    subprocess.run(cmd, check=True, capture_output=True,
                   env=dict(os.environ, PYTHONMALLOC="malloc", PYTHONPATH=tree), cwd=tree)
    total = 0
    for f in out.parent.glob(out.name + "*"):
        m = re.search(r"^totals: (\d+)", f.read_text(errors="replace"), re.M)
        if m:
            total = max(total, int(m.group(1)))
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--part", default="")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--inside-valgrind", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(Path(__file__).parents[1])]]
    if args.inside_valgrind:
        sys.path.insert(0, trees[0][1])
        loop(args.part, args.n, True)
        return
    if args.inside:
        sys.path.insert(0, trees[0][1])
        print(loop(args.part, args.n, False))
        return
    parts = [args.part] if args.part else list(PARTS)
    unit = "k instructions" if args.callgrind else "us CPU (thread)"
    print(f"| tree | {' | '.join(parts)} |  ({unit} per request, -n {args.n})")
    for name, tree in trees:
        row = []
        for part in parts:
            if args.callgrind:
                row.append(f"{callgrind(str(Path(tree).resolve()), part, args.n) / 1e3:.2f}")
            else:
                out = subprocess.run(
                    [sys.executable, __file__, "--inside", "--part", part, "-n", str(args.n),
                     "--tree", f"x={Path(tree).resolve()}"],
                    check=True, capture_output=True, text=True, cwd=tree,
                    env=dict(os.environ, PYTHONPATH=str(Path(tree).resolve())))
                row.append(f"{float(out.stdout.strip().splitlines()[-1]):.2f}")
        print(f"| {name} | {' | '.join(row)} |", flush=True)


if __name__ == "__main__":
    main()
