"""The TLS output loop (seam/tlsio.py) reads what mitmproxy's reads: a real handshake and
application data between two pyOpenSSL connections over memory BIOs; at every step the
BIO's count says exactly whether ``bio_read`` returns bytes or raises ``WantReadError``,
and the patched ``tls_interact`` yields the same chunks the stock loop would."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trustme
from mitmproxy import connection
from mitmproxy.proxy import commands, events, tunnel
from mitmproxy.proxy.layers import tls
from OpenSSL import SSL

from vaultproxy.seam import need, tlsio


def _pair() -> tuple[SSL.Connection, SSL.Connection]:
    ca = trustme.CA()
    cert = ca.issue_cert("a.test")
    sctx = SSL.Context(SSL.TLS_METHOD)
    sctx.use_certificate(_x509(cert.cert_chain_pems[0].bytes()))
    sctx.use_privatekey(_key(cert.private_key_pem.bytes()))
    server = SSL.Connection(sctx)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    client.set_connect_state()
    return client, server


def _x509(pem: bytes) -> Any:
    from OpenSSL import crypto
    return crypto.load_certificate(crypto.FILETYPE_PEM, pem)


def _key(pem: bytes) -> Any:
    from OpenSSL import crypto
    return crypto.load_privatekey(crypto.FILETYPE_PEM, pem)


def _drain_checked(conn: SSL.Connection) -> bytes:
    """Read ``conn``'s output as the stock loop does, checking the count before each read."""
    out = b""
    while True:
        n = tlsio.pending_out(conn)
        assert n is not None
        try:
            got = conn.bio_read(65535)
        except SSL.WantReadError:
            assert n == 0
            return out
        assert n > 0 and len(got) == min(n, 65535)
        out += got


def _step(conn: SSL.Connection) -> None:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass


def _handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    for _ in range(4):  # both ways, each read counted
        _step(client)
        data = _drain_checked(client)
        if data:
            server.bio_write(data)
        _step(server)
        data = _drain_checked(server)
        if data:
            client.bio_write(data)


def test_the_count_says_what_bio_read_does() -> None:
    client, server = _pair()
    _handshake(client, server)
    rng = random.Random(29)
    for size in [1, 100, 16_384, 70_000, 200_000] + [rng.randint(1, 50_000) for _ in range(20)]:
        server.sendall(b"x" * size)
        wire = _drain_checked(server)
        client.bio_write(wire)
        got = b""
        while True:
            try:
                got += client.recv(65535)
            except SSL.WantReadError:
                break
        assert got == b"x" * size
    assert _drain_checked(server) == b""


class _Layer:
    """What ``tls_interact`` reads of a TLS layer: ``tls`` and ``conn``."""

    def __init__(self, conn: SSL.Connection) -> None:
        self.tls = conn
        self.conn = object()


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 150_000])
def test_patched_loop_yields_what_the_stock_loop_yields(size: int) -> None:
    assert tlsio.install()
    client, server = _pair()
    _handshake(client, server)
    if size:
        server.sendall(b"y" * size)
    expect = tlsio.pending_out(server)
    assert expect is not None
    layer = _Layer(server)
    out = list(tls.TLSLayer.tls_interact(layer))  # type: ignore[arg-type]
    assert all(type(c) is commands.SendData and c.connection is layer.conn for c in out)
    sizes = [len(c.data) for c in out]  # type: ignore[attr-defined]
    assert sum(sizes) == expect
    assert all(s == 65_535 for s in sizes[:-1])
    assert tlsio.pending_out(server) == 0


# --- the patched receive_data / send_data against mitmproxy's, step by step ----------------

_CTX_CACHE: dict[str, Any] = {}


def _server_ctx(version: int) -> SSL.Context:
    key = f"server{version}"
    if key not in _CTX_CACHE:
        ca = trustme.CA()
        cert = ca.issue_cert("a.test")
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
        ctx.use_certificate(_x509(cert.cert_chain_pems[0].bytes()))
        ctx.use_privatekey(_key(cert.private_key_pem.bytes()))
        # as mitmproxy's client-side context: an ALPN callback (a pyOpenSSL helper object)
        ctx.set_alpn_select_callback(lambda _c, protos: b"http/1.1")
        _CTX_CACHE[key] = ctx
    return _CTX_CACHE[key]  # type: ignore[no-any-return]


