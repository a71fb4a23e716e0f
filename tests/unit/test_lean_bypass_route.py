"""The lean bypass's route (seam/bypass.py) checks the layers above the ClientTLSLayer again
after every event that crossed them, and only then: an agent's bytes go short while nothing
crossed the layers since they were found steady, and take the whole stack once an event that
crossed them left one of them paused. The layers here are stand-ins holding exactly the
state ``Route`` reads (a real stack is in tests/integration/test_lean_bypass.py)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from mitmproxy import connection
from mitmproxy.proxy import commands, events, tunnel

from vaultproxy.seam import bypass


class _Below:
    """The ClientTLSLayer's place: answers every event with one write to the agent."""

    def __init__(self, client: connection.Client) -> None:
        self.client = client
        self.tunnel_connection = client
        self.debug = None

    def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
        yield commands.SendData(self.client, b"short")


def _route() -> tuple[bypass.Route, SimpleNamespace, list[Any]]:
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                               timestamp_start=0.0)
    crossed: list[Any] = []
    proxy = SimpleNamespace(_paused=None)

    def full(event: events.Event) -> Iterator[commands.Command]:
        crossed.append(type(event).__name__)
        if isinstance(event, events.ConnectionClosed):
            proxy._paused = object()  # the event left a layer above paused
        yield commands.SendData(client, b"full")

    class _Stream:
        stream_id = 1
        _paused = None

        def passthrough(self) -> None: ...

    stream = _Stream()
    stream._handle_event = stream.passthrough  # type: ignore[attr-defined]

    class _H1:
        stream_id = 1
        _paused = None
        conn = client

        def passthrough(self) -> None: ...

    h1 = _H1()
    h1.state = h1.passthrough  # type: ignore[attr-defined]
    http = SimpleNamespace(_paused=None, command_sources={}, connections={client: h1},
                           streams={1: stream})
    below = _Below(client)
    server_tls = SimpleNamespace(_paused=None, wait_for_clienthello=False,
                                 tunnel_state=tunnel.TunnelState.OPEN, command_to_reply_to=None,
                                 child_layer=below)
    lean = SimpleNamespace(context=SimpleNamespace(client=client), fallback=None, done=False,
                           serving=True)
    top = SimpleNamespace()
    route = bypass.Route(top, full, lean, proxy, http, h1, stream, server_tls, below, below,
                         stream._handle_event)  # type: ignore[attr-defined]
    return route, proxy, crossed


def _data(route: bypass.Route, event: events.Event) -> list[bytes]:
    return [c.data for c in route.handle_event(event)]  # type: ignore[attr-defined]


def test_the_layers_above_are_checked_again_after_an_event_crossed_them() -> None:
    route, proxy, crossed = _route()
    client = route.client
    assert _data(route, events.DataReceived(client, b"a")) == [b"short"]
    assert _data(route, events.DataReceived(client, b"b")) == [b"short"]
    # a close crosses the whole stack and leaves the HttpProxy paused ...
    assert _data(route, events.ConnectionClosed(client)) == [b"full"]
    # ... so the agent's next bytes take the whole stack too (the layer is queueing)
    assert _data(route, events.DataReceived(client, b"c")) == [b"full"]
    assert crossed == ["ConnectionClosed", "DataReceived"]
    proxy._paused = None  # (as the crossing "c" would have resumed it)
    assert _data(route, events.DataReceived(client, b"d")) == [b"short"]
    assert crossed == ["ConnectionClosed", "DataReceived"]


def test_twin_without_a_crossing_event_a_paused_layer_goes_unseen() -> None:
    """What the check-once rests on: the route re-reads the layers only after a crossing.
    (The stand-in pauses a layer behind the route's back, which no mitmproxy layer does.)"""
    route, proxy, _ = _route()
    client = route.client
    assert _data(route, events.DataReceived(client, b"a")) == [b"short"]
    proxy._paused = object()
    assert _data(route, events.DataReceived(client, b"b")) == [b"short"]
    route.clean = False  # what any crossing event does
    assert _data(route, events.DataReceived(client, b"c")) == [b"full"]
