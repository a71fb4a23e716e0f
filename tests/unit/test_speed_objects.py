"""The object-construction speed patches (seam/objects.py) make what mitmproxy makes: flow
ids in ``str(uuid.uuid4())``'s format from the same bytes, hook objects equal to the stock
ones, and the same TypeError for a class mitmproxy refuses, every time."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import uuid

import pytest
from mitmproxy import connection, flow, hooks, http
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers import http as lhttp

from vaultproxy.seam import objects


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    assert objects.install()


def test_ids_match_uuid4_on_the_same_bytes() -> None:
    rng = random.Random(29)
    for _ in range(20000):
        raw = bytes(rng.getrandbits(8) for _ in range(16))
        assert objects.uuid4_text(raw) == str(uuid.UUID(bytes=raw, version=4))
    for raw in (b"\x00" * 16, b"\xff" * 16):
        assert objects.uuid4_text(raw) == str(uuid.UUID(bytes=raw, version=4))


def test_flows_get_distinct_version_4_ids() -> None:
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                               timestamp_start=0)
    ids = {http.HTTPFlow(client, connection.Server(address=("a", 443))).id for _ in range(2000)}
    assert len(ids) == 2000
    for i in ids:
        assert uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i
    assert flow.uuid.uuid4 is objects.uuid4_text  # the patch is what made them
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        objects.uuid4_text(os.urandom(16)))


def test_hooks_are_made_as_before() -> None:
    f = http.HTTPFlow(connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                                        timestamp_start=0), connection.Server(address=("a", 1)))
    for _ in range(3):  # the first instance is checked, the next ones are not
        h = lhttp.HttpRequestHook(f)
        assert type(h) is lhttp.HttpRequestHook and h.flow is f and h.args() == [f]
        assert h.blocking is True and h.name == "request"
        u = hooks.UpdateHook([f])
        assert u.flows == [f]


def test_refused_classes_still_raise_every_time() -> None:
    class NotADataclass(hooks.Hook):
        name = "vp_test_not_a_dataclass"

    @dataclasses.dataclass
    class Fine(commands.StartHook):
        x: int
        name = "vp_test_fine"

    for _ in range(2):
        with pytest.raises(TypeError, match="not a dataclass"):
            NotADataclass()
        with pytest.raises(TypeError, match="may not be instantiated"):
            hooks.Hook()
        with pytest.raises(TypeError, match="may not be instantiated"):
            commands.StartHook()
        assert Fine(3).x == 3
