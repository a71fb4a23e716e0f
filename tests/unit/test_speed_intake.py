"""The agent's request intake of session 15 (``agentin``) makes exactly what the code it
replaces made, on seeded input; the code before each shortcut is kept as the reference.

* ``LeanLayer._serve`` makes each request's ``HTTPFlow`` attribute by attribute
  (seam/objects.py ``http_flow_plain``): on test_lean_events.py's seeded event streams (its
  ``_Reference`` layer builds each flow with ``http.HTTPFlow(client, server)``, then sets
  ``request`` and ``live``) every flow has the same type, the same attributes in the same
  order with the same values (but its own id and creation time), the same ``get_state()``;
  a ``Flow.__init__`` or an ``HTTPFlow`` that is not the one written against keeps the
  constructor.
* ``LeanLayer._serve`` makes the request's ``LeanHook`` and its job inline (what
  ``LeanHook(flow)`` with its job's ``lean`` set makes): the same attributes in the same
  order, compared on the same streams.
* ``LeanLayer.handle_event`` files its paused hook as ``tuple.__new__(Paused, ...)``: the
  same ``Paused`` as mitmproxy's ``Layer.__process`` makes; a changed ``Paused`` keeps its
  constructor.
* ``objects.data_received_of`` (the TLS layer's plaintext event, seam/tlsio.py) is
  ``events.DataReceived(connection, data)``; a changed class keeps its constructor.
* ``LeanLayer._take`` reads a fast head's ``Connection`` and ``Content-Length`` from its
  fields' bytes (not ``Headers.get_all``): against ``_take`` as it was (``_OldTake``) on
  seeded heads of odd values, cases and spacings. Its ``_body`` inline, the four refused
  names tested at once and ``fast_head`` reading ``m.groups()``: the same comparison, and
  test_lean_events.py (the same commands and state) and test_speed_lean.py.
* ``Route.handle_event``'s inline steady check is ``_steady``'s: tests/unit/
  test_lean_bypass_route.py (and the twin here: a route whose lean layer fell back detaches).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from mitmproxy import connection, flow, http
from mitmproxy.proxy import events, layer

from tests.unit import test_lean_events as lean_events
from vaultproxy.seam import lean, objects

#: a flow's attributes that differ between any two flows (made at different times)
_OWN = ("id", "timestamp_created")


def _flow_view(f: http.HTTPFlow, ctx: Any) -> tuple[Any, ...]:
    """A flow as a stage or an audit record could read it: its type, its attributes in
    order, their values (its side's connections by their role, the request by its state),
    its ``get_state()``; not its own id and creation time, nor the request's timestamps
    (the reference layer sets its own end time)."""

    def value(v: Any) -> Any:
        if v is ctx.client:
            return "client"
        if v is ctx.server:
            return "server"
        if isinstance(v, http.Request):
            state = v.get_state()
            del state["timestamp_start"], state["timestamp_end"]
            return state
        return v

    attrs = [(k, value(v)) for k, v in vars(f).items() if k not in _OWN]
    state = f.get_state()
    for k in _OWN:
        state.pop(k)
    for k in ("client_conn", "server_conn"):
        state[k].pop("id")
    state["request"] = value(f.request)
    return type(f), list(vars(f)), attrs, state, type(f.id), len(f.id)


def _paused_view(lay: layer.Layer, ctx: Any) -> Any:
    paused = lay._paused
    if paused is None:
        return None
    hook = paused.command
    hooked: Any = None
    if isinstance(hook, lean.LeanHook):  # (its attributes, and its job's, in order)
        job = hook.job
        hooked = ([(k, "flow" if v is hook.flow else "lean" if v is lay else v)
                   for k, v in vars(hook).items() if k != "job"], list(vars(hook)), type(job),
                  [(k, "flow" if v is hook.flow else "lean" if v is lay else v)
                   for k, v in vars(job).items()])
    return (type(paused), len(paused), lean_events._norm(paused.command, ctx),
            paused.generator is not None, hooked)


def _compare(seed: int) -> int:
    rng = random.Random(seed)
    old, new = lean_events._Side(lean_events._Reference), lean_events._Side(lean.LeanLayer)
    sides = (old, new)
    data = lean_events._stream(rng)
    compared = 0
    for _ in range(40):
        roll = rng.random()
        if old.layer._paused is not None and roll < 0.55:
            seed2 = rng.random()
            hook_events = []
            for side in sides:
                hook = side.layer._paused.command  # type: ignore[union-attr]
                if isinstance(hook, lean.LeanHook):
                    lean_events._complete(hook, random.Random(seed2))
                hook_events.append(events.HookCompleted(hook))  # type: ignore[arg-type]
            got = [side.feed(ev) for side, ev in zip(sides, hook_events, strict=True)]
        elif data and roll < 0.95:
            cut = rng.randint(1, len(data))
            piece, data = data[:cut], data[cut:]
            got = [side.feed(events.DataReceived(side.ctx.client, piece)) for side in sides]
        else:
            got = [side.feed(events.ConnectionClosed(side.ctx.client)) for side in sides]
        assert got[0] == got[1]
        assert _paused_view(old.layer, old.ctx) == _paused_view(new.layer, new.ctx)
        assert len(old.flows) == len(new.flows)
        # each flow as the layer made it, before its hooks ran (the intake's part)
        for a, b in zip(old.flows[compared:], new.flows[compared:], strict=True):
            assert _flow_view(a, old.ctx) == _flow_view(b, new.ctx)
            compared += 1
        if not data and old.layer._paused is None and rng.random() < 0.3:
            data = lean_events._stream(rng)
    return compared


@pytest.mark.parametrize("seed", range(200))
def test_the_lean_flow_is_the_constructors(seed: int) -> None:
    assert lean._FLOW_PLAIN and lean._PAUSED_PLAIN  # (the shortcuts are what is compared)
    _compare(seed)


def test_the_comparison_sees_flows_and_pauses() -> None:
    """Twin: the seeded streams do make flows (and pause on their hooks) to compare."""
    assert sum(_compare(seed) for seed in range(50)) > 100


def test_twin_a_flow_with_an_attribute_less_differs() -> None:
    """The comparison sees a flow that lacks one attribute, or has them in another order."""
    ctx = lean_events._Side(lean.LeanLayer).ctx
    a = http.HTTPFlow(ctx.client, ctx.server)
    b = http.HTTPFlow(ctx.client, ctx.server)
    for f in (a, b):
        f.request = http.Request.make("GET", "https://a.test/")
        f.live = True
    assert _flow_view(a, ctx) == _flow_view(b, ctx)
    del b.comment
    with pytest.raises(AttributeError):  # (its state can not even be read)
        _flow_view(b, ctx)
    b.comment = ""  # (now last: another order)
    assert _flow_view(a, ctx) != _flow_view(b, ctx)
    b = http.HTTPFlow(ctx.client, ctx.server)
    b.request, b.live, b.marked = a.request, True, None  # type: ignore[assignment]
    assert _flow_view(a, ctx) != _flow_view(b, ctx)


def test_http_flow_plain_only_for_the_init_written_against(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert objects.http_flow_plain()
    stock = flow.Flow.__init__

    def changed(self: Any, client_conn: Any, server_conn: Any, live: bool = False) -> None:
        stock(self, client_conn, server_conn, live)
        self.extra = 1

    monkeypatch.setattr(flow.Flow, "__init__", changed)
    assert not objects.http_flow_plain()
    monkeypatch.undo()
    monkeypatch.setattr(http.HTTPFlow, "__init__", stock, raising=False)
    assert not objects.http_flow_plain()  # (an ``__init__`` of HTTPFlow's own)
    monkeypatch.undo()
    monkeypatch.setattr(http.HTTPFlow, "__setattr__", object.__setattr__, raising=False)
    assert not objects.http_flow_plain()


def test_paused_plain_only_for_the_namedtuple(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lean._paused_plain()
    made = tuple.__new__(layer.Paused, ("c", "g"))
    stock = layer.Paused("c", "g")  # type: ignore[arg-type]
    assert type(made) is type(stock) and made == stock and made.command == "c"

    class Other(tuple):  # type: ignore[type-arg]
        _fields = ("command", "generator")

        def __new__(cls, command: Any, generator: Any) -> Any:
            return tuple.__new__(cls, (command, generator, None))

    monkeypatch.setattr(layer, "Paused", Other)
    assert not lean._paused_plain()


def test_data_received_of_is_the_constructors() -> None:
    rng = random.Random(7)
    client = connection.Client(peername=("127.0.0.1", 5), sockname=("127.0.0.1", 6),
                               timestamp_start=0.0)
    assert objects.data_received_of is not events.DataReceived
    for _ in range(50):
        data = rng.randbytes(rng.randint(0, 40))
        a = objects.data_received_of(client, data)
        b = events.DataReceived(client, data)
        assert type(a) is type(b) and list(vars(a).items()) == list(vars(b).items())
        assert a == b and repr(a) == repr(b)


def test_a_changed_data_received_keeps_its_constructor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class Changed(events.ConnectionEvent):
        data: bytes
        more: int = 0

    monkeypatch.setattr(events, "DataReceived", Changed)
    assert objects._data_received_maker() is Changed

    @dataclasses.dataclass
    class Checked(events.ConnectionEvent):
        data: bytes

        def __post_init__(self) -> None:
            assert isinstance(self.data, bytes)

    monkeypatch.setattr(events, "DataReceived", Checked)
    assert objects._data_received_maker() is Checked
    monkeypatch.undo()
    assert objects._data_received_maker() is not events.DataReceived


# -- _take: a fast head's Connection and Content-Length read from its fields' bytes -------


class _OldTake(lean.LeanLayer):
    """``_take`` as it was before session 15 (``get_all`` for both fields, ``_body``)."""

    def _take(self) -> http.Request | None | str:
        if self.pending is not None:
            waiting, at, body_len = self.pending
            if len(self.buf) < at + body_len:
                return None
            self.pending = None
            return self._body(waiting, at, body_len)
        head: Any = lean.fast_head(self.buf)
        fast = head is not None
        if head is None:
            head = lean.general_head(self.buf)
        if head is None or isinstance(head, str):
            return head  # type: ignore[no-any-return]
        req, head_len = head
        if fast:
            if req.data.method == b"CONNECT":
                return "CONNECT or absolute form"
        elif req.http_version != "HTTP/1.1":
            return req.http_version  # type: ignore[no-any-return]
        elif req.method == "CONNECT" or req.authority:
            return "CONNECT or absolute form"
        headers = req.data.headers
        names = {k.lower() for k, _ in headers.fields}
        for name, key in lean._SKIP_KEYS:
            if key in names:
                return name
        if b"connection" in names:
            conn = headers.get_all("connection")
            if any(v.strip().lower() != "keep-alive" for v in conn):
                return "connection"
        length = headers.get_all("content-length") if b"content-length" in names else []
        if not length:
            raw = req.data.method
            if (raw not in lean._NO_BODY_RAW if raw in lean._PLAIN_METHODS else
                    raw.decode("utf-8", "surrogateescape").upper() not in
                    lean._NO_BODY_METHODS):
                return "no content-length"
            size = 0
        else:
            if len(length) != 1:
                return "content-length"
            try:
                size = lean.parse_content_length(length[0])
            except ValueError:
                return "content-length"
            if size > self.max_body:
                return "content-length"
        if not fast and lean.lhttp.validate_request(lean.lhttp.HTTPMode.transparent, req,
                                                    self.validate):
            return "head refused"
        if len(self.buf) < head_len + size:
            self.pending = (req, head_len, size)
            return None
        return self._body(req, head_len, size)


_CONNECTION = [b"keep-alive", b"Keep-Alive", b" keep-alive", b"keep-alive ", b"close",
               b"keep-alive, close", b"", b"keep\xffalive", b"KEEP-ALIVE", b"upgrade",
               b"keep-alive\x85", b"\xc2\xa0keep-alive", b"keep-alive\t"]
_LENGTH = [b"0", b"5", b"12", b"64", b"65", b"007", b"00", b"+5", b"5 ", b" 5", b"1_0",
           b"\xd9\xa3", b"5\xff", b"", b"-1", b"99999999999999999999", b"3"]
_NAMES = [b"Connection", b"connection", b"CONNECTION", b"Content-Length", b"content-length",
          b"CONTENT-LENGTH", b"Host", b"X-Connection", b"Content-Lengths", b"Accept"]
_METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT"]


def _head(rng: random.Random) -> bytes:
    lines = [b"%s /p%d HTTP/1.1" % (rng.choice(_METHODS), rng.randint(0, 9))]
    for _ in range(rng.randint(0, 5)):
        name = rng.choice(_NAMES)
        low = name.lower()
        value = (rng.choice(_CONNECTION) if low == b"connection" else
                 rng.choice(_LENGTH) if low == b"content-length" else b"v%d" % rng.randint(0, 9))
        sep = rng.choice([b": ", b":", b":\t", b" : "])
        lines.append(name + sep + value)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head + rng.randbytes(rng.randint(0, 80))


def _taken(side: lean.LeanLayer) -> Any:
    got = side._take()
    if isinstance(got, http.Request):
        state = got.get_state()
        del state["timestamp_start"]
        got = ("request", state)
    pending = side.pending
    return got, bytes(side.buf), pending and (pending[0].get_state()["path"], pending[1:])


@pytest.mark.parametrize("seed", range(40))
def test_take_reads_connection_and_length_as_get_all_did(seed: int) -> None:
    rng = random.Random(seed)
    ctx = lean_events._Side(lean.LeanLayer).ctx
    fast_seen = 0
    for _ in range(100):
        data = _head(rng)
        fast_seen += lean.fast_head(data) is not None
        pooled = rng.random() < 0.9
        old = _OldTake(ctx, lambda p=pooled: p, max_body=64)  # type: ignore[misc]
        new = lean.LeanLayer(ctx, lambda p=pooled: p, max_body=64)
        old.buf += data
        new.buf += data
        for _ in range(2):  # (a pending body: the second asks again)
            assert _taken(old) == _taken(new), data
    assert fast_seen > 30  # (the fast head's branch is what is compared)


def test_twin_the_seeded_heads_reach_each_answer() -> None:
    ctx = lean_events._Side(lean.LeanLayer).ctx
    seen = set()
    for seed in range(40):
        rng = random.Random(seed)
        for _ in range(100):
            new = lean.LeanLayer(ctx, lambda: True, max_body=64)
            new.buf += _head(rng)
            got = new._take()
            seen.add(got if isinstance(got, str | None) else "request")
    assert {"request", None, "connection", "content-length", "no content-length",
            "CONNECT or absolute form"} <= seen, seen
