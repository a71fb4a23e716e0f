"""A pooled upstream connection answers httpcore's "is_readable" (asked of every idle
connection each time a request is assigned; True drops the connection as closed by the
upstream) from the socket it kept at connect: the same answer as httpcore's own path
through anyio, on a real loopback connection."""

from __future__ import annotations

import asyncio
import socket
import time

from vaultproxy.net.outbound import _Dialer


def test_is_readable_matches_httpcore_on_a_real_connection() -> None:
    async def run() -> list[tuple[bool, bool]]:
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        stream = await _Dialer().connect_tcp("127.0.0.1", port, timeout=5)
        peer, _ = server.accept()
        seen = []

        def both() -> tuple[bool, bool]:
            ours = stream.get_extra_info("is_readable")
            theirs = stream._inner.get_extra_info("is_readable")  # type: ignore[attr-defined]
            return bool(ours), bool(theirs)

        seen.append(both())  # idle: nothing to read
        peer.sendall(b"HTTP/1.1 200 OK\r\n")  # something nobody asked for
        time.sleep(0.05)  # blocking: the loop must not read it away first
        seen.append(both())
        peer.close()
        server.close()
        await stream.aclose()
        seen.append(both())  # closed on our side: no descriptor, counts as readable
        return seen

    assert asyncio.run(run()) == [(False, False), (True, True), (True, True)]


def test_twin_a_socket_with_nothing_waiting_is_not_readable() -> None:
    """The probe can say "not readable": an upstream that closed shows up only as readable."""

    async def run() -> tuple[bool, bool]:
        server = socket.create_server(("127.0.0.1", 0))
        stream = await _Dialer().connect_tcp("127.0.0.1", server.getsockname()[1], timeout=5)
        peer, _ = server.accept()
        before = bool(stream.get_extra_info("is_readable"))
        peer.close()  # the upstream's FIN
        time.sleep(0.05)
        after = bool(stream.get_extra_info("is_readable"))
        server.close()
        await stream.aclose()
        return before, after

    assert asyncio.run(run()) == (False, True)
