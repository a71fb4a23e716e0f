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


class _Stream:
    """A seeded stand-in for ``os.urandom``: successive reads are successive bytes of one
    stream, so the stock ``uuid4`` (16 bytes a read) and the batch (64 ids a read) must make
    the same ids from it."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.given = bytearray()
        self.reads = 0

    def __call__(self, n: int) -> bytes:
        self.reads += 1
        out = bytes(self.rng.getrandbits(8) for _ in range(n))
        self.given += out
        return out


def test_batched_ids_are_uuid4_of_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch gives, in order, ``str(uuid.uuid4())`` of each 16 bytes of what it read,
    one read per 64 ids (the version and variant bits set as ``uuid.UUID`` sets them)."""
    for seed in range(5):
        stream = _Stream(seed)
        monkeypatch.setattr(objects.os, "urandom", stream)
        objects._forget_batch()
        got = [objects.uuid4_text() for _ in range(3 * objects.BATCH + 5)]
        raw = bytes(stream.given)
        want = [str(uuid.UUID(bytes=raw[i:i + 16], version=4)) for i in range(0, len(raw), 16)]
        assert got == want[:len(got)]
        assert stream.reads == 4  # one read per batch of 64
    for raw in (b"\x00" * 16 * objects.BATCH, b"\xff" * 16 * objects.BATCH,
                bytes(range(256)) * 4, b"-" * 16):
        want = [str(uuid.UUID(bytes=raw[i:i + 16], version=4)) for i in range(0, len(raw), 16)]
        assert objects._batch(raw) == want
    monkeypatch.undo()
    objects._forget_batch()
    fresh = [objects.uuid4_text() for _ in range(5 * objects.BATCH)]
    assert len(set(fresh)) == len(fresh)


def test_connections_get_batched_ids_too() -> None:
    """mitmproxy's client and server objects (4-5 per agent connection) take their ids
    from the same batch."""
    assert connection.uuid.uuid4 is objects.uuid4_text
    assert connection.uuid.UUID is uuid.UUID  # the rest of the module is uuid's own
    ids = [connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                             timestamp_start=0).id for _ in range(300)]
    ids += [connection.Server(address=("a", 443)).id for _ in range(300)]
    assert len(set(ids)) == 600
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


def test_a_forked_child_never_hands_out_its_parents_ids() -> None:
    """A real fork with a batch under way: the child's ids are none of the ids the parent
    hands out next (the rest of its batch), nor the parent's of those the child's."""
    objects._forget_batch()
    objects.uuid4_text()  # a batch under way: 63 ids left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids to the parent, then out without cleanup
        try:
            os.write(write, "\n".join(objects.uuid4_text() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        child = fh.read().split("\n")
    os.waitpid(pid, 0)
    parent = [objects.uuid4_text() for _ in range(objects.BATCH)]
    assert len(child) == 8 and all(uuid.UUID(i).version == 4 for i in child)
    assert not set(child) & set(parent)
