# ruff: noqa: E501  (table labels)
"""In-process CPU per hook handler for one pooled, lean 1 KB keep-alive GET: the production
Master (engine/master.py ``build_master``: our chain, then mitmproxy's default addons, the
indexed dispatch) over a real home (host_inject bearer service ``hi``), each request a fresh
``HTTPFlow`` built as the lean layer builds one (seam/lean.py ``_one``), its hooks called in
chain order from the dispatch index. A quick A/B while iterating on the stages (no sockets,
no TLS: only the handlers), steadier than a whole proxy under ``hey``:

    .venv/bin/python bench/reqhooks.py                                   # this tree
    .venv/bin/python bench/reqhooks.py --tree /tmp/base                 # another tree
    .venv/bin/python bench/reqhooks.py --profile                        # cProfile of the loop

A coroutine handler is driven to its end here (its whole cost is counted; no handler of a
pooled GET suspends: nothing is minted, no approval waits). The upstream exchange (the pool's
own hook) is not run: the flow gets a 200 response head built as the pool builds it."""

from __future__ import annotations

import sys
from pathlib import Path

# bench/profile.py would shadow the standard library's ``profile`` (cProfile imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

HEAD = (
    b"GET /1k HTTP/1.1\r\nHost: hi.bench.test\r\nUser-Agent: hey/0.0.1\r\n"
    b"Content-Type: text/html\r\nAccept-Encoding: gzip\r\n\r\n"
)
SERVICES = """
[[service]]
name = "hi"
hosts = ["hi.bench.test"]
mode = "host_inject"
auth = "bearer"
connect_to = "127.0.0.1:9"
allow_loopback = true
"""
HOOKS = ("requestheaders", "request", "responseheaders", "response")


def _wrap(spec: str, totals: dict[tuple[str, str], int]) -> None:
    """Time ``module:attr`` (or ``module:Class.attr``) wherever it is looked up from there
    (a name another module imported before is not rebound: wrap it there too)."""
    import importlib

    mod_name, _, attr = spec.partition(":")
    owner: Any = importlib.import_module(mod_name)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    fn = getattr(owner, name)
    tt = time.thread_time_ns

    def timed(*a: Any, **k: Any) -> Any:
        t0 = tt()
        try:
            return fn(*a, **k)
        finally:
            totals[("(inside)", spec)] = totals.get(("(inside)", spec), 0) + tt() - t0

    setattr(owner, name, timed)


def _drive(res: Any) -> None:
    """Run a handler's coroutine to its end without the event loop (it must not suspend)."""
    try:
        res.send(None)
    except StopIteration:
        return
    raise RuntimeError("a handler suspended: this bench expects none to")


