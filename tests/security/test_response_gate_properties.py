"""Property: whatever shape an upstream's reply takes, no form of the injected credential
reaches the agent.

Hypothesis builds replies: a reason phrase, a header set, informational (1xx) responses
before the final one, trailers, a body framed by Content-Length or by chunks split at
random offsets, and WebSocket frames of every opcode (fragmented or not, then a close with
a reason) -- with the credential, in a random encoding, placed anywhere in them. A raw
upstream renders the shape around the credential it actually received; the agent's bytes
through a real ``vaultproxy run`` never hold the secret. The negative twin renders the
same shapes directly and finds the secret in each one.
"""

from __future__ import annotations

import base64
import itertools
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import canary
from tests.canary import make_canary
from tests.harness import agent
from tests.harness.hostile import HostileUpstream, Request
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.security.test_exfil_redaction import leaks
from tests.security.test_response_gate import (
    HOST,
    SERVICES,
    _frame,
    _ws_accept,
    _ws_bytes,
    _ws_events,
)

pytestmark = [pytest.mark.security, pytest.mark.integration, pytest.mark.slow]

FORMS = {
    "raw": lambda s: s,
    "base64": base64.b64encode,
    "base64url": lambda s: base64.urlsafe_b64encode(s).rstrip(b"="),
    "percent": lambda s: "".join(f"%{b:02X}" for b in s).encode(),
    "json_u": lambda s: "".join(f"\\u{b:04x}" for b in s).encode(),
    "quoted": lambda s: quote(s.decode(), safe="").encode(),
}
PLACES = ["reason", "header", "informational", "trailer", "body"]

_text = st.text(alphabet="abcdefghijklmnop qrstuvwxyz0123456789-_.", max_size=20)


@dataclass(frozen=True)
class Shape:
    form: str
    places: frozenset[str]
    status: int
    headers: tuple[tuple[str, str], ...]
    informational: tuple[int, ...]
    chunked: bool
    splits: tuple[int, ...]
    pad: tuple[str, str]

    def render(self, credential: bytes) -> bytes:
        s = FORMS[self.form](credential)
        before, after = (p.encode() for p in self.pad)
        out = b""
        codes = self.informational or ((103,) if "informational" in self.places else ())
        for code in codes:
            extra = b"X-Hint: " + s + b"\r\n" if "informational" in self.places else b""
            reason = b"Info " + s if "informational" in self.places else b"Info"
            out += b"HTTP/1.1 %d %s\r\n%s\r\n" % (code, reason, extra)
        reason = b"OK " + s if "reason" in self.places else b"OK"
        head = [b"HTTP/1.1 %d %s" % (self.status, reason)]
        for k, v in self.headers:
            head.append(k.encode() + b": " + v.encode())
        if "header" in self.places:
            head.append(b"X-Echo: " + before + s + after)
        body = before + (s if "body" in self.places else b"") + after + b"\n"
        if self.chunked or "trailer" in self.places:
            head.append(b"Transfer-Encoding: chunked")
            if "trailer" in self.places:
                head.append(b"Trailer: X-T")
            wire = b""
            cuts = sorted({0, len(body), *(c % (len(body) + 1) for c in self.splits)})
            for a, b in itertools.pairwise(cuts):
                if b > a:
                    wire += b"%x\r\n%s\r\n" % (b - a, body[a:b])
            trailer = b"X-T: " + s + b"\r\n" if "trailer" in self.places else b""
            return out + b"\r\n".join(head) + b"\r\n\r\n" + wire + b"0\r\n" + trailer + b"\r\n"
        head.append(b"Content-Length: %d" % len(body))
        return out + b"\r\n".join(head) + b"\r\n\r\n" + body


shapes = st.builds(
    Shape,
    form=st.sampled_from(sorted(FORMS)),
    places=st.frozensets(st.sampled_from(PLACES), min_size=1),
    status=st.sampled_from([200, 201, 400, 401, 404, 500, 503]),
    headers=st.lists(
        st.tuples(st.sampled_from(["X-A", "Content-Type", "Cache-Control", "Link"]), _text),
        max_size=4,
    ).map(tuple),
    informational=st.lists(st.sampled_from([100, 102, 103]), max_size=2).map(tuple),
    chunked=st.booleans(),
    splits=st.lists(st.integers(min_value=0, max_value=200), max_size=6).map(tuple),
    pad=st.tuples(_text, _text),
)