class _Recording(tls.TLSLayer):
    """A TLS layer (the proxy's end of the agent's connection) without mitmproxy's context:
    what its child would get is recorded, as one ``("child", ...)`` command each."""

    def __init__(self, conn: SSL.Connection) -> None:  # (no Layer.__init__: no context)
        self.tls = conn
        self.conn = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                                      timestamp_start=0.0, state=connection.ConnectionState.OPEN)
        self.tunnel_connection = self.conn
        self.debug = None

    def event_to_child(self, event: events.Event) -> Any:
        yield ("child", type(event).__name__, getattr(event, "data", None),
               event.connection is self.conn)  # type: ignore[attr-defined]


class _Stock(_Recording):
    """The same, with mitmproxy's own methods (as before ``tlsio.install``)."""


def _stock_class() -> type[_Recording]:
    assert tlsio.install()
    for name in tlsio.FINGERPRINTS:
        setattr(_Stock, name, tlsio.STOCK[name])
    return _Stock


def _pair_layer(kind: type[_Recording], version: int) -> tuple[_Recording, SSL.Connection]:
    server = SSL.Connection(_server_ctx(version))
    server.set_accept_state()
    agent_ctx = SSL.Context(SSL.TLS_METHOD)
    agent_ctx.set_alpn_protos([b"http/1.1"])
    agent = SSL.Connection(agent_ctx)
    agent.set_connect_state()
    _handshake(agent, server)
    layer = kind(server)
    layer.debug = None
    return layer, agent


def _agent_read(agent: SSL.Connection) -> tuple[bytes, str | None]:
    got = b""
    while True:
        try:
            got += agent.recv(65535)
        except SSL.WantReadError:
            return got, None
        except SSL.Error as e:
            return got, f"{type(e).__name__}: {e}"


def _run(layer: _Recording, agent: SSL.Connection, step: Any) -> list[Any]:
    """One step's transcript: what the layer answered (commands, the agent's view of what it
    sent, an exception) and the state it left."""
    kind, arg = step
    out: list[Any] = []
    try:
        if kind == "send":
            gen = layer.send_data(arg)
        else:
            if kind == "agent":
                for chunk in arg:
                    agent.sendall(chunk)
                wire = _drain_checked(agent)
            elif kind == "agent_close":
                agent.shutdown()
                wire = _drain_checked(agent)
            elif kind == "agent_alert":  # the agent fails on a bad record: its fatal alert
                layer.tls.sendall(b"to be corrupted")
                bad = bytearray(_drain_checked(layer.tls))
                bad[-1] ^= 0x55
                agent.bio_write(bytes(bad))
                out.append(("agent read", *_agent_read(agent)))
                wire = _drain_checked(agent)
                assert wire  # (the alert)
            elif kind == "corrupt":
                agent.sendall(arg)
                flipped = bytearray(_drain_checked(agent))
                flipped[-1] ^= 0x55
                wire = bytes(flipped)
            else:  # raw bytes straight into the wire
                wire = arg
            gen = layer.receive_data(wire)
        wires = b""
        for command in gen:
            if type(command) is commands.SendData:
                assert command.connection is layer.conn
                out.append(("SendData", len(command.data)))
                wires += command.data
            elif type(command) is commands.Log:
                out.append(("Log", command.message, command.level))
            else:
                out.append(command)
        if wires:
            agent.bio_write(wires)
            out.append(("agent read", *_agent_read(agent)))
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        out.append(("raised", type(e).__name__, str(e)))
    out.append(("state", layer.conn.state, layer.tls.get_shutdown(),
                tlsio.pending_out(layer.tls)))
    return out


TAILS = ["close", "corrupt", "alert", "agent_alert", "none"]