async def main_async(args: argparse.Namespace) -> None:
    from mitmproxy import connection, http
    from mitmproxy.net.http import http1

    from tests.harness.proxy import ProxyHome
    from vaultproxy.ca import materialize_mitm_confdir
    from vaultproxy.core.decide import Decision
    from vaultproxy.core.state import Live, ProxyState
    from vaultproxy.engine.master import build_master
    from vaultproxy.files.home import Home
    from vaultproxy.keystore import Keystore
    from vaultproxy.secret import Secret
    from vaultproxy.stages.connections import Tunnel

    totals: dict[tuple[str, str], int] = {}
    base = Path(tempfile.mkdtemp(prefix="vp-reqhooks-"))
    home_t = ProxyHome.create(base, SERVICES, {"hi": "vpbench_reqhooks_value"})
    home = Home(home_t.path)
    st = ProxyState.load(home)
    st.install_keystore(Keystore.open(home.keystore, Secret(home_t.password_file.read_text())))
    live = Live(st)
    m = build_master(live, str(materialize_mitm_confdir(home)), ("127.0.0.1", 0))
    addons = m.addons
    rt = next(a.rt for a in addons.chain if hasattr(a, "rt"))
    for a in addons.chain:  # what the addon manager's ``load`` would do
        if hasattr(a, "rt") and hasattr(a, "load"):
            a.load(None)

    client = connection.Client(peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 3203),
                               timestamp_start=time.time())
    client.tls = True
    client.sni = "hi.bench.test"
    server = connection.Server(address=("127.0.0.1", 9))
    server.tls = True
    connect = Decision(st.registry.services[0], None, ("127.0.0.1", 9),
                       target=("hi.bench.test", 443))
    rt.connections.open(client.id, Tunnel(connect, pinned=("127.0.0.1", 9), sni="hi.bench.test"))

    from mitmproxy.proxy.layers import http as lhttp

    from vaultproxy.seam.dispatch import hook_args

    hook_types = {
        "requestheaders": lhttp.HttpRequestHeadersHook,
        "request": lhttp.HttpRequestHook,
        "responseheaders": lhttp.HttpResponseHeadersHook,
        "response": lhttp.HttpResponseHook,
    }

    def new_flow() -> http.HTTPFlow:
        lines = HEAD.split(b"\r\n")[:-2]
        req = http1.read_request_head(list(lines))
        req.data.content = b""
        req.timestamp_end = time.time()
        req.data.host, req.data.port = server.address
        req.scheme = "https"
        flow = http.HTTPFlow(client, server)
        flow.request = req
        flow.live = True
        return flow

    for spec in filter(None, args.wrap.split(",")):
        _wrap(spec, totals)
    for spec in filter(None, args.stub.split(",")):  # what a part costs: the run without it
        mod_name, _, attr = spec.partition(":")
        import importlib

        owner: Any = importlib.import_module(mod_name)
        *path, name = attr.split(".")
        for p in path:
            owner = getattr(owner, p)
        setattr(owner, name, lambda *a, **k: None)
    plans = {h: addons._handlers(hook_types[h](new_flow())) for h in HOOKS}
    tt = time.thread_time_ns

    hooks = HOOKS[:2] if args.request_only else HOOKS

    def one(flow: http.HTTPFlow, timed: bool) -> None:
        for hook in hooks:
            if hook == "responseheaders":
                flow.response = http.Response(
                    b"HTTP/1.1", 200, b"OK",
                    http.Headers([(b"Content-Length", b"1024"), (b"Content-Type", b"text/html")]),
                    b"x" * 1024, None, timestamp_start=time.time(), timestamp_end=None)
            for funcs in plans[hook]:
                for func in funcs:
                    t0 = tt()
                    res = func(flow)
                    if res is not None:
                        _drive(res)
                    if timed:
                        key = (hook, func.__qualname__)
                        totals[key] = totals.get(key, 0) + tt() - t0
        if flow.response is None or flow.response.status_code != 200:
            if args.request_only and flow.response is None:
                return
            raise RuntimeError(f"refused: {flow.response and flow.response.content!r}")

    _ = hook_args
    for _i in range(200):
        one(new_flow(), False)
    flows = [new_flow() for _ in range(args.n)]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for f in flows:
            one(f, False)
        prof.disable()
        st_ = pstats.Stats(prof).sort_stats(args.sort)
        if args.callees:
            st_.print_callees(args.callees)
        else:
            st_.print_stats(args.top)
        return
    # no collection inside the loop: its pause would land on whichever handler runs
    gc.collect()
    gc.disable()
    if args.inside_valgrind:
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True,
                       capture_output=True)
        for f in flows:
            one(f, False)
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True,
                       capture_output=True)
        return
    t0 = tt()
    for f in flows:
        one(f, True)
    whole = (tt() - t0) / args.n / 1000
    rows = sorted(((ns / args.n / 1000, k) for k, ns in totals.items()), reverse=True)
    print(f"{args.tree}: {args.n} flows, handlers "
          f"{sum(r[0] for r in rows):.1f} us/request (loop {whole:.1f}), load {os.getloadavg()[0]:.2f}")
    print("| us/request | hook | handler |\n|---:|---|---|")
    for us, (hook, name) in rows[: args.top]:
        print(f"| {us:.1f} | {hook} | {name} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="cumulative")
    ap.add_argument("--callees", default="")
    ap.add_argument("--wrap", default="", help="module:attr,... also timed (nested)")
    ap.add_argument("--stub", default="", help="module:attr,... replaced by a no-op")
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per flow (valgrind): load-independent")
    ap.add_argument("--request-only", action="store_true",
                    help="only the requestheaders and request hooks")
    ap.add_argument("--inside-valgrind", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.callgrind:
        print(f"{args.tree}: {callgrind(args) / 1e3:.1f} k instructions per flow "
              f"({'requestheaders+request' if args.request_only else 'all four hooks'})")
        return
    sys.path.insert(0, str(Path(args.tree).resolve()))
    asyncio.run(main_async(args))


def callgrind(args: argparse.Namespace) -> float:
    """This bench under callgrind, instrumented around the loop alone: Ir per flow."""
    out = Path(tempfile.mkdtemp(prefix="vp-reqhooks-cg-")) / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           sys.executable, __file__, "--inside-valgrind", "-n", str(args.n), "--tree", args.tree]
    if args.request_only:
        cmd.append("--request-only")
    if args.stub:
        cmd += ["--stub", args.stub]
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, PYTHONMALLOC="malloc"))
    total = 0
    for f in out.parent.glob(out.name + "*"):
        m = re.search(r"^totals: (\d+)", f.read_text(errors="replace"), re.M)
        if m:
            total = max(total, int(m.group(1)))
    return total / args.n


if __name__ == "__main__":
    main()
