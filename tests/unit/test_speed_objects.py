"""The object-construction speed patches (seam/objects.py) make what mitmproxy makes: flow
ids in ``str(uuid.uuid4())``'s format from the same bytes, hook objects equal to the stock
ones, and the same TypeError for a class mitmproxy refuses, every time."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import uuid
from typing import Any

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


FIELD_KINDS = [
    (b"Content-Length", b"1024"), (b"Server", b"nginx"), (b"X", b""), (b"", b"v"),
    [b"List", b"pair"], (b"Three", b"x", b"y"), (b"One",), ("Str", b"v"), (b"K", "str"),
    (bytearray(b"Ba"), b"v"), (b"K", memoryview(b"mv")), (b"\xff\x00", b"\r\n"),
]


def _outcome(call: Any, *args: Any) -> tuple[str, Any]:
    try:
        made = call(*args)
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return "raise", type(e)
    if isinstance(made, http.Headers):
        return "headers", made.get_state(), type(made), type(made.fields), [
            (type(f), *map(type, f)) for f in made.fields]
    state = made.get_state()
    return "response", state, type(made), type(made.data), {
        k: type(v) for k, v in vars(made.data).items()}, _outcome(lambda: made.headers)


def test_headers_and_responses_are_made_as_mitmproxy_makes_them() -> None:
    """3 000 seeded field lists (a list or a tuple; mostly (bytes, bytes) tuples, sometimes
    a list pair, a 1- or 3-tuple, a str, a bytearray, a memoryview) and response heads (bytes
    or str version and reason, a Headers or a plain list): the same state and types as
    ``http.Headers(...)`` and ``http.Response(...)``, or the same exception."""
    rng = random.Random(29)
    fast_headers = fast_responses = 0
    for i in range(3000):
        pick = FIELD_KINDS[:3] if rng.random() < 0.5 else FIELD_KINDS
        fields = [rng.choice(pick) for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.3:
            fields = tuple(fields)  # type: ignore[assignment]
        want = _outcome(http.Headers, fields)
        assert _outcome(objects.headers_of, fields) == want, (i, fields)
        fast_headers += want[0] == "headers" and type(fields) in (list, tuple)
        if want[0] != "headers":
            continue
        version = rng.choice([b"HTTP/1.1", b"HTTP/2.0", "HTTP/1.1"])
        reason = rng.choice([b"OK", b"", "OK"])
        status = rng.choice([200, 204, 404, 502])
        head: Any = rng.choice([http.Headers(fields), fields])
        start = rng.random() * 2e9
        args = (version, status, reason, head, start)
        want_resp = _outcome(lambda *a: http.Response(*a[:4], None, None, timestamp_start=a[4],
                                                      timestamp_end=None), *args)
        assert _outcome(objects.response_of, *args) == want_resp, (i, args)
        fast_responses += type(head) is http.Headers and type(version) is bytes
    assert fast_headers > 1000 and fast_responses > 200, (fast_headers, fast_responses)


class _VpTestCommand(commands.Command):
    """(a command of its own, for a completion event class mitmproxy refuses)"""


def test_completion_events_are_made_as_before() -> None:
    """``CommandCompleted.__new__`` (``HookCompleted``: one per blocking hook) checked once
    per class: the events equal what mitmproxy's own ``__new__`` makes, and the classes it
    refuses are refused every time, with its own exception."""
    from mitmproxy.proxy import events

    assert events.CommandCompleted in objects.CHECKED
    assert events.CommandCompleted.__new__ is not objects.STOCK_NEW[events.CommandCompleted]
    f = http.HTTPFlow(connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                                        timestamp_start=0), connection.Server(address=("a", 1)))
    hook = lhttp.HttpRequestHook(f)
    stock = objects.STOCK_NEW[events.CommandCompleted]

    def by_stock(cls: type, *args: Any) -> Any:
        made = stock(cls, *args)
        made.__init__(*args)
        return made

    srv = connection.Server(address=("a", 1))
    open_cmd = commands.OpenConnection(srv)
    for _ in range(3):  # the first instance is checked, the next ones are not
        for cls, args in ((events.HookCompleted, (hook, None)),
                          (events.OpenConnectionCompleted, (open_cmd, "refused")),
                          (events.Wakeup, (commands.RequestWakeup(1.0),))):
            got, want = cls(*args), by_stock(cls, *args)
            assert type(got) is type(want) is cls
            assert vars(got) == vars(want) and got.command is args[0]

    class NotADataclass(events.CommandCompleted):
        command: _VpTestCommand

    for _ in range(2):
        with pytest.raises(TypeError, match="may not be instantiated"):
            events.CommandCompleted()
        if __debug__:  # (mitmproxy's check is an ``assert``)
            with pytest.raises(AssertionError):
                NotADataclass()


def _send_data_shape(made: Any) -> tuple[Any, ...]:
    return (type(made), list(vars(made).items()), repr(made), made.blocking)


def test_send_data_of_makes_what_send_data_makes() -> None:
    """Seeded connections (client, server, none) and payloads: the same class, the same
    attributes in the same order, the same repr and class attributes as
    ``commands.SendData(connection, data)``."""
    import random

    from mitmproxy import connection
    from mitmproxy.proxy import commands

    from vaultproxy.seam import objects

    assert objects.send_data_of is not commands.SendData  # (fingerprints matched)
    rng = random.Random(7)
    conns = [connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                               timestamp_start=0.0),
             connection.Server(address=("example.com", 443)), None]
    for _ in range(300):
        conn = rng.choice(conns)
        data = rng.randbytes(rng.randrange(0, 64))
        assert _send_data_shape(objects.send_data_of(conn, data)) == _send_data_shape(
            commands.SendData(conn, data))  # type: ignore[arg-type]


def test_twin_send_data_comparison_sees_the_fields_set_in_another_order() -> None:
    from mitmproxy import connection
    from mitmproxy.proxy import commands

    def swapped(conn: Any, data: bytes) -> Any:
        made = object.__new__(commands.SendData)
        made.data = data
        made.connection = conn
        return made

    conn = connection.Server(address=("example.com", 443))
    assert _send_data_shape(swapped(conn, b"x")) != _send_data_shape(
        commands.SendData(conn, b"x"))


def test_send_data_of_is_send_data_itself_when_its_constructor_changed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mitmproxy.proxy import commands

    from vaultproxy.seam import objects

    def __init__(self: Any, connection: Any, data: bytes) -> None:
        super(commands.SendData, self).__init__(connection)
        self.data = bytes(data)

    monkeypatch.setattr(commands.SendData, "__init__", __init__)
    assert objects._send_data_maker() is commands.SendData
