"""The proxy's listening socket (engine/listener.py) gives every accepted agent connection
TCP_NODELAY once asyncio wraps it: asyncio only sets it on sockets whose ``proto`` is TCP,
and an accepted socket copies the listener's. Without it each small reply waited for the
agent's delayed ACK (~40 ms)."""

from __future__ import annotations

import asyncio
import socket

from vaultproxy.engine.listener import bind


def _nodelay_of_accepted(listener: socket.socket) -> int:
    async def run() -> int:
        loop = asyncio.get_running_loop()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        try:
            conn, _ = await loop.sock_accept(listener)
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, conn)
            try:
                sock = transport.get_extra_info("socket")
                return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            finally:
                transport.close()
        finally:
            client.close()

    return asyncio.run(run())


def test_accepted_agent_connections_have_nodelay() -> None:
    with bind("127.0.0.1", 0) as listener:
        assert _nodelay_of_accepted(listener) == 1


def test_twin_a_listener_without_the_tcp_proto_leaves_nagle_on() -> None:
    """The probe reaches what it targets: the old construction (proto 0) gets no NODELAY."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        assert _nodelay_of_accepted(listener) == 0


def test_pooled_upstream_connections_have_nodelay() -> None:
    """The warm pool's dialer (net/outbound.py) hands httpcore sockets with Nagle off."""
    from vaultproxy.net.outbound import HeadWatch, _Dialer

    async def run() -> int:
        with socket.create_server(("127.0.0.1", 0)) as server:
            stream = await _Dialer().connect_tcp("127.0.0.1", server.getsockname()[1])
            try:
                assert isinstance(stream, HeadWatch)
                sock = stream.get_extra_info("socket")
                assert sock is not None  # an asyncio TransportSocket
                return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            finally:
                await stream.aclose()

    assert asyncio.run(run()) == 1
