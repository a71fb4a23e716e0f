"""TCP_NODELAY on both hops of an intercepted request: the agent's connection to the proxy and
the proxy's connection to the upstream. Without it a response written in two pieces (head,
then body) waits ~40 ms for the peer's delayed ACK (Nagle), per small request.

The check reads the option off the running proxy's own sockets (tests/harness/sockets.py:
``pidfd_getfd`` duplicates them into the test; nothing in the proxy is patched). Twins: the
probe reads "off" on another process's socket that lacks the option, and asyncio leaves the
option off on a connection accepted from a listener made the way ``engine/listener.py``
made it (``proto`` 0) -- the case ``seam/accept.py`` now covers itself."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from tests.harness.proxy import ProxyProcess
from tests.harness.sockets import tcp_sockets
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["1", "2"], ids=["workers1", "workers2"])
def proxy(request: pytest.FixtureRequest, start_proxy: object, upstream: Upstream) -> ProxyProcess:
    services = service_block("nd", "host_inject", "bearer", upstream.port)
    return start_proxy(
        services,
        {"nd": "nd-secret-value"},  # type: ignore[operator,no-any-return]
        args=("--workers", request.param),
    )


def _hops(proxy: ProxyProcess, upstream: Upstream) -> tuple[list[bool], list[bool]]:
    """TCP_NODELAY of every client-side and upstream-side connection the proxy's processes hold."""
    pids = [proxy.proc.pid, *[int(p) for p in proxy.extra.get("worker_pids", [])]]  # type: ignore[attr-defined]
    client, up = [], []
    for pid in dict.fromkeys(pids):
        for s in tcp_sockets(pid):
            if s.peer is None:
                continue
            if s.local[1] == proxy.port:
                client.append(s.nodelay)
            elif s.peer[1] == upstream.port:
                up.append(s.nodelay)
    return client, up


def test_both_hops_have_tcp_nodelay(proxy: ProxyProcess, upstream: Upstream) -> None:
    # Several keep-alive clients, held open while the sockets are read: with --workers 2
    # the connections spread over both processes.
    clients = [agent_client(proxy) for _ in range(4)]
    try:
        for c in clients:
            r = c.get("https://nd.api.test/x")
            assert r.status_code == 200, r.text
        client, up = _hops(proxy, upstream)
        # the upstream pool: the four agent connections share each worker's upstream one
        assert len(client) >= 4 and len(up) >= 1, (client, up)
        assert all(client), f"client-side connections without TCP_NODELAY: {client}"
        assert all(up), f"upstream-side connections without TCP_NODELAY: {up}"
    finally:
        for c in clients:
            c.close()


def test_probe_reads_nodelay_off_in_another_process() -> None:
    """The twin of the probe: a socket another process holds without the option reads off,
    and on once that process sets it."""
    code = (
        "import socket,sys\n"
        "l=socket.create_server(('127.0.0.1',0)); c=socket.create_connection(l.getsockname())\n"
        "a,_=l.accept(); print(c.getsockname()[1], flush=True); sys.stdin.readline()\n"
        "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); print('set', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as p:
        try:
            assert p.stdout is not None and p.stdin is not None
            port = int(p.stdout.readline())
            mine = [s for s in tcp_sockets(p.pid) if s.local[1] == port]
            assert [s.nodelay for s in mine] == [False]
            p.stdin.write("\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "set"
            assert [s.nodelay for s in tcp_sockets(p.pid) if s.local[1] == port] == [True]
        finally:
            p.kill()


def test_asyncio_skips_nodelay_on_a_proto_zero_listener() -> None:
    """Why seam/accept.py sets the option itself: asyncio's transport sets TCP_NODELAY only
    when ``sock.proto == IPPROTO_TCP``, and a listener made as ``socket(AF_INET,
    SOCK_STREAM)`` (proto 0) hands out accepted sockets that say 0."""

    async def accepted_nodelay(listener: socket.socket) -> int:
        listener.listen()
        peer = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        try:
            _r, w = await asyncio.open_connection(sock=conn)
            value = w.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            w.close()
            return int(value)
        finally:
            peer.close()

    for proto, expect in ((0, 0), (socket.IPPROTO_TCP, 1)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        s.bind(("127.0.0.1", 0))
        try:
            assert asyncio.run(accepted_nodelay(s)) == expect, proto
        finally:
            s.close()