def _steps(rng: random.Random, tail: str) -> list[Any]:
    steps: list[Any] = []
    for _ in range(rng.randint(3, 12)):
        r = rng.random()
        if r < 0.4:
            sizes = [rng.choice([1, 7, 300, 1024, 16_384, 16_385, 40_000, 70_000])
                     for _ in range(rng.randint(1, 4))]
            steps.append(("agent", [rng.randbytes(n) for n in sizes]))
        elif r < 0.8:
            n = rng.choice([0, 1, 100, 1300, 16_384, 16_385, 65_535, 65_536, 150_000])
            steps.append(("send", rng.randbytes(n)))
        elif r < 0.9:
            steps.append(("raw", b""))
        else:
            steps.append(("agent", [b"x"]))
    if tail == "close":
        steps += [("agent_close", None), ("raw", b""), ("send", b"after")]
    elif tail == "corrupt":
        steps += [("corrupt", b"bad mac"), ("send", b"after"), ("raw", b"")]
    elif tail == "alert":  # a fatal alert record (handshake_failure) in the clear
        steps += [("raw", b"\x15\x03\x03\x00\x02\x02\x28"), ("send", b"after")]
    elif tail == "agent_alert":
        steps += [("agent_alert", None), ("raw", b""), ("send", b"after")]
    return steps


@pytest.mark.parametrize("version", [SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION])
@pytest.mark.parametrize("seed", range(15))
def test_receive_and_send_match_mitmproxys(seed: int, version: int) -> None:
    stock_cls = _stock_class()
    rng = random.Random(seed * 7919 + version)
    steps = _steps(rng, TAILS[seed % len(TAILS)])
    stock, stock_agent = _pair_layer(stock_cls, version)
    fast, fast_agent = _pair_layer(_Recording, version)
    assert type(fast).receive_data is not type(stock).receive_data
    for i, step in enumerate(steps):
        want = _run(stock, stock_agent, step)
        got = _run(fast, fast_agent, step)
        assert got == want, (i, step[0])


@pytest.mark.parametrize("where", ["receive", "send"])
def test_a_callbacks_stored_problem_is_raised_first_as_pyopenssl_does(where: str) -> None:
    stock_cls = _stock_class()
    outs = []
    for kind in (stock_cls, _Recording):
        layer, agent = _pair_layer(kind, SSL.TLS1_3_VERSION)
        helper: Any = layer.tls._context._alpn_select_helper
        helper._problems.append(ValueError("stored by a callback"))
        step = ("agent", [b"hello"]) if where == "receive" else ("send", b"hello")
        outs.append(_run(layer, agent, step))
        helper._problems.clear()
    assert outs[0] == outs[1]
    assert ("raised", "ValueError", "stored by a callback") in outs[1]


def test_after_own_shutdown_a_send_raises_as_mitmproxys() -> None:
    stock_cls = _stock_class()
    outs = []
    for kind in (stock_cls, _Recording):
        layer, agent = _pair_layer(kind, SSL.TLS1_3_VERSION)
        layer.tls.shutdown()
        outs.append(_run(layer, agent, ("send", b"late")))
    assert outs[0] == outs[1]
    assert outs[1][0][0] == "raised"


def test_an_unknown_payload_type_takes_mitmproxys_method() -> None:
    stock_cls = _stock_class()
    outs = []
    for kind in (stock_cls, _Recording):
        layer, agent = _pair_layer(kind, SSL.TLS1_3_VERSION)
        outs.append(_run(layer, agent, ("send", bytearray(b"a bytearray"))))
        outs.append(_run(layer, agent, ("raw", memoryview(b"\x17\x03\x03\x00\x01x"))))
    assert outs[0:2] == outs[2:4]


def test_each_replaced_method_is_the_one_fingerprinted() -> None:
    assert tlsio.install()
    for name, want in tlsio.FINGERPRINTS.items():
        assert tlsio.fingerprint(name) == want
        assert getattr(tls.TLSLayer, name) is not tlsio.STOCK[name]


def test_each_replaced_method_is_the_one_whose_code_is_fingerprinted() -> None:
    """The start-up check reads no source on the CPython the code fingerprints were made
    on (elsewhere it reads the source: the test above)."""
    if not need.code_magic_matches():
        pytest.skip("another CPython's bytecode: the source fingerprints decide")
    assert tlsio.install()
    names = [*tlsio.FINGERPRINTS, *(f"TunnelLayer.{n}" for n in tlsio.TUNNEL_FINGERPRINTS)]
    assert sorted(tlsio.CODE_FINGERPRINTS) == sorted(names)
    for name in names:
        assert need.code_fingerprint(tlsio._stock(name)) == tlsio.CODE_FINGERPRINTS[name], (
            f"{name}: this CPython compiles it differently (start-up reads its source: "
            "slower, the same decision); make CODE_FINGERPRINTS here")


