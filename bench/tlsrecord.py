"""Instructions per request of the agent side's TLS record path alone (seam/tlsio.py), no
sockets: one 90-byte request record into the proxy's ``TLSLayer`` (``receive_data``: BIO
write, the reads, ``DataReceived`` to the child through ``TunnelLayer.event_to_child``)
and one ~1.3 KB response out (the child's ``SendData`` through ``event_to_child`` to
``send_data``: the write, the BIO drained into ``SendData`` commands).
    .venv/bin/python bench/tlsrecord.py --tree base=/tmp/base --tree now=. -n 2000
    .venv/bin/python bench/tlsrecord.py --stock        # mitmproxy's own methods, this tree
Each tree runs twice under callgrind (``--instr-atstart=yes``): the same set-up (handshake,
the agent's N records made beforehand) with 0 requests and with N requests served; the
difference over N is the path's cost (deterministic to a few instructions: no loop, no
sockets; one certificate and key, made once per bench run: key generation's cost varies).
``PYTHONMALLOC=malloc`` as the other callgrind benches."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = r'''
import sys
from typing import Any
import trustme
from mitmproxy import connection
from mitmproxy.proxy import commands, events, tunnel
from mitmproxy.proxy.layers import tls
from OpenSSL import SSL, crypto
from vaultproxy.seam import tlsio

n, serve, stock = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "stock"
import os, pathlib
cache = pathlib.Path(sys.argv[4])  # (one key for every run: key generation varies)
assert tlsio.install()
if stock:
    for name in tlsio.FINGERPRINTS:
        setattr(tls.TLSLayer, name, tlsio.STOCK[name])
    tunnel.TunnelLayer.event_to_child = tlsio.STOCK["TunnelLayer.event_to_child"]

if not cache.exists():
    cert = trustme.CA().issue_cert("a.test")
    cache.write_bytes(cert.cert_chain_pems[0].bytes() + b"\0" + cert.private_key_pem.bytes())
chain, key = cache.read_bytes().split(b"\0")
sctx = SSL.Context(SSL.TLS_METHOD)
sctx.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, chain))
sctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key))
sctx.set_alpn_select_callback(lambda _c, protos: b"http/1.1")
server = SSL.Connection(sctx)
server.set_accept_state()
actx = SSL.Context(SSL.TLS_METHOD)
actx.set_alpn_protos([b"http/1.1"])
agent = SSL.Connection(actx)
agent.set_connect_state()

def step(c):
    try:
        c.do_handshake()
    except SSL.WantReadError:
        pass

def drain(c):
    out = b""
    while True:
        try:
            out += c.bio_read(65535)
        except SSL.WantReadError:
            return out

for _ in range(4):
    step(agent); d = drain(agent)
    if d: server.bio_write(d)
    step(server); d = drain(server)
    if d: agent.bio_write(d)

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n" + b"r" * 1240

class Child:
    def handle_event(self, event):
        if type(event) is events.DataReceived:
            return iter(())
        return iter((commands.SendData(layer.conn, RESPONSE),))

class Layer(tls.TLSLayer):
    def __init__(self, conn):
        self.tls = conn
        self.conn = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                                      timestamp_start=0.0, state=connection.ConnectionState.OPEN)
        self.tunnel_connection = self.conn
        self.debug = None
        self.child_layer = Child()
        self.tunnel_state = tunnel.TunnelState.OPEN
        self.command_to_reply_to = None
        self._event_queue = []

layer = Layer(server)
records = []
for i in range(n):
    agent.sendall(b"GET /1k HTTP/1.1\r\nhost: a.test\r\n\r\n" + b"%034d" % i)
    records.append(drain(agent))
assert len(records[0]) == 90, len(records[0])
# (warm: the first request through each path)
done = events.HookCompleted(commands.Log("x"))
wire = 0
for rec in records[:serve]:
    for c in layer.receive_data(rec):
        pass
    for c in layer.event_to_child(done):
        wire += len(c.data)
print("served", serve, wire)
'''


def total(out: Path) -> int:
    for line in out.read_text(errors="replace").splitlines():
        m = re.match(r"(?:totals|summary): (\d+)", line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no totals in {out}")


def measure(tree: Path, n: int, mode: str, work: Path, name: str) -> float:
    script = work / "run.py"
    script.write_text(RUN)
    counts = []
    for serve in (0, n):
        out = work / f"cg.{name}.{mode}.{serve}.out"
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONMALLOC="malloc")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, str(script), str(n), str(serve), mode,
                        str(work / "cert.pem")],
                       check=True, env=env, capture_output=True)
        counts.append(total(out))
    return (counts[1] - counts[0]) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[], help="name=path (repeatable)")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--stock", action="store_true", help="also mitmproxy's own methods")
    args = ap.parse_args()
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.tree] or [
        ("this", Path(__file__).resolve().parents[1])]
    work = Path(tempfile.mkdtemp(prefix="vp-tlsrecord-"))
    print(f"(out files in {work})")
    (work / "run.py").write_text(RUN)  # (a first run, not counted, makes the key)
    subprocess.run([sys.executable, str(work / "run.py"), "1", "0", "fast",
                    str(work / "cert.pem")], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(trees[0][1])))
    for name, tree in trees:
        modes = ["fast", "stock"] if args.stock else ["fast"]
        for mode in modes:
            per = measure(tree, args.n, mode, work, name)
            label = name if mode == "fast" else f"{name} (stock)"
            print(f"{label:>16}: {per:,.0f} instructions per request (record in, record out)",
                  flush=True)


if __name__ == "__main__":
    main()
