"""The pool stage's per-request shortcuts answer as the code they replace (seeded):

* ``outgoing_fields``: the fields sent upstream and whether a Host is among them, from one
  pass over the names, as ``hop_free`` and a set of the lowered names did (the reference,
  kept here); a Content-Length the agent sent is hop-by-hop, so the old "no Content-Length
  among them" test was always true (and is no longer made).
* the prefetch test of a head ``parse_head`` read (``H1Response.length``): what the stage
  read of the response's headers for it (its one Content-Length, digits, and a response
  that is not bodiless) is that length, for every head ``parse_head`` takes."""

from __future__ import annotations

import random

from mitmproxy import http

from tests.unit.test_speed_h1response import SHAPES
from vaultproxy.core.pipeline import hop_free
from vaultproxy.net.h1pool import parse_head
from vaultproxy.seam import objects
from vaultproxy.stages import pool

NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Connection",
         b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Upgrade",
         b"Transfer-Encoding", b"Accept", b"Authorization", b"X-Host", b"Hostx", b"X"]


def _reference(fields: tuple[tuple[bytes, bytes], ...],
               ) -> tuple[list[tuple[bytes, bytes]], bool, bool]:
    out = hop_free(fields)
    names = {k.lower() for k, _ in out}
    return out, b"host" in names, b"content-length" not in names


def test_outgoing_fields_are_hop_free_and_see_the_host() -> None:
    rng = random.Random(0x29C1)
    seen = set()
    for _ in range(5000):
        fields = tuple((rng.choice(NAMES), b"%d" % rng.randrange(100))
                       for _ in range(rng.randint(0, 6)))
        if rng.random() < 0.5:
            fields = tuple(list(fields))  # (a fresh tuple: no memo)
        out, host, no_length = _reference(fields)
        assert no_length
        got = pool.outgoing_fields(fields)
        assert got == (out, host), fields
        assert got[0] is not fields and type(got[0]) is list  # (the stage appends to it)
        seen.add((host, len(out) == len(fields)))
    assert len(seen) == 4  # twin: with and without Host, with and without hop-by-hop ones


def test_a_head_parse_head_read_is_prefetched_on_its_length() -> None:
    rng = random.Random(0x29C2)
    took = 0
    bases = [d for _, d, fast in SHAPES if fast]
    for _ in range(4000):
        data = bytearray(rng.choice(bases))
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.choice([b"", b" ", b"Content-Length: 7\r\n", b"0", b"\t", b"\r\n",
                                  b"X: 1\r\n", b"content-LENGTH:  12 \r\n"])
        method = rng.choice([b"GET", b"POST", b"HEAD"])
        head = parse_head(bytes(data), method)
        if head is None:
            continue
        took += 1
        headers = objects.headers_of(head.headers)
        length = headers.get("content-length", "")
        assert length.isdigit() and int(length) == head.length, bytes(data)
        flow_method = method.decode()
        bodiless = (flow_method == "HEAD" or head.status in (204, 304)
                    or 100 <= head.status < 200)
        assert not bodiless
        assert isinstance(headers, http.Headers)
    assert took > 500  # (and the rest declined: mutations and HEAD)
