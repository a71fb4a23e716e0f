"""HeadWatch answers httpcore's ``is_readable`` (has an idle pooled connection been closed by
the upstream?) with one poll on the socket it found once, instead of anyio's attribute lookup:
the answer must be httpcore's own, idle and after the upstream's FIN."""

from __future__ import annotations

import asyncio
import socket
import time

import httpcore

from vaultproxy.net.outbound import HeadWatch


async def _check() -> list[tuple[object, object]]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    inner = await httpcore.AnyIOBackend().connect_tcp("127.0.0.1", port, timeout=5)
    peer, _ = server.accept()
    watch = HeadWatch(inner)
    seen = [(watch.get_extra_info("is_readable"), inner.get_extra_info("is_readable"))]
    peer.close()  # the upstream closes the idle connection
    for _ in range(100):  # the FIN arrives
        if inner.get_extra_info("is_readable"):
            break
        time.sleep(0.01)
    seen.append((watch.get_extra_info("is_readable"), inner.get_extra_info("is_readable")))
    await watch.aclose()
    seen.append((watch.get_extra_info("is_readable"), True))  # closed: "readable", as httpcore
    server.close()
    return seen


def test_is_readable_agrees_with_httpcore_idle_and_after_the_fin() -> None:
    seen = asyncio.run(_check())
    assert seen[0] == (False, False)  # idle, open: reusable
    assert seen[1] == (True, True)  # the upstream's FIN: httpcore drops the connection
    assert seen[2][0] is True