@dataclass(frozen=True)
class WsShape:
    form: str
    frames: tuple[tuple[int, bool, str, str], ...]  # opcode, carries the secret, pad, split
    close_with_secret: bool

    def render(self, req: Request) -> bytes:
        s = FORMS[self.form](req.credential)
        out = _ws_accept(req)
        for opcode, carries, pad, split in self.frames:
            payload = pad.encode() + (s if carries else b"") + split.encode()
            if opcode in (0x9, 0xA):
                out += _frame(opcode, payload[:125])
            elif split and len(payload) > 2:
                cut = len(payload) // 2
                out += _frame(opcode, payload[:cut], fin=False) + _frame(0x0, payload[cut:])
            else:
                out += _frame(opcode, payload)
        reason = s[:100] if self.close_with_secret else b"bye"
        return out + _frame(0x8, struct.pack("!H", 1000) + reason)


ws_shapes = st.builds(
    WsShape,
    form=st.sampled_from(["raw", "base64", "base64url", "percent"]),
    frames=st.lists(
        st.tuples(st.sampled_from([0x1, 0x2, 0x9, 0xA]), st.booleans(), _text, _text),
        min_size=1, max_size=5,
    ).map(tuple),
    close_with_secret=st.booleans(),
)


def as_read(raw: bytes) -> bytes:
    """``raw`` plus what an HTTP/1.1 client (h11) reads from it: reason phrases, header
    fields, the de-chunked body, trailers. A secret split by chunk framing is whole here."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", HOST)]))
    conn.send(h11.EndOfMessage())
    out = [raw]
    try:
        conn.receive_data(raw)
        conn.receive_data(b"")
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.ConnectionClosed):
                break
            if isinstance(event, h11.InformationalResponse | h11.Response):
                out.append(event.reason)
            if isinstance(event, h11.InformationalResponse | h11.Response | h11.EndOfMessage):
                out.extend(k + b": " + v for k, v in event.headers)
            if isinstance(event, h11.Data):
                out.append(bytes(event.data))
    except h11.RemoteProtocolError:
        out.append(b"<unparsable>")
    return b"\n".join(out) + b"".join(x for x in out[1:] if x)


class _Registry:
    """Paths of the hostile upstream, one per generated example."""

    def __init__(self, upstream: HostileUpstream) -> None:
        self.upstream, self._n = upstream, itertools.count()

    def add(self, shape: Shape) -> str:
        path = f"/shape/{next(self._n)}"

        def script(conn: ssl.SSLSocket, req: Request) -> None:
            conn.sendall(shape.render(req.credential))
            conn.close()

        self.upstream.scripts[path] = script
        return path

    def add_ws(self, shape: WsShape) -> str:
        path = f"/ws/{next(self._n)}"

        def script(conn: ssl.SSLSocket, req: Request) -> None:
            conn.sendall(shape.render(req))
            conn.recv(65536)  # until the agent (or proxy) closes
            conn.close()

        self.upstream.scripts[path] = script
        return path


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyProcess, _Registry, bytes]]:
    base = tmp_path_factory.mktemp("gate-properties")
    canary.watch(base)
    up = HostileUpstream(base).start()
    secret = make_canary().encode()
    home = ProxyHome.create(
        base, SERVICES.format(port=up.port), {"h": secret.decode()},
        files={"hostile-ca.pem": up.ca_file.read_bytes()},
    )
    proxy = ProxyProcess.start(home, args=("--workers", "1"))
    yield proxy, _Registry(up), secret
    proxy.stop()
    up.stop()


_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(shape=shapes)
def test_no_reply_shape_carries_the_secret_to_the_agent(
    setup: tuple[ProxyProcess, _Registry, bytes], shape: Shape
) -> None:
    proxy, registry, secret = setup
    path = registry.add(shape)
    conn = agent.tunnel(proxy.port, proxy.home.ca_cert, HOST)
    reply = agent.exchange(
        conn,
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + HOST.encode()
        + b"\r\nConnection: close\r\n\r\n",
        f"agent GET {path}",
    )
    assert reply, "no reply at all (a hang or a reset)"
    assert not leaks(as_read(reply), secret), shape


@_SETTINGS
@given(shape=shapes)
def test_twin_every_shape_carries_the_secret(
    setup: tuple[ProxyProcess, _Registry, bytes], shape: Shape
) -> None:
    _, _, secret = setup
    assert leaks(as_read(shape.render(secret)), secret)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=ws_shapes)
def test_no_websocket_frame_carries_the_secret_to_the_agent(
    setup: tuple[ProxyProcess, _Registry, bytes], shape: WsShape
) -> None:
    proxy, registry, secret = setup
    path = registry.add_ws(shape)
    events = _ws_events(agent.tunnel(proxy.port, proxy.home.ca_cert, HOST), target=path)
    got = b"\n".join(_ws_bytes(e) for e in events)
    canary.scan_text(f"websocket {path}", got)
    assert not leaks(got, secret), shape
