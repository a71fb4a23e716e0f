"""A service's name resolved to another address: the pool never sends that tunnel's request
on a connection dialled to the old address.

Every CONNECT resolves its host anew (net/resolve.py; the system resolver keeps an answer
for its TTL) and pins the checked address on the tunnel; the pool (stages/pool.py) sends the
request to that IP literal, and httpcore keeps a connection per (scheme, IP, port), so a new
address is a new, verified connection. Here the same upstream listens on 127.0.0.1 and
127.0.0.2 (the same port, as after a DNS change), and the requests go through the pool's
own transport as the stage sends them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.harness.upstream import Upstream
from tests.integration.test_upstream_pool import CountingUpstream
from vaultproxy.net.outbound import UpstreamKey, drop_closed, pool_transport

pytestmark = pytest.mark.integration

NAME = "ra.api.test"


@pytest.fixture(scope="module")
def two(upstream: Upstream) -> Iterator[tuple[CountingUpstream, CountingUpstream]]:
    old = CountingUpstream(upstream.ca, (NAME,)).start()
    new = CountingUpstream(upstream.ca, (NAME,), host="127.0.0.2", port=old.port).start()
    yield old, new
    old.stop()
    new.stop()


def test_a_new_address_never_reuses_a_connection_to_the_old(
        two: tuple[CountingUpstream, CountingUpstream], upstream: Upstream) -> None:
    old, new = two
    pool = pool_transport(UpstreamKey("ra", NAME, upstream.ca_file, False), http2=False,
                          idle=30)

    async def get(ip: str) -> int:
        await drop_closed(pool)  # as the stage does before each request
        r = await pool.request("GET", f"https://{ip}:{old.port}/", headers={"Host": NAME},
                               extensions={"sni_hostname": NAME})
        assert r.status == 200
        return int(json.loads(r.content)["conn"])

    async def run() -> None:
        await get("127.0.0.1")
        await get("127.0.0.1")
        assert (old.accepted, new.accepted) == (1, 0)  # the twin: the same address reuses
        await get("127.0.0.2")  # re-resolved: a connection of its own, to the new address
        await get("127.0.0.2")
        assert (old.accepted, new.accepted) == (1, 1)
        await pool.aclose()

    asyncio.run(run())
