"""Instructions per request of the hook dispatch alone, A/B between trees, under callgrind:
one keep-alive request's four hook phases (requestheaders, request, responseheaders,
response; a host_inject bearer service inside an intercepted tunnel) fired through the
production manager (seam/speed.py) over Ready, ``chain()`` and the default addons the
embedded Master runs (minus TlsConfig, which needs a CA). No sockets, no TLS: what the
stages and their calling cost, counted without the machine's load.

    .venv/bin/python bench/hookphases.py --tree base=/tmp/base --tree now=. -n 300

Per tree: ``valgrind --tool=callgrind --instr-atstart=no`` runs this file with ``--inner``
(PYTHONPATH and cwd = the tree); the flows are built and 200 warm-up requests run first,
then instrumentation is switched on around the measured loop only."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def inner(n: int) -> None:
    from mitmproxy import hooks, master, options
    from mitmproxy.addons import core, dns_resolver, next_layer, proxyserver
    from mitmproxy.test import tflow, tutils

    from tests.canary import make_canary
    from vaultproxy.core.decide import Decision
    from vaultproxy.core.state import Live, ProxyState
    from vaultproxy.engine import default_addons
    from vaultproxy.files.home import Home
    from vaultproxy.keystore import KdfParams, Keystore
    from vaultproxy.seam import defences, speed
    from vaultproxy.secret import Secret
    from vaultproxy.stages import Ready, Runtime, chain, seam_hooks
    from vaultproxy.stages.connections import Tunnel

    home = Home(Path(tempfile.mkdtemp(prefix="vp-hookphases-")) / "home")
    home.create()
    home.services.write_text('[[service]]\nname = "svc"\nhosts = ["svc.example.com"]\n'
                             'mode = "host_inject"\nauth = "bearer"\n')
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    ks.set_value("svc", Secret(make_canary()))
    ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    rt = Runtime(Live(st))
    defences.install(seam_hooks(rt))
    phase = hooks.all_hooks

    async def main() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        speed.tune(m).add(Ready(rt), *chain(rt), core.Core(), default_addons.DisableH2C(),
                          proxyserver.Proxyserver(), dns_resolver.DnsResolver(),
                          next_layer.NextLayer())
        client = tflow.tclient_conn()
        target = ("svc.example.com", 443)
        rt.connections.open(client.id, Tunnel(Decision(None, None, target, target=target),
                                               pinned=("203.0.113.9", 443)))
        body = tutils.tresp(content=b"x" * 1024)

        def flow() -> Any:
            f = tflow.tflow()
            f.client_conn = client
            f.server_conn.address = ("203.0.113.9", 443)
            f.request.scheme, f.request.host, f.request.port = "https", target[0], 443
            f.request.headers["host"] = target[0]
            return f

        async def one(f: Any, resp: Any) -> None:
            await m.addons.handle_lifecycle(phase["requestheaders"](f))
            await m.addons.handle_lifecycle(phase["request"](f))
            f.response = resp
            await m.addons.handle_lifecycle(phase["responseheaders"](f))
            await m.addons.handle_lifecycle(phase["response"](f))

        for _ in range(200):
            await one(flow(), body.copy())
        flows = [(flow(), body.copy()) for _ in range(n)]
        gc.collect()
        gc.freeze()  # the prepared flows are not what a collection should walk
        pid = str(os.getpid())
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        for f, resp in flows:
            await one(f, resp)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        last = flows[-1][0]
        assert last.response.status_code == 200, last.response
        assert last.request.headers["authorization"].startswith("Bearer vpcanary_")

    asyncio.run(main())


def instructions(tree: Path, n: int, out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONMALLOC="malloc")
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, str(Path(__file__).resolve()), "--inner", str(n)],
        cwd=tree, env=env, check=True, capture_output=True,
    )
    total = 0
    for f in out.parent.glob(out.name + "*"):
        found = re.search(r"^totals: (\d+)", f.read_text(errors="replace"), re.M)
        if found:
            total = max(total, int(found.group(1)))
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.inner)
        return
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree] or [
        ("this", Path(__file__).resolve().parents[1])
    ]
    work = Path(tempfile.mkdtemp(prefix="vp-hookphases-"))
    for name, tree in trees:
        per = instructions(tree, args.n, work / f"callgrind.{name}.out")
        print(f"{name:>8}: {per / 1e3:.1f} k instructions per request (4 hook phases)",
              flush=True)


if __name__ == "__main__":
    main()