def test_a_changed_mitmproxy_method_stays_mitmproxys(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    assert tlsio.install()
    for name in tlsio.FINGERPRINTS:  # as before install, restored after the test
        monkeypatch.setattr(tls.TLSLayer, name, tlsio.STOCK[name])
    for name in tlsio.TUNNEL_FINGERPRINTS:
        monkeypatch.setattr(tunnel.TunnelLayer, name, tlsio.STOCK[f"TunnelLayer.{name}"])
    monkeypatch.delattr(tls.TLSLayer, "_vaultproxy_fast")
    monkeypatch.setattr(tlsio, "FAST_TO_CHILD", [])  # (install fills it anew)
    monkeypatch.setattr(tlsio, "FAST", {})  # (and this)
    # (a mitmproxy whose send_data changed: its source and its code differ)
    monkeypatch.setitem(tlsio.FINGERPRINTS, "send_data", "0" * 16)
    monkeypatch.setitem(tlsio.CODE_FINGERPRINTS, "send_data", "0" * 16)
    with caplog.at_level("WARNING"):
        assert tlsio.install()
    assert tls.TLSLayer.send_data is tlsio.STOCK["send_data"]
    assert tls.TLSLayer.receive_data is not tlsio.STOCK["receive_data"]
    assert "TLSLayer.send_data is not the one" in caplog.text


# --- TunnelLayer.event_to_child against mitmproxy's, on seeded command streams -------------


class _Child:
    def __init__(self, script: list[commands.Command]) -> None:
        self.script = script

    def handle_event(self, event: events.Event) -> Any:
        script, self.script = self.script, []  # (later events: nothing)
        yield from script


class _Tunnel(tunnel.TunnelLayer):
    """A tunnel layer without a context: what it sends and closes is recorded."""

    def __init__(self, conn: connection.Connection, outer: connection.Connection,
                 script: list[commands.Command], state: tunnel.TunnelState) -> None:
        self.conn, self.tunnel_connection = conn, outer
        self.child_layer = _Child(script)  # type: ignore[assignment]
        self.tunnel_state = state
        self.command_to_reply_to = None
        self._event_queue = []
        self.debug = None

    def send_data(self, data: bytes) -> Any:
        yield commands.Log(f"send_data {data!r}")

    def send_close(self, command: commands.CloseConnection) -> Any:
        yield commands.Log(f"send_close {type(command).__name__}")

    def start_handshake(self) -> Any:
        yield commands.Log("start_handshake")


def _tunnel_script(rng: random.Random, own: Any, other: Any) -> list[commands.Command]:
    out: list[commands.Command] = []
    for _ in range(rng.randint(0, 8)):
        conn = own if rng.random() < 0.6 else other
        made: list[commands.Command] = [
            commands.SendData(conn, rng.randbytes(3)),
            commands.Log("a line"),
            commands.RequestWakeup(1.0),
            commands.CloseConnection(conn),
            commands.CloseTcpConnection(conn, half_close=True),
            commands.OpenConnection(conn),
        ]
        out.append(rng.choice(made))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_tunnel_event_to_child_matches_mitmproxys(seed: int) -> None:
    assert tlsio.install()
    fast = tunnel.TunnelLayer.event_to_child
    stock = tlsio.STOCK["TunnelLayer.event_to_child"]
    assert fast is not stock
    outs = []
    for fn in (stock, fast):
        rng = random.Random(seed)
        own = connection.Server(address=("127.0.0.1", 1))
        outer = own if rng.random() < 0.5 else connection.Server(address=("127.0.0.1", 2))
        other = connection.Client(peername=("127.0.0.1", 3), sockname=("127.0.0.1", 4),
                                  timestamp_start=0.0)
        state = rng.choice([tunnel.TunnelState.OPEN, tunnel.TunnelState.ESTABLISHING])
        layer = _Tunnel(own, outer, _tunnel_script(rng, own, other), state)
        if rng.random() < 0.3:
            layer.command_to_reply_to = commands.OpenConnection(own)
        out: list[Any] = []
        gen = fn(layer, events.DataReceived(other, b"x"))
        try:
            command = next(gen)
            while True:
                out.append((type(command).__name__, getattr(command, "message", None),
                            getattr(command, "connection", None) is own,
                            getattr(command, "data", None)))
                reply = "refused" if isinstance(command, commands.OpenConnection) else None
                command = gen.send(reply)
        except StopIteration:
            pass
        out.append(("state", layer.tunnel_state, len(layer._event_queue),
                    layer.command_to_reply_to is None, own.state))
        outs.append(out)
    assert outs[0] == outs[1]


def test_raise_if_problem_is_the_one_fingerprinted() -> None:
    """The loops skip pyOpenSSL's ``raise_if_problem`` of a helper holding no problem only
    while it is the one ``RAISE_IF_PROBLEM`` names (``if self._problems: ...``)."""
    fn = SSL._CallbackExceptionHelper.raise_if_problem  # type: ignore[attr-defined]
    assert need.unchanged(fn, *tlsio.RAISE_IF_PROBLEM)
    assert need.fingerprint(fn) == tlsio.RAISE_IF_PROBLEM[0]


@pytest.mark.parametrize("where", ["receive", "send"])
def test_a_helper_with_its_own_raise_if_problem_is_asked(where: str) -> None:
    """A helper whose class has its own ``raise_if_problem`` is called even with no stored
    problem (what it raises is raised first, as pyOpenSSL's loop would)."""
    base = SSL._CallbackExceptionHelper  # type: ignore[attr-defined]

    class Own(base):  # type: ignore[misc,valid-type]
        def raise_if_problem(self) -> None:
            raise KeyError("its own")

    outs = []
    for kind in (_stock_class(), _Recording):
        layer, agent = _pair_layer(kind, SSL.TLS1_3_VERSION)
        ctx: Any = layer.tls._context
        helper = ctx._alpn_select_helper
        own = Own.__new__(Own)
        own._problems = []
        ctx._alpn_select_helper = own
        step = ("agent", [b"hello"]) if where == "receive" else ("send", b"hello")
        try:
            outs.append(_run(layer, agent, step))
        except KeyError as e:
            outs.append([("escaped", str(e))])
        ctx._alpn_select_helper = helper
    assert outs[0] == outs[1]


@pytest.mark.parametrize("attr", ["_verify_helper", "_ocsp_helper"])
@pytest.mark.parametrize("where", ["receive", "send"])
def test_each_helpers_stored_problem_is_raised_as_pyopenssl_does(attr: str, where: str) -> None:
    """As the ALPN helper's above, for the verify and OCSP helpers' places in the loops."""
    outs = []
    for kind in (_stock_class(), _Recording):
        layer, agent = _pair_layer(kind, SSL.TLS1_3_VERSION)
        ctx: Any = layer.tls._context
        before = getattr(ctx, attr)
        helper = SSL._CallbackExceptionHelper.__new__(  # type: ignore[attr-defined]
            SSL._CallbackExceptionHelper)  # type: ignore[attr-defined]
        helper._problems = [ValueError(f"stored in {attr}")]
        setattr(ctx, attr, helper)
        step = ("agent", [b"hello"]) if where == "receive" else ("send", b"hello")
        outs.append(_run(layer, agent, step))
        setattr(ctx, attr, before)
    assert outs[0] == outs[1]
    assert ("raised", "ValueError", f"stored in {attr}") in outs[1]


# --- a whole TLS layer with a child that answers, against mitmproxy's, with real peers -----
# (``receive_data`` runs the patched ``event_to_child``'s body in place, ``event_to_child``
# the patched ``send_data``'s: here the layer keeps mitmproxy's own ``event_to_child`` in
# the stock twin, and the child answers each event with a seeded script of commands)


class _ScriptChild:
    """A child layer answering every event with the next script of commands (built from
    the event's connection: its own, the layer's; another, not the layer's)."""

    def __init__(self, rng: random.Random, own: Any, other: Any) -> None:
        self.rng, self.own, self.other = rng, own, other
        self.seen: list[Any] = []

    def handle_event(self, event: events.Event) -> Any:
        self.seen.append((type(event).__name__, getattr(event, "data", None)))
        rng = self.rng
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            r = rng.random()
            if r < 0.55:
                size = rng.choice([0, 1, 90, 1300, 16_384, 65_535, 65_536, 150_000])
                yield commands.SendData(self.own, rng.randbytes(size))
            elif r < 0.65:
                yield commands.Log(f"child {rng.random()}")
            elif r < 0.75:
                yield commands.SendData(self.other, b"elsewhere")
            elif r < 0.82:
                yield commands.RequestWakeup(0.5)
            elif r < 0.88:
                yield commands.CloseTcpConnection(self.own, half_close=True)
            elif r < 0.92:
                yield commands.CloseConnection(self.own)
            else:
                yield commands.OpenConnection(self.other)


class _Whole(tls.TLSLayer):
    """A TLS layer with its own ``event_to_child`` (the patched one after install) and a
    scripted child; no mitmproxy context."""

    def __init__(self, conn: SSL.Connection, rng: random.Random) -> None:
        self.tls = conn
        self.conn = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                                      timestamp_start=0.0, state=connection.ConnectionState.OPEN)
        self.tunnel_connection = self.conn
        self.debug = None
        self.tunnel_state = tunnel.TunnelState.OPEN
        self.command_to_reply_to = None
        self._event_queue = []
        other = connection.Server(address=("127.0.0.1", 3))
        self.child_layer = _ScriptChild(rng, self.conn, other)  # type: ignore[assignment]


class _WholeStock(_Whole):
    """The same with mitmproxy's methods (``tlsio.STOCK``) for everything patched."""


def _whole_stock() -> type[_Whole]:
    assert tlsio.install()
    assert tlsio.FAST_TO_CHILD and tunnel.TunnelLayer.event_to_child is tlsio.FAST_TO_CHILD[0]
    for name in tlsio.FINGERPRINTS:
        setattr(_WholeStock, name, tlsio.STOCK[name])
    _WholeStock.event_to_child = tlsio.STOCK["TunnelLayer.event_to_child"]  # type: ignore[method-assign]
    return _WholeStock


class _PyAgent:
    """The agent as Python's ``ssl`` module speaks TLS (an ``SSLObject`` on memory BIOs)."""

    def __init__(self, version: int) -> None:
        import ssl

        self.ssl = ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        v = {SSL.TLS1_3_VERSION: ssl.TLSVersion.TLSv1_3,
             SSL.TLS1_2_VERSION: ssl.TLSVersion.TLSv1_2}[version]
        ctx.minimum_version = ctx.maximum_version = v
        ctx.set_alpn_protocols(["http/1.1"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="a.test")

    def handshake(self, server: SSL.Connection) -> None:
        for _ in range(6):
            try:
                self.obj.do_handshake()
            except self.ssl.SSLWantReadError:
                pass
            wire = self.outgoing.read()
            if wire:
                server.bio_write(wire)
            _step(server)
            back = _drain_checked(server)
            if back:
                self.incoming.write(back)

    def send(self, chunks: list[bytes]) -> bytes:
        for chunk in chunks:
            self.obj.write(chunk)
        return self.outgoing.read()

    def close(self) -> bytes:
        try:
            self.obj.unwrap()
        except self.ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def read(self, wire: bytes) -> tuple[bytes, str | None]:
        self.incoming.write(wire)
        got = b""
        while True:
            try:
                got += self.obj.read(65535)
            except self.ssl.SSLWantReadError:
                return got, None
            except self.ssl.SSLError as e:
                return got, f"{type(e).__name__}: {e.reason}"
            if not got:
                return got, None


class _OsslAgent:
    """The agent as pyOpenSSL speaks TLS."""

    def __init__(self, version: int) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_alpn_protos([b"http/1.1"])
        ctx.set_max_proto_version(version)
        self.conn = SSL.Connection(ctx)
        self.conn.set_connect_state()

    def handshake(self, server: SSL.Connection) -> None:
        _handshake(self.conn, server)

    def send(self, chunks: list[bytes]) -> bytes:
        for chunk in chunks:
            self.conn.sendall(chunk)
        return _drain_checked(self.conn)

    def close(self) -> bytes:
        self.conn.shutdown()
        return _drain_checked(self.conn)

    def read(self, wire: bytes) -> tuple[bytes, str | None]:
        self.conn.bio_write(wire)
        return _agent_read(self.conn)

    def renegotiate(self) -> bytes:
        self.conn.renegotiate()
        _step(self.conn)
        return _drain_checked(self.conn)


class _AgentWriter:
    """The agent's writer in a connection handler: each write noted as ``_whole_drive``
    notes a ``SendData`` of the layer's connection, in the same list."""

    def __init__(self, sent: list[Any]) -> None:
        self.sent = sent

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.sent.append(("SendData", True, len(data), data))


def _whole_run(layer: _Whole, agent: Any, step: Any, decided: bool = False,
               handler: bool = False) -> list[Any]:
    """One step; ``decided``: each call told ``tlsio.decided`` held (seam/bypass.py's
    ``Route`` calls so), else called as mitmproxy calls; ``handler``: a hook's completion
    also told a route whose ``sink`` is the connection handler whose writer takes the
    agent's records (``Route.serve``)."""
    from mitmproxy.proxy import server as proxy_server

    kind, arg = step
    out: list[Any] = []
    told: Any = (True,) if decided else ()
    sent: list[Any] = []
    try:
        if kind == "respond":  # a hook's completion: the child answers
            if handler:
                h = type("Handler", (), {})()
                h.transports = {layer.conn: proxy_server.ConnectionIO(
                    handler=None, writer=_AgentWriter(sent))}  # type: ignore[arg-type]
                route = type("Route", (), {})()
                route.sink = h
                told = (True, route)
            gen = layer.event_to_child(events.HookCompleted(commands.Log("hook")), *told)  # type: ignore[arg-type]
        else:
            if kind == "agent":
                wire = agent.send(arg)
            elif kind == "agent_close":
                wire = agent.close()
            elif kind == "renegotiate":
                wire = agent.renegotiate()
            elif kind == "truncated":  # a record cut short: the rest never comes
                wire = agent.send([arg])[:-7]
            elif kind == "split":  # one record in two reads
                whole = agent.send([arg])
                cut = len(whole) // 2
                half = _whole_drive(layer, layer.receive_data(whole[:cut], *told))
                out.append(("first half", [c[:3] for c in half]))
                back = b"".join(c[3] for c in half if c[0] == "SendData" and c[1])
                if back:
                    out.append(("agent read", *agent.read(back)))
                wire = whole[cut:]
            elif kind == "corrupt":
                flipped = bytearray(agent.send([arg]))
                flipped[-1] ^= 0x55
                wire = bytes(flipped)
            else:
                wire = arg
            gen = layer.receive_data(wire, *told)
        sent = _whole_drive(layer, gen, sent)
        out.append([c[:3] for c in sent])
        wires = b"".join(c[3] for c in sent if c[0] == "SendData" and c[1])
        if wires:
            out.append(("agent read", *agent.read(wires)))
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        out.append(("raised", type(e).__name__, str(e)))
    child: Any = layer.child_layer
    out.append(("child saw", child.seen[:]))
    child.seen.clear()
    out.append(("state", layer.conn.state, layer.tls.get_shutdown(),
                tlsio.pending_out(layer.tls), layer.tunnel_state, len(layer._event_queue)))
    return out


def _whole_drive(layer: _Whole, gen: Any, sent: list[Any] | None = None) -> list[Any]:
    sent = [] if sent is None else sent
    for command in gen:
        if type(command) is commands.SendData:
            own = command.connection is layer.conn
            # (the record sizes: the two runs' keys differ; the agent reads the bytes)
            sent.append(("SendData", own, len(command.data), command.data if own else b""))
        elif type(command) is commands.Log:
            sent.append(("Log", command.message, command.level))
        else:
            sent.append((type(command).__name__, getattr(command, "connection", None) is
                         layer.conn, getattr(command, "half_close", None)))
    return sent


def _whole_steps(rng: random.Random, tail: str, renegotiate: bool) -> list[Any]:
    steps: list[Any] = []
    for _ in range(rng.randint(4, 14)):
        r = rng.random()
        if r < 0.35:
            sizes = [rng.choice([1, 68, 300, 16_384, 16_385, 70_000])
                     for _ in range(rng.randint(1, 3))]
            steps.append(("agent", [rng.randbytes(n) for n in sizes]))
        elif r < 0.75:
            steps.append(("respond", None))
        elif r < 0.85:
            steps.append(("split", rng.randbytes(rng.choice([68, 5000]))))
        elif r < 0.9 and renegotiate:
            steps.append(("renegotiate", None))
        else:
            steps.append(("raw", b""))
    if tail == "close":  # the agent half-closes: its close_notify, then the proxy answers
        steps += [("agent_close", None), ("respond", None), ("raw", b"")]
    elif tail == "corrupt":
        steps += [("corrupt", b"bad mac"), ("respond", None), ("raw", b"")]
    elif tail == "alert":  # a fatal alert record (handshake_failure) in the clear
        steps += [("raw", b"\x15\x03\x03\x00\x02\x02\x28"), ("respond", None)]
    elif tail == "truncated":
        steps += [("truncated", b"x" * 68), ("respond", None), ("raw", b"")]
    return steps


WHOLE_TAILS = ["close", "corrupt", "alert", "truncated", "none"]


@pytest.mark.parametrize("agent_kind", ["python-ssl", "pyopenssl"])
@pytest.mark.parametrize("version", [SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION])
@pytest.mark.parametrize("seed", range(12))
def test_a_whole_layer_matches_mitmproxys(seed: int, version: int, agent_kind: str) -> None:
    """Agent bytes in and a child's answers out through the whole patched layer (receive_data
    with event_to_child in place, event_to_child with send_data in place) give the same
    commands, the same bytes to the agent, the same child events and the same end state as
    mitmproxy's own methods, on seeded scripts with a real Python ssl or pyOpenSSL agent
    (TLS 1.3 and 1.2: close_notify, a corrupt record, an alert, a truncated record, a record
    in two reads, renegotiation from a TLS 1.2 pyOpenSSL agent)."""
    stock_cls = _whole_stock()
    transcripts = []
    # (the patched methods three times: as mitmproxy calls them; told ``tlsio.decided``
    # held, as seam/bypass.py's ``Route`` calls them; and a hook's completion also told the
    # connection handler that writes the agent's records, as ``Route.serve`` calls it)
    for cls, decided, handler in ((stock_cls, False, False), (_Whole, False, False),
                                  (_Whole, True, False), (_Whole, True, True)):
        rng = random.Random(seed * 7919 + version + len(agent_kind))
        server = SSL.Connection(_server_ctx(version))
        server.set_accept_state()
        agent: Any = _PyAgent(version) if agent_kind == "python-ssl" else _OsslAgent(version)
        agent.handshake(server)
        layer = cls(server, random.Random(seed))
        renegotiate = agent_kind == "pyopenssl" and version == SSL.TLS1_2_VERSION
        steps = _whole_steps(rng, WHOLE_TAILS[seed % len(WHOLE_TAILS)], renegotiate)
        assert tlsio.decided(layer) is (cls is _Whole)
        transcripts.append([_whole_run(layer, agent, step, decided, handler)
                            for step in steps])
    assert type(layer).event_to_child is tlsio.FAST_TO_CHILD[0]
    assert transcripts[0] == transcripts[1]
    assert transcripts[0] == transcripts[2]
    assert transcripts[0] == transcripts[3]


def test_decided_holds_only_for_this_modules_methods_on_a_memory_bio() -> None:
    """``tlsio.decided`` (what lets a caller skip the per-call checks): true for a layer
    whose class has the patched methods and whose ``tls`` is a memory-BIO connection; false
    when any one of them is another (each the case its check sends to mitmproxy's code)."""
    _whole_stock()
    server = SSL.Connection(_server_ctx(SSL.TLS1_3_VERSION))
    layer = _Whole(server, random.Random(0))
    assert tlsio.decided(layer)
    layer.tls = None  # type: ignore[assignment]
    assert not tlsio.decided(layer)
    import socket

    a, b = socket.socketpair()
    try:
        layer.tls = SSL.Connection(_server_ctx(SSL.TLS1_3_VERSION), a)  # (a socket, no BIO)
        assert not tlsio.decided(layer)
    finally:
        a.close()
        b.close()
    for name in ("receive_data", "send_data", "tls_interact", "event_to_child",
                 "_handle_command"):
        own = type(f"_Own_{name}", (_Whole,), {name: lambda self, *a: None})
        assert not tlsio.decided(own(server, random.Random(0))), name
